//! `StitchedRegion`: several memory-bound ops fused into one step (`Op::Stitched`).
//!
//! A region is a small expression DAG evaluated over one iteration *domain* (the common shape
//! of its outputs). Its leaves are the step's inputs, each read at its own *view shape*, which
//! broadcasts (numpy rules, right-aligned) to the domain; a view shape has the input buffer's
//! element count, so a Reshape in front of the region costs nothing. Interior nodes are
//! elementwise IR ops (unary, binary, Where, Cast, Clip, the fused activations) or at most one
//! [`RegionOp::Normalize`]: `(x − mean) / sqrt(var + ε)` over rows of the domain (a
//! LayerNorm's trailing axes, a GroupNorm's channel groups, or a channels-last GroupNorm's
//! strided channel groups; see [`RowSpec`]). Nodes that feed the
//! normalization form the *prologue* (evaluated while the statistics are gathered); nodes after
//! it apply to the normalized rows (the GroupNorm/LayerNorm affine, SiLU, a residual add).
//!
//! Backends run a region as one kernel: elementwise regions with one thread per domain element,
//! normalizing regions with one block per row (statistics in f32, then every node applied on the
//! fly). Every value computes in f32 (f64 for f64 data); inputs and outputs may be stored as
//! f16/bf16.

use std::fmt;

use crate::dtype::DType;
use crate::ir::op::Op;
use crate::sym::{shape_string, SymDim};

/// How a normalization groups the domain into rows (contiguous in the domain except for
/// [`RowSpec::GroupsChannelsLast`]).
#[derive(Clone, Debug, PartialEq)]
pub enum RowSpec {
    /// LayerNorm over axes `axis..rank`: one row per index of the leading axes.
    Trailing { axis: usize },
    /// GroupNorm over `[N, C, …]`: `groups` rows per batch entry, each `C/groups` channels × spatial.
    Groups { groups: usize },
    /// GroupNorm over a channels-last domain `[N, spatial…, C]` (rank ≥ 2): row `n·groups + g`
    /// holds every element of batch entry `n` whose channel lies in `[g·C/groups, (g+1)·C/groups)`,
    /// over all spatial positions, taken in domain order (spatial outer, channel inner). Such a
    /// row is *not* contiguous in the domain: it is `spatial` runs of `C/groups` elements, `C`
    /// apart. Rows = `N·groups`, row length = `spatial·C/groups`; `C % groups == 0` is checked
    /// at run time.
    GroupsChannelsLast { groups: usize },
}

/// What a region node computes.
#[derive(Clone, Debug, PartialEq)]
pub enum RegionOp {
    /// An elementwise IR op (`Unary`, `Binary`, `Where`, `Cast`, `Clip`, `LeakyRelu`, `Gelu`,
    /// `Silu`, `QuickGelu`) on its operands, broadcast to the domain.
    Elementwise(Op),
    /// `(x − mean(row)) / sqrt(var(row) + epsilon)` with population variance.
    Normalize { rows: RowSpec, epsilon: f32 },
}

/// An operand of a region node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operand {
    /// The region's input `k`.
    Input(usize),
    /// The value of an earlier node.
    Node(usize),
}

