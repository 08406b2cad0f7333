"""Every grpcurl example in README.md and docs/*.md sends a request grpcurl accepts.

Each ``-d`` body is parsed as the named method's request, the way grpcurl v1.8.6 (the dev
extra's) reads it: enum values by name, a ``FieldMask`` only as ``{"paths": [...]}`` (it
rejects the string form that proto3 JSON, and so Python's parser, also accepts). Headers
must be ones our services read. tests/gateway/test_docs.py runs the gateway walk-through's
examples against a stack; this catches the others.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import json_format

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MODULES = {"gateway": gw_pb, "memory": mem_pb, "retrieval": ret_pb, "generation": gen_pb}
# A command: "grpcurl" up to the first newline outside quotes and not escaped.
COMMAND = re.compile(r"grpcurl((?:[^'\n\\]|'[^']*'|\\\n|\\)*)")
SERVICE_VAR = re.compile(r"^(\w+)=(gensearch\.\w+\.v1\.\w+)$", re.M)
# A method of ours, by name or through a shell variable (")" closes a "$(grpcurl …)").
METHOD = re.compile(r"^(\$\w+|gensearch\.\w+\.v1\.\w+)/(\w+)\)?$")
# What a header may be: a shell variable set to one of these, or one of these literally.
HEADER = re.compile(
    r"^(\$\w+|authorization: Bearer .+|x-[a-z]+-api-key: .+|x-gensearch-[a-z-]+: .+)$"
)
MASK_KEYS = {"update_mask", "updateMask"}


def _examples() -> list[tuple[str, str, list[str], str]]:
    """(where, method, headers, body) of every grpcurl command that sends a body."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        services = dict(SERVICE_VAR.findall(text))
        for match in COMMAND.finditer(text):
            words = shlex.split(match.group(1).replace("\\\n", " "), comments=True)
            if "-d" not in words:
                continue
            body = words[words.index("-d") + 1]
            if not body.startswith("{"):  # stdin (-d @) or jq's output: run by test_readme
                continue
            headers = [words[i + 1] for i, word in enumerate(words) if word == "-H"]
            methods = [m.groups() for w in words if (m := METHOD.match(w))]
            if not methods:  # grpc.health.v1, or prose quoting a command's shape
                continue
            service, name = methods[0]
            method = f"{services.get(service[1:], service)}/{name}"
            where = f"{doc.name}:{text[: match.start()].count(chr(10)) + 1}"
            found.append((where, method, headers, body))
    return found


def grpcurl_json(body: str, where: str) -> dict[str, Any]:
    """A doc's ``-d`` body as Python's parser reads what grpcurl sends for it."""
    # Shell substitutions stay literal after shlex: ids and base64 bytes stand in for them.
    body = re.sub(r"\$\(printf [^)]*\)", "RHVuZS4=", body)
    body = body.replace("0190…", "0190-example")
    parsed: dict[str, Any] = _masks_as_grpcurl_reads_them(json.loads(body), where)
    return parsed


def _masks_as_grpcurl_reads_them(value: Any, where: str) -> Any:
    """The body with each FieldMask object turned into proto3's string form, after
    checking it is an object (grpcurl: "expecting start of JSON object")."""
    if isinstance(value, list):
        return [_masks_as_grpcurl_reads_them(v, where) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        if key in MASK_KEYS:
            assert isinstance(item, dict) and set(item) == {"paths"}, (
                f'{where}: grpcurl needs {key} as {{"paths": [...]}}, not {item!r}'
            )
            item = ",".join(_camel(path) for path in item["paths"])
        out[key] = _masks_as_grpcurl_reads_them(item, where)
    return out


def _camel(path: str) -> str:
    # proto3's string form of a FieldMask path, which is what Python's parser reads.
    return ".".join(re.sub(r"_([a-z])", lambda m: m[1].upper(), part) for part in path.split("."))


EXAMPLES = _examples()


def test_the_examples_are_found() -> None:
    where = {w.split(":")[0] for w, *_ in EXAMPLES}
    assert {"README.md", "gateway.md", "memory.md", "retrieval.md", "operations.md"} <= where


@pytest.mark.parametrize(
    ("where", "method", "headers", "body"), EXAMPLES, ids=[e[0] for e in EXAMPLES]
)
def test_example_is_a_request_grpcurl_sends(
    where: str, method: str, headers: list[str], body: str
) -> None:
    for header in headers:
        assert HEADER.match(header), f"{where}: no service reads the header {header!r}"
    service, name = method.rsplit("/", 1)
    request_type = getattr(MODULES[service.split(".")[1]], f"{name}Request")
    json_format.ParseDict(grpcurl_json(body, where), request_type())


SERVICE_PORTS = re.compile(
    r"grpcurl[^\n]*?localhost:(50051|50052|50053)|^\}' localhost:(50051|50052|50053)", re.M
)


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_a_walkthrough_on_a_services_own_port_says_to_call_the_gateway_under_up(
    doc: Path,
) -> None:
    """Under `gensearch up` (`make run`) memory, retrieval and generation take calls from
    the gateway alone (UNAUTHENTICATED / MISSING_INTERNAL_TOKEN on their own ports). A doc
    whose grpcurl examples call such a port says so, and where to call instead. Before,
    retrieval.md's and generation.md's walk-throughs failed so after `make run` without a
    word of it (memory.md had the note)."""
    text = doc.read_text(encoding="utf-8")
    if not SERVICE_PORTS.search(text):
        return
    assert re.search(r"under `gensearch up`[^.]*\bgateway\b[^.]*50050", text, re.S), (
        f"{doc.name}: grpcurl on a service's own port, and no word that under "
        "`gensearch up` the gateway (port 50050) is the one to call"
    )
