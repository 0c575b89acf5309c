//! OTLP/HTTP `ExportTraceServiceRequest`s, written by hand in either of the protocol's encodings:
//! protobuf (`http/protobuf`, the OTel default and what Arize Phoenix accepts) or JSON
//! (`http/json`: ids in hex, times and 64-bit integers as strings). One non-generic writer per
//! message, switching on [`Encoding`] where the bytes differ.

use std::collections::BTreeMap;

use crate::json::json_string;
use crate::translate::jsontext::{compact, write_as_string, write_decoded};

use super::content::Message;
use super::hex;

/// How spans are encoded on the wire (`tracing.protocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Encoding {
    #[default]
    Protobuf,
    Json,
}

impl Encoding {
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// Protobuf tags (field number << 3 | wire type) used below.
const LEN: u8 = 2;
const fn tag(field: u8, wire: u8) -> u8 {
    field << 3 | wire
}
/// `Span.attributes` (9) and `Resource.attributes` (1): where an [`Attrs`] list goes.
const SPAN_ATTRIBUTES: u8 = tag(9, LEN);
const RESOURCE_ATTRIBUTES: u8 = tag(1, LEN);
/// `Span.Event.attributes` (3).
const EVENT_ATTRIBUTES: u8 = tag(3, LEN);

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint_len(value: usize) -> usize {
    (usize::BITS - (value | 1).leading_zeros()).div_ceil(7) as usize
}

/// A length-delimited field: tag, length, bytes.
fn field(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(tag);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// An attribute's value, as the span code has it.
enum Value<'a> {
    Text(&'a str),
    /// A JSON string literal's inside (escapes kept, checked).
    Inside(&'a [u8]),
    /// A JSON document (validated, UTF-8), as compact text.
    Json(&'a [u8]),
    Int(u64),
    /// A JSON number token (checked).
    Double(&'a [u8]),
    /// JSON number tokens, as an array of doubles.
    Doubles(&'a [&'a [u8]]),
    /// JSON string literals' insides, as an array of strings.
    Insides(&'a [&'a [u8]]),
}

/// A string literal's inside, decoded (for protobuf's raw UTF-8 strings).
fn decoded(inside: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(inside.len());
    if let Ok(text) = std::str::from_utf8(inside) {
        let _ = write_decoded(text, &mut out);
    }
    out
}

fn double(token: &[u8]) -> f64 {
    crate::json::from_bytes::<f64>(token).unwrap_or_default()
}

/// Encoded `KeyValue`s: in JSON each preceded by a comma; in protobuf each a tagged field.
#[derive(Debug)]
pub struct Attrs {
    buf: Vec<u8>,
    encoding: Encoding,
    /// Protobuf: the field the `KeyValue`s are of.
    field: u8,
}

impl Default for Attrs {
    fn default() -> Self {
        Attrs::new(Encoding::default())
    }
}

impl Attrs {
    pub fn new(encoding: Encoding) -> Self {
        Attrs { buf: Vec::new(), encoding, field: SPAN_ATTRIBUTES }
    }

    /// A span event's attributes, in the span's encoding.
    pub fn for_event(span: &Attrs) -> Self {
        Attrs { field: EVENT_ATTRIBUTES, ..Attrs::new(span.encoding) }
    }

    fn put(&mut self, key: &str, value: Value) {
        match self.encoding {
            Encoding::Json => self.put_json(key, value),
            Encoding::Protobuf => self.put_protobuf(key, value),
        }
    }

    fn put_json(&mut self, key: &str, value: Value) {
        let out = &mut self.buf;
        out.extend_from_slice(b",{\"key\":");
        out.extend_from_slice(&json_string(key));
        out.extend_from_slice(b",\"value\":{");
        match value {
            Value::Text(text) => {
                out.extend_from_slice(b"\"stringValue\":");
                out.extend_from_slice(&json_string(text));
            }
            Value::Inside(inside) => {
                out.extend_from_slice(b"\"stringValue\":\"");
                out.extend_from_slice(inside);
                out.push(b'"');
            }
            Value::Json(json) => {
                out.extend_from_slice(b"\"stringValue\":\"");
                let _ = write_as_string(json, out);
                out.push(b'"');
            }
            Value::Int(n) => out.extend_from_slice(format!("\"intValue\":\"{n}\"").as_bytes()),
            Value::Double(token) => {
                out.extend_from_slice(b"\"doubleValue\":");
                out.extend_from_slice(token);
            }
            Value::Doubles(items) | Value::Insides(items) => {
                let (open, close): (&[u8], &[u8]) = match value {
                    Value::Doubles(_) => (b"{\"doubleValue\":", b"}"),
                    _ => (b"{\"stringValue\":\"", b"\"}"),
                };
                out.extend_from_slice(b"\"arrayValue\":{\"values\":[");
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(open);
                    out.extend_from_slice(item);
                    out.extend_from_slice(close);
                }
                out.extend_from_slice(b"]}");
            }
        }
        out.extend_from_slice(b"}}");
    }

    /// `KeyValue { key = 1; AnyValue value = 2 }`, `AnyValue { string = 1; int = 3; double = 4;
    /// array = 5 }`, `ArrayValue { repeated AnyValue values = 1 }`.
    fn put_protobuf(&mut self, key: &str, value: Value) {
        const STRING: u8 = tag(1, LEN);
        const INT: u8 = tag(3, 0);
        const DOUBLE: u8 = tag(4, 1);
        const ARRAY: u8 = tag(5, LEN);
        let mut any = Vec::new();
        match value {
            Value::Text(text) => field(&mut any, STRING, text.as_bytes()),
            Value::Inside(inside) => field(&mut any, STRING, &decoded(inside)),
            Value::Json(json) => field(&mut any, STRING, compact(json).as_bytes()),
            Value::Int(n) => {
                any.push(INT);
                varint(&mut any, n);
            }
            Value::Double(token) => {
                any.push(DOUBLE);
                any.extend_from_slice(&double(token).to_le_bytes());
            }
            Value::Doubles(items) | Value::Insides(items) => {
                let strings = matches!(value, Value::Insides(_));
                let mut array = Vec::new();
                let mut element = Vec::new();
                for item in items {
                    element.clear();
                    if strings {
                        field(&mut element, STRING, &decoded(item));
                    } else {
                        element.push(DOUBLE);
                        element.extend_from_slice(&double(item).to_le_bytes());
                    }
                    field(&mut array, tag(1, LEN), &element);
                }
                field(&mut any, ARRAY, &array);
            }
        }
        let mut kv = Vec::with_capacity(key.len() + any.len() + 8);
        field(&mut kv, tag(1, LEN), key.as_bytes());
        field(&mut kv, tag(2, LEN), &any);
        field(&mut self.buf, self.field, &kv);
    }

    pub fn string(&mut self, key: &str, value: &str) {
        self.put(key, Value::Text(value));
    }

    /// A string value given as the inside of a JSON string literal (escapes kept, checked).
    pub fn str_inside(&mut self, key: &str, inside: &[u8]) {
        self.put(key, Value::Inside(inside));
    }

    /// A JSON document (validated JSON, UTF-8) as a compact string value.
    pub fn json_as_string(&mut self, key: &str, json: &[u8]) {
        self.put(key, Value::Json(json));
    }

    pub fn int(&mut self, key: &str, value: u64) {
        self.put(key, Value::Int(value));
    }

    /// A JSON number token (checked) as a double.
    pub fn double(&mut self, key: &str, number: &[u8]) {
        self.put(key, Value::Double(number));
    }

    /// A vector of JSON number tokens (checked) as an array of doubles.
    pub fn doubles(&mut self, key: &str, numbers: &[&[u8]]) {
        self.put(key, Value::Doubles(numbers));
    }

    /// String literals' insides (escapes kept, checked) as an array of strings.
    pub fn strings_inside(&mut self, key: &str, insides: &[&[u8]]) {
        self.put(key, Value::Insides(insides));
    }

    /// Attributes encoded elsewhere (by another `Attrs` of the same encoding).
    pub fn raw(&mut self, encoded: &[u8]) {
        self.buf.extend_from_slice(encoded);
    }

    pub fn encoded(&self) -> &[u8] {
        &self.buf
    }

    /// The list as its message holds it (JSON: without the leading comma).
    fn list(&self) -> &[u8] {
        match self.encoding {
            Encoding::Json => self.buf.get(1..).unwrap_or_default(),
            Encoding::Protobuf => &self.buf,
        }
    }
}

/// The resource's attributes: `service.name`, then the operator's.
pub fn resource(encoding: Encoding, service_name: &str, extra: &BTreeMap<String, String>) -> Vec<u8> {
    let mut attrs = Attrs { field: RESOURCE_ATTRIBUTES, ..Attrs::new(encoding) };
    attrs.string("service.name", service_name);
    for (key, value) in extra {
        if key != "service.name" {
            attrs.string(key, value);
        }
    }
    attrs.list().to_vec()
}

/// OpenInference's flattened messages: `<prefix>.<i>.message.role`, `.content`, `.tool_calls.<j>...`.
pub fn write_messages(attrs: &mut Attrs, prefix: &str, messages: &[Message]) {
    for (i, m) in messages.iter().enumerate() {
        let at = format!("{prefix}.{i}.message.");
        if !m.role.is_empty() {
            attrs.str_inside(&format!("{at}role"), &m.role);
        }
        if !m.content.is_empty() {
            attrs.str_inside(&format!("{at}content"), &m.content);
        }
        for (j, call) in m.tool_calls.iter().enumerate() {
            let call_at = format!("{at}tool_calls.{j}.tool_call.");
            if !call.id.is_empty() {
                attrs.str_inside(&format!("{call_at}id"), &call.id);
            }
            attrs.str_inside(&format!("{call_at}function.name"), &call.name);
            attrs.str_inside(&format!("{call_at}function.arguments"), &call.arguments);
        }
    }
}

pub struct SpanParts<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub parent: Option<&'a [u8]>,
    pub name: &'a str,
    /// `SpanKind`: 2 SERVER (OpenInference: the gateway serves the call), 3 CLIENT (GenAI).
    pub kind: u8,
    pub start: u64,
    pub end: u64,
    pub attrs: &'a Attrs,
    pub events: &'a [super::Event],
    pub error: Option<&'a str>,
}

/// One `Span` (JSON: an object; protobuf: the message's fields).
pub fn span(p: &SpanParts) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.attrs.buf.len() + 256);
    if p.attrs.encoding == Encoding::Protobuf {
        field(&mut out, tag(1, LEN), p.trace_id);
        field(&mut out, tag(2, LEN), p.span_id);
        if let Some(parent) = p.parent {
            field(&mut out, tag(4, LEN), parent);
        }
        field(&mut out, tag(5, LEN), p.name.as_bytes());
        out.extend_from_slice(&[tag(6, 0), p.kind, tag(7, 1)]);
        out.extend_from_slice(&p.start.to_le_bytes());
        out.push(tag(8, 1));
        out.extend_from_slice(&p.end.to_le_bytes());
        out.extend_from_slice(&p.attrs.buf);
        // `Event { fixed64 time_unix_nano = 1; name = 2; attributes = 3 }` as `events` (11).
        for e in p.events {
            let mut event = vec![tag(1, 1)];
            event.extend_from_slice(&e.time.to_le_bytes());
            field(&mut event, tag(2, LEN), e.name.as_bytes());
            event.extend_from_slice(&e.attrs.buf);
            field(&mut out, tag(11, LEN), &event);
        }
        // `Status { message = 2; code = 3 }`: 1 OK, 2 ERROR.
        let mut status = Vec::new();
        if let Some(message) = p.error {
            field(&mut status, tag(2, LEN), message.as_bytes());
        }
        status.extend_from_slice(&[tag(3, 0), if p.error.is_some() { 2 } else { 1 }]);
        field(&mut out, tag(15, LEN), &status);
        return out;
    }
    out.extend_from_slice(
        format!("{{\"traceId\":\"{}\",\"spanId\":\"{}\"", hex(p.trace_id), hex(p.span_id)).as_bytes(),
    );
    if let Some(parent) = p.parent {
        out.extend_from_slice(format!(",\"parentSpanId\":\"{}\"", hex(parent)).as_bytes());
    }
    out.extend_from_slice(b",\"name\":");
    out.extend_from_slice(&json_string(p.name));
    out.extend_from_slice(
        format!(
            ",\"kind\":{},\"startTimeUnixNano\":\"{}\",\"endTimeUnixNano\":\"{}\",\"attributes\":[",
            p.kind, p.start, p.end
        )
        .as_bytes(),
    );
    out.extend_from_slice(p.attrs.list());
    out.push(b']');
    write_events(&mut out, p.events);
    out.extend_from_slice(b",\"status\":");
    match p.error {
        None => out.extend_from_slice(b"{\"code\":1}}"),
        Some(message) => {
            out.extend_from_slice(b"{\"code\":2,\"message\":");
            out.extend_from_slice(&json_string(message));
            out.extend_from_slice(b"}}");
        }
    }
    out
}

