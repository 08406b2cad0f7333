"""The one place channels to the memory, retrieval and generation services are made.

Each channel carries a service config: round-robin load balancing (with a ``dns:///``
target every address the name resolves to gets calls, so generation replicas share the
fan-out) and a retry policy for UNAVAILABLE on calls that are safe to repeat. Extra
``grpc.aio`` client interceptors (tracing) are given here, for every channel at once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import grpc

from services.common.channel_args import metadata_options
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
        # Reads, and a write that sets a value (the same result however often it lands).
        "ListInteractionTraces",
        "SearchInteractions",
        "UpdateInteraction",
        # Stores nothing (what it may tidy, expired conversations' counts, is idempotent).
        "CheckStorage",
    ),
    RETRIEVAL_SERVICE: (
        "GetCollection",
        "ListCollections",
        "GetObject",
        "BatchGetObjects",
        "CountObjects",
    ),
    GENERATION_SERVICE: ("ListModels",),
}


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


def make_channel(
    target: str,
    service: str,
    settings: GatewaySettings,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """A channel to ``service`` at ``target``; ``interceptors`` run on every call, the
    first one outermost."""
    backoff_ms = max(1, int(settings.downstream_reconnect_backoff_max * 1000))
    options = [
        ("grpc.service_config", service_config(service)),
        ("grpc.enable_retries", 1),
        # Connections of its own: by default gRPC shares a subchannel (connection and
        # reconnect backoff) among all channels of the process with the same target and
        # arguments, so a new channel to an address another channel failed to reach starts
        # in that channel's backoff and fails its first calls (in one process with several
        # gateways: `gensearch up`, tests).
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Response metadata (a status's trailers) up to the gateway's own limit, the same
        # every time (gRPC's soft limit would refuse some at random past 8 KiB).
        *metadata_options(settings.max_metadata_bytes),
        # Notice a dead replica between calls, not only when a call fails on it.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        # Reconnect to a service that was down soon after it is back (gRPC's backoff
        # otherwise grows to 120 s between attempts).
        ("grpc.initial_reconnect_backoff_ms", min(1000, backoff_ms)),
        ("grpc.max_reconnect_backoff_ms", backoff_ms),
    ]
    return grpc.aio.insecure_channel(target, options=options, interceptors=list(interceptors))
