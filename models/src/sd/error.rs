//! Errors of `quilt sd`: pipeline directories, scheduler configs, tokenizers and images. Each message
//! names the file, key or component involved. ORT and I/O failures keep the crate's `ModelsError`.

use std::path::PathBuf;

use crate::error::ModelsError;

#[derive(Debug, thiserror::Error)]
pub enum SdError {
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

    #[error("sd: {0}")]
    Usage(String),

    #[error(transparent)]
    Models(#[from] ModelsError),
}

impl SdError {
    pub fn pipeline(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        SdError::Pipeline { path: path.into(), message: message.into() }
    }

    pub fn config(key: &str, message: impl Into<String>) -> Self {
        SdError::SchedulerConfig { key: key.to_string(), message: message.into() }
    }
}

pub type SdResult<T> = std::result::Result<T, SdError>;
