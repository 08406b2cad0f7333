"""An ImportObjects stream still open as retrieval's grace period ends is ended by the
chassis, UNAVAILABLE / SHUTTING_DOWN, saying what its messages imported, as a stream's
other failures do (services/common/shutdown_cut.py); before, gRPC core cancelled it bare
("Cancelling all calls", no ErrorInfo, no counts). A real server, a real client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

from services.common.shutdown_cut import Draining
from tests.retrieval.conftest import (
    MakeRetrieval,
    expect_error,
    hold_engine,
    obj,
    vector_collection,
)
from tests.support.rpc import error_info
from tests.support.waiting import until

# The grace period of the stop. The chassis ends its calls shutdown_cut.margin(GRACE)
# before it ends (10 %, at most 1 s: 0.1 s at 1 s) and a client stream's drain takes half
# of that, so the status had 50 ms to leave before gRPC cancelled the call bare: a loaded
# machine missed it (CANCELLED, 1 of 4 runs at load 2). At 4 s the margin is 0.4 s.
GRACE = 4.0


async def _one_batch_then_end(
    sent: asyncio.Event, collection: str, count: int, draining: Draining | None = None
) -> AsyncIterator[pb.ImportObjectsRequest]:
    """One message, then the end of the stream: at once, or (``draining``) once the
    server's cut has begun, so that the stream is still open when the cut lands and its
    drain then reads the end, not half the shutdown margin of silence."""
    objects = [obj({"title": f"t{i}"}, vector=[0.1, 0.2, 0.3, 0.4]) for i in range(count)]
    yield pb.ImportObjectsRequest(collection=collection, objects=objects)
    sent.set()
    if draining is not None:
        cut = draining

        async def cut_begun() -> bool:
            return cut.ending

        await until(cut_begun, "the server's cut began", 60)


async def test_an_import_open_as_the_grace_period_ends_says_what_it_imported(
    make_retrieval: MakeRetrieval,
) -> None:
    retrieval = await make_retrieval(stream_idle_timeout=3600)
    await retrieval.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("A"))
    )
    sent = asyncio.Event()
    # Open until the cut, then half-closed: the drain reads the end at once and the status
    # has the whole margin to leave (0.4 s at 4 s). A client silent to the end held the
    # drain half of it, and the status had 0.2 s before gRPC cancelled the call bare (the
    # other test of this file read CANCELLED so, 1 of 5 runs at load 6-8).
    ending = retrieval.server.draining
    call = retrieval.stub.ImportObjects(_one_batch_then_end(sent, "A", 2, ending), timeout=60)
    await sent.wait()
    # The first message written: the stream now waits for the next one.
    loop = asyncio.get_running_loop()
    end = loop.time() + 30
    while (await retrieval.stub.CountObjects(pb.CountObjectsRequest(collection="A"))).count < 2:
        assert not call.done() and loop.time() < end, "the first message was never written"
        await asyncio.sleep(0.01)
    stopping = asyncio.create_task(retrieval.server.stop(GRACE))
    err = await expect_error(call, grpc.StatusCode.UNAVAILABLE)
    await stopping
    info = error_info(err)
    assert info.reason == "SHUTTING_DOWN"
    assert info.metadata["setting"] == "GENSEARCH_RETRIEVAL_GRACE_PERIOD"
    assert info.metadata["imported_count"] == info.metadata["received_count"] == "2"
    assert "(message 1; 2 objects imported before it)" in (err.details() or "")
    assert "retrieval service is shutting down" in (err.details() or "")


async def test_an_import_cut_while_writing_says_its_batch_may_be_stored(
    make_retrieval: MakeRetrieval,
) -> None:
    """The cut lands while a message's objects wait for the engine (held here by another
    tenant's work): that write is shielded and runs on after the status left, so the
    status cannot count it as imported nor as lost; it names it (``writing_count``).

    The client half-closes after its message. The servicer is held in that message's
    write, so the end is read only by the cut's drain, at once, and the status has the
    whole margin to leave (0.4 s at 4 s). A client left open kept the drain reading half
    of it, and the status then had 0.2 s before gRPC cancelled the call bare: a loaded
    machine missed it (CANCELLED, 1 of 5 runs at load 6-8)."""
    retrieval = await make_retrieval(stream_idle_timeout=3600)
    await retrieval.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("W"))
    )
    gate, holding = hold_engine(retrieval)
    try:
        sent = asyncio.Event()
        call = retrieval.stub.ImportObjects(_one_batch_then_end(sent, "W", 3), timeout=60)
        await sent.wait()
        # The call is at the server before it stops (a call that came after would be
        # refused by gRPC, not cut by the chassis).
        loop = asyncio.get_running_loop()
        end = loop.time() + 30
        while retrieval.server.call_slots.in_flight < 1:
            assert not call.done() and loop.time() < end, "the call never reached the server"
            await asyncio.sleep(0.01)
        stopping = asyncio.create_task(retrieval.server.stop(GRACE))
        err = await expect_error(call, grpc.StatusCode.UNAVAILABLE)
    finally:
        gate.set()
        await holding
    await stopping
    info = error_info(err)
    assert info.reason == "SHUTTING_DOWN", err
    assert info.metadata["imported_count"] == "0"
    assert info.metadata["received_count"] == "0"
    assert info.metadata["writing_count"] == "3"
    assert "its 3 objects were being written and may be stored too" in (err.details() or "")
