//! Convolution through cuDNN's legacy forward-convolution API (`cudnnConvolutionForward`).
//!
//! - Algorithm: chosen once per concrete shape by cuDNN's heuristic
//!   (`cudnnGetConvolutionForwardAlgorithm_v7`, no GPU work) unless `AlgoSearch::Benchmark`, which
//!   times the candidates on the first call's buffers (`cudnnFindConvolutionForwardAlgorithmEx`).
//!   f32 uses `CUDNN_FMA_MATH` (cuDNN's default math would allow TF32 on Ampere and later, which
//!   would not match the CPU reference at 1e-4); f16/bf16 `CUDNN_TENSOR_OP_MATH`.
//! - Bias and residual: `cudnnConvolutionBiasActivationForward` with the identity activation
//!   when the algorithm is IMPLICIT_PRECOMP_GEMM (the only one cuDNN allows with identity), the
//!   residual as its `z` input (alpha2 = 1); otherwise the convolution followed by
//!   `cudnnAddTensor` for each (`Epilogue`, also used after a graph-API convolution whose
//!   engine did not take the additions).

use std::ffi::{c_int, c_void};
use std::time::Instant;

use cudarc::cudnn::sys;
use cudarc::driver::sys as dsys;
use quilt_rewrites::DType;

use super::cudnn::{check, data_type, AlgoSearch, ConvCall, ConvChoice, ConvLayout, Workspace, WORKSPACE_CAP};
use super::graph_api::Pointers;

/// The descriptors of one shape (destroyed on drop).
struct Descriptors {
    x: sys::cudnnTensorDescriptor_t,
    w: sys::cudnnFilterDescriptor_t,
    y: sys::cudnnTensorDescriptor_t,
    bias: sys::cudnnTensorDescriptor_t,
    conv: sys::cudnnConvolutionDescriptor_t,
    identity: sys::cudnnActivationDescriptor_t,
}

impl Drop for Descriptors {
    fn drop(&mut self) {
        // SAFETY: each descriptor is destroyed once (null ones were never created).
        unsafe {
            for t in [self.x, self.y, self.bias] {
                if !t.is_null() {
                    sys::cudnnDestroyTensorDescriptor(t);
                }
            }
            if !self.w.is_null() {
                sys::cudnnDestroyFilterDescriptor(self.w);
            }
            if !self.conv.is_null() {
                sys::cudnnDestroyConvolutionDescriptor(self.conv);
            }
            if !self.identity.is_null() {
                sys::cudnnDestroyActivationDescriptor(self.identity);
            }
        }
    }
}

