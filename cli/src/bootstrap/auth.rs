//! Client authentication in the bootstrap: Envoy's own filters, before the llmgw filter.
//!
//! Filter order (each only when needed):
//! 1. `header_mutation` removes any client-sent `x-llmgw-consumer`: only the filters below set it.
//! 2. `jwt_authn`: one provider per JWT consumer (issuer, JWKS, `subjects`, audiences). A verified
//!    token's payload lands in the dynamic metadata under the provider's name, and the token is
//!    removed from the request (`forward: false`). With key consumers too, a missing or failing
//!    token is let through (`allow_missing_or_failed`) for the key check to judge.
//! 3. `header_mutation` writes the consumer's name from that metadata (a fixed name per provider,
//!    never a claim the client chose) into `x-llmgw-consumer`.
//! 4. `api_key_auth` (keys from `Authorization: Bearer` or `x-api-key`, compared by Envoy), which
//!    forwards the key's consumer in `x-llmgw-consumer` and removes the key (`hide_credentials`).
//!    With JWT consumers too it is skipped when step 3 named a consumer (an `ExtensionWithMatcher`
//!    on that header, which no client can send): a request passes with a valid token *or* key.
//! 5. `header_to_metadata` copies the consumer to the metadata, for the access log.
//!
//! Their 401s get the client's API shape from the HCM's `local_reply_config` (see
//! [`local_reply_config`]).

use serde_json::{json, Value};

use crate::consumers::{Jwks, CONSUMER_HEADER};
use crate::model::{Gateway, Upstream};

/// The key of the consumer's name in the `io.llmgw` dynamic metadata.
pub const CONSUMER_METADATA_KEY: &str = "consumer";
const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
/// `response_code_details` of the auth filters' rejections: the mappers rewrite these only, not
/// the llmgw filter's own 401s (already in the client's shape). `unkonwn_api_key` is Envoy's
/// spelling; the fixed one is listed for when it changes.
const KEY_DENIALS: [&str; 5] =
    ["missing_api_key", "unkonwn_api_key", "unknown_api_key", "missing_credentials", "missing_key_sources"];
const JWT_DENIAL_PREFIX: &str = "jwt_authn_access_denied";

/// The JWT provider (and dynamic metadata key) of a consumer.
fn provider(name: &str) -> String {
    format!("consumer-{name}")
}

/// The cluster a remote JWKS is fetched through.
fn jwks_cluster(name: &str) -> String {
    format!("llmgw-jwks-{name}")
}

/// The clusters of the consumers' remote JWKS.
pub fn jwks_upstreams(g: &Gateway) -> Vec<Upstream> {
    g.consumers
        .iter()
        .filter_map(|c| match &c.jwt.as_ref()?.jwks {
            Jwks::Uri(url, _) => Some(Upstream::from_url(&jwks_cluster(&c.name), url)),
            Jwks::File(_) => None,
        })
        .collect()
}

