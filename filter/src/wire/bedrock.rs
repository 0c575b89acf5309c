//! Amazon Bedrock Converse API wire types (`POST /model/{modelId}/converse` and
//! `/converse-stream`), for reading Bedrock's answers. The request is written directly by the
//! translator (no request types: nothing is collected). Bedrock's unions (content blocks, deltas)
//! are JSON objects with one member; unknown members and unknown enum values never fail parsing,
//! and every optional field may be missing. Non-streaming answers are read through borrowed views
//! (texts and tool inputs stay raw JSON, walked with `json::each`).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

// ---- response (borrowed views) ----

/// A Converse answer. `output` is the only member needed; the rest may be missing.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConverseResponseView<'a> {
    #[serde(borrow)]
    pub output: OutputView<'a>,
    #[serde(default)]
    pub stop_reason: Option<StopReason>,
    #[serde(default)]
    pub usage: Option<TokenUsage>,
}

#[derive(Debug, Deserialize, Default)]
pub struct OutputView<'a> {
    #[serde(default, borrow)]
    pub message: Option<MessageView<'a>>,
}

#[derive(Debug, Deserialize, Default)]
pub struct MessageView<'a> {
    /// An array of [`ContentBlockView`].
    #[serde(default, borrow)]
    pub content: Option<&'a RawValue>,
}

/// The members a content block of an answer may carry; at most one is set. Anything else
/// (`guardContent`, `citationsContent`, ...) has none set and is skipped.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContentBlockView<'a> {
    /// A JSON string, kept raw (never unescaped or copied).
    #[serde(default, borrow)]
    pub text: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub tool_use: Option<ToolUseView<'a>>,
    #[serde(default, borrow)]
    pub reasoning_content: Option<ReasoningContentView<'a>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ToolUseView<'a> {
    #[serde(default, borrow, deserialize_with = "crate::wire::chat_view::opt_text")]
    pub tool_use_id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "crate::wire::chat_view::opt_text")]
    pub name: Option<Cow<'a, str>>,
    /// Any JSON value, kept raw.
    #[serde(default, borrow)]
    pub input: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReasoningContentView<'a> {
    #[serde(default, borrow)]
    pub reasoning_text: Option<ReasoningTextView<'a>>,
    /// Encrypted reasoning (base64), raw: only noted, never copied.
    #[serde(default, borrow)]
    pub redacted_content: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize, Default)]
pub struct ReasoningTextView<'a> {
    /// A JSON string, kept raw.
    #[serde(default, borrow)]
    pub text: Option<&'a RawValue>,
    /// Raw: only noted, never copied.
    #[serde(default, borrow)]
    pub signature: Option<&'a RawValue>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    EndTurn,
    ToolUse,
    MaxTokens,
    StopSequence,
    GuardrailIntervened,
    ContentFiltered,
    ModelContextWindowExceeded,
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TokenUsage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub total_tokens: Option<u64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_write_input_tokens: Option<u64>,
}

impl TokenUsage {
    /// Bedrock's `inputTokens` leaves out cache reads and writes; OpenAI's prompt tokens include them.
    /// Saturating: any numbers Bedrock sends are safe.
    pub fn to_tokens(&self) -> crate::usage::TokenUsage {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        let input = self.input_tokens.saturating_add(cached).saturating_add(self.cache_write_input_tokens.unwrap_or(0));
        crate::usage::TokenUsage {
            input,
            output: self.output_tokens,
            total: self.total_tokens.unwrap_or(input.saturating_add(self.output_tokens)),
            cached_input: cached,
            reasoning: 0,
        }
    }
}

// ---- stream events (one per eventstream message; `:event-type` names it) ----

#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    MessageStart,
    ContentBlockStart(ContentBlockStart),
    ContentBlockDelta(ContentBlockDelta),
    ContentBlockStop,
    MessageStop(MessageStop),
    Metadata(Metadata),
    /// An event type this gateway does not know.
    Unknown,
}

