//! Anthropic Messages API wire types: request, response and stream events. Unknown block types,
//! stop reasons and events parse as `Unknown` rather than failing.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::de::str_or_seq_enum;
use crate::json::{by_tag, tagged_body};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct MessagesRequest {
    /// Absent in the AWS and GCP bodies, where the model is in the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Required by Anthropic; optional here so a missing one is answered with a clear error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<System>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_sequences: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<Thinking>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// `bedrock-2023-05-31` / `vertex-2023-10-16` in AWS and GCP bodies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anthropic_version: Option<String>,
    /// Fields no translator knows (newer API features); kept when the body passes through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum System {
    Text(String),
    Blocks(Vec<TextBlock>),
}

str_or_seq_enum!(System, Text, Blocks, TextBlock, "a string or an array of text blocks");

impl System {
    pub fn text(&self) -> String {
        match self {
            System::Text(t) => t.clone(),
            System::Blocks(blocks) => blocks.iter().map(|b| b.text.as_str()).collect::<Vec<_>>().join("\n"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TextBlock {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: MessageContent,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Blocks(Vec<ContentBlock>),
}

str_or_seq_enum!(MessageContent, Text, Blocks, ContentBlock, "a string or an array of content blocks");

impl MessageContent {
    pub fn into_blocks(self) -> Vec<ContentBlock> {
        match self {
            MessageContent::Text(text) => vec![ContentBlock::Text { text, cache_control: None }],
            MessageContent::Blocks(blocks) => blocks,
        }
    }
}

/// `Deserialize` by hand, below: the derive costs the .wasm (see [`crate::json::by_tag`]).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    Text {
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<Value>,
    },
    Image {
        source: ImageSource,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<ToolResultContent>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        is_error: Option<bool>,
    },
    Thinking {
        thinking: String,
        #[serde(default)]
        signature: String,
    },
    RedactedThinking {
        data: String,
    },
    #[serde(other)]
    Unknown,
}

/// `Deserialize` by hand, below: the derive costs the .wasm (see [`crate::json::by_tag`]).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ImageSource {
    Base64 {
        media_type: String,
        data: String,
    },
    Url {
        url: String,
    },
    #[serde(other)]
    Unknown,
}

impl<'de> Deserialize<'de> for ContentBlock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "snake_case", expecting = "variant identifier")]
        enum Kind {
            Text,
            Image,
            ToolUse,
            ToolResult,
            Thinking,
            RedactedThinking,
            #[serde(other)]
            Unknown,
        }
        #[derive(Deserialize)]
        struct Text {
            text: String,
            #[serde(default)]
            cache_control: Option<Value>,
        }
        #[derive(Deserialize)]
        struct Image {
            source: ImageSource,
        }
        #[derive(Deserialize)]
        struct ToolUse {
            id: String,
            name: String,
            input: Value,
        }
        #[derive(Deserialize)]
        struct ToolResult {
            tool_use_id: String,
            #[serde(default)]
            content: Option<ToolResultContent>,
            #[serde(default)]
            is_error: Option<bool>,
        }
        #[derive(Deserialize)]
        struct Thinking {
            thinking: String,
            #[serde(default)]
            signature: String,
        }
        #[derive(Deserialize)]
        struct RedactedThinking {
            data: String,
        }
        by_tag(d, "type", "internally tagged enum ContentBlock", |kind, text| {
            Ok(match kind {
                Kind::Text => {
                    let Text { text, cache_control } = tagged_body(text)?;
                    ContentBlock::Text { text, cache_control }
                }
                Kind::Image => {
                    let Image { source } = tagged_body(text)?;
                    ContentBlock::Image { source }
                }
                Kind::ToolUse => {
                    let ToolUse { id, name, input } = tagged_body(text)?;
                    ContentBlock::ToolUse { id, name, input }
                }
                Kind::ToolResult => {
                    let ToolResult { tool_use_id, content, is_error } = tagged_body(text)?;
                    ContentBlock::ToolResult { tool_use_id, content, is_error }
                }
                Kind::Thinking => {
                    let Thinking { thinking, signature } = tagged_body(text)?;
                    ContentBlock::Thinking { thinking, signature }
                }
                Kind::RedactedThinking => {
                    let RedactedThinking { data } = tagged_body(text)?;
                    ContentBlock::RedactedThinking { data }
                }
                Kind::Unknown => ContentBlock::Unknown,
            })
        })
    }
}

