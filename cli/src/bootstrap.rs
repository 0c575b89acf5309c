//! The Envoy bootstrap for a gateway. Same shape as `envoy-configs/local/envoy.yaml` (stats tags
//! that turn the filter's in-name labels into Prometheus labels, GenAI histogram buckets, JSON
//! access log on stdout, the wasm filter with FAIL_RELOAD and `allow_on_headers_stop_iteration`),
//! with one cluster per backend and one route per backend: the filter names the backend in
//! `x-llmgw-backend`, and each backend's route sets its Host header and timeout.
//!
//! A fallback rule (see [`crate::fallback`]) gets a route on `x-llmgw-rule: <r>` to its own
//! cluster `llmgw-rule-<r>`, which holds every backend of the rule as endpoints (one priority
//! level per `priority`) and runs the filter again as an upstream HTTP filter: Envoy retries on
//! the next priority, and the upstream filter translates each attempt for the backend it reaches.

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::duration::to_envoy;
use crate::fallback::{self, RULE_HEADER};
use crate::model::{Ca, Endpoint, Gateway, Tls, Upstream, DEFAULT_BUFFER_LIMIT, DEFAULT_TIMEOUT};
use crate::url::is_ip;
use crate::validate::plugin_json;

mod auth;
pub(crate) use auth::CONSUMER_METADATA_KEY;

/// Request header the admin's health check sends through the listener; excluded from the access log.
pub const PROBE_HEADER: &str = "x-llmgw-health-probe";
/// The Wasm plugin's name: Envoy's stats for it are `wasm.<name>.*` (`vm_reload_success`, ...).
pub const PLUGIN_NAME: &str = "llmgw";
/// The name of the filter's upstream copy (the fallback clusters' HTTP filter).
pub const UPSTREAM_PLUGIN_NAME: &str = "llmgw-upstream";
const BACKEND_HEADER: &str = llmgw_filter::config::BACKEND_HEADER;
const MODEL_HEADER: &str = llmgw_filter::config::MODEL_HEADER;
const DESTINATION_HEADER: &str = llmgw_filter::picker::DESTINATION_HEADER;
/// Dynamic metadata namespace the gateway's headers are copied to, for the access log.
pub(crate) const METADATA_NAMESPACE: &str = "io.llmgw";
const CONNECT_TIMEOUT: &str = "5s";
/// A fallback cluster's overprovisioning factor (percent): 1000×, so that one healthy host keeps
/// its priority level (and its locality) at full load.
const FALLBACK_OVERPROVISIONING: u32 = 100_000;
/// The filter's default `max_request_body_bytes`: a fallback route buffers this much for replays.
const DEFAULT_MAX_REQUEST_BODY: u64 = 32 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Options {
    pub address: String,
    pub port: u16,
    /// Envoy's own admin (`/stats/prometheus`, `/ready`); port 0 = any (run), written to a file.
    pub admin_address: String,
    pub admin_port: u16,
    pub wasm: String,
    /// The system CA bundle, for `Ca::System`.
    pub ca_bundle: String,
    /// The loopback port of the `llmgw ratelimit` that counts budgets when there is a
    /// `budget_store` (`llmgw run` starts it).
    pub rls_port: u16,
}

/// `rls_port` when nothing starts the service (`llmgw render`): `llmgw ratelimit`'s default.
pub const DEFAULT_RLS_PORT: u16 = 8081;

pub fn render(g: &Gateway, o: &Options) -> Value {
    let buffer = g.buffer_limit.unwrap_or(DEFAULT_BUFFER_LIMIT);
    let fallbacks = fallback::rules(g);
    let mut clusters: Vec<Value> = g.upstreams.iter().map(|u| cluster(u, o, buffer)).collect();
    clusters.extend(auth::jwks_upstreams(g).iter().map(|u| cluster(u, o, buffer)));
    if !fallbacks.is_empty() {
        let upstream_filter = wasm_filter(g, o, UPSTREAM_PLUGIN_NAME, &fallback::upstream_plugin(g, &fallbacks));
        clusters.extend(fallbacks.iter().map(|r| rule_cluster(g, r, o, buffer, &upstream_filter)));
    }
    if g.budget_store.is_some() && !g.budgets.is_empty() {
        clusters.push(crate::budgets::rls_cluster(o.rls_port));
    }
    if let Some(collector) = &g.collector {
        clusters.push(cluster(collector, o, buffer));
    }
    json!({
        "node": {"id": "llmgw", "cluster": "llmgw"},
        "admin": {"address": socket(&o.admin_address, o.admin_port)},
        "stats_config": stats_config(g),
        // Envoy warns at start without a connection limit; the reference bootstrap's value.
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                "max_active_downstream_connections": 10000,
            },
        }]},
        "static_resources": {
            "listeners": [listener(g, o, buffer, &fallbacks)],
            "clusters": clusters,
        },
    })
}

/// YAML text with a header saying where it came from. The plugin configuration inside is JSON,
/// and names credentials by environment variable only.
pub fn to_yaml(g: &Gateway, bootstrap: &Value) -> String {
    let body = serde_yaml_ng::to_string(bootstrap).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
    format!(
        "# Envoy bootstrap rendered by `llmgw` from {} ({} backend(s), {} rule(s)).\n# Run: envoy -c THIS_FILE\n{body}",
        g.source.name(),
        g.upstreams.len(),
        g.rule_count()
    )
}

fn socket(address: &str, port: u16) -> Value {
    json!({"socket_address": {"address": address, "port_value": port}})
}

/// The labels of `metrics_request_header_labels`, as the filter names them in its stats.
pub fn header_labels(g: &Gateway) -> Vec<String> {
    let labels = g.plugin.get("metrics_request_header_labels").and_then(Value::as_object);
    labels
        .into_iter()
        .flat_map(|m| m.values().filter_map(Value::as_str).map(llmgw_filter::metrics::label_name))
        .collect()
}

