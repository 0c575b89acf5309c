//! OpenTelemetry GenAI semantic conventions (`tracing.semconv: gen_ai`), the opt-in alternative to
//! OpenInference: span `"{gen_ai.operation.name} {gen_ai.request.model}"` of kind CLIENT with
//! `gen_ai.*` attributes; messages as the conventions' JSON (`gen_ai.input.messages`,
//! `gen_ai.output.messages`), built from the same [`Message`]s OpenInference flattens.

use crate::json::member_value as member;

use super::content::Message;
use super::otlp::Attrs;
use super::Api;

/// `gen_ai.operation.name`.
pub fn operation(api: Api) -> &'static str {
    match api {
        Api::Embeddings => "embeddings",
        Api::Chat | Api::Responses | Api::Messages => "chat",
    }
}

/// `gen_ai.provider.name` for OpenInference's `llm.provider`.
pub fn provider(openinference: &str) -> &str {
    match openinference {
        "azure" => "azure.ai.openai",
        "aws" => "aws.bedrock",
        "google" => "gcp.vertex_ai",
        other => other,
    }
}

/// The sampling parameters of the request (number tokens as the client sent them).
pub fn request_parameters(attrs: &mut Attrs, body: &[u8]) {
    let number = |key| member(body, key).filter(|n| n.first().is_some_and(|b| b.is_ascii_digit() || *b == b'-'));
    let max_tokens = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .iter()
        .find_map(|key| number(key).and_then(|n| std::str::from_utf8(n).ok()?.parse::<u64>().ok()));
    if let Some(n) = max_tokens {
        attrs.int("gen_ai.request.max_tokens", n);
    }
    for (key, attribute) in [
        ("temperature", "gen_ai.request.temperature"),
        ("top_p", "gen_ai.request.top_p"),
        ("frequency_penalty", "gen_ai.request.frequency_penalty"),
        ("presence_penalty", "gen_ai.request.presence_penalty"),
    ] {
        if let Some(n) = number(key) {
            attrs.double(attribute, n);
        }
    }
}

/// Messages as the conventions' JSON: `[{"role":..,"parts":[{"type":"text","content":..},
/// {"type":"tool_call","id":..,"name":..,"arguments":..}]}]`, with the output's `finish_reason`.
/// Every text is a validated literal's inside, so the result is valid JSON.
pub fn messages_json(messages: &[Message], finish_reason: &[u8]) -> Vec<u8> {
    let mut out = vec![b'['];
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let role: &[u8] = if m.role.is_empty() { b"assistant" } else { &m.role };
        for piece in [&b"{\"role\":\""[..], role, b"\",\"parts\":["] {
            out.extend_from_slice(piece);
        }
        let mut first = true;
        let mut part = |out: &mut Vec<u8>, pieces: &[&[u8]]| {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            pieces.iter().for_each(|p| out.extend_from_slice(p));
        };
        if !m.content.is_empty() {
            part(&mut out, &[b"{\"type\":\"text\",\"content\":\"", &m.content, b"\"}"]);
        }
        for call in &m.tool_calls {
            part(
                &mut out,
                &[
                    b"{\"type\":\"tool_call\",\"id\":\"",
                    &call.id,
                    b"\",\"name\":\"",
                    &call.name,
                    b"\",\"arguments\":\"",
                    &call.arguments,
                    b"\"}",
                ],
            );
        }
        out.push(b']');
        if !finish_reason.is_empty() {
            for piece in [&b",\"finish_reason\":\""[..], finish_reason, b"\""] {
                out.extend_from_slice(piece);
            }
        }
        out.push(b'}');
    }
    out.push(b']');
    out
}
