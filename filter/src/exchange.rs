//! One client request and its response, as a state machine over the `Host` trait: routing, edits,
//! errors, usage and metrics. No proxy-wasm here.

use std::rc::Rc;

use crate::api::{query_of, ClientApi, Endpoint, ModelSource, PathKind, DEFAULT_ANTHROPIC_PREFIX};
use crate::body::{NewBody, Sink};
use crate::budget;
use crate::cache;
use crate::config::{Compiled, Role, Schema, BACKEND_HEADER, MODEL_HEADER, RULE_HEADER};
use crate::error::{ApiError, ErrorKind};
use crate::headers;
use crate::host::{Flow, Host};
use crate::metrics::{self, LabelLimiter, Labels, MetricIds, MetricSets, Slot};
use crate::pd;
use crate::picker;
use crate::plan::{header, plan_request, Attempt, Destination, HeaderEdit, HeaderList, PlanInput, RequestPlan};
use crate::request::{self, RequestInfo};
use crate::trace::{self, Tracing};
use crate::translate::{self, BodyMode, Translator};
use crate::usage::TokenUsage;

const NANOS_PER_MS: u64 = 1_000_000;

/// Everything requests share in one VM: the compiled configuration and per-VM counters.
#[derive(Debug)]
pub struct Shared {
    pub config: Compiled,
    pub limiter: LabelLimiter,
    pub metric_sets: MetricSets,
    /// `llmgw.attempts_total` by backend, operation, outcome and status.
    pub attempt_metrics: MetricIds<(usize, &'static str, bool, u16)>,
    /// Spans and their export queue, when the configuration traces.
    pub tracing: Option<Tracing>,
}

impl Shared {
    pub fn new(config: Compiled) -> Self {
        let limiter = LabelLimiter::new(config.max_metric_label_sets);
        let tracing = config.tracing.clone().map(Tracing::new);
        Shared { config, limiter, metric_sets: MetricSets::default(), attempt_metrics: MetricIds::default(), tracing }
    }
}

enum Phase {
    /// Not a gateway request (or not yet seen): pass everything through.
    Ignored,
    AwaitingBody {
        endpoint: Endpoint,
        query: String,
        /// On the upstream copy: the rule and backend Envoy picked for this attempt.
        attempt: Option<Attempt>,
        /// The request headers, read once.
        headers: HeaderList,
    },
    Forwarded(Box<Routed>),
    /// Sent to a fallback rule's cluster; the upstream copy answers in the client's shape.
    Delegated {
        endpoint: Endpoint,
        info: RequestInfo,
    },
    /// The filter answered; nothing more to do.
    Answered,
}

struct Routed {
    endpoint: Endpoint,
    /// Index into `Compiled::backends`; out of range for an answer Envoy made itself.
    backend: usize,
    /// On the upstream copy, the attempt this is.
    attempt: Option<Attempt>,
    /// Envoy retries this attempt on another backend: it is not the request's answer.
    retried: bool,
    info: RequestInfo,
    translator: Box<dyn Translator>,
    status: u16,
    error: bool,
    mode: BodyMode,
    first_content_at: Option<u64>,
    ended_at: Option<u64>,
    usage: Option<TokenUsage>,
    /// The body the client gets instead of the provider's (a 502 decided on the headers).
    refusal: Option<Vec<u8>>,
    /// Bytes of the success body handed to the client so far.
    bytes_to_client: usize,
    /// The body size the last body callback saw (what is buffered when the trailers arrive).
    body_seen: usize,
}

impl Routed {
    /// A request on its way, before any answer.
    fn new(
        endpoint: Endpoint,
        backend: usize,
        attempt: Option<Attempt>,
        info: RequestInfo,
        translator: Box<dyn Translator>,
    ) -> Self {
        Routed {
            endpoint,
            backend,
            attempt,
            retried: false,
            info,
            translator,
            status: 0,
            error: false,
            mode: BodyMode::Stream,
            first_content_at: None,
            ended_at: None,
            usage: None,
            refusal: None,
            bytes_to_client: 0,
            body_seen: 0,
        }
    }
}

pub struct Exchange {
    shared: Option<Rc<Shared>>,
    started_at: u64,
    phase: Phase,
    /// `gen_ai.operation.name` once the endpoint is known (for metrics of local replies).
    operation: &'static str,
    /// The body's model once read (for metrics of local replies).
    model: Option<String>,
    /// Metrics were recorded (they are, once per stream).
    logged: bool,
    /// What this request reserved of its budgets, settled when the stream ends.
    charges: Vec<budget::Charge>,
    /// The consumer the authentication filters named (`consumer_header`), "" without one.
    consumer: String,
    /// The request's values of `metrics_request_header_labels`: (label, value).
    header_labels: Vec<(String, String)>,
    /// A cache miss's answer, recorded for the rule's cache.
    cache: Option<Box<cache::Recorder>>,
    /// The endpoint the picker chose, released (in-flight count) once when the stream ends.
    picked: Option<picker::Picked>,
    /// `pd`: the prefill call the request waits for.
    prefill: Option<Box<Prefill>>,
    /// The request's span, when tracing (ended and queued at `on_log`).
    span: Option<Box<trace::Span>>,
    /// The status and error code of an answer the gateway gave itself.
    reply: Option<(u16, &'static str)>,
    /// The status of a delegated request's answer (the upstream copy served it).
    delegated_status: u16,
    /// A cache hit's tokens (its answer's usage), counted as cached by the request metrics.
    cache_hit_tokens: Option<u64>,
}

impl Exchange {
    /// `shared` is `None` when the plugin has no valid configuration: requests then get a 500.
    pub fn new(shared: Option<Rc<Shared>>) -> Self {
        Exchange {
            shared,
            started_at: 0,
            phase: Phase::Ignored,
            operation: "",
            model: None,
            logged: false,
            charges: Vec::new(),
            consumer: String::new(),
            header_labels: Vec::new(),
            cache: None,
            picked: None,
            prefill: None,
            span: None,
            reply: None,
            delegated_status: 0,
            cache_hit_tokens: None,
        }
    }

    fn role(&self) -> Role {
        self.shared.as_ref().map_or(Role::Downstream, |s| s.config.role)
    }

    pub fn on_request_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Flow {
        self.started_at = host.now_nanos();
        // The headers are read once, in one host call; the plan works on this copy.
        let mut client_model = None;
        let headers = if self.role() == Role::Upstream {
            // Envoy hands a retry the headers the previous attempt left: start from the client's.
            restore_or_keep_request_headers(host)
        } else {
            // Whatever happens next, a client never chooses internal headers.
            let mut headers = host.request_headers();
            // A call no body names a model for is routed by the model the client names here (read,
            // checked and set again like a body's model).
            client_model = header(&headers, MODEL_HEADER).map(str::to_string);
            for name in [MODEL_HEADER, BACKEND_HEADER, RULE_HEADER, picker::DESTINATION_HEADER] {
                if header(&headers, name).is_some() {
                    host.remove_request_header(name);
                    headers.retain(|(n, _)| n != name);
                }
            }
            headers
        };
        let path = header(&headers, ":path").unwrap_or_default();
        let anthropic_prefix =
            self.shared.as_ref().map_or(DEFAULT_ANTHROPIC_PREFIX, |s| s.config.anthropic_prefix.as_str());
        let endpoint = match Endpoint::classify(path, anthropic_prefix) {
            PathKind::Other => return Flow::Continue,
            PathKind::UnknownAnthropic => {
                let message = format!(
                    "unknown endpoint {:?}; served: {}",
                    path_only(path),
                    Endpoint::anthropic_served_list(anthropic_prefix)
                );
                let e = ApiError::new(404, ErrorKind::NotFound, "unknown_endpoint", message);
                return self.reply_as(host, e, ClientApi::Anthropic);
            }
            PathKind::UnknownV1 => {
                let message = format!(
                    "unknown endpoint {:?}; served: {}",
                    path_only(path),
                    Endpoint::served_list(anthropic_prefix)
                );
                return self.reply(host, ApiError::new(404, ErrorKind::NotFound, "unknown_endpoint", message));
            }
            PathKind::Endpoint(e) => e,
        };
        let api = endpoint.client_api();
        self.operation = endpoint.operation();
        let Some(shared) = self.shared.clone() else {
            let e = ApiError::new(
                500,
                ErrorKind::Server,
                "gateway_not_configured",
                "the gateway has no valid configuration; see the Envoy log",
            );
            return self.reply_as(host, e, api);
        };
        let method = header(&headers, ":method").unwrap_or_default();
        if !endpoint.methods().contains(&method) {
            let allowed = endpoint.methods().join(", ");
            let e = ApiError::new(
                405,
                ErrorKind::InvalidRequest,
                "method_not_allowed",
                format!("{} {} is not supported; use {allowed}", method, path_only(path)),
            )
            .with_header("allow", allowed);
            return self.reply_as(host, e, endpoint.client_api());
        }
        self.header_labels = metrics::header_values(&shared.config.metric_header_labels, &headers);
        if let (Role::Downstream, Some(tracing)) = (shared.config.role, &shared.tracing) {
            self.span = trace::Span::begin(tracing, endpoint, &headers, self.started_at);
        }
        if endpoint == Endpoint::Models {
            self.phase = Phase::Answered;
            let headers = [("content-type", "application/json")];
            host.send_reply(200, &headers, &shared.config.models_body);
            return Flow::Pause;
        }
        if endpoint == Endpoint::AnthropicModels {
            return match crate::models::anthropic_page(&shared.config.models, query_of(path)) {
                Ok(body) => {
                    self.phase = Phase::Answered;
                    host.send_reply(200, &[("content-type", "application/json")], &body);
                    Flow::Pause
                }
                Err(e) => self.reply_as(host, e, api),
            };
        }
        if endpoint.model_source() == ModelSource::Header {
            return self.route_without_body_model(host, &shared, endpoint, path, &headers, client_model);
        }
        if end_of_stream {
            let e = ApiError::bad_request("invalid_request", "request body is empty; expected a JSON object");
            return self.reply_as(host, e, api);
        }
        let declared = header(&headers, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > shared.config.max_request_body_bytes as u64) {
            return self.reply_as(host, too_large(shared.config.max_request_body_bytes), api);
        }
        let attempt = match shared.config.role {
            Role::Downstream => None,
            Role::Upstream => match attempt_target(host, &shared.config) {
                Ok(attempt) => Some(attempt),
                Err(e) => return self.reply_as(host, e, api),
            },
        };
        let query = endpoint.path_tail(path);
        self.phase = Phase::AwaitingBody { endpoint, query, attempt, headers };
        Flow::Pause
    }

    /// A call no body names a model for (a stored response's): routed on its headers alone, by the
    /// client's `x-ai-eg-model`, else to the one backend that can serve it. A body, if any, follows
    /// unread and unchanged.
    fn route_without_body_model(
        &mut self,
        host: &mut dyn Host,
        shared: &Shared,
        endpoint: Endpoint,
        path: &str,
        headers: &[(String, String)],
        client_model: Option<String>,
    ) -> Flow {
        let api = endpoint.client_api();
        let (attempt, info, pinned_backend) = match shared.config.role {
            Role::Upstream => {
                let attempt = match attempt_target(host, &shared.config) {
                    Ok(attempt) => attempt,
                    Err(e) => return self.reply_as(host, e, api),
                };
                let Some(info) = host.property(&[REQUEST_INFO_STATE]).and_then(|b| RequestInfo::decode(&b)) else {
                    let e = ApiError::new(500, ErrorKind::Server, "internal", "the request's model was not handed on");
                    return self.reply_as(host, e, api);
                };
                (Some(attempt), info, None)
            }
            Role::Downstream => match header_route(&shared.config, client_model) {
                Ok((info, pinned)) => (None, info, pinned),
                Err(e) => return self.reply_as(host, e, api),
            },
        };
        let query = endpoint.path_tail(path);
        let input = PlanInput {
            config: &shared.config,
            endpoint,
            query: &query,
            headers,
            body: &[],
            info: &info,
            now_nanos: self.started_at,
            attempt,
            pinned_backend,
        };
        self.forward(host, &input, 0)
    }

    pub fn on_request_body(&mut self, host: &mut dyn Host, size: usize, end_of_stream: bool) -> Flow {
        let Phase::AwaitingBody { endpoint, .. } = &self.phase else {
            return if matches!(self.phase, Phase::Answered) { Flow::Pause } else { Flow::Continue };
        };
        let endpoint = *endpoint;
        let Some(shared) = self.shared.clone() else { return Flow::Continue };
        let api = endpoint.client_api();
        if size > shared.config.max_request_body_bytes {
            return self.reply_as(host, too_large(shared.config.max_request_body_bytes), api);
        }
        if !end_of_stream {
            return Flow::Pause;
        }
        let Phase::AwaitingBody { query, attempt, headers, .. } = std::mem::replace(&mut self.phase, Phase::Ignored)
        else {
            return Flow::Continue;
        };
        let body = host.request_body(size).unwrap_or_default();
        // The upstream copy takes what the downstream one read from this same body.
        let known = attempt.and_then(|_| host.property(&[REQUEST_INFO_STATE])).and_then(|b| RequestInfo::decode(&b));
        if let (Some(attempt), Some(info)) = (attempt, &known) {
            log::debug!(
                "llmgw: rule {} attempt on backend {}: {:?} as the downstream copy read it",
                attempt.rule,
                attempt.backend,
                info.model
            );
        }
        let read = |body: &[u8]| match endpoint.model_source() {
            ModelSource::MultipartOrJsonBody => request::read_upload(body, header(&headers, "content-type")),
            ModelSource::JsonBody | ModelSource::Header => request::read(body),
        };
        let info = match known.map_or_else(|| read(&body), Ok) {
            Ok(info) => info,
            Err(e) => return self.reply_as(host, e, api),
        };
        let input = PlanInput {
            config: &shared.config,
            endpoint,
            query: &query,
            headers: &headers,
            body: &body,
            info: &info,
            now_nanos: self.started_at,
            attempt,
            pinned_backend: None,
        };
        self.forward(host, &input, size)
    }

    /// Plans the request and applies the plan: its header edits, new body (`size`: the client's
    /// body size in the host) and destination.
    fn forward(&mut self, host: &mut dyn Host, input: &PlanInput, size: usize) -> Flow {
        let PlanInput { endpoint, attempt, info, .. } = *input;
        let api = endpoint.client_api();
        self.model = Some(info.model.clone());
        if let Some(span) = self.span.as_mut() {
            span.request(input.body, &info.model, info.stream);
        }
        if attempt.is_none() {
            if let Some(flow) = self.consult_cache(host, input) {
                return flow;
            }
            // Budgets are charged once, by the listener's copy, before anything is planned or sent.
            if let Err(e) = self.reserve_budgets(host, input) {
                return self.reply_as(host, e, api);
            }
        }
        let mut sink = HostBodySink { host: &mut *host, original: size, handed_out: 0 };
        let plan = match plan_request(input, &mut sink) {
            Ok(plan) => plan,
            Err(e) => {
                if attempt.is_none() && !info.model.is_empty() {
                    // Even a request no rule matches is logged with its model.
                    host.set_request_header(MODEL_HEADER, &info.model);
                }
                // Refused before it went anywhere: it spent nothing.
                budget::release(host, &std::mem::take(&mut self.charges));
                return self.reply_as(host, e, api);
            }
        };
        let RequestPlan { destination, headers: edits, body: new_body, reroute } = plan;
        for edit in &edits {
            match edit {
                HeaderEdit::Set(name, value) => host.set_request_header(name, value),
                HeaderEdit::Remove(name) => host.remove_request_header(name),
            }
        }
        let body_len = new_body.as_ref().map_or(size, |b| b.len(size));
        if let Some(new_body) = &new_body {
            replace_request_body(host, size, new_body);
        }
        if reroute {
            host.clear_route_cache();
        }
        if let Some(span) = self.span.as_mut() {
            // After the plan's edits: the provider gets this span as its parent.
            host.set_request_header(trace::TRACEPARENT, &span.traceparent());
            if let Destination::Backend { index, .. } = &destination {
                let config = input.config;
                let consumer =
                    config.consumer_header.as_deref().and_then(|name| header(input.headers, name)).unwrap_or("");
                if let Some(backend) = config.backends.get(*index) {
                    span.routed(&backend.name, trace::provider(backend.schema()), consumer);
                }
            }
        }
        self.phase = match destination {
            Destination::Backend { index, translator } => {
                self.pick_endpoint(host, input, index);
                self.phase =
                    Phase::Forwarded(Box::new(Routed::new(endpoint, index, attempt, info.clone(), translator)));
                // A prefill/decode request is not also held for a semantic lookup (its exact one ran).
                if self.start_prefill(host, input, index, body_len) == Flow::Pause {
                    return Flow::Pause;
                }
                return self.embed_prompt(host, input.config);
            }
            Destination::Rule(_) => {
                host.set_filter_state(REQUEST_INFO_STATE, &info.encode());
                Phase::Delegated { endpoint, info: info.clone() }
            }
        };
        self.embed_prompt(host, input.config)
    }

