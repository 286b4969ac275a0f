//! `CudaExecutable`: a plan prepared for one GPU. `new` generates and compiles every step's
//! kernels and uploads the weights. `run_device` runs on device-resident tensors: it binds the
//! plan's symbols from the input shapes exactly as the CPU backend does (`crate::bind`), asks
//! the caller for every output buffer before queuing any work (ORT allocates them from the
//! shapes), and runs the steps on the device's stream, ordered after and before the caller's
//! stream. `run` is the host-tensor wrapper.
//!
//! What a run costs on the host (the point of this module):
//! - **Once per concrete shape signature** (the input dtypes and shapes), a `ShapeRun` is built
//!   and kept (up to `MAX_SHAPES`, least recently used evicted): the symbol bindings, every
//!   step's launch plan, the host-computed values and tables uploaded to the device, and each
//!   intermediate's place in the executable's arena (`arena::pack` by liveness on the concrete
//!   sizes). A repeat run at a known shape does none of that work.
//! - **No allocation** inside a run: intermediates, per-step scratch and (with CUDA graphs)
//!   staged inputs and outputs live in the arena, which grows only when a new shape needs more.
//! - **No host synchronisation** inside a run: the per-step error words (index out of range) are
//!   copied to pinned memory after the run and read at the start of a later run (or by `run`,
//!   which synchronises anyway, and by [`CudaExecutable::finish`]); the error still names the node.
//! - **CUDA graphs** (`cuda_graph`, on by default): the first run at a shape runs step by step,
//!   which lets cuDNN choose its algorithms and its workspace and the arena grow outside any
//!   capture; the second captures every launch and library call into a graph, and from then on
//!   a run is: copy the inputs into their arena slots, one `cuGraphLaunch`, copy the outputs to
//!   the caller's buffers. The copies are what keeps the graph valid when ORT hands different
//!   buffers each run (cheaper and simpler than patching kernel nodes, and cuBLAS/cuDNN nodes
//!   cannot be patched at all): the full SD UNet copies ~0.7 MB per run. A graph is captured
//!   again when the arena or cuDNN's workspace has moved since its capture. A capture that
//!   fails (a call that cannot be captured) is reported in `stats` and that shape runs step by
//!   step. Without graphs, outputs produced by generated steps are written in place.

use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use cudarc::driver::sys::CUstream;
use quilt_rewrites::plan::{BufferId, BufferKind, OpStep, Step};
use quilt_rewrites::{DType, Plan, Tensor, TensorData};

use super::arena::{self, Arena, Lifetime};
use super::codegen::{self, module_source, Action, Arg, StepKind, StepShapes};
use super::conv::cudnn::Pointers;
use super::device::{CudaDevice, DeviceBuffer, Event, Function};
use super::gemm::Blas;
use super::graph::CudaGraph;
use super::nvrtc;
use crate::bind;
use crate::error::{Error, Result};

/// Shape signatures whose schedules (and graphs) an executable keeps.
pub const MAX_SHAPES: usize = 8;

/// cuBLAS's workspace, owned by the executable so that captured GEMMs use fixed memory
/// (NVIDIA recommends 32 MiB on Hopper).
const BLAS_WORKSPACE: usize = 32 << 20;

struct Prepared {
    kind: StepKind,
    functions: Vec<Function>,
}

/// Time of one step in a profiled run (synchronised after each step): `ms` is host wall time
/// (launch overhead included), `gpu_ms` the device time between events around its work.
#[derive(Clone, Debug)]
pub struct StepTiming {
    pub node: String,
    pub op: String,
    pub ms: f64,
    pub gpu_ms: f64,
}

/// A tensor in device memory that the caller owns (an ORT input, say).
#[derive(Clone, Copy, Debug)]
pub struct DeviceTensor<'a> {
    /// Device address of the first element (may be 0 for an empty tensor).
    pub ptr: u64,
    pub shape: &'a [usize],
    pub dtype: DType,
}

/// What an executable's runs have done so far (tests and reports).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Runs queued step by step: first runs at a shape, profiled runs, runs with graphs off or
    /// after a failed capture.
    pub stepwise_runs: u64,
    /// Graphs captured (the second run at a shape, and again after the arena or cuDNN's
    /// workspace moved).
    pub captures: u64,
    /// Runs replayed from a graph (the capturing run included).
    pub replays: u64,
    pub capture_failures: u64,
    pub last_capture_error: Option<String>,
    /// Shape signatures held now.
    pub shapes: usize,
    /// Bytes of the arena: intermediates, scratch, staged inputs and outputs.
    pub arena_bytes: usize,
    /// Nodes of the most recently captured graph.
    pub graph_nodes: usize,
    /// Host time spent scheduling new shape signatures (bindings, launch plans, arena packing),
    /// in microseconds.
    pub schedule_us: u64,
    /// Host time spent queueing the steps of step-by-step runs (not captures, not profiled runs),
    /// by kind of action: where a first call at a new shape spends what the repeat does not
    /// (cuDNN plans and cuBLASLt heuristics built at their first call, kernels the CUDA driver
    /// loads lazily at their first launch).
    pub stepwise_queue: QueueTimes,
}

/// Host nanoseconds spent queueing actions, by kind (summed per action: a launch takes a few
/// microseconds, so whole microseconds per action would lose a quarter of it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueTimes {
    /// Generated kernels (`cuLaunchKernel`).
    pub launch_ns: u64,
    /// cuBLAS calls (cuBLAS chooses its algorithm inside the call).
    pub cublas_ns: u64,
    /// cuBLASLt calls (a plan built at a new shape included: `CudaExecutable::gemm_plan_stats`).
    pub cublaslt_ns: u64,
    /// cuDNN convolutions (a plan built at its first call included).
    pub conv_ns: u64,
    /// Memsets.
    pub zero_ns: u64,
}

