//! Shared by the integration tests: Envoy/wasm lookup (tests skip with a message when missing),
//! free ports, mock providers, and `llmgw run` as a supervised subprocess that is always killed.

#![allow(dead_code)]

pub mod mock;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use mock::Mock;

pub const LLMGW: &str = env!("CARGO_BIN_EXE_llmgw");

/// Provider variables that must never leak from the developer's shell into a test.
pub const PROVIDER_VARS: &[&str] = &[
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "AZURE_OPENAI_API_KEY",
    "AZURE_OPENAI_ENDPOINT",
    "OPENAI_API_VERSION",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "ROUTING_ALGORITHM",
];

/// Says why a test is skipped, visibly: written to stderr directly, past the test harness's
/// output capture.
pub fn skip(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {message}");
}

/// Envoy and the filter, or `None` after printing why the test is skipped.
pub fn runtime(test: &str) -> Option<(PathBuf, PathBuf)> {
    let envoy = match llmgw::locate::envoy(None) {
        Ok(p) => p,
        Err(e) => {
            skip(&format!("{test}: {e:#}"));
            return None;
        }
    };
    let wasm = match llmgw::locate::wasm(None) {
        Ok(p) => p,
        Err(e) => {
            skip(&format!("{test}: {e:#}"));
            return None;
        }
    };
    Some((envoy, wasm))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("llmgw-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Removes `PROVIDER_VARS` and every preset's variables (DEEPSEEK_API_KEY, GROQ_BASE_URL, ...).
pub fn clear_provider_env(cmd: &mut Command) {
    for v in PROVIDER_VARS {
        cmd.env_remove(v);
    }
    for v in llmgw::autoconfig::key_vars() {
        cmd.env_remove(v);
    }
    for p in llmgw::autoconfig::PRESETS {
        cmd.env_remove(p.base_url_var);
    }
}

/// A `llmgw` command with a clean provider environment and the runtime pieces set explicitly.
pub fn llmgw(envoy: &Path, wasm: &Path) -> Command {
    let mut cmd = Command::new(LLMGW);
    clear_provider_env(&mut cmd);
    cmd.env("ENVOY_BIN", envoy).env("LLMGW_WASM", wasm).stdin(Stdio::null());
    cmd
}

/// `llmgw run` in the background; killed (with its Envoy) when dropped.
pub struct Gateway {
    pub child: Child,
    pub port: u16,
    pub admin_port: u16,
    pub dir: PathBuf,
}

pub enum Started {
    Ready(Gateway),
    /// `llmgw run` exited before becoming healthy: status and stderr.
    Exited(ExitStatus, String),
}

impl Gateway {
    /// Starts `llmgw run ARGS --port P --admin-port A` on free ports and waits (bounded) for `/health` = 200.
    pub fn start(name: &str, cmd: Command, args: &[&str]) -> Started {
        let (port, admin_port) = (free_port(), free_port());
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(["--port".into(), port.to_string(), "--admin-port".into(), admin_port.to_string()]);
        Gateway::start_on(name, cmd, port, admin_port, &all)
    }

    /// Starts `llmgw run ARGS` (the caller passes the port flags, or sets the port in the config).
    pub fn start_on(name: &str, cmd: Command, port: u16, admin_port: u16, args: &[String]) -> Started {
        Gateway::start_in(name, cmd, port, admin_port, args, true)
    }

    /// Like `start_on`; with `run_dir`, the rendered bootstrap goes under the test's directory
    /// (`<dir>/run`, removed with it), else where `llmgw run` puts it by itself.
    pub fn start_in(
        name: &str,
        mut cmd: Command,
        port: u16,
        admin_port: u16,
        args: &[String],
        run_dir: bool,
    ) -> Started {
        let dir = temp_dir(name);
        let stdout = std::fs::File::create(dir.join("stdout")).expect("stdout file");
        let stderr = std::fs::File::create(dir.join("stderr")).expect("stderr file");
        cmd.arg("run").args(args).stdout(stdout).stderr(stderr);
        if run_dir {
            cmd.arg("--run-dir").arg(dir.join("run"));
        }
        let child = cmd.spawn().expect("spawn llmgw");
        let mut gw = Gateway { child, port, admin_port, dir };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(Some(status)) = gw.child.try_wait() {
                return Started::Exited(status, gw.stderr());
            }
            if let Ok((200, _)) = get(&format!("{}/health", gw.admin()), &[]) {
                return Started::Ready(gw);
            }
            assert!(Instant::now() < deadline, "llmgw not healthy within 90s; stderr:\n{}", gw.stderr());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Like `start`, but fails the test if the gateway did not come up.
    pub fn ready(name: &str, cmd: Command, args: &[&str]) -> Gateway {
        match Gateway::start(name, cmd, args) {
            Started::Ready(g) => g,
            Started::Exited(status, stderr) => panic!("llmgw run exited ({status}):\n{stderr}"),
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn admin(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
    }

    /// One of llmgw's own metrics (`llmgw_wasm_vm_traps_total`, ...) from the admin `/metrics`.
    pub fn metric(&self, name: &str) -> Option<u64> {
        let (status, text) = get(&format!("{}/metrics", self.admin()), &[]).ok()?;
        if status != 200 {
            return None;
        }
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Envoy's pid: the child process of `llmgw run`.
    pub fn envoy_pid(&self) -> Option<i32> {
        children(self.child.id() as i32).into_iter().next()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits (bounded) for `llmgw run` to exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let envoy = self.envoy_pid();
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal(libc::SIGTERM);
            if self.wait(Duration::from_secs(20)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if let Some(pid) = envoy {
            // SAFETY: the Envoy we started; normally already gone through PDEATHSIG.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        // Logs stay for a failing test to show.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Child pids of `pid` (Linux /proc).
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for t in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(text.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    out
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build()
}

fn read(resp: ureq::Response) -> (u16, String) {
    let status = resp.status();
    let mut body = String::new();
    let _ = resp.into_reader().take(16 << 20).read_to_string(&mut body);
    (status, body)
}

/// GET; any status is returned (not an error).
pub fn get(url: &str, headers: &[(&str, &str)]) -> Result<(u16, String), String> {
    let mut req = agent().get(url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    match req.call() {
        Ok(r) => Ok(read(r)),
        Err(ureq::Error::Status(_, r)) => Ok(read(r)),
        Err(e) => Err(e.to_string()),
    }
}

/// POST JSON; any status is returned.
pub fn post(url: &str, body: &serde_json::Value, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = agent().post(url).set("content-type", "application/json");
    for (k, v) in headers {
        req = req.set(k, v);
    }
    match req.send_string(&body.to_string()) {
        Ok(r) => read(r),
        Err(ureq::Error::Status(_, r)) => read(r),
        Err(e) => panic!("POST {url}: {e}"),
    }
}

pub fn chat(model: &str, text: &str) -> serde_json::Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// Polls `f` until it returns `Some`, at most `timeout`.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `llmgw <args>` to completion: (exit code, stdout, stderr).
pub fn output(mut cmd: Command) -> (i32, String, String) {
    let out = cmd.output().expect("run llmgw");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
