"""Budgets shared by many gateways (issue 13): two `llmgw run` with the same `budgets:` and one
`budget_store: {redis}` each start their own `llmgw ratelimit` (limitador counting in Debian's
redis-server) and enforce one budget together. One gateway says `failure_mode: closed`, the other
`open`; with Redis killed, the first refuses and the second lets requests through."""

from __future__ import annotations

import json
import re
import time

import anthropic
import openai
import pytest
import yaml

import llmgw_e2e as e2e
from mock_rls import OK, OVER_LIMIT, encode_request, should_rate_limit

KEY_A = "sk-store-team-a-51c0"
KEY_B = "sk-store-team-b-7e22"
PROMPT = "count these five words please"  # the mock answers 5 prompt + 8 completion tokens
PER_REQUEST, BUDGET = 5 + 8, 20  # one request fits; the second passes its check; the third not
BUDGET_NAME = "team-a-tokens"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    try:
        redis = e2e.Redis()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    d = tmp_path_factory.mktemp("budget-store")
    mock = e2e.Mock("budget-store")
    gateways = {}
    try:
        for mode in ("closed", "open"):
            cfg = {
                "backends": [{"name": "mock", "url": mock.url + "/v1", "schema": "OpenAI"}],
                "consumers": [{"name": "team-a", "api_keys_env": "STORE_TEAM_A_KEYS"},
                              {"name": "team-b", "api_keys_env": "STORE_TEAM_B_KEYS"}],
                "budgets": [{"name": BUDGET_NAME, "consumer": "team-a", "tokens": BUDGET, "per": "hour"},
                            {"consumer": "*", "requests": 1000, "per": "hour"}],  # every consumer in Redis
                "budget_store": {"redis": redis.url, "failure_mode": mode},
            }
            path = d / f"llmgw-{mode}.yaml"
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            gateways[mode] = e2e.LlmgwRun(path, {"STORE_TEAM_A_KEYS": KEY_A, "STORE_TEAM_B_KEYS": KEY_B},
                                          name=f"budget-store-{mode}")
        yield {"redis": redis, "mock": mock, **gateways}
    finally:
        for g in gateways.values():
            g.stop()
        mock.stop()
        redis.stop()


def rls_port(gw: e2e.LlmgwRun) -> int:
    """The port of the `llmgw ratelimit` this gateway started (it says so when it starts)."""
    m = re.search(r"counted in Redis by `llmgw ratelimit` on 127\.0\.0\.1:(\d+)", gw.log_path.read_text())
    assert m, gw.log_tail()
    return int(m.group(1))


def remaining(gw: e2e.LlmgwRun, consumer: str = "team-a") -> tuple[int, int]:
    """(code, tokens remaining) of the budget, asked at cost 0 of the gateway's own service."""
    request = encode_request("llmgw", (("budget", BUDGET_NAME), ("consumer", consumer)), 0)
    code, statuses, _ = should_rate_limit(rls_port(gw), request)
    return code, statuses[0][1]


def wait_remaining(gw: e2e.LlmgwRun, want: tuple[int, int]) -> tuple[int, int]:
    """Charges are sent when the stream is done, after the client got its answer: bounded wait."""
    deadline = time.monotonic() + 10
    while (got := remaining(gw)) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


def chat(gw: e2e.LlmgwRun, key: str):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}
    return e2e.http("POST", gw.url + "/v1/chat/completions", body, {"authorization": f"Bearer {key}"})


def test_two_gateways_enforce_one_budget_and_redis_failure_follows_each_failure_mode(store):
    closed, opened, mock = store["closed"], store["open"], store["mock"]
    assert remaining(opened) == (OK, BUDGET)

    # Spent through one gateway, seen by the other's service: the count is in the shared Redis.
    client = openai.OpenAI(base_url=closed.url + "/v1", api_key=KEY_A, max_retries=0, timeout=30)
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
    assert reply.usage.total_tokens == PER_REQUEST
    assert wait_remaining(opened, (OK, BUDGET - PER_REQUEST)) == (OK, BUDGET - PER_REQUEST)

    status, headers, body = chat(opened, KEY_A)  # 13 spent <= 20 when checked
    assert status == 200, body
    assert int(headers["x-ratelimit-remaining"]) == BUDGET - PER_REQUEST, headers
    assert wait_remaining(closed, (OVER_LIMIT, 0)) == (OVER_LIMIT, 0)

    # Spent: refused by either gateway before the provider, in the client's API shape, with the
    # rate limit service's hints (Retry-After: seconds to the window's end).
    upstream = len(mock.requests())
    for gw in (closed, opened):
        status, headers, body = chat(gw, KEY_A)
        assert status == 429, body
        error = json.loads(body)["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded", error
        assert 0 < int(headers["retry-after"]) <= 3600, headers
        assert headers["x-ratelimit-remaining"] == "0" and "x-ratelimit-limit" in headers, headers
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
    assert int(refused.value.response.headers["retry-after"]) > 0
    # An Anthropic SDK client over the same budget gets Anthropic's shape.
    claude = anthropic.Anthropic(base_url=opened.url, api_key=KEY_A, max_retries=0, timeout=30)
    with pytest.raises(anthropic.RateLimitError) as refused:
        claude.messages.create(model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": PROMPT}])
    assert refused.value.body["type"] == "error" and refused.value.body["error"]["type"] == "rate_limit_error"
    assert len(mock.requests()) == upstream, "a request over budget must not reach the provider"
    assert chat(closed, KEY_B)[0] == 200  # budgets are per consumer

    # Redis gone: `failure_mode: closed` refuses every request, `open` lets them through.
    store["redis"].stop()
    upstream = len(mock.requests())
    assert chat(closed, KEY_B)[0] == 429
    assert chat(opened, KEY_B)[0] == 200
    assert len(mock.requests()) == upstream + 1
    assert "storage failing" in closed.log_tail(200) and "storage failing" in opened.log_tail(200)
