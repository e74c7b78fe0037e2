# The commands the README names. `make test` works from a fresh clone: it builds .venv first.
.DEFAULT_GOAL := test
SHELL := bash

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install only when the dependencies change; otherwise `install` is a no-op.
STAMP := $(VENV)/.installed

.PHONY: install test lint format mypy run bench clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

test: install
	$(BIN)/python -m pytest $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

mypy: install
	$(BIN)/mypy

run: install
	$(BIN)/maskline serve

bench: install
	$(BIN)/maskline bench sessions

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
