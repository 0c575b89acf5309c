# shared helpers; source me
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ENVOY=${ENVOY_BIN:-$HERE/../../../.venv/bin/envoy}
WASM=$HERE/target/wasm32-wasip1/release/spike_filter.wasm
PA=40801; PB=40945; PC=37817; PL=60453; PADM=41077
PIDS=()
up() { python3 $HERE/upstream.py "$1" "$2" "$3" >>"$LOG.upstreams" 2>&1 & PIDS+=($!); }
start_envoy() { # $1 yaml
  $ENVOY -c "$1" --concurrency 1 --use-dynamic-base-id -l info --component-log-level wasm:info,router:debug,upstream:debug >"$LOG.envoy" 2>&1 & EPID=$!; PIDS+=($EPID)
  for i in $(seq 1 50); do curl -s -o /dev/null http://127.0.0.1:$PADM/ready && break; sleep 0.2; done
}
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT
