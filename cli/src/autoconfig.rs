//! Configuration from the environment, with the provider SDKs' variable names, like `aigw run`:
//! one backend, every model goes there, no selector header. OpenAI, Azure OpenAI and Anthropic,
//! then the OpenAI-compatible presets (DeepSeek, Mistral, Groq, xAI, Together, OpenRouter, Cohere).

use serde_json::{json, Map, Value};

use crate::diag::ConfigError;
use crate::model::{Env, Gateway, Source, Upstream};
use crate::url::BaseUrl;

const OPENAI_DEFAULT_URL: &str = "https://api.openai.com/v1";
const ANTHROPIC_DEFAULT_URL: &str = "https://api.anthropic.com";

/// A provider with an OpenAI-compatible API: schema OpenAI, its key as `Authorization: Bearer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    /// As the `run` banner names it.
    pub provider: &'static str,
    /// The backend and its Envoy cluster (a metrics label).
    pub backend: &'static str,
    /// The key variables its docs and SDKs use; the first one set is used.
    pub key_vars: &'static [&'static str],
    /// Overrides `default_url`, like `OPENAI_BASE_URL`.
    pub base_url_var: &'static str,
    /// The documented base URL the OpenAI SDK is given; its path is the backend's prefix.
    pub default_url: &'static str,
}

/// The OpenAI-compatible presets, in the order auto-configuration prefers them (after OpenAI,
/// Azure and Anthropic).
pub const PRESETS: [Preset; 7] = [
    // No path: the filter's default prefix `/v1` applies, which DeepSeek accepts (documented).
    Preset {
        provider: "DeepSeek",
        backend: "deepseek",
        key_vars: &["DEEPSEEK_API_KEY"],
        base_url_var: "DEEPSEEK_BASE_URL",
        default_url: "https://api.deepseek.com",
    },
    Preset {
        provider: "Mistral",
        backend: "mistral",
        key_vars: &["MISTRAL_API_KEY"],
        base_url_var: "MISTRAL_BASE_URL",
        default_url: "https://api.mistral.ai/v1",
    },
    Preset {
        provider: "Groq",
        backend: "groq",
        key_vars: &["GROQ_API_KEY"],
        base_url_var: "GROQ_BASE_URL",
        default_url: "https://api.groq.com/openai/v1",
    },
    Preset {
        provider: "xAI",
        backend: "xai",
        key_vars: &["XAI_API_KEY"],
        base_url_var: "XAI_BASE_URL",
        default_url: "https://api.x.ai/v1",
    },
    Preset {
        provider: "Together",
        backend: "together",
        key_vars: &["TOGETHER_API_KEY"],
        base_url_var: "TOGETHER_BASE_URL",
        default_url: "https://api.together.xyz/v1",
    },
    Preset {
        provider: "OpenRouter",
        backend: "openrouter",
        key_vars: &["OPENROUTER_API_KEY"],
        base_url_var: "OPENROUTER_BASE_URL",
        default_url: "https://openrouter.ai/api/v1",
    },
    // Cohere's compatibility API; its SDK reads CO_API_KEY, its docs also use COHERE_API_KEY.
    Preset {
        provider: "Cohere",
        backend: "cohere",
        key_vars: &["COHERE_API_KEY", "CO_API_KEY"],
        base_url_var: "COHERE_BASE_URL",
        default_url: "https://api.cohere.ai/compatibility/v1",
    },
];

#[derive(Debug, Clone, Copy)]
enum Provider {
    OpenAI,
    Azure,
    Anthropic,
    Compatible(&'static Preset),
}

impl Provider {
    fn key_vars(self) -> &'static [&'static str] {
        match self {
            Provider::OpenAI => &["OPENAI_API_KEY"],
            Provider::Azure => &["AZURE_OPENAI_API_KEY"],
            Provider::Anthropic => &["ANTHROPIC_API_KEY"],
            Provider::Compatible(p) => p.key_vars,
        }
    }
}

/// Every provider, in the order auto-configuration prefers them.
fn providers() -> impl Iterator<Item = Provider> {
    [Provider::OpenAI, Provider::Azure, Provider::Anthropic].into_iter().chain(PRESETS.iter().map(Provider::Compatible))
}

/// The key variables auto-configuration looks for, in the order it prefers them.
pub fn key_vars() -> Vec<&'static str> {
    providers().flat_map(|p| p.key_vars().iter().copied()).collect()
}

