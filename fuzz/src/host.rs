//! An in-memory `llmgw_filter::host::Host`, playing Envoy for one request. This is the one file
//! that implements the trait: when the trait gains a method, only this file changes.
//!
//! Everything it stores is host-side memory (Envoy's, not the Wasm VM's), so storage is kept out of
//! the allocation count; the copies it hands to the filter are counted, as they would live in the
//! VM's linear memory.

use llmgw_filter::host::Host;
use llmgw_filter::metrics::Kind;

use crate::alloc::untracked;

/// A local reply: status, headers, body.
pub type Reply = (u16, Vec<(String, String)>, Vec<u8>);

#[derive(Debug, Default)]
pub struct MemHost {
    pub request_headers: Vec<(String, String)>,
    pub request_body: Vec<u8>,
    pub response_headers: Vec<(String, String)>,
    pub response_body: Vec<u8>,
    pub reply: Option<Reply>,
    /// Local replies sent (a second one is a bug: Envoy ignores it).
    pub replies: usize,
    pub filter_state: Vec<(String, Vec<u8>)>,
    pub route_cache_clears: usize,
    pub now: u64,
    pub samples: usize,
    /// Header names or values the filter set that Envoy would refuse (or that would corrupt the
    /// upstream request): reported by the targets' checks.
    pub bad_headers: Vec<String>,
}

fn get(headers: &[(String, String)], name: &str) -> Option<String> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
}

/// RFC 9110 field name (token), or an HTTP/2 pseudo-header.
fn valid_name(name: &str) -> bool {
    let name = name.strip_prefix(':').unwrap_or(name);
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// No CR, LF or NUL (Envoy's rule for header values).
fn valid_value(value: &str) -> bool {
    !value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

impl MemHost {
    fn check(&mut self, what: &str, name: &str, value: &str) {
        if !valid_name(name) || !valid_value(value) {
            self.bad_headers.push(format!("{what} {name:?}: {value:?}"));
        }
    }

    pub fn request_header_value(&self, name: &str) -> Option<String> {
        get(&self.request_headers, name)
    }

    pub fn response_header_value(&self, name: &str) -> Option<String> {
        get(&self.response_headers, name)
    }
}

fn set(headers: &mut Vec<(String, String)>, name: &str, value: &str) {
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    headers.push((name.to_ascii_lowercase(), value.to_string()));
}

impl Host for MemHost {
    fn set_request_header(&mut self, name: &str, value: &str) {
        untracked(|| {
            self.check("request header", name, value);
            set(&mut self.request_headers, name, value)
        })
    }
    fn remove_request_header(&mut self, name: &str) {
        untracked(|| self.request_headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name)))
    }
    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        self.request_body.get(..size).map(<[u8]>::to_vec)
    }
    fn append_request_body(&mut self, body: &[u8]) {
        untracked(|| self.request_body.extend_from_slice(body))
    }
    fn set_request_body(&mut self, size: usize, body: &[u8]) {
        untracked(|| {
            let size = size.min(self.request_body.len());
            self.request_body.splice(..size, body.iter().copied());
        })
    }
    fn response_headers(&self) -> Vec<(String, String)> {
        self.response_headers.clone()
    }
    fn response_header(&self, name: &str) -> Option<String> {
        get(&self.response_headers, name)
    }
    fn set_response_header(&mut self, name: &str, value: &str) {
        untracked(|| {
            self.check("response header", name, value);
            set(&mut self.response_headers, name, value)
        })
    }
    fn remove_response_header(&mut self, name: &str) {
        untracked(|| self.response_headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name)))
    }
    fn response_body(&self, size: usize) -> Option<Vec<u8>> {
        self.response_body.get(..size).map(<[u8]>::to_vec)
    }
    fn set_response_body(&mut self, size: usize, body: &[u8]) {
        untracked(|| {
            let size = size.min(self.response_body.len());
            self.response_body.splice(..size, body.iter().copied());
        })
    }
    fn send_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        untracked(|| {
            for (n, v) in headers {
                self.check("reply header", n, v);
            }
            let headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
            self.reply = Some((status, headers, body.to_vec()));
            self.replies += 1;
        })
    }
    fn set_filter_state(&mut self, name: &str, value: &[u8]) {
        untracked(|| self.filter_state.push((name.to_string(), value.to_vec())))
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        let key = path.join(".");
        self.filter_state.iter().rev().find(|(n, _)| *n == key).map(|(_, v)| v.clone())
    }
    fn request_headers(&self) -> Vec<(String, String)> {
        self.request_headers.clone()
    }
    fn set_request_headers(&mut self, headers: &[(String, String)]) {
        untracked(|| self.request_headers = headers.to_vec())
    }
    fn clear_route_cache(&mut self) {
        self.route_cache_clears += 1;
    }
    fn now_nanos(&self) -> u64 {
        self.now
    }
    /// No budgets are configured here: no shared data.
    fn shared_data(&self, _key: &str) -> Option<(Vec<u8>, u32)> {
        None
    }
    fn set_shared_data(&mut self, _key: &str, _value: &[u8], _cas: u32) -> bool {
        true
    }
    fn define_metric(&mut self, _kind: Kind, name: &str) -> Option<u32> {
        Some(name.len() as u32)
    }
    fn record_metric(&mut self, _id: u32, _kind: Kind, _value: u64) {
        self.samples += 1;
    }
}
