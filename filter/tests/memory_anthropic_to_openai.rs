//! Memory of the Anthropic client → OpenAI-compatible backend translation: peak heap growth while
//! one request (or one provider answer) is translated must stay within 1x its body + 1 MiB (the
//! VM's own copy of the body, allocated before the measurement, is the other 1x of the issue's
//! 2x + 1 MiB budget). Run with `--nocapture` to see the figures.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use llmgw_filter::api::Endpoint;
use llmgw_filter::config::{self, Env, Schema};
use llmgw_filter::request;
use llmgw_filter::translate::{self, RequestContext};

struct Tracking;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as alloc-then-free: a realloc that moves holds both blocks for a moment.
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            let now = CURRENT.fetch_add(new_size, Ordering::SeqCst) + new_size;
            PEAK.fetch_max(now, Ordering::SeqCst);
            CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

const MIB: usize = 1 << 20;

struct NoEnv;
impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

/// Peak growth over the heap in use when `f` starts.
fn peak_growth<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    (out, PEAK.load(Ordering::SeqCst).saturating_sub(base))
}

fn report(name: &str, body: usize, growth: usize) {
    println!(
        "{name:<44} body {:>7.2} MiB  peak growth {:>7.2} MiB  ({:.2}x body)",
        body as f64 / MIB as f64,
        growth as f64 / MIB as f64,
        growth as f64 / body as f64
    );
    assert!(growth <= body + MIB, "{name}: peak growth {growth} exceeds body {body} + 1 MiB");
}

