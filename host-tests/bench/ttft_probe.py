#!/usr/bin/env python3
"""Where llmgw's added time to first token goes: time to first token of sequential streams (1 KB
request, `bench-mock streams`) through plain Envoy, the no-op Wasm filter, llmgw's skeleton and llmgw,
with and without `stream_options.include_usage` in the request (without it, llmgw splices it in and
takes the usage chunk out of the stream). Rounds interleave the configurations; medians per round.

    .venv/bin/python host-tests/bench/ttft_probe.py [--rounds 5] [--streams 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as b  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--mock-bin", type=Path, default=b.REPO / "target/release/bench-mock")
    ap.add_argument("--baseline-wasm", type=Path,
                    default=b.REPO / "target/bench/baseline-target/wasm32-wasip1/release/llmgw_bench_baseline_filter.wasm")
    ap.add_argument("--out", type=Path, default=b.REPO / "target/bench/ttft-probe")
    a = ap.parse_args()
    (a.out / "logs").mkdir(parents=True, exist_ok=True)
    cpus = sorted(b.os.sched_getaffinity(0))
    client, proxy = ({cpus[0]}, {cpus[1]}) if len(cpus) >= 2 else (None, None)
    prof = dict(b.PROFILES["full"])
    wasm, envoy = b.e2e.wasm_path().resolve(), b.e2e.envoy_bin()
    plain_body = a.out / "stream.json"
    plain_body.write_bytes(b.make_body(b.OPENAI_MODEL, 1024, stream=True))
    doc = json.loads(plain_body.read_bytes())
    doc["stream_options"] = {"include_usage": True}
    usage_body = a.out / "stream-usage.json"
    usage_body.write_text(json.dumps(doc, separators=(",", ":")))
    mock = b.start_mock(a.mock_bin, prof, client, a.out)
    port = int(mock.url.rsplit(":", 1)[1])
    configs = {
        "envoy": b.envoy_config(port, wasm, plain=True),
        "wasm-noop": b.baseline_config(port, a.baseline_wasm.resolve(), "wasm-noop"),
        "wasm-buffer": b.baseline_config(port, a.baseline_wasm.resolve(), "wasm-buffer"),
        "llmgw": b.envoy_config(port, wasm, plain=False),
    }
    runs = [("envoy", plain_body), ("wasm-noop", plain_body), ("wasm-buffer", plain_body),
            ("llmgw", plain_body), ("llmgw", usage_body)]
    results: dict[str, list[float]] = {}
    try:
        for r in range(a.rounds):
            servers = {n: b.start_envoy(f"ttft-{n}-r{r}", c, envoy, proxy, a.out) for n, c in configs.items()}
            try:
                for n, body in runs:  # warm-up
                    b.stream_client(a.mock_bin, servers[n].url + "/v1/chat/completions", body, 20, client)
                for n, body in runs[r % len(runs):] + runs[: r % len(runs)]:
                    s = b.stream_client(a.mock_bin, servers[n].url + "/v1/chat/completions", body, a.streams, client)
                    if s["errors"]:
                        raise RuntimeError(f"{n}: {s['error_samples']}")
                    key = n + (" (client asks for usage)" if body == usage_body else "")
                    results.setdefault(key, []).append(statistics.median(s["ttft_us"]))
            finally:
                for srv in servers.values():
                    srv.stop()
    finally:
        mock.stop()
    base = results["envoy"]
    print(f"time to first token, median of per-round medians over {a.rounds} rounds × {a.streams} streams (µs)")
    for k, v in results.items():
        added = [x - y for x, y in zip(v, base)]
        print(f"  {k:40s} {statistics.median(v):8.0f}   added over plain Envoy {statistics.median(added):+6.0f}"
              f"  (rounds: {', '.join(f'{x:+.0f}' for x in added)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
