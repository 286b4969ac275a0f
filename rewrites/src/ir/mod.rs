//! The intermediate representation: typed ops over symbolic shapes.

pub mod graph;
pub mod op;
pub mod stitched;

pub use graph::{Edge, Graph, GraphOutput, Node, TensorType, ValueRef};
pub use op::{AttentionColumns, BinaryOp, CoordMode, NearestMode, Op, PadMode, ReduceKind, ResizeMode, SymScale, UnaryOp};
pub use stitched::{Operand, RegionInput, RegionNode, RegionOp, RegionOutput, RowSpec, StitchedRegion};
