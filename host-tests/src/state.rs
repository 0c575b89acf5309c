//! Host-side state of one VM (one wasmtime `Store`): what the guest can read and change through
//! host calls, and the record of what it did.

use crate::abi::{LogLevel, MetricKind};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use wasmtime_wasi::p1::WasiP1Ctx;

/// An HTTP header map. Names are stored lowercased (as Envoy's codecs and header APIs do) and
/// looked up case-insensitively; order and duplicates are kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
}

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        let mut h = Self::new();
        for (k, v) in pairs {
            h.add(k, v);
        }
        h
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn get_all(&self, name: &str) -> Vec<&str> {
        self.entries.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + Clone {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn add(&mut self, name: &str, value: &str) {
        self.entries.push((name.to_ascii_lowercase(), value.to_string()));
    }

    /// Envoy's `setCopy`: the first entry keeps its position with the new value, later
    /// duplicates go, and an absent name is appended.
    pub fn replace(&mut self, name: &str, value: &str) {
        match self.entries.iter().position(|(k, _)| k.eq_ignore_ascii_case(name)) {
            Some(first) => {
                self.entries[first].1 = value.to_string();
                let mut i = 0;
                self.entries.retain(|(k, _)| {
                    let keep = i == first || !k.eq_ignore_ascii_case(name);
                    i += 1;
                    keep
                });
            }
            None => self.add(name, value),
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.entries.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }
}

/// A reply the filter sent itself (`proxy_send_local_response`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub details: String,
    pub grpc_status: i32,
}

impl LocalReply {
    pub fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap_or("<non-UTF-8 body>")
    }

    pub fn json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub level: LogLevel,
    pub context_id: u32,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignCall {
    pub context_id: u32,
    pub name: String,
    pub args: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCall {
    pub context_id: u32,
    pub token: u32,
    pub upstream: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
    pub timeout_ms: u32,
}

/// One `proxy_set_property` call, in call order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PropertySet {
    pub context_id: u32,
    pub path: Vec<String>,
    pub value: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metric {
    pub name: String,
    pub kind: MetricKind,
    /// Counter or gauge value.
    pub value: i64,
    /// Every value recorded into a histogram, in order.
    pub samples: Vec<u64>,
}

/// The custom metrics a VM defined, by name.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub(crate) by_id: Vec<Metric>,
    pub(crate) ids: HashMap<String, u32>,
}

impl Metrics {
    pub fn get(&self, name: &str) -> Option<&Metric> {
        self.ids.get(name).and_then(|id| self.by_id.get(*id as usize))
    }

    pub fn counter(&self, name: &str) -> Option<u64> {
        self.get(name).filter(|m| m.kind == MetricKind::Counter).map(|m| m.value as u64)
    }

    pub fn gauge(&self, name: &str) -> Option<i64> {
        self.get(name).filter(|m| m.kind == MetricKind::Gauge).map(|m| m.value)
    }

    pub fn histogram(&self, name: &str) -> Option<&[u64]> {
        self.get(name).filter(|m| m.kind == MetricKind::Histogram).map(|m| m.samples.as_slice())
    }

    /// Every metric, sorted by name.
    pub fn all(&self) -> Vec<&Metric> {
        let mut v: Vec<&Metric> = self.by_id.iter().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Metrics whose name starts with `prefix` (e.g. a metric family with its tag suffixes).
    pub fn with_prefix(&self, prefix: &str) -> Vec<&Metric> {
        self.all().into_iter().filter(|m| m.name.starts_with(prefix)).collect()
    }
}

/// Shared data and queues: shared between the plugins of one `Harness`, as Envoy shares them
/// between the worker VMs of one vm_id.
#[derive(Debug, Default)]
pub(crate) struct SharedStore {
    pub data: HashMap<String, (Vec<u8>, u32)>,
    pub queue_ids: HashMap<(String, String), u32>,
    pub queues: Vec<VecDeque<Vec<u8>>>,
}

/// One direction (request or response) of a stream, as Envoy's filter manager sees it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Direction {
    pub headers: Headers,
    pub trailers: Headers,
    pub headers_seen: bool,
    pub trailers_seen: bool,
    /// Snapshot taken when iteration continued past this filter.
    pub forwarded_headers: Option<Headers>,
    pub forwarded_trailers: Option<Headers>,
    /// Body data held back by `StopIterationAndBuffer`, visible to the guest as the body buffer.
    pub buffered: Vec<u8>,
    pub forwarded_body: Vec<u8>,
    pub forwarded_chunks: Vec<Vec<u8>>,
    /// The end of this direction was seen by the guest / was passed on.
    pub end_seen: bool,
    pub end_forwarded: bool,
    /// The guest called `proxy_continue_stream` for this direction during the last call.
    pub continue_requested: bool,
}

impl Direction {
    /// Passes the held headers (once) and the buffered body on, like Envoy does when
    /// iteration continues.
    pub fn forward(&mut self) {
        if self.forwarded_headers.is_none() {
            self.forwarded_headers = Some(self.headers.clone());
        }
        if !self.buffered.is_empty() {
            let chunk = std::mem::take(&mut self.buffered);
            self.forwarded_body.extend_from_slice(&chunk);
            self.forwarded_chunks.push(chunk);
        }
        if self.end_seen {
            self.end_forwarded = true;
        }
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct StreamState {
    pub created: bool,
    pub request: Direction,
    pub response: Direction,
    pub local_replies: Vec<LocalReply>,
    /// The first local reply went through the filter's response callbacks.
    pub reply_delivered: bool,
    /// Reset through `proxy_close_stream`.
    pub closed: bool,
    /// Filter state set by the guest (`proxy_set_property`), by path.
    pub properties: BTreeMap<Vec<String>, Vec<u8>>,
    /// Properties the scenario provides (`request.path`, ...), by path.
    pub host_properties: BTreeMap<Vec<String>, Vec<u8>>,
    pub done: bool,
}

impl StreamState {
    /// After a local reply or a reset Envoy stops calling the filter's request/response path.
    pub fn finished(&self) -> bool {
        self.closed || !self.local_replies.is_empty()
    }
}

/// The response to an `proxy_http_call`, visible to the guest during
/// `proxy_on_http_call_response`.
#[derive(Clone, Debug, Default)]
pub(crate) struct CallResponse {
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
}

/// Everything proxy-wasm about one VM.
#[derive(Debug)]
pub(crate) struct VmState {
    pub log_level: LogLevel,
    pub echo_logs: bool,
    pub clock_ns: u64,
    pub tick_period_ms: u32,
    pub vm_config: Vec<u8>,
    pub plugin_config: Vec<u8>,
    pub root_id: u32,
    pub active_context: u32,
    pub streams: HashMap<u32, StreamState>,
    pub root_properties: BTreeMap<Vec<String>, Vec<u8>>,
    pub host_properties: BTreeMap<Vec<String>, Vec<u8>>,
    pub logs: Vec<LogEntry>,
    pub property_sets: Vec<PropertySet>,
    pub metrics: Metrics,
    pub foreign_calls: Vec<ForeignCall>,
    pub http_calls: Vec<HttpCall>,
    /// Status `proxy_http_call` answers with (0 = Ok and a token).
    pub http_call_status: u32,
    pub next_token: u32,
    pub call_response: Option<CallResponse>,
    pub shared: Arc<Mutex<SharedStore>>,
    /// Things the guest did that Envoy would reject or silently ignore.
    pub violations: Vec<String>,
    pub done_calls: u32,
    pub host_calls: HostCalls,
}

impl VmState {
    pub fn new(shared: Arc<Mutex<SharedStore>>) -> Self {
        VmState {
            log_level: LogLevel::Info,
            echo_logs: false,
            // 2025-01-01T00:00:00Z: a fixed, plausible wall clock.
            clock_ns: 1_735_689_600_000_000_000,
            tick_period_ms: 0,
            vm_config: Vec::new(),
            plugin_config: Vec::new(),
            root_id: 1,
            active_context: 1,
            streams: HashMap::new(),
            root_properties: BTreeMap::new(),
            host_properties: BTreeMap::new(),
            logs: Vec::new(),
            property_sets: Vec::new(),
            metrics: Metrics::default(),
            foreign_calls: Vec::new(),
            http_calls: Vec::new(),
            http_call_status: 0,
            next_token: 1,
            call_response: None,
            shared,
            violations: Vec::new(),
            done_calls: 0,
            host_calls: HostCalls::default(),
        }
    }

    /// The stream the current host call acts on, if the active context is a stream.
    pub fn active_stream(&mut self) -> Option<&mut StreamState> {
        self.streams.get_mut(&self.active_context)
    }

    pub fn violation(&mut self, what: String) {
        self.violations.push(format!("context {}: {what}", self.active_context));
    }
}

/// How often the guest called each host function, and how many bytes crossed the boundary: a
/// cheap profile of a scenario (which calls a request costs, how often a body is copied).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostCalls {
    /// Calls per `env` import (WASI calls are not counted).
    pub by_name: BTreeMap<&'static str, u64>,
    /// Bytes the host read out of guest memory (header names and values, bodies set, logs, ...).
    pub bytes_from_guest: u64,
    /// Bytes the host handed to the guest through its allocator (bodies, headers, properties).
    pub bytes_to_guest: u64,
    /// Calls into the guest (callbacks), and the wall time spent in them.
    pub guest_calls: u64,
    pub guest_time: std::time::Duration,
}

impl HostCalls {
    /// Calls of one host function.
    pub fn count(&self, name: &str) -> u64 {
        self.by_name.get(name).copied().unwrap_or(0)
    }

    /// Calls of every host function.
    pub fn total(&self) -> u64 {
        self.by_name.values().sum()
    }
}

/// Watches the growth of the guest's linear memory (wasmtime asks it before every `memory.grow`)
/// and refuses growth past an optional limit, as a VM with a memory budget would.
#[derive(Clone, Debug, Default)]
pub(crate) struct MemoryWatch {
    pub limit: Option<usize>,
    /// The largest size the guest asked for, granted or not.
    pub largest_request: usize,
    /// Growth requests refused (past the limit).
    pub refused: u64,
}

impl wasmtime::ResourceLimiter for MemoryWatch {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.largest_request = self.largest_request.max(desired);
        let ok = self.limit.is_none_or(|limit| desired <= limit);
        if !ok {
            self.refused += 1;
        }
        Ok(ok)
    }

    fn table_growing(&mut self, _current: usize, _desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

/// The data of a wasmtime `Store`.
pub(crate) struct HostState {
    pub wasi: WasiP1Ctx,
    pub vm: VmState,
    pub memory: MemoryWatch,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_keeps_the_first_position_and_drops_duplicates() {
        let mut h = Headers::from_pairs(&[("a", "1"), ("X-Dup", "1"), ("b", "2"), ("x-dup", "2")]);
        h.replace("x-DUP", "new");
        assert_eq!(h.iter().collect::<Vec<_>>(), vec![("a", "1"), ("x-dup", "new"), ("b", "2")]);
        h.replace("c", "3");
        assert_eq!(h.get("C"), Some("3"));
        h.remove("A");
        assert!(!h.contains("a"));
    }

    #[test]
    fn forward_passes_held_data_once() {
        let mut d = Direction { headers: Headers::from_pairs(&[(":status", "200")]), ..Default::default() };
        d.buffered = b"ab".to_vec();
        d.forward();
        d.headers.add("late", "x");
        d.buffered = b"c".to_vec();
        d.end_seen = true;
        d.forward();
        assert_eq!(d.forwarded_headers.map(|h| h.len()), Some(1));
        assert_eq!(d.forwarded_body, b"abc");
        assert_eq!(d.forwarded_chunks.len(), 2);
        assert!(d.end_forwarded && d.buffered.is_empty());
    }
}
