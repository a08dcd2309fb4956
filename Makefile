# roomcast: the two commands a newcomer needs are `make run` and `make test`.

SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: help run cluster-up cluster-down bench chaos floods build test lint fmt fuzz clean

help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

DATA_DIR ?= data

run: ## One node on 127.0.0.1:8080, embedded backend, anonymous clients allowed, messages archived in $(DATA_DIR)/roomcast.db (SQLite).
	mkdir -p $(DATA_DIR)
	@# The whole workspace, like make test and every script: one feature set, one release build.
	$(CARGO) build --release --workspace --bins
	$(or $(CARGO_TARGET_DIR),target)/release/roomcast \
		--listen 127.0.0.1:8080 --allow-anonymous --api-key dev-api-key \
		--archive sqlite://$(DATA_DIR)/roomcast.db

cluster-up: ## Local cluster: 6-process Redis Cluster, 3 gateways, nginx on 127.0.0.1:8080.
	deploy/local/cluster.sh up

cluster-down: ## Stop the local cluster; nothing is left running.
	deploy/local/cluster.sh down

bench: ## Side-by-side benchmark against Socket.IO + Redis adapter; writes docs/benchmarks.md (BENCH_QUICK=1 for a smoke run).
	loadtest/bench.sh

chaos: ## Fault injection under load (gateway kill/drain/cut, Redis failover/kill/pause); writes docs/reliability.md (CHAOS_QUICK=1: the short one in make test).
	deploy/local/chaos.sh

floods: ## Floods and slow consumers, full size: 20k-client reconnect storm, one user flooding 3 nodes, slow readers, a 10k-member room (docs/floods.md; `loadtest/floods.sh --short` is the one in make test).
	loadtest/floods.sh

build: ## Release build of every binary.
	$(CARGO) build --release --workspace

test: ## Every test, against real Redis Clusters it starts and stops (installs redis-server, nginx).
	deploy/local/test.sh

lint: ## rustfmt and clippy, warnings are errors.
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code.
	$(CARGO) fmt --all

fuzz: ## Fuzz every decoder, FUZZ_SECS (default 60) seconds per target; needs nightly, installs cargo-fuzz (docs/fuzzing.md).
	FUZZ_SECS=$(or $(FUZZ_SECS),60) fuzz/run.sh $(FUZZ_TARGETS)

clean: ## Remove build output.
	$(CARGO) clean
