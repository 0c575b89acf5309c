//! OpenAI Responses client (`POST /v1/responses`) → Anthropic Messages backends (Anthropic,
//! AWSAnthropic, GCPAnthropic), for stateless requests. The gateway stores nothing: what needs
//! OpenAI's server state (`previous_response_id`, `conversation`, `background`, stored prompts,
//! item references) and what Anthropic cannot do (built-in tools, JSON output modes, logprobs) is
//! refused with a 400 naming it. The request body is written as the client's is walked, reusing
//! the chat translator's pieces ([`super::chat_to_anthropic`]); the answer is written as a Responses
//! object, or, streamed, as the Responses event sequence.

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::anthropic_request::{
    bad, image_url_block, invalid, max_tokens_with, pdf_block, put_number, string, text_block, thinking_budget, walked,
    write_anthropic_tool_choice, write_arguments, write_tool_def, Blocks, Platform, Turns,
};
use super::chat_to_anthropic::{
    delta_kind, for_blocks, is_kind, messages_path, nonempty, openai_error_from_anthropic, platform_headers,
    success_plan, upstream_message, Framing,
};
use super::jsontext::{compact, string_body, unescape_small, write_as_string};
use super::{BodyMode, ChunkEdits, RequestContext, RequestEdits, ResponsePlan, Translator};
use crate::body::{BodyWriter, ChunkedBody};
use crate::config::{Backend, Schema};
use crate::error::ApiError;
use crate::json::{each, json_string};
use crate::usage::TokenUsage;
use crate::wire::anthropic as a;
use crate::wire::responses::{
    self as r, InputItemView, InputPartView, OutputItem, Part, ResponsesRequestView, StreamEvent, SummaryView,
    ToolChoiceView, ToolView,
};

/// `include` entries a stateless translation can honour (the thinking signature travels as
/// `encrypted_content`, always).
const INCLUDABLE: &[&str] = &["reasoning.encrypted_content"];

/// The largest output a stream holds to repeat in its closing events (`response.completed` carries
/// the whole response): one event's limit, like a buffered answer.
const MAX_HELD_OUTPUT: usize = crate::sse::MAX_EVENT_BYTES;

// ---- request ----

/// What the answer repeats from the request (small: no tools, instructions or metadata are held).
#[derive(Debug, Default, Clone)]
struct Echo {
    model: String,
    created_at: u64,
    max_output_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    parallel_tool_calls: bool,
    /// `tool_choice` as JSON: `"auto"`, or `{"type":"function","name":...}`.
    tool_choice: Vec<u8>,
    effort: Option<String>,
}

/// Where a content part is: what Anthropic takes there differs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    System,
    User,
    Assistant,
    ToolResult,
}

impl Place {
    fn name(self) -> &'static str {
        match self {
            Place::System => "a system or developer message",
            Place::User => "a user message",
            Place::Assistant => "an assistant message",
            Place::ToolResult => "a function_call_output",
        }
    }
}

fn write_part(part: InputPartView, place: Place, blocks: &mut Blocks, out: &mut BodyWriter) -> Result<(), ApiError> {
    let refused = |what: &str| {
        let takes = match place {
            Place::System => "only text in `system`",
            Place::Assistant => "only text in assistant turns",
            Place::ToolResult => "only text and images in tool results",
            Place::User => "text, images and PDF documents",
        };
        bad(format!("{what} in {}: Anthropic takes {takes}", place.name()))
    };
    let InputPartView { kind, text, refusal, image_url, file_id, file_data, file_url } = part;
    match (kind.as_ref(), place) {
        ("input_text" | "output_text", _) => {
            let Some(text) = text else { return Err(invalid(format!("an {kind} part needs `text`"))) };
            let text = string(text, "a text part's `text`")?;
            // Anthropic refuses empty text blocks; an empty assistant text says nothing.
            if text == b"\"\"" && place == Place::Assistant {
                return Ok(());
            }
            text_block(blocks, out, text);
        }
        ("refusal", Place::Assistant) => {
            let Some(refusal) = refusal else { return Err(invalid("a refusal part needs `refusal`")) };
            let text = string(refusal, "a refusal part's `refusal`")?;
            if text != b"\"\"" {
                text_block(blocks, out, text);
            }
        }
        ("input_image", Place::User | Place::ToolResult) => {
            match (image_url, file_id) {
                (Some(url), _) => image_url_block(blocks, out, url, "`image_url`")?,
                (None, Some(_)) => return Err(bad(
                    "an input_image with `file_id` (OpenAI's Files API) cannot be sent to Anthropic; send `image_url`",
                )),
                (None, None) => return Err(invalid("an input_image part needs `image_url`")),
            }
        }
        ("input_image", _) => return Err(refused("an image")),
        ("input_file", Place::User) => match (file_url, file_data) {
            (Some(url), None) => {
                string(url, "`file_url`")?;
                blocks.begin(out);
                out.extend_from_slice(b"{\"type\":\"document\",\"source\":{\"type\":\"url\",\"url\":");
                out.extend_from_slice(url.get().as_bytes());
                out.extend_from_slice(b"}");
            }
            _ => pdf_block(blocks, out, file_data, file_id.is_some(), "`file_data`")?,
        },
        ("input_file", _) => return Err(refused("a file (document)")),
        ("input_audio", _) => return Err(bad("Anthropic does not accept audio input")),
        (other, _) => return Err(refused(&format!("content part type {other:?}"))),
    }
    Ok(())
}

fn write_parts(parts: &RawValue, place: Place, blocks: &mut Blocks, out: &mut BodyWriter) -> Result<(), ApiError> {
    walked(each(parts, |part: InputPartView| write_part(part, place, blocks, out)))
}

/// A message's content, classified without decoding it.
enum Content<'a> {
    Text(&'a RawValue),
    Parts(&'a RawValue),
}

fn content_of<'a>(raw: Option<&'a RawValue>, what: &str) -> Result<Content<'a>, ApiError> {
    match raw.map(|r| (r, r.get().as_bytes().first())) {
        Some((raw, Some(b'"'))) => Ok(Content::Text(raw)),
        Some((raw, Some(b'['))) => Ok(Content::Parts(raw)),
        _ => Err(invalid(format!("{what} must be a string or an array of content parts"))),
    }
}

fn is_system(role: Option<&str>) -> bool {
    matches!(role, Some("system" | "developer"))
}

/// `instructions` and the system/developer messages of `input`, as `"system":[...],` (nothing when
/// there are none). A first walk of `input`; nothing is held between the walks.
fn write_system(
    instructions: Option<&RawValue>,
    input: Option<&RawValue>,
    out: &mut BodyWriter,
) -> Result<(), ApiError> {
    let mut blocks = Blocks::default();
    let mut any = false;
    let mut open = |out: &mut BodyWriter| {
        if !std::mem::replace(&mut any, true) {
            out.extend_from_slice(b"\"system\":[");
        }
    };
    if let Some(text) = instructions.filter(|i| i.get() != "null") {
        let literal = string(text, "`instructions`")?;
        // Anthropic refuses an empty text block.
        if literal != b"\"\"" {
            open(out);
            text_block(&mut blocks, out, literal);
        }
    }
    if let Some(items) = input.filter(|i| i.get().starts_with('[')) {
        walked(each(items, |item: InputItemView| {
            if !matches!(item.kind.as_deref(), None | Some("message")) || !is_system(item.role.as_deref()) {
                return Ok(());
            }
            open(out);
            match content_of(item.content, "a system message's `content`")? {
                Content::Text(text) => text_block(&mut blocks, out, string(text, "`content`")?),
                Content::Parts(parts) => write_parts(parts, Place::System, &mut blocks, out)?,
            }
            Ok(())
        }))?;
    }
    blocks.close(out);
    if any {
        out.extend_from_slice(b"],");
    }
    Ok(())
}

