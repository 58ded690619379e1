# Two commands on a fresh machine: `make run` (the local stack and a demo) and `make test` (the whole suite).
# Both install what is missing: a Python virtualenv from requirements-dev.txt (with the iotjobs command) and Azurite
# from package-lock.json; `make test` also checkov (infra/ checks) in a virtualenv of its own from
# requirements-iac.txt (its pins clash with pytest's), which `make run` never needs (a minute of a cold start).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.deps-stamp
NODE_STAMP := node_modules/.deps-stamp
IAC_VENV := .venv-iac
IAC_STAMP := $(IAC_VENV)/.deps-stamp

.PHONY: setup setup-run run test lint pytest bench clean

setup: setup-run $(IAC_STAMP)

# What the local stack needs, and no more.
setup-run: $(PY_STAMP) $(NODE_STAMP)

$(PY_STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	# The iotjobs command, into $(BIN) (editable: it runs this checkout's iotjobs/).
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

$(IAC_STAMP): requirements-iac.txt
	test -x $(IAC_VENV)/bin/python || $(PYTHON) -m venv $(IAC_VENV)
	$(IAC_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-iac.txt
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

lint: $(PY_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Tests in parallel workers (pytest-xdist): the end-to-end tests mostly wait on their servers, so 4 workers keep a
# 2-core machine busy. Tests that share a fixed resource run on one worker, one after the other (loadgroup, with
# the groups of tests/conftest.py ONE_WORKER). PYTEST_WORKERS=0 runs in this process.
PYTEST_WORKERS ?= 4
pytest: setup
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test: lint pytest

run: setup-run
	$(BIN)/python -m emulators.devstack $(RUN_ARGS)

bench: setup-run
	$(BIN)/python -m bench.iothub_import_export
	$(BIN)/python -m bench.validate
	$(BIN)/python -m bench.validate_csv
	$(BIN)/python -m bench.app_e2e
	$(BIN)/python -m bench.central_apply
	$(BIN)/python -m bench.hub_calls
	$(BIN)/python -m bench.plan
	$(BIN)/python -m bench.migration
	$(BIN)/python -m bench.hub_query

clean:
	rm -rf $(VENV) $(IAC_VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .devstack *.egg-info
