//! MatMul and Gemm through cuBLAS (strided-batched, f32/f16/bf16/f64 storage; f32 accumulation
//! for the 16-bit types). Plans are row-major; cuBLAS is column-major, so each call computes
//! Cᵀ = op(B)ᵀ·op(A)ᵀ, which is the same memory. TF32 stays off: the handle keeps the default
//! math mode, so f32 GEMMs are full f32 (a `precision` option can allow TF32 later).
//!
//! A `Gemm` with a C input (f32/f16/bf16, k > 0) runs as one cuBLASLt matmul ([`LtGemmCall`]):
//! - C a bias row `[N]`/`[1, N]` with β = 1 (what the optimizer's `linear-bias` rule makes of
//!   `MatMul + bias`): `CUBLASLT_EPILOGUE_BIAS`. Lt's bias has one entry per row of its
//!   column-major D, which is Dᵀ here, so one entry per column of our row-major output, i.e. per
//!   last-axis element, as ONNX broadcasts `[N]`. The bias has the output's dtype.
//! - C of the output's full shape `[M, N]` (a residual), any β: Lt's separate C (C ≠ D, β·C).
//! - A residual input R (`Op::Gemm`'s input 3, made by `quilt_rewrites::epilogue`) with no C or
//!   a bias row: R is Lt's separate C with β = 1, next to the bias epilogue.
//!
//! The algorithm comes from `cublasLtMatmulAlgoGetHeuristic` once per shape, stride and pointer
//! alignment, and is cached with its descriptors; the workspace is the executable's fixed
//! cuBLAS workspace, so the call is legal inside a CUDA graph capture. Everything else (C that
//! broadcasts another way, β ≠ 1 with a bias row, f64, k = 0) keeps the cuBLAS path: a kernel
//! writes β·C broadcast (plus R) into the output, then cuBLAS accumulates with β = 1.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

use cudarc::cublas::{result as blas, sys as bsys};
use cudarc::cublaslt::{result as lt, sys as ltsys};
use quilt_rewrites::{DType, Op};

use super::codegen::{broadcast_strides, contiguous_strides, decompose, numel, Action, Arg, CType, Kernel, LaunchPlan, ParamList, StepCode, StepShapes, Types, Work};
use super::device::CudaDevice;
use crate::error::{Error, Result};

/// One strided-batched product in row-major terms:
/// `C[i] = alpha · op(A[i]) · op(B[i]) + beta · C[i]` for i in 0..batch, C[i] is m×n.
#[derive(Clone, Debug)]
pub struct GemmCall {
    pub dtype: DType,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// (argument, element offset); leading dims are the stored row lengths.
    pub a: (Arg, usize),
    pub lda: usize,
    pub trans_a: bool,
    pub stride_a: usize,
    pub b: (Arg, usize),
    pub ldb: usize,
    pub trans_b: bool,
    pub stride_b: usize,
    pub c: (Arg, usize),
    pub ldc: usize,
    pub stride_c: usize,
    pub batch: usize,
    pub alpha: f64,
    pub beta: f64,
}

/// A GEMM run by cuBLASLt with an epilogue: `D = alpha · op(A) · op(B) + beta · addend + bias`
/// where `gemm.c` is D (`gemm.beta` scales `addend`, which is read with D's leading dim and
/// stride) and `bias` has one entry per column of D.
#[derive(Clone, Debug)]
pub struct LtGemmCall {
    pub gemm: GemmCall,
    pub bias: Option<(Arg, usize)>,
    pub addend: Option<(Arg, usize)>,
}

pub struct GemmCode {
    op: Op,
    dtype: DType,
    /// Gemm with a C input: a kernel writing `beta · C` broadcast into the output first.
    kernels: Vec<Kernel>,
}

