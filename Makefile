# The README's commands. `make run` and `make test` each set up what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A local account so the embedded server works out of the box; set your own to override.
NOTIFY_ACCOUNT_SID ?= ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
NOTIFY_AUTH_TOKEN ?= local-dev-auth-token
export NOTIFY_ACCOUNT_SID NOTIFY_AUTH_TOKEN

.PHONY: run test test-sqlite test-postgres lint bench clean node-deps image-test

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test,dev]"
	touch $@

run: $(BIN)/.installed
	$(BIN)/notify-server serve

# SQLite always; PostgreSQL as well when NOTIFY_TEST_DATABASE_URL names one, side by side
# (the suites share nothing: own databases, free ports; most of their time is waiting).
test: $(BIN)/.installed lint node-deps
	@if [ -n "$$NOTIFY_TEST_DATABASE_URL" ]; then \
		$(MAKE) --no-print-directory -j2 --output-sync=target test-sqlite test-postgres; \
	else \
		$(MAKE) --no-print-directory test-sqlite; \
	fi

test-sqlite: $(BIN)/.installed
	env -u NOTIFY_TEST_DATABASE_URL $(BIN)/pytest

# Tests that never touch a database run once, in the SQLite suite: the PostgreSQL suite is the
# longer of the two (19.5 of CI's 22 minutes on a machine of 2026-12-03).
DATABASE_FREE_TESTS = tests/test_packaging.py tests/test_cli_basics.py tests/test_kubernetes.py \
	tests/test_docs.py tests/test_coverage_table.py tests/delivery/test_h2client.py

test-postgres: $(BIN)/.installed
	$(BIN)/pytest $(addprefix --ignore=,$(DATABASE_FREE_TESTS))

# The official Node.js SDK's test and the console's browser test (playwright-core, which
# drives Debian's chromium: no browser download) need their packages; skipped without npm.
node-deps:
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix tests/node --no-audit --no-fund --silent && \
		PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix tests/browser --no-audit --no-fund --silent; \
	fi

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests alembic bench tools
	$(BIN)/ruff format --check src tests alembic bench tools
	$(BIN)/mypy src

# Builds and runs the image with docker or podman (tools/image-test says when neither can).
image-test:
	tools/image-test

bench: $(BIN)/.installed
	$(BIN)/python bench/http_bench.py

clean:
	rm -rf $(VENV) *.egg-info notify-server.db* notify-server.key