impl QueueTimes {
    fn add(&mut self, o: &QueueTimes) {
        self.launch_ns += o.launch_ns;
        self.cublas_ns += o.cublas_ns;
        self.cublaslt_ns += o.cublaslt_ns;
        self.conv_ns += o.conv_ns;
        self.zero_ns += o.zero_ns;
    }
}

pub struct CudaExecutable {
    plan: Plan,
    device: Arc<CudaDevice>,
    blas: Blas,
    dnn: super::conv::cudnn::Dnn,
    steps: Vec<Prepared>,
    weights: Vec<Option<Arc<DeviceBuffer>>>,
    producer: Vec<Option<usize>>,
    /// Per buffer, the last step that reads its memory (directly or through a view).
    last_uses: Vec<Option<usize>>,
    /// Per buffer, the buffer whose memory it is (itself unless it is a view).
    owner: Vec<BufferId>,
    cuda_graphs: bool,
    /// Dropped by hand (under the device's stream lock) in `Drop`.
    runtime: ManuallyDrop<Mutex<Runtime>>,
    /// Distinct modules compiled for this plan.
    pub modules: usize,
}

fn step_error(plan: &Plan, index: usize, msg: String) -> Error {
    let Step::Op(s) = &plan.steps[index];
    Error::Step { node: s.node.clone(), op: s.op.name(), msg }
}

/// `QUILT_CUDA_GRAPH=0` turns CUDA graphs off for executables made by `new`/`with_device`.
fn graphs_from_env() -> bool {
    !matches!(std::env::var("QUILT_CUDA_GRAPH").as_deref(), Ok("0") | Ok("off") | Ok("false"))
}

impl CudaExecutable {
    /// Prepares `plan` on GPU 0. A step without a CUDA implementation is reported (naming its
    /// node) before the GPU is touched, so this also answers "can CUDA run it" on any machine.
    pub fn new(plan: Plan) -> Result<CudaExecutable> {
        let kinds = generate_all(&plan)?;
        Self::prepare(plan, kinds, CudaDevice::new(0)?)
    }

    pub fn with_device(plan: Plan, device: Arc<CudaDevice>) -> Result<CudaExecutable> {
        let kinds = generate_all(&plan)?;
        Self::prepare(plan, kinds, device)
    }

    fn prepare(plan: Plan, kinds: Vec<StepKind>, device: Arc<CudaDevice>) -> Result<CudaExecutable> {
        device.bind()?;
        let producer = check_structure(&plan)?;
        let blas = Blas::new(&device)?;
        let mut loaded: std::collections::HashMap<String, Vec<Function>> = std::collections::HashMap::new();
        let mut steps = Vec::with_capacity(kinds.len());
        for (i, kind) in kinds.into_iter().enumerate() {
            let functions = match &kind {
                StepKind::Code(c) if !c.kernels().is_empty() => {
                    let src = module_source(c.kernels());
                    if let Some(f) = loaded.get(&src) {
                        f.clone()
                    } else {
                        let compiled = nvrtc::compile_cached(&src, &format!("step{i}.cu"), device.arch).map_err(|e| step_error(&plan, i, e.to_string()))?;
                        let names: Vec<&str> = c.kernels().iter().map(|k| k.name.as_str()).collect();
                        let f = device.load_module(&compiled.cubin, &names).map_err(|e| step_error(&plan, i, e.to_string()))?;
                        loaded.insert(src, f.clone());
                        f
                    }
                }
                _ => Vec::new(),
            };
            steps.push(Prepared { kind, functions });
        }
        // Uploads queue on the device's stream: keep other executables' captures clear of them.
        let stream = device.lock_stream();
        let mut weights: Vec<Option<Arc<DeviceBuffer>>> = Vec::with_capacity(plan.buffers.len());
        for buf in &plan.buffers {
            weights.push(match &buf.kind {
                BufferKind::Weight(t) => Some(Arc::new(device.upload(&t.data.to_le_bytes())?)),
                _ => None,
            });
        }
        let runtime = Runtime::new(&device, plan.steps.len())?;
        blas.set_workspace(runtime.blas_workspace.ptr, runtime.blas_workspace.bytes)?;
        drop(stream);
        let last_uses = plan.memory_last_uses();
        let owner = plan.owners();
        Ok(CudaExecutable {
            modules: loaded.len(),
            plan,
            device,
            blas,
            dnn: Default::default(),
            steps,
            weights,
            producer,
            last_uses,
            owner,
            cuda_graphs: graphs_from_env(),
            runtime: ManuallyDrop::new(Mutex::new(runtime)),
        })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.device
    }

    /// Turns CUDA graphs on or off for later runs (default on, or `QUILT_CUDA_GRAPH=0`).
    pub fn set_cuda_graphs(&mut self, on: bool) {
        if on != self.cuda_graphs {
            self.cuda_graphs = on;
            // Schedules differ (staged I/O or not): drop them, after their work is done.
            let _ = self.device.synchronize();
            self.runtime.get_mut().unwrap_or_else(|p| p.into_inner()).shapes.clear();
        }
    }

    pub fn cuda_graphs(&self) -> bool {
        self.cuda_graphs
    }