impl GemmCode {
    pub fn new(op: &Op, t: &Types) -> std::result::Result<GemmCode, String> {
        let dtype = t.input(0)?;
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) || t.input(1)? != dtype || t.outs[0] != dtype {
            return Err(format!("cuBLAS GEMM needs float operands of one dtype, got {:?} -> {}", t.ins, t.outs[0]));
        }
        let mut kernels = Vec::new();
        let residual = t.ins.get(3).copied().flatten();
        if let Some(rd) = residual {
            if !matches!(op, Op::Gemm { .. }) || rd != dtype || t.in_ranks[3] != 2 {
                return Err(format!("{} residual of {rd} (rank {}) with A of {dtype}", op.name(), t.in_ranks[3]));
            }
        }
        if let (Op::Gemm { .. }, Some(Some(cd))) = (op, t.ins.get(2)) {
            if *cd != dtype {
                return Err(format!("Gemm C has dtype {cd}, A has {dtype}"));
            }
        }
        if let (Op::Gemm { .. }, true) = (op, t.ins.get(2).copied().flatten().is_some() || residual.is_some()) {
            let ct = CType::of(dtype);
            // Named by dtype alone: every Gemm step of one dtype has the same module source,
            // so it is compiled (and cached) once however many Gemm steps a plan has.
            let name = format!("gemm_c_{}", ct.storage().replace(' ', "_"));
            let mut body = format!("extern \"C\" __global__ void {name}(const QParams p, {s}* __restrict__ out, const {s}* __restrict__ c) {{\n  Q_LOOP(p.v[0]) {{\n", s = ct.storage());
            body += &decompose(2, 1, &[("o", 3)]);
            body += &format!("    out[i] = {};\n  }}\n}}\n", ct.store(&format!("({})q_pd(p.v[5]) * {}", ct.compute(), ct.load("c[o]"))));
            kernels.push(Kernel { name, body });
        }
        if let (Op::Gemm { .. }, Some(Some(_)), Some(_)) = (op, t.ins.get(2), residual) {
            // Both a C and a residual, off the Lt path: out = β·C (broadcast) + R. (A residual
            // alone is the kernel above with C = R and β = 1.)
            let ct = CType::of(dtype);
            let name = format!("gemm_cr_{}", ct.storage().replace(' ', "_"));
            let mut body = format!(
                "extern \"C\" __global__ void {name}(const QParams p, {s}* __restrict__ out, const {s}* __restrict__ c, const {s}* __restrict__ r) {{\n  Q_LOOP(p.v[0]) {{\n",
                s = ct.storage()
            );
            body += &decompose(2, 1, &[("o", 3)]);
            body += &format!("    out[i] = {};\n  }}\n}}\n", ct.store(&format!("({c})q_pd(p.v[5]) * {} + {}", ct.load("c[o]"), ct.load("r[i]"), c = ct.compute())));
            kernels.push(Kernel { name, body });
        }
        Ok(GemmCode { op: op.clone(), dtype, kernels })
    }
}

impl StepCode for GemmCode {
    fn kernels(&self) -> &[Kernel] {
        &self.kernels
    }

    fn plan(&self, s: &StepShapes) -> std::result::Result<LaunchPlan, String> {
        let (a, b, out) = (s.input(0)?, s.input(1)?, s.outs[0]);
        let mut plan = LaunchPlan::default();
        match &self.op {
            Op::Gemm { alpha, beta, trans_a, trans_b } => {
                if a.len() != 2 || b.len() != 2 || out.len() != 2 {
                    return Err(format!("Gemm needs 2-D operands, got {a:?} and {b:?}"));
                }
                let (m, k) = if *trans_a { (a[1], a[0]) } else { (a[0], a[1]) };
                let (kb, n) = if *trans_b { (b[1], b[0]) } else { (b[0], b[1]) };
                if k != kb || out != [m, n] {
                    return Err(format!("Gemm shapes {a:?} x {b:?} (trans {trans_a}, {trans_b}) do not give {out:?}"));
                }
                let c = s.ins.get(2).copied().flatten().filter(|_| *beta != 0.0);
                let residual = s.ins.get(3).copied().flatten();
                if residual.is_some_and(|r| r != out) {
                    return Err(format!("Gemm residual {:?} must have the output's shape {out:?}", residual.unwrap_or_default()));
                }
                let lt_dtype = matches!(self.dtype, DType::F32 | DType::F16 | DType::BF16);
                let lt_ok = lt_dtype && m > 0 && n > 0 && k > 0;
                let bias_row = c.is_some_and(|c| *beta == 1.0 && (c == [n] || c == [1, n]));
                // The one product of a 2-D Gemm, written to the output with the given β.
                let gemm2d = |gemm_beta: f64| GemmCall {
                    dtype: self.dtype,
                    m,
                    n,
                    k,
                    a: (Arg::In(0), 0),
                    lda: a[1],
                    trans_a: *trans_a,
                    stride_a: 0,
                    b: (Arg::In(1), 0),
                    ldb: b[1],
                    trans_b: *trans_b,
                    stride_b: 0,
                    c: (Arg::Out(0), 0),
                    ldc: n,
                    stride_c: 0,
                    batch: 1,
                    alpha: *alpha as f64,
                    beta: gemm_beta,
                };
                if residual.is_some() && lt_ok && (c.is_none() || bias_row) {
                    // D = op(A)·op(B) + bias + 1·R: R is Lt's separate C.
                    let gemm = gemm2d(1.0);
                    let bias = bias_row.then_some((Arg::In(2), 0));
                    plan.actions.push(Action::LtGemm(LtGemmCall { gemm, bias, addend: Some((Arg::In(3), 0)) }));
                    return Ok(plan);
                }
                if let (Some(c), true, None) = (c, lt_ok, residual) {
                    if bias_row || c == [m, n] {
                        let gemm = gemm2d(if bias_row { 0.0 } else { *beta as f64 });
                        let (bias, addend) = if bias_row { (Some((Arg::In(2), 0)), None) } else { (None, Some((Arg::In(2), 0))) };
                        plan.actions.push(Action::LtGemm(LtGemmCall { gemm, bias, addend }));
                        return Ok(plan);
                    }
                }
                let mut gemm_beta = 0.0;
                if c.is_some() || residual.is_some() {
                    // Without a C the residual is the C, with β = 1.
                    let (c_arg, c_shape, c_beta) = match c {
                        Some(c) => (Arg::In(2), c, *beta as f64),
                        None => (Arg::In(3), out, 1.0),
                    };
                    let mut p = ParamList::default();
                    p.push((m * n) as i64);
                    p.extend([m as i64, n as i64]);
                    p.extend(broadcast_strides(c_shape, out).map_err(|e| format!("C: {e}"))?);
                    p.push_f64(c_beta);
                    let (kernel, args) = if c.is_some() && residual.is_some() { (1, vec![Arg::Out(0), c_arg, Arg::In(3)]) } else { (0, vec![Arg::Out(0), c_arg]) };
                    if m * n > 0 {
                        plan.actions.push(Action::Launch { kernel, work: Work::Elements((m * n) as u64), params: p.finish()?, args });
                    }
                    gemm_beta = 1.0;
                }
                push_gemm(&mut plan, gemm2d(gemm_beta), self.dtype);
            }
            Op::MatMul => matmul_plan(&mut plan, a, b, out, self.dtype)?,
            other => return Err(format!("{} is not a GEMM", other.name())),
        }
        Ok(plan)
    }
}

