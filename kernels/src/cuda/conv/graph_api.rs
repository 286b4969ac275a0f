//! Forward convolution through cuDNN's graph (backend) API: the route PyTorch takes (through
//! cudnn-frontend) to the Hopper convolution engines that the legacy algorithm enum does not
//! expose.
//!
//! One operation graph per concrete shape: `conv fprop(X, W) → [+ bias B] → [+ residual R] → Y`,
//! the intermediates virtual (f32) so the additions are the engine's epilogue. Tensors are
//! described in NCHW dimension order with explicit strides, so NCHW/KCRS and NHWC/KRSC are the
//! same code. Compute is f32; for f32 data every engine with a tensor-core or down-converting
//! numerical note is skipped (no TF32), and for 16-bit data every engine that reduces in reduced
//! precision.
//!
//! Engine choice: cuDNN's heuristics (mode A, then B, then the fallback list), the first engine
//! configuration whose execution plan finalizes with a workspace within `WORKSPACE_CAP`;
//! `AlgoSearch::Benchmark` times the first few such plans on the first call's buffers instead.
//! If the graph with the additions finds no engine, the conv-only graph is tried, with the
//! additions run by `cudnnAddTensor` after it. The plan is built once per shape; a repeat call is
//! one `cudnnBackendExecute` with the variant pack kept from the previous call when the pointers
//! are the same (rebuilding it is host work only, so repeat calls are legal in CUDA graph
//! capture either way).

use std::ffi::c_void;
use std::time::Instant;

use cudarc::cudnn::sys;
use cudarc::driver::{result as drv, sys as dsys};
use sys::cudnnBackendAttributeName_t as A;
use sys::cudnnBackendAttributeType_t as T;
use sys::cudnnBackendDescriptorType_t as D;

use quilt_rewrites::DType;

use crate::cuda::cudnn_backend::{self as be, check, Binding, Desc};

use super::cudnn::{data_type, AlgoSearch, ConvCall, ConvChoice, ConvLayout, Workspace, WORKSPACE_CAP};
use super::legacy::Epilogue;
use crate::cuda::codegen::Arg;

/// Candidate plans timed by `AlgoSearch::Benchmark`.
const BENCH_CANDIDATES: usize = 8;

/// Tensor unique ids in the operation graph and the variant pack.
const UID_X: i64 = 1;
const UID_W: i64 = 2;
const UID_B: i64 = 3;
const UID_R: i64 = 4;
const UID_Y: i64 = 5;
const UID_CONV_OUT: i64 = 10;
const UID_BIAS_OUT: i64 = 11;

/// Dimensions (NCHW order) and strides of one tensor.
#[derive(Clone, Copy, Debug)]
struct Shape4 {
    dims: [i64; 4],
    strides: [i64; 4],
}

impl Shape4 {
    /// [n, c, h, w] stored NCHW or NHWC (for filters: KCRS or KRSC).
    fn packed(n: usize, c: usize, h: usize, w: usize, layout: ConvLayout) -> Shape4 {
        let [n, c, h, w] = [n, c, h, w].map(|v| v as i64);
        let strides = match layout {
            ConvLayout::Nchw => [c * h * w, h * w, w, 1],
            ConvLayout::Nhwc => [h * w * c, 1, w * c, c],
        };
        Shape4 { dims: [n, c, h, w], strides }
    }
}

fn tensor(uid: i64, dtype: sys::cudnnDataType_t, s: Shape4, is_virtual: bool, align: i64) -> Result<Desc, String> {
    be::tensor(uid, dtype, &s.dims, &s.strides, if is_virtual { Binding::Virtual } else { Binding::Device }, align)
}

/// The engine configuration behind a plan, as a tag like cudnn-frontend's (`eng12_k2=3_k13=1`),
/// and its numerical and behaviour notes.
struct EngineInfo {
    tag: String,
    numerical: Vec<u32>,
    runtime_compiled: bool,
    spec: EngineSpec,
}

/// An engine configuration by value: cuDNN's global engine index and its knob settings. A class
/// of convolutions that differ only in batch and spatial size reuses the spec of the first shape
/// heuristics ran for, so a new shape skips the heuristic query (`GraphPlan::build`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct EngineSpec {
    pub index: i64,
    pub knobs: Vec<(u32, i64)>,
    /// Whether the bias/residual additions were inside the graph the engine was chosen for.
    pub fused: bool,
}