    /// Semantic cache: asks the embeddings backend for the prompt's vector, the request paused
    /// until it answers (`on_embedding`). A call that cannot be made leaves the request uncached.
    fn embed_prompt(&mut self, host: &mut dyn Host, config: &Compiled) -> Flow {
        let Some(recorder) = self.cache.as_mut() else { return Flow::Continue };
        let semantic = config.rules.get(recorder.lookup.rule).and_then(|r| r.cache.as_ref()?.semantic.as_ref());
        let (Some(semantic), Some(probe)) = (semantic, &recorder.lookup.probe) else { return Flow::Continue };
        let call = cache::embedding_call(config, semantic, &probe.prompt);
        let token = call.and_then(|c| {
            let headers: Vec<(&str, &str)> = c.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            host.dispatch(&c.cluster, &headers, &c.body, semantic.timeout_ms)
        });
        if token.is_none() {
            cache::count(host, cache::EMBEDDING_FAILURES, metrics::Kind::Counter, 1);
            recorder.abandon();
            return Flow::Continue;
        }
        recorder.embedding_call = token;
        Flow::Pause
    }

    /// The embeddings backend answered (or the call failed): a cached answer to a prompt near
    /// enough is served; else the request goes on, its answer stored with the prompt's vector.
    /// A failed call leaves the request uncached (counted).
    /// `true` when `token` was the embeddings call's.
    fn on_embedding(&mut self, host: &mut dyn Host, token: u32, status: u16, body: &[u8]) -> bool {
        let Some(recorder) = self.cache.as_mut().filter(|r| r.embedding_call == Some(token)) else { return false };
        recorder.embedding_call = None;
        let vector = if (200..300).contains(&status) { cache::read_embedding(body) } else { None };
        let Some(vector) = vector else {
            cache::count(host, cache::EMBEDDING_FAILURES, metrics::Kind::Counter, 1);
            recorder.abandon();
            host.resume_request();
            return true;
        };
        let similarity = self.shared.as_ref().and_then(|s| {
            s.config.rules.get(recorder.lookup.rule)?.cache.as_ref()?.semantic.as_ref().map(|m| m.similarity)
        });
        let now_ms = host.now_nanos() / 1_000_000;
        let hit = similarity
            .filter(|_| recorder.lookup.read)
            .and_then(|similarity| cache::get_similar(host, &recorder.lookup, &vector, similarity, now_ms));
        match hit {
            Some(entry) => {
                self.cache = None;
                // Reserved before the call: a hit spends nothing.
                budget::release(host, &std::mem::take(&mut self.charges));
                let consumer = std::mem::take(&mut self.consumer);
                self.answer_from_cache(host, entry, &consumer);
                self.consumer = consumer;
            }
            None => {
                recorder.vector = Some(vector);
                host.resume_request();
            }
        }
        true
    }

    pub fn on_response_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Flow {
        if let Some(picked) = &self.picked {
            // Envoy's own 503 when the connection failed or was reset before any answer, or an
            // answer from another endpoint (Envoy retried on the next one listed): without health
            // checks, the picker learns the endpoint is gone from this, before the client sees the
            // answer (its next request already avoids it). The request stays counted in flight
            // on the picked endpoint until it ends.
            let served_by = host.property(UPSTREAM_ADDRESS_PROPERTY);
            if served_by.is_some_and(|a| a != picked.address.as_bytes())
                || host.response_header(":status").as_deref() == Some("503")
                    && host
                        .property(CODE_DETAILS_PROPERTY)
                        .is_some_and(|d| d.starts_with(b"upstream_reset_before_response_started"))
            {
                picker::unreachable(host, picked);
            }
        }
        if self.cache.is_some() {
            host.set_response_header(cache::CACHE_HEADER, "miss");
        }
        if matches!(self.phase, Phase::Delegated { .. }) {
            if self.span.is_some() {
                self.delegated_status =
                    host.response_header(":status").and_then(|s| s.parse().ok()).unwrap_or_default();
            }
            if host.property(CODE_DETAILS_PROPERTY).as_deref() == Some(VIA_UPSTREAM) {
                // An attempt's answer: the upstream copy made it client-shaped, and counts it.
                self.phase = Phase::Ignored;
                if self.cache.is_some() && (end_of_stream || host.response_header(":status").as_deref() != Some("200"))
                {
                    self.cache = None;
                }
                return Flow::Continue;
            }
            // Envoy's own answer (no backend reachable, every attempt timed out): made client-shaped
            // like any upstream error.
            let Phase::Delegated { endpoint, info } = std::mem::replace(&mut self.phase, Phase::Ignored) else {
                return Flow::Continue;
            };
            match own_answer(endpoint, info) {
                Some(routed) => self.phase = Phase::Forwarded(Box::new(routed)),
                None => return Flow::Continue,
            }
        }
        let upstream = self.role() == Role::Upstream;
        let Some(shared) = self.shared.clone() else { return Flow::Continue };
        let Phase::Forwarded(routed) = &mut self.phase else { return Flow::Continue };
        // Read once, in one host call.
        let response = host.response_headers();
        routed.status = header(&response, ":status").and_then(|s| s.parse().ok()).unwrap_or(0);
        if upstream && on_attempt_answer(host, &shared, routed) == AttemptFate::Retried {
            // Envoy tries the next backend; nothing of this answer reaches the client.
            routed.error = true;
            routed.ended_at = Some(host.now_nanos());
            return Flow::Continue;
        }
        for name in headers::OPERATOR_RESPONSE_HEADERS {
            if header(&response, name).is_some() {
                host.remove_response_header(name);
            }
        }
        routed.error = !(200..300).contains(&routed.status);
        let api = routed.endpoint.client_api();
        if end_of_stream {
            // No body will follow: an error gets one, and so does an empty success (no client API
            // has an empty answer).
            let refusal = if routed.error && host.property(CODE_DETAILS_PROPERTY).as_deref() == Some(RATE_LIMITED) {
                Some((429, gateway_rate_limited().body(api)))
            } else if routed.error {
                routed.translator.error_body(routed.status, b"").map(|body| (routed.status, body))
            } else {
                Some((502, empty_answer(routed.status).body(api)))
            };
            if let Some((status, body)) = refusal {
                routed.status = status;
                routed.error = true;
                // The reply replaces the answer's headers: the ones telling the client when to come
                // back (Envoy's rate limit filter sets them on its 429) are carried over.
                let mut reply_headers = vec![("content-type", "application/json")];
                reply_headers.extend(
                    response.iter().filter(|(n, _)| headers::is_retry_hint(n)).map(|(n, v)| (n.as_str(), v.as_str())),
                );
                host.send_reply(status, &reply_headers, &body);
                self.finish(host);
                return Flow::Pause;
            }
            self.finish(host);
            return Flow::Continue;
        }
        let encoding = header(&response, "content-encoding").filter(|e| !e.trim().eq_ignore_ascii_case("identity"));
        let plan = if routed.error {
            translate::error_plan()
        } else {
            let content_type = header(&response, "content-type").unwrap_or_default();
            routed.translator.response_headers(routed.status, content_type)
        };
        for name in &plan.remove_headers {
            if header(&response, name).is_some() {
                host.remove_response_header(name);
            }
        }
        for (name, value) in &plan.set_headers {
            if header(&response, name) != Some(value.as_str()) {
                host.set_response_header(name, value);
            }
        }
        routed.mode = plan.mode;
        let declared_empty = header(&response, "content-length").is_some_and(|v| v.trim() == "0");
        let refusal = match (&encoding, routed.error) {
            // The gateway asked for `identity`; a compressed body it must read cannot be rewritten.
            (Some(encoding), false) if routed.translator.rewrites_response() => Some(ApiError::new(
                502,
                ErrorKind::Server,
                "invalid_upstream_response",
                format!("the provider answered with a {encoding}-compressed body the gateway cannot translate"),
            )),
            (None, false) if declared_empty => Some(empty_answer(routed.status)),
            _ => None,
        };
        if let Some(error) = refusal {
            refuse_response(host, routed, &error.body(api));
            return Flow::Continue;
        }
        if let (Some(encoding), true) = (&encoding, routed.error) {
            // An error is rewritten into the client's shape: a compressed one keeps its status and
            // says what it was, since its text cannot be read.
            let text = format!("upstream returned HTTP {} with a {encoding}-compressed body", routed.status);
            let body =
                routed.translator.error_body(routed.status, text.as_bytes()).unwrap_or_else(|| text.into_bytes());
            let status = routed.status;
            refuse_response(host, routed, &body);
            host.set_response_header(":status", &status.to_string());
            routed.status = status;
            return Flow::Continue;
        }
        match routed.mode {
            BodyMode::Stream => Flow::Continue,
            BodyMode::Buffer => Flow::Pause,
        }
    }

    pub fn on_response_body(&mut self, host: &mut dyn Host, size: usize, end_of_stream: bool) -> Flow {
        let max_response = self.shared.as_ref().map_or(usize::MAX, |s| s.config.max_response_body_bytes);
        if let Phase::Ignored = self.phase {
            // A fallback rule's answer, client-shaped by the upstream copy: recorded (cache, span)
            // as it passes.
            let span = self.span.as_mut().filter(|_| self.delegated_status / 100 == 2);
            if self.cache.is_none() && span.is_none() {
                return Flow::Continue;
            }
            let chunk = host.response_body(size).unwrap_or_default();
            if let Some(span) = span {
                span.response_bytes(&chunk);
            }
            if let Some(recorder) = &mut self.cache {
                recorder.push(&chunk);
                if end_of_stream {
                    self.store_cached(host);
                }
            }
            return Flow::Continue;
        }
        let Phase::Forwarded(routed) = &mut self.phase else { return Flow::Continue };
        if routed.ended_at.is_some() {
            return Flow::Continue;
        }
        routed.body_seen = size;
        if let Some(refusal) = &routed.refusal {
            // The client gets the refusal instead of the provider's bytes, whatever they are.
            let replacement = if end_of_stream { refusal.clone() } else { Vec::new() };
            host.set_response_body(size, &replacement);
            if end_of_stream {
                self.finish(host);
            }
            return Flow::Continue;
        }
        if routed.mode == BodyMode::Buffer && size > max_response {
            // The filter would have to hold it whole: refuse rather than grow the VM.
            let error = ApiError::new(
                502,
                ErrorKind::Server,
                "upstream_response_too_large",
                format!("the provider's answer exceeds the gateway's limit of {max_response} bytes"),
            );
            let body = if routed.error {
                routed
                    .translator
                    .error_body(routed.status, b"")
                    .unwrap_or_else(|| error.body(routed.endpoint.client_api()))
            } else {
                error.body(routed.endpoint.client_api())
            };
            refuse_response(host, routed, &body);
            let replacement = if end_of_stream { body } else { Vec::new() };
            host.set_response_body(size, &replacement);
            if end_of_stream {
                self.finish(host);
            }
            return Flow::Continue;
        }
        if routed.mode == BodyMode::Buffer && !end_of_stream {
            return Flow::Pause;
        }
        let chunk = if size > 0 { host.response_body(size).unwrap_or_default() } else { Vec::new() };
        if routed.error {
            if let Some(body) = routed.translator.error_body(routed.status, &chunk) {
                host.set_response_body(size, &body);
                host.set_response_header("content-length", &body.len().to_string());
            } else if routed.mode == BodyMode::Buffer {
                host.set_response_header("content-length", &chunk.len().to_string());
            }
        } else {
            let edits = routed.translator.response_body(&chunk, end_of_stream);
            if edits.first_content && routed.info.stream && routed.first_content_at.is_none() {
                // Time to first token is a streaming measure.
                routed.first_content_at = Some(host.now_nanos());
            }
            if let Some(span) = self.span.as_mut() {
                span.response_bytes(edits.replace.as_deref().unwrap_or(&chunk));
            }
            let sent = edits.replace.as_ref().map_or(chunk.len(), Vec::len);
            if let Some(recorder) = &mut self.cache {
                recorder.push(edits.replace.as_deref().unwrap_or(&chunk));
            }
            routed.bytes_to_client = routed.bytes_to_client.saturating_add(sent);
            if let Some(replacement) = edits.replace {
                if replacement != chunk {
                    host.set_response_body(size, &replacement);
                }
                if routed.mode == BodyMode::Buffer {
                    host.set_response_header("content-length", &replacement.len().to_string());
                }
            }
            if end_of_stream && routed.bytes_to_client == 0 && routed.mode == BodyMode::Stream && routed.info.stream {
                // The provider sent a success and nothing after it; its headers are gone already,
                // so a streaming client gets an error in the body, as a stream's own errors arrive.
                let body = empty_stream_error(routed.endpoint.client_api(), routed.info.stream, routed.status);
                host.set_response_body(size, &body);
                routed.error = true;
            }
            if let (Some(status), BodyMode::Buffer) = (edits.status, routed.mode) {
                host.set_response_header(":status", &status.to_string());
                routed.status = status;
                routed.error = true;
            }
            routed.usage = edits.usage.or(routed.usage);
        }
        if end_of_stream {
            self.finish(host);
        }
        Flow::Continue
    }

    /// Trailers end the response too (an HTTP/2 upstream may end with them).
    pub fn on_response_trailers(&mut self, host: &mut dyn Host) -> Flow {
        if matches!(self.phase, Phase::Ignored) && self.cache.is_some() {
            self.store_cached(host);
        }
        if let Phase::Forwarded(routed) = &mut self.phase {
            if routed.ended_at.is_none() && (routed.mode == BodyMode::Buffer || routed.refusal.is_some()) {
                // Envoy hands a filter the body it buffered in the trailers callback too: the
                // buffered answer is translated (or replaced) as at its end. A refusal decided while
                // streaming has nothing buffered to replace; its status and headers still say it.
                let size = if routed.mode == BodyMode::Buffer { routed.body_seen } else { 0 };
                return self.on_response_body(host, size, true);
            }
            if routed.ended_at.is_none() && !routed.error {
                let edits = routed.translator.response_body(&[], true);
                routed.usage = edits.usage.or(routed.usage);
            }
        }
        self.finish(host);
        Flow::Continue
    }

    /// Answers from the rule's cache (`Some`: answered), or prepares to record the answer of a miss.
    /// A hit charges no budget: it never reaches a provider.
    fn consult_cache(&mut self, host: &mut dyn Host, input: &PlanInput) -> Option<Flow> {
        let config = input.config;
        let lookup_header = |name: &str| header(input.headers, name);
        let (index, rule) = crate::routing::find_rule(&config.rules, &input.info.model, &lookup_header)?;
        let policy = rule.cache.as_ref()?;
        let consumer = consumer_of(config, input.headers);
        let lookup = cache::lookup(input, index, rule, consumer)?;
        // Milliseconds: a TTL of 1s must not end a few ms after the store.
        let now_ms = input.now_nanos / 1_000_000;
        if let Some(entry) = lookup.read.then(|| cache::get(host, &lookup, now_ms)).flatten() {
            self.consumer = consumer.to_string();
            self.answer_from_cache(host, entry, consumer);
            return Some(Flow::Pause);
        }
        cache::count(host, cache::MISSES, metrics::Kind::Counter, 1);
        if lookup.write {
            self.cache = Some(Box::new(cache::Recorder::new(lookup, policy)));
        }
        None
    }

    /// Replays a cached answer: the request goes no further.
    fn answer_from_cache(&mut self, host: &mut dyn Host, entry: cache::Entry, consumer: &str) {
        cache::count(host, cache::HITS, metrics::Kind::Counter, 1);
        if !consumer.is_empty() {
            host.set_filter_state(CONSUMER_STATE, consumer.as_bytes());
        }
        self.phase = Phase::Answered;
        self.reply = Some((200, ""));
        self.cache_hit_tokens = Some(entry.tokens);
        let headers = [("content-type", cache::content_type(entry.shape)), (cache::CACHE_HEADER, "hit")];
        host.send_reply(200, &headers, &entry.body);
    }

