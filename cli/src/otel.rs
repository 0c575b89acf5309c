//! OpenTelemetry tracing from the environment, as `aigw run` reads it: the `OTEL_*` exporter
//! variables and OpenInference's `OPENINFERENCE_HIDE_*` become the plugin configuration's
//! `tracing` section and a cluster for the collector (OTLP/HTTP protobuf or JSON, `POST /v1/traces`);
//! `AI_GATEWAY_TRACING_SEMCONV=gen_ai` switches the spans to OpenTelemetry's GenAI conventions.

use serde_json::{json, Map, Value};

use crate::model::{Env, Gateway, Upstream};
use crate::url::BaseUrl;

/// The collector's Envoy cluster.
pub const COLLECTOR_CLUSTER: &str = "llmgw-otel-collector";

/// What tracing the environment asks for: the plugin's `tracing` section and the collector.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    pub plugin: Value,
    pub collector: Option<Upstream>,
}

fn flag(env: &dyn Env, name: &str) -> bool {
    env.var(name).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn number(env: &dyn Env, name: &str) -> Result<Option<u64>, String> {
    match env.var(name).filter(|v| !v.trim().is_empty()) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| format!("{name}={v:?}: expected a whole number")),
    }
}

/// `OTEL_RESOURCE_ATTRIBUTES`: `key=value,...`, values percent-decoded.
fn resource_attributes(text: &str) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) =
            pair.split_once('=').ok_or_else(|| format!("OTEL_RESOURCE_ATTRIBUTES: {pair:?} is not key=value"))?;
        out.insert(key.trim().to_string(), json!(percent_decode(value.trim())));
    }
    Ok(out)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex =
            (bytes[i] == b'%').then(|| text.get(i + 1..i + 3)).flatten().and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `header:name,...` (`OTEL_AIGW_*_REQUEST_HEADER_ATTRIBUTES`) as a `{header: name}` object.
fn header_mapping(env: &dyn Env, var: &str) -> Result<Option<Value>, String> {
    let Some(text) = env.var(var).filter(|v| !v.trim().is_empty()) else { return Ok(None) };
    let mut out = Map::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once(':').map(|(h, n)| (h.trim(), n.trim())) {
            Some((header, name)) if !header.is_empty() && !name.is_empty() => {
                out.insert(header.to_string(), json!(name));
            }
            _ => return Err(format!("{var}: {pair:?} is not header:name")),
        }
    }
    Ok(Some(Value::Object(out)))
}

/// `OTEL_AIGW_METRICS_REQUEST_HEADER_ATTRIBUTES`: request headers as labels of the GenAI metrics
/// (the plugin's `metrics_request_header_labels`; the bootstrap extracts them as stats tags).
pub fn metric_labels(env: &dyn Env) -> Result<Option<Value>, String> {
    header_mapping(env, METRICS_HEADERS_VAR)
}

pub const SPAN_HEADERS_VAR: &str = "OTEL_AIGW_SPAN_REQUEST_HEADER_ATTRIBUTES";
pub const METRICS_HEADERS_VAR: &str = "OTEL_AIGW_METRICS_REQUEST_HEADER_ATTRIBUTES";

