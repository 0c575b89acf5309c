//! `mock-provider`: a small, deterministic OpenAI-compatible server for e2e tests and benchmarks.
//!
//! ```text
//! mock-provider --port 0 --name openai [--chunks 8] [--chunk-gap-ms 0] [--models a,b]
//! ```
//!
//! The first stdout line is `listening 127.0.0.1:PORT`.
//!
//! Endpoints (any path prefix, the suffix decides):
//! * `POST …/chat/completions` — JSON, or SSE when `"stream": true` (role chunk, one content chunk
//!   per completion token, finish chunk, then — when `stream_options.include_usage` is true — a
//!   chunk with `"choices":[]` and `usage`, then `data: [DONE]`).
//! * `POST …/completions` — legacy text completions, JSON or SSE likewise.
//! * `POST …/embeddings` — float vectors (or base64 when `encoding_format: "base64"`).
//! * `GET …/models` — a model list.
//! * The Responses, Images and Audio APIs: see `mock_provider/openai_apis.rs`.
//! * `GET /__mock/requests` — every request received so far (JSON array);
//!   `DELETE /__mock/requests` clears it. `GET /__mock/health` answers `ok`.
//!
//! Deterministic usage, so tests can assert numbers:
//! * `prompt_tokens` = number of whitespace-separated words in the text input (chat message
//!   contents, `prompt`, or embeddings `input`; a token array counts its length), at least 1.
//! * `completion_tokens` = number of reply words = `--chunks` (header `x-mock-chunks` overrides),
//!   capped by `max_completion_tokens`/`max_tokens` when given (then `finish_reason` is `length`).
//!   Like OpenAI, o-series models (`o1…`, `o3-mini`, …) refuse `max_tokens` on chat completions
//!   (400 `unsupported_parameter`): they take `max_completion_tokens` only.
//! * `total_tokens` = prompt + completion; `prompt_tokens_details.cached_tokens` = prompt / 2;
//!   `completion_tokens_details.reasoning_tokens` = completion / 2 (integer division).
//!
//! The reply text is the words `Hello from NAME: this is a mock reply.` then `w8 w9 …`.
//! The server name is in the response header `x-mock-name` and in `system_fingerprint`.
//!
//! Special models for error tests: `mock-error-NNN` answers status NNN with an OpenAI error JSON,
//! `mock-error-text` answers 502 with a plain-text body, `mock-stream-abort` (streaming) sends two
//! content chunks then resets the connection. Header `x-mock-delay-ms` delays the response head.
//! For fallback tests, `--fail-status N [--retry-after S]` answers every API request with N, and
//! `--delay-ms N` delays every response head.
//!
//! vLLM (the picker's tests, `mock_provider/vllm.rs`): `GET /metrics` reports requests running
//! (`vllm:num_requests_running`, until the response body ends or is dropped) and the simulated
//! prefix cache; `--prefill-ms N` delays a response head by N ms scaled by the share of the prompt
//! (`--prefix-block-bytes` blocks) this server has not seen before; `--chunk-gap-ms` is the time
//! per output token. `--kv-role prefill|decode`: vLLM prefill/decode disaggregation
//! (`kv_transfer_params`, see `mock_provider/pd.rs`).
//! per output token; `--gpu-cache-usage F` fixes the reported `vllm:gpu_cache_usage_perc`.

#[path = "mock_provider/anthropic.rs"]
mod anthropic;
#[path = "mock_provider/bedrock.rs"]
mod bedrock;
#[path = "mock_provider/gemini.rs"]
mod gemini;
#[path = "mock_provider/openai_apis.rs"]
mod openai_apis;
#[path = "mock_provider/pd.rs"]
mod pd;
#[path = "mock_provider/vllm.rs"]
mod vllm;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Largest request body read (bigger ones get 413 from the mock itself).
const MAX_BODY: usize = 128 << 20;
/// Recorded body text is cut after this many bytes (`body_len` keeps the real length).
const MAX_RECORDED_BODY: usize = 1 << 20;
/// Upper bound for reply tokens/chunks and for embedding dimensions.
const MAX_TOKENS: u64 = 100_000;
const MAX_DIMENSIONS: u64 = 4096;
/// Upper bound for `x-mock-delay-ms`.
const MAX_DELAY_MS: u64 = 120_000;

