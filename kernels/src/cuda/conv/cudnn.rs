//! cuDNN for convolutions: the library probe, the call the executor queues (`ConvCall`), and
//! `Dnn`, which owns the handle, the per-shape plans and the workspace. `Dnn` also runs the
//! attention steps that go to cuDNN's fused SDPA engines (`Dnn::sdpa`, plans in `crate::cuda::sdpa`)
//! on the same handle and workspace.
//!
//! - Layout: NCHW tensors with KCRS filters (the ONNX layout) or NHWC with KRSC
//!   (`ConvLayout::Nhwc`, channels-last Conv steps): cuDNN's fast tensor-core kernels are NHWC.
//! - API: the graph (backend) API first (`graph_api`, the engines PyTorch reaches), the legacy
//!   `cudnnConvolutionForward` API (`legacy`) when the graph API has no engine for a shape or the
//!   call asks for it. Both: f32, f16 and bf16 data, f32 compute, no TF32 for f32 data.
//! - Epilogue: an optional bias [M] and an optional residual (same shape and layout as y, must
//!   not alias y) are added to the convolution's result: inside the graph when an engine takes
//!   them, else by `cudnnAddTensor` after the convolution.
//! - Plans: built once per concrete shape (dtype, layout, geometry, bias, residual, API, pointer
//!   alignment) and cached with their descriptors; the workspace is one block per `Dnn`, grown to
//!   the largest plan's need (at most `WORKSPACE_CAP`). A repeat call is one cuDNN call (plus, on
//!   the graph API, a host-side variant pack when the pointers changed), so repeat calls are legal
//!   inside CUDA graph capture. A new shape's first call may synchronise the stream (workspace
//!   growth, `AlgoSearch::Benchmark`): run every shape once before capturing.
//! - New shapes of a known class (same everything but batch and spatial size) skip the
//!   heuristic query: the engine configuration the class's first shape got is finalized for the
//!   new shape directly, falling back to the heuristics when it does not take it
//!   (`QUILT_CUDNN_REUSE=0` turns this off). The first call at a new batch or image size then
//!   costs plan finalization only (issue 4's ≤ 50 ms target for a first call at a new shape;
//!   measured per shape by `bench_onnx_gpu --new-shape`).
//! - Preparing together (`Dnn::prepare`, opt-in: `QUILT_CUDNN_THREADS=n`): the executor hands
//!   over every convolution of a new shape before its first call, and the missing plans are built
//!   on n worker threads, each with a cuDNN handle of its own (cuDNN allows concurrent calls on
//!   distinct handles), one class per worker at a time. A plan then runs on the handle that built
//!   it. Plan building is host work (heuristics, finalization), so a new shape waits about as long
//!   as its slowest plan rather than the sum (H100, SD 1.5 UNet, 35 precompiled engines: 1.4 ms
//!   for 8.9 ms of plans on 16 threads). Off by default: each worker's handle holds ~9.2 MB of
//!   device memory (H100: +38 MB with 4 workers, +147 MB with 16), which took the UNet's peak from
//!   1.144× to 1.230× the fp16 weights with 16, for ~7.5 ms saved at a new shape, much of which a serial build
//!   overlaps with the GPU's work anyway (plans are built as the first run queues its steps).
//!   Classes whose engine cuDNN compiles at run time are left to their first call: those
//!   compilations run slower side by side than one after another.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use cudarc::cudnn::sys;
use cudarc::driver::{result as drv, sys as dsys};
use quilt_rewrites::DType;

use super::graph_api::{ClassState, GraphPlan};
pub use super::graph_api::Pointers;
use super::legacy::LegacyPlan;
use super::ConvGeometry;
use crate::cuda::codegen::Arg;
use crate::cuda::env;
use crate::cuda::sdpa::{SdpaCall, SdpaPlans};

/// Largest workspace a convolution may use (engines and algorithms wanting more are skipped):
/// the memory target is a few hundred MB over the weights for the whole UNet, and the workspace
/// is one block per executable, grown to its largest convolution's need.
pub const WORKSPACE_CAP: usize = 64 << 20;

