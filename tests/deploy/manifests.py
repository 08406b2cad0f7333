"""Render the kustomize overlays with ``kubectl kustomize`` and look things up in them."""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = ("dev", "prod")
# Bundled schema version used for offline validation: a release most clusters run today
# (every field the manifests use is GA there, e.g. gRPC probes since 1.27).
K8S_VERSION = "1.30.0"

# The conventions table: service -> (settings module, class, gRPC port, metrics port).
SERVICES: dict[str, tuple[str, str, int, int]] = {
    "gateway": ("services.gateway.settings", "GatewaySettings", 50050, 9090),
    "memory": ("services.memory.settings", "MemorySettings", 50051, 9091),
    "retrieval": ("services.retrieval.settings", "RetrievalSettings", 50052, 9092),
    "generation": ("services.generation.settings", "GenerationSettings", 50053, 9093),
}
WORKLOAD_KINDS = ("Deployment", "StatefulSet")

Doc = dict[str, Any]


def kubectl() -> str:
    found = shutil.which("kubectl") or (
        "/usr/bin/kubectl" if Path("/usr/bin/kubectl").exists() else None
    )
    if found is None:
        reason = "kubectl is not installed: cannot render the kustomize overlays"
        # In CI the deploy checks are part of what must pass; skipping needs a decision.
        if os.environ.get("CI") and not os.environ.get("GENSEARCH_ALLOW_SKIP_KUBECTL"):
            pytest.fail(reason + " (set GENSEARCH_ALLOW_SKIP_KUBECTL=1 to skip deliberately)")
        pytest.skip(reason)
    return found


@functools.cache
def _render(path: str, binary: str) -> tuple[Doc, ...]:
    proc = subprocess.run(
        [binary, "kustomize", str(DEPLOY / path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"kubectl kustomize deploy/{path} failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def render(path: str) -> tuple[Doc, ...]:
    """The documents of ``deploy/<path>`` (``base``, ``overlays/dev`` ...)."""
    return _render(path, kubectl())


def of_kind(docs: tuple[Doc, ...], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def find(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} named {name!r}")


def workloads(docs: tuple[Doc, ...]) -> list[Doc]:
    return [d for d in docs if d["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Doc) -> Iterator[Doc]:
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def container(workload: Doc) -> Doc:
    """The main (first) container."""
    main: Doc = pod_spec(workload)["containers"][0]
    return main


def named_ports(workload: Doc) -> dict[str, int]:
    return {
        p["name"]: p["containerPort"]
        for c in containers(workload)
        for p in c.get("ports", [])
        if "name" in p
    }


def container_ports(workload: Doc) -> set[int]:
    return {p["containerPort"] for c in containers(workload) for p in c.get("ports", [])}


def pod_labels(workload: Doc) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: Doc | None, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels + matchExpressions)."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def service_selects(service: Doc, workload: Doc) -> bool:
    selector = service["spec"].get("selector") or {}
    return bool(selector) and selects({"matchLabels": selector}, pod_labels(workload))


def config(docs: tuple[Doc, ...]) -> dict[str, str]:
    """The data of the (hash-suffixed) gensearch-config ConfigMap."""
    maps = [
        d
        for d in of_kind(docs, "ConfigMap")
        if d["metadata"]["name"].startswith("gensearch-config")
    ]
    assert len(maps) == 1, [m["metadata"]["name"] for m in maps]
    data: dict[str, str] = maps[0]["data"]
    return data


def settings_class(service: str) -> type[Any]:
    """``services.<service>.settings.<Class>``; skips while another engineer writes it."""
    module_name, class_name, _, _ = SERVICES[service]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        pytest.skip(f"{module_name} is not importable yet: {err}")
    cls: type[Any] = getattr(module, class_name)
    return cls
