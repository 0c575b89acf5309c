//! OpenAI Responses API (`POST /v1/responses`) wire types: the request as borrowed views over the
//! client's bytes (arrays stay raw, walked one element at a time like [`super::chat_view`]), and
//! the pieces of the answer the gateway writes (output items, usage, stream events). Field names
//! follow the `openai` SDK's `types/responses/` models.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::chat_view::opt_text;

/// Every top-level request member the translators decide on (others are named in a log line).
pub const KNOWN_MEMBERS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "max_output_tokens",
    "temperature",
    "top_p",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "reasoning",
    "text",
    "previous_response_id",
    "conversation",
    "store",
    "background",
    "include",
    "prompt",
    "metadata",
    "user",
    "safety_identifier",
    "top_logprobs",
    "max_tool_calls",
    "truncation",
    "service_tier",
    "prompt_cache_key",
    "prompt_cache_retention",
];

/// A Responses request. Translators destructure it exhaustively, so a field added here forces a
/// decision in each of them.
#[derive(Debug, Deserialize)]
pub struct ResponsesRequestView<'a> {
    #[serde(borrow)]
    pub model: Cow<'a, str>,
    /// A string, or an array of [`InputItemView`].
    #[serde(default, borrow)]
    pub input: Option<&'a RawValue>,
    /// A string (the system prompt).
    #[serde(default, borrow)]
    pub instructions: Option<&'a RawValue>,
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default, borrow)]
    pub stream_options: Option<&'a RawValue>,
    /// An array of [`ToolView`].
    #[serde(default, borrow)]
    pub tools: Option<&'a RawValue>,
    /// `"none" | "auto" | "required"` or `{"type":"function","name":...}` (or a built-in tool's).
    #[serde(default, borrow)]
    pub tool_choice: Option<&'a RawValue>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub reasoning: Option<ReasoningView<'a>>,
    #[serde(default, borrow)]
    pub text: Option<TextView<'a>>,
    #[serde(default, borrow)]
    pub previous_response_id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub conversation: Option<&'a RawValue>,
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub background: Option<bool>,
    /// An array of strings.
    #[serde(default, borrow)]
    pub include: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub prompt: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub metadata: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub user: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub safety_identifier: Option<Cow<'a, str>>,
    #[serde(default)]
    pub top_logprobs: Option<u32>,
    #[serde(default)]
    pub max_tool_calls: Option<u32>,
    #[serde(default, borrow)]
    pub truncation: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub service_tier: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub prompt_cache_key: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub prompt_cache_retention: Option<&'a RawValue>,
}

/// `reasoning`: `effort` is what a backend can act on; `summary` is always honoured as "auto".
#[derive(Debug, Deserialize)]
pub struct ReasoningView<'a> {
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub effort: Option<Cow<'a, str>>,
}

/// `text`: the output format (`{"type":"text"}`, `json_schema`, `json_object`).
#[derive(Debug, Deserialize)]
pub struct TextView<'a> {
    #[serde(default, borrow)]
    pub format: Option<TypeView<'a>>,
}

/// Any object read only for its `type`.
#[derive(Debug, Deserialize)]
pub struct TypeView<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
}

/// One input item, flat: `type` (absent on an "easy" message) says which members mean something.
/// Strings stay raw JSON literals, copied to the backend's body as they came.
#[derive(Debug, Deserialize)]
pub struct InputItemView<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "opt_text")]
    pub kind: Option<Cow<'a, str>>,
    /// Messages.
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub role: Option<Cow<'a, str>>,
    /// Messages: a string or an array of [`InputPartView`].
    #[serde(default, borrow)]
    pub content: Option<&'a RawValue>,
    /// `function_call` and `function_call_output`.
    #[serde(default, borrow)]
    pub call_id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub name: Option<&'a RawValue>,
    /// A string holding JSON.
    #[serde(default, borrow)]
    pub arguments: Option<&'a RawValue>,
    /// `function_call_output`: a string or an array of [`InputPartView`].
    #[serde(default, borrow)]
    pub output: Option<&'a RawValue>,
    /// `reasoning`: an array of `{"type":"summary_text","text":...}`.
    #[serde(default, borrow)]
    pub summary: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub encrypted_content: Option<&'a RawValue>,
}

