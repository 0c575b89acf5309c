//! Metric names. Labels travel inside the Envoy stat name (`<metric>.<label>=.=<value>;.;`) and the
//! bootstrap's `stats_tags` turn them into Prometheus labels; Envoy strips the `wasmcustom.` prefix.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use crate::host::Host;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Counter,
    Histogram,
    /// Holds the last value set.
    Gauge,
    /// A gauge moved by a signed delta: the recorded `u64` holds an `i64` (two's complement), so
    /// every worker's changes add up to the total.
    GaugeDelta,
}

/// One measurement to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub name: String,
    pub kind: Kind,
    pub value: u64,
}

pub const TOKEN_USAGE: &str = "gen_ai.client.token.usage";
pub const REQUEST_DURATION: &str = "gen_ai.server.request.duration";
pub const TIME_TO_FIRST_TOKEN: &str = "gen_ai.server.time_to_first_token";
pub const TIME_PER_OUTPUT_TOKEN: &str = "gen_ai.server.time_per_output_token";
pub const REQUESTS: &str = "llmgw.requests_total";
/// Attempts of fallback rules' requests, per backend: `outcome` served or retried.
pub const ATTEMPTS: &str = "llmgw.attempts_total";

/// Requests a budget refused (429, or 503 when its counter stayed contended), by budget name.
pub const BUDGET_REFUSALS: &str = "llmgw.budget_refusals_total";

/// Per budget and consumer (gauges, for `llmgw stat`): the count of the window last written, and
/// that window's end in Unix seconds (a count whose window has ended is 0 in effect).
pub const BUDGET_USED: &str = "llmgw.budget_used";
pub const BUDGET_WINDOW_END: &str = "llmgw.budget_window_end_seconds";

/// The label names, in the order they appear in stat names.
pub const LABELS: &[&str] = &[
    "llmgw_backend",
    "gen_ai_request_model",
    "gen_ai_operation_name",
    "gen_ai_token_type",
    "outcome",
    "http_status",
    "error_code",
    "llmgw_budget",
    "llmgw_consumer",
    "llmgw_endpoint",
];

/// Labels common to every metric of a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Labels {
    pub backend: String,
    pub model: String,
    pub operation: &'static str,
    /// `llmgw_consumer`, when the request has one (else no such label).
    pub consumer: String,
    /// The configured request headers' labels (`metrics_request_header_labels`): (label, value).
    pub headers: Vec<(String, String)>,
}

impl Labels {
    fn tagged(&self, metric: &str, extra: &[(&str, &str)]) -> String {
        let mut name = String::with_capacity(metric.len() + 96);
        name.push_str(metric);
        name.push('.');
        push_label(&mut name, "llmgw_backend", &self.backend);
        push_label(&mut name, "gen_ai_request_model", &self.model);
        push_label(&mut name, "gen_ai_operation_name", self.operation);
        if !self.consumer.is_empty() {
            push_label(&mut name, "llmgw_consumer", &self.consumer);
        }
        for (label, value) in &self.headers {
            push_label(&mut name, label, value);
        }
        for (label, value) in extra {
            push_label(&mut name, label, value);
        }
        name
    }

    pub fn counter(&self, metric: &str, extra: &[(&str, &str)], value: u64) -> Sample {
        Sample { name: self.tagged(metric, extra), kind: Kind::Counter, value }
    }

    pub fn histogram(&self, metric: &str, extra: &[(&str, &str)], value: u64) -> Sample {
        Sample { name: self.tagged(metric, extra), kind: Kind::Histogram, value }
    }
}

/// `<label>=.=<value>;.;`, the value's separators and control characters made `_`.
fn push_label(name: &mut String, label: &str, value: &str) {
    name.push_str(label);
    name.push_str("=.=");
    name.extend(value.chars().map(|c| if c == ';' || c == '=' || c.is_control() { '_' } else { c }));
    name.push_str(";.;");
}

/// Bounds how many distinct label sets a VM creates: clients choose model names, and every new
/// name would otherwise be a new set of Envoy stats forever.
pub struct LabelLimiter {
    max: usize,
    seen: Cell<HashSet<(String, String)>>,
}

impl std::fmt::Debug for LabelLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabelLimiter").field("max", &self.max).finish_non_exhaustive()
    }
}

