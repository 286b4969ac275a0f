//! `CudaExecutable`: a plan prepared for one GPU. `new` generates and compiles every step's
//! kernels and uploads the weights; `run` takes host tensors, binds the plan's symbols exactly
//! as the CPU backend does (`crate::bind`), runs the steps on the device's stream and returns
//! host tensors. Intermediates are freed after their last reader (stream-ordered).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use quilt_rewrites::plan::{BufferId, BufferKind, Step};
use quilt_rewrites::{Plan, Tensor, TensorData};

use super::codegen::{self, module_source, Action, Arg, StepKind, StepShapes, Work, BLOCK};
use super::device::{CudaDevice, DeviceBuffer, Function};
use super::gemm::Blas;
use super::nvrtc;
use crate::bind;
use crate::error::{Error, Result};

struct Prepared {
    kind: StepKind,
    functions: Vec<Function>,
}

/// Wall time of one step in a profiled run (synchronised after each step).
#[derive(Clone, Debug)]
pub struct StepTiming {
    pub node: String,
    pub op: String,
    pub ms: f64,
}

pub struct CudaExecutable {
    plan: Plan,
    device: Arc<CudaDevice>,
    blas: Blas,
    steps: Vec<Prepared>,
    weights: Vec<Option<Arc<DeviceBuffer>>>,
    producer: Vec<Option<usize>>,
    last_uses: Vec<Option<usize>>,
    is_output: Vec<bool>,
    /// Distinct modules compiled for this plan.
    pub modules: usize,
}

