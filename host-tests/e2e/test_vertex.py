"""The official openai SDK against a GCPVertexAI backend: the gateway translates OpenAI chat
completions and embeddings to Gemini on Vertex AI (`:generateContent`, `:streamGenerateContent?alt=sse`,
`:predict`), and mock-provider answers as Vertex does (see mocks/src/bin/mock_provider/gemini.rs).
The official `anthropic` SDK (`/v1/messages`) reaches Gemini too, through the chat translation (the
filter chains Messages → chat → Gemini). Each test checks what the client got and the exact request the
mock received."""

from __future__ import annotations

import json
import math

import anthropic
import openai
import pytest

import llmgw_e2e as e2e

CLIENT_KEY = "sk-client-gateway-key-must-not-leak"
TOKEN = "ya29.vertex-access-token-for-tests"
BASE = "/v1/projects/my-project/locations/us-central1/publishers/google/models/"
AUTHORITY = "us-central1-aiplatform.googleapis.com"
REPLY = "Hello from vertex: this is a mock reply."  # the mock's reply with --chunks 8 (default)

PLUGIN = {
    "backends": [
        {
            "name": "vertex",
            "schema": "GCPVertexAI",
            "project": "my-project",
            "region": "us-central1",
            "auth": {"bearer": TOKEN},
        },
        {
            "name": "vertex-pinned",
            "schema": "GCPVertexAI",
            "project": "my-project",
            "region": "us-central1",
            "model_override": "gemini-2.5-pro",
            "auth": {"bearer": TOKEN},
        },
    ],
    "rules": [
        {"match": {"model": {"exact": "smart"}}, "backends": [{"name": "vertex-pinned"}]},
        {"backends": [{"name": "vertex"}]},
    ],
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["location"],
        },
    },
}


@pytest.fixture(scope="module")
def vertex():
    mock = e2e.Mock("vertex")
    try:
        yield mock
    finally:
        mock.stop()


@pytest.fixture(scope="module")
def vgw(vertex):
    env = e2e.Envoy(e2e.render({"vertex": vertex.port, "vertex-pinned": vertex.port}, PLUGIN), name="gw-vertex")
    try:
        yield env
    finally:
        env.stop()


@pytest.fixture
def vclient(vgw, vertex):
    vertex.clear()
    c = openai.OpenAI(base_url=vgw.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=30)
    try:
        yield c
    finally:
        c.close()


