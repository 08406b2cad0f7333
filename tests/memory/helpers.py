"""Small helpers shared by the memory tests."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
import pytest

from tests.support.rpc import error_info


async def rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


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
