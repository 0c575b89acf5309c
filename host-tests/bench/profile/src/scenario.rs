//! The bench's requests as named scenarios, and one request through the filter (one or two filter
//! instances) with the in-memory host.

use std::rc::Rc;

use llmgw_filter::config;
use llmgw_filter::exchange::{Exchange, Shared};

use crate::host::{Counts, MemHost, MetricIds, SharedData};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    OpenAI,
    Anthropic,
}

/// One request shape. The client is always an OpenAI chat client, as in `make bench`.
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub provider: Provider,
    pub stream: bool,
    pub body_bytes: usize,
    /// The two-filter design: a fallback rule, the filter downstream and as the rule cluster's
    /// upstream filter.
    pub fallback: bool,
    /// Budgets on: bench.py's PLUGIN with `BUDGETS` (a consumer header and two budgets that never
    /// refuse), and the consumer on the request.
    pub budgets: bool,
    /// The response cache on the OpenAI rule (bench.py's CACHE_RULE), and what the request gets.
    pub cache: Cache,
    /// The OpenAI backend's endpoint picker (issue 14): this algorithm over [`PICKER_ENDPOINTS`].
    pub picker: Option<&'static str>,
    /// Tracing on (issue 15): PLUGIN with TRACING, one span per request built and queued (the
    /// export, on the root context's tick, is not the request's work).
    pub tracing: bool,
}

/// A scenario's response cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cache {
    Off,
    /// Every measured request is answered from the cache (one request filled it first).
    Hit,
    /// `Cache-Control: no-cache`: the provider answers, and the answer is recorded and stored.
    Miss,
}

impl Scenario {
    /// Iterations per callgrind run (after one warm-up): the counts are deterministic, so fewer
    /// for the large bodies.
    pub fn callgrind_iterations(&self) -> u64 {
        if self.body_bytes > 10_000 {
            50
        } else {
            200
        }
    }

    /// Iterations of a native timing run.
    pub fn native_iterations(&self) -> u64 {
        if self.body_bytes > 10_000 {
            500
        } else {
            5_000
        }
    }
}

