//! Fused ops the optimizer creates (`Op::Silu`, `QuickGelu`, `GeGlu`, `Attention`): reference
//! implementations that compute in f32 (f64 for f64), as the unfused ops they replace do.

use rayon::prelude::*;
use quilt_rewrites::ir::AttentionColumns;
use quilt_rewrites::Tensor;

use super::broadcast::broadcast_shape;
use super::data::{load_real, strides, with_real, Real};
use super::StepCtx;
#[allow(unused_imports)]
use num_traits::{Float as _, One as _, Zero as _};

fn sigmoid<F: Real>(t: F) -> F {
    F::one() / (F::one() + (-t).exp())
}

/// `x * sigmoid(alpha * x)`; SiLU is `alpha = 1`.
pub(crate) fn sigmoid_gated(cx: &StepCtx, alpha: f32) -> Result<Tensor, String> {
    let x = cx.input(0)?;
    let dtype = x.dtype();
    let data = with_real!(dtype, F => {
        let v = load_real::<F>(x, "x")?;
        let a = F::of(alpha as f64);
        let r: Vec<F> = v.iter().map(|&t| t * sigmoid(a * t)).collect();
        Ok(F::store(dtype, r))
    })?;
    Ok(Tensor { shape: x.shape.clone(), data })
}

fn gelu_of<F: Real>(t: F, tanh: bool) -> F {
    let half = F::of(0.5);
    if tanh {
        let k = F::of((2.0 / std::f64::consts::PI).sqrt());
        half * t * (F::one() + (k * (t + F::of(0.044715) * t * t * t)).tanh())
    } else {
        half * t * (F::one() + (t * F::of(std::f64::consts::FRAC_1_SQRT_2)).erf_of())
    }
}

/// `x[..., :F] * gelu(x[..., F:])` over the last axis of length `2F`.
pub(crate) fn geglu(cx: &StepCtx, tanh: bool) -> Result<Tensor, String> {
    let x = cx.input(0)?;
    let Some(&last) = x.shape.last() else { return Err("GeGlu needs an input of rank ≥ 1".into()) };
    if last % 2 != 0 {
        return Err(format!("GeGlu needs an even last axis, got shape {:?}", x.shape));
    }
    let half = last / 2;
    let mut shape = x.shape.clone();
    *shape.last_mut().unwrap() = half;
    let dtype = x.dtype();
    let data = with_real!(dtype, F => {
        let v = load_real::<F>(x, "x")?;
        let mut out = Vec::with_capacity(v.len() / 2);
        for row in v.chunks(last.max(1)) {
            let (a, gate) = row.split_at(half);
            out.extend(a.iter().zip(gate).map(|(&a, &g)| a * gelu_of(g, tanh)));
        }
        Ok(F::store(dtype, out))
    })?;
    Ok(Tensor { shape, data })
}

/// Where one attention problem (one batch entry and head) lives in q, k, v, mask and the output.
struct Problem {
    n: usize,
    m: usize,
    d: usize,
    dv: usize,
    /// Row strides (elements between consecutive query/key rows) of q, k, v and the output.
    q_row: usize,
    k_row: usize,
    v_row: usize,
    o_row: usize,
    /// Column offsets of q, k and v in their inputs (`AttentionColumns`; 0 without).
    q_col: usize,
    k_col: usize,
    v_col: usize,
}

