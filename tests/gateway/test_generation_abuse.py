"""Generation paths under an abusive or careless tenant: what one request may cost."""

from __future__ import annotations

import grpc
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from google.protobuf import struct_pb2
from google.protobuf.message import Message

from tests.gateway.conftest import (
    ALICE,
    Stack,
    StackFactory,
    books_search,
    books_stream_search,
)
from tests.support.fake_openai import FakeOpenAI
from tests.support.rpc import bad_request_field, error_info, failure_of


async def test_a_request_s_prompts_together_stay_within_their_bound(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    """A template naming a property many times renders each hit's prompt up to
    MAX_RENDERED_PROMPT_CHARS from a small object: 100 hits of 1 KB rendered 100 million
    characters in the gateway (and as many sent upstream), ~1000 times the request. The
    prompts of one request together are bounded (MAX_RENDERED_REQUEST_CHARS): the hits past
    it fail on their own, PROMPT_TOO_LONG naming the setting, with no call."""
    stack = await stack_factory(max_rendered_prompt_chars=10_000, max_rendered_request_chars=35_000)
    objects = []
    for i in range(10):
        props = struct_pb2.Struct()
        props.update({"body": f"{i}" + "x" * 99})
        objects.append(props)
    template = "{body}" * 99  # 9,900 characters a hit, from a 100-character value
    response = await stack.stub.GenerateOnObjects(
        gw_pb.GenerateOnObjectsRequest(
            inline=gw_pb.InlineObjects(objects=objects),
            generate=gw_pb.Generate(single_prompt=template),
        ),
        metadata=ALICE,
        timeout=30,
    )
    results = [h.generation for h in response.hits]
    assert [g.HasField("error") for g in results] == [False] * 3 + [True] * 7
    for g in results[3:]:
        assert (g.error.status, g.error.reason) == ("INVALID_ARGUMENT", "PROMPT_TOO_LONG")
        assert g.error.metadata["field"] == "generate.single_prompt"
        assert g.error.metadata["setting"] == "GENSEARCH_GATEWAY_MAX_RENDERED_REQUEST_CHARS"
        assert g.error.metadata["max_chars"] == "35000"
        assert g.upstream_calls == 0
    assert len(fake.chat_requests) == 3
    assert response.upstream_calls == 3


async def test_a_string_that_is_not_utf8_is_named_through_the_gateway(stack: Stack) -> None:
    """Hand-built wire bytes with a string that is not UTF-8 (a template, an inline
    object's value or key, a fallback's model) were INVALID_ARGUMENT / MALFORMED_REQUEST
    naming only the message type; now the status names the field, with the path the
    gateway's other errors use (``inline.objects[1].title``), and no call is made."""
    mark = b"\xffM\xfeK"  # as long as "MARK": every length prefix still holds
    inline = [_props({"title": "a"}), _props({"title": "MARK", "tags": ["x", "y"]})]
    cases: list[tuple[str, Message, str]] = [
        (
            "GenerateOnObjects",
            gw_pb.GenerateOnObjectsRequest(
                inline=gw_pb.InlineObjects(objects=inline),
                generate=gw_pb.Generate(single_prompt="{title}"),
            ),
            "inline.objects[1].title",
        ),
        (
            "GenerateOnObjects",
            gw_pb.GenerateOnObjectsRequest(
                inline=gw_pb.InlineObjects(objects=[_props({"title": "a", "MARK": "b"})]),
                generate=gw_pb.Generate(single_prompt="{title}"),
            ),
            "inline.objects[0]",
        ),
        (
            "StreamGenerateOnObjects",
            gw_pb.StreamGenerateOnObjectsRequest(
                inline=gw_pb.InlineObjects(objects=[_props({"tags": ["x", "MARK"]})]),
                generate=gw_pb.Generate(grouped_task="sum up"),
            ),
            "inline.objects[0].tags[1]",
        ),
        (
            "GenerativeSearch",
            books_search(single_prompt="{title} MARK"),
            "generate.single_prompt",
        ),
        (
            "StreamGenerativeSearch",
            books_stream_search(
                grouped_task="sum up", fallback=[gen_pb.ModelChoice(provider="fake", model="MARK")]
            ),
            "generate.fallback[0].model",
        ),
        ("Ask", gw_pb.AskRequest(collection="Books", llm_question="why MARK"), "llm_question"),
    ]
    for method, request, field in cases:
        data = request.SerializeToString().replace(b"MARK", mark)
        path = f"/gensearch.gateway.v1.GatewayService/{method}"
        if method.startswith("Stream"):
            call: object = stack.channel.unary_stream(path)(data, metadata=ALICE, timeout=10)
        else:
            call = stack.channel.unary_unary(path)(data, metadata=ALICE, timeout=10)
        caught = await failure_of(call)
        assert caught.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, caught.details())
        info = error_info(caught)
        assert info.reason == "MALFORMED_REQUEST", method
        assert info.metadata["message_type"] == request.DESCRIPTOR.full_name
        assert (info.metadata["field"], bad_request_field(caught)) == (field, field), method
        assert f"{field} is not valid UTF-8" in (caught.details() or ""), method
    assert stack.fake.chat_requests == []
    # The gateway still answers.
    response = await stack.stub.GenerateOnObjects(
        gw_pb.GenerateOnObjectsRequest(
            inline=gw_pb.InlineObjects(objects=[_props({"title": "a"})]),
            generate=gw_pb.Generate(single_prompt="{title}"),
        ),
        metadata=ALICE,
        timeout=30,
    )
    assert response.hits[0].generation.result


def _props(values: dict[str, object]) -> struct_pb2.Struct:
    props = struct_pb2.Struct()
    props.update(values)
    return props
