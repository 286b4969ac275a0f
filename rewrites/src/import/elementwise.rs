//! Elementwise ops: unary math, binary arithmetic/comparison/logic (with variadic Sum/Max/Min/
//! Mean as chains), Where, Cast, Clip, LeakyRelu, Gelu. Small known inputs are folded; integer
//! shape arithmetic folds symbolically.

use std::sync::Arc;

use crate::dtype::DType;
use crate::ir::{BinaryOp, Op, TensorType, UnaryOp};
use crate::sym::SymDim;
use crate::tensor::{Tensor, TensorData};

use super::ctx::{broadcast, const_shape, unsup, Build, Built, NodeCtx, NodeSpec, Operand, Unsupported, ANY, FLOATS, INTS, NUMERIC};
use super::known::{broadcast_indices, Known, SMALL};

fn unary_kind(op_type: &str) -> Option<(UnaryOp, &'static [DType])> {
    Some(match op_type {
        "Relu" => (UnaryOp::Relu, NUMERIC),
        "Sigmoid" => (UnaryOp::Sigmoid, FLOATS),
        "Tanh" => (UnaryOp::Tanh, FLOATS),
        "Erf" => (UnaryOp::Erf, FLOATS),
        "Sqrt" => (UnaryOp::Sqrt, FLOATS),
        "Exp" => (UnaryOp::Exp, FLOATS),
        "Log" => (UnaryOp::Log, FLOATS),
        "Reciprocal" => (UnaryOp::Reciprocal, FLOATS),
        "Sin" => (UnaryOp::Sin, FLOATS),
        "Cos" => (UnaryOp::Cos, FLOATS),
        "Floor" => (UnaryOp::Floor, FLOATS),
        "Ceil" => (UnaryOp::Ceil, FLOATS),
        "Round" => (UnaryOp::Round, FLOATS),
        "Softplus" => (UnaryOp::Softplus, FLOATS),
        "Neg" => (UnaryOp::Neg, NUMERIC),
        "Abs" => (UnaryOp::Abs, NUMERIC),
        "Sign" => (UnaryOp::Sign, NUMERIC),
        "Not" => (UnaryOp::Not, &[DType::Bool]),
        _ => return None,
    })
}

pub(crate) fn unary(ctx: &NodeCtx) -> Build {
    let (op, allowed) = unary_kind(&ctx.node.op_type).ok_or_else(|| Unsupported("not a unary op".into()))?;
    ctx.check_dtype(0, allowed)?;
    let x = ctx.input(0)?;
    if let Some([k]) = ctx.known_small(&[0]).as_deref() {
        if let Some(folded) = fold_unary(op, k) {
            return Built::folded(folded);
        }
    }
    Ok(Built::one(Op::Unary(op), &[0], x.ty.clone()))
}

/// Folds the unary ops whose f64 result rounds to exactly what the op gives in the narrower type,
/// and integer Neg/Abs/Sign of dims.
fn fold_unary(op: UnaryOp, k: &Known) -> Option<Known> {
    let shape = k.shape().to_vec();
    if !k.dtype().is_float() {
        let vals = k.ints()?;
        let out: Option<Vec<SymDim>> = vals
            .iter()
            .map(|v| match (op, v.as_const()) {
                (UnaryOp::Neg, _) => Some(-v.clone()),
                (UnaryOp::Abs, Some(c)) => Some(SymDim::from(c.abs())),
                (UnaryOp::Abs, None) if v.lower_bound() >= 0 => Some(v.clone()),
                (UnaryOp::Sign, Some(c)) => Some(SymDim::from(c.signum())),
                (UnaryOp::Sign, None) if v.lower_bound() >= 1 => Some(SymDim::from(1i64)),
                (UnaryOp::Not, Some(c)) => Some(SymDim::from((c == 0) as i64)),
                _ => None,
            })
            .collect();
        return Some(Known::from_ints(k.dtype(), shape, out?));
    }
    let f: fn(f64) -> f64 = match op {
        UnaryOp::Neg => |x| -x,
        UnaryOp::Abs => f64::abs,
        UnaryOp::Sqrt => f64::sqrt,
        UnaryOp::Floor => f64::floor,
        UnaryOp::Ceil => f64::ceil,
        UnaryOp::Reciprocal => |x| 1.0 / x,
        _ => return None,
    };
    let v: Vec<f64> = k.floats()?.into_iter().map(f).collect();
    Some(Known::from_tensor(Tensor::new(shape, TensorData::from_f64(k.dtype(), &v))))
}

