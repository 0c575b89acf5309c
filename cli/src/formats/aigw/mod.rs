//! Envoy AI Gateway's own YAML, unchanged (what `aigw run` takes): a multi-document file of
//! Kubernetes objects. Field names and meaning follow the CRDs (AIGatewayRoute, AIServiceBackend,
//! BackendSecurityPolicy from aigateway.envoyproxy.io; Backend, ClientTrafficPolicy from
//! gateway.envoyproxy.io; Gateway, BackendTLSPolicy from the Gateway API).
//!
//! Kinds and fields llmgw does not implement are named in warnings, never dropped silently.

mod backend;
mod policy;
pub(crate) mod quota;
mod route;

use serde_yaml_ng::Value;

use super::node::{quantity_bytes, At, FieldError};
use crate::diag::{ConfigError, DocRef};
use crate::model::{Format, Gateway, Source};

/// Kinds converted (or, for GatewayClass, accepted as is).
const SUPPORTED: &[&str] = &[
    "GatewayClass",
    "Gateway",
    "AIGatewayRoute",
    "AIServiceBackend",
    "Backend",
    "BackendSecurityPolicy",
    "Secret",
    "ConfigMap",
    "BackendTLSPolicy",
    "ClientTrafficPolicy",
    "BackendTrafficPolicy",
    "SecurityPolicy",
    "QuotaPolicy",
];

/// One Kubernetes object of the file.
pub(crate) struct Obj<'a> {
    /// 1-based document number.
    pub index: usize,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub doc: &'a Value,
}

impl<'a> Obj<'a> {
    pub fn doc_ref(&self) -> DocRef {
        DocRef { index: self.index, object: Some(format!("{} {}/{}", self.kind, self.namespace, self.name)) }
    }

    pub fn root(&self) -> At<'a> {
        At::root(self.doc)
    }

    pub fn spec(&self) -> At<'a> {
        self.root().get("spec").unwrap_or_else(|| At { value: &Value::Null, path: "spec".into() })
    }

    pub fn label(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
}

pub(crate) struct Ctx<'a> {
    pub file: &'a str,
    pub objs: Vec<Obj<'a>>,
    pub warnings: Vec<String>,
}

impl<'a> Ctx<'a> {
    pub fn find(&self, kind: &str, namespace: &str, name: &str) -> Option<&Obj<'a>> {
        self.objs.iter().find(|o| o.kind == kind && o.namespace == namespace && o.name == name)
    }

    pub fn err(&self, obj: &Obj<'_>, e: FieldError) -> ConfigError {
        ConfigError::new(self.file, e.field, e.reason).in_doc(obj.doc_ref())
    }

    /// A warning about a field of object `i`.
    pub fn warn(&mut self, i: usize, field: &str, what: &str) {
        if let Some(obj) = self.objs.get(i) {
            let line = format!("{}: document {} ({}): {field}: {what}", self.file, obj.index, obj.label());
            self.warnings.push(line);
        }
    }
}

pub fn convert(file: &str, docs: &[Value]) -> Result<Gateway, ConfigError> {
    let mut ctx = Ctx { file, objs: index(file, docs)?, warnings: Vec::new() };
    let mut g = Gateway::new(Source::File { path: file.to_string(), format: Format::EnvoyAIGateway });

    let unsupported: Vec<String> = ctx
        .objs
        .iter()
        .filter(|o| !SUPPORTED.contains(&o.kind.as_str()))
        .map(|o| format!("{} (document {})", o.label(), o.index))
        .collect();
    if !unsupported.is_empty() {
        ctx.warnings.push(format!(
            "{file}: kinds llmgw run does not support were ignored: {} (supported: {})",
            unsupported.join(", "),
            SUPPORTED.join(", ")
        ));
    }

    g.port = listener_port(&mut ctx)?;
    g.buffer_limit = buffer_limit(&mut ctx)?;
    let security = quota::security(&mut ctx)?;
    let budgets = quota::quotas(&ctx, &security)?;
    check_consumers(file, &security.consumers)?;
    let policies = policy::convert(&mut ctx)?;
    let routed = route::convert(&mut ctx, &policies)?;
    for (pi, p) in policies.iter().enumerate() {
        if !routed.used_policies.contains(&pi) {
            ctx.warn(
                p.obj,
                "spec.targetRefs",
                "targets no AIGatewayRoute of this file (target the HTTPRoute named like the AIGatewayRoute, \
                 or the Gateway); its retry is ignored",
            );
        }
    }
    let (backends, upstreams, origins) = backend::convert(&mut ctx, &routed)?;

    let mut rules = Vec::with_capacity(routed.rules.len());
    for (i, rule) in routed.rules.into_iter().enumerate() {
        g.origins.push(crate::model::Origin {
            plugin_path: format!("rules[{i}]"),
            document: Some(rule.doc),
            field: rule.field,
        });
        if let Some(doc) = rule.retry_doc {
            g.origins.push(crate::model::Origin {
                plugin_path: format!("rules[{i}].retry"),
                document: Some(doc),
                field: "spec.retry".into(),
            });
        }
        rules.push(rule.json);
    }
    g.plugin.insert("backends".into(), serde_json::Value::Array(backends));
    g.plugin.insert("rules".into(), serde_json::Value::Array(rules));
    g.upstreams = upstreams;
    g.origins.extend(origins);
    g.consumers = security.consumers;
    g.secrets.extend(security.secrets);
    g.budgets = budgets;
    g.warnings = ctx.warnings;
    Ok(g)
}

