//! Amazon Bedrock Runtime, as `mock-provider` speaks it: under `/model/{modelId}` (the id
//! percent-encoded, as the AWS SDKs send it),
//!
//! * `/converse` — a Converse response (JSON);
//! * `/converse-stream` — the same reply as Converse stream events in real AWS eventstream binary
//!   frames (`content-type: application/vnd.amazon.eventstream`, prelude and message CRC32s, headers
//!   `:event-type`, `:content-type`, `:message-type`), in Bedrock's order: `messageStart`,
//!   `contentBlockDelta`… / `contentBlockStop` per block (`contentBlockStart` for tool use),
//!   `messageStop`, `metadata`; payloads carry Bedrock's `p` padding member;
//! * `/invoke` — an Anthropic Messages body (`anthropic_version: bedrock-2023-05-31`) → an Anthropic
//!   message (JSON);
//! * `/invoke-with-response-stream` — the Anthropic stream events, each in a `chunk` event frame with
//!   payload `{"bytes":"<base64 of the event JSON>"}`, the last (`message_stop`) with
//!   `amazon-bedrock-invocationMetrics`.
//!
//! Every request must be SigV4-signed for service `bedrock`: `authorization: AWS4-HMAC-SHA256
//! Credential=<key>/<yyyymmdd>/<region>/bedrock/aws4_request, SignedHeaders=…, Signature=<64 hex>`, with
//! `x-amz-date` matching the scope's date, within 15 minutes of now, and `host` and `x-amz-date` among
//! the signed headers; else 403 as AWS answers. With `--aws-secret-access-key`, the mock recomputes the
//! signature independently (canonical request with the path URI-encoded a second time, as every AWS
//! SDK but S3's does) and refuses a mismatch with AWS's `InvalidSignatureException` message.
//!
//! Bodies are checked the way Bedrock checks them: unknown top-level Converse fields, an empty or
//! non-alternating conversation, a first turn that is not the user's, empty content, tool blocks
//! without `toolConfig` → 400 `ValidationException`; Anthropic bodies without `anthropic_version:
//! bedrock-2023-05-31` or `max_tokens`, or with `model`/`stream` → 400 (`Malformed input request`).
//! Errors are `{"message": …}` with `x-amzn-errortype`.
//!
//! Deterministic replies, as for the OpenAI endpoints: the words `Hello from NAME: this is a mock
//! reply.` (`--chunks` / `x-mock-chunks` words, capped by `maxTokens` / `max_tokens` → `max_tokens`);
//! prompt tokens P = words of every text (system included), at least 1, reported as
//! `cacheReadInputTokens` = P / 2 and `inputTokens` = P − P / 2 (so OpenAI's `prompt_tokens` is P);
//! output tokens = reply words. With extended thinking (`thinking.type: enabled`, in
//! `additionalModelRequestFields` for Converse) a reasoning block `Mock thoughts.` comes first.
//! Tool use: with tools and no tool result in the last turn, the model says `Calling NAME.` and calls
//! the named tool (`toolChoice.tool` / `tool_choice.name`) or the first one, twice when the last user
//! text contains `both`, with arguments made from the schema (`"mock-<prop>"` for strings, 1 for numbers,
//! true for booleans); after a tool result it answers `The tool said: <result text>`.
//! Models `mock-error-NNN` answer status NNN; `mock-stream-exception` streams two words then a
//! `throttlingException` frame.

use std::time::Duration;

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use hyper::http::request::Parts;
use hyper::{Method, Response};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{fnv1a, full, header_u64, insert_name, next_id, reply_words, ChannelBody, RespBody, State, MAX_TOKENS};

const CONVERSE_FIELDS: &[&str] = &[
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "guardrailConfig",
    "additionalModelRequestFields",
    "additionalModelResponseFieldPaths",
    "promptVariables",
    "requestMetadata",
    "performanceConfig",
];
const BEDROCK_ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";
const SIGNATURE_MISMATCH: &str = "The request signature we calculated does not match the signature you provided. \
     Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";

/// Serves the request if its path is a Bedrock model action; `None` leaves it to the other routes.
pub fn route(state: &State, parts: &Parts, path: &str, body: &[u8]) -> Option<Response<RespBody>> {
    let rest = path.strip_prefix("/model/")?;
    let (model, action) = rest.rsplit_once('/')?;
    if !["converse", "converse-stream", "invoke", "invoke-with-response-stream"].contains(&action)
        || model.contains('/')
    {
        return None;
    }
    Some(serve(state, parts, &percent_decode(model), action, body))
}

