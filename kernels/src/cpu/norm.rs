//! InstanceNorm, GroupNorm and LayerNorm: per-row mean and variance (two passes, in the compute
//! type), then `(x - mean) / sqrt(var + eps)` with a per-element affine.

use rayon::prelude::*;
use quilt_rewrites::Tensor;

use super::broadcast::broadcast_to;
use super::data::{load_real, with_real, Real};
use super::StepCtx;
#[allow(unused_imports)]
use num_traits::{Float as _, One as _, Zero as _};

/// Normalises each `row_len`-long row of `x`; `affine(row, i)` gives (scale, bias) for element i.
fn normalize_rows<F: Real>(x: &[F], row_len: usize, eps: f32, affine: impl Fn(usize, usize) -> (F, F) + Sync) -> Vec<F> {
    let mut out = vec![F::zero(); x.len()];
    if row_len == 0 {
        return out;
    }
    let n = F::of(row_len as f64);
    let eps = F::of(eps as f64);
    out.par_chunks_mut(row_len).zip(x.par_chunks(row_len)).enumerate().for_each(|(r, (dst, src))| {
        let mean = src.iter().copied().sum::<F>() / n;
        let var = src.iter().map(|&v| (v - mean) * (v - mean)).sum::<F>() / n;
        let inv = F::one() / (var + eps).sqrt();
        for (i, (d, &v)) in dst.iter_mut().zip(src).enumerate() {
            let (s, b) = affine(r, i);
            *d = (v - mean) * inv * s + b;
        }
    });
    out
}

fn expect_shape(t: &Tensor, what: &str, shape: &[usize]) -> Result<(), String> {
    if t.shape != shape {
        return Err(format!("{what} has shape {:?}, expected {shape:?}", t.shape));
    }
    Ok(())
}

fn check_nc(x: &Tensor) -> Result<(usize, usize, usize), String> {
    if x.shape.len() < 2 {
        return Err(format!("X must be N×C×…, got {:?}", x.shape));
    }
    Ok((x.shape[0], x.shape[1], x.shape[2..].iter().product()))
}

pub(crate) fn instance_norm(cx: &StepCtx, epsilon: f32) -> Result<Tensor, String> {
    let (x, scale, bias) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let (_, c, spatial) = check_nc(x)?;
    expect_shape(scale, "scale", &[c])?;
    expect_shape(bias, "B", &[c])?;
    let dtype = x.dtype();
    let data = with_real!(dtype, F => {
        let xv = load_real::<F>(x, "X")?;
        let s = load_real::<F>(scale, "scale")?;
        let b = load_real::<F>(bias, "B")?;
        Ok(F::store(dtype, normalize_rows(&xv, spatial, epsilon, |r, _| (s[r % c], b[r % c]))))
    })?;
    Ok(Tensor { shape: x.shape.clone(), data })
}

pub(crate) fn group_norm(cx: &StepCtx, epsilon: f32, num_groups: usize, per_channel_affine: bool) -> Result<Tensor, String> {
    let (x, scale, bias) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let (_, c, spatial) = check_nc(x)?;
    if num_groups == 0 || c % num_groups != 0 {
        return Err(format!("{c} channels cannot be split into {num_groups} groups"));
    }
    let affine_len = if per_channel_affine { c } else { num_groups };
    expect_shape(scale, "scale", &[affine_len])?;
    expect_shape(bias, "bias", &[affine_len])?;
    let per_group = c / num_groups;
    let dtype = x.dtype();
    let data = with_real!(dtype, F => {
        let xv = load_real::<F>(x, "X")?;
        let s = load_real::<F>(scale, "scale")?;
        let b = load_real::<F>(bias, "bias")?;
        let row_len = per_group * spatial;
        let y = normalize_rows(&xv, row_len, epsilon, |r, i| {
            let g = r % num_groups;
            let k = if per_channel_affine { g * per_group + i / spatial.max(1) } else { g };
            (s[k], b[k])
        });
        Ok(F::store(dtype, y))
    })?;
    Ok(Tensor { shape: x.shape.clone(), data })
}