def only_request(mock) -> tuple[dict, dict]:
    """The one request the mock received: (record, parsed body); checks the credential handling."""
    reqs = mock.requests()
    assert len(reqs) == 1, reqs
    rec = reqs[0]
    assert rec["method"] == "POST"
    assert rec["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert CLIENT_KEY not in json.dumps(rec["headers"])
    assert rec["headers"].get("host", rec["headers"].get(":authority")) == AUTHORITY
    assert rec["headers"].get("accept-encoding") == "identity"
    return rec, json.loads(rec["body"])


def test_chat_non_streaming(vclient, vertex):
    r = vclient.chat.completions.create(
        model="gemini-2.5-flash",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "say hello"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": [{"type": "text", "text": "again please"}]},
        ],
        max_tokens=50,
        temperature=0.2,
        top_p=0.9,
        stop=["END"],
        seed=3,
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == REPLY
    assert r.choices[0].finish_reason == "stop"
    assert r.model == "gemini-2.5-flash"
    assert r.id.startswith("respmock")
    prompt = 2 + 2 + 1 + 2  # words of every text part, system instruction included
    u = r.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (prompt, 8, prompt + 8)
    assert u.prompt_tokens_details.cached_tokens == prompt // 2
    rec, body = only_request(vertex)
    assert rec["path"] == BASE + "gemini-2.5-flash:generateContent"
    assert body == {
        "contents": [
            {"role": "user", "parts": [{"text": "say hello"}]},
            {"role": "model", "parts": [{"text": "Hello."}]},
            {"role": "user", "parts": [{"text": "again please"}]},
        ],
        "systemInstruction": {"parts": [{"text": "be brief"}]},
        "generationConfig": {"maxOutputTokens": 50, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"], "seed": 3},
    }


def test_chat_max_tokens_and_model_override(vclient, vertex):
    r = vclient.chat.completions.create(
        model="smart", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=3
    )
    assert r.choices[0].message.content == "Hello from vertex:"
    assert r.choices[0].finish_reason == "length"
    assert r.model == "gemini-2.5-pro"
    rec, body = only_request(vertex)
    assert rec["path"] == BASE + "gemini-2.5-pro:generateContent"
    assert body["generationConfig"] == {"maxOutputTokens": 3}


def test_chat_streaming_with_usage(vclient, vertex):
    stream = vclient.chat.completions.create(
        model="gemini-2.5-flash",
        messages=[{"role": "user", "content": "stream a hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert len({c.id for c in chunks}) == 1
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1] and chunks[-1].choices == []
    u = chunks[-1].usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (3, 8, 11)
    rec, body = only_request(vertex)
    assert rec["path"] == BASE + "gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert body == {"contents": [{"role": "user", "parts": [{"text": "stream a hello"}]}]}


def test_chat_streaming_raw_wire_format(vgw, vertex):
    vertex.clear()
    status, headers, raw = e2e.http(
        "POST",
        vgw.url + "/v1/chat/completions",
        {"model": "gemini-2.0-flash", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
    )
    assert status == 200, raw
    assert headers["content-type"].startswith("text/event-stream")
    events = raw.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    assert all("usage" not in p for p in payloads), "no usage chunk unless the client asks"
    assert payloads[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    # Tokens are counted from Gemini's usageMetadata even when the client did not ask for usage.
    [entry] = vgw.wait_access_log(lambda e: e.get("model") == "gemini-2.0-flash")
    assert (entry["input_tokens"], entry["output_tokens"], entry["total_tokens"]) == ("1", "8", "9")
    assert entry["backend"] == "vertex" and entry["path"] == BASE + "gemini-2.0-flash:streamGenerateContent?alt=sse"


def test_tool_calls_and_results(vclient, vertex):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = vclient.chat.completions.create(
        model="gemini-2.5-flash", messages=messages, tools=[WEATHER_TOOL], tool_choice="required"
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "mock-location", "days": 1}
    assert call.id.startswith("call_respmock")
    _, body = only_request(vertex)
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Current weather for a city",
                    "parametersJsonSchema": WEATHER_TOOL["function"]["parameters"],
                }
            ]
        }
    ]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}

    # Second turn: the tool result goes back, named after the call its id points to.
    vertex.clear()
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 18}'},
    ]
    r = vclient.chat.completions.create(model="gemini-2.5-flash", messages=messages, tools=[WEATHER_TOOL])
    assert r.choices[0].message.content == 'The tool said: {"temp_c":18}'
    assert r.choices[0].finish_reason == "stop"
    _, body = only_request(vertex)
    assert body["contents"][1:] == [
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"location": "mock-location", "days": 1}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp_c": 18}}}]},
    ]
    assert "toolConfig" not in body


def test_parallel_tool_calls_streaming(vclient, vertex):
    chunks = list(
        vclient.chat.completions.create(
            model="gemini-3-pro-preview",
            messages=[{"role": "user", "content": "weather in both Paris and Rome"}],
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            stream=True,
        )
    )
    calls = [tc for c in chunks if c.choices and c.choices[0].delta.tool_calls for tc in c.choices[0].delta.tool_calls]
    assert [tc.index for tc in calls] == [0, 1]
    assert len({tc.id for tc in calls}) == 2
    assert all(tc.function.name == "get_weather" for tc in calls)
    assert all(json.loads(tc.function.arguments)["location"] == "mock-location" for tc in calls)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    rec, body = only_request(vertex)
    assert rec["path"] == BASE + "gemini-3-pro-preview:streamGenerateContent?alt=sse"
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}


