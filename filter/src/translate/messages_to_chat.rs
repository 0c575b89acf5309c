//! Anthropic client (`POST /v1/messages`) → OpenAI-compatible backends (OpenAI, AzureOpenAI, vLLM,
//! ...): the Messages request becomes a chat completion request; the answer, streams included,
//! becomes a Messages response with Anthropic's event sequence.
//!
//! The request is streamed: the body is read through borrowed views ([`crate::wire::anthropic_view`]),
//! arrays are walked one element at a time, and the chat request is written straight into a
//! [`ChunkedBody`]. Strings travel as the JSON literals they came as (no decoding, no copies);
//! `input_schema` and tool `input` objects are copied byte for byte. Responses are read the same
//! way and written into one buffer sized from the answer.

use std::borrow::Cow;
use std::io::Write;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::openai_passthrough::upstream_path;
use super::{BodyMode, ChunkEdits, RequestContext, RequestEdits, ResponsePlan, Translator};
use crate::api::Endpoint;
use crate::body::{BodyWriter, NewBody};
use crate::config::{Backend, BackendApi};
use crate::error::{anthropic_error_json, ApiError, ErrorKind};
use crate::json::{each, json_string, EachError};
use crate::sse::{parse_event, Splitter};
use crate::usage::{OpenAIUsage, TokenUsage};
use crate::wire::anthropic_view::{
    self as v, BlockView, ContentView, ImageSourceView, MessageView, MessagesRequestView, RawStr, ToolView,
};
use crate::wire::chat_view::opt_text;

// ---------------------------------------------------------------------------------------------
// Writing JSON by hand.

/// Anything the translation writes into: the request's [`BodyWriter`], a response `Vec<u8>`.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
    fn s(&mut self, text: &str) {
        self.put(text.as_bytes());
    }
}

impl Sink for BodyWriter<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Commas between the elements of an array being written.
#[derive(Default)]
struct Seq {
    started: bool,
}

impl Seq {
    fn next(&mut self, out: &mut impl Sink) {
        if std::mem::replace(&mut self.started, true) {
            out.s(",");
        }
    }
}

/// Writes the JSON text `raw` (valid JSON) minified and escaped as the content of a JSON string:
/// how an object becomes OpenAI's `arguments`. Runs of bytes that need no change are written as
/// slices; nothing is buffered.
fn write_json_as_string_content(out: &mut impl Sink, raw: &str) {
    let bytes = raw.as_bytes();
    let (mut in_string, mut escaped, mut start) = (false, false, 0);
    for (i, &b) in bytes.iter().enumerate() {
        let replacement: Option<&[u8]> = if in_string {
            if escaped {
                escaped = false;
                match b {
                    b'\\' => Some(b"\\\\"),
                    b'"' => Some(b"\\\""),
                    _ => None,
                }
            } else {
                match b {
                    b'\\' => {
                        escaped = true;
                        Some(b"\\\\")
                    }
                    b'"' => {
                        in_string = false;
                        Some(b"\\\"")
                    }
                    // Cannot occur in validated JSON; never written raw all the same.
                    0..=0x1f => Some(b" "),
                    _ => None,
                }
            }
        } else {
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => Some(b""),
                b'"' => {
                    in_string = true;
                    Some(b"\\\"")
                }
                _ => None,
            }
        };
        if let Some(r) = replacement {
            out.put(bytes.get(start..i).unwrap_or_default());
            out.put(r);
            start = i + 1;
        }
    }
    out.put(bytes.get(start..).unwrap_or_default());
}

/// Decodes the escaped content of a JSON string (`inner`, between the quotes) into `out`.
/// False when an escape is malformed. Lone surrogates become U+FFFD.
fn unescape_into(out: &mut Vec<u8>, inner: &[u8]) -> bool {
    fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
        let digits = std::str::from_utf8(bytes.get(at..at + 4)?).ok()?;
        u32::from_str_radix(digits, 16).ok()
    }
    let (mut i, mut start) = (0, 0);
    while let Some(&b) = inner.get(i) {
        if b != b'\\' {
            i += 1;
            continue;
        }
        out.extend_from_slice(inner.get(start..i).unwrap_or_default());
        let simple = match inner.get(i + 1) {
            Some(b'"') => b'"',
            Some(b'\\') => b'\\',
            Some(b'/') => b'/',
            Some(b'b') => 8,
            Some(b'f') => 12,
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(b'u') => 0,
            _ => return false,
        };
        if simple != 0 {
            out.push(simple);
            i += 2;
        } else {
            let Some(unit) = hex4(inner, i + 2) else { return false };
            i += 6;
            let mut code = unit;
            if (0xD800..0xDC00).contains(&unit) && inner.get(i) == Some(&b'\\') && inner.get(i + 1) == Some(&b'u') {
                if let Some(low @ 0xDC00..=0xDFFF) = hex4(inner, i + 2) {
                    code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                    i += 6;
                }
            }
            let c = char::from_u32(code).unwrap_or('\u{FFFD}');
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
        }
        start = i;
    }
    out.extend_from_slice(inner.get(start..).unwrap_or_default());
    true
}

/// `[]` with or without whitespace.
fn is_empty_array(raw: &RawValue) -> bool {
    raw.get().strip_prefix('[').and_then(|r| r.strip_suffix(']')).is_some_and(|inner| inner.trim().is_empty())
}

// ---------------------------------------------------------------------------------------------
// Request: Messages → chat completion, streamed.

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_request", message)
}

fn unsupported(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("unsupported_content", message)
}

/// [`each`] with errors as a 400 naming `what`.
fn walk<'a, T: Deserialize<'a>>(
    raw: &'a RawValue,
    what: &str,
    f: impl FnMut(T) -> Result<(), ApiError>,
) -> Result<(), ApiError> {
    each(raw, f).map_err(|e| match e {
        EachError::Stopped(e) => e,
        EachError::Json(e) => invalid(format!("invalid {what}: {e}")),
    })
}

/// Budgets from Anthropic extended thinking → OpenAI `reasoning_effort` (the inverse of the
/// OpenAI → Anthropic budgets 1024 / 4096 / 16384).
fn reasoning_effort(budget: u32) -> &'static str {
    match budget {
        0..=4095 => "low",
        4096..=16383 => "medium",
        _ => "high",
    }
}

/// What the request translation dropped, for one debug line.
#[derive(Default)]
struct Dropped {
    cache_control: usize,
    thinking_blocks: usize,
    citations: usize,
}

const MAX_COMPLETION_TOKENS: &str = "max_completion_tokens";

/// How the backend takes Anthropic's `max_tokens`: OpenAI deprecated `max_tokens` for
/// `max_completion_tokens` (its o-series models refuse the old name); Azure takes the new name
/// from api-version 2024-09-01-preview on, and refuses it before.
fn output_limit_field(backend: &Backend) -> &'static str {
    match &backend.api {
        BackendApi::AzureOpenAI { api_version, .. }
            if api_version.starts_with(|c: char| c.is_ascii_digit()) && api_version.as_str() < "2024-09-01" =>
        {
            "max_tokens"
        }
        _ => MAX_COMPLETION_TOKENS,
    }
}

struct RequestWriter<'o, 's> {
    out: &'o mut BodyWriter<'s>,
    dropped: Dropped,
}