/// The binary op, the input types it accepts, and whether it yields bool.
fn binary_kind(ctx: &NodeCtx) -> Result<(BinaryOp, &'static [DType], bool), Unsupported> {
    const NUM_BOOL: &[DType] = &[DType::F32, DType::F16, DType::BF16, DType::I32, DType::I64, DType::Bool];
    Ok(match ctx.node.op_type.as_str() {
        "Add" | "Sum" => (BinaryOp::Add, NUMERIC, false),
        "Sub" => (BinaryOp::Sub, NUMERIC, false),
        "Mul" => (BinaryOp::Mul, NUMERIC, false),
        "Div" => (BinaryOp::Div, NUMERIC, false),
        "Mean" => (BinaryOp::Add, FLOATS, false),
        "Pow" => (BinaryOp::Pow, FLOATS, false),
        "Max" => (BinaryOp::Max, NUMERIC, false),
        "Min" => (BinaryOp::Min, NUMERIC, false),
        "Mod" => match ctx.int_or("fmod", 0)? {
            0 => (BinaryOp::Mod, INTS, false),
            _ => (BinaryOp::Fmod, NUMERIC, false),
        },
        "Equal" => (BinaryOp::Equal, NUM_BOOL, true),
        "Less" => (BinaryOp::Less, NUMERIC, true),
        "LessOrEqual" => (BinaryOp::LessOrEqual, NUMERIC, true),
        "Greater" => (BinaryOp::Greater, NUMERIC, true),
        "GreaterOrEqual" => (BinaryOp::GreaterOrEqual, NUMERIC, true),
        "And" => (BinaryOp::And, &[DType::Bool], true),
        "Or" => (BinaryOp::Or, &[DType::Bool], true),
        "Xor" => (BinaryOp::Xor, &[DType::Bool], true),
        other => return unsup(format!("'{other}' is not a binary op")),
    })
}

pub(crate) fn binary(ctx: &NodeCtx) -> Build {
    if ctx.opset < 7 {
        return unsup(format!("opset {} broadcasting attributes are not supported", ctx.opset));
    }
    let (op, allowed, to_bool) = binary_kind(ctx)?;
    let dtype = ctx.same_dtype(&[0, 1], allowed)?;
    let (a, b) = (ctx.input(0)?, ctx.input(1)?);
    let shape = broadcast(a.shape(), b.shape())?;
    let out_dtype = if to_bool { DType::Bool } else { dtype };
    if let Some([ka, kb]) = ctx.known_small(&[0, 1]).as_deref() {
        if let Some(k) = fold_binary(op, ka, kb, out_dtype)? {
            return Built::folded(k);
        }
    }
    Ok(Built::one(Op::Binary(op), &[0, 1], TensorType::new(out_dtype, shape)))
}

/// Folds a binary op on two known values; `Ok(None)` when some element cannot be computed at
/// import time (e.g. comparing two unrelated symbols).
pub(crate) fn fold_binary(op: BinaryOp, a: &Known, b: &Known, out_dtype: DType) -> Result<Option<Known>, Unsupported> {
    let (Some(sa), Some(sb)) = (const_shape(&super::ctx::sym_shape(a.shape())), const_shape(&super::ctx::sym_shape(b.shape()))) else {
        return Ok(None);
    };
    let shape = const_shape(&broadcast(&super::ctx::sym_shape(&sa), &super::ctx::sym_shape(&sb))?).unwrap();
    if shape.iter().product::<usize>() > SMALL {
        return Ok(None);
    }
    let (ia, ib) = (broadcast_indices(&sa, &shape), broadcast_indices(&sb, &shape));
    if a.dtype().is_float() {
        let (Some(fa), Some(fb)) = (a.floats(), b.floats()) else { return Ok(None) };
        let mut out = Vec::with_capacity(ia.len());
        for (&x, &y) in ia.iter().zip(&ib) {
            let Some(v) = float_op(op, fa[x], fb[y]) else { return Ok(None) };
            out.push(v);
        }
        return Ok(Some(Known::from_tensor(Tensor::new(shape, TensorData::from_f64(out_dtype, &out)))));
    }
    let (Some(va), Some(vb)) = (a.ints(), b.ints()) else { return Ok(None) };
    let mut out = Vec::with_capacity(ia.len());
    for (&x, &y) in ia.iter().zip(&ib) {
        match int_op(op, &va[x], &vb[y])? {
            Some(v) => out.push(v),
            None => return Ok(None),
        }
    }
    Ok(Some(Known::from_ints(out_dtype, shape, out)))
}

