//! OpenAI chat client → Anthropic Messages backends (Anthropic, AWSAnthropic, GCPAnthropic).
//! Also the pieces shared with the native Anthropic translator: paths, body variants, framing.

use std::collections::HashMap;

use serde_json::Value;

use super::{BodyMode, ChunkEdits, RequestContext, RequestEdits, ResponsePlan, Translator};
use crate::config::{Backend, Schema};
use crate::error::{ApiError, ErrorKind};
use crate::sse::{parse_event, Splitter};
use crate::translate::aws_anthropic_frames::AnthropicFrames;
use crate::translate::openai::percent_encode;
use crate::usage::TokenUsage;
use crate::wire::anthropic as a;
use crate::wire::openai as o;

/// Budgets for `reasoning_effort`, as Anthropic extended-thinking `budget_tokens`.
const THINKING_BUDGETS: &[(&str, u32)] = &[("low", 1024), ("medium", 4096), ("high", 16384)];

/// The upstream path of a Messages call for each Anthropic-speaking schema.
pub(super) fn messages_path(backend: &Backend, model: &str, stream: bool) -> String {
    let prefix = &backend.prefix;
    match backend.schema {
        Schema::AWSAnthropic => {
            let action = if stream { "invoke-with-response-stream" } else { "invoke" };
            format!("{prefix}/model/{}/{action}", percent_encode(model))
        }
        Schema::GCPAnthropic => {
            let action = if stream { "streamRawPredict" } else { "rawPredict" };
            format!(
                "{prefix}/projects/{}/locations/{}/publishers/anthropic/models/{}:{action}",
                backend.project,
                backend.region,
                percent_encode(model)
            )
        }
        _ => format!("{prefix}/messages"),
    }
}

/// Adjusts a Messages body to its platform: AWS and GCP take the model in the path and the API
/// version in the body; AWS also rejects `stream` (the path says it).
pub(super) fn platform_body(request: &mut a::MessagesRequest, backend: &Backend, model: &str, stream: bool) {
    match backend.schema {
        Schema::AWSAnthropic => {
            request.model = None;
            request.stream = None;
            request.anthropic_version = Some(backend.anthropic_version.clone());
        }
        Schema::GCPAnthropic => {
            request.model = None;
            request.stream = stream.then_some(true);
            request.anthropic_version = Some(backend.anthropic_version.clone());
        }
        _ => {
            request.model = Some(model.to_string());
            request.stream = stream.then_some(true);
            request.anthropic_version = None;
        }
    }
}

