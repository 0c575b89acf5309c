#!/bin/bash
# show.sh TAG: compact view of a run
T=out/$1
echo "== client"; cat $T.client 2>/dev/null | grep -vE '^(date|server):'
echo "== upstreams"; cat $T.upstreams 2>/dev/null
echo "== envoy (SPIKE/ACCESS/errors)"; grep -E 'SPIKE|ACCESS|\]\[(error|critical|warning)\]' $T.envoy | grep -vE 'prop (xds.upstream_host_metadata(.filter_metadata.llmgw)? |upstream_host_metadata|upstream.port|xds.cluster_metadata|xds.route_name)' | grep -v 'Deprecated' | sed -E 's/^\[[^]]*\]\[[0-9]*\]\[info\]\[wasm\] \[[^]]*\] wasm log [a-z0-9 ]*: //' | cut -c1-260
[ -s $T.clusters ] && { echo "== clusters"; cat $T.clusters; }