#[derive(Parser, Debug, Clone)]
#[command(name = "mock-provider", about = "deterministic OpenAI-compatible mock server")]
struct Args {
    /// Port to bind on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Name reported in `x-mock-name` and `system_fingerprint`.
    #[arg(long, default_value = "mock")]
    name: String,
    /// Completion tokens per reply = content chunks per stream.
    #[arg(long, default_value_t = 8)]
    chunks: u64,
    /// Pause between stream chunks, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_gap_ms: u64,
    /// Extra model ids listed by GET …/models (comma-separated).
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Most requests kept for /__mock/requests (oldest dropped first).
    #[arg(long, default_value_t = 10_000)]
    max_recorded: usize,
    /// Do not record requests (benchmarks).
    #[arg(long)]
    no_record: bool,
    /// AWS secret key of the gateway's Bedrock credential: SigV4 signatures are then recomputed and checked.
    #[arg(long)]
    aws_secret_access_key: Option<String>,
    /// Answer every API request with this status (an error JSON), for fallback tests.
    #[arg(long)]
    fail_status: Option<u16>,
    /// With --fail-status: the `retry-after` header (seconds) sent with it.
    #[arg(long)]
    retry_after: Option<u64>,
    /// Delay every API response head by this many milliseconds (a backend that hangs).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// vLLM: time to first token of a prompt none of whose blocks are cached here, in ms.
    #[arg(long, default_value_t = 0)]
    prefill_ms: u64,
    /// vLLM: bytes of serialized prompt per simulated KV-cache block.
    #[arg(long, default_value_t = 64)]
    prefix_block_bytes: usize,
    /// vLLM prefill/decode disaggregation role (`mock_provider/pd.rs`).
    #[arg(long, value_enum)]
    kv_role: Option<pd::KvRole>,
    /// vLLM: the `vllm:gpu_cache_usage_perc` reported (0 to 1) instead of the simulated cache's.
    #[arg(long)]
    gpu_cache_usage: Option<f64>,
}

struct State {
    args: Args,
    /// The address the mock listens on.
    local: SocketAddr,
    engine: vllm::Engine,
    recorded: Mutex<VecDeque<Value>>,
    seq: Mutex<u64>,
}

type RespBody = BoxBody<Bytes, std::io::Error>;

/// A response body fed by a channel; an `Err` item aborts the stream.
struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn full(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into()).map_err(|never: Infallible| match never {}).boxed()
}

fn json_response(state: &State, status: StatusCode, v: &Value) -> Response<RespBody> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    insert_name(h, &state.args.name);
    r
}

fn insert_name(h: &mut hyper::HeaderMap, name: &str) {
    if let Ok(v) = hyper::header::HeaderValue::from_str(name) {
        h.insert("x-mock-name", v);
    }
}

fn error_json(message: &str, typ: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": typ, "param": null, "code": code}})
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn count_words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// Words in an OpenAI text input: a string, an array of strings, or token arrays.
fn input_tokens(v: &Value) -> u64 {
    match v {
        Value::String(s) => count_words(s),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::Number(_) => 1,
                other => input_tokens(other),
            })
            .sum(),
        _ => 0,
    }
}

