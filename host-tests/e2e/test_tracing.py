"""OpenTelemetry tracing on real Envoy: the filter's spans reach an OTLP/HTTP JSON receiver (a small
http.server in the test) through `dispatch_http_call` on the root context's tick.

- a streamed chat completion translated to Anthropic, with the `openai` SDK: one span with
  OpenInference attributes, its output assembled from the stream, joined to the client's
  `traceparent`, and the provider gets a `traceparent` whose parent is the gateway's span;
- the collector down: the request is still a 200, and the spans are counted as dropped.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import llmgw_e2e as e2e

ANTHROPIC_KEY = "sk-ant-upstream-key"
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_PARENT = "b7ad6b7169203331"


class Receiver:
    """OTLP/HTTP JSON on a free loopback port: keeps every exported span."""

    def __init__(self) -> None:
        spans: list[dict] = []
        self.spans = spans
        self.content_types: list[str] = []
        content_types = self.content_types

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                content_types.append(self.headers.get("content-type", ""))
                if self.path == "/v1/traces":
                    for rs in json.loads(body)["resourceSpans"]:
                        for ss in rs["scopeSpans"]:
                            spans.extend({**s, "resource": rs["resource"]} for s in ss["spans"])
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_spans(self, n: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.spans) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.spans) >= n, f"{len(self.spans)} span(s) received"
        return self.spans

    def stop(self) -> None:
        self.server.shutdown()


def plugin(cluster: str) -> dict:
    return {
        "backends": [{"name": "anthropic", "schema": "Anthropic", "auth": {"x_api_key": ANTHROPIC_KEY}}],
        "tracing": {"cluster": cluster, "path": "/v1/traces", "service_name": "llmgw-e2e",
                    "schedule_delay_ms": 100, "resource_attributes": {"deployment.environment": "e2e"}},
    }


def attrs(span: dict) -> dict:
    out = {}
    for kv in span["attributes"]:
        v = kv["value"]
        out[kv["key"]] = v.get("stringValue", v.get("intValue"))
    return out


@pytest.fixture(scope="module")
def provider():
    m = e2e.Mock("anthropic")
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def traced(provider, receiver):
    # Two collectors: one up (the receiver), one down (a port nothing listens on).
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    closed_port = closed.server_address[1]
    closed.server_close()
    up = e2e.render({"anthropic": provider.port, "otel": receiver.port}, plugin("otel"))
    down = e2e.render({"anthropic": provider.port, "otel-down": closed_port}, plugin("otel-down"))
    gateways = []
    try:
        for cfg, name in ((up, "gw-trace"), (down, "gw-trace-down")):
            gateways.append(e2e.Envoy(cfg, name=name))
        yield gateways
    finally:
        for g in gateways:
            g.stop()


def test_a_streamed_translated_call_is_one_span_joined_to_the_clients_trace(traced, provider, receiver):
    import openai

    gw = traced[0]
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-client", max_retries=0, timeout=30)
    parent = f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"
    chunks = list(client.chat.completions.create(
        model="claude-sonnet-mock",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}],
        max_tokens=64,
        temperature=0.3,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"traceparent": parent},
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    span = receiver.wait_spans(1)[0]
    assert receiver.content_types[0] == "application/json"
    assert span["traceId"] == CLIENT_TRACE and span["parentSpanId"] == CLIENT_PARENT
    assert span["name"] == "ChatCompletion" and span["status"]["code"] == 1
    assert int(span["endTimeUnixNano"]) >= int(span["startTimeUnixNano"]) > 0
    resource = attrs(span["resource"])
    assert resource["service.name"] == "llmgw-e2e" and resource["deployment.environment"] == "e2e"
    a = attrs(span)
    assert a["openinference.span.kind"] == "LLM"
    assert a["llm.model_name"] == "claude-sonnet-mock"
    assert a["llm.provider"] == "anthropic" and a["llmgw.backend"] == "anthropic"
    assert json.loads(a["llm.invocation_parameters"])["temperature"] == 0.3
    assert a["llm.input_messages.0.message.role"] == "system"
    assert a["llm.input_messages.1.message.content"] == "Say hi"
    assert a["llm.output_messages.0.message.content"] == text, "assembled from the client's chunks"
    assert int(a["llm.token_count.total"]) == int(a["llm.token_count.prompt"]) + int(a["llm.token_count.completion"]) > 0
    # The provider's parent is the gateway's span, in the client's trace.
    sent = provider.requests()[-1]["headers"]["traceparent"]
    assert sent == f"00-{CLIENT_TRACE}-{span['spanId']}-01"
    client.close()


def test_collector_down_requests_unaffected_and_drops_counted(traced):
    gw = traced[1]
    for _ in range(2):
        status, _, body = e2e.http("POST", gw.url + "/v1/chat/completions",
                                   {"model": "claude-sonnet-mock", "max_tokens": 8,
                                    "messages": [{"role": "user", "content": "hi"}]},
                                   {"content-type": "application/json"})
        assert status == 200, body
    deadline = time.monotonic() + 10
    dropped = None
    while time.monotonic() < deadline:
        dropped = e2e.prom_value(e2e.parse_prometheus(gw.stats()), "llmgw_trace_spans_dropped_total")
        if dropped == 2:
            break
        time.sleep(0.2)
    assert dropped == 2, gw.log_tail()
