//! Channels-last layout: 2-D convolutions run on NHWC data, and the ops between them follow.
//!
//! cuDNN's tensor-core convolutions work on NHWC tensors; on NCHW data they either run slower
//! kernels or transpose internally (2–3× slower for SD's fp16 convolutions on the H100, see
//! `tests/bench/results/2026-11-25-conv-h100.md`). ONNX graphs are NCHW, so this pass rewrites
//! them: every 2-D `Conv` becomes `Conv { channels_last: true }` on `[N, H, W, C]` data with
//! `[M, kh, kw, C/g]` filters, and the values around it are kept channels-last for as long as
//! the ops reading them do not care (elementwise ops, `Concat`, `Resize`, GroupNorm in a
//! channels-last form), so that the transposes this needs appear only where the graph leaves
//! that world — and cancel against the model's own `Transpose` nodes where it already changes
//! layout (SD's transformer blocks permute `[N, C, H, W]` to `[N, H·W, C]` and back, which
//! becomes a plain reshape).
//!
//! How: every value of the old graph is held in the new graph as `(base, perm)`: the old value
//! equals `base` with its axes permuted by `perm` (`old axis i = base axis perm[i]`). Ordinary
//! ops produce `perm = identity`; channels-last ops produce the inverse of the channels-last
//! permutation; a `Transpose` node produces no node at all, only a composed `perm`. A reader
//! that needs the value in some layout gets `base` permuted by the composition — nothing when
//! that is the identity, a `Reshape` when only size-1 axes move, else one `Transpose` node
//! shared by every reader that needs the same layout. Constants are permuted at compile time.
//!
//! The pass is a fixed, deterministic walk (not an e-graph stage): it runs after extraction and
//! the precision pass and before stitching, when the backend has a channels-last convolution
//! (the CUDA backend with cuDNN); `OptimizeOptions::channels_last` turns it on.

use std::collections::HashMap;
use std::sync::Arc;

use petgraph::graph::NodeIndex;

use crate::dtype::DType;
use crate::error::Result;
use crate::ir::graph::{GraphOutput, Node, ValueRef};
use crate::ir::{Graph, Op, TensorType};
use crate::sym::SymDim;
use crate::tensor::Tensor;

/// What the pass may convert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayoutOptions {
    /// Emit `GroupNorm { channels_last: true }` (the backend must run it, e.g. in a stitched
    /// region); otherwise a GroupNorm reads NCHW data.
    pub group_norm: bool,
}

impl Default for LayoutOptions {
    fn default() -> LayoutOptions {
        LayoutOptions { group_norm: true }
    }
}

/// What the pass did, for `quilt explain`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayoutReport {
    pub convs: usize,
    pub group_norms: usize,
    /// Elementwise, Concat and Resize nodes that run on channels-last data.
    pub followers: usize,
    /// Transpose nodes before and after the pass (the model's own, and layout changes at the
    /// edge of the channels-last world; cancelled pairs are gone).
    pub transposes_before: usize,
    pub transposes_after: usize,
    /// Reshape nodes the pass added (layout changes that only move size-1 axes).
    pub reshapes_added: usize,
}

/// `graph` with its 2-D convolutions channels-last (see the module doc).
pub fn to_channels_last(graph: &Graph, opts: &LayoutOptions) -> Result<(Graph, LayoutReport)> {
    let mut pass = Pass {
        old: graph,
        new: Graph::new(),
        held: HashMap::new(),
        made: HashMap::new(),
        sources: HashMap::new(),
        opts: *opts,
        report: LayoutReport::default(),
    };
    for ix in graph.node_indices() {
        pass.node(ix);
    }
    for o in &graph.outputs {
        let v = pass.layout(o.value, &identity(graph.value_type(o.value).rank()));
        pass.new.outputs.push(GraphOutput { name: o.name.clone(), value: v });
    }
    let transposes = |g: &Graph| g.node_indices().filter(|&i| matches!(g.node(i).op, Op::Transpose { .. })).count();
    pass.report.transposes_before = transposes(graph);
    pass.report.transposes_after = transposes(&pass.new);
    Ok((pass.new, pass.report))
}

/// An old value in the new graph: `old = base.permute(perm)`.
#[derive(Clone, Debug)]
struct Held {
    base: ValueRef,
    perm: Vec<usize>,
}

