//! Checks a converted gateway exactly as the filter will (`llmgw_filter::config::parse`), and maps
//! the filter's field paths back to the user's file.

use crate::diag::ConfigError;
use crate::model::{Env, Gateway};

/// The plugin configuration text handed to Envoy: JSON (the filter takes JSON only), indented so
/// that `render`'s output stays readable, keys in the converters' order. Validation parses this
/// very text. It names credentials by variable only (see `Gateway::externalize_secrets`).
pub fn plugin_text(g: &Gateway) -> String {
    plugin_json(&g.plugin)
}

/// A plugin configuration as [`plugin_text`] writes it.
pub fn plugin_json(plugin: &serde_json::Map<String, serde_json::Value>) -> String {
    let v = serde_json::Value::Object(plugin.clone());
    serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
}

/// Checks the plugin configuration with the filter's own parser, reading `*_env` variables from
/// `env` with the gateway's moved credentials on top (as Envoy's VM will see them).
pub fn validate(g: &Gateway, env: &dyn Env) -> Result<(), ConfigError> {
    // Gated until the filter enforces budgets: it refuses unknown fields, and a gateway whose
    // budgets were not enforced must not start.
    if g.plugin.contains_key("budgets") && !filter_knows_budgets() {
        return Err(ConfigError::new(
            g.source.name(),
            "budgets",
            "the filter this llmgw was built with does not enforce budgets yet (plugin config `budgets`); \
             count them in Redis with `budget_store: {redis: ...}` instead, or remove `budgets:`",
        ));
    }
    let text = plugin_text(g);
    if let Err(e) = llmgw_filter::config::parse(text.as_bytes(), &g.env(env), 0) {
        let (document, field) = g.locate(&e.field);
        return Err(ConfigError { source: g.source.name(), document, field, reason: e.reason });
    }
    // Every backend needs its cluster; the converters build them together, so this is a bug guard.
    let names: Vec<&str> = g.plugin_backends().filter_map(|b| b.get("name").and_then(|n| n.as_str())).collect();
    let clusters: Vec<&str> = g.upstreams.iter().map(|u| u.name.as_str()).collect();
    if names != clusters {
        return Err(ConfigError::new(
            g.source.name(),
            "backends",
            format!("internal error: backends {names:?} but clusters {clusters:?}"),
        ));
    }
    Ok(())
}

/// True when the filter build this CLI was compiled with accepts the plugin config's `budgets`
/// (the filter refuses unknown fields, so its parser says whether it knows the field).
pub fn filter_knows_budgets() -> bool {
    let probe = br#"{"budgets": [], "consumer_header": "x-llmgw-consumer", "backends": []}"#;
    match llmgw_filter::config::parse(probe, &crate::model::AnyEnv, 0) {
        Ok(_) => true,
        Err(e) => !e.reason.contains("unknown field"),
    }
}

/// True when the filter build this CLI was compiled with knows `schema` (tests use it to skip
/// cases for schemas still being added to the filter).
pub fn filter_knows_schema(schema: &str) -> bool {
    llmgw_filter::config::Schema::SUPPORTED.contains(&schema)
}
