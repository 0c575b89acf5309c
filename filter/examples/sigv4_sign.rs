//! Signs requests with the filter's SigV4 signer, for comparison with other signers (the botocore
//! test in host-tests/e2e/test_sigv4_botocore.py).
//!
//! Reads a JSON array of requests on stdin:
//! `[{"access_key_id", "secret_access_key", "session_token"?, "region", "service", "method",
//!    "authority", "path", "headers": [[name, value]...], "body", "time_unix"}]`
//! and prints a JSON array with, for each, the headers the filter adds (`{"authorization": ...}`).

use std::io::Read;
use std::time::{Duration, UNIX_EPOCH};

use llmgw_filter::auth::{sigv4, Outgoing};
use llmgw_filter::config::{AwsCredential, Secret};
use serde_json::{Map, Value};

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn main() -> Result<(), String> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).map_err(|e| e.to_string())?;
    let requests: Vec<Value> = serde_json::from_str(&input).map_err(|e| format!("stdin: {e}"))?;
    let mut out = Vec::new();
    for r in &requests {
        let credential = AwsCredential {
            access_key_id: text(r, "access_key_id").to_string(),
            secret_access_key: Secret::new(text(r, "secret_access_key").to_string()),
            session_token: r.get("session_token").and_then(Value::as_str).map(|t| Secret::new(t.to_string())),
        };
        let pairs: Vec<(&str, &str)> = r
            .get("headers")
            .and_then(Value::as_array)
            .map(|hs| hs.iter().filter_map(|h| Some((h.get(0)?.as_str()?, h.get(1)?.as_str()?))).collect())
            .unwrap_or_default();
        let outgoing = Outgoing {
            method: text(r, "method"),
            authority: text(r, "authority"),
            path: text(r, "path"),
            headers: &pairs,
            body: &[text(r, "body").as_bytes()],
            body_hashed: None,
            time: UNIX_EPOCH + Duration::from_secs(r.get("time_unix").and_then(Value::as_u64).unwrap_or(0)),
        };
        let signed = sigv4::sign(&credential, text(r, "region"), text(r, "service"), &outgoing)?;
        let map: Map<String, Value> = signed.into_iter().map(|(n, v)| (n, Value::String(v))).collect();
        out.push(Value::Object(map));
    }
    println!("{}", Value::Array(out));
    Ok(())
}
