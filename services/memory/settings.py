"""Settings of the memory service (namespace ``GENSEARCH_MEMORY_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import (
    MAX_SIZE_BYTES,
    MAX_TTL_SECONDS,
    MAX_WAIT_SECONDS,
    NAMESPACES,
    DownstreamSettings,
    data_dir_problem,
    defaults_within_their_maximum,
    header_secret_setting,
    model_directory,
    qdrant_url_setting,
    redis_cluster_problem,
    redis_key_prefix_setting,
    redis_url_setting,
)
from services.common.values import DEFAULT_MAX_DEPTH

MIB = 1024 * 1024


class MemorySettings(DownstreamSettings):
    model_config = SettingsConfigDict(env_prefix=NAMESPACES["memory"])

    port: int = Field(default=50051, ge=0, le=65535)
    # None: no metrics endpoint (tests); 0: any free port.
    metrics_port: int | None = Field(default=9091, ge=0, le=65535)

    # redis://[user:password@]host:port/db or rediss://... Empty: start an embedded
    # Redis-protocol server with its append-only file in <data_dir>/redis (a dev-only
    # launcher, services/devlaunch; every Kubernetes overlay sets a URL).
    redis_url: SecretStr = SecretStr("")
    # fsync policy of the embedded server's AOF. A clean restart (SIGTERM) loses nothing
    # with any of them. "always": an acknowledged write also survives kill -9 of Redis or
    # a power cut, but every write waits for the disk (~4 ms here, see
    # docs/benchmarks.md); "everysec" (Redis' own default): a crash may lose the last
    # second of writes.
    redis_appendfsync: Literal["always", "everysec", "no"] = "everysec"
    # Every key starts with this; several deployments can share one Redis.
    key_prefix: str = "gensearch"
    # Which of the two owners sharing a legacy key tag (alice of "default", alice of the
    # tenant "alice") owns the conversations stored before their tenant was recorded:
    # "default", or "own-tenant" for a deployment whose keys were "user:key" before
    # tenants (docs/memory.md#legacy-owners).
    untenanted_owner: Literal["default", "own-tenant"] = "default"
    # The URL names one node of a Redis Cluster (any node; the client discovers the
    # rest and routes each user's keys, which share one hash slot, to its node).
    # Needs redis_url; an embedded server is never a cluster.
    redis_cluster: bool = False
    # redis-py's own timeouts (seconds): a reply that takes longer fails its call with
    # UNAVAILABLE, and the call is not sent again (docs/memory.md).
    redis_socket_timeout: float = Field(default=2.0, gt=0, le=MAX_WAIT_SECONDS)
    redis_connect_timeout: float = Field(default=1.0, gt=0, le=MAX_WAIT_SECONDS)
    # Redis Cluster: how long a call refused by a slot move (TRYAGAIN: a write creating a
    # key, or keys split between the slot's two nodes, for as long as the move lasts)
    # waits at most for the move to end, sending the script again with backoff; never
    # past the call's deadline. Then UNAVAILABLE (docs/memory.md). 0: at once.
    slot_move_wait_seconds: float = Field(default=5.0, ge=0, le=MAX_WAIT_SECONDS)
    # DeleteConversation interrupted between its batches (the process died, Redis failed,
    # the caller gave up): the conversation is gone for every reader already, its turns
    # still stored. How long after its last batch its deletion counts as interrupted, and
    # how often every replica looks for those and finishes them (services/memory/deletions.py).
    delete_resume_seconds: float = Field(default=60.0, gt=0, le=MAX_WAIT_SECONDS)

    # Signs page tokens. Empty: a random secret is created once in Redis (SET NX), so
    # every replica and every restart agree.
    page_token_secret: SecretStr = SecretStr("")
    # How long a request_id of CreateInteraction is remembered for retries.
    request_id_ttl_seconds: int = Field(default=24 * 3600, ge=1, le=MAX_TTL_SECONDS)

    # Retention (docs/memory.md#retention). A conversation's time to live after its last
    # activity (sliding) and most turns kept, when its creator sets none; 0: none. A
    # request may set its own, within max_conversation_ttl_seconds.
    default_conversation_ttl_seconds: int = Field(default=0, ge=0, le=MAX_TTL_SECONDS)
    default_conversation_max_turns: int = Field(default=0, ge=0, le=100_000_000)
    max_conversation_ttl_seconds: int = Field(default=10 * 366 * 86400, ge=1, le=MAX_TTL_SECONDS)
    # Turns beyond max_turns wait for the summary to cover them before they are evicted;
    # when none covers them for this many more turns, they go anyway (counted on the
    # conversation as summary.evicted_unsummarised_turns).
    eviction_grace_turns: int = Field(default=100, ge=0, le=100_000_000)
    # Longest rolling summary accepted (UTF-8 bytes).
    max_summary_bytes: int = Field(default=64 * 1024, ge=1, le=MAX_SIZE_BYTES)

    # Storage per owner (a user of a tenant; docs/memory.md#storage-limits): past these, a
    # write that would store more is RESOURCE_EXHAUSTED (OWNER_STORAGE_FULL,
    # OWNER_CONVERSATIONS_FULL), so no reader can fill the Redis that also holds the
    # gateway's quotas and rate buckets. Bytes: serialized turns and traces, names and
    # summaries, plus a fixed 256 per turn and per conversation (lua/usage.lua).
    max_bytes_per_owner: int = Field(default=256 * MIB, ge=4096, le=MAX_SIZE_BYTES)
    # Finding expired conversations when at a limit walks the owner's list: O(this).
    max_conversations_per_owner: int = Field(default=10_000, ge=1, le=1_000_000)
    # Most turns one conversation may hold (past it, a new turn is RESOURCE_EXHAUSTED,
    # CONVERSATION_INTERACTIONS_FULL): deleting a conversation, and changing or renewing
    # its time to live, walk all its turns in one Lua script, during which Redis serves
    # nobody else; without this the byte limit alone let one reader grow a conversation
    # to ~750,000 tiny turns and block Redis for seconds with each UpdateConversation.
    max_interactions_per_conversation: int = Field(default=10_000, ge=1, le=1_000_000)

    # Size limits (UTF-8 bytes) of every text field a client sends.
    max_text_bytes: int = Field(default=MIB, ge=1, le=MAX_SIZE_BYTES)  # input and response
    max_prompt_template_bytes: int = Field(default=MIB, ge=1, le=MAX_SIZE_BYTES)
    max_name_bytes: int = Field(default=1024, ge=1, le=MAX_SIZE_BYTES)
    max_origin_bytes: int = Field(default=1024, ge=1, le=MAX_SIZE_BYTES)
    max_additional_info_bytes: int = Field(
        default=MIB, ge=1, le=MAX_SIZE_BYTES
    )  # serialized Struct
    max_request_id_bytes: int = Field(default=128, ge=1, le=MAX_SIZE_BYTES)
    # CheckStorage's claim_token: an attempt's id (the gateway sends a 32-character UUID in
    # hex, so at least that).
    max_claim_token_bytes: int = Field(default=64, ge=32, le=MAX_SIZE_BYTES)
    # CheckStorage's claim_seconds, the longest reservation of a request_id; more is
    # INVALID_ARGUMENT (OUT_OF_RANGE, metadata max, setting). The gateway claims up to its
    # GENSEARCH_GATEWAY_MEMORY_MAX_CLAIM_SECONDS: keep that at most this.
    max_claim_seconds: int = Field(default=3600, ge=1, le=MAX_WAIT_SECONDS)
    # Deepest nesting of objects and lists in additional_info (services/common/values.py).
    # At most 32: deeper, a stored Struct would no longer parse inside the responses that
    # carry it (protobuf stops at 100 message levels).
    max_value_depth: int = Field(default=DEFAULT_MAX_DEPTH, ge=1, le=DEFAULT_MAX_DEPTH)
    # Largest ListInteractions page, in serialized bytes: a page ends early (and says so
    # through next_page_token) rather than exceed it, and a single interaction larger than
    # this is refused when created, so every stored one can be read back. Below gRPC's
    # default 4 MiB receive limit, so clients with default settings can read any page;
    # lowered to 7/8 of max_message_bytes when that is smaller (see page_bytes).
    max_page_bytes: int = Field(default=3 * MIB, ge=64 * 1024, le=MAX_SIZE_BYTES)

    # Traces of an interaction (CreateInteraction.traces): at most max_traces, each at
    # most max_trace_bytes serialized; a larger one is shortened (long strings cut, marked
    # truncated) rather than refused, so a turn is never lost to its traces.
    max_traces: int = Field(default=16, ge=1, le=256)
    max_trace_bytes: int = Field(default=64 * 1024, ge=1024, le=MIB)

    # SearchInteractions (docs/memory.md). "off": no index, the RPC is FAILED_PRECONDITION.
    # "keyword": BM25 only, no model. "hybrid": BM25 and the local MiniLM vectors of input
    # and response (the model loads on first use, ~0.5 GB of memory with torch).
    # Off by default: the embedded index is one process's (qdrant-edge locks its files), so
    # several replicas need search_qdrant_url, and the model is heavy for this service.
    search_index: Literal["off", "keyword", "hybrid"] = "off"
    # Empty: the embedded qdrant-edge engine under <data_dir>/memory-index. Else a Qdrant
    # server ("http://host:6333"; ":memory:" for tests), in a collection of its own.
    search_qdrant_url: str = ""
    search_qdrant_api_key: SecretStr = SecretStr("")
    search_collection: str = Field(default="gensearch_memory", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    # A directory with a sentence-transformers model; empty: the bundled all-MiniLM-L6-v2.
    search_model_path: str = ""
    search_embed_threads: int = Field(default=1, ge=0, le=256)
    # Largest SearchInteractions limit, and longest query (UTF-8 bytes).
    max_search_limit: int = Field(default=50, ge=1, le=1000)
    max_search_query_bytes: int = Field(default=4096, ge=1, le=MAX_SIZE_BYTES)
    # Indexing runs after the turn is stored and never fails it; what failed waits in an
    # outbox in Redis and is tried again every this many seconds.
    search_retry_seconds: float = Field(default=5.0, gt=0, le=MAX_WAIT_SECONDS)
    # Index jobs of one tenant running at once in a replica (of 256 in all); its further
    # jobs wait in the outbox, and the rest serve other tenants' turns at once. 0: no
    # bound but the 256.
    search_jobs_per_tenant: int = Field(default=64, ge=0, le=100_000)
    # Jobs waiting in the outbox (every replica's, in Redis), and of one tenant (0: no
    # share). A job past either is dropped, never the turn: the sweep indexes the recent
    # turns of its owner (and removes what Redis no longer holds). Unbounded, a tenant
    # writing turns faster than the index took them grew it without end, for everyone.
    search_outbox_max_jobs: int = Field(default=100_000, ge=1, le=10_000_000)
    search_outbox_jobs_per_tenant: int = Field(default=25_000, ge=0, le=10_000_000)
    # Every this many seconds one replica walks the whole index and removes the entries of
    # turns Redis no longer holds (expired by retention, evicted, deleted): a search never
    # returns those anyway (every hit is re-read from Redis), this keeps the index small.
    search_sweep_seconds: float = Field(default=3600.0, gt=0, le=MAX_WAIT_SECONDS)

    _search_model_path = field_validator("search_model_path")(model_directory)
    _search_qdrant_url = field_validator("search_qdrant_url")(qdrant_url_setting)
    _search_qdrant_api_key = field_validator("search_qdrant_api_key")(header_secret_setting)

    _key_prefix = field_validator("key_prefix")(redis_key_prefix_setting)

    _redis_url = field_validator("redis_url")(redis_url_setting)

    @field_validator("page_token_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        # What PageTokens needs; checked here so a short one is a line at start, not a
        # traceback from building the servicer.
        if value.get_secret_value() and len(value.get_secret_value().encode()) < 16:
            raise ValueError("must be at least 16 bytes")
        return value

    def problems(self) -> list[str]:
        # Files go in data_dir only for the embedded Redis and the embedded search index.
        embedded_redis = not self.redis_url.get_secret_value()
        embedded_index = self.search_index != "off" and not self.search_qdrant_url
        problem = data_dir_problem(self.data_dir) if embedded_redis or embedded_index else None
        return [problem] if problem else []

    @model_validator(mode="after")
    def _default_ttl_within_max(self) -> MemorySettings:
        # A conversation created without a ttl would otherwise live longer than any
        # request may ask for (INVALID_TTL past the maximum).
        defaults_within_their_maximum(
            self, (("default_conversation_ttl_seconds", "max_conversation_ttl_seconds"),)
        )
        return self

    @model_validator(mode="after")
    def _cluster_needs_url(self) -> MemorySettings:
        if self.redis_cluster and not self.redis_url.get_secret_value():
            raise ValueError("redis_cluster needs redis_url: the embedded server is standalone")
        problem = redis_cluster_problem(self.redis_url.get_secret_value())
        if self.redis_cluster and problem:
            raise ValueError(problem)
        return self

    @property
    def page_bytes(self) -> int:
        """``max_page_bytes``, lowered when needed so a page fits a ``max_message_bytes``
        message with room to spare (the page token, field tags and lengths)."""
        return min(self.max_page_bytes, self.max_message_bytes - self.max_message_bytes // 8)
