//! Golden files: every config format → plugin config + Envoy bootstrap, compared byte for byte
//! with `tests/golden/<case>/{plugin.json,envoy.yaml,warnings.txt}`; then the plugin config is
//! parsed by the filter's own parser and the bootstrap checked by `envoy --mode validate`. No
//! golden file may contain a credential of the case's environment or config (they name variables).
//!
//! A case directory holds one input: `config.yaml` (format detected), `endpoints.yaml` (AIBrix),
//! `demo` (demo mode), or only `env` (auto-configuration). `env` (KEY=VALUE lines) is the
//! environment for `${VAR}` substitution, auto-configuration and Envoy.
//! `UPDATE_GOLDEN=1 cargo test -p llmgw --test golden` rewrites the expected files.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use llmgw::bootstrap::{self, Options};
use llmgw::model::{Format, Gateway, MapEnv};
use llmgw::{autoconfig, demo, formats, validate};

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    // A case has an input; other folders (e.g. `envoy-gateway`, render_eg_golden's) are not cases.
    let is_case = |p: &PathBuf| ["config.yaml", "endpoints.yaml", "demo", "env"].iter().any(|f| p.join(f).is_file());
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(&root).unwrap().flatten().map(|e| e.path()).filter(|p| p.is_dir() && is_case(p)).collect();
    dirs.sort();
    assert!(dirs.len() >= 9, "golden cases missing under {}", root.display());
    dirs
}

fn env_of(dir: &Path) -> MapEnv {
    let text = std::fs::read_to_string(dir.join("env")).unwrap_or_default();
    MapEnv(
        text.lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect(),
    )
}