/// Words in chat messages: string contents and the `text` of content parts.
fn chat_prompt_tokens(body: &Value) -> u64 {
    let mut n = 0;
    if let Some(msgs) = body.get("messages").and_then(Value::as_array) {
        for m in msgs {
            match m.get("content") {
                Some(Value::String(s)) => n += count_words(s),
                Some(Value::Array(parts)) => {
                    for p in parts {
                        if let Some(t) = p.get("text").and_then(Value::as_str) {
                            n += count_words(t);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    n
}

fn reply_words(name: &str, n: u64) -> Vec<String> {
    let base = [
        "Hello".to_string(),
        "from".to_string(),
        format!("{name}:"),
        "this".to_string(),
        "is".to_string(),
        "a".to_string(),
        "mock".to_string(),
        "reply.".to_string(),
    ];
    (0..n).map(|i| base.get(i as usize).cloned().unwrap_or_else(|| format!("w{i}"))).collect()
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": prompt / 2, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": completion / 2,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    })
}

fn header_u64(req_headers: &hyper::HeaderMap, name: &str) -> Option<u64> {
    req_headers.get(name).and_then(|v| v.to_str().ok()).and_then(|s| s.trim().parse().ok())
}

/// (completion tokens, finish_reason)
fn completion_count(state: &State, headers: &hyper::HeaderMap, body: &Value) -> (u64, &'static str) {
    let wanted = header_u64(headers, "x-mock-chunks").unwrap_or(state.args.chunks).min(MAX_TOKENS);
    let cap = body
        .get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| body.get("max_tokens").and_then(Value::as_u64));
    match cap {
        Some(c) if c < wanted => (c, "length"),
        _ => (wanted, "stop"),
    }
}

fn next_id(state: &State, prefix: &str) -> String {
    let mut s = state.seq.lock().unwrap_or_else(|e| e.into_inner());
    *s += 1;
    format!("{prefix}-mock-{}", *s)
}

fn include_usage(body: &Value) -> bool {
    body.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false)
}

fn sse_response(state: &State, events: Vec<Value>, gap: Duration, abort_after: Option<usize>) -> Response<RespBody> {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        for (i, ev) in events.into_iter().enumerate() {
            if abort_after == Some(i) {
                let _ = tx.send(Err(std::io::Error::other("mock-stream-abort"))).await;
                return;
            }
            if i > 0 && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            let line = format!("data: {ev}\n\n");
            if tx.send(Ok(Bytes::from(line))).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
    });
    let mut r = Response::new(ChannelBody { rx }.boxed());
    let h = r.headers_mut();
    h.insert("content-type", hyper::header::HeaderValue::from_static("text/event-stream; charset=utf-8"));
    h.insert("cache-control", hyper::header::HeaderValue::from_static("no-cache"));
    insert_name(h, &state.args.name);
    r
}

fn chat(state: &State, headers: &hyper::HeaderMap, body: &Value, model: &str) -> Response<RespBody> {
    let prompt = chat_prompt_tokens(body).max(1);
    let (n, finish) = completion_count(state, headers, body);
    let words = reply_words(&state.args.name, n);
    let id = next_id(state, "chatcmpl");
    let created = now_secs();
    let fp = state.args.name.clone();
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !stream {
        let v = json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": fp,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": words.join(" "), "refusal": null},
                "logprobs": null, "finish_reason": finish
            }],
            "usage": usage(prompt, n),
            "service_tier": "default"
        });
        return json_response(state, StatusCode::OK, &v);
    }
    let with_usage = include_usage(body);
    let chunk = |choices: Value| {
        let mut c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": fp, "service_tier": "default", "choices": choices
        });
        if with_usage {
            c["usage"] = Value::Null;
        }
        c
    };
    let mut events = vec![chunk(json!([{
        "index": 0, "delta": {"role": "assistant", "content": "", "refusal": null},
        "logprobs": null, "finish_reason": null
    }]))];
    let last = words.len().saturating_sub(1);
    for (i, w) in words.iter().enumerate() {
        let text = if i < last { format!("{w} ") } else { w.clone() };
        events.push(chunk(json!([{
            "index": 0, "delta": {"content": text}, "logprobs": null, "finish_reason": null
        }])));
    }
    events.push(chunk(json!([{
        "index": 0, "delta": {}, "logprobs": null, "finish_reason": finish
    }])));
    if with_usage {
        let mut u = chunk(json!([]));
        u["usage"] = usage(prompt, n);
        events.push(u);
    }
    let abort = (model == "mock-stream-abort").then_some(3);
    let gap = Duration::from_millis(header_u64(headers, "x-mock-chunk-gap-ms").unwrap_or(state.args.chunk_gap_ms));
    sse_response(state, events, gap, abort)
}

