"""An Ask's turn fitted to what memory accepts, before and after the LLM call.

Memory has limits of its own (``GENSEARCH_MEMORY_MAX_TEXT_BYTES``, ``_MAX_TRACES``, …)
that may be tighter than the gateway's. Its ``CheckStorage`` answer (made before any LLM
call, beside the history read) carries them as ``InteractionLimits``. With them:

- ``check_ask``, before any LLM call: what the caller sent that memory would refuse (the
  question, the request's own system prompt and instructions, its request_id) is
  INVALID_ARGUMENT naming the Ask's field (``llm_question``, ``system_prompt``,
  ``user_instructions``, ``request_id``) with the limit and the memory setting in its
  ErrorInfo; memory's refusal after the answer named ``input`` or ``prompt_template``,
  fields the caller never sent, and the answer was paid for;
- ``fit_turn``, when the turn is stored: what the gateway itself makes (the answer, the
  traces it attaches, ``additional_info``, the model name, a collection's template; values
  nested deeper than memory keeps) is cut to what memory accepts and the cut is recorded
  in ``additional_info`` (a trace's in its ``truncated``); it never fails the Ask. A new
  conversation's name and the request_id the gateway makes are cut too (``fit_name``,
  ``fit_request_id``, in ``turns.store_turn``).

A memory service older than ``InteractionLimits`` answers without them (or has no
``CheckStorage``): then nothing is checked or cut here, as before, and the write decides.
"""

from __future__ import annotations

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from google.protobuf import struct_pb2

from services.common.errors import InvalidArgument
from services.common.turn_size import bound_trace, fit_utf8, stored_interaction, utf8_size
from services.common.values import check_value

AskLike = gw_pb.AskRequest | gw_pb.StreamAskRequest

_MARKERS = (
    "response_truncated",
    "prompt_template_truncated",
    "origin_truncated",
    "traces_dropped",
    "additional_info_truncated",
)
# A request_id shorter than this many hex digits (64 bits) could repeat among an owner's
# turns: memory would take a retry of a new turn for an old one. None is sent then.
_MIN_REQUEST_ID_CHARS = 16


def _too_large(field: str, message: str, limit: int, setting: str, reason: str) -> InvalidArgument:
    return InvalidArgument(
        f"{message} ({setting}), and this Ask stores its turn (conversation_id or "
        "new_conversation)",
        field=field,
        reason=reason,
        metadata={"limit_bytes": str(max(0, limit)), "setting": setting, "service": "memory"},
    )


def check_ask(
    request: AskLike, question: str, template: str, limits: mem_pb.InteractionLimits | None
) -> None:
    """INVALID_ARGUMENT naming the Ask field when the turn's known part, which the caller
    sent, is more than memory stores: before any LLM call. ``template`` is the stored
    template made of the request's own system prompt and instructions."""
    if limits is None:
        return
    if request.request_id and utf8_size(request.request_id) > limits.max_request_id_bytes:
        # A memory service that checks request_id itself already said so (CheckStorage).
        raise InvalidArgument(
            f"request_id is {utf8_size(request.request_id)} bytes (UTF-8); memory keeps a "
            f"request_id of at most {limits.max_request_id_bytes} bytes "
            "(GENSEARCH_MEMORY_MAX_REQUEST_ID_BYTES)",
            field="request_id",
            reason="FIELD_TOO_LARGE",
            metadata={
                "limit_bytes": str(limits.max_request_id_bytes),
                "setting": "GENSEARCH_MEMORY_MAX_REQUEST_ID_BYTES",
                "service": "memory",
            },
        )
    size = utf8_size(question)
    if size > limits.max_text_bytes:
        raise _too_large(
            "llm_question",
            f"llm_question is {size} bytes (UTF-8); memory stores a question of at most "
            f"{limits.max_text_bytes} bytes",
            limits.max_text_bytes,
            "GENSEARCH_MEMORY_MAX_TEXT_BYTES",
            "FIELD_TOO_LARGE",
        )
    # The request's own parts of the stored template: a collection's defaults are not the
    # caller's, and are cut when stored (fit_turn).
    parts = {"llm_question": size}
    for field in ("system_prompt", "user_instructions"):
        if getattr(request, field):
            parts[field] = utf8_size(getattr(request, field))
    template_size = utf8_size(template)
    if template_size > limits.max_prompt_template_bytes and len(parts) > 1:
        field = max((f for f in parts if f != "llm_question"), key=parts.__getitem__)
        # The room left for that field beside the rest of the template.
        room = limits.max_prompt_template_bytes - (template_size - parts[field])
        raise _too_large(
            field,
            f"{field} is {parts[field]} bytes (UTF-8); memory stores a prompt template "
            f"(system prompt, instructions and fixed lines) of at most "
            f"{limits.max_prompt_template_bytes} bytes, which leaves {max(0, room)} for it",
            room,
            "GENSEARCH_MEMORY_MAX_PROMPT_TEMPLATE_BYTES",
            "FIELD_TOO_LARGE",
        )
    known = interaction_bytes(
        mem_pb.CreateInteractionRequest(input=question, prompt_template=template)
    )
    if known > limits.max_interaction_bytes:
        field = max(parts, key=parts.__getitem__)
        room = parts[field] - (known - limits.max_interaction_bytes)
        raise _too_large(
            field,
            f"{field} is {parts[field]} bytes (UTF-8); memory stores a turn of at most "
            f"{limits.max_interaction_bytes} bytes serialized, question and prompt "
            f"template together, which leaves {max(0, room)} for it",
            room,
            "GENSEARCH_MEMORY_MAX_PAGE_BYTES",
            "INTERACTION_TOO_LARGE",
        )


