//! Bedrock `InvokeModelWithResponseStream` (schema `AWSAnthropic`, path
//! `/model/{id}/invoke-with-response-stream`) → the Anthropic stream events it carries.
//!
//! The response is an AWS eventstream. Each `chunk` event's JSON payload is
//! `{"bytes":"<base64 of one Anthropic stream event JSON>"}` (Bedrock may add a `p` padding member);
//! exceptions arrive as `:message-type: exception` messages whose payload is `{"message": ...}`.
//! This adapter only unwraps: the Anthropic event JSON it hands out is translated by the Anthropic
//! translators exactly as if it had come as SSE `data:`.

use std::fmt;

use serde::Deserialize;

use crate::error::ErrorKind;
use crate::eventstream::{Decoder, Kind};

/// An upstream exception, or a stream this adapter cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    /// The Bedrock exception name (e.g. `throttlingException`, `modelStreamErrorException`), or
    /// `invalid_upstream_response` for a broken stream.
    pub code: String,
    /// The upstream's message, kept as sent.
    pub message: String,
}

impl StreamError {
    fn invalid(message: impl Into<String>) -> Self {
        StreamError { code: "invalid_upstream_response".into(), message: message.into() }
    }

    /// The error kind for the client (`rate_limit_error` for throttling, and so on).
    pub fn kind(&self) -> ErrorKind {
        super::chat_to_converse::exception_kind(&self.code)
    }

    /// An Anthropic `error` stream event carrying this error:
    /// `{"type":"error","error":{"type":"overloaded_error","message":"..."}}`.
    pub fn anthropic_event(&self) -> Vec<u8> {
        let status = if self.code.eq_ignore_ascii_case("serviceUnavailableException") { 529 } else { 0 };
        crate::error::anthropic_error_json(&self.message, self.kind().anthropic_type(status))
    }
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl From<StreamError> for String {
    fn from(e: StreamError) -> String {
        e.to_string()
    }
}

#[derive(Deserialize)]
struct Chunk {
    /// Base64 of the Anthropic event JSON.
    bytes: String,
}

/// What a message is. Headers may be missing: without `:message-type`, an `:exception-type`
/// makes an exception and an `:event-type` an event; an event without `:event-type` whose payload
/// is a chunk is a chunk; with no type headers at all, `Unknown` (the payload decides).
fn classify(message: &crate::eventstream::Message) -> Kind<'_> {
    match message.kind() {
        Kind::Unknown => match (message.header(":exception-type"), message.header(":event-type")) {
            (Some(exception), _) => Kind::Exception(exception),
            (None, Some(event)) => Kind::Event(event),
            (None, None) => Kind::Unknown,
        },
        Kind::Event("") => Kind::Event("chunk"),
        kind => kind,
    }
}

/// An exception or error message: its code (header) and the message (payload or header).
fn exception(message: &crate::eventstream::Message) -> StreamError {
    if let Some((code, text)) = super::chat_to_converse::stream_exception(message) {
        return StreamError { code, message: text };
    }
    #[derive(Deserialize)]
    struct Payload {
        #[serde(default, alias = "Message")]
        message: Option<String>,
    }
    let code = message.header(":exception-type").unwrap_or("upstreamException").to_string();
    let text =
        crate::json::from_bytes::<Payload>(message.payload()).ok().and_then(|p| p.message).unwrap_or_else(|| {
            let text = String::from_utf8_lossy(message.payload());
            text.chars().take(2048).collect()
        });
    StreamError { code, message: text }
}

/// Incremental unwrapper: push upstream bytes cut anywhere, get each Anthropic event's JSON.
#[derive(Debug, Default)]
pub struct AnthropicFrames {
    decoder: Decoder,
    failed: Option<StreamError>,
}

