//! Resize (nearest, linear, cubic) following the ONNX Resize spec: per axis, each output
//! coordinate is mapped back to the input (`CoordMode`), then interpolated from its neighbours
//! with edge clamping. Nearest gathers on all axes at once; linear and cubic are separable and
//! run one pass per resized axis.

use quilt_rewrites::ir::{CoordMode, NearestMode, ResizeMode, SymScale};
use quilt_rewrites::Tensor;

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

/// The input coordinate that output position `o` maps to.
fn source_coord(coord: CoordMode, o: usize, scale: f64, in_len: usize, out_len: usize) -> f64 {
    let x = o as f64;
    match coord {
        CoordMode::HalfPixel => (x + 0.5) / scale - 0.5,
        CoordMode::PytorchHalfPixel if out_len > 1 => (x + 0.5) / scale - 0.5,
        CoordMode::PytorchHalfPixel => 0.0,
        CoordMode::AlignCorners if out_len == 1 => 0.0,
        CoordMode::AlignCorners => x * (in_len as f64 - 1.0) / (out_len as f64 - 1.0),
        CoordMode::Asymmetric => x / scale,
        CoordMode::HalfPixelSymmetric => {
            let adjustment = out_len as f64 / (scale * in_len as f64);
            let offset = in_len as f64 / 2.0 * (1.0 - adjustment);
            offset + (x + 0.5) / scale - 0.5
        }
    }
}

fn nearest_index(x: f64, mode: NearestMode, in_len: usize) -> usize {
    let base = x.floor();
    let ratio = x - base;
    let up = ratio != 0.0
        && match mode {
            NearestMode::RoundPreferFloor => ratio > 0.5,
            NearestMode::RoundPreferCeil => ratio >= 0.5,
            NearestMode::Floor => false,
            NearestMode::Ceil => true,
        };
    let i = base + if up { 1.0 } else { 0.0 };
    i.clamp(0.0, in_len as f64 - 1.0) as usize
}

/// Interpolation taps of one output position: input indices (clamped) and weights.
fn taps(p: &ResizeParams, x: f64, in_len: usize) -> Vec<(usize, f64)> {
    let base = x.floor();
    let r = x - base;
    let base = base as i64;
    let raw: Vec<(i64, f64)> = match p.mode {
        ResizeMode::Linear => vec![(base, 1.0 - r), (base + 1, r)],
        _ => {
            let a = p.cubic_coeff_a as f64;
            // Keys' cubic convolution weights for distances 1+r, r, 1-r, 2-r.
            let near = |t: f64| ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0;
            let far = |t: f64| ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a;
            vec![(base - 1, far(1.0 + r)), (base, near(r)), (base + 1, near(1.0 - r)), (base + 2, far(2.0 - r))]
        }
    };
    let inside = |i: i64| i >= 0 && i < in_len as i64;
    let mut raw = raw;
    if p.exclude_outside {
        let total: f64 = raw.iter().filter(|(i, _)| inside(*i)).map(|(_, w)| w).sum();
        for (i, w) in raw.iter_mut() {
            *w = if inside(*i) && total != 0.0 { *w / total } else { 0.0 };
        }
    }
    raw.into_iter().map(|(i, w)| (i.clamp(0, in_len as i64 - 1) as usize, w)).collect()
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
                                let c = source_coord(p.coord, o, scales[d], x.shape[d], out_shape[d]);
                                nearest_index(c, p.nearest, x.shape[d])
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
                    .map(|o| taps(p, source_coord(p.coord, o, scales[d], x.shape[d], out_shape[d]), x.shape[d]))
                    .collect();
                cur = resample_axis(&cur, &shape, d, out_shape[d], &t);
                shape[d] = out_shape[d];
            }
            Ok(F::store(dtype, cur))
        })?,
    };
    Ok(Tensor { shape: out_shape, data })
}
