//! The process-wide wasmtime engine, the linker with every host import, and the compiled
//! module cache (compiling the filter is the slow part, so each test binary does it once).

use crate::error::{HostError, Result};
use crate::imports;
use crate::state::HostState;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use wasmtime::{Config, Engine, Linker, Module};

/// One epoch tick. A guest call may run for `timeout / EPOCH_TICK` ticks before it is
/// interrupted, so an endless loop fails a test instead of hanging it.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Environment variable naming the `.wasm` under test.
pub const WASM_ENV: &str = "LLMGW_WASM";

pub(crate) struct Runtime {
    pub engine: Engine,
    pub linker: Linker<HostState>,
}

/// The shared engine and linker. The epoch ticker thread lives as long as the process.
pub(crate) fn runtime() -> Result<&'static Runtime> {
    static RUNTIME: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let mut config = Config::new();
            config.epoch_interruption(true);
            let engine = Engine::new(&config).map_err(|e| format!("engine: {e:?}"))?;
            let mut linker = Linker::new(&engine);
            wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut HostState| &mut s.wasi)
                .map_err(|e| format!("WASI imports: {e:?}"))?;
            imports::add_to_linker(&mut linker).map_err(|e| format!("proxy-wasm imports: {e:?}"))?;
            let ticker = engine.clone();
            std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || loop {
                    std::thread::sleep(EPOCH_TICK);
                    ticker.increment_epoch();
                })
                .map_err(|e| format!("epoch thread: {e}"))?;
            Ok(Runtime { engine, linker })
        })
        .as_ref()
        .map_err(|e| HostError::Load(e.clone()))
}

/// Where the filter is: `$LLMGW_WASM`, else the workspace's release build, else the release
/// build under `$CARGO_TARGET_DIR`.
pub fn default_wasm_path() -> PathBuf {
    if let Some(p) = std::env::var_os(WASM_ENV) {
        return PathBuf::from(p);
    }
    let rel = Path::new("wasm32-wasip1/release/llmgw_filter.wasm");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target").join(rel);
    if !workspace.exists() {
        if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
            let alt = PathBuf::from(dir).join(rel);
            if alt.exists() {
                return alt;
            }
        }
    }
    workspace
}

pub(crate) fn compile(path: &Path) -> Result<Module> {
    let bytes = std::fs::read(path).map_err(|e| {
        HostError::Load(format!(
            "{}: {e} (build it with `cargo build --release -p llmgw-filter --target wasm32-wasip1`, or set {WASM_ENV})",
            path.display()
        ))
    })?;
    compile_bytes(&path.display().to_string(), &bytes)
}

pub(crate) fn compile_bytes(name: &str, bytes: &[u8]) -> Result<Module> {
    let rt = runtime()?;
    Module::new(&rt.engine, bytes).map_err(|e| HostError::Load(format!("{name}: {e:?}")))
}

/// The default module, compiled once per process.
pub(crate) fn default_module() -> Result<(PathBuf, Module)> {
    static MODULE: OnceLock<std::result::Result<(PathBuf, Module), String>> = OnceLock::new();
    MODULE
        .get_or_init(|| {
            let path = default_wasm_path();
            compile(&path).map(|m| (path, m)).map_err(|e| e.to_string())
        })
        .clone()
        .map_err(HostError::Load)
}

/// Keeps the shared store alive between plugins of a harness.
pub(crate) type Shared = Arc<std::sync::Mutex<crate::state::SharedStore>>;
