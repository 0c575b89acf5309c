//! `wasi-runner`: runs a wasm32-wasip1 command module (e.g. a `cargo test` binary) on wasmtime.
//!
//! Used as the cargo runner for `--target wasm32-wasip1`:
//!
//! ```text
//! CARGO_TARGET_WASM32_WASIP1_RUNNER=target/debug/wasi-runner cargo test -p llmgw-filter --target wasm32-wasip1
//! ```
//!
//! `wasi-runner MODULE.wasm [ARGS...]`: stdio and environment are inherited, the current directory
//! is preopened as `.` and under its absolute path (so are `$CARGO_MANIFEST_DIR` and the directories
//! in `$WASI_RUNNER_DIRS`), arguments are passed after the module name, and the module's exit code
//! (`proc_exit`) becomes this process's exit code. Imports the module has that WASI does not provide
//! (for a proxy-wasm crate, the `proxy_*` host functions) trap if called.

use std::process::ExitCode;

use wasmtime::error::Context as _;
use wasmtime::{bail, Config, Engine, Linker, Module, Store};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

fn run() -> wasmtime::Result<i32> {
    let mut argv = std::env::args().skip(1);
    let Some(module_path) = argv.next() else {
        bail!("usage: wasi-runner MODULE.wasm [ARGS...]");
    };
    let rest: Vec<String> = argv.collect();

    let engine = Engine::new(&Config::new())?;
    let module = Module::from_file(&engine, &module_path).with_context(|| format!("loading {module_path}"))?;

    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    p1::add_to_linker_sync(&mut linker, |cx| cx)?;
    linker.define_unknown_imports_as_traps(&module)?;

    let name = std::path::Path::new(&module_path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| module_path.clone());
    let mut args = vec![name];
    args.extend(rest);

    let mut builder = WasiCtxBuilder::new();
    builder.inherit_stdio().inherit_env().args(&args);
    // The current directory as `.` and, like every other preopened directory, also under its own
    // absolute path, so paths built from `env!("CARGO_MANIFEST_DIR")` work in tests.
    let mut dirs: Vec<std::path::PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        builder.preopened_dir(&cwd, ".", FsPerms::ReadWrite)?;
        dirs.push(cwd);
    }
    if let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") {
        dirs.push(dir.into());
    }
    if let Some(extra) = std::env::var_os("WASI_RUNNER_DIRS") {
        dirs.extend(std::env::split_paths(&extra));
    }
    let mut seen = std::collections::HashSet::new();
    for dir in dirs {
        let Ok(abs) = std::fs::canonicalize(&dir) else { continue };
        if seen.insert(abs.clone()) {
            builder.preopened_dir(&abs, abs.to_string_lossy(), FsPerms::ReadWrite)?;
        }
    }
    let mut store = Store::new(&engine, builder.build_p1());

    let instance = linker.instantiate(&mut store, &module)?;
    let start = instance
        .get_typed_func::<(), ()>(&mut store, "_start")
        .context("module has no `_start` export (not a command module)")?;
    match start.call(&mut store, ()) {
        Ok(()) => Ok(0),
        Err(e) => {
            if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                return Ok(exit.0);
            }
            Err(e)
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("wasi-runner: {e:?}");
            // A trap (e.g. a panic under panic=abort) is a failure, like a signal would be.
            ExitCode::from(101)
        }
    }
}
