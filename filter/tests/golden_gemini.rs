//! Golden fixtures for OpenAI client → Gemini on Vertex AI (`GCPVertexAI`), through the public
//! `translate::for_backend` API. Each case directory under `tests/fixtures/openai-gcpvertexai/` holds:
//!
//! * `case.json`: `endpoint` (`chat` | `embeddings`), the expected upstream `path`, the expected
//!   `usage`, and optionally `now` (unix seconds, default 1750000000);
//! * `request.in.json` → `request.expected.json` (the body sent to Vertex);
//! * `response.in.json` → `response.expected.json` (non-streaming), or
//!   `response.in.sse` → `response.expected.sse` (a Gemini SSE transcript → the OpenAI SSE the
//!   client gets; checked for every split of the upstream bytes into two chunks, and byte by byte).
//!
//! `errors/<status>-<name>.in` → `errors/<status>-<name>.expected.json`: upstream error bodies.
//!
//! `LLMGW_BLESS=1 cargo test --test golden_gemini` (re)writes the expected files; review the diff.

// Test helpers outside `#[test]` functions: the crate's no-panic lints do not apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{check_json, check_text, read_json, usage_json};
use llmgw_filter::api::Endpoint;
use llmgw_filter::config::{Backend, BackendApi, Schema};
use llmgw_filter::translate::{for_backend, BodyMode, RequestContext, Translator};
use llmgw_filter::usage::TokenUsage;
use serde_json::Value;

const CONFIG: &str = "
backends:
  - name: vertex
    schema: GCPVertexAI
    project: my-project
    region: us-central1
    auth: {bearer: ya29.test-token}
";

fn backend() -> Backend {
    common::backend(CONFIG)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openai-gcpvertexai")
}

fn endpoint_of(case: &Value) -> Endpoint {
    match case["endpoint"].as_str() {
        Some("chat") => Endpoint::ChatCompletions,
        Some("embeddings") => Endpoint::Embeddings,
        other => panic!("unknown endpoint {other:?}"),
    }
}

/// A translator that has seen the case's request; returns it with the upstream path and body.
fn translated(dir: &Path, case: &Value, backend: &Backend) -> (Box<dyn Translator>, String, Value) {
    let body = fs::read(dir.join("request.in.json")).unwrap();
    let info = llmgw_filter::request::read(&body).unwrap();
    let mut translator = for_backend(endpoint_of(case), Schema::GCPVertexAI, true).unwrap();
    let now_unix = case["now"].as_u64().unwrap_or(1_750_000_000);
    let edits = translator
        .request_body(&RequestContext { now_unix, ..RequestContext::new(&info, &body, backend) })
        .unwrap_or_else(|e| panic!("{}: {e:?}", dir.display()));
    assert_eq!(edits.set_headers, Vec::<(String, String)>::new());
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
        let plan = t.response_headers(200, "application/json; charset=UTF-8");
        assert_eq!(plan.mode, BodyMode::Buffer);
        assert!(plan.set_headers.contains(&("content-type", "application/json".to_string())));
        let upstream = fs::read(dir.join("response.in.json")).unwrap();
        let edits = t.response_body(&upstream, true);
        let got: Value = serde_json::from_slice(&edits.replace.unwrap()).unwrap();
        check_json(&got, &dir.join("response.expected.json"));
        assert_eq!(usage_json(edits.usage), case["usage"], "{}", dir.display());
        ran += 1;
    }
    assert!(ran >= 6, "only {ran} JSON cases ran");
}

