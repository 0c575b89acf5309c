//! OpenAI client → OpenAI-compatible backend: the body passes through, with the model override and
//! usage-in-streams applied; usage is read from the response.

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::{BodyMode, ChunkEdits, RequestContext, RequestEdits, ResponsePlan, Translator};
use crate::api::Endpoint;
use crate::config::{Backend, BackendApi};
use crate::error::ApiError;
use crate::json::{json_string, Splice, TopLevelCapture};
use crate::sse::{parse_event, Splitter};
use crate::usage::{OpenAIUsage, TokenUsage};

/// A `usage` object larger than this is not read (real ones are a few hundred bytes).
const MAX_USAGE_BYTES: usize = 64 * 1024;

pub struct Passthrough {
    endpoint: Endpoint,
    include_usage: bool,
    /// We added `stream_options.include_usage`, so the usage-only chunk is ours to remove.
    strip_usage_chunk: bool,
    streaming: bool,
    /// The success body is JSON (else it is passed without a look: audio, images).
    json: bool,
    splitter: Splitter,
    /// Non-streaming answers: `usage` is picked out as the body passes; nothing else is kept.
    usage_capture: TopLevelCapture,
    usage: Option<TokenUsage>,
    seen_content: bool,
}

impl Passthrough {
    pub fn new(endpoint: Endpoint, include_usage: bool) -> Self {
        Passthrough {
            endpoint,
            include_usage,
            strip_usage_chunk: false,
            streaming: false,
            json: false,
            splitter: Splitter::default(),
            usage_capture: TopLevelCapture::new("usage", MAX_USAGE_BYTES),
            usage: None,
            seen_content: false,
        }
    }
}

/// Whether a chunk carries generated output (text, reasoning, tool call, or completion text),
/// rather than only the role announcement that servers send before the first token.
fn carries_content(data: &str) -> bool {
    #[derive(Deserialize)]
    struct Chunk {
        #[serde(default)]
        choices: Vec<ChoiceProbe>,
        /// Responses API events: `response.output_text.delta`, `response.function_call_arguments.delta`...
        #[serde(default, rename = "type")]
        kind: Option<String>,
    }
    #[derive(Deserialize)]
    struct ChoiceProbe {
        #[serde(default)]
        delta: Option<DeltaProbe>,
        /// Legacy `/v1/completions` chunks carry `text`.
        #[serde(default)]
        text: Option<String>,
    }
    #[derive(Deserialize)]
    struct DeltaProbe {
        #[serde(default)]
        content: Option<String>,
        #[serde(default)]
        reasoning_content: Option<String>,
        #[serde(default)]
        tool_calls: Option<IgnoredAny>,
    }
    let Ok(chunk) = crate::json::from_text::<Chunk>(data) else { return false };
    let responses_delta = chunk.kind.as_deref().is_some_and(|k| k.starts_with("response.") && k.ends_with(".delta"));
    responses_delta
        || chunk.choices.iter().any(|c| {
            c.text.as_deref().is_some_and(|t| !t.is_empty())
                || c.delta.as_ref().is_some_and(|d| {
                    d.content.as_deref().is_some_and(|t| !t.is_empty())
                        || d.reasoning_content.as_deref().is_some_and(|t| !t.is_empty())
                        || d.tool_calls.is_some()
                })
        })
}

#[derive(Deserialize)]
struct ChunkProbe {
    #[serde(default)]
    choices: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    usage: Option<OpenAIUsage>,
    /// Responses API: `response.completed` (or `.incomplete`, `.failed`) carries the response, usage
    /// included; earlier events carry it with `"usage": null`.
    #[serde(default)]
    response: Option<ResponseProbe>,
}

#[derive(Deserialize)]
struct ResponseProbe {
    #[serde(default)]
    usage: Option<OpenAIUsage>,
}

