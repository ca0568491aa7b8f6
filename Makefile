# p2pchat — the two commands a fresh machine needs: `make run` and `make test`.
# Everything else (lint, typecheck, bench) is reachable from here too.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Two stamps: p2pchat with its runtime dependencies (`make run`, `make install`), and the
# development tools on top (`make dev`, and every target that runs them).
RUNTIME := $(VENV)/.runtime
DEV     := $(VENV)/.dev

.PHONY: run test lint typecheck unit install dev clean proto generated bench image interop-go go-proto interop-matrix interop-rust load-go bench-long

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# pip's own output (not --quiet) is the progress: most of the time goes to compiling
# py-libp2p's fastecdsa. README's "Install" section has the measured time.
$(RUNTIME): pyproject.toml | $(BIN)/python
	@echo "==> installing p2pchat and its runtime dependencies into $(VENV)" \
		"(about 25 s on a fresh machine: README, Install)"
	$(BIN)/python -m pip install --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --disable-pip-version-check -e .
	@# An editable install leaves out the wheel's data files (the man page, the completions):
	@# link them into the venv as a wheel would install them, as the code itself is linked.
	cp -rsf "$(CURDIR)/share" $(VENV)/
	touch $@

$(DEV): $(RUNTIME)
	@echo "==> installing the development tools (pytest, ruff, mypy, ansible, testcontainers, ...)"
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[dev]'
	touch $@

# p2pchat and its runtime dependencies: .venv/bin/p2pchat (README: Install).
install: $(RUNTIME)

# ... and the tools of test, lint, typecheck, proto, generated and bench.
dev: $(DEV)

run: $(RUNTIME)
	$(BIN)/p2pchat --role peer

# lint-imports checks the architecture's import contracts ([tool.importlinter] in pyproject.toml,
# explained in docs/architecture.md).
lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache --no-logo

# mypy over p2pchat.node and p2pchat.roles, read from node/ and roles/ (tools/typecheck.py says
# why mypy alone cannot map them, and how trio's own types win over trio-typing's stubs).
typecheck: $(DEV)
	$(BIN)/python tools/typecheck.py