impl<'de> Deserialize<'de> for ImageSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "snake_case", expecting = "variant identifier")]
        enum Kind {
            Base64,
            Url,
            #[serde(other)]
            Unknown,
        }
        #[derive(Deserialize)]
        struct Base64 {
            media_type: String,
            data: String,
        }
        #[derive(Deserialize)]
        struct Url {
            url: String,
        }
        by_tag(d, "type", "internally tagged enum ImageSource", |kind, text| {
            Ok(match kind {
                Kind::Base64 => {
                    let Base64 { media_type, data } = tagged_body(text)?;
                    ImageSource::Base64 { media_type, data }
                }
                Kind::Url => {
                    let Url { url } = tagged_body(text)?;
                    ImageSource::Url { url }
                }
                Kind::Unknown => ImageSource::Unknown,
            })
        })
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum ToolResultContent {
    Text(String),
    Blocks(Vec<ContentBlock>),
}

str_or_seq_enum!(ToolResultContent, Text, Blocks, ContentBlock, "a string or an array of content blocks");

impl ToolResultContent {
    pub fn text(&self) -> String {
        match self {
            ToolResultContent::Text(t) => t.clone(),
            ToolResultContent::Blocks(blocks) => blocks
                .iter()
                .filter_map(|b| match b {
                    ContentBlock::Text { text, .. } => Some(text.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tool {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default = "empty_object_schema")]
    pub input_schema: Value,
}

pub fn empty_object_schema() -> Value {
    serde_json::json!({"type": "object", "properties": {}})
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolChoice {
    Auto {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    Any {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    Tool {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Thinking {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

// ---- responses ----

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MessagesResponse {
    /// Every field may be missing (liberal in what we accept from providers).
    #[serde(default)]
    pub id: String,
    #[serde(rename = "type", default = "message_type")]
    pub kind: String,
    #[serde(default = "assistant_role")]
    pub role: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub content: Vec<ContentBlock>,
    #[serde(default)]
    pub stop_reason: Option<StopReason>,
    #[serde(default)]
    pub stop_sequence: Option<String>,
    #[serde(default)]
    pub usage: Usage,
}

fn message_type() -> String {
    "message".into()
}

fn assistant_role() -> String {
    "assistant".into()
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    EndTurn,
    MaxTokens,
    StopSequence,
    ToolUse,
    PauseTurn,
    Refusal,
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Usage {
    #[serde(default, deserialize_with = "count")]
    pub input_tokens: u64,
    #[serde(default, deserialize_with = "count")]
    pub output_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input_tokens: Option<u64>,
}

/// A token count where `null` means 0.
fn count<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(Option::<u64>::deserialize(d)?.unwrap_or(0))
}

impl Usage {
    /// OpenAI counts every prompt token in `prompt_tokens`, cached ones included.
    pub fn to_tokens(self) -> crate::usage::TokenUsage {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        let input =
            self.input_tokens.saturating_add(cached).saturating_add(self.cache_creation_input_tokens.unwrap_or(0));
        crate::usage::TokenUsage {
            input,
            output: self.output_tokens,
            total: input.saturating_add(self.output_tokens),
            cached_input: cached,
            reasoning: 0,
        }
    }
}

// ---- stream events ----

/// `Deserialize` by hand, below: the derive costs the .wasm (see [`crate::json::by_tag`]).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    MessageStart {
        message: MessagesResponse,
    },
    ContentBlockStart {
        #[serde(default)]
        index: u32,
        content_block: ContentBlock,
    },
    ContentBlockDelta {
        #[serde(default)]
        index: u32,
        delta: BlockDelta,
    },
    ContentBlockStop {
        #[serde(default)]
        index: u32,
    },
    MessageDelta {
        delta: MessageDelta,
        #[serde(default)]
        usage: Option<DeltaUsage>,
    },
    MessageStop,
    Ping,
    Error {
        error: ErrorBody,
    },
    #[serde(other)]
    Unknown,
}

/// `Deserialize` by hand, below: the derive costs the .wasm (see [`crate::json::by_tag`]).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    ThinkingDelta {
        thinking: String,
    },
    SignatureDelta {
        signature: String,
    },
    #[serde(other)]
    Unknown,
}

impl<'de> Deserialize<'de> for StreamEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "snake_case", expecting = "variant identifier")]
        enum Kind {
            MessageStart,
            ContentBlockStart,
            ContentBlockDelta,
            ContentBlockStop,
            MessageDelta,
            MessageStop,
            Ping,
            Error,
            #[serde(other)]
            Unknown,
        }
        #[derive(Deserialize)]
        struct MessageStart {
            message: MessagesResponse,
        }
        #[derive(Deserialize)]
        struct ContentBlockStart {
            #[serde(default)]
            index: u32,
            content_block: ContentBlock,
        }
        #[derive(Deserialize)]
        struct ContentBlockDelta {
            #[serde(default)]
            index: u32,
            delta: BlockDelta,
        }
        #[derive(Deserialize)]
        struct ContentBlockStop {
            #[serde(default)]
            index: u32,
        }
        #[derive(Deserialize)]
        struct MessageDeltaEvent {
            delta: MessageDelta,
            #[serde(default)]
            usage: Option<DeltaUsage>,
        }
        #[derive(Deserialize)]
        struct Error {
            error: ErrorBody,
        }
        by_tag(d, "type", "internally tagged enum StreamEvent", |kind, text| {
            Ok(match kind {
                Kind::MessageStart => {
                    let MessageStart { message } = tagged_body(text)?;
                    StreamEvent::MessageStart { message }
                }
                Kind::ContentBlockStart => {
                    let ContentBlockStart { index, content_block } = tagged_body(text)?;
                    StreamEvent::ContentBlockStart { index, content_block }
                }
                Kind::ContentBlockDelta => {
                    let ContentBlockDelta { index, delta } = tagged_body(text)?;
                    StreamEvent::ContentBlockDelta { index, delta }
                }
                Kind::ContentBlockStop => {
                    let ContentBlockStop { index } = tagged_body(text)?;
                    StreamEvent::ContentBlockStop { index }
                }
                Kind::MessageDelta => {
                    let MessageDeltaEvent { delta, usage } = tagged_body(text)?;
                    StreamEvent::MessageDelta { delta, usage }
                }
                Kind::MessageStop => StreamEvent::MessageStop,
                Kind::Ping => StreamEvent::Ping,
                Kind::Error => {
                    let Error { error } = tagged_body(text)?;
                    StreamEvent::Error { error }
                }
                Kind::Unknown => StreamEvent::Unknown,
            })
        })
    }
}

impl<'de> Deserialize<'de> for BlockDelta {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "snake_case", expecting = "variant identifier")]
        enum Kind {
            TextDelta,
            InputJsonDelta,
            ThinkingDelta,
            SignatureDelta,
            #[serde(other)]
            Unknown,
        }
        #[derive(Deserialize)]
        struct TextDelta {
            text: String,
        }
        #[derive(Deserialize)]
        struct InputJsonDelta {
            partial_json: String,
        }
        #[derive(Deserialize)]
        struct ThinkingDelta {
            thinking: String,
        }
        #[derive(Deserialize)]
        struct SignatureDelta {
            signature: String,
        }
        by_tag(d, "type", "internally tagged enum BlockDelta", |kind, text| {
            Ok(match kind {
                Kind::TextDelta => BlockDelta::TextDelta { text: tagged_body::<TextDelta>(text)?.text },
                Kind::InputJsonDelta => {
                    BlockDelta::InputJsonDelta { partial_json: tagged_body::<InputJsonDelta>(text)?.partial_json }
                }
                Kind::ThinkingDelta => {
                    BlockDelta::ThinkingDelta { thinking: tagged_body::<ThinkingDelta>(text)?.thinking }
                }
                Kind::SignatureDelta => {
                    BlockDelta::SignatureDelta { signature: tagged_body::<SignatureDelta>(text)?.signature }
                }
                Kind::Unknown => BlockDelta::Unknown,
            })
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct MessageDelta {
    #[serde(default)]
    pub stop_reason: Option<StopReason>,
    #[serde(default)]
    pub stop_sequence: Option<String>,
}

/// `message_delta` usage: cumulative output tokens (and, on some platforms, input counts).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct DeltaUsage {
    #[serde(default, deserialize_with = "count")]
    pub output_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input_tokens: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub message: String,
}

/// Anthropic's error envelope, `{"type":"error","error":{...}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

impl StreamEvent {
    /// The SSE `event:` name Anthropic uses for this event.
    pub fn name(&self) -> &'static str {
        match self {
            StreamEvent::MessageStart { .. } => "message_start",
            StreamEvent::ContentBlockStart { .. } => "content_block_start",
            StreamEvent::ContentBlockDelta { .. } => "content_block_delta",
            StreamEvent::ContentBlockStop { .. } => "content_block_stop",
            StreamEvent::MessageDelta { .. } => "message_delta",
            StreamEvent::MessageStop => "message_stop",
            StreamEvent::Ping => "ping",
            StreamEvent::Error { .. } => "error",
            StreamEvent::Unknown => "unknown",
        }
    }
}

// ---- borrowed views of answers (translators that turn them into another API) ----

/// A Messages response as a borrowed view: every member optional, `content` left raw to walk with
/// [`crate::json::each`], text left as raw JSON string literals (copied to the output as they are).
#[derive(Debug, Deserialize)]
pub struct ResponseView<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "opt_cow")]
    pub kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub model: Option<&'a RawValue>,
    /// An array of [`BlockView`].
    #[serde(default, borrow)]
    pub content: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "lenient")]
    pub stop_reason: Option<StopReason>,
    #[serde(default, deserialize_with = "lenient")]
    pub usage: Option<Usage>,
    /// Set when a 200 carries an error envelope.
    #[serde(default, borrow)]
    pub error: Option<&'a RawValue>,
}

