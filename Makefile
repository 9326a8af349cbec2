# Everything a fresh machine needs: `make run` and `make test` create .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config.toml

.PHONY: run test check bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall when the package's metadata changes (dependencies, entry points).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	mkdir -p drop
	$(BIN)/cued --config $(CONFIG) run

check: $(VENV)/.installed-test
	$(BIN)/ruff check daemon connectors plugins tests bench
	$(BIN)/ruff format --check daemon connectors plugins tests bench
	mkdir -p build/typecheck/cued
	for p in daemon connectors plugins; do ln -sfn ../../../$$p build/typecheck/cued/$$p; done
	MYPYPATH=build/typecheck $(BIN)/mypy -p cued.daemon -p cued.connectors -p cued.plugins

# The browser tests (tests/test_ui.py) drive Debian's Chromium through Playwright; a test
# tool's own browser download does not work here, so `playwright install` is never run.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
		|| (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

test: check $(CHROMIUM)
	$(BIN)/pytest -q

bench: $(VENV)/.installed-test
	$(BIN)/python -m bench.core

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
