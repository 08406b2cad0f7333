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
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx2
import openai
from aiohttp.abc import AbstractResolver
from httpx_aiohttp.httpx2 import AiohttpTransport
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer

from services.common.egress import EgressPolicy, EgressResolver, guarded_connector
from services.common.errors import ServiceError
from services.common.tracing import UPSTREAM_ATTEMPTS

# The SDK refuses to build a client without credentials; every call then either sends the
# caller's key (an ``Authorization`` header per request) or omits the Authorization header
# (see ``authorized``), so this value is never sent.
NO_KEY = "no-key"
MAX_CLIENTS = 64
ATTEMPTS = UPSTREAM_ATTEMPTS  # the span attribute, under the name its users import

ExtraHeaders = dict[str, str | openai.Omit]
_NO_AMBIENT_IDS: Any = {"OpenAI-Organization": openai.omit, "OpenAI-Project": openai.omit}


class ResponseTooLarge(ValueError):
    """An upstream answer past the clients' ``max_response_bytes``: a whole body (decoded),
    or one line of an event stream. Raised while the body is read, so the rest is never
    read; ``fault_from_error`` callers find it with ``too_large``."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(f"{what} is larger than {limit} bytes")
        self.limit = limit


def too_large(err: BaseException | None) -> ResponseTooLarge | None:
    """The ``ResponseTooLarge`` behind an HTTP client's error, if that caused it."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ResponseTooLarge):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


# The codings asked for and decoded (by _BoundedBody, with its bound): the SDK's transport
# would otherwise inflate a gzip body whole, so a 2 MB answer could become gigabytes.
_ACCEPT_ENCODING = "gzip, deflate"


class _BoundedBody(httpx2.AsyncByteStream):
    """A response body read at most ``limit`` bytes at a time: the whole body of a JSON
    answer, each line of an event stream (the SDK's SSE decoder keeps a line whole until
    its newline). Decodes gzip and deflate itself, never past the bound."""

    def __init__(
        self, inner: httpx2.AsyncByteStream, limit: int, *, encoding: str, event_stream: bool
    ) -> None:
        self._inner = inner
        self._limit = limit
        self._encoding = encoding
        self._event_stream = event_stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._encoding in ("", "identity"):
            decoder = None
        elif self._encoding in ("gzip", "x-gzip"):
            decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self._encoding == "deflate":
            decoder = zlib.decompressobj()
        else:  # br, zstd, several codings: not asked for (_ACCEPT_ENCODING)
            raise ValueError(
                f"the answer's content-encoding {self._encoding[:32]!r} was not asked for"
            )
        total = 0
        async for raw in self._inner:
            pieces = [raw] if decoder is None else _inflated(decoder, raw)
            for chunk in pieces:
                if self._event_stream:
                    first = chunk.find(b"\n")
                    if first < 0:
                        total += len(chunk)
                    elif total + first > self._limit:  # the line this chunk ends
                        raise ResponseTooLarge("a line of the event stream", self._limit)
                    else:
                        total = len(chunk) - chunk.rfind(b"\n") - 1
                    if total > self._limit:  # only the line in progress is held
                        raise ResponseTooLarge("a line of the event stream", self._limit)
                else:
                    total += len(chunk)
                    if total > self._limit:
                        raise ResponseTooLarge("the answer", self._limit)
                if chunk:
                    yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


# Decompressed output is made this much at a time, each piece checked before the next is
# made: zlib's max_length keeps a bomb from inflating whole.
_INFLATE_PIECE = 64 * 1024


def _inflated(decoder: Any, data: bytes) -> Iterator[bytes]:
    """``data`` decompressed, lazily, in pieces of at most ``_INFLATE_PIECE`` bytes."""
    try:
        out = decoder.decompress(data, _INFLATE_PIECE)
        while True:
            yield out
            if not decoder.unconsumed_tail and len(out) < _INFLATE_PIECE:
                return
            out = decoder.decompress(decoder.unconsumed_tail, _INFLATE_PIECE)
    except zlib.error as err:
        raise ValueError("the answer's compressed body is corrupt") from err


def _bounding_hooks(
    limit: int,
) -> dict[str, list[Callable[[Any], Awaitable[None]]]]:
    """httpx event hooks bounding every answer's body to ``limit`` bytes, decoded."""

    async def on_request(request: httpx2.Request) -> None:
        request.headers["Accept-Encoding"] = _ACCEPT_ENCODING

    async def on_response(response: httpx2.Response) -> None:
        encodings = response.headers.get_list("content-encoding", split_commas=True)
        coding = ",".join(e.strip().lower() for e in encodings if e.strip().lower() != "identity")
        content_type = response.headers.get("content-type", "")
        response.stream = _BoundedBody(
            response.stream,  # type: ignore[arg-type]
            limit,
            encoding=coding,
            event_stream=content_type.lower().startswith("text/event-stream"),
        )
        # Decoded above: httpx must not decode (unbounded) again.
        if "content-encoding" in response.headers:
            del response.headers["content-encoding"]

    return {"request": [on_request], "response": [on_response]}


class OpenAIClients:
    """``AsyncOpenAI`` clients by (base_url, timeouts), on one shared aiohttp transport.

    ``egress``: the clients are for URLs callers named; every connection passes that
    policy, redirects are not followed. ``resolver`` resolves names for those connections
    (default: aiohttp's own; tests give one that maps names of their own).
    ``max_response_bytes``: the most an answer's body may hold once decoded (an event
    stream: each line); past it reading stops with ``ResponseTooLarge``. None: no bound
    (the SDK reads a JSON body whole: a 1.5 GB one took 4.5 GB of memory).
    """

    def __init__(
        self,
        *,
        max_clients: int = MAX_CLIENTS,
        egress: EgressPolicy | None = None,
        resolver: AbstractResolver | None = None,
        max_response_bytes: int | None = None,
    ) -> None:
        self._resolver = None if egress is None else EgressResolver(egress, resolver)
        hooks: dict[str, Any] = (
            {} if max_response_bytes is None else _bounding_hooks(max_response_bytes)
        )
        self._http = (
            # No redirect is followed for the operator's URLs either: the next address was
            # never checked (a 307 to 169.254.169.254 is followed by the SDK's default).
            openai.DefaultAioHttpClient(trust_env=False, follow_redirects=False, event_hooks=hooks)
            if self._resolver is None
            else _guarded_http_client(self._resolver, hooks)
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


def _guarded_http_client(
    resolver: EgressResolver, hooks: dict[str, Any]
) -> openai.DefaultAioHttpClient:
    def session() -> aiohttp.ClientSession:
        # Called by the transport on its first request, inside the event loop.
        return aiohttp.ClientSession(
            connector=guarded_connector(resolver, ssl=transport.ssl_context)
        )

    transport = AiohttpTransport(trust_env=False, client=session)
    return openai.DefaultAioHttpClient(
        transport=transport, trust_env=False, follow_redirects=False, event_hooks=hooks
    )


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
