#!/usr/bin/env bash
# Runs fuzz targets for a while each and prints one summary line per target.
#   fuzz/run.sh SECONDS [TARGET...]      (no target: all of them)
# Environment: FUZZ_PARALLEL (targets at once, default 2), FUZZ_FORK=1 (keep going after a crash,
# libFuzzer -fork=1 -ignore_crashes=1), FUZZ_MAX_LEN (bytes, default 65536), FUZZ_RSS_MB,
# FUZZ_MALLOC_MB, FUZZ_TOOLCHAIN (default +nightly, else RUSTC_BOOTSTRAP=1 on stable),
# LLMGW_FUZZ_SKIP (violation groups to ignore), FUZZ_EXTRA (more libFuzzer flags).
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^llmgw-fuzz$')
fi
parallel=${FUZZ_PARALLEL:-2}
max_len=${FUZZ_MAX_LEN:-65536}
# One execution may hold twice its input plus a few MiB (the issue's bound); a single allocation
# above that is a finding (libFuzzer's malloc hook, ASan builds). The process RSS also holds the
# sanitizer runtime, the corpus and the coverage maps, so its limit is generous: it catches leaks.
malloc_mb=${FUZZ_MALLOC_MB:-$(( (2 * max_len + (1 << 20) - 1) / (1 << 20) + 4 ))}
rss_mb=${FUZZ_RSS_MB:-2048}
toolchain=${FUZZ_TOOLCHAIN:-}
if [ -z "$toolchain" ]; then
  if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then toolchain=+nightly; else export RUSTC_BOOTSTRAP=1; fi
fi
mkdir -p logs artifacts
run_one() {
  local t=$1
  local dict=()
  case $t in req_*|tr_*) dict=(-dict=dict/llmgw.dict) ;; esac
  local fork=()
  [ "${FUZZ_FORK:-0}" = 1 ] && fork=(-fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1)
  mkdir -p "corpus/$t" "artifacts/$t"
  local status=0
  # shellcheck disable=SC2086
  cargo $toolchain fuzz run --fuzz-dir . "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$seconds" -max_len="$max_len" -rss_limit_mb="$rss_mb" -malloc_limit_mb="$malloc_mb" \
    -timeout=10 -print_final_stats=1 -artifact_prefix="artifacts/$t/" "${dict[@]}" "${fork[@]}" ${FUZZ_EXTRA:-} \
    >"logs/$t.log" 2>&1 || status=$?
  local execs cov
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "logs/$t.log" | tail -1 | grep -o '[0-9]*$' || true)
  if [ -z "$execs" ]; then execs=$(grep -oE '^#[0-9]+' "logs/$t.log" | tail -1 | tr -d '#' || true); fi
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "logs/$t.log" | tail -1 || true)
  local crashes
  crashes=$(find "artifacts/$t" -type f | wc -l)
  printf '%-24s exit %-3s execs %-10s %-22s artifacts %s\n' "$t" "$status" "${execs:-?}" "${cov:-?}" "$crashes"
  return "$status"
}
export -f run_one
export seconds max_len malloc_mb rss_mb toolchain
# Build once, up front (the runs then start at once).
cargo $toolchain fuzz build --fuzz-dir . >logs/build.log 2>&1 || { cat logs/build.log; exit 1; }
printf '%s\n' "${targets[@]}" | xargs -P "$parallel" -I{} bash -c 'run_one {}'
