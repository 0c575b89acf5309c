//! Gemini on Vertex AI, as `mock-provider` speaks it: under
//! `/v1/projects/{project}/locations/{region}/publishers/google/models/{model}`,
//!
//! * `:generateContent` — one `GenerateContentResponse` (JSON);
//! * `:streamGenerateContent?alt=sse` — `data: {GenerateContentResponse}\r\n\r\n` events, one per reply
//!   word, each with `usageMetadata: {"trafficType": "ON_DEMAND"}`, the last one with the empty-text
//!   part, `finishReason` and the full `usageMetadata` (no `[DONE]`: Gemini streams simply end); without
//!   `alt=sse` the same responses as one JSON array;
//! * `:predict` — text embeddings (`instances[].content` → `predictions[].embeddings`).
//!
//! Requests need `authorization: Bearer <token>` (else 401 `UNAUTHENTICATED`) and are checked the way
//! Vertex checks them: unknown fields at the top level, in `generationConfig` and in parts are a 400
//! `INVALID_ARGUMENT` ("Invalid JSON payload received. Unknown name ..."), as is empty `contents` or a
//! content with no parts. Errors use Google's envelope `{"error":{"code","message","status"}}`.
//!
//! Deterministic replies, as for the OpenAI endpoints: the words `Hello from NAME: this is a mock
//! reply.` (`--chunks` / `x-mock-chunks` words, capped by `maxOutputTokens` → `MAX_TOKENS`);
//! `promptTokenCount` = words of every text part (system instruction included), at least 1;
//! `candidatesTokenCount` = reply words; `cachedContentTokenCount` = prompt / 2; with
//! `thinkingConfig.includeThoughts` a thought part `Mock thoughts.` comes first and
//! `thoughtsTokenCount` = reply words / 2 (counted in `totalTokenCount`).
//!
//! Function calling: when tools are declared, the mode (`toolConfig.functionCallingConfig.mode`) is not
//! `NONE`, and the last turn holds no `functionResponse`, the model calls the first allowed function
//! (mode `ANY`) or the first declared one (mode `AUTO`, default) — twice in parallel when the last user
//! text contains `both` — with arguments made from the schema (`"mock-<name>"` for strings, 1 for
//! numbers, true for booleans). After a `functionResponse` it answers `The tool said: <response JSON>`.
//! Model `mock-error-NNN` answers status NNN with a Google error.

use std::time::Duration;

use bytes::Bytes;
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{
    fnv1a, full, header_u64, insert_name, next_id, now_secs, reply_words, ChannelBody, RespBody, State, MAX_DIMENSIONS,
    MAX_TOKENS,
};

const MODELS: &str = "/publishers/google/models/";

const TOP_LEVEL: &[&str] = &[
    "contents",
    "systemInstruction",
    "tools",
    "toolConfig",
    "generationConfig",
    "safetySettings",
    "labels",
    "cachedContent",
    "modelArmorConfig",
];
const GENERATION_CONFIG: &[&str] = &[
    "temperature",
    "topP",
    "topK",
    "candidateCount",
    "maxOutputTokens",
    "stopSequences",
    "responseLogprobs",
    "logprobs",
    "presencePenalty",
    "frequencyPenalty",
    "seed",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "routingConfig",
    "audioTimestamp",
    "responseModalities",
    "mediaResolution",
    "speechConfig",
    "thinkingConfig",
    "imageConfig",
];
const PART: &[&str] = &[
    "text",
    "thought",
    "thoughtSignature",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
    "videoMetadata",
];

/// Serves the request if its path is a Gemini model method; `None` leaves it to the OpenAI routes.
pub fn route(state: &State, parts: &Parts, path: &str, body: &[u8]) -> Option<Response<RespBody>> {
    let at = path.find(MODELS)?;
    let (prefix, rest) = path.split_at(at);
    let (model, method) = rest.get(MODELS.len()..)?.rsplit_once(':')?;
    if !(prefix.starts_with("/v1/projects/") && prefix.contains("/locations/")) {
        return None;
    }
    Some(serve(state, parts, model, method, body))
}

