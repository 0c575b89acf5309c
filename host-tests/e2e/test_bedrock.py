"""The official openai SDK against an AWSBedrock backend: the gateway translates OpenAI chat
completions to the Bedrock Converse API (`/model/{id}/converse`, `/converse-stream`), signs every
request with SigV4, and turns Bedrock's eventstream frames back into OpenAI SSE. mock-provider answers
as Bedrock does (see mocks/src/bin/mock_provider/bedrock.rs): it knows the secret key, recomputes
each signature independently and refuses a mismatch. Each test checks what the client got and the
exact request the mock received. An AWSAnthropic backend (Anthropic body on `/invoke`) is checked too,
and so are the official `anthropic` SDK (`/v1/messages`) and `client.responses.create` reaching Bedrock
through the chat translation (the filter chains Messages → chat → Converse). Per-request AWS keys
(`credential_override`) must sign the request (checked against botocore), be required or fall back to
the configured keys, and never reach Bedrock or Envoy's logs."""

from __future__ import annotations

import datetime
import json
from unittest import mock as patch

import anthropic
import openai
import pytest

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

import llmgw_e2e as e2e

CLIENT_KEY = "sk-client-gateway-key-must-not-leak"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TOKEN = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQDExampleSessionToken+/="
AUTHORITY = "bedrock-runtime.us-east-1.amazonaws.com"
MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
MODEL_PATH = "anthropic.claude-3-5-sonnet-20240620-v1%3A0"
REPLY = "Hello from bedrock: this is a mock reply."  # the mock's reply with --chunks 8 (default)
MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say hello to the gateway"}]
PROMPT_WORDS = 2 + 5

AWS = {"access_key_id": KEY_ID, "secret_access_key": SECRET, "session_token": TOKEN}
# A request's own AWS keys (`credential_override`). The mock knows one secret, so the own secret is
# the same; the key id and token differ from the configured ones, and a wrong own secret is refused.
OWN_KEY_ID = "AKIAOWNREQUESTKEY777"
OWN_TOKEN = "FwoGZXIvYXdzEOwn//////////wEaDOwnRequestSessionToken+/="
OWN_AWS_HEADERS = {"access_key_id_header": "x-aws-access-key-id",
                   "secret_access_key_header": "x-aws-secret-access-key",
                   "session_token_header": "x-aws-session-token"}
