//! quilt models and pipelines: the fixture manifest, seeded test inputs, and the quilt-vs-CPU-EP
//! comparison that the `quilt run` CLI and the `ort` integration tests share.

pub mod cli;
pub mod compare;
pub mod device_io;
pub mod equivalence;
pub mod error;
pub mod explain;
pub mod manifest;
pub mod plan_dump;
pub mod random;
pub mod runtime;
pub mod sd;
pub mod tensor;

pub use error::{ModelsError, Result};

// Compiles the README's Rust snippet (`cargo test --doc -p quilt-models`), so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
