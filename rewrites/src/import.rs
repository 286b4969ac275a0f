//! `SourceGraph` → `ir::Graph`: op by op, with shape inference over symbolic dims and symbolic
//! evaluation of shape-computing subgraphs. (Being written.)

use crate::error::Result;
use crate::ir::Graph;
use crate::source::SourceGraph;

#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Turn nodes quilt cannot run into `Op::Opaque` instead of failing (GetCapability uses this).
    pub lenient: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum NodeStatus {
    Supported,
    Unsupported(String),
}

pub struct Imported {
    pub graph: Graph,
    /// Parallel to `SourceGraph::nodes`.
    pub node_status: Vec<NodeStatus>,
}

pub fn import(_src: &SourceGraph, _opts: &ImportOptions) -> Result<Imported> {
    todo!("importer")
}
