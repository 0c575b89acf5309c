//! What every config source (environment, llmgw YAML, Envoy AI Gateway YAML, AIBrix endpoints)
//! is converted into: the filter's plugin configuration plus one upstream per backend, which the
//! bootstrap renderer turns into Envoy clusters.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

pub use llmgw_filter::config::{Env, ProcessEnv};

use crate::diag::DocRef;
use crate::url::BaseUrl;

pub const DEFAULT_PORT: u16 = 1975;
pub const DEFAULT_ADMIN_PORT: u16 = 1064;
/// Route timeout when the config gives none: LLM calls (reasoning, long generations) are slow.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Per-connection buffer (request bodies are buffered whole by the filter): 50 MiB, as `aigw run`.
pub const DEFAULT_BUFFER_LIMIT: u64 = 50 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Llmgw,
    EnvoyAIGateway,
    AIBrix,
}

impl Format {
    pub fn label(&self) -> &'static str {
        match self {
            Format::Llmgw => "llmgw config",
            Format::EnvoyAIGateway => "Envoy AI Gateway config",
            Format::AIBrix => "AIBrix endpoints file",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// No key and no file: the built-in demo backend.
    Demo,
    /// Auto-configured from these environment variables.
    Env {
        provider: &'static str,
        vars: Vec<&'static str>,
    },
    File {
        path: String,
        format: Format,
    },
}

impl Source {
    /// How errors name this source.
    pub fn name(&self) -> String {
        match self {
            Source::Demo => "demo".into(),
            Source::Env { .. } => "environment".into(),
            Source::File { path, .. } => path.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

/// Which certificate authorities a backend's certificate must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ca {
    /// The system bundle (found at start; see `locate::ca_bundle`).
    System,
    File(String),
    /// PEM text (from a ConfigMap or Secret of an Envoy AI Gateway config).
    Pem(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// SNI; also the DNS name the certificate must carry unless `sans` says otherwise.
    pub sni: String,
    pub ca: Ca,
    /// DNS subject alternative names accepted; empty = `sni`.
    pub sans: Vec<String>,
    pub insecure_skip_verify: bool,
}

impl Tls {
    pub fn to(host: &str) -> Tls {
        Tls { sni: host.to_string(), ca: Ca::System, sans: Vec::new(), insecure_skip_verify: false }
    }
}

/// Where one backend's traffic goes: an Envoy cluster named like the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub tls: Option<Tls>,
    /// The Host header the provider expects.
    pub host_rewrite: Option<String>,
    pub timeout: Option<Duration>,
    /// Envoy `lb_policy` across several endpoints; `None` = round robin; [`FILTER_PICKS`]: the
    /// filter's picker chooses the endpoint (an override-host policy).
    pub lb_policy: Option<String>,
}

/// The `lb_policy` of a picked cluster: the endpoint is the one the filter's picker wrote in
/// its destination header.
pub const FILTER_PICKS: &str = "CLUSTER_PROVIDED";

impl Upstream {
    pub fn filter_picks(&self) -> bool {
        self.lb_policy.as_deref() == Some(FILTER_PICKS)
    }

    pub fn from_url(name: &str, url: &BaseUrl) -> Upstream {
        Upstream {
            name: name.to_string(),
            endpoints: vec![Endpoint { host: url.host.clone(), port: url.port }],
            tls: url.tls.then(|| Tls::to(&url.host)),
            host_rewrite: Some(url.authority()),
            timeout: None,
            lb_policy: None,
        }
    }

    /// Base URL used to reach the first endpoint directly (probes).
    pub fn base_url(&self, endpoint: &Endpoint) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", crate::url::authority(&endpoint.host, endpoint.port, self.tls.is_some()))
    }
}

/// Where a part of the plugin configuration came from, to point errors at the user's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// A plugin config path prefix such as `backends[2]` or `rules[0]`.
    pub plugin_path: String,
    pub document: Option<DocRef>,
    /// The field in the user's document.
    pub field: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Gateway {
    pub source: Source,
    /// Listener port from the config (a Gateway listener, llmgw's `port`); flags override it.
    pub port: Option<u16>,
    pub buffer_limit: Option<u64>,
    /// The filter's plugin configuration, exactly as Envoy will hand it to the filter.
    pub plugin: Map<String, Value>,
    /// One per plugin backend, same order and names.
    pub upstreams: Vec<Upstream>,
    pub warnings: Vec<String>,
    pub origins: Vec<Origin>,
    /// Credentials moved out of the plugin configuration ([`Gateway::externalize_secrets`]):
    /// environment variable → value. `llmgw run` gives them to Envoy's environment only.
    pub secrets: BTreeMap<String, SecretValue>,
    /// Who may call the gateway (`consumers:`); empty = no client authentication.
    pub consumers: Vec<crate::consumers::Consumer>,
    /// The consumers' keys and local JWKS, read at run time ([`crate::consumers::resolve`]).
    pub client_auth: crate::consumers::Resolved,
    /// Token and request budgets per consumer (`budgets:`); see [`crate::budgets`].
    pub budgets: Vec<crate::budgets::Budget>,
    /// Where budgets are counted when several gateways share them (`budget_store:`); `None` =
    /// by the filter, in this gateway.
    pub budget_store: Option<crate::budgets::Store>,
    /// The OTLP collector spans go to (`OTEL_EXPORTER_OTLP_*`); see [`crate::otel`].
    pub collector: Option<Upstream>,
}

/// A credential: compared and moved around, never printed (`Debug` shows its length only).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(pub String);

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValue(<{} bytes>)", self.0.len())
    }
}