fn float_op(op: BinaryOp, x: f64, y: f64) -> Option<f64> {
    let b = |c: bool| c as i64 as f64;
    Some(match op {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div => x / y,
        BinaryOp::Max => x.max(y),
        BinaryOp::Min => x.min(y),
        BinaryOp::Fmod => x % y,
        BinaryOp::Equal => b(x == y),
        BinaryOp::Less => b(x < y),
        BinaryOp::LessOrEqual => b(x <= y),
        BinaryOp::Greater => b(x > y),
        BinaryOp::GreaterOrEqual => b(x >= y),
        _ => return None,
    })
}

/// One element of integer/bool arithmetic on dims; `None` when it depends on symbol values.
fn int_op(op: BinaryOp, x: &SymDim, y: &SymDim) -> Result<Option<SymDim>, Unsupported> {
    let consts = (x.as_const(), y.as_const());
    // Bounds on x - y: torch exports compare shape values with -1 (`Where(Equal(shape, -1), …)`),
    // which is decided by dims being ≥ 1 even when the dims are symbolic.
    let (lo, hi) = diff_bounds(x, y);
    let decide = |yes: bool, no: bool| if yes { Some(SymDim::from(1i64)) } else if no { Some(SymDim::from(0i64)) } else { None };
    let bool_of = |c: bool| Some(SymDim::from(c as i64));
    Ok(match op {
        BinaryOp::Add => Some(x.clone() + y.clone()),
        BinaryOp::Sub => Some(x.clone() - y.clone()),
        BinaryOp::Mul => Some(x.clone() * y.clone()),
        BinaryOp::Div | BinaryOp::Mod | BinaryOp::Fmod if y.as_const() == Some(0) => {
            return unsup("integer division by zero in a known value")
        }
        BinaryOp::Div => match consts {
            (Some(a), Some(b)) => Some(SymDim::from(a.wrapping_div(b))),
            // Truncation and floor division agree on non-negative operands.
            _ if x.lower_bound() >= 0 && y.lower_bound() >= 1 => Some(x.floor_div(y)),
            _ => None,
        },
        BinaryOp::Mod => match consts {
            (Some(_), Some(_)) => Some(x.rem(y)),
            _ if y.lower_bound() >= 1 => Some(x.rem(y)),
            _ => None,
        },
        BinaryOp::Fmod => match consts {
            (Some(a), Some(b)) => Some(SymDim::from(a.wrapping_rem(b))),
            _ => None,
        },
        BinaryOp::Max => Some(x.max_of(y)),
        BinaryOp::Min => Some(x.min_of(y)),
        BinaryOp::Equal => decide(lo == 0 && hi == 0, lo > 0 || hi < 0),
        BinaryOp::Less => decide(hi < 0, lo >= 0),
        BinaryOp::LessOrEqual => decide(hi <= 0, lo > 0),
        BinaryOp::Greater => decide(lo > 0, hi <= 0),
        BinaryOp::GreaterOrEqual => decide(lo >= 0, hi < 0),
        BinaryOp::And => consts.0.zip(consts.1).and_then(|(a, b)| bool_of(a != 0 && b != 0)),
        BinaryOp::Or => consts.0.zip(consts.1).and_then(|(a, b)| bool_of(a != 0 || b != 0)),
        BinaryOp::Xor => consts.0.zip(consts.1).and_then(|(a, b)| bool_of((a != 0) != (b != 0))),
        BinaryOp::Pow => None,
    })
}

