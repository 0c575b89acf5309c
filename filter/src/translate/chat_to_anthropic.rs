//! OpenAI chat client → Anthropic Messages backends (Anthropic, AWSAnthropic, GCPAnthropic).
//! Also the pieces shared with the native Anthropic translator: paths, body variants, framing.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;

use serde_json::value::RawValue;

use super::jsontext::{compact, string_body, unescape_small, write_as_string};

use super::{BodyMode, ChunkEdits, RequestContext, RequestEdits, ResponsePlan, Translator};
use crate::config::{Backend, BackendApi, Schema};
use crate::error::{ApiError, ErrorKind};
use crate::json::{each, from_raw, json_string, EachError};
use crate::sse::{parse_event, Splitter};
use crate::translate::aws_anthropic_frames::AnthropicFrames;
use crate::translate::openai_passthrough::percent_encode;
use crate::usage::TokenUsage;
use crate::wire::anthropic as a;
use crate::wire::openai as o;

/// The upstream path of a Messages call for each Anthropic-speaking schema.
pub(super) fn messages_path(backend: &Backend, model: &str, stream: bool) -> String {
    let prefix = &backend.prefix;
    match &backend.api {
        BackendApi::AWSAnthropic { .. } => {
            let action = if stream { "invoke-with-response-stream" } else { "invoke" };
            format!("{prefix}/model/{}/{action}", percent_encode(model))
        }
        BackendApi::GCPAnthropic { project, region, .. } => {
            let action = if stream { "streamRawPredict" } else { "rawPredict" };
            format!(
                "{prefix}/projects/{project}/locations/{region}/publishers/anthropic/models/{}:{action}",
                percent_encode(model)
            )
        }
        BackendApi::Anthropic { .. }
        | BackendApi::OpenAI { .. }
        | BackendApi::AzureOpenAI { .. }
        | BackendApi::AWSBedrock { .. }
        | BackendApi::GCPVertexAI { .. } => format!("{prefix}/messages"),
    }
}

/// Headers a Messages call needs on each platform.
pub(super) fn platform_headers(backend: &Backend, client_version: Option<&str>) -> Vec<(String, String)> {
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    match &backend.api {
        BackendApi::Anthropic { anthropic_version, .. } => {
            let version = client_version.unwrap_or(anthropic_version);
            headers.push(("anthropic-version".to_string(), version.to_string()));
        }
        // The version is in the body there.
        BackendApi::AWSAnthropic { .. } | BackendApi::GCPAnthropic { .. } => {}
        BackendApi::OpenAI { .. }
        | BackendApi::AzureOpenAI { .. }
        | BackendApi::AWSBedrock { .. }
        | BackendApi::GCPVertexAI { .. } => {}
    }
    headers
}

/// How Anthropic stream events arrive: SSE, or (AWS `invoke-with-response-stream`) eventstream frames.
pub(super) enum Framing {
    Sse(Splitter),
    /// `failed`: an error was already delivered; the adapter repeats it on every later call.
    Aws {
        frames: AnthropicFrames,
        failed: bool,
    },
}

impl Framing {
    pub(super) fn for_schema(schema: Schema) -> Framing {
        match schema {
            Schema::AWSAnthropic => Framing::Aws { frames: AnthropicFrames::new(), failed: false },
            _ => Framing::Sse(Splitter::default()),
        }
    }

    /// Feeds upstream bytes; calls `on_event` with each event's JSON. A stream error (an AWS
    /// exception frame, a broken frame) is delivered as an Anthropic `error` event.
    pub(super) fn push(&mut self, chunk: &[u8], mut on_event: impl FnMut(&[u8])) -> Result<(), String> {
        match self {
            Framing::Sse(splitter) => {
                let within = splitter.push(chunk, |block| {
                    let event = parse_event(block);
                    if event.has_data {
                        on_event(event.data.as_bytes());
                    }
                });
                if within {
                    Ok(())
                } else {
                    Err("an SSE event exceeded the size limit".into())
                }
            }
            Framing::Aws { frames, failed } => frames.push(chunk, &mut on_event).map_err(|e| {
                if !std::mem::replace(failed, true) {
                    on_event(&e.anthropic_event());
                }
                e.into()
            }),
        }
    }

    /// End of the upstream stream: a last SSE event without its blank line still counts; an
    /// unfinished AWS frame is an error event.
    pub(super) fn finish(&mut self, mut on_event: impl FnMut(&[u8])) {
        match self {
            Framing::Sse(splitter) => {
                let tail = splitter.take_pending();
                let event = parse_event(&tail);
                if event.has_data {
                    on_event(event.data.as_bytes());
                }
            }
            Framing::Aws { frames, failed } => {
                if let Err(e) = frames.finish() {
                    if !std::mem::replace(failed, true) {
                        on_event(&e.anthropic_event());
                    }
                }
            }
        }
    }
}

pub(super) fn finish_reason(reason: Option<a::StopReason>) -> Option<String> {
    let r = match reason? {
        a::StopReason::EndTurn | a::StopReason::StopSequence | a::StopReason::PauseTurn => "stop",
        a::StopReason::MaxTokens => "length",
        a::StopReason::ToolUse => "tool_calls",
        a::StopReason::Refusal => "content_filter",
        a::StopReason::Unknown => "stop",
    };
    Some(r.to_string())
}

/// A message for errors and other text found in an upstream error body of any shape.
pub(super) fn upstream_message(body: &[u8]) -> String {
    if let Ok(UpstreamMessage(Some(m))) = crate::json::from_bytes::<UpstreamMessage>(body) {
        return m;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "the upstream returned an empty error body".into()
    } else {
        text.chars().take(2048).collect()
    }
}

/// The message of an upstream error body: `error.message`, `message`, `Message`, `[0].error.message`
/// (`/0` is also a member named `0`, as in a JSON pointer), the first that is a string. Read as
/// serde_json's `Value` reads (any JSON, numbers in range, the last of a repeated member counts)
/// without building one: deserializing a `Value` cost the .wasm about 13 KB for this alone.
struct UpstreamMessage(Option<String>);

impl<'de> serde::Deserialize<'de> for UpstreamMessage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::DeserializeSeed::deserialize(Probe::Top, d).map(UpstreamMessage)
    }
}

/// Where in the body a value is (for [`UpstreamMessage`]); each reads as a string it may hold.
#[derive(Clone, Copy, PartialEq)]
enum Probe {
    /// The whole body.
    Top,
    /// `/0`: holds `error.message`.
    First,
    /// `error`: holds `message`.
    Error,
    /// A string wanted as it is.
    Text,
    /// Read, checked and dropped.
    Skip,
}