/// A reasoning item read back: with the signature of a thinking block (`encrypted_content`), it
/// becomes that block again (Anthropic requires it before a tool result when thinking is on).
/// Without one it cannot be sent, and is left out.
fn write_reasoning(item: &InputItemView, turns: &mut Turns, out: &mut BodyWriter) -> Result<(), ApiError> {
    let Some(signature) = item.encrypted_content.filter(|s| string_body(s).is_some_and(|s| !s.is_empty())) else {
        log::debug!("llmgw: a reasoning input item without encrypted_content was not sent to Anthropic");
        return Ok(());
    };
    let blocks = turns.enter("assistant", out);
    blocks.begin(out);
    out.extend_from_slice(b"{\"type\":\"thinking\",\"thinking\":\"");
    if let Some(summary) = item.summary {
        // The text of each part, joined: string literals' insides concatenate as they are.
        walked(each(summary, |part: SummaryView| {
            string(part.text, "a reasoning summary's `text`")?;
            out.extend_from_slice(string_body(part.text).unwrap_or_default().as_bytes());
            Ok(())
        }))?;
    }
    out.extend_from_slice(b"\",\"signature\":");
    out.extend_from_slice(signature.get().as_bytes());
    blocks.end_message(out, None);
    Ok(())
}

/// The second walk of `input`: the turns, as the array of `messages`.
fn write_messages(input: Option<&RawValue>, out: &mut BodyWriter) -> Result<(), ApiError> {
    out.extend_from_slice(b"[");
    match input {
        None => {}
        Some(text) if text.get().starts_with('"') => {
            out.extend_from_slice(b"{\"role\":\"user\",\"content\":");
            out.extend_from_slice(text.get().as_bytes());
            out.extend_from_slice(b"}");
        }
        Some(items) if items.get().starts_with('[') => {
            let mut turns = Turns::default();
            walked(each(items, |item: InputItemView| write_item(item, &mut turns, out)))?;
            turns.leave(out);
        }
        Some(_) => return Err(invalid("`input` must be a string or an array of input items")),
    }
    out.extend_from_slice(b"]");
    Ok(())
}

fn write_item<'a>(item: InputItemView<'a>, turns: &mut Turns<'a>, out: &mut BodyWriter) -> Result<(), ApiError> {
    match item.kind.as_deref() {
        None | Some("message") => {
            let role = match item.role.as_deref() {
                Some("user") => "user",
                Some("assistant") => "assistant",
                Some("system" | "developer") => return Ok(()),
                Some(other) => return Err(invalid(format!("unknown message role {other:?}"))),
                None => return Err(invalid("a message input item needs `role`")),
            };
            let place = if role == "user" { Place::User } else { Place::Assistant };
            match content_of(item.content, "a message's `content`")? {
                Content::Text(text) if role == "assistant" && text.get() == "\"\"" => {}
                Content::Text(text) => {
                    string(text, "`content`")?;
                    turns.text(role, text, None, out);
                }
                Content::Parts(parts) => {
                    let blocks = turns.enter(role, out);
                    write_parts(parts, place, blocks, out)?;
                    blocks.end_message(out, None);
                }
            }
        }
        Some("function_call") => {
            let (Some(call_id), Some(name)) = (item.call_id, item.name) else {
                return Err(invalid("a function_call input item needs `call_id` and `name`"));
            };
            let id = string(call_id, "a function_call's `call_id`")?;
            let name = string(name, "a function_call's `name`")?;
            let blocks = turns.enter("assistant", out);
            blocks.begin(out);
            out.extend_from_slice(b"{\"type\":\"tool_use\",\"id\":");
            out.extend_from_slice(id);
            out.extend_from_slice(b",\"name\":");
            out.extend_from_slice(name);
            out.extend_from_slice(b",\"input\":");
            write_arguments(item.arguments, call_id, out)?;
            blocks.end_message(out, None);
        }
        Some("function_call_output") => {
            let Some(call_id) = item.call_id else {
                return Err(invalid("a function_call_output input item needs `call_id`"));
            };
            let id = string(call_id, "a function_call_output's `call_id`")?;
            let blocks = turns.enter("user", out);
            blocks.begin(out);
            out.extend_from_slice(b"{\"type\":\"tool_result\",\"tool_use_id\":");
            out.extend_from_slice(id);
            out.extend_from_slice(b",\"content\":");
            match content_of(item.output, "a function_call_output's `output`")? {
                Content::Text(text) => out.extend_from_slice(string(text, "`output`")?),
                Content::Parts(parts) => {
                    out.extend_from_slice(b"[");
                    let mut inner = Blocks::default();
                    write_parts(parts, Place::ToolResult, &mut inner, out)?;
                    inner.close(out);
                    out.extend_from_slice(b"]");
                }
            }
            blocks.end_message(out, None);
        }
        Some("reasoning") => write_reasoning(&item, turns, out)?,
        Some("item_reference") => {
            return Err(bad(
                "input items of type \"item_reference\" need stored responses; this gateway stores none: send the items themselves",
            ))
        }
        Some(other) => {
            return Err(bad(format!("input items of type {other:?} cannot be sent to an Anthropic backend")))
        }
    }
    Ok(())
}

fn write_tools(tools: &RawValue, out: &mut BodyWriter) -> Result<(), ApiError> {
    out.extend_from_slice(b",\"tools\":[");
    let mut first = true;
    walked(each(tools, |tool: ToolView| {
        let ToolView { kind, name, description, parameters } = tool;
        if kind != "function" {
            return Err(bad(format!(
                "tool type {kind:?} is built into OpenAI's service; an Anthropic backend runs only function tools"
            )));
        }
        let Some(name) = name else { return Err(invalid("a function tool needs `name`")) };
        if !std::mem::take(&mut first) {
            out.extend_from_slice(b",");
        }
        write_tool_def(name, description, parameters, None, out)
    }))?;
    out.extend_from_slice(b"]");
    Ok(())
}

/// `tool_choice` → Anthropic's, and the JSON the answer repeats.
fn write_tool_choice(
    choice: Option<&RawValue>,
    has_tools: bool,
    parallel_tool_calls: Option<bool>,
    out: &mut BodyWriter,
) -> Result<Vec<u8>, ApiError> {
    let disable_parallel = parallel_tool_calls == Some(false);
    let Some(choice) = choice.filter(|c| c.get() != "null") else {
        if disable_parallel && has_tools {
            write_anthropic_tool_choice("auto", None, true, out);
        }
        return Ok(b"\"auto\"".to_vec());
    };
    if choice.get().starts_with('"') {
        let mode: Cow<str> = crate::json::from_text(choice.get()).map_err(invalid)?;
        let kind = match mode.as_ref() {
            "auto" => "auto",
            "required" => "any",
            "none" => "none",
            other => return Err(bad(format!("tool_choice {other:?} is not one of none, auto, required"))),
        };
        write_anthropic_tool_choice(kind, None, disable_parallel, out);
        return Ok(json_string(&mode));
    }
    let view: ToolChoiceView = crate::json::from_text(choice.get()).map_err(invalid)?;
    match (view.kind.as_ref(), view.name) {
        ("function", Some(name)) => {
            write_anthropic_tool_choice("tool", Some(&name), disable_parallel, out);
            let mut echo = b"{\"type\":\"function\",\"name\":".to_vec();
            echo.extend_from_slice(&json_string(&name));
            echo.push(b'}');
            Ok(echo)
        }
        ("function", None) => Err(invalid("a function tool_choice needs `name`")),
        (other, _) => Err(bad(format!("tool_choice of type {other:?} cannot be honoured by an Anthropic backend"))),
    }
}

