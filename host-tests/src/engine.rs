//! The process-wide wasmtime engine, the linker with every host import, and the compiled
//! module cache: compiling the filter is the slow part (seconds of CPU with Cranelift), so each
//! test binary does it once, and the machine code is kept on disk for the next test binaries
//! (keyed by the module's SHA-256; `LLMGW_HOST_NO_MODULE_CACHE=1` turns that off).

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
    let cached = cache_path(bytes);
    if let Some(path) = &cached {
        // SAFETY: the file is what `Module::serialize` wrote for these exact bytes (the name is
        // their SHA-256) into the build directory, renamed into place only once complete;
        // wasmtime refuses, with an error, a file from another version or engine configuration.
        if let Ok(module) = unsafe { Module::deserialize_file(&rt.engine, path) } {
            return Ok(module);
        }
    }
    let module = Module::new(&rt.engine, bytes).map_err(|e| HostError::Load(format!("{name}: {e:?}")))?;
    if let (Some(path), Ok(code)) = (cached, module.serialize()) {
        // Best effort: a unique temporary name, then an atomic rename.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, code).is_ok() && std::fs::rename(&tmp, &path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        if let Some(dir) = path.parent() {
            prune(dir, 6);
        }
    }
    Ok(module)
}

/// Keeps the `keep` most recent modules of the cache (each filter build adds one of ~4 MB).
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (_, old) in files.into_iter().skip(keep) {
        let _ = std::fs::remove_file(old);
    }
}

/// Where the machine code of `bytes` is kept: `<target>/llmgw-host-modules/<sha256>.cwasm`.
fn cache_path(bytes: &[u8]) -> Option<PathBuf> {
    use sha2::Digest;
    if std::env::var_os("LLMGW_HOST_NO_MODULE_CACHE").is_some() {
        return None;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("llmgw-host-modules");
    std::fs::create_dir_all(&dir).ok()?;
    let hash: String = sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    Some(dir.join(format!("{hash}.cwasm")))
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
