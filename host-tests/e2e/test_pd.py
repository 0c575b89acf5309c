"""Prefill/decode disaggregation (issue 14, AIBrix's `pd` routing) on real Envoy:
`ROUTING_ALGORITHM=pd llmgw run --endpoints endpoints.yaml` with AIBrix `rolesets` over mock vLLM
servers in the prefill and decode roles (`mock-provider --kv-role`). The filter sends the prefill
itself (one token, not streamed, `kv_transfer_params` asking for a remote decode) to a prefill
endpoint, then the client's request, carrying the prefill's answered `kv_transfer_params`, to a
decode endpoint; the decode mock refuses params that are not a prefill's answer for that prompt and
says where it pulled the KV cache from in `x-mock-kv-source`."""

from __future__ import annotations

import json

import openai
import pytest

import llmgw_e2e as e2e


@pytest.fixture(scope="module")
def pd(tmp_path_factory):
    d = tmp_path_factory.mktemp("pd")
    mocks = {}
    run = None
    try:
        for name in ("p1", "p2"):
            mocks[name] = e2e.Mock(name, "--kv-role", "prefill", "--prefill-ms", "100")
        for name in ("d1", "d2"):
            mocks[name] = e2e.Mock(name, "--kv-role", "decode", "--prefill-ms", "100")
        ep = lambda *names: [f"127.0.0.1:{mocks[n].port}" for n in names]  # noqa: E731
        endpoints = d / "endpoints.yaml"
        endpoints.write_text(json.dumps({"models": [
            {"name": "qwen-pd", "engine": "vllm",
             "rolesets": [{"name": "a", "prefill": ep("p1"), "decode": ep("d1")},
                          {"name": "b", "prefill": ep("p2"), "decode": ep("d2")}]},
            # A prefill endpoint nobody listens on.
            {"name": "qwen-pd-broken",
             "rolesets": [{"name": "c", "prefill": [f"127.0.0.1:{e2e.free_port()}"], "decode": ep("d1")}]},
        ]}))
        # `--endpoints FILE`: AIBrix's static file (LlmgwRun passes the path as the config argument;
        # the format is recognised from the file's shape).
        run = e2e.LlmgwRun(endpoints, {"ROUTING_ALGORITHM": "pd"}, name="llmgw-pd", concurrency=2)
        yield {"run": run, "mocks": mocks}
    finally:
        if run:
            run.stop()
        for m in mocks.values():
            m.stop()


def client(pd) -> openai.OpenAI:
    return openai.OpenAI(base_url=pd["run"].url + "/v1", api_key="unused", max_retries=0)


def clear(pd) -> None:
    for m in pd["mocks"].values():
        m.clear()


def prefills(pd) -> list[dict]:
    return [json.loads(r["body"]) for n in ("p1", "p2") for r in pd["mocks"][n].requests()]


def decodes(pd) -> list[dict]:
    return [json.loads(r["body"]) for n in ("d1", "d2") for r in pd["mocks"][n].requests()]


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_is_prefilled_then_decoded_with_the_prefills_kv_cache(pd, stream):
    clear(pd)
    messages = [{"role": "user", "content": f"Explain disaggregated serving (stream={stream}) in one line."}]
    c = client(pd)
    # A client's own kv_transfer_params are replaced by the prefill's.
    evil = {"kv_transfer_params": {"remote_engine_id": "evil", "remote_host": "10.9.9.9"}}
    if stream:
        raw = c.chat.completions.with_raw_response.create(
            model="qwen-pd", messages=messages, max_tokens=20, stream=True,
            stream_options={"include_usage": True}, extra_body=evil)
        chunks = list(raw.parse())
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        usage = chunks[-1].usage
    else:
        raw = c.chat.completions.with_raw_response.create(
            model="qwen-pd", messages=messages, max_tokens=20, extra_body=evil)
        done = raw.parse()
        text, usage = done.choices[0].message.content, done.usage
    # The client sees the decoder's whole answer, not the prefill's one token.
    assert raw.headers["x-mock-name"] in ("d1", "d2")
    assert text.startswith("Hello from d"), text
    assert usage.completion_tokens == 8
    # The decoder pulled this prompt's blocks from a prefill engine.
    source = raw.headers["x-mock-kv-source"]
    assert source.split("/")[0] in ("p1", "p2"), source
    [prefill] = prefills(pd)
    assert prefill["max_tokens"] == 1 and prefill["stream"] is False and "stream_options" not in prefill
    assert prefill["kv_transfer_params"]["do_remote_decode"] is True
    assert prefill["messages"] == messages
    [decode] = decodes(pd)
    assert decode["kv_transfer_params"]["remote_engine_id"] == source.split("/")[0]
    assert decode.get("stream", False) is stream and decode["max_tokens"] == 20


def test_prefill_and_decode_spread_and_counters_return_to_zero(pd):
    clear(pd)
    c = client(pd)
    for i in range(8):
        c.chat.completions.create(model="qwen-pd", messages=[{"role": "user", "content": f"question {i}"}])
    served = lambda names: {n: len(pd["mocks"][n].requests()) for n in names}  # noqa: E731
    # Sequential requests: least-request ties are broken at random, so both of each role serve.
    assert sum(served(("p1", "p2")).values()) == 8 and min(served(("p1", "p2")).values()) >= 1
    assert sum(served(("d1", "d2")).values()) == 8 and min(served(("d1", "d2")).values()) >= 1
    # Every prefill and decode endpoint counted, and released (the llmgw_picker_in_flight gauge).
    body = e2e.http("GET", f"http://127.0.0.1:{pd['run'].admin}/metrics?filter=picker_in_flight")[2].decode()
    gauges = {ls["llmgw_endpoint"]: v for n, ls, v in e2e.parse_prometheus(body) if n == "llmgw_picker_in_flight"
              and ls["llmgw_backend"] == "qwen-pd"}
    ports = {f"127.0.0.1:{pd['mocks'][n].port}" for n in ("p1", "p2", "d1", "d2")}
    assert set(gauges) == ports and set(gauges.values()) == {0}, gauges


def test_a_failed_prefill_leaves_the_decoder_to_compute_the_prompt(pd):
    """The prefill endpoint refuses connections: the decode endpoint answers from the prompt
    alone, and the client's own kv_transfer_params (they name hosts to pull memory from) never
    reach it."""
    clear(pd)
    evil = {"do_remote_prefill": True, "remote_engine_id": "evil", "remote_block_ids": [1],
            "remote_host": "10.9.9.9", "remote_port": 1}
    raw = client(pd).chat.completions.with_raw_response.create(
        model="qwen-pd-broken", messages=[{"role": "user", "content": "hi"}], extra_body={"kv_transfer_params": evil})
    assert raw.parse().choices[0].message.content.startswith("Hello from d1")
    assert "x-mock-kv-source" not in raw.headers
    [decode] = decodes(pd)
    assert "kv_transfer_params" not in decode, decode
    assert "prefill on" in pd["run"].log_path.read_text(errors="replace")