const KB: usize = 1024;

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "openai-json-1k",
        about: "OpenAI pass-through, JSON answer, 1 KB request",
        provider: Provider::OpenAI,
        stream: false,
        body_bytes: KB,
        fallback: false,
        budgets: false,
        cache: Cache::Off,
        picker: None,
        tracing: false,
    },
    Scenario {
        name: "openai-json-100k",
        about: "OpenAI pass-through, JSON answer, 100 KB request",
        provider: Provider::OpenAI,
        stream: false,
        body_bytes: 100 * KB,
        fallback: false,
        budgets: false,
        cache: Cache::Off,
        picker: None,
        tracing: false,
    },
    Scenario {
        name: "openai-stream-1k",
        about: "OpenAI pass-through, SSE answer (10 chunks), 1 KB request",
        provider: Provider::OpenAI,
        stream: true,
        body_bytes: KB,
        fallback: false,
        budgets: false,
        cache: Cache::Off,
        picker: None,
        tracing: false,
    },
    Scenario {
        name: "anthropic-json-1k",
        about: "OpenAI chat translated to Anthropic Messages and back, JSON, 1 KB request",
        provider: Provider::Anthropic,
        stream: false,
        body_bytes: KB,
        fallback: false,
        budgets: false,
        cache: Cache::Off,
        picker: None,
        tracing: false,
    },
    Scenario {
        name: "anthropic-json-100k",
        about: "OpenAI chat translated to Anthropic Messages and back, JSON, 100 KB request",
        provider: Provider::Anthropic,
        stream: false,
        body_bytes: 100 * KB,
        fallback: false,
        budgets: false,
        cache: Cache::Off,
        picker: None,
        tracing: false,
    },
    Scenario {
        name: "anthropic-stream-1k",
        about: "OpenAI chat translated to Anthropic Messages and back, SSE (10 chunks), 1 KB request",
        provider: Provider::Anthropic,
        stream: true,
        body_bytes: KB,
        fallback: false,
        budgets: false,
        cache: Cache::Off,
        picker: None,
        tracing: false,
    },
    Scenario {
        name: "fallback-openai-json-1k",
        about: "fallback rule (two filters), served by priority 0 (OpenAI), JSON, 1 KB request",
        provider: Provider::OpenAI,
        stream: false,
        body_bytes: KB,
        fallback: true,
        budgets: false,
        cache: Cache::Off,
        picker: None,
        tracing: false,
    },
    Scenario {
        name: "fallback-openai-stream-1k",
        about: "fallback rule (two filters), served by priority 0 (OpenAI), SSE (10 chunks), 1 KB request",
        provider: Provider::OpenAI,
        stream: true,
        body_bytes: KB,
        fallback: true,
        budgets: false,
        cache: Cache::Off,
        picker: None,
        tracing: false,
    },
    Scenario {
        name: "fallback-openai-json-100k",
        about: "fallback rule (two filters), served by priority 0 (OpenAI), JSON, 100 KB request",
        provider: Provider::OpenAI,
        stream: false,
        body_bytes: 100 * KB,
        fallback: true,
        budgets: false,
        cache: Cache::Off,
        picker: None,
        tracing: false,
    },
    Scenario {
        name: "budget-openai-json-1k",
        about: "openai-json-1k with a consumer and two budgets (tokens for it, requests for each consumer)",
        provider: Provider::OpenAI,
        stream: false,
        body_bytes: KB,
        fallback: false,
        budgets: true,
        cache: Cache::Off,
        picker: None,
        tracing: false,
    },
    Scenario {
        name: "cache-hit-openai-json-1k",
        about: "openai-json-1k answered from the exact response cache (key, index, entry read, local reply)",
        provider: Provider::OpenAI,
        stream: false,
        body_bytes: KB,
        fallback: false,
        budgets: false,
        cache: Cache::Hit,
        picker: None,
        tracing: false,
    },
    Scenario {
        name: "cache-miss-openai-json-1k",
        about: "openai-json-1k through a cached rule with Cache-Control: no-cache (key, answer recorded and stored)",
        provider: Provider::OpenAI,
        stream: false,
        body_bytes: KB,
        fallback: false,
        budgets: false,
        cache: Cache::Miss,
        picker: None,
        tracing: false,
    },
    Scenario {
        name: "picker-random-json-1k",
        about: "openai-json-1k with the endpoint picker `random` over 4 endpoints",
        provider: Provider::OpenAI,
        stream: false,
        body_bytes: KB,
        fallback: false,
        budgets: false,
        cache: Cache::Off,
        picker: Some("random"),
        tracing: false,
    },
    Scenario {
        name: "picker-least-request-json-1k",
        about: "openai-json-1k with the endpoint picker `least-request` over 4 endpoints",
        provider: Provider::OpenAI,
        stream: false,
        body_bytes: KB,
        fallback: false,
        budgets: false,
        cache: Cache::Off,
        picker: Some("least-request"),
        tracing: false,
    },
    Scenario {
        name: "picker-prefix-cache-json-1k",
        about: "openai-json-1k with the endpoint picker `prefix-cache` over 4 endpoints",
        provider: Provider::OpenAI,
        stream: false,
        body_bytes: KB,
        fallback: false,
        budgets: false,
        cache: Cache::Off,
        picker: Some("prefix-cache"),
        tracing: false,
    },
    Scenario {
        name: "picker-least-latency-json-1k",
        about: "openai-json-1k with the endpoint picker `least-latency` over 4 endpoints",
        provider: Provider::OpenAI,
        stream: false,
        body_bytes: KB,
        fallback: false,
        budgets: false,
        cache: Cache::Off,
        picker: Some("least-latency"),
        tracing: false,
    },
    Scenario {
        name: "picker-least-kv-cache-json-1k",
        about: "openai-json-1k with the endpoint picker `least-kv-cache` over 4 endpoints",
        provider: Provider::OpenAI,
        stream: false,
        body_bytes: KB,
        fallback: false,
        budgets: false,
        cache: Cache::Off,
        picker: Some("least-kv-cache"),
        tracing: false,
    },
    Scenario {
        name: "traced-openai-json-1k",
        about: "openai-json-1k with OTLP tracing (OpenInference attributes, protobuf), the span queued",
        provider: Provider::OpenAI,
        stream: false,
        body_bytes: KB,
        fallback: false,
        budgets: false,
        cache: Cache::Off,
        picker: None,
        tracing: true,
    },
    Scenario {
        name: "traced-anthropic-stream-1k",
        about: "anthropic-stream-1k with OTLP tracing: the translated stream's output assembled into the span",
        provider: Provider::Anthropic,
        stream: true,
        body_bytes: KB,
        fallback: false,
        budgets: false,
        cache: Cache::Off,
        picker: None,
        tracing: true,
    },
];

pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// The plugin configuration of `make bench` (bench.py's PLUGIN).
const PLUGIN: &str = r#"{
  "backends": [
    {"name": "openai", "schema": "OpenAI", "prefix": "/v1", "auth": {"bearer": "sk-bench-upstream"}},
    {"name": "anthropic", "schema": "Anthropic", "auth": {"x_api_key": "sk-ant-bench-upstream"}}
  ],
  "rules": [
    {"name": "openai-models", "match": {"model": {"glob": "gpt-*"}}, "backends": [{"name": "openai"}]},
    {"name": "anthropic-models", "match": {"model": {"prefix": "claude-"}}, "backends": [{"name": "anthropic"}]}
  ]
}"#;

/// The cache bench.py's llmgw-cache-hit/-miss put on the OpenAI rule: the bench's requests carry no
/// temperature (the providers' default of 1), so sampled requests are cached.
const CACHE_RULE: &str = r#"{"mode": "exact", "nonzero_temperature": true}"#;