impl LabelLimiter {
    pub fn new(max: usize) -> Self {
        LabelLimiter { max, seen: Cell::new(HashSet::new()) }
    }

    /// The (model, consumer) labels: themselves, or `other` (both; the consumer stays empty when
    /// there is none) once the limit is reached. Each pair counts once against the limit.
    pub fn pair_labels(&self, backend: &str, model: &str, consumer: &str) -> (String, String) {
        if consumer.is_empty() {
            return (self.model_label(backend, model), String::new());
        }
        let key = pair_key(model, consumer);
        if self.model_label(backend, &key) == key {
            (model.to_string(), consumer.to_string())
        } else {
            ("other".to_string(), "other".to_string())
        }
    }

    /// A request's labels: model, consumer and header labels as they are, or all `other` once
    /// the limit is reached (each distinct set counts once against it).
    pub fn labels(
        &self,
        backend: &str,
        operation: &'static str,
        model: &str,
        consumer: &str,
        headers: &[(String, String)],
    ) -> Labels {
        let (model, consumer, headers) = if headers.is_empty() {
            let (model, consumer) = self.pair_labels(backend, model, consumer);
            (model, consumer, Vec::new())
        } else if self.pair_labels(backend, model, &who_key(consumer, headers)).0 == "other" {
            let other = |(l, _): &(String, String)| (l.clone(), "other".to_string());
            let consumer = if consumer.is_empty() { "" } else { "other" };
            ("other".to_string(), consumer.to_string(), headers.iter().map(other).collect())
        } else {
            (model.to_string(), consumer.to_string(), headers.to_vec())
        };
        Labels { backend: backend.to_string(), model, operation, consumer, headers }
    }

    /// The model label to use: the model itself, or `other` once the limit is reached.
    pub fn model_label(&self, backend: &str, model: &str) -> String {
        let mut seen = self.seen.take();
        let key = (backend.to_string(), model.to_string());
        let label = if seen.contains(&key) {
            model.to_string()
        } else if seen.len() < self.max {
            seen.insert(key);
            model.to_string()
        } else {
            "other".to_string()
        };
        self.seen.set(seen);
        label
    }
}

/// One key for a (model, consumer) pair. A header value (the consumer's source) cannot hold a NUL.
fn pair_key(model: &str, consumer: &str) -> String {
    if consumer.is_empty() {
        model.to_string()
    } else {
        format!("{model}\0{consumer}")
    }
}

/// The consumer and the header labels' values as one "who" for the limiter: a label set is
/// (model, who), capped together.
fn who_key(consumer: &str, headers: &[(String, String)]) -> String {
    let mut who = consumer.to_string();
    for (name, value) in headers {
        who.push('\0');
        who.push_str(name);
        who.push('=');
        who.push_str(value);
    }
    who
}

/// Longest header value a span attribute or metric label takes (longer ones are cut).
pub const MAX_HEADER_VALUE: usize = 256;

/// The configured headers' (name, value) pairs of a request, values cut at `MAX_HEADER_VALUE`
/// bytes; a header the request lacks is left out.
pub fn header_values(mappings: &[(String, String)], headers: &[(String, String)]) -> Vec<(String, String)> {
    mappings
        .iter()
        .filter_map(|(header, name)| {
            let value = crate::plan::header(headers, header)?;
            let mut end = value.len().min(MAX_HEADER_VALUE);
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            Some((name.clone(), value.get(..end).unwrap_or_default().to_string()))
        })
        .collect()
}

/// A valid Prometheus label name for an attribute name (`team.id` → `team_id`).
pub fn label_name(attribute: &str) -> String {
    let mut name: String = attribute.trim().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name
}

/// The metrics a served request records, one set per label set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Success,
    Failure,
    Duration,
    InputTokens,
    OutputTokens,
    TimeToFirstToken,
    TimePerOutputToken,
    /// A cache hit's tokens: its answer's usage, none of it spent at a provider.
    CachedTokens,
}

const SLOTS: usize = 8;

impl Slot {
    fn index(self) -> usize {
        self as usize
    }

    fn kind(self) -> Kind {
        match self {
            Slot::Success | Slot::Failure => Kind::Counter,
            _ => Kind::Histogram,
        }
    }