    /// Stores the recorded answer of a miss that ended well.
    fn store_cached(&mut self, host: &mut dyn Host) {
        let now_ms = host.now_nanos() / 1_000_000;
        let (Some(recorder), Some(shared)) = (self.cache.take(), &self.shared) else { return };
        cache::store(host, &shared.config, *recorder, now_ms);
    }

    /// Charges the request's budgets (its consumer, model, size and output cap), or says why not.
    fn reserve_budgets(&mut self, host: &mut dyn Host, input: &PlanInput) -> Result<(), ApiError> {
        let config = input.config;
        let consumer = consumer_of(config, input.headers);
        if !consumer.is_empty() {
            host.set_filter_state(CONSUMER_STATE, consumer.as_bytes());
            self.consumer = consumer.to_string();
        }
        if config.budgets.is_empty() {
            return Ok(());
        }
        let demand = budget::Demand {
            consumer,
            model: &input.info.model,
            body_len: input.body.len(),
            output_cap: budget::output_cap(input.body),
            now_secs: input.now_nanos / 1_000_000_000,
        };
        let charges = budget::plan(&config.budgets, &demand);
        match budget::reserve(host, &config.budgets, &charges, demand.now_secs) {
            Ok(()) => {
                self.charges = charges;
                Ok(())
            }
            Err(refusal) => {
                let name = config.budgets.get(refusal.budget()).map_or("", |b| b.name.as_str());
                host.record(&metrics::Sample {
                    name: format!("{}.llmgw_budget=.={name};.;", metrics::BUDGET_REFUSALS),
                    kind: metrics::Kind::Counter,
                    value: 1,
                });
                Err(refusal.error(&config.budgets))
            }
        }
    }

    /// Settles the budgets with the usage the provider reported (none: token charges are refunded).
    fn settle_budgets(&mut self, host: &mut dyn Host) {
        let charges = std::mem::take(&mut self.charges);
        let Some(shared) = &self.shared else { return };
        if charges.is_empty() {
            return;
        }
        let usage = match &self.phase {
            Phase::Forwarded(routed) => routed.usage,
            // A fallback rule's attempts are served by the upstream copy, which leaves the usage
            // in filter state.
            _ => usage_from_filter_state(host),
        };
        budget::settle(host, &shared.config.budgets, &charges, usage.as_ref());
    }

    /// A backend with a picker: the filter chooses its endpoint (the listener's copy only: an
    /// upstream copy runs after Envoy chose the host).
    fn pick_endpoint(&mut self, host: &mut dyn Host, input: &PlanInput, index: usize) {
        let Some(backend) = input.attempt.is_none().then(|| input.config.backends.get(index)).flatten() else { return };
        let Some(picker) = &backend.picker else { return };
        let seed = self.started_at ^ (input.body.len() as u64).rotate_left(32);
        self.picked = picker::pick(host, &backend.name, picker, input.body, seed);
        if let Some(picked) = &self.picked {
            host.set_request_header(picker::DESTINATION_HEADER, &picked.destinations);
        }
    }

    /// `pd`: sends the prefill (`pd::prefill_body`) to the least loaded prefill endpoint and holds
    /// the request until it answers ([`Exchange::on_call_response`]). A request that cannot be
    /// prefilled goes to its decode endpoint whole, without anyone's `kv_transfer_params`.
    fn start_prefill(&mut self, host: &mut dyn Host, input: &PlanInput, index: usize, body_len: usize) -> Flow {
        let Some(backend) = input.config.backends.get(index) else { return Flow::Continue };
        let Some(picker) = backend.picker.as_ref().filter(|p| p.algorithm == picker::Algorithm::Pd) else {
            return Flow::Continue;
        };
        if self.picked.is_none() {
            return Flow::Continue; // an upstream attempt: the listener's copy did this
        }
        let body = host.request_body(body_len).unwrap_or_default();
        let prefill = pd::prefill_body(&body);
        let picked = prefill.as_ref().and_then(|_| picker::pick_prefill(host, &backend.name, picker, !self.started_at));
        if let (Some(prefill), Some(picked)) = (prefill, picked) {
            let request = host.request_headers();
            let mut headers: Vec<(&str, &str)> = request
                .iter()
                .filter(|(n, _)| {
                    matches!(n.as_str(), ":method" | ":path" | ":authority" | "content-type" | "authorization")
                        || n == "x-request-id"
                        || n == trace::TRACEPARENT
                })
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            headers.push((picker::DESTINATION_HEADER, &picked.address));
            match host.dispatch(&backend.name, &headers, &prefill, pd::PREFILL_TIMEOUT_MS) {
                Some(token) => {
                    self.prefill = Some(Box::new(Prefill { token, picked, body_len }));
                    return Flow::Pause;
                }
                None => {
                    log::warn!("llmgw: pd {}: the prefill call to {} was refused", backend.name, picked.address);
                    picker::release(host, picked, None);
                }
            }
        }
        if let Some(edit) = pd::decode_body(&body, None) {
            replace_decode_body(host, body_len, &edit);
        }
        Flow::Continue
    }

    /// A callout of this stream answered (`status` 0: it failed or timed out). `pd`: the prefill's
    /// `kv_transfer_params` go into the request, which then goes on to its decode endpoint.
    pub fn on_call_response(&mut self, host: &mut dyn Host, token: u32, status: u16, body: &[u8]) {
        if self.on_embedding(host, token, status, body) {
            return;
        }
        let Some(prefill) = self.prefill.take_if(|p| p.token == token) else { return };
        let Prefill { picked, body_len, .. } = *prefill;
        let params = if status == 200 { pd::answered_params(body) } else { None };
        if params.is_none() {
            log::warn!(
                "llmgw: pd: the prefill on {} answered {status} without kv_transfer_params; decoding without",
                picked.address
            );
        }
        picker::release(host, picked, None);
        let request = host.request_body(body_len).unwrap_or_default();
        if let Some(edit) = pd::decode_body(&request, params) {
            replace_decode_body(host, body_len, &edit);
        }
        host.resume_request();
    }

    /// Takes the request out of its endpoint's in-flight count, once, however the stream ended.
    fn release_endpoint(&mut self, host: &mut dyn Host) {
        if let Some(prefill) = self.prefill.take() {
            picker::release(host, prefill.picked, None);
        }
        let Some(picked) = self.picked.take() else { return };
        let ttft = match &self.phase {
            // A stream's first token; a whole answer's end (its first token is not seen apart).
            Phase::Forwarded(routed) if !routed.error => {
                routed.first_content_at.or(routed.ended_at).map(|at| at.saturating_sub(self.started_at))
            }
            _ => None,
        };
        picker::release(host, picked, ttft);
    }

    /// Ends the request's span and queues it for export (a full queue drops it, counted).
    fn end_span(&mut self, host: &mut dyn Host) {
        let Some(mut span) = self.span.take() else { return };
        let Some(shared) = self.shared.clone() else { return };
        let Some(tracing) = &shared.tracing else { return };
        let (status, error, usage, ended_at) = match &self.phase {
            Phase::Forwarded(r) => (if r.ended_at.is_some() { r.status } else { 0 }, None, r.usage, r.ended_at),
            // A cache hit is an answer without an error code.
            Phase::Answered => {
                (self.reply.map_or(0, |r| r.0), self.reply.map(|r| r.1).filter(|c| !c.is_empty()), None, None)
            }
            _ => {
                // A fallback rule's: its attempts, as the upstream copies recorded them.
                let backends = &shared.config.backends;
                let provider =
                    |name: &str| backends.iter().find(|b| b.name == name).map_or("", |b| trace::provider(b.schema()));
                span.attempts(&host.property(&[ATTEMPTS_STATE]).unwrap_or_default(), provider);
                (self.delegated_status, None, usage_from_filter_state(host), None)
            }
        };
        let encoded = (*span).end(status, error, usage, ended_at.unwrap_or_else(|| host.now_nanos()));
        let queued = tracing.exporter.try_borrow_mut().map(|mut e| e.push(&tracing.settings, encoded)).unwrap_or(false);
        if !queued {
            host.record(&metrics::Sample {
                name: trace::SPANS_DROPPED.to_string(),
                kind: metrics::Kind::Counter,
                value: 1,
            });
        }
    }

    /// End of the stream (also on client aborts): settles budgets and records the request's metrics.
    pub fn on_log(&mut self, host: &mut dyn Host) {
        self.settle_budgets(host);
        self.release_endpoint(host);
        self.end_span(host);
        if let (Some(tokens), Some(shared)) = (self.cache_hit_tokens.take(), &self.shared) {
            // A hit is a request served (by no backend), its tokens all cached.
            let model = self.model.as_deref().unwrap_or_default();
            let metrics =
                shared.metric_sets.get(&shared.limiter, "", self.operation, model, &self.consumer, &self.header_labels);
            metrics.record(host, Slot::Success, 1);
            let elapsed = host.now_nanos().saturating_sub(self.started_at);
            metrics.record(host, Slot::Duration, elapsed / NANOS_PER_MS);
            metrics.record(host, Slot::CachedTokens, tokens);
        }
        let (Phase::Forwarded(routed), Some(shared)) = (&self.phase, &self.shared) else { return };
        if self.logged || routed.retried {
            // A retried attempt was counted as an attempt; the request is counted where it is served.
            return;
        }
        self.logged = true;
        // An answer Envoy made itself (no backend reached) has no backend.
        let backend = shared.config.backends.get(routed.backend).map_or("", |b| b.name.as_str());
        let ended_at = routed.ended_at.unwrap_or_else(|| host.now_nanos());
        let operation = routed.endpoint.operation();
        let metrics = shared.metric_sets.get(
            &shared.limiter,
            backend,
            operation,
            &routed.info.model,
            &self.consumer,
            &self.header_labels,
        );
        let success = !routed.error && routed.ended_at.is_some();
        metrics.record(host, if success { Slot::Success } else { Slot::Failure }, 1);
        metrics.record(host, Slot::Duration, ended_at.saturating_sub(self.started_at) / NANOS_PER_MS);
        if let Some(usage) = routed.usage {
            metrics.record(host, Slot::InputTokens, usage.input);
            metrics.record(host, Slot::OutputTokens, usage.output);
        }
        if let (true, Some(first)) = (routed.info.stream, routed.first_content_at) {
            metrics.record(host, Slot::TimeToFirstToken, first.saturating_sub(self.started_at) / NANOS_PER_MS);
            if let Some(output) = routed.usage.map(|u| u.output).filter(|&n| n > 1) {
                let per_token = ended_at.saturating_sub(first) / (output - 1) / NANOS_PER_MS;
                metrics.record(host, Slot::TimePerOutputToken, per_token);
            }
        }
    }

    /// The stream is gone. Envoy calls `on_log` only for the listener's filters: the upstream copy
    /// records its metrics here.
    pub fn on_done(&mut self, host: &mut dyn Host) {
        // Envoy may skip on_log (a stream torn down early): the count is released here then.
        self.release_endpoint(host);
        if self.role() == Role::Upstream {
            if let (Phase::Forwarded(routed), Some(shared)) = (&self.phase, &self.shared) {
                if routed.status == 0 && shared.tracing.is_some() {
                    // Envoy gave up on this attempt before any answer (refused, reset, timeout).
                    let name = shared.config.backends.get(routed.backend).map_or("", |b| b.name.as_str());
                    record_attempt(host, name, 0, "no_answer");
                }
            }
            self.on_log(host);
        }
    }

    fn finish(&mut self, host: &mut dyn Host) {
        let Phase::Forwarded(routed) = &mut self.phase else { return };
        if routed.ended_at.is_some() {
            return;
        }
        routed.ended_at = Some(host.now_nanos());
        let served = !routed.error && routed.status == 200 && routed.refusal.is_none() && !routed.retried;
        if let Some(usage) = routed.usage {
            host.set_filter_state("llm_input_token", usage.input.to_string().as_bytes());
            host.set_filter_state("llm_output_token", usage.output.to_string().as_bytes());
            host.set_filter_state("llm_total_token", usage.total.to_string().as_bytes());
        }
        if let (Some(recorder), Some(usage)) = (self.cache.as_mut(), routed.usage) {
            recorder.tokens = usage.input.saturating_add(usage.output);
        }
        if served {
            self.store_cached(host);
        } else {
            self.cache = None;
        }
    }

    fn reply(&mut self, host: &mut dyn Host, error: ApiError) -> Flow {
        self.reply_as(host, error, ClientApi::OpenAI)
    }

    fn reply_as(&mut self, host: &mut dyn Host, error: ApiError, api: ClientApi) -> Flow {
        self.phase = Phase::Answered;
        self.reply = Some((error.status, error.code));
        // Every answer the gateway gives itself is counted, with its status and code.
        if let Some(shared) = &self.shared {
            let labels = match self.model.as_deref() {
                Some(m) => shared.limiter.labels("", self.operation, m, &self.consumer, &self.header_labels),
                None => Labels {
                    backend: String::new(),
                    model: String::new(),
                    operation: self.operation,
                    consumer: String::new(),
                    headers: Vec::new(),
                },
            };
            let status = error.status.to_string();
            host.record(&labels.counter(
                metrics::REQUESTS,
                &[("outcome", "rejected"), ("http_status", &status), ("error_code", error.code)],
                1,
            ));
        }
        let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        headers.extend(error.headers.iter().map(|(n, v)| (*n, v.as_str())));
        host.send_reply(error.status, &headers, &error.body(api));
        Flow::Pause
    }
}

/// The consumer the request's consumer header names (`""`: none).
fn consumer_of<'h>(config: &Compiled, headers: &'h [(String, String)]) -> &'h str {
    config.consumer_header.as_deref().and_then(|name| header(headers, name)).unwrap_or("")
}

/// Envoy's rate limit filter's 429 (budgets shared by many gateways): the gateway's refusal, not
/// the provider's; nothing was sent upstream.
fn gateway_rate_limited() -> ApiError {
    ApiError::new(
        429,
        ErrorKind::RateLimit,
        "rate_limit_exceeded",
        "a rate limit or budget of this gateway is spent; retry after the time in Retry-After",
    )
}

/// The usage the upstream copy left in filter state (a fallback rule's attempts).
fn usage_from_filter_state(host: &dyn Host) -> Option<TokenUsage> {
    let read =
        |name: &str| host.property(&[name]).and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse::<u64>().ok());
    match (read("llm_input_token"), read("llm_output_token")) {
        (Some(input), Some(output)) => {
            Some(TokenUsage { input, output, total: input.saturating_add(output), ..TokenUsage::default() })
        }
        _ => None,
    }
}

/// A 2xx without a body: no client API has an empty answer.
fn empty_answer(status: u16) -> ApiError {
    ApiError::new(
        502,
        ErrorKind::Server,
        "invalid_upstream_response",
        format!("the provider answered HTTP {status} with an empty body"),
    )
}

/// What a client gets when a provider's success ends without a byte: an error in the client's
/// stream format (with its terminator), or its error JSON.
fn empty_stream_error(api: ClientApi, stream: bool, status: u16) -> Vec<u8> {
    let error = empty_answer(status);
    let json = error.body(api);
    match (api, stream) {
        (ClientApi::OpenAI, true) => [b"data: ".as_slice(), &json, b"\n\ndata: [DONE]\n\n"].concat(),
        (ClientApi::Anthropic, true) => [b"event: error\ndata: ".as_slice(), &json, b"\n\n"].concat(),
        (_, false) => json,
    }
}

/// Turns the response into a 502 with `body`, decided while its headers are still held: the
/// provider's bytes that follow are dropped.
/// Filter state naming the request's consumer (`wasm.llmgw_consumer` in the access log).
const CONSUMER_STATE: &str = "llmgw_consumer";
/// Filter state holding what the downstream copy read from the body, for every attempt.
const REQUEST_INFO_STATE: &str = "llmgw_request_info";
/// Filter state holding a fallback rule's attempts (`trace::Attempt`), for the request's span.
const ATTEMPTS_STATE: &str = "llmgw_attempts";
/// Filter state holding the client's request headers, for the attempts after the first.
const CLIENT_HEADERS: &str = "llmgw_client_headers";
/// The picked endpoint's metadata naming its rule and backend (`"<rule>/<backend in the rule>"`).
const TARGET_PROPERTY: &[&str] = &["xds", "upstream_host_metadata", "filter_metadata", "llmgw", "target"];
const ATTEMPT_PROPERTY: &[&str] = &["upstream", "request_attempt_count"];
/// Why the response is what it is: `via_upstream` for a provider's (an attempt's) answer, else
/// Envoy's own (no healthy upstream, timeouts, overflow).
const CODE_DETAILS_PROPERTY: &[&str] = &["response", "code_details"];
/// The `ip:port` of the upstream host that answered (after Envoy's retries).
const UPSTREAM_ADDRESS_PROPERTY: &[&str] = &["upstream", "address"];
const VIA_UPSTREAM: &[u8] = b"via_upstream";
/// Envoy's rate limit filter refused the request (its service said OVER_LIMIT).
const RATE_LIMITED: &[u8] = b"request_rate_limited";

