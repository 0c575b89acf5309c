//! Reading what routing needs from a client's JSON body, strictly and without panics.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::is_header_value;
use crate::error::ApiError;
use crate::multipart;

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

impl RequestInfo {
    /// Three flag bytes, then the model (handed from the downstream copy to the upstream one).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(3 + self.model.len());
        out.extend([self.stream, self.client_wants_usage, self.has_stream_options].map(u8::from));
        out.extend_from_slice(self.model.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let flag = |i: usize| match bytes.get(i) {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        };
        let model = std::str::from_utf8(bytes.get(3..)?).ok()?;
        if model.is_empty() || model.len() > MAX_MODEL_LEN || !is_header_value(model) {
            return None;
        }
        Some(RequestInfo {
            model: model.to_string(),
            stream: flag(0)?,
            client_wants_usage: flag(1)?,
            has_stream_options: flag(2)?,
        })
    }
}

#[derive(Deserialize)]
struct Fields<'a> {
    // Raw: a hostile value (a huge array for `stream_options`) is never built; present-but-null
    // and absent are told apart so the body is never given a second member of the same name.
    #[serde(default, borrow, deserialize_with = "some_raw")]
    model: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "some_raw")]
    stream: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "some_raw")]
    stream_options: Option<&'a RawValue>,
}

fn some_raw<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct StreamOptions<'a> {
    #[serde(default, borrow)]
    include_usage: Option<&'a RawValue>,
}

/// Parses and validates the body. Duplicate keys among the fields read are refused, so the gateway
/// and the provider can never disagree on which `model` a request names. Nothing but the model
/// name is copied: other members are validated and skipped.
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
    let fields: Fields = crate::json::from_text(text)
        .map_err(|e| ApiError::bad_request("invalid_request", format!("request body is not valid JSON: {e}")))?;
    let model = match fields.model.map(RawValue::get) {
        None | Some("null") => return Err(missing_model()),
        Some(raw) if raw.starts_with('"') => crate::json::from_text::<String>(raw)
            .map_err(|_| ApiError::bad_request("invalid_model", "`model` must be a string"))?,
        Some(_) => return Err(ApiError::bad_request("invalid_model", "`model` must be a string")),
    };
    let model = checked_model(model)?;
    let stream = match fields.stream.map(RawValue::get) {
        None | Some("null") | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::bad_request("invalid_request", "`stream` must be a boolean")),
    };
    let has_stream_options = fields.stream_options.is_some();
    let client_wants_usage = fields
        .stream_options
        .filter(|raw| raw.get().starts_with('{'))
        .and_then(|raw| crate::json::from_text::<StreamOptions>(raw.get()).ok())
        .and_then(|o| o.include_usage)
        .is_some_and(|v| v.get() == "true");
    Ok(RequestInfo { model, stream, client_wants_usage, has_stream_options })
}

fn missing_model() -> ApiError {
    ApiError::bad_request("missing_model", "you must provide a model parameter")
}

/// A model name as the gateway accepts it, wherever it was read: it travels in a header.
pub fn checked_model(model: String) -> Result<String, ApiError> {
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
    Ok(model)
}

/// Reads the body of an endpoint that takes uploads: a `multipart/form-data` body by its `model`
/// part (the body itself is never edited), any other by its JSON.
pub fn read_upload(body: &[u8], content_type: Option<&str>) -> Result<RequestInfo, ApiError> {
    let malformed = |why: &str| {
        ApiError::bad_request("invalid_request", format!("request body is not valid multipart/form-data: {why}"))
    };
    let boundary = match content_type.map(multipart::boundary) {
        None | Some(Ok(None)) => return read(body),
        Some(Err(multipart::Malformed(why))) => return Err(malformed(why)),
        Some(Ok(Some(boundary))) => boundary,
    };
    let part = multipart::field(body, &boundary, "model").map_err(|multipart::Malformed(why)| malformed(why))?;
    let part = part.ok_or_else(missing_model)?;
    if part.len() > MAX_MODEL_LEN {
        return Err(ApiError::bad_request(
            "invalid_model",
            format!("`model` is {} bytes long; the limit is {MAX_MODEL_LEN}", part.len()),
        ));
    }
    let model = std::str::from_utf8(part)
        .map_err(|_| ApiError::bad_request("invalid_model", "`model` must be UTF-8 text"))?
        .to_string();
    let model = checked_model(model)?;
    Ok(RequestInfo { model, stream: false, client_wants_usage: false, has_stream_options: false })
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
        let r = read(br#"{"model":"m","stream_options":null}"#).unwrap();
        assert!(r.has_stream_options && !r.client_wants_usage);
        let r =
            read(br#"{"model":"m\u0041","stream":false,"stream_options":{"include_usage":false,"x":[1]}}"#).unwrap();
        assert_eq!((r.model.as_str(), r.stream, r.client_wants_usage), ("mA", false, false));
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
        // Fields the gateway does not read are skipped without recursion.
        let deep = format!("{{\"model\":\"a\",\"x\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(read(deep.as_bytes()).unwrap().model, "a");
        let deep = format!("{{\"model\":\"a\",\"stream_options\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(!read(deep.as_bytes()).unwrap().client_wants_usage);
    }

    #[test]
    fn info_round_trips_and_garbage_is_not_info() {
        let info = read(br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}}"#).unwrap();
        assert_eq!(RequestInfo::decode(&info.encode()), Some(info));
        for bad in [&b""[..], b"\x01\x00", b"\x02\x00\x00m", b"\x00\x00\x00", b"\x00\x00\x00a\nb"] {
            assert_eq!(RequestInfo::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn uploads_are_read_by_their_model_part_or_as_json() {
        let ct = "multipart/form-data; boundary=b0";
        let body = b"--b0\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF\r\n\
--b0\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--b0--\r\n";
        assert_eq!(read_upload(body, Some(ct)).unwrap().model, "whisper-1");
        assert_eq!(read_upload(br#"{"model":"gpt-image-1"}"#, Some("application/json")).unwrap().model, "gpt-image-1");
        assert_eq!(read_upload(br#"{"model":"m"}"#, None).unwrap().model, "m");
        let code = |body: &[u8], ct: &str| read_upload(body, Some(ct)).unwrap_err().code;
        assert_eq!(code(b"--b0\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b0--", ct), "missing_model");
        assert_eq!(
            code(b"--b0\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n \r\n--b0--", ct),
            "invalid_model"
        );
        assert_eq!(
            code(b"--b0\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\na\nb\r\n--b0--", ct),
            "invalid_model"
        );
        assert_eq!(
            code(b"--b0\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n\xff\r\n--b0--", ct),
            "invalid_model"
        );
        assert_eq!(code(b"garbage", ct), "invalid_request");
        assert_eq!(code(b"--b0\r\n", "multipart/form-data"), "invalid_request");
        let long =
            format!("--b0\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{}\r\n--b0--", "a".repeat(300));
        assert_eq!(code(long.as_bytes(), ct), "invalid_model");
    }
}
