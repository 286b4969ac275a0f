//! The checks `CpuExecutable::new` makes once per plan: the shared structural checks
//! (`crate::plan_check`), plus each step an op the interpreter implements with the right number of
//! inputs and outputs and dtype combinations the kernels support.

use quilt_rewrites::ir::BinaryOp;
use quilt_rewrites::ir::UnaryOp;
use quilt_rewrites::plan::OpStep;
use quilt_rewrites::{DType, Op, Plan};

use crate::error::Result;
use crate::plan_check::check_structure;

/// Validates `plan` for the interpreter: the shared structural checks plus arity and dtypes per
/// step; returns, per buffer, the index of the step that writes it.
pub(crate) fn validate(plan: &Plan) -> Result<Vec<Option<usize>>> {
    check_structure(plan, |s| {
        check_arity(s)?;
        check_dtypes(plan, s)
    })
}

/// Number of inputs (`required`, then up to `optional` more that may be absent) and outputs.
fn check_arity(s: &OpStep) -> std::result::Result<(), String> {
    let (required, optional, outputs): (usize, usize, Option<usize>) = match &s.op {
        Op::SymbolicValue { .. } | Op::Fill { .. } | Op::Range { .. } => (0, 0, Some(1)),
        Op::Binary(_) | Op::MatMul | Op::Gather { .. } | Op::GatherElements { .. } | Op::GatherND { .. } => (2, 0, Some(1)),
        Op::Where | Op::InstanceNorm { .. } | Op::GroupNorm { .. } => (3, 0, Some(1)),
        // Gemm and Conv: C / bias, then an optional residual (`quilt_rewrites::epilogue`).
        Op::Gemm { .. } | Op::Conv { .. } => (2, 2, Some(1)),
        Op::LayerNorm { .. } => (2, 1, Some(1)),
        Op::Attention { .. } => (3, 1, Some(1)),
        Op::Concat { .. } => (s.inputs.len().max(1), 0, Some(1)),
        Op::Stitched(r) => {
            r.validate()?;
            (r.inputs.len(), 0, Some(r.outputs.len()))
        }
        Op::Split { .. } => (1, 0, None),
        Op::Input { .. } | Op::Constant(_) | Op::Weight { .. } => {
            return Err("a source op cannot be a plan step (it should be a buffer)".into())
        }
        Op::Opaque { reason, .. } => return Err(format!("not supported by quilt: {reason}")),
        _ => (1, 0, Some(1)),
    };
    if s.inputs.len() < required || s.inputs.len() > required + optional {
        return Err(format!("has {} inputs, expected {}", s.inputs.len(), if optional > 0 { format!("{required} to {}", required + optional) } else { required.to_string() }));
    }
    if let Some(i) = s.inputs[..required].iter().position(|b| b.is_none()) {
        return Err(format!("required input {i} is absent"));
    }
    match outputs {
        Some(n) if s.outputs.len() != n => Err(format!("has {} outputs, expected {n}", s.outputs.len())),
        None if s.outputs.is_empty() => Err("has no outputs".into()),
        _ => Ok(()),
    }
}

fn is_numeric(d: DType) -> bool {
    d.is_float() || d.is_int()
}

/// Rejects dtype combinations the kernels do not implement.
fn check_dtypes(plan: &Plan, s: &OpStep) -> std::result::Result<(), String> {
    let ins: Vec<Option<DType>> = s.inputs.iter().map(|b| b.map(|b| plan.buffers[b].ty.dtype)).collect();
    let outs: Vec<DType> = s.outputs.iter().map(|&b| plan.buffers[b].ty.dtype).collect();
    let x = ins.first().copied().flatten();
    let need = |ok: bool, what: &str| -> std::result::Result<(), String> {
        if ok {
            Ok(())
        } else {
            let list: Vec<String> = ins.iter().map(|d| d.map_or("_".into(), |d| d.to_string())).collect();
            Err(format!("dtypes ({}) -> ({}) are not supported: {what}", list.join(", "), outs.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")))
        }
    };
    let all_same = |from: usize| ins[from..].iter().flatten().all(|d| Some(*d) == x);
    let float_x = x.is_some_and(|d| d.is_float());
    let numeric_x = x.is_some_and(is_numeric);
    match &s.op {
        Op::Unary(u) => match u {
            UnaryOp::Identity => Ok(()),
            UnaryOp::Not => need(x == Some(DType::Bool), "Not takes bool"),
            UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Sign | UnaryOp::Relu => need(numeric_x, "needs a numeric type"),
            _ => need(float_x, "needs a float type"),
        },
        Op::Binary(b) => {
            let (a, bb) = (ins[0].unwrap_or(DType::Bool), ins[1].unwrap_or(DType::Bool));
            match b {
                BinaryOp::And | BinaryOp::Or | BinaryOp::Xor => need(a == DType::Bool && bb == DType::Bool, "logic ops take bool"),
                BinaryOp::Pow => need(is_numeric(a) && is_numeric(bb), "Pow takes numeric types"),
                BinaryOp::Equal => need(a == bb, "both operands must have one dtype"),
                BinaryOp::Less | BinaryOp::LessOrEqual | BinaryOp::Greater | BinaryOp::GreaterOrEqual => {
                    need(a == bb && is_numeric(a), "comparisons take two operands of one numeric type")
                }
                _ => need(a == bb && is_numeric(a), "arithmetic takes two operands of one numeric type"),
            }
        }
        Op::Where => need(ins[0] == Some(DType::Bool) && ins[1] == ins[2], "Where takes a bool condition and two values of one dtype"),
        Op::Cast { .. } | Op::SymbolicValue { .. } | Op::Fill { .. } => Ok(()),
        Op::Clip { .. } | Op::CumSum { .. } => need(numeric_x, "needs a numeric type"),
        Op::Reduce { .. } | Op::ArgMax { .. } | Op::ArgMin { .. } => need(numeric_x, "needs a numeric type"),
        Op::Range { .. } => need(outs.first().is_some_and(|d| is_numeric(*d)), "Range produces a numeric type"),
        Op::LeakyRelu { .. }
        | Op::Gelu { .. }
        | Op::Softmax { .. }
        | Op::LogSoftmax { .. }
        | Op::Resize { .. }
        | Op::MatMul
        | Op::Gemm { .. }
        | Op::Conv { .. }
        | Op::InstanceNorm { .. }
        | Op::GroupNorm { .. }
        | Op::LayerNorm { .. }
        | Op::Silu
        | Op::QuickGelu { .. }
        | Op::GeGlu { .. }
        | Op::Attention { .. } => need(float_x && all_same(0), "needs float inputs of one dtype"),
        Op::Gather { .. } | Op::GatherElements { .. } | Op::GatherND { .. } => {
            need(matches!(ins[1], Some(DType::I32 | DType::I64)), "indices must be i32 or i64")
        }
        Op::Concat { .. } => need(all_same(0), "all inputs must have one dtype"),
        _ => Ok(()),
    }
}
