//! AIServiceBackend + Backend + BackendTLSPolicy + BackendSecurityPolicy (+ Secret) → one plugin
//! backend and its upstream cluster, for each backend the routes reference.

use serde_json::{json, Map, Value as Json};

use super::route::{body_mutation, header_mutation, HeaderMutation, Routed, Variant};
use super::{secret_value, Ctx};
use crate::diag::ConfigError;
use crate::duration;
use crate::formats::node::{At, FieldError, NResult};
use crate::model::{Ca, Endpoint, Origin, Tls, Upstream};
use crate::url;

type Converted = (Vec<Json>, Vec<Upstream>, Vec<Origin>);

pub(crate) fn convert(ctx: &mut Ctx<'_>, routed: &Routed) -> Result<Converted, ConfigError> {
    let mut backends = Vec::new();
    let mut upstreams = Vec::new();
    let mut origins = Vec::new();
    let mut used_services = Vec::new();
    for (vi, v) in routed.variants.iter().enumerate() {
        let Some(si) = ctx
            .objs
            .iter()
            .position(|o| o.kind == "AIServiceBackend" && o.namespace == v.namespace && o.name == v.service)
        else {
            let referrer = &ctx.objs[v.referrer];
            return Err(ctx.err(
                referrer,
                FieldError {
                    field: format!("{}.name", v.field),
                    reason: format!("no AIServiceBackend {}/{} in this file", v.namespace, v.service),
                },
            ));
        };
        used_services.push(si);
        let (plugin, upstream) = service(ctx, si, v)?;
        origins.push(Origin {
            plugin_path: format!("backends[{vi}]"),
            document: Some(ctx.objs[si].doc_ref()),
            field: "spec".into(),
        });
        backends.push(Json::Object(plugin));
        upstreams.push(upstream);
    }
    let unused: Vec<usize> = ctx
        .objs
        .iter()
        .enumerate()
        .filter(|(i, o)| o.kind == "AIServiceBackend" && !used_services.contains(i))
        .map(|(i, _)| i)
        .collect();
    for i in unused {
        ctx.warn(i, "metadata.name", "not referenced by any AIGatewayRoute rule; ignored");
    }
    Ok((backends, upstreams, origins))
}

