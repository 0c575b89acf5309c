//! `llmgw run`: config → validated plugin config → bootstrap file → Envoy, supervised.
//!
//! Order matters: everything that can be wrong with the config or the machine (config errors,
//! missing Envoy or filter, ports in use) is reported before Envoy starts. Once Envoy is ready,
//! SIGINT/SIGTERM/SIGHUP are forwarded to it and `run` exits with Envoy's status; Envoy is killed
//! if it does not stop in time, and gets SIGTERM from the kernel should `llmgw` itself die.
//!
//! Secrets: the rendered bootstrap names credentials by environment variable only; their values
//! are in Envoy's environment (so not in its `/config_dump`), and the bootstrap is a 0600 file in
//! a private directory made by `tempfile`. Envoy's log passes through `run` (see `admin::VmWatch`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::ChildStderr;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::admin::{self, Targets, VmWatch};
use crate::bootstrap;
use crate::cli::{self, RunArgs};
use crate::demo;
use crate::envoy::{self, NotReady};
use crate::locate;
use crate::model::{Gateway, ProcessEnv, Source};
use crate::validate;

const STOP_GRACE: Duration = Duration::from_secs(15);

pub fn main(args: RunArgs) -> Result<i32> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(run(args))
}

struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

async fn run(args: RunArgs) -> Result<i32> {
    // Installed first, so a Ctrl-C during startup is ours to handle, not an abrupt exit.
    let mut signals = Signals::new()?;

    let loaded = cli::load(&args.config, &ProcessEnv)?;
    let demo = loaded.is_none();
    let mut gateway = loaded.unwrap_or_else(|| demo::gateway(0));
    cli::print_warnings(&gateway);
    validate::validate(&gateway, &ProcessEnv)?;
    // Client keys and JWKS files are read now: into the private bootstrap only.
    gateway.resolve_consumers(&ProcessEnv)?;
    if let Some(key) = &gateway.client_auth.probe_key {
        admin::set_probe_key(&key.0);
    }

    let envoy_bin = locate::envoy_or_install(args.envoy.as_deref())?;
    let wasm = locate::wasm_or_build(args.listen.wasm.as_deref())?;
    // Envoy's own admin on an ephemeral loopback port, known to llmgw through --admin-address-path.
    let mut opts = cli::options(&gateway, &args.listen, &wasm, 0)?;

    let ip: IpAddr = args.listen.address.parse().with_context(|| format!("--address {:?}", args.listen.address))?;
    let admin_listener = TcpListener::bind(SocketAddr::new(ip, args.listen.admin_port)).await.with_context(|| {
        format!("admin port {} is in use (another llmgw or aigw?); pass --admin-port", args.listen.admin_port)
    })?;
    let listen = SocketAddr::new(ip, opts.port);
    std::net::TcpListener::bind(listen)
        .with_context(|| format!("port {} is in use (another llmgw or aigw?); pass --port", opts.port))?;
    let probe_addr = SocketAddr::new(if ip.is_unspecified() { IpAddr::from([127, 0, 0, 1]) } else { ip }, opts.port);

    if demo {
        let port = demo::start().await?;
        gateway = demo::gateway(port);
        crate::otel::apply(&mut gateway, &ProcessEnv).map_err(anyhow::Error::msg)?;
    }
    let dir = RunDir::create(args.run_dir.clone())?;
    let config_path = dir.path().join("envoy.yaml");
    let admin_file = dir.path().join("admin-address.txt");
    // Budgets shared by many gateways: our own `llmgw ratelimit` counts them in Redis (killed with us).
    let _ratelimit = match &gateway.budget_store {
        Some(store) if !gateway.budgets.is_empty() => {
            let (child, port) = start_ratelimit(&gateway, store, dir.path())?;
            opts.rls_port = port;
            Some(child)
        }
        _ => None,
    };
    write_private(&config_path, &bootstrap::to_yaml(&gateway, &bootstrap::render(&gateway, &opts)))?;
    // Envoy writes its admin address here; created first so that it is private too.
    write_private(&admin_file, "")?;

    let targets: admin::Shared = Arc::new(RwLock::new(None));
    let watch = Arc::new(VmWatch::default());
    admin::serve(admin_listener, targets.clone(), watch.clone());

    eprintln!("llmgw: starting Envoy ({}) with {}", envoy_bin.display(), config_path.display());
    let launch =
        envoy::Launch { debug: args.debug, concurrency: args.concurrency, env: gateway.secret_env().collect() };
    let mut child = envoy::command(&envoy_bin, &config_path, &admin_file, &launch)
        .spawn()
        .with_context(|| format!("cannot start {}", envoy_bin.display()))?;
    let log = child.stderr.take().map(|e| tokio::spawn(forward_log(e, watch)));

    let ready = tokio::select! {
        r = envoy::wait_ready(&mut child, &admin_file, probe_addr, Duration::from_secs(args.startup_timeout)) => r,
        sig = signals.recv() => {
            eprintln!("llmgw: {sig} during startup; stopping Envoy");
            let status = envoy::stop(&mut child, STOP_GRACE).await;
            drain(log).await;
            dir.finish(args.debug);
            return Ok(status.map_or(1, envoy::exit_code));
        }
    };
    let envoy_admin = match ready {
        Ok(a) => a,
        Err(NotReady::Exited(status)) => {
            drain(log).await;
            let kept = dir.finish(true);
            bail!(
                "Envoy exited while starting ({status}); its log is above. The bootstrap is kept at {}",
                kept.join("envoy.yaml").display()
            );
        }
        Err(NotReady::Timeout(missing)) => {
            envoy::stop(&mut child, STOP_GRACE).await;
            drain(log).await;
            let config_path = dir.finish(true).join("envoy.yaml");
            bail!(
                "Envoy was not ready after {}s ({missing}); the bootstrap is kept at {}",
                args.startup_timeout,
                config_path.display()
            );
        }
    };
    if let Ok(mut t) = targets.write() {
        *t = Some(Targets { envoy_admin, listener: probe_addr });
    }
    banner(&gateway, &args, opts.port);

    let status = tokio::select! {
        s = child.wait() => s.ok(),
        sig = signals.recv() => {
            eprintln!("llmgw: {sig}: stopping Envoy");
            envoy::stop(&mut child, STOP_GRACE).await
        }
    };
    drain(log).await;
    dir.finish(args.debug);
    let code = status.map_or(1, envoy::exit_code);
    eprintln!("llmgw: Envoy exited with status {code}");
    Ok(code)
}

