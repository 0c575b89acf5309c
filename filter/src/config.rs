//! Plugin configuration: the user-facing wire form (`raw`), and the validated, immutable form every
//! request shares (`Compiled`). Errors name the field at fault; nothing here panics.

use std::fmt;

use crate::api::DEFAULT_ANTHROPIC_PREFIX;
use crate::budget::{Budget, Consumers, Count, Limit};
use crate::models::ListedModel;
use crate::mutation::BodyMutation;
use crate::routing::{Balancer, Fallback, HeaderMatcher, ModelMatcher, RetryOn, Rule, Target, WeightedBackend};

pub const BACKEND_HEADER: &str = "x-llmgw-backend";
pub const MODEL_HEADER: &str = "x-ai-eg-model";
/// Names the fallback rule (its index) whose cluster a request goes to; set by the downstream filter.
pub const RULE_HEADER: &str = "x-llmgw-rule";
const DEFAULT_MAX_BODY: usize = 32 * 1024 * 1024;
const DEFAULT_MAX_RESPONSE_BODY: usize = 16 * 1024 * 1024;
const DEFAULT_MAX_LABEL_SETS: usize = 2048;

/// A configuration problem, with the dotted path of the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

/// The constructors are cold, out of line and non-generic, and take borrowed parts (`at`: the
/// field's path as a parent and a suffix, `backends[0]` and `.name`; `_fmt`: a reason still to be
/// formatted): building each error's strings at its call site cost the module kilobytes.
impl ConfigError {
    #[cold]
    #[inline(never)]
    fn new(field: &str, reason: &str) -> Box<Self> {
        Self::build(field, "", reason.to_string())
    }

    #[cold]
    #[inline(never)]
    fn new_fmt(field: &str, reason: fmt::Arguments<'_>) -> Box<Self> {
        Self::build(field, "", fmt::format(reason))
    }

    #[cold]
    #[inline(never)]
    fn at(field: &str, key: &str, reason: &str) -> Box<Self> {
        Self::build(field, key, reason.to_string())
    }

    #[cold]
    #[inline(never)]
    fn at_fmt(field: &str, key: &str, reason: fmt::Arguments<'_>) -> Box<Self> {
        Self::build(field, key, fmt::format(reason))
    }

    fn build(field: &str, key: &str, reason: String) -> Box<Self> {
        Box::new(ConfigError { field: join(field, key), reason })
    }
}

/// `parent.name`.
#[inline(never)]
fn member(parent: &str, name: &str) -> String {
    let mut path = join(parent, ".");
    path.push_str(name);
    path
}

/// `parent` + `key` (`backends[0]` + `.auth`): one out-of-line function for every field path.
#[inline(never)]
fn join(parent: &str, key: &str) -> String {
    let mut path = String::with_capacity(parent.len() + key.len());
    path.push_str(parent);
    path.push_str(key);
    path
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() || self.field == "." {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

mod read;

/// The configuration as written, read by hand (`read.rs`): the same fields, defaults and errors
/// as serde's derive gave, without its code.
mod raw {
    use std::collections::BTreeMap;

    use super::read::{done, Json};
    use super::ConfigError;

    type Result<T> = std::result::Result<T, Box<ConfigError>>;

    pub struct Config {
        pub backends: Vec<Backend>,
        pub rules: Vec<Rule>,
        pub models: Vec<ModelEntry>,
        /// Where Anthropic's API is also served (`{prefix}/v1/messages`, ...).
        pub anthropic_prefix: Option<String>,
        pub max_request_body_bytes: Option<usize>,
        pub max_response_body_bytes: Option<usize>,
        pub stream_include_usage: Option<bool>,
        pub max_metric_label_sets: Option<usize>,
        /// `downstream` (default) or `upstream` (the copy running as a cluster filter).
        pub role: Option<String>,
        /// The request header naming the authenticated consumer (set by Envoy's auth filters).
        pub consumer_header: Option<String>,
        pub budgets: Vec<Budget>,
        pub tracing: Option<Tracing>,
        /// Request header → GenAI metric label (`OTEL_AIGW_METRICS_REQUEST_HEADER_ATTRIBUTES`).
        pub metrics_request_header_labels: BTreeMap<String, String>,
    }

    impl Config {
        #[inline(never)]
        pub fn read(json: Json<'_>) -> Result<Config> {
            let mut o = json.object(
                String::new(),
                "struct Config",
                &[
                    "backends",
                    "rules",
                    "models",
                    "anthropic_prefix",
                    "max_request_body_bytes",
                    "max_response_body_bytes",
                    "stream_include_usage",
                    "max_metric_label_sets",
                    "role",
                    "consumer_header",
                    "budgets",
                    "tracing",
                    "metrics_request_header_labels",
                ],
            )?;
            done(
                Config {
                    backends: o.list("backends", true, Backend::read),
                    rules: o.list("rules", false, Rule::read),
                    models: o.list("models", false, ModelEntry::read),
                    anthropic_prefix: o.opt_string("anthropic_prefix"),
                    max_request_body_bytes: o.opt_usize("max_request_body_bytes"),
                    max_response_body_bytes: o.opt_usize("max_response_body_bytes"),
                    stream_include_usage: o.opt_bool("stream_include_usage"),
                    max_metric_label_sets: o.opt_usize("max_metric_label_sets"),
                    role: o.opt_string("role"),
                    consumer_header: o.opt_string("consumer_header"),
                    budgets: o.list("budgets", false, Budget::read),
                    tracing: o.opt("tracing", Tracing::read),
                    metrics_request_header_labels: o.string_map("metrics_request_header_labels"),
                },
                o,
            )
        }
    }

    /// OpenTelemetry tracing (OTLP/HTTP protobuf or JSON to an Envoy cluster), as `llmgw run` renders it from
    /// the `OTEL_*` and `OPENINFERENCE_*` variables.
    pub struct Tracing {
        /// The collector's Envoy cluster; absent with `exporter: console`.
        pub cluster: Option<String>,
        /// `otlp` (default) or `console` (spans in the Envoy log).
        pub exporter: Option<String>,
        pub authority: Option<String>,
        pub path: Option<String>,
        pub service_name: Option<String>,
        pub resource_attributes: BTreeMap<String, String>,
        pub max_queue_size: Option<usize>,
        pub max_queue_bytes: Option<usize>,
        pub max_export_batch_size: Option<usize>,
        pub schedule_delay_ms: Option<u64>,
        pub export_timeout_ms: Option<u64>,
        pub max_span_content_bytes: Option<usize>,
        /// `http/protobuf` (default) or `http/json`.
        pub protocol: Option<String>,
        /// `openinference` (default) or `gen_ai`.
        pub semconv: Option<String>,
        pub hide_inputs: bool,
        pub hide_outputs: bool,
        pub hide_embeddings_text: bool,
        pub hide_embeddings_vectors: bool,
        /// Request header → span attribute (`OTEL_AIGW_SPAN_REQUEST_HEADER_ATTRIBUTES`).
        pub request_header_attributes: BTreeMap<String, String>,
    }

    impl Tracing {
        #[inline(never)]
        fn read(json: Json<'_>, path: String) -> Result<Tracing> {
            let mut o = json.object(
                path,
                "struct Tracing",
                &[
                    "cluster",
                    "exporter",
                    "authority",
                    "path",
                    "service_name",
                    "resource_attributes",
                    "max_queue_size",
                    "max_queue_bytes",
                    "max_export_batch_size",
                    "schedule_delay_ms",
                    "export_timeout_ms",
                    "max_span_content_bytes",
                    "protocol",
                    "semconv",
                    "hide_inputs",
                    "hide_outputs",
                    "hide_embeddings_text",
                    "hide_embeddings_vectors",
                    "request_header_attributes",
                ],
            )?;
            done(
                Tracing {
                    cluster: o.opt_string("cluster"),
                    exporter: o.opt_string("exporter"),
                    authority: o.opt_string("authority"),
                    path: o.opt_string("path"),
                    service_name: o.opt_string("service_name"),
                    resource_attributes: o.string_map("resource_attributes"),
                    max_queue_size: o.opt_usize("max_queue_size"),
                    max_queue_bytes: o.opt_usize("max_queue_bytes"),
                    max_export_batch_size: o.opt_usize("max_export_batch_size"),
                    schedule_delay_ms: o.opt_u64("schedule_delay_ms"),
                    export_timeout_ms: o.opt_u64("export_timeout_ms"),
                    max_span_content_bytes: o.opt_usize("max_span_content_bytes"),
                    protocol: o.opt_string("protocol"),
                    semconv: o.opt_string("semconv"),
                    hide_inputs: o.flag("hide_inputs"),
                    hide_outputs: o.flag("hide_outputs"),
                    hide_embeddings_text: o.flag("hide_embeddings_text"),
                    hide_embeddings_vectors: o.flag("hide_embeddings_vectors"),
                    request_header_attributes: o.string_map("request_header_attributes"),
                },
                o,
            )
        }
    }

    pub struct Budget {
        pub name: String,
        pub consumer: String,
        pub model: Option<StringMatch>,
        pub tokens: Option<u64>,
        pub requests: Option<u64>,
        pub per: String,
        pub count: Option<String>,
        pub default_output_reserve: Option<u64>,
        pub max_consumers: Option<u64>,
    }

    impl Budget {
        #[inline(never)]
        fn read(json: Json<'_>, path: String) -> Result<Budget> {
            let mut o = json.object(
                path,
                "struct Budget",
                &[
                    "name",
                    "consumer",
                    "model",
                    "tokens",
                    "requests",
                    "per",
                    "count",
                    "default_output_reserve",
                    "max_consumers",
                ],
            )?;
            done(
                Budget {
                    name: o.string("name"),
                    consumer: o.string("consumer"),
                    model: o.opt("model", StringMatch::read),
                    tokens: o.opt_u64("tokens"),
                    requests: o.opt_u64("requests"),
                    per: o.string("per"),
                    count: o.opt_string("count"),
                    default_output_reserve: o.opt_u64("default_output_reserve"),
                    max_consumers: o.opt_u64("max_consumers"),
                },
                o,
            )
        }
    }

    /// A listed model: its id, or its id and how the model lists describe it.
    pub enum ModelEntry {
        Id(String),
        Described(DescribedModel),
    }

    impl ModelEntry {
        #[inline(never)]
        fn read(json: Json<'_>, path: String) -> Result<ModelEntry> {
            if json.is_string() {
                return json.string(&path).map(ModelEntry::Id);
            }
            if !json.is_object() {
                return Err(json.invalid_type(&path, "a model id, or {id, owned_by, created, display_name}"));
            }
            let mut o = json.object(path, "struct DescribedModel", &["id", "owned_by", "created", "display_name"])?;
            done(
                ModelEntry::Described(DescribedModel {
                    id: o.string("id"),
                    owned_by: o.opt_string("owned_by"),
                    created: o.opt_u64("created"),
                    display_name: o.opt_string("display_name"),
                }),
                o,
            )
        }
    }

    pub struct DescribedModel {
        pub id: String,
        pub owned_by: Option<String>,
        pub created: Option<u64>,
        pub display_name: Option<String>,
    }

    pub struct Backend {
        pub name: String,
        pub schema: String,
        pub prefix: Option<String>,
        pub model_override: Option<String>,
        pub headers: HeaderMutations,
        pub auth: Option<Auth>,
        pub pass_through_authorization: bool,
        pub host: Option<String>,
        pub api_version: Option<String>,
        pub anthropic_version: Option<String>,
        pub region: Option<String>,
        pub project: Option<String>,
        pub default_max_tokens: Option<u32>,
        pub forward_billing_headers: bool,
        pub forward_headers: Vec<String>,
        pub allow_gcs_uris: Option<bool>,
        pub body_mutation: Option<BodyMutation>,
        pub credential_override: Option<CredentialOverride>,
        pub picker: Option<Picker>,
    }

    impl Backend {
        #[inline(never)]
        fn read(json: Json<'_>, path: String) -> Result<Backend> {
            let mut o = json.object(
                path,
                "struct Backend",
                &[
                    "name",
                    "schema",
                    "prefix",
                    "model_override",
                    "headers",
                    "auth",
                    "pass_through_authorization",
                    "host",
                    "api_version",
                    "anthropic_version",
                    "region",
                    "project",
                    "default_max_tokens",
                    "forward_billing_headers",
                    "forward_headers",
                    "allow_gcs_uris",
                    "body_mutation",
                    "credential_override",
                    "picker",
                ],
            )?;
            done(
                Backend {
                    name: o.string("name"),
                    schema: o.string("schema"),
                    prefix: o.opt_string("prefix"),
                    model_override: o.opt_string("model_override"),
                    headers: o.or_default("headers", HeaderMutations::read),
                    auth: o.opt("auth", Auth::read),
                    pass_through_authorization: o.flag("pass_through_authorization"),
                    host: o.opt_string("host"),
                    api_version: o.opt_string("api_version"),
                    anthropic_version: o.opt_string("anthropic_version"),
                    region: o.opt_string("region"),
                    project: o.opt_string("project"),
                    default_max_tokens: o.opt_u32("default_max_tokens"),
                    forward_billing_headers: o.flag("forward_billing_headers"),
                    forward_headers: o.strings("forward_headers"),
                    allow_gcs_uris: o.opt_bool("allow_gcs_uris"),
                    body_mutation: o.opt("body_mutation", BodyMutation::read),
                    credential_override: o.opt("credential_override", CredentialOverride::read),
                    picker: o.opt("picker", Picker::read),
                },
                o,
            )
        }
    }

    /// Which of the backend's endpoints serves each request (`picker.rs`).
    pub struct Picker {
        pub algorithm: String,
        pub endpoints: Vec<String>,
        pub prefill_endpoints: Vec<String>,
        pub prefix_block_size: Option<usize>,
        pub imbalance_threshold: Option<u64>,
        pub max_prefixes: Option<usize>,
        pub metrics_scrape_interval_ms: Option<u64>,
    }

    impl Picker {
        #[inline(never)]
        fn read(json: Json<'_>, path: String) -> Result<Picker> {
            let mut o = json.object(
                path,
                "struct Picker",
                &[
                    "algorithm",
                    "endpoints",
                    "prefill_endpoints",
                    "prefix_block_size",
                    "imbalance_threshold",
                    "max_prefixes",
                    "metrics_scrape_interval_ms",
                ],
            )?;
            done(
                Picker {
                    algorithm: o.string("algorithm"),
                    endpoints: o.list("endpoints", true, super::read::string_at),
                    prefill_endpoints: o.strings("prefill_endpoints"),
                    prefix_block_size: o.opt_usize("prefix_block_size"),
                    imbalance_threshold: o.opt_u64("imbalance_threshold"),
                    max_prefixes: o.opt_usize("max_prefixes"),
                    metrics_scrape_interval_ms: o.opt_u64("metrics_scrape_interval_ms"),
                },
                o,
            )
        }
    }

    /// `set`: field name → any JSON value; `remove`: field names.
    #[derive(Default)]
    pub struct BodyMutation {
        pub set: Fields,
        pub remove: Vec<String>,
    }

    impl BodyMutation {
        #[inline(never)]
        fn read(json: Json<'_>, path: String) -> Result<BodyMutation> {
            let mut o = json.object(path, "struct BodyMutation", &["set", "remove"])?;
            done(BodyMutation { set: o.or_default("set", Fields::read), remove: o.strings("remove") }, o)
        }
    }

    /// An object's members in order, refusing a name given twice (a map would keep the last).
    /// Values stay JSON text: nothing is built from them.
    #[derive(Default)]
    pub struct Fields(pub Vec<(String, Box<serde_json::value::RawValue>)>);

    impl Fields {
        #[inline(never)]
        fn read(json: Json<'_>, path: String) -> Result<Fields> {
            let mut out: Vec<(String, Box<serde_json::value::RawValue>)> = Vec::new();
            for m in json.members(&path, "an object of field names and JSON values")? {
                let name = m.name;
                if out.iter().any(|(n, _)| *n == name) {
                    return Err(m.value.custom(&path, format_args!("field {name:?} is set twice")));
                }
                out.push((name.into_owned(), m.value.raw()?));
            }
            Ok(Fields(out))
        }
    }

    /// Request headers a request's own upstream credential comes from.
    pub struct CredentialOverride {
        pub header: Option<String>,
        pub access_key_id_header: Option<String>,
        pub secret_access_key_header: Option<String>,
        pub session_token_header: Option<String>,
        pub fallback_to_configured: Option<bool>,
    }

    impl CredentialOverride {
        #[inline(never)]
        fn read(json: Json<'_>, path: String) -> Result<CredentialOverride> {
            let mut o = json.object(
                path,
                "struct CredentialOverride",
                &[
                    "header",
                    "access_key_id_header",
                    "secret_access_key_header",
                    "session_token_header",
                    "fallback_to_configured",
                ],
            )?;
            done(
                CredentialOverride {
                    header: o.opt_string("header"),
                    access_key_id_header: o.opt_string("access_key_id_header"),
                    secret_access_key_header: o.opt_string("secret_access_key_header"),
                    session_token_header: o.opt_string("session_token_header"),
                    fallback_to_configured: o.opt_bool("fallback_to_configured"),
                },
                o,
            )
        }
    }

    #[derive(Default)]
    pub struct HeaderMutations {
        pub set: BTreeMap<String, String>,
        pub remove: Vec<String>,
    }

    impl HeaderMutations {
        #[inline(never)]
        fn read(json: Json<'_>, path: String) -> Result<HeaderMutations> {
            let mut o = json.object(path, "struct HeaderMutations", &["set", "remove"])?;
            done(HeaderMutations { set: o.string_map("set"), remove: o.strings("remove") }, o)
        }
    }

    pub struct Auth {
        pub bearer: Option<String>,
        pub bearer_env: Option<String>,
        pub api_key: Option<String>,
        pub api_key_env: Option<String>,
        pub x_api_key: Option<String>,
        pub x_api_key_env: Option<String>,
        pub aws: Option<AwsAuth>,
    }

    impl Auth {
        #[inline(never)]
        fn read(json: Json<'_>, path: String) -> Result<Auth> {
            let mut o = json.object(
                path,
                "struct Auth",
                &["bearer", "bearer_env", "api_key", "api_key_env", "x_api_key", "x_api_key_env", "aws"],
            )?;
            done(
                Auth {
                    bearer: o.opt_string("bearer"),
                    bearer_env: o.opt_string("bearer_env"),
                    api_key: o.opt_string("api_key"),
                    api_key_env: o.opt_string("api_key_env"),
                    x_api_key: o.opt_string("x_api_key"),
                    x_api_key_env: o.opt_string("x_api_key_env"),
                    aws: o.opt("aws", AwsAuth::read),
                },
                o,
            )
        }
    }

    pub struct AwsAuth {
        pub access_key_id: Option<String>,
        pub access_key_id_env: Option<String>,
        pub secret_access_key: Option<String>,
        pub secret_access_key_env: Option<String>,
        pub session_token: Option<String>,
        pub session_token_env: Option<String>,
    }

    impl AwsAuth {
        #[inline(never)]
        fn read(json: Json<'_>, path: String) -> Result<AwsAuth> {
            let mut o = json.object(
                path,
                "struct AwsAuth",
                &[
                    "access_key_id",
                    "access_key_id_env",
                    "secret_access_key",
                    "secret_access_key_env",
                    "session_token",
                    "session_token_env",
                ],
            )?;
            done(
                AwsAuth {
                    access_key_id: o.opt_string("access_key_id"),
                    access_key_id_env: o.opt_string("access_key_id_env"),
                    secret_access_key: o.opt_string("secret_access_key"),
                    secret_access_key_env: o.opt_string("secret_access_key_env"),
                    session_token: o.opt_string("session_token"),
                    session_token_env: o.opt_string("session_token_env"),
                },
                o,
            )
        }
    }

    pub struct Rule {
        pub name: Option<String>,
        pub matches: Match,
        pub backends: Vec<BackendRef>,
        pub retry: Option<Retry>,
        /// Read by hand (`compile_cache`).
        pub cache: Option<Fields>,
    }

    impl Rule {
        #[inline(never)]
        fn read(json: Json<'_>, path: String) -> Result<Rule> {
            let mut o = json.object(path, "struct Rule", &["name", "match", "backends", "retry", "cache"])?;
            done(
                Rule {
                    name: o.opt_string("name"),
                    matches: o.or_default("match", Match::read),
                    backends: o.list("backends", true, BackendRef::read),
                    retry: o.opt("retry", Retry::read),
                    cache: o.opt("cache", Fields::read),
                },
                o,
            )
        }
    }

    pub struct Retry {
        pub attempts: Option<u32>,
        pub on: Option<Vec<String>>,
        pub per_try_timeout: Option<String>,
        pub first_byte_timeout: Option<String>,
    }

    impl Retry {
        #[inline(never)]
        fn read(json: Json<'_>, path: String) -> Result<Retry> {
            let mut o =
                json.object(path, "struct Retry", &["attempts", "on", "per_try_timeout", "first_byte_timeout"])?;
            done(
                Retry {
                    attempts: o.opt_u32("attempts"),
                    on: o.opt_strings("on"),
                    per_try_timeout: o.opt_string("per_try_timeout"),
                    first_byte_timeout: o.opt_string("first_byte_timeout"),
                },
                o,
            )
        }
    }

    #[derive(Default)]
    pub struct Match {
        pub model: Option<StringMatch>,
        pub headers: Vec<HeaderMatch>,
    }

    impl Match {
        #[inline(never)]
        fn read(json: Json<'_>, path: String) -> Result<Match> {
            let mut o = json.object(path, "struct Match", &["model", "headers"])?;
            done(
                Match {
                    model: o.opt("model", StringMatch::read),
                    headers: o.list("headers", false, HeaderMatch::read),
                },
                o,
            )
        }
    }

    pub struct StringMatch {
        pub exact: Option<String>,
        pub prefix: Option<String>,
        pub glob: Option<String>,
        pub regex: Option<String>,
    }

    impl StringMatch {
        #[inline(never)]
        fn read(json: Json<'_>, path: String) -> Result<StringMatch> {
            let mut o = json.object(path, "struct StringMatch", &["exact", "prefix", "glob", "regex"])?;
            done(
                StringMatch {
                    exact: o.opt_string("exact"),
                    prefix: o.opt_string("prefix"),
                    glob: o.opt_string("glob"),
                    regex: o.opt_string("regex"),
                },
                o,
            )
        }
    }

    pub struct HeaderMatch {
        pub name: String,
        pub exact: Option<String>,
        pub prefix: Option<String>,
        pub regex: Option<String>,
        pub present: Option<bool>,
    }

    impl HeaderMatch {
        #[inline(never)]
        fn read(json: Json<'_>, path: String) -> Result<HeaderMatch> {
            let mut o = json.object(path, "struct HeaderMatch", &["name", "exact", "prefix", "regex", "present"])?;
            done(
                HeaderMatch {
                    name: o.string("name"),
                    exact: o.opt_string("exact"),
                    prefix: o.opt_string("prefix"),
                    regex: o.opt_string("regex"),
                    present: o.opt_bool("present"),
                },
                o,
            )
        }
    }

    pub struct BackendRef {
        pub name: String,
        pub weight: Option<u32>,
        pub priority: Option<u32>,
        pub model_override: Option<String>,
        pub body_mutation: Option<BodyMutation>,
    }

    impl BackendRef {
        #[inline(never)]
        fn read(json: Json<'_>, path: String) -> Result<BackendRef> {
            let mut o = json.object(
                path,
                "struct BackendRef",
                &["name", "weight", "priority", "model_override", "body_mutation"],
            )?;
            done(
                BackendRef {
                    name: o.string("name"),
                    weight: o.opt_u32("weight"),
                    priority: o.opt_u32("priority"),
                    model_override: o.opt_string("model_override"),
                    body_mutation: o.opt("body_mutation", BodyMutation::read),
                },
                o,
            )
        }
    }
}

/// Upstream API families. Parsed from a string so an unknown value is reported by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// Any OpenAI-compatible server (OpenAI, vLLM, Ollama, ...).
    OpenAI,
    /// `/openai/deployments/{deployment}/...?api-version=...`.
    AzureOpenAI,
    /// Anthropic Messages API.
    Anthropic,
    /// AWS Bedrock Converse API, SigV4-signed.
    AWSBedrock,
    /// Anthropic Messages body on Bedrock `invoke`, SigV4-signed.
    AWSAnthropic,
    /// Gemini on Vertex AI.
    GCPVertexAI,
    /// Anthropic Messages body on Vertex AI `rawPredict`.
    GCPAnthropic,
}

impl Schema {
    pub const SUPPORTED: &'static [&'static str] =
        &["OpenAI", "AzureOpenAI", "Anthropic", "AWSBedrock", "AWSAnthropic", "GCPVertexAI", "GCPAnthropic"];

    fn parse(value: &str) -> Option<Schema> {
        Some(match value {
            "OpenAI" => Schema::OpenAI,
            "AzureOpenAI" => Schema::AzureOpenAI,
            "Anthropic" => Schema::Anthropic,
            "AWSBedrock" => Schema::AWSBedrock,
            "AWSAnthropic" => Schema::AWSAnthropic,
            "GCPVertexAI" => Schema::GCPVertexAI,
            "GCPAnthropic" => Schema::GCPAnthropic,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Schema::OpenAI => "OpenAI",
            Schema::AzureOpenAI => "AzureOpenAI",
            Schema::Anthropic => "Anthropic",
            Schema::AWSBedrock => "AWSBedrock",
            Schema::AWSAnthropic => "AWSAnthropic",
            Schema::GCPVertexAI => "GCPVertexAI",
            Schema::GCPAnthropic => "GCPAnthropic",
        }
    }

    pub fn default_prefix(self) -> &'static str {
        match self {
            Schema::OpenAI | Schema::Anthropic | Schema::GCPVertexAI | Schema::GCPAnthropic => "/v1",
            Schema::AzureOpenAI | Schema::AWSBedrock | Schema::AWSAnthropic => "",
        }
    }
}

