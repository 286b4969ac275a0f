//! Neural-network ops: MatMul, Gemm, Conv (auto_pad resolved), normalisations, Softmax,
//! GlobalAveragePool.

use crate::ir::{Op, ReduceKind, TensorType};
use crate::sym::{shape_string, SymDim};

use super::ctx::{broadcast, norm_axis, unsup, Build, Built, NodeCtx, Unsupported, FLOATS};

pub(crate) fn matmul(ctx: &NodeCtx) -> Build {
    let dtype = ctx.same_dtype(&[0, 1], FLOATS)?;
    let (a, b) = (ctx.input(0)?, ctx.input(1)?);
    if a.rank() == 0 || b.rank() == 0 {
        return unsup("MatMul inputs must have rank ≥ 1");
    }
    let one = SymDim::from(1i64);
    let a2: Vec<SymDim> = if a.rank() == 1 { vec![one.clone(), a.shape()[0].clone()] } else { a.shape().to_vec() };
    let b2: Vec<SymDim> = if b.rank() == 1 { vec![b.shape()[0].clone(), one] } else { b.shape().to_vec() };
    let (ka, kb) = (&a2[a2.len() - 1], &b2[b2.len() - 2]);
    if let (Some(x), Some(y)) = (ka.as_const(), kb.as_const()) {
        if x != y {
            return unsup(format!("inner dimensions differ: {} @ {}", shape_string(a.shape()), shape_string(b.shape())));
        }
    }
    let mut shape = broadcast(&a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
    if a.rank() > 1 {
        shape.push(a2[a2.len() - 2].clone());
    }
    if b.rank() > 1 {
        shape.push(b2[b2.len() - 1].clone());
    }
    Ok(Built::one(Op::MatMul, &[0, 1], TensorType::new(dtype, shape)))
}

pub(crate) fn gemm(ctx: &NodeCtx) -> Build {
    let has_c = ctx.opt_input(2).is_some();
    let ids: &[usize] = if has_c { &[0, 1, 2] } else { &[0, 1] };
    let dtype = ctx.same_dtype(ids, FLOATS)?;
    let (a, b) = (ctx.input(0)?, ctx.input(1)?);
    if a.rank() != 2 || b.rank() != 2 {
        return unsup("Gemm inputs A and B must be matrices");
    }
    let trans_a = ctx.int_or("transA", 0)? != 0;
    let trans_b = ctx.int_or("transB", 0)? != 0;
    let (m, ka) = if trans_a { (&a.shape()[1], &a.shape()[0]) } else { (&a.shape()[0], &a.shape()[1]) };
    let (kb, n) = if trans_b { (&b.shape()[1], &b.shape()[0]) } else { (&b.shape()[0], &b.shape()[1]) };
    if let (Some(x), Some(y)) = (ka.as_const(), kb.as_const()) {
        if x != y {
            return unsup(format!("inner dimensions differ ({x} vs {y})"));
        }
    }
    let out = vec![m.clone(), n.clone()];
    if let Some(c) = ctx.opt_input(2) {
        if c.rank() > 2 {
            return unsup("C must have rank ≤ 2");
        }
        let b = broadcast(&out, c.shape())?;
        if b != out {
            return unsup(format!("C {} does not broadcast to {}", shape_string(c.shape()), shape_string(&out)));
        }
    }
    let op = Op::Gemm { alpha: ctx.float_or("alpha", 1.0)?, beta: ctx.float_or("beta", 1.0)?, trans_a, trans_b };
    let ins: Vec<Option<usize>> = vec![Some(0), Some(1), if has_c { Some(2) } else { None }];
    Ok(Built::node(op, &ins, vec![TensorType::new(dtype, out)]))
}

fn usize_list(v: Vec<i64>, what: &str, min: i64) -> Result<Vec<usize>, Unsupported> {
    v.into_iter()
        .map(|x| if x >= min { Ok(x as usize) } else { unsup(format!("{what} entry {x} is invalid")) })
        .collect()
}

pub(crate) fn conv(ctx: &NodeCtx) -> Build {
    let has_b = ctx.opt_input(2).is_some();
    let ids: &[usize] = if has_b { &[0, 1, 2] } else { &[0, 1] };
    let dtype = ctx.same_dtype(ids, FLOATS)?;
    let (x, w) = (ctx.input(0)?, ctx.input(1)?);
    if x.rank() < 3 || w.rank() != x.rank() {
        return unsup(format!("input rank {} and weight rank {} must be equal and ≥ 3", x.rank(), w.rank()));
    }
    let nsp = x.rank() - 2;
    let kernel: Vec<usize> = match ctx.ints_attr("kernel_shape")? {
        Some(k) => usize_list(k, "kernel_shape", 1)?,
        None => w.shape()[2..]
            .iter()
            .map(|d| d.as_const().map(|v| v as usize).ok_or_else(|| Unsupported(format!("kernel size {d} is not a constant"))))
            .collect::<Result<_, _>>()?,
    };
    let strides = usize_list(ctx.ints_attr("strides")?.unwrap_or_else(|| vec![1; nsp]), "strides", 1)?;
    let dilations = usize_list(ctx.ints_attr("dilations")?.unwrap_or_else(|| vec![1; nsp]), "dilations", 1)?;
    let group = ctx.int_or("group", 1)?;
    if kernel.len() != nsp || strides.len() != nsp || dilations.len() != nsp || group < 1 {
        return unsup("kernel_shape/strides/dilations/group do not match the input rank");
    }
    let group = group as usize;
    if let (Some(c), Some(wc)) = (x.shape()[1].as_const(), w.shape()[1].as_const()) {
        if c as usize != wc as usize * group {
            return unsup(format!("input has {c} channels, weight expects {wc} × group {group}"));
        }
    }
    if let Some(m) = w.shape()[0].as_const() {
        if !(m as usize).is_multiple_of(group) {
            return unsup(format!("{m} output channels do not divide into {group} groups"));
        }
    }
    let spatial = &x.shape()[2..];
    let auto_pad = ctx.string_or("auto_pad", "NOTSET")?;
    let pads: Vec<usize> = match auto_pad.as_str() {
        "NOTSET" => usize_list(ctx.ints_attr("pads")?.unwrap_or_else(|| vec![0; 2 * nsp]), "pads", 0)?,
        "VALID" => vec![0; 2 * nsp],
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut begins = Vec::with_capacity(nsp);
            let mut ends = Vec::with_capacity(nsp);
            for i in 0..nsp {
                let Some(size) = spatial[i].as_const() else {
                    return unsup(format!("auto_pad {auto_pad} on symbolic size {} needs input-dependent pads", spatial[i]));
                };
                let s = strides[i] as i64;
                let out = (size + s - 1) / s;
                let eff_k = (kernel[i] as i64 - 1) * dilations[i] as i64 + 1;
                let total = ((out - 1) * s + eff_k - size).max(0);
                let small = total / 2;
                let (b, e) = if auto_pad == "SAME_UPPER" { (small, total - small) } else { (total - small, small) };
                begins.push(b as usize);
                ends.push(e as usize);
            }
            begins.extend(ends);
            begins
        }
        other => return unsup(format!("auto_pad '{other}' is not supported")),
    };
    if pads.len() != 2 * nsp {
        return unsup(format!("{} pads for {nsp} spatial axes", pads.len()));
    }
    let mut shape = vec![x.shape()[0].clone(), w.shape()[0].clone()];
    for i in 0..nsp {
        let eff_k = ((kernel[i] - 1) * dilations[i] + 1) as i64;
        let span = spatial[i].clone() + SymDim::from((pads[i] + pads[nsp + i]) as i64) - SymDim::from(eff_k);
        if span.as_const().is_some_and(|v| v < 0) {
            return unsup(format!("kernel {} is larger than the padded input on spatial axis {i}", kernel[i]));
        }
        // floor(span / s) + 1 written as floor((span + s) / s), which cancels with the `H / 2`
        // other paths of the same model compute.
        let s = SymDim::from(strides[i] as i64);
        shape.push((span + s.clone()).floor_div(&s));
    }
    let ins: Vec<Option<usize>> = vec![Some(0), Some(1), if has_b { Some(2) } else { None }];
    Ok(Built::node(Op::Conv { strides, pads, dilations, group, channels_last: false }, &ins, vec![TensorType::new(dtype, shape)]))
}

