//! MatMul (numpy semantics) and Gemm, on a shared strided GEMM (matrixmultiply's cache-blocked
//! kernels), split over row blocks or batches with rayon.

use rayon::prelude::*;
use quilt_rewrites::Tensor;

use super::broadcast::{broadcast_shape, broadcast_to, Rows};
use super::data::{load_real, with_real, Real};
use super::StepCtx;
#[allow(unused_imports)]
use num_traits::{Float as _, One as _, Zero as _};

/// Work (m·k·n) below which one thread is faster than splitting.
const PARALLEL_WORK: usize = 1 << 17;

/// A read-only strided matrix view: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, F> {
    pub data: &'a [F],
    pub rs: usize,
    pub cs: usize,
}

impl<F> Mat<'_, F> {
    /// Whether every element of a rows×cols view lies inside `data`.
    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// `c = alpha * a @ b + beta * c`, with c (m×n) row-major and contiguous; `beta == 0` ignores
/// c's old values. Splits rows across threads when the product is large.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_into<F: Real>(m: usize, k: usize, n: usize, alpha: F, a: Mat<F>, b: Mat<F>, beta: F, c: &mut [F]) -> Result<(), String> {
    if !a.fits(m, k) || !b.fits(k, n) || c.len() != m * n {
        return Err(format!("internal: GEMM operands do not fit a {m}x{k} by {k}x{n} product"));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        c.iter_mut().for_each(|v| *v = if beta == F::zero() { F::zero() } else { *v * beta });
        return Ok(());
    }
    let threads = rayon::current_num_threads();
    let block = |r0: usize, cc: &mut [F]| {
        let rows = cc.len() / n;
        // SAFETY: `fits` checked every element of a and b; rows r0..r0+rows of a start at
        // r0 * rs, and cc is exactly rows×n contiguous.
        unsafe {
            F::gemm_raw(
                rows,
                k,
                n,
                alpha,
                a.data.as_ptr().add(r0 * a.rs),
                a.rs as isize,
                a.cs as isize,
                b.data.as_ptr(),
                b.rs as isize,
                b.cs as isize,
                beta,
                cc.as_mut_ptr(),
                n as isize,
                1,
            )
        }
    };
    if threads > 1 && m >= 2 && m * k * n >= PARALLEL_WORK {
        let rows_per = m.div_ceil(threads);
        c.par_chunks_mut(rows_per * n).enumerate().for_each(|(i, cc)| block(i * rows_per, cc));
    } else {
        block(0, c);
    }
    Ok(())
}

