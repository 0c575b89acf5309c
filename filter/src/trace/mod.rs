//! OpenTelemetry tracing with OpenInference attributes: one span per chat completions, Responses,
//! embeddings or Anthropic Messages request (or, opted in, GenAI semantic-convention attributes),
//! exported as OTLP/HTTP protobuf or JSON.
//!
//! Everything here is plain Rust: the exchange feeds a [`Span`] what it sees (request headers and
//! body, the bytes the client gets, status and usage) and queues the encoded span in the VM's
//! [`Exporter`]; `glue` only flushes that queue on the root context's tick with `dispatch_http_call`.
//! Content is copied as JSON string-literal text (escapes kept), never decoded and re-encoded, and
//! every span has a byte budget.

mod content;
mod genai;
mod otlp;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};

use crate::api::Endpoint;
use crate::plan::header;
use crate::sse;
use crate::usage::TokenUsage;

pub use otlp::{export_body, Encoding};

/// Which semantic conventions spans follow (`tracing.semconv`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Semconv {
    #[default]
    OpenInference,
    /// OpenTelemetry's GenAI conventions (`gen_ai.*`).
    GenAi,
}

/// The request header that carries W3C trace context, in and out.
pub const TRACEPARENT: &str = "traceparent";
/// Spans dropped (queue full, export refused or failed): a counter without labels.
pub const SPANS_DROPPED: &str = "llmgw.trace_spans_dropped_total";
/// Spans a collector accepted.
pub const SPANS_EXPORTED: &str = "llmgw.trace_spans_exported_total";
/// At most this many exports wait for the collector at once; past it spans wait in the queue.
const MAX_IN_FLIGHT: usize = 4;

/// OpenInference's redaction switches (`OPENINFERENCE_HIDE_*`): hidden content is never copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hide {
    pub inputs: bool,
    pub outputs: bool,
    pub embeddings_text: bool,
    pub embeddings_vectors: bool,
}

/// The compiled `tracing` section of the plugin configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Envoy cluster of the OTLP/HTTP collector; `None`: spans are logged (the `console` exporter).
    pub cluster: Option<String>,
    pub authority: String,
    pub path: String,
    /// The wire encoding (`http/protobuf` or `http/json`); the resource is encoded in it.
    pub encoding: Encoding,
    pub semconv: Semconv,
    /// The resource's attributes, encoded (`service.name` first).
    pub resource: Vec<u8>,
    pub max_queue_size: usize,
    pub max_queue_bytes: usize,
    pub max_export_batch_size: usize,
    pub schedule_delay_ms: u64,
    pub export_timeout_ms: u64,
    pub hide: Hide,
    /// Content (messages, input and output values, vectors) a span carries at most.
    pub max_span_content_bytes: usize,
    /// (request header, span attribute) pairs copied onto every span.
    pub request_header_attributes: Vec<(String, String)>,
}

impl Settings {
    pub const DEFAULT_MAX_QUEUE_SIZE: usize = 2048;
    pub const DEFAULT_MAX_QUEUE_BYTES: usize = 8 * 1024 * 1024;
    pub const DEFAULT_MAX_EXPORT_BATCH_SIZE: usize = 512;
    pub const DEFAULT_SCHEDULE_DELAY_MS: u64 = 5000;
    pub const DEFAULT_EXPORT_TIMEOUT_MS: u64 = 30000;
    pub const DEFAULT_MAX_SPAN_CONTENT_BYTES: usize = 64 * 1024;

    /// Settings with the defaults, for `service_name` and resource attributes `(key, value)`.
    pub fn new(
        cluster: Option<String>,
        encoding: Encoding,
        service_name: &str,
        resource: &BTreeMap<String, String>,
    ) -> Self {
        Settings {
            cluster,
            authority: String::new(),
            path: "/v1/traces".to_string(),
            encoding,
            semconv: Semconv::OpenInference,
            resource: otlp::resource(encoding, service_name, resource),
            max_queue_size: Self::DEFAULT_MAX_QUEUE_SIZE,
            max_queue_bytes: Self::DEFAULT_MAX_QUEUE_BYTES,
            max_export_batch_size: Self::DEFAULT_MAX_EXPORT_BATCH_SIZE,
            schedule_delay_ms: Self::DEFAULT_SCHEDULE_DELAY_MS,
            export_timeout_ms: Self::DEFAULT_EXPORT_TIMEOUT_MS,
            hide: Hide::default(),
            max_span_content_bytes: Self::DEFAULT_MAX_SPAN_CONTENT_BYTES,
            request_header_attributes: Vec::new(),
        }
    }
}

