# Developer entry points. CI runs `bash .ci/run`, which is `make test` (the README's test command).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PY := .venv/bin/python
PYTEST_ARGS ?=
# test-fast's selection: no TensorFlow, control plane (helm needs its Go build), images or slow tests.
# tests/test_make.py checks that nothing it selects builds or starts the control plane.
FAST_MARKERS := not gpu and not tf and not k8s and not realnode and not helm and not images and not slow

.PHONY: help system-deps venv lint fmt test test-fast demo demo-down cluster-build cluster-up cluster-down images operator-run bench bench-model bench-server bench-predict bench-scaleout bench-operator bench-sizing bench-ready profile-model profile-gemm clean

help: ## list targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-14s %s\n", $$1, $$2}'

system-deps: ## Debian packages the tests need (installs as root; otherwise names them and stops)
	@bash hack/ci-system-deps.sh

venv: ## this checkout's .venv (own editable install) on top of the cached dependency venv
	@bash hack/bootstrap.sh

lint: venv ## ruff lint + format check, mypy, import-linter contracts
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy api/bertserve_api operator/bertserve_operator server_image/bertserve_server cli/bertserve_cli
	.venv/bin/lint-imports

fmt: venv ## apply ruff format and autofixes
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# Everything from nothing, in order: system packages, venv, control plane, images, lint, tests.
# pytest's own exit status is make's: "no tests collected" (5) fails like a failed test.
test: system-deps venv cluster-build images lint ## everything CI runs: all set-up, lint, every test except GPU ones
	$(PY) -m pytest -m "not gpu" --durations=30 $(PYTEST_ARGS)

test-fast: venv ## unit tests only, under a minute (no TensorFlow, control plane, helm or images)
	$(PY) -m pytest -m "$(FAST_MARKERS)" --durations=10 $(PYTEST_ARGS)

cluster-build: ## build etcd, kube-apiserver, controller-manager, scheduler, kwok, kubectl, helm, and the real node's kubelet, kube-proxy, containerd, CoreDNS (cached)
	@bash hack/cluster/build.sh
	@bash hack/cluster/build.sh --node >/dev/null

cluster-up: cluster-build venv ## start the local control plane (.local/cluster/kubeconfig)
	$(PY) hack/cluster/localcluster.py up

cluster-down: ## stop every process of the local control plane (PURGE=1 also deletes its data)
	$(PY) hack/cluster/localcluster.py down $(if $(PURGE),--purge,)

demo: venv ## the whole product on this machine: control plane, operator via helm, a Ready BertServer, real encodings
	$(PY) hack/demo.py up

demo-down: ## stop everything the demo started
	$(PY) hack/demo.py down

images: venv ## build the server (GPU and -cpu) and operator images with buildah (OCI archives under .local/images)
	bash hack/images/build.sh

operator-run: venv ## run the operator locally against the local control plane (after make cluster-up)
	KUBECONFIG=.local/cluster/kubeconfig "$$(bash hack/cluster/build.sh --print-bin-dir)/kubectl" apply --server-side -f crds/
	KUBECONFIG=.local/cluster/kubeconfig $(PY) -m bertserve_operator -A --liveness-endpoint=http://127.0.0.1:8080/healthz

bench: bench-model bench-server bench-predict bench-scaleout bench-operator bench-sizing bench-ready ## every benchmark (long; results in benchmarks/results)

bench-model: venv ## our TF2 encoder vs torch, ONNX Runtime, OpenVINO (own venvs): throughput, latency, % of fp32 peak; tokenizer
	$(PY) benchmarks/bench_model.py

bench-server: venv ## natural-length traffic (ZeroMQ + HTTP, p50/p99) vs ONNX Runtime as a batching server; end-to-end vs raw model
	$(PY) benchmarks/bench_server.py

bench-predict: venv ## /predict (classifier head) vs /encode on the same inputs, model and HTTP
	$(PY) benchmarks/bench_predict.py

bench-scaleout: venv ## 1-3 replicas behind a kube-proxy-like balancer; forwarding overhead
	$(PY) benchmarks/bench_scaleout.py

bench-sizing: venv ## model file sizes and the server's RSS for MiniLM and BERT-base (user guide sizing)
	$(PY) benchmarks/bench_sizing.py

bench-ready: venv ## time to /readyz 200 for MiniLM and BERT-base, phase by phase (fresh process per start)
	$(PY) benchmarks/bench_ready.py

profile-model: venv ## per-op profile of one encoder call (MODEL=minilm SHAPE=32x25; results/profile.md)
	$(PY) benchmarks/profile_model.py --model $(or $(MODEL),minilm) --shape $(or $(SHAPE),32x25) --write

profile-gemm: venv ## MiniLM's 24 dense-layer GEMMs alone, TensorFlow vs ONNX Runtime, 1-800 rows (profile.md finding 6)
	$(PY) benchmarks/gemm_small_rows.py
	$(PY) benchmarks/gemm_small_rows.py --resident

bench-operator: venv ## 500 BertServers on the local control plane
	$(PY) benchmarks/bench_operator.py --write benchmarks/results/operator.md --json benchmarks/results/operator.json

clean: ## remove local state (not the shared caches)
	rm -rf .local .mypy_cache .ruff_cache .pytest_cache