/// One content part of an input message or a function call output.
#[derive(Debug, Deserialize)]
pub struct InputPartView<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow)]
    pub text: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub refusal: Option<&'a RawValue>,
    /// `input_image`: a `data:` URL or an http(s) URL.
    #[serde(default, borrow)]
    pub image_url: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub file_id: Option<&'a RawValue>,
    /// `input_file`: base64 data (a `data:` URL or bare).
    #[serde(default, borrow)]
    pub file_data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub file_url: Option<&'a RawValue>,
}

/// `reasoning.summary[]` and `text` parts read back from a client.
#[derive(Debug, Deserialize)]
pub struct SummaryView<'a> {
    #[serde(borrow)]
    pub text: &'a RawValue,
}

/// One tool: only `function` tools are flat `{type, name, description, parameters, strict}`.
#[derive(Debug, Deserialize)]
pub struct ToolView<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow)]
    pub name: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub description: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub parameters: Option<&'a RawValue>,
}

/// `tool_choice` as an object.
#[derive(Debug, Deserialize)]
pub struct ToolChoiceView<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub name: Option<Cow<'a, str>>,
}

// ---- the answer ----

/// `usage` of a response.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
pub struct Usage {
    pub input_tokens: u64,
    pub input_tokens_details: InputTokensDetails,
    pub output_tokens: u64,
    pub output_tokens_details: OutputTokensDetails,
    pub total_tokens: u64,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
pub struct InputTokensDetails {
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
pub struct OutputTokensDetails {
    pub reasoning_tokens: u64,
}

/// One output item.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem<'a> {
    Message {
        id: &'a str,
        status: &'a str,
        role: &'static str,
        content: Vec<Part<'a>>,
    },
    Reasoning {
        id: &'a str,
        summary: Vec<Part<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        encrypted_content: Option<&'a str>,
    },
    FunctionCall {
        id: &'a str,
        status: &'a str,
        arguments: &'a str,
        call_id: &'a str,
        name: &'a str,
    },
}

/// A content part (`output_text`) or a reasoning summary part (`summary_text`).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part<'a> {
    OutputText { annotations: [(); 0], logprobs: [(); 0], text: &'a str },
    SummaryText { text: &'a str },
}

/// One stream event: `type` and `sequence_number`, then the members its type has.
#[derive(Debug, Serialize, Default)]
pub struct StreamEvent<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub sequence_number: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary_index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<OutputItem<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part: Option<Part<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<&'a str>,
    /// Text deltas and dones carry an empty `logprobs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<[(); 0]>,
    /// `error` events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a str>,
}

/// Writes one event as SSE: `event: TYPE\ndata: JSON\n\n`.
pub fn write_event(out: &mut Vec<u8>, event: &StreamEvent) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.kind.as_bytes());
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
    fn parts_and_items_serialize_as_the_sdk_names_them() {
        let item = OutputItem::Message {
            id: "msg_1",
            status: "completed",
            role: "assistant",
            content: vec![Part::OutputText { annotations: [], logprobs: [], text: "hi" }],
        };
        assert_eq!(
            serde_json::to_value(&item).unwrap(),
            serde_json::json!({"type":"message","id":"msg_1","status":"completed","role":"assistant",
                "content":[{"type":"output_text","annotations":[],"logprobs":[],"text":"hi"}]})
        );
        let view: ResponsesRequestView =
            serde_json::from_str(r#"{"model":"m","previous_response_id":null,"reasoning":{"effort":"low"}}"#).unwrap();
        assert!(view.previous_response_id.is_none());
        assert_eq!(view.reasoning.unwrap().effort.as_deref(), Some("low"));
    }
}
