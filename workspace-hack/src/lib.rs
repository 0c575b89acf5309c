//! No code: see Cargo.toml. This crate only unifies the features of the host crates' dependencies.