#[test]
fn golden_streams_at_every_split_point() {
    let backend = backend();
    let mut ran = 0;
    for dir in case_dirs() {
        let sse = dir.join("response.in.sse");
        if !sse.is_file() {
            continue;
        }
        let case = read_json(&dir.join("case.json"));
        let upstream = fs::read(&sse).unwrap();
        let start = || {
            let (mut t, _, _) = translated(&dir, &case, &backend);
            let plan = t.response_headers(200, "text/event-stream");
            assert_eq!(plan.mode, BodyMode::Stream);
            assert!(plan.set_headers.contains(&("content-type", "text/event-stream".to_string())));
            assert!(plan.remove_headers.contains(&"content-length"));
            t
        };
        // The whole transcript in one chunk, then an empty end-of-stream chunk (as Envoy often sends).
        let (whole, usage, firsts) = feed(start().as_mut(), &[&upstream, b""]);
        let whole = String::from_utf8(whole).unwrap();
        check_text(&whole, &dir.join("response.expected.sse"));
        assert_eq!(usage_json(usage), case["usage"], "{}", dir.display());
        assert_eq!(firsts, 1);
        for cut in 0..=upstream.len() {
            let (a, b) = upstream.split_at(cut);
            let (out, usage, firsts) = feed(start().as_mut(), &[a, b]);
            assert_eq!(String::from_utf8(out).unwrap(), whole, "{} cut at {cut}", dir.display());
            assert_eq!(usage_json(usage), case["usage"], "{} cut at {cut}", dir.display());
            assert_eq!(firsts, 1, "{} cut at {cut}", dir.display());
        }
        let bytes: Vec<&[u8]> = upstream.chunks(1).chain([&b""[..]]).collect();
        let (out, _, _) = feed(start().as_mut(), &bytes);
        assert_eq!(String::from_utf8(out).unwrap(), whole, "{} byte by byte", dir.display());
        // Every event the client gets is a chunk (or [DONE], last) with the same id.
        let events: Vec<&str> = whole.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.last(), Some(&"data: [DONE]"));
        let ids: Vec<Value> = events
            .iter()
            .filter(|e| **e != "data: [DONE]")
            .map(|e| serde_json::from_str::<Value>(e.strip_prefix("data: ").unwrap()).unwrap()["id"].clone())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{}", dir.display());
        ran += 1;
    }
    assert!(ran >= 2, "only {ran} stream cases ran");
}

#[test]
fn golden_upstream_errors() {
    let backend = backend();
    let dir = root().join("errors");
    let case = serde_json::json!({"endpoint": "chat"});
    let chat = root().join("chat-tools");
    let mut ran = 0;
    let mut inputs: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "in"))
        .collect();
    inputs.sort();
    for input in inputs {
        let name = input.file_stem().unwrap().to_str().unwrap().to_string();
        let status: u16 = name.split('-').next().unwrap().parse().unwrap();
        let (mut t, _, _) = translated(&chat, &case, &backend);
        let body = fs::read(&input).unwrap();
        let out = t.error_body(status, &body).unwrap_or(body);
        let got: Value = serde_json::from_slice(&out).unwrap();
        check_json(&got, &dir.join(format!("{name}.expected.json")));
        ran += 1;
    }
    assert!(ran >= 4);
}

#[test]
fn gcs_uris_from_clients_are_refused() {
    let mut backend = backend();
    let dir = root().join("chat-multiturn-vision");
    let body = fs::read_to_string(dir.join("request.in.json"))
        .unwrap()
        .replace("https://storage.googleapis.com/cloud-samples-data/", "gs://cloud-samples-data/");
    let info = llmgw_filter::request::read(body.as_bytes()).unwrap();
    let mut t = for_backend(Endpoint::ChatCompletions, Schema::GCPVertexAI, true).unwrap();
    let e = t.request_body(&RequestContext::new(&info, body.as_bytes(), &backend)).unwrap_err();
    assert_eq!((e.status, e.code), (400, "gcs_uri_not_allowed"));
    assert!(e.message.starts_with("messages[3].content[1]: gs://"), "{}", e.message);
    // A backend that allows them sends the URI on as `fileData`.
    let BackendApi::GCPVertexAI { allow_gcs_uris, .. } = &mut backend.api else { panic!("a Vertex backend") };
    *allow_gcs_uris = true;
    let mut t = for_backend(Endpoint::ChatCompletions, Schema::GCPVertexAI, true).unwrap();
    let edits = t.request_body(&RequestContext::new(&info, body.as_bytes(), &backend)).unwrap();
    let sent = String::from_utf8(edits.body.unwrap().apply_to(b"")).unwrap();
    assert!(sent.contains(r#""fileUri":"gs://cloud-samples-data/"#), "{sent}");
}