fn stats_config(g: &Gateway) -> Value {
    let header_labels = header_labels(g);
    let tags: Vec<Value> = llmgw_filter::metrics::LABELS
        .iter()
        .copied()
        .chain(header_labels.iter().map(String::as_str))
        .map(|l| json!({"tag_name": l, "regex": format!(r"(\.?{l}=\.=([^;]*);\.;)")}))
        .collect();
    let buckets = |prefix: &str, b: &[u64]| json!({"match": {"prefix": format!("wasmcustom.{prefix}.")}, "buckets": b});
    json!({
        "stats_tags": tags,
        "histogram_bucket_settings": [
            buckets(llmgw_filter::metrics::TOKEN_USAGE, &[1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]),
            buckets(llmgw_filter::metrics::REQUEST_DURATION, &[10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120, 10240, 20480, 40960, 81920, 300000]),
            buckets(llmgw_filter::metrics::TIME_TO_FIRST_TOKEN, &[1, 5, 10, 20, 40, 60, 80, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000, 30000]),
            buckets(llmgw_filter::metrics::TIME_PER_OUTPUT_TOKEN, &[1, 5, 10, 25, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1000, 2500]),
        ],
    })
}

fn listener(g: &Gateway, o: &Options, buffer: u64, fallbacks: &[fallback::Rule]) -> Value {
    let mut http_filters = auth::filters(g);
    http_filters.extend([wasm_filter(g, o, PLUGIN_NAME, &g.plugin), headers_to_metadata()]);
    if let Some(store) = g.budget_store.as_ref().filter(|_| !g.budgets.is_empty()) {
        // After the filter (the model is known) and the metadata copies (read at stream done).
        http_filters.push(crate::budgets::rate_limit_filter(&g.budgets, store, METADATA_NAMESPACE));
    }
    http_filters.push(router(fallbacks));
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "llmgw",
        "codec_type": "AUTO",
        "stream_idle_timeout": to_envoy(DEFAULT_TIMEOUT),
        "request_timeout": "0s",
        "access_log": [access_log(g)],
        "http_filters": http_filters,
        "route_config": {"name": "llmgw", "virtual_hosts": [{
            "name": "llmgw",
            "domains": ["*"],
            "routes": routes(g, fallbacks),
        }]},
    });
    if !g.consumers.is_empty() {
        hcm["local_reply_config"] = auth::local_reply_config(g);
    }
    json!({
        "name": "llmgw",
        "address": socket(&o.address, o.port),
        "per_connection_buffer_limit_bytes": buffer,
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": hcm,
        }]}],
    })
}

/// Copies the headers the filter sets for routing (`x-llmgw-backend`, `x-ai-eg-model`) into dynamic
/// metadata: each backend's route removes them before the request goes upstream (they are the
/// gateway's, not the provider's), and the access log still names the backend and model.
fn headers_to_metadata() -> Value {
    let rule = |header: &str, key: &str| json!({"header": header, "on_header_present": {"metadata_namespace": METADATA_NAMESPACE, "key": key, "type": "STRING"}});
    json!({
        "name": "envoy.filters.http.header_to_metadata",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config",
            "request_rules": [rule(MODEL_HEADER, "model"), rule(BACKEND_HEADER, "backend")],
        },
    })
}

/// A CEL expression for the access log (Envoy 1.40's formatter always knows `%CEL()%`): the gateway
/// header's value, from the metadata once the route removed the header, else (a request the filter
/// answered itself) from the request.
fn logged(key: &str, header: &str) -> String {
    format!(
        "%CEL('{METADATA_NAMESPACE}' in metadata.filter_metadata && '{key}' in metadata.filter_metadata['{METADATA_NAMESPACE}'] \
         ? metadata.filter_metadata['{METADATA_NAMESPACE}']['{key}'] : request.headers['{header}'])%"
    )
}

/// The backend that answered: the filter's `x-llmgw-backend` (from the metadata, else the
/// request), or for a fallback rule, the one of the host the last attempt went to (its endpoint
/// metadata `llmgw.backend`).
fn logged_backend() -> String {
    let ns = METADATA_NAMESPACE;
    let up = fallback::METADATA_NAMESPACE;
    format!(
        "%CEL('{ns}' in metadata.filter_metadata && 'backend' in metadata.filter_metadata['{ns}'] \
         ? metadata.filter_metadata['{ns}']['backend'] : ('{BACKEND_HEADER}' in request.headers \
         ? request.headers['{BACKEND_HEADER}'] : xds.upstream_host_metadata.filter_metadata['{up}']['backend']))%"
    )
}

/// The router. With fallback rules it also logs every attempt (`upstream_log`): which backend each
/// went to and what it answered, besides the request's own line.
fn router(fallbacks: &[fallback::Rule]) -> Value {
    let mut config = json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"});
    if !fallbacks.is_empty() {
        config["upstream_log"] = json!([attempt_log()]);
    }
    json!({"name": "envoy.filters.http.router", "typed_config": config})
}

fn attempt_log() -> Value {
    let up = fallback::METADATA_NAMESPACE;
    json!({
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {"json_format": {
                "time": "%START_TIME%",
                "attempt_of": "%REQ(x-request-id)%",
                "backend": format!("%UPSTREAM_METADATA({up}:backend)%"),
                "upstream": "%UPSTREAM_HOST%",
                "status": "%RESPONSE_CODE%",
                // A retried 429 is reported to Envoy as 503 (outlier detection counts 5xx): this is
                // what the provider said.
                "upstream_status": "%RESP(x-llmgw-upstream-status)%",
                "flags": "%RESPONSE_FLAGS%",
                "upstream_failure": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
                "duration_ms": "%DURATION%",
            }},
        },
    })
}

