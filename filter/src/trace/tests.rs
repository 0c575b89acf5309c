//! Spans as a collector decodes them: requests run through the exchange on the in-memory host,
//! then the queued export is decoded, protobuf (the default) by a small decoder into protobuf's
//! JSON mapping, so both encodings are read (and compared) as the same JSON.

use std::collections::BTreeMap;
use std::rc::Rc;

use serde_json::Value;

use super::*;
use crate::config::parse;
use crate::exchange::{Exchange, Shared};
use crate::host::Flow;
use crate::testing::FakeHost;

use crate::testing::NoEnv;

const BACKENDS: &str = "backends:
  - {name: openai, schema: OpenAI, auth: {bearer: sk-upstream}}
  - {name: claude, schema: Anthropic, auth: {x_api_key: k}}
rules:
  - {match: {model: {prefix: claude}}, backends: [{name: claude}]}
  - {backends: [{name: openai}]}
consumer_header: x-consumer
";

const ANTHROPIC_STREAM: &[u8] = b"event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" \\\"world\\\"\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"get_weather\",\"input\":{}}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\":\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\" \\\"Paris\\\"}\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":1}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":5}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

fn shared(tracing: &str) -> Rc<Shared> {
    let text = format!("{BACKENDS}tracing: {tracing}\n");
    Rc::new(Shared::new(parse(text.as_bytes(), &NoEnv, 0).unwrap()))
}

fn default_shared() -> Rc<Shared> {
    shared("{cluster: otel}")
}

/// One request through the exchange: the client's body, then the provider's answer in chunks.
fn run(
    shared: &Rc<Shared>,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    content_type: &str,
    chunks: &[&[u8]],
) -> FakeHost {
    let mut x = Exchange::new(Some(shared.clone()));
    let mut host = FakeHost::request("POST", path, headers);
    host.now = 1_000;
    host.request_body = body.as_bytes().to_vec();
    if x.on_request_headers(&mut host, false) == Flow::Pause && host.reply.is_none() {
        x.on_request_body(&mut host, body.len(), true);
    }
    if host.reply.is_none() {
        host.response_headers = vec![(":status".into(), "200".into()), ("content-type".into(), content_type.into())];
        let buffered = x.on_response_headers(&mut host, false) == Flow::Pause;
        if buffered {
            let whole = chunks.concat();
            host.response_body = whole.clone();
            x.on_response_body(&mut host, whole.len(), true);
        } else {
            for (i, chunk) in chunks.iter().enumerate() {
                host.response_body = chunk.to_vec();
                x.on_response_body(&mut host, chunk.len(), i + 1 == chunks.len());
            }
        }
    }
    host.now = 5_000;
    x.on_log(&mut host);
    host
}

/// A strict decoder of the OTLP trace messages the exporter writes, into the OTLP/JSON mapping:
/// an unknown field or wire type fails the test.
mod pb {
    use serde_json::{json, Map, Value};

    enum Field<'a> {
        Varint(u64),
        Fixed64([u8; 8]),
        Bytes(&'a [u8]),
    }

