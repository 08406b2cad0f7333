"""Small helpers shared by the memory tests."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status


async def rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, f"no rich status in {err!r}"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError(f"no ErrorInfo in {err!r}")


async def expect_error(
    call: Awaitable[object], code: grpc.StatusCode, field: str | None = None
) -> grpc.aio.AioRpcError:
    err = await rpc_error(call)
    assert err.code() == code, (err.code(), err.details())
    info = error_info(err)
    assert info.domain == "gensearch"
    if field is not None:
        assert info.metadata.get("field") == field, (info, err.details())
    return err
