//! Elementwise ops: Unary, Binary (with broadcasting), Where, Cast, Clip, LeakyRelu, Gelu.

use half::{bf16, f16};
use quilt_rewrites::ir::{BinaryOp, UnaryOp};
use quilt_rewrites::{DType, Tensor, TensorData};

use super::broadcast::{broadcast_shape, map2, map3};
use super::data::{load_i64, load_real, store_i64, with_real, Real};
use super::StepCtx;
#[allow(unused_imports)]
use num_traits::{Float as _, One as _, Zero as _};

fn map<F: Copy, R>(x: &[F], f: impl Fn(F) -> R) -> Vec<R> {
    x.iter().map(|&v| f(v)).collect()
}

pub(crate) fn unary(cx: &StepCtx, op: UnaryOp) -> Result<Tensor, String> {
    let x = cx.input(0)?;
    let dtype = x.dtype();
    let data = match (&x.data, op) {
        (_, UnaryOp::Identity) => x.data.clone(),
        (TensorData::Bool(v), UnaryOp::Not) => TensorData::Bool(v.iter().map(|b| !b).collect()),
        _ if dtype.is_float() => with_real!(dtype, F => {
            let v = load_real::<F>(x, "x")?;
            unary_real(op, &v).map(|r| F::store(dtype, r))
        })?,
        (_, UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Sign | UnaryOp::Relu) if dtype.is_int() => {
            let v = load_i64(x, "x")?;
            let r = match op {
                UnaryOp::Neg => map(&v, i64::wrapping_neg),
                UnaryOp::Abs => map(&v, i64::wrapping_abs),
                UnaryOp::Sign => map(&v, i64::signum),
                _ => map(&v, |a| a.max(0)),
            };
            store_i64(dtype, r)
        }
        _ => return Err(format!("{op:?} is not defined for {dtype}")),
    };
    Ok(Tensor { shape: x.shape.clone(), data })
}

fn unary_real<F: Real>(op: UnaryOp, x: &[F]) -> Result<Vec<F>, String> {
    let (zero, one) = (F::zero(), F::one());
    Ok(match op {
        UnaryOp::Identity => x.to_vec(),
        UnaryOp::Relu => map(x, |v| if v < zero { zero } else { v }),
        // Split by sign so exp never overflows.
        UnaryOp::Sigmoid => map(x, |v| {
            if v >= zero {
                one / (one + (-v).exp())
            } else {
                let e = v.exp();
                e / (one + e)
            }
        }),
        UnaryOp::Tanh => map(x, F::tanh),
        UnaryOp::Erf => map(x, F::erf_of),
        UnaryOp::Sqrt => map(x, F::sqrt),
        UnaryOp::Exp => map(x, F::exp),
        UnaryOp::Log => map(x, F::ln),
        UnaryOp::Neg => map(x, |v| -v),
        UnaryOp::Abs => map(x, F::abs),
        UnaryOp::Reciprocal => map(x, F::recip),
        UnaryOp::Sin => map(x, F::sin),
        UnaryOp::Cos => map(x, F::cos),
        UnaryOp::Floor => map(x, F::floor),
        UnaryOp::Ceil => map(x, F::ceil),
        UnaryOp::Round => map(x, F::round_half_even),
        UnaryOp::Sign => map(x, |v| if v > zero { one } else if v < zero { -one } else { v }),
        UnaryOp::Softplus => map(x, |v| if v > zero { v + (-v).exp().ln_1p() } else { v.exp().ln_1p() }),
        UnaryOp::Not => return Err("Not takes bool".into()),
    })
}