    fn varint(bytes: &mut &[u8]) -> u64 {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = bytes.split_first().expect("a truncated varint");
            *bytes = rest;
            value |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return value;
            }
        }
        panic!("a varint longer than 10 bytes")
    }

    fn fields(mut bytes: &[u8]) -> Vec<(u64, Field<'_>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let key = varint(&mut bytes);
            let field = match key & 7 {
                0 => Field::Varint(varint(&mut bytes)),
                1 => {
                    let (fixed, rest) = bytes.split_first_chunk::<8>().expect("a truncated fixed64");
                    bytes = rest;
                    Field::Fixed64(*fixed)
                }
                2 => {
                    let len = varint(&mut bytes) as usize;
                    assert!(len <= bytes.len(), "a length past the end");
                    let (inner, rest) = bytes.split_at(len);
                    bytes = rest;
                    Field::Bytes(inner)
                }
                wire => panic!("wire type {wire}"),
            };
            out.push((key >> 3, field));
        }
        out
    }

    fn text(b: &[u8]) -> Value {
        Value::String(String::from_utf8(b.to_vec()).expect("strings are UTF-8"))
    }

    fn hex(b: &[u8]) -> Value {
        Value::String(super::hex(b))
    }

    fn any(b: &[u8]) -> Value {
        let mut out = Map::new();
        for (n, f) in fields(b) {
            let (key, value) = match (n, f) {
                (1, Field::Bytes(s)) => ("stringValue", text(s)),
                (2, Field::Varint(v)) => ("boolValue", json!(v != 0)),
                (3, Field::Varint(v)) => ("intValue", json!((v as i64).to_string())),
                (4, Field::Fixed64(d)) => ("doubleValue", json!(f64::from_le_bytes(d))),
                (5, Field::Bytes(a)) => ("arrayValue", json!({"values": repeated(a, 1, any)})),
                (n, _) => panic!("AnyValue field {n}"),
            };
            out.insert(key.into(), value);
        }
        Value::Object(out)
    }

    fn key_value(b: &[u8]) -> Value {
        let mut out = Map::new();
        for (n, f) in fields(b) {
            match (n, f) {
                (1, Field::Bytes(k)) => out.insert("key".into(), text(k)),
                (2, Field::Bytes(v)) => out.insert("value".into(), any(v)),
                (n, _) => panic!("KeyValue field {n}"),
            };
        }
        Value::Object(out)
    }

    /// The messages of field `number` (every other field must be known by the caller).
    fn repeated(b: &[u8], number: u64, decode: fn(&[u8]) -> Value) -> Vec<Value> {
        fields(b)
            .into_iter()
            .filter(|(n, _)| *n == number)
            .map(|(_, f)| match f {
                Field::Bytes(m) => decode(m),
                _ => panic!("field {number} is not a message"),
            })
            .collect()
    }

    fn event(b: &[u8]) -> Value {
        let mut out = Map::new();
        let mut attributes = Vec::new();
        for (n, f) in fields(b) {
            match (n, f) {
                (1, Field::Fixed64(t)) => out.insert("timeUnixNano".into(), json!(u64::from_le_bytes(t).to_string())),
                (2, Field::Bytes(name)) => out.insert("name".into(), text(name)),
                (3, Field::Bytes(kv)) => {
                    attributes.push(key_value(kv));
                    continue;
                }
                (n, _) => panic!("Event field {n}"),
            };
        }
        out.insert("attributes".into(), Value::Array(attributes));
        Value::Object(out)
    }

    fn span(b: &[u8]) -> Value {
        let mut out = Map::new();
        let mut attributes = Vec::new();
        let mut events = Vec::new();
        for (n, f) in fields(b) {
            let (key, value) = match (n, f) {
                (1, Field::Bytes(id)) => ("traceId", hex(id)),
                (2, Field::Bytes(id)) => ("spanId", hex(id)),
                (4, Field::Bytes(id)) => ("parentSpanId", hex(id)),
                (5, Field::Bytes(name)) => ("name", text(name)),
                (6, Field::Varint(kind)) => ("kind", json!(kind)),
                (7, Field::Fixed64(t)) => ("startTimeUnixNano", json!(u64::from_le_bytes(t).to_string())),
                (8, Field::Fixed64(t)) => ("endTimeUnixNano", json!(u64::from_le_bytes(t).to_string())),
                (9, Field::Bytes(kv)) => {
                    attributes.push(key_value(kv));
                    continue;
                }
                (11, Field::Bytes(e)) => {
                    events.push(event(e));
                    continue;
                }
                (15, Field::Bytes(status)) => {
                    let mut st = Map::new();
                    for (n, f) in fields(status) {
                        match (n, f) {
                            (2, Field::Bytes(m)) => st.insert("message".into(), text(m)),
                            (3, Field::Varint(c)) => st.insert("code".into(), json!(c)),
                            (n, _) => panic!("Status field {n}"),
                        };
                    }
                    ("status", Value::Object(st))
                }
                (n, _) => panic!("Span field {n}"),
            };
            assert!(out.insert(key.into(), value).is_none(), "{key} twice");
        }
        out.insert("attributes".into(), Value::Array(attributes));
        if !events.is_empty() {
            out.insert("events".into(), Value::Array(events));
        }
        Value::Object(out)
    }

    fn scope_spans(b: &[u8]) -> Value {
        let scope = fields(b).into_iter().find_map(|(n, f)| match (n, f) {
            (1, Field::Bytes(scope)) => Some(scope),
            _ => None,
        });
        let name = fields(scope.expect("a scope")).into_iter().find_map(|(n, f)| match (n, f) {
            (1, Field::Bytes(name)) => Some(text(name)),
            _ => None,
        });
        json!({"scope": {"name": name}, "spans": repeated(b, 2, span)})
    }

    fn resource_spans(b: &[u8]) -> Value {
        let resource = repeated(b, 1, |r| json!({"attributes": repeated(r, 1, key_value)}));
        assert_eq!(resource.len(), 1);
        json!({"resource": resource[0], "scopeSpans": repeated(b, 2, scope_spans)})
    }

    /// An `ExportTraceServiceRequest`.
    pub fn export(b: &[u8]) -> Value {
        assert!(fields(b).iter().all(|(n, _)| *n == 1));
        json!({"resourceSpans": repeated(b, 1, resource_spans)})
    }
}

