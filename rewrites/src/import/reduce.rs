//! Reductions: ReduceSum/Mean/Max/Min/Prod (axes as attribute or input by opset), ArgMax/ArgMin,
//! CumSum.

use crate::dtype::DType;
use crate::ir::{Op, ReduceKind, TensorType};
use crate::sym::SymDim;

use super::ctx::{norm_axes, norm_axis, unsup, Build, Built, NodeCtx, Unsupported, FLOATS, NUMERIC};
use super::known::Known;

pub(crate) fn reduce(ctx: &NodeCtx) -> Build {
    let kind = match ctx.node.op_type.as_str() {
        "ReduceSum" => ReduceKind::Sum,
        "ReduceMean" => ReduceKind::Mean,
        "ReduceMax" => ReduceKind::Max,
        "ReduceMin" => ReduceKind::Min,
        "ReduceProd" => ReduceKind::Prod,
        other => return unsup(format!("'{other}' is not a reduction")),
    };
    let dtype = ctx.check_dtype(0, NUMERIC)?;
    let x = ctx.input(0)?;
    let axes_from_input = if kind == ReduceKind::Sum { 13 } else { 18 };
    let axes = if ctx.opset >= axes_from_input {
        if ctx.opt_input(1).is_some() { Some(ctx.param_consts(1, "axes")?) } else { None }
    } else {
        ctx.ints_attr("axes")?
    };
    let keepdims = ctx.int_or("keepdims", 1)? != 0;
    let noop = ctx.int_or("noop_with_empty_axes", 0)? != 0;
    let mut axes = match axes {
        Some(a) if !a.is_empty() => norm_axes(&a, x.rank())?,
        _ if noop => return Ok(Built::Alias(0)),
        _ => (0..x.rank()).collect(),
    };
    axes.sort_unstable();
    let shape: Vec<SymDim> = (0..x.rank())
        .filter_map(|a| match (axes.contains(&a), keepdims) {
            (true, true) => Some(SymDim::from(1i64)),
            (true, false) => None,
            (false, _) => Some(x.shape()[a].clone()),
        })
        .collect();
    // Products/sums of known integer vectors (element counts of shapes) fold symbolically.
    if let (Some([k]), 1) = (ctx.known_small(&[0]).as_deref(), x.rank()) {
        if let (Some(vals), false) = (k.ints(), kind == ReduceKind::Mean) {
            let v = match kind {
                ReduceKind::Sum => vals.into_iter().sum(),
                ReduceKind::Prod => vals.into_iter().product(),
                ReduceKind::Max => vals.iter().skip(1).fold(vals.first().cloned(), |a, b| a.map(|a| a.max_of(b))).unwrap_or(SymDim::from(i64::MIN)),
                _ => vals.iter().skip(1).fold(vals.first().cloned(), |a, b| a.map(|a| a.min_of(b))).unwrap_or(SymDim::from(i64::MAX)),
            };
            let dims = if keepdims { vec![1] } else { vec![] };
            return Built::folded(Known::from_ints(dtype, dims, vec![v]));
        }
    }
    if kind == ReduceKind::Mean && !FLOATS.contains(&dtype) {
        return unsup(format!("{} on {dtype} is not supported", ctx.node.op_type));
    }
    if x.rank() == 0 {
        return Ok(Built::Alias(0));
    }
    Ok(Built::one(Op::Reduce { kind, axes, keepdims }, &[0], TensorType::new(dtype, shape)))
}

pub(crate) fn arg_reduce(ctx: &NodeCtx) -> Build {
    ctx.check_dtype(0, NUMERIC)?;
    let x = ctx.input(0)?;
    if x.rank() == 0 {
        return unsup("input must have rank ≥ 1");
    }
    let axis = norm_axis(ctx.int_or("axis", 0)?, x.rank())?;
    let keepdims = ctx.int_or("keepdims", 1)? != 0;
    let select_last_index = ctx.int_or("select_last_index", 0)? != 0;
    let mut shape = x.shape().to_vec();
    if keepdims {
        shape[axis] = SymDim::from(1i64);
    } else {
        shape.remove(axis);
    }
    let op = if ctx.node.op_type == "ArgMax" {
        Op::ArgMax { axis, keepdims, select_last_index }
    } else {
        Op::ArgMin { axis, keepdims, select_last_index }
    };
    Ok(Built::one(op, &[0], TensorType::new(DType::I64, shape)))
}

pub(crate) fn cumsum(ctx: &NodeCtx) -> Build {
    ctx.check_dtype(0, NUMERIC)?;
    let x = ctx.input(0)?;
    let axis = match ctx.param_consts(1, "axis")?.as_slice() {
        [a] => norm_axis(*a, x.rank())?,
        other => return Err(Unsupported(format!("axis should be a scalar, has {} elements", other.len()))),
    };
    let exclusive = ctx.int_or("exclusive", 0)? != 0;
    let reverse = ctx.int_or("reverse", 0)? != 0;
    Ok(Built::one(Op::CumSum { axis, exclusive, reverse }, &[0], x.ty.clone()))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use crate::ir::{Op, ReduceKind};

    #[test]
    fn reduce_axes_by_opset_and_numel_fold() {
        let mut g = TestGraph::new(17);
        g.input("x", "f32", &["B", "C", "H", "W"]);
        g.node("ReduceMean", &["x"], &["m"], &[("axes", attr_is(&[-1, 2]))]);
        g.const_i64("ax", &[1], &[1]);
        g.node("ReduceSum", &["x", "ax"], &["s"], &[("keepdims", attr_i(0))]);
        g.node("Shape", &["x"], &["sh"], &[]);
        g.node("ReduceProd", &["sh"], &["n"], &[("keepdims", attr_i(0))]);
        g.node("GlobalAveragePool", &["x"], &["gap"], &[]);
        for o in ["m", "s", "n", "gap"] {
            g.output(o);
        }
        let out = g.import_strict();
        assert_eq!(out.op("m"), Op::Reduce { kind: ReduceKind::Mean, axes: vec![2, 3], keepdims: true });
        assert_eq!(out.type_of("m"), "f32[B, C, 1, 1]");
        assert_eq!(out.type_of("s"), "f32[B, H, W]");
        assert_eq!(out.known_of("n"), "[B*C*H*W]");
        assert_eq!(out.op("gap"), out.op("m"));
    }
}
