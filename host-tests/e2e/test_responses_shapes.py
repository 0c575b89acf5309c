"""The Responses answers the filter writes for Anthropic backends, checked against the official
`openai` SDK's pydantic models (strict validation, not the SDK's lenient construction). The
fixtures are the filter's golden files (filter/tests/fixtures/responses-anthropic/), which its unit
tests compare byte for byte with what the translator writes; no Envoy needed."""

import json
from pathlib import Path

import pytest
from pydantic import TypeAdapter

from openai.types.responses import Response, ResponseStreamEvent

FIXTURES = Path(__file__).resolve().parents[2] / "filter/tests/fixtures/responses-anthropic"


def sse_events(text):
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        yield lines["event"], json.loads(lines["data"])


@pytest.mark.parametrize("name", ["response.expected.json", "response-max-tokens.expected.json"])
def test_response_objects_validate(name):
    body = json.loads((FIXTURES / name).read_text())
    response = Response.model_validate(body)
    assert response.object == "response"
    assert response.usage is not None and response.usage.total_tokens > 0
    if name == "response.expected.json":
        assert response.output_text == "Checking the weather…"
        kinds = [item.type for item in response.output]
        assert kinds == ["reasoning", "message", "function_call"]
        assert json.loads(response.output[2].arguments) == {"city": "Paris"}
    else:
        assert response.status == "incomplete"
        assert response.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize("name", ["response.expected.sse", "stream-error.expected.sse"])
def test_stream_events_validate(name):
    adapter = TypeAdapter(ResponseStreamEvent)
    events = [adapter.validate_python(data) for _, data in sse_events((FIXTURES / name).read_text())]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    if name == "response.expected.sse":
        assert events[-1].type == "response.completed"
        assert events[-1].response.output_text == text == 'Hello "world" é'
        args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
        assert json.loads(args) == {"city": "Paris"}
    else:
        assert [e.type for e in events[-2:]] == ["error", "response.failed"]
        assert events[-1].response.error.message == "Overloaded"