/// One content block (of a response, or a stream's `content_block`): `kind` says which members
/// mean something. Strings are raw JSON literals.
#[derive(Debug, Deserialize)]
pub struct BlockView<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "opt_cow")]
    pub kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub text: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub thinking: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub name: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub input: Option<&'a RawValue>,
    /// A thinking block's signature.
    #[serde(default, borrow)]
    pub signature: Option<&'a RawValue>,
}

/// One stream event, flat: `kind` says which members mean something; every member may be missing
/// (`message_start` without `content` or `usage`, `content_block_start` without `index`, ...).
#[derive(Debug, Deserialize)]
pub struct EventView<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "opt_cow")]
    pub kind: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "lenient")]
    pub message: Option<EventMessageView<'a>>,
    #[serde(default, deserialize_with = "lenient")]
    pub index: Option<u32>,
    #[serde(default, borrow, deserialize_with = "lenient")]
    pub content_block: Option<BlockView<'a>>,
    #[serde(default, borrow, deserialize_with = "lenient")]
    pub delta: Option<DeltaView<'a>>,
    #[serde(default, deserialize_with = "lenient")]
    pub usage: Option<DeltaUsage>,
    #[serde(default, deserialize_with = "lenient")]
    pub error: Option<ErrorBody>,
}

