//! Normalization patterns.
//!
//! GroupNorm, as exporters write it: `Reshape[N, G, R] → InstanceNormalization(scale 1, bias 0)
//! → Reshape[N, C, …]` becomes `GroupNorm(x, 1, 0)`; a following per-channel `Mul(γ)` and
//! `Add(β)` fold into its scale and bias, one rule each. LayerNorm: the decomposed form
//! `d = x − mean(x); d / sqrt(mean(d²) + ε)` over trailing axes becomes `LayerNorm(x, 1)`, and a
//! following `Mul(γ)`/`Add(β)` over the normalized shape fold in the same way.

use egg::Id;

use super::{filled, nodes_where, same, scalar, splat, ty, FnRule, Rhs, Rule};
use crate::egraph::analysis::EGraph;
use crate::egraph::lang::{ENode, NodeKind};
use crate::ir::{BinaryOp, Op, ReduceKind, TensorType, UnaryOp};
use crate::sym::SymDim;

pub fn rules() -> Vec<Box<dyn Rule>> {
    vec![
        Box::new(FnRule { name: "group-norm", anchor: |o| matches!(o, Op::Reshape), apply: group_norm }),
        Box::new(FnRule { name: "norm-scale", anchor: |o| matches!(o, Op::Binary(BinaryOp::Mul)), apply: norm_scale }),
        Box::new(FnRule { name: "norm-shift", anchor: |o| matches!(o, Op::Binary(BinaryOp::Add)), apply: norm_shift }),
        Box::new(FnRule { name: "layer-norm", anchor: |o| matches!(o, Op::Binary(BinaryOp::Div)), apply: layer_norm }),
    ]
}

fn const_dims(shape: &[SymDim]) -> Option<Vec<usize>> {
    shape.iter().map(|d| d.as_const().filter(|v| *v >= 0).map(|v| v as usize)).collect()
}

/// `Reshape_Y(InstanceNorm(r[N, G, R], 1, 0))` with `Y = [N, C, …]`, `G | C` →
/// `GroupNorm{G}(Reshape_Y(r), 1[C], 0[C])`.
fn group_norm(eg: &EGraph, class: Id, node: &ENode, _: &Op) -> Option<Rhs> {
    let y = ty(eg, class)?.clone();
    if y.rank() < 2 || !y.dtype.is_float() {
        return None;
    }
    let c = y.shape[1].as_const()?;
    for (inorm, op) in nodes_where(eg, node.children[0], |o| matches!(o, Op::InstanceNorm { .. })) {
        let Op::InstanceNorm { epsilon } = op else { continue };
        let r = inorm.children[0];
        let rt = ty(eg, r)?;
        if rt.rank() != 3 || rt.shape[0] != y.shape[0] || rt.numel() != y.numel() {
            continue;
        }
        let Some(g) = rt.shape[1].as_const() else { continue };
        if g <= 0 || c % g != 0 || splat(eg, inorm.children[1]) != Some(1.0) || splat(eg, inorm.children[2]) != Some(0.0) {
            continue;
        }
        let c = c as usize;
        let x = Rhs::op(Op::Reshape, y.clone(), vec![Rhs::Class(r)]);
        let op = Op::GroupNorm { epsilon: *epsilon, num_groups: g as usize, per_channel_affine: true, channels_last: false };
        let ones = Rhs::konst(filled(y.dtype, &[c], 1.0));
        let zeros = Rhs::konst(filled(y.dtype, &[c], 0.0));
        return Some(Rhs::op(op, y, vec![x, ones, zeros]));
    }
    None
}

/// Where a normalization's scale/bias live and what shape they take.
enum Affine {
    /// GroupNorm (per channel, axis 1): scale/bias `[C]`.
    Channel(usize),
    /// LayerNorm over `axis..`: scale/bias with the normalized shape.
    Trailing(Vec<usize>),
}

