# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run demo bench test test-chaos test-unit test-integration test-e2e check lint typecheck stubs-check protos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Start embedded PostgreSQL (unless DATABASE_URL is set), migrations, the service and the gateway.
run: $(STAMP)
	$(PY) scripts/run_dev.py

## With `make run` going: send a signed sample webhook and show the plan change.
demo: $(STAMP)
	$(VENV)/bin/entitlements demo-webhook

## Benchmarks (starts everything itself; writes bench/results/latest.{json,png}).
bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(PY) -m bench.run

## The whole test suite against a real PostgreSQL (see tests/conftest.py).
test: $(STAMP)
	$(PY) -m pytest -m "not chaos"

## PostgreSQL, the service and the gateway killed -9 at random under a Svix-like sender.
test-chaos: $(STAMP)
	$(PY) -m pytest -m chaos -s tests/chaos

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit

test-integration: $(STAMP)
	$(PY) -m pytest tests/integration

test-e2e: $(STAMP)
	$(PY) -m pytest tests/e2e

## Lint, types, and stale generated stubs.
check: lint typecheck stubs-check

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

stubs-check: $(STAMP)
	PY=$(PY) scripts/check_stubs.sh

## Regenerate the committed stubs after editing protos/.
protos: $(STAMP)
	PY=$(PY) scripts/gen_protos.sh

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
