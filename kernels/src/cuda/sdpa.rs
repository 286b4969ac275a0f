//! Fused attention through cuDNN's SDPA forward engines (graph API): `O = softmax(scale·Q·Kᵀ)·V`
//! over [batch, heads, rows, head dim] views of the step's buffers, no mask, 16-bit data with
//! f32 softmax statistics. An alternative to the flash-attention kernel
//! (`codegen::flash_attention`) for the shapes it takes (`SdpaCall::eligible`); the attention step
//! carries its own kernel launch as the fallback, which runs when cuDNN has no engine for a shape
//! (decided once per shape, at its first call).
//!
//! Two graphs describe the same computation (facts in docs/research/cudnn-sdpa-backend.md):
//! - **unified** (cuDNN ≥ 9.13.1): one `OPERATION_SDPA_FWD` node over Q, K, V, O and a by-value
//!   scale;
//! - **composite** (all of cuDNN 9): the ten-node chain cuDNN's fused attention engines match —
//!   S = Q·Kᵀ (K as a transposed view, no copy), S·scale, the row max, exp(S − max), the row sum,
//!   the log-sum-exp statistics (kept virtual: inference needs none, but the pattern has them),
//!   P = E / sum in the data's 16-bit type, O = P·V.
//!
//! The unified graph is tried first where the library has it, the composite one after (or first,
//! with `QUILT_SDPA_GRAPH=composite`). The engine is the first configuration of cuDNN's
//! heuristics (mode A, then the fallback list) whose plan finalizes within `WORKSPACE_CAP`. A
//! repeat call is one `cudnnBackendExecute` with the variant pack kept while the pointers stay.
//!
//! Building a plan costs 40-63 ms at SD's 64² shapes and 724 ms at 96² (H100, session 9; cuDNN
//! compiles the engine's kernel when the plan is finalized). The first shape an executable runs
//! builds its plans at once, as part of that first call; later shapes (a new batch or image size)
//! build theirs on a worker thread with its own cuDNN handle and run the flash kernel until the
//! plan is ready, so a first call at a new shape waits for no compilation (`SdpaPlans`; on the
//! H100 a new shape's first call cost 74.6 and 851 ms over a repeat with the builds inside it,
//! 40.5 and 30.8 ms with them in the background, session 10). The executor recaptures its CUDA graph when a plan becomes ready
//! (`SdpaPlans::settle`'s count changes); `QUILT_SDPA_BACKGROUND=0` builds every shape's plans
//! inside its first call instead. `QUILT_SDPA_DYNAMIC=1` (opt-in, not measured) builds
//! dynamic-shape graphs whose plans share one kernel cache per class (dtype, heads, head dims)
//! among the plans built on the calling thread.

use std::collections::HashMap;
use std::ffi::c_void;
use std::thread::JoinHandle;
use std::time::Instant;

use cudarc::cudnn::sys;
use sys::cudnnBackendAttributeName_t as A;
use sys::cudnnBackendAttributeType_t as T;
use sys::cudnnBackendDescriptorType_t as D;

use quilt_rewrites::DType;

use super::codegen::{Action, Arg};
use super::conv::cudnn::{data_type, Workspace, WORKSPACE_CAP};
use cudarc::driver::{result as drv, sys as dsys};
use super::cudnn_backend::{self as be, check, Binding, Desc};
use super::env;

/// The largest head dim cuDNN's Hopper SDPA forward engines take.
pub const MAX_HEAD_DIM: usize = 256;

const UID_Q: i64 = 1;
const UID_K: i64 = 2;
const UID_V: i64 = 3;
const UID_O: i64 = 4;
const UID_SCALE: i64 = 5;

/// One attention step for cuDNN: `b` batch entries × `h` heads of an `n`×`m` problem.
#[derive(Clone, Debug)]
pub struct SdpaCall {
    pub dtype: DType,
    pub b: usize,
    pub h: usize,
    pub n: usize,
    pub m: usize,
    pub d: usize,
    pub dv: usize,
    /// Element strides (batch, head, row) of q, k, v and the output; the last dim is contiguous.
    pub strides: [[usize; 3]; 4],
    pub scale: f32,
    /// q, k, v and the output.
    pub args: [Arg; 4],
    /// What runs instead when cuDNN has no engine for this shape (the step's own kernel).
    pub fallback: Box<Action>,
}

