//! `llmgw render --target envoy-gateway`: the manifests rendered for the demo configuration
//! (envoy-configs/envoy-gateway/llmgw-config.yaml) match `tests/golden/envoy-gateway.yaml`
//! byte for byte, and so does the committed `envoy-configs/envoy-gateway/llmgw.yaml` (the
//! host-tests e2e suite validates that file against the CRD schemas and runs it on Envoy).
//! `UPDATE_GOLDEN=1 cargo test -p llmgw --test render_eg_golden` rewrites both.
//!
//! The renderer is included by path, so this test does not depend on how the crate exposes it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../src/render_eg.rs"]
#[allow(dead_code)]
mod render_eg;

use std::path::{Path, PathBuf};

use render_eg::{render, EgBackend, EgOptions};
use serde::Deserialize;
use serde_json::{json, Value};

/// The plugin configuration the CLI derives from envoy-configs/envoy-gateway/llmgw-config.yaml.
fn demo_plugin() -> Value {
    json!({
        "backends": [
            {"name": "openai", "schema": "OpenAI", "auth": {"bearer_env": "OPENAI_API_KEY"}, "prefix": "/v1"},
            {"name": "vllm", "schema": "OpenAI", "prefix": "/v1"}
        ],
        "rules": [
            {"name": "openai-models", "match": {"model": {"glob": "gpt-*"}}, "backends": [{"name": "openai"}]},
            {"name": "embeddings", "match": {"model": {"prefix": "text-embedding-"}}, "backends": [{"name": "openai"}]},
            {"name": "llama", "match": {"model": {"prefix": "llama"}}, "backends": [{"name": "vllm"}]}
        ],
        "models": ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "llama-3.2-1b"]
    })
}

fn demo_backends() -> Vec<EgBackend> {
    vec![
        EgBackend {
            name: "openai".into(),
            endpoints: vec![("api.openai.com".into(), 443)],
            tls: true,
            host_rewrite: Some("api.openai.com".into()),
        },
        EgBackend {
            name: "vllm".into(),
            endpoints: vec![("vllm.llmgw.svc.cluster.local".into(), 8000)],
            tls: false,
            host_rewrite: Some("vllm.llmgw.svc.cluster.local:8000".into()),
        },
    ]
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| serde_yaml_ng::from_value::<Value>(serde_yaml_ng::Value::deserialize(d).unwrap()).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

#[test]
fn demo_matches_golden_and_the_committed_manifests() {
    let out = render(&demo_plugin(), &demo_backends(), &EgOptions::default()).unwrap();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/envoy-gateway.yaml");
    let committed = repo().join("envoy-configs/envoy-gateway/llmgw.yaml");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &out).unwrap();
        std::fs::write(&committed, &out).unwrap();
    }
    let want = std::fs::read_to_string(&golden).unwrap();
    assert!(out == want, "render differs from {}; UPDATE_GOLDEN=1 to accept:\n{out}", golden.display());
    let shipped = std::fs::read_to_string(&committed).unwrap();
    assert!(shipped == want, "{} differs from the golden file {}", committed.display(), golden.display());
}

#[test]
fn the_inline_plugin_config_is_the_plugin_config() {
    let out = render(&demo_plugin(), &demo_backends(), &EgOptions::default()).unwrap();
    let d = docs(&out);
    let eep = kind(&d, "EnvoyExtensionPolicy");
    assert_eq!(eep.len(), 1);
    // The plugin configuration, each backend also forwarding the client id to the rate limit filter.
    let mut want = demo_plugin();
    for b in want["backends"].as_array_mut().unwrap() {
        b["forward_headers"] = json!(["x-llmgw-client"]);
    }
    assert_eq!(eep[0]["spec"]["wasm"][0]["config"], want);
    assert_eq!(eep[0]["spec"]["wasm"][0]["env"]["hostKeys"], json!(["OPENAI_API_KEY"]));
    let kinds: Vec<&str> = d.iter().map(|v| v["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "GatewayClass",
            "EnvoyProxy",
            "Gateway",
            "ClientTrafficPolicy",
            "SecurityPolicy",
            "Backend",
            "HTTPRouteFilter",
            "HTTPRoute",
            "EnvoyExtensionPolicy",
            "EnvoyPatchPolicy",
            "BackendTrafficPolicy"
        ]
    );
    // One rule per backend, matching the header the filter sets, and the catch-all last.
    let route = kind(&d, "HTTPRoute")[0];
    let rules = route["spec"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 3);
    assert_eq!(
        rules[0]["matches"][0]["headers"][0],
        json!({"type": "Exact", "name": "x-llmgw-backend", "value": "openai"})
    );
    assert_eq!(rules[1]["backendRefs"][0], json!({"name": "vllm", "port": 8000}));
    assert!(rules[2]["matches"][0].get("headers").is_none());
}

