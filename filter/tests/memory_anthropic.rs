//! Peak memory of the OpenAI → Anthropic translator on large bodies: the growth during one
//! translation (request, or a non-streaming answer) must stay within 1× the body + 1 MiB (the VM's
//! own copy of the body is the other 1×). Run with `--nocapture` to see the figures.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, dead_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use llmgw_filter::api::Endpoint;
use llmgw_filter::config::Schema;
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
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

const MIB: usize = 1024 * 1024;
/// Debug builds run the same scenarios four times smaller (the release run takes seconds).
const SCALE: usize = if cfg!(debug_assertions) { 4 } else { 1 };

/// Peak growth of live heap bytes while `f` runs (what `f` returns and keeps is included).
fn peak_growth<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let r = f();
    (r, PEAK.load(Ordering::SeqCst).saturating_sub(base))
}

const CONFIG: &str = "
backends:
  - name: claude
    schema: Anthropic
    auth: {x_api_key: test-key}
";

/// Asserts growth <= `allowed` + 1 MiB (`LLMGW_MEMORY_REPORT_ONLY=1`: only prints, to measure
/// an older build).
fn check(name: &str, body_len: usize, allowed: usize, growth: usize) {
    println!(
        "{name:<48} body {:>6.2} MiB  peak growth {:>7.2} MiB  ({:.2}x body)",
        body_len as f64 / MIB as f64,
        growth as f64 / MIB as f64,
        growth as f64 / body_len as f64
    );
    if std::env::var_os("LLMGW_MEMORY_REPORT_ONLY").is_none() {
        assert!(growth <= allowed + MIB, "{name}: grew {growth} bytes for a body of {body_len}");
    }
}

fn request(name: &str, body: &[u8]) {
    let backend = common::backend(CONFIG);
    let info = llmgw_filter::request::read(body).unwrap();
    let mut translator = for_backend(Endpoint::ChatCompletions, Schema::Anthropic, true).unwrap();
    let (edits, growth) = peak_growth(|| translator.request_body(&RequestContext::new(&info, body, &backend)));
    let edits = edits.unwrap_or_else(|e| panic!("{name}: {e:?}"));
    assert!(edits.body.is_some(), "{name}");
    check(name, body.len(), body.len(), growth);
}

fn response(name: &str, body: &[u8]) {
    let backend = common::backend(CONFIG);
    let req = br#"{"model":"claude-x","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
    let info = llmgw_filter::request::read(req).unwrap();
    let mut translator = for_backend(Endpoint::ChatCompletions, Schema::Anthropic, true).unwrap();
    translator.request_body(&RequestContext::new(&info, req, &backend)).unwrap();
    translator.response_headers(200, "application/json");
    let (edits, growth) = peak_growth(|| translator.response_body(body, true));
    assert_eq!(edits.status, None, "{name}");
    let out = edits.replace.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["object"], "chat.completion", "{name}");
    // A tool input becomes a JSON string (`"` → `\"`): an answer can be larger than the provider's;
    // then the bound is the answer itself (nothing held besides it).
    check(name, body.len(), body.len().max(out.len()), growth);
}

fn repeat(element: &str, n: usize, sep: &str) -> String {
    let mut s = String::with_capacity((element.len() + sep.len()) * n);
    for i in 0..n {
        if i > 0 {
            s.push_str(sep);
        }
        s.push_str(element);
    }
    s
}

#[test]
fn anthropic_translation_memory_is_bounded() {
    let head = r#"{"model":"claude-x","max_tokens":10,"#;

    let messages =
        repeat(r#"{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}"#, 100_000 / SCALE, ",");
    request("request: 200k tiny messages", format!(r#"{head}"messages":[{messages}]}}"#).as_bytes());

    let system = repeat(r#"{"role":"system","content":"be"}"#, 200_000 / SCALE, ",");
    request(
        "request: 200k tiny system messages",
        format!(r#"{head}"messages":[{system},{{"role":"user","content":"hi"}}]}}"#).as_bytes(),
    );

    let parts = repeat(r#"{"type":"text","text":"a"}"#, 1_000_000 / SCALE, ",");
    request(
        "request: 1M tiny content parts",
        format!(r#"{head}"messages":[{{"role":"user","content":[{parts}]}}]}}"#).as_bytes(),
    );

    let image = "A".repeat(5 * MIB / SCALE);
    request(
        "request: 5 MB base64 image",
        format!(
            r#"{head}"messages":[{{"role":"user","content":[{{"type":"image_url","image_url":{{"url":"data:image/png;base64,{image}"}}}}]}}]}}"#
        )
        .as_bytes(),
    );

    let text = repeat(r"line \u00e9 \n", MIB / SCALE, "");
    request(
        "request: 10 MB string with escapes",
        format!(r#"{head}"messages":[{{"role":"user","content":"{text}"}}]}}"#).as_bytes(),
    );

    let arguments = repeat(r#"\"k\":\"v\\n\""#, 700_000 / SCALE, ",");
    request(
        "request: 10 MB tool arguments with escapes",
        format!(
            r#"{head}"messages":[{{"role":"user","content":"hi"}},{{"role":"assistant","tool_calls":[{{"id":"c","type":"function","function":{{"name":"f","arguments":"{{{arguments}}}"}}}}]}},{{"role":"tool","tool_call_id":"c","content":"ok"}}]}}"#
        )
        .as_bytes(),
    );

    let zeros = repeat("0", 4_000_000 / SCALE, ",");
    request(
        "request: 4M tiny elements in an unknown member",
        format!(r#"{head}"messages":[{{"role":"user","content":"hi"}}],"x":[{zeros}]}}"#).as_bytes(),
    );

    let tools =
        repeat(r#"{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}"#, 200_000 / SCALE, ",");
    request(
        "request: 200k tools",
        format!(r#"{head}"messages":[{{"role":"user","content":"hi"}}],"tools":[{tools}]}}"#).as_bytes(),
    );

    let blocks = repeat(r#"{"type":"text","text":"a"}"#, 1_000_000 / SCALE, ",");
    response(
        "response: 1M tiny text blocks",
        format!(r#"{{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{blocks}],"stop_reason":"end_turn","usage":{{"input_tokens":1,"output_tokens":1}}}}"#).as_bytes(),
    );

    response(
        "response: 10 MB text with escapes",
        format!(r#"{{"id":"msg_1","content":[{{"type":"text","text":"{text}"}}],"stop_reason":"end_turn"}}"#)
            .as_bytes(),
    );

    let input = repeat(r#""k": "v\n""#, 800_000 / SCALE, ", ");
    response(
        "response: 10 MB tool input",
        format!(r#"{{"id":"msg_1","content":[{{"type":"tool_use","id":"t","name":"f","input":{{{input}}}}}],"stop_reason":"tool_use"}}"#).as_bytes(),
    );
}