def interaction_bytes(turn: mem_pb.CreateInteractionRequest) -> int:
    """The interaction's size as memory measures it against ``max_interaction_bytes``."""
    return stored_interaction(turn).ByteSize()


def fit_turn(turn: mem_pb.CreateInteractionRequest, limits: mem_pb.InteractionLimits) -> None:
    """Cuts, in place, what the gateway made in ``turn`` to what memory accepts; each cut
    is recorded in ``additional_info``. ``input`` is the caller's and was checked before
    any LLM call (``check_ask``)."""
    info = turn.additional_info
    for field, limit in (
        ("origin", limits.max_origin_bytes),
        ("prompt_template", limits.max_prompt_template_bytes),
        ("response", limits.max_text_bytes),
    ):
        text, cut = fit_utf8(getattr(turn, field), limit)
        if cut:
            setattr(turn, field, text)
            info[f"{field}_truncated"] = True
    if len(turn.traces) > limits.max_traces:
        # The newest steps are kept: the answer's generation last of all.
        dropped = len(turn.traces) - max(0, limits.max_traces)
        kept = list(turn.traces)[dropped:]
        del turn.traces[:]
        turn.traces.extend(kept)
        info["traces_dropped"] = dropped
    depth = limits.max_value_depth  # 0: a memory that does not say
    if depth and drop_unstorable(info, depth):
        info["additional_info_truncated"] = True
    for number, trace in enumerate(turn.traces):
        trace.trace_number = number  # as memory numbers them
        for part in ("input", "output"):
            if depth and trace.HasField(part) and drop_unstorable(getattr(trace, part), depth):
                trace.truncated = True
        bound_trace(trace, limits.max_trace_bytes)  # memory would; a smaller write
    fit_struct(info, limits.max_additional_info_bytes)
    _fit_page(turn, limits)


def _storable(value: struct_pb2.Struct | struct_pb2.Value, depth: int) -> bool:
    try:
        check_value(value, "value", depth, kind_required=True)  # as memory checks it
    except InvalidArgument:
        return False
    return True


def drop_unstorable(value: struct_pb2.Struct, depth: int) -> bool:
    """Drops the entries of ``value`` memory would refuse (nested more than ``depth`` deep
    with ``value`` itself counting as 1, holding a number that is NaN or infinite, or a
    Value with no kind: ``services/common/values.py``); whether any went."""
    if _storable(value, depth):
        return False
    for key in [k for k, v in value.fields.items() if not _storable(v, depth - 1)]:
        del value.fields[key]
    return True


def fit_struct(info: struct_pb2.Struct, limit: int) -> None:
    """Drops ``info``'s largest entries (the cut markers last) until it fits ``limit``
    serialized, then says so with ``additional_info_truncated``; empties it when not even
    that fits."""
    if info.ByteSize() <= limit:
        return
    info["additional_info_truncated"] = True
    entries = sorted(
        (key for key in info.fields if key not in _MARKERS),
        key=lambda key: info.fields[key].ByteSize(),
        reverse=True,
    )
    for key in [*entries, *(m for m in _MARKERS if m != "additional_info_truncated")]:
        if info.ByteSize() <= limit:
            return
        if key in info.fields:
            del info.fields[key]
    if info.ByteSize() > limit:
        info.Clear()


def _fit_page(turn: mem_pb.CreateInteractionRequest, limits: mem_pb.InteractionLimits) -> None:
    """The whole interaction within ``max_interaction_bytes``: the answer is cut first,
    then additional_info goes, then the template is cut."""
    limit = limits.max_interaction_bytes
    if interaction_bytes(turn) <= limit:
        return
    info = turn.additional_info
    info["response_truncated"] = True  # before measuring: the marker takes room too
    fit_struct(info, limits.max_additional_info_bytes)
    over = interaction_bytes(turn) - limit
    turn.response = fit_utf8(turn.response, max(0, utf8_size(turn.response) - over))[0]
    if interaction_bytes(turn) > limit:
        turn.ClearField("additional_info")
    over = interaction_bytes(turn) - limit
    if over > 0:
        turn.prompt_template = fit_utf8(
            turn.prompt_template, max(0, utf8_size(turn.prompt_template) - over)
        )[0]


def fit_name(name: str, limits: mem_pb.InteractionLimits | None) -> str:
    """A new conversation's name (made from the question) within memory's limit."""
    return name if limits is None else fit_utf8(name, limits.max_name_bytes)[0]


def fit_request_id(made: str, limits: mem_pb.InteractionLimits | None) -> str:
    """The turn's request_id within memory's limit; "" (none sent) when the limit is too
    short for one that cannot repeat."""
    if limits is None or len(made) <= limits.max_request_id_bytes:
        return made
    if limits.max_request_id_bytes < _MIN_REQUEST_ID_CHARS:
        return ""
    return made[: limits.max_request_id_bytes]