/// One plugin backend and its upstream from AIServiceBackend `si`, as variant `v` sees it.
fn service(ctx: &mut Ctx<'_>, si: usize, v: &Variant) -> Result<(Map<String, Json>, Upstream), ConfigError> {
    let obj = &ctx.objs[si];
    let spec = obj.spec();
    let fail = |e: FieldError| ctx.err(&ctx.objs[si], e);
    let notes: Vec<String> = spec.unknown_keys(&[
        "schema",
        "backendRef",
        "headerMutation",
        "bodyMutation",
        "timeouts",
        "backendSecurityPolicyRef",
    ]);
    let schema = spec.req("schema").map_err(fail)?;
    let schema_name = schema.req_str("name").map_err(fail)?.to_string();
    let version = schema.opt_str("version").map_err(fail)?.filter(|s| !s.is_empty());
    let prefix = schema.opt_str("prefix").map_err(fail)?.filter(|s| !s.is_empty());

    let mut plugin = Map::new();
    plugin.insert("name".into(), Json::String(v.name.clone()));
    plugin.insert("schema".into(), Json::String(schema_name.clone()));
    match (prefix, version, schema_name.as_str()) {
        (Some(p), _, _) => {
            plugin.insert("prefix".into(), Json::String(slash(p)));
        }
        // Older AI Gateway configs put the OpenAI path prefix in `version` (`v1/openai/v1`).
        (None, Some(ver), "OpenAI") => {
            plugin.insert("prefix".into(), Json::String(slash(ver)));
        }
        _ => {}
    }
    if let (Some(ver), "AzureOpenAI") = (version, schema_name.as_str()) {
        plugin.insert("api_version".into(), Json::String(ver.to_string()));
    }
    if let Some(m) = &v.model_override {
        plugin.insert("model_override".into(), Json::String(m.clone()));
    }
    let service_headers = spec.get("headerMutation").map(|h| header_mutation(&h)).transpose().map_err(fail)?;
    let headers = merge_headers(service_headers, v.headers.clone());
    let mut mutation = Map::new();
    if !headers.set.is_empty() {
        let set: Map<String, Json> = headers.set.into_iter().map(|(k, v)| (k, Json::String(v))).collect();
        mutation.insert("set".into(), Json::Object(set));
    }
    if !headers.remove.is_empty() {
        mutation.insert("remove".into(), json!(headers.remove));
    }
    if !mutation.is_empty() {
        plugin.insert("headers".into(), Json::Object(mutation));
    }
    if let Some(m) = spec.get("bodyMutation") {
        plugin.insert("body_mutation".into(), body_mutation(&m).map_err(fail)?);
    }
    let legacy_timeout = match spec.get("timeouts").and_then(|t| t.get("request")) {
        Some(t) => Some(duration::parse(t.str().map_err(fail)?).map_err(|e| fail(t.err(e)))?),
        None => None,
    };

    let backend_ref = spec.req("backendRef").map_err(fail)?;
    let kind = backend_ref.opt_str("kind").map_err(fail)?.unwrap_or("Backend");
    if kind != "Backend" {
        return Err(fail(backend_ref.req("kind").map_err(fail)?.err(format!(
            "kind {kind} needs Kubernetes; describe the server with an Envoy Gateway Backend (fqdn or ip endpoint)"
        ))));
    }
    let backend_name = backend_ref.req_str("name").map_err(fail)?.to_string();
    let backend_ns = backend_ref.opt_str("namespace").map_err(fail)?.unwrap_or(&obj.namespace).to_string();
    let Some(bi) =
        ctx.objs.iter().position(|o| o.kind == "Backend" && o.namespace == backend_ns && o.name == backend_name)
    else {
        return Err(fail(FieldError {
            field: "spec.backendRef.name".into(),
            reason: format!("no Backend {backend_ns}/{backend_name} in this file"),
        }));
    };
    let mut upstream = upstream(ctx, bi, &v.name)?;
    upstream.timeout = match (v.timeout, legacy_timeout) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };

    if let Some((auth, region)) = security(ctx, si)? {
        plugin.insert("auth".into(), auth);
        if let Some(r) = region {
            plugin.insert("region".into(), Json::String(r));
        }
    }
    if schema_name.starts_with("AWS") {
        if let Some(h) = &upstream.host_rewrite {
            plugin.insert("host".into(), Json::String(h.clone()));
        }
    }
    for field in notes {
        ctx.warn(si, &field, "not supported by llmgw; ignored");
    }
    Ok((plugin, upstream))
}

fn slash(p: &str) -> String {
    if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    }
}

/// Backend-level mutation, then the route reference's (which wins on the same header).
fn merge_headers(service: Option<HeaderMutation>, route: Option<HeaderMutation>) -> HeaderMutation {
    let mut out = service.unwrap_or_default();
    if let Some(r) = route {
        for (k, v) in r.set {
            out.set.retain(|(existing, _)| !existing.eq_ignore_ascii_case(&k));
            out.set.push((k, v));
        }
        for name in r.remove {
            if !out.remove.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
                out.remove.push(name);
            }
        }
    }
    out
}

