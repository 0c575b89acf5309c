//! OpenAI chat request → Anthropic Messages body, written while the client's body is walked: one
//! message, part, tool call or tool at a time, straight into a [`ChunkedBody`]. Text, image data,
//! schemas and ids are copied as the raw JSON the client sent (no decoding, no owned copies); tool
//! call arguments are decoded as a stream. `messages` is walked twice (system blocks first, then
//! the turns), so nothing is held between elements.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::jsontext::{check_json_inside, decodes_to_blank, string_body, unescape_small, write_decoded};
use crate::body::{BodyWriter, ChunkedBody};
use crate::config::{Backend, BackendApi};
use crate::error::ApiError;
use crate::json::{each, from_raw, json_string, EachError};
use crate::wire::chat_view::{self, ChatRequestView};
use crate::wire::openai as o;

/// `budget_tokens` for `reasoning_effort` (Anthropic's minimum budget is 1024).
const THINKING_BUDGETS: &[(&str, u32)] = &[("minimal", 1024), ("low", 1024), ("medium", 4096), ("high", 16384)];
/// The budget for `thinking: {"type":"enabled"}` without one (and no `reasoning_effort`).
const DEFAULT_THINKING_BUDGET: u32 = 4096;

/// The translated body, and what the response phase needs to know.
pub(in crate::translate) struct Written {
    pub body: ChunkedBody,
    pub include_usage: bool,
}

pub(in crate::translate) fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("unsupported_parameter", message)
}

pub(in crate::translate) fn invalid(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_request", format!("invalid request: {e}"))
}

pub(in crate::translate) fn walked(r: Result<(), EachError<ApiError>>) -> Result<(), ApiError> {
    match r {
        Ok(()) => Ok(()),
        Err(EachError::Json(e)) => Err(invalid(e)),
        Err(EachError::Stopped(e)) => Err(e),
    }
}

/// A raw value that must be a JSON string (returned as is, quotes included).
pub(in crate::translate) fn string<'a>(raw: &'a RawValue, what: &str) -> Result<&'a [u8], ApiError> {
    match string_body(raw) {
        Some(_) => Ok(raw.get().as_bytes()),
        None => Err(invalid(format!("{what} must be a string"))),
    }
}

/// One message. Strings stay raw: they are copied to the Anthropic body as they came. Not read,
/// so not declared (serde skips them without building anything): `name` (Anthropic has no
/// speaker names), `reasoning_content` (Anthropic needs signed thinking blocks), message-level
/// `refusal`; on parts `image_url.detail` and `file.filename`; on tool calls `type`; on tools
/// `function.strict`.
#[derive(Deserialize)]
struct Msg<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    #[serde(default, borrow)]
    tool_calls: Option<&'a RawValue>,
    #[serde(default, borrow)]
    tool_call_id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    cache_control: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    text: Option<&'a RawValue>,
    #[serde(default, borrow)]
    image_url: Option<ImageUrl<'a>>,
    #[serde(default, borrow)]
    input_audio: Option<&'a RawValue>,
    #[serde(default, borrow)]
    file: Option<File<'a>>,
    #[serde(default, borrow)]
    refusal: Option<&'a RawValue>,
    #[serde(default, borrow)]
    cache_control: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ImageUrl<'a> {
    #[serde(borrow)]
    url: &'a RawValue,
}

/// OpenAI's `file` part: `file_data` (a `data:` URL or bare base64), or a `file_id` of OpenAI's
/// Files API.
#[derive(Deserialize)]
struct File<'a> {
    #[serde(default, borrow)]
    file_data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    file_id: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Call<'a> {
    #[serde(borrow)]
    id: &'a RawValue,
    #[serde(borrow)]
    function: CallFunction<'a>,
}

#[derive(Deserialize)]
struct CallFunction<'a> {
    #[serde(borrow)]
    name: &'a RawValue,
    /// A string holding JSON text.
    #[serde(default, borrow)]
    arguments: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ToolDef<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    function: Option<FunctionDef<'a>>,
    #[serde(default, borrow)]
    cache_control: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct FunctionDef<'a> {
    #[serde(borrow)]
    name: &'a RawValue,
    #[serde(default, borrow)]
    description: Option<&'a RawValue>,
    #[serde(default, borrow)]
    parameters: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ThinkingView<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    budget_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct TypeOnly<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

