//! Envoy Gateway's `SecurityPolicy` (client authentication: `apiKeyAuth`, `jwt`) → consumers, and
//! Envoy AI Gateway's `QuotaPolicy` → budgets. Field names and meaning follow the CRDs
//! (gateway.envoyproxy.io/v1alpha1 SecurityPolicy, aigateway.envoyproxy.io/v1alpha1 QuotaPolicy).
//!
//! * `apiKeyAuth.credentialRefs`: each Secret of the same file is read; every key of it is a client
//!   id (the consumer) and its value that client's API key. The keys become moved credentials
//!   (`Gateway::secrets`), never rendered. A Secret not in the file is refused.
//! * `jwt.providers[]`: one consumer per provider (named like it), `issuer`, `audiences`,
//!   `remoteJWKS.uri`.
//! * QuotaPolicy `perModelQuotas[].quota.bucketRules[]` whose client selector is one header
//!   match on the consumer header (`x-llmgw-consumer`, or the policy's `forwardClientIDHeader`):
//!   `Exact` → that consumer's budget, `Distinct` → each consumer's (`consumer: "*"`), for the
//!   model `modelName`, `limit` tokens per `duration`, counted by `costExpression`.
//!
//! What llmgw cannot honour is refused, naming the field: quotas shared by every client
//! (`serviceQuota`, `defaultBucket`, a rule without a consumer selector), other selectors,
//! shadow mode, CEL cost expressions other than the token counts, and SecurityPolicy features
//! other than the above.

use std::collections::BTreeMap;

use super::{secret_value, Ctx, Obj};
use crate::budgets::{Budget, Count, Limit, ModelMatch, Per, EACH_CONSUMER};
use crate::consumers::{Consumer, Jwks, Jwt, KeySource, CONSUMER_HEADER};
use crate::diag::ConfigError;
use crate::formats::node::{At, FieldError, NResult};
use crate::model::SecretValue;
use crate::url::BaseUrl;

/// Consumers of the SecurityPolicies, their keys (variable → value), and the header names that
/// carry the consumer (for QuotaPolicy client selectors).
pub(crate) struct Security {
    pub consumers: Vec<Consumer>,
    pub secrets: BTreeMap<String, SecretValue>,
    pub consumer_headers: Vec<String>,
}

fn refuse(at: &At<'_>, field: &str, why: &str) -> FieldError {
    FieldError { field: format!("{}.{field}", at.field()), reason: format!("not supported by llmgw: {why}") }
}