/// Headers a Messages call needs on each platform.
pub(super) fn platform_headers(backend: &Backend, client_version: Option<&str>) -> Vec<(String, String)> {
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    if backend.schema == Schema::Anthropic {
        let version = client_version.unwrap_or(&backend.anthropic_version);
        headers.push(("anthropic-version".to_string(), version.to_string()));
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
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let candidates =
            [v.pointer("/error/message"), v.get("message"), v.get("Message"), v.pointer("/0/error/message")];
        if let Some(m) = candidates.into_iter().flatten().find_map(Value::as_str) {
            return m.to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "the upstream returned an empty error body".into()
    } else {
        text.chars().take(2048).collect()
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("unsupported_parameter", message)
}

/// OpenAI chat request → Anthropic Messages request, every field decided.
pub(super) fn to_messages_request(
    req: o::ChatRequest,
    default_max_tokens: u32,
) -> Result<a::MessagesRequest, ApiError> {
    let o::ChatRequest {
        model,
        messages,
        max_tokens,
        max_completion_tokens,
        temperature,
        top_p,
        stop,
        stream,
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
        return Err(bad("Anthropic returns one choice per request; `n` must be 1"));
    }
    if logprobs == Some(true) || top_logprobs.is_some() {
        return Err(bad("Anthropic does not return log probabilities; remove `logprobs`/`top_logprobs`"));
    }
    if temperature.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
        return Err(bad("Anthropic accepts `temperature` between 0 and 1"));
    }
    match response_format {
        None | Some(o::ResponseFormat::Text) => {}
        Some(_) => {
            return Err(bad(
                "Anthropic has no JSON response mode; remove `response_format` or ask for JSON in the prompt",
            ))
        }
    }
    let ignored: Vec<&str> = [
        ("seed", seed.is_some()),
        ("presence_penalty", presence_penalty.is_some()),
        ("frequency_penalty", frequency_penalty.is_some()),
        ("logit_bias", logit_bias.is_some()),
        ("metadata", metadata.is_some()),
        ("store", store.is_some()),
        ("service_tier", service_tier.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .chain(extra.keys().map(String::as_str))
    .collect();
    if !ignored.is_empty() {
        log::debug!("llmgw: Anthropic backend ignores parameters: {}", ignored.join(", "));
    }

    let mut system: Vec<a::TextBlock> = Vec::new();
    let mut turns: Vec<a::Message> = Vec::new();
    for message in messages {
        let (role, blocks) = match message {
            o::Message::System { content, .. } | o::Message::Developer { content, .. } => {
                system.push(a::TextBlock { kind: "text".into(), text: content.text(), cache_control: None });
                continue;
            }
            o::Message::User { content, .. } => (a::Role::User, user_blocks(content)?),
            o::Message::Assistant { content, tool_calls, reasoning_content: _, refusal: _, name: _ } => {
                let mut blocks = Vec::new();
                if let Some(text) = content.map(|c| c.text()).filter(|t| !t.is_empty()) {
                    blocks.push(a::ContentBlock::Text { text, cache_control: None });
                }
                for call in tool_calls.unwrap_or_default() {
                    let input: Value = if call.function.arguments.trim().is_empty() {
                        Value::Object(Default::default())
                    } else {
                        serde_json::from_str(&call.function.arguments).map_err(|e| {
                            ApiError::bad_request(
                                "invalid_request",
                                format!("tool call {} has arguments that are not JSON: {e}", call.id),
                            )
                        })?
                    };
                    blocks.push(a::ContentBlock::ToolUse { id: call.id, name: call.function.name, input });
                }
                (a::Role::Assistant, blocks)
            }
            o::Message::Tool { content, tool_call_id } => {
                let result = a::ContentBlock::ToolResult {
                    tool_use_id: tool_call_id,
                    content: Some(a::ToolResultContent::Text(content.text())),
                    is_error: None,
                };
                (a::Role::User, vec![result])
            }
        };
        // Anthropic wants alternating roles: consecutive turns of one role become one message.
        match turns.last_mut() {
            Some(a::Message { role: last, content: a::MessageContent::Blocks(existing) }) if *last == role => {
                existing.extend(blocks);
            }
            _ => turns.push(a::Message { role, content: a::MessageContent::Blocks(blocks) }),
        }
    }

    let tools = tools
        .map(|tools| {
            tools
                .into_iter()
                .map(|t| {
                    if t.kind != "function" {
                        return Err(bad(format!("tool type {:?} is not supported by Anthropic", t.kind)));
                    }
                    Ok(a::Tool {
                        name: t.function.name,
                        description: t.function.description,
                        input_schema: t.function.parameters.unwrap_or_else(a::empty_object_schema),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let disable_parallel = (parallel_tool_calls == Some(false)).then_some(true);
    let tool_choice = match tool_choice {
        None if disable_parallel.is_some() && tools.is_some() => {
            Some(a::ToolChoice::Auto { disable_parallel_tool_use: disable_parallel })
        }
        None => None,
        Some(o::ToolChoice::Mode(mode)) => match mode.as_str() {
            "auto" => Some(a::ToolChoice::Auto { disable_parallel_tool_use: disable_parallel }),
            "required" => Some(a::ToolChoice::Any { disable_parallel_tool_use: disable_parallel }),
            "none" => Some(a::ToolChoice::None),
            other => return Err(bad(format!("tool_choice {other:?} is not one of none, auto, required"))),
        },
        Some(o::ToolChoice::Named(named)) => {
            Some(a::ToolChoice::Tool { name: named.function.name, disable_parallel_tool_use: disable_parallel })
        }
    };

    let mut max_tokens = max_completion_tokens.or(max_tokens).unwrap_or(default_max_tokens);
    let thinking = match reasoning_effort.as_deref() {
        None | Some("none") | Some("minimal") => None,
        Some(effort) => {
            let budget = THINKING_BUDGETS
                .iter()
                .find(|(name, _)| *name == effort)
                .map(|(_, b)| *b)
                .ok_or_else(|| bad(format!("reasoning_effort {effort:?} is not one of low, medium, high")))?;
            // Anthropic requires the thinking budget to be below max_tokens.
            if max_tokens <= budget {
                max_tokens = max_tokens.saturating_add(budget);
            }
            Some(a::Thinking { kind: "enabled".into(), budget_tokens: Some(budget) })
        }
    };

    Ok(a::MessagesRequest {
        model: Some(model),
        max_tokens: Some(max_tokens),
        messages: turns,
        system: (!system.is_empty()).then_some(a::System::Blocks(system)),
        stop_sequences: stop.map(o::Stop::into_vec),
        temperature,
        top_p,
        top_k: None,
        stream,
        tools,
        tool_choice,
        thinking,
        metadata: user.map(|u| a::Metadata { user_id: Some(u) }),
        anthropic_version: None,
        extra: Default::default(),
    })
}

fn user_blocks(content: o::Content) -> Result<Vec<a::ContentBlock>, ApiError> {
    let parts = match content {
        o::Content::Text(text) => return Ok(vec![a::ContentBlock::Text { text, cache_control: None }]),
        o::Content::Parts(parts) => parts,
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for part in parts {
        match part {
            o::ContentPart::Text { text } => blocks.push(a::ContentBlock::Text { text, cache_control: None }),
            o::ContentPart::ImageUrl { image_url } => {
                let source = match image_url.parse().map_err(|e| bad(format!("image_url: {e}")))? {
                    o::Image::Base64 { media_type, data } => {
                        a::ImageSource::Base64 { media_type: media_type.to_string(), data: data.to_string() }
                    }
                    o::Image::Url(url) => a::ImageSource::Url { url: url.to_string() },
                };
                blocks.push(a::ContentBlock::Image { source });
            }
            o::ContentPart::InputAudio { .. } => return Err(bad("Anthropic does not accept audio input")),
            o::ContentPart::File { .. } => return Err(bad("file parts are not supported for Anthropic backends")),
            o::ContentPart::Refusal { .. } | o::ContentPart::Unknown => {
                log::debug!("llmgw: dropped a content part Anthropic cannot take")
            }
        }
    }
    Ok(blocks)
}

/// Anthropic response → OpenAI `chat.completion`.
pub(super) fn to_chat_completion(resp: a::MessagesResponse, fallback_model: &str, created: u64) -> o::ChatCompletion {
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for block in resp.content {
        match block {
            a::ContentBlock::Text { text: t, .. } => text.push_str(&t),
            a::ContentBlock::Thinking { thinking, .. } => reasoning.push_str(&thinking),
            a::ContentBlock::ToolUse { id, name, input } => tool_calls.push(o::ToolCall {
                id,
                kind: "function".into(),
                function: o::FunctionCall { name, arguments: input.to_string() },
            }),
            _ => {}
        }
    }
    let usage = resp.usage.to_tokens();
    let model = if resp.model.is_empty() { fallback_model.to_string() } else { resp.model };
    o::ChatCompletion {
        id: resp.id,
        object: "chat.completion".into(),
        created,
        model,
        choices: vec![o::Choice {
            index: 0,
            message: o::ResponseMessage {
                role: "assistant".into(),
                content: (!text.is_empty() || tool_calls.is_empty()).then_some(text),
                reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
                tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                refusal: None,
            },
            finish_reason: finish_reason(resp.stop_reason),
        }],
        usage: Some(o::Usage::from(usage)),
    }
}

/// Anthropic stream events → OpenAI chunks, one event at a time.
#[derive(Default)]
pub(super) struct ChunkWriter {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// Anthropic block index → OpenAI tool call index.
    tool_index: HashMap<u32, u32>,
    usage: a::Usage,
    finish_reason: Option<String>,
    pub(super) done: bool,
    pub(super) saw_content: bool,
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

    /// Translates one event's JSON, appending SSE bytes to `out`. Nothing follows `[DONE]`.
    pub(super) fn on_event(&mut self, json: &[u8], out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let event: a::StreamEvent = match serde_json::from_slice(json) {
            Ok(e) => e,
            Err(e) => {
                log::warn!("llmgw: skipped an Anthropic stream event that did not parse: {e}");
                return;
            }
        };
        match event {
            a::StreamEvent::MessageStart { message } => {
                self.id = message.id;
                if !message.model.is_empty() {
                    self.model = message.model;
                }
                self.usage = message.usage;
                let delta =
                    o::Delta { role: Some("assistant".into()), content: Some(String::new()), ..Default::default() };
                o::sse_data(out, &self.chunk(delta, None));
            }
            a::StreamEvent::ContentBlockStart { index, content_block } => match content_block {
                a::ContentBlock::ToolUse { id, name, .. } => {
                    let tool = u32::try_from(self.tool_index.len()).unwrap_or(u32::MAX);
                    self.tool_index.insert(index, tool);
                    let call = o::ToolCallDelta {
                        index: tool,
                        id: Some(id),
                        kind: Some("function".into()),
                        function: o::FunctionCallDelta { name: Some(name), arguments: Some(String::new()) },
                    };
                    self.saw_content = true;
                    o::sse_data(
                        out,
                        &self.chunk(o::Delta { tool_calls: Some(vec![call]), ..Default::default() }, None),
                    );
                }
                a::ContentBlock::Text { text, .. } if !text.is_empty() => {
                    self.saw_content = true;
                    o::sse_data(out, &self.chunk(o::Delta { content: Some(text), ..Default::default() }, None));
                }
                _ => {}
            },
            a::StreamEvent::ContentBlockDelta { index, delta } => {
                let delta = match delta {
                    a::BlockDelta::TextDelta { text } => o::Delta { content: Some(text), ..Default::default() },
                    a::BlockDelta::ThinkingDelta { thinking } => {
                        o::Delta { reasoning_content: Some(thinking), ..Default::default() }
                    }
                    a::BlockDelta::InputJsonDelta { partial_json } => {
                        let Some(&tool) = self.tool_index.get(&index) else { return };
                        let call = o::ToolCallDelta {
                            index: tool,
                            id: None,
                            kind: None,
                            function: o::FunctionCallDelta { name: None, arguments: Some(partial_json) },
                        };
                        o::Delta { tool_calls: Some(vec![call]), ..Default::default() }
                    }
                    a::BlockDelta::SignatureDelta { .. } | a::BlockDelta::Unknown => return,
                };
                self.saw_content = true;
                o::sse_data(out, &self.chunk(delta, None));
            }
            a::StreamEvent::MessageDelta { delta, usage } => {
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
                self.finish_reason = finish_reason(delta.stop_reason).or(Some("stop".into()));
                o::sse_data(out, &self.chunk(o::Delta::default(), self.finish_reason.clone()));
            }
            a::StreamEvent::MessageStop => self.close(out),
            a::StreamEvent::Error { error } => {
                let body = serde_json::json!({"error": {"message": error.message, "type": error.kind, "code": "upstream_error"}});
                o::sse_data(out, &body);
                out.extend_from_slice(o::SSE_DONE);
                self.done = true;
            }
            a::StreamEvent::ContentBlockStop { .. } | a::StreamEvent::Ping | a::StreamEvent::Unknown => {}
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
        let RequestContext { info, body, backend, query: _, now_unix } = request;
        let chat = o::parse_chat_request(body)?;
        let include_usage = chat.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
        let mut messages = to_messages_request(chat, backend.default_max_tokens)?;
        let model = backend.model_override.clone().unwrap_or_else(|| info.model.clone());
        platform_body(&mut messages, backend, &model, info.stream);
        let new_body = serde_json::to_vec(&messages).map_err(|e| {
            ApiError::new(500, ErrorKind::Server, "internal", format!("encoding the request failed: {e}"))
        })?;
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
        let content_type = content_type.to_ascii_lowercase();
        self.streaming_response = self.stream
            && (content_type.starts_with("text/event-stream")
                || content_type.starts_with("application/vnd.amazon.eventstream"));
        if self.streaming_response {
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

    fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> ChunkEdits {
        if !self.streaming_response {
            return match serde_json::from_slice::<a::MessagesResponse>(chunk) {
                Ok(resp) => {
                    let completion = to_chat_completion(resp, &self.model, self.created);
                    let usage = completion.usage.map(|u| TokenUsage {
                        input: u.prompt_tokens,
                        output: u.completion_tokens,
                        total: u.total_tokens,
                        cached_input: u.prompt_tokens_details.map_or(0, |d| d.cached_tokens),
                        reasoning: 0,
                    });
                    ChunkEdits {
                        replace: serde_json::to_vec(&completion).ok(),
                        usage,
                        first_content: false,
                        status: None,
                    }
                }
                Err(e) => {
                    let message = format!("the Anthropic response could not be read: {e}");
                    ChunkEdits::unreadable(crate::error::error_json(
                        &message,
                        "server_error",
                        "invalid_upstream_response",
                    ))
                }
            };
        }
        let mut out = Vec::new();
        let had_content = self.writer.saw_content;
        let writer = &mut self.writer;
        if let Err(e) = self.framing.push(chunk, |json| writer.on_event(json, &mut out)) {
            log::warn!("llmgw: Anthropic stream: {e}");
        }
        if end_of_stream {
            self.framing.finish(|json| writer.on_event(json, &mut out));
            self.usage = Some(self.writer.usage());
        }
        ChunkEdits {
            replace: Some(out),
            usage: if end_of_stream { self.usage } else { None },
            first_content: !had_content && self.writer.saw_content,
            status: None,
        }
    }

    fn error_body(&mut self, status: u16, body: &[u8]) -> Option<Vec<u8>> {
        let message = upstream_message(body);
        Some(crate::error::error_json(&message, ErrorKind::for_status(status).as_str(), "upstream_error"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::request::read;

    fn translate(schema: Schema, body: &str) -> (RequestEdits, OpenAIToAnthropic) {
        let mut backend = crate::testing::backend(schema);
        backend.project = "proj".into();
        backend.region = "us-east5".into();
        if schema == Schema::AWSAnthropic {
            backend.anthropic_version = "bedrock-2023-05-31".into();
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
            })
            .unwrap();
        (edits, t)
    }

    fn body_json(edits: &RequestEdits) -> Value {
        serde_json::from_slice(&edits.body.as_ref().unwrap().apply_to(b"")).unwrap()
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
            let ctx = RequestContext { info: &info, body: body.as_bytes(), backend: &backend, query: "", now_unix: 0 };
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
        let v: Value = serde_json::from_slice(&edits.replace.unwrap()).unwrap();
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
            .map(|d| serde_json::from_str(d).unwrap())
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

    #[test]
    fn upstream_errors_keep_the_message() {
        let (_, mut t) = translate(Schema::Anthropic, r#"{"model":"m","messages":[]}"#);
        let body = t
            .error_body(429, br#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has exceeded your rate limit"}}"#)
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["message"], "Number of requests has exceeded your rate limit");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        let v: Value =
            serde_json::from_slice(&t.error_body(400, br#"{"message":"Malformed input request"}"#).unwrap()).unwrap();
        assert_eq!(v["error"]["message"], "Malformed input request");
    }
}