/// Members that need OpenAI's stored state, or an OpenAI-only feature: refused, naming them.
fn refuse_stateful(view: &ResponsesRequestView) -> Result<(), ApiError> {
    let stateless = "this gateway translates Responses to Anthropic statelessly and stores nothing";
    if view.previous_response_id.is_some() {
        return Err(bad(format!(
            "`previous_response_id` needs a stored response; {stateless}: send the whole conversation in `input`"
        )));
    }
    if view.conversation.is_some() {
        return Err(bad(format!("`conversation` needs stored conversations; {stateless}")));
    }
    if view.background == Some(true) {
        return Err(bad(format!("`background` needs a stored response to poll; {stateless}")));
    }
    if view.prompt.is_some() {
        return Err(bad(format!("`prompt` names a stored prompt template; {stateless}")));
    }
    if view.top_logprobs.is_some_and(|n| n > 0) {
        return Err(bad("Anthropic does not return log probabilities; remove `top_logprobs`"));
    }
    if let Some(include) = view.include {
        walked(each(include, |entry: Cow<str>| {
            if INCLUDABLE.contains(&entry.as_ref()) {
                Ok(())
            } else {
                Err(bad(format!("include {entry:?} cannot be honoured by an Anthropic backend")))
            }
        }))?;
    }
    if let Some(format) = view.text.as_ref().and_then(|t| t.format.as_ref()) {
        if format.kind != "text" {
            return Err(bad("Anthropic has no JSON response mode; remove `text.format` or ask for JSON in the prompt"));
        }
    }
    if view.temperature.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
        return Err(bad("Anthropic accepts `temperature` between 0 and 1"));
    }
    Ok(())
}

/// The whole request translation: the Messages body, and what the answer repeats.
fn write_request(
    body: &[u8],
    backend: &Backend,
    model: &str,
    stream: bool,
    mut out: BodyWriter<'_>,
) -> Result<(ChunkedBody, Echo), ApiError> {
    let Platform { default_max_tokens, body_version, stream_in_body } = Platform::of(backend)?;
    let view: ResponsesRequestView = crate::json::from_bytes(body).map_err(invalid)?;
    refuse_stateful(&view)?;
    let ResponsesRequestView {
        model: _,
        input,
        instructions,
        max_output_tokens,
        temperature,
        top_p,
        stream: _,
        stream_options: _,
        tools,
        tool_choice,
        parallel_tool_calls,
        reasoning,
        text: _,
        previous_response_id: _,
        conversation: _,
        // Tolerated: nothing is stored either way (the answer says `"store": false`).
        store: _,
        background: _,
        include: _,
        prompt: _,
        metadata,
        user,
        safety_identifier,
        top_logprobs: _,
        max_tool_calls,
        truncation,
        service_tier,
        prompt_cache_key,
        prompt_cache_retention,
    } = view;
    if log::log_enabled!(log::Level::Debug) {
        let ignored: Vec<String> = [
            ("metadata", metadata.is_some()),
            ("max_tool_calls", max_tool_calls.is_some()),
            ("truncation", truncation.is_some()),
            ("service_tier", service_tier.is_some()),
            ("prompt_cache_key", prompt_cache_key.is_some()),
            ("prompt_cache_retention", prompt_cache_retention.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| name.to_string())
        .chain(crate::json::unknown_members(body, r::KNOWN_MEMBERS))
        .collect();
        if !ignored.is_empty() {
            log::debug!("llmgw: Anthropic backend ignores Responses parameters: {}", ignored.join(", "));
        }
    }
    let effort = reasoning.and_then(|r| r.effort);
    let budget = thinking_budget(None, effort.as_deref())?;
    let max_tokens = max_tokens_with(max_output_tokens.unwrap_or(default_max_tokens), budget);

    out.extend_from_slice(b"{");
    if body_version.is_none() {
        out.extend_from_slice(b"\"model\":");
        out.extend_from_slice(&json_string(model));
        out.extend_from_slice(b",");
    }
    put_number(&mut out, b"\"max_tokens\":", max_tokens)?;
    out.extend_from_slice(b",");
    write_system(instructions, input, &mut out)?;
    out.extend_from_slice(b"\"messages\":");
    write_messages(input, &mut out)?;
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
        write_tools(tools, &mut out)?;
    }
    let tool_choice = write_tool_choice(tool_choice, tools.is_some(), parallel_tool_calls, &mut out)?;
    if let Some(budget) = budget {
        put_number(&mut out, b",\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":", budget)?;
        out.extend_from_slice(b"}");
    }
    if let Some(user) = safety_identifier.or(user) {
        out.extend_from_slice(b",\"metadata\":{\"user_id\":");
        out.extend_from_slice(&json_string(&user));
        out.extend_from_slice(b"}");
    }
    if let Some(version) = body_version {
        out.extend_from_slice(b",\"anthropic_version\":");
        out.extend_from_slice(&json_string(version));
    }
    out.extend_from_slice(b"}");
    let echo = Echo {
        model: model.to_string(),
        created_at: 0,
        max_output_tokens,
        temperature,
        top_p,
        parallel_tool_calls: parallel_tool_calls.unwrap_or(true),
        tool_choice,
        effort: effort.map(Cow::into_owned),
    };
    Ok((out.finish(), echo))
}

// ---- answer ----

/// How a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    InProgress,
    Completed,
    /// With `incomplete_details.reason`.
    Incomplete(&'static str),
    Failed,
}

impl Status {
    fn from_stop(reason: Option<a::StopReason>) -> Status {
        match reason {
            Some(a::StopReason::MaxTokens) => Status::Incomplete("max_output_tokens"),
            Some(a::StopReason::Refusal) => Status::Incomplete("content_filter"),
            _ => Status::Completed,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Incomplete(_) => "incomplete",
            Status::Failed => "failed",
        }
    }
}

fn usage_of(u: &a::Usage) -> r::Usage {
    let t = u.to_tokens();
    r::Usage {
        input_tokens: t.input,
        input_tokens_details: r::InputTokensDetails {
            cached_tokens: t.cached_input,
            cache_write_tokens: u.cache_creation_input_tokens.unwrap_or(0),
        },
        output_tokens: t.output,
        output_tokens_details: r::OutputTokensDetails { reasoning_tokens: 0 },
        total_tokens: t.total,
    }
}

/// The part of an upstream id that names the response in ours (`msg_01X` → `01X`): only id
/// characters, bounded.
fn id_base(upstream_id: &str, created_at: u64) -> String {
    let id = upstream_id.strip_prefix("msg_").unwrap_or(upstream_id);
    let base: String = id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').take(128).collect();
    if base.is_empty() {
        format!("{created_at}")
    } else {
        base
    }
}

/// Writes a Responses object; `output` writes the items between the brackets.
fn write_response(
    w: &mut Vec<u8>,
    echo: &Echo,
    base: &str,
    status: Status,
    error: Option<(&str, &str)>,
    usage: Option<&r::Usage>,
    output: impl FnOnce(&mut Vec<u8>),
) {
    w.extend_from_slice(b"{\"id\":");
    w.extend_from_slice(&json_string(&format!("resp_{base}")));
    w.extend_from_slice(b",\"object\":\"response\",\"created_at\":");
    w.extend_from_slice(echo.created_at.to_string().as_bytes());
    w.extend_from_slice(b",\"status\":\"");
    w.extend_from_slice(status.name().as_bytes());
    w.extend_from_slice(b"\",\"background\":false,\"error\":");
    match error {
        Some((code, message)) => {
            w.extend_from_slice(b"{\"code\":");
            w.extend_from_slice(&json_string(code));
            w.extend_from_slice(b",\"message\":");
            w.extend_from_slice(&json_string(message));
            w.extend_from_slice(b"}");
        }
        None => w.extend_from_slice(b"null"),
    }
    w.extend_from_slice(b",\"incomplete_details\":");
    match status {
        Status::Incomplete(reason) => {
            w.extend_from_slice(b"{\"reason\":\"");
            w.extend_from_slice(reason.as_bytes());
            w.extend_from_slice(b"\"}");
        }
        _ => w.extend_from_slice(b"null"),
    }
    w.extend_from_slice(b",\"instructions\":null,\"max_output_tokens\":");
    let _ = serde_json::to_writer(&mut *w, &echo.max_output_tokens);
    w.extend_from_slice(b",\"model\":");
    w.extend_from_slice(&json_string(&echo.model));
    w.extend_from_slice(b",\"output\":[");
    output(w);
    w.extend_from_slice(b"],\"parallel_tool_calls\":");
    w.extend_from_slice(if echo.parallel_tool_calls { b"true" } else { b"false" });
    w.extend_from_slice(b",\"previous_response_id\":null,\"reasoning\":{\"effort\":");
    let _ = serde_json::to_writer(&mut *w, &echo.effort);
    w.extend_from_slice(b",\"summary\":null},\"store\":false,\"temperature\":");
    let _ = serde_json::to_writer(&mut *w, &echo.temperature);
    w.extend_from_slice(b",\"text\":{\"format\":{\"type\":\"text\"}},\"tool_choice\":");
    w.extend_from_slice(if echo.tool_choice.is_empty() { b"\"auto\"" } else { &echo.tool_choice });
    w.extend_from_slice(b",\"tools\":[],\"top_p\":");
    let _ = serde_json::to_writer(&mut *w, &echo.top_p);
    w.extend_from_slice(b",\"truncation\":\"disabled\",\"usage\":");
    let _ = serde_json::to_writer(&mut *w, &usage);
    w.extend_from_slice(b",\"user\":null,\"metadata\":{}}");
}

/// Anthropic response → Responses object bytes and usage. Texts and ids are copied as the raw
/// JSON literals the provider sent; tool inputs are written as strings without a parsed copy.
fn response_body(body: &[u8], echo: &Echo) -> Result<(Vec<u8>, TokenUsage), String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("the Anthropic response is empty".into());
    }
    let view: a::ResponseView =
        crate::json::from_bytes(body).map_err(|e| format!("the Anthropic response could not be read: {e}"))?;
    if view.kind.as_deref() == Some("error") || (view.error.is_some() && view.content.is_none()) {
        return Err(format!("the Anthropic response is an error: {}", upstream_message(body)));
    }
    let usage = view.usage.unwrap_or_default();
    let upstream_id = view.id.and_then(string_body).map(unescape_small).unwrap_or_default();
    let base = id_base(&upstream_id, echo.created_at);
    let status = Status::from_stop(view.stop_reason);
    let item_status = if matches!(status, Status::Incomplete(_)) { "incomplete" } else { "completed" };
    let mut echo = echo.clone();
    if let Some(model) = view.model.and_then(|m| nonempty(Some(m))) {
        echo.model = unescape_small(model).into_owned();
    }
    let mut out = Vec::with_capacity(body.len().saturating_add(1024));
    write_response(&mut out, &echo, &base, status, None, Some(&usage_of(&usage)), |w| {
        let mut index = 0usize;
        let _ = for_blocks(view.content, |b| {
            let sep = |w: &mut Vec<u8>, index: usize| {
                if index > 0 {
                    w.extend_from_slice(b",");
                }
            };
            if is_kind(&b, "text") {
                let Some(text) = nonempty(b.text) else { return Ok(()) };
                sep(w, index);
                w.extend_from_slice(format!("{{\"id\":\"msg_{base}_{index}\",\"type\":\"message\",\"status\":\"{item_status}\",\"role\":\"assistant\",\"content\":[{{\"type\":\"output_text\",\"annotations\":[],\"logprobs\":[],\"text\":\"").as_bytes());
                w.extend_from_slice(text.as_bytes());
                w.extend_from_slice(b"\"}]}");
            } else if is_kind(&b, "thinking") {
                let Some(text) = nonempty(b.thinking) else { return Ok(()) };
                sep(w, index);
                w.extend_from_slice(format!("{{\"id\":\"rs_{base}_{index}\",\"type\":\"reasoning\",\"summary\":[{{\"type\":\"summary_text\",\"text\":\"").as_bytes());
                w.extend_from_slice(text.as_bytes());
                w.extend_from_slice(b"\"}]");
                if let Some(signature) = b.signature.filter(|s| string_body(s).is_some()) {
                    w.extend_from_slice(b",\"encrypted_content\":");
                    w.extend_from_slice(signature.get().as_bytes());
                }
                w.extend_from_slice(b"}");
            } else if is_kind(&b, "tool_use") {
                sep(w, index);
                w.extend_from_slice(format!("{{\"id\":\"fc_{base}_{index}\",\"type\":\"function_call\",\"status\":\"{item_status}\",\"arguments\":\"").as_bytes());
                write_as_string(b.input.map_or("{}", |i| i.get()).as_bytes(), w)?;
                w.extend_from_slice(b"\",\"call_id\":");
                w.extend_from_slice(
                    b.id.filter(|id| string_body(id).is_some()).map_or("\"\"", |id| id.get()).as_bytes(),
                );
                w.extend_from_slice(b",\"name\":");
                w.extend_from_slice(b.name.filter(|n| string_body(n).is_some()).map_or("\"\"", |n| n.get()).as_bytes());
                w.extend_from_slice(b"}");
            } else {
                return Ok(());
            }
            index += 1;
            Ok(())
        });
    });
    Ok((out, usage.to_tokens()))
}

