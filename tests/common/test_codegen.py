"""gen/, the vendored protos and the generated TypeScript and Go clients must be exactly
what `make gen` produces."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2
from grpc_tools import protoc

from scripts import gen_clients
from scripts.vendor_protos import HEALTH, VENDORED

ROOT = Path(__file__).resolve().parents[2]


def _files(base: Path) -> set[str]:
    return {
        str(p.relative_to(base))
        for p in base.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_has_not_drifted(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh, committed = _files(tmp_path), _files(ROOT / "gen")
    assert fresh == committed, f"files differ: {sorted(fresh ^ committed)}; run `make gen`"
    changed = [f for f in sorted(fresh) if not filecmp.cmp(tmp_path / f, ROOT / "gen" / f, False)]
    assert not changed, f"stale generated files: {changed}; run `make gen`"


def test_generated_packages_import_as_their_proto_package() -> None:
    from gensearch.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
    from gensearch.memory.v1 import memory_service_pb2

    assert memory_service_pb2.DESCRIPTOR.package == "gensearch.memory.v1"
    assert gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"]
    assert hasattr(gateway_service_pb2_grpc, "GatewayServiceStub")


def _assert_same_tree(fresh_root: Path, committed_root: Path, hint: str) -> None:
    fresh, committed = _files(fresh_root), _files(committed_root)
    assert fresh == committed, f"files differ: {sorted(fresh ^ committed)}; {hint}"
    changed = [
        f for f in sorted(fresh) if not filecmp.cmp(fresh_root / f, committed_root / f, False)
    ]
    assert not changed, f"stale files: {changed}; {hint}"


def test_vendored_protos_have_not_drifted(tmp_path: Path) -> None:
    """protos/google/rpc and protos/grpc/health are what the installed packages hold."""
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "vendor_protos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for path in VENDORED:
        assert (tmp_path / path).read_bytes() == (ROOT / "protos" / path).read_bytes(), (
            f"protos/{path} is stale; run `make gen`"
        )


def test_every_proto_compiles_from_this_tree_alone(tmp_path: Path) -> None:
    """protoc needs nothing but protos/ (and the well-known types every protoc ships) for
    every file a client generates from, ours and the vendored ones."""
    protos = ROOT / "protos"
    files = sorted(str(p.relative_to(protos)) for p in protos.rglob("*.proto"))
    assert set(VENDORED) <= set(files)
    well_known = Path(protoc.__file__).parent / "_proto"
    out = tmp_path / "all.binpb"
    code = protoc.main(["grpc_tools.protoc", f"-I{protos}", f"-I{well_known}", f"-o{out}", *files])
    assert code == 0
    compiled = {f.name for f in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file}
    assert compiled == set(files)


def test_vendored_health_proto_is_the_package_descriptor(tmp_path: Path) -> None:
    """The health .proto written back from grpcio-health-checking's descriptor compiles to
    that same descriptor: every message, field, enum value, method and option."""
    out = tmp_path / "health.binpb"
    code = protoc.main(["grpc_tools.protoc", f"-I{ROOT / 'protos'}", f"-o{out}", HEALTH])
    assert code == 0
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    shipped = descriptor_pb2.FileDescriptorProto()
    health_pb2.DESCRIPTOR.CopyToProto(shipped)
    compiled.ClearField("name")
    shipped.ClearField("name")
    # protoc fills in json_name; a descriptor built into a _pb2 module leaves it out.
    messages = list(compiled.message_type)
    while messages:
        message = messages.pop()
        messages.extend(message.nested_type)
        for field in message.field:
            field.ClearField("json_name")
    assert compiled == shipped


def _client_plugins_or_skip(name: str) -> None:
    missing = gen_clients.missing_plugins(gen_clients.CLIENTS[name])
    if not missing:
        return
    reason = f"{', '.join(missing)} not installed: cannot regenerate the {name} client"
    # The TypeScript client is part of `make test` (which runs npm ci): in CI it must check.
    if (
        name == "typescript"
        and os.environ.get("CI")
        and not os.environ.get("GENSEARCH_ALLOW_SKIP_NODE")
    ):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.mark.parametrize("name", sorted(gen_clients.CLIENTS))
def test_generated_client_has_not_drifted(name: str, tmp_path: Path) -> None:
    _client_plugins_or_skip(name)
    gen_clients.generate(name, tmp_path)
    output = gen_clients.CLIENTS[name].output
    _assert_same_tree(tmp_path / output, ROOT / output, "run `make gen`")


def test_reason_lists_have_not_drifted(tmp_path: Path) -> None:
    """The TypeScript and Go clients' ErrorInfo reasons are what `make gen` writes from the
    Python client's error classes."""
    gen_clients.write_reasons(tmp_path)
    for listing in gen_clients.REASON_LISTS:
        fresh = (tmp_path / listing.path).read_text()
        committed = (ROOT / listing.path).read_text()
        assert fresh == committed, f"{listing.path} is stale; run `make gen`"
