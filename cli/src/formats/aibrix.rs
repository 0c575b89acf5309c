//! AIBrix local mode's static endpoints file:
//!
//! ```yaml
//! models:
//!   - name: Qwen/Qwen2.5-1.5B-Instruct
//!     endpoints: ["127.0.0.1:8000", "127.0.0.1:8001"]
//! ```
//!
//! Each model becomes one OpenAI backend whose cluster balances over the model's endpoints, and one
//! rule sending exactly that model name there (as in AIBrix, the request's model must match).
//! `ROUTING_ALGORITHM` (AIBrix's variable): `random`, `least-request`, `prefix-cache` (or
//! `prefix-cache-aware`), `least-latency` and `pd` are the filter's picker (the model's cluster then
//! connects where the filter says); other algorithms get a warning and round-robin.
//!
//! `rolesets: [{name, prefill: [ip:port], decode: [ip:port]}]` (prefill/decode disaggregation) is
//! served by the `pd` picker: the filter prefills on one of the sets' prefill endpoints, then the
//! request decodes on one of their decode endpoints (see the filter's `pd.rs`).

use serde_json::{json, Value as Json};
use serde_yaml_ng::Value;

use super::node::{At, NResult};
use super::own::{endpoints, picker_endpoints};
use crate::diag::ConfigError;
use crate::model::{cluster_safe, Env, Format, Gateway, Source, Upstream, FILTER_PICKS};
use crate::url;
use llmgw_filter::picker::Algorithm;

pub fn convert(name: &str, doc: &Value, env: &dyn Env) -> Result<Gateway, ConfigError> {
    convert_doc(name, doc, env).map_err(|e| ConfigError::new(name, e.field, e.reason))
}

/// Envoy's balancer for AIBrix's `ROUTING_ALGORITHM`, when there is an equivalent (used where the
/// picker cannot be: endpoints given by name).
pub fn lb_policy(algorithm: &str) -> Option<&'static str> {
    match algorithm {
        "random" => Some("RANDOM"),
        "least-request" => Some("LEAST_REQUEST"),
        _ => None,
    }
}

