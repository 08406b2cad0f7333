"""requirements.lock: every direct dependency of pyproject.toml (and of the dev and llm
extras) is pinned there, at a version pyproject allows; `make install` and the Dockerfile
both install through it, so a fresh install and the image get the same versions."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy.manifests import REPO

LOCK = REPO / "requirements.lock"
EXTRAS = ("dev", "llm")


def locked() -> dict[str, Version]:
    """name -> pinned version; fails on anything but ``name==version`` lines."""
    pins: dict[str, Version] = {}
    for raw in LOCK.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        assert match, f"not an exact pin: {raw!r}"
        pins[canonicalize_name(match[1])] = Version(match[2])
    return pins


def direct() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = list(project["dependencies"])
    for extra in EXTRAS:
        names += project["optional-dependencies"][extra]
    return [Requirement(r) for r in names]


def test_every_direct_dependency_is_pinned_within_its_range() -> None:
    pins = locked()
    missing, outside = [], []
    for req in direct():
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            missing.append(req.name)
        elif not req.specifier.contains(version, prereleases=True):
            outside.append(f"{req.name}=={version} (pyproject: {req.specifier})")
    assert not missing, f"not in requirements.lock (run `make lock`): {missing}"
    assert not outside, f"requirements.lock disagrees with pyproject.toml: {outside}"


def test_torch_is_the_cpu_build_and_no_cuda_comes_along() -> None:
    pins = locked()
    assert pins["torch"].public == "2.13.0"
    assert not [name for name in pins if name.startswith("nvidia-")]


def test_the_lock_says_how_it_is_made_and_make_uses_it() -> None:
    text = LOCK.read_text()
    assert "make lock" in text.split("\n\n", 1)[0]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^LOCK := requirements\.lock$", makefile, re.M)
    assert re.search(r"^\$\(STAMP\): pyproject\.toml \$\(LOCK\)", makefile, re.M)
    assert "-c $(LOCK)" in makefile
    lock_rule = makefile.split("\nlock:", 1)[1].split("\n\n", 1)[0]
    assert "--extra dev --extra llm" in lock_rule and "--output-file $(LOCK)" in lock_rule
