//! llmgw's own format: the plugin configuration (same fields, same meaning — see
//! `filter/README.md`) plus where each backend lives:
//!
//! ```yaml
//! port: 1975                 # optional; --port wins
//! timeout: 300s              # optional default route timeout for every backend
//! buffer_limit: 50Mi         # optional per-connection buffer
//! backends:
//!   - name: openai
//!     url: https://api.openai.com/v1     # scheme -> TLS, host, port; the path is the prefix
//!     schema: OpenAI
//!     auth: {bearer_env: OPENAI_API_KEY}
//!   - name: vllm
//!     endpoints: ["10.0.0.5:8000", "10.0.0.6:8000"]   # or several host:port, balanced
//!     schema: OpenAI
//!     timeout: 600s
//!     picker: {algorithm: prefix-cache}   # optional: the filter picks the endpoint (picker.rs)
//! consumers:               # client authentication (see `consumers.rs`); not the filter's
//!   - {name: team-a, api_keys_env: TEAM_A_KEYS}
//! budgets:                 # per consumer (see `budgets.rs`); written into the plugin config
//!   - {consumer: team-a, tokens: 2000000, per: day}
//! budget_store: {redis: "redis://127.0.0.1:6379"}   # optional: budgets shared by many gateways
//! rules: [...]               # as in the plugin config, fallback included:
//!   # - backends: [{name: openai}, {name: vllm, priority: 1, model_override: llama-3.1-8b}]
//!   #   retry: {attempts: 2, first_byte_timeout: 10s}
//! ```
//!
//! Everything that is not a connection field goes to the filter unchanged, so the filter's own
//! validation checks it, with the same field paths.

use serde_json::{Map, Value as Json};
use serde_yaml_ng::Value;

use super::node::{quantity_bytes, At, FieldError, NResult};
use crate::diag::ConfigError;
use crate::duration;
use crate::model::{Ca, Endpoint, Format, Gateway, Source, Tls, Upstream};
use crate::url::{self, BaseUrl};

const BACKEND_OWN: &[&str] = &["url", "endpoints", "tls", "timeout"];

pub fn convert(name: &str, doc: &Value) -> Result<Gateway, ConfigError> {
    convert_doc(name, doc).map_err(|e| ConfigError::new(name, e.field, e.reason))
}

fn convert_doc(name: &str, doc: &Value) -> NResult<Gateway> {
    let root = At::root(doc);
    let mut g = Gateway::new(Source::File { path: name.to_string(), format: Format::Llmgw });
    let mut default_timeout = None;
    let mut budgets = None;
    for (key, at) in root.entries()? {
        match key.as_str() {
            "port" => g.port = Some(at.port()?),
            "buffer_limit" => g.buffer_limit = Some(quantity_bytes(&at)?),
            "timeout" => default_timeout = Some(duration::parse(at.str()?).map_err(|e| at.err(e))?),
            "backends" => {}
            "consumers" => g.consumers = crate::consumers::parse(&at)?,
            // Parsed once every consumer is known (a budget names its consumer).
            "budgets" => budgets = Some(at),
            "budget_store" => g.budget_store = Some(crate::budgets::parse_store(&at)?),
            _ => {
                g.plugin.insert(key.clone(), to_json(&at)?);
            }
        }
    }
    if let Some(at) = budgets {
        g.budgets = crate::budgets::parse(&at, &g.consumers)?;
    }
    if g.budget_store.is_some() && g.budgets.is_empty() {
        return Err(root.req("budget_store")?.err("a budget store without `budgets:` counts nothing"));
    }
    let backends = root.req("backends")?.items()?;
    let mut plugin_backends = Vec::with_capacity(backends.len());
    for b in &backends {
        let (plugin, mut upstream) = backend(b)?;
        upstream.timeout = upstream.timeout.or(default_timeout);
        plugin_backends.push(Json::Object(plugin));
        g.upstreams.push(upstream);
    }
    // Keep the user's key order: backends first, as in the plugin README.
    let mut plugin = Map::new();
    plugin.insert("backends".into(), Json::Array(plugin_backends));
    plugin.extend(std::mem::take(&mut g.plugin));
    g.plugin = plugin;
    Ok(g)
}

