"""The shape of a model name a caller sends (``model``, ``fallback[i].model``, a
collection's ``generative.model``): it goes upstream in the request body, into span
attributes and into log lines, so it is bounded and printable before any
provider sees it, whether or not the provider checks its models against a known list.
The default model and provider settings are held to the same shapes at start, a default
model to the service's own MAX_MODEL_CHARS (``model_setting_too_long``)."""

from __future__ import annotations

import re

from services.common.errors import InvalidArgument, ServiceError

FIELD_TOO_LARGE = "FIELD_TOO_LARGE"

# The default of each service's MAX_MODEL_CHARS setting (GENSEARCH_GATEWAY_MAX_MODEL_CHARS,
# _GENERATION_, _RETRIEVAL_): longer than any provider's model id (Hugging Face repo ids
# are at most 96 characters, Bedrock ARNs about 200). Also the bound of a model name an
# upstream answer reports.
MAX_MODEL_CHARS = 256
# A provider's name (generation's PROVIDERS entries and presets); lookups strip and
# lower-case what a caller sends.
PROVIDER_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")
PROVIDER_NAME_RULE = "provider names are lower-case letters, digits, '-' or '_'"


def model_name_problem(model: str, max_chars: int | None = MAX_MODEL_CHARS) -> str | None:
    """What is wrong with ``model`` as a model name, or None: longer than ``max_chars``
    (None: any length),
    with control characters (a newline, NUL …) or of spaces only; an empty name (the
    provider's default) is fine. Spaces alone were once read as empty, so a caller who
    meant a model silently got the default one; they are a mistake to name, not a
    choice."""
    if max_chars is not None and len(model) > max_chars:
        return f"a model name is at most {max_chars} characters"
    if not model.isprintable():
        return "a model name must not contain control characters"
    if model and not model.strip():
        return "a model name must not be only spaces (leave it empty for the default model)"
    return None


def model_name_error(
    model: str,
    field: str,
    max_chars: int,
    setting: str,
    error: type[ServiceError] = InvalidArgument,
) -> ServiceError | None:
    """The refusal (``error``, naming ``field``) of a model name a caller sent that
    ``model_name_problem`` refuses, or None. Too long is FIELD_TOO_LARGE with metadata
    ``max_chars`` and ``setting`` (the service's MAX_MODEL_CHARS variable), as other
    limit refusals."""
    if len(model) > max_chars:
        return error(
            f"{field}: a model name is at most {max_chars} characters ({setting})",
            field=field,
            reason=FIELD_TOO_LARGE,
            metadata={"max_chars": str(max_chars), "setting": setting},
        )
    problem = model_name_problem(model, max_chars)
    return error(problem, field=field) if problem else None


def check_model_name(model: str, field: str, max_chars: int, setting: str) -> None:
    """Raise ``model_name_error``'s INVALID_ARGUMENT, if any."""
    err = model_name_error(model, field, max_chars, setting)
    if err is not None:
        raise err


def model_name_setting(value: str) -> str:
    """A model name setting (a default model), held to the shape a request's model is held
    to (``model_name_problem``) and refused at start: a default of spaces only used to be
    sent with every call that named no model, and each failed INVALID_ARGUMENT ``model``,
    blaming the caller for the operator's setting. Its length is the service's
    MAX_MODEL_CHARS setting's to bound (``model_setting_too_long``, checked where the
    settings hold both)."""
    problem = model_name_problem(value, None)
    if problem:
        raise ValueError(problem)
    return value


def model_setting_too_long(value: str, max_chars: int, setting: str) -> str | None:
    """Why a default model setting longer than ``max_chars`` (the service's MAX_MODEL_CHARS,
    the variable ``setting``) is refused at start, or None: every call naming no model
    would send it, and the service behind, holding its requests to the same bound, would
    refuse each. Once held to a fixed 256 whatever the setting said."""
    if len(value) > max_chars:
        return f"a model name is at most {max_chars} characters ({setting}); it has {len(value)}"
    return None


def provider_name_setting(value: str) -> str:
    """A default provider setting: empty (the generation service's default) or a name a
    provider can have. Spaces alone were read as empty by the generation service (it
    strips the name), so the operator who meant a provider silently got the default one."""
    if value and not value.strip():
        raise ValueError(
            "a provider name must not be only spaces "
            "(leave it empty for the generation service's default)"
        )
    if value and not PROVIDER_NAME.fullmatch(value.strip().lower()):
        raise ValueError(PROVIDER_NAME_RULE)
    return value
