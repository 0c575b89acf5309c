//! Anthropic Messages API mock: `POST …/v1/messages` (Anthropic) and Vertex AI's
//! `…/publishers/anthropic/models/{model}:rawPredict` / `:streamRawPredict` (GCPAnthropic), and
//! Anthropic's `POST …/v1/messages/count_tokens` (`{"input_tokens": N}`, N = words of system + text
//! content, as `input_tokens` of a message before its cache reads are taken out).
//!
//! It checks what the real API checks (auth and version headers, `max_tokens`, alternating roles,
//! known block types; on Vertex: `anthropic_version` in the body and no `model`), and answers in the
//! exact wire format: a `message` object, or the SSE event sequence `message_start`,
//! `content_block_start`, `ping`, `content_block_delta`…, `content_block_stop`, `message_delta`,
//! `message_stop`.
//!
//! Deterministic numbers: `input_tokens` = words of system + text content, of which
//! `cache_read_input_tokens` = a quarter (integer division) is reported separately; output tokens =
//! reply words (`--chunks`, or header `x-mock-chunks`, capped by `max_tokens`). When the request has
//! tools and `tool_choice` is `any`/`tool`, or the last user text contains "use the tool", the reply
//! ends with a `tool_use` block for the first (or chosen) tool, input `{"q":"mock"}`.

use std::time::Duration;

use bytes::Bytes;
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{full, header_u64, insert_name, next_id, reply_words, ChannelBody, RespBody, State, MAX_TOKENS};