    pub fn stats(&self) -> RunStats {
        let rt = self.lock_runtime();
        RunStats { shapes: rt.shapes.len(), arena_bytes: rt.arena.bytes(), ..rt.stats.clone() }
    }

    /// cuDNN's SDPA plans so far: the engine per attention shape, or why it declined one.
    pub fn cudnn_attention_report(&self) -> Vec<String> {
        self.dnn.sdpa_report()
    }

    /// What preparing convolution shapes has cost (cuDNN engine choice and plan finalization).
    pub fn conv_prepare_stats(&self) -> super::conv::cudnn::PrepareStats {
        self.dnn.prepare_stats()
    }

    /// What choosing cuBLASLt algorithms (new shapes' GEMM plans) has cost so far.
    pub fn gemm_plan_stats(&self) -> super::gemm::LtPlanStats {
        self.blas.lt_plan_stats()
    }

    /// Whether cuBLASLt GEMMs at a new batch or size take their class's earlier algorithm when
    /// it fits (default on; `QUILT_GEMM_REUSE=0` turns it off).
    pub fn reuse_gemm_algorithms(&self, on: bool) {
        self.blas.reuse_algorithms(on)
    }

    fn lock_runtime(&self) -> MutexGuard<'_, Runtime> {
        self.runtime.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks that every step of `plan` has a CUDA implementation, naming the first step that
    /// has none. Needs no GPU, and no weight data: a plan built from a graph whose large weights
    /// were not loaded (the EP's GetCapability) passes if its steps can run once they are.
    pub fn check(plan: &Plan) -> Result<()> {
        for (i, step) in plan.steps.iter().enumerate() {
            let Step::Op(s) = step;
            cuda_step_check(s).and_then(|()| codegen::generate(plan, s, i).map(|_| ())).map_err(|m| step_error(plan, i, m))?;
        }
        Ok(())
    }

