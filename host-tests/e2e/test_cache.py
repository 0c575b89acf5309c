"""Response cache, exact mode (issue 16), on real Envoy with the official SDKs: a repeated request is
answered by the gateway (`x-llmgw-cache: hit`, the mock sees no new request), as JSON or as a replayed
stream each SDK parses, with usage reported as cached. TTL, eviction, `Cache-Control` and consumer
isolation too. The consumer header is set by the test (its authentication is test_consumers.py's).
One Envoy with two workers for the module: entries live in shared data, every worker sees them.
Semantic mode too: all-MiniLM-L6-v2 behind embeddings_server.py (a real model, on CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anthropic
import openai
import pytest

import llmgw_e2e as e2e

CONSUMER = "x-llmgw-consumer"
# all-MiniLM-L6-v2 puts "What is the capital of France?" at 0.91 of "Tell me France's capital city"
# and 0.66 of "What is the capital of Germany?" (cosine).
SIMILARITY = 0.85
PLUGIN = {
    "backends": [{"name": "mock", "schema": "OpenAI"}, {"name": "embedder", "schema": "OpenAI"},
                 {"name": "embedder-down", "schema": "OpenAI"}],
    "consumer_header": CONSUMER,
    "rules": [
        {"name": "semantic", "match": {"model": {"exact": "semantic-model"}}, "backends": [{"name": "mock"}],
         "cache": {"mode": "semantic", "similarity": SIMILARITY,
                   "embeddings": {"backend": "embedder", "model": "all-MiniLM-L6-v2", "timeout": "5s"}}},
        {"name": "semantic-down", "match": {"model": {"exact": "semantic-down-model"}}, "backends": [{"name": "mock"}],
         "cache": {"mode": "semantic", "embeddings": {"backend": "embedder-down", "model": "all-MiniLM-L6-v2"}}},
        {"name": "tiny", "match": {"model": {"exact": "tiny-model"}}, "backends": [{"name": "mock"}],
         "cache": {"mode": "exact", "max_bytes": "1Ki"}},
        {"name": "short", "match": {"model": {"exact": "short-model"}}, "backends": [{"name": "mock"}],
         "cache": {"mode": "exact", "ttl": "1s"}},
        {"name": "main", "backends": [{"name": "mock"}], "cache": {"mode": "exact", "ttl": "10m", "max_bytes": "4Mi"}},
    ],
}


class Embedder:
    """embeddings_server.py on a free port; it stops itself when its stdin (this pipe) closes."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("embeddings_server.py"))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            self.port = int(e2e._read_line(self.proc, 60.0).split()[1])
        except BaseException:
            self.stop()
            raise

    def calls(self) -> int:
        return json.loads(e2e.http("GET", f"http://127.0.0.1:{self.port}/stats")[2])["requests"]

    def stop(self):
        if self.proc.stdin:
            self.proc.stdin.close()
        e2e._stop(self.proc)


@pytest.fixture(scope="module")
def cache_gw():
    embedder, mock, env = Embedder(), None, None
    try:
        mock = e2e.Mock("cache")
        # `embedder-down`: a port nothing listens on.
        clusters = {"mock": mock.port, "embedder": embedder.port, "embedder-down": e2e.free_port()}
        env = e2e.Envoy(e2e.render(clusters, PLUGIN), name="cache", concurrency=2)
        env.embedder = embedder
        yield env, mock
    finally:
        for process in (env, mock, embedder):
            if process is not None:
                process.stop()


def upstream_calls(mock: e2e.Mock) -> int:
    return sum(1 for r in mock.requests() if r.get("path", "").endswith(("/chat/completions", "/embeddings")))


def oai(env, consumer: str = "team-a") -> openai.OpenAI:
    return openai.OpenAI(base_url=env.url + "/v1", api_key="k", max_retries=0, timeout=30,
                         default_headers={CONSUMER: consumer})


def prompt() -> list[dict]:
    """A prompt no other test sends (the cache outlives each test)."""
    return [{"role": "user", "content": f"say hi {uuid.uuid4().hex}"}]


def chat(client: openai.OpenAI, messages, model: str = "gpt-4o", **kw):
    raw = client.chat.completions.with_raw_response.create(model=model, messages=messages, temperature=0, **kw)
    return raw.headers.get("x-llmgw-cache"), raw.parse()


