"""Anthropic on both sides, on real Envoy with the filter:

- the official `openai` SDK against Anthropic backends (`Anthropic` and Vertex's `GCPAnthropic`): the
  filter translates chat completions, and the Responses API (`client.responses.create`), to the
  Messages API and the answers (streams included) back;
- the official `anthropic` SDK on `/v1/messages`: natively to Anthropic backends, and translated to an
  OpenAI-compatible backend;
- the same SDK with `base_url=<gateway>/anthropic` (as Envoy AI Gateway serves Claude-Code-style
  clients): messages, `count_tokens` and the model list in Anthropic's shape.

mock-provider answers in each wire format (mocks/src/bin/mock_provider/anthropic.rs) and records
the exact request it received, which each test checks."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

import llmgw_e2e as e2e

CLIENT_KEY = "sk-client-gateway-key-must-not-leak"
ANTHROPIC_KEY = "sk-ant-upstream-key"
OPENAI_KEY = "sk-openai-upstream-key"
VERTEX_TOKEN = "ya29.vertex-token"
OWN_KEY = "sk-own-per-request-key-must-not-leak"  # a request's own key (`credential_override`)
REPLY_ANTHROPIC = "Hello from anthropic: this is a mock reply."
REPLY_OPENAI = "Hello from openai: this is a mock reply."

PLUGIN = {
    "backends": [
        {"name": "anthropic", "schema": "Anthropic", "auth": {"x_api_key": ANTHROPIC_KEY}},
        {
            "name": "vertex-claude",
            "schema": "GCPAnthropic",
            "project": "proj-1",
            "region": "us-east5",
            "auth": {"bearer": VERTEX_TOKEN},
        },
        {"name": "openai", "schema": "OpenAI", "auth": {"bearer": OPENAI_KEY}},
        # No `auth`: every request must bring its own key.
        {"name": "anthropic-own-key", "schema": "Anthropic", "credential_override": {"header": "x-upstream-key"}},
        {"name": "openai-own-key", "schema": "OpenAI", "credential_override": {"header": "x-upstream-key"}},
    ],
    "rules": [
        # Prefixes, not exact names: those would join the model list.
        {"match": {"model": {"prefix": "claude-own-key"}}, "backends": [{"name": "anthropic-own-key"}]},
        {"match": {"model": {"prefix": "gpt-own-key"}}, "backends": [{"name": "openai-own-key"}]},
        {"match": {"model": {"glob": "claude-*@*"}}, "backends": [{"name": "vertex-claude"}]},
        {"match": {"model": {"prefix": "claude-"}}, "backends": [{"name": "anthropic"}]},
        {"match": {"model": {"prefix": "mock-error-"}}, "backends": [{"name": "anthropic"}]},
        {"backends": [{"name": "openai"}]},
    ],
    "models": [
        {"id": "claude-sonnet-mock", "owned_by": "anthropic", "created": 1740000000,
         "display_name": "Claude Sonnet (mock)"},
        "gpt-4o-mini",
    ],
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    },
}


@pytest.fixture(scope="module")
def providers():
    started = {}
    try:
        for name in ("anthropic", "openai"):
            started[name] = e2e.Mock(name)
        yield started
    finally:
        for m in started.values():
            m.stop()


@pytest.fixture(scope="module")
def agw(providers):
    ports = {"anthropic": providers["anthropic"].port, "vertex-claude": providers["anthropic"].port,
             "openai": providers["openai"].port, "anthropic-own-key": providers["anthropic"].port,
             "openai-own-key": providers["openai"].port}
    env = e2e.Envoy(e2e.render(ports, PLUGIN), name="gw-anthropic")
    try:
        yield env
    finally:
        env.stop()


@pytest.fixture
def oai(agw, providers):
    for m in providers.values():
        m.clear()
    c = openai.OpenAI(base_url=agw.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=30)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def ant(agw, providers):
    for m in providers.values():
        m.clear()
    c = anthropic.Anthropic(base_url=agw.url, api_key=CLIENT_KEY, max_retries=0, timeout=30)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def ant_prefixed(agw, providers):
    """The Anthropic SDK as Claude-Code-style clients configure it: under the gateway's /anthropic."""
    for m in providers.values():
        m.clear()
    c = anthropic.Anthropic(base_url=agw.url + "/anthropic", api_key=CLIENT_KEY, max_retries=0, timeout=30)
    try:
        yield c
    finally:
        c.close()