/// `fused`: whether the graph `cfg` was made for holds the bias/residual additions.
fn engine_info(cfg: &Desc, fused: bool) -> Result<EngineInfo, String> {
    let engine = cfg.get_descs(A::CUDNN_ATTR_ENGINECFG_ENGINE, D::CUDNN_BACKEND_ENGINE_DESCRIPTOR, 1)?;
    let engine = engine.first().ok_or("the engine configuration has no engine")?;
    let index = engine.get_i64(A::CUDNN_ATTR_ENGINE_GLOBAL_INDEX)?;
    let mut numerical = [u32::MAX; 16];
    let n = engine.get(A::CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, T::CUDNN_TYPE_NUMERICAL_NOTE, &mut numerical)?;
    let mut behavior = [u32::MAX; 16];
    let b = engine.get(A::CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE, T::CUDNN_TYPE_BEHAVIOR_NOTE, &mut behavior).unwrap_or(0);
    let runtime_compiled = behavior[..b.min(16)].contains(&(sys::cudnnBackendBehaviorNote_t::CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION as u32));
    let mut tag = format!("eng{index}");
    let knobs = cfg.get_descs(A::CUDNN_ATTR_ENGINECFG_KNOB_CHOICES, D::CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR, 64)?;
    let mut settings = Vec::with_capacity(knobs.len());
    for k in &knobs {
        let mut ty = [0u32];
        k.get(A::CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE, T::CUDNN_TYPE_KNOB_TYPE, &mut ty)?;
        let v = k.get_i64(A::CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE)?;
        tag += &format!("_k{}={v}", ty[0]);
        settings.push((ty[0], v));
    }
    if runtime_compiled {
        tag += "_rtc";
    }
    let spec = EngineSpec { index, knobs: settings, fused };
    Ok(EngineInfo { tag, numerical: numerical[..n.min(16)].to_vec(), runtime_compiled, spec })
}

/// Whether an engine's numerical notes keep the promised precision for `dtype`: f32 data never
/// on tensor cores (TF32) or down-converted; no engine reduces in 16-bit.
fn precise_enough(notes: &[u32], dtype: DType) -> bool {
    use sys::cudnnBackendNumericalNote_t::*;
    let has = |n: sys::cudnnBackendNumericalNote_t| notes.contains(&(n as u32));
    if has(CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION) {
        return false;
    }
    dtype != DType::F32 || !(has(CUDNN_NUMERICAL_NOTE_TENSOR_CORE) || has(CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS))
}

/// Device pointers of one call (0 where the call has no such tensor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pointers {
    pub x: u64,
    pub w: u64,
    pub bias: Option<u64>,
    pub residual: Option<u64>,
    pub y: u64,
}

impl Pointers {
    /// `call`'s pointers, each argument resolved by `ptr`.
    pub fn of(call: &ConvCall, ptr: &dyn Fn(Arg) -> u64) -> Pointers {
        Pointers { x: ptr(call.x), w: ptr(call.w), bias: call.bias.map(ptr), residual: call.residual.map(ptr), y: ptr(call.y) }
    }

    /// The largest power of two up to 16 that divides every pointer (cuDNN's byte alignment).
    pub fn alignment(&self) -> u8 {
        be::byte_alignment([Some(self.x), Some(self.w), self.bias, self.residual, Some(self.y)].into_iter().flatten())
    }
}

/// A variant pack for one set of pointers.
struct Variant {
    pack: Desc,
    ptrs: Pointers,
    workspace: u64,
}

/// The operation graph's descriptors, kept alive as long as plans built from them.
struct Graph {
    /// Tensors, convolution descriptor, operations: owned for the lifetime of the graph.
    _parts: Vec<Desc>,
    op_graph: Desc,
    /// Whether the bias and residual additions are inside the graph.
    fused: bool,
    uids: Vec<i64>,
}