fn serve(state: &State, parts: &Parts, model: &str, action: &str, body: &[u8]) -> Response<RespBody> {
    if parts.method != Method::POST {
        return error(state, 405, "UnknownOperationException", "Method not allowed; use POST.");
    }
    if let Err((status, kind, message)) = verify_sigv4(state, parts, body) {
        return error(state, status, kind, &message);
    }
    if let Some(code) = model.strip_prefix("mock-error-").and_then(|c| c.parse::<u16>().ok()) {
        return error(state, code, error_type(code), &format!("mock error {code} for model {model}"));
    }
    let request: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return error(
                state,
                400,
                "ValidationException",
                "Malformed input request, please reformat your input and try again.",
            )
        }
    };
    let stream = action.ends_with("-stream");
    let reply = if action.starts_with("converse") {
        match check_converse(&request) {
            Ok(()) => plan_converse(state, &parts.headers, &request),
            Err(message) => return error(state, 400, "ValidationException", &message),
        }
    } else {
        match check_anthropic(&request) {
            Ok(()) => plan_anthropic(state, &parts.headers, &request),
            Err(message) => return error(state, 400, "ValidationException", &message),
        }
    };
    let gap =
        Duration::from_millis(header_u64(&parts.headers, "x-mock-chunk-gap-ms").unwrap_or(state.args.chunk_gap_ms));
    match (action, stream) {
        ("converse", _) => json_reply(state, &converse_json(&reply)),
        ("converse-stream", _) => frames_reply(state, converse_frames(&reply, model), gap),
        ("invoke", _) => json_reply(state, &anthropic_json(state, &reply, model)),
        _ => frames_reply(state, anthropic_frames(state, &reply, model), gap),
    }
}

// ---- errors and responses ----

fn error_type(code: u16) -> &'static str {
    match code {
        400 => "ValidationException",
        403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        424 => "ModelErrorException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        _ => "InternalServerException",
    }
}

fn error(state: &State, status: u16, kind: &str, message: &str) -> Response<RespBody> {
    let mut r = Response::new(full(json!({"message": message}).to_string()));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    if let Ok(v) =
        hyper::header::HeaderValue::from_str(&format!("{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"))
    {
        h.insert("x-amzn-errortype", v);
    }
    insert_name(h, &state.args.name);
    r
}

fn json_reply(state: &State, body: &Value) -> Response<RespBody> {
    let mut r = Response::new(full(body.to_string()));
    let h = r.headers_mut();
    h.insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    insert_name(h, &state.args.name);
    r
}

