//! Ops that select or join elements: Concat, Split, Slice, Gather, GatherElements, GatherND, Pad.

use crate::dtype::DType;
use crate::ir::{Op, PadMode, TensorType};
use crate::sym::{shape_string, SymDim};

use super::ctx::{clamp, const_shape, norm_axes, norm_axis, unsup, Build, Built, NodeCtx, Unsupported, ANY, INTS};
use super::known::{map_indices, strides, Known};

pub(crate) fn concat(ctx: &NodeCtx) -> Build {
    let n = ctx.node.inputs.len();
    if n == 0 {
        return unsup("needs at least one input");
    }
    let ids: Vec<usize> = (0..n).collect();
    let dtype = ctx.same_dtype(&ids, ANY)?;
    let first = ctx.input(0)?;
    let rank = first.rank();
    let axis = norm_axis(ctx.int_attr("axis")?.ok_or_else(|| Unsupported("attribute 'axis' is missing".into()))?, rank)?;
    let mut shape = first.shape().to_vec();
    for i in 1..n {
        let x = ctx.input(i)?;
        if x.rank() != rank {
            return unsup(format!("input {i} has rank {}, input 0 has rank {rank}", x.rank()));
        }
        for (a, d) in x.shape().iter().enumerate() {
            if a == axis {
                shape[a] = shape[a].clone() + d.clone();
            } else if let (Some(p), Some(q)) = (shape[a].as_const(), d.as_const()) {
                if p != q {
                    return unsup(format!("input {i} has size {q} on axis {a}, input 0 has {p}"));
                }
            }
        }
    }
    if let (Some(ks), Some(dims)) = (ctx.known_small(&ids), const_shape(&shape)) {
        if let Some(all) = Known::chain(&ks) {
            // Output element → (which input, its index within that input).
            let mut offsets = Vec::with_capacity(n);
            let mut starts = Vec::with_capacity(n);
            let (mut off, mut start) = (0usize, 0usize);
            for k in &ks {
                offsets.push(off);
                starts.push(start);
                off += k.numel();
                start += k.shape()[axis];
            }
            let idx = map_indices(&dims, |ix| {
                let part = (0..n).find(|&p| ix[axis] < starts[p] + ks[p].shape()[axis]).unwrap_or(n - 1);
                let st = strides(ks[part].shape());
                offsets[part]
                    + ix.iter().enumerate().map(|(a, &i)| if a == axis { (i - starts[part]) * st[a] } else { i * st[a] }).sum::<usize>()
            });
            return Built::folded(all.take(dims, &idx));
        }
    }
    let ins: Vec<usize> = ids.clone();
    Ok(Built::one(Op::Concat { axis }, &ins, TensorType::new(dtype, shape)))
}

