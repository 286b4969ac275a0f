//! Convolution through cuDNN's forward-convolution API (cudarc's `cudnn` bindings; libcudnn 9.x
//! opened at run time).
//!
//! - Layout: NCHW tensors and KCRS filters, as the ONNX graph stores them. cuDNN runs f16 NCHW
//!   2-3× slower than NHWC on the H100 (see the results file), so `ConvLayout::Nhwc` (NHWC
//!   tensors, KRSC filters) is ready for a planner that keeps activations channels-last.
//! - Precision: f32, f16 and bf16 data, f32 compute. f32 convolutions use `CUDNN_FMA_MATH`:
//!   cuDNN's default math mode allows TF32 on Ampere and later, which would not match the CPU
//!   reference at 1e-4. f16/bf16 use `CUDNN_TENSOR_OP_MATH`.
//! - Algorithm: chosen once per concrete shape (dtype, geometry, bias) and cached in the `Dnn`
//!   that runs it, together with its descriptors; the workspace is sized from the choice (at most
//!   `WORKSPACE_CAP`) and kept across calls, so a repeat call is one cuDNN call. The choice is
//!   cuDNN's heuristic (`cudnnGetConvolutionForwardAlgorithm_v7`, no GPU work, safe inside CUDA
//!   graph capture) unless `QUILT_CUDNN_ALGO=benchmark`, which times the candidates on the real
//!   buffers (`cudnnFindConvolutionForwardAlgorithmEx`) on the first call at each shape.
//! - Bias: `cudnnConvolutionBiasActivationForward` with the identity activation when the chosen
//!   algorithm is IMPLICIT_PRECOMP_GEMM (the only one cuDNN allows with identity), otherwise the
//!   convolution followed by `cudnnAddTensor`.
//!
//! A new shape's first call (descriptor setup, algorithm choice, workspace growth) synchronises
//! the stream when the workspace grows; run every shape once before capturing a CUDA graph.

use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use cudarc::cudnn::sys;
use cudarc::driver::{result as drv, sys as dsys};
use quilt_rewrites::DType;

use super::ConvGeometry;
use crate::cuda::codegen::Arg;

/// Largest workspace a convolution may use (algorithms wanting more are skipped): the memory
/// target is a few hundred MB over the weights for the whole UNet.
pub const WORKSPACE_CAP: usize = 64 << 20;

/// Convolutions cuDNN has run in this process (tests check that the cuDNN path was taken).
static CALLS: AtomicU64 = AtomicU64::new(0);

pub fn calls() -> u64 {
    CALLS.load(Ordering::Relaxed)
}

pub fn supports_dtype(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

/// cuDNN's version (e.g. 91900) when libcudnn 9 loads with its convolution sub-libraries. Probed
/// once; a failure is reported once on stderr, and convolutions then run as im2col + cuBLAS.
pub fn library() -> Result<usize, String> {
    static LIB: OnceLock<Result<usize, String>> = OnceLock::new();
    LIB.get_or_init(|| {
        let probed = probe();
        if let Err(e) = &probed {
            eprintln!("quilt: {e}; Conv runs as im2col + cuBLAS");
        }
        probed
    })
    .clone()
}

fn probe() -> Result<usize, String> {
    // SAFETY: only tries to open the library.
    if !unsafe { sys::is_culib_present() } {
        return Err("libcudnn.so.9 could not be loaded (put cuDNN 9's lib directory on LD_LIBRARY_PATH)".into());
    }
    // SAFETY: the library is present; these take no arguments.
    let version = unsafe { sys::cudnnGetVersion() };
    if !(90000..100000).contains(&version) {
        return Err(format!("cuDNN {version} found, quilt's bindings need 9.x"));
    }
    // SAFETY: as above. These load libcudnn_ops/libcudnn_cnn and compare their versions.
    unsafe {
        check(sys::cudnnOpsVersionCheck(), "cudnnOpsVersionCheck")?;
        check(sys::cudnnCnnVersionCheck(), "cudnnCnnVersionCheck")?;
    }
    Ok(version)
}

fn check(status: sys::cudnnStatus_t, what: &str) -> Result<(), String> {
    match status {
        sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS => Ok(()),
        other => Err(format!("{what}: {other:?}")),
    }
}

/// How x, w and y are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvLayout {
    /// x, y NCHW and w KCRS: the ONNX layout.
    Nchw,
    /// x, y NHWC and w KRSC: the layout cuDNN's tensor-core kernels use natively (for a planner
    /// that keeps activations channels-last; the executor's Conv steps use NCHW).
    Nhwc,
}

/// One convolution for the executor: input 0 = x, 1 = w, 2 = bias (K), output 0 = y.
#[derive(Clone, Debug)]
pub struct ConvCall {
    pub geom: ConvGeometry,
    pub dtype: DType,
    pub layout: ConvLayout,
    pub x: Arg,
    pub w: Arg,
    pub bias: Option<Arg>,
    pub y: Arg,
}

