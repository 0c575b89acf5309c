#!/bin/bash
# Q5: aggregate cluster agg=[a,b]; each of agg, a, b has its own upstream wasm filter (plugin cfg names it)
cd "$(dirname "$0")"; source ./common.sh
MODE_A=${1:-500}; MODE_B=${2:-ok}; TAG=${3:-t5_${MODE_A}_${MODE_B}}
LOG=out/$TAG; rm -f $LOG.*
python3 render.py ${YAML:-t5_aggregate.yaml} out/$TAG.yaml ${CFGS:-"backend=AGG" "backend=a" "backend=b"}
up $PA a $MODE_A; up $PB b $MODE_B; sleep 0.5
start_envoy out/$TAG.yaml
for i in $(seq 1 ${N:-2}); do
  curl -s -D - -X POST http://127.0.0.1:$PL/chat/completions -H 'authorization: Bearer client-key' -d '{"model":"m","msg":"hi'$i'"}' --max-time 15 >>$LOG.client; echo >>$LOG.client
done
sleep 0.3; curl -s http://127.0.0.1:$PADM/clusters | grep -E '::(health_flags|rq_total|rq_error)' >$LOG.clusters
