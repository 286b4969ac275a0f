//! Ops with no data inputs: Fill (ConstantOfShape), Range, SymbolicValue.

use quilt_rewrites::{DType, SymDim, Tensor, TensorData};

use super::data::{scalar_of, store_i64, with_elem, Elem};
use super::StepCtx;

pub(crate) fn fill(cx: &StepCtx, value: f64) -> Result<Tensor, String> {
    let shape = cx.out_shape(0).to_vec();
    let n: usize = shape.iter().product();
    let data = with_elem!(cx.out_dtype(0), T => T::wrap(vec![T::from_f64(value); n]));
    Ok(Tensor { shape, data })
}

pub(crate) fn range(cx: &StepCtx, start: f64, delta: f64) -> Result<Tensor, String> {
    let shape = cx.out_shape(0).to_vec();
    if shape.len() != 1 {
        return Err(format!("output must be 1-D, the plan says {shape:?}"));
    }
    let n = shape[0];
    let dtype = cx.out_dtype(0);
    let data = if dtype.is_int() {
        // Integers step exactly (start and delta are whole numbers for integer Range).
        let (s, d) = (start as i64, delta as i64);
        store_i64(dtype, (0..n as i64).map(|i| s.wrapping_add(i.wrapping_mul(d))).collect())
    } else if dtype == DType::F64 {
        TensorData::F64((0..n).map(|i| start + i as f64 * delta).collect())
    } else if dtype.is_float() {
        // ORT accumulates in the element type: start + i * delta computed in f32.
        let (s, d) = (start as f32, delta as f32);
        let v: Vec<f64> = (0..n).map(|i| (s + i as f32 * d) as f64).collect();
        TensorData::from_f64(dtype, &v)
    } else {
        return Err(format!("Range cannot produce {dtype}"));
    };
    Ok(Tensor { shape, data })
}

pub(crate) fn symbolic_value(cx: &StepCtx, values: &[SymDim], scalar: bool) -> Result<Tensor, String> {
    if scalar && values.len() != 1 {
        return Err(format!("a scalar needs exactly one value, got {}", values.len()));
    }
    let v: Vec<i64> = values.iter().map(|d| cx.eval(d)).collect::<Result<_, _>>()?;
    let shape = if scalar { vec![] } else { vec![v.len()] };
    let data = match cx.out_dtype(0) {
        DType::I64 => TensorData::I64(v),
        d if d.is_int() => store_i64(d, v),
        d => {
            let f: Vec<f64> = v.iter().map(|&x| x as f64).collect();
            match scalar_of(d, 0.0) {
                _ if d.is_float() || d == DType::Bool => TensorData::from_f64(d, &f),
                other => other,
            }
        }
    };
    Ok(Tensor { shape, data })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{dims, f32s, i64s, PlanBuilder};
    use quilt_rewrites::{DType, Op, SymDim, Tensor};

    #[test]
    fn sourceless_ops_follow_the_bound_symbols() {
        let mut p = PlanBuilder::default();
        let x = p.input("x", DType::F32, dims(&["B", "L"]));
        let n = SymDim::sym("L");
        let fill = p.step("fill", Op::Fill { value: 2.5 }, &[], vec![(DType::F32, dims(&["B", "L"]))])[0];
        let range = p.step("range", Op::Range { start: 1.0, delta: 3.0 }, &[], vec![(DType::I64, dims(&["L"]))])[0];
        let shape = p.step("shape", Op::SymbolicValue { values: vec![SymDim::sym("B"), n * SymDim::konst(2)], scalar: false }, &[], vec![(DType::I64, dims(&["2"]))])[0];
        let scalar = p.step("scalar", Op::SymbolicValue { values: vec![SymDim::sym("B")], scalar: true }, &[], vec![(DType::I64, vec![])])[0];
        let _ = x;
        p.output("fill", fill);
        p.output("range", range);
        p.output("shape", shape);
        p.output("scalar", scalar);
        let out = p.build().run(&[Tensor::from_f32s(vec![2, 3], vec![0.0; 6])]).unwrap();
        assert_eq!(f32s(&out[0]), vec![2.5; 6]);
        assert_eq!(i64s(&out[1]), vec![1, 4, 7]);
        assert_eq!(i64s(&out[2]), vec![2, 6]);
        assert_eq!((out[3].shape.clone(), i64s(&out[3])), (vec![], vec![2]));
    }
}
