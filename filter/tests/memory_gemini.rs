//! Peak memory of the Gemini translators (OpenAI chat → `generateContent`, OpenAI embeddings →
//! `predict`), measured with a counting global allocator around one translation: the growth must
//! stay within 1× the body + 1 MiB (the VM's own copy of the body is the other 1×, and is not
//! allocated by the measured call). `cargo test --test memory_gemini -- --nocapture` prints the figures.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};

use llmgw_filter::api::Endpoint;
use llmgw_filter::config::{self, Backend, Env, Schema};
use llmgw_filter::translate::{for_backend, RequestContext};

struct Tracking;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = CURRENT.fetch_add(by, Ordering::SeqCst) + by;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as the new block allocated while the old one is still held (the worst case).
            grew(new_size);
            CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Runs `f` and returns the peak growth of live heap bytes during it (what `f` keeps included).
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    (out, PEAK.load(Ordering::SeqCst).saturating_sub(base))
}

struct NoEnv;
impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

fn backend() -> Backend {
    let config = r#"{"backends": [{"name": "vertex", "schema": "GCPVertexAI", "project": "p", "region": "us-central1",
        "auth": {"bearer": "ya29.test"}}]}"#;
    config::parse(config.as_bytes(), &NoEnv, 0).unwrap().backends.into_iter().next().unwrap()
}

const MIB: usize = 1024 * 1024;

/// Element counts: full size in release builds (the figures in the report); a quarter in debug
/// builds, where the same bound is checked on bodies of several MiB in a fraction of the time.
fn n(full: usize) -> usize {
    if cfg!(debug_assertions) {
        full / 4
    } else {
        full
    }
}

struct Figure {
    name: &'static str,
    body: usize,
    out: usize,
    peak: usize,
    millis: u128,
}

/// Translates one request body; returns (output length, peak growth).
fn request(endpoint: Endpoint, body: &[u8], backend: &Backend) -> (usize, usize) {
    let info = llmgw_filter::request::read(body).unwrap();
    let mut t = for_backend(endpoint, Schema::GCPVertexAI, true).unwrap();
    let ctx = RequestContext { info: &info, body, backend, query: "", now_unix: 1, sink: Default::default() };
    let (edits, peak) = peak_during(|| t.request_body(&ctx).unwrap());
    let out = edits.body.unwrap().len(body.len());
    (out, peak)
}

/// Translates one whole (non-streaming) answer after `request_body`; returns (output, peak).
fn response(endpoint: Endpoint, request_body: &[u8], answer: &[u8], backend: &Backend) -> (usize, usize) {
    let info = llmgw_filter::request::read(request_body).unwrap();
    let mut t = for_backend(endpoint, Schema::GCPVertexAI, true).unwrap();
    let ctx =
        RequestContext { info: &info, body: request_body, backend, query: "", now_unix: 1, sink: Default::default() };
    t.request_body(&ctx).unwrap();
    t.response_headers(200, "application/json");
    let (edits, peak) = peak_during(|| t.response_body(answer, true));
    assert_eq!(edits.status, None, "{}", String::from_utf8_lossy(&edits.replace.unwrap()[..200]));
    (edits.replace.unwrap().len(), peak)
}