/// Tracing as the environment configures it; `None` when it asks for none (no endpoint, or
/// `OTEL_TRACES_EXPORTER=none`).
pub fn from_env(env: &dyn Env, warnings: &mut Vec<String>) -> Result<Option<Tracing>, String> {
    let exporter = env.var("OTEL_TRACES_EXPORTER").map(|e| e.trim().to_ascii_lowercase()).unwrap_or_default();
    let traces_endpoint = env.var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").filter(|v| !v.trim().is_empty());
    let endpoint = env.var("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|v| !v.trim().is_empty());
    let mut plugin = Map::new();
    let collector = match exporter.as_str() {
        "none" => return Ok(None),
        "console" => {
            plugin.insert("exporter".into(), json!("console"));
            None
        }
        "" | "otlp" => {
            // The traces endpoint is used as it is; the general one gets `/v1/traces` appended.
            let (url, path) = match (&traces_endpoint, &endpoint) {
                (Some(t), _) => {
                    let url = BaseUrl::parse(t).map_err(|e| format!("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: {e}"))?;
                    let path = if url.path.is_empty() { "/".to_string() } else { url.path.clone() };
                    (url, path)
                }
                (None, Some(e)) => {
                    let url = BaseUrl::parse(e).map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}"))?;
                    let path = format!("{}/v1/traces", url.path);
                    (url, path)
                }
                (None, None) => return Ok(None),
            };
            plugin.insert("cluster".into(), json!(COLLECTOR_CLUSTER));
            plugin.insert("authority".into(), json!(url.authority()));
            plugin.insert("path".into(), json!(path));
            Some(Upstream::from_url(COLLECTOR_CLUSTER, &url))
        }
        other => return Err(format!("OTEL_TRACES_EXPORTER={other:?}: expected otlp, console or none")),
    };
    // The traces variable wins over the general one; http/protobuf is the default.
    let protocol = ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"]
        .into_iter()
        .find_map(|var| Some((var, env.var(var).filter(|p| !p.trim().is_empty())?)));
    if let Some((var, p)) = protocol {
        match p.trim() {
            "http/protobuf" | "http/json" => {
                if collector.is_some() {
                    plugin.insert("protocol".into(), json!(p.trim()));
                }
            }
            other => {
                return Err(format!(
                    "{var}={other:?}: the gateway exports spans over OTLP/HTTP: use http/protobuf (the default) or http/json"
                ))
            }
        }
    }
    match env.var("AI_GATEWAY_TRACING_SEMCONV").as_deref().map(str::trim) {
        None | Some("") => {}
        Some(s @ ("openinference" | "gen_ai")) => {
            plugin.insert("semconv".into(), json!(s));
        }
        Some(other) => {
            return Err(format!("AI_GATEWAY_TRACING_SEMCONV={other:?}: expected openinference or gen_ai"));
        }
    }
    for var in ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"] {
        if env.var(var).is_some_and(|h| !h.trim().is_empty()) {
            warnings.push(format!("{var} is not supported: the gateway's exports carry no extra headers"));
        }
    }
    if let Some(name) = env.var("OTEL_SERVICE_NAME").filter(|n| !n.trim().is_empty()) {
        plugin.insert("service_name".into(), json!(name.trim()));
    }
    if let Some(attributes) = env.var("OTEL_RESOURCE_ATTRIBUTES") {
        let attributes = resource_attributes(&attributes)?;
        if !plugin.contains_key("service_name") {
            if let Some(name) = attributes.get("service.name") {
                plugin.insert("service_name".into(), name.clone());
            }
        }
        if !attributes.is_empty() {
            plugin.insert("resource_attributes".into(), Value::Object(attributes));
        }
    }
    for (var, field) in [
        ("OTEL_BSP_SCHEDULE_DELAY", "schedule_delay_ms"),
        ("OTEL_BSP_EXPORT_TIMEOUT", "export_timeout_ms"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "max_queue_size"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "max_export_batch_size"),
    ] {
        if let Some(n) = number(env, var)? {
            plugin.insert(field.into(), json!(n));
        }
    }
    for (var, field) in [
        ("OPENINFERENCE_HIDE_INPUTS", "hide_inputs"),
        ("OPENINFERENCE_HIDE_OUTPUTS", "hide_outputs"),
        ("OPENINFERENCE_HIDE_EMBEDDINGS_TEXT", "hide_embeddings_text"),
        ("OPENINFERENCE_HIDE_EMBEDDINGS_VECTORS", "hide_embeddings_vectors"),
    ] {
        if flag(env, var) {
            plugin.insert(field.into(), json!(true));
        }
    }
    if let Some(mapping) = header_mapping(env, SPAN_HEADERS_VAR)? {
        plugin.insert("request_header_attributes".into(), mapping);
    }
    Ok(Some(Tracing { plugin: Value::Object(plugin), collector }))
}