/// Tracing state of one VM: settings, id generator and export queue.
#[derive(Debug)]
pub struct Tracing {
    pub settings: Settings,
    ids: Cell<u64>,
    pub exporter: RefCell<Exporter>,
}

impl Tracing {
    pub fn new(settings: Settings) -> Self {
        Tracing { settings, ids: Cell::new(0), exporter: RefCell::new(Exporter::default()) }
    }

    /// 64 fresh bits (splitmix64, seeded from the clock at the VM's first span).
    fn next_id(&self, now: u64) -> u64 {
        let mut state = self.ids.get();
        if state == 0 {
            state = now ^ 0x5851_f42d_4c95_7f2d;
        }
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.ids.set(state);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let id = z ^ (z >> 31);
        // All-zero ids are invalid in W3C trace context.
        if id == 0 {
            1
        } else {
            id
        }
    }
}

/// OpenInference's `llm.provider` for a backend schema.
pub fn provider(schema: crate::config::Schema) -> &'static str {
    use crate::config::Schema;
    match schema {
        Schema::OpenAI => "openai",
        Schema::AzureOpenAI => "azure",
        Schema::Anthropic => "anthropic",
        Schema::AWSBedrock | Schema::AWSAnthropic => "aws",
        Schema::GCPVertexAI | Schema::GCPAnthropic => "google",
    }
}

/// Which client API a traced request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Chat,
    Responses,
    Embeddings,
    Messages,
}

impl Api {
    pub fn of(endpoint: Endpoint) -> Option<Api> {
        match endpoint {
            Endpoint::ChatCompletions => Some(Api::Chat),
            Endpoint::Responses => Some(Api::Responses),
            Endpoint::Embeddings => Some(Api::Embeddings),
            Endpoint::Messages => Some(Api::Messages),
            _ => None,
        }
    }

    fn span_name(self) -> &'static str {
        match self {
            Api::Chat => "ChatCompletion",
            Api::Responses => "Response",
            Api::Embeddings => "CreateEmbeddings",
            Api::Messages => "Message",
        }
    }
}

/// `traceparent`'s parts: version 00, trace id, parent span id, flags.
pub fn parse_traceparent(value: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let (trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if (trace.len(), parent.len(), flags.len()) != (32, 16, 2) {
        return None;
    }
    let mut ids = [0u8; 25];
    hex_decode(&[trace, parent, flags].concat(), &mut ids)?;
    let (trace, rest) = ids.split_first_chunk::<16>()?;
    let (parent, [flags]) = rest.split_first_chunk::<8>()? else { return None };
    let (trace, parent, flags) = (*trace, *parent, *flags);
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent, flags))
}

/// Lower-case hex digits into `out`, exactly filling it.
fn hex_decode(text: &str, out: &mut [u8]) -> Option<()> {
    let bytes = text.as_bytes();
    if bytes.len() != 2 * out.len() {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    for (byte, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let [high, low] = pair else { return None };
        *byte = digit(*high)? << 4 | digit(*low)?;
    }
    Some(())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let digit = |n: u8| char::from(if n < 10 { b'0' + n } else { b'a' + n - 10 });
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(digit(b >> 4));
        out.push(digit(b & 15));
    }
    out
}

/// One request's span, from its headers to its end.
pub struct Span {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    flags: u8,
    api: Api,
    semconv: Semconv,
    /// The requested model (GenAI's span name).
    model: String,
    start: u64,
    hide: Hide,
    /// Content bytes this span may still take.
    room: usize,
    /// Encoded attributes so far, each preceded by a comma.
    attrs: otlp::Attrs,
    /// A fallback rule's attempts, one event each.
    attempts: Vec<Event>,
    stream: bool,
    output: content::Output,
    /// A stream's events being cut.
    events: sse::Splitter,
    /// A whole answer (not streamed), held up to `room` bytes to be read at its end.
    body: Vec<u8>,
    body_overflow: bool,
}