impl<'o> RequestWriter<'o, '_> {
    /// The whole chat request. Every field of the view is decided here.
    /// `limit_field`: the name the backend takes `max_tokens` by (see [`output_limit_field`]).
    fn request(
        &mut self,
        req: MessagesRequestView,
        body: &[u8],
        model: &str,
        stream: bool,
        limit_field: &str,
    ) -> Result<(), ApiError> {
        let MessagesRequestView {
            model: _,
            max_tokens,
            messages,
            system,
            stop_sequences,
            temperature,
            top_p,
            top_k,
            stream: _,
            tools,
            tool_choice,
            thinking,
            metadata,
            anthropic_version: _,
            service_tier,
            container,
            mcp_servers,
            context_management,
            output_config,
            output_format,
        } = req;
        let max_tokens = max_tokens.ok_or_else(|| invalid("max_tokens: Field required"))?;
        if mcp_servers.is_some_and(|m| !is_empty_array(m) && m.get() != "null") {
            return Err(unsupported(
                "`mcp_servers`: Anthropic's MCP connector is a server tool; OpenAI-compatible backends cannot call MCP servers",
            ));
        }
        let (output_effort, output_format) = match output_config {
            Some(c) => (c.effort, c.format.or(output_format)),
            None => (None, output_format),
        };
        let explicit_effort = match output_effort.as_deref() {
            None => None,
            Some("low") => Some("low"),
            Some("medium") => Some("medium"),
            Some("high" | "max") => Some("high"),
            Some(other) => {
                return Err(invalid(format!("output_config.effort {other:?} is not one of low, medium, high, max")))
            }
        };
        let effort = match thinking.as_ref().map(|t| t.kind.as_ref()) {
            None => explicit_effort,
            Some("disabled") => None,
            Some("enabled") => {
                let budget = thinking
                    .as_ref()
                    .and_then(|t| t.budget_tokens)
                    .ok_or_else(|| invalid("thinking.budget_tokens: Field required"))?;
                explicit_effort.or(Some(reasoning_effort(budget)))
            }
            // The model decides how much to think; `effort` says how hard (Anthropic's default: high).
            Some("adaptive") => explicit_effort.or(Some("high")),
            Some(other) => {
                return Err(invalid(format!("thinking.type {other:?} is not one of enabled, adaptive, disabled")))
            }
        };
        let response_format = match output_format {
            None => None,
            Some(f) if f.kind == "json_schema" => match f.schema.filter(|s| s.get().starts_with('{')) {
                Some(schema) => Some(schema),
                None => return Err(invalid("output_config.format.schema must be a JSON Schema object")),
            },
            Some(f) => {
                return Err(unsupported(format!(
                    "output_config.format type {:?}: OpenAI-compatible backends take json_schema only",
                    f.kind
                )))
            }
        };
        if log::log_enabled!(log::Level::Debug) {
            let mut ignored: Vec<String> = [
                ("top_k", top_k.is_some()),
                ("service_tier", service_tier.is_some()),
                ("container", container.is_some()),
                ("context_management", context_management.is_some()),
            ]
            .into_iter()
            .filter(|(_, set)| *set)
            .map(|(name, _)| name.to_string())
            .collect();
            ignored.extend(crate::json::unknown_members(body, v::KNOWN_MEMBERS));
            if !ignored.is_empty() {
                log::debug!("llmgw: OpenAI-compatible backend ignores Anthropic parameters: {}", ignored.join(", "));
            }
        }

        self.out.s("{\"model\":");
        self.out.put(&json_string(model));
        self.out.s(",\"messages\":[");
        let mut seq = Seq::default();
        if let Some(system) = system.filter(|s| s.get() != "null") {
            self.system(system, &mut seq)?;
        }
        walk(messages, "messages", |m: MessageView| self.message(m, &mut seq))?;
        self.out.s("]");
        // OpenAI's reasoning models refuse `max_tokens`; both count reasoning as output.
        let limit_field = if effort.is_some() { MAX_COMPLETION_TOKENS } else { limit_field };
        self.out.s(",\"");
        self.out.s(limit_field);
        self.out.s("\":");
        self.out.s(&max_tokens.to_string());
        if let Some(effort) = effort {
            self.out.s(",\"reasoning_effort\":\"");
            self.out.s(effort);
            self.out.s("\"");
        }
        for (name, value) in [("temperature", temperature), ("top_p", top_p)] {
            if let Some(value) = value {
                self.out.s(&format!(",\"{name}\":"));
                // A finite f64 (JSON has no other) always serializes.
                let _ = serde_json::to_writer(&mut *self.out, &value);
            }
        }
        if let Some(stop) = stop_sequences.filter(|s| s.get() != "null" && !is_empty_array(s)) {
            walk(stop, "stop_sequences", |_: RawStr| Ok(()))?;
            self.out.s(",\"stop\":");
            self.out.s(stop.get());
        }
        if stream {
            // Anthropic streams end with usage; ask the OpenAI side for it.
            self.out.s(",\"stream\":true,\"stream_options\":{\"include_usage\":true}");
        }
        let has_tools = match tools.filter(|t| t.get() != "null" && !is_empty_array(t)) {
            Some(tools) => {
                self.out.s(",\"tools\":[");
                let mut seq = Seq::default();
                walk(tools, "tools", |t: ToolView| self.tool(t, &mut seq))?;
                self.out.s("]");
                true
            }
            None => false,
        };
        if let Some(choice) = tool_choice {
            let (value, disable_parallel): (Cow<str>, _) = match choice.kind.as_ref() {
                "auto" => ("\"auto\"".into(), choice.disable_parallel_tool_use),
                "any" => ("\"required\"".into(), choice.disable_parallel_tool_use),
                "none" => ("\"none\"".into(), None),
                "tool" => {
                    let name = choice.name.ok_or_else(|| invalid("tool_choice.name: Field required"))?;
                    let value = format!("{{\"type\":\"function\",\"function\":{{\"name\":{}}}}}", name.json());
                    (value.into(), choice.disable_parallel_tool_use)
                }
                other => {
                    return Err(invalid(format!("tool_choice.type {other:?} is not one of auto, any, tool, none")))
                }
            };
            // OpenAI refuses `tool_choice` and `parallel_tool_calls` without tools.
            if has_tools {
                self.out.s(",\"tool_choice\":");
                self.out.s(&value);
                if disable_parallel == Some(true) {
                    self.out.s(",\"parallel_tool_calls\":false");
                }
            } else {
                log::debug!("llmgw: dropped tool_choice: the request has no tools");
            }
        }
        if let Some(schema) = response_format {
            self.out.s(",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"output\",\"strict\":true,\"schema\":");
            self.out.s(schema.get());
            self.out.s("}}");
        }
        if let Some(user) = metadata.and_then(|m| m.user_id) {
            self.out.s(",\"user\":");
            self.out.s(user.json());
        }
        self.out.s("}");
        let d = &self.dropped;
        if d.cache_control + d.thinking_blocks + d.citations > 0 {
            log::debug!(
                "llmgw: OpenAI chat has no equivalent; dropped {} cache_control marker(s), {} thinking block(s), {} citation list(s)",
                d.cache_control,
                d.thinking_blocks,
                d.citations
            );
        }
        Ok(())
    }

    /// `system`: one system message; text blocks are joined with newlines.
    fn system(&mut self, system: &RawValue, seq: &mut Seq) -> Result<(), ApiError> {
        seq.next(self.out);
        self.out.s("{\"role\":\"system\",\"content\":");
        match ContentView::of(system, "system").map_err(invalid)? {
            ContentView::Text(text) => self.out.s(text.json()),
            ContentView::Blocks(blocks) => {
                self.out.s("\"");
                let mut first = true;
                walk(blocks, "system", |b: BlockView| {
                    if b.kind != "text" {
                        return Err(unsupported(format!(
                            "a `{}` block in `system`: OpenAI chat system messages take text only",
                            b.kind
                        )));
                    }
                    self.count_dropped(&b);
                    let text = b.text.ok_or_else(|| invalid("system: text block without `text`"))?;
                    if !std::mem::replace(&mut first, false) {
                        self.out.s("\\n");
                    }
                    self.out.s(text.inner());
                    Ok(())
                })?;
                self.out.s("\"");
            }
        }
        self.out.s("}");
        Ok(())
    }

    fn count_dropped(&mut self, b: &BlockView) {
        if b.cache_control.is_some_and(|c| c.get() != "null") {
            self.dropped.cache_control += 1;
        }
        if b.citations.is_some_and(|c| c.get() != "null") {
            self.dropped.citations += 1;
        }
    }

    fn message(&mut self, m: MessageView, seq: &mut Seq) -> Result<(), ApiError> {
        let content = ContentView::of(m.content, "message content").map_err(invalid)?;
        match m.role.as_ref() {
            "user" => self.user_message(content, seq),
            "assistant" => self.assistant_message(content, seq),
            other => Err(invalid(format!("message role {other:?} is not one of user, assistant"))),
        }
    }

    /// A user turn: tool results become `tool` messages (first, as OpenAI expects them right
    /// after the assistant's calls); the rest one user message.
    fn user_message(&mut self, content: ContentView, seq: &mut Seq) -> Result<(), ApiError> {
        let blocks = match content {
            ContentView::Text(text) => {
                seq.next(self.out);
                self.out.s("{\"role\":\"user\",\"content\":");
                self.out.s(text.json());
                self.out.s("}");
                return Ok(());
            }
            ContentView::Blocks(blocks) => blocks,
        };
        // First pass: tool results, and what the user message will hold.
        let (mut parts, mut only_text) = (0usize, true);
        walk(blocks, "message content", |b: BlockView| {
            self.count_dropped(&b);
            match b.kind.as_ref() {
                "tool_result" => self.tool_result(b, seq),
                "text" => {
                    parts += 1;
                    Ok(())
                }
                "image" => {
                    parts += 1;
                    only_text = false;
                    Ok(())
                }
                "thinking" | "redacted_thinking" => {
                    self.dropped.thinking_blocks += 1;
                    Ok(())
                }
                other => Err(refused_block(other, "a user message")),
            }
        })?;
        if parts == 0 {
            return Ok(());
        }
        seq.next(self.out);
        self.out.s("{\"role\":\"user\",\"content\":");
        let single_text = parts == 1 && only_text;
        if !single_text {
            self.out.s("[");
        }
        let mut part_seq = Seq::default();
        walk(blocks, "message content", |b: BlockView| match b.kind.as_ref() {
            "text" => {
                let text = b.text.ok_or_else(|| invalid("text block without `text`"))?;
                if single_text {
                    self.out.s(text.json());
                } else {
                    part_seq.next(self.out);
                    self.out.s("{\"type\":\"text\",\"text\":");
                    self.out.s(text.json());
                    self.out.s("}");
                }
                Ok(())
            }
            "image" => {
                part_seq.next(self.out);
                self.image(b.source)
            }
            _ => Ok(()),
        })?;
        if !single_text {
            self.out.s("]");
        }
        self.out.s("}");
        Ok(())
    }

    fn image(&mut self, source: Option<&RawValue>) -> Result<(), ApiError> {
        let source = source.ok_or_else(|| invalid("image block without `source`"))?;
        let source: ImageSourceView =
            crate::json::from_raw(source).map_err(|e| invalid(format!("invalid image source: {e}")))?;
        match source.kind.as_ref() {
            "base64" => {
                let media_type = source.media_type.ok_or_else(|| invalid("image source without `media_type`"))?;
                let data = source.data.ok_or_else(|| invalid("image source without `data`"))?;
                self.out.s("{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:");
                self.out.s(media_type.inner());
                self.out.s(";base64,");
                self.out.s(data.inner());
                self.out.s("\"}}");
            }
            "url" => {
                let url = source.url.ok_or_else(|| invalid("image source without `url`"))?;
                self.out.s("{\"type\":\"image_url\",\"image_url\":{\"url\":");
                self.out.s(url.json());
                self.out.s("}}");
            }
            other => {
                return Err(unsupported(format!(
                    "an image with a `{other}` source: OpenAI-compatible backends take base64 and url images only"
                )))
            }
        }
        Ok(())
    }

    /// `tool_result` → a `tool` message; its text blocks joined with newlines, `Error: ` first
    /// when `is_error` (unless the text says so already).
    fn tool_result(&mut self, b: BlockView, seq: &mut Seq) -> Result<(), ApiError> {
        let id = b.tool_use_id.ok_or_else(|| invalid("tool_result block without `tool_use_id`"))?;
        let is_error = b.is_error == Some(true);
        seq.next(self.out);
        self.out.s("{\"role\":\"tool\",\"tool_call_id\":");
        self.out.s(id.json());
        self.out.s(",\"content\":\"");
        let mut first = true;
        let mut piece = |out: &mut BodyWriter, text: &str| {
            if std::mem::replace(&mut first, false) {
                if is_error && !text.starts_with("Error") {
                    out.s("Error: ");
                }
            } else {
                out.s("\\n");
            }
            out.s(text);
        };
        match b.content.filter(|c| c.get() != "null").map(|c| ContentView::of(c, "tool_result content")) {
            None => {}
            Some(Err(e)) => return Err(invalid(e)),
            Some(Ok(ContentView::Text(text))) => piece(self.out, text.inner()),
            Some(Ok(ContentView::Blocks(blocks))) => {
                let out = &mut *self.out;
                let dropped = &mut self.dropped;
                walk(blocks, "tool_result content", |inner: BlockView| {
                    if inner.cache_control.is_some_and(|c| c.get() != "null") {
                        dropped.cache_control += 1;
                    }
                    match inner.kind.as_ref() {
                        "text" => {
                            let text = inner.text.ok_or_else(|| invalid("text block without `text`"))?;
                            piece(out, text.inner());
                            Ok(())
                        }
                        other => Err(unsupported(format!(
                            "a `{other}` block inside a tool_result: OpenAI tool messages take text only"
                        ))),
                    }
                })?;
            }
        }
        if first && is_error {
            self.out.s("Error: ");
        }
        self.out.s("\"}");
        Ok(())
    }

    /// An assistant turn: its text blocks (concatenated) and `tool_use` blocks as `tool_calls`.
    fn assistant_message(&mut self, content: ContentView, seq: &mut Seq) -> Result<(), ApiError> {
        seq.next(self.out);
        self.out.s("{\"role\":\"assistant\",\"content\":");
        let blocks = match content {
            ContentView::Text(text) => {
                self.out.s(text.json());
                self.out.s("}");
                return Ok(());
            }
            ContentView::Blocks(blocks) => blocks,
        };
        let (mut has_text, mut calls) = (false, 0usize);
        walk(blocks, "message content", |b: BlockView| {
            self.count_dropped(&b);
            match b.kind.as_ref() {
                "text" => {
                    has_text |= b.text.is_some_and(|t| !t.is_empty());
                    Ok(())
                }
                "tool_use" => {
                    calls += 1;
                    Ok(())
                }
                "thinking" | "redacted_thinking" => {
                    self.dropped.thinking_blocks += 1;
                    Ok(())
                }
                other => Err(refused_block(other, "an assistant message")),
            }
        })?;
        if !has_text && calls > 0 {
            self.out.s("null");
        } else {
            self.out.s("\"");
            walk(blocks, "message content", |b: BlockView| {
                if let (true, Some(text)) = (b.kind == "text", b.text) {
                    self.out.s(text.inner());
                }
                Ok(())
            })?;
            self.out.s("\"");
        }
        if calls > 0 {
            self.out.s(",\"tool_calls\":[");
            let mut call_seq = Seq::default();
            walk(blocks, "message content", |b: BlockView| {
                if b.kind != "tool_use" {
                    return Ok(());
                }
                let id = b.id.ok_or_else(|| invalid("tool_use block without `id`"))?;
                let name = b.name.ok_or_else(|| invalid("tool_use block without `name`"))?;
                call_seq.next(self.out);
                self.out.s("{\"id\":");
                self.out.s(id.json());
                self.out.s(",\"type\":\"function\",\"function\":{\"name\":");
                self.out.s(name.json());
                self.out.s(",\"arguments\":\"");
                match b.input.filter(|i| i.get() != "null") {
                    Some(input) if input.get().starts_with('{') => write_json_as_string_content(self.out, input.get()),
                    Some(_) => return Err(invalid("tool_use `input` must be an object")),
                    None => self.out.s("{}"),
                }
                self.out.s("\"}}");
                Ok(())
            })?;
            self.out.s("]");
        }
        self.out.s("}");
        Ok(())
    }

    fn tool(&mut self, t: ToolView, seq: &mut Seq) -> Result<(), ApiError> {
        let ToolView { kind, name, description, input_schema, strict, cache_control } = t;
        match kind.as_deref() {
            None | Some("custom") => {}
            Some(other) => {
                return Err(unsupported(format!(
                    "tool {} has type `{other}`: Anthropic server tools and Anthropic-defined tools cannot run on \
                     OpenAI-compatible backends; declare a client tool with an input_schema instead",
                    name.json()
                )))
            }
        }
        if cache_control.is_some_and(|c| c.get() != "null") {
            self.dropped.cache_control += 1;
        }
        seq.next(self.out);
        self.out.s("{\"type\":\"function\",\"function\":{\"name\":");
        self.out.s(name.json());
        if let Some(d) = description {
            self.out.s(",\"description\":");
            self.out.s(d.json());
        }
        self.out.s(",\"parameters\":");
        match input_schema.filter(|s| s.get() != "null") {
            Some(schema) if schema.get().starts_with('{') => self.out.s(schema.get()),
            Some(_) => return Err(invalid(format!("tool {}: `input_schema` must be an object", name.json()))),
            None => self.out.s("{\"type\":\"object\",\"properties\":{}}"),
        }
        if let Some(strict) = strict {
            self.out.s(if strict { ",\"strict\":true" } else { ",\"strict\":false" });
        }
        self.out.s("}}");
        Ok(())
    }
}

