//! The request plan: where a request goes and every edit it needs, decided from the request's
//! headers and body alone. Pure: `exchange` reads the request once and applies the plan.
//!
//! Header edits are computed on a copy of the client's headers in the order the gateway's rules
//! apply them, then reduced to the difference: the host is told only what changed.

use crate::api::{Endpoint, ModelSource};
use crate::auth::{self, BodyHash};
use crate::body::{NewBody, Sink};
use crate::config::{Compiled, Credential, BACKEND_HEADER, MODEL_HEADER, RULE_HEADER};
use crate::error::{ApiError, ErrorKind};
use crate::headers;
use crate::request::RequestInfo;
use crate::routing::find_rule;
use crate::translate::{self, RequestContext, Translator};
use std::cell::Cell;

/// Request headers as the host holds them (lower-case names, in order, repeats kept).
pub type HeaderList = Vec<(String, String)>;

/// The first value of header `name` (lower-case).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// One change to the request headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Replaces every value of the header with this one.
    Set(String, String),
    Remove(String),
}

/// Which backend serves the request, when a rule has more than one to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub rule: usize,
    pub backend: usize,
}

/// Where a request goes.
pub enum Destination {
    /// One backend, translated here.
    Backend { index: usize, translator: Box<dyn Translator> },
    /// A fallback rule's cluster: Envoy tries its backends, the upstream copy translates each attempt.
    Rule(usize),
}

pub struct RequestPlan {
    pub destination: Destination,
    /// The header changes, each name at most once.
    pub headers: Vec<HeaderEdit>,
    /// The rest of a new body (what the sink has not taken yet).
    pub body: Option<NewBody>,
    /// Envoy must choose the route again (a header it routes on changed).
    pub reroute: bool,
}

/// What the plan is made from.
pub struct PlanInput<'a> {
    pub config: &'a Compiled,
    pub endpoint: Endpoint,
    /// What follows the endpoint in the client's path (`Endpoint::path_tail`): its query string.
    pub query: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
    pub info: &'a RequestInfo,
    pub now_nanos: u64,
    /// On the upstream copy of a fallback rule: the backend Envoy picked for this attempt.
    pub attempt: Option<Attempt>,
    /// A request no model names (a stored response's call, sent without `x-ai-eg-model`) goes to
    /// this backend: the only one that can serve it.
    pub pinned_backend: Option<usize>,
}