fn backend(b: &At<'_>) -> NResult<(Map<String, Json>, Upstream)> {
    let name = b.req_str("name")?.to_string();
    let mut plugin = Map::new();
    for (key, at) in b.entries()? {
        if !BACKEND_OWN.contains(&key.as_str()) {
            plugin.insert(key, to_json(&at)?);
        }
    }
    let mut upstream = match (b.get("url"), b.get("endpoints")) {
        (Some(u), None) => {
            let parsed = BaseUrl::parse(u.str()?).map_err(|e| u.err(e))?;
            if !parsed.path.is_empty() && !plugin.contains_key("prefix") {
                plugin.insert("prefix".into(), Json::String(parsed.path.clone()));
            }
            Upstream::from_url(&name, &parsed)
        }
        (None, Some(list)) => {
            let endpoints = endpoints(&list)?;
            let host_rewrite = match endpoints.as_slice() {
                [one] => Some(url::authority(&one.host, one.port, false)),
                _ => None,
            };
            Upstream { name: name.clone(), endpoints, tls: None, host_rewrite, timeout: None, lb_policy: None }
        }
        (Some(_), Some(_)) => return Err(b.err("give either `url` or `endpoints`, not both")),
        (None, None) => {
            return Err(
                b.err("each backend needs `url` (e.g. https://api.openai.com/v1) or `endpoints` (host:port list)")
            )
        }
    };
    if let Some(t) = b.get("tls") {
        upstream.tls = tls(&t, &upstream)?;
        if let [one] = upstream.endpoints.as_slice() {
            upstream.host_rewrite = Some(url::authority(&one.host, one.port, upstream.tls.is_some()));
        }
    }
    if let Some(t) = b.get("timeout") {
        upstream.timeout = Some(duration::parse(t.str()?).map_err(|e| t.err(e))?);
    }
    if let Some(p) = b.get("picker") {
        picker(&p, &mut plugin, &mut upstream)?;
    }
    let is_aws = plugin.get("schema").and_then(Json::as_str).is_some_and(|s| s.starts_with("AWS"));
    if is_aws && !plugin.contains_key("host") {
        if let Some(host) = &upstream.host_rewrite {
            plugin.insert("host".into(), Json::String(host.clone()));
        }
    }
    Ok((plugin, upstream))
}

/// `picker: {algorithm, ...}` on a backend with `endpoints`: the filter picks among them, so the
/// plugin's picker lists them and the cluster connects where the filter says (override-host).
fn picker(p: &At<'_>, plugin: &mut Map<String, Json>, upstream: &mut Upstream) -> NResult<()> {
    if p.get("endpoints").is_some() {
        return Err(p.err("the picker chooses among the backend's `endpoints`; list them there, once"));
    }
    let addresses = picker_endpoints(&upstream.endpoints).map_err(|e| p.err(e))?;
    if let Some(Json::Object(picker)) = plugin.get_mut("picker") {
        picker.insert("endpoints".into(), Json::Array(addresses.into_iter().map(Json::String).collect()));
    }
    // `pd`'s prefill endpoints: the cluster holds every endpoint the filter may name.
    if let Some(prefill) = p.get("prefill_endpoints") {
        for e in endpoints(&prefill)? {
            if !upstream.endpoints.contains(&e) {
                upstream.endpoints.push(e);
            }
        }
    }
    upstream.lb_policy = Some(crate::model::FILTER_PICKS.to_string());
    Ok(())
}

/// The endpoints as the filter's picker takes them: `ip:port` (Envoy's override-host policy
/// matches hosts by address).
pub fn picker_endpoints(endpoints: &[Endpoint]) -> Result<Vec<String>, String> {
    endpoints
        .iter()
        .map(|e| match e.host.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(std::net::SocketAddr::new(ip, e.port).to_string()),
            Err(_) => Err(format!(
                "{}:{}: the picker needs ip:port endpoints (Envoy connects to the address it picks)",
                e.host, e.port
            )),
        })
        .collect()
}

/// `host:port` strings (AIBrix style); a port is required.
pub fn endpoints(list: &At<'_>) -> NResult<Vec<Endpoint>> {
    let items = list.items()?;
    if items.is_empty() {
        return Err(list.err("at least one host:port endpoint is required"));
    }
    items.iter().map(endpoint).collect()
}

pub fn endpoint(at: &At<'_>) -> NResult<Endpoint> {
    let text = at.str()?.trim();
    let authority = text.strip_prefix("http://").unwrap_or(text).trim_end_matches('/');
    match url::split_host_port(authority) {
        Ok((host, Some(port))) => Ok(Endpoint { host, port }),
        Ok((_, None)) => Err(at.err(format!("{text:?}: give host:port, e.g. 127.0.0.1:8000"))),
        Err(e) => Err(at.err(format!("{text:?}: {e}"))),
    }
}

/// `tls: true|false` or `tls: {sni, ca_file, insecure_skip_verify}`.
fn tls(at: &At<'_>, upstream: &Upstream) -> NResult<Option<Tls>> {
    let default_sni = upstream.endpoints.first().map(|e| e.host.clone()).unwrap_or_default();
    if let Value::Bool(on) = at.value {
        return Ok(on.then(|| upstream.tls.clone().unwrap_or(Tls::to(&default_sni))));
    }
    if let Some(field) = at.unknown_keys(&["sni", "ca_file", "insecure_skip_verify"]).into_iter().next() {
        return Err(FieldError { field, reason: "unknown field; tls knows sni, ca_file, insecure_skip_verify".into() });
    }
    Ok(Some(Tls {
        sni: at.opt_str("sni")?.map_or(default_sni, str::to_string),
        ca: at.opt_str("ca_file")?.map_or(Ca::System, |f| Ca::File(f.to_string())),
        sans: Vec::new(),
        insecure_skip_verify: at.get("insecure_skip_verify").map(|v| v.bool()).transpose()?.unwrap_or(false),
    }))
}

fn to_json(at: &At<'_>) -> NResult<Json> {
    serde_json::to_value(at.value).map_err(|e| at.err(format!("cannot be represented as JSON: {e}")))
}
