"""Provider fallback (issue 10) on real Envoy: `llmgw render` turns rules with priorities and a retry
policy into a rule cluster whose priority levels hold the backends; Envoy retries, and the filter,
running again as the cluster's upstream filter, translates each attempt for its own backend. The
clients are the official OpenAI and Anthropic SDKs; the providers are mock-provider processes that
fail on purpose (`--fail-status`, `--delay-ms`, a closed port, a stream that resets)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import anthropic
import openai
import pytest
import yaml

import llmgw_e2e as e2e

MSGS = [{"role": "user", "content": "tell me three words"}]
AWS_SECRET = "fallback-test-secret"
# Credentials reach Envoy's environment, as `*_env` names in the config.
KEYS: dict[str, str] = {}


def env_name(backend: str) -> str:
    return "FB_KEY_" + backend.upper()


def llmgw_bin() -> Path:
    try:
        return e2e.llmgw_bin()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mocks():
    started = {
        "ok": e2e.Mock("ok"),
        "ok2": e2e.Mock("ok2"),
        "fail500": e2e.Mock("fail500", "--fail-status", "500"),
        "fail503": e2e.Mock("fail503", "--fail-status", "503"),
        "fail429": e2e.Mock("fail429", "--fail-status", "429", "--retry-after", "30"),
        "hang": e2e.Mock("hang", "--delay-ms", "8000"),
        "bedrock": e2e.Mock("bedrock", "--fail-status", "500"),
    }
    yield started
    for m in started.values():
        m.stop()


def config(m: dict, refused: int) -> dict:
    def openai_backend(name: str, url: str, key: str) -> dict:
        KEYS[env_name(name)] = key
        return {"name": name, "url": url + "/v1", "schema": "OpenAI", "auth": {"bearer_env": env_name(name)}}

    backends = [
        openai_backend("ok", m["ok"].url, "sk-ok"),
        openai_backend("ok2", m["ok2"].url, "sk-ok2"),
        openai_backend("fail500", m["fail500"].url, "sk-fail500"),
        openai_backend("fail503", m["fail503"].url, "sk-fail503"),
        openai_backend("fail429", m["fail429"].url, "sk-fail429"),
        openai_backend("hang", m["hang"].url, "sk-hang"),
        openai_backend("refused", f"http://127.0.0.1:{refused}", "sk-refused"),
        openai_backend("refused2", f"http://127.0.0.1:{refused}", "sk-refused2"),
        # One model on two servers (as an AIBrix endpoints file gives it), one of them down.
        {**{k: v for k, v in openai_backend("pair", m["ok"].url, "sk-pair").items() if k != "url"},
         "endpoints": [f"127.0.0.1:{refused}", f"127.0.0.1:{m['ok'].port}"], "prefix": "/v1"},
        {"name": "claude", "url": m["ok"].url, "schema": "Anthropic", "auth": {"x_api_key_env": "FB_ANT_KEY"}},
        # Each attempt takes the request's own key (and never forwards its header).
        {"name": "own-ok2", "url": m["ok2"].url + "/v1", "schema": "OpenAI",
         "credential_override": {"header": "x-upstream-key"}},
        {"name": "claude-down", "url": m["fail500"].url, "schema": "Anthropic",
         "auth": {"x_api_key_env": "FB_ANT_DOWN_KEY"}},
        {"name": "bedrock-down", "url": m["bedrock"].url, "schema": "AWSBedrock", "region": "us-east-1",
         "auth": {"aws": {"access_key_id_env": "FB_AWS_ID", "secret_access_key_env": "FB_AWS_SECRET"}}},
    ]
    KEYS.update({"FB_ANT_KEY": "ant-key", "FB_ANT_DOWN_KEY": "ant-down", "FB_AWS_ID": "AKIDFALLBACK",
                 "FB_AWS_SECRET": AWS_SECRET})

    def rule(model: str, *refs: dict, retry: dict | None = None) -> dict:
        r = {"match": {"model": {"exact": model}}, "backends": list(refs)}
        if retry:
            r["retry"] = retry
        return r

    p0 = lambda name, **kw: {"name": name, "priority": 0, **kw}  # noqa: E731
    p1 = lambda name, **kw: {"name": name, "priority": 1, **kw}  # noqa: E731
    rules = [
        rule("fb-500", p0("fail500"), p1("ok2")),
        rule("fb-429", p0("fail429"), p1("ok2")),
        rule("fb-refused", p0("refused"), p1("ok2")),
        rule("fb-hang", p0("hang"), p1("ok2"), retry={"attempts": 2, "first_byte_timeout": "1s"}),
        rule("fb-to-anthropic", p0("fail503"), p1("claude", model_override="claude-fallback")),
        rule("fb-from-bedrock", p0("bedrock-down", model_override="anthropic.claude-3-haiku"), p1("ok2")),
        rule("fb-all-fail", p0("fail500"), p1("fail429")),
        rule("fb-unreachable", p0("refused"), p1("refused2")),
        # Its own cluster: no other test's failures have ejected its primary.
        rule("fb-log", p0("fail500"), p1("ok2")),
        rule("fb-log-429", p0("fail429"), p1("ok2")),
        rule("fb-trace", p0("fail500"), p1("ok2")),
        rule("fb-abort", p0("ok", model_override="mock-stream-abort"), p1("ok2")),
        rule("claude-fb", p0("claude-down"), p1("ok2", model_override="gpt-fallback")),
        rule("fb-endpoints", p0("pair"), retry={"attempts": 2, "on": ["connect-failure"]}),
        rule("plain", p0("ok")),
        rule("fb-mutated", p0("fail500"), p1("ok2", body_mutation={"set": {"seed": 11}, "remove": ["user"]})),
        rule("fb-own-key", p0("fail500"), p1("own-ok2")),
    ]
    return {"backends": backends, "rules": rules}


@pytest.fixture(scope="module")
def receiver():
    """An OTLP/HTTP JSON receiver: the gateway traces, so fallback attempts show as span events."""
    from test_tracing import Receiver

    r = Receiver()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def gw(mocks, receiver, tmp_path_factory):
    cfg_path = tmp_path_factory.mktemp("fallback") / "llmgw.yaml"
    cfg_path.write_text(yaml.safe_dump(config(mocks, closed_port()), sort_keys=False))
    env = {**os.environ, **KEYS, "LLMGW_WASM": str(e2e.wasm_path()),
           "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    r = subprocess.run([str(llmgw_bin()), "render", str(cfg_path), "--port", "0"], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    bootstrap = yaml.safe_load(r.stdout)
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = 0
    envoy = e2e.Envoy(bootstrap, name="fallback", env=KEYS)
    yield envoy
    envoy.stop()


def oa(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{gw.port}/v1", api_key="client-key", max_retries=0,
                         timeout=30)


def served_by(mock: e2e.Mock) -> int:
    return sum(1 for r in mock.requests() if r["path"].endswith(("/chat/completions", "/messages", "/converse")))


def reply_from(text: str, name: str) -> bool:
    return f"Hello from {name}" in text


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_primary_500_falls_back_to_the_secondary(gw, mocks, stream):
    before = served_by(mocks["fail500"])
    c = oa(gw)
    if stream:
        chunks = list(c.chat.completions.create(model="fb-500", messages=MSGS, stream=True))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    else:
        r = c.chat.completions.create(model="fb-500", messages=MSGS)
        text = r.choices[0].message.content
        assert r.usage.prompt_tokens == 4
    assert reply_from(text, "ok2"), text
    assert served_by(mocks["fail500"]) >= before  # tried first, unless ejected by an earlier test


def test_a_fallback_requests_span_has_one_event_per_attempt_and_the_answer(gw, mocks, receiver):
    """The upstream copy records each attempt in filter state; the listener's copy turns them into
    `llmgw.attempt` events of the request's one span, whose output is the answering attempt's."""
    from test_tracing import attrs

    trace = "5bf92f3577b34da6a3ce929d0e0e4736"
    r = oa(gw).chat.completions.create(model="fb-trace", messages=MSGS,
                                       extra_headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
    assert reply_from(r.choices[0].message.content, "ok2")
    deadline = time.monotonic() + 10
    spans: list[dict] = []
    while not spans and time.monotonic() < deadline:
        spans = [s for s in receiver.spans if s["traceId"] == trace]
        time.sleep(0.05)
    [span] = spans
    events = [(e["name"], attrs(e)) for e in span.get("events", [])]
    # Its own rule cluster: the primary answers 500 (retried), then the secondary serves.
    assert [(n, a["llmgw.backend"], a["llmgw.attempt.outcome"]) for n, a in events] == [
        ("llmgw.attempt", "fail500", "retried"), ("llmgw.attempt", "ok2", "served")], events
    assert events[0][1]["http.response.status_code"] in ("500", 500), events
    a = attrs(span)
    assert a["llmgw.backend"] == "ok2"
    assert "Hello from ok2" in a["llm.output_messages.0.message.content"], a


def test_primary_429_falls_back_and_is_ejected(gw, mocks):
    c = oa(gw)
    before = served_by(mocks["fail429"])
    r = c.chat.completions.create(model="fb-429", messages=MSGS)
    assert reply_from(r.choices[0].message.content, "ok2")
    assert served_by(mocks["fail429"]) == before + 1, "the primary was tried first"
    # The 429 (reported to Envoy as a 503) ejected the primary: the next requests go straight to
    # the secondary.
    for _ in range(3):
        r = c.chat.completions.create(model="fb-429", messages=MSGS)
        assert reply_from(r.choices[0].message.content, "ok2")
    assert served_by(mocks["fail429"]) == before + 1, "an ejected backend is not tried"


def test_refused_connection_falls_back(gw, mocks):
    r = oa(gw).chat.completions.create(model="fb-refused", messages=MSGS)
    assert reply_from(r.choices[0].message.content, "ok2")


def test_a_backend_that_hangs_before_its_first_byte_is_abandoned(gw, mocks):
    t0 = time.monotonic()
    r = oa(gw).chat.completions.create(model="fb-hang", messages=MSGS)
    took = time.monotonic() - t0
    assert reply_from(r.choices[0].message.content, "ok2")
    assert took < 6, f"first_byte_timeout 1s, yet {took:.1f}s"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_openai_primary_falls_back_to_anthropic(gw, mocks, stream):
    mocks["ok"].clear()
    c = oa(gw)
    if stream:
        chunks = list(c.chat.completions.create(model="fb-to-anthropic", messages=MSGS, stream=True,
                                                stream_options={"include_usage": True}))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 4
    else:
        r = c.chat.completions.create(model="fb-to-anthropic", messages=MSGS)
        text = r.choices[0].message.content
        assert r.object == "chat.completion" and r.usage.prompt_tokens == 4
    assert reply_from(text, "ok"), text
    sent = [q for q in mocks["ok"].requests() if q["path"].endswith("/messages")]
    assert sent, mocks["ok"].requests()
    q = sent[-1]
    assert q["headers"].get("x-api-key") == "ant-key"
    assert "authorization" not in q["headers"], "the OpenAI attempt's credential must not reach Anthropic"
    assert '"model":"claude-fallback"' in q["body"].replace(" ", "")


def test_bedrock_primary_falls_back_without_leaking_aws_headers(gw, mocks):
    mocks["ok2"].clear()
    r = oa(gw).chat.completions.create(model="fb-from-bedrock", messages=MSGS)
    assert reply_from(r.choices[0].message.content, "ok2")
    tried = [q for q in mocks["bedrock"].requests() if q["path"].endswith("/converse")]
    assert tried and tried[-1]["headers"]["authorization"].startswith("AWS4-HMAC-SHA256")
    q = [q for q in mocks["ok2"].requests() if q["path"].endswith("/chat/completions")][-1]
    leaked = [h for h in q["headers"] if h.startswith("x-amz-")]
    assert not leaked, leaked
    assert q["headers"]["authorization"] == "Bearer sk-ok2"
    assert q["path"] == "/v1/chat/completions"


def test_when_every_backend_fails_the_client_gets_one_clean_error(gw, mocks):
    with pytest.raises(openai.RateLimitError) as err:
        oa(gw).chat.completions.create(model="fb-all-fail", messages=MSGS)
    assert err.value.status_code == 429, "the last attempt's status"
    body = err.value.body
    assert isinstance(body, dict) and "fail429" in body.get("message", ""), body


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_when_no_backend_is_reachable_envoys_own_answer_is_client_shaped(gw, mocks, stream):
    # No attempt answered: the 503 is Envoy's own (`upstream connect error ...`, not via_upstream),
    # and the downstream copy puts it in the client's API shape.
    with pytest.raises(openai.InternalServerError) as err:
        if stream:
            list(oa(gw).chat.completions.create(model="fb-unreachable", messages=MSGS, stream=True))
        else:
            oa(gw).chat.completions.create(model="fb-unreachable", messages=MSGS)
    assert err.value.status_code == 503
    body = err.value.body
    assert isinstance(body, dict) and body.get("message"), body
    ac = anthropic.Anthropic(base_url=f"http://127.0.0.1:{gw.port}", api_key="client-key", max_retries=0)
    with pytest.raises(anthropic.InternalServerError) as aerr:
        ac.messages.create(model="fb-unreachable", max_tokens=16, messages=MSGS)
    assert aerr.value.status_code == 503
    assert aerr.value.body["type"] == "error" and aerr.value.body["error"]["message"], aerr.value.body


def test_a_stream_that_fails_after_its_first_byte_is_not_retried(gw, mocks):
    before_primary, before_secondary = served_by(mocks["ok"]), served_by(mocks["ok2"])
    with pytest.raises(Exception):
        for _ in oa(gw).chat.completions.create(model="fb-abort", messages=MSGS, stream=True):
            pass
    # The primary answered 200 and sent its first chunks, then reset: the answer had started, so
    # Envoy does not retry it elsewhere and the client sees the stream break.
    assert served_by(mocks["ok"]) == before_primary + 1
    assert served_by(mocks["ok2"]) == before_secondary, "a stream already started is never retried elsewhere"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_anthropic_client_falls_back_to_an_openai_backend(gw, mocks, stream):
    c = anthropic.Anthropic(base_url=f"http://127.0.0.1:{gw.port}", api_key="client-key", max_retries=0)
    if stream:
        with c.messages.stream(model="claude-fb", max_tokens=64, messages=MSGS) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
        assert final.usage.input_tokens == 2  # 4 words, half reported as cached (cache_read_input_tokens)
    else:
        m = c.messages.create(model="claude-fb", max_tokens=64, messages=MSGS)
        assert m.type == "message" and m.usage.input_tokens == 2 and m.usage.cache_read_input_tokens == 2
        text = m.content[0].text
    assert reply_from(text, "ok2"), text


def test_the_access_log_names_every_attempt(gw, mocks):
    rid = f"fb-log-{time.monotonic_ns()}"
    r = oa(gw).chat.completions.with_raw_response.create(model="fb-log", messages=MSGS,
                                                        extra_headers={"x-request-id": rid})
    assert r.status_code == 200
    attempts = gw.wait_access_log(lambda e: e.get("attempt_of") == rid and e.get("status") == 200)
    # One line per attempt, written as each ends: in the order they were made.
    lines = [e for e in gw.access_log() if e.get("attempt_of") == rid]
    assert attempts and [(e["backend"], e["status"]) for e in lines] == [("fail500", 500), ("ok2", 200)], lines
    request = gw.wait_access_log(lambda e: e.get("request_id") == rid)
    assert request and request[0]["backend"] == "ok2" and request[0]["attempts"] == 2, request
    # A retried 429 is a 503 to Envoy; the line says what the provider answered.
    rid = f"fb-log-429-{time.monotonic_ns()}"
    oa(gw).chat.completions.create(model="fb-log-429", messages=MSGS, extra_headers={"x-request-id": rid})
    gw.wait_access_log(lambda e: e.get("attempt_of") == rid and e.get("status") == 200)
    lines = [e for e in gw.access_log() if e.get("attempt_of") == rid]
    assert [(e["backend"], e["status"], e["upstream_status"]) for e in lines] == [
        ("fail429", 503, "429"), ("ok2", 200, None)], lines


def test_attempts_and_the_serving_backend_are_counted(gw, mocks):
    oa(gw).chat.completions.create(model="fb-500", messages=MSGS)
    samples = e2e.parse_prometheus(e2e.http("GET", gw.admin_url + "/stats/prometheus")[2].decode())
    served = e2e.prom_value(samples, "llmgw_attempts_total", llmgw_backend="ok2", outcome="served",
                            http_status="200")
    retried = e2e.prom_value(samples, "llmgw_attempts_total", llmgw_backend="fail500", outcome="retried",
                             http_status="500")
    assert served and served >= 1, [s for s in samples if s[0].startswith("llmgw_attempts")]
    assert retried and retried >= 1, [s for s in samples if s[0].startswith("llmgw_attempts")]
    ok2 = e2e.prom_value(samples, "llmgw_requests_total", llmgw_backend="ok2", gen_ai_request_model="fb-500",
                         gen_ai_operation_name="chat", outcome="success")
    assert ok2 and ok2 >= 1
    failed = e2e.prom_value(samples, "llmgw_requests_total", llmgw_backend="fail500", outcome="failure")
    assert not failed, "a retried attempt is not a failed request"


def test_endpoints_of_one_backend_fail_over_to_each_other(gw, mocks):
    # Whichever endpoint Envoy picks first, every request is served by the one that is up (without
    # the retry, round robin would fail about every other request).
    for _ in range(6):
        r = oa(gw).chat.completions.create(model="fb-endpoints", messages=MSGS)
        assert reply_from(r.choices[0].message.content, "ok")


def test_a_rule_without_fallback_is_unchanged(gw, mocks):
    r = oa(gw).chat.completions.create(model="plain", messages=MSGS)
    assert reply_from(r.choices[0].message.content, "ok")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_each_attempt_gets_its_body_mutation_and_the_requests_own_key(gw, mocks, stream):
    mocks["ok2"].clear()
    c = oa(gw)
    r = c.chat.completions.create(model="fb-mutated", messages=MSGS, user="someone", stream=stream)
    text = ("".join(ch.choices[0].delta.content or "" for ch in r if ch.choices) if stream
            else r.choices[0].message.content)
    assert reply_from(text, "ok2"), text
    sent = json.loads(mocks["ok2"].requests()[-1]["body"])
    assert sent["seed"] == 11 and "user" not in sent and sent["messages"] == MSGS

    own = c.with_options(default_headers={"x-upstream-key": "sk-own-attempt"})
    r = own.chat.completions.create(model="fb-own-key", messages=MSGS, stream=stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in r if ch.choices) if stream else r.choices[0].message.content
    assert reply_from(text, "ok2"), text
    headers = mocks["ok2"].requests()[-1]["headers"]
    assert headers["authorization"] == "Bearer sk-own-attempt" and "x-upstream-key" not in headers
    # Without the key, the attempt on the backend that needs it is refused in the client's shape.
    with pytest.raises(openai.AuthenticationError) as exc:
        c.chat.completions.create(model="fb-own-key", messages=MSGS)
    assert exc.value.code == "missing_upstream_credential"
