//! `quilt sd`: Stable Diffusion pipelines over exported ONNX directories, run through ONNX Runtime
//! with quilt. Schedulers and tokenizers are plain Rust.

pub mod bundled;
pub mod cli;
pub mod denoise;
pub mod generate;
pub mod images;
pub mod models;
pub mod pipeline_dir;
pub mod schedulers;
pub mod tokenizer;
pub mod txt2img;
pub mod unet_io;

pub use crate::error::{ModelsError, Result};
