//! Command line: `llmgw run | render | check | stat`.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::bootstrap::{self, Options};
use crate::diag::{ConfigError, DocRef};
use crate::model::{AnyEnv, Ca, Env, Format, Gateway, ProcessEnv, DEFAULT_ADMIN_PORT, DEFAULT_PORT};
use crate::render_eg::{self, EgBackend, EgOptions};
use crate::{autoconfig, check, formats, locate, run, stat, validate};

#[derive(Parser, Debug)]
#[command(name = "llmgw", version, about = "An AI gateway in one command: Envoy + the llmgw filter")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway: render the Envoy bootstrap, start Envoy, serve admin (/metrics, /health).
    ///
    /// With no CONFIG, configures itself from OPENAI_API_KEY (+ OPENAI_BASE_URL), AZURE_OPENAI_API_KEY
    /// (+ AZURE_OPENAI_ENDPOINT, OPENAI_API_VERSION) or ANTHROPIC_API_KEY (+ ANTHROPIC_BASE_URL);
    /// with none of them, starts in demo mode with a built-in local demo backend.
    Run(RunArgs),
    /// Print the Envoy bootstrap `run` would use (for running Envoy yourself).
    Render(RenderArgs),
    /// Validate a configuration (as the filter and Envoy will); --probe asks each backend for its models.
    Check(CheckArgs),
    /// Per backend and model: requests, success/failed, average duration, tokens, from a running gateway.
    Stat(StatArgs),
    /// Envoy's rate limit service (gRPC ShouldRateLimit), counted by limitador in memory or in Redis.
    Ratelimit(crate::ratelimit::RatelimitArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ConfigArgs {
    /// Config file: llmgw's own YAML, Envoy AI Gateway YAML (multi-document), or an AIBrix endpoints file.
    pub config: Option<PathBuf>,
    /// AIBrix static endpoints file (`models: [{name, endpoints: ["host:port"]}]`).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub endpoints: Option<PathBuf>,
    /// Config format, when detection is not wanted.
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum FormatArg {
    Llmgw,
    Aigw,
    Aibrix,
}

#[derive(Args, Debug, Clone)]
pub struct ListenArgs {
    /// Listener port [default: the config's Gateway listener, else 1975].
    #[arg(long)]
    pub port: Option<u16>,
    /// Admin port (/metrics, /health).
    #[arg(long, default_value_t = DEFAULT_ADMIN_PORT)]
    pub admin_port: u16,
    /// Address the listener and admin port bind to.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: String,
    /// The filter's .wasm [default: $LLMGW_WASM, else next to the llmgw executable or in
    /// ../share/llmgw/ (see the README)].
    #[arg(long, value_name = "FILE")]
    pub wasm: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub listen: ListenArgs,
    /// Envoy's binary [default: $ENVOY_BIN, else `envoy` on PATH, else next to the llmgw executable
    /// or in ../share/llmgw/].
    #[arg(long, value_name = "FILE")]
    pub envoy: Option<PathBuf>,
    /// Envoy worker threads (each runs its own filter VM) [default: one per CPU].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: Option<u32>,
    /// Debug logs: Envoy at info level and its Wasm component (the filter's log lines) at debug;
    /// keep the runtime directory after exit.
    #[arg(long)]
    pub debug: bool,
    /// Where to write the rendered bootstrap [default: $XDG_RUNTIME_DIR or /tmp, per process].
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Give up when Envoy is not ready after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub startup_timeout: u64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// An Envoy bootstrap (what `run` starts).
    Envoy,
    /// Kubernetes manifests for Envoy Gateway, the filter loaded from an OCI image.
    EnvoyGateway,
}

#[derive(Args, Debug)]
pub struct RenderArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub listen: ListenArgs,
    /// What to render.
    #[arg(long, value_enum, default_value = "envoy")]
    pub target: Target,
    /// envoy-gateway: the filter's OCI image.
    #[arg(long, default_value = "ghcr.io/llmgw/llmgw-filter:0.1.0")]
    pub image: String,
    /// envoy-gateway: the image manifest digest (`make oci` prints it).
    #[arg(long, default_value = "0000000000000000000000000000000000000000000000000000000000000000")]
    pub digest: String,
    /// envoy-gateway: namespace of the resources.
    #[arg(long, default_value = "llmgw")]
    pub namespace: String,
    /// envoy-gateway: name of the GatewayClass, Gateway and policies.
    #[arg(long, default_value = "llmgw")]
    pub name: String,
    /// Envoy's own admin port in the rendered file (`run` serves /metrics and /health itself).
    #[arg(long, default_value_t = 9901)]
    pub envoy_admin_port: u16,
    /// Write to this file instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Ask each backend for its model list, with its own credentials.
    #[arg(long)]
    pub probe: bool,
    /// Seconds to wait for each probe.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// The filter's .wasm (for `envoy --mode validate`).
    #[arg(long, value_name = "FILE")]
    pub wasm: Option<PathBuf>,
    /// Envoy's binary (for `envoy --mode validate`).
    #[arg(long, value_name = "FILE")]
    pub envoy: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct StatArgs {
    /// Admin port of the running gateway.
    #[arg(long, default_value_t = DEFAULT_ADMIN_PORT)]
    pub admin_port: u16,
    /// Metrics URL [default: http://127.0.0.1:ADMIN_PORT/metrics].
    #[arg(long)]
    pub url: Option<String>,
    /// The gateway's config file: also show its budgets per consumer (used, remaining, reset).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run::main(a),
        Command::Render(a) => render(a),
        Command::Check(a) => check::main(a),
        Command::Stat(a) => stat::main(a),
        Command::Ratelimit(a) => crate::ratelimit::main(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("llmgw: error: {e:#}");
            1
        }
    }
}

/// The gateway a command works on: the config file, else the environment; `None` = demo mode.
pub fn load(args: &ConfigArgs, env: &dyn Env) -> Result<Option<Gateway>, ConfigError> {
    let forced = args.format.map(|f| match f {
        FormatArg::Llmgw => Format::Llmgw,
        FormatArg::Aigw => Format::EnvoyAIGateway,
        FormatArg::Aibrix => Format::AIBrix,
    });
    let loaded = if let Some(p) = &args.endpoints {
        formats::load(p, env, Some(Format::AIBrix)).map(Some)
    } else if let Some(p) = &args.config {
        formats::load(p, env, forced).map(Some)
    } else {
        autoconfig::from_env(env)
    };
    let mut loaded = loaded?;
    if let Some(g) = loaded.as_mut() {
        crate::otel::apply(g, env).map_err(|e| ConfigError::new("environment", "OTEL_*", e))?;
    }
    Ok(loaded)
}

pub fn print_warnings(g: &Gateway) {
    for w in &g.warnings {
        eprintln!("llmgw: warning: {w}");
    }
}

/// Render options for a gateway; the CA bundle only matters when a backend uses the system CAs.
pub fn options(g: &Gateway, listen: &ListenArgs, wasm: &Path, admin_port: u16) -> anyhow::Result<Options> {
    let needs_ca =
        g.upstreams.iter().any(|u| u.tls.as_ref().is_some_and(|t| t.ca == Ca::System && !t.insecure_skip_verify));
    let ca_bundle = match (locate::ca_bundle(), needs_ca) {
        (Some(p), _) => p.display().to_string(),
        (None, false) => locate::CA_BUNDLES[0].to_string(),
        (None, true) => anyhow::bail!(
            "no system CA bundle found (looked for $SSL_CERT_FILE and {}); install ca-certificates or set SSL_CERT_FILE",
            locate::CA_BUNDLES.join(", ")
        ),
    };
    Ok(Options {
        address: listen.address.clone(),
        port: listen.port.or(g.port).unwrap_or(DEFAULT_PORT),
        admin_address: "127.0.0.1".into(),
        admin_port,
        wasm: wasm.display().to_string(),
        ca_bundle,
        rls_port: bootstrap::DEFAULT_RLS_PORT,
    })
}

fn render(a: RenderArgs) -> anyhow::Result<i32> {
    let Some(mut g) = load(&a.config, &ProcessEnv)? else {
        anyhow::bail!(
            "nothing to render: no config file and no provider key ({}). The demo backend exists only inside \
             `llmgw run`.",
            autoconfig::key_vars().join(", ")
        );
    };
    print_warnings(&g);
    // Shape only: the bootstrap may run elsewhere, where its variables are set.
    validate::validate(&g, &AnyEnv)?;
    if a.target == Target::EnvoyGateway {
        return render_envoy_gateway(&g, &a);
    }
    let wasm = match locate::wasm(a.listen.wasm.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("llmgw: note: {e:#}; the bootstrap names {} instead", locate::WASM_NAME);
            PathBuf::from(locate::WASM_NAME)
        }
    };
    if !g.consumers.is_empty() {
        g.resolve_consumers(&ProcessEnv)?;
        // The probe key is `llmgw run`'s: Envoy run by hand has no use for it.
        g.client_auth.probe_key = None;
        if !g.client_auth.keys.is_empty() && a.output.is_none() {
            anyhow::bail!(
                "the bootstrap holds the consumers' API keys (Envoy's api_key_auth takes them inline): \
                 pass -o FILE (written 0600) instead of printing it"
            );
        }
    }
    let opts = options(&g, &a.listen, &wasm, a.envoy_admin_port)?;
    let text = bootstrap::to_yaml(&g, &bootstrap::render(&g, &opts));
    let keys = g.env_keys();
    if !keys.is_empty() {
        eprintln!("llmgw: note: Envoy must run with these variables set (the filter reads them): {}", keys.join(", "));
        secret_notes(&g);
    }
    output(a.output.as_deref(), &text)
}