struct Pass<'a> {
    old: &'a Graph,
    new: Graph,
    held: HashMap<ValueRef, Held>,
    /// (base, permutation) → the node already made for it.
    made: HashMap<(ValueRef, Vec<usize>), ValueRef>,
    /// Constants and weights are added where first read, in the layout read:
    /// (old value, result shape) → the new node.
    sources: HashMap<(ValueRef, Vec<SymDim>), ValueRef>,
    opts: LayoutOptions,
    report: LayoutReport,
}

fn identity(rank: usize) -> Vec<usize> {
    (0..rank).collect()
}

/// `[0, 2, …, r−1, 1]`: `x.permute(to_last)` moves the channel axis last.
fn to_last(rank: usize) -> Vec<usize> {
    std::iter::once(0).chain(2..rank).chain(std::iter::once(1)).collect()
}

fn inverse(p: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; p.len()];
    for (i, &a) in p.iter().enumerate() {
        inv[a] = i;
    }
    inv
}

fn permuted<T: Clone>(v: &[T], perm: &[usize]) -> Vec<T> {
    perm.iter().map(|&a| v[a].clone()).collect()
}

fn is_identity(p: &[usize]) -> bool {
    p.iter().enumerate().all(|(i, &a)| i == a)
}

/// The name suffix of a value made by permuting another by `f`.
fn perm_suffix(f: &[usize]) -> String {
    if f == to_last(f.len()).as_slice() {
        "channels_last".to_string()
    } else {
        format!("perm{}", f.iter().map(|a| a.to_string()).collect::<String>())
    }
}

/// `src`, a Constant or Weight node, permuted by `f` (its data at compile time); `None` for
/// any other op.
fn permuted_source(src: &Node, f: &[usize], ty: TensorType) -> Option<Node> {
    let suffix = perm_suffix(f);
    let op = match &src.op {
        Op::Constant(t) => Op::Constant(Arc::new(permute_tensor(t, f))),
        Op::Weight { name } => Op::Weight { name: format!("{name}/{suffix}") },
        _ => return None,
    };
    Some(Node { name: format!("{}/{suffix}", src.name), op, inputs: vec![], outputs: vec![ty] })
}

/// Whether permuting `shape` by `perm` keeps the memory order (only size-1 axes move).
fn is_reshape(shape: &[SymDim], perm: &[usize]) -> bool {
    let big: Vec<usize> = perm.iter().copied().filter(|&a| shape[a].as_const() != Some(1)).collect();
    big.windows(2).all(|w| w[0] < w[1])
}

/// The elements of `t` permuted (`out axis i = t axis perm[i]`).
fn permute_tensor(t: &Tensor, perm: &[usize]) -> Tensor {
    Tensor::new(permuted(&t.shape, perm), t.data.permuted(&t.shape, perm))
}

/// Elementwise ops: any layout, as long as every operand is in it.
fn is_elementwise(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Cast { .. } | Op::Clip { .. } | Op::LeakyRelu { .. } | Op::Gelu { .. } | Op::Silu | Op::QuickGelu { .. }
    )
}

/// A 2-D convolution the CUDA backend runs channels-last (cuDNN: float data, symmetric pads).
fn converts_conv(g: &Graph, node: &Node) -> bool {
    let Op::Conv { pads, channels_last: false, .. } = &node.op else { return false };
    let x = g.value_type(node.inputs[0].expect("Conv has X"));
    x.rank() == 4 && matches!(x.dtype, DType::F16 | DType::BF16 | DType::F32) && pads[..2] == pads[2..]
}

