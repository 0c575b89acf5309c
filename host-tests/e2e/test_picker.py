"""Endpoint picking (issue 14) on real Envoy: `llmgw run` with `picker:` backends over several mock
vLLM servers. The filter picks the endpoint and writes it in `x-llmgw-destination`, followed by the
endpoints to retry on; the backend's cluster (Envoy's override-host policy) connects to the first, a
retry to the next. In-flight requests per endpoint are counted in shared data (mirrored by the
`llmgw_picker_in_flight` gauge read here). One `llmgw run` for the module."""

from __future__ import annotations

import concurrent.futures
import os
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import openai
import pytest
import yaml

import llmgw_e2e as e2e

SYSTEM = ("You are the support assistant of a large retailer. Answer politely, cite the order number, "
          "never promise refunds, and keep every answer under three sentences. ") * 4


def llmgw_bin() -> Path:
    p = Path(os.environ.get("LLMGW_BIN", e2e.REPO / "target" / "debug" / "llmgw"))
    if not p.exists():
        pytest.skip(f"llmgw binary not found at {p} (make cli)")
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    d = tmp_path_factory.mktemp("picker")
    mocks = {}
    try:
        # a, b, c: vLLM-like, a first token 150 ms later for an unseen prompt, at once for a cached one.
        for name in ("a", "b", "c"):
            mocks[name] = e2e.Mock(name, "--prefill-ms", "150", "--prefix-block-bytes", "64")
        mocks["slow"] = e2e.Mock("slow", "--delay-ms", "400")
        # least-kv-cache: the KV-cache usage each reports on /metrics.
        for name, usage in (("kv90", "0.9"), ("kv10", "0.1"), ("kv50", "0.5")):
            mocks[name] = e2e.Mock(name, "--gpu-cache-usage", usage)
        # least-latency: one fast, one answering 250 ms late.
        mocks["fast"] = e2e.Mock("fast")
        mocks["late"] = e2e.Mock("late", "--delay-ms", "250")
        # Ejection without scrapes: "doomed" is killed mid-module.
        for name in ("e1", "doomed", "e3"):
            mocks[name] = e2e.Mock(name)
        # Never configured: a client naming it must not reach it.
        mocks["outsider"] = e2e.Mock("outsider")
        ep = lambda *names: [f"127.0.0.1:{mocks[n].port}" for n in names]  # noqa: E731
        forward = ["x-mock-chunks", "x-mock-chunk-gap-ms"]
        cfg = {
            "backends": [
                {"name": "lr", "endpoints": ep("a", "b", "slow"), "schema": "OpenAI", "prefix": "/v1",
                 "picker": {"algorithm": "least-request"}, "forward_headers": forward},
                {"name": "pc", "endpoints": ep("a", "b", "c"), "schema": "OpenAI", "prefix": "/v1",
                 "picker": {"algorithm": "prefix-cache", "prefix_block_size": 64, "imbalance_threshold": 4},
                 "forward_headers": forward},
                {"name": "kv", "endpoints": ep("kv90", "kv10", "kv50"), "schema": "OpenAI", "prefix": "/v1",
                 "picker": {"algorithm": "least-kv-cache", "metrics_scrape_interval_ms": 200}},
                {"name": "ll", "endpoints": ep("fast", "late"), "schema": "OpenAI", "prefix": "/v1",
                 "picker": {"algorithm": "least-latency"}},
                {"name": "ej", "endpoints": ep("e1", "doomed", "e3"), "schema": "OpenAI", "prefix": "/v1",
                 "picker": {"algorithm": "least-request"}},
            ],
            "rules": [
                {"match": {"model": {"exact": "lr-model"}}, "backends": [{"name": "lr"}]},
                {"match": {"model": {"exact": "pc-model"}}, "backends": [{"name": "pc"}]},
                {"match": {"model": {"exact": "kv-model"}}, "backends": [{"name": "kv"}]},
                {"match": {"model": {"exact": "ll-model"}}, "backends": [{"name": "ll"}]},
                {"match": {"model": {"exact": "ej-model"}}, "backends": [{"name": "ej"}]},
            ],
        }
        cfg_path = d / "llmgw.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        env = {**os.environ, "LLMGW_WASM": str(e2e.wasm_path()), "ENVOY_BIN": str(e2e.envoy_bin())}
        port, admin = free_port(), free_port()
        log_path = d / "run.log"
        with open(log_path, "wb") as log:
            # Two workers: the counters are shared by both workers' VMs.
            proc = subprocess.Popen([str(llmgw_bin()), "run", str(cfg_path), "--port", str(port), "--admin-port",
                                     str(admin), "--concurrency", "2"], stdout=log, stderr=subprocess.STDOUT, env=env)
            try:
                deadline = time.monotonic() + 60
                while b"llmgw: ready" not in log_path.read_bytes():
                    assert proc.poll() is None, log_path.read_text()[-3000:]
                    assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                    time.sleep(0.1)
                yield {"url": f"http://127.0.0.1:{port}", "admin": admin, "mocks": mocks, "log": log_path}
            finally:
                e2e._stop(proc)
    finally:
        for m in mocks.values():
            m.stop()


