//! Ops that produce values from attributes or from shapes: Constant, Shape, Size,
//! ConstantOfShape, Range; and the aliases Identity and Dropout.

use crate::dtype::DType;
use crate::ir::{Op, TensorType};
use crate::source::Attr;
use crate::sym::SymDim;
use crate::tensor::{Tensor, TensorData};

use super::ctx::{const_shape, unsup, Build, Built, NodeCtx, Unsupported, ANY, FLOATS, NUMERIC};
use super::known::{Known, SMALL};

pub(crate) fn constant(ctx: &NodeCtx) -> Build {
    let t = match (ctx.node.attrs.iter().next(), ctx.node.attrs.len()) {
        (Some((name, value)), 1) => match (name.as_str(), value) {
            ("value", Attr::Tensor(t)) => (**t).clone(),
            ("value_float", Attr::Float(v)) => Tensor::new(vec![], TensorData::F32(vec![*v])),
            ("value_floats", Attr::Floats(v)) => Tensor::new(vec![v.len()], TensorData::F32(v.clone())),
            ("value_int", Attr::Int(v)) => Tensor::scalar_i64(*v),
            ("value_ints", Attr::Ints(v)) => Tensor::from_i64s(vec![v.len()], v.clone()),
            (name, value) => return unsup(format!("constant attribute '{name}' = {value:?} is not supported")),
        },
        (_, n) => return unsup(format!("expected exactly one value attribute, found {n}")),
    };
    Built::folded(Known::from_tensor(t))
}

/// Shape (with opset-15 `start`/`end`): the input's dims as an int64 vector.
pub(crate) fn shape(ctx: &NodeCtx) -> Build {
    let x = ctx.input(0)?;
    let r = x.rank() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let start = clamp(ctx.int_or("start", 0)?);
    let end = clamp(ctx.int_or("end", r)?).max(start);
    let dims = x.shape()[start..end].to_vec();
    Built::folded(Known::from_ints(DType::I64, vec![dims.len()], dims))
}

pub(crate) fn size(ctx: &NodeCtx) -> Build {
    let x = ctx.input(0)?;
    Built::folded(Known::from_ints(DType::I64, vec![], vec![x.ty.numel()]))
}

pub(crate) fn identity(ctx: &NodeCtx) -> Build {
    ctx.input(0)?;
    Ok(Built::Alias(0))
}

/// Inference-mode Dropout is the identity; its mask output is not produced.
pub(crate) fn dropout(ctx: &NodeCtx) -> Build {
    ctx.input(0)?;
    if ctx.opset < 7 && ctx.int_or("is_test", 0)? == 0 {
        return unsup("training-mode Dropout (is_test = 0) is not supported");
    }
    if ctx.opset >= 12 && ctx.opt_input(2).is_some() {
        let training = ctx.param_consts(2, "training_mode")?;
        if training.iter().any(|&t| t != 0) {
            return unsup("training_mode = true is not supported");
        }
    }
    ctx.require_unused_output(1, "mask")?;
    Ok(Built::Alias(0))
}

pub(crate) fn constant_of_shape(ctx: &NodeCtx) -> Build {
    let shape = ctx.param_ints(0, "shape")?;
    let value = match ctx.attr("value") {
        None => Tensor::from_f32s(vec![1], vec![0.0]),
        Some(Attr::Tensor(t)) if t.numel() == 1 => (**t).clone(),
        Some(other) => return unsup(format!("'value' should be a one-element tensor, is {other:?}")),
    };
    let dtype = value.dtype();
    if !ANY.contains(&dtype) {
        return unsup(format!("fill value of type {dtype} is not supported"));
    }
    if shape.iter().any(|d| d.as_const().is_some_and(|v| v < 0)) {
        return unsup(format!("negative dimension in shape {}", crate::sym::shape_string(&shape)));
    }
    if let Some(dims) = const_shape(&shape).filter(|d| d.iter().product::<usize>() <= SMALL) {
        let n: usize = dims.iter().product();
        let idx = vec![0usize; n];
        return Built::folded(Known::from_tensor(Tensor::new(dims, value.data.take(&idx))));
    }
    let fill = value.data.to_f64_vec()[0];
    Ok(Built::node(Op::Fill { value: fill }, &[], vec![TensorType::new(dtype, shape)]))
}