/// PLUGIN with CACHE_RULE on its first (OpenAI) rule.
fn plugin_with_cache() -> Result<String, String> {
    let mut plugin: serde_json::Value = serde_json::from_str(PLUGIN).map_err(|e| format!("PLUGIN: {e}"))?;
    let cache: serde_json::Value = serde_json::from_str(CACHE_RULE).map_err(|e| format!("CACHE_RULE: {e}"))?;
    if let Some(rule) = plugin.get_mut("rules").and_then(|r| r.get_mut(0)).and_then(|r| r.as_object_mut()) {
        rule.insert("cache".into(), cache);
    }
    Ok(plugin.to_string())
}

/// Added to PLUGIN in the budget scenario: what `llmgw run` renders for a consumer with a tokens
/// budget and a `"*"` requests budget (bench.py's llmgw-auth-budget), limits no request reaches:
/// every request reserves and settles its counters, none is refused.
const BUDGETS: &str = r#"{
  "consumer_header": "x-llmgw-consumer",
  "budgets": [
    {"name": "bench-tokens", "consumer": "team-bench", "tokens": 1000000000000, "per": "day"},
    {"name": "bench-requests", "consumer": "*", "requests": 1000000000000, "per": "day"}
  ]
}"#;
/// The picker scenarios' endpoints (the OpenAI backend's).
const PICKER_ENDPOINTS: &[&str] = &["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000", "10.0.0.4:8000"];
/// What each endpoint's vLLM `/metrics` answers in the least-kv-cache scenario (scraped once a
/// second by the root context, not per request: recorded outside the measured callbacks).
const PICKER_METRICS: &[u8] = b"vllm:num_requests_running{model_name=\"m\"} 2.0\n\
    vllm:num_requests_waiting{model_name=\"m\"} 0.0\nvllm:gpu_cache_usage_perc{model_name=\"m\"} 0.25\n";

/// PLUGIN with `algorithm`'s picker on the OpenAI backend.
fn plugin_with_picker(algorithm: &str) -> Result<String, String> {
    let mut plugin: serde_json::Value = serde_json::from_str(PLUGIN).map_err(|e| format!("PLUGIN: {e}"))?;
    plugin["backends"][0]["picker"] = serde_json::json!({"algorithm": algorithm, "endpoints": PICKER_ENDPOINTS});
    Ok(plugin.to_string())
}

/// Added to PLUGIN in the traced scenarios: what `llmgw run` renders for
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (OTLP/HTTP protobuf to the collector's cluster).
const TRACING: &str = r#"{"cluster": "llmgw-otel-collector", "path": "/v1/traces", "service_name": "llmgw"}"#;

/// PLUGIN with TRACING.
fn plugin_with_tracing() -> Result<String, String> {
    let mut plugin: serde_json::Value = serde_json::from_str(PLUGIN).map_err(|e| format!("PLUGIN: {e}"))?;
    plugin["tracing"] = serde_json::from_str(TRACING).map_err(|e| format!("TRACING: {e}"))?;
    Ok(plugin.to_string())
}

/// The consumer Envoy's api_key_auth names in the consumer header.
const CONSUMER: &str = "team-bench";
/// The counters the budget scenario's request charges (`llmgw.budget.<name>.<consumer>`).
const TOKENS_COUNTER: &str = "llmgw.budget.bench-tokens.team-bench";
const REQUESTS_COUNTER: &str = "llmgw.budget.bench-requests.team-bench";

/// PLUGIN with BUDGETS' members.
fn plugin_with_budgets() -> Result<String, String> {
    let mut plugin: serde_json::Value = serde_json::from_str(PLUGIN).map_err(|e| format!("PLUGIN: {e}"))?;
    let budgets: serde_json::Value = serde_json::from_str(BUDGETS).map_err(|e| format!("BUDGETS: {e}"))?;
    if let (Some(p), Some(b)) = (plugin.as_object_mut(), budgets.as_object()) {
        p.extend(b.clone());
    }
    Ok(plugin.to_string())
}

/// `llmgw render` of bench.py's fallback_config() (mock on 127.0.0.1:19999): the downstream
/// filter's plugin configuration ...
const FALLBACK_DOWNSTREAM: &str = r#"{
  "backends": [
    {"name": "openai", "schema": "OpenAI", "auth": {"bearer_env": "BENCH_OPENAI_KEY"}, "prefix": "/v1"},
    {"name": "anthropic", "schema": "Anthropic", "auth": {"x_api_key_env": "BENCH_ANTHROPIC_KEY"}}
  ],
  "rules": [
    {"match": {"model": {"glob": "gpt-*"}}, "backends": [{"name": "openai", "priority": 0}, {"name": "anthropic", "priority": 1}]}
  ]
}"#;

