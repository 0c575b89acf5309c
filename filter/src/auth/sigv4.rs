//! AWS Signature Version 4 for upstream requests, on AWS's own `aws-sigv4` crate.
//!
//! The signature covers the method, the path and query as they leave Envoy (the path is
//! percent-encoded once by the translator and encoded again for the canonical request, as every AWS
//! SDK does for services other than S3), `host` = the upstream authority, the headers the caller
//! names (the exchange names `content-type`), `x-amz-date`, `x-amz-security-token` with a session
//! token, and the SHA-256 of the body. Bedrock does not need `x-amz-content-sha256`, so it is not sent.

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign as sign_request, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

use super::Outgoing;
use crate::config::AwsCredential;

/// Returns the headers to add (`authorization`, `x-amz-date`, and `x-amz-security-token` with a
/// session token), lower-case names.
pub fn sign(
    credential: &AwsCredential,
    region: &str,
    service: &str,
    outgoing: &Outgoing,
) -> Result<Vec<(String, String)>, String> {
    check_inputs(region, service, outgoing)?;
    let identity: Identity = Credentials::new(
        credential.access_key_id.clone(),
        credential.secret_access_key.expose().to_string(),
        credential.session_token.as_ref().map(|t| t.expose().to_string()),
        None,
        "llmgw-config",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(outgoing.time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| format!("invalid signing parameters: {e}"))?
        .into();
    // `host` is given explicitly so the signed value is exactly the `:authority` Envoy sends.
    let headers = std::iter::once(("host", outgoing.authority)).chain(outgoing.headers.iter().copied());
    let uri = format!("https://{}{}", outgoing.authority, outgoing.path);
    let request = SignableRequest::new(
        outgoing.method,
        uri,
        headers,
        SignableBody::Precomputed(outgoing.body_hashed.cloned().unwrap_or_default().hex_with(outgoing.body)),
    )
    .map_err(|e| format!("request cannot be signed: {e}"))?;
    let (instructions, _signature) =
        sign_request(request, &params).map_err(|e| format!("signing failed: {e}"))?.into_parts();
    let (headers, _params) = instructions.into_parts();
    Ok(headers.iter().map(|h| (h.name().to_ascii_lowercase(), h.value().to_string())).collect())
}

/// Refuses what the signing crate would otherwise panic on (it expects a URI with a host).
fn check_inputs(region: &str, service: &str, outgoing: &Outgoing) -> Result<(), String> {
    let authority = outgoing.authority;
    if authority.is_empty() || authority.bytes().any(|b| !(b.is_ascii_graphic()) || b"/?#@".contains(&b)) {
        return Err(format!("upstream authority {authority:?} is not a host[:port]"));
    }
    if !outgoing.path.starts_with('/') {
        return Err("upstream path must start with '/'".into());
    }
    if outgoing.method.is_empty() || !outgoing.method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(format!("method {:?} cannot be signed", outgoing.method));
    }
    if region.is_empty() || service.is_empty() {
        return Err("region and service must be set".into());
    }
    for (name, value) in outgoing.headers {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
            return Err(format!("header name {name:?} cannot be signed"));
        }
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(format!("header {name} has a value that cannot be signed"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::*;
    use crate::config::Secret;

    /// 2015-08-30T12:36:00Z, the time of the AWS SigV4 test suite.
    const SUITE_TIME: u64 = 1_440_938_160;
    const SUITE_KEY: &str = "AKIDEXAMPLE";
    const SUITE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn credential(token: Option<&str>) -> AwsCredential {
        AwsCredential {
            access_key_id: SUITE_KEY.into(),
            secret_access_key: Secret::new(SUITE_SECRET.into()),
            session_token: token.map(|t| Secret::new(t.into())),
        }
    }

    fn suite_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(SUITE_TIME)
    }

    struct Vector {
        name: &'static str,
        method: &'static str,
        path: &'static str,
        headers: &'static [(&'static str, &'static str)],
        body: &'static [u8],
        token: Option<&'static str>,
        signed_headers: &'static str,
        signature: &'static str,
    }

    const STS_TOKEN: &str = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";

    /// Cases of the AWS Signature Version 4 test suite (aws-sig-v4-test-suite, published in the AWS
    /// General Reference): service `service`, region `us-east-1`, host `example.amazonaws.com`.
    const VECTORS: &[Vector] = &[
        Vector {
            name: "get-vanilla",
            method: "GET",
            path: "/",
            headers: &[],
            body: b"",
            token: None,
            signed_headers: "host;x-amz-date",
            signature: "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        },
        Vector {
            name: "post-vanilla",
            method: "POST",
            path: "/",
            headers: &[],
            body: b"",
            token: None,
            signed_headers: "host;x-amz-date",
            signature: "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        },
        Vector {
            name: "post-vanilla-query",
            method: "POST",
            path: "/?Param1=value1",
            headers: &[],
            body: b"",
            token: None,
            signed_headers: "host;x-amz-date",
            signature: "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11",
        },
        Vector {
            name: "get-vanilla-query-order-key-case",
            method: "GET",
            path: "/?Param2=value2&Param1=value1",
            headers: &[],
            body: b"",
            token: None,
            signed_headers: "host;x-amz-date",
            signature: "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        },
        Vector {
            name: "get-unreserved",
            method: "GET",
            path: "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
            headers: &[],
            body: b"",
            token: None,
            signed_headers: "host;x-amz-date",
            signature: "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f",
        },
        Vector {
            name: "post-header-key-case",
            method: "POST",
            path: "/",
            headers: &[("my-header1", "value1")],
            body: b"",
            token: None,
            signed_headers: "host;my-header1;x-amz-date",
            signature: "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c",
        },
        Vector {
            name: "post-header-value-case",
            method: "POST",
            path: "/",
            headers: &[("my-header1", "VALUE1")],
            body: b"",
            token: None,
            signed_headers: "host;my-header1;x-amz-date",
            signature: "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d",
        },
        Vector {
            name: "post-x-www-form-urlencoded",
            method: "POST",
            path: "/",
            headers: &[("content-type", "application/x-www-form-urlencoded")],
            body: b"Param1=value1",
            token: None,
            signed_headers: "content-type;host;x-amz-date",
            signature: "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
        },
        Vector {
            name: "get-vanilla-with-session-token",
            method: "GET",
            path: "/",
            headers: &[],
            body: b"",
            token: Some("6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267"),
            signed_headers: "host;x-amz-date;x-amz-security-token",
            signature: "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8",
        },
        Vector {
            name: "post-sts-header-before",
            method: "POST",
            path: "/",
            headers: &[],
            body: b"",
            token: Some(STS_TOKEN),
            signed_headers: "host;x-amz-date;x-amz-security-token",
            signature: "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead",
        },
    ];

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn aws_test_suite_vectors() {
        for v in VECTORS {
            let outgoing = Outgoing {
                method: v.method,
                authority: "example.amazonaws.com",
                path: v.path,
                headers: v.headers,
                body: &[v.body],
                body_hashed: None,
                time: suite_time(),
            };
            let headers = sign(&credential(v.token), "us-east-1", "service", &outgoing).unwrap();
            let want = format!(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                 SignedHeaders={}, Signature={}",
                v.signed_headers, v.signature
            );
            assert_eq!(header(&headers, "authorization"), Some(want.as_str()), "{}", v.name);
            assert_eq!(header(&headers, "x-amz-date"), Some("20150830T123600Z"), "{}", v.name);
            assert_eq!(header(&headers, "x-amz-security-token"), v.token, "{}", v.name);
            assert_eq!(header(&headers, "x-amz-content-sha256"), None, "{}", v.name);
        }
    }

    /// A Bedrock call: the model id's `:` is encoded once in the path and again when signing, as
    /// botocore does; the same request is compared with botocore in host-tests/e2e.
    #[test]
    fn bedrock_path_is_double_encoded_in_the_signature() {
        let body = br#"{"messages":[{"role":"user","content":[{"text":"Hello"}]}]}"#;
        let sign_path = |path: &str| {
            let outgoing = Outgoing {
                method: "POST",
                authority: "bedrock-runtime.us-east-1.amazonaws.com",
                path,
                headers: &[("content-type", "application/json")],
                body: &[body],
                body_hashed: None,
                time: suite_time(),
            };
            sign(&credential(None), "us-east-1", "bedrock", &outgoing).unwrap()
        };
        let once = sign_path("/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse");
        let auth = header(&once, "authorization").unwrap();
        assert!(auth.starts_with(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/bedrock/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, Signature="
        ));
        // Signing the raw `:` is a different canonical request.
        let raw = sign_path("/model/anthropic.claude-3-haiku-20240307-v1:0/converse");
        assert_ne!(header(&raw, "authorization"), Some(auth));
    }

    #[test]
    fn refuses_what_cannot_be_signed() {
        let ok = Outgoing {
            method: "POST",
            authority: "h",
            path: "/",
            headers: &[],
            body: &[],
            body_hashed: None,
            time: suite_time(),
        };
        assert!(sign(&credential(None), "us-east-1", "bedrock", &ok).is_ok());
        for authority in ["", "a b", "user@host", "h/x"] {
            let o = Outgoing { authority, ..ok };
            assert!(sign(&credential(None), "us-east-1", "bedrock", &o).is_err(), "{authority:?}");
        }
        let o = Outgoing { path: "x", ..ok };
        assert!(sign(&credential(None), "us-east-1", "bedrock", &o).is_err());
        let o = Outgoing { headers: &[("bad name", "v")], ..ok };
        assert!(sign(&credential(None), "us-east-1", "bedrock", &o).is_err());
        let o = Outgoing { headers: &[("x", "a\r\nb")], ..ok };
        assert!(sign(&credential(None), "us-east-1", "bedrock", &o).is_err());
        assert!(sign(&credential(None), "", "bedrock", &ok).is_err());
    }
}