/// A message's content, classified without decoding it.
enum Content<'a> {
    Text(&'a RawValue),
    Parts(&'a RawValue),
    Null,
}

fn content_of(raw: Option<&RawValue>) -> Result<Content<'_>, ApiError> {
    let Some(raw) = raw else { return Ok(Content::Null) };
    match raw.get().as_bytes().first() {
        Some(b'"') => Ok(Content::Text(raw)),
        Some(b'[') => Ok(Content::Parts(raw)),
        Some(b'n') => Ok(Content::Null),
        _ => Err(invalid("`content` must be a string or an array of content parts")),
    }
}

/// Blocks of one content array. Each block is written without its closing brace, so a
/// `cache_control` from its message can still be added when the message turns out to end there.
#[derive(Default)]
pub(in crate::translate) struct Blocks {
    count: usize,
    open: bool,
    open_cached: bool,
    message_start: usize,
}

impl Blocks {
    pub(in crate::translate) fn begin(&mut self, out: &mut BodyWriter) {
        self.close(out);
        if self.count > 0 {
            out.extend_from_slice(b",");
        }
        self.count += 1;
        self.open = true;
        self.open_cached = false;
    }

    /// Adds `cache_control` to the open block (a part's own marker wins over its message's).
    pub(in crate::translate) fn cache_control(&mut self, out: &mut BodyWriter, cc: Option<&RawValue>) {
        if let Some(cc) = cc {
            if self.open && !self.open_cached {
                out.extend_from_slice(b",\"cache_control\":");
                out.extend_from_slice(cc.get().as_bytes());
                self.open_cached = true;
            }
        }
    }

    pub(in crate::translate) fn close(&mut self, out: &mut BodyWriter) {
        if self.open {
            out.extend_from_slice(b"}");
            self.open = false;
        }
    }

    pub(in crate::translate) fn start_message(&mut self) {
        self.message_start = self.count;
    }

    /// The end of one OpenAI message: its `cache_control` goes on its last block.
    pub(in crate::translate) fn end_message(&mut self, out: &mut BodyWriter, cc: Option<&RawValue>) {
        if self.count > self.message_start {
            self.cache_control(out, cc);
        } else if cc.is_some() {
            log::debug!("llmgw: a cache_control on a message without content was not sent");
        }
        self.close(out);
    }
}

/// Anthropic turns: consecutive messages of one role become one turn. A turn that is one string
/// message (no `cache_control`) keeps Anthropic's string form, `"content":"..."`, as short as the
/// client's message; its text is held as a borrow until the turn turns out to have more.
#[derive(Default)]
pub(in crate::translate) struct Turns<'a> {
    role: Option<&'static str>,
    any: bool,
    /// `[` of the turn's content was written.
    array: bool,
    /// The turn's only content so far: a string not yet written.
    pending: Option<&'a RawValue>,
    blocks: Blocks,
}

impl<'a> Turns<'a> {
    fn open(&mut self, role: &'static str, out: &mut BodyWriter) {
        self.leave(out);
        if self.any {
            out.extend_from_slice(b",");
        }
        out.extend_from_slice(b"{\"role\":\"");
        out.extend_from_slice(role.as_bytes());
        out.extend_from_slice(b"\",\"content\":");
        self.role = Some(role);
        self.any = true;
        self.array = false;
        self.pending = None;
        self.blocks = Blocks::default();
    }

    /// The turn for a message of `role`, its content as an array of blocks.
    pub(in crate::translate) fn enter(&mut self, role: &'static str, out: &mut BodyWriter) -> &mut Blocks {
        if self.role != Some(role) {
            self.open(role, out);
        }
        if !std::mem::replace(&mut self.array, true) {
            out.extend_from_slice(b"[");
            if let Some(text) = self.pending.take() {
                text_block(&mut self.blocks, out, text.get().as_bytes());
                self.blocks.close(out);
            }
        }
        self.blocks.start_message();
        &mut self.blocks
    }

