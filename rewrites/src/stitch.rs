//! Stitching: memory-bound ops of the extracted graph grow into fused regions
//! (`Op::Stitched(StitchedRegion)`), one kernel each.
//!
//! This is a greedy pass over the graph the e-graph extraction chose, not an e-graph stage:
//! nodes are visited in execution order and each fusible node joins the group of a fusible
//! producer when
//! - both compute over the same domain (identical symbolic output shapes; a smaller operand is
//!   read broadcast instead of fused, so nothing is recomputed per element),
//! - the merged group stays within [`StitchOptions`]' caps (nodes, inputs, outputs) and holds at
//!   most one normalization (GroupNorm/LayerNorm: the one row reduction a region may have),
//! - and merging creates no cycle (no path leaves the group and comes back: AStitch's convexity).
//!
//! Fusible: elementwise ops on float/bool values and GroupNorm (per-channel affine) / LayerNorm.
//! A group of one node stays the op it was. Reshape and Expand in front of a region become the
//! input's *view* (no step), and a Reshape of a weight or constant becomes a weight of the new
//! shape. A value that a region computes and something outside it reads is a region output
//! (multi-output regions: e.g. a residual sum that feeds both a LayerNorm and the next residual).
//!
//! Why not in the e-graph (yet): region growing as rewrites needs region e-nodes for every
//! prefix of every chain (O(N²) variants, luminal's experience) and a DAG-aware extractor to
//! price shared values; the greedy pass gives the fused plan today and the same `StitchedRegion`
//! is what an e-graph stage would produce.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use petgraph::graph::NodeIndex;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ir::{
    BinaryOp, Graph, GraphOutput, Node, Op, Operand, RegionInput, RegionNode, RegionOp, RegionOutput, RowSpec, StitchedRegion, TensorType, UnaryOp, ValueRef,
};
use crate::sym::SymDim;
use crate::tensor::Tensor;

/// Caps on one region.
#[derive(Clone, Debug)]
pub struct StitchOptions {
    /// Graph nodes fused into one region.
    pub max_nodes: usize,
    /// Distinct inputs (kernel pointer arguments and stride sets).
    pub max_inputs: usize,
    pub max_outputs: usize,
    /// Kernel scalar params a region may need (`2 + rank · (1 + inputs)`: row count and length,
    /// the domain's dims and each input's strides); the CUDA backend passes 48.
    pub max_params: usize,
}

impl Default for StitchOptions {
    fn default() -> StitchOptions {
        StitchOptions { max_nodes: 16, max_inputs: 8, max_outputs: 4, max_params: 48 }
    }
}

/// What stitching did.
#[derive(Clone, Debug, Default)]
pub struct StitchReport {
    pub regions: usize,
    /// Graph nodes that went into regions.
    pub nodes_fused: usize,
    /// Reshape/Expand nodes that became input views (no step left).
    pub views_absorbed: usize,
    /// Reshapes of weights/constants that became weights of the new shape.
    pub weight_reshapes_folded: usize,
    pub time: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Elementwise,
    Norm,
    Other,
}

fn float_or_bool(d: DType) -> bool {
    d.is_float() || d == DType::Bool
}