/// An export request's body, decoded into the OTLP/JSON shape whatever its encoding.
fn decode(settings: &Settings, body: &[u8]) -> Value {
    match settings.encoding {
        Encoding::Json => {
            let mut export = serde_json::from_slice(body).expect("the export is JSON");
            doubles_as_f64(&mut export);
            export
        }
        Encoding::Protobuf => pb::export(body),
    }
}

/// JSON's `"doubleValue": 1` is protobuf's `1.0`.
fn doubles_as_f64(value: &mut Value) {
    match value {
        Value::Object(map) => map.iter_mut().for_each(|(key, v)| match (key.as_str(), v.as_f64()) {
            ("doubleValue", Some(d)) => *v = serde_json::json!(d),
            _ => doubles_as_f64(v),
        }),
        Value::Array(items) => items.iter_mut().for_each(doubles_as_f64),
        _ => {}
    }
}

/// The export request's spans, decoded.
fn exported(shared: &Shared) -> Value {
    let tracing = shared.tracing.as_ref().unwrap();
    let (body, count) = tracing.exporter.borrow_mut().next_batch(&tracing.settings).expect("a batch");
    let export = decode(&tracing.settings, &body);
    let spans = export["resourceSpans"][0]["scopeSpans"][0]["spans"].clone();
    assert_eq!(spans.as_array().unwrap().len(), count);
    export
}

fn only_span(shared: &Shared) -> Value {
    let export = exported(shared);
    export["resourceSpans"][0]["scopeSpans"][0]["spans"][0].clone()
}

/// Attributes by key: strings as strings, ints as their decimal text, arrays as JSON.
fn attrs(span: &Value) -> BTreeMap<String, String> {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| {
            let v = &kv["value"];
            let text = v["stringValue"]
                .as_str()
                .or(v["intValue"].as_str())
                .map_or_else(|| v["arrayValue"].to_string(), str::to_string);
            (kv["key"].as_str().unwrap().to_string(), text)
        })
        .collect()
}

fn get<'a>(a: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    a.get(key).map_or_else(|| panic!("no attribute {key} in {a:#?}"), String::as_str)
}

