//! Helpers for the interpreter's tests: hand-built plans, deterministic random data, tolerances.

use std::sync::Arc;

use quilt_rewrites::ir::TensorType;
use quilt_rewrites::plan::{Buffer, BufferId, BufferKind, OpStep, PlanValue, Step};
use quilt_rewrites::{DType, Op, Plan, SymDim, Tensor, TensorData};

use super::CpuExecutable;

/// Builds a `Plan` step by step.
#[derive(Default)]
pub(crate) struct PlanBuilder {
    pub plan: Plan,
}

/// A shape given as constants and symbol names ("N", "3").
pub(crate) fn dims(spec: &[&str]) -> Vec<SymDim> {
    spec.iter().map(|s| s.parse::<i64>().map(SymDim::konst).unwrap_or_else(|_| SymDim::sym(s))).collect()
}

pub(crate) fn konst(shape: &[usize]) -> Vec<SymDim> {
    shape.iter().map(|&d| SymDim::from(d)).collect()
}

impl PlanBuilder {
    fn buffer(&mut self, dtype: DType, shape: Vec<SymDim>, kind: BufferKind) -> BufferId {
        self.plan.buffers.push(Buffer { ty: TensorType::new(dtype, shape), kind });
        self.plan.buffers.len() - 1
    }

    pub fn input(&mut self, name: &str, dtype: DType, shape: Vec<SymDim>) -> BufferId {
        let b = self.buffer(dtype, shape, BufferKind::Input(self.plan.inputs.len()));
        self.plan.inputs.push(PlanValue { name: name.into(), buffer: b });
        b
    }

    pub fn weight(&mut self, t: Tensor) -> BufferId {
        let shape = konst(&t.shape);
        self.buffer(t.dtype(), shape, BufferKind::Weight(Arc::new(t)))
    }

    /// Adds a step writing fresh buffers of the given types; returns them.
    pub fn step(&mut self, node: &str, op: Op, inputs: &[Option<BufferId>], outs: Vec<(DType, Vec<SymDim>)>) -> Vec<BufferId> {
        let outputs: Vec<BufferId> = outs.into_iter().map(|(d, s)| self.buffer(d, s, BufferKind::Intermediate)).collect();
        self.plan.steps.push(Step::Op(OpStep { node: node.into(), op, inputs: inputs.to_vec(), outputs: outputs.clone() }));
        outputs
    }

    /// One-output step.
    pub fn op(&mut self, node: &str, op: Op, inputs: &[BufferId], dtype: DType, shape: Vec<SymDim>) -> BufferId {
        let ins: Vec<Option<BufferId>> = inputs.iter().map(|&b| Some(b)).collect();
        self.step(node, op, &ins, vec![(dtype, shape)])[0]
    }

    /// A view of `of` (Reshape/Identity as `lower` makes them) with its own shape.
    pub fn view(&mut self, node: &str, of: BufferId, shape: Vec<SymDim>) -> BufferId {
        let dtype = self.plan.buffers[of].ty.dtype;
        self.buffer(dtype, shape, BufferKind::View { of, node: node.into() })
    }

    pub fn output(&mut self, name: &str, b: BufferId) {
        self.plan.outputs.push(PlanValue { name: name.into(), buffer: b });
    }

    pub fn build(mut self) -> CpuExecutable {
        let mut syms: Vec<String> = self.plan.buffers.iter().flat_map(|b| b.ty.shape.iter().flat_map(|d| d.symbols())).map(|s| s.to_string()).collect();
        syms.sort();
        syms.dedup();
        self.plan.symbols = syms;
        CpuExecutable::new(self.plan).expect("test plan is valid")
    }
}

/// A one-step plan over inputs "x0", "x1", … of the given tensors' types; returns its output.
pub(crate) fn run_one(op: Op, inputs: &[&Tensor], out_dtype: DType, out_shape: &[usize]) -> Result<Tensor, crate::Error> {
    let mut b = PlanBuilder::default();
    let ins: Vec<BufferId> = inputs.iter().enumerate().map(|(i, t)| b.input(&format!("x{i}"), t.dtype(), konst(&t.shape))).collect();
    let y = b.op("node", op, &ins, out_dtype, konst(out_shape));
    b.output("y", y);
    let exe = b.build();
    let owned: Vec<Tensor> = inputs.iter().map(|t| (*t).clone()).collect();
    exe.run(&owned).map(|mut v| v.remove(0))
}

/// Deterministic pseudo-random numbers (xorshift64*), never all zero.
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [-1, 1).
    pub fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        (bits as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next_f32()).collect()
    }

    pub fn tensor(&mut self, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(shape.to_vec(), TensorData::F32(self.vec(n)))
    }
}

pub(crate) fn f32s(t: &Tensor) -> Vec<f32> {
    t.data.to_f64_vec().iter().map(|&v| v as f32).collect()
}

pub(crate) fn i64s(t: &Tensor) -> Vec<i64> {
    t.data.to_i64_vec().expect("integer tensor")
}

/// Asserts |got - want| <= atol + rtol * |want| elementwise.
#[track_caller]
pub(crate) fn assert_close(got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= atol + rtol * w.abs() || (g.is_nan() && w.is_nan());
        assert!(ok, "element {i}: got {g}, want {w} (atol {atol}, rtol {rtol})");
    }
}