/// The output item being streamed (one per Anthropic content block).
enum Open {
    Message { id: String, text: String },
    Reasoning { id: String, text: String, signature: String },
    Call { id: String, call_id: String, name: String, arguments: String },
}

/// Anthropic stream events → Responses events, one event at a time. What the closing events
/// repeat (each item's whole text, the whole output) is held, up to [`MAX_HELD_OUTPUT`].
#[derive(Default)]
struct EventWriter {
    echo: Echo,
    base: String,
    sequence: u64,
    /// The open item, its output index, and the Anthropic block it came from.
    open: Option<(Open, u32, Option<u32>)>,
    next_output: u32,
    /// Finished items as JSON, comma-separated.
    items: Vec<u8>,
    held: usize,
    usage: a::Usage,
    stop: Option<Option<a::StopReason>>,
    started: bool,
    done: bool,
    saw_content: bool,
}

impl EventWriter {
    fn emit(&mut self, out: &mut Vec<u8>, mut event: StreamEvent) {
        event.sequence_number = self.sequence;
        self.sequence += 1;
        r::write_event(out, &event);
    }

    /// An event carrying the whole response object.
    fn emit_response(&mut self, out: &mut Vec<u8>, kind: &str, status: Status, error: Option<(&str, &str)>) {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\ndata: {\"type\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\",\"sequence_number\":");
        out.extend_from_slice(self.sequence.to_string().as_bytes());
        self.sequence += 1;
        out.extend_from_slice(b",\"response\":");
        let usage = (status != Status::InProgress).then(|| usage_of(&self.usage));
        let items = &self.items;
        write_response(out, &self.echo, &self.base, status, error, usage.as_ref(), |w| w.extend_from_slice(items));
        out.extend_from_slice(b"}\n\n");
    }

    /// `response.created` and `response.in_progress`, once, before anything else.
    fn start(&mut self, out: &mut Vec<u8>) {
        if !std::mem::replace(&mut self.started, true) {
            if self.base.is_empty() {
                self.base = id_base("", self.echo.created_at);
            }
            self.emit_response(out, "response.created", Status::InProgress, None);
            self.emit_response(out, "response.in_progress", Status::InProgress, None);
        }
    }

    /// Counts bytes held for the closing events; false once past the limit (the stream fails).
    fn hold(&mut self, out: &mut Vec<u8>, bytes: usize) -> bool {
        self.held = self.held.saturating_add(bytes);
        if self.held > MAX_HELD_OUTPUT {
            self.fail(
                out,
                "server_error",
                &format!(
                    "the response is larger than the {MAX_HELD_OUTPUT} bytes the gateway holds to translate a stream"
                ),
            );
            return false;
        }
        true
    }

