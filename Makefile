# Developer entry points. CI runs `bash .ci/run`, which runs `make test` (the README's test command).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: help venv lint fmt typecheck imports test test-fast demo demo-down cluster-build cluster-up cluster-down images bench clean

help: ## list targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-14s %s\n", $$1, $$2}'

venv: ## create or reuse the cached virtual environment (.venv)
	@bash hack/bootstrap.sh

lint: venv ## ruff lint + format check, mypy, import-linter contracts
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy api/bertserve_api operator/bertserve_operator server_image/bertserve_server
	.venv/bin/lint-imports

fmt: venv ## apply ruff format and autofixes
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test: venv lint ## everything CI runs: lint, then all tests except GPU ones (builds the local cluster and images)
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

test-fast: venv ## unit tests only (no TensorFlow, cluster or images)
	$(PY) -m pytest -m "not gpu and not tf and not k8s and not images and not slow" $(PYTEST_ARGS)

cluster-build: ## build etcd, kube-apiserver, controller-manager, scheduler, kwok, kubectl, helm (cached)
	@bash hack/cluster/build.sh

cluster-up: cluster-build venv ## start the local control plane (.local/cluster/kubeconfig)
	$(PY) hack/cluster/localcluster.py up

cluster-down: ## stop every process of the local control plane (PURGE=1 also deletes its data)
	$(PY) hack/cluster/localcluster.py down $(if $(PURGE),--purge,)

demo: venv ## the whole product on this machine: control plane, operator via helm, a Ready BertServer, real encodings
	$(PY) hack/demo.py up

demo-down: ## stop everything the demo started
	$(PY) hack/demo.py down

images: venv ## build the server and operator images with buildah (OCI archives under .local/images)
	bash hack/images/build.sh

bench: venv ## run the benchmarks (see benchmarks/README.md)
	@echo "see benchmarks/README.md for the individual benchmark commands"

clean: ## remove local state (not the shared caches)
	rm -rf .local .mypy_cache .ruff_cache .pytest_cache
