//! The one error type of `quilt-models`.

use std::path::PathBuf;

/// Everything that can go wrong while loading fixtures, building sessions and comparing outputs.
/// Each message names the file, input, output or option involved.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },

    #[error("input `{input}`: {message}")]
    Input { input: String, message: String },

    #[error("output `{output}`: {message}")]
    Output { output: String, message: String },

    #[error("command line: {0}")]
    Usage(String),

    /// ONNX Runtime refused something; `context` says what we were doing.
    #[error("{context}: {message}")]
    Ort { context: String, message: String },
}

impl ModelsError {
    pub fn ort(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        ModelsError::Ort { context: context.into(), message: err.to_string() }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelsError::Io { path: path.into(), source }
    }
}

pub type Result<T, E = ModelsError> = std::result::Result<T, E>;