/// Everything a plan depends on: the call without its arguments, and the pointers' alignment.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SdpaKey {
    dtype: DType,
    dims: [usize; 6],
    strides: [[usize; 3]; 4],
    scale_bits: u32,
    align: u8,
}

impl SdpaCall {
    /// Whether cuDNN's engines may take attention of this kind: q, k, v and the output of one
    /// 16-bit float dtype, head dims multiples of 8 up to `MAX_HEAD_DIM` (cuDNN's rule), and
    /// every stride and column offset a multiple of 8 elements (16-byte rows and heads).
    pub fn eligible(dtype: DType, d: usize, dv: usize, strides: &[[usize; 3]; 4], bases: &[usize]) -> bool {
        matches!(dtype, DType::F16 | DType::BF16)
            && [d, dv].iter().all(|&x| x > 0 && x % 8 == 0 && x <= MAX_HEAD_DIM)
            && strides.iter().flatten().chain(bases).all(|&s| s % 8 == 0)
    }

    /// The class a plan's kernel cache is shared in: (dtype, heads, head dims).
    pub fn class(&self) -> (DType, usize, usize, usize) {
        (self.dtype, self.h, self.d, self.dv)
    }

    pub fn key(&self, align: u8) -> SdpaKey {
        SdpaKey { dtype: self.dtype, dims: [self.b, self.h, self.n, self.m, self.d, self.dv], strides: self.strides, scale_bits: self.scale.to_bits(), align }
    }

    /// [b, h, rows, width] and the strides of tensor `i` (0 q, 1 k, 2 v, 3 output).
    fn view(&self, i: usize) -> ([i64; 4], [i64; 4]) {
        let (rows, width) = match i {
            0 => (self.n, self.d),
            1 => (self.m, self.d),
            2 => (self.m, self.dv),
            _ => (self.n, self.dv),
        };
        let [sb, sh, sr] = self.strides[i];
        ([self.b, self.h, rows, width].map(|x| x as i64), [sb, sh, sr, 1].map(|x| x as i64))
    }
}

/// Which graph describes the attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SdpaGraph {
    Unified,
    Composite,
}

/// The graphs to try, in order, for cuDNN `version`: `QUILT_SDPA_GRAPH=unified|composite` puts
/// one first; the unified node needs 9.13.1.
fn graph_order(version: usize) -> Vec<SdpaGraph> {
    let unified = version >= 91301;
    match std::env::var("QUILT_SDPA_GRAPH").as_deref() {
        Ok("composite") => vec![SdpaGraph::Composite],
        Ok("unified") if unified => vec![SdpaGraph::Unified],
        _ if unified => vec![SdpaGraph::Unified, SdpaGraph::Composite],
        _ => vec![SdpaGraph::Composite],
    }
}

/// A finalized plan for one shape, and the descriptors it refers to.
pub struct SdpaPlan {
    _parts: Vec<Desc>,
    _op_graph: Desc,
    _cfg: Desc,
    plan: Desc,
    pub workspace: usize,
    /// The scale, at a stable host address (the variant pack points at it).
    scale: Box<f32>,
    /// The pack for the last pointers and workspace.
    variant: Option<(Desc, [u64; 4], u64)>,
    /// Which graph and engine, e.g. `unified eng5`.
    pub tag: String,
    /// Time to build the graph and query the heuristics, and to finalize the plan.
    pub graph_ms: f64,
    pub finalize_ms: f64,
}

/// What the shapes of one class (dtype, heads, head dims) share: with dynamic shapes, the kernel
/// cache their plans are finalized through.
#[derive(Default)]
pub struct SdpaClass {
    kernel_cache: Option<Desc>,
}

// SAFETY: as `SdpaPlan`.
unsafe impl Send for SdpaClass {}

/// `QUILT_SDPA_DYNAMIC=1`: dynamic-shape graphs sharing a kernel cache per class.
pub fn dynamic_shapes() -> bool {
    env::on("QUILT_SDPA_DYNAMIC")
}

