"""How a stored conversation turn is measured and bounded: pure rules shared by memory,
which enforces them on what it stores, and the gateway, which fits an Ask's turn to them
before writing (``services/gateway/memory_limits.py``), so a rule changes in one place.

- text is measured in UTF-8 bytes, and cut on a character boundary;
- an interaction's size is its ``Interaction`` message serialized (what a page holds);
- a trace larger than its bound is shortened, never refused: every string in its input and
  output is cut to the longest length that fits (ending with "…"), and as a last resort
  input and output are dropped; either way ``truncated`` says so.
"""

from __future__ import annotations

from collections.abc import Iterator

from gensearch.memory.v1 import memory_service_pb2 as pb
from google.protobuf import struct_pb2

ELLIPSIS = "…"


def utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def over_utf8(text: str, limit: int) -> bool:
    """Whether ``text`` takes more than ``limit`` UTF-8 bytes."""
    # len() counts code points; UTF-8 needs 1-4 bytes each, so encode only when unsure.
    return len(text) * 4 > limit and utf8_size(text) > limit


def fit_utf8(text: str, limit: int) -> tuple[str, bool]:
    """``text`` cut to at most ``limit`` UTF-8 bytes on a character boundary, and whether
    it was cut."""
    if len(text) * 4 <= limit:  # no character takes more than 4 bytes
        return text, False
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text, False
    # "ignore" drops only the character the cut went through (its first bytes).
    return data[:limit].decode("utf-8", "ignore"), True


def stored_interaction(turn: pb.CreateInteractionRequest) -> pb.Interaction:
    """The interaction as memory stores it from ``turn``, before the store adds its ids
    and create_time: its ``ByteSize()`` is what memory measures against a page."""
    interaction = pb.Interaction(
        input=turn.input,
        prompt_template=turn.prompt_template,
        response=turn.response,
        origin=turn.origin,
        trace_count=len(turn.traces),
    )
    if turn.HasField("additional_info"):
        interaction.additional_info.CopyFrom(turn.additional_info)
    return interaction


def bound_trace(trace: pb.Trace, max_bytes: int) -> None:
    """Shortens ``trace`` in place to at most ``max_bytes`` serialized."""
    if trace.ByteSize() <= max_bytes:
        return
    trace.truncated = True
    longest = max((len(v.string_value) for v in _strings(trace)), default=0)
    # The longest cap on string lengths that fits (binary search: sizes grow with the cap).
    low, high, best = 0, longest, -1
    while low <= high:
        cap = (low + high) // 2
        trial = pb.Trace()
        trial.CopyFrom(trace)
        _cap_strings(trial, cap)
        if trial.ByteSize() <= max_bytes:
            best, low = cap, cap + 1
        else:
            high = cap - 1
    if best >= 0:
        _cap_strings(trace, best)
    if trace.ByteSize() > max_bytes:
        trace.ClearField("input")
        trace.ClearField("output")


def _cap_strings(trace: pb.Trace, cap: int) -> None:
    for value in _strings(trace):
        if len(value.string_value) > cap:
            value.string_value = value.string_value[: max(cap - 1, 0)] + ELLIPSIS


def _strings(trace: pb.Trace) -> Iterator[struct_pb2.Value]:
    stack: list[struct_pb2.Value] = []
    for part in (trace.input, trace.output):
        stack.extend(part.fields.values())
    while stack:
        value = stack.pop()
        kind = value.WhichOneof("kind")
        if kind == "string_value":
            yield value
        elif kind == "struct_value":
            stack.extend(value.struct_value.fields.values())
        elif kind == "list_value":
            stack.extend(value.list_value.values)