/// A header value that must never reach a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A fixed header that authenticates the gateway, e.g. `authorization: Bearer sk-...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderCredential {
    pub header: &'static str,
    pub value: Secret,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsCredential {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

/// How the gateway authenticates one request to a backend (lent by [`Backend::credential`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// A header with a fixed value.
    Header(&'a HeaderCredential),
    /// AWS SigV4 signing of each request, in the backend's region.
    Aws { credential: &'a AwsCredential, region: &'a str },
}

#[derive(Debug, Clone)]
pub struct Backend {
    pub name: String,
    pub prefix: String,
    pub model_override: Option<String>,
    pub set_headers: Vec<(String, String)>,
    pub remove_headers: Vec<String>,
    pub pass_through_authorization: bool,
    /// `:authority` sent upstream (needed where it is signed, as with SigV4).
    pub authority: Option<String>,
    /// Client billing/identity headers (`openai-organization`, `openai-project`,
    /// `x-goog-user-project`) reach this backend only when set: they choose whose bill it is.
    pub forward_billing_headers: bool,
    /// Client request headers forwarded besides the per-schema allowlist (lower-case).
    pub forward_headers: Vec<String>,
    /// Top-level fields set or removed in the body the provider receives (after translation).
    pub body_mutation: Option<BodyMutation>,
    /// Request headers that carry this request's own upstream credential.
    pub credential_override: Option<CredentialOverride>,
    /// The filter picks one of these endpoints per request (Envoy's override-host policy connects to it).
    pub picker: Option<crate::picker::Picker>,
    /// The schema, with the settings only it reads.
    pub api: BackendApi,
}

/// Where a request's own upstream credential comes from (`credential_override`). Its headers are
/// removed from every request to the backend, used or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialOverride {
    /// The value of request header `from` is the key sent in header `to` (after `prefix`, e.g.
    /// `Bearer `), instead of the configured one.
    Header { from: String, to: &'static str, prefix: &'static str, fallback_to_configured: bool },
    /// SigV4 keys from these request headers sign the request.
    Aws {
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
        fallback_to_configured: bool,
    },
}

impl CredentialOverride {
    /// The request headers it reads (lower-case).
    pub fn headers(&self) -> Vec<&str> {
        match self {
            CredentialOverride::Header { from, .. } => vec![from.as_str()],
            CredentialOverride::Aws { access_key_id, secret_access_key, session_token, .. } => {
                let mut out = vec![access_key_id.as_str(), secret_access_key.as_str()];
                out.extend(session_token.as_deref());
                out
            }
        }
    }

    /// Without its headers, the request uses the configured credential (else it is refused).
    pub fn fallback_to_configured(&self) -> bool {
        match self {
            CredentialOverride::Header { fallback_to_configured, .. }
            | CredentialOverride::Aws { fallback_to_configured, .. } => *fallback_to_configured,
        }
    }
}

/// One variant per [`Schema`], holding exactly the settings that schema reads.
///
/// `anthropic_version` is the `anthropic-version` header (Anthropic) or body field (AWS/GCP
/// Anthropic); `default_max_tokens` is the `max_tokens` sent to APIs that require one when the
/// client gave none; `region` is the AWS region (also the SigV4 region) or the GCP location.
#[derive(Debug, Clone)]
pub enum BackendApi {
    OpenAI {
        credential: Option<HeaderCredential>,
    },
    AzureOpenAI {
        /// The `api-version` query parameter.
        api_version: String,
        credential: Option<HeaderCredential>,
    },
    Anthropic {
        anthropic_version: String,
        default_max_tokens: u32,
        credential: Option<HeaderCredential>,
    },
    AWSBedrock {
        region: String,
        /// Every request is SigV4-signed: with these keys, or (`None` only with a
        /// `credential_override`) with the request's own.
        credential: Option<AwsCredential>,
        default_max_tokens: u32,
    },
    AWSAnthropic {
        region: String,
        /// As for `AWSBedrock`.
        credential: Option<AwsCredential>,
        anthropic_version: String,
        default_max_tokens: u32,
    },
    GCPVertexAI {
        project: String,
        region: String,
        /// `gs://` URIs from clients may be sent: they read the operator's buckets with the
        /// gateway's credentials, so they are refused unless allowed.
        allow_gcs_uris: bool,
        credential: Option<HeaderCredential>,
    },
    GCPAnthropic {
        project: String,
        region: String,
        anthropic_version: String,
        default_max_tokens: u32,
        credential: Option<HeaderCredential>,
    },
}