/// Adds the call, or zeroes C when k == 0 (an empty sum) and skips empty products.
fn push_gemm(plan: &mut LaunchPlan, call: GemmCall, dtype: DType) {
    if call.m == 0 || call.n == 0 || call.batch == 0 {
        return;
    }
    if call.k == 0 && call.beta == 0.0 {
        plan.actions.push(Action::Zero { arg: call.c.0, bytes: call.batch.max(1) * call.m * call.n * dtype.size_bytes() });
        return;
    }
    plan.actions.push(Action::Gemm(call));
}

/// numpy matmul: 1-D operands are promoted, batch dims broadcast. Each operand's batch is
/// one stride when it is either complete or fully broadcast; otherwise one call per batch.
fn matmul_plan(plan: &mut LaunchPlan, a: &[usize], b: &[usize], out: &[usize], dtype: DType) -> std::result::Result<(), String> {
    if a.is_empty() || b.is_empty() {
        return Err("MatMul of a scalar".into());
    }
    let a2: Vec<usize> = if a.len() == 1 { vec![1, a[0]] } else { a.to_vec() };
    let b2: Vec<usize> = if b.len() == 1 { vec![b[0], 1] } else { b.to_vec() };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (kb, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k != kb {
        return Err(format!("MatMul {a:?} x {b:?}: inner dims {k} and {kb} differ"));
    }
    let (ab, bb) = (&a2[..a2.len() - 2], &b2[..b2.len() - 2]);
    let rank = ab.len().max(bb.len());
    let mut batch = vec![1usize; rank];
    for d in 0..rank {
        let x = if d + ab.len() >= rank { ab[d + ab.len() - rank] } else { 1 };
        let y = if d + bb.len() >= rank { bb[d + bb.len() - rank] } else { 1 };
        batch[d] = if x == y || y == 1 { x } else if x == 1 { y } else { return Err(format!("MatMul batch dims of {a:?} and {b:?} do not broadcast")) };
    }
    let nb = numel(&batch);
    if numel(out) != nb * m * n {
        return Err(format!("MatMul {a:?} x {b:?} gives {} elements, the output {out:?} has {}", nb * m * n, numel(out)));
    }
    // Per-batch-axis element strides of each operand's matrices.
    let sa: Vec<i64> = broadcast_strides(ab, &batch)?.iter().map(|s| s * (m * k) as i64).collect();
    let sb: Vec<i64> = broadcast_strides(bb, &batch)?.iter().map(|s| s * (k * n) as i64).collect();
    let one_stride = |s: &[i64], per: usize| -> Option<usize> {
        let cs = contiguous_strides(&batch);
        if s.iter().all(|&x| x == 0) {
            Some(0)
        } else if s.iter().zip(&cs).zip(&batch).all(|((&x, &c), &d)| d == 1 || x == c * per as i64) {
            Some(per)
        } else {
            None
        }
    };
    let call = |a_off: usize, b_off: usize, c_off: usize, stride_a: usize, stride_b: usize, count: usize| GemmCall {
        dtype,
        m,
        n,
        k,
        a: (Arg::In(0), a_off),
        lda: k,
        trans_a: false,
        stride_a,
        b: (Arg::In(1), b_off),
        ldb: n,
        trans_b: false,
        stride_b,
        c: (Arg::Out(0), c_off),
        ldc: n,
        stride_c: m * n,
        batch: count,
        alpha: 1.0,
        beta: 0.0,
    };
    match (one_stride(&sa, m * k), one_stride(&sb, k * n)) {
        // One matrix B for every batch entry (a weight), A and the output contiguous over the
        // batch: one GEMM over all nb·m rows instead of a batch of nb products of m rows (the
        // projections' [B, S, K] · [K, N]; cross-attention's 77-row products fill tiles better
        // as one 154-row product at batch 2).
        (Some(x), Some(0)) if nb > 1 && x == m * k => push_gemm(plan, GemmCall { m: nb * m, ..call(0, 0, 0, 0, 0, 1) }, dtype),
        (Some(x), Some(y)) => push_gemm(plan, call(0, 0, 0, x, y, nb), dtype),
        _ => {
            let cs = contiguous_strides(&batch);
            for i in 0..nb {
                let (mut ao, mut bo) = (0i64, 0i64);
                for d in 0..rank {
                    let c = (i as i64 / cs[d]) % batch[d] as i64;
                    ao += c * sa[d];
                    bo += c * sb[d];
                }
                push_gemm(plan, call(ao as usize, bo as usize, i * m * n, 0, 0, 1), dtype);
            }
        }
    }
    Ok(())
}

/// A cuBLAS handle bound to the device's stream (handles are not thread-safe: one at a time),
/// and a cuBLASLt handle with its per-shape plans for [`LtGemmCall`]s.
pub struct Blas {
    handle: Mutex<bsys::cublasHandle_t>,
    lt: Mutex<Lt>,
    /// Plain GEMMs go through cuBLASLt too (`QUILT_GEMM_LT=1`).
    plain_through_lt: bool,
    /// The device's stream (`CUstream`), which Lt takes per call.
    stream: usize,
}

/// What selects an Lt plan: the call's shape and strides, which epilogue inputs it has, and the
/// alignment its pointers guarantee (the heuristic picks kernels that rely on it).
#[derive(Clone, PartialEq, Eq, Hash)]
struct LtKey {
    dtype: DType,
    dims: [usize; 4],
    lds: [usize; 3],
    strides: [usize; 3],
    trans: (bool, bool),
    bias: bool,
    addend: bool,
    align: u32,
}

/// Descriptors and the algorithm for one [`LtKey`]; destroyed with the cache.
struct LtPlan {
    desc: ltsys::cublasLtMatmulDesc_t,
    /// Lt's A, B (our B and A: the row-major product seen column-major), C and D layouts.
    layouts: [ltsys::cublasLtMatrixLayout_t; 4],
    algo: ltsys::cublasLtMatmulAlgo_t,
}

impl Drop for LtPlan {
    fn drop(&mut self) {
        // SAFETY: created by this plan and used by nothing after it.
        unsafe {
            let _ = lt::destroy_matmul_desc(self.desc);
            for l in self.layouts {
                let _ = lt::destroy_matrix_layout(l);
            }
        }
    }
}

impl LtKey {
    /// The key without the row count M and the batch strides (which follow from M): shapes of
    /// one class differ only in batch or spatial size, and an algorithm chosen for one of them
    /// usually runs the others (`reuse_algos`, checked by `cublasLtMatmulAlgoCheck`).
    fn class(&self) -> LtKey {
        LtKey { dims: [0, self.dims[1], self.dims[2], self.dims[3]], strides: [0; 3], ..self.clone() }
    }
}

/// On by default (`QUILT_GEMM_REUSE=0` turns it off): a cuBLASLt GEMM at a new M takes the
/// algorithm an earlier shape of its class got from the heuristic, when cuBLASLt accepts it for
/// the new shape, instead of asking the heuristic again (what a first call at a new batch or size
/// spent most of its cuBLASLt time on). Session 8 (H200, UNet b2 64² then b1 / b2 96²): the
/// first call's cuBLASLt time 20.0 → 1.2 ms and 38.7 → 1.3 ms, the repeat unchanged within ~2%.
fn reuse_algos() -> bool {
    super::env::default_on("QUILT_GEMM_REUSE")
}

/// What choosing cuBLASLt algorithms has cost so far (for benchmarks of a first call at a new
/// shape).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LtPlanStats {
    /// Plans built (one per new shape, stride and alignment).
    pub plans: u64,
    /// Of those, plans that took an earlier shape's algorithm (`reuse_algos`).
    pub reused: u64,
    /// Host microseconds spent building plans (descriptors, heuristic or check).
    pub us: u64,
}

