"""No request field of any service can send a call somewhere the operator did not choose,
except the fields checked against the operator's allowlist (services/common/egress.py).

Every string field reachable from any RPC's request message whose name says it holds a
URL or a host is listed here with the code that checks it; a new one fails this test until
it is checked and listed (a per-request LLM base URL, say, in the generation service).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from gensearch.gateway.v1 import gateway_service_pb2
from gensearch.generation.v1 import generation_service_pb2
from gensearch.memory.v1 import memory_service_pb2
from gensearch.retrieval.v1 import retrieval_service_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

FILES = (gateway_service_pb2, generation_service_pb2, memory_service_pb2, retrieval_service_pb2)
URLISH = re.compile(r"(^|_)(url|uri|urls|endpoint|host|hostname|address|addr|domain)(_|$)")
# field -> where it is checked against the allowlist
CHECKED = {
    "gensearch.retrieval.v1.Vectorizer.base_url": "services/retrieval/endpoints.py",
    # A per-request LLM base URL (issue 13): generation's registry.at_caller_url, and its
    # clients' connector on every connection; the gateway checks it first (models.py).
    "gensearch.generation.v1.GenerateRequest.base_url": "services/generation/registry.py",
    "gensearch.generation.v1.StreamGenerateRequest.base_url": "services/generation/registry.py",
    "gensearch.gateway.v1.Generate.base_url": "services/gateway/models.py",
    # A caller's /v1/rerank endpoint (issue 15): checked when the search is planned, and on
    # every connection by the caller clients' connector.
    "gensearch.retrieval.v1.Rerank.base_url": "services/retrieval/rerankers.py",
}


def url_fields(message: Descriptor, seen: set[str]) -> Iterator[str]:
    if message.full_name in seen:
        return
    seen.add(message.full_name)
    for field in message.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            yield from url_fields(field.message_type, seen)
        elif field.type == FieldDescriptor.TYPE_STRING and URLISH.search(field.name):
            yield field.full_name


def test_every_url_a_request_can_carry_is_checked() -> None:
    found: set[str] = set()
    methods = 0
    for module in FILES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                methods += 1
                found.update(url_fields(method.input_type, set()))
    assert methods > 20  # every service was walked
    assert found == set(CHECKED)


def test_the_generation_service_takes_only_its_checked_base_url() -> None:
    """Provider base URLs come from the operator's settings, or from a request's
    ``base_url`` on the operator's allowlist (tests/generation/test_structured_and_sampling.py
    shows it refused off the list and never given the operator's key)."""
    service = generation_service_pb2.DESCRIPTOR.services_by_name["GenerationService"]
    for method in service.methods:
        for name in url_fields(method.input_type, set()):
            assert name.endswith("GenerateRequest.base_url"), name
            assert name in CHECKED