/// Adds the environment's tracing to the gateway (its plugin configuration and collector).
pub fn apply(g: &mut Gateway, env: &dyn Env) -> Result<(), String> {
    let mut warnings = Vec::new();
    let tracing = from_env(env, &mut warnings)?;
    g.warnings.extend(warnings);
    if let Some(t) = tracing {
        g.plugin.insert("tracing".into(), t.plugin);
        g.collector = t.collector;
    } else if env.var(SPAN_HEADERS_VAR).is_some_and(|v| !v.trim().is_empty()) {
        g.warnings.push(format!("{SPAN_HEADERS_VAR} is ignored: no OTEL_EXPORTER_OTLP_*ENDPOINT, no spans"));
    }
    if let Some(metrics) = metric_labels(env)? {
        g.plugin.insert("metrics_request_header_labels".into(), metrics);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MapEnv;

    fn env(pairs: &[(&str, &str)]) -> MapEnv {
        MapEnv(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn the_otel_variables_become_the_tracing_section_and_a_collector() {
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://phoenix:6006"),
            ("OTEL_SERVICE_NAME", "gw"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,team=a%2Cb"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "10"),
            ("OPENINFERENCE_HIDE_INPUTS", "TRUE"),
            ("OPENINFERENCE_HIDE_OUTPUTS", "false"),
        ]);
        let mut warnings = Vec::new();
        let t = from_env(&e, &mut warnings).unwrap().unwrap();
        assert_eq!(
            t.plugin,
            json!({"cluster": COLLECTOR_CLUSTER, "authority": "phoenix:6006", "path": "/v1/traces", "service_name": "gw",
                   "resource_attributes": {"deployment.environment": "prod", "team": "a,b"},
                   "schedule_delay_ms": 200, "max_queue_size": 10, "hide_inputs": true})
        );
        let collector = t.collector.unwrap();
        assert_eq!((collector.endpoints[0].host.as_str(), collector.endpoints[0].port), ("phoenix", 6006));
        assert!(warnings.is_empty());

        let e = env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://otel.example.com/custom/traces")]);
        let t = from_env(&e, &mut warnings).unwrap().unwrap();
        assert_eq!(t.plugin["path"], "/custom/traces");
        assert!(t.collector.unwrap().tls.is_some());
    }

    #[test]
    fn header_mappings_become_span_attributes_and_metric_labels() {
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://phoenix:6006"),
            (SPAN_HEADERS_VAR, "x-session-id:session.id, x-user-id:user.id"),
            (METRICS_HEADERS_VAR, "x-team-id:team.id"),
        ]);
        let mut g = crate::model::Gateway::new(crate::model::Source::Demo);
        apply(&mut g, &e).unwrap();
        assert_eq!(
            g.plugin["tracing"]["request_header_attributes"],
            json!({"x-session-id": "session.id", "x-user-id": "user.id"})
        );
        assert_eq!(g.plugin["metrics_request_header_labels"], json!({"x-team-id": "team.id"}));
        let bad = env(&[(METRICS_HEADERS_VAR, "x-team-id")]);
        assert!(apply(&mut g, &bad).unwrap_err().contains("header:name"));
    }

    #[test]
    fn no_endpoint_none_and_console() {
        let mut w = Vec::new();
        assert_eq!(from_env(&env(&[]), &mut w).unwrap(), None);
        let none = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318"), ("OTEL_TRACES_EXPORTER", "none")]);
        assert_eq!(from_env(&none, &mut w).unwrap(), None);
        let console = from_env(&env(&[("OTEL_TRACES_EXPORTER", "console")]), &mut w).unwrap().unwrap();
        assert_eq!((console.plugin, console.collector), (json!({"exporter": "console"}), None));
        assert!(from_env(&env(&[("OTEL_TRACES_EXPORTER", "zipkin")]), &mut w).is_err());
        let bad = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318"), ("OTEL_BSP_SCHEDULE_DELAY", "soon")]);
        assert!(from_env(&bad, &mut w).unwrap_err().contains("OTEL_BSP_SCHEDULE_DELAY"));
        let grpc = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4317"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]);
        let err = from_env(&grpc, &mut w).unwrap_err();
        assert!(err.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && err.contains("http/protobuf"), "{err}");
    }

    #[test]
    fn protocol_and_semantic_conventions() {
        let mut w = Vec::new();
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://phoenix:6006");
        let plugin = |pairs: &[(&str, &str)], w: &mut Vec<String>| from_env(&env(pairs), w).unwrap().unwrap().plugin;
        assert_eq!(plugin(&[base], &mut w).get("protocol"), None, "the filter's default: http/protobuf");
        assert_eq!(plugin(&[base, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")], &mut w)["protocol"], "http/json");
        let both = [
            base,
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ];
        assert_eq!(plugin(&both, &mut w)["protocol"], "http/protobuf", "the traces variable wins");
        let grpc = [base, ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")];
        assert!(from_env(&env(&grpc), &mut w).unwrap_err().contains("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=\"grpc\""));
        assert_eq!(plugin(&[base, ("AI_GATEWAY_TRACING_SEMCONV", "gen_ai")], &mut w)["semconv"], "gen_ai");
        assert!(from_env(&env(&[base, ("AI_GATEWAY_TRACING_SEMCONV", "otel")]), &mut w).is_err());
        let console =
            plugin(&[("OTEL_TRACES_EXPORTER", "console"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")], &mut w);
        assert_eq!(console, json!({"exporter": "console"}), "the console logs JSON whatever the protocol");
        assert!(w.is_empty(), "{w:?}");
    }
}
