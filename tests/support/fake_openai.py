"""A scriptable loopback server speaking the OpenAI HTTP API, for tests and benchmarks.

Real HTTP on 127.0.0.1 (port 0 = a free port), so the code under test uses its real
HTTP client; nothing is patched.

Quick start::

    from tests.support.fake_openai import Behaviour, FakeOpenAI

    async with FakeOpenAI(latency=0.0) as fake:
        fake.base_url                      # "http://127.0.0.1:PORT/v1"
        fake.reply = "a fixed answer"      # or a function: request body (dict) -> text
        fake.enqueue(Behaviour.rate_limited(retry_after=1), Behaviour.ok())
        ...                                # point the client at fake.base_url
        fake.chat_requests[-1].json        # what the client sent
        fake.chat_requests[-1].headers["Authorization"]
        fake.max_concurrent                # highest number of requests in flight at once

Endpoints
    ``POST /v1/chat/completions``  unary, or ``"stream": true`` -> SSE ``data: {...}`` chunks
        (``chat.completion.chunk``: a first chunk with the role, one chunk per word of the
        reply, a chunk with ``finish_reason``, then ``data: [DONE]``). With
        ``"stream_options": {"include_usage": true}`` a last chunk with ``choices: []`` and
        ``usage`` comes before ``[DONE]``. ``max_tokens`` cuts the reply (one word = one
        token) and sets ``finish_reason: "length"``; a ``stop`` string cuts it too.
    ``GET /v1/models``  the ``models`` given to the constructor.
    ``POST /tokenize``  llama.cpp's endpoint (``{"content": text}`` -> ``{"tokens": [...]}``,
        one token per word, :func:`count_tokens`); ``tokenize_up = False`` answers 503;
        ``tokenize_body`` (bytes) is answered instead when set.
        ``tokenize_calls`` counts the texts it was asked to tokenize.
    ``GET /fake/stats``  the counters below as JSON (for a client in another process):
        ``served``, ``rate_limited``, ``max_per_window``, ``max_tokens_per_window``;
        ``POST /fake/reset`` resets them.
    ``POST /v1/embeddings``  deterministic unit vectors (``embedding_dim`` floats), one per
        input string, derived from a hash of the text.
    ``POST /v1/rerank``  the common rerank API (Cohere's shape, as served by vLLM, TEI and
        llama.cpp): ``{model, query, documents, top_n}`` -> ``{results: [{index,
        relevance_score}]}`` best first; scores from ``rerank_score(query, document)``
        (default :func:`word_overlap`). Takes behaviours from the shared queue like chat.

Constructor / attributes (all attributes may be changed while the server runs)
    ``latency``        seconds to wait before answering each request (default 0).
    ``latency_jitter`` spread of that wait as a fraction: each request waits ``latency``
                       times a uniform factor in [1 - jitter, 1 + jitter] (default 0, a
                       fixed wait; benchmarks use ~0.1, as a real endpoint never answers
                       every call in exactly the same time).
    ``chunk_delay``    seconds between stream chunks (default 0).
    ``reply``          ``str`` or ``Callable[[dict], str]``; default :func:`echo_last_user`.
    ``rerank_score``   ``Callable[[str, str], float]`` for /v1/rerank; default
                       :func:`word_overlap`.
    ``models``         names listed by /v1/models (default ``("fake-model",)``).
    ``reject_unknown_models``  answer 404 ``model_not_found`` (as OpenAI does) for a model
                       not in ``models`` (default False: any model is accepted).
    ``api_key``        when set, a request without ``Authorization: Bearer <api_key>`` gets
                       401 ``invalid_api_key``.
    ``include_usage``  when False the server never reports usage (default True).
    ``usage_override`` a dict reported as ``usage`` instead of the counted one (default None;
                       for providers that report implausible counts, negative or huge).
    ``model_override`` any JSON value reported as every chat answer's ``model`` instead of
                       the requested one (default None; for providers that send garbage).
    ``finish_reason_override``  any JSON value sent as every chat answer's finish reason
                       (default None: ``stop``, or ``length`` when ``max_tokens`` cut it).
    ``embedding_override``  ``Callable[[str], list[float]]``: the vector /v1/embeddings
                       answers for a text (default None: the hash-derived unit vector);
                       NaN and infinity go out as JSON's ``NaN`` / ``Infinity``.
    ``max_embedding_chars``  when set, a /v1/embeddings request holding a text longer
                       than this many characters is refused with ``oversize_status``
                       (default 413; OpenAI itself answers 400) and error code
                       ``oversize_code`` (default ``context_length_exceeded``), as a
                       model whose input it is too large for; the error's message quotes
                       the text's start and the request's ``Authorization`` header, as a
                       careless server might (default None: any length).
    ``record``         keep every request in ``requests`` (default True; benches may turn it
                       off to save memory).
    ``rate_limit``     a provider limited to this many chat requests per ``rate_window``
                       seconds (fixed windows of ``time.monotonic()``; default None: no
                       limit). A request over it gets 429 ``rate_limit_exceeded`` with
                       ``Retry-After`` (whole seconds, rounded up) and ``retry-after-ms``
                       until the window ends, and is not answered otherwise.
    ``token_limit``    a provider limited to this many tokens (prompt + completion, as its
                       ``usage`` counts them: one word = one token) per ``rate_window``
                       seconds, counted in the window the request arrived in once its answer
                       is known (default None: no limit). An answer that takes its window
                       past the limit is not sent: 429 ``rate_limit_exceeded``
                       (``Retry-After`` as for ``rate_limit``) instead.
    ``token_counting`` how ``token_limit`` counts a request: ``"used"`` (default) as above;
                       ``"reserved"`` as OpenAI documents for its TPM limit: the prompt plus
                       the request's ``max_tokens`` when it arrives, whatever the answer then
                       uses (a request over the limit gets the 429 at once, unanswered);
                       without ``max_tokens``, the prompt at arrival and the answer's tokens
                       once known.
    ``rate_window``    the window of ``rate_limit`` and ``token_limit`` in seconds (default 60).
    ``embedding_concurrency``  an embeddings endpoint serving at most this many
                       /v1/embeddings requests at once, as TEI's ``--max-concurrent-requests``
                       (default None: any number): one more is answered 429 at once, with
                       ``Retry-After: 1`` (``rate_limited`` counts it).

Per-request behaviours (:class:`Behaviour`), consumed first-in first-out by chat and
embedding requests; when the queue is empty the default (a normal answer) applies:
    ``Behaviour.ok(text=None, latency=None, chunk_delay=None, usage=None)``
    ``Behaviour.error(status, body=None, headers=None)``  e.g. 400, 404, 500, 503 (any
        status: ``Behaviour.error(200, "…", headers)`` answers a raw body; ``bytes`` go out
        as they are, e.g. a gzip body with ``Content-Encoding: gzip``)
    ``Behaviour.rate_limited(retry_after="1", retry_after_ms=None)``  429 with a
        ``Retry-After`` header (whole seconds or an HTTP-date; ``None`` = no header), and a
        ``retry-after-ms`` one when given (sub-second waits: "0.2" is no Retry-After)
    ``Behaviour.unauthorized()``  401 ``invalid_api_key``
    ``Behaviour.echo_request(status=400)``  an error whose message quotes the whole request
        as received, its headers (``Authorization`` too) and body, as a careless server may
        (chat, embeddings and rerank)
    ``Behaviour.model_not_found(model="x")``  404 ``model_not_found``
    ``Behaviour.reset()``  accept the request, then abort the TCP connection without a reply
    ``Behaviour.malformed()``  200 with a body that is not JSON (for a stream: one good chunk,
        then a ``data:`` line that is not JSON)
    ``Behaviour.cut_stream(after_chunks=2)``  stream a few chunks, then close the connection
        (no ``finish_reason``, no ``[DONE]``); for a unary request, a truncated body
    ``Behaviour.slow_stream(chunk_delay)``  a normal answer with a delay between chunks
    ``Behaviour.hang(seconds=3600)``  wait that long before answering
    ``Behaviour.held(release)``  answer (normally) once ``release``, an ``asyncio.Event``,
                       is set: a test decides the order answers complete in
``fake.enqueue(*behaviours)``, ``fake.fail_next(n, behaviour)``, ``fake.clear_queue()``.

Per-model behaviours (a fallback chain names several models of one endpoint): a request
naming ``model`` first takes the next behaviour of ``fake.enqueue_for_model(model, *b)``
(FIFO), else ``fake.by_model[model]`` (every request for it), else the shared queue:
    fake.by_model["big-model"] = Behaviour.error(503)      # always failing
    fake.enqueue_for_model("json-model", Behaviour.ok(text="not json"),
                           Behaviour.ok(text='{"title": "x"}'))

Recording
    ``requests``        every :class:`RecordedRequest` (method, path, headers, json, times)
    ``chat_requests``   only the chat completions
    ``concurrent`` / ``max_concurrent``   chat + embedding requests in flight now / at most
    ``disconnects``     requests whose client went away before the answer was complete
    ``disconnected``    an ``asyncio.Event`` set on the first such disconnect
    ``served``          chat + embedding requests received so far
    ``window_counts``   chat requests *received* per window of ``rate_window`` (429s too):
                        ``max_per_window`` is the most any window saw; with a polite client
                        it never exceeds ``rate_limit``. ``window_tokens``: the tokens of
                        the chat requests received, per window they arrived in (the answers
                        refused over ``token_limit`` too): ``max_tokens_per_window`` is the
                        most any window saw; with a polite client it never exceeds
                        ``token_limit``.
                        ``rate_limited``: 429s answered;
                        ``refused``: an ``asyncio.Event`` set on the first one.
    ``await wait_for_requests(n, timeout=5)``   until ``served >= n``
    ``gate``            an ``asyncio.Event`` (default None): chat answers wait until it is
                        set, so a test can hold every answer until its racing calls arrived;
                        ``gated`` counts those waiting, ``gate_reached`` is set at each arrival
    ``reset_stats()``   forget requests, counters and disconnects

A :class:`RecordedRequest` carries ``received_at``, ``first_chunk_at`` (when the first SSE
chunk carrying text was written to the socket) and ``finished_at``, all ``time.perf_counter()``
values, so a benchmark in the same process can measure what happens after the server wrote
a byte. ``client_disconnected`` is True when the client hung up mid-answer.

``FakeOpenAI`` may also run in a background thread with its own event loop (for benches that
must not share a loop with the code they measure): ``with FakeOpenAI().in_thread() as fake:``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import math
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from services.common.hostport import join_host_port

Reply = str | Callable[[dict[str, Any]], str]


def echo_last_user(body: dict[str, Any]) -> str:
    """The content of the last user message (the default reply)."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):  # content parts
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "ok"


