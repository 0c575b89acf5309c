//! OpenAI chat client → Amazon Bedrock Converse API (schema `AWSBedrock`).
//!
//! Request: `POST {prefix}/model/{modelId}/converse` (or `/converse-stream` when the client
//! streams), the model id percent-encoded as one path segment, the body a Converse request.
//! The request is read through borrowed views and the Converse body is written as it is read, into
//! a [`ChunkedBody`]: messages, parts, tool calls and tools are walked one at a time with
//! [`json::each`], texts and JSON schemas are copied as raw JSON, base64 data is borrowed, so memory
//! does not grow with the number of elements and nothing large is copied on the way.
//! Response: the Converse JSON becomes a `chat.completion` (read through borrowed views, written
//! into a buffer of exactly its size); the eventstream of `converse-stream` becomes
//! `chat.completion.chunk` SSE events, chunk by chunk, ending with `data: [DONE]` (after an error
//! event when the stream breaks or ends early). Which OpenAI parameters are dropped and which are
//! refused is tabled in the filter README.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::jsontext::{check_json_inside, decodes_to_blank, write_decoded};
use super::{BodyMode, ChunkEdits, RequestContext, RequestEdits, ResponsePlan, Translator};
use crate::body::{BodyWriter, ChunkedBody, NewBody};
use crate::config::BackendApi;
use crate::error::{error_json, ApiError, ErrorKind};
use crate::eventstream::{self, Kind};
use crate::json::{self, each, EachError};
use crate::translate::openai_passthrough::percent_encode;
use crate::wire::bedrock as b;
use crate::wire::chat_view as v;
use crate::wire::openai as o;

/// `reasoning_effort` → Anthropic extended-thinking `budget_tokens` (Claude models on Bedrock).
const THINKING_BUDGETS: &[(&str, u32)] = &[("low", 1024), ("medium", 4096), ("high", 16384)];

/// Tool blocks of a stream whose index is remembered (a stream may hold any number).
const MAX_TRACKED_BLOCKS: usize = 4096;

/// Upstream error text longer than this is cut.
const MAX_ERROR_MESSAGE: usize = 2048;

/// A Converse prompt-cache checkpoint: everything before it is cached.
const CACHE_POINT: &[u8] = br#"{"cachePoint":{"type":"default"}}"#;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("unsupported_parameter", message)
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_request", message)
}

fn malformed(e: impl std::fmt::Display) -> ApiError {
    invalid(format!("invalid chat completion request: {e}"))
}

/// The upstream path: `{prefix}/model/{modelId}/converse[-stream]`.
pub fn converse_path(prefix: &str, model: &str, stream: bool) -> String {
    let action = if stream { "converse-stream" } else { "converse" };
    format!("{prefix}/model/{}/{action}", percent_encode(model))
}

fn is_claude(model: &str) -> bool {
    model.contains("anthropic.") || model.contains("claude")
}

/// Amazon Nova 2 models take a reasoning effort (`reasoningConfig`).
fn is_nova_2(model: &str) -> bool {
    model.contains("nova-2")
}

/// Walks the JSON array `raw` with `f`; a malformed element is a 400 naming `what`.
fn walk<'a, T: Deserialize<'a>>(
    raw: &'a RawValue,
    what: &str,
    f: impl FnMut(T) -> Result<(), ApiError>,
) -> Result<(), ApiError> {
    each(raw, f).map_err(|e| match e {
        EachError::Json(e) => malformed(format!("{what}: {e}")),
        EachError::Stopped(e) => e,
    })
}

/// The raw literal of a JSON string (quotes and escapes included); anything else is a 400.
fn string_literal<'a>(raw: Option<&'a RawValue>, what: &str) -> Result<&'a str, ApiError> {
    match raw.map(RawValue::get) {
        Some(s) if s.starts_with('"') => Ok(s),
        Some(_) => Err(malformed(format!("{what} must be a string"))),
        None => Err(malformed(format!("{what} is missing"))),
    }
}

/// The inside of a JSON string literal: still escaped, ready to be written between quotes.
fn literal_inner(literal: &str) -> &str {
    literal.get(1..literal.len().saturating_sub(1)).unwrap_or("")
}

fn is_empty_literal(literal: &str) -> bool {
    literal == "\"\""
}

/// Message content, unparsed: a string literal, an array of parts, or nothing.
enum Content<'a> {
    Text(&'a str),
    Parts(&'a RawValue),
    Null,
}

fn content_of(raw: Option<&RawValue>) -> Result<Content<'_>, ApiError> {
    let Some(raw) = raw else { return Ok(Content::Null) };
    match raw.get().as_bytes().first() {
        Some(b'"') => Ok(Content::Text(raw.get())),
        Some(b'[') => Ok(Content::Parts(raw)),
        Some(b'n') => Ok(Content::Null),
        _ => Err(invalid("`content` must be a string or an array of content parts")),
    }
}

/// One message, as this translator reads it: texts stay raw JSON (never unescaped or copied).
#[derive(Deserialize)]
struct MessageIn<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    #[serde(default, borrow)]
    tool_calls: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "v::opt_text")]
    tool_call_id: Option<Cow<'a, str>>,
    /// Dropped (Bedrock takes reasoning back only with its signature); raw, so never copied.
    #[serde(default, borrow)]
    reasoning_content: Option<&'a RawValue>,
    #[serde(default, borrow)]
    cache_control: Option<&'a RawValue>,
    // `name` and `refusal` are dropped: serde skips them.
}

/// One content part; texts stay raw JSON.
#[derive(Deserialize)]
struct PartIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    text: Option<&'a RawValue>,
    #[serde(default, borrow)]
    image_url: Option<v::ImageUrlView<'a>>,
    #[serde(default, borrow)]
    file: Option<&'a RawValue>,
    #[serde(default, borrow)]
    cache_control: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct FileIn<'a> {
    #[serde(default, borrow)]
    file_data: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "v::opt_text")]
    filename: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ToolCallIn<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    function: FunctionCallIn<'a>,
}

#[derive(Deserialize)]
struct FunctionCallIn<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    /// A JSON string holding JSON text; unescaped straight into the output.
    #[serde(default, borrow)]
    arguments: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ThinkingIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    budget_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct ResponseFormatIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

/// Where a message's text parts go, for the 400s that name what cannot go there.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TextOnly {
    System,
    Assistant,
}

/// What the text parts of a message add up to.
#[derive(Default)]
struct TextParts {
    count: usize,
    any_text: bool,
    cache: bool,
}

impl TextParts {
    /// OpenAI's text of parts is the text parts joined by newlines: empty only when there is at
    /// most one part and it is empty.
    fn is_empty(&self) -> bool {
        self.count == 0 || (self.count == 1 && !self.any_text)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    User,
    Assistant,
}

impl Role {
    fn name(self) -> &'static [u8] {
        match self {
            Role::User => b"user",
            Role::Assistant => b"assistant",
        }
    }
}

/// Where a content part's block goes: a turn of `messages`, or the content of a `toolResult`.
enum Sink {
    Turn(Role),
    Nested { count: usize },
}

/// The Converse request being written.
struct Converse<'s> {
    out: BodyWriter<'s>,
    documents: DocumentNames,
    /// The role of the turn open in `messages` (consecutive messages of one role share a turn).
    open: Option<Role>,
    turns: usize,
    blocks_in_turn: usize,
    blocks: usize,
    history_has_tools: bool,
}