/// A block OpenAI chat cannot take: a 400 that names it.
fn refused_block(kind: &str, place: &str) -> ApiError {
    let why = match kind {
        "document" => "OpenAI chat completions cannot take documents",
        "search_result" => "OpenAI chat completions have no search result blocks",
        "image" => "OpenAI chat completions take images in user messages only",
        "tool_use" => "tool_use blocks belong in assistant messages",
        "tool_result" => "tool_result blocks belong in user messages",
        "text" | "thinking" | "redacted_thinking" => "it is not expected there",
        k if k.starts_with("server_tool_use") || k.ends_with("_tool_result") || k.starts_with("mcp_") => {
            "server tools run at Anthropic; OpenAI-compatible backends cannot replay them"
        }
        _ => "OpenAI-compatible backends cannot take it",
    };
    unsupported(format!("a `{kind}` block in {place}: {why}"))
}

// ---------------------------------------------------------------------------------------------
// Responses: borrowed views of chat completions and chunks. Every field is optional and read
// raw, so a field of an unexpected type is ignored rather than failing the answer.

#[derive(Deserialize)]
struct CompletionView<'a> {
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    model: Option<&'a RawValue>,
    #[serde(default, borrow)]
    choices: Option<&'a RawValue>,
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ChoiceView<'a> {
    #[serde(default, borrow)]
    index: Option<&'a RawValue>,
    #[serde(default, borrow)]
    message: Option<MessageOutView<'a>>,
    #[serde(default, borrow)]
    delta: Option<MessageOutView<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct MessageOutView<'a> {
    /// A string (or, from some servers, an array of text parts).
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    /// Reasoning text: `reasoning_content` (vLLM, DeepSeek) or `reasoning` (newer vLLM, OpenRouter).
    #[serde(default, borrow)]
    reasoning_content: Option<&'a RawValue>,
    #[serde(default, borrow)]
    reasoning: Option<&'a RawValue>,
    #[serde(default, borrow)]
    refusal: Option<&'a RawValue>,
    #[serde(default, borrow)]
    tool_calls: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ToolCallOutView<'a> {
    #[serde(default, borrow)]
    index: Option<&'a RawValue>,
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    function: Option<FunctionOutView<'a>>,
}

#[derive(Deserialize)]
struct FunctionOutView<'a> {
    #[serde(default, borrow)]
    name: Option<&'a RawValue>,
    /// JSON text in a string (or, from some servers, the object itself).
    #[serde(default, borrow)]
    arguments: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct TextPartView<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "opt_text")]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<&'a RawValue>,
}

/// A raw value that is a string literal.
fn str_of(raw: Option<&RawValue>) -> Option<RawStr<'_>> {
    raw.filter(|r| r.get().starts_with('"')).map(RawStr)
}

/// A non-empty string literal.
fn text_of(raw: Option<&RawValue>) -> Option<RawStr<'_>> {
    str_of(raw).filter(|s| !s.is_empty())
}

fn usage_of(raw: Option<&RawValue>) -> Option<TokenUsage> {
    let raw = raw.filter(|r| r.get().starts_with('{'))?;
    crate::json::from_raw::<OpenAIUsage>(raw).ok().map(|u| TokenUsage::from(&u))
}

fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// OpenAI usage → Anthropic usage: Anthropic's `input_tokens` excludes cache reads.
fn write_usage(out: &mut Vec<u8>, u: TokenUsage, creation: bool) {
    let _ = write!(
        out,
        "{{\"input_tokens\":{},\"output_tokens\":{},\"cache_read_input_tokens\":{}{}}}",
        u.input.saturating_sub(u.cached_input),
        u.output,
        u.cached_input,
        if creation { ",\"cache_creation_input_tokens\":0" } else { "" }
    );
}

/// The text of an error value: a string, or an object's `message`.
fn error_text(raw: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct WithMessage<'a> {
        #[serde(default, borrow)]
        message: Option<&'a RawValue>,
    }
    let text = match raw.get().as_bytes().first() {
        Some(b'"') => RawStr(raw).text(),
        Some(b'{') => str_of(crate::json::from_raw::<WithMessage>(raw).ok()?.message)?.text(),
        _ => return None,
    };
    Some(text.chars().take(2048).collect())
}

/// `tool_calls[].function.arguments` → the `input` object: decoded into `out` without a copy of
/// its own; arguments that are not a JSON object are kept as `{"_raw_arguments": ...}`.
fn write_input(out: &mut Vec<u8>, arguments: Option<&RawValue>) {
    let Some(raw) = arguments.filter(|a| a.get() != "null") else {
        out.s("{}");
        return;
    };
    match raw.get().as_bytes().first() {
        Some(b'{') => out.s(raw.get()),
        Some(b'"') if RawStr(raw).inner().trim().is_empty() => out.s("{}"),
        Some(b'"') => {
            let start = out.len();
            let decoded = unescape_into(out, RawStr(raw).inner().as_bytes());
            let object = decoded
                && out.get(start..).is_some_and(|d| {
                    d.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
                        && crate::json::from_bytes::<IgnoredAny>(d).is_ok()
                });
            if !object {
                out.truncate(start);
                out.s("{\"_raw_arguments\":");
                out.s(raw.get());
                out.s("}");
            }
        }
        _ => {
            out.s("{\"_raw_arguments\":");
            out.s(raw.get());
            out.s("}");
        }
    }
}

/// Room beyond the upstream answer's length for the Messages envelope and synthesized ids.
const ANSWER_SLACK: usize = 64 * 1024;

/// A chat completion → a Messages response, written into one buffer sized from the answer.
fn to_messages_response(body: &[u8], fallback_model: &str) -> Result<(Vec<u8>, Option<TokenUsage>), String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("the body is empty".into());
    }
    let text = std::str::from_utf8(body).map_err(|e| format!("the body is not UTF-8: {e}"))?;
    let c: CompletionView = crate::json::from_text(text).map_err(|e| e.to_string())?;
    let Some(choices) = c.choices.filter(|c| c.get() != "null") else {
        return Err(match c.error.and_then(error_text) {
            Some(message) => format!("the upstream answered with an error: {message}"),
            None => "the response has no choices".into(),
        });
    };
    let mut first: Option<ChoiceView> = None;
    match each(choices, |choice: ChoiceView| {
        first = Some(choice);
        Err(())
    }) {
        Ok(()) | Err(EachError::Stopped(())) => {}
        Err(EachError::Json(e)) => return Err(format!("invalid choices: {e}")),
    }
    let choice = first.ok_or("the response has no choices")?;
    let message = choice.message.or(choice.delta).ok_or("the choice has no message")?;
    let usage = usage_of(c.usage);

    // The answer is about as long as the chat completion (strings are copied as they came; the
    // envelope is a little shorter): one allocation, never doubled for real answers.
    let mut out = Vec::with_capacity(body.len().saturating_add(ANSWER_SLACK));
    out.s("{\"id\":");
    out.s(str_of(c.id).map_or("\"msg_llmgw\"", |id| id.json()));
    out.s(",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
    match text_of(c.model) {
        Some(model) => out.s(model.json()),
        None => out.put(&json_string(fallback_model)),
    }
    out.s(",\"content\":[");
    let mut seq = Seq::default();
    if let Some(reasoning) = text_of(message.reasoning_content).or(text_of(message.reasoning)) {
        seq.next(&mut out);
        out.s("{\"type\":\"thinking\",\"thinking\":");
        out.s(reasoning.json());
        out.s(",\"signature\":\"\"}");
    }
    let mut wrote_text = false;
    let text_block = |out: &mut Vec<u8>, seq: &mut Seq, text: RawStr| {
        seq.next(out);
        out.s("{\"type\":\"text\",\"text\":");
        out.s(text.json());
        out.s("}");
    };
    match message.content.map(|c| c.get().as_bytes().first()) {
        Some(Some(b'"')) => {
            if let Some(text) = text_of(message.content) {
                text_block(&mut out, &mut seq, text);
                wrote_text = true;
            }
        }
        Some(Some(b'[')) => {
            if let Some(parts) = message.content {
                let _ = each(parts, |p: TextPartView| {
                    if let (Some("text") | None, Some(text)) = (p.kind.as_deref(), text_of(p.text)) {
                        text_block(&mut out, &mut seq, text);
                        wrote_text = true;
                    }
                    Ok::<(), ()>(())
                });
            }
        }
        _ => {}
    }
    let refusal = text_of(message.refusal).filter(|_| !wrote_text);
    if let Some(refusal) = refusal {
        text_block(&mut out, &mut seq, refusal);
    }
    let mut calls = 0u64;
    if let Some(tool_calls) = message.tool_calls.filter(|t| t.get().starts_with('[')) {
        let _ = each(tool_calls, |call: ToolCallOutView| {
            let function = call.function.as_ref();
            seq.next(&mut out);
            out.s("{\"type\":\"tool_use\",\"id\":");
            match text_of(call.id) {
                Some(id) => out.s(id.json()),
                None => {
                    let _ = write!(out, "\"toolu_llmgw_{calls}\"");
                }
            }
            out.s(",\"name\":");
            out.s(str_of(function.and_then(|f| f.name)).map_or("\"\"", |n| n.json()));
            out.s(",\"input\":");
            write_input(&mut out, function.and_then(|f| f.arguments));
            out.s("}");
            calls += 1;
            Ok::<(), ()>(())
        });
    }
    let finish = str_of(choice.finish_reason).map(|f| f.text());
    let reason = match (finish.as_deref().map(stop_reason), calls > 0, refusal.is_some()) {
        (Some("max_tokens"), _, _) => "max_tokens",
        // Some servers say `stop` after tool calls; Anthropic clients run tools on `tool_use` only.
        (_, true, _) => "tool_use",
        (None | Some("end_turn"), false, true) => "refusal",
        (Some(r), _, _) => r,
        (None, _, _) => "end_turn",
    };
    out.s("],\"stop_reason\":\"");
    out.s(reason);
    out.s("\",\"stop_sequence\":null,\"usage\":");
    write_usage(&mut out, usage.unwrap_or_default(), true);
    out.s("}");
    Ok((out, usage))
}

// ---------------------------------------------------------------------------------------------
// Streams: OpenAI chunks → Anthropic events.

#[derive(Deserialize)]
struct ChunkView<'a> {
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    model: Option<&'a RawValue>,
    #[serde(default, borrow)]
    choices: Option<&'a RawValue>,
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

/// What the open content block is, in the Anthropic event stream being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    /// A tool call, by its `index` (or a number of ours when the server sends none).
    Tool(u64),
}

#[derive(Default)]
struct EventWriter {
    model: String,
    started: bool,
    open: Option<Block>,
    next_index: u32,
    stop_reason: Option<&'static str>,
    usage: Option<TokenUsage>,
    /// `message_stop` or an `error` event was written: nothing follows.
    done: bool,
    saw_content: bool,
    /// Tool blocks opened so far.
    tools: u64,
    /// The id of the open tool block, to tell calls apart when the server sends no `index`.
    open_tool_id: Option<String>,
}

fn event(out: &mut Vec<u8>, name: &str, parts: &[&str]) {
    out.s("event: ");
    out.s(name);
    out.s("\ndata: ");
    for p in parts {
        out.s(p);
    }
    out.s("\n\n");
}

impl EventWriter {
    fn fail(&mut self, out: &mut Vec<u8>, message: &str) {
        if self.done {
            return;
        }
        self.done = true;
        let message = String::from_utf8(json_string(message)).unwrap_or_default();
        event(out, "error", &["{\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":", &message, "}}"]);
    }

