"""Small helpers shared by the memory tests."""

from __future__ import annotations

import os
from collections.abc import Awaitable
from pathlib import Path

import grpc
import pytest

from tests.support.processes import descendants
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


def redis_pid(data_dir: Path) -> int:
    """The pid of the server this test process started for ``data_dir``: among our own
    descendants (by pid, never by name: the binary may be redis-server or valkey-server),
    the one whose working directory is the data directory (Redis changes into --dir)."""
    wanted = str(data_dir.resolve())
    for pid in descendants(os.getpid()):
        try:
            if os.readlink(f"/proc/{pid}/cwd") == wanted:
                return pid
        except OSError:
            continue
    raise AssertionError(f"no redis process serving {wanted}")