impl StreamEvent {
    /// Parses an event's JSON payload by its `:event-type`; without one, by the payload's members.
    pub fn parse(event_type: Option<&str>, payload: &[u8]) -> Result<StreamEvent, serde_json::Error> {
        let event_type = match event_type {
            Some(t) => t,
            None => guess_event_type(payload)?,
        };
        Ok(match event_type {
            "messageStart" => {
                crate::json::from_bytes::<serde::de::IgnoredAny>(payload)?;
                StreamEvent::MessageStart
            }
            "contentBlockStart" => StreamEvent::ContentBlockStart(crate::json::from_bytes(payload)?),
            "contentBlockDelta" => StreamEvent::ContentBlockDelta(crate::json::from_bytes(payload)?),
            "contentBlockStop" => {
                crate::json::from_bytes::<serde::de::IgnoredAny>(payload)?;
                StreamEvent::ContentBlockStop
            }
            "messageStop" => StreamEvent::MessageStop(crate::json::from_bytes(payload)?),
            "metadata" => StreamEvent::Metadata(crate::json::from_bytes(payload)?),
            _ => StreamEvent::Unknown,
        })
    }
}

/// The event type of a payload that came without `:event-type`, from the members only one event
/// type has.
fn guess_event_type(payload: &[u8]) -> Result<&'static str, serde_json::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        role: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        start: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        delta: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        stop_reason: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        usage: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        metrics: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        content_block_index: Option<serde::de::IgnoredAny>,
    }
    let p: Probe = crate::json::from_bytes(payload)?;
    Ok(if p.delta.is_some() {
        "contentBlockDelta"
    } else if p.start.is_some() {
        "contentBlockStart"
    } else if p.stop_reason.is_some() {
        "messageStop"
    } else if p.usage.is_some() || p.metrics.is_some() {
        "metadata"
    } else if p.role.is_some() {
        "messageStart"
    } else if p.content_block_index.is_some() {
        "contentBlockStop"
    } else {
        "unknown"
    })
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContentBlockStart {
    #[serde(default)]
    pub content_block_index: Option<u32>,
    #[serde(default)]
    pub start: BlockStart,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BlockStart {
    #[serde(default)]
    pub tool_use: Option<ToolUseStart>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ToolUseStart {
    #[serde(default)]
    pub tool_use_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContentBlockDelta {
    #[serde(default)]
    pub content_block_index: Option<u32>,
    #[serde(default)]
    pub delta: Delta,
}

/// One member set; none set means a delta of a kind this gateway does not know.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Delta {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub tool_use: Option<ToolUseDelta>,
    #[serde(default)]
    pub reasoning_content: Option<ReasoningDelta>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
pub struct ToolUseDelta {
    /// A piece of the tool input's JSON text.
    #[serde(default)]
    pub input: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReasoningDelta {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub signature: Option<String>,
    #[serde(default)]
    pub redacted_content: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MessageStop {
    #[serde(default)]
    pub stop_reason: Option<StopReason>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
pub struct Metadata {
    #[serde(default)]
    pub usage: Option<TokenUsage>,
}

/// The body of a Bedrock error: an HTTP error body, or the payload of an exception message.
/// Non-string messages are ignored rather than failing the whole body.
#[derive(Debug, Deserialize, Default)]
pub struct ErrorBodyView<'a> {
    #[serde(default, borrow)]
    pub message: Option<&'a RawValue>,
    #[serde(default, borrow, rename = "Message")]
    pub message_capitalized: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub error: Option<&'a RawValue>,
}

impl<'a> ErrorBodyView<'a> {
    /// The first string among `message`, `Message` and `error.message`.
    pub fn text(&self) -> Option<Cow<'a, str>> {
        #[derive(Deserialize)]
        struct Inner<'b> {
            #[serde(default, borrow)]
            message: Option<&'b RawValue>,
        }
        let string = |raw: &'a RawValue| crate::json::from_raw::<Cow<'a, str>>(raw).ok();
        self.message.and_then(string).or_else(|| self.message_capitalized.and_then(string)).or_else(|| {
            let inner: Inner<'a> = crate::json::from_raw(self.error?).ok()?;
            inner.message.and_then(string)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_members_and_values_do_not_break_parsing() {
        let body = br#"{"output":{"message":{"role":"assistant","content":[
            {"text":"a"},{"guardContent":{"text":{"text":"x"}}},
            {"reasoningContent":{"reasoningText":{"text":"r","signature":"s"}}},
            {"toolUse":{"toolUseId":"t1","name":"f","input":{"q":1}}}]}},
          "stopReason":"some_future_reason","usage":{"inputTokens":3,"outputTokens":4,"totalTokens":7},
          "metrics":{"latencyMs":12},"trace":{}}"#;
        let r: ConverseResponseView = serde_json::from_slice(body).unwrap();
        assert_eq!(r.stop_reason, Some(StopReason::Unknown));
        let mut kinds = Vec::new();
        crate::json::each(r.output.message.unwrap().content.unwrap(), |block: ContentBlockView| -> Result<(), ()> {
            kinds.push(match block {
                ContentBlockView { text: Some(t), .. } => t.get().to_string(),
                ContentBlockView { tool_use: Some(t), .. } => {
                    format!("{}:{}", t.tool_use_id.unwrap(), t.input.unwrap())
                }
                ContentBlockView { reasoning_content: Some(_), .. } => "reasoning".into(),
                _ => "unknown".into(),
            });
            Ok(())
        })
        .unwrap();
        assert_eq!(kinds, [r#""a""#, "unknown", "reasoning", r#"t1:{"q":1}"#]);
        let e = StreamEvent::parse(
            Some("contentBlockDelta"),
            br#"{"contentBlockIndex":2,"delta":{"citation":{}},"p":"abc"}"#,
        )
        .unwrap();
        assert_eq!(
            e,
            StreamEvent::ContentBlockDelta(ContentBlockDelta { content_block_index: Some(2), delta: Delta::default() })
        );
        assert_eq!(StreamEvent::parse(Some("brandNewEvent"), b"not json").unwrap(), StreamEvent::Unknown);
        assert!(StreamEvent::parse(Some("messageStop"), b"not json").is_err());
    }

    #[test]
    fn events_without_a_type_or_optional_fields_are_recognized() {
        let cases: [(&[u8], &str); 6] = [
            (br#"{"role":"assistant"}"#, "MessageStart"),
            (br#"{"start":{"toolUse":{"toolUseId":"t","name":"f"}}}"#, "ContentBlockStart"),
            (br#"{"delta":{"text":"x"}}"#, "ContentBlockDelta"),
            (br#"{"contentBlockIndex":0}"#, "ContentBlockStop"),
            (br#"{"stopReason":"end_turn"}"#, "MessageStop"),
            (br#"{"metrics":{"latencyMs":1}}"#, "Metadata"),
        ];
        for (payload, want) in cases {
            let got = format!("{:?}", StreamEvent::parse(None, payload).unwrap());
            assert!(got.starts_with(want), "{got}");
        }
        assert_eq!(
            StreamEvent::parse(Some("contentBlockDelta"), b"{}").unwrap(),
            StreamEvent::ContentBlockDelta(ContentBlockDelta::default())
        );
    }

    #[test]
    fn usage_counts_cache_tokens_as_prompt_tokens_and_saturates() {
        let u: TokenUsage = serde_json::from_str(
            r#"{"inputTokens":4,"outputTokens":248,"totalTokens":2128,"cacheReadInputTokens":0,"cacheWriteInputTokens":1876}"#,
        )
        .unwrap();
        let t = u.to_tokens();
        assert_eq!((t.input, t.output, t.total, t.cached_input), (1880, 248, 2128, 0));
        let t =
            TokenUsage { input_tokens: 5, output_tokens: 2, cache_read_input_tokens: Some(10), ..Default::default() }
                .to_tokens();
        assert_eq!((t.input, t.total, t.cached_input), (15, 17, 10));
        let t = TokenUsage {
            input_tokens: u64::MAX,
            output_tokens: u64::MAX,
            cache_read_input_tokens: Some(u64::MAX),
            ..Default::default()
        }
        .to_tokens();
        assert_eq!((t.input, t.total), (u64::MAX, u64::MAX));
    }

    #[test]
    fn error_bodies_give_their_message() {
        let text = |body: &str| serde_json::from_str::<ErrorBodyView>(body).unwrap().text().map(|c| c.to_string());
        assert_eq!(text(r#"{"message":"a"}"#).as_deref(), Some("a"));
        assert_eq!(text(r#"{"Message":"b","message":3}"#).as_deref(), Some("b"));
        assert_eq!(text(r#"{"error":{"message":"c"}}"#).as_deref(), Some("c"));
        assert_eq!(text(r#"{"x":1}"#), None);
    }
}
