//! Runs the bench's request through the filter's gateway logic natively, many times, and prints
//! the time per request and the host calls it makes (each one a VM boundary crossing in Envoy).
//!
//! ```text
//! llmgw-bench-profile [openai|anthropic] [json|stream] [BODY_BYTES] [ITERATIONS]
//! valgrind --tool=callgrind target/release/llmgw-bench-profile openai json 1024 2000
//! ```
//! The plugin configuration, request body and mock responses are those of `make bench`.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

use llmgw_filter::config;
use llmgw_filter::exchange::{Exchange, Shared};
use llmgw_filter::host::Host;
use llmgw_filter::metrics::Sample;

const PLUGIN: &str = r#"{
  "backends": [
    {"name": "openai", "schema": "OpenAI", "prefix": "/v1", "auth": {"bearer": "sk-bench-upstream"}},
    {"name": "anthropic", "schema": "Anthropic", "auth": {"x_api_key": "sk-ant-bench-upstream"}}
  ],
  "rules": [
    {"name": "openai-models", "match": {"model": {"glob": "gpt-*"}}, "backends": [{"name": "openai"}]},
    {"name": "anthropic-models", "match": {"model": {"prefix": "claude-"}}, "backends": [{"name": "anthropic"}]}
  ]
}"#;

struct NoEnv;
impl config::Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

#[derive(Default)]
struct MemHost {
    req_headers: Vec<(String, String)>,
    req_body: Vec<u8>,
    resp_headers: Vec<(String, String)>,
    resp_body: Vec<u8>,
    now: u64,
    calls: BTreeMap<&'static str, u64>,
    bytes_in: u64,
    bytes_out: u64,
}

impl MemHost {
    fn count(&mut self, what: &'static str) {
        *self.calls.entry(what).or_default() += 1;
    }
}

fn get(h: &[(String, String)], name: &str) -> Option<String> {
    h.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
}

fn set(h: &mut Vec<(String, String)>, name: &str, value: &str) {
    h.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    h.push((name.to_string(), value.to_string()));
}

// `&self` getters cannot count; the counts of gets are kept in a thread-local instead.
thread_local! {
    static GETS: std::cell::RefCell<BTreeMap<&'static str, u64>> = Default::default();
    static GET_BYTES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}
fn count_get(what: &'static str, bytes: usize) {
    GETS.with(|g| *g.borrow_mut().entry(what).or_default() += 1);
    GET_BYTES.with(|b| b.set(b.get() + bytes as u64));
}

impl Host for MemHost {
    fn set_request_header(&mut self, name: &str, value: &str) {
        self.count("replace_header_map_value(request)");
        set(&mut self.req_headers, name, value)
    }
    fn remove_request_header(&mut self, name: &str) {
        self.count("remove_header_map_value(request)");
        self.req_headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name))
    }
    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        count_get("get_buffer_bytes(request body)", size);
        Some(self.req_body[..size.min(self.req_body.len())].to_vec())
    }
    fn append_request_body(&mut self, body: &[u8]) {
        self.count("set_buffer_bytes(request body)");
        self.bytes_out += body.len() as u64;
        self.req_body.extend_from_slice(body);
    }
    fn set_request_body(&mut self, size: usize, body: &[u8]) {
        self.count("set_buffer_bytes(request body)");
        self.bytes_out += body.len() as u64;
        let size = size.min(self.req_body.len());
        self.req_body.splice(..size, body.iter().copied());
    }
    fn response_headers(&self) -> Vec<(String, String)> {
        count_get("get_header_map_pairs(response)", 0);
        self.resp_headers.clone()
    }
    fn response_header(&self, name: &str) -> Option<String> {
        let v = get(&self.resp_headers, name);
        count_get("get_header_map_value(response)", v.as_ref().map_or(0, |s| s.len()));
        v
    }
    fn set_response_header(&mut self, name: &str, value: &str) {
        self.count("replace_header_map_value(response)");
        set(&mut self.resp_headers, name, value)
    }
    fn remove_response_header(&mut self, name: &str) {
        self.count("remove_header_map_value(response)");
        self.resp_headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name))
    }
    fn response_body(&self, size: usize) -> Option<Vec<u8>> {
        count_get("get_buffer_bytes(response body)", size);
        Some(self.resp_body[..size.min(self.resp_body.len())].to_vec())
    }
    fn set_response_body(&mut self, size: usize, body: &[u8]) {
        self.count("set_buffer_bytes(response body)");
        self.bytes_out += body.len() as u64;
        let size = size.min(self.resp_body.len());
        self.resp_body.splice(..size, body.iter().copied());
    }
    fn send_reply(&mut self, status: u16, _headers: &[(&str, &str)], body: &[u8]) {
        panic!("unexpected local reply {status}: {}", String::from_utf8_lossy(body));
    }
    fn set_filter_state(&mut self, _name: &str, _value: &[u8]) {
        self.count("set_property(filter state)");
    }
    fn property(&self, _path: &[&str]) -> Option<Vec<u8>> {
        count_get("get_property", 0);
        None
    }
    fn request_headers(&self) -> Vec<(String, String)> {
        count_get("get_header_map_pairs(request)", 0);
        self.req_headers.clone()
    }
    fn set_request_headers(&mut self, headers: &[(String, String)]) {
        self.count("set_header_map_pairs(request)");
        self.req_headers = headers.to_vec();
    }
    fn clear_route_cache(&mut self) {
        self.count("call_foreign_function(clear_route_cache)");
    }
    fn now_nanos(&self) -> u64 {
        count_get("get_current_time", 0);
        self.now
    }
    fn record(&mut self, sample: &Sample) {
        self.count("increment/record_metric");
        self.bytes_in += sample.name.len() as u64;
    }
}