pub(crate) fn binary(cx: &StepCtx, op: BinaryOp) -> Result<Tensor, String> {
    let (a, b) = (cx.input(0)?, cx.input(1)?);
    let out = broadcast_shape(&[&a.shape, &b.shape])?;
    let dtype = a.dtype();
    use BinaryOp::*;
    let data = match op {
        And | Or | Xor => match (&a.data, &b.data) {
            (TensorData::Bool(x), TensorData::Bool(y)) => TensorData::Bool(match op {
                And => map2(x, &a.shape, y, &b.shape, &out, |p, q| p & q)?,
                Or => map2(x, &a.shape, y, &b.shape, &out, |p, q| p | q)?,
                _ => map2(x, &a.shape, y, &b.shape, &out, |p, q| p ^ q)?,
            }),
            _ => return Err(format!("{op:?} takes bool operands, got {} and {}", a.dtype(), b.dtype())),
        },
        Equal | Less | LessOrEqual | Greater | GreaterOrEqual => TensorData::Bool(compare(op, a, b, &out)?),
        Pow => pow(a, b, &out)?,
        _ if dtype != b.dtype() => return Err(format!("operands have dtypes {dtype} and {}", b.dtype())),
        _ if dtype.is_float() => with_real!(dtype, F => {
            let x = load_real::<F>(a, "A")?;
            let y = load_real::<F>(b, "B")?;
            arith_real(op, (&x, &a.shape), (&y, &b.shape), &out).map(|r| F::store(dtype, r))
        })?,
        _ if dtype.is_int() => {
            let x = load_i64(a, "A")?;
            let y = load_i64(b, "B")?;
            store_i64(dtype, arith_int(op, (&x, &a.shape), (&y, &b.shape), &out)?)
        }
        _ => return Err(format!("{op:?} is not defined for {dtype}")),
    };
    Ok(Tensor { shape: out, data })
}

type Operand<'a, T> = (&'a [T], &'a [usize]);

fn arith_real<F: Real>(op: BinaryOp, (a, ash): Operand<F>, (b, bsh): Operand<F>, out: &[usize]) -> Result<Vec<F>, String> {
    use BinaryOp::*;
    let zero = F::zero();
    match op {
        Add => map2(a, ash, b, bsh, out, |x, y| x + y),
        Sub => map2(a, ash, b, bsh, out, |x, y| x - y),
        Mul => map2(a, ash, b, bsh, out, |x, y| x * y),
        Div => map2(a, ash, b, bsh, out, |x, y| x / y),
        // NaN propagates, as numpy's maximum/minimum do.
        Max => map2(a, ash, b, bsh, out, |x, y| if x.is_nan() || y.is_nan() { F::nan() } else { x.max(y) }),
        Min => map2(a, ash, b, bsh, out, |x, y| if x.is_nan() || y.is_nan() { F::nan() } else { x.min(y) }),
        Fmod => map2(a, ash, b, bsh, out, |x, y| x % y),
        Mod => map2(a, ash, b, bsh, out, |x, y| {
            let r = x % y;
            if r != zero && ((r < zero) != (y < zero)) {
                r + y
            } else {
                r
            }
        }),
        _ => Err(format!("{op:?} is not arithmetic")),
    }
}

fn arith_int(op: BinaryOp, (a, ash): Operand<i64>, (b, bsh): Operand<i64>, out: &[usize]) -> Result<Vec<i64>, String> {
    use BinaryOp::*;
    if matches!(op, Div | Mod | Fmod) && b.contains(&0) {
        return Err(format!("integer {op:?} by zero"));
    }
    match op {
        Add => map2(a, ash, b, bsh, out, i64::wrapping_add),
        Sub => map2(a, ash, b, bsh, out, i64::wrapping_sub),
        Mul => map2(a, ash, b, bsh, out, i64::wrapping_mul),
        Div => map2(a, ash, b, bsh, out, i64::wrapping_div),
        Max => map2(a, ash, b, bsh, out, i64::max),
        Min => map2(a, ash, b, bsh, out, i64::min),
        Fmod => map2(a, ash, b, bsh, out, i64::wrapping_rem),
        Mod => map2(a, ash, b, bsh, out, |x, y| {
            let r = x.wrapping_rem(y);
            if r != 0 && ((r < 0) != (y < 0)) {
                r + y
            } else {
                r
            }
        }),
        _ => Err(format!("{op:?} is not arithmetic")),
    }
}