const VERTEX_MODELS: &str = "/publishers/anthropic/models/";
const BLOCK_TYPES: &[&str] =
    &["text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking", "document", "search_result"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Platform {
    Anthropic,
    Vertex,
}

/// Answers Anthropic-shaped paths; `None` lets other routes try.
pub fn route(state: &State, parts: &Parts, path: &str, body: &[u8]) -> Option<Response<RespBody>> {
    if path.ends_with("/v1/messages/count_tokens") {
        return Some(count_tokens(state, parts, body));
    }
    let (platform, stream_path, path_model) = if path.ends_with("/v1/messages") {
        (Platform::Anthropic, false, None)
    } else if let Some(at) = path.find(VERTEX_MODELS) {
        let (model, method) = path.get(at + VERTEX_MODELS.len()..)?.rsplit_once(':')?;
        match method {
            "rawPredict" => (Platform::Vertex, false, Some(model.to_string())),
            "streamRawPredict" => (Platform::Vertex, true, Some(model.to_string())),
            _ => return None,
        }
    } else {
        return None;
    };
    Some(serve(state, parts, platform, stream_path, path_model, body))
}

fn error(state: &State, status: StatusCode, kind: &str, message: &str) -> Response<RespBody> {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    insert_name(r.headers_mut(), &state.args.name);
    r
}

fn invalid(state: &State, message: &str) -> Response<RespBody> {
    error(state, StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

fn text_words(content: &Value) -> u64 {
    match content {
        Value::String(s) => words(s),
        Value::Array(blocks) => blocks
            .iter()
            .map(|b| match b.get("type").and_then(Value::as_str) {
                Some("text") => b.get("text").and_then(Value::as_str).map_or(0, words),
                Some("tool_result") => b.get("content").map_or(0, text_words),
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// Words of system + text content: the request's input tokens.
fn input_words(body: &Value) -> u64 {
    let system_words = body.get("system").map_or(0, |s| match s {
        Value::String(s) => words(s),
        other => text_words(other),
    });
    system_words
        + body
            .get("messages")
            .and_then(Value::as_array)
            .map_or(0, |m| m.iter().map(|m| text_words(&m["content"])).sum())
}

/// Checks the headers Anthropic's API requires; the refusal when one is missing.
fn check_anthropic_headers(state: &State, parts: &Parts) -> Option<Response<RespBody>> {
    if parts.headers.get("x-api-key").is_none() {
        return Some(error(state, StatusCode::UNAUTHORIZED, "authentication_error", "x-api-key header is required"));
    }
    if parts.headers.get("anthropic-version").is_none() {
        return Some(invalid(state, "anthropic-version: header is required"));
    }
    None
}

/// `POST /v1/messages/count_tokens`: a Messages request without `max_tokens`, answered with its
/// input token count in Anthropic's exact format.
fn count_tokens(state: &State, parts: &Parts, raw: &[u8]) -> Response<RespBody> {
    if parts.method != Method::POST {
        return error(state, StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", "use POST");
    }
    if let Some(refusal) = check_anthropic_headers(state, parts) {
        return refusal;
    }
    let body: Value = match serde_json::from_slice(raw) {
        Ok(v @ Value::Object(_)) => v,
        _ => return invalid(state, "request body is not a JSON object"),
    };
    for field in ["max_tokens", "stream"] {
        if body.get(field).is_some() {
            return invalid(state, &format!("{field}: Extra inputs are not permitted"));
        }
    }
    if let Err(message) = validate(Platform::Anthropic, &body, false) {
        return invalid(state, &message);
    }
    let mut r = Response::new(full(json!({"input_tokens": input_words(&body)}).to_string()));
    r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    insert_name(r.headers_mut(), &state.args.name);
    r
}

/// Validates the request as the real API would; returns the message for a 400.
fn validate(platform: Platform, body: &Value, needs_max_tokens: bool) -> Result<(), String> {
    if needs_max_tokens && body.get("max_tokens").and_then(Value::as_u64).is_none() {
        return Err("max_tokens: Field required".into());
    }
    match platform {
        Platform::Anthropic if body.get("model").and_then(Value::as_str).is_none() => {
            return Err("model: Field required".into())
        }
        Platform::Vertex if body.get("model").is_some() => return Err("model: Extra inputs are not permitted".into()),
        Platform::Vertex if body.get("anthropic_version").and_then(Value::as_str) != Some("vertex-2023-10-16") => {
            return Err("anthropic_version: must be vertex-2023-10-16".into())
        }
        _ => {}
    }
    let messages = body.get("messages").and_then(Value::as_array).ok_or("messages: Field required")?;
    let mut last_role = "";
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if role != "user" && role != "assistant" {
            return Err(format!("messages.{i}.role: Input should be 'user' or 'assistant'"));
        }
        if role == last_role {
            return Err(format!("messages.{i}: roles must alternate between \"user\" and \"assistant\""));
        }
        last_role = role;
        if let Some(blocks) = m.get("content").and_then(Value::as_array) {
            for (j, b) in blocks.iter().enumerate() {
                let t = b.get("type").and_then(Value::as_str).unwrap_or("");
                if !BLOCK_TYPES.contains(&t) {
                    return Err(format!("messages.{i}.content.{j}.type: unknown block type {t:?}"));
                }
                if t == "tool_use" && !b.get("input").is_some_and(Value::is_object) {
                    return Err(format!("messages.{i}.content.{j}.input: Input should be an object"));
                }
            }
        } else if !m.get("content").is_some_and(Value::is_string) {
            return Err(format!("messages.{i}.content: Field required"));
        }
    }
    if let Some(t) = body.get("temperature").and_then(Value::as_f64) {
        if !(0.0..=1.0).contains(&t) {
            return Err("temperature: Input should be less than or equal to 1".into());
        }
    }
    Ok(())
}

/// The tool to call, if the request asks for one.
fn tool_to_call(body: &Value) -> Option<String> {
    let tools = body.get("tools")?.as_array()?;
    let first = tools.first()?.get("name")?.as_str()?.to_string();
    let choice = body.pointer("/tool_choice/type").and_then(Value::as_str);
    let last_user_text = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .map(|m| match &m["content"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default();
    match choice {
        Some("none") => None,
        Some("tool") => body.pointer("/tool_choice/name").and_then(Value::as_str).map(String::from),
        Some("any") => Some(first),
        _ if last_user_text.contains("use the tool") => Some(first),
        _ => None,
    }
}

fn serve(
    state: &State,
    parts: &Parts,
    platform: Platform,
    stream_path: bool,
    path_model: Option<String>,
    raw: &[u8],
) -> Response<RespBody> {
    if parts.method != Method::POST {
        return error(state, StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", "use POST");
    }
    match platform {
        Platform::Anthropic => {
            if let Some(refusal) = check_anthropic_headers(state, parts) {
                return refusal;
            }
        }
        Platform::Vertex => {
            let bearer = parts.headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
            if !bearer.starts_with("Bearer ") {
                return error(state, StatusCode::UNAUTHORIZED, "authentication_error", "missing Bearer token");
            }
        }
    }
    let body: Value = match serde_json::from_slice(raw) {
        Ok(v @ Value::Object(_)) => v,
        _ => return invalid(state, "request body is not a JSON object"),
    };
    if let Err(message) = validate(platform, &body, true) {
        return invalid(state, &message);
    }
    let model = path_model.or_else(|| body.get("model").and_then(Value::as_str).map(String::from)).unwrap_or_default();
    if let Some(code) = model.strip_prefix("mock-error-").and_then(|c| c.parse::<u16>().ok()) {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let kind = match code {
            401 => "authentication_error",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            400..=499 => "invalid_request_error",
            _ => "api_error",
        };
        return error(state, status, kind, &format!("mock error {code} for model {model}"));
    }
    let stream = match platform {
        Platform::Anthropic => body.get("stream").and_then(Value::as_bool).unwrap_or(false),
        Platform::Vertex => stream_path,
    };
    let input = input_words(&body);
    let cached = input / 4;
    let max_tokens = body.get("max_tokens").and_then(Value::as_u64).unwrap_or(0);
    let wanted = header_u64(&parts.headers, "x-mock-chunks").unwrap_or(state.args.chunks).min(MAX_TOKENS);
    let tool = tool_to_call(&body);
    let (n, stop) = if wanted > max_tokens {
        (max_tokens, "max_tokens")
    } else if tool.is_some() {
        (wanted, "tool_use")
    } else {
        (wanted, "end_turn")
    };
    let reply: Vec<String> = reply_words(&state.args.name, n);
    let id = next_id(state, "msg");
    let usage = json!({"input_tokens": input - cached, "output_tokens": n, "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0});
    if !stream {
        let mut content = vec![json!({"type": "text", "text": reply.join(" ")})];
        if let (Some(name), "tool_use") = (&tool, stop) {
            content.push(json!({"type": "tool_use", "id": "toolu_mock_1", "name": name, "input": {"q": "mock"}}));
        }
        let message = json!({"id": id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop, "stop_sequence": null, "usage": usage});
        let mut r = Response::new(full(message.to_string()));
        r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
        insert_name(r.headers_mut(), &state.args.name);
        return r;
    }
    let mut events: Vec<(&'static str, Value)> = Vec::new();
    let start_usage = json!({"input_tokens": input - cached, "output_tokens": 1, "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0});
    events.push((
        "message_start",
        json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
        "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": start_usage}}),
    ));
    events.push((
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ));
    events.push(("ping", json!({"type": "ping"})));
    for (i, word) in reply.iter().enumerate() {
        let text = if i == 0 { word.clone() } else { format!(" {word}") };
        events.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        ));
    }
    events.push(("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
    if let (Some(name), "tool_use") = (&tool, stop) {
        events.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_mock_1", "name": name, "input": {}}}),
        ));
        for piece in ["{\"q\":", " \"mock\"}"] {
            events.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": piece}}),
            ));
        }
        events.push(("content_block_stop", json!({"type": "content_block_stop", "index": 1})));
    }
    events.push((
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
        "usage": {"output_tokens": n}}),
    ));
    events.push(("message_stop", json!({"type": "message_stop"})));
    sse(state, events, Duration::from_millis(state.args.chunk_gap_ms))
}

fn sse(state: &State, events: Vec<(&'static str, Value)>, gap: Duration) -> Response<RespBody> {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        for (i, (name, data)) in events.into_iter().enumerate() {
            if i > 0 && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            if tx.send(Ok(Bytes::from(format!("event: {name}\ndata: {data}\n\n")))).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(http_body_util::BodyExt::boxed(ChannelBody { rx }));
    let h = r.headers_mut();
    h.insert("content-type", hyper::header::HeaderValue::from_static("text/event-stream; charset=utf-8"));
    h.insert("cache-control", hyper::header::HeaderValue::from_static("no-cache"));
    insert_name(h, &state.args.name);
    r
}
