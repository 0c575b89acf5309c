//! `llmgw run` as a subprocess with real Envoy and the built filter, against mock providers on
//! loopback. Skipped (with a message) when Envoy or the filter's .wasm cannot be found.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{chat, eventually, get, post, Gateway, Mock, Started};
use serde_json::{json, Value};

fn header<'a>(request: &'a Value, name: &str) -> Option<&'a str> {
    request["headers"][name].as_str()
}

fn body(request: &Value) -> Value {
    serde_json::from_str(request["body"].as_str().unwrap_or("")).unwrap_or(Value::Null)
}

/// OPENAI_API_KEY + OPENAI_BASE_URL (+ org/project) pointed at a mock: routing, credentials,
/// headers, streaming, the filter's own /v1/models, /health, /metrics and `llmgw stat`.
#[test]
fn env_openai_style() {
    let Some((envoy, wasm)) = common::runtime("env_openai_style") else { return };
    let mock = Mock::start("openai");
    let mut cmd = common::llmgw(&envoy, &wasm);
    cmd.env("OPENAI_API_KEY", "sk-e2e")
        .env("OPENAI_BASE_URL", format!("{}/v1", mock.url()))
        .env("OPENAI_ORG_ID", "org-e2e")
        .env("OPENAI_PROJECT_ID", "proj_e2e");
    let gw = Gateway::ready("env-openai", cmd, &[]);
    assert!(gw.stderr().contains("auto-configured from the environment"), "{}", gw.stderr());

    let (status, text) = post(
        &format!("{}/v1/chat/completions", gw.base()),
        &chat("gpt-4o-mini", "Say this is a test!"),
        &[("authorization", "Bearer client-key-must-not-leak")],
    );
    assert_eq!(status, 200, "{text}");
    let reply: Value = serde_json::from_str(&text).unwrap();
    assert!(reply["choices"][0]["message"]["content"].as_str().unwrap().contains("Hello from openai"));
    assert_eq!(reply["usage"]["prompt_tokens"], 5);

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let r = &reqs[0];
    assert_eq!(r["path"], "/v1/chat/completions");
    assert_eq!(header(r, "authorization"), Some("Bearer sk-e2e"));
    assert_eq!(header(r, "openai-organization"), Some("org-e2e"));
    assert_eq!(header(r, "openai-project"), Some("proj_e2e"));
    assert_eq!(header(r, "host"), Some(format!("127.0.0.1:{}", mock.port).as_str()));
    assert_eq!(body(r)["model"], "gpt-4o-mini");

    // Streaming passes through as SSE.
    let mut req = chat("gpt-4o-mini", "stream please");
    req["stream"] = json!(true);
    let (status, text) = post(&format!("{}/v1/chat/completions", gw.base()), &req, &[]);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("chat.completion.chunk") && text.trim_end().ends_with("data: [DONE]"), "{text}");

    // The filter answers /v1/models itself; /health is OK; /metrics carries labelled GenAI metrics.
    let (status, models) = get(&format!("{}/v1/models", gw.base()), &[]).unwrap();
    assert_eq!(status, 200, "{models}");
    assert_eq!(get(&format!("{}/health", gw.admin()), &[]).unwrap(), (200, "OK".to_string()));
    let (status, metrics) = get(&format!("{}/metrics", gw.admin()), &[]).unwrap();
    assert_eq!(status, 200);
    let line = metrics
        .lines()
        .find(|l| l.starts_with("llmgw_requests_total{") && l.contains("outcome=\"success\""))
        .unwrap_or_else(|| panic!("no llmgw_requests_total in /metrics"));
    for label in ["llmgw_backend=\"openai\"", "gen_ai_request_model=\"gpt-4o-mini\"", "gen_ai_operation_name=\"chat\""]
    {
        assert!(line.contains(label), "{line}");
    }
    // Envoy's `filter` regex runs on the stat name before tag extraction.
    let (status, filtered) = get(&format!("{}/metrics?filter=token", gw.admin()), &[]).unwrap();
    assert_eq!(status, 200);
    assert!(filtered.contains("gen_ai_client_token_usage") && !filtered.contains("llmgw_requests_total"), "{filtered}");
    assert_eq!(get(&format!("{}/nope", gw.admin()), &[]).unwrap().0, 404);

    // `llmgw stat`: histograms reach /stats/prometheus at Envoy's stats flush (5 s), so poll.
    let stat = eventually(Duration::from_secs(20), || {
        let mut cmd = std::process::Command::new(common::LLMGW);
        cmd.args(["stat", "--admin-port", &gw.admin_port.to_string()]);
        let (code, out, err) = common::output(cmd);
        assert_eq!(code, 0, "{err}");
        let row = |l: &str| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // Envoy histogram sums are approximate (bucketed): tokens within 1.
            let near = |t: &str, want: f64| t.parse::<f64>().is_ok_and(|v| (v - want).abs() <= 1.0);
            let tokens = cols.get(6).and_then(|t| t.split_once('/'));
            cols.len() == 7
                && cols[..5] == ["openai", "gpt-4o-mini", "chat", "2", "2/0"]
                && tokens.is_some_and(|(i, o)| near(i, 7.0) && near(o, 16.0))
        };
        out.lines().any(row).then_some(out)
    });
    assert!(stat.is_some(), "llmgw stat never showed openai gpt-4o-mini chat 2 2/0 ... ~7/~16");
    let stat = stat.unwrap();
    assert!(stat.starts_with("BACKEND  MODEL"), "{stat}");

    // The access log is JSON on stdout, with tokens from the filter.
    let log = eventually(Duration::from_secs(5), || gw.stdout().lines().next().map(str::to_string)).unwrap();
    let entry: Value = serde_json::from_str(&log).unwrap_or_else(|e| panic!("{e}: {log}"));
    assert_eq!(entry["backend"], "openai");
    assert_eq!(entry["input_tokens"], "5");
}