pub(crate) fn security(ctx: &mut Ctx<'_>) -> Result<Security, ConfigError> {
    let mut out =
        Security { consumers: Vec::new(), secrets: BTreeMap::new(), consumer_headers: vec![CONSUMER_HEADER.into()] };
    // Keys per consumer, in order.
    let mut keys: Vec<(String, Vec<String>)> = Vec::new();
    let mut notes: Vec<(usize, String, String)> = Vec::new();
    for (i, obj) in ctx.objs.iter().enumerate().filter(|(_, o)| o.kind == "SecurityPolicy") {
        let spec = obj.spec();
        let fail = |e: FieldError| ctx.err(obj, e);
        let known = ["targetRefs", "targetRef", "apiKeyAuth", "jwt"];
        if let Some(field) = spec.unknown_keys(&known).into_iter().next() {
            return Err(fail(refuse(
                &spec,
                field.rsplit('.').next().unwrap_or(&field),
                "llmgw honours apiKeyAuth and jwt (client authentication) of a SecurityPolicy",
            )));
        }
        if let Some(a) = spec.get("apiKeyAuth") {
            let known = ["credentialRefs", "extractFrom", "forwardClientIDHeader", "sanitize"];
            if let Some(field) = a.unknown_keys(&known).into_iter().next() {
                return Err(fail(FieldError { field, reason: "not supported by llmgw".into() }));
            }
            for e in a.list("extractFrom").map_err(fail)? {
                if let Some(field) = e.unknown_keys(&["headers"]).into_iter().next() {
                    return Err(fail(FieldError {
                        field,
                        reason: "not supported by llmgw: keys are read from headers (Authorization: Bearer, x-api-key)"
                            .into(),
                    }));
                }
                for h in e.list("headers").map_err(fail)? {
                    let name = h.str().map_err(fail)?;
                    if !["authorization", "x-api-key"].contains(&name.to_ascii_lowercase().as_str()) {
                        return Err(fail(h.err(format!(
                            "{name:?}: llmgw reads client keys from Authorization (Bearer) and x-api-key only"
                        ))));
                    }
                }
            }
            if let Some(h) = a.opt_str("forwardClientIDHeader").map_err(fail)? {
                let h = h.to_ascii_lowercase();
                if h != CONSUMER_HEADER {
                    notes.push((i, "spec.apiKeyAuth.forwardClientIDHeader".into(), format!(
                        "llmgw names the client id in {CONSUMER_HEADER} (QuotaPolicy selectors on {h} are read as on it) and does not forward it to the provider"
                    )));
                    out.consumer_headers.push(h);
                }
            }
            if a.get("sanitize").map(|s| s.bool()).transpose().map_err(fail)? == Some(false) {
                notes.push((
                    i,
                    "spec.apiKeyAuth.sanitize".into(),
                    "llmgw never forwards a client's key to the provider".into(),
                ));
            }
            let refs = a.list("credentialRefs").map_err(fail)?;
            if refs.is_empty() {
                return Err(fail(a.err("credentialRefs: name the Secret holding the client keys")));
            }
            for r in refs {
                let kind = r.opt_str("kind").map_err(fail)?.unwrap_or("Secret");
                if kind != "Secret" {
                    return Err(fail(r.err(format!("kind {kind}: credentialRefs name Secrets"))));
                }
                let name = r.req_str("name").map_err(fail)?;
                let ns = r.opt_str("namespace").map_err(fail)?.unwrap_or(&obj.namespace);
                let Some(secret) = ctx.find("Secret", ns, name) else {
                    return Err(fail(r.err(format!(
                        "Secret {ns}/{name} is not in this file: llmgw run reads the client keys from a Secret \
                         document of the same YAML stream (or use llmgw's own consumers: with api_keys_env)"
                    ))));
                };
                for client in secret_keys(secret).map_err(|e| ctx.err(secret, e))? {
                    let key = secret_value(secret, &client).map_err(|e| ctx.err(secret, e))?.unwrap_or_default();
                    let key = key.trim().to_string();
                    if key.is_empty() || key.contains([',', '\n']) {
                        return Err(ctx.err(
                            secret,
                            FieldError {
                                field: format!("data.{client}"),
                                reason: "an API key is one non-empty value without commas or line breaks".into(),
                            },
                        ));
                    }
                    match keys.iter_mut().find(|(c, _)| *c == client) {
                        Some((_, k)) => k.push(key),
                        None => keys.push((client, vec![key])),
                    }
                }
            }
        }
        if let Some(j) = spec.get("jwt") {
            if let Some(field) = j.unknown_keys(&["providers"]).into_iter().next() {
                return Err(fail(FieldError {
                    field,
                    reason: "not supported by llmgw (a JWT is required, and must be valid)".into(),
                }));
            }
            for p in j.list("providers").map_err(fail)? {
                out.consumers.push(jwt_provider(&p).map_err(fail)?);
            }
        }
    }
    for (i, field, what) in notes {
        ctx.warn(i, &field, &what);
    }
    for (client, values) in keys {
        let var: String = format!("LLMGW_CLIENT_KEYS_{client}")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
            .collect();
        out.secrets.insert(var.clone(), SecretValue(values.join(",")));
        out.consumers.push(Consumer { name: client, keys: Some(KeySource::Env(var)), jwt: None });
    }
    // Names are checked as llmgw's own consumers are (charset, reserved, duplicates).
    Ok(out)
}

/// The keys of a Secret's `stringData` and `data`, sorted.
fn secret_keys(secret: &Obj<'_>) -> NResult<Vec<String>> {
    let root = secret.root();
    let mut out = Vec::new();
    for section in ["stringData", "data"] {
        if let Some(d) = root.get(section) {
            for (k, _) in d.entries()? {
                if !out.contains(&k) {
                    out.push(k);
                }
            }
        }
    }
    if out.is_empty() {
        return Err(root.err("the Secret holds no client key (stringData or data: client id → key)"));
    }
    out.sort();
    Ok(out)
}

