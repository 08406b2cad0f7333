"""Every numeric setting has an upper bound (docs/operations.md#upper-bounds): an absurd
value stops the service at start with one line, and the largest value each bound allows
still starts a real service that works (gRPC's C int options, int32 fields, deadlines)."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from services.common.auth import Identity, Role, set_current_identity
from services.common.quotas import QuotaExceeded, Quotas
from services.common.redis_client import connect
from services.common.settings import (
    MAX_CONCURRENCY,
    MAX_CONNECTION_SECONDS,
    MAX_METADATA_BYTES,
    MAX_PER_MINUTE,
    MAX_SIZE_BYTES,
    MAX_TOKENS,
    MAX_WAIT_SECONDS,
    CommonSettings,
    load_settings,
)
from services.devlaunch.redis_server import RedisProcess
from services.gateway.settings import GatewaySettings
from services.generation.__main__ import build_server as build_generation
from services.generation.settings import GenerationSettings, ProviderConfig
from services.memory.settings import MemorySettings
from services.retrieval.__main__ import build_server as build_retrieval
from services.retrieval.settings import RetrievalSettings

INT32_MAX = 2**31 - 1
CLASSES: list[type[BaseModel]] = [
    CommonSettings,
    GatewaySettings,
    MemorySettings,
    RetrievalSettings,
    GenerationSettings,
    ProviderConfig,
]
# Seconds that go where only an integer fits: gRPC options in milliseconds (C ints), and
# lifetimes sent to Redis as whole seconds.
MS_FLOATS = {
    "max_connection_age",
    "max_connection_age_grace",
    "max_connection_idle",
    "handshake_timeout",
    "keepalive_time",
    "keepalive_timeout",
    "keepalive_min_ping_interval",
}


def _upper(metadata: list[Any]) -> float | None:
    for item in metadata:
        if isinstance(item, annotated_types.Le):
            return float(item.le)  # type: ignore[arg-type]
        if isinstance(item, annotated_types.Lt):
            return float(item.lt)  # type: ignore[arg-type]
    return None


def _numbers(cls: type[BaseModel]) -> list[tuple[str, str, float | None]]:
    """(field, kind, upper bound) of every int or float field, and of a dict's int values."""
    found = []
    for name, info in cls.model_fields.items():
        annotation = info.annotation
        args = set(typing.get_args(annotation)) - {type(None)}
        if annotation in (int, float) or (
            isinstance(annotation, types.UnionType) and args and args <= {int, float}
        ):
            kind = "int" if int in args or annotation is int else "float"
            found.append((name, kind, _upper(info.metadata)))
        elif typing.get_origin(annotation) is dict:
            value = typing.get_args(annotation)[1]
            if value is int or typing.get_origin(value) is typing.Annotated:
                inner = typing.get_args(value)
                metadata = [
                    m for arg in inner[1:] if isinstance(arg, FieldInfo) for m in arg.metadata
                ]
                found.append((f"{name}[*]", "int", _upper(metadata)))
    return found


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_numeric_setting_has_a_bound_that_fits_an_int32(cls: type[BaseModel]) -> None:
    # QA: MAX_TOKENS_LIMIT=10**23 was accepted and failed every ListModels with INTERNAL
    # (an int32 field); MAX_MESSAGE_BYTES=3e9 was an OverflowError traceback at start;
    # QUOTA_LEASE=1e308 (a float, seconds) an OverflowError on every gateway call.
    numbers = _numbers(cls)
    assert numbers
    unbounded = [name for name, _, upper in numbers if upper is None]
    assert unbounded == [], f"{cls.__name__}: settings without an upper bound"
    too_large = [
        name
        for name, _, upper in numbers
        if upper is not None and (upper * 1000 if name in MS_FLOATS else upper) > INT32_MAX
    ]
    assert too_large == [], f"{cls.__name__}: bounds past an int32"


def _exit_message(err: pytest.ExceptionInfo[SystemExit]) -> str:
    assert isinstance(err.value.code, str), err.value.code
    return err.value.code


