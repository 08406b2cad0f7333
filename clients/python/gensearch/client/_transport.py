"""The one channel: address, credentials, deadlines, retries, and error mapping.

Retries are gRPC's own (a service config on the channel), for idempotent reads only: a
retried CreateCollection, ImportObjects, GenerativeSearch, Generate or Ask could write twice
or pay for the LLM twice. Every failed call leaves here as a ``GensearchError``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from gensearch.client._unreachable import Target
from gensearch.client.errors import ClientClosedError, GensearchError, from_rpc_error
from gensearch.gateway.v1 import gateway_service_pb2_grpc
from gensearch.generation.v1 import generation_service_pb2_grpc
from gensearch.memory.v1 import memory_service_pb2_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc
from grpc_health.v1 import health_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50050"
# A deadline: seconds, a timedelta, or None for none.
Timeout = float | timedelta | None


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()

# A provider's key travels as x-<provider>-api-key: the name must make a header name (the
# services' provider names are these, services/common/model_names.py; case is folded).
_PROVIDER = re.compile(r"[a-z][a-z0-9_-]{0,62}")


def _metadata_value(value: str, what: str) -> str:
    """A gRPC metadata value must be printable ASCII: grpc core refuses anything else only
    at the first call, as an ``ExecuteBatchError`` naming no argument. Refused here instead,
    naming the argument and never the value (a key)."""
    if not all(" " <= char <= "~" for char in value):
        raise ValueError(
            f"{what} must be printable ASCII (it travels as gRPC metadata): "
            "check for a pasted character such as '\u2026' or a line break"
        )
    return value


_URL = re.compile(r"(?i)https?://")


def _target(address: str, where: str = "address") -> str:
    """A gRPC target (``host:port``, ``dns:///host:port``, ``unix:path``). A URL, as
    Connect/gRPC-web clients take (the TypeScript client's ``baseUrl``), reached gRPC's
    resolver as a host name and failed every call UNAVAILABLE with "Misformatted domain
    name", and a host without a port failed them all the same (gRPC tried port 443): both
    refused here instead, as the ``gensearch`` command refuses them, saying what to give.
    ``where`` names what the address came from: the argument, or ``GENSEARCH_ADDRESS``."""
    if _URL.match(address):
        host_port = address.split("://", 1)[1].split("/", 1)[0] or "host:port"
        raise ValueError(
            f"{where} must be host:port (a gRPC target), not a URL: {host_port!r} rather "
            f"than {address!r} (TLS: credentials=grpc.ssl_channel_credentials())"
        )
    if ":" not in address:
        raise ValueError(
            f"{where} {address!r} has no port (gRPC would try 443): give host:port, "
            f"e.g. '{address}:50050'"
        )
    return address


# Safe to repeat: reads. (Writes, generation and Ask are never retried by the client.)
IDEMPOTENT: dict[str, tuple[str, ...]] = {
    "gensearch.retrieval.v1.RetrievalService": (
        "GetCollection",
        "ListCollections",
        "GetObject",
        "BatchGetObjects",
        "CountObjects",
        "Search",
        "GetChunks",
    ),
    "gensearch.memory.v1.MemoryService": (
        "GetConversation",
        "ListConversations",
        "GetInteraction",
        "ListInteractions",
        "ListInteractionTraces",
        "SearchInteractions",
    ),
    "gensearch.generation.v1.GenerationService": ("ListModels",),
    "grpc.health.v1.Health": ("Check",),
}


def seconds(timeout: Timeout) -> float | None:
    if isinstance(timeout, timedelta):
        return timeout.total_seconds()
    return None if timeout is None else float(timeout)


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC retries for idempotent reads (exponential backoff with jitter, by gRPC)."""

    max_attempts: int = 4
    initial_backoff: timedelta = timedelta(milliseconds=200)
    max_backoff: timedelta = timedelta(seconds=5)
    backoff_multiplier: float = 2.0
    status_codes: tuple[str, ...] = ("UNAVAILABLE",)

    def service_config(self) -> str:
        def fmt(delta: timedelta) -> str:
            return f"{delta.total_seconds():.3f}s"

        policy = {
            "maxAttempts": self.max_attempts,
            "initialBackoff": fmt(self.initial_backoff),
            "maxBackoff": fmt(self.max_backoff),
            "backoffMultiplier": self.backoff_multiplier,
            "retryableStatusCodes": list(self.status_codes),
        }
        names = [
            {"service": service, "method": method}
            for service, methods in IDEMPOTENT.items()
            for method in methods
        ]
        return json.dumps({"methodConfig": [{"name": names, "retryPolicy": policy}]})


_KEY_URL_KINDS = ("embedding", "rerank")


class Transport:
    def __init__(
        self,
        address: str | None = None,
        *,
        api_key: str | None = None,
        llm_keys: Mapping[str, str] | None = None,
        key_urls: Mapping[str, str] | None = None,
        timeout: Timeout = 60.0,
        retry: RetryPolicy | None = RetryPolicy(),
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if address:
            self.address, origin = _target(address), "address"
        else:
            from_env = os.environ.get("GENSEARCH_ADDRESS")
            self.address = _target(from_env or DEFAULT_ADDRESS, "GENSEARCH_ADDRESS")
            origin = "GENSEARCH_ADDRESS" if from_env else "default"
        self.target = Target(self.address, origin, tls=credentials is not None)
        key = api_key if api_key is not None else os.environ.get("GENSEARCH_API_KEY", "")
        pairs: list[tuple[str, str]] = []
        if key:
            # As services/common/auth.py reads it.
            pairs.append(("authorization", f"Bearer {_metadata_value(key, 'api_key')}"))
        named: set[str] = set()
        for provider, provider_key in sorted((llm_keys or {}).items()):
            if not _PROVIDER.fullmatch(provider.lower()):
                raise ValueError(f"llm_keys: {provider!r} is no provider name (e.g. 'openai')")
            if provider.lower() in named:
                # Metadata names are lower case: two spellings would send two keys for one
                # provider, and the gateway would take whichever came first.
                raise ValueError(f"llm_keys: {provider!r} names a provider twice")
            named.add(provider.lower())
            value = _metadata_value(provider_key, f"llm_keys[{provider!r}]")
            pairs.append((f"x-{provider.lower()}-api-key", value))
        for kind, url in sorted((key_urls or {}).items()):
            # The URL a caller's embedding / rerank key is meant for: retrieval sends the key
            # to a URL a collection's admin set only when the two agree.
            if kind not in _KEY_URL_KINDS:
                raise ValueError(f"key_urls: {kind!r} must be 'embedding' or 'rerank'")
            pairs.append((f"x-{kind}-base-url", _metadata_value(url, f"key_urls[{kind!r}]")))
        self.metadata = tuple(pairs)
        self.timeout = seconds(timeout)
        opts: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.enable_retries", 1 if retry else 0),
        ]
        if retry:
            opts.append(("grpc.service_config", retry.service_config()))
        opts.extend(options)
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(self.address, options=opts)
        else:
            self.channel = grpc.aio.secure_channel(self.address, credentials, options=opts)
        self.gateway = gateway_service_pb2_grpc.GatewayServiceStub(self.channel)
        self.retrieval = retrieval_service_pb2_grpc.RetrievalServiceStub(self.channel)
        self.memory = memory_service_pb2_grpc.MemoryServiceStub(self.channel)
        self.generation = generation_service_pb2_grpc.GenerationServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

        self.closed = False

    def _deadline(self, timeout: Timeout) -> float | None:
        # Checked as each call starts: grpc's own "Channel is closed" is a bare UsageError.
        if self.closed:
            raise ClientClosedError()
        return self.timeout if timeout is DEFAULT else seconds(timeout)

    def _error(self, err: grpc.aio.AioRpcError) -> GensearchError:
        return from_rpc_error(err, target=self.target)

    def _cancelled_by_close(self) -> bool:
        """Whether a call's asyncio.CancelledError came from the channel's close() (grpc
        cancels the calls in flight), not from the caller's own task being cancelled (whose
        CancelledError must go on)."""
        task = asyncio.current_task()
        return self.closed and (task is None or not task.cancelling())

    async def unary(self, method: Any, request: Any, timeout: Timeout = DEFAULT) -> Any:
        try:
            return await method(request, metadata=self.metadata, timeout=self._deadline(timeout))
        except grpc.aio.AioRpcError as err:
            raise self._error(err) from err
        except asyncio.CancelledError as err:
            if self._cancelled_by_close():
                raise ClientClosedError() from err
            raise

    async def server_stream(
        self, method: Any, request: Any, timeout: Timeout = DEFAULT
    ) -> AsyncIterator[Any]:
        call = method(request, metadata=self.metadata, timeout=self._deadline(timeout))
        try:
            async for reply in call:
                yield reply
        except grpc.aio.AioRpcError as err:
            raise self._error(err) from err
        except asyncio.CancelledError as err:
            if self._cancelled_by_close():
                raise ClientClosedError() from err
            raise
        finally:
            call.cancel()  # a consumer that stops early must not leave the call running

    async def client_stream(
        self, method: Any, requests: AsyncIterable[Any], timeout: Timeout = DEFAULT
    ) -> Any:
        try:
            return await method(requests, metadata=self.metadata, timeout=self._deadline(timeout))
        except grpc.aio.AioRpcError as err:
            raise self._error(err) from err
        except asyncio.CancelledError as err:
            if self._cancelled_by_close():
                raise ClientClosedError() from err
            raise

    async def close(self) -> None:
        """Closes the channel (calls in flight end CANCELLED); a second close is nothing."""
        if not self.closed:
            self.closed = True
            await self.channel.close()
