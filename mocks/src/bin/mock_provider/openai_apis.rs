//! The OpenAI APIs beyond chat, in OpenAI's wire format (any path prefix; the suffix decides):
//!
//! * `POST …/responses` — a Responses API `response` object, or with `"stream": true` its SSE
//!   events (`response.created`, `response.in_progress`, `response.output_item.added`,
//!   `response.content_part.added`, one `response.output_text.delta` per reply word,
//!   `response.output_text.done`, `response.content_part.done`, `response.output_item.done`,
//!   `response.completed` carrying `usage`), each as `event: TYPE` + `data: JSON`, no `[DONE]`.
//!   Usage: `input_tokens` = words of `input` (a string, or the `text` of input items), at least 1;
//!   `output_tokens` = reply words; `cached_tokens` = input / 2; `reasoning_tokens` = output / 2.
//! * `GET …/responses/{id}` (a completed response with that id), `DELETE` (`deleted: true`),
//!   `GET …/responses/{id}/input_items` (a list), `POST …/responses/{id}/cancel` (`cancelled`).
//! * `POST …/images/generations` (JSON) and `…/images/edits` (multipart with an `image` file):
//!   `data[0].b64_json` and gpt-image-1's `usage` (`input_tokens` = prompt words, `output_tokens` = 272).
//! * `POST …/audio/speech` — `audio/mpeg` bytes: byte k is `(7k + 3) mod 256`, 65536 + input words long.
//! * `POST …/audio/transcriptions` and `…/audio/translations` — multipart with a `file` part and a
//!   `model` part (else 400): `{"text": "mock transcription of FILENAME (N bytes) by MODEL", "usage": …}`.

use std::time::Duration;

use bytes::Bytes;
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{
    count_words, error_json, header_u64, insert_name, json_response, next_id, now_secs, reply_words, ChannelBody,
    RespBody, State, MAX_TOKENS,
};
use http_body_util::BodyExt;

/// Output tokens of a mock image (gpt-image-1 bills a 1024x1024 low-quality image at 272).
const IMAGE_OUTPUT_TOKENS: u64 = 272;

pub fn route(state: &State, parts: &Parts, path: &str, body: &[u8]) -> Option<Response<RespBody>> {
    let method = &parts.method;
    if path.ends_with("/responses") {
        return Some(post_json(state, method, body, |json| responses_create(state, parts, json)));
    }
    if let Some((_, below)) = path.rsplit_once("/responses/") {
        let mut segments = below.split('/');
        let id = segments.next().unwrap_or_default().to_string();
        return Some(match (method, segments.next(), segments.next()) {
            (&Method::GET, None, _) => {
                json_response(state, StatusCode::OK, &response_object(state, &id, "completed", "mock", "", 1))
            }
            (&Method::DELETE, None, _) => {
                json_response(state, StatusCode::OK, &json!({"id": id, "object": "response", "deleted": true}))
            }
            (&Method::GET, Some("input_items"), None) => {
                let item = json!({"id": format!("msg_in_{id}"), "type": "message", "role": "user", "status": "completed",
                    "content": [{"type": "input_text", "text": "hello"}]});
                let list = json!({"object": "list", "data": [item], "first_id": format!("msg_in_{id}"),
                    "last_id": format!("msg_in_{id}"), "has_more": false});
                json_response(state, StatusCode::OK, &list)
            }
            (&Method::POST, Some("cancel"), None) => {
                json_response(state, StatusCode::OK, &response_object(state, &id, "cancelled", "mock", "", 1))
            }
            _ => not_found(state, path),
        });
    }
    if path.ends_with("/images/generations") {
        return Some(post_json(state, method, body, |json| image(state, json, "")));
    }
    if path.ends_with("/images/edits") {
        return Some(match form(parts, body) {
            Ok(form) if form.file("image").is_some() || form.file("image[]").is_some() => {
                let model = form.text("model").unwrap_or_default();
                let prompt = form.text("prompt").unwrap_or_default();
                image(state, &json!({"model": model, "prompt": prompt}), "edit")
            }
            Ok(_) => invalid(state, "mock: an image edit needs an `image` file part"),
            Err(e) => invalid(state, &e),
        });
    }
    if path.ends_with("/audio/speech") {
        return Some(post_json(state, method, body, |json| speech(state, json)));
    }
    if path.ends_with("/audio/transcriptions") || path.ends_with("/audio/translations") {
        return Some(match form(parts, body) {
            Ok(form) => transcription(state, &form),
            Err(e) => invalid(state, &e),
        });
    }
    None
}

fn invalid(state: &State, message: &str) -> Response<RespBody> {
    json_response(state, StatusCode::BAD_REQUEST, &error_json(message, "invalid_request_error", None))
}

fn not_found(state: &State, path: &str) -> Response<RespBody> {
    let message = format!("mock: unknown path {path}");
    json_response(state, StatusCode::NOT_FOUND, &error_json(&message, "invalid_request_error", Some("unknown_url")))
}