impl Probe {
    /// What a member of an object at this place is.
    fn member(self, name: &str) -> Probe {
        match (self, name) {
            (Probe::Top, "error") | (Probe::First, "error") => Probe::Error,
            (Probe::Top, "message" | "Message") | (Probe::Error, "message") => Probe::Text,
            (Probe::Top, "0") => Probe::First,
            _ => Probe::Skip,
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Probe {
    type Value = Option<String>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Probe {
    type Value = Option<String>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any valid JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Option<String>, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Option<String>, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Option<String>, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Option<String>, E> {
        Ok(None)
    }
    fn visit_str<E>(self, v: &str) -> Result<Option<String>, E> {
        Ok((self == Probe::Text).then(|| v.to_string()))
    }
    fn visit_unit<E>(self) -> Result<Option<String>, E> {
        Ok(None)
    }
    fn visit_none<E>(self) -> Result<Option<String>, E> {
        Ok(None)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Option<String>, A::Error> {
        let mut found = None;
        let mut first = self == Probe::Top;
        while let Some(m) = seq.next_element_seed(if first { Probe::First } else { Probe::Skip })? {
            if first {
                found = m;
            }
            first = false;
        }
        Ok(found)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Option<String>, A::Error> {
        // Top: error.message, message, Message, 0 (the first that is a string); else one slot.
        let mut found: [Option<String>; 4] = Default::default();
        while let Some(name) = map.next_key::<String>()? {
            let place = self.member(&name);
            let value = map.next_value_seed(place)?;
            let slot = match (self, place, name.as_str()) {
                (_, Probe::Skip, _) => continue,
                (Probe::Top, Probe::Text, "message") => 1,
                (Probe::Top, Probe::Text, _) => 2,
                (Probe::Top, Probe::First, _) => 3,
                _ => 0,
            };
            if let Some(s) = found.get_mut(slot) {
                *s = value;
            }
        }
        Ok(found.into_iter().flatten().next())
    }
}

/// An upstream error body of any shape (Anthropic's, AWS's, a proxy's) → an OpenAI error body.
pub(super) fn openai_error_from_anthropic(status: u16, body: &[u8]) -> Vec<u8> {
    let message = if body.iter().all(u8::is_ascii_whitespace) {
        format!("upstream returned HTTP {status} with an empty body")
    } else {
        upstream_message(body)
    };
    crate::error::error_json(&message, ErrorKind::for_status(status).as_str(), "upstream_error")
}

/// Anthropic response → OpenAI `chat.completion` bytes and usage. Read through a borrowed view:
/// texts are copied as the raw JSON the provider sent, tool inputs are written as strings without
/// a parsed copy, and the answer is written into a buffer sized exactly, once.
pub(super) fn completion_body(
    body: &[u8],
    fallback_model: &str,
    created: u64,
) -> Result<(Vec<u8>, TokenUsage), String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("the Anthropic response is empty".into());
    }
    let view: a::ResponseView =
        crate::json::from_bytes(body).map_err(|e| format!("the Anthropic response could not be read: {e}"))?;
    if view.kind.as_deref() == Some("error") || (view.error.is_some() && view.content.is_none()) {
        return Err(format!("the Anthropic response is an error: {}", upstream_message(body)));
    }
    let usage = view.usage.unwrap_or_default().to_tokens();
    let mut counter = Count(0);
    // Writing into a counter and into a Vec cannot fail.
    let _ = write_completion(&view, usage, fallback_model, created, &mut counter);
    let mut out = Vec::with_capacity(counter.0);
    let _ = write_completion(&view, usage, fallback_model, created, &mut out);
    Ok((out, usage))
}

/// Counts bytes written.
pub(super) struct Count(pub(super) usize);

impl Write for Count {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Calls `f` with each readable content block (blocks of other shapes are skipped).
pub(super) fn for_blocks(
    content: Option<&RawValue>,
    mut f: impl FnMut(a::BlockView) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let Some(content) = content else { return Ok(()) };
    let walked = each(content, |raw: &RawValue| match from_raw::<a::BlockView>(raw) {
        Ok(block) => f(block),
        Err(_) => Ok(()),
    });
    match walked {
        Err(EachError::Stopped(e)) => Err(e),
        // Not an array: no blocks.
        Err(EachError::Json(_)) | Ok(()) => Ok(()),
    }
}

pub(super) fn is_kind(block: &a::BlockView, kind: &str) -> bool {
    block.kind.as_deref() == Some(kind)
}

/// The inside of a string member, when it is a non-empty string.
pub(super) fn nonempty(raw: Option<&RawValue>) -> Option<&str> {
    raw.and_then(string_body).filter(|s| !s.is_empty())
}

fn write_completion(
    view: &a::ResponseView,
    usage: TokenUsage,
    fallback_model: &str,
    created: u64,
    w: &mut impl Write,
) -> std::io::Result<()> {
    let (mut has_text, mut has_reasoning, mut has_tools) = (false, false, false);
    for_blocks(view.content, |b| {
        has_text |= is_kind(&b, "text") && nonempty(b.text).is_some();
        has_reasoning |= is_kind(&b, "thinking") && nonempty(b.thinking).is_some();
        has_tools |= is_kind(&b, "tool_use");
        Ok(())
    })?;
    w.write_all(b"{\"id\":")?;
    match view.id.filter(|id| string_body(id).is_some()) {
        Some(id) => w.write_all(id.get().as_bytes())?,
        None => w.write_all(b"\"\"")?,
    }
    w.write_all(b",\"object\":\"chat.completion\",\"created\":")?;
    serde_json::to_writer(&mut *w, &created)?;
    w.write_all(b",\"model\":")?;
    match view.model.filter(|m| nonempty(Some(m)).is_some()) {
        Some(model) => w.write_all(model.get().as_bytes())?,
        None => w.write_all(&json_string(fallback_model))?,
    }
    w.write_all(b",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":")?;
    if has_text || !has_tools {
        w.write_all(b"\"")?;
        for_blocks(view.content, |b| match nonempty(b.text).filter(|_| is_kind(&b, "text")) {
            Some(text) => w.write_all(text.as_bytes()),
            None => Ok(()),
        })?;
        w.write_all(b"\"")?;
    } else {
        w.write_all(b"null")?;
    }
    if has_reasoning {
        w.write_all(b",\"reasoning_content\":\"")?;
        for_blocks(view.content, |b| match nonempty(b.thinking).filter(|_| is_kind(&b, "thinking")) {
            Some(text) => w.write_all(text.as_bytes()),
            None => Ok(()),
        })?;
        w.write_all(b"\"")?;
    }
    if has_tools {
        w.write_all(b",\"tool_calls\":[")?;
        let mut first = true;
        for_blocks(view.content, |b| {
            if !is_kind(&b, "tool_use") {
                return Ok(());
            }
            if !std::mem::take(&mut first) {
                w.write_all(b",")?;
            }
            w.write_all(b"{\"id\":")?;
            w.write_all(b.id.filter(|id| string_body(id).is_some()).map_or("\"\"", |id| id.get()).as_bytes())?;
            w.write_all(b",\"type\":\"function\",\"function\":{\"name\":")?;
            w.write_all(b.name.filter(|n| string_body(n).is_some()).map_or("\"\"", |n| n.get()).as_bytes())?;
            w.write_all(b",\"arguments\":\"")?;
            write_as_string(b.input.map_or("{}", |i| i.get()).as_bytes(), w)?;
            w.write_all(b"\"}}")
        })?;
        w.write_all(b"]")?;
    }
    w.write_all(b"},\"finish_reason\":")?;
    match finish_reason(view.stop_reason) {
        Some(reason) => w.write_all(&json_string(&reason))?,
        None => w.write_all(b"null")?,
    }
    w.write_all(b"}],\"usage\":")?;
    serde_json::to_writer(&mut *w, &o::Usage::from(usage))?;
    w.write_all(b"}")
}

/// Anthropic stream events → OpenAI chunks, one event at a time. Every optional member of an
/// event may be missing: a `content_block_start` without `index` is the next block, a delta
/// without `index` belongs to the current block, a missing `message_start` is made up for.
#[derive(Default)]
pub(super) struct ChunkWriter {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// Anthropic block index → OpenAI tool call index.
    tool_index: HashMap<u32, u32>,
    /// The block the last `content_block_start` opened, and the index the next one gets.
    current_block: Option<u32>,
    next_block: u32,
    usage: a::Usage,
    finish_reason: Option<String>,
    /// The role chunk was sent.
    started: bool,
    pub(super) done: bool,
    pub(super) saw_content: bool,
}

/// A text delta's kind when the delta does not say.
pub(super) fn delta_kind<'a>(delta: &'a a::DeltaView) -> &'a str {
    match delta.kind.as_deref() {
        Some(kind) => kind,
        None if delta.text.is_some() => "text_delta",
        None if delta.partial_json.is_some() => "input_json_delta",
        None if delta.thinking.is_some() => "thinking_delta",
        None => "",
    }
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

    pub(super) fn usage(&self) -> TokenUsage {
        self.usage.to_tokens()
    }

    /// The role chunk, once, before anything else.
    fn start(&mut self, out: &mut Vec<u8>) {
        if !std::mem::replace(&mut self.started, true) {
            let delta = o::Delta { role: Some("assistant".into()), content: Some(String::new()), ..Default::default() };
            o::sse_data(out, &self.chunk(delta, None));
        }
    }

    fn content(&mut self, delta: o::Delta, out: &mut Vec<u8>) {
        self.start(out);
        self.saw_content = true;
        o::sse_data(out, &self.chunk(delta, None));
    }

    /// Translates one event's JSON, appending SSE bytes to `out`. Nothing follows `[DONE]`.
    pub(super) fn on_event(&mut self, json: &[u8], out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let event: a::EventView = match crate::json::from_bytes(json) {
            Ok(e) => e,
            Err(e) => {
                log::warn!("llmgw: skipped an Anthropic stream event that did not parse: {e}");
                return;
            }
        };
        let a::EventView { kind, message, index, content_block, delta, usage, error } = event;
        match kind.as_deref() {
            Some("message_start") => {
                if let Some(a::EventMessageView { id, model, usage }) = message {
                    if let Some(id) = id {
                        self.id = id.into_owned();
                    }
                    if let Some(model) = model.filter(|m| !m.is_empty()) {
                        self.model = model.into_owned();
                    }
                    if let Some(usage) = usage {
                        self.usage = usage;
                    }
                }
                self.start(out);
            }
            Some("content_block_start") => {
                let index = index.unwrap_or(self.next_block);
                self.current_block = Some(index);
                self.next_block = index.saturating_add(1);
                let Some(block) = content_block else { return };
                match block.kind.as_deref() {
                    Some("tool_use") => {
                        let tool = u32::try_from(self.tool_index.len()).unwrap_or(u32::MAX);
                        self.tool_index.insert(index, tool);
                        let text = |raw: Option<&RawValue>| {
                            unescape_small(raw.and_then(string_body).unwrap_or_default()).into_owned()
                        };
                        // Some providers send the whole input here rather than as deltas.
                        let arguments = match block.input.map(|i| compact(i.get().as_bytes())) {
                            Some(input) if input != "{}" => input,
                            _ => String::new(),
                        };
                        let call = o::ToolCallDelta {
                            index: tool,
                            id: Some(text(block.id)),
                            kind: Some("function".into()),
                            function: o::FunctionCallDelta { name: Some(text(block.name)), arguments: Some(arguments) },
                        };
                        self.content(o::Delta { tool_calls: Some(vec![call]), ..Default::default() }, out);
                    }
                    Some("text") => {
                        if let Some(text) = nonempty(block.text) {
                            let text = unescape_small(text).into_owned();
                            self.content(o::Delta { content: Some(text), ..Default::default() }, out);
                        }
                    }
                    Some("thinking") => {
                        if let Some(text) = nonempty(block.thinking) {
                            let text = unescape_small(text).into_owned();
                            self.content(o::Delta { reasoning_content: Some(text), ..Default::default() }, out);
                        }
                    }
                    _ => {}
                }
            }
            Some("content_block_delta") => {
                let index = index.or(self.current_block).unwrap_or(0);
                let Some(delta) = delta else { return };
                let delta = match delta_kind(&delta) {
                    "text_delta" => o::Delta { content: delta.text.map(Cow::into_owned), ..Default::default() },
                    "thinking_delta" => {
                        o::Delta { reasoning_content: delta.thinking.map(Cow::into_owned), ..Default::default() }
                    }
                    "input_json_delta" => {
                        let Some(&tool) = self.tool_index.get(&index) else { return };
                        let call = o::ToolCallDelta {
                            index: tool,
                            id: None,
                            kind: None,
                            function: o::FunctionCallDelta {
                                name: None,
                                arguments: Some(delta.partial_json.map(Cow::into_owned).unwrap_or_default()),
                            },
                        };
                        o::Delta { tool_calls: Some(vec![call]), ..Default::default() }
                    }
                    _ => return,
                };
                self.content(delta, out);
            }
            Some("message_delta") => {
                if let Some(u) = usage {
                    self.usage.output_tokens = u.output_tokens;
                    if let Some(input) = u.input_tokens {
                        self.usage.input_tokens = input;
                    }
                    if u.cache_read_input_tokens.is_some() {
                        self.usage.cache_read_input_tokens = u.cache_read_input_tokens;
                    }
                    if u.cache_creation_input_tokens.is_some() {
                        self.usage.cache_creation_input_tokens = u.cache_creation_input_tokens;
                    }
                }
                self.start(out);
                self.finish_reason = finish_reason(delta.and_then(|d| d.stop_reason)).or(Some("stop".into()));
                o::sse_data(out, &self.chunk(o::Delta::default(), self.finish_reason.clone()));
            }
            Some("message_stop") => self.close(out),
            Some("error") => {
                let (message, kind) = match error {
                    Some(e) if !e.message.is_empty() => (e.message, e.kind),
                    Some(e) => ("the Anthropic stream reported an error".to_string(), e.kind),
                    None => ("the Anthropic stream reported an error".to_string(), String::new()),
                };
                let kind = if kind.is_empty() { "server_error".to_string() } else { kind };
                let body = serde_json::json!({"error": {"message": message, "type": kind, "code": "upstream_error"}});
                o::sse_data(out, &body);
                out.extend_from_slice(o::SSE_DONE);
                self.done = true;
            }
            _ => {}
        }
    }

    /// A stream that cannot go on: an error chunk and `[DONE]`, once.
    pub(super) fn fail(&mut self, out: &mut Vec<u8>, message: &str) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        o::sse_data(
            out,
            &serde_json::json!({"error": {"message": message, "type": "server_error", "code": "invalid_upstream_response"}}),
        );
        out.extend_from_slice(o::SSE_DONE);
    }

    /// The end of the upstream stream: a message that got its `message_delta` is complete (a
    /// missing `message_stop` is forgiven); anything else ended too early.
    pub(super) fn finish(&mut self, out: &mut Vec<u8>) {
        if self.finish_reason.is_some() {
            self.close(out);
        } else if self.started {
            self.fail(out, "the Anthropic stream ended before the message was complete");
        } else {
            self.fail(out, "the Anthropic stream ended without any event");
        }
    }

    /// The usage chunk (when asked for) and `[DONE]`, once.
    pub(super) fn close(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.done = true;
        if self.include_usage {
            let mut chunk = self.chunk(o::Delta::default(), None);
            chunk.choices.clear();
            chunk.usage = Some(o::Usage::from(self.usage()));
            o::sse_data(out, &chunk);
        }
        out.extend_from_slice(o::SSE_DONE);
    }
}

/// The plan for a success from a Messages backend to an OpenAI client: a requested stream that
/// came as a stream (SSE, or AWS eventstream frames) is translated chunk by chunk; anything else
/// is held and rewritten whole.
pub(super) fn success_plan(stream_requested: bool, content_type: &str) -> ResponsePlan {
    let content_type = content_type.to_ascii_lowercase();
    let streaming = stream_requested
        && (content_type.starts_with("text/event-stream")
            || content_type.starts_with("application/vnd.amazon.eventstream"));
    if streaming {
        ResponsePlan {
            mode: BodyMode::Stream,
            set_headers: vec![("content-type", "text/event-stream".into())],
            remove_headers: vec!["content-length"],
        }
    } else {
        ResponsePlan {
            mode: BodyMode::Buffer,
            set_headers: vec![("content-type", "application/json".into())],
            remove_headers: vec!["content-length"],
        }
    }
}

pub struct OpenAIToAnthropic {
    model: String,
    created: u64,
    stream: bool,
    streaming_response: bool,
    framing: Framing,
    writer: ChunkWriter,
    usage: Option<TokenUsage>,
}

impl OpenAIToAnthropic {
    pub fn new(schema: Schema) -> Self {
        OpenAIToAnthropic {
            model: String::new(),
            created: 0,
            stream: false,
            streaming_response: false,
            framing: Framing::for_schema(schema),
            writer: ChunkWriter::default(),
            usage: None,
        }
    }
}

impl Translator for OpenAIToAnthropic {
    fn request_body(&mut self, request: &RequestContext) -> Result<RequestEdits, ApiError> {
        let RequestContext { info, body, backend, query: _, now_unix, sink: _ } = request;
        let model = backend.model_override.clone().unwrap_or_else(|| info.model.clone());
        let super::anthropic_request::Written { body: new_body, include_usage } =
            crate::translate::anthropic_request::write_request(body, backend, &model, info.stream, request.writer())?;
        self.model = model.clone();
        self.created = *now_unix;
        self.stream = info.stream;
        self.writer = ChunkWriter { model: model.clone(), created: *now_unix, include_usage, ..Default::default() };
        Ok(RequestEdits {
            path: Some(messages_path(backend, &model, info.stream)),
            body: Some(crate::body::NewBody::whole(new_body)),
            set_headers: platform_headers(backend, None),
        })
    }

    fn response_headers(&mut self, _status: u16, content_type: &str) -> ResponsePlan {
        let plan = success_plan(self.stream, content_type);
        self.streaming_response = plan.mode == BodyMode::Stream;
        plan
    }

    fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> ChunkEdits {
        if !self.streaming_response {
            return match completion_body(chunk, &self.model, self.created) {
                Ok((body, usage)) => {
                    ChunkEdits { replace: Some(body), usage: Some(usage), first_content: false, status: None }
                }
                Err(message) => ChunkEdits::unreadable(crate::error::error_json(
                    &message,
                    "server_error",
                    "invalid_upstream_response",
                )),
            };
        }
        let mut out = Vec::new();
        let had_content = self.writer.saw_content;
        let writer = &mut self.writer;
        if let Err(e) = self.framing.push(chunk, |json| writer.on_event(json, &mut out)) {
            log::warn!("llmgw: Anthropic stream: {e}");
            writer.fail(&mut out, &format!("the Anthropic stream could not be read: {e}"));
        }
        if end_of_stream {
            self.framing.finish(|json| writer.on_event(json, &mut out));
            writer.finish(&mut out);
            self.usage = Some(writer.usage());
        }
        ChunkEdits {
            replace: Some(out),
            usage: if end_of_stream { self.usage } else { None },
            first_content: !had_content && self.writer.saw_content,
            status: None,
        }
    }

    fn error_body(&mut self, status: u16, body: &[u8]) -> Option<Vec<u8>> {
        Some(openai_error_from_anthropic(status, body))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::Value;

    use super::*;
    use crate::body::BodyWriter;
    use crate::request::read;

    fn translate(schema: Schema, body: &str) -> (RequestEdits, OpenAIToAnthropic) {
        let mut backend = crate::testing::backend(schema);
        if let BackendApi::GCPAnthropic { project, region, .. } = &mut backend.api {
            (*project, *region) = ("proj".into(), "us-east5".into());
        }
        let mut t = OpenAIToAnthropic::new(schema);
        let info = read(body.as_bytes()).unwrap();
        let edits = t
            .request_body(&RequestContext {
                info: &info,
                body: body.as_bytes(),
                backend: &backend,
                query: "",
                now_unix: 1700,
                sink: Default::default(),
            })
            .unwrap();
        (edits, t)
    }

    fn body_json(edits: &RequestEdits) -> Value {
        crate::json::from_bytes(&edits.body.as_ref().unwrap().apply_to(b"")).unwrap()
    }

    #[test]
    fn request_maps_every_part() {
        let (edits, _) = translate(
            Schema::Anthropic,
            r#"{"model":"claude-x","max_completion_tokens":100,"temperature":0.5,"stop":["X"],"user":"u1",
                "messages":[{"role":"system","content":"sys"},
                  {"role":"user","content":[{"type":"text","text":"look"},{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBO"}}]},
                  {"role":"assistant","content":"calling","tool_calls":[{"id":"toolu_1","type":"function","function":{"name":"get","arguments":"{\"q\":1}"}}]},
                  {"role":"tool","tool_call_id":"toolu_1","content":"result"},
                  {"role":"user","content":"thanks"}],
                "tools":[{"type":"function","function":{"name":"get","description":"d","parameters":{"type":"object"}}}],
                "tool_choice":"required","parallel_tool_calls":false,"seed":3}"#,
        );
        assert_eq!(edits.path.as_deref(), Some("/v1/messages"));
        assert!(edits.set_headers.contains(&("anthropic-version".into(), "2023-06-01".into())));
        assert_eq!(
            body_json(&edits),
            serde_json::json!({
                "model":"claude-x","max_tokens":100,
                "messages":[
                  {"role":"user","content":[{"type":"text","text":"look"},{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBO"}}]},
                  {"role":"assistant","content":[{"type":"text","text":"calling"},{"type":"tool_use","id":"toolu_1","name":"get","input":{"q":1}}]},
                  {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"result"},{"type":"text","text":"thanks"}]}],
                "system":[{"type":"text","text":"sys"}],
                "stop_sequences":["X"],"temperature":0.5,
                "tools":[{"name":"get","description":"d","input_schema":{"type":"object"}}],
                "tool_choice":{"type":"any","disable_parallel_tool_use":true},
                "metadata":{"user_id":"u1"}})
        );
    }

    #[test]
    fn platforms_move_model_and_version() {
        let (edits, _) = translate(
            Schema::AWSAnthropic,
            r#"{"model":"anthropic.claude-3","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        );
        assert_eq!(edits.path.as_deref(), Some("/model/anthropic.claude-3/invoke-with-response-stream"));
        let v = body_json(&edits);
        assert_eq!(v["anthropic_version"], "bedrock-2023-05-31");
        assert!(v.get("model").is_none() && v.get("stream").is_none());
        assert_eq!(v["max_tokens"], 4096);
        assert_eq!(v["messages"], serde_json::json!([{"role":"user","content":"hi"}]));
        let (edits, _) = translate(
            Schema::Anthropic,
            r#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"user","content":"b"},
                {"role":"assistant","content":"c"},{"role":"assistant","content":null},{"role":"user","content":"d"}]}"#,
        );
        assert_eq!(
            body_json(&edits)["messages"],
            serde_json::json!([{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
                {"role":"assistant","content":[{"type":"text","text":"c"}]},{"role":"user","content":"d"}])
        );
        let (edits, _) =
            translate(Schema::GCPAnthropic, r#"{"model":"claude@1","messages":[{"role":"user","content":"hi"}]}"#);
        assert_eq!(
            edits.path.as_deref(),
            Some("/v1/projects/proj/locations/us-east5/publishers/anthropic/models/claude%401:rawPredict")
        );
    }

    #[test]
    fn refuses_what_anthropic_cannot_do() {
        let info = read(br#"{"model":"m","messages":[]}"#).unwrap();
        for body in [
            r#"{"model":"m","n":2,"messages":[]}"#,
            r#"{"model":"m","temperature":1.5,"messages":[]}"#,
            r#"{"model":"m","logprobs":true,"messages":[]}"#,
            r#"{"model":"m","response_format":{"type":"json_object"},"messages":[]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{}}]}]}"#,
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":"{bad"}}]}]}"#,
        ] {
            let mut t = OpenAIToAnthropic::new(Schema::Anthropic);
            let backend = crate::testing::backend(Schema::Anthropic);
            let ctx = RequestContext::new(&info, body.as_bytes(), &backend);
            assert_eq!(t.request_body(&ctx).unwrap_err().status, 400, "{body}");
        }
    }

    #[test]
    fn reasoning_effort_becomes_thinking_budget() {
        let (edits, _) =
            translate(Schema::Anthropic, r#"{"model":"m","max_tokens":1000,"reasoning_effort":"low","messages":[]}"#);
        let v = body_json(&edits);
        assert_eq!(v["thinking"], serde_json::json!({"type":"enabled","budget_tokens":1024}));
        assert_eq!(v["max_tokens"], 2024);
    }

    #[test]
    fn response_becomes_chat_completion() {
        let (_, mut t) = translate(Schema::Anthropic, r#"{"model":"claude-x","messages":[]}"#);
        t.response_headers(200, "application/json");
        let body = br#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-x-2024","content":[
            {"type":"thinking","thinking":"hmm","signature":"s"},{"type":"text","text":"Hello"},
            {"type":"tool_use","id":"toolu_9","name":"get","input":{"q":"x"}}],
            "stop_reason":"tool_use","stop_sequence":null,
            "usage":{"input_tokens":10,"output_tokens":5,"cache_read_input_tokens":4,"cache_creation_input_tokens":1}}"#;
        let edits = t.response_body(body, true);
        let v: Value = crate::json::from_bytes(&edits.replace.unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id":"msg_01","object":"chat.completion","created":1700,"model":"claude-x-2024",
              "choices":[{"index":0,"finish_reason":"tool_calls","message":{"role":"assistant","content":"Hello","reasoning_content":"hmm",
                "tool_calls":[{"id":"toolu_9","type":"function","function":{"name":"get","arguments":"{\"q\":\"x\"}"}}]}}],
              "usage":{"prompt_tokens":15,"completion_tokens":5,"total_tokens":20,
                "prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":0}}})
        );
        assert_eq!(edits.usage.map(|u| (u.input, u.output, u.cached_input)), Some((15, 5, 4)));
    }

    pub(crate) const STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\ndata: {\"type\": \"ping\"}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"get\",\"input\":{}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"q\\\":\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"1}\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    fn chunks_of(out: &[u8]) -> Vec<Value> {
        String::from_utf8(out.to_vec())
            .unwrap()
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| crate::json::from_text(d).unwrap())
            .collect()
    }

    #[test]
    fn stream_becomes_chunks_at_every_split() {
        let mut reference: Option<Vec<u8>> = None;
        for cut in 0..=STREAM.len() {
            let (_, mut t) = translate(
                Schema::Anthropic,
                r#"{"model":"claude-x","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
            );
            t.response_headers(200, "text/event-stream");
            let (a, b) = STREAM.as_bytes().split_at(cut);
            let mut out = t.response_body(a, false).replace.unwrap();
            let last = t.response_body(b, true);
            out.extend(last.replace.unwrap());
            assert_eq!(last.usage.map(|u| (u.input, u.output)), Some((25, 15)));
            match &reference {
                None => reference = Some(out),
                Some(r) => assert_eq!(&out, r, "cut {cut}"),
            }
        }
        let out = reference.unwrap();
        assert!(out.ends_with(b"data: [DONE]\n\n"));
        let chunks = chunks_of(&out);
        assert_eq!(chunks[0]["choices"][0]["delta"], serde_json::json!({"role":"assistant","content":""}));
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hi");
        assert_eq!(
            chunks[2]["choices"][0]["delta"]["tool_calls"][0],
            serde_json::json!({"index":0,"id":"toolu_1","type":"function","function":{"name":"get","arguments":""}})
        );
        let args: String = chunks[3..5]
            .iter()
            .map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(args, "{\"q\":1}");
        assert_eq!(chunks[5]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[6]["choices"], serde_json::json!([]));
        assert_eq!(chunks[6]["usage"]["completion_tokens"], 15);
        assert!(chunks.iter().all(|c| c["id"] == "msg_1" && c["object"] == "chat.completion.chunk"));
    }

    fn refusal(body: &str) -> ApiError {
        let info = read(body.as_bytes()).unwrap();
        let mut t = OpenAIToAnthropic::new(Schema::Anthropic);
        let backend = crate::testing::backend(Schema::Anthropic);
        let ctx = RequestContext::new(&info, body.as_bytes(), &backend);
        t.request_body(&ctx).unwrap_err()
    }

    #[test]
    fn cache_control_reaches_parts_messages_and_tools() {
        let (edits, _) = translate(
            Schema::Anthropic,
            r#"{"model":"m","messages":[
                {"role":"system","content":"rules","cache_control":{"type":"ephemeral"}},
                {"role":"developer","content":[{"type":"text","text":"a"},{"type":"text","text":"b","cache_control":{"type":"ephemeral","ttl":"1h"}}]},
                {"role":"user","content":[{"type":"text","text":"look","cache_control":{"type":"ephemeral"}},{"type":"image_url","image_url":{"url":"https://x/i.png"},"cache_control":{"type":"ephemeral"}}]},
                {"role":"user","content":"more","cache_control":{"type":"ephemeral"}},
                {"role":"assistant","content":null,"tool_calls":[{"id":"t1","type":"function","function":{"name":"f","arguments":""}},{"id":"t2","type":"function","function":{"name":"f","arguments":"{}"}}],"cache_control":{"type":"ephemeral"}},
                {"role":"tool","tool_call_id":"t1","content":"r1","cache_control":{"type":"ephemeral"}},
                {"role":"tool","tool_call_id":"t2","content":[{"type":"text","text":"r2","cache_control":{"type":"ephemeral"}}]}],
              "tools":[{"type":"function","function":{"name":"f"},"cache_control":{"type":"ephemeral"}}]}"#,
        );
        let eph = serde_json::json!({"type":"ephemeral"});
        assert_eq!(
            body_json(&edits),
            serde_json::json!({"model":"m","max_tokens":4096,
              "messages":[
                {"role":"user","content":[
                  {"type":"text","text":"look","cache_control":eph},
                  {"type":"image","source":{"type":"url","url":"https://x/i.png"},"cache_control":eph},
                  {"type":"text","text":"more","cache_control":eph}]},
                {"role":"assistant","content":[
                  {"type":"tool_use","id":"t1","name":"f","input":{}},
                  {"type":"tool_use","id":"t2","name":"f","input":{},"cache_control":eph}]},
                {"role":"user","content":[
                  {"type":"tool_result","tool_use_id":"t1","content":"r1","cache_control":eph},
                  {"type":"tool_result","tool_use_id":"t2","content":[{"type":"text","text":"r2","cache_control":eph}]}]}],
              "system":[{"type":"text","text":"rules","cache_control":eph},{"type":"text","text":"a"},
                {"type":"text","text":"b","cache_control":{"type":"ephemeral","ttl":"1h"}}],
              "tools":[{"name":"f","input_schema":{"type":"object","properties":{}},"cache_control":eph}]})
        );
    }

    #[test]
    fn thinking_object_and_every_effort_map_to_a_budget() {
        let cases = [
            (r#""thinking":{"type":"enabled","budget_tokens":2048}"#, Some(2048), 3048),
            (r#""thinking":{"type":"enabled"},"reasoning_effort":"high""#, Some(16384), 17384),
            (r#""thinking":{"type":"enabled"}"#, Some(4096), 5096),
            (r#""thinking":{"type":"disabled"},"reasoning_effort":"high""#, None, 1000),
            (r#""reasoning_effort":"minimal""#, Some(1024), 2024),
            (r#""reasoning_effort":"medium""#, Some(4096), 5096),
            (r#""reasoning_effort":"none""#, None, 1000),
        ];
        for (members, budget, max_tokens) in cases {
            let body = format!(r#"{{"model":"m","max_tokens":1000,{members},"messages":[]}}"#);
            let v = body_json(&translate(Schema::Anthropic, &body).0);
            match budget {
                Some(b) => {
                    assert_eq!(v["thinking"], serde_json::json!({"type":"enabled","budget_tokens":b}), "{members}")
                }
                None => assert!(v.get("thinking").is_none(), "{members}"),
            }
            assert_eq!(v["max_tokens"], max_tokens, "{members}");
        }
        for body in [
            r#"{"model":"m","thinking":{"type":"sometimes"},"messages":[]}"#,
            r#"{"model":"m","thinking":true,"messages":[]}"#,
            r#"{"model":"m","reasoning_effort":"extreme","messages":[]}"#,
        ] {
            assert_eq!(refusal(body).status, 400, "{body}");
        }
    }

    #[test]
    fn content_anthropic_cannot_take_is_a_400_naming_it() {
        for (body, words) in [
            (
                r#"{"model":"m","messages":[{"role":"system","content":[{"type":"image_url","image_url":{"url":"https://x/i.png"}}]}]}"#,
                &["image", "system"][..],
            ),
            (
                r#"{"model":"m","messages":[{"role":"system","content":[{"type":"file","file":{"file_data":"AAAA"}}]}]}"#,
                &["file", "system"][..],
            ),
            (
                r#"{"model":"m","messages":[{"role":"assistant","content":[{"type":"image_url","image_url":{"url":"https://x/i.png"}}]}]}"#,
                &["image", "assistant"][..],
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"file","file":{"file_id":"file-1"}}]}]}"#,
                &["file_id"][..],
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"file","file":{"file_data":"data:image/png;base64,AAAA"}}]}]}"#,
                &["image/png", "application/pdf"][..],
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"video_url","video_url":{}}]}]}"#,
                &["video_url"][..],
            ),
            (r#"{"model":"m","messages":[{"role":"critic","content":"x"}]}"#, &["critic"][..]),
            (r#"{"model":"m","tools":[{"type":"web_search"}],"messages":[]}"#, &["web_search"][..]),
        ] {
            let e = refusal(body);
            assert_eq!(e.status, 400, "{body}");
            for w in words {
                assert!(e.message.contains(w), "{body}: {}", e.message);
            }
        }
    }

    #[test]
    fn files_become_documents_and_strings_travel_as_sent() {
        let (edits, _) = translate(
            Schema::Anthropic,
            r#"{"model":"m","messages":[{"role":"user","content":[
                {"type":"file","file":{"file_data":"data:application/pdf;base64,JVBERi0x","filename":"a.pdf"}},
                {"type":"file","file":{"file_data":"JVBERi0y"},"cache_control":{"type":"ephemeral"}},
                {"type":"image_url","image_url":{"url":"data:image\/png;base64,AA\/B"}},
                {"type":"text","text":"line\none \u00e9 \"q\""}]},
              {"role":"assistant","content":[{"type":"text","text":""},{"type":"refusal","refusal":"no"}],
               "tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":" {\"s\": \"a\\nb \\u00e9\"} "}},
                             {"id":"c2","type":"function","function":{"name":"f","arguments":" \n "}}]}]}"#,
        );
        let v = body_json(&edits);
        assert_eq!(
            v["messages"][0]["content"],
            serde_json::json!([
                {"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"JVBERi0x"}},
                {"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"JVBERi0y"},"cache_control":{"type":"ephemeral"}},
                {"type":"image","source":{"type":"base64","media_type":"image/png","data":"AA/B"}},
                {"type":"text","text":"line\none é \"q\""}])
        );
        assert_eq!(
            v["messages"][1]["content"],
            serde_json::json!([{"type":"text","text":"no"},
                {"type":"tool_use","id":"c1","name":"f","input":{"s":"a\nb é"}},
                {"type":"tool_use","id":"c2","name":"f","input":{}}])
        );
        // The client's escapes are kept byte for byte.
        let raw = String::from_utf8(edits.body.as_ref().unwrap().apply_to(b"")).unwrap();
        assert!(raw.contains(r#""line\none \u00e9 \"q\"""#), "{raw}");
    }

    #[test]
    fn responses_with_missing_members_still_translate() {
        let (_, mut t) = translate(Schema::Anthropic, r#"{"model":"claude-x","messages":[]}"#);
        t.response_headers(200, "application/json");
        let body = br#"{"content":[{"type":"text","text":"a\"b"},{"type":"server_tool_use","id":"s"},"junk",
            {"type":"tool_use","id":"t","name":"f","input":{ "q" : [1, "x y"] }},{"type":"text","text":"c"}]}"#;
        let edits = t.response_body(body, true);
        assert_eq!(edits.status, None);
        let v: Value = crate::json::from_bytes(&edits.replace.unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id":"","object":"chat.completion","created":1700,"model":"claude-x",
              "choices":[{"index":0,"finish_reason":null,"message":{"role":"assistant","content":"a\"bc",
                "tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{\"q\":[1,\"x y\"]}"}}]}}],
              "usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0,
                "prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}})
        );
        let edits = t.response_body(br#"{"id":"m","content":[{"type":"tool_use","id":"t","name":"f"}],"usage":{"input_tokens":null,"output_tokens":18446744073709551615,"cache_read_input_tokens":5}}"#, true);
        let v: Value = crate::json::from_bytes(&edits.replace.unwrap()).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{}");
        assert_eq!(v["usage"]["total_tokens"], u64::MAX);
        for bad in
            [&b""[..], b"  ", b"not json", br#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#]
        {
            let edits = t.response_body(bad, true);
            assert_eq!(edits.status, Some(502), "{:?}", String::from_utf8_lossy(bad));
            let v: Value = crate::json::from_bytes(&edits.replace.unwrap()).unwrap();
            assert_eq!(v["error"]["code"], "invalid_upstream_response");
        }
    }

    fn run_stream(request: &str, chunks: &[&[u8]]) -> (String, Option<TokenUsage>) {
        let (_, mut t) = translate(Schema::Anthropic, request);
        t.response_headers(200, "text/event-stream");
        let mut out = Vec::new();
        let mut usage = None;
        for (i, c) in chunks.iter().enumerate() {
            let edits = t.response_body(c, i + 1 == chunks.len());
            out.extend(edits.replace.unwrap());
            usage = edits.usage.or(usage);
        }
        (String::from_utf8(out).unwrap(), usage)
    }

    const SPARSE_STREAM: &str = "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\"}}\n\n\
data: {\"type\":\"content_block_start\",\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
data: {\"type\":\"content_block_start\",\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"get\"}}\n\n\
data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"q\\\":\"}}\n\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"partial_json\":\"1}\"}}\n\n\
data: {\"type\":\"content_block_start\",\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_2\",\"name\":\"put\",\"input\":{\"a\": 2}}}\n\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"}}\n\n";

    #[test]
    fn sparse_stream_events_translate_completely_at_every_split() {
        let request = r#"{"model":"claude-x","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
        let (reference, usage) = run_stream(request, &[SPARSE_STREAM.as_bytes(), b""]);
        assert_eq!(usage.map(|u| (u.input, u.output)), Some((0, 0)));
        for cut in 0..=SPARSE_STREAM.len() {
            let (a, b) = SPARSE_STREAM.as_bytes().split_at(cut);
            assert_eq!(run_stream(request, &[a, b]).0, reference, "cut {cut}");
        }
        assert!(reference.ends_with("data: [DONE]\n\n"), "{reference}");
        let chunks = chunks_of(reference.as_bytes());
        assert_eq!(chunks[0]["choices"][0]["delta"], serde_json::json!({"role":"assistant","content":""}));
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hi");
        let calls: Vec<&Value> = chunks.iter().filter_map(|c| c["choices"][0]["delta"].get("tool_calls")).collect();
        assert_eq!(calls[0][0]["id"], "toolu_1");
        let args: String = calls[1..3].iter().map(|c| c[0]["function"]["arguments"].as_str().unwrap()).collect();
        assert_eq!(args, "{\"q\":1}");
        assert!(calls[1..3].iter().all(|c| c[0]["index"] == 0));
        assert_eq!(
            calls[3][0],
            serde_json::json!({"index":1,"id":"toolu_2","type":"function","function":{"name":"put","arguments":"{\"a\":2}"}})
        );
        let last = &chunks[chunks.len() - 2];
        assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
        assert!(chunks.iter().all(|c| c["id"] == "msg_2"));
    }

    #[test]
    fn broken_or_empty_streams_end_with_an_error_and_done() {
        let request = r#"{"model":"claude-x","stream":true,"messages":[]}"#;
        let truncated = STREAM.split("event: message_delta").next().unwrap();
        for (stream, words) in [
            (truncated, "before the message was complete"),
            ("", "without any event"),
            ("data: {not json}\n\n", "without any event"),
        ] {
            let (out, _) = run_stream(request, &[stream.as_bytes(), b""]);
            assert!(out.ends_with("data: [DONE]\n\n"), "{out}");
            let chunks = chunks_of(out.as_bytes());
            let error = &chunks.last().unwrap()["error"];
            assert!(error["message"].as_str().unwrap().contains(words), "{out}");
            assert_eq!(error["code"], "invalid_upstream_response");
        }
        // A stream whose message_stop is missing is complete once message_delta came.
        let no_stop = STREAM.split("event: message_stop").next().unwrap();
        let (out, _) = run_stream(request, &[no_stop.as_bytes(), b""]);
        assert!(out.ends_with("data: [DONE]\n\n") && !out.contains("\"error\""), "{out}");
        // An upstream error event is passed on, then [DONE].
        let (out, _) = run_stream(
            request,
            &[b"data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"busy\"}}\n\n", b""],
        );
        assert!(out.contains("overloaded_error") && out.ends_with("data: [DONE]\n\n"), "{out}");
    }

    #[test]
    fn no_panic_on_cut_or_mangled_bodies() {
        let request = r#"{"model":"m","stop":"x","tools":[{"type":"function","function":{"name":"f","parameters":{}}}],
            "messages":[{"role":"system","content":[{"type":"text","text":"s\u00e9"}]},{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AA"}}]},
            {"role":"assistant","tool_calls":[{"id":"c","function":{"name":"f","arguments":"{\"a\":\"\\ud83d\\ude00\"}"}}]},{"role":"tool","tool_call_id":"c","content":"r"}]}"#;
        let backend = crate::testing::backend(Schema::Anthropic);
        for cut in 0..request.len() {
            for body in [&request.as_bytes()[..cut], &request.as_bytes()[cut..]] {
                let _ = crate::translate::anthropic_request::write_request(
                    body,
                    &backend,
                    "m",
                    false,
                    BodyWriter::new(None),
                );
            }
        }
        assert!(crate::translate::anthropic_request::write_request(
            request.as_bytes(),
            &backend,
            "m",
            false,
            BodyWriter::new(None)
        )
        .is_ok());
        let response = br#"{"id":"m","content":[{"type":"text","text":"a\n"},{"type":"tool_use","id":"t","name":"f","input":{"a":["\"",1]}}],"usage":{"input_tokens":1}}"#;
        for cut in 0..response.len() {
            let _ = completion_body(&response[..cut], "m", 0);
            let _ = completion_body(&response[cut..], "m", 0);
        }
        assert!(completion_body(response, "m", 0).is_ok());
    }

    /// `UpstreamMessage` replaced reading a `serde_json::Value` and looking in it: same answers.
    #[test]
    fn upstream_message_is_found_as_in_a_json_value() {
        fn by_value(body: &str) -> Option<String> {
            let v: Value = crate::json::from_text(body).ok()?;
            let candidates =
                [v.pointer("/error/message"), v.get("message"), v.get("Message"), v.pointer("/0/error/message")];
            #[allow(clippy::let_and_return)] // `candidates` borrows `v`: the result must be owned first
            let found = candidates.into_iter().flatten().find_map(Value::as_str).map(String::from);
            found
        }
        let bodies = [
            r#"{"error":{"message":"a","type":"x"},"message":"b"}"#,
            r#"{"message":"b","Message":"c"}"#,
            r#"{"Message":"c","other":[1,{"message":"no"}]}"#,
            r#"[{"error":{"message":"d"}},{"error":{"message":"e"}}]"#,
            r#"{"0":{"error":{"message":"zero"}}}"#,
            r#"{"error":{"message":"first"},"error":{"message":"last"}}"#,
            r#"{"error":{"message":"a"},"error":5,"message":"b"}"#,
            r#"{"message":"a","message":null}"#,
            r#"{"error":{"message":7},"message":{"message":"x"},"Message":["x"]}"#,
            r#"{"error":["message"],"0":"x"}"#,
            r#"[["x"],{"message":"y"}]"#,
            r#"[{"message":"not under error"}]"#,
            r#"{"error":{"error":{"message":"deep"}}}"#,
            r#"{"message":"esc\u00e9\n"}"#,
            r#"{"message":"m","n":1e400}"#,
            r#"{"message":"m","n":-12.5e3,"t":true,"f":false,"z":null}"#,
            r#"{"message":"m"} trailing"#,
            r#"{"message":"m""#,
            r#""just a string""#,
            "42",
            "null",
            "[]",
            "{}",
        ];
        for body in bodies {
            let got = crate::json::from_text::<UpstreamMessage>(body).ok().and_then(|m| m.0);
            assert_eq!(got, by_value(body), "{body}");
        }
        assert_eq!(by_value(r#"{"0":{"error":{"message":"zero"}}}"#).as_deref(), Some("zero"));
        assert_eq!(by_value(r#"{"message":"m","n":1e400}"#), None, "out-of-range numbers fail, as in a Value");
    }

    #[test]
    fn upstream_errors_keep_the_message() {
        let (_, mut t) = translate(Schema::Anthropic, r#"{"model":"m","messages":[]}"#);
        let body = t
            .error_body(429, br#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has exceeded your rate limit"}}"#)
            .unwrap();
        let v: Value = crate::json::from_bytes(&body).unwrap();
        assert_eq!(v["error"]["message"], "Number of requests has exceeded your rate limit");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        let v: Value =
            crate::json::from_bytes(&t.error_body(400, br#"{"message":"Malformed input request"}"#).unwrap()).unwrap();
        assert_eq!(v["error"]["message"], "Malformed input request");
        let v: Value = crate::json::from_bytes(&t.error_body(503, b"").unwrap()).unwrap();
        assert_eq!(v["error"]["message"], "upstream returned HTTP 503 with an empty body");
        assert_eq!(v["error"]["type"], "server_error");
    }
}