def only_request(mock) -> tuple[dict, dict]:
    reqs = mock.requests()
    assert len(reqs) == 1, reqs
    rec = reqs[0]
    assert CLIENT_KEY not in json.dumps(rec["headers"]), "the client's key must not reach the provider"
    return rec, json.loads(rec["body"])


# ---- OpenAI SDK -> Anthropic ----------------------------------------------------------------


def test_openai_chat_to_anthropic(oai, providers):
    r = oai.chat.completions.create(
        model="claude-sonnet-mock",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "say hello to me"}],
        temperature=0.3,
        stop=["END"],
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.content == REPLY_ANTHROPIC
    assert r.choices[0].finish_reason == "stop"
    assert r.model == "claude-sonnet-mock"
    assert r.id.startswith("msg-mock-")
    # The mock counts 6 input words (2 system + 4 user): a quarter reported as cache reads.
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (6, 8, 14)
    assert r.usage.prompt_tokens_details.cached_tokens == 1
    rec, body = only_request(providers["anthropic"])
    assert rec["path"] == "/v1/messages"
    assert rec["headers"]["x-api-key"] == ANTHROPIC_KEY
    assert rec["headers"]["anthropic-version"] == "2023-06-01"
    assert "authorization" not in rec["headers"]
    assert body == {
        "model": "claude-sonnet-mock",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "say hello to me"}],
        "system": [{"type": "text", "text": "be brief"}],
        "stop_sequences": ["END"],
        "temperature": 0.3,
    }