@pytest.mark.parametrize(
    ("variable", "value", "settings", "line"),
    [
        (
            "GENSEARCH_GENERATION_MAX_TOKENS_LIMIT",
            "100000000000000000000000",
            GenerationSettings,
            f"GENSEARCH_GENERATION_MAX_TOKENS_LIMIT: Input should be less than or equal to "
            f"{MAX_TOKENS}",
        ),
        (
            "GENSEARCH_MEMORY_MAX_MESSAGE_BYTES",
            "3000000000",
            MemorySettings,
            "GENSEARCH_MEMORY_MAX_MESSAGE_BYTES: Input should be less than or equal to "
            f"{MAX_SIZE_BYTES}",
        ),
        (
            "GENSEARCH_GATEWAY_REQUEST_LIMITS",
            '{"ImportObjects": 3000000000}',
            GatewaySettings,
            "GENSEARCH_GATEWAY_REQUEST_LIMITS.ImportObjects: Input should be less than or "
            f"equal to {MAX_SIZE_BYTES}",
        ),
        (
            "GENSEARCH_GATEWAY_CONTEXT_WINDOWS",
            '{"big": 1e12}',
            GatewaySettings,
            "GENSEARCH_GATEWAY_CONTEXT_WINDOWS.big: Input should be less than or equal to "
            f"{MAX_TOKENS}",
        ),
        (
            "GENSEARCH_RETRIEVAL_MAX_CONNECTION_AGE",
            "3000000",
            RetrievalSettings,
            "GENSEARCH_RETRIEVAL_MAX_CONNECTION_AGE: Input should be less than or equal to "
            f"{MAX_CONNECTION_SECONDS}",
        ),
        (
            "GENSEARCH_GENERATION_OPENAI_CONTEXT_WINDOW",
            "3000000000",
            GenerationSettings,
            "GENSEARCH_GENERATION_OPENAI_CONTEXT_WINDOW (provider 'openai'): Input should be "
            f"less than or equal to {MAX_TOKENS}",
        ),
        # Seconds: 1e308 made every gateway call an OverflowError (the lease in Redis
        # milliseconds); as a gRPC timeout it was a deadline already past.
        (
            "GENSEARCH_GATEWAY_QUOTA_LEASE",
            "1e308",
            GatewaySettings,
            "GENSEARCH_GATEWAY_QUOTA_LEASE: Input should be less than or equal to "
            f"{MAX_WAIT_SECONDS}",
        ),
        (
            "GENSEARCH_GATEWAY_DEFAULT_GENERATION_TIMEOUT",
            "1e308",
            GatewaySettings,
            "GENSEARCH_GATEWAY_DEFAULT_GENERATION_TIMEOUT: Input should be less than or equal "
            f"to {MAX_WAIT_SECONDS}",
        ),
        (
            "GENSEARCH_MEMORY_GRACE_PERIOD",
            "1e308",
            MemorySettings,
            "GENSEARCH_MEMORY_GRACE_PERIOD: Input should be less than or equal to "
            f"{MAX_WAIT_SECONDS}",
        ),
        (
            "GENSEARCH_GENERATION_OPENAI_TOKENS_PER_MINUTE",
            "1e308",
            GenerationSettings,
            "GENSEARCH_GENERATION_OPENAI_TOKENS_PER_MINUTE (provider 'openai'): Input should "
            f"be less than or equal to {MAX_PER_MINUTE}",
        ),
    ],
)
def test_an_absurd_limit_stops_the_service_with_one_line(
    variable: str,
    value: str,
    settings: type[CommonSettings],
    line: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as err:
        load_settings(settings)
    assert _exit_message(err) == f"invalid setting {line}"


async def test_the_largest_values_still_serve(tmp_path: Path) -> None:
    """Each bound is a value a real service starts with and answers under."""
    largest: dict[str, Any] = {
        "max_message_bytes": MAX_SIZE_BYTES,
        "max_request_bytes": MAX_SIZE_BYTES,
        "max_metadata_bytes": MAX_METADATA_BYTES,
        "request_limits": {"ImportObjects": MAX_SIZE_BYTES},
        "max_concurrent_rpcs": MAX_CONCURRENCY,
        "max_concurrent_streams": MAX_CONCURRENCY,
        "max_connection_age": MAX_CONNECTION_SECONDS,
        "max_connection_age_grace": MAX_CONNECTION_SECONDS,
        "max_connection_idle": MAX_CONNECTION_SECONDS,
        "handshake_timeout": MAX_CONNECTION_SECONDS,
        "keepalive_time": MAX_CONNECTION_SECONDS,
        "keepalive_timeout": MAX_CONNECTION_SECONDS,
        "keepalive_min_ping_interval": MAX_CONNECTION_SECONDS,
    }
    retrieval = await build_retrieval(RetrievalSettings(data_dir=tmp_path, **largest), port=0)
    generation = await build_generation(
        GenerationSettings(
            providers=[
                {
                    "name": "fake",
                    "base_url": "http://127.0.0.1:1/v1",
                    "default_model": "m",
                    "context_window": MAX_TOKENS,
                }
            ],
            default_provider="fake",
            metrics_port=None,
            max_tokens_limit=MAX_TOKENS,
            **largest,
        ),
        port=0,
    )
    try:
        ret_port = await retrieval.start()
        gen_port = await generation.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ret_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            stub: Any = ret_grpc.RetrievalServiceStub(channel)
            await stub.ListCollections(ret_pb.ListCollectionsRequest(), timeout=10)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gen_port}") as channel:
            models = await gen_grpc.GenerationServiceStub(channel).ListModels(  # type: ignore[misc]
                gen_pb.ListModelsRequest(), timeout=10
            )
        assert models.max_tokens_limit == MAX_TOKENS
        fake = next(p for p in models.providers if p.name == "fake")
        assert fake.context_window == MAX_TOKENS
    finally:
        await retrieval.stop(0)
        await generation.stop(0)


