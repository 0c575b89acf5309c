//! OpenAI chat client → Amazon Bedrock Converse API (schema `AWSBedrock`).
//!
//! Request: `POST {prefix}/model/{modelId}/converse` (or `/converse-stream` when the client
//! streams), the model id percent-encoded as one path segment, the body a Converse request.
//! Response: the Converse JSON becomes a `chat.completion`; the eventstream of `converse-stream`
//! becomes `chat.completion.chunk` SSE events, chunk by chunk, ending with `data: [DONE]`.
//! Which OpenAI parameters are dropped and which are refused is tabled in the filter README.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use super::{BodyMode, ChunkEdits, RequestContext, RequestEdits, ResponsePlan, Translator};
use crate::error::{error_json, ApiError, ErrorKind};
use crate::eventstream::{self, Kind};
use crate::translate::openai::percent_encode;
use crate::wire::bedrock as b;
use crate::wire::openai as o;

/// `reasoning_effort` → Anthropic extended-thinking `budget_tokens` (Claude models on Bedrock).
const THINKING_BUDGETS: &[(&str, u32)] = &[("low", 1024), ("medium", 4096), ("high", 16384)];

/// Upstream error text longer than this is cut.
const MAX_ERROR_MESSAGE: usize = 2048;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("unsupported_parameter", message)
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_request", message)
}

/// The upstream path: `{prefix}/model/{modelId}/converse[-stream]`.
pub fn converse_path(prefix: &str, model: &str, stream: bool) -> String {
    let action = if stream { "converse-stream" } else { "converse" };
    format!("{prefix}/model/{}/{action}", percent_encode(model))
}

