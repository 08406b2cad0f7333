"""The process's Prometheus series as a test sees them: a gauge's value, whether anything
a caller chose (a name carrying a test's mark) became a label value, and calls of methods
nobody serves, which must make no series."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import REGISTRY


def gauge(name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        for sample in metric.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def marked_series(mark: str) -> list[tuple[str, dict[str, str]]]:
    """Every sample (its name and labels) with ``mark`` in one of its label values."""
    return [
        (sample.name, sample.labels)
        for family in REGISTRY.collect()
        for sample in family.samples
        if any(mark in value for value in sample.labels.values())
    ]


async def call_unserved_methods(
    channel: grpc.aio.Channel,
    service: str,
    mark: str,
    count: int,
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> None:
    """Calls ``count`` methods of ``service`` named after ``mark`` (``<mark>0``, ...):
    none is served, each answers UNIMPLEMENTED."""
    for i in range(count):
        call = channel.unary_unary(f"/{service}/{mark}{i}")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"", metadata=metadata, timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