fn body(model: &str, size: usize, stream: bool) -> Vec<u8> {
    // The same shape and size as bench.py's make_body().
    let head = format!(
        r#"{{"model":"{model}",{}"messages":[{{"role":"system","content":"You are a terse assistant."}},{{"role":"user","content":""#,
        if stream { r#""stream":true,"# } else { "" }
    );
    let tail = r#""}],"max_tokens":256}"#;
    let fill = size.saturating_sub(head.len() + tail.len());
    let text: String = "The quick brown fox jumps over the lazy dog. ".repeat(fill / 45 + 2);
    let mut t = text[..fill.saturating_sub(1)].to_string();
    t.push('?');
    format!("{head}{t}{tail}").into_bytes()
}

fn words(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("tok{i} ")).collect()
}

/// The bench mock's replies (bench_mock.rs): (content-type, chunks).
fn reply(anthropic: bool, stream: bool) -> (&'static str, Vec<Vec<u8>>) {
    let w = words(8);
    let text = w.concat();
    let usage = r#"{"prompt_tokens":250,"completion_tokens":8,"total_tokens":258,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}"#;
    match (anthropic, stream) {
        (false, false) => ("application/json", vec![format!(r#"{{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","system_fingerprint":"fp_bench","choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}","refusal":null}},"logprobs":null,"finish_reason":"stop"}}],"usage":{usage}}}"#).into_bytes()]),
        (true, false) => ("application/json", vec![format!(r#"{{"id":"msg_bench","type":"message","role":"assistant","model":"claude-3-5-haiku-latest","content":[{{"type":"text","text":"{text}"}}],"stop_reason":"end_turn","stop_sequence":null,"usage":{{"input_tokens":250,"output_tokens":8}}}}"#).into_bytes()]),
        (false, true) => {
            let oa = |c: &str| format!("data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_bench\",\"choices\":{c}}}\n\n");
            let mut v = vec![format!("{}{}", oa(r#"[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]"#), oa(&format!(r#"[{{"index":0,"delta":{{"content":"{}"}},"logprobs":null,"finish_reason":null}}]"#, w[0])))];
            for t in &w[1..] {
                v.push(oa(&format!(r#"[{{"index":0,"delta":{{"content":"{t}"}},"logprobs":null,"finish_reason":null}}]"#)));
            }
            v.push(format!("{}data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_bench\",\"choices\":[],\"usage\":{usage}}}\n\ndata: [DONE]\n\n", oa(r#"[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]"#)));
            ("text/event-stream", v.into_iter().map(String::into_bytes).collect())
        }
        (true, true) => {
            let ev = |n: &str, d: &str| format!("event: {n}\ndata: {d}\n\n");
            let mut v = vec![format!(
                "{}{}{}",
                ev("message_start", r#"{"type":"message_start","message":{"id":"msg_bench","type":"message","role":"assistant","model":"claude-3-5-haiku-latest","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":250,"output_tokens":1}}}"#),
                ev("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#),
                ev("content_block_delta", &format!(r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{}"}}}}"#, w[0]))
            )];
            for t in &w[1..] {
                v.push(ev("content_block_delta", &format!(r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{t}"}}}}"#)));
            }
            v.push(format!(
                "{}{}{}",
                ev("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
                ev("message_delta", r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":8}}"#),
                ev("message_stop", r#"{"type":"message_stop"}"#)
            ));
            ("text/event-stream", v.into_iter().map(String::into_bytes).collect())
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let anthropic = args.get(1).is_some_and(|a| a == "anthropic");
    let stream = args.get(2).is_some_and(|a| a == "stream");
    let size: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let iters: u64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let compiled = config::parse(PLUGIN.as_bytes(), &NoEnv, 0).expect("plugin config");
    let shared = Rc::new(Shared::new(compiled));
    let model = if anthropic { "claude-3-5-haiku-latest" } else { "gpt-4o-mini" };
    let req = body(model, size, stream);
    let (ctype, chunks) = reply(anthropic, stream);
    let resp_len: usize = chunks.iter().map(Vec::len).sum();

    let mut calls: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut bytes_out = 0;
    let t0 = Instant::now();
    for i in 0..iters {
        let mut h = MemHost {
            req_headers: [
                (":authority", "127.0.0.1:1975"),
                (":path", "/v1/chat/completions"),
                (":method", "POST"),
                (":scheme", "http"),
                ("content-type", "application/json"),
                ("authorization", "Bearer sk-bench"),
                ("content-length", &req.len().to_string()),
                ("x-forwarded-proto", "http"),
                ("x-request-id", "7c6e2b8e-2f0a-4f6b-9d2c-2f3a8c1b9e10"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            req_body: req.clone(),
            now: i * 1_000_000,
            ..Default::default()
        };
        let mut ex = Exchange::new(Some(shared.clone()));
        ex.on_request_headers(&mut h, false);
        ex.on_request_body(&mut h, req.len(), true);
        h.resp_headers = vec![
            (":status".into(), "200".into()),
            ("content-type".into(), ctype.into()),
            ("x-envoy-upstream-service-time".into(), "0".into()),
        ];
        if !stream {
            h.resp_headers.push(("content-length".into(), resp_len.to_string()));
        }
        ex.on_response_headers(&mut h, false);
        let last = chunks.len() - 1;
        for (j, c) in chunks.iter().enumerate() {
            h.resp_body = c.clone();
            h.now += 100_000;
            ex.on_response_body(&mut h, c.len(), j == last);
        }
        ex.on_log(&mut h);
        if i == 0 {
            eprintln!(
                "upstream :path {:?}, x-llmgw-backend {:?}, upstream body {} bytes",
                get(&h.req_headers, ":path"),
                get(&h.req_headers, "x-llmgw-backend"),
                h.req_body.len()
            );
        }
        for (k, v) in &h.calls {
            *calls.entry(k).or_default() += v;
        }
        bytes_out += h.bytes_out;
    }
    let per = t0.elapsed().as_secs_f64() * 1e6 / iters as f64;
    println!(
        "{} {} body {} B: {per:.2} µs per request (native, {iters} iterations)",
        if anthropic { "anthropic" } else { "openai" },
        if stream { "stream" } else { "json" },
        req.len()
    );
    println!("host calls per request:");
    GETS.with(|g| {
        for (k, v) in g.borrow().iter() {
            println!("  {:>6.1}  {k}", *v as f64 / iters as f64);
        }
    });
    for (k, v) in &calls {
        println!("  {:>6.1}  {k}", *v as f64 / iters as f64);
    }
    println!(
        "bytes copied out of the host per request: {:.0}; into it: {:.0}",
        GET_BYTES.with(|b| b.get()) as f64 / iters as f64,
        bytes_out as f64 / iters as f64
    );
}
