//! `quilt sd`: Stable Diffusion pipelines over exported ONNX directories, run through ONNX Runtime
//! with quilt. Schedulers and tokenizers are plain Rust.

pub mod error;
pub mod schedulers;
pub mod tokenizer;

pub use error::{SdError, SdResult};
