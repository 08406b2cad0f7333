"""Channels to the memory, retrieval and generation services, and what travels on them.

Each channel carries a service config: round-robin load balancing (with a ``dns:///``
target every address the name resolves to gets calls, so generation replicas share the
fan-out) and a retry policy for UNAVAILABLE on calls that are safe to repeat. Every call
carries the caller's identity; generation calls also carry the caller's provider keys
(``x-<provider>-api-key``) unchanged. Those keys are never logged nor stored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import grpc
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc
from gensearch.memory.v1 import memory_service_pb2_grpc as mem_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc

from services.common.auth import TOKEN_HEADER, USER_HEADER, forwarded_identity
from services.common.tracing import client_interceptors
from services.gateway.settings import GatewaySettings

MEMORY_SERVICE = "gensearch.memory.v1.MemoryService"
RETRIEVAL_SERVICE = "gensearch.retrieval.v1.RetrievalService"
GENERATION_SERVICE = "gensearch.generation.v1.GenerationService"

# Reads, plus CreateInteraction, which memory makes idempotent per request_id (the
# gateway always sends one: Ask sets it, the forwarded API fills it in when empty).
# Generate and Search are not here: the generation service retries its LLM and retrieval
# its embeddings endpoint within the deadline, and a second layer would multiply upstream
# attempts (calls that never reached a server are still retried transparently by gRPC).
RETRYABLE: dict[str, tuple[str, ...]] = {
    MEMORY_SERVICE: (
        "GetConversation",
        "ListConversations",
        "GetInteraction",
        "ListInteractions",
        "CreateInteraction",
    ),
    RETRIEVAL_SERVICE: (
        "GetCollection",
        "ListCollections",
        "GetObject",
        "CountObjects",
    ),
    GENERATION_SERVICE: ("ListModels",),
}

API_KEY_HEADER = re.compile(r"^x-[a-z0-9][a-z0-9-]*-api-key$")
Metadata = tuple[tuple[str, str], ...]


def service_config(service: str) -> str:
    methods = RETRYABLE.get(service, ())
    config: dict[str, object] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if methods:
        config["methodConfig"] = [
            {
                "name": [{"service": service, "method": m} for m in methods],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return json.dumps(config)


def make_channel(target: str, service: str, settings: GatewaySettings) -> grpc.aio.Channel:
    options = [
        ("grpc.service_config", service_config(service)),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Notice a dead replica between calls, not only when a call fails on it.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]
    return grpc.aio.insecure_channel(
        target, options=options, interceptors=client_interceptors("gateway")
    )


@dataclass(frozen=True)
class Caller:
    """Who is calling, as the downstream services must see it."""

    user: str
    identity: Metadata
    provider_keys: Metadata = ()

    @property
    def generation_metadata(self) -> Metadata:
        return self.identity + self.provider_keys


def caller_from(
    user: str, incoming: Iterable[tuple[str, str | bytes]] | None, internal_token: str
) -> Caller:
    """With an internal token the gateway vouches for ``user``; without one it passes the
    caller's own credentials on, so each service authenticates them itself."""
    headers: list[tuple[str, str]] = []
    for key, value in incoming or ():
        if isinstance(value, str):
            headers.append((key.lower(), value))
    if internal_token:
        identity: Metadata = forwarded_identity(user, internal_token)
    else:
        identity = tuple((k, v) for k, v in headers if k == "authorization")
    keys = tuple(
        (k, v)
        for k, v in headers
        if API_KEY_HEADER.match(k) and k not in (TOKEN_HEADER, USER_HEADER)
    )
    return Caller(user=user, identity=identity, provider_keys=keys)


class Downstream:
    """The three channels and their stubs; one per gateway process."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.memory_channel = make_channel(settings.memory_addr, MEMORY_SERVICE, settings)
        self.retrieval_channel = make_channel(settings.retrieval_addr, RETRIEVAL_SERVICE, settings)
        self.generation_channel = make_channel(
            settings.generation_addr, GENERATION_SERVICE, settings
        )
        self.memory = mem_grpc.MemoryServiceStub(self.memory_channel)
        self.retrieval = ret_grpc.RetrievalServiceStub(self.retrieval_channel)
        self.generation = gen_grpc.GenerationServiceStub(self.generation_channel)

    @property
    def channels(self) -> Sequence[grpc.aio.Channel]:
        return (self.memory_channel, self.retrieval_channel, self.generation_channel)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