/// Scaled dot-product attention, one query row at a time (never the whole N×M score matrix).
pub(crate) fn attention(cx: &StepCtx, scale: f32, heads: Option<usize>, columns: Option<AttentionColumns>) -> Result<Tensor, String> {
    let (q, k, v) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let mask = cx.opt_input(3);
    let rank = q.shape.len();
    if rank < 2 || k.shape.len() != rank || v.shape.len() != rank {
        return Err(format!("q, k, v need one rank ≥ 2, got {:?}, {:?}, {:?}", q.shape, k.shape, v.shape));
    }
    let lead = &q.shape[..rank - 2];
    if k.shape[..rank - 2] != *lead || v.shape[..rank - 2] != *lead {
        return Err(format!("q, k, v leading dims differ: {:?}, {:?}, {:?}", q.shape, k.shape, v.shape));
    }
    let (n, m) = (q.shape[rank - 2], k.shape[rank - 2]);
    if v.shape[rank - 2] != m {
        return Err(format!("k has {m} rows but v has {}", v.shape[rank - 2]));
    }
    // (problems = batch entries × heads, per-problem geometry, element offsets of each problem)
    let (problem, batches, h, out_shape) = match heads {
        None => {
            let (d, dv) = (q.shape[rank - 1], v.shape[rank - 1]);
            if k.shape[rank - 1] != d {
                return Err(format!("q has depth {d} but k has {}", k.shape[rank - 1]));
            }
            let b: usize = lead.iter().product();
            let mut out_shape = q.shape.clone();
            out_shape[rank - 1] = dv;
            if columns.is_some() {
                return Err("column ranges of q, k, v need packed heads".into());
            }
            (Problem { n, m, d, dv, q_row: d, k_row: d, v_row: dv, o_row: dv, q_col: 0, k_col: 0, v_col: 0 }, b, 1, out_shape)
        }
        Some(h) => {
            if rank != 3 || h == 0 {
                return Err(format!("packed-head attention needs rank-3 q, k, v and heads ≥ 1, got rank {rank}, {h} heads"));
            }
            let rows = [q.shape[2], k.shape[2], v.shape[2]];
            let (offset, [qc, kc, vc]) = AttentionColumns::ranges(columns, rows)?;
            if qc % h != 0 || vc % h != 0 || kc != qc {
                return Err(format!("{h} heads do not divide q/k/v widths {qc}/{kc}/{vc}"));
            }
            let out_shape = vec![q.shape[0], n, vc];
            let [q_row, k_row, v_row] = rows;
            let [q_col, k_col, v_col] = offset;
            (Problem { n, m, d: qc / h, dv: vc / h, q_row, k_row, v_row, o_row: vc, q_col, k_col, v_col }, q.shape[0], h, out_shape)
        }
    };
    // The score shape the mask broadcasts to: [*, N, M] or [B, H, N, M].
    let score_shape: Vec<usize> = match heads {
        None => lead.iter().copied().chain([n, m]).collect(),
        Some(_) => vec![batches, h, n, m],
    };
    let mask_strides = match mask {
        None => None,
        Some(t) => {
            let full = broadcast_shape(&[&t.shape, &score_shape])?;
            if full != score_shape {
                return Err(format!("mask {:?} does not broadcast to the scores {:?}", t.shape, score_shape));
            }
            // Strides of the mask aligned to the score axes (0 where the mask broadcasts).
            let own = strides(&t.shape);
            let pad = score_shape.len() - t.shape.len();
            let s: Vec<usize> = (0..score_shape.len())
                .map(|a| if a < pad || t.shape[a - pad] == 1 { 0 } else { own[a - pad] })
                .collect();
            Some(s)
        }
    };
    let dtype = q.dtype();
    if k.dtype() != dtype || v.dtype() != dtype || mask.is_some_and(|t| t.dtype() != dtype) {
        return Err("q, k, v (and mask) need one dtype".into());
    }
    let p = &problem;
    let data = with_real!(dtype, F => {
        let (qv, kv, vv) = (load_real::<F>(q, "q")?, load_real::<F>(k, "k")?, load_real::<F>(v, "v")?);
        let mv = match mask { Some(t) => Some(load_real::<F>(t, "mask")?), None => None };
        let scale = F::of(scale as f64);
        let out_len: usize = out_shape.iter().product();
        let mut out = vec![F::zero(); out_len];
        // One task per (batch entry, query row): rows write disjoint output slices.
        let rows: Vec<(usize, usize)> = (0..batches).flat_map(|b| (0..p.n).map(move |i| (b, i))).collect();
        let results: Vec<((usize, usize), Vec<F>)> = rows
            .par_iter()
            .map(|&(b, i)| {
                let mut scores = vec![F::zero(); p.m];
                let mut acc = vec![F::zero(); h * p.dv];
                for head in 0..h {
                    // Element offsets of this problem's first row in q, k, v (packed heads sit side by side).
                    let (q0, k0, v0) = match heads {
                        None => (b * p.n * p.q_row, b * p.m * p.k_row, b * p.m * p.v_row),
                        Some(_) => (
                            b * p.n * p.q_row + p.q_col + head * p.d,
                            b * p.m * p.k_row + p.k_col + head * p.d,
                            b * p.m * p.v_row + p.v_col + head * p.dv,
                        ),
                    };
                    let qrow = &qv[q0 + i * p.q_row..q0 + i * p.q_row + p.d];
                    let mut max = F::neg_infinity();
                    for (j, s) in scores.iter_mut().enumerate() {
                        let krow = &kv[k0 + j * p.k_row..k0 + j * p.k_row + p.d];
                        let mut dot = F::zero();
                        for (&a, &c) in qrow.iter().zip(krow) {
                            dot += a * c;
                        }
                        let mut val = dot * scale;
                        if let (Some(mv), Some(ms)) = (&mv, &mask_strides) {
                            // Score coordinates: lead dims of b (or [b, head]), then i, j.
                            let r = ms.len();
                            let mut off = i * ms[r - 2] + j * ms[r - 1];
                            match heads {
                                None => {
                                    let mut rem = b;
                                    for a in (0..r - 2).rev() {
                                        let extent = score_shape[a];
                                        off += (rem % extent) * ms[a];
                                        rem /= extent;
                                    }
                                }
                                Some(_) => off += b * ms[0] + head * ms[1],
                            }
                            val += mv[off];
                        }
                        *s = val;
                        max = max.max(val);
                    }
                    let mut sum = F::zero();
                    for s in scores.iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    let inv = F::one() / sum;
                    let o = &mut acc[head * p.dv..(head + 1) * p.dv];
                    for (j, &s) in scores.iter().enumerate() {
                        let w = s * inv;
                        let vrow = &vv[v0 + j * p.v_row..v0 + j * p.v_row + p.dv];
                        for (o, &x) in o.iter_mut().zip(vrow) {
                            *o += w * x;
                        }
                    }
                }
                ((b, i), acc)
            })
            .collect();
        for ((b, i), acc) in results {
            match heads {
                None => {
                    let o0 = b * p.n * p.o_row + i * p.o_row;
                    out[o0..o0 + p.dv].copy_from_slice(&acc);
                }
                Some(_) => {
                    let o0 = b * p.n * p.o_row + i * p.o_row;
                    out[o0..o0 + h * p.dv].copy_from_slice(&acc);
                }
            }
        }
        Ok(F::store(dtype, out))
    })?;
    Ok(Tensor { shape: out_shape, data })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_close, f32s, run_one, Rng};
    use quilt_rewrites::ir::AttentionColumns;
    use quilt_rewrites::{DType, Op, Tensor};

    /// softmax(scale·q·kᵀ + mask)·v for one [N, D] × [M, D] × [M, Dv] problem, plainly.
    #[allow(clippy::too_many_arguments)]
    fn naive(q: &[f32], k: &[f32], v: &[f32], mask: Option<&[f32]>, n: usize, m: usize, d: usize, dv: usize, scale: f32) -> Vec<f32> {
        let mut out = vec![0.0f32; n * dv];
        for i in 0..n {
            let s: Vec<f32> = (0..m)
                .map(|j| (0..d).map(|t| q[i * d + t] * k[j * d + t]).sum::<f32>() * scale + mask.map_or(0.0, |mk| mk[i * m + j]))
                .collect();
            let mx = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = s.iter().map(|x| (x - mx).exp()).collect();
            let z: f32 = e.iter().sum();
            for j in 0..m {
                for t in 0..dv {
                    out[i * dv + t] += e[j] / z * v[j * dv + t];
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_naive_per_batch_layout_with_mask() {
        let mut rng = Rng::new(3);
        let (b, n, m, d, dv) = (2, 5, 7, 4, 3);
        let q = rng.tensor(&[b, n, d]);
        let k = rng.tensor(&[b, m, d]);
        let v = rng.tensor(&[b, m, dv]);
        let mask = rng.tensor(&[1, n, m]);
        let op = Op::Attention { scale: 0.5, heads: None, columns: None };
        let out = run_one(op, &[&q, &k, &v, &mask], DType::F32, &[b, n, dv]).unwrap();
        let (qv, kv, vv, mv) = (f32s(&q), f32s(&k), f32s(&v), f32s(&mask));
        let mut want = Vec::new();
        for bi in 0..b {
            want.extend(naive(&qv[bi * n * d..][..n * d], &kv[bi * m * d..][..m * d], &vv[bi * m * dv..][..m * dv], Some(&mv), n, m, d, dv, 0.5));
        }
        assert_close(&f32s(&out), &want, 1e-5, 1e-4);
    }

    #[test]
    fn attention_packed_heads_equals_split_heads() {
        let mut rng = Rng::new(4);
        let (b, n, m, h, d, dv) = (2, 3, 6, 2, 4, 5);
        let q = rng.tensor(&[b, n, h * d]);
        let k = rng.tensor(&[b, m, h * d]);
        let v = rng.tensor(&[b, m, h * dv]);
        let op = Op::Attention { scale: 0.3, heads: Some(h), columns: None };
        let out = run_one(op, &[&q, &k, &v], DType::F32, &[b, n, h * dv]).unwrap();
        let (qv, kv, vv) = (f32s(&q), f32s(&k), f32s(&v));
        let got = f32s(&out);
        for bi in 0..b {
            for hi in 0..h {
                let pick = |x: &[f32], rows: usize, w: usize| -> Vec<f32> {
                    (0..rows).flat_map(|r| x[(bi * rows + r) * h * w + hi * w..][..w].to_vec()).collect()
                };
                let want = naive(&pick(&qv, n, d), &pick(&kv, m, d), &pick(&vv, m, dv), None, n, m, d, dv, 0.3);
                let have: Vec<f32> = (0..n).flat_map(|r| got[(bi * n + r) * h * dv + hi * dv..][..dv].to_vec()).collect();
                assert_close(&have, &want, 1e-5, 1e-4);
            }
        }
    }

    /// Columns `[a, b)` of every row of a rank-3 tensor, as its own tensor.
    fn columns_of(t: &Tensor, a: usize, b: usize) -> Tensor {
        let w = t.shape[2];
        let v: Vec<f32> = f32s(t).chunks(w).flat_map(|row| row[a..b].to_vec()).collect();
        Tensor::from_f32s(vec![t.shape[0], t.shape[1], b - a], v)
    }

    /// q, k, v read as column ranges of wider inputs (one projection's output fed to several
    /// inputs) give what the same ranges copied out give: self-attention's q|k|v from one
    /// tensor, cross-attention's k|v from one, and a range that does not fit is an error.
    #[test]
    fn attention_column_ranges_equal_separate_inputs() {
        let mut rng = Rng::new(5);
        let (b, n, m, h, d, dv) = (2, 4, 6, 2, 4, 3);
        // Self-attention: n rows, q | k | v side by side, plus 2 unused trailing columns.
        let qkv = rng.tensor(&[b, n, 2 * h * d + h * dv + 2]);
        let (q, k, v) = (columns_of(&qkv, 0, h * d), columns_of(&qkv, h * d, 2 * h * d), columns_of(&qkv, 2 * h * d, 2 * h * d + h * dv));
        let plain = Op::Attention { scale: 0.4, heads: Some(h), columns: None };
        let want = run_one(plain.clone(), &[&q, &k, &v], DType::F32, &[b, n, h * dv]).unwrap();
        let columns = AttentionColumns { offset: [0, h * d, 2 * h * d], width: [h * d, h * d, h * dv] };
        let packed = Op::Attention { scale: 0.4, heads: Some(h), columns: Some(columns) };
        let got = run_one(packed, &[&qkv, &qkv, &qkv], DType::F32, &[b, n, h * dv]).unwrap();
        assert_close(&f32s(&got), &f32s(&want), 1e-6, 1e-6);
        // Cross-attention: q alone, k | v from one tensor of m rows.
        let q = rng.tensor(&[b, n, h * d]);
        let kv = rng.tensor(&[b, m, h * d + h * dv]);
        let (k, v) = (columns_of(&kv, 0, h * d), columns_of(&kv, h * d, h * d + h * dv));
        let want = run_one(plain, &[&q, &k, &v], DType::F32, &[b, n, h * dv]).unwrap();
        let columns = AttentionColumns { offset: [0, 0, h * d], width: [h * d, h * d, h * dv] };
        let packed = Op::Attention { scale: 0.4, heads: Some(h), columns: Some(columns) };
        let got = run_one(packed, &[&q, &kv, &kv], DType::F32, &[b, n, h * dv]).unwrap();
        assert_close(&f32s(&got), &f32s(&want), 1e-6, 1e-6);
        let past = AttentionColumns { offset: [0, 0, h * d + 1], width: [h * d, h * d, h * dv] };
        let e = run_one(Op::Attention { scale: 0.4, heads: Some(h), columns: Some(past) }, &[&q, &kv, &kv], DType::F32, &[b, n, h * dv]).unwrap_err();
        assert!(e.to_string().contains("v is columns 9..15 of an input 14 wide"), "{e}");
    }

    #[test]
    fn activations_match_their_formulas() {
        let mut rng = Rng::new(5);
        let x = rng.tensor(&[3, 8]);
        let xv = f32s(&x);
        let sig = |t: f32| 1.0 / (1.0 + (-t).exp());
        let out = run_one(Op::Silu, &[&x], DType::F32, &[3, 8]).unwrap();
        assert_close(&f32s(&out), &xv.iter().map(|&t| t * sig(t)).collect::<Vec<_>>(), 1e-6, 1e-5);
        let out = run_one(Op::QuickGelu { alpha: 1.702 }, &[&x], DType::F32, &[3, 8]).unwrap();
        assert_close(&f32s(&out), &xv.iter().map(|&t| t * sig(1.702 * t)).collect::<Vec<_>>(), 1e-6, 1e-5);
        let out = run_one(Op::GeGlu { tanh: false }, &[&x], DType::F32, &[3, 4]).unwrap();
        let gelu = |t: f32| 0.5 * t * (1.0 + libm::erff(t / std::f32::consts::SQRT_2));
        let want: Vec<f32> = (0..3).flat_map(|r| (0..4).map(move |c| (r, c))).map(|(r, c)| xv[r * 8 + c] * gelu(xv[r * 8 + 4 + c])).collect();
        assert_close(&f32s(&out), &want, 1e-6, 1e-5);
        let odd = Tensor::from_f32s(vec![3], vec![1.0, 2.0, 3.0]);
        assert!(run_one(Op::GeGlu { tanh: false }, &[&odd], DType::F32, &[1]).unwrap_err().to_string().contains("even"));
    }
}
