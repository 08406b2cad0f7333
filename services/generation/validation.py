"""Checks on a generation request, each failure naming the field at fault."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gensearch.generation.v1 import generation_service_pb2 as pb

from services.common.errors import InvalidArgument, MissingField, out_of_range, quote, seconds_text
from services.common.fair_executor import FairExecutor
from services.common.json_schema import (
    OutputSchema,
    SchemaLimits,
    check_schema_fairly,
    format_name,
    schema_data,
)
from services.common.model_names import MAX_MODEL_CHARS, check_model_name
from services.common.settings import DEFAULT_MAX_FALLBACKS
from services.generation.providers.base import (
    ChatMessage,
    CompletionRequest,
    JsonSchemaFormat,
    estimate_call_tokens,
    estimate_prompt_tokens,
)
from services.generation.settings import ProviderConfig

# How far the estimate may exceed a context window before a prompt is refused here.
_ESTIMATE_SLACK = 1.25

#: The messages together are longer than ``max_prompt_chars`` (INVALID_ARGUMENT, field
#: ``messages``, metadata ``max_chars``, ``chars``, ``setting``).
PROMPT_TOO_LONG = "PROMPT_TOO_LONG"
#: A prompt or ``max_tokens`` past a provider's context window.
CONTEXT_WINDOW_EXCEEDED = "CONTEXT_WINDOW_EXCEEDED"
MAX_PROMPT_CHARS_SETTING = "GENSEARCH_GENERATION_MAX_PROMPT_CHARS"
MAX_MODEL_CHARS_SETTING = "GENSEARCH_GENERATION_MAX_MODEL_CHARS"
# The prefix of the generation service's own variables, named beside each bound it sets.
_SETTING = "GENSEARCH_GENERATION_"

ROLE_NAMES = {pb.ROLE_SYSTEM: "system", pb.ROLE_USER: "user", pb.ROLE_ASSISTANT: "assistant"}


@dataclass(frozen=True, slots=True)
class Limits:
    max_messages: int = 512
    max_prompt_chars: int = 1_000_000
    max_stop_sequences: int = 4
    max_stop_chars: int = 256
    max_fallbacks: int = DEFAULT_MAX_FALLBACKS
    max_tokens: int = 1_000_000
    max_model_chars: int = MAX_MODEL_CHARS
    schema: SchemaLimits = field(default_factory=SchemaLimits)


def check_model(model: str, config: ProviderConfig, field: str) -> None:
    """A model outside the provider's known list, refused before any call (unless the
    operator turned the check off for an endpoint that adds models)."""
    if config.check_models and config.models and model not in config.known_models:
        raise InvalidArgument(
            f"unknown model {quote(model)} for provider {config.name!r}; "
            f"known: {', '.join(config.known_models)}",
            field=field,
            reason="UNKNOWN_MODEL",
        )


def check_context_window(
    messages: list[ChatMessage], max_tokens: int | None, config: ProviderConfig
) -> None:
    """What cannot fit the provider's context window (when it declares one): a prompt,
    or a ``max_tokens`` larger than the whole window."""
    if config.context_window is None:
        return
    window = config.context_window
    if max_tokens is not None and max_tokens > window:
        raise InvalidArgument(
            f"max_tokens {max_tokens} exceeds the context window of provider "
            f"{config.name!r} ({window} tokens)",
            field="max_tokens",
            reason=CONTEXT_WINDOW_EXCEEDED,
            metadata={"provider": config.name, "context_window": str(window)},
        )
    # Only what clearly cannot fit: the shared estimate is rough, and the gateway may
    # have fitted the prompt with the model's real tokenizer (docs/gateway.md#history),
    # which can count fewer tokens; the model server refuses the rest itself.
    prompt = estimate_prompt_tokens(messages)
    if prompt > window * _ESTIMATE_SLACK:
        raise InvalidArgument(
            f"the prompt (~{prompt} tokens) exceeds the context window of provider "
            f"{config.name!r} ({window} tokens)",
            field="messages",
            reason=CONTEXT_WINDOW_EXCEEDED,
        )


def limit_refusal(request: CompletionRequest, config: ProviderConfig) -> InvalidArgument | None:
    """Why the provider ``config`` can never take ``request`` (its prompt or ``max_tokens``
    past the context window, or past a whole window of ``tokens_per_minute``), or None
    when it can. A refusal, not raised: the planner skips such a fallback pair, and
    refuses the request only when no pair of the chain can take it."""
    messages = list(request.messages)
    try:
        check_context_window(messages, request.max_tokens, config)
        check_token_budget(messages, request.max_tokens, config)
    except InvalidArgument as err:
        return err
    return None


def check_token_budget(
    messages: list[ChatMessage], max_tokens: int | None, config: ProviderConfig
) -> None:
    """A call that a provider counting reserved tokens can never take: its prompt plus
    ``max_tokens`` (the request's, else the provider's) above what ``tokens_per_minute``
    allows in a whole ``rate_window``. The provider would refuse it 429 however long it
    waited, and charged up front it would hold every other call back for a window."""
    if config.tokens_per_minute is None or config.tokens_counted != "reserved":
        return
    allowance = config.tokens_per_minute * config.rate_window / 60.0
    asked = max_tokens if max_tokens is not None else config.max_tokens
    cost = estimate_call_tokens(messages, asked)
    prompt = estimate_prompt_tokens(messages)
    # max_tokens is counted exactly; the prompt only as estimated, so (as for the context
    # window) the call is refused only if even its least plausible prompt cannot fit.
    least_prompt = math.floor(prompt / _ESTIMATE_SLACK)
    if cost - prompt + least_prompt <= allowance:
        return
    whose = "max_tokens" if max_tokens is not None else "the provider's default max_tokens"
    if asked is None:
        whose = "the completion estimate"
    raise InvalidArgument(
        f"the prompt (~{prompt} tokens) plus {whose} ({cost - prompt}) exceeds the "
        f"{math.floor(allowance)} tokens provider {config.name!r} allows in "
        f"{seconds_text(config.rate_window)} s (it counts max_tokens when a call arrives)",
        # What the caller can lower: max_tokens, unless the prompt alone is too long.
        field="messages" if least_prompt > allowance else "max_tokens",
        reason="PROVIDER_TOKEN_LIMIT_EXCEEDED",
        metadata={"provider": config.name, "tokens": str(math.floor(allowance))},
    )


async def response_format(
    msg: pb.GenerateRequest | pb.StreamGenerateRequest, limits: Limits, schema_checks: FairExecutor
) -> tuple[JsonSchemaFormat, OutputSchema] | None:
    """The request's JSON schema format and what validates answers (None without one); a
    schema not seen before is checked on ``schema_checks``' thread."""
    if not msg.HasField("response_format"):
        return None
    fmt = msg.response_format
    name = format_name(fmt.name, "response_format.name")
    field = "response_format.json_schema"
    schema = schema_data(fmt.json_schema, field, limits.schema)
    output = await check_schema_fairly(schema, field, limits.schema, schema_checks)
    strict = fmt.strict if fmt.HasField("strict") else None
    return JsonSchemaFormat(name=name, schema=schema, strict=strict), output