/// Sends eventstream frames, one per body chunk, `gap` apart.
fn frames_reply(state: &State, frames: Vec<Vec<u8>>, gap: Duration) -> Response<RespBody> {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        for (i, frame) in frames.into_iter().enumerate() {
            if i > 0 && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            if tx.send(Ok(Bytes::from(frame))).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(http_body_util::BodyExt::boxed(ChannelBody { rx }));
    let h = r.headers_mut();
    h.insert("content-type", hyper::header::HeaderValue::from_static("application/vnd.amazon.eventstream"));
    insert_name(h, &state.args.name);
    r
}

/// One eventstream message, encoded with AWS's own encoder.
fn frame(headers: &[(&'static str, &str)], payload: &[u8]) -> Vec<u8> {
    let headers = headers.iter().map(|(n, v)| Header::new(*n, HeaderValue::String(v.to_string().into()))).collect();
    let mut out = Vec::new();
    // Encoding strings and a small payload cannot fail.
    let _ = write_message_to(&Message::new_from_parts(headers, payload.to_vec()), &mut out);
    out
}

fn event_frame(event_type: &str, payload: &Value) -> Vec<u8> {
    frame(
        &[(":event-type", event_type), (":content-type", "application/json"), (":message-type", "event")],
        payload.to_string().as_bytes(),
    )
}

fn exception_frame(exception: &str, message: &str) -> Vec<u8> {
    frame(
        &[(":exception-type", exception), (":content-type", "application/json"), (":message-type", "exception")],
        json!({"message": message}).to_string().as_bytes(),
    )
}

/// Bedrock pads stream payloads with a `p` member of varying length.
fn padded(mut v: Value, n: usize) -> Value {
    const PAD: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    if let Value::Object(o) = &mut v {
        o.insert("p".into(), Value::from(&PAD[..(n * 7) % PAD.len()]));
    }
    v
}

// ---- SigV4 ----

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// RFC 3986 encoding of everything but unreserved characters (and `/` when `keep_slash`).
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn header_str<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks the SigV4 signature shape, and the signature itself when the mock knows the secret.
fn verify_sigv4(state: &State, parts: &Parts, body: &[u8]) -> Result<(), (u16, &'static str, String)> {
    let missing = || (403, "MissingAuthenticationTokenException", "Missing Authentication Token".to_string());
    let bad = |m: &str| (403, "IncompleteSignatureException", m.to_string());
    let auth = header_str(parts, "authorization").ok_or_else(missing)?;
    let fields = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(missing)?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for field in fields.split(", ") {
        match field.split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed_headers = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => return Err(bad(&format!("Authorization header has an unexpected field: {field}"))),
        }
    }
    let (Some(credential), Some(signed_headers), Some(signature)) = (credential, signed_headers, signature) else {
        return Err(bad("Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters."));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, service, terminator] = scope[..] else {
        return Err(bad("Credential should be scoped to a valid region."));
    };
    if key_id.is_empty() || terminator != "aws4_request" || region.is_empty() {
        return Err(bad("Credential should be scoped correctly."));
    }
    if service != "bedrock" {
        return Err(bad(&format!("Credential should be scoped to correct service: 'bedrock', not '{service}'.")));
    }
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        return Err(bad("Signature must be 64 lower-case hex digits."));
    }
    let names: Vec<&str> = signed_headers.split(';').collect();
    if !names.contains(&"host") || !names.contains(&"x-amz-date") || names.windows(2).any(|w| w[0] >= w[1]) {
        return Err(bad("SignedHeaders must list host and x-amz-date, sorted."));
    }
    let amz_date = header_str(parts, "x-amz-date").ok_or_else(|| bad("x-amz-date is missing."))?;
    if amz_date.len() != 16 || !amz_date.starts_with(date) {
        return Err(bad("x-amz-date does not match the credential scope's date."));
    }
    if let Some(skew) = skew_seconds(amz_date) {
        if skew > 15 * 60 {
            return Err((
                403,
                "InvalidSignatureException",
                format!("Signature expired: {amz_date} is too far from now."),
            ));
        }
    } else {
        return Err(bad("x-amz-date is not a date."));
    }
    let Some(secret) = state.args.aws_secret_access_key.as_deref() else { return Ok(()) };

    // The canonical request, built independently of the gateway's signer.
    let path = parts.uri.path();
    let canonical_uri = path.split('/').map(|s| uri_encode(s, false)).collect::<Vec<_>>().join("/");
    let mut query: Vec<(String, String)> = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (uri_encode(&percent_decode(k), false), uri_encode(&percent_decode(v), false))
        })
        .collect();
    query.sort();
    let canonical_query = query.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let mut canonical_headers = String::new();
    for name in &names {
        let values: Vec<String> = if *name == "host" {
            vec![header_str(parts, "host")
                .map(str::to_string)
                .or_else(|| parts.uri.authority().map(|a| a.to_string()))
                .unwrap_or_default()]
        } else {
            parts
                .headers
                .get_all(*name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).split_whitespace().collect::<Vec<_>>().join(" "))
                .collect()
        };
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let payload_hash =
        header_str(parts, "x-amz-content-sha256").map(str::to_string).unwrap_or_else(|| hex(&Sha256::digest(body)));
    let creq = format!(
        "{}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}",
        parts.method.as_str()
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex(&Sha256::digest(creq.as_bytes())));
    let key = [date, region, service, "aws4_request"]
        .iter()
        .fold(format!("AWS4{secret}").into_bytes(), |key, part| hmac(&key, part.as_bytes()));
    let expected = hex(&hmac(&key, to_sign.as_bytes()));
    if expected != signature {
        eprintln!("mock-provider: SigV4 mismatch; canonical request was:\n{creq}\n---");
        return Err((403, "InvalidSignatureException", SIGNATURE_MISMATCH.to_string()));
    }
    Ok(())
}

