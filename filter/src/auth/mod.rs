//! Upstream credentials: fixed headers, or a per-request AWS SigV4 signature.

pub mod sigv4;

use std::time::SystemTime;

use crate::config::{AwsCredential, Backend, Credential, CredentialOverride, HeaderCredential, Secret};
use crate::error::{ApiError, ErrorKind};

/// The upstream request as it will leave Envoy, for signing.
pub struct Outgoing<'a> {
    pub method: &'a str,
    pub authority: &'a str,
    /// Path with query.
    pub path: &'a str,
    /// Headers to include in the signature besides `host` (lower-case names).
    pub headers: &'a [(&'a str, &'a str)],
    /// The body, in parts (it is never joined into one buffer)...
    pub body: &'a [&'a [u8]],
    /// ...after the bytes already hashed here (those the host took while the body was written).
    pub body_hashed: Option<&'a BodyHash>,
    pub time: SystemTime,
}

/// The headers that authenticate `outgoing` with `credential`.
pub fn headers(credential: Credential<'_>, outgoing: &Outgoing) -> Result<Vec<(String, String)>, ApiError> {
    match credential {
        Credential::Header(h) => Ok(vec![(h.header.to_string(), h.value.expose().to_string())]),
        Credential::Aws { credential, region } => {
            sigv4::sign(credential, region, "bedrock", outgoing).map_err(|reason| {
                ApiError::new(
                    500,
                    ErrorKind::Server,
                    "signing_failed",
                    format!("could not sign the upstream request: {reason}"),
                )
            })
        }
    }
}

/// The credential one request uses: the backend's, or the request's own (`credential_override`).
#[derive(Debug)]
pub enum Chosen<'a> {
    Configured(Credential<'a>),
    Header(HeaderCredential),
    Aws { credential: AwsCredential, region: &'a str },
}

impl Chosen<'_> {
    pub fn credential(&self) -> Credential<'_> {
        match self {
            Chosen::Configured(c) => *c,
            Chosen::Header(h) => Credential::Header(h),
            Chosen::Aws { credential, region } => Credential::Aws { credential, region },
        }
    }
}

/// The credential for a request to `backend` with these request headers. A per-request
/// credential that is required and missing is a 401 that names the header, never a value.
pub fn choose<'a>(backend: &'a Backend, headers: &[(String, String)]) -> Result<Option<Chosen<'a>>, ApiError> {
    let Some(over) = &backend.credential_override else { return Ok(backend.credential().map(Chosen::Configured)) };
    // Empty is absent: a client library that sends the header unset should not authenticate as "".
    let value = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.trim()).filter(|v| !v.is_empty());
    let own = match over {
        CredentialOverride::Header { from, to, prefix, .. } => value(from).map(|key| {
            // The header holds the key itself; a `Bearer ` a client put in front is not doubled.
            let key = match key.get(..7) {
                Some(scheme) if !prefix.is_empty() && scheme.eq_ignore_ascii_case("bearer ") => {
                    key.get(7..).unwrap_or_default().trim_start()
                }
                _ => key,
            };
            Chosen::Header(HeaderCredential { header: to, value: Secret::new(format!("{prefix}{key}")) })
        }),
        CredentialOverride::Aws { access_key_id, secret_access_key, session_token, .. } => {
            match (value(access_key_id), value(secret_access_key), backend.aws_region()) {
                (Some(id), Some(secret), Some(region)) => Some(Chosen::Aws {
                    credential: AwsCredential {
                        access_key_id: id.to_string(),
                        secret_access_key: Secret::new(secret.to_string()),
                        session_token: session_token.as_deref().and_then(value).map(|t| Secret::new(t.to_string())),
                    },
                    region,
                }),
                _ => None,
            }
        }
    };
    if own.is_some() {
        return Ok(own);
    }
    match backend.credential() {
        Some(configured) if over.fallback_to_configured() => Ok(Some(Chosen::Configured(configured))),
        _ => {
            let names = over.headers();
            let wanted = match over {
                CredentialOverride::Header { .. } => format!("the `{}` header", names.join("")),
                CredentialOverride::Aws { .. } => {
                    format!("the `{}` and `{}` headers", names.first().unwrap_or(&""), names.get(1).unwrap_or(&""))
                }
            };
            Err(ApiError::new(
                401,
                ErrorKind::Authentication,
                "missing_upstream_credential",
                format!("this model's provider needs your own credential in {wanted}"),
            ))
        }
    }
}

/// The SHA-256 of a body fed in pieces, for signing a body that left the VM as it was written.
#[derive(Clone, Default)]
pub struct BodyHash(sha2::Sha256);

impl BodyHash {
    pub fn update(&mut self, bytes: &[u8]) {
        sha2::Digest::update(&mut self.0, bytes);
    }

    /// The lowercase hex digest of what was fed, then `rest`.
    pub fn hex_with(&self, rest: &[&[u8]]) -> String {
        let mut hasher = self.0.clone();
        for part in rest {
            sha2::Digest::update(&mut hasher, part);
        }
        sha2::Digest::finalize(hasher).iter().map(|b| format!("{b:02x}")).collect()
    }
}
