//! Reading what routing needs from a client's JSON body, strictly and without panics.

use serde::Deserialize;
use serde_json::Value;

use crate::config::is_header_value;
use crate::error::ApiError;

/// Longer model names are refused: real model ids are short, and the name travels in a header.
pub const MAX_MODEL_LEN: usize = 256;

/// What the gateway reads from a request body before routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    pub model: String,
    pub stream: bool,
    /// `stream_options.include_usage` was set to true by the client.
    pub client_wants_usage: bool,
    /// The body has a `stream_options` key at all.
    pub has_stream_options: bool,
}

#[derive(Deserialize)]
struct Fields {
    // Present-but-null and absent are told apart so the error says which.
    #[serde(default, deserialize_with = "some_value")]
    model: Option<Value>,
    #[serde(default, deserialize_with = "some_value")]
    stream: Option<Value>,
    #[serde(default, deserialize_with = "some_value")]
    stream_options: Option<Value>,
}

fn some_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Parses and validates the body. Duplicate keys among the fields read are refused, so the gateway
/// and the provider can never disagree on which `model` a request names.
pub fn read(body: &[u8]) -> Result<RequestInfo, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ApiError::bad_request(
            "invalid_request",
            if first.is_none() {
                "request body is empty; expected a JSON object"
            } else {
                "request body must be a JSON object"
            },
        ));
    }
    // serde_json skips unread strings without checking their UTF-8; JSON must be UTF-8 throughout.
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!("request body is not valid UTF-8 (at byte {})", e.valid_up_to()),
        )
    })?;
    let fields: Fields = serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request("invalid_request", format!("request body is not valid JSON: {e}")))?;
    let model = match fields.model {
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request("missing_model", "you must provide a model parameter"))
        }
        Some(Value::String(m)) => m,
        Some(_) => return Err(ApiError::bad_request("invalid_model", "`model` must be a string")),
    };
    if model.trim().is_empty() {
        return Err(ApiError::bad_request("invalid_model", "`model` must not be empty"));
    }
    if model.len() > MAX_MODEL_LEN {
        return Err(ApiError::bad_request(
            "invalid_model",
            format!("`model` is {} bytes long; the limit is {MAX_MODEL_LEN}", model.len()),
        ));
    }
    if !is_header_value(&model) {
        return Err(ApiError::bad_request("invalid_model", "`model` must not contain control characters"));
    }
    let stream = match fields.stream {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(ApiError::bad_request("invalid_request", "`stream` must be a boolean")),
    };
    let has_stream_options = fields.stream_options.is_some();
    let client_wants_usage =
        fields.stream_options.as_ref().and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);
    Ok(RequestInfo { model, stream, client_wants_usage, has_stream_options })
}

/// Adds a top-level field to a JSON object body that does not have it, without parsing the body
/// again: the field is spliced in right after the opening brace. `member` is `"key":value`.
pub fn prepend_member(body: &[u8], member: &str) -> Option<Vec<u8>> {
    let open = body.iter().position(|&b| b == b'{')?;
    let rest = body.get(open + 1..)?;
    let empty = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
    let mut out = Vec::with_capacity(body.len() + member.len() + 1);
    out.extend_from_slice(body.get(..=open)?);
    out.extend_from_slice(member.as_bytes());
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// Rewrites top-level fields of a JSON object body, keeping every other byte's meaning and the key order.
pub fn rewrite(body: &[u8], edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Result<Vec<u8>, ApiError> {
    let mut object: serde_json::Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_request", format!("request body is not valid JSON: {e}")))?;
    edit(&mut object);
    serde_json::to_vec(&object).map_err(|e| {
        ApiError::new(500, crate::error::ErrorKind::Server, "internal", format!("re-encoding the body failed: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(body: &[u8]) -> &'static str {
        read(body).unwrap_err().code
    }

    #[test]
    fn reads_model_and_stream() {
        let r = read(br#" {"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"x":[1,{"y":2}]}"#)
            .unwrap();
        assert_eq!(
            r,
            RequestInfo { model: "gpt-4o".into(), stream: true, client_wants_usage: true, has_stream_options: true }
        );
        let r = read(br#"{"messages":[],"model":"m","stream":null}"#).unwrap();
        assert!(!r.stream && !r.client_wants_usage);
    }

    #[test]
    fn refuses_bad_bodies() {
        assert_eq!(code(b""), "invalid_request");
        assert_eq!(code(b"[1,2]"), "invalid_request");
        assert_eq!(code(br#"["gpt",true]"#), "invalid_request");
        assert_eq!(code(b"{\"model\":\"a\""), "invalid_request");
        assert_eq!(code(b"{\"model\":\"\xff\"}"), "invalid_request");
        assert_eq!(code(b"{\"model\":\"m\",\"x\xff\":1}"), "invalid_request");
        assert_eq!(code(b"{\"model\":\"m\",\"messages\":[{\"content\":\"\xc3(\"}]}"), "invalid_request");
        assert_eq!(code(br#"{"messages":[]}"#), "missing_model");
        assert_eq!(code(br#"{"model":null}"#), "missing_model");
        assert_eq!(code(br#"{"model":5}"#), "invalid_model");
        assert_eq!(code(br#"{"model":"  "}"#), "invalid_model");
        assert_eq!(code(br#"{"model":"a\r\nx-evil: 1"}"#), "invalid_model");
        assert_eq!(code(format!(r#"{{"model":"{}"}}"#, "a".repeat(10_000)).as_bytes()), "invalid_model");
        assert_eq!(code(br#"{"model":"a","model":"b"}"#), "invalid_request");
        assert_eq!(code(br#"{"model":"a","stream":"yes"}"#), "invalid_request");
    }

    #[test]
    fn deep_nesting_never_overflows() {
        // Fields the gateway does not read are skipped without recursion; a rewrite refuses them.
        let deep = format!("{{\"model\":\"a\",\"x\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(read(deep.as_bytes()).unwrap().model, "a");
        assert_eq!(rewrite(deep.as_bytes(), |_| {}).unwrap_err().status, 400);
    }

    #[test]
    fn prepend_member_splices_without_reparsing() {
        let member = r#""stream_options":{"include_usage":true}"#;
        let out = prepend_member(br#" {"model":"m","stream":true}"#, member).unwrap();
        assert_eq!(out, br#" {"stream_options":{"include_usage":true},"model":"m","stream":true}"#);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(prepend_member(b"{ }", member).unwrap(), br#"{"stream_options":{"include_usage":true} }"#);
    }

    #[test]
    fn rewrite_keeps_key_order() {
        let out = rewrite(br#"{"z":1,"model":"a","messages":[{"role":"user"}]}"#, |o| {
            o.insert("model".into(), Value::String("b".into()));
        })
        .unwrap();
        assert_eq!(out, br#"{"z":1,"model":"b","messages":[{"role":"user"}]}"#);
    }
}
