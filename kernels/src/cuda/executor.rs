//! `CudaExecutable`: a plan prepared for one GPU. `new` generates and compiles every step's
//! kernels and uploads the weights. `run_device` runs on device-resident tensors: it binds the
//! plan's symbols from the input shapes exactly as the CPU backend does (`crate::bind`), asks
//! the caller for every output buffer before queuing any work (ORT allocates them from the
//! shapes), and runs the steps on the device's stream, ordered after and before the caller's
//! stream. A step that produces an output writes straight into the caller's buffer; outputs that
//! are views of inputs or weights are copied there at the end. `run` is the host-tensor wrapper.
//! Intermediates are freed after their last reader (stream-ordered).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::sys::CUstream;
use quilt_rewrites::plan::{BufferId, BufferKind, OpStep, Step};
use quilt_rewrites::{DType, Plan, Tensor, TensorData};

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

/// A tensor in device memory that the caller owns (an ORT input, say).
#[derive(Clone, Copy, Debug)]
pub struct DeviceTensor<'a> {
    /// Device address of the first element (may be 0 for an empty tensor).
    pub ptr: u64,
    pub shape: &'a [usize],
    pub dtype: DType,
}

pub struct CudaExecutable {
    plan: Plan,
    device: Arc<CudaDevice>,
    blas: Blas,
    dnn: super::conv::cudnn::Dnn,
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
        Ok(CudaExecutable { modules: loaded.len(), plan, device, blas, dnn: Default::default(), steps, weights, producer, last_uses, is_output })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.device
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
    /// device errors are attributed to their node).
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
    /// this work; the call itself returns once the work is queued and the plan's run-time checks
    /// (index bounds) have been read back.
    pub fn run_device(
        &self,
        inputs: &[DeviceTensor],
        outputs: &mut dyn FnMut(usize, &[usize]) -> Result<u64>,
        stream: Option<CUstream>,
    ) -> Result<()> {
        let dev = &self.device;
        dev.bind()?;
        if let Some(s) = stream {
            dev.wait_for(s)?;
        }
        let result = self.execute(inputs, outputs, None);
        if let Some(s) = stream {
            // Even after a failure: whatever was queued must finish before the caller's stream
            // reuses the memory.
            dev.signal_to(s)?;
        }
        result
    }

    fn run_host(&self, inputs: &[Tensor], timings: Option<&mut Vec<StepTiming>>) -> Result<Vec<Tensor>> {
        let plan = &self.plan;
        let dev = &self.device;
        dev.bind()?;
        // The same checks (and messages) as the CPU backend, before anything is uploaded.
        bind::bind_inputs(plan, inputs)?;
        let uploaded: Vec<DeviceBuffer> = inputs.iter().map(|t| dev.upload(&t.data.to_le_bytes())).collect::<Result<_>>()?;
        let views: Vec<DeviceTensor> =
            inputs.iter().zip(&uploaded).map(|(t, b)| DeviceTensor { ptr: b.ptr, shape: &t.shape, dtype: t.dtype() }).collect();
        let mut results: Vec<Option<(DeviceBuffer, Vec<usize>)>> = (0..plan.outputs.len()).map(|_| None).collect();
        self.execute(
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
        Ok(outputs)
    }

    fn execute(
        &self,
        inputs: &[DeviceTensor],
        outputs: &mut dyn FnMut(usize, &[usize]) -> Result<u64>,
        mut timings: Option<&mut Vec<StepTiming>>,
    ) -> Result<()> {
        let plan = &self.plan;
        let dev = &self.device;
        let described: Vec<(DType, &[usize])> = inputs.iter().map(|t| (t.dtype, t.shape)).collect();
        let bindings = bind::bind_shapes(plan, &described)?;
        let shapes = bind::buffer_shapes(plan, &bindings, &self.producer)?;
        let nbytes = |b: BufferId| shapes[b].iter().product::<usize>() * plan.buffers[b].ty.dtype.size_bytes();

        // Every output's destination, before any work is queued.
        let mut destinations = Vec::with_capacity(plan.outputs.len());
        for (j, v) in plan.outputs.iter().enumerate() {
            let ptr = outputs(j, &shapes[v.buffer])?;
            if ptr == 0 && nbytes(v.buffer) > 0 {
                return Err(Error::Plan(format!("output '{}': the caller gave no buffer for {} bytes", v.name, nbytes(v.buffer))));
            }
            destinations.push(ptr);
        }
        // A generated step writes its output straight into the destination; outputs that are
        // views (of inputs, weights, other outputs) or host values are copied at the end.
        let mut direct: Vec<Option<u64>> = vec![None; plan.buffers.len()];
        let mut copies: Vec<(u64, BufferId)> = Vec::new();
        for (v, &dst) in plan.outputs.iter().zip(&destinations) {
            let b = v.buffer;
            let generated = self.producer[b].is_some_and(|i| matches!(self.steps[i].kind, StepKind::Code(_)));
            if generated && direct[b].is_none() {
                direct[b] = Some(dst);
            } else {
                copies.push((dst, b));
            }
        }

        let mut slots: Vec<Option<Arc<DeviceBuffer>>> = self.weights.clone();
        for (b, buf) in plan.buffers.iter().enumerate() {
            if let BufferKind::Input(i) = buf.kind {
                slots[b] = Some(Arc::new(DeviceBuffer::borrowed(dev, inputs[i].ptr, nbytes(b))));
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
            let out_bytes: Vec<usize> = s.outputs.iter().map(|&b| nbytes(b)).collect();
            let prepared = &self.steps[index];
            let outs: Vec<Arc<DeviceBuffer>> = match &prepared.kind {
                StepKind::Alias => {
                    let x = ins[0].clone().ok_or_else(|| fail("input 0 is missing".into()))?;
                    let in_bytes = s.inputs[0].map(nbytes).unwrap_or(0);
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
                    let outs: Vec<Arc<DeviceBuffer>> = s
                        .outputs
                        .iter()
                        .zip(&out_bytes)
                        .map(|(&b, &n)| match direct[b] {
                            Some(ptr) => Ok(Arc::new(DeviceBuffer::borrowed(dev, ptr, n))),
                            None => dev.alloc(n).map(Arc::new),
                        })
                        .collect::<Result<_>>()?;
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
                            Action::Conv(call) => self.dnn.conv(call, dev.cu_stream(), &ptr).map_err(fail)?,
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

        for &(dst, b) in &copies {
            let src = slots[b].as_ref().ok_or_else(|| Error::Plan(format!("output buffer %{b} was never written")))?;
            dev.copy_d2d(dst, src.ptr, nbytes(b))?;
        }
        let flags = dev.download(&errs, errs.bytes)?;
        if let Some(i) = flags.chunks_exact(4).position(|w| w != [0, 0, 0, 0]) {
            if i < plan.steps.len() {
                return Err(step_error(plan, i, "an index is out of range".into()));
            }
        }
        Ok(())
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
