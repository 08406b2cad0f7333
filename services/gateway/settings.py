"""Settings of the gateway (namespace ``GENSEARCH_GATEWAY_``, e.g. ``GENSEARCH_GATEWAY_PORT``)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.egress import MAX_URL, MAX_URL_BOUND
from services.common.model_names import (
    MAX_MODEL_CHARS,
    PROVIDER_NAME,
    PROVIDER_NAME_RULE,
    model_name_problem,
    model_name_setting,
    model_setting_too_long,
    provider_name_setting,
)
from services.common.schema_settings import SchemaBoundSettings
from services.common.settings import (
    DEFAULT_MAX_FALLBACKS,
    DEFAULT_MAX_PROMPT_CHARS,
    MAX_CACHED_ANSWER_BYTES,
    MAX_CONCURRENCY,
    MAX_FALLBACKS,
    MAX_PER_MINUTE,
    MAX_QUERY_TEXT,
    MAX_SIZE_BYTES,
    MAX_TOKENS,
    MAX_TTL_SECONDS,
    MAX_WAIT_SECONDS,
    NAMESPACES,
    defaults_within_their_maximum,
    grpc_target_setting,
    http_url_problem,
    redis_cluster_problem,
    redis_key_prefix_setting,
    redis_url_setting,
)
from services.common.values import DEFAULT_MAX_DEPTH


class GatewaySettings(SchemaBoundSettings):
    model_config = SettingsConfigDict(env_prefix=NAMESPACES["gateway"])

    port: int = Field(default=50050, ge=0, le=65535)
    # Callers are not trusted with the trace context: a call's trace is the gateway's own,
    # linked to the caller's span (CommonSettings.trust_caller_trace; docs/operations.md).
    trust_caller_trace: bool = False
    # None: no metrics endpoint (tests); 0: any free port.
    metrics_port: int | None = Field(default=9090, ge=0, le=65535)

    # Calls one tenant may hold at once in this gateway (CommonSettings): unset, half of
    # MAX_CONCURRENT_RPCS (call_share), so one tenant's flood leaves room for the others'
    # calls; with a Redis, QUOTA_CONCURRENT_CALLS bounds the tenant across replicas too.
    # Off when the gateway has one tenant or none (server.py: GrpcServer).
    max_concurrent_rpcs_per_tenant: int | None = Field(default=None, ge=0, le=MAX_CONCURRENCY)

    # Downstream services: host:port, or dns:///host:port to spread calls over every
    # address the name resolves to (client-side round-robin across replicas). Checked at
    # start (grpc_target_setting): gRPC would take a malformed one and fail every call.
    memory_addr: str = "127.0.0.1:50051"
    retrieval_addr: str = "127.0.0.1:50052"
    generation_addr: str = "127.0.0.1:50053"
    # Seconds, from a downstream client's first call, during which calls on a channel that
    # has never connected wait for its first connection (never past their own deadline)
    # before they are sent, so a gateway started before its services are up does not
    # fail its first calls; after that, or once connected, a service that is down answers
    # UNAVAILABLE at once (docs/gateway.md#channels-to-the-other-services). 0: no wait.
    downstream_connect_wait: float = Field(default=3.0, ge=0, le=MAX_WAIT_SECONDS)
    # Longest pause, in seconds, between attempts to reconnect to a service that is down.
    # gRPC's own default grows to 120 s: a service back after an outage of a minute would
    # stay UNAVAILABLE to this gateway for up to two more. Each channel then dials a dead
    # address this often at most, which is cheap.
    downstream_reconnect_backoff_max: float = Field(default=5.0, gt=0, le=120)

    # Per-hit generation calls in flight at once: the default, and the most a request
    # may ask for. 0: no cap, every hit of a request (at most max_hits) at once; the
    # generation service holds calls to each provider's declared and adaptive limits
    # (docs/gateway.md#fan-out).
    default_max_concurrency: int = Field(default=0, ge=0, le=10_000)
    max_concurrency_limit: int = Field(default=0, ge=0, le=10_000)
    # Most hits a generative search may ask for (limit).
    max_hits: int = Field(default=100, ge=1, le=10_000)
    # Generation calls (per hit, grouped, Ask, summary folds, forwarded) this gateway has
    # in flight at once, over all its requests; the rest wait first come first served,
    # within their deadline (docs/gateway.md#generation-calls-in-flight). Size it to what
    # the generation replicas accept at once: replicas x the smaller of their
    # MAX_CONCURRENT_RPCS and MAX_CONCURRENT_STREAMS, shared among the gateway replicas.
    # 0: no bound. Otherwise more than max_hits, so that one request's hits and its
    # grouped call never wait for each other.
    generation_max_in_flight: int = Field(default=1000, ge=0, le=MAX_CONCURRENCY)
    # Of those, the most one tenant's calls hold at once (at most generation_max_in_flight
    # takes effect); its others wait for its own to end while free slots stay for the
    # other tenants' calls. Without it a tenant whose calls took every slot (its
    # concurrent-calls quota times max_hits is 6400) made another tenant's call wait for
    # one of them to end. 0: no bound but the total. Otherwise more than max_hits, as the
    # total, so one request is never split into waves of its own. Unset: half of
    # generation_max_in_flight, at least max_hits + 1 (generation_share), so raising the
    # total raises it too. Off when the gateway has one tenant or none (tenant_share):
    # a fixed share held an open gateway's only tenant to half of its capacity.
    generation_max_in_flight_per_tenant: int | None = Field(default=None, ge=0, le=MAX_CONCURRENCY)
    # Token deltas a streaming generative search (or StreamGenerateOnObjects) holds for
    # a client that has not read them yet, all its hits together; when full, its hits
    # stop reading their generation streams (flow control holds the rest back, up to the
    # LLM) until the client reads on or the generation budget ends.
    stream_buffered_deltas: int = Field(default=256, ge=1, le=1_000_000)
    # Longest template / task / question / system prompt / instructions accepted, in
    # characters; a collection's system prompt and instructions too, at create.
    max_prompt_chars: int = Field(default=DEFAULT_MAX_PROMPT_CHARS, ge=100, le=MAX_SIZE_BYTES)
    # Longest prompt a single_prompt may render to for one hit, in characters (the
    # generation service's MAX_PROMPT_CHARS refuses more anyway); a hit over it gets its
    # own PROMPT_TOO_LONG error before its prompt is built.
    max_rendered_prompt_chars: int = Field(default=1_000_000, ge=100, le=MAX_SIZE_BYTES)
    # The characters of one request's single_prompt prompts together: a template naming a
    # property 1000 times rendered 100 hits x 1M characters from a 100 KB request. The hits
    # past it get their own PROMPT_TOO_LONG, with no call.
    max_rendered_request_chars: int = Field(default=16_000_000, ge=100, le=MAX_SIZE_BYTES)
    # generate.stop: sequences and characters each.
    max_stop_sequences: int = Field(default=4, ge=0, le=1000)
    max_stop_chars: int = Field(default=256, ge=1, le=MAX_SIZE_BYTES)
    # Characters of a model name (a request's model, a fallback pair's), checked before any
    # LLM call; longer is INVALID_ARGUMENT (FIELD_TOO_LARGE) naming the field, metadata
    # max_chars and setting (a collection's stored one: FAILED_PRECONDITION). Keep it at
    # most generation's GENSEARCH_GENERATION_MAX_MODEL_CHARS, which checks again. The
    # default model setting is held to it at start.
    max_model_chars: int = Field(default=MAX_MODEL_CHARS, ge=1, le=MAX_SIZE_BYTES)
    # Characters of a URL a caller sends (generate.base_url, an Ask's base_url):
    # longer is INVALID_ARGUMENT (FIELD_TOO_LARGE) naming the field, metadata max_chars
    # and setting, before the allowlist is read.
    max_url_chars: int = Field(default=MAX_URL, ge=16, le=MAX_URL_BOUND)
    # generate.fallback and Ask's fallback: (provider, model) pairs after the primary one.
    max_fallbacks: int = Field(default=DEFAULT_MAX_FALLBACKS, ge=0, le=MAX_FALLBACKS)
    # generate.response_format.json_schema: its bounds are SchemaBoundSettings'.
    # Generation budget when neither the request nor the call has a deadline, seconds.
    default_generation_timeout: float = Field(default=120.0, gt=0, le=MAX_WAIT_SECONDS)

    # Used when neither the request nor the collection names them; empty: the
    # generation service's own default.
    default_provider: str = ""
    default_model: str = ""

    # Context window (tokens) by model name: the longest key contained in the model name
    # wins (case-insensitive); models matching no key get default_context_window.
    # Env: GENSEARCH_GATEWAY_CONTEXT_WINDOWS='{"smollm2": 2048, "gpt-4o": 128000}'.
    # The defaults: the bundled model and OpenAI's current chat models (published windows).
    context_windows: dict[str, Annotated[int, Field(ge=1, le=MAX_TOKENS)]] = Field(
        default_factory=lambda: {
            "smollm2": 2048,
            "gpt-3.5-turbo": 16_385,
            "gpt-4-turbo": 128_000,
            "gpt-4o": 128_000,
            "gpt-4.1": 1_047_576,
        }
    )
    default_context_window: int = Field(default=8192, ge=256, le=MAX_TOKENS)
    # Tokens kept free for the answer when the request sets no max_tokens.
    answer_reserve_tokens: int = Field(default=512, ge=16, le=MAX_TOKENS)
    # Providers whose models are counted with a llama.cpp server's own /tokenize:
    # provider name -> the server's root URL (the bundled model's server by default).
    # OpenAI models are counted with tiktoken, others by estimate (docs/gateway.md#history).
    tokenize_urls: dict[str, str] = Field(
        default_factory=lambda: {"local": "http://127.0.0.1:8088"}
    )
    tokenize_timeout: float = Field(default=2.0, gt=0, le=MAX_WAIT_SECONDS)
    # After /tokenize failed, count by estimate for this long before asking it again.
    tokenize_retry_seconds: float = Field(default=30.0, ge=0, le=MAX_WAIT_SECONDS)
    # Token counts remembered per tokenizer (by text digest): each past turn is counted once.
    token_cache_entries: int = Field(default=20_000, ge=0, le=10_000_000)

    # --- rolling summary of the turns the history budget leaves out (docs/gateway.md) ---
    summary_enabled: bool = True
    # Folds waiting at most (beyond: dropped and counted; the next turn asks again).
    summary_queue_size: int = Field(default=256, ge=1, le=1_000_000)
    # Folds of one tenant waiting at most: a tenant that floods the queue leaves the rest
    # to the others (background.py), whose folds also take turns with its own.
    summary_queue_per_tenant: int = Field(default=64, ge=1, le=1_000_000)
    summary_workers: int = Field(default=2, ge=1, le=1000)
    # Longest summary the LLM may write (tokens), and how long one fold may take.
    summary_max_tokens: int = Field(default=400, ge=32, le=MAX_TOKENS)
    summary_timeout: float = Field(default=60.0, gt=0, le=MAX_WAIT_SECONDS)
    # At shutdown, queued folds get this long to finish.
    summary_drain_timeout: float = Field(default=10.0, ge=0, le=MAX_WAIT_SECONDS)
    # Turns one fold call takes at most, and pending turns one fold takes at most (the
    # oldest ones: a summary covers every turn up to the last it folded; the rest wait
    # for the next fold).
    summary_max_batch_turns: int = Field(default=50, ge=1, le=10_000)
    summary_max_read_turns: int = Field(default=1000, ge=1, le=100_000)

    # Ask defaults and limits.
    ask_context_size: int = Field(default=5, ge=0, le=10_000)
    ask_interaction_size: int = Field(default=10, ge=0, le=10_000)
    ask_timeout: float = Field(default=30.0, gt=0, le=MAX_WAIT_SECONDS)
    max_ask_timeout: float = Field(default=600.0, gt=0, le=MAX_WAIT_SECONDS)
    # Seconds an Ask's clean-up may take past its deadline: the Ask's hold on its
    # request_id lasts that much past its deadline (a gateway killed mid-Ask frees it
    # then), and letting it go when the Ask fails gets that long. (A new conversation
    # needs none: memory makes it with its first turn, in one atomic write.)
    ask_cleanup_seconds: float = Field(default=30.0, gt=0, le=MAX_WAIT_SECONDS)
    # The longest reservation of its request_id an Ask asks memory for (it asks for its
    # time left plus ask_cleanup_seconds, capped here). Keep it at most memory's
    # GENSEARCH_MEMORY_MAX_CLAIM_SECONDS (same default): above it, a long Ask's claim is
    # refused by memory (INVALID_ARGUMENT claim_seconds, naming that setting).
    memory_max_claim_seconds: int = Field(default=3600, ge=1, le=MAX_WAIT_SECONDS)
    max_context_size: int = Field(default=50, ge=1, le=10_000)
    max_interaction_size: int = Field(default=100, ge=1, le=10_000)
    # Characters of past turns (questions and answers) an Ask reads at most; older turns
    # are left unread and counted in trimmed.history_turns, so a conversation of huge
    # turns never fails a question. ~146k tokens at 3.5 characters a token: more than
    # common context windows hold, and the rewrite prompt stays under generation's
    # default prompt limit (1M characters).
    ask_history_chars: int = Field(default=512_000, ge=1000, le=MAX_SIZE_BYTES)
    # Characters of an Ask's question (or its rewrite) it searches and reranks with, when
    # the request names no query text of its own: the rest is not sent to retrieval. Keep
    # it at most retrieval's MAX_QUERY_TEXT_CHARS and MAX_RERANK_QUERY_CHARS (their
    # default is this one's), or a long question is refused there.
    ask_search_text_chars: int = Field(default=MAX_QUERY_TEXT, ge=1, le=MAX_SIZE_BYTES)
    # Each trace an Ask stores with its turn (rewrite, retrieval, generation) is cut to this
    # many serialized bytes before it is sent (long strings shortened, marked truncated);
    # memory applies its own max_trace_bytes too. 0: store no traces.
    ask_trace_bytes: int = Field(default=64 * 1024, ge=0, le=1024 * 1024)
    # An answer is stored with its turn cut to this many UTF-8 bytes (the turn's
    # additional_info says response_truncated); the caller still gets all of it. A memory
    # that says its limits (CheckStorage) gets it cut further to its own
    # GENSEARCH_MEMORY_MAX_TEXT_BYTES (memory_limits.py); an older one refuses a longer
    # response, which fails the whole Ask with INVALID_ARGUMENT naming `response`, a field
    # the caller never sent, after the answer was paid for. Keep it at most memory's.
    ask_answer_bytes: int = Field(default=1024 * 1024, ge=1, le=MAX_SIZE_BYTES)
    # Rewrite follow-up questions into standalone queries unless the request says no.
    rewrite_query: bool = True
    # Chunk-aware context (expand_context; services/gateway/chunks.py): the most neighbours
    # a request may ask for on each side of a hit, the passages' token budget when a
    # request sets none, and the largest budget a request may set.
    max_expansion_neighbors: int = Field(default=10, ge=0, le=1000)
    expansion_tokens: int = Field(default=1500, ge=1, le=MAX_TOKENS)
    max_expansion_tokens: int = Field(default=32_000, ge=1, le=MAX_TOKENS)
    # A citation is "supported" when the best span of the cited hit holds at least this
    # share of the citing sentence's content words (services/gateway/citations.py).
    citation_min_support: float = Field(default=0.3, ge=0, le=1)
    # The most sentence-span comparisons one answer's citation check makes (each citation
    # costs the cited hit's candidate spans, and splitting a cited text into spans one per
    # citations.CHARS_PER_CHECK = 4 characters, charged before it is split); past it the
    # rest are flagged `unchecked`. It bounds the CPU time of one answer's check (up to
    # about 1.2 us a comparison).
    max_citation_checks: int = Field(default=50_000, ge=0, le=10_000_000)
    # Cache of collection schemas and generative defaults, seconds (0: ask every time).
    collection_cache_ttl: float = Field(default=2.0, ge=0, le=MAX_WAIT_SECONDS)
    # (user, collection) entries that cache keeps per tenant, the least recently used
    # dropped first: one tenant's many collections or users never evict another's.
    collection_cache_entries_per_tenant: int = Field(default=1024, ge=1, le=MAX_CONCURRENCY)

    # --- per-tenant quotas (docs/operations.md#quotas), counted in Redis ---
    # redis://... shared by every gateway replica. Empty: no quotas (logged at start);
    # `gensearch up` passes the Redis it starts for memory.
    redis_url: SecretStr = SecretStr("")
    # The URL names a node of a Redis Cluster.
    redis_cluster: bool = False
    redis_socket_timeout: float = Field(default=0.5, gt=0, le=MAX_WAIT_SECONDS)
    redis_connect_timeout: float = Field(default=0.5, gt=0, le=MAX_WAIT_SECONDS)
    # Calls of one tenant in progress at once, across replicas (health excluded). 0: no limit.
    quota_concurrent_calls: int = Field(default=64, ge=0, le=MAX_CONCURRENCY)
    # LLM calls of one tenant per minute (one per hit, grouped call, Ask answer or question
    # rewrite), across replicas. 0: no limit.
    quota_llm_calls_per_minute: int = Field(default=1200, ge=0, le=100_000_000)
    # Objects one tenant writes per minute through the gateway (each UpsertObjects request
    # and ImportObjects message counted whole before it is forwarded), across replicas.
    # 0: no limit. 60000 (1000 a second, one full retrieval batch a second): a bulk load of
    # a million objects still takes under 20 minutes, while one tenant gets at most about a
    # tenth of what the embedded engine writes on its one worker thread (8-14k objects/s
    # with client vectors, docs/benchmarks.md), so ten tenants at their quota share it.
    quota_objects_written_per_minute: int = Field(default=60_000, ge=0, le=MAX_PER_MINUTE)
    # Bytes one tenant writes per minute through the gateway (each UpsertObjects request
    # and ImportObjects message, as it is encoded, counted with its objects before it is
    # forwarded), across replicas. 0: no limit. Objects alone did not bound the work: a
    # tenant's 60000 objects a minute of 15 KB of text each cost retrieval ~80 CPU-seconds
    # a minute (keyword index, engine), and 4 such writers at once took another tenant's
    # 8 ms search to 2 s. 64 MiB (about 1 MiB a second, four full 16 MiB requests a
    # minute) loads a million 1 KB objects in under 16 minutes, like the objects quota.
    quota_bytes_written_per_minute: int = Field(default=64 * 1024 * 1024, ge=0, le=MAX_PER_MINUTE)
    # Lease of a concurrent-call slot (seconds, plus 5 s slack; shorter when the call's
    # deadline is nearer): a running call renews it every third of it, however long the
    # call lasts, so a crashed replica's slots free themselves within one lease.
    quota_lease: float = Field(default=30.0, gt=0, le=MAX_WAIT_SECONDS)
    quota_key_prefix: str = "gensearch"

    # --- answer caches (docs/gateway.md#caches): exact in the Redis above, semantic in
    # retrieval. Lifetime of a stored answer when neither the request nor the collection
    # sets one, and the longest any may ask for, seconds.
    cache_default_ttl: float = Field(default=3600.0, gt=0, le=MAX_TTL_SECONDS)
    cache_max_ttl: float = Field(default=7 * 86400.0, gt=0, le=MAX_TTL_SECONDS)
    # Bytes of the exact cache's entries one tenant may hold in that Redis (values and key
    # copies): at the budget, a new entry unlinks the tenant's soonest-expiring ones. The
    # Redis is every tenant's; 64 MiB is about 40k answers of 1 KB.
    cache_max_bytes_per_tenant: int = Field(
        default=64 * 1024 * 1024, ge=64 * 1024, le=MAX_SIZE_BYTES
    )
    # Semantic cache: cosine similarity a stored question needs when neither the request
    # nor the collection sets one (requests may choose within [0.5, 1]).
    semantic_cache_min_similarity: float = Field(default=0.92, ge=0.5, le=1.0)
    # Longest question (characters, as asked) the semantic cache is used for: a longer one
    # is asked uncached, with no cache call. Keep it at most retrieval's
    # MAX_CACHED_QUESTION_CHARS, which refuses a longer one: each such Ask then counted a
    # lookup error and a failed store and logged two WARNINGs, at any caller's will.
    semantic_cache_max_question_chars: int = Field(default=8000, ge=100, le=MAX_SIZE_BYTES)
    # Largest answer (bytes of the AskResponse stored, its hits' properties included) the
    # semantic cache stores: a larger one is not sent. Keep it at most retrieval's
    # MAX_CACHED_ANSWER_BYTES, which refuses a larger one: each such store sent 1-4 MiB
    # to retrieval only to be refused there.
    semantic_cache_max_answer_bytes: int = Field(
        default=MAX_CACHED_ANSWER_BYTES, ge=1024, le=MAX_SIZE_BYTES
    )
    # Semantic cache stores run after the answer, in the background: stores waiting at
    # most (beyond: dropped and counted), the workers that make them, how long one store
    # may take once a worker makes it, and how long the waiting ones get at shutdown
    # (seconds).
    semantic_cache_store_queue: int = Field(default=256, ge=1, le=1_000_000)
    # Stores of one tenant waiting at most (the rest of the queue stays the others').
    semantic_cache_store_queue_per_tenant: int = Field(default=64, ge=1, le=1_000_000)
    semantic_cache_store_workers: int = Field(default=2, ge=1, le=1000)
    semantic_cache_store_timeout: float = Field(default=5.0, gt=0, le=MAX_WAIT_SECONDS)
    semantic_cache_store_drain_timeout: float = Field(default=2.0, ge=0, le=MAX_WAIT_SECONDS)

    # --- GenerateOnObjects: the most bytes one inline object may hold (serialized) ---
    max_inline_object_bytes: int = Field(default=65_536, ge=256, le=MAX_SIZE_BYTES)
    # Deepest nesting of objects and lists in an inline object's properties
    # (services/common/values.py); deeper is INVALID_ARGUMENT / NESTING_TOO_DEEP. At most
    # 32, as retrieval's and memory's MAX_VALUE_DEPTH.
    max_value_depth: int = Field(default=DEFAULT_MAX_DEPTH, ge=1, le=DEFAULT_MAX_DEPTH)
    # Property values all of one request's inline objects may hold (each property's value,
    # list element and nested field counts one, as retrieval's MAX_VALUES_PER_BATCH counts);
    # past it INVALID_ARGUMENT / BATCH_TOO_LARGE on inline.objects. The request byte bound
    # alone let in ~2 M values, whose check held the event loop 0.3-0.6 s
    # (docs/benchmarks.md "Gateway: large inline objects").
    max_inline_values: int = Field(default=250_000, ge=1, le=1_000_000_000)

    @model_validator(mode="after")
    def _in_flight_above_max_hits(self) -> GatewaySettings:
        bound = self.generation_max_in_flight
        if bound and bound <= self.max_hits:
            raise ValueError(
                f"generation_max_in_flight ({bound}) must be 0 (no bound) or more than "
                f"max_hits ({self.max_hits}): a request of max_hits hits and a grouped call "
                "would otherwise wait for its own calls"
            )
        share = self.generation_max_in_flight_per_tenant
        if bound and share and share <= self.max_hits:
            raise ValueError(
                f"generation_max_in_flight_per_tenant ({share}) must be 0 (no bound but "
                f"generation_max_in_flight) or more than max_hits ({self.max_hits}): a "
                "request of max_hits hits would otherwise wait for its own calls"
            )
        return self

    def generation_share(self) -> int:
        """One tenant's share of the generation calls in flight (0: no bound but the
        total): the setting, or when it is unset half of generation_max_in_flight, never
        max_hits or fewer (a request would wait for its own calls) nor more than the total."""
        share = self.generation_max_in_flight_per_tenant
        if share is not None:
            return share
        bound = self.generation_max_in_flight
        return min(max(bound // 2, self.max_hits + 1), bound)

    @model_validator(mode="after")
    def _defaults_within_max(self) -> GatewaySettings:
        # What a request that sets none gets, at most what one may set: an Ask without a
        # timeout once ran past MAX_ASK_TIMEOUT, which one with a timeout could not.
        defaults_within_their_maximum(
            self,
            (
                ("cache_default_ttl", "cache_max_ttl"),
                ("ask_timeout", "max_ask_timeout"),
                ("ask_context_size", "max_context_size"),
                ("ask_interaction_size", "max_interaction_size"),
                ("expansion_tokens", "max_expansion_tokens"),
            ),
        )
        return self

    @model_validator(mode="after")
    def _claims_outlast_asks(self) -> GatewaySettings:
        # An Ask's claim on its request_id lasts its time left plus ask_cleanup_seconds,
        # capped at memory_max_claim_seconds: below the longest Ask, the claim ended while
        # the Ask still ran, and a retry with the same request_id ran (and paid for) a
        # second answer instead of REQUEST_ID_IN_USE.
        if self.max_ask_timeout + self.ask_cleanup_seconds > self.memory_max_claim_seconds:
            raise ValueError(
                "max_ask_timeout + ask_cleanup_seconds must not exceed "
                "memory_max_claim_seconds: a claim on a request_id would end while its Ask "
                "still runs, and a retry would pay for a second answer"
            )
        return self

    _redis_url = field_validator("redis_url")(redis_url_setting)
    _key_prefix = field_validator("quota_key_prefix")(redis_key_prefix_setting)
    # Held at start to what a request's provider and model are held to (model_names.py).
    _default_provider = field_validator("default_provider")(provider_name_setting)
    _default_model = field_validator("default_model")(model_name_setting)
    _addresses = field_validator("memory_addr", "retrieval_addr", "generation_addr")(
        grpc_target_setting
    )

    @field_validator("context_windows")
    @classmethod
    def _context_window_keys_name_models(cls, value: dict[str, int]) -> dict[str, int]:
        # A key is (part of) a model name: open-ended, any model an endpoint serves, so
        # only its shape is checked. An empty one is part of every name: it silently took
        # the place of default_context_window for every model no other key matched.
        for name in value:
            if not name.strip():
                raise ValueError(
                    "a key must name (part of) a model; the models no key names get "
                    f"{NAMESPACES['gateway']}DEFAULT_CONTEXT_WINDOW"
                )
            problem = model_name_problem(name, None)
            if problem:
                raise ValueError(f"key {name[:64]!r}: {problem}")
            # Matched inside the model's name, spaces and all: a key with spaces around
            # it matched no model, and its window silently never applied.
            if name != name.strip():
                raise ValueError(
                    f"key {name[:64]!r}: spaces around it are no part of a model name; "
                    "the key would never match"
                )
        _no_keys_alike(value, "model names are matched case-insensitively")
        return value

    @field_validator("tokenize_urls")
    @classmethod
    def _valid_tokenize_urls(cls, value: dict[str, str]) -> dict[str, str]:
        # Checked at start: a malformed URL would only log "tokenize unavailable" on every
        # Ask and count by estimate. The provider is named, never the URL. A key is a
        # provider of the generation service, known only through its ListModels (as
        # DEFAULT_PROVIDER), so only its shape is checked: one no provider can have (a
        # space, an upper-case letter is fine: names are read lower-cased) never matched,
        # and its provider's models were counted by estimate without a word.
        for name, url in value.items():
            if not PROVIDER_NAME.fullmatch(name.lower()):
                raise ValueError(f"key {name[:64]!r}: {PROVIDER_NAME_RULE}")
            problem = http_url_problem(url)
            if problem:
                raise ValueError(f"the URL of provider {name[:64]!r} {problem}")
        # Read lower-cased (tokens.py): "Local" and "local" silently became one, the
        # last one's URL kept.
        _no_keys_alike(value, "provider names are read lower-cased")
        return value

    @model_validator(mode="after")
    def _cluster_needs_url(self) -> GatewaySettings:
        if self.redis_cluster and not self.redis_url.get_secret_value():
            raise ValueError("redis_cluster needs redis_url")
        problem = redis_cluster_problem(self.redis_url.get_secret_value())
        if self.redis_cluster and problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _default_model_within_max(self) -> GatewaySettings:
        # Sent with every call that names no model: held at start to the bound a caller's
        # model is held to, not to a fixed 256. Named by field (load_settings says the
        # variables).
        problem = model_setting_too_long(
            self.default_model, self.max_model_chars, "max_model_chars"
        )
        if problem:
            raise ValueError(f"default_model: {problem}")
        return self


def _no_keys_alike(value: dict[str, Any], why: str) -> None:
    """No two keys of a JSON object setting that its reader takes for one (``why``):
    one of them silently lost."""
    seen: dict[str, str] = {}
    for name in value:
        first = seen.setdefault(name.lower(), name)
        if first != name:
            raise ValueError(f"keys {first[:64]!r} and {name[:64]!r} are the same key ({why})")
