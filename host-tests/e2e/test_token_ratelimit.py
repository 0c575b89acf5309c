"""Token-based global rate limiting, on real Envoy, with the Envoy Gateway manifests' own config.

The mechanism (envoy-configs/envoy-gateway/README.md, "Token budgets"): the BackendTrafficPolicy's
global rate limit rule becomes two rate limit entries on each route, one checked before the
request is sent (hits_addend 0) and one applied when the stream is done; the EnvoyPatchPolicy makes
the latter's hits_addend read `%FILTER_STATE(wasm.llm_total_token:PLAIN)%`, the response's total
tokens as the llmgw filter records them. The rate limit service then adds that to the client's
counter, and the next check answers OVER_LIMIT once the budget is spent.

Here Envoy 1.40 runs what Envoy Gateway generates from envoy-configs/envoy-gateway/llmgw.yaml
(eg_xds.py: listener, filters, routes, per-route rate limits, with the manifests' EnvoyPatchPolicy
applied), the llmgw filter, two mock providers, and a mock RateLimitService (mock_rls.py) that
records each call's descriptors and hits_addend; and, in the last test, the real `llmgw ratelimit`
(limitador counting in Redis) in its place.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import eg_xds  # noqa: E402
import llmgw_e2e as e2e  # noqa: E402
from mock_rls import OK, OVER_LIMIT, MockRLS, encode_request, should_rate_limit  # noqa: E402

DOCS = eg_xds.load()
UPSTREAM_KEY = "sk-upstream-from-envoyproxy-env"
# The Secrets the operator creates with the commands of the manifests' header (client keys are
# random, as `openssl rand` makes them; the upstream key comes from the operator's environment).
OPERATOR_SECRETS = eg_xds.operator_secrets(env={"OPENAI_API_KEY": UPSTREAM_KEY})
KEYS = eg_xds.one([d for d in OPERATOR_SECRETS if d["metadata"]["name"] == "llmgw-client-keys"], "Secret")["stringData"]
CHAT = "/v1/chat/completions"
PROMPT = "count these five words please"  # 5 prompt tokens at the mock; 8 completion tokens


def budget_key(client: str) -> tuple[tuple[str, str], ...]:
    """The descriptor Envoy Gateway builds for the manifests' shared rule 0 (one Distinct header)."""
    btp = eg_xds.one(DOCS, "BackendTrafficPolicy")
    return ((btp["metadata"]["name"], btp["metadata"]["namespace"]), ("rule-0-match-0", client))


def gateway(providers, rls, name: str, patch_types: frozenset[str] | None = None) -> e2e.Envoy:
    listener, routes = eg_xds.translate(
        DOCS, wasm_file=e2e.wasm_path(), rls_port=rls.port, patch_types=patch_types, secrets=OPERATOR_SECRETS,
        cluster_ports={"openai": providers["openai"].port, "vllm": providers["vllm"].port})
    # The EnvoyProxy's container env, from the upstream-keys Secret.
    upstream = eg_xds.one([d for d in OPERATOR_SECRETS if d["metadata"]["name"] == "llmgw-upstream-keys"], "Secret")
    return e2e.Envoy(eg_xds.bootstrap(listener, routes), name=name, env=dict(upstream["stringData"]))


@pytest.fixture(scope="module")
def providers():
    started = {}
    try:
        for n in ("openai", "vllm"):
            started[n] = e2e.Mock(n)
        yield started
    finally:
        for m in started.values():
            m.stop()


@pytest.fixture(scope="module")
def rls():
    r = MockRLS()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def gw(providers, rls):
    env = gateway(providers, rls, "eg-ratelimit")
    try:
        yield env
    finally:
        env.stop()


def chat(gw, client: str | None, model: str = "gpt-4o-mini", stream: bool = False, key: str | None = None,
         **extra):
    headers = {}
    if client is not None:
        headers["authorization"] = "Bearer " + (key or KEYS[client])
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "stream": stream, **extra}
    return e2e.http("POST", gw.url + CHAT, body, headers)