pub(crate) fn matmul(cx: &StepCtx) -> Result<Tensor, String> {
    let (a, b) = (cx.input(0)?, cx.input(1)?);
    if a.shape.is_empty() || b.shape.is_empty() {
        return Err(format!("operands must have rank >= 1, got {:?} and {:?}", a.shape, b.shape));
    }
    if a.dtype() != b.dtype() {
        return Err(format!("operands have dtypes {} and {}", a.dtype(), b.dtype()));
    }
    // numpy: a 1-D A is a row vector, a 1-D B a column vector; the added axis is dropped after.
    let a2: Vec<usize> = if a.shape.len() == 1 { vec![1, a.shape[0]] } else { a.shape.clone() };
    let b2: Vec<usize> = if b.shape.len() == 1 { vec![b.shape[0], 1] } else { b.shape.clone() };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (kb, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k != kb {
        return Err(format!("inner dimensions differ: A is {:?}, B is {:?}", a.shape, b.shape));
    }
    let (batch_a, batch_b) = (&a2[..a2.len() - 2], &b2[..b2.len() - 2]);
    let batch = broadcast_shape(&[batch_a, batch_b])?;
    let mut out_shape = batch.clone();
    if a.shape.len() > 1 {
        out_shape.push(m);
    }
    if b.shape.len() > 1 {
        out_shape.push(n);
    }
    // Which A and B matrix each output batch reads.
    let mut pairs: Vec<(usize, usize)> = Vec::with_capacity(batch.iter().product());
    let rows = Rows::new(&batch, [batch_a, batch_b])?;
    let [sa, sb] = rows.inner_strides;
    rows.for_each(|_, [oa, ob]| pairs.extend((0..rows.inner_len).map(|i| (oa + i * sa, ob + i * sb))));

    let dtype = a.dtype();
    let data = with_real!(dtype, F => {
        let av = load_real::<F>(a, "A")?;
        let bv = load_real::<F>(b, "B")?;
        let mut out = vec![F::zero(); pairs.len() * m * n];
        let one_batch = |&(ia, ib): &(usize, usize), c: &mut [F]| {
            let am = Mat { data: &av[ia * m * k..(ia + 1) * m * k], rs: k, cs: 1 };
            let bm = Mat { data: &bv[ib * k * n..(ib + 1) * k * n], rs: n, cs: 1 };
            gemm_into(m, k, n, F::one(), am, bm, F::zero(), c)
        };
        if m * n > 0 {
            if pairs.len() > 1 && pairs.len() * m * k * n >= PARALLEL_WORK {
                out.par_chunks_mut(m * n).zip(&pairs).try_for_each(|(c, p)| one_batch(p, c))?;
            } else {
                out.chunks_mut(m * n).zip(&pairs).try_for_each(|(c, p)| one_batch(p, c))?;
            }
        }
        Ok(F::store(dtype, out))
    })?;
    Ok(Tensor { shape: out_shape, data })
}

pub(crate) fn gemm(cx: &StepCtx, alpha: f32, beta: f32, trans_a: bool, trans_b: bool) -> Result<Tensor, String> {
    let (a, b) = (cx.input(0)?, cx.input(1)?);
    if a.shape.len() != 2 || b.shape.len() != 2 {
        return Err(format!("A and B must be 2-D, got {:?} and {:?}", a.shape, b.shape));
    }
    let (m, k) = if trans_a { (a.shape[1], a.shape[0]) } else { (a.shape[0], a.shape[1]) };
    let (kb, n) = if trans_b { (b.shape[1], b.shape[0]) } else { (b.shape[0], b.shape[1]) };
    if k != kb {
        return Err(format!(
            "inner dimensions differ: op(A) is {m}x{k}, op(B) is {kb}x{n} (trans_a={trans_a}, trans_b={trans_b})"
        ));
    }
    let c = cx.opt_input(2);
    let dtype = a.dtype();
    let data = with_real!(dtype, F => {
        let av = load_real::<F>(a, "A")?;
        let bv = load_real::<F>(b, "B")?;
        // A stored M×K (or K×M transposed), B stored K×N (or N×K).
        let am = if trans_a { Mat { data: &av[..], rs: 1, cs: m } } else { Mat { data: &av[..], rs: k, cs: 1 } };
        let bm = if trans_b { Mat { data: &bv[..], rs: 1, cs: k } } else { Mat { data: &bv[..], rs: n, cs: 1 } };
        let (mut out, beta) = match c {
            Some(c) if beta != 0.0 => {
                let cb = broadcast_to(&c.data, &c.shape, &[m, n]).map_err(|e| format!("C: {e}"))?;
                let cv = F::load(&cb).ok_or_else(|| format!("C has dtype {}, expected {dtype}", c.dtype()))?;
                (cv.into_owned(), F::of(beta as f64))
            }
            _ => (vec![F::zero(); m * n], F::zero()),
        };
        gemm_into(m, k, n, F::of(alpha as f64), am, bm, beta, &mut out)?;
        // The residual epilogue (`Op::Gemm`'s input 3): added to the f32 result, rounded once.
        if let Some(r) = cx.opt_input(3) {
            if r.shape != [m, n] || r.dtype() != dtype {
                return Err(format!("residual R is {}{:?}, expected the output's {dtype}{:?}", r.dtype(), r.shape, [m, n]));
            }
            let rv = load_real::<F>(r, "R")?;
            out.iter_mut().zip(rv.iter()).for_each(|(v, &r)| *v += r);
        }
        Ok(F::store(dtype, out))
    })?;
    Ok(Tensor { shape: vec![m, n], data })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_close, f32s, run_one, Rng};
    use quilt_rewrites::{DType, Op, Tensor};

    /// Naive (…, m, k) @ (…, k, n) for one batch with explicit indexing.
    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum::<f64>() as f32;
            }
        }
        c
    }

    #[test]
    fn matmul_broadcasts_batches_and_promotes_vectors() {
        let mut rng = Rng::new(11);
        // [2, 1, 3, 5] @ [4, 5, 6] -> [2, 4, 3, 6]
        let a = rng.tensor(&[2, 1, 3, 5]);
        let b = rng.tensor(&[4, 5, 6]);
        let got = run_one(Op::MatMul, &[&a, &b], DType::F32, &[2, 4, 3, 6]).unwrap();
        let (av, bv) = (f32s(&a), f32s(&b));
        let mut want = Vec::new();
        for i in 0..2 {
            for j in 0..4 {
                want.extend(naive(&av[i * 15..(i + 1) * 15], &bv[j * 30..(j + 1) * 30], 3, 5, 6));
            }
        }
        assert_close(&f32s(&got), &want, 1e-5, 1e-5);
        // 1-D @ 2-D and 2-D @ 1-D.
        let v = rng.tensor(&[5]);
        let m = rng.tensor(&[5, 6]);
        let got = run_one(Op::MatMul, &[&v, &m], DType::F32, &[6]).unwrap();
        assert_close(&f32s(&got), &naive(&f32s(&v), &f32s(&m), 1, 5, 6), 1e-5, 1e-5);
        let m2 = rng.tensor(&[3, 5]);
        let got = run_one(Op::MatMul, &[&m2, &v], DType::F32, &[3]).unwrap();
        assert_close(&f32s(&got), &naive(&f32s(&m2), &f32s(&v), 3, 5, 1), 1e-5, 1e-5);
        // Large enough to take the parallel row split.
        let a = rng.tensor(&[130, 70]);
        let b = rng.tensor(&[70, 90]);
        let got = run_one(Op::MatMul, &[&a, &b], DType::F32, &[130, 90]).unwrap();
        assert_close(&f32s(&got), &naive(&f32s(&a), &f32s(&b), 130, 70, 90), 1e-4, 1e-4);
        let e = run_one(Op::MatMul, &[&a, &a], DType::F32, &[130, 70]).unwrap_err().to_string();
        assert!(e.contains("inner dimensions differ"), "{e}");
    }

    #[test]
    fn gemm_transposes_scales_and_broadcasts_c() {
        let mut rng = Rng::new(12);
        let a = rng.tensor(&[4, 3]); // transposed: op(A) is 3x4
        let b = rng.tensor(&[5, 4]); // transposed: op(B) is 4x5
        let c = rng.tensor(&[5]);
        let op = Op::Gemm { alpha: 0.5, beta: 2.0, trans_a: true, trans_b: true };
        let got = run_one(op, &[&a, &b, &c], DType::F32, &[3, 5]).unwrap();
        let (av, bv, cv) = (f32s(&a), f32s(&b), f32s(&c));
        let mut want = vec![0.0f32; 15];
        for i in 0..3 {
            for j in 0..5 {
                let dot: f32 = (0..4).map(|p| av[p * 3 + i] * bv[j * 4 + p]).sum();
                want[i * 5 + j] = 0.5 * dot + 2.0 * cv[j];
            }
        }
        assert_close(&f32s(&got), &want, 1e-5, 1e-5);
        let f64s = |t: &Tensor| Tensor::new(t.shape.clone(), quilt_rewrites::TensorData::F64(t.data.to_f64_vec()));
        let op = Op::Gemm { alpha: 0.5, beta: 2.0, trans_a: true, trans_b: true };
        let got = run_one(op, &[&f64s(&a), &f64s(&b), &f64s(&c)], DType::F64, &[3, 5]).unwrap();
        assert_close(&f32s(&got), &want, 1e-5, 1e-5);
    }
}
