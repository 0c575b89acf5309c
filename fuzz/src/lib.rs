//! Fuzz targets for the llmgw filter (cargo-fuzz / libFuzzer). The targets drive the filter only
//! through its public API: `exchange::Exchange` on an in-memory `host::Host` ([`host::MemHost`]),
//! `config::parse`, `sse::Splitter`, `eventstream::Decoder` and the `json` scanners.

pub mod alloc;
pub mod check;
pub mod host;
pub mod input;
pub mod targets;

/// Called once by every fuzz target: a panic prints its message and location and aborts, without
/// capturing a Rust backtrace (that allocates megabytes, which `-malloc_limit_mb` would misreport
/// as an out-of-memory; libFuzzer prints the stack of the abort itself).
pub fn init() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("llmgw-fuzz: {info}");
        std::process::abort();
    }));
}
