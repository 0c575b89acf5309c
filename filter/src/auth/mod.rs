//! Upstream credentials: fixed headers, or a per-request AWS SigV4 signature.

pub mod sigv4;

use std::time::SystemTime;

use crate::config::Credential;
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