    /// A message whose content is one string.
    pub(in crate::translate) fn text(
        &mut self,
        role: &'static str,
        text: &'a RawValue,
        cc: Option<&RawValue>,
        out: &mut BodyWriter,
    ) {
        if self.role != Some(role) && cc.is_none() {
            self.open(role, out);
            self.pending = Some(text);
            return;
        }
        let blocks = self.enter(role, out);
        text_block(blocks, out, text.get().as_bytes());
        blocks.end_message(out, cc);
    }

    pub(in crate::translate) fn leave(&mut self, out: &mut BodyWriter) {
        if self.role.take().is_some() {
            if let Some(text) = self.pending.take() {
                out.extend_from_slice(text.get().as_bytes());
            } else {
                if !self.array {
                    out.extend_from_slice(b"[");
                }
                self.blocks.close(out);
                out.extend_from_slice(b"]");
            }
            out.extend_from_slice(b"}");
        }
    }
}

pub(in crate::translate) fn text_block(blocks: &mut Blocks, out: &mut BodyWriter, text: &[u8]) {
    blocks.begin(out);
    out.extend_from_slice(b"{\"type\":\"text\",\"text\":");
    out.extend_from_slice(text);
}

fn part_text<'a>(part: &Part<'a>) -> Result<&'a [u8], ApiError> {
    match part.text {
        Some(text) => string(text, "a text part's `text`"),
        None => Err(invalid("a text part needs `text`")),
    }
}

/// `data:<meta>,<data>` inside a string literal: the decoded media type and the raw data.
fn data_url(body: &str) -> Option<Result<(Cow<'_, str>, &str), &'static str>> {
    let rest = body.strip_prefix("data:")?;
    let Some((meta, data)) = rest.split_once(',') else { return Some(Err("data URL without ','")) };
    let meta = unescape_small(meta);
    let media_type = match meta {
        Cow::Borrowed(m) => m.strip_suffix(";base64").map(Cow::Borrowed),
        Cow::Owned(m) => m.strip_suffix(";base64").map(|t| Cow::Owned(t.to_string())),
    };
    Some(media_type.map(|t| (t, data)).ok_or("only base64 data URLs are supported"))
}

fn image_block(blocks: &mut Blocks, out: &mut BodyWriter, image: &ImageUrl) -> Result<(), ApiError> {
    image_url_block(blocks, out, image.url, "`image_url.url`")
}

/// An image URL (a base64 `data:` URL or an http(s) URL) → an `image` block.
pub(in crate::translate) fn image_url_block(
    blocks: &mut Blocks,
    out: &mut BodyWriter,
    url: &RawValue,
    what: &str,
) -> Result<(), ApiError> {
    let literal = string(url, what)?;
    let body = string_body(url).unwrap_or_default();
    blocks.begin(out);
    match data_url(body) {
        Some(Ok((media_type, data))) => {
            out.extend_from_slice(b"{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":");
            out.extend_from_slice(&json_string(&media_type));
            out.extend_from_slice(b",\"data\":\"");
            out.extend_from_slice(data.as_bytes());
            out.extend_from_slice(b"\"}");
        }
        Some(Err(e)) => return Err(bad(format!("image_url: {e}"))),
        None => {
            out.extend_from_slice(b"{\"type\":\"image\",\"source\":{\"type\":\"url\",\"url\":");
            out.extend_from_slice(literal);
            out.extend_from_slice(b"}");
        }
    }
    Ok(())
}

/// A `file` part → a `document` block (PDF, base64).
fn document_block(blocks: &mut Blocks, out: &mut BodyWriter, file: Option<&File>) -> Result<(), ApiError> {
    let Some(File { file_data, file_id }) = file else {
        return Err(invalid("a file part needs `file`"));
    };
    pdf_block(blocks, out, *file_data, file_id.is_some(), "`file.file_data`")
}

/// File data (a base64 PDF, bare or as a `data:` URL) → a `document` block. `has_file_id`: the
/// client named a file of OpenAI's Files API instead, which Anthropic cannot reach.
pub(in crate::translate) fn pdf_block(
    blocks: &mut Blocks,
    out: &mut BodyWriter,
    file_data: Option<&RawValue>,
    has_file_id: bool,
    what: &str,
) -> Result<(), ApiError> {
    let Some(file_data) = file_data else {
        return Err(bad(if has_file_id {
            "a file part with `file_id` (OpenAI's Files API) cannot be sent to Anthropic; send the PDF as `file_data`"
        } else {
            "a file part needs `file_data` (a base64 PDF) for Anthropic"
        }));
    };
    string(file_data, what)?;
    let body = string_body(file_data).unwrap_or_default();
    let data = match data_url(body) {
        Some(Ok((media_type, data))) if media_type == "application/pdf" => data,
        Some(Ok((media_type, _))) => {
            return Err(bad(format!("a file part of type {media_type:?}: Anthropic documents take application/pdf")))
        }
        Some(Err(e)) => return Err(bad(format!("file_data: {e}"))),
        None => body,
    };
    blocks.begin(out);
    out.extend_from_slice(
        b"{\"type\":\"document\",\"source\":{\"type\":\"base64\",\"media_type\":\"application/pdf\",\"data\":\"",
    );
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\"}");
    Ok(())
}

/// Where a content part is: what Anthropic takes there differs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    System,
    User,
    Assistant,
    Tool,
}