fn build_graph(handle: sys::cudnnHandle_t, call: &ConvCall, align: i64, fused: bool, dynamic: bool) -> Result<Graph, String> {
    let g = &call.geom;
    let dt = data_type(call.dtype);
    let f32t = sys::cudnnDataType_t::CUDNN_DATA_FLOAT;
    let x_s = Shape4::packed(g.n, g.c, g.h, g.w, call.layout);
    let w_s = Shape4::packed(g.m, g.c / g.group, g.kh, g.kw, call.layout);
    let y_s = Shape4::packed(g.n, g.m, g.oh, g.ow, call.layout);
    let epilogue = fused && (call.bias.is_some() || call.residual.is_some());
    let mut parts = Vec::new();
    let mut uids = vec![UID_X, UID_W, UID_Y];
    let x = tensor(UID_X, dt, x_s, false, align)?;
    let w = tensor(UID_W, dt, w_s, false, align)?;
    let y = tensor(UID_Y, dt, y_s, false, align)?;
    let conv_out = if epilogue { tensor(UID_CONV_OUT, f32t, y_s, true, align)? } else { Desc(std::ptr::null_mut()) };

    let conv = Desc::new(D::CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR)?;
    conv.set(A::CUDNN_ATTR_CONVOLUTION_COMP_TYPE, T::CUDNN_TYPE_DATA_TYPE, &[f32t])?;
    conv.set(A::CUDNN_ATTR_CONVOLUTION_CONV_MODE, T::CUDNN_TYPE_CONVOLUTION_MODE, &[sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION])?;
    conv.set_i64s(A::CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, &[2])?;
    conv.set_i64s(A::CUDNN_ATTR_CONVOLUTION_DILATIONS, &[g.dilation.0 as i64, g.dilation.1 as i64])?;
    conv.set_i64s(A::CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, &[g.stride.0 as i64, g.stride.1 as i64])?;
    conv.set_i64s(A::CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, &[g.pad_begin.0 as i64, g.pad_begin.1 as i64])?;
    conv.set_i64s(A::CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, &[g.pad_end.0 as i64, g.pad_end.1 as i64])?;
    conv.finalize("convolution descriptor")?;

    let fprop = Desc::new(D::CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR)?;
    fprop.set_descs(A::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, &[&x])?;
    fprop.set_descs(A::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, &[&w])?;
    fprop.set_descs(A::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, &[if epilogue { &conv_out } else { &y }])?;
    fprop.set_descs(A::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, &[&conv])?;
    fprop.set(A::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, T::CUDNN_TYPE_FLOAT, &[1.0f32])?;
    fprop.set(A::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA, T::CUDNN_TYPE_FLOAT, &[0.0f32])?;
    fprop.finalize("convolution forward operation")?;

    let mut ops = vec![fprop];
    if epilogue {
        let add = Desc::new(D::CUDNN_BACKEND_POINTWISE_DESCRIPTOR)?;
        add.set(A::CUDNN_ATTR_POINTWISE_MODE, T::CUDNN_TYPE_POINTWISE_MODE, &[sys::cudnnPointwiseMode_t::CUDNN_POINTWISE_ADD])?;
        add.set(A::CUDNN_ATTR_POINTWISE_MATH_PREC, T::CUDNN_TYPE_DATA_TYPE, &[f32t])?;
        add.finalize("pointwise add descriptor")?;
        // (input so far, second operand) pairs: bias then residual; the last writes Y.
        let mut operands = Vec::new();
        if call.bias.is_some() {
            // [1, M, 1, 1], contiguous over M.
            let m = g.m as i64;
            operands.push(tensor(UID_B, dt, Shape4 { dims: [1, m, 1, 1], strides: [m, 1, m, m] }, false, align)?);
            uids.push(UID_B);
        }
        if call.residual.is_some() {
            operands.push(tensor(UID_R, dt, y_s, false, align)?);
            uids.push(UID_R);
        }
        let last = operands.len() - 1;
        let mut input = conv_out;
        for (i, operand) in operands.into_iter().enumerate() {
            let output = if i == last { None } else { Some(tensor(UID_BIAS_OUT, f32t, y_s, true, align)?) };
            let op = Desc::new(D::CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR)?;
            op.set_descs(A::CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, &[&add])?;
            op.set_descs(A::CUDNN_ATTR_OPERATION_POINTWISE_XDESC, &[&input])?;
            op.set_descs(A::CUDNN_ATTR_OPERATION_POINTWISE_BDESC, &[&operand])?;
            op.set_descs(A::CUDNN_ATTR_OPERATION_POINTWISE_YDESC, &[output.as_ref().unwrap_or(&y)])?;
            op.finalize("pointwise add operation")?;
            ops.push(op);
            parts.push(std::mem::replace(&mut input, Desc(std::ptr::null_mut())));
            parts.push(operand);
            if let Some(o) = output {
                input = o;
            }
        }
        parts.push(add);
    }
    let op_graph = be::operation_graph(handle, &ops.iter().collect::<Vec<_>>(), dynamic)?;
    parts.extend([x, w, y, conv]);
    parts.extend(ops);
    Ok(Graph { _parts: parts, op_graph, fused: epilogue || (call.bias.is_none() && call.residual.is_none()), uids })
}

