//! Attention: `MatMul(Softmax_last(scale·MatMul(q, kᵀ) + mask?), v)` becomes
//! `Attention{scale}(q, k, v, mask?)`, with the scale collected from constant Mul/Div on q, on
//! kᵀ and on the scores (every spelling in the fixtures). `k` is written as `swap(kᵀ)`, which
//! the cleanup rules cancel against the exporter's own transposes. A second rule absorbs the
//! head split/merge chains (`Reshape[B,S,H,D] → Transpose[0,2,1,3]` on q, k, v and the inverse
//! on the output) into the packed-heads layout `Attention{scale, heads: H}`.

use egg::Id;

use super::{nodes_where, scalar, swap_last_two, ty, FnRule, Rhs, Rule};
use crate::egraph::analysis::EGraph;
use crate::egraph::lang::ENode;
use crate::ir::{BinaryOp, Op, TensorType};
use crate::sym::SymDim;

pub fn rules() -> Vec<Box<dyn Rule>> {
    vec![
        Box::new(FnRule { name: "attention", anchor: |o| matches!(o, Op::MatMul), apply: attention }),
        Box::new(FnRule { name: "attention-pack-heads", anchor: |o| matches!(o, Op::Reshape), apply: pack_heads }),
    ]
}

/// `(x, s)` with the class = `x · s` through up to three constant scalar Mul/Div that keep the
/// type (including `(class, 1)` itself).
fn peel_scale(eg: &EGraph, class: Id) -> Vec<(Id, f64)> {
    let mut out = vec![(class, 1.0)];
    let mut frontier = vec![(class, 1.0)];
    for _ in 0..3 {
        let mut next = Vec::new();
        for &(c, s) in &frontier {
            let Some(t) = ty(eg, c) else { continue };
            for (n, op) in nodes_where(eg, c, |o| matches!(o, Op::Binary(BinaryOp::Mul | BinaryOp::Div))) {
                let (a, b) = (n.children[0], n.children[1]);
                let mut push = |x: Id, k: f64| {
                    if ty(eg, x) == Some(t) && k.is_finite() && k != 0.0 {
                        next.push((x, s * k));
                    }
                };
                match op {
                    Op::Binary(BinaryOp::Mul) => {
                        if let Some(k) = scalar(eg, b) {
                            push(a, k);
                        }
                        if let Some(k) = scalar(eg, a) {
                            push(b, k);
                        }
                    }
                    _ => {
                        if let Some(k) = scalar(eg, b) {
                            push(a, 1.0 / k);
                        }
                    }
                }
            }
        }
        out.extend(next.iter().copied());
        frontier = next;
    }
    // Most peeled first: the scale goes into the fused op rather than staying on an input.
    out.reverse();
    out
}

/// `mask` broadcasts to `scores` without growing it (each dim equal or 1, rank ≤).
fn broadcasts_to(mask: &TensorType, scores: &TensorType) -> bool {
    let (m, s) = (mask.rank(), scores.rank());
    m <= s && mask.dtype == scores.dtype && mask.shape.iter().zip(&scores.shape[s - m..]).all(|(a, b)| a == b || *a == SymDim::konst(1))
}

/// `(unmasked scores, mask?)` for the softmax input class.
fn split_mask(eg: &EGraph, class: Id) -> Vec<(Id, Option<Id>)> {
    let mut out = vec![(class, None)];
    let Some(st) = ty(eg, class) else { return out };
    for (n, _) in nodes_where(eg, class, |o| matches!(o, Op::Binary(BinaryOp::Add))) {
        let (a, b) = (n.children[0], n.children[1]);
        for (s, m) in [(a, b), (b, a)] {
            if ty(eg, s) == Some(st) && ty(eg, m).is_some_and(|mt| broadcasts_to(mt, st)) {
                out.push((s, Some(m)));
            }
        }
    }
    out
}

