//! BackendTrafficPolicy (Envoy Gateway) → the `retry` of the plugin rules it applies to.
//!
//! Envoy AI Gateway configures provider fallback with `priority` on the AIGatewayRoute's
//! backendRefs and a BackendTrafficPolicy whose `retry` targets the HTTPRoute generated for the
//! route, which is named like the AIGatewayRoute. A policy applies to an AIGatewayRoute's rules
//! when it targets that HTTPRoute (with `sectionName`: only the rule of that `name`), or a
//! Gateway (every route); the most specific one wins. Only `retry` is converted; the rest is
//! named in warnings.
//!
//! `retry` maps to the rule's `retry` (filter/README.md): `numRetries` (default 2) + 1 attempts;
//! `retryOn.triggers` `connect-failure`, `reset`, `5xx`, `gateway-error` as they are,
//! `retriable-status-codes` as the statuses of `retryOn.httpStatusCodes`, `retriable-4xx` as 409;
//! without `retryOn`, Envoy Gateway's default (connect failures and 503); `perRetry.timeout` as
//! `per_try_timeout`. llmgw moves to the next priority after every failed attempt
//! (`numAttemptsPerPriority: 1`).

use serde_json::{json, Value as Json};

use super::Ctx;
use crate::diag::{ConfigError, DocRef};
use crate::duration;
use crate::formats::node::{At, NResult};

/// Envoy Gateway's triggers when `retryOn.triggers` is not given; the statuses default to 503
/// only when `retryOn` is not given at all. Of these llmgw's HTTP/1.1 upstreams (no gRPC) use
/// connect-failure and retriable-status-codes; the others are left out without a warning.
const DEFAULT_TRIGGERS: &[&str] =
    &["connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"];
const MAX_ATTEMPTS: u64 = llmgw_filter::config::MAX_ATTEMPTS as u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub section: Option<String>,
}

pub(crate) struct RetryPolicy {
    /// The BackendTrafficPolicy (index in `Ctx::objs`).
    pub obj: usize,
    pub doc: DocRef,
    pub targets: Vec<Target>,
    /// The plugin rule's `retry`.
    pub retry: Json,
}

impl RetryPolicy {
    /// How specifically this policy targets a rule of AIGatewayRoute `namespace/route` (named
    /// `rule`, if it has a name): 3 the rule, 2 the route, 1 a Gateway, 0 not at all.
    pub fn specificity(&self, namespace: &str, route: &str, rule: Option<&str>) -> u8 {
        self.targets
            .iter()
            .filter(|t| t.namespace == namespace)
            .map(|t| match (t.kind.as_str(), &t.section) {
                ("HTTPRoute", Some(s)) if t.name == route && Some(s.as_str()) == rule => 3,
                ("HTTPRoute", None) if t.name == route => 2,
                ("Gateway", _) => 1,
                _ => 0,
            })
            .max()
            .unwrap_or(0)
    }
}

/// Every BackendTrafficPolicy with a `retry`; warnings for the fields llmgw does not convert.
pub(crate) fn convert(ctx: &mut Ctx<'_>) -> Result<Vec<RetryPolicy>, ConfigError> {
    let mut out = Vec::new();
    let indices: Vec<usize> =
        ctx.objs.iter().enumerate().filter(|(_, o)| o.kind == "BackendTrafficPolicy").map(|(i, _)| i).collect();
    for i in indices {
        let obj = &ctx.objs[i];
        let spec = obj.spec();
        let mut notes: Vec<(String, String)> = Vec::new();
        for field in spec.unknown_keys(&["targetRefs", "targetRef", "targetSelectors", "retry", "healthCheck"]) {
            notes.push((field, "not supported by llmgw; ignored".into()));
        }
        if let Some(h) = spec.get("healthCheck") {
            notes.push((
                h.field().into(),
                "ignored: llmgw's fallback clusters eject a backend after one 5xx (or retried 429) for 30 s".into(),
            ));
        }
        if let Some(s) = spec.get("targetSelectors") {
            notes.push((s.field().into(), "not supported by llmgw (no labels to select); ignored".into()));
        }
        let namespace = obj.namespace.clone();
        let doc = obj.doc_ref();
        let parsed = targets(&spec, &namespace)
            .and_then(|t| spec.get("retry").map(|r| retry(&r, &mut notes)).transpose().map(|r| (t, r)));
        let (targets, retry) = parsed.map_err(|e| ctx.err(&ctx.objs[i], e))?;
        for (field, what) in notes {
            ctx.warn(i, &field, &what);
        }
        match retry {
            Some(retry) => out.push(RetryPolicy { obj: i, doc, targets, retry }),
            None => ctx.warn(i, "spec", "no retry, the one part of a BackendTrafficPolicy llmgw converts; ignored"),
        }
    }
    Ok(out)
}