impl Converse<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    fn put_str(&mut self, s: &str) {
        // Writing into a ChunkedBody cannot fail; a string always serializes.
        if serde_json::to_writer(&mut self.out, s).is_err() {
            self.out.extend_from_slice(b"\"\"");
        }
    }

    /// Starts a block in a turn of `role`: opens the turn (closing another role's) or separates it
    /// from the previous block. Converse wants alternating roles, so consecutive turns of one role
    /// become one message.
    fn begin_block(&mut self, role: Role) {
        if self.open != Some(role) {
            if self.open.is_some() {
                self.put(b"]}");
            }
            if self.turns > 0 {
                self.put(b",");
            }
            self.put(b"{\"role\":\"");
            self.put(role.name());
            self.put(b"\",\"content\":[");
            self.open = Some(role);
            self.turns = self.turns.saturating_add(1);
            self.blocks_in_turn = 0;
        } else if self.blocks_in_turn > 0 {
            self.put(b",");
        }
        self.blocks_in_turn = self.blocks_in_turn.saturating_add(1);
        self.blocks = self.blocks.saturating_add(1);
    }

    fn open_block(&mut self, sink: &mut Sink) {
        match sink {
            Sink::Turn(role) => self.begin_block(*role),
            Sink::Nested { count } => {
                if *count > 0 {
                    self.put(b",");
                }
                *count = count.saturating_add(1);
            }
        }
    }

    /// A cache checkpoint after the last block of the open turn of `role`.
    fn cache_point(&mut self, role: Role) {
        if self.open == Some(role) && self.blocks_in_turn > 0 {
            self.begin_block(role);
            self.put(CACHE_POINT);
        }
    }

    fn close_turn(&mut self) {
        if self.open.take().is_some() {
            self.put(b"]}");
        }
    }

    fn messages(&mut self, messages: &RawValue) -> Result<(), ApiError> {
        self.put(b"\"messages\":[");
        walk(messages, "messages", |m: MessageIn| self.message(m))?;
        self.close_turn();
        self.put(b"]");
        Ok(())
    }

    fn message(&mut self, m: MessageIn) -> Result<(), ApiError> {
        let before = self.blocks;
        let role = match m.role.as_ref() {
            // System prompts are written by `system`, in a second walk.
            "system" | "developer" => return Ok(()),
            "user" => {
                self.user_content(m.content)?;
                Role::User
            }
            "assistant" => {
                self.assistant(&m)?;
                Role::Assistant
            }
            "tool" => {
                self.tool_result(&m)?;
                Role::User
            }
            other => return Err(malformed(format!("unknown message role {other:?}"))),
        };
        if m.cache_control.is_some() && self.blocks > before {
            self.cache_point(role);
        }
        Ok(())
    }

    fn user_content(&mut self, content: Option<&RawValue>) -> Result<(), ApiError> {
        match content_of(content)? {
            Content::Null => Err(invalid("a user message needs `content` (a string or an array of content parts)")),
            Content::Text(literal) => {
                if !is_empty_literal(literal) {
                    self.begin_block(Role::User);
                    self.text_block(literal);
                }
                Ok(())
            }
            Content::Parts(parts) => walk(parts, "content parts", |p: PartIn| {
                let cache = p.cache_control.is_some();
                if self.part(p, &mut Sink::Turn(Role::User))? && cache {
                    self.cache_point(Role::User);
                }
                Ok(())
            }),
        }
    }

    fn text_block(&mut self, literal: &str) {
        self.put(b"{\"text\":");
        self.put(literal.as_bytes());
        self.put(b"}");
    }

    /// One user or tool-result content part → a block in `sink`; returns whether one was written.
    fn part(&mut self, p: PartIn, sink: &mut Sink) -> Result<bool, ApiError> {
        match p.kind.as_ref() {
            "text" => {
                let literal = string_literal(p.text, "a text part's `text`")?;
                if is_empty_literal(literal) {
                    return Ok(false);
                }
                self.open_block(sink);
                self.text_block(literal);
            }
            "image_url" => {
                let url = p.image_url.ok_or_else(|| malformed("an image_url part needs `image_url`"))?;
                let (format, data) = image_source(&url.url)?;
                self.open_block(sink);
                self.put(b"{\"image\":{\"format\":\"");
                self.put(format.as_bytes());
                self.put(b"\",\"source\":{\"bytes\":");
                self.put_str(data);
                self.put(b"}}}");
            }
            "file" => {
                let file = p.file.ok_or_else(|| malformed("a file part needs `file`"))?;
                let file: FileIn = json::from_raw(file).map_err(|e| malformed(format!("file: {e}")))?;
                let data_url = match file.file_data {
                    Some(raw) if raw.get().starts_with('"') => {
                        json::from_raw::<Cow<str>>(raw).map_err(|e| malformed(format!("file.file_data: {e}")))?
                    }
                    _ => {
                        return Err(bad("Bedrock needs file contents: send `file.file_data` as a base64 data URL \
                                        (file_id is not supported)"))
                    }
                };
                let (format, data) = document_source(&data_url)?;
                let name = self.documents.name(file.filename.as_deref())?;
                self.open_block(sink);
                self.put(b"{\"document\":{\"format\":\"");
                self.put(format.as_bytes());
                self.put(b"\",\"name\":");
                self.put_str(&name);
                self.put(b",\"source\":{\"bytes\":");
                self.put_str(data);
                self.put(b"}}}");
            }
            "input_audio" => return Err(bad("Bedrock Converse does not accept audio input (an input_audio part)")),
            other => {
                return Err(bad(format!(
                    "a content part of type {other:?} was sent; Bedrock takes text, image_url and file parts here"
                )))
            }
        }
        Ok(true)
    }

    /// Checks the parts of a text-only message (system or assistant) and sums them up.
    fn text_parts(&self, parts: &RawValue, place: TextOnly) -> Result<TextParts, ApiError> {
        let mut sum = TextParts::default();
        walk(parts, "content parts", |p: PartIn| {
            match (p.kind.as_ref(), place) {
                ("text", _) => {
                    let literal = string_literal(p.text, "a text part's `text`")?;
                    sum.count = sum.count.saturating_add(1);
                    sum.any_text |= !is_empty_literal(literal);
                    sum.cache |= p.cache_control.is_some();
                }
                // An assistant refusal is dropped, as the message's `refusal` is.
                ("refusal", TextOnly::Assistant) => {}
                (other, TextOnly::System) => {
                    return Err(bad(format!(
                        "a content part of type {other:?} was sent in a system message; Bedrock system prompts take \
                         text only"
                    )))
                }
                (other, TextOnly::Assistant) => {
                    return Err(bad(format!(
                        "a content part of type {other:?} was sent in an assistant message; Bedrock takes text and \
                         tool calls from the assistant"
                    )))
                }
            }
            Ok(())
        })?;
        Ok(sum)
    }

    /// `{"text": <the text parts joined by newlines>}`, written from the raw literals.
    fn joined_text_block(&mut self, parts: &RawValue) -> Result<(), ApiError> {
        self.put(b"{\"text\":\"");
        let mut first = true;
        walk(parts, "content parts", |p: PartIn| {
            if p.kind == "text" {
                let literal = string_literal(p.text, "a text part's `text`")?;
                if !first {
                    self.put(b"\\n");
                }
                first = false;
                self.put(literal_inner(literal).as_bytes());
            }
            Ok(())
        })?;
        self.put(b"\"}");
        Ok(())
    }

    fn assistant(&mut self, m: &MessageIn) -> Result<(), ApiError> {
        if m.reasoning_content.is_some_and(|r| r.get() != "null") {
            log::debug!("llmgw: Bedrock: dropped reasoning_content of an earlier assistant turn");
        }
        match content_of(m.content)? {
            Content::Null => {}
            Content::Text(literal) => {
                if !is_empty_literal(literal) {
                    self.begin_block(Role::Assistant);
                    self.text_block(literal);
                }
            }
            Content::Parts(parts) => {
                let sum = self.text_parts(parts, TextOnly::Assistant)?;
                if !sum.is_empty() {
                    self.begin_block(Role::Assistant);
                    self.joined_text_block(parts)?;
                    if sum.cache {
                        self.cache_point(Role::Assistant);
                    }
                }
            }
        }
        if let Some(calls) = m.tool_calls.filter(|c| c.get() != "null") {
            walk(calls, "tool_calls", |call: ToolCallIn| self.tool_use(call))?;
        }
        Ok(())
    }

    fn tool_use(&mut self, call: ToolCallIn) -> Result<(), ApiError> {
        let arguments = match call.function.arguments.map(RawValue::get) {
            None | Some("null") => None,
            Some(literal) if literal.starts_with('"') => {
                let inner = literal_inner(literal);
                match check_json_inside(inner) {
                    Ok(()) => Some(inner),
                    Err(_) if decodes_to_blank(inner) => None,
                    Err(e) => {
                        return Err(invalid(format!("tool call {} has arguments that are not JSON: {e}", call.id)))
                    }
                }
            }
            Some(_) => return Err(malformed(format!("tool call {}: `arguments` must be a string", call.id))),
        };
        self.begin_block(Role::Assistant);
        self.history_has_tools = true;
        self.put(b"{\"toolUse\":{\"toolUseId\":");
        self.put_str(&call.id);
        self.put(b",\"name\":");
        self.put_str(&call.function.name);
        self.put(b",\"input\":");
        match arguments {
            // An empty string: no arguments.
            None => self.put(b"{}"),
            Some(inner) => {
                write_decoded(inner, &mut self.out)
                    .map_err(|e| invalid(format!("tool call {} has arguments that are not JSON: {e}", call.id)))?;
            }
        }
        self.put(b"}}");
        Ok(())
    }

    fn tool_result(&mut self, m: &MessageIn) -> Result<(), ApiError> {
        let id = m.tool_call_id.as_deref().ok_or_else(|| malformed("a tool message needs `tool_call_id`"))?;
        let content = content_of(m.content)?;
        self.begin_block(Role::User);
        self.history_has_tools = true;
        self.put(b"{\"toolResult\":{\"toolUseId\":");
        self.put_str(id);
        self.put(b",\"content\":[");
        let mut cache = false;
        match content {
            Content::Null => return Err(invalid("a tool message needs `content`")),
            Content::Text(literal) => {
                if !is_empty_literal(literal) {
                    self.text_block(literal);
                }
            }
            Content::Parts(parts) => {
                let mut sink = Sink::Nested { count: 0 };
                walk(parts, "content parts", |p: PartIn| {
                    let marked = p.cache_control.is_some();
                    cache |= self.part(p, &mut sink)? && marked;
                    Ok(())
                })?;
            }
        }
        self.put(b"]}}");
        // Converse has no checkpoint inside a tool result: it goes right after it.
        if cache {
            self.cache_point(Role::User);
        }
        Ok(())
    }

    /// `"system": [...]` from the system and developer messages, in order (a second walk over
    /// `messages`; nothing is collected).
    fn system(&mut self, messages: &RawValue) -> Result<(), ApiError> {
        let mut count = 0usize;
        let separate = |this: &mut Converse, count: &mut usize| {
            this.put(if *count == 0 { b",\"system\":[" } else { b"," });
            *count = count.saturating_add(1);
        };
        walk(messages, "messages", |m: MessageIn| {
            if m.role != "system" && m.role != "developer" {
                return Ok(());
            }
            let (wrote, part_cache) = match content_of(m.content)? {
                Content::Null => return Err(invalid(format!("a {} message needs `content`", m.role))),
                Content::Text(literal) if is_empty_literal(literal) => (false, false),
                Content::Text(literal) => {
                    separate(self, &mut count);
                    self.text_block(literal);
                    (true, false)
                }
                Content::Parts(parts) => {
                    let sum = self.text_parts(parts, TextOnly::System)?;
                    if sum.is_empty() {
                        (false, false)
                    } else {
                        separate(self, &mut count);
                        self.joined_text_block(parts)?;
                        (true, sum.cache)
                    }
                }
            };
            if wrote && (part_cache || m.cache_control.is_some()) {
                separate(self, &mut count);
                self.put(CACHE_POINT);
            }
            Ok(())
        })?;
        if count > 0 {
            self.put(b"]");
        }
        Ok(())
    }

    /// `"toolConfig"`, when there are tools (and Converse needs them).
    fn tool_config(&mut self, tools: Option<&RawValue>, tool_choice: Option<&RawValue>) -> Result<(), ApiError> {
        let tools = tools.filter(|t| t.get() != "null");
        let mut count = 0usize;
        if let Some(tools) = tools {
            walk(tools, "tools", |t: v::ToolView| {
                check_tool(&t)?;
                count = count.saturating_add(1);
                Ok(())
            })?;
        }
        let tool_choice = tool_choice
            .filter(|c| c.get() != "null")
            .map(json::from_raw::<o::ToolChoice>)
            .transpose()
            .map_err(|e| malformed(format!("tool_choice: {e}")))?;
        let Some(tools) = tools.filter(|_| count > 0) else {
            if tool_choice.is_some() {
                log::debug!("llmgw: Bedrock: tool_choice without tools dropped");
            }
            return Ok(());
        };
        let choice: Option<Cow<[u8]>> = match &tool_choice {
            None => None,
            Some(o::ToolChoice::Mode(mode)) => match mode.as_str() {
                "auto" => Some(Cow::Borrowed(br#"{"auto":{}}"#)),
                "required" => Some(Cow::Borrowed(br#"{"any":{}}"#)),
                // Converse has no "none": a request without tools is the same thing.
                "none" if !self.history_has_tools => return Ok(()),
                "none" => {
                    log::warn!(
                        "llmgw: Bedrock has no tool_choice \"none\" and needs the tools of a conversation with tool \
                         calls; sent as auto"
                    );
                    None
                }
                other => return Err(bad(format!("tool_choice {other:?} is not one of none, auto, required"))),
            },
            Some(o::ToolChoice::Named(named)) => {
                let mut bytes = br#"{"tool":{"name":"#.to_vec();
                bytes.extend_from_slice(&json::json_string(&named.function.name));
                bytes.extend_from_slice(b"}}");
                Some(Cow::Owned(bytes))
            }
        };
        self.put(b",\"toolConfig\":{\"tools\":[");
        let mut first = true;
        walk(tools, "tools", |t: v::ToolView| {
            let Some(function) = t.function else { return Ok(()) };
            if !first {
                self.put(b",");
            }
            first = false;
            if function.strict.is_some() {
                log::debug!("llmgw: Bedrock: dropped `strict` of tool {}", function.name);
            }
            self.put(b"{\"toolSpec\":{\"name\":");
            self.put_str(&function.name);
            if let Some(description) = &function.description {
                self.put(b",\"description\":");
                self.put_str(description);
            }
            self.put(b",\"inputSchema\":{\"json\":");
            match function.parameters.filter(|p| p.get() != "null") {
                Some(schema) => self.put(schema.get().as_bytes()),
                None => self.put(br#"{"type":"object","properties":{}}"#),
            }
            self.put(b"}}}");
            if t.cache_control.is_some() {
                self.put(b",");
                self.put(CACHE_POINT);
            }
            Ok(())
        })?;
        self.put(b"]");
        if let Some(choice) = choice {
            self.put(b",\"toolChoice\":");
            self.put(&choice);
        }
        self.put(b"}");
        Ok(())
    }
}

fn check_tool(t: &v::ToolView) -> Result<(), ApiError> {
    if t.kind != "function" {
        return Err(bad(format!("tool type {:?} is not supported by Bedrock", t.kind)));
    }
    if t.function.is_none() {
        return Err(malformed("a function tool needs `function`"));
    }
    Ok(())
}

/// `data:image/png;base64,...` → (Bedrock format, base64 data borrowed from the URL).
fn image_source(url: &str) -> Result<(&'static str, &str), ApiError> {
    match o::parse_image_url(url).map_err(|e| invalid(format!("image_url: {e}")))? {
        o::Image::Base64 { media_type, data } => {
            let format = match media_type.to_ascii_lowercase().as_str() {
                "image/png" => "png",
                "image/jpeg" | "image/jpg" => "jpeg",
                "image/gif" => "gif",
                "image/webp" => "webp",
                other => return Err(bad(format!("Bedrock accepts png, jpeg, gif and webp images, not {other:?}"))),
            };
            Ok((format, data))
        }
        o::Image::Url(_) => Err(bad("Bedrock needs the image bytes and cannot fetch image URLs: send the image as a \
                                     base64 data URL (data:image/png;base64,...)")),
    }
}

/// A `file_data` data URL → (Bedrock document format, base64 data borrowed from the URL).
fn document_source(data_url: &str) -> Result<(&'static str, &str), ApiError> {
    let (media_type, data) = match o::parse_image_url(data_url) {
        Ok(o::Image::Base64 { media_type, data }) => (media_type.to_ascii_lowercase(), data),
        _ => return Err(invalid("file.file_data must be a base64 data URL")),
    };
    let format = match media_type.as_str() {
        "application/pdf" => "pdf",
        "text/csv" => "csv",
        "application/msword" => "doc",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => "docx",
        "application/vnd.ms-excel" => "xls",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => "xlsx",
        "text/html" => "html",
        "text/plain" => "txt",
        "text/markdown" => "md",
        other => return Err(bad(format!("Bedrock does not accept documents of type {other:?}"))),
    };
    Ok((format, data))
}

/// Documents one request may carry (Bedrock takes a handful): bounds the names kept.
const MAX_DOCUMENTS: usize = 1000;

/// Bedrock document names: unique in a request, of letters, digits, single spaces, `-()[]`.
#[derive(Default)]
struct DocumentNames {
    taken: HashSet<String>,
    /// The next suffix to try for a base name.
    next: HashMap<String, u64>,
}

impl DocumentNames {
    fn name(&mut self, filename: Option<&str>) -> Result<String, ApiError> {
        if self.taken.len() >= MAX_DOCUMENTS {
            return Err(bad(format!("more than {MAX_DOCUMENTS} documents in one request; Bedrock takes a few")));
        }
        let stem = filename.map(|f| f.rsplit_once('.').map_or(f, |(s, _)| s)).unwrap_or("document");
        let mut clean = String::new();
        for c in stem.chars().take(400) {
            let c = if c.is_ascii_alphanumeric() || "-()[]".contains(c) { c } else { ' ' };
            if !(c == ' ' && (clean.is_empty() || clean.ends_with(' '))) {
                clean.push(c);
            }
        }
        let mut base: String = clean.trim_end().chars().take(100).collect();
        if base.is_empty() {
            base = "document".into();
        }
        let mut n = self.next.get(&base).copied().unwrap_or(1);
        let mut name = if n == 1 { base.clone() } else { format!("{base}-{n}") };
        while !self.taken.insert(name.clone()) {
            n = n.saturating_add(1);
            name = format!("{base}-{n}");
        }
        self.next.insert(base, n.saturating_add(1));
        Ok(name)
    }
}

/// How reasoning is asked of the model, in `additionalModelRequestFields`.
enum Reasoning<'a> {
    None,
    /// The client's `thinking` object, as it came (Claude).
    Thinking(&'a RawValue),
    /// `thinking` with a budget from `reasoning_effort` (Claude).
    Budget(u32),
    /// `reasoningConfig.maxReasoningEffort` (Amazon Nova 2).
    Effort(&'static str),
}

/// OpenAI chat request → Converse request body, every field decided, written as it is read.
/// `model` is the upstream model id. Returns the body and whether the client asked for usage.
fn to_converse(
    body: &[u8],
    model: &str,
    default_max_tokens: u32,
    out: BodyWriter<'_>,
) -> Result<(ChunkedBody, bool), ApiError> {
    let req: v::ChatRequestView = crate::json::from_bytes(body).map_err(malformed)?;
    let v::ChatRequestView {
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
    } = req;
    let include_usage = match stream_options.filter(|s| s.get() != "null") {
        Some(raw) => json::from_raw::<o::StreamOptions>(raw)
            .map_err(|e| malformed(format!("stream_options: {e}")))?
            .include_usage
            .unwrap_or(false),
        None => false,
    };
    if n.is_some_and(|n| n > 1) {
        return Err(bad("Bedrock returns one choice per request; `n` must be 1"));
    }
    if logprobs == Some(true) || top_logprobs.is_some() {
        return Err(bad("Bedrock Converse does not return log probabilities; remove `logprobs`/`top_logprobs`"));
    }
    if let Some(raw) = response_format.filter(|r| r.get() != "null") {
        let format: ResponseFormatIn = json::from_raw(raw).map_err(|e| malformed(format!("response_format: {e}")))?;
        if format.kind != "text" {
            return Err(bad(
                "Bedrock Converse has no JSON response mode; remove `response_format` or ask for JSON in the prompt",
            ));
        }
    }
    let has_logit_bias = logit_bias
        .is_some_and(|raw| raw.get().strip_prefix('{').is_some_and(|rest| !rest.trim_start().starts_with('}')));
    let changes_sampling: Vec<&str> = [
        ("presence_penalty", presence_penalty.is_some_and(|p| p != 0.0)),
        ("frequency_penalty", frequency_penalty.is_some_and(|p| p != 0.0)),
        ("logit_bias", has_logit_bias),
        ("parallel_tool_calls", parallel_tool_calls == Some(false)),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if !changes_sampling.is_empty() {
        log::warn!("llmgw: Bedrock cannot honour {}; dropped", changes_sampling.join(", "));
    }
    if log::log_enabled!(log::Level::Debug) {
        let unknown = v::unknown_members(body);
        let ignored: Vec<&str> = [
            ("seed", seed.is_some()),
            ("user", user.is_some()),
            ("metadata", metadata.is_some()),
            ("store", store.is_some()),
            ("service_tier", service_tier.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .chain(unknown.iter().map(String::as_str))
        .collect();
        if !ignored.is_empty() {
            log::debug!("llmgw: Bedrock backend ignores parameters: {}", ignored.join(", "));
        }
    }

    // Reasoning: decided before anything is written, as it can raise maxTokens.
    let mut max_tokens = max_completion_tokens.or(max_tokens);
    let effort = match reasoning_effort.as_deref() {
        None | Some("none") | Some("minimal") => None,
        Some(effort) => Some(
            THINKING_BUDGETS
                .iter()
                .find(|(name, _)| *name == effort)
                .ok_or_else(|| bad(format!("reasoning_effort {effort:?} is not one of low, medium, high")))?,
        ),
    };
    let thinking = match thinking.filter(|t| t.get() != "null") {
        None => None,
        Some(raw) => {
            let parsed: ThinkingIn = json::from_raw(raw).map_err(|e| {
                bad(format!("`thinking` must be an object like {{\"type\":\"enabled\",\"budget_tokens\":2048}}: {e}"))
            })?;
            Some((raw, parsed))
        }
    };
    let mut budget = None;
    let reasoning = match (thinking, effort) {
        (Some((raw, parsed)), _) if is_claude(model) => {
            if effort.is_some() {
                log::debug!("llmgw: Bedrock: `thinking` given, reasoning_effort dropped");
            }
            budget = parsed.budget_tokens.filter(|_| parsed.kind == "enabled");
            Reasoning::Thinking(raw)
        }
        (_, Some(&(_, tokens))) if is_claude(model) => {
            budget = Some(tokens);
            Reasoning::Budget(tokens)
        }
        (_, Some(&(name, _))) if is_nova_2(model) => Reasoning::Effort(name),
        (Some(_), _) | (_, Some(_)) => {
            log::warn!(
                "llmgw: Bedrock: reasoning_effort/thinking is only mapped for Claude and Nova 2 models; dropped for \
                 {model}"
            );
            Reasoning::None
        }
        (None, None) => Reasoning::None,
    };
    if let Some(budget) = budget {
        // Anthropic requires the thinking budget to be below max_tokens.
        let max = max_tokens.unwrap_or(default_max_tokens);
        max_tokens = Some(if max <= budget { max.saturating_add(budget) } else { max });
    }
    let stop = stop
        .filter(|s| s.get() != "null")
        .map(json::from_raw::<o::Stop>)
        .transpose()
        .map_err(|e| malformed(format!("stop: {e}")))?
        .map(o::Stop::into_vec)
        .unwrap_or_default();

    let mut c = Converse {
        out,
        documents: DocumentNames::default(),
        open: None,
        turns: 0,
        blocks_in_turn: 0,
        blocks: 0,
        history_has_tools: false,
    };
    c.put(b"{");
    c.messages(messages)?;
    c.system(messages)?;
    c.tool_config(tools, tool_choice)?;
    if max_tokens.is_some() || temperature.is_some() || top_p.is_some() || !stop.is_empty() {
        let mut fields = Vec::new();
        if let Some(m) = max_tokens {
            fields.push(format!("\"maxTokens\":{m}"));
        }
        if let Some(t) = temperature {
            fields.push(format!("\"temperature\":{}", serde_json::Value::from(t)));
        }
        if let Some(p) = top_p {
            fields.push(format!("\"topP\":{}", serde_json::Value::from(p)));
        }
        if !stop.is_empty() {
            let list = serde_json::to_string(&stop).map_err(malformed)?;
            fields.push(format!("\"stopSequences\":{list}"));
        }
        c.put(b",\"inferenceConfig\":{");
        c.put(fields.join(",").as_bytes());
        c.put(b"}");
    }
    match reasoning {
        Reasoning::None => {}
        Reasoning::Thinking(raw) => {
            c.put(b",\"additionalModelRequestFields\":{\"thinking\":");
            c.put(raw.get().as_bytes());
            c.put(b"}");
        }
        Reasoning::Budget(tokens) => c.put(
            format!(",\"additionalModelRequestFields\":{{\"thinking\":{{\"type\":\"enabled\",\"budget_tokens\":{tokens}}}}}")
                .as_bytes(),
        ),
        Reasoning::Effort(effort) => c.put(
            format!(
                ",\"additionalModelRequestFields\":{{\"reasoningConfig\":{{\"type\":\"enabled\",\"maxReasoningEffort\":\"{effort}\"}}}}"
            )
            .as_bytes(),
        ),
    }
    c.put(b"}");
    Ok((c.out.finish(), include_usage))
}

/// Bedrock stop reason → OpenAI finish reason.
pub fn finish_reason(reason: Option<b::StopReason>) -> &'static str {
    match reason {
        Some(b::StopReason::ToolUse) => "tool_calls",
        Some(b::StopReason::MaxTokens | b::StopReason::ModelContextWindowExceeded) => "length",
        Some(b::StopReason::GuardrailIntervened | b::StopReason::ContentFiltered) => "content_filter",
        Some(b::StopReason::EndTurn | b::StopReason::StopSequence | b::StopReason::Unknown) | None => "stop",
    }
}

/// Counts bytes instead of keeping them: sizes the answer before it is written.
struct Counter(usize);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn io_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Walks the content blocks of an answer.
fn each_block<'a>(
    content: Option<&'a RawValue>,
    mut f: impl FnMut(b::ContentBlockView<'a>) -> io::Result<()>,
) -> io::Result<()> {
    let Some(content) = content.filter(|c| c.get() != "null") else { return Ok(()) };
    each(content, &mut f).map_err(|e| match e {
        EachError::Json(e) => io_error(e),
        EachError::Stopped(e) => e,
    })
}

/// What the content of an answer holds (and a check that its texts are strings).
#[derive(Default)]
struct AnswerSummary {
    text: bool,
    reasoning: bool,
    /// Reasoning signatures or redacted (encrypted) reasoning: `reasoning_content` is text, and
    /// Bedrock takes neither back through this API (earlier turns' reasoning is dropped), so they
    /// are left out, with a debug note.
    opaque_reasoning: bool,
    tool_calls: usize,
}

fn text_of(raw: Option<&RawValue>) -> io::Result<Option<&str>> {
    match raw.map(RawValue::get) {
        None | Some("null") => Ok(None),
        Some(s) if s.starts_with('"') => Ok(Some(literal_inner(s))),
        Some(_) => Err(io_error("a text that is not a string")),
    }
}

fn summarize(content: Option<&RawValue>) -> io::Result<AnswerSummary> {
    let mut sum = AnswerSummary::default();
    each_block(content, |block| {
        sum.text |= text_of(block.text)?.is_some_and(|t| !t.is_empty());
        if let Some(r) = block.reasoning_content {
            sum.opaque_reasoning |= r.redacted_content.is_some();
            if let Some(r) = r.reasoning_text {
                sum.reasoning |= text_of(r.text)?.is_some_and(|t| !t.is_empty());
                sum.opaque_reasoning |= r.signature.is_some();
            }
        }
        if block.tool_use.is_some() {
            sum.tool_calls = sum.tool_calls.saturating_add(1);
        }
        Ok(())
    })?;
    Ok(sum)
}

/// Writes raw JSON as a JSON string holding it, minified (OpenAI's `arguments`).
fn write_json_text<W: Write>(w: &mut W, raw: &[u8]) -> io::Result<()> {
    w.write_all(b"\"")?;
    let (mut in_string, mut escaped, mut run) = (false, false, 0);
    for (i, &c) in raw.iter().enumerate() {
        let skip = !in_string && matches!(c, b' ' | b'\t' | b'\n' | b'\r');
        if in_string {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
        } else if c == b'"' {
            in_string = true;
        }
        if skip {
            w.write_all(raw.get(run..i).unwrap_or_default())?;
            run = i + 1;
        } else if c == b'"' || c == b'\\' {
            w.write_all(raw.get(run..i).unwrap_or_default())?;
            w.write_all(b"\\")?;
            run = i;
        }
    }
    w.write_all(raw.get(run..).unwrap_or_default())?;
    w.write_all(b"\"")
}

/// The identity of the answer being written.
struct Answer<'a> {
    id: &'a str,
    model: &'a str,
    created: u64,
}

/// Converse answer → OpenAI `chat.completion`, written from the borrowed view (texts joined from
/// their raw literals, tool inputs minified into `arguments`).
fn write_completion<W: Write>(
    w: &mut W,
    resp: &b::ConverseResponseView,
    sum: &AnswerSummary,
    answer: &Answer,
) -> io::Result<()> {
    let content = resp.output.message.as_ref().and_then(|m| m.content);
    w.write_all(b"{\"id\":")?;
    serde_json::to_writer(&mut *w, answer.id).map_err(io_error)?;
    write!(w, ",\"object\":\"chat.completion\",\"created\":{},\"model\":", answer.created)?;
    serde_json::to_writer(&mut *w, answer.model).map_err(io_error)?;
    w.write_all(b",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":")?;
    if sum.text || sum.tool_calls == 0 {
        w.write_all(b"\"")?;
        each_block(content, |block| {
            if let Some(text) = text_of(block.text)? {
                w.write_all(text.as_bytes())?;
            }
            Ok(())
        })?;
        w.write_all(b"\"")?;
    } else {
        w.write_all(b"null")?;
    }
    if sum.reasoning {
        w.write_all(b",\"reasoning_content\":\"")?;
        each_block(content, |block| {
            if let Some(r) = block.reasoning_content.and_then(|r| r.reasoning_text) {
                if let Some(text) = text_of(r.text)? {
                    w.write_all(text.as_bytes())?;
                }
            }
            Ok(())
        })?;
        w.write_all(b"\"")?;
    }
    if sum.tool_calls > 0 {
        w.write_all(b",\"tool_calls\":[")?;
        let mut n = 0usize;
        each_block(content, |block| {
            let Some(tool) = block.tool_use else { return Ok(()) };
            if n > 0 {
                w.write_all(b",")?;
            }
            w.write_all(b"{\"id\":")?;
            match &tool.tool_use_id {
                Some(id) => serde_json::to_writer(&mut *w, id).map_err(io_error)?,
                None => write!(w, "\"tooluse_{n}\"")?,
            }
            w.write_all(b",\"type\":\"function\",\"function\":{\"name\":")?;
            serde_json::to_writer(&mut *w, tool.name.as_deref().unwrap_or_default()).map_err(io_error)?;
            w.write_all(b",\"arguments\":")?;
            match tool.input.filter(|i| i.get() != "null") {
                Some(input) => write_json_text(w, input.get().as_bytes())?,
                None => w.write_all(b"\"{}\"")?,
            }
            w.write_all(b"}}")?;
            n = n.saturating_add(1);
            Ok(())
        })?;
        w.write_all(b"]")?;
    }
    write!(w, "}},\"finish_reason\":\"{}\"}}]", finish_reason(resp.stop_reason))?;
    if let Some(usage) = resp.usage {
        w.write_all(b",\"usage\":")?;
        serde_json::to_writer(&mut *w, &o::Usage::from(usage.to_tokens())).map_err(io_error)?;
    }
    w.write_all(b"}")
}

/// A non-streaming Converse answer → the client's `chat.completion` (exactly sized) and usage.
fn completion(body: &[u8], answer: &Answer) -> Result<(Vec<u8>, Option<crate::usage::TokenUsage>), String> {
    let resp: b::ConverseResponseView = crate::json::from_bytes(body).map_err(|e| e.to_string())?;
    let content = resp.output.message.as_ref().and_then(|m| m.content);
    let sum = summarize(content).map_err(|e| e.to_string())?;
    if sum.opaque_reasoning {
        log::debug!("llmgw: Bedrock: reasoning signatures/redacted reasoning are not passed on (text only)");
    }
    let mut counter = Counter(0);
    write_completion(&mut counter, &resp, &sum, answer).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(counter.0);
    write_completion(&mut out, &resp, &sum, answer).map_err(|e| e.to_string())?;
    Ok((out, resp.usage.map(|u| u.to_tokens())))
}

/// The OpenAI error `type` for a Bedrock exception name.
pub(crate) fn exception_kind(exception: &str) -> ErrorKind {
    match exception.to_ascii_lowercase().trim_end_matches("exception") {
        "throttling" | "servicequotaexceeded" => ErrorKind::RateLimit,
        "validation" => ErrorKind::InvalidRequest,
        "accessdenied" => ErrorKind::Permission,
        "resourcenotfound" => ErrorKind::NotFound,
        "unrecognizedclient" | "expiredtoken" | "invalidsignature" => ErrorKind::Authentication,
        _ => ErrorKind::Server,
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(MAX_ERROR_MESSAGE).collect()
}

/// The message of a Bedrock error payload (`{"message": ...}`), or its text.
fn error_message(payload: &[u8]) -> String {
    if let Some(m) = crate::json::from_bytes::<b::ErrorBodyView>(payload).ok().and_then(|e| e.text()) {
        return truncate(&m);
    }
    let head = payload.get(..MAX_ERROR_MESSAGE * 4).unwrap_or(payload);
    truncate(String::from_utf8_lossy(head).trim())
}

/// What an eventstream message is. Liberal: a message without `:message-type` (or with one this
/// gateway does not know) is typed by the headers it has.
pub fn message_kind(message: &eventstream::Message) -> Kind<'_> {
    match message.kind() {
        Kind::Unknown => {
            if let Some(exception) = message.header(":exception-type") {
                Kind::Exception(exception)
            } else if let Some(code) = message.header(":error-code") {
                Kind::Error { code, message: message.header(":error-message").unwrap_or("") }
            } else {
                Kind::Event(message.header(":event-type").unwrap_or(""))
            }
        }
        kind => kind,
    }
}

/// An exception or error message of an eventstream, as (exception name, message).
pub fn stream_exception(message: &eventstream::Message) -> Option<(String, String)> {
    match message_kind(message) {
        Kind::Exception(exception) => Some((exception.to_string(), error_message(message.payload()))),
        Kind::Error { code, message } => Some((code.to_string(), truncate(message))),
        Kind::Event(_) | Kind::Unknown => None,
    }
}

/// Ids for responses Bedrock does not name: unique per VM, not guessable from the request alone.
fn response_id(body: &[u8], now_unix: u64) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in body.iter().copied().chain(now_unix.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("chatcmpl-{hash:016x}{n:08x}")
}

/// Converse stream events → OpenAI chunks, one eventstream message at a time.
#[derive(Default)]
struct ChunkWriter {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// Bedrock content block index → OpenAI tool call index.
    tool_index: HashMap<u32, u32>,
    /// Tool calls started so far.
    tools: u32,
    /// The OpenAI index of the last tool call started (for deltas without a usable block index).
    last_tool: Option<u32>,
    usage: Option<b::TokenUsage>,
    stopped: bool,
    done: bool,
    saw_content: bool,
}

impl ChunkWriter {
    fn chunk(&self, delta: o::Delta, finish_reason: Option<String>) -> o::ChatChunk {
        o::ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![o::ChunkChoice { index: 0, delta, finish_reason }],
            usage: None,
        }
    }

    fn content(&mut self, delta: o::Delta, out: &mut Vec<u8>) {
        self.saw_content = true;
        o::sse_data(out, &self.chunk(delta, None));
    }

    /// Starts an OpenAI tool call; returns its index.
    fn start_tool(&mut self, block: Option<u32>, id: Option<String>, name: Option<String>, out: &mut Vec<u8>) -> u32 {
        let index = self.tools;
        self.tools = self.tools.saturating_add(1);
        if let Some(block) = block {
            if self.tool_index.len() >= MAX_TRACKED_BLOCKS {
                // Bounded: deltas of forgotten blocks go to the last tool call started.
                self.tool_index.clear();
            }
            self.tool_index.insert(block, index);
        }
        self.last_tool = Some(index);
        let call = o::ToolCallDelta {
            index,
            id: Some(id.unwrap_or_else(|| format!("tooluse_{index}"))),
            kind: Some("function".into()),
            function: o::FunctionCallDelta { name: Some(name.unwrap_or_default()), arguments: Some(String::new()) },
        };
        self.content(o::Delta { tool_calls: Some(vec![call]), ..Default::default() }, out);
        index
    }

    fn on_message(&mut self, message: &eventstream::Message, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if let Some((exception, text)) = stream_exception(message) {
            self.fail(&text, exception_kind(&exception), &exception, out);
            return;
        }
        let Kind::Event(event_type) = message_kind(message) else { return };
        let named = Some(event_type).filter(|t| !t.is_empty());
        let event = match b::StreamEvent::parse(named, message.payload()) {
            Ok(event) => event,
            Err(e) => {
                log::warn!("llmgw: skipped a Bedrock {event_type} event that did not parse: {e}");
                return;
            }
        };
        match event {
            b::StreamEvent::MessageStart => {
                let delta =
                    o::Delta { role: Some("assistant".into()), content: Some(String::new()), ..Default::default() };
                o::sse_data(out, &self.chunk(delta, None));
            }
            b::StreamEvent::ContentBlockStart(start) => {
                if let Some(tool) = start.start.tool_use {
                    self.start_tool(start.content_block_index, tool.tool_use_id, tool.name, out);
                }
            }
            b::StreamEvent::ContentBlockDelta(d) => {
                let b::Delta { text, tool_use, reasoning_content } = d.delta;
                // Bedrock opens a tool's input with an empty piece; OpenAI streams send none.
                let tool_use = tool_use.filter(|t| !t.input.is_empty());
                if let Some(text) = text.filter(|t| !t.is_empty()) {
                    self.content(o::Delta { content: Some(text), ..Default::default() }, out);
                } else if let Some(tool_use) = tool_use {
                    let known = d.content_block_index.and_then(|block| self.tool_index.get(&block).copied());
                    let index = match known.or(self.last_tool) {
                        Some(index) => index,
                        None => {
                            log::warn!("llmgw: Bedrock tool input without its contentBlockStart; given an id");
                            self.start_tool(d.content_block_index, None, None, out)
                        }
                    };
                    let call = o::ToolCallDelta {
                        index,
                        id: None,
                        kind: None,
                        function: o::FunctionCallDelta { name: None, arguments: Some(tool_use.input) },
                    };
                    self.content(o::Delta { tool_calls: Some(vec![call]), ..Default::default() }, out);
                } else if let Some(reasoning) = reasoning_content {
                    if let Some(text) = reasoning.text.filter(|t| !t.is_empty()) {
                        self.content(o::Delta { reasoning_content: Some(text), ..Default::default() }, out);
                    } else if reasoning.signature.is_some() || reasoning.redacted_content.is_some() {
                        log::debug!("llmgw: Bedrock: a reasoning signature/redacted reasoning is not passed on");
                    }
                }
            }
            b::StreamEvent::MessageStop(stop) => {
                self.stopped = true;
                let finish = finish_reason(stop.stop_reason).to_string();
                o::sse_data(out, &self.chunk(o::Delta::default(), Some(finish)));
            }
            b::StreamEvent::Metadata(metadata) => {
                self.usage = metadata.usage.or(self.usage);
                self.close(out);
            }
            b::StreamEvent::ContentBlockStop | b::StreamEvent::Unknown => {}
        }
    }

    /// An error event the OpenAI SDKs raise on, then `[DONE]`.
    fn fail(&mut self, message: &str, kind: ErrorKind, code: &str, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.done = true;
        let body = serde_json::json!({"error": {"message": message, "type": kind.as_str(), "code": code}});
        o::sse_data(out, &body);
        out.extend_from_slice(o::SSE_DONE);
    }

    /// The usage chunk (when asked for) and `[DONE]`, once.
    fn close(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.done = true;
        if self.include_usage {
            let mut chunk = self.chunk(o::Delta::default(), None);
            chunk.choices.clear();
            chunk.usage = Some(o::Usage::from(self.usage.unwrap_or_default().to_tokens()));
            o::sse_data(out, &chunk);
        }
        out.extend_from_slice(o::SSE_DONE);
    }
}

pub struct OpenAIToBedrock {
    id: String,
    model: String,
    created: u64,
    stream: bool,
    streaming_response: bool,
    decoder: eventstream::Decoder,
    writer: ChunkWriter,
}

impl OpenAIToBedrock {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        OpenAIToBedrock {
            id: String::new(),
            model: String::new(),
            created: 0,
            stream: false,
            streaming_response: false,
            decoder: eventstream::Decoder::default(),
            writer: ChunkWriter::default(),
        }
    }
}

impl Translator for OpenAIToBedrock {
    fn request_body(&mut self, request: &RequestContext) -> Result<RequestEdits, ApiError> {
        let RequestContext { info, body, backend, query: _, now_unix, sink: _ } = request;
        let model = backend.model_override.clone().unwrap_or_else(|| info.model.clone());
        let default_max_tokens = match &backend.api {
            BackendApi::AWSBedrock { default_max_tokens, .. } => *default_max_tokens,
            BackendApi::OpenAI { .. }
            | BackendApi::AzureOpenAI { .. }
            | BackendApi::Anthropic { .. }
            | BackendApi::AWSAnthropic { .. }
            | BackendApi::GCPVertexAI { .. }
            | BackendApi::GCPAnthropic { .. } => return Err(super::wrong_backend(backend, "Bedrock Converse")),
        };
        let (new_body, include_usage) = to_converse(body, &model, default_max_tokens, request.writer())?;
        self.id = response_id(body, *now_unix);
        self.model = model.clone();
        self.created = *now_unix;
        self.stream = info.stream;
        self.writer = ChunkWriter {
            id: self.id.clone(),
            model: model.clone(),
            created: *now_unix,
            include_usage,
            ..Default::default()
        };
        Ok(RequestEdits {
            path: Some(converse_path(&backend.prefix, &model, info.stream)),
            body: Some(NewBody::whole(new_body)),
            set_headers: vec![("content-type".into(), "application/json".into())],
        })
    }

    fn response_headers(&mut self, _status: u16, content_type: &str) -> ResponsePlan {
        self.streaming_response = self.stream
            && content_type.trim_start().to_ascii_lowercase().starts_with("application/vnd.amazon.eventstream");
        let content_type = if self.streaming_response { "text/event-stream" } else { "application/json" };
        ResponsePlan {
            mode: if self.streaming_response { BodyMode::Stream } else { BodyMode::Buffer },
            set_headers: vec![("content-type", content_type.into())],
            remove_headers: vec!["content-length"],
        }
    }

    fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> ChunkEdits {
        if !self.streaming_response {
            let answer = Answer { id: &self.id, model: &self.model, created: self.created };
            return match completion(chunk, &answer) {
                Ok((body, usage)) => ChunkEdits { replace: Some(body), usage, first_content: false, status: None },
                Err(e) => {
                    let message = if chunk.iter().all(u8::is_ascii_whitespace) {
                        "the Bedrock response was empty".to_string()
                    } else {
                        format!("the Bedrock response could not be read: {e}")
                    };
                    ChunkEdits::unreadable(error_json(&message, "server_error", "invalid_upstream_response"))
                }
            };
        }
        let mut out = Vec::new();
        let had_content = self.writer.saw_content;
        let had_usage = self.writer.usage.is_some();
        let writer = &mut self.writer;
        let mut result = self.decoder.push(chunk, |message| writer.on_message(&message, &mut out));
        if end_of_stream && result.is_ok() {
            result = self.decoder.finish();
        }
        if let Err(e) = result {
            log::warn!("llmgw: Bedrock stream: {e}");
            writer.fail(&e.to_string(), ErrorKind::Server, "invalid_upstream_response", &mut out);
        }
        if end_of_stream && !writer.stopped {
            writer.fail(
                "the Bedrock stream ended before its messageStop event",
                ErrorKind::Server,
                "upstream_error",
                &mut out,
            );
        } else if end_of_stream && !writer.done {
            writer.fail(
                "the Bedrock stream ended before its metadata event",
                ErrorKind::Server,
                "upstream_error",
                &mut out,
            );
        }
        let usage = writer.usage.map(|u| u.to_tokens());
        ChunkEdits {
            replace: Some(out),
            usage: if end_of_stream || (!had_usage && usage.is_some()) { usage } else { None },
            first_content: !had_content && writer.saw_content,
            status: None,
        }
    }

    fn error_body(&mut self, status: u16, body: &[u8]) -> Option<Vec<u8>> {
        let message = upstream_error_message(body)
            .unwrap_or_else(|| format!("upstream returned HTTP {status} with an empty body"));
        Some(error_json(&message, ErrorKind::for_status(status).as_str(), "upstream_error"))
    }
}

/// The message of an upstream error body: Bedrock JSON, an eventstream exception, or plain text.
/// Nothing is copied whole: JSON is read through a borrowed view, eventstream in pieces.
fn upstream_error_message(body: &[u8]) -> Option<String> {
    if let Some(m) = crate::json::from_bytes::<b::ErrorBodyView>(body).ok().and_then(|e| e.text()) {
        return Some(truncate(&m));
    }
    let mut decoder = eventstream::Decoder::default();
    let mut found = None;
    for piece in body.chunks(crate::body::CHUNK) {
        let pushed = decoder.push(piece, |m| found = found.take().or_else(|| stream_exception(&m)));
        if pushed.is_err() || found.is_some() {
            break;
        }
    }
    if let Some((exception, message)) = found {
        return Some(format!("{exception}: {message}"));
    }
    let head = body.get(..MAX_ERROR_MESSAGE * 4).unwrap_or(body);
    let text = String::from_utf8_lossy(head);
    let text = text.trim();
    (!text.is_empty()).then(|| truncate(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Schema;
    use crate::eventstream::{encode_for_test, event_for_test};
    use crate::request::read;
    use crate::usage::TokenUsage;
    use serde_json::Value;

    fn translate(body: &str) -> Result<(RequestEdits, OpenAIToBedrock), ApiError> {
        let backend = crate::testing::backend(Schema::AWSBedrock);
        let mut t = OpenAIToBedrock::new();
        let info = read(body.as_bytes()).unwrap();
        let ctx = RequestContext {
            info: &info,
            body: body.as_bytes(),
            backend: &backend,
            query: "?x=1",
            now_unix: 1700,
            sink: Default::default(),
        };
        t.request_body(&ctx).map(|e| (e, t))
    }

    fn body_json(edits: &RequestEdits) -> Value {
        serde_json::from_slice(&edits.body.as_ref().unwrap().apply_to(b"")).unwrap()
    }

    #[test]
    fn request_maps_every_part() {
        let (edits, _) = translate(
            r#"{"model":"anthropic.claude-3-5-sonnet-20240620-v1:0","max_tokens":300,"temperature":0.2,"top_p":0.9,"stop":"END",
                "messages":[{"role":"system","content":"be brief"},
                  {"role":"user","content":[{"type":"text","text":"what is this?"},{"type":"image_url","image_url":{"url":"data:image/jpeg;base64,/9j/AA=="}}]},
                  {"role":"assistant","content":"calling","tool_calls":[{"id":"tooluse_1","type":"function","function":{"name":"get","arguments":"{\"q\":1}"}}]},
                  {"role":"tool","tool_call_id":"tooluse_1","content":"result"},
                  {"role":"user","content":"thanks"}],
                "tools":[{"type":"function","function":{"name":"get","description":"d","parameters":{"type":"object"}}}],
                "tool_choice":"required","seed":3,"user":"u1"}"#,
        )
        .unwrap();
        assert_eq!(edits.path.as_deref(), Some("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"));
        assert_eq!(
            body_json(&edits),
            serde_json::json!({
                "messages":[
                  {"role":"user","content":[{"text":"what is this?"},{"image":{"format":"jpeg","source":{"bytes":"/9j/AA=="}}}]},
                  {"role":"assistant","content":[{"text":"calling"},{"toolUse":{"toolUseId":"tooluse_1","name":"get","input":{"q":1}}}]},
                  {"role":"user","content":[{"toolResult":{"toolUseId":"tooluse_1","content":[{"text":"result"}]}},{"text":"thanks"}]}],
                "system":[{"text":"be brief"}],
                "inferenceConfig":{"maxTokens":300,"temperature":0.2,"topP":0.9,"stopSequences":["END"]},
                "toolConfig":{"tools":[{"toolSpec":{"name":"get","description":"d","inputSchema":{"json":{"type":"object"}}}}],"toolChoice":{"any":{}}}
            })
        );
        assert!(edits.set_headers.contains(&("content-type".into(), "application/json".into())));
    }

    #[test]
    fn stream_path_and_model_override() {
        let mut backend = crate::testing::backend(Schema::AWSBedrock);
        backend.model_override =
            Some("arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.amazon.nova-pro-v1:0".into());
        let body = br#"{"model":"nova","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let info = read(body).unwrap();
        let mut t = OpenAIToBedrock::new();
        let ctx = RequestContext::new(&info, body, &backend);
        let edits = t.request_body(&ctx).unwrap();
        assert_eq!(
            edits.path.as_deref(),
            Some("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.amazon.nova-pro-v1%3A0/converse-stream")
        );
        assert_eq!(body_json(&edits), serde_json::json!({"messages":[{"role":"user","content":[{"text":"hi"}]}]}));
    }

    #[test]
    fn refuses_what_bedrock_cannot_do() {
        let cases = [
            (r#""n":2"#, "`n` must be 1"),
            (r#""logprobs":true"#, "log probabilities"),
            (r#""response_format":{"type":"json_object"}"#, "JSON response mode"),
            (r#""reasoning_effort":"max""#, "reasoning_effort"),
            (r#""tools":[{"type":"custom","function":{"name":"f"}}]"#, "tool type"),
            (r#""tool_choice":"sometimes","tools":[{"type":"function","function":{"name":"f"}}]"#, "tool_choice"),
        ];
        for (extra, want) in cases {
            let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],{extra}}}"#);
            let e = translate(&body).err().unwrap_or_else(|| panic!("{extra} was accepted"));
            assert_eq!(e.status, 400, "{extra}");
            assert!(e.message.contains(want), "{extra}: {}", e.message);
        }
        let parts = [
            (r#"{"type":"image_url","image_url":{"url":"https://example.com/cat.png"}}"#, "base64 data URL"),
            (r#"{"type":"image_url","image_url":{"url":"data:image/bmp;base64,AA"}}"#, "image/bmp"),
            (r#"{"type":"input_audio","input_audio":{"data":"AA","format":"wav"}}"#, "audio"),
            (r#"{"type":"file","file":{"file_id":"file-1"}}"#, "file_data"),
            (r#"{"type":"file","file":{"file_data":"data:application/zip;base64,AA"}}"#, "application/zip"),
        ];
        for (part, want) in parts {
            let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":[{part}]}}]}}"#);
            let e = translate(&body).err().unwrap_or_else(|| panic!("{part} was accepted"));
            assert!(e.message.contains(want), "{part}: {}", e.message);
        }
        let e = translate(
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":"{bad"}}]}]}"#,
        )
        .err()
        .unwrap();
        assert!(e.message.contains("not JSON"));
    }

    #[test]
    fn tool_choice_none_and_named_and_documents() {
        let tools = r#""tools":[{"type":"function","function":{"name":"f"}}]"#;
        let (edits, _) = translate(&format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],{tools},"tool_choice":"none"}}"#
        ))
        .unwrap();
        assert_eq!(body_json(&edits).get("toolConfig"), None);
        let history = r#"{"role":"assistant","tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":""}}]},{"role":"tool","tool_call_id":"t","content":[{"type":"text","text":"ok"}]}"#;
        let (edits, _) = translate(&format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"x"}},{history}],{tools},"tool_choice":"none"}}"#
        ))
        .unwrap();
        let v = body_json(&edits);
        assert_eq!(
            v["toolConfig"],
            serde_json::json!({"tools":[{"toolSpec":{"name":"f","inputSchema":{"json":{"type":"object","properties":{}}}}}]})
        );
        assert_eq!(v["messages"][1]["content"][0]["toolUse"]["input"], serde_json::json!({}));
        let (edits, _) = translate(&format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],{tools},"tool_choice":{{"type":"function","function":{{"name":"f"}}}}}}"#
        ))
        .unwrap();
        assert_eq!(body_json(&edits)["toolConfig"]["toolChoice"], serde_json::json!({"tool":{"name":"f"}}));
        let (edits, _) = translate(
            r#"{"model":"m","messages":[{"role":"user","content":[
                {"type":"file","file":{"file_data":"data:application/pdf;base64,JVBE","filename":"Q3 report.v2.pdf"}},
                {"type":"file","file":{"file_data":"data:text/plain;base64,aGk=","filename":"Q3 report.v2.txt"}}]}]}"#,
        )
        .unwrap();
        let v = body_json(&edits);
        assert_eq!(
            v["messages"][0]["content"][0]["document"],
            serde_json::json!({"format":"pdf","name":"Q3 report v2","source":{"bytes":"JVBE"}})
        );
        assert_eq!(v["messages"][0]["content"][1]["document"]["name"], "Q3 report v2-2");
    }

    #[test]
    fn reasoning_effort_becomes_thinking_for_claude_only() {
        let (edits, _) = translate(
            r#"{"model":"anthropic.claude-sonnet-4","reasoning_effort":"medium","max_tokens":1000,"messages":[{"role":"user","content":"x"}]}"#,
        )
        .unwrap();
        let v = body_json(&edits);
        assert_eq!(
            v["additionalModelRequestFields"],
            serde_json::json!({"thinking":{"type":"enabled","budget_tokens":4096}})
        );
        assert_eq!(v["inferenceConfig"]["maxTokens"], 5096);
        let (edits, _) = translate(
            r#"{"model":"amazon.nova-pro-v1:0","reasoning_effort":"high","messages":[{"role":"user","content":"x"}]}"#,
        )
        .unwrap();
        let v = body_json(&edits);
        assert_eq!(v.get("additionalModelRequestFields"), None);
        assert_eq!(v.get("inferenceConfig"), None);
    }

    #[test]
    fn response_becomes_chat_completion() {
        let (_, mut t) = translate(r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#).unwrap();
        let plan = t.response_headers(200, "application/json");
        assert_eq!(plan.mode, BodyMode::Buffer);
        let body = br#"{"output":{"message":{"role":"assistant","content":[
            {"reasoningContent":{"reasoningText":{"text":"hmm","signature":"sig"}}},
            {"text":"Let me check."},{"toolUse":{"toolUseId":"tooluse_9","name":"get","input":{"q":"x"}}}]}},
            "stopReason":"tool_use","usage":{"inputTokens":10,"outputTokens":5,"totalTokens":20,"cacheReadInputTokens":5},
            "metrics":{"latencyMs":100}}"#;
        let edits = t.response_body(body, true);
        let v: Value = serde_json::from_slice(&edits.replace.unwrap()).unwrap();
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(
            v["choices"][0],
            serde_json::json!({"index":0,"finish_reason":"tool_calls","message":{"role":"assistant","content":"Let me check.",
                "reasoning_content":"hmm",
                "tool_calls":[{"id":"tooluse_9","type":"function","function":{"name":"get","arguments":"{\"q\":\"x\"}"}}]}})
        );
        assert_eq!((v["model"].as_str(), v["created"].as_u64()), (Some("m"), Some(1700)));
        assert_eq!(v["usage"]["prompt_tokens"], 15);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 5);
        assert_eq!(edits.usage.map(|u| (u.input, u.output, u.total)), Some((15, 5, 20)));
    }

    fn stream_frames() -> Vec<u8> {
        [
            event_for_test(
                "messageStart",
                r#"{"p":"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTU","role":"assistant"}"#,
            ),
            event_for_test(
                "contentBlockDelta",
                r#"{"contentBlockIndex":0,"delta":{"reasoningContent":{"text":"think"}},"p":"abc"}"#,
            ),
            event_for_test(
                "contentBlockDelta",
                r#"{"contentBlockIndex":0,"delta":{"reasoningContent":{"signature":"sig"}}}"#,
            ),
            event_for_test("contentBlockStop", r#"{"contentBlockIndex":0}"#),
            event_for_test("contentBlockDelta", r#"{"contentBlockIndex":1,"delta":{"text":"Hel"}}"#),
            event_for_test("contentBlockDelta", r#"{"contentBlockIndex":1,"delta":{"text":"lo"}}"#),
            event_for_test("contentBlockStop", r#"{"contentBlockIndex":1}"#),
            event_for_test(
                "contentBlockStart",
                r#"{"contentBlockIndex":2,"start":{"toolUse":{"toolUseId":"tooluse_a","name":"get"}}}"#,
            ),
            event_for_test("contentBlockDelta", r#"{"contentBlockIndex":2,"delta":{"toolUse":{"input":"{\"q\":"}}}"#),
            event_for_test("contentBlockDelta", r#"{"contentBlockIndex":2,"delta":{"toolUse":{"input":"1}"}}}"#),
            event_for_test("contentBlockStop", r#"{"contentBlockIndex":2}"#),
            event_for_test("messageStop", r#"{"stopReason":"tool_use"}"#),
            event_for_test(
                "metadata",
                r#"{"usage":{"inputTokens":25,"outputTokens":9,"totalTokens":34},"metrics":{"latencyMs":300}}"#,
            ),
        ]
        .concat()
    }

    fn run_stream(t: &mut OpenAIToBedrock, chunks: &[&[u8]]) -> (String, Option<TokenUsage>, usize) {
        let plan = t.response_headers(200, "application/vnd.amazon.eventstream");
        assert_eq!(plan.mode, BodyMode::Stream);
        assert_eq!(plan.set_headers, vec![("content-type", "text/event-stream".to_string())]);
        assert_eq!(plan.remove_headers, vec!["content-length"]);
        let mut out = Vec::new();
        let (mut usage, mut firsts) = (None, 0);
        for (i, c) in chunks.iter().enumerate() {
            let e = t.response_body(c, i + 1 == chunks.len());
            out.extend(e.replace.unwrap());
            usage = e.usage.or(usage);
            firsts += usize::from(e.first_content);
        }
        (String::from_utf8(out).unwrap(), usage, firsts)
    }

    fn data_lines(sse: &str) -> Vec<Value> {
        sse.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    #[test]
    fn stream_becomes_chunks_at_every_split() {
        let frames = stream_frames();
        let body = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x"}]}"#;
        let (_, mut t) = translate(body).unwrap();
        let (reference, usage, firsts) = run_stream(&mut t, &[&frames, b""]);
        assert_eq!((usage.map(|u| u.total), firsts), (Some(34), 1));
        assert!(reference.ends_with("data: [DONE]\n\n"));
        let chunks = data_lines(&reference);
        let deltas: Vec<Value> = chunks.iter().map(|c| c["choices"][0]["delta"].clone()).collect();
        assert_eq!(deltas[0], serde_json::json!({"role":"assistant","content":""}));
        assert_eq!(deltas[1], serde_json::json!({"reasoning_content":"think"}));
        assert_eq!(deltas[2], serde_json::json!({"content":"Hel"}));
        assert_eq!(
            deltas[4],
            serde_json::json!({"tool_calls":[{"index":0,"id":"tooluse_a","type":"function","function":{"name":"get","arguments":""}}]})
        );
        assert_eq!(deltas[5], serde_json::json!({"tool_calls":[{"index":0,"function":{"arguments":"{\"q\":"}}]}));
        assert_eq!(chunks[7]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[8]["choices"], serde_json::json!([]));
        assert_eq!(chunks[8]["usage"]["total_tokens"], 34);
        assert_eq!(chunks.len(), 9);
        let id = chunks[0]["id"].clone();
        assert!(chunks.iter().all(|c| c["id"] == id && c["object"] == "chat.completion.chunk" && c["model"] == "m"));
        for cut in 0..=frames.len() {
            let (_, mut t) = translate(body).unwrap();
            t.writer.id = id.as_str().unwrap().to_string();
            let (a, b) = frames.split_at(cut);
            let (got, usage, firsts) = run_stream(&mut t, &[a, b, b""]);
            assert_eq!(got, reference, "cut {cut}");
            assert_eq!((usage.map(|u| u.total), firsts), (Some(34), 1), "cut {cut}");
        }
    }

    #[test]
    fn usage_chunk_only_when_asked_and_done_even_without_metadata_usage() {
        let frames = stream_frames();
        let (_, mut t) = translate(r#"{"model":"m","stream":true,"messages":[]}"#).unwrap();
        let (out, usage, _) = run_stream(&mut t, &[&frames, b""]);
        assert!(data_lines(&out).iter().all(|c| c.get("usage").is_none()));
        assert_eq!(usage.map(|u| u.input), Some(25), "usage is still counted");
        assert_eq!(out.matches("[DONE]").count(), 1);
    }

    #[test]
    fn stream_exceptions_and_corruption_become_error_events() {
        let mut frames = event_for_test("messageStart", r#"{"role":"assistant"}"#);
        frames.extend(encode_for_test(
            &[
                (":message-type", "exception"),
                (":exception-type", "throttlingException"),
                (":content-type", "application/json"),
            ],
            br#"{"message":"Too many requests, please wait before trying again."}"#,
        ));
        frames.extend(event_for_test("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":"late"}}"#));
        let (_, mut t) = translate(r#"{"model":"m","stream":true,"messages":[]}"#).unwrap();
        let (out, _, _) = run_stream(&mut t, &[&frames, b""]);
        let chunks = data_lines(&out);
        assert_eq!(
            chunks[1],
            serde_json::json!({"error":{"message":"Too many requests, please wait before trying again.","type":"rate_limit_error","code":"throttlingException"}})
        );
        assert_eq!(chunks.len(), 2);
        assert!(out.ends_with("data: [DONE]\n\n") && !out.contains("late"));

        let mut frames = event_for_test("messageStart", r#"{"role":"assistant"}"#);
        let last = frames.len() - 1;
        frames[last] ^= 0xff;
        let (_, mut t) = translate(r#"{"model":"m","stream":true,"messages":[]}"#).unwrap();
        let (out, _, _) = run_stream(&mut t, &[&frames, b""]);
        let chunks = data_lines(&out);
        assert_eq!(chunks[0]["error"]["code"], "invalid_upstream_response");
        assert!(chunks[0]["error"]["message"].as_str().unwrap().contains("checksum"));
        assert_eq!(out.matches("[DONE]").count(), 1);

        // A stream cut short is an error, not a silent success.
        let frames = event_for_test("messageStart", r#"{"role":"assistant"}"#);
        let (_, mut t) = translate(r#"{"model":"m","stream":true,"messages":[]}"#).unwrap();
        let (out, _, _) = run_stream(&mut t, &[&frames, b""]);
        assert!(out.contains("ended before its messageStop"), "{out}");
    }

    #[test]
    fn upstream_errors_keep_status_kind_and_message() {
        let (_, mut t) = translate(r#"{"model":"m","messages":[]}"#).unwrap();
        let v: Value = serde_json::from_slice(
            &t.error_body(400, br#"{"message":"The provided model identifier is invalid."}"#).unwrap(),
        )
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error":{"message":"The provided model identifier is invalid.","type":"invalid_request_error","code":"upstream_error","param":null}})
        );
        let v: Value = serde_json::from_slice(&t.error_body(403, br#"{"Message":"denied"}"#).unwrap()).unwrap();
        assert_eq!(
            (v["error"]["message"].as_str(), v["error"]["type"].as_str()),
            (Some("denied"), Some("permission_error"))
        );
        let framed = encode_for_test(
            &[(":message-type", "exception"), (":exception-type", "modelStreamErrorException")],
            br#"{"message":"model failed"}"#,
        );
        let v: Value = serde_json::from_slice(&t.error_body(424, &framed).unwrap()).unwrap();
        assert_eq!(v["error"]["message"], "modelStreamErrorException: model failed");
        let v: Value = serde_json::from_slice(&t.error_body(503, b"").unwrap()).unwrap();
        assert_eq!(v["error"]["message"], "upstream returned HTTP 503 with an empty body");
        let v: Value = serde_json::from_slice(&t.error_body(502, b"bad gateway").unwrap()).unwrap();
        assert_eq!(
            (v["error"]["message"].as_str(), v["error"]["type"].as_str()),
            (Some("bad gateway"), Some("server_error"))
        );
    }

    /// The whole exchange: routing, translation, SigV4 over the final request, eventstream → SSE.
    #[test]
    fn exchange_signs_and_streams() {
        use std::rc::Rc;

        use crate::auth::{sigv4, Outgoing};
        use crate::config::{parse, Credential};
        use crate::exchange::{Exchange, Shared};
        use crate::host::Host;
        use crate::testing::FakeHost;

        use crate::testing::NoEnv;
        let config = parse(
            b"backends: [{name: bedrock, schema: AWSBedrock, region: eu-west-3, model_override: 'mistral.mistral-large-2407-v1:0',
               auth: {aws: {access_key_id: AKIDEXAMPLE, secret_access_key: secret, session_token: tok}}}]",
            &NoEnv,
            0,
        )
        .unwrap();
        let Some(Credential::Aws { credential, .. }) = config.backends[0].credential() else { panic!() };
        let credential = credential.clone();
        let mut x = Exchange::new(Some(Rc::new(Shared::new(config))));
        // Thousands of turns: the new body is several chunks, handed to the host as it is written.
        let turns: Vec<String> = (0..12000).map(|i| format!(r#"{{"role":"user","content":"hello {i}"}}"#)).collect();
        let body = format!(r#"{{"model":"large","stream":true,"messages":[{}]}}"#, turns.join(","));
        let body = body.as_bytes();
        let len = body.len().to_string();
        let mut host = FakeHost::request(
            "POST",
            "/v1/chat/completions",
            &[("content-type", "application/json"), ("authorization", "Bearer client-key"), ("content-length", &len)],
        );
        host.now = 1_700_000_000_123_000_000;
        host.request_body = body.to_vec();
        x.on_request_headers(&mut host, false);
        assert_eq!(x.on_request_body(&mut host, body.len(), true), crate::host::Flow::Continue);
        let (whole, _) =
            to_converse(body, "mistral.mistral-large-2407-v1:0", 4096, crate::body::BodyWriter::new(None)).unwrap();
        assert!(whole.len() > 2 * crate::body::CHUNK);
        assert_eq!(host.request_body, whole.to_vec(), "the chunks arrive whole and in order");
        assert_eq!(host.header("content-length"), Some(whole.len().to_string()));
        let path = "/model/mistral.mistral-large-2407-v1%3A0/converse-stream";
        assert_eq!(host.header(":path").as_deref(), Some(path));
        assert_eq!(host.header(":authority").as_deref(), Some("bedrock-runtime.eu-west-3.amazonaws.com"));
        assert_eq!(host.header("x-amz-date").as_deref(), Some("20231114T221320Z"));
        assert_eq!(host.header("x-amz-security-token").as_deref(), Some("tok"));
        let auth = host.header("authorization").unwrap();
        assert!(auth.starts_with(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/eu-west-3/bedrock/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature="
        ));
        let outgoing = Outgoing {
            method: "POST",
            authority: "bedrock-runtime.eu-west-3.amazonaws.com",
            path,
            headers: &[("content-type", "application/json")],
            body: &[&host.request_body],
            body_hashed: None,
            time: std::time::UNIX_EPOCH + std::time::Duration::from_nanos(host.now),
        };
        let again = sigv4::sign(&credential, "eu-west-3", "bedrock", &outgoing).unwrap();
        assert!(again.contains(&("authorization".to_string(), auth)), "the signature covers the final body");

        host.response_headers = vec![
            (":status".into(), "200".into()),
            ("content-type".into(), "application/vnd.amazon.eventstream".into()),
            ("content-length".into(), "999".into()),
        ];
        x.on_response_headers(&mut host, false);
        assert_eq!(host.response_header("content-type").as_deref(), Some("text/event-stream"));
        assert_eq!(host.response_header("content-length"), None);
        let frames = [
            event_for_test("messageStart", r#"{"role":"assistant"}"#),
            event_for_test("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":"Bonjour"}}"#),
            event_for_test("messageStop", r#"{"stopReason":"end_turn"}"#),
            event_for_test("metadata", r#"{"usage":{"inputTokens":5,"outputTokens":2,"totalTokens":7}}"#),
        ]
        .concat();
        host.response_body = frames.clone();
        x.on_response_body(&mut host, frames.len(), true);
        let sse = String::from_utf8(host.response_body.clone()).unwrap();
        assert!(sse.contains(r#""delta":{"content":"Bonjour"}"#) && sse.ends_with("data: [DONE]\n\n"), "{sse}");
        assert_eq!(host.filter_state.get("llm_total_token").map(String::as_str), Some("7"));
    }

    #[test]
    fn cache_control_becomes_cache_points() {
        let (edits, _) = translate(
            r#"{"model":"anthropic.claude-sonnet-4","messages":[
                {"role":"system","content":[{"type":"text","text":"long rules","cache_control":{"type":"ephemeral"}}]},
                {"role":"developer","content":"more","cache_control":{"type":"ephemeral"}},
                {"role":"user","content":[{"type":"text","text":"doc","cache_control":{"type":"ephemeral"}},{"type":"text","text":"q"}]},
                {"role":"assistant","content":"a","cache_control":{"type":"ephemeral"}},
                {"role":"tool","tool_call_id":"t","content":[{"type":"text","text":"r","cache_control":{"type":"ephemeral"}}]},
                {"role":"user","content":"","cache_control":{"type":"ephemeral"}}],
              "tools":[{"type":"function","function":{"name":"f"},"cache_control":{"type":"ephemeral"}}]}"#,
        )
        .unwrap();
        let cp = serde_json::json!({"cachePoint":{"type":"default"}});
        let v = body_json(&edits);
        assert_eq!(v["system"], serde_json::json!([{"text":"long rules"}, cp, {"text":"more"}, cp]));
        assert_eq!(
            v["messages"],
            serde_json::json!([
                {"role":"user","content":[{"text":"doc"}, cp, {"text":"q"}]},
                {"role":"assistant","content":[{"text":"a"}, cp]},
                {"role":"user","content":[{"toolResult":{"toolUseId":"t","content":[{"text":"r"}]}}, cp]}])
        );
        assert_eq!(
            v["toolConfig"]["tools"],
            serde_json::json!([{"toolSpec":{"name":"f","inputSchema":{"json":{"type":"object","properties":{}}}}}, cp])
        );
    }

    #[test]
    fn content_bedrock_cannot_take_is_a_400_naming_it() {
        let cases = [
            (
                r#"{"role":"system","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AA"}}]}"#,
                "\"image_url\" was sent in a system message",
            ),
            (
                r#"{"role":"developer","content":[{"type":"file","file":{"file_data":"data:application/pdf;base64,AA"}}]}"#,
                "\"file\" was sent in a system message",
            ),
            (
                r#"{"role":"assistant","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AA"}}]}"#,
                "\"image_url\" was sent in an assistant message",
            ),
            (r#"{"role":"user","content":[{"type":"video_url","video_url":{"url":"x"}}]}"#, "\"video_url\""),
            (r#"{"role":"user","content":[{"type":"refusal","refusal":"no"}]}"#, "\"refusal\""),
            (
                r#"{"role":"tool","tool_call_id":"t","content":[{"type":"input_audio","input_audio":{}}]}"#,
                "input_audio",
            ),
            (r#"{"role":"function","content":"x"}"#, "unknown message role \"function\""),
        ];
        for (message, want) in cases {
            let body = format!(r#"{{"model":"m","messages":[{message}]}}"#);
            let e = translate(&body).err().unwrap_or_else(|| panic!("{message} was accepted"));
            assert_eq!(e.status, 400, "{message}");
            assert!(e.message.contains(want), "{message}: {}", e.message);
        }
        // An assistant refusal part is dropped, as `refusal` is.
        let (edits, _) =
            translate(r#"{"model":"m","messages":[{"role":"assistant","content":[{"type":"refusal","refusal":"no"},{"type":"text","text":"ok"}]}]}"#)
                .unwrap();
        assert_eq!(body_json(&edits)["messages"], serde_json::json!([{"role":"assistant","content":[{"text":"ok"}]}]));
    }

    #[test]
    fn texts_and_arguments_are_written_from_raw_json() {
        let (edits, _) = translate(
            r#"{"model":"m","messages":[{"role":"system","content":[{"type":"text","text":"a\"b"},{"type":"text","text":"\u00e9\n"}]},
                {"role":"user","content":"line\nbreak \ud83d\ude00"},
                {"role":"assistant","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":" {\"k\": \"v\\\"\\u00e9\\ud83d\\ude00\", \"n\": [1, 2.5]} "}},
                  {"id":"d","type":"function","function":{"name":"g","arguments":"  "}}]}]}"#,
        )
        .unwrap();
        let v = body_json(&edits);
        assert_eq!(v["system"], serde_json::json!([{"text":"a\"b\né\n"}]));
        assert_eq!(v["messages"][0]["content"][0]["text"], "line\nbreak 😀");
        assert_eq!(v["messages"][1]["content"][0]["toolUse"]["input"], serde_json::json!({"k":"v\"é😀","n":[1,2.5]}));
        assert_eq!(v["messages"][1]["content"][1]["toolUse"]["input"], serde_json::json!({}));
        for bad_args in [r#""{\"a\":""#, r#""\ud800""#, r#""{} {}""#, r#""[1,]""#] {
            let body = format!(
                r#"{{"model":"m","messages":[{{"role":"assistant","tool_calls":[{{"id":"c","type":"function","function":{{"name":"f","arguments":{bad_args}}}}}]}}]}}"#
            );
            let e = translate(&body).err().unwrap_or_else(|| panic!("{bad_args} was accepted"));
            assert!(e.message.contains("not JSON"), "{bad_args}: {}", e.message);
        }
    }

    #[test]
    fn thinking_and_reasoning_effort_per_model_family() {
        let fields = |body: &str| body_json(&translate(body).unwrap().0);
        let v = fields(
            r#"{"model":"anthropic.claude-sonnet-4","thinking":{"type":"enabled","budget_tokens":3000},"reasoning_effort":"high","max_tokens":100,"messages":[]}"#,
        );
        assert_eq!(
            v["additionalModelRequestFields"],
            serde_json::json!({"thinking":{"type":"enabled","budget_tokens":3000}})
        );
        assert_eq!(v["inferenceConfig"]["maxTokens"], 3100);
        let v = fields(r#"{"model":"us.amazon.nova-2-lite-v1:0","reasoning_effort":"medium","messages":[]}"#);
        assert_eq!(
            v["additionalModelRequestFields"],
            serde_json::json!({"reasoningConfig":{"type":"enabled","maxReasoningEffort":"medium"}})
        );
        assert_eq!(v.get("inferenceConfig"), None);
        let v = fields(r#"{"model":"meta.llama3","thinking":{"type":"enabled","budget_tokens":3000},"messages":[]}"#);
        assert_eq!(v.get("additionalModelRequestFields"), None);
        let e = translate(r#"{"model":"anthropic.claude","thinking":"yes","messages":[]}"#).err().unwrap();
        assert!(e.message.contains("`thinking` must be an object"), "{}", e.message);
    }

    #[test]
    fn streams_without_optional_headers_and_fields_translate_fully() {
        let bare = |payload: &str| encode_for_test(&[], payload.as_bytes());
        let typed = |event: &str, payload: &str| encode_for_test(&[(":event-type", event)], payload.as_bytes());
        let frames = [
            bare(r#"{"role":"assistant"}"#),
            typed("contentBlockStart", r#"{"start":{"toolUse":{"toolUseId":"t1","name":"get"}}}"#),
            typed("contentBlockDelta", r#"{"delta":{"toolUse":{"input":"{\"q\":"}}}"#),
            bare(r#"{"contentBlockIndex":7,"delta":{"toolUse":{"input":"1}"}}}"#),
            bare(r#"{"contentBlockIndex":0}"#),
            typed("messageStop", r#"{"stopReason":"tool_use"}"#),
            typed("metadata", r#"{"metrics":{"latencyMs":1}}"#),
        ]
        .concat();
        let body = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
        let (_, mut t) = translate(body).unwrap();
        let (reference, _, firsts) = run_stream(&mut t, &[&frames, b""]);
        assert_eq!(firsts, 1);
        let chunks = data_lines(&reference);
        let args: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
            .collect();
        assert_eq!(args, "{\"q\":1}");
        assert_eq!(chunks[1]["choices"][0]["delta"]["tool_calls"][0]["id"], "t1");
        assert!(chunks.iter().all(|c| c.get("error").is_none()), "{reference}");
        assert_eq!(chunks.last().unwrap()["usage"]["total_tokens"], 0);
        assert!(reference.ends_with("data: [DONE]\n\n"));
        let id = chunks[0]["id"].as_str().unwrap().to_string();
        for cut in 0..=frames.len() {
            let (_, mut t) = translate(body).unwrap();
            t.writer.id = id.clone();
            let (a, b) = frames.split_at(cut);
            assert_eq!(run_stream(&mut t, &[a, b, b""]).0, reference, "cut {cut}");
        }
    }

    #[test]
    fn streams_that_stop_early_or_break_end_with_an_error_and_done() {
        let start = event_for_test("messageStart", r#"{"role":"assistant"}"#);
        let stop = event_for_test("messageStop", r#"{"stopReason":"end_turn"}"#);
        let delta = event_for_test("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":"hi"}}"#);
        let truncated = [start.clone(), delta[..delta.len() - 3].to_vec()].concat();
        let cases: [(Vec<u8>, &str); 4] = [
            (Vec::new(), "messageStop"),
            ([start.clone(), delta.clone(), stop.clone()].concat(), "metadata"),
            (truncated, "ended inside a message"),
            ([start, b"garbage-garbage-garbage".to_vec(), stop].concat(), "checksum"),
        ];
        for (frames, want) in cases {
            let (_, mut t) = translate(r#"{"model":"m","stream":true,"messages":[]}"#).unwrap();
            let (out, _, _) = run_stream(&mut t, &[&frames, b""]);
            let chunks = data_lines(&out);
            let error = chunks.iter().find(|c| c.get("error").is_some()).unwrap_or_else(|| panic!("{want}: {out}"));
            assert!(error["error"]["message"].as_str().unwrap().contains(want), "{want}: {out}");
            assert!(out.ends_with("data: [DONE]\n\n") && out.matches("[DONE]").count() == 1, "{want}: {out}");
        }
    }

    #[test]
    fn empty_or_unreadable_answers_are_502() {
        for body in [&b""[..], b"  ", b"{}", b"[1]", br#"{"output":{"message":{"content":[{"text":5}]}}}"#] {
            let (_, mut t) = translate(r#"{"model":"m","messages":[]}"#).unwrap();
            t.response_headers(200, "application/json");
            let edits = t.response_body(body, true);
            assert_eq!(edits.status, Some(502), "{body:?}");
            let v: Value = serde_json::from_slice(&edits.replace.unwrap()).unwrap();
            assert_eq!(v["error"]["code"], "invalid_upstream_response");
        }
        // Only `output` is needed; the rest may be missing.
        let (_, mut t) = translate(r#"{"model":"m","messages":[]}"#).unwrap();
        t.response_headers(200, "application/json");
        let edits = t.response_body(br#"{"output":{}}"#, true);
        let v: Value = serde_json::from_slice(&edits.replace.unwrap()).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(edits.usage, None);
    }

    /// Several text blocks are one `content` string (joined as written, in order, with reasoning
    /// and empty blocks between them); reasoning texts are one `reasoning_content`; signatures and
    /// redacted reasoning are not text and are left out.
    #[test]
    fn text_and_reasoning_blocks_join_into_one_message() {
        let (_, mut t) = translate(r#"{"model":"m","messages":[]}"#).unwrap();
        t.response_headers(200, "application/json");
        let body = br#"{"output":{"message":{"role":"assistant","content":[
            {"reasoningContent":{"reasoningText":{"text":"First, \"think\"","signature":"SIG-ONE"}}},
            {"text":"Hello"},
            {"reasoningContent":{"redactedContent":"UkVEQUNURUQ="}},
            {"text":""},
            {"reasoningContent":{"reasoningText":{"text":"\nthen more.","signature":"SIG-TWO"}}},
            {"text":", w\u00f6rld"},{"text":"!\n"}]}},
            "stopReason":"end_turn","usage":{"inputTokens":3,"outputTokens":4,"totalTokens":7}}"#;
        let out = t.response_body(body, true).replace.unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        for opaque in ["SIG-ONE", "SIG-TWO", "UkVEQUNURUQ="] {
            assert!(!text.contains(opaque), "{opaque}: {text}");
        }
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["choices"][0],
            serde_json::json!({"index":0,"finish_reason":"stop","message":{"role":"assistant",
                "content":"Hello, wörld!\n","reasoning_content":"First, \"think\"\nthen more."}})
        );
        // Only redacted reasoning: no `reasoning_content`; only reasoning: an empty `content`.
        for (content, want) in [
            (
                r#"[{"reasoningContent":{"redactedContent":"UkVE"}},{"text":"a"},{"text":"b"}]"#,
                serde_json::json!({"role":"assistant","content":"ab"}),
            ),
            (
                r#"[{"reasoningContent":{"reasoningText":{"text":"r"}}}]"#,
                serde_json::json!({"role":"assistant","content":"","reasoning_content":"r"}),
            ),
        ] {
            let (_, mut t) = translate(r#"{"model":"m","messages":[]}"#).unwrap();
            t.response_headers(200, "application/json");
            let body = format!(r#"{{"output":{{"message":{{"content":{content}}}}},"stopReason":"end_turn"}}"#);
            let v: Value = serde_json::from_slice(&t.response_body(body.as_bytes(), true).replace.unwrap()).unwrap();
            assert_eq!(v["choices"][0]["message"], want, "{content}");
        }
    }

    /// The stream form: text deltas of several blocks and reasoning deltas arrive in order as
    /// `content` and `reasoning_content` deltas; signature and redacted deltas send nothing. The
    /// same at every split of the frames.
    #[test]
    fn stream_text_and_reasoning_blocks_at_every_split() {
        let frames = [
            event_for_test("messageStart", r#"{"role":"assistant"}"#),
            event_for_test(
                "contentBlockDelta",
                r#"{"contentBlockIndex":0,"delta":{"reasoningContent":{"text":"Fir"}}}"#,
            ),
            event_for_test(
                "contentBlockDelta",
                r#"{"contentBlockIndex":0,"delta":{"reasoningContent":{"text":"st \"x\""}}}"#,
            ),
            event_for_test(
                "contentBlockDelta",
                r#"{"contentBlockIndex":0,"delta":{"reasoningContent":{"signature":"SIG-ONE"}}}"#,
            ),
            event_for_test("contentBlockStop", r#"{"contentBlockIndex":0}"#),
            event_for_test(
                "contentBlockDelta",
                r#"{"contentBlockIndex":1,"delta":{"reasoningContent":{"redactedContent":"UkVEQUNURUQ="}}}"#,
            ),
            event_for_test("contentBlockStop", r#"{"contentBlockIndex":1}"#),
            event_for_test("contentBlockDelta", r#"{"contentBlockIndex":2,"delta":{"text":"Hel"}}"#),
            event_for_test("contentBlockDelta", r#"{"contentBlockIndex":2,"delta":{"text":"lo"}}"#),
            event_for_test("contentBlockStop", r#"{"contentBlockIndex":2}"#),
            event_for_test(
                "contentBlockDelta",
                r#"{"contentBlockIndex":3,"delta":{"reasoningContent":{"text":", then"}}}"#,
            ),
            event_for_test("contentBlockStop", r#"{"contentBlockIndex":3}"#),
            event_for_test("contentBlockDelta", r#"{"contentBlockIndex":4,"delta":{"text":", wörld"}}"#),
            event_for_test("contentBlockStop", r#"{"contentBlockIndex":4}"#),
            event_for_test("messageStop", r#"{"stopReason":"end_turn"}"#),
            event_for_test("metadata", r#"{"usage":{"inputTokens":2,"outputTokens":5,"totalTokens":7}}"#),
        ]
        .concat();
        let body = r#"{"model":"m","stream":true,"messages":[]}"#;
        let (_, mut t) = translate(body).unwrap();
        let (reference, _, firsts) = run_stream(&mut t, &[&frames, b""]);
        assert_eq!(firsts, 1);
        for opaque in ["SIG-ONE", "UkVEQUNURUQ="] {
            assert!(!reference.contains(opaque), "{opaque}: {reference}");
        }
        let chunks = data_lines(&reference);
        let deltas: Vec<Value> = chunks.iter().map(|c| c["choices"][0]["delta"].clone()).collect();
        assert_eq!(
            deltas,
            [
                serde_json::json!({"role":"assistant","content":""}),
                serde_json::json!({"reasoning_content":"Fir"}),
                serde_json::json!({"reasoning_content":"st \"x\""}),
                serde_json::json!({"content":"Hel"}),
                serde_json::json!({"content":"lo"}),
                serde_json::json!({"reasoning_content":", then"}),
                serde_json::json!({"content":", wörld"}),
                serde_json::json!({}),
            ]
        );
        assert_eq!(chunks[7]["choices"][0]["finish_reason"], "stop");
        assert!(reference.ends_with("data: [DONE]\n\n"));
        let id = chunks[0]["id"].as_str().unwrap().to_string();
        for cut in 0..=frames.len() {
            let (_, mut t) = translate(body).unwrap();
            t.writer.id = id.clone();
            let (a, b) = frames.split_at(cut);
            assert_eq!(run_stream(&mut t, &[a, b, b""]).0, reference, "cut {cut}");
        }
    }

    #[test]
    fn answers_are_written_exactly_sized() {
        let (_, mut t) = translate(r#"{"model":"m","messages":[]}"#).unwrap();
        t.response_headers(200, "application/json");
        let body = br#"{"output":{"message":{"content":[{"text":"a\"\n"},{"toolUse":{"toolUseId":"x","name":"f","input":{ "s" : "q \"x\" \\ y" , "n" : [ 1 ] }}},{"text":""}]}},"stopReason":"tool_use"}"#;
        let out = t.response_body(body, true).replace.unwrap();
        assert_eq!(out.len(), out.capacity());
        let v: Value = serde_json::from_slice(&out).unwrap();
        let message = &v["choices"][0]["message"];
        assert_eq!(message["content"], "a\"\n");
        let args = message["tool_calls"][0]["function"]["arguments"].as_str().unwrap();
        assert_eq!(args, r#"{"s":"q \"x\" \\ y","n":[1]}"#);
    }

    #[test]
    fn document_names_stay_unique_and_bounded() {
        let mut names = DocumentNames::default();
        let got: Vec<String> = [Some("a.pdf"), Some("a.txt"), Some("a-2.pdf"), Some("a.md"), None, Some("..")]
            .into_iter()
            .map(|f| names.name(f).unwrap())
            .collect();
        assert_eq!(got, ["a", "a-2", "a-2-2", "a-3", "document", "document-2"]);
        let mut names = DocumentNames::default();
        for _ in 0..MAX_DOCUMENTS {
            names.name(Some("same.pdf")).unwrap();
        }
        assert!(names.name(Some("same.pdf")).unwrap_err().message.contains("documents"));
    }

    #[test]
    fn unparseable_response_is_an_error_body() {
        let (_, mut t) = translate(r#"{"model":"m","messages":[]}"#).unwrap();
        t.response_headers(200, "application/json");
        let v: Value = serde_json::from_slice(&t.response_body(b"{oops", true).replace.unwrap()).unwrap();
        assert_eq!(v["error"]["code"], "invalid_upstream_response");
    }
}