/// Seconds between an `x-amz-date` (`yyyymmddThhmmssZ`) and now.
fn skew_seconds(amz_date: &str) -> Option<u64> {
    let num = |r: std::ops::Range<usize>| amz_date.get(r).and_then(|s| s.parse::<i64>().ok());
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if amz_date.get(8..9) != Some("T") || amz_date.get(15..16) != Some("Z") {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let then = days * 86_400 + hh * 3600 + mm * 60 + ss;
    let now = super::now_secs() as i64;
    Some(now.abs_diff(then))
}

// ---- the reply, shared by all four actions ----

struct ToolCall {
    id: String,
    name: String,
    input: Value,
}

struct Reply {
    thinking: bool,
    text: String,
    tool_calls: Vec<ToolCall>,
    /// `end_turn`, `max_tokens` or `tool_use`.
    stop_reason: &'static str,
    prompt: u64,
    output: u64,
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

fn schema_arguments(schema: Option<&Value>) -> Value {
    let mut args = Map::new();
    if let Some(props) = schema.and_then(|s| s.get("properties")).and_then(Value::as_object) {
        for (name, prop) in props {
            let v = match prop.get("type").and_then(Value::as_str) {
                Some("number" | "integer") => json!(1),
                Some("boolean") => json!(true),
                _ => json!(format!("mock-{name}")),
            };
            args.insert(name.clone(), v);
        }
    }
    Value::Object(args)
}

/// Reply words and stop reason, given the cap on output tokens.
fn text_reply(state: &State, headers: &hyper::HeaderMap, cap: Option<u64>) -> (String, u64, &'static str) {
    let wanted = header_u64(headers, "x-mock-chunks").unwrap_or(state.args.chunks).min(MAX_TOKENS);
    let (n, stop) = match cap {
        Some(c) if c < wanted => (c, "max_tokens"),
        _ => (wanted, "end_turn"),
    };
    (reply_words(&state.args.name, n).join(" "), n, stop)
}

/// Tool calls for `tools` (name, schema), or none.
fn tool_calls(
    state: &State,
    tools: &[(String, Option<Value>)],
    forced: Option<&str>,
    both: bool,
    prefix: &str,
) -> Vec<ToolCall> {
    let Some((name, schema)) = tools.iter().find(|(n, _)| forced.is_none_or(|f| f == n)) else { return Vec::new() };
    (0..if both { 2 } else { 1 })
        .map(|_| {
            let seq = next_id(state, "t");
            let id = format!("{prefix}{:016x}{:06x}", fnv1a(seq.as_bytes(), 7), fnv1a(name.as_bytes(), 3) & 0xff_ffff);
            ToolCall { id, name: name.clone(), input: schema_arguments(schema.as_ref()) }
        })
        .collect()
}

/// What a request asks for, read from either body shape.
struct Ask {
    prompt: u64,
    thinking: bool,
    cap: Option<u64>,
    tools: Vec<(String, Option<Value>)>,
    forced: Option<String>,
    last_user_text: String,
    tool_result: Option<String>,
}

fn plan(state: &State, headers: &hyper::HeaderMap, ask: Ask, tool_prefix: &str) -> Reply {
    let Ask { prompt, thinking, cap, tools, forced, last_user_text, tool_result } = ask;
    let prompt = prompt.max(1);
    if let Some(result) = tool_result {
        let text = format!("The tool said: {result}");
        let n = words(&text);
        return Reply { thinking, text, tool_calls: Vec::new(), stop_reason: "end_turn", prompt, output: n };
    }
    let calls = tool_calls(state, &tools, forced.as_deref(), last_user_text.contains("both"), tool_prefix);
    if let Some(first) = calls.first() {
        let text = format!("Calling {}.", first.name);
        let output = words(&text) + 10 * calls.len() as u64;
        return Reply { thinking, text, tool_calls: calls, stop_reason: "tool_use", prompt, output };
    }
    let (text, output, stop_reason) = text_reply(state, headers, cap);
    Reply { thinking, text, tool_calls: Vec::new(), stop_reason, prompt, output }
}

// ---- Converse ----

fn check_converse(request: &Value) -> Result<(), String> {
    let Some(object) = request.as_object() else { return Err("Malformed input request.".into()) };
    if let Some(k) = object.keys().find(|k| !CONVERSE_FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "Malformed input request: extraneous key [{k}] is not permitted, please reformat your input and try again."
        ));
    }
    let messages = request.get("messages").and_then(Value::as_array).filter(|m| !m.is_empty());
    let Some(messages) = messages else {
        return Err("1 validation error detected: Value at 'messages' failed to satisfy constraint: Member must have length greater than or equal to 1".into());
    };
    let mut last_role = "";
    let mut has_tool_blocks = false;
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if !["user", "assistant"].contains(&role) {
            return Err(format!("Value '{role}' at 'messages.{}.member.role' failed to satisfy constraint: Member must satisfy enum value set: [user, assistant]", i + 1));
        }
        if i == 0 && role != "user" {
            return Err("A conversation must start with a user message. Try again with a conversation that starts with a user message.".into());
        }
        if role == last_role {
            return Err("A conversation must alternate between user and assistant roles. Make sure the conversation alternates between user and assistant roles and try again.".into());
        }
        last_role = role;
        let content = m.get("content").and_then(Value::as_array).filter(|c| !c.is_empty());
        let Some(content) = content else {
            return Err(format!("The content field in the Message object at messages.{i} is empty. Add a ContentBlock object to the content field and try again."));
        };
        for block in content {
            let Some(b) = block.as_object().filter(|b| b.len() == 1) else {
                return Err("Each ContentBlock must have exactly one member.".into());
            };
            has_tool_blocks |= b.contains_key("toolUse") || b.contains_key("toolResult");
            if b.get("text").is_some_and(|t| t.as_str().is_none_or(|t| t.trim().is_empty())) {
                return Err(format!("The text field in the ContentBlock object at messages.{i}.content is blank. Add text to the text field, and try again."));
            }
        }
    }
    if has_tool_blocks && request.get("toolConfig").is_none() {
        return Err("The toolConfig field must be defined when using toolUse and toolResult content blocks.".into());
    }
    Ok(())
}

