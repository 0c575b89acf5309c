//! What a span says about the conversation: input messages from the client's request, output
//! messages from the answer as the client gets it (whole, or assembled from stream events), in the
//! four client APIs' shapes. Text stays JSON string-literal text (its inside, escapes kept): the
//! bodies are validated JSON, so copied literals are valid in the span's JSON too. Everything
//! copied is charged to the span's `room`.

use crate::json::{each_member, for_each_element, member_value as member};
use crate::translate::jsontext::write_as_string;

use super::otlp::Attrs;
use super::Api;

/// What a message or tool call costs the budget besides its text (bounds their number).
const ENTRY_COST: usize = 64;
/// A request parameter larger than this is left out of `llm.invocation_parameters`.
const MAX_PARAMETER_BYTES: usize = 2048;
/// Tool calls of one streamed message are indexed below this.
const MAX_STREAM_TOOL_CALLS: usize = 64;
/// Request members that are content, not parameters.
const CONTENT_MEMBERS: &[&str] = &["messages", "input", "system", "instructions", "tools", "prompt"];

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub id: Vec<u8>,
    pub name: Vec<u8>,
    pub arguments: Vec<u8>,
}

/// One message; every field is a string literal's inside.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Vec<u8>,
    pub content: Vec<u8>,
    pub tool_calls: Vec<ToolCall>,
}

/// The answer, as far as it has been read.
#[derive(Debug, Default)]
pub struct Output {
    pub message: Message,
    /// An answer message was read (or its stream began).
    pub seen: bool,
    /// Embedding vectors, encoded as attributes.
    pub vectors: Attrs,
    /// The answer's `model` and finish reason (string literals' insides), for GenAI attributes.
    pub model: Vec<u8>,
    pub finish_reason: Vec<u8>,
}

/// Notes a short string member once: the answer's model, its finish (stop) reason.
fn note(dst: &mut Vec<u8>, raw: Option<&[u8]>) {
    if let Some(text) = raw.and_then(inside).filter(|t| dst.is_empty() && t.len() <= 128) {
        dst.extend_from_slice(text);
    }
}

/// Whether the budget has room for one more entry (and charges it).
fn take_entry(room: &mut usize) -> bool {
    if *room < ENTRY_COST {
        return false;
    }
    *room -= ENTRY_COST;
    true
}

/// Appends a literal's inside, cut (at a whole character or escape) to what `room` allows.
fn push(dst: &mut Vec<u8>, inside: &[u8], room: &mut usize) {
    if inside.len() <= *room {
        dst.extend_from_slice(inside);
        *room -= inside.len();
        return;
    }
    let mut cut = 0;
    while let Some(&b) = inside.get(cut) {
        let unit = match b {
            b'\\' if inside.get(cut + 1) == Some(&b'u') => 6,
            b'\\' => 2,
            0..=0x7f => 1,
            0xf0.. => 4,
            0xe0.. => 3,
            _ => 2,
        };
        if cut + unit > *room {
            break;
        }
        cut += unit;
    }
    dst.extend_from_slice(inside.get(..cut).unwrap_or_default());
    *room -= cut;
}

/// The inside of a string literal's raw bytes.
fn inside(raw: &[u8]) -> Option<&[u8]> {
    raw.strip_prefix(b"\"")?.strip_suffix(b"\"")
}

fn push_str(dst: &mut Vec<u8>, raw: Option<&[u8]>, room: &mut usize) {
    if let Some(text) = raw.and_then(inside) {
        push(dst, text, room);
    }
}

fn is(raw: Option<&[u8]>, literal: &str) -> bool {
    raw.and_then(inside) == Some(literal.as_bytes())
}

fn each<'a>(raw: Option<&'a [u8]>, f: &mut dyn FnMut(&'a [u8])) {
    if let Some(raw) = raw {
        for_each_element(raw, f);
    }
}

