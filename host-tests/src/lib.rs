//! A proxy-wasm (ABI 0.2.1) host on wasmtime, to test the llmgw filter without Envoy.
//!
//! It loads the real `wasm32-wasip1` module (WASI preview 1 from wasmtime-wasi), implements
//! every host import proxy-wasm-rust-sdk 0.2.5 can declare, and drives the filter like Envoy's
//! filter manager: header/body/trailer callbacks, body buffering on `Pause`, local replies,
//! `proxy_continue_stream`. It records what passes upstream and downstream, logs, properties,
//! metrics and foreign calls, so tests assert on behaviour.
//!
//! ```no_run
//! use llmgw_host_tests::{Action, Harness};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let h = Harness::load()?;
//! let mut plugin = h.plugin("backends: [{name: openai, schema: OpenAI}]")?;
//! let mut s = plugin.stream();
//! s.request_headers(&[(":method", "POST"), (":path", "/v1/chat/completions")], false)?;
//! let a = s.request_body(br#"{"model":"gpt-4o","messages":[]}"#, true)?;
//! assert_eq!(a, Action::Continue);
//! assert_eq!(s.forwarded_request_headers().and_then(|h| h.get("x-llmgw-backend")), Some("openai"));
//! # Ok(()) }
//! ```
//!
//! Layout: `abi` (codes, wire formats), `memory` (guest memory), `imports` (host functions),
//! `state` (what the host keeps per VM and stream), `engine` (engine, linker, module cache),
//! `plugin` (the scenario API).

mod abi;
mod engine;
mod error;
mod imports;
mod memory;
mod plugin;
mod state;
pub mod stats;

pub use abi::{LogLevel, MetricKind};
pub use engine::{default_wasm_path, WASM_ENV};
pub use error::{HostError, Result};
pub use plugin::{Action, Harness, Plugin, PluginBuilder, Stream};
pub use state::{ForeignCall, Headers, HostCalls, HttpCall, LocalReply, LogEntry, Metric, Metrics, PropertySet};