/// Proven bounds `(lo, hi)` of `x - y` (i64::MIN / i64::MAX when unknown).
fn diff_bounds(x: &SymDim, y: &SymDim) -> (i64, i64) {
    let d = x.clone() - y.clone();
    if let Some(c) = d.as_const() {
        return (c, c);
    }
    let lo = d.lower_bound();
    let neg = (y.clone() - x.clone()).lower_bound();
    (lo, if neg == i64::MIN { i64::MAX } else { neg.saturating_neg() })
}

/// Sum/Max/Min/Mean: one input is that input; more become a chain of binary nodes (Mean then
/// divides by the count).
pub(crate) fn variadic(ctx: &NodeCtx) -> Build {
    let n = ctx.node.inputs.len();
    if n == 0 {
        return unsup("needs at least one input");
    }
    if ctx.opset < 8 && n > 1 {
        return unsup(format!("opset {} requires equal shapes; only opset ≥ 8 broadcasting is supported", ctx.opset));
    }
    let (op, allowed, _) = binary_kind(ctx)?;
    let ids: Vec<usize> = (0..n).collect();
    let dtype = ctx.same_dtype(&ids, allowed)?;
    let mean = ctx.node.op_type == "Mean";
    if n == 1 {
        return Ok(Built::Alias(0));
    }
    if let Some(ks) = ctx.known_small(&ids) {
        let mut acc = Some(ks[0].clone());
        for k in &ks[1..] {
            acc = match acc {
                Some(a) => fold_binary(op, &a, k, dtype)?,
                None => None,
            };
        }
        if let (Some(sum), false) = (acc, mean) {
            return Built::folded(sum);
        }
    }
    let mut specs = Vec::with_capacity(n);
    let mut shape = ctx.input(0)?.shape().to_vec();
    for i in 1..n {
        shape = broadcast(&shape, ctx.input(i)?.shape())?;
        let lhs = if i == 1 { Operand::In(0) } else { Operand::Prev(i - 2) };
        specs.push(NodeSpec {
            op: Op::Binary(op),
            inputs: vec![Some(lhs), Some(Operand::In(i))],
            outputs: vec![TensorType::new(dtype, shape.clone())],
        });
    }
    if mean {
        let count = Tensor::new(vec![], TensorData::from_f64(dtype, &[n as f64]));
        specs.push(NodeSpec {
            op: Op::Binary(BinaryOp::Div),
            inputs: vec![Some(Operand::Prev(n - 2)), Some(Operand::Const(Arc::new(count)))],
            outputs: vec![TensorType::new(dtype, shape)],
        });
    }
    Ok(Built::Nodes(specs))
}

pub(crate) fn where_(ctx: &NodeCtx) -> Build {
    ctx.check_dtype(0, &[DType::Bool])?;
    let dtype = ctx.same_dtype(&[1, 2], ANY)?;
    let (c, x, y) = (ctx.input(0)?, ctx.input(1)?, ctx.input(2)?);
    let shape = broadcast(&broadcast(c.shape(), x.shape())?, y.shape())?;
    if let (Some([kc, kx, ky]), Some(out)) = (ctx.known_small(&[0, 1, 2]).as_deref(), const_shape(&shape)) {
        if let Some(cond) = kc.tensor().and_then(|t| t.data.to_i64_vec()) {
            let both = Known::chain(&[kx, ky]);
            if let Some(both) = both {
                let ic = broadcast_indices(kc.shape(), &out);
                let ix = broadcast_indices(kx.shape(), &out);
                let iy = broadcast_indices(ky.shape(), &out);
                let off = kx.numel();
                let idx: Vec<usize> = (0..ic.len()).map(|i| if cond[ic[i]] != 0 { ix[i] } else { off + iy[i] }).collect();
                return Built::folded(both.take(out, &idx));
            }
        }
    }
    Ok(Built::one(Op::Where, &[0, 1, 2], TensorType::new(dtype, shape)))
}

