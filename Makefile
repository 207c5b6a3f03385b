# Two commands a user needs:  `make run` (set up + run the default scenario), `make test` (set up + tests).
# Both create or refresh the virtualenv in $(VENV) when pyproject.toml changes.
VENV   ?= .venv
PYTHON ?= python3
# torch is pinned first: an unpinned torch pulls a multi-GB CUDA build; 2.13.0 resolves to the CPU wheel here.
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fedsim-installed

.PHONY: setup run test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[test]' "$(TORCH)"
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/fedsim run scenarios/quickstart.yaml

lint: setup
	$(VENV)/bin/ruff check .

test: setup lint
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