/// Where the value of each variable that holds a credential moved out of the config comes from.
fn secret_notes(g: &Gateway) {
    for (var, _) in g.secret_env() {
        let field = g
            .plugin_backends()
            .enumerate()
            .find_map(|(i, b)| {
                let auth = b.get("auth")?;
                let at = |o: &serde_json::Value, path: &str| {
                    o.as_object()?.iter().find(|(_, v)| v.as_str() == Some(var)).map(|(k, _)| format!("{path}.{k}"))
                };
                at(auth, &format!("backends[{i}].auth"))
                    .or_else(|| at(auth.get("aws")?, &format!("backends[{i}].auth.aws")))
            })
            .unwrap_or_default();
        let (doc, origin) = g.locate(&field);
        let doc = match doc {
            Some(DocRef { index, object: Some(o) }) => format!(", document {index} ({o})"),
            Some(DocRef { index, object: None }) => format!(", document {index}"),
            None => String::new(),
        };
        eprintln!(
            "llmgw: note: {var} must hold the credential written in {}{doc} ({origin}); it is not in this output",
            g.source.name()
        );
    }
}

/// Writes rendered text to stdout, or to a new file readable by its owner only (0600).
fn output(path: Option<&Path>, text: &str) -> anyhow::Result<i32> {
    let Some(path) = path else {
        print!("{text}");
        return Ok(0);
    };
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let fail = |e: std::io::Error| anyhow::anyhow!("cannot write {}: {e}", path.display());
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(fail)?;
    // An existing file keeps its mode on open: make it private too.
    f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    f.write_all(text.as_bytes()).map_err(fail)?;
    eprintln!("llmgw: wrote {} (mode 0600)", path.display());
    Ok(0)
}

