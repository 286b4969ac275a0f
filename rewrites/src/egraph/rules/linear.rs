//! Linear layers: a MatMul by a weight matrix followed by a bias add becomes one GEMM whose C
//! input is the bias, so the backend adds the bias in the GEMM's epilogue (cuBLASLt
//! `EPILOGUE_BIAS`) instead of writing the product and reading it back in a separate Add.
//!
//! `Add(MatMul(x[…, K], W[K, N]), b[N])` (either operand order) →
//! `Reshape[…, N](Gemm{α=1, β=1}(Reshape[M, K](x), W, b))` with `M` the product of `x`'s leading
//! dims (a `SymDim` expression, so the rewrite holds at every binding of the symbols).
//!
//! Why the ONNX `Gemm` and not a dedicated linear op: `Gemm` already has the exact semantics
//! (`C` broadcast to `[M, N]`, unidirectionally), a CPU reference, shape checks, precision
//! handling and a CUDA lowering; the two Reshapes are views (no launch, no copy), so the only
//! thing a new op would add is a rank > 2 `A`, at the price of touching every backend.
//!
//! Narrow on purpose: `W` must depend only on weights (a rank-2 constant/initializer), `b` must
//! be a weight vector `[N]` or `[1, N]` (bias, not a residual: a full-size addend stays an Add
//! and joins a stitched region), dtypes are one float type, the Add must not broadcast the
//! product to a larger shape, and the MatMul must have no other consumer node (otherwise both
//! the MatMul and the Gemm would run). A product that is itself a graph output is not seen here
//! (the e-graph does not know its roots): the result stays correct, with one GEMM too many.

use std::collections::HashSet;

use egg::Id;

use super::{nodes_where, ty, FnRule, Rhs, Rule};
use crate::egraph::analysis::EGraph;
use crate::egraph::lang::ENode;
use crate::ir::{BinaryOp, Op, TensorType};
use crate::sym::SymDim;

pub fn rules() -> Vec<Box<dyn Rule>> {
    vec![Box::new(FnRule { name: "linear-bias", anchor: |o| matches!(o, Op::Binary(BinaryOp::Add)), apply: linear_bias })]
}

/// Distinct classes whose nodes read `class`.
fn consumer_classes(eg: &EGraph, class: Id) -> usize {
    eg[class].parents().map(|p| eg.find(p)).collect::<HashSet<Id>>().len()
}

/// Whether `b` is a bias for an `[M, N]` product: a weight of shape `[N]` or `[1, N]`.
fn is_bias(eg: &EGraph, b: Id, n: &SymDim, dtype: crate::dtype::DType) -> bool {
    let Some(t) = ty(eg, b) else { return false };
    let shape_ok = match &t.shape[..] {
        [last] => last == n,
        [one, last] => one.as_const() == Some(1) && last == n,
        _ => false,
    };
    shape_ok && t.dtype == dtype && eg[b].data.weights_only
}

/// `MatMul(x, W) + b` → `Reshape(Gemm(Reshape(x), W, b))` (see the module doc).
fn linear_bias(eg: &EGraph, class: Id, node: &ENode, _: &Op) -> Option<Rhs> {
    let out = ty(eg, class)?.clone();
    if !out.dtype.is_float() || out.rank() < 2 {
        return None;
    }
    for (mm, b) in [(node.children[0], node.children[1]), (node.children[1], node.children[0])] {
        if ty(eg, mm) != Some(&out) || consumer_classes(eg, mm) != 1 {
            continue;
        }
        for (matmul, _) in nodes_where(eg, mm, |o| matches!(o, Op::MatMul)) {
            let (x, w) = (matmul.children[0], matmul.children[1]);
            let (xt, wt) = (ty(eg, x)?, ty(eg, w)?);
            if wt.rank() != 2 || xt.rank() < 2 || xt.dtype != out.dtype || wt.dtype != out.dtype || !eg[w].data.weights_only {
                continue;
            }
            let (k, n) = (&wt.shape[0], &wt.shape[1]);
            if xt.shape[xt.rank() - 1] != *k || out.shape[out.rank() - 1] != *n || !is_bias(eg, b, n, out.dtype) {
                continue;
            }
            let lead = &xt.shape[..xt.rank() - 1];
            if out.shape[..out.rank() - 1] != *lead {
                continue;
            }
            let m: SymDim = lead.iter().cloned().product();
            let gemm_ty = TensorType::new(out.dtype, vec![m.clone(), n.clone()]);
            let a = if xt.rank() == 2 { Rhs::Class(x) } else { Rhs::op(Op::Reshape, TensorType::new(out.dtype, vec![m, k.clone()]), vec![Rhs::Class(x)]) };
            let gemm = Rhs::op(Op::Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: false }, gemm_ty, vec![a, Rhs::Class(w), Rhs::Class(b)]);
            return Some(if out.rank() == 2 { gemm } else { Rhs::op(Op::Reshape, out, vec![gemm]) });
        }
    }
    None
}