/// Convolutions cuDNN has run in this process, on either API (tests check the path taken).
static CALLS: AtomicU64 = AtomicU64::new(0);
/// Of those, the ones run through the graph API.
static GRAPH_CALLS: AtomicU64 = AtomicU64::new(0);
/// Attention steps cuDNN's SDPA engines have run in this process (`Dnn::sdpa`).
static SDPA_CALLS: AtomicU64 = AtomicU64::new(0);

pub fn calls() -> u64 {
    CALLS.load(Ordering::Relaxed)
}

pub fn graph_calls() -> u64 {
    GRAPH_CALLS.load(Ordering::Relaxed)
}

pub fn sdpa_calls() -> u64 {
    SDPA_CALLS.load(Ordering::Relaxed)
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

pub(super) fn check(status: sys::cudnnStatus_t, what: &str) -> Result<(), String> {
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
    /// x, y NHWC and w KRSC: the layout cuDNN's tensor-core kernels use natively.
    Nhwc,
}

/// Which cuDNN API a call tries first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvApi {
    /// The graph (backend) API, falling back to the legacy API for a shape it has no engine for.
    Graph,
    /// The legacy API only.
    Legacy,
}

/// One convolution for the executor: input 0 = x, 1 = w, 2 = bias (M), output 0 = y; y gets
/// conv(x, w) + bias + residual.
#[derive(Clone, Debug)]
pub struct ConvCall {
    pub geom: ConvGeometry,
    pub dtype: DType,
    pub layout: ConvLayout,
    pub api: ConvApi,
    pub x: Arg,
    pub w: Arg,
    pub bias: Option<Arg>,
    /// Same shape and layout as y (not aliasing it).
    pub residual: Option<Arg>,
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
        Ok(ConvCall {
            geom,
            dtype,
            layout: ConvLayout::Nchw,
            api: ConvApi::Graph,
            x: Arg::In(0),
            w: Arg::In(1),
            bias: has_bias.then_some(Arg::In(2)),
            residual: None,
            y: Arg::Out(0),
        })
    }

    /// The same call on channels-last data.
    pub fn nhwc(mut self) -> ConvCall {
        self.layout = ConvLayout::Nhwc;
        self
    }

    /// The same call on the legacy API only.
    pub fn legacy(mut self) -> ConvCall {
        self.api = ConvApi::Legacy;
        self
    }

    /// The same call adding `residual` (same shape and layout as y) to the result.
    pub fn with_residual(mut self, residual: Arg) -> ConvCall {
        self.residual = Some(residual);
        self
    }

    fn key(&self) -> CallKey {
        (self.dtype, self.layout, self.geom, self.bias.is_some(), self.residual.is_some(), self.api)
    }

    /// The key without batch and spatial sizes.
    fn class_key(&self) -> CallKey {
        let geom = ConvGeometry { n: 0, h: 0, w: 0, oh: 0, ow: 0, ..self.geom };
        (self.dtype, self.layout, geom, self.bias.is_some(), self.residual.is_some(), self.api)
    }
}

/// Whether a new shape may take the engine configuration an earlier shape of its class got from
/// the heuristics (`QUILT_CUDNN_REUSE=0` turns it off: every shape asks the heuristics).
fn reuse_engines() -> bool {
    env::default_on("QUILT_CUDNN_REUSE")
}

/// `QUILT_CUDNN_DYNAMIC=1`: graph-API convolutions are built as dynamic-shape graphs sharing one
/// kernel cache per convolution class, so an engine that compiles its kernel at run time
/// compiles it once per class rather than once per shape.
fn dynamic_shapes() -> bool {
    env::on("QUILT_CUDNN_DYNAMIC")
}

