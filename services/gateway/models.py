"""What the generation service says it can serve (ListModels), kept for a minute."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from gensearch.generation.v1 import generation_service_pb2 as gen_pb

from services.common.egress import EgressPolicy, UrlRefused, url_not_allowed
from services.common.errors import (
    ServiceError,
    Unauthenticated,
    out_of_range,
    quote,
)
from services.common.model_names import model_name_error
from services.common.suggest import did_you_mean
from services.common.values import check_chars
from services.gateway.clients import Caller, GenerationClient
from services.gateway.generator import Options
from services.gateway.prompting import context_window_for
from services.gateway.request_parts import refusal_at, setting_at_fault

TTL_SECONDS = 60.0
MAX_MODEL_CHARS_SETTING = "GENSEARCH_GATEWAY_MAX_MODEL_CHARS"
MAX_URL_SETTING = "GENSEARCH_GATEWAY_MAX_URL_CHARS"


class ModelCatalog:
    def __init__(
        self, generation: GenerationClient, max_model_chars: int, max_url_chars: int
    ) -> None:
        self._generation = generation
        self._max_model_chars = max_model_chars
        self._max_url_chars = max_url_chars
        self._cached: tuple[float, gen_pb.ListModelsResponse] | None = None

    async def models(self, caller: Caller, timeout: float) -> gen_pb.ListModelsResponse | None:
        """None when the generation service cannot tell right now."""
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > TTL_SECONDS:
            try:
                models = await self._generation.list_models(caller, timeout)
            except ServiceError:
                return None
            self._cached = (now, models)
        return self._cached[1]

    async def provider(self, name: str, caller: Caller, timeout: float) -> gen_pb.Provider | None:
        models = await self.models(caller, timeout)
        return None if models is None else _find_provider(models, name)

    async def check_choices(
        self,
        options: Options,
        caller: Caller,
        timeout: float,
        *,
        prefix: str = "generate.",
    ) -> None:
        """Before any LLM call: every provider of the chain is configured, every model is
        one its provider knows (where the provider checks), ``max_tokens`` fits the
        primary's declared context window (a fallback pair's that cannot hold it is
        skipped by the generation service), and a caller's base_url is on
        the operator's allowlist (the generation service checks all of it again, and the
        URL once more on every connection). One clear error instead of the same one on
        every hit, naming the field the value came from (``Options.provider_field`` …):
        the request's own, or the collection's stored default (``collection.generative.…``)
        when the request named none. A request's own value is INVALID_ARGUMENT; a stored
        one is FAILED_PRECONDITION (``refusal_at``): no change to the request fixes it,
        the collection must be. ``prefix`` is where the request's base_url sits."""
        models = await self.models(caller, timeout)
        if models is None:  # generation unreachable: each hit will say so itself
            # The repeats its names alone show (the primary's empty provider or model
            # is not resolved without ListModels: those are checked when it answers).
            _check_repeats(options, lambda p, m: (p.strip().lower(), m))
            return
        pairs = [
            (
                options.provider,
                options.model,
                options.provider_field,
                options.model_field,
                bool(options.base_url),
            )
        ]
        chain = options.fallback_field
        pairs += [
            (p, m, f"{chain}[{i}].provider", f"{chain}[{i}].model", False)
            for i, (p, m) in enumerate(options.fallback)
        ]
        for provider_name, model, provider_field, model_at, callers_url in pairs:
            err = model_name_error(
                model,
                model_at,
                self._max_model_chars,
                MAX_MODEL_CHARS_SETTING,
                refusal_at(model_at),
            )
            if err is not None:
                raise err
            provider = _find_provider(models, provider_name)
            if provider is None:
                known = ", ".join(sorted(p.name for p in models.providers))
                # Provider names are matched lower-cased, so one is suggested as it is written
                # ('olama' -> 'ollama'); the list is the operator's, shown to every caller.
                # For the gateway's own default setting too: an operator's typo is a typo.
                hint, suggestion = did_you_mean(
                    provider_name.strip().lower(), sorted(p.name for p in models.providers)
                )
                if provider_field == options.provider_field and options.provider_setting:
                    raise setting_at_fault(
                        f"unknown provider {quote(provider_name)} (configured: {known})",
                        "provider",
                        options.provider_setting,
                        provider_field,
                        "UNKNOWN_PROVIDER",
                        suggestion=(hint, suggestion),
                    )
                raise refusal_at(provider_field)(
                    f"unknown provider {quote(provider_name)} (configured: {known}){hint}",
                    field=provider_field,
                    reason="UNKNOWN_PROVIDER",
                    metadata=suggestion,
                )
            chosen = model or provider.default_model
            if provider.models_checked and not callers_url and chosen not in provider.models:
                if model_at == options.model_field and options.model_setting:
                    raise setting_at_fault(
                        f"unknown model {quote(chosen)} for provider {provider.name!r} "
                        f"(known: {', '.join(provider.models)})",
                        "model",
                        options.model_setting,
                        model_at,
                        "UNKNOWN_MODEL",
                    )
                raise refusal_at(model_at)(
                    f"unknown model {quote(chosen)} for provider {provider.name!r}; "
                    f"known: {', '.join(provider.models)}",
                    field=model_at,
                    reason="UNKNOWN_MODEL",
                )
            if provider_field == options.provider_field:
                # The primary's window only: a fallback pair that cannot hold max_tokens
                # is skipped by the generation service, not a reason to refuse the call.
                _check_max_tokens(options, provider)
                if not callers_url:
                    _check_key(provider, caller)
        _check_repeats(options, lambda p, m: _endpoint(models, p, m))
        limit = models.max_tokens_limit
        if options.max_tokens is not None and 0 < limit < options.max_tokens:
            raise out_of_range(
                f"max_tokens must be at most {limit}",
                field=options.max_tokens_field,
                bound=limit,
                setting="GENSEARCH_GENERATION_MAX_TOKENS_LIMIT",
                error=refusal_at(options.max_tokens_field),
            )
        if options.base_url:
            check_chars(options.base_url, f"{prefix}base_url", self._max_url_chars, MAX_URL_SETTING)
            try:
                EgressPolicy.parse(models.allowed_hosts).check_url(options.base_url)
            except (UrlRefused, ValueError) as err:
                why = err.why if isinstance(err, UrlRefused) else "the allowlist is unreadable"
                raise url_not_allowed(
                    f"{prefix}base_url", why, "GENSEARCH_GENERATION_ALLOWED_HOSTS"
                ) from None

    async def context_window(
        self,
        options: Options,
        windows: Mapping[str, int],
        default: int,
        caller: Caller,
        timeout: float,
    ) -> tuple[int, str, str]:
        """The context window of the model ``options`` will use, that model's name and
        its provider's: the configured ``windows`` first, else what the provider reports,
        else ``default``. The provider's window is the one the generation service holds
        every model of that provider to (``validation.check_context_window``): fitted to
        ``default`` instead, a prompt for a model other than the default one went past it
        and was refused there, where the fit would have left out history and hits."""
        name, fallback = options.model, default
        provider_name = options.provider
        # None when generation cannot tell: that only costs a default context window.
        provider = await self.provider(options.provider, caller, timeout)
        if provider is not None:
            name = name or provider.default_model
            provider_name = provider.name
            if provider.context_window > 0:
                fallback = provider.context_window
        return context_window_for(name, windows, fallback), name, provider_name