struct Lt {
    handle: ltsys::cublasLtHandle_t,
    /// The workspace given to `Blas::set_workspace` (pointer, bytes); none until then.
    workspace: (u64, usize),
    plans: HashMap<LtKey, LtPlan>,
    /// Per class (`LtKey::class`), the algorithm the heuristic chose for its first shape.
    class_algos: HashMap<LtKey, ltsys::cublasLtMatmulAlgo_t>,
    /// Whether a new shape tries its class's algorithm first (`reuse_algos`).
    reuse: bool,
    stats: LtPlanStats,
}

fn lt_err(what: &str) -> impl Fn(lt::CublasError) -> String + '_ {
    move |e| format!("cuBLASLt {what}: {e:?}")
}

/// Sets one attribute of an Lt descriptor from a plain value.
unsafe fn desc_attr<T>(desc: ltsys::cublasLtMatmulDesc_t, attr: ltsys::cublasLtMatmulDescAttributes_t, v: &T) -> std::result::Result<(), String> {
    lt::set_matmul_desc_attribute(desc, attr, v as *const T as *const c_void, std::mem::size_of::<T>()).map_err(lt_err("set matmul attribute"))
}

unsafe fn layout_attr<T>(l: ltsys::cublasLtMatrixLayout_t, attr: ltsys::cublasLtMatrixLayoutAttribute_t, v: &T) -> std::result::Result<(), String> {
    lt::set_matrix_layout_attribute(l, attr, v as *const T as *const c_void, std::mem::size_of::<T>()).map_err(lt_err("set layout attribute"))
}

