#!/usr/bin/env python3
"""`make bench` / `make bench-smoke`: llmgw side by side with plain Envoy and LiteLLM, in one run.

Configurations, all against one `bench-mock serve` (mocks/src/bin/bench_mock.rs):
  direct           the client talks to the mock
  envoy            plain Envoy: the local bootstrap (envoy-configs/local/envoy.yaml) without the wasm
                   filter, route straight to the cluster
  llmgw            the same bootstrap with llmgw (OpenAI backend, routing by model, usage, metrics)
  llmgw-anthropic  llmgw translating OpenAI chat to Anthropic Messages (the mock answers /v1/messages)
  llmgw-fallback   a fallback rule (OpenAI at priority 0, Anthropic at 1) rendered by `llmgw render`:
                   the filter twice per request, downstream (model, rule) and as the rule cluster's
                   upstream filter (translation per attempt); every request is served by priority 0
  llmgw-cache-hit  llmgw with the exact response cache on the OpenAI rule (CACHE): after the first, every
                   request is answered from the cache (shared data; no upstream call)
  llmgw-cache-miss the same Envoy, every request with `Cache-Control: no-cache`: the provider answers, the
                   answer is recorded and stored (the cost a miss adds over llmgw)
  litellm          LiteLLM proxy (pinned, one worker) from target/bench/litellm-venv, when installed
  llmgw-run        `llmgw run` itself (the CLI, Envoy it starts, the same two backends, no consumers): the
                   reference of the two below
  llmgw-auth-budget
                   `llmgw run` with an API key consumer (Envoy's api_key_auth; its key is the
                   `Authorization: Bearer sk-bench` every request of the bench carries) and local budgets counted by the filter (a tokens budget
                   for the consumer and a "*" requests budget, limits no request reaches)
  llmgw-auth-budget-redis
                   the same with `budget_store: {redis}`: Envoy's rate limit filter and the `llmgw ratelimit`
                   child of `llmgw run` counting in a redis-server the bench starts (pinned with the proxy; its
                   CPU counts as the proxy's and is shown apart), skipped when redis-server is not installed
  portkey          Portkey's open-source gateway (npm @portkey-ai/gateway, pinned in host-tests/bench/portkey,
                   on Node, one process) from target/bench/portkey, when installed; the provider and the
                   mock's URL travel in its x-portkey-provider / x-portkey-custom-host request headers
and, with --baseline-wasm (host-tests/bench/baseline-filter, built by `make bench`), two reference
points for the cost of any Rust proxy-wasm filter in Envoy's V8:
  wasm-noop        Envoy + a wasm filter whose callbacks all return Continue
  wasm-buffer      Envoy + llmgw's skeleton without its logic: buffer and read the body once, set two
                   headers, clear the route cache, route on x-llmgw-backend
and, with --ext-proc-bin (host-tests/bench/ext-proc-skeleton, built by `make bench`), the architecture
llmgw replaces (Envoy AI Gateway's: Envoy → an ext_proc gRPC server) doing the least it can do:
  extproc          Envoy + envoy.filters.http.ext_proc → ext-proc-skeleton (Rust, tonic, one thread,
                   pinned with the proxy; its CPU and memory count as the proxy's): request headers
                   (CONTINUE), then the BUFFERED body, from which it reads `model` and sets
                   x-ai-eg-model + clear_route_cache; the route picks the cluster on x-ai-eg-model

Per configuration and round: latency at concurrency 1 (wrk -c1), saturation (wrk -c64: throughput and
CPU per request), the agentgateway-style run (wrk -c32, 1 KB: throughput and latency under load), a
fixed-load run (`bench-mock rate`: 2,000 req/s open-loop, p50/p99 from when each request was due), and
streams (time to first token, inter-chunk gaps).

Envoy runs with --concurrency 1. With 2+ cores, the proxy is pinned to core 1 and the load
generator (wrk), the stream client and the mock to core 0. Every round starts fresh proxies, and
measures in it every configuration (order rotated per round); ratios and "added" figures are
computed within a round, then the median over rounds is reported with its spread (min-max).

With --profile-bin (host-tests/bench/profile, built by `make bench`), the filter's own work per request
is measured too, natively and deterministically: callgrind instructions inside the filter's callbacks
and host calls (VM boundary crossings) per request, per scenario, checked against the committed
host-tests/bench/profile/baseline.json (a scenario > 10% above it is a failure, as in `make bench-check`).

Outputs: a table on stdout, <out>/results.json, <out>/results.md, <out>/results.svg (and <out>/profile.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "host-tests" / "e2e"))
import llmgw_e2e as e2e  # noqa: E402  (render(), http(), binaries)

SIZES = {"1k": 1024, "100k": 100 * 1024}
OPENAI_MODEL, OPENAI_SLOW = "gpt-4o-mini", "gpt-4o-slow"
ANTHROPIC_MODEL, ANTHROPIC_SLOW = "claude-3-5-haiku-latest", "claude-slow"

PLUGIN = {
    "backends": [
        {"name": "openai", "schema": "OpenAI", "prefix": "/v1", "auth": {"bearer": "sk-bench-upstream"}},
        {"name": "anthropic", "schema": "Anthropic", "auth": {"x_api_key": "sk-ant-bench-upstream"}},
    ],
    "rules": [
        {"name": "openai-models", "match": {"model": {"glob": "gpt-*"}}, "backends": [{"name": "openai"}]},
        {"name": "anthropic-models", "match": {"model": {"prefix": "claude-"}}, "backends": [{"name": "anthropic"}]},
    ],
}

# The response cache of llmgw-cache-hit/-miss, on PLUGIN's OpenAI rule. The bench's requests carry no
# temperature (the providers' default of 1): `nonzero_temperature` caches them.
CACHE = {"mode": "exact", "nonzero_temperature": True}
CACHED = ("llmgw-cache-hit", "llmgw-cache-miss")

PROFILES = {
    # seconds per wrk run, rounds, saturation connections, streams per round, open streams held
    "full": dict(rounds=5, lat_s=3, thr_s=3, warm_s=1, conns=64, streams=60, hold=100, chunks=8, gap_ms=2,
                 rate_rps=2000, rate_s=3, c32_s=3),
    "smoke": dict(rounds=1, lat_s=1, thr_s=1, warm_s=0, conns=8, streams=4, hold=4, chunks=4, gap_ms=1,
                  rate_rps=200, rate_s=1, c32_s=1),
}

LABELS = {
    "direct": "direct to mock",
    "envoy": "plain Envoy",
    "wasm-noop": "Envoy + no-op wasm",
    "wasm-buffer": "Envoy + wasm skeleton",
    "extproc": "Envoy + ext_proc skeleton",
    "llmgw": "Envoy + llmgw (OpenAI)",
    "llmgw-anthropic": "Envoy + llmgw → Anthropic",
    "llmgw-fallback": "Envoy + llmgw, fallback rule",
    "llmgw-cache-hit": "Envoy + llmgw, cache hit",
    "llmgw-cache-miss": "Envoy + llmgw, cache miss",
    "llmgw-run": "llmgw run",
    "llmgw-auth-budget": "llmgw run + key auth + budgets",
    "llmgw-auth-budget-redis": "llmgw run + key auth + budgets in Redis",
    "litellm": "LiteLLM proxy",
    "portkey": "Portkey gateway",
}
PEERS = ("litellm", "portkey")
# Configurations run through `llmgw run`; those with a consumer and budgets (compared with llmgw-run).
LLMGW_RUN = ("llmgw-run", "llmgw-auth-budget", "llmgw-auth-budget-redis")
BUDGETED = ("llmgw-auth-budget", "llmgw-auth-budget-redis")
# The consumer's API key: the `Authorization: Bearer sk-bench` every bench client sends (wrk's post.lua,
# bench-mock's clients, check_json_reply), so the requests are the same bytes in every configuration.
CLIENT_KEY = "sk-bench"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# processes and /proc


def pinner(cpus: set[int] | None):
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def tree(pid: int) -> list[int]:
    """pid and its descendants."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])  # utime, stime (fields 14, 15)
        except (OSError, IndexError, ValueError):
            pass
    return total / TICK


def ratelimit_pids(pids: list[int]) -> list[int]:
    """Those of `pids` that are `llmgw ratelimit` (the child `llmgw run` starts for a budget_store)."""
    out = []
    for p in pids:
        try:
            if b"\0ratelimit\0" in Path(f"/proc/{p}/cmdline").read_bytes():
                out.append(p)
        except OSError:
            pass
    return out


def rss_kb(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text(), re.M)
            total += int(m.group(1)) if m else 0
        except OSError:
            pass
    return total