#[test]
fn chat_pass_through_joins_the_clients_trace_and_records_messages_and_tokens() {
    let shared = default_shared();
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let body = r#"{"model":"gpt-4o","temperature":0.2,"messages":[{"role":"system","content":"Be brief."},
        {"role":"user","content":[{"type":"text","text":"Say \"hi\""},{"type":"image_url","image_url":{"url":"http://x"}}]}]}"#;
    let answer = br#"{"id":"c1","object":"chat.completion","model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"hi \"there\"","tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;
    let host = run(
        &shared,
        "/v1/chat/completions",
        &[("traceparent", parent), ("x-consumer", "team-a")],
        body,
        "application/json",
        &[&answer[..40], &answer[40..]],
    );
    let span = only_span(&shared);
    assert_eq!(span["traceId"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(span["parentSpanId"], "b7ad6b7169203331");
    assert_eq!(span["name"], "ChatCompletion");
    assert_eq!((span["startTimeUnixNano"].as_str(), span["endTimeUnixNano"].as_str()), (Some("1000"), Some("1000")));
    assert_eq!(span["status"]["code"], 1);
    let span_id = span["spanId"].as_str().unwrap();
    assert_eq!(span_id.len(), 16);
    assert_eq!(
        host.header("traceparent").unwrap(),
        format!("00-0af7651916cd43dd8448eb211c80319c-{span_id}-01"),
        "the provider's parent is the gateway's span"
    );
    let a = attrs(&span);
    assert_eq!(get(&a, "openinference.span.kind"), "LLM");
    assert_eq!(get(&a, "llm.model_name"), "gpt-4o");
    assert_eq!(get(&a, "llm.provider"), "openai");
    assert_eq!(get(&a, "llmgw.backend"), "openai");
    assert_eq!(get(&a, "llmgw.consumer"), "team-a");
    let params: Value = serde_json::from_str(get(&a, "llm.invocation_parameters")).unwrap();
    assert_eq!(params, serde_json::json!({"model": "gpt-4o", "temperature": 0.2}));
    let input: Value = serde_json::from_str(get(&a, "input.value")).unwrap();
    assert_eq!(input["messages"][0]["content"], "Be brief.");
    assert_eq!(get(&a, "llm.input_messages.0.message.role"), "system");
    assert_eq!(get(&a, "llm.input_messages.0.message.content"), "Be brief.");
    assert_eq!(get(&a, "llm.input_messages.1.message.content"), "Say \"hi\"");
    assert_eq!(get(&a, "llm.output_messages.0.message.role"), "assistant");
    assert_eq!(get(&a, "llm.output_messages.0.message.content"), "hi \"there\"");
    assert_eq!(get(&a, "llm.output_messages.0.message.tool_calls.0.tool_call.function.name"), "f");
    assert_eq!(get(&a, "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments"), "{\"a\":1}");
    assert_eq!(get(&a, "output.mime_type"), "application/json");
    assert_eq!(
        (get(&a, "llm.token_count.prompt"), get(&a, "llm.token_count.completion"), get(&a, "llm.token_count.total")),
        ("12", "3", "15")
    );
    assert_eq!(get(&a, "http.response.status_code"), "200");
    assert!(!a.contains_key("error.type"));
}

#[test]
fn a_streamed_chat_translated_from_anthropic_is_assembled_from_the_clients_chunks() {
    let shared = default_shared();
    let body =
        r#"{"model":"claude-x","stream":true,"max_tokens":50,"messages":[{"role":"user","content":"Weather?"}]}"#;
    let chunks: Vec<&[u8]> = ANTHROPIC_STREAM.chunks(37).collect();
    let host = run(&shared, "/v1/chat/completions", &[], body, "text/event-stream", &chunks);
    let span = only_span(&shared);
    assert!(span.get("parentSpanId").is_none(), "a new trace");
    let trace_id = span["traceId"].as_str().unwrap();
    assert_eq!(trace_id.len(), 32);
    assert!(host.header("traceparent").unwrap().starts_with(&format!("00-{trace_id}-")));
    let a = attrs(&span);
    assert_eq!(get(&a, "llm.provider"), "anthropic");
    assert_eq!(get(&a, "llm.output_messages.0.message.role"), "assistant");
    assert_eq!(get(&a, "llm.output_messages.0.message.content"), "Hello \"world\"");
    assert_eq!(get(&a, "output.value"), "Hello \"world\"");
    assert_eq!(get(&a, "llm.output_messages.0.message.tool_calls.0.tool_call.function.name"), "get_weather");
    assert_eq!(
        get(&a, "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments"),
        "{\"city\": \"Paris\"}"
    );
    assert_eq!((get(&a, "llm.token_count.prompt"), get(&a, "llm.token_count.completion")), ("10", "5"));
}

#[test]
fn anthropic_messages_streamed_and_whole() {
    let shared = default_shared();
    let body = r#"{"model":"claude-x","stream":true,"max_tokens":50,"system":[{"type":"text","text":"Sys"}],
        "messages":[{"role":"user","content":[{"type":"text","text":"Weather?"}]},
        {"role":"assistant","content":[{"type":"tool_use","id":"t0","name":"w","input":{"c":"Oslo"}}]},
        {"role":"user","content":[{"type":"tool_result","tool_use_id":"t0","content":"rain"}]}]}"#;
    run(&shared, "/v1/messages", &[], body, "text/event-stream", &[ANTHROPIC_STREAM]);
    let span = only_span(&shared);
    assert_eq!(span["name"], "Message");
    let a = attrs(&span);
    assert_eq!(get(&a, "llm.input_messages.0.message.role"), "system");
    assert_eq!(get(&a, "llm.input_messages.0.message.content"), "Sys");
    assert_eq!(get(&a, "llm.input_messages.2.message.tool_calls.0.tool_call.function.arguments"), "{\"c\":\"Oslo\"}");
    assert_eq!(get(&a, "llm.input_messages.3.message.content"), "rain");
    assert_eq!(get(&a, "llm.output_messages.0.message.content"), "Hello \"world\"");
    assert_eq!(get(&a, "llm.output_messages.0.message.tool_calls.0.tool_call.id"), "toolu_1");

    let body = r#"{"model":"claude-x","max_tokens":50,"messages":[{"role":"user","content":"Hi"}]}"#;
    let answer = br#"{"id":"m","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"Yo"}],"stop_reason":"end_turn","usage":{"input_tokens":4,"output_tokens":2}}"#;
    run(&shared, "/v1/messages", &[], body, "application/json", &[answer]);
    let a = attrs(&only_span(&shared));
    assert_eq!(get(&a, "llm.output_messages.0.message.content"), "Yo");
    assert_eq!(get(&a, "llm.token_count.total"), "6");
}