/// ... and the rule cluster's upstream filter's (the endpoints' hosts, and the role).
const FALLBACK_UPSTREAM: &str = r#"{
  "backends": [
    {"name": "openai", "schema": "OpenAI", "auth": {"bearer_env": "BENCH_OPENAI_KEY"}, "prefix": "/v1", "host": "127.0.0.1:19999"},
    {"name": "anthropic", "schema": "Anthropic", "auth": {"x_api_key_env": "BENCH_ANTHROPIC_KEY"}, "host": "127.0.0.1:19999"}
  ],
  "rules": [
    {"match": {"model": {"glob": "gpt-*"}}, "backends": [{"name": "openai", "priority": 0}, {"name": "anthropic", "priority": 1}]}
  ],
  "role": "upstream"
}"#;

/// What the rendered route `llmgw-rule-0` removes before the upstream filters see the request.
const RULE_ROUTE_REMOVES: &[&str] = &["x-llmgw-rule", "x-llmgw-backend", "x-ai-eg-model"];
/// The endpoint Envoy picked for the first attempt: rule 0, its backend 0 (priority 0, OpenAI).
const TARGET_PROPERTY: &[&str] = &["xds", "upstream_host_metadata", "filter_metadata", "llmgw", "target"];
const ATTEMPT_PROPERTY: &[&str] = &["upstream", "request_attempt_count"];
/// What Envoy says of an answer that came from the upstream (an attempt's, not its own).
const CODE_DETAILS_PROPERTY: &[&str] = &["response", "code_details"];

/// The credentials bench.py's fallback run puts in Envoy's environment (FALLBACK_ENV).
struct BenchEnv;
impl config::Env for BenchEnv {
    fn var(&self, name: &str) -> Option<String> {
        match name {
            "BENCH_OPENAI_KEY" => Some("sk-bench-upstream".into()),
            "BENCH_ANTHROPIC_KEY" => Some("sk-ant-bench-upstream".into()),
            _ => None,
        }
    }
}

/// One plugin (root context): its compiled configuration, its metric ids and the VM's shared data
/// (kept across requests: the steady state, counters existing, is what is measured).
struct Plugin {
    shared: Rc<Shared>,
    metric_ids: MetricIds,
    shared_data: SharedData,
}

impl Plugin {
    fn new(json: &str) -> Result<Self, String> {
        let compiled = config::parse(json.as_bytes(), &BenchEnv, 0).map_err(|e| format!("plugin config: {e}"))?;
        let plugin = Plugin {
            shared: Rc::new(Shared::new(compiled)),
            metric_ids: MetricIds::default(),
            shared_data: SharedData::default(),
        };
        // As glue.rs on configure: counters of named consumers exist before any request.
        let mut host = MemHost::new(&plugin.metric_ids, &plugin.shared_data, false);
        llmgw_filter::budget::prepare(&mut host, &plugin.shared.config.budgets);
        llmgw_filter::picker::prepare_all(&mut host, &plugin.shared.config.backends);
        Ok(plugin)
    }

    /// The count a budget counter holds (0 when absent).
    fn counter(&self, key: &str) -> u64 {
        self.shared_data
            .get(key)
            .and_then(|(v, _)| Some(u64::from_le_bytes(v.get(8..16)?.try_into().ok()?)))
            .unwrap_or(0)
    }
}

/// Which filter instances' callbacks run inside `in_filter` (what callgrind collects).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collect {
    None,
    All,
    Downstream,
    Upstream,
}

impl Collect {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "all" => Some(Collect::All),
            "downstream" => Some(Collect::Downstream),
            "upstream" => Some(Collect::Upstream),
            "none" => Some(Collect::None),
            _ => None,
        }
    }
    fn downstream(self) -> bool {
        matches!(self, Collect::All | Collect::Downstream)
    }
    fn upstream(self) -> bool {
        matches!(self, Collect::All | Collect::Upstream)
    }
}

/// Everything the filter runs is called through here: `callgrind --toggle-collect` names this
/// function, so the harness (building hosts, copying between them) is not counted.
#[inline(never)]
pub fn in_filter<R>(f: impl FnOnce() -> R) -> R {
    f()
}

fn call<R>(collect: bool, f: impl FnOnce() -> R) -> R {
    if collect {
        in_filter(f)
    } else {
        f()
    }
}

/// A scenario ready to run: plugins, request and the mock's answer built once.
pub struct Prepared {
    pub scenario: &'static Scenario,
    downstream: Plugin,
    upstream: Option<Plugin>,
    client_headers: Vec<(String, String)>,
    body: Vec<u8>,
    resp_headers: Vec<(String, String)>,
    chunks: Vec<Vec<u8>>,
}

/// What one request did.
pub struct Outcome {
    pub downstream: Counts,
    /// The upstream filter's, in the fallback scenarios.
    pub upstream: Option<Counts>,
}