def _endpoint(models: gen_pb.ListModelsResponse, provider_name: str, model: str) -> tuple[str, str]:
    """(provider, model) as the generation service will call it: the provider's name as
    it reads it, an empty model its default (the provider is known: checked before)."""
    provider = _find_provider(models, provider_name)
    if provider is None:
        return provider_name.strip().lower(), model
    return provider.name.lower(), model or provider.default_model


def _check_repeats(options: Options, endpoint: Callable[[str, str], tuple[str, str]]) -> None:
    """No fallback pair names the endpoint of the primary or of an earlier pair: the
    generation service would call that endpoint again with all its retries, each call
    charged to the tenant and taken from the provider's shared rate limits, for an
    answer it just failed to give. The same endpoint: the same provider, the same model
    (``endpoint`` resolves an empty one to the provider's default) and the same base URL
    (a caller's ``base_url`` is the primary's alone, so a primary with one repeats no
    pair). A request's own chain is INVALID_ARGUMENT, a collection's stored one
    FAILED_PRECONDITION (``refusal_at``), reason DUPLICATE_FALLBACK."""
    seen: dict[tuple[str, str, str], str] = {
        (*endpoint(options.provider, options.model), options.base_url): "the primary"
    }
    for i, (provider, model) in enumerate(options.fallback):
        key = (*endpoint(provider, model), "")
        field = f"{options.fallback_field}[{i}]"
        first = seen.get(key)
        if first is not None:
            raise refusal_at(field)(
                f"{field} repeats {first} (provider {quote(key[0])}, model {quote(key[1])}): "
                "the same endpoint would be called again, with all its retries; name "
                "another provider or model, or drop the pair",
                field=field,
                reason="DUPLICATE_FALLBACK",
                metadata={"repeats": "primary" if first == "the primary" else first},
            )
        seen[key] = field


def _check_max_tokens(options: Options, provider: gen_pb.Provider) -> None:
    """An answer longer than the provider's whole context window cannot be had (the
    generation service refuses it too; here it is one error instead of one per hit)."""
    window = provider.context_window
    if options.max_tokens is not None and 0 < window < options.max_tokens:
        raise refusal_at(options.max_tokens_field)(
            f"max_tokens {options.max_tokens} exceeds the context window of provider "
            f"{provider.name!r} ({window} tokens)",
            field=options.max_tokens_field,
            reason="CONTEXT_WINDOW_EXCEEDED",
            metadata={"provider": provider.name, "context_window": str(window)},
        )


def _check_key(provider: gen_pb.Provider, caller: Caller) -> None:
    """The primary provider needs a key and has none: neither the operator's
    (``api_key_configured``) nor the caller's ``x-<provider>-api-key``. The generation
    service answers each call so (UNAUTHENTICATED / MISSING_PROVIDER_API_KEY, with nothing
    sent upstream); here it is one error before the fan-out, not one per hit, each hit
    charged to the tenant's LLM-call quota. A fallback pair's key is the generation
    service's to ask for, if the chain ever reaches it."""
    if not provider.requires_key or provider.api_key_configured:
        return
    header = f"x-{provider.name}-api-key"
    if any(k == header and isinstance(v, str) and v.strip() for k, v in caller.provider_keys):
        return
    envs = " or ".join(e for e in provider.api_key_env.split(",") if e) or "its key variable"
    raise Unauthenticated(
        f"provider {provider.name!r} needs an API key: send metadata '{header}' or set {envs}",
        field=header,
        reason="MISSING_PROVIDER_API_KEY",
        metadata={"provider": provider.name},
    )


def _find_provider(models: gen_pb.ListModelsResponse, name: str) -> gen_pb.Provider | None:
    """The provider named ``name`` (case-insensitive; empty: the default one)."""
    # As generation's registry reads a name: spaces around it stripped, case ignored.
    wanted = (name.strip() or models.default_provider).lower()
    return next((p for p in models.providers if p.name.lower() == wanted), None)