fn plan_converse(state: &State, headers: &hyper::HeaderMap, request: &Value) -> Reply {
    let mut prompt = 0;
    for s in request.get("system").and_then(Value::as_array).into_iter().flatten() {
        prompt += words(s.get("text").and_then(Value::as_str).unwrap_or(""));
    }
    let messages = request.get("messages").and_then(Value::as_array).cloned().unwrap_or_default();
    for m in &messages {
        for block in m.get("content").and_then(Value::as_array).into_iter().flatten() {
            prompt += words(block.get("text").and_then(Value::as_str).unwrap_or(""));
            for c in block.pointer("/toolResult/content").and_then(Value::as_array).into_iter().flatten() {
                prompt += words(c.get("text").and_then(Value::as_str).unwrap_or(""));
            }
        }
    }
    let last = messages.last().and_then(|m| m.get("content")).and_then(Value::as_array).cloned().unwrap_or_default();
    let tool_result = last.iter().find_map(|b| b.get("toolResult")).map(|r| {
        r.get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| {
                c.get("text")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .or_else(|| c.get("json").map(Value::to_string))
            })
            .collect::<Vec<_>>()
            .join(" ")
    });
    let last_text: String =
        last.iter().filter_map(|b| b.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" ");
    let tools: Vec<(String, Option<Value>)> = request
        .pointer("/toolConfig/tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let spec = t.get("toolSpec")?;
            Some((spec.get("name")?.as_str()?.to_string(), spec.pointer("/inputSchema/json").cloned()))
        })
        .collect();
    let ask = Ask {
        prompt,
        thinking: request.pointer("/additionalModelRequestFields/thinking/type").and_then(Value::as_str)
            == Some("enabled"),
        cap: request.pointer("/inferenceConfig/maxTokens").and_then(Value::as_u64),
        tools,
        forced: request.pointer("/toolConfig/toolChoice/tool/name").and_then(Value::as_str).map(str::to_string),
        last_user_text: last_text,
        tool_result,
    };
    plan(state, headers, ask, "tooluse_")
}

fn converse_usage(r: &Reply) -> Value {
    let cached = r.prompt / 2;
    json!({"inputTokens": r.prompt - cached, "outputTokens": r.output, "totalTokens": r.prompt + r.output,
        "cacheReadInputTokens": cached, "cacheWriteInputTokens": 0})
}

fn converse_json(r: &Reply) -> Value {
    let mut content = Vec::new();
    if r.thinking {
        content.push(json!({"reasoningContent": {"reasoningText": {"text": "Mock thoughts.", "signature": "bW9jay1zaWduYXR1cmU="}}}));
    }
    content.push(json!({"text": r.text}));
    for c in &r.tool_calls {
        content.push(json!({"toolUse": {"toolUseId": c.id, "name": c.name, "input": c.input}}));
    }
    json!({
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": r.stop_reason,
        "usage": converse_usage(r),
        "metrics": {"latencyMs": 42},
    })
}

