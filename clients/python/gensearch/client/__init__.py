"""The gensearch Python client: ``AsyncGensearch`` (asyncio) and ``Gensearch`` (blocking).

    from gensearch.client import Gensearch

    with Gensearch("localhost:50050", api_key="alice-key") as client:
        books = client.collections.get("Books")
        for hit in books.query.near_text("sand and spice", limit=3):
            print(hit.score, hit["title"])

See docs/python-client.md.
"""

from gensearch.client import errors
from gensearch.client._async import (
    AsyncCollection,
    AsyncGensearch,
    Chat,
    Collections,
    Conversations,
    coerce_properties,
)
from gensearch.client._sync import Gensearch
from gensearch.client._transport import DEFAULT_ADDRESS, RetryPolicy
from gensearch.client.errors import GensearchError, error_class, from_rpc_error
from gensearch.client.filters import Filter
from gensearch.client.types import *  # noqa: F403 (the result dataclasses)
from gensearch.client.types import __all__ as _types

__all__ = [
    "DEFAULT_ADDRESS",
    "AsyncCollection",
    "AsyncGensearch",
    "Chat",
    "Collections",
    "Conversations",
    "Filter",
    "Gensearch",
    "GensearchError",
    "RetryPolicy",
    "coerce_properties",
    "error_class",
    "errors",
    "from_rpc_error",
    *_types,
]