/// Decides a request's destination and edits. A translation that writes a whole new body hands
/// its full chunks to `sink` as it writes them (so memory holds one chunk, not the new body).
pub fn plan_request(input: &PlanInput, sink: &mut dyn Sink) -> Result<RequestPlan, ApiError> {
    let PlanInput { config, endpoint, query, headers, body, info, now_nanos, attempt, pinned_backend } = *input;
    if info.stream && !endpoint.can_stream() {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("{} does not support `stream`", endpoint.suffix()),
        ));
    }
    let downstream = attempt.is_none();
    let mut edited = Edited::new(headers);
    if downstream && !info.model.is_empty() {
        edited.set(MODEL_HEADER, &info.model);
    }
    let index = match (attempt, pinned_backend) {
        (Some(attempt), _) => attempt.backend,
        (None, Some(pinned)) => pinned,
        (None, None) => match choose(config, headers, info)? {
            Choice::Backend(index) => index,
            Choice::Rule(rule) => {
                edited.set(RULE_HEADER, &rule.to_string());
                return Ok(RequestPlan {
                    destination: Destination::Rule(rule),
                    headers: edited.diff(),
                    body: None,
                    reroute: true,
                });
            }
        },
    };
    let backend = config.backends.get(index).ok_or_else(|| {
        ApiError::new(500, ErrorKind::Server, "internal", "routing chose a backend that does not exist")
    })?;
    // Before any work: a request missing its own required credential is refused.
    let chosen = auth::choose(backend, headers)?;
    let mut translator = translate::for_backend(endpoint, backend.schema(), config.stream_include_usage)?;
    let signs_body = matches!(chosen.as_ref().map(auth::Chosen::credential), Some(Credential::Aws { .. }));
    let mut hashing = HashingSink { inner: sink, hash: signs_body.then(BodyHash::default) };
    // A body to be mutated stays in memory until it is: nothing of it goes to the host early.
    let sink: Option<&mut dyn Sink> = if backend.body_mutation.is_some() { None } else { Some(&mut hashing) };
    let edits = translator.request_body(&RequestContext {
        info,
        body,
        backend,
        query,
        now_unix: now_nanos / 1_000_000_000,
        sink: Cell::new(sink),
    });
    let hashed = hashing.hash.take();
    let mut edits = edits?;
    if let Some(mutation) = &backend.body_mutation {
        match endpoint.model_source() {
            // A stored response's call sends no body of its own to mutate (a cancel's, if any,
            // goes on unread, like its query).
            ModelSource::Header => {}
            // An upload's bytes are never edited: refused rather than sent without the mutation.
            ModelSource::MultipartOrJsonBody if !crate::json::looks_like_object(body) => {
                return Err(ApiError::bad_request(
                    "unsupported_body_mutation",
                    format!(
                        "backend {:?} mutates request bodies, which the gateway cannot do in a \
                         multipart/form-data body; send this call to a backend without body_mutation",
                        backend.name
                    ),
                ));
            }
            // After translation: it applies to what the provider receives.
            ModelSource::JsonBody | ModelSource::MultipartOrJsonBody => {
                edits.body = mutation.apply(body, edits.body.take())?;
            }
        }
    }

    // An allowlist: what nobody decided to forward does not reach the provider.
    for (name, _) in headers {
        if !headers::forwarded(name, backend) {
            edited.remove(name);
        }
    }
    if downstream {
        edited.set(BACKEND_HEADER, &backend.name);
    }
    // Usage is read from every response and translators rewrite them: they must arrive uncompressed.
    edited.set("accept-encoding", "identity");
    if let Some(path) = &edits.path {
        edited.set(":path", path);
    }
    for (name, value) in &edits.set_headers {
        edited.set(name, value);
    }
    for name in &backend.remove_headers {
        edited.remove(name);
    }
    for (name, value) in &backend.set_headers {
        edited.set(name, value);
    }
    if let Some(authority) = &backend.authority {
        edited.set(":authority", authority);
    }
    if let Some(new_body) = &edits.body {
        if edited.get("content-length").is_some() {
            edited.set("content-length", &new_body.len(body.len()).to_string());
        }
    }
    if let Some(over) = &backend.credential_override {
        // A client's own credential never travels further than this (used or not).
        for name in over.headers() {
            edited.remove(name);
        }
    }
    if let Some(credential) = chosen.as_ref().map(auth::Chosen::credential) {
        // Signed last: the signature covers the final path, authority and body.
        let content_type = edited.get("content-type").unwrap_or("application/json").to_string();
        let signed_headers = [("content-type", content_type.as_str())];
        let parts = edits.body.as_ref().map_or_else(|| vec![body], |b| b.parts(body));
        let outgoing = auth::Outgoing {
            method: "POST",
            authority: edited.get(":authority").unwrap_or_default(),
            path: edited.get(":path").unwrap_or_default(),
            headers: &signed_headers,
            body: &parts,
            body_hashed: hashed.as_ref(),
            time: std::time::UNIX_EPOCH + std::time::Duration::from_nanos(now_nanos),
        };
        let signed = auth::headers(credential, &outgoing)?;
        for (name, value) in signed {
            edited.set(&name, &value);
        }
    }
    Ok(RequestPlan {
        destination: Destination::Backend { index, translator },
        headers: edited.diff(),
        body: edits.body,
        reroute: downstream,
    })
}

/// Where the downstream filter sends a request: one backend, or a fallback rule's cluster.
enum Choice {
    Backend(usize),
    Rule(usize),
}