fn serve(state: &State, parts: &Parts, model: &str, method: &str, body: &[u8]) -> Response<RespBody> {
    if parts.method != Method::POST {
        return error(state, 405, "Method not allowed; use POST.");
    }
    let bearer =
        parts.headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if bearer.is_none_or(|token| token.trim().is_empty()) {
        return error(
            state,
            401,
            "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie \
             or other valid authentication credential.",
        );
    }
    if let Some(code) = model.strip_prefix("mock-error-").and_then(|c| c.parse::<u16>().ok()) {
        return error(state, code, &format!("mock error {code} for model {model}"));
    }
    let request: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return error(state, 400, "Invalid JSON payload received."),
    };
    let sse = parts.uri.query().is_some_and(|q| q.split('&').any(|kv| kv == "alt=sse"));
    match method {
        "generateContent" | "streamGenerateContent" => match check(&request) {
            Err(message) => error(state, 400, &message),
            Ok(()) => generate(state, &parts.headers, &request, model, method == "streamGenerateContent", sse),
        },
        "predict" => predict(state, &request),
        _ => error(state, 404, &format!("Method {method} not found for model {model}.")),
    }
}

fn status_name(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        405 => "METHOD_NOT_ALLOWED",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

/// Google's JSON formatting: compact, with `": "` after keys.
struct GoogleFormatter;

impl serde_json::ser::Formatter for GoogleFormatter {
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

fn google_json(v: &impl Serialize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoogleFormatter);
    if v.serialize(&mut ser).is_err() {
        return b"{}".to_vec();
    }
    out
}

fn respond(state: &State, status: u16, v: &Value) -> Response<RespBody> {
    let mut r = Response::new(full(google_json(v)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert("content-type", hyper::header::HeaderValue::from_static("application/json; charset=UTF-8"));
    insert_name(h, &state.args.name);
    r
}

fn error(state: &State, code: u16, message: &str) -> Response<RespBody> {
    respond(state, code, &json!({"error": {"code": code, "message": message, "status": status_name(code)}}))
}

fn unknown_fields(object: &Value, known: &[&str], at: &str) -> Result<(), String> {
    let Some(map) = object.as_object() else { return Err(format!("Invalid value at '{at}': expected an object.")) };
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(format!("Invalid JSON payload received. Unknown name \"{k}\" at '{at}': Cannot find field.")),
        None => Ok(()),
    }
}

/// The checks Vertex makes that a translator could get wrong.
fn check(request: &Value) -> Result<(), String> {
    unknown_fields(request, TOP_LEVEL, "")?;
    if let Some(config) = request.get("generationConfig") {
        unknown_fields(config, GENERATION_CONFIG, "generation_config")?;
    }
    let contents = request.get("contents").and_then(Value::as_array).filter(|c| !c.is_empty());
    let Some(contents) = contents else {
        return Err("Unable to submit request because it must include at least one parts field, which describes the \
                    prompt input."
            .into());
    };
    let system = request.get("systemInstruction").into_iter();
    for (i, content) in contents.iter().chain(system).enumerate() {
        let role = content.get("role").and_then(Value::as_str);
        if i < contents.len() && !matches!(role, Some("user" | "model")) {
            return Err(format!("Please use a valid role: user, model. (contents[{i}].role = {role:?})"));
        }
        let parts = content.get("parts").and_then(Value::as_array).filter(|p| !p.is_empty());
        let Some(parts) = parts else {
            return Err(format!("Unable to submit request because contents[{i}] has no parts."));
        };
        for (j, part) in parts.iter().enumerate() {
            unknown_fields(part, PART, &format!("contents[{i}].parts[{j}]"))?;
            if part.get("text").is_some_and(|t| t.as_str() == Some("")) {
                return Err("Unable to submit request because it has an empty text parameter. Add a value to the \
                            parameter and try again."
                    .into());
            }
        }
    }
    Ok(())
}

/// `2025-06-12T10:02:33.000000Z` for unix seconds (days to civil date, proleptic Gregorian).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.000000Z", rem / 3600, rem / 60 % 60, rem % 60)
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

fn prompt_words(request: &Value) -> u64 {
    let contents = request.get("contents").and_then(Value::as_array).into_iter().flatten();
    contents
        .chain(request.get("systemInstruction"))
        .flat_map(|c| c.get("parts").and_then(Value::as_array).into_iter().flatten())
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .map(words)
        .sum()
}

/// The function calls the model makes for this request, if any.
fn function_calls(request: &Value) -> Vec<Value> {
    let declarations: Vec<&Value> = request
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|t| t.get("functionDeclarations").and_then(Value::as_array).into_iter().flatten())
        .collect();
    let calling = request.pointer("/toolConfig/functionCallingConfig");
    let mode = calling.and_then(|c| c.get("mode")).and_then(Value::as_str).unwrap_or("AUTO");
    let last = request.get("contents").and_then(Value::as_array).and_then(|c| c.last());
    let last_parts: Vec<&Value> =
        last.and_then(|c| c.get("parts")).and_then(Value::as_array).into_iter().flatten().collect();
    if declarations.is_empty() || mode == "NONE" || last_parts.iter().any(|p| p.get("functionResponse").is_some()) {
        return Vec::new();
    }
    let allowed = calling.and_then(|c| c.get("allowedFunctionNames")).and_then(Value::as_array);
    let chosen = declarations.iter().find(|d| match (mode, allowed) {
        ("ANY", Some(names)) => names.iter().any(|n| n.as_str() == d.get("name").and_then(Value::as_str)),
        _ => true,
    });
    let Some(declaration) = chosen else { return Vec::new() };
    let name = declaration.get("name").and_then(Value::as_str).unwrap_or("");
    let schema = declaration.get("parametersJsonSchema").or_else(|| declaration.get("parameters"));
    let mut args = serde_json::Map::new();
    if let Some(props) = schema.and_then(|s| s.get("properties")).and_then(Value::as_object) {
        for (key, prop) in props {
            let kind = prop.get("type").and_then(Value::as_str).unwrap_or("string").to_ascii_lowercase();
            let value = match kind.as_str() {
                "number" | "integer" => json!(1),
                "boolean" => json!(true),
                "array" => json!([]),
                "object" => json!({}),
                _ => json!(format!("mock-{key}")),
            };
            args.insert(key.clone(), value);
        }
    }
    let text = last_parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" ");
    let times = if text.contains("both") { 2 } else { 1 };
    (0..times).map(|_| json!({"functionCall": {"name": name, "args": args}})).collect()
}

