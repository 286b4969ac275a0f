//! Ops that only move elements: Reshape, Expand, Transpose, Concat, Split, Slice, Tile, Pad, Trilu.

use quilt_rewrites::ir::PadMode;
use quilt_rewrites::{SymDim, Tensor};

use super::broadcast::broadcast_to;
use super::data::{elems, gather_axes, outer_axis_inner, with_elem, Elem};
use super::StepCtx;

pub(crate) fn reshape(cx: &StepCtx) -> Result<Tensor, String> {
    let x = cx.input(0)?;
    let shape = cx.out_shape(0).to_vec();
    let n: usize = shape.iter().product();
    if n != x.data.len() {
        return Err(format!("cannot reshape {:?} ({} elements) to {shape:?} ({n} elements)", x.shape, x.data.len()));
    }
    Ok(Tensor { shape, data: x.data.clone() })
}

pub(crate) fn expand(cx: &StepCtx) -> Result<Tensor, String> {
    let x = cx.input(0)?;
    let shape = cx.out_shape(0).to_vec();
    let data = broadcast_to(&x.data, &x.shape, &shape)?;
    Ok(Tensor { shape, data })
}

pub(crate) fn transpose(cx: &StepCtx, perm: &[usize]) -> Result<Tensor, String> {
    permuted(cx.input(0)?, perm)
}

/// `x` with its axes permuted: output axis `i` is input axis `perm[i]`.
pub(crate) fn permuted(x: &Tensor, perm: &[usize]) -> Result<Tensor, String> {
    let rank = x.shape.len();
    let mut seen = vec![false; rank];
    if perm.len() != rank || perm.iter().any(|&p| p >= rank || std::mem::replace(&mut seen[p], true)) {
        return Err(format!("perm {perm:?} is not a permutation of the {rank} axes of {:?}", x.shape));
    }
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    Ok(Tensor { shape, data: x.data.permuted(&x.shape, perm) })
}