/// AZURE_OPENAI_API_KEY + AZURE_OPENAI_ENDPOINT + OPENAI_API_VERSION pointed at a mock.
#[test]
fn env_azure_style() {
    let Some((envoy, wasm)) = common::runtime("env_azure_style") else { return };
    if !llmgw::validate::filter_knows_schema("AzureOpenAI") {
        common::skip("env_azure_style: the filter does not know schema AzureOpenAI yet");
        return;
    }
    let mock = Mock::start("azure");
    let mut cmd = common::llmgw(&envoy, &wasm);
    cmd.env("AZURE_OPENAI_API_KEY", "azure-e2e")
        .env("AZURE_OPENAI_ENDPOINT", mock.url())
        .env("OPENAI_API_VERSION", "2024-12-01-preview");
    let gw = match Gateway::start("env-azure", cmd, &[]) {
        Started::Ready(g) => g,
        Started::Exited(_, err) if err.contains("unknown schema") || err.contains("unknown field") => {
            common::skip(&format!(
                "env_azure_style: the built filter ({}) predates AzureOpenAI: rebuild it",
                wasm.display()
            ));
            return;
        }
        Started::Exited(s, err) => panic!("llmgw run exited ({s}):\n{err}"),
    };
    let (status, text) = post(&format!("{}/v1/chat/completions", gw.base()), &chat("gpt-4o", "hello azure"), &[]);
    assert_eq!(status, 200, "{text}");
    let reqs = mock.requests();
    let r = reqs.last().unwrap();
    let path = r["path"].as_str().unwrap();
    assert!(path.starts_with("/openai/deployments/gpt-4o/chat/completions"), "{path}");
    assert!(path.contains("api-version=2024-12-01-preview"), "{path}");
    assert_eq!(header(r, "api-key"), Some("azure-e2e"));
    assert_eq!(header(r, "authorization"), None);
}