def core_times() -> dict[str, tuple[int, int]]:
    """per cpuN: (busy, total) jiffies."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if re.match(r"cpu\d+ ", line):
            name, *vals = line.split()
            v = [int(x) for x in vals]
            idle = v[3] + v[4]
            out[name] = (sum(v[:8]) - idle, sum(v[:8]))
    return out


def busy(before, after, cpu: int | None) -> float | None:
    if cpu is None:
        return None
    k = f"cpu{cpu}"
    db, dt_ = after[k][0] - before[k][0], after[k][1] - before[k][1]
    return db / dt_ if dt_ else None


class Server:
    """A server process (proxy or mock): its URL for chat completions, pid tree, admin URL."""

    def __init__(self, name: str, proc: subprocess.Popen, url: str, admin: str | None = None, log_path=None):
        self.name, self.proc, self.url, self.admin, self.log_path = name, proc, url, admin, log_path
        # Processes on the proxy path beside the proxy (the ext_proc server): counted in its CPU and RSS.
        self.sidecars: list[subprocess.Popen] = []
        # Request headers every client sends to this server (`name: value`).
        self.headers: list[str] = []

    def pids(self) -> list[int]:
        return [p for proc in (self.proc, *self.sidecars) for p in tree(proc.pid)]

    def stop(self) -> None:
        stop(self.proc)
        for proc in self.sidecars:
            stop(proc)

    def heap_bytes(self) -> int | None:
        if not self.admin:
            return None
        try:
            _, _, body = e2e.http("GET", self.admin + "/memory", timeout=5)
            return int(json.loads(body)["allocated"])
        except (OSError, ValueError, KeyError):
            return None


def start_mock(bin_: Path, prof: dict, cpus, out: Path) -> Server:
    err = open(out / "logs" / "mock.log", "wb")
    proc = subprocess.Popen(
        [str(bin_), "serve", "--port", "0", "--chunks", str(prof["chunks"]), "--gap-ms", str(prof["gap_ms"])],
        stdout=subprocess.PIPE, stderr=err, preexec_fn=pinner(cpus),
    )
    line = e2e._read_line(proc, 15.0)
    m = re.fullmatch(r"listening (\S+):(\d+)", line.strip())
    if not m:
        stop(proc)
        raise RuntimeError(f"bench-mock: unexpected first line {line!r}")
    return Server("mock", proc, f"http://127.0.0.1:{m.group(2)}")


def envoy_config(mock_port: int, wasm: Path, plain: bool, cache: bool = False) -> dict:
    plugin = json.loads(json.dumps(PLUGIN))
    if cache:
        plugin["rules"][0]["cache"] = CACHE
    cfg = e2e.render({"openai": mock_port, "anthropic": mock_port}, plugin, wasm=wasm, stats_flush_interval=None)
    if plain:
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.wasm"]
        hcm["route_config"]["virtual_hosts"][0]["routes"] = [
            {"match": {"prefix": "/"}, "route": {"cluster": "openai", "timeout": "300s"}}
        ]
    return cfg


def fallback_config(mock_port: int, wasm: Path, out: Path) -> dict:
    """`llmgw render` of a fallback rule over the mock (the two-filter design)."""
    import yaml

    llmgw = Path(os.environ.get("LLMGW_BIN", REPO / "target" / "debug" / "llmgw"))
    url = f"http://127.0.0.1:{mock_port}"
    config = {
        "backends": [
            {"name": "openai", "url": url + "/v1", "schema": "OpenAI", "auth": {"bearer_env": "BENCH_OPENAI_KEY"}},
            {"name": "anthropic", "url": url, "schema": "Anthropic", "auth": {"x_api_key_env": "BENCH_ANTHROPIC_KEY"}},
        ],
        "rules": [{"match": {"model": {"glob": "gpt-*"}},
                   "backends": [{"name": "openai", "priority": 0}, {"name": "anthropic", "priority": 1}]}],
    }
    path = out / "logs" / "llmgw-fallback-config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    r = subprocess.run([str(llmgw), "render", str(path), "--port", "0"], capture_output=True, text=True,
                       env={**os.environ, "LLMGW_WASM": str(wasm)}, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"llmgw render failed: {r.stderr[-2000:]}")
    cfg = yaml.safe_load(r.stdout)
    cfg["admin"]["address"]["socket_address"]["port_value"] = 0
    return cfg


FALLBACK_ENV = {"BENCH_OPENAI_KEY": "sk-bench-upstream", "BENCH_ANTHROPIC_KEY": "sk-ant-bench-upstream"}


def baseline_config(mock_port: int, baseline_wasm: Path, kind: str) -> dict:
    cfg = envoy_config(mock_port, baseline_wasm, plain=False)
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    wasm_cfg = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm"][0]["typed_config"]["config"]
    wasm_cfg["configuration"]["value"] = "noop" if kind == "wasm-noop" else "buffer"
    if kind == "wasm-noop":
        hcm["route_config"]["virtual_hosts"][0]["routes"] = [
            {"match": {"prefix": "/"}, "route": {"cluster": "openai", "timeout": "300s"}}
        ]
    return cfg


EXT_PROC_CLUSTER = "ext_proc_skeleton"


def extproc_config(mock_port: int, wasm: Path, ext_proc_port: int) -> dict:
    """The wasm skeleton's bootstrap with Envoy's ext_proc filter in place of the wasm filter, pointed at
    ext-proc-skeleton over HTTP/2; the route picks the cluster on the x-ai-eg-model it sets (the request
    is re-routed after the body, like the wasm skeleton's)."""
    cfg = envoy_config(mock_port, wasm, plain=False)
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [
        {"name": "envoy.filters.http.ext_proc", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": EXT_PROC_CLUSTER}, "timeout": "10s"},
            "processing_mode": {"request_header_mode": "SEND", "request_body_mode": "BUFFERED",
                                "response_header_mode": "SKIP", "response_body_mode": "NONE"},
            "allow_mode_override": False,
            "failure_mode_allow": False,
            "message_timeout": "10s",
        }} if f["name"] == "envoy.filters.http.wasm" else f
        for f in hcm["http_filters"]
    ]
    hcm["route_config"]["virtual_hosts"][0]["routes"] = [
        {"match": {"prefix": "/", "headers": [{"name": "x-ai-eg-model", "string_match": {"prefix": "gpt-"}}]},
         "route": {"cluster": "openai", "timeout": "300s"}, "request_headers_to_remove": ["x-ai-eg-model"]},
        {"match": {"prefix": "/"}, "direct_response": {"status": 404, "body": {"inline_string": "no x-ai-eg-model"}}},
    ]
    cfg["static_resources"]["clusters"].append({
        "name": EXT_PROC_CLUSTER, "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": EXT_PROC_CLUSTER, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": ext_proc_port}}}}]}]},
    })
    return cfg


