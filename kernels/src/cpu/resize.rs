//! Resize (nearest, linear, cubic) following the ONNX Resize spec: per axis, each output
//! coordinate is mapped back to the input (`CoordMode`), then interpolated from its neighbours
//! with edge clamping. Nearest gathers on all axes at once; linear and cubic are separable and
//! run one pass per resized axis.

use quilt_rewrites::ir::{CoordMode, NearestMode, ResizeMode, SymScale};
use quilt_rewrites::Tensor;

use crate::resize_math;

use super::data::{elems, gather_axes, load_real, outer_axis_inner, with_elem, with_real, Elem, Real};
use super::StepCtx;
#[allow(unused_imports)]
use num_traits::{Float as _, One as _, Zero as _};

pub(crate) struct ResizeParams<'a> {
    pub mode: ResizeMode,
    pub coord: CoordMode,
    pub nearest: NearestMode,
    pub cubic_coeff_a: f32,
    pub exclude_outside: bool,
    pub scales: &'a [SymScale],
}

/// Interpolation taps of one output position: input indices (clamped) and weights.
fn taps(p: &ResizeParams, x: f64, in_len: usize) -> Vec<(usize, f64)> {
    resize_math::taps(p.mode, p.cubic_coeff_a, p.exclude_outside, x, in_len)
}

/// One separable pass along `axis`: `shape[axis]` becomes `out_len`.
fn resample_axis<F: Real>(x: &[F], shape: &[usize], axis: usize, out_len: usize, taps: &[Vec<(usize, f64)>]) -> Vec<F> {
    let (outer, in_len, inner) = outer_axis_inner(shape, axis);
    let mut out = vec![F::zero(); outer * out_len * inner];
    for o in 0..outer {
        for (j, tj) in taps.iter().enumerate() {
            let dst = &mut out[(o * out_len + j) * inner..(o * out_len + j + 1) * inner];
            for &(i, w) in tj {
                let w = F::of(w);
                let src = &x[(o * in_len + i) * inner..(o * in_len + i + 1) * inner];
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d += w * s;
                }
            }
        }
    }
    out
}

