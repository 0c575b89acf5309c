//! Scenarios: token usage from JSON and SSE responses (split at every byte offset), injected
//! `include_usage`, filter state and metrics.

mod common;

use anyhow::{anyhow, ensure, Result};
use common::{chat, no_violations, plugin, post, CHAT};
use llmgw_host_tests::{stats, Metrics, Plugin, Stream};
use serde_json::{json, Value};

const CONFIG: &str = "backends: [{name: openai, schema: OpenAI}]";

const CHUNKS: &[&str] = &[
    r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
    r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#,
    r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"lo, wörld"},"finish_reason":null}]}"#,
    r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
];
const USAGE_CHUNK: &str = r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13,"prompt_tokens_details":{"cached_tokens":3},"completion_tokens_details":{"reasoning_tokens":1}}}"#;

/// An SSE body as OpenAI sends it; `eol` is the line ending.
fn sse(with_usage: bool, eol: &str) -> Vec<u8> {
    let mut out = String::new();
    for c in CHUNKS {
        out.push_str(&format!("data: {c}{eol}{eol}"));
    }
    if with_usage {
        out.push_str(&format!("data: {USAGE_CHUNK}{eol}{eol}"));
    }
    out.push_str(&format!("data: [DONE]{eol}{eol}"));
    out.into_bytes()
}

fn stream_request(include_usage: Option<bool>) -> Vec<u8> {
    let mut v = json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    if let Some(u) = include_usage {
        v["stream_options"] = json!({"include_usage": u});
    }
    v.to_string().into_bytes()
}

const SSE_HEADERS: &[(&str, &str)] = &[(":status", "200"), ("content-type", "text/event-stream")];

/// One streaming exchange with the response given in `chunks`; returns (forwarded response
/// body, forwarded request body, stream id).
fn exchange(p: &mut Plugin, request: &[u8], chunks: &[&[u8]]) -> Result<(Vec<u8>, Vec<u8>, u32)> {
    let len = request.len().to_string();
    let mut s = p.stream();
    let headers = [(":method", "POST"), (":path", CHAT), (":authority", "g"), ("content-length", &len)];
    s.send_request(&headers, request)?;
    ensure!(s.request_complete() && s.local_reply().is_none(), "not routed: {:?}", s.local_reply());
    s.response_headers(SSE_HEADERS, false)?;
    for (i, c) in chunks.iter().enumerate() {
        s.response_body(c, i + 1 == chunks.len())?;
    }
    ensure!(s.response_complete(), "response did not complete");
    s.finish()?;
    Ok((s.forwarded_response_body().to_vec(), s.forwarded_request_body().to_vec(), s.id()))
}

fn tokens(p: &mut Plugin, id: u32) -> Result<(String, String, String)> {
    let s = p.resume(id).ok_or_else(|| anyhow!("stream {id}"))?;
    let get = |k: &str| s.property_str(&[k]).map(str::to_string).ok_or_else(|| anyhow!("no {k} filter state"));
    Ok((get("llm_input_token")?, get("llm_output_token")?, get("llm_total_token")?))
}