/// The auth filters, in order, to put before the llmgw filter; none without consumers.
pub fn filters(g: &Gateway) -> Vec<Value> {
    if g.consumers.is_empty() {
        return Vec::new();
    }
    // The health probes' key makes the key check present whenever keys are resolved.
    let has_keys = g.consumers.iter().any(|c| c.keys.is_some()) || g.client_auth.probe_key.is_some();
    let jwt: Vec<_> = g.consumers.iter().filter_map(|c| Some((c.name.as_str(), c.jwt.as_ref()?))).collect();
    let mut out = vec![header_mutation("llmgw-consumer-strip", json!([{"remove": CONSUMER_HEADER}]))];
    if !jwt.is_empty() {
        let mut providers = serde_json::Map::new();
        for (name, j) in &jwt {
            let mut p = json!({"issuer": j.issuer, "payload_in_metadata": provider(name), "forward": false});
            if let Some(sub) = &j.subject {
                p["subjects"] = json!({"exact": sub});
            }
            if !j.audiences.is_empty() {
                p["audiences"] = json!(j.audiences);
            }
            match &j.jwks {
                Jwks::File(path) => {
                    p["local_jwks"] = match g.client_auth.jwks.get(*name) {
                        Some(text) => json!({"inline_string": text}),
                        None => json!({"filename": path}),
                    }
                }
                Jwks::Uri(_, uri) => {
                    p["remote_jwks"] = json!({
                        "http_uri": {"uri": uri, "cluster": jwks_cluster(name), "timeout": "5s"},
                        "cache_duration": "600s",
                        // Fetched when Envoy starts; the listener does not wait for the IdP.
                        "async_fetch": {"fast_listener": true},
                    });
                }
            }
            providers.insert(provider(name), p);
        }
        let mut any: Vec<Value> = jwt.iter().map(|(name, _)| json!({"provider_name": provider(name)})).collect();
        if has_keys {
            any.push(json!({"allow_missing_or_failed": {}}));
        }
        let requires = match any.as_slice() {
            [one] => one.clone(),
            _ => json!({"requires_any": {"requirements": any}}),
        };
        out.push(json!({
            "name": JWT_FILTER,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": providers,
                "rules": [{"match": {"prefix": "/"}, "requires": requires}],
            },
        }));
        out.push(header_mutation(
            "llmgw-consumer-jwt",
            json!([{
                "append": {
                    "header": {"key": CONSUMER_HEADER, "value": jwt_consumer_expression(&jwt)},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    // No verified token: no header (the key check then judges).
                    "keep_empty_value": false,
                },
            }]),
        ));
    }
    if has_keys {
        out.push(api_key_auth(g, !jwt.is_empty()));
    }
    out.push(json!({
        "name": "llmgw-consumer-metadata",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config",
            "request_rules": [{"header": CONSUMER_HEADER, "on_header_present": {
                "metadata_namespace": super::METADATA_NAMESPACE, "key": CONSUMER_METADATA_KEY, "type": "STRING"}}],
        },
    }));
    out
}

fn header_mutation(name: &str, mutations: Value) -> Value {
    json!({
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": mutations},
        },
    })
}

/// `%CEL(...)%`: the name of the consumer whose provider verified the token (its payload is in
/// the metadata under the provider's name), else empty. Names are `[A-Za-z0-9._-]` (checked when
/// parsed), so they need no quoting.
fn jwt_consumer_expression(jwt: &[(&str, &crate::consumers::Jwt)]) -> String {
    let md = format!("metadata.filter_metadata['{JWT_FILTER}']");
    let mut expr = "''".to_string();
    for (name, _) in jwt.iter().rev() {
        expr = format!("('{}' in {md} ? '{name}' : {expr})", provider(name));
    }
    format!("%CEL('{JWT_FILTER}' in metadata.filter_metadata ? {expr} : '')%")
}

fn api_key_auth(g: &Gateway, skip_when_named: bool) -> Value {
    let mut credentials: Vec<Value> =
        g.client_auth.keys.iter().map(|k| json!({"key": k.key.0, "client": k.consumer})).collect();
    if let Some(key) = &g.client_auth.probe_key {
        credentials.push(json!({"key": key.0, "client": crate::consumers::PROBE_CONSUMER}));
    }
    let filter = json!({
        "name": "envoy.filters.http.api_key_auth",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth",
            "credentials": credentials,
            // The first present source is the key: OpenAI SDKs send `Authorization: Bearer <key>`
            // (Envoy strips `Bearer `), Anthropic SDKs `x-api-key`.
            "key_sources": [{"header": "authorization"}, {"header": "x-api-key"}],
            "forwarding": {"header": CONSUMER_HEADER, "hide_credentials": true},
        },
    });
    if !skip_when_named {
        return filter;
    }
    json!({
        "name": "envoy.filters.http.api_key_auth",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher",
            "extension_config": filter,
            "xds_matcher": {"matcher_list": {"matchers": [{
                "predicate": {"single_predicate": {
                    "input": {"name": "consumer", "typed_config": {
                        "@type": "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
                        "header_name": CONSUMER_HEADER,
                    }},
                    "value_match": {"safe_regex": {"google_re2": {}, "regex": ".+"}},
                }},
                "on_match": {"action": {"name": "skip", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter",
                }}},
            }]}},
        },
    })
}