fn convert_doc(name: &str, doc: &Value, env: &dyn Env) -> NResult<Gateway> {
    let root = At::root(doc);
    let mut g = Gateway::new(Source::File { path: name.to_string(), format: Format::AIBrix });
    for field in root.unknown_keys(&["models"]) {
        g.warnings.push(format!("{name}: {field}: not part of an AIBrix endpoints file; ignored"));
    }
    let algorithm = env.var("ROUTING_ALGORITHM").filter(|a| !a.is_empty());
    let picked = algorithm.as_deref().filter(|a| Algorithm::parse(a).is_some());
    if let (Some(a), None) = (&algorithm, picked) {
        g.warnings.push(format!(
            "ROUTING_ALGORITHM={a} is not one llmgw implements; it balances each model's endpoints round-robin \
             (supported: {})",
            Algorithm::NAMES
        ));
    }
    let models = root.req("models")?.items()?;
    if models.is_empty() {
        return Err(root.req("models")?.err("at least one model is required"));
    }
    let mut backends = Vec::new();
    let mut rules = Vec::new();
    for m in &models {
        let model = m.req_str("name")?;
        if model.is_empty() {
            return Err(m.req("name")?.err("the model name must not be empty"));
        }
        for field in m.unknown_keys(&["name", "endpoints", "rolesets", "engine"]) {
            g.warnings.push(format!("{name}: {field}: not understood by llmgw; ignored"));
        }
        let use_roles =
            m.get("rolesets").is_some() && (algorithm.as_deref() == Some("pd") || m.get("endpoints").is_none());
        let (list, prefill) = match (m.get("endpoints"), m.get("rolesets")) {
            (_, Some(roles)) if use_roles => {
                if algorithm.as_deref() != Some("pd") {
                    g.warnings.push(format!(
                        "{name}: model {model:?} has only prefill/decode role sets: served with prefill/decode \
                         routing (ROUTING_ALGORITHM=pd) whatever ROUTING_ALGORITHM says"
                    ));
                }
                let (decode, prefill) = role_endpoints(&roles)?;
                (decode, Some(prefill))
            }
            (Some(list), roles) => {
                if roles.is_some() {
                    g.warnings.push(format!(
                        "{name}: {}.rolesets: used with ROUTING_ALGORITHM=pd only; model {model:?} is served by its \
                         `endpoints`",
                        m.field()
                    ));
                }
                (endpoints(&list)?, None)
            }
            (None, _) => return Err(m.err(format!("model {model:?} needs `endpoints: [\"host:port\", ...]`"))),
        };
        let mut eps = list;
        let mut backend = cluster_safe(model);
        let mut n = 2;
        while g.upstreams.iter().any(|u| u.name == backend) {
            backend = format!("{}-{n}", cluster_safe(model));
            n += 1;
        }
        let host_rewrite = match eps.as_slice() {
            [one] => Some(url::authority(&one.host, one.port, false)),
            _ => None,
        };
        let mut plugin_backend = json!({"name": backend, "schema": "OpenAI"});
        let mut lb = None;
        if let Some(prefill) = prefill {
            // Prefill/decode needs the filter's picker: it sends the prefill itself.
            let at = m.req("rolesets")?;
            let decode = picker_endpoints(&eps).map_err(|e| at.err(e))?;
            let prefill_addresses = picker_endpoints(&prefill).map_err(|e| at.err(e))?;
            plugin_backend["picker"] =
                json!({"algorithm": "pd", "endpoints": decode, "prefill_endpoints": prefill_addresses});
            lb = Some(FILTER_PICKS);
            // The cluster holds every endpoint the filter may name, the prefill ones too.
            for p in prefill {
                if !eps.contains(&p) {
                    eps.push(p);
                }
            }
        } else if picked == Some("pd") {
            g.warnings.push(format!(
                "{name}: model {model:?} has no `rolesets` for prefill/decode routing; its endpoints are balanced \
                 round-robin"
            ));
        } else if let Some(a) = picked {
            match picker_endpoints(&eps) {
                Ok(addresses) => {
                    plugin_backend["picker"] = json!({"algorithm": a, "endpoints": addresses});
                    lb = Some(FILTER_PICKS);
                }
                Err(e) => {
                    lb = lb_policy(a);
                    let instead = lb.map_or("round-robin".to_string(), |p| format!("Envoy's {p}"));
                    g.warnings.push(format!("{name}: model {model:?}: {e}; balanced by {instead} instead"));
                }
            }
        }
        g.upstreams.push(Upstream {
            name: backend.clone(),
            endpoints: eps,
            tls: None,
            host_rewrite,
            timeout: None,
            lb_policy: lb.map(str::to_string),
        });
        backends.push(plugin_backend);
        rules.push(json!({"name": model, "match": {"model": {"exact": model}}, "backends": [{"name": backend}]}));
    }
    g.plugin.insert("backends".into(), Json::Array(backends));
    g.plugin.insert("rules".into(), Json::Array(rules));
    Ok(g)
}

/// AIBrix's `rolesets: [{name, prefill: [..], decode: [..]}]`: every set's decoders, then every
/// set's prefill endpoints (vLLM's KV connectors pull from any prefill instance they are told of).
fn role_endpoints(roles: &At<'_>) -> NResult<(Vec<crate::model::Endpoint>, Vec<crate::model::Endpoint>)> {
    let sets = roles.items()?;
    if sets.is_empty() {
        return Err(roles.err("at least one role set {name, prefill: [...], decode: [...]} is required"));
    }
    let (mut decode, mut prefill) = (Vec::new(), Vec::new());
    for set in &sets {
        prefill.extend(endpoints(&set.req("prefill")?)?);
        decode.extend(endpoints(&set.req("decode")?)?);
    }
    Ok((decode, prefill))
}

#[cfg(test)]
mod tests {
    use crate::model::MapEnv;

