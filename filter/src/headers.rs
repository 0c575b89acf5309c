//! Which client request headers reach a provider, and which provider headers reach the client.
//! An allowlist: a header nobody decided to forward does not leave the gateway (cookies, client
//! telemetry, proxies' headers, a client's own idea of the operator's OpenAI organization).

use crate::config::{Backend, Schema};

/// Forwarded to every provider.
const COMMON: &[&str] = &[
    "content-type",
    "content-length",
    "accept",
    "user-agent",
    "x-request-id",
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "idempotency-key",
];

/// Forwarded to the providers whose API defines them.
fn schema_headers(schema: Schema) -> &'static [&'static str] {
    match schema {
        Schema::OpenAI | Schema::AzureOpenAI => &["openai-beta"],
        Schema::Anthropic => &["anthropic-version", "anthropic-beta"],
        Schema::AWSAnthropic | Schema::GCPAnthropic | Schema::AWSBedrock | Schema::GCPVertexAI => &[],
    }
}

/// Choose whose bill a request goes on: forwarded only when the backend opts in.
fn billing_headers(schema: Schema) -> &'static [&'static str] {
    match schema {
        Schema::OpenAI | Schema::AzureOpenAI => &["openai-organization", "openai-project"],
        Schema::GCPVertexAI | Schema::GCPAnthropic => &["x-goog-user-project"],
        Schema::Anthropic | Schema::AWSAnthropic | Schema::AWSBedrock => &[],
    }
}

/// The client's own credentials, forwarded with `pass_through_authorization` only.
const CLIENT_CREDENTIALS: &[&str] = &["authorization", "api-key", "x-api-key"];

/// Set by the gateway for Envoy's router; the route configuration removes them before the request
/// leaves (they are needed until the route is chosen).
const GATEWAY_HEADERS: &[&str] = &[crate::config::BACKEND_HEADER, crate::config::MODEL_HEADER];

/// Provider response headers that name the operator's account; never shown to clients.
pub const OPERATOR_RESPONSE_HEADERS: &[&str] = &["openai-organization", "openai-project", "anthropic-organization-id"];

/// Response headers that tell a client when it may try again (`Retry-After`, the IETF draft's
/// `X-RateLimit-*` that Envoy's rate limit filter writes): kept when the filter rewrites an answer.
pub fn is_retry_hint(name: &str) -> bool {
    name.eq_ignore_ascii_case("retry-after") || name.get(..12).is_some_and(|p| p.eq_ignore_ascii_case("x-ratelimit-"))
}

/// Whether a client request header (lower-case name) may go to `backend`. Envoy's own headers
/// (`x-forwarded-*`, `x-envoy-*`) are Envoy's to manage: it sanitizes and uses them (routing needs
/// `x-forwarded-proto`), so the filter leaves them alone.
pub fn forwarded(name: &str, backend: &Backend) -> bool {
    name.starts_with(':')
        || name.starts_with("x-forwarded-")
        || name.starts_with("x-envoy-")
        || COMMON.contains(&name)
        || GATEWAY_HEADERS.contains(&name)
        || schema_headers(backend.schema()).contains(&name)
        || (backend.forward_billing_headers && billing_headers(backend.schema()).contains(&name))
        || (backend.pass_through_authorization && CLIENT_CREDENTIALS.contains(&name))
        || backend.forward_headers.iter().any(|h| h == name)
}

/// The client request headers to remove before the request goes to `backend`.
pub fn to_remove(names: Vec<String>, backend: &Backend) -> Vec<String> {
    let mut out: Vec<String> = names.into_iter().filter(|n| !forwarded(n, backend)).collect();
    crate::sort::sort_unstable(&mut out);
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::backend;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn allowlist_per_schema() {
        let client = names(&[
            ":path",
            "content-type",
            "cookie",
            "x-stainless-os",
            "openai-organization",
            "openai-project",
            "openai-beta",
            "anthropic-beta",
            "authorization",
            "x-goog-user-project",
            "x-forwarded-proto",
            "traceparent",
            "x-ai-eg-model",
        ]);
        let openai = backend(Schema::OpenAI);
        assert_eq!(
            to_remove(client.clone(), &openai),
            names(&[
                "anthropic-beta",
                "authorization",
                "cookie",
                "openai-organization",
                "openai-project",
                "x-goog-user-project",
                "x-stainless-os"
            ])
        );
        let mut opted_in = backend(Schema::OpenAI);
        opted_in.forward_billing_headers = true;
        opted_in.pass_through_authorization = true;
        opted_in.forward_headers = names(&["x-stainless-os"]);
        let removed = to_remove(client.clone(), &opted_in);
        assert!(!removed.iter().any(|n| n == "openai-organization" || n == "authorization" || n == "x-stainless-os"));
        let anthropic = backend(Schema::Anthropic);
        let removed = to_remove(client.clone(), &anthropic);
        assert!(!removed.contains(&"anthropic-beta".to_string()));
        assert!(removed.contains(&"openai-beta".to_string()));
        let mut vertex = backend(Schema::GCPVertexAI);
        vertex.forward_billing_headers = true;
        assert!(!to_remove(client, &vertex).contains(&"x-goog-user-project".to_string()));
    }
}