fn expect_tokens(p: &mut Plugin, id: u32, want: (u64, u64, u64)) -> Result<()> {
    let got = tokens(p, id)?;
    let want = (want.0.to_string(), want.1.to_string(), want.2.to_string());
    ensure!(got == want, "filter state {got:?}, want {want:?}");
    Ok(())
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn sse_split_at_every_offset_passes_bytes_through_when_the_client_asked_for_usage() -> Result<()> {
    let mut p = plugin(CONFIG)?;
    let request = stream_request(Some(true));
    for eol in ["\n", "\r\n"] {
        let body = sse(true, eol);
        for k in 0..=body.len() {
            let (out, fwd_req, id) = exchange(&mut p, &request, &[&body[..k], &body[k..]])?;
            ensure!(fwd_req == request, "request rewritten although usage was asked for: {}", show(&fwd_req));
            ensure!(out == body, "split at {k} ({eol:?}): forwarded\n{}\nwant\n{}", show(&out), show(&body));
            expect_tokens(&mut p, id, (9, 4, 13)).map_err(|e| anyhow!("split at {k} ({eol:?}): {e}"))?;
        }
    }
    no_violations(&p)
}

#[test]
fn sse_fed_one_byte_at_a_time() -> Result<()> {
    let mut p = plugin(CONFIG)?;
    let body = sse(true, "\n");
    let bytes: Vec<&[u8]> = body.chunks(1).chain([&b""[..]]).collect();
    let (out, _, id) = exchange(&mut p, &stream_request(Some(true)), &bytes)?;
    ensure!(out == body, "forwarded\n{}", show(&out));
    expect_tokens(&mut p, id, (9, 4, 13))?;

    // Injected usage, byte by byte: the usage chunk disappears.
    let (out, _, id) = exchange(&mut p, &stream_request(None), &bytes)?;
    ensure!(out == sse(false, "\n"), "forwarded\n{}", show(&out));
    expect_tokens(&mut p, id, (9, 4, 13))?;
    no_violations(&p)
}

#[test]
fn include_usage_is_injected_and_its_chunk_removed_at_every_offset() -> Result<()> {
    let mut p = plugin(CONFIG)?;
    let request = stream_request(None);
    let upstream = sse(true, "\n");
    let want = sse(false, "\n");
    for k in 0..=upstream.len() {
        let (out, fwd_req, id) = exchange(&mut p, &request, &[&upstream[..k], &upstream[k..]])?;
        if k == 0 {
            let v: Value = serde_json::from_slice(&fwd_req)?;
            ensure!(v["stream_options"]["include_usage"] == true, "not injected: {v}");
            ensure!(v["model"] == "gpt-4o" && v["stream"] == true && v["messages"][0]["content"] == "hi", "{v}");
        }
        ensure!(out == want, "split at {k}: forwarded\n{}\nwant\n{}", show(&out), show(&want));
        expect_tokens(&mut p, id, (9, 4, 13)).map_err(|e| anyhow!("split at {k}: {e}"))?;
    }
    no_violations(&p)
}

#[test]
fn injection_keeps_other_stream_options_and_can_be_disabled() -> Result<()> {
    let mut p = plugin(CONFIG)?;
    let request = br#"{"model":"gpt-4o","stream":true,"stream_options":{"other":1},"messages":[]}"#;
    let s = post(&mut p, CHAT, &[], request)?;
    let v = s.json()?;
    ensure!(v["stream_options"] == json!({"other": 1, "include_usage": true}), "{v}");
    // Not streaming: nothing to inject.
    let request = br#"{"model":"gpt-4o","messages":[]}"#;
    ensure!(post(&mut p, CHAT, &[], request)?.body == request);

    let mut p = plugin("backends: [{name: openai, schema: OpenAI}]\nstream_include_usage: false")?;
    let request = stream_request(None);
    let body = sse(false, "\n");
    let (out, fwd_req, id) = exchange(&mut p, &request, &[&body])?;
    ensure!(fwd_req == request && out == body);
    let s = p.resume(id).ok_or_else(|| anyhow!("stream"))?;
    ensure!(s.property(&["llm_total_token"]).is_none(), "usage invented");
    Ok(())
}

/// The samples of a metric given by its Prometheus name, with these labels.
fn samples(m: &Metrics, prometheus: &str, labels: &[(&str, &str)]) -> Vec<u64> {
    m.all()
        .into_iter()
        .filter(|x| {
            let t = stats::parse(&x.name);
            t.metric.replace('.', "_") == prometheus && labels.iter().all(|(k, v)| t.label(k) == Some(v))
        })
        .flat_map(|x| x.samples.iter().copied())
        .collect()
}

#[test]
fn non_streaming_usage_sets_filter_state_and_metrics() -> Result<()> {
    let mut p = plugin(CONFIG)?;
    let response = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42,
                  "prompt_tokens_details": {"cached_tokens": 5},
                  "completion_tokens_details": {"reasoning_tokens": 20}}
    })
    .to_string()
    .into_bytes();
    let mut s = p.stream();
    s.send_request(&[(":method", "POST"), (":path", CHAT), (":authority", "g")], &chat("gpt-4o"))?;
    s.plugin().advance_clock(250);
    let len = response.len().to_string();
    s.response_headers(&[(":status", "200"), ("content-type", "application/json"), ("content-length", &len)], false)?;
    let (a, b) = response.split_at(17);
    let (b, c) = b.split_at(40);
    s.response_body(a, false)?;
    s.response_body(b, false)?;
    s.response_body(c, true)?;
    ensure!(s.forwarded_response_body() == response, "{}", show(s.forwarded_response_body()));
    let id = s.id();
    s.finish()?;
    expect_tokens(&mut p, id, (12, 30, 42))?;

    let m = p.metrics();
    let common = [("llmgw_backend", "openai"), ("gen_ai_request_model", "gpt-4o"), ("gen_ai_operation_name", "chat")];
    let with = |kind: &'static str| {
        let mut l = common.to_vec();
        l.push(("gen_ai_token_type", kind));
        l
    };
    let input = samples(m, "gen_ai_client_token_usage", &with("input"));
    let output = samples(m, "gen_ai_client_token_usage", &with("output"));
    ensure!(input == [12] && output == [30], "token usage {input:?} {output:?}: {:#?}", m.all());
    ensure!(samples(m, "gen_ai_server_request_duration", &common) == [250], "{:#?}", m.all());
    ensure!(samples(m, "gen_ai_server_time_to_first_token", &[]).is_empty(), "TTFT on a non-streaming request");
    let ok = m.find("llmgw.requests_total", &[("outcome", "success")]);
    let total: i64 = m
        .all()
        .iter()
        .filter(|x| {
            let t = stats::parse(&x.name);
            t.metric.replace('.', "_") == "llmgw_requests_total"
                && t.label("outcome") == Some("success")
                && common.iter().all(|(k, v)| t.label(k) == Some(v))
        })
        .map(|x| x.value)
        .sum();
    ensure!(total == 1, "requests_total {ok:?} / {:#?}", m.all());
    no_violations(&p)
}

