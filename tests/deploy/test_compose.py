"""compose.yaml runs what deploy/overlays/dev runs: the same images, commands, settings,
secret names, ports and dependencies (checked against the rendered overlay and tilt.yaml),
and its gRPC health check works. `docker compose config` validates it where the compose
plugin is installed (no Docker engine is needed for that)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.deploy.dockerfile import stages
from tests.deploy.manifests import (
    REPO,
    SERVICES,
    Doc,
    config,
    container,
    container_ports,
    find,
    named_ports,
    of_kind,
    render,
    workloads,
)

COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text())
TILT: dict[str, Any] = yaml.safe_load((REPO / "tilt.yaml").read_text())
OURS = tuple(SERVICES)  # gateway, memory, retrieval, generation
# ${NAME:-default}: a value the environment may set (compose's interpolation).
DEFAULTED = re.compile(r"\$\{(?P<name>\w+):-(?P<default>[^}]*)\}")


def _dev() -> tuple[Doc, ...]:
    return render("overlays/dev")


def _workload(name: str, docs: tuple[Doc, ...] | None = None) -> Doc:
    for workload in workloads(docs or _dev()):
        if workload["metadata"]["name"] == name:
            return workload
    raise AssertionError(f"no workload {name!r}")


def _env_file(path: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in (REPO / path).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value
    return env


def _compose_env(service: dict[str, Any]) -> dict[str, str]:
    """The environment compose gives a container: its env files in order, then
    ``environment`` (with each ${NAME:-default} at its default)."""
    env: dict[str, str] = {}
    for path in service.get("env_file", []):
        env.update(_env_file(path))
    for key, value in (service.get("environment") or {}).items():
        match = DEFAULTED.fullmatch(str(value))
        env[key] = match["default"] if match else str(value)
    return env


def _k8s_env(workload: Doc, docs: tuple[Doc, ...]) -> dict[str, str]:
    """What the workload's main container sees: envFrom (the ConfigMap, placeholder Secrets)
    then env."""
    env: dict[str, str] = {}
    main = container(workload)
    for source in main.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config(docs))
        if "secretRef" in source:
            secret = find(docs, "Secret", source["secretRef"]["name"])
            for key, value in (secret.get("data") or {}).items():
                env[key] = base64.b64decode(value).decode()
    for item in main.get("env", []):
        env[item["name"]] = item.get("value", "")
    return env


def test_services_are_the_dev_workloads() -> None:
    assert set(COMPOSE["services"]) == {w["metadata"]["name"] for w in workloads(_dev())}


@pytest.mark.parametrize("name", sorted(COMPOSE["services"]))
def test_images_are_those_of_the_dev_overlay(name: str) -> None:
    service = COMPOSE["services"][name]
    assert service["image"] == container(_workload(name))["image"]
    build = service.get("build")
    if build:
        dockerfile = REPO / build["context"] / build["dockerfile"]
        assert build["target"] in stages(dockerfile)
        # The images Tilt builds, under the same names.
        assert service["image"] in {image["ref"] for image in TILT["images"]}


@pytest.mark.parametrize("name", sorted(COMPOSE["services"]))
def test_commands_are_those_of_the_manifests(name: str) -> None:
    service = COMPOSE["services"][name]
    # Our services: the base command (the dev overlay wraps it in watchfiles for Tilt's
    # live update, which compose does not do).
    main = container(_workload(name, render("base") if name in OURS else None))
    expected = main.get("command", []) + main.get("args", [])
    # Kubernetes expands $(NAME) from the container's env (Redis's maxmemory); compose
    # does not, so its command holds the value.
    env = {e["name"]: e.get("value", "") for e in main.get("env", [])}
    expected = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg) for arg in expected]
    assert service.get("command", []) == expected


@pytest.mark.parametrize("name", OURS)
def test_environment_is_that_of_the_manifests(name: str) -> None:
    """The same names with the same values: the ConfigMap from the same env files, the
    Secrets' placeholders as the defaults of ${NAME:-...}."""
    docs = _dev()
    assert _compose_env(COMPOSE["services"][name]) == _k8s_env(_workload(name, docs), docs)


def test_third_party_environment_is_that_of_the_manifests() -> None:
    for name in ("redis", "qdrant", "local-llm"):
        expected = {e["name"]: e["value"] for e in container(_workload(name)).get("env", [])}
        assert _compose_env(COMPOSE["services"][name]) == expected, name


