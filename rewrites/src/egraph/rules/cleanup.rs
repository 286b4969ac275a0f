//! Cleanup: remove exporter noise so pattern rules see one spelling.
//! Reshape chains collapse, transposes compose (or vanish), no-op casts, identities and
//! multiplications/additions by constant ones/zeros disappear, and a swap of the last two axes
//! moves through a reshape that only regroups leading (batch) axes.

use egg::Id;

use super::{nodes_where, same, splat, swaps_last_two, ty, FnRule, Rhs, Rule};
use crate::egraph::analysis::EGraph;
use crate::egraph::lang::ENode;
use crate::ir::{BinaryOp, Op, UnaryOp};

pub fn rules() -> Vec<Box<dyn Rule>> {
    vec![
        Box::new(FnRule { name: "reshape-of-reshape", anchor: |o| matches!(o, Op::Reshape), apply: reshape_of_reshape }),
        Box::new(FnRule { name: "reshape-to-own-type", anchor: |o| matches!(o, Op::Reshape | Op::Expand), apply: to_own_type }),
        Box::new(FnRule { name: "transpose-of-transpose", anchor: |o| matches!(o, Op::Transpose { .. }), apply: transpose_of_transpose }),
        Box::new(FnRule { name: "cast-to-own-type", anchor: |o| matches!(o, Op::Cast { .. }), apply: to_own_type }),
        Box::new(FnRule { name: "identity", anchor: |o| matches!(o, Op::Unary(UnaryOp::Identity)), apply: to_own_type }),
        Box::new(FnRule { name: "neutral-operand", anchor: |o| matches!(o, Op::Binary(BinaryOp::Mul | BinaryOp::Div | BinaryOp::Add | BinaryOp::Sub)), apply: neutral_operand }),
        Box::new(FnRule { name: "swap-last-two-through-batch-reshape", anchor: |o| matches!(o, Op::Transpose { .. }), apply: swap_through_batch_reshape }),
    ]
}

/// `Reshape(Reshape(x))` → `Reshape(x)`.
fn reshape_of_reshape(eg: &EGraph, class: Id, node: &ENode, _: &Op) -> Option<Rhs> {
    let out = ty(eg, class)?.clone();
    let (inner, _) = nodes_where(eg, node.children[0], |o| matches!(o, Op::Reshape)).next()?;
    Some(Rhs::op(Op::Reshape, out, vec![Rhs::Class(inner.children[0])]))
}

/// An op whose output has its input's exact type and which does not change values
/// (Reshape/Expand to the same shape, Cast to the same dtype, Identity) → its input.
fn to_own_type(eg: &EGraph, class: Id, node: &ENode, _: &Op) -> Option<Rhs> {
    let x = node.children[0];
    (ty(eg, class)? == ty(eg, x)?).then_some(Rhs::Class(x))
}

/// `Transpose(p2)(Transpose(p1)(x))` → `Transpose(p1∘p2)(x)`, or `x` when that is the identity.
fn transpose_of_transpose(eg: &EGraph, class: Id, node: &ENode, op: &Op) -> Option<Rhs> {
    let Op::Transpose { perm: p2 } = op else { return None };
    let out = ty(eg, class)?.clone();
    let (inner, inner_op) = nodes_where(eg, node.children[0], |o| matches!(o, Op::Transpose { .. })).next()?;
    let Op::Transpose { perm: p1 } = inner_op else { return None };
    if p1.len() != p2.len() {
        return None;
    }
    let perm: Vec<usize> = p2.iter().map(|&i| p1[i]).collect();
    let x = inner.children[0];
    if perm.iter().enumerate().all(|(i, &p)| i == p) {
        return Some(Rhs::Class(x));
    }
    Some(Rhs::op(Op::Transpose { perm }, out, vec![Rhs::Class(x)]))
}

/// `x * 1`, `1 * x`, `x / 1`, `x + 0`, `0 + x`, `x - 0` → `x`, when the constant does not
/// broadcast `x` to a larger shape (the output has `x`'s type).
fn neutral_operand(eg: &EGraph, class: Id, node: &ENode, op: &Op) -> Option<Rhs> {
    let Op::Binary(b) = op else { return None };
    let out = ty(eg, class)?;
    let (a, c) = (node.children[0], node.children[1]);
    let keep = |x: Id, k: Id, neutral: f64| -> Option<Rhs> { (ty(eg, x)? == out && splat(eg, k)? == neutral).then_some(Rhs::Class(x)) };
    match b {
        BinaryOp::Mul => keep(a, c, 1.0).or_else(|| keep(c, a, 1.0)),
        BinaryOp::Div => keep(a, c, 1.0),
        BinaryOp::Add => keep(a, c, 0.0).or_else(|| keep(c, a, 0.0)),
        BinaryOp::Sub => keep(a, c, 0.0),
        _ => None,
    }
}

/// `swap(Reshape(swap(y)))` → `Reshape(y)` when the reshape keeps the last two axes and only
/// regroups the leading ones (each matrix stays contiguous and in order). The dynamo export
/// spells Kᵀ this way.
fn swap_through_batch_reshape(eg: &EGraph, class: Id, node: &ENode, op: &Op) -> Option<Rhs> {
    let Op::Transpose { perm } = op else { return None };
    if !swaps_last_two(perm) {
        return None;
    }
    let out = ty(eg, class)?.clone();
    for (r, _) in nodes_where(eg, node.children[0], |o| matches!(o, Op::Reshape)) {
        let (rin, rout) = (ty(eg, r.children[0])?, ty(eg, node.children[0])?);
        let (ri, ro) = (rin.rank(), rout.rank());
        if ri < 2 || ro < 2 || rin.shape[ri - 2..] != rout.shape[ro - 2..] {
            continue;
        }
        for (t, t_op) in nodes_where(eg, r.children[0], |o| matches!(o, Op::Transpose { .. })) {
            let Op::Transpose { perm: p } = t_op else { continue };
            if swaps_last_two(p) && !same(eg, t.children[0], class) {
                return Some(Rhs::op(Op::Reshape, out, vec![Rhs::Class(t.children[0])]));
            }
        }
    }
    None
}
