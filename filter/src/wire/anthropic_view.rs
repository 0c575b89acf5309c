//! An Anthropic Messages request as borrowed views over the client's bytes, for translators that
//! stream (Anthropic client → OpenAI-compatible backends). Scalars are parsed; every string a
//! translator forwards stays a raw JSON string literal ([`RawStr`]: valid JSON as it came, escapes
//! included, so it is written out without decoding or copying); every array (`messages`, content
//! blocks, `tools`, `stop_sequences`) and pass-through object (`input`, `input_schema`) stays a
//! `&RawValue`, walked one element at a time with [`crate::json::each`]. Nothing here grows with
//! the number of elements.
//!
//! The structs are flat on purpose (no internally tagged enums: they buffer whole values into
//! serde's content tree). Translators match on `role` / `type` themselves.

use std::borrow::Cow;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::chat_view::opt_text;

/// Every top-level member [`MessagesRequestView`] knows.
pub const KNOWN_MEMBERS: &[&str] = &[
    "model",
    "max_tokens",
    "messages",
    "system",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "stream",
    "tools",
    "tool_choice",
    "thinking",
    "metadata",
    "anthropic_version",
    "service_tier",
    "container",
    "mcp_servers",
    "context_management",
    "output_config",
    "output_format",
];

/// A JSON string literal as it appears in the body, quotes and escapes included. Writing it out
/// is a byte copy; [`RawStr::inner`] is its escaped content (for joining strings).
#[derive(Debug, Clone, Copy)]
pub struct RawStr<'a>(pub &'a RawValue);

impl<'a> RawStr<'a> {
    /// The literal, quotes included: valid JSON.
    pub fn json(&self) -> &'a str {
        self.0.get()
    }

    /// Between the quotes, still escaped (valid inside any JSON string).
    pub fn inner(&self) -> &'a str {
        let s = self.0.get();
        s.get(1..s.len().saturating_sub(1)).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.inner().is_empty()
    }

    /// The decoded text (copies only when it has escapes: use for short values).
    pub fn text(&self) -> Cow<'a, str> {
        crate::json::from_raw::<Cow<'a, str>>(self.0).unwrap_or(Cow::Borrowed(""))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <&'de RawValue>::deserialize(d)?;
        if raw.get().starts_with('"') {
            Ok(RawStr(raw))
        } else {
            Err(de::Error::invalid_type(de::Unexpected::Other(raw_kind(raw)), &"a string"))
        }
    }
}

fn raw_kind(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// A Messages request. Translators destructure it exhaustively, so a field added here forces a
/// decision in each of them.
#[derive(Debug, Deserialize)]
pub struct MessagesRequestView<'a> {
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub model: Option<Cow<'a, str>>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// An array of [`MessageView`].
    #[serde(borrow)]
    pub messages: &'a RawValue,
    /// A string, or an array of [`BlockView`] (text blocks).
    #[serde(default, borrow)]
    pub system: Option<&'a RawValue>,
    /// An array of strings.
    #[serde(default, borrow)]
    pub stop_sequences: Option<&'a RawValue>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<u32>,
    #[serde(default)]
    pub stream: Option<bool>,
    /// An array of [`ToolView`].
    #[serde(default, borrow)]
    pub tools: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub tool_choice: Option<ToolChoiceView<'a>>,
    #[serde(default, borrow)]
    pub thinking: Option<ThinkingView<'a>>,
    #[serde(default, borrow)]
    pub metadata: Option<MetadataView<'a>>,
    /// `bedrock-2023-05-31` / `vertex-2023-10-16` in AWS and GCP bodies.
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub anthropic_version: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub service_tier: Option<Cow<'a, str>>,
    /// Code execution container id (server tools).
    #[serde(default, borrow)]
    pub container: Option<&'a RawValue>,
    /// Remote MCP servers Anthropic calls itself (a server tool).
    #[serde(default, borrow)]
    pub mcp_servers: Option<&'a RawValue>,
    /// Anthropic-side context editing.
    #[serde(default, borrow)]
    pub context_management: Option<&'a RawValue>,
    /// `effort` (how hard to think, also with adaptive thinking) and `format` (structured output).
    #[serde(default, borrow)]
    pub output_config: Option<OutputConfigView<'a>>,
    /// The structured-output beta's name for `output_config.format`.
    #[serde(default, borrow)]
    pub output_format: Option<OutputFormatView<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct OutputConfigView<'a> {
    /// `low`, `medium`, `high` or `max`.
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub effort: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub format: Option<OutputFormatView<'a>>,
}

/// `{"type":"json_schema","schema":{...}}`.
#[derive(Debug, Deserialize)]
pub struct OutputFormatView<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// JSON Schema, forwarded byte for byte.
    #[serde(default, borrow)]
    pub schema: Option<&'a RawValue>,
}

/// One message; `content` is a string or an array of [`BlockView`].
#[derive(Debug, Deserialize)]
pub struct MessageView<'a> {
    #[serde(borrow)]
    pub role: Cow<'a, str>,
    #[serde(borrow)]
    pub content: &'a RawValue,
}

