//! The request plan: where a request goes and every edit it needs, decided from the request's
//! headers and body alone. Pure: `exchange` reads the request once and applies the plan.
//!
//! Header edits are computed on a copy of the client's headers in the order the gateway's rules
//! apply them, then reduced to the difference: the host is told only what changed.

use crate::api::Endpoint;
use crate::auth::{self, BodyHash};
use crate::body::{NewBody, Sink};
use crate::config::{Backend, Compiled, Credential, BACKEND_HEADER, MODEL_HEADER, RULE_HEADER};
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
    let mut translator = translate::for_backend(endpoint, backend.schema(), config.stream_include_usage)?;
    let mut hashing = HashingSink { inner: sink, hash: signs_body(backend).then(BodyHash::default) };
    let edits = translator.request_body(&RequestContext {
        info,
        body,
        backend,
        query,
        now_unix: now_nanos / 1_000_000_000,
        sink: Cell::new(Some(&mut hashing)),
    });
    let hashed = hashing.hash.take();
    let edits = edits?;

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
    if let Some(credential) = backend.credential() {
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

fn signs_body(backend: &Backend) -> bool {
    matches!(backend.credential(), Some(Credential::Aws { .. }))
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

    #[test]
    fn a_repeated_header_set_to_one_value_is_an_edit() {
        let original = list(&[("x-a", "1"), ("x-a", "2")]);
        let mut edited = Edited::new(&original);
        edited.set("x-a", "1");
        assert_eq!(edited.diff(), vec![HeaderEdit::Set("x-a".into(), "1".into())]);
    }
}
