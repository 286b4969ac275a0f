//! Activation patterns: SiLU `x·σ(x)`, QuickGELU `x·σ(αx)`, GELU (erf form
//! `0.5·x·(1 + erf(x/√2))` and tanh form `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, in any
//! association of the products) and GeGLU `a·gelu(gate)` where `a`/`gate` are the halves of one
//! tensor's last axis (two Slices, or a Split).

use egg::Id;

use super::{close, nodes_where, same, scalar, ty, FnRule, Rhs, Rule};
use crate::egraph::analysis::EGraph;
use crate::egraph::lang::{ENode, NodeKind};
use crate::ir::{BinaryOp, Op, UnaryOp};
use crate::sym::SymDim;

pub fn rules() -> Vec<Box<dyn Rule>> {
    let mul = |o: &Op| matches!(o, Op::Binary(BinaryOp::Mul));
    vec![
        Box::new(FnRule { name: "silu", anchor: mul, apply: silu }),
        Box::new(FnRule { name: "gelu", anchor: mul, apply: gelu }),
        Box::new(FnRule { name: "geglu", anchor: mul, apply: geglu }),
    ]
}

const SIGMOID: Op = Op::Unary(UnaryOp::Sigmoid);

/// `(x, c)` for every spelling of the class as `x · c` or `x / (1/c)` with a scalar constant.
fn scalar_multiples(eg: &EGraph, class: Id) -> Vec<(Id, f64)> {
    let mut out = Vec::new();
    for (n, o) in nodes_where(eg, class, |o| matches!(o, Op::Binary(BinaryOp::Mul | BinaryOp::Div))) {
        let (a, b) = (n.children[0], n.children[1]);
        match o {
            Op::Binary(BinaryOp::Mul) => {
                if let Some(k) = scalar(eg, b) {
                    out.push((a, k));
                }
                if let Some(k) = scalar(eg, a) {
                    out.push((b, k));
                }
            }
            _ => {
                if let Some(k) = scalar(eg, b).filter(|k| *k != 0.0) {
                    out.push((a, 1.0 / k));
                }
            }
        }
    }
    out
}

/// `x·σ(x)` → `Silu(x)`; `x·σ(αx)` → `QuickGelu{α}(x)` (either operand order).
fn silu(eg: &EGraph, class: Id, node: &ENode, _: &Op) -> Option<Rhs> {
    let out = ty(eg, class)?.clone();
    for (x, s) in [(node.children[0], node.children[1]), (node.children[1], node.children[0])] {
        if ty(eg, x) != Some(&out) {
            continue;
        }
        for (sig, _) in nodes_where(eg, s, |o| *o == SIGMOID) {
            let arg = sig.children[0];
            if same(eg, arg, x) {
                return Some(Rhs::op(Op::Silu, out, vec![Rhs::Class(x)]));
            }
            for (y, alpha) in scalar_multiples(eg, arg) {
                if same(eg, y, x) {
                    return Some(Rhs::op(Op::QuickGelu { alpha: alpha as f32 }, out, vec![Rhs::Class(x)]));
                }
            }
        }
    }
    None
}

/// The ways to write a class as a product of at most `max` factors (itself included), looking
/// `depth` Mul levels down.
fn factorizations(eg: &EGraph, class: Id, depth: usize, max: usize) -> Vec<Vec<Id>> {
    let mut out = vec![vec![class]];
    if depth == 0 {
        return out;
    }
    for (n, _) in nodes_where(eg, class, |o| matches!(o, Op::Binary(BinaryOp::Mul))) {
        let left = factorizations(eg, n.children[0], depth - 1, max);
        let right = factorizations(eg, n.children[1], depth - 1, max);
        for l in &left {
            for r in &right {
                if l.len() + r.len() <= max {
                    out.push(l.iter().chain(r).copied().collect());
                }
            }
        }
    }
    out
}

/// The `e` in `1 + e` / `e + 1`.
fn one_plus(eg: &EGraph, class: Id) -> Vec<Id> {
    let mut out = Vec::new();
    for (n, _) in nodes_where(eg, class, |o| matches!(o, Op::Binary(BinaryOp::Add))) {
        let (a, b) = (n.children[0], n.children[1]);
        if scalar(eg, b) == Some(1.0) {
            out.push(a);
        }
        if scalar(eg, a) == Some(1.0) {
            out.push(b);
        }
    }
    out
}

fn unary_inputs(eg: &EGraph, class: Id, u: UnaryOp) -> Vec<Id> {
    nodes_where(eg, class, move |o| *o == Op::Unary(u)).map(|(n, _)| n.children[0]).collect()
}

const REL: f64 = 1e-4;

/// Whether `a` is `1 + erf(x/√2)` (erf form) or `1 + tanh(√(2/π)(x + 0.044715x³))` (tanh form)
/// for this `x`; returns `Some(tanh)`.
fn gelu_bracket(eg: &EGraph, a: Id, x: Id) -> Option<bool> {
    for e in one_plus(eg, a) {
        for arg in unary_inputs(eg, e, UnaryOp::Erf) {
            if scalar_multiples(eg, arg).iter().any(|&(y, k)| same(eg, y, x) && close(k, std::f64::consts::FRAC_1_SQRT_2, REL)) {
                return Some(false);
            }
        }
        for arg in unary_inputs(eg, e, UnaryOp::Tanh) {
            if tanh_argument(eg, arg, x) {
                return Some(true);
            }
        }
    }
    None
}