/// A finalized execution plan and the engine configuration it came from.
struct Candidate {
    plan: Desc,
    /// The engine configuration and the descriptors it refers to.
    _cfg: Vec<Desc>,
    info: EngineInfo,
    workspace: usize,
}

/// The execution plan of `cfg`, finalized (through `kernel_cache` when given: a dynamic-shape
/// graph's runtime-compiled kernel is then compiled once per cache, not once per shape), or why
/// it cannot be used: it fails to finalize or wants more than `WORKSPACE_CAP`.
fn finalize_plan(handle: sys::cudnnHandle_t, cfg: Vec<Desc>, info: EngineInfo, kernel_cache: Option<&Desc>) -> Result<Candidate, String> {
    let (plan, workspace) = be::execution_plan(handle, &cfg[0], kernel_cache, &info.tag)?;
    if workspace > WORKSPACE_CAP {
        return Err(format!("{}: workspace {workspace} bytes over the {WORKSPACE_CAP}-byte cap", info.tag));
    }
    Ok(Candidate { plan, _cfg: cfg, info, workspace })
}

/// The plan of a known engine configuration on `graph`, with no heuristic query: the engine
/// (`spec.index`) with its knobs set as `spec` says. Fails when the engine does not take this
/// shape; the caller then asks the heuristics.
fn plan_from_spec(handle: sys::cudnnHandle_t, graph: &Graph, spec: &EngineSpec, kernel_cache: Option<&Desc>) -> Result<Candidate, String> {
    let engine = Desc::new(D::CUDNN_BACKEND_ENGINE_DESCRIPTOR)?;
    engine.set_descs(A::CUDNN_ATTR_ENGINE_OPERATION_GRAPH, &[&graph.op_graph])?;
    engine.set_i64s(A::CUDNN_ATTR_ENGINE_GLOBAL_INDEX, &[spec.index])?;
    engine.finalize(&format!("engine {}", spec.index))?;
    let mut knobs = Vec::with_capacity(spec.knobs.len());
    for &(ty, value) in &spec.knobs {
        let k = Desc::new(D::CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR)?;
        k.set(A::CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE, T::CUDNN_TYPE_KNOB_TYPE, &[ty])?;
        k.set_i64s(A::CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE, &[value])?;
        k.finalize(&format!("knob {ty}={value}"))?;
        knobs.push(k);
    }
    let cfg = Desc::new(D::CUDNN_BACKEND_ENGINECFG_DESCRIPTOR)?;
    cfg.set_descs(A::CUDNN_ATTR_ENGINECFG_ENGINE, &[&engine])?;
    if !knobs.is_empty() {
        cfg.set_descs(A::CUDNN_ATTR_ENGINECFG_KNOB_CHOICES, &knobs.iter().collect::<Vec<_>>())?;
    }
    cfg.finalize(&format!("engine configuration {}", spec.index))?;
    let info = engine_info(&cfg, spec.fused)?;
    let mut parts = vec![cfg, engine];
    parts.extend(knobs);
    finalize_plan(handle, parts, info, kernel_cache)
}

/// Execution plans for `graph` in heuristic order (modes A, B, then the fallback list; duplicate
/// engine configurations skipped), at most `want` of them, each within `WORKSPACE_CAP` and
/// precise enough for `dtype`. `skipped` collects why the others were passed over.
fn candidates(handle: sys::cudnnHandle_t, graph: &Graph, dtype: DType, want: usize, kernel_cache: Option<&Desc>, skipped: &mut Vec<String>) -> Result<Vec<Candidate>, String> {
    use sys::cudnnBackendHeurMode_t::*;
    let mut found: Vec<Candidate> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for mode in [CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_B, CUDNN_HEUR_MODE_FALLBACK] {
        let cfgs = match be::engine_configs(&graph.op_graph, mode) {
            Ok(c) => c,
            Err(e) => {
                skipped.push(e);
                continue;
            }
        };
        for cfg in cfgs {
            let info = match engine_info(&cfg, graph.fused) {
                Ok(i) => i,
                Err(e) => {
                    skipped.push(e);
                    continue;
                }
            };
            if seen.contains(&info.tag) {
                continue;
            }
            seen.push(info.tag.clone());
            if !precise_enough(&info.numerical, dtype) {
                skipped.push(format!("{}: numerical notes {:?} not allowed for {dtype}", info.tag, info.numerical));
                continue;
            }
            match finalize_plan(handle, vec![cfg], info, kernel_cache) {
                Ok(c) => found.push(c),
                Err(e) => {
                    skipped.push(e);
                    continue;
                }
            }
            if found.len() >= want {
                return Ok(found);
            }
        }
    }
    Ok(found)
}

