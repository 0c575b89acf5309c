"""The official openai SDK against the gateway: chat (plain and streaming), completions,
embeddings, the model list, error mapping, body mutation and per-request upstream keys; the
Responses, Images and Audio APIs (pass-through)."""

from __future__ import annotations

import base64
import json
import struct

import openai
import pytest

from conftest import ALPHA_KEY, BETA_KEY, CLIENT_KEY, PLUGIN

REPLY = "Hello from alpha: this is a mock reply."  # mock-provider's reply with --chunks 8 (default)
MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say hello to the gateway"}]
PROMPT_WORDS = 2 + 5  # the mock counts whitespace-separated words of the message contents


def last_body(mock) -> dict:
    reqs = mock.requests()
    assert reqs, "the mock got no request"
    return json.loads(reqs[-1]["body"])


def test_chat_non_streaming(client, mocks):
    r = client.chat.completions.create(model="alpha-chat", messages=MSGS)
    assert r.choices[0].message.content == REPLY
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "stop"
    assert r.model == "alpha-chat"
    assert r.system_fingerprint == "alpha"
    u = r.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (PROMPT_WORDS, 8, PROMPT_WORDS + 8)
    assert u.prompt_tokens_details.cached_tokens == PROMPT_WORDS // 2
    assert u.completion_tokens_details.reasoning_tokens == 4
    assert [q["path"] for q in mocks["alpha"].requests()] == ["/v1/chat/completions"]
    assert mocks["beta"].requests() == []