/// `None` when no provider key is set (the caller falls back to demo mode).
pub fn from_env(env: &dyn Env) -> Result<Option<Gateway>, ConfigError> {
    // Each provider with a key set, and the variable that holds it.
    let set: Vec<(Provider, &'static str)> = providers()
        .filter_map(|p| p.key_vars().iter().find(|v| non_empty(env, v).is_some()).map(|v| (p, *v)))
        .collect();
    let Some(&(chosen, key_var)) = set.first() else {
        return Ok(None);
    };
    let mut gateway = match chosen {
        Provider::OpenAI => openai(env)?,
        Provider::Azure => azure(env)?,
        Provider::Anthropic => anthropic(env)?,
        Provider::Compatible(preset) => compatible(env, preset, key_var)?,
    };
    for (_, other) in set.iter().skip(1) {
        gateway.warnings.push(format!(
            "{other} is set too, but auto-configuration uses one provider ({key_var}); to route to several, \
             write a config file (see examples/multi-provider)"
        ));
    }
    // A second key variable of the same provider (CO_API_KEY besides COHERE_API_KEY) is ignored:
    // say so when it differs (without showing either value).
    for unused in chosen.key_vars().iter().filter(|v| **v != key_var) {
        if non_empty(env, unused).is_some_and(|v| Some(v) != non_empty(env, key_var)) {
            gateway.warnings.push(format!("{unused} is set too and differs from {key_var}; {key_var} is used"));
        }
    }
    Ok(Some(gateway))
}

fn non_empty(env: &dyn Env, name: &str) -> Option<String> {
    env.var(name).filter(|v| !v.trim().is_empty())
}

fn parse_url(env: &dyn Env, var: &str, default: &str) -> Result<BaseUrl, ConfigError> {
    let text = non_empty(env, var).unwrap_or_else(|| default.to_string());
    BaseUrl::parse(&text).map_err(|e| ConfigError::new("environment", var, e))
}

/// `OPENAI_ORG_ID` / `OPENAI_PROJECT_ID` as the headers the OpenAI SDK sends for them.
fn org_headers(env: &dyn Env, vars: &mut Vec<&'static str>) -> Map<String, Value> {
    let mut set = Map::new();
    for (var, header) in [("OPENAI_ORG_ID", "OpenAI-Organization"), ("OPENAI_PROJECT_ID", "OpenAI-Project")] {
        if let Some(v) = non_empty(env, var) {
            set.insert(header.into(), Value::String(v));
            vars.push(var);
        }
    }
    set
}

fn single_backend(provider: &'static str, vars: Vec<&'static str>, backend: Value, upstream: Upstream) -> Gateway {
    let mut g = Gateway::new(Source::Env { provider, vars });
    g.plugin.insert("backends".into(), Value::Array(vec![backend]));
    g.upstreams.push(upstream);
    g
}

fn openai(env: &dyn Env) -> Result<Gateway, ConfigError> {
    let mut vars = vec!["OPENAI_API_KEY"];
    let mut backend = openai_style(env, "openai", "OPENAI_BASE_URL", OPENAI_DEFAULT_URL, &mut vars)?;
    let headers = org_headers(env, &mut vars);
    if !headers.is_empty() {
        backend.json["headers"] = json!({"set": headers});
    }
    backend.json["auth"] = json!({"bearer_env": "OPENAI_API_KEY"});
    Ok(single_backend("OpenAI", vars, backend.json, backend.upstream))
}

fn compatible(env: &dyn Env, preset: &'static Preset, key_var: &'static str) -> Result<Gateway, ConfigError> {
    let mut vars = vec![key_var];
    let mut backend = openai_style(env, preset.backend, preset.base_url_var, preset.default_url, &mut vars)?;
    backend.json["auth"] = json!({"bearer_env": key_var});
    Ok(single_backend(preset.provider, vars, backend.json, backend.upstream))
}

struct Backend {
    json: Value,
    upstream: Upstream,
}

/// A backend of schema OpenAI at `url_var` (else `default_url`), as the OpenAI SDK takes a base URL.
fn openai_style(
    env: &dyn Env,
    name: &str,
    url_var: &'static str,
    default_url: &str,
    vars: &mut Vec<&'static str>,
) -> Result<Backend, ConfigError> {
    let url = parse_url(env, url_var, default_url)?;
    if non_empty(env, url_var).is_some() {
        vars.push(url_var);
    }
    let mut json = json!({"name": name, "schema": "OpenAI"});
    // The SDK appends /chat/completions to the base URL: its path is the prefix.
    if !url.path.is_empty() {
        json["prefix"] = Value::String(url.path.clone());
    }
    Ok(Backend { json, upstream: Upstream::from_url(name, &url) })
}

fn azure(env: &dyn Env) -> Result<Gateway, ConfigError> {
    let mut vars = vec!["AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT", "OPENAI_API_VERSION"];
    let Some(endpoint) = non_empty(env, "AZURE_OPENAI_ENDPOINT") else {
        return Err(ConfigError::new(
            "environment",
            "AZURE_OPENAI_ENDPOINT",
            "AZURE_OPENAI_API_KEY is set, so AZURE_OPENAI_ENDPOINT is required, e.g. https://my-resource.openai.azure.com",
        ));
    };
    let Some(version) = non_empty(env, "OPENAI_API_VERSION") else {
        return Err(ConfigError::new(
            "environment",
            "OPENAI_API_VERSION",
            "AZURE_OPENAI_API_KEY is set, so OPENAI_API_VERSION is required, e.g. 2024-12-01-preview",
        ));
    };
    let url = BaseUrl::parse(&endpoint).map_err(|e| ConfigError::new("environment", "AZURE_OPENAI_ENDPOINT", e))?;
    let mut backend = json!({"name": "azure", "schema": "AzureOpenAI", "api_version": version});
    if !url.path.is_empty() {
        backend["prefix"] = Value::String(url.path.clone());
    }
    let headers = org_headers(env, &mut vars);
    if !headers.is_empty() {
        backend["headers"] = json!({"set": headers});
    }
    backend["auth"] = json!({"api_key_env": "AZURE_OPENAI_API_KEY"});
    Ok(single_backend("AzureOpenAI", vars, backend, Upstream::from_url("azure", &url)))
}

fn anthropic(env: &dyn Env) -> Result<Gateway, ConfigError> {
    let mut vars = vec!["ANTHROPIC_API_KEY"];
    let url = parse_url(env, "ANTHROPIC_BASE_URL", ANTHROPIC_DEFAULT_URL)?;
    if non_empty(env, "ANTHROPIC_BASE_URL").is_some() {
        vars.push("ANTHROPIC_BASE_URL");
    }
    let mut backend = json!({"name": "anthropic", "schema": "Anthropic"});
    // The Anthropic SDK's base URL has no /v1: it appends /v1/messages.
    if !url.path.is_empty() {
        backend["prefix"] = Value::String(format!("{}/v1", url.path));
    }
    backend["auth"] = json!({"x_api_key_env": "ANTHROPIC_API_KEY"});
    Ok(single_backend("Anthropic", vars, backend, Upstream::from_url("anthropic", &url)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MapEnv, Tls};

    fn gw(pairs: &[(&str, &str)]) -> Result<Option<Gateway>, ConfigError> {
        let env = MapEnv(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        from_env(&env)
    }

    #[test]
    fn no_key_means_demo() {
        assert!(gw(&[]).unwrap().is_none());
        assert!(gw(&[("OPENAI_API_KEY", " ")]).unwrap().is_none());
    }

    #[test]
    fn openai_default() {
        let g = gw(&[("OPENAI_API_KEY", "sk-1")]).unwrap().unwrap();
        assert_eq!(
            Value::Object(g.plugin.clone()),
            json!({"backends": [{"name": "openai", "schema": "OpenAI", "prefix": "/v1",
                                 "auth": {"bearer_env": "OPENAI_API_KEY"}}]})
        );
        let u = &g.upstreams[0];
        assert_eq!(u.endpoints[0].host, "api.openai.com");
        assert_eq!(u.endpoints[0].port, 443);
        assert_eq!(u.tls, Some(Tls::to("api.openai.com")));
        assert_eq!(u.host_rewrite.as_deref(), Some("api.openai.com"));
    }

    #[test]
    fn openai_compatible_local_server_with_org_and_project() {
        let g = gw(&[
            ("OPENAI_API_KEY", "unused"),
            ("OPENAI_BASE_URL", "http://localhost:11434/v1"),
            ("OPENAI_ORG_ID", "org-1"),
            ("OPENAI_PROJECT_ID", "proj_2"),
        ])
        .unwrap()
        .unwrap();
        let b = g.plugin_backend("openai").unwrap();
        assert_eq!(b["prefix"], "/v1");
        assert_eq!(b["headers"], json!({"set": {"OpenAI-Organization": "org-1", "OpenAI-Project": "proj_2"}}));
        let u = &g.upstreams[0];
        assert!(u.tls.is_none());
        assert_eq!((u.endpoints[0].host.as_str(), u.endpoints[0].port), ("localhost", 11434));
        assert_eq!(u.host_rewrite.as_deref(), Some("localhost:11434"));
        match &g.source {
            Source::Env { provider, vars } => {
                assert_eq!(*provider, "OpenAI");
                assert!(vars.contains(&"OPENAI_PROJECT_ID"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn azure_requires_endpoint_and_version() {
        let e = gw(&[("AZURE_OPENAI_API_KEY", "k")]).unwrap_err();
        assert_eq!(e.field, "AZURE_OPENAI_ENDPOINT");
        let e =
            gw(&[("AZURE_OPENAI_API_KEY", "k"), ("AZURE_OPENAI_ENDPOINT", "https://r.openai.azure.com")]).unwrap_err();
        assert_eq!(e.field, "OPENAI_API_VERSION");
        let e = gw(&[
            ("AZURE_OPENAI_API_KEY", "k"),
            ("AZURE_OPENAI_ENDPOINT", "r.openai.azure.com"),
            ("OPENAI_API_VERSION", "2024-12-01-preview"),
        ])
        .unwrap_err();
        assert!(e.to_string().starts_with("environment: AZURE_OPENAI_ENDPOINT: "), "{e}");
    }

    #[test]
    fn azure() {
        let g = gw(&[
            ("AZURE_OPENAI_API_KEY", "k"),
            ("AZURE_OPENAI_ENDPOINT", "https://r.openai.azure.com/"),
            ("OPENAI_API_VERSION", "2024-12-01-preview"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            Value::Object(g.plugin.clone()),
            json!({"backends": [{"name": "azure", "schema": "AzureOpenAI", "api_version": "2024-12-01-preview",
                                 "auth": {"api_key_env": "AZURE_OPENAI_API_KEY"}}]})
        );
        assert_eq!(g.upstreams[0].host_rewrite.as_deref(), Some("r.openai.azure.com"));
    }

    #[test]
    fn anthropic_prefix_follows_the_sdk() {
        let g = gw(&[("ANTHROPIC_API_KEY", "k")]).unwrap().unwrap();
        let b = g.plugin_backend("anthropic").unwrap();
        assert!(b.get("prefix").is_none());
        assert_eq!(b["auth"], json!({"x_api_key_env": "ANTHROPIC_API_KEY"}));
        let g =
            gw(&[("ANTHROPIC_API_KEY", "k"), ("ANTHROPIC_BASE_URL", "http://127.0.0.1:9000/proxy")]).unwrap().unwrap();
        assert_eq!(g.plugin_backend("anthropic").unwrap()["prefix"], "/proxy/v1");
    }

    #[test]
    fn one_provider_wins_and_the_others_are_named() {
        let g = gw(&[("ANTHROPIC_API_KEY", "k"), ("OPENAI_API_KEY", "k")]).unwrap().unwrap();
        assert!(g.plugin_backend("openai").is_some());
        assert_eq!(g.warnings.len(), 1);
        assert!(g.warnings[0].contains("ANTHROPIC_API_KEY is set too"));
    }

    /// Each preset as its provider documents it: key variable, backend, host, path prefix.
    const DOCUMENTED: [(&str, &str, &str, &str, Option<&str>); 7] = [
        ("DEEPSEEK_API_KEY", "deepseek", "DeepSeek", "api.deepseek.com", None),
        ("MISTRAL_API_KEY", "mistral", "Mistral", "api.mistral.ai", Some("/v1")),
        ("GROQ_API_KEY", "groq", "Groq", "api.groq.com", Some("/openai/v1")),
        ("XAI_API_KEY", "xai", "xAI", "api.x.ai", Some("/v1")),
        ("TOGETHER_API_KEY", "together", "Together", "api.together.xyz", Some("/v1")),
        ("OPENROUTER_API_KEY", "openrouter", "OpenRouter", "openrouter.ai", Some("/api/v1")),
        ("COHERE_API_KEY", "cohere", "Cohere", "api.cohere.ai", Some("/compatibility/v1")),
    ];

    fn assert_no_secret(g: &Gateway, secret: &str) {
        let text = crate::validate::plugin_text(g);
        assert!(!text.contains(secret), "{text}");
        assert!(g.warnings.iter().all(|w| !w.contains(secret)), "{:?}", g.warnings);
        assert!(g.secret_env().next().is_none(), "the key stays in the environment, not in moved secrets");
    }

    #[test]
    fn every_preset_with_its_documented_url() {
        assert_eq!(PRESETS.len(), DOCUMENTED.len());
        for (key_var, name, provider, host, prefix) in DOCUMENTED {
            let g = gw(&[(key_var, "sk-preset-secret")]).unwrap().unwrap();
            let mut want = json!({"name": name, "schema": "OpenAI", "auth": {"bearer_env": key_var}});
            if let Some(p) = prefix {
                want["prefix"] = json!(p);
            }
            assert_eq!(Value::Object(g.plugin.clone()), json!({"backends": [want]}), "{key_var}");
            let u = &g.upstreams[0];
            assert_eq!((u.name.as_str(), u.endpoints[0].host.as_str(), u.endpoints[0].port), (name, host, 443));
            assert_eq!(u.tls, Some(Tls::to(host)), "{key_var}");
            assert_eq!(u.host_rewrite.as_deref(), Some(host));
            assert_eq!(g.source, Source::Env { provider, vars: vec![key_var] });
            assert!(g.warnings.is_empty(), "{:?}", g.warnings);
            assert_no_secret(&g, "sk-preset-secret");
            // The filter accepts it as is (the key is read from the environment).
            crate::validate::validate(&g, &MapEnv::from([(key_var, "k")])).unwrap();
        }
    }

    #[test]
    fn every_preset_takes_its_base_url_variable() {
        for preset in PRESETS {
            let key_var = preset.key_vars[0];
            let g = gw(&[(key_var, "k"), (preset.base_url_var, "http://127.0.0.1:9000/proxy/v1/")]).unwrap().unwrap();
            let b = g.plugin_backend(preset.backend).unwrap();
            assert_eq!(b["prefix"], "/proxy/v1", "{}", preset.base_url_var);
            let u = &g.upstreams[0];
            assert!(u.tls.is_none());
            assert_eq!((u.endpoints[0].host.as_str(), u.endpoints[0].port), ("127.0.0.1", 9000));
            assert_eq!(g.source, Source::Env { provider: preset.provider, vars: vec![key_var, preset.base_url_var] });
            let e = gw(&[(key_var, "sk-preset-secret"), (preset.base_url_var, "api.example.com")]).unwrap_err();
            assert_eq!(e.field, preset.base_url_var);
            assert!(!e.to_string().contains("sk-preset-secret"), "{e}");
        }
    }

    #[test]
    fn cohere_takes_either_documented_key_variable() {
        let g = gw(&[("CO_API_KEY", "k")]).unwrap().unwrap();
        assert_eq!(g.plugin_backend("cohere").unwrap()["auth"], json!({"bearer_env": "CO_API_KEY"}));
        let g = gw(&[("CO_API_KEY", "k"), ("COHERE_API_KEY", "k")]).unwrap().unwrap();
        assert_eq!(g.plugin_backend("cohere").unwrap()["auth"], json!({"bearer_env": "COHERE_API_KEY"}));
        assert!(g.warnings.is_empty(), "{:?}", g.warnings);
        let g = gw(&[("CO_API_KEY", "old-secret"), ("COHERE_API_KEY", "new-secret")]).unwrap().unwrap();
        assert_eq!(g.warnings, ["CO_API_KEY is set too and differs from COHERE_API_KEY; COHERE_API_KEY is used"]);
        assert_no_secret(&g, "old-secret");
        assert_no_secret(&g, "new-secret");
    }

    #[test]
    fn presets_come_after_openai_azure_anthropic_in_their_order() {
        let g = gw(&[("GROQ_API_KEY", "k"), ("OPENAI_API_KEY", "k"), ("CO_API_KEY", "k")]).unwrap().unwrap();
        assert!(g.plugin_backend("openai").is_some());
        assert_eq!(g.warnings.len(), 2, "{:?}", g.warnings);
        assert!(g.warnings[0]
            .starts_with("GROQ_API_KEY is set too, but auto-configuration uses one provider (OPENAI_API_KEY)"));
        assert!(g.warnings[1].starts_with("CO_API_KEY is set too"));
        let g = gw(&[("GROQ_API_KEY", "k"), ("MISTRAL_API_KEY", "k")]).unwrap().unwrap();
        assert!(g.plugin_backend("mistral").is_some());
        assert!(g.warnings[0].starts_with("GROQ_API_KEY is set too"), "{:?}", g.warnings);
        let all = key_vars();
        assert_eq!(&all[..4], ["OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "ANTHROPIC_API_KEY", "DEEPSEEK_API_KEY"]);
        assert_eq!(all.last(), Some(&"CO_API_KEY"));
    }

    #[test]
    fn bad_base_url_names_the_variable() {
        let e = gw(&[("OPENAI_API_KEY", "k"), ("OPENAI_BASE_URL", "localhost:8000")]).unwrap_err();
        assert_eq!(e.field, "OPENAI_BASE_URL");
    }
}