/// `,"events":[...]` (nothing without events).
fn write_events(out: &mut Vec<u8>, events: &[super::Event]) {
    for (i, e) in events.iter().enumerate() {
        out.extend_from_slice(if i == 0 { b",\"events\":[" } else { b"," });
        out.extend_from_slice(format!("{{\"timeUnixNano\":\"{}\",\"name\":", e.time).as_bytes());
        out.extend_from_slice(&json_string(e.name));
        out.extend_from_slice(b",\"attributes\":[");
        out.extend_from_slice(e.attrs.list());
        out.extend_from_slice(b"]}");
    }
    if !events.is_empty() {
        out.push(b']');
    }
}

/// The `ExportTraceServiceRequest` carrying `spans` for the resource `resource` (encoded attributes).
pub fn export_body(encoding: Encoding, resource: &[u8], spans: &[Vec<u8>]) -> Vec<u8> {
    let size = spans.iter().map(|s| s.len() + 4).sum::<usize>() + resource.len() + 128;
    let mut out = Vec::with_capacity(size);
    if encoding == Encoding::Protobuf {
        // request { resource_spans = 1 { resource = 1 {..}, scope_spans = 2 { scope = 1 { name = 1 },
        // spans = 2 ... } } }: lengths computed first, so nothing is copied twice.
        const SCOPE: &[u8] = b"\x0a\x07\x0a\x05llmgw";
        let scope_spans = SCOPE.len() + spans.iter().map(|s| 1 + varint_len(s.len()) + s.len()).sum::<usize>();
        let resource_spans =
            1 + varint_len(resource.len()) + resource.len() + 1 + varint_len(scope_spans) + scope_spans;
        out.push(tag(1, LEN));
        varint(&mut out, resource_spans as u64);
        field(&mut out, tag(1, LEN), resource);
        out.push(tag(2, LEN));
        varint(&mut out, scope_spans as u64);
        out.extend_from_slice(SCOPE);
        for s in spans {
            field(&mut out, tag(2, LEN), s);
        }
        return out;
    }
    out.extend_from_slice(b"{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
    out.extend_from_slice(resource);
    out.extend_from_slice(b"]},\"scopeSpans\":[{\"scope\":{\"name\":\"llmgw\"},\"spans\":[");
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(s);
    }
    out.extend_from_slice(b"]}]}]}");
    out
}