impl Place {
    fn name(self) -> &'static str {
        match self {
            Place::System => "a system message",
            Place::User => "a user message",
            Place::Assistant => "an assistant message",
            Place::Tool => "a tool message",
        }
    }
}

fn write_part(part: Part, place: Place, blocks: &mut Blocks, out: &mut BodyWriter) -> Result<(), ApiError> {
    let refused = |what: &str| {
        let takes = match place {
            Place::System => "only text in `system`",
            Place::Assistant => "only text in assistant turns",
            Place::Tool => "only text and images in tool results",
            Place::User => "text, images and PDF documents",
        };
        bad(format!("{what} in {}: Anthropic takes {takes}", place.name()))
    };
    match (part.kind.as_ref(), place) {
        ("text", Place::Assistant) => {
            let text = part_text(&part)?;
            if text == b"\"\"" {
                return Ok(());
            }
            text_block(blocks, out, text);
        }
        ("text", _) => text_block(blocks, out, part_text(&part)?),
        ("refusal", Place::Assistant) => match part.refusal {
            Some(refusal) => {
                let text = string(refusal, "a refusal part's `refusal`")?;
                if text == b"\"\"" {
                    return Ok(());
                }
                text_block(blocks, out, text);
            }
            None => return Err(invalid("a refusal part needs `refusal`")),
        },
        ("image_url", Place::User | Place::Tool) => match &part.image_url {
            Some(image) => image_block(blocks, out, image)?,
            None => return Err(invalid("an image_url part needs `image_url`")),
        },
        ("image_url", _) => return Err(refused("an image")),
        ("file", Place::User) => document_block(blocks, out, part.file.as_ref())?,
        ("file", _) => return Err(refused("a file (document)")),
        ("input_audio", _) => {
            let _ = part.input_audio;
            return Err(bad("Anthropic does not accept audio input"));
        }
        (other, _) => return Err(refused(&format!("content part type {other:?}"))),
    }
    blocks.cache_control(out, part.cache_control);
    Ok(())
}

fn write_parts(parts: &RawValue, place: Place, blocks: &mut Blocks, out: &mut BodyWriter) -> Result<(), ApiError> {
    walked(each(parts, |part: Part| write_part(part, place, blocks, out)))
}

/// Tool call `arguments` (a string holding JSON) → `tool_use.input`, decoded as a stream.
pub(in crate::translate) fn write_arguments(
    arguments: Option<&RawValue>,
    id: &RawValue,
    out: &mut BodyWriter,
) -> Result<(), ApiError> {
    let body = match arguments {
        None => "",
        Some(raw) => {
            string(raw, "tool call `arguments`")?;
            string_body(raw).unwrap_or_default()
        }
    };
    if decodes_to_blank(body) {
        out.extend_from_slice(b"{}");
        return Ok(());
    }
    check_json_inside(body).map_err(|e| {
        let id = unescape_small(string_body(id).unwrap_or_default());
        ApiError::bad_request("invalid_request", format!("tool call {id} has arguments that are not JSON: {e}"))
    })?;
    write_decoded(body, out).map_err(invalid)
}

