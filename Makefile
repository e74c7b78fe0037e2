# The commands the README names. `make test` works from a fresh clone: it builds .venv first.
.DEFAULT_GOAL := test
SHELL := bash

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install only when the dependencies change; otherwise `install` is a no-op.
STAMP := $(VENV)/.installed

.PHONY: install browser test test-cluster lint format mypy run bench clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

test: install browser
	$(BIN)/python -m pytest $(ARGS)

# The browser tests drive Debian's chromium (Playwright, executable_path): installed here if missing.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  echo "installing chromium for the browser tests (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

# The core, relay and audit tests again, on a 3-master Redis Cluster the session starts itself.
CLUSTER_TESTS := tests/test_pool.py tests/test_lifecycle.py tests/test_routing.py tests/test_api.py \
	tests/test_relay_webhooks.py tests/test_relay_messages.py tests/test_relay_callbacks.py \
	tests/test_relay_retries.py tests/test_interactions_history.py tests/test_audit_writer.py \
	tests/test_erasure.py tests/test_recovery.py tests/test_lease.py tests/test_scheduled.py \
	tests/test_multiparty.py tests/test_blocklist.py tests/test_abuse_limits.py tests/test_console.py \
	tests/test_pin_fallback.py tests/test_whatsapp.py tests/test_recovery_pin_scheduled.py

test-cluster: install
	MASKLINE_TEST_REDIS=cluster $(BIN)/python -m pytest $(CLUSTER_TESTS) $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

mypy: install
	$(BIN)/mypy

# The sandbox (maskline dev); `maskline serve` is the production command.
run: install
	$(BIN)/maskline dev

bench: install
	$(BIN)/maskline bench sessions

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