pub(crate) fn layer_norm(cx: &StepCtx, axis: usize, epsilon: f32) -> Result<Tensor, String> {
    let (x, scale) = (cx.input(0)?, cx.input(1)?);
    if axis > x.shape.len() {
        return Err(format!("axis {axis} is out of range for rank {}", x.shape.len()));
    }
    let norm_shape = &x.shape[axis..];
    let row_len: usize = norm_shape.iter().product();
    let dtype = x.dtype();
    let data = with_real!(dtype, F => {
        let xv = load_real::<F>(x, "X")?;
        // Scale and bias broadcast (trailing-aligned) to the normalised shape.
        let expand = |t: &Tensor, what: &str| -> Result<Vec<F>, String> {
            let d = broadcast_to(&t.data, &t.shape, norm_shape).map_err(|e| format!("{what}: {e}"))?;
            Ok(F::load(&d).ok_or_else(|| format!("{what} has dtype {}", t.dtype()))?.into_owned())
        };
        let s = expand(scale, "Scale")?;
        let b = match cx.opt_input(2) {
            Some(t) => expand(t, "B")?,
            None => vec![F::zero(); row_len],
        };
        Ok(F::store(dtype, normalize_rows(&xv, row_len, epsilon, |_, i| (s[i], b[i]))))
    })?;
    Ok(Tensor { shape: x.shape.clone(), data })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_close, f32s, run_one, Rng};
    use quilt_rewrites::{DType, Op};

    /// Normalises `x` in groups of `len` with f64 statistics.
    fn naive(x: &[f32], len: usize, eps: f64) -> Vec<f64> {
        x.chunks(len)
            .flat_map(|r| {
                let mean = r.iter().map(|&v| v as f64).sum::<f64>() / len as f64;
                let var = r.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / len as f64;
                r.iter().map(move |&v| (v as f64 - mean) / (var + eps).sqrt()).collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn group_norm_both_affine_layouts() {
        let mut rng = Rng::new(31);
        let x = rng.tensor(&[2, 6, 3, 2]);
        let z = naive(&f32s(&x), 12, 1e-5); // 3 groups of 2 channels × 6 positions
        let sc = rng.tensor(&[6]);
        let bi = rng.tensor(&[6]);
        let op = Op::GroupNorm { epsilon: 1e-5, num_groups: 3, per_channel_affine: true, channels_last: false };
        let got = run_one(op, &[&x, &sc, &bi], DType::F32, &[2, 6, 3, 2]).unwrap();
        let (s, b) = (f32s(&sc), f32s(&bi));
        let want: Vec<f32> = z.iter().enumerate().map(|(i, &v)| (v * s[(i / 6) % 6] as f64 + b[(i / 6) % 6] as f64) as f32).collect();
        assert_close(&f32s(&got), &want, 1e-5, 1e-4);
        let sg = rng.tensor(&[3]);
        let bg = rng.tensor(&[3]);
        let op = Op::GroupNorm { epsilon: 1e-5, num_groups: 3, per_channel_affine: false, channels_last: false };
        let got = run_one(op, &[&x, &sg, &bg], DType::F32, &[2, 6, 3, 2]).unwrap();
        let (s, b) = (f32s(&sg), f32s(&bg));
        let want: Vec<f32> = z.iter().enumerate().map(|(i, &v)| (v * s[(i / 12) % 3] as f64 + b[(i / 12) % 3] as f64) as f32).collect();
        assert_close(&f32s(&got), &want, 1e-5, 1e-4);
    }

    #[test]
    fn instance_and_layer_norm() {
        let mut rng = Rng::new(32);
        let x = rng.tensor(&[2, 3, 5]);
        let sc = rng.tensor(&[3]);
        let bi = rng.tensor(&[3]);
        let got = run_one(Op::InstanceNorm { epsilon: 1e-3 }, &[&x, &sc, &bi], DType::F32, &[2, 3, 5]).unwrap();
        let z = naive(&f32s(&x), 5, 1e-3);
        let (s, b) = (f32s(&sc), f32s(&bi));
        let want: Vec<f32> = z.iter().enumerate().map(|(i, &v)| (v * s[(i / 5) % 3] as f64 + b[(i / 5) % 3] as f64) as f32).collect();
        assert_close(&f32s(&got), &want, 1e-5, 1e-4);

        let ls = rng.tensor(&[3, 5]);
        let got = run_one(Op::LayerNorm { axis: 1, epsilon: 1e-5 }, &[&x, &ls], DType::F32, &[2, 3, 5]).unwrap();
        let z = naive(&f32s(&x), 15, 1e-5);
        let s = f32s(&ls);
        let want: Vec<f32> = z.iter().enumerate().map(|(i, &v)| (v * s[i % 15] as f64) as f32).collect();
        assert_close(&f32s(&got), &want, 1e-5, 1e-4);
    }
}
