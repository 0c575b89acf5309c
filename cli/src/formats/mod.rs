//! Config files: read, parse every YAML document with `${VAR}` substituted into its strings,
//! detect the format, convert, and move literal credentials out of the plugin configuration.

pub mod aibrix;
pub mod aigw;
pub mod node;
pub mod own;

use std::path::Path;

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::diag::{ConfigError, DocRef};
use crate::envsubst;
use crate::model::{Env, Format, Gateway};

pub fn load(path: &Path, env: &dyn Env, forced: Option<Format>) -> Result<Gateway, ConfigError> {
    let name = path.display().to_string();
    let raw =
        std::fs::read_to_string(path).map_err(|e| ConfigError::new(&name, "", format!("cannot read the file: {e}")))?;
    load_text(&name, &raw, env, forced)
}

pub fn load_text(name: &str, raw: &str, env: &dyn Env, forced: Option<Format>) -> Result<Gateway, ConfigError> {
    let prepared =
        envsubst::prepare(raw, env).map_err(|e| ConfigError::new(name, format!("line {}", e.line), e.reason))?;
    let docs: Vec<Value> = parse_documents(name, &prepared.text)?.into_iter().map(|d| prepared.apply(d)).collect();
    let format = forced.unwrap_or_else(|| detect(&docs));
    let mut g = match format {
        Format::EnvoyAIGateway => aigw::convert(name, &docs),
        Format::Llmgw => own::convert(name, single(name, &docs, &format)?),
        Format::AIBrix => aibrix::convert(name, single(name, &docs, &format)?, env),
    }?;
    let unset = prepared.warnings.iter().map(|(line, w)| format!("{name}: line {line}: {w}"));
    g.warnings.splice(0..0, unset);
    crate::budgets::add_to_plugin(&mut g.plugin, &g.budgets, g.budget_store.as_ref());
    crate::budgets::add_cache_consumer(&mut g.plugin, &g.consumers);
    g.externalize_secrets();
    Ok(g)
}

/// Every YAML document of the text, empty ones as `Null` so numbering matches the file.
pub fn parse_documents(name: &str, text: &str) -> Result<Vec<Value>, ConfigError> {
    let mut docs = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(de).map_err(|e| {
            ConfigError::new(name, "", format!("not valid YAML: {e}")).in_doc(DocRef { index: i + 1, object: None })
        })?;
        docs.push(value);
    }
    Ok(docs)
}

/// Kubernetes-style objects (`kind`, `apiVersion`) are Envoy AI Gateway's format; a top-level
/// `models` list without `backends` is AIBrix's endpoints file; anything else is llmgw's own.
pub fn detect(docs: &[Value]) -> Format {
    let is_k8s = |d: &Value| d.get("kind").is_some() || d.get("apiVersion").is_some();
    if docs.iter().any(is_k8s) {
        return Format::EnvoyAIGateway;
    }
    let first = docs.iter().find(|d| !d.is_null());
    match first {
        Some(d) if d.get("models").is_some_and(Value::is_sequence) && d.get("backends").is_none() => Format::AIBrix,
        _ => Format::Llmgw,
    }
}

fn single<'a>(name: &str, docs: &'a [Value], format: &Format) -> Result<&'a Value, ConfigError> {
    let present: Vec<(usize, &Value)> = docs.iter().enumerate().filter(|(_, d)| !d.is_null()).collect();
    match present.as_slice() {
        [] => Err(ConfigError::new(name, "", "the file is empty")),
        [(_, d)] => Ok(d),
        [_, (i, _), ..] => {
            Err(ConfigError::new(name, "", format!("an {} is one YAML document; found another one", format.label()))
                .in_doc(DocRef { index: i + 1, object: None }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MapEnv;

    fn docs(s: &str) -> Vec<Value> {
        parse_documents("t.yaml", s).unwrap()
    }

    #[test]
    fn detects_formats() {
        assert_eq!(detect(&docs("backends: []\n")), Format::Llmgw);
        assert_eq!(detect(&docs("models:\n- name: m\n  endpoints: [\"127.0.0.1:8000\"]\n")), Format::AIBrix);
        assert_eq!(detect(&docs("backends: []\nmodels: [a]\n")), Format::Llmgw);
        assert_eq!(detect(&docs("---\napiVersion: v1\nkind: Secret\n---\n")), Format::EnvoyAIGateway);
    }

    #[test]
    fn yaml_and_envsubst_errors_say_where() {
        let env = MapEnv::default();
        let e = load_text("t.yaml", "a: 1\n---\nb: [\n", &env, None).unwrap_err();
        assert!(e.to_string().starts_with("t.yaml: document 2: not valid YAML"), "{e}");
        let e = load_text("t.yaml", "backends:\n- name: ${NOPE:?name the backend}\n", &env, None).unwrap_err();
        assert_eq!(e.to_string(), "t.yaml: line 2: environment variable NOPE: name the backend");
        let e = load_text("t.yaml", "", &env, None).unwrap_err();
        assert_eq!(e.to_string(), "t.yaml: the file is empty");
        let e = load_text("t.yaml", "backends: []\n---\nrules: []\n", &env, None).unwrap_err();
        assert!(e.to_string().contains("document 2"), "{e}");
    }

    #[test]
    fn unset_variables_are_warnings_naming_file_line_and_variable() {
        let text = "backends:\n- name: a\n  url: http://127.0.0.1:${PORT:-8000}/v1\n  schema: OpenAI\n  headers: {set: {x-org: \"${ORG}\"}}\n";
        let g = load_text("t.yaml", text, &MapEnv::default(), None).unwrap();
        assert_eq!(g.warnings.len(), 1, "{:?}", g.warnings);
        assert!(g.warnings[0].starts_with("t.yaml: line 5: environment variable ORG is not set"), "{:?}", g.warnings);
        assert_eq!(g.upstreams[0].endpoints[0].port, 8000);
    }
}
