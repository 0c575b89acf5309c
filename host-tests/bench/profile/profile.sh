#!/usr/bin/env bash
# Where the filter's time goes, per request (see host-tests/bench/PERFORMANCE.md):
#   1. native timing and host-call counts of the bench's requests through llmgw_filter::exchange;
#   2. callgrind (instructions, deterministic: unaffected by other load) with the top functions.
# Usage: host-tests/bench/profile/profile.sh [OUT_DIR]   (needs valgrind: apt-get install valgrind)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/../../../target/bench/profile}"
mkdir -p "$out"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/../../../target/bench/profile-target}"
cargo build --release --manifest-path "$here/Cargo.toml"
bin="$CARGO_TARGET_DIR/release/llmgw-bench-profile"
for args in "openai json 1024" "anthropic json 1024" "openai stream 1024" "anthropic stream 1024" "openai json 102400"; do
  "$bin" $args 5000 2>/dev/null
done | tee "$out/native.txt"
command -v valgrind >/dev/null || { echo "valgrind not installed: skipping callgrind" >&2; exit 0; }
strip_paths='s|/root/.cargo/registry/src/[^/]*/||g; s|/work/main/filter/src/||g; s|/rustc/[0-9a-f]*/library/||g; s| \[[^]]*\]$||'
for args in "openai json 1024" "anthropic json 1024" "openai stream 1024"; do
  name="${args// /-}"
  valgrind --tool=callgrind --callgrind-out-file="$out/callgrind-$name.out" "$bin" $args 500 >/dev/null 2>&1
  {
    echo "== $args: instructions per request, inclusive (callgrind, 500 requests)"
    callgrind_annotate --inclusive=yes "$out/callgrind-$name.out" 2>/dev/null \
      | grep -E '(Exchange::on_|request::read|usage::from|Labels::tagged|glob_matches|Translator>::(request|response)_body|format_escaped_str |upstream_path|auth::headers)' \
      | sed "$strip_paths" \
      | awk 'match($0, /\)  [^ :]*:/) { fn = substr($0, RSTART + RLENGTH); if (seen[fn]++) next;
             n = $1; gsub(",", "", n); printf "%8.0f  %s\n", n / 500, fn }' | cut -c1-150 | head -16
  } | tee -a "$out/callgrind-summary.txt"
done