def charges(rls, since: int, client: str, n: int = 1, timeout: float = 10.0):
    """The stream-done calls (hits_addend > 0) for `client` after call index `since`: they are sent
    after the response, so wait (bounded) until `n` arrived."""
    deadline = time.monotonic() + timeout
    while True:
        got = [c for c in rls.calls()[since:] for d in c.descriptors
               if d.entries == budget_key(client) and (d.hits_addend or 0) > 0]
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_charge_is_the_responses_total_tokens(gw, rls, providers):
    since = len(rls.calls())
    status, _, body = chat(gw, "team-a")
    assert status == 200, body
    usage = json.loads(body)["usage"]
    assert usage["total_tokens"] == 5 + 8
    got = charges(rls, since, "team-a")
    assert len(got) == 1, rls.calls()[since:]
    (d,) = got[0].descriptors
    assert d.hits_addend == usage["total_tokens"]
    # Before the request went upstream, the same descriptor was checked at cost 0.
    checks = [c for c in rls.calls()[since:] if c.descriptors[0].hits_addend == 0]
    assert len(checks) == 1 and checks[0].descriptors[0].entries == budget_key("team-a")
    assert checks[0].at < got[0].at
    # The filter routed by model, used the key from the proxy's environment, and neither the
    # client's key nor its id header reached the provider unchanged.
    (req,) = [r for r in providers["openai"].requests() if r["path"] == CHAT][-1:]
    assert req["headers"]["authorization"] == "Bearer " + UPSTREAM_KEY
    assert req["headers"]["host"] == "api.openai.com"  # the HTTPRoute rule's URLRewrite
    # The HTTPRoute rule's RequestHeaderModifier: the gateway's routing headers stay in the gateway.
    # The client id is forwarded (the charge at stream end reads it), never the client's key.
    for h in ("x-llmgw-backend", "x-ai-eg-model"):
        assert h not in req["headers"], h
    assert req["headers"]["x-llmgw-client"] == "team-a"
    assert KEYS["team-a"] not in json.dumps(req["headers"])


