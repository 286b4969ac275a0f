//! The one error type of `quilt-provider`. Every message says what it is about: the ORT call,
//! the option key, the fused node, the model node (via the compiler's errors) or the input.

use ort_sys::OrtErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An ORT API call returned an error status.
    #[error("ORT {call} failed: {msg}")]
    Ort { call: &'static str, msg: String },
    /// A session option quilt does not know or cannot parse.
    #[error("option '{key}': {msg}")]
    Option { key: String, msg: String },
    /// The OrtGraph had something quilt cannot represent.
    #[error("graph: {0}")]
    Graph(String),
    /// quilt's GPU device: discovery, memory infos, allocator, copies, streams.
    #[error("GPU device: {0}")]
    Gpu(String),
    #[error(transparent)]
    Compiler(#[from] quilt_rewrites::Error),
    #[error(transparent)]
    Kernels(#[from] quilt_kernels::Error),
    /// Run-time input or output mismatch at the ORT boundary.
    #[error("input '{name}': {msg}")]
    Input { name: String, msg: String },
    #[error("output '{name}': {msg}")]
    Output { name: String, msg: String },
    /// Any error while compiling or running one fused node, with the fused node's name.
    #[error("fused node '{node}': {source}")]
    Fused { node: String, source: Box<Error> },
    #[error("internal error (panic) in {place}: {msg}")]
    Panic { place: &'static str, msg: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn in_fused_node(self, node: &str) -> Error {
        Error::Fused { node: node.to_string(), source: Box::new(self) }
    }

    /// The ORT error code this error is reported with: the caller's fault (bad option, bad input)
    /// is `ORT_INVALID_ARGUMENT`, everything else `ORT_EP_FAIL`.
    pub fn code(&self) -> OrtErrorCode {
        match self {
            Error::Option { .. } | Error::Input { .. } => OrtErrorCode::ORT_INVALID_ARGUMENT,
            Error::Kernels(quilt_kernels::Error::Input { .. }) => OrtErrorCode::ORT_INVALID_ARGUMENT,
            Error::Fused { source, .. } => source.code(),
            _ => OrtErrorCode::ORT_EP_FAIL,
        }
    }
}
