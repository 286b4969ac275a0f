//! Ops that rearrange elements without reading them: Reshape, Flatten, Squeeze, Unsqueeze,
//! Transpose, Expand, Tile, Trilu. Their shape parameters are resolved at import; known small
//! inputs are folded.

use crate::ir::{Op, TensorType};
use crate::sym::{shape_string, SymDim};

use super::ctx::{broadcast, const_shape, norm_axes, unsup, Build, Built, NodeCtx, Value, ANY, NUMERIC};
use super::known::{broadcast_indices, map_indices, strides, SMALL};

/// Folds a pure reshape of a known small input, or emits `Op::Reshape`.
fn reshape_to(ctx: &NodeCtx, x: &Value, shape: Vec<SymDim>) -> Build {
    if let (Some([k]), Some(dims)) = (ctx.known_small(&[0]).as_deref(), const_shape(&shape)) {
        return Built::folded(k.reshaped(dims));
    }
    Ok(Built::one(Op::Reshape, &[0], TensorType::new(x.dtype(), shape)))
}

pub(crate) fn reshape(ctx: &NodeCtx) -> Build {
    ctx.check_dtype(0, ANY)?;
    let x = ctx.input(0)?;
    let target: Vec<SymDim> = if ctx.opset < 5 {
        ctx.ints_attr("shape")?.ok_or_else(|| super::ctx::Unsupported("attribute 'shape' is missing".into()))?.into_iter().map(SymDim::from).collect()
    } else {
        ctx.param_ints(1, "shape")?
    };
    let allowzero = ctx.int_or("allowzero", 0)? != 0;
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, t) in target.iter().enumerate() {
        match t.as_const() {
            Some(0) if !allowzero => match x.shape().get(i) {
                Some(d) => out.push(d.clone()),
                None => return unsup(format!("shape entry {i} is 0 (copy) but the input has rank {}", x.rank())),
            },
            Some(-1) if infer.is_none() => {
                infer = Some(i);
                out.push(SymDim::from(1i64));
            }
            Some(-1) => return unsup("more than one -1 in the shape"),
            Some(v) if v < 0 => return unsup(format!("invalid shape entry {v}")),
            _ => out.push(t.clone()),
        }
    }
    let total = x.ty.numel();
    if let Some(i) = infer {
        let known: SymDim = out.iter().cloned().product();
        if known.as_const() == Some(0) {
            return unsup("cannot infer -1 next to a zero-sized dimension");
        }
        out[i] = total.floor_div(&known);
    }
    let product: SymDim = out.iter().cloned().product();
    if let (Some(a), Some(b)) = (product.as_const(), total.as_const()) {
        if a != b {
            return unsup(format!("cannot reshape {} into {}", shape_string(x.shape()), shape_string(&out)));
        }
    }
    reshape_to(ctx, x, out)
}

pub(crate) fn flatten(ctx: &NodeCtx) -> Build {
    ctx.check_dtype(0, ANY)?;
    let x = ctx.input(0)?;
    let r = x.rank() as i64;
    let axis = ctx.int_or("axis", 1)?;
    let axis = if axis < 0 { axis + r } else { axis };
    if !(0..=r).contains(&axis) {
        return unsup(format!("axis {axis} is out of range for rank {r}"));
    }
    let (a, b) = x.shape().split_at(axis as usize);
    reshape_to(ctx, x, vec![a.iter().cloned().product(), b.iter().cloned().product()])
}

/// Axes from the attribute (before `input_from`) or from input 1 (from opset `input_from` on).
fn axes_param(ctx: &NodeCtx, input_from: i64) -> Result<Option<Vec<i64>>, super::ctx::Unsupported> {
    if ctx.opset < input_from {
        return ctx.ints_attr("axes");
    }
    if ctx.opt_input(1).is_none() {
        return Ok(None);
    }
    ctx.param_consts(1, "axes").map(Some)
}