fn gateway(dir: &Path, env: &MapEnv) -> Gateway {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    if let Some(text) = read("config.yaml") {
        return formats::load_text("config.yaml", &text, env, None).unwrap_or_else(|e| panic!("{e}"));
    }
    if let Some(text) = read("endpoints.yaml") {
        return formats::load_text("endpoints.yaml", &text, env, Some(Format::AIBrix))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    if dir.join("demo").exists() {
        return demo::gateway(18000);
    }
    autoconfig::from_env(env).unwrap_or_else(|e| panic!("{e}")).expect("the case's env sets a provider key")
}

fn options(g: &Gateway, wasm: &str) -> Options {
    Options {
        address: "127.0.0.1".into(),
        port: g.port.unwrap_or(1975),
        admin_address: "127.0.0.1".into(),
        admin_port: 9901,
        wasm: wasm.into(),
        ca_bundle: "/etc/ssl/certs/ca-certificates.crt".into(),
        rls_port: bootstrap::DEFAULT_RLS_PORT,
    }
}

fn compare(dir: &Path, file: &str, actual: &str, failures: &mut Vec<String>) {
    let path = dir.join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        if actual.is_empty() {
            let _ = std::fs::remove_file(&path);
        } else {
            std::fs::write(&path, actual).unwrap();
        }
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected != actual {
        failures.push(format!(
            "{}: differs from the golden file (UPDATE_GOLDEN=1 to accept)\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        ));
    }
}

/// Credentials a case holds: the values of its `env` that look like keys (`*KEY*`, `*SECRET*`,
/// `*TOKEN*`) and those its conversion moved out of the plugin configuration.
fn secrets_of(dir: &Path, env: &MapEnv, g: &Gateway) -> Vec<(String, String)> {
    let _ = dir;
    let mut out: Vec<(String, String)> = env
        .0
        .iter()
        .filter(|(k, v)| ["KEY", "SECRET", "TOKEN"].iter().any(|w| k.contains(w)) && v.len() >= 4)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.extend(g.secret_env().map(|(k, v)| (k.to_string(), v.to_string())));
    out
}

#[test]
fn conversions_match_golden_files() {
    let mut failures = Vec::new();
    for dir in cases() {
        let env = env_of(&dir);
        let g = gateway(&dir, &env);
        let plugin = validate::plugin_text(&g);
        compare(&dir, "plugin.json", &plugin, &mut failures);
        if serde_json::from_str::<serde_json::Value>(&plugin).is_err() {
            failures.push(format!("{}: the plugin configuration is not JSON:\n{plugin}", dir.display()));
        }
        let envoy = bootstrap::to_yaml(&g, &bootstrap::render(&g, &options(&g, "/opt/llmgw/llmgw_filter.wasm")));
        compare(&dir, "envoy.yaml", &envoy, &mut failures);
        for (var, secret) in secrets_of(&dir, &env, &g) {
            if plugin.contains(&secret) || envoy.contains(&secret) {
                failures.push(format!("{}: the credential of {var} is in the rendered output", dir.display()));
            }
        }
        let warnings: String = g.warnings.iter().map(|w| format!("{w}\n")).collect();
        compare(&dir, "warnings.txt", &warnings, &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Schemas the filter build does not know yet are reported and skipped, so these cases turn on
/// by themselves when the filter learns them.
fn unsupported_schema(g: &Gateway) -> Option<String> {
    // Budgets are gated the same way until the filter enforces them.
    if g.plugin.contains_key("budgets") && !validate::filter_knows_budgets() {
        return Some("budgets (plugin config)".into());
    }
    g.plugin_backends()
        .filter_map(|b| b.get("schema").and_then(|s| s.as_str()))
        .find(|s| !validate::filter_knows_schema(s))
        .map(str::to_string)
}

#[test]
fn plugin_configs_pass_the_filters_parser() {
    for dir in cases() {
        let env = env_of(&dir);
        let g = gateway(&dir, &env);
        if let Some(schema) = unsupported_schema(&g) {
            common::skip(&format!("{}: the filter does not know schema {schema} yet", dir.display()));
            continue;
        }
        validate::validate(&g, &env).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
}

#[test]
fn every_rendered_bootstrap_passes_envoy_validate() {
    let Some((envoy, wasm)) = common::runtime("envoy --mode validate") else { return };
    let tmp = common::temp_dir("golden-validate");
    // Started together: each validation mostly waits for V8 to compile the filter.
    let mut running = Vec::new();
    for dir in cases() {
        let env = env_of(&dir);
        let g = gateway(&dir, &env);
        if let Some(schema) = unsupported_schema(&g) {
            common::skip(&format!("{}: the filter does not know schema {schema} yet", dir.display()));
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let file = tmp.join(format!("{name}.yaml"));
        let text = bootstrap::to_yaml(&g, &bootstrap::render(&g, &options(&g, &wasm.display().to_string())));
        std::fs::write(&file, text).unwrap();
        let mut cmd = Command::new(&envoy);
        cmd.args(["--mode", "validate", "--log-level", "error", "-c"]).arg(&file);
        for v in common::PROVIDER_VARS {
            cmd.env_remove(v);
        }
        cmd.envs(env.0.iter()).envs(g.secret_env()).stdout(Stdio::piped()).stderr(Stdio::piped());
        running.push((name, cmd.spawn().unwrap()));
    }
    for (name, child) in running {
        let out = child.wait_with_output().unwrap();
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() && log.contains("unknown schema") {
            common::skip(&format!(
                "{name}: the built filter ({}) does not know this schema yet: rebuild it",
                wasm.display()
            ));
            continue;
        }
        assert!(out.status.success(), "{name}: envoy --mode validate failed:\n{log}");
    }
    let _ = std::fs::remove_dir_all(tmp);
}

/// `llmgw render --target envoy-gateway` renders the budgets of `aigw-quota` back out as a
/// QuotaPolicy (golden `quota-policy.yaml`, checked against the CRD by the e2e manifests test), and
/// reading that QuotaPolicy instead of the original gives the same budgets.
#[test]
fn budgets_render_back_as_a_quota_policy() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/aigw-quota");
    let text = std::fs::read_to_string(dir.join("config.yaml")).unwrap();
    let g = formats::load_text("config.yaml", &text, &MapEnv::default(), None).unwrap();
    let quotas = llmgw::cli::eg_quotas(&g).unwrap();
    let names: Vec<String> = g.upstreams.iter().map(|u| u.name.clone()).collect();
    let opts =
        llmgw::render_eg::EgOptions { namespace: "default".into(), name: "budgets".into(), ..Default::default() };
    let rendered = llmgw::render_eg::quota_policy(&quotas, &names, &opts).unwrap();
    let mut failures = Vec::new();
    compare(&dir, "quota-policy.yaml", &rendered, &mut failures);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(!rendered.contains("sk-golden"), "no key in the rendered QuotaPolicy");

    let original =
        text.split("\n---\n").filter(|d| !d.contains("kind: QuotaPolicy")).collect::<Vec<_>>().join("\n---\n");
    let again = format!("{original}\n{rendered}");
    let g2 = formats::load_text("config.yaml", &again, &MapEnv::default(), None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g2.budgets, g.budgets);
}

/// What a QuotaPolicy cannot express is refused, naming the budget.
#[test]
fn budgets_a_quota_policy_cannot_express_are_refused() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/llmgw-budgets");
    let g = gateway(&dir, &env_of(&dir));
    let e = llmgw::cli::eg_quotas(&g).unwrap_err().to_string();
    assert!(e.contains("budget team-a-tokens-per-day") && e.contains("no model"), "{e}");
}
