//! Reductions over axes (Sum/Mean/Max/Min/Prod), ArgMax/ArgMin and CumSum along one axis.

use quilt_rewrites::ir::ReduceKind;
use quilt_rewrites::{Tensor, TensorData};

use super::broadcast::Rows;
use super::data::{load_i64, load_real, outer_axis_inner, store_i64, with_real, Real};
use super::StepCtx;
#[allow(unused_imports)]
use num_traits::{Float as _, One as _, Zero as _};

/// Folds every element of `x` into its reduced position (`kept` is x's shape with reduced axes 1).
fn fold<T: Copy>(x: &[T], shape: &[usize], kept: &[usize], init: T, f: impl Fn(T, T) -> T) -> Result<Vec<T>, String> {
    let mut acc = vec![init; kept.iter().product()];
    let rows = Rows::new(shape, [kept])?;
    let (n, [s]) = (rows.inner_len, rows.inner_strides);
    rows.for_each(|xo, [ro]| {
        if s == 0 {
            let a = &mut acc[ro];
            for &v in &x[xo..xo + n] {
                *a = f(*a, v);
            }
        } else {
            for (a, &v) in acc[ro..ro + n].iter_mut().zip(&x[xo..xo + n]) {
                *a = f(*a, v);
            }
        }
    });
    Ok(acc)
}

pub(crate) fn reduce(cx: &StepCtx, kind: ReduceKind, axes: &[usize], keepdims: bool) -> Result<Tensor, String> {
    let x = cx.input(0)?;
    if let Some(a) = axes.iter().find(|&&a| a >= x.shape.len()) {
        return Err(format!("axis {a} is out of range for shape {:?}", x.shape));
    }
    let kept: Vec<usize> = x.shape.iter().enumerate().map(|(i, &d)| if axes.contains(&i) { 1 } else { d }).collect();
    let count: usize = axes.iter().map(|&a| x.shape[a]).product();
    let out_shape: Vec<usize> =
        if keepdims { kept.clone() } else { x.shape.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d).collect() };
    let dtype = x.dtype();
    let data = if dtype.is_float() {
        with_real!(dtype, F => {
            let v = load_real::<F>(x, "data")?;
            let nan_or = |a: F, b: F, pick: fn(F, F) -> F| if a.is_nan() || b.is_nan() { F::nan() } else { pick(a, b) };
            let r = match kind {
                ReduceKind::Sum => fold(&v, &x.shape, &kept, F::zero(), |a, b| a + b)?,
                ReduceKind::Mean => {
                    let n = F::of(count as f64);
                    fold(&v, &x.shape, &kept, F::zero(), |a, b| a + b)?.into_iter().map(|s| s / n).collect()
                }
                ReduceKind::Prod => fold(&v, &x.shape, &kept, F::one(), |a, b| a * b)?,
                ReduceKind::Max => fold(&v, &x.shape, &kept, F::neg_infinity(), |a, b| nan_or(a, b, F::max))?,
                ReduceKind::Min => fold(&v, &x.shape, &kept, F::infinity(), |a, b| nan_or(a, b, F::min))?,
            };
            Ok(F::store(dtype, r))
        })?
    } else {
        let v = load_i64(x, "data")?;
        let r = match kind {
            ReduceKind::Sum => fold(&v, &x.shape, &kept, 0, i64::wrapping_add)?,
            ReduceKind::Mean => {
                let n = count.max(1) as i64;
                fold(&v, &x.shape, &kept, 0, i64::wrapping_add)?.into_iter().map(|s| s / n).collect()
            }
            ReduceKind::Prod => fold(&v, &x.shape, &kept, 1, i64::wrapping_mul)?,
            ReduceKind::Max => fold(&v, &x.shape, &kept, i64::MIN, i64::max)?,
            ReduceKind::Min => fold(&v, &x.shape, &kept, i64::MAX, i64::min)?,
        };
        store_i64(dtype, r)
    };
    Ok(Tensor { shape: out_shape, data })
}

/// Index of the max (or min) along `axis`; ties pick the first index unless `last`.
fn arg_along<T: PartialOrd + Copy>(x: &[T], outer: usize, len: usize, inner: usize, max: bool, last: bool) -> Vec<i64> {
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| x[(o * len + j) * inner + i];
            let mut best = 0usize;
            for j in 1..len {
                let (v, b) = (at(j), at(best));
                let better = if max { v > b || (last && v == b) } else { v < b || (last && v == b) };
                if better {
                    best = j;
                }
            }
            out.push(best as i64);
        }
    }
    out
}

pub(crate) fn arg_extreme(cx: &StepCtx, axis: usize, keepdims: bool, last: bool, max: bool) -> Result<Tensor, String> {
    let x = cx.input(0)?;
    if axis >= x.shape.len() {
        return Err(format!("axis {axis} is out of range for shape {:?}", x.shape));
    }
    let (outer, len, inner) = outer_axis_inner(&x.shape, axis);
    if len == 0 {
        return Err(format!("cannot take the arg{} of an empty axis {axis}", if max { "max" } else { "min" }));
    }
    let idx = if x.dtype().is_float() {
        with_real!(x.dtype(), F => {
            let v = load_real::<F>(x, "data")?;
            Ok(arg_along(&v, outer, len, inner, max, last))
        })?
    } else {
        let v = load_i64(x, "data")?;
        arg_along(&v, outer, len, inner, max, last)
    };
    let mut shape = x.shape.clone();
    if keepdims {
        shape[axis] = 1;
    } else {
        shape.remove(axis);
    }
    Ok(Tensor { shape, data: TensorData::I64(idx) })
}