fn write_tool_calls(calls: &RawValue, blocks: &mut Blocks, out: &mut BodyWriter) -> Result<(), ApiError> {
    walked(each(calls, |call: Call| {
        let Call { id, function: CallFunction { name, arguments } } = call;
        let id_literal = string(id, "a tool call's `id`")?;
        let name = string(name, "a tool call's `function.name`")?;
        blocks.begin(out);
        out.extend_from_slice(b"{\"type\":\"tool_use\",\"id\":");
        out.extend_from_slice(id_literal);
        out.extend_from_slice(b",\"name\":");
        out.extend_from_slice(name);
        out.extend_from_slice(b",\"input\":");
        write_arguments(arguments, id, out)
    }))
}

/// First walk of `messages`: the system and developer messages, as `"system":[...],` (nothing when
/// there are none). Walking twice costs a parse, not memory: nothing is held between the walks.
fn write_system(messages: &RawValue, out: &mut BodyWriter) -> Result<(), ApiError> {
    let mut blocks = Blocks::default();
    let mut any = false;
    walked(each(messages, |message: Msg| {
        let Msg { role, content, tool_calls: _, tool_call_id: _, cache_control } = message;
        if !matches!(role.as_ref(), "system" | "developer") {
            return Ok(());
        }
        if !std::mem::replace(&mut any, true) {
            out.extend_from_slice(b"\"system\":[");
        }
        blocks.start_message();
        match content_of(content)? {
            Content::Text(text) => text_block(&mut blocks, out, text.get().as_bytes()),
            Content::Parts(parts) => write_parts(parts, Place::System, &mut blocks, out)?,
            Content::Null => return Err(invalid(format!("a {role} message needs `content`"))),
        }
        blocks.end_message(out, cache_control);
        Ok(())
    }))?;
    if any {
        out.extend_from_slice(b"],");
    }
    Ok(())
}

/// Second walk of `messages`: the turns, as the array of `messages`.
fn write_messages(messages: &RawValue, out: &mut BodyWriter) -> Result<(), ApiError> {
    let mut turns = Turns::default();
    out.extend_from_slice(b"[");
    walked(each(messages, |message: Msg| {
        let Msg { role, content, tool_calls, tool_call_id, cache_control } = message;
        let content = content_of(content)?;
        match role.as_ref() {
            "system" | "developer" => {}
            "user" => match content {
                Content::Text(text) => turns.text("user", text, cache_control, out),
                Content::Parts(parts) => {
                    let blocks = turns.enter("user", out);
                    write_parts(parts, Place::User, blocks, out)?;
                    blocks.end_message(out, cache_control);
                }
                Content::Null => return Err(invalid("a user message needs `content`")),
            },
            "assistant" if tool_calls.is_none() && matches!(content, Content::Text(t) if t.get() != "\"\"") => {
                if let Content::Text(text) = content {
                    turns.text("assistant", text, cache_control, out);
                }
            }
            "assistant" => {
                let blocks = turns.enter("assistant", out);
                match content {
                    Content::Text(text) if text.get() != "\"\"" => text_block(blocks, out, text.get().as_bytes()),
                    Content::Parts(parts) => write_parts(parts, Place::Assistant, blocks, out)?,
                    Content::Text(_) | Content::Null => {}
                }
                if let Some(calls) = tool_calls {
                    write_tool_calls(calls, blocks, out)?;
                }
                blocks.end_message(out, cache_control);
            }
            "tool" => {
                let Some(id) = tool_call_id else { return Err(invalid("a tool message needs `tool_call_id`")) };
                let id = string(id, "`tool_call_id`")?;
                let blocks = turns.enter("user", out);
                blocks.begin(out);
                out.extend_from_slice(b"{\"type\":\"tool_result\",\"tool_use_id\":");
                out.extend_from_slice(id);
                out.extend_from_slice(b",\"content\":");
                match content {
                    Content::Text(text) => out.extend_from_slice(text.get().as_bytes()),
                    Content::Parts(parts) => {
                        out.extend_from_slice(b"[");
                        let mut inner = Blocks::default();
                        write_parts(parts, Place::Tool, &mut inner, out)?;
                        inner.close(out);
                        out.extend_from_slice(b"]");
                    }
                    Content::Null => return Err(invalid("a tool message needs `content`")),
                }
                blocks.end_message(out, cache_control);
            }
            other => return Err(invalid(format!("unknown message role {other:?}"))),
        }
        Ok(())
    }))?;
    turns.leave(out);
    out.extend_from_slice(b"]");
    Ok(())
}