/// A tool call from an object holding `id`/`call_id`, `name` and `arguments` (a string) or `input`
/// (an object, written as a string).
fn tool_call(obj: &[u8], room: &mut usize) -> Option<ToolCall> {
    if !take_entry(room) {
        return None;
    }
    let mut call = ToolCall::default();
    let function = member(obj, "function").unwrap_or(obj);
    push_str(&mut call.id, member(obj, "id").or_else(|| member(obj, "call_id")), room);
    push_str(&mut call.name, member(function, "name"), room);
    match (member(function, "arguments"), member(obj, "input")) {
        (Some(arguments), _) => push_str(&mut call.arguments, Some(arguments), room),
        (None, Some(input)) => {
            let mut text = Vec::new();
            let _ = write_as_string(input, &mut text);
            push(&mut call.arguments, &text, room);
        }
        (None, None) => {}
    }
    Some(call)
}

/// Content in any of the APIs' shapes into `message`: a string, or parts/blocks whose `text` is
/// the content (joined by newlines), `tool_use` blocks, and `tool_result` blocks' own content.
fn content_of(raw: &[u8], message: &mut Message, room: &mut usize, depth: u8) {
    if let Some(text) = inside(raw) {
        if !message.content.is_empty() && !text.is_empty() {
            push(&mut message.content, b"\\n", room);
        }
        push(&mut message.content, text, room);
        return;
    }
    if depth > 1 {
        return;
    }
    for_each_element(raw, &mut |part| {
        if part.first() == Some(&b'"') {
            content_of(part, message, room, depth + 1);
        } else if is(member(part, "type"), "tool_use") {
            if let Some(call) = tool_call(part, room) {
                message.tool_calls.push(call);
            }
        } else if let Some(text) = member(part, "text").filter(|t| t.first() == Some(&b'"')) {
            content_of(text, message, room, depth + 1);
        } else if let Some(nested) = member(part, "content") {
            content_of(nested, message, room, depth + 1);
        }
    });
}

/// A message object of any API: `role`, `content`, chat's `tool_calls`.
fn message_of(obj: &[u8], room: &mut usize) -> Option<Message> {
    if !take_entry(room) {
        return None;
    }
    // One pass over the message's members (the first of each name, as `member` reads them).
    let (mut role, mut content, mut calls) = (None, None, None);
    each_member(obj, &mut |member| {
        let slot = match member.key.as_ref() {
            "role" => &mut role,
            "content" => &mut content,
            "tool_calls" => &mut calls,
            _ => return,
        };
        if slot.is_none() {
            *slot = obj.get(member.value);
        }
    });
    let mut m = Message::default();
    push_str(&mut m.role, role, room);
    if let Some(content) = content {
        content_of(content, &mut m, room, 0);
    }
    each(calls, &mut |call| m.tool_calls.extend(tool_call(call, room)));
    Some(m)
}

fn text_message(role: &str, raw: &[u8], room: &mut usize) -> Option<Message> {
    if !take_entry(room) {
        return None;
    }
    let mut m = Message { role: role.as_bytes().to_vec(), ..Message::default() };
    content_of(raw, &mut m, room, 0);
    Some(m)
}

/// The request's messages: chat `messages`; Responses `instructions` and `input` (a string or
/// items: messages, function calls and their outputs); Anthropic `system` and `messages`.
pub fn input_messages(api: Api, body: &[u8], room: &mut usize) -> Vec<Message> {
    let mut out = Vec::new();
    match api {
        Api::Chat => each(member(body, "messages"), &mut |m| out.extend(message_of(m, room))),
        Api::Messages => {
            if let Some(system) = member(body, "system") {
                out.extend(text_message("system", system, room));
            }
            each(member(body, "messages"), &mut |m| out.extend(message_of(m, room)));
        }
        Api::Responses => {
            if let Some(instructions) = member(body, "instructions").filter(|i| i.first() == Some(&b'"')) {
                out.extend(text_message("system", instructions, room));
            }
            match member(body, "input") {
                Some(text) if text.first() == Some(&b'"') => out.extend(text_message("user", text, room)),
                input => each(input, &mut |item| {
                    let kind = member(item, "type");
                    if is(kind, "function_call") {
                        if take_entry(room) {
                            let mut m = Message { role: b"assistant".to_vec(), ..Message::default() };
                            m.tool_calls.extend(tool_call(item, room));
                            out.push(m);
                        }
                    } else if is(kind, "function_call_output") {
                        out.extend(member(item, "output").and_then(|o| text_message("tool", o, room)));
                    } else if member(item, "role").is_some() {
                        out.extend(message_of(item, room));
                    }
                }),
            }
        }
        Api::Embeddings => {}
    }
    out
}

