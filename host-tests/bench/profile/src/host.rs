//! An in-memory `Host` that counts its calls: each one is a proxy-wasm host call, a VM boundary
//! crossing in Envoy. Its own work per call is kept close to what the SDK's guest side does for the
//! real call (a header lookup and a copy into a new `String`/`Vec`), since it runs inside the
//! callbacks callgrind measures.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, DefaultHasher};

use llmgw_filter::host::Host;
use llmgw_filter::metrics::{Kind, Sample};

/// The proxy-wasm host calls `glue.rs` makes for each `Host` method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    GetRequestHeader,
    GetRequestHeaderPairs,
    SetRequestHeaderPairs,
    ReplaceRequestHeader,
    RemoveRequestHeader,
    GetRequestBody,
    SetRequestBody,
    GetResponseHeader,
    GetResponseHeaderPairs,
    ReplaceResponseHeader,
    RemoveResponseHeader,
    GetResponseBody,
    SetResponseBody,
    SendLocalResponse,
    GetProperty,
    SetProperty,
    ClearRouteCache,
    GetCurrentTime,
    DefineMetric,
    IncrementMetric,
    RecordMetric,
}

pub const CALLS: usize = 21;

impl Call {
    pub const ALL: [Call; CALLS] = [
        Call::GetRequestHeader,
        Call::GetRequestHeaderPairs,
        Call::SetRequestHeaderPairs,
        Call::ReplaceRequestHeader,
        Call::RemoveRequestHeader,
        Call::GetRequestBody,
        Call::SetRequestBody,
        Call::GetResponseHeader,
        Call::GetResponseHeaderPairs,
        Call::ReplaceResponseHeader,
        Call::RemoveResponseHeader,
        Call::GetResponseBody,
        Call::SetResponseBody,
        Call::SendLocalResponse,
        Call::GetProperty,
        Call::SetProperty,
        Call::ClearRouteCache,
        Call::GetCurrentTime,
        Call::DefineMetric,
        Call::IncrementMetric,
        Call::RecordMetric,
    ];

    /// The proxy-wasm ABI call (without `proxy_`), and the map or buffer it works on.
    pub fn name(self) -> &'static str {
        match self {
            Call::GetRequestHeader => "get_header_map_value(request)",
            Call::GetRequestHeaderPairs => "get_header_map_pairs(request)",
            Call::SetRequestHeaderPairs => "set_header_map_pairs(request)",
            Call::ReplaceRequestHeader => "replace_header_map_value(request)",
            Call::RemoveRequestHeader => "remove_header_map_value(request)",
            Call::GetRequestBody => "get_buffer_bytes(request body)",
            Call::SetRequestBody => "set_buffer_bytes(request body)",
            Call::GetResponseHeader => "get_header_map_value(response)",
            Call::GetResponseHeaderPairs => "get_header_map_pairs(response)",
            Call::ReplaceResponseHeader => "replace_header_map_value(response)",
            Call::RemoveResponseHeader => "remove_header_map_value(response)",
            Call::GetResponseBody => "get_buffer_bytes(response body)",
            Call::SetResponseBody => "set_buffer_bytes(response body)",
            Call::SendLocalResponse => "send_local_response",
            Call::GetProperty => "get_property",
            Call::SetProperty => "set_property(filter state)",
            Call::ClearRouteCache => "call_foreign_function(clear_route_cache)",
            Call::GetCurrentTime => "get_current_time_nanoseconds",
            Call::DefineMetric => "define_metric",
            Call::IncrementMetric => "increment_metric",
            Call::RecordMetric => "record_metric",
        }
    }
}

/// Host calls and the bytes they move, for one filter instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub calls: [u64; CALLS],
    /// Bytes the host hands to the filter (header values and pairs, bodies, properties).
    pub bytes_in: u64,
    /// Bytes the filter hands to the host (header names and values, bodies, replies, filter state).
    pub bytes_out: u64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.calls.iter().sum()
    }

    pub fn add(&mut self, other: &Counts) {
        for (a, b) in self.calls.iter_mut().zip(other.calls) {
            *a += b;
        }
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
    }
}

/// Metric ids by stat name, one map per plugin (root context), as glue.rs keeps them. A fixed-key
/// hasher: callgrind's counts must not depend on a random seed.
pub type MetricIds = RefCell<HashMap<String, u32, BuildHasherDefault<DefaultHasher>>>;

/// One filter instance's view of a stream.
pub struct MemHost<'vm> {
    pub req_headers: Vec<(String, String)>,
    pub req_body: Vec<u8>,
    pub resp_headers: Vec<(String, String)>,
    pub resp_body: Vec<u8>,
    /// Envoy attributes `property` answers (path → value).
    pub attributes: Vec<(&'static [&'static str], Vec<u8>)>,
    /// Filter state the filter wrote (read back by `property([name])`).
    pub filter_state: Vec<(String, Vec<u8>)>,
    pub now: u64,
    pub route_cache_clears: u32,
    /// A local reply (status, body): none of the scenarios expects one.
    pub replies: Vec<(u16, Vec<u8>)>,
    /// The samples recorded, when kept (the warm-up iteration, to check the scenario).
    pub samples: Option<Vec<Sample>>,
    metric_ids: &'vm MetricIds,
    counts: RefCell<Counts>,
}

fn find<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a String> {
    h.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
}

fn replace(h: &mut Vec<(String, String)>, name: &str, value: &str) {
    match h.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        Some((_, v)) => {
            v.clear();
            v.push_str(value);
        }
        None => h.push((name.to_string(), value.to_string())),
    }
}