impl Backend {
    pub fn schema(&self) -> Schema {
        self.api.schema()
    }

    /// The credential each request to this backend carries, if any.
    pub fn credential(&self) -> Option<Credential<'_>> {
        match &self.api {
            BackendApi::OpenAI { credential }
            | BackendApi::AzureOpenAI { credential, .. }
            | BackendApi::Anthropic { credential, .. }
            | BackendApi::GCPVertexAI { credential, .. }
            | BackendApi::GCPAnthropic { credential, .. } => credential.as_ref().map(Credential::Header),
            BackendApi::AWSBedrock { region, credential, .. } | BackendApi::AWSAnthropic { region, credential, .. } => {
                credential.as_ref().map(|credential| Credential::Aws { credential, region })
            }
        }
    }

    /// The SigV4 region of an AWS backend (every request to one is signed).
    pub fn aws_region(&self) -> Option<&str> {
        match &self.api {
            BackendApi::AWSBedrock { region, .. } | BackendApi::AWSAnthropic { region, .. } => Some(region),
            BackendApi::OpenAI { .. }
            | BackendApi::AzureOpenAI { .. }
            | BackendApi::Anthropic { .. }
            | BackendApi::GCPVertexAI { .. }
            | BackendApi::GCPAnthropic { .. } => None,
        }
    }
}

impl BackendApi {
    pub fn schema(&self) -> Schema {
        match self {
            BackendApi::OpenAI { .. } => Schema::OpenAI,
            BackendApi::AzureOpenAI { .. } => Schema::AzureOpenAI,
            BackendApi::Anthropic { .. } => Schema::Anthropic,
            BackendApi::AWSBedrock { .. } => Schema::AWSBedrock,
            BackendApi::AWSAnthropic { .. } => Schema::AWSAnthropic,
            BackendApi::GCPVertexAI { .. } => Schema::GCPVertexAI,
            BackendApi::GCPAnthropic { .. } => Schema::GCPAnthropic,
        }
    }

    /// The `:authority` of the provider's public endpoint, where the schema implies one.
    fn default_authority(&self) -> Option<String> {
        match self {
            BackendApi::AWSBedrock { region, .. } | BackendApi::AWSAnthropic { region, .. } => {
                Some(format!("bedrock-runtime.{region}.amazonaws.com"))
            }
            BackendApi::GCPVertexAI { region, .. } | BackendApi::GCPAnthropic { region, .. } if region == "global" => {
                Some("aiplatform.googleapis.com".into())
            }
            BackendApi::GCPVertexAI { region, .. } | BackendApi::GCPAnthropic { region, .. } => {
                Some(format!("{region}-aiplatform.googleapis.com"))
            }
            BackendApi::OpenAI { .. } | BackendApi::AzureOpenAI { .. } | BackendApi::Anthropic { .. } => None,
        }
    }
}

/// The validated configuration, built once per `on_configure` and shared read-only by every request.
#[derive(Debug)]
pub struct Compiled {
    /// The configured backends, then one copy per rule backend with its own `model_override`
    /// (targets point at the copy; it keeps the backend's name).
    pub backends: Vec<Backend>,
    pub role: Role,
    pub rules: Vec<Rule>,
    /// Request header names some rule matches on, so a request fetches only those.
    pub matched_header_names: Vec<String>,
    /// What `GET /v1/models` and the Anthropic-shaped model list list.
    pub models: Vec<ListedModel>,
    /// The `GET /v1/models` response, rendered once.
    pub models_body: Vec<u8>,
    /// Where Anthropic's API is also served: `{anthropic_prefix}/v1/messages`, ...
    pub anthropic_prefix: String,
    pub max_request_body_bytes: usize,
    /// Answers the filter must hold whole (translated, non-streaming) are refused past this (502).
    pub max_response_body_bytes: usize,
    pub stream_include_usage: bool,
    pub max_metric_label_sets: usize,
    /// Lower-case name of the header naming the consumer; `None`: every request is consumer `""`.
    pub consumer_header: Option<String>,
    pub budgets: Vec<Budget>,
    /// Spans to an OTLP collector; `None`: no tracing.
    pub tracing: Option<crate::trace::Settings>,
    /// (request header, metric label) pairs the GenAI request metrics carry.
    pub metric_header_labels: Vec<(String, String)>,
}

/// Where this copy of the filter runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The listener's HTTP filter: reads the model, picks the rule, and translates for one backend
    /// (or, on a fallback rule, names the rule's cluster and leaves each attempt to `Upstream`).
    Downstream,
    /// A cluster (upstream) HTTP filter of a fallback rule's cluster: translates each attempt for
    /// the backend Envoy picked.
    Upstream,
}

/// Reads an environment variable; injected so tests need not touch the process environment.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process (or Wasm VM) environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// Parses JSON configuration text and compiles it.
/// `created` is the unix time reported for models by `GET /v1/models`.
pub fn parse(text: &[u8], env: &dyn Env, created: u64) -> Result<Compiled, ConfigError> {
    let raw = deserialize(text).map_err(|e| *e)?;
    compile(raw, env, created).map_err(|e| *e)
}

fn deserialize(text: &[u8]) -> Result<raw::Config, Box<ConfigError>> {
    let trimmed = text.iter().position(|b| !b.is_ascii_whitespace()).and_then(|i| text.get(i..));
    match trimmed {
        None => Err(ConfigError::new("", "configuration is empty; at least `backends` is required")),
        Some(body) if body.first() == Some(&b'{') => from_json(body),
        Some(body) => not_json(body),
    }
}

/// Every error names the field at fault (`rules[0].backends[1].weight`), in the module as in the
/// CLI (`llmgw check`/`run`/`render`), and serde_json's line and column locate it.
fn from_json(body: &[u8]) -> Result<raw::Config, Box<ConfigError>> {
    raw::Config::read(read::document(body)?)
}

/// The filter takes JSON only (YAML would cost the module a tenth of its size); `llmgw run` and
/// `llmgw render` convert YAML configurations.
#[cfg(not(test))]
fn not_json(_: &[u8]) -> Result<raw::Config, Box<ConfigError>> {
    Err(ConfigError::new("", "the plugin configuration must be a JSON object (llmgw run / llmgw render convert YAML)"))
}

/// Unit tests write configurations in YAML for brevity.
#[cfg(test)]
fn not_json(body: &[u8]) -> Result<raw::Config, Box<ConfigError>> {
    let value: serde_json::Value =
        serde_yaml_ng::from_slice(body).map_err(|e| ConfigError::new_fmt("", format_args!("test YAML: {e}")))?;
    from_json(&serde_json::to_vec(&value).unwrap_or_default())
}

fn compile(raw: raw::Config, env: &dyn Env, created: u64) -> Result<Compiled, Box<ConfigError>> {
    if raw.backends.is_empty() {
        return Err(ConfigError::new("backends", "at least one backend is required"));
    }
    let mut backends = Vec::with_capacity(raw.backends.len());
    for (i, b) in raw.backends.into_iter().enumerate() {
        let field = format!("backends[{i}]");
        let backend = compile_backend(b, &field, env)?;
        if backends.iter().any(|existing: &Backend| existing.name == backend.name) {
            return Err(ConfigError::at_fmt(
                &field,
                ".name",
                format_args!("duplicate backend name {:?}", backend.name),
            ));
        }
        backends.push(backend);
    }

    let role = match raw.role.as_deref() {
        None | Some("downstream") => Role::Downstream,
        Some("upstream") => Role::Upstream,
        Some(other) => {
            return Err(ConfigError::new_fmt("role", format_args!("must be downstream or upstream, not {other:?}")));
        }
    };
    let mut rules = Vec::with_capacity(raw.rules.len());
    for (i, r) in raw.rules.into_iter().enumerate() {
        rules.push(compile_rule(r, &format!("rules[{i}]"), &mut backends)?);
    }
    if rules.is_empty() {
        if backends.len() > 1 {
            return Err(ConfigError::new(
                "rules",
                "with more than one backend, rules are required to say which model goes where \
                 (a rule without `match` is the default)",
            ));
        }
        // One backend and no rules: every model goes there; no selector header, ever.
        rules.push(Rule::default_to(0));
    }

    let mut matched_header_names: Vec<String> = Vec::new();
    for rule in &rules {
        for h in &rule.headers {
            if !matched_header_names.contains(&h.name) {
                matched_header_names.push(h.name.clone());
            }
        }
    }

    let models = list_models(&rules, &backends, raw.models, created)?;
    let models_body = crate::models::openai_body(&models);
    let anthropic_prefix = match raw.anthropic_prefix {
        None => DEFAULT_ANTHROPIC_PREFIX.to_string(),
        Some(p) => check_anthropic_prefix(p)?,
    };

    let max_request_body_bytes = raw.max_request_body_bytes.unwrap_or(DEFAULT_MAX_BODY);
    if max_request_body_bytes == 0 {
        return Err(ConfigError::new("max_request_body_bytes", "must be greater than 0"));
    }
    let max_metric_label_sets = raw.max_metric_label_sets.unwrap_or(DEFAULT_MAX_LABEL_SETS);
    let max_response_body_bytes = raw.max_response_body_bytes.unwrap_or(DEFAULT_MAX_RESPONSE_BODY);
    if max_response_body_bytes == 0 {
        return Err(ConfigError::new("max_response_body_bytes", "must be greater than 0"));
    }

    Ok(Compiled {
        backends,
        role,
        rules,
        matched_header_names,
        models,
        models_body,
        anthropic_prefix,
        max_request_body_bytes,
        max_response_body_bytes,
        stream_include_usage: raw.stream_include_usage.unwrap_or(true),
        max_metric_label_sets,
        consumer_header: raw.consumer_header.map(|h| header_name(&h, "consumer_header")).transpose()?,
        budgets: compile_budgets(raw.budgets)?,
        tracing: raw.tracing.map(compile_tracing).transpose()?,
        metric_header_labels: header_mappings(
            raw.metrics_request_header_labels,
            "metrics_request_header_labels",
            true,
        )?,
    })
}

/// At most this many request headers map to span attributes, and as many to metric labels.
pub const MAX_HEADER_MAPPINGS: usize = 16;

/// `header → name` mappings, header names lower-cased; a metric label (`label`) is made a valid
/// Prometheus label name and may not take one of the gateway's own.
fn header_mappings(
    raw: std::collections::BTreeMap<String, String>,
    field: &str,
    label: bool,
) -> Result<Vec<(String, String)>, Box<ConfigError>> {
    if raw.len() > MAX_HEADER_MAPPINGS {
        return Err(ConfigError::new_fmt(field, format_args!("at most {MAX_HEADER_MAPPINGS} headers")));
    }
    let mut out: Vec<(String, String)> = Vec::with_capacity(raw.len());
    for (header, name) in raw {
        let header = header_name(&header, field)?;
        let name = if label { crate::metrics::label_name(&name) } else { name };
        let taken = label && crate::metrics::LABELS.contains(&name.as_str());
        if name.is_empty() || taken || out.iter().any(|(_, n)| *n == name) {
            return Err(ConfigError::new_fmt(&member(field, &header), format_args!("{name:?} is empty or taken")));
        }
        out.push((header, name));
    }
    Ok(out)
}

const DEFAULT_OUTPUT_RESERVE: u64 = 1024;
const DEFAULT_MAX_CONSUMERS: u64 = 10_000;

fn compile_tracing(t: raw::Tracing) -> Result<crate::trace::Settings, Box<ConfigError>> {
    use crate::trace::{Encoding, Hide, Semconv, Settings};
    let cluster = match (t.exporter.as_deref(), t.cluster) {
        (None | Some("otlp"), Some(cluster)) if !cluster.is_empty() => Some(cluster),
        (None | Some("otlp"), _) => {
            return Err(ConfigError::new("tracing.cluster", "the collector's cluster is required"))
        }
        (Some("console"), _) => None,
        (Some(other), _) => {
            return Err(ConfigError::new_fmt(
                "tracing.exporter",
                format_args!("must be otlp or console, not {other:?}"),
            ))
        }
    };
    // The console exporter logs spans as text: JSON.
    let encoding = match (t.protocol.as_deref(), &cluster) {
        (_, None) | (Some("http/json"), _) => Encoding::Json,
        (None | Some("http/protobuf"), _) => Encoding::Protobuf,
        (Some(other), _) => {
            return Err(ConfigError::new_fmt(
                "tracing.protocol",
                format_args!("must be http/protobuf (the default) or http/json, not {other:?}"),
            ))
        }
    };
    let mut s = Settings::new(cluster, encoding, t.service_name.as_deref().unwrap_or("llmgw"), &t.resource_attributes);
    s.semconv = match t.semconv.as_deref() {
        None | Some("openinference") => Semconv::OpenInference,
        Some("gen_ai") => Semconv::GenAi,
        Some(other) => {
            return Err(ConfigError::new_fmt(
                "tracing.semconv",
                format_args!("must be openinference or gen_ai, not {other:?}"),
            ))
        }
    };
    s.authority = t.authority.unwrap_or_default();
    if let Some(path) = t.path {
        if !path.starts_with('/') || !is_header_value(&path) {
            return Err(ConfigError::new("tracing.path", "must be a path starting with /"));
        }
        s.path = path;
    }
    let positive = |value: Option<usize>, default: usize, field: &str| match value {
        Some(0) => Err(ConfigError::at("tracing.", field, "must be greater than 0")),
        v => Ok(v.unwrap_or(default)),
    };
    s.max_queue_size = positive(t.max_queue_size, s.max_queue_size, "max_queue_size")?;
    s.max_queue_bytes = positive(t.max_queue_bytes, s.max_queue_bytes, "max_queue_bytes")?;
    s.max_export_batch_size = positive(t.max_export_batch_size, s.max_export_batch_size, "max_export_batch_size")?;
    s.max_span_content_bytes = t.max_span_content_bytes.unwrap_or(s.max_span_content_bytes);
    // The tick runs at least every 50 ms and at most every minute.
    s.schedule_delay_ms = t.schedule_delay_ms.unwrap_or(s.schedule_delay_ms).clamp(50, 60_000);
    s.export_timeout_ms = t.export_timeout_ms.unwrap_or(s.export_timeout_ms).max(1);
    s.hide = Hide {
        inputs: t.hide_inputs,
        outputs: t.hide_outputs,
        embeddings_text: t.hide_embeddings_text,
        embeddings_vectors: t.hide_embeddings_vectors,
    };
    s.request_header_attributes =
        header_mappings(t.request_header_attributes, "tracing.request_header_attributes", false)?;
    Ok(s)
}