impl Prepared {
    pub fn new(scenario: &'static Scenario) -> Result<Self, String> {
        let (downstream, upstream) = if scenario.fallback {
            (Plugin::new(FALLBACK_DOWNSTREAM)?, Some(Plugin::new(FALLBACK_UPSTREAM)?))
        } else if scenario.budgets {
            (Plugin::new(&plugin_with_budgets()?)?, None)
        } else if scenario.cache != Cache::Off {
            (Plugin::new(&plugin_with_cache()?)?, None)
        } else if let Some(algorithm) = scenario.picker {
            (Plugin::new(&plugin_with_picker(algorithm)?)?, None)
        } else if scenario.tracing {
            (Plugin::new(&plugin_with_tracing()?)?, None)
        } else {
            (Plugin::new(PLUGIN)?, None)
        };
        let model = match scenario.provider {
            Provider::OpenAI => "gpt-4o-mini",
            Provider::Anthropic => "claude-3-5-haiku-latest",
        };
        let body = request_body(model, scenario.body_bytes, scenario.stream);
        let mut client_headers: Vec<(String, String)> = [
            (":authority", "127.0.0.1:1975"),
            (":path", "/v1/chat/completions"),
            (":method", "POST"),
            (":scheme", "http"),
            ("content-type", "application/json"),
            ("authorization", "Bearer sk-bench"),
            ("content-length", &body.len().to_string()),
            ("x-forwarded-proto", "http"),
            ("x-request-id", "7c6e2b8e-2f0a-4f6b-9d2c-2f3a8c1b9e10"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if scenario.budgets {
            // Set by Envoy's api_key_auth (forwarded client id) before the filter runs.
            client_headers.push(("x-llmgw-consumer".into(), CONSUMER.into()));
        }
        if scenario.cache == Cache::Miss {
            client_headers.push(("cache-control".into(), "no-cache".into()));
        }
        let (content_type, chunks) = mock_reply(scenario.provider == Provider::Anthropic, scenario.stream);
        let mut resp_headers: Vec<(String, String)> = vec![
            (":status".into(), "200".into()),
            ("content-type".into(), content_type.into()),
            ("x-envoy-upstream-service-time".into(), "0".into()),
        ];
        if scenario.stream {
            resp_headers.push(("cache-control".into(), "no-cache".into()));
        } else {
            resp_headers.push(("content-length".into(), chunks.iter().map(Vec::len).sum::<usize>().to_string()));
        }
        let prepared = Prepared { scenario, downstream, upstream, client_headers, body, resp_headers, chunks };
        if scenario.cache == Cache::Hit {
            // The miss that stores the answer every measured request then gets.
            prepared.one_filter(0, Collect::None, false)?;
        }
        Ok(prepared)
    }

    pub fn body_len(&self) -> usize {
        self.body.len()
    }

    /// One request. `check` keeps what is needed to verify it did what the bench's request does
    /// (done on the warm-up iteration); `Err` when it did not.
    pub fn request(&self, i: u64, collect: Collect, check: bool) -> Result<Outcome, String> {
        match &self.upstream {
            None => self.one_filter(i, collect, check),
            Some(up) => self.two_filters(up, i, collect, check),
        }
    }

    fn one_filter(&self, i: u64, collect: Collect, check: bool) -> Result<Outcome, String> {
        let on = collect.downstream();
        let plugin = &self.downstream;
        let counters_before = check.then(|| (plugin.counter(TOKENS_COUNTER), plugin.counter(REQUESTS_COUNTER)));
        let mut h = MemHost::new(&plugin.metric_ids, &plugin.shared_data, check);
        h.req_headers = self.client_headers.clone();
        h.req_body = self.body.clone();
        h.now = i * 1_000_000_000;
        if self.scenario.picker == Some("least-kv-cache") {
            // The root context's scrape: its own host, so its host calls are not the request's.
            let mut root = MemHost::new(&plugin.metric_ids, &plugin.shared_data, false);
            root.now = h.now;
            for e in 0..PICKER_ENDPOINTS.len() {
                llmgw_filter::picker::scraped(&mut root, "openai", e, 200, PICKER_METRICS);
            }
        }
        let mut ex = call(on, || Exchange::new(Some(plugin.shared.clone())));
        call(on, || ex.on_request_headers(&mut h, false));
        no_reply("downstream", &h)?;
        call(on, || ex.on_request_body(&mut h, self.body.len(), true));
        if self.scenario.cache == Cache::Hit && !h.replies.is_empty() {
            call(on, || ex.on_log(&mut h));
            call(on, || ex.on_done(&mut h));
            call(on, || drop(ex));
            if check {
                verify_hit(&h)?;
            }
            return Ok(Outcome { downstream: h.counts(), upstream: None });
        }
        no_reply("downstream", &h)?;
        let upstream_request = check.then(|| (h.req_headers.clone(), h.req_body.clone()));
        h.resp_headers = self.resp_headers.clone();
        h.now += 1_000_000;
        call(on, || ex.on_response_headers(&mut h, false));
        let mut client_body = Vec::new();
        let last = self.chunks.len() - 1;
        for (j, chunk) in self.chunks.iter().enumerate() {
            h.resp_body.clone_from(chunk);
            h.now += 100_000;
            call(on, || ex.on_response_body(&mut h, chunk.len(), j == last));
            if check {
                client_body.extend_from_slice(&h.resp_body);
            }
        }
        call(on, || ex.on_log(&mut h));
        call(on, || ex.on_done(&mut h));
        call(on, || drop(ex));
        no_reply("downstream", &h)?;
        if let Some((headers, body)) = upstream_request {
            self.verify(&headers, &body, &h, &h, &client_body)?;
        }
        if let Some(tracing) = plugin.shared.tracing.as_ref().filter(|_| self.scenario.tracing) {
            // The root context's tick: the queued span leaves (its host calls are not the request's).
            let batch = tracing.exporter.borrow_mut().next_batch(&tracing.settings);
            if check && batch.is_none_or(|(body, count)| count != 1 || body.is_empty()) {
                return Err("tracing: the request queued no span".into());
            }
        }
        if let (true, Some((tokens, requests))) = (self.scenario.budgets, counters_before) {
            // Reserved, then settled to the mock's usage (250 + 8 tokens); one request.
            let charged = (
                plugin.counter(TOKENS_COUNTER).saturating_sub(tokens),
                plugin.counter(REQUESTS_COUNTER).saturating_sub(requests),
            );
            if charged != (258, 1) {
                return Err(format!("budgets charged (tokens, requests) {charged:?}, expected (258, 1)"));
            }
        }
        Ok(Outcome { downstream: h.counts(), upstream: None })
    }

    fn two_filters(&self, up_plugin: &Plugin, i: u64, collect: Collect, check: bool) -> Result<Outcome, String> {
        let (on_dn, on_up) = (collect.downstream(), collect.upstream());
        let dn_plugin = &self.downstream;
        let mut dn = MemHost::new(&dn_plugin.metric_ids, &dn_plugin.shared_data, check);
        dn.req_headers = self.client_headers.clone();
        dn.req_body = self.body.clone();
        dn.now = i * 1_000_000_000;
        let mut dx = call(on_dn, || Exchange::new(Some(dn_plugin.shared.clone())));
        call(on_dn, || dx.on_request_headers(&mut dn, false));
        no_reply("downstream", &dn)?;
        call(on_dn, || dx.on_request_body(&mut dn, self.body.len(), true));
        no_reply("downstream", &dn)?;

        // The router picks the rule's route (it removes the routing headers) and the endpoint at
        // priority 0; the upstream filter sees what the downstream one left.
        let mut up = MemHost::new(&up_plugin.metric_ids, &up_plugin.shared_data, check);
        up.req_headers =
            dn.req_headers.iter().filter(|(n, _)| !RULE_ROUTE_REMOVES.contains(&n.as_str())).cloned().collect();
        up.req_body = dn.req_body.clone();
        // One request's filter state: the upstream filters see what the downstream one wrote.
        up.filter_state = dn.filter_state.clone();
        up.attributes = vec![(TARGET_PROPERTY, b"0/0".to_vec()), (ATTEMPT_PROPERTY, 1u64.to_le_bytes().to_vec())];
        up.now = dn.now + 10_000;
        let mut ux = call(on_up, || Exchange::new(Some(up_plugin.shared.clone())));
        call(on_up, || ux.on_request_headers(&mut up, false));
        no_reply("upstream", &up)?;
        let size = up.req_body.len();
        call(on_up, || ux.on_request_body(&mut up, size, true));
        no_reply("upstream", &up)?;
        let upstream_request = check.then(|| (up.req_headers.clone(), up.req_body.clone()));

        up.resp_headers = self.resp_headers.clone();
        up.now += 1_000_000;
        call(on_up, || ux.on_response_headers(&mut up, false));
        no_reply("upstream", &up)?;
        dn.resp_headers = up.resp_headers.clone();
        dn.attributes = vec![(CODE_DETAILS_PROPERTY, b"via_upstream".to_vec())];
        dn.now = up.now;
        call(on_dn, || dx.on_response_headers(&mut dn, false));
        no_reply("downstream", &dn)?;
        let mut client_body = Vec::new();
        let last = self.chunks.len() - 1;
        for (j, chunk) in self.chunks.iter().enumerate() {
            up.resp_body.clone_from(chunk);
            up.now += 100_000;
            call(on_up, || ux.on_response_body(&mut up, chunk.len(), j == last));
            dn.resp_body.clone_from(&up.resp_body);
            dn.now = up.now;
            let size = dn.resp_body.len();
            call(on_dn, || dx.on_response_body(&mut dn, size, j == last));
            if check {
                client_body.extend_from_slice(&dn.resp_body);
            }
        }
        call(on_dn, || dx.on_log(&mut dn));
        call(on_dn, || dx.on_done(&mut dn));
        call(on_up, || ux.on_done(&mut up));
        call(on_dn, || drop(dx));
        call(on_up, || drop(ux));
        no_reply("downstream", &dn)?;
        no_reply("upstream", &up)?;
        if let Some((headers, body)) = upstream_request {
            if dn.header("x-llmgw-rule") != Some("0") || dn.route_cache_clears != 1 {
                return Err(format!(
                    "downstream: x-llmgw-rule {:?}, {} route cache clear(s); expected rule 0 and one clear",
                    dn.header("x-llmgw-rule"),
                    dn.route_cache_clears
                ));
            }
            if dn.samples.as_ref().is_some_and(|s| !s.is_empty()) {
                return Err("downstream: recorded metrics; the upstream copy counts a fallback rule's requests".into());
            }
            let attempts = up.samples.iter().flatten().filter(|s| s.name.starts_with("llmgw.attempts_total")).count();
            if attempts != 1 {
                return Err(format!("upstream: {attempts} llmgw.attempts_total samples, expected 1"));
            }
            self.verify(&headers, &body, &up, &dn, &client_body)?;
        }
        Ok(Outcome { downstream: dn.counts(), upstream: Some(up.counts()) })
    }

    /// The request left for the right provider with its credential, the client got the mock's
    /// answer in OpenAI's shape, and the serving filter counted a success with usage.
    fn verify(
        &self,
        headers: &[(String, String)],
        body: &[u8],
        serving: &MemHost,
        client: &MemHost,
        client_body: &[u8],
    ) -> Result<(), String> {
        let get = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        let (path, credential) = match self.scenario.provider {
            Provider::OpenAI => ("/v1/chat/completions", ("authorization", "Bearer sk-bench-upstream")),
            Provider::Anthropic => ("/v1/messages", ("x-api-key", "sk-ant-bench-upstream")),
        };
        if get(":path") != Some(path) || get(credential.0) != Some(credential.1) {
            return Err(format!(
                "upstream request: :path {:?}, {} {:?}; expected {path:?} and the backend's credential",
                get(":path"),
                credential.0,
                get(credential.0)
            ));
        }
        let sent: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("upstream request body is not JSON: {e}"))?;
        if self.scenario.provider == Provider::Anthropic && sent.get("system").is_none() {
            return Err("upstream request body is not an Anthropic Messages request (no `system`)".into());
        }
        // The pick, then the other endpoints Envoy's override_host retries in order: all configured.
        if self.scenario.picker.is_some()
            && !get("x-llmgw-destination").is_some_and(|d| d.split(',').all(|e| PICKER_ENDPOINTS.contains(&e)))
        {
            return Err(format!("upstream request: x-llmgw-destination {:?}", get("x-llmgw-destination")));
        }
        if client.response_header_value(":status") != Some("200") {
            return Err(format!("client got status {:?}", client.response_header_value(":status")));
        }
        if client.response_header_value("x-llmgw-backend").is_some() {
            return Err("client got the internal x-llmgw-backend header".into());
        }
        let text = String::from_utf8_lossy(client_body);
        if self.scenario.stream {
            let mut at = 0;
            for t in 0..8 {
                match text[at..].find(&format!("tok{t} ")) {
                    Some(p) => at += p,
                    None => return Err(format!("client stream lacks content tok{t}: {text}")),
                }
            }
            if !text.contains("data: [DONE]") {
                return Err(format!("client stream does not end with [DONE]: {text}"));
            }
        } else {
            let v: serde_json::Value =
                serde_json::from_slice(client_body).map_err(|e| format!("client body is not JSON ({e}): {text}"))?;
            let content = v["choices"][0]["message"]["content"].as_str().unwrap_or_default();
            if content != (0..8).map(|t| format!("tok{t} ")).collect::<String>() {
                return Err(format!("client body is not the mock's chat completion: {text}"));
            }
        }
        let samples = serving.samples.as_deref().unwrap_or_default();
        let success =
            samples.iter().any(|s| s.name.starts_with("llmgw.requests_total") && s.name.contains("outcome=.=success"));
        let usage = samples.iter().any(|s| s.name.starts_with("gen_ai.client.token.usage"));
        if !success || !usage {
            let names: Vec<&str> = samples.iter().map(|s| s.name.as_str()).collect();
            return Err(format!("the serving filter did not count a success with usage: {names:?}"));
        }
        Ok(())
    }
}

/// A cache hit: the mock's answer with every prompt token reported cached, counted as a request.
fn verify_hit(h: &MemHost) -> Result<(), String> {
    let (status, body) = h.replies.first().ok_or("no local reply")?;
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("hit is not JSON ({e})"))?;
    let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64();
    if *status != 200 || v["id"] != "chatcmpl-bench" || cached != Some(250) {
        return Err(format!("not the cached answer ({status}): {}", String::from_utf8_lossy(body)));
    }
    let samples = h.samples.as_deref().unwrap_or_default();
    let counted = samples.iter().any(|s| s.name.starts_with("llmgw.requests_total") && s.name.contains("success"));
    let hit = samples.iter().any(|s| s.name == "llmgw.cache_hits_total");
    if !counted || !hit {
        return Err(format!("a hit not counted: {:?}", samples.iter().map(|s| &s.name).collect::<Vec<_>>()));
    }
    Ok(())
}

