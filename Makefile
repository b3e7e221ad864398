# Two commands set everything up: `make demo` (the ledger at work on a SQLite
# file) and `make test` (checks and tests). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: demo serve test check install bench clean

$(BIN)/allocation-ledger: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/allocation-ledger

demo: install
	$(BIN)/allocation-ledger demo

serve: install
	$(BIN)/allocation-ledger serve

check: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo

test: check
	bash scripts/run-tests $(BIN)/python

# Benchmarks (docs/performance.md): results in bench/results/latest.{json,md}.
# `make bench BENCH_ARGS=--quick` is a smoke run of under a minute (quick.*).
BENCH_ARGS ?=
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .import_linter_cache