fn compile_budgets(raw: Vec<raw::Budget>) -> Result<Vec<Budget>, Box<ConfigError>> {
    let mut budgets: Vec<Budget> = Vec::with_capacity(raw.len());
    for (i, b) in raw.into_iter().enumerate() {
        let field = format!("budgets[{i}]");
        // The name is part of shared-data keys and of a metric label.
        let valid = |s: &str| {
            !s.is_empty() && s.len() <= 64 && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_".contains(&c))
        };
        if !valid(&b.name) {
            return Err(ConfigError::at_fmt(
                &field,
                ".name",
                format_args!("{:?} must be 1-64 of A-Z a-z 0-9 - _", b.name),
            ));
        }
        if budgets.iter().any(|existing| existing.name == b.name) {
            return Err(ConfigError::at_fmt(&field, ".name", format_args!("duplicate budget name {:?}", b.name)));
        }
        let consumers = match b.consumer.as_str() {
            "*" => Consumers::Each,
            "" => return Err(ConfigError::at(&field, ".consumer", "name a consumer, or \"*\" for each")),
            name => Consumers::Named(name.to_string()),
        };
        let model = b.model.map(|m| compile_model_match(m, &join(&field, ".model"))).transpose()?;
        let limit = match exactly_one(&field, vec![("tokens", b.tokens), ("requests", b.requests)])? {
            (_, 0) => return Err(ConfigError::new(&field, "the limit must be greater than 0")),
            ("tokens", n) => Limit::Tokens(n),
            (_, n) => Limit::Requests(n),
        };
        let count = match b.count.as_deref() {
            None | Some("total") => Count::Total,
            Some("input") => Count::Input,
            Some("output") => Count::Output,
            Some(other) => {
                return Err(ConfigError::at_fmt(
                    &field,
                    ".count",
                    format_args!("must be total, input or output, not {other:?}"),
                ));
            }
        };
        if b.count.is_some() && matches!(limit, Limit::Requests(_)) {
            return Err(ConfigError::at(&field, ".count", "counts tokens: a requests budget has no count"));
        }
        let window_secs = match b.per.as_str() {
            "second" => 1,
            "minute" => 60,
            "hour" => 3_600,
            "day" => 86_400,
            other => parse_duration_ms(other)
                .filter(|ms| *ms >= 1000 && ms % 1000 == 0)
                .map(|ms| ms / 1000)
                .ok_or_else(|| {
                    ConfigError::at_fmt(
                        &field,
                        ".per",
                        format_args!(
                            "{other:?} is not second, minute, hour, day or a whole number of seconds like 90s or 2h"
                        ),
                    )
                })?,
        };
        let max_consumers = b.max_consumers.unwrap_or(DEFAULT_MAX_CONSUMERS);
        if max_consumers == 0 {
            return Err(ConfigError::at(&field, ".max_consumers", "must be greater than 0"));
        }
        budgets.push(Budget {
            name: b.name,
            consumers,
            model,
            limit,
            count,
            window_secs,
            default_output_reserve: b.default_output_reserve.unwrap_or(DEFAULT_OUTPUT_RESERVE),
            max_consumers,
        });
    }
    Ok(budgets)
}

const DEFAULT_MAX_TOKENS: u32 = 4096;
const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

fn compile_backend(b: raw::Backend, field: &str, env: &dyn Env) -> Result<Backend, Box<ConfigError>> {
    if b.name.is_empty() || !is_header_value(&b.name) {
        return Err(ConfigError::at(
            field,
            ".name",
            "must be a non-empty Envoy cluster name without control characters",
        ));
    }
    let schema = Schema::parse(&b.schema).ok_or_else(|| {
        ConfigError::at_fmt(
            field,
            ".schema",
            format_args!("unknown schema {:?}; supported: {}", b.schema, Schema::SUPPORTED.join(", ")),
        )
    })?;
    let prefix = match b.prefix {
        None => schema.default_prefix().to_string(),
        Some(p) if p.starts_with('/') && is_header_value(&p) && !p.contains('?') => p.trim_end_matches('/').to_string(),
        Some(p) => {
            return Err(ConfigError::at_fmt(
                field,
                ".prefix",
                format_args!("{p:?} must be a path starting with '/' and without a query"),
            ))
        }
    };
    if let Some(m) = &b.model_override {
        if m.is_empty() || !is_header_value(m) {
            return Err(ConfigError::at(field, ".model_override", "must be a model name without control characters"));
        }
    }
    for (name, value) in [("host", &b.host), ("api_version", &b.api_version)] {
        if value
            .as_deref()
            .is_some_and(|v| v.is_empty() || !is_header_value(v) || v.contains(['/', '?', '#', ' ', '&']))
        {
            return Err(ConfigError::new_fmt(&member(field, name), format_args!("{value:?} is not a valid {name}")));
        }
    }
    let mut set_headers = Vec::with_capacity(b.headers.set.len());
    for (name, value) in b.headers.set {
        let name = header_name(&name, &join(field, ".headers.set"))?;
        if !is_header_value(&value) {
            return Err(ConfigError::new(
                &format!("{field}.headers.set.{name}"),
                "value must not contain control characters",
            ));
        }
        set_headers.push((name, value));
    }
    let mut remove_headers = Vec::with_capacity(b.headers.remove.len());
    for (i, name) in b.headers.remove.iter().enumerate() {
        remove_headers.push(header_name(name, &format!("{field}.headers.remove[{i}]"))?);
    }
    let credential = match b.auth {
        None => None,
        Some(auth) => Some(compile_auth(auth, &join(field, ".auth"), env)?),
    };
    let per_request = b.credential_override.is_some();
    let body_mutation = compile_body_mutation(b.body_mutation, &join(field, ".body_mutation"))?;

    // What each schema reads beyond the common fields; what it leaves does not apply to it.
    let mut fields = SchemaFields {
        field,
        api_version: b.api_version,
        anthropic_version: b.anthropic_version,
        region: b.region,
        project: b.project,
        default_max_tokens: b.default_max_tokens,
        allow_gcs_uris: b.allow_gcs_uris,
    };
    let api = match schema {
        Schema::OpenAI => BackendApi::OpenAI { credential: header_credential(credential, field)? },
        Schema::AzureOpenAI => BackendApi::AzureOpenAI {
            api_version: fields.api_version()?,
            credential: header_credential(credential, field)?,
        },
        Schema::Anthropic => BackendApi::Anthropic {
            credential: header_credential(credential, field)?,
            anthropic_version: fields.anthropic_version(DEFAULT_ANTHROPIC_VERSION)?,
            default_max_tokens: fields.default_max_tokens()?,
        },
        Schema::AWSBedrock => BackendApi::AWSBedrock {
            region: fields.region()?,
            credential: aws_credential(credential, field, per_request)?,
            default_max_tokens: fields.default_max_tokens()?,
        },
        Schema::AWSAnthropic => BackendApi::AWSAnthropic {
            region: fields.region()?,
            credential: aws_credential(credential, field, per_request)?,
            anthropic_version: fields.anthropic_version("bedrock-2023-05-31")?,
            default_max_tokens: fields.default_max_tokens()?,
        },
        Schema::GCPVertexAI => BackendApi::GCPVertexAI {
            region: fields.region()?,
            project: fields.project()?,
            credential: header_credential(credential, field)?,
            allow_gcs_uris: fields.allow_gcs_uris(),
        },
        Schema::GCPAnthropic => BackendApi::GCPAnthropic {
            region: fields.region()?,
            project: fields.project()?,
            credential: header_credential(credential, field)?,
            anthropic_version: fields.anthropic_version("vertex-2023-10-16")?,
            default_max_tokens: fields.default_max_tokens()?,
        },
    };
    fields.none_left(schema)?;
    let credential_override = match b.credential_override {
        None => None,
        Some(o) => Some(compile_credential_override(o, &join(field, ".credential_override"), &api)?),
    };
    let authority = b.host.or_else(|| api.default_authority());
    let mut forward_headers = Vec::with_capacity(b.forward_headers.len());
    for (i, name) in b.forward_headers.iter().enumerate() {
        forward_headers.push(header_name(name, &format!("{field}.forward_headers[{i}]"))?);
    }
    Ok(Backend {
        name: b.name,
        prefix,
        model_override: b.model_override,
        set_headers,
        remove_headers,
        pass_through_authorization: b.pass_through_authorization,
        authority,
        forward_billing_headers: b.forward_billing_headers,
        forward_headers,
        body_mutation,
        credential_override,
        picker: b.picker.map(|p| compile_picker(p, &join(field, ".picker"))).transpose()?,
        api,
    })
}

pub const DEFAULT_PREFIX_BLOCK_SIZE: usize = 128;
pub const DEFAULT_IMBALANCE_THRESHOLD: u64 = 8;
pub const DEFAULT_MAX_PREFIXES: usize = 2048;
/// Shared data holds the prefix table whole (16 bytes an entry): at most 1 MiB of it.
const MAX_PREFIXES: usize = 65_536;
const MAX_PICKER_ENDPOINTS: usize = 256;

/// `a.b.c.d:port` or `[v6]:port`, checked by hand (std's address parser would cost the module
/// kilobytes; `llmgw run` checks the addresses strictly).
fn is_ip_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else { return false };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    let v4 = |h: &str| {
        h.split('.').count() == 4 && h.split('.').all(|o| !o.is_empty() && o.len() <= 3 && o.parse::<u8>().is_ok())
    };
    let v6 = |h: &str| {
        h.strip_prefix('[').and_then(|h| h.strip_suffix(']')).is_some_and(|inner| {
            inner.contains(':') && inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        })
    };
    port_ok && (v4(host) || v6(host))
}

fn check_picker_endpoints(list: &[String], field: &str) -> Result<(), Box<ConfigError>> {
    if list.is_empty() || list.len() > MAX_PICKER_ENDPOINTS {
        return Err(ConfigError::new_fmt(field, format_args!("list 1 to {MAX_PICKER_ENDPOINTS} ip:port endpoints")));
    }
    for (i, e) in list.iter().enumerate() {
        // Envoy's override-host policy matches hosts by IP address; it resolves no names.
        if !is_ip_port(e) || list.get(..i).is_some_and(|seen| seen.contains(e)) {
            return Err(ConfigError::new_fmt(
                &format!("{field}[{i}]"),
                format_args!("{e:?} must be a distinct ip:port (e.g. 10.0.0.5:8000 or [::1]:8000)"),
            ));
        }
    }
    Ok(())
}

fn compile_picker(raw: raw::Picker, field: &str) -> Result<crate::picker::Picker, Box<ConfigError>> {
    use crate::picker::{Algorithm, Picker};
    let algorithm = Algorithm::parse(&raw.algorithm).ok_or_else(|| {
        ConfigError::at_fmt(
            field,
            ".algorithm",
            format_args!("unknown algorithm {:?}; supported: {}", raw.algorithm, Algorithm::NAMES),
        )
    })?;
    check_picker_endpoints(&raw.endpoints, &join(field, ".endpoints"))?;
    match (algorithm, raw.prefill_endpoints.is_empty()) {
        (Algorithm::Pd, _) => check_picker_endpoints(&raw.prefill_endpoints, &join(field, ".prefill_endpoints"))?,
        (_, false) => {
            return Err(ConfigError::at(field, ".prefill_endpoints", "only the pd algorithm has prefill endpoints"))
        }
        (_, true) => {}
    }
    let prefix_block_size = raw.prefix_block_size.unwrap_or(DEFAULT_PREFIX_BLOCK_SIZE);
    if !(1..=1 << 20).contains(&prefix_block_size) {
        return Err(ConfigError::at(field, ".prefix_block_size", "must be 1 to 1048576 bytes"));
    }
    let max_prefixes = raw.max_prefixes.unwrap_or(DEFAULT_MAX_PREFIXES);
    if !(1..=MAX_PREFIXES).contains(&max_prefixes) {
        return Err(ConfigError::at_fmt(field, ".max_prefixes", format_args!("must be 1 to {MAX_PREFIXES}")));
    }
    let metrics_scrape_interval_ms = raw.metrics_scrape_interval_ms.unwrap_or(1000);
    if !(100..=60_000).contains(&metrics_scrape_interval_ms) {
        return Err(ConfigError::at(field, ".metrics_scrape_interval_ms", "must be 100 to 60000"));
    }
    Ok(Picker {
        algorithm,
        endpoints: raw.endpoints,
        prefill: raw.prefill_endpoints,
        prefix_block_size,
        imbalance_threshold: raw.imbalance_threshold.unwrap_or(DEFAULT_IMBALANCE_THRESHOLD),
        max_prefixes,
        metrics_scrape_interval_ms,
    })
}

/// A `body_mutation`, validated (`None` when it changes nothing).
fn compile_body_mutation(
    raw: Option<raw::BodyMutation>,
    field: &str,
) -> Result<Option<BodyMutation>, Box<ConfigError>> {
    let Some(raw) = raw else { return Ok(None) };
    let mutation = BodyMutation::compile(raw.set.0, raw.remove)
        .map_err(|e| ConfigError::new(&member(field, &e.field), &e.reason))?;
    Ok((!mutation.is_empty()).then_some(mutation))
}

/// Headers a credential must not be read from: the body's framing, and what Envoy or the
/// gateway manage.
fn reserved_for_credentials(name: &str) -> bool {
    matches!(name, "content-type" | "content-length" | "host" | "te" | "transfer-encoding" | RULE_HEADER)
        || name.starts_with("x-envoy-")
        || name.starts_with("x-forwarded-")
}