/// The cluster for Backend `bi`: endpoints, TLS (BackendTLSPolicy or the Backend's own `tls`).
fn upstream(ctx: &mut Ctx<'_>, bi: usize, name: &str) -> Result<Upstream, ConfigError> {
    let obj = &ctx.objs[bi];
    let fail = |e: FieldError| ctx.err(&ctx.objs[bi], e);
    let spec = obj.spec();
    let mut notes = spec.unknown_keys(&["endpoints", "type", "tls", "appProtocols", "fallback"]);
    for key in ["appProtocols", "fallback"] {
        if let Some(f) = spec.get(key) {
            notes.push(f.field().to_string());
        }
    }
    if let Some(t) = spec.opt_str("type").map_err(fail)? {
        if t != "Endpoints" {
            return Err(fail(spec.req("type").map_err(fail)?.err(format!(
                "type {t} is not supported by llmgw run; list the server under `endpoints` (fqdn or ip)"
            ))));
        }
    }
    let list = spec.req("endpoints").and_then(|e| e.items()).map_err(fail)?;
    if list.is_empty() {
        return Err(fail(spec.req("endpoints").map_err(fail)?.err("at least one endpoint is required")));
    }
    let mut endpoints = Vec::with_capacity(list.len());
    let mut hostname = None;
    for e in &list {
        endpoints.push(endpoint(e).map_err(fail)?);
        if hostname.is_none() {
            hostname = e.opt_str("hostname").map_err(fail)?.map(str::to_string);
        }
    }
    let policy_tls = tls_policy(ctx, bi)?;
    let obj = &ctx.objs[bi];
    let spec = obj.spec();
    let own_tls = match spec.get("tls") {
        Some(t) => Some(backend_tls(ctx, bi, &t, &endpoints)?),
        None => None,
    };
    let tls = policy_tls.or(own_tls);
    let port_443_plain = tls.is_none() && endpoints.iter().any(|e| e.port == 443);
    let host_rewrite = match (endpoints.as_slice(), &tls) {
        ([one], Some(t)) => Some(url::authority(&t.sni, one.port, true)),
        ([one], None) => Some(url::authority(hostname.as_deref().unwrap_or(&one.host), one.port, false)),
        _ => None,
    };
    if port_443_plain {
        ctx.warn(
            bi,
            "spec.endpoints",
            "port 443 without a BackendTLSPolicy: connecting in plain HTTP, as Envoy Gateway would; add a \
             BackendTLSPolicy (validation.hostname, wellKnownCACertificates: System) for HTTPS",
        );
    }
    for field in notes {
        ctx.warn(bi, &field, "not supported by llmgw; ignored");
    }
    Ok(Upstream { name: name.to_string(), endpoints, tls, host_rewrite, timeout: None, lb_policy: None })
}

fn endpoint(e: &At<'_>) -> NResult<Endpoint> {
    if let Some(f) = e.get("fqdn") {
        return Ok(Endpoint { host: f.req_str("hostname")?.to_ascii_lowercase(), port: f.req("port")?.port()? });
    }
    if let Some(ip) = e.get("ip") {
        let address = ip.req_str("address")?;
        if !url::is_ip(address) {
            return Err(ip.req("address")?.err(format!("{address:?} is not an IP address (use fqdn for names)")));
        }
        return Ok(Endpoint { host: address.to_string(), port: ip.req("port")?.port()? });
    }
    if let Some(u) = e.get("unix") {
        return Err(u.err("unix socket endpoints are not supported by llmgw run; use fqdn or ip"));
    }
    Err(e.err("an endpoint needs fqdn {hostname, port} or ip {address, port}"))
}

/// A BackendTLSPolicy targeting Backend `bi`.
fn tls_policy(ctx: &mut Ctx<'_>, bi: usize) -> Result<Option<Tls>, ConfigError> {
    let (ns, name) = (ctx.objs[bi].namespace.clone(), ctx.objs[bi].name.clone());
    let mut found = None;
    for (pi, p) in ctx.objs.iter().enumerate().filter(|(_, o)| o.kind == "BackendTLSPolicy" && o.namespace == ns) {
        let spec = p.spec();
        let fail = |e: FieldError| ctx.err(p, e);
        let mut refs = spec.list("targetRefs").map_err(fail)?;
        if let Some(single) = spec.get("targetRef") {
            refs.push(single);
        }
        let mut targets = false;
        for r in &refs {
            let kind = r.opt_str("kind").map_err(fail)?.unwrap_or("");
            if kind == "Backend" && r.req_str("name").map_err(fail)? == name {
                targets = true;
            }
        }
        if targets {
            found = Some(pi);
            break;
        }
    }
    let Some(pi) = found else { return Ok(None) };
    let p = &ctx.objs[pi];
    let fail = |e: FieldError| ctx.err(&ctx.objs[pi], e);
    let validation = p.spec().req("validation").map_err(fail)?;
    let mut notes =
        validation.unknown_keys(&["hostname", "wellKnownCACertificates", "caCertificateRefs", "subjectAltNames"]);
    let sni = validation.req_str("hostname").map_err(fail)?.to_string();
    let ca = ca_refs(ctx, pi, &validation)?;
    let mut sans = Vec::new();
    for s in validation.list("subjectAltNames").map_err(fail)? {
        match s.opt_str("hostname").map_err(fail)? {
            Some(h) => sans.push(h.to_string()),
            None => notes.push(s.field().to_string()),
        }
    }
    for field in notes {
        ctx.warn(pi, &field, "not supported by llmgw; ignored");
    }
    Ok(Some(Tls { sni, ca, sans, insecure_skip_verify: false }))
}