unsafe fn pref_attr<T>(p: ltsys::cublasLtMatmulPreference_t, attr: ltsys::cublasLtMatmulPreferenceAttributes_t, v: &T) -> std::result::Result<(), String> {
    lt::set_matmul_pref_attribute(p, attr, v as *const T as *const c_void, std::mem::size_of::<T>()).map_err(lt_err("set preference"))
}

impl LtPlan {
    /// Builds the descriptors of `key` and takes `known` when cuBLASLt accepts it for this shape
    /// (`cublasLtMatmulAlgoCheck`, within `workspace`), else asks the heuristic for its best
    /// algorithm. The second value says whether `known` was taken.
    fn new(handle: ltsys::cublasLtHandle_t, call: &GemmCall, key: &LtKey, workspace: usize, known: Option<&ltsys::cublasLtMatmulAlgo_t>) -> std::result::Result<(LtPlan, bool), String> {
        use ltsys::cublasLtMatmulDescAttributes_t as D;
        use ltsys::cublasLtMatrixLayoutAttribute_t as L;
        use ltsys::cublasLtMatmulPreferenceAttributes_t as P;
        let dt = match call.dtype {
            DType::F32 => ltsys::cudaDataType_t::CUDA_R_32F,
            DType::F16 => ltsys::cudaDataType_t::CUDA_R_16F,
            DType::BF16 => ltsys::cudaDataType_t::CUDA_R_16BF,
            other => return Err(format!("cuBLASLt GEMM of {other}")),
        };
        // f32 compute for every dtype (no TF32 for f32: COMPUTE_32F, not 32F_FAST_TF32).
        let desc = lt::create_matmul_desc(ltsys::cublasComputeType_t::CUBLAS_COMPUTE_32F, ltsys::cudaDataType_t::CUDA_R_32F).map_err(lt_err("create matmul descriptor"))?;
        let mut plan = LtPlan { desc, layouts: [std::ptr::null_mut(); 4], algo: ltsys::cublasLtMatmulAlgo_t { data: [0; 8] } };
        // Row-major C[m×n] = op(A)·op(B) is column-major Cᵀ[n×m] = op(B)ᵀ·op(A)ᵀ: Lt's A is our
        // B (stored n×k column-major when not transposed), Lt's B is our A.
        let (op_a, op_b) = (call.trans_b as i32, call.trans_a as i32);
        let (a_rows, a_cols) = if call.trans_b { (call.k, call.n) } else { (call.n, call.k) };
        let (b_rows, b_cols) = if call.trans_a { (call.m, call.k) } else { (call.k, call.m) };
        let shapes = [(a_rows, a_cols, call.ldb, call.stride_b), (b_rows, b_cols, call.lda, call.stride_a), (call.n, call.m, call.ldc, call.stride_c), (call.n, call.m, call.ldc, call.stride_c)];
        // SAFETY: every descriptor is live (created just above or here) and each attribute gets
        // a value of the type the cuBLASLt documentation gives it.
        unsafe {
            desc_attr(desc, D::CUBLASLT_MATMUL_DESC_TRANSA, &op_a)?;
            desc_attr(desc, D::CUBLASLT_MATMUL_DESC_TRANSB, &op_b)?;
            if key.bias {
                desc_attr(desc, D::CUBLASLT_MATMUL_DESC_EPILOGUE, &(ltsys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS as u32))?;
            }
            for (i, (rows, cols, ld, stride)) in shapes.into_iter().enumerate() {
                plan.layouts[i] = lt::create_matrix_layout(dt, rows as u64, cols as u64, ld.max(1) as i64).map_err(lt_err("create layout"))?;
                if call.batch > 1 {
                    layout_attr(plan.layouts[i], L::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &(call.batch as i32))?;
                    layout_attr(plan.layouts[i], L::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &(stride as i64))?;
                }
            }
            if let Some(algo) = known {
                let [a, b, c, d] = plan.layouts;
                let mut checked = std::mem::zeroed::<ltsys::cublasLtMatmulHeuristicResult_t>();
                let status = ltsys::cublasLtMatmulAlgoCheck(handle, desc, a, b, c, d, algo, &mut checked);
                if status == ltsys::cublasStatus_t::CUBLAS_STATUS_SUCCESS && checked.workspaceSize <= workspace {
                    plan.algo = *algo;
                    return Ok((plan, true));
                }
            }
            let pref = lt::create_matmul_pref().map_err(lt_err("create preference"))?;
            let found = (|| {
                pref_attr(pref, P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &(workspace as u64))?;
                for attr in [
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                ] {
                    pref_attr(pref, attr, &key.align)?;
                }
                let [a, b, c, d] = plan.layouts;
                lt::get_matmul_algo_heuristic(handle, desc, a, b, c, d, pref).map_err(lt_err("no algorithm (heuristic)"))
            })();
            let _ = lt::destroy_matmul_pref(pref);
            let found = found?;
            if found.workspaceSize > workspace {
                return Err(format!("cuBLASLt algorithm wants {} bytes of workspace, {workspace} are set", found.workspaceSize));
            }
            plan.algo = found.algo;
        }
        Ok((plan, false))
    }
}

