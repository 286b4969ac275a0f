//! Residual epilogues: `y + r` after a convolution or a linear layer runs inside the library
//! call that computes `y`.
//!
//! SD's ResNet blocks end in `conv2(h) + shortcut(x)`, its transformer blocks in
//! `proj_out(h) + x` and, per block, `to_out(attn) + h` and `ff.net.2(g) + h`. As separate steps
//! (or as the first op of a stitched region) each of those adds reads `y` back from memory once
//! more; cuDNN's graph API adds a residual in the convolution's epilogue and cuBLASLt adds a full
//! C (β = 1) next to its bias epilogue, so the sum costs nothing extra there.
//!
//! The pass rewrites `Add(y, r)` (either operand order) into the producer of `y` with `r` as
//! its optional fourth input (`Op::Conv`/`Op::Gemm` document it) when
//! - `y` comes from a channels-last 2-D `Conv` (made by `crate::layout`: the backends that have
//!   it run the residual in cuDNN) or from a `Gemm` whose C is absent or a bias row with β = 1
//!   (cuBLASLt's bias epilogue plus C), of f32/f16/bf16, that has no residual yet;
//! - between the producer and the Add there are only `Reshape`s (the `linear-bias` rule leaves
//!   `Reshape(Gemm(Reshape(x), W, b))`), and the producer's output and every Reshape's output
//!   have exactly one reader and are not graph outputs (nothing else sees the unsummed value);
//! - `r` and `y` both have exactly the Add's output type (no broadcasting, no dtype change) and
//!   `r` is not `y` itself.
//!
//! `r` is reshaped (a view) to the producer's output shape where the chain reshaped `y`.
//!
//! The fused node is emitted where the Add was (every input of the producer and `r` exist by
//! then; in a ResNet block the shortcut convolution often comes after `conv2`). Aliasing: the
//! fused step's output is a fresh buffer, never `r`'s memory — `memory_plan` writes an output
//! over an input only for elementwise steps, and `r` is live while the step runs, so no free
//! slot holds it (cuDNN rejects a residual that aliases its output).
//!
//! A fixed, deterministic walk like `crate::layout`: it runs after the layout pass and before
//! stitching (`OptimizeOptions::residual_epilogues`, which also says whether convolutions take
//! part: cuDNN has no precompiled engine for some conv + bias + residual graphs and compiles one
//! per shape, which a first call at a new shape then waits for).

use std::collections::{HashMap, HashSet};

use petgraph::graph::NodeIndex;

use crate::dtype::DType;
use crate::error::Result;
use crate::ir::graph::{GraphOutput, Node, ValueRef};
use crate::ir::{BinaryOp, Graph, Op, TensorType};
use crate::sym::SymDim;

/// What the pass did, for `quilt explain`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpilogueReport {
    /// Adds folded into a convolution.
    pub convs: usize,
    /// Adds folded into a Gemm.
    pub gemms: usize,
    /// Reshape nodes added (of residuals, and of fused outputs back to the Add's shape).
    pub reshapes_added: usize,
}

/// Which producers take residual adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpilogueTargets {
    pub convs: bool,
    pub gemms: bool,
}

impl EpilogueTargets {
    pub const ALL: EpilogueTargets = EpilogueTargets { convs: true, gemms: true };
    pub const NONE: EpilogueTargets = EpilogueTargets { convs: false, gemms: false };

    pub fn any(self) -> bool {
        self.convs || self.gemms
    }
}

/// One Add folded into its operand's producer.
struct Fusion {
    /// The Conv or Gemm node.
    producer: NodeIndex,
    /// The Add's other operand.
    residual: ValueRef,
}

