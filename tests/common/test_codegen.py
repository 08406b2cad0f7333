"""gen/ must be exactly what `make gen` produces from protos/."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

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
