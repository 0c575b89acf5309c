"""Backend choice, weights, credentials, header mutations and model_override, seen from the mocks."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

import llmgw_e2e as e2e
from conftest import ALPHA_KEY, BETA_KEY, CLIENT_KEY

MSGS = [{"role": "user", "content": "route me"}]


def test_two_backends_chosen_by_model(client, mocks):
    ra = client.chat.completions.with_raw_response.create(model="alpha-one", messages=MSGS)
    rb = client.chat.completions.with_raw_response.create(model="beta-one", messages=MSGS)
    assert ra.headers["x-mock-name"] == "alpha" and ra.parse().system_fingerprint == "alpha"
    assert rb.headers["x-mock-name"] == "beta" and rb.parse().system_fingerprint == "beta"
    (qa,) = mocks["alpha"].requests()
    (qb,) = mocks["beta"].requests()
    assert json.loads(qa["body"])["model"] == "alpha-one" and qa["path"] == "/v1/chat/completions"
    assert json.loads(qb["body"])["model"] == "beta-one" and qb["path"] == "/beta/v1/chat/completions"
    # The routing header is removed by the route: it never reaches a provider.
    assert "x-llmgw-backend" not in qa["headers"] and "x-llmgw-backend" not in qb["headers"]
    assert "x-ai-eg-model" not in qa["headers"] and "x-ai-eg-model" not in qb["headers"]


def test_query_string_is_kept_with_prefix(gw, mocks):
    status, _, _ = e2e.http("POST", gw.url + "/v1/chat/completions?api-version=2024-10-21&x=1",
                            {"model": "beta-q", "messages": MSGS})
    assert status == 200
    assert mocks["beta"].requests()[-1]["path"] == "/beta/v1/chat/completions?api-version=2024-10-21&x=1"


@pytest.mark.parametrize("model,weights,n", [("weighted-1-1", (1, 1), 20), ("weighted-3-1", (3, 1), 20)])
def test_weights_split_exactly(client, mocks, model, weights, n):
    # concurrency 1: one Wasm VM, so one weight sequence per rule.
    for _ in range(n):
        client.chat.completions.create(model=model, messages=MSGS)
    got = (len(mocks["alpha"].requests()), len(mocks["beta"].requests()))
    total = sum(weights)
    assert got == (n * weights[0] // total, n * weights[1] // total)


def test_header_match_rule(client, mocks):
    client.chat.completions.create(model="team-model", messages=MSGS, extra_headers={"x-team": "research"})
    client.chat.completions.create(model="team-model", messages=MSGS, extra_headers={"x-team": "sales"})
    client.chat.completions.create(model="team-model", messages=MSGS)
    assert len(mocks["beta"].requests()) == 1
    assert len(mocks["alpha"].requests()) == 2


def test_credential_injection_never_leaks_client_key(client, mocks):
    client.chat.completions.create(model="alpha-cred", messages=MSGS,
                                   extra_headers={"api-key": CLIENT_KEY, "x-api-key": CLIENT_KEY})
    client.chat.completions.create(model="beta-cred", messages=MSGS)
    (qa,) = mocks["alpha"].requests()
    (qb,) = mocks["beta"].requests()
    assert qa["headers"]["authorization"] == f"Bearer {ALPHA_KEY}"
    assert qb["headers"]["authorization"] == f"Bearer {BETA_KEY}"
    for q in (qa, qb):
        assert CLIENT_KEY not in json.dumps(q), f"client key reached {q['mock']}: {q['headers']}"
        assert "api-key" not in q["headers"] and "x-api-key" not in q["headers"]


def test_backend_header_mutations(client, mocks):
    client.chat.completions.create(model="beta-headers", messages=MSGS,
                                   extra_headers={"x-debug": "1", "x-beta-org": "client-value", "x-keep": "yes"})
    (q,) = mocks["beta"].requests()
    assert q["headers"]["x-beta-org"] == "org-beta"
    assert "x-debug" not in q["headers"]
    assert q["headers"]["x-keep"] == "yes"


def test_model_override(client, mocks):
    r = client.chat.completions.with_raw_response.create(model="override-me", messages=MSGS)
    assert r.headers["x-mock-name"] == "alpha"
    (q,) = mocks["alpha"].requests()
    body = json.loads(q["body"])
    assert body["model"] == "upstream-real-model"
    assert body["messages"] == MSGS
    assert int(q["headers"]["content-length"]) == q["body_len"] == len(q["body"].encode())
    assert "x-llmgw-backend" not in q["headers"]


def test_model_override_streaming(client, mocks):
    chunks = list(client.chat.completions.create(model="override-me", messages=MSGS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("Hello from alpha")
    body = json.loads(mocks["alpha"].requests()[-1]["body"])
    assert body["model"] == "upstream-real-model" and body["stream_options"]["include_usage"] is True


def test_client_cannot_choose_backend_by_header(gw, mocks):
    """Client copies of the internal headers are removed before routing."""
    status, headers, _ = e2e.http("POST", gw.url + "/v1/chat/completions", {"model": "alpha-spoof", "messages": MSGS},
                                  {"x-llmgw-backend": "beta", "x-ai-eg-model": "beta-spoof"})
    assert status == 200 and headers["x-mock-name"] == "alpha"
    (q,) = mocks["alpha"].requests()
    assert "x-llmgw-backend" not in q["headers"] and "x-ai-eg-model" not in q["headers"]
    assert mocks["beta"].requests() == []


def test_internal_headers_removed_outside_v1(gw, mocks):
    """A path outside /v1/ is not routed by the filter; a spoofed x-llmgw-backend must not route it."""
    status, _, body = e2e.http("GET", gw.url + "/other/path", None, {"x-llmgw-backend": "alpha"})
    assert status == 404
    assert json.loads(body)["error"]["code"] == "no_route"
    assert mocks["alpha"].requests() == []


def test_concurrent_streams_are_independent(gw, mocks):
    """16 interleaved streams (20 ms between chunks) each get their own content and usage."""
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=60)

    def one(i: int):
        words = " ".join(["w"] * (i + 1))
        chunks = list(c.chat.completions.create(
            model="alpha-concurrent" if i % 2 else "beta-concurrent",
            messages=[{"role": "user", "content": words}],
            stream=True, stream_options={"include_usage": True},
            extra_headers={"x-mock-chunk-gap-ms": "20", "x-mock-chunks": str(3 + i % 4)},
        ))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        return i, text, chunks[-1].usage

    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(one, range(16)))
    finally:
        c.close()
    for i, text, usage in results:
        n = 3 + i % 4
        assert len(text.split()) == n
        assert text.startswith("Hello from " + ("alpha" if i % 2 else "beta"))
        assert (usage.prompt_tokens, usage.completion_tokens) == (i + 1, n)
    assert len(mocks["alpha"].requests()) == 8 and len(mocks["beta"].requests()) == 8