fn post_json(
    state: &State,
    method: &Method,
    body: &[u8],
    serve: impl FnOnce(&Value) -> Response<RespBody>,
) -> Response<RespBody> {
    if method != Method::POST {
        let error = error_json("mock: use POST", "invalid_request_error", None);
        return json_response(state, StatusCode::METHOD_NOT_ALLOWED, &error);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(json @ Value::Object(_)) => serve(&json),
        _ => invalid(state, "mock: body is not a JSON object"),
    }
}

/// Words of a Responses `input`: a string, or items whose content is a string or `input_text` parts.
fn input_words(input: &Value) -> u64 {
    match input {
        Value::String(s) => count_words(s),
        Value::Array(items) => items
            .iter()
            .map(|item| match item.get("content") {
                Some(Value::String(s)) => count_words(s),
                Some(Value::Array(parts)) => {
                    parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).map(count_words).sum()
                }
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

fn responses_usage(input: u64, output: u64) -> Value {
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": input / 2},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": output / 2},
        "total_tokens": input + output
    })
}

fn message_item(id: &str, status: &str, text: Option<&str>) -> Value {
    let content = match text {
        Some(t) => json!([{"type": "output_text", "text": t, "annotations": [], "logprobs": []}]),
        None => json!([]),
    };
    json!({"id": format!("msg_{id}"), "type": "message", "status": status, "role": "assistant", "content": content})
}

/// A `response` object; `text` empty and `output_words` 0 for one still in progress.
fn response_object(state: &State, id: &str, status: &str, model: &str, text: &str, input: u64) -> Value {
    let done = status != "in_progress";
    let output_words = count_words(text);
    json!({
        "id": id, "object": "response", "created_at": now_secs(), "status": status,
        "background": false, "error": null, "incomplete_details": null, "instructions": null,
        "max_output_tokens": null, "model": model,
        "output": if done && !text.is_empty() { json!([message_item(id, "completed", Some(text))]) } else { json!([]) },
        "parallel_tool_calls": true, "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null}, "service_tier": "default", "store": true,
        "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
        "top_p": 1.0, "truncation": "disabled",
        "usage": if done { responses_usage(input, output_words) } else { Value::Null },
        "user": null, "metadata": {}, "system_fingerprint": state.args.name
    })
}

fn responses_create(state: &State, parts: &Parts, body: &Value) -> Response<RespBody> {
    let model = body.get("model").and_then(Value::as_str).unwrap_or_default().to_string();
    let input = body.get("input").map(input_words).unwrap_or(0).max(1);
    let wanted = header_u64(&parts.headers, "x-mock-chunks").unwrap_or(state.args.chunks).min(MAX_TOKENS);
    let n = body.get("max_output_tokens").and_then(Value::as_u64).map_or(wanted, |cap| cap.min(wanted));
    let words = reply_words(&state.args.name, n);
    let text = words.join(" ");
    let id = format!("resp_{}", next_id(state, "r").replace('-', "_"));
    if !body.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        return json_response(state, StatusCode::OK, &response_object(state, &id, "completed", &model, &text, input));
    }
    let in_progress = response_object(state, &id, "in_progress", &model, "", input);
    let item_id = format!("msg_{id}");
    let mut events = vec![
        ("response.created", json!({"response": in_progress})),
        ("response.in_progress", json!({"response": in_progress})),
        ("response.output_item.added", json!({"output_index": 0, "item": message_item(&id, "in_progress", None)})),
        (
            "response.content_part.added",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []}}),
        ),
    ];
    let last = words.len().saturating_sub(1);
    for (i, w) in words.iter().enumerate() {
        let delta = if i < last { format!("{w} ") } else { w.clone() };
        events.push((
            "response.output_text.delta",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "delta": delta, "logprobs": []}),
        ));
    }
    events.push((
        "response.output_text.done",
        json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
    ));
    events.push((
        "response.content_part.done",
        json!({"item_id": item_id, "output_index": 0, "content_index": 0,
            "part": {"type": "output_text", "text": text, "annotations": []}}),
    ));
    events.push((
        "response.output_item.done",
        json!({"output_index": 0, "item": message_item(&id, "completed", Some(&text))}),
    ));
    events.push((
        "response.completed",
        json!({"response": response_object(state, &id, "completed", &model, &text, input)}),
    ));
    let gap =
        Duration::from_millis(header_u64(&parts.headers, "x-mock-chunk-gap-ms").unwrap_or(state.args.chunk_gap_ms));
    typed_sse(state, events, gap)
}