fn write_tools(tools: &RawValue, out: &mut BodyWriter) -> Result<(), ApiError> {
    out.extend_from_slice(b"[");
    let mut first = true;
    walked(each(tools, |tool: ToolDef| {
        let ToolDef { kind, function, cache_control } = tool;
        if kind != "function" {
            return Err(bad(format!("tool type {kind:?} is not supported by Anthropic")));
        }
        let Some(FunctionDef { name, description, parameters }) = function else {
            return Err(invalid("a function tool needs `function`"));
        };
        if !std::mem::take(&mut first) {
            out.extend_from_slice(b",");
        }
        write_tool_def(name, description, parameters, cache_control, out)
    }))?;
    out.extend_from_slice(b"]");
    Ok(())
}

/// One Anthropic tool from a function's name, description and JSON schema (raw, as sent).
pub(in crate::translate) fn write_tool_def(
    name: &RawValue,
    description: Option<&RawValue>,
    parameters: Option<&RawValue>,
    cache_control: Option<&RawValue>,
    out: &mut BodyWriter,
) -> Result<(), ApiError> {
    let name = string(name, "a tool's `name`")?;
    out.extend_from_slice(b"{\"name\":");
    out.extend_from_slice(name);
    if let Some(description) = description.filter(|d| d.get() != "null") {
        out.extend_from_slice(b",\"description\":");
        out.extend_from_slice(string(description, "a tool's `description`")?);
    }
    out.extend_from_slice(b",\"input_schema\":");
    match parameters.filter(|p| p.get() != "null") {
        Some(schema) => out.extend_from_slice(schema.get().as_bytes()),
        None => out.extend_from_slice(br#"{"type":"object","properties":{}}"#),
    }
    if let Some(cc) = cache_control {
        out.extend_from_slice(b",\"cache_control\":");
        out.extend_from_slice(cc.get().as_bytes());
    }
    out.extend_from_slice(b"}");
    Ok(())
}

fn write_tool_choice(
    choice: Option<o::ToolChoice>,
    has_tools: bool,
    parallel_tool_calls: Option<bool>,
    out: &mut BodyWriter,
) -> Result<(), ApiError> {
    let disable_parallel = parallel_tool_calls == Some(false);
    let (kind, name): (&str, Option<String>) = match choice {
        None if disable_parallel && has_tools => ("auto", None),
        None => return Ok(()),
        Some(o::ToolChoice::Mode(mode)) => match mode.as_str() {
            "auto" => ("auto", None),
            "required" => ("any", None),
            "none" => ("none", None),
            other => return Err(bad(format!("tool_choice {other:?} is not one of none, auto, required"))),
        },
        Some(o::ToolChoice::Named(named)) => ("tool", Some(named.function.name)),
    };
    write_anthropic_tool_choice(kind, name.as_deref(), disable_parallel, out);
    Ok(())
}

/// Anthropic's `tool_choice` (`,"tool_choice":{...}`): `kind` is auto, any, none or tool (with
/// `name`).
pub(in crate::translate) fn write_anthropic_tool_choice(
    kind: &str,
    name: Option<&str>,
    disable_parallel: bool,
    out: &mut BodyWriter,
) {
    out.extend_from_slice(b",\"tool_choice\":{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\"");
    if let Some(name) = name {
        out.extend_from_slice(b",\"name\":");
        out.extend_from_slice(&json_string(name));
    }
    if disable_parallel && kind != "none" {
        out.extend_from_slice(b",\"disable_parallel_tool_use\":true");
    }
    out.extend_from_slice(b"}");
}

/// The thinking budget: an OpenAI-compatible `thinking` object wins over `reasoning_effort`.
pub(in crate::translate) fn thinking_budget(
    thinking: Option<&RawValue>,
    effort: Option<&str>,
) -> Result<Option<u32>, ApiError> {
    let effort = match effort {
        None | Some("none") => None,
        Some(effort) => {
            Some(THINKING_BUDGETS.iter().find(|(name, _)| *name == effort).map(|(_, b)| *b).ok_or_else(|| {
                bad(format!("reasoning_effort {effort:?} is not one of none, minimal, low, medium, high"))
            })?)
        }
    };
    let Some(raw) = thinking else { return Ok(effort) };
    let thinking: ThinkingView = from_raw(raw)
        .map_err(|e| bad(format!("thinking must be {{\"type\":\"enabled\",\"budget_tokens\":N}}: {e}")))?;
    match thinking.kind.as_ref() {
        "enabled" => Ok(Some(thinking.budget_tokens.or(effort).unwrap_or(DEFAULT_THINKING_BUDGET))),
        "disabled" => Ok(None),
        other => Err(bad(format!("thinking type {other:?} is not one of enabled, disabled"))),
    }
}

/// `max_tokens` for a request with a thinking budget: Anthropic requires the budget to be below it,
/// so a smaller one gets the budget added.
pub(in crate::translate) fn max_tokens_with(max_tokens: u32, budget: Option<u32>) -> u32 {
    match budget {
        Some(budget) if max_tokens <= budget => max_tokens.saturating_add(budget),
        _ => max_tokens,
    }
}

pub(in crate::translate) fn put_number(
    out: &mut BodyWriter,
    key: &[u8],
    value: impl serde::Serialize,
) -> Result<(), ApiError> {
    out.extend_from_slice(key);
    serde_json::to_writer(&mut *out, &value).map_err(invalid)
}

/// How a Messages body differs per platform: AWS and GCP take the model in the path and the API
/// version in the body; AWS also takes streaming in the path.
pub(in crate::translate) struct Platform<'b> {
    pub default_max_tokens: u32,
    /// `anthropic_version` to write in the body (AWS, GCP).
    pub body_version: Option<&'b str>,
    pub stream_in_body: bool,
}

