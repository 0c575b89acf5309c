//! `llmgw render` and argument handling, as a user runs them (no Envoy needed).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn llmgw() -> Command {
    let mut cmd = Command::new(common::LLMGW);
    common::clear_provider_env(&mut cmd);
    cmd.env("LLMGW_WASM", "/nonexistent/llmgw_filter.wasm");
    cmd
}

#[test]
fn render_prints_a_bootstrap_that_keeps_keys_in_the_environment() {
    let mut cmd = llmgw();
    cmd.env("OPENAI_API_KEY", "sk-secret-value").args(["render", "--port", "8081"]);
    let (code, out, err) = common::output(cmd);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("# Envoy bootstrap rendered by `llmgw` from environment"), "{out}");
    assert!(out.contains(r#""bearer_env": "OPENAI_API_KEY""#) && out.contains("port_value: 8081"), "{out}");
    assert!(!out.contains("sk-secret-value"), "the key must not be printed");
    assert!(err.contains("Envoy must run with these variables set (the filter reads them): OPENAI_API_KEY"), "{err}");
    // The wasm named by LLMGW_WASM does not exist: said, and the file name used instead.
    assert!(err.contains("LLMGW_WASM: /nonexistent/llmgw_filter.wasm does not exist"), "{err}");

    let dir = common::temp_dir("render-out");
    let file = dir.join("envoy.yaml");
    // An existing file readable by others becomes private too.
    std::fs::write(&file, "old").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = llmgw();
    cmd.env("OPENAI_API_KEY", "k").arg("render").arg("-o").arg(&file);
    let (code, out, err) = common::output(cmd);
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty());
    assert!(std::fs::read_to_string(&file).unwrap().contains("cluster_name: openai"));
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let _ = std::fs::remove_dir_all(dir);
}

/// Each OpenAI-compatible preset as `llmgw check --probe` runs it (no Envoy): its key and base URL
/// variables, the base URL a mock under the preset's documented path. The mock sees that path and
/// the key as `Authorization: Bearer`; the output names the variables and never shows the key.
#[test]
fn check_probes_every_preset_with_its_key() {
    let mock = common::Mock::start("preset");
    for preset in llmgw::autoconfig::PRESETS {
        for key_var in preset.key_vars {
            let path = llmgw::url::BaseUrl::parse(preset.default_url).unwrap().path;
            let key = format!("sk-{}-{}-must-not-leak", preset.backend, key_var.len());
            let mut cmd = llmgw();
            cmd.env("ENVOY_BIN", "/nonexistent/envoy")
                .env(key_var, &key)
                .env(preset.base_url_var, format!("{}{path}", mock.url()))
                .args(["check", "--probe", "--timeout", "5"]);
            let (code, out, err) = common::output(cmd);
            assert_eq!(code, 0, "{key_var}\n{out}\n{err}");
            assert!(out.contains(&format!("config OK: environment ({key_var}, {})", preset.base_url_var)), "{out}");
            let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
            assert!(rows.iter().any(|r| r.len() >= 3 && r[..3] == [preset.backend, "OpenAI", "YES"]), "{out}");
            assert!(!out.contains(&key) && !err.contains(&key), "{key_var}: the key shows\n{out}\n{err}");
            let requests = mock.requests();
            let probe = requests.last().unwrap();
            // No path in DeepSeek's base URL: the default /v1, which DeepSeek accepts.
            let prefix = if path.is_empty() { "/v1" } else { path.as_str() };
            assert_eq!(probe["path"], format!("{prefix}/models"), "{key_var}");
            assert_eq!(probe["headers"]["authorization"], format!("Bearer {key}"), "{key_var}");
        }
    }
}