impl Span {
    /// A span for a request of `endpoint`, joined to the client's `traceparent` if any; `None` for
    /// endpoints not traced and for a client trace that is not sampled.
    pub fn begin(tracing: &Tracing, endpoint: Endpoint, headers: &[(String, String)], now: u64) -> Option<Box<Span>> {
        let api = Api::of(endpoint)?;
        let (trace_id, parent, flags) = match header(headers, TRACEPARENT).and_then(parse_traceparent) {
            Some((_, _, flags)) if flags & 1 == 0 => return None,
            Some((trace, parent, flags)) => (trace, Some(parent), flags),
            None => {
                let (high, low) = (tracing.next_id(now), tracing.next_id(now));
                ((u128::from(high) << 64 | u128::from(low)).to_be_bytes(), None, 1)
            }
        };
        let settings = &tracing.settings;
        let encoding = settings.encoding;
        let mut attrs = otlp::Attrs::new(encoding);
        if settings.semconv == Semconv::GenAi {
            attrs.string("gen_ai.operation.name", genai::operation(api));
        }
        for (attribute, value) in crate::metrics::header_values(&settings.request_header_attributes, headers) {
            attrs.string(&attribute, &value);
        }
        Some(Box::new(Span {
            trace_id,
            span_id: tracing.next_id(now).to_be_bytes(),
            parent,
            flags,
            api,
            semconv: settings.semconv,
            model: String::new(),
            start: now,
            hide: settings.hide,
            room: settings.max_span_content_bytes,
            attrs,
            attempts: Vec::new(),
            stream: false,
            output: content::Output { vectors: otlp::Attrs::new(encoding), ..content::Output::default() },
            events: sse::Splitter::default(),
            body: Vec::new(),
            body_overflow: false,
        }))
    }

