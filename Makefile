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

.PHONY: demo test check lint types bench postgres clean

# torch goes in first: a package that pulls an unpinned torch into an
# environment without one would fetch a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/deai demo

# The suite's coordinator tests start a throwaway PostgreSQL server themselves;
# they only need the server binaries on the machine.
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; else \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update && $$SUDO apt-get install -y postgresql; \
	fi

test: $(STAMP) postgres
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

types: $(STAMP)
	$(BIN)/mypy

check: lint types test

bench: $(STAMP)
	@set -e; for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f; done

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache results .deai/devnet