    /// Runs the plan on inputs in `plan.inputs` order; returns outputs in `plan.outputs` order.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        self.run_host(inputs, None)
    }

    /// Like `run`, but synchronises after every step and reports each step's wall time (so
    /// device errors are attributed to their node). Never replays a graph.
    pub fn run_profiled(&self, inputs: &[Tensor]) -> Result<(Vec<Tensor>, Vec<StepTiming>)> {
        let mut t = Vec::with_capacity(self.steps.len());
        let out = self.run_host(inputs, Some(&mut t))?;
        Ok((out, t))
    }

    /// Runs the plan on device memory. `inputs` are in `plan.inputs` order. `outputs(j, shape)`
    /// is called once for every plan output `j`, in order and before any work is queued, and
    /// returns the device address to write it to (at least `shape`'s element count times the
    /// dtype's size in bytes; any address for an empty output). With `stream`, the work is
    /// ordered after what is already queued on it, and what is queued on it later runs after
    /// this work. The call returns once the work is queued, without waiting for the device: an
    /// index found out of range by this run's kernels is reported (naming the node) by a later
    /// call, or by [`CudaExecutable::finish`].
    pub fn run_device(
        &self,
        inputs: &[DeviceTensor],
        outputs: &mut dyn FnMut(usize, &[usize]) -> Result<u64>,
        stream: Option<CUstream>,
    ) -> Result<()> {
        let dev = &self.device;
        dev.bind()?;
        let _stream = dev.lock_stream();
        let mut rt = self.lock_runtime();
        if let Some(s) = stream {
            dev.wait_for(s)?;
        }
        let result = self.execute(&mut rt, inputs, outputs, None);
        if let Some(s) = stream {
            // Even after a failure: whatever was queued must finish before the caller's stream
            // reuses the memory.
            dev.signal_to(s)?;
        }
        result
    }

    /// Waits for the runs queued so far and reports an index out of range that any of them
    /// met (naming the node).
    pub fn finish(&self) -> Result<()> {
        self.device.bind()?;
        let _stream = self.device.lock_stream();
        let mut rt = self.lock_runtime();
        self.take_index_error(&mut rt, true, "")
    }

    /// An index error recorded in the error words: with `wait`, everything queued so far is
    /// read (waiting for the device); without, only a copy that has already arrived.
    fn take_index_error(&self, rt: &mut Runtime, wait: bool, when: &str) -> Result<()> {
        let first = if wait { rt.errors.take_all()? } else { rt.errors.take(false)? };
        match first {
            Some(i) if i < self.plan.steps.len() => Err(step_error(&self.plan, i, format!("an index is out of range{when}"))),
            _ => Ok(()),
        }
    }

    fn run_host(&self, inputs: &[Tensor], timings: Option<&mut Vec<StepTiming>>) -> Result<Vec<Tensor>> {
        let plan = &self.plan;
        let dev = &self.device;
        dev.bind()?;
        // The same checks (and messages) as the CPU backend, before anything is uploaded.
        bind::bind_inputs(plan, inputs)?;
        let _stream = dev.lock_stream();
        let mut rt = self.lock_runtime();
        let uploaded: Vec<DeviceBuffer> = inputs.iter().map(|t| dev.upload(&t.data.to_le_bytes())).collect::<Result<_>>()?;
        let views: Vec<DeviceTensor> =
            inputs.iter().zip(&uploaded).map(|(t, b)| DeviceTensor { ptr: b.ptr, shape: &t.shape, dtype: t.dtype() }).collect();
        let mut results: Vec<Option<(DeviceBuffer, Vec<usize>)>> = (0..plan.outputs.len()).map(|_| None).collect();
        self.execute(
            &mut rt,
            &views,
            &mut |j, shape| {
                let bytes = shape.iter().product::<usize>() * plan.buffers[plan.outputs[j].buffer].ty.dtype.size_bytes();
                let buf = dev.alloc(bytes)?;
                let ptr = buf.ptr;
                results[j] = Some((buf, shape.to_vec()));
                Ok(ptr)
            },
            timings,
        )?;
        let mut outputs = Vec::with_capacity(plan.outputs.len());
        for (v, r) in plan.outputs.iter().zip(results) {
            let (buf, shape) = r.ok_or_else(|| Error::Plan(format!("output '{}' was never allocated", v.name)))?;
            let dtype = plan.buffers[v.buffer].ty.dtype;
            let bytes = dev.download(&buf, buf.bytes)?;
            let data = TensorData::from_le_bytes(dtype, &bytes)
                .ok_or_else(|| Error::Plan(format!("output '{}': {} bytes are not {dtype} elements", v.name, bytes.len())))?;
            outputs.push(Tensor { shape, data });
        }
        // The downloads synchronised the stream: this run's error words are on the host.
        self.take_index_error(&mut rt, true, "")?;
        Ok(outputs)
    }

    /// One run, queued on the device's stream (the caller holds the stream lock).
    fn execute(
        &self,
        rt: &mut Runtime,
        inputs: &[DeviceTensor],
        outputs: &mut dyn FnMut(usize, &[usize]) -> Result<u64>,
        timings: Option<&mut Vec<StepTiming>>,
    ) -> Result<()> {
        let plan = &self.plan;
        let dev = &self.device;
        // An index error that an earlier run met and nobody has read yet.
        self.take_index_error(rt, false, " (met by an earlier run)")?;

        let key: Vec<(DType, Vec<usize>)> = inputs.iter().map(|t| (t.dtype, t.shape.to_vec())).collect();
        let at = match rt.shapes.iter().position(|s| s.key == key) {
            Some(i) => {
                let s = rt.shapes.remove(i);
                rt.shapes.push(s);
                rt.shapes.len() - 1
            }
            None => {
                let started = Instant::now();
                let schedule = self.schedule(key, inputs, self.cuda_graphs)?;
                rt.stats.schedule_us += started.elapsed().as_micros() as u64;
                if rt.shapes.len() >= MAX_SHAPES {
                    // The evicted graph may still be running.
                    dev.synchronize()?;
                    rt.shapes.remove(0);
                }
                rt.shapes.push(schedule);
                rt.shapes.len() - 1
            }
        };
        let Runtime { arena, shapes, errors, stats, .. } = rt;
        let sr = &mut shapes[at];

        // Every output's destination, before any work is queued.
        let mut destinations = Vec::with_capacity(plan.outputs.len());
        for (j, v) in plan.outputs.iter().enumerate() {
            let (shape, bytes) = &sr.outputs[j];
            let ptr = outputs(j, shape)?;
            if ptr == 0 && *bytes > 0 {
                return Err(Error::Plan(format!("output '{}': the caller gave no buffer for {bytes} bytes", v.name)));
            }
            destinations.push(ptr);
        }
        arena.reserve(sr.arena_bytes)?;
        let input_ptrs: Vec<u64> = inputs.iter().map(|t| t.ptr).collect();
        let bases = Bases {
            arena: arena.base(),
            consts: sr.consts.as_ref().map_or(0, |b| b.ptr),
            errors: errors.words.ptr,
            inputs: &input_ptrs,
            outputs: &destinations,
        };
        for &(i, offset, bytes) in &sr.stage_in {
            dev.copy_d2d(bases.arena + offset as u64, input_ptrs[i], bytes)?;
        }

        let replay = self.cuda_graphs && timings.is_none() && sr.runs > 0 && sr.capture_error.is_none();
        if replay {
            let dnn_shapes = self.dnn.shapes();
            let stale = sr.graph.as_ref().is_none_or(|g| g.arena != bases.arena || g.dnn_shapes != dnn_shapes);
            if stale {
                if sr.graph.take().is_some() {
                    // The old graph may still be running.
                    dev.synchronize()?;
                }
                match CudaGraph::capture(dev, || self.queue_steps(sr, &bases, None, &mut QueueTimes::default())) {
                    Ok(graph) => {
                        stats.captures += 1;
                        stats.graph_nodes = graph.nodes;
                        sr.graph = Some(Captured { graph, arena: bases.arena, dnn_shapes });
                    }
                    Err(e) => {
                        stats.capture_failures += 1;
                        stats.last_capture_error = Some(e.to_string());
                        sr.capture_error = Some(e.to_string());
                    }
                }
            }
        }
        if sr.runs == 0 {
            self.prepare_convs(sr, &bases);
        }
        match (&sr.graph, replay && sr.capture_error.is_none()) {
            (Some(captured), true) => {
                captured.graph.launch(dev)?;
                stats.replays += 1;
            }
            _ => {
                let mut queued = QueueTimes::default();
                let profiled = timings.is_some();
                self.queue_steps(sr, &bases, timings, &mut queued)?;
                stats.stepwise_runs += 1;
                if !profiled {
                    stats.stepwise_queue.add(&queued);
                }
            }
        }
        for &(j, src, bytes) in &sr.copies_out {
            dev.copy_d2d(destinations[j], bases.at(src), bytes)?;
        }
        errors.queue_copy()?;
        if sr.runs == 0 {
            // The first shape built its cuDNN attention plans inside its first call; later new
            // shapes build theirs in the background (their first call waits for no compilation).
            self.dnn.build_sdpa_in_background();
        }
        sr.runs += 1;
        Ok(())
    }

    /// Builds the cuDNN plans of a new shape's convolutions together, on worker threads, before
    /// its first run queues them one by one (`Dnn::prepare`, when it is on).
    fn prepare_convs(&self, sr: &ShapeRun, bases: &Bases) {
        if !self.dnn.prepares() {
            return;
        }
        let mut calls = Vec::new();
        for st in &sr.steps {
            for action in &st.actions {
                if let Action::Conv(call) = action {
                    calls.push((call.clone(), Pointers::of(call, &|a| bases.arg(st, a))));
                }
            }
        }
        if !calls.is_empty() {
            let device = &self.device;
            self.dnn.prepare(&calls, &|| device.bind().map_err(|e| e.to_string()));
        }
    }

    /// Queues every step of `sr` (launches, library calls, memsets; no allocation, no sync
    /// unless `timings` asks for per-step times).
    /// `queued` accumulates the host time per kind of action.
    fn queue_steps(&self, sr: &ShapeRun, bases: &Bases, mut timings: Option<&mut Vec<StepTiming>>, queued: &mut QueueTimes) -> Result<()> {
        let dev = &self.device;
        for st in &sr.steps {
            let Step::Op(s) = &self.plan.steps[st.index];
            let fail = |msg: String| Error::Step { node: s.node.clone(), op: s.op.name(), msg };
            let started = Instant::now();
            let ptr = |a: Arg| bases.arg(st, a);
            let prepared = &self.steps[st.index];
            let events = match timings {
                Some(_) => {
                    let (a, b) = (dev.timing_event()?, dev.timing_event()?);
                    a.record(dev.cu_stream())?;
                    Some((a, b))
                }
                None => None,
            };
            for action in &st.actions {
                let t = Instant::now();
                let spent = match action {
                    Action::Launch { .. } => &mut queued.launch_ns,
                    Action::Gemm(_) => &mut queued.cublas_ns,
                    Action::LtGemm(_) => &mut queued.cublaslt_ns,
                    Action::Conv(_) | Action::Sdpa(_) => &mut queued.conv_ns,
                    Action::Zero { .. } => &mut queued.zero_ns,
                };
                self.queue_action(prepared, action, &ptr).map_err(fail)?;
                *spent += t.elapsed().as_nanos() as u64;
            }
            if let Some(t) = timings.as_deref_mut() {
                // Synchronising here also attributes asynchronous faults to this node.
                let (start, end) = events.as_ref().expect("timing events exist in a profiled run");
                end.record(dev.cu_stream())?;
                dev.synchronize().map_err(|e| fail(e.to_string()))?;
                let gpu_ms = end.ms_since(start)?;
                t.push(StepTiming { node: s.node.clone(), op: s.op.name(), ms: started.elapsed().as_secs_f64() * 1e3, gpu_ms });
            }
        }
        Ok(())
    }

    /// Queues one action of a step whose arguments `ptr` resolves.
    fn queue_action(&self, prepared: &Prepared, action: &Action, ptr: &dyn Fn(Arg) -> u64) -> std::result::Result<(), String> {
        let dev = &self.device;
        match action {
            Action::Launch { kernel, work, params, args } => {
                let f = prepared.functions.get(*kernel).ok_or_else(|| format!("kernel {kernel} was not compiled"))?;
                let (grid, block) = work.launch_dims();
                let ptrs: Vec<u64> = args.iter().map(|&a| ptr(a)).collect();
                dev.launch(f, grid, block, params, &ptrs).map_err(|e| e.to_string())
            }
            Action::Gemm(call) => self.blas.gemm(call, ptr),
            Action::LtGemm(call) => self.blas.lt_gemm(call, ptr),
            Action::Conv(call) => self.dnn.conv(call, dev.cu_stream(), ptr),
            Action::Sdpa(call) => match self.dnn.sdpa(call, dev.cu_stream(), ptr)? {
                true => Ok(()),
                false => self.queue_action(prepared, &call.fallback, ptr),
            },
            Action::Zero { arg, bytes } => dev.memset_zero(ptr(*arg), *bytes).map_err(|e| e.to_string()),
        }
    }

    /// Everything about a run at one shape signature that does not change between runs.
    /// `staged`: inputs are copied into the arena and outputs out of it (what a graph needs).
    fn schedule(&self, key: Vec<(DType, Vec<usize>)>, inputs: &[DeviceTensor], staged: bool) -> Result<ShapeRun> {
        let plan = &self.plan;
        let described: Vec<(DType, &[usize])> = inputs.iter().map(|t| (t.dtype, t.shape)).collect();
        let bindings = bind::bind_shapes(plan, &described)?;
        let shapes = bind::buffer_shapes(plan, &bindings, &self.producer)?;
        let nbytes = |b: BufferId| shapes[b].iter().product::<usize>() * plan.buffers[b].ty.dtype.size_bytes();
        let n_steps = plan.steps.len();
        let n_bufs = plan.buffers.len();

        // Views (`BufferKind::View`: Reshape, Identity) are their owner's memory. Their element
        // counts (so bytes: a view keeps the dtype) were checked against it by `buffer_shapes`.
        let root: &[BufferId] = &self.owner;
        // The last step that needs each owner's memory (outputs: past the last step).
        let mut last: Vec<Option<usize>> = self.last_uses.clone();
        for v in &plan.outputs {
            last[root[v.buffer]] = Some(n_steps);
        }

        // Where each owner lives. Arena owners are placed after packing.
        let mut consts = ConstBlob::default();
        let mut loc: Vec<Loc> = vec![Loc::Null; n_bufs];
        let mut lives: Vec<Lifetime> = Vec::new();
        let mut lives_of: Vec<Option<usize>> = vec![None; n_bufs];
        let mut direct = vec![false; n_bufs];
        let mut stage_in = Vec::new();
        if !staged {
            for (j, v) in plan.outputs.iter().enumerate() {
                let b = v.buffer;
                let generated = root[b] == b && self.producer[b].is_some_and(|i| matches!(self.steps[i].kind, StepKind::Code(_)));
                if generated && !direct[b] {
                    direct[b] = true;
                    loc[b] = Loc::Output(j);
                }
            }
        }
        for (b, buf) in plan.buffers.iter().enumerate() {
            if root[b] != b || direct[b] {
                continue;
            }
            match &buf.kind {
                BufferKind::Weight(_) => loc[b] = Loc::Device(self.weights[b].as_ref().map_or(0, |w| w.ptr)),
                BufferKind::MissingWeight(_) => return Err(Error::Plan(format!("buffer %{b}: its weight was not loaded"))),
                // Skipped above (a view's root is another buffer).
                BufferKind::View { .. } => {}
                BufferKind::Input(i) if !staged => loc[b] = Loc::Input(*i),
                BufferKind::Input(i) => {
                    lives_of[b] = Some(lives.len());
                    lives.push(Lifetime { first: 0, last: last[b].unwrap_or(0), bytes: nbytes(b) });
                    stage_in.push((*i, b, nbytes(b)));
                }
                BufferKind::Intermediate => match self.producer[b].map(|i| (i, &self.steps[i].kind)) {
                    Some((i, StepKind::HostValue(values))) => {
                        let fail = |msg: String| step_error(plan, i, msg);
                        let v: Vec<u8> = values
                            .iter()
                            .map(|d| bindings.eval(d).map(|x| x.to_le_bytes()))
                            .collect::<std::result::Result<Vec<_>, _>>()
                            .map_err(fail)?
                            .concat();
                        if v.len() != nbytes(b) {
                            return Err(fail(format!("{} values for an output of {} bytes", values.len(), nbytes(b))));
                        }
                        loc[b] = consts.push(&v);
                    }
                    Some((i, _)) => {
                        lives_of[b] = Some(lives.len());
                        lives.push(Lifetime { first: i, last: last[b].unwrap_or(i).max(i), bytes: nbytes(b) });
                    }
                    None => return Err(Error::Plan(format!("buffer %{b} has no producing step"))),
                },
            }
        }

        // Every step's launch plan at these shapes; scratch lives for its step only.
        let mut steps = Vec::with_capacity(n_steps);
        let mut scratch_lives: Vec<Vec<usize>> = Vec::with_capacity(n_steps);
        for (index, step) in plan.steps.iter().enumerate() {
            let Step::Op(s) = step;
            let fail = |msg: String| Error::Step { node: s.node.clone(), op: s.op.name(), msg };
            let mut st = StepRun { index, ins: Vec::new(), outs: Vec::new(), scratch: Vec::new(), tables: Vec::new(), counters: Loc::Null, actions: Vec::new() };
            let mut mine = Vec::new();
            if let StepKind::Code(code) = &self.steps[index].kind {
                for (k, b) in s.inputs.iter().enumerate() {
                    if let Some(b) = b {
                        if matches!(loc[root[*b]], Loc::Null) && lives_of[root[*b]].is_none() {
                            return Err(fail(format!("input {k} (buffer %{b}) holds no value when this step runs")));
                        }
                    }
                }
                let st_shapes = StepShapes {
                    ins: s.inputs.iter().map(|b| b.map(|b| shapes[b].as_slice())).collect(),
                    outs: s.outputs.iter().map(|&b| shapes[b].as_slice()).collect(),
                    bindings: &bindings,
                };
                let lp = code.plan(&st_shapes).map_err(fail)?;
                for &bytes in &lp.scratch {
                    mine.push(lives.len());
                    lives.push(Lifetime { first: index, last: index, bytes });
                }
                st.tables = lp.tables.iter().map(|t| consts.push(t)).collect();
                if lp.counters > 0 {
                    // Uploaded as zeros with the constants; the kernels leave them zero.
                    st.counters = consts.push(&vec![0u8; 4 * lp.counters]);
                }
                st.actions = lp.actions;
            }
            scratch_lives.push(mine);
            steps.push(st);
        }

        let packing = arena::pack(&lives);
        for b in 0..n_bufs {
            if let Some(k) = lives_of[b] {
                loc[b] = Loc::Arena(packing.offsets[k]);
            }
        }
        let at = |b: BufferId| loc[root[b]];
        for (st, mine) in steps.iter_mut().zip(&scratch_lives) {
            let Step::Op(s) = &plan.steps[st.index];
            if st.actions.is_empty() {
                continue;
            }
            st.ins = s.inputs.iter().map(|b| b.map_or(Loc::Null, at)).collect();
            st.outs = s.outputs.iter().map(|&b| at(b)).collect();
            st.scratch = mine.iter().map(|&k| Loc::Arena(packing.offsets[k])).collect();
        }
        // Steps that queue nothing (host values) are kept only for profiled timings.
        let stage_in = stage_in.into_iter().map(|(i, b, bytes)| (i, packing.offsets[lives_of[b].expect("staged inputs are packed")], bytes)).collect();
        let mut copies_out = Vec::new();
        for (j, v) in plan.outputs.iter().enumerate() {
            let b = v.buffer;
            if !matches!(at(b), Loc::Output(k) if k == j) {
                copies_out.push((j, at(b), nbytes(b)));
            }
        }
        let consts = if consts.bytes.is_empty() { None } else { Some(self.device.upload(&consts.bytes)?) };
        Ok(ShapeRun {
            key,
            outputs: plan.outputs.iter().map(|v| (shapes[v.buffer].clone(), nbytes(v.buffer))).collect(),
            stage_in,
            steps,
            copies_out,
            arena_bytes: packing.size,
            consts,
            runs: 0,
            graph: None,
            capture_error: None,
        })
    }
}

