//! AIGatewayRoute rules → plugin rules, and the backends they reference.
//!
//! Matching follows the Gateway API: the matches of a rule are OR-ed (one plugin rule each), the
//! headers of a match are AND-ed; `x-ai-eg-model` is the body's model (the filter reads it from the
//! body), other headers are request headers. Among rules, the one with more conditions wins (Gateway
//! API precedence), then file order: plugin rules are sorted that way, stably.

use std::time::Duration;

use serde_json::{json, Map, Value as Json};

use super::policy::RetryPolicy;
use super::Ctx;
use crate::diag::{ConfigError, DocRef};
use crate::duration;
use crate::formats::node::{At, FieldError, NResult};
use crate::model::cluster_safe;

const MODEL_HEADER: &str = "x-ai-eg-model";

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct HeaderMutation {
    pub set: Vec<(String, String)>,
    pub remove: Vec<String>,
}

/// One plugin backend: an AIServiceBackend as one route reference sees it (model override and
/// per-reference header mutation make distinct backends, each with its own cluster).
#[derive(Debug, Clone)]
pub(crate) struct Variant {
    pub name: String,
    pub namespace: String,
    pub service: String,
    pub model_override: Option<String>,
    pub headers: Option<HeaderMutation>,
    pub timeout: Option<Duration>,
    /// The route object (index in `Ctx::objs`) and field that first referenced it.
    pub referrer: usize,
    pub field: String,
}

pub(crate) struct RoutedRule {
    pub json: Json,
    pub doc: DocRef,
    pub field: String,
    /// The BackendTrafficPolicy its `retry` comes from.
    pub retry_doc: Option<DocRef>,
    conditions: usize,
}

pub(crate) struct Routed {
    pub rules: Vec<RoutedRule>,
    pub variants: Vec<Variant>,
    /// Indices (in the policies given to [`convert`]) of the retry policies some rule uses.
    pub used_policies: Vec<usize>,
}

pub(crate) fn convert(ctx: &mut Ctx<'_>, policies: &[RetryPolicy]) -> Result<Routed, ConfigError> {
    let routes: Vec<usize> =
        ctx.objs.iter().enumerate().filter(|(_, o)| o.kind == "AIGatewayRoute").map(|(i, _)| i).collect();
    if routes.is_empty() {
        return Err(ConfigError::new(
            ctx.file,
            "",
            "no AIGatewayRoute: nothing sends requests to a backend (add one with rules and backendRefs)",
        ));
    }
    let mut routed = Routed { rules: Vec::new(), variants: Vec::new(), used_policies: Vec::new() };
    for i in routes {
        route(ctx, i, policies, &mut routed)?;
    }
    routed.rules.sort_by_key(|r| std::cmp::Reverse(r.conditions));
    Ok(routed)
}

