"""Budgets (issue 13), enforced by the filter before anything goes upstream and exact across Envoy's
workers (proxy-wasm shared data, compare-and-swap). The consumer header is set by the test here: its
authentication (and the stripping of client copies) is test_consumers.py's. One Envoy with two
workers for the module."""

from __future__ import annotations

import asyncio
import time

import anthropic
import openai
import pytest

import llmgw_e2e as e2e

CONSUMER = "x-llmgw-consumer"
MAX_TOKENS = 100
PLUGIN = {
    "backends": [{"name": "mock", "schema": "OpenAI"}],
    "consumer_header": CONSUMER,
    "budgets": [
        # Output tokens: each request reserves its max_tokens (100): exactly 10 fit at once.
        {"name": "team-a-output", "consumer": "team-a", "tokens": 10 * MAX_TOKENS, "per": "day", "count": "output"},
        {"name": "team-b-requests", "consumer": "team-b", "requests": 1, "per": "day"},
        {"name": "everyone-requests", "consumer": "*", "requests": 1000, "per": "day"},
    ],
}


@pytest.fixture(scope="module")
def budget_gw():
    with e2e.gateway_with_mock("budgets", PLUGIN, concurrency=2) as gw:
        yield gw


def chat_requests(mock: e2e.Mock) -> int:
    return sum(1 for r in mock.requests() if r.get("path", "").endswith("/chat/completions"))


def test_concurrent_streams_cannot_pass_a_budget_and_settle_to_their_usage(budget_gw):
    env, mock = budget_gw
    mock.clear()
    # Each stream stays open ~1 s (5 chunks, 200 ms apart): all 100 are sent while the first 10 last.
    headers = {CONSUMER: "team-a", "x-mock-chunks": "5", "x-mock-chunk-gap-ms": "200"}

    async def one(client: openai.AsyncOpenAI, sem: asyncio.Semaphore):
        async with sem:
            try:
                stream = await client.chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=MAX_TOKENS,
                    stream=True, extra_headers=headers)
                text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
                return ("ok", text)
            except openai.RateLimitError as e:
                return ("429", e)

    async def run():
        client = openai.AsyncOpenAI(base_url=env.url + "/v1", api_key="k", max_retries=0, timeout=30)
        try:
            sem = asyncio.Semaphore(100)
            return await asyncio.gather(*(one(client, sem) for _ in range(100)))
        finally:
            await client.close()

    results = asyncio.run(run())
    served = [r for r in results if r[0] == "ok"]
    refused = [e for kind, e in results if kind == "429"]
    # Reservation makes the bound exact: the mock saw exactly the 10 that fit.
    assert len(served) == 10 and len(refused) == 90, (len(served), len(refused))
    assert all(text.startswith("Hello") for _, text in served)
    assert chat_requests(mock) == 10
    e = refused[0]
    assert e.response.headers["x-llmgw-budget"] == "team-a-output"
    retry_after = int(e.response.headers["retry-after"])
    assert 0 < retry_after <= 86_400
    body = e.response.json()
    assert body["error"]["code"] == "rate_limit_exceeded" and body["error"]["type"] == "rate_limit_error", body

    # Settled: the 10 streams used 5 output tokens each (50 of 1000), so a request of 100 fits again.
    client = openai.OpenAI(base_url=env.url + "/v1", api_key="k", max_retries=0, timeout=30)
    deadline = time.monotonic() + 5
    while True:
        try:
            r = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=MAX_TOKENS, extra_headers=headers)
            break
        except openai.RateLimitError:
            # on_log may trail the last byte by a moment; bounded.
            assert time.monotonic() < deadline, "the streams' reservations were never settled"
            time.sleep(0.1)
    assert r.usage.completion_tokens == 5
    client.close()
    log = env.wait_access_log(lambda x: x.get("consumer") == "team-a")
    assert log, "the access log names the consumer"
    refusals = e2e.prom_value(e2e.parse_prometheus(env.stats()), "llmgw_budget_refusals_total",
                              llmgw_budget="team-a-output")
    assert refusals == 90


def test_an_anthropic_client_over_budget_gets_an_anthropic_429(budget_gw):
    env, mock = budget_gw
    client = anthropic.Anthropic(base_url=env.url, api_key="k", max_retries=0, timeout=30,
                                 default_headers={CONSUMER: "team-b"})
    msg = client.messages.create(model="claude-x", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text.startswith("Hello")
    mock.clear()
    with pytest.raises(anthropic.RateLimitError) as e:
        client.messages.create(model="claude-x", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    assert e.value.response.headers["x-llmgw-budget"] == "team-b-requests"
    assert int(e.value.response.headers["retry-after"]) > 0
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "rate_limit_error"
    assert mock.requests() == [], "nothing reached the provider"
    client.close()
