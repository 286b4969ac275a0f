//! Softmax and LogSoftmax along one axis, max-subtracted so exp never overflows.

use rayon::prelude::*;
use quilt_rewrites::Tensor;

use super::data::{load_real, outer_axis_inner, with_real, Real};
use super::StepCtx;
#[allow(unused_imports)]
use num_traits::{Float as _, One as _, Zero as _};

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
        if block > 0 {
            out.par_chunks_mut(block).zip(xv.par_chunks(block)).for_each(|(dst, src)| {
                for i in 0..inner {
                    let at = |j: usize| j * inner + i;
                    let max = (0..len).map(|j| src[at(j)]).fold(F::neg_infinity(), F::max);
                    let mut sum = F::zero();
                    for j in 0..len {
                        let e = (src[at(j)] - max).exp();
                        dst[at(j)] = e;
                        sum += e;
                    }
                    if log {
                        let ls = sum.ln();
                        for j in 0..len {
                            dst[at(j)] = src[at(j)] - max - ls;
                        }
                    } else {
                        for j in 0..len {
                            dst[at(j)] = dst[at(j)] / sum;
                        }
                    }
                }
            });
        }
        Ok(F::store(dtype, out))
    })?;
    Ok(Tensor { shape: x.shape.clone(), data })
}