impl Translator for Passthrough {
    fn request_body(&mut self, request: &RequestContext) -> Result<RequestEdits, ApiError> {
        let RequestContext { info, body, backend, query, now_unix: _, sink: _ } = request;
        let inject_usage =
            self.include_usage && info.stream && self.endpoint.takes_stream_options() && !info.client_wants_usage;
        if let Endpoint::StoredResponse(_) = self.endpoint {
            // The id names the response; no body names a model (one that comes is passed unread).
            let path = upstream_path(backend, self.endpoint, &info.model, query);
            return Ok(RequestEdits { path: Some(path), body: None, set_headers: Vec::new() });
        }
        let model_override = backend.model_override.as_deref().filter(|m| *m != info.model);
        let is_json = crate::json::looks_like_object(body);
        if let (Some(model), false) = (model_override, is_json) {
            // An upload's bytes are never edited: only a path that names the deployment renames it.
            if !matches!(backend.api, BackendApi::AzureOpenAI { .. }) {
                return Err(ApiError::bad_request(
                    "unsupported_model_override",
                    format!(
                        "backend {:?} serves this model as {model:?}, which the gateway cannot write into a \
                         multipart/form-data body; send the model's name as the backend knows it",
                        backend.name
                    ),
                ));
            }
        }
        // In place: only the edited members change; every other byte goes upstream as it came.
        let new_body = if inject_usage || (model_override.is_some() && is_json) {
            let mut splice = Splice::new(body, &["model", "stream_options"])
                .ok_or_else(|| ApiError::bad_request("invalid_request", "request body must be a JSON object"))?;
            if let Some(model) = model_override {
                splice.set("model", &json_string(model));
            }
            if inject_usage {
                let options = match splice.get("stream_options") {
                    Some(options) if options.first() == Some(&b'{') => {
                        let mut inner = Splice::new(options, &["include_usage"]).ok_or_else(|| {
                            ApiError::bad_request("invalid_request", "`stream_options` must be an object")
                        })?;
                        inner.set("include_usage", b"true");
                        inner.finish().map(|n| n.apply_to(options))
                    }
                    _ => None,
                };
                splice.set("stream_options", options.as_deref().unwrap_or(br#"{"include_usage":true}"#));
            }
            splice.finish()
        } else {
            None
        };
        self.strip_usage_chunk = inject_usage;
        let path = upstream_path(backend, self.endpoint, model_override.unwrap_or(&info.model), query);
        Ok(RequestEdits { path: Some(path), body: new_body, set_headers: Vec::new() })
    }

    fn response_headers(&mut self, _status: u16, content_type: &str) -> ResponsePlan {
        let content_type = content_type.trim_start().to_ascii_lowercase();
        self.streaming = content_type.starts_with("text/event-stream");
        // `application/json`, also with parameters; anything else (audio, images) is not read.
        self.json = content_type.split(';').next().is_some_and(|t| t.trim().ends_with("json"));
        // Removing the usage chunk changes the length; streams rarely carry one anyway.
        let remove_headers = if self.streaming && self.strip_usage_chunk { vec!["content-length"] } else { vec![] };
        ResponsePlan { mode: BodyMode::Stream, set_headers: Vec::new(), remove_headers }
    }

    fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> ChunkEdits {
        if !self.streaming {
            return self.json_body(chunk, end_of_stream);
        }
        let mut edits = ChunkEdits::default();
        let mut kept: Option<Vec<u8>> = self.strip_usage_chunk.then(|| Vec::with_capacity(chunk.len()));
        let (strip, seen_content, usage) = (self.strip_usage_chunk, &mut self.seen_content, &mut self.usage);
        let mut on_event = |block: &[u8], edits: &mut ChunkEdits| {
            let mut keep = true;
            let event = parse_event(block);
            if event.has_data && event.data != "[DONE]" {
                if !*seen_content && carries_content(&event.data) {
                    *seen_content = true;
                    edits.first_content = true;
                }
                if event.data.contains("\"usage\"") {
                    if let Ok(probe) = crate::json::from_text::<ChunkProbe>(&event.data) {
                        let found = probe.usage.as_ref().or(probe.response.as_ref().and_then(|r| r.usage.as_ref()));
                        if let Some(u) = found.filter(|u| u.counts_tokens()) {
                            *usage = Some(TokenUsage::from(u));
                            keep = !(strip && probe.choices.as_ref().is_none_or(|c| c.is_empty()));
                        }
                    }
                }
            }
            if keep {
                if let Some(out) = kept.as_mut() {
                    out.extend_from_slice(block);
                }
            }
        };
        let within_limit = self.splitter.push(chunk, |block| on_event(block, &mut edits));
        if !within_limit {
            log::warn!(
                "llmgw: an SSE event exceeded {} bytes; usage for this stream may be missing",
                crate::sse::MAX_EVENT_BYTES
            );
        }
        if end_of_stream {
            // An upstream that ends without the final blank line still ended its last event.
            let tail = self.splitter.take_pending();
            if !tail.is_empty() {
                on_event(&tail, &mut edits);
            }
            edits.usage = self.usage;
        }
        // In strip mode the bytes of an unfinished event wait in the splitter until it completes.
        edits.replace = kept;
        edits
    }

    fn error_body(&mut self, status: u16, body: &[u8]) -> Option<Vec<u8>> {
        super::openai_error_body(status, body)
    }

    fn rewrites_response(&self) -> bool {
        self.streaming && self.strip_usage_chunk
    }
}

/// The upstream path of an OpenAI-style endpoint: prefix + endpoint, or Azure's deployment form.
/// `tail`: what follows the endpoint (see `Endpoint::path_tail`).
pub(super) fn upstream_path(backend: &Backend, endpoint: Endpoint, model: &str, tail: &str) -> String {
    match &backend.api {
        BackendApi::AzureOpenAI { .. } if matches!(endpoint, Endpoint::Responses | Endpoint::StoredResponse(_)) => {
            // Azure serves the Responses API only on its v1 API (learn.microsoft.com, "Azure OpenAI
            // Responses API"): `/openai/v1/responses`, the deployment named by the body's `model`
            // as on OpenAI, and no dated `api-version` (the backend's one dates the deployments API).
            format!("{}/openai/v1{}{tail}", backend.prefix, endpoint.suffix())
        }
        BackendApi::AzureOpenAI { api_version: version, .. } => {
            // Azure names the deployment in the path; the body's model is ignored there.
            let deployment = percent_encode(model);
            let extra = tail.strip_prefix('?').map(|q| format!("&{q}")).unwrap_or_default();
            format!(
                "{}/openai/deployments/{deployment}{}?api-version={version}{extra}",
                backend.prefix,
                endpoint.suffix()
            )
        }
        BackendApi::OpenAI { .. }
        | BackendApi::Anthropic { .. }
        | BackendApi::AWSBedrock { .. }
        | BackendApi::AWSAnthropic { .. }
        | BackendApi::GCPVertexAI { .. }
        | BackendApi::GCPAnthropic { .. } => format!("{}{}{tail}", backend.prefix, endpoint.suffix()),
    }
}

/// Percent-encodes a path segment (RFC 3986 unreserved characters stay).
pub fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Passthrough {
    fn json_body(&mut self, chunk: &[u8], end_of_stream: bool) -> ChunkEdits {
        if !self.json {
            return ChunkEdits::default();
        }
        self.usage_capture.push(chunk);
        let mut edits = ChunkEdits::default();
        if end_of_stream {
            edits.usage = self
                .usage_capture
                .value()
                .and_then(|raw| crate::json::from_bytes::<OpenAIUsage>(raw).ok())
                .filter(OpenAIUsage::counts_tokens)
                .map(|u| TokenUsage::from(&u));
        }
        edits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Backend, BackendApi, Schema};
    use crate::request::{read, RequestInfo};

    fn backend(model_override: Option<&str>) -> Backend {
        let mut b = crate::testing::backend(Schema::OpenAI);
        b.prefix = "/api/v1".into();
        b.model_override = model_override.map(String::from);
        b
    }

    #[test]
    fn azure_path_names_the_deployment() {
        let mut b = crate::testing::backend(Schema::AzureOpenAI);
        b.api = BackendApi::AzureOpenAI { api_version: "2024-10-21".into(), credential: None };
        let mut t = Passthrough::new(Endpoint::ChatCompletions, true);
        let edits = request(&mut t, br#"{"model":"gpt 4o","messages":[]}"#, &b);
        assert_eq!(edits.path.unwrap(), "/openai/deployments/gpt%204o/chat/completions?api-version=2024-10-21&q=1");
    }

    #[test]
    fn azure_serves_responses_on_its_v1_api_and_the_rest_on_deployments() {
        let mut b = crate::testing::backend(Schema::AzureOpenAI);
        b.api = BackendApi::AzureOpenAI { api_version: "2025-04-01-preview".into(), credential: None };
        let stored = Endpoint::StoredResponse(crate::api::StoredCall::InputItems);
        let path = |e: Endpoint, tail: &str| upstream_path(&b, e, "dep", tail);
        assert_eq!(path(Endpoint::Responses, ""), "/openai/v1/responses");
        assert_eq!(path(stored, "/resp_1/input_items?limit=2"), "/openai/v1/responses/resp_1/input_items?limit=2");
        assert_eq!(
            path(Endpoint::AudioTranscriptions, ""),
            "/openai/deployments/dep/audio/transcriptions?api-version=2025-04-01-preview"
        );
        assert_eq!(
            path(Endpoint::ImageGenerations, "?a=1"),
            "/openai/deployments/dep/images/generations?api-version=2025-04-01-preview&a=1"
        );
        assert_eq!(
            upstream_path(&backend(None), stored, "", "/resp_1/input_items"),
            "/api/v1/responses/resp_1/input_items"
        );
        // Azure's deployment path names the renamed model: an upload needs no edit there.
        b.model_override = Some("real".into());
        let mut t = Passthrough::new(Endpoint::AudioTranscriptions, true);
        let info =
            RequestInfo { model: "m".into(), stream: false, client_wants_usage: false, has_stream_options: false };
        let edits = t.request_body(&RequestContext::new(&info, b"--b\r\n", &b)).unwrap();
        assert_eq!(
            edits.path.as_deref(),
            Some("/openai/deployments/real/audio/transcriptions?api-version=2025-04-01-preview")
        );
        assert_eq!(edits.body, None);
    }

    #[test]
    fn a_renamed_model_is_written_into_a_responses_body() {
        let mut t = Passthrough::new(Endpoint::Responses, true);
        let original = br#"{"model":"m","input":"hi","stream":true}"#;
        let edits = request(&mut t, original, &backend(Some("real")));
        assert_eq!(edits.body.unwrap().apply_to(original), br#"{"model":"real","input":"hi","stream":true}"#);
        assert_eq!(edits.path.as_deref(), Some("/api/v1/responses?q=1"));
    }

    fn request(t: &mut Passthrough, body: &[u8], b: &Backend) -> RequestEdits {
        let info = read(body).unwrap();
        t.request_body(&RequestContext {
            info: &info,
            body,
            backend: b,
            query: "?q=1",
            now_unix: 0,
            sink: Default::default(),
        })
        .unwrap()
    }

    #[test]
    fn plain_request_is_untouched_but_for_the_path() {
        let mut t = Passthrough::new(Endpoint::ChatCompletions, true);
        let edits = request(&mut t, br#"{"model":"m","messages":[]}"#, &backend(None));
        assert_eq!(
            edits,
            RequestEdits { path: Some("/api/v1/chat/completions?q=1".into()), body: None, set_headers: vec![] }
        );
    }

    #[test]
    fn override_and_usage_injection_rewrite_the_body() {
        let mut t = Passthrough::new(Endpoint::ChatCompletions, true);
        let edits = request(&mut t, br#"{"model":"m","stream":true,"stream_options":{"x":1}}"#, &backend(Some("real")));
        let original = br#"{"model":"m","stream":true,"stream_options":{"x":1}}"#;
        assert_eq!(
            edits.body.unwrap().apply_to(original),
            br#"{"model":"real","stream":true,"stream_options":{"include_usage":true,"x":1}}"#
        );
        let mut t = Passthrough::new(Endpoint::ChatCompletions, true);
        let original = br#"{"model":"m","stream":true}"#;
        let spliced = request(&mut t, original, &backend(None)).body.unwrap().apply_to(original);
        assert_eq!(spliced, br#"{"stream_options":{"include_usage":true},"model":"m","stream":true}"#);
        let mut t = Passthrough::new(Endpoint::ChatCompletions, false);
        assert_eq!(request(&mut t, br#"{"model":"m","stream":true}"#, &backend(None)).body, None);
        let mut t = Passthrough::new(Endpoint::Embeddings, true);
        assert_eq!(request(&mut t, br#"{"model":"m","stream":true}"#, &backend(None)).body, None);
    }

    const STREAM: &[u8] = b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n\
data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n\
data: [DONE]\n\n";

    fn run_stream(t: &mut Passthrough, chunks: &[&[u8]]) -> (Vec<u8>, Option<TokenUsage>, usize) {
        t.response_headers(200, "text/event-stream; charset=utf-8");
        let mut out = Vec::new();
        let (mut usage, mut firsts) = (None, 0);
        for (i, c) in chunks.iter().enumerate() {
            let e = t.response_body(c, i + 1 == chunks.len());
            out.extend_from_slice(e.replace.as_deref().unwrap_or(c));
            usage = usage.or(e.usage);
            firsts += usize::from(e.first_content);
        }
        (out, usage, firsts)
    }

    #[test]
    fn stream_usage_found_at_every_split_and_bytes_untouched_when_client_asked() {
        for cut in 0..=STREAM.len() {
            let mut t = Passthrough::new(Endpoint::ChatCompletions, true);
            request(&mut t, br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#, &backend(None));
            let (a, b) = STREAM.split_at(cut);
            let (out, usage, firsts) = run_stream(&mut t, &[a, b, b""]);
            assert_eq!(out, STREAM, "cut {cut}");
            assert_eq!(usage.map(|u| u.total), Some(7), "cut {cut}");
            assert_eq!(firsts, 1);
        }
    }

    #[test]
    fn injected_usage_chunk_is_removed_at_every_split() {
        let want = String::from_utf8(STREAM.to_vec()).unwrap().replace(
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
            "",
        );
        for cut in 0..=STREAM.len() {
            let mut t = Passthrough::new(Endpoint::ChatCompletions, true);
            request(&mut t, br#"{"model":"m","stream":true}"#, &backend(None));
            let (a, b) = STREAM.split_at(cut);
            let (out, usage, _) = run_stream(&mut t, &[a, b, b""]);
            assert_eq!(String::from_utf8(out).unwrap(), want, "cut {cut}");
            assert_eq!(usage.map(|u| u.input), Some(5));
        }
    }

    #[test]
    fn json_usage_read_at_end() {
        let mut t = Passthrough::new(Endpoint::ChatCompletions, true);
        request(&mut t, br#"{"model":"m"}"#, &backend(None));
        t.response_headers(200, "application/json");
        let body = br#"{"id":"c","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        let (a, b) = body.split_at(10);
        assert_eq!(t.response_body(a, false), ChunkEdits::default());
        assert_eq!(t.response_body(b, true).usage.map(|u| u.output), Some(4));
    }
}