impl ConvCall {
    /// The call, or why cuDNN cannot run this geometry (the caller falls back to im2col).
    pub fn new(geom: ConvGeometry, dtype: DType, has_bias: bool) -> Result<ConvCall, String> {
        let g = &geom;
        if !supports_dtype(dtype) {
            return Err(format!("cuDNN is not used for {dtype}"));
        }
        if g.pad_begin != g.pad_end {
            return Err(format!("asymmetric pads {:?} / {:?}", g.pad_begin, g.pad_end));
        }
        let dims = [g.n, g.c, g.h, g.w, g.m, g.kh, g.kw, g.oh, g.ow];
        if dims.contains(&0) {
            return Err("an empty dimension".into());
        }
        // The legacy API takes int sizes and indexes each tensor with 32-bit offsets.
        let limit = i32::MAX as usize;
        let (x, w, y) = (g.n * g.c * g.h * g.w, g.m * (g.c / g.group) * g.kh * g.kw, g.out_elems());
        if x > limit || w > limit || y > limit {
            return Err(format!("tensors of {x}, {w} and {y} elements exceed cuDNN's 32-bit sizes"));
        }
        Ok(ConvCall { geom, dtype, layout: ConvLayout::Nchw, x: Arg::In(0), w: Arg::In(1), bias: has_bias.then_some(Arg::In(2)), y: Arg::Out(0) })
    }

    /// The same call on channels-last data.
    pub fn nhwc(mut self) -> ConvCall {
        self.layout = ConvLayout::Nhwc;
        self
    }

    fn key(&self) -> ShapeKey {
        (self.dtype, self.layout, self.geom, self.bias.is_some())
    }
}

/// How the algorithm of a new shape is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlgoSearch {
    /// cuDNN's heuristic ranking (no GPU work).
    Heuristic,
    /// Time the candidates on the first call's buffers.
    Benchmark,
}

impl AlgoSearch {
    /// `QUILT_CUDNN_ALGO=benchmark|heuristic` (default heuristic).
    pub fn from_env() -> AlgoSearch {
        match std::env::var("QUILT_CUDNN_ALGO").as_deref() {
            Ok("benchmark") => AlgoSearch::Benchmark,
            _ => AlgoSearch::Heuristic,
        }
    }
}

/// What was chosen for one shape (for reports and benchmarks).
#[derive(Clone, Debug)]
pub struct ConvChoice {
    pub algo: String,
    pub math: String,
    pub workspace_bytes: usize,
    /// Bias added inside the convolution call.
    pub fused_bias: bool,
    /// Time spent choosing (descriptors + heuristic or benchmark).
    pub choose_ms: f64,
}

/// A cuDNN handle (created on first use, on the thread's current context), the per-shape
/// algorithm cache and the workspace. One per executable; calls are serialised by a mutex.
pub struct Dnn {
    search: AlgoSearch,
    inner: Mutex<Inner>,
}

type ShapeKey = (DType, ConvLayout, ConvGeometry, bool);

struct Inner {
    handle: sys::cudnnHandle_t,
    shapes: HashMap<ShapeKey, ShapePlan>,
    workspace: Workspace,
}

// SAFETY: the handle, descriptors and workspace are only used under the mutex.
unsafe impl Send for Dnn {}
unsafe impl Sync for Dnn {}

impl Default for Dnn {
    fn default() -> Dnn {
        Dnn::new(AlgoSearch::from_env())
    }
}

impl Dnn {
    pub fn new(search: AlgoSearch) -> Dnn {
        Dnn { search, inner: Mutex::new(Inner { handle: std::ptr::null_mut(), shapes: HashMap::new(), workspace: Workspace::default() }) }
    }

    /// Runs `call` on `stream` with `ptr` resolving each argument to a device pointer. The
    /// context the pointers belong to must be current.
    pub fn conv(&self, call: &ConvCall, stream: dsys::CUstream, ptr: &dyn Fn(Arg) -> u64) -> Result<(), String> {
        library()?;
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *guard;
        if inner.handle.is_null() {
            let mut h = std::ptr::null_mut();
            // SAFETY: creates a handle on the current context.
            check(unsafe { sys::cudnnCreate(&mut h) }, "cudnnCreate")?;
            inner.handle = h;
        }
        // SAFETY: a live handle; the stream belongs to the current context.
        check(unsafe { sys::cudnnSetStream(inner.handle, stream as sys::cudaStream_t) }, "cudnnSetStream")?;
        let p = Pointers { x: ptr(call.x), w: ptr(call.w), bias: call.bias.map(ptr), y: ptr(call.y) };
        if !inner.shapes.contains_key(&call.key()) {
            let plan = ShapePlan::choose(inner.handle, call, self.search, &p, &mut inner.workspace, stream)?;
            inner.shapes.insert(call.key(), plan);
        }
        let plan = inner.shapes.get_mut(&call.key()).expect("inserted above");
        inner.workspace.reserve(plan.workspace, stream)?;
        plan.run(inner.handle, &p, &inner.workspace)?;
        CALLS.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The choice made for `call`'s shape, once it has run.
    pub fn choice(&self, call: &ConvCall) -> Option<ConvChoice> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.shapes.get(&call.key()).map(|s| s.choice.clone())
    }