fn choose(config: &Compiled, headers: &[(String, String)], info: &RequestInfo) -> Result<Choice, ApiError> {
    let lookup = |name: &str| header(headers, name);
    let (index, rule) = find_rule(&config.rules, &info.model, &lookup).ok_or_else(|| {
        ApiError::new(
            404,
            ErrorKind::InvalidRequest,
            "model_not_found",
            format!(
                "The model `{}` does not exist or is not served by this gateway: no rule matches it. \
                 Add a rule whose match.model (exact, prefix, glob or regex) covers it, or a rule \
                 without `match` as the default.",
                info.model
            ),
        )
    })?;
    Ok(if rule.fallback.is_some() { Choice::Rule(index) } else { Choice::Backend(rule.pick_backend()) })
}

/// A sink that hashes what passes through it when the body is to be signed.
struct HashingSink<'s> {
    inner: &'s mut dyn Sink,
    hash: Option<BodyHash>,
}

impl Sink for HashingSink<'_> {
    fn take(&mut self, chunk: &[u8]) {
        if let Some(hash) = &mut self.hash {
            hash.update(chunk);
        }
        self.inner.take(chunk);
    }
}

/// The request headers as the edits so far leave them: the client's, overlaid with the last edit
/// of each name (set to one value, or removed).
struct Edited<'h> {
    original: &'h [(String, String)],
    /// In the order names were first edited; `None`: removed.
    edits: Vec<(String, Option<String>)>,
}

impl<'h> Edited<'h> {
    fn new(original: &'h [(String, String)]) -> Self {
        Edited { original, edits: Vec::with_capacity(8) }
    }

    fn get(&self, name: &str) -> Option<&str> {
        match self.edits.iter().find(|(n, _)| n == name) {
            Some((_, value)) => value.as_deref(),
            None => header(self.original, name),
        }
    }

    fn edit(&mut self, name: &str, value: Option<&str>) {
        match self.edits.iter_mut().find(|(n, _)| n == name) {
            Some((_, slot)) => *slot = value.map(str::to_string),
            None => self.edits.push((name.to_string(), value.map(str::to_string))),
        }
    }

    fn set(&mut self, name: &str, value: &str) {
        self.edit(name, Some(value));
    }

    fn remove(&mut self, name: &str) {
        self.edit(name, None);
    }