impl Drop for CudaExecutable {
    fn drop(&mut self) {
        // Device memory is freed on the device's stream: not while another executable captures.
        let _ = self.device.bind();
        let _stream = self.device.lock_stream();
        let _ = self.device.synchronize();
        // SAFETY: dropped once, here; `self.runtime` is not used after this.
        unsafe { ManuallyDrop::drop(&mut self.runtime) };
        self.weights.clear();
    }
}

/// Where a buffer's bytes are during a run, resolved to an address by [`Bases::at`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    Null,
    /// Offset into the executable's arena.
    Arena(usize),
    /// Offset into the shape's uploaded constants (host values, tables).
    Const(usize),
    /// A fixed device address (a weight).
    Device(u64),
    /// The caller's input `i`.
    Input(usize),
    /// The caller's output `j` (written in place; graphs off only).
    Output(usize),
}

/// The addresses a run resolves locations against.
struct Bases<'a> {
    arena: u64,
    consts: u64,
    errors: u64,
    inputs: &'a [u64],
    outputs: &'a [u64],
}

impl Bases<'_> {
    fn at(&self, l: Loc) -> u64 {
        match l {
            Loc::Null => 0,
            Loc::Arena(o) => self.arena + o as u64,
            Loc::Const(o) => self.consts + o as u64,
            Loc::Device(p) => p,
            Loc::Input(i) => self.inputs.get(i).copied().unwrap_or(0),
            Loc::Output(j) => self.outputs.get(j).copied().unwrap_or(0),
        }
    }

    /// The device address of step `st`'s argument `a` (0 where the step has none).
    fn arg(&self, st: &StepRun, a: Arg) -> u64 {
        match a {
            Arg::In(k) => st.ins.get(k).map_or(0, |&l| self.at(l)),
            Arg::InAt(k, bytes) => st.ins.get(k).map_or(0, |&l| self.at(l) + bytes as u64),
            Arg::Out(k) => st.outs.get(k).map_or(0, |&l| self.at(l)),
            Arg::Scratch(k) => st.scratch.get(k).map_or(0, |&l| self.at(l)),
            Arg::Table(k) => st.tables.get(k).map_or(0, |&l| self.at(l)),
            Arg::ErrFlag => self.errors + 4 * st.index as u64,
            Arg::Counters => self.at(st.counters),
        }
    }
}

