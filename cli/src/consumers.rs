//! Client authentication ("consumers"): who may call the gateway, checked by Envoy's own filters
//! before the llmgw filter runs, with the authenticated consumer's name in [`CONSUMER_HEADER`].
//!
//! ```yaml
//! consumers:
//!   - {name: team-a, api_keys_env: TEAM_A_KEYS}        # comma-separated keys; or api_keys_file
//!   - {name: ci-bot, jwt: {issuer: https://idp.example, jwks_file: jwks.json, subject: ci-bot}}
//! ```
//!
//! Keys are read at run time ([`resolve`]) from the environment or a file, never from the config
//! text, and are kept as [`SecretValue`]s (whose `Debug` shows a length only). The rendered Envoy
//! bootstrap holds them (a 0600 file in a private directory; Envoy redacts `api_key_auth`
//! credentials in its `/config_dump`); no printed output and no Envoy Gateway manifest does.

use std::collections::BTreeMap;

use crate::formats::node::{At, FieldError, NResult};
use crate::model::{Env, SecretValue};
use crate::url::BaseUrl;

/// The request header naming the authenticated consumer. Client copies are removed before the
/// authentication filters run, so only they can set it.
pub const CONSUMER_HEADER: &str = "x-llmgw-consumer";
/// The consumer `llmgw run`'s own health probes authenticate as (with a random key per run).
pub const PROBE_CONSUMER: &str = "llmgw-health-probe";
/// Most keys one consumer may have (a bounded bootstrap).
const MAX_KEYS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub name: String,
    /// Where the consumer's API keys are read from at run time.
    pub keys: Option<KeySource>,
    pub jwt: Option<Jwt>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// An environment variable holding comma-separated keys.
    Env(String),
    /// A file with one key per line (blank lines and `#` comments ignored).
    File(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwt {
    pub issuer: String,
    pub jwks: Jwks,
    /// The `sub` the token must carry; any subject of the issuer when `None`.
    pub subject: Option<String>,
    /// Accepted `aud` values; any when empty.
    pub audiences: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Jwks {
    /// A local JWKS file, inlined into the bootstrap when resolved (public keys only).
    File(String),
    /// A JWKS URL Envoy fetches (and caches) through its own cluster.
    Uri(BaseUrl, String),
}

/// One client key and the consumer it authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKey {
    pub key: SecretValue,
    pub consumer: String,
}

/// What [`resolve`] read: every consumer's keys, and the text of every local JWKS by consumer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub keys: Vec<ClientKey>,
    pub jwks: BTreeMap<String, String>,
    /// The health probes' key (consumer [`PROBE_CONSUMER`]), random, made by [`resolve`] when there
    /// are consumers: the admin's `/health` goes through the listener, so it must authenticate.
    pub probe_key: Option<SecretValue>,
}

/// `consumers:` of llmgw's own format.
pub fn parse(list: &At<'_>) -> NResult<Vec<Consumer>> {
    let mut out: Vec<Consumer> = Vec::new();
    for at in list.items()? {
        if let Some(field) = at.unknown_keys(&["name", "api_keys_env", "api_keys_file", "jwt"]).into_iter().next() {
            return Err(FieldError {
                field,
                reason: "unknown field; a consumer has name, api_keys_env, api_keys_file, jwt".into(),
            });
        }
        let name_at = at.req("name")?;
        let name = name_at.str()?.to_string();
        // It travels as a header value and a metric label, and keys the budgets.
        if name.is_empty()
            || name.len() > 64
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(name_at.err(format!("{name:?}: a consumer name is 1-64 characters of A-Z a-z 0-9 - _ .")));
        }
        if name == PROBE_CONSUMER {
            return Err(name_at.err(format!("{name:?} is reserved for llmgw's own health probes")));
        }
        if out.iter().any(|c| c.name == name) {
            return Err(name_at.err(format!("{name:?} is the name of an earlier consumer too")));
        }
        let keys = match (at.opt_str("api_keys_env")?, at.opt_str("api_keys_file")?) {
            (Some(v), None) => Some(KeySource::Env(v.to_string())),
            (None, Some(f)) => Some(KeySource::File(f.to_string())),
            (None, None) => None,
            (Some(_), Some(_)) => return Err(at.err("give api_keys_env or api_keys_file, not both")),
        };
        let jwt = at.get("jwt").map(|j| jwt(&j)).transpose()?;
        if keys.is_none() && jwt.is_none() {
            return Err(at.err("a consumer needs api_keys_env, api_keys_file or jwt"));
        }
        out.push(Consumer { name, keys, jwt });
    }
    Ok(out)
}

