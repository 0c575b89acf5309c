//! llmgw: an AI gateway inside Envoy, as a proxy-wasm filter.
//!
//! Everything but `glue` is plain Rust: `glue` is the one module that talks to proxy-wasm, and
//! implements the small `host::Host` trait the rest of the logic is written against.

pub mod api;
pub mod auth;
pub mod body;
pub mod budget;
pub mod cache;
pub mod config;
pub mod error;
pub mod eventstream;
pub mod exchange;
pub mod headers;
pub mod host;
pub mod json;
pub mod metrics;
pub mod models;
pub mod multipart;
pub mod mutation;
pub mod pd;
pub mod picker;
pub mod plan;
pub mod request;
pub mod routing;
pub mod sort;
pub mod sse;
pub mod trace;
pub mod translate;
pub mod usage;
pub mod utc;
pub mod wire;

#[cfg(target_arch = "wasm32")]
mod glue;

#[cfg(test)]
mod testing;