fn no_reply(which: &str, h: &MemHost) -> Result<(), String> {
    match h.replies.first() {
        None => Ok(()),
        Some((status, body)) => {
            Err(format!("the {which} filter answered locally ({status}): {}", String::from_utf8_lossy(body)))
        }
    }
}

/// The same shape and size as bench.py's make_body().
pub fn request_body(model: &str, size: usize, stream: bool) -> Vec<u8> {
    let head = format!(
        r#"{{"model":"{model}",{}"messages":[{{"role":"system","content":"You are a terse assistant."}},{{"role":"user","content":""#,
        if stream { r#""stream":true,"# } else { "" }
    );
    let tail = r#""}],"max_tokens":256}"#;
    let fill = size.saturating_sub(head.len() + tail.len());
    let text: String = "The quick brown fox jumps over the lazy dog. ".repeat(fill / 45 + 2);
    let mut t = text[..fill.saturating_sub(1)].to_string();
    t.push('?');
    format!("{head}{t}{tail}").into_bytes()
}

/// The bench mock's answers (bench_mock.rs): (content-type, chunks as the filter gets them).
fn mock_reply(anthropic: bool, stream: bool) -> (&'static str, Vec<Vec<u8>>) {
    let w: Vec<String> = (0..8).map(|i| format!("tok{i} ")).collect();
    let text = w.concat();
    let usage = r#"{"prompt_tokens":250,"completion_tokens":8,"total_tokens":258,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}"#;
    match (anthropic, stream) {
        (false, false) => ("application/json", vec![format!(r#"{{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","system_fingerprint":"fp_bench","choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}","refusal":null}},"logprobs":null,"finish_reason":"stop"}}],"usage":{usage}}}"#).into_bytes()]),
        (true, false) => ("application/json", vec![format!(r#"{{"id":"msg_bench","type":"message","role":"assistant","model":"claude-3-5-haiku-latest","content":[{{"type":"text","text":"{text}"}}],"stop_reason":"end_turn","stop_sequence":null,"usage":{{"input_tokens":250,"output_tokens":8}}}}"#).into_bytes()]),
        (false, true) => {
            let oa = |c: &str| format!("data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_bench\",\"choices\":{c}}}\n\n");
            let mut v = vec![format!("{}{}", oa(r#"[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]"#), oa(&format!(r#"[{{"index":0,"delta":{{"content":"{}"}},"logprobs":null,"finish_reason":null}}]"#, w[0])))];
            for t in &w[1..] {
                v.push(oa(&format!(r#"[{{"index":0,"delta":{{"content":"{t}"}},"logprobs":null,"finish_reason":null}}]"#)));
            }
            v.push(format!("{}data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_bench\",\"choices\":[],\"usage\":{usage}}}\n\ndata: [DONE]\n\n", oa(r#"[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]"#)));
            ("text/event-stream", v.into_iter().map(String::into_bytes).collect())
        }
        (true, true) => {
            let ev = |n: &str, d: &str| format!("event: {n}\ndata: {d}\n\n");
            let mut v = vec![format!(
                "{}{}{}",
                ev("message_start", r#"{"type":"message_start","message":{"id":"msg_bench","type":"message","role":"assistant","model":"claude-3-5-haiku-latest","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":250,"output_tokens":1}}}"#),
                ev("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#),
                ev("content_block_delta", &format!(r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{}"}}}}"#, w[0]))
            )];
            for t in &w[1..] {
                v.push(ev("content_block_delta", &format!(r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{t}"}}}}"#)));
            }
            v.push(format!(
                "{}{}{}",
                ev("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
                ev("message_delta", r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":8}}"#),
                ev("message_stop", r#"{"type":"message_stop"}"#)
            ));
            ("text/event-stream", v.into_iter().map(String::into_bytes).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_does_what_the_bench_request_does() {
        for s in SCENARIOS {
            let p = Prepared::new(s).unwrap();
            p.request(0, Collect::None, true).unwrap_or_else(|e| panic!("{}: {e}", s.name));
            let o = p.request(1, Collect::None, false).unwrap();
            assert_eq!(o.upstream.is_some(), s.fallback, "{}", s.name);
        }
    }

    #[test]
    fn a_local_reply_is_an_error_not_a_panic() {
        let mut p = Prepared::new(find("fallback-openai-json-1k").unwrap()).unwrap();
        for (name, value) in &mut p.client_headers {
            if name == ":method" {
                *value = "GET".into();
            }
        }
        let e = p.request(0, Collect::None, true).err().unwrap();
        assert!(e.contains("downstream filter answered locally (405)"), "{e}");
    }
}