#[test]
fn responses_whole_and_streamed() {
    let shared = default_shared();
    let body = r#"{"model":"gpt-4o","instructions":"Be terse","input":"Hi there","max_output_tokens":20}"#;
    let answer = br#"{"id":"r","object":"response","output":[{"type":"message","role":"assistant","content":[{"type":"output_text","text":"Hello"}]},{"type":"function_call","call_id":"c9","name":"g","arguments":"{}"}],"usage":{"input_tokens":5,"output_tokens":1,"total_tokens":6}}"#;
    run(&shared, "/v1/responses", &[], body, "application/json", &[answer]);
    let span = only_span(&shared);
    assert_eq!(span["name"], "Response");
    let a = attrs(&span);
    assert_eq!(get(&a, "llm.input_messages.0.message.content"), "Be terse");
    assert_eq!(
        (get(&a, "llm.input_messages.1.message.role"), get(&a, "llm.input_messages.1.message.content")),
        ("user", "Hi there")
    );
    assert_eq!(get(&a, "llm.output_messages.0.message.content"), "Hello");
    assert_eq!(get(&a, "llm.output_messages.0.message.tool_calls.0.tool_call.id"), "c9");
    assert!(get(&a, "llm.invocation_parameters").contains("max_output_tokens"));

    let body =
        r#"{"model":"gpt-4o","stream":true,"input":[{"role":"user","content":[{"type":"input_text","text":"Q"}]}]}"#;
    let stream = b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hel\"}\n\n\
event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"output\":[{\"type\":\"message\",\"role\":\"assistant\",\"content\":[{\"type\":\"output_text\",\"text\":\"Hello\"}]}],\"usage\":{\"input_tokens\":2,\"output_tokens\":1,\"total_tokens\":3}}}\n\n";
    run(&shared, "/v1/responses", &[], body, "text/event-stream", &[stream]);
    let a = attrs(&only_span(&shared));
    assert_eq!(get(&a, "llm.input_messages.0.message.content"), "Q");
    assert_eq!(get(&a, "llm.output_messages.0.message.content"), "Hello");
    assert_eq!(get(&a, "llm.token_count.total"), "3");
}

#[test]
fn embeddings_record_texts_and_vectors_unless_hidden() {
    let body = r#"{"model":"text-embedding-3-small","input":["alpha","beta"]}"#;
    let answer = br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5,-1.25e-3]},{"object":"embedding","index":1,"embedding":[1,2]}],"usage":{"prompt_tokens":4,"total_tokens":4}}"#;
    let plain = default_shared();
    run(&plain, "/v1/embeddings", &[], body, "application/json", &[answer]);
    let span = only_span(&plain);
    assert_eq!(span["name"], "CreateEmbeddings");
    let a = attrs(&span);
    assert_eq!(get(&a, "openinference.span.kind"), "EMBEDDING");
    assert_eq!(get(&a, "embedding.model_name"), "text-embedding-3-small");
    assert_eq!(get(&a, "embedding.embeddings.1.embedding.text"), "beta");
    let vector: Value = serde_json::from_str(get(&a, "embedding.embeddings.0.embedding.vector")).unwrap();
    assert_eq!(vector["values"][1]["doubleValue"], -0.00125);
    assert_eq!(get(&a, "llm.token_count.prompt"), "4");

    let hidden = shared("{cluster: otel, hide_embeddings_text: true, hide_embeddings_vectors: true}");
    run(&hidden, "/v1/embeddings", &[], body, "application/json", &[answer]);
    let a = attrs(&only_span(&hidden));
    assert!(!a.keys().any(|k| k.starts_with("embedding.embeddings")), "{a:#?}");
    assert_eq!(get(&a, "llm.token_count.prompt"), "4");
}

#[test]
fn hidden_inputs_and_outputs_never_leave() {
    let hidden = shared("{cluster: otel, hide_inputs: true, hide_outputs: true}");
    let body =
        r#"{"model":"claude-x","stream":true,"max_tokens":50,"messages":[{"role":"user","content":"SECRET-PROMPT"}]}"#;
    run(&hidden, "/v1/chat/completions", &[], body, "text/event-stream", &[ANTHROPIC_STREAM]);
    let answer = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"SECRET-ANSWER"}}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"SECRET-PROMPT"}]}"#;
    run(&hidden, "/v1/chat/completions", &[], body, "application/json", &[answer]);
    let tracing = hidden.tracing.as_ref().unwrap();
    let (export, count) = tracing.exporter.borrow_mut().next_batch(&tracing.settings).unwrap();
    assert_eq!(count, 2);
    let text = String::from_utf8_lossy(&export);
    assert!(!text.contains("SECRET") && !text.contains("Hello") && !text.contains("world"), "{text}");
    let export = decode(&tracing.settings, &export);
    let a = attrs(&export["resourceSpans"][0]["scopeSpans"][0]["spans"][1]);
    assert!(!a.keys().any(|k| k.starts_with("llm.input_messages") || k.starts_with("llm.output_messages")));
    assert_eq!(get(&a, "llm.token_count.total"), "2");
    assert_eq!(get(&a, "llm.model_name"), "gpt-4o");
}

