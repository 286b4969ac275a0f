//! What an op builder sees (`NodeCtx`) and returns (`Built`), plus the shape helpers every op
//! family shares (axis normalisation, broadcasting, dtype checks).

use std::sync::Arc;

use crate::dtype::DType;
use crate::ir::{Op, TensorType};
use crate::source::{Attr, SourceNode};
use crate::sym::{shape_string, SymDim};
use crate::tensor::Tensor;

use super::known::Known;

/// Why a node cannot be imported; becomes `NodeStatus::Unsupported` or an `Error::Node`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Unsupported(pub String);

pub(crate) type Build = Result<Built, Unsupported>;

pub(crate) fn unsup<T>(msg: impl Into<String>) -> Result<T, Unsupported> {
    Err(Unsupported(msg.into()))
}

/// A value as the importer tracks it: its type and, when known at import time, its elements.
#[derive(Clone, Debug)]
pub(crate) struct Value {
    pub ty: TensorType,
    pub known: Option<Known>,
}

impl Value {
    pub fn rank(&self) -> usize {
        self.ty.shape.len()
    }
    pub fn dtype(&self) -> DType {
        self.ty.dtype
    }
    pub fn shape(&self) -> &[SymDim] {
        &self.ty.shape
    }
}

/// Where an input of a generated node comes from.
#[derive(Clone, Debug)]
pub(crate) enum Operand {
    /// The ONNX node's input with this index.
    In(usize),
    /// Output 0 of an earlier spec of the same `Built::Nodes`.
    Prev(usize),
    /// A new constant.
    Const(Arc<Tensor>),
}

#[derive(Clone, Debug)]
pub(crate) struct NodeSpec {
    pub op: Op,
    pub inputs: Vec<Option<Operand>>,
    pub outputs: Vec<TensorType>,
}

/// What an op builder decided.
#[derive(Clone, Debug)]
pub(crate) enum Built {
    /// Every output is known at import time (one per ONNX output); no step.
    Folded(Vec<Known>),
    /// Output 0 is the node's input with this index (Identity, Dropout, one-input Sum).
    Alias(usize),
    /// IR nodes, in order; the last one's outputs are the ONNX node's outputs.
    Nodes(Vec<NodeSpec>),
}

impl Built {
    /// One IR node reading the ONNX inputs with these indices (`None`: absent optional slot).
    pub fn node(op: Op, inputs: &[Option<usize>], outputs: Vec<TensorType>) -> Built {
        let inputs = inputs.iter().map(|i| i.map(Operand::In)).collect();
        Built::Nodes(vec![NodeSpec { op, inputs, outputs }])
    }

    pub fn one(op: Op, inputs: &[usize], output: TensorType) -> Built {
        let ins: Vec<Option<usize>> = inputs.iter().map(|&i| Some(i)).collect();
        Built::node(op, &ins, vec![output])
    }

    pub fn folded(k: Known) -> Build {
        Ok(Built::Folded(vec![k]))
    }
}

pub(crate) const FLOATS: &[DType] = &[DType::F32, DType::F16, DType::BF16];
pub(crate) const NUMERIC: &[DType] = &[DType::F32, DType::F16, DType::BF16, DType::I32, DType::I64];
pub(crate) const INTS: &[DType] = &[DType::I32, DType::I64];
/// Element types data-movement and index ops accept.
pub(crate) const ANY: &[DType] = &[DType::F32, DType::F16, DType::BF16, DType::I32, DType::I64, DType::Bool];

/// One ONNX node as a builder sees it.
pub(crate) struct NodeCtx<'a> {
    pub node: &'a SourceNode,
    pub opset: i64,
    /// Parallel to `node.inputs`; `None` for an absent optional input.
    pub inputs: Vec<Option<&'a Value>>,
    /// Parallel to `node.outputs`: whether anything reads that output.
    pub output_used: Vec<bool>,
}