fn compare(op: BinaryOp, a: &Tensor, b: &Tensor, out: &[usize]) -> Result<Vec<bool>, String> {
    use BinaryOp::*;
    fn cmp<T: PartialOrd + Copy>(op: BinaryOp, (a, ash): Operand<T>, (b, bsh): Operand<T>, out: &[usize]) -> Result<Vec<bool>, String> {
        match op {
            Equal => map2(a, ash, b, bsh, out, |x, y| x == y),
            Less => map2(a, ash, b, bsh, out, |x, y| x < y),
            LessOrEqual => map2(a, ash, b, bsh, out, |x, y| x <= y),
            Greater => map2(a, ash, b, bsh, out, |x, y| x > y),
            _ => map2(a, ash, b, bsh, out, |x, y| x >= y),
        }
    }
    if a.dtype() != b.dtype() {
        return Err(format!("operands have dtypes {} and {}", a.dtype(), b.dtype()));
    }
    if a.dtype().is_float() {
        with_real!(a.dtype(), F => {
            let x = load_real::<F>(a, "A")?;
            let y = load_real::<F>(b, "B")?;
            cmp(op, (&x, &a.shape), (&y, &b.shape), out)
        })
    } else {
        let x = load_i64(a, "A")?;
        let y = load_i64(b, "B")?;
        cmp(op, (&x, &a.shape), (&y, &b.shape), out)
    }
}

/// Pow: the result has the base's dtype; the exponent may have any numeric dtype.
fn pow(a: &Tensor, b: &Tensor, out: &[usize]) -> Result<TensorData, String> {
    let dtype = a.dtype();
    if dtype.is_float() {
        with_real!(dtype, F => {
            let x = load_real::<F>(a, "X")?;
            let r = if b.dtype() == dtype {
                let y = load_real::<F>(b, "Y")?;
                map2(&x, &a.shape, &y, &b.shape, out, F::powf)?
            } else {
                let y = b.data.to_f64_vec();
                map2(&x, &a.shape, &y, &b.shape, out, |x, y| F::of(num_traits::cast::<F, f64>(x).unwrap_or(f64::NAN).powf(y)))?
            };
            Ok(F::store(dtype, r))
        })
    } else if dtype.is_int() {
        let x = load_i64(a, "X")?;
        let r = if b.dtype().is_int() {
            let y = load_i64(b, "Y")?;
            map2(&x, &a.shape, &y, &b.shape, out, int_pow)?
        } else {
            let y = b.data.to_f64_vec();
            map2(&x, &a.shape, &y, &b.shape, out, |x, y| (x as f64).powf(y) as i64)?
        };
        Ok(store_i64(dtype, r))
    } else {
        Err(format!("Pow is not defined for {dtype}"))
    }
}

/// Exact integer power; negative exponents truncate toward zero as `(x as f64).powi(e) as i64`.
fn int_pow(x: i64, e: i64) -> i64 {
    if e < 0 {
        return match x {
            1 => 1,
            -1 => if e % 2 == 0 { 1 } else { -1 },
            _ => 0,
        };
    }
    let (mut base, mut e, mut acc) = (x, e as u64, 1i64);
    while e > 0 {
        if e & 1 == 1 {
            acc = acc.wrapping_mul(base);
        }
        base = base.wrapping_mul(base);
        e >>= 1;
    }
    acc
}

pub(crate) fn where_select(cx: &StepCtx) -> Result<Tensor, String> {
    let (c, x, y) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let TensorData::Bool(cv) = &c.data else {
        return Err(format!("condition has dtype {}, expected bool", c.dtype()));
    };
    let out = broadcast_shape(&[&c.shape, &x.shape, &y.shape])?;
    macro_rules! pick {
        ($($variant:ident),*) => {
            match (&x.data, &y.data) {
                $((TensorData::$variant(a), TensorData::$variant(b)) => TensorData::$variant(map3(
                    (cv, &c.shape), (a, &x.shape), (b, &y.shape), &out, |k, p, q| if k { p } else { q },
                )?),)*
                _ => return Err(format!("X and Y have dtypes {} and {}", x.dtype(), y.dtype())),
            }
        };
    }
    let data = pick!(F32, F16, BF16, F64, I64, I32, I8, U8, Bool);
    Ok(Tensor { shape: out, data })
}

pub(crate) fn cast(cx: &StepCtx, to: DType) -> Result<Tensor, String> {
    let x = cx.input(0)?;
    Ok(Tensor { shape: x.shape.clone(), data: cast_data(&x.data, to) })
}