fn attention(eg: &EGraph, class: Id, node: &ENode, _: &Op) -> Option<Rhs> {
    let out = ty(eg, class)?.clone();
    let (p, v) = (node.children[0], node.children[1]);
    let vt = ty(eg, v)?;
    let r = out.rank();
    if r < 2 || vt.rank() != r || !out.dtype.is_float() {
        return None;
    }
    for (sm, op) in nodes_where(eg, p, |o| matches!(o, Op::Softmax { .. })) {
        let Op::Softmax { axis } = op else { continue };
        if *axis != r - 1 {
            continue;
        }
        for (masked, mask) in split_mask(eg, sm.children[0]) {
            for (scores, s0) in peel_scale(eg, masked) {
                for (qk, _) in nodes_where(eg, scores, |o| matches!(o, Op::MatMul)) {
                    for (q, s1) in peel_scale(eg, qk.children[0]) {
                        for (kt, s2) in peel_scale(eg, qk.children[1]) {
                            let (qt, ktt) = (ty(eg, q)?, ty(eg, kt)?);
                            if qt.rank() != r || ktt.rank() != r {
                                continue;
                            }
                            let lead = &out.shape[..r - 2];
                            // No broadcasting between q, k, v: every leading dim agrees.
                            if qt.shape[..r - 2] != *lead || ktt.shape[..r - 2] != *lead || vt.shape[..r - 2] != *lead {
                                continue;
                            }
                            if qt.dtype != out.dtype || ktt.dtype != out.dtype || vt.dtype != out.dtype {
                                continue;
                            }
                            let mut kshape = ktt.shape.clone();
                            kshape.swap(r - 1, r - 2);
                            let k = Rhs::op(Op::Transpose { perm: swap_last_two(r) }, TensorType::new(ktt.dtype, kshape), vec![Rhs::Class(kt)]);
                            let scale = (s0 * s1 * s2) as f32;
                            let mut kids = vec![Rhs::Class(q), k, Rhs::Class(v)];
                            kids.extend(mask.map(Rhs::Class));
                            return Some(Rhs::op(Op::Attention { scale, heads: None, columns: None }, out, kids));
                        }
                    }
                }
            }
        }
    }
    None
}

/// `x` when `class` = `Transpose[0,2,1,3](Reshape[B, S, H, D](x))` with `x: [B, S, H·D]`;
/// returns `(x, H, D)`.
fn split_heads(eg: &EGraph, class: Id) -> Vec<(Id, SymDim, SymDim)> {
    let mut out = Vec::new();
    for (t, _) in nodes_where(eg, class, |o| *o == (Op::Transpose { perm: vec![0, 2, 1, 3] })) {
        for (r, _) in nodes_where(eg, t.children[0], |o| matches!(o, Op::Reshape)) {
            let (Some(rt), Some(xt)) = (ty(eg, t.children[0]), ty(eg, r.children[0])) else { continue };
            if rt.rank() != 4 || xt.rank() != 3 || xt.shape[..2] != rt.shape[..2] {
                continue;
            }
            if xt.shape[2] == rt.shape[2].clone() * rt.shape[3].clone() {
                out.push((r.children[0], rt.shape[2].clone(), rt.shape[3].clone()));
            }
        }
    }
    out
}

/// `Reshape[B, N, H·Dv](Transpose[0,2,1,3](Attention(split(q), split(k), split(v), mask?)))`
/// → `Attention{heads: H}(q, k, v, mask?)`.
fn pack_heads(eg: &EGraph, class: Id, node: &ENode, _: &Op) -> Option<Rhs> {
    let out = ty(eg, class)?.clone();
    if out.rank() != 3 {
        return None;
    }
    for (t, _) in nodes_where(eg, node.children[0], |o| *o == (Op::Transpose { perm: vec![0, 2, 1, 3] })) {
        for (a, op) in nodes_where(eg, t.children[0], |o| matches!(o, Op::Attention { heads: None, .. })) {
            let Op::Attention { scale, .. } = op else { continue };
            let at = ty(eg, t.children[0])?;
            if at.rank() != 4 {
                continue;
            }
            let (h, dv) = (at.shape[1].clone(), at.shape[3].clone());
            let Some(heads) = h.as_const().filter(|h| *h > 0) else { continue };
            if out.shape[..2] != [at.shape[0].clone(), at.shape[2].clone()] || out.shape[2] != h.clone() * dv.clone() {
                continue;
            }
            let qs = split_heads(eg, a.children[0]);
            let ks = split_heads(eg, a.children[1]);
            let vs = split_heads(eg, a.children[2]);
            for (q, hq, _) in &qs {
                for (k, hk, _) in &ks {
                    for (v, hv, dvv) in &vs {
                        if *hq != h || *hk != h || *hv != h || *dvv != dv {
                            continue;
                        }
                        let mut kids = vec![Rhs::Class(*q), Rhs::Class(*k), Rhs::Class(*v)];
                        kids.extend(a.children.get(3).map(|m| Rhs::Class(*m)));
                        return Some(Rhs::op(Op::Attention { scale: *scale, heads: Some(heads as usize), columns: None }, out, kids));
                    }
                }
            }
        }
    }
    None
}
