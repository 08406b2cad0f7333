"""Day-2 operations, the search path (docs/operations.md, "What a client sees during a
rolling restart"): a client keeps calling through the gateway (Search, GenerativeSearch
with a per-hit prompt, Ask, and UpsertObjects sent again with the same ids on
UNAVAILABLE) while the operator restarts retrieval, then generation (SIGTERM, started
again on its port; real processes). The client sees only OK or UNAVAILABLE with a reason,
and a hit's generation error only UNAVAILABLE with a reason (never INTERNAL); no
acknowledged object is lost; the gateway reaches each service again by itself. Each
step meets its outage (a Search, a hit's generation, answered UNAVAILABLE while the
service is down), else its codes would prove nothing. The helpers are the memory walk's
(``test_rolling_restart.py``)."""

from __future__ import annotations

import asyncio
import collections
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc

from services.devlaunch.processes import free_port
from tests.deploy.test_rolling_restart import ALICE, API_KEY, GATEWAY, TOKEN, Service, _reason
from tests.gateway.conftest import DIM, book_objects, books_collection
from tests.support.fake_openai import FakeOpenAI

RETRIEVAL = "gensearch.retrieval.v1.RetrievalService"
GENERATION = "gensearch.generation.v1.GenerationService"
QUERY = ret_pb.NearVector(vector=[0.5] * DIM)


