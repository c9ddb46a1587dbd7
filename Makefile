# Two commands set up and run everything:  `make repro`  and  `make test`.
# Targets are idempotent: the virtual environment is (re)installed only when pyproject.toml changes,
# and `dvc repro` reruns only the stages whose inputs changed.

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
INSTALLED := $(VENV)/.installed
UI_PORT ?= 5000
MLFLOW_STORE ?= sqlite:///$(CURDIR)/mlflow.db
# stage commands call `python` and `dvc`: take both from the project's environment
export PATH := $(BIN):$(PATH)

.PHONY: install repro test test-e2e ui clean

install: $(INSTALLED)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

repro: $(INSTALLED)
	dvc repro

test: $(INSTALLED)
	python -m pytest

test-e2e: $(INSTALLED)
	python -m pytest -m e2e

ui: $(INSTALLED)
	mlflow ui --backend-store-uri $(MLFLOW_STORE) --host 127.0.0.1 --port $(UI_PORT)

clean:
	rm -rf $(VENV)