impl<'a> NodeCtx<'a> {
    pub fn input(&self, i: usize) -> Result<&'a Value, Unsupported> {
        match self.inputs.get(i) {
            Some(Some(v)) => Ok(v),
            _ => unsup(format!("required input {i} is missing")),
        }
    }

    pub fn opt_input(&self, i: usize) -> Option<&'a Value> {
        self.inputs.get(i).copied().flatten()
    }

    pub fn input_name(&self, i: usize) -> &str {
        self.node.inputs.get(i).map(String::as_str).unwrap_or("")
    }

    pub fn num_outputs(&self) -> usize {
        self.node.outputs.len()
    }

    /// Requires output `i` (if present) to be unused: for optional outputs quilt does not produce.
    pub fn require_unused_output(&self, i: usize, what: &str) -> Result<(), Unsupported> {
        if self.output_used.get(i).copied().unwrap_or(false) {
            return unsup(format!("output {i} ({what}) is used, and quilt does not produce it"));
        }
        Ok(())
    }

    pub fn attr(&self, name: &str) -> Option<&'a Attr> {
        self.node.attrs.get(name)
    }

    pub fn int_attr(&self, name: &str) -> Result<Option<i64>, Unsupported> {
        match self.attr(name) {
            None => Ok(None),
            Some(Attr::Int(v)) => Ok(Some(*v)),
            Some(other) => unsup(format!("attribute '{name}' should be an int, is {other:?}")),
        }
    }

    pub fn int_or(&self, name: &str, default: i64) -> Result<i64, Unsupported> {
        Ok(self.int_attr(name)?.unwrap_or(default))
    }

    pub fn float_or(&self, name: &str, default: f32) -> Result<f32, Unsupported> {
        match self.attr(name) {
            None => Ok(default),
            Some(Attr::Float(v)) => Ok(*v),
            Some(Attr::Int(v)) => Ok(*v as f32),
            Some(other) => unsup(format!("attribute '{name}' should be a float, is {other:?}")),
        }
    }

    pub fn ints_attr(&self, name: &str) -> Result<Option<Vec<i64>>, Unsupported> {
        match self.attr(name) {
            None => Ok(None),
            Some(Attr::Ints(v)) => Ok(Some(v.clone())),
            Some(Attr::Int(v)) => Ok(Some(vec![*v])),
            Some(other) => unsup(format!("attribute '{name}' should be ints, is {other:?}")),
        }
    }

    pub fn string_or(&self, name: &str, default: &str) -> Result<String, Unsupported> {
        match self.attr(name) {
            None => Ok(default.to_string()),
            Some(Attr::String(s)) => Ok(s.clone()),
            Some(other) => unsup(format!("attribute '{name}' should be a string, is {other:?}")),
        }
    }

    /// The elements of a parameter input (shape, axes, pads, …), which must be known at import.
    pub fn param_ints(&self, i: usize, what: &str) -> Result<Vec<SymDim>, Unsupported> {
        let v = self.input(i)?;
        match v.known.as_ref().and_then(|k| k.ints()) {
            Some(ints) => Ok(ints),
            None if v.dtype().is_float() => unsup(format!("{what} (input {i}) is {}, expected integers", v.dtype())),
            None => unsup(format!("{what} (input {i}, '{}') is not known at import time", self.input_name(i))),
        }
    }

    /// Like `param_ints`, but every element must be a constant.
    pub fn param_consts(&self, i: usize, what: &str) -> Result<Vec<i64>, Unsupported> {
        let ints = self.param_ints(i, what)?;
        ints.iter()
            .map(|d| d.as_const().ok_or_else(|| Unsupported(format!("{what} (input {i}) depends on input sizes ({d})"))))
            .collect()
    }

    /// The elements of a constant numeric parameter input, widened to f64.
    pub fn param_f64s(&self, i: usize, what: &str) -> Result<Vec<f64>, Unsupported> {
        let v = self.input(i)?;
        match v.known.as_ref().and_then(|k| k.tensor()) {
            Some(t) => Ok(t.data.to_f64_vec()),
            None => unsup(format!("{what} (input {i}, '{}') is not a constant", self.input_name(i))),
        }
    }

    pub fn check_dtype(&self, i: usize, allowed: &[DType]) -> Result<DType, Unsupported> {
        let d = self.input(i)?.dtype();
        if !allowed.contains(&d) {
            return unsup(format!("input {i} has element type {d}, which {} does not support", self.node.op_type));
        }
        Ok(d)
    }

    /// Requires inputs `ids` to share one element type, from `allowed`.
    pub fn same_dtype(&self, ids: &[usize], allowed: &[DType]) -> Result<DType, Unsupported> {
        let d = self.check_dtype(ids[0], allowed)?;
        for &i in &ids[1..] {
            let di = self.input(i)?.dtype();
            if di != d {
                return unsup(format!("inputs 0 and {i} have different element types ({d} vs {di})"));
            }
        }
        Ok(d)
    }

    /// The values of inputs `ids` when all are known and small enough to fold.
    pub fn known_small(&self, ids: &[usize]) -> Option<Vec<&'a Known>> {
        ids.iter()
            .map(|&i| self.opt_input(i).and_then(|v| v.known.as_ref()).filter(|k| k.is_small()))
            .collect()
    }
}

/// Normalises a possibly negative axis into `0..rank`.
pub(crate) fn norm_axis(axis: i64, rank: usize) -> Result<usize, Unsupported> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return unsup(format!("axis {axis} is out of range for rank {rank}"));
    }
    Ok(if axis < 0 { (axis + r) as usize } else { axis as usize })
}

/// Normalises a list of axes; duplicates are an error.
pub(crate) fn norm_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, Unsupported> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = norm_axis(a, rank)?;
        if out.contains(&n) {
            return unsup(format!("axis {a} is repeated in {axes:?}"));
        }
        out.push(n);
    }
    Ok(out)
}

