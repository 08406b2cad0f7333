"""Domain errors and their mapping to rich gRPC statuses.

Servicers and domain code raise these; the chassis (``chassis.py``) turns them into a status
code, a message and ``google.rpc.ErrorInfo`` (domain ``gensearch``) plus ``BadRequest``
details for field violations. Nothing else builds a status by hand.

Client values in messages are quoted with ``quote`` (a short prefix, never the whole
value: an 8 KB provider name once came back whole), and ``to_proto`` caps the message and
every metadata value, so no status can grow past gRPC's header limits whatever a caller
sends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as retrieval_pb
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common.text import clean_text

DOMAIN = "gensearch"
# Longest message, field name and metadata value a status carries (characters); the
# whole status travels in one trailing header, which gRPC caps at 16 KiB.
MAX_MESSAGE_CHARS = 1024
MAX_METADATA_CHARS = 256
QUOTE_CHARS = 64
# Serialized size of the ImportObjectsResponse detail a failed import stream carries (its
# rejected objects with their reasons): base64 in the same trailer as the message and the
# ErrorInfo, it must leave them room under the 8 KiB above which gRPC may refuse headers.
MAX_IMPORT_DETAIL_BYTES = 2048

# ErrorInfo metadata of a failed generation call, counts written as decimal strings: every
# request it sent upstream (the generation service sets it, ``generation.fallback.Calls``;
# the gateway reads it to charge the LLM-calls quota and to report the count on a failed
# hit), and the failed pair's attempts and milliseconds spent waiting for the provider's
# limits (``generation.upstream.to_service_error``; fallback adds up the attempts, the
# gateway reports both on a failed hit). Read with ``metadata_count``.
UPSTREAM_CALLS = "upstream_calls"
ATTEMPTS = "attempts"
WAIT_MS = "wait_ms"


def quote(value: str, limit: int = QUOTE_CHARS) -> str:
    """``value`` as an error message quotes a client's input: ``repr`` of at most
    ``limit`` characters, saying how long the whole was when cut."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} characters)"


def _cut(text: str, limit: int) -> str:
    return clean_text(text if len(text) <= limit else text[: limit - 1] + "…")


def _with_field(message: str, field: str) -> str:
    """``message`` naming ``field`` in full: a message that begins with the field's last
    segment has it replaced by the whole path ("single_prompt has no …" for
    ``generate.single_prompt``: "generate.single_prompt has no …"); any other is prefixed
    with it. Prefixing both said the field twice ("generate.single_prompt: single_prompt
    has no …")."""
    last = field.rsplit(".", 1)[-1]
    # The field as the subject of its sentence ("top_p must …", "single_prompt has …"),
    # not a word that happens to open it: a segment may be a client's own name (a property
    # "no" and "no property 'no' in …"; found by review), which a plain prefix keeps clear.
    words = message.split(" ", 2)
    subject = words[0] == last or words[0].startswith(last + "[")  # "objects[2] is …"
    if last != field and len(words) > 1 and subject and words[1] in _FIELD_VERBS:
        return field + message[len(last) :]
    return f"{field}: {message}"


# The verbs a message saying what is wrong with its field opens with, after the field.
_FIELD_VERBS = frozenset(
    ("must", "is", "are", "has", "have", "holds", "names", "needs", "exceeds", "was", "cannot")
)


class ServiceError(Exception):
    """An error with a canonical status code, a reason and optionally the field at fault.

    With ``retry_after`` (seconds), also a ``google.rpc.RetryInfo`` detail: when trying
    again may help (any code may say so: RESOURCE_EXHAUSTED, the Ask's ABORTED)."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        if field and field not in message:
            # A client reading only the message should still learn which field is at fault.
            message = _with_field(message, field)
        super().__init__(message)
        self.message = _cut(message, MAX_MESSAGE_CHARS)
        self.field = field
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})
        if field:
            self.metadata.setdefault("field", field)
        self.retry_after = retry_after
        # Further details after ErrorInfo (and BadRequest): an import's partial answer.
        self.details: list[Message] = []

    def to_status(self) -> grpc.Status:
        return rpc_status.to_status(self.to_proto())

    def to_proto(self) -> status_pb2.Status:
        # The last line of defence against echoed input: every text is capped here.
        message = _cut(self.message, MAX_MESSAGE_CHARS)
        metadata = capped_metadata(self.metadata)
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=metadata)
        details = [_pack(info)]
        if self.field:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=_cut(self.field, MAX_METADATA_CHARS), description=message
                    )
                ]
            )
            details.append(_pack(bad))
        details.extend(_pack(detail) for detail in self.details)
        status = status_pb2.Status(code=self.code.value[0], message=message, details=details)
        if self.retry_after is not None:
            add_retry_info(status, self.retry_after)
        return status


def add_retry_info(status: status_pb2.Status, seconds: float) -> None:
    """A ``google.rpc.RetryInfo`` detail on ``status``: try again in ``seconds``."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(seconds * 1e9))
    status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))


