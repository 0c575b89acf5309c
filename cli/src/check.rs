//! `llmgw check`: the config as the filter sees it, the bootstrap as Envoy sees it
//! (`envoy --mode validate`, which also runs the filter's configure step), and with `--probe` each
//! backend's model list fetched with its own credentials (`NAME SCHEMA HEALTHY DETAIL`).

use std::time::Duration;

use anyhow::Result;
use serde_json::{Map, Value};

use crate::cli::{self, CheckArgs, ListenArgs};
use crate::model::{Ca, Env, Gateway, ProcessEnv, Source, Upstream, DEFAULT_ADMIN_PORT};
use crate::{bootstrap, demo, envoy, locate, table, validate};

pub fn main(args: CheckArgs) -> Result<i32> {
    let mut g = match cli::load(&args.config, &ProcessEnv)? {
        Some(g) => g,
        None => {
            println!("no config file and no provider key: `llmgw run` would start in demo mode");
            demo::gateway(0)
        }
    };
    cli::print_warnings(&g);
    validate::validate(&g, &ProcessEnv)?;
    g.resolve_consumers(&ProcessEnv)?;
    let what = match &g.source {
        Source::Demo => "demo backend".to_string(),
        Source::Env { vars, .. } => format!("environment ({})", vars.join(", ")),
        Source::File { path, format } => format!("{path} ({})", format.label()),
    };
    println!("config OK: {what}: {} backend(s), {} rule(s)", g.upstreams.len(), g.rule_count());
    if !g.consumers.is_empty() {
        // Counts only: the keys stay in the (private, removed) bootstrap.
        println!(
            "consumers OK: {} consumer(s), {} API key(s), {} JWT issuer(s)",
            g.consumers.len(),
            g.client_auth.keys.len(),
            g.consumers.iter().filter(|c| c.jwt.is_some()).count()
        );
    }

    let mut code = 0;
    match envoy_check(&g, &args) {
        Ok(Ok(line)) => println!("{line}"),
        Ok(Err(errors)) => {
            println!("envoy: the rendered bootstrap is INVALID:\n{errors}");
            code = 1;
        }
        Err(e) => println!("envoy: not checked ({e:#})"),
    }
    if args.probe {
        if g.source == Source::Demo {
            println!("probe: the demo backend runs only inside `llmgw run`; nothing to probe");
        } else {
            let rows = probe_all(&g, Duration::from_secs(args.timeout));
            print!("{}", table::render(&["NAME", "SCHEMA", "HEALTHY", "DETAIL"], &rows));
            if rows.iter().any(|r| r.get(2).is_some_and(|h| h == "NO")) {
                code = 1;
            }
        }
    }
    Ok(code)
}

/// Renders the bootstrap to a private temporary file and runs `envoy --mode validate` on it.
fn envoy_check(g: &Gateway, args: &CheckArgs) -> Result<std::result::Result<String, String>> {
    let bin = locate::envoy(args.envoy.as_deref())?;
    let wasm = locate::wasm(args.wasm.as_deref())?;
    let listen = ListenArgs { port: None, admin_port: DEFAULT_ADMIN_PORT, address: "127.0.0.1".into(), wasm: None };
    let opts = cli::options(g, &listen, &wasm, 0)?;
    // A private directory (0700, unpredictable name), removed when `dir` is dropped.
    let dir = tempfile::Builder::new()
        .prefix("llmgw-check-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()?;
    let file = dir.path().join("envoy.yaml");
    let rendered = bootstrap::render(g, &opts);
    let clusters = rendered["static_resources"]["clusters"].as_array().map_or(0, Vec::len);
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&file)?;
        f.write_all(bootstrap::to_yaml(g, &rendered).as_bytes())?;
    }
    // The filter configures itself during validation: it needs the moved credentials too.
    let result = envoy::validate(&bin, &file, &g.secret_env().collect::<Vec<_>>());
    drop(dir);
    let version = envoy::version(&bin).unwrap_or_else(|| "?".into());
    Ok(result?.map(|()| format!("envoy {version}: bootstrap valid (filter configured, {clusters} cluster(s))")))
}

fn probe_all(g: &Gateway, timeout: Duration) -> Vec<Vec<String>> {
    let agent = ureq::AgentBuilder::new().timeout(timeout).build();
    g.upstreams
        .iter()
        .map(|u| {
            let empty = Map::new();
            let backend = g.plugin_backend(&u.name).unwrap_or(&empty);
            let schema = backend.get("schema").and_then(Value::as_str).unwrap_or("?").to_string();
            let (healthy, detail) = probe(&agent, backend, u, &g.env(&ProcessEnv));
            vec![u.name.clone(), schema, healthy.to_string(), detail]
        })
        .collect()
}

/// The request that lists models, per schema: path (after the prefix) and extra headers.
fn models_request(backend: &Map<String, Value>) -> std::result::Result<(String, Vec<(String, String)>), String> {
    let s = |k: &str| backend.get(k).and_then(Value::as_str);
    let schema = s("schema").unwrap_or("");
    let prefix = |default: &str| s("prefix").unwrap_or(default).trim_end_matches('/').to_string();
    match schema {
        "OpenAI" => Ok((format!("{}/models", prefix("/v1")), Vec::new())),
        "AzureOpenAI" => {
            let version = s("api_version").unwrap_or("2024-10-21");
            Ok((format!("{}/openai/models?api-version={version}", prefix("")), Vec::new()))
        }
        "Anthropic" => {
            let version = s("anthropic_version").unwrap_or("2023-06-01");
            Ok((format!("{}/models", prefix("/v1")), vec![("anthropic-version".into(), version.into())]))
        }
        other => Err(format!("probing {other} backends is not supported (signed or OAuth requests)")),
    }
}