# Regenerate the protobuf code of the wire formats (committed; tests/test_packaging.py checks
# that it is current).
proto: $(DEV)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -I node/wire \
		--python_out=node/wire --mypy_out=node/wire node/wire/*.proto

# Regenerate the man page and the shell completions from the CLI's parser (committed under
# share/ and installed by the package; tests/test_packaging.py checks that they are current).
generated: $(DEV)
	$(BIN)/python tools/cli_files.py

# The js-libp2p peer of the interop test, pinned by its package-lock.json. `npm install
# --no-save` installs exactly the lock's tree and writes nothing; not `npm ci`, which (npm >=
# 11.16, npm/cli#9846) rejects the lock npm itself wrote because the registry serves the QUIC
# add-on for linux-x64-gnu only, not its other platforms (optional dependencies; README, QUIC).
JS_PEER := tests/interop/js
$(JS_PEER)/node_modules/.package-lock.json: $(JS_PEER)/package-lock.json
	cd $(JS_PEER) && npm install --no-save --no-audit --no-fund --loglevel=error

# The go-libp2p peer of the interop tests (tests/interop/go), pinned by its go.mod and go.sum.
# Go's caches live outside the clone, so a second clone or CI run on the same machine builds
# warm (README, "go-libp2p" has the cold and warm times). Missing Go fails here, in one line.
GO          ?= go
GO_PEER     := tests/interop/go
GO_CACHE    ?= $(HOME)/.cache/p2pchat/go
GO_ENV      := GOCACHE=$(GO_CACHE)/build GOMODCACHE=$(GO_CACHE)/mod GOPATH=$(GO_CACHE)/path \
	GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local
GO_PEER_BIN := $(GO_PEER)/build/peer
$(GO_PEER_BIN): $(GO_PEER)/go.mod $(GO_PEER)/go.sum $(wildcard $(GO_PEER)/*.go $(GO_PEER)/pb/*.go)
	@command -v $(GO) >/dev/null 2>&1 || { echo "interop-go: no Go toolchain ('$(GO)' is not on PATH); the go-libp2p interop tests need Go 1.26.6 or newer (README, go-libp2p)" >&2; exit 1; }
	@echo "==> building the go-libp2p interop peer ($$($(GO) version); cold about 80 s, warm about 2 s: README, go-libp2p)"
	cd $(GO_PEER) && $(GO_ENV) $(GO) build -trimpath -o build/peer .
# protoc-gen-go at the version go.mod pins: tests/test_interop_go.py checks with it that the
# committed Go code of the wire formats is current.
GO_PROTOC_GEN := $(GO_CACHE)/path/bin/protoc-gen-go
$(GO_PROTOC_GEN): $(GO_PEER)/go.mod $(GO_PEER)/go.sum
	cd $(GO_PEER) && $(GO_ENV) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go
interop-go: $(GO_PEER_BIN) $(GO_PROTOC_GEN)

# The rust-libp2p peer of the interop tests (tests/interop/rust), pinned by its Cargo.lock.
# Cargo's registry and build directory live outside the clone, so a second clone or CI run on
# the same machine builds warm (README, "rust-libp2p" has the cold and warm times). Its build.rs
# generates the Rust code of node/wire's .proto files with prost (protoc from a crate, not the
# machine). The binary is copied into the clone, as the go peer's is built there. Missing cargo
# fails here, in one line.
CARGO       ?= cargo
RUST_PEER   := tests/interop/rust
RUST_CACHE  ?= $(HOME)/.cache/p2pchat/rust
RUST_ENV    := CARGO_HOME=$(RUST_CACHE)/home CARGO_TARGET_DIR=$(RUST_CACHE)/target
RUST_PEER_BIN := $(RUST_PEER)/build/peer
$(RUST_PEER_BIN): $(RUST_PEER)/Cargo.toml $(RUST_PEER)/Cargo.lock $(RUST_PEER)/build.rs \
		$(wildcard $(RUST_PEER)/src/*.rs $(RUST_PEER)/proto/*.proto) node/wire/chat.proto node/wire/store_query.proto
	@command -v $(CARGO) >/dev/null 2>&1 || { echo "interop-rust: no Rust toolchain ('$(CARGO)' is not on PATH); the rust-libp2p interop tests need cargo 1.88 or newer (README, rust-libp2p)" >&2; exit 1; }
	@echo "==> building the rust-libp2p interop peer ($$($(CARGO) --version); cold 3 to 5 min, warm under 1 s: README, rust-libp2p)"
	cd $(RUST_PEER) && $(RUST_ENV) $(CARGO) build --release --locked
	mkdir -p $(RUST_PEER)/build && cp $(RUST_CACHE)/target/release/peer $@
interop-rust: $(RUST_PEER_BIN)
# The relay's load generator (tests/interop/go/cmd/load): N go-libp2p conversations through one
# relay, for tests/bench/relay_capacity.py. A second command of the interop peer's module, so
# the same go.mod and go.sum pin both.
GO_LOAD_BIN := $(GO_PEER)/build/load
$(GO_LOAD_BIN): $(GO_PEER)/go.mod $(GO_PEER)/go.sum $(wildcard $(GO_PEER)/cmd/load/*.go)
	@command -v $(GO) >/dev/null 2>&1 || { echo "load-go: no Go toolchain ('$(GO)' is not on PATH); the relay capacity benchmark needs Go 1.26.6 or newer" >&2; exit 1; }
	cd $(GO_PEER) && $(GO_ENV) $(GO) build -trimpath -o build/load ./cmd/load
load-go: $(GO_LOAD_BIN)

# Regenerate the Go code of the wire formats for the go peer (committed, as the Python code is).
go-proto: $(DEV) $(GO_PROTOC_GEN)
	PATH="$(GO_CACHE)/path/bin:$$PATH" $(BIN)/python -m grpc_tools.protoc -I node/wire \
		--go_out=$(GO_PEER)/pb --go_opt=paths=source_relative \
		--go_opt=Mchat.proto=p2pchat/interop/go/pb --go_opt=Mstore_query.proto=p2pchat/interop/go/pb \
		node/wire/chat.proto node/wire/store_query.proto

# The suite on TEST_WORKERS pytest-xdist workers: most tests wait on real processes and sockets,
# so several at once use the cores better. The load-sensitive kinds (the hostile suite, the
# container and NAT labs, the namespace labs) still run one test at a time, each kind on one
# worker (tests/scheduling.py). TEST_WORKERS=0: every test in one process, one after another.
TEST_WORKERS ?= 3

# The rust peer is built by its tests (tests/test_interop_rust.py, ensure_built), beside the rest
# of the suite: a cold build takes minutes.
unit: $(DEV) $(JS_PEER)/node_modules/.package-lock.json interop-go load-go
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

test: lint typecheck unit

# The README's interop matrix, from a run of every interop test (tests/interop_matrix.py).
interop-matrix: $(DEV) $(JS_PEER)/node_modules/.package-lock.json interop-go
	$(BIN)/python -m tests.interop_matrix

# Benchmarks: real processes on 127.0.0.1, one JSON object per scenario on stdout.
bench: $(DEV) load-go
	$(BIN)/python -m tests.bench.chat burst paced
	$(BIN)/python -m tests.bench.relay reservations relayed_latency
	$(BIN)/python -m tests.bench.relayed_chat conversation overhead
	BENCH_CAPACITY_SECONDS=30 $(BIN)/python -m tests.bench.relay_capacity 100 250
	$(BIN)/python -m tests.bench.holepunch
	$(BIN)/python -m tests.bench.archive ingest query catchup
	$(BIN)/python -m tests.bench.nat port-preserving symmetric
	$(BIN)/python -m tests.bench.mailbox
	$(BIN)/python -m tests.bench.mailbox_routes
	$(BIN)/python -m tests.bench.private_rooms
	$(BIN)/python -m tests.bench.dm
	$(BIN)/python -m tests.bench.connection_setup
	$(BIN)/python -m tests.bench.connection_setup_lab
	$(MAKE) bench-long

# The long ones, in the NAT lab's network namespaces (root, iproute2, iptables): a 30-minute
# relayed conversation through symmetric NATs, and bursts bigger than a circuit's budget.
bench-long: $(DEV)
	$(BIN)/python -m tests.bench.relayed_nat long overburst

# The container image p2pchat:local (Dockerfile), built with no image registry: local base
# image and wheelhouse (ops/containers/README.md).
image: $(RUNTIME)
	ops/containers/image.sh

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