// SAFETY: descriptors are plain cuDNN objects, used only under the `Dnn` mutex.
unsafe impl Send for SdpaPlan {}

impl SdpaPlan {
    /// Builds the plan for `call` on `handle` (cuDNN `version`), or says why no engine takes it.
    /// `class` is what earlier shapes of the class left (the kernel cache, with `dynamic`).
    pub(crate) fn build(handle: sys::cudnnHandle_t, version: usize, call: &SdpaCall, align: u8, class: &mut SdpaClass, dynamic: bool) -> Result<SdpaPlan, String> {
        let mut why = Vec::new();
        for kind in graph_order(version) {
            let started = Instant::now();
            let built = build_graph(handle, call, align as i64, kind, dynamic).and_then(|(parts, op_graph)| {
                if dynamic && class.kernel_cache.is_none() {
                    class.kernel_cache = Some(be::kernel_cache(&op_graph)?);
                }
                let (cfg, plan, workspace, engine, finalize_ms) = first_engine(handle, &op_graph, class.kernel_cache.as_ref())?;
                let total_ms = started.elapsed().as_secs_f64() * 1e3;
                Ok(SdpaPlan {
                    _parts: parts,
                    _op_graph: op_graph,
                    _cfg: cfg,
                    plan,
                    workspace,
                    scale: Box::new(call.scale),
                    variant: None,
                    tag: format!("{} eng{engine}{}", if kind == SdpaGraph::Unified { "unified" } else { "composite" }, if dynamic { " dynamic" } else { "" }),
                    graph_ms: total_ms - finalize_ms,
                    finalize_ms,
                })
            });
            match built {
                Ok(p) => return Ok(p),
                Err(e) => why.push(format!("{kind:?}: {e}")),
            }
        }
        Err(format!("cuDNN SDPA (version {version}) has no engine for b={} h={} n={} m={} d={} dv={}: {}", call.b, call.h, call.n, call.m, call.d, call.dv, why.join("; ")))
    }

    /// Queues the attention on the handle's stream (`ptrs`: q, k, v, output).
    pub(crate) fn run(&mut self, handle: sys::cudnnHandle_t, ptrs: [u64; 4], workspace: u64) -> Result<(), String> {
        if self.variant.as_ref().is_none_or(|(_, p, w)| *p != ptrs || *w != workspace) {
            // The scale is by value: its entry is the host address of the plan's own copy.
            let scale = &*self.scale as *const f32 as *mut c_void;
            let [q, k, v, o] = ptrs.map(|p| p as *mut c_void);
            let pack = be::variant_pack(&[UID_Q, UID_K, UID_V, UID_O, UID_SCALE], &[q, k, v, o, scale], workspace)?;
            self.variant = Some((pack, ptrs, workspace));
        }
        let (pack, _, _) = self.variant.as_ref().expect("built above");
        // SAFETY: a finalized plan; the pack's pointers are live device buffers and the scale's
        // host word, owned by this plan.
        check(unsafe { sys::cudnnBackendExecute(handle, self.plan.0, pack.0) }, &|| format!("cudnnBackendExecute (SDPA, {})", self.tag))
    }
}

/// A cuDNN handle that moves to the thread owning the plan it built.
struct WorkerHandle(sys::cudnnHandle_t);

// SAFETY: used by one thread at a time: the worker while it builds, then the `Dnn` mutex holder.
unsafe impl Send for WorkerHandle {}

/// A context pointer handed to a worker thread.
struct Context(dsys::CUcontext);

// SAFETY: a CUDA context may be made current on any thread.
unsafe impl Send for Context {}

/// One shape's plan: built (on `handle` when a worker built it), declined, or being built.
enum Entry {
    Ready { plan: SdpaPlan, handle: Option<sys::cudnnHandle_t> },
    Declined(String),
    Building(JoinHandle<(Result<SdpaPlan, String>, WorkerHandle)>),
}

/// The SDPA plans of one `Dnn`: per shape key, with the classes' shared state. Shapes met after
/// `background` is set build on worker threads (module doc).
#[derive(Default)]
pub struct SdpaPlans {
    entries: HashMap<SdpaKey, Entry>,
    classes: HashMap<(DType, usize, usize, usize), SdpaClass>,
    background: bool,
}

