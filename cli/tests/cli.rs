//! `llmgw render` and argument handling, as a user runs them (no Envoy needed).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

fn llmgw() -> Command {
    let mut cmd = Command::new(common::LLMGW);
    for v in common::PROVIDER_VARS {
        cmd.env_remove(v);
    }
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
    assert!(out.contains("bearer_env: OPENAI_API_KEY") && out.contains("port_value: 8081"), "{out}");
    assert!(!out.contains("sk-secret-value"), "the key must not be printed");
    assert!(err.contains("Envoy must run with these variables set (the filter reads them): OPENAI_API_KEY"), "{err}");
    // The wasm named by LLMGW_WASM does not exist: said, and the file name used instead.
    assert!(err.contains("LLMGW_WASM: /nonexistent/llmgw_filter.wasm does not exist"), "{err}");

    let dir = common::temp_dir("render-out");
    let file = dir.join("envoy.yaml");
    let mut cmd = llmgw();
    cmd.env("OPENAI_API_KEY", "k").arg("render").arg("-o").arg(&file);
    let (code, out, err) = common::output(cmd);
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty());
    assert!(std::fs::read_to_string(&file).unwrap().contains("cluster_name: openai"));
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
