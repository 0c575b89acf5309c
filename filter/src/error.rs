//! OpenAI-shaped error replies: `{"error":{"message","type","code"}}` with the matching HTTP status.

use serde::Serialize;

use crate::api::ClientApi;

/// An error the gateway answers itself, in the shape the OpenAI SDKs parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: ErrorKind,
    pub code: &'static str,
    /// Extra response headers (e.g. `Allow` on a 405).
    pub headers: Vec<(&'static str, String)>,
}

/// The `type` field; values the OpenAI API itself uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    Authentication,
    Permission,
    NotFound,
    RateLimit,
    Server,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::Permission => "permission_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::RateLimit => "rate_limit_error",
            ErrorKind::Server => "server_error",
        }
    }

    /// The `error.type` Anthropic uses for this kind and status.
    pub fn anthropic_type(self, status: u16) -> &'static str {
        match (self, status) {
            (_, 413) => "request_too_large",
            (_, 529) => "overloaded_error",
            (ErrorKind::InvalidRequest, _) => "invalid_request_error",
            (ErrorKind::Authentication, _) => "authentication_error",
            (ErrorKind::Permission, _) => "permission_error",
            (ErrorKind::NotFound, _) => "not_found_error",
            (ErrorKind::RateLimit, _) => "rate_limit_error",
            (ErrorKind::Server, _) => "api_error",
        }
    }

    /// The kind an upstream status maps to when the upstream did not say.
    pub fn for_status(status: u16) -> Self {
        match status {
            401 => ErrorKind::Authentication,
            403 => ErrorKind::Permission,
            404 => ErrorKind::NotFound,
            429 => ErrorKind::RateLimit,
            400..=499 => ErrorKind::InvalidRequest,
            _ => ErrorKind::Server,
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    code: &'a str,
    param: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: u16, kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), kind, code, headers: Vec::new() }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, ErrorKind::InvalidRequest, code, message)
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The error body in the client's own API shape.
    pub fn body(&self, api: ClientApi) -> Vec<u8> {
        match api {
            ClientApi::OpenAI => error_json(&self.message, self.kind.as_str(), self.code),
            ClientApi::Anthropic => anthropic_error_json(&self.message, self.kind.anthropic_type(self.status)),
        }
    }
}

/// Anthropic's error envelope: `{"type":"error","error":{"type","message"}}`.
pub fn anthropic_error_json(message: &str, kind: &str) -> Vec<u8> {
    let body = serde_json::json!({"type": "error", "error": {"type": kind, "message": message}});
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Serializes an OpenAI error envelope; also used to wrap upstream errors.
pub fn error_json(message: &str, kind: &str, code: &str) -> Vec<u8> {
    let envelope = Envelope { error: Body { message, kind, code, param: None } };
    // Serializing plain strings cannot fail; fall back to a fixed body rather than panic.
    serde_json::to_vec(&envelope).unwrap_or_else(|_| {
        br#"{"error":{"message":"internal error","type":"server_error","code":"internal"}}"#.to_vec()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_openai_shaped() {
        let e = ApiError::bad_request("missing_model", "you must provide a model parameter");
        let v: serde_json::Value = serde_json::from_slice(&e.body(ClientApi::OpenAI)).unwrap();
        assert_eq!(v["error"]["message"], "you must provide a model parameter");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "missing_model");
        assert_eq!(e.status, 400);
        let v: serde_json::Value = serde_json::from_slice(&e.body(ClientApi::Anthropic)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"error","error":{"type":"invalid_request_error","message":"you must provide a model parameter"}})
        );
    }

    #[test]
    fn status_maps_to_kind() {
        assert_eq!(ErrorKind::for_status(401), ErrorKind::Authentication);
        assert_eq!(ErrorKind::for_status(429), ErrorKind::RateLimit);
        assert_eq!(ErrorKind::for_status(422), ErrorKind::InvalidRequest);
        assert_eq!(ErrorKind::for_status(503), ErrorKind::Server);
    }
}