pub(crate) fn split(ctx: &NodeCtx) -> Build {
    let dtype = ctx.check_dtype(0, ANY)?;
    let x = ctx.input(0)?;
    let axis = norm_axis(ctx.int_or("axis", 0)?, x.rank())?;
    let dim = x.shape()[axis].clone();
    let outputs = ctx.num_outputs();
    let given: Option<Vec<SymDim>> = if ctx.opset < 13 {
        ctx.ints_attr("split")?.map(|v| v.into_iter().map(SymDim::from).collect())
    } else if ctx.opt_input(1).is_some() {
        Some(ctx.param_ints(1, "split")?)
    } else {
        None
    };
    let sizes = match given {
        Some(s) => {
            if s.len() != outputs {
                return unsup(format!("{} split sizes for {outputs} outputs", s.len()));
            }
            let total: SymDim = s.iter().cloned().sum();
            if let (Some(a), Some(b)) = (total.as_const(), dim.as_const()) {
                if a != b {
                    return unsup(format!("split sizes sum to {a}, the axis has {b}"));
                }
            }
            s
        }
        None => {
            let n = if ctx.opset >= 18 { ctx.int_attr("num_outputs")?.unwrap_or(outputs as i64) } else { outputs as i64 };
            if n < 1 || n as usize != outputs {
                return unsup(format!("num_outputs {n} does not match {outputs} outputs"));
            }
            let n_sym = SymDim::from(n);
            if ctx.opset >= 18 {
                // Uneven split: every piece but the last has ceil(dim / n) elements.
                let piece = dim.ceil_div(&n_sym);
                let last = dim.clone() - piece.clone() * SymDim::from(n - 1);
                if last.as_const().is_some_and(|l| l < 0) {
                    return unsup(format!("cannot split {dim} into {n} pieces"));
                }
                let mut v = vec![piece; outputs - 1];
                v.push(last);
                v
            } else {
                if let Some(d) = dim.as_const() {
                    if d % n != 0 {
                        return unsup(format!("axis of size {d} does not split evenly into {n}"));
                    }
                }
                vec![dim.floor_div(&n_sym); outputs]
            }
        }
    };
    let types: Vec<TensorType> = sizes
        .iter()
        .map(|s| {
            let mut shape = x.shape().to_vec();
            shape[axis] = s.clone();
            TensorType::new(dtype, shape)
        })
        .collect();
    if let (Some([k]), Some(lens)) = (ctx.known_small(&[0]).as_deref(), const_shape(&sizes)) {
        let st = strides(k.shape());
        let mut start = 0;
        let mut outs = Vec::with_capacity(lens.len());
        for len in lens {
            let mut dims = k.shape().to_vec();
            dims[axis] = len;
            let idx = map_indices(&dims, |ix| ix.iter().enumerate().map(|(a, &i)| if a == axis { (i + start) * st[a] } else { i * st[a] }).sum());
            outs.push(k.take(dims, &idx));
            start += len;
        }
        return Ok(Built::Folded(outs));
    }
    Ok(Built::node(Op::Split { axis }, &[Some(0)], types))
}

/// One sliced axis after ONNX's clamping rules: first index, step, and length.
fn slice_axis(dim: &SymDim, start: &SymDim, end: &SymDim, step: i64) -> Result<(SymDim, SymDim), Unsupported> {
    let zero = SymDim::from(0i64);
    // A negative start/end counts from the end; symbolic values must be provably non-negative.
    let resolve = |v: &SymDim, what: &str| -> Result<SymDim, Unsupported> {
        match v.as_const() {
            Some(c) if c < 0 => Ok(SymDim::from(c.max(-(1i64 << 62))) + dim.clone()),
            Some(_) => Ok(v.clone()),
            None if v.lower_bound() >= 0 => Ok(v.clone()),
            None => unsup(format!("slice {what} {v} may be negative")),
        }
    };
    let (s, e) = (resolve(start, "start")?, resolve(end, "end")?);
    if step > 0 {
        let s = clamp(&s, &zero, dim);
        let e = clamp(&e, &zero, dim);
        let len = (e - s.clone()).ceil_div(&SymDim::from(step));
        let len = if len.lower_bound() >= 0 { len } else { len.max_of(&zero) };
        Ok((s, len))
    } else {
        let last = dim.clone() - SymDim::from(1i64);
        let s = clamp(&s, &zero, &last);
        let e = clamp(&e, &SymDim::from(-1i64), &last);
        let len = (s.clone() - e).ceil_div(&SymDim::from(-step));
        let len = if len.lower_bound() >= 0 { len } else { len.max_of(&zero) };
        Ok((s, len))
    }
}

/// Slice's starts, ends, optional axes and optional steps, as given.
type SliceParams = (Vec<SymDim>, Vec<SymDim>, Option<Vec<i64>>, Option<Vec<i64>>);

