"""A search that sets none of its query's alternatives is a missing field, as a client in
any language reads it from ``grpc-status-details-bin``: INVALID_ARGUMENT with ErrorInfo
reason MISSING_FIELD on ``query`` (docs/operations.md: "neither of two alternatives").
Before, the reason was the generic INVALID_ARGUMENT, unlike every other field left unset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from tests.gateway.conftest import ALICE, Stack, create_books
from tests.support.rpc import error_info, failure_of


async def test_a_search_without_a_query_is_a_missing_field(stack: Stack) -> None:
    await create_books(stack)
    prompt = gw_pb.Generate(single_prompt="{title}")
    calls: dict[str, Callable[[], Any]] = {
        "Search": lambda: stack.retrieval.Search(
            ret_pb.SearchRequest(collection="Books"), metadata=ALICE
        ),
        "GenerativeSearch": lambda: stack.stub.GenerativeSearch(
            gw_pb.GenerativeSearchRequest(collection="Books", generate=prompt), metadata=ALICE
        ),
        "StreamGenerativeSearch": lambda: stack.stub.StreamGenerativeSearch(
            gw_pb.StreamGenerativeSearchRequest(collection="Books", generate=prompt),
            metadata=ALICE,
        ),
    }
    for name, call in calls.items():
        err = await failure_of(call())
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err.details())
        info = error_info(err)
        assert (info.domain, info.reason, dict(info.metadata)) == (
            "gensearch",
            "MISSING_FIELD",
            {"field": "query"},
        ), name
