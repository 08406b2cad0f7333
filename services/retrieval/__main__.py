"""``python -m services.retrieval``: serve RetrievalService until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import sys

from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc

from services.common.errors import Unavailable
from services.common.logs import configure_logging, register_secret, url_secrets
from services.common.server import GrpcServer, run_until_signal
from services.common.settings import load_settings, warn_unknown_variables
from services.retrieval.catalog import Catalog
from services.retrieval.edge_store import DataDirUnreadable, EdgeStore
from services.retrieval.embedders import Embedders, LocalEmbedder
from services.retrieval.rerankers import Rerankers
from services.retrieval.server_client import qdrant_server_client
from services.retrieval.server_store import OUTAGE_REASONS, ServerStore
from services.retrieval.servicer import RetrievalServicer
from services.retrieval.settings import RetrievalSettings
from services.retrieval.store import VectorStore

SERVICE_NAME = "gensearch.retrieval.v1.RetrievalService"
log = logging.getLogger("gensearch.retrieval")


def make_store(settings: RetrievalSettings) -> VectorStore:
    """qdrant-edge under <data_dir>/qdrant, or a Qdrant server when qdrant_url is set."""
    url = settings.qdrant_url.strip()
    if not url:
        return EdgeStore(
            settings.data_dir / "qdrant",
            settings.engine_write_turn_bytes,
            settings.flush_after_objects,
            settings.flush_interval_seconds,
        )
    if url == ":memory:":
        return ServerStore(qdrant_server_client(url, None, None))
    api_key = settings.qdrant_api_key.get_secret_value() or None
    for secret in (api_key, *url_secrets(url)):
        register_secret(secret)
    return ServerStore(qdrant_server_client(url, api_key, int(settings.qdrant_timeout)))


async def build_server(
    settings: RetrievalSettings,
    *,
    port: int | None = None,
    metrics_port: int | None = None,
    store: VectorStore | None = None,
    local_embedder: LocalEmbedder | None = None,
) -> GrpcServer:
    """Open the store and load the schemas; the caller starts the server.

    A Qdrant server unreachable at start is no error: calls answer UNAVAILABLE until it is
    back, and the catalog loads the schemas then (as memory does with Redis down).
    ``store`` and ``local_embedder`` let tests share an engine or a loaded model.
    """
    store = store or make_store(settings)
    embedders = Embedders(settings, local=local_embedder)
    catalog = Catalog(store, embedders, settings)
    try:
        await store.open()
        await catalog.load()
    except Unavailable as err:
        # The store logged its outage (one line for it, not one here too).
        if err.reason not in OUTAGE_REASONS:
            log.warning(
                "vector store unavailable at start (GENSEARCH_RETRIEVAL_QDRANT_URL); calls "
                "answer UNAVAILABLE until it is back: %s",
                err,
            )
    except BaseException:
        await store.close()
        raise
    server = GrpcServer(
        settings,
        port=settings.port if port is None else port,
        metrics_port=metrics_port,
    )
    rerankers = Rerankers(settings, embedders.local)
    servicer = RetrievalServicer(settings, store, catalog, embedders, rerankers)
    server.add_service(pb_grpc.add_RetrievalServiceServicer_to_server, servicer, SERVICE_NAME)
    server.on_stop(store.close)
    server.on_stop(embedders.close)
    server.on_stop(rerankers.close)
    return server


def main() -> None:
    settings = load_settings(RetrievalSettings)
    configure_logging(settings.log_level, service="retrieval")
    warn_unknown_variables(settings)

    async def serve() -> None:
        server = await build_server(settings, metrics_port=settings.metrics_port)
        await run_until_signal(server)

    try:
        asyncio.run(serve())
    except DataDirUnreadable as err:
        sys.exit(str(err))


if __name__ == "__main__":
    main()