fn completions(state: &State, headers: &hyper::HeaderMap, body: &Value, model: &str) -> Response<RespBody> {
    let prompt = body.get("prompt").map(input_tokens).unwrap_or(0).max(1);
    let (n, finish) = completion_count(state, headers, body);
    let words = reply_words(&state.args.name, n);
    let id = next_id(state, "cmpl");
    let created = now_secs();
    let fp = state.args.name.clone();
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !stream {
        let v = json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": fp,
            "choices": [{"text": words.join(" "), "index": 0, "logprobs": null, "finish_reason": finish}],
            "usage": usage(prompt, n)
        });
        return json_response(state, StatusCode::OK, &v);
    }
    let with_usage = include_usage(body);
    let chunk = |choices: Value| {
        let mut c = json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": fp, "choices": choices
        });
        if with_usage {
            c["usage"] = Value::Null;
        }
        c
    };
    let mut events = Vec::new();
    let last = words.len().saturating_sub(1);
    for (i, w) in words.iter().enumerate() {
        let text = if i < last { format!("{w} ") } else { w.clone() };
        let fin = if i == last { Value::from(finish) } else { Value::Null };
        events.push(chunk(json!([{"text": text, "index": 0, "logprobs": null, "finish_reason": fin}])));
    }
    if words.is_empty() {
        events.push(chunk(json!([{"text": "", "index": 0, "logprobs": null, "finish_reason": finish}])));
    }
    if with_usage {
        let mut u = chunk(json!([]));
        u["usage"] = usage(prompt, n);
        events.push(u);
    }
    let abort = (model == "mock-stream-abort").then_some(2);
    let gap = Duration::from_millis(header_u64(headers, "x-mock-chunk-gap-ms").unwrap_or(state.args.chunk_gap_ms));
    sse_response(state, events, gap, abort)
}

fn fnv1a(data: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].iter().enumerate() {
            if i <= c.len() {
                out.push(T[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn embeddings(state: &State, body: &Value, model: &str) -> Response<RespBody> {
    let input = body.get("input").cloned().unwrap_or(Value::Null);
    // One embedding per input item: a string, a token array, or an array of either.
    let items: Vec<Value> = match &input {
        Value::Array(a) if a.iter().all(Value::is_number) => vec![input.clone()],
        Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    };
    let dims = body.get("dimensions").and_then(Value::as_u64).unwrap_or(8).clamp(1, MAX_DIMENSIONS);
    let b64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let prompt = input_tokens(&input).max(1);
    let data: Vec<Value> = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let key = item.to_string();
            let vec: Vec<f32> = (0..dims)
                .map(|j| {
                    let h = fnv1a(key.as_bytes(), j);
                    ((h % 20_001) as f32 / 10_000.0) - 1.0
                })
                .collect();
            let emb = if b64 {
                let bytes: Vec<u8> = vec.iter().flat_map(|f| f.to_le_bytes()).collect();
                Value::from(base64(&bytes))
            } else {
                Value::from(vec.iter().map(|f| f64::from(*f)).collect::<Vec<f64>>())
            };
            json!({"object": "embedding", "index": i, "embedding": emb})
        })
        .collect();
    let v = json!({
        "object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt}
    });
    json_response(state, StatusCode::OK, &v)
}

fn models(state: &State) -> Response<RespBody> {
    let mut ids = vec!["mock-model".to_string()];
    ids.extend(state.args.models.iter().cloned());
    let data: Vec<Value> = ids
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 1_700_000_000, "owned_by": state.args.name}))
        .collect();
    json_response(state, StatusCode::OK, &json!({"object": "list", "data": data}))
}

fn record(state: &State, method: &Method, uri: &str, headers: &hyper::HeaderMap, body: &[u8]) {
    if state.args.no_record || uri.starts_with("/__mock/") {
        return;
    }
    let mut hs = serde_json::Map::new();
    for (k, v) in headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        let key = k.as_str().to_string();
        match hs.get_mut(&key) {
            Some(Value::String(prev)) => {
                prev.push(',');
                prev.push_str(&v);
            }
            _ => {
                hs.insert(key, Value::from(v));
            }
        }
    }
    let cut = &body[..body.len().min(MAX_RECORDED_BODY)];
    let entry = json!({
        "method": method.as_str(),
        "path": uri,
        "headers": hs,
        "body": String::from_utf8_lossy(cut),
        "body_len": body.len(),
        "mock": state.args.name,
    });
    let mut rec = state.recorded.lock().unwrap_or_else(|e| e.into_inner());
    while rec.len() >= state.args.max_recorded.max(1) {
        rec.pop_front();
    }
    rec.push_back(entry);
}

