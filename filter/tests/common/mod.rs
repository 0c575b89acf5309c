//! Helpers shared by the golden-fixture suites: reading and blessing expected files, a backend from
//! a plugin config, usage as JSON.

// Test helpers outside `#[test]` functions: the crate's no-panic lints do not apply here; each
// suite uses a different subset.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::fs;
use std::path::Path;

use llmgw_filter::config::{self, Backend, Env};
use llmgw_filter::usage::TokenUsage;
use serde_json::Value;

struct NoEnv;
impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

/// The first backend of a plugin configuration (YAML or JSON; the filter takes JSON, so YAML is
/// converted as `llmgw` does), compiled as the filter does.
pub fn backend(config_text: &str) -> Backend {
    let value: Value = serde_yaml_ng::from_str(config_text).unwrap();
    let compiled = config::parse(&serde_json::to_vec(&value).unwrap(), &NoEnv, 0).unwrap();
    compiled.backends.into_iter().next().unwrap()
}

/// `LLMGW_BLESS=1` (re)writes the expected files instead of comparing.
pub fn bless() -> bool {
    std::env::var_os("LLMGW_BLESS").is_some()
}

pub fn read_json(path: &Path) -> Value {
    let text = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Compares with the expected JSON file, or writes it when blessing.
pub fn check_json(got: &Value, expected: &Path) {
    if bless() {
        fs::write(expected, serde_json::to_string_pretty(got).unwrap() + "\n").unwrap();
        return;
    }
    assert_eq!(got, &read_json(expected), "{}", expected.display());
}

/// Compares with the expected text file, or writes it when blessing.
pub fn check_text(got: &str, expected: &Path) {
    if bless() {
        fs::write(expected, got).unwrap();
        return;
    }
    let want = fs::read_to_string(expected).unwrap_or_else(|e| panic!("{}: {e}", expected.display()));
    assert_eq!(got, want, "{}", expected.display());
}

pub fn usage_json(u: Option<TokenUsage>) -> Value {
    match u {
        None => Value::Null,
        Some(u) => serde_json::json!({"input": u.input, "output": u.output, "total": u.total,
            "cached_input": u.cached_input, "reasoning": u.reasoning}),
    }
}