pub(crate) fn concat(cx: &StepCtx, axis: usize) -> Result<Tensor, String> {
    let inputs: Vec<&Tensor> = (0..cx.inputs.len()).map(|i| cx.input(i)).collect::<Result<_, _>>()?;
    let first = inputs.first().ok_or("no inputs")?;
    let rank = first.shape.len();
    if axis >= rank {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    let mut shape = first.shape.clone();
    shape[axis] = 0;
    for (i, t) in inputs.iter().enumerate() {
        let same_rest = t.shape.len() == rank && (0..rank).all(|d| d == axis || t.shape[d] == first.shape[d]);
        if !same_rest {
            return Err(format!("input {i} has shape {:?}, which does not match input 0 {:?} outside axis {axis}", t.shape, first.shape));
        }
        shape[axis] += t.shape[axis];
    }
    let (outer, _, inner) = outer_axis_inner(&first.shape, axis);
    let dtype = first.dtype();
    let data = with_elem!(dtype, T => {
        let parts: Vec<&[T]> = inputs.iter().enumerate().map(|(i, t)| elems::<T>(t, &format!("input {i}"), dtype)).collect::<Result<_, _>>()?;
        let mut out: Vec<T> = Vec::with_capacity(shape.iter().product());
        for o in 0..outer {
            for (p, t) in parts.iter().zip(&inputs) {
                let block = t.shape[axis] * inner;
                out.extend_from_slice(&p[o * block..(o + 1) * block]);
            }
        }
        T::wrap(out)
    });
    Ok(Tensor { shape, data })
}

pub(crate) fn split(cx: &StepCtx, axis: usize) -> Result<Vec<Tensor>, String> {
    let x = cx.input(0)?;
    if axis >= x.shape.len() {
        return Err(format!("axis {axis} is out of range for shape {:?}", x.shape));
    }
    let sizes: Vec<usize> = (0..cx.outs.len()).map(|i| cx.out_shape(i).get(axis).copied().unwrap_or(0)).collect();
    if sizes.iter().sum::<usize>() != x.shape[axis] {
        return Err(format!("output sizes {sizes:?} along axis {axis} do not add up to the input's {}", x.shape[axis]));
    }
    let (outer, len, inner) = outer_axis_inner(&x.shape, axis);
    let dtype = x.dtype();
    with_elem!(dtype, T => {
        let v = elems::<T>(x, "input", dtype)?;
        let mut start = 0usize;
        Ok(sizes
            .iter()
            .map(|&size| {
                let mut out: Vec<T> = Vec::with_capacity(outer * size * inner);
                for o in 0..outer {
                    let from = (o * len + start) * inner;
                    out.extend_from_slice(&v[from..from + size * inner]);
                }
                start += size;
                let mut shape = x.shape.clone();
                shape[axis] = size;
                Tensor { shape, data: T::wrap(out) }
            })
            .collect())
    })
}

pub(crate) fn slice(cx: &StepCtx, axes: &[usize], starts: &[SymDim], steps: &[i64]) -> Result<Tensor, String> {
    let x = cx.input(0)?;
    let shape = cx.out_shape(0).to_vec();
    if shape.len() != x.shape.len() || axes.len() != starts.len() || axes.len() != steps.len() {
        return Err(format!("output rank {} / axes {axes:?} / starts / steps do not fit input {:?}", shape.len(), x.shape));
    }
    let mut idx: Vec<Vec<usize>> = x.shape.iter().zip(&shape).map(|(_, &o)| (0..o).collect()).collect();
    for (d, (&n, &o)) in x.shape.iter().zip(&shape).enumerate() {
        if !axes.contains(&d) && n != o {
            return Err(format!("axis {d} is not sliced but has size {o} in the output and {n} in the input"));
        }
    }
    for ((&axis, start), &step) in axes.iter().zip(starts).zip(steps) {
        let (Some(&n), Some(&o)) = (x.shape.get(axis), shape.get(axis)) else {
            return Err(format!("axis {axis} is out of range for shape {:?}", x.shape));
        };
        let start = cx.eval(start)?;
        if step == 0 {
            return Err(format!("step 0 on axis {axis}"));
        }
        if o > 0 {
            let last = start + (o as i64 - 1) * step;
            if start < 0 || start >= n as i64 || last < 0 || last >= n as i64 {
                return Err(format!("axis {axis}: {o} elements from {start} by step {step} leave the input's 0..{n}"));
            }
        }
        idx[axis] = (0..o as i64).map(|i| (start + i * step) as usize).collect();
    }
    let dtype = x.dtype();
    let data = with_elem!(dtype, T => {
        let v = elems::<T>(x, "data", dtype)?;
        T::wrap(gather_axes(v, &x.shape, &idx, T::from_f64(0.0)))
    });
    Ok(Tensor { shape, data })
}

pub(crate) fn tile(cx: &StepCtx) -> Result<Tensor, String> {
    let x = cx.input(0)?;
    let shape = cx.out_shape(0).to_vec();
    if shape.len() != x.shape.len() {
        return Err(format!("output rank {} differs from input {:?}", shape.len(), x.shape));
    }
    let mut idx = Vec::with_capacity(shape.len());
    for (d, (&n, &o)) in x.shape.iter().zip(&shape).enumerate() {
        if (n == 0 && o != 0) || (n != 0 && o % n != 0) {
            return Err(format!("axis {d}: output size {o} is not a multiple of the input's {n}"));
        }
        idx.push((0..o).map(|i| i % n.max(1)).collect::<Vec<usize>>());
    }
    let dtype = x.dtype();
    let data = with_elem!(dtype, T => {
        let v = elems::<T>(x, "input", dtype)?;
        T::wrap(gather_axes(v, &x.shape, &idx, T::from_f64(0.0)))
    });
    Ok(Tensor { shape, data })
}

/// Source index along one axis for output position `o` of a pad by `begin`, or `usize::MAX`
/// where a constant pad fills in.
fn pad_source(o: i64, begin: i64, n: usize, mode: PadMode) -> usize {
    let i = o - begin;
    let n = n as i64;
    if (0..n).contains(&i) {
        return i as usize;
    }
    match mode {
        PadMode::Constant => usize::MAX,
        PadMode::Edge => i.clamp(0, n - 1) as usize,
        PadMode::Reflect if n == 1 => 0,
        // Mirror without repeating the edge: period 2(n-1).
        PadMode::Reflect => {
            let period = 2 * (n - 1);
            let m = i.rem_euclid(period);
            (if m >= n { period - m } else { m }) as usize
        }
    }
}

pub(crate) fn pad(cx: &StepCtx, pads: &[SymDim], mode: PadMode, value: f64) -> Result<Tensor, String> {
    let x = cx.input(0)?;
    let rank = x.shape.len();
    if pads.len() != 2 * rank {
        return Err(format!("{} pads for rank {rank}", pads.len()));
    }
    let pads: Vec<i64> = pads.iter().map(|p| cx.eval(p)).collect::<Result<_, _>>()?;
    let mut idx = Vec::with_capacity(rank);
    let mut shape = Vec::with_capacity(rank);
    for d in 0..rank {
        let (b, e, n) = (pads[d], pads[rank + d], x.shape[d]);
        let o = n as i64 + b + e;
        if o < 0 {
            return Err(format!("axis {d}: pads ({b}, {e}) crop more than its {n} elements"));
        }
        if n == 0 && o > 0 && mode != PadMode::Constant {
            return Err(format!("axis {d} is empty, so {mode:?} padding has nothing to copy"));
        }
        idx.push((0..o).map(|i| pad_source(i, b, n, mode)).collect::<Vec<usize>>());
        shape.push(o as usize);
    }
    let dtype = x.dtype();
    let data = with_elem!(dtype, T => {
        let v = elems::<T>(x, "data", dtype)?;
        T::wrap(gather_axes(v, &x.shape, &idx, T::from_f64(value)))
    });
    Ok(Tensor { shape, data })
}

pub(crate) fn trilu(cx: &StepCtx, upper: bool, k: i64) -> Result<Tensor, String> {
    let x = cx.input(0)?;
    let rank = x.shape.len();
    if rank < 2 {
        return Err(format!("input must have rank >= 2, got {:?}", x.shape));
    }
    let (rows, cols) = (x.shape[rank - 2], x.shape[rank - 1]);
    let dtype = x.dtype();
    let data = with_elem!(dtype, T => {
        let mut v = elems::<T>(x, "input", dtype)?.to_vec();
        let zero = T::from_f64(0.0);
        for (e, slot) in v.iter_mut().enumerate() {
            let (i, j) = (((e / cols.max(1)) % rows.max(1)) as i64, (e % cols.max(1)) as i64);
            let keep = if upper { j - i >= k } else { j - i <= k };
            if !keep {
                *slot = zero;
            }
        }
        T::wrap(v)
    });
    Ok(Tensor { shape: x.shape.clone(), data })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{dims, f32s, i64s, konst, run_one, PlanBuilder, Rng};
    use quilt_rewrites::ir::PadMode;
    use quilt_rewrites::{DType, Op, SymDim, Tensor};

    fn iota(shape: &[usize]) -> Tensor {
        Tensor::from_i64s(shape.to_vec(), (0..shape.iter().product::<usize>() as i64).collect())
    }

    #[test]
    fn transpose_against_index_arithmetic() {
        let x = iota(&[2, 3, 4]);
        let got = run_one(Op::Transpose { perm: vec![2, 0, 1] }, &[&x], DType::I64, &[4, 2, 3]).unwrap();
        let want: Vec<i64> = (0..24).map(|e| {
            let (k, i, j) = (e / 6, (e / 3) % 2, e % 3);
            ((i * 3 + j) * 4 + k) as i64
        }).collect();
        assert_eq!(i64s(&got), want);
        let e = run_one(Op::Transpose { perm: vec![0, 0, 1] }, &[&x], DType::I64, &[2, 2, 3]).unwrap_err().to_string();
        assert!(e.contains("not a permutation"), "{e}");
    }

    #[test]
    fn concat_then_split_round_trips() {
        let mut rng = Rng::new(61);
        let a = rng.tensor(&[2, 1, 3]);
        let b = rng.tensor(&[2, 2, 3]);
        let mut p = PlanBuilder::default();
        let ia = p.input("a", DType::F32, konst(&[2, 1, 3]));
        let ib = p.input("b", DType::F32, konst(&[2, 2, 3]));
        let c = p.op("cat", Op::Concat { axis: 1 }, &[ia, ib], DType::F32, konst(&[2, 3, 3]));
        let parts = p.step("split", Op::Split { axis: 1 }, &[Some(c)], vec![(DType::F32, konst(&[2, 1, 3])), (DType::F32, konst(&[2, 2, 3]))]);
        p.output("c", c);
        p.output("a2", parts[0]);
        p.output("b2", parts[1]);
        let out = p.build().run(&[a.clone(), b.clone()]).unwrap();
        let (av, bv, cv) = (f32s(&a), f32s(&b), f32s(&out[0]));
        for i in 0..2 {
            assert_eq!(cv[i * 9..i * 9 + 3], av[i * 3..i * 3 + 3]);
            assert_eq!(cv[i * 9 + 3..i * 9 + 9], bv[i * 6..i * 6 + 6]);
        }
        assert_eq!(out[1], a);
        assert_eq!(out[2], b);
    }

    #[test]
    fn slice_with_negative_step_and_symbolic_start() {
        // x[N, 6]: rows from the end backwards by 2 starting at N-1, columns 1..4.
        let mut p = PlanBuilder::default();
        let x = p.input("x", DType::I64, dims(&["N", "6"]));
        let n = SymDim::sym("N");
        let rows = (n.clone() + SymDim::konst(1)).floor_div(&SymDim::konst(2));
        let op = Op::Slice { axes: vec![0, 1], starts: vec![n - SymDim::konst(1), SymDim::konst(1)], steps: vec![-2, 1] };
        let y = p.op("slice", op, &[x], DType::I64, vec![rows, SymDim::konst(3)]);
        p.output("y", y);
        let exe = p.build();
        let out = exe.run(&[iota(&[5, 6])]).unwrap();
        assert_eq!(i64s(&out[0]), vec![25, 26, 27, 13, 14, 15, 1, 2, 3]);
        let out = exe.run(&[iota(&[2, 6])]).unwrap();
        assert_eq!(i64s(&out[0]), vec![7, 8, 9]);
    }

    #[test]
    fn pad_modes_and_cropping() {
        let x = Tensor::from_f32s(vec![1, 3], vec![1.0, 2.0, 3.0]);
        let pads = |v: [i64; 4]| v.iter().map(|&p| SymDim::konst(p)).collect::<Vec<_>>();
        let reflect = run_one(Op::Pad { pads: pads([0, 2, 0, 2]), mode: PadMode::Reflect, value: 0.0 }, &[&x], DType::F32, &[1, 7]).unwrap();
        assert_eq!(f32s(&reflect), vec![3.0, 2.0, 1.0, 2.0, 3.0, 2.0, 1.0]);
        let edge = run_one(Op::Pad { pads: pads([0, 1, 0, 2]), mode: PadMode::Edge, value: 0.0 }, &[&x], DType::F32, &[1, 6]).unwrap();
        assert_eq!(f32s(&edge), vec![1.0, 1.0, 2.0, 3.0, 3.0, 3.0]);
        let constant = run_one(Op::Pad { pads: pads([1, -1, 0, 1]), mode: PadMode::Constant, value: 9.5 }, &[&x], DType::F32, &[2, 3]).unwrap();
        assert_eq!(f32s(&constant), vec![9.5, 9.5, 9.5, 2.0, 3.0, 9.5]);
    }

    #[test]
    fn tile_expand_trilu_reshape() {
        let x = iota(&[2, 1]);
        assert_eq!(i64s(&run_one(Op::Tile, &[&x], DType::I64, &[4, 3]).unwrap()), vec![0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1]);
        assert_eq!(i64s(&run_one(Op::Expand, &[&x], DType::I64, &[2, 2, 3]).unwrap()), vec![0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1]);
        let e = run_one(Op::Expand, &[&x], DType::I64, &[3, 3]).unwrap_err().to_string();
        assert!(e.contains("cannot be broadcast"), "{e}");
        let m = iota(&[3, 3]);
        let up = run_one(Op::Trilu { upper: true, k: 1 }, &[&m], DType::I64, &[3, 3]).unwrap();
        assert_eq!(i64s(&up), vec![0, 1, 2, 0, 0, 5, 0, 0, 0]);
        let lo = run_one(Op::Trilu { upper: false, k: -1 }, &[&m], DType::I64, &[3, 3]).unwrap();
        assert_eq!(i64s(&lo), vec![0, 0, 0, 3, 0, 0, 6, 7, 0]);
        let r = run_one(Op::Reshape, &[&m], DType::I64, &[9]).unwrap();
        assert_eq!(i64s(&r), (0..9).collect::<Vec<_>>());
    }
}