fn jwt(at: &At<'_>) -> NResult<Jwt> {
    let known = ["issuer", "jwks_file", "jwks_uri", "subject", "audiences"];
    if let Some(field) = at.unknown_keys(&known).into_iter().next() {
        return Err(FieldError { field, reason: format!("unknown field; jwt has {}", known.join(", ")) });
    }
    let jwks = match (at.opt_str("jwks_file")?, at.get("jwks_uri")) {
        (Some(f), None) => Jwks::File(f.to_string()),
        (None, Some(u)) => {
            let text = u.str()?.trim().to_string();
            Jwks::Uri(BaseUrl::parse(&text).map_err(|e| u.err(e))?, text)
        }
        _ => return Err(at.err("give jwks_file (a local JWKS) or jwks_uri (fetched by Envoy), one of them")),
    };
    let audiences = at.list("audiences")?.iter().map(|a| a.str().map(str::to_string)).collect::<NResult<_>>()?;
    Ok(Jwt {
        issuer: at.req_str("issuer")?.to_string(),
        jwks,
        subject: at.opt_str("subject")?.map(str::to_string),
        audiences,
    })
}

/// Reads every consumer's keys (from `env` or files) and local JWKS files. Errors name the
/// consumer and the variable or file, never a key.
pub fn resolve(consumers: &[Consumer], env: &dyn Env) -> Result<Resolved, String> {
    let mut out = Resolved::default();
    if consumers.is_empty() {
        return Ok(out);
    }
    out.probe_key = Some(random_key().map_err(|e| format!("cannot make the health probe's key: {e}"))?);
    for c in consumers {
        if let Some(source) = &c.keys {
            let (text, from) = match source {
                KeySource::Env(var) => (
                    env.var(var)
                        .ok_or_else(|| format!("consumer {}: environment variable {var} is not set", c.name))?,
                    format!("environment variable {var}"),
                ),
                KeySource::File(path) => (
                    std::fs::read_to_string(path)
                        .map_err(|e| format!("consumer {}: cannot read api_keys_file {path}: {e}", c.name))?,
                    format!("file {path}"),
                ),
            };
            let keys = split_keys(&text, matches!(source, KeySource::File(_)));
            if keys.is_empty() {
                return Err(format!("consumer {}: {from} holds no key", c.name));
            }
            if keys.len() > MAX_KEYS {
                return Err(format!("consumer {}: {from} holds more than {MAX_KEYS} keys", c.name));
            }
            for key in keys {
                // The same key for two consumers would make the consumer ambiguous.
                if let Some(other) = out.keys.iter().find(|k| k.key.0 == key) {
                    return Err(format!(
                        "consumer {}: a key of {from} is also a key of consumer {}",
                        c.name, other.consumer
                    ));
                }
                out.keys.push(ClientKey { key: SecretValue(key), consumer: c.name.clone() });
            }
        }
        if let Some(Jwt { jwks: Jwks::File(path), .. }) = &c.jwt {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("consumer {}: cannot read jwks_file {path}: {e}", c.name))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| format!("consumer {}: jwks_file {path} is not JSON: {e}", c.name))?;
            if !v.get("keys").is_some_and(serde_json::Value::is_array) {
                return Err(format!("consumer {}: jwks_file {path} has no \"keys\" list (a JWKS)", c.name));
            }
            out.jwks.insert(c.name.clone(), text);
        }
    }
    Ok(out)
}