/// Envoy Gateway's Backend `spec.tls`.
fn backend_tls(ctx: &mut Ctx<'_>, bi: usize, t: &At<'_>, endpoints: &[Endpoint]) -> Result<Tls, ConfigError> {
    let fail = |e: FieldError| ctx.err(&ctx.objs[bi], e);
    let notes = t.unknown_keys(&["sni", "insecureSkipVerify", "wellKnownCACertificates", "caCertificateRefs"]);
    let sni = match t.opt_str("sni").map_err(fail)? {
        Some(s) => s.to_string(),
        None => endpoints.first().map(|e| e.host.clone()).unwrap_or_default(),
    };
    let insecure = t.get("insecureSkipVerify").map(|v| v.bool()).transpose().map_err(fail)?.unwrap_or(false);
    let ca = ca_refs(ctx, bi, t)?;
    for field in notes {
        ctx.warn(bi, &field, "not supported by llmgw; ignored");
    }
    Ok(Tls { sni, ca, sans: Vec::new(), insecure_skip_verify: insecure })
}

/// `caCertificateRefs` (ConfigMap or Secret with `ca.crt`, in this file) or the system CAs.
fn ca_refs(ctx: &Ctx<'_>, oi: usize, at: &At<'_>) -> Result<Ca, ConfigError> {
    let obj = &ctx.objs[oi];
    let fail = |e: FieldError| ctx.err(obj, e);
    let mut pem = String::new();
    for r in at.list("caCertificateRefs").map_err(fail)? {
        let kind = r.opt_str("kind").map_err(fail)?.unwrap_or("ConfigMap");
        let name = r.req_str("name").map_err(fail)?;
        let Some(holder) = ctx.find(kind, &obj.namespace, name) else {
            return Err(fail(r.err(format!("no {kind} {}/{name} in this file", obj.namespace))));
        };
        match secret_value(holder, "ca.crt").map_err(|e| ctx.err(holder, e))? {
            Some(v) => pem.push_str(&v),
            None => return Err(fail(r.err(format!("{kind} {}/{name} has no `ca.crt`", obj.namespace)))),
        }
    }
    Ok(if pem.is_empty() { Ca::System } else { Ca::Pem(pem) })
}

/// The credential of AIServiceBackend `si`: plugin `auth` and, for AWS, the region.
fn security(ctx: &mut Ctx<'_>, si: usize) -> Result<Option<(Json, Option<String>)>, ConfigError> {
    let (ns, name) = (ctx.objs[si].namespace.clone(), ctx.objs[si].name.clone());
    let mut policies = Vec::new();
    for (pi, p) in ctx.objs.iter().enumerate().filter(|(_, o)| o.kind == "BackendSecurityPolicy" && o.namespace == ns) {
        let fail = |e: FieldError| ctx.err(p, e);
        for r in p.spec().list("targetRefs").map_err(fail)? {
            if r.opt_str("kind").map_err(fail)? == Some("AIServiceBackend") && r.req_str("name").map_err(fail)? == name
            {
                policies.push(pi);
            }
        }
    }
    let service = &ctx.objs[si];
    if let Some(r) = service.spec().get("backendSecurityPolicyRef") {
        let fail = |e: FieldError| ctx.err(service, e);
        let pname = r.req_str("name").map_err(fail)?;
        match ctx.objs.iter().position(|o| o.kind == "BackendSecurityPolicy" && o.namespace == ns && o.name == pname) {
            Some(pi) if !policies.contains(&pi) => policies.push(pi),
            Some(_) => {}
            None => return Err(fail(r.err(format!("no BackendSecurityPolicy {ns}/{pname} in this file")))),
        }
    }
    match policies.as_slice() {
        [] => Ok(None),
        [pi] => policy(ctx, *pi),
        many => {
            let names: Vec<String> = many.iter().map(|i| ctx.objs[*i].name.clone()).collect();
            Err(ctx.err(
                &ctx.objs[si],
                FieldError {
                    field: "metadata.name".into(),
                    reason: format!("several BackendSecurityPolicies target it ({}); attach one", names.join(", ")),
                },
            ))
        }
    }
}