/// A config with literal keys: neither target's output, nor its messages, contain them; the
/// bootstrap names a variable, and the messages say which credential it must hold.
#[test]
fn render_moves_literal_keys_out_of_every_output() {
    let dir = common::temp_dir("render-literal");
    let file = dir.join("llmgw.yaml");
    std::fs::write(
        &file,
        "backends:\n  - name: openai\n    url: https://api.openai.com/v1\n    schema: OpenAI\n    \
         auth: {bearer: sk-literal-in-file}\n  - name: bedrock\n    url: https://bedrock-runtime.us-east-1.amazonaws.com\n    \
         schema: AWSBedrock\n    region: us-east-1\n    \
         auth: {aws: {access_key_id: AKIALITERAL, secret_access_key: aws-secret-literal}}\nrules:\n  - backends: [{name: openai}]\n",
    )
    .unwrap();
    for target in ["envoy", "envoy-gateway"] {
        let out_file = dir.join(format!("{target}.yaml"));
        let mut cmd = llmgw();
        cmd.args(["render", "--target", target]).arg(&file).arg("-o").arg(&out_file);
        let (code, out, err) = common::output(cmd);
        assert_eq!(code, 0, "{target}: {err}");
        let text = std::fs::read_to_string(&out_file).unwrap();
        for secret in ["sk-literal-in-file", "AKIALITERAL", "aws-secret-literal"] {
            for (what, t) in [("output", &text), ("stdout", &out), ("stderr", &err)] {
                assert!(!t.contains(secret), "{target}: {secret} in the {what}");
            }
        }
        assert!(
            text.contains("LLMGW_SECRET_OPENAI_BEARER") && text.contains("LLMGW_SECRET_BEDROCK_AWS_SECRET_ACCESS_KEY"),
            "{text}"
        );
        assert!(
            err.contains("LLMGW_SECRET_OPENAI_BEARER must hold the credential written in")
                && err.contains("backends[0].auth.bearer"),
            "{err}"
        );
        if target == "envoy-gateway" {
            assert!(err.contains("--from-literal=LLMGW_SECRET_OPENAI_BEARER=\"$LLMGW_SECRET_OPENAI_BEARER\""), "{err}");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn render_without_a_source_explains() {
    let mut cmd = llmgw();
    cmd.arg("render");
    let (code, _out, err) = common::output(cmd);
    assert_eq!(code, 1);
    assert!(err.contains("nothing to render: no config file and no provider key"), "{err}");
}

#[test]
fn config_and_endpoints_exclude_each_other() {
    let mut cmd = llmgw();
    cmd.args(["check", "a.yaml", "--endpoints", "b.yaml"]);
    let (code, _out, err) = common::output(cmd);
    assert_eq!(code, 2, "clap usage error");
    assert!(err.contains("cannot be used with"), "{err}");
}

/// `render --target envoy-gateway` maps llmgw's model onto the Envoy Gateway renderer: the
/// committed manifests are exactly what the CLI renders from their config.
#[test]
fn render_envoy_gateway_matches_the_committed_manifests() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let config = root.join("envoy-configs/envoy-gateway/llmgw-config.yaml");
    let committed = root.join("envoy-configs/envoy-gateway/llmgw.yaml");
    if !config.is_file() || !committed.is_file() {
        common::skip("render_envoy_gateway_matches_the_committed_manifests: envoy-configs/envoy-gateway/ is not there");
        return;
    }
    let mut cmd = llmgw();
    cmd.args(["render", "--target", "envoy-gateway"]).arg(&config);
    let (code, out, err) = common::output(cmd);
    assert_eq!(code, 0, "{err}");
    assert!(out == std::fs::read_to_string(&committed).unwrap(), "differs from {}", committed.display());
}

/// Tracing on Envoy Gateway: the plugin keeps its `tracing` section, and the collector's cluster
/// (which no route references, so Envoy Gateway would not make it) is added by the
/// EnvoyPatchPolicy under the name the filter sends spans to.
#[test]
fn render_envoy_gateway_patches_in_the_collector_cluster() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let config = root.join("envoy-configs/envoy-gateway/llmgw-config.yaml");
    if !config.is_file() {
        common::skip(
            "render_envoy_gateway_patches_in_the_collector_cluster: envoy-configs/envoy-gateway/ is not there",
        );
        return;
    }
    let mut cmd = llmgw();
    cmd.args(["render", "--target", "envoy-gateway"])
        .arg(&config)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "https://phoenix.observability.svc:6006")
        .env("OTEL_SERVICE_NAME", "edge");
    let (code, out, err) = common::output(cmd);
    assert_eq!(code, 0, "{err}");
    let docs: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(&out)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .filter(|v: &serde_json::Value| !v.is_null())
        .collect();
    let eep = docs.iter().find(|d| d["kind"] == "EnvoyExtensionPolicy").unwrap();
    let plugin: serde_json::Value = match &eep["spec"]["wasm"][0]["config"] {
        serde_json::Value::String(s) => serde_json::from_str(s).unwrap(),
        v => v.clone(),
    };
    let cluster = plugin["tracing"]["cluster"].as_str().unwrap().to_string();
    assert_eq!(plugin["tracing"]["service_name"], "edge");
    let epp = docs.iter().find(|d| d["kind"] == "EnvoyPatchPolicy").unwrap();
    let patch = epp["spec"]["jsonPatches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] == "type.googleapis.com/envoy.config.cluster.v3.Cluster")
        .expect("a cluster patch");
    assert_eq!((patch["name"].as_str(), patch["operation"]["op"].as_str()), (Some(cluster.as_str()), Some("add")));
    let value = &patch["operation"]["value"];
    assert_eq!(value["name"], cluster.as_str());
    let address = &value["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
    assert_eq!(
        (address["address"].as_str(), address["port_value"].as_u64()),
        (Some("phoenix.observability.svc"), Some(6006))
    );
    // TLS to the collector, verified against the proxy pod's system CAs.
    assert!(value["transport_socket"].to_string().contains("/etc/ssl/certs/ca-certificates.crt"), "{value}");
    assert!(!err.contains("not rendered"), "{err}");
}