// SAFETY: descriptors and handles are plain cuDNN objects, used only under the `Dnn` mutex.
unsafe impl Send for SdpaPlans {}

impl SdpaPlans {
    /// Later new shapes build their plans on worker threads (unless `QUILT_SDPA_BACKGROUND=0`:
    /// inside their first call, as the first shape does).
    pub fn build_in_background(&mut self) {
        self.background = env::default_on("QUILT_SDPA_BACKGROUND");
    }

    /// Queues `call` on `stream` through its plan (`main`: the `Dnn`'s handle, cuDNN `version`),
    /// building or starting to build it at the shape's first call. `Ok(false)`: no plan (yet),
    /// the caller runs `call.fallback`.
    pub(crate) fn run(&mut self, main: sys::cudnnHandle_t, version: usize, call: &SdpaCall, ptrs: [u64; 4], ws: &mut Workspace, stream: dsys::CUstream) -> Result<bool, String> {
        let align = be::byte_alignment(ptrs);
        let key = call.key(align);
        self.settle(Some(&key));
        if !self.entries.contains_key(&key) {
            let entry = if self.background {
                let ctx = Context(drv::ctx::get_current().map_err(|e| format!("reading the current context: {e}"))?.ok_or("no current CUDA context")?);
                let call = call.clone();
                Entry::Building(std::thread::spawn(move || build_on_worker(ctx, version, &call, align)))
            } else {
                let class = self.classes.entry(call.class()).or_default();
                match SdpaPlan::build(main, version, call, align, class, dynamic_shapes()) {
                    Ok(plan) => Entry::Ready { plan, handle: None },
                    Err(e) => Entry::Declined(e),
                }
            };
            self.entries.insert(key.clone(), entry);
        }
        let Some(Entry::Ready { plan, handle }) = self.entries.get_mut(&key) else { return Ok(false) };
        let handle = handle.unwrap_or(main);
        // SAFETY: a live handle; the stream belongs to the current context.
        check(unsafe { sys::cudnnSetStream(handle, stream as sys::cudaStream_t) }, &|| "cudnnSetStream".into())?;
        ws.reserve(plan.workspace, stream)?;
        plan.run(handle, ptrs, ws.ptr)?;
        Ok(true)
    }

    /// Takes in the finished background builds (only `key`'s when given); returns how many
    /// shapes have a settled outcome (a plan or a refusal). A change means a CUDA graph captured
    /// before it may have run the fallback where cuDNN would run now.
    pub fn settle(&mut self, key: Option<&SdpaKey>) -> usize {
        let done: Vec<SdpaKey> = self.entries.iter().filter(|(k, e)| key.is_none_or(|want| want == *k) && matches!(e, Entry::Building(h) if h.is_finished())).map(|(k, _)| k.clone()).collect();
        for k in done {
            let Some(Entry::Building(h)) = self.entries.remove(&k) else { continue };
            let entry = match h.join() {
                Ok((Ok(plan), handle)) => Entry::Ready { plan, handle: Some(handle.0) },
                Ok((Err(e), handle)) => {
                    destroy(handle.0);
                    Entry::Declined(e)
                }
                Err(_) => Entry::Declined("the worker building the plan panicked".into()),
            };
            self.entries.insert(k, entry);
        }
        self.entries.values().filter(|e| !matches!(e, Entry::Building(_))).count()
    }

    /// One line per shape: its engine, or why cuDNN declined it, or that it is being built.
    pub fn report(&self) -> Vec<String> {
        self.entries
            .values()
            .map(|e| match e {
                Entry::Ready { plan: p, handle } => format!("cuDNN SDPA: {} ({:.1} ms graph and heuristics, {:.1} ms finalize{}, workspace {} bytes)", p.tag, p.graph_ms, p.finalize_ms, if handle.is_some() { ", built in the background" } else { "" }, p.workspace),
                Entry::Declined(e) => format!("cuDNN SDPA declined: {e}"),
                Entry::Building(_) => "cuDNN SDPA: being built in the background".into(),
            })
            .collect()
    }
}