pub(crate) fn cast(ctx: &NodeCtx) -> Build {
    let code = ctx.int_attr("to")?.ok_or_else(|| Unsupported("attribute 'to' is missing".into()))?;
    let to = DType::from_onnx(code as i32).filter(|d| ANY.contains(d));
    let Some(to) = to else { return unsup(format!("cast to ONNX type {code} is not supported")) };
    let from = ctx.check_dtype(0, ANY)?;
    let x = ctx.input(0)?;
    if from == to {
        return Ok(Built::Alias(0));
    }
    if let Some([k]) = ctx.known_small(&[0]).as_deref() {
        let shape = k.shape().to_vec();
        let folded = match k {
            Known::Tensor(t) if from.is_float() => {
                Some(Known::from_tensor(Tensor::new(shape, TensorData::from_f64(to, &t.data.to_f64_vec()))))
            }
            Known::Tensor(t) => {
                Some(Known::from_tensor(Tensor::new(shape, TensorData::from_i64(to, &t.data.to_i64_vec().unwrap()))))
            }
            // Dims fit in i32; casting them between integer types keeps them symbolic.
            Known::Sym { vals, .. } if INTS.contains(&to) => Some(Known::from_ints(to, shape, vals.clone())),
            Known::Sym { .. } => None,
        };
        if let Some(k) = folded {
            return Built::folded(k);
        }
    }
    Ok(Built::one(Op::Cast { to }, &[0], TensorType::new(to, x.shape().to_vec())))
}

pub(crate) fn clip(ctx: &NodeCtx) -> Build {
    // Integer Clip exists from opset 12.
    ctx.check_dtype(0, if ctx.opset >= 12 { NUMERIC } else { FLOATS })?;
    let x = ctx.input(0)?;
    let (min, max) = if ctx.opset < 11 {
        let lo = ctx.float_or("min", f32::NEG_INFINITY)?;
        let hi = ctx.float_or("max", f32::INFINITY)?;
        (Some(lo as f64).filter(|v| v.is_finite()), Some(hi as f64).filter(|v| v.is_finite()))
    } else {
        let bound = |i: usize, what: &str| -> Result<Option<f64>, Unsupported> {
            if ctx.opt_input(i).is_none() {
                return Ok(None);
            }
            match ctx.param_f64s(i, what)?.as_slice() {
                [v] => Ok(Some(*v)),
                other => unsup(format!("{what} should be a scalar, has {} elements", other.len())),
            }
        };
        (bound(1, "min")?, bound(2, "max")?)
    };
    Ok(Built::one(Op::Clip { min, max }, &[0], x.ty.clone()))
}

pub(crate) fn leaky_relu(ctx: &NodeCtx) -> Build {
    ctx.check_dtype(0, FLOATS)?;
    let alpha = ctx.float_or("alpha", 0.01)?;
    Ok(Built::one(Op::LeakyRelu { alpha }, &[0], ctx.input(0)?.ty.clone()))
}