@pytest.mark.parametrize("include_usage", [True, False])
def test_streamed_response_is_charged_its_usage(gw, rls, providers, include_usage):
    """Streams are charged at their end; without include_usage the filter asks the provider for
    usage itself (and hides that chunk), so the charge is the same."""
    since = len(rls.calls())
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    status, _, body = chat(gw, "team-a", model="llama-3.2-1b", stream=True, **extra)
    assert status == 200, body
    events = [json.loads(line[6:]) for line in body.decode().splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    usage = [e["usage"] for e in events if e.get("usage")]
    if include_usage:
        assert usage[-1]["total_tokens"] == 5 + 8
    else:
        assert usage == []
    assert providers["vllm"].requests()[-1]["path"] == CHAT  # routed to the vllm rule
    got = charges(rls, since, "team-a")
    assert [d.hits_addend for c in got for d in c.descriptors] == [5 + 8]


def test_budget_spent_gives_429_and_the_rejected_request_costs_nothing(gw, rls, providers):
    per_request = 5 + 8
    rls.set_limit(budget_key("team-b"), rls.used(budget_key("team-b")) + per_request + per_request // 2)
    for i in range(2):  # 0 then 13 tokens spent: both below the limit when checked
        since = len(rls.calls())
        status, _, body = chat(gw, "team-b")
        assert status == 200, (i, body)
        assert len(charges(rls, since, "team-b")) == 1
    upstream_before = len(providers["openai"].requests())
    since = len(rls.calls())
    status, headers, body = chat(gw, "team-b")
    assert status == 429, body
    # The rate limit service said OVER_LIMIT for the check; the client gets an OpenAI-shaped error
    # (the filter wraps Envoy's empty 429 in the client's API shape).
    assert [c.codes for c in rls.calls()[since:] if c.descriptors[0].hits_addend == 0] == [[2]]
    assert json.loads(body)["error"]["message"], body
    assert len(providers["openai"].requests()) == upstream_before, "a rejected request must not reach the provider"
    time.sleep(0.5)  # a charge would come after the response: give it time to show up
    assert [c for c in rls.calls()[since:] if (c.descriptors[0].hits_addend or 0) > 0] == []
    # Budgets are per client: team-a is not affected.
    assert chat(gw, "team-a")[0] == 200


def test_api_key_required(gw):
    assert chat(gw, None)[0] == 401
    assert chat(gw, "team-a", key="sk-not-a-key")[0] == 401


def test_listener_patches_reach_the_wasm_filter(gw):
    status, _, body = e2e.http("GET", gw.admin_url + "/config_dump?resource=dynamic_listeners")
    if status != 200 or b"llmgw" not in body:
        status, _, body = e2e.http("GET", gw.admin_url + "/config_dump")
    dump = json.loads(body)
    eep = eg_xds.one(DOCS, "EnvoyExtensionPolicy")
    name = eg_xds.wasm_filter_name(eep, 0)
    found = []

    def walk(n):
        if isinstance(n, dict):
            if n.get("name") == name and "typed_config" in n:
                found.append(n["typed_config"]["config"])
            for v in n.values():
                walk(v)
        elif isinstance(n, list):
            for v in n:
                walk(v)

    walk(dump)
    assert found, f"no filter {name} in the config dump"
    assert found[0]["allow_on_headers_stop_iteration"] is True
    assert found[0]["failure_policy"] == "FAIL_RELOAD"
    # The upstream key is in Envoy's environment (the EnvoyProxy's env), not in its admin output.
    assert UPSTREAM_KEY.encode() not in body and b"OPENAI_API_KEY" in body


def test_without_the_route_patch_nothing_is_charged(providers, rls):
    """The control: Envoy Gateway's translation alone points the charge at dynamic metadata, which
    the Wasm filter cannot write, so the stream-done entry is dropped and tokens are never counted."""
    env = gateway(providers, rls, "eg-ratelimit-unpatched", patch_types=frozenset({eg_xds.LISTENER_TYPE}))
    try:
        since = len(rls.calls())
        status, _, body = chat(env, "team-a")
        assert status == 200, body
        time.sleep(0.5)  # a charge would come after the response: give it time to show up
        calls = rls.calls()[since:]
        assert [d.hits_addend for c in calls for d in c.descriptors] == [0], "only the check, no charge"
        assert "Invalid hits_addend" in env.log_tail(200)
    finally:
        env.stop()


def test_real_rate_limit_service_with_redis(providers, tmp_path):
    """The same gateway against the real `llmgw ratelimit` (limitador counting in Redis) instead of
    the mock: the stream-done call charges the response's tokens through hits_addend, the check
    before the next request is refused once the budget is spent (429 with Retry-After, nothing
    sent upstream), and with Redis gone `--failure-mode closed` refuses every request."""
    name, namespace = budget_key("team-a")[0]
    domain = f"{name}-{namespace}"  # Envoy Gateway's domain for a shared rule
    per_request, budget = 5 + 8, 20  # one request fits, the second passes its check, the third not
    limits = [{"namespace": domain, "name": "tokens-per-client", "max_value": budget, "seconds": 3600,
               "conditions": [f"descriptors[0]['{name}'] == '{namespace}'"],
               "variables": ["descriptors[0]['rule-0-match-0']"]}]
    (tmp_path / "limits.json").write_text(json.dumps(limits))
    try:
        redis = e2e.Redis()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    rls = env = None
    try:
        rls = e2e.RateLimitService(tmp_path / "limits.json", redis.url, failure_mode="closed")
        env = gateway(providers, rls, "eg-ratelimit-limitador")

        def check(client):  # what the service says now, at cost 0
            code, statuses, _ = should_rate_limit(rls.port, encode_request(domain, budget_key(client), 0))
            return code, statuses[0][1]

        def wait_for(client, want):  # charges are sent after the response: bounded wait
            deadline = time.monotonic() + 10
            while (got := check(client)) != want and time.monotonic() < deadline:
                time.sleep(0.05)
            return got

        assert check("team-a") == (OK, budget)
        assert chat(env, "team-a")[0] == 200
        assert wait_for("team-a", (OK, budget - per_request)) == (OK, budget - per_request)
        assert chat(env, "team-a")[0] == 200  # 13 spent <= 20 when checked
        assert wait_for("team-a", (OVER_LIMIT, 0)) == (OVER_LIMIT, 0)
        # The OVER_LIMIT answer asks Envoy to add Retry-After (seconds to the window's end) to its 429,
        # which the llmgw filter keeps when it puts the 429 in the client's shape.
        _, _, rls_headers = should_rate_limit(rls.port, encode_request(domain, budget_key("team-a"), 0))
        assert 3500 < int(rls_headers["retry-after"]) <= 3600, rls_headers
        upstream_before = len(providers["openai"].requests())
        status, headers, body = chat(env, "team-a")
        assert status == 429, body
        assert json.loads(body)["error"]["message"], body
        assert 3500 < int(headers["retry-after"]) <= 3600, headers
        assert len(providers["openai"].requests()) == upstream_before, "a rejected request must not reach the provider"
        assert chat(env, "team-b")[0] == 200  # budgets are per client

        redis.stop()
        assert chat(env, "team-b")[0] == 429  # --failure-mode closed
        assert len(providers["openai"].requests()) == upstream_before + 1
        assert "storage failing" in rls.log_tail()
    finally:
        for p in (env, rls, redis):
            if p is not None:
                p.stop()
