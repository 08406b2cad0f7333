"""A prompt the gateway rendered and the generation service refuses as too long
(GENSEARCH_GENERATION_MAX_PROMPT_CHARS set below the gateway's MAX_RENDERED_PROMPT_CHARS)
names the field the caller sent, not generation's ``messages``: the gateway made those."""

from __future__ import annotations

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from tests.gateway.conftest import ALICE, DIM, StackFactory, create_books
from tests.support.rpc import bad_request_field, error_info, failure_of

LIMIT = 200
SETTING = "GENSEARCH_GENERATION_MAX_PROMPT_CHARS"
LONG = " Answer in one short sentence, plainly, without any preamble at all." * 4


async def test_generative_search_names_its_templates(stack_factory: StackFactory) -> None:
    stack = await stack_factory(generation_settings={"max_prompt_chars": LIMIT})
    await create_books(stack)
    response = await stack.stub.GenerativeSearch(
        gw_pb.GenerativeSearchRequest(
            collection="Books",
            near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
            limit=2,
            generate=gw_pb.Generate(single_prompt="About {title}." + LONG, grouped_task=LONG),
        ),
        metadata=ALICE,
    )
    errors = [hit.generation.error for hit in response.hits] + [response.grouped.error]
    assert [(e.status, e.reason) for e in errors] == [("INVALID_ARGUMENT", "PROMPT_TOO_LONG")] * 3
    for error, field in zip(
        errors, ["generate.single_prompt"] * 2 + ["generate.grouped_task"], strict=True
    ):
        assert error.message.startswith(f"{field}: "), error.message
        assert SETTING in error.message and f"at most {LIMIT}" in error.message
        assert "messages" not in error.message
    assert stack.fake.chat_requests == []


async def test_ask_names_llm_question(stack_factory: StackFactory) -> None:
    stack = await stack_factory(generation_settings={"max_prompt_chars": LIMIT})
    await create_books(stack)
    for call in (
        stack.stub.Ask(
            gw_pb.AskRequest(collection="Books", llm_question="Which is oldest?" + LONG),
            metadata=ALICE,
        ),
        stack.stub.StreamAsk(
            gw_pb.StreamAskRequest(collection="Books", llm_question="Which is oldest?" + LONG),
            metadata=ALICE,
        ),
    ):
        err = await failure_of(call)
        assert err.code().name == "INVALID_ARGUMENT"
        info = error_info(err)
        assert info.reason == "PROMPT_TOO_LONG"
        assert bad_request_field(err) == "llm_question"
        assert dict(info.metadata) | {"chars": ""} == {
            "field": "llm_question",
            "max_chars": str(LIMIT),
            "setting": SETTING,
            "service": "generation",
            "chars": "",
        }
        assert int(info.metadata["chars"]) > LIMIT
        assert "messages" not in (err.details() or "")
    assert stack.fake.chat_requests == []


async def test_generate_forwarded_still_names_messages(stack_factory: StackFactory) -> None:
    """Through the gateway's GenerationService the caller did send ``messages``."""
    stack = await stack_factory(generation_settings={"max_prompt_chars": LIMIT})
    stub = gen_grpc.GenerationServiceStub(stack.channel)
    err = await failure_of(
        stub.Generate(
            gen_pb.GenerateRequest(
                messages=[gen_pb.Message(role=gen_pb.ROLE_USER, content="Hello." + LONG)]
            ),
            metadata=ALICE,
        )
    )
    info = error_info(err)
    assert (err.code().name, info.reason, bad_request_field(err)) == (
        "INVALID_ARGUMENT",
        "PROMPT_TOO_LONG",
        "messages",
    )
    assert (info.metadata["max_chars"], info.metadata["setting"]) == (str(LIMIT), SETTING)
