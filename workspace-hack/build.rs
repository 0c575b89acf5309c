// Cargo only resolves [build-dependencies] of a package with a build script: see Cargo.toml.
fn main() {}