/// Credential fields of the plugin's `auth` (and `auth.aws`) that can hold a literal key.
const CREDENTIAL_FIELDS: [&str; 3] = ["bearer", "api_key", "x_api_key"];
const AWS_FIELDS: [(&str, &str); 3] = [
    ("access_key_id", "AWS_ACCESS_KEY_ID"),
    ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
    ("session_token", "AWS_SESSION_TOKEN"),
];

/// The process environment with a gateway's moved credentials on top (what Envoy's VM will see).
pub struct WithSecrets<'a> {
    pub secrets: &'a BTreeMap<String, SecretValue>,
    pub base: &'a dyn Env,
}

impl Env for WithSecrets<'_> {
    fn var(&self, name: &str) -> Option<String> {
        self.secrets.get(name).map(|s| s.0.clone()).or_else(|| self.base.var(name))
    }
}

impl Gateway {
    pub fn new(source: Source) -> Gateway {
        Gateway {
            source,
            port: None,
            buffer_limit: None,
            plugin: Map::new(),
            upstreams: Vec::new(),
            warnings: Vec::new(),
            origins: Vec::new(),
            secrets: BTreeMap::new(),
            consumers: Vec::new(),
            client_auth: Default::default(),
            budgets: Vec::new(),
            budget_store: None,
            collector: None,
        }
    }

    /// `base` with this gateway's moved credentials on top.
    pub fn env<'a>(&'a self, base: &'a dyn Env) -> WithSecrets<'a> {
        WithSecrets { secrets: &self.secrets, base }
    }

    /// Moves every literal credential of the plugin configuration (`auth.bearer`, `api_key`,
    /// `x_api_key`, `aws.*`) into [`Gateway::secrets`] under a variable named after the backend
    /// and field (`LLMGW_SECRET_OPENAI_BEARER`), and writes the `*_env` form in its place. The
    /// plugin configuration, and so every rendered file and Envoy's admin output, then names
    /// variables only; the filter reads the values from the VM's environment.
    pub fn externalize_secrets(&mut self) {
        let Some(backends) = self.plugin.get_mut("backends").and_then(Value::as_array_mut) else { return };
        for backend in backends.iter_mut().filter_map(Value::as_object_mut) {
            let name = backend.get("name").and_then(Value::as_str).unwrap_or("backend").to_string();
            let Some(auth) = backend.get_mut("auth").and_then(Value::as_object_mut) else { continue };
            for field in CREDENTIAL_FIELDS {
                move_secret(auth, field, &[&name, field], &mut self.secrets);
            }
            if let Some(aws) = auth.get_mut("aws").and_then(Value::as_object_mut) {
                for (field, _) in AWS_FIELDS {
                    move_secret(aws, field, &[&name, "aws", field], &mut self.secrets);
                }
            }
        }
    }

    /// Moved credentials that this configuration names (in the order of `env_keys`).
    pub fn secret_env(&self) -> impl Iterator<Item = (&str, &str)> {
        self.secrets.iter().map(|(k, v)| (k.as_str(), v.0.as_str()))
    }