impl Descriptors {
    fn new(call: &ConvCall) -> Result<Descriptors, String> {
        use sys::cudnnTensorFormat_t::{CUDNN_TENSOR_NCHW as NCHW, CUDNN_TENSOR_NHWC as NHWC};
        let g = &call.geom;
        let fmt = if call.layout == ConvLayout::Nhwc { NHWC } else { NCHW };
        let dt = data_type(call.dtype);
        let i = |v: usize| v as c_int;
        let mut d = Descriptors {
            x: std::ptr::null_mut(),
            w: std::ptr::null_mut(),
            y: std::ptr::null_mut(),
            bias: std::ptr::null_mut(),
            conv: std::ptr::null_mut(),
            identity: std::ptr::null_mut(),
        };
        // SAFETY: each descriptor is created before it is set; sizes fit in int (`ConvCall::new`).
        unsafe {
            check(sys::cudnnCreateTensorDescriptor(&mut d.x), "cudnnCreateTensorDescriptor")?;
            check(sys::cudnnSetTensor4dDescriptor(d.x, fmt, dt, i(g.n), i(g.c), i(g.h), i(g.w)), "input descriptor")?;
            check(sys::cudnnCreateFilterDescriptor(&mut d.w), "cudnnCreateFilterDescriptor")?;
            check(sys::cudnnSetFilter4dDescriptor(d.w, dt, fmt, i(g.m), i(g.c / g.group), i(g.kh), i(g.kw)), "filter descriptor")?;
            check(sys::cudnnCreateTensorDescriptor(&mut d.y), "cudnnCreateTensorDescriptor")?;
            check(sys::cudnnSetTensor4dDescriptor(d.y, fmt, dt, i(g.n), i(g.m), i(g.oh), i(g.ow)), "output descriptor")?;
            check(sys::cudnnCreateConvolutionDescriptor(&mut d.conv), "cudnnCreateConvolutionDescriptor")?;
            check(
                sys::cudnnSetConvolution2dDescriptor(
                    d.conv,
                    i(g.pad_begin.0),
                    i(g.pad_begin.1),
                    i(g.stride.0),
                    i(g.stride.1),
                    i(g.dilation.0),
                    i(g.dilation.1),
                    sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                    sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
                ),
                "convolution descriptor",
            )?;
            check(sys::cudnnSetConvolutionGroupCount(d.conv, i(g.group)), "cudnnSetConvolutionGroupCount")?;
            check(sys::cudnnSetConvolutionMathType(d.conv, base_math(call.dtype)), "cudnnSetConvolutionMathType")?;
            let (mut n, mut c, mut h, mut w) = (0, 0, 0, 0);
            check(sys::cudnnGetConvolution2dForwardOutputDim(d.conv, d.x, d.w, &mut n, &mut c, &mut h, &mut w), "cudnnGetConvolution2dForwardOutputDim")?;
            if [n, c, h, w] != [i(g.n), i(g.m), i(g.oh), i(g.ow)] {
                return Err(format!("cuDNN computes output {:?}, the plan has {:?}", [n, c, h, w], [g.n, g.m, g.oh, g.ow]));
            }
            if call.bias.is_some() {
                check(sys::cudnnCreateTensorDescriptor(&mut d.bias), "cudnnCreateTensorDescriptor")?;
                check(sys::cudnnSetTensor4dDescriptor(d.bias, NCHW, dt, 1, i(g.m), 1, 1), "bias descriptor")?;
                check(sys::cudnnCreateActivationDescriptor(&mut d.identity), "cudnnCreateActivationDescriptor")?;
                check(
                    sys::cudnnSetActivationDescriptor(d.identity, sys::cudnnActivationMode_t::CUDNN_ACTIVATION_IDENTITY, sys::cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN, 0.0),
                    "activation descriptor",
                )?;
            }
        }
        Ok(d)
    }
}

/// f32 without TF32; tensor cores for 16-bit data.
fn base_math(dtype: DType) -> sys::cudnnMathType_t {
    if dtype == DType::F32 {
        sys::cudnnMathType_t::CUDNN_FMA_MATH
    } else {
        sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
    }
}

/// Whether a candidate may run this dtype: for f32 nothing that could use TF32 tensor cores.
fn acceptable(perf: &sys::cudnnConvolutionFwdAlgoPerf_t, dtype: DType) -> bool {
    use sys::cudnnMathType_t::*;
    perf.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS
        && perf.memory <= WORKSPACE_CAP
        && (dtype != DType::F32 || !matches!(perf.mathType, CUDNN_TENSOR_OP_MATH | CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION))
}

/// A prepared shape: descriptors, algorithm and workspace size.
pub(super) struct LegacyPlan {
    descs: Descriptors,
    epilogue: Epilogue,
    algo: sys::cudnnConvolutionFwdAlgo_t,
    pub workspace: usize,
    fused_bias: bool,
    pub choice: ConvChoice,
}

// SAFETY: plain cuDNN descriptors, used by one thread at a time (under the `Dnn` mutex, or by
// the `Dnn::prepare` worker that builds it).
unsafe impl Send for LegacyPlan {}

