"""A client stream the gateway relays ends with an answer whatever fails in the gateway
while it reads it. grpc-python swallows an exception raised inside the request iterator
it reads for the downstream call and cancels that call; the caller of an ImportObjects
without a deadline then waited for ever (as a bug in the write quota's admission did)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.common.errors import Internal, ResourceExhausted
from services.gateway.forward import _Relay


async def _messages(count: int) -> AsyncIterator[int]:
    for n in range(count):
        yield n


async def _relay_all(relay: _Relay) -> list[Any]:
    return [message async for message in relay]


async def test_a_bug_while_admitting_a_message_ends_the_stream_with_internal() -> None:
    async def admit(message: Any) -> None:
        if message == 2:
            raise AttributeError("'Quotas' object has no attribute '_window_ms'")

    relay = _Relay(_messages(5), None, admit)
    assert await _relay_all(relay) == [0, 1]  # ended there, not raised into gRPC's reader
    with pytest.raises(Internal) as caught:
        relay.raise_failure(None)
    assert "_window_ms" not in caught.value.message  # no internals to the caller


async def test_a_refusal_stays_the_callers_error() -> None:
    async def admit(message: Any) -> None:
        if message == 1:
            raise ResourceExhausted("over quota", reason="QUOTA_EXCEEDED")

    relay = _Relay(_messages(3), None, admit)
    assert await _relay_all(relay) == [0]
    with pytest.raises(ResourceExhausted):
        relay.raise_failure(None)