@pytest.mark.slow  # three processes, two restarts
async def test_restarting_retrieval_and_generation_under_search_traffic(tmp_path: Path) -> None:
    retrieval_port, generation_port, gateway_port = free_port(), free_port(), free_port()
    async with FakeOpenAI() as fake:
        provider = {"name": "fake", "base_url": fake.base_url, "default_model": "fake-model"}
        retrieval = Service.on_port(
            "retrieval",
            RETRIEVAL,
            retrieval_port,
            tmp_path,
            GENSEARCH_DATA_DIR=str(tmp_path / "retrieval"),
        )
        generation = Service.on_port(
            "generation",
            GENERATION,
            generation_port,
            tmp_path,
            GENSEARCH_DATA_DIR=str(tmp_path / "generation"),
            GENSEARCH_GENERATION_PROVIDERS=json.dumps([provider]),
            GENSEARCH_GENERATION_DEFAULT_PROVIDER="fake",
        )
        gateway = Service.on_port(
            "gateway",
            GATEWAY,
            gateway_port,
            tmp_path,
            GENSEARCH_DATA_DIR=str(tmp_path / "gateway"),
            GENSEARCH_GATEWAY_RETRIEVAL_ADDR=f"127.0.0.1:{retrieval_port}",
            GENSEARCH_GATEWAY_GENERATION_ADDR=f"127.0.0.1:{generation_port}",
            GENSEARCH_GATEWAY_MEMORY_ADDR=f"127.0.0.1:{free_port()}",
        )
        # (the step under way, the call, its code, its ErrorInfo reason) of each answer;
        # a hit's generation error counted as the call "hit".
        seen: collections.Counter[tuple[str, str, str, str]] = collections.Counter()
        answered: collections.Counter[tuple[str, str]] = collections.Counter()  # OKs a step
        step = ["start"]
        acknowledged: list[str] = []
        processes = (retrieval, generation, gateway)
        try:
            for service in processes:
                await service.start()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway_port}") as channel:
                search = ret_grpc.RetrievalServiceStub(channel)  # the gateway serves it
                generate = gw_grpc.GatewayServiceStub(channel)
                await search.CreateCollection(
                    ret_pb.CreateCollectionRequest(collection=books_collection()),
                    metadata=ALICE,
                    timeout=10,
                )
                done = asyncio.Event()

                async def call(name: str, send: Callable[[], Awaitable[object]]) -> object:
                    """One call; its answer counted. None when it failed."""
                    try:
                        reply = await send()
                    except grpc.aio.AioRpcError as err:
                        seen[(step[0], name, err.code().name, _reason(err))] += 1
                        await asyncio.sleep(0.05)
                        return None
                    seen[(step[0], name, "OK", "")] += 1
                    answered[(step[0], name)] += 1
                    return reply

                async def upsert(n: int) -> None:
                    # As docs/clients.md tells clients: the same objects (same ids) again.
                    objects = book_objects()[:1]
                    objects[0].id = str(uuid.uuid4())
                    objects[0].properties["title"] = f"book {n}"
                    request = ret_pb.UpsertObjectsRequest(collection="Books", objects=objects)
                    while not await call(
                        "UpsertObjects",
                        lambda: search.UpsertObjects(request, metadata=ALICE, timeout=10),
                    ):
                        pass
                    acknowledged.append(objects[0].id)

                async def generative_search(_: int) -> None:
                    request = gw_pb.GenerativeSearchRequest(
                        collection="Books",
                        near_vector=QUERY,
                        limit=2,
                        generate=gw_pb.Generate(single_prompt="Summarise {title}"),
                    )
                    reply = await call(
                        "GenerativeSearch",
                        lambda: generate.GenerativeSearch(request, metadata=ALICE, timeout=10),
                    )
                    for hit in getattr(reply, "hits", ()):
                        error = hit.generation.error
                        if error.status:
                            seen[(step[0], "hit", error.status, error.reason)] += 1

                async def keep_calling(one: Callable[[int], Awaitable[None]]) -> None:
                    n = 0
                    while not done.is_set():
                        n += 1
                        await one(n)

                async def plain_search(_: int) -> None:
                    await call(
                        "Search",
                        lambda: search.Search(
                            ret_pb.SearchRequest(collection="Books", near_vector=QUERY),
                            metadata=ALICE,
                            timeout=10,
                        ),
                    )

                async def ask(_: int) -> None:
                    await call(
                        "Ask",
                        lambda: generate.Ask(
                            gw_pb.AskRequest(collection="Books", llm_question="Which?"),
                            metadata=ALICE,
                            timeout=10,
                        ),
                    )

                # Each kind of call its own client, so each meets every restart.
                clients = [upsert, plain_search, generative_search, ask]
                calling = asyncio.gather(*(keep_calling(one) for one in clients))

                async def each_call_answered() -> None:
                    # Every kind of call answered OK a few times in this step: the gateway
                    # reached the service again by itself (a bound far past its 5 s
                    # reconnect backoff, only so a failure names the step).
                    give_up = asyncio.get_running_loop().time() + 120
                    calls = ("UpsertObjects", "Search", "GenerativeSearch", "Ask")
                    while any(answered[(step[0], name)] < 3 for name in calls):
                        assert not calling.done(), calling
                        assert asyncio.get_running_loop().time() < give_up, (step[0], seen)
                        await asyncio.sleep(0.05)

                async def outage_met(call_name: str) -> None:
                    # While the service is down, a call of ``call_name`` (a generation
                    # error on a hit: "hit") answered UNAVAILABLE: the step met the outage,
                    # else the codes asserted after prove nothing about it (bounded, only so
                    # a failure names the step).
                    give_up = asyncio.get_running_loop().time() + 60
                    while not any(
                        (s, name, code) == (step[0], call_name, "UNAVAILABLE")
                        for s, name, code, _ in seen
                    ):
                        assert not calling.done(), calling
                        assert asyncio.get_running_loop().time() < give_up, (step[0], seen)
                        await asyncio.sleep(0.05)

                await each_call_answered()
                # The call that meets each outage: retrieval's own Search, and generation's
                # per-hit errors of a GenerativeSearch that still answers OK with its hits.
                for service, meets in ((retrieval, "Search"), (generation, "hit")):
                    step[0] = service.name
                    assert await service.stop() == 0
                    await outage_met(meets)
                    await service.start()
                    await each_call_answered()
                done.set()
                await calling

                found = []
                for object_id in acknowledged:
                    got = await search.GetObject(
                        ret_pb.GetObjectRequest(collection="Books", id=object_id),
                        metadata=ALICE,
                        timeout=10,
                    )
                    found.append(got.object.id)
        finally:
            for service in reversed(processes):
                if service.proc is not None and service.proc.returncode is None:
                    await service.stop()

    assert found == acknowledged and len(set(acknowledged)) == len(acknowledged)
    codes = {(call, code) for _, call, code, _ in seen}
    assert {code for _, code in codes} <= {"OK", "UNAVAILABLE"}, seen
    # Every refusal says why: an ErrorInfo reason, on a call and on a hit alike.
    assert all(reason for _, _, code, reason in seen if code != "OK"), seen
    # Generation's outage as docs/operations.md says a client sees it: hits with an
    # UNAVAILABLE generation error (met for sure: ``outage_met``).
    assert any(key[1:3] == ("hit", "UNAVAILABLE") for key in seen if key[0] == "generation")
    for service in processes:
        text = service.log.read_text(encoding="utf-8")
        assert API_KEY not in text and TOKEN not in text
        assert "Traceback" not in text, service.log
