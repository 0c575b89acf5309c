//! The Envoy child process: start, wait until ready, stop, and `envoy --mode validate`.

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::process::{Child, Command};

use crate::admin;
use crate::http;

/// How `run` starts Envoy, besides the bootstrap.
#[derive(Debug, Default)]
pub struct Launch<'a> {
    /// Envoy at info level, the Wasm component (the filter's own log lines) at debug.
    pub debug: bool,
    /// Worker threads (`--concurrency`); `None` = Envoy's default, one per hardware thread.
    pub concurrency: Option<u32>,
    /// Extra environment: the credentials moved out of the plugin configuration, which the filter
    /// reads through `host_env_keys`. Only Envoy's environment holds them.
    pub env: Vec<(&'a str, &'a str)>,
}

/// Envoy's log levels: warnings and errors normally; with `debug`, info, and the Wasm component
/// (where the filter's log lines go, and which the filter's own level follows) at debug.
pub fn log_args(debug: bool) -> Vec<&'static str> {
    if debug {
        vec!["--log-level", "info", "--component-log-level", "wasm:debug"]
    } else {
        vec!["--log-level", "warn"]
    }
}

/// Envoy's command line for a bootstrap file. Its stderr (the log) is piped, for `run` to forward
/// and watch; its stdout (the access log) is inherited.
pub fn command(bin: &Path, config: &Path, admin_address_file: &Path, launch: &Launch<'_>) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("-c")
        .arg(config)
        .arg("--admin-address-path")
        .arg(admin_address_file)
        .arg("--disable-hot-restart")
        .args(log_args(launch.debug))
        .envs(launch.env.iter().copied())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(n) = launch.concurrency {
        cmd.arg("--concurrency").arg(n.to_string());
    }
    // If llmgw itself dies (even SIGKILL), the kernel sends Envoy SIGTERM: no orphan keeps the ports.
    // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork and exec.
    #[cfg(target_os = "linux")]
    unsafe {
        let parent = libc::getpid();
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd
}

pub enum NotReady {
    /// Envoy exited while starting.
    Exited(ExitStatus),
    /// Still not ready at the deadline; the last thing that was missing.
    Timeout(String),
}

/// Waits until Envoy's admin is `LIVE` and the filter answers through the listener; returns the
/// admin address. Bounded by `timeout`.
pub async fn wait_ready(
    child: &mut Child,
    admin_address_file: &Path,
    listener: SocketAddr,
    timeout: Duration,
) -> Result<SocketAddr, NotReady> {
    let deadline = Instant::now() + timeout;
    let mut missing = String::from("envoy has not written its admin address yet");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(NotReady::Exited(status));
        }
        if Instant::now() >= deadline {
            return Err(NotReady::Timeout(missing));
        }
        if let Some(admin) = read_admin_address(admin_address_file) {
            match http::get(admin, "/ready", &[], Duration::from_secs(2)).await {
                Ok((200, _)) => match admin::filter_answers(listener).await {
                    Ok(()) => return Ok(admin),
                    Err(e) => missing = e,
                },
                Ok((status, body)) => {
                    missing = format!("envoy admin /ready: {status} {}", String::from_utf8_lossy(&body).trim())
                }
                Err(e) => missing = format!("envoy admin: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn read_admin_address(path: &Path) -> Option<SocketAddr> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub fn signal(child: &Child, sig: libc::c_int) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`: Envoy is always gone when this returns.
pub async fn stop(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    signal(child, libc::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = child.kill().await;
            child.wait().await.ok()
        }
    }
}

/// The exit code to pass on: Envoy's code, or 128 + signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1)
}

/// `envoy --mode validate -c FILE` with `env` added to Envoy's environment: `Ok(())`, or Envoy's
/// error lines.
pub fn validate(bin: &Path, config: &Path, env: &[(&str, &str)]) -> Result<std::result::Result<(), String>> {
    let out = std::process::Command::new(bin)
        .args(["--mode", "validate", "--log-level", "error", "-c"])
        .arg(config)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if out.status.success() {
        return Ok(Ok(()));
    }
    let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    Ok(Err(lines.iter().rev().take(8).rev().copied().collect::<Vec<_>>().join("\n")))
}

/// `envoy --version`'s version number, for messages.
pub fn version(bin: &Path) -> Option<String> {
    let out = std::process::Command::new(bin).arg("--version").output().ok()?;
    // `<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL`
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split("version: ").nth(1)?.split('/').nth(1).map(str::to_string)
}
