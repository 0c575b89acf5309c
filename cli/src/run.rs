//! `llmgw run`: config → validated plugin config → bootstrap file → Envoy, supervised.
//!
//! Order matters: everything that can be wrong with the config or the machine (config errors,
//! missing Envoy or filter, ports in use) is reported before Envoy starts. Once Envoy is ready,
//! SIGINT/SIGTERM/SIGHUP are forwarded to it and `run` exits with Envoy's status; Envoy is killed
//! if it does not stop in time, and gets SIGTERM from the kernel should `llmgw` itself die.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::admin::{self, Targets};
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

    let envoy_bin = locate::envoy_or_install()?;
    let wasm = locate::wasm_or_build(args.listen.wasm.as_deref())?;
    // Envoy's own admin on an ephemeral loopback port, known to llmgw through --admin-address-path.
    let opts = cli::options(&gateway, &args.listen, &wasm, 0)?;

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
    }
    let dir = RunDir::create(args.run_dir.clone())?;
    let config_path = dir.path.join("envoy.yaml");
    let admin_file = dir.path.join("admin-address.txt");
    write_private(&config_path, &bootstrap::to_yaml(&gateway, &bootstrap::render(&gateway, &opts)))?;

    let targets: admin::Shared = Arc::new(RwLock::new(None));
    admin::serve(admin_listener, targets.clone());

    eprintln!("llmgw: starting Envoy ({}) with {}", envoy_bin.display(), config_path.display());
    let mut child = envoy::command(&envoy_bin, &config_path, &admin_file, args.debug)
        .spawn()
        .with_context(|| format!("cannot start {}", envoy_bin.display()))?;

    let ready = tokio::select! {
        r = envoy::wait_ready(&mut child, &admin_file, probe_addr, Duration::from_secs(args.startup_timeout)) => r,
        sig = signals.recv() => {
            eprintln!("llmgw: {sig} during startup; stopping Envoy");
            let status = envoy::stop(&mut child, STOP_GRACE).await;
            dir.finish(args.debug);
            return Ok(status.map_or(1, envoy::exit_code));
        }
    };
    let envoy_admin = match ready {
        Ok(a) => a,
        Err(NotReady::Exited(status)) => {
            dir.finish(true);
            bail!(
                "Envoy exited while starting ({status}); its log is above. The bootstrap is kept at {}",
                config_path.display()
            );
        }
        Err(NotReady::Timeout(missing)) => {
            envoy::stop(&mut child, STOP_GRACE).await;
            dir.finish(true);
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
    eprintln!("llmgw: ready: OpenAI API at {base}/v1 (chat/completions, completions, embeddings, models)");
    eprintln!("llmgw: admin: {admin}/metrics  {admin}/health    Ctrl-C stops");
}

/// The private directory holding the rendered bootstrap (it may contain credentials).
struct RunDir {
    path: PathBuf,
    created: bool,
}

impl RunDir {
    fn create(explicit: Option<PathBuf>) -> Result<RunDir> {
        use std::os::unix::fs::DirBuilderExt;
        let (path, created) = match explicit {
            Some(p) => (p, false),
            None => {
                let base = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
                (base.join(format!("llmgw-{}", std::process::id())), true)
            }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(RunDir { path, created })
    }

    /// Removes a directory llmgw created, unless asked to keep it.
    fn finish(&self, keep: bool) {
        if self.created && !keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
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
