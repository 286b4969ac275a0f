//! Backends that execute a `quilt_rewrites::Plan`.

mod bind;
pub mod cpu;
pub mod cuda;
pub mod error;
mod plan_check;
pub mod resize_math;

pub use error::{Error, Result};
