"""The kustomize base and overlays: they render, pass strict schema validation offline, and
agree with the services' own settings (ports, env names, probes, images)."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, get_args
from urllib.parse import urlsplit

import kubernetes_validate
import pytest

from services.common.releases import settle_wait
from services.common.tracing import flush_timeout
from services.gateway.settings import GatewaySettings
from services.generation.settings import GenerationSettings
from services.memory.indexer import CLOSE_WAIT_SECONDS
from tests.deploy.manifests import (
    K8S_VERSION,
    OVERLAYS,
    REPO,
    SERVICES,
    Doc,
    config,
    container,
    container_ports,
    containers,
    find,
    named_ports,
    of_kind,
    pod_labels,
    pod_spec,
    render,
    selects,
    service_selects,
    settings_class,
    workloads,
)
from tests.deploy.netpol import Endpoint, can_connect

ALL = ("base", *(f"overlays/{o}" for o in OVERLAYS))
OUR_IMAGES = {"gensearch", "gensearch-llm"}
PLACEHOLDER = "CHANGE-ME"


def _image_name(image: str) -> str:
    """'registry/x/gensearch:0.1.0' -> 'registry/x/gensearch'."""
    name = image.split("@", 1)[0]
    return name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name


def _env(docs: tuple[Doc, ...], secrets: bool = True) -> dict[str, str]:
    """What a service container sees: the ConfigMap, plus the placeholder Secrets if any."""
    import base64

    env = dict(config(docs))
    if secrets:
        for secret in of_kind(docs, "Secret"):
            for key, value in (secret.get("data") or {}).items():
                env[key] = base64.b64decode(value).decode()
    return env


# --- rendering and schemas -------------------------------------------------------------


@pytest.mark.parametrize("path", ALL)
def test_renders_and_validates_strictly(path: str) -> None:
    docs = render(path)
    assert docs
    seen: set[tuple[str, str]] = set()
    for doc in docs:
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
        # strict: unknown fields are errors too (a typo is not silently ignored).
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_validation_would_catch_a_mistake() -> None:
    """Guard against a validator that accepts anything: a probe on a named port is
    invalid for gRPC probes, and an unknown field fails strict mode."""
    deployment = dict(find(render("base"), "Deployment", "gateway"))
    broken = {
        **deployment,
        "spec": {
            **deployment["spec"],
            "template": {
                **deployment["spec"]["template"],
                "spec": {
                    **pod_spec(deployment),
                    "containers": [
                        {**container(deployment), "readinessProbe": {"grpc": {"port": "grpc"}}}
                    ],
                },
            },
        },
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    typo = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)


@pytest.mark.parametrize("path", ALL)
def test_every_object_is_part_of_gensearch(path: str) -> None:
    for doc in render(path):
        if doc["kind"] == "Namespace":
            continue
        assert doc["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "gensearch"


# --- security and resources ------------------------------------------------------------


def _live_updated(workload: Doc) -> bool:
    """Dev only: the four services run under watchfiles so Tilt can sync code into /app."""
    return container(workload).get("command", [None])[0] == "watchfiles"


@pytest.mark.parametrize("path", ALL)
def test_every_workload_is_hardened_and_bounded(path: str) -> None:
    docs = render(path)
    accounts = {d["metadata"]["name"] for d in of_kind(docs, "ServiceAccount")}
    assert workloads(docs)
    for workload in workloads(docs):
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, name
        assert pod_sc["runAsUser"] == 10001, name
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["serviceAccountName"] in accounts, name
        assert spec["automountServiceAccountToken"] is False, name
        for c in containers(workload):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["runAsUser"] == 10001, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
            if path == "overlays/dev" and _live_updated(workload):
                assert sc["readOnlyRootFilesystem"] is False, name
            else:
                assert sc["readOnlyRootFilesystem"] is True, name
            for bound in ("requests", "limits"):
                assert set(c["resources"][bound]) >= {"cpu", "memory"}, (name, bound)
            # A read-only root needs somewhere to write temp files.
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, name
            image = c["image"]
            if _image_name(image).rsplit("/", 1)[-1] not in OUR_IMAGES:
                tag = image.rsplit(":", 1)[-1] if ":" in image else ""
                assert tag and tag != "latest", f"{name}: third-party image {image} is not pinned"


def test_only_dev_live_update_relaxes_the_root_filesystem() -> None:
    relaxed = {w["metadata"]["name"] for w in workloads(render("overlays/dev")) if _live_updated(w)}
    assert relaxed == set(SERVICES)
    for path in ("base", "overlays/prod"):
        assert not any(_live_updated(w) for w in workloads(render(path)))


# --- the four services agree with their settings ----------------------------------------


@pytest.mark.parametrize("path", ALL)
@pytest.mark.parametrize("service", list(SERVICES))
def test_ports_probes_and_services_agree(path: str, service: str) -> None:
    docs = render(path)
    _, _, grpc_port, metrics_port = SERVICES[service]
    env = config(docs)
    deployment = find(docs, "Deployment", service)
    ports = named_ports(deployment)
    assert ports["grpc"] == grpc_port == int(env[f"GENSEARCH_{service.upper()}_PORT"])
    assert ports["metrics"] == metrics_port == int(env[f"GENSEARCH_{service.upper()}_METRICS_PORT"])
    main = container(deployment)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert main[probe]["grpc"] == {"port": grpc_port}, probe
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(metrics_port)
    svc = find(docs, "Service", service)
    assert service_selects(svc, deployment)
    by_name = {p["name"]: p for p in svc["spec"]["ports"]}
    assert by_name["grpc"]["port"] == grpc_port and by_name["grpc"]["targetPort"] == "grpc"
    assert by_name["metrics"]["port"] == metrics_port
    assert by_name["metrics"]["targetPort"] == "metrics"
    refs = [ref["name"] for e in main["envFrom"] for ref in e.values()]
    assert any(r.startswith("gensearch-config") for r in refs)
    assert "gensearch-auth" in refs


@pytest.mark.parametrize("service", list(SERVICES))
def test_settings_defaults_match_the_manifests(service: str) -> None:
    cls = settings_class(service)
    _, _, grpc_port, metrics_port = SERVICES[service]
    assert cls.model_fields["port"].default == grpc_port
    assert cls.model_fields["metrics_port"].default == metrics_port
    ports = named_ports(find(render("base"), "Deployment", service))
    assert ports == {"grpc": grpc_port, "metrics": metrics_port}


@pytest.mark.parametrize("path", ["base", "overlays/prod"])
@pytest.mark.parametrize("service", list(SERVICES))
def test_command_runs_the_service_module(path: str, service: str) -> None:
    main = container(find(render(path), "Deployment", service))
    assert main["command"] == ["python", "-m", f"services.{service}"]
    assert (REPO / "services" / service / "__main__.py").is_file()


@pytest.mark.parametrize("path", ALL)
def test_every_gensearch_variable_is_a_setting(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same check every service logs at start (services.common.settings), with all
    four services' settings loaded from what the pods get."""
    from services.common.settings import unknown_variables

    env = _env(render(path))
    _set_environment(monkeypatch, env)
    loaded = [settings_class(service)() for service in SERVICES]
    unknown = unknown_variables(*loaded, environ=env)
    assert not unknown, f"ConfigMap/Secret keys no service reads: {unknown}"