def test_reasoning_effort_and_json_mode(vclient, vertex):
    r = vclient.chat.completions.create(
        model="gemini-2.5-flash",
        messages=[{"role": "user", "content": "think, then answer"}],
        reasoning_effort="low",
        response_format={"type": "json_object"},
    )
    msg = r.choices[0].message
    assert msg.content == REPLY
    assert msg.reasoning_content == "Mock thoughts."  # extra field, kept by the SDK
    assert r.usage.completion_tokens == 8 + 4 and r.usage.completion_tokens_details.reasoning_tokens == 4
    _, body = only_request(vertex)
    assert body["generationConfig"] == {
        "responseMimeType": "application/json",
        "thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": True},
    }


def test_embeddings_base64_default(vclient, vertex):
    # The SDK asks for base64 unless told otherwise; the gateway encodes Vertex's floats as f32.
    r = vclient.embeddings.create(model="text-embedding-005", input=["hello vertex world", "second"], dimensions=4)
    assert r.object == "list" and r.model == "text-embedding-005"
    assert [d.index for d in r.data] == [0, 1]
    assert all(len(d.embedding) == 4 for d in r.data)
    assert (r.usage.prompt_tokens, r.usage.total_tokens) == (4, 4)
    rec, body = only_request(vertex)
    assert rec["path"] == BASE + "text-embedding-005:predict"
    assert body == {
        "instances": [{"content": "hello vertex world"}, {"content": "second"}],
        "parameters": {"outputDimensionality": 4},
    }
    # Same numbers as the mock's own floats, to f32 precision.
    vertex.clear()
    f = vclient.embeddings.create(model="text-embedding-005", input="second", dimensions=4, encoding_format="float")
    floats = f.data[0].embedding
    assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7) for a, b in zip(floats, r.data[1].embedding))
    assert json.loads(vertex.requests()[0]["body"]) == {
        "instances": [{"content": "second"}],
        "parameters": {"outputDimensionality": 4},
    }


def test_embeddings_refuse_token_arrays(vclient, vertex):
    with pytest.raises(openai.BadRequestError) as exc:
        vclient.embeddings.create(model="text-embedding-005", input=[[1, 2, 3]], encoding_format="float")
    assert exc.value.status_code == 400
    assert exc.value.code == "unsupported_parameter"
    assert vertex.requests() == []


def test_embeddings_object_inputs_with_task_type_and_title(vclient, vertex):
    # Envoy AI Gateway's input objects: Vertex instance fields per text, strings mixed in.
    r = vclient.embeddings.create(
        model="text-embedding-005",
        input=[
            {"content": "a document", "task_type": "RETRIEVAL_DOCUMENT", "title": "Doc"},
            {"content": ["query one", "query two"], "task_type": "RETRIEVAL_QUERY"},
            "plain",
        ],
        dimensions=4,
        encoding_format="float",
    )
    assert [d.index for d in r.data] == [0, 1, 2, 3]
    _, body = only_request(vertex)
    assert body["instances"] == [
        {"content": "a document", "task_type": "RETRIEVAL_DOCUMENT", "title": "Doc"},
        {"content": "query one", "task_type": "RETRIEVAL_QUERY"},
        {"content": "query two", "task_type": "RETRIEVAL_QUERY"},
        {"content": "plain"},
    ]
    # A title without RETRIEVAL_DOCUMENT is refused before the upstream (Vertex would refuse it).
    vertex.clear()
    with pytest.raises(openai.BadRequestError) as exc:
        vclient.embeddings.create(
            model="text-embedding-005", input=[{"content": "x", "title": "T", "task_type": "RETRIEVAL_QUERY"}]
        )
    assert "input[0].title is only valid with task_type RETRIEVAL_DOCUMENT" in exc.value.body["message"]
    assert vertex.requests() == []