pub(crate) fn slice(ctx: &NodeCtx) -> Build {
    let dtype = ctx.check_dtype(0, ANY)?;
    let x = ctx.input(0)?;
    let (starts, ends, axes, steps): SliceParams = if ctx.opset < 10 {
        let get = |n: &str| -> Result<Vec<i64>, Unsupported> {
            ctx.ints_attr(n)?.ok_or_else(|| Unsupported(format!("attribute '{n}' is missing")))
        };
        let sym = |v: Vec<i64>| v.into_iter().map(SymDim::from).collect();
        (sym(get("starts")?), sym(get("ends")?), ctx.ints_attr("axes")?, None)
    } else {
        let axes = if ctx.opt_input(3).is_some() { Some(ctx.param_consts(3, "axes")?) } else { None };
        let steps = if ctx.opt_input(4).is_some() { Some(ctx.param_consts(4, "steps")?) } else { None };
        (ctx.param_ints(1, "starts")?, ctx.param_ints(2, "ends")?, axes, steps)
    };
    let n = starts.len();
    let axes = match axes {
        Some(a) => norm_axes(&a, x.rank())?,
        None => (0..n).collect(),
    };
    let steps = steps.unwrap_or_else(|| vec![1; n]);
    if ends.len() != n || axes.len() != n || steps.len() != n {
        return unsup("starts, ends, axes and steps have different lengths");
    }
    if n > x.rank() {
        return unsup(format!("{n} sliced axes for rank {}", x.rank()));
    }
    let mut shape = x.shape().to_vec();
    let mut first = Vec::with_capacity(n);
    for i in 0..n {
        if steps[i] == 0 || steps[i] == i64::MIN {
            return unsup(format!("slice step {} is not supported", steps[i]));
        }
        let (s, len) = slice_axis(&x.shape()[axes[i]], &starts[i], &ends[i], steps[i])?;
        shape[axes[i]] = len;
        first.push(s);
    }
    if let (Some([k]), Some(dims), Some(f)) = (ctx.known_small(&[0]).as_deref(), const_shape(&shape), const_shape(&first)) {
        let st = strides(k.shape());
        let idx = map_indices(&dims, |ix| {
            ix.iter()
                .enumerate()
                .map(|(a, &i)| match axes.iter().position(|&x| x == a) {
                    Some(p) => (f[p] as i64 + i as i64 * steps[p]) as usize * st[a],
                    None => i * st[a],
                })
                .sum()
        });
        return Built::folded(k.take(dims, &idx));
    }
    Ok(Built::one(Op::Slice { axes, starts: first, steps }, &[0], TensorType::new(dtype, shape)))
}

pub(crate) fn gather(ctx: &NodeCtx) -> Build {
    let dtype = ctx.check_dtype(0, ANY)?;
    ctx.check_dtype(1, INTS)?;
    let (data, indices) = (ctx.input(0)?, ctx.input(1)?);
    if data.rank() == 0 {
        return unsup("data must have rank ≥ 1");
    }
    let axis = norm_axis(ctx.int_or("axis", 0)?, data.rank())?;
    let mut shape = data.shape()[..axis].to_vec();
    shape.extend(indices.shape().iter().cloned());
    shape.extend(data.shape()[axis + 1..].iter().cloned());
    if let (Some([k, ki]), Some(dims)) = (ctx.known_small(&[0, 1]).as_deref(), const_shape(&shape)) {
        if let Some(ix) = ki.tensor().and_then(|t| t.data.to_i64_vec()) {
            let n = k.shape()[axis] as i64;
            let mut resolved = Vec::with_capacity(ix.len());
            for &i in &ix {
                let j = if i < 0 { i + n } else { i };
                if !(0..n).contains(&j) {
                    return unsup(format!("index {i} is out of range for axis {axis} of size {n}"));
                }
                resolved.push(j as usize);
            }
            let st = strides(k.shape());
            let ir = ki.shape().len();
            let ist = strides(ki.shape());
            let idx = map_indices(&dims, |o| {
                let before: usize = (0..axis).map(|a| o[a] * st[a]).sum();
                let which: usize = (0..ir).map(|a| o[axis + a] * ist[a]).sum();
                let after: usize = (axis + 1..k.shape().len()).map(|a| o[a - 1 + ir] * st[a]).sum();
                before + resolved[which] * st[axis] + after
            });
            return Built::folded(k.take(dims, &idx));
        }
    }
    Ok(Built::one(Op::Gather { axis }, &[0, 1], TensorType::new(dtype, shape)))
}