fn compile_credential_override(
    raw: raw::CredentialOverride,
    field: &str,
    api: &BackendApi,
) -> Result<CredentialOverride, Box<ConfigError>> {
    let configured = match api {
        BackendApi::OpenAI { credential }
        | BackendApi::AzureOpenAI { credential, .. }
        | BackendApi::Anthropic { credential, .. }
        | BackendApi::GCPVertexAI { credential, .. }
        | BackendApi::GCPAnthropic { credential, .. } => credential.as_ref().map(|c| c.header),
        BackendApi::AWSBedrock { credential, .. } | BackendApi::AWSAnthropic { credential, .. } => {
            credential.as_ref().map(|_| "authorization")
        }
    };
    let fallback_to_configured = match raw.fallback_to_configured {
        Some(true) if configured.is_none() => {
            return Err(ConfigError::at(field, ".fallback_to_configured", "the backend has no `auth` to fall back to"))
        }
        Some(v) => v,
        None => configured.is_some(),
    };
    let name = |value: Option<String>, key: &str| -> Result<Option<String>, Box<ConfigError>> {
        let Some(value) = value else { return Ok(None) };
        let at = member(field, key);
        let name = header_name(&value, &at)?;
        if reserved_for_credentials(&name) {
            return Err(ConfigError::new_fmt(&at, format_args!("{name} cannot carry a credential")));
        }
        Ok(Some(name))
    };
    let header = name(raw.header, "header")?;
    let access_key_id = name(raw.access_key_id_header, "access_key_id_header")?;
    let secret_access_key = name(raw.secret_access_key_header, "secret_access_key_header")?;
    let session_token = name(raw.session_token_header, "session_token_header")?;
    let aws = matches!(api, BackendApi::AWSBedrock { .. } | BackendApi::AWSAnthropic { .. });
    if !aws {
        let Some(from) = header else {
            return Err(ConfigError::at(field, ".header", "is required: the request header with the key"));
        };
        if access_key_id.is_some() || secret_access_key.is_some() || session_token.is_some() {
            return Err(ConfigError::new(field, "the *_header fields are for AWS backends; this one takes `header`"));
        }
        // The key goes where the configured one would: the backend's auth header, or its API's.
        let to = configured.unwrap_or(match api.schema() {
            Schema::AzureOpenAI => "api-key",
            Schema::Anthropic => "x-api-key",
            _ => "authorization",
        });
        let prefix = if to == "authorization" { "Bearer " } else { "" };
        return Ok(CredentialOverride::Header { from, to, prefix, fallback_to_configured });
    }
    if header.is_some() {
        return Err(ConfigError::at(
            field,
            ".header",
            "AWS backends sign each request: give access_key_id_header and secret_access_key_header",
        ));
    }
    let (Some(access_key_id), Some(secret_access_key)) = (access_key_id, secret_access_key) else {
        return Err(ConfigError::new(field, "AWS backends need access_key_id_header and secret_access_key_header"));
    };
    let distinct = access_key_id != secret_access_key
        && session_token.as_ref().is_none_or(|t| *t != access_key_id && *t != secret_access_key);
    if !distinct {
        return Err(ConfigError::new(field, "each key needs its own header"));
    }
    Ok(CredentialOverride::Aws { access_key_id, secret_access_key, session_token, fallback_to_configured })
}

/// A backend's `auth`, before its schema says which kind it takes.
enum AnyCredential {
    Header(HeaderCredential),
    Aws(AwsCredential),
}

fn header_credential(auth: Option<AnyCredential>, field: &str) -> Result<Option<HeaderCredential>, Box<ConfigError>> {
    match auth {
        None => Ok(None),
        Some(AnyCredential::Header(header)) => Ok(Some(header)),
        Some(AnyCredential::Aws(_)) => {
            Err(ConfigError::at(field, ".auth", "`aws` credentials only apply to AWSBedrock and AWSAnthropic"))
        }
    }
}

fn aws_credential(
    auth: Option<AnyCredential>,
    field: &str,
    per_request: bool,
) -> Result<Option<AwsCredential>, Box<ConfigError>> {
    match auth {
        Some(AnyCredential::Aws(aws)) => Ok(Some(aws)),
        // Each request brings its own keys.
        None if per_request => Ok(None),
        None | Some(AnyCredential::Header(_)) => Err(ConfigError::at(
            field,
            ".auth",
            "AWS schemas need `auth: {aws: {...}}` (SigV4), or a credential_override",
        )),
    }
}

/// The backend fields only some schemas read. A schema takes each one it reads; one still set
/// afterwards would be silently ignored, so it is an error naming the field.
struct SchemaFields<'a> {
    /// The backend's path, `backends[i]`.
    field: &'a str,
    api_version: Option<String>,
    anthropic_version: Option<String>,
    region: Option<String>,
    project: Option<String>,
    default_max_tokens: Option<u32>,
    allow_gcs_uris: Option<bool>,
}

impl SchemaFields<'_> {
    fn required(field: &str, value: Option<String>, name: &str, why: &str) -> Result<String, Box<ConfigError>> {
        value.filter(|v| !v.trim().is_empty()).ok_or_else(|| ConfigError::new(&member(field, name), why))
    }

    fn plain_name(&self, value: String, is_plain: fn(&str) -> bool) -> Result<String, Box<ConfigError>> {
        if is_plain(&value) {
            Ok(value)
        } else {
            Err(ConfigError::new(self.field, "anthropic_version, region and project must be plain names"))
        }
    }

    fn api_version(&mut self) -> Result<String, Box<ConfigError>> {
        let why = "is required for AzureOpenAI (e.g. 2024-10-21)";
        Self::required(self.field, self.api_version.take(), "api_version", why)
    }

    fn region(&mut self) -> Result<String, Box<ConfigError>> {
        let why = "is required for this schema (e.g. us-east-1 or us-central1)";
        let region = Self::required(self.field, self.region.take(), "region", why)?;
        self.plain_name(region, is_path_segment)
    }

    fn project(&mut self) -> Result<String, Box<ConfigError>> {
        let project = Self::required(self.field, self.project.take(), "project", "is required for GCP schemas")?;
        self.plain_name(project, is_path_segment)
    }

    fn anthropic_version(&mut self, default: &str) -> Result<String, Box<ConfigError>> {
        let version = self.anthropic_version.take().unwrap_or_else(|| default.to_string());
        self.plain_name(version, is_header_value)
    }

    fn default_max_tokens(&mut self) -> Result<u32, Box<ConfigError>> {
        match self.default_max_tokens.take().unwrap_or(DEFAULT_MAX_TOKENS) {
            0 => Err(ConfigError::at(self.field, ".default_max_tokens", "must be greater than 0")),
            n => Ok(n),
        }
    }

    fn allow_gcs_uris(&mut self) -> bool {
        self.allow_gcs_uris.take().unwrap_or(false)
    }

    /// An error naming the first field `schema` did not take.
    fn none_left(self, schema: Schema) -> Result<(), Box<ConfigError>> {
        let left = [
            ("api_version", self.api_version.is_some(), "AzureOpenAI"),
            ("anthropic_version", self.anthropic_version.is_some(), "Anthropic, AWSAnthropic and GCPAnthropic"),
            ("region", self.region.is_some(), "AWSBedrock, AWSAnthropic, GCPVertexAI and GCPAnthropic"),
            ("project", self.project.is_some(), "GCPVertexAI and GCPAnthropic"),
            (
                "default_max_tokens",
                self.default_max_tokens.is_some(),
                "Anthropic, AWSBedrock, AWSAnthropic and GCPAnthropic",
            ),
            ("allow_gcs_uris", self.allow_gcs_uris.is_some(), "GCPVertexAI"),
        ];
        match left.into_iter().find(|(_, set, _)| *set) {
            None => Ok(()),
            Some((name, _, applies_to)) => Err(ConfigError::new_fmt(
                &member(self.field, name),
                format_args!("does not apply to {} backends (only to {applies_to}); remove it", schema.name()),
            )),
        }
    }
}

fn is_path_segment(v: &str) -> bool {
    v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn compile_auth(a: raw::Auth, field: &str, env: &dyn Env) -> Result<AnyCredential, Box<ConfigError>> {
    let options: [(&str, Option<String>, &'static str, &str); 6] = [
        ("bearer", a.bearer, "authorization", "Bearer "),
        ("bearer_env", a.bearer_env, "authorization", "Bearer "),
        ("api_key", a.api_key, "api-key", ""),
        ("api_key_env", a.api_key_env, "api-key", ""),
        ("x_api_key", a.x_api_key, "x-api-key", ""),
        ("x_api_key_env", a.x_api_key_env, "x-api-key", ""),
    ];
    const ONE_OF: &str = "set exactly one of bearer, api_key, x_api_key (or their _env forms), or aws";
    let mut chosen = None;
    for (key, value, header, value_prefix) in options {
        let Some(value) = value else { continue };
        if chosen.is_some() {
            return Err(ConfigError::new(field, ONE_OF));
        }
        chosen = Some((key, value, header, value_prefix));
    }
    if let Some(aws) = a.aws {
        if chosen.is_some() {
            return Err(ConfigError::new(field, ONE_OF));
        }
        return compile_aws(aws, &join(field, ".aws"), env).map(AnyCredential::Aws);
    }
    let Some((key, value, header, value_prefix)) = chosen else {
        return Err(ConfigError::new(field, ONE_OF));
    };
    let secret = secret_value(Some(value), key.ends_with("_env"), &member(field, key), env)?;
    Ok(AnyCredential::Header(HeaderCredential { header, value: Secret(format!("{value_prefix}{secret}")) }))
}

/// A literal value, or the value of the environment variable it names.
fn secret_value(value: Option<String>, from_env: bool, field: &str, env: &dyn Env) -> Result<String, Box<ConfigError>> {
    let Some(value) = value else { return Err(ConfigError::new(field, "is required")) };
    let secret = if from_env {
        env.var(&value).ok_or_else(|| {
            ConfigError::new_fmt(field, format_args!("environment variable {value:?} is not set in the Wasm VM"))
        })?
    } else {
        value
    };
    let secret = secret.trim().to_string();
    if secret.is_empty() || !is_header_value(&secret) {
        return Err(ConfigError::new(field, "credential must be non-empty and free of control characters"));
    }
    Ok(secret)
}

/// AWS keys: literal, from named variables, or by default from the standard AWS variables.
fn compile_aws(a: raw::AwsAuth, field: &str, env: &dyn Env) -> Result<AwsCredential, Box<ConfigError>> {
    let pick = |literal: Option<String>, var: Option<String>, default_var: &str, name: &str| match (literal, var) {
        (Some(_), Some(_)) => Err(ConfigError::new(&member(field, name), "set the value or its _env form, not both")),
        (Some(v), None) => secret_value(Some(v), false, &member(field, name), env).map(Some),
        (None, Some(var)) => secret_value(Some(var), true, &format!("{field}.{name}_env"), env).map(Some),
        (None, None) => Ok(env.var(default_var).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())),
    };
    let access_key_id = pick(a.access_key_id, a.access_key_id_env, "AWS_ACCESS_KEY_ID", "access_key_id")?
        .ok_or_else(|| ConfigError::at(field, ".access_key_id", "no access key (set it, or AWS_ACCESS_KEY_ID)"))?;
    let secret = pick(a.secret_access_key, a.secret_access_key_env, "AWS_SECRET_ACCESS_KEY", "secret_access_key")?
        .ok_or_else(|| {
            ConfigError::at(field, ".secret_access_key", "no secret key (set it, or AWS_SECRET_ACCESS_KEY)")
        })?;
    let session_token = pick(a.session_token, a.session_token_env, "AWS_SESSION_TOKEN", "session_token")?;
    Ok(AwsCredential { access_key_id, secret_access_key: Secret(secret), session_token: session_token.map(Secret) })
}

fn compile_rule(r: raw::Rule, field: &str, backends: &mut Vec<Backend>) -> Result<Rule, Box<ConfigError>> {
    let model = match r.matches.model {
        None => None,
        Some(m) => Some(compile_model_match(m, &join(field, ".match.model"))?),
    };
    let mut headers = Vec::with_capacity(r.matches.headers.len());
    for (i, h) in r.matches.headers.into_iter().enumerate() {
        headers.push(compile_header_match(h, &format!("{field}.match.headers[{i}]"))?);
    }
    if r.backends.is_empty() {
        return Err(ConfigError::at(field, ".backends", "at least one backend is required"));
    }
    let mut targets = Vec::with_capacity(r.backends.len());
    for (i, br) in r.backends.into_iter().enumerate() {
        let at = format!("{field}.backends[{i}]");
        let mut index = backends
            .iter()
            .position(|b| b.name == br.name)
            .ok_or_else(|| ConfigError::at_fmt(&at, ".name", format_args!("unknown backend {:?}", br.name)))?;
        let priority = br.priority.unwrap_or(0);
        if priority > MAX_PRIORITY {
            return Err(ConfigError::at_fmt(&at, ".priority", format_args!("must be 0 to {MAX_PRIORITY}")));
        }
        if let Some(model) = &br.model_override {
            if model.is_empty() || !is_header_value(model) {
                return Err(ConfigError::at(&at, ".model_override", "must be a non-empty model name"));
            }
        }
        let mutation = compile_body_mutation(br.body_mutation, &join(&at, ".body_mutation"))?;
        if br.model_override.is_some() || mutation.is_some() {
            // A copy of the backend with the reference's settings (its mutation over the backend's).
            let mut variant = backends.get(index).cloned().ok_or_else(|| ConfigError::new(&at, "unknown backend"))?;
            if let Some(model) = br.model_override {
                variant.model_override = Some(model);
            }
            if let Some(over) = mutation {
                let merged = variant.body_mutation.as_ref().map_or_else(|| over.clone(), |m| m.overlaid_by(&over));
                variant.body_mutation = Some(merged);
            }
            index = backends.len();
            backends.push(variant);
        }
        targets.push(Target { backend: index, priority, weight: br.weight.unwrap_or(1) });
    }
    let weighted = targets.iter().enumerate().map(|(i, t)| WeightedBackend { target: i, weight: t.weight }).collect();
    let balancer = Balancer::new(weighted)
        .ok_or_else(|| ConfigError::at(field, ".backends", "at least one backend needs a positive weight"))?;
    // Distinct priorities, counted without a sort (its code would cost the module).
    let levels =
        targets.iter().enumerate().filter(|&(i, t)| !targets.iter().take(i).any(|u| u.priority == t.priority)).count();
    let fallback = match r.retry {
        Some(retry) => Some(compile_retry(retry, &join(field, ".retry"), targets.len())?),
        // Priorities without a retry policy still mean "fall back": one attempt per level.
        None if levels > 1 => Some(Fallback {
            attempts: u32::try_from(levels).unwrap_or(MAX_ATTEMPTS).min(MAX_ATTEMPTS),
            retry_on: RetryOn::DEFAULT.to_vec(),
            per_try_timeout_ms: None,
            first_byte_timeout_ms: None,
        }),
        None => None,
    };
    let cache = r.cache.map(|c| compile_cache(c, &join(field, ".cache"), backends)).transpose()?;
    Ok(Rule { name: r.name, model, headers, targets, balancer, fallback, cache })
}

/// Most entries a rule's cache indexes (each costs 64 bytes of index, read on every lookup).
const MAX_CACHE_ENTRIES: u32 = 16_384;

fn compile_cache(
    fields: raw::Fields,
    field: &str,
    backends: &[Backend],
) -> Result<crate::cache::Policy, Box<ConfigError>> {
    let mut policy = crate::cache::Policy {
        ttl_secs: 600,
        max_bytes: 64 << 20,
        max_entry_bytes: 0,
        max_entries: 1024,
        nonzero_temperature: false,
        shared: false,
        semantic: None,
    };
    let mut mode = None;
    let mut similarity = None;
    let mut embeddings = None;
    for (name, value) in &fields.0 {
        let at = member(field, name);
        let text = value.get();
        let string = || serde_json::from_slice::<String>(text.as_bytes()).ok();
        let flag = || match text {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(ConfigError::new(&at, "must be true or false")),
        };
        let size = || {
            let quantity = string().unwrap_or_else(|| text.to_string());
            let digits = quantity.bytes().take_while(u8::is_ascii_digit).count();
            let (number, unit) = quantity.split_at(digits);
            let scale: u64 = match unit {
                "" => 1,
                "Ki" => 1 << 10,
                "Mi" => 1 << 20,
                "Gi" => 1 << 30,
                _ => 0,
            };
            number.parse::<u64>().ok().and_then(|n| n.checked_mul(scale)).filter(|&n| n > 0).ok_or_else(|| {
                ConfigError::new_fmt(&at, format_args!("{text} is not a byte count (e.g. 65536, 64Mi, 512Ki, 1Gi)"))
            })
        };
        match name.as_str() {
            "mode" => mode = string(),
            "ttl" => {
                policy.ttl_secs = string()
                    .and_then(|t| parse_duration_ms(&t))
                    .filter(|ms| (1_000..=30 * 86_400_000).contains(ms))
                    .ok_or_else(|| ConfigError::new_fmt(&at, format_args!("{text}: give 1s to 720h, e.g. 10m")))?
                    / 1000
            }
            "max_bytes" => policy.max_bytes = size()?,
            "max_entry_bytes" => policy.max_entry_bytes = size()?,
            "max_entries" => {
                policy.max_entries = text
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_CACHE_ENTRIES).contains(n))
                    .ok_or_else(|| ConfigError::new_fmt(&at, format_args!("must be 1 to {MAX_CACHE_ENTRIES}")))?
            }
            "nonzero_temperature" => policy.nonzero_temperature = flag()?,
            "shared" => policy.shared = flag()?,
            "similarity" => {
                similarity = Some(
                    crate::cache::number_f32(text)
                        .filter(|s| *s > 0.0 && *s <= 1.0)
                        .ok_or_else(|| ConfigError::new(&at, "must be a cosine similarity above 0, at most 1"))?,
                )
            }
            "embeddings" => embeddings = Some(compile_embeddings(text, &at, backends)?),
            _ => {
                return Err(ConfigError::new(
                    &at,
                    "unknown field; cache knows mode, ttl, max_bytes, max_entry_bytes, max_entries, \
                     nonzero_temperature, shared, similarity, embeddings",
                ))
            }
        }
    }
    match (mode.as_deref(), similarity, embeddings) {
        (Some("exact"), None, None) => {}
        (Some("exact"), Some(_), _) => return Err(ConfigError::at(field, ".similarity", "semantic mode only")),
        (Some("exact"), _, Some(_)) => return Err(ConfigError::at(field, ".embeddings", "semantic mode only")),
        (Some("semantic"), similarity, Some((backend, model, timeout_ms))) => {
            policy.semantic =
                Some(crate::cache::Semantic { similarity: similarity.unwrap_or(0.95), backend, model, timeout_ms })
        }
        (Some("semantic"), _, None) => return Err(ConfigError::at(field, ".embeddings", "required: {backend, model}")),
        _ => return Err(ConfigError::at(field, ".mode", "required: exact or semantic")),
    }
    if !(1024..=(1 << 40)).contains(&policy.max_bytes) {
        return Err(ConfigError::at(field, ".max_bytes", "must be 1Ki to 1024Gi"));
    }
    if policy.max_entry_bytes == 0 {
        policy.max_entry_bytes = policy.max_bytes.min(1 << 20);
    }
    if policy.max_entry_bytes > policy.max_bytes || policy.max_entry_bytes > u64::from(u32::MAX) {
        return Err(ConfigError::at(field, ".max_entry_bytes", "must be at most max_bytes (and under 4Gi)"));
    }
    Ok(policy)
}

