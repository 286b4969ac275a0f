//! quilt's compiler, free of FFI and CUDA: models come in as [`source::SourceGraph`] (from ONNX
//! protobuf or ORT's `OrtGraph`), are imported into [`ir::Graph`] with symbolic shapes, and leave as
//! a [`plan::Plan`] that a backend in `quilt-kernels` executes.

pub mod dtype;
pub mod error;
pub mod import;
pub mod ir;
pub mod lower;
pub mod onnx;
pub mod plan;
pub mod source;
pub mod sym;
pub mod tensor;

pub use dtype::DType;
pub use error::{Error, Result};
pub use ir::{Graph, Op, TensorType};
pub use plan::Plan;
pub use sym::SymDim;
pub use tensor::{Tensor, TensorData};

/// Turns an imported graph into an executable plan. Today this lowers one node to one step;
/// the e-graph optimizer replaces it behind this signature.
pub fn optimize(graph: &Graph) -> Result<Plan> {
    lower::lower(graph)
}
