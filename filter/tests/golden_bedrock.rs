//! Golden fixtures for OpenAI client → Amazon Bedrock Converse (`AWSBedrock`), through the public
//! `translate::for_backend` API. Each case directory under `tests/fixtures/openai-awsbedrock/` holds:
//!
//! * `case.json`: the expected upstream `path`, the expected `usage`, and optionally `now` (unix
//!   seconds, default 1750000000);
//! * `request.in.json` → `request.expected.json` (the Converse body sent to Bedrock);
//! * `response.in.json` → `response.expected.json` (non-streaming), or
//!   `response.in.frames.jsonl` → `response.expected.sse`: a `converse-stream` transcript, one
//!   eventstream message per line (`{"event": "<:event-type>", "payload": {...}}` or
//!   `{"exception": "<:exception-type>", "payload": {...}}`; with `"bare": true`, a frame without
//!   `:message-type` and `:content-type`, and without `:event-type` unless `event` is given), encoded into real binary frames with
//!   AWS's own encoder, → the OpenAI SSE the client gets; checked for every split of the upstream
//!   bytes into two chunks, and byte by byte.
//!
//! The response id is the gateway's (Bedrock sends none); it is checked for its form and replaced by
//! `chatcmpl-GOLDEN` before comparing.
//!
//! `errors/<status>-<name>.in` → `errors/<status>-<name>.expected.json`: upstream error bodies.
//!
//! `LLMGW_BLESS=1 cargo test --test golden_bedrock` (re)writes the expected files; review the diff.

// Test helpers outside `#[test]` functions: the crate's no-panic lints do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use common::{check_json, check_text, read_json, usage_json};
use llmgw_filter::api::Endpoint;
use llmgw_filter::config::{Backend, Schema};
use llmgw_filter::translate::{for_backend, BodyMode, RequestContext, Translator};
use llmgw_filter::usage::TokenUsage;
use serde_json::Value;

const CONFIG: &str = "
backends:
  - name: bedrock
    schema: AWSBedrock
    region: us-east-1
    auth: {aws: {access_key_id: AKIDEXAMPLE, secret_access_key: wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY}}
";
const GOLDEN_ID: &str = "chatcmpl-GOLDEN";

fn backend() -> Backend {
    common::backend(CONFIG)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openai-awsbedrock")
}

/// Checks the gateway's id (`chatcmpl-` and 24 hex digits) and replaces it by `GOLDEN_ID`.
fn mask_id(text: &str) -> String {
    let Some(start) = text.find("\"id\":\"chatcmpl-") else { return text.to_string() };
    let id_start = start + "\"id\":\"".len();
    let len = text[id_start..].find('"').unwrap();
    let id = &text[id_start..id_start + len];
    let hex = id.strip_prefix("chatcmpl-").unwrap();
    assert!(hex.len() == 24 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "unexpected id {id}");
    text.replace(id, GOLDEN_ID)
}

/// A translator that has seen the case's request; returns it with the upstream path and body.
fn translated(dir: &Path, case: &Value, backend: &Backend) -> (Box<dyn Translator>, String, Value) {
    let body = fs::read(dir.join("request.in.json")).unwrap();
    let info = llmgw_filter::request::read(&body).unwrap();
    let mut translator = for_backend(Endpoint::ChatCompletions, Schema::AWSBedrock, true).unwrap();
    let now_unix = case["now"].as_u64().unwrap_or(1_750_000_000);
    let edits = translator
        .request_body(&RequestContext { now_unix, ..RequestContext::new(&info, &body, backend) })
        .unwrap_or_else(|e| panic!("{}: {e:?}", dir.display()));
    assert!(edits.set_headers.contains(&("content-type".to_string(), "application/json".to_string())));
    let sent: Value = serde_json::from_slice(&edits.body.unwrap().apply_to(b"")).unwrap();
    (translator, edits.path.unwrap(), sent)
}

/// Feeds `chunks` (the last one ends the stream) and returns what the client receives and the usage.
fn feed(t: &mut dyn Translator, chunks: &[&[u8]]) -> (Vec<u8>, Option<TokenUsage>, usize) {
    let mut out = Vec::new();
    let (mut usage, mut firsts) = (None, 0);
    for (i, chunk) in chunks.iter().enumerate() {
        let edits = t.response_body(chunk, i + 1 == chunks.len());
        out.extend_from_slice(edits.replace.as_deref().unwrap_or(chunk));
        usage = edits.usage.or(usage);
        firsts += usize::from(edits.first_content);
    }
    (out, usage, firsts)
}

/// Encodes a transcript file into eventstream frames with AWS's encoder.
fn frames(path: &Path) -> Vec<u8> {
    let text = fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: {e}: {line}", path.display()));
        let payload = serde_json::to_vec(&v["payload"]).unwrap();
        let string = |name: &'static str, value: &str| Header::new(name, HeaderValue::String(value.to_string().into()));
        let headers = if v["bare"] == true {
            // No `:message-type` or `:content-type`; `:event-type` only when given.
            v["event"].as_str().map(|event| vec![string(":event-type", event)]).unwrap_or_default()
        } else if let Some(event) = v["event"].as_str() {
            vec![
                string(":event-type", event),
                string(":content-type", "application/json"),
                string(":message-type", "event"),
            ]
        } else {
            let exception = v["exception"].as_str().unwrap();
            vec![
                string(":exception-type", exception),
                string(":content-type", "application/json"),
                string(":message-type", "exception"),
            ]
        };
        write_message_to(&Message::new_from_parts(headers, payload), &mut out).unwrap();
    }
    out
}

