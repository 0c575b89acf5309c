//! The compiler's version, for the baseline file: instruction counts depend on it.
use std::process::Command;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version =
        Command::new(rustc).arg("-V").output().ok().and_then(|o| String::from_utf8(o.stdout).ok()).unwrap_or_default();
    println!("cargo:rustc-env=LLMGW_PROFILE_RUSTC={}", version.trim());
    println!("cargo:rerun-if-changed=build.rs");
}
