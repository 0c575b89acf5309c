"""OpenTelemetry tracing on real Envoy: the filter's spans reach an OTLP/HTTP JSON receiver (a small
http.server in the test, `protocol: http/json`) through `dispatch_http_call` on the root context's
tick, and Arize Phoenix (OTLP/HTTP protobuf, the default) through `llmgw run`.

- a streamed chat completion translated to Anthropic, with the `openai` SDK: one span with
  OpenInference attributes, its output assembled from the stream, joined to the client's
  `traceparent`, and the provider gets a `traceparent` whose parent is the gateway's span;
- the collector down: the request is still a 200, and the spans are counted as dropped;
- Phoenix (`arize-phoenix`, in its own venv: `make py-tools`) started on free ports: `llmgw run` with
  `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at it, a streamed chat translated to Anthropic, and the span
  read back through Phoenix's REST API (`GET /v1/projects/{project}/spans`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

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
        "tracing": {"cluster": cluster, "path": "/v1/traces", "service_name": "llmgw-e2e", "protocol": "http/json",
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


def phoenix_bin() -> Path | None:
    """Phoenix's CLI: PHOENIX_BIN, else the venv `make py-tools` makes for it inside .venv (its
    dependencies conflict with the e2e pins), else PATH."""
    candidates = [os.environ.get("PHOENIX_BIN"), Path(sys.prefix) / "phoenix" / "bin" / "phoenix",
                  e2e.REPO / ".venv" / "phoenix" / "bin" / "phoenix", shutil.which("phoenix")]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


class Phoenix(e2e.LoggedProcess):
    """`phoenix serve` on free loopback ports, its database and working dir in `workdir`."""

    def __init__(self, binary: Path, workdir: Path, timeout: float = 120.0):
        self._open_log("phoenix")
        self.port = e2e.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PHOENIX_HOST": "127.0.0.1", "PHOENIX_PORT": str(self.port),
               "PHOENIX_GRPC_PORT": str(e2e.free_port()), "PHOENIX_WORKING_DIR": str(workdir),
               "PHOENIX_SQL_DATABASE_URL": f"sqlite:///{workdir / 'phoenix.db'}",
               "PHOENIX_TELEMETRY_ENABLED": "false", "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false"}
        self.proc = subprocess.Popen([str(binary), "serve"], stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=workdir)
        try:
            # Migrations and startup take ~10-40 s on a busy 2-core machine.
            deadline = time.monotonic() + timeout
            while True:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"phoenix did not start:\n{self.log_tail(40)}")
                try:
                    if e2e.http("GET", self.url + "/healthz", timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise

    def spans(self, project: str, trace_id: str, n: int, timeout: float = 20.0) -> list[dict]:
        """The project's spans of `trace_id`, once there are `n` (Phoenix ingests asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            status, _, body = e2e.http("GET", f"{self.url}/v1/projects/{project}/spans?trace_id={trace_id}", timeout=5)
            spans = json.loads(body).get("data", []) if status == 200 else []
            if len(spans) >= n or time.monotonic() > deadline:
                assert len(spans) >= n, f"{status} {body[:300]!r}\n{self.log_tail(20)}"
                return spans
            time.sleep(0.3)


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory):
    binary = phoenix_bin()
    if binary is None:
        pytest.skip("arize-phoenix is not installed (make py-tools installs it into .venv/phoenix; or set PHOENIX_BIN)")
    p = Phoenix(binary, tmp_path_factory.mktemp("phoenix"))
    try:
        yield p
    finally:
        p.stop()


def test_phoenix_receives_a_translated_stream_over_otlp_protobuf(phoenix, provider, tmp_path):
    import openai

    cfg = {"backends": [{"name": "claude", "url": provider.url, "schema": "Anthropic",
                         "auth": {"x_api_key_env": "TRACE_ANT_KEY"}}]}
    path = tmp_path / "llmgw.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {"TRACE_ANT_KEY": ANTHROPIC_KEY, "OTEL_EXPORTER_OTLP_ENDPOINT": phoenix.url, "OTEL_BSP_SCHEDULE_DELAY": "100",
           "OTEL_SERVICE_NAME": "llmgw-phoenix", "OTEL_RESOURCE_ATTRIBUTES": "openinference.project.name=llmgw-e2e"}
    gw = e2e.LlmgwRun(path, env, name="phoenix-gw")
    try:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-client", max_retries=0, timeout=30)
        trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        chunks = list(client.chat.completions.create(
            model="claude-sonnet-mock",
            messages=[{"role": "user", "content": "Say hi to Phoenix"}],
            max_tokens=64,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
        ))
        client.close()
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = next(c.usage for c in chunks if c.usage)
        assert text
        [span] = phoenix.spans("llmgw-e2e", trace, 1)
        print("phoenix span:", json.dumps({k: span[k] for k in ("name", "span_kind", "parent_id", "status_code")}),
              json.dumps({k: v for k, v in sorted(span["attributes"].items()) if not k.startswith("input.")})[:600])
        a = span["attributes"]
        assert span["context"]["trace_id"] == trace and span["parent_id"] == "00f067aa0ba902b7"
        assert span["name"] == "ChatCompletion" and span["span_kind"] == "LLM" and span["status_code"] == "OK"
        assert a["llm.model_name"] == "claude-sonnet-mock" and a["llm.provider"] == "anthropic"
        assert a["llm.token_count.prompt"] == usage.prompt_tokens
        assert a["llm.token_count.completion"] == usage.completion_tokens
        assert a["llm.token_count.total"] == usage.total_tokens
        assert a["output.value"] == text
        assert a["llm.output_messages.0.message.content"] == text
        assert a["llm.input_messages.0.message.content"] == "Say hi to Phoenix"
        # The provider's parent is the span Phoenix holds.
        assert provider.requests()[-1]["headers"]["traceparent"] == f"00-{trace}-{span['context']['span_id']}-01"
    finally:
        gw.stop()