    pub fn plugin_backends(&self) -> impl Iterator<Item = &Map<String, Value>> {
        self.plugin.get("backends").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_object)
    }

    pub fn plugin_backend(&self, name: &str) -> Option<&Map<String, Value>> {
        self.plugin_backends().find(|b| b.get("name").and_then(Value::as_str) == Some(name))
    }

    pub fn rule_count(&self) -> usize {
        self.plugin.get("rules").and_then(Value::as_array).map_or(0, Vec::len)
    }

    /// The user's document and field for a plugin config path (longest recorded prefix).
    pub fn locate(&self, plugin_field: &str) -> (Option<DocRef>, String) {
        let best = self
            .origins
            .iter()
            .filter(|o| {
                plugin_field == o.plugin_path
                    || plugin_field.strip_prefix(&o.plugin_path).is_some_and(|r| r.starts_with(['.', '[']))
            })
            .max_by_key(|o| o.plugin_path.len());
        match best {
            Some(o) => {
                let rest = &plugin_field[o.plugin_path.len()..];
                let field =
                    if rest.is_empty() { o.field.clone() } else { format!("{} (converted: {plugin_field})", o.field) };
                (o.document.clone(), field)
            }
            None => (None, plugin_field.to_string()),
        }
    }

    /// Reads the consumers' keys and JWKS files into [`Gateway::client_auth`].
    pub fn resolve_consumers(&mut self, env: &dyn Env) -> Result<(), crate::diag::ConfigError> {
        // Keys read from a Secret document of the config are moved credentials.
        let resolved = crate::consumers::resolve(&self.consumers, &self.env(env));
        self.client_auth = resolved.map_err(|e| crate::diag::ConfigError::new(self.source.name(), "consumers", e))?;
        Ok(())
    }

    /// Variables the plugin reads with `*_env`, and the standard AWS variables an `aws` credential
    /// without a key falls back to: handed to the Wasm VM by Envoy (`host_env_keys`).
    pub fn env_keys(&self) -> Vec<String> {
        env_keys(&Value::Object(self.plugin.clone()))
    }
}

/// Every `*_env` value of a plugin configuration, plus the AWS variables an `aws` credential
/// falls back to for the keys it does not give; sorted, no duplicates.
pub fn env_keys(plugin: &Value) -> Vec<String> {
    let mut keys = Vec::new();
    collect_env_keys(plugin, &mut keys);
    keys.sort();
    keys.dedup();
    keys
}

fn collect_env_keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::String(s) if k.ends_with("_env") => out.push(s.clone()),
                    Value::Object(aws) if k == "aws" => {
                        for (field, default) in AWS_FIELDS {
                            if !aws.contains_key(field) && !aws.contains_key(&format!("{field}_env")) {
                                out.push(default.to_string());
                            }
                        }
                        collect_env_keys(v, out);
                    }
                    other => collect_env_keys(other, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_env_keys(i, out)),
        _ => {}
    }
}

/// Replaces `map[field]` (a literal credential) with `map[field_env]` naming a new variable.
fn move_secret(map: &mut Map<String, Value>, field: &str, name: &[&str], secrets: &mut BTreeMap<String, SecretValue>) {
    let Some(Value::String(value)) = map.get(field) else { return };
    let value = value.clone();
    let base: String = std::iter::once("LLMGW_SECRET")
        .chain(name.iter().copied())
        .collect::<Vec<_>>()
        .join("_")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
        .collect();
    let mut var = base.clone();
    let mut n = 1;
    while secrets.contains_key(&var) {
        n += 1;
        var = format!("{base}_{n}");
    }
    map.remove(field);
    map.insert(format!("{field}_env"), Value::String(var.clone()));
    secrets.insert(var, SecretValue(value));
}

/// An environment made of fixed pairs (tests, `render`).
#[derive(Debug, Clone, Default)]
pub struct MapEnv(pub BTreeMap<String, String>);

