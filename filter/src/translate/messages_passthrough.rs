//! Anthropic client → Anthropic Messages backends (Anthropic, AWSAnthropic, GCPAnthropic): the body
//! passes through with the platform's path and version; streams are re-framed where needed; usage
//! is read on the way.

use super::chat_to_anthropic::{messages_path, platform_headers, upstream_message, Framing};
use super::{BodyMode, ChunkEdits, RequestContext, RequestEdits, ResponsePlan, Translator};
use crate::config::{BackendApi, Schema};
use crate::error::{anthropic_error_json, ApiError, ErrorKind};
use crate::json::{json_string, Splice, TopLevelCapture};
use crate::wire::anthropic as a;

pub struct AnthropicNative {
    schema: Schema,
    /// `count_tokens` rather than a message: its answer is a count, not token usage.
    count_tokens: bool,
    stream: bool,
    streaming_response: bool,
    framing: Framing,
    /// Events arrive in another framing (AWS eventstream) and leave as SSE.
    reframe: bool,
    usage: a::Usage,
    usage_capture: TopLevelCapture,
    saw_content: bool,
    /// `message_stop` or an `error` event was seen: the stream is complete for the client.
    ended: bool,
}

impl AnthropicNative {
    pub fn new(schema: Schema) -> Self {
        AnthropicNative {
            schema,
            count_tokens: false,
            stream: false,
            streaming_response: false,
            framing: Framing::for_schema(schema),
            reframe: false,
            usage: a::Usage::default(),
            usage_capture: TopLevelCapture::new("usage", 64 * 1024),
            ended: false,
            saw_content: false,
        }
    }

    /// `POST /v1/messages/count_tokens`, passed through to an Anthropic backend.
    pub fn count_tokens(schema: Schema) -> Self {
        AnthropicNative { count_tokens: true, ..AnthropicNative::new(schema) }
    }
}

/// What usage tracking reads of a stream event: its type and usage, nothing else (the events pass
/// through untouched; parsing them whole would cost the module ~50 KB of deserializers).
#[derive(serde::Deserialize)]
struct EventUsage<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default)]
    message: Option<MessageUsage>,
    #[serde(default)]
    usage: Option<a::DeltaUsage>,
}

#[derive(serde::Deserialize)]
struct MessageUsage {
    #[serde(default)]
    usage: Option<a::Usage>,
}

/// Folds one stream event's usage into `usage`; returns whether it carried content. A sloppy
/// event still counts for what it says: usage is taken wherever it parses.
pub(super) fn track_event(json: &[u8], usage: &mut a::Usage) -> bool {
    let Ok(event) = crate::json::from_bytes::<EventUsage>(json) else { return false };
    match (event.kind.as_ref(), event.message, event.usage) {
        ("message_start", Some(MessageUsage { usage: Some(start) }), _) => {
            *usage = start;
            false
        }
        ("message_delta", _, Some(u)) => {
            usage.output_tokens = u.output_tokens;
            usage.input_tokens = u.input_tokens.unwrap_or(usage.input_tokens);
            usage.cache_read_input_tokens = u.cache_read_input_tokens.or(usage.cache_read_input_tokens);
            usage.cache_creation_input_tokens = u.cache_creation_input_tokens.or(usage.cache_creation_input_tokens);
            false
        }
        ("content_block_start" | "content_block_delta", _, _) => true,
        _ => false,
    }
}

/// The `type` of an event's JSON, for its SSE `event:` line.
fn event_type(json: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "type")]
        kind: String,
    }
    crate::json::from_bytes::<Typed>(json).map(|t| t.kind).unwrap_or_else(|_| "message".into())
}

impl Translator for AnthropicNative {
    fn request_body(&mut self, request: &RequestContext) -> Result<RequestEdits, ApiError> {
        let RequestContext { info, body, backend, query: _, now_unix: _, sink: _ } = request;
        let model = backend.model_override.clone().unwrap_or_else(|| info.model.clone());
        self.stream = info.stream;
        // In place: documents, `cache_control`, server tools, thinking blocks and fields this
        // gateway has never heard of reach the provider byte for byte.
        let mut splice = Splice::new(body, &["model", "stream", "anthropic_version"])
            .ok_or_else(|| ApiError::bad_request("invalid_request", "request body must be a JSON object"))?;
        match &backend.api {
            BackendApi::AWSAnthropic { anthropic_version, .. } | BackendApi::GCPAnthropic { anthropic_version, .. } => {
                // The model is in the path, the API version in the body; AWS also refuses `stream`
                // (the path says it), Vertex wants it only when true.
                splice.remove("model");
                splice.remove("stream");
                if matches!(backend.api, BackendApi::GCPAnthropic { .. }) && info.stream {
                    splice.insert("stream", b"true");
                }
                splice.set("anthropic_version", &json_string(anthropic_version));
            }
            BackendApi::Anthropic { .. }
            | BackendApi::OpenAI { .. }
            | BackendApi::AzureOpenAI { .. }
            | BackendApi::AWSBedrock { .. }
            | BackendApi::GCPVertexAI { .. } => {
                if backend.model_override.as_deref().is_some_and(|m| m != info.model) {
                    splice.set("model", &json_string(&model));
                }
            }
        }
        let new_body = splice.finish();
        let path = if self.count_tokens {
            // `for_backend` pairs count_tokens with Anthropic backends only.
            format!("{}/messages/count_tokens", backend.prefix)
        } else {
            messages_path(backend, &model, info.stream)
        };
        Ok(RequestEdits { path: Some(path), body: new_body, set_headers: platform_headers(backend, None) })
    }