    const FILE: &str = "models:\n- name: q\n  endpoints: ['127.0.0.1:8000', '127.0.0.1:8001']\n- name: named\n  endpoints: ['vllm-0:8000']\n";

    #[test]
    fn routing_algorithm_selects_the_filters_picker() {
        let env = MapEnv::from([("ROUTING_ALGORITHM", "prefix-cache-aware")]);
        let g = crate::formats::load_text("e.yaml", FILE, &env, None).unwrap();
        assert_eq!(
            g.plugin["backends"][0]["picker"],
            serde_json::json!({"algorithm": "prefix-cache-aware", "endpoints": ["127.0.0.1:8000", "127.0.0.1:8001"]})
        );
        assert!(g.upstreams[0].filter_picks());
        // Endpoints by name: Envoy's round robin (no equivalent balancer), said in a warning.
        assert!(g.plugin["backends"][1].get("picker").is_none() && !g.upstreams[1].filter_picks());
        assert!(
            g.warnings.iter().any(|w| w.contains("model \"named\"") && w.contains("round-robin")),
            "{:?}",
            g.warnings
        );
        let env = MapEnv::from([("ROUTING_ALGORITHM", "least-request")]);
        let g = crate::formats::load_text("e.yaml", FILE, &env, None).unwrap();
        assert_eq!(g.plugin["backends"][0]["picker"]["algorithm"], "least-request");
        assert_eq!(g.upstreams[1].lb_policy.as_deref(), Some("LEAST_REQUEST"));
        let env = MapEnv::from([("ROUTING_ALGORITHM", "throughput")]);
        let g = crate::formats::load_text("e.yaml", FILE, &env, None).unwrap();
        assert!(g.upstreams.iter().all(|u| u.lb_policy.is_none()));
        assert!(g.warnings.iter().any(|w| w.contains("ROUTING_ALGORITHM=throughput")), "{:?}", g.warnings);
    }

    #[test]
    fn rolesets_are_served_by_the_pd_picker() {
        const PD: &str = "models:\n- name: q\n  endpoints: ['127.0.0.1:8300']\n  rolesets:\n  - {name: a, prefill: ['127.0.0.1:8100'], decode: ['127.0.0.1:8200']}\n  - {name: b, prefill: ['127.0.0.1:8101'], decode: ['127.0.0.1:8201']}\n";
        let env = MapEnv::from([("ROUTING_ALGORITHM", "pd")]);
        let g = crate::formats::load_text("e.yaml", PD, &env, None).unwrap();
        assert_eq!(
            g.plugin["backends"][0]["picker"],
            serde_json::json!({"algorithm": "pd", "endpoints": ["127.0.0.1:8200", "127.0.0.1:8201"],
                "prefill_endpoints": ["127.0.0.1:8100", "127.0.0.1:8101"]})
        );
        assert!(g.upstreams[0].filter_picks());
        let cluster: Vec<u16> = g.upstreams[0].endpoints.iter().map(|e| e.port).collect();
        assert_eq!(cluster, [8200, 8201, 8100, 8101], "the cluster holds the prefill endpoints too");
        // Another algorithm: the plain endpoints, said in a warning.
        let env = MapEnv::from([("ROUTING_ALGORITHM", "least-request")]);
        let g = crate::formats::load_text("e.yaml", PD, &env, None).unwrap();
        assert_eq!(g.plugin["backends"][0]["picker"]["algorithm"], "least-request");
        assert!(g.warnings.iter().any(|w| w.contains("ROUTING_ALGORITHM=pd only")), "{:?}", g.warnings);
        // pd without role sets: round-robin, said.
        let g = crate::formats::load_text("e.yaml", FILE, &MapEnv::from([("ROUTING_ALGORITHM", "pd")]), None).unwrap();
        assert!(g.plugin["backends"][0].get("picker").is_none());
        assert!(g.warnings.iter().any(|w| w.contains("no `rolesets`")), "{:?}", g.warnings);
    }
}