/// `llm.invocation_parameters`: the request's members that are not content, as a compact JSON
/// object, written as a string literal's inside.
pub fn invocation_parameters(api: Api, body: &[u8], room: &mut usize) -> Vec<u8> {
    let mut object = vec![b'{'];
    each_member(body, &mut |m| {
        let skip = CONTENT_MEMBERS.contains(&m.key.as_ref()) || (api == Api::Embeddings && m.key == "input");
        if skip || m.span.len() > MAX_PARAMETER_BYTES {
            return;
        }
        if object.len() > 1 {
            object.push(b',');
        }
        object.extend_from_slice(body.get(m.span).unwrap_or_default());
    });
    object.push(b'}');
    let mut text = Vec::new();
    let _ = write_as_string(&object, &mut text);
    let mut out = Vec::new();
    push(&mut out, &text, room);
    out
}

/// `embedding.embeddings.<i>.embedding.text` for each string of the request's `input`.
pub fn write_embedding_texts(attrs: &mut Attrs, body: &[u8], room: &mut usize) {
    let mut write = |i: usize, raw: &[u8], room: &mut usize| {
        if let Some(text) = inside(raw) {
            if take_entry(room) {
                let mut value = Vec::new();
                push(&mut value, text, room);
                attrs.str_inside(&format!("embedding.embeddings.{i}.embedding.text"), &value);
            }
        }
    };
    match member(body, "input") {
        Some(text) if text.first() == Some(&b'"') => write(0, text, room),
        input => {
            let mut i = 0;
            each(input, &mut |raw| {
                write(i, raw, room);
                i += 1;
            });
        }
    }
}

/// Whether `bytes` is JSON (UTF-8 throughout): only then are its literals copied.
fn is_json(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok() && crate::json::from_bytes::<serde::de::IgnoredAny>(bytes).is_ok()
}

/// A whole (not streamed) answer in the client's API shape.
pub fn whole_answer(api: Api, body: &[u8], output: &mut Output, room: &mut usize) {
    if is_json(body) {
        answer_object(api, body, output, room);
    }
}

fn answer_object(api: Api, body: &[u8], output: &mut Output, room: &mut usize) {
    note(&mut output.model, member(body, "model"));
    match api {
        Api::Chat => {
            let mut first = true;
            each(member(body, "choices"), &mut |choice| {
                if std::mem::take(&mut first) {
                    note(&mut output.finish_reason, member(choice, "finish_reason"));
                    if let Some(m) = member(choice, "message").and_then(|m| message_of(m, room)) {
                        output.message = m;
                        output.seen = true;
                    }
                }
            });
        }
        Api::Messages => {
            note(&mut output.finish_reason, member(body, "stop_reason"));
            if let Some(m) = message_of(body, room) {
                output.message = m;
                output.seen = true;
            }
        }
        Api::Responses => {
            note(&mut output.finish_reason, member(body, "status"));
            let message = &mut output.message;
            message.role = b"assistant".to_vec();
            each(member(body, "output"), &mut |item| {
                let kind = member(item, "type");
                if is(kind, "message") {
                    if let Some(content) = member(item, "content") {
                        content_of(content, message, room, 0);
                    }
                } else if is(kind, "function_call") {
                    message.tool_calls.extend(tool_call(item, room));
                }
            });
            output.seen = true;
        }
        Api::Embeddings => {
            let mut i = 0;
            each(member(body, "data"), &mut |item| {
                if let Some(vector) = member(item, "embedding") {
                    write_vector(&mut output.vectors, i, vector, room);
                }
                i += 1;
            });
        }
    }
}

