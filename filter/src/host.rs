//! The small set of host operations the gateway logic needs. `glue` implements it on proxy-wasm;
//! tests implement it in memory. Keeping the logic behind this trait keeps it plain, testable Rust.

use crate::metrics::{Kind, Sample};

pub trait Host {
    fn set_request_header(&mut self, name: &str, value: &str);
    fn remove_request_header(&mut self, name: &str);
    /// The buffered request body (its first `size` bytes).
    fn request_body(&self, size: usize) -> Option<Vec<u8>>;
    /// Replaces the first `size` bytes of the request body.
    fn set_request_body(&mut self, size: usize, body: &[u8]);
    /// Appends to the request body.
    fn append_request_body(&mut self, body: &[u8]);

    /// Every response header, in one host call.
    fn response_headers(&self) -> Vec<(String, String)>;
    fn response_header(&self, name: &str) -> Option<String>;
    fn set_response_header(&mut self, name: &str, value: &str);
    fn remove_response_header(&mut self, name: &str);
    fn response_body(&self, size: usize) -> Option<Vec<u8>>;
    fn set_response_body(&mut self, size: usize, body: &[u8]);

    /// Answers the client directly; the request goes no further.
    fn send_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]);
    /// Writes filter state `wasm.<name>` (access log, ratelimit `hits_addend`).
    fn set_filter_state(&mut self, name: &str, value: &[u8]);
    /// Reads a property (filter state by name, or Envoy's attributes such as
    /// `upstream.request_attempt_count`); `None` when absent or unreadable.
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    /// Every request header, in one host call.
    fn request_headers(&self) -> Vec<(String, String)>;
    /// Replaces every request header, in one host call.
    fn set_request_headers(&mut self, headers: &[(String, String)]);
    /// Makes Envoy choose the route again, after headers it routes on changed.
    fn clear_route_cache(&mut self);
    fn now_nanos(&self) -> u64;
    /// Shared data (one store for every worker's VM): the value and its CAS token; `None` when absent.
    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Stores `value` if the key's CAS token still is `cas` (0: whatever it is); `false` when
    /// another writer came first (or the host refused).
    fn set_shared_data(&mut self, key: &str, value: &[u8], cas: u32) -> bool;
    /// The VM's id of a metric (defined on first use), or `None` when the host refuses it.
    fn define_metric(&mut self, kind: Kind, name: &str) -> Option<u32>;
    fn record_metric(&mut self, id: u32, kind: Kind, value: u64);
    /// Semantic cache: sends the embeddings call (a `dispatch_http_call`); its token, `None` when
    /// the host refused it (a host without calls: the request goes uncached). The answer arrives
    /// through `Exchange::on_embedding`.
    fn cache_embeddings_call(&mut self, _: &str, _: &[(String, String)], _: &[u8], _timeout_ms: u64) -> Option<u32> {
        None
    }
    /// The embeddings call's answer body, when its status is 2xx (`None`: failed or timed out).
    fn cache_embeddings_answer(&self, _body_size: usize) -> Option<Vec<u8>> {
        None
    }
    /// Resumes the request paused for the embeddings call.
    fn cache_resume_request(&mut self) {}
    /// Adds `delta` to the gauge `name` (defined on first use): every worker's changes add up.
    fn add_to_gauge(&mut self, name: &str, delta: i64) {
        self.record(&Sample { name: name.to_string(), kind: Kind::GaugeDelta, value: delta as u64 });
    }
    /// Defines (or finds) the sample's metric and records it.
    fn record(&mut self, sample: &Sample) {
        if let Some(id) = self.define_metric(sample.kind, &sample.name) {
            self.record_metric(id, sample.kind, sample.value);
        }
    }
}

/// What the filter chain should do after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Headers: stop iteration; bodies: stop and buffer.
    Pause,
}
