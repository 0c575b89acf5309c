//! Writes the seed corpora under fuzz/seeds/<target>/ from
//! - the golden fixtures in filter/tests/fixtures/ (client requests and provider answers), and
//! - the e2e mock provider's answers (host-tests' `mock-provider`, started here on a free port)
//!   to hand-written client requests, as the filter translates them.
//!
//! cargo run --example seeds -- MOCK_BIN    (make fuzz-seeds does this)

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use llmgw_fuzz::check::unbase64;
use llmgw_fuzz::input::{F_CLIENT_AUTH, F_CONTENT_LENGTH, F_FRAMES, F_SPLIT_REQUEST, SEP};
use llmgw_fuzz::targets;

const CHAT_REQUESTS: &[(&str, &str)] = &[
    (
        "chat-basic",
        r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Say hello"}],"max_tokens":50,"temperature":0.5,"top_p":0.9,"stop":["\n\nHuman:"],"user":"u-1"}"#,
    ),
    ("chat-stream", r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Say hello"}]}"#),
    (
        "chat-stream-usage",
        r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"developer","content":"x"},{"role":"user","content":[{"type":"text","text":"Say hello"}]}],"max_completion_tokens":64}"#,
    ),
    (
        "chat-tools",
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"What is the weather in Paris? use the tool"}],"tools":[{"type":"function","function":{"name":"get_weather","description":"Weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}],"tool_choice":"auto","parallel_tool_calls":false}"#,
    ),
    (
        "chat-tools-stream",
        r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"use the tool for both cities"}],"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}],"tool_choice":{"type":"function","function":{"name":"get_weather"}}}"#,
    ),
    (
        "chat-tool-history",
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"weather?"},{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},{"role":"tool","tool_call_id":"call_1","content":"sunny"},{"role":"user","content":"thanks"}],"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]}"#,
    ),
    (
        "chat-vision",
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":[{"type":"text","text":"What is this?","cache_control":{"type":"ephemeral"}},{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="}},{"type":"image_url","image_url":{"url":"https://example.com/cat.jpg","detail":"low"}}]}]}"#,
    ),
    (
        "chat-reasoning",
        r#"{"model":"o3-mini","reasoning_effort":"high","messages":[{"role":"user","content":"Think."}],"response_format":{"type":"json_schema","json_schema":{"name":"r","schema":{"type":"object","properties":{"a":{"type":"integer"}}}}},"seed":7,"n":1,"logit_bias":{"50256":-100},"metadata":{"k":"v"}}"#,
    ),
    ("chat-error", r#"{"model":"mock-error-429","messages":[{"role":"user","content":"hi"}]}"#),
    ("chat-stream-error", r#"{"model":"mock-error-500","stream":true,"messages":[{"role":"user","content":"hi"}]}"#),
];

const COMPLETION_REQUESTS: &[(&str, &str)] = &[
    ("completion", r#"{"model":"gpt-3.5-turbo-instruct","prompt":"once upon","max_tokens":5}"#),
    (
        "completion-stream",
        r#"{"model":"gpt-3.5-turbo-instruct","prompt":["a","b"],"stream":true,"stream_options":{"include_usage":false}}"#,
    ),
];

const EMBEDDING_REQUESTS: &[(&str, &str)] = &[
    ("embed-string", r#"{"model":"text-embedding-3-small","input":"hello world"}"#),
    (
        "embed-array",
        r#"{"model":"text-embedding-005","input":["a b","c d e"],"encoding_format":"base64","dimensions":8}"#,
    ),
    ("embed-tokens", r#"{"model":"text-embedding-3-small","input":[[1,2,3],[4]],"user":"u"}"#),
    ("embed-error", r#"{"model":"mock-error-503","input":"x"}"#),
];

const MESSAGES_REQUESTS: &[(&str, &str)] = &[
    (
        "msg-basic",
        r#"{"model":"claude-3-5-haiku","max_tokens":64,"system":"Be brief.","messages":[{"role":"user","content":"Say hello"}],"temperature":0.3,"stop_sequences":["END"],"metadata":{"user_id":"u-1"}}"#,
    ),
    (
        "msg-stream",
        r#"{"model":"claude-3-5-haiku","max_tokens":64,"stream":true,"messages":[{"role":"user","content":[{"type":"text","text":"Say hello"}]}]}"#,
    ),
    (
        "msg-tools",
        r#"{"model":"claude-sonnet-4","max_tokens":256,"messages":[{"role":"user","content":"use the tool"}],"tools":[{"name":"get_weather","description":"w","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}},{"type":"web_search_20250305","name":"web_search","max_uses":2}],"tool_choice":{"type":"auto","disable_parallel_tool_use":true}}"#,
    ),
    (
        "msg-tool-history",
        r#"{"model":"claude-sonnet-4","max_tokens":256,"stream":true,"messages":[{"role":"user","content":"weather?"},{"role":"assistant","content":[{"type":"thinking","thinking":"hmm","signature":"sig"},{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"sunny","is_error":false}]}],"tools":[{"name":"get_weather","input_schema":{"type":"object"}}]}"#,
    ),
    (
        "msg-documents",
        r#"{"model":"claude-sonnet-4","max_tokens":2048,"thinking":{"type":"enabled","budget_tokens":1024},"system":[{"type":"text","text":"You read documents.","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":[{"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"JVBERi0xLjQK"},"cache_control":{"type":"ephemeral"}},{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}},{"type":"text","text":"Summarize."}]}],"top_k":5}"#,
    ),
    ("msg-error", r#"{"model":"mock-error-529","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#),
];

fn header(selector: u8, flags: u8, class: u8) -> Vec<u8> {
    vec![selector, flags, 0x5e, 0xed, 0x12, 0x34, class]
}

struct Writer {
    root: PathBuf,
    written: BTreeSet<String>,
}

impl Writer {
    fn put(&mut self, target: &str, name: &str, data: &[u8]) {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).expect("create seed dir");
        let file = format!("{name}.seed");
        std::fs::write(dir.join(&file), data).expect("write seed");
        self.written.insert(format!("{target}/{file}"));
    }
}

fn compose(head: &[u8], request: &[u8], response: Option<(&str, &[u8])>) -> Vec<u8> {
    let mut out = head.to_vec();
    out.extend_from_slice(request);
    if let Some((status_line, body)) = response {
        out.extend_from_slice(SEP);
        out.extend_from_slice(status_line.as_bytes());
        out.extend_from_slice(SEP);
        out.extend_from_slice(body);
    }
    out
}

// ---- the mock provider ------------------------------------------------------------------------

struct Mock {
    child: Child,
    addr: String,
}

impl Mock {
    fn start(bin: &Path) -> Mock {
        let mut child = Command::new(bin)
            .args(["--port", "0", "--name", "fuzz-seed", "--chunks", "4"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("mock's first line");
        let addr = line.trim().strip_prefix("listening ").expect("listening ADDR").to_string();
        Mock { child, addr }
    }

    /// Sends the upstream request; returns (status, content-type, body).
    fn send(&self, path: &str, headers: &[(String, String)], body: &[u8]) -> (u16, String, Vec<u8>) {
        let mut s = TcpStream::connect(&self.addr).expect("connect to mock");
        let mut req = format!("POST {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n", self.addr);
        for (n, v) in headers {
            if n.starts_with(':') || n == "content-length" || n == "host" {
                continue;
            }
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        s.write_all(req.as_bytes()).and_then(|_| s.write_all(body)).expect("send");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("read answer");
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("response head");
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let mut rest = raw[split + 4..].to_vec();
        let mut lines = head.lines();
        let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut content_type = String::new();
        let mut chunked = false;
        for l in lines {
            let (n, v) = l.split_once(':').unwrap_or((l, ""));
            match n.trim().to_ascii_lowercase().as_str() {
                "content-type" => content_type = v.trim().to_string(),
                "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
                _ => {}
            }
        }
        if chunked {
            rest = dechunk(&rest);
        }
        (status, content_type, rest)
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).split(';').next().unwrap_or("0").trim(), 16)
                .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&b[start..(start + size).min(b.len())]);
        b = &b[(start + size + 2).min(b.len())..];
    }
    out
}

/// An eventstream body as the harness's frame lines (see `input::frames`).
fn frame_lines(body: &[u8]) -> Vec<u8> {
    use llmgw_filter::eventstream::{Decoder, Kind};
    let mut out = String::new();
    let mut d = Decoder::default();
    let _ = d.push(body, |m| {
        let payload = String::from_utf8_lossy(m.payload()).to_string();
        let line = match m.kind() {
            Kind::Event("chunk") => {
                let v: serde_json::Value = serde_json::from_str(&payload).unwrap_or_default();
                let inner = v["bytes"].as_str().and_then(unbase64).unwrap_or_default();
                format!("chunk {}", String::from_utf8_lossy(&inner))
            }
            Kind::Event(name) => format!("event {name} {payload}"),
            Kind::Exception(name) => format!("exception {name} {payload}"),
            Kind::Error { code, message } => format!("error {code} {message}"),
            Kind::Unknown => format!("bare {payload}"),
        };
        out.push_str(&line);
        out.push('\n');
    });
    out.into_bytes()
}

fn fixture_frames(jsonl: &str) -> Vec<u8> {
    let mut out = String::new();
    for line in jsonl.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).expect("frames.jsonl line");
        let payload = v["payload"].to_string();
        if let Some(e) = v["event"].as_str() {
            out.push_str(&format!("event {e} {payload}\n"));
        } else if let Some(e) = v["exception"].as_str() {
            out.push_str(&format!("exception {e} {payload}\n"));
        }
    }
    out.into_bytes()
}

type Requests = &'static [(&'static str, &'static str)];

fn exchange_targets() -> Vec<(&'static str, Vec<u8>, Requests)> {
    // (target, selectors, requests)
    vec![
        ("tr_openai_passthrough", vec![0, 3], CHAT_REQUESTS),
        ("tr_openai_passthrough", vec![1, 4], COMPLETION_REQUESTS),
        ("tr_openai_passthrough", vec![2, 5], EMBEDDING_REQUESTS),
        ("tr_openai_to_anthropic", vec![0, 1, 2], CHAT_REQUESTS),
        ("tr_anthropic_native", vec![0, 1, 2], MESSAGES_REQUESTS),
        ("tr_anthropic_to_openai", vec![0, 1], MESSAGES_REQUESTS),
        ("tr_openai_to_gemini", vec![0], CHAT_REQUESTS),
        ("tr_vertex_embeddings", vec![0], EMBEDDING_REQUESTS),
        ("tr_openai_to_bedrock", vec![0], CHAT_REQUESTS),
    ]
}

fn main() {
    let mock_bin = std::env::args().nth(1).map(PathBuf::from);
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fixtures = here.join("../filter/tests/fixtures");
    let mut w = Writer { root: here.join("seeds"), written: BTreeSet::new() };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64;

    // Client requests alone, for the request parsers (every backend).
    for (target, requests) in [
        ("req_chat", CHAT_REQUESTS),
        ("req_chat", COMPLETION_REQUESTS),
        ("req_embeddings", EMBEDDING_REQUESTS),
        ("req_messages", MESSAGES_REQUESTS),
    ] {
        for (name, body) in requests {
            for s in 0..7u8 {
                let flags = if s % 2 == 0 { F_CONTENT_LENGTH } else { F_SPLIT_REQUEST | F_CLIENT_AUTH };
                w.put(
                    target,
                    &format!("{name}-{}", targets::BACKENDS[s as usize]),
                    &compose(&header(s, flags, 3), body.as_bytes(), None),
                );
            }
        }
    }

    // Mock answers.
    if let Some(bin) = &mock_bin {
        let mock = Mock::start(bin);
        for (target, selectors, requests) in exchange_targets() {
            for s in selectors {
                for (name, body) in requests {
                    let probe = compose(&header(s, F_CONTENT_LENGTH, 6), body.as_bytes(), None);
                    let Some((path, headers, upstream)) = targets::upstream_request(target, &probe, now) else {
                        eprintln!("{target}/{name} (selector {s}): answered locally, no mock seed");
                        continue;
                    };
                    let (status, ct, answer) = mock.send(&path, &headers, &upstream);
                    let eventstream = ct.contains("amazon.eventstream");
                    let (flags, body_bytes) = if eventstream {
                        (F_CONTENT_LENGTH | F_FRAMES, frame_lines(&answer))
                    } else {
                        (F_CONTENT_LENGTH, answer)
                    };
                    let class = if ct.contains("event") { 3 } else { 6 };
                    let head = header(s, flags, class);
                    let seed = compose(&head, body.as_bytes(), Some((&format!("{status} {ct}"), &body_bytes)));
                    w.put(target, &format!("mock-{name}-{s}"), &seed);
                    if status != 200 && status != 0 {
                        eprintln!("{target}/{name} (selector {s}): mock answered {status}");
                    }
                }
            }
        }
    } else {
        eprintln!("no mock-provider given: fixtures only");
    }

    // Golden fixtures: request.in.json with response.in.{json,sse,frames.jsonl}; errors/*.in.
    for (dir, target) in [("openai-awsbedrock", "tr_openai_to_bedrock"), ("openai-gcpvertexai", "tr_openai_to_gemini")]
    {
        let base = fixtures.join(dir);
        let mut cases: Vec<_> = std::fs::read_dir(&base).expect("fixtures").flatten().map(|e| e.path()).collect();
        cases.sort();
        for case in cases.iter().filter(|p| p.join("request.in.json").exists()) {
            let name = case.file_name().unwrap_or_default().to_string_lossy().to_string();
            let request = std::fs::read(case.join("request.in.json")).expect("request");
            let meta = std::fs::read_to_string(case.join("case.json")).unwrap_or_default();
            let target = if meta.contains("\"embeddings\"") { "tr_vertex_embeddings" } else { target };
            let (ct, flags, body) = if let Ok(b) = std::fs::read(case.join("response.in.json")) {
                ("application/json", 0, b)
            } else if let Ok(b) = std::fs::read(case.join("response.in.sse")) {
                ("text/event-stream", 0, b)
            } else if let Ok(t) = std::fs::read_to_string(case.join("response.in.frames.jsonl")) {
                ("application/vnd.amazon.eventstream", F_FRAMES, fixture_frames(&t))
            } else {
                continue;
            };
            let head = header(0, flags | F_CONTENT_LENGTH, if ct == "application/json" { 6 } else { 2 });
            w.put(
                target,
                &format!("fixture-{dir}-{name}"),
                &compose(&head, &request, Some((&format!("200 {ct}"), &body))),
            );
            w.put(
                "req_chat",
                &format!("fixture-{dir}-{name}"),
                &compose(&header(if dir.contains("aws") { 5 } else { 6 }, 0, 6), &request, None),
            );
        }
        let errors = base.join("errors");
        let request = std::fs::read(
            base.join(if dir.contains("aws") { "chat-basic" } else { "stream-text" }).join("request.in.json"),
        )
        .expect("request");
        let mut files: Vec<_> = std::fs::read_dir(&errors).expect("errors").flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files.iter().filter(|p| p.extension().is_some_and(|e| e == "in")) {
            let stem = f.file_stem().unwrap_or_default().to_string_lossy().to_string();
            let status = stem.split('-').next().unwrap_or("500");
            let body = std::fs::read(f).expect("error body");
            let ct = if body.first() == Some(&b'{') || body.first() == Some(&b'[') {
                "application/json"
            } else {
                "text/plain"
            };
            w.put(
                target,
                &format!("fixture-{dir}-error-{stem}"),
                &compose(&header(0, 0, 6), &request, Some((&format!("{status} {ct}"), &body))),
            );
        }
    }

    // Standalone targets.
    for f in
        ["openai-gcpvertexai/stream-text/response.in.sse", "openai-gcpvertexai/stream-tools-thinking/response.in.sse"]
    {
        let body = std::fs::read(fixtures.join(f)).expect("sse fixture");
        for class in [0u8, 2, 3, 6] {
            let mut seed = vec![class, 1, 2, 3, 4];
            seed.extend_from_slice(&body);
            w.put("sse_splitter", &format!("{}-{class}", f.replace('/', "-")), &seed);
        }
    }
    w.put(
        "sse_splitter",
        "line-endings",
        b"\x02\x01\x02\x03\x04data: {\"a\":1}\n\nevent: x\r\ndata: l1\r\ndata: l2\r\n\r\n: comment\n\ndata: last\r\r",
    );
    for (name, case) in [
        ("bedrock-stream-text", "stream-text"),
        ("bedrock-stream-exception", "stream-exception"),
        ("bedrock-stream-tools", "stream-tools"),
    ] {
        let t = std::fs::read_to_string(fixtures.join("openai-awsbedrock").join(case).join("response.in.frames.jsonl"))
            .expect("frames");
        let mut seed = vec![1u8, 2, 9, 9, 9, 9];
        seed.extend_from_slice(&llmgw_fuzz::input::frames(&fixture_frames(&t)));
        w.put("eventstream", name, &seed);
    }
    // Record form: [flags][headers len][payload len LE][headers][payload].
    let mut rec = vec![0u8, 3, 0, 0, 0, 0];
    for (h, p) in [(&b"\x0d:message-type\x07\x00\x05event"[..], &b"{\"x\":1}"[..]), (b"", b""), (b"\x01a\x00", b"p")] {
        rec.extend_from_slice(&[0, h.len() as u8]);
        rec.extend_from_slice(&(p.len() as u16).to_le_bytes());
        rec.extend_from_slice(h);
        rec.extend_from_slice(p);
    }
    w.put("eventstream", "records", &rec);

    let configs = [
        ("targets", targets::config_text(false)),
        ("targets-b", targets::config_text(true)),
        ("readme", r#"{"backends":[{"name":"openai","schema":"OpenAI","prefix":"/v1","auth":{"bearer":"sk-live"},"headers":{"set":{"OpenAI-Organization":"org-123"},"remove":["x-debug"]}},{"name":"vllm","schema":"OpenAI","model_override":"meta-llama/Llama-3.1-8B-Instruct"},{"name":"ollama","schema":"OpenAI","auth":{"bearer_env":"SET_OLLAMA_KEY"}}],"rules":[{"match":{"model":{"exact":"gpt-4o-mini"}},"backends":[{"name":"openai"}]},{"match":{"model":{"prefix":"llama-"},"headers":[{"name":"x-team","exact":"research"}]},"backends":[{"name":"vllm","weight":80},{"name":"ollama","weight":20}]},{"backends":[{"name":"ollama"}]}],"models":["my-extra-model"]}"#.to_string()),
        ("json", r#"{"backends":[{"name":"o","schema":"OpenAI","auth":{"bearer_env":"SET_KEY"}}],"models":["a"],"max_metric_label_sets":2}"#.to_string()),
        ("rules", r#"{"backends":[{"name":"a","schema":"OpenAI"},{"name":"b","schema":"Anthropic","auth":{"x_api_key":"k"}}],"rules":[{"name":"r1","match":{"model":{"regex":"gpt-.*"},"headers":[{"name":"x-team","prefix":"re"}]},"backends":[{"name":"a","weight":3},{"name":"b","weight":0}]},{"match":{"model":{"glob":"claude-?-*"}},"backends":[{"name":"b"}]},{"match":{"model":{"prefix":"llama"},"headers":[{"name":"x-team","present":true}]},"backends":[{"name":"a"}]},{"backends":[{"name":"a"}]}]}"#.to_string()),
        ("aws", r#"{"backends":[{"name":"aws","schema":"AWSBedrock","region":"eu-west-1","auth":{"aws":{"access_key_id_env":"SET_A","secret_access_key_env":"SET_B","session_token":"t"}}},{"name":"v","schema":"GCPVertexAI","region":"global","project":"p","auth":{"bearer":"x"}},{"name":"az","schema":"AzureOpenAI","api_version":"v1","prefix":"/az/","headers":{"set":{"x-a":"b"},"remove":["x-debug"]}}],"rules":[{"match":{"model":{"regex":"(a|b)+"}},"backends":[{"name":"aws"}]},{"backends":[{"name":"v","weight":2},{"name":"az"}]}],"stream_include_usage":false,"max_request_body_bytes":100}"#.to_string()),
    ];
    for (name, text) in configs {
        w.put("config_parse", name, text.as_bytes());
    }
    for (name, body) in CHAT_REQUESTS.iter().chain(MESSAGES_REQUESTS).chain(EMBEDDING_REQUESTS) {
        for ops in [0x01u8, 0x1f, 0x0a] {
            let mut seed = vec![ops, 0xff];
            seed.extend_from_slice(body.as_bytes());
            w.put("json_scan", &format!("{name}-{ops:02x}"), &seed);
        }
    }
    w.put(
        "json_scan",
        "usage",
        b"\x00\x42{\"id\":\"x\",\"usage\":{\"prompt_tokens\":1},\"choices\":[{\"usage\":2}],\"usage\" : [1, \"}\"] }",
    );
    let _ = (F_SPLIT_REQUEST,);
    println!("{} seeds written under {}", w.written.len(), w.root.display());
}
