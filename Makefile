# Two commands set up a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cluster-app demo

lint: $(STAMP)
	$(BIN)/ruff check cluster_app jobs benchmarks tests
	$(BIN)/ruff format --check cluster_app jobs benchmarks tests
	$(BIN)/lint-imports
	$(BIN)/pyright

test: lint
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	for b in placement placement_scale sync hybrid recovery registry serving dashboard elastic scaling_sim cold_start continual transfer; do \
		$(BIN)/python benchmarks/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) demo-output cluster-app-store .pytest_cache .ruff_cache
