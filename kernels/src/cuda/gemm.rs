//! MatMul and Gemm through cuBLAS (strided-batched, f32/f16/bf16/f64 storage; f32 accumulation
//! for the 16-bit types). Plans are row-major; cuBLAS is column-major, so each call computes
//! Cᵀ = op(B)ᵀ·op(A)ᵀ, which is the same memory. TF32 stays off: the handle keeps the default
//! math mode, so f32 GEMMs are full f32 (a `precision` option can allow TF32 later).

use std::ffi::c_void;
use std::sync::Mutex;

use cudarc::cublas::{result as blas, sys as bsys};
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
        if let (Op::Gemm { .. }, Some(Some(cd))) = (op, t.ins.get(2)) {
            if *cd != dtype {
                return Err(format!("Gemm C has dtype {cd}, A has {dtype}"));
            }
            let ct = CType::of(dtype);
            let name = format!("{}_gemm_c", t.prefix);
            let mut body = format!("extern \"C\" __global__ void {name}(const QParams p, {s}* __restrict__ out, const {s}* __restrict__ c) {{\n  Q_LOOP(p.v[0]) {{\n", s = ct.storage());
            body += &decompose(2, 1, &[("o", 3)]);
            body += &format!("    out[i] = {};\n  }}\n}}\n", ct.store(&format!("({})q_pd(p.v[5]) * {}", ct.compute(), ct.load("c[o]"))));
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
                let mut gemm_beta = 0.0;
                if let (Some(c), false) = (s.ins.get(2).copied().flatten(), *beta == 0.0) {
                    let mut p = ParamList::default();
                    p.push((m * n) as i64);
                    p.extend([m as i64, n as i64]);
                    p.extend(broadcast_strides(c, out).map_err(|e| format!("C: {e}"))?);
                    p.push_f64(*beta as f64);
                    if m * n > 0 {
                        plan.actions.push(Action::Launch { kernel: 0, work: Work::Elements((m * n) as u64), params: p.finish()?, args: vec![Arg::Out(0), Arg::In(2)] });
                    }
                    gemm_beta = 1.0;
                }
                push_gemm(&mut plan, GemmCall {
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
                }, self.dtype);
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

/// A cuBLAS handle bound to the device's stream (handles are not thread-safe: one at a time).
pub struct Blas {
    handle: Mutex<bsys::cublasHandle_t>,
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
        Ok(Blas { handle: Mutex::new(handle) })
    }

    /// Gives cuBLAS `bytes` of device memory at `ptr` as its workspace for every later call, so
    /// that calls recorded into a CUDA graph use memory the caller owns instead of allocating
    /// inside the capture. `ptr` must stay valid while the handle is used.
    pub fn set_workspace(&self, ptr: u64, bytes: usize) -> Result<()> {
        let handle = self.handle.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: a live handle; the caller keeps the memory alive (see above).
        unsafe { bsys::cublasSetWorkspace_v2(*handle, ptr as *mut c_void, bytes) }
            .result()
            .map_err(|e| Error::Device(format!("cublasSetWorkspace: {e:?}")))
    }

    /// Runs `call` with `ptr` resolving each argument to a device pointer.
    pub fn gemm(&self, call: &GemmCall, ptr: &dyn Fn(Arg) -> u64) -> std::result::Result<(), String> {
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
    }
}
