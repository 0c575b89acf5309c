"""Token filter state in the access log, and labelled Prometheus metrics from /stats/prometheus."""

from __future__ import annotations

import time

import llmgw_e2e as e2e

MSGS = [{"role": "user", "content": "count my tokens please"}]  # 4 words -> prompt_tokens 4


def _entry(gw, model: str, n: int = 1) -> list[dict]:
    hits = gw.wait_access_log(lambda e: e.get("model") == model)
    deadline = time.monotonic() + 10
    while len(hits) < n and time.monotonic() < deadline:
        time.sleep(0.1)
        hits = [e for e in gw.access_log() if e.get("model") == model]
    assert len(hits) == n, f"{len(hits)} access log lines for {model}; log: {gw.access_log_path}"
    return hits


def test_access_log_tokens_non_streaming(client, gw):
    r = client.chat.completions.create(model="alpha-log-plain", messages=MSGS)
    (e,) = _entry(gw, "alpha-log-plain")
    assert e["backend"] == "alpha" and e["status"] == 200 and e["method"] == "POST"
    assert e["path"] == "/v1/chat/completions"
    assert int(e["input_tokens"]) == r.usage.prompt_tokens == 4
    assert int(e["output_tokens"]) == r.usage.completion_tokens == 8
    assert int(e["total_tokens"]) == r.usage.total_tokens == 12


def test_access_log_tokens_streaming_with_injected_usage(client, gw):
    chunks = list(client.chat.completions.create(model="alpha-log-stream", messages=MSGS, stream=True,
                                                 extra_headers={"x-mock-chunks": "5"}))
    assert all(c.usage is None for c in chunks)
    (e,) = _entry(gw, "alpha-log-stream")
    assert (int(e["input_tokens"]), int(e["output_tokens"]), int(e["total_tokens"])) == (4, 5, 9)


def test_access_log_tokens_embeddings(client, gw):
    client.embeddings.create(model="text-embedding-log", input="a b c d e f")
    (e,) = _entry(gw, "text-embedding-log")
    assert e["backend"] == "alpha"
    assert int(e["input_tokens"]) == 6 and int(e["total_tokens"]) == 6
    assert e["output_tokens"] in ("0", "-", None, 0)


def test_access_log_beta_prefix_path(client, gw):
    client.chat.completions.create(model="beta-log", messages=MSGS)
    (e,) = _entry(gw, "beta-log")
    assert e["backend"] == "beta" and e["path"] == "/beta/v1/chat/completions"


def _scrape_until(gw, name: str, labels: dict, want: float, timeout: float = 15.0):
    """Histograms reach the admin output on a stats flush (1 s in the rendered config)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = e2e.parse_prometheus(gw.stats())
        got = e2e.prom_value(samples, name, **labels)
        if got == want or time.monotonic() > deadline:
            return samples, got
        time.sleep(0.25)


def test_prometheus_metrics_with_labels(client, gw):
    model = "alpha-metrics"
    for _ in range(3):
        client.chat.completions.create(model=model, messages=MSGS)
    for _ in range(2):
        list(client.chat.completions.create(model=model, messages=MSGS, stream=True,
                                            extra_headers={"x-mock-chunks": "6"}))
    common = {"llmgw_backend": "alpha", "gen_ai_request_model": model, "gen_ai_operation_name": "chat"}
    samples, n_in = _scrape_until(gw, "gen_ai_client_token_usage_count", {**common, "gen_ai_token_type": "input"}, 5)
    assert n_in == 5, _dump(samples, model)
    assert e2e.prom_value(samples, "gen_ai_client_token_usage_count", **common, gen_ai_token_type="output") == 5
    # Envoy histogram sums are approximate (bucketed); 3*4+2*4 input and 3*8+2*6 output tokens.
    s_in = e2e.prom_value(samples, "gen_ai_client_token_usage_sum", **common, gen_ai_token_type="input")
    s_out = e2e.prom_value(samples, "gen_ai_client_token_usage_sum", **common, gen_ai_token_type="output")
    assert abs(s_in - 20) <= 1, s_in
    assert abs(s_out - 36) <= 1.5, s_out
    assert e2e.prom_value(samples, "gen_ai_client_token_usage_bucket", **common, gen_ai_token_type="input",
                          le="+Inf") == 5
    # The bootstrap's histogram_bucket_settings (OTel GenAI token buckets 1, 4, 16, 64, ...).
    out = {**common, "gen_ai_token_type": "output"}
    assert e2e.prom_value(samples, "gen_ai_client_token_usage_bucket", **out, le="4") == 0
    assert e2e.prom_value(samples, "gen_ai_client_token_usage_bucket", **out, le="16") == 5
    assert e2e.prom_value(samples, "llmgw_requests_total", **common, outcome="success") == 5
    assert e2e.prom_value(samples, "gen_ai_server_request_duration_count", **common) == 5
    assert e2e.prom_value(samples, "gen_ai_server_time_to_first_token_count", **common) == 2
    assert e2e.prom_value(samples, "gen_ai_server_time_per_output_token_count", **common) == 2
    # No tag residue: every llmgw sample name is clean and labelled.
    for name, labels, _ in samples:
        assert "=" not in name and ";" not in name
        if not name.startswith(("gen_ai_", "llmgw_")):
            continue
        if labels.get("outcome") == "rejected":
            # Answered by the filter itself, possibly before a model or backend was known (an
            # earlier test's malformed request): the status and error code still say why.
            assert labels.get("http_status") and labels.get("error_code"), (name, labels)
        else:
            assert labels.get("llmgw_backend") and labels.get("gen_ai_request_model"), (name, labels)


def test_prometheus_embeddings_operation(client, gw):
    client.embeddings.create(model="text-embedding-metrics", input="x y")
    labels = {"llmgw_backend": "alpha", "gen_ai_request_model": "text-embedding-metrics",
              "gen_ai_operation_name": "embeddings", "gen_ai_token_type": "input"}
    samples, n = _scrape_until(gw, "gen_ai_client_token_usage_count", labels, 1)
    assert n == 1, _dump(samples, "text-embedding-metrics")


def test_prometheus_failure_outcome(client, gw):
    import openai
    import pytest

    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="mock-error-503", messages=MSGS)
    labels = {"llmgw_backend": "alpha", "gen_ai_request_model": "mock-error-503", "outcome": "failure"}
    samples, n = _scrape_until(gw, "llmgw_requests_total", labels, 1)
    assert n == 1, _dump(samples, "mock-error-503")


def test_model_label_with_dots_and_colons(gw):
    model = "alpha-qwen2.5:0.5b"
    status, _, _ = e2e.http("POST", gw.url + "/v1/chat/completions", {"model": model, "messages": MSGS})
    assert status == 200
    labels = {"llmgw_backend": "alpha", "gen_ai_request_model": model, "outcome": "success"}
    samples, n = _scrape_until(gw, "llmgw_requests_total", labels, 1)
    assert n == 1, _dump(samples, "qwen")


def _dump(samples, needle: str) -> str:
    return "\n".join(f"{n}{l} {v}" for n, l, v in samples if needle in str(l) or needle in n)[:4000]