/// An OpenAI-compatible preset through the gateway (Groq: a base URL whose path is not /v1; every
/// preset's variables, path and key are checked without Envoy in cli.rs): the mock sees the
/// preset's path and `Authorization: Bearer <GROQ_API_KEY>`, the banner names Groq, and the key is in
/// no output, no file and not in Envoy's config dump.
#[test]
fn env_openai_compatible_preset() {
    let Some((envoy, wasm)) = common::runtime("env_openai_compatible_preset") else { return };
    let mock = Mock::start("groq");
    let key = "gsk-e2e-must-not-leak";
    let mut cmd = common::llmgw(&envoy, &wasm);
    cmd.env("GROQ_API_KEY", key).env("GROQ_BASE_URL", format!("{}/openai/v1", mock.url()));
    let gw = Gateway::ready("env-groq", cmd, &[]);
    let (status, text) = post(
        &format!("{}/v1/chat/completions", gw.base()),
        &chat("llama-3.3-70b-versatile", "hello groq"),
        &[("authorization", "Bearer client-key-must-not-leak")],
    );
    assert_eq!(status, 200, "{text}");
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0]["path"], "/openai/v1/chat/completions");
    assert_eq!(header(&reqs[0], "authorization"), Some(format!("Bearer {key}").as_str()));
    let banner = "auto-configured from the environment (GROQ_API_KEY, GROQ_BASE_URL): every model goes to Groq";
    let err = eventually(Duration::from_secs(5), || Some(gw.stderr()).filter(|e| e.contains(banner)));
    let err = err.unwrap_or_else(|| panic!("no `{banner}` in:\n{}", gw.stderr()));
    let run = gw.dir.join("run");
    let envoy_admin = std::fs::read_to_string(run.join("admin-address.txt")).unwrap();
    let (status, config_dump) = get(&format!("http://{}/config_dump", envoy_admin.trim()), &[]).unwrap();
    assert_eq!(status, 200);
    assert!(config_dump.contains("GROQ_API_KEY"), "the running config names the variable");
    let bootstrap = std::fs::read_to_string(run.join("envoy.yaml")).unwrap();
    for (what, text) in
        [("stderr", &err), ("stdout", &gw.stdout()), ("/config_dump", &config_dump), ("bootstrap", &bootstrap)]
    {
        assert!(!text.contains(key), "the key is in {what}");
    }
}

/// An Envoy AI Gateway multi-document config, unchanged except for `${VAR}`s: the Gateway's
/// listener port, two providers by model, a default rule, API keys from Secrets.
#[test]
fn envoy_ai_gateway_config() {
    let Some((envoy, wasm)) = common::runtime("envoy_ai_gateway_config") else { return };
    let (a, b) = (Mock::start("alpha"), Mock::start("beta"));
    let dir = common::temp_dir("aigw-config");
    let config = dir.join("aigw.yaml");
    std::fs::write(&config, include_str!("e2e/aigw.yaml")).unwrap();
    let (port, admin) = (common::free_port(), common::free_port());
    let mut cmd = common::llmgw(&envoy, &wasm);
    cmd.env("LISTEN_PORT", port.to_string())
        .env("ALPHA_PORT", a.port.to_string())
        .env("BETA_PORT", b.port.to_string())
        .env("ALPHA_KEY", "sk-alpha");
    let args = vec![config.display().to_string(), "--admin-port".into(), admin.to_string()];
    let gw = match Gateway::start_on("aigw", cmd, port, admin, &args) {
        Started::Ready(g) => g,
        Started::Exited(s, err) => panic!("llmgw run exited ({s}):\n{err}"),
    };
    let err = gw.stderr();
    assert!(err.contains("kinds llmgw run does not support were ignored: Deployment default/unrelated"), "{err}");

    let (status, text) = post(&format!("{}/v1/chat/completions", gw.base()), &chat("gpt-4o-mini", "to alpha"), &[]);
    assert_eq!(status, 200, "{text}");
    let (status, text) = post(&format!("{}/v1/chat/completions", gw.base()), &chat("llama3.2", "to beta"), &[]);
    assert_eq!(status, 200, "{text}");
    let (status, text) = post(&format!("{}/v1/chat/completions", gw.base()), &chat("anything-else", "default"), &[]);
    assert_eq!(status, 200, "{text}");

    let (ra, rb) = (a.requests(), b.requests());
    assert_eq!(ra.len(), 1, "{ra:?}");
    assert_eq!(rb.len(), 2, "{rb:?}");
    assert_eq!(header(&ra[0], "authorization"), Some("Bearer sk-alpha"));
    assert_eq!(header(&ra[0], "x-gateway"), Some("llmgw"));
    assert_eq!(body(&rb[0])["model"], "llama3.2");
    assert_eq!(body(&rb[1])["model"], "anything-else");
    assert_eq!(header(&rb[0], "authorization"), None, "no key configured for beta");
    assert_eq!(rb[0]["path"], "/api/v1/chat/completions", "the AIServiceBackend's prefix");
    let _ = std::fs::remove_dir_all(dir);
}