// SAFETY: the handle is only used under the mutex.
unsafe impl Send for Blas {}
unsafe impl Sync for Blas {}

impl Blas {
    pub fn new(device: &CudaDevice) -> Result<Blas> {
        // SAFETY: probes whether libcublas loads.
        if !unsafe { bsys::is_culib_present() } {
            return Err(Error::Device("libcublas could not be loaded: put CUDA's cuBLAS (libcublas.so.13) on LD_LIBRARY_PATH".into()));
        }
        let handle = blas::create_handle().map_err(|e| Error::Device(format!("cublasCreate: {e:?}")))?;
        // SAFETY: a live handle and stream of the current context.
        unsafe { blas::set_stream(handle, device.cu_stream() as _) }.map_err(|e| Error::Device(format!("cublasSetStream: {e:?}")))?;
        // SAFETY: probes whether libcublasLt loads (libcublas itself depends on it).
        if !unsafe { ltsys::is_culib_present() } {
            return Err(Error::Device("libcublasLt could not be loaded: put CUDA's cuBLASLt (libcublasLt.so.13) on LD_LIBRARY_PATH".into()));
        }
        let lt_handle = lt::create_handle().map_err(|e| Error::Device(format!("cublasLtCreate: {e:?}")))?;
        let lt = Lt { handle: lt_handle, workspace: (0, 0), plans: HashMap::new(), class_algos: HashMap::new(), reuse: reuse_algos(), stats: LtPlanStats::default() };
        let plain_through_lt = super::env::on("QUILT_GEMM_LT");
        Ok(Blas { handle: Mutex::new(handle), lt: Mutex::new(lt), plain_through_lt, stream: device.cu_stream() as usize })
    }

    /// Gives cuBLAS `bytes` of device memory at `ptr` as its workspace for every later call, so
    /// that calls recorded into a CUDA graph use memory the caller owns instead of allocating
    /// inside the capture. `ptr` must stay valid while the handle is used.
    pub fn set_workspace(&self, ptr: u64, bytes: usize) -> Result<()> {
        let handle = self.handle.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: a live handle; the caller keeps the memory alive (see above).
        unsafe { bsys::cublasSetWorkspace_v2(*handle, ptr as *mut c_void, bytes) }
            .result()
            .map_err(|e| Error::Device(format!("cublasSetWorkspace: {e:?}")))?;
        // cuBLAS and cuBLASLt calls run one after another on one stream: they share it. Plans
        // chose their algorithms for the old size.
        let mut lt = self.lt.lock().unwrap_or_else(|p| p.into_inner());
        lt.workspace = (ptr, bytes);
        lt.plans.clear();
        lt.class_algos.clear();
        Ok(())
    }