pub(crate) fn global_average_pool(ctx: &NodeCtx) -> Build {
    ctx.check_dtype(0, FLOATS)?;
    let x = ctx.input(0)?;
    if x.rank() < 3 {
        return unsup("input must have rank ≥ 3");
    }
    let axes: Vec<usize> = (2..x.rank()).collect();
    let mut shape = x.shape().to_vec();
    for &a in &axes {
        shape[a] = SymDim::from(1i64);
    }
    Ok(Built::one(Op::Reduce { kind: ReduceKind::Mean, axes, keepdims: true }, &[0], TensorType::new(x.dtype(), shape)))
}

pub(crate) fn instance_norm(ctx: &NodeCtx) -> Build {
    let dtype = ctx.same_dtype(&[0, 1, 2], FLOATS)?;
    let x = ctx.input(0)?;
    if x.rank() < 3 {
        return unsup("input must have rank ≥ 3");
    }
    let epsilon = ctx.float_or("epsilon", 1e-5)?;
    Ok(Built::one(Op::InstanceNorm { epsilon }, &[0, 1, 2], TensorType::new(dtype, x.shape().to_vec())))
}

pub(crate) fn group_norm(ctx: &NodeCtx) -> Build {
    let dtype = ctx.same_dtype(&[0, 1, 2], FLOATS)?;
    let x = ctx.input(0)?;
    if x.rank() < 3 {
        return unsup("input must have rank ≥ 3");
    }
    let groups = ctx.int_attr("num_groups")?.ok_or_else(|| Unsupported("attribute 'num_groups' is missing".into()))?;
    if groups < 1 {
        return unsup(format!("num_groups {groups} is invalid"));
    }
    let per_channel_affine = ctx.opset >= 21;
    let expected = if per_channel_affine { x.shape()[1].clone() } else { SymDim::from(groups) };
    for i in [1, 2] {
        let s = ctx.input(i)?.shape();
        if s.len() != 1 || (s[0] != expected && s[0].is_const() && expected.is_const()) {
            return unsup(format!("input {i} has shape {}, expected [{expected}] at opset {}", shape_string(s), ctx.opset));
        }
    }
    if let Some(c) = x.shape()[1].as_const() {
        if c % groups != 0 {
            return unsup(format!("{c} channels do not divide into {groups} groups"));
        }
    }
    let epsilon = ctx.float_or("epsilon", 1e-5)?;
    let op = Op::GroupNorm { epsilon, num_groups: groups as usize, per_channel_affine, channels_last: false };
    Ok(Built::one(op, &[0, 1, 2], TensorType::new(dtype, x.shape().to_vec())))
}