def capped_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """ErrorInfo metadata as a status carries it: every value capped (and cleaned) to
    ``MAX_METADATA_CHARS``. The gateway's per-hit ``GenerationError`` carries the same."""
    return {k: _cut(v, MAX_METADATA_CHARS) for k, v in metadata.items()}


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


MISSING_FIELD = "MISSING_FIELD"
# A downstream service unreachable (its channel's own UNAVAILABLE or UNKNOWN, with no
# ErrorInfo of ours) or refusing the call at its HTTP/2 layer: ``from_rpc_error`` and the
# gateway's clients raise it, and the gateway tells an outage by it.
DOWNSTREAM_UNAVAILABLE = "DOWNSTREAM_UNAVAILABLE"


class MissingField(InvalidArgument):
    """A field the client must set and did not (empty, unset, a list with no entries, an
    enum left at UNSPECIFIED): INVALID_ARGUMENT with reason MISSING_FIELD in every service,
    so a client tells "you forgot X" from "X is wrong" by reason alone."""

    default_reason = MISSING_FIELD


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Aborted(ServiceError):
    """A concurrency conflict (a compare-and-set lost to another writer): read again and
    retry (AIP-154's answer to a stale etag)."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class ResourceExhausted(ServiceError):
    """Without ``retry_after``, trying again cannot help (a request larger than the whole
    limit)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class Cancelled(ServiceError):
    """A downstream CANCELLED that carries our ErrorInfo (the service said so itself): the
    gateway's caller hears CANCELLED too, not INTERNAL. A bare one (the connection closed
    under the call) is ``Unavailable`` / ``DOWNSTREAM_CANCELLED`` (``_BARE_STATUS``)."""

    code = grpc.StatusCode.CANCELLED
    default_reason = "CANCELLED"


class Internal(ServiceError):
    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


def over_limit(
    error: type[ServiceError],
    message: str,
    *,
    field: str,
    size: int,
    limit: int,
    setting: str,
    reason: str | None = None,
) -> ServiceError:
    """A refusal of ``field`` at ``size`` bytes, past ``limit`` (the variable ``setting``):
    ErrorInfo metadata ``limit_bytes``, ``size_bytes`` and ``setting``, one shape for every
    such refusal, so a client reads the numbers without parsing ``message``."""
    return error(
        message,
        field=field,
        reason=reason,
        metadata={"limit_bytes": str(limit), "size_bytes": str(size), "setting": setting},
    )


def seconds_text(seconds: float) -> str:
    """``seconds`` as a bound's message and ErrorInfo metadata give it: every digit a
    setting may hold (2592000, 0.25), never ``:g``'s six (30 days was "2.592e+06", a
    bound a client cannot read back)."""
    return f"{seconds:.15g}"


def out_of_range(
    message: str,
    *,
    field: str,
    bound: float,
    setting: str,
    seconds: bool = False,
    error: type[ServiceError] = InvalidArgument,
) -> ServiceError:
    """A refusal of ``field`` past its ``bound`` (set by the variable ``setting``), one
    shape for every such refusal: reason OUT_OF_RANGE, ErrorInfo metadata ``max`` (with
    ``seconds``, ``max_seconds``, written with ``seconds_text``) and ``setting``, so a
    client trims by them without parsing ``message``; the message names the setting too,
    appended here as `` (SETTING)``: a caller's ``message`` says only what the bound is
    (tests/common/test_error_messages.py keeps every caller's message free of it)."""
    message = f"{message} ({setting})"
    key, text = ("max_seconds", seconds_text(bound)) if seconds else ("max", str(bound))
    return error(
        message, field=field, reason="OUT_OF_RANGE", metadata={key: text, "setting": setting}
    )


