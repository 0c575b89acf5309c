#!/bin/bash
# Q1-Q4: single cluster, P0=a (MODE_A), P1=b (MODE_B)
cd "$(dirname "$0")"; source ./common.sh
MODE_A=${1:-500}; MODE_B=${2:-ok}; CFG=${3:-name=prio}; TAG=${4:-t1_${MODE_A}_${MODE_B}}
LOG=out/$TAG; rm -f $LOG.*
python3 render.py ${YAML:-t1_priority.yaml} out/$TAG.yaml ${PRECFG:+"$PRECFG"} "$CFG"
[ "$MODE_A" != down ] && up $PA a $MODE_A; up $PB b $MODE_B; sleep 0.5
start_envoy out/$TAG.yaml
for i in $(seq 1 ${N:-2}); do
  curl -s -D - -X POST http://127.0.0.1:$PL/chat/completions -H 'authorization: Bearer client-key' -H 'content-type: application/json' -d '{"model":"m","msg":"hi'$i'"}' --max-time 15 >>$LOG.client; echo >>$LOG.client
done
sleep 0.3; curl -s http://127.0.0.1:$PADM/clusters | grep -E '::(health_flags|rq_total|rq_error|cx_connect_fail|success_rate)|outlier' >$LOG.clusters