fn access_log(g: &Gateway) -> Value {
    let mut log = json!({
        "name": "envoy.access_loggers.stdout",
        "filter": {"header_filter": {"header": {"name": PROBE_HEADER, "present_match": true, "invert_match": true}}},
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {"json_format": {
                "time": "%START_TIME%",
                "method": "%REQ(:METHOD)%",
                "path": "%REQ(:PATH)%",
                "status": "%RESPONSE_CODE%",
                "flags": "%RESPONSE_FLAGS%",
                "duration_ms": "%DURATION%",
                "bytes_received": "%BYTES_RECEIVED%",
                "bytes_sent": "%BYTES_SENT%",
                "model": logged("model", MODEL_HEADER),
                "backend": logged_backend(),
                "upstream": "%UPSTREAM_HOST%",
                "upstream_failure": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
                // More than 1: a fallback rule's request was retried.
                "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
                "input_tokens": "%FILTER_STATE(wasm.llm_input_token:PLAIN)%",
                "output_tokens": "%FILTER_STATE(wasm.llm_output_token:PLAIN)%",
                "total_tokens": "%FILTER_STATE(wasm.llm_total_token:PLAIN)%",
                "request_id": "%REQ(x-request-id)%",
            }},
        },
    });
    if !g.consumers.is_empty() {
        // The authenticated consumer (copied to the metadata before the filter runs).
        log["typed_config"]["log_format"]["json_format"]["consumer"] =
            json!(logged(auth::CONSUMER_METADATA_KEY, crate::consumers::CONSUMER_HEADER));
    }
    log
}

/// The filter: `name` is the plugin's (its stats prefix), `plugin` its configuration. Every copy
/// shares one VM per worker (same `vm_id` and code).
fn wasm_filter(g: &Gateway, o: &Options, name: &str, plugin: &Map<String, Value>) -> Value {
    let mut vm = json!({
        "vm_id": "llmgw",
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": o.wasm}},
    });
    let keys = g.env_keys();
    if !keys.is_empty() {
        vm["environment_variables"] = json!({"host_env_keys": keys});
    }
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": "llmgw",
                // A VM that traps (a bug, memory exhausted) is replaced by a fresh one on that
                // worker's next request, instead of answering 503 for good (Envoy >= 1.33).
                "failure_policy": "FAIL_RELOAD",
                "allow_on_headers_stop_iteration": true,
                "vm_config": vm,
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": plugin_json(plugin)},
            },
        },
    })
}

fn routes(g: &Gateway, fallbacks: &[fallback::Rule]) -> Vec<Value> {
    let mut routes: Vec<Value> = g
        .upstreams
        .iter()
        .map(|u| {
            let mut route = json!({"cluster": u.name, "timeout": to_envoy(u.timeout.unwrap_or(DEFAULT_TIMEOUT))});
            match (&u.host_rewrite, needs_dns(u)) {
                (Some(h), _) => route["host_rewrite_literal"] = json!(h),
                (None, true) => route["auto_host_rewrite"] = json!(true),
                (None, false) => {}
            }
            let mut headers = vec![json!({"name": BACKEND_HEADER, "string_match": {"exact": u.name}})];
            if u.filter_picks() {
                // Only the filter's pick is served (without it the cluster's fallback policy would
                // choose): such a request falls through to the 404 instead.
                headers.push(json!({"name": DESTINATION_HEADER, "present_match": true}));
                // An endpoint that refuses the connection: the same request goes to the next
                // endpoint the filter listed in its header (override-host policy).
                let retries = picker_endpoints(g, &u.name).saturating_sub(1).min(PICKED_RETRIES);
                if retries > 0 {
                    route["retry_policy"] =
                        json!({"retry_on": "connect-failure,reset-before-request,refused-stream", "num_retries": retries});
                }
            }
            json!({
                "name": u.name,
                "match": {"prefix": "/", "headers": headers},
                "route": route,
                // The gateway's own headers never reach a provider.
                "request_headers_to_remove": gateway_headers(g, &[BACKEND_HEADER, MODEL_HEADER]),
            })
        })
        .collect();
    routes.extend(fallbacks.iter().map(|r| rule_route(g, r)));
    routes.push(json!({
        "name": "no_backend",
        "match": {"prefix": "/"},
        "direct_response": {"status": 404, "body": {"inline_string": crate::render_eg::no_route_body(&g.plugin)}},
        "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}}],
    }));
    routes
}

/// The gateway's own request headers a route removes: `base`, and the consumer's name when there
/// are consumers.
fn gateway_headers(g: &Gateway, base: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = base.iter().map(|h| h.to_string()).collect();
    if !g.consumers.is_empty() {
        out.push(crate::consumers::CONSUMER_HEADER.to_string());
    }
    out
}

