//! The one error type of `quilt-kernels`; messages name the plan step's model node and op, or the input.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("node '{node}' ({op}): {msg}")]
    Step { node: String, op: String, msg: String },
    #[error("input '{name}': {msg}")]
    Input { name: String, msg: String },
    #[error("plan: {0}")]
    Plan(String),
    /// The GPU, its driver or a CUDA library (no device, library missing, out of memory, …).
    #[error("cuda: {0}")]
    Device(String),
}

pub type Result<T> = std::result::Result<T, Error>;
