//! `SourceGraph`: a model as an importer front end sees it (ONNX protobuf or ORT's `OrtGraph`),
//! before any interpretation. Both front ends fill this one type, and `import` turns it into
//! `ir::Graph`, so both produce the same IR by construction.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::dtype::DType;
use crate::tensor::Tensor;

/// An attribute value as stored in the model.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    String(String),
    Strings(Vec<String>),
    Tensor(Arc<Tensor>),
    /// Attribute kinds quilt never reads (graphs, sparse tensors, type protos, tensors of
    /// unsupported dtypes); the string says which.
    Other(String),
}

/// One dimension of a declared value type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceDim {
    Fixed(i64),
    /// A `dim_param` (becomes a symbol of that name).
    Named(String),
    /// Dynamic with no name (becomes a fresh symbol).
    Unknown,
}

/// A declared value: graph input/output or value_info entry.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueDecl {
    pub name: String,
    /// `None`: a tensor type quilt does not handle, or not a tensor (the raw ONNX code, if any,
    /// is in `onnx_type`).
    pub dtype: Option<DType>,
    pub onnx_type: i32,
    /// `None`: rank unknown.
    pub dims: Option<Vec<SourceDim>>,
}

/// An initializer.
#[derive(Clone, Debug)]
pub enum Initializer {
    Data(Arc<Tensor>),
    /// Shape and type only (graph-only models whose weights were stripped).
    Absent { dtype: DType, shape: Vec<usize> },
}

#[derive(Clone, Debug)]
pub struct SourceNode {
    pub name: String,
    pub op_type: String,
    /// "" for the default ONNX domain.
    pub domain: String,
    /// Value names; "" marks an absent optional input.
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: BTreeMap<String, Attr>,
}

#[derive(Clone, Debug, Default)]
pub struct SourceGraph {
    pub name: String,
    /// Opset of the default ONNX domain.
    pub opset: i64,
    /// Graph inputs that are not initializers, in order.
    pub inputs: Vec<ValueDecl>,
    pub outputs: Vec<ValueDecl>,
    pub initializers: BTreeMap<String, Initializer>,
    /// Declared types of intermediate values (may be empty).
    pub value_info: BTreeMap<String, ValueDecl>,
    /// In the model's order (topologically sorted, as ONNX requires).
    pub nodes: Vec<SourceNode>,
}
