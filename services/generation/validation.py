"""Checks on a generation request, each failure naming the field at fault."""

from __future__ import annotations

import math
from dataclasses import dataclass

from gensearch.generation.v1 import generation_service_pb2 as pb

from services.common.errors import InvalidArgument, quote
from services.common.tokens import estimate_tokens
from services.generation.providers.base import ChatMessage, CompletionRequest
from services.generation.settings import ProviderConfig

ROLE_NAMES = {pb.ROLE_SYSTEM: "system", pb.ROLE_USER: "user", pb.ROLE_ASSISTANT: "assistant"}


@dataclass(frozen=True, slots=True)
class Limits:
    max_messages: int = 512
    max_prompt_chars: int = 1_000_000
    max_stop_sequences: int = 4


# How far the estimate may exceed a context window before a prompt is refused here.
_ESTIMATE_SLACK = 1.25


def build_request(
    msg: pb.GenerateRequest | pb.StreamGenerateRequest,
    config: ProviderConfig,
    limits: Limits,
    api_key: str | None,
) -> CompletionRequest:
    if not msg.messages:
        raise InvalidArgument("messages must not be empty", field="messages")
    if len(msg.messages) > limits.max_messages:
        raise InvalidArgument(
            f"at most {limits.max_messages} messages are allowed", field="messages"
        )
    messages: list[ChatMessage] = []
    chars = 0
    for i, m in enumerate(msg.messages):
        role = ROLE_NAMES.get(m.role)
        if role is None:
            raise InvalidArgument(
                f"messages[{i}].role must be ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT",
                field=f"messages[{i}].role",
            )
        if not m.content.strip():
            raise InvalidArgument(
                f"messages[{i}].content must not be empty", field=f"messages[{i}].content"
            )
        chars += len(m.content)
        messages.append(ChatMessage(role, m.content))
    if chars > limits.max_prompt_chars:
        raise InvalidArgument(
            f"the messages hold {chars} characters; at most {limits.max_prompt_chars} are allowed",
            field="messages",
        )

    model = msg.model.strip() or config.default_model
    if config.models and model not in config.models:
        raise InvalidArgument(
            f"unknown model {quote(model)} for provider {config.name!r}; "
            f"known: {', '.join(config.known_models)}",
            field="model",
            reason="UNKNOWN_MODEL",
        )

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

    stop = list(msg.stop)
    if len(stop) > limits.max_stop_sequences:
        raise InvalidArgument(
            f"at most {limits.max_stop_sequences} stop sequences are allowed", field="stop"
        )
    if any(not s for s in stop):
        raise InvalidArgument("stop sequences must not be empty", field="stop")

    if config.context_window is not None:
        # Only what clearly cannot fit: the shared estimate is rough, and the gateway may
        # have fitted the prompt with the model's real tokenizer (docs/gateway.md#history),
        # which can count fewer tokens; the model server refuses the rest itself.
        prompt = sum(estimate_tokens(m.content) for m in messages)
        if prompt > config.context_window * _ESTIMATE_SLACK:
            raise InvalidArgument(
                f"the prompt (~{prompt} tokens) exceeds the context window of provider "
                f"{config.name!r} ({config.context_window} tokens)",
                field="messages",
                reason="CONTEXT_WINDOW_EXCEEDED",
            )

    return CompletionRequest(
        model=model,
        messages=messages,
        temperature=temperature,
        max_tokens=max_tokens,
        top_p=top_p,
        stop=stop,
        api_key=api_key,
    )