/// The auth filters answer 401 with a text body; clients expect their API's error JSON. Anthropic
/// paths (`/v1/messages*`, and everything under the configuration's `anthropic_prefix`) get
/// Anthropic's shape, the others OpenAI's. `WWW-Authenticate` is kept (jwt_authn sets one), or
/// added. Other 401s (the llmgw filter's, a provider's) are left alone.
pub fn local_reply_config(g: &Gateway) -> Value {
    let prefix = g
        .plugin
        .get("anthropic_prefix")
        .and_then(Value::as_str)
        .unwrap_or(llmgw_filter::api::DEFAULT_ANTHROPIC_PREFIX)
        .trim_end_matches('/')
        .replace(['\'', '\\'], "");
    let denials: Vec<String> = KEY_DENIALS.iter().map(|d| format!("'{d}'")).collect();
    let denied = format!(
        "response.code == 401 && (response.code_details in [{}] || response.code_details.startsWith('{JWT_DENIAL_PREFIX}'))",
        denials.join(", ")
    );
    let anthropic = format!("(request.path.startsWith('/v1/messages') || request.path.startsWith('{prefix}/'))");
    let cel = |expr: String| {
        json!({"extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                "expression": expr,
            },
        }})
    };
    let www = json!([{"header": {"key": "www-authenticate", "value": "Bearer realm=\"llmgw\""}, "append_action": "ADD_IF_ABSENT"}]);
    json!({"mappers": [
        {
            "filter": cel(format!("{denied} && {anthropic}")),
            "headers_to_add": www,
            "body_format_override": {"json_format": {
                "type": "error",
                "error": {"type": "authentication_error", "message": "%LOCAL_REPLY_BODY%"},
            }},
        },
        {
            "filter": cel(denied),
            "headers_to_add": www,
            "body_format_override": {"json_format": {
                "error": {"message": "%LOCAL_REPLY_BODY%", "type": "authentication_error", "code": "invalid_api_key"},
            }},
        },
    ]})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MapEnv;

    fn gateway(consumers: &str, env: &MapEnv) -> Gateway {
        let text = format!(
            "anthropic_prefix: /claude\nbackends: [{{name: a, url: 'http://127.0.0.1:8000/v1', schema: OpenAI}}]\nconsumers:\n{consumers}"
        );
        let mut g = crate::formats::load_text("t.yaml", &text, env, None).unwrap();
        g.resolve_consumers(env).unwrap();
        g
    }

    fn names(filters: &[Value]) -> Vec<&str> {
        filters.iter().filter_map(|f| f["name"].as_str()).collect()
    }

    #[test]
    fn no_consumers_no_filters() {
        let g = crate::formats::load_text(
            "t.yaml",
            "backends: [{name: a, url: 'http://127.0.0.1:8000/v1', schema: OpenAI}]\n",
            &MapEnv::default(),
            None,
        )
        .unwrap();
        assert!(filters(&g).is_empty());
    }

    #[test]
    fn key_consumers_strip_the_header_then_check_the_key() {
        let env = MapEnv::from([("A_KEYS", "sk-a1,sk-a2")]);
        let g = gateway("  - {name: team-a, api_keys_env: A_KEYS}\n", &env);
        let f = filters(&g);
        assert_eq!(
            names(&f),
            ["llmgw-consumer-strip", "envoy.filters.http.api_key_auth", "llmgw-consumer-metadata"],
            "no JWT: no jwt_authn, and the key check is not skippable"
        );
        assert_eq!(f[0]["typed_config"]["mutations"]["request_mutations"], json!([{"remove": "x-llmgw-consumer"}]));
        let auth = &f[1]["typed_config"];
        assert!(auth["@type"].as_str().unwrap().ends_with("api_key_auth.v3.ApiKeyAuth"));
        let creds = auth["credentials"].as_array().unwrap();
        let pairs: Vec<(&str, &str)> =
            creds.iter().map(|c| (c["key"].as_str().unwrap(), c["client"].as_str().unwrap())).collect();
        assert_eq!(pairs[..2], [("sk-a1", "team-a"), ("sk-a2", "team-a")]);
        // The health probe's own random key comes last.
        assert_eq!(pairs[2].1, "llmgw-health-probe");
        assert_eq!(pairs[2].0.len(), 32);
        assert_eq!(auth["key_sources"], json!([{"header": "authorization"}, {"header": "x-api-key"}]));
        assert_eq!(auth["forwarding"], json!({"header": "x-llmgw-consumer", "hide_credentials": true}));
    }

    #[test]
    fn jwt_and_key_consumers_either_passes() {
        let env = MapEnv::from([("A_KEYS", "sk-a1")]);
        let g = gateway(
            "  - {name: team-a, api_keys_env: A_KEYS}\n  - {name: ci-bot, jwt: {issuer: 'https://idp', jwks_uri: 'https://idp/jwks', subject: bot}}\n",
            &env,
        );
        let f = filters(&g);
        assert_eq!(
            names(&f),
            [
                "llmgw-consumer-strip",
                "envoy.filters.http.jwt_authn",
                "llmgw-consumer-jwt",
                "envoy.filters.http.api_key_auth",
                "llmgw-consumer-metadata"
            ]
        );
        let jwt = &f[1]["typed_config"];
        let p = &jwt["providers"]["consumer-ci-bot"];
        assert_eq!(p["subjects"], json!({"exact": "bot"}));
        assert_eq!(p["forward"], false, "the token never reaches the provider");
        assert_eq!(p["remote_jwks"]["http_uri"]["cluster"], "llmgw-jwks-ci-bot");
        assert_eq!(
            jwt["rules"][0]["requires"]["requires_any"]["requirements"],
            json!([{"provider_name": "consumer-ci-bot"}, {"allow_missing_or_failed": {}}])
        );
        let value =
            f[2]["typed_config"]["mutations"]["request_mutations"][0]["append"]["header"]["value"].as_str().unwrap();
        assert!(
            value.contains("'consumer-ci-bot' in metadata.filter_metadata['envoy.filters.http.jwt_authn'] ? 'ci-bot'")
        );
        // The key check is skipped once a token named the consumer (a header no client can send).
        let wrapped = &f[3]["typed_config"];
        assert!(wrapped["@type"].as_str().unwrap().ends_with("ExtensionWithMatcher"));
        let m = &wrapped["xds_matcher"]["matcher_list"]["matchers"][0];
        assert_eq!(m["predicate"]["single_predicate"]["input"]["typed_config"]["header_name"], "x-llmgw-consumer");
        assert!(m["on_match"]["action"]["typed_config"]["@type"].as_str().unwrap().ends_with("SkipFilter"));
        assert_eq!(jwks_upstreams(&g)[0].name, "llmgw-jwks-ci-bot");
    }

    #[test]
    fn a_local_jwks_is_inlined_and_jwt_alone_needs_a_valid_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#).unwrap();
        let consumers = format!("  - {{name: ci, jwt: {{issuer: i, jwks_file: '{}'}}}}\n", path.display());
        let mut g = gateway(&consumers, &MapEnv::default());
        let p = &filters(&g)[1]["typed_config"]["providers"]["consumer-ci"];
        assert!(p["local_jwks"]["inline_string"].as_str().unwrap().contains("AQAB"));
        assert!(p.get("subjects").is_none());
        // Without the probe key (`llmgw render`): the token is required, no key check.
        g.client_auth.probe_key = None;
        let f = filters(&g);
        assert_eq!(f[1]["typed_config"]["rules"][0]["requires"], json!({"provider_name": "consumer-ci"}));
        assert!(!names(&f).contains(&"envoy.filters.http.api_key_auth"));
    }

    #[test]
    fn rejections_are_mapped_to_the_clients_api_shape() {
        let g = gateway("  - {name: a, api_keys_env: K}\n", &MapEnv::from([("K", "sk-1")]));
        let c = local_reply_config(&g);
        let anthropic = &c["mappers"][0];
        let expr = anthropic["filter"]["extension_filter"]["typed_config"]["expression"].as_str().unwrap();
        assert!(expr.starts_with("response.code == 401 && (response.code_details in ['missing_api_key'"), "{expr}");
        assert!(expr.contains("request.path.startsWith('/v1/messages') || request.path.startsWith('/claude/')"));
        assert_eq!(anthropic["body_format_override"]["json_format"]["type"], "error");
        assert_eq!(anthropic["body_format_override"]["json_format"]["error"]["type"], "authentication_error");
        let openai = &c["mappers"][1]["body_format_override"]["json_format"]["error"];
        assert_eq!(
            (openai["type"].as_str(), openai["code"].as_str()),
            (Some("authentication_error"), Some("invalid_api_key"))
        );
        assert_eq!(c["mappers"][1]["headers_to_add"][0]["append_action"], "ADD_IF_ABSENT");
    }
}
