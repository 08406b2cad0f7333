"""Traces of an interaction: checked and bounded before they are stored, paged when read.

An interaction's traces are stored as one serialized ``ListInteractionTracesResponse``
holding only its ``traces`` (the message a page of them is anyway), in a field of the
interaction's hash (``store.py``). They are bounded when written — at most ``max_traces``,
each at most ``max_trace_bytes`` — so reading them back is bounded too, and a page is a
slice of one parsed message.

A trace larger than its bound is shortened, never refused: a turn must not be lost to the
bookkeeping about it (the rule, ``bound_trace``, is in ``services/common/turn_size.py``:
the gateway bounds the traces it attaches the same way).
"""

from __future__ import annotations

from collections.abc import Sequence

from gensearch.memory.v1 import memory_service_pb2 as pb

from services.common.errors import InvalidArgument
from services.common.turn_size import bound_trace
from services.common.values import check_value
from services.common.well_known import check_timestamp, duration_seconds


def prepare(traces: Sequence[pb.Trace], max_traces: int, max_bytes: int, max_depth: int) -> bytes:
    """The traces as stored: numbered in order, each bounded; b"" when there are none."""
    if not traces:
        return b""
    if len(traces) > max_traces:
        raise InvalidArgument(
            f"traces has {len(traces)} entries; the limit is {max_traces}",
            field="traces",
            reason="TOO_MANY_TRACES",
            metadata={"max": str(max_traces), "setting": "GENSEARCH_MEMORY_MAX_TRACES"},
        )
    stored = pb.ListInteractionTracesResponse()
    for number, trace in enumerate(traces):
        for part in ("input", "output"):
            if trace.HasField(part):
                check_value(
                    getattr(trace, part),
                    f"traces[{number}].{part}",
                    max_depth,
                    kind_required=True,
                )
        if trace.step not in pb.Step.values():
            raise InvalidArgument(
                f"traces[{number}].step is not a known step",
                field=f"traces[{number}].step",
                reason="INVALID_STEP",
            )
        _check_times(trace, f"traces[{number}]")
        kept = stored.traces.add()
        kept.CopyFrom(trace)
        kept.trace_number = number
        bound_trace(kept, max_bytes)
    return stored.SerializeToString()


def _check_times(trace: pb.Trace, where: str) -> None:
    """A stored trace is read back as JSON too (grpcurl): an invalid Timestamp or Duration
    would make every read of the interaction's traces fail, so none is kept."""
    if trace.HasField("start_time"):
        check_timestamp(trace.start_time, f"{where}.start_time")
    if trace.HasField("duration") and duration_seconds(trace.duration, f"{where}.duration") < 0:
        raise InvalidArgument(
            f"{where}.duration must not be negative: it is how long the step took",
            field=f"{where}.duration",
        )


def page(stored: bytes, after: int, size: int, max_bytes: int) -> tuple[list[pb.Trace], int | None]:
    """The traces numbered after ``after`` (-1: from the first): at most ``size``, and
    fewer when more would pass ``max_bytes`` serialized (at least one); and the number of
    the last one returned when more follow, else None."""
    traces = pb.ListInteractionTracesResponse.FromString(stored).traces if stored else []
    rest = [t for t in traces if t.trace_number > after]
    items: list[pb.Trace] = []
    used = 0
    for trace in rest[:size]:
        used += trace.ByteSize() + 8  # its framing in the reply, generously
        if items and used > max_bytes:
            break
        items.append(trace)
    more = len(rest) > len(items)
    return items, (items[-1].trace_number if more and items else None)
