//! `llmgw run` on real Envoy, for a data path that does not break or leak: a trapped filter VM
//! is replaced on every worker (`failure_policy: FAIL_RELOAD`) and `/health` sees it; no
//! credential in Envoy's admin output, llmgw's output or the files it writes; `--debug` puts the
//! Wasm component at debug level; Envoy AI Gateway's Ollama example starts without an OpenAI key;
//! Envoy and the filter are found from llmgw's install location, never from the current directory.
//! Skipped (with a message) when Envoy or the filter's .wasm cannot be found; the trap test also
//! needs the test-only module of `make wasm-trap` (`LLMGW_WASM_TRAP`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{chat, eventually, get, post, Gateway, Mock, Started};

const TRAP_HEADER: (&str, &str) = ("x-llmgw-test-trap", "1");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The test-only filter that traps on `x-llmgw-test-trap` (`make wasm-trap`).
fn trap_wasm(test: &str) -> Option<PathBuf> {
    match std::env::var_os("LLMGW_WASM_TRAP").map(PathBuf::from) {
        Some(p) if p.is_file() => Some(p),
        other => {
            common::skip(&format!(
                "{test}: the trapping test module is missing ({other:?}): `make wasm-trap`, then set LLMGW_WASM_TRAP"
            ));
            None
        }
    }
}

/// Thread ids of Envoy's log lines reporting a filter VM trap.
fn trapped_threads(log: &str) -> BTreeSet<String> {
    log.lines()
        .filter(|l| llmgw::admin::trap_line(l))
        .filter_map(|l| l.split("][").nth(1).map(str::to_string))
        .collect()
}

/// A trap takes down the VM of one worker; Envoy replaces it on that worker's next request.
/// Shown with two workers: the trapped state is visible (`/metrics`), `/health` brings the VM
/// back and says OK, every later request succeeds; then with both workers trapped at once.
#[test]
fn fail_reload_replaces_a_trapped_vm_on_every_worker() {
    let test = "fail_reload_replaces_a_trapped_vm_on_every_worker";
    let Some((envoy, _)) = common::runtime(test) else { return };
    let Some(trap) = trap_wasm(test) else { return };
    let mock = Mock::start("openai");
    let mut cmd = common::llmgw(&envoy, &trap);
    cmd.env("OPENAI_API_KEY", "sk-trap").env("OPENAI_BASE_URL", format!("{}/v1", mock.url()));
    let gw = Gateway::ready("fail-reload", cmd, &["--concurrency", "2"]);
    let url = format!("{}/v1/chat/completions", gw.base());
    let health = || get(&format!("{}/health", gw.admin()), &[]).unwrap();
    assert_eq!(gw.metric("llmgw_wasm_vm_traps_total"), Some(0));
    assert_eq!(gw.metric("llmgw_wasm_vms_down"), Some(0));

    // One trap: that request fails, and until a request reaches that worker its VM is down.
    let (status, body) = post(&url, &chat("gpt-4o-mini", "trap"), &[TRAP_HEADER]);
    assert_eq!(status, 503, "{body}");
    let seen = eventually(Duration::from_secs(10), || (gw.metric("llmgw_wasm_vm_traps_total")? == 1).then_some(()));
    assert!(seen.is_some(), "the trap is not in Envoy's log:\n{}", gw.stderr());
    assert_eq!(gw.metric("llmgw_wasm_vms_down"), Some(1), "the trapped state");
    // /health's probes reach the trapped worker, Envoy replaces its VM, and /health says OK.
    let ok = eventually(Duration::from_secs(30), || (health() == (200, "OK".to_string())).then_some(()));
    assert!(ok.is_some(), "/health: {:?}", health());
    assert_eq!(gw.metric("llmgw_wasm_vms_down"), Some(0));
    // Every later request succeeds (fresh connections, spread over both workers by the kernel).
    for i in 0..20 {
        let (status, body) = post(&url, &chat("gpt-4o-mini", &format!("after {i}")), &[]);
        assert_eq!(status, 200, "request {i} after the trap: {body}");
    }

    // Both workers trapped at once (a trap request that lands on the worker already down is
    // answered without running the filter, or, past the reload backoff, reloads and traps again).
    let mut tries = 0;
    while gw.metric("llmgw_wasm_vms_down") != Some(2) {
        assert!(tries < 80, "could not trap both workers:\n{}", gw.stderr());
        post(&url, &chat("gpt-4o-mini", "trap"), &[TRAP_HEADER]);
        std::thread::sleep(Duration::from_millis(150));
        tries += 1;
    }
    let threads = trapped_threads(&gw.stderr());
    assert!(threads.len() >= 2, "traps on two worker threads: {threads:?}");
    // While both are down, /health either brought them back or says why it is not OK.
    let (status, body) = health();
    assert!(status == 200 || body.contains("Wasm VM is down on"), "{status} {body}");
    // Past Envoy's reload backoff (1 s), no worker stays dead.
    std::thread::sleep(Duration::from_millis(1500));
    for i in 0..20 {
        let (status, body) = post(&url, &chat("gpt-4o-mini", &format!("after both {i}")), &[]);
        assert_eq!(status, 200, "request {i} after both traps: {body}");
    }
    let ok = eventually(Duration::from_secs(30), || (health() == (200, "OK".to_string())).then_some(()));
    assert!(ok.is_some(), "/health: {:?}", health());
    assert_eq!(gw.metric("llmgw_wasm_vms_down"), Some(0));
    assert!(gw.stderr().contains("failed: Uncaught RuntimeError: unreachable"), "Envoy's log is forwarded");
}