    /// The `traceparent` the provider gets: this span is its parent.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", hex(&self.trace_id), hex(&self.span_id), self.flags)
    }

    /// The client's request body (validated JSON): model, parameters and input content.
    pub fn request(&mut self, body: &[u8], model: &str, stream: bool) {
        self.stream = stream;
        if self.semconv == Semconv::GenAi {
            self.model = model.to_string();
            self.attrs.string("gen_ai.request.model", model);
            genai::request_parameters(&mut self.attrs, body);
            if !self.hide.inputs && self.api != Api::Embeddings {
                let messages = content::input_messages(self.api, body, &mut self.room);
                if !messages.is_empty() {
                    self.attrs.json_as_string("gen_ai.input.messages", &genai::messages_json(&messages, b""));
                }
            }
            return;
        }
        let kind = if self.api == Api::Embeddings { "EMBEDDING" } else { "LLM" };
        self.attrs.string("openinference.span.kind", kind);
        let model_key = if self.api == Api::Embeddings { "embedding.model_name" } else { "llm.model_name" };
        self.attrs.string(model_key, model);
        self.attrs.string("gen_ai.request.model", model);
        let params = content::invocation_parameters(self.api, body, &mut self.room);
        self.attrs.str_inside("llm.invocation_parameters", &params);
        if self.api == Api::Embeddings {
            if !self.hide.embeddings_text && !self.hide.inputs {
                content::write_embedding_texts(&mut self.attrs, body, &mut self.room);
            }
        } else if !self.hide.inputs {
            if body.len() <= self.room {
                self.room -= body.len();
                self.attrs.string("input.mime_type", "application/json");
                self.attrs.json_as_string("input.value", body);
            }
            let messages = content::input_messages(self.api, body, &mut self.room);
            otlp::write_messages(&mut self.attrs, "llm.input_messages", &messages);
        }
    }

    /// Where the request went: backend name, provider (`llm.provider`) and consumer.
    pub fn routed(&mut self, backend: &str, provider: &str, consumer: &str) {
        if self.semconv == Semconv::GenAi {
            self.attrs.string("gen_ai.provider.name", genai::provider(provider));
        } else {
            self.attrs.string("llm.provider", provider);
        }
        self.attrs.string("llmgw.backend", backend);
        if !consumer.is_empty() {
            self.attrs.string("llmgw.consumer", consumer);
        }
    }

    /// The attempts of a fallback rule's request (`Attempts` records, oldest first) as events;
    /// the last one answered: its backend is the span's, `provider` names its `llm.provider`.
    pub fn attempts(&mut self, record: &[u8], provider: impl Fn(&str) -> &'static str) {
        let mut last = None;
        for attempt in record.split(|&b| b == ATTEMPT_END).filter_map(Attempt::parse).take(MAX_ATTEMPTS) {
            let mut attrs = otlp::Attrs::for_event(&self.attrs);
            attrs.string("llmgw.backend", attempt.backend);
            if attempt.status != 0 {
                attrs.int("http.response.status_code", u64::from(attempt.status));
            }
            attrs.string("llmgw.attempt.outcome", attempt.outcome);
            self.attempts.push(Event { time: attempt.time, name: "llmgw.attempt", attrs });
            last = Some(attempt.backend);
        }
        if let Some(backend) = last {
            self.routed(backend, provider(backend), "");
        }
    }

    /// Bytes of the success body as the client gets them (in the client's API shape).
    pub fn response_bytes(&mut self, chunk: &[u8]) {
        if self.hide.outputs && (self.api != Api::Embeddings || self.hide.embeddings_vectors) {
            return;
        }
        if self.stream {
            let (api, output, room) = (self.api, &mut self.output, &mut self.room);
            self.events.push(chunk, |block| {
                let event = sse::parse_event(block);
                if event.has_data {
                    content::stream_event(api, event.data.as_bytes(), output, room);
                }
            });
        } else if !self.body_overflow {
            if self.body.len().saturating_add(chunk.len()) > self.room {
                self.body_overflow = true;
                self.body = Vec::new();
            } else {
                self.body.extend_from_slice(chunk);
            }
        }
    }

    /// The span, encoded: ended at `end` with the client's `status` (0: the stream did not end),
    /// `error` naming what went wrong, and the usage the provider reported.
    pub fn end(mut self, status: u16, error: Option<&str>, usage: Option<TokenUsage>, end: u64) -> Vec<u8> {
        self.finish_output();
        self.encode(status, error, usage, end)
    }

    fn finish_output(&mut self) {
        if !self.stream && !self.body_overflow && !self.body.is_empty() {
            let body = std::mem::take(&mut self.body);
            self.room = self.room.saturating_sub(body.len());
            content::whole_answer(self.api, &body, &mut self.output, &mut self.room);
            if !self.hide.outputs && self.api != Api::Embeddings && self.semconv == Semconv::OpenInference {
                self.attrs.string("output.mime_type", "application/json");
                self.attrs.json_as_string("output.value", &body);
            }
        }
        if self.semconv == Semconv::GenAi {
            self.genai_output();
            return;
        }
        if self.api == Api::Embeddings {
            if !self.hide.embeddings_vectors && !self.hide.outputs {
                self.attrs.raw(self.output.vectors.encoded());
            }
        } else if !self.hide.outputs {
            if self.stream && !self.output.message.content.is_empty() {
                self.attrs.string("output.mime_type", "text/plain");
                self.attrs.str_inside("output.value", &self.output.message.content);
            }
            if self.output.seen {
                otlp::write_messages(
                    &mut self.attrs,
                    "llm.output_messages",
                    std::slice::from_ref(&self.output.message),
                );
            }
        }
    }

    /// GenAI's response attributes: model, finish reasons and (unless hidden) the output message.
    fn genai_output(&mut self) {
        let output = &self.output;
        if !output.model.is_empty() {
            self.attrs.str_inside("gen_ai.response.model", &output.model);
        }
        if !output.finish_reason.is_empty() {
            self.attrs.strings_inside("gen_ai.response.finish_reasons", &[&output.finish_reason]);
        }
        if !self.hide.outputs && self.api != Api::Embeddings && output.seen {
            let json = genai::messages_json(std::slice::from_ref(&output.message), &output.finish_reason);
            self.attrs.json_as_string("gen_ai.output.messages", &json);
        }
    }

    fn encode(&mut self, status: u16, error: Option<&str>, usage: Option<TokenUsage>, end: u64) -> Vec<u8> {
        let genai = self.semconv == Semconv::GenAi;
        if let (true, Some(u)) = (genai, usage) {
            self.attrs.int("gen_ai.usage.input_tokens", u.input);
            self.attrs.int("gen_ai.usage.output_tokens", u.output);
        } else if let Some(u) = usage {
            self.attrs.int("llm.token_count.prompt", u.input);
            self.attrs.int("llm.token_count.completion", u.output);
            self.attrs.int("llm.token_count.total", u.total);
            if u.cached_input > 0 {
                self.attrs.int("llm.token_count.prompt_details.cache_read", u.cached_input);
            }
            if u.reasoning > 0 {
                self.attrs.int("llm.token_count.completion_details.reasoning", u.reasoning);
            }
        }
        if status != 0 {
            self.attrs.int("http.response.status_code", u64::from(status));
        }
        let error = match (status, error) {
            (_, Some(e)) => Some(e.to_string()),
            (0, None) => Some("incomplete".to_string()),
            (s, None) if s >= 400 => Some(s.to_string()),
            _ => None,
        };
        if let Some(e) = &error {
            self.attrs.string("error.type", e);
        }
        otlp::span(&otlp::SpanParts {
            trace_id: &self.trace_id,
            span_id: &self.span_id,
            parent: self.parent.as_ref().map(|p| p.as_slice()),
            name: &if genai {
                format!("{} {}", genai::operation(self.api), self.model).trim_end().to_string()
            } else {
                self.api.span_name().to_string()
            },
            kind: if genai { 3 } else { 2 },
            start: self.start,
            end,
            attrs: &self.attrs,
            events: &self.attempts,
            error: error.as_deref(),
        })
    }
}

