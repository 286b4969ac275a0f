//! Softmax and LogSoftmax along one axis, max-subtracted so exp never overflows.

use rayon::prelude::*;
use quilt_rewrites::Tensor;

use super::data::{load_real, outer_axis_inner, with_real, Real};
use super::StepCtx;
#[allow(unused_imports)]
use num_traits::{Float as _, One as _, Zero as _};

/// Softmax (or log-softmax) of one contiguous row into `dst`.
fn softmax_row<F: Real>(src: &[F], dst: &mut [F], log: bool) {
    let max = src.iter().copied().fold(F::neg_infinity(), F::max);
    let mut sum = F::zero();
    for (d, &s) in dst.iter_mut().zip(src) {
        let e = (s - max).exp();
        *d = e;
        sum += e;
    }
    if log {
        let shift = max + sum.ln();
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s - shift;
        }
    } else {
        let inv = F::one() / sum;
        for d in dst.iter_mut() {
            *d = *d * inv;
        }
    }
}

pub(crate) fn softmax(cx: &StepCtx, axis: usize, log: bool) -> Result<Tensor, String> {
    let x = cx.input(0)?;
    if axis >= x.shape.len() {
        return Err(format!("axis {axis} is out of range for shape {:?}", x.shape));
    }
    let (_, len, inner) = outer_axis_inner(&x.shape, axis);
    let dtype = x.dtype();
    let data = with_real!(dtype, F => {
        let xv = load_real::<F>(x, "x")?;
        let mut out = vec![F::zero(); xv.len()];
        let block = len * inner;
        if block > 0 && inner == 1 {
            // The common case (last axis): contiguous rows, processed in batches of rows.
            let rows_per_task = (4096 / len.max(1)).max(1) * len;
            out.par_chunks_mut(rows_per_task).zip(xv.par_chunks(rows_per_task)).for_each(|(dst, src)| {
                for (d, s) in dst.chunks_mut(len).zip(src.chunks(len)) {
                    softmax_row(s, d, log);
                }
            });
        } else if block > 0 {
            out.par_chunks_mut(block).zip(xv.par_chunks(block)).for_each(|(dst, src)| {
                let mut row = vec![F::zero(); len];
                let mut res = vec![F::zero(); len];
                for i in 0..inner {
                    for (j, r) in row.iter_mut().enumerate() {
                        *r = src[j * inner + i];
                    }
                    softmax_row(&row, &mut res, log);
                    for (j, &r) in res.iter().enumerate() {
                        dst[j * inner + i] = r;
                    }
                }
            });
        }
        Ok(F::store(dtype, out))
    })?;
    Ok(Tensor { shape: x.shape.clone(), data })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_close, f32s, run_one, Rng};
    use quilt_rewrites::{DType, Op};

    #[test]
    fn softmax_along_a_middle_axis() {
        let mut rng = Rng::new(41);
        let x = rng.tensor(&[2, 4, 3]);
        let xv: Vec<f32> = f32s(&x).iter().map(|v| v * 30.0).collect();
        let x = quilt_rewrites::Tensor::from_f32s(vec![2, 4, 3], xv.clone());
        let got = run_one(Op::Softmax { axis: 1 }, &[&x], DType::F32, &[2, 4, 3]).unwrap();
        let lgot = run_one(Op::LogSoftmax { axis: 1 }, &[&x], DType::F32, &[2, 4, 3]).unwrap();
        let mut want = vec![0.0f32; 24];
        let mut lwant = vec![0.0f32; 24];
        for o in 0..2 {
            for i in 0..3 {
                let idx = |j: usize| (o * 4 + j) * 3 + i;
                let sum: f64 = (0..4).map(|j| (xv[idx(j)] as f64).exp()).sum();
                for j in 0..4 {
                    want[idx(j)] = ((xv[idx(j)] as f64).exp() / sum) as f32;
                    lwant[idx(j)] = (xv[idx(j)] as f64 - sum.ln()) as f32;
                }
            }
        }
        assert_close(&f32s(&got), &want, 1e-6, 1e-5);
        assert_close(&f32s(&lgot), &lwant, 1e-5, 1e-5);
    }
}