/// Host-computed bytes of one shape, uploaded once (with the steps' zeroed counter words, the only
/// part kernels write; see `LaunchPlan::counters`).
#[derive(Default)]
struct ConstBlob {
    bytes: Vec<u8>,
}

impl ConstBlob {
    fn push(&mut self, data: &[u8]) -> Loc {
        let at = self.bytes.len().div_ceil(arena::ALIGN) * arena::ALIGN;
        self.bytes.resize(at, 0);
        self.bytes.extend_from_slice(data);
        Loc::Const(at)
    }
}

/// One step at one shape: where its operands are, and what it queues.
struct StepRun {
    index: usize,
    ins: Vec<Loc>,
    outs: Vec<Loc>,
    scratch: Vec<Loc>,
    tables: Vec<Loc>,
    /// `LaunchPlan::counters` (in the constants buffer, which only these words are written in).
    counters: Loc,
    actions: Vec<Action>,
}

struct Captured {
    graph: CudaGraph,
    /// The arena base and the number of cuDNN shapes when captured: a new cuDNN shape may have
    /// grown (moved) cuDNN's workspace, which the graph's convolutions baked in.
    arena: u64,
    dnn_shapes: usize,
}

/// A run at one shape signature, prepared (see the module docs).
struct ShapeRun {
    key: Vec<(DType, Vec<usize>)>,
    /// Each plan output's shape and bytes.
    outputs: Vec<(Vec<usize>, usize)>,
    /// (input index, arena offset, bytes) copied in before the steps (graphs on).
    stage_in: Vec<(usize, usize, usize)>,
    steps: Vec<StepRun>,
    /// (output index, source, bytes) copied to the caller after the steps.
    copies_out: Vec<(usize, Loc, usize)>,
    arena_bytes: usize,
    consts: Option<DeviceBuffer>,
    runs: u64,
    graph: Option<Captured>,
    capture_error: Option<String>,
}