/// The SecurityPolicies' consumers obey the rules of llmgw's own (`consumers::parse`).
fn check_consumers(file: &str, consumers: &[crate::consumers::Consumer]) -> Result<(), ConfigError> {
    for (i, c) in consumers.iter().enumerate() {
        let bad = |reason: String| Err(ConfigError::new(file, "SecurityPolicy", reason));
        if c.name.is_empty()
            || c.name.len() > 64
            || !c.name.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
        {
            return bad(format!("client id {:?}: a consumer name is 1-64 characters of A-Z a-z 0-9 - _ .", c.name));
        }
        if c.name == crate::consumers::PROBE_CONSUMER {
            return bad(format!("client id {:?} is reserved for llmgw's own health probes", c.name));
        }
        if consumers.iter().take(i).any(|o| o.name == c.name) {
            return bad(format!("{:?} is both an API key client id and a JWT provider name", c.name));
        }
    }
    Ok(())
}

/// Indexes every non-empty document by kind, namespace and name.
fn index<'a>(file: &str, docs: &'a [Value]) -> Result<Vec<Obj<'a>>, ConfigError> {
    let mut objs: Vec<Obj<'a>> = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let at = At::root(doc);
        let doc_ref = DocRef { index: i + 1, object: None };
        let fail = |e: FieldError| ConfigError::new(file, e.field, e.reason).in_doc(doc_ref.clone());
        if !doc.is_mapping() {
            return Err(fail(at.err("expected a Kubernetes object (a mapping with apiVersion, kind, metadata)")));
        }
        let kind = at.req_str("kind").map_err(fail)?.to_string();
        let meta = at.req("metadata").map_err(fail)?;
        let name = meta.req_str("name").map_err(fail)?.to_string();
        let namespace = meta.opt_str("namespace").map_err(fail)?.unwrap_or("default").to_string();
        if let Some(dup) = objs.iter().find(|o| o.kind == kind && o.namespace == namespace && o.name == name) {
            return Err(fail(FieldError {
                field: "metadata.name".into(),
                reason: format!("{kind} {namespace}/{name} is already defined in document {}", dup.index),
            }));
        }
        objs.push(Obj { index: i + 1, kind, namespace, name, doc });
    }
    Ok(objs)
}

/// The port of the Gateway's HTTP listener (llmgw runs one listener).
fn listener_port(ctx: &mut Ctx<'_>) -> Result<Option<u16>, ConfigError> {
    let gateways: Vec<usize> =
        ctx.objs.iter().enumerate().filter(|(_, o)| o.kind == "Gateway").map(|(i, _)| i).collect();
    let mut port = None;
    for (n, &i) in gateways.iter().enumerate() {
        let obj = &ctx.objs[i];
        let spec = obj.spec();
        let mut warnings = Vec::new();
        for l in spec.list("listeners").map_err(|e| ctx.err(obj, e))? {
            let protocol = l.opt_str("protocol").map_err(|e| ctx.err(obj, e))?.unwrap_or("HTTP");
            let p = l.req("port").and_then(|p| p.port()).map_err(|e| ctx.err(obj, e))?;
            if protocol != "HTTP" {
                warnings.push((
                    l.field().to_string(),
                    format!("protocol {protocol} is not supported (llmgw serves plain HTTP); listener ignored"),
                ));
            } else if port.is_none() && n == 0 {
                port = Some(p);
            } else {
                warnings.push((l.field().to_string(), format!("llmgw runs one listener; port {p} ignored")));
            }
        }
        for (field, what) in warnings {
            ctx.warn(i, &field, &what);
        }
    }
    Ok(port)
}

/// ClientTrafficPolicy `connection.bufferLimit` (the per-connection buffer: request bodies are
/// buffered whole, so it bounds their size).
fn buffer_limit(ctx: &mut Ctx<'_>) -> Result<Option<u64>, ConfigError> {
    let mut limit = None;
    let mut notes: Vec<(usize, String)> = Vec::new();
    for (i, obj) in ctx.objs.iter().enumerate().filter(|(_, o)| o.kind == "ClientTrafficPolicy") {
        let spec = obj.spec();
        for field in spec.unknown_keys(&["targetRefs", "targetRef", "targetSelectors", "connection"]) {
            notes.push((i, field));
        }
        if let Some(conn) = spec.get("connection") {
            for field in conn.unknown_keys(&["bufferLimit"]) {
                notes.push((i, field));
            }
            if let Some(b) = conn.get("bufferLimit") {
                let bytes = quantity_bytes(&b).map_err(|e| ctx.err(obj, e))?;
                limit = Some(limit.map_or(bytes, |l: u64| l.max(bytes)));
            }
        }
    }
    for (i, field) in notes {
        ctx.warn(i, &field, "not supported by llmgw; ignored");
    }
    Ok(limit)
}

/// Values of a Secret (`stringData`, or base64 `data`) or ConfigMap (`data`).
pub(crate) fn secret_value(obj: &Obj<'_>, key: &str) -> Result<Option<String>, FieldError> {
    let root = obj.root();
    if let Some(v) = root.get("stringData").and_then(|d| d.get(key)) {
        return v.str().map(|s| Some(s.to_string()));
    }
    let Some(v) = root.get("data").and_then(|d| d.get(key)) else { return Ok(None) };
    let text = v.str()?;
    if obj.kind == "ConfigMap" {
        return Ok(Some(text.to_string()));
    }
    let bytes = base64_decode(text)
        .ok_or_else(|| v.err("not valid base64 (Secret `data` values are base64; use `stringData` for plain text)"))?;
    String::from_utf8(bytes).map(Some).map_err(|_| v.err("the decoded value is not UTF-8 text"))
}

pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buf = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        if c == b'=' {
            break;
        }
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        buf = (buf << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(base64_decode("c2stdGVzdA==").unwrap(), b"sk-test");
        assert_eq!(base64_decode("YQ").unwrap(), b"a");
        assert!(base64_decode("!!").is_none());
    }
}
