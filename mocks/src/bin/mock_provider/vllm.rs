//! vLLM behaviour for the picker's tests: requests running (and `GET /metrics` in vLLM's names),
//! and a simulated prefix cache. A prompt's first token waits `--prefill-ms` scaled by the share of
//! its blocks (`--prefix-block-bytes` of the serialized prompt, chained) this server has not seen
//! before; so a repeated prefix is answered faster here than on a server that never saw it.
//! Tokens then come `--chunk-gap-ms` apart, as for every stream of the mock.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use serde_json::Value;

use super::RespBody;

/// Blocks the simulated cache holds; past it the cache starts over (as an evicting one would).
const MAX_CACHED_BLOCKS: usize = 100_000;

#[derive(Default)]
pub struct Engine {
    running: Arc<AtomicU64>,
    cached: Mutex<HashSet<u64>>,
    /// Prompt blocks asked about and found (vLLM counts tokens; the mock counts blocks).
    queries: AtomicU64,
    hits: AtomicU64,
    served: AtomicU64,
}

/// Counts a request as running until its response body is gone (finished, or dropped because the
/// client went away).
pub struct Running(Arc<AtomicU64>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Engine {
    pub fn enter(&self) -> Running {
        self.running.fetch_add(1, Ordering::SeqCst);
        self.served.fetch_add(1, Ordering::Relaxed);
        Running(self.running.clone())
    }

    /// The time before the first token of this request: `prefill` for the uncached share of its
    /// prompt blocks. Records the blocks as cached.
    pub fn prefill(&self, body: &[u8], prefill: Duration, block_bytes: usize) -> Duration {
        let Ok(json) = serde_json::from_slice::<Value>(body) else { return Duration::ZERO };
        let prompt = ["messages", "prompt", "input"]
            .iter()
            .filter_map(|k| json.get(*k))
            .map(Value::to_string)
            .collect::<String>();
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        let blocks: Vec<u64> = prompt
            .as_bytes()
            .chunks(block_bytes.max(1))
            .map(|block| {
                hash = super::fnv1a(block, hash);
                hash
            })
            .collect();
        if blocks.is_empty() {
            return prefill;
        }
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        let hits = blocks.iter().take_while(|b| cached.contains(b)).count();
        if cached.len() + blocks.len() > MAX_CACHED_BLOCKS {
            cached.clear();
        }
        cached.extend(blocks.iter().copied());
        self.queries.fetch_add(blocks.len() as u64, Ordering::Relaxed);
        self.hits.fetch_add(hits as u64, Ordering::Relaxed);
        let uncached = (blocks.len() - hits) as u32;
        prefill * uncached / blocks.len() as u32
    }

    /// `GET /metrics`: Prometheus text with vLLM's metric names.
    pub fn metrics(&self, model: &str, gpu_cache_usage: Option<f64>) -> String {
        let cached = self.cached.lock().map(|c| c.len()).unwrap_or(0);
        let usage = gpu_cache_usage.unwrap_or(cached as f64 / MAX_CACHED_BLOCKS as f64);
        let label = format!("{{model_name=\"{}\"}}", model.replace(['"', '\\', '\n'], "_"));
        let mut out = String::new();
        for (name, kind, value) in [
            ("vllm:num_requests_running", "gauge", self.running.load(Ordering::SeqCst).to_string()),
            ("vllm:num_requests_waiting", "gauge", "0".to_string()),
            ("vllm:gpu_cache_usage_perc", "gauge", format!("{usage:.4}")),
            ("vllm:prefix_cache_queries_total", "counter", self.queries.load(Ordering::Relaxed).to_string()),
            ("vllm:prefix_cache_hits_total", "counter", self.hits.load(Ordering::Relaxed).to_string()),
            ("vllm:request_success_total", "counter", self.served.load(Ordering::Relaxed).to_string()),
        ] {
            out.push_str(&format!("# TYPE {name} {kind}\n{name}{label} {value}\n"));
        }
        out
    }
}

/// A response body that keeps its request counted as running while it lasts.
pub fn guarded(inner: RespBody, running: Running) -> RespBody {
    Guarded { inner, _running: running }.boxed()
}

struct Guarded {
    inner: RespBody,
    _running: Running,
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