impl<const N: usize> From<[(&str, &str); N]> for MapEnv {
    fn from(pairs: [(&str, &str); N]) -> Self {
        MapEnv(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }
}

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

/// Every variable is set (to a placeholder): validates a config's shape without its secrets.
pub struct AnyEnv;

impl Env for AnyEnv {
    fn var(&self, _name: &str) -> Option<String> {
        Some("placeholder".into())
    }
}

/// A name usable as an Envoy cluster and metric label: `[A-Za-z0-9_-]`, others become `-`.
/// Dots are replaced too, since Envoy's stat tag extraction splits cluster stats at dots.
pub fn cluster_safe(name: &str) -> String {
    let s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '-' }).collect();
    if s.is_empty() {
        "backend".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn env_keys_are_collected_from_any_auth_shape() {
        let mut g = Gateway::new(Source::Demo);
        g.plugin = json!({"backends": [
            {"name": "a", "auth": {"bearer_env": "OPENAI_API_KEY"}},
            {"name": "b", "auth": {"aws": {"access_key_id_env": "AWS_ACCESS_KEY_ID", "secret_access_key": "x"}}},
            {"name": "c", "auth": {"bearer_env": "OPENAI_API_KEY"}}
        ]})
        .as_object()
        .cloned()
        .unwrap();
        // The session token is optional: the filter reads AWS_SESSION_TOKEN when it is set.
        assert_eq!(g.env_keys(), vec!["AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "OPENAI_API_KEY"]);
    }

    #[test]
    fn aws_credentials_without_keys_read_the_standard_variables() {
        let plugin = json!({"backends": [{"name": "b", "auth": {"aws": {"access_key_id_env": "MY_ID"}}}]});
        assert_eq!(env_keys(&plugin), vec!["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MY_ID"]);
    }

    #[test]
    fn literal_credentials_move_to_secrets() {
        let mut g = Gateway::new(Source::Demo);
        g.plugin = json!({"backends": [
            {"name": "open.ai", "auth": {"bearer": "sk-1"}},
            {"name": "az", "auth": {"api_key": "az-1"}},
            {"name": "an", "auth": {"x_api_key_env": "ANTHROPIC_API_KEY"}},
            {"name": "open-ai", "auth": {"bearer": "sk-2"}},
            {"name": "aws", "auth": {"aws": {"access_key_id": "AKIA", "secret_access_key": "s3cret"}}},
            {"name": "none"}
        ]})
        .as_object()
        .cloned()
        .unwrap();
        g.externalize_secrets();
        let text = Value::Object(g.plugin.clone()).to_string();
        for secret in ["sk-1", "sk-2", "az-1", "AKIA", "s3cret"] {
            assert!(!text.contains(secret), "{secret} still in {text}");
            assert!(!format!("{g:?}").contains(secret), "{secret} in Debug");
        }
        let env = MapEnv::default();
        let with = g.env(&env);
        assert_eq!(g.plugin["backends"][0]["auth"], json!({"bearer_env": "LLMGW_SECRET_OPEN_AI_BEARER"}));
        assert_eq!(with.var("LLMGW_SECRET_OPEN_AI_BEARER").as_deref(), Some("sk-1"));
        assert_eq!(g.plugin["backends"][3]["auth"], json!({"bearer_env": "LLMGW_SECRET_OPEN_AI_BEARER_2"}));
        assert_eq!(with.var("LLMGW_SECRET_OPEN_AI_BEARER_2").as_deref(), Some("sk-2"));
        assert_eq!(g.plugin["backends"][1]["auth"], json!({"api_key_env": "LLMGW_SECRET_AZ_API_KEY"}));
        assert_eq!(g.plugin["backends"][2]["auth"], json!({"x_api_key_env": "ANTHROPIC_API_KEY"}));
        assert_eq!(
            g.plugin["backends"][4]["auth"]["aws"],
            json!({"access_key_id_env": "LLMGW_SECRET_AWS_AWS_ACCESS_KEY_ID",
                   "secret_access_key_env": "LLMGW_SECRET_AWS_AWS_SECRET_ACCESS_KEY"})
        );
        assert_eq!(g.secrets.len(), 5);
        assert!(g.env_keys().contains(&"LLMGW_SECRET_AZ_API_KEY".to_string()));
        assert!(g.env_keys().contains(&"AWS_SESSION_TOKEN".to_string()));
    }

    #[test]
    fn locate_maps_plugin_paths_back() {
        let mut g = Gateway::new(Source::Demo);
        let doc = DocRef { index: 4, object: Some("AIServiceBackend/default/x".into()) };
        g.origins.push(Origin { plugin_path: "backends[1]".into(), document: Some(doc.clone()), field: "spec".into() });
        let (d, f) = g.locate("backends[1].schema");
        assert_eq!(d, Some(doc));
        assert_eq!(f, "spec (converted: backends[1].schema)");
        assert_eq!(g.locate("backends[10].name"), (None, "backends[10].name".to_string()));
    }

    #[test]
    fn cluster_names() {
        assert_eq!(cluster_safe("Qwen/Qwen2.5-1.5B-Instruct"), "Qwen-Qwen2-5-1-5B-Instruct");
        assert_eq!(cluster_safe(""), "backend");
    }
}