/// `graph` with every residual Add that fits folded into its producer (see the module doc).
pub fn fuse_residuals(graph: &Graph, targets: EpilogueTargets) -> Result<(Graph, EpilogueReport)> {
    let outputs: HashSet<ValueRef> = graph.outputs.iter().map(|o| o.value).collect();
    let mut fusions: HashMap<NodeIndex, Fusion> = HashMap::new();
    // Nodes that disappear (Reshapes of the chain) or move to the Add (producers).
    let mut moved: HashSet<NodeIndex> = HashSet::new();
    for ix in graph.node_indices() {
        let node = graph.node(ix);
        if node.op != Op::Binary(BinaryOp::Add) || node.inputs.len() != 2 || node.outputs.len() != 1 {
            continue;
        }
        let (Some(a), Some(b)) = (node.inputs[0], node.inputs[1]) else { continue };
        // Try the second operand first: ONNX exports spell the ResNet block's sum
        // `shortcut + conv2(h)`.
        for (y, r) in [(b, a), (a, b)] {
            if let Some(chain) = fusible(graph, &outputs, &moved, node, y, r, targets) {
                let producer = *chain.last().expect("the chain ends in the producer");
                moved.extend(chain);
                fusions.insert(ix, Fusion { producer, residual: r });
                break;
            }
        }
    }
    let mut report = EpilogueReport::default();
    let mut new = Graph::new();
    let mut map: HashMap<ValueRef, ValueRef> = HashMap::new();
    let remap = |map: &HashMap<ValueRef, ValueRef>, v: Option<ValueRef>| v.map(|v| map[&v]);
    for ix in graph.node_indices() {
        if moved.contains(&ix) {
            continue;
        }
        let node = graph.node(ix);
        let Some(f) = fusions.get(&ix) else {
            let inputs = node.inputs.iter().map(|&v| remap(&map, v)).collect();
            let new_ix = new.add_node(Node { name: node.name.clone(), op: node.op.clone(), inputs, outputs: node.outputs.clone() });
            for k in 0..node.outputs.len() {
                map.insert(ValueRef { node: ix, output: k }, ValueRef { node: new_ix, output: k });
            }
            continue;
        };
        let producer = graph.node(f.producer);
        let y_ty = producer.outputs[0].clone();
        let mut r = map[&f.residual];
        if new.value_type(r).shape != y_ty.shape {
            // A residual that is itself a reshape of a value of y's shape (the previous linear
            // layer's output in a transformer block) is read as that value; else a view.
            let src = new.node(r.node);
            match src.inputs.first().copied().flatten() {
                Some(x) if src.op == Op::Reshape && *new.value_type(x) == y_ty => r = x,
                _ => {
                    r = reshape(&mut new, format!("{}/residual", node.name), r, y_ty.clone());
                    report.reshapes_added += 1;
                }
            }
        }
        let mut inputs: Vec<Option<ValueRef>> = producer.inputs.iter().map(|&v| remap(&map, v)).collect();
        inputs.resize(3, None);
        inputs.push(Some(r));
        let fused = new.add_node(Node { name: producer.name.clone(), op: producer.op.clone(), inputs, outputs: vec![y_ty.clone()] });
        let mut out = ValueRef { node: fused, output: 0 };
        if node.outputs[0].shape != y_ty.shape {
            out = reshape(&mut new, node.name.clone(), out, node.outputs[0].clone());
            report.reshapes_added += 1;
        }
        map.insert(ValueRef { node: ix, output: 0 }, out);
        match producer.op {
            Op::Conv { .. } => report.convs += 1,
            _ => report.gemms += 1,
        }
    }
    for o in &graph.outputs {
        new.outputs.push(GraphOutput { name: o.name.clone(), value: map[&o.value] });
    }
    Ok((new, report))
}

fn reshape(g: &mut Graph, name: String, x: ValueRef, to: TensorType) -> ValueRef {
    let ix = g.add_node(Node { name, op: Op::Reshape, inputs: vec![Some(x)], outputs: vec![to] });
    ValueRef { node: ix, output: 0 }
}

/// When `y + r` (the Add `add`) can run in `y`'s producer: the nodes from the Add's operand
/// back to the producer (Reshapes, then the producer last).
fn fusible(g: &Graph, outputs: &HashSet<ValueRef>, moved: &HashSet<NodeIndex>, add: &Node, y: ValueRef, r: ValueRef, targets: EpilogueTargets) -> Option<Vec<NodeIndex>> {
    let out_ty = &add.outputs[0];
    if y == r || g.value_type(y) != out_ty || g.value_type(r) != out_ty || !matches!(out_ty.dtype, DType::F32 | DType::F16 | DType::BF16) {
        return None;
    }
    // Walk back through Reshapes; every value on the way has one reader and is no graph output.
    let mut chain = Vec::new();
    let mut v = y;
    loop {
        let node = g.node(v.node);
        if outputs.contains(&v) || node.outputs.len() != 1 || g.consumers(v.node).len() != 1 || moved.contains(&v.node) {
            return None;
        }
        // One reader, but it may read the value twice (`Add(y, y)` is excluded above).
        chain.push(v.node);
        match &node.op {
            Op::Reshape => v = node.inputs.first().copied().flatten()?,
            op => return accepts_residual(g, op, node, targets).then_some(chain),
        }
    }
}

/// Whether `node` (the producer) may take a residual input.
fn accepts_residual(g: &Graph, op: &Op, node: &Node, targets: EpilogueTargets) -> bool {
    let y = &node.outputs[0];
    if node.inputs.len() > 3 || !matches!(y.dtype, DType::F32 | DType::F16 | DType::BF16) {
        return false;
    }
    match op {
        Op::Conv { channels_last: true, .. } => targets.convs && y.rank() == 4,
        Op::Gemm { beta, .. } if targets.gemms => match node.inputs.get(2).copied().flatten() {
            None => true,
            Some(c) => {
                let n = y.shape[1].clone();
                let shape = &g.value_type(c).shape;
                *beta == 1.0 && (*shape == [n.clone()] || *shape == [SymDim::konst(1), n])
            }
        },
        _ => false,
    }
}
