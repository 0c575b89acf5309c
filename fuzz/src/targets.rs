//! The fuzz targets' bodies. Each `fuzz_targets/NAME.rs` calls `targets::NAME`; the regression
//! test runs saved inputs through the same functions (see [`run`]).
//!
//! Violations panic with `[group] message`; a group can be switched off for a run with
//! `LLMGW_FUZZ_SKIP=group,group` (e.g. to keep fuzzing past a known, reported bug).

use std::rc::Rc;
use std::sync::OnceLock;

use llmgw_filter::config::{self, Env};
use llmgw_filter::exchange::{Exchange, Shared};
use llmgw_filter::host::Flow;
use serde_json::Value;

use crate::alloc::{self, tracked, untracked};
use crate::check::{is_json, is_json_object, sse_events, unbase64};
use crate::host::MemHost;
use crate::input::*;

/// Every target, by name (the regression test and the seed tool go through this).
/// A target: its name and its body.
pub type Target = (&'static str, fn(&[u8]));

pub const ALL: &[Target] = &[
    ("req_chat", req_chat),
    ("req_embeddings", req_embeddings),
    ("req_messages", req_messages),
    ("tr_openai_passthrough", tr_openai_passthrough),
    ("tr_openai_to_anthropic", tr_openai_to_anthropic),
    ("tr_anthropic_native", tr_anthropic_native),
    ("tr_anthropic_to_openai", tr_anthropic_to_openai),
    ("tr_openai_to_gemini", tr_openai_to_gemini),
    ("tr_vertex_embeddings", tr_vertex_embeddings),
    ("tr_openai_to_bedrock", tr_openai_to_bedrock),
    ("sse_splitter", sse_splitter),
    ("eventstream", eventstream),
    ("config_parse", config_parse),
    ("json_scan", json_scan),
    ("multipart", multipart),
];

pub fn run(target: &str, data: &[u8]) -> bool {
    match ALL.iter().find(|(name, _)| *name == target) {
        Some((_, f)) => {
            f(data);
            true
        }
        None => false,
    }
}

// ---- violations ---------------------------------------------------------------------------------

fn skipped() -> &'static [String] {
    static SKIP: OnceLock<Vec<String>> = OnceLock::new();
    SKIP.get_or_init(|| {
        std::env::var("LLMGW_FUZZ_SKIP")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

fn only() -> &'static [String] {
    static ONLY: OnceLock<Vec<String>> = OnceLock::new();
    ONLY.get_or_init(|| {
        std::env::var("LLMGW_FUZZ_ONLY")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

/// `LLMGW_FUZZ_SKIP=a,b` ignores groups; `LLMGW_FUZZ_ONLY=a,b` ignores all others (minimizing).
fn enabled(group: &str) -> bool {
    !skipped().iter().any(|s| s == group) && (only().is_empty() || only().iter().any(|s| s == group))
}

#[track_caller]
fn violation(group: &str, message: impl FnOnce() -> String) {
    if enabled(group) {
        let message = untracked(message);
        panic!("[{group}] {message}");
    }
}

fn show(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(400)];
    let more = if bytes.len() > 400 { format!("... ({} bytes)", bytes.len()) } else { String::new() };
    format!("b\"{}\"{more}", head.escape_ascii())
}

fn verbose() -> bool {
    static V: OnceLock<bool> = OnceLock::new();
    *V.get_or_init(|| std::env::var_os("LLMGW_FUZZ_VERBOSE").is_some())
}

/// Peak heap growth allowed for one execution: twice the input plus this.
fn slack() -> usize {
    static SLACK: OnceLock<usize> = OnceLock::new();
    *SLACK.get_or_init(|| std::env::var("LLMGW_FUZZ_SLACK_KB").ok().and_then(|v| v.parse().ok()).unwrap_or(256) * 1024)
}

fn check_alloc(input: usize, what: &str) {
    if let Some(u) = alloc::usage() {
        let bound = 2 * input + slack();
        if verbose() {
            eprintln!(
                "  {what}: input {input} bytes, peak heap growth {} bytes, largest allocation {}",
                u.peak, u.largest
            );
        }
        if u.peak > bound {
            violation("alloc", || {
                format!("{what}: peak heap growth {} bytes > bound {bound} (2 x {input} input + slack)", u.peak)
            });
        }
    }
}

// ---- configuration ------------------------------------------------------------------------------

struct FuzzEnv;

impl Env for FuzzEnv {
    fn var(&self, name: &str) -> Option<String> {
        name.starts_with("SET_").then(|| format!("value-of-{name}"))
    }
}

/// One backend per schema, chosen by the `x-fuzz-backend` request header.
pub const BACKENDS: [&str; 7] = ["openai", "azure", "anthropic", "awsanthropic", "gcpanthropic", "bedrock", "vertex"];

/// The plugin configuration (JSON, as the filter takes it) of the exchange targets.
pub fn config_text(variant_b: bool) -> String {
    use serde_json::json;
    let aws = json!({"aws": {"access_key_id": "AKIDEXAMPLE", "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}});
    let mut backends = vec![
        json!({"name": "openai", "schema": "OpenAI", "auth": {"bearer": "sk-upstream-openai"}}),
        json!({"name": "azure", "schema": "AzureOpenAI", "api_version": "2024-10-21", "auth": {"api_key": "az-upstream"}}),
        json!({"name": "anthropic", "schema": "Anthropic", "auth": {"x_api_key": "sk-ant-upstream"}}),
        json!({"name": "awsanthropic", "schema": "AWSAnthropic", "region": "us-east-1", "auth": aws}),
        json!({"name": "gcpanthropic", "schema": "GCPAnthropic", "region": "us-east5", "project": "fuzz-project", "auth": {"bearer": "ya29.upstream"}}),
        json!({"name": "bedrock", "schema": "AWSBedrock", "region": "us-west-2", "auth": aws}),
        json!({"name": "vertex", "schema": "GCPVertexAI", "region": "us-central1", "project": "fuzz-project", "auth": {"bearer": "ya29.upstream"}}),
    ];
    if variant_b {
        for b in &mut backends {
            b["model_override"] = json!("overridden-model");
        }
    }
    let rules: Vec<Value> = BACKENDS
        .iter()
        .map(|name| json!({"match": {"headers": [{"name": "x-fuzz-backend", "exact": name}]}, "backends": [{"name": name}]}))
        .collect();
    let mut config = json!({"backends": backends, "rules": rules});
    if variant_b {
        config["stream_include_usage"] = json!(false);
        config["max_request_body_bytes"] = json!(2048);
    }
    config.to_string()
}

thread_local! {
    static SHARED: [Rc<Shared>; 2] = untracked(|| {
        [false, true].map(|b| {
            let compiled = config::parse(config_text(b).as_bytes(), &FuzzEnv, 1_750_000_000)
                .unwrap_or_else(|e| panic!("fuzz configuration is invalid: {e}"));
            Rc::new(Shared::new(compiled))
        })
    });
}

// ---- the exchange driver ------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Route {
    path: &'static str,
    backend: &'static str,
    /// 200 bodies pass as they came (OpenAI-compatible, native Anthropic): they are only checked
    /// when the upstream's were valid.
    passthrough: bool,
    anthropic_client: bool,
}

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";
const EMBEDDINGS: &str = "/v1/embeddings";
const MESSAGES: &str = "/v1/messages";

fn route(path: &'static str, backend: &'static str) -> Route {
    let openai_like = matches!(backend, "openai" | "azure");
    let anthropic_like = matches!(backend, "anthropic" | "awsanthropic" | "gcpanthropic");
    let anthropic_client = path == MESSAGES;
    let passthrough = if anthropic_client { anthropic_like } else { openai_like };
    Route { path, backend, passthrough, anthropic_client }
}

const CLIENT_SECRET: &str = "client-secret-7f3a";

fn request_host(case: &Case, r: Route) -> MemHost {
    let mut host = MemHost { now: 1_750_000_000_000_000_000, ..MemHost::default() };
    let path = if case.has(F_QUERY) { format!("{}?trace=1&q=a%20b", r.path) } else { r.path.to_string() };
    let mut headers = vec![
        (":method", "POST".to_string()),
        (":path", path),
        (":authority", "gateway.local".to_string()),
        (":scheme", "http".to_string()),
        ("content-type", "application/json".to_string()),
        ("x-fuzz-backend", r.backend.to_string()),
        // A client may not choose internal headers.
        ("x-llmgw-backend", "openai".to_string()),
        ("x-ai-eg-model", "spoofed".to_string()),
    ];
    if case.has(F_CONTENT_LENGTH) {
        headers.push(("content-length", case.request.len().to_string()));
    }
    if case.has(F_CLIENT_AUTH) {
        headers.push(("authorization", format!("Bearer {CLIENT_SECRET}")));
        headers.push(("x-api-key", CLIENT_SECRET.to_string()));
        headers.push(("api-key", CLIENT_SECRET.to_string()));
    }
    host.request_headers = headers.into_iter().map(|(n, v)| (n.to_string(), v)).collect();
    host
}

fn check_error_body(r: Route, status: u16, body: &[u8], what: &str, group: &str) {
    let shape = untracked(|| serde_json::from_slice::<Value>(body).ok());
    let Some(v) = shape else {
        if !is_json_object(body) {
            // JSON in all but its UTF-8 is told apart: it comes from a provider's bytes kept as sent.
            let lossy = String::from_utf8_lossy(body);
            let g = if is_json_object(lossy.as_bytes()) && group == "json" { "utf8" } else { group };
            violation(g, || format!("{what}: status {status} with a body that is not a JSON object: {}", show(body)));
        }
        return;
    };
    let openai = v.get("error").is_some_and(Value::is_object);
    let error_type = v.get("error").and_then(|e| e.get("type")).is_some_and(Value::is_string);
    // A native Anthropic route keeps the provider's errors: the SDK reads `error.type`/`message`.
    let anthropic = v.get("error").is_some_and(Value::is_object)
        && (v.get("type").and_then(Value::as_str) == Some("error")
            || (r.passthrough && r.anthropic_client && error_type));
    let shape = if group == "json" { "shape" } else { group };
    if !(openai || anthropic) {
        violation(shape, || format!("{what}: status {status}: not an error object: {}", show(body)));
    } else if r.anthropic_client != anthropic {
        let want = if r.anthropic_client { "Anthropic" } else { "OpenAI" };
        violation(shape, || format!("{what}: status {status}: error is not {want}-shaped: {}", show(body)));
    }
}

fn check_local_reply(host: &MemHost, flow: Flow, r: Route, phase: &str) {
    let Some((status, headers, body)) = &host.reply else { return };
    if flow != Flow::Pause {
        violation("flow", || format!("{phase}: local reply {status} but the filter returned {flow:?}"));
    }
    if host.replies > 1 {
        violation("flow", || format!("{phase}: {} local replies", host.replies));
    }
    // A response-phase reply keeps the upstream's status, which may be a 3xx (any non-2xx is an
    // error to the filter).
    let lowest = if phase.starts_with("response") { 300 } else { 400 };
    if !(lowest..600).contains(status) {
        violation("reply", || format!("{phase}: local reply with status {status}"));
    }
    let ct = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.as_str());
    if ct != Some("application/json") {
        violation("reply", || format!("{phase}: local reply content-type {ct:?}"));
    }
    check_error_body(r, *status, body, phase, "json");
}

fn check_headers(host: &MemHost, phase: &str) {
    if let Some(bad) = host.bad_headers.first() {
        violation("headers", || format!("{phase}: invalid header set by the filter: {bad}"));
    }
}

/// The upstream request, once the filter let it go.
fn check_forwarded(host: &MemHost, case: &Case, r: Route) {
    check_headers(host, "request");
    let backend = host.request_header_value("x-llmgw-backend");
    if backend.as_deref() != Some(r.backend) {
        violation("routing", || format!("forwarded with x-llmgw-backend {backend:?}, want {:?}", r.backend));
    }
    let body = &host.request_body;
    if !is_json_object(body) {
        let client_ok = is_json(case.request);
        violation("json", || {
            format!(
                "forwarded body is not a JSON object (the client's {} JSON): {}\nclient body: {}",
                if client_ok { "was" } else { "was not" },
                show(body),
                show(case.request)
            )
        });
    }
    if let Some(len) = host.request_header_value("content-length") {
        if len != body.len().to_string() {
            violation("length", || format!("request content-length {len} but the body has {} bytes", body.len()));
        }
    }
    let path = host.request_header_value(":path").unwrap_or_default();
    let path_ok = path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic() && !b"\"<>\\^`{|}#".contains(&b));
    if !path_ok {
        violation("headers", || format!("upstream :path is not a valid request target: {path:?}"));
    }
    // The client's own credential headers never reach a provider (none of the backends passes them).
    let body_has_secret = case.request.windows(CLIENT_SECRET.len()).any(|w| w == CLIENT_SECRET.as_bytes());
    for (name, value) in &host.request_headers {
        if value.contains(CLIENT_SECRET) && !body_has_secret {
            violation("secrets", || format!("the client's credential reaches the provider in {name}"));
        }
    }
}

/// Whether a 200 body is valid for the client's API: a JSON object, or an SSE stream of JSON
/// events (OpenAI's ending with `[DONE]`). `Err` names the problem.
fn valid_answer(r: Route, streaming: bool, body: &[u8], complete: bool) -> Result<(), String> {
    if !streaming {
        if !is_json_object(body) {
            return Err(format!("JSON answer is not a JSON object: {}", show(body)));
        }
        // Translated answers must be in the client's schema, not the provider's (best effort: the
        // member every client reads first).
        if !r.passthrough {
            let key = match (r.anthropic_client, r.path) {
                (true, _) => "content",
                (false, EMBEDDINGS) => "data",
                _ => "choices",
            };
            let v = untracked(|| serde_json::from_slice::<Value>(body).ok());
            if v.as_ref().is_some_and(|v| !v.get(key).is_some_and(Value::is_array)) {
                return Err(format!("translated answer has no `{key}` array: {}", show(body)));
            }
        }
        return Ok(());
    }
    let (events, tail) = sse_events(body);
    for e in &events {
        let Some(data) = &e.data else { continue };
        let ok = (!r.anthropic_client && data == "[DONE]") || is_json_object(data.as_bytes());
        if !ok {
            return Err(format!("stream event data is not a JSON object: {}", show(data.as_bytes())));
        }
    }
    if !complete {
        return Ok(());
    }
    if !tail.iter().all(u8::is_ascii_whitespace) {
        return Err(format!("the stream ends inside an event: {}", show(&tail)));
    }
    let last = events.iter().rev().find(|e| e.data.is_some());
    let terminated = match last.and_then(|e| e.data.as_deref()) {
        None => false,
        Some(data) if !r.anthropic_client => data == "[DONE]",
        Some(data) => {
            let v = untracked(|| serde_json::from_str::<Value>(data).ok());
            matches!(v.as_ref().and_then(|v| v.get("type")).and_then(Value::as_str), Some("message_stop" | "error"))
        }
    };
    if !terminated {
        return Err(format!("the stream does not end with the API's terminator: {}", show(body)));
    }
    Ok(())
}

fn exchange(data: &[u8], r: Route, full: bool) {
    untracked(|| exchange_inner(data, r, full))
}

fn exchange_inner(data: &[u8], r: Route, full: bool) {
    let Some(case) = Case::parse(data) else { return };
    let shared = SHARED.with(|s| s[usize::from(case.has(F_CONFIG_B))].clone());
    let mut host = request_host(&case, r);
    let mut chunker = case.chunker();
    alloc::start();
    let mut x = tracked(|| Exchange::new(Some(shared)));

    // ---- request ----
    let empty = case.request.is_empty();
    let flow = tracked(|| x.on_request_headers(&mut host, empty));
    if host.reply.is_some() {
        check_local_reply(&host, flow, r, "request headers");
        return finish(x, host, data);
    }
    let chunks = if case.has(F_SPLIT_REQUEST) { chunker.split(case.request) } else { vec![case.request] };
    let mut flow = Flow::Continue;
    for (i, chunk) in chunks.iter().enumerate() {
        host.request_body.extend_from_slice(chunk);
        let size = host.request_body.len();
        let eos = i + 1 == chunks.len();
        flow = tracked(|| x.on_request_body(&mut host, size, eos));
        if host.reply.is_some() {
            check_local_reply(&host, flow, r, "request body");
            return finish(x, host, data);
        }
    }
    if flow != Flow::Continue {
        violation("flow", || "the request body ended, no local reply, but the filter still pauses".into());
    }
    check_forwarded(&host, &case, r);
    let Some(resp) = case.response.as_ref().filter(|_| full) else { return finish(x, host, data) };

    // ---- response ----
    host.response_headers = vec![(":status".into(), resp.status.to_string())];
    host.response_headers.extend(resp.headers.iter().cloned());
    let upstream_status = resp.status;
    let headers_eos = case.has(F_HEADERS_EOS) || resp.body.is_empty();
    let flow = tracked(|| x.on_response_headers(&mut host, headers_eos));
    // The filter may answer in the response phase too (a local reply replaces the upstream's).
    let mut replied = host.reply.is_some();
    if replied {
        check_local_reply(&host, flow, r, "response headers");
    } else if headers_eos && flow != Flow::Continue {
        violation("flow", || "response headers end the stream but the filter pauses".into());
    }
    let trailers = case.has(F_TRAILERS) && !headers_eos;
    let mut out = Vec::new();
    if !headers_eos && !replied {
        let chunks = chunker.split(&resp.body);
        for (i, chunk) in chunks.iter().enumerate() {
            host.response_body.extend_from_slice(chunk);
            let size = host.response_body.len();
            let eos = i + 1 == chunks.len() && !trailers;
            let flow = tracked(|| x.on_response_body(&mut host, size, eos));
            if host.reply.is_some() {
                check_local_reply(&host, flow, r, "response body");
                replied = true;
                break;
            }
            if flow == Flow::Continue {
                out.append(&mut host.response_body);
            } else if eos {
                violation("flow", || "the response body ended but the filter still pauses".into());
            }
        }
        if trailers && !replied {
            tracked(|| x.on_response_trailers(&mut host));
            out.append(&mut host.response_body);
        }
    }
    if host.replies > 1 {
        violation("flow", || format!("{} local replies", host.replies));
    }
    check_headers(&host, "response");
    if let Some((status, headers, body)) = host.reply.take() {
        // What the client gets is the local reply.
        host.response_headers = headers;
        host.response_headers.push((":status".into(), status.to_string()));
        out = body;
    }

    // Envoy lets a filter rewrite a body it buffered from the trailers callback too, but a stream
    // cannot be appended to there (a documented limit): violations with trailers get their group.
    let g = |name: &'static str| if trailers { "trailers" } else { name };
    let status: u16 = host.response_header_value(":status").and_then(|s| s.parse().ok()).unwrap_or(0);
    if let Some(len) = host.response_header_value("content-length") {
        if len != out.len().to_string() {
            violation(g("length"), || {
                format!("response content-length {len} but the client gets {} bytes: {}", out.len(), show(&out))
            });
        }
    }
    let rewritten = out != resp.body;
    if rewritten && host.response_header_value("content-encoding").is_some() {
        violation(g("encoding"), || "content-encoding kept on a body the filter rewrote".into());
    }
    if status >= 400 {
        check_error_body(r, status, &out, "response", g("json"));
    } else if status == 200 && upstream_status == 200 {
        let ct = host.response_header_value("content-type").unwrap_or_default().to_ascii_lowercase();
        let streaming = ct.starts_with("text/event-stream");
        let complete = !trailers;
        if r.passthrough {
            // Pass-through answers are the provider's: only an edit that broke a valid one counts.
            let upstream_ok = valid_answer(r, streaming, &resp.body, complete).is_ok();
            if upstream_ok {
                if let Err(e) = valid_answer(r, streaming, &out, complete) {
                    violation(g("answer"), || format!("a valid upstream answer became invalid: {e}"));
                }
            }
        } else if let Err(e) = valid_answer(r, streaming, &out, complete) {
            let group = if headers_eos || resp.body.is_empty() { "empty" } else { g("answer") };
            violation(group, || format!("translated 200 is not valid for the client: {e}"));
        }
    }
    for (name, value) in &host.filter_state {
        if name.ends_with("_token") && (value.is_empty() || !value.iter().all(u8::is_ascii_digit)) {
            violation("usage", || format!("filter state {name} = {}", show(value)));
        }
    }
    finish(x, host, data)
}

fn finish(mut x: Exchange, mut host: MemHost, data: &[u8]) {
    tracked(|| x.on_log(&mut host));
    tracked(|| drop(x));
    check_alloc(data.len(), "exchange");
    drop(host);
}

fn pick<T: Copy>(options: &[T], selector: u8) -> T {
    options[selector as usize % options.len()]
}

// ---- client API request parsers: request phase, every backend ----------------------------------

pub fn req_chat(data: &[u8]) {
    let backend = pick(&BACKENDS, data.first().copied().unwrap_or(0));
    exchange(data, route(CHAT, backend), false)
}

pub fn req_embeddings(data: &[u8]) {
    let backend = pick(&BACKENDS, data.first().copied().unwrap_or(0));
    exchange(data, route(EMBEDDINGS, backend), false)
}

pub fn req_messages(data: &[u8]) {
    let backend = pick(&BACKENDS, data.first().copied().unwrap_or(0));
    exchange(data, route(MESSAGES, backend), false)
}

// ---- translators: request and response ------------------------------------------------------

pub fn tr_openai_passthrough(data: &[u8]) {
    let s = data.first().copied().unwrap_or(0);
    let path = pick(&[CHAT, COMPLETIONS, EMBEDDINGS], s);
    let backend = pick(&["openai", "azure"], s / 3);
    exchange(data, route(path, backend), true)
}

const ANTHROPIC_FAMILY: [&str; 3] = ["anthropic", "awsanthropic", "gcpanthropic"];

pub fn tr_openai_to_anthropic(data: &[u8]) {
    exchange(data, route(CHAT, pick(&ANTHROPIC_FAMILY, data.first().copied().unwrap_or(0))), true)
}

pub fn tr_anthropic_native(data: &[u8]) {
    exchange(data, route(MESSAGES, pick(&ANTHROPIC_FAMILY, data.first().copied().unwrap_or(0))), true)
}

pub fn tr_anthropic_to_openai(data: &[u8]) {
    exchange(data, route(MESSAGES, pick(&["openai", "azure"], data.first().copied().unwrap_or(0))), true)
}

pub fn tr_openai_to_gemini(data: &[u8]) {
    exchange(data, route(CHAT, "vertex"), true)
}

pub fn tr_vertex_embeddings(data: &[u8]) {
    exchange(data, route(EMBEDDINGS, "vertex"), true)
}

pub fn tr_openai_to_bedrock(data: &[u8]) {
    exchange(data, route(CHAT, "bedrock"), true)
}

// ---- SSE splitter -------------------------------------------------------------------------------

/// byte 0: chunk-size class; bytes 1..5: seed; then the stream. One push and random chunks must
/// give the same events; blocks plus the pending tail are the input, byte for byte.
pub fn sse_splitter(data: &[u8]) {
    untracked(|| sse_inner(data))
}

fn sse_inner(data: &[u8]) {
    use llmgw_filter::sse::{parse_event, Splitter};
    let Some(head) = data.get(..5) else { return };
    let stream = &data[5..];
    let mut chunker = Case {
        selector: 0,
        flags: 0,
        seed: u32::from_le_bytes([head[1], head[2], head[3], head[4]]),
        chunk_class: CHUNK_CLASSES[head[0] as usize % CHUNK_CLASSES.len()],
        request: &[],
        response: None,
    }
    .chunker();
    let chunks = chunker.split(stream);
    alloc::start();
    let run = |chunks: &[&[u8]]| {
        tracked(|| {
            let mut s = Splitter::default();
            let mut blocks: Vec<Vec<u8>> = Vec::new();
            for c in chunks {
                if !s.push(c, |b| blocks.push(b.to_vec())) {
                    return None;
                }
            }
            let pending = s.take_pending();
            Some((blocks, pending))
        })
    };
    let (Some((one, one_tail)), Some((many, many_tail))) = (run(&[stream]), run(&chunks)) else { return };
    check_alloc(stream.len() * 4, "sse");
    for (blocks, tail, how) in [(&one, &one_tail, "one push"), (&many, &many_tail, "chunked")] {
        let joined: Vec<u8> = blocks.iter().flatten().chain(tail.iter()).copied().collect();
        if joined != stream {
            violation("sse", || format!("{how}: blocks + pending != input: {}", show(&joined)));
        }
        if blocks.iter().any(Vec::is_empty) {
            violation("sse", || format!("{how}: an empty block"));
        }
    }
    let data_events = |blocks: &[Vec<u8>], tail: &[u8]| -> Vec<(Option<String>, String)> {
        let mut events: Vec<_> = blocks.iter().map(|b| parse_event(b)).collect();
        if !tail.is_empty() {
            events.push(parse_event(tail));
        }
        events.into_iter().filter(|e| e.has_data).map(|e| (e.event, e.data)).collect()
    };
    let a = data_events(&one, &one_tail);
    let b = data_events(&many, &many_tail);
    if a != b {
        violation("sse", || format!("one push gave {a:?}, chunks {:?} gave {b:?}", chunks.len()));
    }
    // An independent reader (WHATWG rules) sees the same dispatched data events.
    let (reference, _) = sse_events(stream);
    let want: Vec<String> = reference.into_iter().filter_map(|e| e.data).collect();
    let got: Vec<String> = one.iter().map(|b| parse_event(b)).filter(|e| e.has_data).map(|e| e.data).collect();
    if want != got {
        violation("sse", || format!("reference reader saw {want:?}, the splitter {got:?}"));
    }
}

// ---- eventstream decoder ------------------------------------------------------------------------

/// byte 0: mode (bit 0: raw bytes; else records), byte 1: chunk class, bytes 2..6: seed. A record
/// is `[flags][headers len][payload len u16 LE][headers][payload]`, framed with a correct prelude
/// and checksums unless its flags say to corrupt them. One push and random chunks must agree.
pub fn eventstream(data: &[u8]) {
    untracked(|| eventstream_inner(data))
}

fn eventstream_inner(data: &[u8]) {
    use llmgw_filter::eventstream::Decoder;
    let Some(head) = data.get(..6) else { return };
    let rest = &data[6..];
    let stream = if head[0] & 1 == 1 { rest.to_vec() } else { records(rest) };
    let mut chunker = Case {
        selector: 0,
        flags: 0,
        seed: u32::from_le_bytes([head[2], head[3], head[4], head[5]]),
        chunk_class: CHUNK_CLASSES[head[1] as usize % CHUNK_CLASSES.len()],
        request: &[],
        response: None,
    }
    .chunker();
    let chunks = chunker.split(&stream);
    alloc::start();
    let run = |chunks: &[&[u8]]| {
        tracked(|| {
            let mut d = Decoder::default();
            let mut messages = Vec::new();
            let mut error = None;
            for c in chunks {
                if let Err(e) = d.push(c, |m| messages.push((format!("{:?}", m.kind()), m.payload().to_vec()))) {
                    error = Some(e);
                    break;
                }
            }
            let finished = if error.is_none() { d.finish().err() } else { None };
            (messages, error.is_some() || finished.is_some())
        })
    };
    let one = run(&[&stream]);
    let many = run(&chunks);
    check_alloc(stream.len() * 4, "eventstream");
    if one != many {
        violation("eventstream", || {
            format!(
                "one push gave {} messages (error: {}), {} chunks gave {} (error: {})",
                one.0.len(),
                one.1,
                chunks.len(),
                many.0.len(),
                many.1
            )
        });
    }
}

fn records(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while rest.len() >= 4 {
        let flags = rest[0];
        let hlen = rest[1] as usize;
        let plen = u16::from_le_bytes([rest[2], rest[3]]) as usize;
        rest = &rest[4..];
        let headers = &rest[..hlen.min(rest.len())];
        rest = &rest[headers.len()..];
        let payload = &rest[..plen.min(rest.len())];
        rest = &rest[payload.len()..];
        let total = 12 + headers.len() + payload.len() + 4;
        let mut msg = Vec::with_capacity(total);
        let declared = if flags & 4 != 0 { total as u32 ^ u32::from(flags) << 8 } else { total as u32 };
        msg.extend_from_slice(&declared.to_be_bytes());
        msg.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        let mut crc = crc32fast::hash(&msg);
        if flags & 1 != 0 {
            crc ^= 1;
        }
        msg.extend_from_slice(&crc.to_be_bytes());
        msg.extend_from_slice(headers);
        msg.extend_from_slice(payload);
        let mut crc = crc32fast::hash(&msg);
        if flags & 2 != 0 {
            crc ^= 1;
        }
        msg.extend_from_slice(&crc.to_be_bytes());
        out.extend_from_slice(&msg);
    }
    out
}

// ---- configuration parser -----------------------------------------------------------------------

/// The input is the plugin configuration. A valid one then serves `GET /v1/models` and one chat
/// request; both must behave (JSON reply, or a forwarded valid body).
pub fn config_parse(data: &[u8]) {
    untracked(|| config_inner(data))
}

fn config_inner(data: &[u8]) {
    alloc::start();
    let Ok(compiled) = tracked(|| config::parse(data, &FuzzEnv, 1_750_000_000)) else {
        check_alloc(data.len() * 8, "config error");
        return;
    };
    let shared = Rc::new(Shared::new(compiled));
    let r = route(CHAT, "openai");
    let mut host = MemHost {
        request_headers: vec![(":method".into(), "GET".into()), (":path".into(), "/v1/models".into())],
        ..MemHost::default()
    };
    let mut x = Exchange::new(Some(shared.clone()));
    let flow = tracked(|| x.on_request_headers(&mut host, true));
    match &host.reply {
        Some((200, _, body)) => {
            if !is_json_object(body) {
                violation("json", || format!("GET /v1/models is not a JSON object: {}", show(body)));
            }
        }
        Some(_) => check_local_reply(&host, flow, r, "models"),
        None => violation("flow", || "GET /v1/models got no reply".into()),
    }
    for model in ["gpt-4o", "claude-3-5-sonnet", "llama-3"] {
        let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"stream":true}}"#);
        let mut host = MemHost {
            request_headers: vec![
                (":method".into(), "POST".into()),
                (":path".into(), CHAT.into()),
                ("x-team".into(), "research".into()),
                ("content-type".into(), "application/json".into()),
            ],
            request_body: body.as_bytes().to_vec(),
            ..MemHost::default()
        };
        let mut x = Exchange::new(Some(shared.clone()));
        let mut flow = tracked(|| x.on_request_headers(&mut host, false));
        if host.reply.is_none() {
            flow = tracked(|| x.on_request_body(&mut host, body.len(), true));
        }
        if host.reply.is_some() {
            check_local_reply(&host, flow, r, "configured request");
        } else {
            check_headers(&host, "configured request");
            if !is_json_object(&host.request_body) {
                violation("json", || format!("forwarded body is not a JSON object: {}", show(&host.request_body)));
            }
        }
    }
}

// ---- JSON scanners --------------------------------------------------------------------------

/// byte 0: operations (bits: set model, remove stream, insert a new key, set stream_options,
/// remove the first key); byte 1: the `TopLevelCapture` cap (x 4 bytes) and chunk class; then the
/// body. Checked against serde_json on every body serde_json reads.
pub fn json_scan(data: &[u8]) {
    untracked(|| json_inner(data))
}

fn json_inner(data: &[u8]) {
    use llmgw_filter::json::{members, Splice, TopLevelCapture};
    let Some(&[ops, cap_byte]) = data.get(..2) else { return };
    let body = &data[2..];
    let valid = is_json_object(body);
    let parsed: Option<serde_json::Map<String, Value>> =
        if valid { serde_json::from_slice::<Value>(body).ok().and_then(|v| v.as_object().cloned()) } else { None };

    alloc::start();
    let found = tracked(|| {
        members(body).map(|(open, m)| {
            (open, m.iter().map(|m| (m.key.to_string(), m.span.clone(), m.value.clone())).collect::<Vec<_>>())
        })
    });
    match (&found, valid) {
        (None, true) => violation("json_scan", || format!("members() refused a valid object: {}", show(body))),
        (Some((open, list)), _) => {
            let mut at = *open;
            for (key, span, value) in list {
                if !(at <= span.start && span.start <= value.start && value.end == span.end && span.end <= body.len()) {
                    violation("json_scan", || format!("member {key:?} has ranges {span:?}/{value:?} out of order"));
                    return;
                }
                at = span.end;
                if valid && !is_json(&body[value.clone()]) {
                    violation("json_scan", || {
                        format!("member {key:?}'s value is not JSON: {}", show(&body[value.clone()]))
                    });
                }
            }
            if let Some(map) = &parsed {
                let mut keys: Vec<&str> = list.iter().map(|(k, _, _)| k.as_str()).collect();
                keys.sort_unstable();
                keys.dedup();
                let mut want: Vec<&str> = map.keys().map(String::as_str).collect();
                want.sort_unstable();
                if keys != want {
                    violation("json_scan", || format!("members() keys {keys:?}, serde_json {want:?}"));
                }
                for (key, _, value) in list.iter().rev() {
                    // The last of duplicates wins, as in serde_json.
                    if list.iter().rev().find(|(k, _, _)| k == key).map(|(_, _, v)| v) != Some(value) {
                        continue;
                    }
                    let got = serde_json::from_slice::<Value>(&body[value.clone()]).ok();
                    if got.as_ref() != map.get(key) && got.is_some() {
                        violation("json_scan", || format!("member {key:?}: value differs from serde_json's"));
                    }
                }
            }
        }
        (None, false) => {}
    }

    // Splice: edits must keep a valid object valid, and mean what they say.
    if valid {
        let edited = tracked(|| {
            let first_key = found.as_ref().and_then(|(_, l)| l.first().map(|(k, _, _)| k.clone()));
            let mut keys = vec!["model", "stream", "x_fuzz_new", "stream_options"];
            if let Some(k) = &first_key {
                keys.push(k.as_str());
            }
            let mut s = Splice::new(body, &keys)?;
            let mut expect = parsed.clone();
            if ops & 1 != 0 {
                s.set("model", b"\"fuzz-model\"");
                untracked(|| expect.as_mut().map(|m| m.insert("model".into(), Value::from("fuzz-model"))));
            }
            if ops & 2 != 0 {
                s.remove("stream");
                untracked(|| expect.as_mut().map(|m| m.shift_remove("stream")));
            }
            if ops & 4 != 0 && s.get("x_fuzz_new").is_none() {
                s.insert("x_fuzz_new", b"[1,{\"a\":null}]");
                untracked(|| {
                    expect.as_mut().map(|m| m.insert("x_fuzz_new".into(), serde_json::json!([1, {"a": null}])))
                });
            }
            if ops & 8 != 0 {
                s.set("stream_options", b"{\"include_usage\":true}");
                untracked(|| {
                    expect
                        .as_mut()
                        .map(|m| m.insert("stream_options".into(), serde_json::json!({"include_usage": true})))
                });
            }
            if ops & 16 != 0 {
                if let Some(k) = &first_key {
                    s.remove(k);
                    untracked(|| expect.as_mut().map(|m| m.shift_remove(k)));
                }
            }
            let out = s.finish().map(|n| n.apply_to(body)).unwrap_or_else(|| body.to_vec());
            Some((out, expect))
        });
        match edited {
            None => violation("json_scan", || format!("Splice::new refused a valid object: {}", show(body))),
            Some((out, expect)) => {
                if !is_json_object(&out) {
                    violation("json_scan", || {
                        format!("Splice (ops {ops:#x}) made invalid JSON: {}\nfrom: {}", show(&out), show(body))
                    });
                }
                if let Some(expect) = expect {
                    let got = serde_json::from_slice::<Value>(&out).ok().and_then(|v| v.as_object().cloned());
                    if got.as_ref().is_some_and(|g| *g != expect) {
                        violation("json_scan", || {
                            format!("Splice (ops {ops:#x}) changed the meaning: {}\nfrom: {}", show(&out), show(body))
                        });
                    }
                }
            }
        }
    }

    // TopLevelCapture, fed in chunks, finds the last top-level `usage`.
    let cap = usize::from(cap_byte >> 3) * 4 + 1;
    let class = CHUNK_CLASSES[usize::from(cap_byte & 7) % CHUNK_CLASSES.len()];
    let mut chunker =
        Case { selector: 0, flags: 0, seed: u32::from(ops), chunk_class: class, request: &[], response: None }
            .chunker();
    let chunks = chunker.split(body);
    let captured = tracked(|| {
        let mut c = TopLevelCapture::new("usage", cap);
        for chunk in &chunks {
            c.push(chunk);
        }
        c.value().map(<[u8]>::to_vec)
    });
    if let Some(map) = &parsed {
        let want = map.get("usage");
        // The capture keeps the bytes between the colon and the next delimiter, whitespace included.
        let last_raw =
            found.as_ref().and_then(|(_, l)| l.iter().rev().find(|(k, _, _)| k == "usage")).map(|(_, _, v)| {
                let before = body[..v.start].iter().rev().take_while(|b| b.is_ascii_whitespace()).count();
                let after = body[v.end..].iter().take_while(|b| b.is_ascii_whitespace()).count();
                v.len() + before + after
            });
        match (&captured, want) {
            (Some(bytes), Some(want)) => {
                let got = serde_json::from_slice::<Value>(bytes).ok();
                if got.as_ref() != Some(want) {
                    violation("json_scan", || format!("TopLevelCapture got {}, serde_json {want}", show(bytes)));
                }
            }
            (Some(bytes), None) => {
                violation("json_scan", || format!("TopLevelCapture found a usage that is not there: {}", show(bytes)))
            }
            (None, Some(_)) if last_raw.is_some_and(|n| n <= cap) => {
                violation("json_scan", || format!("TopLevelCapture missed usage (cap {cap}): {}", show(body)))
            }
            _ => {}
        }
    }
    check_alloc(body.len() * 2, "json_scan");
    let _ = unbase64;
}

// ---- multipart/form-data: the model part of an upload ----------------------------------------

pub fn multipart(data: &[u8]) {
    untracked(|| multipart_inner(data))
}

fn multipart_inner(data: &[u8]) {
    use llmgw_filter::multipart::{boundary, field};
    // Byte 0 picks the boundary; the rest is the body (and, read as text, a content type).
    let Some((&s, body)) = data.split_first() else { return };
    let b = pick(&["b0", "----WebKitFormBoundary7MA4YWxkTrZu0gW", "x", "a'(b)+_,-./:=? c"], s);
    alloc::start();
    let found = tracked(|| field(body, b, "model"));
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = tracked(|| boundary(text));
    }
    check_alloc(body.len(), "multipart");
    if let Ok(Some(part)) = found {
        // A slice of the body, ended by a delimiter: the gateway never copies or edits the body.
        let start = (part.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
        let end = start.saturating_add(part.len());
        let delimiter = format!("\r\n--{b}");
        if end > body.len() || !body[end..].starts_with(delimiter.as_bytes()) {
            violation("multipart", || format!("the model part is not a part of the body: {}", show(body)));
        }
    }
}

// ---- for the seed tool ----------------------------------------------------------------------

/// The route an exchange target takes for an input (`None` for the other targets).
fn route_of(target: &str, s: u8) -> Option<Route> {
    Some(match target {
        "req_chat" => route(CHAT, pick(&BACKENDS, s)),
        "req_embeddings" => route(EMBEDDINGS, pick(&BACKENDS, s)),
        "req_messages" => route(MESSAGES, pick(&BACKENDS, s)),
        "tr_openai_passthrough" => route(pick(&[CHAT, COMPLETIONS, EMBEDDINGS], s), pick(&["openai", "azure"], s / 3)),
        "tr_openai_to_anthropic" => route(CHAT, pick(&ANTHROPIC_FAMILY, s)),
        "tr_anthropic_native" => route(MESSAGES, pick(&ANTHROPIC_FAMILY, s)),
        "tr_anthropic_to_openai" => route(MESSAGES, pick(&["openai", "azure"], s)),
        "tr_openai_to_gemini" => route(CHAT, "vertex"),
        "tr_vertex_embeddings" => route(EMBEDDINGS, "vertex"),
        "tr_openai_to_bedrock" => route(CHAT, "bedrock"),
        _ => return None,
    })
}

/// The upstream request (path, headers, body) the filter makes of an exchange target's input at
/// time `now_nanos`, or `None` if it answers locally. The seed tool sends it to the mock provider.
pub type Upstream = (String, Vec<(String, String)>, Vec<u8>);

pub fn upstream_request(target: &str, data: &[u8], now_nanos: u64) -> Option<Upstream> {
    let case = Case::parse(data)?;
    let r = route_of(target, case.selector)?;
    let shared = SHARED.with(|s| s[usize::from(case.has(F_CONFIG_B))].clone());
    let mut host = request_host(&case, r);
    host.now = now_nanos;
    let mut x = Exchange::new(Some(shared));
    x.on_request_headers(&mut host, case.request.is_empty());
    if host.reply.is_some() {
        return None;
    }
    host.request_body = case.request.to_vec();
    x.on_request_body(&mut host, case.request.len(), true);
    if host.reply.is_some() {
        return None;
    }
    let path = host.request_header_value(":path")?;
    Some((path, host.request_headers, host.request_body))
}