pub(crate) fn gather_elements(ctx: &NodeCtx) -> Build {
    let dtype = ctx.check_dtype(0, ANY)?;
    ctx.check_dtype(1, INTS)?;
    let (data, indices) = (ctx.input(0)?, ctx.input(1)?);
    if data.rank() != indices.rank() || data.rank() == 0 {
        return unsup(format!("data rank {} and indices rank {} must be equal and ≥ 1", data.rank(), indices.rank()));
    }
    let axis = norm_axis(ctx.int_or("axis", 0)?, data.rank())?;
    Ok(Built::one(Op::GatherElements { axis }, &[0, 1], TensorType::new(dtype, indices.shape().to_vec())))
}

pub(crate) fn gather_nd(ctx: &NodeCtx) -> Build {
    let dtype = ctx.check_dtype(0, ANY)?;
    ctx.check_dtype(1, &[DType::I64])?;
    let (data, indices) = (ctx.input(0)?, ctx.input(1)?);
    let b = ctx.int_or("batch_dims", 0)?;
    let (r, q) = (data.rank(), indices.rank());
    if b < 0 || q < 1 || b as usize >= q.min(r) {
        return unsup(format!("batch_dims {b} is invalid for data rank {r}, indices rank {q}"));
    }
    let b = b as usize;
    let Some(last) = indices.shape()[q - 1].as_const() else {
        return unsup("the last dimension of indices must be a constant");
    };
    let last = last as usize;
    if last < 1 || b + last > r {
        return unsup(format!("indices tuples of length {last} do not fit data rank {r} with batch_dims {b}"));
    }
    let mut shape = indices.shape()[..q - 1].to_vec();
    shape.extend(data.shape()[b + last..].iter().cloned());
    Ok(Built::one(Op::GatherND { batch_dims: b }, &[0, 1], TensorType::new(dtype, shape)))
}

