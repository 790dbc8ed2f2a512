# relive: `make run` runs the demo, `make test` runs the tests. Both set up first.
SHELL := /bin/bash
PYTHON ?= python3
TOOLS := .tools
UV := $(TOOLS)/uv/bin/uv
VENV := .venv
STAMP := $(VENV)/.synced
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)
export UV_PYTHON := $(PYTHON)
PY_SRC := clients/python/src services/core/src services/registry/src services/recorder/src services/executor/src services/stack/src
PROTO_OUT := clients/python/src

.PHONY: run test unit setup browser screenshots lock protos lint check-protos compose-config bench clean

run: setup
	$(VENV)/bin/relive demo

test: setup
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

# The fast tier: pure logic only, sockets disabled (pytest-socket), so no server can start.
unit: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit --disable-socket -p no:cacheprovider $(PYTEST_ARGS)

setup: $(STAMP) node_modules/.installed clients/node/node_modules/.installed browser

$(UV):
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --target $(TOOLS)/uv 'uv>=0.4,<1'

$(STAMP): $(UV) uv.lock pyproject.toml */*/pyproject.toml
	$(UV) sync --frozen --all-packages
	touch $@

# Re-resolves the lock file after a dependency change; commit the result.
lock: $(UV)
	$(UV) lock

node_modules/.installed: package.json package-lock.json
	@if command -v npm >/dev/null; then npm ci --silent --no-audit --no-fund && touch $@; \
	else echo "npm not found: buf lint and the Node client are skipped"; fi

clients/node/node_modules/.installed: clients/node/package.json clients/node/package-lock.json
	@if command -v npm >/dev/null; then cd clients/node && npm ci --silent --no-audit --no-fund && touch node_modules/.installed; \
	else echo "npm not found: the Node client is not installed"; fi

# The console's tests drive Debian's chromium; install it where we may (root with apt).
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium (Debian) for the console tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not found and cannot be installed here: the console's browser tests will fail"; fi; }

# Regenerates the committed Python code from protos/.
protos: $(STAMP)
	$(VENV)/bin/python scripts/gen_protos.py

# Fails when the committed generated code differs from what protos/ gives.
check-protos: protos
	@git add -N $(PROTO_OUT) >/dev/null 2>&1 || true
	@git diff --exit-code --stat -- $(PROTO_OUT) || \
	  (echo "generated code is stale: run 'make protos' and commit" && exit 1)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy $(PY_SRC) tests bench examples scripts
	node_modules/.bin/buf lint protos

# Parses docker-compose.yml where a Docker CLI with compose exists (no engine is needed).
compose-config:
	@if command -v docker >/dev/null && docker compose version >/dev/null 2>&1; then \
	  docker compose -f docker-compose.yml config --quiet && echo "docker-compose.yml: ok"; \
	else echo "docker compose not found: docker-compose.yml not checked"; fi

# Refreshes the console screenshots in docs/ from a real browser session.
screenshots: setup
	RELIVE_SCREENSHOT_DIR=$(CURDIR)/docs $(VENV)/bin/pytest -q tests/test_console.py tests/test_console_scale.py

bench: setup
	$(UV) sync --frozen --all-packages --group bench
	for b in bench/*.py; do $(VENV)/bin/python $$b --quick; done

clean:
	rm -rf $(VENV) $(TOOLS) node_modules .relive
