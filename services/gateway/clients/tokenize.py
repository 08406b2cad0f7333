"""The llama.cpp server's ``POST /tokenize`` (``{"content": text}`` -> ``{"tokens": [...]}``),
as the gateway calls it to count a prompt's tokens with the bundled model's own
tokenizer. The URL is the operator's (``GENSEARCH_GATEWAY_TOKENIZE_URLS``), never a
caller's; aiohttp, our one HTTP stack, without proxies from the environment."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import aiohttp

from services.common.logs import register_secret, url_secrets

# The most bytes a /tokenize answer is read to: a token list of the longest prompt
# (1,000,000 characters, at most about that many tokens of a few digits each) fits.
MAX_ANSWER_BYTES = 8 * 1024 * 1024


class TokenizeError(Exception):
    """The tokenize endpoint could not answer (down, slow, not llama.cpp)."""


class LlamaTokenizeClient:
    def __init__(self, base_url: str, *, timeout: float, concurrency: int = 8) -> None:
        # A password in the URL (a server behind basic auth; aiohttp sends it as such) is
        # never logged, as the Redis and Qdrant URLs' are not.
        for secret in url_secrets(base_url):
            register_secret(secret)
        self._url = base_url.rstrip("/") + "/tokenize"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._limit = asyncio.Semaphore(concurrency)
        self._session: aiohttp.ClientSession | None = None

    async def count(self, texts: Sequence[str]) -> list[int]:
        """The token count of each text (without the BOS/EOS the model adds)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout, trust_env=False)
        return list(await asyncio.gather(*(self._one(self._session, t) for t in texts)))

    async def _one(self, session: aiohttp.ClientSession, text: str) -> int:
        async with self._limit:
            try:
                # No redirect is followed: the address it names was never checked.
                async with session.post(
                    self._url,
                    json={"content": text, "add_special": False},
                    allow_redirects=False,
                ) as reply:
                    if reply.status != 200:
                        raise TokenizeError(f"tokenize answered HTTP {reply.status}")
                    body = json.loads(await _bounded(reply))
            # RecursionError: JSON nested deeper than json.loads recurses (100 KB of "[").
            except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError) as err:
                raise TokenizeError(f"tokenize failed: {type(err).__name__}") from None
        tokens = body.get("tokens") if isinstance(body, dict) else None
        if not isinstance(tokens, list):
            raise TokenizeError("tokenize answered without a token list")
        return len(tokens)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _bounded(reply: aiohttp.ClientResponse) -> bytes:
    """The answer's body, refused past MAX_ANSWER_BYTES (aiohttp reads one whole)."""
    body = bytearray()
    async for chunk in reply.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise TokenizeError(f"tokenize answered more than {MAX_ANSWER_BYTES} bytes")
    return bytes(body)
