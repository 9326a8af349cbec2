# Everything a fresh machine needs: `make run` and `make test` create .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config.toml

.PHONY: run test test-fast check bench clean constraints

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# setuptools tells of every editable install, in a dozen lines, that a folder named like
# the package could shadow it; none can here (the code installs as cued.*, and no folder is
# named cued), so a first `make run` stays quiet. The text is matched, not the category:
# pip itself could not import setuptools' warning classes to filter on.
QUIET_BUILD := PYTHONWARNINGS="ignore:Editable installation"

# Reinstall when the package's metadata or the pinned versions change. constraints.txt
# pins every package to the versions CI tested (pyproject.toml gives only floors).
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(QUIET_BUILD) $(BIN)/pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(BIN)/python
	$(QUIET_BUILD) $(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@ $(VENV)/.installed

# After a dependency changed in pyproject.toml: install the newest allowed, pin them.
constraints: | $(BIN)/python
	$(QUIET_BUILD) $(BIN)/pip install --quiet --upgrade -e '.[test]'
	(sed -n '1,/^$$/p' constraints.txt | grep '^#'; \
	 $(BIN)/pip freeze --exclude-editable | grep -v '^cued') > constraints.txt.new
	mv constraints.txt.new constraints.txt

run: $(VENV)/.installed
	mkdir -p drop
	$(BIN)/cued --config $(CONFIG) run

check: $(VENV)/.installed-test
	$(BIN)/ruff check daemon connectors plugins tests bench
	$(BIN)/ruff format --check daemon connectors plugins tests bench
	mkdir -p build/typecheck/cued
	for p in daemon connectors plugins; do ln -sfn ../../../$$p build/typecheck/cued/$$p; done
	MYPYPATH=build/typecheck $(BIN)/mypy -p cued.daemon -p cued.connectors -p cued.plugins
	PYTHONPATH=build/typecheck $(BIN)/lint-imports --no-cache

# The browser tests (tests/e2e/test_ui.py) drive Debian's Chromium through Playwright; a test
# tool's own browser download does not work here, so `playwright install` is never run.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
		|| (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

# The README's curl lines are run as written (tests/e2e/test_readme_examples.py), and the
# open-mode tests call curl as another user: the real program, from Debian.
CURL := /usr/bin/curl
$(CURL):
	DEBIAN_FRONTEND=noninteractive apt-get install -y curl \
		|| (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y curl)

# The unit file is checked by systemd's own tools (tests/e2e/test_service_unit.py:
# `systemd-analyze verify` and `security`), from Debian's systemd package; it is not run
# as PID 1 here, only its tools are used.
SYSTEMD_ANALYZE := /usr/bin/systemd-analyze
$(SYSTEMD_ANALYZE):
	DEBIAN_FRONTEND=noninteractive apt-get install -y systemd \
		|| (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y systemd)

# Four workers on two cores: most tests wait on processes, sockets, leases and fsync, not
# on a core (and every test waits for conditions, never for a time, so a loaded core slows
# it without failing it); work stealing hands the long crash and cluster tests' tail to a
# worker that is free. Python may cache bytecode even where the shell says not to
# (PYTHONDONTWRITEBYTECODE): the suite starts the daemon and the CLI as processes some
# hundreds of times, and without the cache each compiles cued's ~190 modules again
# (a quarter of a second of CPU each time). On this machine (BENCHMARKS.md, "The suite's
# time"): 8m53s with three workers and no cache, 6m51s with four and the cache.
test: check $(CHROMIUM) $(CURL) $(SYSTEMD_ANALYZE)
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -q -n 4 --dist worksteal

# Lanes (tests/conftest.py): tests/unit/ is pure, tests/integration/ uses one real component
# (SQLite, loopback HTTP, the Kafka broker, a daemon in-process), tests/e2e/ processes and
# Chromium. `make test` runs all of them; `make test-fast`, the lane to run while working,
# the pure tests but the property tests that ask for more examples than the default: no
# lint, under 30 s. Start-up is most of it, so Schemathesis' pytest plugin (no unit test
# uses it) stays unloaded, and Python may cache bytecode even where the shell says not to
# (PYTHONDONTWRITEBYTECODE): without the cache each of pytest's three processes compiles
# and rewrites every module again, 2-3 s of CPU each, 25-30 s in all on a busy machine.
test-fast: $(VENV)/.installed-test
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -q -n 2 -p no:schemathesis -m "not slow" tests/unit

bench: $(VENV)/.installed-test
	$(BIN)/python -m bench.core

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