fn backend() -> config::Backend {
    let compiled = config::parse(br#"{"backends":[{"name":"vllm","schema":"OpenAI"}]}"#, &NoEnv, 0).unwrap();
    compiled.backends.into_iter().next().unwrap()
}

/// Translates one request; returns the upstream body's length (and drops it inside the measurement).
fn translate_request(name: &str, body: &[u8]) {
    let backend = backend();
    let info = request::read(body).unwrap();
    let mut t = translate::for_backend(Endpoint::Messages, Schema::OpenAI, true).unwrap();
    let (len, growth) = peak_growth(|| {
        let edits = t.request_body(&RequestContext::new(&info, body, &backend));
        let edits = edits.unwrap_or_else(|e| panic!("{name}: {}", e.message));
        edits.body.map(|b| b.len(body.len()))
    });
    assert!(len.is_some(), "{name}");
    report(name, body.len(), growth);
}

fn translate_response(name: &str, stream: bool, body: &[u8]) {
    let backend = backend();
    let request = if stream {
        br#"{"model":"m","max_tokens":5,"stream":true,"messages":[]}"#.as_slice()
    } else {
        br#"{"model":"m","max_tokens":5,"messages":[]}"#.as_slice()
    };
    let info = request::read(request).unwrap();
    let mut t = translate::for_backend(Endpoint::Messages, Schema::OpenAI, true).unwrap();
    t.request_body(&RequestContext::new(&info, request, &backend)).unwrap();
    let content_type = if stream { "text/event-stream" } else { "application/json" };
    t.response_headers(200, content_type);
    let ((), growth) = peak_growth(|| {
        if stream {
            // As Envoy delivers it: in chunks, each translated and handed on.
            let mut chunks = body.chunks(64 * 1024).peekable();
            while let Some(chunk) = chunks.next() {
                let edits = t.response_body(chunk, chunks.peek().is_none());
                assert!(edits.status.is_none(), "{name}");
            }
        } else {
            let edits = t.response_body(body, true);
            assert_eq!(edits.status, None, "{name}: {:?}", edits.replace.map(String::from_utf8));
            assert!(edits.replace.is_some_and(|r| !r.is_empty()));
        }
    });
    report(name, body.len(), growth);
}

fn repeated(head: &str, element: &str, n: usize, tail: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(head.len() + (element.len() + 1) * n + tail.len());
    body.extend_from_slice(head.as_bytes());
    for i in 0..n {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(element.as_bytes());
    }
    body.extend_from_slice(tail.as_bytes());
    body
}

#[test]
fn translation_memory_is_bounded() {
    let head = r#"{"model":"m","max_tokens":10,"messages":["#;
    // Requests.
    let alternating = {
        let pair = r#"{"role":"user","content":"a"},{"role":"assistant","content":"b"}"#;
        repeated(head, pair, 100_000, "]}")
    };
    translate_request("request: 200k tiny messages", &alternating);
    translate_request(
        "request: 1M tiny content blocks",
        &repeated(
            r#"{"model":"m","max_tokens":10,"messages":[{"role":"user","content":["#,
            r#"{"type":"text","text":"a"}"#,
            1_000_000,
            "]}]}",
        ),
    );
    translate_request(
        "request: 200k tool_use + tool_result pairs",
        &repeated(
            head,
            r#"{"role":"assistant","content":[{"type":"tool_use","id":"t","name":"f","input":{"a":1}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":"r"}]}"#,
            100_000,
            "]}",
        ),
    );
    let image = format!(
        r#"{{"model":"m","max_tokens":10,"messages":[{{"role":"user","content":[{{"type":"text","text":"what is it?"}},{{"type":"image","source":{{"type":"base64","media_type":"image/png","data":"{}"}}}}]}}]}}"#,
        "A".repeat(5 * MIB)
    );
    translate_request("request: one 5 MiB base64 image", image.as_bytes());
    let text = format!(
        r#"{{"model":"m","max_tokens":10,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a\\n".repeat(10 * MIB / 3)
    );
    translate_request("request: one 10 MiB string with escapes", text.as_bytes());
    let schema = format!(
        r#"{{"model":"m","max_tokens":10,"messages":[],"tools":[{{"name":"f","input_schema":{{"type":"object","description":"{}"}}}}]}}"#,
        "s".repeat(5 * MIB)
    );
    translate_request("request: one 5 MiB input_schema", schema.as_bytes());
    let input = format!(
        r#"{{"model":"m","max_tokens":10,"messages":[{{"role":"assistant","content":[{{"type":"tool_use","id":"t","name":"f","input":{{"text":"{}"}}}}]}}]}}"#,
        "x".repeat(5 * MIB)
    );
    translate_request("request: one 5 MiB tool_use input", input.as_bytes());
    translate_request(
        "request: 4M tiny elements in an unknown member",
        &repeated(r#"{"model":"m","max_tokens":10,"messages":[],"x":["#, "0", 4_000_000, "]}"),
    );
    translate_request(
        "request: 200k system text blocks",
        &repeated(
            r#"{"model":"m","max_tokens":10,"messages":[],"system":["#,
            r#"{"type":"text","text":"s","cache_control":{"type":"ephemeral"}}"#,
            200_000,
            "]}",
        ),
    );

    // Non-streaming answers.
    let answer = format!(
        r#"{{"id":"c","object":"chat.completion","model":"m","choices":[{{"index":0,"message":{{"role":"assistant","content":"{}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":1,"completion_tokens":2}}}}"#,
        "word\\n".repeat(2 * MIB)
    );
    translate_response("answer: 10 MiB of text", false, answer.as_bytes());
    let args = format!(
        r#"{{"choices":[{{"message":{{"tool_calls":[{{"id":"c","function":{{"name":"f","arguments":"{{\"text\":\"{}\"}}"}}}}]}},"finish_reason":"tool_calls"}}]}}"#,
        "y".repeat(8 * MIB)
    );
    translate_response("answer: one 8 MiB tool call", false, args.as_bytes());
    translate_response(
        "answer: 200k tool calls",
        false,
        &repeated(
            r#"{"choices":[{"message":{"tool_calls":["#,
            r#"{"id":"c","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}"#,
            200_000,
            r#"]},"finish_reason":"tool_calls"}]}"#,
        ),
    );
    translate_response(
        "answer: 4M tiny elements in an unknown member",
        false,
        &repeated(r#"{"choices":[{"message":{"content":"hi"}}],"x":["#, "0", 4_000_000, "]}"),
    );

    // A stream, in 64 KiB chunks: memory follows the chunk, not the stream.
    let mut stream = Vec::new();
    for _ in 0..200_000 {
        stream.extend_from_slice(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok \"}}]}\n\n");
    }
    stream.extend_from_slice(
        b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
    );
    translate_response("stream: 200k chunks", true, &stream);
}