#[test]
fn streaming_latency_metrics() -> Result<()> {
    let mut p = plugin(CONFIG)?;
    let body = sse(true, "\n");
    let events: Vec<&[u8]> = body.split_inclusive(|b| *b == b'\n').filter(|l| l != b"\n").collect();
    let mut s = p.stream();
    s.send_request(&[(":method", "POST"), (":path", CHAT), (":authority", "g")], &stream_request(Some(true)))?;
    s.plugin().advance_clock(40);
    s.response_headers(SSE_HEADERS, false)?;
    // Headers at 40 ms; the role chunk and the first content together at 100 ms (so "first
    // token" means the same whether or not an empty role chunk counts); then 100 ms per event.
    let mut at = 40;
    let mut first = events[0].to_vec();
    first.push(b'\n');
    first.extend_from_slice(events[1]);
    first.push(b'\n');
    s.plugin().advance_clock(60);
    at += 60;
    s.response_body(&first, false)?;
    for e in &events[2..] {
        let mut chunk = e.to_vec();
        chunk.push(b'\n');
        s.plugin().advance_clock(100);
        at += 100;
        s.response_body(&chunk, false)?;
    }
    s.response_body(b"", true)?;
    s.finish()?;
    ensure!(at == 500, "{at}");
    let m = p.metrics();
    let l = [("llmgw_backend", "openai"), ("gen_ai_request_model", "gpt-4o"), ("gen_ai_operation_name", "chat")];
    let ttft = samples(m, "gen_ai_server_time_to_first_token", &l);
    let duration = samples(m, "gen_ai_server_request_duration", &l);
    let tpot = samples(m, "gen_ai_server_time_per_output_token", &l);
    ensure!(ttft == [100], "TTFT {ttft:?}");
    ensure!(duration == [500], "duration {duration:?}");
    // (500 - 100) ms over the 4 - 1 tokens after the first.
    ensure!(tpot == [133], "TPOT {tpot:?}");
    Ok(())
}

