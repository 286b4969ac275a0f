//! N-D convolution (groups, strides, dilations, pads) as im2col + GEMM; groups and batch images
//! run in parallel, and each GEMM splits its rows across threads when large.

use rayon::prelude::*;
use quilt_rewrites::Tensor;

use super::data::{load_real, strides as row_strides, with_real, Real};
use super::matmul::{gemm_into, Mat};
use super::StepCtx;
#[allow(unused_imports)]
use num_traits::{Float as _, One as _, Zero as _};

/// The geometry of one convolution, checked against the input and weight shapes.
struct Geometry {
    batch: usize,
    channels: usize,
    out_channels: usize,
    group: usize,
    in_sp: Vec<usize>,
    k_sp: Vec<usize>,
    out_sp: Vec<usize>,
    strides: Vec<usize>,
    pads_begin: Vec<usize>,
    dilations: Vec<usize>,
}

impl Geometry {
    fn new(x: &[usize], w: &[usize], strides: &[usize], pads: &[usize], dilations: &[usize], group: usize) -> Result<Geometry, String> {
        if x.len() < 3 || w.len() != x.len() {
            return Err(format!("X must be N×C×spatial… and W M×C/group×kernel… of the same rank, got {x:?} and {w:?}"));
        }
        let sr = x.len() - 2;
        let or_ones = |v: &[usize], what: &str| -> Result<Vec<usize>, String> {
            match v.len() {
                0 => Ok(vec![1; sr]),
                l if l == sr && v.iter().all(|&s| s >= 1) => Ok(v.to_vec()),
                _ => Err(format!("{what} {v:?} must have {sr} entries >= 1")),
            }
        };
        let strides = or_ones(strides, "strides")?;
        let dilations = or_ones(dilations, "dilations")?;
        let pads = match pads.len() {
            0 => vec![0; 2 * sr],
            l if l == 2 * sr => pads.to_vec(),
            _ => return Err(format!("pads {pads:?} must have {} entries", 2 * sr)),
        };
        let (channels, out_channels) = (x[1], w[0]);
        if group == 0 || channels % group != 0 || out_channels % group != 0 || w[1] * group != channels {
            return Err(format!("group {group} does not fit X {x:?} and W {w:?} (W's axis 1 must be C/group)"));
        }
        let mut out_sp = Vec::with_capacity(sr);
        for d in 0..sr {
            let span = dilations[d] * (w[2 + d].max(1) - 1) + 1;
            let padded = x[2 + d] + pads[d] + pads[sr + d];
            if w[2 + d] == 0 || padded < span {
                return Err(format!(
                    "spatial axis {d}: kernel extent {span} exceeds the padded input size {padded} (X {x:?}, W {w:?})"
                ));
            }
            out_sp.push((padded - span) / strides[d] + 1);
        }
        Ok(Geometry {
            batch: x[0],
            channels,
            out_channels,
            group,
            in_sp: x[2..].to_vec(),
            k_sp: w[2..].to_vec(),
            out_sp,
            strides,
            pads_begin: pads[..sr].to_vec(),
            dilations,
        })
    }

    /// 1×1 kernel, stride 1, no padding: the input image already is the column matrix.
    fn is_pointwise(&self) -> bool {
        self.k_sp.iter().all(|&k| k == 1) && self.strides.iter().all(|&s| s == 1) && self.pads_begin.iter().all(|&p| p == 0) && self.in_sp == self.out_sp
    }

    /// Per spatial axis, for each (kernel tap, output position): the input coordinate, or
    /// `usize::MAX` where it falls into the padding.
    fn tap_tables(&self) -> Vec<Vec<usize>> {
        (0..self.in_sp.len())
            .map(|d| {
                let (k, o) = (self.k_sp[d], self.out_sp[d]);
                let mut t = vec![usize::MAX; k * o];
                for kd in 0..k {
                    for od in 0..o {
                        let i = (od * self.strides[d] + kd * self.dilations[d]) as isize - self.pads_begin[d] as isize;
                        if i >= 0 && (i as usize) < self.in_sp[d] {
                            t[kd * o + od] = i as usize;
                        }
                    }
                }
                t
            })
            .collect()
    }
}