/// Whether `node` may join a region, and as what.
fn kind(g: &Graph, node: &Node) -> Kind {
    if node.outputs.len() != 1 {
        return Kind::Other;
    }
    let out = &node.outputs[0];
    let ins: Option<Vec<&TensorType>> = node.inputs.iter().map(|v| v.map(|v| g.value_type(v))).collect();
    let Some(ins) = ins else { return Kind::Other };
    let floats = |ts: &[&TensorType]| ts.iter().all(|t| t.dtype.is_float());
    match &node.op {
        Op::Unary(UnaryOp::Not) => {
            if ins[0].dtype == DType::Bool {
                Kind::Elementwise
            } else {
                Kind::Other
            }
        }
        Op::Unary(_) | Op::Clip { .. } | Op::LeakyRelu { .. } | Op::Gelu { .. } | Op::Silu | Op::QuickGelu { .. } => {
            if floats(&ins) && out.dtype == ins[0].dtype {
                Kind::Elementwise
            } else {
                Kind::Other
            }
        }
        Op::Binary(b) => {
            let same = ins[0].dtype == ins[1].dtype;
            let ok = match b {
                BinaryOp::Mod | BinaryOp::Fmod => false,
                BinaryOp::And | BinaryOp::Or | BinaryOp::Xor => ins[0].dtype == DType::Bool && same,
                _ => floats(&ins) && same,
            };
            if ok {
                Kind::Elementwise
            } else {
                Kind::Other
            }
        }
        Op::Where => {
            if ins[0].dtype == DType::Bool && ins[1].dtype == ins[2].dtype && ins[1].dtype.is_float() {
                Kind::Elementwise
            } else {
                Kind::Other
            }
        }
        Op::Cast { to } => {
            if float_or_bool(ins[0].dtype) && float_or_bool(*to) {
                Kind::Elementwise
            } else {
                Kind::Other
            }
        }
        Op::GroupNorm { per_channel_affine: true, .. } if out.rank() >= 2 && floats(&ins) && *ins[0] == *out => Kind::Norm,
        Op::LayerNorm { axis, .. } if *axis < out.rank() && floats(&ins) && *ins[0] == *out => Kind::Norm,
        _ => Kind::Other,
    }
}

struct Group {
    members: Vec<NodeIndex>,
    has_norm: bool,
}

struct Stitcher<'a> {
    g: &'a Graph,
    opts: &'a StitchOptions,
    kinds: Vec<Kind>,
    /// Node → group id.
    group_of: Vec<Option<usize>>,
    groups: Vec<Group>,
    consumers: Vec<Vec<NodeIndex>>,
    is_graph_output: HashSet<ValueRef>,
}

impl<'a> Stitcher<'a> {
    fn new(g: &'a Graph, opts: &'a StitchOptions) -> Stitcher<'a> {
        let n = g.node_count();
        let kinds = g.node_indices().map(|ix| kind(g, g.node(ix))).collect();
        let consumers = g.node_indices().map(|ix| g.consumers(ix)).collect();
        let is_graph_output = g.outputs.iter().map(|o| o.value).collect();
        Stitcher { g, opts, kinds, group_of: vec![None; n], groups: Vec::new(), consumers, is_graph_output }
    }

    fn domain(&self, ix: NodeIndex) -> &[SymDim] {
        &self.g.node(ix).outputs[0].shape
    }

    fn grow(&mut self) {
        for ix in self.g.node_indices() {
            if self.kinds[ix.index()] == Kind::Other {
                continue;
            }
            let id = self.groups.len();
            self.groups.push(Group { members: vec![ix], has_norm: self.kinds[ix.index()] == Kind::Norm });
            self.group_of[ix.index()] = Some(id);
            let node = self.g.node(ix);
            for v in node.inputs.iter().flatten() {
                let Some(pg) = self.group_of[v.node.index()] else { continue };
                let cur = self.group_of[ix.index()].unwrap();
                if pg == cur || self.domain(v.node) != self.domain(ix) {
                    continue;
                }
                if self.can_merge(pg, cur) {
                    self.merge(pg, cur);
                }
            }
        }
    }

    fn merge(&mut self, into: usize, from: usize) {
        let moved = std::mem::take(&mut self.groups[from].members);
        for &m in &moved {
            self.group_of[m.index()] = Some(into);
        }
        let norm = std::mem::take(&mut self.groups[from].has_norm);
        let g = &mut self.groups[into];
        g.members.extend(moved);
        g.members.sort();
        g.has_norm |= norm;
    }

    fn can_merge(&self, a: usize, b: usize) -> bool {
        let (ga, gb) = (&self.groups[a], &self.groups[b]);
        if ga.members.len() + gb.members.len() > self.opts.max_nodes || (ga.has_norm && gb.has_norm) {
            return false;
        }
        let members: Vec<NodeIndex> = ga.members.iter().chain(&gb.members).copied().collect();
        let inside = |n: NodeIndex| matches!(self.group_of[n.index()], Some(x) if x == a || x == b);
        // Distinct external inputs and values read outside.
        let mut ext: HashSet<ValueRef> = HashSet::new();
        let mut outs = 0;
        for &m in &members {
            for v in self.g.node(m).inputs.iter().flatten() {
                if !inside(v.node) {
                    ext.insert(*v);
                }
            }
            let value = ValueRef { node: m, output: 0 };
            if self.is_graph_output.contains(&value) || self.consumers[m.index()].iter().any(|&c| !inside(c)) {
                outs += 1;
            }
        }
        let rank = self.domain(members[0]).len();
        if ext.len() > self.opts.max_inputs || outs > self.opts.max_outputs || 2 + rank * (1 + ext.len()) > self.opts.max_params {
            return false;
        }
        !self.creates_cycle(&members, &inside)
    }

    /// Whether some value the merged group reads depends on the group itself (a path that
    /// leaves the group and comes back). Nodes before the group's first member cannot.
    fn creates_cycle(&self, members: &[NodeIndex], inside: &dyn Fn(NodeIndex) -> bool) -> bool {
        let first = members.iter().map(|m| m.index()).min().unwrap_or(0);
        let mut stack: Vec<NodeIndex> = Vec::new();
        for &m in members {
            stack.extend(self.g.node(m).inputs.iter().flatten().map(|v| v.node).filter(|&n| !inside(n)));
        }
        let mut seen: HashSet<NodeIndex> = HashSet::new();
        while let Some(n) = stack.pop() {
            if n.index() < first || !seen.insert(n) {
                continue;
            }
            if inside(n) {
                return true;
            }
            stack.extend(self.g.node(n).inputs.iter().flatten().map(|v| v.node));
        }
        false
    }
}