/// Envoy builds each retry from the headers the previous attempt left (its path, credential,
/// removed headers): the first attempt saves the client's, later ones start from them again.
fn restore_or_keep_request_headers(host: &mut dyn Host) -> HeaderList {
    match host.property(&[CLIENT_HEADERS]) {
        Some(saved) => {
            let headers: HeaderList = saved
                .split(|&b| b == 0)
                .collect::<Vec<_>>()
                .chunks_exact(2)
                .filter_map(|pair| match pair {
                    [name, value] => {
                        Some((String::from_utf8_lossy(name).into_owned(), String::from_utf8_lossy(value).into_owned()))
                    }
                    _ => None,
                })
                .collect();
            host.set_request_headers(&headers);
            headers
        }
        None => {
            let headers = host.request_headers();
            // Header names and values cannot hold NUL: it separates them.
            let mut saved = Vec::new();
            for (name, value) in &headers {
                saved.extend_from_slice(name.as_bytes());
                saved.push(0);
                saved.extend_from_slice(value.as_bytes());
                saved.push(0);
            }
            host.set_filter_state(CLIENT_HEADERS, &saved);
            headers
        }
    }
}

/// The rule and backend of this attempt, from the endpoint Envoy picked.
fn attempt_target(host: &dyn Host, config: &Compiled) -> Result<Attempt, ApiError> {
    let missing = |detail: &str| {
        ApiError::new(
            500,
            ErrorKind::Server,
            "no_backend_for_endpoint",
            format!("the gateway's upstream filter cannot tell which backend this endpoint is: {detail}"),
        )
    };
    let raw = host.property(TARGET_PROPERTY).ok_or_else(|| missing("no llmgw.target endpoint metadata"))?;
    let text = std::str::from_utf8(&raw).map_err(|_| missing("llmgw.target is not text"))?;
    let (rule, target) = text.split_once('/').ok_or_else(|| missing("llmgw.target is not <rule>/<backend>"))?;
    let (rule, target): (usize, usize) = match (rule.parse(), target.parse()) {
        (Ok(r), Ok(t)) => (r, t),
        _ => return Err(missing("llmgw.target is not <rule>/<backend>")),
    };
    let backend = config
        .rules
        .get(rule)
        .and_then(|r| r.targets.get(target))
        .map(|t| t.backend)
        .ok_or_else(|| missing("llmgw.target names no rule backend of this configuration"))?;
    Ok(Attempt { rule, backend })
}

#[derive(Debug, PartialEq, Eq)]
enum AttemptFate {
    Served,
    Retried,
}

/// An attempt's answer on the upstream copy: counts it, and tells whether Envoy will retry it
/// elsewhere.
fn on_attempt_answer(host: &mut dyn Host, shared: &Shared, routed: &mut Routed) -> AttemptFate {
    let Some(attempt) = routed.attempt else { return AttemptFate::Served };
    let config = &shared.config;
    let status = routed.status;
    let fallback = config.rules.get(attempt.rule).and_then(|r| r.fallback.as_ref());
    // Which attempt this is matters only for an answer Envoy would retry.
    let retried = fallback.is_some_and(|f| {
        f.retries_status(status) && {
            let number = host
                .property(ATTEMPT_PROPERTY)
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map_or(1, u64::from_le_bytes);
            number < u64::from(f.attempts)
        }
    });
    let name = config.backends.get(attempt.backend).map_or("", |b| b.name.as_str());
    if retried && !(500..600).contains(&status) {
        // Envoy's outlier detection counts 5xx only: a retried 429 is reported as the 503 it
        // means for this backend, so a rate-limited backend is ejected like a failing one (the
        // rendered route retries 503 whenever it retries a status below 500).
        host.set_response_header("x-llmgw-upstream-status", &status.to_string());
        host.set_response_header(":status", "503");
    }
    let operation = routed.endpoint.operation();
    shared.attempt_metrics.record(host, (attempt.backend, operation, retried, status), 1, || {
        let labels = Labels {
            backend: name.to_string(),
            model: String::new(),
            operation,
            consumer: String::new(),
            headers: Vec::new(),
        };
        let outcome = if retried { "retried" } else { "served" };
        labels.counter(metrics::ATTEMPTS, &[("outcome", outcome), ("http_status", &status.to_string())], 1)
    });
    if shared.tracing.is_some() {
        record_attempt(host, name, status, if retried { "retried" } else { "served" });
    }
    routed.retried = retried;
    if retried {
        AttemptFate::Retried
    } else {
        AttemptFate::Served
    }
}

/// Appends this attempt to the request's record for the listener's span (bounded; past
/// `trace::MAX_ATTEMPTS` attempts are not recorded).
fn record_attempt(host: &mut dyn Host, backend: &str, status: u16, outcome: &str) {
    let attempt = trace::Attempt { backend, status, outcome, time: host.now_nanos() };
    if let Some(record) = attempt.append(host.property(&[ATTEMPTS_STATE]).unwrap_or_default()) {
        host.set_filter_state(ATTEMPTS_STATE, &record);
    }
}

/// An answer Envoy made itself for a delegated request, handled like an upstream error for the
/// client's own API.
fn own_answer(endpoint: Endpoint, info: RequestInfo) -> Option<Routed> {
    let schema = match endpoint.client_api() {
        ClientApi::OpenAI => Schema::OpenAI,
        ClientApi::Anthropic => Schema::Anthropic,
    };
    let translator = translate::for_backend(endpoint, schema, false).ok()?;
    Some(Routed::new(endpoint, usize::MAX, None, info, translator))
}

fn refuse_response(host: &mut dyn Host, routed: &mut Routed, body: &[u8]) {
    host.set_response_header(":status", "502");
    host.set_response_header("content-type", "application/json");
    host.remove_response_header("content-encoding");
    host.remove_response_header("content-length");
    routed.status = 502;
    routed.error = true;
    routed.usage = None;
    routed.mode = BodyMode::Stream;
    routed.refusal = Some(body.to_vec());
}

/// Hands a new body to the host without joining it: a head replacement is one call; a whole new
/// body replaces the old with its last chunk, then prepends the others (Envoy only replaces from
/// the start or appends).
/// Takes the chunks of a new request body as the translator writes them: the first replaces the
/// client's body in the host, the others are appended.
struct HostBodySink<'h> {
    host: &'h mut dyn Host,
    /// The client's body size (what the first chunk replaces).
    original: usize,
    handed_out: usize,
}

impl Sink for HostBodySink<'_> {
    fn take(&mut self, chunk: &[u8]) {
        if self.handed_out == 0 {
            self.host.set_request_body(self.original, chunk);
        } else {
            self.host.append_request_body(chunk);
        }
        self.handed_out += chunk.len();
    }
}

/// A body edit after the plan's: its `content-length`, when it has one, follows.
fn replace_decode_body(host: &mut dyn Host, size: usize, edit: &NewBody) {
    replace_request_body(host, size, edit);
    if host.request_headers().iter().any(|(n, _)| n.eq_ignore_ascii_case("content-length")) {
        host.set_request_header("content-length", &edit.len(size).to_string());
    }
}

/// A `pd` request's prefill call in flight.
struct Prefill {
    token: u32,
    picked: picker::Picked,
    /// The request body's size in the host (the decode edit replaces it).
    body_len: usize,
}

fn replace_request_body(host: &mut dyn Host, size: usize, new_body: &NewBody) {
    match new_body {
        NewBody::Head { replaced, head } => host.set_request_body(*replaced, head),
        NewBody::Whole(rest) if rest.handed_out() > 0 => {
            // The host holds the handed-out chunks already (they replaced the client's body).
            for chunk in rest.chunks() {
                host.append_request_body(chunk);
            }
        }
        NewBody::Whole(chunks) => {
            let mut parts = chunks.chunks().rev();
            host.set_request_body(size, parts.next().unwrap_or_default());
            for part in parts {
                host.set_request_body(0, part);
            }
        }
    }
}

/// The model and backend of a call no body names a model for: the client's `x-ai-eg-model` (routed
/// by the rules like a body's model), else the one OpenAI-compatible backend configured.
fn header_route(config: &Compiled, client_model: Option<String>) -> Result<(RequestInfo, Option<usize>), ApiError> {
    let info =
        |model: String| RequestInfo { model, stream: false, client_wants_usage: false, has_stream_options: false };
    if let Some(model) = client_model {
        return Ok((info(request::checked_model(model)?), None));
    }
    // Rule backends with their own model override are copies under the same name: one backend.
    let mut serving =
        config.backends.iter().enumerate().filter(|(_, b)| matches!(b.schema(), Schema::OpenAI | Schema::AzureOpenAI));
    let only = match serving.next() {
        Some((index, first)) if serving.all(|(_, b)| b.name == first.name) => Some(index),
        _ => None,
    };
    let index = only.ok_or_else(|| {
        ApiError::bad_request(
            "missing_model",
            format!(
                "this call names no model and the gateway has more than one (or no) OpenAI-compatible \
                 backend: send the header `{MODEL_HEADER}: <model>` naming the model that created the response"
            ),
        )
    })?;
    Ok((info(String::new()), Some(index)))
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        413,
        ErrorKind::InvalidRequest,
        "request_too_large",
        format!("request body exceeds the gateway's limit of {limit} bytes"),
    )
}