/// The mutable side of an executable, behind its mutex.
struct Runtime {
    arena: Arena,
    /// Least recently used first.
    shapes: Vec<ShapeRun>,
    errors: ErrorFlags,
    blas_workspace: DeviceBuffer,
    stats: RunStats,
}

impl Runtime {
    fn new(device: &Arc<CudaDevice>, steps: usize) -> Result<Runtime> {
        Ok(Runtime {
            arena: Arena::new(device),
            shapes: Vec::new(),
            errors: ErrorFlags::new(device, steps)?,
            blas_workspace: device.alloc(BLAS_WORKSPACE)?,
            stats: RunStats::default(),
        })
    }
}

/// One 4-byte word per step that kernels set when they meet an index out of range. The words
/// stay set on the device until the host has read them set; reading goes through pinned memory
/// copied asynchronously after a run, so no run waits for the device.
struct ErrorFlags {
    device: Arc<CudaDevice>,
    words: DeviceBuffer,
    host: *mut c_void,
    copied: Event,
    /// A copy was queued and not read yet.
    pending: bool,
}

// SAFETY: the pinned pointer is only used under the executable's runtime mutex.
unsafe impl Send for ErrorFlags {}

impl ErrorFlags {
    fn new(device: &Arc<CudaDevice>, steps: usize) -> Result<ErrorFlags> {
        let bytes = 4 * steps.max(1);
        let words = device.alloc(bytes)?;
        device.memset_zero(words.ptr, bytes)?;
        let host = device.malloc_pinned(bytes)?;
        // SAFETY: `host` holds `bytes` bytes.
        unsafe { std::ptr::write_bytes(host as *mut u8, 0, bytes) };
        Ok(ErrorFlags { device: device.clone(), words, host, copied: device.event()?, pending: false })
    }