def test_chat_streaming_with_usage(client, mocks):
    stream = client.chat.completions.create(
        model="alpha-stream", messages=MSGS, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1] and chunks[-1].choices == []
    u = usage_chunks[0].usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (PROMPT_WORDS, 8, PROMPT_WORDS + 8)
    assert u.prompt_tokens_details.cached_tokens == PROMPT_WORDS // 2
    assert u.completion_tokens_details.reasoning_tokens == 4
    sent = last_body(mocks["alpha"])
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_chat_streaming_without_usage_gets_no_usage_chunk(client, mocks):
    """The filter asks the upstream for usage (stream_include_usage defaults to true) but removes
    the extra usage chunk from what the client receives."""
    chunks = list(client.chat.completions.create(model="alpha-stream-nousage", messages=MSGS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks), "a chunk with empty choices (the usage chunk) reached the client"
    sent = last_body(mocks["alpha"])
    assert sent["stream_options"]["include_usage"] is True
    assert sent["messages"] == MSGS


def test_streaming_raw_sse_wire_format(gw):
    """Bytes on the wire: `data: {...}\\n\\n` events ending with `data: [DONE]`."""
    import llmgw_e2e as e2e

    status, headers, body = e2e.http(
        "POST", gw.url + "/v1/chat/completions",
        {"model": "alpha-raw", "messages": MSGS, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    events = [e for e in body.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert payloads[0]["choices"][0]["delta"]["role"] == "assistant"
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["total_tokens"] == PROMPT_WORDS + 8
    assert len(payloads) == 1 + 8 + 1 + 1  # role, 8 content, finish, usage


def test_completions_legacy(client, mocks):
    r = client.completions.create(model="alpha-instruct", prompt="one two three", max_tokens=5)
    assert r.choices[0].text == "Hello from alpha: this is"
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (3, 5)
    assert mocks["alpha"].requests()[-1]["path"] == "/v1/completions"


def test_completions_streaming(client):
    chunks = list(client.completions.create(model="alpha-instruct", prompt="one two", stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == REPLY
    assert chunks[-1].usage.total_tokens == 2 + 8


def test_embeddings_base64_default(client, mocks):
    """The SDK asks for base64 by default and decodes it."""
    r = client.embeddings.create(model="text-embedding-3-small", input=["first text here", "second"], dimensions=16)
    assert [d.index for d in r.data] == [0, 1]
    assert all(len(d.embedding) == 16 for d in r.data)
    assert all(-1.0 <= x <= 1.0 for d in r.data for x in d.embedding)
    assert (r.usage.prompt_tokens, r.usage.total_tokens) == (4, 4)
    assert r.model == "text-embedding-3-small"
    assert last_body(mocks["alpha"])["encoding_format"] == "base64"


def test_embeddings_float(client):
    r = client.embeddings.create(model="text-embedding-3-large", input="just one input", encoding_format="float")
    assert len(r.data) == 1 and len(r.data[0].embedding) == 8
    assert r.usage.prompt_tokens == 3


def test_embeddings_base64_decodes_to_same_floats(client):
    f = client.embeddings.create(model="text-embedding-x", input="same", encoding_format="float").data[0].embedding
    import llmgw_e2e as e2e  # raw base64 through the gateway, decoded by hand

    gw_url = client.base_url
    status, _, body = e2e.http("POST", f"{gw_url}embeddings",
                               {"model": "text-embedding-x", "input": "same", "encoding_format": "base64"})
    assert status == 200
    raw = base64.b64decode(json.loads(body)["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(f)


def test_models_list_is_answered_by_the_filter(client, mocks):
    ids = [m.id for m in client.models.list()]
    exact = [r["match"]["model"]["exact"] for r in PLUGIN["rules"] if "exact" in r.get("match", {}).get("model", {})]
    assert set(ids) == set(exact) | set(PLUGIN["models"])
    assert len(ids) == len(set(ids)), f"duplicates in {ids}"
    assert mocks["alpha"].requests() == [] and mocks["beta"].requests() == []


def test_models_list_with_query_string(gw):
    import llmgw_e2e as e2e

    status, headers, body = e2e.http("GET", gw.url + "/v1/models?limit=5")
    assert status == 200 and headers["content-type"].startswith("application/json")
    doc = json.loads(body)
    assert doc["object"] == "list" and all(m["object"] == "model" for m in doc["data"])


def test_unknown_model_is_not_found(client, mocks):
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="no-such-model", messages=MSGS)
    assert exc.value.status_code == 404
    assert exc.value.code == "model_not_found"
    assert "no-such-model" in exc.value.message
    assert mocks["alpha"].requests() == [] and mocks["beta"].requests() == []


def test_upstream_openai_error_passes_through(client):
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model="mock-error-429", messages=MSGS)
    assert exc.value.status_code == 429
    assert exc.value.code == "rate_limit_exceeded"
    assert "mock error 429" in exc.value.message


def test_upstream_text_error_is_wrapped(client):
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="mock-error-text", messages=MSGS)
    assert exc.value.status_code == 502
    assert exc.value.code == "upstream_error"
    assert "mock upstream failure: bad gateway" in exc.value.message


def test_upstream_500_is_internal_server_error(client):
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="mock-error-500", messages=MSGS)
    assert exc.value.status_code == 500


def test_stream_abort_then_gateway_still_serves(client):
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="mock-stream-abort", messages=MSGS, stream=True))
    r = client.chat.completions.create(model="alpha-after-abort", messages=MSGS)
    assert r.choices[0].message.content == REPLY


def test_body_mutation_reaches_the_upstream_and_the_answer_is_intact(client, mocks):
    """Backend `delta` sets temperature and service_tier and removes user and stream_options."""
    r = client.chat.completions.create(model="mutated-chat", messages=MSGS, temperature=1.0, user="someone")
    assert r.choices[0].message.content == REPLY and r.usage.total_tokens == PROMPT_WORDS + 8
    raw = mocks["alpha"].requests()[-1]["body"]
    sent = json.loads(raw)
    assert sent["temperature"] == 0.5 and sent["service_tier"] == "flex" and "user" not in sent
    assert sent["messages"] == MSGS and sent["model"] == "mutated-chat"
    # A rule's reference adds its own on top: its remove wins over the backend's set.
    client.chat.completions.create(model="mutated-ref", messages=MSGS, temperature=1.0)
    sent = last_body(mocks["alpha"])
    assert sent["seed"] == 7 and "temperature" not in sent and sent["service_tier"] == "flex"


def test_body_mutation_on_a_stream(client, mocks):
    """stream_options is removed after the gateway asked for usage: the stream itself is intact."""
    chunks = list(client.chat.completions.create(model="mutated-stream", messages=MSGS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    sent = last_body(mocks["alpha"])
    assert sent["stream"] is True and "stream_options" not in sent and sent["temperature"] == 0.5


def test_own_upstream_key_replaces_the_configured_one(client, mocks):
    own = client.with_options(default_headers={"x-upstream-key": "sk-own-upstream-key"})
    r = own.chat.completions.create(model="own-key", messages=MSGS)
    assert r.choices[0].message.content == REPLY
    headers = mocks["alpha"].requests()[-1]["headers"]
    assert headers["authorization"] == "Bearer sk-own-upstream-key"
    assert "x-upstream-key" not in headers
    assert CLIENT_KEY not in json.dumps(headers) and ALPHA_KEY not in json.dumps(headers)
    # Streaming too.
    chunks = list(own.chat.completions.create(model="own-key", messages=MSGS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert mocks["alpha"].requests()[-1]["headers"]["authorization"] == "Bearer sk-own-upstream-key"


def test_missing_required_upstream_key_is_401(client, mocks):
    with pytest.raises(openai.AuthenticationError) as exc:
        client.chat.completions.create(model="own-key", messages=MSGS)
    assert exc.value.status_code == 401
    assert exc.value.code == "missing_upstream_credential"
    assert "x-upstream-key" in exc.value.message and ALPHA_KEY not in exc.value.message
    assert mocks["alpha"].requests() == []


def test_upstream_key_falls_back_to_the_configured_one(client, mocks):
    r = client.chat.completions.create(model="own-or-configured", messages=MSGS)
    assert r.choices[0].message.content == REPLY
    assert mocks["alpha"].requests()[-1]["headers"]["authorization"] == f"Bearer {ALPHA_KEY}"
    own = client.with_options(default_headers={"x-upstream-key": "sk-own-2"})
    own.chat.completions.create(model="own-or-configured", messages=MSGS)
    headers = mocks["alpha"].requests()[-1]["headers"]
    assert headers["authorization"] == "Bearer sk-own-2" and "x-upstream-key" not in headers


# --- Responses, Images, Audio: passed through to OpenAI-compatible backends -----------------------

INPUT = "say hello to the gateway"  # 5 words: the mock's input_tokens


def test_responses_create_plain_and_streaming_count_usage(client, gw, mocks):
    import llmgw_e2e as e2e
    from test_observability import _dump, _scrape_until

    model = "alpha-responses"
    r = client.responses.create(model=model, input=INPUT)
    assert r.object == "response" and r.status == "completed" and r.output_text == REPLY
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (5, 8, 13)
    assert r.usage.input_tokens_details.cached_tokens == 2
    assert r.usage.output_tokens_details.reasoning_tokens == 4
    (req,) = mocks["alpha"].requests()
    assert req["path"] == "/v1/responses" and req["headers"]["authorization"] == f"Bearer {ALPHA_KEY}"
    assert json.loads(req["body"]) == {"model": model, "input": INPUT}

    events = list(client.responses.create(model=model, input=INPUT, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == REPLY
    assert events[-1].response.usage.output_tokens == 8
    sent = json.loads(mocks["alpha"].requests()[-1]["body"])
    assert sent == {"model": model, "input": INPUT, "stream": True}, "a Responses body gets no stream_options"

    common = {"llmgw_backend": "alpha", "gen_ai_request_model": model, "gen_ai_operation_name": "chat"}
    samples, n = _scrape_until(gw, "gen_ai_client_token_usage_count", {**common, "gen_ai_token_type": "output"}, 2)
    assert n == 2, _dump(samples, model)
    s_out = e2e.prom_value(samples, "gen_ai_client_token_usage_sum", **common, gen_ai_token_type="output")
    assert abs(s_out - 16) <= 1, s_out
    assert e2e.prom_value(samples, "gen_ai_server_time_to_first_token_count", **common) == 1


def test_stored_responses_route_by_the_model_header(client, mocks):
    routed = {"x-ai-eg-model": "beta-stored"}
    r = client.responses.retrieve("resp_abc123", extra_headers=routed)
    assert r.id == "resp_abc123" and r.status == "completed"
    items = client.responses.input_items.list("resp_abc123", limit=2, extra_headers=routed)
    assert items.data[0].role == "user"
    assert client.responses.cancel("resp_abc123", extra_headers=routed).status == "cancelled"
    assert client.responses.delete("resp_abc123", extra_headers=routed) is None
    got = [(q["method"], q["path"]) for q in mocks["beta"].requests()]
    assert got == [
        ("GET", "/beta/v1/responses/resp_abc123"),
        ("GET", "/beta/v1/responses/resp_abc123/input_items?limit=2"),
        ("POST", "/beta/v1/responses/resp_abc123/cancel"),
        ("DELETE", "/beta/v1/responses/resp_abc123"),
    ]
    assert all(q["headers"]["authorization"] == f"Bearer {BETA_KEY}" for q in mocks["beta"].requests())
    # This gateway has several OpenAI backends: without the header, the client is told what to send.
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.retrieve("resp_abc123")
    assert "x-ai-eg-model" in exc.value.message
    assert mocks["alpha"].requests() == []


def test_images_generate_and_edit(client, mocks):
    r = client.images.generate(model="alpha-image", prompt="a cat in a hat")
    assert base64.b64decode(r.data[0].b64_json).startswith(b"\x89PNG")
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (5, 272, 277)
    png = base64.b64decode(r.data[0].b64_json)
    e = client.images.edit(model="beta-image-edit", image=("cat.png", png, "image/png"), prompt="add a bow tie")
    assert e.data[0].revised_prompt == "mock edit image: add a bow tie"
    (req,) = mocks["beta"].requests()
    assert req["path"] == "/beta/v1/images/edits"
    assert req["headers"]["content-type"].startswith("multipart/form-data; boundary=")


def test_audio_speech_bytes_arrive_intact(client, mocks):
    speech = client.audio.speech.create(model="alpha-tts", voice="alloy", input="hello there gateway")
    want = bytes((7 * k + 3) % 256 for k in range(65_536 + 3))
    assert speech.content == want
    assert speech.response.headers["content-type"] == "audio/mpeg"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks translations deprecated
def test_audio_transcriptions_and_translations_are_routed_by_their_model_part(client, mocks):
    audio = b"ID3" + bytes(range(256)) * 64 + b"\r\n--not-a-boundary\r\n"
    t = client.audio.transcriptions.create(model="beta-whisper", file=("talk.mp3", audio, "audio/mpeg"))
    assert t.text == f"mock transcription of talk.mp3 ({len(audio)} bytes) by beta-whisper"
    tr = client.audio.translations.create(model="alpha-whisper", file=("talk.mp3", audio, "audio/mpeg"))
    assert tr.text.endswith("by alpha-whisper")
    (beta,) = mocks["beta"].requests()
    (alpha,) = mocks["alpha"].requests()
    assert (beta["path"], alpha["path"]) == ("/beta/v1/audio/transcriptions", "/v1/audio/translations")
    assert beta["body_len"] == int(beta["headers"]["content-length"])
    # A form without a model part is refused before any backend sees it.
    import llmgw_e2e as e2e

    no_model = b"--b0\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\n\r\nID3\r\n--b0--\r\n"
    status, _, body = e2e.http("POST", str(client.base_url) + "audio/transcriptions", no_model,
                               {"content-type": "multipart/form-data; boundary=b0"})
    assert (status, json.loads(body)["error"]["code"]) == (400, "missing_model")
    assert mocks["alpha"].requests() == [alpha] and mocks["beta"].requests() == [beta]


def test_unknown_v1_path_lists_every_served_endpoint(gw):
    import llmgw_e2e as e2e

    status, _, body = e2e.http("POST", gw.url + "/v1/files", {"purpose": "batch"})
    assert status == 404
    message = json.loads(body)["error"]["message"]
    for path in ("/v1/chat/completions", "/v1/responses", "/v1/responses/{id}/input_items", "/v1/images/edits",
                 "/v1/audio/speech", "/v1/audio/transcriptions", "/v1/messages/count_tokens",
                 "/anthropic/v1/messages", "/anthropic/v1/models"):
        assert path in message.split("served: ")[1].split(", "), message