    fn sample(self, labels: &Labels, value: u64) -> Sample {
        match self {
            Slot::Success => labels.counter(REQUESTS, &[("outcome", "success")], value),
            Slot::Failure => labels.counter(REQUESTS, &[("outcome", "failure")], value),
            Slot::Duration => labels.histogram(REQUEST_DURATION, &[], value),
            Slot::InputTokens => labels.histogram(TOKEN_USAGE, &[("gen_ai_token_type", "input")], value),
            Slot::OutputTokens => labels.histogram(TOKEN_USAGE, &[("gen_ai_token_type", "output")], value),
            Slot::TimeToFirstToken => labels.histogram(TIME_TO_FIRST_TOKEN, &[], value),
            Slot::TimePerOutputToken => labels.histogram(TIME_PER_OUTPUT_TOKEN, &[], value),
            Slot::CachedTokens => labels.histogram(TOKEN_USAGE, &[("gen_ai_token_type", "cached")], value),
        }
    }
}

/// One label set's metrics: each stat name is built and its Envoy id resolved on first use, then
/// recording is one host call.
#[derive(Debug)]
pub struct MetricSet {
    labels: Labels,
    ids: [Cell<Option<u32>>; SLOTS],
}

impl MetricSet {
    fn new(labels: Labels) -> Self {
        MetricSet { labels, ids: Default::default() }
    }

    pub fn record(&self, host: &mut dyn Host, slot: Slot, value: u64) {
        let Some(cell) = self.ids.get(slot.index()) else { return };
        let id = match cell.get() {
            Some(id) => id,
            None => {
                let sample = slot.sample(&self.labels, value);
                let Some(id) = host.define_metric(sample.kind, &sample.name) else { return };
                cell.set(Some(id));
                id
            }
        };
        host.record_metric(id, slot.kind(), value);
    }
}

/// The metric sets of a VM, by backend, operation, model and consumer. Bounded: (model, consumer)
/// pairs are capped by the `LabelLimiter` (over the cap a request counts under model `other`, and
/// consumer `other` if it has one), backends and operations are the configuration's.
type ByModel = HashMap<String, Rc<MetricSet>>;

#[derive(Debug, Default)]
pub struct MetricSets {
    /// operation → backend → model (as the client named it) and consumer → set.
    sets: RefCell<HashMap<&'static str, HashMap<String, ByModel>>>,
}

impl MetricSets {
    pub fn get(
        &self,
        limiter: &LabelLimiter,
        backend: &str,
        operation: &'static str,
        model: &str,
        consumer: &str,
        headers: &[(String, String)],
    ) -> Rc<MetricSet> {
        let key = pair_key(model, &who_key(consumer, headers));
        let Ok(mut sets) = self.sets.try_borrow_mut() else {
            return Rc::new(MetricSet::new(limiter.labels(backend, operation, model, consumer, headers)));
        };
        let by_backend = sets.entry(operation).or_default();
        if let Some(set) = by_backend.get(backend).and_then(|by_model| by_model.get(&key)) {
            return set.clone();
        }
        // First time for this set here: over the cap it counts under `other`, and is not
        // remembered by name.
        let labels = limiter.labels(backend, operation, model, consumer, headers);
        by_backend
            .entry(backend.to_string())
            .or_default()
            .entry(pair_key(&labels.model, &who_key(&labels.consumer, &labels.headers)))
            .or_insert_with(|| Rc::new(MetricSet::new(labels)))
            .clone()
    }
}

/// Ids of counters keyed by a small value (bounded by the caller's key space), each defined once.
/// Counters only: a known id is recorded as one.
#[derive(Debug)]
pub struct MetricIds<K> {
    ids: RefCell<HashMap<K, u32>>,
}

impl<K> Default for MetricIds<K> {
    fn default() -> Self {
        MetricIds { ids: RefCell::new(HashMap::new()) }
    }
}