impl AnthropicFrames {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds upstream bytes; calls `on_event` with the JSON of every Anthropic event completed by
    /// them, in order. An exception message (or a broken frame) returns `Err` after the events
    /// before it were delivered; from then on every call returns the same error and delivers nothing.
    pub fn push(&mut self, chunk: &[u8], mut on_event: impl FnMut(&[u8])) -> Result<(), StreamError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut error: Option<StreamError> = None;
        let decoded = self.decoder.push(chunk, |message| {
            if error.is_some() {
                return;
            }
            match classify(&message) {
                Kind::Event("chunk") => match crate::json::from_bytes::<Chunk>(message.payload()) {
                    Ok(c) => match aws_smithy_types::base64::decode(&c.bytes) {
                        Ok(event) => on_event(&event),
                        Err(e) => error = Some(StreamError::invalid(format!("a chunk's bytes are not base64: {e}"))),
                    },
                    Err(e) => {
                        error = Some(StreamError::invalid(format!("a chunk event is not {{\"bytes\":...}}: {e}")))
                    }
                },
                Kind::Event(other) => log::debug!("llmgw: Bedrock stream: ignored a {other:?} event"),
                Kind::Exception(_) | Kind::Error { .. } => {
                    error = Some(exception(&message));
                }
                Kind::Unknown => match crate::json::from_bytes::<Chunk>(message.payload()) {
                    // No type headers at all: a payload that is a chunk is one.
                    Ok(c) => match aws_smithy_types::base64::decode(&c.bytes) {
                        Ok(event) => on_event(&event),
                        Err(_) => log::debug!("llmgw: Bedrock stream: ignored an untyped message"),
                    },
                    Err(_) => log::debug!("llmgw: Bedrock stream: ignored an untyped message"),
                },
            }
        });
        let error = error.or_else(|| decoded.err().map(|e| StreamError::invalid(e.to_string())));
        match error {
            Some(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// End of the upstream body: an unfinished frame is an error.
    pub fn finish(&mut self) -> Result<(), StreamError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.decoder.finish().map_err(|e| {
            let e = StreamError::invalid(e.to_string());
            self.failed = Some(e.clone());
            e
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventstream::encode_for_test;

    fn chunk(event_json: &str) -> Vec<u8> {
        let payload =
            format!(r#"{{"bytes":"{}","p":"abcdefghij"}}"#, aws_smithy_types::base64::encode(event_json.as_bytes()));
        encode_for_test(
            &[(":event-type", "chunk"), (":content-type", "application/json"), (":message-type", "event")],
            payload.as_bytes(),
        )
    }

    const EVENTS: [&str; 4] = [
        r#"{"type":"message_start","message":{"id":"msg_bdrk_01","type":"message","role":"assistant","model":"claude-3-5-sonnet-20240620","content":[],"stop_reason":null,"usage":{"input_tokens":12,"output_tokens":1}}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi ✓"}}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":4}}"#,
        r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":12,"outputTokenCount":4}}"#,
    ];

    fn collect(frames: &mut AnthropicFrames, chunks: &[&[u8]]) -> (Vec<String>, Result<(), StreamError>) {
        let mut out = Vec::new();
        for c in chunks {
            if let Err(e) = frames.push(c, |e| out.push(String::from_utf8(e.to_vec()).unwrap())) {
                return (out, Err(e));
            }
        }
        let end = frames.finish();
        (out, end)
    }

    #[test]
    fn unwraps_events_at_every_split() {
        let stream: Vec<u8> = EVENTS.iter().flat_map(|e| chunk(e)).collect();
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            let (got, end) = collect(&mut AnthropicFrames::new(), &[a, b]);
            assert_eq!(end, Ok(()), "cut {cut}");
            assert_eq!(got, EVENTS, "cut {cut}");
        }
    }

    #[test]
    fn exceptions_are_errors_after_earlier_events() {
        let mut stream = chunk(EVENTS[0]);
        stream.extend(encode_for_test(
            &[
                (":message-type", "exception"),
                (":exception-type", "throttlingException"),
                (":content-type", "application/json"),
            ],
            br#"{"message":"Too many tokens, please wait before trying again."}"#,
        ));
        stream.extend(chunk(EVENTS[1]));
        let mut frames = AnthropicFrames::new();
        let (got, end) = collect(&mut frames, &[&stream]);
        assert_eq!(got, [EVENTS[0]]);
        let e = end.unwrap_err();
        assert_eq!(
            e,
            StreamError {
                code: "throttlingException".into(),
                message: "Too many tokens, please wait before trying again.".into()
            }
        );
        assert_eq!(e.kind(), ErrorKind::RateLimit);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&e.anthropic_event()).unwrap(),
            serde_json::json!({"type":"error","error":{"type":"rate_limit_error","message":"Too many tokens, please wait before trying again."}})
        );
        assert_eq!(frames.push(&chunk(EVENTS[2]), |_| panic!("delivered after an error")), Err(e.clone()));
        assert_eq!(frames.finish(), Err(e));
        let unavailable = StreamError { code: "serviceUnavailableException".into(), message: "busy".into() };
        assert!(String::from_utf8(unavailable.anthropic_event()).unwrap().contains("overloaded_error"));
        assert_eq!(String::from(unavailable), "serviceUnavailableException: busy");
    }

    #[test]
    fn frames_without_type_headers_still_count() {
        let payload = |json: &str| format!(r#"{{"bytes":"{}"}}"#, aws_smithy_types::base64::encode(json.as_bytes()));
        let mut stream = encode_for_test(&[(":event-type", "chunk")], payload(EVENTS[0]).as_bytes());
        stream.extend(encode_for_test(&[], payload(EVENTS[1]).as_bytes()));
        stream.extend(encode_for_test(&[(":message-type", "event")], payload(EVENTS[2]).as_bytes()));
        stream.extend(encode_for_test(&[(":content-type", "application/json")], b"{\"other\":1}"));
        stream.extend(chunk(EVENTS[3]));
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            let (got, end) = collect(&mut AnthropicFrames::new(), &[a, b]);
            assert_eq!((got, end), (EVENTS.map(String::from).to_vec(), Ok(())), "cut {cut}");
        }
        let exception = encode_for_test(&[(":exception-type", "throttlingException")], br#"{"message":"slow"}"#);
        let (_, end) = collect(&mut AnthropicFrames::new(), &[&chunk(EVENTS[0]), &exception]);
        assert_eq!(end, Err(StreamError { code: "throttlingException".into(), message: "slow".into() }));
    }

    #[test]
    fn broken_frames_and_payloads_are_errors() {
        let mut bad_crc = chunk(EVENTS[0]);
        let n = bad_crc.len();
        bad_crc[n - 2] ^= 1;
        let (_, end) = collect(&mut AnthropicFrames::new(), &[&bad_crc]);
        assert_eq!(end.unwrap_err().code, "invalid_upstream_response");
        let not_base64 =
            encode_for_test(&[(":message-type", "event"), (":event-type", "chunk")], br#"{"bytes":"***"}"#);
        let (_, end) = collect(&mut AnthropicFrames::new(), &[&not_base64]);
        assert!(end.unwrap_err().message.contains("base64"));
        let truncated = chunk(EVENTS[0]);
        let (_, end) = collect(&mut AnthropicFrames::new(), &[truncated.get(..20).unwrap()]);
        assert!(end.unwrap_err().message.contains("ended inside a message"));
        // Other event types are skipped.
        let other = encode_for_test(&[(":message-type", "event"), (":event-type", "initial-response")], b"{}");
        let (got, end) = collect(&mut AnthropicFrames::new(), &[&other, &chunk(EVENTS[3])]);
        assert_eq!((got, end), (vec![EVENTS[3].to_string()], Ok(())));
    }
}
