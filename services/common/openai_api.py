"""Calls to OpenAI-compatible endpoints through the official ``openai`` SDK: the clients,
the per-request key, and the span around each call.

One ``openai.DefaultAioHttpClient`` (the SDK's aiohttp transport: aiohttp stays our one HTTP
stack) carries every client of a service; ``AsyncOpenAI`` clients are cached per
(base_url, timeouts), never per key, in a bounded LRU. A client owns no connection of its
own, so dropping one from the cache needs no cleanup; ``close()`` closes the transport.

The SDK's retries are off (``max_retries=0``): ``services.common.upstream_retry`` is the one
policy. Proxies and certificates from the environment are not used (``trust_env=False``),
as before the SDK: an LLM endpoint is reached directly. No client follows a redirect: the
address it names was never checked, and a base_url that redirects is wrong
(``UPSTREAM_REDIRECT``).

URLs a caller named (a collection's vectorizer endpoint) go through their own
``OpenAIClients(egress=policy)``, never the operator's: its aiohttp connector checks every
name it resolves and every address it connects to against the operator's allowlist
(``services.common.egress``), and it follows no redirect (a redirect would name a host
nobody checked). The SDK's ``DefaultAioHttpClient`` takes such a connector through its
``transport``: the ``httpx-aiohttp`` package's ``AiohttpTransport(client=...)``, the
transport the SDK itself is built on, with our session.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import openai
from aiohttp.abc import AbstractResolver
from httpx_aiohttp.httpx2 import AiohttpTransport
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer

from services.common.egress import EgressPolicy, EgressResolver, guarded_connector
from services.common.errors import ServiceError

# The SDK refuses to build a client without credentials; every call then either sends the
# caller's key (an ``Authorization`` header per request) or omits the Authorization header
# (see ``authorized``), so this value is never sent.
NO_KEY = "no-key"
MAX_CLIENTS = 64
# Span attribute: attempts made, first included (not a semantic-convention name).
ATTEMPTS = "gensearch.upstream.attempts"

ExtraHeaders = dict[str, str | openai.Omit]
_NO_AMBIENT_IDS: Any = {"OpenAI-Organization": openai.omit, "OpenAI-Project": openai.omit}


class OpenAIClients:
    """``AsyncOpenAI`` clients by (base_url, timeouts), on one shared aiohttp transport.

    ``egress``: the clients are for URLs callers named; every connection passes that
    policy, redirects are not followed. ``resolver`` resolves names for those connections
    (default: aiohttp's own; tests give one that maps names of their own).
    """

    def __init__(
        self,
        *,
        max_clients: int = MAX_CLIENTS,
        egress: EgressPolicy | None = None,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self._resolver = None if egress is None else EgressResolver(egress, resolver)
        self._http = (
            # No redirect is followed for the operator's URLs either: the next address was
            # never checked (a 307 to 169.254.169.254 is followed by the SDK's default).
            openai.DefaultAioHttpClient(trust_env=False, follow_redirects=False)
            if self._resolver is None
            else _guarded_http_client(self._resolver)
        )
        self._clients: OrderedDict[tuple[str, float, float], openai.AsyncOpenAI] = OrderedDict()
        self._max_clients = max_clients

    def get(
        self, base_url: str, *, connect_timeout: float, read_timeout: float
    ) -> openai.AsyncOpenAI:
        """``read_timeout`` is the longest silence between two bytes of an answer; the call's
        deadline bounds the whole exchange on top of it."""
        key = (base_url, connect_timeout, read_timeout)
        client = self._clients.get(key)
        if client is not None:
            self._clients.move_to_end(key)
            return client
        client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=NO_KEY,
            max_retries=0,
            timeout=openai.Timeout(None, connect=connect_timeout, read=read_timeout),
            http_client=self._http,
            # The SDK would otherwise read OPENAI_ORG_ID / OPENAI_PROJECT_ID from the
            # environment and send the operator's ids to every endpoint, including ones a
            # collection names.
            default_headers=_NO_AMBIENT_IDS,
        )
        self._clients[key] = client
        if len(self._clients) > self._max_clients:
            self._clients.popitem(last=False)
        return client

    async def close(self) -> None:
        self._clients.clear()
        await self._http.aclose()
        if self._resolver is not None:
            await self._resolver.close()


def _guarded_http_client(resolver: EgressResolver) -> openai.DefaultAioHttpClient:
    def session() -> aiohttp.ClientSession:
        # Called by the transport on its first request, inside the event loop.
        return aiohttp.ClientSession(
            connector=guarded_connector(resolver, ssl=transport.ssl_context)
        )

    transport = AiohttpTransport(trust_env=False, client=session)
    return openai.DefaultAioHttpClient(transport=transport, trust_env=False, follow_redirects=False)


def authorized(
    client: openai.AsyncOpenAI, api_key: str | None
) -> tuple[openai.AsyncOpenAI, ExtraHeaders]:
    """The client and extra headers for one call: ``Authorization: Bearer <api_key>``, or no
    Authorization header at all when there is no key (llama.cpp, vLLM and Ollama need none,
    and a placeholder key must not travel). The key travels as a per-request header (the
    SDK's ``extra_headers``) rather than through ``with_options``, which would build a new
    client on every call."""
    if api_key:
        return client, {"Authorization": f"Bearer {api_key}"}
    return client, {"Authorization": openai.omit}


@contextlib.contextmanager
def upstream_span(
    tracer: Tracer,
    operation: str,
    model: str,
    *,
    provider: str,
    base_url: str,
    attach: bool = True,
) -> Iterator[Span]:
    """A client span named ``<operation> <model>`` with the GenAI semantic-convention
    attributes; callers add usage and attempts. A failure sets the span's status to ERROR
    with the error's reason, never its message (it may quote upstream text) and never a key
    or prompt. ``attach=False`` for spans that live across the yields of a stream: the span
    is then not made current (a context attached in one step of an async generator cannot
    be detached safely in another)."""
    url = urlsplit(base_url)
    attributes: dict[str, str | int] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,  # the older name of gen_ai.provider.name
        "gen_ai.request.model": model,
        "server.address": url.hostname or "",
    }
    if url.port is not None:
        attributes["server.port"] = url.port
    span = tracer.start_span(f"{operation} {model}", kind=SpanKind.CLIENT, attributes=attributes)
    try:
        if attach:
            with trace.use_span(
                span, end_on_exit=False, record_exception=False, set_status_on_exception=False
            ):
                yield span
        else:
            yield span
    except Exception as err:
        kind = err.reason if isinstance(err, ServiceError) else type(err).__name__
        span.set_attribute("error.type", kind)
        span.set_status(StatusCode.ERROR, kind)
        raise
    finally:
        span.end()


def record_usage(span: Span, input_tokens: int, output_tokens: int) -> None:
    span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