fn route(ctx: &mut Ctx<'_>, i: usize, policies: &[RetryPolicy], out: &mut Routed) -> Result<(), ConfigError> {
    let obj = &ctx.objs[i];
    let spec = obj.spec();
    let mut notes: Vec<(String, String)> = Vec::new();
    for field in spec.unknown_keys(&[
        "parentRefs",
        "targetRefs",
        "schema",
        "rules",
        "hostnames",
        "llmRequestCosts",
        "filterConfig",
    ]) {
        notes.push((field, "not supported by llmgw; ignored".into()));
    }
    if let Some(h) = spec.get("hostnames") {
        notes.push((h.field().into(), "ignored: llmgw serves every Host on its listener".into()));
    }
    if let Some(c) = spec.get("llmRequestCosts") {
        notes.push((
            c.field().into(),
            "ignored: llmgw always records input/output/total tokens (filter state wasm.llm_input_token, \
             wasm.llm_output_token, wasm.llm_total_token)"
                .into(),
        ));
    }
    if let Some(f) = spec.get("filterConfig") {
        notes
            .push((f.field().into(), "ignored: llmgw's filter runs inside Envoy, not as an external processor".into()));
    }
    if let Some(s) = spec.get("schema") {
        let name = s.opt_str("name").map_err(|e| ctx.err(obj, e))?.unwrap_or("OpenAI");
        if name != "OpenAI" {
            notes.push((s.field().into(), format!("input schema {name} ignored: clients speak the OpenAI API")));
        }
    }
    let rules = spec.req("rules").and_then(|r| r.items()).map_err(|e| ctx.err(obj, e))?;
    let namespace = obj.namespace.clone();
    let route_name = obj.name.clone();
    let doc = obj.doc_ref();
    for (ri, rule) in rules.iter().enumerate() {
        let rule_name = rule.opt_str("name").map_err(|e| ctx.err(&ctx.objs[i], e))?;
        // The most specific BackendTrafficPolicy with a retry (the first of equals, in file order).
        let policy = policies
            .iter()
            .enumerate()
            .map(|(pi, p)| (pi, p.specificity(&namespace, &route_name, rule_name)))
            .filter(|(_, s)| *s > 0)
            .fold(None, |best: Option<(usize, u8)>, (pi, s)| match best {
                Some((_, b)) if b >= s => best,
                _ => Some((pi, s)),
            })
            .map(|(pi, _)| pi);
        if let Some(pi) = policy {
            if !out.used_policies.contains(&pi) {
                out.used_policies.push(pi);
            }
        }
        let retry = policy.map(|pi| &policies[pi]);
        let conv = convert_rule(rule, ri, &route_name, &namespace, i, retry.map(|p| &p.retry), out, &mut notes)
            .map_err(|e| ctx.err(&ctx.objs[i], e))?;
        for (field, conditions, json) in conv {
            let retry_doc = retry.map(|p| p.doc.clone());
            out.rules.push(RoutedRule { json, doc: doc.clone(), field, retry_doc, conditions });
        }
    }
    for (field, what) in notes {
        ctx.warn(i, &field, &what);
    }
    Ok(())
}