pub(crate) fn gelu(ctx: &NodeCtx) -> Build {
    ctx.check_dtype(0, FLOATS)?;
    let tanh = match ctx.string_or("approximate", "none")?.as_str() {
        "none" => false,
        "tanh" => true,
        other => return unsup(format!("approximate = '{other}' is not supported")),
    };
    Ok(Built::one(Op::Gelu { tanh }, &[0], ctx.input(0)?.ty.clone()))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;

    #[test]
    fn broadcasting_binary_gives_symbolic_max_only_when_needed() {
        let mut g = TestGraph::new(17);
        g.input("a", "f32", &["B", "1", "W"]);
        g.input("b", "f32", &["3", "W"]);
        g.input("c", "f32", &["H"]);
        g.node("Add", &["a", "b"], &["ab"], &[]);
        g.node("Mul", &["ab", "c"], &["abc"], &[]);
        g.output("ab");
        g.output("abc");
        let out = g.import_strict();
        assert_eq!(out.op_of("ab"), "Add");
        assert_eq!(out.type_of("ab"), "f32[B, 3, W]");
        assert_eq!(out.type_of("abc"), "f32[B, 3, max(H, W)]");
    }

    #[test]
    fn mismatched_constant_dims_are_declined() {
        let mut g = TestGraph::new(17);
        g.input("a", "f32", &["2", "3"]);
        g.input("b", "f32", &["4"]);
        g.node("Add", &["a", "b"], &["y"], &[]);
        g.output("y");
        let e = g.import_err();
        assert!(e.contains("Add_0") && e.contains("do not broadcast"), "{e}");
    }

    #[test]
    fn variadic_sum_and_mean_become_chains() {
        let mut g = TestGraph::new(17);
        for n in ["a", "b", "c"] {
            g.input(n, "f32", &["4"]);
        }
        g.named_node("s", "Sum", &["a", "b", "c"], &["s"], &[]);
        g.named_node("m", "Mean", &["a", "b", "c"], &["m"], &[]);
        g.named_node("one", "Max", &["a"], &["one"], &[]);
        g.output("s");
        g.output("m");
        g.output("one");
        let out = g.import_strict();
        assert_eq!(out.node_names(), vec!["a", "b", "c", "s/0", "s/1", "m/0", "m/1", "m/const2", "m/2"]);
        assert_eq!(out.op_of("m"), "Div");
        assert_eq!(out.producer_of("one"), "a");
    }

    /// torch.onnx's `expand`: `Where(Equal(shape, -1), ones, shape)` decides on dims being ≥ 1.
    #[test]
    fn torch_expand_shape_pattern_folds() {
        let mut g = TestGraph::new(17);
        g.input("t", "f32", &[]);
        g.input("sample", "f32", &["B", "4", "H", "W"]);
        g.node("Shape", &["sample"], &["s"], &[]);
        g.const_i64("i0", &[1], &[0]);
        g.node("Gather", &["s", "i0"], &["b"], &[("axis", attr_i(0))]);
        g.const_i64("one", &[1], &[1]);
        g.node("ConstantOfShape", &["one"], &["ones"], &[("value", crate::source::Attr::Tensor(std::sync::Arc::new(crate::tensor::Tensor::from_i64s(vec![1], vec![1]))))]);
        g.const_i64("m1", &[], &[-1]);
        g.node("Mul", &["ones", "m1"], &["neg"], &[]);
        g.node("Equal", &["b", "neg"], &["eq"], &[]);
        g.node("Where", &["eq", "ones", "b"], &["shape"], &[]);
        g.named_node("ex", "Expand", &["t", "shape"], &["tb"], &[]);
        g.node("Less", &["b", "one"], &["lt"], &[]);
        g.node("GreaterOrEqual", &["b", "one"], &["ge"], &[]);
        g.output("tb");
        g.output("lt");
        g.output("ge");
        let out = g.import_strict();
        assert_eq!(out.type_of("tb"), "f32[B]");
        assert_eq!(out.input_ops("tb"), vec!["Input"]);
        assert_eq!(out.known_of("lt"), "[0]");
        assert_eq!(out.known_of("ge"), "[1]");
    }

    #[test]
    fn integer_shape_arithmetic_folds_symbolically() {
        let mut g = TestGraph::new(17);
        g.input("x", "f32", &["B", "C", "H", "W"]);
        g.node("Shape", &["x"], &["s"], &[]);
        g.const_i64("i2", &[], &[2]);
        g.node("Gather", &["s", "i2"], &["h"], &[("axis", attr_i(0))]);
        g.const_i64("two", &[], &[2]);
        g.node("Mul", &["h", "two"], &["h2"], &[]);
        g.node("Div", &["h2", "two"], &["h_again"], &[]);
        g.node("Equal", &["h_again", "h"], &["same"], &[]);
        g.const_i64("one", &[], &[1]);
        g.node("Sub", &["h", "one"], &["hm1"], &[]);
        g.node("Div", &["hm1", "two"], &["half"], &[]);
        g.node("Add", &["half", "one"], &["conv_out"], &[]);
        g.output("conv_out");
        g.node("Cast", &["h2"], &["h2f"], &[("to", attr_i(1))]);
        g.output("h_again");
        g.output("same");
        g.output("h2f");
        let out = g.import_strict();
        assert_eq!(out.known_of("h_again"), "[H]");
        assert_eq!(out.op_of("h_again"), "SymbolicValue");
        assert_eq!(out.op_of("same"), "Constant");
        assert_eq!(out.known_of("conv_out"), "[((H + 1) / 2)]", "matches Conv's (H + 2*1 - 3 + 2) / 2");
        assert_eq!(out.op_of("h2f"), "Cast");
        assert_eq!(out.type_of("h2f"), "f32[]");
    }
}
