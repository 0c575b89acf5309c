#!/bin/bash
# buffer limit: route per_request_buffer_limit_bytes 1024, 4 KiB body, primary 500
cd "$(dirname "$0")"; source ./common.sh
TAG=${1:-t8}; SIZE=${2:-4096}; LOG=out/$TAG; rm -f $LOG.*
python3 render.py ${YAML:-t8_buffer_limit.yaml} out/$TAG.yaml "name=prio"
up $PA a 500; up $PB b ok; sleep 0.5
start_envoy out/$TAG.yaml
printf "{\"msg\":\"%s\"}" "$(head -c $SIZE /dev/zero | tr "\\0" x)" > $LOG.body
curl -s -D - -X POST http://127.0.0.1:$PL/chat/completions --data-binary @$LOG.body --max-time 15 | cut -c1-120 >>$LOG.client
sleep 0.3