/// Fills `col` (rows = channel × kernel tap, columns = output positions) from one group's
/// channels `img` (channels × input positions).
fn im2col<F: Real>(g: &Geometry, tables: &[Vec<usize>], img: &[F], col: &mut [F]) {
    let sr = g.in_sp.len();
    let k_prod: usize = g.k_sp.iter().product();
    let in_plane: usize = g.in_sp.iter().product();
    let in_strides = row_strides(&g.in_sp);
    let p: usize = g.out_sp.iter().product();
    let last = sr - 1;
    let (o_last, k_last) = (g.out_sp[last], g.k_sp[last]);
    let outer_dims = &g.out_sp[..last];
    col.par_chunks_mut(p).enumerate().for_each(|(row, dst)| {
        let (c, mut kflat) = (row / k_prod, row % k_prod);
        let mut taps = vec![0usize; sr];
        for d in (0..sr).rev() {
            taps[d] = kflat % g.k_sp[d];
            kflat /= g.k_sp[d];
        }
        let src = &img[c * in_plane..(c + 1) * in_plane];
        let last_table = &tables[last][taps[last] * o_last..(taps[last] + 1) * o_last];
        debug_assert!(taps[last] < k_last);
        let mut pos = vec![0usize; last];
        for chunk in dst.chunks_mut(o_last) {
            // Offset of this output row's outer coordinates, or None inside padding.
            let mut base = Some(0usize);
            for d in 0..last {
                let i = tables[d][taps[d] * g.out_sp[d] + pos[d]];
                base = base.and_then(|b| if i == usize::MAX { None } else { Some(b + i * in_strides[d]) });
            }
            match base {
                None => chunk.fill(F::zero()),
                Some(b) => {
                    for (v, &i) in chunk.iter_mut().zip(last_table) {
                        *v = if i == usize::MAX { F::zero() } else { src[b + i] };
                    }
                }
            }
            for d in (0..last).rev() {
                pos[d] += 1;
                if pos[d] < outer_dims[d] {
                    break;
                }
                pos[d] = 0;
            }
        }
    });
}

