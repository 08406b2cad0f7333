"""tilt.yaml and the Tiltfile: Tilt is not installable here, so check statically that the
settings name only things that exist and agree with the rendered dev overlay."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.dockerfile import copy_destinations, stages
from tests.deploy.manifests import REPO, container_ports, containers, render, workloads

TILT = yaml.safe_load((REPO / "tilt.yaml").read_text())
TILTFILE = (REPO / "Tiltfile").read_text()


def _dev() -> tuple[dict[str, Any], ...]:
    return render(TILT["kustomize"].removeprefix("deploy/"))


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def test_settings_shape() -> None:
    assert set(TILT) == {"allowed_contexts", "kustomize", "images", "resources"}
    # Local clusters only: Tilt refuses every other context.
    assert TILT["allowed_contexts"] == ["kind-gensearch", "docker-desktop", "minikube"]
    assert TILT["kustomize"] == "deploy/overlays/dev"
    assert (REPO / TILT["kustomize"] / "kustomization.yaml").is_file()


@pytest.mark.parametrize("image", TILT["images"], ids=lambda i: i["ref"])
def test_images_build_from_existing_files(image: dict[str, Any]) -> None:
    context = REPO / image["context"]
    dockerfile = REPO / image["dockerfile"]
    assert context.is_dir()
    assert dockerfile.is_file()
    assert image["target"] in stages(dockerfile)
    live = image.get("live_update", {})
    for path in live.get("fall_back_on", []):
        assert (context / path).exists(), path
    destinations = copy_destinations(dockerfile, image["target"])
    for step in live.get("sync", []):
        local = context / step["local"]
        assert local.is_dir(), step
        # Tilt only syncs files inside the build context.
        assert _inside(local, context), step
        # The remote path is where the image keeps that code, so the sync replaces it.
        assert destinations.get(step["local"].rstrip("/")) == step["remote"], step


def test_images_are_exactly_those_of_the_dev_overlay() -> None:
    used = {c["image"] for w in workloads(_dev()) for c in containers(w)}
    ours = {i["ref"] for i in TILT["images"]}
    assert ours <= used, "tilt.yaml builds an image nothing in the dev overlay runs"
    third_party = {image for image in used - ours if "/" in image or ":" in image}
    assert used - ours == third_party, (
        f"dev overlay runs images Tilt does not build: {used - ours - third_party}"
    )


def test_live_updated_image_runs_under_a_reloader() -> None:
    """A sync only helps if something restarts the process: in dev the services built from
    a live-updated image run under watchfiles, watching the synced paths."""
    for image in TILT["images"]:
        remotes = [s["remote"] for s in image.get("live_update", {}).get("sync", [])]
        if not remotes:
            continue
        for workload in workloads(_dev()):
            for c in containers(workload):
                if c["image"] == image["ref"]:
                    assert c["command"][0] == "watchfiles", workload["metadata"]["name"]
                    assert set(remotes) <= set(c["command"]), workload["metadata"]["name"]


def test_resources_are_the_dev_workloads() -> None:
    names = {w["metadata"]["name"] for w in workloads(_dev())}
    assert set(TILT["resources"]) == names


def test_resource_dependencies_exist_and_have_no_cycle() -> None:
    resources: dict[str, dict[str, Any]] = TILT["resources"]
    for name, resource in resources.items():
        for dep in resource.get("resource_deps", []):
            assert dep in resources, (name, dep)
    done: set[str] = set()
    pending = dict(resources)
    while pending:
        ready = [n for n, r in pending.items() if set(r.get("resource_deps", [])) <= done]
        assert ready, f"dependency cycle among {sorted(pending)}"
        for name in ready:
            done.add(name)
            del pending[name]
    expected = {
        "gateway": {"memory", "retrieval", "generation"},
        "memory": {"redis"},
        "retrieval": {"qdrant"},
        "generation": {"local-llm"},
    }
    for name, deps in expected.items():
        assert set(resources[name]["resource_deps"]) == deps, name


def test_port_forwards_target_container_ports() -> None:
    by_name = {w["metadata"]["name"]: w for w in workloads(_dev())}
    local_ports: list[int] = []
    for name, resource in TILT["resources"].items():
        for forward in resource.get("port_forwards", []):
            match = re.fullmatch(r"(\d+):(\d+)", str(forward))
            assert match, forward
            local_ports.append(int(match[1]))
            assert int(match[2]) in container_ports(by_name[name]), (name, forward)
    assert len(local_ports) == len(set(local_ports)), "two forwards share a local port"
    assert "50050:50050" in TILT["resources"]["gateway"]["port_forwards"]


def test_tiltfile_applies_tilt_yaml_and_nothing_else() -> None:
    tree = ast.parse(TILTFILE)  # Starlark's syntax is a subset of Python's
    assert "read_yaml('tilt.yaml')" in TILTFILE
    calls = {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert {
        "read_yaml",
        "allow_k8s_contexts",
        "k8s_yaml",
        "kustomize",
        "docker_build",
        "sync",
        "k8s_resource",
    } <= calls
    # No image, path, port or context is spelled out in the Tiltfile: the only string
    # literals are the settings file and the keys it is read with.
    keys: set[str] = set()

    def collect(value: Any) -> None:
        if isinstance(value, dict):
            keys.update(value)
            for item in value.values():
                collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)

    collect(TILT)
    literals = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    assert literals - keys == {"tilt.yaml"}


def test_dependency_changes_rebuild_instead_of_syncing() -> None:
    """What the builder installs dependencies from (pyproject.toml and the lock) makes Tilt
    rebuild the image: a synced lock would change nothing inside the container."""
    for image in TILT["images"]:
        live = image.get("live_update")
        if not live:
            continue
        builder = stages(REPO / image["dockerfile"])["builder"]
        copied = {
            part
            for keyword, args in builder.instructions
            if keyword == "COPY"
            for part in args.split()[:-1]
            if not part.startswith("--")
        }
        assert {"pyproject.toml", "requirements.lock"} <= copied
        assert copied <= set(live["fall_back_on"]) | {"README.md"}, image["ref"]