OWN_HEADERS = {"x-aws-access-key-id": OWN_KEY_ID, "x-aws-secret-access-key": SECRET, "x-aws-session-token": OWN_TOKEN}
PLUGIN = {
    "backends": [
        {"name": "bedrock", "schema": "AWSBedrock", "region": "us-east-1", "auth": {"aws": AWS}},
        {"name": "bedrock-anthropic", "schema": "AWSAnthropic", "region": "us-east-1", "model_override": MODEL,
         "auth": {"aws": AWS}},
        {"name": "bedrock-wrong-key", "schema": "AWSBedrock", "region": "us-east-1",
         "auth": {"aws": {"access_key_id": KEY_ID, "secret_access_key": "not-the-secret"}}},
        # Configured keys that must not be used: the request's own are required.
        {"name": "bedrock-own-keys", "schema": "AWSBedrock", "region": "us-east-1", "auth": {"aws": AWS},
         "credential_override": {**OWN_AWS_HEADERS, "fallback_to_configured": False}},
        {"name": "bedrock-own-or-configured", "schema": "AWSBedrock", "region": "us-east-1", "auth": {"aws": AWS},
         "credential_override": {**OWN_AWS_HEADERS, "fallback_to_configured": True}},
    ],
    "rules": [
        {"match": {"model": {"exact": "own-aws-keys"}}, "backends": [{"name": "bedrock-own-keys"}]},
        {"match": {"model": {"exact": "own-or-configured-aws-keys"}},
         "backends": [{"name": "bedrock-own-or-configured"}]},
        {"match": {"model": {"exact": "aws-claude"}}, "backends": [{"name": "bedrock-anthropic"}]},
        {"match": {"model": {"prefix": "wrong-key-"}}, "backends": [{"name": "bedrock-wrong-key"}]},
        {"backends": [{"name": "bedrock"}]},
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
WEATHER_SPEC = {"toolSpec": {"name": "get_weather", "description": "Current weather for a city",
                             "inputSchema": {"json": WEATHER_TOOL["function"]["parameters"]}}}


@pytest.fixture(scope="module")
def bedrock():
    mock = e2e.Mock("bedrock", "--aws-secret-access-key", SECRET)
    try:
        yield mock
    finally:
        mock.stop()


@pytest.fixture(scope="module")
def bgw(bedrock):
    clusters = {name: bedrock.port for name in ("bedrock", "bedrock-anthropic", "bedrock-wrong-key", "bedrock-own-keys",
                                                "bedrock-own-or-configured")}
    env = e2e.Envoy(e2e.render(clusters, PLUGIN), name="gw-bedrock")
    try:
        yield env
    finally:
        env.stop()


@pytest.fixture
def bclient(bgw, bedrock):
    bedrock.clear()
    c = openai.OpenAI(base_url=bgw.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=30)
    try:
        yield c
    finally:
        c.close()


def only_request(mock) -> tuple[dict, dict]:
    """The one request the mock received: (record, parsed body); checks signing and credentials."""
    reqs = mock.requests()
    assert len(reqs) == 1, reqs
    r = reqs[0]
    h = r["headers"]
    assert h["host"] == AUTHORITY
    assert h["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={KEY_ID}/")
    assert "/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, " \
        "Signature=" in h["authorization"]
    assert h["x-amz-security-token"] == TOKEN
    assert h["content-type"] == "application/json"
    assert CLIENT_KEY not in json.dumps(r), "the client's gateway key reached the provider"
    assert "x-amz-content-sha256" not in h
    return r, json.loads(r["body"])


def test_chat_non_streaming(bclient, bedrock):
    r = bclient.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=100, temperature=0.3,
                                        stop=["END"])
    assert r.choices[0].message.content == REPLY
    assert r.choices[0].finish_reason == "stop"
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-") and r.model == MODEL
    u = r.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (PROMPT_WORDS, 8, PROMPT_WORDS + 8)
    assert u.prompt_tokens_details.cached_tokens == PROMPT_WORDS // 2
    rec, body = only_request(bedrock)
    assert rec["path"] == f"/model/{MODEL_PATH}/converse"
    assert body == {
        "messages": [{"role": "user", "content": [{"text": "say hello to the gateway"}]}],
        "system": [{"text": "be brief"}],
        "inferenceConfig": {"maxTokens": 100, "temperature": 0.3, "stopSequences": ["END"]},
    }


def test_chat_streaming_with_usage(bclient, bedrock):
    stream = bclient.chat.completions.create(model=MODEL, messages=MSGS, stream=True,
                                             stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    u = chunks[-1].usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (PROMPT_WORDS, 8, PROMPT_WORDS + 8)
    rec, body = only_request(bedrock)
    assert rec["path"] == f"/model/{MODEL_PATH}/converse-stream"
    assert "stream" not in body and "stream_options" not in body


def test_streaming_raw_wire_format(bgw, bedrock):
    """Eventstream in, SSE out: `text/event-stream`, no content-length, `data: [DONE]` last."""
    bedrock.clear()
    status, headers, body = e2e.http(
        "POST", bgw.url + "/v1/chat/completions", {"model": "amazon.nova-pro-v1:0", "messages": MSGS, "stream": True},
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
    )
    assert status == 200, body
    assert headers["content-type"] == "text/event-stream"
    assert "content-length" not in headers
    events = body.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    for e in events[:-2]:
        assert e.startswith("data: {") and json.loads(e[6:])["object"] == "chat.completion.chunk"
    assert all("usage" not in json.loads(e[6:]) for e in events[:-2]), "usage chunk without include_usage"
    rec, _ = only_request(bedrock)
    assert rec["path"] == "/model/amazon.nova-pro-v1%3A0/converse-stream"


def test_tool_calls_round_trip(bclient, bedrock):
    msgs = [{"role": "user", "content": "weather in Paris, both days please"}]
    r = bclient.chat.completions.create(model=MODEL, messages=msgs, tools=[WEATHER_TOOL], tool_choice="required")
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Calling get_weather."
    calls = choice.message.tool_calls
    assert len(calls) == 2 and calls[0].id != calls[1].id
    assert all(c.id.startswith("tooluse_") and c.function.name == "get_weather" for c in calls)
    assert json.loads(calls[0].function.arguments) == {"location": "mock-location", "days": 1}
    _, body = only_request(bedrock)
    assert body["toolConfig"] == {"tools": [WEATHER_SPEC], "toolChoice": {"any": {}}}

    bedrock.clear()
    history = msgs + [
        {"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in calls]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"},
        {"role": "tool", "tool_call_id": calls[1].id, "content": "rainy"},
    ]
    r = bclient.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER_TOOL])
    assert r.choices[0].message.content == "The tool said: sunny"
    assert r.choices[0].finish_reason == "stop"
    _, body = only_request(bedrock)
    assert body["messages"][1] == {"role": "assistant", "content": [
        {"toolUse": {"toolUseId": c.id, "name": "get_weather", "input": json.loads(c.function.arguments)}}
        for c in calls]}
    assert body["messages"][2] == {"role": "user", "content": [
        {"toolResult": {"toolUseId": calls[0].id, "content": [{"text": "sunny"}]}},
        {"toolResult": {"toolUseId": calls[1].id, "content": [{"text": "rainy"}]}}]}
    assert body["toolConfig"] == {"tools": [WEATHER_SPEC]}