/// A constant whose every element is `v`.
fn is_splat(g: &Graph, v: ValueRef, want: f64) -> bool {
    match &g.node(v.node).op {
        Op::Constant(t) => t.dtype().is_float() && t.numel() > 0 && t.data.to_f64_vec().iter().all(|&x| x == want),
        _ => false,
    }
}

/// The value a region reads for `v`, looking through Reshape (a view with `v`'s shape) and
/// Expand (broadcasting, which the region does anyway), and the shape to read it at.
fn resolve_view(g: &Graph, v: ValueRef) -> (ValueRef, Vec<SymDim>, usize) {
    let mut view = g.value_type(v).shape.clone();
    let mut cur = v;
    let mut reshaped = false;
    let mut absorbed = 0;
    loop {
        let n = g.node(cur.node);
        match (&n.op, n.inputs.first().copied().flatten()) {
            (Op::Reshape, Some(x)) if g.value_type(x).dtype == n.outputs[0].dtype => {
                reshaped = true;
                cur = x;
            }
            (Op::Expand, Some(x)) if !reshaped && g.value_type(x).dtype == n.outputs[0].dtype => {
                view = g.value_type(x).shape.clone();
                cur = x;
            }
            _ => break,
        }
        absorbed += 1;
    }
    (cur, view, absorbed)
}

/// A Reshape of a weight or constant (folded into a weight or constant of the new shape).
fn is_source_reshape(g: &Graph, ix: NodeIndex) -> bool {
    let n = g.node(ix);
    if !matches!(n.op, Op::Reshape) {
        return false;
    }
    match n.inputs.first().copied().flatten().map(|x| &g.node(x.node).op) {
        Some(Op::Constant(_)) => n.outputs[0].shape.iter().all(|d| d.is_const()),
        Some(Op::Weight { .. }) => true,
        _ => false,
    }
}

/// A region built from one group: the region, the values it reads (in input order) and the
/// member nodes whose values it outputs (in output order).
struct Built {
    region: StitchedRegion,
    reads: Vec<ValueRef>,
    writes: Vec<NodeIndex>,
}

