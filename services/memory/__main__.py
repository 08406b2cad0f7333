"""Serve the memory service: ``python -m services.memory``.

With ``GENSEARCH_MEMORY_REDIS_URL`` unset it starts its own Redis-protocol server (a
dev-only launcher, ``services.devlaunch.redis_server``; append-only file in
``<GENSEARCH_DATA_DIR>/redis``) and stops it on shutdown. With
``GENSEARCH_MEMORY_REDIS_CLUSTER=true`` the URL names a node of a Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from gensearch.memory.v1 import memory_service_pb2_grpc as pb_grpc

from services.common.errors import ServiceError, Unavailable
from services.common.logs import configure_logging, register_secret, url_secrets
from services.common.redis_client import connect_configured
from services.common.server import GrpcServer, run_until_signal
from services.common.settings import load_settings, warn_unknown_variables
from services.devlaunch.redis_server import RedisProcess, start_embedded
from services.memory.deletions import DeletionResumer
from services.memory.servicer import MemoryServicer
from services.memory.settings import MemorySettings
from services.memory.store import MemoryStore

if TYPE_CHECKING:
    from services.memory.indexer import Indexer

SERVICE_NAME = "gensearch.memory.v1.MemoryService"
log = logging.getLogger("gensearch.memory")


async def build_server(settings: MemorySettings, *, port: int | None = None) -> GrpcServer:
    server = GrpcServer(
        settings,
        port=settings.port if port is None else port,
        metrics_port=settings.metrics_port,
    )
    # The page-token secret signs every caller's tokens: a log line must never show it.
    register_secret(settings.page_token_secret.get_secret_value() or None)
    url = settings.redis_url.get_secret_value()
    embedded: RedisProcess | None = None
    if not url:
        embedded = await start_embedded(
            settings.data_dir / "redis", appendfsync=settings.redis_appendfsync
        )
        url = embedded.socket_url
    redis = connect_configured(url, settings)
    store = MemoryStore(
        redis,
        key_prefix=settings.key_prefix,
        request_id_ttl=settings.request_id_ttl_seconds,
        eviction_grace_turns=settings.eviction_grace_turns,
        max_bytes_per_owner=settings.max_bytes_per_owner,
        max_conversations_per_owner=settings.max_conversations_per_owner,
        max_interactions_per_conversation=settings.max_interactions_per_conversation,
        untenanted_owner=settings.untenanted_owner,
        slot_move_wait=settings.slot_move_wait_seconds,
        delete_resume_seconds=settings.delete_resume_seconds,
    )
    # Redis down at start: served UNAVAILABLE until it is back. The store logged the
    # outage (one line for it, not one here too).
    with contextlib.suppress(Unavailable):
        await store.load_scripts()
    indexer = _indexer(settings, store)
    servicer = MemoryServicer(store, settings, indexer)
    # The page-token secret kept from now on: a Redis Cluster node holding it that fails
    # later does not stop paging for the users of the other nodes. Not to be had now
    # (Redis down: logged; a cluster node without REDIS_CLUSTER: every call says so): asked
    # for again by the first call that pages.
    with contextlib.suppress(ServiceError):
        await servicer.page_tokens()
    server.add_service(pb_grpc.add_MemoryServiceServicer_to_server, servicer, SERVICE_NAME)
    if embedded is not None:
        # on_stop callbacks run in reverse: the client closes first, then Redis flushes its
        # append-only file and exits.
        server.on_stop(embedded.stop)
    server.on_stop(store.close)
    if indexer is not None:
        # Runs before store.close (reverse order): index jobs under way still reach Redis.
        server.on_stop(indexer.close)
    # Runs before indexer.close and store.close (on_stop runs in reverse): a deletion it
    # finishes writes the index its drop job ahead, as DeleteConversation does.
    resumer = DeletionResumer(store, settings.delete_resume_seconds, indexer)
    resumer.start()
    server.on_stop(resumer.close)
    log.info(
        "memory store",
        extra={
            "embedded": embedded is not None,
            "cluster": settings.redis_cluster,
            "key_prefix": settings.key_prefix,
            "search_index": settings.search_index,
        },
    )
    return server


def _indexer(settings: MemorySettings, store: MemoryStore) -> Indexer | None:
    """SearchInteractions' index when search_index is on; its retry loop started.
    Imported here: the engine, BM25 and embedder modules cost seconds of start-up."""
    if settings.search_index == "off":
        return None
    from services.memory.indexer import Indexer
    from services.memory.search_index import make_index

    api_key = settings.search_qdrant_api_key.get_secret_value()
    for secret in (api_key, *url_secrets(settings.search_qdrant_url)):
        register_secret(secret or None)
    index = make_index(
        mode=settings.search_index,
        data_dir=settings.data_dir,
        qdrant_url=settings.search_qdrant_url,
        qdrant_api_key=api_key,
        collection=f"{settings.search_collection}",
        model_path=settings.search_model_path,
        embed_threads=settings.search_embed_threads,
    )
    if index is None:
        return None
    indexer = Indexer(
        store,
        index,
        settings.search_retry_seconds,
        settings.search_sweep_seconds,
        settings.search_jobs_per_tenant,
        outbox_max_jobs=settings.search_outbox_max_jobs,
        outbox_jobs_per_tenant=settings.search_outbox_jobs_per_tenant,
    )
    indexer.start()
    return indexer


def main() -> None:
    settings = load_settings(MemorySettings)
    configure_logging(settings.log_level, service="memory")
    warn_unknown_variables(settings)
    asyncio.run(_serve(settings))


async def _serve(settings: MemorySettings) -> None:
    await run_until_signal(await build_server(settings))


if __name__ == "__main__":
    main()