impl LegacyPlan {
    pub fn choose(handle: sys::cudnnHandle_t, call: &ConvCall, search: AlgoSearch, p: &Pointers, ws: &mut Workspace, stream: dsys::CUstream) -> Result<LegacyPlan, String> {
        let started = Instant::now();
        let descs = Descriptors::new(call)?;
        let mut max = 0;
        // SAFETY: live handle and descriptors; the result arrays hold `max` entries.
        let ranked = unsafe {
            check(sys::cudnnGetConvolutionForwardAlgorithmMaxCount(handle, &mut max), "cudnnGetConvolutionForwardAlgorithmMaxCount")?;
            let mut perf: Vec<sys::cudnnConvolutionFwdAlgoPerf_t> = vec![std::mem::zeroed(); max.max(1) as usize];
            let mut got = 0;
            check(sys::cudnnGetConvolutionForwardAlgorithm_v7(handle, descs.x, descs.w, descs.conv, descs.y, max, &mut got, perf.as_mut_ptr()), "cudnnGetConvolutionForwardAlgorithm_v7")?;
            perf.truncate(got.max(0) as usize);
            perf
        };
        let candidates: Vec<_> = ranked.into_iter().filter(|q| acceptable(q, call.dtype)).collect();
        let best = match search {
            AlgoSearch::Heuristic => candidates.first().copied(),
            AlgoSearch::Benchmark if !candidates.is_empty() => {
                let need = candidates.iter().map(|q| q.memory).max().unwrap_or(0);
                ws.reserve(need, stream)?;
                let mut timed: Vec<sys::cudnnConvolutionFwdAlgoPerf_t> = vec![unsafe { std::mem::zeroed() }; max.max(1) as usize];
                let mut got = 0;
                // SAFETY: x, w, y are the call's live buffers (y is overwritten by the real call
                // afterwards); the workspace holds `ws.bytes` bytes.
                check(
                    unsafe {
                        sys::cudnnFindConvolutionForwardAlgorithmEx(
                            handle, descs.x, p.x as *const c_void, descs.w, p.w as *const c_void, descs.conv, descs.y, p.y as *mut c_void, max, &mut got, timed.as_mut_ptr(), ws.ptr as *mut c_void, ws.bytes,
                        )
                    },
                    "cudnnFindConvolutionForwardAlgorithmEx",
                )?;
                timed.truncate(got.max(0) as usize);
                timed.into_iter().find(|q| acceptable(q, call.dtype))
            }
            AlgoSearch::Benchmark => None,
        };
        let best = best.ok_or_else(|| format!("cuDNN offers no forward algorithm for {:?} ({}) within a {WORKSPACE_CAP}-byte workspace", call.geom, call.dtype))?;
        // The chosen variant's math mode (never tensor-op for f32: `acceptable` filtered those).
        let math = if call.dtype == DType::F32 { base_math(call.dtype) } else { best.mathType };
        let mut workspace = 0;
        // SAFETY: live handle and descriptors.
        unsafe {
            check(sys::cudnnSetConvolutionMathType(descs.conv, math), "cudnnSetConvolutionMathType")?;
            check(sys::cudnnGetConvolutionForwardWorkspaceSize(handle, descs.x, descs.w, descs.conv, descs.y, best.algo, &mut workspace), "cudnnGetConvolutionForwardWorkspaceSize")?;
        }
        let fused_bias = call.bias.is_some() && best.algo == sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;
        let choice = ConvChoice {
            api: "legacy",
            runtime_compiled: false,
            reused_engine: false,
            fallback: None,
            skipped: 0,
            algo: format!("{:?}", best.algo).trim_start_matches("CUDNN_CONVOLUTION_FWD_ALGO_").to_string(),
            math: format!("{math:?}").trim_start_matches("CUDNN_").to_string(),
            workspace_bytes: workspace,
            fused_bias,
            choose_ms: started.elapsed().as_secs_f64() * 1e3,
        };
        Ok(LegacyPlan { descs, epilogue: Epilogue::new(call)?, algo: best.algo, workspace, fused_bias, choice })
    }