    /// Whether a cuBLASLt GEMM at a new M first tries the algorithm of an earlier shape of its
    /// class (default: on unless `QUILT_GEMM_REUSE=0`).
    pub fn reuse_algorithms(&self, on: bool) {
        self.lt.lock().unwrap_or_else(|p| p.into_inner()).reuse = on;
    }

    /// What choosing cuBLASLt algorithms has cost so far.
    pub fn lt_plan_stats(&self) -> LtPlanStats {
        self.lt.lock().unwrap_or_else(|p| p.into_inner()).stats
    }

    /// Runs an epilogue GEMM through cuBLASLt, choosing (and caching) its algorithm the first
    /// time its shape and pointer alignment are seen.
    pub fn lt_gemm(&self, call: &LtGemmCall, ptr: &dyn Fn(Arg) -> u64) -> std::result::Result<(), String> {
        self.lt_run(&call.gemm, call.bias, call.addend, ptr)
    }

    /// `lt_gemm` of `g` with an optional bias and addend (none: D = alpha · A · B + beta · D).
    fn lt_run(&self, g: &GemmCall, bias: Option<(Arg, usize)>, addend: Option<(Arg, usize)>, ptr: &dyn Fn(Arg) -> u64) -> std::result::Result<(), String> {
        let es = g.dtype.size_bytes() as u64;
        let at = |(arg, off): (Arg, usize)| ptr(arg) + off as u64 * es;
        let (a, b, d) = (at(g.a), at(g.b), at(g.c));
        let bias = bias.map(at);
        let c = addend.map(at).unwrap_or(d);
        // The largest power of two (≤ 256) dividing every pointer.
        let align = [a, b, c, d, bias.unwrap_or(d)].iter().fold(256u64, |m, &p| if p == 0 { m } else { m.min(1 << p.trailing_zeros().min(8)) }) as u32;
        let key = LtKey {
            dtype: g.dtype,
            dims: [g.m, g.n, g.k, g.batch],
            lds: [g.lda, g.ldb, g.ldc],
            strides: [g.stride_a, g.stride_b, g.stride_c],
            trans: (g.trans_a, g.trans_b),
            bias: bias.is_some(),
            addend: addend.is_some(),
            align,
        };
        let shape = || format!("cuBLASLt GEMM {}x{}x{} (batch {}, {}, bias {}, C {})", g.m, g.n, g.k, g.batch, g.dtype, key.bias, key.addend);
        let mut guard = self.lt.lock().unwrap_or_else(|p| p.into_inner());
        let state = &mut *guard;
        if !state.plans.contains_key(&key) {
            let started = std::time::Instant::now();
            let class = key.class();
            let known = if state.reuse { state.class_algos.get(&class) } else { None };
            let (plan, reused) = LtPlan::new(state.handle, g, &key, state.workspace.1, known).map_err(|e| format!("{}: {e}", shape()))?;
            state.class_algos.entry(class).or_insert(plan.algo);
            state.stats.plans += 1;
            state.stats.reused += reused as u64;
            state.stats.us += started.elapsed().as_micros() as u64;
            state.plans.insert(key.clone(), plan);
        }
        let plan = &state.plans[&key];
        let (alpha, beta) = (g.alpha as f32, g.beta as f32);
        let [la, lb, lc, ld] = plan.layouts;
        // SAFETY: pointers come from live buffers sized by the plan's shapes (the launch plan
        // checked them); the descriptor is only touched under the lock; alpha/beta and the
        // algorithm outlive the (host-side) enqueue; the workspace is the one set above.
        unsafe {
            if let Some(p) = bias {
                desc_attr(plan.desc, ltsys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p)?;
            }
            lt::matmul(
                state.handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                b as *const c_void,
                la,
                a as *const c_void,
                lb,
                c as *const c_void,
                lc,
                d as *mut c_void,
                ld,
                &plan.algo,
                state.workspace.0 as *mut c_void,
                state.workspace.1,
                self.stream as ltsys::cudaStream_t,
            )
        }
        .map_err(|e| format!("{}: {e:?}", shape()))
    }