impl Drop for SdpaPlans {
    fn drop(&mut self) {
        for (_, e) in self.entries.drain() {
            match e {
                Entry::Ready { plan, handle } => {
                    drop(plan);
                    if let Some(h) = handle {
                        destroy(h);
                    }
                }
                Entry::Building(h) => {
                    if let Ok((plan, handle)) = h.join() {
                        drop(plan);
                        destroy(handle.0);
                    }
                }
                Entry::Declined(_) => {}
            }
        }
        self.classes.clear();
    }
}

fn destroy(handle: sys::cudnnHandle_t) {
    if !handle.is_null() {
        // SAFETY: a handle created by `build_on_worker` whose plans are dropped; not used after.
        let _ = unsafe { sys::cudnnDestroy(handle) };
    }
}

/// A worker thread's build: `ctx` made current, a handle of its own, the plan on it.
fn build_on_worker(ctx: Context, version: usize, call: &SdpaCall, align: u8) -> (Result<SdpaPlan, String>, WorkerHandle) {
    let mut handle = WorkerHandle(std::ptr::null_mut());
    // SAFETY: the context outlives the `Dnn` that joins this thread.
    if let Err(e) = unsafe { drv::ctx::set_current(ctx.0) } {
        return (Err(format!("making the context current on the SDPA worker: {e}")), handle);
    }
    // SAFETY: creates a handle on the current context.
    if let Err(e) = check(unsafe { sys::cudnnCreate(&mut handle.0) }, &|| "cudnnCreate on the SDPA worker".into()) {
        return (Err(e), handle);
    }
    let plan = SdpaPlan::build(handle.0, version, call, align, &mut SdpaClass::default(), dynamic_shapes());
    let plan = plan.and_then(|mut p| warm_up(handle.0, &mut p, call).map(|()| p));
    (plan, handle)
}

/// Runs a freshly built plan once on scratch memory and a private stream, so that whatever cuDNN
/// does at a plan's first execution happens here and not inside the executor's CUDA graph
/// capture (the executor captures the plan's first real call). q, k, v and the output share one
/// uninitialised block as large as the widest of them (35 MB at SD's 96² self-attention): only
/// that the call completes matters, not what it computes.
fn warm_up(handle: sys::cudnnHandle_t, plan: &mut SdpaPlan, call: &SdpaCall) -> Result<(), String> {
    let elem = call.dtype.size_bytes();
    let extent = (0..4)
        .map(|i| {
            let (dims, strides) = call.view(i);
            let last: i64 = dims.iter().zip(&strides).map(|(d, s)| (d - 1).max(0) * s).sum();
            (last as usize + 1) * elem
        })
        .max()
        .unwrap_or(0);
    let data = extent.div_ceil(256) * 256;
    let total = data + plan.workspace.div_ceil(256) * 256 + 256;
    let err = |what: &str, e: drv::DriverError| format!("{what} for the SDPA warm-up: {e}");
    // SAFETY: the worker's context is current; memory and stream are released below.
    unsafe {
        let stream = drv::stream::create(drv::stream::StreamKind::NonBlocking).map_err(|e| err("creating a stream", e))?;
        let base = match drv::malloc_sync(total) {
            Ok(b) => b,
            Err(e) => {
                let _ = drv::stream::destroy(stream);
                return Err(err("allocating scratch", e));
            }
        };
        let ran = check(sys::cudnnSetStream(handle, stream as sys::cudaStream_t), &|| "cudnnSetStream".into())
            .and_then(|()| plan.run(handle, [base; 4], base + data as u64))
            .and_then(|()| drv::stream::synchronize(stream).map_err(|e| err("synchronising", e)));
        // The pack points at the scratch: drop it so the first real call builds its own.
        plan.variant = None;
        let _ = drv::free_sync(base);
        let _ = drv::stream::destroy(stream);
        ran
    }
}