/// A semantic cache's `embeddings: {backend, model, timeout}`: the (OpenAI-schema) backend whose
/// cluster answers `POST {prefix}/embeddings`, the model it is asked for, the call's timeout.
fn compile_embeddings(text: &str, field: &str, backends: &[Backend]) -> Result<(usize, String, u64), Box<ConfigError>> {
    let (_, members) = crate::json::members(text.as_bytes())
        .ok_or_else(|| ConfigError::new(field, "must be {backend, model, timeout}"))?;
    let (mut backend, mut model, mut timeout_ms) = (None, None, 1_000);
    for m in &members {
        let at = member(field, &m.key);
        let value = text.as_bytes().get(m.value.clone()).unwrap_or_default();
        let string = serde_json::from_slice::<String>(value).ok().filter(|s| !s.is_empty());
        match m.key.as_ref() {
            "backend" => {
                let name = string.unwrap_or_default();
                backend = Some(
                    backends
                        .iter()
                        .position(|b| b.name == name && matches!(b.api, BackendApi::OpenAI { .. }))
                        .ok_or_else(|| ConfigError::new_fmt(&at, format_args!("no OpenAI-schema backend {name:?}")))?,
                );
            }
            "model" => model = Some(string.ok_or_else(|| ConfigError::new(&at, "must be a model name"))?),
            "timeout" => {
                timeout_ms = string
                    .and_then(|t| parse_duration_ms(&t))
                    .filter(|ms| (1..=60_000).contains(ms))
                    .ok_or_else(|| ConfigError::new(&at, "give 1ms to 60s, e.g. 500ms"))?
            }
            _ => return Err(ConfigError::new(&at, "unknown field; embeddings knows backend, model, timeout")),
        }
    }
    let backend = backend.ok_or_else(|| ConfigError::at(field, ".backend", "required"))?;
    let model = model.ok_or_else(|| ConfigError::at(field, ".model", "required"))?;
    Ok((backend, model, timeout_ms))
}

/// Envoy's priority levels used by a rule's cluster (0 is tried first).
pub const MAX_PRIORITY: u32 = 9;
/// Attempts per request, the first included.
pub const MAX_ATTEMPTS: u32 = 10;

fn compile_retry(r: raw::Retry, field: &str, targets: usize) -> Result<Fallback, Box<ConfigError>> {
    let attempts = match r.attempts {
        None => u32::try_from(targets).unwrap_or(MAX_ATTEMPTS).clamp(2, MAX_ATTEMPTS),
        Some(n) if (1..=MAX_ATTEMPTS).contains(&n) => n,
        Some(_) => return Err(ConfigError::at_fmt(field, ".attempts", format_args!("must be 1 to {MAX_ATTEMPTS}"))),
    };
    let retry_on = match r.on {
        None => RetryOn::DEFAULT.to_vec(),
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (i, name) in list.iter().enumerate() {
                let on = RetryOn::parse(name).ok_or_else(|| {
                    ConfigError::new_fmt(
                        &format!("{field}.on[{i}]"),
                        format_args!(
                            "unknown condition {name:?}: use connect-failure, reset, 5xx, gateway-error, \
                             or an HTTP status from 400 to 599 (e.g. 429)"
                        ),
                    )
                })?;
                if !out.contains(&on) {
                    out.push(on);
                }
            }
            out
        }
    };
    let duration = |v: Option<String>, name: &str| {
        v.map(|text| {
            parse_duration_ms(&text).filter(|&ms| ms > 0).ok_or_else(|| {
                ConfigError::new_fmt(
                    &member(field, name),
                    format_args!("{text:?} is not a duration like 500ms, 30s or 2m"),
                )
            })
        })
        .transpose()
    };
    Ok(Fallback {
        attempts,
        retry_on,
        per_try_timeout_ms: duration(r.per_try_timeout, "per_try_timeout")?,
        first_byte_timeout_ms: duration(r.first_byte_timeout, "first_byte_timeout")?,
    })
}

/// `500ms`, `30s`, `2m`, `1h` → milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let n: u64 = number.parse().ok()?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

fn exactly_one<T>(field: &str, options: Vec<(&'static str, Option<T>)>) -> Result<(&'static str, T), Box<ConfigError>> {
    let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
    let mut set = options.into_iter().filter_map(|(n, v)| v.map(|v| (n, v)));
    match (set.next(), set.next()) {
        (Some(one), None) => Ok(one),
        _ => Err(ConfigError::new_fmt(field, format_args!("set exactly one of {}", names.join(", ")))),
    }
}

fn compile_model_match(m: raw::StringMatch, field: &str) -> Result<ModelMatcher, Box<ConfigError>> {
    let (kind, value) =
        exactly_one(field, vec![("exact", m.exact), ("prefix", m.prefix), ("glob", m.glob), ("regex", m.regex)])?;
    match kind {
        "exact" => Ok(ModelMatcher::Exact(value)),
        "prefix" => Ok(ModelMatcher::Prefix(value)),
        "glob" => Ok(ModelMatcher::Glob(crate::routing::Glob::new(&value))),
        _ => anchored_regex(&value, &join(field, ".regex")).map(ModelMatcher::Regex),
    }
}

fn compile_header_match(h: raw::HeaderMatch, field: &str) -> Result<HeaderMatcher, Box<ConfigError>> {
    let name = header_name(&h.name, &join(field, ".name"))?;
    let present = h.present.map(|p| p.to_string());
    let (kind, value) =
        exactly_one(field, vec![("exact", h.exact), ("prefix", h.prefix), ("regex", h.regex), ("present", present)])?;
    let matcher = match kind {
        "exact" => crate::routing::ValueMatcher::Exact(value),
        "prefix" => crate::routing::ValueMatcher::Prefix(value),
        "regex" => crate::routing::ValueMatcher::Regex(anchored_regex(&value, &join(field, ".regex"))?),
        _ => crate::routing::ValueMatcher::Present(value == "true"),
    };
    Ok(HeaderMatcher { name, matcher })
}

fn anchored_regex(pattern: &str, field: &str) -> Result<regex_lite::Regex, Box<ConfigError>> {
    regex_lite::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| ConfigError::new_fmt(field, format_args!("invalid regex {pattern:?}: {e}")))
}

fn header_name(name: &str, field: &str) -> Result<String, Box<ConfigError>> {
    let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        return Err(ConfigError::new_fmt(field, format_args!("{name:?} is not a valid header name")));
    }
    let lower = name.to_ascii_lowercase();
    if lower == BACKEND_HEADER || lower == MODEL_HEADER {
        return Err(ConfigError::new_fmt(field, format_args!("{lower} is set by the gateway itself")));
    }
    Ok(lower)
}

/// True when `value` can travel in an HTTP header (no control characters).
pub fn is_header_value(value: &str) -> bool {
    !value.chars().any(|c| c.is_control())
}

/// Every `exact` model of the rules (owned by the rule's first backend), then the `models`
/// entries: an entry naming a model already listed describes it, any other adds one.
fn list_models(
    rules: &[Rule],
    backends: &[Backend],
    entries: Vec<raw::ModelEntry>,
    created: u64,
) -> Result<Vec<ListedModel>, Box<ConfigError>> {
    let mut models: Vec<ListedModel> = Vec::new();
    for rule in rules {
        if let Some(ModelMatcher::Exact(id)) = &rule.model {
            if models.iter().all(|m| &m.id != id) {
                let owner = rule.targets.first().and_then(|t| backends.get(t.backend));
                let owned_by = owner.map_or("llmgw", |b| &b.name).to_string();
                models.push(ListedModel { id: id.clone(), owned_by, created, display_name: None });
            }
        }
    }
    for (i, entry) in entries.into_iter().enumerate() {
        let field = format!("models[{i}]");
        let described = match entry {
            raw::ModelEntry::Id(id) => raw::DescribedModel { id, owned_by: None, created: None, display_name: None },
            raw::ModelEntry::Described(d) => d,
        };
        for (name, value) in [
            ("id", Some(&described.id)),
            ("owned_by", described.owned_by.as_ref()),
            ("display_name", described.display_name.as_ref()),
        ] {
            if value.is_some_and(|v| v.is_empty() || !is_header_value(v)) {
                return Err(ConfigError::new(&member(&field, name), "must be non-empty, without control characters"));
            }
        }
        if described.created.is_some_and(|c| c > crate::utc::MAX_RFC3339_SECONDS) {
            return Err(ConfigError::at(&field, ".created", "must be unix seconds before the year 10000"));
        }
        let at = match models.iter().position(|m| m.id == described.id) {
            Some(at) => at,
            None => {
                let id = described.id.clone();
                models.push(ListedModel { id, owned_by: "llmgw".into(), created, display_name: None });
                models.len() - 1
            }
        };
        if let Some(model) = models.get_mut(at) {
            model.owned_by = described.owned_by.unwrap_or(std::mem::take(&mut model.owned_by));
            model.created = described.created.unwrap_or(model.created);
            model.display_name = described.display_name.or(model.display_name.take());
        }
    }
    Ok(models)
}