pub(crate) fn resize(cx: &StepCtx, p: &ResizeParams) -> Result<Tensor, String> {
    let x = cx.input(0)?;
    let out_shape = cx.out_shape(0).to_vec();
    let rank = x.shape.len();
    if out_shape.len() != rank || p.scales.len() != rank {
        return Err(format!("input {:?}, output {out_shape:?} and {} scales differ in rank", x.shape, p.scales.len()));
    }
    let mut scales = Vec::with_capacity(rank);
    for (d, s) in p.scales.iter().enumerate() {
        let v = match s {
            SymScale::Factor(f) => *f as f64,
            SymScale::Ratio { out, input } => {
                let (o, i) = (cx.eval(out)?, cx.eval(input)?);
                if i == 0 {
                    return Err(format!("axis {d}: scale {o}/{i} divides by zero"));
                }
                o as f64 / i as f64
            }
        };
        if !(v > 0.0 && v.is_finite()) {
            return Err(format!("axis {d}: scale {v} must be positive"));
        }
        if x.shape[d] == 0 && out_shape[d] != 0 {
            return Err(format!("axis {d} is empty and cannot be resized to {}", out_shape[d]));
        }
        scales.push(v);
    }
    let unchanged = |d: usize| x.shape[d] == out_shape[d] && scales[d] == 1.0;
    let dtype = x.dtype();
    let data = match p.mode {
        ResizeMode::Nearest => {
            let idx: Vec<Vec<usize>> = (0..rank)
                .map(|d| {
                    (0..out_shape[d])
                        .map(|o| {
                            if unchanged(d) {
                                o
                            } else {
                                let c = resize_math::source_coord(p.coord, o, scales[d], x.shape[d], out_shape[d]);
                                resize_math::nearest_index(c, p.nearest, x.shape[d])
                            }
                        })
                        .collect()
                })
                .collect();
            with_elem!(dtype, T => {
                let v = elems::<T>(x, "X", dtype)?;
                T::wrap(gather_axes(v, &x.shape, &idx, T::from_f64(0.0)))
            })
        }
        ResizeMode::Linear | ResizeMode::Cubic => with_real!(dtype, F => {
            let mut cur: Vec<F> = load_real::<F>(x, "X")?.into_owned();
            let mut shape = x.shape.clone();
            for d in (0..rank).filter(|&d| !unchanged(d)) {
                let t: Vec<Vec<(usize, f64)>> = (0..out_shape[d])
                    .map(|o| taps(p, resize_math::source_coord(p.coord, o, scales[d], x.shape[d], out_shape[d]), x.shape[d]))
                    .collect();
                cur = resample_axis(&cur, &shape, d, out_shape[d], &t);
                shape[d] = out_shape[d];
            }
            Ok(F::store(dtype, cur))
        })?,
    };
    Ok(Tensor { shape: out_shape, data })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_close, f32s, run_one};
    use quilt_rewrites::ir::{CoordMode::*, NearestMode::*, ResizeMode::*, SymScale};
    use quilt_rewrites::ir::{CoordMode, NearestMode, ResizeMode};
    use quilt_rewrites::{DType, Op, SymDim, Tensor};

    type Case = (ResizeMode, CoordMode, NearestMode, f32, bool, Option<&'static [f32]>, &'static [usize], &'static [f32]);

    /// Expected outputs from the ONNX reference implementation (onnx 1.20.1,
    /// `onnx.reference.ReferenceEvaluator`, opset 19) on the 1×1×3×4 input below; `None` scales
    /// means the case gave `sizes` (scale = out / in).
    const CASES: &[Case] = &[
    (Nearest, Asymmetric, Floor, -0.75, false, Some(&[1.0, 1.0, 2.0, 2.0]), &[1, 1, 6, 8], &[0.0, 0.0, 2.0, 2.0, 1.0, 1.0, 4.3, 4.3, 0.0, 0.0, 2.0, 2.0, 1.0, 1.0, 4.3, 4.3, 2.8, 2.8, 4.8, 4.8, 3.8, 3.8, 7.1, 7.1, 2.8, 2.8, 4.8, 4.8, 3.8, 3.8, 7.1, 7.1, 5.6, 5.6, 7.6, 7.6, 6.6, 6.6, 9.9, 9.9, 5.6, 5.6, 7.6, 7.6, 6.6, 6.6, 9.9, 9.9]),
    (Nearest, HalfPixel, RoundPreferFloor, -0.75, false, None, &[1, 1, 5, 7], &[0.0, 0.0, 2.0, 2.0, 1.0, 4.3, 4.3, 0.0, 0.0, 2.0, 2.0, 1.0, 4.3, 4.3, 2.8, 2.8, 4.8, 4.8, 3.8, 7.1, 7.1, 5.6, 5.6, 7.6, 7.6, 6.6, 9.9, 9.9, 5.6, 5.6, 7.6, 7.6, 6.6, 9.9, 9.9]),
    (Nearest, AlignCorners, RoundPreferCeil, -0.75, false, None, &[1, 1, 2, 3], &[0.0, 1.0, 4.3, 5.6, 6.6, 9.9]),
    (Nearest, PytorchHalfPixel, Ceil, -0.75, false, None, &[1, 1, 1, 6], &[0.0, 2.0, 1.0, 1.0, 4.3, 4.3]),
    (Linear, HalfPixel, RoundPreferFloor, -0.75, false, None, &[1, 1, 5, 7], &[0.0, 0.714286, 1.85714, 1.5, 1.23571, 3.12143, 4.3, 1.12, 1.83429, 2.97714, 2.62, 2.35571, 4.24143, 5.42, 2.8, 3.51429, 4.65714, 4.3, 4.03571, 5.92143, 7.1, 4.48, 5.19429, 6.33714, 5.98, 5.71571, 7.60143, 8.78, 5.6, 6.31429, 7.45714, 7.1, 6.83571, 8.72143, 9.9]),
    (Linear, AlignCorners, RoundPreferFloor, -0.75, false, None, &[1, 1, 4, 3], &[0.0, 1.5, 4.3, 1.86667, 3.36667, 6.16667, 3.73333, 5.23333, 8.03333, 5.6, 7.1, 9.9]),
    (Linear, Asymmetric, RoundPreferFloor, -0.75, false, Some(&[1.0, 1.0, 0.6, 2.5]), &[1, 1, 1, 10], &[0.0, 0.8, 1.6, 1.8, 1.4, 1.0, 2.32, 3.64, 4.3, 4.3]),
    (Linear, PytorchHalfPixel, RoundPreferFloor, -0.75, false, None, &[1, 1, 1, 6], &[0.0, 1.0, 1.83333, 1.16667, 2.65, 4.3]),
    (Linear, HalfPixelSymmetric, RoundPreferFloor, -0.75, false, Some(&[1.0, 1.0, 1.7, 2.3]), &[1, 1, 5, 9], &[0.0, 0.391304, 1.26087, 1.93478, 1.5, 1.06522, 2.21957, 3.65435, 4.3, 1.15294, 1.54425, 2.41381, 3.08772, 2.65294, 2.21816, 3.37251, 4.80729, 5.45294, 2.8, 3.1913, 4.06087, 4.73478, 4.3, 3.86522, 5.01957, 6.45435, 7.1, 4.44706, 4.83836, 5.70793, 6.38184, 5.94706, 5.51228, 6.66662, 8.10141, 8.74706, 5.6, 5.9913, 6.86087, 7.53478, 7.1, 6.66522, 7.81957, 9.25435, 9.9]),
    (Cubic, HalfPixel, RoundPreferFloor, -0.75, false, None, &[1, 1, 5, 7], &[-0.467233, 0.474185, 1.66296, 1.10932, 0.87382, 2.84525, 4.35861, 0.686367, 1.62778, 2.81656, 2.26292, 2.02742, 3.99885, 5.51221, 2.60157, 3.54298, 4.73176, 4.17812, 3.94262, 5.91405, 7.42741, 4.51677, 5.45818, 6.64696, 6.09332, 5.85782, 7.82925, 9.34261, 5.67037, 6.61178, 7.80056, 7.24692, 7.01142, 8.98285, 10.4962]),
    (Cubic, AlignCorners, RoundPreferFloor, -0.5, false, None, &[1, 1, 4, 6], &[0.0, 1.32, 1.9232, 0.9728, 2.1688, 4.3, 1.76296, 3.08296, 3.68616, 2.73576, 3.93176, 6.06296, 3.83704, 5.15704, 5.76024, 4.80984, 6.00584, 8.13704, 5.6, 6.92, 7.5232, 6.5728, 7.7688, 9.9]),
    (Cubic, HalfPixel, RoundPreferFloor, -0.5, true, Some(&[1.0, 1.0, 0.8, 1.6]), &[1, 1, 2, 6], &[0.0622395, 1.04609, 2.21817, 1.30179, 2.11102, 4.38597, 3.89762, 4.88147, 6.05356, 5.13718, 5.9464, 8.22135]),
    (Cubic, Asymmetric, RoundPreferFloor, -0.75, true, None, &[1, 1, 6, 5], &[0.0, 1.70312, 1.1756, 2.3153, 4.68447, 1.04, 2.74313, 2.2156, 3.3553, 5.72447, 2.8, 4.50313, 3.9756, 5.1153, 7.48447, 4.56, 6.26312, 5.7356, 6.8753, 9.24447, 5.6, 7.30312, 6.7756, 7.9153, 10.2845, 6.125, 7.82812, 7.3006, 8.4403, 10.8095]),
    ];

    #[test]
    fn resize_matches_the_onnx_reference() {
        let x = Tensor::from_f32s(vec![1, 1, 3, 4], vec![0.0, 2.0, 1.0, 4.3, 2.8, 4.8, 3.8, 7.1, 5.6, 7.6, 6.6, 9.9]);
        for &(mode, coord, nearest, a, exclude, scales, shape, want) in CASES {
            let scales: Vec<SymScale> = match scales {
                Some(s) => s.iter().map(|&f| SymScale::Factor(f)).collect(),
                None => shape.iter().zip(&x.shape).map(|(&o, &i)| SymScale::Ratio { out: SymDim::from(o), input: SymDim::from(i) }).collect(),
            };
            let op = Op::Resize { mode, coord, nearest, cubic_coeff_a: a, exclude_outside: exclude, scales };
            let got = run_one(op, &[&x], DType::F32, shape).unwrap();
            assert_close(&f32s(&got), want, 2e-5, 1e-5);
        }
    }
}