fn policy(ctx: &mut Ctx<'_>, pi: usize) -> Result<Option<(Json, Option<String>)>, ConfigError> {
    let p = &ctx.objs[pi];
    let fail = |e: FieldError| ctx.err(&ctx.objs[pi], e);
    let spec = p.spec();
    let kind = spec.req_str("type").map_err(fail)?;
    let (field, auth_key) = match kind {
        "APIKey" => ("apiKey", "bearer"),
        "AzureAPIKey" => ("azureAPIKey", "api_key"),
        "AnthropicAPIKey" => ("anthropicAPIKey", "x_api_key"),
        "AWSCredentials" => return aws(ctx, pi),
        "AzureCredentials" | "GCPCredentials" => {
            return Err(fail(spec.req("type").map_err(fail)?.err(format!(
                "{kind} needs an OAuth token exchange, which llmgw run does not do; use an API key \
                 (AzureAPIKey for Azure OpenAI, APIKey with an access token otherwise)"
            ))))
        }
        other => {
            return Err(fail(spec.req("type").map_err(fail)?.err(format!(
                "unknown type {other:?}; supported: APIKey, AzureAPIKey, AnthropicAPIKey, AWSCredentials"
            ))))
        }
    };
    let section = spec.req(field).map_err(fail)?;
    let secret_ref = section.req("secretRef").map_err(fail)?;
    let notes: Vec<String> = spec.get("credentialOverride").map(|c| c.field().to_string()).into_iter().collect();
    let key = secret(ctx, pi, &secret_ref, "apiKey")?;
    for f in notes {
        ctx.warn(pi, &f, "not supported by llmgw; ignored");
    }
    Ok(key.map(|key| (json!({auth_key: key}), None)))
}

fn aws(ctx: &mut Ctx<'_>, pi: usize) -> Result<Option<(Json, Option<String>)>, ConfigError> {
    let p = &ctx.objs[pi];
    let fail = |e: FieldError| ctx.err(&ctx.objs[pi], e);
    let creds = p.spec().req("awsCredentials").map_err(fail)?;
    let region = creds.req_str("region").map_err(fail)?.to_string();
    if let Some(o) = creds.get("oidcExchangeToken") {
        return Err(fail(
            o.err("OIDC token exchange is not supported by llmgw run; use credentialsFile or AWS_* variables"),
        ));
    }
    let Some(file) = creds.get("credentialsFile") else {
        // The AWS default chain's first step: the environment. The filter reads AWS_ACCESS_KEY_ID,
        // AWS_SECRET_ACCESS_KEY and (when set) AWS_SESSION_TOKEN by default.
        return Ok(Some((json!({"aws": {}}), Some(region))));
    };
    let profile = file.opt_str("profile").map_err(fail)?.unwrap_or("default").to_string();
    let secret_ref = file.req("secretRef").map_err(fail)?;
    let Some(text) = secret(ctx, pi, &secret_ref, "credentials")? else {
        return Err(ctx.err(&ctx.objs[pi], secret_ref.err("the AWS credentials file is empty")));
    };
    let values = ini_section(&text, &profile);
    let get = |k: &str| values.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let (Some(id), Some(secret_key)) = (get("aws_access_key_id"), get("aws_secret_access_key")) else {
        return Err(ctx.err(
            &ctx.objs[pi],
            file.err(format!(
                "the credentials file has no aws_access_key_id and aws_secret_access_key in profile [{profile}]"
            )),
        ));
    };
    let mut aws = json!({"access_key_id": id, "secret_access_key": secret_key});
    if let Some(t) = get("aws_session_token") {
        aws["session_token"] = Json::String(t);
    }
    Ok(Some((json!({"aws": aws}), Some(region))))
}

