//! The CPU reference interpreter of a `Plan` (f32 math, f16/bf16 storage).
//!
//! `new` validates the plan once (every op implemented, every weight loaded, dtypes supported);
//! `run` binds the plan's symbols from the input shapes, evaluates every buffer's shape, executes
//! the steps in order (each kernel lives in its own module), checks each result against its
//! buffer's evaluated type and frees intermediates after their last use. A view buffer holds no
//! value of its own: a step that reads it gets its owner's data under the view's shape, and its
//! reads count as reads of the owner when deciding what to free.

mod broadcast;
mod conv;
mod data;
mod elementwise;
mod fill;
mod fused;
mod gather;
mod layout;
mod matmul;
mod norm;
mod reduce;
mod resize;
mod softmax;
mod stitched;
mod validate;

#[cfg(test)]
mod testing;

use std::panic::{catch_unwind, AssertUnwindSafe};

use quilt_rewrites::plan::{BufferId, BufferKind, Step};
use quilt_rewrites::{DType, Op, Plan, SymDim, Tensor};

use crate::error::{Error, Result};
use crate::bind::{self, Bindings};

/// A plan prepared for the CPU.
pub struct CpuExecutable {
    plan: Plan,
    /// Per buffer, the buffer whose memory it is (itself unless it is a view).
    owner: Vec<BufferId>,
    /// Per buffer, the last step that reads its memory (directly or through a view).
    last_uses: Vec<Option<usize>>,
    /// Per buffer, whether a plan output (it, or a view of it) needs it at the end (never
    /// freed early).
    is_output: Vec<bool>,
    /// Per buffer, the step that writes it.
    producer: Vec<Option<usize>>,
}

/// What a kernel sees: its inputs and the evaluated types of its outputs.
pub(crate) struct StepCtx<'a> {
    pub inputs: &'a [Option<&'a Tensor>],
    /// Per output: the dtype and concrete shape of its buffer.
    pub outs: &'a [(DType, Vec<usize>)],
    pub bindings: &'a Bindings,
}

impl StepCtx<'_> {
    pub fn input(&self, i: usize) -> std::result::Result<&Tensor, String> {
        self.inputs.get(i).copied().flatten().ok_or_else(|| format!("input {i} is missing"))
    }

    pub fn opt_input(&self, i: usize) -> Option<&Tensor> {
        self.inputs.get(i).copied().flatten()
    }

    pub fn out_shape(&self, i: usize) -> &[usize] {
        &self.outs[i].1
    }

    pub fn out_dtype(&self, i: usize) -> DType {
        self.outs[i].0
    }

    pub fn eval(&self, d: &SymDim) -> std::result::Result<i64, String> {
        self.bindings.eval(d)
    }
}

/// The value a buffer holds while the plan runs.
enum Slot<'a> {
    Empty,
    Borrowed(&'a Tensor),
    Owned(Tensor),
}

impl Slot<'_> {
    fn get(&self) -> Option<&Tensor> {
        match self {
            Slot::Empty => None,
            Slot::Borrowed(t) => Some(t),
            Slot::Owned(t) => Some(t),
        }
    }
}