fn chat(messages: &str, extra: &str) -> Vec<u8> {
    format!(r#"{{"model":"gemini-2.5-flash","messages":[{messages}]{extra}}}"#).into_bytes()
}

fn repeat(n: usize, item: &str, sep: &str) -> String {
    let mut s = String::with_capacity(n * (item.len() + sep.len()));
    for i in 0..n {
        if i > 0 {
            s.push_str(sep);
        }
        s.push_str(item);
    }
    s
}

#[test]
fn peak_memory_stays_within_one_body_plus_one_mib() {
    let backend = backend();
    let mut figures: Vec<Figure> = Vec::new();
    let mut run = |name: &'static str, endpoint: Endpoint, body: Vec<u8>| {
        let start = std::time::Instant::now();
        let (out, peak) = request(endpoint, &body, &backend);
        figures.push(Figure { name, body: body.len(), out, peak, millis: start.elapsed().as_millis() });
    };
    let big = "A".repeat(10 * MIB);
    // 10 MiB of text with an escape every 64 bytes (newlines, quotes): never decoded into a copy.
    let escaped = "a\\n\\\"bcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ012".repeat(10 * MIB / 64);
    let b64 = "QUFB".repeat(5 * MIB / 4);
    run(
        "200k tiny user messages",
        Endpoint::ChatCompletions,
        chat(&repeat(n(200_000), r#"{"role":"user","content":"x"}"#, ","), ""),
    );
    run(
        "200k tiny alternating turns",
        Endpoint::ChatCompletions,
        chat(&repeat(n(100_000), r#"{"role":"user","content":"x"},{"role":"assistant","content":"y"}"#, ","), ""),
    );
    run(
        "1M tiny content parts",
        Endpoint::ChatCompletions,
        chat(
            &format!(r#"{{"role":"user","content":[{}]}}"#, repeat(n(1_000_000), r#"{"type":"text","text":"x"}"#, ",")),
            "",
        ),
    );
    run(
        "5 MB base64 image",
        Endpoint::ChatCompletions,
        chat(
            &format!(
                r#"{{"role":"user","content":[{{"type":"image_url","image_url":{{"url":"data:image/png;base64,{b64}"}}}}]}}"#
            ),
            "",
        ),
    );
    run("10 MB user string", Endpoint::ChatCompletions, chat(&format!(r#"{{"role":"user","content":"{big}"}}"#), ""));
    run(
        "10 MB user string with escapes",
        Endpoint::ChatCompletions,
        chat(&format!(r#"{{"role":"user","content":"{escaped}"}}"#), ""),
    );
    run(
        "10 MB tool result with escapes",
        Endpoint::ChatCompletions,
        chat(
            &format!(
                r#"{{"role":"assistant","tool_calls":[{{"id":"a","function":{{"name":"f","arguments":"{{}}"}}}}]}},{{"role":"tool","tool_call_id":"a","content":"{escaped}"}}"#
            ),
            "",
        ),
    );
    run(
        "10 MB system string",
        Endpoint::ChatCompletions,
        chat(&format!(r#"{{"role":"system","content":"{big}"}}"#), ""),
    );
    run(
        "4M tiny elements, unknown member",
        Endpoint::ChatCompletions,
        chat(r#"{"role":"user","content":"x"}"#, &format!(r#","x":[{}]"#, repeat(n(4_000_000), "0", ","))),
    );
    let mut turns = String::new();
    for i in 0..n(50_000) {
        if i > 0 {
            turns.push(',');
        }
        write!(
            turns,
            r#"{{"role":"assistant","content":null,"tool_calls":[{{"id":"call_{i:024}","type":"function","function":{{"name":"get_weather","arguments":"{{\"city\":\"Paris\"}}"}}}}]}},{{"role":"tool","tool_call_id":"call_{i:024}","content":"{{\"t\":1}}"}}"#
        )
        .unwrap();
    }
    run("50k tool calls + results", Endpoint::ChatCompletions, chat(&turns, ""));
    let args = format!(r#"{{\"blob\":\"{big}\"}}"#);
    run(
        "10 MB tool arguments",
        Endpoint::ChatCompletions,
        chat(
            &format!(
                r#"{{"role":"assistant","tool_calls":[{{"id":"a","function":{{"name":"f","arguments":"{args}"}}}}]}}"#
            ),
            "",
        ),
    );
    run(
        "10 MB JSON schema",
        Endpoint::ChatCompletions,
        chat(
            r#"{"role":"user","content":"x"}"#,
            &format!(
                r#","tools":[{{"type":"function","function":{{"name":"f","parameters":{{"description":"{big}"}}}}}}]"#
            ),
        ),
    );
    run(
        "1M tiny embedding inputs",
        Endpoint::Embeddings,
        format!(r#"{{"model":"text-embedding-005","input":[{}]}}"#, repeat(n(1_000_000), r#""x""#, ",")).into_bytes(),
    );
    run(
        "10 MB embedding input",
        Endpoint::Embeddings,
        format!(r#"{{"model":"text-embedding-005","input":"{big}"}}"#).into_bytes(),
    );

    // Answers (non-streaming, held whole by the exchange; the translation writes the client's body).
    let mut answer = |name: &'static str, endpoint: Endpoint, request_body: &[u8], body: Vec<u8>| {
        let start = std::time::Instant::now();
        let (out, peak) = response(endpoint, request_body, &body, &backend);
        figures.push(Figure { name, body: body.len(), out, peak, millis: start.elapsed().as_millis() });
    };
    let chat_request = chat(r#"{"role":"user","content":"x"}"#, "");
    answer(
        "answer: 10 MB text",
        Endpoint::ChatCompletions,
        &chat_request,
        format!(r#"{{"candidates":[{{"content":{{"parts":[{{"text":"{big}"}}]}},"finishReason":"STOP"}}]}}"#)
            .into_bytes(),
    );
    answer(
        "answer: 10 MB text with escapes",
        Endpoint::ChatCompletions,
        &chat_request,
        format!(r#"{{"candidates":[{{"content":{{"parts":[{{"text":"{escaped}"}}]}},"finishReason":"STOP"}}]}}"#)
            .into_bytes(),
    );
    answer(
        "answer: 1M tiny parts",
        Endpoint::ChatCompletions,
        &chat_request,
        format!(
            r#"{{"candidates":[{{"content":{{"parts":[{}]}},"finishReason":"STOP"}}]}}"#,
            repeat(n(1_000_000), r#"{"text":"x"}"#, ",")
        )
        .into_bytes(),
    );
    answer(
        "answer: 100k function calls",
        Endpoint::ChatCompletions,
        &chat_request,
        format!(
            r#"{{"candidates":[{{"content":{{"parts":[{}]}},"finishReason":"STOP"}}],"responseId":"r"}}"#,
            repeat(n(100_000), r#"{"functionCall":{"name":"f","args":{"city":"Paris"}}}"#, ",")
        )
        .into_bytes(),
    );
    let values = repeat(n(1_000_000), "-0.0402735136449337", ",");
    let predict =
        format!(r#"{{"predictions":[{{"embeddings":{{"values":[{values}],"statistics":{{"token_count":3}}}}}}]}}"#);
    answer(
        "answer: 1M embedding floats",
        Endpoint::Embeddings,
        br#"{"model":"m","input":"x"}"#,
        predict.clone().into_bytes(),
    );
    answer(
        "answer: 1M embedding floats, base64",
        Endpoint::Embeddings,
        br#"{"model":"m","input":"x","encoding_format":"base64"}"#,
        predict.into_bytes(),
    );

    println!("{:<38} {:>12} {:>12} {:>12} {:>9} {:>8}", "scenario", "body", "output", "peak growth", "peak/body", "ms");
    for f in &figures {
        println!(
            "{:<38} {:>12} {:>12} {:>12} {:>9.2} {:>8}",
            f.name,
            f.body,
            f.out,
            f.peak,
            f.peak as f64 / f.body as f64,
            f.millis
        );
    }
    for f in &figures {
        // The provider's format can be larger than the client's (tiny alternating turns: each
        // `{"role":"user","content":"x"}` becomes `{"role":"user","parts":[{"text":"x"}]}`); the
        // translation itself must cost no more than its output and 1 MiB.
        let bound = f.body.max(f.out) + MIB;
        assert!(f.peak <= bound, "{}: peak growth {} > {} (body {}, output {})", f.name, f.peak, bound, f.body, f.out);
    }
}