fn jwt_provider(p: &At<'_>) -> NResult<Consumer> {
    let known = ["name", "issuer", "audiences", "remoteJWKS"];
    if let Some(field) = p.unknown_keys(&known).into_iter().next() {
        return Err(FieldError {
            field,
            reason: "not supported by llmgw (a provider has name, issuer, audiences, remoteJWKS.uri here; a local \
                     JWKS: llmgw's own consumers with jwks_file)"
                .into(),
        });
    }
    let remote = p.req("remoteJWKS")?;
    if let Some(field) = remote.unknown_keys(&["uri"]).into_iter().next() {
        return Err(FieldError {
            field,
            reason: "not supported by llmgw (Envoy fetches remoteJWKS.uri directly)".into(),
        });
    }
    let uri_at = remote.req("uri")?;
    let uri = uri_at.str()?.trim().to_string();
    let audiences = p.list("audiences")?.iter().map(|a| a.str().map(str::to_string)).collect::<NResult<_>>()?;
    Ok(Consumer {
        name: p.req_str("name")?.to_string(),
        keys: None,
        jwt: Some(Jwt {
            issuer: p.opt_str("issuer")?.unwrap_or_default().to_string(),
            jwks: Jwks::Uri(BaseUrl::parse(&uri).map_err(|e| uri_at.err(e))?, uri),
            subject: None,
            audiences,
        }),
    })
}

/// Every QuotaPolicy of the file as budgets.
pub(crate) fn quotas(ctx: &Ctx<'_>, security: &Security) -> Result<Vec<Budget>, ConfigError> {
    let backends: Vec<&str> =
        ctx.objs.iter().filter(|o| o.kind == "AIServiceBackend").map(|o| o.name.as_str()).collect();
    let mut out = Vec::new();
    for obj in ctx.objs.iter().filter(|o| o.kind == "QuotaPolicy") {
        quota_policy(obj, &backends, security, &mut out).map_err(|e| ctx.err(obj, e))?;
    }
    crate::budgets::name_unnamed(&mut out);
    Ok(out)
}

fn quota_policy(obj: &Obj<'_>, backends: &[&str], security: &Security, out: &mut Vec<Budget>) -> NResult<()> {
    let spec = obj.spec();
    if let Some(field) = spec.unknown_keys(&["targetRefs", "perModelQuotas", "serviceQuota"]).into_iter().next() {
        return Err(FieldError { field, reason: "not a QuotaPolicy field".into() });
    }
    if spec.get("serviceQuota").is_some() {
        return Err(refuse(
            &spec,
            "serviceQuota",
            "a quota shared by every client; llmgw budgets are per consumer \
             (a perModelQuotas bucketRule with a clientSelectors header on x-llmgw-consumer)",
        ));
    }
    // llmgw's budgets hold across backends: a policy must target every AIServiceBackend.
    let mut targeted = Vec::new();
    for t in spec.list("targetRefs")? {
        let kind = t.req_str("kind")?;
        if kind != "AIServiceBackend" {
            return Err(t.err(format!("kind {kind}: a QuotaPolicy targets AIServiceBackends")));
        }
        targeted.push(t.req_str("name")?);
    }
    if let Some(missing) = backends.iter().find(|b| !targeted.contains(b)) {
        return Err(spec.get("targetRefs").unwrap_or_else(|| spec.clone()).err(format!(
            "does not target AIServiceBackend {missing}: llmgw budgets hold across every backend, so a QuotaPolicy \
             must target all of them"
        )));
    }
    for m in spec.list("perModelQuotas")? {
        let model = m.req_str("modelName")?.to_string();
        let q = m.req("quota")?;
        if let Some(field) =
            q.unknown_keys(&["mode", "costExpression", "bucketRules", "defaultBucket"]).into_iter().next()
        {
            return Err(FieldError { field, reason: "not a QuotaPolicy quota field".into() });
        }
        if q.get("defaultBucket").is_some() {
            return Err(refuse(
                &q,
                "defaultBucket",
                "a quota shared by every client; llmgw budgets are per consumer \
                 (a bucketRule with a clientSelectors header on x-llmgw-consumer, Distinct = each consumer)",
            ));
        }
        if let Some(mode) = q.get("mode") {
            if mode.str()? != "Shared" {
                return Err(mode.err("the only mode is Shared"));
            }
        }
        let count = match q.get("costExpression") {
            None => Count::Total,
            Some(c) => cost(&c)?,
        };
        for r in q.list("bucketRules")? {
            if let Some(field) = r.unknown_keys(&["clientSelectors", "quota", "shadowMode"]).into_iter().next() {
                return Err(FieldError { field, reason: "not a bucketRule field".into() });
            }
            if let Some(s) = r.get("shadowMode") {
                if s.bool()? {
                    return Err(refuse(&r, "shadowMode", "llmgw enforces every budget it has"));
                }
            }
            let consumer = consumer_of(&r, security)?;
            let quota = r.req("quota")?;
            let (limit, per) = bucket(&quota)?;
            out.push(Budget {
                name: String::new(),
                consumer,
                model: Some(ModelMatch::Exact(model.clone())),
                limit: Limit::Tokens(limit),
                per,
                count,
            });
        }
    }
    Ok(())
}