/// Every request but the mock's own controls and `/metrics` counts as running while it lasts.
async fn serve(state: Arc<State>, req: Request<Incoming>) -> Result<Response<RespBody>, Infallible> {
    let path = req.uri().path();
    if path == "/metrics" {
        let mut r = Response::new(full(state.engine.metrics(&state.args.name, state.args.gpu_cache_usage)));
        r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"));
        return Ok(r);
    }
    if path.starts_with("/__mock/") {
        return handle(state, req).await;
    }
    let running = state.engine.enter();
    let response = handle(state, req).await?;
    Ok(response.map(|body| vllm::guarded(body, running)))
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<RespBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let uri = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let path = parts.uri.path().to_string();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return Ok(json_response(
                &state,
                StatusCode::PAYLOAD_TOO_LARGE,
                &error_json("mock: request body too large or unreadable", "invalid_request_error", None),
            ))
        }
    };
    record(&state, &parts.method, &uri, &parts.headers, &body);

    if let Some(ms) = header_u64(&parts.headers, "x-mock-delay-ms") {
        tokio::time::sleep(Duration::from_millis(ms.min(MAX_DELAY_MS))).await;
    }
    if !path.starts_with("/__mock/") {
        // A decoder given a prefill's KV cache does not compute the prompt.
        let pulled = state.args.kv_role == Some(pd::KvRole::Decode)
            && serde_json::from_slice::<Value>(&body).is_ok_and(|v| v.get("kv_transfer_params").is_some());
        if state.args.prefill_ms > 0 && parts.method == Method::POST && !pulled {
            let prefill = Duration::from_millis(state.args.prefill_ms.min(MAX_DELAY_MS));
            tokio::time::sleep(state.engine.prefill(&body, prefill, state.args.prefix_block_bytes)).await;
        }
        if state.args.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(state.args.delay_ms.min(MAX_DELAY_MS))).await;
        }
        if let Some(code) = state.args.fail_status {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let typ = if code == 429 { "rate_limit_error" } else { "server_error" };
            let mut r = json_response(
                &state,
                status,
                &error_json(&format!("mock {} fails with {code}", state.args.name), typ, None),
            );
            if let Some(secs) = state.args.retry_after {
                r.headers_mut().insert("retry-after", hyper::header::HeaderValue::from(secs));
            }
            return Ok(r);
        }
    }

    // Control endpoints.
    if path == "/__mock/requests" {
        return Ok(match parts.method {
            Method::GET => {
                let rec = state.recorded.lock().unwrap_or_else(|e| e.into_inner());
                json_response(&state, StatusCode::OK, &Value::from(rec.iter().cloned().collect::<Vec<_>>()))
            }
            Method::DELETE => {
                state.recorded.lock().unwrap_or_else(|e| e.into_inner()).clear();
                json_response(&state, StatusCode::OK, &json!({"cleared": true}))
            }
            _ => json_response(
                &state,
                StatusCode::METHOD_NOT_ALLOWED,
                &error_json("GET or DELETE", "invalid_request_error", None),
            ),
        });
    }
    if path == "/__mock/health" {
        let mut r = Response::new(full("ok"));
        insert_name(r.headers_mut(), &state.args.name);
        return Ok(r);
    }

    // Amazon Bedrock (`/model/{id}/converse[-stream]`, `/invoke[-with-response-stream]`): mock_provider/bedrock.rs.
    if let Some(response) = bedrock::route(&state, &parts, &path, &body) {
        return Ok(response);
    }
    // Anthropic Messages (`…/v1/messages`) and Claude on Vertex AI: see mock_provider/anthropic.rs.
    if let Some(response) = anthropic::route(&state, &parts, &path, &body) {
        return Ok(response);
    }
    // Gemini on Vertex AI (`…/publishers/google/models/{model}:{method}`): see mock_provider/gemini.rs.
    if let Some(response) = gemini::route(&state, &parts, &path, &body) {
        return Ok(response);
    }
    // Responses (and stored responses), images, audio: see mock_provider/openai_apis.rs.
    if let Some(response) = openai_apis::route(&state, &parts, &path, &body) {
        return Ok(response);
    }
    if path.ends_with("/models") {
        if parts.method == Method::GET {
            return Ok(models(&state));
        }
        return Ok(json_response(
            &state,
            StatusCode::METHOD_NOT_ALLOWED,
            &error_json("mock: use GET", "invalid_request_error", None),
        ));
    }

    let kind = if path.ends_with("/chat/completions") {
        "chat"
    } else if path.ends_with("/completions") {
        "completions"
    } else if path.ends_with("/embeddings") {
        "embeddings"
    } else {
        return Ok(json_response(
            &state,
            StatusCode::NOT_FOUND,
            &error_json(&format!("mock: unknown path {path}"), "invalid_request_error", Some("unknown_url")),
        ));
    };
    if parts.method != Method::POST {
        return Ok(json_response(
            &state,
            StatusCode::METHOD_NOT_ALLOWED,
            &error_json("mock: use POST", "invalid_request_error", None),
        ));
    }
    let json: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return Ok(json_response(
                &state,
                StatusCode::BAD_REQUEST,
                &error_json("mock: body is not a JSON object", "invalid_request_error", Some("invalid_json")),
            ))
        }
    };
    let model = json.get("model").and_then(Value::as_str).unwrap_or("").to_string();
    if model == "mock-error-text" {
        let mut r = Response::new(full("mock upstream failure: bad gateway"));
        *r.status_mut() = StatusCode::BAD_GATEWAY;
        r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("text/plain"));
        insert_name(r.headers_mut(), &state.args.name);
        return Ok(r);
    }
    if let Some(code) = model.strip_prefix("mock-error-").and_then(|c| c.parse::<u16>().ok()) {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (typ, c) = match code {
            429 => ("rate_limit_error", "rate_limit_exceeded"),
            400..=499 => ("invalid_request_error", "mock_error"),
            _ => ("server_error", "mock_error"),
        };
        return Ok(json_response(
            &state,
            status,
            &error_json(&format!("mock error {code} for model {model}"), typ, Some(c)),
        ));
    }
    if kind == "chat" && is_reasoning_model(&model) && json.get("max_tokens").is_some() {
        return Ok(json_response(
            &state,
            StatusCode::BAD_REQUEST,
            &error_json(
                "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
                "invalid_request_error",
                Some("unsupported_parameter"),
            ),
        ));
    }
    let kv_source = match pd::decode_source(state.args.kv_role, &json) {
        Ok(source) => source,
        Err(e) => {
            return Ok(json_response(&state, StatusCode::BAD_REQUEST, &error_json(&e, "invalid_request_error", None)))
        }
    };
    let kv_params = match pd::prefill_params(state.args.kv_role, &state.args.name, state.local.port(), &json) {
        Ok(params) => params,
        Err(e) => {
            return Ok(json_response(&state, StatusCode::BAD_REQUEST, &error_json(&e, "invalid_request_error", None)))
        }
    };
    if let Some(params) = kv_params {
        let words = reply_words(&state.args.name, 1);
        let v = json!({
            "id": next_id(&state, "chatcmpl"), "object": "chat.completion", "created": now_secs(), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": words.join(" ")},
                "logprobs": null, "finish_reason": "length"}],
            "usage": usage(chat_prompt_tokens(&json).max(1), 1),
            "kv_transfer_params": params,
        });
        return Ok(json_response(&state, StatusCode::OK, &v));
    }
    let mut response = match kind {
        "chat" => chat(&state, &parts.headers, &json, &model),
        "completions" => completions(&state, &parts.headers, &json, &model),
        _ => embeddings(&state, &json, &model),
    };
    if let Some(v) = kv_source.and_then(|s| hyper::header::HeaderValue::from_str(&s).ok()) {
        response.headers_mut().insert("x-mock-kv-source", v);
    }
    Ok(response)
}

/// OpenAI's o-series reasoning models (`o1`, `o3-mini`, `o4-mini`, ...).
fn is_reasoning_model(model: &str) -> bool {
    let mut chars = model.chars();
    chars.next() == Some('o') && chars.next().is_some_and(|c| c.is_ascii_digit())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let addr: SocketAddr = format!("{}:{}", args.host, args.port).parse()?;
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    println!("listening {local}");
    let state = Arc::new(State {
        args,
        local,
        engine: vllm::Engine::default(),
        recorded: Mutex::new(VecDeque::new()),
        seq: Mutex::new(0),
    });
    let shutdown = async {
        #[cfg(unix)]
        {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c().await?;
        Ok::<(), std::io::Error>(())
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            res = &mut shutdown => { res?; return Ok(()); }
            acc = listener.accept() => {
                let (stream, _) = match acc {
                    Ok(s) => s,
                    Err(e) => { eprintln!("mock-provider: accept: {e}"); continue; }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| serve(state.clone(), req));
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        }
    }
}