impl CpuExecutable {
    /// Checks that every step is one the interpreter implements and every weight is loaded.
    pub fn new(plan: Plan) -> Result<CpuExecutable> {
        let producer = validate::validate(&plan)?;
        let owner = plan.owners();
        let last_uses = plan.memory_last_uses();
        let mut is_output = vec![false; plan.buffers.len()];
        for v in &plan.outputs {
            is_output[owner[v.buffer]] = true;
        }
        Ok(CpuExecutable { plan, owner, last_uses, is_output, producer })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Runs the plan on inputs given in `plan.inputs` order; returns outputs in `plan.outputs` order.
    /// Input shapes bind the plan's symbols; a wrong rank, dtype or size is an `Error::Input`.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let plan = &self.plan;
        let bindings = bind::bind_inputs(plan, inputs)?;
        let shapes = bind::buffer_shapes(plan, &bindings, &self.producer)?;

        let mut slots: Vec<Slot> = plan
            .buffers
            .iter()
            .map(|b| match &b.kind {
                BufferKind::Weight(t) => Slot::Borrowed(t),
                BufferKind::Input(i) => Slot::Borrowed(&inputs[*i]),
                _ => Slot::Empty,
            })
            .collect();

        for (index, step) in plan.steps.iter().enumerate() {
            let Step::Op(s) = step;
            let fail = |msg: String| Error::Step { node: s.node.clone(), op: s.op.name(), msg };
            let outs: Vec<(DType, Vec<usize>)> =
                s.outputs.iter().map(|&b| (plan.buffers[b].ty.dtype, shapes[b].clone())).collect();
            let results = {
                let held = |slot: usize, b: BufferId| {
                    let owner = self.owner[b];
                    slots[owner].get().ok_or_else(|| fail(format!("input {slot} (buffer %{owner}) holds no value when this step runs")))
                };
                // Views read as their owner's data under their own shape, made for this step.
                let mut viewed: Vec<Option<Tensor>> = Vec::with_capacity(s.inputs.len());
                for (slot, b) in s.inputs.iter().enumerate() {
                    viewed.push(match *b {
                        Some(b) if self.owner[b] != b => Some(Tensor { shape: shapes[b].clone(), data: held(slot, b)?.data.clone() }),
                        _ => None,
                    });
                }
                let mut ins: Vec<Option<&Tensor>> = Vec::with_capacity(s.inputs.len());
                for (slot, (b, v)) in s.inputs.iter().zip(&viewed).enumerate() {
                    ins.push(match (b, v) {
                        (_, Some(v)) => Some(v),
                        (None, None) => None,
                        (Some(b), None) => Some(held(slot, *b)?),
                    });
                }
                let cx = StepCtx { inputs: &ins, outs: &outs, bindings: &bindings };
                match catch_unwind(AssertUnwindSafe(|| dispatch(&s.op, &cx))) {
                    Ok(r) => r.map_err(fail)?,
                    Err(panic) => return Err(fail(format!("internal error (panic): {}", panic_message(&panic)))),
                }
            };
            if results.len() != s.outputs.len() {
                return Err(fail(format!("produced {} outputs, the plan has {}", results.len(), s.outputs.len())));
            }
            for (k, (t, &b)) in results.into_iter().zip(&s.outputs).enumerate() {
                let (dtype, shape) = &outs[k];
                if t.dtype() != *dtype {
                    return Err(fail(format!("output {k} has dtype {}, the plan says {dtype}", t.dtype())));
                }
                if t.shape != *shape {
                    return Err(fail(format!(
                        "output {k} has shape {:?}, the plan says {} = {:?}",
                        t.shape,
                        quilt_rewrites::sym::shape_string(&plan.buffers[b].ty.shape),
                        shape
                    )));
                }
                if t.data.len() != shape.iter().product::<usize>() {
                    return Err(fail(format!("output {k} has {} elements for shape {shape:?}", t.data.len())));
                }
                slots[b] = Slot::Owned(t);
            }
            // Free what no later step reads, directly or through a view (outputs nobody reads
            // are freed right away).
            for &b in s.inputs.iter().flatten().chain(&s.outputs) {
                let owner = self.owner[b];
                if self.is_freeable(owner, index) {
                    slots[owner] = Slot::Empty;
                }
            }
        }

        let mut outputs = Vec::with_capacity(plan.outputs.len());
        for (i, v) in plan.outputs.iter().enumerate() {
            let owner = self.owner[v.buffer];
            let taken_later = plan.outputs[i + 1..].iter().any(|w| self.owner[w.buffer] == owner);
            let t = match std::mem::replace(&mut slots[owner], Slot::Empty) {
                Slot::Owned(t) if taken_later => {
                    let c = t.clone();
                    slots[owner] = Slot::Owned(t);
                    c
                }
                Slot::Owned(t) => t,
                Slot::Borrowed(t) => {
                    slots[owner] = Slot::Borrowed(t);
                    t.clone()
                }
                Slot::Empty => return Err(Error::Plan(format!("output '{}' (buffer %{owner}) was never written", v.name))),
            };
            // An output that is a view (of an input, a weight or a step's output): its own copy
            // of the owner's data, under the view's shape.
            let t = if owner == v.buffer { t } else { Tensor { shape: shapes[v.buffer].clone(), data: t.data } };
            outputs.push(t);
        }
        Ok(outputs)
    }