def start_ext_proc(bin_: Path, cpus, out: Path, name: str) -> tuple[subprocess.Popen, int]:
    """ext-proc-skeleton on a free port, pinned like the proxy: (process, port)."""
    proc = subprocess.Popen([str(bin_), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=open(out / "logs" / f"{name}-ext-proc.log", "wb"), preexec_fn=pinner(cpus))
    line = e2e._read_line(proc, 15.0)
    m = re.fullmatch(r"listening (\S+):(\d+)", line.strip())
    if not m:
        stop(proc)
        raise RuntimeError(f"ext-proc-skeleton: unexpected first line {line!r}")
    return proc, int(m.group(2))


def start_envoy(name: str, cfg: dict, envoy: Path, cpus, out: Path, env: dict | None = None) -> Server:
    import yaml

    path = out / "logs" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    admin_path = out / "logs" / f"{name}.admin"
    admin_path.unlink(missing_ok=True)
    log_path = out / "logs" / f"{name}.log"
    proc = subprocess.Popen(
        [str(envoy), "-c", str(path), "--concurrency", "1", "--disable-hot-restart", "--log-level", "warn",
         "--admin-address-path", str(admin_path)],
        # The access log (stdout) is formatted as configured, and discarded.
        stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"), cwd=REPO, preexec_fn=pinner(cpus),
        env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name}: envoy exited {proc.returncode}: {log_path.read_text()[-2000:]}")
        if admin_path.exists() and admin_path.read_text().strip():
            admin = "http://" + admin_path.read_text().strip()
            try:
                st, _, body = e2e.http("GET", admin + "/ready", timeout=2)
                if st == 200 and body.strip() == b"LIVE":
                    _, _, body = e2e.http("GET", admin + "/listeners?format=json", timeout=2)
                    port = json.loads(body)["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
                    return Server(name, proc, f"http://127.0.0.1:{port}", admin, log_path)
            except (OSError, KeyError, IndexError, ValueError):
                pass
        time.sleep(0.1)
    stop(proc)
    raise TimeoutError(f"{name}: envoy not ready in 60s: {log_path.read_text()[-2000:]}")


def start_litellm(venv: Path, mock_port: int, cpus, out: Path) -> Server:
    import yaml

    params = lambda m: {"model": f"openai/{m}", "api_base": f"http://127.0.0.1:{mock_port}/v1", "api_key": "sk-bench-upstream"}  # noqa: E731
    cfg = {
        "model_list": [{"model_name": m, "litellm_params": params(m)} for m in (OPENAI_MODEL, OPENAI_SLOW)],
        "litellm_settings": {"telemetry": False, "drop_params": True},
    }
    path = out / "logs" / "litellm.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    port = free_port()
    log_path = out / "logs" / "litellm.log"
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the cost map at start
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "NO_DOCS": "True",
    }
    for k in ("DATABASE_URL", "LITELLM_MASTER_KEY", "REDIS_HOST"):
        env.pop(k, None)
    proc = subprocess.Popen(
        [str(venv / "bin" / "litellm"), "--config", str(path), "--host", "127.0.0.1", "--port", str(port),
         "--num_workers", "1", "--telemetry", "False"],
        stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, env=env, cwd=out, preexec_fn=pinner(cpus),
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"litellm exited {proc.returncode}: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            st, _, _ = e2e.http("GET", url + "/health/liveliness", timeout=2)
            if st == 200:
                return Server("litellm", proc, url, None, log_path)
        except OSError:
            pass
        time.sleep(0.5)
    stop(proc)
    raise TimeoutError(f"litellm not ready in 180s: {log_path.read_text(errors='replace')[-2000:]}")


def start_portkey(root: Path, mock_port: int, cpus, out: Path) -> Server:
    script = root / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    port = free_port()
    log_path = out / "logs" / "portkey.log"
    env = {**os.environ, "NODE_ENV": "production"}
    proc = subprocess.Popen(["node", str(script), f"--port={port}", "--headless"], stdout=open(log_path, "wb"),
                            stderr=subprocess.STDOUT, env=env, cwd=out, preexec_fn=pinner(cpus),
                            start_new_session=True)
    srv = Server("portkey", proc, f"http://127.0.0.1:{port}", None, log_path)
    srv.headers = ["x-portkey-provider: openai", f"x-portkey-custom-host: http://127.0.0.1:{mock_port}/v1"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"portkey exited {proc.returncode}: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return srv
        except OSError:
            time.sleep(0.3)
    stop(proc)
    raise TimeoutError(f"portkey not listening in 60s: {log_path.read_text(errors='replace')[-2000:]}")


def llmgw_run_config(name: str, mock_port: int, redis_url: str | None) -> dict:
    """`llmgw run`'s configuration: bench.py's PLUGIN's backends and rules over the mock; for the budget
    configurations an API key consumer and two budgets no request reaches (every request is checked and
    charged, none refused), counted by the filter or, with `redis_url`, in Redis."""
    url = f"http://127.0.0.1:{mock_port}"
    cfg: dict = {
        "backends": [
            {"name": "openai", "url": url + "/v1", "schema": "OpenAI", "auth": {"bearer_env": "BENCH_OPENAI_KEY"}},
            {"name": "anthropic", "url": url, "schema": "Anthropic", "auth": {"x_api_key_env": "BENCH_ANTHROPIC_KEY"}},
        ],
        "rules": [
            {"name": "openai-models", "match": {"model": {"glob": "gpt-*"}}, "backends": [{"name": "openai"}]},
            {"name": "anthropic-models", "match": {"model": {"prefix": "claude-"}}, "backends": [{"name": "anthropic"}]},
        ],
    }
    if name in BUDGETED:
        cfg["consumers"] = [{"name": "team-bench", "api_keys_env": "BENCH_CLIENT_KEYS"}]
        cfg["budgets"] = [
            {"name": "bench-tokens", "consumer": "team-bench", "tokens": 10**12, "per": "day"},
            {"name": "bench-requests", "consumer": "*", "requests": 10**12, "per": "day"},
        ]
    if redis_url:
        cfg["budget_store"] = {"redis": redis_url, "failure_mode": "closed"}
    return cfg


def start_llmgw_run(name: str, cfg: dict, wasm: Path, envoy: Path, cpus, out: Path) -> Server:
    """`llmgw run CONFIG` pinned to the proxy's core (Envoy and `llmgw ratelimit` inherit it): the CPU
    and RSS of its whole process tree count as the proxy's."""
    import yaml

    path = out / "logs" / f"{name}-config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    log_path = out / "logs" / f"{name}.log"
    port, admin = free_port(), free_port()
    env = {**os.environ, **FALLBACK_ENV, "BENCH_CLIENT_KEYS": CLIENT_KEY, "LLMGW_WASM": str(wasm),
           "ENVOY_BIN": str(envoy)}
    proc = subprocess.Popen(
        [str(e2e.llmgw_bin()), "run", str(path), "--port", str(port), "--admin-port", str(admin),
         "--concurrency", "1"],
        # Envoy's access log (its inherited stdout) is discarded, as for the other proxies.
        stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"), cwd=out, env=env, preexec_fn=pinner(cpus),
    )
    srv = Server(name, proc, f"http://127.0.0.1:{port}", None, log_path)
    srv.llmgw_admin = f"http://127.0.0.1:{admin}"
    deadline = time.monotonic() + 60
    while b"llmgw: ready" not in log_path.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"{name}: llmgw run did not get ready: {log_path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    return srv


def start_redis(cpus, out: Path) -> tuple[subprocess.Popen, str]:
    """Debian's redis-server on a free loopback port, nothing saved, pinned like the proxy: (process, URL)."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=open(out / "logs" / "redis.log", "wb"), stderr=subprocess.STDOUT,
                            preexec_fn=pinner(cpus))
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"redis://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                stop(proc)
                raise RuntimeError(f"redis-server did not listen on {port}")
            time.sleep(0.02)


def redis_keys(url: str) -> int:
    """DBSIZE of the Redis at `url` (RESP over a socket: no client library)."""
    host, port = urllib.parse.urlparse(url).hostname, urllib.parse.urlparse(url).port
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"DBSIZE\r\n")
        reply = s.recv(64)
    m = re.match(rb":(\d+)\r\n", reply)
    return int(m.group(1)) if m else -1


def check_cache(srv: Server, body: bytes, hit: bool) -> str | None:
    """llmgw-cache-hit answers the bench's request from the cache (after the correctness check's
    miss); llmgw-cache-miss (no-cache) never does."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}"}
    headers.update(h.split(": ", 1) for h in srv.headers)
    status, got, reply = e2e.http("POST", srv.url + "/v1/chat/completions", body, headers=headers, timeout=10)
    want = "hit" if hit else "miss"
    if status != 200 or got.get("x-llmgw-cache") != want:
        return f"expected x-llmgw-cache: {want}, got {status} {got.get('x-llmgw-cache')}: {reply[:200]!r}"
    return None


def check_budget_config(srv: Server, body: bytes) -> str | None:
    """None when a request without the consumer's key is refused (401) and the budgets counted the
    requests so far: the filter's gauge in `llmgw run`'s /metrics, or keys in the bench's Redis."""
    st, _, resp = e2e.http("POST", srv.url + "/v1/chat/completions", body,
                           {"content-type": "application/json", "authorization": "Bearer sk-not-a-client-key"},
                           timeout=30)
    if st != 401:
        return f"a request with a wrong key got {st}, not 401: {resp[:300]!r}"
    redis_url = getattr(srv, "redis_url", None)
    if redis_url:
        n = redis_keys(redis_url)
        return None if n > 0 else f"no budget counters in Redis (DBSIZE {n})"
    _, _, text = e2e.http("GET", srv.llmgw_admin + "/metrics?filter=llmgw_budget", timeout=10)
    gauges = [line for line in text.decode(errors="replace").splitlines()
              if line.startswith("llmgw_budget_used{") and "bench-tokens" in line and "team-bench" in line]
    if not gauges or gauges[0].rsplit(" ", 1)[-1] in ("0", "0.0"):
        return f"no (or a zero) llmgw_budget_used gauge of bench-tokens/team-bench in llmgw run's /metrics: {gauges}"
    return None


# ------------------------------------------------------------------------------------------------
# bodies and measurements


def make_body(model: str, size: int, stream: bool = False) -> bytes:
    doc: dict = {"model": model}
    if stream:
        doc["stream"] = True
    doc["messages"] = [{"role": "system", "content": "You are a terse assistant."}, {"role": "user", "content": ""}]
    doc["max_tokens"] = 256
    empty = len(json.dumps(doc, separators=(",", ":")))
    text = "The quick brown fox jumps over the lazy dog. " * (size // 45 + 2)
    doc["messages"][1]["content"] = text[: max(0, size - empty - 1)] + "?"
    return json.dumps(doc, separators=(",", ":")).encode()


def wrk(url: str, body: Path, conns: int, seconds: int, cpus, lua: Path, headers: list[str] = ()) -> dict:
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", str(lua), url]
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_HEADERS": "\n".join(headers)}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True,
                       timeout=seconds + 60, preexec_fn=pinner(cpus))
    m = re.search(r"^BENCH_JSON (\{.*\})$", r.stdout, re.M)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({r.returncode}): {r.stdout[-1000:]} {r.stderr[-1000:]}")
    d = json.loads(m.group(1))
    d["errors"] = sum(d[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    d["rps"] = d["requests"] / (d["duration_us"] / 1e6)
    return d


def header_args(headers: list[str]) -> list[str]:
    return [a for h in headers for a in ("--header", h)]


def rate(mock_bin: Path, url: str, body: Path, rps: int, seconds: int, cpus, headers: list[str] = ()) -> dict:
    """Open-loop load at a fixed rate (`bench-mock rate`): achieved rate and latency percentiles."""
    r = subprocess.run([str(mock_bin), "rate", "--url", url, "--body", str(body), "--rps", str(rps), "--seconds",
                        str(seconds), *header_args(headers)],
                       capture_output=True, text=True, timeout=seconds + 90, preexec_fn=pinner(cpus))
    if r.returncode != 0:
        raise RuntimeError(f"rate client failed: {r.stderr[-1000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def stream_client(mock_bin: Path, url: str, body: Path, n: int, cpus, headers: list[str] = ()) -> dict:
    r = subprocess.run([str(mock_bin), "streams", "--url", url, "--body", str(body), "--n", str(n),
                        *header_args(headers)],
                       capture_output=True, text=True, timeout=60 + n * 5, preexec_fn=pinner(cpus))
    if r.returncode != 0:
        raise RuntimeError(f"stream client failed: {r.stderr[-1000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def check_json_reply(srv: Server, body: bytes, anthropic: bool) -> str | None:
    """None when a non-streaming chat request gets a proper OpenAI reply with usage."""
    extra = dict(tuple(p.strip() for p in h.split(":", 1)) for h in srv.headers)
    st, _, resp = e2e.http("POST", srv.url + "/v1/chat/completions", body,
                           {"content-type": "application/json", "authorization": "Bearer sk-bench", **extra},
                           timeout=30)
    if st != 200:
        return f"status {st}: {resp[:300]!r}"
    try:
        v = json.loads(resp)
        content = v["choices"][0]["message"]["content"]
        usage = v["usage"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        return f"not an OpenAI chat completion ({e}): {resp[:300]!r}"
    if v.get("object") != "chat.completion" or not content or not content.startswith("tok0"):
        return f"unexpected reply: {resp[:300]!r}"
    if usage.get("prompt_tokens") != 250:
        return f"usage not carried: {usage}"
    if anthropic and not str(v.get("id", "")).startswith("msg_bench"):
        return f"reply did not come from the Anthropic endpoint: id={v.get('id')}"
    return None


class Hold:
    """N slow streams held open by `bench-mock hold`."""

    def __init__(self, mock_bin: Path, url: str, body: Path, n: int, cpus, headers: list[str] = ()):
        self.n = n
        self.proc = subprocess.Popen(
            [str(mock_bin), "hold", "--url", url, "--body", str(body), "--streams", str(n), "--timeout-s", "60",
             *header_args(headers)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=pinner(cpus),
        )
        line = e2e._read_line(self.proc, 90.0).strip()
        if line != f"ready {n}":
            self.close()
            raise RuntimeError(f"hold: {line}")

    def close(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.write(b"\n")
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------------------------------------
# summary and reports


def summarize(values: list[float]) -> dict | None:
    vs = [v for v in values if v is not None and v == v]
    if not vs:
        return None
    return {"median": statistics.median(vs), "min": min(vs), "max": max(vs), "n": len(vs)}


def fmt(s: dict | None, digits: int = 0, spread: bool = True, signed: bool = False) -> str:
    if not s:
        return "—"
    sign = "+" if signed else ""
    m = f"{s['median']:{sign},.{digits}f}"
    if spread and s["n"] > 1:
        half = (s["max"] - s["min"]) / 2
        m += f" ±{half:,.{digits}f}"
    return m


ROWS = [
    # (section, label, metric, digits, signed)
    ("Latency at concurrency 1 (µs), 1 KB request", "p50", "lat_1k_p50_us", 0, False),
    (None, "p99", "lat_1k_p99_us", 0, False),
    (None, "added p50 over direct", "lat_1k_add_p50_direct_us", 0, True),
    (None, "added p99 over direct", "lat_1k_add_p99_direct_us", 0, True),
    (None, "added p50 over plain Envoy", "lat_1k_add_p50_envoy_us", 0, True),
    (None, "added p99 over plain Envoy", "lat_1k_add_p99_envoy_us", 0, True),
    (None, "added p50 over llmgw (OpenAI)", "lat_1k_p50_add_llmgw_us", 0, True),
    (None, "added p50 over a cache miss", "lat_1k_p50_add_miss_us", 0, True),
    (None, "added p99 over a cache miss", "lat_1k_p99_add_miss_us", 0, True),
    (None, "added p50 over llmgw run (auth + budget check)", "lat_1k_p50_add_run_us", 0, True),
    (None, "added p99 over llmgw run (auth + budget check)", "lat_1k_p99_add_run_us", 0, True),
    ("Latency at concurrency 1 (µs), 100 KB request", "p50", "lat_100k_p50_us", 0, False),
    (None, "p99", "lat_100k_p99_us", 0, False),
    (None, "added p50 over plain Envoy", "lat_100k_add_p50_envoy_us", 0, True),
    (None, "added p99 over plain Envoy", "lat_100k_add_p99_envoy_us", 0, True),
    ("Throughput at saturation", "1 KB: requests/s", "thr_1k_rps", 0, False),
    (None, "1 KB: × plain Envoy", "thr_1k_ratio_envoy", 2, False),
    (None, "1 KB: × llmgw (OpenAI)", "thr_1k_ratio_llmgw", 2, False),
    (None, "1 KB: proxy CPU s per 1k requests", "thr_1k_cpu_per_1k", 3, False),
    (None, "100 KB: requests/s", "thr_100k_rps", 0, False),
    (None, "100 KB: × plain Envoy", "thr_100k_ratio_envoy", 2, False),
    (None, "100 KB: × llmgw (OpenAI)", "thr_100k_ratio_llmgw", 2, False),
    (None, "100 KB: proxy CPU s per 1k requests", "thr_100k_cpu_per_1k", 3, False),
    (None, "1 KB: of which the sidecar (ext_proc server, Redis)", "thr_1k_sidecar_cpu_per_1k", 3, False),
    (None, "100 KB: of which the sidecar (ext_proc server, Redis)", "thr_100k_sidecar_cpu_per_1k", 3, False),
    (None, "1 KB: of which llmgw ratelimit", "thr_1k_ratelimit_cpu_per_1k", 3, False),
    (None, "100 KB: of which llmgw ratelimit", "thr_100k_ratelimit_cpu_per_1k", 3, False),
    (None, "1 KB: added proxy CPU s per 1k requests over llmgw run (auth + budget check)",
     "thr_1k_cpu_add_run_per_1k", 3, True),
    (None, "1 KB: proxy CPU × llmgw run", "thr_1k_cpu_ratio_run", 2, False),
    (None, "1 KB: proxy CPU × wasm skeleton", "thr_1k_cpu_ratio_skeleton", 2, False),
    (None, "100 KB: proxy CPU × wasm skeleton", "thr_100k_cpu_ratio_skeleton", 2, False),
    (None, "1 KB: proxy CPU × llmgw (OpenAI)", "thr_1k_cpu_ratio_llmgw", 2, False),
    (None, "1 KB: proxy CPU × plain Envoy", "thr_1k_cpu_ratio_envoy", 2, False),
    (None, "1 KB: proxy CPU × a cache miss", "thr_1k_cpu_ratio_miss", 2, False),
    (None, "100 KB: proxy CPU × llmgw (OpenAI)", "thr_100k_cpu_ratio_llmgw", 2, False),
    (None, "1 KB: proxy CPU × ext_proc skeleton", "thr_1k_cpu_ratio_extproc", 2, False),
    (None, "100 KB: proxy CPU × ext_proc skeleton", "thr_100k_cpu_ratio_extproc", 2, False),
    (None, "client core busy (1 KB run)", "thr_1k_client_busy", 2, False),
    ("Under load, 1 KB request", "32 connections (agentgateway-style): requests/s", "c32_1k_rps", 0, False),
    (None, "32 connections: × plain Envoy", "c32_1k_ratio_envoy", 2, False),
    (None, "32 connections: × llmgw (OpenAI)", "c32_1k_ratio_llmgw", 2, False),
    (None, "32 connections: p50 (µs)", "c32_1k_p50_us", 0, False),
    (None, "32 connections: p99 (µs)", "c32_1k_p99_us", 0, False),
    (None, "fixed load (open loop): achieved req/s", "fixed_rps", 0, False),
    (None, "fixed load: p50 (µs)", "fixed_p50_us", 0, False),
    (None, "fixed load: p99 (µs)", "fixed_p99_us", 0, False),
    (None, "fixed load: added p50 over plain Envoy (µs)", "fixed_p50_add_envoy_us", 0, True),
    (None, "fixed load: added p99 over plain Envoy (µs)", "fixed_p99_add_envoy_us", 0, True),
    (None, "fixed load: added p50 over llmgw run (µs)", "fixed_p50_add_run_us", 0, True),
    (None, "fixed load: requests not sent (overloaded)", "fixed_unsent", 0, False),
    ("Streaming (µs; 1 KB request, concurrency 1)", "time to first token p50", "ttft_p50_us", 0, False),
    (None, "added TTFT over direct", "ttft_add_direct_us", 0, True),
    (None, "added TTFT over plain Envoy", "ttft_add_envoy_us", 0, True),
    (None, "inter-chunk gap p50", "gap_p50_us", 0, False),
    (None, "added gap over direct", "gap_add_direct_us", 0, True),
    (None, "added gap over plain Envoy", "gap_add_envoy_us", 0, True),
    ("Filter work per request (callgrind, native build: deterministic; see below)",
     "1 KB: filter instructions per request (callgrind)", "prof_1k_instructions", 0, False),
    (None, "1 KB: host calls per request", "prof_1k_host_calls", 0, False),
    (None, "1 KB: added filter instructions (consumer + budgets) over openai-json-1k", "prof_1k_instructions_add", 0, True),
    (None, "1 KB: added host calls (consumer + budgets) over openai-json-1k", "prof_1k_host_calls_add", 0, True),
    (None, "100 KB: filter instructions per request (callgrind)", "prof_100k_instructions", 0, False),
    (None, "stream, 1 KB: filter instructions per request (callgrind)", "prof_stream_instructions", 0, False),
    (None, "stream, 1 KB: host calls per request", "prof_stream_host_calls", 0, False),
    ("Memory", "RSS idle (MB)", "rss_idle_mb", 1, False),
    (None, "RSS idle over the no-op wasm filter (MB)", "rss_idle_add_noop_mb", 1, True),
    (None, "RSS under load (MB)", "rss_load_mb", 1, False),
    (None, "RSS per open stream (KB)", "rss_per_stream_kb", 1, False),
    (None, "RSS per open stream over plain Envoy (KB)", "rss_per_stream_add_envoy_kb", 1, True),
    (None, "heap per open stream (KB, Envoy allocator)", "heap_per_stream_kb", 1, False),
]


# The profile tool's scenario for each configuration's request (host-tests/bench/profile).
PROFILE_SCENARIOS = {
    "llmgw": {"1k": "openai-json-1k", "100k": "openai-json-100k", "stream": "openai-stream-1k"},
    "llmgw-anthropic": {"1k": "anthropic-json-1k", "100k": "anthropic-json-100k", "stream": "anthropic-stream-1k"},
    "llmgw-fallback": {"1k": "fallback-openai-json-1k", "100k": "fallback-openai-json-100k",
                       "stream": "fallback-openai-stream-1k"},
    # `llmgw run` renders PLUGIN's backends and rules; with budgets counted by the filter, BUDGETS of
    # host-tests/bench/profile/src/scenario.rs (a consumer header, a tokens and a "*" requests budget).
    "llmgw-run": {"1k": "openai-json-1k", "100k": "openai-json-100k", "stream": "openai-stream-1k"},
    "llmgw-auth-budget": {"1k": "budget-openai-json-1k"},
    "llmgw-cache-hit": {"1k": "cache-hit-openai-json-1k"},
    "llmgw-cache-miss": {"1k": "cache-miss-openai-json-1k"},
}
# A configuration's scenario against the one it adds to: the `prof_<size>_*_add` rows.
PROFILE_ADDED = {"llmgw-auth-budget": {"1k": ("budget-openai-json-1k", "openai-json-1k")}}


def run_profile(bin_: Path, baseline: Path, out: Path) -> tuple[dict | None, list[str]]:
    """`llmgw-bench-profile check`: callgrind instructions and host calls per request for every
    scenario, against the baseline. Returns its JSON report and failures."""
    if not bin_.is_file():
        return None, [f"profile: {bin_} not found (make bench builds it: host-tests/bench/profile/profile.sh build)"]
    if not shutil.which("valgrind"):
        return None, ["profile: valgrind not found (apt-get install valgrind; make bench installs it)"]
    report_path = out / "profile.json"
    report_path.unlink(missing_ok=True)
    log(f"profile: callgrind, every scenario of {bin_.name} against {baseline}")
    r = subprocess.run([str(bin_), "check", str(baseline), "--out", str(out / "profile" / "callgrind"), "--json-out", str(report_path)],
                       capture_output=True, text=True, timeout=1800)
    sys.stderr.write(r.stdout)
    if not report_path.is_file():
        return None, [f"profile: llmgw-bench-profile check failed ({r.returncode}): {r.stderr[-2000:]}"]
    report = json.loads(report_path.read_text())
    failures = [f"profile: {name}: filter instructions per request more than {report['tolerance']:.0%} above "
                f"{baseline.name} (see the filter work table; host-tests/bench/profile/profile.sh update if intended)"
                for name in report.get("failed", [])]
    if r.returncode not in (0, 1) or (r.returncode == 1 and not failures):
        failures.append(f"profile: llmgw-bench-profile check exited {r.returncode}: {r.stderr[-2000:]}")
    return report, failures


def with_profile(summary: dict, profile: dict | None) -> dict:
    """The summary with the profile's figures as rows of the llmgw configurations (exact: no spread)."""
    if not profile:
        return summary
    by_name = {s["name"]: s for s in profile.get("scenarios", [])}
    out = {n: dict(v) for n, v in summary.items()}
    for config, scenarios in PROFILE_SCENARIOS.items():
        if config not in out:
            continue
        for size, name in scenarios.items():
            s = by_name.get(name)
            if not s:
                continue
            for key, value in (("instructions", s.get("instructions_per_request")),
                               ("host_calls", (s.get("host_calls") or {}).get("total"))):
                if value is not None:
                    out[config][f"prof_{size}_{key}"] = {"median": value, "min": value, "max": value, "n": 1}
    for config, sizes in PROFILE_ADDED.items():
        for size, (name, base) in sizes.items():
            s, b = by_name.get(name), by_name.get(base)
            if config not in out or not s or not b:
                continue
            for key, get in (("instructions", lambda x: x.get("instructions_per_request")),
                             ("host_calls", lambda x: (x.get("host_calls") or {}).get("total"))):
                if get(s) is not None and get(b) is not None:
                    d = get(s) - get(b)
                    out[config][f"prof_{size}_{key}_add"] = {"median": d, "min": d, "max": d, "n": 1}
    return out


def profile_md(profile: dict) -> str:
    """Every scenario of the profile tool: instructions (and the baseline), host calls by filter instance."""
    lines = [
        f"Filter work per request ({profile.get('valgrind', 'valgrind')}, {profile.get('rustc', '')}): callgrind "
        "instructions inside the filter's callbacks, native build (opt-level s) with an in-memory host that counts "
        "the host calls (each one a VM boundary crossing in Envoy); checked against "
        f"`host-tests/bench/profile/baseline.json` (fails above +{profile.get('tolerance', 0.1):.0%}).",
        "",
        "| scenario | filter instructions per request (callgrind) | baseline | × baseline | "
        "host calls per request | downstream + upstream filter |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in profile.get("scenarios", []):
        hc = s.get("host_calls") or {}
        split = ""
        if "upstream" in hc:
            by = s.get("instructions_by_filter") or {}
            split = (f"{hc['downstream']['total']:,.0f} + {hc['upstream']['total']:,.0f} calls"
                     + (f"; {by['downstream']:,} + {by['upstream']:,} instructions" if by else ""))
        base, ratio = s.get("baseline"), s.get("ratio")
        verdict = s.get("verdict", "")
        lines.append(
            f"| {s['name']} | {s['instructions_per_request']:,} | {'—' if base is None else f'{base:,}'} | "
            f"{'—' if ratio is None else f'{ratio:.3f}'}{'' if verdict in ('', 'ok') else ' ' + verdict} | "
            f"{hc.get('total', 0):,.0f} | {split} |")
    return "\n".join(lines)


def table_rows(summary: dict, names: list[str]) -> list[tuple[str | None, str, list[str]]]:
    out = []
    for section, label, metric, digits, signed in ROWS:
        cells = [fmt(summary.get(n, {}).get(metric), digits, signed=signed) for n in names]
        if all(c == "—" for c in cells):
            continue
        out.append((section, label, cells))
    return out


def text_table(summary: dict, names: list[str]) -> str:
    rows = table_rows(summary, names)
    if not rows:
        return "(no measurements)"
    w0 = max([len(l) + 2 for _, l, _ in rows] + [len(s) for s, _, _ in rows if s])
    ws = [max(len(n), *(len(c[i]) for _, _, c in rows)) for i, n in enumerate(names)]
    lines = [" " * w0 + "  ".join(n.rjust(w) for n, w in zip(names, ws))]
    for section, label, cells in rows:
        if section:
            lines.append(section)
        lines.append(("  " + label).ljust(w0) + "  ".join(c.rjust(w) for c, w in zip(cells, ws)))
    return "\n".join(lines)


def md_table(summary: dict, names: list[str]) -> str:
    rows = table_rows(summary, names)
    out = ["| | " + " | ".join(LABELS.get(n, n) for n in names) + " |", "|---|" + "---:|" * len(names)]
    for section, label, cells in rows:
        if section:
            out.append(f"| **{section}** |" + " |" * len(names))
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def targets(summary: dict) -> list[dict]:
    """The issue's targets, per llmgw configuration: met, MISSED, or inconclusive when the spread over
    rounds reaches across the limit."""
    out = []
    for name in ("llmgw", "llmgw-anthropic", "llmgw-fallback"):
        s = summary.get(name)
        if not s:
            continue
        translated = name == "llmgw-anthropic"
        for metric, limit, op, what in [
            ("thr_1k_cpu_ratio_llmgw", 1.10, "<=", "fallback rule: CPU per request ≤ 1.10× the one-filter path (1 KB)"),
            *([("thr_1k_cpu_ratio_skeleton", 1.40, "<=", "translation: CPU per request ≤ 1.40× the wasm skeleton (1 KB)")]
              if translated else
              [("thr_1k_cpu_ratio_skeleton", 1.10, "<=", "CPU per request ≤ 1.10× the wasm skeleton (1 KB)"),
               ("thr_100k_cpu_ratio_skeleton", 1.20, "<=", "CPU per request ≤ 1.20× the wasm skeleton (100 KB)")]),
            ("ttft_add_envoy_us", 100.0, "<=", "≤ 100 µs added to time to first token over plain Envoy"),
            ("gap_add_envoy_us", 50.0, "<=", "no added inter-chunk gap over plain Envoy (≤ 50 µs at p50)"),
            ("rss_idle_add_noop_mb", 16.0, "<=", "idle RSS ≤ the no-op wasm filter's + 16 MB"),
            ("rss_per_stream_add_envoy_kb", 4.0, "<=", "RSS per open stream ≤ plain Envoy's + 4 KB"),
        ]:
            v = s.get(metric)
            if not v:
                continue
            ok = v["median"] >= limit if op == ">=" else v["median"] <= limit
            half = (v["max"] - v["min"]) / 2
            verdict = "met" if ok else "MISSED"
            if v["n"] > 1 and v["min"] <= limit <= v["max"] and abs(v["median"] - limit) < half:
                verdict = "inconclusive"
            out.append({"config": name, "target": what, "metric": metric, "value": v["median"], "spread": half,
                        "limit": limit, "met": ok, "verdict": verdict})
    return out


def svg_chart(summary: dict, names: list[str], meta: str) -> str:
    """Throughput and p99 per configuration, for 1 KB and 100 KB requests: one label column, two
    bar columns (throughput, linear; p99 at concurrency 1, log), whiskers for the min-max spread."""
    import math

    colors = {"direct": "#a7b0ba", "envoy": "#4a7ab7", "wasm-noop": "#8fb3de", "wasm-buffer": "#b9a3d6", "extproc": "#7d6aa8", "llmgw": "#e07b39", "llmgw-anthropic": "#c2553a", "llmgw-fallback": "#8c3b2a",
              "llmgw-cache-hit": "#3a9c8c", "llmgw-cache-miss": "#2a6f64",
              "llmgw-run": "#d9a441", "llmgw-auth-budget": "#b5832a", "llmgw-auth-budget-redis": "#8a6220",
              "litellm": "#6b8e4e", "portkey": "#9aa04a"}
    esc = lambda s: s.replace("&", "&amp;").replace("<", "&lt;")  # noqa: E731
    label_x, bw, text_w, gap_w = 215, 330, 95, 30
    cols = [label_x + 12, label_x + 12 + bw + text_w + gap_w]
    W = cols[1] + bw + text_w
    row_h, bar_h = 32, 20
    sec_h = 62 + row_h * len(names) + 24
    H = 90 + 2 * sec_h + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
             'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="13">',
             f'<rect width="{W}" height="{H}" fill="white"/>',
             '<text x="20" y="32" font-size="20" font-weight="bold">llmgw: throughput and p99 latency per configuration</text>',
             f'<text x="20" y="54" fill="#555" font-size="12">{esc(meta)}</text>']

    def nice_step(raw: float) -> float:
        e = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
        for m in (1, 2, 2.5, 5, 10):
            if m * e >= raw:
                return m * e
        return 10 * e

    def axis(metric: str, log: bool):
        have = [summary.get(n, {}).get(metric) for n in names]
        have = [v for v in have if v]
        if not have:
            return None, []
        top = max(v["max"] for v in have)
        if log:
            lo = math.floor(math.log10(max(1.0, min(v["min"] for v in have))))
            hi = math.ceil(math.log10(max(top, 10 ** (lo + 1)) * 1.05))
            return (lambda v: bw * (math.log10(max(v, 10 ** lo)) - lo) / (hi - lo)), [10 ** e for e in range(lo, hi + 1)]
        step = nice_step(top / 4)
        mx = step * math.ceil(top / step)
        return (lambda v: bw * v / mx), [step * i for i in range(int(round(mx / step)) + 1)]

    def us(v: float) -> str:
        return f"{v / 1000:,.1f} ms" if v >= 1000 else f"{v:,.0f} µs"

    def tick_us(v: float) -> str:
        return f"{v / 1e6:g} s" if v >= 1e6 else f"{v / 1000:g} ms" if v >= 1000 else f"{v:g} µs"

    y = 90
    for size, size_label in (("1k", "1 KB request"), ("100k", "100 KB request")):
        parts.append(f'<text x="20" y="{y}" font-size="16" font-weight="bold">{size_label}</text>')
        heads = [("Throughput at saturation (req/s)", "higher is better"),
                 ("p99 latency at concurrency 1 (log scale)", "lower is better")]
        for (title, hint), x0 in zip(heads, cols):
            parts.append(f'<text x="{x0}" y="{y + 24}" font-weight="bold">{title}</text>'
                         f'<text x="{x0}" y="{y + 40}" fill="#777" font-size="11">{hint}</text>')
        top_y = y + 50
        bottom_y = top_y + row_h * len(names)
        for (metric, log, fmt_v), x0 in zip(((f"thr_{size}_rps", False, lambda v: f"{v:,.0f}"),
                                             (f"lat_{size}_p99_us", True, us)), cols):
            X, ticks = axis(metric, log)
            if X is None:
                continue
            for t in ticks:
                tx = x0 + X(t)
                parts.append(f'<line x1="{tx:.1f}" y1="{top_y}" x2="{tx:.1f}" y2="{bottom_y}" stroke="#e6e6e6"/>')
                parts.append(f'<text x="{tx:.1f}" y="{bottom_y + 14}" text-anchor="middle" fill="#888" '
                             f'font-size="10">{tick_us(t) if log else f"{t:,.0f}"}</text>')
            for i, n in enumerate(names):
                v = summary.get(n, {}).get(metric)
                ry = top_y + i * row_h + (row_h - bar_h) / 2
                if not v:
                    parts.append(f'<text x="{x0 + 4}" y="{ry + 15}" fill="#999" font-size="12">not run</text>')
                    continue
                w = max(1.5, X(v["median"]))
                parts.append(f'<rect x="{x0}" y="{ry:.1f}" width="{w:.1f}" height="{bar_h}" rx="2" '
                             f'fill="{colors.get(n, "#888")}"/>')
                end = w
                if v["n"] > 1:
                    a, b = x0 + X(v["min"]), x0 + X(v["max"])
                    cy = ry + bar_h / 2
                    parts.append(f'<path d="M{a:.1f} {cy:.1f}H{b:.1f}M{a:.1f} {cy - 5:.1f}V{cy + 5:.1f}'
                                 f'M{b:.1f} {cy - 5:.1f}V{cy + 5:.1f}" stroke="#222" fill="none"/>')
                    end = max(w, X(v["max"]))
                parts.append(f'<text x="{x0 + end + 6:.1f}" y="{ry + 15:.1f}" font-size="12">{fmt_v(v["median"])}</text>')
        for i, n in enumerate(names):
            parts.append(f'<text x="{label_x}" y="{top_y + i * row_h + row_h / 2 + 5:.1f}" text-anchor="end">'
                         f'{esc(LABELS.get(n, n))}</text>')
        y += sec_h
    parts.append(f'<text x="20" y="{H - 14}" fill="#777" font-size="11">Bars: median over rounds; whiskers: '
                 'min–max over rounds. Envoy --concurrency 1 pinned to one core; wrk and the mock on the other.</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def machine() -> dict:
    model = ""
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        model = m.group(1).strip() if m else ""
    except OSError:
        pass
    load = os.getloadavg()
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "loadavg_start": [round(x, 2) for x in load]}


# ------------------------------------------------------------------------------------------------
# main


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="seconds-long run: checks every configuration works")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--rate-rps", type=int, help="request rate of the fixed-load run (default 2,000; smoke 200)")
    ap.add_argument("--out", type=Path, help="output directory (default target/bench, smoke: target/bench/smoke)")
    ap.add_argument("--mock-bin", type=Path, default=Path(os.environ.get("BENCH_MOCK_BIN", REPO / "target/release/bench-mock")))
    ap.add_argument("--wasm", type=Path, default=None)
    ap.add_argument("--litellm-venv", type=Path, default=REPO / "target/bench/litellm-venv")
    ap.add_argument("--portkey-dir", type=Path, default=REPO / "target/bench/portkey")
    ap.add_argument("--portkey", choices=["auto", "off"], default=None,
                    help="run Portkey's gateway (default: auto for full runs, off for --smoke)")
    ap.add_argument("--litellm", choices=["auto", "off"], default=None,
                    help="auto: run LiteLLM when its venv is installed (default: auto; off with --smoke)")
    ap.add_argument("--baseline-wasm", type=Path, default=None,
                    help="the baseline-filter .wasm: adds the wasm-noop and wasm-buffer configurations "
                         "(default: target/bench/baseline-target/... when built, except with --smoke)")
    ap.add_argument("--ext-proc-bin", type=Path, default=None,
                    help="ext-proc-skeleton (host-tests/bench/ext-proc-skeleton): adds the extproc configuration "
                         "(default: target/bench/ext-proc-target/release/ext-proc-skeleton when built, except with --smoke)")
    ap.add_argument("--only", help="comma-separated configurations to run (direct and envoy are always run)")
    ap.add_argument("--profile-bin", type=Path, default=None,
                    help="llmgw-bench-profile (host-tests/bench/profile): adds callgrind instructions and host calls "
                         "per request in the filter, checked against --profile-baseline")
    ap.add_argument("--profile-baseline", type=Path, default=HERE / "profile" / "baseline.json")
    ap.add_argument("--report", type=Path, metavar="RESULTS_JSON",
                    help="only re-render the table, results.md and results.svg from a results.json")
    a = ap.parse_args(argv)
    if a.report:
        result = json.loads(a.report.read_text())
        result.setdefault("names_run", [n for n in LABELS if n in result["summary"]])
        return report(result, a.report.parent)

    prof = dict(PROFILES["smoke" if a.smoke else "full"])
    if a.rounds:
        prof["rounds"] = a.rounds
    if a.rate_rps:
        prof["rate_rps"] = a.rate_rps
    out = (a.out or (REPO / "target/bench" / ("smoke" if a.smoke else ""))).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "bodies").mkdir(parents=True, exist_ok=True)
    lua = HERE / "post.lua"
    wasm = (a.wasm or e2e.wasm_path()).resolve()
    envoy = e2e.envoy_bin()
    mock_bin = a.mock_bin
    if not mock_bin.is_file():
        log(f"{mock_bin} not found: build it with `cargo build -p llmgw-mocks --bin bench-mock` (or set BENCH_MOCK_BIN)")
        return 2
    if not shutil.which("wrk"):
        log("wrk not found: `apt-get install wrk` (the Makefile's bench targets do it)")
        return 2
    ncpu = len(os.sched_getaffinity(0))
    cpu_list = sorted(os.sched_getaffinity(0))
    client_cpus, proxy_cpus = ({cpu_list[0]}, {cpu_list[1]}) if ncpu >= 2 else (None, None)
    client_cpu = cpu_list[0] if client_cpus else None
    proxy_cpu = cpu_list[1] if proxy_cpus else None

    names = ["direct", "envoy", "wasm-noop", "wasm-buffer", "extproc", "llmgw", "llmgw-anthropic", "llmgw-fallback",
             *CACHED, *LLMGW_RUN, "litellm", "portkey"]
    skipped: dict[str, str] = {}
    baseline = a.baseline_wasm
    default_baseline = REPO / "target/bench/baseline-target/wasm32-wasip1/release/llmgw_bench_baseline_filter.wasm"
    if baseline is None and not a.smoke and default_baseline.is_file():
        baseline = default_baseline
    if baseline is None or not baseline.is_file():
        for n in ("wasm-noop", "wasm-buffer"):
            skipped[n] = (f"{n} skipped: no baseline filter (" + (f"{baseline} not found)" if baseline else
                          "build host-tests/bench/baseline-filter, or --baseline-wasm)"))
    else:
        baseline = baseline.resolve()
    ext_proc_bin = a.ext_proc_bin
    default_ext_proc = REPO / "target/bench/ext-proc-target/release/ext-proc-skeleton"
    if ext_proc_bin is None and not a.smoke and default_ext_proc.is_file():
        ext_proc_bin = default_ext_proc
    if ext_proc_bin is None or not ext_proc_bin.is_file():
        skipped["extproc"] = ("extproc skipped: no ext_proc server (" + (f"{ext_proc_bin} not found)" if ext_proc_bin
                              else "build host-tests/bench/ext-proc-skeleton, or --ext-proc-bin)"))
    else:
        ext_proc_bin = ext_proc_bin.resolve()
    litellm_mode = a.litellm or ("off" if a.smoke else "auto")
    if litellm_mode == "off":
        skipped["litellm"] = "LiteLLM skipped (--litellm off" + (", the default of --smoke)" if a.smoke else ")")
    elif not (a.litellm_venv / "bin" / "litellm").exists():
        skipped["litellm"] = (f"LiteLLM skipped: not installed in {a.litellm_venv} "
                              "(`make bench` installs host-tests/bench/litellm-requirements.txt there)")
    a.portkey_dir = a.portkey_dir.resolve()
    portkey_mode = a.portkey or ("off" if a.smoke else "auto")
    portkey_script = a.portkey_dir / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if portkey_mode == "off":
        skipped["portkey"] = "Portkey skipped (--portkey off" + (", the default of --smoke)" if a.smoke else ")")
    elif not portkey_script.is_file() or not shutil.which("node"):
        skipped["portkey"] = (f"Portkey skipped: not installed in {a.portkey_dir} (`make bench` runs npm ci there "
                              "from host-tests/bench/portkey)" if shutil.which("node") else
                              "Portkey skipped: node not found")
    try:
        e2e.llmgw_bin()
    except FileNotFoundError as e:
        for n in LLMGW_RUN:
            skipped[n] = f"{n} skipped: {e}"
    if not (shutil.which("redis-server") or Path("/usr/bin/redis-server").is_file()):
        skipped.setdefault("llmgw-auth-budget-redis", "llmgw-auth-budget-redis skipped: redis-server not installed "
                                                      "(`make deb-tools` installs it)")
    if a.smoke and "llmgw-run" not in (a.only or "").split(","):
        # Only the reference of the budget configurations' added figures, which a smoke run does not report.
        skipped.setdefault("llmgw-run", "llmgw-run skipped (--smoke; name it in --only to run it)")
    if a.only:
        keep = set(a.only.split(",")) | {"direct", "envoy"}
        for n in names:
            if n not in keep:
                skipped.setdefault(n, f"{n} skipped (--only)")
    for msg in skipped.values():
        log(msg)
    active = [n for n in names if n not in skipped]

    meta = machine()
    log(f"{'smoke' if a.smoke else 'full'} run: {prof}; {meta['nproc']} cores ({meta['cpu_model']}), "
        f"load {meta['loadavg_start']}; pinning: proxy cpu {proxy_cpu}, client+mock cpu {client_cpu}")
    t_start = time.monotonic()
    failures: list[str] = []
    no_streams: dict[str, str] = {}  # peers whose streaming failed: reported, their stream rows left empty
    rounds: list[dict[str, dict]] = []
    mock = None
    servers: dict[str, Server] = {}
    try:
        mock = start_mock(mock_bin, prof, client_cpus, out)
        mock_port = int(mock.url.rsplit(":", 1)[1])
        bodies: dict[tuple[str, str], Path] = {}
        for n in active:
            model, slow = (ANTHROPIC_MODEL, ANTHROPIC_SLOW) if n == "llmgw-anthropic" else (OPENAI_MODEL, OPENAI_SLOW)
            for size_name, size in SIZES.items():
                p = out / "bodies" / f"{n}-{size_name}.json"
                p.write_bytes(make_body(model, size))
                bodies[(n, size_name)] = p
            for kind, m in (("stream", model), ("slow", slow)):
                p = out / "bodies" / f"{n}-{kind}.json"
                p.write_bytes(make_body(model if kind == "stream" else m, SIZES["1k"], stream=True))
                bodies[(n, kind)] = p
        cfg_plain = envoy_config(mock_port, wasm, plain=True)
        cfg_llmgw = envoy_config(mock_port, wasm, plain=False)
        cfg_fallback = fallback_config(mock_port, wasm, out) if "llmgw-fallback" in active else None
        cfg_cache = envoy_config(mock_port, wasm, plain=False, cache=True)

        for r in range(prof["rounds"]):
            log(f"round {r + 1}/{prof['rounds']}: starting proxies")
            res: dict[str, dict] = {n: {} for n in active}
            servers = {"direct": mock}
            for n in list(active):  # a peer that does not start is removed
                if n in ("envoy", "llmgw", "llmgw-anthropic"):
                    servers[n] = start_envoy(f"{n}-r{r}", cfg_plain if n == "envoy" else cfg_llmgw, envoy,
                                             proxy_cpus, out)
                elif n == "llmgw-fallback":
                    servers[n] = start_envoy(f"{n}-r{r}", cfg_fallback, envoy, proxy_cpus, out, env=FALLBACK_ENV)
                elif n in CACHED:
                    servers[n] = start_envoy(f"{n}-r{r}", cfg_cache, envoy, proxy_cpus, out)
                    if n == "llmgw-cache-miss":
                        servers[n].headers = ["Cache-Control: no-cache"]
                elif n in ("wasm-noop", "wasm-buffer"):
                    servers[n] = start_envoy(f"{n}-r{r}", baseline_config(mock_port, baseline, n), envoy,
                                             proxy_cpus, out)
                elif n == "extproc":
                    ep, ep_port = start_ext_proc(ext_proc_bin, proxy_cpus, out, f"{n}-r{r}")
                    try:
                        servers[n] = start_envoy(f"{n}-r{r}", extproc_config(mock_port, wasm, ep_port), envoy,
                                                 proxy_cpus, out)
                    except BaseException:
                        stop(ep)
                        raise
                    servers[n].sidecars.append(ep)
                elif n in LLMGW_RUN:
                    redis, redis_url = start_redis(proxy_cpus, out) if n == "llmgw-auth-budget-redis" else (None, None)
                    try:
                        servers[n] = start_llmgw_run(f"{n}-r{r}", llmgw_run_config(n, mock_port, redis_url), wasm,
                                                     envoy, proxy_cpus, out)
                    except BaseException:
                        stop(redis)
                        raise
                    if redis:
                        servers[n].sidecars.append(redis)
                        servers[n].redis_url = redis_url
                elif n == "portkey":
                    try:
                        servers[n] = start_portkey(a.portkey_dir, mock_port, proxy_cpus, out)
                    except (RuntimeError, TimeoutError, OSError) as e:
                        skipped["portkey"] = f"Portkey skipped: it did not start ({str(e)[:300]})"
                        log(skipped["portkey"])
                        active.remove("portkey")
                        res.pop("portkey")
                elif n == "litellm":
                    try:
                        servers[n] = start_litellm(a.litellm_venv, mock_port, proxy_cpus, out)
                    except (RuntimeError, TimeoutError, OSError) as e:
                        skipped["litellm"] = f"LiteLLM skipped: it did not start ({str(e)[:300]})"
                        log(skipped["litellm"])
                        active.remove("litellm")
                        res.pop("litellm")
            time.sleep(1.0)
            for n in active:
                if n != "direct":
                    res[n]["rss_idle_mb"] = rss_kb(servers[n].pids()) / 1024

            # Correctness first: every configuration answers like a provider would.
            for n in active:
                err = check_json_reply(servers[n], bodies[(n, "1k")].read_bytes(), n == "llmgw-anthropic")
                if err:
                    failures.append(f"round {r + 1} {n}: chat completion: {err}")
                elif n in CACHED:
                    err = check_cache(servers[n], bodies[(n, "1k")].read_bytes(), n == "llmgw-cache-hit")
                    if err:
                        failures.append(f"round {r + 1} {n}: cache: {err}")
                elif n in BUDGETED:
                    err = check_budget_config(servers[n], bodies[(n, "1k")].read_bytes())
                    if err:
                        failures.append(f"round {r + 1} {n}: auth and budgets: {err}")
                s = stream_client(mock_bin, servers[n].url + "/v1/chat/completions", bodies[(n, "stream")], 2,
                                  client_cpus, servers[n].headers)
                if s["errors"] or any(c != prof["chunks"] for c in s["content_chunks"]):
                    if n in PEERS:
                        # A peer that cannot stream on this machine is reported, not a failure of llmgw's bench
                        # (Portkey 1.15.2 on Node 20: "TypeError: immutable" re-using the upstream's headers).
                        no_streams[n] = f"{n}: streaming failed, its streaming and open-stream rows are empty: {s}"
                        log(no_streams[n])
                    else:
                        failures.append(f"round {r + 1} {n}: stream: {s}")
            if failures:
                for f in failures:
                    log("FAIL " + f)
                break

            # Warm-up (excluded), then N open slow streams on a fresh, warmed process.
            for n in active:
                if prof["warm_s"]:
                    wrk(servers[n].url + "/v1/chat/completions", bodies[(n, "1k")], prof["conns"], prof["warm_s"],
                        client_cpus, lua, servers[n].headers)
                if n not in no_streams:
                    stream_client(mock_bin, servers[n].url + "/v1/chat/completions", bodies[(n, "stream")],
                                  max(2, prof["streams"] // 10), client_cpus, servers[n].headers)
            for n in active:
                if n == "direct" or n in no_streams:
                    continue
                srv = servers[n]
                time.sleep(0.3)
                rss0, heap0 = rss_kb(srv.pids()), srv.heap_bytes()
                h = Hold(mock_bin, srv.url + "/v1/chat/completions", bodies[(n, "slow")], prof["hold"], client_cpus,
                         srv.headers)
                try:
                    time.sleep(0.3)
                    rss1, heap1 = rss_kb(srv.pids()), srv.heap_bytes()
                finally:
                    h.close()
                res[n]["rss_per_stream_kb"] = (rss1 - rss0) / prof["hold"]
                if heap0 is not None and heap1 is not None:
                    res[n]["heap_per_stream_kb"] = (heap1 - heap0) / 1024 / prof["hold"]

            order = active[r % len(active):] + active[: r % len(active)]
            for n in order:
                srv, url = servers[n], servers[n].url + "/v1/chat/completions"
                for size in SIZES:
                    lat = wrk(url, bodies[(n, size)], 1, prof["lat_s"], client_cpus, lua, srv.headers)
                    res[n][f"lat_{size}_p50_us"] = lat["p50_us"]
                    res[n][f"lat_{size}_p99_us"] = lat["p99_us"]
                    res[n][f"lat_{size}_errors"] = lat["errors"]
                    pids = srv.pids() if n != "direct" else [mock.proc.pid]
                    side = [p for proc in getattr(srv, "sidecars", []) for p in tree(proc.pid)]
                    rls = ratelimit_pids(pids) if n in LLMGW_RUN else []
                    c0, m0, k0 = cpu_seconds(pids), cpu_seconds([mock.proc.pid]), core_times()
                    s0, rl0 = cpu_seconds(side), cpu_seconds(rls)
                    peak = [0]
                    stop_ev = threading.Event()

                    def sample(pids=pids, peak=peak, stop_ev=stop_ev):
                        while not stop_ev.wait(0.2):
                            peak[0] = max(peak[0], rss_kb(pids))

                    th = threading.Thread(target=sample, daemon=True)
                    th.start()
                    thr = wrk(url, bodies[(n, size)], prof["conns"], prof["thr_s"], client_cpus, lua, srv.headers)
                    stop_ev.set()
                    th.join()
                    c1, m1, k1 = cpu_seconds(pids), cpu_seconds([mock.proc.pid]), core_times()
                    s1, rl1 = cpu_seconds(side), cpu_seconds(rls)
                    res[n][f"thr_{size}_rps"] = thr["rps"]
                    res[n][f"thr_{size}_errors"] = thr["errors"]
                    res[n][f"thr_{size}_mock_cpu_per_1k"] = (m1 - m0) / thr["requests"] * 1000
                    res[n][f"thr_{size}_client_busy"] = busy(k0, k1, client_cpu)
                    res[n][f"thr_{size}_proxy_busy"] = busy(k0, k1, proxy_cpu)
                    if n != "direct":
                        res[n][f"thr_{size}_cpu_per_1k"] = (c1 - c0) / thr["requests"] * 1000
                        if side:  # the ext_proc server's share (included above)
                            res[n][f"thr_{size}_sidecar_cpu_per_1k"] = (s1 - s0) / thr["requests"] * 1000
                        if rls:  # `llmgw ratelimit`'s share (included above)
                            res[n][f"thr_{size}_ratelimit_cpu_per_1k"] = (rl1 - rl0) / thr["requests"] * 1000
                        res[n]["rss_load_mb"] = max(res[n].get("rss_load_mb", 0), peak[0] / 1024)
                    for kind, d in (("lat", lat), ("thr", thr)):
                        if d["errors"]:
                            failures.append(f"round {r + 1} {n} {kind} {size}: {d['errors']} errors ({d})")
                # The agentgateway-style run: 32 connections, 1 KB (throughput and latency under that load).
                c32 = wrk(url, bodies[(n, "1k")], 32, prof["c32_s"], client_cpus, lua, srv.headers)
                res[n]["c32_1k_rps"] = c32["rps"]
                res[n]["c32_1k_p50_us"] = c32["p50_us"]
                res[n]["c32_1k_p99_us"] = c32["p99_us"]
                if c32["errors"]:
                    failures.append(f"round {r + 1} {n} 32 connections: {c32['errors']} errors ({c32})")
                # Fixed load, open loop: latency when the proxy is not saturated.
                fx = rate(mock_bin, url, bodies[(n, "1k")], prof["rate_rps"], prof["rate_s"], client_cpus, srv.headers)
                res[n]["fixed_rps"] = fx["achieved_rps"]
                res[n]["fixed_p50_us"] = fx["p50_us"] if fx["ok"] else None
                res[n]["fixed_p99_us"] = fx["p99_us"] if fx["ok"] else None
                res[n]["fixed_unsent"] = fx["unsent"]
                if fx["errors"]:
                    failures.append(f"round {r + 1} {n} fixed load: {fx['errors']} errors: {fx['error_samples']}")
                if n not in no_streams:
                    s = stream_client(mock_bin, url, bodies[(n, "stream")], prof["streams"], client_cpus, srv.headers)
                    if s["errors"]:
                        failures.append(f"round {r + 1} {n}: {s['errors']} stream errors: {s['error_samples']}")
                    res[n]["ttft_p50_us"] = pct(s["ttft_us"], 50)
                    res[n]["ttft_p99_us"] = pct(s["ttft_us"], 99)
                    res[n]["gap_p50_us"] = pct(s["gap_us"], 50)
                    res[n]["gap_p99_us"] = pct(s["gap_us"], 99)
                log(f"round {r + 1} {n}: p50 {res[n]['lat_1k_p50_us']} µs, p99 {res[n]['lat_1k_p99_us']} µs, "
                    f"{res[n]['thr_1k_rps']:,.0f} req/s, fixed-load p99 {res[n]['fixed_p99_us']} µs, "
                    f"ttft {res[n].get('ttft_p50_us', float('nan')):,.0f} µs")

            # Ratios and added figures, within the round.
            for n in active:
                for base, tag in (("direct", "direct"), ("envoy", "envoy")):
                    b = res.get(base, {})
                    for size in SIZES:
                        for p in ("p50", "p99"):
                            k = f"lat_{size}_{p}_us"
                            if k in b and k in res[n]:
                                res[n][f"lat_{size}_add_{p}_{tag}_us"] = res[n][k] - b[k]
                        k = f"thr_{size}_rps"
                        if tag == "envoy" and k in b and k in res[n]:
                            res[n][f"thr_{size}_ratio_envoy"] = res[n][k] / b[k]
                    for k, out_k in (("ttft_p50_us", "ttft_add"), ("gap_p50_us", "gap_add")):
                        if k in b and k in res[n]:
                            res[n][f"{out_k}_{tag}_us"] = res[n][k] - b[k]
            # Peers (and every configuration) against llmgw doing its whole job, within the round.
            one = res.get("llmgw", {})
            for n in active:
                for k in ("thr_1k_rps", "thr_100k_rps", "c32_1k_rps"):
                    if one.get(k) and res[n].get(k):
                        res[n][k.replace("_rps", "_ratio_llmgw")] = res[n][k] / one[k]
                for k in ("lat_1k_p50_us", "lat_1k_p99_us", "fixed_p50_us", "fixed_p99_us"):
                    if one.get(k) is not None and res[n].get(k) is not None:
                        res[n][k.replace("_us", "_add_llmgw_us")] = res[n][k] - one[k]
                for k in ("fixed_p50_us", "fixed_p99_us", "c32_1k_p50_us", "c32_1k_p99_us"):
                    b = res.get("envoy", {}).get(k)
                    if b is not None and res[n].get(k) is not None:
                        res[n][k.replace("_us", "_add_envoy_us")] = res[n][k] - b
                k = "c32_1k_rps"
                if res.get("envoy", {}).get(k) and res[n].get(k):
                    res[n]["c32_1k_ratio_envoy"] = res[n][k] / res["envoy"][k]
            # A cache hit against a miss (and plain Envoy), within the round.
            hit, miss, plain = res.get("llmgw-cache-hit", {}), res.get("llmgw-cache-miss", {}), res.get("envoy", {})
            for k in ("lat_1k_p50_us", "lat_1k_p99_us"):
                if hit.get(k) is not None and miss.get(k) is not None:
                    hit[k.replace("_us", "_add_miss_us")] = hit[k] - miss[k]
            k = "thr_1k_cpu_per_1k"
            if hit.get(k) and miss.get(k):
                hit["thr_1k_cpu_ratio_miss"] = hit[k] / miss[k]
            for n in CACHED:
                if n in res and res[n].get(k) and plain.get(k):
                    res[n]["thr_1k_cpu_ratio_envoy"] = res[n][k] / plain[k]
            # Auth + budget check against `llmgw run` without them, within the round.
            run = res.get("llmgw-run", {})
            for n in BUDGETED:
                if n not in res:
                    continue
                for k in ("lat_1k_p50_us", "lat_1k_p99_us", "fixed_p50_us"):
                    if run.get(k) is not None and res[n].get(k) is not None:
                        res[n][k.replace("_us", "_add_run_us")] = res[n][k] - run[k]
                k = "thr_1k_cpu_per_1k"
                if run.get(k) and res[n].get(k):
                    res[n]["thr_1k_cpu_add_run_per_1k"] = res[n][k] - run[k]
                    res[n]["thr_1k_cpu_ratio_run"] = res[n][k] / run[k]
            # Against the Wasm floor (llmgw's skeleton: wasm-buffer) and the no-op Wasm filter.
            sk, noop, plain = res.get("wasm-buffer", {}), res.get("wasm-noop", {}), res.get("envoy", {})
            for n in ("llmgw", "llmgw-anthropic", "llmgw-fallback"):
                if n not in res:
                    continue
                for size in SIZES:
                    k = f"thr_{size}_cpu_per_1k"
                    if sk.get(k) and res[n].get(k):
                        res[n][f"thr_{size}_cpu_ratio_skeleton"] = res[n][k] / sk[k]
                if noop.get("rss_idle_mb") and res[n].get("rss_idle_mb"):
                    res[n]["rss_idle_add_noop_mb"] = res[n]["rss_idle_mb"] - noop["rss_idle_mb"]
                if plain.get("rss_per_stream_kb") is not None and res[n].get("rss_per_stream_kb") is not None:
                    res[n]["rss_per_stream_add_envoy_kb"] = res[n]["rss_per_stream_kb"] - plain["rss_per_stream_kb"]
            # The two-filter design against the one-filter one, within the round.
            fb, one = res.get("llmgw-fallback", {}), res.get("llmgw", {})
            for size in SIZES:
                k = f"thr_{size}_cpu_per_1k"
                if fb.get(k) and one.get(k):
                    fb[f"thr_{size}_cpu_ratio_llmgw"] = fb[k] / one[k]
            # llmgw doing its whole job in-process against the ext_proc hop doing the least, within the round.
            ep = res.get("extproc", {})
            for n in ("llmgw", "llmgw-anthropic", "llmgw-fallback"):
                for size in SIZES:
                    k = f"thr_{size}_cpu_per_1k"
                    if n in res and res[n].get(k) and ep.get(k):
                        res[n][f"thr_{size}_cpu_ratio_extproc"] = res[n][k] / ep[k]
            # The filter really counted: its metrics are in Envoy's stats.
            for n in ("llmgw", "llmgw-anthropic"):
                if n in servers:
                    text = e2e.http("GET", servers[n].admin + "/stats/prometheus", timeout=10)[2].decode()
                    if "llmgw_requests_total" not in text or "gen_ai_client_token_usage" not in text:
                        failures.append(f"round {r + 1} {n}: llmgw metrics missing from /stats/prometheus")
            # The ext_proc path was taken: Envoy's ext_proc filter (stats http.<prefix>.ext_proc.*) had its
            # streams answered, the body messages too (more answers than streams; a client closing a
            # connection mid-request leaves a stream with its headers answered only), and the mock's
            # replies above came through the route on the x-ai-eg-model it set.
            if "extproc" in servers:
                query = "/stats?format=json&filter=" + urllib.parse.quote(r"^http\..*\.ext_proc\.")
                st = json.loads(e2e.http("GET", servers["extproc"].admin + query, timeout=10)[2])
                c = {s_["name"].rsplit(".", 1)[-1]: s_["value"] for s_ in st.get("stats", []) if "value" in s_}
                res["extproc"]["ext_proc_streams"] = c.get("streams_started", 0)
                if (not c.get("streams_started") or c.get("stream_msgs_received", 0) <= c["streams_started"]
                        or c.get("rejected_header_mutations") or c.get("streams_failed")):
                    failures.append(f"round {r + 1} extproc: ext_proc stats show no (or failed) processing: {c}")
            rounds.append(res)
            for n, srv in list(servers.items()):
                if n != "direct":
                    srv.stop()
            servers = {}
    finally:
        for n, srv in servers.items():
            if n != "direct":
                srv.stop()
        if mock:
            mock.stop()

    profile = None
    if a.profile_bin:
        profile, profile_failures = run_profile(a.profile_bin.resolve(), a.profile_baseline.resolve(), out)
        failures.extend(profile_failures)

    names_run = [n for n in names if any(n in rd for rd in rounds)]
    summary: dict[str, dict] = {}
    for n in names_run:
        keys = sorted({k for rd in rounds for k in rd.get(n, {})})
        summary[n] = {k: summarize([rd[n].get(k) for rd in rounds if n in rd]) for k in keys}
    meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {
        "profile": "smoke" if a.smoke else "full", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": meta, "params": prof, "wasm": str(wasm), "wasm_bytes": wasm.stat().st_size,
        "baseline_wasm": str(baseline) if baseline else None,
        "envoy_version": subprocess.run([str(envoy), "--version"], capture_output=True, text=True).stdout.strip(),
        "pinning": {"proxy_cpu": proxy_cpu, "client_cpu": client_cpu},
        "configs": {n: {"label": LABELS[n], "skipped": skipped.get(n)} for n in names},
        "names_run": names_run, "rounds": rounds, "notes": list(no_streams.values()), "summary": summary, "failures": failures, "filter_profile": profile,
        "duration_s": round(time.monotonic() - t_start, 1),
    }
    return report(result, out)


def report(result: dict, out: Path) -> int:
    """Writes results.json/.md/.svg into `out` and prints the table; the exit status."""
    names_run, meta, profile = result["names_run"], result["machine"], result.get("filter_profile")
    summary = with_profile(result["summary"], profile)
    rounds, failures = result["rounds"], result["failures"]
    skipped = {n: c["skipped"] for n, c in result["configs"].items() if c["skipped"]}
    meta_line = (f"{len(rounds)} round(s), {meta['nproc']} cores ({meta['cpu_model']}), "
                 f"load avg {meta['loadavg_start'][0]:.1f} → {meta['loadavg_end'][0]:.1f}; "
                 f"llmgw_filter.wasm {result['wasm_bytes'] / 1024:,.0f} KiB")
    tg = result["targets"] = targets(summary)
    size_limit = 1 << 20
    tg.append({"config": "llmgw", "target": "optimized module ≤ 1 MiB", "metric": "wasm_bytes",
               "value": result["wasm_bytes"], "spread": 0, "limit": size_limit,
               "met": result["wasm_bytes"] <= size_limit,
               "verdict": "met" if result["wasm_bytes"] <= size_limit else "MISSED"})
    (out / "results.json").write_text(json.dumps(result, indent=1))
    tgt_lines = [f"- {t['verdict']}: {LABELS[t['config']]}: {t['target']}: {t['value']:,.2f}"
                 + (f" ±{t['spread']:,.2f}" if len(rounds) > 1 else "") for t in tg]
    md = "\n".join([
        f"Run {result['date']}: {meta_line}.",
        f"Each cell: median over {len(rounds)} round(s) ± half the min–max range; added figures and ratios "
        "are computed within each round. The fixed-load run sends "
        f"{result['params'].get('rate_rps', 0):,} req/s for {result['params'].get('rate_s', 0)} s, open loop.",
        "",
        md_table(summary, names_run),
        "",
        *(["Targets (reported, not asserted):", "", *tgt_lines, ""] if tg else []),
        *[f"- {v}" for v in skipped.values()],
        *[f"- {v}" for v in result.get("notes", [])],
        *(["", profile_md(profile)] if profile else []),
    ]) + "\n"
    (out / "results.md").write_text(md)
    (out / "results.svg").write_text(svg_chart(summary, names_run, meta_line))
    print(text_table(summary, names_run))
    print(f"\n{meta_line}; ± = half the min–max range over rounds")
    for line in tgt_lines:
        print(line)
    for v in skipped.values():
        print(v)
    if profile:
        print()
        print(profile_md(profile))
    print(f"results: {out / 'results.json'}, {out / 'results.md'}, {out / 'results.svg'}")
    for f in failures:
        print("FAIL", f)
    return 1 if failures or not rounds else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