/// `anthropic_prefix`: a path of its own, outside `/v1` (which OpenAI's API holds).
fn check_anthropic_prefix(prefix: String) -> Result<String, Box<ConfigError>> {
    let ok = prefix.len() > 1
        && prefix.starts_with('/')
        && !prefix.ends_with('/')
        && prefix != "/v1"
        && !prefix.starts_with("/v1/")
        && !prefix.contains(['?', '#', ' '])
        && !prefix.contains("//")
        && is_header_value(&prefix);
    if ok {
        Ok(prefix)
    } else {
        Err(ConfigError::new_fmt(
            "anthropic_prefix",
            format_args!(
                "{prefix:?} must be a path like \"/anthropic\": starting with '/', without a trailing '/', \
                 a query or spaces, and not /v1 or under it"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct MapEnv(HashMap<&'static str, &'static str>);
    impl Env for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
    }
    fn no_env() -> MapEnv {
        MapEnv(HashMap::new())
    }
    fn err(text: &str) -> ConfigError {
        parse(text.as_bytes(), &no_env(), 0).unwrap_err()
    }

    #[test]
    fn pickers_are_validated_with_their_field() {
        let ok = parse(
            br#"{"backends":[{"name":"v","schema":"OpenAI","picker":{"algorithm":"prefix-cache-aware","endpoints":["10.0.0.1:8000","[::1]:9"],"prefix_block_size":64}}]}"#,
            &no_env(),
            0,
        )
        .unwrap();
        let p = ok.backends[0].picker.as_ref().unwrap();
        assert_eq!(
            (p.algorithm, p.prefix_block_size, p.imbalance_threshold),
            (crate::picker::Algorithm::PrefixCache, 64, 8)
        );
        for (picker, field) in [
            (r#"{"algorithm":"round-robin","endpoints":["10.0.0.1:1"]}"#, "backends[0].picker.algorithm"),
            (r#"{"algorithm":"random","endpoints":[]}"#, "backends[0].picker.endpoints"),
            (r#"{"algorithm":"random","endpoints":["vllm.internal:8000"]}"#, "backends[0].picker.endpoints[0]"),
            (r#"{"algorithm":"random","endpoints":["10.0.0.1:1","10.0.0.1:1"]}"#, "backends[0].picker.endpoints[1]"),
            (
                r#"{"algorithm":"random","endpoints":["10.0.0.1:1"],"max_prefixes":0}"#,
                "backends[0].picker.max_prefixes",
            ),
            (
                r#"{"algorithm":"least-kv-cache","endpoints":["10.0.0.1:1"],"metrics_scrape_interval_ms":5}"#,
                "backends[0].picker.metrics_scrape_interval_ms",
            ),
            (
                r#"{"algorithm":"random","endpoints":["10.0.0.1:1"],"prefix_block_size":0}"#,
                "backends[0].picker.prefix_block_size",
            ),
        ] {
            let text = format!(r#"{{"backends":[{{"name":"v","schema":"OpenAI","picker":{picker}}}]}}"#);
            assert_eq!(err(&text).field, field, "{picker}");
        }
    }

    #[test]
    fn budgets_compile_from_the_cli_schema() {
        let text = br#"{"backends":[{"name":"a","schema":"OpenAI"}],"consumer_header":"X-LLMGW-Consumer","budgets":[
            {"name":"team-a-daily","consumer":"team-a","tokens":2000000,"per":"day","count":"total"},
            {"name":"team-a-gpt4o","consumer":"team-a","model":{"prefix":"gpt-4o"},"tokens":200000,"per":"hour","count":"output"},
            {"name":"everyone-rpm","consumer":"*","requests":60,"per":"minute"},
            {"name":"slow","consumer":"*","tokens":5,"per":"90s","default_output_reserve":10,"max_consumers":3}]}"#;
        let c = parse(text, &no_env(), 0).unwrap();
        assert_eq!(c.consumer_header.as_deref(), Some("x-llmgw-consumer"));
        let b = &c.budgets;
        assert_eq!((b[0].limit, b[0].count, b[0].window_secs), (Limit::Tokens(2_000_000), Count::Total, 86_400));
        assert_eq!(b[0].consumers, Consumers::Named("team-a".into()));
        assert!(b[1].model.as_ref().is_some_and(|m| m.matches("gpt-4o-mini") && !m.matches("o1")));
        assert_eq!((b[1].count, b[1].window_secs, b[1].default_output_reserve), (Count::Output, 3_600, 1024));
        assert_eq!((b[2].limit, b[2].consumers.clone(), b[2].window_secs), (Limit::Requests(60), Consumers::Each, 60));
        assert_eq!((b[3].window_secs, b[3].default_output_reserve, b[3].max_consumers), (90, 10, 3));
        assert_eq!(b[2].max_consumers, 10_000);

        let base = "backends: [{name: a, schema: OpenAI}]\nbudgets:\n  - ";
        let bad = [
            ("{name: x, consumer: a, per: day}", "budgets[0]", "exactly one of tokens, requests"),
            ("{name: x, consumer: a, tokens: 1, requests: 1, per: day}", "budgets[0]", "exactly one"),
            ("{name: x, consumer: a, tokens: 0, per: day}", "budgets[0]", "greater than 0"),
            ("{name: x, consumer: a, tokens: 1, per: week}", "budgets[0].per", "not second"),
            ("{name: x, consumer: a, tokens: 1, per: 1500ms}", "budgets[0].per", "whole number"),
            (
                "{name: x, consumer: a, tokens: 1, per: day, count: cached}",
                "budgets[0].count",
                "total, input or output",
            ),
            ("{name: x, consumer: a, requests: 1, per: day, count: input}", "budgets[0].count", "no count"),
            ("{name: 'a.b', consumer: a, tokens: 1, per: day}", "budgets[0].name", "A-Z"),
            ("{name: x, consumer: '', tokens: 1, per: day}", "budgets[0].consumer", "\"*\""),
            ("{name: x, consumer: a, tokens: 1, per: day, max_consumers: 0}", "budgets[0].max_consumers", "greater"),
            (
                "{name: x, consumer: a, tokens: 1, per: day, model: {prefix: a, exact: b}}",
                "budgets[0].model",
                "exactly one",
            ),
            ("{name: x, consumer: a, tokens: 1, per: day, limit: 3}", "budgets[0]", "unknown field"),
            (
                "{name: x, consumer: a, tokens: 1, per: day}\n  - {name: x, consumer: b, tokens: 1, per: day}",
                "budgets[1].name",
                "duplicate",
            ),
        ];
        for (budget, field, reason) in bad {
            let e = err(&format!("{base}{budget}"));
            assert!(e.field.starts_with(field) && e.to_string().contains(reason), "{budget}: {e}");
        }
        assert_eq!(err("backends: [{name: a, schema: OpenAI}]\nconsumer_header: 'a b'").field, "consumer_header");
    }

    #[test]
    fn priorities_and_retry_make_a_fallback_rule() {
        let base = "backends: [{name: a, schema: OpenAI}, {name: b, schema: Anthropic, auth: {x_api_key: k}}]\n";
        let c = parse(
            format!("{base}rules: [{{backends: [{{name: a}}, {{name: b, priority: 1, model_override: claude-x}}]}}]")
                .as_bytes(),
            &no_env(),
            0,
        )
        .unwrap();
        let rule = &c.rules[0];
        let fb = rule.fallback.as_ref().expect("two priority levels fall back");
        assert_eq!((fb.attempts, fb.retry_on.as_slice()), (2, RetryOn::DEFAULT));
        assert!(fb.retries_status(429) && fb.retries_status(503) && !fb.retries_status(400));
        // The override lives on a copy of `b`, which keeps its name; `b` itself is unchanged.
        let (ta, tb) = (&rule.targets[0], &rule.targets[1]);
        assert_eq!((ta.backend, ta.priority, tb.priority), (0, 0, 1));
        assert_eq!(c.backends[tb.backend].name, "b");
        assert_eq!(c.backends[tb.backend].model_override.as_deref(), Some("claude-x"));
        assert_eq!(c.backends[1].model_override, None);
        assert_eq!(c.role, Role::Downstream);

        let c = parse(
            format!(
                "{base}role: upstream\nrules: [{{backends: [{{name: a}}, {{name: b, weight: 3}}], retry: {{attempts: 3, \
                 on: [5xx, '429', connect-failure], per_try_timeout: 30s, first_byte_timeout: 500ms}}}}]"
            )
            .as_bytes(),
            &no_env(),
            0,
        )
        .unwrap();
        let fb = c.rules[0].fallback.as_ref().expect("retry makes a fallback rule");
        assert_eq!(fb.attempts, 3);
        assert_eq!(fb.retry_on, [RetryOn::Status5xx, RetryOn::Status(429), RetryOn::ConnectFailure]);
        assert_eq!((fb.per_try_timeout_ms, fb.first_byte_timeout_ms), (Some(30_000), Some(500)));
        assert_eq!(c.role, Role::Upstream);

        // One priority and no retry: plain weighted balancing, as before.
        let c =
            parse(format!("{base}rules: [{{backends: [{{name: a}}, {{name: b}}]}}]").as_bytes(), &no_env(), 0).unwrap();
        assert!(c.rules[0].fallback.is_none());

        for (bad, field) in [
            ("retry: {attempts: 0}", "rules[0].retry.attempts"),
            ("retry: {attempts: 11}", "rules[0].retry.attempts"),
            ("retry: {on: [sometimes]}", "rules[0].retry.on[0]"),
            ("retry: {on: ['200']}", "rules[0].retry.on[0]"),
            ("retry: {per_try_timeout: soon}", "rules[0].retry.per_try_timeout"),
            ("retry: {first_byte_timeout: 0s}", "rules[0].retry.first_byte_timeout"),
        ] {
            let e = err(&format!("{base}rules: [{{backends: [{{name: a}}], {bad}}}]"));
            assert_eq!(e.field, field, "{bad}: {e}");
        }
        let e = err(&format!("{base}rules: [{{backends: [{{name: a, priority: 10}}]}}]"));
        assert_eq!(e.field, "rules[0].backends[0].priority");
        let e = err(&format!("{base}role: sideways"));
        assert_eq!(e.field, "role");
    }

    #[test]
    fn body_mutations_are_validated_once_and_copied_per_rule_reference() {
        let c = parse(
            b"backends: [{name: a, schema: OpenAI, body_mutation: {set: {temperature: 0.5, tags: [1, {x: null}]}, remove: [user]}}]
rules:
  - {match: {model: {exact: m}}, backends: [{name: a, body_mutation: {remove: [temperature]}}]}
  - {backends: [{name: a}]}",
            &no_env(),
            0,
        )
        .unwrap();
        let own = c.backends[0].body_mutation.as_ref().unwrap();
        assert_eq!(
            own.set,
            [("temperature".to_string(), b"0.5".to_vec()), ("tags".into(), br#"[1,{"x":null}]"#.to_vec())]
        );
        assert_eq!(own.remove, ["user"]);
        // The reference's copy: its remove wins over the backend's set of the same field.
        assert_eq!(c.rules[0].targets[0].backend, 1);
        let copy = c.backends[1].body_mutation.as_ref().unwrap();
        assert_eq!((copy.set.len(), copy.remove.clone()), (1, vec!["temperature".to_string(), "user".to_string()]));
        assert_eq!((c.backends[1].name.as_str(), c.rules[1].targets[0].backend), ("a", 0));

        for (bad, field) in [
            ("backends: [{name: a, schema: OpenAI, body_mutation: {set: {model: x}}}]", "backends[0].body_mutation.set.model"),
            ("backends: [{name: a, schema: OpenAI, body_mutation: {remove: [stream]}}]", "backends[0].body_mutation.remove[0]"),
            ("backends: [{name: a, schema: OpenAI, body_mutation: {set: {a: 1}, remove: [a]}}]", "backends[0].body_mutation.remove[0]"),
            ("backends: [{name: a, schema: OpenAI, body_mutation: {set: {a.b: 1}}}]", "backends[0].body_mutation.set.a.b"),
            ("backends: [{name: a, schema: OpenAI, body_mutation: {add: {a: 1}}}]", "backends[0].body_mutation.add"),
            (
                "backends: [{name: a, schema: OpenAI}]\nrules: [{backends: [{name: a, body_mutation: {remove: [x, x]}}]}]",
                "rules[0].backends[0].body_mutation.remove[1]",
            ),
        ] {
            assert_eq!(err(bad).field, field, "{bad}");
        }
        // A field set twice in JSON (where a map would silently keep the last) is refused.
        let e = err(r#"{"backends": [{"name": "a", "schema": "OpenAI", "body_mutation": {"set": {"t": 1, "t": 2}}}]}"#);
        assert!(e.reason.contains("\"t\" is set twice"), "{e}");
        let many: Vec<String> = (0..17).map(|i| format!("f{i}")).collect();
        let e =
            err(&format!("backends: [{{name: a, schema: OpenAI, body_mutation: {{remove: [{}]}}}}]", many.join(", ")));
        assert_eq!(e.field, "backends[0].body_mutation.remove");
    }

    #[test]
    fn credential_overrides_take_the_backends_auth_header() {
        let env = MapEnv(HashMap::from([("AWS_ACCESS_KEY_ID", "AKID"), ("AWS_SECRET_ACCESS_KEY", "secret")]));
        let c = parse(
            b"backends:
 - {name: o, schema: OpenAI, credential_override: {header: X-Upstream-Key}}
 - {name: az, schema: AzureOpenAI, api_version: v, credential_override: {header: x-k}, auth: {bearer: t}}
 - {name: an, schema: Anthropic, credential_override: {header: x-k, fallback_to_configured: false}, auth: {x_api_key: k}}
 - {name: br, schema: AWSBedrock, region: r, credential_override: {access_key_id_header: x-a, secret_access_key_header: x-s}}
 - {name: aa, schema: AWSAnthropic, region: r, auth: {aws: {}}, credential_override: {access_key_id_header: x-a, secret_access_key_header: x-s, session_token_header: x-t}}
rules: [{backends: [{name: o}]}]",
            &env,
            0,
        )
        .unwrap();
        let overrides: Vec<_> = c.backends.iter().map(|b| b.credential_override.clone().unwrap()).collect();
        let header = |o: &CredentialOverride| match o {
            CredentialOverride::Header { from, to, prefix, fallback_to_configured } => {
                (from.clone(), *to, *prefix, *fallback_to_configured)
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(header(&overrides[0]), ("x-upstream-key".into(), "authorization", "Bearer ", false));
        // Azure with a bearer configured: the configured header is used.
        assert_eq!(header(&overrides[1]), ("x-k".into(), "authorization", "Bearer ", true));
        assert_eq!(header(&overrides[2]), ("x-k".into(), "x-api-key", "", false));
        assert_eq!(overrides[3].headers(), ["x-a", "x-s"]);
        assert!(!overrides[3].fallback_to_configured() && c.backends[3].credential().is_none());
        assert_eq!(overrides[4].headers(), ["x-a", "x-s", "x-t"]);
        assert!(overrides[4].fallback_to_configured());

        for (bad, field) in [
            ("{name: a, schema: OpenAI, credential_override: {}}", "backends[0].credential_override.header"),
            ("{name: a, schema: OpenAI, credential_override: {header: x, fallback_to_configured: true}}", "backends[0].credential_override.fallback_to_configured"),
            ("{name: a, schema: OpenAI, credential_override: {header: content-length}}", "backends[0].credential_override.header"),
            ("{name: a, schema: OpenAI, credential_override: {header: x-llmgw-backend}}", "backends[0].credential_override.header"),
            ("{name: a, schema: OpenAI, credential_override: {header: 'bad name'}}", "backends[0].credential_override.header"),
            ("{name: a, schema: OpenAI, credential_override: {header: x, access_key_id_header: y}}", "backends[0].credential_override"),
            ("{name: a, schema: AWSBedrock, region: r, credential_override: {header: x}}", "backends[0].credential_override.header"),
            ("{name: a, schema: AWSBedrock, region: r, credential_override: {access_key_id_header: x}}", "backends[0].credential_override"),
            ("{name: a, schema: AWSBedrock, region: r, credential_override: {access_key_id_header: x, secret_access_key_header: x}}", "backends[0].credential_override"),
            ("{name: a, schema: AWSBedrock, region: r}", "backends[0].auth"),
            ("{name: a, schema: OpenAI, credential_override: {header: x, bearer: y}}", "backends[0].credential_override.bearer"),
        ] {
            assert_eq!(err(&format!("backends: [{bad}]")).field, field, "{bad}");
        }
    }

    #[test]
    fn single_backend_needs_no_rules() {
        let c = parse(b"backends: [{name: ollama, schema: OpenAI}]", &no_env(), 0).unwrap();
        assert_eq!(c.rules.len(), 1);
        assert!(c.rules[0].model.is_none());
        assert_eq!(c.backends[0].prefix, "/v1");
    }

    #[test]
    fn json_and_yaml_are_equivalent() {
        let y =
            parse(b"backends:\n  - name: a\n    schema: OpenAI\n    prefix: /v1beta/openai/\n", &no_env(), 0).unwrap();
        let j = parse(br#" {"backends":[{"name":"a","schema":"OpenAI","prefix":"/v1beta/openai/"}]}"#, &no_env(), 0)
            .unwrap();
        assert_eq!(y.backends[0].prefix, "/v1beta/openai");
        assert_eq!(j.backends[0].prefix, "/v1beta/openai");
    }

    #[test]
    fn errors_name_the_field() {
        let e =
            err("backends: [{name: a, schema: OpenAI}, {name: b, schema: OpenAI}]\nrules: [{backends: [{name: c}]}]");
        assert_eq!(e.field, "rules[0].backends[0].name");
        assert!(e.reason.contains("unknown backend \"c\""), "{e}");

        let e = err("backends: [{name: a, schema: Nope}]");
        assert_eq!(e.field, "backends[0].schema");
        assert!(e.reason.contains("\"Nope\""));

        let e = err("backends: [{name: a, schema: OpenAI, wieght: 2}]");
        assert_eq!(e.field, "backends[0].wieght", "{e}");
        assert!(e.reason.contains("unknown field `wieght`"), "{e}");
        let e = err("backends:\n  - name: a\n    schema: OpenAI\nrules:\n  - backends: [{name: a, weight: -1}]");
        assert_eq!(e.field, "rules[0].backends[0].weight", "{e}");
        let e = err(r#"{"backends": [{"name": "a", "schema": "OpenAI", "prefix": ["x"]}]}"#);
        assert_eq!(e.field, "backends[0].prefix", "{e}");

        let e = err("backends: [{name: a, schema: OpenAI}]\nrules: [{match: {model: {exact: x, prefix: y}}, backends: [{name: a}]}]");
        assert_eq!(e.field, "rules[0].match.model");

        let e = err(
            "backends: [{name: a, schema: OpenAI}]\nrules: [{match: {model: {regex: '('}}, backends: [{name: a}]}]",
        );
        assert_eq!(e.field, "rules[0].match.model.regex");

        let e = err("backends: [{name: a, schema: OpenAI}]\nrules: [{backends: [{name: a, weight: 0}]}]");
        assert_eq!(e.field, "rules[0].backends");

        let e = err("backends: [{name: a, schema: OpenAI, auth: {bearer: x, api_key: y}}]");
        assert_eq!(e.field, "backends[0].auth");

        let e = err("backends: [{name: a, schema: OpenAI, auth: {bearer_env: NOPE}}]");
        assert_eq!(e.field, "backends[0].auth.bearer_env");
        assert!(e.reason.contains("NOPE"));

        let e = err("backends: [{name: a, schema: OpenAI, headers: {set: {x-llmgw-backend: evil}}}]");
        assert!(e.field.starts_with("backends[0].headers.set"), "{e}");

        let e =
            err("backends: [{name: a, schema: OpenAI}, {name: a, schema: OpenAI}]\nrules: [{backends: [{name: a}]}]");
        assert_eq!(e.field, "backends[1].name");

        let e = err("backends: [{name: a, schema: OpenAI}, {name: b, schema: OpenAI}]");
        assert_eq!(e.field, "rules");

        assert_eq!(err("  ").reason, "configuration is empty; at least `backends` is required");
        assert!(!err("{not json").to_string().is_empty());
        assert!(!err("- just\n- a list").to_string().is_empty());
        assert_eq!(err("backends: []").field, "backends");
    }

    #[test]
    fn credentials_compile_to_header_values_and_stay_redacted() {
        let env = MapEnv(HashMap::from([("KEY", " sk-env \n")]));
        let c = parse(
            b"backends:\n - {name: a, schema: OpenAI, auth: {bearer_env: KEY}}\n - {name: b, schema: OpenAI, auth: {api_key: az}}\n - {name: c, schema: OpenAI, auth: {x_api_key: an}}\nrules: [{backends: [{name: a}]}]",
            &env,
            0,
        )
        .unwrap();
        let creds: Vec<_> = c
            .backends
            .iter()
            .map(|b| match b.credential() {
                Some(Credential::Header(h)) => (h.header, h.value.expose().to_string()),
                other => panic!("not a header credential: {other:?}"),
            })
            .collect();
        assert_eq!(creds[0], ("authorization", "Bearer sk-env".to_string()));
        assert_eq!(creds[1], ("api-key", "az".to_string()));
        assert_eq!(creds[2], ("x-api-key", "an".to_string()));
        assert!(!format!("{:?}", c).contains("sk-env"));
    }

    #[test]
    fn each_schema_compiles_to_its_own_settings() {
        let env = MapEnv(HashMap::from([("AWS_ACCESS_KEY_ID", "AKID"), ("AWS_SECRET_ACCESS_KEY", "secret")]));
        let c = parse(
            b"backends:
 - {name: o, schema: OpenAI, auth: {bearer: k}}
 - {name: az, schema: AzureOpenAI, api_version: 2024-10-21}
 - {name: an, schema: Anthropic, default_max_tokens: 100}
 - {name: br, schema: AWSBedrock, region: us-west-2, auth: {aws: {}}}
 - {name: aa, schema: AWSAnthropic, region: us-east-1, auth: {aws: {}}, anthropic_version: v1}
 - {name: vx, schema: GCPVertexAI, region: global, project: p, allow_gcs_uris: true}
 - {name: ga, schema: GCPAnthropic, region: us-east5, project: p}
rules: [{backends: [{name: o}]}]",
            &env,
            0,
        )
        .unwrap();
        let schemas: Vec<Schema> = c.backends.iter().map(Backend::schema).collect();
        assert_eq!(
            schemas,
            [
                Schema::OpenAI,
                Schema::AzureOpenAI,
                Schema::Anthropic,
                Schema::AWSBedrock,
                Schema::AWSAnthropic,
                Schema::GCPVertexAI,
                Schema::GCPAnthropic
            ]
        );
        let [o, az, an, br, aa, vx, ga] = &c.backends[..] else { panic!("seven backends") };
        assert!(matches!(&o.api, BackendApi::OpenAI { credential: Some(h) } if h.header == "authorization"));
        assert!(
            matches!(&az.api, BackendApi::AzureOpenAI { api_version, credential: None } if api_version == "2024-10-21")
        );
        assert!(
            matches!(&an.api, BackendApi::Anthropic { anthropic_version, default_max_tokens: 100, credential: None }
            if anthropic_version == "2023-06-01")
        );
        match &br.api {
            BackendApi::AWSBedrock { region, credential, default_max_tokens: 4096 } => {
                assert_eq!(
                    (region.as_str(), credential.as_ref().map(|c| c.access_key_id.as_str())),
                    ("us-west-2", Some("AKID"))
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(br.credential(), Some(Credential::Aws { region: "us-west-2", .. })));
        assert_eq!(br.authority.as_deref(), Some("bedrock-runtime.us-west-2.amazonaws.com"));
        assert!(matches!(&aa.api, BackendApi::AWSAnthropic { anthropic_version, .. } if anthropic_version == "v1"));
        assert!(matches!(&vx.api, BackendApi::GCPVertexAI { project, region, allow_gcs_uris: true, credential: None }
            if project == "p" && region == "global"));
        assert_eq!(vx.authority.as_deref(), Some("aiplatform.googleapis.com"));
        assert!(matches!(&ga.api, BackendApi::GCPAnthropic { anthropic_version, default_max_tokens: 4096, .. }
            if anthropic_version == "vertex-2023-10-16"));
        assert_eq!(ga.authority.as_deref(), Some("us-east5-aiplatform.googleapis.com"));
        assert_eq!((o.authority.as_deref(), ga.credential()), (None, None));
    }

    #[test]
    fn fields_the_schema_does_not_read_are_refused_by_name() {
        for (backend, field, applies_to) in [
            ("{name: a, schema: OpenAI, region: us-east-1}", "region", "AWSBedrock, AWSAnthropic, GCPVertexAI"),
            ("{name: a, schema: OpenAI, api_version: '2024-10-21'}", "api_version", "AzureOpenAI"),
            ("{name: a, schema: AzureOpenAI, api_version: v, project: p}", "project", "GCPVertexAI and GCPAnthropic"),
            ("{name: a, schema: OpenAI, default_max_tokens: 10}", "default_max_tokens", "Anthropic, AWSBedrock"),
            ("{name: a, schema: GCPVertexAI, region: r, project: p, default_max_tokens: 10}", "default_max_tokens", ""),
            ("{name: a, schema: OpenAI, anthropic_version: '2023-06-01'}", "anthropic_version", "Anthropic, "),
            (
                "{name: a, schema: AWSBedrock, region: r, auth: {aws: {access_key_id: a, secret_access_key: b}}, \
              anthropic_version: x}",
                "anthropic_version",
                "",
            ),
            ("{name: a, schema: Anthropic, allow_gcs_uris: false}", "allow_gcs_uris", "GCPVertexAI"),
            ("{name: a, schema: GCPAnthropic, region: r, project: p, allow_gcs_uris: true}", "allow_gcs_uris", ""),
        ] {
            let e = err(&format!("backends: [{backend}]"));
            assert_eq!(e.field, format!("backends[0].{field}"), "{backend}: {e}");
            assert!(e.reason.starts_with("does not apply to ") && e.reason.contains(applies_to), "{e}");
        }
        let e = err("backends: [{name: a, schema: OpenAI, region: us-east-1}]");
        assert_eq!(e.to_string(), "backends[0].region: does not apply to OpenAI backends (only to AWSBedrock, AWSAnthropic, GCPVertexAI and GCPAnthropic); remove it");
        // A credential of the wrong kind is reported first, as before.
        let e = err(
            "backends: [{name: a, schema: OpenAI, region: r, auth: {aws: {access_key_id: a, secret_access_key: b}}}]",
        );
        assert_eq!(e.field, "backends[0].auth", "{e}");
        // Required fields, as before.
        for (backend, field) in [
            ("{name: a, schema: AzureOpenAI}", "backends[0].api_version"),
            (
                "{name: a, schema: AWSBedrock, auth: {aws: {access_key_id: a, secret_access_key: b}}}",
                "backends[0].region",
            ),
            ("{name: a, schema: AWSAnthropic, region: r}", "backends[0].auth"),
            ("{name: a, schema: AWSAnthropic, region: r, auth: {bearer: t}}", "backends[0].auth"),
            ("{name: a, schema: GCPAnthropic, region: r}", "backends[0].project"),
            ("{name: a, schema: GCPVertexAI, region: ' ', project: p}", "backends[0].region"),
            ("{name: a, schema: GCPVertexAI, region: 'a/b', project: p}", "backends[0]"),
            ("{name: a, schema: Anthropic, default_max_tokens: 0}", "backends[0].default_max_tokens"),
        ] {
            assert_eq!(err(&format!("backends: [{backend}]")).field, field, "{backend}");
        }
    }

    #[test]
    fn the_refusal_names_exactly_the_schemas_that_read_the_field() {
        let aws = "auth: {aws: {access_key_id: a, secret_access_key: b}}";
        let bases = [
            ("OpenAI", String::new()),
            ("AzureOpenAI", "api_version: v".to_string()),
            ("Anthropic", String::new()),
            ("AWSBedrock", format!("region: r, {aws}")),
            ("AWSAnthropic", format!("region: r, {aws}")),
            ("GCPVertexAI", "region: r, project: p".to_string()),
            ("GCPAnthropic", "region: r, project: p".to_string()),
        ];
        let fields = [
            ("api_version", "v"),
            ("anthropic_version", "v"),
            ("region", "r"),
            ("project", "p"),
            ("default_max_tokens", "5"),
            ("allow_gcs_uris", "true"),
        ];
        for (name, value) in fields {
            let mut reads = Vec::new();
            let mut refusals = Vec::new();
            for (schema, base) in &bases {
                let others = base.split(", ").filter(|f| !f.is_empty() && !f.starts_with(&format!("{name}:")));
                let all: Vec<String> = others.map(String::from).chain([format!("{name}: {value}")]).collect();
                match parse(
                    format!("backends: [{{name: a, schema: {schema}, {}}}]", all.join(", ")).as_bytes(),
                    &no_env(),
                    0,
                ) {
                    Ok(c) => {
                        assert_eq!(c.backends[0].schema().name(), *schema);
                        reads.push(*schema);
                    }
                    Err(e) => {
                        assert_eq!(e.field, format!("backends[0].{name}"), "{schema}: {e}");
                        refusals.push(e.reason);
                    }
                }
            }
            let list = match reads.as_slice() {
                [one] => one.to_string(),
                [init @ .., last] => format!("{} and {last}", init.join(", ")),
                [] => panic!("{name} is read by no schema"),
            };
            assert!(!refusals.is_empty(), "{name} applies everywhere");
            for reason in refusals {
                assert!(reason.contains(&format!("(only to {list});")), "{name}: {reason}");
            }
        }
    }

    #[test]
    fn models_list_has_exact_models_and_extras() {
        let c = parse(
            b"backends: [{name: a, schema: OpenAI}, {name: b, schema: OpenAI}]\nrules:\n - {match: {model: {exact: m1}}, backends: [{name: b}]}\n - {match: {model: {prefix: p}}, backends: [{name: a}]}\n - {match: {model: {exact: m1}}, backends: [{name: a}]}\nmodels: [extra]",
            &no_env(),
            1700000000,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&c.models_body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"object":"list","data":[
                {"id":"m1","object":"model","created":1700000000u64,"owned_by":"b"},
                {"id":"extra","object":"model","created":1700000000u64,"owned_by":"llmgw"}]})
        );
    }

    #[test]
    fn models_entries_describe_listed_models_or_add_them() {
        let c = parse(
            b"backends: [{name: a, schema: OpenAI}]\nrules: [{match: {model: {exact: m1}}, backends: [{name: a}]}]\n\
              models: [{id: m1, owned_by: openai, created: 1715367049, display_name: Model One}, plain, {id: x, created: 5}]",
            &no_env(),
            1700000000,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&c.models_body).unwrap();
        assert_eq!(
            v["data"],
            serde_json::json!([
                {"id":"m1","object":"model","created":1715367049u64,"owned_by":"openai"},
                {"id":"plain","object":"model","created":1700000000u64,"owned_by":"llmgw"},
                {"id":"x","object":"model","created":5,"owned_by":"llmgw"}])
        );
        assert_eq!(c.models[0].display_name.as_deref(), Some("Model One"));
        for (bad, field) in [
            ("[{id: ''}]", "models[0].id"),
            ("['']", "models[0].id"),
            ("[a, {id: b, owned_by: ''}]", "models[1].owned_by"),
            ("[{id: b, created: 999999999999}]", "models[0].created"),
        ] {
            let text = format!("backends: [{{name: a, schema: OpenAI}}]\nmodels: {bad}");
            assert_eq!(parse(text.as_bytes(), &no_env(), 0).unwrap_err().field, field, "{bad}");
        }
        for bad in ["[{id: b, owner: x}]", "[5]", "[[a]]"] {
            let text = format!("backends: [{{name: a, schema: OpenAI}}]\nmodels: {bad}");
            let e = parse(text.as_bytes(), &no_env(), 0).unwrap_err();
            assert!(e.field.starts_with("models[0]"), "{bad}: {e}");
        }
    }

    #[test]
    fn anthropic_prefix_is_a_path_of_its_own() {
        let prefix = |extra: &str| {
            parse(format!("backends: [{{name: a, schema: OpenAI}}]\n{extra}").as_bytes(), &no_env(), 0)
                .map(|c| c.anthropic_prefix)
        };
        assert_eq!(prefix("").unwrap(), "/anthropic");
        assert_eq!(prefix("anthropic_prefix: /claude/api").unwrap(), "/claude/api");
        for bad in ["claude", "/", "/claude/", "/v1", "/v1/anthropic", "/a?b", "/a b", "", "/a//b"] {
            let e = prefix(&format!("anthropic_prefix: '{bad}'")).unwrap_err();
            assert_eq!(e.field, "anthropic_prefix", "{bad}: {e}");
        }
    }
}