    fn start(&mut self, chunk: &ChunkView, out: &mut Vec<u8>) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        let fallback = String::from_utf8(json_string(&self.model)).unwrap_or_default();
        let model = text_of(chunk.model).map_or(fallback.as_str(), |m| m.json());
        let id = text_of(chunk.id).map_or("\"msg_llmgw\"", |id| id.json());
        event(
            out,
            "message_start",
            &[
                "{\"type\":\"message_start\",\"message\":{\"id\":",
                id,
                ",\"type\":\"message\",\"role\":\"assistant\",\"model\":",
                model,
                ",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":0,\"output_tokens\":0}}}",
            ],
        );
    }

    fn open_block(&mut self, block: Block, start: &[&str], out: &mut Vec<u8>) {
        if self.open == Some(block) {
            return;
        }
        self.close_block(out);
        self.open = Some(block);
        let index = self.next_index.to_string();
        out.s("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":");
        out.s(&index);
        out.s(",\"content_block\":");
        for p in start {
            out.s(p);
        }
        out.s("}\n\n");
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if self.open.take().is_some() {
            let index = self.next_index.to_string();
            event(out, "content_block_stop", &["{\"type\":\"content_block_stop\",\"index\":", &index, "}"]);
            self.next_index = self.next_index.saturating_add(1);
        }
    }

    fn delta(&mut self, kind: &str, field: &str, value: RawStr, out: &mut Vec<u8>) {
        self.saw_content = true;
        let index = self.next_index.to_string();
        event(
            out,
            "content_block_delta",
            &[
                "{\"type\":\"content_block_delta\",\"index\":",
                &index,
                ",\"delta\":{\"type\":\"",
                kind,
                "\",\"",
                field,
                "\":",
                value.json(),
                "}}",
            ],
        );
    }

    /// One SSE `data` field.
    fn on_data(&mut self, data: &str, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let data = data.trim();
        if data == "[DONE]" {
            self.finish(out);
            return;
        }
        if data.is_empty() {
            return;
        }
        let chunk: ChunkView = match crate::json::from_text(data) {
            Ok(chunk) => chunk,
            Err(e) => {
                log::warn!("llmgw: an OpenAI stream event is not JSON: {e}");
                self.fail(out, &format!("the upstream stream sent an event that is not JSON: {e}"));
                return;
            }
        };
        if let Some(error) = chunk.error.filter(|e| e.get() != "null") {
            let message = error_text(error).unwrap_or_else(|| "upstream stream error".into());
            self.fail(out, &message);
            return;
        }
        self.start(&chunk, out);
        if let Some(u) = usage_of(chunk.usage) {
            self.usage = Some(u);
        }
        if let Some(choices) = chunk.choices.filter(|c| c.get().starts_with('[')) {
            let result = each(choices, |choice: ChoiceView| {
                // One choice is asked for; others (index > 0) are not part of the message.
                if choice.index.is_none_or(|i| i.get() == "0") {
                    self.choice(choice, out);
                }
                Ok::<(), ()>(())
            });
            if let Err(EachError::Json(e)) = result {
                log::warn!("llmgw: skipped OpenAI stream choices of an unexpected shape: {e}");
            }
        }
    }

    fn choice(&mut self, choice: ChoiceView, out: &mut Vec<u8>) {
        if let Some(delta) = choice.delta.or(choice.message) {
            if let Some(r) = text_of(delta.reasoning_content).or(text_of(delta.reasoning)) {
                self.open_block(
                    Block::Thinking,
                    &["{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}"],
                    out,
                );
                self.delta("thinking_delta", "thinking", r, out);
            }
            for text in [text_of(delta.content), text_of(delta.refusal)].into_iter().flatten() {
                self.open_block(Block::Text, &["{\"type\":\"text\",\"text\":\"\"}"], out);
                self.delta("text_delta", "text", text, out);
            }
            if let Some(calls) = delta.tool_calls.filter(|c| c.get().starts_with('[')) {
                let _ = each(calls, |call: ToolCallOutView| {
                    self.tool_call(call, out);
                    Ok::<(), ()>(())
                });
            }
        }
        if let Some(finish) = str_of(choice.finish_reason) {
            self.stop_reason = Some(stop_reason(&finish.text()));
        }
    }

    fn tool_call(&mut self, call: ToolCallOutView, out: &mut Vec<u8>) {
        let index = call.index.and_then(|i| i.get().parse::<u64>().ok());
        let id = text_of(call.id);
        let open_key = match self.open {
            Some(Block::Tool(key)) => Some(key),
            _ => None,
        };
        let other_id =
            |current: &Option<String>| id.is_some_and(|id| current.as_deref().is_some_and(|cur| cur != id.inner()));
        let key = match (index, open_key) {
            (Some(i), _) => i,
            // No `index`: the open call continues unless a new id says otherwise.
            (None, Some(key)) if !other_id(&self.open_tool_id) => key,
            (None, _) => u64::MAX - self.tools,
        };
        // A new call: another index, or (from servers that reuse one index) another id.
        let new = open_key != Some(key) || other_id(&self.open_tool_id);
        let function = call.function.as_ref();
        if new {
            self.close_block(out);
            let synthetic = format!("\"toolu_llmgw_{}\"", self.tools);
            let id_json = id.map_or(synthetic.as_str(), |id| id.json());
            let name = str_of(function.and_then(|f| f.name)).map_or("\"\"", |n| n.json());
            self.open_block(
                Block::Tool(key),
                &["{\"type\":\"tool_use\",\"id\":", id_json, ",\"name\":", name, ",\"input\":{}}"],
                out,
            );
            self.open_tool_id = id.map(|id| id.inner().to_string());
            self.tools = self.tools.saturating_add(1);
            self.saw_content = true;
        }
        if let Some(arguments) = text_of(function.and_then(|f| f.arguments)) {
            self.delta("input_json_delta", "partial_json", arguments, out);
        }
    }

    /// Closes the message: last block, `message_delta` with stop reason and usage, `message_stop`.
    /// A stream with no event at all is an error instead.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if !self.started {
            self.fail(out, "the upstream stream ended without any event");
            return;
        }
        self.done = true;
        self.close_block(out);
        let reason = match self.stop_reason.unwrap_or("end_turn") {
            // Some servers say `stop` after tool calls; Anthropic clients run tools on `tool_use` only.
            "end_turn" if self.tools > 0 => "tool_use",
            r => r,
        };
        out.s("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"");
        out.s(reason);
        out.s("\",\"stop_sequence\":null},\"usage\":");
        write_usage(out, self.usage.unwrap_or_default(), false);
        out.s("}\n\n");
        event(out, "message_stop", &["{\"type\":\"message_stop\"}"]);
    }

    /// The upstream stream ended: a finished message closes normally; anything else is an error.
    fn end(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if self.started && self.stop_reason.is_some() {
            // A finish_reason without `[DONE]`: the message is complete all the same.
            self.finish(out);
        } else if self.started {
            self.fail(out, "the upstream stream ended before the message was finished");
        } else {
            self.fail(out, "the upstream stream ended without any event");
        }
    }
}

pub struct AnthropicToOpenAI {
    model: String,
    stream: bool,
    streaming_response: bool,
    splitter: Splitter,
    writer: EventWriter,
}

impl AnthropicToOpenAI {
    pub fn new() -> Self {
        AnthropicToOpenAI {
            model: String::new(),
            stream: false,
            streaming_response: false,
            splitter: Splitter::default(),
            writer: EventWriter::default(),
        }
    }
}

impl Translator for AnthropicToOpenAI {
    fn request_body(&mut self, request: &RequestContext) -> Result<RequestEdits, ApiError> {
        let RequestContext { info, body, backend, query, now_unix: _, sink: _ } = request;
        let view: MessagesRequestView =
            crate::json::from_bytes(body).map_err(|e| invalid(format!("invalid Messages request: {e}")))?;
        let model = backend.model_override.clone().unwrap_or_else(|| info.model.clone());
        let mut out = request.writer();
        let limit_field = output_limit_field(backend);
        RequestWriter { out: &mut out, dropped: Dropped::default() }.request(
            view,
            body,
            &model,
            info.stream,
            limit_field,
        )?;
        self.stream = info.stream;
        self.writer = EventWriter { model: model.clone(), ..Default::default() };
        self.model = model;
        Ok(RequestEdits {
            path: Some(upstream_path(backend, Endpoint::ChatCompletions, &self.model, query)),
            body: Some(NewBody::whole(out)),
            set_headers: vec![("content-type".into(), "application/json".into())],
        })
    }

    fn response_headers(&mut self, _status: u16, content_type: &str) -> ResponsePlan {
        self.streaming_response =
            self.stream && content_type.trim_start().to_ascii_lowercase().starts_with("text/event-stream");
        let (mode, content_type) = if self.streaming_response {
            (BodyMode::Stream, "text/event-stream")
        } else {
            (BodyMode::Buffer, "application/json")
        };
        ResponsePlan {
            mode,
            set_headers: vec![("content-type", content_type.into())],
            remove_headers: vec!["content-length"],
        }
    }

    fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> ChunkEdits {
        if !self.streaming_response {
            return match to_messages_response(chunk, &self.model) {
                Ok((response, usage)) => {
                    ChunkEdits { replace: Some(response), usage, first_content: false, status: None }
                }
                Err(e) => ChunkEdits::unreadable(anthropic_error_json(
                    &format!("the upstream response could not be read: {e}"),
                    "api_error",
                )),
            };
        }
        let had_content = self.writer.saw_content;
        let mut out = Vec::new();
        let writer = &mut self.writer;
        let within = self.splitter.push(chunk, |block| {
            let event = parse_event(block);
            if event.has_data {
                writer.on_data(&event.data, &mut out);
            }
        });
        if !within {
            log::warn!("llmgw: an OpenAI stream event exceeded the size limit");
            self.writer.fail(&mut out, "an upstream stream event exceeded the gateway's size limit");
        }
        if end_of_stream {
            let tail = parse_event(&self.splitter.take_pending());
            if tail.has_data {
                self.writer.on_data(&tail.data, &mut out);
            }
            self.writer.end(&mut out);
        }
        ChunkEdits {
            replace: Some(out),
            usage: if end_of_stream { self.writer.usage } else { None },
            first_content: !had_content && self.writer.saw_content,
            status: None,
        }
    }