/// SSE with `event: TYPE` lines and `type`/`sequence_number` in each data object, as OpenAI sends.
fn typed_sse(state: &State, events: Vec<(&'static str, Value)>, gap: Duration) -> Response<RespBody> {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        for (i, (kind, mut data)) in events.into_iter().enumerate() {
            if i > 0 && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            if let Value::Object(map) = &mut data {
                map.insert("type".into(), Value::from(kind));
                map.insert("sequence_number".into(), Value::from(i));
            }
            if tx.send(Ok(Bytes::from(format!("event: {kind}\ndata: {data}\n\n")))).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(ChannelBody { rx }.boxed());
    let h = r.headers_mut();
    h.insert("content-type", hyper::header::HeaderValue::from_static("text/event-stream; charset=utf-8"));
    insert_name(h, &state.args.name);
    r
}

fn image(state: &State, body: &Value, kind: &str) -> Response<RespBody> {
    let prompt = body.get("prompt").and_then(Value::as_str).unwrap_or_default();
    let input = count_words(prompt).max(1);
    // A 1x1 PNG.
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
    let v = json!({
        "created": now_secs(),
        "data": [{"b64_json": png, "revised_prompt": format!("mock {kind} image: {prompt}").replace("  ", " ")}],
        "usage": {
            "input_tokens": input,
            "input_tokens_details": {"text_tokens": input, "image_tokens": 0},
            "output_tokens": IMAGE_OUTPUT_TOKENS,
            "total_tokens": input + IMAGE_OUTPUT_TOKENS
        }
    });
    json_response(state, StatusCode::OK, &v)
}

/// Deterministic audio: byte k is `(7k + 3) mod 256` (every byte value, CR/LF and NUL included).
fn speech(state: &State, body: &Value) -> Response<RespBody> {
    let input = body.get("input").and_then(Value::as_str).unwrap_or_default();
    let len = 65_536 + count_words(input) as usize;
    let audio: Vec<u8> = (0..len).map(|k| ((7 * k + 3) % 256) as u8).collect();
    let mut r = Response::new(super::full(audio));
    let h = r.headers_mut();
    h.insert("content-type", hyper::header::HeaderValue::from_static("audio/mpeg"));
    insert_name(h, &state.args.name);
    r
}

fn transcription(state: &State, form: &Form) -> Response<RespBody> {
    let Some((filename, bytes)) = form.file("file") else {
        return invalid(state, "mock: a transcription needs a `file` part with a filename");
    };
    let Some(model) = form.text("model") else { return invalid(state, "mock: a transcription needs a `model` part") };
    let text = format!("mock transcription of {filename} ({} bytes) by {model}", bytes.len());
    let output = count_words(&text);
    let v = json!({
        "text": text,
        "usage": {"type": "tokens", "input_tokens": 10, "input_token_details": {"text_tokens": 0, "audio_tokens": 10},
            "output_tokens": output, "total_tokens": 10 + output}
    });
    json_response(state, StatusCode::OK, &v)
}

/// A `multipart/form-data` body, parsed simply (the mock checks what the gateway forwarded).
struct Form {
    /// (name, filename, content)
    parts: Vec<(String, Option<String>, Vec<u8>)>,
}

impl Form {
    fn text(&self, name: &str) -> Option<String> {
        self.parts.iter().find(|(n, f, _)| n == name && f.is_none()).map(|(_, _, c)| String::from_utf8_lossy(c).into())
    }

    fn file(&self, name: &str) -> Option<(String, &[u8])> {
        self.parts
            .iter()
            .find(|(n, f, _)| n == name && f.is_some())
            .map(|(_, f, c)| (f.clone().unwrap_or_default(), c.as_slice()))
    }
}

fn form(parts: &Parts, body: &[u8]) -> Result<Form, String> {
    let content_type = parts.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !content_type.to_ascii_lowercase().starts_with("multipart/form-data") {
        return Err(format!("mock: expected multipart/form-data, got {content_type:?}"));
    }
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_string())
        .ok_or("mock: no boundary")?;
    let delimiter = format!("--{boundary}");
    let mut form = Form { parts: Vec::new() };
    let mut rest = body;
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let start = find(rest, delimiter.as_bytes()).ok_or("mock: no boundary in the body")?;
    rest = &rest[start + delimiter.len()..];
    loop {
        if rest.starts_with(b"--") {
            return Ok(form);
        }
        rest = rest.strip_prefix(b"\r\n").ok_or("mock: boundary line without CRLF")?;
        let head_end = find(rest, b"\r\n\r\n").ok_or("mock: part headers do not end")?;
        let head = String::from_utf8_lossy(&rest[..head_end]).to_string();
        rest = &rest[head_end + 4..];
        let end_marker = format!("\r\n{delimiter}");
        let end = find(rest, end_marker.as_bytes()).ok_or("mock: part does not end")?;
        let content = rest[..end].to_vec();
        rest = &rest[end + end_marker.len()..];
        let disposition = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))
            .ok_or("mock: part without content-disposition")?;
        let param = |key: &str| {
            disposition
                .split(';')
                .find_map(|p| p.trim().strip_prefix(&format!("{key}=")))
                .map(|v| v.trim_matches('"').to_string())
        };
        let name = param("name").ok_or("mock: part without a name")?;
        form.parts.push((name, param("filename"), content));
    }
}