/// ONNX Cast: float → int truncates toward zero (saturating at i64, then wrapping to narrower
/// types), float → bool is `x != 0`, f64 → f16/bf16 rounds through f32 as ORT does.
pub(crate) fn cast_data(d: &TensorData, to: DType) -> TensorData {
    let from = d.dtype();
    if from == to {
        return d.clone();
    }
    if from.is_float() {
        let v = d.to_f64_vec();
        let via_f32 = from == DType::F64;
        return match to {
            DType::F32 => TensorData::F32(map(&v, |x| x as f32)),
            DType::F64 => TensorData::F64(v),
            DType::F16 if via_f32 => TensorData::F16(map(&v, |x| f16::from_f32(x as f32))),
            DType::F16 => TensorData::F16(map(&v, f16::from_f64)),
            DType::BF16 if via_f32 => TensorData::BF16(map(&v, |x| bf16::from_f32(x as f32))),
            DType::BF16 => TensorData::BF16(map(&v, bf16::from_f64)),
            DType::Bool => TensorData::Bool(map(&v, |x| x != 0.0)),
            _ => store_i64(to, map(&v, |x| x as i64)),
        };
    }
    // Integers and bool: exact in i64.
    let v = d.to_i64_vec().unwrap_or_default();
    match to {
        DType::F32 => TensorData::F32(map(&v, |x| x as f32)),
        DType::F64 => TensorData::F64(map(&v, |x| x as f64)),
        DType::F16 => TensorData::F16(map(&v, |x| f16::from_f32(x as f32))),
        DType::BF16 => TensorData::BF16(map(&v, |x| bf16::from_f32(x as f32))),
        _ => store_i64(to, v),
    }
}

pub(crate) fn clip(cx: &StepCtx, min: Option<f64>, max: Option<f64>) -> Result<Tensor, String> {
    let x = cx.input(0)?;
    let dtype = x.dtype();
    // max(x, lo) first, then min(·, hi): with lo > hi every value becomes hi, as ONNX specifies.
    let data = if dtype.is_float() {
        with_real!(dtype, F => {
            let v = load_real::<F>(x, "x")?;
            let lo = min.map_or(F::neg_infinity(), F::of);
            let hi = max.map_or(F::infinity(), F::of);
            Ok(F::store(dtype, map(&v, |a| {
                let a = if a < lo { lo } else { a };
                if a > hi { hi } else { a }
            })))
        })?
    } else if dtype.is_int() {
        let v = load_i64(x, "x")?;
        let lo = min.map_or(i64::MIN, |m| m as i64);
        let hi = max.map_or(i64::MAX, |m| m as i64);
        store_i64(dtype, map(&v, |a| a.max(lo).min(hi)))
    } else {
        return Err(format!("Clip is not defined for {dtype}"));
    };
    Ok(Tensor { shape: x.shape.clone(), data })
}

pub(crate) fn leaky_relu(cx: &StepCtx, alpha: f32) -> Result<Tensor, String> {
    let x = cx.input(0)?;
    let dtype = x.dtype();
    let data = with_real!(dtype, F => {
        let v = load_real::<F>(x, "x")?;
        let a = F::of(alpha as f64);
        Ok(F::store(dtype, map(&v, |t| if t >= F::zero() { t } else { a * t })))
    })?;
    Ok(Tensor { shape: x.shape.clone(), data })
}

