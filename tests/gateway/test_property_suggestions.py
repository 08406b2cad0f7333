"""A property name the caller got wrong (a filter's, a template's {placeholder}) is
refused with the closest name of the caller's own collection, when one is close: in the
message ("did you mean 'year'?") and in ErrorInfo metadata ``suggestion``. Before, the
refusal named the unknown property alone. Never a name of another tenant's collection."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from tests.gateway.conftest import DIM, StackFactory, create_books, vector
from tests.retrieval.conftest import cond
from tests.support.rpc import error_info

KEYS = "alice@acme/admin:key-alice-acme,bob@globex/admin:key-bob-globex"
ALICE = (("authorization", "Bearer key-alice-acme"),)
BOB = (("authorization", "Bearer key-bob-globex"),)
EQ = ret_pb.OPERATOR_EQUAL


async def refusal(call: Any) -> tuple[str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    err = caught.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    info = error_info(err)
    assert info.reason == "UNKNOWN_PROPERTY", info
    return err.details() or "", dict(info.metadata)


def search(prop: str = "title", prompt: str = "Summarise {title}") -> Any:
    return gw_pb.GenerativeSearchRequest(
        collection="Books",
        near_vector=ret_pb.NearVector(vector=vector(0)),
        limit=2,
        filter=cond(prop, EQ, 1965),
        generate=gw_pb.Generate(single_prompt=prompt),
    )


async def test_a_misspelt_property_suggests_the_callers_own_closest_one(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(shared={"api_keys": KEYS})
    await create_books(stack, metadata=ALICE)  # title, body, year, tags
    # Bob's collection of the same name has a property close to Alice's typo.
    await stack.retrieval.CreateCollection(
        ret_pb.CreateCollectionRequest(
            collection=ret_pb.Collection(
                name="Books",
                properties=[ret_pb.Property(name="colour", data_type=ret_pb.DATA_TYPE_INT)],
                vectorizer=ret_pb.Vectorizer(kind=ret_pb.VECTORIZER_KIND_NONE, dimensions=DIM),
            )
        ),
        metadata=BOB,
    )
    g = stack.stub
    # A filter's property (checked by retrieval) and a template's (by the gateway).
    for request, field in (
        (search(prop="yeer"), "filter.condition.property"),
        (search(prompt="Summarise {titel}"), "generate.single_prompt"),
    ):
        details, metadata = await refusal(g.GenerativeSearch(request, metadata=ALICE))
        wanted = "year" if field.startswith("filter") else "title"
        assert metadata["field"] == field
        assert metadata["suggestion"] == wanted, metadata
        assert f"did you mean {wanted!r}?" in details, details
    # Nothing close: no suggestion, no guess.
    details, metadata = await refusal(g.GenerativeSearch(search(prop="zzz"), metadata=ALICE))
    assert "suggestion" not in metadata and "did you mean" not in details
    # Bob's "colour" is never offered to Alice, nor Alice's names to Bob.
    details, metadata = await refusal(g.GenerativeSearch(search(prop="color"), metadata=ALICE))
    assert "suggestion" not in metadata and "colour" not in details, details
    details, metadata = await refusal(
        g.GenerativeSearch(search(prop="color", prompt="{colour}"), metadata=BOB)
    )
    assert metadata["suggestion"] == "colour", metadata
    details, metadata = await refusal(
        g.GenerativeSearch(search(prop="colour", prompt="{titel}"), metadata=BOB)
    )
    assert "suggestion" not in metadata and "title" not in details, details
