"""An Ask's system prompt of only whitespace: the gateway sent it as the first message and
the generation service refused the whole Ask naming ``messages[0].content``, a field the
caller never sent (after the call had been admitted against the LLM-calls quota)."""

from __future__ import annotations

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from tests.gateway.conftest import ALICE, Stack, create_books
from tests.support.rpc import bad_request_field, error_info, failure_of

BLANK = " \n\t "


async def test_a_blank_system_prompt_is_refused_naming_it(stack: Stack) -> None:
    await create_books(stack)
    for call in (
        stack.stub.Ask(
            gw_pb.AskRequest(collection="Books", llm_question="Which?", system_prompt=BLANK),
            metadata=ALICE,
        ),
        stack.stub.StreamAsk(
            gw_pb.StreamAskRequest(collection="Books", llm_question="Which?", system_prompt=BLANK),
            metadata=ALICE,
        ),
    ):
        err = await failure_of(call)
        assert err.code().name == "INVALID_ARGUMENT"
        assert bad_request_field(err) == "system_prompt"
        assert error_info(err).metadata["field"] == "system_prompt"
        assert "messages" not in (err.details() or "")
    assert stack.fake.chat_requests == []


async def test_a_collections_blank_system_prompt_is_refused_when_it_is_made(
    stack: Stack,
) -> None:
    # Before, retrieval stored it as it was given and every Ask sent it as the system
    # prompt. (The gateway still reads one stored before as unset, the default.)
    err = await failure_of(
        create_books(
            stack,
            generative=ret_pb.GenerativeConfig(
                provider="fake", model="fake-model", system_prompt=BLANK
            ),
        )
    )
    assert err.code().name == "INVALID_ARGUMENT"
    assert error_info(err).metadata["field"] == "collection.generative.system_prompt"
    assert stack.fake.chat_requests == []