/// AIBrix's endpoints file: one model, two endpoints, balanced.
#[test]
fn aibrix_endpoints_two_endpoints() {
    let Some((envoy, wasm)) = common::runtime("aibrix_endpoints_two_endpoints") else { return };
    let (a, b) = (Mock::start("vllm-0"), Mock::start("vllm-1"));
    let dir = common::temp_dir("aibrix");
    let file = dir.join("endpoints.yaml");
    std::fs::write(
        &file,
        format!(
            "models:\n  - name: Qwen/Qwen2.5-1.5B-Instruct\n    endpoints:\n      - \"127.0.0.1:{}\"\n      - \"127.0.0.1:{}\"\n",
            a.port, b.port
        ),
    )
    .unwrap();
    let gw = Gateway::ready("aibrix-gw", common::llmgw(&envoy, &wasm), &["--endpoints", file.to_str().unwrap()]);
    for i in 0..6 {
        let (status, text) = post(
            &format!("{}/v1/chat/completions", gw.base()),
            &chat("Qwen/Qwen2.5-1.5B-Instruct", &format!("hi {i}")),
            &[],
        );
        assert_eq!(status, 200, "{text}");
    }
    let (na, nb) = (a.requests().len(), b.requests().len());
    assert_eq!(na + nb, 6);
    assert!(na >= 2 && nb >= 2, "round robin over both endpoints: {na} + {nb}");
    // The model must match, as in AIBrix.
    let (status, text) = post(&format!("{}/v1/chat/completions", gw.base()), &chat("other-model", "hi"), &[]);
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("model_not_found"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `check --probe` against live and dead backends.
#[test]
fn check_probe() {
    let Some((envoy, wasm)) = common::runtime("check_probe") else { return };
    let mock = Mock::start("probe");
    let dir = common::temp_dir("probe");
    let file = dir.join("llmgw.yaml");
    let dead = common::free_port();
    std::fs::write(
        &file,
        format!(
            "backends:\n  - {{name: live, url: \"{}/v1\", schema: OpenAI, auth: {{bearer: sk-probe}}}}\n  \
             - {{name: dead, url: \"http://127.0.0.1:{dead}/v1\", schema: OpenAI}}\nrules:\n  - backends: [{{name: live}}]\n",
            mock.url()
        ),
    )
    .unwrap();
    let mut cmd = common::llmgw(&envoy, &wasm);
    cmd.arg("check").arg(&file).arg("--probe").args(["--timeout", "5"]);
    let (code, out, err) = common::output(cmd);
    assert_eq!(code, 1, "a dead backend fails the check\n{out}\n{err}");
    assert!(out.contains("config OK: "), "{out}");
    assert!(out.contains("bootstrap valid"), "{out}");
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert!(rows.iter().any(|r| r.len() >= 3 && r[..3] == ["NAME", "SCHEMA", "HEALTHY"]), "{out}");
    assert!(rows.iter().any(|r| r.len() >= 4 && r[..4] == ["live", "OpenAI", "YES", "200,"]), "{out}");
    assert!(rows.iter().any(|r| r.len() >= 3 && r[..3] == ["dead", "OpenAI", "NO"]), "{out}");
    let probe = mock.requests();
    assert_eq!(probe[0]["path"], "/v1/models");
    assert_eq!(header(&probe[0], "authorization"), Some("Bearer sk-probe"));
    let _ = std::fs::remove_dir_all(dir);
}

/// Every `curl` line of the README's `## llmgw run` section, verbatim but for the ports, against
/// demo mode (no key, no network).
#[test]
fn readme_curls_in_demo_mode() {
    let Some((envoy, wasm)) = common::runtime("readme_curls_in_demo_mode") else { return };
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme.split("\n## llmgw run").nth(1).expect("README has a `## llmgw run` section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let curls = curl_commands(section);
    assert!(curls.len() >= 4, "README curls: {curls:?}");
    let gw = Gateway::ready("readme", common::llmgw(&envoy, &wasm), &[]);
    assert!(gw.stderr().contains("DEMO MODE"), "{}", gw.stderr());
    for c in curls {
        let cmd = c.replace(":1975", &format!(":{}", gw.port)).replace(":1064", &format!(":{}", gw.admin_port));
        let out = std::process::Command::new("sh").arg("-c").arg(&cmd).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{cmd}\n{text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(!text.trim().is_empty() && !text.contains("\"error\""), "{cmd}\n{text}");
        if cmd.contains("/chat/completions") {
            let streamed = text.contains("\"demo \"") && text.trim_end().ends_with("data: [DONE]");
            assert!(text.contains("llmgw demo backend") || streamed, "{cmd}\n{text}");
        }
    }
}

/// `curl` commands (with `\` continuations) of the ```sh/```bash/```shell blocks of `text`.
fn curl_commands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut current: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            in_block = !in_block && ["```sh", "```bash", "```shell"].contains(&t);
            continue;
        }
        if !in_block {
            continue;
        }
        match current.as_mut() {
            Some(c) => c.push_str(t.trim_end_matches('\\')),
            None if t.starts_with("curl ") => current = Some(t.trim_end_matches('\\').to_string()),
            None => continue,
        }
        if !t.ends_with('\\') {
            out.extend(current.take());
        }
    }
    out
}

/// SIGTERM (and SIGINT) stop `llmgw run`: it exits with Envoy's status, and no Envoy remains.
#[test]
fn signals_leave_no_envoy() {
    let Some((envoy, wasm)) = common::runtime("signals_leave_no_envoy") else { return };
    for (sig, name) in [(libc::SIGTERM, "sigterm"), (libc::SIGINT, "sigint")] {
        let mut gw = Gateway::ready(name, common::llmgw(&envoy, &wasm), &[]);
        let pid = gw.envoy_pid().expect("envoy is llmgw's child");
        assert!(common::alive(pid));
        gw.signal(sig);
        let status = gw.wait(Duration::from_secs(30)).expect("llmgw exits after the signal");
        assert_eq!(status.code(), Some(0), "{name}: Envoy's status\n{}", gw.stderr());
        assert!(!common::alive(pid), "{name}: Envoy {pid} still running");
        assert!(gw.stderr().contains("stopping Envoy"), "{}", gw.stderr());
        assert!(std::net::TcpListener::bind(("127.0.0.1", gw.port)).is_ok(), "listener port released");
        assert!(std::net::TcpListener::bind(("127.0.0.1", gw.admin_port)).is_ok(), "admin port released");
    }
}

/// Even if `llmgw` is killed outright, the kernel stops its Envoy.
#[test]
fn sigkill_of_llmgw_stops_envoy() {
    let Some((envoy, wasm)) = common::runtime("sigkill_of_llmgw_stops_envoy") else { return };
    let mut gw = Gateway::ready("sigkill", common::llmgw(&envoy, &wasm), &[]);
    let pid = gw.envoy_pid().expect("envoy is llmgw's child");
    gw.signal(libc::SIGKILL);
    gw.wait(Duration::from_secs(10)).expect("llmgw killed");
    let gone = eventually(Duration::from_secs(30), || (!common::alive(pid)).then_some(()));
    assert!(gone.is_some(), "Envoy {pid} outlived llmgw");
}

/// A port in use is reported before Envoy starts, with the flag to use.
#[test]
fn busy_port_is_reported() {
    let Some((envoy, wasm)) = common::runtime("busy_port_is_reported") else { return };
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let admin = common::free_port().to_string();
    let mut cmd = common::llmgw(&envoy, &wasm);
    cmd.args(["run", "--port", &port, "--admin-port", &admin]);
    let (code, _out, err) = common::output(cmd);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("port {port} is in use")) && err.contains("--port"), "{err}");
    assert!(!err.contains("starting Envoy"), "{err}");
}
