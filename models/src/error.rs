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

    /// A pipeline directory file that is missing or does not hold what the pipeline expects.
    #[error("{path}: {message}")]
    Pipeline { path: PathBuf, message: String },

    /// A `scheduler_config.json` value quilt does not implement or that is out of range.
    #[error("scheduler config `{key}`: {message}")]
    SchedulerConfig { key: String, message: String },

    /// A scheduler used out of order (e.g. `step` with a timestep that is not in the schedule).
    #[error("scheduler: {0}")]
    Scheduler(String),

    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },

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

    pub fn pipeline(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ModelsError::Pipeline { path: path.into(), message: message.into() }
    }

    pub fn config(key: &str, message: impl Into<String>) -> Self {
        ModelsError::SchedulerConfig { key: key.to_string(), message: message.into() }
    }
}

pub type Result<T, E = ModelsError> = std::result::Result<T, E>;