fn build_region(s: &Stitcher, gid: usize) -> Built {
    let g = s.g;
    let members = &s.groups[gid].members;
    let inside = |n: NodeIndex| s.group_of[n.index()] == Some(gid);
    let domain = s.domain(members[0]).to_vec();
    let mut inputs: Vec<RegionInput> = Vec::new();
    let mut reads: Vec<ValueRef> = Vec::new();
    let mut input_at: HashMap<(ValueRef, Vec<SymDim>), usize> = HashMap::new();
    let mut input = |v: ValueRef, view: Option<Vec<SymDim>>| -> Operand {
        let (src, resolved, _) = resolve_view(g, v);
        let view = view.unwrap_or(resolved);
        let key = (src, view.clone());
        let k = *input_at.entry(key).or_insert_with(|| {
            inputs.push(RegionInput { dtype: g.value_type(src).dtype, view });
            reads.push(src);
            inputs.len() - 1
        });
        Operand::Input(k)
    };
    let mut nodes: Vec<RegionNode> = Vec::new();
    let mut value_at: HashMap<NodeIndex, usize> = HashMap::new();
    for &m in members {
        let node = g.node(m);
        let dtype = node.outputs[0].dtype;
        let mut arg = |slot: usize, view: Option<Vec<SymDim>>| -> Operand {
            let v = node.inputs[slot].expect("fusible nodes have every input");
            if inside(v.node) {
                Operand::Node(value_at[&v.node])
            } else {
                input(v, view)
            }
        };
        let push = |nodes: &mut Vec<RegionNode>, op: RegionOp, args: Vec<Operand>| {
            nodes.push(RegionNode { op, args, dtype });
            Operand::Node(nodes.len() - 1)
        };
        let last = match &node.op {
            Op::GroupNorm { epsilon, num_groups, channels_last, .. } => {
                let x = arg(0, None);
                let (rows, channel) = if *channels_last {
                    // Per-channel affine, read as [C] against [N, spatial…, C].
                    (RowSpec::GroupsChannelsLast { groups: *num_groups }, vec![domain[domain.len() - 1].clone()])
                } else {
                    // Per-channel affine, read as [C, 1, …] against [N, C, spatial…].
                    let mut channel = vec![domain[1].clone()];
                    channel.extend(std::iter::repeat_n(SymDim::konst(1), domain.len() - 2));
                    (RowSpec::Groups { groups: *num_groups }, channel)
                };
                let mut t = push(&mut nodes, RegionOp::Normalize { rows, epsilon: *epsilon }, vec![x]);
                if !is_splat(g, node.inputs[1].unwrap(), 1.0) {
                    let sc = arg(1, Some(channel.clone()));
                    t = push(&mut nodes, RegionOp::Elementwise(Op::Binary(BinaryOp::Mul)), vec![t, sc]);
                }
                if !is_splat(g, node.inputs[2].unwrap(), 0.0) {
                    let b = arg(2, Some(channel));
                    t = push(&mut nodes, RegionOp::Elementwise(Op::Binary(BinaryOp::Add)), vec![t, b]);
                }
                t
            }
            Op::LayerNorm { axis, epsilon } => {
                let x = arg(0, None);
                let mut t = push(&mut nodes, RegionOp::Normalize { rows: RowSpec::Trailing { axis: *axis }, epsilon: *epsilon }, vec![x]);
                if !is_splat(g, node.inputs[1].unwrap(), 1.0) {
                    let sc = arg(1, None);
                    t = push(&mut nodes, RegionOp::Elementwise(Op::Binary(BinaryOp::Mul)), vec![t, sc]);
                }
                if let Some(b) = node.inputs.get(2).copied().flatten() {
                    if !is_splat(g, b, 0.0) {
                        let b = arg(2, None);
                        t = push(&mut nodes, RegionOp::Elementwise(Op::Binary(BinaryOp::Add)), vec![t, b]);
                    }
                }
                t
            }
            op => {
                let args = (0..node.inputs.len()).map(|k| arg(k, None)).collect();
                push(&mut nodes, RegionOp::Elementwise(op.clone()), args)
            }
        };
        let Operand::Node(j) = last else { unreachable!("push returns a node") };
        value_at.insert(m, j);
    }
    let mut outputs = Vec::new();
    let mut writes = Vec::new();
    for &m in members {
        let value = ValueRef { node: m, output: 0 };
        if s.is_graph_output.contains(&value) || s.consumers[m.index()].iter().any(|&c| !inside(c)) {
            outputs.push(RegionOutput { node: value_at[&m], dtype: g.node(m).outputs[0].dtype });
            writes.push(m);
        }
    }
    Built { region: StitchedRegion { domain, inputs, nodes, outputs }, reads, writes }
}