fn banner(g: &Gateway, args: &RunArgs, port: u16) {
    let host = if args.listen.address == "0.0.0.0" { "localhost" } else { args.listen.address.as_str() };
    let base = format!("http://{host}:{port}");
    let admin = format!("http://{host}:{}", args.listen.admin_port);
    match &g.source {
        Source::Demo => {
            eprintln!("llmgw: DEMO MODE — no provider key is set, so every model is answered by the built-in demo");
            eprintln!("llmgw:   backend (canned replies, no real model). To use a real provider, stop and run e.g.");
            eprintln!("llmgw:     OPENAI_API_KEY=sk-... llmgw run");
            eprintln!(
                "llmgw:     GROQ_API_KEY=gsk_... llmgw run   # or DEEPSEEK_, MISTRAL_, XAI_, TOGETHER_, OPENROUTER_, \
                 COHERE_API_KEY"
            );
            eprintln!(
                "llmgw:     OPENAI_BASE_URL=http://localhost:11434/v1 OPENAI_API_KEY=unused llmgw run   # Ollama"
            );
            eprintln!("llmgw:     llmgw run config.yaml   # llmgw, Envoy AI Gateway or AIBrix config");
        }
        Source::Env { provider, vars } => {
            eprintln!(
                "llmgw: auto-configured from the environment ({}): every model goes to {provider}",
                vars.join(", ")
            );
        }
        Source::File { path, format } => {
            eprintln!(
                "llmgw: {path} ({}): {} backend(s), {} rule(s)",
                format.label(),
                g.upstreams.len(),
                g.rule_count()
            );
        }
    }
    if !g.consumers.is_empty() {
        let names: Vec<&str> = g.consumers.iter().map(|c| c.name.as_str()).collect();
        eprintln!(
            "llmgw: clients must authenticate (API key as `Authorization: Bearer` or `x-api-key`, or a JWT); consumers: {}",
            names.join(", ")
        );
    }
    eprintln!("llmgw: ready: OpenAI API at {base}/v1 (chat/completions, completions, embeddings, models)");
    eprintln!("llmgw: admin: {admin}/metrics  {admin}/health    Ctrl-C stops");
}

