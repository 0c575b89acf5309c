//! Two translators in a row: `outer` turns the client's API into an intermediate one, `inner` turns
//! that into the backend's. This serves client/backend pairs no single translator covers (Anthropic
//! Messages or OpenAI Responses clients → Bedrock Converse or Gemini) without a translator per pair.
//!
//! Request: `outer` writes the intermediate body in memory (bounded by the request body limit: it is
//! about the size of the client's), as if for a plain backend of the intermediate schema
//! ([`Chain::outer_backend`]); `inner` reads it like a client request and writes the backend's body
//! into the host. The path and headers are `inner`'s: `outer`'s belong to the intermediate protocol.
//! Response: `inner`'s output is `outer`'s input, chunk by chunk when both stream.

use std::borrow::Cow;
use std::cell::Cell;

use super::{BodyMode, ChunkEdits, RequestContext, RequestEdits, ResponsePlan, Translator};
use crate::body::{NewBody, Sink};
use crate::config::{Backend, BackendApi};
use crate::error::ApiError;
use crate::request;

/// The API `outer` writes and `inner` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intermediate {
    /// OpenAI chat completions, as sent to plain OpenAI.
    OpenAIChat,
    /// Anthropic Messages, as sent to Anthropic's own API.
    AnthropicMessages,
}

impl Intermediate {
    fn name(self) -> &'static str {
        match self {
            Intermediate::OpenAIChat => "OpenAI chat completions",
            Intermediate::AnthropicMessages => "Anthropic Messages",
        }
    }
}

/// Gemini takes no `max_tokens` default of the gateway's, and an Anthropic Messages body must have
/// one; 8192 is within every Gemini model's range (a larger value is a 400 on some of them).
const VERTEX_DEFAULT_MAX_TOKENS: u32 = 8192;

const TRANSLATED: &str = "this backend is reached through a translation to";

pub struct Chain {
    outer: Box<dyn Translator>,
    inner: Box<dyn Translator>,
    intermediate: Intermediate,
    mode: BodyMode,
    inner_mode: BodyMode,
    outer_mode: BodyMode,
}

impl Chain {
    pub fn new(outer: Box<dyn Translator>, intermediate: Intermediate, inner: Box<dyn Translator>) -> Self {
        Chain {
            outer,
            inner,
            intermediate,
            mode: BodyMode::Stream,
            inner_mode: BodyMode::Stream,
            outer_mode: BodyMode::Stream,
        }
    }

    /// The backend `outer` writes for: the real one's name, prefix and model override, speaking the
    /// intermediate API with its defaults and no credential (nothing of it is sent anywhere).
    fn outer_backend(&self, real: &Backend) -> Backend {
        let default_max_tokens = match &real.api {
            BackendApi::Anthropic { default_max_tokens, .. }
            | BackendApi::AWSBedrock { default_max_tokens, .. }
            | BackendApi::AWSAnthropic { default_max_tokens, .. }
            | BackendApi::GCPAnthropic { default_max_tokens, .. } => *default_max_tokens,
            BackendApi::OpenAI { .. } | BackendApi::AzureOpenAI { .. } | BackendApi::GCPVertexAI { .. } => {
                VERTEX_DEFAULT_MAX_TOKENS
            }
        };
        let api = match self.intermediate {
            Intermediate::OpenAIChat => BackendApi::OpenAI { credential: None },
            Intermediate::AnthropicMessages => {
                BackendApi::Anthropic { anthropic_version: "2023-06-01".into(), default_max_tokens, credential: None }
            }
        };
        Backend {
            name: real.name.clone(),
            prefix: String::new(),
            model_override: real.model_override.clone(),
            set_headers: Vec::new(),
            remove_headers: Vec::new(),
            pass_through_authorization: false,
            authority: None,
            forward_billing_headers: false,
            forward_headers: Vec::new(),
            body_mutation: None,
            credential_override: None,
            picker: None,
            api,
        }
    }