/// What the rebuilt graph runs, one entry per emitted node.
enum Unit {
    Node(NodeIndex),
    Region(usize),
}

/// Fuses `graph`'s memory-bound ops into stitched regions; returns the new graph.
pub fn stitch(graph: &Graph, opts: &StitchOptions) -> Result<(Graph, StitchReport)> {
    let start = Instant::now();
    let mut report = StitchReport::default();
    let mut s = Stitcher::new(graph, opts);
    s.grow();
    let g = graph;

    let mut built: BTreeMap<usize, Built> = BTreeMap::new();
    for gid in 0..s.groups.len() {
        // A lone normalization becomes a region too: the region kernels are the tuned ones
        // (vectorised rows, split statistics, a warp per short row), and a channels-last
        // GroupNorm runs only as a region.
        let members = &s.groups[gid].members;
        if members.len() >= 2 || s.groups[gid].has_norm {
            let b = build_region(&s, gid);
            b.region.validate().map_err(|e| Error::Model(format!("stitching group of '{}': {e}", g.node(s.groups[gid].members[0]).name)))?;
            report.regions += 1;
            report.nodes_fused += s.groups[gid].members.len();
            built.insert(gid, b);
        }
    }

    // Units, their dependencies (by unit id) and their order key (the last member's position).
    let mut units: Vec<Unit> = Vec::new();
    let mut unit_of: Vec<usize> = vec![usize::MAX; g.node_count()];
    let mut region_unit: HashMap<usize, usize> = HashMap::new();
    for ix in g.node_indices() {
        match s.group_of[ix.index()] {
            Some(gid) if built.contains_key(&gid) => {
                let u = *region_unit.entry(gid).or_insert_with(|| {
                    units.push(Unit::Region(gid));
                    units.len() - 1
                });
                unit_of[ix.index()] = u;
            }
            _ => {
                units.push(Unit::Node(ix));
                unit_of[ix.index()] = units.len() - 1;
            }
        }
    }
    let key = |u: &Unit| match u {
        Unit::Node(ix) => ix.index(),
        Unit::Region(gid) => s.groups[*gid].members.last().unwrap().index(),
    };
    let reads_of = |u: &Unit| -> Vec<ValueRef> {
        match u {
            Unit::Node(ix) if is_source_reshape(g, *ix) => vec![],
            Unit::Node(ix) => g.node(*ix).inputs.iter().flatten().copied().collect(),
            Unit::Region(gid) => built[gid].reads.clone(),
        }
    };
    let deps: Vec<Vec<usize>> = units.iter().map(|u| reads_of(u).iter().map(|v| unit_of[v.node.index()]).collect()).collect();

    // Live units: what the outputs need, and every graph input.
    let mut live = vec![false; units.len()];
    let mut stack: Vec<usize> = g.outputs.iter().map(|o| unit_of[o.value.node.index()]).collect();
    stack.extend(g.inputs.iter().map(|ix| unit_of[ix.index()]));
    while let Some(u) = stack.pop() {
        if !std::mem::replace(&mut live[u], true) {
            stack.extend(deps[u].iter().copied());
        }
    }

    // Emit: graph inputs first, then ready units by their key (Kahn's algorithm).
    let mut out = Graph::new();
    let mut value_map: HashMap<ValueRef, ValueRef> = HashMap::new();
    let mut emitted = vec![false; units.len()];
    for &ix in &g.inputs {
        let n = g.node(ix);
        let new = out.add_node(Node { name: n.name.clone(), op: n.op.clone(), inputs: vec![], outputs: n.outputs.clone() });
        value_map.insert(ValueRef { node: ix, output: 0 }, ValueRef { node: new, output: 0 });
        emitted[unit_of[ix.index()]] = true;
    }
    let mut waiting: Vec<usize> = vec![0; units.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); units.len()];
    for u in 0..units.len() {
        if !live[u] || emitted[u] {
            continue;
        }
        let mut ds: Vec<usize> = deps[u].iter().copied().filter(|&d| d != u && !emitted[d]).collect();
        ds.sort();
        ds.dedup();
        waiting[u] = ds.len();
        for d in ds {
            dependents[d].push(u);
        }
    }
    let mut ready: BinaryHeap<Reverse<(usize, usize)>> = BinaryHeap::new();
    for u in 0..units.len() {
        if live[u] && !emitted[u] && waiting[u] == 0 {
            ready.push(Reverse((key(&units[u]), u)));
        }
    }
    let mapped = |value_map: &HashMap<ValueRef, ValueRef>, v: ValueRef, who: &str| -> Result<ValueRef> {
        value_map.get(&v).copied().ok_or_else(|| Error::Model(format!("stitching: '{who}' reads a value that was not emitted before it")))
    };
    while let Some(Reverse((_, u))) = ready.pop() {
        match &units[u] {
            Unit::Node(ix) => {
                let n = g.node(*ix);
                let source = n.inputs.first().copied().flatten().filter(|_| is_source_reshape(g, *ix)).map(|x| &g.node(x.node).op);
                let new = match source {
                    // A reshaped weight or constant is a weight or constant of the new shape.
                    Some(Op::Constant(t)) if n.outputs[0].shape.iter().all(|d| d.is_const()) => {
                        report.weight_reshapes_folded += 1;
                        let shape: Vec<usize> = n.outputs[0].shape.iter().map(|d| d.as_const().unwrap() as usize).collect();
                        let op = Op::Constant(Arc::new(Tensor::new(shape, t.data.clone())));
                        out.add_node(Node { name: n.name.clone(), op, inputs: vec![], outputs: n.outputs.clone() })
                    }
                    Some(Op::Weight { name }) => {
                        report.weight_reshapes_folded += 1;
                        out.add_node(Node { name: n.name.clone(), op: Op::Weight { name: name.clone() }, inputs: vec![], outputs: n.outputs.clone() })
                    }
                    _ => {
                        let mut inputs = Vec::with_capacity(n.inputs.len());
                        for v in &n.inputs {
                            inputs.push(match v {
                                Some(v) => Some(mapped(&value_map, *v, &n.name)?),
                                None => None,
                            });
                        }
                        out.add_node(Node { name: n.name.clone(), op: n.op.clone(), inputs, outputs: n.outputs.clone() })
                    }
                };
                for o in 0..n.outputs.len() {
                    value_map.insert(ValueRef { node: *ix, output: o }, ValueRef { node: new, output: o });
                }
            }
            Unit::Region(gid) => {
                let b = &built[gid];
                let last = g.node(*s.groups[*gid].members.last().unwrap());
                let mut inputs = Vec::with_capacity(b.reads.len());
                for v in &b.reads {
                    inputs.push(Some(mapped(&value_map, *v, &last.name)?));
                }
                let outputs: Vec<TensorType> = b.writes.iter().map(|m| g.node(*m).outputs[0].clone()).collect();
                let new = out.add_node(Node { name: last.name.clone(), op: Op::Stitched(Arc::new(b.region.clone())), inputs, outputs });
                for (k, m) in b.writes.iter().enumerate() {
                    value_map.insert(ValueRef { node: *m, output: 0 }, ValueRef { node: new, output: k });
                }
            }
        }
        emitted[u] = true;
        for &d in &dependents[u] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                ready.push(Reverse((key(&units[d]), d)));
            }
        }
    }
    for o in &g.outputs {
        out.outputs.push(GraphOutput { name: o.name.clone(), value: mapped(&value_map, o.value, &o.name)? });
    }
    // Reshape/Expand nodes that no live unit needs any more were absorbed as views.
    report.views_absorbed = g
        .node_indices()
        .filter(|&ix| matches!(g.node(ix).op, Op::Reshape | Op::Expand) && !live[unit_of[ix.index()]])
        .count();
    report.time = start.elapsed();
    Ok((out, report))
}

impl std::fmt::Display for StitchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "stitch: {} regions from {} nodes, {} reshape/expand views absorbed, {} weight reshapes folded, {:.1} ms (greedy pass after extraction)",
            self.regions,
            self.nodes_fused,
            self.views_absorbed,
            self.weight_reshapes_folded,
            self.time.as_secs_f64() * 1e3
        )
    }
}
