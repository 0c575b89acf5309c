//! Configuration from the environment, with the OpenAI/Azure/Anthropic SDKs' variable names,
//! like `aigw run`: one backend, every model goes there, no selector header.

use serde_json::{json, Map, Value};

use crate::diag::ConfigError;
use crate::model::{Env, Gateway, Source, Upstream};
use crate::url::BaseUrl;

const OPENAI_DEFAULT_URL: &str = "https://api.openai.com/v1";
const ANTHROPIC_DEFAULT_URL: &str = "https://api.anthropic.com";

/// The keys auto-configuration looks for, in the order it prefers them.
pub const KEY_VARS: [&str; 3] = ["OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "ANTHROPIC_API_KEY"];

/// `None` when no provider key is set (the caller falls back to demo mode).
pub fn from_env(env: &dyn Env) -> Result<Option<Gateway>, ConfigError> {
    let set: Vec<&str> = KEY_VARS.iter().copied().filter(|v| non_empty(env, v).is_some()).collect();
    let Some(chosen) = set.first().copied() else {
        return Ok(None);
    };
    let mut gateway = match chosen {
        "OPENAI_API_KEY" => openai(env)?,
        "AZURE_OPENAI_API_KEY" => azure(env)?,
        _ => anthropic(env)?,
    };
    for other in set.iter().skip(1) {
        gateway.warnings.push(format!(
            "{other} is set too, but auto-configuration uses one provider ({chosen}); to route to several, \
             write a config file (see examples/multi-provider)"
        ));
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
    let url = parse_url(env, "OPENAI_BASE_URL", OPENAI_DEFAULT_URL)?;
    if non_empty(env, "OPENAI_BASE_URL").is_some() {
        vars.push("OPENAI_BASE_URL");
    }
    let mut backend = json!({"name": "openai", "schema": "OpenAI"});
    // The SDK appends /chat/completions to the base URL: its path is the prefix.
    if !url.path.is_empty() {
        backend["prefix"] = Value::String(url.path.clone());
    }
    let headers = org_headers(env, &mut vars);
    if !headers.is_empty() {
        backend["headers"] = json!({"set": headers});
    }
    backend["auth"] = json!({"bearer_env": "OPENAI_API_KEY"});
    Ok(single_backend("OpenAI", vars, backend, Upstream::from_url("openai", &url)))
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

    #[test]
    fn bad_base_url_names_the_variable() {
        let e = gw(&[("OPENAI_API_KEY", "k"), ("OPENAI_BASE_URL", "localhost:8000")]).unwrap_err();
        assert_eq!(e.field, "OPENAI_BASE_URL");
    }
}