def test_a_repeated_request_is_answered_by_the_gateway_with_usage_marked_cached(cache_gw):
    env, mock = cache_gw
    client = oai(env)
    messages = prompt()
    mock.clear()
    state, first = chat(client, messages)
    assert state == "miss" and upstream_calls(mock) == 1
    # `user` and `metadata` do not change the answer: not in the key.
    state, second = chat(client, messages, user="someone-else")
    assert state == "hit" and upstream_calls(mock) == 1, "the provider is not called again"
    assert second.id == first.id and second.choices[0].message.content == first.choices[0].message.content
    assert second.usage.prompt_tokens == first.usage.prompt_tokens
    assert second.usage.prompt_tokens_details.cached_tokens == first.usage.prompt_tokens
    assert first.usage.prompt_tokens_details.cached_tokens < first.usage.prompt_tokens
    # Another prompt, or a sampled request, goes to the provider.
    assert chat(client, prompt())[0] == "miss"
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages, temperature=0.7)
    assert raw.headers.get("x-llmgw-cache") is None and upstream_calls(mock) == 3
    # Embeddings never sample: cached too.
    for expected in ("miss", "hit"):
        raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=messages[0]["content"])
        assert raw.headers.get("x-llmgw-cache") == expected and raw.parse().data[0].embedding
    assert upstream_calls(mock) == 4
    client.close()


def test_cache_control_and_consumer_isolation(cache_gw):
    env, mock = cache_gw
    a, b = oai(env, "team-a"), oai(env, "team-b")
    messages = prompt()
    mock.clear()
    assert chat(a, messages)[0] == "miss"
    # Another consumer never gets team-a's answer: it has its own entry.
    assert chat(b, messages)[0] == "miss"
    assert chat(b, messages)[0] == "hit" and chat(a, messages)[0] == "hit"
    assert upstream_calls(mock) == 2
    # no-cache: not read (the provider answers), but the answer is stored; no-store: neither.
    fresh = prompt()
    assert chat(a, fresh, extra_headers={"Cache-Control": "no-cache"})[0] == "miss"
    assert chat(a, fresh)[0] == "hit"
    assert chat(a, messages, extra_headers={"Cache-Control": "no-cache"})[0] == "miss"
    unstored = prompt()
    assert chat(a, unstored, extra_headers={"Cache-Control": "no-store"})[0] is None
    assert chat(a, unstored)[0] == "miss"
    assert upstream_calls(mock) == 6
    a.close()
    b.close()


def test_a_stream_is_replayed_as_a_stream_the_sdk_reads(cache_gw):
    env, mock = cache_gw
    client = oai(env)
    messages = prompt()
    mock.clear()
    results = []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=messages, temperature=0, stream=True, stream_options={"include_usage": True})
        chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = next(c.usage for c in chunks if c.usage)
        results.append((raw.headers.get("x-llmgw-cache"), raw.headers.get("content-type"), text, usage))
    (s1, _, text1, usage1), (s2, ct2, text2, usage2) = results
    assert (s1, s2) == ("miss", "hit") and upstream_calls(mock) == 1
    assert ct2.startswith("text/event-stream") and text2 == text1 and text1.startswith("Hello")
    assert usage2.prompt_tokens_details.cached_tokens == usage1.prompt_tokens
    # A non-streamed request is its own entry (the stored answer is the bytes the client got).
    assert chat(client, messages)[0] == "miss"
    client.close()


def all_input(usage) -> int:
    """Every input token of an Anthropic usage: a hit reports them all as read from the cache."""
    return usage.input_tokens + (usage.cache_read_input_tokens or 0) + (usage.cache_creation_input_tokens or 0)


def test_anthropic_clients_get_cached_messages_and_streams(cache_gw):
    env, mock = cache_gw
    client = anthropic.Anthropic(base_url=env.url, api_key="k", max_retries=0, timeout=30,
                                 default_headers={CONSUMER: "team-a"})
    messages = prompt()
    mock.clear()
    answers = []
    for _ in range(2):
        raw = client.messages.with_raw_response.create(model="claude-x", max_tokens=50, extra_body={"temperature": 0},
                                                        messages=messages)
        answers.append((raw.headers.get("x-llmgw-cache"), raw.parse()))
    (s1, m1), (s2, m2) = answers
    assert (s1, s2) == ("miss", "hit") and upstream_calls(mock) == 1
    assert m2.content[0].text == m1.content[0].text
    assert m2.usage.input_tokens == 0 and m2.usage.cache_read_input_tokens == all_input(m1.usage) > 0
    streamed = []
    for _ in range(2):
        with client.messages.stream(model="claude-x", max_tokens=50, extra_body={"temperature": 0}, messages=messages) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
            streamed.append((s.response.headers.get("x-llmgw-cache"), text, final))
    (s1, t1, f1), (s2, t2, f2) = streamed
    assert (s1, s2) == ("miss", "hit") and upstream_calls(mock) == 2
    assert t2 == t1 == m1.content[0].text and f2.stop_reason == f1.stop_reason
    assert f2.usage.input_tokens == 0 and f2.usage.cache_read_input_tokens == all_input(f1.usage) > 0
    client.close()