    /// Queues a copy of the words to the host, unless an earlier copy is still unread (the
    /// words are sticky, so a later copy sees what this one would have).
    fn queue_copy(&mut self) -> Result<()> {
        if self.pending {
            return Ok(());
        }
        let stream = self.device.cu_stream();
        // SAFETY: both ranges hold `words.bytes` bytes and live as long as `self`; the host
        // side is read only after `copied` completes.
        unsafe { self.device.copy_any(self.host as u64, self.words.ptr, self.words.bytes, Some(stream)) }?;
        self.copied.record(stream)?;
        self.pending = true;
        Ok(())
    }

    /// The first step whose word the last copy found set (then the words are cleared). Without
    /// `wait`, a copy still in flight is left for later.
    fn take(&mut self, wait: bool) -> Result<Option<usize>> {
        if !self.pending || (!wait && !self.copied.is_complete()?) {
            return Ok(None);
        }
        self.copied.synchronize()?;
        self.pending = false;
        let n = self.words.bytes / 4;
        // SAFETY: the copy into `host` (n words) has completed.
        let words = unsafe { std::slice::from_raw_parts(self.host as *const u32, n) };
        let first = words.iter().position(|&w| w != 0);
        if first.is_some() {
            self.device.memset_zero(self.words.ptr, self.words.bytes)?;
            // SAFETY: as above; no copy is in flight.
            unsafe { std::ptr::write_bytes(self.host as *mut u8, 0, self.words.bytes) };
        }
        Ok(first)
    }
}

impl ErrorFlags {
    /// Every word set by work queued so far (waits for the device).
    fn take_all(&mut self) -> Result<Option<usize>> {
        if let Some(i) = self.take(true)? {
            return Ok(Some(i));
        }
        self.queue_copy()?;
        self.take(true)
    }
}

impl Drop for ErrorFlags {
    fn drop(&mut self) {
        let _ = self.copied.synchronize();
        // SAFETY: no copy into `host` is in flight; not used after this.
        let _ = unsafe { self.device.free_pinned(self.host) };
    }
}

/// Checks the plan's structure and generates every step's code (no GPU needed).
fn generate_all(plan: &Plan) -> Result<Vec<StepKind>> {
    check_structure(plan)?;
    let mut kinds = Vec::with_capacity(plan.steps.len());
    for (i, step) in plan.steps.iter().enumerate() {
        let Step::Op(s) = step;
        kinds.push(codegen::generate(plan, s, i).map_err(|m| step_error(plan, i, m))?);
    }
    Ok(kinds)
}

/// The structural checks both backends make (`crate::plan_check`), plus what CUDA needs of every
/// step: not opaque, at least one output. Returns each buffer's producing step.
fn check_structure(plan: &Plan) -> Result<Vec<Option<usize>>> {
    crate::plan_check::check_structure(plan, cuda_step_check)
}

/// What CUDA needs of every step beyond the structural checks.
fn cuda_step_check(s: &OpStep) -> std::result::Result<(), String> {
    match &s.op {
        quilt_rewrites::Op::Opaque { reason, .. } => Err(format!("not supported by quilt: {reason}")),
        _ if s.outputs.is_empty() => Err("has no outputs".into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quilt_rewrites::import::{import, ImportOptions};
    use quilt_rewrites::onnx::{load, LoadOptions};

    /// The EP's GetCapability builds plans without the large weights; `check` must accept them
    /// (the steps can run once the weights are there), while preparing such a plan must not.
    #[test]
    fn check_accepts_a_plan_whose_weights_are_not_loaded() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fixtures/unet/model.onnx");
        let src = load(&path, &LoadOptions { load_weights: false }).unwrap();
        let graph = import(&src, &ImportOptions { lenient: false }).unwrap().graph;
        let plan = quilt_rewrites::optimize_with(&graph, &Default::default()).unwrap();
        assert!(plan.buffers.iter().any(|b| matches!(b.kind, BufferKind::MissingWeight(_))), "the fixture has large weights");
        CudaExecutable::check(&plan).unwrap();
        let e = generate_all(&plan).err().expect("a plan without weight data cannot be prepared").to_string();
        assert!(e.contains("was not loaded"), "{e}");
    }
}