def test_openai_stream_to_anthropic_with_usage(oai, providers):
    stream = oai.chat.completions.create(
        model="claude-haiku-mock",
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=100,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY_ANTHROPIC
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (2, 8)
    _, body = only_request(providers["anthropic"])
    assert body["stream"] is True and body["max_tokens"] == 100


def test_openai_responses_to_anthropic_plain_and_streaming(oai, providers):
    """`client.responses.create` with a claude model: translated to Messages, the answer a Responses
    object (or event stream) the SDK parses; nothing stored."""
    r = oai.responses.create(
        model="claude-sonnet-mock", instructions="be brief", input="say hello to me", max_output_tokens=64
    )
    assert r.object == "response" and r.status == "completed" and r.output_text == REPLY_ANTHROPIC
    assert r.model == "claude-sonnet-mock" and r.store is False
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (6, 8, 14)
    rec, body = only_request(providers["anthropic"])
    assert rec["path"] == "/v1/messages" and rec["headers"]["x-api-key"] == ANTHROPIC_KEY
    assert "authorization" not in rec["headers"]
    assert body["model"] == "claude-sonnet-mock" and body["max_tokens"] == 64
    assert body["system"] == [{"type": "text", "text": "be brief"}]
    assert body["messages"] == [{"role": "user", "content": "say hello to me"}] or body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "say hello to me"}]}
    ]

    providers["anthropic"].clear()
    events = list(oai.responses.create(model="claude-haiku-mock", input="stream please", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == REPLY_ANTHROPIC
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1].response
    assert done.output_text == REPLY_ANTHROPIC and (done.usage.input_tokens, done.usage.output_tokens) == (2, 8)
    _, body = only_request(providers["anthropic"])
    assert body["stream"] is True

    # What needs OpenAI's stored state is refused in OpenAI's shape before any provider sees it.
    providers["anthropic"].clear()
    with pytest.raises(openai.BadRequestError) as e:
        oai.responses.create(model="claude-sonnet-mock", input="again", previous_response_id="resp_1")
    assert "previous_response_id" in e.value.message
    assert providers["anthropic"].requests() == []


def test_openai_tool_calls_to_anthropic(oai, providers):
    r = oai.chat.completions.create(
        model="claude-sonnet-mock",
        messages=[{"role": "user", "content": "weather in Paris"}],
        tools=[WEATHER_TOOL],
        tool_choice="required",
    )
    call = r.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("toolu_mock_1", "get_weather", {"q": "mock"})
    assert r.choices[0].finish_reason == "tool_calls"
    _, body = only_request(providers["anthropic"])
    assert body["tools"] == [{"name": "get_weather", "description": "Current weather",
                              "input_schema": WEATHER_TOOL["function"]["parameters"]}]
    assert body["tool_choice"] == {"type": "any"}

    # The tool result goes back as a tool_result block; ids are kept.
    providers["anthropic"].clear()
    r2 = oai.chat.completions.create(
        model="claude-sonnet-mock",
        messages=[
            {"role": "user", "content": "weather in Paris"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
        tools=[WEATHER_TOOL],
    )
    assert r2.choices[0].message.content == REPLY_ANTHROPIC
    _, body = only_request(providers["anthropic"])
    assert body["messages"][1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_mock_1", "name": "get_weather", "input": {"q": "mock"}}]}
    assert body["messages"][2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_mock_1", "content": "sunny"}]}


def test_openai_streamed_tool_call_to_anthropic(oai, providers):
    stream = oai.chat.completions.create(
        model="claude-sonnet-mock",
        messages=[{"role": "user", "content": "please use the tool"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    calls: dict[int, dict] = {}
    finish = None
    for c in stream:
        if not c.choices:
            continue
        for tc in c.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
            entry["id"] = tc.id or entry["id"]
            entry["name"] = (tc.function.name if tc.function else None) or entry["name"]
            entry["arguments"] += (tc.function.arguments or "") if tc.function else ""
        finish = c.choices[0].finish_reason or finish
    assert calls == {0: {"id": "toolu_mock_1", "name": "get_weather", "arguments": '{"q": "mock"}'}}
    assert finish == "tool_calls"


def test_openai_to_vertex_claude(oai, providers):
    r = oai.chat.completions.create(model="claude-opus-4@20250514", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == REPLY_ANTHROPIC
    rec, body = only_request(providers["anthropic"])
    assert rec["path"] == "/v1/projects/proj-1/locations/us-east5/publishers/anthropic/models/claude-opus-4%4020250514:rawPredict"
    assert rec["headers"]["authorization"] == f"Bearer {VERTEX_TOKEN}"
    assert rec["headers"].get("host", rec["headers"].get(":authority")) == "us-east5-aiplatform.googleapis.com"
    assert body["anthropic_version"] == "vertex-2023-10-16" and "model" not in body


def test_openai_sdk_sees_anthropic_errors(oai):
    with pytest.raises(openai.RateLimitError) as e:
        oai.chat.completions.create(model="mock-error-429", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 429
    assert "mock error 429 for model mock-error-429" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="claude-x", messages=[{"role": "user", "content": "x"}], n=2)
    assert "n" in str(e.value)


# ---- Anthropic SDK on /v1/messages -----------------------------------------------------------


def test_anthropic_sdk_native(ant, providers):
    m = ant.messages.create(
        model="claude-sonnet-mock", max_tokens=64, system="be brief",
        messages=[{"role": "user", "content": "hello there"}],
    )
    assert m.type == "message" and m.role == "assistant"
    assert m.content[0].text == REPLY_ANTHROPIC
    assert m.stop_reason == "end_turn"
    # 4 input words, a quarter of them reported as cache reads (Anthropic counts them apart).
    assert (m.usage.input_tokens, m.usage.cache_read_input_tokens, m.usage.output_tokens) == (3, 1, 8)
    rec, body = only_request(providers["anthropic"])
    assert rec["path"] == "/v1/messages"
    assert rec["headers"]["x-api-key"] == ANTHROPIC_KEY
    # Faithful: the body the SDK sent reaches Anthropic unchanged.
    assert body == {"max_tokens": 64, "messages": [{"role": "user", "content": "hello there"}],
                    "model": "claude-sonnet-mock", "system": "be brief"}


def test_anthropic_sdk_native_stream(ant, providers, agw):
    with ant.messages.stream(
        model="claude-stream-mock", max_tokens=64, messages=[{"role": "user", "content": "stream it"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == REPLY_ANTHROPIC
    assert final.usage.output_tokens == 8 and final.stop_reason == "end_turn"
    log = agw.wait_access_log(lambda e: e.get("model") == "claude-stream-mock" and e.get("total_tokens") not in (None, "-"))
    entry = log[-1]
    assert int(entry["total_tokens"]) == 2 + 8  # 2 input words (none cached at a quarter) + 8 output


def test_anthropic_sdk_to_vertex(ant, providers):
    m = ant.messages.create(model="claude-opus-4@20250514", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    assert m.content[0].text == "Hello from anthropic: this is a mock reply."[: len(m.content[0].text)]
    rec, body = only_request(providers["anthropic"])
    assert rec["path"].endswith("/publishers/anthropic/models/claude-opus-4%4020250514:rawPredict")
    assert body["anthropic_version"] == "vertex-2023-10-16" and "model" not in body


def test_anthropic_sdk_to_openai_backend(ant, providers):
    m = ant.messages.create(
        model="gpt-4o-mini", max_tokens=64, system="be brief",
        messages=[{"role": "user", "content": "hello there"}],
    )
    assert m.content[0].type == "text" and m.content[0].text == REPLY_OPENAI
    assert m.stop_reason == "end_turn"
    # OpenAI mock: prompt = 4 words, cached = prompt/2; Anthropic counts input without cache reads.
    assert (m.usage.input_tokens, m.usage.cache_read_input_tokens, m.usage.output_tokens) == (2, 2, 8)
    rec, body = only_request(providers["openai"])
    assert rec["path"] == "/v1/chat/completions"
    assert rec["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"
    # OpenAI deprecated `max_tokens`: the limit goes as `max_completion_tokens`.
    assert body == {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "be brief"},
                                                        {"role": "user", "content": "hello there"}],
                    "max_completion_tokens": 64}


def test_anthropic_sdk_to_openai_reasoning_model(ant, providers):
    # The mock refuses `max_tokens` for o-series models, as OpenAI does.
    m = ant.messages.create(model="o3-mini", max_tokens=64, messages=[{"role": "user", "content": "think"}])
    assert m.content[0].text == REPLY_OPENAI
    _, body = only_request(providers["openai"])
    assert body["max_completion_tokens"] == 64 and "max_tokens" not in body


def test_anthropic_sdk_stream_from_openai_backend(ant, providers):
    with ant.messages.stream(model="gpt-4o-mini", max_tokens=64, messages=[{"role": "user", "content": "go"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == REPLY_OPENAI
    assert final.usage.output_tokens == 8
    assert final.stop_reason == "end_turn"
    _, body = only_request(providers["openai"])
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_anthropic_sdk_tool_use_from_openai_backend(ant, providers):
    m = ant.messages.create(
        model="gpt-4o-mini", max_tokens=64,
        messages=[{"role": "user", "content": "weather?"}],
        tools=[{"name": "get_weather", "description": "w", "input_schema": {"type": "object"}}],
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    _, body = only_request(providers["openai"])
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["tools"][0]["function"]["name"] == "get_weather"
    assert m.stop_reason in ("tool_use", "end_turn")


def test_anthropic_sdk_sees_anthropic_shaped_errors(ant):
    with pytest.raises(anthropic.APIStatusError) as e:
        ant.messages.create(model="mock-error-529", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 529
    assert e.value.body["error"]["type"] == "overloaded_error"
    with pytest.raises(anthropic.BadRequestError) as e:
        ant.messages.create(model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "x"}],
                            extra_headers={"content-type": "application/json"}, extra_body={"model": 5})
    assert e.value.body["type"] == "error"


def test_anthropic_sdk_missing_own_key_is_an_anthropic_401(ant, providers, agw):
    for model in ("claude-own-key", "gpt-own-key"):
        for headers in ({}, {"x-upstream-key": ""}):
            with pytest.raises(anthropic.AuthenticationError) as e:
                ant.with_options(default_headers=headers).messages.create(
                    model=model, max_tokens=5, messages=[{"role": "user", "content": "x"}])
            assert e.value.status_code == 401
            body = e.value.body
            assert body["type"] == "error" and body["error"]["type"] == "authentication_error", body
            assert "x-upstream-key" in body["error"]["message"] and CLIENT_KEY not in body["error"]["message"]
    assert providers["anthropic"].requests() == [] and providers["openai"].requests() == []
    agw.assert_logs_hold_none("gpt-own-key", 401, CLIENT_KEY)


def test_anthropic_sdk_own_key_is_the_upstream_credential(ant, providers, agw):
    own = ant.with_options(default_headers={"x-upstream-key": OWN_KEY})
    m = own.messages.create(model="claude-own-key", max_tokens=64, messages=[{"role": "user", "content": "hello"}])
    assert m.content[0].text == REPLY_ANTHROPIC
    rec, _ = only_request(providers["anthropic"])
    assert rec["headers"]["x-api-key"] == OWN_KEY  # in place of the SDK's own x-api-key (the gateway key)
    assert "x-upstream-key" not in rec["headers"] and "authorization" not in rec["headers"]
    # Streamed, and translated to an OpenAI-schema backend: the key goes as its bearer.
    with own.messages.stream(model="gpt-own-key", max_tokens=64,
                             messages=[{"role": "user", "content": "stream it"}]) as stream:
        assert "".join(stream.text_stream) == REPLY_OPENAI
    rec, _ = only_request(providers["openai"])
    assert rec["headers"]["authorization"] == f"Bearer {OWN_KEY}"
    assert "x-upstream-key" not in rec["headers"] and "x-api-key" not in rec["headers"]
    assert OPENAI_KEY not in json.dumps(rec["headers"])
    agw.assert_logs_hold_none("gpt-own-key", 200, OWN_KEY, CLIENT_KEY)


# ---- Anthropic SDK under /anthropic ---------------------------------------------------------


def test_anthropic_sdk_under_the_prefix(ant_prefixed, providers):
    m = ant_prefixed.messages.create(
        model="claude-sonnet-mock", max_tokens=64, messages=[{"role": "user", "content": "hello there"}]
    )
    assert m.content[0].text == REPLY_ANTHROPIC
    rec, _ = only_request(providers["anthropic"])
    assert rec["path"] == "/v1/messages", "the provider gets its own path, not the gateway's prefix"
    providers["anthropic"].clear()
    with ant_prefixed.messages.stream(
        model="claude-stream-mock", max_tokens=64, messages=[{"role": "user", "content": "stream it"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == REPLY_ANTHROPIC and final.usage.output_tokens == 8
    # Translated to an OpenAI-compatible backend under the prefix too.
    m = ant_prefixed.messages.create(model="gpt-4o-mini", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert m.content[0].text == REPLY_OPENAI


def test_anthropic_sdk_count_tokens(ant, ant_prefixed, providers):
    for client in (ant_prefixed, ant):
        providers["anthropic"].clear()
        counted = client.messages.count_tokens(
            model="claude-sonnet-mock", system="be brief",
            messages=[{"role": "user", "content": "count these four words"}],
        )
        assert counted.input_tokens == 6  # 2 system words + 4
        rec, body = only_request(providers["anthropic"])
        assert rec["path"] == "/v1/messages/count_tokens"
        assert rec["headers"]["x-api-key"] == ANTHROPIC_KEY
        assert body["model"] == "claude-sonnet-mock" and "max_tokens" not in body
    # Backends other than Anthropic's own cannot count: a clear 400 in Anthropic's shape, nothing sent.
    for m in providers.values():
        m.clear()
    for model in ("gpt-4o-mini", "claude-opus-4@20250514"):
        with pytest.raises(anthropic.BadRequestError) as e:
            ant_prefixed.messages.count_tokens(model=model, messages=[{"role": "user", "content": "x"}])
        assert e.value.body["type"] == "error"
        assert e.value.body["error"]["type"] == "invalid_request_error"
        assert "cannot count tokens" in e.value.body["error"]["message"]
    assert providers["openai"].requests() == []
    assert providers["anthropic"].requests() == []


def test_anthropic_sdk_lists_models(ant_prefixed, oai):
    page = ant_prefixed.models.list()
    assert [m.id for m in page.data] == ["claude-sonnet-mock", "gpt-4o-mini"]
    first = page.data[0]
    assert first.type == "model" and first.display_name == "Claude Sonnet (mock)"
    assert first.created_at.isoformat() == "2025-02-19T21:20:00+00:00"
    assert page.data[1].display_name == "gpt-4o-mini"
    assert (page.has_more, page.first_id, page.last_id) == (False, "claude-sonnet-mock", "gpt-4o-mini")
    # The SDK walks pages with after_id.
    assert [m.id for m in ant_prefixed.models.list(limit=1)] == ["claude-sonnet-mock", "gpt-4o-mini"]
    # /v1/models stays OpenAI's, with the configured owner and date.
    listed = {m.id: m for m in oai.models.list()}
    assert (listed["claude-sonnet-mock"].owned_by, listed["claude-sonnet-mock"].created) == ("anthropic", 1740000000)
    assert listed["gpt-4o-mini"].owned_by == "llmgw"