def word_overlap(query: str, document: str) -> float:
    """The share of the query's words found in the document (case-insensitive)."""
    words = {w for w in re.findall(r"\w+", query.lower())}
    found = set(re.findall(r"\w+", document.lower()))
    return len(words & found) / len(words) if words else 0.0


def count_tokens(text: str) -> int:
    """The fake's tokenizer: one word = one token."""
    return len(text.split())


@dataclass
class Behaviour:
    """How the server answers one request (see the module docstring for constructors)."""

    kind: str = "ok"  # ok | error | echo | reset | malformed | cut | hang
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    text: str | None = None
    latency: float | None = None
    chunk_delay: float | None = None
    usage: bool | None = None
    after_chunks: int = 2
    release: asyncio.Event | None = None

    @classmethod
    def ok(
        cls,
        text: str | None = None,
        *,
        latency: float | None = None,
        chunk_delay: float | None = None,
        usage: bool | None = None,
    ) -> Behaviour:
        return cls(text=text, latency=latency, chunk_delay=chunk_delay, usage=usage)

    @classmethod
    def error(
        cls, status: int, body: Any = None, headers: dict[str, str] | None = None
    ) -> Behaviour:
        if body is None:
            body = {
                "error": {
                    "message": f"fake upstream error {status}",
                    "type": "server_error" if status >= 500 else "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            }
        return cls(kind="error", status=status, body=body, headers=dict(headers or {}))

    @classmethod
    def echo_request(cls, status: int = 400) -> Behaviour:
        return cls(kind="echo", status=status)

    @classmethod
    def rate_limited(
        cls, retry_after: str | float | None = "1", *, retry_after_ms: str | None = None
    ) -> Behaviour:
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        if retry_after_ms is not None:
            headers["retry-after-ms"] = retry_after_ms
        body = {
            "error": {
                "message": "Rate limit reached",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
        return cls.error(429, body, headers)

    @classmethod
    def unauthorized(cls) -> Behaviour:
        body = {
            "error": {
                "message": "Incorrect API key provided.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
        return cls.error(401, body)

    @classmethod
    def model_not_found(cls, model: str = "unknown-model") -> Behaviour:
        return cls.error(404, _model_not_found_body(model))

    @classmethod
    def reset(cls) -> Behaviour:
        return cls(kind="reset")

    @classmethod
    def malformed(cls) -> Behaviour:
        return cls(kind="malformed")

    @classmethod
    def cut_stream(cls, after_chunks: int = 2) -> Behaviour:
        return cls(kind="cut", after_chunks=after_chunks)

    @classmethod
    def slow_stream(cls, chunk_delay: float) -> Behaviour:
        return cls(chunk_delay=chunk_delay)

    @classmethod
    def hang(cls, seconds: float = 3600.0) -> Behaviour:
        return cls(latency=seconds)

    @classmethod
    def held(cls, release: asyncio.Event) -> Behaviour:
        return cls(release=release)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    json: Any
    received_at: float
    first_chunk_at: float | None = None
    finished_at: float | None = None
    client_disconnected: bool = False
    behaviour: str = "ok"


def _model_not_found_body(model: str) -> dict[str, Any]:
    return {
        "error": {
            "message": f"The model `{model}` does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    }


class FakeOpenAI:
    def __init__(
        self,
        *,
        latency: float = 0.0,
        latency_jitter: float = 0.0,
        chunk_delay: float = 0.0,
        reply: Reply | None = None,
        models: tuple[str, ...] | list[str] = ("fake-model",),
        reject_unknown_models: bool = False,
        api_key: str | None = None,
        include_usage: bool = True,
        embedding_dim: int = 8,
        record: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        rate_limit: int | None = None,
        rate_window: float = 60.0,
        token_limit: int | None = None,
        token_counting: str = "used",
    ) -> None:
        self.latency = latency
        self.latency_jitter = latency_jitter
        self.chunk_delay = chunk_delay
        self.reply: Reply = reply if reply is not None else echo_last_user
        self.models = list(models)
        self.reject_unknown_models = reject_unknown_models
        self.api_key = api_key
        self.include_usage = include_usage
        self.usage_override: dict[str, Any] | None = None
        self.model_override: Any = None
        self.finish_reason_override: Any = None
        self.embedding_override: Callable[[str], list[float]] | None = None
        self.embedding_dim = embedding_dim
        self.max_embedding_chars: int | None = None
        self.oversize_status = 413
        self.oversize_code: Any = "context_length_exceeded"
        self.record = record
        self.rerank_score: Callable[[str, str], float] = word_overlap
        self.host = host
        self.port = port
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.window_counts: dict[int, int] = {}
        self.token_limit = token_limit
        if token_counting not in ("used", "reserved"):
            raise ValueError(f"token_counting: 'used' or 'reserved', not {token_counting!r}")
        self.token_counting = token_counting
        self.window_tokens: dict[int, int] = {}
        self.rate_limited = 0
        self.refused = asyncio.Event()
        self.requests: list[RecordedRequest] = []
        self.embedding_concurrency: int | None = None
        self._embedding_in_flight = 0
        self.concurrent = 0
        self.max_concurrent = 0
        self.disconnects = 0
        self.served = 0
        self.tokenize_up = True
        # A raw body /tokenize answers instead (200, application/json), e.g. junk.
        self.tokenize_body: bytes | None = None
        self.tokenize_calls = 0
        self.disconnected = asyncio.Event()
        # Set: chat answers wait until it is set (a test holds every answer back until
        # all the calls it races have arrived). None: no gate.
        self.gate: asyncio.Event | None = None
        # Chat requests waiting at the gate now; set at each one's arrival there.
        self.gated = 0
        self.gate_reached = asyncio.Event()
        self._arrived = asyncio.Event()
        self._queue: deque[Behaviour] = deque()
        self.by_model: dict[str, Behaviour] = {}
        self._model_queues: dict[str, deque[Behaviour]] = {}
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{join_host_port(self.host, self.port)}/v1"

    async def start(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/fake/stats", self._stats)
        app.router.add_post("/fake/reset", self._reset)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/v1/rerank", self._rerank)
        # handler_cancellation: a client that hangs up cancels the handler at once, which is
        # how the tests observe that an upstream request was really cancelled.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.disconnected = asyncio.Event()
        self.refused = asyncio.Event()
        self._arrived = asyncio.Event()
        return self

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeOpenAI:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[FakeOpenAI]:
        """Serve from a daemon thread with its own event loop (blocking context manager)."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()

        thread = threading.Thread(target=run, name="fake-openai", daemon=True)
        thread.start()
        ready.wait(10)
        try:
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()

    # -- scripting -------------------------------------------------------------------------
    def enqueue(self, *behaviours: Behaviour) -> None:
        self._queue.extend(behaviours)

    def fail_next(self, count: int, behaviour: Behaviour) -> None:
        self._queue.extend([behaviour] * count)

    def enqueue_for_model(self, model: str, *behaviours: Behaviour) -> None:
        self._model_queues.setdefault(model, deque()).extend(behaviours)

    def clear_queue(self) -> None:
        self._queue.clear()
        self._model_queues.clear()

    def _next_behaviour(self, body: Any) -> Behaviour:
        model = body.get("model") if isinstance(body, dict) else None
        if isinstance(model, str):
            queue = self._model_queues.get(model)
            if queue:
                return queue.popleft()
            if model in self.by_model:
                return self.by_model[model]
        return self._queue.popleft() if self._queue else Behaviour()

    @property
    def pending(self) -> int:
        """Scripted behaviours not consumed yet."""
        return len(self._queue)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    async def wait_for_requests(self, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until ``count`` chat/embedding requests have arrived in all."""
        async with asyncio.timeout(timeout):
            while self.served < count:
                self._arrived.clear()
                await self._arrived.wait()

    @property
    def max_per_window(self) -> int:
        return max(self.window_counts.values(), default=0)

    @property
    def max_tokens_per_window(self) -> int:
        return max(self.window_tokens.values(), default=0)

    def _over_rate_limit(self, window: int) -> float | None:
        """Counts a chat request in its window; the seconds until the window ends when the
        request is over ``rate_limit``."""
        count = self.window_counts[window] = self.window_counts.get(window, 0) + 1
        if self.rate_limit is None or count <= self.rate_limit:
            return None
        return self._window_left(window)

    def _window_left(self, window: int) -> float:
        return max(0.0, (window + 1) * self.rate_window - time.monotonic())

    def _over_token_limit(self, window: int, tokens: int) -> float | None:
        """Counts an answer's tokens in the window its request arrived in; the seconds
        until the window ends when they take it past ``token_limit``."""
        spent = self.window_tokens[window] = self.window_tokens.get(window, 0) + tokens
        if self.token_limit is None or spent <= self.token_limit:
            return None
        return self._window_left(window)

    def reset_stats(self) -> None:
        self.window_counts.clear()
        self.window_tokens.clear()
        self.rate_limited = 0
        self.refused = asyncio.Event()
        self.requests.clear()
        self.concurrent = 0
        self.max_concurrent = 0
        self.disconnects = 0
        self.served = 0
        self.disconnected = asyncio.Event()

    # -- handlers --------------------------------------------------------------------------
    async def _tokenize(self, request: web.Request) -> web.StreamResponse:
        if not self.tokenize_up:
            return web.json_response({"error": "unavailable"}, status=503)
        body = await request.json()
        self.tokenize_calls += 1
        if self.tokenize_body is not None:
            return web.Response(body=self.tokenize_body, content_type="application/json")
        words = str(body.get("content", "")).split()
        return web.json_response({"tokens": list(range(len(words)))})

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "served": self.served,
                "rate_limited": self.rate_limited,
                "max_per_window": self.max_per_window,
                "max_tokens_per_window": self.max_tokens_per_window,
            }
        )

    async def _reset(self, request: web.Request) -> web.StreamResponse:
        self.reset_stats()
        return web.json_response({})

    async def _models(self, request: web.Request) -> web.StreamResponse:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _begin(self, request: web.Request) -> tuple[RecordedRequest, Behaviour]:
        received = time.perf_counter()
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        behaviour = self._next_behaviour(body)
        rec = RecordedRequest(
            method=request.method,
            path=request.path,
            headers=dict(request.headers),
            json=body,
            received_at=received,
            behaviour=behaviour.kind,
        )
        if self.record:
            self.requests.append(rec)
        self.served += 1
        self._arrived.set()
        return rec, behaviour

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if self.api_key is None:
            return None
        if request.headers.get("Authorization") == f"Bearer {self.api_key}":
            return None
        body = Behaviour.unauthorized().body
        return web.json_response(body, status=401)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        rec: RecordedRequest | None = None
        try:
            window = int(time.monotonic() // self.rate_window)
            rec, behaviour = await self._begin(request)
            wait = self._over_rate_limit(window)
            if wait is None and self.token_counting == "reserved":
                wait = self._over_token_limit(window, _reserved_tokens(rec.json))
            if wait is not None:
                return self._refuse(rec, wait)
            return await self._answer_chat(request, rec, behaviour, window)
        except (asyncio.CancelledError, ConnectionResetError):
            if rec is not None:
                self._note_disconnect(rec)
            raise
        finally:
            self.concurrent -= 1
            if rec is not None:
                rec.finished_at = time.perf_counter()

    def _refuse(self, rec: RecordedRequest, wait: float) -> web.Response:
        """429 until the window ends: over ``rate_limit`` or ``token_limit``."""
        self.rate_limited += 1
        self.refused.set()
        rec.behaviour = "rate_limited"
        limited = Behaviour.rate_limited(retry_after=math.ceil(wait))
        limited.headers["retry-after-ms"] = str(math.ceil(wait * 1000))
        return _error_response(limited)

    async def _wait(self, behaviour: Behaviour) -> None:
        """The latency before an answer: the behaviour's own, else the (jittered) default."""
        latency = behaviour.latency
        if latency is None:
            spread = self.latency_jitter
            latency = self.latency * (random.uniform(1 - spread, 1 + spread) if spread else 1)
        if latency > 0:
            await asyncio.sleep(latency)

    def _note_disconnect(self, rec: RecordedRequest) -> None:
        rec.client_disconnected = True
        self.disconnects += 1
        self.disconnected.set()

    async def _answer_chat(
        self, request: web.Request, rec: RecordedRequest, behaviour: Behaviour, window: int
    ) -> web.StreamResponse:
        body = rec.json if isinstance(rec.json, dict) else {}
        stream = bool(body.get("stream"))
        if self.gate is not None:
            self.gated += 1
            self.gate_reached.set()
            try:
                await self.gate.wait()
            finally:
                self.gated -= 1
        if behaviour.release is not None:
            await behaviour.release.wait()
        await self._wait(behaviour)
        if behaviour.kind == "reset":
            return self._abort(request)
        if behaviour.kind in ("error", "echo"):
            return _error_response(behaviour, rec)
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        if not isinstance(rec.json, dict) or not isinstance(body.get("messages"), list):
            return _error_response(
                Behaviour.error(
                    400,
                    {
                        "error": {
                            "message": "'messages' is a required property",
                            "type": "invalid_request_error",
                            "param": "messages",
                            "code": None,
                        }
                    },
                )
            )
        model: Any = str(body.get("model") or (self.models[0] if self.models else "fake-model"))
        if self.model_override is not None:
            model = self.model_override
        if self.reject_unknown_models and model not in self.models:
            return web.json_response(_model_not_found_body(model), status=404)
        if behaviour.kind == "malformed" and not stream:
            return web.Response(
                status=200,
                text='{"id": "chatcmpl-broken", "choices": [{',
                content_type="application/json",
            )
        text = behaviour.text if behaviour.text is not None else self._reply_text(body)
        words, finish = _cut(text, body)
        if self.finish_reason_override is not None:
            finish = self.finish_reason_override
        usage = {
            "prompt_tokens": sum(
                count_tokens(str(m.get("content", "")))
                for m in body["messages"]
                if isinstance(m, dict)
            ),
            "completion_tokens": len(words),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if self.token_counting == "used":
            wait = self._over_token_limit(window, usage["total_tokens"])
        elif _max_tokens(body) is None:  # reserved: the prompt was counted at arrival
            wait = self._over_token_limit(window, usage["completion_tokens"])
        else:
            wait = None  # reserved: counted whole at arrival
        if wait is not None:
            return self._refuse(rec, wait)
        if self.usage_override is not None:
            usage = dict(self.usage_override)
        with_usage = self.include_usage if behaviour.usage is None else behaviour.usage
        ident = f"chatcmpl-fake{next(self._ids)}"
        if not stream:
            if behaviour.kind == "cut":
                return self._abort(request, partial=b'{"id": "' + ident.encode())
            payload: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(words)},
                        "finish_reason": finish,
                    }
                ],
            }
            if with_usage:
                payload["usage"] = usage
            return web.json_response(payload)
        delay = self.chunk_delay if behaviour.chunk_delay is None else behaviour.chunk_delay
        want_usage = with_usage and bool((body.get("stream_options") or {}).get("include_usage"))
        return await self._stream(
            request,
            rec,
            behaviour,
            ident,
            model,
            words,
            finish,
            usage if want_usage else None,
            delay,
        )

    def _reply_text(self, body: dict[str, Any]) -> str:
        return self.reply(body) if callable(self.reply) else self.reply

    async def _stream(
        self,
        request: web.Request,
        rec: RecordedRequest,
        behaviour: Behaviour,
        ident: str,
        model: str,
        words: list[str],
        finish: str,
        usage: dict[str, int] | None,
        delay: float,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
        )
        await resp.prepare(request)
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            data = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        try:
            await resp.write(chunk({"role": "assistant", "content": ""}))
            for n, word in enumerate(words):
                if n and delay > 0:
                    await asyncio.sleep(delay)
                if behaviour.kind == "cut" and n >= behaviour.after_chunks:
                    # A moment for the client to take what was sent: a reader usually drops
                    # buffered bytes once it sees the connection fail.
                    await asyncio.sleep(0.05)
                    self._abort(request, flush=True)
                    return resp
                if behaviour.kind == "malformed" and n >= 1:
                    await resp.write(b'data: {"id": "broken", "choices": [{"delta": \n\n')
                    await resp.write(b"data: [DONE]\n\n")
                    return resp
                await resp.write(chunk({"content": word}))
                if rec.first_chunk_at is None:
                    rec.first_chunk_at = time.perf_counter()
            if behaviour.kind == "cut":
                self._abort(request, flush=True)
                return resp
            await resp.write(chunk({}, finish))
            if usage is not None:
                last = {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
                await resp.write(b"data: " + json.dumps(last).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionResetError:
            self._note_disconnect(rec)
        return resp

    def _abort(
        self, request: web.Request, partial: bytes = b"", *, flush: bool = False
    ) -> web.Response:
        """Drop the connection: abort (RST-like, buffered bytes lost) or, with ``flush``,
        close after what was written so far has been sent (an answer cut short)."""
        transport = request.transport
        if transport is not None:
            if partial:
                head = (
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000\r\n\r\n" + partial
                )
                transport.write(head)
            if flush or partial:
                transport.close()
            else:
                transport.abort()
        # aiohttp cannot send this: the connection is gone. It only satisfies the handler.
        return web.Response(status=500)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        self._embedding_in_flight += 1
        try:
            rec, behaviour = await self._begin(request)
            cap = self.embedding_concurrency
            if cap is not None and self._embedding_in_flight > cap:
                return self._refuse(rec, 1.0)  # overloaded: the endpoint's own 429
            await self._wait(behaviour)
            if behaviour.kind == "reset":
                return self._abort(request)
            if behaviour.kind in ("error", "echo"):
                return _error_response(behaviour, rec)
            if behaviour.kind == "malformed":
                return web.Response(text="{not json", content_type="application/json")
            denied = self._auth_error(request)
            if denied is not None:
                return denied
            body = rec.json if isinstance(rec.json, dict) else {}
            inputs = body.get("input")
            texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
            limit = self.max_embedding_chars
            too_long = [str(t) for t in texts if limit is not None and len(str(t)) > limit]
            if too_long:
                said = (
                    f"input {too_long[0][:40]!r} is too long for the model "
                    f"(request authorized as {request.headers.get('Authorization', '')!r})"
                )
                return web.json_response(
                    {
                        "error": {
                            "message": said,
                            "type": "invalid_request_error",
                            "param": "input",
                            "code": self.oversize_code,
                        }
                    },
                    status=self.oversize_status,
                )
            data = [
                {"object": "embedding", "index": i, "embedding": self._vector(str(t))}
                for i, t in enumerate(texts)
            ]
            tokens = sum(count_tokens(str(t)) for t in texts)
            return web.json_response(
                {
                    "object": "list",
                    "data": data,
                    "model": body.get("model") or "fake-embedding",
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                }
            )
        finally:
            self.concurrent -= 1
            self._embedding_in_flight -= 1

    @property
    def rerank_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/v1/rerank"]

    async def _rerank(self, request: web.Request) -> web.StreamResponse:
        rec, behaviour = await self._begin(request)
        await self._wait(behaviour)
        if behaviour.kind == "reset":
            return self._abort(request)
        if behaviour.kind in ("error", "echo"):
            return _error_response(behaviour, rec)
        if behaviour.kind == "malformed":
            return web.Response(text="{not json", content_type="application/json")
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        body = rec.json if isinstance(rec.json, dict) else {}
        query = str(body.get("query", ""))
        documents = [str(d) for d in body.get("documents") or []]
        scored = [
            {"index": i, "relevance_score": self.rerank_score(query, d)}
            for i, d in enumerate(documents)
        ]
        scored.sort(key=lambda r: (-r["relevance_score"], r["index"]))
        top_n = body.get("top_n")
        if isinstance(top_n, int) and top_n >= 0:
            scored = scored[:top_n]
        return web.json_response(
            {"id": f"rerank-{next(self._ids)}", "model": body.get("model"), "results": scored}
        )

    def _vector(self, text: str) -> list[float]:
        if self.embedding_override is not None:
            return self.embedding_override(text)
        digest = hashlib.sha256(text.encode()).digest()
        raw = [(digest[i % len(digest)] - 127.5) / 127.5 for i in range(self.embedding_dim)]
        norm = math.sqrt(sum(x * x for x in raw)) or 1.0
        return [x / norm for x in raw]


def _max_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_tokens", body.get("max_completion_tokens"))
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _reserved_tokens(body: Any) -> int:
    """What a provider counting reserved tokens takes when a request arrives: its prompt
    (one word = one token) plus its ``max_tokens``."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return 0
    prompt = sum(
        count_tokens(str(m.get("content", ""))) for m in body["messages"] if isinstance(m, dict)
    )
    return prompt + (_max_tokens(body) or 0)


def _cut(text: str, body: dict[str, Any]) -> tuple[list[str], str]:
    """Split the reply into word tokens (each keeps its leading space) and apply stop and
    max_tokens the way an OpenAI server does."""
    finish = "stop"
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if isinstance(s, str)]
    for s in stops:
        if s and s in text:
            text = text[: text.index(s)]
    words: list[str] = []
    for i, word in enumerate(text.split(" ")):
        piece = word if i == 0 else " " + word
        if piece:
            words.append(piece)
    limit = body.get("max_tokens", body.get("max_completion_tokens"))
    if isinstance(limit, int) and limit >= 0 and len(words) > limit:
        words = words[:limit]
        finish = "length"
    return words, finish


def _error_response(behaviour: Behaviour, rec: RecordedRequest | None = None) -> web.Response:
    if behaviour.kind == "echo" and rec is not None:
        said = f"cannot serve this request: headers {rec.headers}, body {json.dumps(rec.json)}"
        behaviour = Behaviour.error(behaviour.status, {"error": {"message": said, "code": None}})
    if isinstance(behaviour.body, bytes):  # sent as is (a gzip body, with its headers)
        return web.Response(status=behaviour.status, body=behaviour.body, headers=behaviour.headers)
    if isinstance(behaviour.body, dict | list):
        return web.json_response(behaviour.body, status=behaviour.status, headers=behaviour.headers)
    return web.Response(
        status=behaviour.status, text=str(behaviour.body or ""), headers=behaviour.headers
    )