/// The route of fallback rule `r`: `x-llmgw-rule: r` → cluster `llmgw-rule-<r>`, retried there.
fn rule_route(g: &Gateway, r: &fallback::Rule) -> Value {
    let fb = &r.fallback;
    let timeout = r
        .targets
        .iter()
        .filter_map(|t| g.upstreams.iter().find(|u| u.name == t.backend))
        .map(|u| u.timeout.unwrap_or(DEFAULT_TIMEOUT))
        .max()
        .unwrap_or(DEFAULT_TIMEOUT);
    let (retry_on, codes) = fallback::envoy_retry_on(&fb.retry_on);
    let mut retry = json!({
        "num_retries": fb.attempts.saturating_sub(1),
        // Each retry goes to the next priority level (after the last one, back to the first)...
        "retry_priority": {
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
                "update_frequency": 1,
            },
        },
        // ... and to a host not tried yet for this request.
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"},
        }],
        "host_selection_retry_max_attempts": 3,
    });
    if !retry_on.is_empty() {
        retry["retry_on"] = json!(retry_on);
    }
    if !codes.is_empty() {
        retry["retriable_status_codes"] = json!(codes);
    }
    // Envoy's per-try timeout runs until the response headers, not to the end of the body: it
    // bounds the time to the first byte, and a long stream is never cut by it. (No
    // `per_try_idle_timeout`: it would cut streams that pause between events.)
    if let Some(ms) = fb.first_byte_timeout_ms.or(fb.per_try_timeout_ms) {
        retry["per_try_timeout"] = json!(to_envoy(Duration::from_millis(ms)));
    }
    let max_body = g.plugin.get("max_request_body_bytes").and_then(Value::as_u64).unwrap_or(DEFAULT_MAX_REQUEST_BODY);
    json!({
        "name": r.cluster(),
        "match": {"prefix": "/", "headers": [{"name": RULE_HEADER, "string_match": {"exact": r.index.to_string()}}]},
        "route": {"cluster": r.cluster(), "timeout": to_envoy(timeout), "retry_policy": retry},
        "request_headers_to_remove": gateway_headers(g, &[RULE_HEADER, BACKEND_HEADER, MODEL_HEADER]),
        // The router keeps the request body for replays up to this limit (above it, no retry):
        // every body the filter accepts.
        "request_body_buffer_limit": max_body,
    })
}

