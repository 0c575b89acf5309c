"""Request validation and body size limits (Envoy buffer limits vs the filter's own 413)."""

from __future__ import annotations

import http.client
import json

import llmgw_e2e as e2e

MIB = 1 << 20


def post_big(gw, size: int, model: str) -> tuple[int, bytes]:
    """POST a chat request whose body is about `size` bytes; tolerate the server answering and
    closing before the whole body was sent."""
    head = json.dumps({"model": model, "messages": [{"role": "user", "content": ""}]})
    prefix, suffix = head[:-4], head[-4:]  # split inside the empty content string: ...""}]}
    filler = size - len(head)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=60)
    try:
        conn.putrequest("POST", "/v1/chat/completions")
        conn.putheader("content-type", "application/json")
        conn.putheader("content-length", str(len(head) + filler))
        conn.endheaders()
        try:
            conn.send(prefix.encode())
            block = b"x" * MIB
            left = filler
            while left > 0:
                conn.send(block[: min(left, MIB)])
                left -= min(left, MIB)
            conn.send(suffix.encode())
        except (BrokenPipeError, ConnectionResetError):
            pass
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_10_mib_body_passes_envoy_buffer_limits(gw, mocks):
    status, body = post_big(gw, 10 * MIB, "alpha-big")
    assert status == 200, body[:300]
    (q,) = mocks["alpha"].requests()
    assert q["body_len"] == 10 * MIB


def test_30_mib_body_passes(gw, mocks):
    status, body = post_big(gw, 30 * MIB, "alpha-bigger")
    assert status == 200, body[:300]
    assert mocks["alpha"].requests()[-1]["body_len"] == 30 * MIB


def test_over_32_mib_is_the_filters_413(gw, mocks):
    status, body = post_big(gw, 33 * MIB, "alpha-too-big")
    assert status == 413, body[:300]
    err = json.loads(body)["error"]
    assert err["code"] == "request_too_large"
    assert mocks["alpha"].requests() == []


def _err(status_body):
    status, headers, body = status_body
    return status, headers, json.loads(body)["error"]


def test_invalid_json_is_400(gw, mocks):
    status, _, err = _err(e2e.http("POST", gw.url + "/v1/chat/completions", b"{not json"))
    assert status == 400 and err["code"] == "invalid_request" and err["message"]
    assert mocks["alpha"].requests() == []


def test_missing_model_is_400(gw):
    status, _, err = _err(e2e.http("POST", gw.url + "/v1/chat/completions", {"messages": []}))
    assert status == 400 and err["code"] == "missing_model"


def test_non_boolean_stream_is_400(gw):
    status, _, err = _err(e2e.http("POST", gw.url + "/v1/chat/completions",
                                   {"model": "alpha-x", "stream": "yes", "messages": []}))
    assert status == 400 and err["code"] == "invalid_request"


def test_wrong_method_is_405_with_allow(gw):
    status, headers, err = _err(e2e.http("GET", gw.url + "/v1/chat/completions"))
    assert status == 405 and err["code"] == "method_not_allowed"
    assert headers.get("allow") == "POST"


def test_unknown_v1_endpoint_is_404(gw):
    status, _, err = _err(e2e.http("POST", gw.url + "/v1/batches", {"model": "alpha-x"}))
    assert status == 404 and err["code"] == "unknown_endpoint"


def test_large_response_is_buffered_and_counted(gw, mocks):
    """A ~20 MB embeddings response (over Envoy's default 1 MiB buffer) goes through whole, and its
    usage is still read."""
    status, _, body = e2e.http("POST", gw.url + "/v1/embeddings",
                               {"model": "text-embedding-big", "input": ["w"] * 128, "dimensions": 4096,
                                "encoding_format": "float"}, timeout=120)
    assert status == 200, body[:300]
    assert len(body) > 8 * MIB
    doc = json.loads(body)
    assert len(doc["data"]) == 128 and all(len(d["embedding"]) == 4096 for d in doc["data"])
    assert doc["usage"]["prompt_tokens"] == 128
    hits = gw.wait_access_log(lambda e: e.get("model") == "text-embedding-big")
    assert hits and hits[0]["input_tokens"] == "128", hits