fn cumsum_along<T: Copy + std::ops::Add<Output = T>>(x: &[T], zero: T, outer: usize, len: usize, inner: usize, exclusive: bool, reverse: bool) -> Vec<T> {
    let mut out = vec![zero; x.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * len + j) * inner + i;
            let mut acc = zero;
            for step in 0..len {
                let j = if reverse { len - 1 - step } else { step };
                if exclusive {
                    out[at(j)] = acc;
                    acc = acc + x[at(j)];
                } else {
                    acc = acc + x[at(j)];
                    out[at(j)] = acc;
                }
            }
        }
    }
    out
}

pub(crate) fn cumsum(cx: &StepCtx, axis: usize, exclusive: bool, reverse: bool) -> Result<Tensor, String> {
    let x = cx.input(0)?;
    if axis >= x.shape.len() {
        return Err(format!("axis {axis} is out of range for shape {:?}", x.shape));
    }
    let (outer, len, inner) = outer_axis_inner(&x.shape, axis);
    let dtype = x.dtype();
    let data = if dtype.is_float() {
        with_real!(dtype, F => {
            let v = load_real::<F>(x, "x")?;
            Ok(F::store(dtype, cumsum_along(&v, F::zero(), outer, len, inner, exclusive, reverse)))
        })?
    } else {
        let v = load_i64(x, "x")?;
        // Wrap-around like the storage type: i64 addition, narrowed on store.
        let w: Vec<std::num::Wrapping<i64>> = v.iter().map(|&a| std::num::Wrapping(a)).collect();
        let r = cumsum_along(&w, std::num::Wrapping(0), outer, len, inner, exclusive, reverse);
        store_i64(dtype, r.into_iter().map(|a| a.0).collect())
    };
    Ok(Tensor { shape: x.shape.clone(), data })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_close, f32s, i64s, run_one, Rng};
    use quilt_rewrites::ir::ReduceKind;
    use quilt_rewrites::{DType, Op, Tensor};

    #[test]
    fn reduce_over_two_axes_against_loops() {
        let mut rng = Rng::new(51);
        let x = rng.tensor(&[3, 4, 5]);
        let v = f32s(&x);
        let at = |i: usize, j: usize, k: usize| v[(i * 4 + j) * 5 + k] as f64;
        for (kind, init, f) in [
            (ReduceKind::Sum, 0.0, (|a: f64, b: f64| a + b) as fn(f64, f64) -> f64),
            (ReduceKind::Max, f64::NEG_INFINITY, f64::max),
            (ReduceKind::Min, f64::INFINITY, f64::min),
            (ReduceKind::Prod, 1.0, |a, b| a * b),
        ] {
            // Axes 0 and 2, keepdims: [1, 4, 1].
            let got = run_one(Op::Reduce { kind, axes: vec![0, 2], keepdims: true }, &[&x], DType::F32, &[1, 4, 1]).unwrap();
            let want: Vec<f32> = (0..4).map(|j| (0..3).flat_map(|i| (0..5).map(move |k| (i, k))).fold(init, |a, (i, k)| f(a, at(i, j, k))) as f32).collect();
            assert_close(&f32s(&got), &want, 1e-5, 1e-5);
        }
        let got = run_one(Op::Reduce { kind: ReduceKind::Mean, axes: vec![1], keepdims: false }, &[&x], DType::F32, &[3, 5]).unwrap();
        let want: Vec<f32> = (0..15).map(|e| ((0..4).map(|j| at(e / 5, j, e % 5)).sum::<f64>() / 4.0) as f32).collect();
        assert_close(&f32s(&got), &want, 1e-6, 1e-5);
        let ints = Tensor::from_i64s(vec![2, 3], vec![1, 2, 3, 4, 5, 6]);
        let got = run_one(Op::Reduce { kind: ReduceKind::Sum, axes: vec![1], keepdims: false }, &[&ints], DType::I64, &[2]).unwrap();
        assert_eq!(i64s(&got), vec![6, 15]);
    }

    #[test]
    fn argmax_ties_and_cumsum_modes() {
        let x = Tensor::from_f32s(vec![2, 3], vec![1.0, 3.0, 3.0, 2.0, 0.0, 2.0]);
        let first = run_one(Op::ArgMax { axis: 1, keepdims: false, select_last_index: false }, &[&x], DType::I64, &[2]).unwrap();
        assert_eq!(i64s(&first), vec![1, 0]);
        let last = run_one(Op::ArgMax { axis: 1, keepdims: true, select_last_index: true }, &[&x], DType::I64, &[2, 1]).unwrap();
        assert_eq!(i64s(&last), vec![2, 2]);
        let min = run_one(Op::ArgMin { axis: 0, keepdims: false, select_last_index: false }, &[&x], DType::I64, &[3]).unwrap();
        assert_eq!(i64s(&min), vec![0, 1, 1]);
        let x = Tensor::from_f32s(vec![4], vec![1.0, 2.0, 3.0, 4.0]);
        let cases = [(false, false, [1.0, 3.0, 6.0, 10.0]), (true, false, [0.0, 1.0, 3.0, 6.0]), (false, true, [10.0, 9.0, 7.0, 4.0]), (true, true, [9.0, 7.0, 4.0, 0.0])];
        for (exclusive, reverse, want) in cases {
            let got = run_one(Op::CumSum { axis: 0, exclusive, reverse }, &[&x], DType::F32, &[4]).unwrap();
            assert_eq!(f32s(&got), want, "exclusive={exclusive} reverse={reverse}");
        }
    }
}