/// The consumer a bucket rule selects: one header match on the consumer header.
fn consumer_of(rule: &At<'_>, security: &Security) -> NResult<String> {
    let how = "a bucketRule needs one clientSelectors entry with one header match on x-llmgw-consumer \
               (Exact: that consumer, Distinct: each consumer)";
    let selectors = rule.list("clientSelectors")?;
    let [selector] = selectors.as_slice() else {
        return Err(rule.err(format!("not supported by llmgw: {how}")));
    };
    if let Some(field) = selector.unknown_keys(&["headers"]).into_iter().next() {
        return Err(FieldError { field, reason: format!("not supported by llmgw: {how}") });
    }
    let headers = selector.list("headers")?;
    let [h] = headers.as_slice() else {
        return Err(selector.err(format!("not supported by llmgw: {how}")));
    };
    let name = h.req_str("name")?.to_ascii_lowercase();
    if !security.consumer_headers.contains(&name) {
        return Err(h.err(format!("header {name}: not supported by llmgw: {how}")));
    }
    if let Some(inv) = h.get("invert") {
        if inv.bool()? {
            return Err(refuse(h, "invert", "a budget names its consumer"));
        }
    }
    let kind = h.opt_str("type")?.unwrap_or("Exact");
    match kind {
        "Exact" => {
            let value = h.req_str("value")?.to_string();
            if !security.consumers.iter().any(|c| c.name == value) {
                return Err(h.err(format!("{value:?} is not a consumer of this file's SecurityPolicies")));
            }
            Ok(value)
        }
        "Distinct" => Ok(EACH_CONSUMER.to_string()),
        other => Err(h.err(format!("type {other}: not supported by llmgw: {how}"))),
    }
}

fn bucket(q: &At<'_>) -> NResult<(u64, Per)> {
    if let Some(field) = q.unknown_keys(&["duration", "limit"]).into_iter().next() {
        return Err(FieldError { field, reason: "a quota has duration and limit".into() });
    }
    let d = q.req("duration")?;
    let per = match d.str()? {
        "1s" => Per::Second,
        "1m" => Per::Minute,
        "1h" => Per::Hour,
        "1d" => Per::Day,
        other => return Err(d.err(format!("{other:?}: one of 1s, 1m, 1h, 1d"))),
    };
    let l = q.req("limit")?;
    match l.u64()? {
        0 => Err(l.err("must be at least 1")),
        n => Ok((n, per)),
    }
}

/// The cost expressions that are one of llmgw's token counts.
fn cost(at: &At<'_>) -> NResult<Count> {
    let text: String = at.str()?.chars().filter(|c| !c.is_whitespace()).collect();
    match text.as_str() {
        "total_tokens" | "input_tokens+output_tokens" | "output_tokens+input_tokens" => Ok(Count::Total),
        "input_tokens" => Ok(Count::Input),
        "output_tokens" => Ok(Count::Output),
        _ => Err(at.err(format!(
            "{:?}: not supported by llmgw: a budget counts total_tokens, input_tokens or output_tokens",
            at.str()?
        ))),
    }
}

/// A token count as a QuotaPolicy `costExpression` (none: the default, total_tokens).
pub fn cost_expression(count: Count) -> Option<&'static str> {
    match count {
        Count::Total => None,
        Count::Input => Some("input_tokens"),
        Count::Output => Some("output_tokens"),
    }
}