def _penalty(msg: pb.GenerateRequest | pb.StreamGenerateRequest, name: str) -> float | None:
    if not msg.HasField(name):
        return None
    value = float(getattr(msg, name))
    if not (math.isfinite(value) and -2.0 <= value <= 2.0):
        raise InvalidArgument(f"{name} must be between -2 and 2", field=name)
    return value


def build_request(
    msg: pb.GenerateRequest | pb.StreamGenerateRequest,
    config: ProviderConfig,
    limits: Limits,
    api_key: str | None,
    *,
    fmt: JsonSchemaFormat | None = None,
    check_models: bool = True,
) -> CompletionRequest:
    """The primary (provider, model)'s request. ``check_models`` False: a caller's own
    base URL, whose models the provider's list does not describe."""
    if not msg.messages:
        raise MissingField("messages must not be empty", field="messages")
    if len(msg.messages) > limits.max_messages:
        # Each bound with its setting in the ErrorInfo, as the gateway's are: a client
        # trims by them without parsing the message (before: the field alone).
        raise out_of_range(
            f"at most {limits.max_messages} messages are allowed",
            field="messages",
            bound=limits.max_messages,
            setting=_SETTING + "MAX_MESSAGES",
        )
    messages: list[ChatMessage] = []
    chars = 0
    for i, m in enumerate(msg.messages):
        role = ROLE_NAMES.get(m.role)
        if m.role == pb.ROLE_UNSPECIFIED:
            raise MissingField(
                f"messages[{i}].role is required: ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT",
                field=f"messages[{i}].role",
            )
        if role is None:
            raise InvalidArgument(
                f"messages[{i}].role must be ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT",
                field=f"messages[{i}].role",
            )
        if not m.content.strip():
            raise MissingField(
                f"messages[{i}].content must not be empty", field=f"messages[{i}].content"
            )
        chars += len(m.content)
        messages.append(ChatMessage(role, m.content))
    if chars > limits.max_prompt_chars:
        raise InvalidArgument(
            f"the messages hold {chars} characters; at most {limits.max_prompt_chars} are "
            f"allowed ({MAX_PROMPT_CHARS_SETTING})",
            field="messages",
            reason=PROMPT_TOO_LONG,
            metadata={
                "max_chars": str(limits.max_prompt_chars),
                "chars": str(chars),
                "setting": MAX_PROMPT_CHARS_SETTING,
            },
        )

    # The name as sent: spaces alone are refused there, not stripped into the default.
    check_model_name(msg.model, "model", limits.max_model_chars, MAX_MODEL_CHARS_SETTING)
    model = msg.model.strip() or config.default_model
    if check_models:
        check_model(model, config, "model")

    temperature = msg.temperature if msg.HasField("temperature") else None
    if temperature is not None and not (math.isfinite(temperature) and 0.0 <= temperature <= 2.0):
        raise InvalidArgument("temperature must be between 0 and 2", field="temperature")
    top_p = msg.top_p if msg.HasField("top_p") else None
    if top_p is not None and not (math.isfinite(top_p) and 0.0 < top_p <= 1.0):
        raise InvalidArgument("top_p must be in (0, 1]", field="top_p")
    # An optional field: unset means the provider's default; set, it must allow an answer.
    max_tokens = msg.max_tokens if msg.HasField("max_tokens") else None
    if max_tokens is not None and max_tokens < 1:
        raise InvalidArgument("max_tokens must be at least 1", field="max_tokens")
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise out_of_range(
            f"max_tokens must be at most {limits.max_tokens}",
            field="max_tokens",
            bound=limits.max_tokens,
            setting=_SETTING + "MAX_TOKENS_LIMIT",
        )

    stop = list(msg.stop)
    if len(stop) > limits.max_stop_sequences:
        raise out_of_range(
            f"at most {limits.max_stop_sequences} stop sequences are allowed",
            field="stop",
            bound=limits.max_stop_sequences,
            setting=_SETTING + "MAX_STOP_SEQUENCES",
        )
    for i, s in enumerate(stop):
        if not s:
            raise InvalidArgument("stop sequences must not be empty", field=f"stop[{i}]")
        if len(s) > limits.max_stop_chars:
            raise InvalidArgument(
                f"a stop sequence is at most {limits.max_stop_chars} characters",
                field=f"stop[{i}]",
                metadata={
                    "max_chars": str(limits.max_stop_chars),
                    "setting": _SETTING + "MAX_STOP_CHARS",
                },
            )
    frequency_penalty = _penalty(msg, "frequency_penalty")
    presence_penalty = _penalty(msg, "presence_penalty")
    seed = msg.seed if msg.HasField("seed") else None

    # The limits of the provider (context window, token budget) are the planner's to
    # check, pair by pair: a pair that cannot hold the prompt is skipped (``limit_refusal``).
    return CompletionRequest(
        model=model,
        messages=messages,
        temperature=temperature,
        max_tokens=max_tokens,
        top_p=top_p,
        stop=stop,
        frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty,
        seed=seed,
        response_format=fmt,
        api_key=api_key,
    )
