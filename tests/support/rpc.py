"""Reading the rich error details (google.rpc.ErrorInfo, BadRequest, RetryInfo) of a failed
call, and how a server stream ended."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status


async def stream_end(call: Any) -> str | grpc.aio.AioRpcError:
    """Reads the server stream ``call`` to its end: ``"ended"`` (its status OK),
    ``"cancelled"`` (the test cancelled it: grpc-aio reports that as CancelledError or as
    a CANCELLED status, depending on when), else the error it ended with."""
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as err:
        return "cancelled" if err.code() == grpc.StatusCode.CANCELLED else err
    except asyncio.CancelledError:
        return "cancelled"
    return "ended"


def _detail(err: grpc.aio.AioRpcError, kind: type) -> object:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, f"no rich status details in {err!r}"
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):  # type: ignore[attr-defined]
            message = kind()
            detail.Unpack(message)
            return message
    raise AssertionError(f"no {kind.__name__} detail in {err!r}")


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    info = _detail(err, error_details_pb2.ErrorInfo)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    return info


def whole_answer(err: grpc.aio.AioRpcError, *sent: str) -> tuple[object, ...]:
    """All a caller learns from a failed call: its code, message and every rich detail,
    field by field, with the names and ids in ``sent`` made equal (to compare a refusal of
    one thing with that of another)."""

    def same(text: str) -> str:
        for value in sent:
            text = text.replace(value, "<sent>")
        return text

    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    details = json_format.MessageToDict(status) if status is not None else None
    return err.code(), same(err.details() or ""), same(json.dumps(details, sort_keys=True))


def bad_request_field(err: grpc.aio.AioRpcError) -> str:
    bad = _detail(err, error_details_pb2.BadRequest)
    assert isinstance(bad, error_details_pb2.BadRequest)
    return bad.field_violations[0].field


def retry_delay(err: grpc.aio.AioRpcError) -> float:
    """Seconds the google.rpc.RetryInfo detail asks the caller to wait."""
    info = _detail(err, error_details_pb2.RetryInfo)
    assert isinstance(info, error_details_pb2.RetryInfo)
    return info.retry_delay.ToNanoseconds() / 1e9


def import_answer(err: grpc.aio.AioRpcError) -> Any:
    """The ImportObjectsResponse detail of a failed ImportObjects stream: what its earlier
    messages did, rejected objects with their reasons."""
    return _detail(err, ret_pb.ImportObjectsResponse)


async def failure_of(call: Any) -> grpc.aio.AioRpcError:
    """The error a unary call, or a server stream read to its end, fails with (an
    AssertionError when it succeeds)."""
    try:
        if isinstance(call, grpc.aio.UnaryStreamCall):
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError(f"{call!r} succeeded")


async def stopped_mid_stream(
    call: Any, stop: Callable[[], Awaitable[None]], at: Callable[[Any], bool] = lambda _: True
) -> tuple[list[Any], grpc.aio.AioRpcError]:
    """Reads a server stream, ``stop`` (a server's stop) started at the first message
    ``at`` accepts and awaited once the stream failed: the messages read, and the error
    (an AssertionError when the stream ends without one, or ``at`` never held)."""
    messages: list[Any] = []
    stopping = None
    try:
        async for message in call:
            messages.append(message)
            if stopping is None and at(message):
                stopping = asyncio.create_task(stop())
    except grpc.aio.AioRpcError as err:
        assert stopping is not None, "the stream failed before the stop"
        await stopping
        return messages, err
    raise AssertionError("the stream ended without an error")