/// The backend's credential as a header, resolving `*_env` from `env` (this process's
/// environment and the credentials moved out of the config).
fn auth_header(backend: &Map<String, Value>, env: &dyn Env) -> std::result::Result<Option<(String, String)>, String> {
    let Some(auth) = backend.get("auth").and_then(Value::as_object) else { return Ok(None) };
    for (key, header, prefix) in
        [("bearer", "authorization", "Bearer "), ("api_key", "api-key", ""), ("x_api_key", "x-api-key", "")]
    {
        let value = match (auth.get(key), auth.get(&format!("{key}_env"))) {
            (Some(Value::String(v)), _) => v.clone(),
            (_, Some(Value::String(var))) => env.var(var).ok_or_else(|| format!("{var} is not set"))?,
            _ => continue,
        };
        return Ok(Some((header.to_string(), format!("{prefix}{value}"))));
    }
    Err("this credential type (AWS SigV4) cannot be probed".into())
}

fn probe(agent: &ureq::Agent, backend: &Map<String, Value>, u: &Upstream, env: &dyn Env) -> (&'static str, String) {
    let (path, mut headers) = match models_request(backend) {
        Ok(r) => r,
        Err(why) => return ("UNKNOWN", why),
    };
    match auth_header(backend, env) {
        Ok(h) => headers.extend(h),
        Err(why) => return ("UNKNOWN", why),
    }
    if let Some(set) = backend.get("headers").and_then(|h| h.get("set")).and_then(Value::as_object) {
        headers.extend(set.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))));
    }
    if u.tls.as_ref().is_some_and(|t| t.ca != Ca::System || t.insecure_skip_verify) {
        return ("UNKNOWN", "custom CA or skipped verification: not probed".into());
    }
    let mut details = Vec::new();
    let mut healthy = true;
    for ep in &u.endpoints {
        let url = format!("{}{path}", u.base_url(ep));
        let mut req = agent.get(&url);
        for (k, v) in &headers {
            req = req.set(k, v);
        }
        let label = if u.endpoints.len() > 1 { format!("{}:{}: ", ep.host, ep.port) } else { String::new() };
        match req.call() {
            Ok(resp) => {
                let models = resp
                    .into_string()
                    .ok()
                    .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                    .and_then(|v| v.get("data").and_then(Value::as_array).map(Vec::len));
                details.push(match models {
                    Some(n) => format!("{label}200, {n} model(s)"),
                    None => format!("{label}200"),
                });
            }
            Err(ureq::Error::Status(code, resp)) => {
                healthy = false;
                let hint = match code {
                    401 | 403 => " (check the key)",
                    404 => " (check the URL and prefix)",
                    _ => "",
                };
                let text = resp.status_text().to_string();
                details.push(format!("{label}{code} {text}{hint}"));
            }
            Err(e) => {
                healthy = false;
                details.push(format!("{label}{e}"));
            }
        }
    }
    (if healthy { "YES" } else { "NO" }, details.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn model_list_requests_per_schema() {
        assert_eq!(models_request(&obj(json!({"schema": "OpenAI"}))).unwrap().0, "/v1/models");
        assert_eq!(
            models_request(&obj(json!({"schema": "OpenAI", "prefix": "/api/v1/"}))).unwrap().0,
            "/api/v1/models"
        );
        assert_eq!(
            models_request(&obj(json!({"schema": "AzureOpenAI", "api_version": "2024-12-01-preview"}))).unwrap().0,
            "/openai/models?api-version=2024-12-01-preview"
        );
        let (p, h) = models_request(&obj(json!({"schema": "Anthropic"}))).unwrap();
        assert_eq!((p.as_str(), h[0].0.as_str()), ("/v1/models", "anthropic-version"));
        assert!(models_request(&obj(json!({"schema": "AWSBedrock"}))).is_err());
    }

    #[test]
    fn auth_headers() {
        let env = crate::model::MapEnv::from([("MOVED", "sk-moved")]);
        let h = auth_header(&obj(json!({"auth": {"bearer": "sk-1"}})), &env).unwrap();
        assert_eq!(h, Some(("authorization".into(), "Bearer sk-1".into())));
        let h = auth_header(&obj(json!({"auth": {"api_key": "k"}})), &env).unwrap();
        assert_eq!(h, Some(("api-key".into(), "k".into())));
        let h = auth_header(&obj(json!({"auth": {"x_api_key_env": "MOVED"}})), &env).unwrap();
        assert_eq!(h, Some(("x-api-key".into(), "sk-moved".into())));
        assert!(auth_header(&obj(json!({"auth": {"bearer_env": "LLMGW_TEST_SURELY_UNSET"}})), &env).is_err());
        assert!(auth_header(&obj(json!({"auth": {"aws": {}}})), &env).is_err());
        assert_eq!(auth_header(&obj(json!({})), &env).unwrap(), None);
    }
}