def test_entries_expire_after_their_ttl(cache_gw):
    env, mock = cache_gw
    client = oai(env)
    messages = prompt()
    assert chat(client, messages, model="short-model")[0] == "miss"
    assert chat(client, messages, model="short-model")[0] == "hit"
    time.sleep(1.05)
    assert chat(client, messages, model="short-model")[0] == "miss"
    client.close()


def test_the_least_recently_used_entry_is_evicted_past_max_bytes(cache_gw):
    env, mock = cache_gw
    client = oai(env)
    small = {"x-mock-chunks": "2"}
    first, second, third = prompt(), prompt(), prompt()
    for messages in (first, second, third):
        assert chat(client, messages, model="tiny-model", extra_headers=small)[0] == "miss"
    # 1 KiB holds at most two of these answers: the oldest went.
    assert chat(client, third, model="tiny-model", extra_headers=small)[0] == "hit"
    assert chat(client, first, model="tiny-model", extra_headers=small)[0] == "miss"
    samples = e2e.parse_prometheus(env.stats())
    assert (e2e.prom_value(samples, "llmgw_cache_evictions_total") or 0) >= 1
    assert (e2e.prom_value(samples, "llmgw_cache_hits_total") or 0) >= 1
    assert (e2e.prom_value(samples, "llmgw_cache_misses_total") or 0) >= 1
    assert (e2e.prom_value(samples, "llmgw_cache_bytes") or 0) > 0
    client.close()


def test_semantic_mode_serves_a_paraphrase_but_not_another_question(cache_gw):
    env, mock = cache_gw
    # A consumer of its own: nothing cached by an earlier run of this test is in its partition.
    client = oai(env, consumer=f"semantic-{uuid.uuid4().hex}")
    ask = lambda text, **kw: chat(client, [{"role": "user", "content": text}], model="semantic-model", **kw)
    mock.clear()
    before = env.embedder.calls()
    state, first = ask("What is the capital of France?")
    assert state == "miss" and upstream_calls(mock) == 1
    state, second = ask("Tell me France's capital city")
    assert state == "hit" and upstream_calls(mock) == 1, "a paraphrase is answered from the cache"
    assert second.id == first.id and second.usage.prompt_tokens_details.cached_tokens == first.usage.prompt_tokens
    # Near in words, not in meaning; and unrelated: both go to the provider.
    assert ask("What is the capital of Germany?")[0] == "miss"
    assert ask("How do I bake sourdough bread?")[0] == "miss"
    assert upstream_calls(mock) == 3
    assert env.embedder.calls() - before == 4
    # The exact same prompt is an exact hit: no embedding call.
    assert ask("What is the capital of France?")[0] == "hit" and env.embedder.calls() - before == 4
    # Another consumer has its own partition.
    other = oai(env, consumer=f"semantic-{uuid.uuid4().hex}")
    raw = other.chat.completions.with_raw_response.create(
        model="semantic-model", temperature=0, messages=[{"role": "user", "content": "Tell me France's capital city"}])
    assert raw.headers.get("x-llmgw-cache") == "miss"
    # A hit is a request in the gen_ai metrics, its tokens counted as cached (histograms show once
    # Envoy flushed them: every second here).
    deadline, cached = time.monotonic() + 3, 0.0
    while cached < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        cached = sum(v for name, labels, v in e2e.parse_prometheus(env.stats())
                     if name == "gen_ai_client_token_usage_count" and labels.get("gen_ai_token_type") == "cached")
    assert cached >= 2
    client.close()
    other.close()


def test_semantic_mode_serves_requests_when_the_embeddings_backend_is_down(cache_gw):
    env, mock = cache_gw
    client = oai(env)
    messages = prompt()
    mock.clear()
    for _ in range(2):
        state, answer = chat(client, messages, model="semantic-down-model")
        assert state == "miss" and answer.choices[0].message.content, "served, not cached"
    assert upstream_calls(mock) == 2
    samples = e2e.parse_prometheus(env.stats())
    assert (e2e.prom_value(samples, "llmgw_cache_embedding_failures_total") or 0) >= 2
    client.close()
