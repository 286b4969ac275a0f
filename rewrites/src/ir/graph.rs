//! `ir::Graph`: a petgraph DAG of typed nodes. Nodes are added in topological order (every
//! input must already exist), so insertion order is a valid execution order.

use std::fmt;

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;

use crate::dtype::DType;
use crate::ir::op::Op;
use crate::sym::{shape_string, SymDim};

/// Element type and symbolic shape of a value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Vec<SymDim>,
}

impl TensorType {
    pub fn new(dtype: DType, shape: Vec<SymDim>) -> TensorType {
        TensorType { dtype, shape }
    }

    /// The type of a constant: its dtype and its (concrete) shape.
    pub fn of(t: &crate::tensor::Tensor) -> TensorType {
        TensorType::new(t.dtype(), t.shape.iter().map(|&d| SymDim::from(d)).collect())
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements, symbolically.
    pub fn numel(&self) -> SymDim {
        self.shape.iter().cloned().product()
    }

    /// Size in bytes, symbolically.
    pub fn bytes(&self) -> SymDim {
        self.numel() * SymDim::from(self.dtype.size_bytes() as i64)
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.dtype, shape_string(&self.shape))
    }
}

/// One output of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueRef {
    pub node: NodeIndex,
    pub output: usize,
}

#[derive(Clone, Debug)]
pub struct Node {
    /// The model's node name (or a generated one), used in every message about this node.
    pub name: String,
    pub op: Op,
    /// Input slots in ONNX order; `None` is an absent optional input.
    pub inputs: Vec<Option<ValueRef>>,
    pub outputs: Vec<TensorType>,
}

/// Edge weight: which output of the source feeds which input slot of the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edge {
    pub output: usize,
    pub input: usize,
}

#[derive(Clone, Debug)]
pub struct GraphOutput {
    pub name: String,
    pub value: ValueRef,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub dag: DiGraph<Node, Edge>,
    /// The `Op::Input` nodes, in the model's input order.
    pub inputs: Vec<NodeIndex>,
    pub outputs: Vec<GraphOutput>,
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    /// Adds a node whose inputs already exist; `Op::Input` nodes are also recorded as graph inputs.
    pub fn add_node(&mut self, node: Node) -> NodeIndex {
        for v in node.inputs.iter().flatten() {
            assert!(v.node.index() < self.dag.node_count(), "input of '{}' added before its producer", node.name);
            assert!(v.output < self.dag[v.node].outputs.len(), "'{}' reads a missing output", node.name);
        }
        let edges: Vec<(NodeIndex, Edge)> = node
            .inputs
            .iter()
            .enumerate()
            .filter_map(|(slot, v)| v.map(|v| (v.node, Edge { output: v.output, input: slot })))
            .collect();
        let is_input = matches!(node.op, Op::Input { .. });
        let ix = self.dag.add_node(node);
        for (src, e) in edges {
            self.dag.add_edge(src, ix, e);
        }
        if is_input {
            self.inputs.push(ix);
        }
        ix
    }

    pub fn node(&self, ix: NodeIndex) -> &Node {
        &self.dag[ix]
    }

    pub fn value_type(&self, v: ValueRef) -> &TensorType {
        &self.dag[v.node].outputs[v.output]
    }

    /// Node indices in execution (insertion) order.
    pub fn node_indices(&self) -> impl Iterator<Item = NodeIndex> + '_ {
        self.dag.node_indices()
    }

    /// Nodes that read any output of `ix`.
    pub fn consumers(&self, ix: NodeIndex) -> Vec<NodeIndex> {
        let mut v: Vec<NodeIndex> = self.dag.neighbors_directed(ix, Direction::Outgoing).collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn node_count(&self) -> usize {
        self.dag.node_count()
    }
}
