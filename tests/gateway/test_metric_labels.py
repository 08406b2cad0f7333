"""The gateway's series stay bounded whatever its callers name: methods it does not serve
(on its own service, on the ones it forwards, on services it has never heard of) are
UNIMPLEMENTED before the chassis and make no series; collections, models and failed hits
add no label values either (docs/operations.md)."""

from __future__ import annotations

import grpc
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from prometheus_client import REGISTRY

from tests.gateway.conftest import ALICE, BOOKS, Stack, create_books, vector
from tests.support.fake_openai import Behaviour
from tests.support.metrics import call_unserved_methods, marked_series

MARK = "cardinality-probe"
SERVICES = [
    "gensearch.gateway.v1.GatewayService",
    "gensearch.memory.v1.MemoryService",
    "gensearch.retrieval.v1.RetrievalService",
    "gensearch.generation.v1.GenerationService",
    MARK,
]


async def test_methods_the_gateway_does_not_serve_make_no_series(stack: Stack) -> None:
    for service in SERVICES:
        await call_unserved_methods(stack.channel, service, MARK, 10, metadata=ALICE)
    assert marked_series(MARK) == []


async def test_collections_models_and_failures_callers_name_make_no_series(stack: Stack) -> None:
    """Collection names, models and the statuses of failed hits are no label values: the
    per-hit outcome counts under the 17 status names."""
    for i in range(5):
        name = f"Probe{i}{MARK.replace('-', '')}"
        await create_books(stack, name, books=BOOKS[:2])
        stack.fake.by_model[f"{MARK}-fails-{i}"] = Behaviour.error(400 + i)
        for model in (f"{MARK}-{i}", f"{MARK}-fails-{i}"):
            response = await stack.stub.GenerativeSearch(
                gw_pb.GenerativeSearchRequest(
                    collection=name,
                    near_vector=ret_pb.NearVector(vector=vector(0)),
                    limit=2,
                    generate=gw_pb.Generate(single_prompt="Summarise {title}", model=model),
                ),
                metadata=ALICE,
            )
            assert len(response.hits) == 2
    codes = {
        sample.labels["code"]
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == "gensearch_gateway_generations_total"
    }
    assert codes <= {code.name for code in grpc.StatusCode}, codes
    assert "INVALID_ARGUMENT" in codes
    assert not any(  # the collections' and the models' names
        "probe" in value.lower()
        for family in REGISTRY.collect()
        for sample in family.samples
        for value in sample.labels.values()
    )