/// The first engine configuration of the heuristics (mode A, then the fallback list) whose plan
/// finalizes (through `kernel_cache` when given) within `WORKSPACE_CAP`: (configuration, plan,
/// workspace bytes, global engine index, ms spent finalizing).
fn first_engine(handle: sys::cudnnHandle_t, op_graph: &Desc, kernel_cache: Option<&Desc>) -> Result<(Desc, Desc, usize, i64, f64), String> {
    use sys::cudnnBackendHeurMode_t::*;
    let mut why = Vec::new();
    for mode in [CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK] {
        let cfgs = match be::engine_configs(op_graph, mode) {
            Ok(c) => c,
            Err(e) => {
                why.push(e);
                continue;
            }
        };
        for cfg in cfgs {
            let engine = cfg.get_descs(A::CUDNN_ATTR_ENGINECFG_ENGINE, D::CUDNN_BACKEND_ENGINE_DESCRIPTOR, 1)?;
            let index = engine.first().map(|e| e.get_i64(A::CUDNN_ATTR_ENGINE_GLOBAL_INDEX)).transpose()?.unwrap_or(-1);
            let started = Instant::now();
            match be::execution_plan(handle, &cfg, kernel_cache, &format!("SDPA engine {index}")) {
                Ok((_, ws)) if ws > WORKSPACE_CAP => why.push(format!("engine {index}: workspace {ws} bytes over the cap")),
                Ok((plan, ws)) => return Ok((cfg, plan, ws, index, started.elapsed().as_secs_f64() * 1e3)),
                Err(e) => why.push(e),
            }
        }
    }
    Err(if why.is_empty() { "the heuristics proposed no engine".into() } else { why.join("; ") })
}

/// The operation graph of `kind` for `call`, and the descriptors it refers to.
fn build_graph(handle: sys::cudnnHandle_t, call: &SdpaCall, align: i64, kind: SdpaGraph, dynamic: bool) -> Result<(Vec<Desc>, Desc), String> {
    let dt = data_type(call.dtype);
    let io = |uid: i64, i: usize, transposed: bool| {
        let (mut dims, mut strides) = call.view(i);
        if transposed {
            // Kᵀ for Q·Kᵀ: the same memory with the last two dims (and strides) swapped.
            dims.swap(2, 3);
            strides.swap(2, 3);
        }
        be::tensor(uid, dt, &dims, &strides, Binding::Device, align)
    };
    let scale = be::tensor(UID_SCALE, sys::cudnnDataType_t::CUDNN_DATA_FLOAT, &[1; 4], &[1; 4], Binding::ByValue, 16)?;
    let (q, v, o) = (io(UID_Q, 0, false)?, io(UID_V, 2, false)?, io(UID_O, 3, false)?);
    match kind {
        SdpaGraph::Unified => {
            let k = io(UID_K, 1, false)?;
            let op = Desc::new(D::CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR)?;
            op.set_descs(A::CUDNN_ATTR_OPERATION_SDPA_FWD_QDESC, &[&q])?;
            op.set_descs(A::CUDNN_ATTR_OPERATION_SDPA_FWD_KDESC, &[&k])?;
            op.set_descs(A::CUDNN_ATTR_OPERATION_SDPA_FWD_VDESC, &[&v])?;
            op.set_descs(A::CUDNN_ATTR_OPERATION_SDPA_FWD_ODESC, &[&o])?;
            op.set_descs(A::CUDNN_ATTR_OPERATION_SDPA_FWD_SCALEDESC, &[&scale])?;
            op.finalize("SDPA forward operation")?;
            let graph = be::operation_graph(handle, &[&op], dynamic)?;
            Ok((vec![q, k, v, o, scale, op], graph))
        }
        SdpaGraph::Composite => {
            let kt = io(UID_K, 1, true)?;
            let mut c = Composite { parts: Vec::new(), ops: Vec::new(), next_uid: 100 };
            let f32t = sys::cudnnDataType_t::CUDNN_DATA_FLOAT;
            let (b, h, n, m) = (call.b as i64, call.h as i64, call.n as i64, call.m as i64);
            let scores = ([b, h, n, m], [h * n * m, n * m, m, 1]);
            let rows = ([b, h, n, 1], [h * n, n, 1, 1]);
            let s = c.virtual_tensor(f32t, scores)?;
            c.matmul(&q, &kt, &s)?;
            let s1 = c.virtual_tensor(f32t, scores)?;
            c.pointwise(sys::cudnnPointwiseMode_t::CUDNN_POINTWISE_MUL, &s, Some(&scale), &s1)?;
            let max = c.virtual_tensor(f32t, rows)?;
            c.reduction(sys::cudnnReduceTensorOp_t::CUDNN_REDUCE_TENSOR_MAX, &s1, &max)?;
            let s2 = c.virtual_tensor(f32t, scores)?;
            c.pointwise(sys::cudnnPointwiseMode_t::CUDNN_POINTWISE_SUB, &s1, Some(&max), &s2)?;
            let e = c.virtual_tensor(f32t, scores)?;
            c.pointwise(sys::cudnnPointwiseMode_t::CUDNN_POINTWISE_EXP, &s2, None, &e)?;
            let sum = c.virtual_tensor(f32t, rows)?;
            c.reduction(sys::cudnnReduceTensorOp_t::CUDNN_REDUCE_TENSOR_ADD, &e, &sum)?;
            // The log-sum-exp statistics: unused in inference, but part of the pattern the fused
            // engines recognise.
            let log = c.virtual_tensor(f32t, rows)?;
            c.pointwise(sys::cudnnPointwiseMode_t::CUDNN_POINTWISE_LOG, &sum, None, &log)?;
            let stats = c.virtual_tensor(f32t, rows)?;
            c.pointwise(sys::cudnnPointwiseMode_t::CUDNN_POINTWISE_ADD, &max, Some(&log), &stats)?;
            // P in the data's 16-bit type: the second product's A operand has the i/o type.
            let p = c.virtual_tensor(dt, scores)?;
            c.pointwise(sys::cudnnPointwiseMode_t::CUDNN_POINTWISE_DIV, &e, Some(&sum), &p)?;
            c.matmul(&p, &v, &o)?;
            let graph = be::operation_graph(handle, &c.ops.iter().collect::<Vec<_>>(), dynamic)?;
            let mut parts = vec![q, kt, v, o, scale, s, s1, max, s2, e, sum, log, stats, p];
            parts.extend(c.parts);
            parts.extend(c.ops);
            Ok((parts, graph))
        }
    }
}

