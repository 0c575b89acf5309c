//! Translators: one per (client schema, backend schema) pair, behind one phase-shaped trait.
//! A translator turns each phase's input into edits and usage; it never calls the host. The
//! exchange applies the edits.

// One module per (client API -> backend schema) pair, as Envoy AI Gateway's internal/translator.
mod chain;
mod chat_to_anthropic;
mod chat_to_converse;
mod chat_to_gemini;
mod embeddings_to_vertex;
mod messages_passthrough;
mod messages_to_chat;
mod openai_passthrough;
mod responses_to_messages;
// What pairs share: Anthropic request writing (chat and Responses clients), JSON string-literal
// handling, AWS's eventstream framing of Anthropic events.
mod anthropic_request;
pub mod aws_anthropic_frames;
pub(crate) mod jsontext;

use crate::api::Endpoint;
use crate::config::{Backend, Schema};
use std::cell::Cell;

use crate::body::{BodyWriter, Sink};
use crate::error::{error_json, ApiError, ErrorKind};
use crate::request::RequestInfo;
use crate::usage::TokenUsage;

/// Changes to the upstream request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RequestEdits {
    /// New `:path`, query included.
    pub path: Option<String>,
    /// New body (whole, or a head replacement); `content-length` is fixed by the exchange.
    pub body: Option<crate::body::NewBody>,
    pub set_headers: Vec<(String, String)>,
}

/// How the response body flows through the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyMode {
    /// Chunks go to the client as they arrive (possibly edited); the translator sees each one.
    Stream,
    /// The whole body is held and handed to the translator at the end (errors, bodies it rewrites).
    Buffer,
}

/// The translator's decision on the response headers.
#[derive(Debug, PartialEq, Eq)]
pub struct ResponsePlan {
    pub mode: BodyMode,
    pub set_headers: Vec<(&'static str, String)>,
    pub remove_headers: Vec<&'static str>,
}

/// What one response body chunk becomes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ChunkEdits {
    /// Bytes to send instead of the chunk; `None` forwards it unchanged.
    pub replace: Option<Vec<u8>>,
    /// Usage, once known (usually with the last event or at the end).
    pub usage: Option<TokenUsage>,
    /// The chunk carried the first generated content (for time to first token).
    pub first_content: bool,
    /// A new response status; honoured in `Buffer` mode, where the headers are still held (an
    /// upstream success the translator cannot read becomes a 502).
    pub status: Option<u16>,
}

impl ChunkEdits {
    /// An upstream success body that could not be read: the client gets `body` with a 502.
    pub fn unreadable(body: Vec<u8>) -> Self {
        ChunkEdits { replace: Some(body), usage: None, first_content: false, status: Some(502) }
    }
}

/// Everything the request phase may look at.
pub struct RequestContext<'a> {
    pub info: &'a RequestInfo,
    pub body: &'a [u8],
    pub backend: &'a Backend,
    /// The client's query string, with its `?`, or ""; for a stored response's call, its id and
    /// call first (`Endpoint::path_tail`).
    pub query: &'a str,
    /// Unix seconds now, for `created` fields the provider does not send.
    pub now_unix: u64,
    /// Where a translator writing a whole new body hands its full chunks (the host's body buffer);
    /// `None` keeps the body in memory (tests).
    pub sink: Cell<Option<&'a mut dyn Sink>>,
}

impl<'a> RequestContext<'a> {
    /// A request with no query, at time 0, whose new body stays in memory (tests, tools).
    pub fn new(info: &'a RequestInfo, body: &'a [u8], backend: &'a Backend) -> Self {
        RequestContext { info, body, backend, query: "", now_unix: 0, sink: Cell::new(None) }
    }

    /// A writer for a whole new body, handing chunks to the sink (taken: one body per request).
    pub fn writer(&self) -> BodyWriter<'a> {
        BodyWriter::new(self.sink.take())
    }
}

pub trait Translator {
    /// The client's request body → edits of the upstream request.
    fn request_body(&mut self, request: &RequestContext) -> Result<RequestEdits, ApiError>;
    /// Upstream response headers (success statuses only; errors go to `error_body`).
    fn response_headers(&mut self, status: u16, content_type: &str) -> ResponsePlan;
    /// One upstream body chunk (in `Stream` mode), or the whole body at the end (in `Buffer` mode).
    fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> ChunkEdits;
    /// An upstream error body → the error the client sees (`None` keeps it as is).
    fn error_body(&mut self, status: u16, body: &[u8]) -> Option<Vec<u8>>;
    /// Whether the success body is rewritten (asked after `response_headers`). A compressed body
    /// cannot be rewritten: the exchange refuses it with a 502 instead of sending garbage.
    fn rewrites_response(&self) -> bool {
        true
    }
}

