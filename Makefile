# p2pchat — the two commands a fresh machine needs: `make run` and `make test`.
# Everything else (lint, typecheck, bench) is reachable from here too.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck unit install clean proto bench image

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/p2pchat --role peer

# lint-imports checks the architecture's import contracts ([tool.importlinter] in pyproject.toml,
# explained in docs/architecture.md).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache --no-logo

# mypy over p2pchat.node and p2pchat.roles, read from node/ and roles/ (tools/typecheck.py says
# why mypy alone cannot map them, and how trio's own types win over trio-typing's stubs).
typecheck: $(STAMP)
	$(BIN)/python tools/typecheck.py

# Regenerate the protobuf code of the wire formats (committed; tests/test_packaging.py checks
# that it is current).
proto: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -I node/wire \
		--python_out=node/wire --mypy_out=node/wire node/wire/*.proto

# The js-libp2p peer of the interop test, pinned by its package-lock.json.
JS_PEER := tests/interop/js
$(JS_PEER)/node_modules/.package-lock.json: $(JS_PEER)/package-lock.json
	cd $(JS_PEER) && npm ci --no-audit --no-fund --loglevel=error

unit: $(STAMP) $(JS_PEER)/node_modules/.package-lock.json
	$(BIN)/python -m pytest

test: lint typecheck unit

# Benchmarks: real processes on 127.0.0.1, one JSON object per scenario on stdout.
bench: $(STAMP)
	$(BIN)/python -m tests.bench.chat burst paced
	$(BIN)/python -m tests.bench.relay reservations relayed_latency
	$(BIN)/python -m tests.bench.holepunch
	$(BIN)/python -m tests.bench.archive ingest query catchup
	$(BIN)/python -m tests.bench.nat port-preserving symmetric

# The container image p2pchat:local (Dockerfile), built with no image registry: local base
# image and wheelhouse (ops/containers/README.md).
image: $(STAMP)
	ops/containers/image.sh

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