fn generate(
    state: &State,
    headers: &hyper::HeaderMap,
    request: &Value,
    model: &str,
    stream: bool,
    sse: bool,
) -> Response<RespBody> {
    let prompt = prompt_words(request).max(1);
    let wanted = header_u64(headers, "x-mock-chunks").unwrap_or(state.args.chunks).min(MAX_TOKENS);
    let cap = request.pointer("/generationConfig/maxOutputTokens").and_then(Value::as_u64);
    let (n, finish) = match cap {
        Some(c) if c < wanted => (c, "MAX_TOKENS"),
        _ => (wanted, "STOP"),
    };
    let thoughts =
        request.pointer("/generationConfig/thinkingConfig/includeThoughts").and_then(Value::as_bool) == Some(true);
    let calls = function_calls(request);
    let tool_result = request
        .get("contents")
        .and_then(Value::as_array)
        .and_then(|c| c.last())
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .and_then(|parts| parts.iter().find_map(|p| p.pointer("/functionResponse/response")))
        .map(|r| format!("The tool said: {r}"));
    // What the model says, as the pieces a stream sends.
    let mut pieces: Vec<Value> = Vec::new();
    if thoughts {
        pieces.push(json!({"text": "Mock thoughts.", "thought": true}));
    }
    let (completion, reply_text) = if !calls.is_empty() {
        pieces.push(json!({"__calls": calls}));
        (8, String::new())
    } else if let Some(text) = tool_result {
        let n = words(&text);
        pieces.push(json!({"text": text.clone()}));
        (n, text)
    } else {
        let w = reply_words(&state.args.name, n);
        let last = w.len().saturating_sub(1);
        for (i, word) in w.iter().enumerate() {
            pieces.push(json!({"text": if i < last { format!("{word} ") } else { word.clone() }}));
        }
        (n, w.join(" "))
    };
    let thought_tokens = if thoughts { completion / 2 } else { 0 };
    let usage = json!({
        "promptTokenCount": prompt,
        "candidatesTokenCount": completion,
        "totalTokenCount": prompt + completion + thought_tokens,
        "cachedContentTokenCount": prompt / 2,
        "trafficType": "ON_DEMAND",
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    });
    let mut usage = usage;
    if thought_tokens > 0 {
        usage["thoughtsTokenCount"] = json!(thought_tokens);
    }
    let id = next_id(state, "resp").replace('-', "");
    let created = now_secs();
    let create_time = rfc3339(created);
    let meta = |mut v: Value| {
        v["modelVersion"] = json!(model);
        v["createTime"] = json!(create_time);
        v["responseId"] = json!(id);
        v
    };
    let parts_of = |piece: &Value| -> Vec<Value> {
        match piece.get("__calls").and_then(Value::as_array) {
            Some(calls) => calls.clone(),
            None => vec![piece.clone()],
        }
    };
    if !stream {
        let mut parts: Vec<Value> = Vec::new();
        for piece in &pieces {
            if piece.get("thought").is_some() || piece.get("__calls").is_some() {
                parts.extend(parts_of(piece));
            }
        }
        if !reply_text.is_empty() {
            parts.push(json!({"text": reply_text}));
        }
        let candidate = json!({"content": {"role": "model", "parts": parts}, "finishReason": finish,
            "avgLogprobs": -0.25});
        return respond(state, 200, &meta(json!({"candidates": [candidate], "usageMetadata": usage})));
    }
    let mut events: Vec<Value> = pieces
        .iter()
        .map(|piece| {
            meta(json!({"candidates": [{"content": {"role": "model", "parts": parts_of(piece)}}],
                "usageMetadata": {"trafficType": "ON_DEMAND"}}))
        })
        .collect();
    events.push(meta(json!({
        "candidates": [{"content": {"role": "model", "parts": [{"text": ""}]}, "finishReason": finish}],
        "usageMetadata": usage,
    })));
    if !sse {
        return respond(state, 200, &Value::Array(events));
    }
    let gap = Duration::from_millis(header_u64(headers, "x-mock-chunk-gap-ms").unwrap_or(state.args.chunk_gap_ms));
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        for (i, event) in events.iter().enumerate() {
            if i > 0 && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            let mut frame = b"data: ".to_vec();
            frame.extend_from_slice(&google_json(event));
            frame.extend_from_slice(b"\r\n\r\n");
            if tx.send(Ok(Bytes::from(frame))).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(http_body_util::BodyExt::boxed(ChannelBody { rx }));
    let h = r.headers_mut();
    h.insert("content-type", hyper::header::HeaderValue::from_static("text/event-stream"));
    h.insert("cache-control", hyper::header::HeaderValue::from_static("no-cache"));
    insert_name(h, &state.args.name);
    r
}

fn predict(state: &State, request: &Value) -> Response<RespBody> {
    let instances = request.get("instances").and_then(Value::as_array).filter(|i| !i.is_empty());
    let Some(instances) = instances else { return error(state, 400, "instances must be a non-empty list.") };
    let dims = request
        .pointer("/parameters/outputDimensionality")
        .and_then(Value::as_u64)
        .unwrap_or(8)
        .clamp(1, MAX_DIMENSIONS);
    let mut predictions = Vec::with_capacity(instances.len());
    let mut characters = 0;
    for instance in instances {
        if let Some(k) = instance
            .as_object()
            .and_then(|o| o.keys().find(|k| !["content", "task_type", "title"].contains(&k.as_str())))
        {
            return error(state, 400, &format!("Invalid instance: unknown field \"{k}\"."));
        }
        let Some(content) = instance.get("content").and_then(Value::as_str) else {
            return error(state, 400, "Each instance needs a string `content`.");
        };
        // Vertex takes a title only for documents.
        if instance.get("title").is_some()
            && instance.get("task_type").and_then(Value::as_str) != Some("RETRIEVAL_DOCUMENT")
        {
            return error(state, 400, "Title is only valid with task_type RETRIEVAL_DOCUMENT.");
        }
        characters += content.chars().filter(|c| !c.is_whitespace()).count();
        let values: Vec<f64> = (0..dims)
            .map(|j| {
                let h = fnv1a(content.as_bytes(), j);
                f64::from((h % 20_001) as u32) / 10_000.0 - 1.0
            })
            .collect();
        predictions
            .push(json!({"embeddings": {"statistics": {"truncated": false, "token_count": words(content).max(1)},
            "values": values}}));
    }
    respond(state, 200, &json!({"predictions": predictions, "metadata": {"billableCharacterCount": characters}}))
}
