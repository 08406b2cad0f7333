"""Settings (pydantic-settings): one namespace per service, a few shared names.

Each service's class sets ``env_prefix`` to its own namespace, so the memory service's
``port`` is ``GENSEARCH_MEMORY_PORT`` and the gateway's is ``GENSEARCH_GATEWAY_PORT``; no
variable name means two things. Only what is truly the same for every service is read
unprefixed: ``GENSEARCH_HOST``, ``GENSEARCH_DATA_DIR``, ``GENSEARCH_API_KEYS``,
``GENSEARCH_API_KEYS_FILE``, ``GENSEARCH_INTERNAL_TOKEN`` and ``GENSEARCH_LOG_LEVEL``
(fields with an explicit ``validation_alias``). Server knobs that a service may need
differently (grace period, message sizes, connection lifetimes, keepalive, concurrency caps)
live in each namespace.

``warn_unknown_variables`` names, at start, every ``GENSEARCH_*`` variable that no part of
the running process reads: a typo would otherwise be silently ignored. ``load_settings``
turns an invalid one into a line naming the variable and an exit, not a traceback.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError
from redis.asyncio import ConnectionPool
from redis.exceptions import RedisError
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from services.common.api_keys import ApiKeyError, header_value_problem, load_keys
from services.common.auth import DEFAULT_MAX_CALLER_KEY_BYTES, Identity
from services.common.logs import url_secrets
from services.common.suggest import closest

log = logging.getLogger("gensearch.settings")

KIB = 1024
MIB = 1024 * 1024
# The request metadata (headers) a gRPC server takes, and the response metadata the
# gateway's channels take (docs/operations.md#limits). gRPC's own defaults are a soft limit
# of 8 KiB and a hard one of 16 KiB, refusing what lies between at random.
DEFAULT_MAX_METADATA_BYTES = 16 * KIB
# The services behind the gateway take more: the gateway passes a caller's key headers on
# and adds its own (the internal token, the caller's identity, the trace context), so what
# the gateway accepts must fit there too. A 15.5 KB key header passed the gateway and was
# refused by retrieval when both took 16 KiB.
FORWARDING_HEADROOM_BYTES = 4 * KIB
DOWNSTREAM_MAX_METADATA_BYTES = DEFAULT_MAX_METADATA_BYTES + FORWARDING_HEADROOM_BYTES
# Largest metadata limit: HTTP/2 header lists past it are a flood, not an API key.
MAX_METADATA_BYTES = MIB
# Methods whose request may exceed max_request_bytes: one import batch (retrieval, and the
# gateway that forwards it) and an interaction at the memory service's text limits (four
# fields of 1 MiB each).
REQUEST_LIMITS: dict[str, int] = {
    "ImportObjects": 16 * MIB,
    "UpsertObjects": 16 * MIB,
    "CreateInteraction": 8 * MIB,
}

# Upper bounds of limit settings (docs/operations.md#upper-bounds). Generous for any real
# deployment, and small enough that every value fits where it goes: gRPC takes its options
# as C ints (a larger one was an OverflowError at start), token counts and limits travel in
# int32 fields (a larger one failed ListModels with INTERNAL), and queues, caches and
# worker pools are sized from them. Every bound is at most 2**31 - 1.
# Sizes in bytes or characters: no gRPC message is larger, so no text in one is either.
MAX_SIZE_BYTES = 1024 * MIB
# Token counts: ten times the largest context window offered today (~10M).
MAX_TOKENS = 100_000_000
# Calls or streams at once.
MAX_CONCURRENCY = 1_000_000
# Connections the /metrics endpoint serves at once: a thread each.
MAX_METRICS_CONNECTIONS = 1024
# The longest service name a health request may be allowed (bytes).
MAX_HEALTH_SERVICE_BYTES = 65_536
# Connection lifetimes and keepalive intervals: a week (gRPC takes them in milliseconds, in
# a C int: at most ~24.8 days).
MAX_CONNECTION_SECONDS = 7 * 86400
# Lifetimes of stored things (answers, conversations, request ids): 50 years.
MAX_TTL_SECONDS = 50 * 366 * 86400
# Timeouts, waits, retry pauses, grace periods, leases and the intervals of background
# work, in seconds: a day. Longer than any call, pause or shutdown should take, and small
# enough for every clock a value goes to: a gRPC timeout of 1e308 s overflowed into a
# deadline already past (every call DEADLINE_EXCEEDED at once), and a QUOTA_LEASE of 1e308
# made every gateway call an OverflowError turning it into Redis milliseconds.
MAX_WAIT_SECONDS = 86400
# The shortest deadline a service may ask of its calls: a minute is more than any search.
MAX_MIN_DEADLINE_SECONDS = 60
# Requests or tokens a minute a provider allows (its declared rate limits): several times
# the largest published rate tier.
MAX_PER_MINUTE = 1_000_000_000
# Nesting of a response_format JSON schema: protobuf parses at most 100 nested messages.
MAX_SCHEMA_DEPTH = 100
# (provider, model) pairs of a fallback chain after the primary one: the default of the
# gateway's and the generation service's MAX_FALLBACKS, and the most a collection's stored
# chain may hold (retrieval knows no gateway setting: a longer chain would be stored, then
# refused at every use); and the bound of those settings.
DEFAULT_MAX_FALLBACKS = 4
MAX_FALLBACKS = 32
# Characters of a system prompt or user instructions (and of a template, task or question):
# the default of the gateway's MAX_PROMPT_CHARS, which bounds a request's, and the most a
# collection's stored generative defaults may hold (retrieval knows no gateway setting; the
# gateway holds a collection it creates to its own MAX_PROMPT_CHARS too). Before, the two
# differed (32 000 and 32 768): a collection's system prompt that a request could not send.
DEFAULT_MAX_PROMPT_CHARS = 32_768
# Characters of a search's text (keyword, hybrid, near_text) and of a rerank query: the
# default of retrieval's MAX_QUERY_TEXT_CHARS and MAX_RERANK_QUERY_CHARS, and of the
# gateway's ASK_SEARCH_TEXT_CHARS (how much of an Ask's question it searches with).
MAX_QUERY_TEXT = 16_384
# The largest answer a semantic cache entry holds (bytes of the serialized AskResponse):
# retrieval's bound (GENSEARCH_RETRIEVAL_MAX_CACHED_ANSWER_BYTES) and the gateway's, which
# skips storing a larger one rather than send it to be refused
# (GENSEARCH_GATEWAY_SEMANTIC_CACHE_MAX_ANSWER_BYTES): one default for both.
MAX_CACHED_ANSWER_BYTES = 1_048_576

# Bytes of replies a server holds for all tenants at once (max_reply_bytes_in_flight):
# with the other terms of docs/operations.md#process-memory, the smallest container limit
# of deploy/ (512 MiB) holds it.
DEFAULT_REPLY_BYTES_IN_FLIGHT = 128 * MIB
# Bytes of requests a server holds for its calls at once (max_request_bytes_in_flight):
# four of the largest default request (ImportObjects, 16 MiB).
DEFAULT_REQUEST_BYTES_IN_FLIGHT = 64 * MIB

PREFIX = "GENSEARCH_"
# Every service's namespace; a variable in one of them belongs to that service alone.
NAMESPACES: dict[str, str] = {
    "gateway": "GENSEARCH_GATEWAY_",
    "memory": "GENSEARCH_MEMORY_",
    "retrieval": "GENSEARCH_RETRIEVAL_",
    "generation": "GENSEARCH_GENERATION_",
}
# Read by the command-line client, the example clients, the dev-only launchers and the test
# suite, never by a service (docs/operations.md lists them).
TOOL_VARIABLES = frozenset(
    {
        "GENSEARCH_ADDRESS",  # gensearch CLI, Python client, TS and Go examples: the gateway
        "GENSEARCH_API_KEY",  # the same: the caller's own key (the services read API_KEYS)
        "GENSEARCH_STATE_DIR",  # gensearch CLI: the last conversation
        "GENSEARCH_DEBUG",  # gensearch CLI: tracebacks
        "GENSEARCH_DEMO_LIMIT",  # gensearch up --demo
        "GENSEARCH_DEMO_MAX_TOKENS",  # gensearch up --demo
        "GENSEARCH_REDIS_SERVER",  # dev launcher: which Redis-protocol binary to start
        "GENSEARCH_LOCAL_LLM_SLOTS",  # dev launcher: requests the local model decodes at once
        "GENSEARCH_LOCAL_LLM_THREADS",  # dev launcher: the local model's threads
        "GENSEARCH_LOCAL_LLM_WEIGHTS",  # dev launcher: f16 (widened once) or shipped
        "GENSEARCH_ALLOW_SKIP_KUBECTL",  # test suite: deploy tests may skip without kubectl
        "GENSEARCH_ALLOW_SKIP_NODE",  # test suite: client tests may skip without Node.js in CI
        "GENSEARCH_FUZZ_EXAMPLES",  # test suite: hypothesis examples per request message
        "GENSEARCH_URL",  # deprecated, TypeScript examples: the gateway (now GENSEARCH_ADDRESS)
        "GENSEARCH_KEY",  # deprecated, TypeScript and Go examples: the key (now GENSEARCH_API_KEY)
        "GENSEARCH_ADDR",  # deprecated, Go examples: the gateway (now GENSEARCH_ADDRESS)
        "GENSEARCH_COLLECTION",  # TypeScript and Go examples (quota, leave, keys): which one
        "GENSEARCH_EMBEDDING_URL",  # keys.ts, clients/go/keys: the vectorizer URL confirmed
        "GENSEARCH_EMBEDDING_KEY",  # keys.ts, clients/go/keys: the caller's embedding key
        "GENSEARCH_PRIMARY_MODEL",  # features.ts, clients/go/features: the chain's first model
        "GENSEARCH_BACKUP_PROVIDER",  # features.ts, clients/go/features: its fallback
    }
)


HOST_FORMS = "a host name or an IP address (0.0.0.0 or :: for every interface)"
# "name:port", "1.2.3.4:port" or "[v6]:port": a port where only a host goes.
_WITH_PORT = re.compile(r"(\[[^\]]*\]|[^:\[\]]+):[0-9]*")


def bind_host_setting(value: str) -> str:
    """The address servers bind (``GENSEARCH_HOST``): a host name, an IPv4 address or an
    IPv6 one, bare or in brackets (returned bare: ``join_host_port`` adds the brackets gRPC
    needs, and the metrics server takes it bare). Checked at start: gRPC and the metrics
    server refused anything else only when they bound, with a traceback, and a bracketed
    IPv6 address, which gRPC took, stopped the metrics server that way. The message never
    quotes the value."""
    if _WITH_PORT.fullmatch(value):
        raise ValueError(f"must be {HOST_FORMS}, without a port (each service has its own)")
    bracketed = value.startswith("[") and value.endswith("]")
    host = value[1:-1] if bracketed else value
    if ":" in host or bracketed:  # an IPv6 address (the only thing brackets may hold)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"must be {HOST_FORMS}") from None
        return host
    if not _HOST_NAME.fullmatch(host) or len(host) > 253:
        raise ValueError(f"must be {HOST_FORMS}")
    if all(label.isdigit() for label in host.rstrip(".").split(".")):
        try:  # digits and dots only: an IPv4 address, not a name ("999.1.1.1", "1.2.3")
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"must be {HOST_FORMS}") from None
    return host


@functools.cache
def gensearch_methods() -> frozenset[str]:
    """The names of every method of the four gensearch services (their descriptors)."""
    from gensearch.gateway.v1 import gateway_service_pb2
    from gensearch.generation.v1 import generation_service_pb2
    from gensearch.memory.v1 import memory_service_pb2
    from gensearch.retrieval.v1 import retrieval_service_pb2

    return frozenset(
        method.name
        for module in (
            gateway_service_pb2,
            generation_service_pb2,
            memory_service_pb2,
            retrieval_service_pb2,
        )
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    )


def key_hint(name: str, known: Iterable[str]) -> str:
    """`` (did you mean X?)``, X the known key closest to ``name``, or "" when none is
    close: for a start error about a key of a JSON object setting that names nothing the
    code knows. Such a key is a typo, and the setting, which replaces its whole default,
    would otherwise drop what the operator meant (a key that is a field of an object
    entry was refused, but said only "Extra inputs are not permitted")."""
    hint = closest(name, sorted(known))
    return f" (did you mean {hint}?)" if hint else ""


def header_secret_setting(value: SecretStr) -> SecretStr:
    """A secret the service sends in a header (the internal token, a Qdrant API key): only
    printable ASCII, checked at start. gRPC refuses to send anything else, and so does
    the HTTP client under qdrant-client: a Qdrant key with a trailing newline read as
    "Qdrant unavailable" for ever, and one with a non-ASCII letter stopped retrieval at
    start with a traceback. Never quoted: it is a secret."""
    problem = header_value_problem(value.get_secret_value())
    if problem:
        raise ValueError(problem)
    return value


class CommonSettings(BaseSettings):
    """The base of every service's settings.

    A service class sets ``model_config = SettingsConfigDict(env_prefix=NAMESPACES[...])``;
    fields are then read from its namespace, except the shared ones below, whose
    ``validation_alias`` is their unprefixed variable. Fields may also be passed by name
    (``MemorySettings(port=0)``).
    """

    model_config = SettingsConfigDict(
        env_prefix=PREFIX, extra="ignore", validate_by_name=True, validate_by_alias=True
    )

    # --- shared by every service (unprefixed) ---
    # Bind address of gRPC and metrics servers; 0.0.0.0 in containers.
    host: str = Field(default="127.0.0.1", validation_alias="GENSEARCH_HOST")
    data_dir: Path = Field(default=Path("data"), validation_alias="GENSEARCH_DATA_DIR")
    # "alice:key1,bob@acme/reader:key2" (syntax in services/common/api_keys.py). Empty, and
    # no keys file: every caller is the user "anonymous", admin of the tenant "default"
    # (a WARNING at start), except on a service behind the gateway with an internal
    # token, which then takes calls from the gateway alone (services/common/auth.py).
    api_keys: SecretStr = Field(default=SecretStr(""), validation_alias="GENSEARCH_API_KEYS")
    # A YAML file of keys (key, user, tenant, role), e.g. mounted from a Secret.
    api_keys_file: Path | None = Field(default=None, validation_alias="GENSEARCH_API_KEYS_FILE")
    # Shared secret that lets a trusted peer (the gateway) assert the caller's identity
    # with the x-gensearch-user header. Empty: forwarded identities are not accepted. Set
    # with no API keys: only a caller holding it (the gateway) may call the service.
    internal_token: SecretStr = Field(
        default=SecretStr(""), validation_alias="GENSEARCH_INTERNAL_TOKEN"
    )
    log_level: str = Field(default="INFO", validation_alias="GENSEARCH_LOG_LEVEL")

    # --- per service (in the service's namespace) ---
    # Whether a caller's W3C trace context (traceparent, tracestate, baggage) is followed:
    # its trace id, its parent span, its sampled flag. False (the gateway's default, the
    # face callers reach): each call starts a trace of our own, linked to the caller's span,
    # so a caller can neither force sampling (the operator's OTEL_TRACES_SAMPLER decides),
    # nor pour its calls into one endless trace or another tenant's trace, nor pass its
    # baggage on to the services behind (services/common/chassis.py).
    trust_caller_trace: bool = True
    # Seconds in-flight calls get to finish on SIGTERM.
    grace_period: float = Field(default=10.0, ge=0, le=MAX_WAIT_SECONDS)
    # Largest gRPC message sent (and, by the gateway, received from a downstream service).
    max_message_bytes: int = Field(default=64 * MIB, ge=1024, le=MAX_SIZE_BYTES)
    # Bytes of replies one tenant has in flight at once (serialized, not yet sent); a reply
    # past it, while the tenant has others in flight, is RESOURCE_EXHAUSTED, reason
    # RESPONSE_BYTES_IN_FLIGHT, with RetryInfo (services/common/reply_bytes.py). A tenant's
    # first reply always goes. Half the process-wide bound by default, so one tenant's
    # unread replies leave room for the others' (at 256 MiB it could fill it). 0 = no limit.
    max_reply_bytes_in_flight_per_tenant: int = Field(
        default=DEFAULT_REPLY_BYTES_IN_FLIGHT // 2, ge=0, le=MAX_SIZE_BYTES
    )
    # Bytes of replies all tenants together have in flight: a reply past it, while any is
    # in flight, is refused the same way (``setting`` names this one); a reply while none
    # is in flight always goes. What keeps a replica inside its container memory limit
    # (docs/operations.md#process-memory; tests/deploy checks each overlay). 0 = no limit.
    max_reply_bytes_in_flight: int = Field(
        default=DEFAULT_REPLY_BYTES_IN_FLIGHT, ge=0, le=MAX_SIZE_BYTES
    )
    # Largest request metadata (all headers, as gRPC counts them: name + value + 32 bytes
    # each, pseudo-headers included) the server takes; more is RESOURCE_EXHAUSTED /
    # METADATA_TOO_LARGE from the chassis, every time (services/common/metadata_size.py).
    # gRPC's soft and hard limits (grpc.max_metadata_size, grpc.absolute_max_metadata_size)
    # are both set to twice it, where gRPC refuses bare: by default they are 8 and 16 KiB,
    # and what lies between was refused at random. The gateway's channels take response
    # metadata up to the gateway's value.
    max_metadata_bytes: int = Field(
        default=DEFAULT_MAX_METADATA_BYTES, ge=8 * KIB, le=MAX_METADATA_BYTES
    )
    # Longest value of a caller's key header (x-<provider>-api-key, x-embedding-api-key,
    # ...) an authenticated call may carry; longer is INVALID_ARGUMENT naming the header.
    # The log redactor looks for each of a call's keys in every log line of that call
    # longer than the key (services/common/auth.py): real provider keys are under 300
    # bytes.
    max_caller_key_bytes: int = Field(
        default=DEFAULT_MAX_CALLER_KEY_BYTES, ge=64, le=MAX_METADATA_BYTES
    )
    # Largest request message of a method without a limit of its own (request_limits).
    # gRPC itself refuses a larger message from its length prefix, before buffering it.
    max_request_bytes: int = Field(default=4 * MIB, ge=1024, le=MAX_SIZE_BYTES)
    # Methods that need more, by name (a method a service does not serve is ignored).
    # The largest of these is what gRPC buffers before the chassis sees a message, so a
    # small method's oversized request is refused unparsed but not unread
    # (docs/operations.md#limits). Env: JSON, e.g. '{"ImportObjects": 33554432}'.
    request_limits: dict[str, Annotated[int, Field(ge=1024, le=MAX_SIZE_BYTES)]] = Field(
        default_factory=lambda: dict(REQUEST_LIMITS)
    )
    # Bytes of requests the server holds for its calls at once, all tenants together (a
    # unary request until its call ends, a client stream's message until the next is
    # asked for); one past it, while any is held, is RESOURCE_EXHAUSTED, reason
    # REQUEST_BYTES_IN_FLIGHT, with RetryInfo (services/common/request_bytes.py). A request
    # while none is held always goes. 0 = no limit.
    max_request_bytes_in_flight: int = Field(
        default=DEFAULT_REQUEST_BYTES_IN_FLIGHT, ge=0, le=MAX_SIZE_BYTES
    )
    # The /metrics endpoint (services/common/metrics.py): a connection silent this many
    # seconds while its request is read, or not taking its reply within them, is closed;
    # at most metrics_max_connections are served at once (a thread each), one more is
    # closed unanswered. prometheus-client's own server kept a thread per open connection.
    metrics_idle_timeout: float = Field(default=10.0, gt=0, le=MAX_WAIT_SECONDS)
    metrics_max_connections: int = Field(default=16, ge=1, le=MAX_METRICS_CONNECTIONS)
    # Health checking needs no key: a service name longer than this (bytes) is refused,
    # and at most health_max_watches Watch streams are open at once (each holds its request
    # and keeps its connection from idling out); more are RESOURCE_EXHAUSTED.
    health_max_service_bytes: int = Field(default=256, ge=64, le=MAX_HEALTH_SERVICE_BYTES)
    health_max_watches: int = Field(default=1000, ge=1, le=MAX_CONCURRENCY)
    # Reflection needs no key either: at most this many of its streams are open at once
    # (each waits stream_idle_timeout at most for its next request); more are
    # RESOURCE_EXHAUSTED.
    reflection_max_streams: int = Field(default=100, ge=1, le=MAX_CONCURRENCY)
    # Calls of our services served at once by the whole server (health checks and
    # reflection not counted); more get RESOURCE_EXHAUSTED, reason TOO_MANY_CONCURRENT_RPCS
    # (services/common/call_slots.py). 0 = no limit.
    max_concurrent_rpcs: int = Field(default=1000, ge=0, le=MAX_CONCURRENCY)
    # Of those, the calls one tenant may hold at once in this process; one more of that
    # tenant is RESOURCE_EXHAUSTED, reason TOO_MANY_CONCURRENT_RPCS, metadata `setting`
    # naming this variable, while other tenants' calls still find slots: a tenant's flood
    # took them all. 0 = no share but the whole; None (the gateway's default, its callers
    # are tenants) = half of max_concurrent_rpcs, 0 when that is 0 (call_share). Behind the
    # gateway, 0: the gateway's calls, already held to it, fan out per hit. At most
    # max_concurrent_rpcs when that is not 0 (a larger share would never refuse anything).
    max_concurrent_rpcs_per_tenant: int | None = Field(default=0, ge=0, le=MAX_CONCURRENCY)
    # Seconds a client-streaming call waits for each request message (the first one too)
    # before it ends DEADLINE_EXCEEDED, reason STREAM_IDLE: a silent stream would otherwise
    # hold its call slot and its tenant's quota for ever (services/common/stream_idle.py).
    # A message carrying nothing (an ImportObjects message without objects) is no progress:
    # the wait before it counts on towards the next.
    stream_idle_timeout: float = Field(default=30.0, gt=0, le=MAX_WAIT_SECONDS)
    # Seconds a client stream (ImportObjects) lasts at most from its start, however steadily
    # it sends; past it, the wait for its next message ends the call DEADLINE_EXCEEDED,
    # reason STREAM_TOO_LONG (what it imported kept and said): a trickle of one object a
    # message would otherwise hold its call slot and its tenant's quota for ever.
    client_stream_max_seconds: float = Field(default=3600.0, gt=0, le=MAX_WAIT_SECONDS)
    # Seconds a server stream's write may stay blocked (HTTP/2 flow control holds the next
    # message back until the client reads) before the call ends DEADLINE_EXCEEDED, reason
    # STREAM_STALLED, whatever its deadline: a client that stopped reading would otherwise
    # hold its call slot and its tenant's quota for ever, or until a far deadline. Left to
    # their deadline: calls whose deadline comes first, and a peer service's calls with
    # the internal token (services/common/stream_idle.py).
    stream_send_timeout: float = Field(default=30.0, gt=0, le=MAX_WAIT_SECONDS)
    # Seconds a call must have left before its deadline when it arrives; less is refused
    # at once, DEADLINE_EXCEEDED / DEADLINE_TOO_SHORT (services/common/call_deadline.py):
    # its client would give up before any answer came back.
    min_deadline: float = Field(default=0.001, ge=0, le=MAX_MIN_DEADLINE_SECONDS)
    # Client connections the server keeps open at once (gRPC's
    # grpc.max_allowed_incoming_connections): past it, gRPC closes a new connection as it
    # is accepted (the client sees UNAVAILABLE "Socket closed", no ErrorInfo: no call was
    # made). Each open connection holds a file descriptor and ~17 KB even idle (measured:
    # 4000 idle HTTP/2 connections grew a server by 66 MiB), and the process raises its
    # open-file limit to the hard one: without it a client opening connections and
    # keeping them alive took a replica past its container's memory. 0 = no limit.
    max_connections: int = Field(default=2000, ge=0, le=MAX_CONCURRENCY)
    # Calls at once on one client connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS);
    # a client queues the rest.
    max_concurrent_streams: int = Field(default=1024, ge=1, le=MAX_CONCURRENCY)
    # Seconds after which the server asks a client to reconnect (HTTP/2 GOAWAY; calls in
    # flight finish first). 0 = never. Clients that balance over DNS (dns:/// targets with
    # round_robin) resolve again on reconnect, so this is how they find new replicas.
    max_connection_age: float = Field(default=0.0, ge=0, le=MAX_CONNECTION_SECONDS)
    # Seconds the calls still open on a connection get after that GOAWAY before the server
    # closes it under them. 0 = no limit (gRPC's default): a stream whose client stopped
    # reading and was cut (STREAM_STALLED) keeps its HTTP/2 stream and its unsent reply
    # bytes until its client reads on or goes away, since its status waits behind those
    # bytes; with both set, until MAX_CONNECTION_AGE + this at most. Longer than the
    # longest call served (a stream of generated hits), which it cuts too. Needs
    # max_connection_age.
    max_connection_age_grace: float = Field(default=0.0, ge=0, le=MAX_CONNECTION_SECONDS)
    # Seconds a connection with no call in progress stays open (GOAWAY after). 0 = never.
    max_connection_idle: float = Field(default=300.0, ge=0, le=MAX_CONNECTION_SECONDS)
    # Seconds a new connection gets to open HTTP/2 (send its preface and SETTINGS) before it
    # is closed: a socket that never speaks holds a file descriptor until then.
    handshake_timeout: float = Field(default=10.0, gt=0, le=MAX_CONNECTION_SECONDS)
    # The server pings a client after this many seconds without activity on a connection
    # with calls in progress, and drops it when no answer comes within keepalive_timeout.
    keepalive_time: float = Field(default=60.0, gt=0, le=MAX_CONNECTION_SECONDS)
    keepalive_timeout: float = Field(default=20.0, gt=0, le=MAX_CONNECTION_SECONDS)
    # Shortest interval between a client's pings the server tolerates (the gateway's
    # channels ping every 30 s); a client pinging faster is disconnected (too_many_pings).
    keepalive_min_ping_interval: float = Field(default=10.0, gt=0, le=MAX_CONNECTION_SECONDS)

    # Fields holding objects of a model read from JSON (a provider by name): the model,
    # and what its keys are, for a key none of its fields has (``load_settings``).
    json_objects: ClassVar[dict[str, tuple[type[BaseModel], str]]] = {}

    # What api_key_map parsed, with the settings it parsed them from.
    _keys: tuple[tuple[SecretStr, Path | None], dict[str, Identity]] | None = PrivateAttr(None)

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        level = value.upper()
        if level not in logging.getLevelNamesMapping():  # what logging's setLevel takes
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    _host = field_validator("host")(bind_host_setting)

    @field_validator("request_limits")
    @classmethod
    def _request_limits_name_methods(cls, value: dict[str, int]) -> dict[str, int]:
        # A method of another service is ignored (one value may be copied to several
        # namespaces), but a name no gensearch service has is a typo: the variable replaces
        # the whole default, so {"ImportObject": ...} silently cut ImportObjects to
        # MAX_REQUEST_BYTES (16 MiB import batches refused) with a clean start.
        known = gensearch_methods()
        for name in value:
            if name not in known:
                raise ValueError(
                    f"{name[:64]!r} is no method of a gensearch service"
                    f"{key_hint(name, known)}: keys are method names such as ImportObjects"
                )
        return value

    # Sent by the gateway in a gRPC header with every call it passes on: a token gRPC cannot
    # send (a trailing newline from a Secret made of a file) failed every one of them, while
    # both services had started clean.
    _token_fits_a_header = field_validator("internal_token")(header_secret_setting)

    @model_validator(mode="after")
    def _grace_needs_age(self) -> Self:
        # gRPC counts the grace from the connection's age: without an age it was silently
        # ignored, and an operator who set it believed cut streams were bounded. Refused
        # like the other pair that needs its partner (redis_cluster without redis_url).
        if self.max_connection_age_grace > 0 and self.max_connection_age == 0:
            raise ValueError(
                "max_connection_age_grace needs max_connection_age (above 0): the grace "
                "counts from that age, so without it nothing would close the connection"
            )
        return self

    @model_validator(mode="after")
    def _call_share_within_the_limit(self) -> Self:
        # A share above the whole was taken silently and never refused anything: the
        # operator believed one tenant was held below the limit.
        share, limit = self.max_concurrent_rpcs_per_tenant, self.max_concurrent_rpcs
        if share and limit and share > limit:
            namespace = type(self).namespace()
            raise ValueError(
                f"{namespace}MAX_CONCURRENT_RPCS_PER_TENANT ({share}) must be at most "
                f"{namespace}MAX_CONCURRENT_RPCS ({limit}), or 0 (no share): a tenant's "
                "share of the call slots cannot be more than all of them"
            )
        return self

    def call_share(self) -> int:
        """The calls one tenant may hold at once (0: no share): the setting, or when it is
        unset half of max_concurrent_rpcs (0 when that is 0: no limit, no share of it)."""
        share = self.max_concurrent_rpcs_per_tenant
        if share is None:
            return self.max_concurrent_rpcs // 2
        return share

    @model_validator(mode="after")
    def _metrics_port_is_another_port(self) -> Self:
        # Both servers bind at start; on one port the second failed with "address already
        # in use", sending the operator to look for another process holding it.
        port, metrics_port = getattr(self, "port", None), getattr(self, "metrics_port", None)
        if port and metrics_port == port:
            raise ValueError(
                f"metrics_port must differ from {type(self).namespace()}PORT: the gRPC "
                "server and /metrics cannot listen on one port"
            )
        return self

    def request_limit(self, method: str) -> int:
        """Largest request of ``method`` (its name, e.g. ``ImportObjects``), in bytes."""
        return self.request_limits.get(method, self.max_request_bytes)

    def largest_request(self) -> int:
        """What gRPC may buffer for one message: the largest limit of any method."""
        return max(self.max_request_bytes, *self.request_limits.values())

    def api_key_map(self) -> dict[str, Identity]:
        """API key -> identity, from ``api_keys`` and ``api_keys_file`` (``ValueError``
        naming the entry, never the key, when either is malformed).

        Parsed once per value of those two settings: ``load_settings`` checks the keys and
        the server then uses what was checked. The file used to be read again by the
        server, so one rotated (or removed) between the two reads started the service with
        keys nobody had checked, or stopped it with a traceback instead of one line."""
        source = (self.api_keys, self.api_keys_file)
        if self._keys is None or self._keys[0] != source:
            self._keys = (source, load_keys(self.api_keys.get_secret_value(), self.api_keys_file))
        return dict(self._keys[1])

    def validated_copy(self, **update: Any) -> Self:
        """These settings with ``update`` applied and validated as ``load_settings``
        validates them (pydantic's ``model_copy(update=...)`` validates nothing), keeping
        the API keys already parsed rather than reading the keys file again."""
        fresh = self.model_validate({**self.model_dump(), **update})
        fresh._keys = self._keys
        return fresh

    def problems(self) -> list[str]:
        """What is wrong in a setting built from several variables (beyond one field's
        validation): ``VARIABLE: reason`` each, never the value. ``load_settings`` stops
        the service on any."""
        return []

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Environment variable -> field, for every field of this class."""
        prefix = str(cls.model_config.get("env_prefix", ""))
        names: dict[str, str] = {}
        for field, info in cls.model_fields.items():
            alias = info.validation_alias
            names[(alias if isinstance(alias, str) else prefix + field).upper()] = field
        return names

    @classmethod
    def namespace(cls) -> str:
        return str(cls.model_config.get("env_prefix", "")).upper()

    def reads(self, name: str) -> bool:
        """Whether this service reads the variable ``name`` (upper case)."""
        return name in self.env_names()

    def known_variables(self) -> list[str]:
        """Every variable this service reads by name: what a typo is compared with."""
        return list(self.env_names())


class DownstreamSettings(CommonSettings):
    """The settings of a service the gateway calls (memory, retrieval, generation)."""

    # Above the gateway's DEFAULT_MAX_METADATA_BYTES by what the gateway adds when it
    # forwards a call (docs/operations.md#limits): keep it FORWARDING_HEADROOM_BYTES above
    # the gateway's.
    max_metadata_bytes: int = Field(
        default=DOWNSTREAM_MAX_METADATA_BYTES, ge=8 * KIB, le=MAX_METADATA_BYTES
    )


def defaults_within_their_maximum(settings: object, pairs: Sequence[tuple[str, str]]) -> None:
    """Raises ``ValueError`` ("ask_timeout must not exceed max_ask_timeout", by field: the
    model validator's message, which ``load_settings`` says by variable) for each pair of
    (what a request gets when it sets none, the most a request may set) whose first is the
    larger. The default is used as it is, unchecked: above its maximum, every request that
    set nothing got more than any request could ask for (which INVALID_ARGUMENT refused)."""
    past = [
        f"{default} must not exceed {limit}"
        for default, limit in pairs
        if getattr(settings, default) > getattr(settings, limit)
    ]
    if past:
        raise ValueError("; ".join(past))


def unknown_variables(
    *settings: CommonSettings, environ: Mapping[str, str] | None = None
) -> list[str]:
    """``GENSEARCH_*`` variables that none of ``settings`` reads (sorted).

    A variable in the namespace of a service that is not among ``settings`` belongs to
    that service, not to a typo; the tools' variables are known too.
    """
    env = os.environ if environ is None else environ
    ours = {s.namespace() for s in settings}
    others = tuple(ns for ns in NAMESPACES.values() if ns not in ours)
    unknown = []
    for raw in env:
        name = raw.upper()
        if not name.startswith(PREFIX) or name in TOOL_VARIABLES or name.startswith(others):
            continue
        if not any(s.reads(name) for s in settings):
            unknown.append(raw)
    return sorted(unknown)


def warn_unknown_variables(*settings: CommonSettings) -> list[str]:
    """Logs (names only, never values) the variables ``unknown_variables`` finds."""
    unknown = unknown_variables(*settings)
    if unknown:
        known = sorted({name for s in settings for name in s.known_variables()})
        log.warning(
            "unknown GENSEARCH_ variables ignored (a typo? see docs/operations.md): %s",
            ", ".join(_with_closest(name, known) for name in unknown),
            extra={"variables": unknown},
        )
    return unknown


def _with_closest(name: str, known: list[str]) -> str:
    """``GENSEARCH_GATEWAY_PROT (did you mean GENSEARCH_GATEWAY_PORT?)``: the warning
    named the typo alone, and the user went looking for the variable in the docs."""
    upper = name.upper()
    # Compared after the namespace they share: with it, any two names of one service
    # were close enough ("GENSEARCH_GATEWAY_ZZZZ" to "GENSEARCH_GATEWAY_PORT").
    namespace = max((ns for ns in (PREFIX, *NAMESPACES.values()) if upper.startswith(ns)), key=len)
    tails = {k[len(namespace) :]: k for k in known if k.startswith(namespace)}
    hint = closest(upper[len(namespace) :], sorted(tails))
    return f"{name} (did you mean {tails[hint]}?)" if hint else name


def model_directory(value: str) -> str:
    """A model directory setting: empty (the bundled model) or a directory that exists, so
    a wrong path stops the service at start rather than failing every call that embeds."""
    try:
        is_dir = not value or Path(value).is_dir()
    except OSError as err:  # e.g. a name too long for the file system (ENAMETOOLONG)
        raise ValueError(f"cannot be used as a directory ({err.strerror})") from None
    if not is_dir:
        raise ValueError(f"{value!r} is not a directory")
    return value


DATA_DIR_VARIABLE = "GENSEARCH_DATA_DIR"


def data_dir_problem(path: Path) -> str | None:
    """``GENSEARCH_DATA_DIR: reason`` when ``path`` can be neither used nor created as a
    writable directory, else None. For the services that keep files there (an embedded
    Redis or engine), checked at start: the launcher's ``mkdir`` failed in a traceback."""
    try:
        existing = path.absolute()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            return f"{DATA_DIR_VARIABLE}: '{existing}' is not a directory"
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"{DATA_DIR_VARIABLE}: '{existing}' is not writable"
    except OSError as err:  # a name too long, a loop of links ...
        return f"{DATA_DIR_VARIABLE}: cannot be used as a directory ({err.strerror})"
    return None


REDIS_SCHEMES = ("redis", "rediss", "unix")


def redis_url_setting(value: SecretStr) -> SecretStr:
    """A Redis URL setting: empty or one redis-py can open, checked at start (redis-py would
    raise only when the service builds its client, with a traceback). The message never
    quotes the URL: it may hold a password."""
    url = value.get_secret_value()
    if url and (url.partition("://")[0].lower() not in REDIS_SCHEMES or url.endswith("://")):
        raise ValueError("must start with redis://, rediss:// or unix:// and name a server")
    try:
        urlsplit(url).port  # noqa: B018 (raises for a port out of range or not a number)
    except ValueError:
        raise ValueError("must give its port as a number from 0 to 65535") from None
    if url:
        problem = _redis_database_problem(url) or _redis_options_problem(url)
        if problem:
            raise ValueError(problem)
    return value


_DATABASE_PATH = re.compile(r"/?([0-9]+)?")
# The largest database number any Redis server takes: SELECT reads a signed 32-bit int, and
# its 'databases' setting is at most 2^31 - 1, so the last database is 2^31 - 2. A server's
# own 'databases' (16 by default) is known only when connected: past it, SELECT fails then.
MAX_REDIS_DATABASE = 2**31 - 2


def _redis_database_problem(url: str) -> str | None:
    """A redis:// or rediss:// URL's path is its database number: redis-py took a path that
    is not one ("/abc", "/1x") for database 0 without a word, "/0/1" for 1, and "/-1" (or
    ``?db=-1``) for a database Redis refuses on every connection, after the service started."""
    parts = urlsplit(url)
    tcp = parts.scheme.lower() in ("redis", "rediss")
    if tcp and not _DATABASE_PATH.fullmatch(unquote(parts.path)):
        return "its path must be a database number, e.g. /0"
    if any(db.strip().startswith("-") for db in parse_qs(parts.query).get("db", [])):
        return "its database number (db) must not be negative"
    try:
        database = ConnectionPool.from_url(url).connection_kwargs.get("db") or 0
    except (TypeError, ValueError, RedisError):  # said by _redis_options_problem
        return None
    if isinstance(database, int) and database > MAX_REDIS_DATABASE:
        # redis-py took any integer, and Redis refused it on every connection once the
        # service ran (SELECT: "value is not an integer or out of range").
        return (
            f"its database number (db) must be at most {MAX_REDIS_DATABASE}: Redis's "
            "databases are 0 to its 'databases' setting minus one (16 by default)"
        )
    return None


def redis_cluster_problem(url: str) -> str | None:
    """Why ``url`` (a valid Redis URL setting) cannot name a Redis Cluster node, or None. A
    cluster has database 0 only: redis-py's cluster client refused another when the service
    built it, in a traceback, after the settings were accepted. The database is read as
    redis-py reads it (the path, or ``?db=``, which wins). Never quotes the URL."""
    try:
        database = ConnectionPool.from_url(url).connection_kwargs.get("db") or 0
    except (TypeError, ValueError, RedisError):  # said by redis_url_setting already
        return None
    if database != 0:
        return "redis_url names a database other than 0: a Redis Cluster has database 0 only"
    return None


_UNKNOWN_OPTION = re.compile(r"unexpected keyword argument '(\w+)'")


def _redis_options_problem(url: str) -> str | None:
    """What redis-py would refuse in the options of ``url`` (its query: timeouts, ``db``,
    the TLS settings and files), found by building, without connecting, the connection
    it would make and the TLS context it would use. redis-py checks them only then: a
    service failed its first Redis call in a traceback, or (a CA file not there) answered
    UNAVAILABLE for ever. Never quotes the URL's secrets."""
    try:
        connection = ConnectionPool.from_url(url).make_connection()
        tls = getattr(connection, "ssl_context", None)  # rediss:// only
        if tls is not None:
            tls.get()  # loads the CA, certificate and key files the URL names
    except TypeError as err:  # an option no connection takes
        unknown = _UNKNOWN_OPTION.search(str(err))
        return f"unknown option {unknown.group(1)!r}" if unknown else "an unknown option"
    except ValueError as err:  # redis-py names the option: "Invalid value for 'db' ..."
        return _without_secrets(str(err), url)
    except (RedisError, OSError) as err:  # mostly the TLS ones (ssl.SSLError is an OSError)
        detail = getattr(err, "strerror", None) or str(err)
        given = sorted(k for k in parse_qs(urlsplit(url).query) if k.startswith("ssl"))
        if given and (isinstance(err, OSError) or "SSL" in detail):
            detail = f"its TLS options ({', '.join(given)}): {detail}"
        return _without_secrets(detail, url)
    return None


def _without_secrets(text: str, url: str) -> str:
    for secret in url_secrets(url):
        text = text.replace(secret, "***")
    return text


REDIS_KEY_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def redis_key_prefix_setting(value: str) -> str:
    """A Redis key prefix setting: no braces (nor spaces), so the first ``{...}`` of every
    key stays the hash tag the key layout puts there, the same for all of one call's keys
    on a Redis Cluster and one per tenant or user, whatever the prefix."""
    if not REDIS_KEY_PREFIX.fullmatch(value):
        raise ValueError("1-64 characters from A-Z a-z 0-9 _ . : -")
    return value


def qdrant_url_setting(value: str) -> str:
    """A Qdrant server URL setting: empty (the embedded engine), ``:memory:`` or a URL
    qdrant-client opens (http, https or no scheme, and a host), checked at start rather than
    in a traceback from building the client. The message never quotes the URL."""
    url = value.strip()
    if not url or url == ":memory:":
        return value
    if url.startswith("localhost"):  # qdrant-client's own special case (host:port)
        url = f"//{url}"
    try:
        parsed = parse_url(url)
    except LocationParseError:
        parsed = None
    if parsed is None or parsed.scheme not in (None, "http", "https") or not parsed.host:
        raise ValueError("must be an http:// or https:// URL of a Qdrant server, or :memory:")
    # qdrant-client keeps only the URL's scheme, host, port and path: a user:password@ or a
    # query (?api-key=…) was dropped without a word, and every call went unauthenticated;
    # a port 0 became its default port 6333.
    if parsed.auth is not None or parsed.query is not None or parsed.fragment is not None:
        raise ValueError(
            "must not carry credentials (user:password@) or a query: the Qdrant client drops "
            "them; give the key in the matching _QDRANT_API_KEY setting"
        )
    if parsed.port == 0:
        raise ValueError("must give its port as a number from 1 to 65535")
    return value


# Resolvers a gRPC target may name besides a bare host:port (which gRPC resolves by DNS).
_TARGET_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_HOST_NAME = re.compile(
    r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
)
_PORT = re.compile(r"[0-9]{1,5}")
TARGET_FORMS = "host:port or dns:///host:port (or an ipv4:, ipv6: or unix: target)"


def grpc_target_setting(value: str) -> str:
    """A gRPC target setting (where the gateway finds a service): ``host:port``,
    ``dns:///host:port`` (``dns://server/host:port``), ``ipv4:``/``ipv6:`` address lists or
    ``unix:path``, checked at start. gRPC itself takes almost any string and fails every
    call to it with UNAVAILABLE, and a target without a port quietly means port 443. The
    message never quotes the value (a mistaken paste may hold a credential)."""
    if not value or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"must be {TARGET_FORMS}")
    match = _TARGET_SCHEME.match(value)
    scheme = match.group(1).lower() if match else ""
    rest = value[len(scheme) + 1 :]
    if scheme in ("unix", "unix-abstract"):
        if not rest.strip("/"):
            raise ValueError("a unix: target must name a socket path")
    elif scheme == "dns":
        if rest.startswith("//"):  # dns://[dns server]/host:port
            rest = rest[2:].partition("/")[2]
        _check_host_port(rest)
    elif scheme in ("ipv4", "ipv6"):
        for address in rest.split(","):
            _check_host_port(address)
    elif scheme in ("http", "https", "grpc", "grpcs"):
        raise ValueError(f"a gRPC target is not a URL: use {TARGET_FORMS}")
    elif "://" in value:
        raise ValueError(f"unknown scheme: use {TARGET_FORMS}")
    else:  # "memory:50051" parses as a scheme too: gRPC resolves it by DNS
        _check_host_port(value)
    return value