/// A normalization node in class `n` with scale/bias classes, its affine kind and its op.
fn norm_in(eg: &EGraph, n: Id) -> Vec<(&ENode, Affine, &Op)> {
    let mut out = Vec::new();
    let Some(t) = ty(eg, n) else { return out };
    for (node, op) in nodes_where(eg, n, |o| matches!(o, Op::GroupNorm { per_channel_affine: true, channels_last: false, .. } | Op::LayerNorm { .. })) {
        match op {
            Op::GroupNorm { .. } => {
                if let Some(c) = t.shape.get(1).and_then(|d| d.as_const()) {
                    out.push((node, Affine::Channel(c as usize), op));
                }
            }
            Op::LayerNorm { axis, .. } => {
                if let Some(dims) = const_dims(&t.shape[*axis..]) {
                    out.push((node, Affine::Trailing(dims), op));
                }
            }
            _ => {}
        }
    }
    out
}

/// `p` as the affine parameter shape of `kind` for a value of type `t`: a GroupNorm parameter
/// broadcasts per channel (`[C, 1, …]`, or `[1, C, 1, …]`); a LayerNorm one has the normalized
/// shape (with optional leading 1s). Returns the flattened parameter (a reshaped constant, or a
/// Reshape node over a weight).
fn affine_param(eg: &EGraph, p: Id, kind: &Affine, t: &TensorType) -> Option<Rhs> {
    let pt = ty(eg, p)?;
    if pt.dtype != t.dtype || pt.rank() > t.rank() {
        return None;
    }
    let dims = const_dims(&pt.shape)?;
    let want: Vec<usize> = match kind {
        Affine::Channel(c) => {
            // Right-aligned against [N, C, spatial…]: the channel axis is C, every other axis 1.
            let channel_axis = (1 + dims.len()).checked_sub(t.rank())?;
            if dims.iter().enumerate().any(|(i, &d)| if i == channel_axis { d != *c } else { d != 1 }) {
                return None;
            }
            vec![*c]
        }
        Affine::Trailing(norm) => {
            let lead = dims.len().checked_sub(norm.len())?;
            if dims[..lead].iter().any(|&d| d != 1) || dims[lead..] != norm[..] {
                return None;
            }
            norm.clone()
        }
    };
    let flat_ty = TensorType::new(pt.dtype, want.iter().map(|&d| SymDim::from(d as i64)).collect());
    if flat_ty == *pt {
        return Some(Rhs::Class(p));
    }
    match &eg[p].data.konst {
        Some(k) => Some(Rhs::konst(crate::tensor::Tensor::new(want, k.data.clone()))),
        None => Some(Rhs::op(Op::Reshape, flat_ty, vec![Rhs::Class(p)])),
    }
}

/// `Norm(x, 1, 0?) · γ` (either order) → `Norm(x, γ, 0?)`.
fn norm_scale(eg: &EGraph, class: Id, node: &ENode, _: &Op) -> Option<Rhs> {
    let out = ty(eg, class)?.clone();
    for (n, p) in [(node.children[0], node.children[1]), (node.children[1], node.children[0])] {
        if ty(eg, n) != Some(&out) {
            continue;
        }
        for (norm, kind, op) in norm_in(eg, n) {
            let bias = norm.children.get(2).copied();
            let bias_is_zero = bias.is_none_or(|b| is_absent(eg, b) || splat(eg, b) == Some(0.0));
            if splat(eg, norm.children[1]) != Some(1.0) || !bias_is_zero {
                continue;
            }
            if let Some(gamma) = affine_param(eg, p, &kind, &out) {
                let mut kids = vec![Rhs::Class(norm.children[0]), gamma];
                kids.extend(bias.map(Rhs::Class));
                return Some(Rhs::op(op.clone(), out, kids));
            }
        }
    }
    None
}

fn is_absent(eg: &EGraph, class: Id) -> bool {
    eg[class].nodes.iter().any(|n| matches!(eg.analysis.ops.get(n.op).kind, NodeKind::Absent))
}