/// 32 random hex digits from the kernel.
fn random_key() -> std::io::Result<SecretValue> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(SecretValue(bytes.iter().map(|b| format!("{b:02x}")).collect()))
}

/// Keys of a variable (comma- or newline-separated) or of a file (one a line, `#` comments), trimmed.
fn split_keys(text: &str, file: bool) -> Vec<String> {
    text.split(|c| c == '\n' || (!file && c == ','))
        .map(str::trim)
        .filter(|k| !(k.is_empty() || (file && k.starts_with('#'))))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MapEnv;

    fn parsed(yaml: &str) -> NResult<Vec<Consumer>> {
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).unwrap();
        parse(&At::root(&v))
    }

    #[test]
    fn parses_key_and_jwt_consumers() {
        let c = parsed(
            "- {name: team-a, api_keys_env: TEAM_A_KEYS}\n- {name: ci-bot, jwt: {issuer: 'https://idp', jwks_uri: 'https://idp/jwks.json', subject: ci}}\n",
        )
        .unwrap();
        assert_eq!(c[0].keys, Some(KeySource::Env("TEAM_A_KEYS".into())));
        let jwt = c[1].jwt.as_ref().unwrap();
        assert_eq!(jwt.subject.as_deref(), Some("ci"));
        assert!(matches!(&jwt.jwks, Jwks::Uri(u, _) if u.host == "idp" && u.path == "/jwks.json"));
    }

    #[test]
    fn refuses_what_cannot_be_honoured() {
        let e = |y: &str| parsed(y).unwrap_err();
        assert!(e("- {name: a}\n").reason.contains("needs api_keys_env"));
        assert!(e("- {name: 'a b', api_keys_env: X}\n").reason.contains("consumer name"));
        assert!(e("- {name: a, api_keys_env: X}\n- {name: a, api_keys_env: Y}\n").reason.contains("earlier"));
        assert!(e("- {name: a, api_keys_env: X, api_keys_file: f}\n").reason.contains("not both"));
        assert_eq!(e("- {name: a, api_key: sk-1}\n").field, "[0].api_key");
        assert!(e("- {name: a, jwt: {issuer: i}}\n").reason.contains("jwks_file"));
    }

    #[test]
    fn keys_come_from_the_environment_and_errors_never_show_them() {
        let c = parsed("- {name: a, api_keys_env: A_KEYS}\n- {name: b, api_keys_env: B_KEYS}\n").unwrap();
        let env = MapEnv::from([("A_KEYS", " sk-a1, sk-a2 ,"), ("B_KEYS", "sk-b1")]);
        let r = resolve(&c, &env).unwrap();
        let got: Vec<(&str, &str)> = r.keys.iter().map(|k| (k.key.0.as_str(), k.consumer.as_str())).collect();
        assert_eq!(got, [("sk-a1", "a"), ("sk-a2", "a"), ("sk-b1", "b")]);
        assert!(!format!("{r:?}").contains("sk-a1"), "Debug shows lengths only");

        let e = resolve(&c, &MapEnv::from([("A_KEYS", "sk-same"), ("B_KEYS", "sk-same")])).unwrap_err();
        assert!(e.contains("also a key of consumer a") && !e.contains("sk-same"), "{e}");
        let e = resolve(&c, &MapEnv::from([("A_KEYS", " , ")])).unwrap_err();
        assert!(e.contains("holds no key"), "{e}");
        let e = resolve(&c, &MapEnv::from([("A_KEYS", "x")])).unwrap_err();
        assert_eq!(e, "consumer b: environment variable B_KEYS is not set");
    }

    #[test]
    fn key_files_have_one_key_a_line() {
        assert_eq!(split_keys("# team a\nsk-1\n\n  sk-2  \n", true), ["sk-1", "sk-2"]);
        assert_eq!(split_keys("sk-1,sk-2", true), ["sk-1,sk-2"], "a comma is part of a file's key");
    }
}