fn case_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        fs::read_dir(root()).unwrap().map(|e| e.unwrap().path()).filter(|p| p.join("case.json").is_file()).collect();
    dirs.sort();
    dirs
}

#[test]
fn golden_requests_and_json_responses() {
    let backend = backend();
    let mut ran = 0;
    for dir in case_dirs() {
        let case = read_json(&dir.join("case.json"));
        let (mut t, path, sent) = translated(&dir, &case, &backend);
        assert_eq!(path, case["path"].as_str().unwrap(), "{}", dir.display());
        check_json(&sent, &dir.join("request.expected.json"));
        if !dir.join("response.in.json").is_file() {
            continue;
        }
        let plan = t.response_headers(200, "application/json");
        assert_eq!(plan.mode, BodyMode::Buffer);
        assert!(plan.set_headers.contains(&("content-type", "application/json".to_string())));
        let upstream = fs::read(dir.join("response.in.json")).unwrap();
        let edits = t.response_body(&upstream, true);
        let got = mask_id(std::str::from_utf8(&edits.replace.unwrap()).unwrap());
        check_json(&serde_json::from_str(&got).unwrap(), &dir.join("response.expected.json"));
        assert_eq!(usage_json(edits.usage), case["usage"], "{}", dir.display());
        ran += 1;
    }
    assert!(ran >= 4, "only {ran} JSON cases ran");
}

#[test]
fn golden_streams_at_every_split_point() {
    let backend = backend();
    let mut ran = 0;
    for dir in case_dirs() {
        let transcript = dir.join("response.in.frames.jsonl");
        if !transcript.is_file() {
            continue;
        }
        let case = read_json(&dir.join("case.json"));
        let upstream = frames(&transcript);
        let start = || {
            let (mut t, _, _) = translated(&dir, &case, &backend);
            let plan = t.response_headers(200, "application/vnd.amazon.eventstream");
            assert_eq!(plan.mode, BodyMode::Stream);
            assert_eq!(plan.set_headers, vec![("content-type", "text/event-stream".to_string())]);
            assert_eq!(plan.remove_headers, vec!["content-length"]);
            t
        };
        // The whole transcript in one chunk, then an empty end-of-stream chunk (as Envoy often sends).
        let (whole, usage, firsts) = feed(start().as_mut(), &[&upstream, b""]);
        let whole = mask_id(&String::from_utf8(whole).unwrap());
        check_text(&whole, &dir.join("response.expected.sse"));
        assert_eq!(usage_json(usage), case["usage"], "{}", dir.display());
        assert_eq!(firsts, 1);
        for cut in 0..=upstream.len() {
            let (a, b) = upstream.split_at(cut);
            let (out, usage, firsts) = feed(start().as_mut(), &[a, b]);
            assert_eq!(mask_id(&String::from_utf8(out).unwrap()), whole, "{} cut at {cut}", dir.display());
            assert_eq!(usage_json(usage), case["usage"], "{} cut at {cut}", dir.display());
            assert_eq!(firsts, 1, "{} cut at {cut}", dir.display());
        }
        let bytes: Vec<&[u8]> = upstream.chunks(1).chain([&b""[..]]).collect();
        let (out, _, _) = feed(start().as_mut(), &bytes);
        assert_eq!(mask_id(&String::from_utf8(out).unwrap()), whole, "{} byte by byte", dir.display());
        // Every event is a chunk (or an error) with the gateway's id, and [DONE] comes last.
        let events: Vec<&str> = whole.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.last(), Some(&"data: [DONE]"));
        for event in &events[..events.len() - 1] {
            let v: Value = serde_json::from_str(event.strip_prefix("data: ").unwrap()).unwrap();
            assert!(v["id"] == GOLDEN_ID || v.get("error").is_some(), "{}: {event}", dir.display());
        }
        ran += 1;
    }
    assert!(ran >= 3, "only {ran} stream cases ran");
}

#[test]
fn golden_upstream_errors() {
    let backend = backend();
    let dir = root().join("errors");
    let chat = root().join("chat-basic");
    let case = read_json(&chat.join("case.json"));
    let mut inputs: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "in"))
        .collect();
    inputs.sort();
    for input in &inputs {
        let name = input.file_stem().unwrap().to_str().unwrap().to_string();
        let status: u16 = name.split('-').next().unwrap().parse().unwrap();
        let (mut t, _, _) = translated(&chat, &case, &backend);
        let body = fs::read(input).unwrap();
        let out = t.error_body(status, &body).unwrap_or(body);
        let got: Value = serde_json::from_slice(&out).unwrap();
        check_json(&got, &dir.join(format!("{name}.expected.json")));
    }
    assert!(inputs.len() >= 4);
}