_BY_CODE: dict[grpc.StatusCode, type[ServiceError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Aborted,
        Unauthenticated,
        PermissionDenied,
        ResourceExhausted,
        DeadlineExceeded,
        Unavailable,
        Internal,
    )
}


def from_rpc_error(error: grpc.aio.AioRpcError, service: str = "") -> ServiceError:
    """Rebuild a domain error from a downstream call's status, keeping reason and field,
    so the gateway passes a dependency's answer through unchanged.

    Our services always attach an ErrorInfo of our domain. A status without one was made
    by the channel itself (nothing listening, a reset, a deadline, a message over a size
    limit) or by something that is not one of our services (a proxy, another server at
    that address). Its text is transport detail ("failed to connect to all addresses;
    last error: ... 10.0.0.7:50051 ...") that means nothing to a client and may name
    internal addresses: whatever the code, it is replaced by a plain sentence naming
    ``service``, a ``DOWNSTREAM_*`` reason and the metadata ``service``.
    """
    code = error.code()
    cls = _BY_CODE.get(code)
    if cls is None:
        cls = Unavailable if code == grpc.StatusCode.UNKNOWN else Internal
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except (ValueError, DecodeError):
        # A details trailer that does not parse, or names another code or message than
        # the status it came with (a proxy rewriting one and not the other): not ours.
        # grpc_status raises on it, which failed the gateway's call as a bare INTERNAL.
        status = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                if info.domain != DOMAIN:
                    break  # not one of ours: its text is no more ours to relay
                metadata = dict(info.metadata)
                rebuilt = cls(
                    error.details() or code.name,
                    field=metadata.get("field"),
                    reason=info.reason,
                    metadata=metadata,
                    retry_after=_retry_after(status.details),  # when to retry, passed on too
                )
                rebuilt.details = _import_details(status)
                return rebuilt
    what = f"the {service} service" if service else "a downstream service"
    named = {"service": service} if service else {}
    bare = _BARE_STATUS.get(code)
    if bare is not None:
        bare_cls, sentence, reason = bare
        return bare_cls(f"{what} {sentence}", reason=reason, metadata=named)
    # UNIMPLEMENTED (another server, or an older service, at that address), INTERNAL from
    # a protocol error, a proxy's PERMISSION_DENIED ...: the deployment's fault, not the
    # caller's, whatever code it came with.
    return Internal(
        f"{what} failed the call ({code.name})",
        reason="DOWNSTREAM_ERROR",
        metadata={**named, "downstream_code": code.name},
    )


def _retry_after(details: Sequence[any_pb2.Any]) -> float | None:
    """Seconds of the RetryInfo among ``details``, if there is one."""
    for detail in details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToNanoseconds() / 1e9
    return None


# A downstream status with no ErrorInfo of ours: the class, sentence and reason it becomes.
_BARE_STATUS: dict[grpc.StatusCode, tuple[type[ServiceError], str, str]] = {
    grpc.StatusCode.UNAVAILABLE: (
        Unavailable,
        "is unavailable; try again shortly",
        DOWNSTREAM_UNAVAILABLE,
    ),
    grpc.StatusCode.UNKNOWN: (
        Unavailable,
        "is unavailable; try again shortly",
        DOWNSTREAM_UNAVAILABLE,
    ),
    grpc.StatusCode.DEADLINE_EXCEEDED: (
        DeadlineExceeded,
        "did not answer in time",
        "DOWNSTREAM_TIMEOUT",
    ),
    # The service's connection closed under the call (its replica stopping in a rolling
    # restart): a transient failure the caller did not ask for, so UNAVAILABLE, the code
    # clients' retry policies retry (ours retries no other); CANCELLED means the caller
    # cancelled.
    grpc.StatusCode.CANCELLED: (
        Unavailable,
        "cancelled the call; try again",
        "DOWNSTREAM_CANCELLED",
    ),
    # In practice a message over a size limit, the gateway's or the service's.
    grpc.StatusCode.RESOURCE_EXHAUSTED: (
        ResourceExhausted,
        "refused the call: a message over a size limit, or no resources left",
        "DOWNSTREAM_RESOURCE_EXHAUSTED",
    ),
}


def code_name(code: int) -> str:
    return code_pb2.Code.Name(code)


