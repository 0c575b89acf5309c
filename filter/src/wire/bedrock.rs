//! Amazon Bedrock Converse API wire types (`POST /model/{modelId}/converse` and
//! `/converse-stream`). Bedrock's unions (content blocks, deltas, tool choice) are JSON objects with
//! exactly one member; unknown members and unknown enum values never fail parsing: they become
//! `Unknown` and are skipped by the translator.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

// ---- request ----

#[derive(Debug, Clone, Serialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConverseRequest {
    pub messages: Vec<Message>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub system: Vec<SystemBlock>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inference_config: Option<InferenceConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_config: Option<ToolConfig>,
    /// Model-specific fields (e.g. Anthropic `thinking`), passed to the model as is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub additional_model_request_fields: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<ContentBlock>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum SystemBlock {
    Text(String),
}

#[derive(Debug, Clone, Serialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InferenceConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop_sequences: Vec<String>,
}

impl InferenceConfig {
    pub fn is_empty(&self) -> bool {
        self == &InferenceConfig::default()
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ToolConfig {
    pub tools: Vec<Tool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum Tool {
    ToolSpec(ToolSpec),
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ToolSpec {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub input_schema: InputSchema,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum InputSchema {
    Json(Value),
}

/// `{"auto":{}}`, `{"any":{}}` or `{"tool":{"name":...}}`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum ToolChoice {
    Auto(Empty),
    Any(Empty),
    Tool(NamedTool),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Empty {}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NamedTool {
    pub name: String,
}

// ---- content blocks (request and response) ----

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum ContentBlock {
    Text(String),
    Image(ImageBlock),
    Document(DocumentBlock),
    ToolUse(ToolUseBlock),
    ToolResult(ToolResultBlock),
    ReasoningContent(ReasoningContentBlock),
    /// A member this gateway does not know (e.g. `guardContent`, `citationsContent`).
    #[serde(skip)]
    Unknown,
}

/// The members a content block of a response may carry (text, tool use, reasoning); exactly one is
/// set. Decoding through this struct is what lets unknown members through: anything else, including
/// request-only blocks, decodes as `Unknown`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnyContentBlock {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tool_use: Option<ToolUseBlock>,
    #[serde(default)]
    reasoning_content: Option<ReasoningContentBlock>,
}

impl<'de> Deserialize<'de> for ContentBlock {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let b = AnyContentBlock::deserialize(d)?;
        Ok(if let Some(t) = b.text {
            ContentBlock::Text(t)
        } else if let Some(t) = b.tool_use {
            ContentBlock::ToolUse(t)
        } else if let Some(r) = b.reasoning_content {
            ContentBlock::ReasoningContent(r)
        } else {
            ContentBlock::Unknown
        })
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ImageBlock {
    /// `png`, `jpeg`, `gif` or `webp`.
    pub format: String,
    pub source: BytesSource,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DocumentBlock {
    /// `pdf`, `csv`, `doc`, `docx`, `xls`, `xlsx`, `html`, `txt` or `md`.
    pub format: String,
    pub name: String,
    pub source: BytesSource,
}

/// Binary data, base64 in JSON.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BytesSource {
    pub bytes: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ToolUseBlock {
    pub tool_use_id: String,
    pub name: String,
    #[serde(default)]
    pub input: Value,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ToolResultBlock {
    pub tool_use_id: String,
    pub content: Vec<ToolResultContent>,
    /// `success` or `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum ToolResultContent {
    Text(String),
    Json(Value),
    Image(ImageBlock),
    Document(DocumentBlock),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReasoningContentBlock {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reasoning_text: Option<ReasoningText>,
    /// Encrypted reasoning, base64.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub redacted_content: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ReasoningText {
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub signature: Option<String>,
}

// ---- response ----

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConverseResponse {
    pub output: Output,
    #[serde(default)]
    pub stop_reason: Option<StopReason>,
    #[serde(default)]
    pub usage: Option<TokenUsage>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
pub struct Output {
    #[serde(default)]
    pub message: Option<Message>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
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

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
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
    pub fn to_tokens(&self) -> crate::usage::TokenUsage {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        let input = self.input_tokens + cached + self.cache_write_input_tokens.unwrap_or(0);
        crate::usage::TokenUsage {
            input,
            output: self.output_tokens,
            total: self.total_tokens.unwrap_or(input + self.output_tokens),
            cached_input: cached,
            reasoning: 0,
        }
    }
}

// ---- stream events (one per eventstream message; `:event-type` names it) ----

#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    MessageStart(MessageStart),
    ContentBlockStart(ContentBlockStart),
    ContentBlockDelta(ContentBlockDelta),
    ContentBlockStop(ContentBlockStop),
    MessageStop(MessageStop),
    Metadata(Metadata),
    /// An event type this gateway does not know.
    Unknown,
}

impl StreamEvent {
    /// Parses an event's JSON payload by its `:event-type`.
    pub fn parse(event_type: &str, payload: &[u8]) -> Result<StreamEvent, serde_json::Error> {
        Ok(match event_type {
            "messageStart" => StreamEvent::MessageStart(serde_json::from_slice(payload)?),
            "contentBlockStart" => StreamEvent::ContentBlockStart(serde_json::from_slice(payload)?),
            "contentBlockDelta" => StreamEvent::ContentBlockDelta(serde_json::from_slice(payload)?),
            "contentBlockStop" => StreamEvent::ContentBlockStop(serde_json::from_slice(payload)?),
            "messageStop" => StreamEvent::MessageStop(serde_json::from_slice(payload)?),
            "metadata" => StreamEvent::Metadata(serde_json::from_slice(payload)?),
            _ => StreamEvent::Unknown,
        })
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct MessageStart {
    pub role: Role,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContentBlockStart {
    #[serde(default)]
    pub content_block_index: u32,
    #[serde(default)]
    pub start: BlockStart,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BlockStart {
    #[serde(default)]
    pub tool_use: Option<ToolUseStart>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ToolUseStart {
    pub tool_use_id: String,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContentBlockDelta {
    #[serde(default)]
    pub content_block_index: u32,
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

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ToolUseDelta {
    /// A piece of the tool input's JSON text.
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

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContentBlockStop {
    #[serde(default)]
    pub content_block_index: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MessageStop {
    #[serde(default)]
    pub stop_reason: Option<StopReason>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Metadata {
    #[serde(default)]
    pub usage: Option<TokenUsage>,
}

/// The body of a Bedrock error: an HTTP error body, or the payload of an exception message.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
pub struct ErrorBody {
    #[serde(default, alias = "Message")]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_serializes_as_bedrock_expects() {
        let r = ConverseRequest {
            messages: vec![Message {
                role: Role::User,
                content: vec![
                    ContentBlock::Text("hi".into()),
                    ContentBlock::Image(ImageBlock {
                        format: "png".into(),
                        source: BytesSource { bytes: "AAAA".into() },
                    }),
                ],
            }],
            system: vec![SystemBlock::Text("be brief".into())],
            inference_config: Some(InferenceConfig { max_tokens: Some(10), ..Default::default() }),
            tool_config: Some(ToolConfig {
                tools: vec![Tool::ToolSpec(ToolSpec {
                    name: "f".into(),
                    description: None,
                    input_schema: InputSchema::Json(serde_json::json!({"type":"object"})),
                })],
                tool_choice: Some(ToolChoice::Any(Empty {})),
            }),
            additional_model_request_fields: None,
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({
                "messages":[{"role":"user","content":[{"text":"hi"},{"image":{"format":"png","source":{"bytes":"AAAA"}}}]}],
                "system":[{"text":"be brief"}],
                "inferenceConfig":{"maxTokens":10},
                "toolConfig":{"tools":[{"toolSpec":{"name":"f","inputSchema":{"json":{"type":"object"}}}}],"toolChoice":{"any":{}}}
            })
        );
    }

    #[test]
    fn unknown_members_and_values_do_not_break_parsing() {
        let body = br#"{"output":{"message":{"role":"assistant","content":[
            {"text":"a"},{"guardContent":{"text":{"text":"x"}}},
            {"reasoningContent":{"reasoningText":{"text":"r","signature":"s"}}},
            {"toolUse":{"toolUseId":"t1","name":"f","input":{"q":1}}}]}},
          "stopReason":"some_future_reason","usage":{"inputTokens":3,"outputTokens":4,"totalTokens":7},
          "metrics":{"latencyMs":12},"trace":{}}"#;
        let r: ConverseResponse = serde_json::from_slice(body).unwrap();
        assert_eq!(r.stop_reason, Some(StopReason::Unknown));
        let content = r.output.message.unwrap().content;
        assert_eq!(content.len(), 4);
        assert_eq!(content[1], ContentBlock::Unknown);
        assert!(matches!(&content[3], ContentBlock::ToolUse(t) if t.tool_use_id == "t1"));
        let e =
            StreamEvent::parse("contentBlockDelta", br#"{"contentBlockIndex":2,"delta":{"citation":{}},"p":"abc"}"#)
                .unwrap();
        assert_eq!(
            e,
            StreamEvent::ContentBlockDelta(ContentBlockDelta { content_block_index: 2, delta: Delta::default() })
        );
        assert_eq!(StreamEvent::parse("brandNewEvent", b"not json").unwrap(), StreamEvent::Unknown);
        assert!(StreamEvent::parse("messageStop", b"not json").is_err());
    }

    #[test]
    fn usage_counts_cache_tokens_as_prompt_tokens() {
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
    }
}
