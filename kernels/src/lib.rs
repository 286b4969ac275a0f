//! Backends that execute a `quilt_rewrites::Plan`.

pub mod cpu;
pub mod error;

pub use error::{Error, Result};