    /// The edits that change something, each name once.
    fn diff(self) -> Vec<HeaderEdit> {
        let original = self.original;
        self.edits
            .into_iter()
            .filter_map(|(name, value)| {
                let mut values = original.iter().filter(|(n, _)| *n == name).map(|(_, v)| v.as_str());
                match value {
                    None if values.next().is_none() => None,
                    None => Some(HeaderEdit::Remove(name)),
                    Some(value) if values.next() == Some(value.as_str()) && values.next().is_none() => None,
                    Some(value) => Some(HeaderEdit::Set(name, value)),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn only_changes_are_edits() {
        let original = list(&[
            (":path", "/v1/chat/completions"),
            ("accept-encoding", "identity"),
            ("cookie", "a"),
            ("cookie", "b"),
            ("x-keep", "1"),
        ]);
        let mut edited = Edited::new(&original);
        edited.set("accept-encoding", "identity");
        edited.set(":path", "/v1/messages");
        edited.remove("cookie");
        edited.set("x-new", "v");
        edited.set("x-new", "w");
        edited.remove("absent");
        assert_eq!(edited.get(":path"), Some("/v1/messages"));
        assert_eq!(edited.get("cookie"), None);
        assert_eq!(edited.get("x-keep"), Some("1"));
        assert_eq!(
            edited.diff(),
            vec![
                HeaderEdit::Set(":path".into(), "/v1/messages".into()),
                HeaderEdit::Remove("cookie".into()),
                HeaderEdit::Set("x-new".into(), "w".into()),
            ]
        );
    }

    mod through_the_exchange {
        //! Body mutation and per-request credentials as a request meets them: the exchange on a
        //! fake host, which holds the body and headers that leave for the provider.
        use std::rc::Rc;

        use crate::auth::sigv4;
        use crate::config::{parse, AwsCredential, Secret};
        use crate::exchange::{Exchange, Shared};
        use crate::host::Flow;
        use crate::testing::FakeHost;

        use crate::testing::NoEnv;

        const CONFIG: &str = r#"
backends:
  - {name: openai, schema: OpenAI, auth: {bearer: sk-configured},
     body_mutation: {set: {temperature: 0.5, service_tier: scale}, remove: [stream_options, user]}}
  - {name: own-key, schema: OpenAI, credential_override: {header: x-upstream-key, fallback_to_configured: false},
     auth: {bearer: sk-configured}}
  - {name: maybe-own, schema: OpenAI, auth: {bearer: sk-configured}, credential_override: {header: x-upstream-key}}
  - {name: claude, schema: Anthropic, credential_override: {header: x-upstream-key},
     body_mutation: {set: {top_k: 3}, remove: [system]}}
  - {name: bedrock, schema: AWSBedrock, region: us-west-2, host: bedrock-runtime.us-west-2.amazonaws.com,
     credential_override: {access_key_id_header: x-aws-key, secret_access_key_header: x-aws-secret,
                           session_token_header: x-aws-token},
     body_mutation: {set: {additionalModelRequestFields: {top_k: 5}}}}
rules:
  - {match: {model: {exact: ref}}, backends: [{name: openai, body_mutation: {set: {user: ref}, remove: [temperature]}}]}
  - {match: {model: {prefix: gpt}}, backends: [{name: openai}]}
  - {match: {model: {exact: own}}, backends: [{name: own-key}]}
  - {match: {model: {exact: maybe}}, backends: [{name: maybe-own}]}
  - {match: {model: {prefix: claude}}, backends: [{name: claude}]}
  - {match: {model: {prefix: amazon}}, backends: [{name: bedrock}]}
"#;

        /// The request as it leaves: (headers, body), or the local reply's status and JSON.
        fn send(
            path: &str,
            headers: &[(&str, &str)],
            body: &str,
        ) -> Result<FakeHost, Box<(u16, serde_json::Value, FakeHost)>> {
            let config = parse(CONFIG.as_bytes(), &NoEnv, 0).unwrap();
            let mut x = Exchange::new(Some(Rc::new(Shared::new(config))));
            let len = body.len().to_string();
            let mut all = vec![("content-type", "application/json"), ("content-length", len.as_str())];
            all.extend_from_slice(headers);
            let mut host = FakeHost::request("POST", path, &all);
            host.now = 1_764_460_800_000_000_000;
            host.request_body = body.as_bytes().to_vec();
            assert_eq!(x.on_request_headers(&mut host, false), Flow::Pause);
            x.on_request_body(&mut host, body.len(), true);
            match host.reply.is_some() {
                true => {
                    let (status, v) = host.reply_json();
                    Err(Box::new((status, v, host)))
                }
                false => Ok(host),
            }
        }

        fn body_of(host: &FakeHost) -> serde_json::Value {
            let length: usize = host.header("content-length").unwrap().parse().unwrap();
            assert_eq!(length, host.request_body.len(), "content-length follows the mutation");
            serde_json::from_slice(&host.request_body).unwrap()
        }

        #[test]
        fn a_streaming_pass_through_body_is_mutated_in_place() {
            let body = r#"{"model":"gpt-4o", "stream":true,"stream_options":{"include_usage":false},"user":"u","messages":[{"role":"user","content":"hi","user":"nested"}]}"#;
            let host = send("/v1/chat/completions", &[], body).unwrap();
            let sent = String::from_utf8(host.request_body.clone()).unwrap();
            // The client's bytes stay as they were (the space after the first comma included);
            // stream_options is removed after the gateway added include_usage to it.
            assert_eq!(
                sent,
                r#"{"temperature":0.5,"service_tier":"scale","model":"gpt-4o", "stream":true,"messages":[{"role":"user","content":"hi","user":"nested"}]}"#
            );
            body_of(&host);
            assert_eq!(host.header("authorization").as_deref(), Some("Bearer sk-configured"));
        }

        #[test]
        fn a_rule_reference_mutation_wins_over_the_backends() {
            let host = send("/v1/chat/completions", &[], r#"{"model":"ref","temperature":1,"user":"u"}"#).unwrap();
            let v = body_of(&host);
            assert_eq!(v, serde_json::json!({"service_tier":"scale","user":"ref","model":"ref"}));
        }

        #[test]
        fn a_translated_body_is_mutated_and_the_client_key_replaced() {
            let body = r#"{"model":"claude-x","max_tokens":9,"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]}"#;
            let host = send("/v1/chat/completions", &[("x-upstream-key", "sk-ant-own")], body).unwrap();
            let v = body_of(&host);
            assert_eq!(v["top_k"], 3);
            assert!(v.get("system").is_none(), "{v}");
            assert_eq!(v["messages"], serde_json::json!([{"role": "user", "content": "hi"}]), "{v}");
            assert_eq!(host.header("x-api-key").as_deref(), Some("sk-ant-own"));
            assert_eq!(host.header("x-upstream-key"), None);
        }

        #[test]
        fn the_openai_only_apis_meet_mutation_and_own_keys() {
            // Responses → Anthropic: translated, then mutated, with the client's own key.
            let body = r#"{"model":"claude-x","instructions":"be brief","input":"hi","max_output_tokens":9}"#;
            let host = send("/v1/responses", &[("x-upstream-key", "sk-ant-own")], body).unwrap();
            assert_eq!(host.header(":path").as_deref(), Some("/v1/messages"));
            let v = body_of(&host);
            assert_eq!(v["top_k"], 3);
            assert!(v.get("system").is_none(), "{v}");
            assert_eq!(host.header("x-api-key").as_deref(), Some("sk-ant-own"));
            assert_eq!(host.header("x-upstream-key"), None);

            // A JSON body of the other APIs is mutated like chat's.
            let host = send("/v1/audio/speech", &[], r#"{"model":"gpt-4o","input":"hi","user":"u"}"#).unwrap();
            let v = body_of(&host);
            assert_eq!((v["temperature"].as_f64(), v.get("user")), (Some(0.5), None));

            // An upload's bytes cannot be: refused, never sent unmutated.
            let config = parse(CONFIG.as_bytes(), &NoEnv, 0).unwrap();
            let mut x = Exchange::new(Some(Rc::new(Shared::new(config))));
            let upload = "--b7\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4o\r\n--b7--\r\n";
            let content_type = [("content-type", "multipart/form-data; boundary=b7")];
            let mut host = FakeHost::request("POST", "/v1/audio/transcriptions", &content_type);
            host.request_body = upload.as_bytes().to_vec();
            assert_eq!(x.on_request_headers(&mut host, false), Flow::Pause);
            x.on_request_body(&mut host, upload.len(), true);
            let (status, v) = host.reply_json();
            assert_eq!((status, v["error"]["code"].as_str()), (400, Some("unsupported_body_mutation")), "{v}");

            // A stored response's call has no body to mutate: it goes on as it came.
            let config = parse(CONFIG.as_bytes(), &NoEnv, 0).unwrap();
            let mut x = Exchange::new(Some(Rc::new(Shared::new(config))));
            let mut host = FakeHost::request("GET", "/v1/responses/resp_1", &[("x-ai-eg-model", "gpt-4o")]);
            assert_eq!(x.on_request_headers(&mut host, true), Flow::Continue);
            assert!(host.reply.is_none());
            assert!(host.request_body.is_empty());
            assert_eq!(host.header("authorization").as_deref(), Some("Bearer sk-configured"));
        }

        #[test]
        fn the_own_key_replaces_the_configured_one_and_never_travels() {
            let body = r#"{"model":"own","messages":[]}"#;
            let host = send("/v1/chat/completions", &[("x-upstream-key", "sk-own-1")], body).unwrap();
            assert_eq!(host.header("authorization").as_deref(), Some("Bearer sk-own-1"));
            assert_eq!(host.header("x-upstream-key"), None);
            // A `Bearer ` the client put in front is not doubled.
            let host = send("/v1/chat/completions", &[("x-upstream-key", "Bearer sk-own-2")], body).unwrap();
            assert_eq!(host.header("authorization").as_deref(), Some("Bearer sk-own-2"));

            // Required and missing (or empty): a 401 in the client's shape, naming the header only.
            for headers in [&[][..], &[("x-upstream-key", " ")][..]] {
                let (status, v, host) = *send("/v1/chat/completions", headers, body).unwrap_err();
                assert_eq!((status, v["error"]["type"].as_str()), (401, Some("authentication_error")));
                assert_eq!(v["error"]["code"], "missing_upstream_credential");
                assert!(v["error"]["message"].as_str().unwrap().contains("x-upstream-key"));
                assert!(!String::from_utf8_lossy(&host.reply.unwrap().2).contains("sk-configured"));
            }
            let (status, v, _) =
                *send("/v1/messages", &[], r#"{"model":"own","max_tokens":5,"messages":[]}"#).unwrap_err();
            assert_eq!(
                (status, v["type"].as_str(), v["error"]["type"].as_str()),
                (401, Some("error"), Some("authentication_error"))
            );

            // With a fallback, the configured key serves a request without its own.
            let body = r#"{"model":"maybe","messages":[]}"#;
            let host = send("/v1/chat/completions", &[], body).unwrap();
            assert_eq!(host.header("authorization").as_deref(), Some("Bearer sk-configured"));
            let host = send("/v1/chat/completions", &[("x-upstream-key", "sk-own-3")], body).unwrap();
            assert_eq!(host.header("authorization").as_deref(), Some("Bearer sk-own-3"));
            assert_eq!(host.header("x-upstream-key"), None);
        }

        #[test]
        fn aws_requests_are_signed_with_the_requests_own_keys_over_the_mutated_body() {
            let body = r#"{"model":"amazon.nova-lite-v1:0","messages":[{"role":"user","content":"hi"}]}"#;
            let own = [("x-aws-key", "AKIDOWN"), ("x-aws-secret", "own-secret"), ("x-aws-token", "own-token")];
            let host = send("/v1/chat/completions", &own, body).unwrap();
            let v = body_of(&host);
            assert_eq!(v["additionalModelRequestFields"], serde_json::json!({"top_k": 5}));
            for (name, _) in own {
                assert_eq!(host.header(name), None, "{name} left the gateway");
            }
            assert_eq!(host.header("x-amz-security-token").as_deref(), Some("own-token"));
            // The signature is the one the request's keys make over the body that leaves.
            let credential = AwsCredential {
                access_key_id: "AKIDOWN".into(),
                secret_access_key: Secret::new("own-secret".into()),
                session_token: Some(Secret::new("own-token".into())),
            };
            let path = host.header(":path").unwrap();
            let outgoing = crate::auth::Outgoing {
                method: "POST",
                authority: "bedrock-runtime.us-west-2.amazonaws.com",
                path: &path,
                headers: &[("content-type", "application/json")],
                body: &[&host.request_body],
                body_hashed: None,
                time: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_764_460_800),
            };
            let expected = sigv4::sign(&credential, "us-west-2", "bedrock", &outgoing).unwrap();
            let auth = &expected.iter().find(|(n, _)| n == "authorization").unwrap().1;
            assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDOWN/20251130/us-west-2/bedrock/"));
            assert_eq!(host.header("authorization").as_ref(), Some(auth));

            // No configured keys and none of its own: refused before anything is signed.
            let (status, v, _) = *send("/v1/chat/completions", &own[..1], body).unwrap_err();
            assert_eq!(status, 401);
            assert!(v["error"]["message"].as_str().unwrap().contains("x-aws-secret"), "{v}");
        }
    }

    #[test]
    fn a_repeated_header_set_to_one_value_is_an_edit() {
        let original = list(&[("x-a", "1"), ("x-a", "2")]);
        let mut edited = Edited::new(&original);
        edited.set("x-a", "1");
        assert_eq!(edited.diff(), vec![HeaderEdit::Set("x-a".into(), "1".into())]);
    }
}