#[test]
fn other_endpoints_report_usage_too() -> Result<()> {
    let mut p = plugin(CONFIG)?;
    let embeddings = br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1]}],"model":"e","usage":{"prompt_tokens":8,"total_tokens":8}}"#;
    let mut s = p.stream();
    s.send_request(
        &[(":method", "POST"), (":path", "/v1/embeddings"), (":authority", "g")],
        br#"{"model":"e","input":"a b c"}"#,
    )?;
    s.send_response(&[(":status", "200"), ("content-type", "application/json")], &[embeddings])?;
    ensure!(s.forwarded_response_body() == embeddings);
    ensure!(s.property_str(&["llm_input_token"]) == Some("8") && s.property_str(&["llm_total_token"]) == Some("8"));
    s.finish()?;
    let op = samples(p.metrics(), "gen_ai_client_token_usage", &[("gen_ai_operation_name", "embeddings")]);
    ensure!(op.contains(&8), "{:#?}", p.metrics().all());

    // Legacy completions, streaming, usage injected.
    let upstream = "data: {\"id\":\"x\",\"object\":\"text_completion\",\"choices\":[{\"text\":\"hi\",\"index\":0}]}\n\ndata: {\"id\":\"x\",\"object\":\"text_completion\",\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1,\"total_tokens\":3}}\n\ndata: [DONE]\n\n";
    let mut s = p.stream();
    s.send_request(
        &[(":method", "POST"), (":path", "/v1/completions"), (":authority", "g")],
        br#"{"model":"m","prompt":"x","stream":true}"#,
    )?;
    let fwd: Value = serde_json::from_slice(s.forwarded_request_body())?;
    ensure!(fwd["stream_options"]["include_usage"] == true, "{fwd}");
    s.send_response(SSE_HEADERS, &[upstream.as_bytes()])?;
    let want = "data: {\"id\":\"x\",\"object\":\"text_completion\",\"choices\":[{\"text\":\"hi\",\"index\":0}]}\n\ndata: [DONE]\n\n";
    ensure!(s.forwarded_response_body() == want.as_bytes(), "{}", show(s.forwarded_response_body()));
    ensure!(s.property_str(&["llm_total_token"]) == Some("3"));
    s.finish()?;
    let op = samples(p.metrics(), "gen_ai_client_token_usage", &[("gen_ai_operation_name", "text_completion")]);
    ensure!(op == [2, 1] || op == [1, 2], "{op:?}");
    no_violations(&p)
}