def metadata_count(metadata: Mapping[str, str], key: str) -> int | None:
    """The count under ``key`` in an error's ErrorInfo metadata (``UPSTREAM_CALLS``,
    ``ATTEMPTS``, ``WAIT_MS``); None when it is not there, or is not a count."""
    value = metadata.get(key, "")
    return int(value) if value.isdecimal() else None


def upstream_calls(metadata: Mapping[str, str]) -> int:
    """The upstream calls a failed generation call made, as its ErrorInfo metadata says;
    0 when it does not say (it failed before the generation service answered)."""
    return metadata_count(metadata, UPSTREAM_CALLS) or 0


def note_imported(
    err: ServiceError,
    message_no: int,
    received: int,
    imported: int,
    rejected: Sequence[retrieval_pb.ObjectError] = (),
) -> None:
    """An import stream's failure says what earlier messages stored (ErrorInfo metadata
    ``received_count`` and ``imported_count``, and the message), so a client knows where to
    resume: retrieval for a failure of its own, the gateway for one of the stream it relays.
    ``rejected``: the ObjectErrors of the objects earlier messages did not store (retrieval
    lists at most max_import_errors), which would die with the answer: their stream
    positions as ``rejected_indexes`` (ending ``",…"`` when not all are listed), and
    the errors themselves, reasons and all, as an ``ImportObjectsResponse`` detail, as
    many as fit MAX_IMPORT_DETAIL_BYTES (``errors_truncated`` when not all). Before, a
    client knew which objects were lost, not why."""
    err.metadata.update({"received_count": str(received), "imported_count": str(imported)})
    if rejected:
        err.metadata["rejected_indexes"] = _index_list(
            [e.index for e in rejected], more=len(rejected) < received - imported
        )
        err.details.append(_import_detail(received, imported, rejected))
    err.message += f" (message {message_no}; {imported} objects imported before it)"


def object_error(index: int, id: str, field: str, message: str) -> retrieval_pb.ObjectError:
    """Why one object of a batch was not written: ``id`` and ``field`` capped to
    MAX_METADATA_CHARS, ``message`` to MAX_MESSAGE_CHARS, as a status's texts are (the
    status detail of a failed import caps them further). ``id`` and ``field`` may be the
    client's own text (an id that is no UUID, an unknown
    property's key): echoed whole, an import of messages each holding one object with a
    1 MB id kept 1 MB per rejection (up to max_import_errors of them, across a stream no
    length bounds) and answered more than the send limit, so the client lost the counts
    of what its stream imported."""
    return retrieval_pb.ObjectError(
        index=index,
        id=_cut(id, MAX_METADATA_CHARS),
        field=_cut(field, MAX_METADATA_CHARS),
        message=_cut(message, MAX_MESSAGE_CHARS),
    )


def _import_detail(
    received: int, imported: int, rejected: Sequence[retrieval_pb.ObjectError]
) -> retrieval_pb.ImportObjectsResponse:
    detail = retrieval_pb.ImportObjectsResponse(received_count=received, imported_count=imported)
    size = detail.ByteSize()
    for error in rejected:
        capped = retrieval_pb.ObjectError(
            index=error.index,
            id=_cut(error.id, MAX_METADATA_CHARS),
            field=_cut(error.field, MAX_METADATA_CHARS),
            message=_cut(error.message, MAX_METADATA_CHARS),
        )
        size += capped.ByteSize() + 3  # the field's tag and length
        if size > MAX_IMPORT_DETAIL_BYTES:
            break
        detail.errors.append(capped)
    detail.errors_truncated = len(detail.errors) < received - imported
    return detail


def _import_details(status: status_pb2.Status) -> list[Message]:
    """A downstream status's ImportObjectsResponse detail (retrieval's failed import
    stream), kept when the gateway passes the failure on."""
    found: list[Message] = []
    for detail in status.details:
        if detail.Is(retrieval_pb.ImportObjectsResponse.DESCRIPTOR):
            answer = retrieval_pb.ImportObjectsResponse()
            detail.Unpack(answer)
            found.append(answer)
    return found


def _index_list(indexes: Sequence[int], more: bool) -> str:
    """``"3,17,42"``; cut to fit a metadata value, and when cut or ``more`` are not listed,
    ending ``",…"`` (the count of them is ``received_count - imported_count``)."""
    text = ""
    for index in indexes:
        part = f"{',' if text else ''}{index}"
        if len(text) + len(part) > MAX_METADATA_CHARS - 2:
            return text + ",…"
        text += part
    return text + ",…" if more else text