/// `QUILT_CUDNN_THREADS=n`: how many worker threads `Dnn::prepare` uses (default 1: each plan is
/// built at its first call; see the module doc for why).
fn prepare_threads() -> usize {
    std::env::var("QUILT_CUDNN_THREADS").ok().and_then(|v| v.parse::<usize>().ok()).map_or(1, |n| n.max(1))
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
    /// "graph" or "legacy".
    pub api: &'static str,
    /// The graph API's engine tag (`eng<index>_k<knob>=<value>..`) or the legacy algorithm.
    pub algo: String,
    pub math: String,
    pub workspace_bytes: usize,
    /// Bias added inside the convolution call.
    pub fused_bias: bool,
    /// Time spent choosing (descriptors + heuristic or benchmark).
    pub choose_ms: f64,
    /// The graph API engine compiles its kernel at run time (NVRTC inside cuDNN).
    pub runtime_compiled: bool,
    /// The engine configuration was taken from an earlier shape of the same class (no
    /// heuristic query).
    pub reused_engine: bool,
    /// Why the graph API was not used, when it was tried and the legacy API runs instead.
    pub fallback: Option<String>,
    /// Engine configurations passed over before the chosen one (precision, workspace, failed to
    /// finalize).
    pub skipped: usize,
}

/// A cuDNN handle (created on first use, on the thread's current context), the per-shape
/// plan cache and the workspace. One per executable; calls are serialised by a mutex.
pub struct Dnn {
    search: AlgoSearch,
    /// Worker threads for `prepare` (1: it does nothing).
    threads: usize,
    inner: Mutex<Inner>,
}

/// (dtype, layout, geometry, has bias, has residual, API).
type CallKey = (DType, ConvLayout, ConvGeometry, bool, bool, ConvApi);
/// A call's key and its pointers' common alignment (the graph API's tensors declare it).
type ShapeKey = (CallKey, u8);
/// A shape key with the batch and spatial sizes zeroed: the shapes that share an engine choice.
type ClassKey = ShapeKey;

/// A prepared shape on one of the two APIs.
#[allow(clippy::large_enum_variant)] // one per shape, built once, never moved in bulk
enum ShapePlan {
    Graph(GraphPlan),
    Legacy(LegacyPlan),
}

/// A cuDNN handle that may move between threads (used by one thread at a time).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Handle(sys::cudnnHandle_t);

// SAFETY: a handle is used by one thread at a time: under the `Dnn` mutex, or by the one
// worker of `Dnn::prepare` that owns it.
unsafe impl Send for Handle {}

impl Handle {
    /// A new handle on the calling thread's current context.
    fn create() -> Result<Handle, String> {
        let mut h = std::ptr::null_mut();
        // SAFETY: creates a handle on the current context.
        check(unsafe { sys::cudnnCreate(&mut h) }, "cudnnCreate")?;
        Ok(Handle(h))
    }
}

/// A plan and the handle it was built with (plans run on the handle that finalized them).
struct ShapeEntry {
    plan: ShapePlan,
    handle: Handle,
}

/// The convolutions of one class that `Dnn::prepare` builds on one worker, in order (later
/// shapes reuse what the first left in `state`), and what the worker built, on which handle.
struct ClassJob<'a> {
    class: ClassKey,
    state: ClassState,
    shapes: Vec<(ShapeKey, &'a ConvCall, Pointers)>,
    built: Vec<(ShapeKey, ShapePlan)>,
    handle: Option<Handle>,
}

impl ShapePlan {
    fn choice(&self) -> &ConvChoice {
        match self {
            ShapePlan::Graph(g) => &g.choice,
            ShapePlan::Legacy(l) => &l.choice,
        }
    }
}

struct Inner {
    handle: sys::cudnnHandle_t,
    /// The worker threads' handles, kept for the next `prepare`.
    helpers: Vec<Handle>,
    shapes: HashMap<ShapeKey, ShapeEntry>,
    classes: HashMap<ClassKey, ClassState>,
    workspace: Workspace,
    stats: PrepareStats,
    /// Fused attention plans per shape, or why cuDNN has none (the step's kernel runs then).
    sdpa: SdpaPlans,
}

impl Inner {
    /// The main handle, created on first use on the caller's current context.
    fn main_handle(&mut self) -> Result<sys::cudnnHandle_t, String> {
        if self.handle.is_null() {
            self.handle = Handle::create()?.0;
        }
        Ok(self.handle)
    }

