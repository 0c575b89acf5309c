//! Configuration errors that say where: file, document, field, and why.

use std::fmt;

/// Which YAML document of a file, for multi-document configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocRef {
    /// 1-based.
    pub index: usize,
    /// `Kind/namespace/name` when known.
    pub object: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file, or the environment (`environment`) for auto-configuration.
    pub source: String,
    pub document: Option<DocRef>,
    /// Dotted field path inside the document; empty when the whole document is at fault.
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(source: impl Into<String>, field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError { source: source.into(), document: None, field: field.into(), reason: reason.into() }
    }

    pub fn in_doc(mut self, document: DocRef) -> Self {
        self.document = Some(document);
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some(doc) = &self.document {
            write!(f, ": document {}", doc.index)?;
            if let Some(object) = &doc.object {
                write!(f, " ({object})")?;
            }
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Joins a parent path and a child field the way the messages print them.
pub fn join(parent: &str, child: &str) -> String {
    match (parent.is_empty(), child.starts_with('[')) {
        (true, _) => child.to_string(),
        (false, true) => format!("{parent}{child}"),
        (false, false) => format!("{parent}.{child}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_every_part() {
        let e = ConfigError::new("gw.yaml", "spec.rules[0].backendRefs[0].name", "no AIServiceBackend \"x\"")
            .in_doc(DocRef { index: 3, object: Some("AIGatewayRoute/default/r".into()) });
        assert_eq!(
            e.to_string(),
            "gw.yaml: document 3 (AIGatewayRoute/default/r): spec.rules[0].backendRefs[0].name: no AIServiceBackend \"x\""
        );
        assert_eq!(ConfigError::new("environment", "", "nothing").to_string(), "environment: nothing");
        assert_eq!(join("a", "[0]"), "a[0]");
        assert_eq!(join("a", "b"), "a.b");
        assert_eq!(join("", "b"), "b");
    }
}