/// The consumers as Envoy Gateway takes them: names and where each key comes from (never a key),
/// and each JWT consumer's issuer and JWKS (a local file's public keys are inlined).
fn eg_consumers(g: &Gateway) -> anyhow::Result<Option<render_eg::EgConsumers>> {
    use crate::consumers::{Jwks, KeySource};
    if g.consumers.is_empty() {
        return Ok(None);
    }
    let mut out = render_eg::EgConsumers::default();
    for c in &g.consumers {
        match &c.keys {
            // A Secret holds one key per consumer: the first of the variable, or of the file.
            Some(KeySource::Env(var)) => out.api_keys.push((c.name.clone(), format!("\"${{{var}%%,*}}\""))),
            Some(KeySource::File(path)) => {
                out.api_keys.push((c.name.clone(), format!("\"$(grep -v '^#' {} | grep -m1 .)\"", shell_quote(path))))
            }
            None => {}
        }
        if let Some(j) = &c.jwt {
            let jwks = match &j.jwks {
                Jwks::File(path) => render_eg::EgJwks::Inline(
                    std::fs::read_to_string(path)
                        .map_err(|e| anyhow::anyhow!("consumer {}: cannot read jwks_file {path}: {e}", c.name))?,
                ),
                Jwks::Uri(_, uri) => render_eg::EgJwks::Remote(uri.clone()),
            };
            out.jwt.push(render_eg::EgJwt {
                name: c.name.clone(),
                issuer: j.issuer.clone(),
                audiences: j.audiences.clone(),
                subject: j.subject.clone(),
                jwks,
            });
        }
    }
    Ok(Some(out))
}