/// Content of a message, a system prompt or a tool result: a string or blocks (still raw).
#[derive(Debug, Clone, Copy)]
pub enum ContentView<'a> {
    Text(RawStr<'a>),
    Blocks(&'a RawValue),
}

impl<'a> ContentView<'a> {
    /// Classifies a raw value; anything but a string or an array is an error naming `what`.
    pub fn of(raw: &'a RawValue, what: &str) -> Result<Self, String> {
        match raw.get().as_bytes().first() {
            Some(b'"') => Ok(ContentView::Text(RawStr(raw))),
            Some(b'[') => Ok(ContentView::Blocks(raw)),
            _ => Err(format!("{what} must be a string or an array of content blocks, not {}", raw_kind(raw))),
        }
    }
}

/// One content block; `kind` (`type`) decides which fields mean something. Fields of the block
/// types OpenAI chat has no place for (documents, citations, server tool results) are not read:
/// those blocks are refused by type.
#[derive(Debug, Deserialize)]
pub struct BlockView<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// `text`.
    #[serde(default, borrow)]
    pub text: Option<RawStr<'a>>,
    /// `image` (and `document`): an object for images, read with [`ImageSourceView`].
    #[serde(default, borrow)]
    pub source: Option<&'a RawValue>,
    /// `tool_use`.
    #[serde(default, borrow)]
    pub id: Option<RawStr<'a>>,
    #[serde(default, borrow)]
    pub name: Option<RawStr<'a>>,
    /// `tool_use`: the arguments object, forwarded byte for byte (minified into a string).
    #[serde(default, borrow)]
    pub input: Option<&'a RawValue>,
    /// `tool_result`.
    #[serde(default, borrow)]
    pub tool_use_id: Option<RawStr<'a>>,
    /// `tool_result`: a string or an array of blocks.
    #[serde(default, borrow)]
    pub content: Option<&'a RawValue>,
    #[serde(default)]
    pub is_error: Option<bool>,
    /// Prompt caching marker; OpenAI chat has no equivalent.
    #[serde(default, borrow)]
    pub cache_control: Option<&'a RawValue>,
    /// `text` blocks replayed from a response with citations.
    #[serde(default, borrow)]
    pub citations: Option<&'a RawValue>,
}

/// An image's `source`: `base64` (`media_type`, `data`), `url` (`url`) or `file` (`file_id`).
#[derive(Debug, Deserialize)]
pub struct ImageSourceView<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow)]
    pub media_type: Option<RawStr<'a>>,
    /// Base64, often megabytes: borrowed, never copied.
    #[serde(default, borrow)]
    pub data: Option<RawStr<'a>>,
    #[serde(default, borrow)]
    pub url: Option<RawStr<'a>>,
}

/// A tool: a client tool (`type` absent or `custom`) with a JSON Schema, or a server /
/// Anthropic-defined tool (`web_search_20250305`, `bash_20250124`, ...), known by its `type`.
#[derive(Debug, Deserialize)]
pub struct ToolView<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "opt_text")]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub name: RawStr<'a>,
    #[serde(default, borrow)]
    pub description: Option<RawStr<'a>>,
    /// JSON Schema, forwarded byte for byte.
    #[serde(default, borrow)]
    pub input_schema: Option<&'a RawValue>,
    #[serde(default)]
    pub strict: Option<bool>,
    #[serde(default, borrow)]
    pub cache_control: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
pub struct ToolChoiceView<'a> {
    /// `auto`, `any`, `tool` or `none`.
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow)]
    pub name: Option<RawStr<'a>>,
    #[serde(default)]
    pub disable_parallel_tool_use: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct ThinkingView<'a> {
    /// `enabled`, `adaptive` or `disabled`.
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default)]
    pub budget_tokens: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub struct MetadataView<'a> {
    #[serde(default, borrow)]
    pub user_id: Option<RawStr<'a>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::each;

    #[test]
    fn views_borrow_and_walk_without_collecting() {
        let body = br#"{"model":"m","max_tokens":5,"system":[{"type":"text","text":"s\n","cache_control":{"type":"ephemeral"}}],
            "messages":[{"role":"user","content":[{"type":"text","text":"hi"},
              {"type":"image","source":{"type":"base64","media_type":"image/png","data":"AAAA"}}]},
              {"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"f","input":{"a":[1, 2]}}]}],
            "tools":[{"name":"f","input_schema":{"type":"object"}},{"type":"web_search_20250305","name":"web_search"}],
            "tool_choice":{"type":"tool","name":"f"},"x_vendor":[1,2],"y":{}}"#;
        let req: MessagesRequestView = serde_json::from_slice(body).unwrap();
        assert_eq!(req.model.as_deref(), Some("m"));
        let mut kinds = Vec::new();
        each(req.messages, |m: MessageView| -> Result<(), String> {
            let ContentView::Blocks(blocks) = ContentView::of(m.content, "content")? else { panic!() };
            each(blocks, |b: BlockView| {
                kinds.push(b.kind.to_string());
                if let Some(input) = b.input {
                    assert_eq!(input.get(), "{\"a\":[1, 2]}");
                }
                if let Some(source) = b.source {
                    let s: ImageSourceView = crate::json::from_raw(source).unwrap();
                    assert_eq!(s.data.unwrap().json(), "\"AAAA\"");
                }
                Ok::<(), String>(())
            })
            .map_err(|_| "blocks".to_string())
        })
        .unwrap();
        assert_eq!(kinds, ["text", "image", "tool_use"]);
        let ContentView::Blocks(system) = ContentView::of(req.system.unwrap(), "system").unwrap() else { panic!() };
        each(system, |b: BlockView| -> Result<(), ()> {
            assert_eq!(b.text.unwrap().inner(), "s\\n");
            assert_eq!(b.text.unwrap().text(), "s\n");
            Ok(())
        })
        .unwrap();
        assert_eq!(crate::json::unknown_members(body, KNOWN_MEMBERS), ["x_vendor", "y"]);
        assert!(serde_json::from_str::<MessagesRequestView>(r#"{"messages":[],"metadata":{"user_id":5}}"#).is_err());
        assert!(
            matches!(ContentView::of(serde_json::from_str("5").unwrap(), "content"), Err(e) if e.contains("a number"))
        );
    }
}