/// The composite graph as it is built: its operations and the descriptors they use.
struct Composite {
    parts: Vec<Desc>,
    ops: Vec<Desc>,
    next_uid: i64,
}

impl Composite {
    fn virtual_tensor(&mut self, dtype: sys::cudnnDataType_t, (dims, strides): ([i64; 4], [i64; 4])) -> Result<Desc, String> {
        self.next_uid += 1;
        be::tensor(self.next_uid, dtype, &dims, &strides, Binding::Virtual, 16)
    }

    fn matmul(&mut self, a: &Desc, b: &Desc, c: &Desc) -> Result<(), String> {
        let desc = Desc::new(D::CUDNN_BACKEND_MATMUL_DESCRIPTOR)?;
        desc.set(A::CUDNN_ATTR_MATMUL_COMP_TYPE, T::CUDNN_TYPE_DATA_TYPE, &[sys::cudnnDataType_t::CUDNN_DATA_FLOAT])?;
        desc.finalize("matmul descriptor")?;
        let op = Desc::new(D::CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR)?;
        op.set_descs(A::CUDNN_ATTR_OPERATION_MATMUL_ADESC, &[a])?;
        op.set_descs(A::CUDNN_ATTR_OPERATION_MATMUL_BDESC, &[b])?;
        op.set_descs(A::CUDNN_ATTR_OPERATION_MATMUL_CDESC, &[c])?;
        op.set_descs(A::CUDNN_ATTR_OPERATION_MATMUL_DESC, &[&desc])?;
        op.finalize("matmul operation")?;
        self.parts.push(desc);
        self.ops.push(op);
        Ok(())
    }

