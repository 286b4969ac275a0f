//! quilt's compiler, free of FFI and CUDA: models come in as [`source::SourceGraph`] (from ONNX
//! protobuf or ORT's `OrtGraph`), are imported into [`ir::Graph`] with symbolic shapes, and leave as
//! a [`plan::Plan`] that a backend in `quilt-kernels` executes.

pub mod dtype;
pub mod egraph;
pub mod epilogue;
pub mod error;
pub mod import;
pub mod ir;
pub mod layout;
pub mod lower;
pub mod memory_plan;
pub mod onnx;
pub mod optimize;
pub mod plan;
pub mod precision;
pub mod projections;
pub mod source;
pub mod stitch;
pub mod sym;
pub mod tensor;

pub use dtype::DType;
pub use error::{Error, Result};
pub use ir::{Graph, Op, TensorType};
pub use plan::Plan;
pub use sym::SymDim;
pub use tensor::{Tensor, TensorData};

pub use optimize::{optimize_graph, optimize_with, OptimizeOptions};

/// Turns an imported graph into an executable plan with the default options: the e-graph
/// optimizer (`crate::egraph`), then lowering one node to one step.
pub fn optimize(graph: &Graph) -> Result<Plan> {
    optimize_with(graph, &OptimizeOptions::default())
}