    fn record(&mut self, key: ShapeKey, plan: ShapePlan, handle: Handle) {
        let c = plan.choice();
        let s = &mut self.stats;
        s.shapes += 1;
        s.reused += c.reused_engine as usize;
        s.runtime_compiled += c.runtime_compiled as usize;
        s.ms += c.choose_ms;
        if c.runtime_compiled {
            s.runtime_compiled_ms += c.choose_ms;
        }
        s.slowest_ms = s.slowest_ms.max(c.choose_ms);
        self.shapes.insert(key, ShapeEntry { plan, handle });
    }
}

/// What preparing new shapes has cost so far (for benchmarks of a first call at a new shape).
#[derive(Clone, Copy, Debug, Default)]
pub struct PrepareStats {
    /// Shapes prepared.
    pub shapes: usize,
    /// Of those, the ones that reused an earlier shape's engine configuration.
    pub reused: usize,
    /// Of those, the ones whose engine compiles its kernel at run time.
    pub runtime_compiled: usize,
    /// Time spent preparing them (descriptors, heuristics, plan finalization), summed over
    /// shapes (worker threads overlap it: see `wall_ms`).
    pub ms: f64,
    /// Of `ms`, the shapes whose engine compiles its kernel at run time.
    pub runtime_compiled_ms: f64,
    /// The slowest single shape.
    pub slowest_ms: f64,
    /// Wall time the callers spent preparing (`prepare` calls plus plans built at a first call,
    /// cuDNN attention plans included).
    pub wall_ms: f64,
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
        let inner = Inner { handle: std::ptr::null_mut(), helpers: Vec::new(), shapes: HashMap::new(), classes: HashMap::new(), workspace: Workspace::default(), stats: PrepareStats::default(), sdpa: SdpaPlans::default() };
        Dnn { search, threads: prepare_threads(), inner: Mutex::new(inner) }
    }

    /// The same `Dnn` with `threads` workers for `prepare` (instead of `QUILT_CUDNN_THREADS`).
    pub fn with_threads(mut self, threads: usize) -> Dnn {
        self.threads = threads.max(1);
        self
    }

    /// Runs `call` on `stream` with `ptr` resolving each argument to a device pointer. The
    /// context the pointers belong to must be current.
    pub fn conv(&self, call: &ConvCall, stream: dsys::CUstream, ptr: &dyn Fn(Arg) -> u64) -> Result<(), String> {
        library()?;
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *guard;
        let main = inner.main_handle()?;
        let p = Pointers::of(call, ptr);
        if p.residual.is_some_and(|r| r == p.y) {
            return Err("the residual of a cuDNN convolution must not alias its output".into());
        }
        let key = (call.key(), p.alignment());
        if !inner.shapes.contains_key(&key) {
            let started = Instant::now();
            let class = inner.classes.entry((call.class_key(), p.alignment())).or_insert_with(|| ClassState::new(reuse_engines(), dynamic_shapes()));
            let plan = build(main, call, &p, self.search, class, &mut inner.workspace, stream)?;
            inner.stats.wall_ms += started.elapsed().as_secs_f64() * 1e3;
            inner.record(key, plan, Handle(main));
        }
        let entry = inner.shapes.get_mut(&key).expect("inserted above");
        let handle = entry.handle.0;
        // SAFETY: a live handle; the stream belongs to the current context.
        check(unsafe { sys::cudnnSetStream(handle, stream as sys::cudaStream_t) }, "cudnnSetStream")?;
        match &mut entry.plan {
            ShapePlan::Graph(g) => {
                inner.workspace.reserve(g.workspace(), stream)?;
                g.run(handle, &p, &inner.workspace)?;
                GRAPH_CALLS.fetch_add(1, Ordering::Relaxed);
            }
            ShapePlan::Legacy(l) => {
                inner.workspace.reserve(l.workspace, stream)?;
                l.run(handle, &p, &inner.workspace)?;
            }
        }
        CALLS.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Runs `call` through cuDNN's SDPA engines on `stream`, building its plan at the shape's
    /// first call (or starting to build it in the background, `build_sdpa_in_background`);
    /// `Ok(false)` when there is no plan (yet) or no cuDNN: the caller runs `call.fallback`.
    pub fn sdpa(&self, call: &SdpaCall, stream: dsys::CUstream, ptr: &dyn Fn(Arg) -> u64) -> Result<bool, String> {
        let Ok(version) = library() else { return Ok(false) };
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *guard;
        let main = inner.main_handle()?;
        let started = Instant::now();
        let ran = inner.sdpa.run(main, version, call, call.args.map(ptr), &mut inner.workspace, stream)?;
        inner.stats.wall_ms += started.elapsed().as_secs_f64() * 1e3;
        if ran {
            SDPA_CALLS.fetch_add(1, Ordering::Relaxed);
        }
        Ok(ran)
    }

    /// From now on, attention shapes new to this `Dnn` build their cuDNN plans on worker threads
    /// (the executor calls this after its first run).
    pub fn build_sdpa_in_background(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).sdpa.build_in_background();
    }

    /// cuDNN's SDPA plans so far: the engine per attention shape, or why it declined one.
    pub fn sdpa_report(&self) -> Vec<String> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).sdpa.report()
    }

    /// Whether `prepare` builds anything (more than one thread, heuristic search); callers skip
    /// collecting the calls otherwise.
    pub fn prepares(&self) -> bool {
        self.threads > 1 && self.search == AlgoSearch::Heuristic
    }

    /// Builds the plans that `calls` (a new shape's convolutions, with the pointers they will
    /// run on) lack, on worker threads, before the calls run; `bind` makes the executable's
    /// context current on a worker. Best effort: a plan that fails here is built again by
    /// `conv`, which reports the error for its node. Only for heuristic search (benchmarking
    /// times engines on the stream, one at a time) and with more than one thread.
    pub fn prepare(&self, calls: &[(ConvCall, Pointers)], bind: &(dyn Fn() -> Result<(), String> + Sync)) {
        if !self.prepares() || library().is_err() {
            return;
        }
        let threads = self.threads;
        let started = Instant::now();
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *guard;
        // cuDNN asks for one handle to be created before threads create theirs.
        if inner.main_handle().is_err() {
            return;
        }
        let mut jobs: Vec<ClassJob> = Vec::new();
        for (call, p) in calls {
            let key = (call.key(), p.alignment());
            let class = (call.class_key(), p.alignment());
            if p.residual.is_some_and(|r| r == p.y) || inner.shapes.contains_key(&key) || jobs.iter().any(|j| j.shapes.iter().any(|s| s.0 == key)) {
                continue;
            }
            // Runtime-compiled engines build slower side by side than one after another (cuDNN's
            // compiler contends with itself: 570 ms for 8 plans on 16 threads, 242 ms one by one
            // on an H100): their classes are left to their first call.
            if inner.classes.get(&class).is_some_and(|c| c.runtime_compiled()) {
                continue;
            }
            match jobs.iter_mut().find(|j| j.class == class) {
                Some(job) => job.shapes.push((key, call, *p)),
                None => {
                    let state = inner.classes.remove(&class).unwrap_or_else(|| ClassState::new(reuse_engines(), dynamic_shapes()));
                    jobs.push(ClassJob { class, state, shapes: vec![(key, call, *p)], built: Vec::new(), handle: None });
                }
            }
        }
        if jobs.is_empty() {
            return;
        }
        let workers = threads.min(jobs.len());
        let mut helpers = std::mem::take(&mut inner.helpers);
        let queue = Mutex::new(jobs);
        let done: Mutex<Vec<ClassJob>> = Mutex::new(Vec::new());
        let search = self.search;
        let returned: Vec<Handle> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..workers)
                .map(|i| {
                    let given = helpers.get(i).copied();
                    let (queue, done) = (&queue, &done);
                    scope.spawn(move || -> Option<Handle> {
                        bind().ok()?;
                        let handle = match given {
                            Some(h) => h,
                            None => Handle::create().ok()?,
                        };
                        loop {
                            let Some(mut job) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop() else { break };
                            // Heuristic search neither times engines nor grows the workspace.
                            let mut ws = Workspace::default();
                            for (key, call, p) in &job.shapes {
                                if let Ok(plan) = build(handle.0, call, p, search, &mut job.state, &mut ws, std::ptr::null_mut()) {
                                    job.built.push((*key, plan));
                                }
                            }
                            job.handle = Some(handle);
                            done.lock().unwrap_or_else(|p| p.into_inner()).push(job);
                        }
                        Some(handle)
                    })
                })
                .collect();
            workers.into_iter().filter_map(|w| w.join().ok().flatten()).collect()
        });
        helpers.retain(|h| !returned.contains(h));
        // Handles of workers that failed to start stay in the pool; the others come back.
        helpers.extend(returned);
        inner.helpers = helpers;
        // Jobs that failed workers left in the queue built nothing but keep their class state.
        let done = done.into_inner().unwrap_or_else(|p| p.into_inner());
        for job in done.into_iter().chain(queue.into_inner().unwrap_or_else(|p| p.into_inner())) {
            inner.classes.insert(job.class, job.state);
            let handle = job.handle.unwrap_or(Handle(inner.handle));
            for (key, plan) in job.built {
                inner.record(key, plan, handle);
            }
        }
        inner.stats.wall_ms += started.elapsed().as_secs_f64() * 1e3;
    }

    /// The choice made for `call`'s shape, once it has run (at any pointer alignment).
    pub fn choice(&self, call: &ConvCall) -> Option<ConvChoice> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let key = call.key();
        inner.shapes.iter().find(|((k, _), _)| *k == key).map(|(_, s)| s.plan.choice().clone())
    }

    /// Distinct shapes prepared so far: convolution plans, and attention shapes whose cuDNN plan
    /// is settled (built or declined; background builds that finished are taken in here, so the
    /// count changes when one does and the executor captures its graph again).
    pub fn shapes(&self) -> usize {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.shapes.len() + inner.sdpa.settle(None)
    }

    pub fn prepare_stats(&self) -> PrepareStats {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).stats
    }
}

