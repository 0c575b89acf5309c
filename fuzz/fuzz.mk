# Fuzzing (cargo-fuzz / libFuzzer): see fuzz/README.md. Included from the Makefile:
#   include fuzz/fuzz.mk
#
#   make fuzz              every target for FUZZ_SECONDS (default 60) each, FUZZ_PARALLEL (2) at once
#   make fuzz-smoke        every target for FUZZ_SMOKE_SECONDS (10) each, after fuzz-regressions
#   make fuzz-regressions  replays fuzz/seeds and fuzz/regressions as a plain cargo test (stable, no
#                          sanitizer; cheap enough for `make test`)
#   make fuzz-seeds        rewrites fuzz/seeds from the golden fixtures and the e2e mock provider
#   FUZZ_TARGETS="req_chat json_scan" limits any of them; FUZZ_FORK=1 keeps fuzzing after a crash.

FUZZ_SECONDS       ?= 60
FUZZ_SMOKE_SECONDS ?= 10
FUZZ_TARGETS       ?=
FUZZ_PARALLEL      ?= 2
export FUZZ_PARALLEL

.PHONY: fuzz fuzz-smoke fuzz-tools fuzz-regressions fuzz-seeds

fuzz-tools:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	@rustup toolchain list 2>/dev/null | grep -q '^nightly' || \
	  echo "fuzz: no nightly toolchain; building with RUSTC_BOOTSTRAP=1 on stable" >&2

fuzz: fuzz-tools
	fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-smoke: fuzz-tools fuzz-regressions
	FUZZ_MAX_LEN=16384 fuzz/run.sh $(FUZZ_SMOKE_SECONDS) $(FUZZ_TARGETS)

fuzz-regressions:
	$(CARGO) test --manifest-path fuzz/Cargo.toml --test regressions

fuzz-seeds: host-bins
	$(CARGO) run --manifest-path fuzz/Cargo.toml --example seeds -- $(abspath $(MOCK))