/// `message_start`'s `message`.
#[derive(Debug, Deserialize)]
pub struct EventMessageView<'a> {
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    pub id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    pub model: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "lenient")]
    pub usage: Option<Usage>,
}

/// A `content_block_delta`'s or `message_delta`'s `delta`, flat.
#[derive(Debug, Deserialize)]
pub struct DeltaView<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "opt_cow")]
    pub kind: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    pub text: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    pub partial_json: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    pub thinking: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    pub signature: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "lenient")]
    pub stop_reason: Option<StopReason>,
}

/// `Option<Cow<str>>` that borrows (serde's `borrow` does not reach through `Option`); a value of
/// another type counts as absent.
fn opt_cow<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    let raw: Option<&'de RawValue> = Option::deserialize(d)?;
    Ok(raw.and_then(|r| crate::json::from_text::<Borrowed<'de>>(r.get()).ok()).map(|b| b.0))
}

/// An optional member whose value, when it has an unexpected shape, counts as absent.
fn lenient<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    let raw: Option<&'de RawValue> = Option::deserialize(d)?;
    Ok(raw.and_then(|r| crate::json::from_text::<T>(r.get()).ok()))
}

/// Writes one Anthropic SSE event: `event: NAME\ndata: JSON\n\n`.
pub fn write_event(out: &mut Vec<u8>, event: &StreamEvent) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.name().as_bytes());
    out.extend_from_slice(b"\ndata: ");
    if serde_json::to_writer(&mut *out, event).is_err() {
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_values_do_not_break_parsing() {
        let r: MessagesResponse = serde_json::from_str(
            r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[{"type":"text","text":"hi"},{"type":"server_tool_use_v9","x":1}],
               "stop_reason":"a_new_reason","usage":{"input_tokens":3,"output_tokens":1,"cache_read_input_tokens":2}}"#,
        )
        .unwrap();
        assert_eq!(r.content[1], ContentBlock::Unknown);
        assert_eq!(r.stop_reason, Some(StopReason::Unknown));
        assert_eq!(r.usage.to_tokens().input, 5);
        let e: StreamEvent = serde_json::from_str(r#"{"type":"brand_new_event","x":1}"#).unwrap();
        assert_eq!(e, StreamEvent::Unknown);
    }

    #[test]
    fn writes_sse_events() {
        let mut out = Vec::new();
        write_event(&mut out, &StreamEvent::MessageStop);
        assert_eq!(out, b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    }
}