impl<'b> Platform<'b> {
    pub(in crate::translate) fn of(backend: &'b Backend) -> Result<Self, ApiError> {
        Ok(match &backend.api {
            BackendApi::Anthropic { default_max_tokens, .. } => {
                Platform { default_max_tokens: *default_max_tokens, body_version: None, stream_in_body: true }
            }
            BackendApi::AWSAnthropic { default_max_tokens, anthropic_version, .. } => Platform {
                default_max_tokens: *default_max_tokens,
                body_version: Some(anthropic_version),
                stream_in_body: false,
            },
            BackendApi::GCPAnthropic { default_max_tokens, anthropic_version, .. } => Platform {
                default_max_tokens: *default_max_tokens,
                body_version: Some(anthropic_version),
                stream_in_body: true,
            },
            BackendApi::OpenAI { .. }
            | BackendApi::AzureOpenAI { .. }
            | BackendApi::AWSBedrock { .. }
            | BackendApi::GCPVertexAI { .. } => {
                return Err(crate::translate::wrong_backend(backend, "Anthropic Messages"))
            }
        })
    }
}

/// The whole translation: every top-level member decided, the body written as it is walked.
pub(in crate::translate) fn write_request(
    body: &[u8],
    backend: &Backend,
    model: &str,
    stream: bool,
    mut out: BodyWriter<'_>,
) -> Result<Written, ApiError> {
    let Platform { default_max_tokens, body_version, stream_in_body } = Platform::of(backend)?;
    let view: ChatRequestView = crate::json::from_bytes(body).map_err(invalid)?;
    let ChatRequestView {
        model: _,
        messages,
        max_tokens,
        max_completion_tokens,
        temperature,
        top_p,
        stop,
        stream: _,
        stream_options,
        tools,
        tool_choice,
        parallel_tool_calls,
        response_format,
        reasoning_effort,
        thinking,
        n,
        seed,
        presence_penalty,
        frequency_penalty,
        logprobs,
        top_logprobs,
        logit_bias,
        user,
        metadata,
        store,
        service_tier,
    } = view;
    if n.is_some_and(|n| n > 1) {
        return Err(bad("Anthropic returns one choice per request; `n` must be 1"));
    }
    if logprobs == Some(true) || top_logprobs.is_some() {
        return Err(bad("Anthropic does not return log probabilities; remove `logprobs`/`top_logprobs`"));
    }
    if temperature.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
        return Err(bad("Anthropic accepts `temperature` between 0 and 1"));
    }
    if let Some(format) = response_format {
        let kind = from_raw::<TypeOnly>(format).map_err(invalid)?;
        if kind.kind != "text" {
            return Err(bad(
                "Anthropic has no JSON response mode; remove `response_format` or ask for JSON in the prompt",
            ));
        }
    }
    let include_usage = match stream_options {
        Some(raw) => from_raw::<o::StreamOptions>(raw).map_err(invalid)?.include_usage.unwrap_or(false),
        None => false,
    };
    if log::log_enabled!(log::Level::Debug) {
        let ignored: Vec<String> = [
            ("seed", seed.is_some()),
            ("presence_penalty", presence_penalty.is_some()),
            ("frequency_penalty", frequency_penalty.is_some()),
            ("logit_bias", logit_bias.is_some()),
            ("metadata", metadata.is_some()),
            ("store", store.is_some()),
            ("service_tier", service_tier.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| name.to_string())
        .chain(chat_view::unknown_members(body))
        .collect();
        if !ignored.is_empty() {
            log::debug!("llmgw: Anthropic backend ignores parameters: {}", ignored.join(", "));
        }
    }
    let tool_choice = tool_choice.map(from_raw::<o::ToolChoice>).transpose().map_err(invalid)?;

    let budget = thinking_budget(thinking, reasoning_effort.as_deref())?;
    let max_tokens = max_tokens_with(max_completion_tokens.or(max_tokens).unwrap_or(default_max_tokens), budget);

    out.extend_from_slice(b"{");
    if body_version.is_none() {
        out.extend_from_slice(b"\"model\":");
        out.extend_from_slice(&json_string(model));
        out.extend_from_slice(b",");
    }
    put_number(&mut out, b"\"max_tokens\":", max_tokens)?;
    out.extend_from_slice(b",");
    write_system(messages, &mut out)?;
    out.extend_from_slice(b"\"messages\":");
    write_messages(messages, &mut out)?;
    if let Some(stop) = stop {
        match stop.get().as_bytes().first() {
            Some(b'"') => {
                out.extend_from_slice(b",\"stop_sequences\":[");
                out.extend_from_slice(stop.get().as_bytes());
                out.extend_from_slice(b"]");
            }
            Some(b'[') => {
                walked(each(stop, |s: &RawValue| string(s, "each `stop` entry").map(|_| ())))?;
                out.extend_from_slice(b",\"stop_sequences\":");
                out.extend_from_slice(stop.get().as_bytes());
            }
            _ => return Err(invalid("`stop` must be a string or an array of strings")),
        }
    }
    if let Some(t) = temperature {
        put_number(&mut out, b",\"temperature\":", t)?;
    }
    if let Some(p) = top_p {
        put_number(&mut out, b",\"top_p\":", p)?;
    }
    if stream && stream_in_body {
        out.extend_from_slice(b",\"stream\":true");
    }
    if let Some(tools) = tools {
        out.extend_from_slice(b",\"tools\":");
        write_tools(tools, &mut out)?;
    }
    write_tool_choice(tool_choice, tools.is_some(), parallel_tool_calls, &mut out)?;
    if let Some(budget) = budget {
        put_number(&mut out, b",\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":", budget)?;
        out.extend_from_slice(b"}");
    }
    if let Some(user) = user {
        out.extend_from_slice(b",\"metadata\":{\"user_id\":");
        out.extend_from_slice(&json_string(&user));
        out.extend_from_slice(b"}");
    }
    if let Some(version) = body_version {
        out.extend_from_slice(b",\"anthropic_version\":");
        out.extend_from_slice(&json_string(version));
    }
    out.extend_from_slice(b"}");
    Ok(Written { body: out.finish(), include_usage })
}