/// `√(2/π)·(x + 0.044715·x³)` in any association.
fn tanh_argument(eg: &EGraph, arg: Id, x: Id) -> bool {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    for f in factorizations(eg, arg, 2, 2) {
        let [p, q] = f[..] else { continue };
        for (c, inner) in [(p, q), (q, p)] {
            if !scalar(eg, c).is_some_and(|v| close(v, k, REL)) {
                continue;
            }
            for (n, _) in nodes_where(eg, inner, |o| matches!(o, Op::Binary(BinaryOp::Add))) {
                let (a, b) = (n.children[0], n.children[1]);
                for (lin, cubic) in [(a, b), (b, a)] {
                    if same(eg, lin, x) && is_cubic_term(eg, cubic, x) {
                        return true;
                    }
                }
            }
        }
    }
    false
}

/// `0.044715·x³`, with `x³` as `Pow(x, 3)` or `x·x·x`.
fn is_cubic_term(eg: &EGraph, class: Id, x: Id) -> bool {
    let cube = |c: Id| nodes_where(eg, c, |o| matches!(o, Op::Binary(BinaryOp::Pow))).any(|(n, _)| same(eg, n.children[0], x) && scalar(eg, n.children[1]) == Some(3.0));
    for f in factorizations(eg, class, 3, 4) {
        let Some(ci) = f.iter().position(|&c| scalar(eg, c).is_some_and(|v| close(v, 0.044715, REL))) else { continue };
        let rest: Vec<Id> = f.iter().enumerate().filter(|(i, _)| *i != ci).map(|(_, c)| *c).collect();
        match rest[..] {
            [c] if cube(c) => return true,
            [a, b, c] if [a, b, c].iter().all(|&y| same(eg, y, x)) => return true,
            _ => {}
        }
    }
    false
}

/// `0.5 · x · bracket` in any association → `Gelu{tanh}(x)`.
fn gelu(eg: &EGraph, class: Id, _node: &ENode, _: &Op) -> Option<Rhs> {
    let out = ty(eg, class)?.clone();
    for f in factorizations(eg, class, 2, 3) {
        let [a, b, c] = f[..] else { continue };
        for (half, x, bracket) in [(a, b, c), (a, c, b), (b, a, c), (b, c, a), (c, a, b), (c, b, a)] {
            if scalar(eg, half) != Some(0.5) || ty(eg, x) != Some(&out) {
                continue;
            }
            if let Some(tanh) = gelu_bracket(eg, bracket, x) {
                return Some(Rhs::op(Op::Gelu { tanh }, out, vec![Rhs::Class(x)]));
            }
        }
    }
    None
}

/// The tensor whose last-axis halves are `a` (first) and `b` (second): two Slices or a Split.
fn halves_of(eg: &EGraph, a: Id, b: Id) -> Option<Id> {
    let (ta, tb) = (ty(eg, a)?, ty(eg, b)?);
    let last = ta.rank().checked_sub(1)?;
    if ta != tb {
        return None;
    }
    let half = ta.shape[last].clone();
    for (sa, oa) in nodes_where(eg, a, |o| matches!(o, Op::Slice { .. })) {
        let Op::Slice { axes, starts, steps } = oa else { continue };
        if axes[..] != [last] || steps[..] != [1] || starts[0] != SymDim::konst(0) {
            continue;
        }
        let h = sa.children[0];
        if ty(eg, h)?.shape[last] != half.clone() * SymDim::konst(2) {
            continue;
        }
        for (sb, ob) in nodes_where(eg, b, |o| matches!(o, Op::Slice { .. })) {
            let Op::Slice { axes, starts, steps } = ob else { continue };
            if axes[..] == [last] && steps[..] == [1] && starts[0] == half && same(eg, sb.children[0], h) {
                return Some(h);
            }
        }
    }
    let proj = |c: Id, i: usize| -> Vec<Id> {
        eg[c].nodes.iter().filter(|n| matches!(eg.analysis.ops.get(n.op).kind, NodeKind::Proj(j) if j == i)).map(|n| n.children[0]).collect()
    };
    for t in proj(a, 0) {
        if !proj(b, 1).iter().any(|&u| same(eg, u, t)) || eg[t].data.types.len() != 2 {
            continue;
        }
        for (split, op) in nodes_where(eg, t, |o| matches!(o, Op::Split { .. })) {
            if *op == (Op::Split { axis: last }) {
                return Some(split.children[0]);
            }
        }
    }
    None
}

/// `a · gelu(gate)` (either order) with `a`, `gate` the halves of `h` → `GeGlu(h)`.
fn geglu(eg: &EGraph, class: Id, node: &ENode, _: &Op) -> Option<Rhs> {
    let out = ty(eg, class)?.clone();
    for (a, g) in [(node.children[0], node.children[1]), (node.children[1], node.children[0])] {
        if ty(eg, a) != Some(&out) {
            continue;
        }
        for (gn, gop) in nodes_where(eg, g, |o| matches!(o, Op::Gelu { .. })) {
            let Op::Gelu { tanh } = gop else { continue };
            if let Some(h) = halves_of(eg, a, gn.children[0]) {
                return Some(Rhs::op(Op::GeGlu { tanh: *tanh }, out, vec![Rhs::Class(h)]));
            }
        }
    }
    None
}