/// `targetRefs` (and the older `targetRef`).
fn targets(spec: &At<'_>, namespace: &str) -> NResult<Vec<Target>> {
    let mut refs = spec.list("targetRefs")?;
    refs.extend(spec.get("targetRef"));
    refs.iter()
        .map(|r| {
            Ok(Target {
                kind: r.req_str("kind")?.to_string(),
                namespace: namespace.to_string(),
                name: r.req_str("name")?.to_string(),
                section: r.opt_str("sectionName")?.map(str::to_string),
            })
        })
        .collect()
}

/// A BackendTrafficPolicy `retry` as a plugin rule's `retry`.
fn retry(r: &At<'_>, notes: &mut Vec<(String, String)>) -> NResult<Json> {
    for field in r.unknown_keys(&["numRetries", "numAttemptsPerPriority", "retryOn", "perRetry"]) {
        notes.push((field, "not supported by llmgw; ignored".into()));
    }
    let retries = r.get("numRetries").map(|n| n.u64()).transpose()?.unwrap_or(2);
    let mut attempts = retries.saturating_add(1);
    if attempts > MAX_ATTEMPTS {
        let at = r.req("numRetries")?;
        notes.push((
            at.field().into(),
            format!("llmgw makes at most {MAX_ATTEMPTS} attempts; {retries} retries become {}", MAX_ATTEMPTS - 1),
        ));
        attempts = MAX_ATTEMPTS;
    }
    if let Some(n) = r.get("numAttemptsPerPriority") {
        if n.u64()? > 1 {
            notes.push((
                n.field().into(),
                "llmgw moves to the next priority after every failed attempt (as with 1)".into(),
            ));
        }
    }
    let mut on: Vec<String> = Vec::new();
    match r.get("retryOn") {
        // Envoy Gateway's default triggers, with status 503.
        None => on.extend(["connect-failure".to_string(), "503".to_string()]),
        Some(ro) => {
            for field in ro.unknown_keys(&["triggers", "httpStatusCodes"]) {
                notes.push((field, "not supported by llmgw; ignored".into()));
            }
            let codes = ro.list("httpStatusCodes")?;
            let triggers = ro.list("triggers")?;
            let given: Vec<(String, Option<At<'_>>)> = if triggers.is_empty() {
                DEFAULT_TRIGGERS.iter().map(|t| (t.to_string(), None)).collect()
            } else {
                triggers.iter().map(|t| t.str().map(|s| (s.to_string(), Some(t.clone())))).collect::<NResult<_>>()?
            };
            for (trigger, at) in &given {
                match trigger.as_str() {
                    "connect-failure" | "reset" | "5xx" | "gateway-error" => on.push(trigger.clone()),
                    "retriable-4xx" => on.push("409".into()),
                    "retriable-status-codes" => {
                        for c in &codes {
                            match c.u64()? {
                                code @ 400..=599 => on.push(code.to_string()),
                                code => notes.push((
                                    c.field().into(),
                                    format!("llmgw retries error statuses (400 to 599) only; {code} ignored"),
                                )),
                            }
                        }
                    }
                    other => {
                        if let Some(at) = at {
                            notes.push((
                                at.field().into(),
                                format!(
                                    "trigger {other} is not supported by llmgw (it retries on connect-failure, reset, \
                                     5xx, gateway-error, retriable-status-codes, retriable-4xx); ignored"
                                ),
                            ));
                        }
                    }
                }
            }
            if !codes.is_empty() && !given.iter().any(|(t, _)| t == "retriable-status-codes") {
                let at = ro.req("httpStatusCodes")?;
                notes.push((
                    at.field().into(),
                    "ignored, as by Envoy Gateway: no retriable-status-codes trigger".into(),
                ));
            }
        }
    }
    let mut seen = Vec::new();
    on.retain(|o| {
        let new = !seen.contains(o);
        seen.push(o.clone());
        new
    });
    if on.is_empty() {
        notes.push((
            r.field().into(),
            "no retry condition llmgw supports: requests are not retried (a failing backend is still ejected)".into(),
        ));
    }
    let mut out = json!({"attempts": attempts, "on": on});
    if let Some(per) = r.get("perRetry") {
        for field in per.unknown_keys(&["timeout", "backOff"]) {
            notes.push((field, "not supported by llmgw; ignored".into()));
        }
        if let Some(b) = per.get("backOff") {
            notes.push((b.field().into(), "ignored: llmgw uses Envoy's back-off (25 ms, at most 250 ms)".into()));
        }
        if let Some(t) = per.get("timeout") {
            let d = duration::parse(t.str()?).map_err(|e| t.err(e))?;
            if d.is_zero() {
                return Err(t.err("must be greater than 0"));
            }
            out["per_try_timeout"] = Json::String(short_duration(d.as_millis()));
        }
    }
    Ok(out)
}