pub(crate) fn conv(cx: &StepCtx, strides: &[usize], pads: &[usize], dilations: &[usize], group: usize) -> Result<Tensor, String> {
    let (x, w) = (cx.input(0)?, cx.input(1)?);
    let g = Geometry::new(&x.shape, &w.shape, strides, pads, dilations, group)?;
    let bias = cx.opt_input(2);
    if let Some(b) = bias {
        if b.shape != [g.out_channels] {
            return Err(format!("B has shape {:?}, expected [{}]", b.shape, g.out_channels));
        }
    }
    let mut out_shape = vec![g.batch, g.out_channels];
    out_shape.extend(&g.out_sp);
    // The residual epilogue (`Op::Conv`'s input 3): added to the f32 result, rounded once.
    let residual = cx.opt_input(3);
    if let Some(r) = residual {
        if r.shape != out_shape || r.dtype() != x.dtype() {
            return Err(format!("residual R is {}{:?}, expected the output's {}{out_shape:?}", r.dtype(), r.shape, x.dtype()));
        }
    }
    let dtype = x.dtype();
    let data = with_real!(dtype, F => {
        let xv = load_real::<F>(x, "X")?;
        let wv = load_real::<F>(w, "W")?;
        let bv = bias.map(|b| load_real::<F>(b, "B")).transpose()?;
        let rv = residual.map(|r| load_real::<F>(r, "R")).transpose()?;
        let (cg, mg) = (g.channels / g.group, g.out_channels / g.group);
        let k = cg * g.k_sp.iter().product::<usize>();
        let p: usize = g.out_sp.iter().product();
        let in_plane: usize = g.in_sp.iter().product();
        let pointwise = g.is_pointwise();
        let tables = if pointwise { Vec::new() } else { g.tap_tables() };
        let mut out = vec![F::zero(); g.batch * g.out_channels * p];
        if p > 0 && mg > 0 {
            // One unit = one image × one group: a contiguous mg×p block of the output.
            out.par_chunks_mut(mg * p).enumerate().try_for_each(|(unit, dst)| {
                let (n, gi) = (unit / g.group, unit % g.group);
                let img_start = (n * g.channels + gi * cg) * in_plane;
                let img = &xv[img_start..img_start + cg * in_plane];
                let wm = Mat { data: &wv[gi * mg * k..(gi + 1) * mg * k], rs: k, cs: 1 };
                if pointwise {
                    gemm_into(mg, k, p, F::one(), wm, Mat { data: img, rs: p, cs: 1 }, F::zero(), dst)?;
                } else {
                    let mut col = vec![F::zero(); k * p];
                    im2col(&g, &tables, img, &mut col);
                    gemm_into(mg, k, p, F::one(), wm, Mat { data: &col, rs: p, cs: 1 }, F::zero(), dst)?;
                }
                if let Some(bv) = &bv {
                    for (m, plane) in dst.chunks_mut(p).enumerate() {
                        let b = bv[gi * mg + m];
                        plane.iter_mut().for_each(|v| *v += b);
                    }
                }
                Ok::<(), String>(())
            })?;
        }
        if let Some(rv) = &rv {
            out.par_iter_mut().zip(rv.par_iter()).for_each(|(v, &r)| *v += r);
        }
        Ok(F::store(dtype, out))
    })?;
    Ok(Tensor { shape: out_shape, data })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_close, f32s, run_one, Rng};
    use quilt_rewrites::{DType, Op, Tensor};

    /// Direct 2-D convolution by its definition (no im2col).
    #[allow(clippy::too_many_arguments)]
    fn direct2d(x: &[f32], xs: [usize; 4], w: &[f32], ws: [usize; 4], b: &[f32], s: [usize; 2], p: [usize; 4], d: [usize; 2], g: usize) -> (Vec<f32>, Vec<usize>) {
        let [n, c, h, wd] = xs;
        let [m, cg, kh, kw] = ws;
        let oh = (h + p[0] + p[2] - d[0] * (kh - 1) - 1) / s[0] + 1;
        let ow = (wd + p[1] + p[3] - d[1] * (kw - 1) - 1) / s[1] + 1;
        let mg = m / g;
        let mut out = vec![0.0f32; n * m * oh * ow];
        for ni in 0..n {
            for mi in 0..m {
                let gi = mi / mg;
                for y in 0..oh {
                    for xo in 0..ow {
                        let mut acc = b.get(mi).copied().unwrap_or(0.0) as f64;
                        for ci in 0..cg {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (y * s[0] + ky * d[0]) as isize - p[0] as isize;
                                    let ix = (xo * s[1] + kx * d[1]) as isize - p[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                        continue;
                                    }
                                    let xv = x[((ni * c + gi * cg + ci) * h + iy as usize) * wd + ix as usize];
                                    let wv = w[((mi * cg + ci) * kh + ky) * kw + kx];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        out[((ni * m + mi) * oh + y) * ow + xo] = acc as f32;
                    }
                }
            }
        }
        (out, vec![n, m, oh, ow])
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn conv2d_matches_direct_convolution() {
        let mut rng = Rng::new(21);
        // (x shape, w shape, strides, pads, dilations, group)
        let cases: [([usize; 4], [usize; 4], [usize; 2], [usize; 4], [usize; 2], usize); 5] = [
            ([1, 3, 7, 6], [4, 3, 3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1),
            ([2, 4, 9, 8], [6, 2, 3, 2], [2, 1], [0, 1, 2, 0], [1, 2], 2),
            ([1, 4, 5, 5], [4, 1, 3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 4),
            ([2, 8, 4, 4], [5, 8, 1, 1], [1, 1], [0, 0, 0, 0], [1, 1], 1),
            ([1, 2, 6, 6], [3, 2, 2, 2], [3, 3], [0, 0, 1, 1], [2, 2], 1),
        ];
        for (xs, ws, s, p, d, g) in cases {
            let x = rng.tensor(&xs);
            let w = rng.tensor(&ws);
            let b = rng.tensor(&[ws[0]]);
            let (want, shape) = direct2d(&f32s(&x), xs, &f32s(&w), ws, &f32s(&b), s, p, d, g);
            let op = Op::Conv { strides: s.to_vec(), pads: p.to_vec(), dilations: d.to_vec(), group: g, channels_last: false };
            let got = run_one(op, &[&x, &w, &b], DType::F32, &shape).unwrap();
            assert_close(&f32s(&got), &want, 1e-5, 1e-5);
        }
    }

    #[test]
    fn conv1d_and_bad_geometry() {
        let x = Tensor::from_f32s(vec![1, 1, 5], vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        let w = Tensor::from_f32s(vec![1, 1, 2], vec![1.0, -1.0]);
        let op = Op::Conv { strides: vec![2], pads: vec![1, 0], dilations: vec![1], group: 1, channels_last: false };
        let got = run_one(op, &[&x, &w], DType::F32, &[1, 1, 3]).unwrap();
        // Padded input [0,1,2,3,4,5] at positions 0, 2, 4.
        assert_eq!(f32s(&got), vec![-1.0, -1.0, -1.0]);
        let w3 = Tensor::from_f32s(vec![1, 2, 2], vec![0.0; 4]);
        let op = Op::Conv { strides: vec![1], pads: vec![0, 0], dilations: vec![1], group: 1, channels_last: false };
        let e = run_one(op, &[&x, &w3], DType::F32, &[1, 1, 4]).unwrap_err().to_string();
        assert!(e.contains("group"), "{e}");
    }

    #[test]
    fn sd_sized_conv_is_fast() {
        let mut rng = Rng::new(22);
        let x = rng.tensor(&[2, 64, 32, 32]);
        let w = rng.tensor(&[64, 64, 3, 3]);
        let op = Op::Conv { strides: vec![1, 1], pads: vec![1, 1, 1, 1], dilations: vec![1, 1], group: 1, channels_last: false };
        let start = std::time::Instant::now();
        let got = run_one(op, &[&x, &w], DType::F32, &[2, 64, 32, 32]).unwrap();
        let took = start.elapsed();
        assert!(took.as_secs_f64() < 1.0, "3x3 conv 64->64 on 2x32x32 took {took:?}");
        // Spot-check one output against the direct sum.
        let (xv, wv) = (f32s(&x), f32s(&w));
        let (m, y, xo) = (5usize, 7usize, 0usize);
        let mut acc = 0.0f64;
        for c in 0..64 {
            for ky in 0..3 {
                for kx in 0..3 {
                    let (iy, ix) = (y + ky, xo + kx);
                    if iy < 1 || ix < 1 || iy > 32 || ix > 32 {
                        continue;
                    }
                    acc += xv[(c * 32 + iy - 1) * 32 + ix - 1] as f64 * wv[((m * 64 + c) * 3 + ky) * 3 + kx] as f64;
                }
            }
        }
        let g = f32s(&got)[(m * 32 + y) * 32 + xo];
        assert!((g as f64 - acc).abs() < 1e-4, "{g} vs {acc}");
    }
}
