#!/usr/bin/env bash
# The filter's work per request, natively (host-tests/bench/PERFORMANCE.md, "Where the time goes"
# and "Regression check"): the bench's requests through llmgw_filter::exchange with an in-memory
# host that counts host calls; callgrind counts the instructions inside the filter's callbacks.
#
#   profile.sh [annotate]          native µs and host calls per request, then callgrind's top functions
#   profile.sh run [--json] [SCENARIO...]       µs per request (native) and host calls per request
#   profile.sh callgrind [SCENARIO...]          instructions per request (deterministic)
#   profile.sh check [--json-out FILE]          against baseline.json: exits 1 naming every scenario
#                                               more than 10% above its figure (`make bench-check`)
#   profile.sh update                           measures every scenario, rewrites baseline.json
#   profile.sh list | build | help
#
# All but run/list need valgrind (apt-get install valgrind; `make bench-check` installs it). Output
# files go to $PROFILE_OUT (default ${CARGO_TARGET_DIR:-target}/bench/profile), the build to
# $PROFILE_TARGET_DIR (default ${CARGO_TARGET_DIR:-target}/bench/profile-target): the tool is a Cargo
# project of its own, release profile opt-level s like the .wasm, with symbols for callgrind.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
base="${CARGO_TARGET_DIR:-$repo/target}"
out="${PROFILE_OUT:-$base/bench/profile}"
export CARGO_TARGET_DIR="${PROFILE_TARGET_DIR:-$base/bench/profile-target}"
bin="$CARGO_TARGET_DIR/release/llmgw-bench-profile"
cmd="${1:-annotate}"
[ $# -gt 0 ] && shift

cargo build --release --manifest-path "$here/Cargo.toml" >&2
mkdir -p "$out"
case "$cmd" in
  build) echo "$bin"; exit 0 ;;
  check|update) exec "$bin" "$cmd" "$here/baseline.json" --out "$out/callgrind" "$@" ;;
  callgrind) exec "$bin" callgrind --out "$out/callgrind" "$@" ;;
  run|list|help|loop) exec "$bin" "$cmd" "$@" ;;
  annotate) ;;
  *) "$bin" help >&2; exit 2 ;;
esac

"$bin" run | tee "$out/native.txt"
command -v valgrind >/dev/null || { echo "valgrind not installed: skipping callgrind" >&2; exit 0; }
strip_paths='s|/root/.cargo/registry/src/[^/]*/||g; s|[^ ]*/filter/src/||g; s|/rustc/[0-9a-f]*/library/||g; s| \[[^]]*\]$||'
iters=200
: > "$out/callgrind-summary.txt"
for name in openai-json-1k anthropic-json-1k openai-stream-1k fallback-openai-json-1k budget-openai-json-1k; do
  file="$out/callgrind-$name.out"
  valgrind --tool=callgrind --callgrind-out-file="$file" --collect-atstart=no \
    '--toggle-collect=llmgw_bench_profile::scenario::in_filter*' "$bin" loop "$name" "$iters" >/dev/null 2>&1
  {
    echo "== $name: instructions per request, inclusive (callgrind, $iters requests)"
    callgrind_annotate --inclusive=yes "$file" 2>/dev/null \
      | grep -E '(PROGRAM TOTALS|Exchange::on_|request::read|usage::from|Labels::tagged|glob_matches|Translator>::(request|response)_body|format_escaped_str |upstream_path|auth::headers|restore_or_keep|attempt_target|on_attempt_answer|budget::(reserve|settle|plan)|reserve_budgets|settle_budgets)' \
      | sed "$strip_paths" \
      | awk -v n="$iters" 'match($0, /\)  [^ :]*:/) { fn = substr($0, RSTART + RLENGTH); if (seen[fn]++) next;
             v = $1; gsub(",", "", v); printf "%8.0f  %s\n", v / n, fn; next }
             /PROGRAM TOTALS/ { v = $1; gsub(",", "", v); printf "%8.0f  total\n", v / n }' | cut -c1-150 | head -20
  } | tee -a "$out/callgrind-summary.txt"
done
