"""The traces of one Ask turn: what each step was given and what it produced, with its
start and duration, stored with the turn (memory's ``CreateInteraction.traces``).

Steps: the question rewrite (the messages sent, the query it gave), the retrieval (the
query, the hits' ids and scores) and the answer's generation (the messages sent, the
model, usage, finish reason, and time to the first token when streamed). Each trace is
bounded here to ``ask_trace_bytes`` the way memory bounds what it stores, so a turn with a
huge prompt still fits one CreateInteraction message.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from services.common.turn_size import bound_trace

_ROLES = {
    gen_pb.ROLE_SYSTEM: "system",
    gen_pb.ROLE_USER: "user",
    gen_pb.ROLE_ASSISTANT: "assistant",
}


class Step:
    """One step under way: ``done`` records it with its output."""

    def __init__(self, owner: TurnTraces, step: int, given: dict[str, Any]) -> None:
        self._owner = owner
        self._trace = mem_pb.Trace(step=step)  # type: ignore[arg-type]
        self._trace.start_time.GetCurrentTime()
        self._trace.input.update(given)
        self._started = time.perf_counter()

    def since_start_ms(self) -> float:
        return round((time.perf_counter() - self._started) * 1000, 3)

    def done(self, output: dict[str, Any]) -> None:
        self._trace.duration.FromNanoseconds(int((time.perf_counter() - self._started) * 1e9))
        self._trace.output.update(output)
        self._owner.add(self._trace)


class TurnTraces:
    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self.traces: list[mem_pb.Trace] = []

    def start(self, step: int, given: dict[str, Any]) -> Step:
        return Step(self, step, given)

    def add(self, trace: mem_pb.Trace) -> None:
        if self._max_bytes <= 0:
            return
        trace.trace_number = len(self.traces)  # as memory numbers it: counted in the bound
        bound_trace(trace, self._max_bytes)
        self.traces.append(trace)


def messages(sent: Sequence[gen_pb.Message]) -> list[dict[str, str]]:
    return [{"role": _ROLES.get(m.role, "user"), "content": m.content} for m in sent]


def usage(used: gen_pb.Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": used.prompt_tokens,
        "completion_tokens": used.completion_tokens,
        "total_tokens": used.total_tokens,
        "estimated": used.estimated,
    }


def hits(found: Sequence[ret_pb.Hit]) -> list[dict[str, Any]]:
    return [{"id": hit.id, "score": hit.score} for hit in found]
