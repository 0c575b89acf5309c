//! Fallback rules (a rule with `retry`, or whose backends span several priorities): what the
//! bootstrap renders for them, read from the filter's own compiled configuration so that the
//! defaults (attempts, retry conditions) are the filter's.
//!
//! For fallback rule `r` the downstream filter sets `x-llmgw-rule: r` instead of
//! `x-llmgw-backend`; Envoy routes it to the cluster `llmgw-rule-<r>`, whose endpoints are every
//! backend of the rule (one Envoy priority level per distinct `priority`), and retries there. The
//! same filter runs as that cluster's upstream HTTP filter (`role: upstream`) and translates each
//! attempt for the backend Envoy picked, named in the endpoint's metadata
//! `filter_metadata.llmgw.target = "<r>/<i>"` (`i`: the backend's index in the rule's `backends`).

use serde_json::{Map, Value};

use crate::model::{AnyEnv, Gateway, Upstream};
use crate::validate::plugin_text;

pub use llmgw_filter::routing::{Fallback, RetryOn};

/// The request header that names a fallback rule (set by the downstream filter).
pub const RULE_HEADER: &str = "x-llmgw-rule";
/// Endpoint metadata namespace and key naming the rule and backend of an endpoint.
pub const METADATA_NAMESPACE: &str = "llmgw";
pub const METADATA_TARGET: &str = "target";
/// Endpoint metadata key (under `envoy.transport_socket_match`) choosing a TLS backend's socket.
pub const SOCKET_MATCH_KEY: &str = "llmgw_backend";

/// One backend of a fallback rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Index in the rule's `backends` list.
    pub index: usize,
    /// The plugin backend (and its cluster's) name.
    pub backend: String,
    /// Envoy priority level: the rule's distinct `priority` values renumbered 0, 1, ... in order
    /// (Envoy wants no gaps).
    pub level: u32,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The rule's index in the plugin configuration (the value of `x-llmgw-rule`).
    pub index: usize,
    pub fallback: Fallback,
    /// Backends with a positive weight (a weight-0 backend takes no traffic, as in the filter).
    pub targets: Vec<Target>,
}

impl Rule {
    pub fn cluster(&self) -> String {
        cluster_name(self.index)
    }

    /// `"<r>/<i>"`, the endpoint metadata the upstream filter reads.
    pub fn target_id(&self, t: &Target) -> String {
        format!("{}/{}", self.index, t.index)
    }
}

pub fn cluster_name(rule: usize) -> String {
    format!("llmgw-rule-{rule}")
}

/// The fallback rules of a gateway, as the filter compiles them (with every variable set to a
/// placeholder: only the shape matters). A configuration the filter rejects has none: Envoy
/// refuses it anyway, with the filter's own message.
pub fn rules(g: &Gateway) -> Vec<Rule> {
    let text = plugin_text(g);
    let Ok(compiled) = llmgw_filter::config::parse(text.as_bytes(), &AnyEnv, 0) else { return Vec::new() };
    compiled
        .rules
        .iter()
        .enumerate()
        .filter_map(|(r, rule)| {
            let fallback = rule.fallback.clone()?;
            let live: Vec<_> = rule.targets.iter().enumerate().filter(|(_, t)| t.weight > 0).collect();
            let mut levels: Vec<u32> = live.iter().map(|(_, t)| t.priority).collect();
            levels.sort_unstable();
            levels.dedup();
            let targets = live
                .iter()
                .filter_map(|(i, t)| {
                    let backend = compiled.backends.get(t.backend)?.name.clone();
                    let level = u32::try_from(levels.binary_search(&t.priority).ok()?).ok()?;
                    Some(Target { index: *i, backend, level, weight: t.weight })
                })
                .collect();
            Some(Rule { index: r, fallback, targets })
        })
        .collect()
}

/// Envoy's `retry_on` and `retriable_status_codes` for a rule's retry conditions.
///
/// An HTTP status below 500 (e.g. 429) that the rule retries is reported to Envoy as 503 by the
/// upstream filter (so that outlier detection counts it), so 503 is retried too unless `5xx` or
/// `gateway-error` already covers it; the status itself stays listed.
pub fn envoy_retry_on(retry_on: &[RetryOn]) -> (String, Vec<u16>) {
    let mut on: Vec<&str> = Vec::new();
    let mut codes: Vec<u16> = Vec::new();
    for r in retry_on {
        match r {
            RetryOn::ConnectFailure => on.push("connect-failure"),
            RetryOn::Reset => on.push("reset"),
            RetryOn::Status5xx => on.push("5xx"),
            RetryOn::GatewayError => on.push("gateway-error"),
            RetryOn::Status(s) => codes.push(*s),
        }
    }
    let covers_503 = on.iter().any(|o| *o == "5xx" || *o == "gateway-error");
    if !covers_503 && codes.iter().any(|c| *c < 500) && !codes.contains(&503) {
        codes.push(503);
    }
    if !codes.is_empty() {
        on.push("retriable-status-codes");
    }
    on.dedup();
    codes.dedup();
    (on.join(","), codes)
}

/// The `:authority` the per-backend route would send (its `host_rewrite`, else the first
/// endpoint's host and port), for the upstream filter, which sets it itself.
pub fn authority(u: &Upstream) -> Option<String> {
    u.host_rewrite
        .clone()
        .or_else(|| u.endpoints.first().map(|e| crate::url::authority(&e.host, e.port, u.tls.is_some())))
}

/// The plugin configuration of the filter's upstream copy: the downstream one with
/// `role: upstream`, and `host` set on every backend a fallback rule uses (the upstream filter
/// sets `:authority` itself: no per-backend route rewrites it there).
pub fn upstream_plugin(g: &Gateway, rules: &[Rule]) -> Map<String, Value> {
    let mut plugin = g.plugin.clone();
    let used: Vec<&str> = rules.iter().flat_map(|r| r.targets.iter().map(|t| t.backend.as_str())).collect();
    if let Some(backends) = plugin.get_mut("backends").and_then(Value::as_array_mut) {
        for b in backends.iter_mut().filter_map(Value::as_object_mut) {
            let Some(name) = b.get("name").and_then(Value::as_str).map(str::to_string) else { continue };
            if b.contains_key("host") || !used.contains(&name.as_str()) {
                continue;
            }
            if let Some(host) = g.upstreams.iter().find(|u| u.name == name).and_then(authority) {
                b.insert("host".into(), Value::String(host));
            }
        }
    }
    plugin.insert("role".into(), Value::String("upstream".into()));
    plugin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_conditions_in_envoy_terms() {
        let (on, codes) = envoy_retry_on(RetryOn::DEFAULT);
        assert_eq!((on.as_str(), codes), ("connect-failure,reset,5xx,retriable-status-codes", vec![429]));
        let (on, codes) = envoy_retry_on(&[RetryOn::ConnectFailure, RetryOn::Status(429)]);
        assert_eq!((on.as_str(), codes), ("connect-failure,retriable-status-codes", vec![429, 503]));
        let (on, codes) = envoy_retry_on(&[RetryOn::GatewayError, RetryOn::Status(500)]);
        assert_eq!((on.as_str(), codes), ("gateway-error,retriable-status-codes", vec![500]));
        let (on, codes) = envoy_retry_on(&[RetryOn::Reset]);
        assert_eq!((on.as_str(), codes), ("reset", vec![]));
    }
}
