"""Generation paths under an abusive or careless tenant: what one request may cost."""

from __future__ import annotations

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from google.protobuf import struct_pb2

from tests.gateway.conftest import ALICE, StackFactory
from tests.support.fake_openai import FakeOpenAI


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