pub(crate) fn squeeze(ctx: &NodeCtx) -> Build {
    ctx.check_dtype(0, ANY)?;
    let x = ctx.input(0)?;
    let axes = match axes_param(ctx, 13)? {
        Some(a) => norm_axes(&a, x.rank())?,
        None => {
            if let Some(d) = x.shape().iter().find(|d| !d.is_const()) {
                return unsup(format!("Squeeze without axes on a symbolic dim ({d}) is not supported"));
            }
            (0..x.rank()).filter(|&i| x.shape()[i].as_const() == Some(1)).collect()
        }
    };
    for &a in &axes {
        if x.shape()[a].as_const() != Some(1) {
            return unsup(format!("cannot squeeze axis {a} of size {}", x.shape()[a]));
        }
    }
    let out = (0..x.rank()).filter(|i| !axes.contains(i)).map(|i| x.shape()[i].clone()).collect();
    reshape_to(ctx, x, out)
}

pub(crate) fn unsqueeze(ctx: &NodeCtx) -> Build {
    ctx.check_dtype(0, ANY)?;
    let x = ctx.input(0)?;
    let axes = axes_param(ctx, 13)?.ok_or_else(|| super::ctx::Unsupported("axes are missing".into()))?;
    let out_rank = x.rank() + axes.len();
    let axes = norm_axes(&axes, out_rank)?;
    let mut dims = x.shape().iter();
    let out = (0..out_rank).map(|i| if axes.contains(&i) { SymDim::from(1i64) } else { dims.next().unwrap().clone() }).collect();
    reshape_to(ctx, x, out)
}

pub(crate) fn transpose(ctx: &NodeCtx) -> Build {
    ctx.check_dtype(0, ANY)?;
    let x = ctx.input(0)?;
    let r = x.rank();
    let perm = match ctx.ints_attr("perm")? {
        Some(p) => norm_axes(&p, r)?,
        None => (0..r).rev().collect(),
    };
    if perm.len() != r {
        return unsup(format!("perm {perm:?} does not match rank {r}"));
    }
    let shape: Vec<SymDim> = perm.iter().map(|&p| x.shape()[p].clone()).collect();
    if let Some([k]) = ctx.known_small(&[0]).as_deref() {
        let st = strides(k.shape());
        let out_dims: Vec<usize> = perm.iter().map(|&p| k.shape()[p]).collect();
        let idx = map_indices(&out_dims, |ix| ix.iter().zip(&perm).map(|(&i, &p)| i * st[p]).sum());
        return Built::folded(k.take(out_dims, &idx));
    }
    Ok(Built::one(Op::Transpose { perm }, &[0], TensorType::new(x.dtype(), shape)))
}

pub(crate) fn expand(ctx: &NodeCtx) -> Build {
    ctx.check_dtype(0, ANY)?;
    let x = ctx.input(0)?;
    let target = ctx.param_ints(1, "shape")?;
    let shape = broadcast(x.shape(), &target)?;
    if let (Some([k]), Some(dims)) = (ctx.known_small(&[0]).as_deref(), const_shape(&shape)) {
        if dims.iter().product::<usize>() <= SMALL {
            let idx = broadcast_indices(k.shape(), &dims);
            return Built::folded(k.take(dims, &idx));
        }
    }
    Ok(Built::one(Op::Expand, &[0], TensorType::new(x.dtype(), shape)))
}

