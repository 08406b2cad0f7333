"""Conversation helpers: history from stored turns, question rewriting, citations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gensearch.generation.v1 import generation_service_pb2 as gen_pb

USER = gen_pb.ROLE_USER
ASSISTANT = gen_pb.ROLE_ASSISTANT
SYSTEM = gen_pb.ROLE_SYSTEM


@dataclass(frozen=True)
class Turn:
    question: str
    answer: str
    # The stored interaction (empty for turns not read from memory).
    interaction_id: str = ""


def recent_turns(newest_first: Sequence[Turn], size: int) -> list[Turn]:
    """The ``size`` most recent turns, oldest first (memory lists newest first)."""
    if size <= 0:
        return []
    return list(reversed(newest_first[:size]))


def history_messages(turns: Sequence[Turn]) -> list[gen_pb.Message]:
    """Chronological turns as alternating user/assistant messages. A turn with a blank
    question or answer (a model that answered nothing: a refusal, tool calls, a content
    filter; or a turn a client stored) is left out: the generation service refuses an empty
    message, and replaying one failed every later turn of the conversation INVALID_ARGUMENT
    naming ``messages[n].content``."""
    messages: list[gen_pb.Message] = []
    for turn in turns:
        if not turn.question.strip() or not turn.answer.strip():
            continue
        messages.append(gen_pb.Message(role=USER, content=turn.question))
        messages.append(gen_pb.Message(role=ASSISTANT, content=turn.answer))
    return messages


REWRITE_SYSTEM_PROMPT = (
    "You rewrite a follow-up question into a standalone search query. Use the conversation "
    "only to resolve references (it, they, that one, the second...). Reply with the query "
    "alone: no quotes, no explanation."
)


def rewrite_messages(turns: Sequence[Turn], question: str) -> list[gen_pb.Message]:
    """One transcript in one user message: small models follow that better than a replay
    of the chat, and the model must not answer the question here, only restate it."""
    transcript = "\n".join(f"User: {t.question}\nAssistant: {t.answer}" for t in turns)
    return [
        gen_pb.Message(role=SYSTEM, content=REWRITE_SYSTEM_PROMPT),
        gen_pb.Message(
            role=USER,
            content=(
                f"Conversation:\n{transcript}\n\nFollow-up question: {question}\n\n"
                "Standalone search query:"
            ),
        ),
    ]


def clean_rewrite(text: str, fallback: str, *, max_chars: int = 1000) -> str:
    """First non-empty line of the model's reply, unquoted; the question if unusable."""
    for line in text.strip().splitlines():
        line = line.strip()
        for prefix in (
            "standalone search query:",
            "standalone question:",
            "search query:",
            "query:",
        ):
            if line.lower().startswith(prefix):
                line = line[len(prefix) :].strip()
        line = line.strip("\"'` ")
        if line:
            return line[:max_chars]
    return fallback