/// Picks the translator for a client endpoint and a backend schema. One exhaustive match, so a new
/// schema or endpoint cannot be forgotten here. `include_usage`: ask streaming OpenAI-compatible
/// upstreams for usage when the client did not.
pub fn for_backend(endpoint: Endpoint, schema: Schema, include_usage: bool) -> Result<Box<dyn Translator>, ApiError> {
    use Endpoint as E;
    use Schema as S;
    Ok(match (endpoint, schema) {
        (
            E::ChatCompletions
            | E::Completions
            | E::Embeddings
            | E::Responses
            | E::StoredResponse(_)
            | E::ImageGenerations
            | E::ImageEdits
            | E::AudioSpeech
            | E::AudioTranscriptions
            | E::AudioTranslations,
            S::OpenAI | S::AzureOpenAI,
        ) => Box::new(openai_passthrough::Passthrough::new(endpoint, include_usage)),
        (E::ChatCompletions, S::Anthropic | S::AWSAnthropic | S::GCPAnthropic) => {
            Box::new(chat_to_anthropic::OpenAIToAnthropic::new(schema))
        }
        (E::Messages, S::Anthropic | S::AWSAnthropic | S::GCPAnthropic) => {
            Box::new(messages_passthrough::AnthropicNative::new(schema))
        }
        (E::Messages, S::OpenAI | S::AzureOpenAI) => Box::new(messages_to_chat::AnthropicToOpenAI::new()),
        (E::Responses, S::Anthropic | S::AWSAnthropic | S::GCPAnthropic) => {
            Box::new(responses_to_messages::ResponsesToAnthropic::new(schema))
        }
        (E::CountTokens, S::Anthropic) => Box::new(messages_passthrough::AnthropicNative::count_tokens(schema)),
        (E::CountTokens, _) => return Err(cannot_count_tokens(schema)),
        (E::ChatCompletions, S::GCPVertexAI) => Box::new(chat_to_gemini::OpenAIToGemini::new()),
        (E::Embeddings, S::GCPVertexAI) => Box::new(embeddings_to_vertex::OpenAIToVertexEmbeddings::new()),
        (E::ChatCompletions, S::AWSBedrock) => Box::new(chat_to_converse::OpenAIToBedrock::new()),
        // No translator speaks these pairs: two are chained through OpenAI chat (and Responses
        // through Anthropic Messages first). What is lost on the way is tabled in the README.
        (E::Messages, S::AWSBedrock | S::GCPVertexAI) => Box::new(messages_via_chat(schema)),
        (E::Responses, S::AWSBedrock | S::GCPVertexAI) => Box::new(chain::Chain::new(
            Box::new(responses_to_messages::ResponsesToAnthropic::new(S::Anthropic)),
            chain::Intermediate::AnthropicMessages,
            Box::new(messages_via_chat(schema)),
        )),
        (E::Completions | E::Embeddings, S::Anthropic | S::AWSAnthropic | S::GCPAnthropic | S::AWSBedrock)
        | (E::Completions, S::GCPVertexAI)
        // The OpenAI-only APIs beyond Responses are served by OpenAI-compatible backends only (for
        // now); a stored response lives at OpenAI, so only an OpenAI-compatible backend has it.
        | (
            E::StoredResponse(_)
            | E::ImageGenerations
            | E::ImageEdits
            | E::AudioSpeech
            | E::AudioTranscriptions
            | E::AudioTranslations,
            S::Anthropic | S::AWSAnthropic | S::GCPAnthropic | S::AWSBedrock | S::GCPVertexAI,
        )
        | (E::Models | E::AnthropicModels, _) => return Err(unsupported(endpoint, schema)),
    })
}

/// Anthropic Messages → OpenAI chat → a chat translator's backend (Bedrock Converse or Gemini).
fn messages_via_chat(schema: Schema) -> chain::Chain {
    let chat_to_backend: Box<dyn Translator> = match schema {
        Schema::GCPVertexAI => Box::new(chat_to_gemini::OpenAIToGemini::new()),
        _ => Box::new(chat_to_converse::OpenAIToBedrock::new()),
    };
    chain::Chain::new(
        Box::new(messages_to_chat::AnthropicToOpenAI::new()),
        chain::Intermediate::OpenAIChat,
        chat_to_backend,
    )
}