/// One plugin rule per match: (field, number of conditions, rule JSON).
#[allow(clippy::too_many_arguments)]
fn convert_rule(
    rule: &At<'_>,
    ri: usize,
    route_name: &str,
    namespace: &str,
    referrer: usize,
    retry: Option<&Json>,
    out: &mut Routed,
    notes: &mut Vec<(String, String)>,
) -> NResult<Vec<(String, usize, Json)>> {
    for field in rule.unknown_keys(&[
        "matches",
        "backendRefs",
        "timeouts",
        "name",
        "modelsOwnedBy",
        "modelsCreatedAt",
        "streamIdleTimeout",
    ]) {
        notes.push((field, "not supported by llmgw; ignored".into()));
    }
    for key in ["modelsOwnedBy", "modelsCreatedAt", "streamIdleTimeout"] {
        if let Some(f) = rule.get(key) {
            notes.push((f.field().into(), "not supported by llmgw; ignored".into()));
        }
    }
    let timeout = match rule.get("timeouts") {
        None => None,
        Some(t) => {
            let v = t.get("request").or_else(|| t.get("backendRequest"));
            match v {
                None => None,
                Some(v) => Some(duration::parse(v.str()?).map_err(|e| v.err(e))?),
            }
        }
    };
    let refs = rule.req("backendRefs")?.items()?;
    if refs.is_empty() {
        return Err(rule.req("backendRefs")?.err("at least one backend is required"));
    }
    let mut backends = Vec::with_capacity(refs.len());
    for r in &refs {
        let name = variant(r, namespace, referrer, timeout, out, notes)?;
        let weight = match r.get("weight") {
            None => 1,
            Some(w) => w.u64()?,
        };
        let mut backend = json!({"name": name, "weight": weight});
        // Applied by the filter over the AIServiceBackend's own, winning where both name a field.
        if let Some(m) = r.get("bodyMutation") {
            backend["body_mutation"] = body_mutation(&m)?;
        }
        // Envoy priority levels: the backends of the lowest level serve, the next level's take over
        // when they fail (the rule becomes a fallback rule: Envoy retries on the next level).
        if let Some(p) = r.get("priority") {
            match p.u64()? {
                0 => {}
                n if n <= u64::from(llmgw_filter::config::MAX_PRIORITY) => backend["priority"] = json!(n),
                n => {
                    return Err(p.err(format!(
                        "llmgw supports priorities 0 to {}, not {n}",
                        llmgw_filter::config::MAX_PRIORITY
                    )))
                }
            }
        }
        backends.push(backend);
    }
    let rule_name = match rule.opt_str("name")? {
        Some(n) => format!("{route_name}/{n}"),
        None => format!("{route_name}/rules[{ri}]"),
    };
    let matches = rule.list("matches")?;
    if matches.is_empty() {
        let mut json = json!({"name": rule_name, "backends": backends});
        if let Some(r) = retry {
            json["retry"] = r.clone();
        }
        return Ok(vec![(rule.field().to_string(), 0, json)]);
    }
    let mut rules = Vec::with_capacity(matches.len());
    for (mi, m) in matches.iter().enumerate() {
        for field in m.unknown_keys(&["headers"]) {
            notes.push((field, "only header matches are supported (as in the AIGatewayRoute CRD); ignored".into()));
        }
        let (conditions, cond) = conditions(m)?;
        let name = if matches.len() > 1 { format!("{rule_name}/matches[{mi}]") } else { rule_name.clone() };
        let mut json = json!({"name": name});
        if !cond.is_empty() {
            json["match"] = Json::Object(cond);
        }
        json["backends"] = Json::Array(backends.clone());
        if let Some(r) = retry {
            json["retry"] = r.clone();
        }
        rules.push((m.field().to_string(), conditions, json));
    }
    Ok(rules)
}

/// The plugin `match` of one AIGatewayRouteMatch, and how many conditions it has.
fn conditions(m: &At<'_>) -> NResult<(usize, Map<String, Json>)> {
    let mut cond = Map::new();
    let mut headers = Vec::new();
    let mut count = 0;
    for h in m.list("headers")? {
        let name = h.req_str("name")?;
        let value = h.req_str("value")?;
        let kind = match h.opt_str("type")?.unwrap_or("Exact") {
            "Exact" => "exact",
            "RegularExpression" => "regex",
            other => return Err(h.req("type")?.err(format!("unknown type {other:?}; use Exact or RegularExpression"))),
        };
        count += 1;
        if name.eq_ignore_ascii_case(MODEL_HEADER) {
            if cond.contains_key("model") {
                return Err(h.err(format!("{MODEL_HEADER} is matched twice in one match")));
            }
            // `.*` matches every model: no condition needed (and no regex per request).
            if kind == "regex" && value == ".*" {
                count -= 1;
                continue;
            }
            cond.insert("model".into(), json!({kind: value}));
        } else {
            headers.push(json!({"name": name, kind: value}));
        }
    }
    if !headers.is_empty() {
        cond.insert("headers".into(), Json::Array(headers));
    }
    Ok((count, cond))
}

