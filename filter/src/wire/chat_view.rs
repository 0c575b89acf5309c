//! A chat completion request as borrowed views over the client's bytes, for translators that
//! stream: scalars are parsed, text borrows from the body (`Cow` copies only strings with
//! escapes), and every array (`messages`, content parts, `tools`, `tool_calls`, `stop`) stays raw,
//! to be walked one element at a time with [`crate::json::each`]. Nothing here grows with the
//! number of elements, so a body of millions of tiny elements costs what one element costs.
//!
//! The structs are flat on purpose: serde's internally tagged enums buffer every field into a
//! generic tree first (copying strings, and refusing raw values), which is exactly the memory
//! amplification these views exist to avoid. Translators match on `role` / `type` themselves.
//!
//! Unknown members are skipped by serde; [`unknown_members`] names them so translators can say
//! what they did not forward.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Every top-level member these views know (the names translators decide on).
pub const KNOWN_MEMBERS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "reasoning_effort",
    "thinking",
    "n",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "user",
    "metadata",
    "store",
    "service_tier",
];

/// A chat completion request. Translators destructure it exhaustively, so a field added here forces
/// a decision in each of them.
#[derive(Debug, Deserialize)]
pub struct ChatRequestView<'a> {
    #[serde(borrow)]
    pub model: Cow<'a, str>,
    /// An array of [`MessageView`].
    #[serde(borrow)]
    pub messages: &'a RawValue,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    /// A string or an array of strings.
    #[serde(default, borrow)]
    pub stop: Option<&'a RawValue>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default, borrow)]
    pub stream_options: Option<&'a RawValue>,
    /// An array of [`ToolView`].
    #[serde(default, borrow)]
    pub tools: Option<&'a RawValue>,
    /// `"none" | "auto" | "required"` or `{"type":"function","function":{"name":...}}`.
    #[serde(default, borrow)]
    pub tool_choice: Option<&'a RawValue>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// Parse with [`crate::wire::openai::ResponseFormat`] (small).
    #[serde(default, borrow)]
    pub response_format: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub reasoning_effort: Option<Cow<'a, str>>,
    /// `{"type":"enabled","budget_tokens":N}` as some OpenAI-compatible servers accept.
    #[serde(default, borrow)]
    pub thinking: Option<&'a RawValue>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<u32>,
    #[serde(default, borrow)]
    pub logit_bias: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub user: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub metadata: Option<&'a RawValue>,
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub service_tier: Option<Cow<'a, str>>,
}

impl ChatRequestView<'_> {
    /// `max_completion_tokens` wins over the deprecated `max_tokens`.
    pub fn max_output_tokens(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }
}

/// One message; `role` decides which fields mean something.
#[derive(Debug, Deserialize)]
pub struct MessageView<'a> {
    #[serde(borrow)]
    pub role: Cow<'a, str>,
    /// A string, an array of [`ContentPartView`], or null (assistant messages with tool calls).
    #[serde(default, borrow)]
    pub content: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub name: Option<Cow<'a, str>>,
    /// Assistant: an array of [`ToolCallView`].
    #[serde(default, borrow)]
    pub tool_calls: Option<&'a RawValue>,
    /// Tool messages.
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub tool_call_id: Option<Cow<'a, str>>,
    /// Reasoning text some OpenAI-compatible servers return and accept back (vLLM, DeepSeek).
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub refusal: Option<Cow<'a, str>>,
    /// Anthropic-style prompt caching marker some OpenAI-compatible clients put on messages.
    #[serde(default, borrow)]
    pub cache_control: Option<&'a RawValue>,
}

/// Content of a message: its text, or its parts (still raw).
#[derive(Debug)]
pub enum ContentView<'a> {
    Text(Cow<'a, str>),
    Parts(&'a RawValue),
    Null,
}

impl<'a> ContentView<'a> {
    /// Classifies a raw `content` value; anything but a string, an array or null is an error.
    pub fn of(raw: Option<&'a RawValue>) -> Result<Self, String> {
        let Some(raw) = raw else { return Ok(ContentView::Null) };
        match raw.get().as_bytes().first() {
            Some(b'"') => crate::json::from_raw::<BorrowedText<'a>>(raw)
                .map(|t| ContentView::Text(t.0))
                .map_err(|e| format!("invalid content string: {e}")),
            Some(b'[') => Ok(ContentView::Parts(raw)),
            Some(b'n') => Ok(ContentView::Null),
            _ => Err("`content` must be a string or an array of content parts".into()),
        }
    }
}

/// A string that borrows when it has no escapes (serde's `Cow<str>` alone always copies).
#[derive(Deserialize)]
struct BorrowedText<'a>(#[serde(borrow)] Cow<'a, str>);