/// `Norm(x, γ, 0?) + β` (either order) → `Norm(x, γ, β)`.
fn norm_shift(eg: &EGraph, class: Id, node: &ENode, _: &Op) -> Option<Rhs> {
    let out = ty(eg, class)?.clone();
    for (n, p) in [(node.children[0], node.children[1]), (node.children[1], node.children[0])] {
        if ty(eg, n) != Some(&out) {
            continue;
        }
        for (norm, kind, op) in norm_in(eg, n) {
            let bias = norm.children.get(2).copied();
            if !bias.is_none_or(|b| is_absent(eg, b) || splat(eg, b) == Some(0.0)) {
                continue;
            }
            if let Some(beta) = affine_param(eg, p, &kind, &out) {
                return Some(Rhs::op(op.clone(), out, vec![Rhs::Class(norm.children[0]), Rhs::Class(norm.children[1]), beta]));
            }
        }
    }
    None
}

/// The `x` and trailing-axes start of `mean(x)` over `axis..rank` with keepdims.
fn trailing_mean(eg: &EGraph, class: Id) -> Vec<(Id, usize)> {
    let mut out = Vec::new();
    for (n, op) in nodes_where(eg, class, |o| matches!(o, Op::Reduce { kind: ReduceKind::Mean, keepdims: true, .. })) {
        let Op::Reduce { axes, .. } = op else { continue };
        let Some(rank) = ty(eg, n.children[0]).map(|t| t.rank()) else { continue };
        let start = axes[0];
        if axes.iter().copied().eq(start..rank) {
            out.push((n.children[0], start));
        }
    }
    out
}

/// `(x − mean(x)) / sqrt(mean((x − mean(x))²) + ε)` → `LayerNorm{axis, ε}(x, 1)`.
fn layer_norm(eg: &EGraph, class: Id, node: &ENode, _: &Op) -> Option<Rhs> {
    let out = ty(eg, class)?.clone();
    let (d, den) = (node.children[0], node.children[1]);
    for (sub, _) in nodes_where(eg, d, |o| matches!(o, Op::Binary(BinaryOp::Sub))) {
        let x = sub.children[0];
        if ty(eg, x) != Some(&out) {
            continue;
        }
        let Some(axis) = trailing_mean(eg, sub.children[1]).into_iter().find(|(y, _)| same(eg, *y, x)).map(|(_, a)| a) else { continue };
        for (sqrt, _) in nodes_where(eg, den, |o| *o == Op::Unary(UnaryOp::Sqrt)) {
            for (add, _) in nodes_where(eg, sqrt.children[0], |o| matches!(o, Op::Binary(BinaryOp::Add))) {
                let (a, b) = (add.children[0], add.children[1]);
                for (var, eps) in [(a, b), (b, a)] {
                    let Some(eps) = scalar(eg, eps) else { continue };
                    let squares_d = trailing_mean(eg, var).into_iter().any(|(sq, ax)| ax == axis && is_square_of(eg, sq, d));
                    if !squares_d {
                        continue;
                    }
                    let Some(norm) = const_dims(&out.shape[axis..]) else { continue };
                    let ones = Rhs::konst(filled(out.dtype, &norm, 1.0));
                    return Some(Rhs::op(Op::LayerNorm { axis, epsilon: eps as f32 }, out, vec![Rhs::Class(x), ones]));
                }
            }
        }
    }
    None
}

/// `d²` as `Pow(d, 2)` or `d · d`.
fn is_square_of(eg: &EGraph, class: Id, d: Id) -> bool {
    ir_square(eg, class, d)
}

fn ir_square(eg: &EGraph, class: Id, d: Id) -> bool {
    nodes_where(eg, class, |o| matches!(o, Op::Binary(BinaryOp::Pow | BinaryOp::Mul))).any(|(n, op)| match op {
        Op::Binary(BinaryOp::Pow) => same(eg, n.children[0], d) && scalar(eg, n.children[1]) == Some(2.0),
        _ => same(eg, n.children[0], d) && same(eg, n.children[1], d),
    })
}