def client(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw["url"] + "/v1", api_key="unused", max_retries=0, timeout=30)


def served_by(reply) -> str:
    """The mock that answered (it puts its name in `system_fingerprint`)."""
    return reply.system_fingerprint


def in_flight(gw) -> dict[tuple[str, str], float]:
    status, _, body = e2e.http("GET", f"http://127.0.0.1:{gw['admin']}/metrics?filter=picker_in_flight")
    assert status == 200, body
    return {(ls.get("llmgw_backend"), ls.get("llmgw_endpoint")): v
            for n, ls, v in e2e.parse_prometheus(body.decode()) if n == "llmgw_picker_in_flight"}


def wait_all_zero(gw, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        gauges = in_flight(gw)
        if gauges and all(v == 0 for v in gauges.values()):
            return gauges
        assert time.monotonic() < deadline, f"in-flight counters stuck: {gauges}"
        time.sleep(0.1)


def test_least_request_drains_the_slow_endpoint(gw):
    c = client(gw)

    def one(i: int) -> str:
        r = c.chat.completions.create(model="lr-model", messages=[{"role": "user", "content": f"question {i}"}])
        return served_by(r)

    # As many clients as endpoints: a fast endpoint is nearly always free while the slow one holds
    # a request for 400 ms.
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        counts = Counter(pool.map(one, range(36)))
    assert set(counts) <= {"a", "b", "slow"}, counts
    # Round robin (or random) would give the slow endpoint about 12 of 36; least-request sends
    # nearly everything to the two fast ones.
    assert counts["slow"] <= 6, counts
    assert counts["a"] + counts["b"] >= 30, counts
    wait_all_zero(gw)


def test_prefix_cache_keeps_a_shared_prefix_on_one_endpoint(gw):
    c = client(gw)
    served = []
    first_token = []
    for i in range(20):
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Where is order {1000 + i}?"}]
        start = time.monotonic()
        r = c.chat.completions.create(model="pc-model", messages=messages)
        first_token.append(time.monotonic() - start)
        served.append(served_by(r))
    counts = Counter(served)
    endpoint, hits = counts.most_common(1)[0]
    assert endpoint in {"a", "b", "c"} and hits >= 18, counts
    # The repeated prefix is cached where it lands: later requests skip most of the 150 ms prefill.
    assert sorted(first_token[1:])[len(first_token) // 2] < first_token[0], first_token
    # A different prefix is free to go elsewhere, and then sticks too.
    other = [served_by(c.chat.completions.create(
        model="pc-model", messages=[{"role": "system", "content": "Translate to French. " * 20},
                                    {"role": "user", "content": f"sentence {i}"}])) for i in range(5)]
    assert len(set(other)) == 1, other
    wait_all_zero(gw)


def test_in_flight_counters_return_to_zero_after_aborted_streams(gw):
    c = client(gw)
    headers = {"x-mock-chunks": "200", "x-mock-chunk-gap-ms": "20"}
    streams = []
    for i in range(4):
        s = c.chat.completions.create(model="lr-model" if i % 2 else "pc-model", stream=True,
                                      messages=[{"role": "user", "content": f"long story {i}"}], extra_headers=headers)
        next(iter(s))  # the first chunk: the request is in flight
        streams.append(s)
    busy = in_flight(gw)
    assert sum(busy.values()) == 4, busy
    for s in streams:
        s.close()  # the client goes away mid-stream
    gauges = wait_all_zero(gw)
    assert {b for b, _ in gauges} == {"lr", "pc"}, gauges
    # The servers saw the streams reset too.
    for name in ("a", "b", "c"):
        _, _, text = e2e.http("GET", gw["mocks"][name].url + "/metrics")
        assert 'vllm:num_requests_running{model_name="%s"} 0' % name in text.decode(), text


def test_a_client_sent_destination_is_never_honoured(gw):
    outsider = gw["mocks"]["outsider"]
    outsider.clear()
    c = client(gw)
    for model in ("lr-model", "pc-model"):
        for _ in range(4):
            r = c.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": "hi"}],
                extra_headers={"x-llmgw-destination": f"127.0.0.1:{outsider.port}"})
            assert served_by(r.parse()) in {"a", "b", "c", "slow"}
    assert outsider.requests() == []
    # The upstream request carries the filter's pick (the endpoint it reached), then the endpoints
    # to retry on: configured ones only.
    configured = {f"127.0.0.1:{gw['mocks'][n].port}" for n in ("a", "b", "c", "slow")}
    seen = set()
    for n in ("a", "b", "c"):
        for r in gw["mocks"][n].requests():
            if listed := r["headers"].get("x-llmgw-destination"):
                assert listed.split(",")[0] == f"127.0.0.1:{gw['mocks'][n].port}", (n, listed)
                seen.update(listed.split(","))
    assert seen and seen <= configured, seen
    wait_all_zero(gw)


def ask(c, model: str, i: int = 0) -> str:
    return served_by(c.chat.completions.create(model=model, messages=[{"role": "user", "content": f"q{i}"}]))


def test_least_kv_cache_goes_to_the_emptiest_cache_and_skips_a_dead_endpoint(gw):
    c = client(gw)
    # The root context scrapes each endpoint's /metrics every 200 ms through the backend's
    # cluster; until the first answers arrive the picker is least-request.
    deadline = time.monotonic() + 3
    while ask(c, "kv-model") != "kv10":
        assert time.monotonic() < deadline, "the scraped KV-cache usage never steered a pick"
        time.sleep(0.1)
    counts = Counter(ask(c, "kv-model", i) for i in range(10))
    assert counts == {"kv10": 10}, counts
    # The emptiest endpoint dies: its next scrape fails and marks it down (no request needed to
    # find out), so every later request succeeds on the next emptiest.
    gw["mocks"]["kv10"].stop()
    time.sleep(0.6)
    counts = Counter(ask(c, "kv-model", i) for i in range(10))
    assert counts == {"kv50": 10}, counts
    wait_all_zero(gw)


def test_least_latency_learns_which_endpoint_answers_first(gw):
    c = client(gw)
    served = [ask(c, "ll-model", i) for i in range(12)]
    # Each unmeasured endpoint is tried first; then the measured-faster one takes the rest.
    assert "late" in served[:4], served
    assert served[4:] == ["fast"] * 8, served
    wait_all_zero(gw)


def cluster_counter(gw, cluster: str, name: str) -> int:
    """An Envoy counter of a cluster (`envoy_cluster_<name>`), from the admin's `/metrics`."""
    status, _, body = e2e.http("GET", f"http://127.0.0.1:{gw['admin']}/metrics?filter={name}")
    assert status == 200, body
    samples = e2e.parse_prometheus(body.decode())
    return int(e2e.prom_value(samples, f"envoy_cluster_{name}", envoy_cluster_name=cluster) or 0)


def test_a_killed_endpoint_costs_no_failed_request(gw):
    c = client(gw)
    assert {ask(c, "ej-model", i) for i in range(24)} == {"e1", "doomed", "e3"}
    assert cluster_counter(gw, "ej", "upstream_rq_retry") == 0
    gw["mocks"]["doomed"].stop()
    # Every request is served (an error raises): the one that picked the dead endpoint too, as
    # Envoy retried its refused connection on the next endpoint the filter listed in the header.
    outcomes = [ask(c, "ej-model", i) for i in range(20)]
    assert set(outcomes) <= {"e1", "e3"}, outcomes
    assert cluster_counter(gw, "ej", "upstream_rq_retry_success") >= 1
    # Answered by another endpoint: the filter marks the picked one down, so it is tried once.
    assert cluster_counter(gw, "ej", "upstream_cx_connect_fail") == 1
    wait_all_zero(gw)
