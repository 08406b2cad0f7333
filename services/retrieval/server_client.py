"""The client of a Qdrant server, built without a warning the operator cannot act on.

``AsyncQdrantClient`` asks the server for its version while it is built, and a server that
does not answer (down at start, which the service tolerates: calls answer UNAVAILABLE until
it is back) makes it warn "Failed to obtain server version … Set check_compatibility=False",
naming a parameter no setting reaches, beside the service's own line that names
``GENSEARCH_RETRIEVAL_QDRANT_URL``. That warning alone is dropped; the version check itself
stays, so a server too old or too new for the client is still reported.
"""

from __future__ import annotations

import warnings

from qdrant_client import AsyncQdrantClient

UNREACHABLE_VERSION_WARNING = r"Failed to obtain server version"
# The modules qdrant-client warns from (its show_warning names the caller of itself,
# qdrant_client.async_qdrant_remote or qdrant_client.qdrant_remote): the same words warned
# by any other module are not ours to drop.
QDRANT_CLIENT_MODULES = r"qdrant_client\."


def qdrant_server_client(url: str, api_key: str | None, timeout: int | None) -> AsyncQdrantClient:
    """A client of the Qdrant server at ``url`` (``:memory:``: qdrant-client's in-process one)."""
    if url == ":memory:":
        return AsyncQdrantClient(location=":memory:")
    # Added (not scoped with catch_warnings, which is not thread-safe) and idempotent: the
    # warnings module moves an identical filter to the front instead of adding another. It
    # is process-wide, so it names qdrant-client's modules: without them it dropped that
    # warning of any library (a filter matches a message's start, whoever warns it).
    warnings.filterwarnings(
        "ignore",
        message=UNREACHABLE_VERSION_WARNING,
        category=UserWarning,
        module=QDRANT_CLIENT_MODULES,
    )
    return AsyncQdrantClient(url=url, api_key=api_key, timeout=timeout)