/// One content part; `kind` (`type`) decides which field is set.
#[derive(Debug, Deserialize)]
pub struct ContentPartView<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub image_url: Option<ImageUrlView<'a>>,
    #[serde(default, borrow)]
    pub input_audio: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub file: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub refusal: Option<Cow<'a, str>>,
    /// Prompt caching marker (`{"type":"ephemeral"}`), mapped where the provider has caching.
    #[serde(default, borrow)]
    pub cache_control: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
pub struct ImageUrlView<'a> {
    /// A `data:` URL (often megabytes of base64: borrowed, never copied) or a remote URL.
    #[serde(borrow)]
    pub url: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub detail: Option<Cow<'a, str>>,
}

impl ImageUrlView<'_> {
    /// Splits `data:image/png;base64,AAAA` into media type and data; any other URL is remote.
    pub fn parse(&self) -> Result<crate::wire::openai::Image<'_>, String> {
        crate::wire::openai::parse_image_url(&self.url)
    }
}

#[derive(Debug, Deserialize)]
pub struct ToolCallView<'a> {
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(rename = "type", default, borrow)]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub function: FunctionCallView<'a>,
}

#[derive(Debug, Deserialize)]
pub struct FunctionCallView<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// JSON text, as OpenAI sends it (a string that holds JSON).
    #[serde(default, borrow)]
    pub arguments: Cow<'a, str>,
}

#[derive(Debug, Deserialize)]
pub struct ToolView<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow)]
    pub function: Option<FunctionDefView<'a>>,
    #[serde(default, borrow)]
    pub cache_control: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
pub struct FunctionDefView<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub description: Option<Cow<'a, str>>,
    /// JSON Schema, forwarded byte for byte.
    #[serde(default, borrow)]
    pub parameters: Option<&'a RawValue>,
    #[serde(default)]
    pub strict: Option<bool>,
}

/// `Option<Cow<str>>` that borrows: serde's `borrow` does not reach through `Option` by itself.
pub fn opt_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Option::<Borrowed>::deserialize(d).map(|o| o.map(|b| b.0))
}

/// The top-level members of `body` that [`KNOWN_MEMBERS`] does not name (for a log line; bounded).
pub fn unknown_members(body: &[u8]) -> Vec<String> {
    crate::json::unknown_members(body, KNOWN_MEMBERS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::each;

    #[test]
    fn views_borrow_and_walk_without_collecting() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi","cache_control":{"type":"ephemeral"}},
            {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]},{"role":"assistant","content":null,
            "tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]}],
            "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"x_vendor":1}"#;
        let req: ChatRequestView = serde_json::from_slice(body).unwrap();
        assert_eq!(req.model, "m");
        let mut roles = Vec::new();
        each(req.messages, |m: MessageView| -> Result<(), String> {
            roles.push(m.role.to_string());
            if let ContentView::Parts(parts) = ContentView::of(m.content)? {
                each(parts, |p: ContentPartView| {
                    assert!(matches!(p.text, None | Some(Cow::Borrowed(_))));
                    if let Some(url) = &p.image_url {
                        assert!(matches!(url.url, Cow::Borrowed(_)));
                    }
                    Ok::<(), String>(())
                })
                .map_err(|_| "parts".to_string())?;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(roles, ["user", "assistant"]);
        each(req.tools.unwrap(), |t: ToolView| -> Result<(), ()> {
            assert_eq!(t.function.unwrap().parameters.unwrap().get(), r#"{"type":"object"}"#);
            Ok(())
        })
        .unwrap();
        assert_eq!(unknown_members(body), ["x_vendor"]);
    }
}
