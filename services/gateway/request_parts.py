"""Checks and pieces every gateway request type shares, written once: text limits, the
sampling options (temperature, max_tokens), fallback chains and the search query."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from gensearch.generation.v1.generation_service_pb2 import ModelChoice
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from services.common.errors import (
    MISSING_FIELD,
    FailedPrecondition,
    InvalidArgument,
    MissingField,
    out_of_range,
)


def require(message: Any, name: str, *, prefix: str = "") -> None:
    if not getattr(message, name):
        raise MissingField(f"{name} is required", field=prefix + name)


PROMPT_CHARS_SETTING = "GENSEARCH_GATEWAY_MAX_PROMPT_CHARS"


def check_length(
    message: Any,
    names: tuple[str, ...],
    limit: int,
    *,
    prefix: str = "",
    setting: str = PROMPT_CHARS_SETTING,
) -> None:
    """Each text field in ``names`` is at most ``limit`` characters (the variable
    ``setting``): named in the message and as ErrorInfo ``max_chars`` / ``setting``, the
    shape a collection's over-long system_prompt is refused in (forward.py)."""
    for name in names:
        if len(getattr(message, name)) > limit:
            raise InvalidArgument(
                f"{name} is longer than {limit} characters ({setting})",
                field=prefix + name,
                metadata={"max_chars": str(limit), "setting": setting},
            )


def check_sampling(message: Any, *, prefix: str = "") -> None:
    """``temperature`` and ``max_tokens`` (Generate, Ask), and where the message has them
    ``top_p`` and the penalties (Generate): checked here so a bad value is one clear
    error, not the same error on every hit of a fan-out."""
    if message.HasField("temperature") and not 0 <= message.temperature <= 2:
        raise InvalidArgument("temperature must be between 0 and 2", field=f"{prefix}temperature")
    if message.HasField("max_tokens") and message.max_tokens < 1:
        raise InvalidArgument("max_tokens must be at least 1", field=f"{prefix}max_tokens")
    fields = message.DESCRIPTOR.fields_by_name
    if "top_p" in fields and message.HasField("top_p") and not 0 < message.top_p <= 1:
        raise InvalidArgument("top_p must be in (0, 1]", field=f"{prefix}top_p")
    for name in ("frequency_penalty", "presence_penalty"):
        if name in fields and message.HasField(name):
            value = getattr(message, name)
            if not (math.isfinite(value) and -2 <= value <= 2):
                raise InvalidArgument(f"{name} must be between -2 and 2", field=prefix + name)


def refusal_at(field: str) -> type[InvalidArgument] | type[FailedPrecondition]:
    """A request's own bad value is a bad argument; a collection's stored one
    (``collection.…``) is a state of the collection the caller must fix there."""
    return FailedPrecondition if field.startswith("collection.") else InvalidArgument


def setting_at_fault(
    unknown: str,
    what: str,
    setting: str,
    field: str,
    reason: str,
    *,
    suggestion: tuple[str, dict[str, str]] = ("", {}),
) -> FailedPrecondition:
    """The refusal of an unknown provider or model (``what``) that neither the request nor
    the collection named: the gateway's default ``setting`` chose it, so the operator is at
    fault, not the caller's argument. The gateway cannot check it at start: the providers
    are the generation service's (docs/gateway.md). Raised by ``ModelCatalog.check_choices``
    before a call, and for generation's own refusal (``caller_fields_refused``).
    ``suggestion``: ``suggest.did_you_mean``'s hint and metadata, for the operator's typo
    as for a caller's."""
    hint, metadata = suggestion
    return FailedPrecondition(
        f"{unknown}, the gateway's default ({setting}): name a {what} in the request, or "
        f"the operator must correct the setting{hint}",
        field=field,
        reason=reason,
        metadata={"setting": setting, **metadata},
    )


def check_fallback(
    chain: Sequence[ModelChoice | ret_pb.GenerativeModel], limit: int, field: str
) -> None:
    """A fallback chain, the request's or the collection's it falls back to, bounded and
    well formed before any call (providers and models are checked against ListModels by
    ``ModelCatalog.check_choices``)."""
    refusal = refusal_at(field)
    if len(chain) > limit:
        raise out_of_range(
            f"at most {limit} fallback pairs are allowed",
            field=field,
            bound=limit,
            setting="GENSEARCH_GATEWAY_MAX_FALLBACKS",
            error=refusal,
        )
    for i, choice in enumerate(chain):
        if not choice.provider.strip():
            raise refusal(
                "provider is required", field=f"{field}[{i}].provider", reason=MISSING_FIELD
            )


def copy_query(request: Any, search: ret_pb.SearchRequest) -> str | None:
    """Copy the request's query (its ``query`` oneof) and filter into ``search``; the kind
    of query copied, or None when the request has none."""
    kind: str | None = request.WhichOneof("query")
    if kind is not None:
        getattr(search, kind).CopyFrom(getattr(request, kind))
    if request.HasField("filter"):
        search.filter.CopyFrom(request.filter)
    return kind