def test_secret_names_come_from_the_kustomization() -> None:
    """Every key of every placeholder Secret a service reads is settable from outside."""
    secrets = {s["metadata"]["name"]: s for s in of_kind(_dev(), "Secret")}
    for name in OURS:
        environment = COMPOSE["services"][name].get("environment") or {}
        for source in container(_workload(name)).get("envFrom", []):
            if "secretRef" in source:
                for key in secrets[source["secretRef"]["name"]].get("data") or {}:
                    match = DEFAULTED.fullmatch(str(environment.get(key)))
                    assert match and match["name"] == key, (name, key)


def _published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    found = []
    for port in service.get("ports", []):
        host, local, target = str(port).split(":")
        found.append((host, int(local), int(target)))
    return found


def test_ports_are_tilts_forwards_on_loopback() -> None:
    forwards = {
        name: {tuple(int(p) for p in str(f).split(":")) for f in r.get("port_forwards", [])}
        for name, r in TILT["resources"].items()
    }
    for name, service in COMPOSE["services"].items():
        published = _published(service)
        # Published on loopback only, like a port-forward.
        assert all(host == "127.0.0.1" for host, _, _ in published), name
        assert {(local, target) for _, local, target in published} == forwards.get(name, set())
        assert {target for _, _, target in published} <= container_ports(_workload(name))


def test_dependencies_are_tilts() -> None:
    for name, service in COMPOSE["services"].items():
        deps = set(service.get("depends_on") or {})
        assert deps == set(TILT["resources"].get(name, {}).get("resource_deps", [])), name


@pytest.mark.parametrize("name", OURS)
def test_health_checks_probe_the_grpc_port(name: str) -> None:
    test = COMPOSE["services"][name]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert int(test[4]) == named_ports(_workload(name))["grpc"] == SERVICES[name][2]


def test_services_run_as_the_pods_do() -> None:
    for name in (*OURS, "local-llm"):
        service = COMPOSE["services"][name]
        security = container(_workload(name, render("base") if name in OURS else None))[
            "securityContext"
        ]
        assert service["user"] == f"{security['runAsUser']}:{security['runAsGroup']}", name
        assert service["read_only"] is security["readOnlyRootFilesystem"], name
        assert service["cap_drop"] == security["capabilities"]["drop"], name


def test_stop_grace_periods_are_the_pods() -> None:
    for name, service in COMPOSE["services"].items():
        workload = _workload(name)
        seconds = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert service["stop_grace_period"] == f"{seconds}s", name


def test_generation_answers_to_the_gateways_headless_name() -> None:
    address = config(_dev())["GENSEARCH_GATEWAY_GENERATION_ADDR"]
    host = address.removeprefix("dns:///").rsplit(":", 1)[0]
    aliases = COMPOSE["services"]["generation"]["networks"]["default"]["aliases"]
    assert host in aliases


async def _health_check_exit(status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> int:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set("", status)
    try:
        snippet = COMPOSE["services"]["gateway"]["healthcheck"]["test"][3]
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", snippet, str(port))
        return await asyncio.wait_for(proc.wait(), 60)
    finally:
        await server.stop(0)


async def test_health_check_passes_only_when_serving() -> None:
    assert await _health_check_exit(health_pb2.HealthCheckResponse.SERVING) == 0
    assert await _health_check_exit(health_pb2.HealthCheckResponse.NOT_SERVING) != 0


def _compose() -> list[str]:
    """The docker compose CLI: the plugin, or the standalone v2 binary."""
    docker = shutil.which("docker")
    if docker:
        plugin = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if plugin.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone:
        version = subprocess.run([standalone, "version"], capture_output=True, check=False)
        if b"v2." in version.stdout:
            return [standalone]
    pytest.skip("docker compose v2 is not installed (neither the plugin nor the binary)")


def test_docker_compose_config_accepts_it() -> None:
    """Compose's own reading of the file (validation, env files, merge keys, defaults)
    gives each service the environment of its pod."""
    proc = subprocess.run(
        [*_compose(), "-f", str(REPO / "compose.yaml"), "config", "--format", "json"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        # Unset variables take the placeholder defaults, as in the manifests.
        env={"PATH": os.environ.get("PATH", "")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    resolved = json.loads(proc.stdout)["services"]
    assert set(resolved) == set(COMPOSE["services"])
    docs = _dev()
    for name in OURS:
        environment = {k: str(v) for k, v in resolved[name]["environment"].items()}
        assert environment == _k8s_env(_workload(name, docs), docs), name