    fn response_headers(&mut self, _status: u16, content_type: &str) -> ResponsePlan {
        let content_type = content_type.to_ascii_lowercase();
        let sse = content_type.starts_with("text/event-stream");
        let eventstream = content_type.starts_with("application/vnd.amazon.eventstream");
        self.streaming_response = self.stream && (sse || eventstream);
        self.reframe = self.streaming_response && !sse;
        if self.reframe {
            ResponsePlan {
                mode: BodyMode::Stream,
                set_headers: vec![("content-type", "text/event-stream".into())],
                remove_headers: vec!["content-length"],
            }
        } else {
            ResponsePlan { mode: BodyMode::Stream, set_headers: vec![], remove_headers: vec![] }
        }
    }

    fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> ChunkEdits {
        let mut edits = ChunkEdits::default();
        if self.count_tokens {
            // `{"input_tokens": N}` is a count for the client, not tokens this request used.
            return edits;
        }
        if !self.streaming_response {
            // Only `usage` is kept from the answer as it passes.
            self.usage_capture.push(chunk);
            if end_of_stream {
                edits.usage = self
                    .usage_capture
                    .value()
                    .and_then(|raw| crate::json::from_bytes::<a::Usage>(raw).ok())
                    .map(|u| u.to_tokens());
            }
            return edits;
        }
        let had_content = self.saw_content;
        let mut out = self.reframe.then(Vec::new);
        let (usage, saw_content, ended) = (&mut self.usage, &mut self.saw_content, &mut self.ended);
        let mut on_event = |json: &[u8]| {
            *saw_content |= track_event(json, usage);
            let kind = event_type(json);
            *ended |= kind == "message_stop" || kind == "error";
            if let Some(out) = out.as_mut() {
                out.extend_from_slice(b"event: ");
                out.extend_from_slice(kind.as_bytes());
                out.extend_from_slice(b"\ndata: ");
                out.extend_from_slice(json);
                out.extend_from_slice(b"\n\n");
            }
        };
        if let Err(e) = self.framing.push(chunk, &mut on_event) {
            log::warn!("llmgw: Anthropic stream ({}): {e}", self.schema.name());
        }
        if end_of_stream {
            self.framing.finish(&mut on_event);
            edits.usage = Some(self.usage.to_tokens());
            if !self.ended && self.reframe {
                // A re-framed stream that stops before `message_stop` (or is empty, or unreadable)
                // must not look complete to the client: it ends with an error event, as Anthropic's
                // do. (An SSE stream passes through byte for byte, as the provider sent it.)
                let event = anthropic_error_json(
                    "the provider's stream ended before message_stop",
                    ErrorKind::Server.anthropic_type(502),
                );
                let mut tail = out.take().unwrap_or_else(|| chunk.to_vec());
                tail.extend_from_slice(b"event: error\ndata: ");
                tail.extend_from_slice(&event);
                tail.extend_from_slice(b"\n\n");
                out = Some(tail);
                self.ended = true;
            }
        }
        edits.replace = out;
        edits.first_content = !had_content && self.saw_content;
        edits
    }

    fn error_body(&mut self, status: u16, body: &[u8]) -> Option<Vec<u8>> {
        if std::str::from_utf8(body).is_ok()
            && crate::json::from_bytes::<a::ErrorEnvelope>(body).is_ok_and(|e| !e.error.kind.is_empty())
        {
            return None;
        }
        Some(anthropic_error_json(&upstream_message(body), ErrorKind::for_status(status).anthropic_type(status)))
    }