pub(crate) fn tile(ctx: &NodeCtx) -> Build {
    ctx.check_dtype(0, ANY)?;
    let x = ctx.input(0)?;
    let repeats = ctx.param_ints(1, "repeats")?;
    if repeats.len() != x.rank() {
        return unsup(format!("{} repeats for rank {}", repeats.len(), x.rank()));
    }
    if repeats.iter().any(|r| r.as_const().is_some_and(|v| v < 0)) {
        return unsup("negative repeat count");
    }
    let shape: Vec<SymDim> = x.shape().iter().zip(&repeats).map(|(d, r)| d.clone() * r.clone()).collect();
    if let (Some([k]), Some(dims)) = (ctx.known_small(&[0]).as_deref(), const_shape(&shape)) {
        if dims.iter().product::<usize>() <= SMALL {
            let st = strides(k.shape());
            let idx = map_indices(&dims, |ix| ix.iter().enumerate().map(|(a, &i)| (i % k.shape()[a]) * st[a]).sum());
            return Built::folded(k.take(dims, &idx));
        }
    }
    Ok(Built::one(Op::Tile, &[0], TensorType::new(x.dtype(), shape)))
}

pub(crate) fn trilu(ctx: &NodeCtx) -> Build {
    ctx.check_dtype(0, &[NUMERIC, &[crate::dtype::DType::Bool]].concat())?;
    let x = ctx.input(0)?;
    if x.rank() < 2 {
        return unsup("input must have rank ≥ 2");
    }
    let upper = ctx.int_or("upper", 1)? != 0;
    let k = if ctx.opt_input(1).is_some() {
        match ctx.param_consts(1, "k")?.as_slice() {
            [k] => *k,
            other => return unsup(format!("k should be a scalar, has {} elements", other.len())),
        }
    } else {
        0
    };
    Ok(Built::one(Op::Trilu { upper, k }, &[0], x.ty.clone()))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use crate::ir::Op;

    /// SD's GroupNorm-by-reshape: `Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [32], [-1]))`.
    #[test]
    fn sd_shape_chain_reshape_folds_to_symbolic_shape() {
        let mut g = TestGraph::new(13);
        g.input("x", "f32", &["batch", "320", "H", "W"]);
        g.node("Shape", &["x"], &["s"], &[]);
        g.const_i64("zero", &[], &[0]);
        g.node("Gather", &["s", "zero"], &["b"], &[("axis", attr_i(0))]);
        g.const_i64("ax0", &[1], &[0]);
        g.node("Unsqueeze", &["b", "ax0"], &["b1"], &[]);
        g.const_i64("groups", &[1], &[32]);
        g.const_i64("minus1", &[1], &[-1]);
        g.node("Concat", &["b1", "groups", "minus1"], &["target"], &[("axis", attr_i(0))]);
        g.named_node("rs", "Reshape", &["x", "target"], &["y"], &[]);
        g.output("y");
        g.output("target");
        let out = g.import_strict();
        assert_eq!(out.op_of("y"), "Reshape");
        assert_eq!(out.type_of("y"), "f32[batch, 32, 10*H*W]");
        assert_eq!(out.input_ops("y"), vec!["Input"]);
        assert_eq!(out.known_of("target"), "[batch, 32, -1]");
        assert_eq!(out.step_count(), 1, "only the Reshape runs");
    }

    /// Attention: `[B, N, C]` → `[B, N, heads, d]` → transpose → `[B*heads, N, d]`.
    #[test]
    fn attention_head_reshapes() {
        let mut g = TestGraph::new(17);
        g.input("q", "f16", &["B", "N", "320"]);
        g.node("Shape", &["q"], &["s"], &[]);
        g.const_i64("i0", &[1], &[0]);
        g.const_i64("i1", &[1], &[1]);
        g.node("Gather", &["s", "i0"], &["b"], &[("axis", attr_i(0))]);
        g.node("Gather", &["s", "i1"], &["n"], &[("axis", attr_i(0))]);
        g.const_i64("hd", &[2], &[8, 40]);
        g.node("Concat", &["b", "n", "hd"], &["t1"], &[("axis", attr_i(0))]);
        g.node("Reshape", &["q", "t1"], &["q4"], &[]);
        g.node("Transpose", &["q4"], &["qt"], &[("perm", attr_is(&[0, 2, 1, 3]))]);
        g.const_i64("heads", &[1], &[8]);
        g.node("Mul", &["b", "heads"], &["bh"], &[]);
        g.const_i64("rest", &[2], &[-1, 40]);
        g.node("Concat", &["bh", "rest"], &["t2"], &[("axis", attr_i(0))]);
        g.node("Reshape", &["qt", "t2"], &["q3"], &[]);
        g.output("q3");
        g.output("qt");
        let out = g.import_strict();
        assert_eq!(out.type_of("qt"), "f16[B, 8, N, 40]");
        assert_eq!(out.op("qt"), Op::Transpose { perm: vec![0, 2, 1, 3] });
        assert_eq!(out.type_of("q3"), "f16[8*B, N, 40]");
    }

    /// The UNet's timestep: `Expand(t, Shape(sample)[0:1])`.
    #[test]
    fn expand_timestep_to_batch() {
        let mut g = TestGraph::new(17);
        g.input("sample", "f32", &["2B", "4", "H", "W"]);
        g.input("t", "i64", &["1"]);
        g.node("Shape", &["sample"], &["s"], &[]);
        g.const_i64("z", &[1], &[0]);
        g.const_i64("o", &[1], &[1]);
        g.node("Slice", &["s", "z", "o"], &["b"], &[]);
        g.node("Expand", &["t", "b"], &["tb"], &[]);
        g.output("tb");
        let out = g.import_strict();
        assert_eq!(out.op_of("tb"), "Expand");
        assert_eq!(out.type_of("tb"), "i64[2B]");
    }

    /// The text encoder adds position embeddings sliced to `min(77, S)` to `[B, S, C]` tokens.
    #[test]
    fn broadcast_against_a_clamped_slice_keeps_the_dim() {
        let mut g = TestGraph::new(17);
        g.input("tok", "f32", &["B", "S", "8"]);
        g.node("Shape", &["tok"], &["s"], &[]);
        g.const_i64("i1", &[1], &[1]);
        g.node("Gather", &["s", "i1"], &["len"], &[("axis", attr_i(0))]);
        g.const_f32("pos", &[77, 8], &[0.5; 616]);
        g.const_i64("z", &[1], &[0]);
        g.node("Slice", &["pos", "z", "len"], &["p"], &[]);
        g.node("Add", &["tok", "p"], &["y"], &[]);
        g.output("y");
        g.output("p");
        let out = g.import_strict();
        assert_eq!(out.type_of("p"), "f32[min(77, S), 8]");
        assert_eq!(out.type_of("y"), "f32[B, S, 8]");
    }

    #[test]
    fn reshape_parameter_must_be_known() {
        let mut g = TestGraph::new(17);
        g.input("x", "f32", &["4"]);
        g.input("s", "i64", &["1"]);
        g.named_node("r", "Reshape", &["x", "s"], &["y"], &[]);
        g.output("y");
        let e = g.import_err();
        assert!(e.contains("node 'r' (Reshape)") && e.contains("not known at import"), "{e}");
    }

    #[test]
    fn squeeze_unsqueeze_flatten_across_opsets() {
        let mut g = TestGraph::new(11);
        g.input("x", "f32", &["B", "1", "3"]);
        g.node("Squeeze", &["x"], &["a"], &[("axes", attr_is(&[-2]))]);
        g.node("Unsqueeze", &["a"], &["b"], &[("axes", attr_is(&[0, 3]))]);
        g.node("Flatten", &["b"], &["c"], &[("axis", attr_i(2))]);
        g.output("a");
        g.output("b");
        g.output("c");
        let out = g.import_strict();
        assert_eq!(out.type_of("a"), "f32[B, 3]");
        assert_eq!(out.type_of("b"), "f32[1, B, 3, 1]");
        assert_eq!(out.type_of("c"), "f32[B, 3]");
        let mut g = TestGraph::new(11);
        g.input("x", "f32", &["B", "1"]);
        g.node("Squeeze", &["x"], &["a"], &[]);
        g.output("a");
        assert!(g.import_err().contains("symbolic dim"));
    }
}