def test_upstream_errors_keep_status_and_message(vclient, vertex):
    with pytest.raises(openai.RateLimitError) as exc:
        vclient.chat.completions.create(model="mock-error-429", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.status_code == 429
    assert exc.value.body["message"] == "mock error 429 for model mock-error-429"
    assert exc.value.code == "resource_exhausted"
    assert exc.value.type == "rate_limit_error"
    with pytest.raises(openai.NotFoundError) as exc:
        vclient.embeddings.create(model="mock-error-404", input="x")
    assert exc.value.body["message"] == "mock error 404 for model mock-error-404"


def test_unsupported_parameters_are_refused_before_the_upstream(vclient, vertex):
    with pytest.raises(openai.BadRequestError) as exc:
        vclient.chat.completions.create(
            model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}], logprobs=True
        )
    assert exc.value.code == "unsupported_parameter"
    assert "logprobs" in exc.value.body["message"]
    assert vertex.requests() == []



# Anthropic Messages clients reach Gemini through OpenAI chat (translate/chain.rs).

@pytest.fixture
def aclient(vgw, vertex):
    vertex.clear()
    c = anthropic.Anthropic(base_url=vgw.url, api_key=CLIENT_KEY, max_retries=0, timeout=30)
    try:
        yield c
    finally:
        c.close()


def test_anthropic_sdk_messages_to_gemini(aclient, vertex):
    m = aclient.messages.create(model="gemini-2.5-flash", max_tokens=50, system="be brief", stop_sequences=["END"],
                                messages=[{"role": "user", "content": "say hello"}])
    assert m.type == "message" and m.model == "gemini-2.5-flash"
    assert m.content[0].text == REPLY and m.stop_reason == "end_turn"
    prompt = 2 + 2
    assert (m.usage.input_tokens + m.usage.cache_read_input_tokens, m.usage.output_tokens) == (prompt, 8)
    rec, body = only_request(vertex)
    assert rec["path"] == BASE + "gemini-2.5-flash:generateContent"
    assert "anthropic-version" not in rec["headers"] and "x-api-key" not in rec["headers"]
    assert body == {
        "contents": [{"role": "user", "parts": [{"text": "say hello"}]}],
        "systemInstruction": {"parts": [{"text": "be brief"}]},
        "generationConfig": {"maxOutputTokens": 50, "stopSequences": ["END"]},
    }

    vertex.clear()
    with aclient.messages.stream(model="gemini-2.5-flash", max_tokens=50,
                                 messages=[{"role": "user", "content": "stream a hello"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == REPLY and final.stop_reason == "end_turn" and final.usage.output_tokens == 8
    rec, body = only_request(vertex)
    assert rec["path"] == BASE + "gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert body == {"contents": [{"role": "user", "parts": [{"text": "stream a hello"}]}],
                    "generationConfig": {"maxOutputTokens": 50}}


def test_anthropic_sdk_tool_use_to_gemini(aclient, vertex):
    tool = {"name": "get_weather", "description": "Current weather for a city",
            "input_schema": WEATHER_TOOL["function"]["parameters"]}
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
    m = aclient.messages.create(model="gemini-2.5-flash", max_tokens=100, messages=msgs, tools=[tool],
                                tool_choice={"type": "any"})
    assert m.stop_reason == "tool_use"
    [use] = [b for b in m.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"location": "mock-location", "days": 1}
    _, body = only_request(vertex)
    assert body["tools"] == [{"functionDeclarations": [{"name": "get_weather", "description": "Current weather for a city",
                                                        "parametersJsonSchema": tool["input_schema"]}]}]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}

    vertex.clear()
    history = msgs + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": '{"temp_c": 18}'}]},
    ]
    with aclient.messages.stream(model="gemini-2.5-flash", max_tokens=100, messages=history, tools=[tool]) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == 'The tool said: {"temp_c":18}' and final.stop_reason == "end_turn"
    _, body = only_request(vertex)
    assert body["contents"][1:] == [
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"location": "mock-location", "days": 1}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp_c": 18}}}]},
    ]


def test_anthropic_sdk_errors_from_gemini(aclient, vertex):
    with pytest.raises(anthropic.APIStatusError) as e:
        aclient.messages.create(model="mock-error-429", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 429
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "rate_limit_error"