    pub fn run(&mut self, handle: sys::cudnnHandle_t, p: &Pointers, ws: &Workspace) -> Result<(), String> {
        let (one, zero) = (1.0f32, 0.0f32);
        let (one, zero) = (&one as *const f32 as *const c_void, &zero as *const f32 as *const c_void);
        let d = &self.descs;
        let ws_ptr = ws.ptr as *mut c_void;
        if let (true, Some(b)) = (self.fused_bias, p.bias) {
            // z is the residual with alpha2 = 1, or y with alpha2 = 0 (read but not used).
            let (z, alpha2) = match p.residual {
                Some(r) => (r, one),
                None => (p.y, zero),
            };
            // SAFETY: live handle/descriptors; buffers sized by the plan's shapes (z has y's
            // shape); scaling factors are f32 for every data type here.
            let status = unsafe {
                sys::cudnnConvolutionBiasActivationForward(
                    handle, one, d.x, p.x as *const c_void, d.w, p.w as *const c_void, d.conv, self.algo, ws_ptr, self.workspace, alpha2, d.y, z as *const c_void, d.bias, b as *const c_void, d.identity, d.y,
                    p.y as *mut c_void,
                )
            };
            match status {
                sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS => return Ok(()),
                // Not every engine behind the algorithm takes the fused form: remember that and
                // add the bias separately from now on.
                s if format!("{s:?}").contains("NOT_SUPPORTED") => {
                    self.fused_bias = false;
                    self.choice.fused_bias = false;
                }
                s => return Err(format!("cudnnConvolutionBiasActivationForward ({}): {s:?}", self.choice.algo)),
            }
        }
        // SAFETY: as above.
        check(
            unsafe { sys::cudnnConvolutionForward(handle, one, d.x, p.x as *const c_void, d.w, p.w as *const c_void, d.conv, self.algo, ws_ptr, self.workspace, zero, d.y, p.y as *mut c_void) },
            &format!("cudnnConvolutionForward ({})", self.choice.algo),
        )?;
        self.epilogue.run(handle, p)
    }
}

/// Adds the bias and the residual to a convolution's output in place (`cudnnAddTensor`).
pub(super) struct Epilogue {
    y: sys::cudnnTensorDescriptor_t,
    bias: sys::cudnnTensorDescriptor_t,
}

// SAFETY: plain cuDNN descriptors, used only under the `Dnn` mutex.
unsafe impl Send for Epilogue {}

impl Drop for Epilogue {
    fn drop(&mut self) {
        // SAFETY: each descriptor is destroyed once (null ones were never created).
        unsafe {
            for t in [self.y, self.bias] {
                if !t.is_null() {
                    sys::cudnnDestroyTensorDescriptor(t);
                }
            }
        }
    }
}

impl Epilogue {
    pub fn new(call: &ConvCall) -> Result<Epilogue, String> {
        use sys::cudnnTensorFormat_t::{CUDNN_TENSOR_NCHW as NCHW, CUDNN_TENSOR_NHWC as NHWC};
        let g = &call.geom;
        let fmt = if call.layout == ConvLayout::Nhwc { NHWC } else { NCHW };
        let dt = data_type(call.dtype);
        let i = |v: usize| v as c_int;
        let mut e = Epilogue { y: std::ptr::null_mut(), bias: std::ptr::null_mut() };
        // SAFETY: each descriptor is created before it is set; sizes fit in int (`ConvCall::new`).
        unsafe {
            check(sys::cudnnCreateTensorDescriptor(&mut e.y), "cudnnCreateTensorDescriptor")?;
            check(sys::cudnnSetTensor4dDescriptor(e.y, fmt, dt, i(g.n), i(g.m), i(g.oh), i(g.ow)), "output descriptor")?;
            check(sys::cudnnCreateTensorDescriptor(&mut e.bias), "cudnnCreateTensorDescriptor")?;
            check(sys::cudnnSetTensor4dDescriptor(e.bias, NCHW, dt, 1, i(g.m), 1, 1), "bias descriptor")?;
        }
        Ok(e)
    }

    /// y += bias (broadcast over N, H, W), then y += residual, as `p` has them.
    pub fn run(&self, handle: sys::cudnnHandle_t, p: &Pointers) -> Result<(), String> {
        let one = &1.0f32 as *const f32 as *const c_void;
        // SAFETY: live handle and descriptors; y, bias and residual sized by the call's shapes.
        unsafe {
            if let Some(b) = p.bias {
                check(sys::cudnnAddTensor(handle, one, self.bias, b as *const c_void, one, self.y, p.y as *mut c_void), "cudnnAddTensor (bias)")?;
            }
            if let Some(r) = p.residual {
                check(sys::cudnnAddTensor(handle, one, self.y, r as *const c_void, one, self.y, p.y as *mut c_void), "cudnnAddTensor (residual)")?;
            }
        }
        Ok(())
    }
}