    fn pointwise(&mut self, mode: sys::cudnnPointwiseMode_t, x: &Desc, b: Option<&Desc>, y: &Desc) -> Result<(), String> {
        let desc = Desc::new(D::CUDNN_BACKEND_POINTWISE_DESCRIPTOR)?;
        desc.set(A::CUDNN_ATTR_POINTWISE_MODE, T::CUDNN_TYPE_POINTWISE_MODE, &[mode])?;
        desc.set(A::CUDNN_ATTR_POINTWISE_MATH_PREC, T::CUDNN_TYPE_DATA_TYPE, &[sys::cudnnDataType_t::CUDNN_DATA_FLOAT])?;
        desc.finalize(&format!("pointwise {mode:?} descriptor"))?;
        let op = Desc::new(D::CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR)?;
        op.set_descs(A::CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, &[&desc])?;
        op.set_descs(A::CUDNN_ATTR_OPERATION_POINTWISE_XDESC, &[x])?;
        if let Some(b) = b {
            op.set_descs(A::CUDNN_ATTR_OPERATION_POINTWISE_BDESC, &[b])?;
        }
        op.set_descs(A::CUDNN_ATTR_OPERATION_POINTWISE_YDESC, &[y])?;
        op.finalize(&format!("pointwise {mode:?} operation"))?;
        self.parts.push(desc);
        self.ops.push(op);
        Ok(())
    }

    fn reduction(&mut self, operator: sys::cudnnReduceTensorOp_t, x: &Desc, y: &Desc) -> Result<(), String> {
        let desc = Desc::new(D::CUDNN_BACKEND_REDUCTION_DESCRIPTOR)?;
        desc.set(A::CUDNN_ATTR_REDUCTION_COMP_TYPE, T::CUDNN_TYPE_DATA_TYPE, &[sys::cudnnDataType_t::CUDNN_DATA_FLOAT])?;
        desc.set(A::CUDNN_ATTR_REDUCTION_OPERATOR, T::CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, &[operator])?;
        desc.finalize(&format!("reduction {operator:?} descriptor"))?;
        let op = Desc::new(D::CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR)?;
        op.set_descs(A::CUDNN_ATTR_OPERATION_REDUCTION_DESC, &[&desc])?;
        op.set_descs(A::CUDNN_ATTR_OPERATION_REDUCTION_XDESC, &[x])?;
        op.set_descs(A::CUDNN_ATTR_OPERATION_REDUCTION_YDESC, &[y])?;
        op.finalize(&format!("reduction {operator:?} operation"))?;
        self.parts.push(desc);
        self.ops.push(op);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eligibility_follows_cudnns_head_dim_and_alignment_rules() {
        let strides = [[4096 * 960, 40, 960]; 4];
        assert!(SdpaCall::eligible(DType::F16, 40, 40, &strides, &[0, 320, 640]));
        assert!(SdpaCall::eligible(DType::BF16, 160, 160, &strides, &[0, 0, 0]));
        // f32, head dims off the 8-grid or past 256, strides or column offsets off the 8-grid.
        assert!(!SdpaCall::eligible(DType::F32, 40, 40, &strides, &[0, 0, 0]));
        assert!(!SdpaCall::eligible(DType::F16, 20, 20, &strides, &[0, 0, 0]));
        assert!(!SdpaCall::eligible(DType::F16, 264, 264, &strides, &[0, 0, 0]));
        assert!(!SdpaCall::eligible(DType::F16, 40, 40, &[[4096 * 90, 36, 90]; 4], &[0, 0, 0]));
        assert!(!SdpaCall::eligible(DType::F16, 40, 40, &strides, &[0, 44, 3]));
    }

    #[test]
    fn views_and_pointer_alignment() {
        let fallback = Box::new(Action::Zero { arg: Arg::Out(0), bytes: 0 });
        let call = SdpaCall { dtype: DType::F16, b: 2, h: 8, n: 4096, m: 77, d: 40, dv: 40, strides: [[4096 * 960, 40, 960], [77 * 640, 40, 640], [77 * 640, 40, 640], [4096 * 320, 40, 320]], scale: 0.158, args: [Arg::In(0), Arg::In(1), Arg::InAt(1, 640), Arg::Out(0)], fallback };
        assert_eq!(call.view(0), ([2, 8, 4096, 40], [4096 * 960, 40, 960, 1]));
        assert_eq!(call.view(1), ([2, 8, 77, 40], [77 * 640, 40, 640, 1]));
        assert_eq!(call.view(3), ([2, 8, 4096, 40], [4096 * 320, 40, 320, 1]));
        assert_eq!(be::byte_alignment([0x1000, 0x2000, 0x1280, 0x3000]), 16);
        assert_eq!(be::byte_alignment([0x1000, 0x1004, 0x1280, 0x3000]), 4);
        assert_ne!(call.key(16), call.key(4));
    }
}