/// A span event: when, what, and its attributes.
#[derive(Debug)]
pub struct Event {
    pub time: u64,
    pub name: &'static str,
    pub attrs: otlp::Attrs,
}

/// At most this many attempts of one request are recorded.
pub const MAX_ATTEMPTS: usize = 16;
const ATTEMPT_END: u8 = 0x1e;
const ATTEMPT_FIELD: char = '\u{1f}';

/// One attempt of a fallback rule's request, as the upstream copy records it in filter state for
/// the listener's copy (which owns the span): `backend 0x1f status 0x1f outcome 0x1f time 0x1e`.
#[derive(Debug, PartialEq, Eq)]
pub struct Attempt<'a> {
    pub backend: &'a str,
    /// 0: no answer (connection refused, reset, timeout).
    pub status: u16,
    /// `served`, `retried` or `no_answer`.
    pub outcome: &'a str,
    pub time: u64,
}

impl<'a> Attempt<'a> {
    /// `record` with this attempt appended, or `None` when it holds `MAX_ATTEMPTS` already.
    pub fn append(&self, mut record: Vec<u8>) -> Option<Vec<u8>> {
        if record.iter().filter(|&&b| b == ATTEMPT_END).count() >= MAX_ATTEMPTS {
            return None;
        }
        let f = ATTEMPT_FIELD;
        let backend: String = self.backend.chars().filter(|&c| c != f && c != '\u{1e}').collect();
        record.extend_from_slice(format!("{backend}{f}{}{f}{}{f}{}", self.status, self.outcome, self.time).as_bytes());
        record.push(ATTEMPT_END);
        Some(record)
    }

    fn parse(bytes: &'a [u8]) -> Option<Attempt<'a>> {
        let mut fields = std::str::from_utf8(bytes).ok()?.split(ATTEMPT_FIELD);
        let (backend, status, outcome, time) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
        Some(Attempt { backend, status: status.parse().ok()?, outcome, time: time.parse().ok()? })
    }
}

/// The VM's queue of encoded spans, bounded in count and bytes, and its exports in flight.
#[derive(Debug, Default)]
pub struct Exporter {
    spans: VecDeque<Vec<u8>>,
    bytes: usize,
    /// Exports sent: the host's token and how many spans each carries.
    in_flight: Vec<(u32, usize)>,
}

impl Exporter {
    /// Queues a span; `false` when the queue is full (the span is dropped: count it).
    pub fn push(&mut self, settings: &Settings, span: Vec<u8>) -> bool {
        if self.spans.len() >= settings.max_queue_size
            || self.bytes.saturating_add(span.len()) > settings.max_queue_bytes
        {
            return false;
        }
        self.bytes += span.len();
        self.spans.push_back(span);
        true
    }

    pub fn queued(&self) -> usize {
        self.spans.len()
    }

    /// The next export request (its body and span count), if spans wait and an export may start.
    pub fn next_batch(&mut self, settings: &Settings) -> Option<(Vec<u8>, usize)> {
        if self.spans.is_empty() || self.in_flight.len() >= MAX_IN_FLIGHT {
            return None;
        }
        let count = self.spans.len().min(settings.max_export_batch_size.max(1));
        let batch: Vec<Vec<u8>> = self.spans.drain(..count).collect();
        self.bytes -= batch.iter().map(Vec::len).sum::<usize>().min(self.bytes);
        Some((export_body(settings.encoding, &settings.resource, &batch), count))
    }

    /// An export left with the host's `token`.
    pub fn sent(&mut self, token: u32, count: usize) {
        self.in_flight.push((token, count));
    }

    /// The collector answered export `token` (`ok`: 2xx); returns how many spans it carried.
    pub fn answered(&mut self, token: u32) -> usize {
        match self.in_flight.iter().position(|(t, _)| *t == token) {
            Some(i) => self.in_flight.swap_remove(i).1,
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests;
