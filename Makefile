# Two entry points: `make chat` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.giraffe-installed
MODEL  ?= smollm2-135m-instruct

.PHONY: chat test lint pytest bench peers clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first and exactly pinned: `torch==2.13.0` resolves to the local CPU build,
# anything looser pulls gigabytes of CUDA packages.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/giraffe pull smollm2-135m-instruct minilm-l6
	touch $(STAMP)

# The browser tests drive the system's Chromium (Debian's package); install it when missing.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "note: the browser tests need Chromium: sudo apt-get install chromium"; fi

chat: $(STAMP)
	$(BIN)/giraffe chat $(MODEL)

test: $(STAMP) $(CHROMIUM) lint pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

pytest: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/decode.py

# Benchmark and fixture peers, never needed by the tests: llama.cpp builds from source (~10 min).
peers: $(STAMP)
	$(BIN)/pip install 'llama-cpp-python[server]'

clean:
	rm -rf $(VENV) build src/*.egg-info