def _check_host_port(text: str) -> None:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"needs a port: {TARGET_FORMS}")
    if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise ValueError("must give its port as a number from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"must be {TARGET_FORMS}") from None
    elif not _HOST_NAME.fullmatch(host) or len(host) > 253:
        # A name or an IPv4 address (an IPv6 one goes in brackets).
        raise ValueError(f"must be {TARGET_FORMS}")


def http_url_problem(url: str) -> str | None:
    """What keeps ``url`` from being the root URL of an HTTP server we call (http or
    https, a host, a valid port, no query or fragment), or None. Never quotes the URL: it
    may carry a password. The problem is a predicate ("must ..."): callers put what names
    the URL before it ("base_url must name a host"); "base_url its port must be ..." read
    before."""
    if any(c.isspace() or not c.isprintable() for c in url):
        return "must be an http:// or https:// URL"
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" in the host
        return "must be an http:// or https:// URL"
    if parts.scheme.lower() not in ("http", "https"):
        return "must be an http:// or https:// URL"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if not parts.hostname:
        return "must name a host"
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        return "must give its port as a number from 1 to 65535"
    if parts.query or parts.fragment or "?" in url or "#" in url:
        return "must not have a query or fragment"
    return None


S = TypeVar("S", bound=CommonSettings)
_UNPARSABLE_FIELD = re.compile(r'field "(\w+)"')
# A field name inside a message: a whole identifier (not part of a longer one).
_FIELD_NAME = re.compile(r"(?<![A-Za-z0-9_])[a-z][a-z0-9_]*(?![A-Za-z0-9_])")


def load_settings(cls: type[S]) -> S:
    """``cls()``, or exit (status 1) with one line per invalid variable on stderr: its name
    and what is wrong, never its value (it may hold a password or a key). The API keys are
    parsed here too, so a malformed entry or keys file is one line as well, and so are the
    settings' own ``problems`` and the ``OTEL_*`` variables tracing reads."""
    # Here, not at the top: otel_environment uses this module's checks.
    from services.common.otel_environment import otel_problems

    try:
        settings = cls()
        settings.api_key_map()  # a malformed key entry or file: its message names it
        # The OTEL_* variables its tracing will read, misread by the SDK later otherwise.
        problems = settings.problems() + otel_problems()
        if not problems:
            return settings
    except ApiKeyError as err:
        problems = [str(err)]
    except ValidationError as err:
        problems = [
            setting_problem(cls, error["loc"], _unknown_key_message(cls, error))
            for error in err.errors(include_input=False, include_url=False)
        ]
    except SettingsError as err:  # a dict or list field whose value is not JSON
        problems = [unparsable_problem(cls, err)]
    sys.exit("\n".join(f"invalid setting {p}" for p in problems))


def _unknown_key_message(cls: type[CommonSettings], error: ErrorDetails) -> str:
    """pydantic's message, or, for a key that is no field of a ``json_objects`` entry
    (a typo: "Extra inputs are not permitted"), what it is not and the closest field."""
    loc = error["loc"]
    nested = cls.json_objects.get(str(loc[0])) if loc else None
    if error["type"] != "extra_forbidden" or nested is None:
        return error["msg"]
    model, what = nested
    return f"not a {what}{key_hint(str(loc[-1]), model.model_fields)}"


def unparsable_field(err: SettingsError) -> str | None:
    """The field whose variable pydantic-settings could not parse as JSON, if it says."""
    field = _UNPARSABLE_FIELD.search(str(err))
    return field.group(1) if field else None


def unparsable_problem(cls: type[CommonSettings], err: SettingsError) -> str:
    """A dict or list variable that is not JSON, named as ``setting_problem`` names one:
    pydantic-settings' own message names the field and its source, not the variable."""
    field = unparsable_field(err)
    return setting_problem(cls, (field,) if field else (), "not valid JSON")


def setting_problem(cls: type[CommonSettings], loc: tuple[int | str, ...], message: str) -> str:
    """One invalid setting as said at start: the variable (never its value) and the problem;
    a check across settings names its variables (shared with ``gensearch up``)."""
    message = message.removeprefix("Value error, ")  # pydantic's prefix for a ValueError
    variables = {field: name for name, field in cls.env_names().items()}
    if not loc:
        # A check across fields (a model validator): its message names them as fields
        # ("redis_cluster needs redis_url"); the operator sets variables. Only names with
        # an "_" are replaced, so a one-word field ("host") never rewrites the prose.
        return _FIELD_NAME.sub(
            lambda m: variables.get(m.group(0), m.group(0)) if "_" in m.group(0) else m.group(0),
            message,
        )
    name = variables.get(str(loc[0]), str(loc[0]))
    inner = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc[1:])
    return f"{name}{inner}: {message}"