    /// `outer`'s output for one piece of `inner`'s: an error `inner` made (a status) is turned into
    /// the client's error shape by `outer`.
    fn through_outer(&mut self, inner: ChunkEdits, chunk: &[u8], end_of_stream: bool) -> ChunkEdits {
        let middle = inner.replace.as_deref().unwrap_or(chunk);
        if let Some(status) = inner.status {
            let replace = self.outer.error_body(status, middle).unwrap_or_else(|| middle.to_vec());
            return ChunkEdits { replace: Some(replace), usage: None, first_content: false, status: Some(status) };
        }
        let outer = match (self.outer_mode, end_of_stream) {
            // A buffering outer side gets the whole intermediate body at the end.
            (BodyMode::Buffer, false) => {
                return ChunkEdits { replace: Some(Vec::new()), usage: inner.usage, ..ChunkEdits::default() }
            }
            _ => self.outer.response_body(middle, end_of_stream),
        };
        let replace = match (inner.replace, outer.replace) {
            (_, Some(out)) => Some(out),
            (Some(middle), None) => Some(middle),
            (None, None) => None,
        };
        ChunkEdits {
            replace,
            usage: inner.usage.or(outer.usage),
            first_content: inner.first_content || outer.first_content,
            status: outer.status,
        }
    }
}

impl Translator for Chain {
    fn request_body(&mut self, request: &RequestContext) -> Result<RequestEdits, ApiError> {
        let outer_backend = self.outer_backend(request.backend);
        let outer_request = RequestContext {
            info: request.info,
            body: request.body,
            backend: &outer_backend,
            query: "",
            now_unix: request.now_unix,
            sink: Cell::new(None),
        };
        let outer = self.outer.request_body(&outer_request)?;
        // No sink: a whole body stays in memory, and applies to the client's body as it is.
        let intermediate: Cow<[u8]> = match &outer.body {
            Some(body @ (NewBody::Whole(_) | NewBody::Head { .. })) => Cow::Owned(body.apply_to(request.body)),
            None => Cow::Borrowed(request.body),
        };
        let info = request::read(&intermediate).map_err(|e| self.intermediate_error(e))?;
        // Reborrowed for this call: the inner context lives shorter than the host's sink.
        let mut sink = request.sink.take();
        let sink: Option<&mut dyn Sink> = match &mut sink {
            Some(sink) => Some(&mut **sink),
            None => None,
        };
        let inner_request = RequestContext {
            info: &info,
            body: &intermediate,
            backend: request.backend,
            query: request.query,
            now_unix: request.now_unix,
            sink: Cell::new(sink),
        };
        self.inner.request_body(&inner_request).map_err(|e| self.intermediate_error(e))
    }

    fn response_headers(&mut self, status: u16, content_type: &str) -> ResponsePlan {
        let inner = self.inner.response_headers(status, content_type);
        let middle_type = inner
            .set_headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
            .map_or(content_type, |(_, value)| value.as_str());
        let outer = self.outer.response_headers(status, middle_type);
        self.inner_mode = inner.mode;
        self.outer_mode = outer.mode;
        self.mode = if inner.mode == BodyMode::Buffer || outer.mode == BodyMode::Buffer {
            BodyMode::Buffer
        } else {
            BodyMode::Stream
        };
        // `outer`'s edits are the client's; `inner`'s only where `outer` says nothing of a header.
        let mut set_headers = outer.set_headers;
        for (name, value) in inner.set_headers {
            if !set_headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                set_headers.push((name, value));
            }
        }
        let mut remove_headers = outer.remove_headers;
        for name in inner.remove_headers {
            if !remove_headers.contains(&name) && !set_headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                remove_headers.push(name);
            }
        }
        ResponsePlan { mode: self.mode, set_headers, remove_headers }
    }

    fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> ChunkEdits {
        // In `Buffer` mode the exchange hands the whole body once, at the end; a streaming side
        // takes it as one chunk that ends the stream.
        let inner = self.inner.response_body(chunk, end_of_stream);
        self.through_outer(inner, chunk, end_of_stream)
    }

    fn error_body(&mut self, status: u16, body: &[u8]) -> Option<Vec<u8>> {
        let middle = self.inner.error_body(status, body);
        let middle = middle.as_deref().unwrap_or(body);
        Some(self.outer.error_body(status, middle).unwrap_or_else(|| middle.to_vec()))
    }

    fn rewrites_response(&self) -> bool {
        self.inner.rewrites_response() || self.outer.rewrites_response()
    }
}

