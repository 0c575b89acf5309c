//! OTLP/HTTP JSON (`ExportTraceServiceRequest`), written by hand: ids in hex, times as unix-nano
//! strings, 64-bit integers as strings (protobuf's JSON mapping).

use std::collections::BTreeMap;

use crate::json::json_string;
use crate::translate::jsontext::write_as_string;

use super::content::Message;
use super::hex;

/// Encoded `KeyValue`s, each preceded by a comma.
#[derive(Debug, Default)]
pub struct Attrs {
    buf: Vec<u8>,
}

impl Attrs {
    fn open(&mut self, key: &str) {
        self.buf.extend_from_slice(b",{\"key\":");
        self.buf.extend_from_slice(&json_string(key));
        self.buf.extend_from_slice(b",\"value\":{");
    }

    pub fn string(&mut self, key: &str, value: &str) {
        self.open(key);
        self.buf.extend_from_slice(b"\"stringValue\":");
        self.buf.extend_from_slice(&json_string(value));
        self.buf.extend_from_slice(b"}}");
    }

    /// A string value given as the inside of a JSON string literal (escapes kept, checked).
    pub fn str_inside(&mut self, key: &str, inside: &[u8]) {
        self.open(key);
        self.buf.extend_from_slice(b"\"stringValue\":\"");
        self.buf.extend_from_slice(inside);
        self.buf.extend_from_slice(b"\"}}");
    }

    /// A JSON document (validated JSON, UTF-8) as a compact string value.
    pub fn json_as_string(&mut self, key: &str, json: &[u8]) {
        self.open(key);
        self.buf.extend_from_slice(b"\"stringValue\":\"");
        let _ = write_as_string(json, &mut self.buf);
        self.buf.extend_from_slice(b"\"}}");
    }

    pub fn int(&mut self, key: &str, value: u64) {
        self.open(key);
        self.buf.extend_from_slice(format!("\"intValue\":\"{value}\"}}}}").as_bytes());
    }

    /// A vector of JSON number tokens (checked) as an array of doubles.
    pub fn doubles(&mut self, key: &str, numbers: &[&[u8]]) {
        self.open(key);
        self.buf.extend_from_slice(b"\"arrayValue\":{\"values\":[");
        for (i, n) in numbers.iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            self.buf.extend_from_slice(b"{\"doubleValue\":");
            self.buf.extend_from_slice(n);
            self.buf.push(b'}');
        }
        self.buf.extend_from_slice(b"]}}}");
    }

    /// Attributes encoded elsewhere (by another `Attrs`).
    pub fn raw(&mut self, encoded: &[u8]) {
        self.buf.extend_from_slice(encoded);
    }

    pub fn encoded(&self) -> &[u8] {
        &self.buf
    }

    /// The list's inside, without the leading comma.
    fn list(&self) -> &[u8] {
        self.buf.get(1..).unwrap_or_default()
    }
}

/// The resource's attributes: `service.name`, then the operator's.
pub fn resource(service_name: &str, extra: &BTreeMap<String, String>) -> Vec<u8> {
    let mut attrs = Attrs::default();
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
    pub start: u64,
    pub end: u64,
    pub attrs: &'a Attrs,
    pub events: &'a [super::Event],
    pub error: Option<&'a str>,
}

/// One `Span` object (kind SERVER: the gateway serves the client's call).
pub fn span(p: &SpanParts) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.attrs.buf.len() + 256);
    out.extend_from_slice(
        format!("{{\"traceId\":\"{}\",\"spanId\":\"{}\"", hex(p.trace_id), hex(p.span_id)).as_bytes(),
    );
    if let Some(parent) = p.parent {
        out.extend_from_slice(format!(",\"parentSpanId\":\"{}\"", hex(parent)).as_bytes());
    }
    out.extend_from_slice(b",\"name\":");
    out.extend_from_slice(&json_string(p.name));
    out.extend_from_slice(
        format!(",\"kind\":2,\"startTimeUnixNano\":\"{}\",\"endTimeUnixNano\":\"{}\",\"attributes\":[", p.start, p.end)
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
pub fn export_body(resource: &[u8], spans: &[Vec<u8>]) -> Vec<u8> {
    let size = spans.iter().map(|s| s.len() + 1).sum::<usize>() + resource.len() + 128;
    let mut out = Vec::with_capacity(size);
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