#[test]
fn digest_image_and_names_are_options() {
    let opts = EgOptions {
        namespace: "ai".into(),
        name: "edge".into(),
        image: "registry.local:5000/llmgw:1.2.3".into(),
        digest: format!("sha256:{}", "ab".repeat(32)),
        port: 8080,
        consumers: None,
        clusters: Vec::new(),
    };
    let mut backends = demo_backends();
    backends[1].endpoints = vec![("vllm.llmgw.svc.cluster.local".into(), 8000)]; // other namespace: a Backend
    let out = render(&demo_plugin(), &backends, &opts).unwrap();
    let d = docs(&out);
    let eep = kind(&d, "EnvoyExtensionPolicy")[0];
    assert_eq!(
        eep["spec"]["wasm"][0]["code"]["image"],
        json!({"url": "registry.local:5000/llmgw:1.2.3", "sha256": "ab".repeat(32)})
    );
    assert!(!out.contains("Placeholder"));
    let epp = kind(&d, "EnvoyPatchPolicy")[0];
    assert_eq!(epp["spec"]["jsonPatches"][0]["name"], "ai/edge/http");
    assert!(epp["spec"]["jsonPatches"][0]["operation"]["jsonPath"]
        .as_str()
        .unwrap()
        .contains("'envoy.filters.http.wasm/envoyextensionpolicy/ai/edge/wasm/0'"));
    assert_eq!(kind(&d, "Gateway")[0]["spec"]["listeners"][0]["port"], 8080);
    assert_eq!(kind(&d, "Backend").len(), 2);
    assert!(d
        .iter()
        .all(|v| v["kind"] == "Namespace" || v["kind"] == "GatewayClass" || v["metadata"]["namespace"] == "ai"));
}