#[test]
fn metric_labels_are_bounded_and_sanitized() -> Result<()> {
    let mut p = plugin("backends: [{name: openai, schema: OpenAI}]\nmax_metric_label_sets: 2")?;
    for model in ["m1", "m2", "m3", "m1", "a;b=c"] {
        let mut s = p.stream();
        s.send_request(&[(":method", "POST"), (":path", CHAT), (":authority", "g")], &chat(model))?;
        s.send_response(&[(":status", "200"), ("content-type", "application/json")], &[br#"{"choices":[]}"#])?;
        s.finish()?;
    }
    let m = p.metrics();
    let mut models: Vec<String> = m
        .all()
        .iter()
        .filter_map(|x| stats::parse(&x.name).label("gen_ai_request_model").map(str::to_string))
        .collect();
    models.sort();
    models.dedup();
    ensure!(models == ["m1", "m2", "other"], "{models:?}");
    for x in m.all() {
        let t = stats::parse(&x.name);
        ensure!(t.labels.iter().all(|(_, v)| !v.contains([';', '='])), "{}", x.name);
    }

    let mut p = plugin(CONFIG)?;
    let mut s = p.stream();
    s.send_request(&[(":method", "POST"), (":path", CHAT), (":authority", "g")], &chat("a;b=c"))?;
    s.send_response(&[(":status", "200"), ("content-type", "application/json")], &[br#"{"choices":[]}"#])?;
    s.finish()?;
    let found = p.metrics().find("llmgw.requests_total", &[("gen_ai_request_model", "a_b_c")]);
    ensure!(
        !found.is_empty()
            || !samples(p.metrics(), "gen_ai_server_request_duration", &[("gen_ai_request_model", "a_b_c")]).is_empty(),
        "{:#?}",
        p.metrics().all()
    );
    Ok(())
}

#[test]
fn an_sse_content_length_never_disagrees_with_the_body() -> Result<()> {
    let mut p = plugin(CONFIG)?;
    let upstream = sse(true, "\n");
    let len = upstream.len().to_string();
    let mut s = p.stream();
    s.send_request(&[(":method", "POST"), (":path", CHAT), (":authority", "g")], &stream_request(None))?;
    s.response_headers(&[(":status", "200"), ("content-type", "text/event-stream"), ("content-length", &len)], false)?;
    let (a, b) = upstream.split_at(upstream.len() / 2);
    s.response_body(a, false)?;
    s.response_body(b, true)?;
    let out = s.forwarded_response_body().to_vec();
    ensure!(out == sse(false, "\n"), "{}", show(&out));
    let cl = s.forwarded_response_headers().and_then(|h| h.get("content-length"));
    ensure!(
        cl.is_none() || cl == Some(out.len().to_string().as_str()),
        "content-length {cl:?} for {} bytes",
        out.len()
    );
    Ok(())
}

#[test]
fn interleaved_streams_keep_their_own_state() -> Result<()> {
    let mut p = plugin(CONFIG)?;
    let req = |model: &str| json!({"model": model, "stream": true, "messages": []}).to_string().into_bytes();
    let usage = |n: u64| {
        format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"x\"}}}}]}}\n\ndata: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":{n},\"completion_tokens\":{n},\"total_tokens\":{}}}}}\n\ndata: [DONE]\n\n",
            2 * n
        )
        .into_bytes()
    };
    let headers = [(":method", "POST"), (":path", CHAT), (":authority", "g")];
    let (a, b) = (p.stream().id(), p.stream().id());
    let (ra, rb) = (req("model-a"), req("model-b"));
    let (ua, ub) = (usage(3), usage(7));
    on(&mut p, a)?.request_headers(&headers, false)?;
    on(&mut p, b)?.request_headers(&headers, false)?;
    on(&mut p, a)?.request_body(&ra[..10], false)?;
    on(&mut p, b)?.request_body(&rb, true)?;
    on(&mut p, a)?.request_body(&ra[10..], true)?;
    on(&mut p, b)?.response_headers(SSE_HEADERS, false)?;
    on(&mut p, a)?.response_headers(SSE_HEADERS, false)?;
    on(&mut p, b)?.response_body(&ub[..30], false)?;
    on(&mut p, a)?.response_body(&ua, true)?;
    on(&mut p, b)?.response_body(&ub[30..], true)?;
    for (id, model, n) in [(a, "model-a", 3), (b, "model-b", 7)] {
        let s = on(&mut p, id)?;
        ensure!(s.forwarded_request_headers().and_then(|h| h.get("x-ai-eg-model")) == Some(model));
        ensure!(s.property_str(&["llm_total_token"]) == Some((2 * n).to_string().as_str()), "stream {model}");
    }
    no_violations(&p)
}

fn on(p: &mut Plugin, id: u32) -> Result<Stream<'_>> {
    p.resume(id).ok_or_else(|| anyhow!("no stream {id}"))
}