fn converse_frames(r: &Reply, model: &str) -> Vec<Vec<u8>> {
    let mut frames = vec![event_frame("messageStart", &padded(json!({"role": "assistant"}), 1))];
    let mut index = 0;
    if r.thinking {
        frames.push(event_frame(
            "contentBlockDelta",
            &padded(json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Mock thoughts."}}}), 2),
        ));
        frames.push(event_frame(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "bW9jay1zaWduYXR1cmU="}}}),
        ));
        frames.push(event_frame("contentBlockStop", &padded(json!({"contentBlockIndex": 0}), 3)));
        index += 1;
    }
    let pieces: Vec<&str> = r.text.split(' ').collect();
    for (i, piece) in pieces.iter().enumerate() {
        if model == "mock-stream-exception" && i == 2 {
            frames.push(exception_frame("throttlingException", "Too many requests, please wait before trying again."));
            return frames;
        }
        let text = if i + 1 < pieces.len() { format!("{piece} ") } else { piece.to_string() };
        frames.push(event_frame(
            "contentBlockDelta",
            &padded(json!({"contentBlockIndex": index, "delta": {"text": text}}), i + 4),
        ));
    }
    frames.push(event_frame("contentBlockStop", &padded(json!({"contentBlockIndex": index}), 5)));
    for c in &r.tool_calls {
        index += 1;
        frames.push(event_frame(
            "contentBlockStart",
            &padded(json!({"contentBlockIndex": index, "start": {"toolUse": {"toolUseId": c.id, "name": c.name}}}), 6),
        ));
        let input = c.input.to_string();
        let (a, b) = input.split_at(input.len() / 2);
        for piece in ["", a, b] {
            frames.push(event_frame(
                "contentBlockDelta",
                &padded(json!({"contentBlockIndex": index, "delta": {"toolUse": {"input": piece}}}), 7),
            ));
        }
        frames.push(event_frame("contentBlockStop", &padded(json!({"contentBlockIndex": index}), 8)));
    }
    frames.push(event_frame("messageStop", &padded(json!({"stopReason": r.stop_reason}), 9)));
    frames
        .push(event_frame("metadata", &padded(json!({"usage": converse_usage(r), "metrics": {"latencyMs": 42}}), 10)));
    frames
}

// ---- Anthropic on Bedrock (invoke) ----

fn check_anthropic(request: &Value) -> Result<(), String> {
    let malformed =
        |what: String| Err(format!("Malformed input request: #: {what}, please reformat your input and try again."));
    for key in ["model", "stream"] {
        if request.get(key).is_some() {
            return malformed(format!("extraneous key [{key}] is not permitted"));
        }
    }
    match request.get("anthropic_version").and_then(Value::as_str) {
        None => return malformed("required key [anthropic_version] not found".into()),
        Some(BEDROCK_ANTHROPIC_VERSION) => {}
        Some(other) => return Err(format!("invalid anthropic_version {other:?}; use {BEDROCK_ANTHROPIC_VERSION}")),
    }
    if request.get("max_tokens").and_then(Value::as_u64).is_none() {
        return malformed("required key [max_tokens] not found".into());
    }
    if request.get("messages").and_then(Value::as_array).is_none_or(|m| m.is_empty()) {
        return malformed("required key [messages] not found".into());
    }
    Ok(())
}

fn anthropic_text(content: Option<&Value>) -> Vec<String> {
    match content {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(blocks)) => {
            blocks.iter().filter_map(|b| b.get("text").and_then(Value::as_str).map(str::to_string)).collect()
        }
        _ => Vec::new(),
    }
}