def test_streaming_tool_calls(bclient, bedrock):
    stream = bclient.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "weather in Paris?"}], stream=True,
        tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        reasoning_effort="low",
    )
    chunks = list(stream)
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    assert reasoning == "Mock thoughts."
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Calling get_weather."
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].index == 0 and deltas[0].id.startswith("tooluse_") and deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert json.loads(arguments) == {"location": "mock-location", "days": 1}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    _, body = only_request(bedrock)
    assert body["toolConfig"]["toolChoice"] == {"tool": {"name": "get_weather"}}
    assert body["additionalModelRequestFields"] == {"thinking": {"type": "enabled", "budget_tokens": 1024}}
    assert body["inferenceConfig"] == {"maxTokens": 4096}


def test_vision_and_unsupported_parameters(bclient, bedrock):
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    content = [{"type": "text", "text": "what is this?"},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]
    r = bclient.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], seed=1)
    assert r.choices[0].message.content == REPLY
    _, body = only_request(bedrock)
    assert body["messages"][0]["content"][1] == {"image": {"format": "png", "source": {"bytes": png}}}
    assert "seed" not in json.dumps(body)

    bedrock.clear()
    remote = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    with pytest.raises(openai.BadRequestError) as e:
        bclient.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": remote}])
    assert "base64 data URL" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        bclient.chat.completions.create(model=MODEL, messages=MSGS, response_format={"type": "json_object"})
    assert e.value.code == "unsupported_parameter"
    assert bedrock.requests() == [], "refused requests must not reach Bedrock"


def test_upstream_errors_keep_status_and_message(bclient, bedrock):
    with pytest.raises(openai.RateLimitError) as e:
        bclient.chat.completions.create(model="mock-error-429", messages=MSGS)
    assert e.value.status_code == 429
    assert e.value.body == {"message": "mock error 429 for model mock-error-429", "type": "rate_limit_error",
                            "code": "upstream_error", "param": None}
    # Bedrock's own validation (here: a conversation that starts with the assistant) comes back as is.
    with pytest.raises(openai.BadRequestError) as e:
        bclient.chat.completions.create(model=MODEL, messages=[{"role": "assistant", "content": "hi"}])
    assert "must start with a user message" in e.value.message


def test_wrong_secret_is_refused_by_the_signature_check(bclient, bedrock):
    with pytest.raises(openai.PermissionDeniedError) as e:
        bclient.chat.completions.create(model="wrong-key-model", messages=MSGS)
    assert "signature we calculated does not match" in e.value.message


def test_stream_exception_becomes_an_error_event(bclient, bedrock):
    stream = bclient.chat.completions.create(model="mock-stream-exception", messages=MSGS, stream=True)
    got = []
    with pytest.raises(openai.APIError) as e:
        for c in stream:
            got.append(c.choices[0].delta.content or "" if c.choices else "")
    assert "".join(got) == "Hello from "
    assert "Too many requests" in e.value.message