/// The value under `key` of the Secret a `secretRef` names; `None` (with a warning) when it is
/// empty, as it is when the file says `${OPENAI_API_KEY}` and the variable is not set (`aigw run`
/// then sends an empty key too).
fn secret(ctx: &mut Ctx<'_>, oi: usize, secret_ref: &At<'_>, key: &str) -> Result<Option<String>, ConfigError> {
    let obj = &ctx.objs[oi];
    let fail = |e: FieldError| ctx.err(obj, e);
    let name = secret_ref.req_str("name").map_err(fail)?;
    let ns = secret_ref.opt_str("namespace").map_err(fail)?.unwrap_or(&obj.namespace);
    let Some(si) = ctx.objs.iter().position(|o| o.kind == "Secret" && o.namespace == ns && o.name == name) else {
        return Err(fail(secret_ref.err(format!("no Secret {ns}/{name} in this file"))));
    };
    let s = &ctx.objs[si];
    let plain = s.root().value.get("stringData").and_then(|d| d.get(key));
    if plain.is_some_and(|v| v.is_null() || v.as_str().is_some_and(|t| t.trim().is_empty())) {
        let what = format!("the value is empty: {} sends no credential", obj.label());
        ctx.warn(si, &format!("stringData.{key}"), &what);
        return Ok(None);
    }
    match secret_value(s, key).map_err(|e| ctx.err(s, e))? {
        Some(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_string())),
        Some(_) => Err(ctx.err(s, FieldError { field: format!("data.{key}"), reason: "the value is empty".into() })),
        None => Err(ctx.err(
            s,
            FieldError {
                field: "stringData".into(),
                reason: format!("has no key {key:?} (expected by {})", obj.label()),
            },
        )),
    }
}

/// `key = value` pairs of one `[section]` of an AWS credentials (INI) file.
pub(crate) fn ini_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().trim_start_matches("profile ").to_string();
        } else if current == section {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini() {
        let t =
            "[default]\naws_access_key_id = A\naws_secret_access_key=B\n# c\n[profile other]\naws_access_key_id = C\n";
        assert_eq!(
            ini_section(t, "default"),
            vec![("aws_access_key_id".into(), "A".into()), ("aws_secret_access_key".into(), "B".into())]
        );
        assert_eq!(ini_section(t, "other"), vec![("aws_access_key_id".into(), "C".into())]);
    }

    #[test]
    fn route_headers_win() {
        let s =
            HeaderMutation { set: vec![("A".into(), "1".into()), ("B".into(), "1".into())], remove: vec!["x".into()] };
        let r = HeaderMutation { set: vec![("a".into(), "2".into())], remove: vec!["X".into(), "y".into()] };
        let m = merge_headers(Some(s), Some(r));
        assert_eq!(m.set, vec![("B".into(), "1".into()), ("a".into(), "2".into())]);
        assert_eq!(m.remove, vec!["x".to_string(), "y".to_string()]);
    }

    #[test]
    fn body_mutation_values_are_json_text() {
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(
            "set: [{path: service_tier, value: '\"flex\"'}, {path: n, value: '[1, 2]'}]\nremove: [user]",
        )
        .unwrap();
        let m = body_mutation(&At::root(&doc)).unwrap();
        assert_eq!(m, json!({"set": {"service_tier": "flex", "n": [1, 2]}, "remove": ["user"]}));
        for (bad, field, reason) in [
            ("set: [{path: a, value: flex}]", "set[0].value", "must be JSON text"),
            ("set: [{path: a, value: '1'}, {path: a, value: '2'}]", "set[1].path", "set twice"),
            ("add: []", "add", "unknown field"),
        ] {
            let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(bad).unwrap();
            let e = body_mutation(&At::root(&doc)).unwrap_err();
            assert!(e.field.ends_with(field) && e.reason.contains(reason), "{bad}: {} {}", e.field, e.reason);
        }
    }
}