/// OpenAI chat request → Converse request, every field decided. `model` is the upstream model id.
pub fn to_converse(req: o::ChatRequest, model: &str, default_max_tokens: u32) -> Result<b::ConverseRequest, ApiError> {
    let o::ChatRequest {
        model: _,
        messages,
        max_tokens,
        max_completion_tokens,
        temperature,
        top_p,
        stop,
        stream: _,
        stream_options: _,
        tools,
        tool_choice,
        parallel_tool_calls,
        response_format,
        reasoning_effort,
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
        extra,
    } = req;
    if n.is_some_and(|n| n > 1) {
        return Err(bad("Bedrock returns one choice per request; `n` must be 1"));
    }
    if logprobs == Some(true) || top_logprobs.is_some() {
        return Err(bad("Bedrock Converse does not return log probabilities; remove `logprobs`/`top_logprobs`"));
    }
    match response_format {
        None | Some(o::ResponseFormat::Text) => {}
        Some(_) => {
            return Err(bad(
                "Bedrock Converse has no JSON response mode; remove `response_format` or ask for JSON in the prompt",
            ))
        }
    }
    let changes_sampling: Vec<&str> = [
        ("presence_penalty", presence_penalty.is_some_and(|p| p != 0.0)),
        ("frequency_penalty", frequency_penalty.is_some_and(|p| p != 0.0)),
        ("logit_bias", logit_bias.as_ref().is_some_and(|m| !m.is_empty())),
        ("parallel_tool_calls", parallel_tool_calls == Some(false)),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if !changes_sampling.is_empty() {
        log::warn!("llmgw: Bedrock cannot honour {}; dropped", changes_sampling.join(", "));
    }
    let ignored: Vec<&str> = [
        ("seed", seed.is_some()),
        ("user", user.is_some()),
        ("metadata", metadata.is_some()),
        ("store", store.is_some()),
        ("service_tier", service_tier.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .chain(extra.keys().map(String::as_str))
    .collect();
    if !ignored.is_empty() {
        log::debug!("llmgw: Bedrock backend ignores parameters: {}", ignored.join(", "));
    }

    let mut system = Vec::new();
    let mut turns: Vec<b::Message> = Vec::new();
    let mut documents = DocumentNames::default();
    for message in messages {
        let (role, blocks) = match message {
            o::Message::System { content, .. } | o::Message::Developer { content, .. } => {
                let text = content.text();
                if !text.is_empty() {
                    system.push(b::SystemBlock::Text(text));
                }
                continue;
            }
            o::Message::User { content, name: _ } => (b::Role::User, user_blocks(content, &mut documents)?),
            o::Message::Assistant { content, tool_calls, reasoning_content, refusal: _, name: _ } => {
                if reasoning_content.is_some() {
                    log::debug!("llmgw: Bedrock: dropped reasoning_content of an earlier assistant turn");
                }
                let mut blocks = Vec::new();
                if let Some(text) = content.map(|c| c.text()).filter(|t| !t.is_empty()) {
                    blocks.push(b::ContentBlock::Text(text));
                }
                for call in tool_calls.unwrap_or_default() {
                    let input: Value = if call.function.arguments.trim().is_empty() {
                        Value::Object(Default::default())
                    } else {
                        serde_json::from_str(&call.function.arguments).map_err(|e| {
                            invalid(format!("tool call {} has arguments that are not JSON: {e}", call.id))
                        })?
                    };
                    blocks.push(b::ContentBlock::ToolUse(b::ToolUseBlock {
                        tool_use_id: call.id,
                        name: call.function.name,
                        input,
                    }));
                }
                (b::Role::Assistant, blocks)
            }
            o::Message::Tool { content, tool_call_id } => {
                let content = tool_result_content(content, &mut documents)?;
                let result = b::ToolResultBlock { tool_use_id: tool_call_id, content, status: None };
                (b::Role::User, vec![b::ContentBlock::ToolResult(result)])
            }
        };
        if blocks.is_empty() {
            continue;
        }
        // Converse wants alternating roles: consecutive turns of one role become one message.
        match turns.last_mut() {
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => turns.push(b::Message { role, content: blocks }),
        }
    }

    let history_has_tools = turns
        .iter()
        .flat_map(|m| &m.content)
        .any(|block| matches!(block, b::ContentBlock::ToolUse(_) | b::ContentBlock::ToolResult(_)));
    let tool_config = tool_config(tools, tool_choice, history_has_tools)?;

    let mut max_tokens = max_completion_tokens.or(max_tokens);
    let additional_model_request_fields = match reasoning_effort.as_deref() {
        None | Some("none") | Some("minimal") => None,
        Some(effort) => {
            let budget = THINKING_BUDGETS
                .iter()
                .find(|(name, _)| *name == effort)
                .map(|(_, b)| *b)
                .ok_or_else(|| bad(format!("reasoning_effort {effort:?} is not one of low, medium, high")))?;
            if is_claude(model) {
                // Anthropic requires the thinking budget to be below max_tokens.
                let max = max_tokens.unwrap_or(default_max_tokens);
                max_tokens = Some(if max <= budget { max.saturating_add(budget) } else { max });
                let thinking = serde_json::json!({"type": "enabled", "budget_tokens": budget});
                let mut fields = serde_json::Map::new();
                fields.insert("thinking".into(), thinking);
                Some(fields)
            } else {
                log::warn!("llmgw: Bedrock: reasoning_effort is only mapped for Claude models; dropped for {model}");
                None
            }
        }
    };

    let inference = b::InferenceConfig {
        max_tokens,
        temperature,
        top_p,
        stop_sequences: stop.map(o::Stop::into_vec).unwrap_or_default(),
    };
    Ok(b::ConverseRequest {
        messages: turns,
        system,
        inference_config: (!inference.is_empty()).then_some(inference),
        tool_config,
        additional_model_request_fields,
    })
}

fn is_claude(model: &str) -> bool {
    model.contains("anthropic.") || model.contains("claude")
}

fn tool_config(
    tools: Option<Vec<o::Tool>>,
    tool_choice: Option<o::ToolChoice>,
    history_has_tools: bool,
) -> Result<Option<b::ToolConfig>, ApiError> {
    let tools = tools
        .unwrap_or_default()
        .into_iter()
        .map(|t| {
            if t.kind != "function" {
                return Err(bad(format!("tool type {:?} is not supported by Bedrock", t.kind)));
            }
            if t.function.strict.is_some() {
                log::debug!("llmgw: Bedrock: dropped `strict` of tool {}", t.function.name);
            }
            let schema =
                t.function.parameters.unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}}));
            Ok(b::Tool::ToolSpec(b::ToolSpec {
                name: t.function.name,
                description: t.function.description,
                input_schema: b::InputSchema::Json(schema),
            }))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if tools.is_empty() {
        if tool_choice.is_some() {
            log::debug!("llmgw: Bedrock: tool_choice without tools dropped");
        }
        return Ok(None);
    }
    let tool_choice = match tool_choice {
        None => None,
        Some(o::ToolChoice::Mode(mode)) => match mode.as_str() {
            "auto" => Some(b::ToolChoice::Auto(b::Empty {})),
            "required" => Some(b::ToolChoice::Any(b::Empty {})),
            "none" if !history_has_tools => {
                // Converse has no "none": a request without tools is the same thing.
                return Ok(None);
            }
            "none" => {
                log::warn!(
                    "llmgw: Bedrock has no tool_choice \"none\" and needs the tools of a conversation with tool \
                     calls; sent as auto"
                );
                None
            }
            other => return Err(bad(format!("tool_choice {other:?} is not one of none, auto, required"))),
        },
        Some(o::ToolChoice::Named(named)) => Some(b::ToolChoice::Tool(b::NamedTool { name: named.function.name })),
    };
    Ok(Some(b::ToolConfig { tools, tool_choice }))
}

/// Bedrock document names: unique in a request, of letters, digits, single spaces, `-()[]`.
#[derive(Default)]
struct DocumentNames(HashSet<String>);

impl DocumentNames {
    fn name(&mut self, filename: Option<&str>) -> String {
        let stem = filename.map(|f| f.rsplit_once('.').map_or(f, |(s, _)| s)).unwrap_or("document");
        let mut clean = String::new();
        for c in stem.chars() {
            let c = if c.is_ascii_alphanumeric() || "-()[]".contains(c) { c } else { ' ' };
            if !(c == ' ' && (clean.is_empty() || clean.ends_with(' '))) {
                clean.push(c);
            }
        }
        let mut base: String = clean.trim_end().chars().take(100).collect();
        if base.is_empty() {
            base = "document".into();
        }
        let mut name = base.clone();
        let mut n = 2;
        while !self.0.insert(name.clone()) {
            name = format!("{base}-{n}");
            n += 1;
        }
        name
    }
}

fn image_block(image_url: &o::ImageUrl) -> Result<b::ImageBlock, ApiError> {
    match image_url.parse().map_err(|e| invalid(format!("image_url: {e}")))? {
        o::Image::Base64 { media_type, data } => {
            let format = match media_type.to_ascii_lowercase().as_str() {
                "image/png" => "png",
                "image/jpeg" | "image/jpg" => "jpeg",
                "image/gif" => "gif",
                "image/webp" => "webp",
                other => return Err(bad(format!("Bedrock accepts png, jpeg, gif and webp images, not {other:?}"))),
            };
            Ok(b::ImageBlock { format: format.into(), source: b::BytesSource { bytes: data.to_string() } })
        }
        o::Image::Url(_) => {
            Err(bad("Bedrock needs the image bytes and cannot fetch image URLs: send the image as a base64 data URL \
             (data:image/png;base64,...)"))
        }
    }
}

fn document_block(file: &Value, documents: &mut DocumentNames) -> Result<b::DocumentBlock, ApiError> {
    let Some(data_url) = file.get("file_data").and_then(Value::as_str) else {
        return Err(bad(
            "Bedrock needs file contents: send `file.file_data` as a base64 data URL (file_id is not supported)",
        ));
    };
    let url = o::ImageUrl { url: data_url.to_string(), detail: None };
    let (media_type, data) = match url.parse() {
        Ok(o::Image::Base64 { media_type, data }) => (media_type.to_ascii_lowercase(), data.to_string()),
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
    let name = documents.name(file.get("filename").and_then(Value::as_str));
    Ok(b::DocumentBlock { format: format.into(), name, source: b::BytesSource { bytes: data } })
}

fn user_blocks(content: o::Content, documents: &mut DocumentNames) -> Result<Vec<b::ContentBlock>, ApiError> {
    let parts = match content {
        o::Content::Text(text) if text.is_empty() => return Ok(Vec::new()),
        o::Content::Text(text) => return Ok(vec![b::ContentBlock::Text(text)]),
        o::Content::Parts(parts) => parts,
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for part in parts {
        match part {
            o::ContentPart::Text { text } if text.is_empty() => {}
            o::ContentPart::Text { text } => blocks.push(b::ContentBlock::Text(text)),
            o::ContentPart::ImageUrl { image_url } => blocks.push(b::ContentBlock::Image(image_block(&image_url)?)),
            o::ContentPart::File { file } => blocks.push(b::ContentBlock::Document(document_block(&file, documents)?)),
            o::ContentPart::InputAudio { .. } => return Err(bad("Bedrock Converse does not accept audio input")),
            o::ContentPart::Refusal { .. } | o::ContentPart::Unknown => {
                return Err(bad(
                    "a content part of a type Bedrock cannot take was sent (text, image_url and file are supported)",
                ))
            }
        }
    }
    Ok(blocks)
}

fn tool_result_content(
    content: o::Content,
    documents: &mut DocumentNames,
) -> Result<Vec<b::ToolResultContent>, ApiError> {
    Ok(user_blocks(content, documents)?
        .into_iter()
        .filter_map(|block| match block {
            b::ContentBlock::Text(t) => Some(b::ToolResultContent::Text(t)),
            b::ContentBlock::Image(i) => Some(b::ToolResultContent::Image(i)),
            b::ContentBlock::Document(d) => Some(b::ToolResultContent::Document(d)),
            _ => None,
        })
        .collect())
}

/// Bedrock stop reason → OpenAI finish reason.
pub fn finish_reason(reason: Option<b::StopReason>) -> String {
    match reason {
        Some(b::StopReason::ToolUse) => "tool_calls",
        Some(b::StopReason::MaxTokens | b::StopReason::ModelContextWindowExceeded) => "length",
        Some(b::StopReason::GuardrailIntervened | b::StopReason::ContentFiltered) => "content_filter",
        Some(b::StopReason::EndTurn | b::StopReason::StopSequence | b::StopReason::Unknown) | None => "stop",
    }
    .to_string()
}

/// Converse response → OpenAI `chat.completion`.
pub fn to_chat_completion(resp: b::ConverseResponse, id: &str, model: &str, created: u64) -> o::ChatCompletion {
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for block in resp.output.message.map(|m| m.content).unwrap_or_default() {
        match block {
            b::ContentBlock::Text(t) => text.push_str(&t),
            b::ContentBlock::ReasoningContent(r) => {
                if let Some(r) = r.reasoning_text {
                    reasoning.push_str(&r.text);
                }
            }
            b::ContentBlock::ToolUse(t) => tool_calls.push(o::ToolCall {
                id: t.tool_use_id,
                kind: "function".into(),
                function: o::FunctionCall { name: t.name, arguments: arguments_json(&t.input) },
            }),
            b::ContentBlock::Image(_)
            | b::ContentBlock::Document(_)
            | b::ContentBlock::ToolResult(_)
            | b::ContentBlock::Unknown => {}
        }
    }
    o::ChatCompletion {
        id: id.to_string(),
        object: "chat.completion".into(),
        created,
        model: model.to_string(),
        choices: vec![o::Choice {
            index: 0,
            message: o::ResponseMessage {
                role: "assistant".into(),
                content: (!text.is_empty() || tool_calls.is_empty()).then_some(text),
                reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
                tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                refusal: None,
            },
            finish_reason: Some(finish_reason(resp.stop_reason)),
        }],
        usage: resp.usage.map(|u| o::Usage::from(u.to_tokens())),
    }
}

/// Tool input as OpenAI's JSON-text arguments (a missing input is `{}`).
fn arguments_json(input: &Value) -> String {
    match input {
        Value::Null => "{}".into(),
        v => v.to_string(),
    }
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
    if let Ok(b::ErrorBody { message: Some(m) }) = serde_json::from_slice(payload) {
        return truncate(&m);
    }
    truncate(String::from_utf8_lossy(payload).trim())
}

/// An exception or error message of an eventstream, as (exception name, message).
pub fn stream_exception(message: &eventstream::Message) -> Option<(String, String)> {
    match message.kind() {
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

    fn on_message(&mut self, message: &eventstream::Message, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if let Some((exception, text)) = stream_exception(message) {
            self.fail(&text, exception_kind(&exception), &exception, out);
            return;
        }
        let Kind::Event(event_type) = message.kind() else { return };
        let event = match b::StreamEvent::parse(event_type, message.payload()) {
            Ok(event) => event,
            Err(e) => {
                log::warn!("llmgw: skipped a Bedrock {event_type} event that did not parse: {e}");
                return;
            }
        };
        match event {
            b::StreamEvent::MessageStart(_) => {
                let delta =
                    o::Delta { role: Some("assistant".into()), content: Some(String::new()), ..Default::default() };
                o::sse_data(out, &self.chunk(delta, None));
            }
            b::StreamEvent::ContentBlockStart(start) => {
                if let Some(tool) = start.start.tool_use {
                    let index = u32::try_from(self.tool_index.len()).unwrap_or(u32::MAX);
                    self.tool_index.insert(start.content_block_index, index);
                    let call = o::ToolCallDelta {
                        index,
                        id: Some(tool.tool_use_id),
                        kind: Some("function".into()),
                        function: o::FunctionCallDelta { name: Some(tool.name), arguments: Some(String::new()) },
                    };
                    self.content(o::Delta { tool_calls: Some(vec![call]), ..Default::default() }, out);
                }
            }
            b::StreamEvent::ContentBlockDelta(d) => {
                let b::Delta { text, tool_use, reasoning_content } = d.delta;
                // Bedrock opens a tool's input with an empty piece; OpenAI streams send none.
                let tool_use = tool_use.filter(|t| !t.input.is_empty());
                if let Some(text) = text.filter(|t| !t.is_empty()) {
                    self.content(o::Delta { content: Some(text), ..Default::default() }, out);
                } else if let Some(tool_use) = tool_use {
                    let Some(&index) = self.tool_index.get(&d.content_block_index) else {
                        log::warn!("llmgw: Bedrock tool input for block {} without its start", d.content_block_index);
                        return;
                    };
                    let call = o::ToolCallDelta {
                        index,
                        id: None,
                        kind: None,
                        function: o::FunctionCallDelta { name: None, arguments: Some(tool_use.input) },
                    };
                    self.content(o::Delta { tool_calls: Some(vec![call]), ..Default::default() }, out);
                } else if let Some(text) = reasoning_content.and_then(|r| r.text).filter(|t| !t.is_empty()) {
                    self.content(o::Delta { reasoning_content: Some(text), ..Default::default() }, out);
                }
            }
            b::StreamEvent::MessageStop(stop) => {
                self.stopped = true;
                o::sse_data(out, &self.chunk(o::Delta::default(), Some(finish_reason(stop.stop_reason))));
            }
            b::StreamEvent::Metadata(metadata) => {
                self.usage = metadata.usage.or(self.usage);
                self.close(out);
            }
            b::StreamEvent::ContentBlockStop(_) | b::StreamEvent::Unknown => {}
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
        let RequestContext { info, body, backend, query: _, now_unix } = request;
        let chat = o::parse_chat_request(body)?;
        let include_usage = chat.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
        let model = backend.model_override.clone().unwrap_or_else(|| info.model.clone());
        let converse = to_converse(chat, &model, backend.default_max_tokens)?;
        let new_body = serde_json::to_vec(&converse).map_err(|e| {
            ApiError::new(500, ErrorKind::Server, "internal", format!("encoding the request failed: {e}"))
        })?;
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
            body: Some(crate::body::NewBody::whole(new_body)),
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
            return match serde_json::from_slice::<b::ConverseResponse>(chunk) {
                Ok(resp) => {
                    let usage = resp.usage.map(|u| u.to_tokens());
                    let completion = to_chat_completion(resp, &self.id, &self.model, self.created);
                    ChunkEdits {
                        replace: serde_json::to_vec(&completion).ok(),
                        usage,
                        first_content: false,
                        status: None,
                    }
                }
                Err(e) => {
                    let message = format!("the Bedrock response could not be read: {e}");
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
        }
        if end_of_stream {
            writer.close(&mut out);
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
fn upstream_error_message(body: &[u8]) -> Option<String> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let candidates = [v.get("message"), v.get("Message"), v.pointer("/error/message")];
        if let Some(m) = candidates.into_iter().flatten().find_map(Value::as_str) {
            return Some(truncate(m));
        }
    }
    let mut decoder = eventstream::Decoder::default();
    let mut found = None;
    if decoder.push(body, |m| found = found.take().or_else(|| stream_exception(&m))).is_ok() {
        if let Some((exception, message)) = found {
            return Some(format!("{exception}: {message}"));
        }
    }
    let text = String::from_utf8_lossy(body);
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

    fn translate(body: &str) -> Result<(RequestEdits, OpenAIToBedrock), ApiError> {
        let mut backend = crate::testing::backend(Schema::AWSBedrock);
        backend.region = "us-east-1".into();
        let mut t = OpenAIToBedrock::new();
        let info = read(body.as_bytes()).unwrap();
        let ctx =
            RequestContext { info: &info, body: body.as_bytes(), backend: &backend, query: "?x=1", now_unix: 1700 };
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
        let ctx = RequestContext { info: &info, body, backend: &backend, query: "", now_unix: 0 };
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
        use crate::config::{parse, Credential, Env};
        use crate::exchange::{Exchange, Shared};
        use crate::host::Host;
        use crate::testing::FakeHost;

        struct NoEnv;
        impl Env for NoEnv {
            fn var(&self, _: &str) -> Option<String> {
                None
            }
        }
        let config = parse(
            b"backends: [{name: bedrock, schema: AWSBedrock, region: eu-west-3, model_override: 'mistral.mistral-large-2407-v1:0',
               auth: {aws: {access_key_id: AKIDEXAMPLE, secret_access_key: secret, session_token: tok}}}]",
            &NoEnv,
            0,
        )
        .unwrap();
        let Some(Credential::Aws(credential)) = config.backends[0].credential.clone() else { panic!() };
        let mut x = Exchange::new(Some(Rc::new(Shared::new(config))));
        let body = br#"{"model":"large","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let mut host = FakeHost::request(
            "POST",
            "/v1/chat/completions",
            &[("content-type", "application/json"), ("authorization", "Bearer client-key")],
        );
        host.now = 1_700_000_000_123_000_000;
        host.request_body = body.to_vec();
        x.on_request_headers(&mut host, false);
        assert_eq!(x.on_request_body(&mut host, body.len(), true), crate::host::Flow::Continue);
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
    fn unparseable_response_is_an_error_body() {
        let (_, mut t) = translate(r#"{"model":"m","messages":[]}"#).unwrap();
        t.response_headers(200, "application/json");
        let v: Value = serde_json::from_slice(&t.response_body(b"{oops", true).replace.unwrap()).unwrap();
        assert_eq!(v["error"]["code"], "invalid_upstream_response");
    }
}