#[test]
fn content_is_capped_per_span_and_stays_valid_json() {
    let capped = shared("{cluster: otel, max_span_content_bytes: 300}");
    let long = "\\u00e9ab\\\"".repeat(200);
    let body = format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{long}"}}]}}"#);
    let answer = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"ok"}}]}"#;
    run(&capped, "/v1/chat/completions", &[], &body, "application/json", &[answer]);
    let a = attrs(&only_span(&capped));
    assert!(!a.contains_key("input.value"), "the body does not fit");
    let content = get(&a, "llm.input_messages.0.message.content");
    assert!(!content.is_empty() && content.len() < 300 && content.starts_with("éab\""), "{content}");
}

#[test]
fn gateway_refusals_and_unsampled_traces() {
    let shared = default_shared();
    run(&shared, "/v1/chat/completions", &[], r#"{"model":"gpt-4o","stream":"yes","messages":[]}"#, "", &[]);
    let span = only_span(&shared);
    assert_eq!(span["status"]["code"], 2);
    let a = attrs(&span);
    assert_eq!(get(&a, "http.response.status_code"), "400");
    assert_eq!(get(&a, "error.type"), "invalid_request");

    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    run(
        &shared,
        "/v1/chat/completions",
        &[("traceparent", unsampled)],
        r#"{"model":"gpt-4o","messages":[]}"#,
        "application/json",
        &[b"{}"],
    );
    assert_eq!(shared.tracing.as_ref().unwrap().exporter.borrow().queued(), 0);
    // Not an LLM call: no span.
    run(&shared, "/v1/models", &[], "", "", &[]);
    assert_eq!(shared.tracing.as_ref().unwrap().exporter.borrow().queued(), 0);
}

#[test]
fn a_cache_hit_is_a_successful_span() {
    let text = "backends: [{name: openai, schema: OpenAI}]\n\
                rules: [{backends: [{name: openai}], cache: {mode: exact}}]\ntracing: {cluster: otel}\n";
    let shared = Rc::new(Shared::new(parse(text.as_bytes(), &NoEnv, 0).unwrap()));
    let body = r#"{"model":"gpt-4o","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#;
    let answer = br#"{"id":"c1","object":"chat.completion","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
    let first = run(&shared, "/v1/chat/completions", &[], body, "application/json", &[answer]);
    // The same request again, on a host holding the first one's shared data: a hit.
    let mut x = Exchange::new(Some(shared.clone()));
    let mut host = FakeHost::request("POST", "/v1/chat/completions", &[]);
    (host.shared, host.next_cas, host.now) = (first.shared, first.next_cas, 6_000);
    host.request_body = body.as_bytes().to_vec();
    x.on_request_headers(&mut host, false);
    x.on_request_body(&mut host, body.len(), true);
    assert_eq!(host.reply.as_ref().map(|r| r.0), Some(200), "a cache hit");
    x.on_log(&mut host);
    let export = exported(&shared);
    let spans = export["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().unwrap().clone();
    let hit = spans.last().unwrap();
    assert_eq!(hit["status"]["code"], 1, "{hit}");
    let a = attrs(hit);
    assert_eq!(get(&a, "http.response.status_code"), "200");
    assert!(!a.contains_key("error.type"), "{a:?}");
}

#[test]
fn a_full_queue_drops_and_counts() {
    let small = shared("{cluster: otel, max_queue_size: 1, max_export_batch_size: 1}");
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}"#;
    let answer: &[u8] = br#"{"choices":[]}"#;
    let first = run(&small, "/v1/chat/completions", &[], body, "application/json", &[answer]);
    assert!(!first.samples.iter().any(|s| s.name == SPANS_DROPPED));
    let second = run(&small, "/v1/chat/completions", &[], body, "application/json", &[answer]);
    assert!(second.samples.iter().any(|s| s.name == SPANS_DROPPED && s.value == 1));
    let tracing = small.tracing.as_ref().unwrap();
    let mut exporter = tracing.exporter.borrow_mut();
    let (_, count) = exporter.next_batch(&tracing.settings).unwrap();
    exporter.sent(7, count);
    assert_eq!(exporter.answered(7), 1);
    assert_eq!(exporter.answered(7), 0, "answered once");
}

#[test]
fn traceparent_parsing_and_resource() {
    assert!(parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").is_some());
    for bad in [
        "",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
    ] {
        assert!(parse_traceparent(bad).is_none(), "{bad}");
    }
    let s = shared("{cluster: otel, service_name: gw, resource_attributes: {deployment.environment: prod}}");
    run(&s, "/v1/chat/completions", &[], r#"{"model":"gpt-4o","messages":[]}"#, "application/json", &[b"{}"]);
    let export = exported(&s);
    let resource = attrs(&export["resourceSpans"][0]["resource"]);
    assert_eq!((get(&resource, "service.name"), get(&resource, "deployment.environment")), ("gw", "prod"));
    assert!(parse(format!("{BACKENDS}tracing: {{}}").as_bytes(), &NoEnv, 0).is_err(), "a cluster is required");
    assert!(parse(format!("{BACKENDS}tracing: {{exporter: console}}").as_bytes(), &NoEnv, 0).is_ok());
}

/// Every client API, streamed and whole, through a gateway traced with `tracing`; the export decoded.
fn all_apis(tracing: &str) -> Value {
    let s = shared(tracing);
    let chat = r#"{"model":"gpt-4o","temperature":0.25,"top_p":1,"max_tokens":64,"messages":[{"role":"system","content":"Be \"brief\"\n"},{"role":"user","content":"Hi é"}]}"#;
    let answer = br#"{"id":"c1","object":"chat.completion","model":"gpt-4o-2024","choices":[{"index":0,"message":{"role":"assistant","content":"Yo \u00e9","tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;
    run(&s, "/v1/chat/completions", &[("x-consumer", "team-a")], chat, "application/json", &[answer]);
    let streamed =
        r#"{"model":"claude-x","stream":true,"max_tokens":50,"messages":[{"role":"user","content":"Weather?"}]}"#;
    run(
        &s,
        "/v1/chat/completions",
        &[],
        streamed,
        "text/event-stream",
        &ANTHROPIC_STREAM.chunks(29).collect::<Vec<_>>(),
    );
    run(&s, "/v1/messages", &[], streamed, "text/event-stream", &[ANTHROPIC_STREAM]);
    let responses = r#"{"model":"gpt-4o","instructions":"Be terse","input":"Hi there","max_output_tokens":20}"#;
    let answer = br#"{"id":"r","object":"response","model":"gpt-4o","status":"completed","output":[{"type":"message","role":"assistant","content":[{"type":"output_text","text":"Hello"}]}],"usage":{"input_tokens":5,"output_tokens":1,"total_tokens":6}}"#;
    run(&s, "/v1/responses", &[], responses, "application/json", &[answer]);
    let embeddings = r#"{"model":"text-embedding-3-small","input":["alpha","beta"]}"#;
    let answer = br#"{"object":"list","model":"text-embedding-3-small","data":[{"object":"embedding","index":0,"embedding":[0.5,-1.25e-3]}],"usage":{"prompt_tokens":4,"total_tokens":4}}"#;
    run(&s, "/v1/embeddings", &[], embeddings, "application/json", &[answer]);
    run(&s, "/v1/chat/completions", &[], r#"{"model":"gpt-4o","stream":"yes","messages":[]}"#, "", &[]);
    let export = exported(&s);
    assert_eq!(export["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().unwrap().len(), 6);
    export
}

#[test]
fn protobuf_and_json_exports_carry_the_same_spans() {
    for (extra, semconv) in [
        ("", ""),
        (", hide_inputs: true, hide_outputs: true", ""),
        (", hide_embeddings_vectors: true", ", semconv: openinference"),
        ("", ", semconv: gen_ai"),
        (", hide_inputs: true, hide_outputs: true", ", semconv: gen_ai"),
    ] {
        let protobuf = all_apis(&format!("{{cluster: otel{extra}{semconv}}}"));
        let explicit = all_apis(&format!("{{cluster: otel, protocol: http/protobuf{extra}{semconv}}}"));
        let json = all_apis(&format!("{{cluster: otel, protocol: http/json{extra}{semconv}}}"));
        assert_eq!(protobuf, explicit);
        assert_eq!(protobuf, json, "{extra}{semconv}");
    }
    let s = shared("{cluster: otel}");
    let settings = &s.tracing.as_ref().unwrap().settings;
    assert_eq!(settings.encoding.content_type(), "application/x-protobuf");
    let s = shared("{exporter: console}");
    assert_eq!(s.tracing.as_ref().unwrap().settings.encoding, Encoding::Json, "the console logs text");
    for bad in ["{cluster: otel, protocol: grpc}", "{cluster: otel, semconv: otel}"] {
        assert!(parse(format!("{BACKENDS}tracing: {bad}").as_bytes(), &NoEnv, 0).is_err(), "{bad}");
    }
    let err = parse(format!("{BACKENDS}tracing: {{cluster: otel, protocol: grpc}}").as_bytes(), &NoEnv, 0);
    assert!(format!("{:?}", err.err().unwrap()).contains("http/protobuf"));
}

fn spans(export: &Value) -> Vec<Value> {
    export["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().unwrap().clone()
}

#[test]
fn gen_ai_semantic_conventions_for_every_api() {
    let spans = spans(&all_apis("{cluster: otel, semconv: gen_ai}"));
    let names: Vec<&str> = spans.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["chat gpt-4o", "chat claude-x", "chat claude-x", "chat gpt-4o", "embeddings text-embedding-3-small", "chat"]
    );
    assert!(spans.iter().all(|s| s["kind"] == 3), "CLIENT spans");
    let all: Vec<BTreeMap<String, String>> = spans.iter().map(attrs).collect();
    assert!(
        all.iter()
            .flat_map(|a| a.keys())
            .all(|k| !k.starts_with("llm.") && !k.starts_with("openinference") && !k.starts_with("input.")),
        "no OpenInference attributes: {all:#?}"
    );

    let chat = &all[0];
    assert_eq!(get(chat, "gen_ai.operation.name"), "chat");
    assert_eq!(get(chat, "gen_ai.provider.name"), "openai");
    assert_eq!(get(chat, "gen_ai.request.model"), "gpt-4o");
    assert_eq!(get(chat, "gen_ai.response.model"), "gpt-4o-2024");
    assert_eq!(get(chat, "gen_ai.request.max_tokens"), "64");
    let doubles = |span: &Value, key: &str| {
        span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|kv| kv["key"] == key)
            .map(|kv| kv["value"]["doubleValue"].clone())
    };
    assert_eq!(doubles(&spans[0], "gen_ai.request.temperature"), Some(serde_json::json!(0.25)));
    assert_eq!(doubles(&spans[0], "gen_ai.request.top_p"), Some(serde_json::json!(1.0)));
    assert_eq!((get(chat, "gen_ai.usage.input_tokens"), get(chat, "gen_ai.usage.output_tokens")), ("12", "3"));
    let reasons: Value = serde_json::from_str(get(chat, "gen_ai.response.finish_reasons")).unwrap();
    assert_eq!(reasons, serde_json::json!({"values": [{"stringValue": "tool_calls"}]}));
    let input: Value = serde_json::from_str(get(chat, "gen_ai.input.messages")).unwrap();
    assert_eq!(
        input,
        serde_json::json!([{"role": "system", "parts": [{"type": "text", "content": "Be \"brief\"\n"}]},
                           {"role": "user", "parts": [{"type": "text", "content": "Hi é"}]}])
    );
    let output: Value = serde_json::from_str(get(chat, "gen_ai.output.messages")).unwrap();
    assert_eq!(
        output,
        serde_json::json!([{"role": "assistant", "finish_reason": "tool_calls", "parts": [
            {"type": "text", "content": "Yo é"},
            {"type": "tool_call", "id": "call_1", "name": "f", "arguments": "{\"a\":1}"}]}])
    );
    assert_eq!(get(chat, "llmgw.consumer"), "team-a");

    // A stream translated from Anthropic: the client's chunks give model, reason and text.
    let streamed = &all[1];
    assert_eq!(get(streamed, "gen_ai.provider.name"), "anthropic");
    assert_eq!(get(streamed, "gen_ai.response.model"), "claude-x");
    let output: Value = serde_json::from_str(get(streamed, "gen_ai.output.messages")).unwrap();
    assert_eq!(output[0]["parts"][0], serde_json::json!({"type": "text", "content": "Hello \"world\""}));
    assert_eq!(output[0]["parts"][1]["arguments"], "{\"city\": \"Paris\"}");
    assert_eq!(output[0]["finish_reason"], "tool_calls");
    assert_eq!((get(streamed, "gen_ai.usage.input_tokens"), get(streamed, "gen_ai.usage.output_tokens")), ("10", "5"));

    let messages = &all[2];
    assert_eq!(get(messages, "gen_ai.response.finish_reasons"), r#"{"values":[{"stringValue":"tool_use"}]}"#);
    let responses = &all[3];
    assert_eq!(get(responses, "gen_ai.request.max_tokens"), "20");
    let input: Value = serde_json::from_str(get(responses, "gen_ai.input.messages")).unwrap();
    assert_eq!(input[1], serde_json::json!({"role": "user", "parts": [{"type": "text", "content": "Hi there"}]}));
    let embeddings = &all[4];
    assert_eq!(get(embeddings, "gen_ai.operation.name"), "embeddings");
    assert_eq!(get(embeddings, "gen_ai.usage.input_tokens"), "4");
    assert!(!embeddings.keys().any(|k| k.contains("messages")));
    let refused = &all[5];
    assert_eq!(get(refused, "gen_ai.operation.name"), "chat", "refused before its body was read");
    assert_eq!((get(refused, "error.type"), spans[5]["status"]["code"].as_u64()), ("invalid_request", Some(2)));

    let hidden = all_apis("{cluster: otel, semconv: gen_ai, hide_inputs: true, hide_outputs: true}");
    let text = hidden.to_string();
    assert!(!text.contains("messages") && !text.contains("Hello") && !text.contains("brief"), "{text}");
    assert_eq!(
        get(&attrs(&hidden["resourceSpans"][0]["scopeSpans"][0]["spans"][0]), "gen_ai.usage.input_tokens"),
        "12"
    );
}

#[path = "tests_headers.rs"]
mod headers;