@pytest.mark.parametrize("path", ALL)
@pytest.mark.parametrize("service", list(SERVICES))
def test_each_service_reads_its_namespace(
    path: str, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What one pod would log as unknown: nothing (other services' keys are theirs)."""
    from services.common.settings import NAMESPACES, unknown_variables

    env = _env(render(path))
    _set_environment(monkeypatch, env)
    loaded = settings_class(service)()
    assert unknown_variables(loaded, environ=env) == []
    mine = [k for k in env if k.startswith(NAMESPACES[service])]
    assert mine and all(loaded.reads(k) for k in mine), mine


# Methods the gateway forwards, by the service that serves them (request_limits keys).
FORWARDED_TO = {
    "ImportObjects": "retrieval",
    "UpsertObjects": "retrieval",
    "CreateInteraction": "memory",
}


@pytest.mark.parametrize("path", ALL)
def test_the_services_settings_agree_with_each_other(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settings each service reads alone but that must agree across services (the
    settings' own comments: "keep it at most memory's" ...), loaded from what each overlay
    gives the pods: else a call the gateway accepts is refused behind it."""
    from services.common.settings import FORWARDING_HEADROOM_BYTES

    _set_environment(monkeypatch, _env(render(path)))
    gateway, memory, retrieval, generation = (settings_class(s)() for s in SERVICES)
    assert gateway.memory_max_claim_seconds <= memory.max_claim_seconds
    assert gateway.ask_answer_bytes <= memory.max_text_bytes
    assert gateway.ask_search_text_chars <= retrieval.max_query_text_chars
    assert gateway.ask_search_text_chars <= retrieval.max_rerank_query_chars
    assert gateway.semantic_cache_max_question_chars <= retrieval.max_cached_question_chars
    assert gateway.semantic_cache_max_answer_bytes <= retrieval.max_cached_answer_bytes
    behind = {"memory": memory, "retrieval": retrieval, "generation": generation}
    for name, downstream in behind.items():
        # The gateway adds headers when it forwards a call.
        assert (
            downstream.max_metadata_bytes >= gateway.max_metadata_bytes + FORWARDING_HEADROOM_BYTES
        ), name
    for method, service in FORWARDED_TO.items():
        assert gateway.request_limit(method) <= behind[service].request_limit(method), method


def _set_environment(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key in [k for k in os.environ if k.startswith("GENSEARCH_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


@pytest.mark.parametrize("path", ALL)
def test_no_dev_launcher_runs_in_kubernetes(path: str) -> None:
    """Every overlay sets the URLs that turn the dev-only launchers (services/devlaunch)
    off: memory talks to the Redis StatefulSet, retrieval to the Qdrant StatefulSet, and
    generation never starts a local model server. No container runs a launcher."""
    from services.generation.settings import GenerationSettings

    docs = render(path)
    env = config(docs)
    redis = urlsplit(env["GENSEARCH_MEMORY_REDIS_URL"])
    assert redis.scheme in ("redis", "rediss") and redis.hostname
    assert _target(docs, redis.hostname, redis.port or 6379)[1]["kind"] == "StatefulSet"
    qdrant = urlsplit(env["GENSEARCH_RETRIEVAL_QDRANT_URL"])
    assert qdrant.scheme in ("http", "https") and qdrant.hostname
    assert _target(docs, qdrant.hostname, qdrant.port or 6333)[1]["kind"] == "StatefulSet"
    autostart = env["GENSEARCH_GENERATION_LOCAL_LLM_AUTOSTART"]
    assert GenerationSettings(local_llm_autostart=autostart).local_llm_autostart is False
    for workload in workloads(docs):
        for c in containers(workload):
            command = " ".join(c.get("command", []) + c.get("args", []))
            assert "devlaunch" not in command, (workload["metadata"]["name"], command)


@pytest.mark.parametrize("path", ALL)
@pytest.mark.parametrize("service", list(SERVICES))
def test_settings_load_from_the_rendered_environment(
    path: str, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Values parse too: each service builds its settings from exactly what the pod gets."""
    cls = settings_class(service)
    for key in list(os.environ):
        if key.startswith("GENSEARCH_"):
            monkeypatch.delenv(key)
    for key, value in _env(render(path)).items():
        monkeypatch.setenv(key, value)
    settings = cls()
    assert settings.host == "0.0.0.0"
    assert settings.port == SERVICES[service][2]
    settings.api_key_map()
    if service == "generation":
        providers = settings.provider_configs()
        assert settings.default_provider in providers


# --- addresses point at real Services ------------------------------------------------


def _target(docs: tuple[Doc, ...], host: str, port: int) -> tuple[Doc, Doc]:
    """The Service called ``host`` exposing ``port``, and the one workload it selects."""
    service = find(docs, "Service", host)
    assert port in {p["port"] for p in service["spec"]["ports"]}, (host, port)
    selected = [w for w in workloads(docs) if service_selects(service, w)]
    assert len(selected) == 1, (host, [w["metadata"]["name"] for w in selected])
    spec_port = next(p for p in service["spec"]["ports"] if p["port"] == port)
    target = spec_port.get("targetPort", port)
    ports = named_ports(selected[0])
    assert (ports.get(target) if isinstance(target, str) else target) in container_ports(
        selected[0]
    )
    return service, selected[0]


@pytest.mark.parametrize("path", ALL)
def test_addresses_point_at_services(path: str) -> None:
    docs = render(path)
    env = config(docs)
    for service in ("memory", "retrieval"):
        host, port = env[f"GENSEARCH_GATEWAY_{service.upper()}_ADDR"].rsplit(":", 1)
        _, workload = _target(docs, host, int(port))
        assert workload["metadata"]["name"] == service
    redis = urlsplit(env["GENSEARCH_MEMORY_REDIS_URL"])
    assert redis.scheme == "redis" and redis.hostname and redis.port
    assert _target(docs, redis.hostname, redis.port)[1]["metadata"]["name"] == "redis"
    qdrant = urlsplit(env["GENSEARCH_RETRIEVAL_QDRANT_URL"])
    assert qdrant.hostname and qdrant.port
    assert _target(docs, qdrant.hostname, qdrant.port)[1]["metadata"]["name"] == "qdrant"


@pytest.mark.parametrize("path", ALL)
def test_generation_is_balanced_per_call_through_a_headless_service(path: str) -> None:
    docs = render(path)
    address = config(docs)["GENSEARCH_GATEWAY_GENERATION_ADDR"]
    match = re.fullmatch(r"dns:///([a-z0-9-]+):(\d+)", address)
    assert match, "the gateway must resolve every generation replica (dns:/// target)"
    service, workload = _target(docs, match[1], int(match[2]))
    assert service["spec"]["clusterIP"] == "None"
    assert workload["metadata"]["name"] == "generation"
    assert int(match[2]) == SERVICES["generation"][2]


# --- lifecycle, scaling, storage ---------------------------------------------------------


# The waits a stopping service's shutdown hooks may take, one after the other, after its
# grace period (services/gateway/__main__.py's on_stop): each a setting of that service.
SHUTDOWN_DRAINS = {
    "gateway": (
        "semantic_cache_store_drain_timeout",
        "ask_cleanup_seconds",
        "summary_drain_timeout",
    ),
}


# Services that, before closing their Redis client, await the slot releases still on
# their way (services/common/releases.py's settle) for up to settle_wait of their Redis
# timeouts: the gateway's quota slots (services/gateway/__main__.py), generation's provider slots
# (ProviderRegistry.close). Only with a Redis URL set: without one there is no settle.
RELEASE_SETTLES = {"gateway": GatewaySettings, "generation": GenerationSettings}


def _drains(docs: tuple[Doc, ...], service: str, added: dict[str, str] | None = None) -> float:
    """Seconds ``service``'s shutdown hooks may take after its grace period: the
    rendered config's values (and ``added``), or the settings' defaults."""
    env = config(docs) | (added or {})
    prefix = f"GENSEARCH_{service.upper()}_"

    def seconds(settings: type[Any], name: str) -> float:
        value = env.get(prefix + name.upper())
        return float(value if value is not None else settings.model_fields[name].default)

    total = sum(seconds(GatewaySettings, name) for name in SHUTDOWN_DRAINS.get(service, ()))
    settings = RELEASE_SETTLES.get(service)
    if settings is not None and env.get(prefix + "REDIS_URL"):
        socket, connect = (seconds(settings, f"redis_{t}_timeout") for t in ("socket", "connect"))
        total += settle_wait(socket, connect)
    if service == "memory" and env.get(prefix + "SEARCH_INDEX", "off") != "off":
        total += CLOSE_WAIT_SECONDS  # search index jobs under way finish at close
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        # The spans still queued are sent at exit, for up to OTEL_BSP_EXPORT_TIMEOUT
        # (services/common/tracing.py flush_at_exit) when the collector does not answer.
        total += flush_timeout(env)
    return total


# What docs/operations.md (Tracing) tells an operator to add to config.env.
TRACE_EXPORT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability:4317"}
# And docs/memory.md, to turn memory's search index on in Kubernetes.
SEARCH_INDEX = {
    "GENSEARCH_MEMORY_SEARCH_INDEX": "keyword",
    "GENSEARCH_MEMORY_SEARCH_QDRANT_URL": "http://qdrant:6333",
}


@pytest.mark.parametrize(
    "added",
    [{}, TRACE_EXPORT, TRACE_EXPORT | SEARCH_INDEX],
    ids=["as shipped", "exporting spans", "exporting spans, memory's search index on"],
)
@pytest.mark.parametrize("path", ALL)
def test_termination_grace_covers_drain(path: str, added: dict[str, str]) -> None:
    """Kubernetes kills a pod terminationGracePeriodSeconds after it began terminating:
    the preStop sleep, then the grace period (calls still running at its end get
    SHUTTING_DOWN), then the shutdown drains, then the wait for pending Redis slot
    releases (settle_wait of the Redis timeouts) must all fit in it, or the pod is killed mid-drain
    (the gateway's Ask clean-ups and summary folds cut, keys left held, quota and provider
    slots taken until their leases end). With spans exported (the endpoint added as the
    docs say), the flush of the spans still queued at exit too; with memory's search index
    on, its index jobs' wait at close."""
    docs = render(path)
    for service in SERVICES:
        grace = float(config(docs)[f"GENSEARCH_{service.upper()}_GRACE_PERIOD"])
        deployment = find(docs, "Deployment", service)
        pre_stop = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        budget = pod_spec(deployment)["terminationGracePeriodSeconds"]
        assert budget > float(pre_stop[1]) + grace + _drains(docs, service, added), service


@pytest.mark.parametrize("path", ALL)
@pytest.mark.parametrize("service", ["gateway", "generation"])
def test_llm_answers_get_the_default_ask_its_time(path: str, service: str) -> None:
    """The services that serve LLM answers give calls in flight at least the gateway's
    default Ask budget: an Ask begun just before a rolling update finishes."""
    docs = render(path)
    ask = config(docs).get("GENSEARCH_GATEWAY_ASK_TIMEOUT")
    default_ask = float(
        ask if ask is not None else GatewaySettings.model_fields["ask_timeout"].default
    )
    assert float(config(docs)[f"GENSEARCH_{service.upper()}_GRACE_PERIOD"]) >= default_ask


@pytest.mark.parametrize("path", ["base", "overlays/prod"])
@pytest.mark.parametrize("service", ["gateway", "generation"])
def test_autoscaled_and_disruption_budgeted(path: str, service: str) -> None:
    docs = render(path)
    deployment = find(docs, "Deployment", service)
    # The HPA owns the replica count; a field here would reset it on every apply.
    assert "replicas" not in deployment["spec"]
    hpa = find(docs, "HorizontalPodAutoscaler", service)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": service,
    }
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    # CPU utilisation needs CPU requests to mean anything.
    assert container(deployment)["resources"]["requests"]["cpu"]
    pdb = find(docs, "PodDisruptionBudget", service)
    assert pdb["apiVersion"] == "policy/v1"
    assert selects(pdb["spec"]["selector"], pod_labels(deployment))


@pytest.mark.parametrize("path", ["base", "overlays/prod"])
@pytest.mark.parametrize("service", SERVICES)
def test_every_service_has_a_disruption_budget(path: str, service: str) -> None:
    """Memory and retrieval run fixed replicas (2 in base, 3 in prod) for availability;
    without a budget an eviction wave (a multi-node drain, the cluster autoscaler) could
    take all of them at once (QA: only gateway and generation had one)."""
    docs = render(path)
    deployment = find(docs, "Deployment", service)
    pdb = find(docs, "PodDisruptionBudget", service)
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": pdb["spec"]["selector"]}
    assert selects(pdb["spec"]["selector"], pod_labels(deployment))


def test_prod_scales_wider_than_base() -> None:
    for service in ("gateway", "generation"):
        base = find(render("base"), "HorizontalPodAutoscaler", service)["spec"]
        prod = find(render("overlays/prod"), "HorizontalPodAutoscaler", service)["spec"]
        assert prod["minReplicas"] > base["minReplicas"]
        assert prod["maxReplicas"] > base["maxReplicas"]
    for service in ("memory", "retrieval"):
        assert find(render("overlays/prod"), "Deployment", service)["spec"]["replicas"] > 1


def test_dev_runs_one_of_each_without_autoscaling() -> None:
    docs = render("overlays/dev")
    for workload in workloads(docs):
        assert workload["spec"]["replicas"] == 1, workload["metadata"]["name"]
    assert not of_kind(docs, "HorizontalPodAutoscaler")
    assert not of_kind(docs, "PodDisruptionBudget")


@pytest.mark.parametrize("path", ALL)
def test_redis_keeps_an_append_only_file_on_a_volume(path: str) -> None:
    redis = find(render(path), "StatefulSet", "redis")
    main = container(redis)
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+(-alpine)?", main["image"])
    args = main["args"]
    assert args[0] == "redis-server"
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--appendfsync") + 1] in ("always", "everysec")
    data_dir = args[args.index("--dir") + 1]
    claims = {t["metadata"]["name"] for t in redis["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    assert mounts[data_dir] in claims


_QUANTITY = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "K": 1000, "M": 1000**2, "G": 1000**3}
_REDIS_UNITS = {"kb": 1024, "mb": 1024**2, "gb": 1024**3, "k": 1000, "m": 1000**2, "g": 1000**3}


def _quantity_bytes(value: str) -> int:
    """A Kubernetes memory quantity ('1Gi', '512Mi', '1000000') in bytes."""
    number, unit = re.fullmatch(r"(\d+)([KMG]i?)?", value).groups()  # type: ignore[union-attr]
    return int(number) * _QUANTITY.get(unit or "", 1)


def _redis_bytes(value: str) -> int:
    """A redis.conf memory value ('768mb', '1gb', '1000000') in bytes."""
    number, unit = re.fullmatch(r"(\d+)([kmg]b?)?", value.lower()).groups()  # type: ignore[union-attr]
    return int(number) * _REDIS_UNITS.get(unit or "", 1)


@pytest.mark.parametrize("path", ALL)
def test_redis_refuses_writes_before_its_container_limit(path: str) -> None:
    # Without --maxmemory, noeviction never refuses anything: Redis grows to the
    # container's limit and is OOM-killed, taking every service's Redis calls down, and an
    # AOF rewrite (a fork) needs room beyond the data. So the bound is set, below the limit.
    main = container(find(render(path), "StatefulSet", "redis"))
    args = main["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert "--maxmemory" in args, "noeviction without --maxmemory refuses nothing"
    value = args[args.index("--maxmemory") + 1]
    env = {e["name"]: e.get("value", "") for e in main.get("env", [])}
    value = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], value)  # Kubernetes expands it
    limit = _quantity_bytes(main["resources"]["limits"]["memory"])
    assert 0 < _redis_bytes(value) <= limit * 3 // 4, (value, limit)


@pytest.mark.parametrize("path", ALL)
def test_qdrant_writes_only_to_volumes(path: str) -> None:
    qdrant = find(render(path), "StatefulSet", "qdrant")
    main = container(qdrant)
    assert re.fullmatch(r"qdrant/qdrant:v\d+\.\d+\.\d+", main["image"])
    assert container_ports(qdrant) >= {6333, 6334}
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    claims = {t["metadata"]["name"] for t in qdrant["spec"]["volumeClaimTemplates"]}
    env = {e["name"]: e["value"] for e in main["env"]}
    assert mounts[env["QDRANT__STORAGE__STORAGE_PATH"]] in claims
    # The root filesystem is read-only: every other path Qdrant writes is a mount.
    for key in ("QDRANT__STORAGE__SNAPSHOTS_PATH", "QDRANT_INIT_FILE_PATH"):
        path_value = env[key]
        assert any(path_value == m or path_value.startswith(m + "/") for m in mounts), key


# --- secrets -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["base", "overlays/dev"])
def test_base_secrets_are_obvious_placeholders(path: str) -> None:
    import base64

    docs = render(path)
    secrets = {s["metadata"]["name"]: s for s in of_kind(docs, "Secret")}
    assert set(secrets) == {
        "gensearch-auth",
        "gensearch-api-keys",
        "gensearch-provider-keys",
        MEMORY_SECRET,
    }
    for secret in secrets.values():
        for key, value in secret["data"].items():
            assert PLACEHOLDER in base64.b64decode(value).decode(), key
    assert set(secrets["gensearch-auth"]["data"]) == {
        "GENSEARCH_API_KEYS",
        "GENSEARCH_INTERNAL_TOKEN",
    }


def _secret_settings() -> dict[str, str]:
    """Variable -> service, for every SecretStr setting of the four services (a token, a
    key, a URL that may carry a password)."""
    from pydantic import SecretStr

    names: dict[str, str] = {}
    for service in SERVICES:
        cls = settings_class(service)
        for variable, field in cls.env_names().items():
            if SecretStr in (cls.model_fields[field].annotation, *_args(cls, field)):
                names[variable] = service
    return names


def _args(cls: type[Any], field: str) -> tuple[Any, ...]:
    """The members of a field's type (``SecretStr | None`` -> SecretStr, None)."""
    return get_args(cls.model_fields[field].annotation)


def _literal_secrets(docs: tuple[Doc, ...]) -> list[str]:
    """Secret settings whose value is written in a manifest (the ConfigMap or a container's
    env value) rather than taken from a Secret. A URL without a password is no secret (the
    Redis URLs in config.env); with one, it belongs in a Secret too."""
    secret = _secret_settings()
    found = []
    literal = dict(config(docs))
    for workload in workloads(docs):
        for c in containers(workload):
            for entry in c.get("env", []):
                if "value" in entry:
                    literal[entry["name"]] = entry["value"]
    for name, value in literal.items():
        if (
            name in secret
            and value
            and not (urlsplit(value).scheme and urlsplit(value).password is None)
        ):
            found.append(name)
    return found


@pytest.mark.parametrize("path", ALL)
def test_no_secret_setting_is_written_in_a_manifest(path: str) -> None:
    docs = render(path)
    assert _secret_settings().keys() >= {
        "GENSEARCH_INTERNAL_TOKEN",
        "GENSEARCH_MEMORY_REDIS_URL",
        "GENSEARCH_MEMORY_PAGE_TOKEN_SECRET",
    }
    assert _literal_secrets(docs) == []
    # The check would see one: a password in a ConfigMap URL, a token as an env value.
    doctored = [dict(d) for d in docs]
    for doc in doctored:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].startswith("gensearch-config"):
            doc["data"] = {**doc["data"], "GENSEARCH_MEMORY_REDIS_URL": "redis://:pw@redis:6379"}
    assert _literal_secrets(tuple(doctored)) == ["GENSEARCH_MEMORY_REDIS_URL"]


KEYS_SECRET = "gensearch-api-keys"


@pytest.mark.parametrize("path", ALL)
def test_the_gateway_mounts_the_api_keys_file_from_a_secret(path: str, tmp_path: Path) -> None:
    """GENSEARCH_API_KEYS_FILE on the gateway names a file in a read-only volume of the
    Secret gensearch-api-keys; no other service gets it (a file it cannot read would stop
    it); where the Secret ships (placeholders), the file parses."""
    import base64

    from services.common.api_keys import load_keys

    docs = render(path)
    for service in SERVICES:
        env = {
            e["name"]: e.get("value")
            for e in container(find(docs, "Deployment", service)).get("env", [])
        }
        assert ("GENSEARCH_API_KEYS_FILE" in env) == (service == "gateway"), service
    gateway = find(docs, "Deployment", "gateway")
    main = container(gateway)
    file = PurePosixPath(
        next(e["value"] for e in main["env"] if e["name"] == "GENSEARCH_API_KEYS_FILE")
    )
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    mount = mounts[str(file.parent)]
    assert mount.get("readOnly") is True
    volume = next(v for v in pod_spec(gateway)["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == KEYS_SECRET
    secrets = {s["metadata"]["name"]: s for s in of_kind(docs, "Secret")}
    if path == "overlays/prod":
        assert KEYS_SECRET not in secrets  # created out of band
        return
    data = secrets[KEYS_SECRET]["data"]
    assert set(data) == {file.name}
    local = tmp_path / file.name
    local.write_bytes(base64.b64decode(data[file.name]))
    keys = load_keys("", local)
    assert keys and all(PLACEHOLDER in key for key in keys)


def test_provider_keys_are_the_variables_the_presets_read() -> None:
    try:
        from services.generation.settings import PRESETS
    except ImportError as err:
        pytest.skip(f"services.generation.settings is not importable yet: {err}")
    keys = set(find(render("base"), "Secret", "gensearch-provider-keys")["data"])
    read = {env for preset in PRESETS.values() for env in preset.get("api_key_env", [])}
    assert keys <= read
    assert {"OPENAI_APIKEY", "ANYSCALE_APIKEY"} <= keys


def test_prod_ships_no_placeholder_secrets() -> None:
    docs = render("overlays/prod")
    assert not of_kind(docs, "Secret")
    # ... but still expects the real ones under the same names.
    for service in SERVICES:
        refs = {
            e["secretRef"]["name"]
            for e in container(find(docs, "Deployment", service))["envFrom"]
            if "secretRef" in e
        }
        assert "gensearch-auth" in refs


MEMORY_SECRET = "gensearch-memory"


@pytest.mark.parametrize("path", ALL)
def test_memory_signs_page_tokens_with_a_key_from_a_secret(path: str) -> None:
    """Unset, the key is one Redis key on one Redis Cluster node, which a replica started
    while that node is down cannot read: paging would fail for every user, not only for
    those of the node's slots (docs/memory.md#pagination). Memory alone reads the Secret."""
    docs = render(path)
    for service in SERVICES:
        refs = {
            e["secretRef"]["name"]
            for e in container(find(docs, "Deployment", service))["envFrom"]
            if "secretRef" in e
        }
        assert (MEMORY_SECRET in refs) == (service == "memory"), service
    secrets = {s["metadata"]["name"]: s for s in of_kind(docs, "Secret")}
    if path == "overlays/prod":
        assert MEMORY_SECRET not in secrets  # created out of band
        return
    assert set(secrets[MEMORY_SECRET]["data"]) == {"GENSEARCH_MEMORY_PAGE_TOKEN_SECRET"}
    for key, value in config(docs).items():
        assert key != "GENSEARCH_MEMORY_PAGE_TOKEN_SECRET", value  # not in the ConfigMap


def test_only_services_calling_providers_get_their_keys() -> None:
    docs = render("base")
    for service in SERVICES:
        refs = {
            e["secretRef"]["name"]
            for e in container(find(docs, "Deployment", service))["envFrom"]
            if "secretRef" in e
        }
        wants_keys = service in ("generation", "retrieval")
        assert ("gensearch-provider-keys" in refs) == wants_keys, service


# --- images and the LLM per overlay ----------------------------------------------------


def test_images_per_overlay() -> None:
    for path in ("base", "overlays/dev"):
        for workload in workloads(render(path)):
            name = workload["metadata"]["name"]
            image = container(workload)["image"]
            if name in SERVICES:
                assert image == "gensearch"
            if name == "local-llm":
                assert image == "gensearch-llm"
    prod = render("overlays/prod")
    ours = {container(find(prod, "Deployment", s))["image"] for s in SERVICES}
    assert len(ours) == 1
    (image,) = ours
    assert _image_name(image).endswith("/gensearch") and not image.endswith(":latest")


def test_dev_generation_uses_the_in_cluster_local_model() -> None:
    docs = render("overlays/dev")
    env = config(docs)
    assert env["GENSEARCH_GENERATION_DEFAULT_PROVIDER"] == "local"
    url = urlsplit(env["GENSEARCH_GENERATION_LOCAL_BASE_URL"])
    assert url.hostname and url.port
    _, workload = _target(docs, url.hostname, url.port)
    assert workload["metadata"]["name"] == "local-llm"
    main = container(workload)
    # llama-server as PID 1 (no launcher), with the dev launcher's very arguments, from
    # where the llm image puts it (deploy/Dockerfile).
    from services.devlaunch.llm_server import server_command

    model = Path(main["command"][main["command"].index("--model") + 1])
    binary = "/opt/llama/llama-server"
    assert main["command"] == server_command(
        model, host="0.0.0.0", port=url.port, n_threads=2, binary=binary
    )
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert main[probe]["httpGet"]["path"] == "/health"
    try:
        from services.generation.settings import LOCAL_PORT
    except ImportError as err:
        pytest.skip(f"services.generation.settings is not importable yet: {err}")
    assert url.port == LOCAL_PORT


def test_prod_uses_a_hosted_provider() -> None:
    env = config(render("overlays/prod"))
    provider = env["GENSEARCH_GENERATION_DEFAULT_PROVIDER"]
    assert provider not in ("local", "")
    assert "local-llm" not in {w["metadata"]["name"] for w in workloads(render("overlays/prod"))}
    try:
        from services.generation.settings import PRESETS
    except ImportError as err:
        pytest.skip(f"services.generation.settings is not importable yet: {err}")
    assert PRESETS[provider]["base_url"].startswith("https://")


# --- network policies ------------------------------------------------------------------

NAMESPACE = "gensearch"


def _pod(
    name: str, labels: dict[str, str], namespace_labels: dict[str, str] | None = None
) -> Endpoint:
    """A pod ``<namespace>/<pod>`` outside gensearch's namespace, with ``labels``; its
    namespace has Kubernetes' own name label and ``namespace_labels``."""
    namespace = name.split("/")[0]
    own = {"kubernetes.io/metadata.name": namespace}
    return Endpoint(name, namespace, {**own, **(namespace_labels or {})}, labels)


OUTSIDE_POD = _pod("default/client", {})
PROMETHEUS = _pod(
    "monitoring/prometheus",
    {"app.kubernetes.io/name": "prometheus"},
    {"gensearch.io/monitoring": "true"},
)
KUBE_DNS = _pod("kube-system/coredns", {"k8s-app": "kube-dns"})
INTERNET = Endpoint("internet", None)
# An OpenTelemetry collector (OTLP/gRPC) in a namespace labelled for tracing.
OTLP_PORT = 4317
OTEL_COLLECTOR = {"app.kubernetes.io/name": "otel-collector"}
COLLECTOR = _pod("observability/otel-collector", OTEL_COLLECTOR, {"gensearch.io/tracing": "true"})
UNLABELLED_COLLECTOR = _pod("default/otel-collector", OTEL_COLLECTOR)


def _endpoints(docs: tuple[Doc, ...]) -> dict[str, Endpoint]:
    ns_labels = {"kubernetes.io/metadata.name": NAMESPACE}
    return {
        w["metadata"]["name"]: Endpoint(
            w["metadata"]["name"], NAMESPACE, ns_labels, pod_labels(w), named_ports(w)
        )
        for w in workloads(docs)
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_limits_and_quotas_are_set(overlay: str) -> None:
    """The gateway counts quotas in the Redis StatefulSet, and every service's request
    limits leave no method at gRPC's old 64 MiB (docs/operations.md#limits)."""
    from services.gateway.settings import GatewaySettings
    from services.memory.settings import MemorySettings
    from services.retrieval.settings import RetrievalSettings

    docs = render(f"overlays/{overlay}")
    env = config(docs)
    redis = urlsplit(env["GENSEARCH_GATEWAY_REDIS_URL"])
    assert _target(docs, redis.hostname or "", redis.port or 6379)[1]["kind"] == "StatefulSet"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        for cls in (GatewaySettings, MemorySettings, RetrievalSettings):
            settings = cls()
            assert settings.largest_request() <= 16 * 1024 * 1024, cls.__name__
            assert settings.max_concurrent_rpcs > 0, cls.__name__
        gateway = GatewaySettings()
        assert gateway.quota_concurrent_calls > 0 and gateway.quota_llm_calls_per_minute > 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies(overlay: str) -> None:
    docs = render(f"overlays/{overlay}")
    policies = of_kind(docs, "NetworkPolicy")
    pods = _endpoints(docs)
    sources = [*pods.values(), OUTSIDE_POD, PROMETHEUS, INTERNET]

    def reachable_from(dst: str, port: int) -> set[str]:
        assert port in pods[dst].ports.values(), (dst, port)
        return {s.name for s in sources if can_connect(policies, s, pods[dst], port)}

    for service in ("memory", "retrieval", "generation"):
        assert reachable_from(service, SERVICES[service][2]) == {"gateway"}, service
    # The gateway counts per-tenant quotas in Redis (GENSEARCH_GATEWAY_REDIS_URL), the
    # generation replicas their providers' limits (GENSEARCH_GENERATION_REDIS_URL).
    assert reachable_from("redis", 6379) == {"memory", "gateway", "generation"}
    assert reachable_from("qdrant", 6333) == {"retrieval"}
    assert reachable_from("qdrant", 6334) == {"retrieval"}
    # The front door is open to clients in other namespaces.
    assert {"default/client", "monitoring/prometheus"} <= reachable_from("gateway", 50050)
    # Metrics: only from a namespace labelled for monitoring.
    for service, (_, _, _, metrics) in SERVICES.items():
        assert reachable_from(service, metrics) == {"monitoring/prometheus"}, service
    # Every pod resolves names; nothing else leaves except what a service needs.
    for pod in pods.values():
        assert can_connect(policies, pod, KUBE_DNS, 53), pod.name
    leaves = {p.name for p in pods.values() if can_connect(policies, p, INTERNET, 443)}
    assert leaves == {"generation", "retrieval"}
    # As docs/retrieval.md says: retrieval's 443 rule holds in the cluster too, so an
    # in-cluster embeddings server on another port (the docs' TEI on 8080) needs a rule.
    tei = Endpoint("embeddings/tei", "embeddings", {"kubernetes.io/metadata.name": "embeddings"})
    assert can_connect(policies, pods["retrieval"], tei, 443)
    assert not can_connect(policies, pods["retrieval"], tei, 8080)
    assert not can_connect(policies, pods["generation"], tei, 8080)  # docs/generation.md
    if overlay == "dev":
        assert reachable_from("local-llm", 8088) == {"generation"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_can_export_traces_to_a_labelled_collector(overlay: str) -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT (docs/operations.md#tracing) is all an operator sets to
    export spans: default-deny must not drop them. Every service reaches OTLP/gRPC in a
    namespace labelled gensearch.io/tracing=true, nothing else in the stack does, and no
    service reaches that port anywhere else."""
    docs = render(f"overlays/{overlay}")
    policies = of_kind(docs, "NetworkPolicy")
    pods = _endpoints(docs)
    exporting = {p.name for p in pods.values() if can_connect(policies, p, COLLECTOR, OTLP_PORT)}
    assert exporting == set(SERVICES)
    for pod in pods.values():
        assert not can_connect(policies, pod, UNLABELLED_COLLECTOR, OTLP_PORT), pod.name
        assert not can_connect(policies, pod, COLLECTOR, OTLP_PORT + 1), pod.name


def test_network_policy_evaluator_is_not_vacuous() -> None:
    """Without the policies everything reaches everything; the matrix above is earned."""
    docs = render("overlays/dev")
    pods = _endpoints(docs)
    assert can_connect([], OUTSIDE_POD, pods["redis"], 6379)
    only_default_deny = [
        p for p in of_kind(docs, "NetworkPolicy") if p["metadata"]["name"] == "default-deny"
    ]
    assert not can_connect(only_default_deny, pods["gateway"], pods["memory"], 50051)
