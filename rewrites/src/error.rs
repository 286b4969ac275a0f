//! The one error type of `quilt-rewrites`. Every message names the model node (and op) or the
//! value it is about.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("node '{node}' ({op}): {msg}")]
    Node { node: String, op: String, msg: String },
    #[error("value '{name}': {msg}")]
    Value { name: String, msg: String },
    #[error("model: {0}")]
    Model(String),
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn node(node: &str, op: &str, msg: impl Into<String>) -> Error {
        Error::Node { node: node.to_string(), op: op.to_string(), msg: msg.into() }
    }
}
