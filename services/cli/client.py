"""The CLI's one connection: a gRPC channel to the gateway, with the caller's credentials.

The gateway serves GatewayService, and forwards MemoryService and RetrievalService with the
caller's identity, so one address and one key reach everything. Credentials travel as
metadata on every call: ``authorization: Bearer <key>`` and, per provider,
``x-<provider>-api-key``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

import grpc
from gensearch.gateway.v1 import gateway_service_pb2_grpc
from gensearch.memory.v1 import memory_service_pb2_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

DEFAULT_ADDRESS = "127.0.0.1:50050"
_PROVIDER_KEY = "[a-z0-9][a-z0-9_-]*"


class CliError(Exception):
    """A failure worth one line on stderr (no traceback)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Connection:
    """Where the gateway is and who we are."""

    address: str = DEFAULT_ADDRESS
    api_key: str = ""
    # provider name -> API key, sent as x-<provider>-api-key.
    llm_keys: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None

    @classmethod
    def from_env(
        cls,
        address: str | None = None,
        api_key: str | None = None,
        llm_keys: Sequence[str] = (),
        timeout: float | None = None,
    ) -> Connection:
        return cls(
            address=address or os.environ.get("GENSEARCH_ADDRESS") or DEFAULT_ADDRESS,
            api_key=api_key if api_key is not None else os.environ.get("GENSEARCH_API_KEY", ""),
            llm_keys=parse_llm_keys(llm_keys),
            timeout=timeout,
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        pairs: list[tuple[str, str]] = []
        if self.api_key:
            pairs.append(("authorization", f"Bearer {self.api_key}"))
        for provider, key in sorted(self.llm_keys.items()):
            pairs.append((f"x-{provider}-api-key", key))
        return tuple(pairs)


def parse_llm_keys(values: Sequence[str]) -> dict[str, str]:
    """``["openai=sk-...", ...]`` -> ``{"openai": "sk-..."}`` (the key is never echoed)."""
    keys: dict[str, str] = {}
    for value in values:
        provider, sep, key = value.partition("=")
        provider = provider.strip().lower()
        if not sep or not key.strip() or not re.fullmatch(_PROVIDER_KEY, provider):
            raise CliError("--llm-key must look like PROVIDER=KEY, e.g. openai=sk-...")
        keys[provider] = key.strip()
    return keys


class Client:
    """Async stubs on one channel; use as ``async with Client(conn) as client``."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.channel = grpc.aio.insecure_channel(
            conn.address,
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ],
        )
        self.gateway = gateway_service_pb2_grpc.GatewayServiceStub(self.channel)
        self.memory = memory_service_pb2_grpc.MemoryServiceStub(self.channel)
        self.retrieval = retrieval_service_pb2_grpc.RetrievalServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.metadata = conn.metadata()

    def timeout(self, default: float | None) -> float | None:
        return self.conn.timeout if self.conn.timeout is not None else default

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.channel.close()


async def check_health(address: str, service: str = "", timeout: float = 3.0) -> str:
    """The grpc.health.v1 status name of ``service`` at ``address`` (UNKNOWN_SERVICE when it
    is not registered there); other failures raise ``grpc.aio.AioRpcError``."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return "UNKNOWN_SERVICE"
            raise
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def describe_rpc_error(
    err: grpc.aio.AioRpcError, address: str = "", what: str = "the gateway"
) -> str:
    """One line: ``NOT_FOUND: conversation not found (field conversation_id)``."""
    code = err.code()
    message = (err.details() or "").strip() or code.name
    if code == grpc.StatusCode.UNAVAILABLE and _is_connect_failure(message):
        where = f" at {address}" if address else ""
        hint = (
            " (is `gensearch up` running? set --address or GENSEARCH_ADDRESS)"
            if what == "the gateway"
            else ""
        )
        return f"UNAVAILABLE: cannot reach {what}{where}{hint}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and message.lower() == "deadline exceeded":
        message = "the call took longer than its deadline (raise it with --timeout)"
    fields = _fields(err)
    suffix = f" (field {', '.join(fields)})" if fields else ""
    return f"{code.name}: {' '.join(message.split())}{suffix}"


def _is_connect_failure(message: str) -> bool:
    lowered = message.lower()
    return any(
        hint in lowered
        for hint in ("failed to connect", "connection refused", "dns resolution", "unreachable")
    )


def _fields(err: grpc.aio.AioRpcError) -> list[str]:
    try:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    except Exception:
        # A malformed status detail must not turn a clear error into a traceback.
        return []
    if status is None:
        return []
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(v.field for v in bad.field_violations if v.field)
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.metadata.get("field"):
                fields.append(info.metadata["field"])
    return list(dict.fromkeys(fields))