/// A path as one shell word.
fn shell_quote(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The budgets as QuotaPolicy bucket rules; what a QuotaPolicy cannot express is refused.
pub fn eg_quotas(g: &Gateway) -> anyhow::Result<Vec<render_eg::EgQuota>> {
    use crate::budgets::{Limit, ModelMatch, Per};
    g.budgets
        .iter()
        .map(|b| {
            let Some(ModelMatch::Exact(model)) = &b.model else {
                anyhow::bail!(
                    "budget {}: a QuotaPolicy budgets one model by its exact name (perModelQuotas.modelName); \
                     this budget has {}",
                    b.name,
                    if b.model.is_some() { "a model prefix or glob" } else { "no model" }
                );
            };
            let Limit::Tokens(limit) = b.limit else {
                anyhow::bail!("budget {}: a QuotaPolicy counts tokens, not requests", b.name);
            };
            let duration = match b.per {
                Per::Second => "1s",
                Per::Minute => "1m",
                Per::Hour => "1h",
                Per::Day => "1d",
            };
            Ok(render_eg::EgQuota {
                budget: b.name.clone(),
                consumer: b.consumer.clone(),
                model: model.clone(),
                limit,
                duration,
                cost: crate::formats::aigw::quota::cost_expression(b.count),
            })
        })
        .collect()
}

fn render_envoy_gateway(g: &Gateway, a: &RenderArgs) -> anyhow::Result<i32> {
    let backends: Vec<EgBackend> = g
        .upstreams
        .iter()
        .map(|u| EgBackend {
            name: u.name.clone(),
            endpoints: u.endpoints.iter().map(|e| (e.host.clone(), e.port)).collect(),
            tls: u.tls.is_some(),
            host_rewrite: u.host_rewrite.clone(),
        })
        .collect();
    let opts = EgOptions {
        namespace: a.namespace.clone(),
        name: a.name.clone(),
        image: a.image.clone(),
        digest: a.digest.clone(),
        port: a.listen.port.or(g.port).unwrap_or(EgOptions::default().port),
        consumers: eg_consumers(g)?,
        // Envoy Gateway names the clusters it makes; the collector's is patched in under the name
        // the plugin configuration gives it.
        clusters: crate::bootstrap::dispatch_clusters_for_pods(g),
    };
    let plugin = g.plugin.clone();
    let mut text = render_eg::render(&serde_json::Value::Object(plugin), &backends, &opts)
        .map_err(|e| anyhow::anyhow!("cannot render for Envoy Gateway: {e}"))?;
    if !g.budgets.is_empty() {
        let names: Vec<String> = g.upstreams.iter().map(|u| u.name.clone()).collect();
        text += &render_eg::quota_policy(&eg_quotas(g)?, &names, &opts)
            .map_err(|e| anyhow::anyhow!("cannot render the budgets as a QuotaPolicy: {e}"))?;
    }
    for line in render_eg::secret_commands(&serde_json::Value::Object(g.plugin.clone()), &opts) {
        eprintln!("llmgw: {line}");
    }
    secret_notes(g);
    output(a.output.as_deref(), &text)
}