/// What the shapes of one convolution class (equal but for batch and spatial size) share: the
/// engine configuration the heuristics chose for the class's first shape and, in dynamic-shape
/// mode, the kernel cache its runtime-compiled kernels go into.
#[derive(Default)]
pub(super) struct ClassState {
    /// Whether later shapes take `spec` (else every shape asks the heuristics).
    reuse: bool,
    spec: Option<EngineSpec>,
    /// Whether `spec`'s engine compiles its kernel at run time (NVRTC inside cuDNN).
    runtime_compiled: bool,
    /// Operation graphs are built with dynamic shapes enabled and plans share `kernel_cache`
    /// (`QUILT_CUDNN_DYNAMIC=1`; off by default until measured against static plans).
    pub dynamic: bool,
    kernel_cache: Option<Desc>,
}

impl ClassState {
    pub fn new(reuse: bool, dynamic: bool) -> ClassState {
        ClassState { reuse, dynamic, ..ClassState::default() }
    }

    /// Whether the class's shapes so far got an engine that cuDNN compiles at run time.
    pub fn runtime_compiled(&self) -> bool {
        self.runtime_compiled
    }
}

// SAFETY: descriptors are plain cuDNN objects, used only under the `Dnn` mutex.
unsafe impl Send for ClassState {}

/// A prepared shape on the graph API.
pub(super) struct GraphPlan {
    graph: Graph,
    chosen: Candidate,
    variant: Option<Variant>,
    /// The bias and residual additions when the graph does not hold them.
    epilogue: Option<Epilogue>,
    pub choice: ConvChoice,
}

// SAFETY: descriptors are plain cuDNN objects, used only under the `Dnn` mutex.
unsafe impl Send for GraphPlan {}

impl GraphPlan {
    /// Builds the graph and picks its engine, or says why none runs `call`. `Benchmark` runs
    /// candidates on `p`'s buffers (y is overwritten; the real call follows) and synchronises.
    /// `class` is what earlier shapes of the same convolution class left: with `Heuristic`, a
    /// known engine configuration is finalized for this shape directly (the heuristic query is
    /// most of a new shape's cost); the first shape of a class records its choice there.
    pub fn build(handle: sys::cudnnHandle_t, call: &ConvCall, p: &Pointers, search: AlgoSearch, class: &mut ClassState, ws: &mut Workspace, stream: dsys::CUstream) -> Result<GraphPlan, String> {
        let started = Instant::now();
        let align = p.alignment() as i64;
        let dynamic = class.dynamic;
        let mut skipped = Vec::new();
        if search == AlgoSearch::Heuristic && class.reuse {
            if let Some(spec) = class.spec.clone() {
                let reused = build_graph(handle, call, align, spec.fused, dynamic)
                    .and_then(|g| plan_from_spec(handle, &g, &spec, class.kernel_cache.as_ref()).map(|c| (g, c)));
                match reused {
                    Ok((graph, chosen)) => return GraphPlan::new(call, graph, chosen, started, 0, true),
                    Err(e) => skipped.push(format!("engine {} of an earlier shape: {e}", spec.index)),
                }
            }
        }
        let want = if search == AlgoSearch::Benchmark { BENCH_CANDIDATES } else { 1 };
        let mut attempts = vec![true];
        if call.bias.is_some() || call.residual.is_some() {
            attempts.push(false);
        }
        let mut why = Vec::new();
        for fused in attempts {
            let graph = match build_graph(handle, call, align, fused, dynamic) {
                Ok(g) => g,
                Err(e) => {
                    why.push(e);
                    continue;
                }
            };
            if dynamic && class.kernel_cache.is_none() {
                class.kernel_cache = Some(be::kernel_cache(&graph.op_graph)?);
            }
            let mut found = candidates(handle, &graph, call.dtype, want, class.kernel_cache.as_ref(), &mut skipped)?;
            if found.is_empty() {
                why.push(format!("no engine for the {} graph", if graph.fused { "fused" } else { "conv-only" }));
                continue;
            }
            let index = if found.len() > 1 { fastest(handle, &graph, &found, p, ws, stream)? } else { 0 };
            let chosen = found.swap_remove(index);
            if class.spec.is_none() {
                class.spec = Some(chosen.info.spec.clone());
                class.runtime_compiled = chosen.info.runtime_compiled;
            }
            return GraphPlan::new(call, graph, chosen, started, skipped.len(), false);
        }
        let mut msg = why.join("; ");
        if let Some(s) = skipped.first() {
            msg += &format!(" (skipped {} configurations, first: {s})", skipped.len());
        }
        Err(msg)
    }