    /// Distinct shapes prepared so far.
    pub fn shapes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).shapes.len()
    }
}

impl Drop for Dnn {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        inner.shapes.clear();
        if !inner.handle.is_null() {
            // SAFETY: the handle is not used after this.
            let _ = unsafe { sys::cudnnDestroy(inner.handle) };
        }
    }
}

struct Pointers {
    x: u64,
    w: u64,
    bias: Option<u64>,
    y: u64,
}

/// Device memory for cuDNN's workspace, grown on demand (plain allocation: it outlives any one
/// stream's work, and growth waits for the stream before freeing the old block).
#[derive(Default)]
struct Workspace {
    ptr: u64,
    bytes: usize,
}

impl Workspace {
    fn reserve(&mut self, bytes: usize, stream: dsys::CUstream) -> Result<(), String> {
        if bytes <= self.bytes {
            return Ok(());
        }
        if self.ptr != 0 {
            // SAFETY: queued work may still use the old block; wait for it, then free it.
            unsafe {
                drv::stream::synchronize(stream).map_err(|e| format!("synchronising before growing the cuDNN workspace: {e}"))?;
                drv::free_sync(self.ptr).map_err(|e| format!("freeing the cuDNN workspace: {e}"))?;
            }
            self.ptr = 0;
            self.bytes = 0;
        }
        // SAFETY: the caller's context is current.
        self.ptr = unsafe { drv::malloc_sync(bytes) }.map_err(|e| format!("allocating a {bytes}-byte cuDNN workspace: {e}"))?;
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if self.ptr != 0 {
            // SAFETY: no cuDNN call uses the workspace after its owner is dropped.
            let _ = unsafe { drv::free_sync(self.ptr) };
        }
    }
}

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

fn data_type(dtype: DType) -> sys::cudnnDataType_t {
    match dtype {
        DType::F16 => sys::cudnnDataType_t::CUDNN_DATA_HALF,
        DType::BF16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
        _ => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
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
struct ShapePlan {
    descs: Descriptors,
    algo: sys::cudnnConvolutionFwdAlgo_t,
    workspace: usize,
    fused_bias: bool,
    choice: ConvChoice,
}

impl ShapePlan {
    fn choose(handle: sys::cudnnHandle_t, call: &ConvCall, search: AlgoSearch, p: &Pointers, ws: &mut Workspace, stream: dsys::CUstream) -> Result<ShapePlan, String> {
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
            algo: format!("{:?}", best.algo).trim_start_matches("CUDNN_CONVOLUTION_FWD_ALGO_").to_string(),
            math: format!("{math:?}").trim_start_matches("CUDNN_").to_string(),
            workspace_bytes: workspace,
            fused_bias,
            choose_ms: started.elapsed().as_secs_f64() * 1e3,
        };
        Ok(ShapePlan { descs, algo: best.algo, workspace, fused_bias, choice })
    }

    fn run(&mut self, handle: sys::cudnnHandle_t, p: &Pointers, ws: &Workspace) -> Result<(), String> {
        let (one, zero) = (1.0f32, 0.0f32);
        let (one, zero) = (&one as *const f32 as *const c_void, &zero as *const f32 as *const c_void);
        let d = &self.descs;
        let ws_ptr = ws.ptr as *mut c_void;
        if let (true, Some(b)) = (self.fused_bias, p.bias) {
            // SAFETY: live handle/descriptors; buffers sized by the plan's shapes; z = y with
            // alpha2 = 0 (read but not used); scaling factors are f32 for every data type here.
            let status = unsafe {
                sys::cudnnConvolutionBiasActivationForward(
                    handle, one, d.x, p.x as *const c_void, d.w, p.w as *const c_void, d.conv, self.algo, ws_ptr, self.workspace, zero, d.y, p.y as *const c_void, d.bias, b as *const c_void, d.identity, d.y,
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
        unsafe {
            check(
                sys::cudnnConvolutionForward(handle, one, d.x, p.x as *const c_void, d.w, p.w as *const c_void, d.conv, self.algo, ws_ptr, self.workspace, zero, d.y, p.y as *mut c_void),
                &format!("cudnnConvolutionForward ({})", self.choice.algo),
            )?;
            if let Some(b) = p.bias {
                check(sys::cudnnAddTensor(handle, one, d.bias, b as *const c_void, one, d.y, p.y as *mut c_void), "cudnnAddTensor (bias)")?;
            }
        }
        Ok(())
    }
}