pub(crate) fn layer_norm(ctx: &NodeCtx) -> Build {
    let has_b = ctx.opt_input(2).is_some();
    let ids: &[usize] = if has_b { &[0, 1, 2] } else { &[0, 1] };
    let dtype = ctx.same_dtype(ids, FLOATS)?;
    let x = ctx.input(0)?;
    ctx.require_unused_output(1, "Mean")?;
    ctx.require_unused_output(2, "InvStdDev")?;
    let axis = norm_axis(ctx.int_or("axis", -1)?, x.rank())?;
    let epsilon = ctx.float_or("epsilon", 1e-5)?;
    let ins: Vec<Option<usize>> = vec![Some(0), Some(1), if has_b { Some(2) } else { None }];
    Ok(Built::node(Op::LayerNorm { axis, epsilon }, &ins, vec![TensorType::new(dtype, x.shape().to_vec())]))
}

/// Softmax/LogSoftmax. Before opset 13 the op normalised over the flattened axes `axis..`; that
/// equals the per-axis form only when `axis` is the last axis.
pub(crate) fn softmax(ctx: &NodeCtx) -> Build {
    ctx.check_dtype(0, FLOATS)?;
    let x = ctx.input(0)?;
    if x.rank() == 0 {
        return unsup("input must have rank ≥ 1");
    }
    let default = if ctx.opset < 13 { 1 } else { -1 };
    let axis = norm_axis(ctx.int_or("axis", default)?, x.rank())?;
    if ctx.opset < 13 && axis + 1 != x.rank() {
        let tail_is_one = x.shape()[axis + 1..].iter().all(|d| d.as_const() == Some(1));
        if !tail_is_one {
            return unsup(format!("opset {} {} over flattened axes {axis}.. is not supported", ctx.opset, ctx.node.op_type));
        }
    }
    let op = if ctx.node.op_type == "Softmax" { Op::Softmax { axis } } else { Op::LogSoftmax { axis } };
    Ok(Built::one(op, &[0], x.ty.clone()))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use crate::ir::Op;

    #[test]
    fn conv_same_upper_and_symbolic_notset() {
        let mut g = TestGraph::new(17);
        g.input("x", "f32", &["N", "4", "7", "8"]);
        g.const_f32("w", &[6, 2, 3, 3], &[0.1; 108]);
        g.node("Conv", &["x", "w"], &["y"], &[("auto_pad", attr_s("SAME_UPPER")), ("strides", attr_is(&[2, 2])), ("group", attr_i(2))]);
        g.input("z", "f32", &["N", "4", "H", "W"]);
        g.const_f32("w2", &[8, 4, 3, 3], &[0.1; 288]);
        g.node("Conv", &["z", "w2"], &["y2"], &[("pads", attr_is(&[1, 1, 1, 1])), ("strides", attr_is(&[2, 2]))]);
        g.output("y");
        g.output("y2");
        let out = g.import_strict();
        assert_eq!(out.type_of("y"), "f32[N, 6, 4, 4]");
        assert_eq!(out.op("y"), Op::Conv { strides: vec![2, 2], pads: vec![1, 0, 1, 1], dilations: vec![1, 1], group: 2, channels_last: false });
        assert_eq!(out.input_ops("y"), vec!["Input", "Constant", "_"]);
        assert_eq!(out.type_of("y2"), "f32[N, 8, ((H + 1) / 2), ((W + 1) / 2)]");
    }

    #[test]
    fn conv_same_on_symbolic_size_is_declined() {
        let mut g = TestGraph::new(17);
        g.input("x", "f32", &["N", "4", "H", "8"]);
        g.const_f32("w", &[4, 4, 3, 3], &[0.1; 144]);
        g.named_node("c", "Conv", &["x", "w"], &["y"], &[("auto_pad", attr_s("SAME_LOWER"))]);
        g.output("y");
        let e = g.import_err();
        assert!(e.contains("node 'c' (Conv)") && e.contains("symbolic size H"), "{e}");
    }

    #[test]
    fn matmul_broadcasts_batches_and_promotes_vectors() {
        let mut g = TestGraph::new(17);
        g.input("a", "f32", &["B", "1", "N", "64"]);
        g.input("b", "f32", &["8", "64", "M"]);
        g.input("v", "f32", &["64"]);
        g.node("MatMul", &["a", "b"], &["ab"], &[]);
        g.node("MatMul", &["a", "v"], &["av"], &[]);
        g.output("ab");
        g.output("av");
        let out = g.import_strict();
        assert_eq!(out.type_of("ab"), "f32[B, 8, N, M]");
        assert_eq!(out.type_of("av"), "f32[B, 1, N]");
    }

    #[test]
    fn softmax_opset_semantics_and_norm_outputs() {
        let mut g = TestGraph::new(11);
        g.input("x", "f32", &["B", "N", "N"]);
        g.node("Softmax", &["x"], &["y"], &[("axis", attr_i(2))]);
        g.output("y");
        assert_eq!(g.import_strict().op("y"), Op::Softmax { axis: 2 });
        let mut g = TestGraph::new(11);
        g.input("x", "f32", &["B", "N", "N"]);
        g.node("Softmax", &["x"], &["y"], &[]);
        g.output("y");
        assert!(g.import_err().contains("flattened axes"));

        let mut g = TestGraph::new(17);
        g.input("x", "f32", &["B", "N", "C"]);
        g.input("s", "f32", &["C"]);
        g.node("LayerNormalization", &["x", "s"], &["y", "mean"], &[]);
        g.output("y");
        assert_eq!(g.import_strict().op("y"), Op::LayerNorm { axis: 2, epsilon: 1e-5 });
        g.output("mean");
        assert!(g.import_err().contains("Mean"));
    }
}