#[derive(Clone, Debug, PartialEq)]
pub struct RegionNode {
    pub op: RegionOp,
    pub args: Vec<Operand>,
    /// The value's dtype in the unfused graph (computation happens in the compute type of it).
    pub dtype: DType,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RegionInput {
    pub dtype: DType,
    /// The shape the region reads the input at: the buffer's element count, broadcasting to
    /// the domain.
    pub view: Vec<SymDim>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RegionOutput {
    pub node: usize,
    pub dtype: DType,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StitchedRegion {
    /// The iteration domain: every output has this shape.
    pub domain: Vec<SymDim>,
    pub inputs: Vec<RegionInput>,
    /// In evaluation order: a node's operands come before it.
    pub nodes: Vec<RegionNode>,
    pub outputs: Vec<RegionOutput>,
}

impl RowSpec {
    /// Elements per row of `domain`.
    pub fn row_len(&self, domain: &[SymDim]) -> SymDim {
        match self {
            RowSpec::Trailing { axis } => domain[*axis..].iter().cloned().product(),
            RowSpec::Groups { groups } | RowSpec::GroupsChannelsLast { groups } => {
                let per_batch: SymDim = domain[1..].iter().cloned().product();
                per_batch.floor_div(&SymDim::konst(*groups as i64))
            }
        }
    }

    /// Whether each row is one contiguous range of the domain (`row · len .. (row + 1) · len`).
    pub fn is_contiguous(&self) -> bool {
        !matches!(self, RowSpec::GroupsChannelsLast { .. })
    }
}

impl RegionOp {
    /// The name of the op this node came from (for counts and plan printing).
    pub fn name(&self) -> String {
        match self {
            RegionOp::Elementwise(op) => op.name(),
            RegionOp::Normalize { rows: RowSpec::Trailing { .. }, .. } => "LayerNorm".into(),
            RegionOp::Normalize { rows: RowSpec::Groups { .. } | RowSpec::GroupsChannelsLast { .. }, .. } => "GroupNorm".into(),
        }
    }
}

impl StitchedRegion {
    /// The normalization node, if the region has one.
    pub fn norm(&self) -> Option<(usize, &RowSpec, f32)> {
        self.nodes.iter().enumerate().find_map(|(i, n)| match &n.op {
            RegionOp::Normalize { rows, epsilon } => Some((i, rows, *epsilon)),
            _ => None,
        })
    }

    /// Checks the invariants backends rely on; the message names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let mut norms = 0;
        for (i, n) in self.nodes.iter().enumerate() {
            for a in &n.args {
                match *a {
                    Operand::Input(k) if k >= self.inputs.len() => return Err(format!("node {i} reads missing input {k}")),
                    Operand::Node(j) if j >= i => return Err(format!("node {i} reads node {j}, which is not before it")),
                    _ => {}
                }
            }
            let arity = match &n.op {
                RegionOp::Normalize { rows, .. } => {
                    norms += 1;
                    match rows {
                        RowSpec::Trailing { axis } if *axis >= self.domain.len() => return Err(format!("LayerNorm axis {axis} outside the domain")),
                        RowSpec::Groups { groups } if *groups == 0 || self.domain.len() < 2 => return Err("GroupNorm needs a domain [N, C, …] and groups ≥ 1".into()),
                        RowSpec::GroupsChannelsLast { groups } if *groups == 0 || self.domain.len() < 2 => return Err("channels-last GroupNorm needs a domain [N, …, C] and groups ≥ 1".into()),
                        _ => {}
                    }
                    1
                }
                RegionOp::Elementwise(op) => match op {
                    Op::Binary(_) => 2,
                    Op::Where => 3,
                    Op::Unary(_) | Op::Cast { .. } | Op::Clip { .. } | Op::LeakyRelu { .. } | Op::Gelu { .. } | Op::Silu | Op::QuickGelu { .. } => 1,
                    other => return Err(format!("node {i}: {} is not elementwise", other.name())),
                },
            };
            if n.args.len() != arity {
                return Err(format!("node {i} ({}) has {} operands, expected {arity}", n.op.name(), n.args.len()));
            }
        }
        if norms > 1 {
            return Err(format!("{norms} normalizations in one region (at most one)"));
        }
        for (k, inp) in self.inputs.iter().enumerate() {
            if inp.view.len() > self.domain.len() {
                return Err(format!("input {k} view {} has more axes than the domain {}", shape_string(&inp.view), shape_string(&self.domain)));
            }
            // Sizes that differ symbolically may still agree at run time (as they may for the
            // unfused ops); backends check the concrete broadcast. Constants must agree here.
            let lead = self.domain.len() - inp.view.len();
            for (a, d) in inp.view.iter().enumerate() {
                if let (Some(v), Some(w)) = (d.as_const(), self.domain[lead + a].as_const()) {
                    if v != w && v != 1 {
                        return Err(format!("input {k} view {} does not broadcast to the domain {}", shape_string(&inp.view), shape_string(&self.domain)));
                    }
                }
            }
        }
        if self.outputs.is_empty() {
            return Err("a region needs at least one output".into());
        }
        for o in &self.outputs {
            if o.node >= self.nodes.len() {
                return Err(format!("output reads missing node {}", o.node));
            }
        }
        Ok(())
    }

    /// Per node: whether the normalization's input depends on it (the prologue).
    pub fn prologue(&self) -> Vec<bool> {
        let mut pro = vec![false; self.nodes.len()];
        if let Some((k, _, _)) = self.norm() {
            let mut stack = vec![k];
            while let Some(i) = stack.pop() {
                for a in &self.nodes[i].args {
                    if let Operand::Node(j) = *a {
                        if !pro[j] {
                            pro[j] = true;
                            stack.push(j);
                        }
                    }
                }
            }
        }
        pro
    }

    /// The names of the ops the region fused, in node order.
    pub fn op_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.op.name()).collect()
    }
}

fn operand(o: &Operand) -> String {
    match o {
        Operand::Input(k) => format!("x{k}"),
        Operand::Node(j) => format!("t{j}"),
    }
}

fn node_text(n: &RegionNode) -> String {
    let args: Vec<String> = n.args.iter().map(operand).collect();
    let attrs = match &n.op {
        RegionOp::Normalize { rows: RowSpec::Trailing { axis }, epsilon } => format!("{{axis={axis}, eps={epsilon:e}}}"),
        RegionOp::Normalize { rows: RowSpec::Groups { groups }, epsilon } => format!("{{groups={groups}, eps={epsilon:e}}}"),
        RegionOp::Normalize { rows: RowSpec::GroupsChannelsLast { groups }, epsilon } => format!("{{groups={groups}, channels_last, eps={epsilon:e}}}"),
        RegionOp::Elementwise(Op::Cast { to }) => format!("{{to={to}}}"),
        RegionOp::Elementwise(Op::Clip { min, max }) => format!("{{min={min:?}, max={max:?}}}"),
        RegionOp::Elementwise(Op::LeakyRelu { alpha }) => format!("{{alpha={alpha}}}"),
        RegionOp::Elementwise(Op::QuickGelu { alpha }) => format!("{{alpha={alpha}}}"),
        RegionOp::Elementwise(Op::Gelu { tanh: true }) => "{tanh}".into(),
        _ => String::new(),
    };
    format!("{}{attrs}({})", n.op.name(), args.join(", "))
}

/// One line: `stitched[domain](x0: view, …) { t0 = Op(x0, x1); … } -> t3, t1`.
impl fmt::Display for StitchedRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ins: Vec<String> = self.inputs.iter().enumerate().map(|(k, i)| format!("x{k}: {}{}", i.dtype, shape_string(&i.view))).collect();
        let body: Vec<String> = self.nodes.iter().enumerate().map(|(j, n)| format!("t{j} = {}", node_text(n))).collect();
        let outs: Vec<String> = self.outputs.iter().map(|o| format!("t{}", o.node)).collect();
        write!(f, "stitched{}({}) {{ {} }} -> {}", shape_string(&self.domain), ins.join(", "), body.join("; "), outs.join(", "))
    }
}
