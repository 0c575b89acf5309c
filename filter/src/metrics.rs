//! Metric names. Labels travel inside the Envoy stat name (`<metric>.<label>=.=<value>;.;`) and the
//! bootstrap's `stats_tags` turn them into Prometheus labels; Envoy strips the `wasmcustom.` prefix.

use std::cell::Cell;
use std::collections::HashSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Counter,
    Histogram,
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

/// The label names, in the order they appear in stat names.
pub const LABELS: &[&str] = &[
    "llmgw_backend",
    "gen_ai_request_model",
    "gen_ai_operation_name",
    "gen_ai_token_type",
    "outcome",
    "http_status",
    "error_code",
];

/// Labels common to every metric of a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Labels {
    pub backend: String,
    pub model: String,
    pub operation: &'static str,
}

impl Labels {
    fn tagged(&self, metric: &str, extra: &[(&str, &str)]) -> String {
        let mut name = String::with_capacity(metric.len() + 96);
        name.push_str(metric);
        name.push('.');
        let common = [
            ("llmgw_backend", self.backend.as_str()),
            ("gen_ai_request_model", self.model.as_str()),
            ("gen_ai_operation_name", self.operation),
        ];
        for (label, value) in common.iter().chain(extra) {
            name.push_str(label);
            name.push_str("=.=");
            name.extend(value.chars().map(|c| if c == ';' || c == '=' || c.is_control() { '_' } else { c }));
            name.push_str(";.;");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_labels() {
        let l = Labels { backend: "openai".into(), model: "qwen2.5:0.5b".into(), operation: "chat" };
        let s = l.histogram(TOKEN_USAGE, &[("gen_ai_token_type", "input")], 5);
        assert_eq!(
            s.name,
            "gen_ai.client.token.usage.llmgw_backend=.=openai;.;gen_ai_request_model=.=qwen2.5:0.5b;.;gen_ai_operation_name=.=chat;.;gen_ai_token_type=.=input;.;"
        );
        let l = Labels { backend: "b".into(), model: "a;b=c\n".into(), operation: "chat" };
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
}