    fn open_item(&mut self, open: Open, block: Option<u32>, out: &mut Vec<u8>) {
        self.close_item(out);
        let index = self.next_output;
        self.next_output = index.saturating_add(1);
        let item = match &open {
            Open::Message { id, .. } => {
                OutputItem::Message { id, status: "in_progress", role: "assistant", content: vec![] }
            }
            Open::Reasoning { id, .. } => OutputItem::Reasoning { id, summary: vec![], encrypted_content: None },
            Open::Call { id, call_id, name, .. } => {
                OutputItem::FunctionCall { id, status: "in_progress", arguments: "", call_id, name }
            }
        };
        let event = StreamEvent {
            kind: "response.output_item.added",
            output_index: Some(index),
            item: Some(item),
            ..Default::default()
        };
        let mut bytes = Vec::new();
        self.emit(&mut bytes, event);
        out.extend(bytes);
        match &open {
            Open::Message { id, .. } => {
                let event = StreamEvent {
                    kind: "response.content_part.added",
                    item_id: Some(id),
                    output_index: Some(index),
                    content_index: Some(0),
                    part: Some(Part::OutputText { annotations: [], logprobs: [], text: "" }),
                    ..Default::default()
                };
                let mut bytes = Vec::new();
                self.emit(&mut bytes, event);
                out.extend(bytes);
            }
            Open::Reasoning { id, .. } => {
                let event = StreamEvent {
                    kind: "response.reasoning_summary_part.added",
                    item_id: Some(id),
                    output_index: Some(index),
                    summary_index: Some(0),
                    part: Some(Part::SummaryText { text: "" }),
                    ..Default::default()
                };
                let mut bytes = Vec::new();
                self.emit(&mut bytes, event);
                out.extend(bytes);
            }
            Open::Call { .. } => {}
        }
        self.open = Some((open, index, block));
    }

    /// A delta for the open item (ignored when none is open, or it came from another block).
    fn delta(&mut self, block: Option<u32>, text: &str, signature: Option<&str>, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let Some((open, index, open_block)) = self.open.take() else { return };
        if block.is_some() && open_block.is_some() && block != open_block {
            self.open = Some((open, index, open_block));
            return;
        }
        let mut open = open;
        let held = text.len() + signature.map_or(0, str::len);
        let mut bytes = Vec::new();
        match &mut open {
            Open::Reasoning { signature: held_signature, .. } if signature.is_some() => {
                held_signature.push_str(signature.unwrap_or_default());
            }
            _ if text.is_empty() => {}
            Open::Message { id, text: held_text } => {
                held_text.push_str(text);
                let event = StreamEvent {
                    kind: "response.output_text.delta",
                    item_id: Some(id),
                    output_index: Some(index),
                    content_index: Some(0),
                    delta: Some(text),
                    logprobs: Some([]),
                    ..Default::default()
                };
                self.emit(&mut bytes, event);
            }
            Open::Reasoning { id, text: held_text, .. } => {
                held_text.push_str(text);
                let event = StreamEvent {
                    kind: "response.reasoning_summary_text.delta",
                    item_id: Some(id),
                    output_index: Some(index),
                    summary_index: Some(0),
                    delta: Some(text),
                    ..Default::default()
                };
                self.emit(&mut bytes, event);
            }
            Open::Call { id, arguments, .. } => {
                arguments.push_str(text);
                let event = StreamEvent {
                    kind: "response.function_call_arguments.delta",
                    item_id: Some(id),
                    output_index: Some(index),
                    delta: Some(text),
                    ..Default::default()
                };
                self.emit(&mut bytes, event);
            }
        }
        self.saw_content |= !bytes.is_empty();
        out.extend(bytes);
        self.open = Some((open, index, open_block));
        self.hold(out, held);
    }

    /// The open item's closing events; the item joins the held output.
    fn close_item(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let Some((mut open, index, _)) = self.open.take() else { return };
        if let Open::Call { arguments, .. } = &mut open {
            if arguments.is_empty() {
                // A call without input deltas has `{}` for input; say so as a delta too.
                self.open = Some((open, index, None));
                self.delta(None, "{}", None, out);
                let Some((reopened, _, _)) = self.open.take().filter(|_| !self.done) else { return };
                open = reopened;
            }
        }
        let mut bytes = Vec::new();
        let item = match &open {
            Open::Message { id, text } => {
                let part = || Part::OutputText { annotations: [], logprobs: [], text };
                let common = StreamEvent {
                    item_id: Some(id),
                    output_index: Some(index),
                    content_index: Some(0),
                    ..Default::default()
                };
                self.emit(
                    &mut bytes,
                    StreamEvent { kind: "response.output_text.done", text: Some(text), logprobs: Some([]), ..common },
                );
                let common = StreamEvent {
                    item_id: Some(id),
                    output_index: Some(index),
                    content_index: Some(0),
                    ..Default::default()
                };
                self.emit(&mut bytes, StreamEvent { kind: "response.content_part.done", part: Some(part()), ..common });
                OutputItem::Message { id, status: "completed", role: "assistant", content: vec![part()] }
            }
            Open::Reasoning { id, text, signature } => {
                let common = StreamEvent {
                    item_id: Some(id),
                    output_index: Some(index),
                    summary_index: Some(0),
                    ..Default::default()
                };
                self.emit(
                    &mut bytes,
                    StreamEvent { kind: "response.reasoning_summary_text.done", text: Some(text), ..common },
                );
                let common = StreamEvent {
                    item_id: Some(id),
                    output_index: Some(index),
                    summary_index: Some(0),
                    ..Default::default()
                };
                self.emit(
                    &mut bytes,
                    StreamEvent {
                        kind: "response.reasoning_summary_part.done",
                        part: Some(Part::SummaryText { text }),
                        ..common
                    },
                );
                OutputItem::Reasoning {
                    id,
                    summary: vec![Part::SummaryText { text }],
                    encrypted_content: (!signature.is_empty()).then_some(signature.as_str()),
                }
            }
            Open::Call { id, call_id, name, arguments } => {
                let event = StreamEvent {
                    kind: "response.function_call_arguments.done",
                    item_id: Some(id),
                    output_index: Some(index),
                    arguments: Some(arguments),
                    ..Default::default()
                };
                self.emit(&mut bytes, event);
                OutputItem::FunctionCall { id, status: "completed", arguments, call_id, name }
            }
        };
        let before = self.items.len();
        if before > 0 {
            self.items.push(b',');
        }
        let _ = serde_json::to_writer(&mut self.items, &item);
        let event = StreamEvent {
            kind: "response.output_item.done",
            output_index: Some(index),
            item: Some(item),
            ..Default::default()
        };
        self.emit(&mut bytes, event);
        out.extend(bytes);
        let added = self.items.len() - before;
        self.hold(out, added);
    }