pub(crate) fn pad(ctx: &NodeCtx) -> Build {
    let dtype = ctx.check_dtype(0, ANY)?;
    let x = ctx.input(0)?;
    let r = x.rank();
    let mode = match ctx.string_or("mode", "constant")?.as_str() {
        "constant" => PadMode::Constant,
        "reflect" => PadMode::Reflect,
        "edge" => PadMode::Edge,
        other => return unsup(format!("mode '{other}' is not supported")),
    };
    let (raw, value, axes) = if ctx.opset < 11 {
        let pads = ctx.ints_attr(if ctx.opset < 2 { "paddings" } else { "pads" })?.ok_or_else(|| Unsupported("attribute 'pads' is missing".into()))?;
        (pads.into_iter().map(SymDim::from).collect::<Vec<_>>(), ctx.float_or("value", 0.0)? as f64, None)
    } else {
        let pads = ctx.param_ints(1, "pads")?;
        let value = if ctx.opt_input(2).is_some() {
            match ctx.param_f64s(2, "constant_value")?.as_slice() {
                [v] => *v,
                [] => 0.0,
                _ => return unsup("constant_value should be a scalar"),
            }
        } else {
            0.0
        };
        let axes = if ctx.opt_input(3).is_some() { Some(norm_axes(&ctx.param_consts(3, "axes")?, r)?) } else { None };
        (pads, value, axes)
    };
    let axes = axes.unwrap_or_else(|| (0..r).collect());
    if raw.len() != 2 * axes.len() {
        return unsup(format!("{} pads for {} axes", raw.len(), axes.len()));
    }
    let n = axes.len();
    let mut pads = vec![SymDim::from(0i64); 2 * r];
    for (i, &a) in axes.iter().enumerate() {
        pads[a] = raw[i].clone();
        pads[r + a] = raw[n + i].clone();
    }
    let shape: Vec<SymDim> = (0..r).map(|a| x.shape()[a].clone() + pads[a].clone() + pads[r + a].clone()).collect();
    if shape.iter().any(|d| d.as_const().is_some_and(|v| v < 0)) {
        return unsup(format!("pads {} crop below zero", shape_string(&pads)));
    }
    Ok(Built::one(Op::Pad { pads, mode, value }, &[0], TensorType::new(dtype, shape)))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use crate::ir::Op;
    use crate::sym::SymDim;

    #[test]
    fn slice_with_int_max_and_negative_steps() {
        let mut g = TestGraph::new(13);
        g.input("x", "f32", &["B", "C", "77"]);
        g.const_i64("s", &[1], &[1]);
        g.const_i64("e", &[1], &[i64::MAX]);
        g.const_i64("ax", &[1], &[1]);
        g.named_node("tail", "Slice", &["x", "s", "e", "ax"], &["tail"], &[]);
        g.const_i64("s2", &[1], &[-1]);
        g.const_i64("e2", &[1], &[i64::MIN]);
        g.const_i64("ax2", &[1], &[2]);
        g.const_i64("st2", &[1], &[-2]);
        g.node("Slice", &["x", "s2", "e2", "ax2", "st2"], &["rev"], &[]);
        g.output("tail");
        g.output("rev");
        let out = g.import_strict();
        assert_eq!(out.type_of("tail"), "f32[B, C - 1, 77]");
        assert_eq!(out.op("tail"), Op::Slice { axes: vec![1], starts: vec![SymDim::from(1i64)], steps: vec![1] });
        assert_eq!(out.type_of("rev"), "f32[B, C, 39]");
        assert_eq!(out.op("rev"), Op::Slice { axes: vec![2], starts: vec![SymDim::from(76i64)], steps: vec![-2] });
    }

    #[test]
    fn known_slices_and_concats_fold() {
        let mut g = TestGraph::new(13);
        g.const_i64("v", &[2, 3], &[1, 2, 3, 4, 5, 6]);
        g.const_i64("s", &[2], &[0, -2]);
        g.const_i64("e", &[2], &[2, 100]);
        g.node("Slice", &["v", "s", "e"], &["sl"], &[]);
        g.const_i64("w", &[2, 1], &[7, 8]);
        g.node("Concat", &["sl", "w"], &["cat"], &[("axis", attr_i(1))]);
        g.const_i64("g", &[2], &[1, -1]);
        g.node("Gather", &["cat", "g"], &["ga"], &[("axis", attr_i(1))]);
        g.node("Split", &["v"], &["p", "q"], &[("axis", attr_i(0))]);
        g.output("cat");
        g.output("ga");
        g.output("q");
        let out = g.import_strict();
        assert_eq!(out.known_of("cat"), "[2, 3, 7, 5, 6, 8]");
        assert_eq!(out.type_of("cat"), "i64[2, 3]");
        assert_eq!(out.known_of("ga"), "[3, 7, 6, 8]");
        assert_eq!(out.known_of("q"), "[4, 5, 6]");
    }

    #[test]
    fn split_sizes_symbolic_and_from_input() {
        let mut g = TestGraph::new(18);
        g.input("x", "f32", &["B", "2C"]);
        g.node("Split", &["x"], &["a", "b"], &[("axis", attr_i(1)), ("num_outputs", attr_i(2))]);
        g.const_i64("sz", &[2], &[1, 2]);
        g.input("y", "f32", &["3"]);
        g.node("Split", &["y", "sz"], &["c", "d"], &[]);
        for o in ["a", "b", "c", "d"] {
            g.output(o);
        }
        let out = g.import_strict();
        assert_eq!(out.type_of("a"), "f32[B, ((2C + 1) / 2)]");
        assert_eq!(out.type_of("d"), "f32[2]");
        assert_eq!(out.op_of("c"), "Split");
    }

    #[test]
    fn pad_resolves_axes_and_value() {
        let mut g = TestGraph::new(18);
        g.input("x", "f32", &["N", "C", "H", "W"]);
        g.const_i64("p", &[4], &[1, 2, 3, 4]);
        g.const_f32("v", &[], &[0.5]);
        g.const_i64("ax", &[2], &[-1, 2]);
        g.node("Pad", &["x", "p", "v", "ax"], &["y"], &[]);
        g.output("y");
        let out = g.import_strict();
        assert_eq!(out.type_of("y"), "f32[N, C, H + 6, W + 4]");
        let Op::Pad { pads, value, .. } = out.op("y") else { panic!() };
        assert_eq!(crate::sym::shape_string(&pads), "[0, 0, 2, 1, 0, 0, 4, 3]");
        assert_eq!(value, 0.5);
    }
}