/// Every file directly in `dir`, with its mode.
fn files(dir: &Path) -> Vec<(PathBuf, u32)> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| (e.path(), e.metadata().unwrap().permissions().mode() & 0o777))
        .collect()
}

/// Credentials given literally in the config and through the environment reach the providers and
/// nothing else: not Envoy's admin output (`/config_dump`), not llmgw's output or Envoy's log at
/// debug level, not the files `llmgw run` writes (private: a `tempfile` directory 0700, files
/// 0600). `--debug` runs Envoy's Wasm component at debug level.
#[test]
fn credentials_reach_the_providers_and_nothing_else() {
    let Some((envoy, wasm)) = common::runtime("credentials_reach_the_providers_and_nothing_else") else { return };
    const LITERAL: &str = "sk-e2e-literal-7f3a9c";
    const FROM_ENV: &str = "sk-e2e-env-51d2e8";
    let (a, b) = (Mock::start("literal"), Mock::start("fromenv"));
    let dir = common::temp_dir("secrets-config");
    let xdg = dir.join("xdg");
    std::fs::create_dir_all(&xdg).unwrap();
    let config = dir.join("llmgw.yaml");
    std::fs::write(
        &config,
        format!(
            "backends:\n  - name: literal\n    url: {}/v1\n    schema: OpenAI\n    auth: {{bearer: {LITERAL}}}\n  \
             - name: fromenv\n    url: {}/v1\n    schema: OpenAI\n    auth: {{bearer_env: E2E_PROVIDER_KEY}}\n\
             rules:\n  - match: {{model: {{exact: a}}}}\n    backends: [{{name: literal}}]\n  - backends: [{{name: fromenv}}]\n",
            a.url(),
            b.url()
        ),
    )
    .unwrap();
    let mut cmd = common::llmgw(&envoy, &wasm);
    cmd.env("E2E_PROVIDER_KEY", FROM_ENV).env("XDG_RUNTIME_DIR", &xdg);
    let (port, admin) = (common::free_port(), common::free_port());
    let args: Vec<String> = vec![
        config.display().to_string(),
        "--debug".into(),
        "--port".into(),
        port.to_string(),
        "--admin-port".into(),
        admin.to_string(),
    ];
    let mut gw = match Gateway::start_in("secrets", cmd, port, admin, &args, false) {
        Started::Ready(g) => g,
        Started::Exited(s, err) => panic!("llmgw run exited ({s}):\n{err}"),
    };
    let secrets = [LITERAL, FROM_ENV];
    let leaks = |what: &str, text: &str| {
        for s in secrets {
            assert!(!text.contains(s), "{s} is in {what}");
        }
    };

    // The providers get their keys.
    let url = format!("{}/v1/chat/completions", gw.base());
    assert_eq!(post(&url, &chat("a", "hi"), &[]).0, 200);
    assert_eq!(post(&url, &chat("b", "hi"), &[]).0, 200);
    assert_eq!(a.requests()[0]["headers"]["authorization"], format!("Bearer {LITERAL}"));
    assert_eq!(b.requests()[0]["headers"]["authorization"], format!("Bearer {FROM_ENV}"));
    // The gateway's routing headers stay in the gateway; the access log still names both.
    for h in ["x-llmgw-backend", "x-ai-eg-model"] {
        assert!(a.requests()[0]["headers"].get(h).is_none(), "{h} reached the provider");
    }
    let logged = eventually(Duration::from_secs(10), || {
        gw.stdout().lines().find(|l| l.contains("\"model\":\"b\"")).map(str::to_string)
    });
    let entry: serde_json::Value = serde_json::from_str(&logged.expect("an access log line for model b")).unwrap();
    assert_eq!(entry["backend"], "fromenv");
    let (status, body) = post(&url, &serde_json::json!({"model": 7}), &[]);
    assert_eq!(status, 400);
    leaks("an error body", &body);

    // The run directory: made by tempfile (random name, 0700), its files 0600, no key in them.
    let runs: Vec<PathBuf> = std::fs::read_dir(&xdg).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    let name = run.file_name().unwrap().to_string_lossy().to_string();
    assert!(name.starts_with("llmgw-") && name != format!("llmgw-{}", gw.child.id()), "{name}");
    assert_eq!(std::fs::metadata(run).unwrap().permissions().mode() & 0o777, 0o700);
    for (file, mode) in files(run) {
        assert_eq!(mode, 0o600, "{}", file.display());
        leaks(&file.display().to_string(), &std::fs::read_to_string(&file).unwrap());
    }
    let bootstrap = std::fs::read_to_string(run.join("envoy.yaml")).unwrap();
    assert!(bootstrap.contains("LLMGW_SECRET_LITERAL_BEARER") && bootstrap.contains("E2E_PROVIDER_KEY"));

    // Envoy's own admin: the config dump names the variables only.
    let envoy_admin = std::fs::read_to_string(run.join("admin-address.txt")).unwrap();
    for path in ["/config_dump", "/config_dump?include_eds", "/server_info", "/stats", "/clusters", "/listeners"] {
        let (status, text) = get(&format!("http://{}{path}", envoy_admin.trim()), &[]).unwrap();
        assert_eq!(status, 200, "{path}");
        leaks(&format!("Envoy's admin {path}"), &text);
        if path == "/config_dump" {
            assert!(text.contains("LLMGW_SECRET_LITERAL_BEARER") && text.contains("E2E_PROVIDER_KEY"), "{text}");
            assert!(text.contains("FAIL_RELOAD"), "failure_policy in the running config");
        }
    }
    let (_, metrics) = get(&format!("{}/metrics", gw.admin()), &[]).unwrap();
    leaks("llmgw's /metrics", &metrics);

    // Envoy holds the keys in its environment, and runs the Wasm component at debug level.
    let pid = gw.envoy_pid().expect("envoy is llmgw's child");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(environ.split('\0').any(|v| v == format!("LLMGW_SECRET_LITERAL_BEARER={LITERAL}")));
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap().replace('\0', " ");
    assert!(cmdline.contains("--component-log-level wasm:debug"), "{cmdline}");
    let debug = eventually(Duration::from_secs(10), || gw.stderr().contains("][debug][wasm]").then_some(()));
    assert!(debug.is_some(), "no debug line of the Wasm component:\n{}", gw.stderr());

    gw.signal(libc::SIGTERM);
    gw.wait(Duration::from_secs(30)).expect("llmgw exits");
    leaks("llmgw's stderr (Envoy's debug log included)", &gw.stderr());
    leaks("the access log", &gw.stdout());
    // --debug keeps the run directory; it is still private.
    assert!(run.join("envoy.yaml").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Envoy AI Gateway's Ollama example names `${OPENAI_API_KEY}` for the backend's key; an Ollama
/// user has none: `llmgw run` warns, starts, and sends no key (as `aigw run` sends an empty one).
#[test]
fn ollama_example_runs_without_an_openai_key() {
    let Some((envoy, wasm)) = common::runtime("ollama_example_runs_without_an_openai_key") else { return };
    let ollama = Mock::start("ollama");
    let mut cmd = common::llmgw(&envoy, &wasm);
    cmd.env("OLLAMA_PORT", ollama.port.to_string());
    let example = repo().join("examples/envoy-ai-gateway/ollama.yaml");
    let gw = Gateway::ready("ollama-no-key", cmd, &[example.to_str().unwrap()]);
    let err = gw.stderr();
    assert!(err.contains("warning: ") && err.contains("environment variable OPENAI_API_KEY is not set"), "{err}");
    let (status, text) = post(&format!("{}/v1/chat/completions", gw.base()), &chat("qwen2.5:0.5b", "hi"), &[]);
    assert_eq!(status, 200, "{text}");
    let reqs = ollama.requests();
    assert_eq!(reqs[0]["path"], "/v1/chat/completions");
    assert!(reqs[0]["headers"].get("authorization").is_none(), "{:?}", reqs[0]);
}

/// `llmgw` looks next to its executable and in `../share/llmgw/`, not in the current directory:
/// a copy elsewhere, run from the repository root (which has `.venv/` and `target/`), finds
/// nothing until Envoy and the filter are installed next to it.
#[test]
fn envoy_and_filter_come_from_the_install_location_not_the_working_directory() {
    let Some((envoy, wasm)) = common::runtime("install_location") else { return };
    let prefix = tempfile::tempdir().unwrap();
    let bin = prefix.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = bin.join("llmgw");
    // A hard link keeps the executable's path (a symlink would resolve to the original).
    if std::fs::hard_link(common::LLMGW, &exe).is_err() {
        std::fs::copy(common::LLMGW, &exe).unwrap();
    }
    let check = || {
        let mut cmd = Command::new(&exe);
        cmd.env_clear().env("PATH", "/usr/bin:/bin").env("HOME", prefix.path()).current_dir(repo()).arg("check");
        common::output(cmd)
    };
    let (code, out, err) = check();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("envoy: not checked (Envoy was not found"), "{out}");

    let share = prefix.path().join("share/llmgw");
    std::fs::create_dir_all(&share).unwrap();
    std::os::unix::fs::symlink(&envoy, share.join("envoy")).unwrap();
    let (code, out, err) = check();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("envoy: not checked (the llmgw filter (llmgw_filter.wasm) was not found"), "{out}");

    std::os::unix::fs::symlink(&wasm, share.join("llmgw_filter.wasm")).unwrap();
    let (code, out, err) = check();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("bootstrap valid"), "{out}{err}");
}
