//! Anthropic client (`POST /v1/messages`) → OpenAI-compatible backends (OpenAI, AzureOpenAI):
//! the Messages request becomes a chat completion request; the answer, streams included, becomes
//! a Messages response with Anthropic's event sequence.

use serde_json::{json, Map, Value};

use super::openai::upstream_path;
use super::{BodyMode, ChunkEdits, RequestContext, RequestEdits, ResponsePlan, Translator};
use crate::api::Endpoint;
use crate::error::{anthropic_error_json, ApiError, ErrorKind};
use crate::sse::{parse_event, Splitter};
use crate::usage::{self, TokenUsage};
use crate::wire::anthropic as a;

/// Messages request → chat completion request (JSON), every field decided.
fn to_chat_request(req: a::MessagesRequest, model: &str) -> Result<Value, ApiError> {
    let a::MessagesRequest {
        model: _,
        max_tokens,
        messages,
        system,
        stop_sequences,
        temperature,
        top_p,
        top_k,
        stream,
        tools,
        tool_choice,
        thinking,
        metadata,
        anthropic_version: _,
        extra,
    } = req;
    let ignored: Vec<&str> = [("top_k", top_k.is_some()), ("thinking", thinking.is_some())]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .chain(extra.keys().map(String::as_str))
        .collect();
    if !ignored.is_empty() {
        log::debug!("llmgw: OpenAI-compatible backend ignores Anthropic parameters: {}", ignored.join(", "));
    }
    let mut out_messages: Vec<Value> = Vec::new();
    if let Some(system) = system {
        out_messages.push(json!({"role": "system", "content": system.text()}));
    }
    for message in messages {
        let blocks = message.content.into_blocks();
        match message.role {
            a::Role::User => user_messages(blocks, &mut out_messages),
            a::Role::Assistant => out_messages.push(assistant_message(blocks)),
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(out_messages));
    if let Some(max_tokens) = max_tokens {
        body.insert("max_tokens".into(), json!(max_tokens));
    }
    if let Some(t) = temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = top_p {
        body.insert("top_p".into(), json!(p));
    }
    if let Some(stop) = stop_sequences {
        body.insert("stop".into(), json!(stop));
    }
    if stream == Some(true) {
        body.insert("stream".into(), json!(true));
        // Anthropic streams end with usage; ask the OpenAI side for it.
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(tools) = tools {
        let tools: Vec<Value> = tools
            .into_iter()
            .map(|t| {
                let mut function = json!({"name": t.name, "parameters": t.input_schema});
                if let (Some(d), Some(f)) = (t.description, function.as_object_mut()) {
                    f.insert("description".into(), json!(d));
                }
                json!({"type": "function", "function": function})
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = tool_choice {
        let (value, disable_parallel) = match choice {
            a::ToolChoice::Auto { disable_parallel_tool_use } => (json!("auto"), disable_parallel_tool_use),
            a::ToolChoice::Any { disable_parallel_tool_use } => (json!("required"), disable_parallel_tool_use),
            a::ToolChoice::Tool { name, disable_parallel_tool_use } => {
                (json!({"type": "function", "function": {"name": name}}), disable_parallel_tool_use)
            }
            a::ToolChoice::None => (json!("none"), None),
        };
        body.insert("tool_choice".into(), value);
        if disable_parallel == Some(true) {
            body.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    if let Some(user) = metadata.and_then(|m| m.user_id) {
        body.insert("user".into(), json!(user));
    }
    Ok(Value::Object(body))
}

/// A user turn: tool results become `tool` messages (first, as OpenAI expects them right after the
/// assistant's calls); the rest one user message.
fn user_messages(blocks: Vec<a::ContentBlock>, out: &mut Vec<Value>) {
    let mut parts: Vec<Value> = Vec::new();
    for block in blocks {
        match block {
            a::ContentBlock::ToolResult { tool_use_id, content, is_error } => {
                let mut text = content.map(|c| c.text()).unwrap_or_default();
                if is_error == Some(true) && !text.starts_with("Error") {
                    text = format!("Error: {text}");
                }
                out.push(json!({"role": "tool", "tool_call_id": tool_use_id, "content": text}));
            }
            a::ContentBlock::Text { text, .. } => parts.push(json!({"type": "text", "text": text})),
            a::ContentBlock::Image { source } => match source {
                a::ImageSource::Base64 { media_type, data } => parts.push(
                    json!({"type": "image_url", "image_url": {"url": format!("data:{media_type};base64,{data}")}}),
                ),
                a::ImageSource::Url { url } => parts.push(json!({"type": "image_url", "image_url": {"url": url}})),
                a::ImageSource::Unknown => log::debug!("llmgw: dropped an image with an unknown source type"),
            },
            _ => log::debug!("llmgw: dropped a content block OpenAI-compatible backends cannot take"),
        }
    }
    match parts.as_slice() {
        [] => {}
        [only] if only["type"] == "text" => out.push(json!({"role": "user", "content": only["text"].clone()})),
        _ => out.push(json!({"role": "user", "content": parts})),
    }
}

fn assistant_message(blocks: Vec<a::ContentBlock>) -> Value {
    let mut text = String::new();
    let mut calls: Vec<Value> = Vec::new();
    for block in blocks {
        match block {
            a::ContentBlock::Text { text: t, .. } => text.push_str(&t),
            a::ContentBlock::ToolUse { id, name, input } => calls.push(json!({
                "id": id, "type": "function", "function": {"name": name, "arguments": input.to_string()}
            })),
            _ => {}
        }
    }
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
    if let (false, Some(m)) = (calls.is_empty(), message.as_object_mut()) {
        m.insert("tool_calls".into(), Value::Array(calls));
    }
    message
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
fn anthropic_usage(u: TokenUsage) -> Value {
    json!({
        "input_tokens": u.input.saturating_sub(u.cached_input),
        "output_tokens": u.output,
        "cache_read_input_tokens": u.cached_input,
        "cache_creation_input_tokens": 0,
    })
}

/// A chat completion (lenient: OpenAI-compatible servers omit fields) → Messages response.
fn to_messages_response(body: &[u8], fallback_model: &str) -> Result<(Value, Option<TokenUsage>), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let choice = v.pointer("/choices/0").ok_or("the response has no choices")?;
    let message = choice.get("message").ok_or("the choice has no message")?;
    let mut content: Vec<Value> = Vec::new();
    if let Some(reasoning) = message.get("reasoning_content").and_then(Value::as_str).filter(|r| !r.is_empty()) {
        content.push(json!({"type": "thinking", "thinking": reasoning, "signature": ""}));
    }
    if let Some(text) = message.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
        let arguments = call.pointer("/function/arguments").and_then(Value::as_str).unwrap_or("{}");
        let input: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({"_raw_arguments": arguments}));
        content.push(json!({
            "type": "tool_use",
            "id": call.get("id").cloned().unwrap_or(json!("")),
            "name": call.pointer("/function/name").cloned().unwrap_or(json!("")),
            "input": input,
        }));
    }
    let tokens = usage::from_openai_json(body);
    let finish = choice.get("finish_reason").and_then(Value::as_str).unwrap_or("stop");
    let model = v.get("model").and_then(Value::as_str).filter(|m| !m.is_empty()).unwrap_or(fallback_model);
    let response = json!({
        "id": v.get("id").cloned().unwrap_or(json!("msg_llmgw")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(finish),
        "stop_sequence": null,
        "usage": anthropic_usage(tokens.unwrap_or_default()),
    });
    Ok((response, tokens))
}

/// What the open content block is, in the Anthropic event stream being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    Tool(u64),
}

/// OpenAI chunks → Anthropic events.
#[derive(Default)]
struct EventWriter {
    model: String,
    started: bool,
    open: Option<Block>,
    next_index: u32,
    finish_reason: Option<String>,
    usage: Option<TokenUsage>,
    done: bool,
    saw_content: bool,
}

fn write(out: &mut Vec<u8>, name: &str, data: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

impl EventWriter {
    fn start(&mut self, chunk: &Value, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let model = chunk.get("model").and_then(Value::as_str).filter(|m| !m.is_empty()).unwrap_or(&self.model);
        let message = json!({
            "id": chunk.get("id").cloned().unwrap_or(json!("msg_llmgw")),
            "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        });
        write(out, "message_start", &json!({"type": "message_start", "message": message}));
    }

    fn open_block(&mut self, block: Block, start: Value, out: &mut Vec<u8>) {
        if self.open == Some(block) {
            return;
        }
        self.close_block(out);
        self.open = Some(block);
        let event = json!({"type": "content_block_start", "index": self.next_index, "content_block": start});
        write(out, "content_block_start", &event);
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if self.open.take().is_some() {
            write(out, "content_block_stop", &json!({"type": "content_block_stop", "index": self.next_index}));
            self.next_index += 1;
        }
    }

    fn delta(&mut self, delta: Value, out: &mut Vec<u8>) {
        self.saw_content = true;
        let event = json!({"type": "content_block_delta", "index": self.next_index, "delta": delta});
        write(out, "content_block_delta", &event);
    }

    fn on_chunk(&mut self, data: &str, out: &mut Vec<u8>) {
        if data == "[DONE]" {
            self.finish(out);
            return;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            log::warn!("llmgw: skipped a stream chunk that is not JSON");
            return;
        };
        if let Some(error) = chunk.get("error") {
            let message = error.get("message").and_then(Value::as_str).unwrap_or("upstream stream error");
            let event = json!({"type": "error", "error": {"type": "api_error", "message": message}});
            write(out, "error", &event);
            self.done = true;
            return;
        }
        self.start(&chunk, out);
        if let Some(u) = usage::from_openai_json(data.as_bytes()) {
            self.usage = Some(u);
        }
        let Some(choice) = chunk.pointer("/choices/0") else { return };
        let delta = choice.get("delta").cloned().unwrap_or(Value::Null);
        if let Some(r) = delta.get("reasoning_content").and_then(Value::as_str).filter(|r| !r.is_empty()) {
            self.open_block(Block::Thinking, json!({"type": "thinking", "thinking": "", "signature": ""}), out);
            self.delta(json!({"type": "thinking_delta", "thinking": r}), out);
        }
        if let Some(text) = delta.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
            self.open_block(Block::Text, json!({"type": "text", "text": ""}), out);
            self.delta(json!({"type": "text_delta", "text": text}), out);
        }
        for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            if call.get("id").is_some_and(|id| !id.is_null()) || self.open != Some(Block::Tool(index)) {
                let start = json!({
                    "type": "tool_use",
                    "id": call.get("id").cloned().unwrap_or(json!(format!("toolu_{index}"))),
                    "name": call.pointer("/function/name").cloned().unwrap_or(json!("")),
                    "input": {},
                });
                self.open_block(Block::Tool(index), start, out);
            }
            if let Some(args) = call.pointer("/function/arguments").and_then(Value::as_str).filter(|a| !a.is_empty()) {
                self.delta(json!({"type": "input_json_delta", "partial_json": args}), out);
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(reason.to_string());
        }
    }

    /// Closes the message: last block, `message_delta` with stop reason and usage, `message_stop`.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.done || !self.started {
            return;
        }
        self.done = true;
        self.close_block(out);
        let reason = stop_reason(self.finish_reason.as_deref().unwrap_or("stop"));
        let u = self.usage.unwrap_or_default();
        let usage = json!({
            "input_tokens": u.input.saturating_sub(u.cached_input),
            "output_tokens": u.output,
            "cache_read_input_tokens": u.cached_input,
        });
        let delta =
            json!({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": null}, "usage": usage});
        write(out, "message_delta", &delta);
        write(out, "message_stop", &json!({"type": "message_stop"}));
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
        let RequestContext { info, body, backend, query, now_unix: _ } = request;
        let messages: a::MessagesRequest = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request("invalid_request", format!("invalid Messages request: {e}")))?;
        if messages.max_tokens.is_none() {
            return Err(ApiError::bad_request("invalid_request", "max_tokens: Field required"));
        }
        let model = backend.model_override.clone().unwrap_or_else(|| info.model.clone());
        let chat = to_chat_request(messages, &model)?;
        self.model = model.clone();
        self.stream = info.stream;
        self.writer = EventWriter { model: model.clone(), ..Default::default() };
        let new_body = serde_json::to_vec(&chat).map_err(|e| {
            ApiError::new(500, ErrorKind::Server, "internal", format!("encoding the request failed: {e}"))
        })?;
        Ok(RequestEdits {
            path: Some(upstream_path(backend, Endpoint::ChatCompletions, &model, query)),
            body: Some(crate::body::NewBody::whole(new_body)),
            set_headers: vec![("content-type".into(), "application/json".into())],
        })
    }

    fn response_headers(&mut self, _status: u16, content_type: &str) -> ResponsePlan {
        self.streaming_response = self.stream && content_type.to_ascii_lowercase().starts_with("text/event-stream");
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
                Ok((response, usage)) => ChunkEdits {
                    replace: Some(response.to_string().into_bytes()),
                    usage,
                    first_content: false,
                    status: None,
                },
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
                writer.on_chunk(&event.data, &mut out);
            }
        });
        if !within {
            log::warn!("llmgw: an OpenAI stream event exceeded the size limit");
        }
        if end_of_stream {
            let tail = parse_event(&self.splitter.take_pending());
            if tail.has_data {
                self.writer.on_chunk(&tail.data, &mut out);
            }
            self.writer.finish(&mut out);
        }
        ChunkEdits {
            replace: Some(out),
            usage: if end_of_stream { self.writer.usage } else { None },
            first_content: !had_content && self.writer.saw_content,
            status: None,
        }
    }

    fn error_body(&mut self, status: u16, body: &[u8]) -> Option<Vec<u8>> {
        let message = super::anthropic::upstream_message(body);
        Some(anthropic_error_json(&message, ErrorKind::for_status(status).anthropic_type(status)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Schema;
    use crate::request::read;

    fn translate(body: &str) -> (Value, RequestEdits, AnthropicToOpenAI) {
        let backend = crate::testing::backend(Schema::OpenAI);
        let mut t = AnthropicToOpenAI::new();
        let info = read(body.as_bytes()).unwrap();
        let ctx = RequestContext { info: &info, body: body.as_bytes(), backend: &backend, query: "", now_unix: 0 };
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
              "max_tokens":64,"stop":["Z"],"stream":true,"stream_options":{"include_usage":true},
              "tools":[{"type":"function","function":{"name":"get","parameters":{"type":"object"},"description":"d"}}],
              "tool_choice":"required","parallel_tool_calls":false,"user":"u"})
        );
    }

    #[test]
    fn max_tokens_is_required_as_anthropic_requires_it() {
        let backend = crate::testing::backend(Schema::OpenAI);
        let body = br#"{"model":"m","messages":[]}"#;
        let info = read(body).unwrap();
        let ctx = RequestContext { info: &info, body, backend: &backend, query: "", now_unix: 0 };
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
}