/// One broadcast dimension: equal → it; one is 1 → the other; otherwise both must match at run
/// time, and `max` is the size when they do.
pub(crate) fn broadcast_dim(a: &SymDim, b: &SymDim) -> Result<SymDim, Unsupported> {
    if a == b || b.as_const() == Some(1) {
        return Ok(a.clone());
    }
    if a.as_const() == Some(1) {
        return Ok(b.clone());
    }
    // max(a, min(a, c)) = a: a slice clamped to a dim, broadcast against that dim.
    for (x, y) in [(a, b), (b, a)] {
        if let SymDim::Min(m) = y {
            if &m.0 == x || &m.1 == x {
                return Ok(x.clone());
            }
        }
    }
    if let (Some(x), Some(y)) = (a.as_const(), b.as_const()) {
        return unsup(format!("dimensions {x} and {y} do not broadcast"));
    }
    Ok(a.max_of(b))
}

/// ONNX multidirectional broadcasting of two shapes.
pub(crate) fn broadcast(a: &[SymDim], b: &[SymDim]) -> Result<Vec<SymDim>, Unsupported> {
    let n = a.len().max(b.len());
    let one = SymDim::from(1i64);
    (0..n)
        .map(|i| {
            let da = if i + a.len() >= n { &a[i + a.len() - n] } else { &one };
            let db = if i + b.len() >= n { &b[i + b.len() - n] } else { &one };
            broadcast_dim(da, db).map_err(|e| Unsupported(format!("{} (shapes {} and {})", e.0, shape_string(a), shape_string(b))))
        })
        .collect()
}

/// Concrete sizes of a shape, when every dim is a constant.
pub(crate) fn const_shape(shape: &[SymDim]) -> Option<Vec<usize>> {
    shape.iter().map(|d| d.as_const().filter(|&v| v >= 0).map(|v| v as usize)).collect()
}

pub(crate) fn sym_shape(shape: &[usize]) -> Vec<SymDim> {
    shape.iter().map(|&d| SymDim::from(d)).collect()
}

/// `x` clamped into `[lo, hi]`, using that dimension expressions are ≥ their lower bound.
pub(crate) fn clamp(x: &SymDim, lo: &SymDim, hi: &SymDim) -> SymDim {
    let above = if let (Some(l), true) = (lo.as_const(), true) {
        if x.lower_bound() >= l { x.clone() } else { x.max_of(lo) }
    } else {
        x.max_of(lo)
    };
    min_bounded(&above, hi)
}

/// `min(a, b)` that also knows a constant below the other side's lower bound is the minimum.
pub(crate) fn min_bounded(a: &SymDim, b: &SymDim) -> SymDim {
    match (a.as_const(), b.as_const()) {
        (Some(c), None) if c <= b.lower_bound() => a.clone(),
        (None, Some(c)) if c <= a.lower_bound() => b.clone(),
        _ => a.min_of(b),
    }
}

/// `m*(a / c) + k` (c > 0, m dividing k) rewritten as `m*((a + (k/m)*c) / c)`, so sizes that
/// shape arithmetic computes (`(H - 1) / 2 + 1`) meet the ones Conv inference gives
/// (`(H + 1) / 2`); applied through the whole expression.
pub(crate) fn absorb_offset(d: SymDim) -> SymDim {
    match &d {
        SymDim::Add(terms) => {
            let terms: Vec<SymDim> = terms.iter().cloned().map(absorb_offset).collect();
            let sum: SymDim = terms.into_iter().sum();
            if let SymDim::Add(t) = &sum {
                if let [div_term, SymDim::Const(k)] = &t[..] {
                    let (m, div) = match div_term {
                        SymDim::Mul(f) if f.len() == 2 => match (&f[0], &f[1]) {
                            (SymDim::Const(m), q @ SymDim::FloorDiv(_)) => (*m, q.clone()),
                            _ => return sum,
                        },
                        q @ SymDim::FloorDiv(_) => (1, q.clone()),
                        _ => return sum,
                    };
                    if let SymDim::FloorDiv(ac) = &div {
                        if let Some(c) = ac.1.as_const().filter(|&c| c > 0) {
                            if m != 0 && k % m == 0 {
                                let q = (ac.0.clone() + SymDim::from(k / m * c)).floor_div(&ac.1);
                                return SymDim::from(m) * q;
                            }
                        }
                    }
                }
            }
            sum
        }
        SymDim::Mul(fs) => fs.iter().cloned().map(absorb_offset).product(),
        SymDim::FloorDiv(ab) => absorb_offset(ab.0.clone()).floor_div(&absorb_offset(ab.1.clone())),
        SymDim::Mod(ab) => absorb_offset(ab.0.clone()).rem(&absorb_offset(ab.1.clone())),
        SymDim::Min(ab) => absorb_offset(ab.0.clone()).min_of(&absorb_offset(ab.1.clone())),
        SymDim::Max(ab) => absorb_offset(ab.0.clone()).max_of(&absorb_offset(ab.1.clone())),
        _ => d,
    }
}