def test_aws_anthropic_invoke(bclient, bedrock):
    r = bclient.chat.completions.create(model="aws-claude", messages=MSGS, max_tokens=50)
    assert r.choices[0].message.content == REPLY
    assert r.usage.prompt_tokens == PROMPT_WORDS and r.usage.completion_tokens == 8
    rec, body = only_request(bedrock)
    assert rec["path"] == f"/model/{MODEL_PATH}/invoke"
    assert body["anthropic_version"] == "bedrock-2023-05-31"
    assert "model" not in body and "stream" not in body
    assert body["max_tokens"] == 50 and body["system"] == [{"type": "text", "text": "be brief"}]


def test_aws_anthropic_invoke_with_response_stream(bclient, bedrock):
    chunks = list(bclient.chat.completions.create(model="aws-claude", messages=MSGS, stream=True,
                                                  stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert chunks[-1].usage.completion_tokens == 8
    rec, _ = only_request(bedrock)
    assert rec["path"] == f"/model/{MODEL_PATH}/invoke-with-response-stream"


def test_anthropic_sdk_streams_from_aws_anthropic(bgw, bedrock):
    """The Anthropic SDK on /v1/messages, natively to Claude on Bedrock: the eventstream frames of
    invoke-with-response-stream leave the gateway as Anthropic SSE events."""
    import anthropic

    bedrock.clear()
    client = anthropic.Anthropic(base_url=bgw.url, api_key=CLIENT_KEY, max_retries=0, timeout=30)
    try:
        with client.messages.stream(model="aws-claude", max_tokens=50,
                                    messages=[{"role": "user", "content": "say hello"}]) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
    finally:
        client.close()
    assert text == REPLY
    assert final.usage.output_tokens == 8 and final.stop_reason == "end_turn"
    rec, body = only_request(bedrock)
    assert rec["path"] == f"/model/{MODEL_PATH}/invoke-with-response-stream"
    assert body["anthropic_version"] == "bedrock-2023-05-31" and "model" not in body and "stream" not in body


# Anthropic Messages and OpenAI Responses clients reach Bedrock through OpenAI chat (translate/chain.rs).

ANTHROPIC_WEATHER = {"name": "get_weather", "description": "Current weather for a city",
                     "input_schema": WEATHER_TOOL["function"]["parameters"]}


@pytest.fixture
def aclient(bgw, bedrock):
    bedrock.clear()
    c = anthropic.Anthropic(base_url=bgw.url, api_key=CLIENT_KEY, max_retries=0, timeout=30)
    try:
        yield c
    finally:
        c.close()


def test_anthropic_sdk_messages_to_converse(aclient, bedrock):
    m = aclient.messages.create(model=MODEL, max_tokens=100, system="be brief", stop_sequences=["END"],
                                messages=[{"role": "user", "content": "say hello to the gateway"}])
    assert m.type == "message" and m.role == "assistant" and m.model == MODEL
    assert [b.type for b in m.content] == ["text"] and m.content[0].text == REPLY
    assert m.stop_reason == "end_turn"
    # Anthropic counts input without cache reads (the mock reads half the prompt from its cache).
    assert (m.usage.input_tokens + m.usage.cache_read_input_tokens, m.usage.output_tokens) == (PROMPT_WORDS, 8)
    rec, body = only_request(bedrock)
    assert rec["path"] == f"/model/{MODEL_PATH}/converse"
    assert "anthropic-version" not in rec["headers"] and "x-api-key" not in rec["headers"]
    assert body == {
        "messages": [{"role": "user", "content": [{"text": "say hello to the gateway"}]}],
        "system": [{"text": "be brief"}],
        "inferenceConfig": {"maxTokens": 100, "stopSequences": ["END"]},
    }

    bedrock.clear()
    with aclient.messages.stream(model=MODEL, max_tokens=100,
                                 messages=[{"role": "user", "content": "say hello to the gateway"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == REPLY and final.stop_reason == "end_turn" and final.usage.output_tokens == 8
    rec, body = only_request(bedrock)
    assert rec["path"] == f"/model/{MODEL_PATH}/converse-stream"
    assert body["messages"] == [{"role": "user", "content": [{"text": "say hello to the gateway"}]}]


def test_anthropic_sdk_tool_use_to_converse(aclient, bedrock):
    msgs = [{"role": "user", "content": "weather in Paris?"}]
    m = aclient.messages.create(model=MODEL, max_tokens=200, messages=msgs, tools=[ANTHROPIC_WEATHER],
                                tool_choice={"type": "any"})
    assert m.stop_reason == "tool_use"
    assert m.content[0].type == "text" and m.content[0].text == "Calling get_weather."
    [use] = [b for b in m.content if b.type == "tool_use"]
    assert use.id.startswith("tooluse_") and use.name == "get_weather"
    assert use.input == {"location": "mock-location", "days": 1}
    _, body = only_request(bedrock)
    assert body["toolConfig"] == {"tools": [WEATHER_SPEC], "toolChoice": {"any": {}}}

    bedrock.clear()
    history = msgs + [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
                      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}]
    with aclient.messages.stream(model=MODEL, max_tokens=200, messages=history, tools=[ANTHROPIC_WEATHER]) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == "The tool said: sunny" and final.stop_reason == "end_turn"
    _, body = only_request(bedrock)
    assert body["messages"][1] == {"role": "assistant", "content": [
        {"text": "Calling get_weather."},
        {"toolUse": {"toolUseId": use.id, "name": "get_weather", "input": use.input}}]}
    assert body["messages"][2] == {"role": "user", "content": [
        {"toolResult": {"toolUseId": use.id, "content": [{"text": "sunny"}]}}]}


def test_anthropic_sdk_refusals_and_errors_from_converse(aclient, bedrock):
    remote = {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
    with pytest.raises(anthropic.BadRequestError) as e:
        aclient.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": [remote]}])
    assert e.value.body["type"] == "error" and "translation to OpenAI chat" in e.value.message
    assert bedrock.requests() == [], "refused requests must not reach Bedrock"
    with pytest.raises(anthropic.RateLimitError) as e:
        aclient.messages.create(model="mock-error-429", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body == {"type": "error", "error": {"type": "rate_limit_error",
                                                       "message": "mock error 429 for model mock-error-429"}}
    # An exception in Bedrock's stream ends the client's stream with an Anthropic `error` event.
    with pytest.raises(anthropic.APIStatusError) as e:
        with aclient.messages.stream(model="mock-stream-exception", max_tokens=10,
                                     messages=[{"role": "user", "content": "hi"}]) as stream:
            for _ in stream.text_stream:
                pass
    assert e.value.body["type"] == "error"


def test_openai_responses_to_converse(bclient, bedrock):
    r = bclient.responses.create(model=MODEL, instructions="be brief", input="say hello to the gateway")
    assert r.object == "response" and r.status == "completed" and r.output_text == REPLY
    assert r.store is False
    assert (r.usage.input_tokens, r.usage.output_tokens) == (PROMPT_WORDS, 8)
    rec, body = only_request(bedrock)
    assert rec["path"] == f"/model/{MODEL_PATH}/converse"
    assert body == {
        "messages": [{"role": "user", "content": [{"text": "say hello to the gateway"}]}],
        "system": [{"text": "be brief"}],
        "inferenceConfig": {"maxTokens": 4096},
    }

    bedrock.clear()
    events = list(bclient.responses.create(model=MODEL, input="say hello to the gateway", max_output_tokens=50,
                                           stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == REPLY
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1].response
    assert done.output_text == REPLY and done.usage.output_tokens == 8
    rec, body = only_request(bedrock)
    assert rec["path"] == f"/model/{MODEL_PATH}/converse-stream"
    assert body["inferenceConfig"] == {"maxTokens": 50}

    bedrock.clear()
    with pytest.raises(openai.BadRequestError) as e:
        bclient.responses.create(model=MODEL, input="again", previous_response_id="resp_1")
    assert "previous_response_id" in e.value.message
    assert bedrock.requests() == []


# ---- Per-request AWS keys (`credential_override`) ---------------------------------------------


def botocore_authorization(rec: dict, key_id: str, secret: str, token: str | None) -> str:
    """The Authorization botocore computes for the request the mock received (same method, path,
    host, content-type, body and x-amz-date), signed with these keys."""
    h = rec["headers"]
    assert rec["body_len"] == len(rec["body"].encode()), "the recorded body is cut"
    request = AWSRequest(method=rec["method"], url=f"https://{h['host']}{rec['path']}", data=rec["body"].encode(),
                         headers={"content-type": h["content-type"]})
    now = datetime.datetime.strptime(h["x-amz-date"], "%Y%m%dT%H%M%SZ")
    with patch.patch("botocore.auth.get_current_datetime", return_value=now):
        SigV4Auth(Credentials(key_id, secret, token), "bedrock", "us-east-1").add_auth(request)
    return request.headers["Authorization"]


def assert_signed_with_own_keys(rec: dict) -> None:
    h = rec["headers"]
    assert h["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={OWN_KEY_ID}/"), h["authorization"]
    assert h["x-amz-security-token"] == OWN_TOKEN
    assert h["authorization"] == botocore_authorization(rec, OWN_KEY_ID, SECRET, OWN_TOKEN)
    assert not [n for n in h if n in OWN_HEADERS], "an override header reached the provider"
    assert KEY_ID not in json.dumps(rec) and TOKEN not in json.dumps(rec), "the configured keys were used"
    assert CLIENT_KEY not in json.dumps(rec)


def test_own_aws_keys_sign_the_request(bclient, bgw, bedrock):
    own = bclient.with_options(default_headers=OWN_HEADERS)
    r = own.chat.completions.create(model="own-aws-keys", messages=MSGS)
    assert r.choices[0].message.content == REPLY
    [rec] = bedrock.requests()
    assert rec["path"] == "/model/own-aws-keys/converse"
    assert_signed_with_own_keys(rec)
    # Streaming (converse-stream) is signed the same way.
    bedrock.clear()
    chunks = list(own.chat.completions.create(model="own-aws-keys", messages=MSGS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    [rec] = bedrock.requests()
    assert rec["path"] == "/model/own-aws-keys/converse-stream"
    assert_signed_with_own_keys(rec)
    # Without a session token header the signature has none.
    bedrock.clear()
    no_token = {k: v for k, v in OWN_HEADERS.items() if k != "x-aws-session-token"}
    bclient.with_options(default_headers=no_token).chat.completions.create(model="own-aws-keys", messages=MSGS)
    [rec] = bedrock.requests()
    assert "x-amz-security-token" not in rec["headers"]
    assert "SignedHeaders=content-type;host;x-amz-date, " in rec["headers"]["authorization"]
    assert rec["headers"]["authorization"] == botocore_authorization(rec, OWN_KEY_ID, SECRET, None)
    bgw.assert_logs_hold_none("own-aws-keys", 200, SECRET, OWN_TOKEN)


def test_own_aws_keys_required_without_fallback(bclient, bgw, bedrock):
    for headers in ({}, {"x-aws-access-key-id": OWN_KEY_ID}, {"x-aws-secret-access-key": SECRET},
                    {"x-aws-access-key-id": OWN_KEY_ID, "x-aws-secret-access-key": ""}):
        with pytest.raises(openai.AuthenticationError) as e:
            bclient.with_options(default_headers=headers).chat.completions.create(model="own-aws-keys", messages=MSGS)
        assert e.value.status_code == 401 and e.value.code == "missing_upstream_credential"
        assert e.value.body["type"] == "authentication_error"
        assert "x-aws-access-key-id" in e.value.message and "x-aws-secret-access-key" in e.value.message
        assert SECRET not in e.value.message and OWN_KEY_ID not in e.value.message
    assert bedrock.requests() == [], "a refused request reached Bedrock"
    bgw.assert_logs_hold_none("own-aws-keys", 401, SECRET)


def test_own_aws_keys_fall_back_to_the_configured_ones(bclient, bgw, bedrock):
    bclient.chat.completions.create(model="own-or-configured-aws-keys", messages=MSGS)
    rec, _ = only_request(bedrock)  # the configured key id and token
    assert rec["headers"]["authorization"] == botocore_authorization(rec, KEY_ID, SECRET, TOKEN)
    bedrock.clear()
    bclient.with_options(default_headers=OWN_HEADERS).chat.completions.create(
        model="own-or-configured-aws-keys", messages=MSGS)
    [rec] = bedrock.requests()
    assert_signed_with_own_keys(rec)
    # The own secret signs: a wrong one fails Bedrock's check although the configured one is right.
    with pytest.raises(openai.PermissionDeniedError) as e:
        bclient.with_options(default_headers={**OWN_HEADERS, "x-aws-secret-access-key": "own-wrong-secret"}) \
            .chat.completions.create(model="own-or-configured-aws-keys", messages=MSGS)
    assert "signature we calculated does not match" in e.value.message
    bgw.assert_logs_hold_none("own-or-configured-aws-keys", 403, SECRET, OWN_TOKEN, "own-wrong-secret")