/// Forwards Envoy's log to llmgw's stderr line by line, telling `watch` about each line.
async fn forward_log(stderr: ChildStderr, watch: Arc<VmWatch>) {
    use std::io::Write;
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                watch.observe(&text);
                let mut out = std::io::stderr().lock();
                let _ = out.write_all(text.as_bytes());
                if !text.ends_with('\n') {
                    let _ = out.write_all(b"\n");
                }
            }
        }
    }
}

/// Waits (bounded) until Envoy's log is forwarded to its end.
async fn drain(log: Option<tokio::task::JoinHandle<()>>) {
    if let Some(task) = log {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
}

/// The private directory holding the rendered bootstrap: a fresh `tempfile` directory (0700,
/// unpredictable name) under `$XDG_RUNTIME_DIR` or the temp dir, or `--run-dir` (created 0700).
enum RunDir {
    Temp(tempfile::TempDir),
    Given(PathBuf),
}

impl RunDir {
    fn create(explicit: Option<PathBuf>) -> Result<RunDir> {
        use std::os::unix::fs::DirBuilderExt;
        match explicit {
            Some(p) => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&p)
                    .with_context(|| format!("cannot create {}", p.display()))?;
                Ok(RunDir::Given(p))
            }
            None => {
                let base = std::env::var_os("XDG_RUNTIME_DIR")
                    .map(PathBuf::from)
                    .filter(|d| d.is_dir())
                    .unwrap_or_else(std::env::temp_dir);
                let dir = tempfile::Builder::new()
                    .prefix("llmgw-")
                    .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
                    .tempdir_in(&base)
                    .with_context(|| format!("cannot create a private directory in {}", base.display()))?;
                Ok(RunDir::Temp(dir))
            }
        }
    }

    fn path(&self) -> &Path {
        match self {
            RunDir::Temp(t) => t.path(),
            RunDir::Given(p) => p,
        }
    }

    /// Removes a directory llmgw created, unless asked to keep it; returns where it is (was).
    fn finish(self, keep: bool) -> PathBuf {
        match self {
            RunDir::Temp(t) if keep => t.keep(),
            RunDir::Temp(t) => {
                let path = t.path().to_path_buf();
                let _ = t.close();
                path
            }
            RunDir::Given(p) => p,
        }
    }
}

/// Starts `llmgw ratelimit` (this executable) on a free loopback port with the budgets' limits;
/// the Redis URL (which may hold a password) goes by environment, not on the command line.
fn start_ratelimit(g: &Gateway, store: &crate::budgets::Store, dir: &Path) -> Result<(tokio::process::Child, u16)> {
    let limits = dir.join("limits.json");
    write_private(&limits, &crate::budgets::limits(&g.budgets).to_string())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let exe = std::env::current_exe().context("cannot find the llmgw executable to start `llmgw ratelimit`")?;
    let mode = match store.failure_mode {
        crate::budgets::FailureMode::Open => "open",
        crate::budgets::FailureMode::Closed => "closed",
    };
    let child = tokio::process::Command::new(exe)
        .arg("ratelimit")
        .arg("--config")
        .arg(&limits)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--failure-mode", mode])
        .env("LLMGW_RATELIMIT_REDIS", &store.redis)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start `llmgw ratelimit` for the budget store")?;
    eprintln!("llmgw: budgets counted in Redis by `llmgw ratelimit` on 127.0.0.1:{port} (failure mode {mode})");
    Ok((child, port))
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}
