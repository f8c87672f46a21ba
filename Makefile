# telemaint: `make demo` runs the agent on the example config; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench venv system-packages clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,test]'
	touch $(STAMP)

venv: $(STAMP)

system-packages:
	scripts/install-system-packages

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

lint: $(STAMP)
	$(BIN)/ruff check agent server tests bench scripts
	$(BIN)/ruff format --check agent server tests bench scripts

test: $(STAMP) system-packages lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/collect.py
	$(BIN)/python bench/server_ingest.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
