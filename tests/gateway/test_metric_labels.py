"""The gateway's series stay bounded whatever its callers name: methods it does not serve
(on its own service, on the ones it forwards, on services it has never heard of) are
UNIMPLEMENTED before the chassis and make no series (docs/operations.md)."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import REGISTRY

from tests.gateway.conftest import ALICE, Stack

MARK = "cardinality-probe"
SERVICES = [
    "gensearch.gateway.v1.GatewayService",
    "gensearch.memory.v1.MemoryService",
    "gensearch.retrieval.v1.RetrievalService",
    "gensearch.generation.v1.GenerationService",
    MARK,
]


def _marked_series() -> list[tuple[str, dict[str, str]]]:
    return [
        (sample.name, sample.labels)
        for family in REGISTRY.collect()
        for sample in family.samples
        if any(MARK in value for value in sample.labels.values())
    ]


async def test_methods_the_gateway_does_not_serve_make_no_series(stack: Stack) -> None:
    for service in SERVICES:
        for i in range(10):
            call = stack.channel.unary_unary(f"/{service}/{MARK}{i}")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(b"", metadata=ALICE, timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert _marked_series() == []