impl<K: std::hash::Hash + Eq> MetricIds<K> {
    /// Records `value` on the metric of `key`; `sample` builds its name and kind the first time.
    pub fn record(&self, host: &mut dyn Host, key: K, value: u64, sample: impl FnOnce() -> Sample) {
        let known = self.ids.try_borrow().ok().and_then(|ids| ids.get(&key).copied());
        let (id, kind) = match known {
            Some(id) => (id, Kind::Counter),
            None => {
                let sample = sample();
                let Some(id) = host.define_metric(sample.kind, &sample.name) else { return };
                if let Ok(mut ids) = self.ids.try_borrow_mut() {
                    ids.insert(key, id);
                }
                (id, sample.kind)
            }
        };
        host.record_metric(id, kind, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_labels() {
        let l = Labels {
            backend: "openai".into(),
            model: "qwen2.5:0.5b".into(),
            operation: "chat",
            consumer: String::new(),
            headers: Vec::new(),
        };
        let s = l.histogram(TOKEN_USAGE, &[("gen_ai_token_type", "input")], 5);
        assert_eq!(
            s.name,
            "gen_ai.client.token.usage.llmgw_backend=.=openai;.;gen_ai_request_model=.=qwen2.5:0.5b;.;gen_ai_operation_name=.=chat;.;gen_ai_token_type=.=input;.;"
        );
        let l = Labels {
            backend: "b".into(),
            model: "a;b=c\n".into(),
            operation: "chat",
            consumer: String::new(),
            headers: Vec::new(),
        };
        assert!(l.counter(REQUESTS, &[], 1).name.contains("gen_ai_request_model=.=a_b_c_;.;"));
    }

    #[test]
    fn limiter_caps_new_models() {
        let l = LabelLimiter::new(2);
        assert_eq!(l.model_label("b", "m1"), "m1");
        assert_eq!(l.model_label("b", "m2"), "m2");
        assert_eq!(l.model_label("b", "m3"), "other");
        assert_eq!(l.model_label("b", "m1"), "m1");
    }

    #[test]
    fn a_label_set_defines_each_metric_once_and_models_over_the_cap_count_as_other() {
        let mut host = crate::testing::FakeHost::default();
        let sets = MetricSets::default();
        let limiter = LabelLimiter::new(1);
        for _ in 0..3 {
            sets.get(&limiter, "b", "chat", "m1", "", &[]).record(&mut host, Slot::Success, 1);
        }
        assert_eq!(host.metric_names.len(), 1, "defined once");
        assert_eq!(host.samples.len(), 3);
        assert!(host.samples.iter().all(|s| s.name.contains("gen_ai_request_model=.=m1;.;")));
        sets.get(&limiter, "b", "chat", "m2", "", &[]).record(&mut host, Slot::Duration, 7);
        sets.get(&limiter, "b", "chat", "m3", "", &[]).record(&mut host, Slot::Duration, 8);
        let last = &host.samples[3..];
        assert!(last.iter().all(|s| s.name.contains("gen_ai_request_model=.=other;.;") && s.kind == Kind::Histogram));
        assert_eq!(host.metric_names.len(), 2, "m2 and m3 share `other`");
    }

    #[test]
    fn consumers_are_a_label_capped_with_the_model() {
        let mut host = crate::testing::FakeHost::default();
        let sets = MetricSets::default();
        let limiter = LabelLimiter::new(2);
        sets.get(&limiter, "b", "chat", "m1", "team-a", &[]).record(&mut host, Slot::Success, 1);
        sets.get(&limiter, "b", "chat", "m1", "", &[]).record(&mut host, Slot::Success, 1);
        // A third pair is over the cap: both labels say `other`.
        sets.get(&limiter, "b", "chat", "m1", "team-b", &[]).record(&mut host, Slot::Success, 1);
        let names: Vec<&str> = host.samples.iter().map(|s| s.name.as_str()).collect();
        assert!(
            names[0].contains("gen_ai_request_model=.=m1;.;gen_ai_operation_name=.=chat;.;llmgw_consumer=.=team-a;.;")
        );
        assert!(!names[1].contains("llmgw_consumer"), "no consumer, no label: {}", names[1]);
        assert!(names[2].contains("gen_ai_request_model=.=other;.;") && names[2].contains("llmgw_consumer=.=other;.;"));
        // A model holding a NUL cannot make up a consumer.
        let (model, consumer) = LabelLimiter::new(9).pair_labels("b", "m\0x", "team-a");
        assert_eq!((model.as_str(), consumer.as_str()), ("m\0x", "team-a"));
    }
}