fn path_only(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::testing::FakeHost;

    use crate::testing::NoEnv;

    const CONFIG: &str = "
backends:
  - {name: openai, schema: OpenAI, auth: {bearer: sk-upstream}, headers: {set: {openai-organization: org-1}, remove: [x-debug]}}
  - {name: vllm, schema: OpenAI, prefix: /serve/v1, model_override: real-llama, pass_through_authorization: true}
rules:
  - {match: {model: {exact: gpt-4o}}, backends: [{name: openai}]}
  - {match: {model: {glob: 'llama-*'}, headers: [{name: x-team, exact: research}]}, backends: [{name: vllm}]}
max_request_body_bytes: 1000
";

    fn exchange() -> Exchange {
        Exchange::new(Some(Rc::new(Shared::new(parse(CONFIG.as_bytes(), &NoEnv, 0).unwrap()))))
    }

    fn send(x: &mut Exchange, host: &mut FakeHost, body: &[u8]) -> Flow {
        host.request_body = body.to_vec();
        if let Flow::Pause = x.on_request_headers(host, false) {
            if host.reply.is_some() {
                return Flow::Pause;
            }
        }
        x.on_request_body(host, body.len(), true)
    }

    #[test]
    fn routes_by_model_and_applies_backend_edits() {
        let mut x = exchange();
        let mut host = FakeHost::request(
            "POST",
            "/v1/chat/completions?trace=1",
            &[
                ("authorization", "Bearer client-key"),
                ("x-llmgw-backend", "vllm"),
                ("x-ai-eg-model", "spoof"),
                ("x-debug", "1"),
            ],
        );
        assert_eq!(send(&mut x, &mut host, br#"{"model":"gpt-4o","messages":[]}"#), Flow::Continue);
        assert_eq!(host.header("x-llmgw-backend").as_deref(), Some("openai"));
        assert_eq!(host.header("x-ai-eg-model").as_deref(), Some("gpt-4o"));
        assert_eq!(host.header(":path").as_deref(), Some("/v1/chat/completions?trace=1"));
        assert_eq!(host.header("authorization").as_deref(), Some("Bearer sk-upstream"));
        assert_eq!(host.header("openai-organization").as_deref(), Some("org-1"));
        assert_eq!(host.header("accept-encoding").as_deref(), Some("identity"));
        assert_eq!(host.header("x-debug"), None);
        assert_eq!(host.route_cache_clears, 1);
        assert_eq!(host.request_body, br#"{"model":"gpt-4o","messages":[]}"#);
    }

    #[test]
    fn header_match_override_prefix_and_passthrough_auth() {
        let mut x = exchange();
        let body = br#"{"model":"llama-3","messages":[]}"#;
        let len = body.len().to_string();
        let mut host = FakeHost::request(
            "POST",
            "/v1/chat/completions",
            &[("x-team", "research"), ("authorization", "Bearer client"), ("content-length", &len)],
        );
        assert_eq!(send(&mut x, &mut host, body), Flow::Continue);
        assert_eq!(host.header("x-llmgw-backend").as_deref(), Some("vllm"));
        assert_eq!(host.header("x-ai-eg-model").as_deref(), Some("llama-3"));
        assert_eq!(host.header(":path").as_deref(), Some("/serve/v1/chat/completions"));
        assert_eq!(host.header("authorization").as_deref(), Some("Bearer client"));
        assert_eq!(host.request_body, br#"{"model":"real-llama","messages":[]}"#);
        assert_eq!(host.header("content-length"), Some(host.request_body.len().to_string()));

        // Without the header the rule does not match, and there is no default.
        let mut x = exchange();
        let mut host = FakeHost::request("POST", "/v1/chat/completions", &[]);
        assert_eq!(send(&mut x, &mut host, body), Flow::Pause);
        let (status, v) = host.reply_json();
        assert_eq!(status, 404);
        assert_eq!(v["error"]["code"], "model_not_found");
        assert!(v["error"]["message"].as_str().unwrap().contains("llama-3"));
        assert_eq!(host.header("x-llmgw-backend"), None);
        assert_eq!(host.header("x-ai-eg-model").as_deref(), Some("llama-3"), "logged with its model");
    }

    #[test]
    fn local_errors() {
        let cases: &[(&str, &str, &[u8], u16, &str)] = &[
            ("GET", "/v1/chat/completions", b"", 405, "method_not_allowed"),
            ("POST", "/v1/models", b"", 405, "method_not_allowed"),
            ("POST", "/v1/files", b"{}", 404, "unknown_endpoint"),
            ("POST", "/v1/chat/completions", b"nope", 400, "invalid_request"),
            ("POST", "/v1/chat/completions", br#"{"model":7}"#, 400, "invalid_model"),
            ("POST", "/v1/embeddings", br#"{"model":"gpt-4o","stream":true}"#, 400, "invalid_request"),
            ("POST", "/v1/chat/completions", &[b' '; 1001], 413, "request_too_large"),
        ];
        for (method, path, body, status, code) in cases {
            let mut x = exchange();
            let mut host = FakeHost::request(method, path, &[]);
            assert_eq!(send(&mut x, &mut host, body), Flow::Pause, "{method} {path}");
            let (got, v) = host.reply_json();
            assert_eq!((got, v["error"]["code"].as_str().unwrap()), (*status, *code), "{method} {path}");
        }
        let mut x = exchange();
        let mut host = FakeHost::request("GET", "/v1/chat/completions", &[]);
        x.on_request_headers(&mut host, true);
        let (_, headers, _) = host.reply.clone().unwrap();
        assert!(headers.contains(&("allow".to_string(), "POST".to_string())));
        // A declared length over the limit is refused before buffering.
        let mut x = exchange();
        let mut host = FakeHost::request("POST", "/v1/chat/completions", &[("content-length", "5000")]);
        assert_eq!(x.on_request_headers(&mut host, false), Flow::Pause);
        assert_eq!(host.reply_json().0, 413);
    }

    #[test]
    fn a_buffered_answer_ended_by_trailers_is_still_rewritten() {
        // An HTTP/2 upstream may end with trailers: no body callback sees the end of the stream.
        let mut x = exchange();
        let mut host = FakeHost::request("POST", "/v1/chat/completions", &[]);
        assert_eq!(send(&mut x, &mut host, br#"{"model":"gpt-4o","messages":[]}"#), Flow::Continue);
        host.response_headers = vec![(":status".into(), "503".into()), ("content-type".into(), "text/plain".into())];
        assert_eq!(x.on_response_headers(&mut host, false), Flow::Pause);
        for part in [&b"upstream "[..], b"connect error"] {
            host.response_body.extend_from_slice(part);
            let size = host.response_body.len();
            assert_eq!(x.on_response_body(&mut host, size, false), Flow::Pause);
        }
        assert_eq!(x.on_response_trailers(&mut host), Flow::Continue);
        let v: serde_json::Value = serde_json::from_slice(&host.response_body).unwrap();
        assert_eq!(v["error"]["message"].as_str().unwrap(), "upstream connect error");
        assert_eq!(host.response_header("content-length"), Some(host.response_body.len().to_string()));
    }

    const FALLBACK: &str = "
backends:
  - {name: openai, schema: OpenAI, auth: {bearer: sk-upstream}}
  - {name: claude, schema: Anthropic, auth: {x_api_key: ant-key}, host: api.anthropic.com}
rules:
  - match: {model: {prefix: gpt-}}
    backends: [{name: openai}, {name: claude, priority: 1, model_override: claude-sonnet}]
";

    fn fallback(role: &str) -> Exchange {
        let text = format!("{FALLBACK}role: {role}\n");
        Exchange::new(Some(Rc::new(Shared::new(parse(text.as_bytes(), &NoEnv, 0).unwrap()))))
    }

    fn respond(x: &mut Exchange, host: &mut FakeHost, status: &str, body: &[u8]) {
        host.response_headers = vec![(":status".into(), status.into()), ("content-type".into(), "text/plain".into())];
        if x.on_response_headers(host, false) == Flow::Pause || !body.is_empty() {
            host.response_body = body.to_vec();
            x.on_response_body(host, body.len(), true);
        }
    }

    #[test]
    fn a_fallback_rule_is_named_for_envoy_and_left_untranslated() {
        let mut x = fallback("downstream");
        let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
        let mut host =
            FakeHost::request("POST", "/v1/chat/completions", &[("authorization", "Bearer c"), ("x-llmgw-rule", "7")]);
        assert_eq!(send(&mut x, &mut host, body), Flow::Continue);
        assert_eq!(host.header("x-llmgw-rule").as_deref(), Some("0"), "the client's value is replaced");
        assert_eq!(host.header("x-llmgw-backend"), None);
        assert_eq!(host.header("authorization").as_deref(), Some("Bearer c"), "credentials are the attempt's");
        assert_eq!(host.request_body, body, "the body is translated per attempt, upstream");
        assert_eq!(host.route_cache_clears, 1);

        // An attempt's answer (Envoy says it came via the upstream): the upstream copy made it
        // client-shaped, so it passes through untouched.
        let mut y = fallback("downstream");
        let mut host = FakeHost::request("POST", "/v1/chat/completions", &[]);
        host.properties.push(("response.code_details".into(), b"via_upstream".to_vec()));
        send(&mut y, &mut host, body);
        host.response_headers = vec![(":status".into(), "200".into())];
        assert_eq!(y.on_response_headers(&mut host, false), Flow::Continue);
        host.response_body = b"{\"choices\":[]}".to_vec();
        let size = host.response_body.len();
        assert_eq!(y.on_response_body(&mut host, size, true), Flow::Continue);
        assert_eq!(host.response_body, b"{\"choices\":[]}");

        // Envoy's own answer (no backend reachable) is made client-shaped.
        let mut z = fallback("downstream");
        let mut host = FakeHost::request("POST", "/v1/chat/completions", &[]);
        send(&mut z, &mut host, body);
        respond(&mut z, &mut host, "503", b"no healthy upstream");
        let v: serde_json::Value = serde_json::from_slice(&host.response_body).unwrap();
        assert_eq!(v["error"]["message"], "no healthy upstream");
    }

    #[test]
    fn the_upstream_copy_translates_each_attempt_for_its_backend() {
        let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
        let client = FakeHost::request(
            "POST",
            "/v1/chat/completions",
            &[(":authority", "gw"), ("authorization", "Bearer c"), ("anthropic-beta", "x")],
        );

        // Attempt 1 goes to the OpenAI backend (rule 0, backend 0 of the rule).
        let mut x = fallback("upstream");
        let mut host = FakeHost {
            properties: vec![("xds.upstream_host_metadata.filter_metadata.llmgw.target".into(), b"0/0".to_vec())],
            ..client.clone()
        };
        assert_eq!(send(&mut x, &mut host, body), Flow::Continue);
        assert_eq!(host.header("authorization").as_deref(), Some("Bearer sk-upstream"));
        assert_eq!(host.header("x-llmgw-backend"), None, "no routing header upstream");
        assert_eq!(host.header("anthropic-beta"), None, "not forwarded to OpenAI");
        assert_eq!(host.route_cache_clears, 0);
        // 429: Envoy retries it on the next priority; reported as a 503 so the backend is ejected.
        host.properties.push(("upstream.request_attempt_count".into(), 1u64.to_le_bytes().to_vec()));
        host.response_headers = vec![(":status".into(), "429".into()), ("retry-after".into(), "30".into())];
        assert_eq!(x.on_response_headers(&mut host, false), Flow::Continue);
        assert_eq!(host.response_header(":status").as_deref(), Some("503"));
        assert_eq!(host.response_header("x-llmgw-upstream-status").as_deref(), Some("429"));
        let attempts = |h: &FakeHost, outcome: &str| {
            h.samples.iter().filter(|s| s.name.starts_with("llmgw.attempts_total") && s.name.contains(outcome)).count()
        };
        assert_eq!(attempts(&host, "=retried;"), 1);
        x.on_done(&mut host);
        assert!(
            !host.samples.iter().any(|s| s.name.starts_with("llmgw.requests_total")),
            "a retried attempt is no request"
        );

        // Attempt 2: Envoy left attempt 1's headers; the client's come back, then the Anthropic edits.
        let mut y = fallback("upstream");
        let mut host2 = FakeHost {
            request_headers: host.request_headers.clone(),
            filter_state: host.filter_state.clone(),
            properties: vec![
                ("xds.upstream_host_metadata.filter_metadata.llmgw.target".into(), b"0/1".to_vec()),
                ("upstream.request_attempt_count".into(), 2u64.to_le_bytes().to_vec()),
            ],
            ..FakeHost::default()
        };
        assert_eq!(send(&mut y, &mut host2, body), Flow::Continue);
        assert_eq!(host2.header(":path").as_deref(), Some("/v1/messages"));
        assert_eq!(host2.header(":authority").as_deref(), Some("api.anthropic.com"));
        assert_eq!(host2.header("x-api-key").as_deref(), Some("ant-key"));
        assert_eq!(host2.header("authorization"), None, "attempt 1's OpenAI key does not reach Anthropic");
        assert_eq!(host2.header("anthropic-beta").as_deref(), Some("x"), "the client's header is back");
        let sent: serde_json::Value = serde_json::from_slice(&host2.request_body).unwrap();
        assert_eq!(sent["model"], "claude-sonnet", "the rule backend's own model_override");
        // The last attempt's error is the client's answer, in its shape, with its status.
        respond(&mut y, &mut host2, "429", b"slow down");
        assert_eq!(host2.response_header(":status").as_deref(), Some("429"));
        let v: serde_json::Value = serde_json::from_slice(&host2.response_body).unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains("slow down"), "{v}");
        y.on_done(&mut host2);
        assert_eq!(attempts(&host2, "=served;"), 1);
        assert!(host2
            .samples
            .iter()
            .any(|s| s.name.starts_with("llmgw.requests_total") && s.name.contains("=claude;")));
    }

    #[test]
    fn a_retried_429_is_reported_as_503_even_when_only_429_is_retried() {
        let text = "backends: [{name: a, schema: OpenAI}, {name: b, schema: OpenAI}]
rules: [{backends: [{name: a}, {name: b, priority: 1}], retry: {attempts: 2, on: ['429']}}]
role: upstream
";
        let mut x = Exchange::new(Some(Rc::new(Shared::new(parse(text.as_bytes(), &NoEnv, 0).unwrap()))));
        let mut host = FakeHost::request("POST", "/v1/chat/completions", &[]);
        host.properties = vec![
            ("xds.upstream_host_metadata.filter_metadata.llmgw.target".into(), b"0/0".to_vec()),
            ("upstream.request_attempt_count".into(), 1u64.to_le_bytes().to_vec()),
        ];
        assert_eq!(send(&mut x, &mut host, br#"{"model":"m","messages":[]}"#), Flow::Continue);
        host.response_headers = vec![(":status".into(), "429".into())];
        x.on_response_headers(&mut host, false);
        // The rendered route retries 503 with 429, so Envoy retries it and ejects the backend.
        assert_eq!(host.response_header(":status").as_deref(), Some("503"));
    }

    #[test]
    fn an_upstream_copy_without_a_target_answers_500() {
        let mut x = fallback("upstream");
        let mut host = FakeHost::request("POST", "/v1/chat/completions", &[]);
        assert_eq!(x.on_request_headers(&mut host, false), Flow::Pause);
        let (status, v) = host.reply_json();
        assert_eq!((status, v["error"]["code"].as_str()), (500, Some("no_backend_for_endpoint")));
    }

    #[test]
    fn models_and_other_paths() {
        let mut x = exchange();
        let mut host = FakeHost::request("GET", "/v1/models", &[]);
        assert_eq!(x.on_request_headers(&mut host, true), Flow::Pause);
        let (status, v) = host.reply_json();
        assert_eq!((status, v["data"][0]["id"].as_str()), (200, Some("gpt-4o")));

        let mut x = exchange();
        let mut host = FakeHost::request("GET", "/healthz", &[("x-llmgw-backend", "openai")]);
        assert_eq!(x.on_request_headers(&mut host, true), Flow::Continue);
        assert_eq!(host.header("x-llmgw-backend"), None);
        assert!(host.reply.is_none());
    }

    #[test]
    fn anthropic_api_under_its_prefix() {
        let config = "backends: [{name: claude, schema: Anthropic, auth: {x_api_key: k}}, {name: openai, schema: OpenAI}]\n\
                      rules: [{match: {model: {exact: claude-x}}, backends: [{name: claude}]}, {backends: [{name: openai}]}]\n\
                      models: [{id: claude-x, display_name: Claude X, created: 1740000000}]\n\
                      anthropic_prefix: /claude";
        // Messages under the configured prefix reach the backend at its own path.
        let mut x = anthropic_exchange(config);
        let mut host = FakeHost::request("POST", "/claude/v1/messages", &[]);
        let body = br#"{"model":"claude-x","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
        assert_eq!(send(&mut x, &mut host, body), Flow::Continue);
        assert_eq!(host.header(":path").as_deref(), Some("/v1/messages"));
        assert_eq!(host.header("x-llmgw-backend").as_deref(), Some("claude"));

        // count_tokens: passed through to Anthropic, refused in Anthropic's shape elsewhere.
        for path in ["/claude/v1/messages/count_tokens", "/v1/messages/count_tokens"] {
            let mut x = anthropic_exchange(config);
            let mut host = FakeHost::request("POST", path, &[]);
            let body = br#"{"model":"claude-x","messages":[{"role":"user","content":"hi"}]}"#;
            assert_eq!(send(&mut x, &mut host, body), Flow::Continue, "{path}");
            assert_eq!(host.header(":path").as_deref(), Some("/v1/messages/count_tokens"));
            answer(
                &mut x,
                &mut host,
                &[(":status", "200"), ("content-type", "application/json")],
                br#"{"input_tokens":3}"#,
            );
            assert_eq!(host.response_body, br#"{"input_tokens":3}"#);
            x.on_log(&mut host);
            assert!(!host.samples.iter().any(|s| s.name.starts_with("gen_ai.client.token.usage")));
            assert!(host.samples.iter().any(|s| s.name.contains("gen_ai_operation_name=.=count_tokens")));
        }
        let mut x = anthropic_exchange(config);
        let mut host = FakeHost::request("POST", "/claude/v1/messages/count_tokens", &[]);
        send(&mut x, &mut host, br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#);
        let (status, v) = host.reply_json();
        assert_eq!(
            (status, v["type"].as_str(), v["error"]["type"].as_str()),
            (400, Some("error"), Some("invalid_request_error"))
        );
        assert!(v["error"]["message"].as_str().unwrap().contains("cannot count tokens"), "{v}");

        // The model list in Anthropic's shape under the prefix; OpenAI's stays at /v1/models.
        let mut x = anthropic_exchange(config);
        let mut host = FakeHost::request("GET", "/claude/v1/models?limit=10", &[]);
        assert_eq!(x.on_request_headers(&mut host, true), Flow::Pause);
        let (status, v) = host.reply_json();
        assert_eq!(status, 200);
        assert_eq!(
            v["data"][0],
            serde_json::json!({"type":"model","id":"claude-x","display_name":"Claude X","created_at":"2025-02-19T21:20:00Z"})
        );
        assert_eq!((v["has_more"].as_bool(), v["last_id"].as_str()), (Some(false), Some("claude-x")));
        let mut x = anthropic_exchange(config);
        let mut host = FakeHost::request("GET", "/claude/v1/models?limit=0", &[]);
        x.on_request_headers(&mut host, true);
        assert_eq!(host.reply_json().1["error"]["type"], "invalid_request_error");
        let mut x = anthropic_exchange(config);
        let mut host = FakeHost::request("GET", "/v1/models", &[]);
        x.on_request_headers(&mut host, true);
        assert_eq!(host.reply_json().1["data"][0]["object"], "model");

        // Unknown paths under the prefix are the gateway's: 404 in Anthropic's shape. The default
        // prefix is not served when another is configured.
        let mut x = anthropic_exchange(config);
        let mut host = FakeHost::request("POST", "/claude/v1/complete", &[]);
        x.on_request_headers(&mut host, false);
        let (status, v) = host.reply_json();
        assert_eq!((status, v["error"]["type"].as_str()), (404, Some("not_found_error")));
        let mut x = anthropic_exchange(config);
        let mut host = FakeHost::request("POST", "/anthropic/v1/messages", &[]);
        assert_eq!(x.on_request_headers(&mut host, false), Flow::Continue);
        // Without a configuration the default prefix still gets Anthropic-shaped errors.
        let mut x = Exchange::new(None);
        let mut host = FakeHost::request("POST", "/anthropic/v1/messages", &[]);
        x.on_request_headers(&mut host, false);
        assert_eq!(host.reply_json().1["type"], "error");
    }

    #[test]
    fn unconfigured_gateway_answers_500() {
        let mut x = Exchange::new(None);
        let mut host = FakeHost::request("POST", "/v1/chat/completions", &[]);
        x.on_request_headers(&mut host, false);
        assert_eq!(host.reply_json().0, 500);
    }

    #[test]
    fn usage_becomes_filter_state_and_metrics() {
        let mut x = exchange();
        let mut host = FakeHost::request("POST", "/v1/chat/completions", &[]);
        host.now = 1_000_000_000;
        send(&mut x, &mut host, br#"{"model":"gpt-4o","stream":true}"#);
        host.response_headers =
            vec![(":status".into(), "200".into()), ("content-type".into(), "text/event-stream".into())];
        assert_eq!(x.on_response_headers(&mut host, false), Flow::Continue);
        host.now += 50_000_000;
        host.response_body = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n".to_vec();
        let n = host.response_body.len();
        x.on_response_body(&mut host, n, false);
        host.now += 100_000_000;
        host.response_body = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":11,\"total_tokens\":15}}\n\ndata: [DONE]\n\n".to_vec();
        let n = host.response_body.len();
        x.on_response_body(&mut host, n, true);
        // The usage chunk was injected by us, so the client does not see it.
        assert_eq!(host.response_body, b"data: [DONE]\n\n");
        assert_eq!(host.filter_state.get("llm_total_token").map(String::as_str), Some("15"));
        assert_eq!(host.filter_state.get("llm_input_token").map(String::as_str), Some("4"));
        x.on_log(&mut host);
        let find = |prefix: &str| {
            host.samples.iter().filter(|s| s.name.starts_with(prefix)).map(|s| s.value).collect::<Vec<_>>()
        };
        assert_eq!(find("gen_ai.client.token.usage"), vec![4, 11]);
        assert_eq!(find("gen_ai.server.request.duration"), vec![150]);
        assert_eq!(find("gen_ai.server.time_to_first_token"), vec![50]);
        assert_eq!(find("gen_ai.server.time_per_output_token"), vec![10]);
        assert_eq!(find("llmgw.requests_total.llmgw_backend=.=openai;.;gen_ai_request_model=.=gpt-4o;.;gen_ai_operation_name=.=chat;.;outcome=.=success;.;"), vec![1]);
    }

    #[test]
    fn upstream_errors_are_wrapped() {
        let mut x = exchange();
        let mut host = FakeHost::request("POST", "/v1/chat/completions", &[]);
        send(&mut x, &mut host, br#"{"model":"gpt-4o"}"#);
        host.response_headers = vec![
            (":status".into(), "503".into()),
            ("content-type".into(), "text/plain".into()),
            ("content-length".into(), "19".into()),
        ];
        assert_eq!(x.on_response_headers(&mut host, false), Flow::Pause);
        host.response_body = b"no healthy upstream".to_vec();
        assert_eq!(x.on_response_body(&mut host, 19, true), Flow::Continue);
        let v: serde_json::Value = serde_json::from_slice(&host.response_body).unwrap();
        assert_eq!(v["error"]["message"], "no healthy upstream");
        assert_eq!(v["error"]["type"], "server_error");
        assert_eq!(host.response_header("content-length"), Some(host.response_body.len().to_string()));
        assert_eq!(host.response_header("content-type").as_deref(), Some("application/json"));
        x.on_log(&mut host);
        assert!(host.samples.iter().any(|s| s.name.contains("outcome=.=failure")));
    }

    #[test]
    fn unreadable_translated_success_becomes_502() {
        let config = "backends: [{name: claude, schema: Anthropic, auth: {x_api_key: k}}]";
        let mut x = Exchange::new(Some(Rc::new(Shared::new(parse(config.as_bytes(), &NoEnv, 0).unwrap()))));
        let mut host = FakeHost::request("POST", "/v1/chat/completions", &[]);
        send(&mut x, &mut host, br#"{"model":"claude-x","messages":[{"role":"user","content":"hi"}]}"#);
        host.response_headers =
            vec![(":status".into(), "200".into()), ("content-type".into(), "application/json".into())];
        assert_eq!(x.on_response_headers(&mut host, false), Flow::Pause);
        host.response_body = b"<html>not json</html>".to_vec();
        x.on_response_body(&mut host, 21, true);
        assert_eq!(host.response_header(":status").as_deref(), Some("502"));
        let v: serde_json::Value = serde_json::from_slice(&host.response_body).unwrap();
        assert_eq!(v["error"]["code"], "invalid_upstream_response");
        x.on_log(&mut host);
        assert!(host.samples.iter().any(|s| s.name.contains("outcome=.=failure")));
    }

    fn anthropic_exchange(config: &str) -> Exchange {
        Exchange::new(Some(Rc::new(Shared::new(parse(config.as_bytes(), &NoEnv, 0).unwrap()))))
    }

    #[test]
    fn only_allowlisted_client_headers_reach_the_provider_and_operator_headers_never_come_back() {
        let mut x = exchange();
        let mut host = FakeHost::request(
            "POST",
            "/v1/chat/completions",
            &[
                ("openai-organization", "org-client"),
                ("openai-project", "proj-client"),
                ("cookie", "session=1"),
                ("openai-beta", "assistants=v2"),
                ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ],
        );
        assert_eq!(send(&mut x, &mut host, br#"{"model":"gpt-4o"}"#), Flow::Continue);
        // The backend sets its own organization; the client's never goes.
        assert_eq!(host.header("openai-organization").as_deref(), Some("org-1"));
        assert_eq!(host.header("openai-project"), None);
        assert_eq!(host.header("cookie"), None);
        assert_eq!(host.header("openai-beta").as_deref(), Some("assistants=v2"));
        assert!(host.header("traceparent").is_some());
        host.response_headers = vec![
            (":status".into(), "200".into()),
            ("content-type".into(), "application/json".into()),
            ("openai-organization".into(), "operator-org".into()),
            ("anthropic-organization-id".into(), "operator".into()),
        ];
        x.on_response_headers(&mut host, false);
        assert_eq!(host.response_header("openai-organization"), None);
        assert_eq!(host.response_header("anthropic-organization-id"), None);
    }

    #[test]
    fn local_replies_are_counted_with_status_and_code() {
        let mut x = exchange();
        let mut host = FakeHost::request("POST", "/v1/chat/completions", &[]);
        send(&mut x, &mut host, br#"{"model":"nope"}"#);
        assert_eq!(host.reply_json().0, 404);
        let names: Vec<_> = host.samples.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["llmgw.requests_total.llmgw_backend=.=;.;gen_ai_request_model=.=nope;.;gen_ai_operation_name=.=chat;.;outcome=.=rejected;.;http_status=.=404;.;error_code=.=model_not_found;.;"]
        );
    }

    #[test]
    fn anthropic_endpoint_errors_are_anthropic_shaped() {
        let mut x = exchange();
        let mut host = FakeHost::request("POST", "/v1/messages", &[("content-length", "5000")]);
        x.on_request_headers(&mut host, false);
        let (status, v) = host.reply_json();
        assert_eq!((status, v["type"].as_str()), (413, Some("error")));
        let mut x = exchange();
        let mut host = FakeHost::request("POST", "/v1/messages", &[]);
        x.on_request_headers(&mut host, true);
        assert_eq!(host.reply_json().1["error"]["type"], "invalid_request_error");
        let mut x = Exchange::new(None);
        let mut host = FakeHost::request("POST", "/v1/messages", &[]);
        x.on_request_headers(&mut host, false);
        assert_eq!(host.reply_json().1["type"], "error");
    }

    #[test]
    fn budgets_refuse_before_upstream_in_the_client_shape_and_settle_at_the_end() {
        let config = r#"{"backends":[{"name":"openai","schema":"OpenAI"}],"consumer_header":"x-llmgw-consumer",
            "budgets":[{"name":"team-a-tokens","consumer":"team-a","tokens":300,"per":"minute"},
                       {"name":"rpm","consumer":"*","requests":100,"per":"minute"}]}"#;
        let shared = Rc::new(Shared::new(parse(config.as_bytes(), &NoEnv, 0).unwrap()));
        let mut store = FakeHost::default();
        crate::budget::prepare(&mut store, &shared.config.budgets);
        // 40 bytes of body (10 tokens) + max_tokens 100: 110 reserved per request.
        let body = br#"{"model":"gpt-4o","max_tokens":100,"x":1}"#;
        let request = |path: &str, store: &FakeHost| {
            let mut host = FakeHost::request("POST", path, &[("x-llmgw-consumer", "team-a")]);
            host.shared = store.shared.clone();
            host.next_cas = store.next_cas;
            host.now = 30 * 1_000_000_000;
            host
        };
        let mut first = Exchange::new(Some(shared.clone()));
        let mut host = request("/v1/chat/completions", &store);
        assert_eq!(send(&mut first, &mut host, body), Flow::Continue);
        assert_eq!(host.filter_state.get("llmgw_consumer").map(String::as_str), Some("team-a"));
        let mut second = Exchange::new(Some(shared.clone()));
        let mut held = request("/v1/chat/completions", &host);
        assert_eq!(send(&mut second, &mut held, body), Flow::Continue);
        // The third does not fit (330 > 300): refused in OpenAI's shape, nothing forwarded.
        let mut third = Exchange::new(Some(shared.clone()));
        let mut host = request("/v1/chat/completions", &held);
        assert_eq!(send(&mut third, &mut host, body), Flow::Pause);
        let (status, v) = host.reply_json();
        assert_eq!((status, v["error"]["code"].as_str()), (429, Some("rate_limit_exceeded")), "{v}");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        let headers = &host.reply.as_ref().unwrap().1;
        let get = |n: &str| headers.iter().find(|(h, _)| h == n).map(|(_, v)| v.as_str());
        assert_eq!((get("retry-after"), get("x-llmgw-budget")), (Some("30"), Some("team-a-tokens")));
        assert_eq!(host.header("x-llmgw-backend"), None);
        assert!(host.samples.iter().any(|s| s.name == "llmgw.budget_refusals_total.llmgw_budget=.=team-a-tokens;.;"));
        // An Anthropic client is refused in Anthropic's shape.
        let mut fourth = Exchange::new(Some(shared.clone()));
        let mut host = request("/v1/messages", &held);
        send(&mut fourth, &mut host, body);
        let (status, v) = host.reply_json();
        assert_eq!(
            (status, v["type"].as_str(), v["error"]["type"].as_str()),
            (429, Some("error"), Some("rate_limit_error"))
        );
        // The first ends with 12 tokens used, the second with an upstream error: both settle, and a
        // request fits again.
        let mut host = held;
        let usage = br#"{"id":"c","object":"chat.completion","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;
        answer(&mut first, &mut host, &[(":status", "200"), ("content-type", "application/json")], usage);
        first.on_log(&mut host);
        answer(&mut second, &mut host, &[(":status", "500"), ("content-type", "application/json")], b"{}");
        second.on_log(&mut host);
        let mut fifth = Exchange::new(Some(shared));
        let mut after = request("/v1/chat/completions", &host);
        assert_eq!(send(&mut fifth, &mut after, body), Flow::Continue);
        let (count, _) = after.shared_data("llmgw.budget.team-a-tokens.team-a").unwrap();
        assert_eq!(count.get(8..16), Some(&(12u64 + 110).to_le_bytes()[..]));
        let (count, _) = after.shared_data("llmgw.budget.rpm.team-a").unwrap();
        assert_eq!(count.get(8..16), Some(&3u64.to_le_bytes()[..]), "requests keep their 1; refused ones none");
    }

    #[test]
    fn a_cached_answer_is_replayed_without_upstream_or_budget_and_a_miss_is_recorded() {
        let config = r#"{"backends":[{"name":"openai","schema":"OpenAI"}],"consumer_header":"x-llmgw-consumer",
            "rules":[{"backends":[{"name":"openai"}],"cache":{"mode":"exact","ttl":"1m"}}],
            "budgets":[{"name":"rpm","consumer":"*","requests":100,"per":"minute"}]}"#;
        let shared = Rc::new(Shared::new(parse(config.as_bytes(), &NoEnv, 0).unwrap()));
        let body = br#"{"model":"gpt-4o","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#;
        let request = team_a_request;
        let rpm = team_a_rpm;
        let mut first = Exchange::new(Some(shared.clone()));
        let mut host = request(&FakeHost::default(), &[]);
        assert_eq!(send(&mut first, &mut host, body), Flow::Continue);
        let json = br#"{"id":"c1","object":"chat.completion","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;
        answer(&mut first, &mut host, &[(":status", "200"), ("content-type", "application/json")], json);
        first.on_log(&mut host);
        assert_eq!(
            host.response_headers.iter().find(|(n, _)| n == "x-llmgw-cache").map(|(_, v)| v.as_str()),
            Some("miss")
        );
        assert!(host.samples.iter().any(|s| s.name == "llmgw.cache_misses_total"));
        let charged = rpm(&host);
        // The same request again: answered here, usage marked cached, no budget charged.
        let mut second = Exchange::new(Some(shared.clone()));
        let mut hit = request(&host, &[]);
        assert_eq!(send(&mut second, &mut hit, body), Flow::Pause);
        let (status, headers, reply) = hit.reply.clone().unwrap();
        assert_eq!(status, 200);
        assert!(headers.contains(&("x-llmgw-cache".into(), "hit".into())));
        let v: serde_json::Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(
            (v["id"].as_str(), v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64()),
            (Some("c1"), Some(5))
        );
        second.on_log(&mut hit);
        assert_eq!(rpm(&hit), charged, "a hit charges no budget");
        assert!(hit.samples.iter().any(|s| s.name == "llmgw.cache_hits_total"));
        // no-cache: not read (forwarded), still recorded; another consumer never gets team-a's.
        let mut third = Exchange::new(Some(shared.clone()));
        let mut fresh = request(&hit, &[("cache-control", "no-cache")]);
        assert_eq!(send(&mut third, &mut fresh, body), Flow::Continue);
        let mut fourth = Exchange::new(Some(shared.clone()));
        let mut other = request(&hit, &[]);
        other.set_request_header("x-llmgw-consumer", "team-b");
        assert_eq!(send(&mut fourth, &mut other, body), Flow::Continue);
        // A streamed request is its own entry, replayed as the stream the client got.
        let streamed =
            br#"{"model":"gpt-4o","temperature":0,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let mut fifth = Exchange::new(Some(shared.clone()));
        let mut host = request(&hit, &[]);
        assert_eq!(send(&mut fifth, &mut host, streamed), Flow::Continue);
        let sse =
            b"data: {\"id\":\"s\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"yo\"}}]}\n\ndata: [DONE]\n\n";
        answer(&mut fifth, &mut host, &[(":status", "200"), ("content-type", "text/event-stream")], sse);
        let mut sixth = Exchange::new(Some(shared.clone()));
        let mut replay = request(&host, &[]);
        assert_eq!(send(&mut sixth, &mut replay, streamed), Flow::Pause);
        let (_, headers, reply) = replay.reply.clone().unwrap();
        assert!(headers.contains(&("content-type".into(), "text/event-stream".into())));
        assert_eq!(reply, host.response_body, "the client's stream, byte for byte");
        // An error is never cached.
        let mut seventh = Exchange::new(Some(shared.clone()));
        let other_body = br#"{"model":"gpt-4o","temperature":0,"messages":[]}"#;
        let mut host = request(&replay, &[]);
        send(&mut seventh, &mut host, other_body);
        answer(&mut seventh, &mut host, &[(":status", "500"), ("content-type", "application/json")], b"{}");
        let mut eighth = Exchange::new(Some(shared));
        let mut again = request(&host, &[]);
        assert_eq!(send(&mut eighth, &mut again, other_body), Flow::Continue);
    }

    #[test]
    fn a_semantic_rule_embeds_the_prompt_and_serves_a_near_one_from_the_cache() {
        let config = r#"{"backends":[{"name":"openai","schema":"OpenAI"},{"name":"emb","schema":"OpenAI"}],
            "consumer_header":"x-llmgw-consumer",
            "rules":[{"backends":[{"name":"openai"}],"cache":{"mode":"semantic","similarity":0.9,
              "embeddings":{"backend":"emb","model":"mini"}}}],
            "budgets":[{"name":"rpm","consumer":"*","requests":100,"per":"minute"}]}"#;
        let shared = Rc::new(Shared::new(parse(config.as_bytes(), &NoEnv, 0).unwrap()));
        let body =
            |q: &str| format!(r#"{{"model":"gpt-4o","temperature":0,"messages":[{{"role":"user","content":"{q}"}}]}}"#);
        let embedding = |v: &str| format!(r#"{{"data":[{{"embedding":[{v}]}}]}}"#).into_bytes();
        let request = |store: &FakeHost| team_a_request(store, &[]);
        let rpm = team_a_rpm;
        // A miss: paused for the embedding, resumed, its answer stored with the vector.
        let mut first = Exchange::new(Some(shared.clone()));
        let mut host = request(&FakeHost::default());
        assert_eq!(send(&mut first, &mut host, body("capital of France?").as_bytes()), Flow::Pause);
        let (cluster, _, call) = host.calls.first().cloned().unwrap();
        assert_eq!(
            (cluster.as_str(), call.as_slice()),
            ("emb", &br#"{"model":"mini","input":"capital of France?"}"#[..])
        );
        first.on_call_response(&mut host, 99, 200, &embedding("0.9,0.1,0"));
        assert_eq!(host.resumed, 0, "another call's answer is not this one's");
        first.on_call_response(&mut host, 1, 200, &embedding("0.9,0.1,0"));
        assert_eq!((host.resumed, host.reply.is_none()), (1, true));
        let json = br#"{"id":"c1","object":"chat.completion","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;
        answer(&mut first, &mut host, &[(":status", "200"), ("content-type", "application/json")], json);
        first.on_log(&mut host);
        let charged = rpm(&host);
        // A paraphrase (a near vector): answered from the cache, its budget released.
        let mut second = Exchange::new(Some(shared.clone()));
        let mut hit = request(&host);
        assert_eq!(send(&mut second, &mut hit, body("France's capital city?").as_bytes()), Flow::Pause);
        second.on_call_response(&mut hit, 1, 200, &embedding("0.88,0.12,0.01"));
        let (status, headers, reply) = hit.reply.clone().unwrap();
        assert_eq!((status, hit.resumed), (200, 0));
        assert!(headers.contains(&("x-llmgw-cache".into(), "hit".into())));
        assert!(String::from_utf8_lossy(&reply).contains(r#""id":"c1""#));
        second.on_log(&mut hit);
        assert_eq!(rpm(&hit), charged, "a hit charges no budget");
        // The hit is a request in the gen_ai metrics, its tokens counted as cached.
        let named = |host: &FakeHost, part: &str| host.samples.iter().filter(|s| s.name.contains(part)).count();
        assert_eq!(named(&hit, "llmgw.requests_total.llmgw_backend=.=;.;"), 1);
        assert!(hit.samples.iter().any(|s| s.name.contains("gen_ai_token_type=.=cached") && s.value == 12));
        // The same prompt again is an exact hit: no embedding call at all.
        let mut third = Exchange::new(Some(shared.clone()));
        let mut exact = request(&hit);
        assert_eq!(send(&mut third, &mut exact, body("capital of France?").as_bytes()), Flow::Pause);
        assert!(exact.calls.is_empty() && exact.reply.is_some());
        // Unrelated: forwarded. The embeddings backend failing: forwarded, a miss, not stored.
        for answer_of_backend in [Some(embedding("0,0,1")), None] {
            let mut fourth = Exchange::new(Some(shared.clone()));
            let mut miss = request(&hit);
            assert_eq!(send(&mut fourth, &mut miss, body("how to bake bread").as_bytes()), Flow::Pause);
            match &answer_of_backend {
                Some(vector) => fourth.on_call_response(&mut miss, 1, 200, vector),
                None => fourth.on_call_response(&mut miss, 1, 503, b"upstream connect error"),
            }
            assert_eq!((miss.resumed, miss.reply.is_none()), (1, true));
            answer(&mut fourth, &mut miss, &[(":status", "200"), ("content-type", "application/json")], json);
            assert_eq!(miss.response_header("x-llmgw-cache").as_deref(), Some("miss"));
            let failures = named(&miss, "llmgw.cache_embedding_failures_total");
            assert_eq!(failures, usize::from(answer_of_backend.is_none()));
        }
        // A host that refuses the call: forwarded at once.
        let mut fifth = Exchange::new(Some(shared));
        let mut refused = request(&hit);
        refused.refuse_calls = true;
        assert_eq!(send(&mut fifth, &mut refused, body("something else").as_bytes()), Flow::Continue);
        assert_eq!(named(&refused, "llmgw.cache_embedding_failures_total"), 1);
    }

    #[test]
    fn the_picker_sets_a_configured_destination_and_releases_it_once() {
        let config = r#"{"backends":[{"name":"vllm","schema":"OpenAI","picker":{"algorithm":"least-request",
            "endpoints":["127.0.0.1:8001","127.0.0.1:8002"]}},{"name":"openai","schema":"OpenAI"}],
            "rules":[{"match":{"model":{"exact":"gpt-4o"}},"backends":[{"name":"openai"}]},{"backends":[{"name":"vllm"}]}]}"#;
        let shared = Rc::new(Shared::new(parse(config.as_bytes(), &NoEnv, 0).unwrap()));
        let mut host =
            FakeHost::request("POST", "/v1/chat/completions", &[("x-llmgw-destination", "169.254.169.254:80")]);
        crate::picker::prepare_all(&mut host, &shared.config.backends);
        let in_flight = |host: &FakeHost, addr: &str| {
            let (bytes, _) = host.shared_data(&format!("llmgw.picker.vllm.inflight.{addr}")).unwrap();
            u64::from_le_bytes(bytes[..8].try_into().unwrap())
        };
        // The client's destination is never honoured: removed, then the picked endpoint is set.
        let mut first = Exchange::new(Some(shared.clone()));
        assert_eq!(send(&mut first, &mut host, br#"{"model":"llama","messages":[]}"#), Flow::Continue);
        // The pick first, then the endpoint Envoy retries on if the pick refuses the connection.
        let listed = host.header("x-llmgw-destination").unwrap();
        let (chosen, retry) = listed.split_once(',').map(|(a, b)| (a.to_string(), b.to_string())).unwrap();
        assert!(chosen == "127.0.0.1:8001" || chosen == "127.0.0.1:8002", "{chosen}");
        assert!(retry != chosen && (retry == "127.0.0.1:8001" || retry == "127.0.0.1:8002"), "{listed}");
        assert_eq!(in_flight(&host, &chosen), 1);
        // The next request goes to the idle endpoint.
        let mut second = Exchange::new(Some(shared.clone()));
        host.request_headers.retain(|(n, _)| n != "x-llmgw-destination");
        send(&mut second, &mut host, br#"{"model":"llama","messages":[]}"#);
        let other = host.header("x-llmgw-destination").unwrap();
        assert_eq!(other, format!("{retry},{chosen}"));
        let other = retry;
        // A stream torn down (on_done before, or without, on_log) and a normal end: one release each.
        second.on_done(&mut host);
        second.on_log(&mut host);
        first.on_log(&mut host);
        first.on_done(&mut host);
        assert_eq!((in_flight(&host, &chosen), in_flight(&host, &other)), (0, 0));
        let gauge: i64 = host.gauges.iter().map(|(_, d)| d).sum();
        assert_eq!((host.gauges.len(), gauge), (4, 0));
        // A backend without a picker: the client's header is removed and none is set.
        let mut plain = FakeHost::request("POST", "/v1/chat/completions", &[("x-llmgw-destination", "10.0.0.1:80")]);
        let mut x = Exchange::new(Some(shared));
        send(&mut x, &mut plain, br#"{"model":"gpt-4o","messages":[]}"#);
        assert_eq!(
            (plain.header("x-llmgw-backend").as_deref(), plain.header("x-llmgw-destination")),
            (Some("openai"), None)
        );
    }

    #[test]
    fn pd_prefills_then_decodes_with_the_prefills_kv_transfer_params() {
        let config = r#"{"backends":[{"name":"vllm","schema":"OpenAI","picker":{"algorithm":"pd",
            "endpoints":["127.0.0.1:8201"],"prefill_endpoints":["127.0.0.1:8101","127.0.0.1:8102"]}}],
            "rules":[{"backends":[{"name":"vllm"}]}]}"#;
        let shared = Rc::new(Shared::new(parse(config.as_bytes(), &NoEnv, 0).unwrap()));
        let body = br#"{"model":"q","messages":[{"role":"user","content":"hi"}],"stream":true,"kv_transfer_params":{"remote_host":"10.9.9.9"}}"#;
        let length = body.len().to_string();
        let mut host = FakeHost::request(
            "POST",
            "/v1/chat/completions",
            &[("authorization", "Bearer k"), ("x-request-id", "r1"), ("cookie", "secret"), ("content-length", &length)],
        );
        crate::picker::prepare_all(&mut host, &shared.config.backends);
        let mut x = Exchange::new(Some(shared.clone()));
        // Held until the prefill answers.
        assert_eq!(send(&mut x, &mut host, body), Flow::Pause);
        assert_eq!(host.header("x-llmgw-destination").as_deref(), Some("127.0.0.1:8201"));
        let (cluster, headers, prefill) = host.calls[0].clone();
        let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        // The request as the plan left it: the client's key was not the backend's to see.
        assert_eq!(
            (cluster.as_str(), get(":path"), get("authorization")),
            ("vllm", Some("/v1/chat/completions"), None)
        );
        assert_eq!((get("x-request-id"), get("cookie")), (Some("r1"), None));
        let prefill_at = get("x-llmgw-destination").unwrap().to_string();
        assert!(prefill_at.starts_with("127.0.0.1:81"), "{prefill_at}");
        let prefill: serde_json::Value = serde_json::from_slice(&prefill).unwrap();
        assert_eq!((prefill["max_tokens"].clone(), prefill["stream"].clone()), (1.into(), false.into()));
        assert_eq!(prefill["kv_transfer_params"]["do_remote_decode"], true);
        let in_flight = |host: &FakeHost, addr: &str| {
            let (bytes, _) = host.shared_data(&format!("llmgw.picker.vllm.inflight.{addr}")).unwrap();
            u64::from_le_bytes(bytes[..8].try_into().unwrap())
        };
        assert_eq!((in_flight(&host, &prefill_at), in_flight(&host, "127.0.0.1:8201")), (1, 1));
        // Another stream's answer is not this one's.
        x.on_call_response(&mut host, 7, 200, b"{}");
        assert_eq!(host.resumed, 0);
        let answer = br#"{"choices":[],"kv_transfer_params":{"do_remote_prefill":true,"remote_engine_id":"p1","remote_block_ids":[1]}}"#;
        x.on_call_response(&mut host, 1, 200, answer);
        assert_eq!(host.resumed, 1);
        let decode: serde_json::Value = serde_json::from_slice(&host.request_body).unwrap();
        assert_eq!(decode["kv_transfer_params"]["remote_engine_id"], "p1");
        assert_eq!(decode["stream"], true);
        assert_eq!(host.header("content-length"), Some(host.request_body.len().to_string()));
        assert_eq!(in_flight(&host, &prefill_at), 0);
        x.on_log(&mut host);
        x.on_done(&mut host);
        assert_eq!(in_flight(&host, "127.0.0.1:8201"), 0);

        // A failed prefill: decoded whole, the client's kv_transfer_params removed.
        let mut x = Exchange::new(Some(shared.clone()));
        assert_eq!(send(&mut x, &mut host, body), Flow::Pause);
        x.on_call_response(&mut host, 2, 503, b"{}");
        let decode: serde_json::Value = serde_json::from_slice(&host.request_body).unwrap();
        assert!(decode.get("kv_transfer_params").is_none(), "{decode}");
        x.on_done(&mut host);
        // A client gone while the prefill runs: nothing stays counted.
        let mut x = Exchange::new(Some(shared));
        assert_eq!(send(&mut x, &mut host, body), Flow::Pause);
        x.on_done(&mut host);
        for addr in ["127.0.0.1:8101", "127.0.0.1:8102", "127.0.0.1:8201"] {
            assert_eq!(in_flight(&host, addr), 0, "{addr}");
        }
    }

    #[test]
    fn an_endpoint_envoy_could_not_connect_to_is_skipped_by_the_next_picks() {
        let config = r#"{"backends":[{"name":"vllm","schema":"OpenAI","picker":{"algorithm":"random",
            "endpoints":["127.0.0.1:8001","127.0.0.1:8002"]}}]}"#;
        let shared = Rc::new(Shared::new(parse(config.as_bytes(), &NoEnv, 0).unwrap()));
        let mut host = FakeHost::request("POST", "/v1/chat/completions", &[]);
        crate::picker::prepare_all(&mut host, &shared.config.backends);
        let body = br#"{"model":"llama","messages":[]}"#;
        let mut failed = Exchange::new(Some(shared.clone()));
        send(&mut failed, &mut host, body);
        // A 503 the endpoint itself sent is an answer, not a dead endpoint.
        host.properties.push(("response.code_details".into(), b"via_upstream".to_vec()));
        answer(&mut failed, &mut host, &[(":status", "503")], b"{}");
        assert!(host.shared_data("llmgw.picker.vllm.down").is_none());
        host.properties.clear();
        host.properties.push((
            "response.code_details".into(),
            b"upstream_reset_before_response_started{remote_connection_failure}".to_vec(),
        ));
        let mut refused = Exchange::new(Some(shared.clone()));
        host.request_headers.retain(|(n, _)| n != "x-llmgw-destination");
        host.now = 1;
        send(&mut refused, &mut host, body);
        let first_dead = host.header("x-llmgw-destination").unwrap();
        let first_dead = first_dead.split(',').next().unwrap().to_string();
        answer(&mut refused, &mut host, &[(":status", "503")], b"upstream connect error");
        let listed_after = |host: &mut FakeHost, now: u64| {
            let mut next = Exchange::new(Some(shared.clone()));
            host.request_headers.retain(|(n, _)| n != "x-llmgw-destination");
            host.now = now;
            send(&mut next, host, body);
            let listed = host.header("x-llmgw-destination").unwrap();
            next.on_log(host);
            listed
        };
        let alive = if first_dead == "127.0.0.1:8001" { "127.0.0.1:8002" } else { "127.0.0.1:8001" };
        for i in 0..16 {
            assert_eq!(listed_after(&mut host, 2 + i), format!("{alive},{first_dead}"), "retried on last");
        }
        // Served by the endpoint retried on: the picked one refused, so it is skipped too.
        host.properties.clear();
        let later = 2 * crate::picker::DOWN_COOLDOWN_MS * 1_000_000;
        let mut retried = Exchange::new(Some(shared.clone()));
        host.request_headers.retain(|(n, _)| n != "x-llmgw-destination");
        host.now = later;
        send(&mut retried, &mut host, body);
        let listed = host.header("x-llmgw-destination").unwrap();
        let (picked, served) = listed.split_once(',').unwrap();
        let (picked, served) = (picked.to_string(), served.to_string());
        host.properties.push(("upstream.address".into(), served.clone().into_bytes()));
        answer(&mut retried, &mut host, &[(":status", "200")], b"{}");
        retried.on_log(&mut host);
        host.properties.clear();
        for i in 1..16 {
            assert_eq!(listed_after(&mut host, later + i), format!("{served},{picked}"), "{picked} skipped");
        }
    }

    /// A chat request of consumer team-a, on the shared data (and clock) of `store`.
    fn team_a_request(store: &FakeHost, extra: &[(&str, &str)]) -> FakeHost {
        let mut headers = vec![("x-llmgw-consumer", "team-a")];
        headers.extend_from_slice(extra);
        let mut host = FakeHost::request("POST", "/v1/chat/completions", &headers);
        host.shared = store.shared.clone();
        host.next_cas = store.next_cas;
        host.now = 5 * 1_000_000_000;
        host
    }

    /// The `rpm` budget's counter of team-a.
    fn team_a_rpm(host: &FakeHost) -> Option<Vec<u8>> {
        host.shared_data("llmgw.budget.rpm.team-a").and_then(|(v, _)| v.get(8..16).map(<[u8]>::to_vec))
    }

    fn answer(x: &mut Exchange, host: &mut FakeHost, headers: &[(&str, &str)], body: &[u8]) -> Flow {
        host.response_headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        if body.is_empty() {
            return x.on_response_headers(host, true);
        }
        x.on_response_headers(host, false);
        host.response_body = body.to_vec();
        x.on_response_body(host, body.len(), true)
    }

    #[test]
    fn compressed_answers_are_refused_where_they_would_be_rewritten() {
        let config = "backends: [{name: claude, schema: Anthropic, auth: {x_api_key: k}}]";
        let mut x = anthropic_exchange(config);
        let mut host = FakeHost::request("POST", "/v1/chat/completions", &[]);
        send(&mut x, &mut host, br#"{"model":"claude-x","messages":[{"role":"user","content":"hi"}]}"#);
        let gz = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0];
        let headers = [
            (":status", "200"),
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
            ("content-length", "8"),
        ];
        answer(&mut x, &mut host, &headers, &gz);
        assert_eq!(host.response_header(":status").as_deref(), Some("502"));
        assert_eq!(host.response_header("content-encoding"), None);
        let v: serde_json::Value = serde_json::from_slice(&host.response_body).unwrap();
        assert_eq!(v["error"]["code"], "invalid_upstream_response");

        // A compressed error cannot be read either: it keeps its status, in the client's shape.
        let mut x = anthropic_exchange(config);
        let mut host = FakeHost::request("POST", "/v1/chat/completions", &[]);
        send(&mut x, &mut host, br#"{"model":"claude-x","messages":[{"role":"user","content":"hi"}]}"#);
        let error_headers = [(":status", "529"), ("content-type", "application/json"), ("content-encoding", "gzip")];
        answer(&mut x, &mut host, &error_headers, &gz);
        assert_eq!(host.response_header(":status").as_deref(), Some("529"));
        assert_eq!(host.response_header("content-encoding"), None);
        let v: serde_json::Value = serde_json::from_slice(&host.response_body).unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains("gzip-compressed"), "{v}");

        // Pass-through bytes are not rewritten: a compressed answer goes to the client as it came.
        let mut x = exchange();
        let mut host = FakeHost::request("POST", "/v1/chat/completions", &[]);
        send(&mut x, &mut host, br#"{"model":"gpt-4o"}"#);
        answer(&mut x, &mut host, &headers, &gz);
        assert_eq!(host.response_header(":status").as_deref(), Some("200"));
        assert_eq!(host.response_body, gz);
    }

    #[test]
    fn empty_answers_become_errors_in_the_clients_shape() {
        let mut x = exchange();
        let mut host = FakeHost::request("POST", "/v1/chat/completions", &[]);
        send(&mut x, &mut host, br#"{"model":"gpt-4o"}"#);
        assert_eq!(answer(&mut x, &mut host, &[(":status", "200")], b""), Flow::Pause);
        assert_eq!(host.reply_json().0, 502);
        // An error without a body gets one, keeping its status.
        let mut x = exchange();
        let mut host = FakeHost::request("POST", "/v1/chat/completions", &[]);
        send(&mut x, &mut host, br#"{"model":"gpt-4o"}"#);
        let rate_limited = [
            (":status", "429"),
            ("retry-after", "42"),
            ("x-ratelimit-limit", "20, 20;w=3600"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "42"),
            ("x-envoy-ratelimited", "true"),
        ];
        answer(&mut x, &mut host, &rate_limited, b"");
        let (status, v) = host.reply_json();
        assert_eq!((status, v["error"]["type"].as_str()), (429, Some("rate_limit_error")));
        assert_eq!(v["error"]["code"], "upstream_error", "a provider's 429: {v}");
        // Envoy's rate limit filter's hints reach the client; nothing else of the empty answer does.
        let reply_headers = &host.reply.as_ref().unwrap().1;
        let names: Vec<&str> = reply_headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["content-type", "retry-after", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"]
        );
        // Envoy's rate limit filter's own 429 is the gateway's refusal, said so.
        let mut x = exchange();
        let mut host = FakeHost::request("POST", "/v1/chat/completions", &[]);
        send(&mut x, &mut host, br#"{"model":"gpt-4o"}"#);
        host.properties.push(("response.code_details".into(), b"request_rate_limited".to_vec()));
        answer(&mut x, &mut host, &rate_limited, b"");
        let (status, v) = host.reply_json();
        assert_eq!((status, v["error"]["code"].as_str()), (429, Some("rate_limit_exceeded")), "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("budget of this gateway"), "{v}");
        let config = "backends: [{name: claude, schema: Anthropic, auth: {x_api_key: k}}]";
        let mut x = anthropic_exchange(config);
        let mut host = FakeHost::request("POST", "/v1/messages", &[]);
        send(&mut x, &mut host, br#"{"model":"claude-x","max_tokens":5,"messages":[]}"#);
        answer(&mut x, &mut host, &[(":status", "200"), ("content-length", "0")], b"");
        assert_eq!(host.reply_json().1["type"], "error");
    }

    #[test]
    fn a_success_that_ends_without_a_byte_gets_an_error_in_the_body() {
        let mut x = exchange();
        let mut host = FakeHost::request("POST", "/v1/chat/completions", &[]);
        send(&mut x, &mut host, br#"{"model":"gpt-4o","stream":true}"#);
        host.response_headers = vec![(":status".into(), "200".into())];
        assert_eq!(x.on_response_headers(&mut host, false), Flow::Continue);
        host.response_body.clear();
        x.on_response_body(&mut host, 0, true);
        let text = String::from_utf8(host.response_body.clone()).unwrap();
        assert!(text.starts_with("data: {\"error\"") && text.ends_with("data: [DONE]\n\n"), "{text}");
        x.on_log(&mut host);
        assert!(host.samples.iter().any(|s| s.name.contains("outcome=.=failure")));
    }

    #[test]
    fn answers_held_whole_are_capped() {
        let config =
            "backends: [{name: claude, schema: Anthropic, auth: {x_api_key: k}}]\nmax_response_body_bytes: 100";
        let mut x = anthropic_exchange(config);
        let mut host = FakeHost::request("POST", "/v1/chat/completions", &[]);
        send(&mut x, &mut host, br#"{"model":"claude-x","messages":[{"role":"user","content":"hi"}]}"#);
        host.response_headers =
            vec![(":status".into(), "200".into()), ("content-type".into(), "application/json".into())];
        assert_eq!(x.on_response_headers(&mut host, false), Flow::Pause);
        host.response_body = vec![b' '; 150];
        assert_eq!(x.on_response_body(&mut host, 150, false), Flow::Continue);
        assert_eq!(host.response_header(":status").as_deref(), Some("502"));
        assert!(host.response_body.is_empty());
        host.response_body = vec![b' '; 10];
        x.on_response_body(&mut host, 10, true);
        let v: serde_json::Value = serde_json::from_slice(&host.response_body).unwrap();
        assert_eq!(v["error"]["code"], "upstream_response_too_large");
    }

    fn token_samples(host: &FakeHost) -> Vec<u64> {
        host.samples.iter().filter(|s| s.name.starts_with("gen_ai.client.token.usage")).map(|s| s.value).collect()
    }

    #[test]
    fn responses_pass_through_and_count_json_usage_as_chat() {
        let mut x = exchange();
        let mut host = FakeHost::request("POST", "/v1/responses", &[]);
        let body = br#"{"model":"gpt-4o","input":"hi"}"#;
        assert_eq!(send(&mut x, &mut host, body), Flow::Continue);
        assert_eq!(host.header(":path").as_deref(), Some("/v1/responses"));
        assert_eq!(host.header("x-llmgw-backend").as_deref(), Some("openai"));
        assert_eq!(host.request_body, body);
        let answer_body = br#"{"id":"resp_1","object":"response","output":[],"usage":{"input_tokens":5,
            "input_tokens_details":{"cached_tokens":1},"output_tokens":7,"output_tokens_details":{"reasoning_tokens":2},"total_tokens":12}}"#;
        answer(&mut x, &mut host, &[(":status", "200"), ("content-type", "application/json")], answer_body);
        assert_eq!(host.response_body, answer_body);
        assert_eq!(host.filter_state.get("llm_total_token").map(String::as_str), Some("12"));
        x.on_log(&mut host);
        assert_eq!(token_samples(&host), vec![5, 7]);
        assert!(host.samples.iter().any(|s| s.name.contains("gen_ai_operation_name=.=chat;")));
    }

    #[test]
    fn responses_stream_usage_comes_from_the_completed_event_and_bytes_stay() {
        let mut x = exchange();
        let mut host = FakeHost::request("POST", "/v1/responses", &[]);
        let body = br#"{"model":"gpt-4o","input":"hi","stream":true}"#;
        send(&mut x, &mut host, body);
        // `stream_options.include_usage` is chat's: a Responses body is never given one.
        assert_eq!(host.request_body, body);
        let stream = b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"usage\":null}}\n\n\
event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hel\"}\n\n\
event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"usage\":{\"input_tokens\":3,\"output_tokens\":4,\"total_tokens\":7}}}\n\n";
        host.response_headers =
            vec![(":status".into(), "200".into()), ("content-type".into(), "text/event-stream".into())];
        assert_eq!(x.on_response_headers(&mut host, false), Flow::Continue);
        let (a, b) = stream.split_at(150);
        host.response_body = a.to_vec();
        x.on_response_body(&mut host, a.len(), false);
        assert_eq!(host.response_body, a);
        host.response_body = b.to_vec();
        x.on_response_body(&mut host, b.len(), true);
        assert_eq!(host.response_body, b);
        x.on_log(&mut host);
        assert_eq!(token_samples(&host), vec![3, 4]);
        assert_eq!(host.samples.iter().filter(|s| s.name.starts_with("gen_ai.server.time_to_first_token")).count(), 1);
    }

    #[test]
    fn stored_response_calls_route_by_the_model_header_or_the_only_backend() {
        let mut x = exchange();
        let mut host =
            FakeHost::request("GET", "/v1/responses/resp_1/input_items?limit=2", &[("x-ai-eg-model", "gpt-4o")]);
        assert_eq!(x.on_request_headers(&mut host, true), Flow::Continue);
        assert!(host.reply.is_none());
        assert_eq!(host.header(":path").as_deref(), Some("/v1/responses/resp_1/input_items?limit=2"));
        assert_eq!(host.header("x-llmgw-backend").as_deref(), Some("openai"));
        assert_eq!(host.header("x-ai-eg-model").as_deref(), Some("gpt-4o"));
        assert_eq!(host.header("authorization").as_deref(), Some("Bearer sk-upstream"));
        assert_eq!(host.route_cache_clears, 1);
        answer(&mut x, &mut host, &[(":status", "200"), ("content-type", "application/json")], b"{\"data\":[]}");
        x.on_log(&mut host);
        assert!(host.samples.iter().any(|s| s.name.contains("gen_ai_operation_name=.=stored_response;")));

        // A body on a cancel goes on unread.
        let mut x = exchange();
        let mut host = FakeHost::request("POST", "/v1/responses/resp_1/cancel", &[("x-ai-eg-model", "gpt-4o")]);
        assert_eq!(x.on_request_headers(&mut host, false), Flow::Continue);
        assert_eq!(x.on_request_body(&mut host, 2, true), Flow::Continue);

        // Two OpenAI-compatible backends and no header: the client is told what to send.
        let mut x = exchange();
        let mut host = FakeHost::request("DELETE", "/v1/responses/resp_1", &[]);
        assert_eq!(x.on_request_headers(&mut host, true), Flow::Pause);
        let (status, v) = host.reply_json();
        assert_eq!((status, v["error"]["code"].as_str()), (400, Some("missing_model")));
        assert!(v["error"]["message"].as_str().unwrap().contains("x-ai-eg-model"), "{v}");
        // A model no rule serves is not found, as with a body's model.
        let mut x = exchange();
        let mut host = FakeHost::request("GET", "/v1/responses/resp_1", &[("x-ai-eg-model", "nope")]);
        x.on_request_headers(&mut host, true);
        assert_eq!(host.reply_json().0, 404);
        let mut x = exchange();
        let mut host = FakeHost::request("POST", "/v1/responses/resp_1", &[]);
        x.on_request_headers(&mut host, true);
        assert_eq!(host.reply_json().0, 405);
        assert_eq!(host.reply.as_ref().unwrap().1.iter().find(|(n, _)| n == "allow").unwrap().1, "GET, DELETE");

        // One OpenAI-compatible backend (and others of other schemas): it serves the call.
        let config = "backends:\n  - {name: claude, schema: Anthropic, auth: {x_api_key: k}}\n  - {name: oai, schema: OpenAI}\n\
rules:\n  - {match: {model: {exact: gpt-4o}}, backends: [{name: oai, model_override: gpt-4o-2024}]}\n  - {backends: [{name: claude}]}\n";
        let mut x = anthropic_exchange(config);
        let mut host = FakeHost::request("DELETE", "/v1/responses/resp_9/", &[]);
        assert_eq!(x.on_request_headers(&mut host, true), Flow::Continue);
        assert_eq!(host.header(":path").as_deref(), Some("/v1/responses/resp_9"));
        assert_eq!(host.header("x-llmgw-backend").as_deref(), Some("oai"));
        assert_eq!(host.header("x-ai-eg-model"), None);
    }

    #[test]
    fn openai_only_endpoints_are_refused_for_other_schemas() {
        let config = "backends: [{name: claude, schema: Anthropic, auth: {x_api_key: k}}]";
        for (path, body) in [
            ("/v1/images/generations", &br#"{"model":"claude-x","prompt":"a cat"}"#[..]),
            ("/v1/audio/speech", br#"{"model":"claude-x","input":"hi","voice":"alloy"}"#),
        ] {
            let mut x = anthropic_exchange(config);
            let mut host = FakeHost::request("POST", path, &[]);
            send(&mut x, &mut host, body);
            let (status, v) = host.reply_json();
            assert_eq!((status, v["error"]["code"].as_str()), (400, Some("unsupported_endpoint")), "{path}");
            assert!(v["error"]["message"].as_str().unwrap().contains("Anthropic"), "{v}");
        }
    }

    #[test]
    fn responses_reach_anthropic_backends_translated() {
        let config = "backends: [{name: claude, schema: Anthropic, auth: {x_api_key: k}}]";
        let mut x = anthropic_exchange(config);
        let mut host = FakeHost::request("POST", "/v1/responses", &[]);
        assert_eq!(send(&mut x, &mut host, br#"{"model":"claude-x","input":"hi"}"#), Flow::Continue);
        assert!(host.reply.is_none());
        assert_eq!(host.header(":path").as_deref(), Some("/v1/messages"));
        assert_eq!(host.header("x-api-key").as_deref(), Some("k"));
        let sent: serde_json::Value = serde_json::from_slice(&host.request_body).unwrap();
        assert_eq!(sent["messages"][0]["role"], "user", "{sent}");
        let answer_body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"Hello"}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":2}}"#;
        answer(&mut x, &mut host, &[(":status", "200"), ("content-type", "application/json")], answer_body);
        let v: serde_json::Value = serde_json::from_slice(&host.response_body).unwrap();
        assert_eq!((v["object"].as_str(), v["output"][0]["type"].as_str()), (Some("response"), Some("message")), "{v}");
        x.on_log(&mut host);
        assert_eq!(token_samples(&host), vec![3, 2]);
    }

    fn upload(model: &str) -> Vec<u8> {
        format!(
            "--b7\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\n\
ID3\x01\x02\r\n--b7\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n--b7--\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn uploads_are_routed_by_their_model_part_and_never_edited() {
        let multipart = [("content-type", "multipart/form-data; boundary=b7")];
        for path in ["/v1/audio/transcriptions", "/v1/audio/translations", "/v1/images/edits"] {
            let mut x = exchange();
            let mut host = FakeHost::request("POST", path, &multipart);
            let body = upload("gpt-4o");
            assert_eq!(send(&mut x, &mut host, &body), Flow::Continue, "{path}");
            assert_eq!(host.header("x-llmgw-backend").as_deref(), Some("openai"));
            assert_eq!(host.header(":path").as_deref(), Some(path));
            assert_eq!(host.request_body, body);
        }
        let mut x = exchange();
        let mut host = FakeHost::request("POST", "/v1/audio/transcriptions", &multipart);
        send(&mut x, &mut host, b"--b7\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nx\r\n--b7--");
        assert_eq!(host.reply_json().1["error"]["code"], "missing_model");
        let mut x = exchange();
        let mut host = FakeHost::request("POST", "/v1/audio/transcriptions", &multipart);
        send(&mut x, &mut host, b"--b7\r\nno end");
        assert_eq!(host.reply_json().1["error"]["code"], "invalid_request");
        // A backend that renames the model cannot do it in bytes it never edits.
        let mut x = exchange();
        let mut host = FakeHost::request("POST", "/v1/audio/transcriptions", &[multipart[0], ("x-team", "research")]);
        send(&mut x, &mut host, &upload("llama-3"));
        assert_eq!(host.reply_json().1["error"]["code"], "unsupported_model_override");
    }

    #[test]
    fn speech_and_images_pass_their_bytes_and_count_image_usage() {
        let mut x = exchange();
        let mut host = FakeHost::request("POST", "/v1/audio/speech", &[]);
        send(&mut x, &mut host, br#"{"model":"gpt-4o","input":"hi","voice":"alloy"}"#);
        assert_eq!(host.header(":path").as_deref(), Some("/v1/audio/speech"));
        let audio = b"ID3\x04{\"usage\":{\"input_tokens\":9}}\xff\xfb";
        assert_eq!(
            answer(&mut x, &mut host, &[(":status", "200"), ("content-type", "audio/mpeg")], audio),
            Flow::Continue
        );
        assert_eq!(host.response_body, audio);
        x.on_log(&mut host);
        assert!(token_samples(&host).is_empty());

        let mut x = exchange();
        let mut host = FakeHost::request("POST", "/v1/images/generations", &[]);
        send(&mut x, &mut host, br#"{"model":"gpt-4o","prompt":"a cat"}"#);
        let image = br#"{"created":1,"data":[{"b64_json":"AAAA"}],"usage":{"input_tokens":10,"output_tokens":4160,"total_tokens":4170}}"#;
        answer(&mut x, &mut host, &[(":status", "200"), ("content-type", "application/json")], image);
        x.on_log(&mut host);
        assert_eq!(token_samples(&host), vec![10, 4160]);
        assert!(host.samples.iter().any(|s| s.name.contains("gen_ai_operation_name=.=image_generation;")));
    }

    #[test]
    fn unknown_v1_paths_list_every_served_endpoint() {
        let mut x = exchange();
        let mut host = FakeHost::request("GET", "/v1/files?x=1", &[]);
        x.on_request_headers(&mut host, true);
        let (status, v) = host.reply_json();
        assert_eq!(status, 404);
        let message = v["error"]["message"].as_str().unwrap();
        let served: Vec<&str> = message.split("served: ").nth(1).unwrap().split(", ").collect();
        for e in Endpoint::ALL {
            let prefixed = format!("{DEFAULT_ANTHROPIC_PREFIX}{}", e.pattern());
            assert!(!e.at_root() || served.contains(&e.pattern()), "{e:?}: {message}");
            assert!(!e.under_anthropic_prefix() || served.contains(&prefixed.as_str()), "{e:?}: {message}");
        }
        let mounts = Endpoint::ALL.iter().map(|e| usize::from(e.at_root()) + usize::from(e.under_anthropic_prefix()));
        assert_eq!(served.len(), mounts.sum::<usize>(), "each path once: {message}");
        // An Anthropic client is told Anthropic's paths only.
        let mut x = exchange();
        let mut host = FakeHost::request("POST", "/anthropic/v1/complete", &[]);
        x.on_request_headers(&mut host, false);
        let (status, v) = host.reply_json();
        assert_eq!((status, v["type"].as_str()), (404, Some("error")));
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message
                .ends_with("served: /anthropic/v1/messages, /anthropic/v1/messages/count_tokens, /anthropic/v1/models"),
            "{message}"
        );
    }
}