    fn rewrites_response(&self) -> bool {
        self.reframe
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::read;
    use crate::translate::chat_to_anthropic::tests::STREAM;

    fn translate(schema: Schema, body: &str, model_override: Option<&str>) -> (RequestEdits, AnthropicNative) {
        let mut backend = crate::testing::backend(schema);
        backend.model_override = model_override.map(String::from);
        if let BackendApi::GCPAnthropic { project, region, .. } = &mut backend.api {
            (*project, *region) = ("p".into(), "europe-west1".into());
        }
        let mut t = AnthropicNative::new(schema);
        let info = read(body.as_bytes()).unwrap();
        let ctx = RequestContext::new(&info, body.as_bytes(), &backend);
        (t.request_body(&ctx).unwrap(), t)
    }

    #[test]
    fn direct_anthropic_body_is_untouched() {
        let body =
            r#"{"model":"claude-x","max_tokens":10,"messages":[{"role":"user","content":"hi"}],"new_feature":{"a":1}}"#;
        let (edits, _) = translate(Schema::Anthropic, body, None);
        assert_eq!(edits.body, None);
        assert_eq!(edits.path.as_deref(), Some("/v1/messages"));
        let (edits, _) = translate(Schema::Anthropic, body, Some("claude-real"));
        let v: serde_json::Value = serde_json::from_slice(&edits.body.unwrap().apply_to(body.as_bytes())).unwrap();
        assert_eq!(v["model"], "claude-real");
        assert_eq!(v["new_feature"], serde_json::json!({"a":1}));
    }

    #[test]
    fn count_tokens_passes_through_and_is_not_usage() {
        let body = r#"{"model":"claude-x","messages":[{"role":"user","content":"hi"}],"tools":[]}"#;
        let backend = crate::testing::backend(Schema::Anthropic);
        let info = read(body.as_bytes()).unwrap();
        let mut t = AnthropicNative::count_tokens(Schema::Anthropic);
        let edits = t.request_body(&RequestContext::new(&info, body.as_bytes(), &backend)).unwrap();
        assert_eq!(edits.body, None);
        assert_eq!(edits.path.as_deref(), Some("/v1/messages/count_tokens"));
        assert!(edits.set_headers.iter().any(|(n, _)| n == "anthropic-version"), "{:?}", edits.set_headers);
        t.response_headers(200, "application/json");
        let answer = t.response_body(br#"{"input_tokens":14,"usage":{"input_tokens":14,"output_tokens":0}}"#, true);
        assert_eq!((answer.replace, answer.usage), (None, None));
    }

    #[test]
    fn gcp_body_moves_model_to_path() {
        let body = r#"{"model":"claude-x","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let (edits, _) = translate(Schema::GCPAnthropic, body, None);
        assert_eq!(
            edits.path.as_deref(),
            Some("/v1/projects/p/locations/europe-west1/publishers/anthropic/models/claude-x:streamRawPredict")
        );
        let v: serde_json::Value = serde_json::from_slice(&edits.body.unwrap().apply_to(body.as_bytes())).unwrap();
        assert_eq!(v["anthropic_version"], "vertex-2023-10-16");
        assert_eq!(v["stream"], true);
        assert!(v.get("model").is_none());
    }

    #[test]
    fn sse_stream_passes_through_and_counts_usage_at_every_split() {
        for cut in 0..=STREAM.len() {
            let (_, mut t) = translate(Schema::Anthropic, r#"{"model":"m","stream":true,"messages":[]}"#, None);
            t.response_headers(200, "text/event-stream");
            let (a, b) = STREAM.as_bytes().split_at(cut);
            let first = t.response_body(a, false);
            let last = t.response_body(b, true);
            assert_eq!((first.replace, last.replace.clone()), (None, None));
            assert_eq!(last.usage.map(|u| (u.input, u.output)), Some((25, 15)), "cut {cut}");
            assert_eq!(t.usage.to_tokens().total, 40);
        }
    }

    #[test]
    fn errors_become_anthropic_shaped() {
        let (_, mut t) = translate(Schema::GCPAnthropic, r#"{"model":"m","messages":[]}"#, None);
        let body = br#"{"error":{"code":403,"message":"Permission denied on resource project p.","status":"PERMISSION_DENIED"}}"#;
        let v: serde_json::Value = serde_json::from_slice(&t.error_body(403, body).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"error","error":{"type":"permission_error","message":"Permission denied on resource project p."}})
        );
        let native = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(t.error_body(529, native), None);
    }

    #[test]
    fn reframed_streams_that_stop_early_end_with_an_error_event() {
        {
            let (schema, content_type) = (Schema::AWSAnthropic, "application/vnd.amazon.eventstream");
            let (_, mut t) = translate(schema, r#"{"model":"m","stream":true,"messages":[]}"#, None);
            t.response_headers(200, content_type);
            let out = t.response_body(b"", true).replace.unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.starts_with("event: error\ndata: {\"type\":\"error\""), "{schema:?}: {text}");
        }
        // SSE passes through as the provider sent it, complete or not.
        let (_, mut t) = translate(Schema::Anthropic, r#"{"model":"m","stream":true,"messages":[]}"#, None);
        t.response_headers(200, "text/event-stream");
        assert_eq!(t.response_body(&STREAM.as_bytes()[..40], true).replace, None);
    }
}