/// A translator handed a backend of a schema it does not speak (`for_backend` pairs them by schema,
/// so the exchange never does).
fn wrong_backend(backend: &Backend, speaks: &str) -> ApiError {
    ApiError::new(
        500,
        ErrorKind::Server,
        "internal",
        format!("backend {:?} is {}, not a {speaks} backend", backend.name, backend.schema().name()),
    )
}

fn unsupported(endpoint: Endpoint, schema: Schema) -> ApiError {
    ApiError::bad_request(
        "unsupported_endpoint",
        format!("the backend for this model speaks {} and cannot serve {}", schema.name(), endpoint.suffix()),
    )
}

/// Only Anthropic's own API counts tokens the way `count_tokens` promises. Bedrock's and Vertex's
/// count-tokens calls take other bodies and paths than this gateway can vouch for, and other
/// providers have no such call: a guess would be a wrong number.
fn cannot_count_tokens(schema: Schema) -> ApiError {
    ApiError::bad_request(
        "unsupported_endpoint",
        format!(
            "the backend for this model speaks {} and cannot count tokens: /v1/messages/count_tokens is \
             served for Anthropic backends only",
            schema.name()
        ),
    )
}

/// The error plan shared by every translator whose client speaks OpenAI: hold the body, fix the type.
pub fn error_plan() -> ResponsePlan {
    ResponsePlan {
        mode: BodyMode::Buffer,
        set_headers: vec![("content-type", "application/json".to_string())],
        remove_headers: vec!["content-length"],
    }
}

/// Keeps an upstream error that is already OpenAI-shaped; wraps anything else, keeping its text.
pub fn openai_error_body(status: u16, body: &[u8]) -> Option<Vec<u8>> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        #[allow(dead_code)]
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        #[allow(dead_code)]
        message: String,
    }
    // serde_json skips unread strings without checking their UTF-8: check it, or a broken body
    // would pass as OpenAI-shaped.
    if std::str::from_utf8(body).is_ok() && crate::json::from_bytes::<Envelope>(body).is_ok() {
        return None;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let message = if text.is_empty() {
        format!("upstream returned HTTP {status} with an empty body")
    } else {
        truncate(text, 2048).to_string()
    };
    Some(error_json(&message, ErrorKind::for_status(status).as_str(), "upstream_error"))
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_anthropic_backends_count_tokens() {
        use Schema as S;
        let all =
            [S::OpenAI, S::AzureOpenAI, S::Anthropic, S::AWSBedrock, S::AWSAnthropic, S::GCPVertexAI, S::GCPAnthropic];
        assert_eq!(all.len(), Schema::SUPPORTED.len());
        for schema in all {
            match for_backend(Endpoint::CountTokens, schema, true) {
                Ok(_) => assert_eq!(schema, Schema::Anthropic),
                Err(e) => {
                    assert_ne!(schema, Schema::Anthropic);
                    assert_eq!(e.status, 400);
                    let v: serde_json::Value =
                        serde_json::from_slice(&e.body(crate::api::ClientApi::Anthropic)).unwrap();
                    assert_eq!(v["type"], "error");
                    assert_eq!(v["error"]["type"], "invalid_request_error");
                    assert!(v["error"]["message"].as_str().unwrap().contains("cannot count tokens"), "{v}");
                }
            }
        }
    }

    #[test]
    fn openai_errors_are_kept_and_others_wrapped() {
        assert_eq!(openai_error_body(429, br#"{"error":{"message":"slow down","type":"requests"}}"#), None);
        let wrapped = openai_error_body(503, b"upstream connect error or disconnect/reset before headers").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&wrapped).unwrap();
        assert_eq!(v["error"]["message"], "upstream connect error or disconnect/reset before headers");
        assert_eq!(v["error"]["type"], "server_error");
        assert_eq!(v["error"]["code"], "upstream_error");
        let v: serde_json::Value = serde_json::from_slice(&openai_error_body(401, b"").unwrap()).unwrap();
        assert_eq!(v["error"]["type"], "authentication_error");
        let broken = openai_error_body(429, b"{\"error\":{\"message\":\"m\",\"type\":\"rate\x83\"}}").unwrap();
        assert!(serde_json::from_slice::<serde_json::Value>(&broken).is_ok());
        let long = "é".repeat(3000);
        let v: serde_json::Value = serde_json::from_slice(&openai_error_body(500, long.as_bytes()).unwrap()).unwrap();
        assert!(v["error"]["message"].as_str().unwrap().len() <= 2048);
    }
}