impl Chain {
    /// A refusal of the intermediate request names the translation, as its wording is the
    /// intermediate API's (a parameter the client did not write).
    fn intermediate_error(&self, mut e: ApiError) -> ApiError {
        if e.message.starts_with(TRANSLATED) {
            // A chain within a chain: the innermost translation says it once.
            return e;
        }
        e.message = format!("{TRANSLATED} {}, and that request was refused: {}", self.intermediate.name(), e.message);
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ClientApi, Endpoint};
    use crate::config::Schema;
    use crate::eventstream::event_for_test;
    use crate::translate::for_backend;
    use crate::usage::TokenUsage;
    use serde_json::{json, Value};

    const PNG: &str = "iVBORw0KGgo=";

    fn translator(endpoint: Endpoint, schema: Schema) -> Box<dyn Translator> {
        for_backend(endpoint, schema, false).unwrap_or_else(|e| panic!("{}", e.message))
    }

    fn request(
        endpoint: Endpoint,
        schema: Schema,
        body: &Value,
    ) -> Result<(String, Value, Box<dyn Translator>), ApiError> {
        let backend = crate::testing::backend(schema);
        let mut t = translator(endpoint, schema);
        let bytes = serde_json::to_vec(body).unwrap();
        let info = request::read(&bytes).unwrap();
        let edits = t.request_body(&RequestContext::new(&info, &bytes, &backend))?;
        assert!(!edits.set_headers.iter().any(|(n, _)| n.starts_with("anthropic")), "{:?}", edits.set_headers);
        let sent = serde_json::from_slice(&edits.body.unwrap().apply_to(&bytes)).unwrap();
        Ok((edits.path.unwrap(), sent, t))
    }

