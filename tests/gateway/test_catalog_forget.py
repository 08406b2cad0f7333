"""The gateway's collection cache forgets a collection as one creation of its name: a
semantic store refused because its collection is gone forgets only the collection that Ask
read, not a fresh entry of the one made again under the name since."""

from __future__ import annotations

import time

from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import timestamp_pb2

from services.common.auth import Identity, Role
from services.gateway.catalog import Catalog, CollectionInfo
from services.gateway.clients import Caller


def _created(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


def _keep(catalog: Catalog, user: str, created: int) -> Caller:
    caller = Caller(Identity(user, "acme", Role.READER), ())
    info = CollectionInfo.of(ret_pb.Collection(name="Books", create_time=_created(created)))
    catalog._keep(caller, "Books", (time.monotonic(), info))
    return caller


def test_forget_with_a_creation_time_keeps_the_collection_made_again_since() -> None:
    catalog = Catalog(None, ttl=60)  # type: ignore[arg-type]  # peek and forget: no calls
    old = _keep(catalog, "alice", created=100)
    new = _keep(catalog, "bob", created=200)
    catalog.forget("acme", "Books", _created(100))
    assert catalog.peek("Books", old) is None
    kept = catalog.peek("Books", new)  # forgotten before: every user's entry went
    assert kept is not None and kept.collection.create_time == _created(200)
    # A delete forgets every creation.
    catalog.forget("acme", "Books")
    assert catalog.peek("Books", new) is None