    fn new(call: &ConvCall, graph: Graph, chosen: Candidate, started: Instant, skipped: usize, reused_engine: bool) -> Result<GraphPlan, String> {
        let choice = ConvChoice {
            api: "graph",
            algo: chosen.info.tag.clone(),
            math: "FLOAT".into(),
            workspace_bytes: chosen.workspace,
            fused_bias: graph.fused && call.bias.is_some(),
            choose_ms: started.elapsed().as_secs_f64() * 1e3,
            runtime_compiled: chosen.info.runtime_compiled,
            reused_engine,
            fallback: None,
            skipped,
        };
        let epilogue = if graph.fused { None } else { Some(Epilogue::new(call)?) };
        Ok(GraphPlan { graph, chosen, variant: None, epilogue, choice })
    }

    pub fn workspace(&self) -> usize {
        self.chosen.workspace
    }

    /// Queues the convolution (and its additions) on the handle's stream.
    pub fn run(&mut self, handle: sys::cudnnHandle_t, p: &Pointers, ws: &Workspace) -> Result<(), String> {
        let stale = self.variant.as_ref().is_none_or(|v| v.ptrs != *p || v.workspace != ws.ptr);
        if stale {
            self.variant = Some(variant(&self.graph, p, ws.ptr)?);
        }
        let v = self.variant.as_ref().expect("built above");
        // SAFETY: a finalized plan and variant pack whose pointers are live device buffers.
        check(unsafe { sys::cudnnBackendExecute(handle, self.chosen.plan.0, v.pack.0) }, &|| format!("cudnnBackendExecute ({})", self.choice.algo))?;
        match &self.epilogue {
            Some(e) => e.run(handle, p),
            None => Ok(()),
        }
    }
}

fn variant(graph: &Graph, p: &Pointers, workspace: u64) -> Result<Variant, String> {
    let ptr_of = |uid: i64| -> u64 {
        match uid {
            UID_X => p.x,
            UID_W => p.w,
            UID_B => p.bias.unwrap_or(0),
            UID_R => p.residual.unwrap_or(0),
            _ => p.y,
        }
    };
    let ptrs: Vec<*mut c_void> = graph.uids.iter().map(|&u| ptr_of(u) as *mut c_void).collect();
    let pack = be::variant_pack(&graph.uids, &ptrs, workspace)?;
    Ok(Variant { pack, ptrs: *p, workspace })
}

/// Index of the fastest candidate on the call's own buffers (3 timed runs each after one warm-up).
fn fastest(handle: sys::cudnnHandle_t, graph: &Graph, found: &[Candidate], p: &Pointers, ws: &mut Workspace, stream: dsys::CUstream) -> Result<usize, String> {
    ws.reserve(found.iter().map(|c| c.workspace).max().unwrap_or(0), stream)?;
    let v = variant(graph, p, ws.ptr)?;
    let sync = || unsafe { drv::stream::synchronize(stream) }.map_err(|e| format!("synchronising while timing cuDNN engines: {e}"));
    let mut best = (f64::INFINITY, 0);
    for (i, c) in found.iter().enumerate() {
        // SAFETY: as in `GraphPlan::run`.
        let exec = || check(unsafe { sys::cudnnBackendExecute(handle, c.plan.0, v.pack.0) }, &|| format!("cudnnBackendExecute ({})", c.info.tag));
        if exec().is_err() {
            continue;
        }
        sync()?;
        let t = Instant::now();
        for _ in 0..3 {
            exec()?;
        }
        sync()?;
        let ms = t.elapsed().as_secs_f64();
        if ms < best.0 {
            best = (ms, i);
        }
    }
    Ok(best.1)
}