/// Registers (or finds) the plugin backend for one backendRef; returns its name.
fn variant(
    r: &At<'_>,
    route_namespace: &str,
    referrer: usize,
    timeout: Option<Duration>,
    out: &mut Routed,
    notes: &mut Vec<(String, String)>,
) -> NResult<String> {
    for field in r.unknown_keys(&[
        "name",
        "namespace",
        "group",
        "kind",
        "weight",
        "priority",
        "modelNameOverride",
        "modelName",
        "headerMutation",
        "bodyMutation",
    ]) {
        notes.push((field, "not supported by llmgw; ignored".into()));
    }
    let kind = r.opt_str("kind")?.unwrap_or("AIServiceBackend");
    if kind != "AIServiceBackend" {
        return Err(r.req("kind")?.err(format!(
            "{kind} backends are not supported by llmgw run (it needs Kubernetes); reference an AIServiceBackend"
        )));
    }
    let service = r.req_str("name")?.to_string();
    let namespace = r.opt_str("namespace")?.filter(|n| !n.is_empty()).unwrap_or(route_namespace).to_string();
    let model_override = r.opt_str("modelNameOverride")?.or(r.opt_str("modelName")?).map(str::to_string);
    let headers = r.get("headerMutation").map(|h| header_mutation(&h)).transpose()?;
    if let Some(v) = out.variants.iter_mut().find(|v| {
        v.namespace == namespace && v.service == service && v.model_override == model_override && v.headers == headers
    }) {
        v.timeout = max_timeout(v.timeout, timeout);
        return Ok(v.name.clone());
    }
    let mut name = match (&model_override, &headers) {
        (None, None) => cluster_safe(&service),
        (Some(m), None) => format!("{}-{}", cluster_safe(&service), cluster_safe(m)),
        _ => cluster_safe(&service),
    };
    if out.variants.iter().any(|v| v.name == name && v.namespace != namespace) {
        name = format!("{}-{name}", cluster_safe(&namespace));
    }
    let base = name.clone();
    let mut n = 2;
    while out.variants.iter().any(|v| v.name == name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    out.variants.push(Variant {
        name: name.clone(),
        namespace,
        service,
        model_override,
        headers,
        timeout,
        referrer,
        field: r.field().to_string(),
    });
    Ok(name)
}

fn max_timeout(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// `bodyMutation` (`set: [{path, value}]` with `value` JSON text, `remove: [path]`) as the plugin's
/// `body_mutation` (`set: {path: value}`, `remove`); the filter checks names and limits.
pub(crate) fn body_mutation(at: &At<'_>) -> NResult<Json> {
    if let Some(field) = at.unknown_keys(&["set", "remove"]).into_iter().next() {
        return Err(FieldError { field, reason: "unknown field; bodyMutation knows set and remove".into() });
    }
    let mut set = Map::new();
    for s in at.list("set")? {
        let path = s.req_str("path")?;
        let value = s.req("value")?;
        let parsed: Json = serde_json::from_str(value.str()?)
            .map_err(|e| value.err(format!("must be JSON text (a string is written \"\\\"scale\\\"\"): {e}")))?;
        if set.insert(path.to_string(), parsed).is_some() {
            return Err(s.req("path")?.err(format!("{path:?} is set twice")));
        }
    }
    let mut out = Map::new();
    if !set.is_empty() {
        out.insert("set".into(), Json::Object(set));
    }
    let remove =
        at.list("remove")?.iter().map(|r| r.str().map(|s| Json::String(s.to_string()))).collect::<NResult<Vec<_>>>()?;
    if !remove.is_empty() {
        out.insert("remove".into(), Json::Array(remove));
    }
    Ok(Json::Object(out))
}

/// Gateway API HTTPHeaderFilter subset: `set: [{name, value}]`, `remove: [name]`.
pub(crate) fn header_mutation(at: &At<'_>) -> NResult<HeaderMutation> {
    if let Some(field) = at.unknown_keys(&["set", "remove", "add"]).into_iter().next() {
        return Err(FieldError { field, reason: "unknown field; headerMutation knows set and remove".into() });
    }
    if let Some(add) = at.get("add") {
        return Err(add.err("`add` is not supported by llmgw; use `set`"));
    }
    let mut m = HeaderMutation::default();
    for s in at.list("set")? {
        m.set.push((s.req_str("name")?.to_string(), s.req_str("value")?.to_string()));
    }
    for r in at.list("remove")? {
        m.remove.push(r.str()?.to_string());
    }
    Ok(m)
}