/// `90s` → `90s`, `120000ms` → `2m`: the plugin's one-unit durations.
fn short_duration(ms: u128) -> String {
    match ms {
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(yaml: &str) -> (Json, Vec<(String, String)>) {
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).unwrap();
        let mut notes = Vec::new();
        let out = retry(&At::root(&v), &mut notes).unwrap();
        (out, notes)
    }

    #[test]
    fn retries_convert() {
        let (r, notes) = conv(
            "numRetries: 5\nperRetry: {timeout: 30s, backOff: {baseInterval: 100ms}}\n\
             retryOn: {httpStatusCodes: [500, 429], triggers: [connect-failure, retriable-status-codes]}\n",
        );
        assert_eq!(r, json!({"attempts": 6, "on": ["connect-failure", "500", "429"], "per_try_timeout": "30s"}));
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(notes[0].0, "perRetry.backOff");
        // Envoy Gateway's defaults: 2 retries, connect failures and 503.
        let (r, notes) = conv("{}\n");
        assert_eq!(r, json!({"attempts": 3, "on": ["connect-failure", "503"]}));
        assert!(notes.is_empty());
        let (r, notes) = conv("numRetries: 20\nretryOn: {triggers: [5xx, reset, retriable-4xx, cancelled]}\n");
        assert_eq!(r, json!({"attempts": 10, "on": ["5xx", "reset", "409"]}));
        let fields: Vec<&str> = notes.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["numRetries", "retryOn.triggers[3]"]);
        let (r, notes) = conv("retryOn: {httpStatusCodes: [429]}\nperRetry: {timeout: 1m30s}\n");
        // No triggers: Envoy Gateway's default ones, which include retriable-status-codes.
        assert_eq!(r, json!({"attempts": 3, "on": ["connect-failure", "429"], "per_try_timeout": "90s"}));
        assert!(notes.is_empty(), "{notes:?}");
        let (_, notes) = conv("retryOn: {triggers: [5xx], httpStatusCodes: [429]}\n");
        assert_eq!(notes[0].0, "retryOn.httpStatusCodes");
        let (r, notes) = conv("retryOn: {triggers: [unavailable]}\n");
        assert_eq!(r["on"], json!([]));
        assert_eq!(notes.len(), 2, "{notes:?}");
    }

    #[test]
    fn durations_in_one_unit() {
        assert_eq!(short_duration(90_000), "90s");
        assert_eq!(short_duration(120_000), "2m");
        assert_eq!(short_duration(7_200_000), "2h");
        assert_eq!(short_duration(1_500), "1500ms");
    }

    #[test]
    fn specificity() {
        let t = |kind: &str, name: &str, section: Option<&str>| Target {
            kind: kind.into(),
            namespace: "default".into(),
            name: name.into(),
            section: section.map(str::to_string),
        };
        let p = RetryPolicy {
            obj: 0,
            doc: DocRef { index: 1, object: None },
            targets: vec![t("HTTPRoute", "r", Some("chat")), t("Gateway", "gw", None)],
            retry: json!({}),
        };
        assert_eq!(p.specificity("default", "r", Some("chat")), 3);
        assert_eq!(p.specificity("default", "r", None), 1);
        assert_eq!(p.specificity("default", "other", None), 1);
        assert_eq!(p.specificity("prod", "r", Some("chat")), 0);
    }
}