def test_the_docs_list_every_bound() -> None:
    """docs/operations.md#upper-bounds: each row's variables and their bound, as the code
    has them."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    section = text.split("### Upper bounds", 1)[1].split("\n## ", 1)[0]
    documented: dict[str, float] = {}
    for row in re.findall(r"^\| (.+) \| ([0-9 ,.]+)(?: \(|\s*\|).*$", section, re.M):
        names, bound = row
        for name in re.findall(r"`([A-Z0-9_<>*.\[\]]+)`", names):
            documented[name] = float(bound.replace(" ", "").replace(",", ""))
    expected: dict[str, float] = {}
    for cls in CLASSES:
        for name, _, upper in _numbers(cls):
            inherited = (
                cls is not CommonSettings
                and name.removesuffix("[*]") in CommonSettings.model_fields
            )
            if upper is None or inherited or name in ("port", "metrics_port"):
                continue
            expected[_variable(cls, name)] = upper
    assert documented == expected


def _variable(cls: type[BaseModel], field: str) -> str:
    base = field.removesuffix("[*]").upper()
    if cls is CommonSettings:
        return f"GENSEARCH_<SERVICE>_{base}"
    if cls is ProviderConfig:
        return f"GENSEARCH_GENERATION_<PROVIDER>_{base}"
    assert issubclass(cls, CommonSettings)
    return f"{cls.namespace()}{base}"


async def test_the_longest_quota_lease_admits_calls(redis_server: RedisProcess) -> None:
    """The bound of the seconds settings is a lease Redis takes: a call without a deadline
    holds its slot for QUOTA_LEASE (plus slack), in milliseconds."""
    lease = GatewaySettings(quota_lease=MAX_WAIT_SECONDS).quota_lease
    redis = connect(redis_server.url, cluster=False, socket_timeout=1, connect_timeout=1)
    quotas = Quotas(
        redis, key_prefix="bounds", concurrent_calls=1, llm_calls_per_minute=0, lease=lease
    )
    set_current_identity(Identity("alice", "alice", Role.ADMIN))
    try:
        async with quotas.admit("/x/Y", _NoDeadline()):  # type: ignore[arg-type]
            with pytest.raises(QuotaExceeded):  # the slot is held
                async with quotas.admit("/x/Y", _NoDeadline()):  # type: ignore[arg-type]
                    pass
    finally:
        await redis.aclose()


class _NoDeadline:
    """A call's context as the quotas read it: no deadline."""

    def time_remaining(self) -> float | None:
        return None