impl<'vm> MemHost<'vm> {
    pub fn new(metric_ids: &'vm MetricIds, keep_samples: bool) -> Self {
        MemHost {
            req_headers: Vec::new(),
            req_body: Vec::new(),
            resp_headers: Vec::new(),
            resp_body: Vec::new(),
            attributes: Vec::new(),
            filter_state: Vec::new(),
            now: 0,
            route_cache_clears: 0,
            replies: Vec::new(),
            samples: keep_samples.then(Vec::new),
            metric_ids,
            counts: RefCell::default(),
        }
    }

    pub fn counts(&self) -> Counts {
        *self.counts.borrow()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.req_headers, name).map(String::as_str)
    }

    pub fn response_header_value(&self, name: &str) -> Option<&str> {
        find(&self.resp_headers, name).map(String::as_str)
    }

    fn count(&self, call: Call, bytes_in: usize, bytes_out: usize) {
        let mut c = self.counts.borrow_mut();
        c.calls[call as usize] += 1;
        c.bytes_in += bytes_in as u64;
        c.bytes_out += bytes_out as u64;
    }
}

impl Host for MemHost<'_> {
    fn set_request_header(&mut self, name: &str, value: &str) {
        self.count(Call::ReplaceRequestHeader, 0, name.len() + value.len());
        replace(&mut self.req_headers, name, value)
    }
    fn remove_request_header(&mut self, name: &str) {
        self.count(Call::RemoveRequestHeader, 0, name.len());
        self.req_headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name))
    }
    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        let body = self.req_body[..size.min(self.req_body.len())].to_vec();
        self.count(Call::GetRequestBody, body.len(), 0);
        Some(body)
    }
    fn set_request_body(&mut self, size: usize, body: &[u8]) {
        self.count(Call::SetRequestBody, 0, body.len());
        let size = size.min(self.req_body.len());
        self.req_body.splice(..size, body.iter().copied());
    }
    fn append_request_body(&mut self, body: &[u8]) {
        self.count(Call::SetRequestBody, 0, body.len());
        self.req_body.extend_from_slice(body);
    }
    fn response_headers(&self) -> Vec<(String, String)> {
        let bytes: usize = self.resp_headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        self.count(Call::GetResponseHeaderPairs, bytes, 0);
        self.resp_headers.clone()
    }
    fn response_header(&self, name: &str) -> Option<String> {
        let v = find(&self.resp_headers, name).cloned();
        self.count(Call::GetResponseHeader, v.as_ref().map_or(0, String::len), name.len());
        v
    }
    fn set_response_header(&mut self, name: &str, value: &str) {
        self.count(Call::ReplaceResponseHeader, 0, name.len() + value.len());
        replace(&mut self.resp_headers, name, value)
    }
    fn remove_response_header(&mut self, name: &str) {
        self.count(Call::RemoveResponseHeader, 0, name.len());
        self.resp_headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name))
    }
    fn response_body(&self, size: usize) -> Option<Vec<u8>> {
        let body = self.resp_body[..size.min(self.resp_body.len())].to_vec();
        self.count(Call::GetResponseBody, body.len(), 0);
        Some(body)
    }
    fn set_response_body(&mut self, size: usize, body: &[u8]) {
        self.count(Call::SetResponseBody, 0, body.len());
        let size = size.min(self.resp_body.len());
        self.resp_body.splice(..size, body.iter().copied());
    }
    fn send_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let head: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        self.count(Call::SendLocalResponse, 0, head + body.len());
        self.replies.push((status, body.to_vec()));
    }
    fn set_filter_state(&mut self, name: &str, value: &[u8]) {
        self.count(Call::SetProperty, 0, name.len() + value.len());
        match self.filter_state.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value.to_vec(),
            None => self.filter_state.push((name.to_string(), value.to_vec())),
        }
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        let v = match path {
            [name] => self.filter_state.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()),
            _ => None,
        }
        .or_else(|| self.attributes.iter().find(|(p, _)| *p == path).map(|(_, v)| v.clone()));
        let asked: usize = path.iter().map(|p| p.len() + 1).sum();
        self.count(Call::GetProperty, v.as_ref().map_or(0, Vec::len), asked);
        v
    }
    fn request_headers(&self) -> Vec<(String, String)> {
        let pairs = self.req_headers.clone();
        let bytes: usize = pairs.iter().map(|(n, v)| n.len() + v.len()).sum();
        self.count(Call::GetRequestHeaderPairs, bytes, 0);
        pairs
    }
    fn set_request_headers(&mut self, headers: &[(String, String)]) {
        let bytes: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        self.count(Call::SetRequestHeaderPairs, 0, bytes);
        self.req_headers = headers.to_vec();
    }
    fn clear_route_cache(&mut self) {
        self.count(Call::ClearRouteCache, 0, 0);
        self.route_cache_clears += 1;
    }
    fn now_nanos(&self) -> u64 {
        self.count(Call::GetCurrentTime, 8, 0);
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
        // glue.rs: the metric id by name (defined on first use per plugin).
        let known = self.metric_ids.borrow().get(name).copied();
        if let Some(id) = known {
            return Some(id);
        }
        self.count(Call::DefineMetric, 4, name.len());
        let mut ids = self.metric_ids.borrow_mut();
        let id = ids.len() as u32;
        ids.insert(name.to_string(), id);
        Some(id)
    }
    fn record_metric(&mut self, id: u32, kind: Kind, value: u64) {
        let call = match kind {
            Kind::Counter => Call::IncrementMetric,
            Kind::Histogram | Kind::Gauge => Call::RecordMetric,
        };
        self.count(call, 0, 8);
        if let Some(samples) = &mut self.samples {
            let name =
                self.metric_ids.borrow().iter().find(|(_, &i)| i == id).map(|(n, _)| n.clone()).unwrap_or_default();
            samples.push(Sample { name, kind, value });
        }
    }
}