fn plan_anthropic(state: &State, headers: &hyper::HeaderMap, request: &Value) -> Reply {
    let mut prompt = 0;
    match request.get("system") {
        Some(Value::String(s)) => prompt += words(s),
        Some(Value::Array(blocks)) => {
            for b in blocks {
                prompt += words(b.get("text").and_then(Value::as_str).unwrap_or(""));
            }
        }
        _ => {}
    }
    let messages = request.get("messages").and_then(Value::as_array).cloned().unwrap_or_default();
    for m in &messages {
        for t in anthropic_text(m.get("content")) {
            prompt += words(&t);
        }
    }
    let last = messages.last().and_then(|m| m.get("content")).cloned();
    let tool_result = match &last {
        Some(Value::Array(blocks)) => blocks
            .iter()
            .find(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
            .map(|r| match r.get("content") {
                Some(Value::String(s)) => s.clone(),
                other => anthropic_text(other).join(" "),
            }),
        _ => None,
    };
    let last_text = anthropic_text(last.as_ref()).join(" ");
    let tools: Vec<(String, Option<Value>)> = request
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| Some((t.get("name")?.as_str()?.to_string(), t.get("input_schema").cloned())))
        .collect();
    let choice = request.get("tool_choice");
    let tools =
        if choice.and_then(|c| c.get("type")).and_then(Value::as_str) == Some("none") { Vec::new() } else { tools };
    let forced = choice
        .filter(|c| c.get("type").and_then(Value::as_str) == Some("tool"))
        .and_then(|c| c.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let ask = Ask {
        prompt,
        thinking: request.pointer("/thinking/type").and_then(Value::as_str) == Some("enabled"),
        cap: request.get("max_tokens").and_then(Value::as_u64),
        tools,
        forced,
        last_user_text: last_text,
        tool_result,
    };
    plan(state, headers, ask, "toolu_bdrk_")
}

fn anthropic_usage(r: &Reply) -> Value {
    let cached = r.prompt / 2;
    json!({"input_tokens": r.prompt - cached, "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached,
        "output_tokens": r.output})
}

fn anthropic_json(state: &State, r: &Reply, model: &str) -> Value {
    let mut content = Vec::new();
    if r.thinking {
        content.push(json!({"type": "thinking", "thinking": "Mock thoughts.", "signature": "bW9jay1zaWduYXR1cmU="}));
    }
    content.push(json!({"type": "text", "text": r.text}));
    for c in &r.tool_calls {
        content.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": c.input}));
    }
    json!({
        "id": next_id(state, "msg_bdrk"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": r.stop_reason,
        "stop_sequence": null,
        "usage": anthropic_usage(r),
    })
}

fn chunk_frame(event: &Value) -> Vec<u8> {
    let bytes = aws_smithy_types::base64::encode(event.to_string().as_bytes());
    event_frame("chunk", &padded(json!({"bytes": bytes}), bytes.len()))
}

fn anthropic_frames(state: &State, r: &Reply, model: &str) -> Vec<Vec<u8>> {
    let cached = r.prompt / 2;
    let mut events = vec![json!({"type": "message_start", "message": {
        "id": next_id(state, "msg_bdrk"), "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": r.prompt - cached, "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached, "output_tokens": 1}}})];
    let mut index = 0;
    if r.thinking {
        events.push(
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
        );
        events.push(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Mock thoughts."}}));
        events.push(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "bW9jay1zaWduYXR1cmU="}}));
        events.push(json!({"type": "content_block_stop", "index": 0}));
        index += 1;
    }
    events.push(json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}));
    let pieces: Vec<&str> = r.text.split(' ').collect();
    let mut frames: Vec<Vec<u8>> = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        if model == "mock-stream-exception" && i == 2 {
            frames.extend(events.iter().map(chunk_frame));
            frames.push(exception_frame("throttlingException", "Too many requests, please wait before trying again."));
            return frames;
        }
        let text = if i + 1 < pieces.len() { format!("{piece} ") } else { piece.to_string() };
        events.push(
            json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
        );
    }
    events.push(json!({"type": "content_block_stop", "index": index}));
    for c in &r.tool_calls {
        index += 1;
        events.push(json!({"type": "content_block_start", "index": index, "content_block": {"type": "tool_use", "id": c.id, "name": c.name, "input": {}}}));
        let input = c.input.to_string();
        let (a, b) = input.split_at(input.len() / 2);
        for piece in ["", a, b] {
            events.push(json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": piece}}));
        }
        events.push(json!({"type": "content_block_stop", "index": index}));
    }
    events.push(json!({"type": "message_delta", "delta": {"stop_reason": r.stop_reason, "stop_sequence": null}, "usage": {"output_tokens": r.output}}));
    events.push(json!({"type": "message_stop", "amazon-bedrock-invocationMetrics": {
        "inputTokenCount": r.prompt - cached, "outputTokenCount": r.output, "invocationLatency": 42, "firstByteLatency": 7}}));
    frames.extend(events.iter().map(chunk_frame));
    frames
}