pub(crate) fn gelu(cx: &StepCtx, tanh: bool) -> Result<Tensor, String> {
    let x = cx.input(0)?;
    let dtype = x.dtype();
    let data = with_real!(dtype, F => {
        let v = load_real::<F>(x, "x")?;
        let half = F::of(0.5);
        let r = if tanh {
            let k = F::of((2.0 / std::f64::consts::PI).sqrt());
            let c = F::of(0.044715);
            map(&v, |t| half * t * (F::one() + (k * (t + c * t * t * t)).tanh()))
        } else {
            let inv_sqrt2 = F::of(std::f64::consts::FRAC_1_SQRT_2);
            map(&v, |t| half * t * (F::one() + (t * inv_sqrt2).erf_of()))
        };
        Ok(F::store(dtype, r))
    })?;
    Ok(Tensor { shape: x.shape.clone(), data })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_close, f32s, i64s, run_one, Rng};
    use super::*;
    use quilt_rewrites::Op;

    fn t(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_f32s(shape.to_vec(), v.to_vec())
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn unary_values() {
        let x = t(&[6], &[-2.5, -0.5, 0.5, 1.5, 2.5, 0.3]);
        let round = run_one(Op::Unary(UnaryOp::Round), &[&x], DType::F32, &[6]).unwrap();
        assert_eq!(f32s(&round), vec![-2.0, -0.0, 0.0, 2.0, 2.0, 0.0]);
        let mut rng = Rng::new(7);
        let x = rng.tensor(&[64]);
        let xs = f32s(&x).into_iter().map(|v| v * 8.0).collect::<Vec<_>>();
        let x = t(&[64], &xs);
        let cases: [(UnaryOp, fn(f64) -> f64); 6] = [
            (UnaryOp::Sigmoid, |v| 1.0 / (1.0 + (-v).exp())),
            (UnaryOp::Tanh, f64::tanh),
            (UnaryOp::Softplus, |v| (1.0 + v.exp()).ln()),
            (UnaryOp::Exp, f64::exp),
            (UnaryOp::Sign, |v| if v > 0.0 { 1.0 } else if v < 0.0 { -1.0 } else { 0.0 }),
            (UnaryOp::Erf, |v| libm::erf(v)),
        ];
        for (op, f) in cases {
            let got = run_one(Op::Unary(op), &[&x], DType::F32, &[64]).unwrap();
            let want: Vec<f32> = xs.iter().map(|&v| f(v as f64) as f32).collect();
            assert_close(&f32s(&got), &want, 1e-6, 1e-5);
        }
        // Gelu against the erf formula written out in f64.
        let got = run_one(Op::Gelu { tanh: false }, &[&x], DType::F32, &[64]).unwrap();
        let want: Vec<f32> = xs.iter().map(|&v| (0.5 * v as f64 * (1.0 + libm::erf(v as f64 / 2f64.sqrt()))) as f32).collect();
        assert_close(&f32s(&got), &want, 1e-5, 1e-5);
        let got = run_one(Op::Gelu { tanh: true }, &[&x], DType::F32, &[64]).unwrap();
        let want: Vec<f32> = xs
            .iter()
            .map(|&v| {
                let v = v as f64;
                (0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh())) as f32
            })
            .collect();
        assert_close(&f32s(&got), &want, 1e-5, 1e-5);
    }

    #[test]
    fn binary_broadcasts_and_f16_storage_rounds() {
        let mut rng = Rng::new(3);
        let a = rng.tensor(&[2, 3, 4]);
        let b = rng.tensor(&[3, 1]);
        let got = run_one(Op::Binary(BinaryOp::Sub), &[&a, &b], DType::F32, &[2, 3, 4]).unwrap();
        let (av, bv) = (f32s(&a), f32s(&b));
        let want: Vec<f32> = (0..24).map(|i| av[i] - bv[(i / 4) % 3]).collect();
        assert_eq!(f32s(&got), want);

        let h = |v: &[f32], s: &[usize]| Tensor::new(s.to_vec(), TensorData::F16(v.iter().map(|&x| f16::from_f32(x)).collect()));
        let (a16, b16) = (h(&av, &[2, 3, 4]), h(&bv, &[3, 1]));
        let got = run_one(Op::Binary(BinaryOp::Mul), &[&a16, &b16], DType::F16, &[2, 3, 4]).unwrap();
        assert_eq!(got.dtype(), DType::F16);
        let (a16v, b16v) = (f32s(&a16), f32s(&b16));
        let want: Vec<f32> = (0..24).map(|i| f16::from_f32(a16v[i] * b16v[(i / 4) % 3]).to_f32()).collect();
        assert_eq!(f32s(&got), want);
    }

    #[test]
    fn integer_division_mod_and_errors() {
        let a = Tensor::from_i64s(vec![4], vec![7, -7, 7, -7]);
        let b = Tensor::from_i64s(vec![4], vec![2, 2, -2, -2]);
        let div = run_one(Op::Binary(BinaryOp::Div), &[&a, &b], DType::I64, &[4]).unwrap();
        assert_eq!(i64s(&div), vec![3, -3, -3, 3]);
        let m = run_one(Op::Binary(BinaryOp::Mod), &[&a, &b], DType::I64, &[4]).unwrap();
        assert_eq!(i64s(&m), vec![1, 1, -1, -1]);
        let f = run_one(Op::Binary(BinaryOp::Fmod), &[&a, &b], DType::I64, &[4]).unwrap();
        assert_eq!(i64s(&f), vec![1, -1, 1, -1]);
        let p = run_one(Op::Binary(BinaryOp::Pow), &[&a, &b], DType::I64, &[4]).unwrap();
        assert_eq!(i64s(&p), vec![49, 49, 0, 0]);
        let zero = Tensor::from_i64s(vec![1], vec![0]);
        let e = run_one(Op::Binary(BinaryOp::Div), &[&a, &zero], DType::I64, &[4]).unwrap_err().to_string();
        assert!(e.contains("node 'node' (Div)") && e.contains("by zero"), "{e}");
        let i32s = Tensor::new(vec![2], TensorData::I32(vec![i32::MAX, 5]));
        let one = Tensor::new(vec![1], TensorData::I32(vec![1]));
        let s = run_one(Op::Binary(BinaryOp::Add), &[&i32s, &one], DType::I32, &[2]).unwrap();
        assert_eq!(s.data, TensorData::I32(vec![i32::MIN, 6]), "i32 addition wraps");
    }

    #[test]
    fn float_mod_pow_and_compare() {
        let a = t(&[3], &[5.5, -5.5, 2.0]);
        let b = t(&[3], &[2.0, 2.0, -3.0]);
        assert_eq!(f32s(&run_one(Op::Binary(BinaryOp::Fmod), &[&a, &b], DType::F32, &[3]).unwrap()), vec![1.5, -1.5, 2.0]);
        assert_eq!(f32s(&run_one(Op::Binary(BinaryOp::Mod), &[&a, &b], DType::F32, &[3]).unwrap()), vec![1.5, 0.5, -1.0]);
        let e = Tensor::from_i64s(vec![1], vec![2]);
        assert_eq!(f32s(&run_one(Op::Binary(BinaryOp::Pow), &[&a, &e], DType::F32, &[3]).unwrap()), vec![30.25, 30.25, 4.0]);
        let lt = run_one(Op::Binary(BinaryOp::Less), &[&a, &b], DType::Bool, &[3]).unwrap();
        assert_eq!(lt.data, TensorData::Bool(vec![false, true, false]));
        let c = Tensor::new(vec![3], TensorData::Bool(vec![true, false, true]));
        let w = run_one(Op::Where, &[&c, &a, &b], DType::F32, &[3]).unwrap();
        assert_eq!(f32s(&w), vec![5.5, 2.0, 2.0]);
    }

    #[test]
    fn cast_follows_onnx() {
        let x = t(&[5], &[-1.7, 1.7, 0.0, 300.4, f32::NAN]);
        let i = run_one(Op::Cast { to: DType::I32 }, &[&x], DType::I32, &[5]).unwrap();
        assert_eq!(i.data, TensorData::I32(vec![-1, 1, 0, 300, 0]));
        let b = run_one(Op::Cast { to: DType::Bool }, &[&x], DType::Bool, &[5]).unwrap();
        assert_eq!(b.data, TensorData::Bool(vec![true, true, false, true, true]));
        let h = run_one(Op::Cast { to: DType::F16 }, &[&x], DType::F16, &[5]).unwrap();
        assert_eq!(f32s(&h)[..4], [-1.7001953, 1.7001953, 0.0, 300.5]);
        let ints = Tensor::from_i64s(vec![2], vec![300, -1]);
        let u = run_one(Op::Cast { to: DType::U8 }, &[&ints], DType::U8, &[2]).unwrap();
        assert_eq!(u.data, TensorData::U8(vec![44, 255]));
    }

    #[test]
    fn clip_and_leaky_relu() {
        let x = t(&[4], &[-2.0, -0.5, 0.5, 2.0]);
        let c = run_one(Op::Clip { min: Some(-1.0), max: Some(1.0) }, &[&x], DType::F32, &[4]).unwrap();
        assert_eq!(f32s(&c), vec![-1.0, -0.5, 0.5, 1.0]);
        let c = run_one(Op::Clip { min: Some(1.0), max: Some(0.0) }, &[&x], DType::F32, &[4]).unwrap();
        assert_eq!(f32s(&c), vec![0.0; 4], "min > max gives max everywhere");
        let l = run_one(Op::LeakyRelu { alpha: 0.1 }, &[&x], DType::F32, &[4]).unwrap();
        assert_close(&f32s(&l), &[-0.2, -0.05, 0.5, 2.0], 1e-7, 0.0);
    }
}