/// Range: start and delta must be constants; the limit may be a symbolic dim (then the length is
/// symbolic and the values are computed at run time by `Op::Range`).
pub(crate) fn range(ctx: &NodeCtx) -> Build {
    let dtype = ctx.same_dtype(&[0, 1, 2], NUMERIC)?;
    if FLOATS.contains(&dtype) && dtype != DType::F32 {
        return unsup(format!("Range on {dtype} is not supported"));
    }
    let scalar = |i: usize, what: &str| -> Result<Known, Unsupported> {
        match ctx.input(i)?.known.clone() {
            Some(k) if k.numel() == 1 => Ok(k),
            Some(_) => unsup(format!("{what} must be a scalar")),
            None => unsup(format!("{what} (input {i}, '{}') is not known at import time", ctx.input_name(i))),
        }
    };
    let (start, limit, delta) = (scalar(0, "start")?, scalar(1, "limit")?, scalar(2, "delta")?);
    if dtype.is_float() {
        let (s, l, d) = (start.floats().unwrap()[0], limit.floats().unwrap()[0], delta.floats().unwrap()[0]);
        if d == 0.0 {
            return unsup("delta is zero");
        }
        let count = ((l - s) / d).ceil().max(0.0);
        if !count.is_finite() || count > (1u64 << 40) as f64 {
            return unsup(format!("Range({s}, {l}, {d}) has no sensible length"));
        }
        let n = count as usize;
        if n <= SMALL {
            // ORT accumulates in the element type; do the same so folded values match bit for bit.
            let mut v = Vec::with_capacity(n);
            let mut x = s as f32;
            for _ in 0..n {
                v.push(x as f64);
                x += d as f32;
            }
            return Built::folded(Known::from_tensor(Tensor::new(vec![n], TensorData::from_f64(dtype, &v))));
        }
        return Ok(Built::node(Op::Range { start: s, delta: d }, &[], vec![TensorType::new(dtype, vec![SymDim::from(n)])]));
    }
    let (s, d) = match (start.ints().unwrap()[0].as_const(), delta.ints().unwrap()[0].as_const()) {
        (Some(s), Some(d)) => (s, d),
        _ => return unsup("start and delta must be constants"),
    };
    if d == 0 {
        return unsup("delta is zero");
    }
    let l = limit.ints().unwrap()[0].clone();
    let span = if d > 0 { l - SymDim::from(s) } else { SymDim::from(s) - l };
    let n = span.ceil_div(&SymDim::from(d.abs()));
    let n = if n.lower_bound() >= 0 { n } else { n.max_of(&SymDim::from(0i64)) };
    if let Some(count) = n.as_const().filter(|&c| c as usize <= SMALL) {
        let vals = (0..count).map(|i| SymDim::from(s + i * d)).collect();
        return Built::folded(Known::from_ints(dtype, vec![count as usize], vals));
    }
    Ok(Built::node(Op::Range { start: s as f64, delta: d as f64 }, &[], vec![TensorType::new(dtype, vec![n])]))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;

    #[test]
    fn shape_with_start_end_folds() {
        let mut g = TestGraph::new(17);
        g.input("x", "f32", &["B", "4", "?", "W"]);
        g.node("Shape", &["x"], &["s"], &[("start", attr_i(1)), ("end", attr_i(-1))]);
        g.node("Size", &["x"], &["n"], &[]);
        g.output("s");
        g.output("n");
        let out = g.import_strict();
        assert_eq!(out.known_of("s"), "[4, x.2]");
        assert_eq!(out.known_of("n"), "[4*B*W*x.2]");
        assert_eq!(out.type_of("s"), "i64[2]");
        assert_eq!(out.step_count(), 0);
    }

    #[test]
    fn range_with_symbolic_limit_is_a_node() {
        let mut g = TestGraph::new(17);
        g.input("x", "f32", &["N"]);
        g.node("Shape", &["x"], &["s"], &[]);
        g.const_i64("zero", &[], &[0]);
        g.node("Gather", &["s", "zero"], &["n"], &[("axis", attr_i(0))]);
        g.const_i64("two", &[], &[2]);
        g.node("Range", &["zero", "n", "two"], &["r"], &[]);
        g.const_i64("five", &[], &[5]);
        g.const_i64("one", &[], &[1]);
        g.node("Range", &["zero", "five", "one"], &["r5"], &[]);
        g.output("r");
        g.output("r5");
        let out = g.import_strict();
        assert_eq!(out.op_of("r"), "Range");
        assert_eq!(out.type_of("r"), "i64[((N + 1) / 2)]");
        assert_eq!(out.known_of("r5"), "[0, 1, 2, 3, 4]");
    }

    #[test]
    fn dropout_and_identity_alias() {
        let mut g = TestGraph::new(13);
        g.input("x", "f32", &["3"]);
        g.node("Dropout", &["x"], &["d"], &[]);
        g.node("Identity", &["d"], &["y"], &[]);
        g.output("y");
        let out = g.import_strict();
        assert_eq!(out.producer_of("y"), "x");
        assert_eq!(out.0.node_status, vec![super::super::NodeStatus::Supported; 2]);
    }
}
