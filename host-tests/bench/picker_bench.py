#!/usr/bin/env python3
"""`make bench` picker run (issue 14): which endpoint a request lands on decides its time to first token.

Per algorithm, a fresh `llmgw run` (one backend, `picker: {algorithm}`, two Envoy workers) over 4 fresh
mock vLLM servers (`mock-provider --prefill-ms`: a prompt's first token waits the prefill time scaled by
the share of its blocks this server has not cached; the servers are of unequal speed) and one workload
of shared-prefix conversations: CONVERSATIONS conversations, each with its own long system prompt,
TURNS turns each (a turn resends the conversation so far plus a new question), CLIENTS at a time,
streamed. Reported per algorithm: time to first token p50/p99, throughput, and both against random.

    picker_bench.py --mock-bin target/release/mock-provider --llmgw-bin target/release/llmgw [--out DIR]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ALGORITHMS = ["random", "least-request", "prefix-cache", "least-latency", "least-kv-cache"]
# (prefill ms for an uncached prompt, ms between output tokens): two fast servers, two slow ones.
SPEEDS = [(150, 4), (150, 4), (300, 8), (450, 12)]
CONVERSATIONS, TURNS, CLIENTS = 24, 4, 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mock(mock_bin: str, name: str, prefill: int, gap: int) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([mock_bin, "--port", "0", "--name", name, "--no-record", "--prefill-ms", str(prefill),
                             "--chunk-gap-ms", str(gap), "--prefix-block-bytes", "64"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = proc.stdout.readline().decode()
    m = re.fullmatch(r"listening \S+:(\d+)\s*", line)
    if not m:
        raise RuntimeError(f"mock-provider: {line!r}")
    return proc, int(m.group(1))


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def conversation(c: int) -> list[list[dict]]:
    """The message lists of one conversation's turns: each extends the previous one."""
    system = f"Conversation {c}. You are the support assistant of shop {c}: " + "Be brief, polite and exact. " * 60
    messages = [{"role": "system", "content": system}]
    turns = []
    for t in range(TURNS):
        messages = messages + [{"role": "user", "content": f"Question {t} of conversation {c}?"}]
        turns.append(messages)
        messages = messages + [{"role": "assistant", "content": f"Answer {t}."}]
    return turns


def one(port: int, messages: list[dict]) -> float:
    """Streams one chat completion; seconds to the first content chunk."""
    body = json.dumps({"model": "m", "stream": True, "messages": messages})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    start = time.monotonic()
    conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"status {resp.status}: {resp.read()[:200]!r}")
    first = None
    while line := resp.readline():
        if first is None and line.startswith(b"data: {"):
            first = time.monotonic() - start
    conn.close()
    if first is None:
        raise RuntimeError("no content chunk")
    return first


def run_algorithm(algorithm: str, mock_bin: str, llmgw_bin: str, workdir: Path) -> dict:
    mocks = []
    try:
        for i, (prefill, gap) in enumerate(SPEEDS):
            mocks.append(start_mock(mock_bin, f"vllm{i}", prefill, gap))
        cfg = {"backends": [{"name": "vllm", "schema": "OpenAI", "prefix": "/v1",
                             "endpoints": [f"127.0.0.1:{port}" for _, port in mocks],
                             "picker": {"algorithm": algorithm}}]}
        (workdir / f"{algorithm}.yaml").write_text(json.dumps(cfg))  # YAML is a superset of JSON
        port, admin = free_port(), free_port()
        log_path = workdir / f"{algorithm}.log"
        with open(log_path, "wb") as log:
            gw = subprocess.Popen([llmgw_bin, "run", str(workdir / f"{algorithm}.yaml"), "--port", str(port),
                                   "--admin-port", str(admin), "--concurrency", "2"], stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while b"llmgw: ready" not in log_path.read_bytes():
                if gw.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(log_path.read_text()[-2000:])
                time.sleep(0.05)

            def converse(c: int) -> list[float]:
                return [one(port, messages) for messages in conversation(c)]

            start = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
                ttfts = sorted(t for ts in pool.map(converse, range(CONVERSATIONS)) for t in ts)
            elapsed = time.monotonic() - start
        finally:
            stop(gw)
    finally:
        for proc, _ in mocks:
            stop(proc)
    pct = lambda q: ttfts[min(len(ttfts) - 1, int(q * len(ttfts)))] * 1000  # noqa: E731
    return {"algorithm": algorithm, "requests": len(ttfts), "ttft_p50_ms": pct(0.50), "ttft_p99_ms": pct(0.99),
            "throughput_rps": len(ttfts) / elapsed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mock-bin", required=True)
    ap.add_argument("--llmgw-bin", required=True)
    ap.add_argument("--out", default="target/bench")
    ap.add_argument("--only", nargs="*", default=ALGORITHMS)
    args = ap.parse_args()
    os.environ.setdefault("LLMGW_LOG_LEVEL", "warn")
    results = []
    with tempfile.TemporaryDirectory(prefix="llmgw-picker-bench-") as d:
        for algorithm in args.only:
            results.append(run_algorithm(algorithm, args.mock_bin, args.llmgw_bin, Path(d)))
            r = results[-1]
            print(f"  {algorithm}: {r['requests']} requests, TTFT p50 {r['ttft_p50_ms']:.0f} ms", file=sys.stderr)
    base = next((r for r in results if r["algorithm"] == "random"), None)
    lines = [f"Picker: {CONVERSATIONS} conversations x {TURNS} turns, {CLIENTS} clients, streamed; 4 mock vLLM "
             f"servers (prefill ms, ms/token: {SPEEDS}) with a prefix cache",
             "",
             "| algorithm | TTFT p50 ms | TTFT p99 ms | req/s | p50 vs random | req/s vs random |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        vs = (f"{r['ttft_p50_ms'] / base['ttft_p50_ms']:.2f}x", f"{r['throughput_rps'] / base['throughput_rps']:.2f}x") \
            if base else ("", "")
        lines.append(f"| {r['algorithm']} | {r['ttft_p50_ms']:.0f} | {r['ttft_p99_ms']:.0f} | "
                     f"{r['throughput_rps']:.1f} | {vs[0]} | {vs[1]} |")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "picker.json").write_text(json.dumps(results, indent=2))
    (out / "picker.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
