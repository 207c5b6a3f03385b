# Two commands a user needs:  `make run` (set up + run the default scenario), `make test` (set up + tests).
# Both create or refresh the virtualenv in $(VENV) when pyproject.toml or requirements.lock changes, and install
# the exact versions in requirements.lock (refresh it with `make lock`). `make run` installs what running needs;
# `make test` adds the test tools.
VENV   ?= .venv
PYTHON ?= python3
# torch is pinned first: an unpinned torch pulls a multi-GB CUDA build; 2.13.0 resolves to the CPU wheel here.
TORCH  ?= torch==2.13.0
LOCK   := $(abspath requirements.lock)
PY     := $(VENV)/bin/python
# Every pip call (and the isolated build of fedsim itself) is held to the lock.
PIP    := PIP_CONSTRAINT=$(LOCK) $(PY) -m pip
RUN_STAMP  := $(VENV)/.fedsim-run
TEST_STAMP := $(VENV)/.fedsim-test

.PHONY: setup setup-test run test lint lock clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): pyproject.toml requirements.lock | $(PY)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e . "$(TORCH)"
	touch $(RUN_STAMP)

$(TEST_STAMP): $(RUN_STAMP)
	$(PIP) install -q -e '.[test]' "$(TORCH)"
	touch $(TEST_STAMP)

setup: $(RUN_STAMP)

setup-test: $(TEST_STAMP)

run: setup
	$(VENV)/bin/fedsim run scenarios/quickstart.yaml

lint: setup-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: setup-test lint
	$(VENV)/bin/pytest -q

# Re-resolve the dependency set from pyproject.toml's ranges (newest allowed versions) into requirements.lock.
lock:
	PYTHON=$(PYTHON) TORCH="$(TORCH)" bash tools/lock.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