/// No secret in the manifests: the Secrets are referenced, created by the operator with the
/// commands of the header comment, and a literal credential is refused.
#[test]
fn manifests_hold_no_secret() {
    let out = render(&demo_plugin(), &demo_backends(), &EgOptions::default()).unwrap();
    let d = docs(&out);
    assert!(kind(&d, "Secret").is_empty());
    assert!(!out.contains("REPLACE_ME") && !out.to_lowercase().contains("sk-"), "{out}");
    let sp = kind(&d, "SecurityPolicy")[0];
    assert_eq!(sp["spec"]["apiKeyAuth"]["credentialRefs"], json!([{"name": "llmgw-client-keys"}]));
    let env = &kind(&d, "EnvoyProxy")[0]["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]["env"];
    assert_eq!(
        env,
        &json!([{"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "llmgw-upstream-keys", "key": "OPENAI_API_KEY"}}}])
    );
    let commands = render_eg::secret_commands(&demo_plugin(), &EgOptions::default());
    assert_eq!(
        commands[1],
        "kubectl -n llmgw create secret generic llmgw-upstream-keys --from-literal=OPENAI_API_KEY=\"$OPENAI_API_KEY\""
    );
    assert!(commands[2].starts_with(
        "kubectl -n llmgw create secret generic llmgw-client-keys --from-literal=team-a=\"$(openssl rand -hex 24)\""
    ));
    for c in &commands {
        assert!(out.contains(&format!("#   {c}\n")), "the header comment gives `{c}`");
    }

    for auth in [json!({"bearer": "sk-live-1"}), json!({"aws": {"secret_access_key": "s3cret"}})] {
        let mut plugin = demo_plugin();
        plugin["backends"][0]["auth"] = auth;
        let e = render(&plugin, &demo_backends(), &EgOptions::default()).unwrap_err();
        assert!(e.contains("backends[0].auth.") && e.contains("literal credential"), "{e}");
        assert!(!e.contains("sk-live-1") && !e.contains("s3cret"), "{e}");
    }
    // AWS credentials from the standard variables: the session token is optional.
    let mut plugin = demo_plugin();
    plugin["backends"][0]["auth"] = json!({"aws": {}});
    let out = render(&plugin, &demo_backends(), &EgOptions::default()).unwrap();
    let d = docs(&out);
    let eep = kind(&d, "EnvoyExtensionPolicy")[0];
    assert_eq!(
        eep["spec"]["wasm"][0]["env"]["hostKeys"],
        json!(["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"])
    );
    let env = &kind(&d, "EnvoyProxy")[0]["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]["env"];
    assert_eq!(env[2]["valueFrom"]["secretKeyRef"]["optional"], json!(true));
    assert!(env[0]["valueFrom"]["secretKeyRef"].get("optional").is_none());
}

#[test]
fn the_inline_plugin_config_is_json() {
    let out = render(&demo_plugin(), &demo_backends(), &EgOptions::default()).unwrap();
    let config = out.split("\n      config: ").nth(1).unwrap().split("\n---").next().unwrap();
    let parsed: Value = serde_json::from_str(config).unwrap_or_else(|e| panic!("not JSON ({e}):\n{config}"));
    assert_eq!(parsed, render_eg::with_client_header(&demo_plugin()));
}

#[test]
fn without_env_credentials_there_is_no_envoyproxy() {
    let plugin = json!({"backends": [{"name": "local_llm", "schema": "OpenAI"}],
                        "max_request_body_bytes": 1048576});
    let backends = vec![EgBackend {
        name: "local_llm".into(),
        endpoints: vec![("10.0.0.5".into(), 8000), ("10.0.0.6".into(), 8000)],
        tls: false,
        host_rewrite: None,
    }];
    let out = render(&plugin, &backends, &EgOptions::default()).unwrap();
    let d = docs(&out);
    assert!(kind(&d, "EnvoyProxy").is_empty());
    assert!(kind(&d, "Gateway")[0]["spec"].get("infrastructure").is_none());
    assert!(kind(&d, "EnvoyExtensionPolicy")[0]["spec"]["wasm"][0].get("env").is_none());
    let be = kind(&d, "Backend")[0];
    assert_eq!(be["metadata"]["name"], "local-llm");
    assert_eq!(be["spec"]["endpoints"][1], json!({"ip": {"address": "10.0.0.6", "port": 8000}}));
    assert_eq!(kind(&d, "HTTPRoute")[0]["spec"]["rules"][0]["matches"][0]["headers"][0]["value"], "local_llm");
    assert_eq!(kind(&d, "ClientTrafficPolicy")[0]["spec"]["connection"]["bufferLimit"], "19Mi");
}

#[test]
fn fallback_rules_are_refused_not_balanced() {
    let o = EgOptions::default();
    let backends = demo_backends();
    let mut plugin = demo_plugin();
    plugin["rules"][2]["backends"] = json!([{"name": "vllm"}, {"name": "openai", "priority": 1}]);
    let e = render(&plugin, &backends, &o).unwrap_err();
    assert!(e.starts_with("rules[2] (llama) is a fallback rule"), "{e}");
    let mut plugin = demo_plugin();
    plugin["rules"][0]["retry"] = json!({"attempts": 2});
    assert!(render(&plugin, &backends, &o).unwrap_err().starts_with("rules[0] (openai-models) is a fallback rule"));
    // One priority, no retry: weighted balancing, rendered as before.
    let mut plugin = demo_plugin();
    plugin["rules"][2]["backends"] = json!([{"name": "vllm", "priority": 2}, {"name": "openai", "priority": 2}]);
    assert!(render(&plugin, &backends, &o).is_ok());
}

#[test]
fn bad_input_is_an_error() {
    let o = EgOptions::default();
    assert!(render(&json!([]), &[], &o).unwrap_err().contains("mapping"));
    assert!(render(&demo_plugin(), &demo_backends()[..1], &o).unwrap_err().contains("vllm"));
    let bad = EgOptions { digest: "sha256:xyz".into(), ..EgOptions::default() };
    assert!(render(&demo_plugin(), &demo_backends(), &bad).unwrap_err().contains("digest"));
    let bad = EgOptions { namespace: "Not_Valid".into(), ..EgOptions::default() };
    assert!(render(&demo_plugin(), &demo_backends(), &bad).is_err());
    let mut mixed = demo_backends();
    mixed[0].endpoints.push(("10.0.0.1".into(), 443));
    assert!(render(&demo_plugin(), &mixed, &o).unwrap_err().contains("mixes"));
}

#[test]
fn plugin_json_round_trips_awkward_values() {
    let plugin = json!({
        "backends": [{"name": "b", "schema": "OpenAI", "headers": {"set": {"X-A": "true", "X-B": "1.5", "x-c": "a: b #c",
            "x-d": "", "x-e": "-", "x-f": "ünïcode \"q\" \\ \n"}, "remove": []}, "pass_through_authorization": true}],
        "rules": [{"match": {}, "backends": [{"name": "b", "weight": 3}]}],
        "models": [[], {}, null, 7, -1, "null", "~", "yes", "0x1f", "1e3", "*", "&a", "!t", "%p", "@at", "`b`"],
        "max_metric_label_sets": 10
    });
    let backends =
        vec![EgBackend { name: "b".into(), endpoints: vec![("b.example".into(), 80)], tls: false, host_rewrite: None }];
    let out = render(&plugin, &backends, &EgOptions::default()).unwrap();
    let d = docs(&out);
    assert_eq!(
        kind(&d, "EnvoyExtensionPolicy")[0]["spec"]["wasm"][0]["config"],
        render_eg::with_client_header(&plugin)
    );
}