    /// Translates one event's JSON, appending SSE bytes to `out`. Nothing follows the last event.
    fn on_event(&mut self, json: &[u8], out: &mut Vec<u8>) {
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
                    if !self.started {
                        self.base = id_base(id.as_deref().unwrap_or_default(), self.echo.created_at);
                    }
                    if let Some(model) = model.filter(|m| !m.is_empty()) {
                        self.echo.model = model.into_owned();
                    }
                    if let Some(usage) = usage {
                        self.usage = usage;
                    }
                }
                self.start(out);
            }
            Some("content_block_start") => {
                self.start(out);
                let Some(block) = content_block else { return };
                let n = self.next_output;
                let base = self.base.clone();
                let text =
                    |raw: Option<&RawValue>| unescape_small(raw.and_then(string_body).unwrap_or_default()).into_owned();
                match block.kind.as_deref() {
                    Some("text") => {
                        let open = Open::Message { id: format!("msg_{base}_{n}"), text: String::new() };
                        self.open_item(open, index, out);
                        if let Some(t) = nonempty(block.text) {
                            self.delta(index, &unescape_small(t), None, out);
                        }
                    }
                    Some("thinking") => {
                        let open = Open::Reasoning {
                            id: format!("rs_{base}_{n}"),
                            text: String::new(),
                            signature: String::new(),
                        };
                        self.open_item(open, index, out);
                        if let Some(t) = nonempty(block.thinking) {
                            self.delta(index, &unescape_small(t), None, out);
                        }
                    }
                    Some("tool_use") => {
                        let (call_id, name) = (text(block.id), text(block.name));
                        if !self.hold(out, call_id.len() + name.len()) {
                            return;
                        }
                        let open = Open::Call { id: format!("fc_{base}_{n}"), call_id, name, arguments: String::new() };
                        self.open_item(open, index, out);
                        // Some providers send the whole input here rather than as deltas.
                        if let Some(input) = block.input.map(|i| compact(i.get().as_bytes())).filter(|i| i != "{}") {
                            self.delta(index, &input, None, out);
                        }
                    }
                    // Blocks a Responses client has no item for (server tools, redacted thinking).
                    _ => self.close_item(out),
                }
            }
            Some("content_block_delta") => {
                let Some(delta) = delta else { return };
                match delta_kind(&delta) {
                    "text_delta" => self.delta(index, delta.text.as_deref().unwrap_or_default(), None, out),
                    "thinking_delta" => self.delta(index, delta.thinking.as_deref().unwrap_or_default(), None, out),
                    "input_json_delta" => {
                        self.delta(index, delta.partial_json.as_deref().unwrap_or_default(), None, out)
                    }
                    "signature_delta" => {
                        if let Some(signature) = delta.signature.as_deref() {
                            self.delta(index, "", Some(signature), out);
                        }
                    }
                    _ => {}
                }
            }
            // The stop of the open item's block (a stop naming another block is stale).
            Some("content_block_stop")
                if self
                    .open
                    .as_ref()
                    .is_some_and(|(_, _, block)| index.is_none() || block.is_none() || *block == index) =>
            {
                self.close_item(out)
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
                self.stop = Some(delta.and_then(|d| d.stop_reason));
            }
            Some("message_stop") => self.complete(out),
            Some("error") => {
                let (message, kind) = match error {
                    Some(e) if !e.message.is_empty() => (e.message, e.kind),
                    Some(e) => ("the Anthropic stream reported an error".to_string(), e.kind),
                    None => ("the Anthropic stream reported an error".to_string(), String::new()),
                };
                let kind = if kind.is_empty() { "server_error".to_string() } else { kind };
                self.fail(out, &kind, &message);
            }
            _ => {}
        }
    }

    /// `response.completed` (or `response.incomplete`), once.
    fn complete(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.start(out);
        self.close_item(out);
        if self.done {
            return;
        }
        self.done = true;
        let status = Status::from_stop(self.stop.flatten());
        let kind = if status == Status::Completed { "response.completed" } else { "response.incomplete" };
        self.emit_response(out, kind, status, None);
    }

    /// A stream that cannot go on: an `error` event and `response.failed`, once. `code` is the
    /// upstream's error type (or `server_error`).
    fn fail(&mut self, out: &mut Vec<u8>, code: &str, message: &str) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        if self.base.is_empty() {
            self.base = id_base("", self.echo.created_at);
        }
        self.emit(out, StreamEvent { kind: "error", code: Some(code), message: Some(message), ..Default::default() });
        let response_code = if code == "rate_limit_error" { "rate_limit_exceeded" } else { "server_error" };
        self.emit_response(out, "response.failed", Status::Failed, Some((response_code, message)));
    }

    /// The end of the upstream stream: a message that got its `message_delta` is complete (a
    /// missing `message_stop` is forgiven); anything else ended too early.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.stop.is_some() {
            self.complete(out);
        } else if self.started {
            self.fail(out, "server_error", "the Anthropic stream ended before the message was complete");
        } else {
            self.fail(out, "server_error", "the Anthropic stream ended without any event");
        }
    }
}

pub struct ResponsesToAnthropic {
    echo: Echo,
    stream: bool,
    streaming_response: bool,
    framing: Framing,
    writer: EventWriter,
}

impl ResponsesToAnthropic {
    pub fn new(schema: Schema) -> Self {
        ResponsesToAnthropic {
            echo: Echo::default(),
            stream: false,
            streaming_response: false,
            framing: Framing::for_schema(schema),
            writer: EventWriter::default(),
        }
    }
}

impl Translator for ResponsesToAnthropic {
    fn request_body(&mut self, request: &RequestContext) -> Result<RequestEdits, ApiError> {
        let RequestContext { info, body, backend, query: _, now_unix, sink: _ } = request;
        let model = backend.model_override.clone().unwrap_or_else(|| info.model.clone());
        let (new_body, mut echo) = write_request(body, backend, &model, info.stream, request.writer())?;
        echo.created_at = *now_unix;
        self.stream = info.stream;
        self.writer = EventWriter { echo: echo.clone(), ..Default::default() };
        self.echo = echo;
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
            return match response_body(chunk, &self.echo) {
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
            writer.fail(&mut out, "server_error", &format!("the Anthropic stream could not be read: {e}"));
        }
        let mut usage = None;
        if end_of_stream {
            self.framing.finish(|json| writer.on_event(json, &mut out));
            writer.finish(&mut out);
            usage = Some(writer.usage.to_tokens());
        }
        ChunkEdits { replace: Some(out), usage, first_content: !had_content && self.writer.saw_content, status: None }
    }