impl Drop for Dnn {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        inner.shapes.clear();
        inner.classes.clear();
        inner.sdpa = SdpaPlans::default();
        for h in inner.helpers.drain(..).map(|h| h.0).chain([inner.handle]).filter(|h| !h.is_null()) {
            // SAFETY: the plans built with it are dropped above; it is not used after this.
            let _ = unsafe { sys::cudnnDestroy(h) };
        }
    }
}

/// The plan for `call` on `handle`: the graph API (the legacy API when it has no engine), or
/// the legacy API when the call asks for it.
fn build(handle: sys::cudnnHandle_t, call: &ConvCall, p: &Pointers, search: AlgoSearch, class: &mut ClassState, ws: &mut Workspace, stream: dsys::CUstream) -> Result<ShapePlan, String> {
    Ok(match call.api {
        ConvApi::Graph => match GraphPlan::build(handle, call, p, search, class, ws, stream) {
            Ok(g) => ShapePlan::Graph(g),
            Err(why) => {
                let mut l = LegacyPlan::choose(handle, call, search, p, ws, stream)?;
                l.choice.fallback = Some(why);
                ShapePlan::Legacy(l)
            }
        },
        ConvApi::Legacy => ShapePlan::Legacy(LegacyPlan::choose(handle, call, search, p, ws, stream)?),
    })
}

/// Device memory for cuDNN's workspace, grown on demand (plain allocation: it outlives any one
/// stream's work, and growth waits for the stream before freeing the old block).
#[derive(Default)]
pub(crate) struct Workspace {
    pub ptr: u64,
    pub bytes: usize,
}

impl Workspace {
    pub fn reserve(&mut self, bytes: usize, stream: dsys::CUstream) -> Result<(), String> {
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

pub(crate) fn data_type(dtype: DType) -> sys::cudnnDataType_t {
    match dtype {
        DType::F16 => sys::cudnnDataType_t::CUDNN_DATA_HALF,
        DType::BF16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
        _ => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
    }
}