fn step_error(plan: &Plan, index: usize, msg: String) -> Error {
    let Step::Op(s) = &plan.steps[index];
    Error::Step { node: s.node.clone(), op: s.op.name(), msg }
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
        let mut loaded: HashMap<String, Vec<Function>> = HashMap::new();
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
        let mut weights: Vec<Option<Arc<DeviceBuffer>>> = Vec::with_capacity(plan.buffers.len());
        for buf in &plan.buffers {
            weights.push(match &buf.kind {
                BufferKind::Weight(t) => Some(Arc::new(device.upload(&t.data.to_le_bytes())?)),
                _ => None,
            });
        }
        let last_uses = plan.last_uses();
        let mut is_output = vec![false; plan.buffers.len()];
        for v in &plan.outputs {
            is_output[v.buffer] = true;
        }
        Ok(CudaExecutable { modules: loaded.len(), plan, device, blas, steps, weights, producer, last_uses, is_output })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.device
    }

    /// Runs the plan on inputs in `plan.inputs` order; returns outputs in `plan.outputs` order.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        self.execute(inputs, None)
    }

    /// Like `run`, but synchronises after every step and reports each step's wall time (so
    /// device errors are attributed to their node).
    pub fn run_profiled(&self, inputs: &[Tensor]) -> Result<(Vec<Tensor>, Vec<StepTiming>)> {
        let mut t = Vec::with_capacity(self.steps.len());
        let out = self.execute(inputs, Some(&mut t))?;
        Ok((out, t))
    }

    fn execute(&self, inputs: &[Tensor], mut timings: Option<&mut Vec<StepTiming>>) -> Result<Vec<Tensor>> {
        let plan = &self.plan;
        let dev = &self.device;
        dev.bind()?;
        let bindings = bind::bind_inputs(plan, inputs)?;
        let shapes = bind::buffer_shapes(plan, &bindings, &self.producer)?;
        let mut slots: Vec<Option<Arc<DeviceBuffer>>> = self.weights.clone();
        for (b, buf) in plan.buffers.iter().enumerate() {
            if let BufferKind::Input(i) = buf.kind {
                slots[b] = Some(Arc::new(dev.upload(&inputs[i].data.to_le_bytes())?));
            }
        }
        // One error word per step for kernels that meet invalid data (indices out of range).
        let errs = dev.alloc(4 * plan.steps.len().max(1))?;
        dev.memset_zero(errs.ptr, errs.bytes)?;

        for (index, step) in plan.steps.iter().enumerate() {
            let Step::Op(s) = step;
            let fail = |msg: String| Error::Step { node: s.node.clone(), op: s.op.name(), msg };
            let started = Instant::now();
            let ins: Vec<Option<Arc<DeviceBuffer>>> = s
                .inputs
                .iter()
                .enumerate()
                .map(|(k, b)| match b {
                    None => Ok(None),
                    Some(b) => slots[*b].clone().map(Some).ok_or_else(|| fail(format!("input {k} (buffer %{b}) holds no value when this step runs"))),
                })
                .collect::<Result<_>>()?;
            let out_bytes: Vec<usize> = s.outputs.iter().map(|&b| shapes[b].iter().product::<usize>() * plan.buffers[b].ty.dtype.size_bytes()).collect();
            let prepared = &self.steps[index];
            let outs: Vec<Arc<DeviceBuffer>> = match &prepared.kind {
                StepKind::Alias => {
                    let x = ins[0].clone().ok_or_else(|| fail("input 0 is missing".into()))?;
                    let in_bytes = s.inputs[0].map(|b| shapes[b].iter().product::<usize>() * plan.buffers[b].ty.dtype.size_bytes()).unwrap_or(0);
                    if in_bytes != out_bytes[0] {
                        return Err(fail(format!("{in_bytes} bytes in, {} bytes out: the element count changes", out_bytes[0])));
                    }
                    vec![x]
                }
                StepKind::HostValue(values) => {
                    let v: Vec<u8> = values.iter().map(|d| bindings.eval(d).map(|x| x.to_le_bytes())).collect::<std::result::Result<Vec<_>, _>>().map_err(fail)?.concat();
                    if v.len() != out_bytes[0] {
                        return Err(fail(format!("{} values for an output of {} bytes", values.len(), out_bytes[0])));
                    }
                    vec![Arc::new(dev.upload(&v)?)]
                }
                StepKind::Code(code) => {
                    let outs: Vec<Arc<DeviceBuffer>> = out_bytes.iter().map(|&n| dev.alloc(n).map(Arc::new)).collect::<Result<_>>()?;
                    let st = StepShapes {
                        ins: s.inputs.iter().map(|b| b.map(|b| shapes[b].as_slice())).collect(),
                        outs: s.outputs.iter().map(|&b| shapes[b].as_slice()).collect(),
                        bindings: &bindings,
                    };
                    let lp = code.plan(&st).map_err(fail)?;
                    let scratch: Vec<DeviceBuffer> = lp.scratch.iter().map(|&n| dev.alloc(n)).collect::<Result<_>>()?;
                    let tables: Vec<DeviceBuffer> = lp.tables.iter().map(|t| dev.upload(t)).collect::<Result<_>>()?;
                    let ptr = |a: Arg| -> u64 {
                        match a {
                            Arg::In(k) => ins.get(k).and_then(|b| b.as_ref()).map_or(0, |b| b.ptr),
                            Arg::Out(k) => outs.get(k).map_or(0, |b| b.ptr),
                            Arg::Scratch(k) => scratch.get(k).map_or(0, |b| b.ptr),
                            Arg::Table(k) => tables.get(k).map_or(0, |b| b.ptr),
                            Arg::ErrFlag => errs.ptr + 4 * index as u64,
                        }
                    };
                    for action in &lp.actions {
                        match action {
                            Action::Launch { kernel, work, params, args } => {
                                let f = prepared.functions.get(*kernel).ok_or_else(|| fail(format!("kernel {kernel} was not compiled")))?;
                                let (grid, block) = match *work {
                                    Work::Elements(n) => (n.div_ceil(BLOCK as u64).clamp(1, 1 << 16) as u32, BLOCK),
                                    Work::Rows(n) => (n.clamp(1, 1 << 20) as u32, BLOCK),
                                };
                                let ptrs: Vec<u64> = args.iter().map(|&a| ptr(a)).collect();
                                dev.launch(f, grid, block, params, &ptrs).map_err(|e| fail(e.to_string()))?;
                            }
                            Action::Gemm(call) => self.blas.gemm(call, &ptr).map_err(fail)?,
                            Action::Zero { arg, bytes } => dev.memset_zero(ptr(*arg), *bytes).map_err(|e| fail(e.to_string()))?,
                        }
                    }
                    if timings.is_some() {
                        // Scratch and tables are freed stream-ordered on drop; synchronising
                        // here also attributes asynchronous faults to this node.
                        dev.synchronize().map_err(|e| fail(e.to_string()))?;
                    }
                    outs
                }
            };
            for (&b, o) in s.outputs.iter().zip(outs) {
                slots[b] = Some(o);
            }
            for &b in s.inputs.iter().flatten().chain(&s.outputs) {
                if self.is_freeable(b, index) {
                    slots[b] = None;
                }
            }
            if let Some(t) = timings.as_deref_mut() {
                dev.synchronize().map_err(|e| fail(e.to_string()))?;
                t.push(StepTiming { node: s.node.clone(), op: s.op.name(), ms: started.elapsed().as_secs_f64() * 1e3 });
            }
        }

        let flags = dev.download(&errs, errs.bytes)?;
        if let Some(i) = flags.chunks_exact(4).position(|w| w != [0, 0, 0, 0]) {
            if i < plan.steps.len() {
                return Err(step_error(plan, i, "an index is out of range".into()));
            }
        }
        let mut outputs = Vec::with_capacity(plan.outputs.len());
        for v in &plan.outputs {
            let buf = slots[v.buffer].as_ref().ok_or_else(|| Error::Plan(format!("output '{}' (buffer %{}) was never written", v.name, v.buffer)))?;
            let ty = &plan.buffers[v.buffer].ty;
            let shape = shapes[v.buffer].clone();
            let bytes = dev.download(buf, shape.iter().product::<usize>() * ty.dtype.size_bytes())?;
            let data = TensorData::from_le_bytes(ty.dtype, &bytes).ok_or_else(|| Error::Plan(format!("output '{}': {} bytes are not {} elements", v.name, bytes.len(), ty.dtype)))?;
            outputs.push(Tensor { shape, data });
        }
        Ok(outputs)
    }

    fn is_freeable(&self, b: BufferId, step: usize) -> bool {
        matches!(self.plan.buffers[b].kind, BufferKind::Intermediate)
            && !self.is_output[b]
            && self.last_uses[b].is_none_or(|last| last <= step)
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
    crate::plan_check::check_structure(plan, |s| match &s.op {
        quilt_rewrites::Op::Opaque { reason, .. } => Err(format!("not supported by quilt: {reason}")),
        _ if s.outputs.is_empty() => Err("has no outputs".into()),
        _ => Ok(()),
    })
}