/// The cluster of fallback rule `r`: each backend's endpoints at its priority level, tagged with
/// the rule and backend (`llmgw.target`) for the upstream filter and with the backend's name for
/// its TLS settings; the filter's upstream copy as HTTP filter; failing hosts ejected for a while.
fn rule_cluster(g: &Gateway, r: &fallback::Rule, o: &Options, buffer: u64, upstream_filter: &Value) -> Value {
    let members: Vec<(&fallback::Target, &Upstream)> =
        r.targets.iter().filter_map(|t| g.upstreams.iter().find(|u| u.name == t.backend).map(|u| (t, u))).collect();
    let dns = members.iter().any(|(_, u)| needs_dns(u));
    // One locality per backend, weighted by its `weight`: a backend's share of its priority level
    // is then its weight, whatever its number of endpoints or of addresses its name resolves to.
    let localities: Vec<Value> = members
        .iter()
        .map(|(t, u)| {
            json!({
                "priority": t.level,
                "locality": {"sub_zone": r.target_id(t)},
                "load_balancing_weight": t.weight,
                "lb_endpoints": u.endpoints.iter().map(|e| rule_endpoint(r, t, e)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let name = r.cluster();
    let mut c = json!({
        "name": name,
        "type": if dns { "STRICT_DNS" } else { "STATIC" },
        "connect_timeout": CONNECT_TIMEOUT,
        "per_connection_buffer_limit_bytes": buffer,
    });
    if dns {
        c["dns_lookup_family"] = json!("V4_PREFERRED");
    }
    // Priority levels are fallbacks: a level keeps all the traffic while any of its hosts is
    // healthy (Envoy's default overprovisioning, 1.4, would send 30 % to the next level as soon as
    // one of two backends is ejected).
    c["load_assignment"] = json!({
        "cluster_name": name,
        "endpoints": localities,
        "policy": {"overprovisioning_factor": FALLBACK_OVERPROVISIONING},
    });
    c["common_lb_config"] = json!({"locality_weighted_lb_config": {}});
    let mut matches = Vec::new();
    for (t, u) in &members {
        let Some(tls) = &u.tls else { continue };
        if matches.iter().any(|m: &Value| m["name"] == json!(t.backend)) {
            continue;
        }
        matches.push(json!({
            "name": t.backend,
            "match": {fallback::SOCKET_MATCH_KEY: t.backend},
            "transport_socket": transport_socket(tls, o),
        }));
    }
    if !matches.is_empty() {
        c["transport_socket_matches"] = json!(matches);
    }
    // Envoy allows 3 concurrent retries per cluster by default: when a provider fails, every
    // request in flight retries at once, and the ones past the limit would not fall back.
    c["circuit_breakers"] = json!({"thresholds": [{"priority": "DEFAULT", "max_retries": 1024}]});
    // A host that answers 5xx (or a retried 429, which the upstream filter reports as 503) is
    // ejected for 30 s: the next requests go straight to its peers, or to the next priority.
    c["outlier_detection"] = json!({
        "consecutive_5xx": 1,
        "interval": "1s",
        "base_ejection_time": "30s",
        "max_ejection_percent": 100,
        "enforcing_consecutive_5xx": 100,
    });
    c["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            // HTTP/1.1, as the backends' own clusters (Envoy's default there).
            "explicit_http_config": {"http_protocol_options": {}},
            "http_filters": [upstream_filter, {
                "name": "envoy.filters.http.upstream_codec",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"},
            }],
        },
    });
    c
}

fn rule_endpoint(r: &fallback::Rule, t: &fallback::Target, e: &Endpoint) -> Value {
    json!({
        "endpoint": {"address": socket(&e.host, e.port)},
        "metadata": {"filter_metadata": {
            fallback::METADATA_NAMESPACE: {fallback::METADATA_TARGET: r.target_id(t), "backend": t.backend},
            "envoy.transport_socket_match": {fallback::SOCKET_MATCH_KEY: t.backend},
        }},
    })
}

fn needs_dns(u: &Upstream) -> bool {
    u.endpoints.iter().any(|e| !is_ip(&e.host))
}

fn cluster(u: &Upstream, o: &Options, buffer: u64) -> Value {
    if u.filter_picks() {
        return picked_cluster(u, o, buffer);
    }
    let dns = needs_dns(u);
    let kind = match (dns, u.endpoints.len()) {
        (false, _) => "STATIC",
        (true, 1) => "LOGICAL_DNS",
        (true, _) => "STRICT_DNS",
    };
    let endpoints: Vec<Value> =
        u.endpoints.iter().map(|e| json!({"endpoint": {"address": socket(&e.host, e.port)}})).collect();
    let mut c = json!({
        "name": u.name,
        "type": kind,
        "connect_timeout": CONNECT_TIMEOUT,
        "per_connection_buffer_limit_bytes": buffer,
    });
    if dns {
        c["dns_lookup_family"] = json!("V4_PREFERRED");
    }
    if let Some(lb) = &u.lb_policy {
        c["lb_policy"] = json!(lb);
    }
    c["load_assignment"] = json!({"cluster_name": u.name, "endpoints": [{"lb_endpoints": endpoints}]});
    if let Some(tls) = &u.tls {
        c["transport_socket"] = transport_socket(tls, o);
    }
    c
}

/// The clusters the filter sends its own requests to (the OTLP collector), as a proxy pod of
/// Envoy Gateway has them (its system CA bundle): `llmgw render --target envoy-gateway` patches
/// them in.
pub fn dispatch_clusters_for_pods(g: &Gateway) -> Vec<Value> {
    let o = Options {
        address: String::new(),
        port: 0,
        admin_address: String::new(),
        admin_port: 0,
        wasm: String::new(),
        ca_bundle: "/etc/ssl/certs/ca-certificates.crt".into(),
        rls_port: DEFAULT_RLS_PORT,
    };
    let buffer = g.buffer_limit.unwrap_or(DEFAULT_BUFFER_LIMIT);
    g.collector.iter().map(|c| cluster(c, &o, buffer)).collect()
}

/// Retries of a request whose picked endpoint refused it, at most (each to the next one listed:
/// the filter lists up to this many more, so the fallback policy never chooses).
const PICKED_RETRIES: usize = llmgw_filter::picker::MAX_DESTINATIONS - 1;

/// How many endpoints a backend's picker chooses among (for `pd`, the decoders).
fn picker_endpoints(g: &Gateway, backend: &str) -> usize {
    let backends = g.plugin.get("backends").and_then(Value::as_array);
    let backend = backends.into_iter().flatten().find(|b| b["name"] == backend);
    backend.and_then(|b| b["picker"]["endpoints"].as_array()).map_or(0, Vec::len)
}

/// The filter's picker chose the endpoint (one of the backend's, by address) and wrote it in the
/// destination header, followed by the ones to retry on: Envoy's override-host policy connects
/// there, as the Gateway API Inference Extension does. The hosts must be in the cluster, so it
/// lists every endpoint; least-request chooses only when no listed host is left.
fn picked_cluster(u: &Upstream, o: &Options, buffer: u64) -> Value {
    let endpoints: Vec<Value> =
        u.endpoints.iter().map(|e| json!({"endpoint": {"address": socket(&e.host, e.port)}})).collect();
    let policy = |name: &str, config: Value| json!({"policies": [{"typed_extension_config": {"name": name, "typed_config": config}}]});
    let least_request = policy(
        "envoy.load_balancing_policies.least_request",
        json!({"@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest"}),
    );
    let mut c = json!({
        "name": u.name,
        "type": "STATIC",
        "connect_timeout": CONNECT_TIMEOUT,
        "per_connection_buffer_limit_bytes": buffer,
        "load_assignment": {"cluster_name": u.name, "endpoints": [{"lb_endpoints": endpoints}]},
        "load_balancing_policy": policy("envoy.load_balancing_policies.override_host", json!({
            "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost",
            "override_host_sources": [{"header": DESTINATION_HEADER}],
            "fallback_policy": least_request,
        })),
    });
    if let Some(tls) = &u.tls {
        c["transport_socket"] = transport_socket(tls, o);
    }
    c
}

fn transport_socket(tls: &Tls, o: &Options) -> Value {
    let mut common = json!({});
    if !tls.insecure_skip_verify {
        let ca = match &tls.ca {
            Ca::System => json!({"filename": o.ca_bundle}),
            Ca::File(f) => json!({"filename": f}),
            Ca::Pem(p) => json!({"inline_string": p}),
        };
        let names = if tls.sans.is_empty() { std::slice::from_ref(&tls.sni) } else { tls.sans.as_slice() };
        let sans: Vec<Value> = names.iter().map(|n| json!({"san_type": "DNS", "matcher": {"exact": n}})).collect();
        common["validation_context"] = json!({"trusted_ca": ca, "match_typed_subject_alt_names": sans});
    }
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": tls.sni,
            "common_tls_context": common,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MapEnv;

    /// Loopback listener on 1975, admin on 9901, the given module path.
    fn test_options(wasm: &str) -> Options {
        Options {
            address: "127.0.0.1".into(),
            port: 1975,
            admin_address: "127.0.0.1".into(),
            admin_port: 9901,
            wasm: wasm.into(),
            ca_bundle: "/ca.pem".into(),
            rls_port: DEFAULT_RLS_PORT,
        }
    }

    const FALLBACK: &str = "
backends:
  - {name: openai, url: https://api.openai.com/v1, schema: OpenAI, auth: {bearer_env: OPENAI_API_KEY}}
  - {name: azure, url: https://example.openai.azure.com, schema: AzureOpenAI, api_version: 2024-10-21,
     auth: {api_key_env: AZURE_OPENAI_API_KEY}, timeout: 400s}
  - name: claude-bedrock
    url: https://bedrock-runtime.us-east-1.amazonaws.com
    schema: AWSAnthropic
    region: us-east-1
    auth: {aws: {}}
  - {name: local, endpoints: ['10.0.0.5:8000', '10.0.0.6:8000'], schema: OpenAI}
  - {name: spare, url: 'http://127.0.0.1:11434/v1', schema: OpenAI}
rules:
  - match: {model: {exact: plain}}
    backends: [{name: openai}]
  - match: {model: {exact: gpt-4o}}
    backends:
      - {name: openai, weight: 3}
      - {name: azure, weight: 1}
      - {name: claude-bedrock, priority: 1, model_override: claude-x}
    retry: {attempts: 3, on: [connect-failure, '429'], per_try_timeout: 60s, first_byte_timeout: 10s}
  - backends: [{name: local}, {name: spare, priority: 7}]
";

    fn rendered() -> Value {
        let g = crate::formats::load_text("t.yaml", FALLBACK, &MapEnv::default(), None).unwrap();
        crate::validate::validate(&g, &crate::model::AnyEnv).unwrap();
        let o = test_options("/x/llmgw_filter.wasm");
        render(&g, &o)
    }

    #[test]
    fn header_labels_are_stats_tags() {
        let mut g = crate::formats::load_text("t.yaml", FALLBACK, &MapEnv::default(), None).unwrap();
        g.plugin.insert("metrics_request_header_labels".into(), json!({"x-team-id": "team.id"}));
        let b = render(&g, &test_options("/x/llmgw_filter.wasm"));
        let tags = b["stats_config"]["stats_tags"].as_array().unwrap();
        assert_eq!(tags.len(), llmgw_filter::metrics::LABELS.len() + 1);
        assert_eq!(tags.last().unwrap(), &json!({"tag_name": "team_id", "regex": r"(\.?team_id=\.=([^;]*);\.;)"}));
    }

    fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
        list.as_array().unwrap().iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn fallback_rules_get_a_retried_route() {
        let b = rendered();
        let hcm = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        let routes = &hcm["route_config"]["virtual_hosts"][0]["routes"];
        let names: Vec<&str> = routes.as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
        // Every backend keeps its route (rule 0 is a plain rule); rules 1 and 2 fall back.
        assert_eq!(
            names,
            ["openai", "azure", "claude-bedrock", "local", "spare", "llmgw-rule-1", "llmgw-rule-2", "no_backend"]
        );
        let r = named(routes, "llmgw-rule-1");
        assert_eq!(r["match"]["headers"][0], json!({"name": "x-llmgw-rule", "string_match": {"exact": "1"}}));
        assert_eq!(r["request_headers_to_remove"], json!(["x-llmgw-rule", "x-llmgw-backend", "x-ai-eg-model"]));
        assert_eq!(r["request_body_buffer_limit"], json!(32 * 1024 * 1024));
        assert_eq!(r["route"]["cluster"], "llmgw-rule-1");
        assert_eq!(r["route"]["timeout"], "400s", "the longest timeout of the rule's backends");
        let p = &r["route"]["retry_policy"];
        // A retried 429 reaches Envoy as 503 (the upstream filter's doing): 503 is retried too.
        assert_eq!(p["retry_on"], "connect-failure,retriable-status-codes");
        assert_eq!(p["retriable_status_codes"], json!([429, 503]));
        assert_eq!(p["num_retries"], 2);
        assert_eq!(p["per_try_timeout"], "10s", "the first byte timeout wins");
        assert_eq!(p["retry_priority"]["name"], "envoy.retry_priorities.previous_priorities");
        assert_eq!(p["retry_priority"]["typed_config"]["update_frequency"], 1);
        assert_eq!(p["retry_host_predicate"][0]["name"], "envoy.retry_host_predicates.previous_hosts");
        assert_eq!(p["host_selection_retry_max_attempts"], 3);
        assert!(p.get("per_try_idle_timeout").is_none());
        // Priorities alone: one attempt per level, the filter's default conditions.
        let p = &named(routes, "llmgw-rule-2")["route"]["retry_policy"];
        assert_eq!(p["num_retries"], 1);
        assert_eq!(p["retry_on"], "connect-failure,reset,5xx,retriable-status-codes");
        assert_eq!(p["retriable_status_codes"], json!([429]));
        assert!(p.get("per_try_timeout").is_none());
    }

    #[test]
    fn fallback_clusters_hold_every_backend_by_priority() {
        let b = rendered();
        let clusters = &b["static_resources"]["clusters"];
        let c = named(clusters, "llmgw-rule-1");
        assert_eq!(c["type"], "STRICT_DNS");
        assert_eq!(c["dns_lookup_family"], "V4_PREFERRED");
        assert_eq!(c["common_lb_config"], json!({"locality_weighted_lb_config": {}}));
        assert_eq!(c["load_assignment"]["policy"]["overprovisioning_factor"], 100_000);
        let localities = c["load_assignment"]["endpoints"].as_array().unwrap();
        let summary: Vec<(u64, u64, &str)> = localities
            .iter()
            .map(|l| {
                let ep = &l["lb_endpoints"][0];
                (
                    l["priority"].as_u64().unwrap(),
                    l["load_balancing_weight"].as_u64().unwrap(),
                    ep["metadata"]["filter_metadata"]["llmgw"]["target"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(summary, [(0, 3, "1/0"), (0, 1, "1/1"), (1, 1, "1/2")]);
        let ep = &localities[2]["lb_endpoints"][0];
        assert_eq!(
            ep["endpoint"]["address"]["socket_address"],
            json!({"address": "bedrock-runtime.us-east-1.amazonaws.com", "port_value": 443})
        );
        assert_eq!(
            ep["metadata"]["filter_metadata"]["envoy.transport_socket_match"],
            json!({"llmgw_backend": "claude-bedrock"})
        );
        assert_eq!(
            ep["metadata"]["filter_metadata"]["llmgw"],
            json!({"target": "1/2", "backend": "claude-bedrock"}),
            "the access log names the backend from it"
        );
        let matches = c["transport_socket_matches"].as_array().unwrap();
        assert_eq!(matches.len(), 3);
        let m = named(&c["transport_socket_matches"], "claude-bedrock");
        assert_eq!(m["match"], json!({"llmgw_backend": "claude-bedrock"}));
        assert_eq!(
            m["transport_socket"],
            named(clusters, "claude-bedrock")["transport_socket"],
            "the backend's own TLS"
        );
        assert_eq!(m["transport_socket"]["typed_config"]["sni"], "bedrock-runtime.us-east-1.amazonaws.com");
        assert_eq!(c["outlier_detection"]["consecutive_5xx"], 1);
        assert_eq!(c["outlier_detection"]["max_ejection_percent"], 100);
        assert_eq!(c["circuit_breakers"]["thresholds"][0]["max_retries"], 1024);
        assert_eq!(
            c["per_connection_buffer_limit_bytes"],
            named(clusters, "openai")["per_connection_buffer_limit_bytes"]
        );
        // Priorities 0 and 7 become levels 0 and 1; IP endpoints only: a STATIC cluster, and each
        // of `local`'s two endpoints in its locality.
        let c = named(clusters, "llmgw-rule-2");
        assert_eq!(c["type"], "STATIC");
        assert!(c.get("dns_lookup_family").is_none());
        let l = &c["load_assignment"]["endpoints"];
        assert_eq!((l[0]["priority"].as_u64(), l[1]["priority"].as_u64()), (Some(0), Some(1)));
        assert_eq!(l[0]["lb_endpoints"].as_array().unwrap().len(), 2);
        assert_eq!(l[1]["lb_endpoints"][0]["metadata"]["filter_metadata"]["llmgw"]["target"], "2/1");
    }

    #[test]
    fn the_upstream_filter_is_the_same_module_with_role_upstream() {
        let b = rendered();
        let c = named(&b["static_resources"]["clusters"], "llmgw-rule-1");
        let opts = &c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert_eq!(opts["explicit_http_config"], json!({"http_protocol_options": {}}));
        let filters = opts["http_filters"].as_array().unwrap();
        assert_eq!(filters[1]["name"], "envoy.filters.http.upstream_codec");
        let wasm = &filters[0]["typed_config"]["config"];
        let hcm = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        let downstream = &hcm["http_filters"][0]["typed_config"]["config"];
        assert_eq!(wasm["name"], "llmgw-upstream");
        assert_eq!(downstream["name"], "llmgw");
        for key in ["root_id", "vm_config", "failure_policy", "allow_on_headers_stop_iteration"] {
            assert_eq!(wasm[key], downstream[key], "{key}");
        }
        assert_eq!(wasm["vm_config"]["vm_id"], "llmgw");
        let plugin: Value = serde_json::from_str(wasm["configuration"]["value"].as_str().unwrap()).unwrap();
        let down: Value = serde_json::from_str(downstream["configuration"]["value"].as_str().unwrap()).unwrap();
        assert_eq!(plugin["role"], "upstream");
        assert!(down.get("role").is_none());
        let host = |p: &Value, i: usize| p["backends"][i].get("host").cloned();
        assert_eq!(host(&plugin, 0), Some(json!("api.openai.com")));
        assert_eq!(host(&plugin, 1), Some(json!("example.openai.azure.com")));
        assert_eq!(host(&plugin, 2), Some(json!("bedrock-runtime.us-east-1.amazonaws.com")));
        assert_eq!(host(&plugin, 3), Some(json!("10.0.0.5:8000")));
        assert_eq!(host(&down, 0), None, "the downstream copy is unchanged");
        assert_eq!(plugin["rules"], down["rules"]);
        // The filter accepts it.
        let env = crate::model::AnyEnv;
        let compiled =
            llmgw_filter::config::parse(wasm["configuration"]["value"].as_str().unwrap().as_bytes(), &env, 0);
        assert_eq!(compiled.map(|c| c.role).ok(), Some(llmgw_filter::config::Role::Upstream));
    }

    #[test]
    fn a_picker_backend_is_reached_only_with_the_filters_pick_and_retried_on_the_next_one_listed() {
        let text = "backends:\n- {name: v, endpoints: ['10.0.0.5:8000', '10.0.0.6:8000'], schema: OpenAI,\n   picker: {algorithm: least-request}}\n";
        let g = crate::formats::load_text("t.yaml", text, &MapEnv::default(), None).unwrap();
        crate::validate::validate(&g, &crate::model::AnyEnv).unwrap();
        assert_eq!(
            g.plugin["backends"][0]["picker"],
            serde_json::json!({"algorithm": "least-request", "endpoints": ["10.0.0.5:8000", "10.0.0.6:8000"]})
        );
        let o = test_options("/x.wasm");
        let b = render(&g, &o);
        let c = named(&b["static_resources"]["clusters"], "v");
        assert_eq!(c["type"], "STATIC");
        let hosts: Vec<&Value> = c["load_assignment"]["endpoints"][0]["lb_endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["endpoint"]["address"]["socket_address"]["port_value"])
            .collect();
        assert_eq!(hosts.len(), 2, "override-host only selects hosts of the cluster");
        let lb = &c["load_balancing_policy"]["policies"][0]["typed_extension_config"];
        assert_eq!(lb["name"], "envoy.load_balancing_policies.override_host");
        assert_eq!(lb["typed_config"]["override_host_sources"], serde_json::json!([{"header": "x-llmgw-destination"}]));
        assert_eq!(
            lb["typed_config"]["fallback_policy"]["policies"][0]["typed_extension_config"]["name"],
            "envoy.load_balancing_policies.least_request"
        );
        let routes = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["route_config"]["virtual_hosts"][0]["routes"];
        let route = named(routes, "v");
        assert_eq!(
            route["match"]["headers"][1],
            serde_json::json!({"name": "x-llmgw-destination", "present_match": true})
        );
        assert_eq!(
            route["route"]["retry_policy"],
            serde_json::json!({"retry_on": "connect-failure,reset-before-request,refused-stream", "num_retries": 1})
        );
        // pd: the prefill endpoints are in the cluster too (the filter's prefill calls name them);
        // one decoder: nothing to retry on.
        let text = "backends:\n- {name: v, endpoints: ['10.0.0.5:8000'], schema: OpenAI,\n   picker: {algorithm: pd, prefill_endpoints: ['10.0.0.7:8000']}}\n";
        let g = crate::formats::load_text("t.yaml", text, &MapEnv::default(), None).unwrap();
        let b = render(&g, &o);
        let c = named(&b["static_resources"]["clusters"], "v");
        assert_eq!(
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][1]["endpoint"]["address"]["socket_address"]["address"],
            "10.0.0.7"
        );
        let routes = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["route_config"]["virtual_hosts"][0]["routes"];
        assert!(named(routes, "v")["route"].get("retry_policy").is_none());
        // Names cannot be picked: the filter names endpoints by address.
        let text =
            "backends:\n- {name: v, endpoints: ['vllm.local:8000'], schema: OpenAI, picker: {algorithm: random}}\n";
        let e = crate::formats::load_text("t.yaml", text, &MapEnv::default(), None).unwrap_err().to_string();
        assert!(e.contains("backends[0].picker: vllm.local:8000: the picker needs ip:port endpoints"), "{e}");
        let text = "backends:\n- {name: v, endpoints: ['10.0.0.1:1'], schema: OpenAI, picker: {algorithm: random, endpoints: ['10.0.0.2:1']}}\n";
        assert!(crate::formats::load_text("t.yaml", text, &MapEnv::default(), None).is_err());
    }

    #[test]
    fn without_fallback_rules_nothing_changes() {
        let g = crate::formats::load_text(
            "t.yaml",
            "backends: [{name: a, url: 'http://127.0.0.1:8000/v1', schema: OpenAI}]\nrules: [{backends: [{name: a}]}]\n",
            &MapEnv::default(),
            None,
        )
        .unwrap();
        assert!(fallback::rules(&g).is_empty());
        let o = test_options("/x.wasm");
        let b = render(&g, &o);
        assert_eq!(b["static_resources"]["clusters"].as_array().unwrap().len(), 1);
        assert!(!b.to_string().contains("x-llmgw-rule"));
    }

    #[test]
    fn the_anthropic_prefix_reaches_the_filter_and_the_no_route_answer() {
        let text =
            "backends: [{name: a, url: 'http://127.0.0.1:8000/v1', schema: OpenAI}]\nanthropic_prefix: /claude\n";
        let g = crate::formats::load_text("t.yaml", text, &MapEnv::default(), None).unwrap();
        crate::validate::validate(&g, &MapEnv::default()).unwrap();
        let o = test_options("/x.wasm");
        let b = render(&g, &o);
        let hcm = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        let plugin = hcm["http_filters"][0]["typed_config"]["config"]["configuration"]["value"].as_str().unwrap();
        let plugin: Value = serde_json::from_str(plugin).unwrap();
        assert_eq!(plugin["anthropic_prefix"], "/claude");
        // Every path reaches the filter: the routes match on the backend header, under "/".
        let routes = hcm["route_config"]["virtual_hosts"][0]["routes"].as_array().unwrap();
        assert!(routes.iter().all(|r| r["match"]["prefix"] == "/"));
        let no_route = routes.last().unwrap()["direct_response"]["body"]["inline_string"].as_str().unwrap();
        let v: Value = serde_json::from_str(no_route).unwrap();
        let message = v["error"]["message"].as_str().unwrap();
        // The filter's one list: OpenAI's paths at the root, Anthropic's under the prefix.
        for path in ["/v1/responses", "/v1/messages/count_tokens", "/claude/v1/messages", "/claude/v1/models"] {
            assert!(message.split(", ").any(|p| p.ends_with(path)), "{path}: {message}");
        }
        assert!(!message.contains("/anthropic/"), "{message}");

        let bad = text.replace("/claude", "/v1");
        let g = crate::formats::load_text("t.yaml", &bad, &MapEnv::default(), None).unwrap();
        let e = crate::validate::validate(&g, &MapEnv::default()).unwrap_err();
        assert!(e.to_string().contains("anthropic_prefix"), "{e}");
    }

    #[test]
    fn a_rules_cache_reaches_the_filter_validated_and_keyed_by_consumer() {
        let text = "backends: [{name: a, url: 'http://127.0.0.1:8000/v1', schema: OpenAI}]
consumers: [{name: team-a, api_keys_env: TEAM_A_KEYS}]
rules: [{backends: [{name: a}], cache: {mode: exact, ttl: 10m, max_bytes: 64Mi}}]
";
        let g = crate::formats::load_text("t.yaml", text, &MapEnv::default(), None).unwrap();
        crate::validate::validate(&g, &MapEnv::default()).unwrap();
        assert_eq!(g.plugin["rules"][0]["cache"]["max_bytes"], "64Mi");
        assert_eq!(g.plugin["consumer_header"], crate::consumers::CONSUMER_HEADER, "consumers are isolated");
        let without = text.replace("consumers: [{name: team-a, api_keys_env: TEAM_A_KEYS}]\n", "");
        let g = crate::formats::load_text("t.yaml", &without, &MapEnv::default(), None).unwrap();
        assert!(!g.plugin.contains_key("consumer_header"));
        for (bad, field) in
            [("ttl: 10m", "ttl: 10 minutes"), ("mode: exact", "mode: semantic"), ("max_bytes: 64Mi", "max_bytes: 64MB")]
        {
            let g = crate::formats::load_text("t.yaml", &text.replace(bad, field), &MapEnv::default(), None).unwrap();
            let e = crate::validate::validate(&g, &MapEnv::default()).unwrap_err().to_string();
            assert!(e.contains("cache"), "{field}: {e}");
        }
    }
}