    /// Whether owner `b`'s value may be dropped after `step`.
    fn is_freeable(&self, b: BufferId, step: usize) -> bool {
        matches!(self.plan.buffers[b].kind, BufferKind::Intermediate)
            && !self.is_output[b]
            && self.last_uses[b].is_none_or(|last| last <= step)
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

/// Runs one op; errors are plain messages that the caller prefixes with the node and op.
fn dispatch(op: &Op, cx: &StepCtx) -> std::result::Result<Vec<Tensor>, String> {
    let one = |t: std::result::Result<Tensor, String>| t.map(|t| vec![t]);
    match op {
        Op::Unary(u) => one(elementwise::unary(cx, *u)),
        Op::Binary(b) => one(elementwise::binary(cx, *b)),
        Op::Where => one(elementwise::where_select(cx)),
        Op::Cast { to } => one(elementwise::cast(cx, *to)),
        Op::Clip { min, max } => one(elementwise::clip(cx, *min, *max)),
        Op::LeakyRelu { alpha } => one(elementwise::leaky_relu(cx, *alpha)),
        Op::Gelu { tanh } => one(elementwise::gelu(cx, *tanh)),
        Op::MatMul => one(matmul::matmul(cx)),
        Op::Gemm { alpha, beta, trans_a, trans_b } => one(matmul::gemm(cx, *alpha, *beta, *trans_a, *trans_b)),
        Op::Conv { strides, pads, dilations, group, channels_last: false } => one(conv::conv(cx, strides, pads, dilations, *group)),
        Op::Conv { strides, pads, dilations, group, channels_last: true } => {
            // x, w and the residual (input 3) are channels-last.
            one(via_channels_first(cx, &[0, 1, 3], |cx| conv::conv(cx, strides, pads, dilations, *group)))
        }
        Op::InstanceNorm { epsilon } => one(norm::instance_norm(cx, *epsilon)),
        Op::GroupNorm { epsilon, num_groups, per_channel_affine, channels_last: false } => {
            one(norm::group_norm(cx, *epsilon, *num_groups, *per_channel_affine))
        }
        Op::GroupNorm { epsilon, num_groups, per_channel_affine, channels_last: true } => {
            one(via_channels_first(cx, &[0], |cx| norm::group_norm(cx, *epsilon, *num_groups, *per_channel_affine)))
        }
        Op::LayerNorm { axis, epsilon } => one(norm::layer_norm(cx, *axis, *epsilon)),
        Op::Softmax { axis } => one(softmax::softmax(cx, *axis, false)),
        Op::LogSoftmax { axis } => one(softmax::softmax(cx, *axis, true)),
        Op::Reduce { kind, axes, keepdims } => one(reduce::reduce(cx, *kind, axes, *keepdims)),
        Op::ArgMax { axis, keepdims, select_last_index } => {
            one(reduce::arg_extreme(cx, *axis, *keepdims, *select_last_index, true))
        }
        Op::ArgMin { axis, keepdims, select_last_index } => {
            one(reduce::arg_extreme(cx, *axis, *keepdims, *select_last_index, false))
        }
        Op::CumSum { axis, exclusive, reverse } => one(reduce::cumsum(cx, *axis, *exclusive, *reverse)),
        Op::Reshape => one(layout::reshape(cx)),
        Op::Expand => one(layout::expand(cx)),
        Op::Transpose { perm } => one(layout::transpose(cx, perm)),
        Op::Concat { axis } => one(layout::concat(cx, *axis)),
        Op::Split { axis } => layout::split(cx, *axis),
        Op::Slice { axes, starts, steps } => one(layout::slice(cx, axes, starts, steps)),
        Op::Tile => one(layout::tile(cx)),
        Op::Pad { pads, mode, value } => one(layout::pad(cx, pads, *mode, *value)),
        Op::Trilu { upper, k } => one(layout::trilu(cx, *upper, *k)),
        Op::Gather { axis } => one(gather::gather(cx, *axis)),
        Op::GatherElements { axis } => one(gather::gather_elements(cx, *axis)),
        Op::GatherND { batch_dims } => one(gather::gather_nd(cx, *batch_dims)),
        Op::Resize { mode, coord, nearest, cubic_coeff_a, exclude_outside, scales } => one(resize::resize(
            cx,
            &resize::ResizeParams {
                mode: *mode,
                coord: *coord,
                nearest: *nearest,
                cubic_coeff_a: *cubic_coeff_a,
                exclude_outside: *exclude_outside,
                scales,
            },
        )),
        Op::Fill { value } => one(fill::fill(cx, *value)),
        Op::Range { start, delta } => one(fill::range(cx, *start, *delta)),
        Op::SymbolicValue { values, scalar } => one(fill::symbolic_value(cx, values, *scalar)),
        Op::Silu => one(fused::sigmoid_gated(cx, 1.0)),
        Op::QuickGelu { alpha } => one(fused::sigmoid_gated(cx, *alpha)),
        Op::GeGlu { tanh } => one(fused::geglu(cx, *tanh)),
        Op::Attention { scale, heads, columns } => one(fused::attention(cx, *scale, *heads, *columns)),
        Op::Stitched(region) => stitched::stitched(cx, region),
        Op::Input { .. } | Op::Constant(_) | Op::Weight { .. } | Op::Opaque { .. } => {
            Err("this op is not executable as a step".into())
        }
    }
}

/// Runs a channels-first op on channels-last data: the inputs listed in `moved` (and the
/// output) have their channel axis last (`[N, spatial…, C]`, a weight `[M, k…, C]`); they are
/// permuted to ONNX's `[N, C, spatial…]`, `f` runs, and its output is permuted back. The
/// reference for `channels_last` ops made by the layout pass: plain, obviously equal to the
/// ONNX op.
fn via_channels_first(cx: &StepCtx, moved: &[usize], f: impl Fn(&StepCtx) -> std::result::Result<Tensor, String>) -> std::result::Result<Tensor, String> {
    let to_first = |rank: usize| -> Vec<usize> { std::iter::once(0).chain(std::iter::once(rank - 1)).chain(1..rank - 1).collect() };
    let to_last = |rank: usize| -> Vec<usize> { std::iter::once(0).chain(2..rank).chain(std::iter::once(1)).collect() };
    let mut owned: Vec<Option<Tensor>> = Vec::with_capacity(cx.inputs.len());
    for (i, t) in cx.inputs.iter().enumerate() {
        owned.push(match t {
            Some(t) if moved.contains(&i) => {
                if t.shape.len() < 2 {
                    return Err(format!("input {i} has shape {:?}: channels-last data needs rank ≥ 2", t.shape));
                }
                Some(layout::permuted(t, &to_first(t.shape.len()))?)
            }
            Some(t) => Some((*t).clone()),
            None => None,
        });
    }
    let refs: Vec<Option<&Tensor>> = owned.iter().map(|t| t.as_ref()).collect();
    let outs: Vec<(DType, Vec<usize>)> = cx
        .outs
        .iter()
        .map(|(d, s)| (*d, if s.len() >= 2 { to_first(s.len()).iter().map(|&a| s[a]).collect() } else { s.clone() }))
        .collect();
    let first = f(&StepCtx { inputs: &refs, outs: &outs, bindings: cx.bindings })?;
    let rank = first.shape.len();
    layout::permuted(&first, &to_last(rank))
}

#[cfg(test)]
mod tests {
    use super::testing::{dims, f32s, konst, PlanBuilder, Rng};
    use super::*;
    use quilt_rewrites::ir::{BinaryOp, UnaryOp};
    use quilt_rewrites::plan::Buffer;
    use quilt_rewrites::TensorData;

    /// y = relu(x + b) with x: [N, 3] symbolic, b: [3] weight; z = reshape(y, [3N]) (a view).
    fn symbolic_plan() -> CpuExecutable {
        let mut p = PlanBuilder::default();
        let x = p.input("x", DType::F32, dims(&["N", "3"]));
        let b = p.weight(Tensor::from_f32s(vec![3], vec![1.0, -2.0, 0.5]));
        let s = p.op("add", Op::Binary(BinaryOp::Add), &[x, b], DType::F32, dims(&["N", "3"]));
        let r = p.op("relu", Op::Unary(UnaryOp::Relu), &[s], DType::F32, dims(&["N", "3"]));
        let flat = vec![SymDim::sym("N") * SymDim::konst(3)];
        let z = p.view("flatten", r, flat);
        p.output("y", r);
        p.output("z", z);
        p.build()
    }

    #[test]
    fn one_plan_runs_at_two_sizes() {
        let exe = symbolic_plan();
        let mut rng = Rng::new(1);
        for n in [1usize, 4] {
            let x = rng.tensor(&[n, 3]);
            let out = exe.run(std::slice::from_ref(&x)).unwrap();
            let xv = f32s(&x);
            let want: Vec<f32> = xv.iter().enumerate().map(|(i, v)| (v + [1.0, -2.0, 0.5][i % 3]).max(0.0)).collect();
            assert_eq!(out[0].shape, vec![n, 3]);
            assert_eq!(f32s(&out[0]), want);
            assert_eq!(out[1].shape, vec![3 * n]);
            assert_eq!(f32s(&out[1]), want);
        }
    }

    #[test]
    fn bad_inputs_are_named_errors() {
        let exe = symbolic_plan();
        let e = exe.run(&[]).unwrap_err().to_string();
        assert!(e.contains("expected 1 inputs"), "{e}");
        let e = exe.run(&[Tensor::from_f32s(vec![6], vec![0.0; 6])]).unwrap_err().to_string();
        assert!(e.contains("input 'x'") && e.contains("rank 1"), "{e}");
        let e = exe.run(&[Tensor::from_i64s(vec![2, 3], vec![0; 6])]).unwrap_err().to_string();
        assert!(e.contains("input 'x'") && e.contains("dtype i64"), "{e}");
        let e = exe.run(&[Tensor::from_f32s(vec![2, 4], vec![0.0; 8])]).unwrap_err().to_string();
        assert!(e.contains("input 'x'") && e.contains("axis 1 is 4"), "{e}");
        let e = exe.run(&[Tensor { shape: vec![2, 3], data: TensorData::F32(vec![0.0; 5]) }]).unwrap_err().to_string();
        assert!(e.contains("5"), "{e}");
    }

    #[test]
    fn a_symbol_bound_twice_must_agree() {
        let mut p = PlanBuilder::default();
        let a = p.input("a", DType::F32, dims(&["N"]));
        let b = p.input("b", DType::F32, dims(&["N"]));
        let s = p.op("add", Op::Binary(BinaryOp::Add), &[a, b], DType::F32, dims(&["N"]));
        p.output("s", s);
        let exe = p.build();
        let e = exe.run(&[Tensor::from_f32s(vec![2], vec![1.0, 2.0]), Tensor::from_f32s(vec![3], vec![1.0; 3])]).unwrap_err().to_string();
        assert!(e.contains("input 'b'") && e.contains("axis 0 is 3") && e.contains("'N' is 2") && e.contains("'a'"), "{e}");
    }

    #[test]
    fn a_wrong_output_shape_names_the_node() {
        // The plan claims the reshape keeps N*3 elements in [N, 2]: wrong at run time.
        let mut p = PlanBuilder::default();
        let x = p.input("x", DType::F32, dims(&["N", "3"]));
        let r = p.op("bad_reshape", Op::Reshape, &[x], DType::F32, dims(&["N", "2"]));
        p.output("r", r);
        let e = p.build().run(&[Tensor::from_f32s(vec![2, 3], vec![0.0; 6])]).unwrap_err().to_string();
        assert!(e.contains("bad_reshape") && e.contains("Reshape") && e.contains("6 elements"), "{e}");
        // A broadcast that the plan got wrong: [N] + [M] with N != M at run time.
        let mut p = PlanBuilder::default();
        let a = p.input("a", DType::F32, dims(&["N"]));
        let b = p.input("b", DType::F32, dims(&["M"]));
        let s = p.op("bad_add", Op::Binary(BinaryOp::Add), &[a, b], DType::F32, dims(&["N"]));
        p.output("s", s);
        let e = p.build().run(&[Tensor::from_f32s(vec![2], vec![0.0; 2]), Tensor::from_f32s(vec![3], vec![0.0; 3])]).unwrap_err().to_string();
        assert!(e.contains("bad_add") && e.contains("cannot be broadcast"), "{e}");
    }

    #[test]
    fn a_view_with_the_wrong_element_count_names_its_node() {
        let mut p = PlanBuilder::default();
        let x = p.input("x", DType::F32, dims(&["N", "3"]));
        let r = p.view("bad_view", x, dims(&["N", "2"]));
        let y = p.op("neg", Op::Unary(UnaryOp::Neg), &[r], DType::F32, dims(&["N", "2"]));
        p.output("y", y);
        let e = p.build().run(&[Tensor::from_f32s(vec![2, 3], vec![0.0; 6])]).unwrap_err().to_string();
        assert!(e.contains("bad_view") && e.contains("4 elements") && e.contains("has 6"), "{e}");
    }

    /// Views read their owner's data under their own shape; chains of views work; an output
    /// that is a view of an input, a weight or an intermediate gets its own copy; the owner
    /// stays alive while any view of it is still to be read.
    #[test]
    fn views_alias_their_owner() {
        let mut p = PlanBuilder::default();
        let x = p.input("x", DType::F32, konst(&[2, 3]));
        let w = p.weight(Tensor::from_f32s(vec![6], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        let e = p.op("exp", Op::Unary(UnaryOp::Neg), &[x], DType::F32, konst(&[2, 3]));
        let flat = p.view("flat", e, konst(&[6]));
        let again = p.view("again", flat, konst(&[3, 2]));
        let a = p.op("a", Op::Unary(UnaryOp::Abs), &[flat], DType::F32, konst(&[6]));
        // `exp` is read last through `again`, two steps after `flat`.
        let b = p.op("b", Op::Binary(BinaryOp::Add), &[a, w], DType::F32, konst(&[6]));
        let wv = p.view("w3x2", w, konst(&[3, 2]));
        let c = p.op("c", Op::Binary(BinaryOp::Mul), &[again, wv], DType::F32, konst(&[3, 2]));
        let xv = p.view("x/copy", x, konst(&[6]));
        p.output("b", b);
        p.output("c", c);
        p.output("x_flat", xv);
        p.output("w_view", wv);
        p.output("again", again);
        let exe = p.build();
        assert!(!exe.is_freeable(e, 1) && !exe.is_freeable(e, 3), "a plan output views exp");
        let xs = vec![1.0, -2.0, 3.0, -4.0, 5.0, -6.0];
        let out = exe.run(&[Tensor::from_f32s(vec![2, 3], xs.clone())]).unwrap();
        let neg: Vec<f32> = xs.iter().map(|v| -v).collect();
        assert_eq!(f32s(&out[0]), (0..6).map(|i| neg[i].abs() + (i + 1) as f32).collect::<Vec<_>>());
        assert_eq!(out[1].shape, vec![3, 2]);
        assert_eq!(f32s(&out[1]), (0..6).map(|i| neg[i] * (i + 1) as f32).collect::<Vec<_>>());
        assert_eq!((out[2].shape.clone(), f32s(&out[2])), (vec![6], xs));
        assert_eq!((out[3].shape.clone(), f32s(&out[3])), (vec![3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        assert_eq!((out[4].shape.clone(), f32s(&out[4])), (vec![3, 2], neg));
    }

    #[test]
    fn an_owner_read_only_through_views_is_freed_after_the_last() {
        let mut p = PlanBuilder::default();
        let x = p.input("x", DType::F32, konst(&[4]));
        let e = p.op("neg", Op::Unary(UnaryOp::Neg), &[x], DType::F32, konst(&[4]));
        let v = p.view("v", e, konst(&[2, 2]));
        let a = p.op("a", Op::Unary(UnaryOp::Abs), &[v], DType::F32, konst(&[2, 2]));
        let b = p.op("b", Op::Binary(BinaryOp::Add), &[a, v], DType::F32, konst(&[2, 2]));
        p.output("b", b);
        let exe = p.build();
        assert!(!exe.is_freeable(e, 1) && exe.is_freeable(e, 2));
        let out = exe.run(&[Tensor::from_f32s(vec![4], vec![1.0, -2.0, 3.0, -4.0])]).unwrap();
        assert_eq!(f32s(&out[0]), vec![0.0, 4.0, 0.0, 8.0]);
    }

    #[test]
    fn bad_views_are_rejected_naming_the_node() {
        // A view of a weight that was not loaded, read by a step.
        let mut p = PlanBuilder::default();
        p.plan.buffers.push(Buffer { ty: quilt_rewrites::TensorType::new(DType::F32, konst(&[2])), kind: BufferKind::MissingWeight("w0".into()) });
        let x = p.input("x", DType::F32, konst(&[2]));
        let wv = p.view("w_view", 0, konst(&[2]));
        let y = p.op("uses_w", Op::Binary(BinaryOp::Add), &[x, wv], DType::F32, konst(&[2]));
        p.output("y", y);
        let e = CpuExecutable::new(p.plan).err().unwrap().to_string();
        assert!(e.contains("uses_w") && e.contains("'w0'") && e.contains("view %2"), "{e}");
        // A view that changes the dtype.
        let mut p = PlanBuilder::default();
        let x = p.input("x", DType::F32, konst(&[2]));
        let v = p.view("as_f16", x, konst(&[2]));
        p.plan.buffers[v].ty.dtype = DType::F16;
        p.output("v", v);
        let e = CpuExecutable::new(p.plan).err().unwrap().to_string();
        assert!(e.contains("as_f16") && e.contains("dtype"), "{e}");
        // Views in a cycle, and a step that writes a view.
        let mut p = PlanBuilder::default();
        let x = p.input("x", DType::F32, konst(&[2]));
        let v = p.view("loop", x, konst(&[2]));
        p.plan.buffers[v].kind = BufferKind::View { of: v, node: "loop".into() };
        p.output("v", v);
        let e = CpuExecutable::new(p.plan).err().unwrap().to_string();
        assert!(e.contains("loop") && e.contains("cycle"), "{e}");
        let mut p = PlanBuilder::default();
        let x = p.input("x", DType::F32, konst(&[2]));
        let v = p.view("v", x, konst(&[2]));
        p.plan.steps.push(Step::Op(quilt_rewrites::plan::OpStep { node: "writer".into(), op: Op::Unary(UnaryOp::Neg), inputs: vec![Some(x)], outputs: vec![v] }));
        p.output("v", v);
        let e = CpuExecutable::new(p.plan).err().unwrap().to_string();
        assert!(e.contains("writer") && e.contains("view"), "{e}");
    }

    #[test]
    fn new_rejects_what_cannot_run() {
        let mut p = PlanBuilder::default();
        p.plan.buffers.push(Buffer {
            ty: quilt_rewrites::TensorType::new(DType::F32, konst(&[2])),
            kind: BufferKind::MissingWeight("w0".into()),
        });
        let x = p.input("x", DType::F32, konst(&[2]));
        let y = p.op("uses_w", Op::Binary(BinaryOp::Add), &[x, 0], DType::F32, konst(&[2]));
        p.output("y", y);
        let e = CpuExecutable::new(p.plan).err().unwrap().to_string();
        assert!(e.contains("uses_w") && e.contains("'w0'") && e.contains("not loaded"), "{e}");

        let mut p = PlanBuilder::default();
        let x = p.input("x", DType::F32, konst(&[2]));
        let op = Op::Opaque { op_type: "Foo".into(), domain: "".into(), reason: "unknown op".into() };
        let y = p.op("foo", op, &[x], DType::F32, konst(&[2]));
        p.output("y", y);
        let e = CpuExecutable::new(p.plan).err().unwrap().to_string();
        assert!(e.contains("foo") && e.contains("unknown op"), "{e}");

        let mut p = PlanBuilder::default();
        let x = p.input("x", DType::I64, konst(&[2]));
        let y = p.op("softmax_int", Op::Softmax { axis: 0 }, &[x], DType::I64, konst(&[2]));
        p.output("y", y);
        let e = CpuExecutable::new(p.plan).err().unwrap().to_string();
        assert!(e.contains("softmax_int") && e.contains("i64"), "{e}");
    }

    #[test]
    fn intermediates_are_freed_but_outputs_survive() {
        // x -> a -> b -> c, output a and c: a is read later and is an output, b is freed.
        let mut p = PlanBuilder::default();
        let x = p.input("x", DType::F32, konst(&[2]));
        let a = p.op("a", Op::Unary(UnaryOp::Neg), &[x], DType::F32, konst(&[2]));
        let b = p.op("b", Op::Unary(UnaryOp::Abs), &[a], DType::F32, konst(&[2]));
        let c = p.op("c", Op::Binary(BinaryOp::Add), &[b, a], DType::F32, konst(&[2]));
        p.output("a", a);
        p.output("c", c);
        let exe = p.build();
        assert!(exe.is_freeable(b, 2) && !exe.is_freeable(a, 2) && !exe.is_freeable(b, 1));
        let out = exe.run(&[Tensor::from_f32s(vec![2], vec![1.5, -2.0])]).unwrap();
        assert_eq!(f32s(&out[0]), vec![-1.5, 2.0]);
        assert_eq!(f32s(&out[1]), vec![0.0, 4.0]);
    }
}