    fn messages_request(stream: bool) -> Value {
        json!({
            "model": "anthropic.claude-x", "max_tokens": 300, "stream": stream,
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is here?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "look", "input": {"q": "x"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "a cat"}]}],
            "tools": [{"name": "look", "description": "Looks", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}],
            "tool_choice": {"type": "auto"},
            "stop_sequences": ["END"], "temperature": 0.5
        })
    }

    #[test]
    fn messages_become_a_converse_request() {
        let (path, v, _) = request(Endpoint::Messages, Schema::AWSBedrock, &messages_request(true)).unwrap();
        assert_eq!(path, "/model/anthropic.claude-x/converse-stream");
        assert_eq!(v["system"], json!([{"text": "Be brief."}]));
        assert_eq!(
            v["messages"][0]["content"],
            json!([{"text": "What is here?"}, {"image": {"format": "png", "source": {"bytes": PNG}}}])
        );
        assert_eq!(
            v["messages"][1]["content"][0]["toolUse"],
            json!({"toolUseId": "t1", "name": "look", "input": {"q": "x"}})
        );
        assert_eq!(v["messages"][2]["content"][0]["toolResult"]["toolUseId"], "t1");
        assert_eq!(v["toolConfig"]["tools"][0]["toolSpec"]["name"], "look");
        assert_eq!(v["toolConfig"]["toolChoice"], json!({"auto": {}}));
        assert_eq!(v["inferenceConfig"], json!({"maxTokens": 300, "temperature": 0.5, "stopSequences": ["END"]}));
        let (path, _, _) = request(Endpoint::Messages, Schema::AWSBedrock, &messages_request(false)).unwrap();
        assert_eq!(path, "/model/anthropic.claude-x/converse");
    }

    #[test]
    fn messages_become_a_gemini_request() {
        let (path, v, _) = request(Endpoint::Messages, Schema::GCPVertexAI, &messages_request(true)).unwrap();
        assert_eq!(
            path,
            "/v1/projects/p/locations/us-central1/publishers/google/models/anthropic.claude-x:streamGenerateContent?alt=sse"
        );
        assert_eq!(v["systemInstruction"]["parts"], json!([{"text": "Be brief."}]));
        assert_eq!(
            v["contents"][0]["parts"],
            json!([{"text": "What is here?"}, {"inlineData": {"mimeType": "image/png", "data": PNG}}])
        );
        assert_eq!(v["contents"][1]["parts"][0]["functionCall"]["args"], json!({"q": "x"}));
        assert_eq!(v["contents"][2]["parts"][0]["functionResponse"]["name"], "look");
        assert_eq!(v["tools"][0]["functionDeclarations"][0]["name"], "look");
        assert_eq!(v["generationConfig"]["maxOutputTokens"], 300);
        assert_eq!(v["generationConfig"]["stopSequences"], json!(["END"]));
        let (path, _, _) = request(Endpoint::Messages, Schema::GCPVertexAI, &messages_request(false)).unwrap();
        assert!(path.ends_with(":generateContent"), "{path}");
    }

    #[test]
    fn what_a_hop_cannot_take_is_an_anthropic_400_naming_the_translation() {
        let body = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}]});
        let e = request(Endpoint::Messages, Schema::AWSBedrock, &body).err().unwrap();
        assert_eq!(e.status, 400);
        let v: Value = serde_json::from_slice(&e.body(ClientApi::Anthropic)).unwrap();
        assert_eq!(v["type"], "error");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(TRANSLATED) && message.contains("base64"), "{message}");
        // Refused by the first hop: worded for the client already.
        let body = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}]});
        let e = request(Endpoint::Messages, Schema::GCPVertexAI, &body).err().unwrap();
        assert_eq!(e.status, 400);
        assert!(!e.message.starts_with(TRANSLATED) && e.message.contains("document"), "{}", e.message);
        // Stateful Responses calls stay refused; the nested chain prefixes once.
        let body = json!({"model": "m", "input": "hi", "previous_response_id": "resp_1"});
        let e = request(Endpoint::Responses, Schema::AWSBedrock, &body).err().unwrap();
        assert_eq!(e.status, 400);
        let body = json!({"model": "m", "input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": "https://example.com/a.png"}]}]});
        let e = request(Endpoint::Responses, Schema::AWSBedrock, &body).err().unwrap();
        assert_eq!((e.status, e.message.matches(TRANSLATED).count()), (400, 1), "{}", e.message);
    }

    /// Runs a response through `t`: headers, then the chunks (the last ends the body). A buffered
    /// answer is handed whole, as the exchange does.
    fn respond(t: &mut dyn Translator, content_type: &str, chunks: &[&[u8]]) -> (String, Option<TokenUsage>, usize) {
        let plan = t.response_headers(200, content_type);
        let chunks: Vec<Vec<u8>> = if plan.mode == BodyMode::Buffer {
            vec![chunks.concat()]
        } else {
            chunks.iter().map(|c| c.to_vec()).collect()
        };
        let (mut out, mut usage, mut firsts) = (Vec::new(), None, 0);
        for (i, c) in chunks.iter().enumerate() {
            let e = t.response_body(c, i + 1 == chunks.len());
            assert_eq!(e.status, None);
            out.extend(e.replace.unwrap_or_else(|| c.clone()));
            usage = e.usage.or(usage);
            firsts += usize::from(e.first_content);
        }
        (String::from_utf8(out).unwrap(), usage, firsts)
    }

    /// SSE events as (name, data) with every `id` (generated per run) replaced by "ID".
    fn events(sse: &str) -> Vec<(String, Value)> {
        fn scrub(v: &mut Value) {
            match v {
                Value::Object(m) => {
                    for (k, x) in m.iter_mut() {
                        if k == "id" || k == "call_id" || k == "item_id" || k == "created_at" {
                            *x = json!("ID");
                        } else {
                            scrub(x);
                        }
                    }
                }
                Value::Array(a) => a.iter_mut().for_each(scrub),
                _ => {}
            }
        }
        sse.split("\n\n")
            .filter(|b| !b.trim().is_empty())
            .map(|b| {
                let name = b.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or_default().to_string();
                let data = b.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                let mut v: Value = serde_json::from_str(data).unwrap();
                scrub(&mut v);
                (name, v)
            })
            .collect()
    }

    fn names(events: &[(String, Value)]) -> Vec<&str> {
        events.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Streams `body` whole and cut at every byte; every cut gives the same events and usage.
    fn stream_everywhere(
        make: impl Fn() -> Box<dyn Translator>,
        content_type: &str,
        body: &[u8],
    ) -> (Vec<(String, Value)>, TokenUsage) {
        let (whole, usage, firsts) = respond(&mut *make(), content_type, &[body, b""]);
        assert_eq!(firsts, 1, "{whole}");
        let reference = events(&whole);
        for cut in 0..=body.len() {
            let (a, b) = body.split_at(cut);
            let (got, got_usage, _) = respond(&mut *make(), content_type, &[a, b, b""]);
            assert_eq!(events(&got), reference, "cut at {cut}");
            assert_eq!(got_usage, usage, "cut at {cut}");
        }
        (reference, usage.unwrap())
    }

    const ANTHROPIC_STREAM: [&str; 10] = [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "",
    ];

    fn check_anthropic_stream(events: &[(String, Value)], input: u64, output: u64) {
        let got = names(events);
        assert_eq!(got, ANTHROPIC_STREAM[..got.len()], "{events:?}");
        assert_eq!(got.len(), 9);
        assert_eq!(events[1].1["content_block"]["type"], "text");
        assert_eq!(events[2].1["delta"], json!({"type": "text_delta", "text": "Hello"}));
        assert_eq!(events[4].1["content_block"]["type"], "tool_use");
        assert_eq!(events[4].1["content_block"]["name"], "look");
        let args = events[5].1["delta"]["partial_json"].as_str().unwrap();
        assert_eq!(serde_json::from_str::<Value>(args).unwrap(), json!({"q": "x"}));
        assert_eq!(events[7].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(events[7].1["usage"]["output_tokens"], output);
        assert_eq!(events[7].1["usage"]["input_tokens"], input, "{:?}", events[7]);
    }

    fn bedrock_frames() -> Vec<u8> {
        [
            event_for_test("messageStart", r#"{"role":"assistant"}"#),
            event_for_test("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":"Hello"}}"#),
            event_for_test("contentBlockStop", r#"{"contentBlockIndex":0}"#),
            event_for_test(
                "contentBlockStart",
                r#"{"contentBlockIndex":1,"start":{"toolUse":{"toolUseId":"tu_1","name":"look"}}}"#,
            ),
            event_for_test(
                "contentBlockDelta",
                r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"{\"q\":\"x\"}"}}}"#,
            ),
            event_for_test("contentBlockStop", r#"{"contentBlockIndex":1}"#),
            event_for_test("messageStop", r#"{"stopReason":"tool_use"}"#),
            event_for_test(
                "metadata",
                r#"{"usage":{"inputTokens":25,"outputTokens":9,"totalTokens":34},"metrics":{}}"#,
            ),
        ]
        .concat()
    }

    const GEMINI_SSE: &str = concat!(
        "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Hello\"}]}}]}\r\n\r\n",
        "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"functionCall\":{\"name\":\"look\",\"args\":{\"q\":\"x\"}}}]},",
        "\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":25,\"candidatesTokenCount\":9,\"totalTokenCount\":34}}\r\n\r\n",
    );

    fn streaming(endpoint: Endpoint, schema: Schema) -> impl Fn() -> Box<dyn Translator> {
        move || {
            let body = match endpoint {
                Endpoint::Messages => messages_request(true),
                _ => json!({"model": "m", "input": "hi", "stream": true, "tools": [{"type": "function", "name": "look",
                    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}]}),
            };
            request(endpoint, schema, &body).unwrap().2
        }
    }

    #[test]
    fn converse_streams_become_anthropic_events_at_every_split() {
        let make = streaming(Endpoint::Messages, Schema::AWSBedrock);
        let (events, usage) = stream_everywhere(make, "application/vnd.amazon.eventstream", &bedrock_frames());
        check_anthropic_stream(&events, 25, 9);
        assert_eq!((usage.input, usage.output), (25, 9));
        assert_eq!(events[4].1["content_block"]["id"], "ID");
    }

    #[test]
    fn gemini_streams_become_anthropic_events_at_every_split() {
        let make = streaming(Endpoint::Messages, Schema::GCPVertexAI);
        let (events, usage) = stream_everywhere(make, "text/event-stream", GEMINI_SSE.as_bytes());
        check_anthropic_stream(&events, 25, 9);
        assert_eq!((usage.input, usage.output), (25, 9));
    }

    #[test]
    fn a_converse_stream_exception_becomes_an_anthropic_error_event() {
        let mut frames = event_for_test("messageStart", r#"{"role":"assistant"}"#);
        frames.extend(event_for_test("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":"Hel"}}"#));
        frames.extend(crate::eventstream::encode_for_test(
            &[(":message-type", "exception"), (":exception-type", "throttlingException")],
            br#"{"message":"Too many requests"}"#,
        ));
        let make = streaming(Endpoint::Messages, Schema::AWSBedrock);
        let (out, _, _) = respond(&mut *make(), "application/vnd.amazon.eventstream", &[&frames, b""]);
        let events = events(&out);
        let last = events.last().unwrap();
        assert_eq!(last.0, "error", "{out}");
        assert_eq!(last.1["error"]["message"], "Too many requests");
        assert!(!names(&events).contains(&"message_stop"), "a broken stream is not a success: {out}");
    }

    fn check_message(json_text: &str) {
        let v: Value = serde_json::from_str(json_text).unwrap();
        assert_eq!((v["type"].as_str(), v["role"].as_str()), (Some("message"), Some("assistant")), "{v}");
        assert_eq!(v["content"][0], json!({"type": "text", "text": "Hello"}));
        assert_eq!(v["content"][1]["type"], "tool_use");
        assert_eq!(v["content"][1]["input"], json!({"q": "x"}));
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!((v["usage"]["input_tokens"].as_u64(), v["usage"]["output_tokens"].as_u64()), (Some(25), Some(9)));
    }

    #[test]
    fn converse_and_gemini_answers_become_anthropic_messages() {
        let (_, _, mut t) = request(Endpoint::Messages, Schema::AWSBedrock, &messages_request(false)).unwrap();
        let converse = br#"{"output":{"message":{"role":"assistant","content":[{"text":"Hello"},
            {"toolUse":{"toolUseId":"tu_1","name":"look","input":{"q":"x"}}}]}},"stopReason":"tool_use",
            "usage":{"inputTokens":25,"outputTokens":9,"totalTokens":34}}"#;
        let (out, usage, _) = respond(&mut *t, "application/json", &[converse]);
        check_message(&out);
        assert_eq!(usage.map(|u| u.total), Some(34));

        let (_, _, mut t) = request(Endpoint::Messages, Schema::GCPVertexAI, &messages_request(false)).unwrap();
        let gemini = br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hello"},
            {"functionCall":{"name":"look","args":{"q":"x"}}}]},"finishReason":"STOP"}],
            "usageMetadata":{"promptTokenCount":25,"candidatesTokenCount":9,"totalTokenCount":34}}"#;
        let (out, usage, _) = respond(&mut *t, "application/json", &[gemini]);
        check_message(&out);
        assert_eq!(usage.map(|u| u.total), Some(34));
    }

    #[test]
    fn upstream_errors_and_unreadable_answers_reach_the_client_in_its_shape() {
        let (_, _, mut t) = request(Endpoint::Messages, Schema::AWSBedrock, &messages_request(false)).unwrap();
        let body = t.error_body(429, br#"{"message":"Too many requests"}"#).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Too many requests"}}));

        let (_, _, mut t) = request(Endpoint::Messages, Schema::GCPVertexAI, &messages_request(false)).unwrap();
        let google = br#"{"error":{"code":400,"message":"Invalid argument","status":"INVALID_ARGUMENT"}}"#;
        let v: Value = serde_json::from_slice(&t.error_body(400, google).unwrap()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("Invalid argument"), "{v}");

        // An answer the backend hop cannot read: a 502, worded for the client.
        let (_, _, mut t) = request(Endpoint::Messages, Schema::AWSBedrock, &messages_request(false)).unwrap();
        assert_eq!(t.response_headers(200, "application/json").mode, BodyMode::Buffer);
        let e = t.response_body(b"not json", true);
        assert_eq!(e.status, Some(502));
        let v: Value = serde_json::from_slice(&e.replace.unwrap()).unwrap();
        assert_eq!(v["type"], "error", "{v}");

        let (_, _, mut t) =
            request(Endpoint::Responses, Schema::GCPVertexAI, &json!({"model": "m", "input": "hi"})).unwrap();
        let v: Value = serde_json::from_slice(&t.error_body(403, google).unwrap()).unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains("Invalid argument"), "{v}");
        assert!(v.get("type").is_none(), "OpenAI-shaped: {v}");
    }

    #[test]
    fn responses_reach_bedrock_and_gemini_through_messages_and_chat() {
        let body = json!({"model": "m", "instructions": "Be brief.", "input": "hi", "max_output_tokens": 50});
        let (path, v, mut t) = request(Endpoint::Responses, Schema::AWSBedrock, &body).unwrap();
        assert_eq!(path, "/model/m/converse");
        assert_eq!(v["system"], json!([{"text": "Be brief."}]));
        assert_eq!(v["messages"], json!([{"role": "user", "content": [{"text": "hi"}]}]));
        assert_eq!(v["inferenceConfig"]["maxTokens"], 50);
        let converse =
            br#"{"output":{"message":{"role":"assistant","content":[{"text":"Hello"}]}},"stopReason":"end_turn",
            "usage":{"inputTokens":3,"outputTokens":2,"totalTokens":5}}"#;
        let (out, usage, _) = respond(&mut *t, "application/json", &[converse]);
        let r: Value = serde_json::from_str(&out).unwrap();
        assert_eq!((r["object"].as_str(), r["status"].as_str()), (Some("response"), Some("completed")), "{r}");
        assert_eq!(r["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(r["usage"]["total_tokens"], 5);
        assert_eq!(usage.map(|u| u.total), Some(5));

        let (path, v, mut t) = request(Endpoint::Responses, Schema::GCPVertexAI, &body).unwrap();
        assert!(path.ends_with("/models/m:generateContent"), "{path}");
        assert_eq!(v["contents"], json!([{"role": "user", "parts": [{"text": "hi"}]}]));
        let gemini = br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hello"}]},"finishReason":"STOP"}],
            "usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":2,"totalTokenCount":5}}"#;
        let (out, _, _) = respond(&mut *t, "application/json", &[gemini]);
        let r: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(r["output"][0]["content"][0]["text"], "Hello", "{r}");
        assert_eq!(r["usage"]["output_tokens"], 2);

        // Without `max_output_tokens`, Gemini gets a limit every model takes.
        let (_, v, _) =
            request(Endpoint::Responses, Schema::GCPVertexAI, &json!({"model": "m", "input": "hi"})).unwrap();
        assert_eq!(v["generationConfig"]["maxOutputTokens"], VERTEX_DEFAULT_MAX_TOKENS);
    }

    fn check_responses_stream(events: &[(String, Value)], usage: TokenUsage) {
        let got = names(events);
        assert_eq!(got.first(), Some(&"response.created"), "{got:?}");
        assert_eq!(got.last(), Some(&"response.completed"), "{got:?}");
        assert!(got.contains(&"response.output_text.delta"), "{got:?}");
        assert!(got.contains(&"response.function_call_arguments.done"), "{got:?}");
        let completed = &events.last().unwrap().1["response"];
        assert_eq!(completed["usage"]["input_tokens"], 25);
        assert_eq!(completed["usage"]["output_tokens"], 9);
        let kinds: Vec<&str> =
            completed["output"].as_array().unwrap().iter().map(|o| o["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["message", "function_call"]);
        assert_eq!((usage.input, usage.output), (25, 9));
    }

    #[test]
    fn responses_streams_from_bedrock_and_gemini_at_every_split() {
        let make = streaming(Endpoint::Responses, Schema::AWSBedrock);
        let (events, usage) = stream_everywhere(make, "application/vnd.amazon.eventstream", &bedrock_frames());
        check_responses_stream(&events, usage);
        let make = streaming(Endpoint::Responses, Schema::GCPVertexAI);
        let (events, usage) = stream_everywhere(make, "text/event-stream", GEMINI_SSE.as_bytes());
        check_responses_stream(&events, usage);
    }

    #[test]
    fn header_edits_are_the_clients() {
        let (_, _, mut t) = request(Endpoint::Messages, Schema::AWSBedrock, &messages_request(true)).unwrap();
        let plan = t.response_headers(200, "application/vnd.amazon.eventstream");
        assert_eq!(plan.mode, BodyMode::Stream);
        assert_eq!(plan.set_headers, vec![("content-type", "text/event-stream".to_string())]);
        assert_eq!(plan.remove_headers, vec!["content-length"]);
        // The client asked for a stream but the backend answered JSON: held whole and rewritten.
        let (_, _, mut t) = request(Endpoint::Messages, Schema::GCPVertexAI, &messages_request(true)).unwrap();
        let plan = t.response_headers(200, "application/json");
        assert_eq!(
            (plan.mode, plan.set_headers),
            (BodyMode::Buffer, vec![("content-type", "application/json".into())])
        );
    }
}