    fn error_body(&mut self, status: u16, body: &[u8]) -> Option<Vec<u8>> {
        Some(openai_error_from_anthropic(status, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendApi;
    use crate::request::read;
    use serde_json::Value;
    use std::path::PathBuf;

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/responses-anthropic")
    }

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(fixtures().join(name)).unwrap()
    }

    /// Compares with a golden file; `LLMGW_BLESS=1` (re)writes it. The Python check
    /// (host-tests/e2e/test_responses_shapes.py) parses the same files with the `openai` SDK.
    fn golden(name: &str, actual: &str) {
        let path = fixtures().join(name);
        if std::env::var_os("LLMGW_BLESS").is_some() {
            std::fs::write(&path, actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(actual, expected, "{name} differs (LLMGW_BLESS=1 rewrites it)");
    }

    fn backend(schema: Schema) -> Backend {
        let mut backend = crate::testing::backend(schema);
        if let BackendApi::GCPAnthropic { project, region, .. } = &mut backend.api {
            (*project, *region) = ("proj".into(), "us-east5".into());
        }
        backend
    }

    fn try_translate(schema: Schema, body: &str) -> Result<(RequestEdits, ResponsesToAnthropic), ApiError> {
        let backend = backend(schema);
        let mut t = ResponsesToAnthropic::new(schema);
        let info = read(body.as_bytes()).unwrap();
        let ctx = RequestContext {
            info: &info,
            body: body.as_bytes(),
            backend: &backend,
            query: "",
            now_unix: 1750000000,
            sink: Default::default(),
        };
        let edits = t.request_body(&ctx)?;
        Ok((edits, t))
    }

    fn translate(schema: Schema, body: &str) -> (RequestEdits, ResponsesToAnthropic) {
        try_translate(schema, body).unwrap()
    }

    fn refusal(body: &str) -> ApiError {
        try_translate(Schema::Anthropic, body).err().unwrap()
    }

    fn body_json(edits: &RequestEdits) -> Value {
        serde_json::from_slice(&edits.body.as_ref().unwrap().apply_to(b"")).unwrap()
    }

    fn pretty(v: &Value) -> String {
        serde_json::to_string_pretty(v).unwrap() + "\n"
    }

    #[test]
    fn request_maps_every_item_golden() {
        let (edits, _) = translate(Schema::Anthropic, &fixture("request.in.json"));
        assert_eq!(edits.path.as_deref(), Some("/v1/messages"));
        assert!(edits.set_headers.contains(&("anthropic-version".into(), "2023-06-01".into())));
        let v = body_json(&edits);
        golden("request.expected.json", &pretty(&v));
        // The points that matter, spelled out.
        assert_eq!(v["system"][0]["text"], "Be brief.");
        assert_eq!(v["system"][1]["text"], "Answer in English.");
        assert_eq!(v["max_tokens"], 1524, "the thinking budget is added to a smaller max");
        assert_eq!(v["thinking"], serde_json::json!({"type":"enabled","budget_tokens":1024}));
        assert_eq!(v["tool_choice"], serde_json::json!({"type":"any","disable_parallel_tool_use":true}));
        assert_eq!(v["metadata"], serde_json::json!({"user_id":"user-123"}));
        let roles: Vec<&str> = v["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
        assert_eq!(roles, ["user", "assistant", "user"]);
        assert_eq!(
            v["messages"][1]["content"],
            serde_json::json!([
                {"type":"thinking","thinking":"Need the \"weather\" tool.","signature":"sig-abc"},
                {"type":"text","text":"Let me check."},
                {"type":"tool_use","id":"toolu_01","name":"get_weather","input":{"city":"Paris"}},
                {"type":"tool_use","id":"toolu_02","name":"get_time","input":{}}])
        );
        assert_eq!(
            v["tools"][1],
            serde_json::json!({"name":"get_time","input_schema":{"type":"object","properties":{}}})
        );
    }

    #[test]
    fn string_input_and_platforms() {
        let body = r#"{"model":"claude-x","input":"Hi","stream":true}"#;
        let (edits, _) = translate(Schema::Anthropic, body);
        assert_eq!(
            body_json(&edits),
            serde_json::json!({"model":"claude-x","max_tokens":4096,"messages":[{"role":"user","content":"Hi"}],"stream":true})
        );
        let (edits, _) = translate(Schema::AWSAnthropic, body);
        assert_eq!(edits.path.as_deref(), Some("/model/claude-x/invoke-with-response-stream"));
        assert_eq!(
            body_json(&edits),
            serde_json::json!({"max_tokens":4096,"messages":[{"role":"user","content":"Hi"}],"anthropic_version":"bedrock-2023-05-31"})
        );
        let (edits, _) = translate(Schema::GCPAnthropic, body);
        assert!(edits
            .path
            .as_deref()
            .unwrap()
            .ends_with("/projects/proj/locations/us-east5/publishers/anthropic/models/claude-x:streamRawPredict"));
        assert_eq!(body_json(&edits)["anthropic_version"], "vertex-2023-10-16");
        assert_eq!(body_json(&edits)["stream"], true);
        // Tolerated: `store` (nothing is stored), a named tool choice, text format "text".
        let (edits, _) = translate(
            Schema::Anthropic,
            r#"{"model":"m","input":[],"store":true,"tool_choice":{"type":"function","name":"f"},
                "tools":[{"type":"function","name":"f"}],"text":{"format":{"type":"text"}},"previous_response_id":null}"#,
        );
        assert_eq!(body_json(&edits)["tool_choice"], serde_json::json!({"type":"tool","name":"f"}));
    }

    #[test]
    fn what_needs_state_or_openai_is_a_400_naming_it() {
        for (members, word) in [
            (r#""previous_response_id":"resp_1""#, "previous_response_id"),
            (r#""conversation":"conv_1""#, "conversation"),
            (r#""background":true,"store":true"#, "background"),
            (r#""prompt":{"id":"pmpt_1"}"#, "prompt"),
            (r#""include":["message.output_text.logprobs"]"#, "message.output_text.logprobs"),
            (r#""include":["file_search_call.results"]"#, "file_search_call.results"),
            (r#""top_logprobs":2"#, "top_logprobs"),
            (r#""text":{"format":{"type":"json_schema","name":"x","schema":{}}}"#, "text.format"),
            (r#""tools":[{"type":"web_search"}]"#, "web_search"),
            (r#""tools":[{"type":"file_search","vector_store_ids":[]}]"#, "file_search"),
            (r#""tools":[{"type":"code_interpreter","container":"auto"}]"#, "code_interpreter"),
            (r#""tools":[{"type":"computer_use_preview"}]"#, "computer_use_preview"),
            (r#""tools":[{"type":"image_generation"}]"#, "image_generation"),
            (r#""tools":[{"type":"mcp","server_label":"x"}]"#, "mcp"),
            (r#""tool_choice":{"type":"web_search_preview"}"#, "web_search_preview"),
            (r#""tool_choice":"sometimes""#, "sometimes"),
            (r#""reasoning":{"effort":"extreme"}"#, "extreme"),
            (r#""temperature":1.5"#, "temperature"),
            (r#""input":[{"type":"item_reference","id":"msg_1"}]"#, "item_reference"),
            (r#""input":[{"type":"file_search_call","id":"x"}]"#, "file_search_call"),
            (r#""input":[{"role":"critic","content":"x"}]"#, "critic"),
            (r#""input":[{"role":"user","content":[{"type":"input_audio","input_audio":{}}]}]"#, "audio"),
            (r#""input":[{"role":"user","content":[{"type":"input_image","file_id":"file-1"}]}]"#, "file_id"),
            (r#""input":[{"role":"assistant","content":[{"type":"input_image","image_url":"https://x"}]}]"#, "image"),
            (r#""input":[{"type":"function_call","call_id":"c","name":"f","arguments":"{oops"}]"#, "not JSON"),
            (r#""input":42"#, "input"),
        ] {
            let body = format!(r#"{{"model":"m",{members}}}"#);
            let e = refusal(&body);
            assert_eq!(e.status, 400, "{body}");
            assert!(e.message.contains(word), "{body}: {}", e.message);
            let v: Value = serde_json::from_slice(&e.body(crate::api::ClientApi::OpenAI)).unwrap();
            assert_eq!(v["error"]["type"], "invalid_request_error");
        }
    }

    fn respond(t: &mut ResponsesToAnthropic, body: &[u8]) -> (Value, ChunkEdits) {
        assert_eq!(t.response_headers(200, "application/json").mode, BodyMode::Buffer);
        let edits = t.response_body(body, true);
        (serde_json::from_slice(edits.replace.as_ref().unwrap()).unwrap(), edits)
    }

    #[test]
    fn response_golden_and_usage() {
        let (_, mut t) =
            translate(Schema::Anthropic, r#"{"model":"claude-x","input":"hi","reasoning":{"effort":"low"}}"#);
        let (v, edits) = respond(&mut t, fixture("response.in.json").as_bytes());
        golden("response.expected.json", &pretty(&v));
        assert_eq!(
            edits.usage,
            Some(TokenUsage { input: 125, output: 40, total: 165, cached_input: 20, reasoning: 0 })
        );
        assert_eq!(v["id"], "resp_01ABC");
        assert_eq!(v["status"], "completed");
        let kinds: Vec<&str> = v["output"].as_array().unwrap().iter().map(|i| i["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["reasoning", "message", "function_call"]);
        assert_eq!(v["output"][0]["encrypted_content"], "sig-xyz");
        assert_eq!(v["output"][1]["content"][0]["text"], "Checking the weather\u{2026}");
        assert_eq!(v["output"][2]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(v["output"][2]["call_id"], "toolu_03");
        assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 20);

        let (_, mut t) = translate(Schema::Anthropic, r#"{"model":"claude-x","input":"hi","max_output_tokens":4}"#);
        let (v, _) = respond(&mut t, fixture("response-max-tokens.in.json").as_bytes());
        golden("response-max-tokens.expected.json", &pretty(&v));
        assert_eq!(v["status"], "incomplete");
        assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(v["max_output_tokens"], 4);
    }

    #[test]
    fn unreadable_responses_are_502_and_errors_openai_shaped() {
        let (_, mut t) = translate(Schema::Anthropic, r#"{"model":"m","input":"hi"}"#);
        for bad in [&b""[..], b"not json", br#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#]
        {
            t.response_headers(200, "application/json");
            let edits = t.response_body(bad, true);
            assert_eq!(edits.status, Some(502));
            let v: Value = serde_json::from_slice(&edits.replace.unwrap()).unwrap();
            assert_eq!(v["error"]["code"], "invalid_upstream_response");
        }
        let body = t
            .error_body(429, br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#)
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["message"], "slow down");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        // Cut bodies never panic.
        let full = fixture("response.in.json");
        for cut in 0..full.len() {
            let _ = response_body(&full.as_bytes()[..cut], &Echo::default());
        }
    }

    fn run_stream(schema: Schema, chunks: &[&[u8]]) -> (String, Option<TokenUsage>, bool) {
        let (_, mut t) = translate(schema, r#"{"model":"claude-x","input":"hi","stream":true}"#);
        let content_type =
            if schema == Schema::AWSAnthropic { "application/vnd.amazon.eventstream" } else { "text/event-stream" };
        assert_eq!(t.response_headers(200, content_type).mode, BodyMode::Stream);
        let (mut out, mut usage, mut first) = (Vec::new(), None, false);
        for (i, c) in chunks.iter().enumerate() {
            let edits = t.response_body(c, i + 1 == chunks.len());
            out.extend(edits.replace.unwrap());
            usage = edits.usage.or(usage);
            first |= edits.first_content;
        }
        (String::from_utf8(out).unwrap(), usage, first)
    }

    /// The SSE events as (event name, data JSON); checks names, types and sequence numbers agree.
    fn events(sse: &str) -> Vec<Value> {
        let mut out = Vec::new();
        for block in sse.split("\n\n").filter(|b| !b.is_empty()) {
            let (name, data) = block.split_once('\n').unwrap();
            let v: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(name.strip_prefix("event: ").unwrap(), v["type"]);
            assert_eq!(v["sequence_number"], out.len());
            out.push(v);
        }
        out
    }

    #[test]
    fn stream_golden_at_every_split() {
        let upstream = fixture("response.in.sse");
        let (reference, usage, first) = run_stream(Schema::Anthropic, &[upstream.as_bytes(), b""]);
        golden("response.expected.sse", &reference);
        assert!(first);
        assert_eq!(usage, Some(TokenUsage { input: 35, output: 30, total: 65, cached_input: 10, reasoning: 0 }));
        for cut in 0..=upstream.len() {
            let (a, b) = upstream.as_bytes().split_at(cut);
            assert_eq!(run_stream(Schema::Anthropic, &[a, b]).0, reference, "cut {cut}");
        }
        let bytes: Vec<&[u8]> = upstream.as_bytes().chunks(1).chain([&b""[..]]).collect();
        assert_eq!(run_stream(Schema::Anthropic, &bytes).0, reference);

        let ev = events(&reference);
        let kinds: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        assert_eq!(ev[12]["text"], "Hello \"world\" é");
        assert_eq!(ev[18]["arguments"], "{\"city\": \"Paris\"}");
        let done = &ev[20]["response"];
        assert_eq!(done["id"], "resp_01XYZ");
        assert_eq!(done["model"], "claude-x-20250101");
        assert_eq!(done["output"][0]["encrypted_content"], "sig-1");
        assert_eq!(done["output"][1]["content"][0]["text"], "Hello \"world\" é");
        assert_eq!(done["output"][2]["call_id"], "toolu_09");
        assert_eq!(done["usage"]["total_tokens"], 65);
    }

    #[test]
    fn aws_eventstream_frames_translate_like_sse() {
        let upstream = fixture("response.in.sse");
        let mut frames = Vec::new();
        for block in upstream.split("\n\n").filter(|b| !b.is_empty()) {
            let data = block.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            let payload = format!(r#"{{"bytes":"{}"}}"#, aws_smithy_types::base64::encode(data.as_bytes()));
            frames.extend(crate::eventstream::encode_for_test(
                &[(":event-type", "chunk"), (":content-type", "application/json"), (":message-type", "event")],
                payload.as_bytes(),
            ));
        }
        let (sse, _, _) = run_stream(Schema::Anthropic, &[upstream.as_bytes(), b""]);
        let (aws, usage, _) = run_stream(Schema::AWSAnthropic, &[&frames, b""]);
        assert_eq!(aws, sse);
        assert_eq!(usage.map(|u| u.output), Some(30));
        for cut in (0..=frames.len()).step_by(7) {
            let (a, b) = frames.split_at(cut);
            assert_eq!(run_stream(Schema::AWSAnthropic, &[a, b]).0, sse, "cut {cut}");
        }
    }

    #[test]
    fn stream_errors_and_early_ends_fail_the_response() {
        let upstream = fixture("stream-error.in.sse");
        let (out, _, _) = run_stream(Schema::Anthropic, &[upstream.as_bytes(), b""]);
        golden("stream-error.expected.sse", &out);
        let ev = events(&out);
        let n = ev.len();
        assert_eq!(ev[n - 2]["type"], "error");
        assert_eq!(ev[n - 2]["code"], "overloaded_error");
        assert_eq!(ev[n - 2]["message"], "Overloaded");
        assert_eq!(ev[n - 1]["type"], "response.failed");
        assert_eq!(ev[n - 1]["response"]["error"]["code"], "server_error");
        for (stream, words) in [
            (&upstream[..upstream.find("event: error").unwrap()], "before the message was complete"),
            ("", "without any event"),
            ("data: {not json}\n\n", "without any event"),
        ] {
            let (out, _, _) = run_stream(Schema::Anthropic, &[stream.as_bytes(), b""]);
            let ev = events(&out);
            assert_eq!(ev.last().unwrap()["type"], "response.failed", "{out}");
            assert!(ev.last().unwrap()["response"]["error"]["message"].as_str().unwrap().contains(words), "{out}");
        }
        // A stream cut by max_tokens is incomplete, even without message_stop.
        let cut = "data: {\"type\":\"content_block_start\",\"content_block\":{\"type\":\"text\",\"text\":\"Hi\"}}\n\n\
                   data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"output_tokens\":1}}\n\n";
        let (out, _, _) = run_stream(Schema::Anthropic, &[cut.as_bytes(), b""]);
        let ev = events(&out);
        let last = ev.last().unwrap();
        assert_eq!(last["type"], "response.incomplete");
        assert_eq!(last["response"]["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(last["response"]["output"][0]["content"][0]["text"], "Hi");
        assert!(last["response"]["id"].as_str().unwrap().starts_with("resp_"));
    }

    #[test]
    fn output_past_the_held_limit_fails_the_stream() {
        let (_, mut t) = translate(Schema::Anthropic, r#"{"model":"m","input":"hi","stream":true}"#);
        t.response_headers(200, "text/event-stream");
        let start = "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n";
        let mut out = t.response_body(start.as_bytes(), false).replace.unwrap();
        let delta = format!(
            "data: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{}\"}}}}\n\n",
            "x".repeat(1 << 20)
        );
        let mut sent = 0;
        while sent <= MAX_HELD_OUTPUT + (1 << 20) {
            let chunk = t.response_body(delta.as_bytes(), false).replace.unwrap();
            // Once failed, nothing more is written (and nothing more is held).
            if out.ends_with(b"\n\n")
                && String::from_utf8_lossy(&out[out.len().saturating_sub(4096)..]).contains("response.failed")
            {
                assert!(chunk.is_empty());
            }
            out.extend(chunk);
            sent += 1 << 20;
        }
        assert!(t.writer.done);
        let tail = String::from_utf8_lossy(&out[out.len() - 2048..]).into_owned();
        assert!(tail.contains("response.failed") && tail.contains("bytes the gateway holds"), "{tail}");
    }

    #[test]
    fn no_panic_on_cut_requests() {
        let request = fixture("request.in.json");
        let backend = backend(Schema::Anthropic);
        for cut in 0..request.len() {
            for body in [&request.as_bytes()[..cut], &request.as_bytes()[cut..]] {
                let _ = write_request(body, &backend, "m", false, BodyWriter::new(None));
            }
        }
    }
}