    /// Runs `call` with `ptr` resolving each argument to a device pointer: through cuBLAS, or
    /// through cuBLASLt (its algorithms cached per shape and reused per class, see `reuse_algos`)
    /// when `QUILT_GEMM_LT=1` (session 8: a new shape's first call spent 18-21 ms in cuBLAS
    /// choosing algorithms for the bias-free MatMuls; opt-in until measured on a GPU).
    pub fn gemm(&self, call: &GemmCall, ptr: &dyn Fn(Arg) -> u64) -> std::result::Result<(), String> {
        if self.plain_through_lt && call.dtype != DType::F64 {
            return self.lt_run(call, None, None, ptr);
        }
        let (dt, compute) = match call.dtype {
            DType::F32 => (bsys::cudaDataType_t::CUDA_R_32F, bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F),
            DType::F16 => (bsys::cudaDataType_t::CUDA_R_16F, bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F),
            DType::BF16 => (bsys::cudaDataType_t::CUDA_R_16BF, bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F),
            DType::F64 => (bsys::cudaDataType_t::CUDA_R_64F, bsys::cublasComputeType_t::CUBLAS_COMPUTE_64F),
            other => return Err(format!("GEMM of {other}")),
        };
        let es = call.dtype.size_bytes() as u64;
        let at = |(arg, off): (Arg, usize)| ptr(arg) + off as u64 * es;
        let (alpha32, beta32) = (call.alpha as f32, call.beta as f32);
        let (alpha_p, beta_p): (*const c_void, *const c_void) = if call.dtype == DType::F64 {
            (&call.alpha as *const f64 as *const c_void, &call.beta as *const f64 as *const c_void)
        } else {
            (&alpha32 as *const f32 as *const c_void, &beta32 as *const f32 as *const c_void)
        };
        let op = |t: bool| if t { bsys::cublasOperation_t::CUBLAS_OP_T } else { bsys::cublasOperation_t::CUBLAS_OP_N };
        let int = |v: usize, what: &str| i32::try_from(v).map_err(|_| format!("GEMM {what} = {v} exceeds cuBLAS's 32-bit sizes"));
        let handle = self.handle.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: pointers come from live buffers sized by the plan's shapes (the launch plan
        // checked the operand shapes); alpha/beta outlive the call (host pointer mode).
        unsafe {
            blas::gemm_strided_batched_ex(
                *handle,
                op(call.trans_b),
                op(call.trans_a),
                int(call.n, "n")?,
                int(call.m, "m")?,
                int(call.k, "k")?,
                alpha_p,
                at(call.b) as *const c_void,
                dt,
                int(call.ldb.max(1), "ldb")?,
                call.stride_b as i64,
                at(call.a) as *const c_void,
                dt,
                int(call.lda.max(1), "lda")?,
                call.stride_a as i64,
                beta_p,
                at(call.c) as *mut c_void,
                dt,
                int(call.ldc.max(1), "ldc")?,
                call.stride_c as i64,
                int(call.batch, "batch")?,
                compute,
                bsys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| format!("cuBLAS GEMM {}x{}x{} (batch {}): {e:?}", call.m, call.n, call.k, call.batch))
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        let h = *self.handle.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the handle is not used after this.
        let _ = unsafe { blas::destroy_handle(h) };
        let lt = self.lt.get_mut().unwrap_or_else(|p| p.into_inner());
        lt.plans.clear();
        // SAFETY: its plans are gone and nothing uses the handle after this.
        let _ = unsafe { lt::destroy_handle(lt.handle) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gemms(a: &[usize], b: &[usize], out: &[usize]) -> Vec<(usize, usize, usize, usize, usize, usize)> {
        let mut plan = LaunchPlan::default();
        matmul_plan(&mut plan, a, b, out, DType::F16).unwrap();
        plan.actions
            .iter()
            .map(|x| match x {
                Action::Gemm(g) => (g.m, g.n, g.k, g.batch, g.stride_a, g.stride_b),
                other => panic!("not a GEMM: {other:?}"),
            })
            .collect()
    }

    /// A weight shared by the batch folds the batch into the rows; batched weights, a broadcast
    /// A, or a single batch entry keep their shapes.
    #[test]
    fn a_shared_weight_folds_the_batch_into_the_rows() {
        assert_eq!(gemms(&[2, 77, 768], &[768, 640], &[2, 77, 640]), [(154, 640, 768, 1, 0, 0)]);
        assert_eq!(gemms(&[2, 3, 5, 8], &[1, 8, 4], &[2, 3, 5, 4]), [(30, 4, 8, 1, 0, 0)]);
        assert_eq!(gemms(&[1, 77, 768], &[768, 640], &[1, 77, 640]), [(77, 640, 768, 1, 0, 0)]);
        assert_eq!(gemms(&[2, 77, 64], &[2, 64, 77], &[2, 77, 77]), [(77, 77, 64, 2, 77 * 64, 64 * 77)]);
        assert_eq!(gemms(&[77, 64], &[2, 64, 32], &[2, 77, 32]), [(77, 32, 64, 2, 0, 64 * 32)]);
    }
}
