"""The grpcurl examples in docs/gateway.md parse as the requests they claim to be."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import json_format

from tests.gateway.conftest import ALICE, Stack, create_books
from tests.test_docs_grpcurl import grpcurl_json

DOC = Path(__file__).resolve().parents[2] / "docs" / "gateway.md"
EXAMPLE = re.compile(
    r"grpcurl -plaintext (?:-\S+ )*-H \"\$KEY\" (?:-H '[^']*' )*-d '(?P<body>.*?)'\s*(?:\\\n\s*)?"
    r"localhost:50050 (?P<method>\S+)",
    re.S,
)
MODULES = {"gateway": gw_pb, "memory": mem_pb, "retrieval": ret_pb, "generation": gen_pb}


def _examples() -> list[tuple[str, str]]:
    return [(m["method"], m["body"]) for m in EXAMPLE.finditer(DOC.read_text())]


def test_every_rpc_of_the_walkthrough_is_there() -> None:
    methods = {method.rsplit("/", 1)[1] for method, _ in _examples()}
    assert {"GenerativeSearch", "StreamGenerativeSearch", "Ask", "StreamAsk"} <= methods
    assert "Generate" in methods


@pytest.mark.parametrize(
    ("method", "body"),
    _examples(),
    ids=[f"{i}-{m.rsplit('/', 1)[1]}" for i, (m, _) in enumerate(_examples())],
)
def test_example_parses(method: str, body: str) -> None:
    service, name = method.rsplit("/", 1)
    module = MODULES[service.split(".")[1]]
    request_type = getattr(module, f"{name}Request")
    request = json_format.ParseDict(grpcurl_json(body, method), request_type())
    assert request.ByteSize() > 0


async def test_python_client_example_runs(stack: Stack) -> None:
    """The doc's Python client, pointed at the test stack (fake LLM), runs to the end."""
    await create_books(stack)
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert code is not None
    source = (
        code.group(1)
        .replace("localhost:50050", f"127.0.0.1:{stack.gateway.port}")
        .replace("Bearer alice-key", ALICE[0][1])
        .replace("asyncio.run(main())", "")
    )
    namespace: dict[str, object] = {"__name__": "doc_example"}
    exec(compile(source, "docs/gateway.md", "exec"), namespace)
    main = namespace["main"]
    assert callable(main)
    await main()
    conversations = await stack.memory.ListConversations(
        mem_pb.ListConversationsRequest(), metadata=ALICE
    )
    assert conversations.conversations[0].interaction_count == 2


def test_the_code_layout_names_every_module() -> None:
    package = DOC.parents[1] / "services" / "gateway"
    layout = DOC.read_text().split("## Code layout", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([\w/]+\.py)`", layout))
    modules = {
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if path != package / "__init__.py"  # empty
    }
    assert modules - named == set()
    assert named - modules == set()