impl Pass<'_> {
    fn node(&mut self, ix: NodeIndex) {
        let node = self.old.node(ix);
        let rank_out = node.outputs.first().map_or(0, |t| t.rank());
        match &node.op {
            Op::Transpose { perm } => {
                // No node: the output is the input's base under the composed permutation.
                let input = node.inputs[0].expect("Transpose has an input");
                let rank = self.old.value_type(input).rank();
                let h = match self.source_at(input, &identity(rank)) {
                    Some(v) => Held { base: v, perm: identity(rank) },
                    None => self.held[&input].clone(),
                };
                let composed = permuted(&h.perm, perm);
                self.held.insert(ValueRef { node: ix, output: 0 }, Held { base: h.base, perm: composed });
            }
            Op::Conv { strides, pads, dilations, group, .. } if converts_conv(self.old, node) => {
                let last = to_last(4);
                let x = self.layout(node.inputs[0].unwrap(), &last);
                let w = self.layout(node.inputs[1].unwrap(), &last);
                let b = node.inputs.get(2).copied().flatten().map(|v| self.layout(v, &identity(self.old.value_type(v).rank())));
                let op = Op::Conv { strides: strides.clone(), pads: pads.clone(), dilations: dilations.clone(), group: *group, channels_last: true };
                self.report.convs += 1;
                self.add_last(ix, op, vec![Some(x), Some(w), b]);
            }
            Op::GroupNorm { epsilon, num_groups, per_channel_affine: true, channels_last: false }
                if self.opts.group_norm && rank_out >= 3 && self.is_channels_last(node.inputs[0].unwrap()) =>
            {
                let x = self.layout(node.inputs[0].unwrap(), &to_last(rank_out));
                let rest: Vec<Option<ValueRef>> =
                    node.inputs[1..].iter().map(|v| v.map(|v| self.layout(v, &identity(self.old.value_type(v).rank())))).collect();
                let op = Op::GroupNorm { epsilon: *epsilon, num_groups: *num_groups, per_channel_affine: true, channels_last: true };
                self.report.group_norms += 1;
                self.add_last(ix, op, std::iter::once(Some(x)).chain(rest).collect());
            }
            op if (is_elementwise(op) || matches!(op, Op::Concat { .. } | Op::Resize { .. })) && rank_out >= 3 && self.follows(node) => {
                let last = to_last(rank_out);
                let op = match op {
                    Op::Concat { axis } => Op::Concat { axis: inverse(&last)[*axis] },
                    Op::Resize { mode, coord, nearest, cubic_coeff_a, exclude_outside, scales } => Op::Resize {
                        mode: *mode,
                        coord: *coord,
                        nearest: *nearest,
                        cubic_coeff_a: *cubic_coeff_a,
                        exclude_outside: *exclude_outside,
                        scales: permuted(scales, &last),
                    },
                    other => other.clone(),
                };
                let inputs = node
                    .inputs
                    .iter()
                    .map(|v| v.map(|v| self.operand_layout(v, rank_out, &last)))
                    .collect();
                self.report.followers += 1;
                self.add_last(ix, op, inputs);
            }
            Op::Reshape if self.reshapes_spatial_axes(node) => {
                // [N, C, spatial…] → [N, C, spatial'…] on channels-last data is the reshape
                // [N, spatial…, C] → [N, spatial'…, C]: still channels-last, no transpose (the
                // VAE's attention flattens H×W this way before its own transpose).
                let input = node.inputs[0].unwrap();
                let base = self.held[&input].base;
                let out = &node.outputs[0];
                let shape = permuted(&out.shape, &to_last(out.rank()));
                let new = self.reshape(base, shape, &node.name);
                self.held.insert(ValueRef { node: ix, output: 0 }, Held { base: new, perm: inverse(&to_last(out.rank())) });
            }
            Op::Constant(_) | Op::Weight { .. } => {} // added where read (`source_at`)
            _ => {
                let inputs = node.inputs.iter().map(|v| v.map(|v| self.layout(v, &identity(self.old.value_type(v).rank())))).collect();
                let new = self.new.add_node(Node { inputs, ..node.clone() });
                for o in 0..node.outputs.len() {
                    self.held.insert(ValueRef { node: ix, output: o }, Held { base: ValueRef { node: new, output: o }, perm: identity(node.outputs[o].rank()) });
                }
            }
        }
    }

    /// Adds `op` with channels-last output(s) for old node `ix` (outputs permuted to match).
    fn add_last(&mut self, ix: NodeIndex, op: Op, inputs: Vec<Option<ValueRef>>) {
        let node = self.old.node(ix);
        let outputs: Vec<TensorType> = node.outputs.iter().map(|t| TensorType::new(t.dtype, permuted(&t.shape, &to_last(t.rank())))).collect();
        let new = self.new.add_node(Node { name: node.name.clone(), op, inputs, outputs });
        for (o, t) in node.outputs.iter().enumerate() {
            self.held.insert(ValueRef { node: ix, output: o }, Held { base: ValueRef { node: new, output: o }, perm: inverse(&to_last(t.rank())) });
        }
    }

    /// Whether old value `v` is held channels-last (its base is `v` with the channel axis last).
    fn is_channels_last(&self, v: ValueRef) -> bool {
        let Some(h) = self.held.get(&v) else { return false };
        h.perm.len() >= 3 && h.perm == inverse(&to_last(h.perm.len()))
    }

    /// A Reshape of channels-last data that keeps the batch and channel axes and only merges or
    /// splits the spatial ones.
    fn reshapes_spatial_axes(&self, node: &Node) -> bool {
        let Some(input) = node.inputs[0] else { return false };
        let (x, y) = (self.old.value_type(input), &node.outputs[0]);
        x.rank() >= 3 && y.rank() >= 3 && x.shape[..2] == y.shape[..2] && self.is_channels_last(input)
    }

    /// Whether an elementwise/Concat/Resize node should run channels-last: one of its full-rank
    /// operands is held that way (the others are permuted to match).
    fn follows(&self, node: &Node) -> bool {
        let rank = node.outputs[0].rank();
        if node.outputs.len() != 1 {
            return false;
        }
        if let Op::Resize { .. } = node.op {
            // Only the data input moves; scales/sizes are folded into the op.
            return node.inputs[0].is_some_and(|v| self.is_channels_last(v));
        }
        node.inputs.iter().flatten().any(|&v| self.old.value_type(v).rank() == rank && self.is_channels_last(v))
    }

    /// Operand `v` of a channels-last elementwise node of output rank `rank`: a lower-rank
    /// operand (numpy broadcasting aligns it right) is first viewed at rank `rank`.
    fn operand_layout(&mut self, v: ValueRef, rank: usize, last: &[usize]) -> ValueRef {
        let t = self.old.value_type(v).clone();
        if t.rank() == rank {
            return self.layout(v, last);
        }
        if t.rank() > rank {
            return self.layout(v, &identity(t.rank()));
        }
        // [d…] → [1, …, 1, d…] → permuted; a Reshape when only size-1 axes move.
        let mut padded = vec![SymDim::konst(1); rank - t.rank()];
        padded.extend(t.shape.iter().cloned());
        if let Some(c) = self.source_reshaped(v, &padded, last) {
            return c;
        }
        let base = self.layout(v, &identity(t.rank()));
        let name = format!("{}/rank{rank}", self.old.node(v.node).name);
        let widened = self.reshape(base, padded.clone(), &name);
        self.report.reshapes_added += 1;
        self.permute(widened, &padded, last, &self.old.node(v.node).name.clone())
    }

    /// The new value holding old value `v` permuted by `want` (`result axis i = v axis want[i]`).
    fn layout(&mut self, v: ValueRef, want: &[usize]) -> ValueRef {
        if let Some(c) = self.source_at(v, want) {
            return c;
        }
        let h = self.held[&v].clone();
        let f = permuted(&h.perm, want);
        let base_shape = self.new.value_type(h.base).shape.clone();
        self.permute(h.base, &base_shape, &f, &self.old.node(v.node).name.clone())
    }

    /// `base` (of shape `shape`) permuted by `f`: itself, a constant, a Reshape or a Transpose.
    fn permute(&mut self, base: ValueRef, shape: &[SymDim], f: &[usize], name: &str) -> ValueRef {
        if is_identity(f) {
            return base;
        }
        if let Some(&v) = self.made.get(&(base, f.to_vec())) {
            return v;
        }
        let src = self.new.node(base.node);
        let ty = TensorType::new(src.outputs[base.output].dtype, permuted(shape, f));
        let node = match permuted_source(src, f, ty.clone()) {
            Some(node) => node,
            None => {
                let op = if is_reshape(shape, f) {
                    self.report.reshapes_added += 1;
                    Op::Reshape
                } else {
                    Op::Transpose { perm: f.to_vec() }
                };
                Node { name: format!("{name}/{}", perm_suffix(f)), op, inputs: vec![Some(base)], outputs: vec![ty] }
            }
        };
        let v = ValueRef { node: self.new.add_node(node), output: 0 };
        self.made.insert((base, f.to_vec()), v);
        v
    }

    /// Old Constant/Weight value `v` permuted by `want`, made on first use (`None`: `v` is not
    /// a constant or weight).
    fn source_at(&mut self, v: ValueRef, want: &[usize]) -> Option<ValueRef> {
        let old = self.old.node(v.node);
        if !matches!(old.op, Op::Constant(_) | Op::Weight { .. }) {
            return None;
        }
        let ty = TensorType::new(old.outputs[0].dtype, permuted(&old.outputs[0].shape, want));
        if let Some(&c) = self.sources.get(&(v, ty.shape.clone())) {
            return Some(c);
        }
        let node = if is_identity(want) { old.clone() } else { permuted_source(old, want, ty.clone())? };
        let c = ValueRef { node: self.new.add_node(node), output: 0 };
        self.sources.insert((v, ty.shape), c);
        Some(c)
    }

    /// Old constant `v` viewed at the wider `padded` shape and permuted by `f`, when that is a
    /// plain reshape of its elements (a bias `[C, 1, 1]` read as `[1, 1, 1, C]`).
    fn source_reshaped(&mut self, v: ValueRef, padded: &[SymDim], f: &[usize]) -> Option<ValueRef> {
        let old = self.old.node(v.node);
        let Op::Constant(t) = &old.op else { return None };
        if !is_reshape(padded, f) {
            return None;
        }
        let shape = permuted(padded, f);
        let dims: Vec<usize> = shape.iter().map(|d| d.as_const().map(|c| c as usize)).collect::<Option<_>>()?;
        if let Some(&c) = self.sources.get(&(v, shape.clone())) {
            return Some(c);
        }
        let node = Node {
            name: format!("{}/channels_last", old.name),
            op: Op::Constant(Arc::new(Tensor::new(dims, t.data.clone()))),
            inputs: vec![],
            outputs: vec![TensorType::new(old.outputs[0].dtype, shape.clone())],
        };
        let c = ValueRef { node: self.new.add_node(node), output: 0 };
        self.sources.insert((v, shape), c);
        Some(c)
    }

    /// `base` viewed at `shape` (same elements): a Reshape node, or a reshaped constant.
    fn reshape(&mut self, base: ValueRef, shape: Vec<SymDim>, name: &str) -> ValueRef {
        let src = self.new.node(base.node);
        let dims: Option<Vec<usize>> = shape.iter().map(|d| d.as_const().map(|c| c as usize)).collect();
        let (op, inputs) = match (&src.op, dims) {
            (Op::Constant(t), Some(dims)) => (Op::Constant(Arc::new(Tensor::new(dims, t.data.clone()))), vec![]),
            _ => (Op::Reshape, vec![Some(base)]),
        };
        let ty = TensorType::new(src.outputs[base.output].dtype, shape);
        ValueRef { node: self.new.add_node(Node { name: name.to_string(), op, inputs, outputs: vec![ty] }), output: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permuting_a_tensor_matches_index_arithmetic() {
        let shape = [3usize, 4, 2, 5];
        let data: Vec<f32> = (0..120).map(|i| i as f32 * 0.5 - 7.0).collect();
        let t = Tensor::new(shape.to_vec(), crate::tensor::TensorData::F32(data.clone()));
        for perm in [vec![0, 2, 3, 1], vec![3, 2, 1, 0], vec![0, 1, 2, 3], vec![1, 0, 3, 2]] {
            let got = permute_tensor(&t, &perm);
            assert_eq!(got.shape, permuted(&shape, &perm));
            let got = got.data.to_f64_vec();
            let out_shape = permuted(&shape, &perm);
            let mut k = 0;
            for a in 0..out_shape[0] {
                for b in 0..out_shape[1] {
                    for c in 0..out_shape[2] {
                        for d in 0..out_shape[3] {
                            let mut idx = [0usize; 4];
                            for (i, &x) in [a, b, c, d].iter().enumerate() {
                                idx[perm[i]] = x;
                            }
                            let flat = ((idx[0] * shape[1] + idx[1]) * shape[2] + idx[2]) * shape[3] + idx[3];
                            assert_eq!(got[k], data[flat] as f64, "perm {perm:?} at {k}");
                            k += 1;
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn reshape_only_when_size_one_axes_move() {
        let s = |v: &[i64]| v.iter().map(|&d| SymDim::konst(d)).collect::<Vec<_>>();
        assert!(is_reshape(&s(&[2, 8, 1, 1]), &to_last(4)));
        assert!(!is_reshape(&s(&[2, 8, 4, 4]), &to_last(4)));
        assert!(is_reshape(&[SymDim::sym("N"), SymDim::konst(1), SymDim::sym("H")], &[1, 0, 2]));
        assert_eq!(inverse(&to_last(4)), vec![0, 3, 1, 2]);
    }
}
