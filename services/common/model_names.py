"""The shape of a model name a caller sends (``model``, ``fallback[i].model``, a
collection's ``generative.model``): it goes upstream in the request body, into span
attributes and into log lines, so it is bounded and printable before any
provider sees it, whether or not the provider checks its models against a known list."""

from __future__ import annotations

from services.common.errors import InvalidArgument

# Longer than any provider's model id (Hugging Face repo ids are at most 96 characters,
# Bedrock ARNs about 200).
MAX_MODEL_CHARS = 256


def check_model_name(model: str, field: str) -> None:
    """INVALID_ARGUMENT naming ``field`` for a model name too long, with control
    characters (a newline, NUL …) or of spaces only; an empty name (the provider's
    default) is fine. Spaces alone were once read as empty, so a caller who meant a model
    silently got the default one; they are a mistake to name, not a choice."""
    if len(model) > MAX_MODEL_CHARS:
        raise InvalidArgument(f"a model name is at most {MAX_MODEL_CHARS} characters", field=field)
    if not model.isprintable():
        raise InvalidArgument("a model name must not contain control characters", field=field)
    if model and not model.strip():
        raise InvalidArgument(
            "a model name must not be only spaces (leave it empty for the default model)",
            field=field,
        )