    fn error_body(&mut self, status: u16, body: &[u8]) -> Option<Vec<u8>> {
        Some(anthropic_error_json(
            &upstream_error_message(status, body),
            ErrorKind::for_status(status).anthropic_type(status),
        ))
    }
}

/// The message of an upstream error body of any shape (`{"error":{"message"}}`, `{"error":"..."}`,
/// `{"message"}`, `{"detail"}`, plain text, nothing), without building the body as a tree.
fn upstream_error_message(status: u16, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(default, borrow)]
        error: Option<&'a RawValue>,
        #[serde(default, borrow)]
        message: Option<&'a RawValue>,
        #[serde(default, borrow)]
        detail: Option<&'a RawValue>,
    }
    let parsed = std::str::from_utf8(body).ok().and_then(|t| crate::json::from_text::<Envelope>(t).ok());
    if let Some(e) = parsed {
        if let Some(m) = [e.error, e.message, e.detail].into_iter().flatten().find_map(error_text) {
            return m;
        }
    }
    let head = body.get(..body.len().min(8192)).unwrap_or_default();
    let text = String::from_utf8_lossy(head);
    let text = text.trim();
    if text.is_empty() {
        format!("upstream returned HTTP {status} with an empty body")
    } else {
        text.chars().take(2048).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Schema;
    use crate::request::read;
    use serde_json::{json, Value};

    fn translate(body: &str) -> (Value, RequestEdits, AnthropicToOpenAI) {
        let backend = crate::testing::backend(Schema::OpenAI);
        let mut t = AnthropicToOpenAI::new();
        let info = read(body.as_bytes()).unwrap();
        let ctx = RequestContext::new(&info, body.as_bytes(), &backend);
        let edits = t.request_body(&ctx).unwrap();
        (serde_json::from_slice(&edits.body.as_ref().unwrap().apply_to(b"")).unwrap(), edits, t)
    }

    #[test]
    fn request_becomes_chat() {
        let (v, edits, _) = translate(
            r#"{"model":"gpt-4o","max_tokens":64,"system":[{"type":"text","text":"sys"}],"stream":true,
                "messages":[{"role":"user","content":[{"type":"text","text":"see"},{"type":"image","source":{"type":"base64","media_type":"image/jpeg","data":"/9j/"}}]},
                  {"role":"assistant","content":[{"type":"text","text":"let me check"},{"type":"tool_use","id":"toolu_1","name":"get","input":{"q":1}}]},
                  {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"42"},{"type":"text","text":"and?"}]}],
                "tools":[{"name":"get","description":"d","input_schema":{"type":"object"}}],
                "tool_choice":{"type":"any","disable_parallel_tool_use":true},"stop_sequences":["Z"],"top_k":5,
                "metadata":{"user_id":"u"}}"#,
        );
        assert_eq!(edits.path.as_deref(), Some("/v1/chat/completions"));
        assert_eq!(
            v,
            json!({"model":"gpt-4o","messages":[
                {"role":"system","content":"sys"},
                {"role":"user","content":[{"type":"text","text":"see"},{"type":"image_url","image_url":{"url":"data:image/jpeg;base64,/9j/"}}]},
                {"role":"assistant","content":"let me check","tool_calls":[{"id":"toolu_1","type":"function","function":{"name":"get","arguments":"{\"q\":1}"}}]},
                {"role":"tool","tool_call_id":"toolu_1","content":"42"},
                {"role":"user","content":"and?"}],
              "max_completion_tokens":64,"stop":["Z"],"stream":true,"stream_options":{"include_usage":true},
              "tools":[{"type":"function","function":{"name":"get","parameters":{"type":"object"},"description":"d"}}],
              "tool_choice":"required","parallel_tool_calls":false,"user":"u"})
        );
    }

    #[test]
    fn max_tokens_goes_as_max_completion_tokens_where_the_backend_takes_it() {
        let body = br#"{"model":"o3-mini","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;
        let limit = |backend: &Backend| {
            let info = read(body).unwrap();
            let edits = AnthropicToOpenAI::new().request_body(&RequestContext::new(&info, body, backend)).unwrap();
            let v: Value = serde_json::from_slice(&edits.body.unwrap().apply_to(b"")).unwrap();
            let names = ["max_tokens", "max_completion_tokens"];
            names.into_iter().filter(|n| v.get(n) == Some(&json!(64))).collect::<Vec<_>>()
        };
        assert_eq!(limit(&crate::testing::backend(Schema::OpenAI)), ["max_completion_tokens"]);
        let mut azure = crate::testing::backend(Schema::AzureOpenAI);
        for (version, field) in [
            ("2024-10-21", "max_completion_tokens"),
            ("2024-09-01-preview", "max_completion_tokens"),
            ("preview", "max_completion_tokens"),
            ("2024-08-01-preview", "max_tokens"),
            ("2024-06-01", "max_tokens"),
        ] {
            if let BackendApi::AzureOpenAI { api_version, .. } = &mut azure.api {
                *api_version = version.into();
            }
            assert_eq!(limit(&azure), [field], "{version}");
        }
    }

    #[test]
    fn max_tokens_is_required_as_anthropic_requires_it() {
        let backend = crate::testing::backend(Schema::OpenAI);
        let body = br#"{"model":"m","messages":[]}"#;
        let info = read(body).unwrap();
        let ctx = RequestContext::new(&info, body, &backend);
        assert_eq!(AnthropicToOpenAI::new().request_body(&ctx).unwrap_err().status, 400);
    }

    #[test]
    fn response_becomes_message() {
        let (_, _, mut t) = translate(r#"{"model":"gpt-4o","max_tokens":5,"messages":[]}"#);
        t.response_headers(200, "application/json");
        let body = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-2024",
            "choices":[{"index":0,"message":{"role":"assistant","content":"Hi","tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":2}"}}]},"finish_reason":"tool_calls"}],
            "usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":2}}}"#;
        let edits = t.response_body(body, true);
        let v: Value = serde_json::from_slice(&edits.replace.unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"id":"chatcmpl-1","type":"message","role":"assistant","model":"gpt-4o-2024",
              "content":[{"type":"text","text":"Hi"},{"type":"tool_use","id":"call_1","name":"f","input":{"a":2}}],
              "stop_reason":"tool_use","stop_sequence":null,
              "usage":{"input_tokens":10,"output_tokens":3,"cache_read_input_tokens":2,"cache_creation_input_tokens":0}})
        );
        assert_eq!(edits.usage.map(|u| u.total), Some(15));
    }

    const STREAM: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"a\\\":1}\"}}]},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":4,\"total_tokens\":13}}\n\n\
data: [DONE]\n\n";

    #[test]
    fn stream_becomes_anthropic_events_at_every_split() {
        let mut reference: Option<Vec<u8>> = None;
        for cut in 0..=STREAM.len() {
            let (_, _, mut t) = translate(r#"{"model":"gpt-4o","max_tokens":5,"stream":true,"messages":[]}"#);
            t.response_headers(200, "text/event-stream");
            let (a, b) = STREAM.as_bytes().split_at(cut);
            let mut out = t.response_body(a, false).replace.unwrap();
            let last = t.response_body(b, true);
            out.extend(last.replace.unwrap());
            assert_eq!(last.usage.map(|u| u.total), Some(13));
            match &reference {
                None => reference = Some(out),
                Some(r) => assert_eq!(&out, r, "cut {cut}"),
            }
        }
        let text = String::from_utf8(reference.unwrap()).unwrap();
        let names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert!(text.contains(r#""delta":{"type":"input_json_delta","partial_json":"{\"a\":1}"}"#), "{text}");
        assert!(text.contains(r#""stop_reason":"tool_use""#));
        assert!(text.contains(r#""output_tokens":4"#));
    }

    fn try_translate(body: &str) -> Result<Value, ApiError> {
        let backend = crate::testing::backend(Schema::OpenAI);
        let info = read(body.as_bytes()).unwrap();
        let ctx = RequestContext::new(&info, body.as_bytes(), &backend);
        let edits = AnthropicToOpenAI::new().request_body(&ctx)?;
        let bytes = edits.body.unwrap().apply_to(b"");
        Ok(serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes))))
    }

    fn with_messages(messages: &str) -> String {
        format!(r#"{{"model":"m","max_tokens":9,"messages":{messages}}}"#)
    }

    #[test]
    fn content_openai_cannot_take_is_a_400_naming_it() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"model":"m","max_tokens":9,"messages":[{"role":"user","content":[{"type":"document","source":{"type":"text","media_type":"text/plain","data":"x"}}]}]}"#,
                "`document`",
            ),
            (
                &with_messages(
                    r#"[{"role":"user","content":[{"type":"search_result","source":"https://x","title":"t","content":[]}]}]"#,
                ),
                "`search_result`",
            ),
            (
                r#"{"model":"m","max_tokens":9,"messages":[],"tools":[{"type":"web_search_20250305","name":"web_search","max_uses":3}]}"#,
                "web_search_20250305",
            ),
            (
                r#"{"model":"m","max_tokens":9,"messages":[],"tools":[{"type":"bash_20250124","name":"bash"}]}"#,
                "bash_20250124",
            ),
            (
                r#"{"model":"m","max_tokens":9,"messages":[],"system":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"AA"}}]}"#,
                "`image` block in `system`",
            ),
            (
                &with_messages(
                    r#"[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"image","source":{"type":"url","url":"https://x/y.png"}}]}]}]"#,
                ),
                "`image` block inside a tool_result",
            ),
            (
                &with_messages(
                    r#"[{"role":"user","content":[{"type":"image","source":{"type":"file","file_id":"file_1"}}]}]"#,
                ),
                "`file` source",
            ),
            (
                &with_messages(
                    r#"[{"role":"assistant","content":[{"type":"server_tool_use","id":"s","name":"web_search","input":{}}]}]"#,
                ),
                "`server_tool_use`",
            ),
            (
                &with_messages(
                    r#"[{"role":"assistant","content":[{"type":"web_search_tool_result","tool_use_id":"s","content":[]}]}]"#,
                ),
                "`web_search_tool_result`",
            ),
            (&with_messages(r#"[{"role":"user","content":[{"type":"brand_new_block"}]}]"#), "`brand_new_block`"),
            (
                r#"{"model":"m","max_tokens":9,"messages":[],"mcp_servers":[{"type":"url","url":"https://mcp","name":"x"}]}"#,
                "mcp_servers",
            ),
            (&with_messages(r#"[{"role":"system","content":"x"}]"#), "\"system\""),
            (r#"{"model":"m","max_tokens":9,"messages":[],"thinking":{"type":"enabled"}}"#, "budget_tokens"),
            (r#"{"model":"m","max_tokens":9,"messages":[],"tool_choice":{"type":"sometimes"}}"#, "sometimes"),
        ];
        for (body, named) in cases {
            let e = try_translate(body).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert!(e.message.contains(named), "{body}: {}", e.message);
            let v: Value = serde_json::from_slice(&e.body(crate::api::ClientApi::Anthropic)).unwrap();
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], "invalid_request_error", "{body}");
        }
    }

    #[test]
    fn cache_control_and_thinking_blocks_are_dropped_and_strings_travel_as_they_came() {
        let v = try_translate(
            r#"{"model":"m","max_tokens":9,
              "system":[{"type":"text","text":"a\"b","cache_control":{"type":"ephemeral"}},{"type":"text","text":"\u00e9\n"}],
              "messages":[
                {"role":"user","content":[{"type":"text","text":"q\\","cache_control":{"type":"ephemeral","ttl":"1h"}}]},
                {"role":"assistant","content":[{"type":"thinking","thinking":"hmm","signature":"sig"},{"type":"text","text":"A"},{"type":"text","text":"B"},
                   {"type":"tool_use","id":"t1","name":"f","input":{ "s" : "x \"y\"\n", "n" : [1, 2.5, {"k": null}] }}]},
                {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","is_error":true,"content":[{"type":"text","text":"boom"},{"type":"text","text":"again"}]},
                   {"type":"tool_result","tool_use_id":"t2","content":"Error already","is_error":true},
                   {"type":"tool_result","tool_use_id":"t3"}]}],
              "tools":[{"name":"f","input_schema":{"type":"object", "properties":{"s":{"type":"string"}}},"cache_control":{"type":"ephemeral"},"strict":true},
                       {"type":"custom","name":"g"}],
              "tool_choice":{"type":"auto","disable_parallel_tool_use":true}}"#,
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"model":"m","max_completion_tokens":9,"messages":[
                {"role":"system","content":"a\"b\né\n"},
                {"role":"user","content":"q\\"},
                {"role":"assistant","content":"AB","tool_calls":[{"id":"t1","type":"function","function":{"name":"f",
                    "arguments":"{\"s\":\"x \\\"y\\\"\\n\",\"n\":[1,2.5,{\"k\":null}]}"}}]},
                {"role":"tool","tool_call_id":"t1","content":"Error: boom\nagain"},
                {"role":"tool","tool_call_id":"t2","content":"Error already"},
                {"role":"tool","tool_call_id":"t3","content":""}],
              "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"s":{"type":"string"}}},"strict":true}},
                       {"type":"function","function":{"name":"g","parameters":{"type":"object","properties":{}}}}],
              "tool_choice":"auto","parallel_tool_calls":false})
        );
        let arguments = v["messages"][2]["tool_calls"][0]["function"]["arguments"].as_str().unwrap();
        assert_eq!(serde_json::from_str::<Value>(arguments).unwrap(), json!({"s":"x \"y\"\n","n":[1,2.5,{"k":null}]}));
    }

    #[test]
    fn thinking_becomes_reasoning_effort_and_empty_lists_are_left_out() {
        for (budget, effort) in [(1024, "low"), (4095, "low"), (4096, "medium"), (10000, "medium"), (31999, "high")] {
            let v = try_translate(&format!(
                r#"{{"model":"m","max_tokens":40000,"messages":[],"thinking":{{"type":"enabled","budget_tokens":{budget}}}}}"#
            ))
            .unwrap();
            assert_eq!(v, json!({"model":"m","messages":[],"max_completion_tokens":40000,"reasoning_effort":effort}));
        }
        let v = try_translate(
            r#"{"model":"m","max_tokens":9,"messages":[],"thinking":{"type":"adaptive","display":"summarized"}}"#,
        );
        assert_eq!(v.unwrap(), json!({"model":"m","messages":[],"max_completion_tokens":9,"reasoning_effort":"high"}));
        let v = try_translate(
            r#"{"model":"m","max_tokens":9,"messages":[],"thinking":{"type":"adaptive"},
               "output_config":{"effort":"low","format":{"type":"json_schema","schema":{"type":"object","properties":{"a":{"type":"string"}}}}}}"#,
        );
        assert_eq!(
            v.unwrap(),
            json!({"model":"m","messages":[],"max_completion_tokens":9,"reasoning_effort":"low",
              "response_format":{"type":"json_schema","json_schema":{"name":"output","strict":true,
                "schema":{"type":"object","properties":{"a":{"type":"string"}}}}}})
        );
        let v = try_translate(r#"{"model":"m","max_tokens":9,"messages":[],"output_config":{"effort":"max"}}"#);
        assert_eq!(v.unwrap(), json!({"model":"m","messages":[],"max_completion_tokens":9,"reasoning_effort":"high"}));
        for bad in [
            r#""thinking":{"type":"sometimes"}"#,
            r#""output_config":{"effort":"extreme"}"#,
            r#""output_format":{"type":"regex","pattern":"a+"}"#,
            r#""output_config":{"format":{"type":"json_schema"}}"#,
        ] {
            let body = format!(r#"{{"model":"m","max_tokens":9,"messages":[],{bad}}}"#);
            assert_eq!(try_translate(&body).unwrap_err().status, 400, "{bad}");
        }
        let v = try_translate(
            r#"{"model":"m","max_tokens":5,"messages":[],"thinking":{"type":"disabled"},"tools":[ ],"stop_sequences":[],
               "tool_choice":{"type":"any"},"metadata":{"user_id":null},"top_k":3,"service_tier":"auto","x_new":{"deep":[[[]]]}}"#,
        )
        .unwrap();
        assert_eq!(v, json!({"model":"m","messages":[],"max_completion_tokens":5}));
        let v = try_translate(
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"url","url":"https://x/a.png"}}]},
               {"role":"assistant","content":[{"type":"tool_use","id":"t","name":"f","input":{}}]},
               {"role":"assistant","content":[{"type":"thinking","thinking":"only"}]}],
               "tools":[{"name":"f","description":"d"}],"tool_choice":{"type":"tool","name":"f"},"temperature":0.5,"top_p":1}"#,
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"model":"m","messages":[
                {"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/a.png"}}]},
                {"role":"assistant","content":null,"tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{}"}}]},
                {"role":"assistant","content":""}],
              "max_completion_tokens":5,"temperature":0.5,"top_p":1.0,
              "tools":[{"type":"function","function":{"name":"f","description":"d","parameters":{"type":"object","properties":{}}}}],
              "tool_choice":{"type":"function","function":{"name":"f"}}})
        );
    }

    #[test]
    fn deep_nesting_and_nested_empty_lists_are_handled() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        // Skipped members cost no recursion; nested values that are forwarded are copied raw.
        let v = try_translate(&format!(r#"{{"model":"m","max_tokens":1,"messages":[],"x":{}}}"#, deep(100_000)));
        assert_eq!(v.unwrap()["messages"], json!([]));
        let body = format!(
            r#"{{"model":"m","max_tokens":1,"messages":[{{"role":"assistant","content":[{{"type":"tool_use","id":"a","name":"f","input":{{"d":{}}}}}]}}]}}"#,
            deep(100_000)
        );
        let backend = crate::testing::backend(Schema::OpenAI);
        let info = read(body.as_bytes()).unwrap();
        let ctx = RequestContext::new(&info, body.as_bytes(), &backend);
        let out = AnthropicToOpenAI::new().request_body(&ctx).unwrap().body.unwrap().apply_to(b"");
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(r#""arguments":"{\"d\":[[[["#), "{}", &text[..200]);
        let v = try_translate(
            r#"{"model":"m","max_tokens":1,"messages":[],"stop_sequences":[ ],"tools":[{"name":"f","input_schema":{"type":"object"}}]}"#,
        );
        assert_eq!(v.unwrap()["tools"][0]["function"]["parameters"], json!({"type":"object"}));
        assert_eq!(
            try_translate(r#"{"model":"m","max_tokens":1,"messages":[],"stop_sequences":[[]]}"#).unwrap_err().status,
            400
        );
    }

    #[test]
    fn request_writer_never_panics_on_odd_shapes() {
        for body in [
            r#"{"model":"m","max_tokens":1,"messages":{}}"#,
            r#"{"model":"m","max_tokens":1,"messages":[5]}"#,
            r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":5}]}"#,
            r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"text"}]}]}"#,
            r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"text","text":7}]}]}"#,
            r#"{"model":"m","max_tokens":1,"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"a","name":"f","input":[1]}]}]}"#,
            r#"{"model":"m","max_tokens":1,"messages":[],"system":5}"#,
            r#"{"model":"m","max_tokens":1,"messages":[],"stop_sequences":[1]}"#,
            r#"{"model":"m","max_tokens":-1,"messages":[]}"#,
            r#"{"model":"m","max_tokens":1,"messages":[],"tools":[{"name":"f","input_schema":"x"}]}"#,
        ] {
            assert_eq!(try_translate(body).unwrap_err().status, 400, "{body}");
        }
    }

    fn message_of(body: &[u8]) -> (Value, ChunkEdits) {
        let (_, _, mut t) = translate(r#"{"model":"asked","max_tokens":5,"messages":[]}"#);
        t.response_headers(200, "application/json");
        let edits = t.response_body(body, true);
        let v = serde_json::from_slice(edits.replace.as_ref().unwrap()).unwrap();
        (v, edits)
    }

    #[test]
    fn responses_with_missing_and_odd_fields_are_read() {
        let (v, edits) = message_of(
            br#"{"choices":[{"message":{"content":null,"reasoning_content":"think","tool_calls":[
                {"function":{"name":"a","arguments":"{\"x\":\"\\ud83d\\ude00 \\u00e9\\n\"}"}},
                {"id":"c2","function":{"name":"b","arguments":""}},
                {"id":"c3","function":{"name":"c","arguments":"not json"}},
                {"id":"c4","function":{"name":"d","arguments":{"already":"object"}}}]},"finish_reason":"stop"}]}"#,
        );
        assert_eq!(
            v,
            json!({"id":"msg_llmgw","type":"message","role":"assistant","model":"asked","content":[
                {"type":"thinking","thinking":"think","signature":""},
                {"type":"tool_use","id":"toolu_llmgw_0","name":"a","input":{"x":"😀 é\n"}},
                {"type":"tool_use","id":"c2","name":"b","input":{}},
                {"type":"tool_use","id":"c3","name":"c","input":{"_raw_arguments":"not json"}},
                {"type":"tool_use","id":"c4","name":"d","input":{"already":"object"}}],
              "stop_reason":"tool_use","stop_sequence":null,
              "usage":{"input_tokens":0,"output_tokens":0,"cache_read_input_tokens":0,"cache_creation_input_tokens":0}})
        );
        assert_eq!(edits.usage, None);
        let (v, _) = message_of(
            br#"{"id":"x","model":"","choices":[{"index":0,"message":{"role":"assistant","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},"finish_reason":"length"}],"usage":{"prompt_tokens":3}}"#,
        );
        assert_eq!(v["content"], json!([{"type":"text","text":"a"},{"type":"text","text":"b"}]));
        assert_eq!((v["model"].as_str(), v["stop_reason"].as_str()), (Some("asked"), Some("max_tokens")));
        assert_eq!(v["usage"]["input_tokens"], 3);
        let (v, _) = message_of(br#"{"choices":[{"message":{"refusal":"I can't"}}]}"#);
        assert_eq!(v["content"], json!([{"type":"text","text":"I can't"}]));
        assert_eq!(v["stop_reason"], "refusal");
    }

    #[test]
    fn unreadable_answers_are_502_in_anthropic_shape() {
        for body in [
            &b""[..],
            b"  \n",
            b"<html>oops</html>",
            br#"{"choices":[]}"#,
            br#"{"id":"x"}"#,
            br#"{"choices":{}}"#,
            br#"{"error":{"message":"quota"}}"#,
            b"{\"choices\":[{\"message\":{\"content\":\"\xff\"}}]}",
        ] {
            let (_, _, mut t) = translate(r#"{"model":"m","max_tokens":5,"messages":[]}"#);
            t.response_headers(200, "application/json");
            let edits = t.response_body(body, true);
            assert_eq!(edits.status, Some(502), "{body:?}");
            let v: Value = serde_json::from_slice(&edits.replace.unwrap()).unwrap();
            assert_eq!((v["type"].as_str(), v["error"]["type"].as_str()), (Some("error"), Some("api_error")));
        }
    }

    #[test]
    fn upstream_errors_are_anthropic_shaped_with_their_status() {
        let mut t = AnthropicToOpenAI::new();
        let mut error =
            |status, body: &[u8]| -> Value { serde_json::from_slice(&t.error_body(status, body).unwrap()).unwrap() };
        assert_eq!(
            error(413, b""),
            json!({"type":"error","error":{"type":"request_too_large","message":"upstream returned HTTP 413 with an empty body"}})
        );
        assert_eq!(
            error(429, br#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#),
            json!({"type":"error","error":{"type":"rate_limit_error","message":"slow down"}})
        );
        assert_eq!(error(404, br#"{"error":"model \"x\" not found"}"#)["error"]["message"], "model \"x\" not found");
        assert_eq!(
            error(400, br#"{"object":"error","message":"bad","type":"BadRequestError"}"#)["error"]["message"],
            "bad"
        );
        assert_eq!(error(422, br#"{"detail":"Field required"}"#)["error"]["type"], "invalid_request_error");
        assert_eq!(error(503, b"no healthy upstream")["error"]["message"], "no healthy upstream");
        assert_eq!(error(500, b"\xff\xfe")["error"]["type"], "api_error");
    }

    /// Runs a stream through the translator split at every offset; all splits must agree.
    fn stream_events(stream: &str) -> String {
        let mut reference: Option<Vec<u8>> = None;
        for cut in 0..=stream.len() {
            let (_, _, mut t) = translate(r#"{"model":"asked","max_tokens":5,"stream":true,"messages":[]}"#);
            t.response_headers(200, "text/event-stream");
            let (a, b) = stream.as_bytes().split_at(cut);
            let mut out = t.response_body(a, false).replace.unwrap();
            out.extend(t.response_body(b, true).replace.unwrap());
            // After the end nothing more is written (trailers call again).
            assert_eq!(t.response_body(b"", true).replace.unwrap(), b"");
            match &reference {
                None => reference = Some(out),
                Some(r) => assert_eq!(&out, r, "cut {cut}"),
            }
        }
        let text = String::from_utf8(reference.unwrap()).unwrap();
        // Every event's data is JSON whose type is the event's name.
        let mut lines = text.lines().filter(|l| !l.is_empty());
        while let Some(name) = lines.next() {
            let data: Value = serde_json::from_str(lines.next().unwrap().strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(Some(data["type"].as_str().unwrap()), name.strip_prefix("event: "), "{text}");
        }
        text
    }

    fn names(text: &str) -> Vec<&str> {
        text.lines().filter_map(|l| l.strip_prefix("event: ")).collect()
    }

    #[test]
    fn streams_without_optional_fields_are_translated_completely() {
        // No role, no id, no model, no usage, no `index` on tool calls, `choices: []`, no [DONE].
        let text = stream_events(concat!(
            "data: {\"choices\":[]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"reasoning\":\"r\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"id\":\"a\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"x\\\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"function\":{\"arguments\":\":1}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"id\":\"b\",\"function\":{\"name\":\"g\",\"arguments\":\"{}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        ));
        assert_eq!(
            names(&text),
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert!(text.contains(r#""model":"asked""#), "{text}");
        assert!(text.contains(r#"{"type":"tool_use","id":"a","name":"f","input":{}}"#), "{text}");
        assert!(text.contains(r#"{"type":"tool_use","id":"b","name":"g","input":{}}"#), "{text}");
        assert!(text.contains(r#""partial_json":":1}""#), "{text}");
        assert!(text.contains(r#""stop_reason":"tool_use""#), "stop after tool calls: {text}");
        // Tool calls with an index, one index reused for a second call with a new id.
        let text = stream_events(concat!(
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"a\",\"function\":{\"name\":\"f\"}}]}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"a\",\"function\":{\"arguments\":\"{}\"}}]}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"b\",\"function\":{\"name\":\"g\",\"arguments\":\"{}\"}}]}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}],\"usage\":null}\n\n",
            "data: [DONE]\n\n",
        ));
        assert_eq!(text.matches("\"type\":\"tool_use\"").count(), 2, "{text}");
        assert_eq!(names(&text).last(), Some(&"message_stop"));
    }

    #[test]
    fn broken_streams_end_with_an_error_event() {
        let error_last = |stream: &str, why: &str| {
            let text = stream_events(stream);
            assert_eq!(names(&text).last(), Some(&"error"), "{stream:?}: {text}");
            assert_eq!(names(&text).iter().filter(|n| **n == "error").count(), 1, "{text}");
            assert!(!text.contains("message_stop"), "{text}");
            assert!(text.contains(why), "{text}");
        };
        // Nothing at all, only comments, or only [DONE].
        error_last("", "without any event");
        error_last(": keepalive\n\n", "without any event");
        error_last("data: [DONE]\n\n", "without any event");
        // Cut off mid-way: no finish_reason, no [DONE].
        error_last("data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n", "before the message was finished");
        // A truncated last event.
        error_last("data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[{\"del", "not JSON");
        // A bad event mid-way: nothing after it is translated.
        error_last(
            "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: <html>\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\ndata: [DONE]\n\n",
            "not JSON",
        );
        // An error chunk from the upstream.
        error_last(
            "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"error\":{\"message\":\"overloaded\"}}\n\n",
            "overloaded",
        );
    }
}
