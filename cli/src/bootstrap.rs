//! The Envoy bootstrap for a gateway. Same shape as `envoy-configs/local/envoy.yaml` (stats tags
//! that turn the filter's in-name labels into Prometheus labels, GenAI histogram buckets, JSON
//! access log on stdout, the wasm filter with FAIL_RELOAD and `allow_on_headers_stop_iteration`),
//! with one cluster per backend and one route per backend: the filter names the backend in
//! `x-llmgw-backend`, and each backend's route sets its Host header and timeout.

use serde_json::{json, Value};

use crate::duration::to_envoy;
use crate::model::{Ca, Gateway, Tls, Upstream, DEFAULT_BUFFER_LIMIT, DEFAULT_TIMEOUT};
use crate::url::is_ip;
use crate::validate::plugin_text;

/// Request header the admin's health check sends through the listener; excluded from the access log.
pub const PROBE_HEADER: &str = "x-llmgw-health-probe";
/// The Wasm plugin's name: Envoy's stats for it are `wasm.<name>.*` (`vm_reload_success`, ...).
pub const PLUGIN_NAME: &str = "llmgw";
const BACKEND_HEADER: &str = llmgw_filter::config::BACKEND_HEADER;
const MODEL_HEADER: &str = llmgw_filter::config::MODEL_HEADER;
/// Dynamic metadata namespace the gateway's headers are copied to, for the access log.
const METADATA_NAMESPACE: &str = "io.llmgw";
const CONNECT_TIMEOUT: &str = "5s";

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
}

pub fn render(g: &Gateway, o: &Options) -> Value {
    let buffer = g.buffer_limit.unwrap_or(DEFAULT_BUFFER_LIMIT);
    json!({
        "node": {"id": "llmgw", "cluster": "llmgw"},
        "admin": {"address": socket(&o.admin_address, o.admin_port)},
        "stats_config": stats_config(),
        // Envoy warns at start without a connection limit; the reference bootstrap's value.
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                "max_active_downstream_connections": 10000,
            },
        }]},
        "static_resources": {
            "listeners": [listener(g, o, buffer)],
            "clusters": g.upstreams.iter().map(|u| cluster(u, o, buffer)).collect::<Vec<_>>(),
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

fn stats_config() -> Value {
    let tags: Vec<Value> = llmgw_filter::metrics::LABELS
        .iter()
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

fn listener(g: &Gateway, o: &Options, buffer: u64) -> Value {
    json!({
        "name": "llmgw",
        "address": socket(&o.address, o.port),
        "per_connection_buffer_limit_bytes": buffer,
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "llmgw",
                "codec_type": "AUTO",
                "stream_idle_timeout": to_envoy(DEFAULT_TIMEOUT),
                "request_timeout": "0s",
                "access_log": [access_log()],
                "http_filters": [wasm_filter(g, o), headers_to_metadata(), {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }],
                "route_config": {"name": "llmgw", "virtual_hosts": [{
                    "name": "llmgw",
                    "domains": ["*"],
                    "routes": routes(g),
                }]},
            },
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

fn access_log() -> Value {
    json!({
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
                "backend": logged("backend", BACKEND_HEADER),
                "upstream": "%UPSTREAM_HOST%",
                "upstream_failure": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
                "input_tokens": "%FILTER_STATE(wasm.llm_input_token:PLAIN)%",
                "output_tokens": "%FILTER_STATE(wasm.llm_output_token:PLAIN)%",
                "total_tokens": "%FILTER_STATE(wasm.llm_total_token:PLAIN)%",
                "request_id": "%REQ(x-request-id)%",
            }},
        },
    })
}

fn wasm_filter(g: &Gateway, o: &Options) -> Value {
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
                "name": PLUGIN_NAME,
                "root_id": "llmgw",
                // A VM that traps (a bug, memory exhausted) is replaced by a fresh one on that
                // worker's next request, instead of answering 503 for good (Envoy >= 1.33).
                "failure_policy": "FAIL_RELOAD",
                "allow_on_headers_stop_iteration": true,
                "vm_config": vm,
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": plugin_text(g)},
            },
        },
    })
}

fn routes(g: &Gateway) -> Vec<Value> {
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
            json!({
                "name": u.name,
                "match": {"prefix": "/", "headers": [{"name": BACKEND_HEADER, "string_match": {"exact": u.name}}]},
                "route": route,
                // The gateway's own headers never reach a provider.
                "request_headers_to_remove": [BACKEND_HEADER, MODEL_HEADER],
            })
        })
        .collect();
    routes.push(json!({
        "name": "no_backend",
        "match": {"prefix": "/"},
        "direct_response": {"status": 404, "body": {"inline_string":
            r#"{"error":{"message":"no route: llmgw handles /v1/chat/completions, /v1/completions, /v1/embeddings and /v1/models","type":"invalid_request_error","code":"no_route"}}"#}},
        "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}}],
    }));
    routes
}

fn needs_dns(u: &Upstream) -> bool {
    u.endpoints.iter().any(|e| !is_ip(&e.host))
}

fn cluster(u: &Upstream, o: &Options, buffer: u64) -> Value {
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