/// `embedding.embeddings.<i>.embedding.vector` from a JSON array of numbers (base64 vectors are not
/// decoded), if it fits.
fn write_vector(attrs: &mut Attrs, i: usize, raw: &[u8], room: &mut usize) {
    let mut numbers: Vec<&[u8]> = Vec::new();
    let mut valid = true;
    for_each_element(raw, &mut |n| {
        valid &= !n.is_empty() && n.iter().all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
        numbers.push(n);
    });
    let cost = ENTRY_COST + numbers.iter().map(|n| n.len() + 16).sum::<usize>();
    if valid && !numbers.is_empty() && cost <= *room {
        *room -= cost;
        attrs.doubles(&format!("embedding.embeddings.{i}.embedding.vector"), &numbers);
    }
}

/// One stream event's `data`, in the client's API shape.
pub fn stream_event(api: Api, data: &[u8], output: &mut Output, room: &mut usize) {
    if !is_json(data) {
        return;
    }
    if api == Api::Chat {
        note(&mut output.model, member(data, "model"));
    }
    let message = &mut output.message;
    match api {
        Api::Chat => each(member(data, "choices"), &mut |choice| {
            let index = member(choice, "index");
            if index.is_some_and(|i| i != b"0") {
                return;
            }
            output.seen = true;
            note(&mut output.finish_reason, member(choice, "finish_reason"));
            let Some(delta) = member(choice, "delta") else { return };
            if message.role.is_empty() {
                push_str(&mut message.role, member(delta, "role"), room);
            }
            push_str(&mut message.content, member(delta, "content"), room);
            each(member(delta, "tool_calls"), &mut |call| {
                let index =
                    member(call, "index").and_then(|i| std::str::from_utf8(i).ok()?.parse::<usize>().ok()).unwrap_or(0);
                if index >= MAX_STREAM_TOOL_CALLS {
                    return;
                }
                while message.tool_calls.len() <= index {
                    if !take_entry(room) {
                        return;
                    }
                    message.tool_calls.push(ToolCall::default());
                }
                let Some(slot) = message.tool_calls.get_mut(index) else { return };
                push_str(&mut slot.id, member(call, "id"), room);
                let function = member(call, "function").unwrap_or_default();
                push_str(&mut slot.name, member(function, "name"), room);
                push_str(&mut slot.arguments, member(function, "arguments"), room);
            });
        }),
        Api::Messages => {
            let kind = member(data, "type");
            output.seen = true;
            if is(kind, "message_start") {
                let start = member(data, "message");
                push_str(&mut message.role, start.and_then(|m| member(m, "role")), room);
                note(&mut output.model, start.and_then(|m| member(m, "model")));
            } else if is(kind, "message_delta") {
                note(&mut output.finish_reason, member(data, "delta").and_then(|d| member(d, "stop_reason")));
            } else if is(kind, "content_block_start") {
                let block = member(data, "content_block").unwrap_or_default();
                if is(member(block, "type"), "tool_use") {
                    if let Some(mut call) = tool_call(block, room) {
                        // The input arrives in deltas; the start's `{}` is not part of it.
                        call.arguments.clear();
                        message.tool_calls.push(call);
                    }
                }
            } else if is(kind, "content_block_delta") {
                let delta = member(data, "delta").unwrap_or_default();
                let delta_kind = member(delta, "type");
                if is(delta_kind, "text_delta") {
                    push_str(&mut message.content, member(delta, "text"), room);
                } else if is(delta_kind, "input_json_delta") {
                    if let Some(call) = message.tool_calls.last_mut() {
                        push_str(&mut call.arguments, member(delta, "partial_json"), room);
                    }
                }
            }
        }
        Api::Responses => {
            let kind = member(data, "type");
            if ["response.completed", "response.incomplete", "response.failed"].iter().any(|k| is(kind, k)) {
                if let Some(response) = member(data, "response") {
                    answer_object(Api::Responses, response, output, room);
                }
            }
        }
        Api::Embeddings => {}
    }
}
