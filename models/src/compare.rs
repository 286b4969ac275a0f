//! Comparing an output from quilt with the reference output from ORT's CPU EP.
//!
//! Pass criterion (numpy `allclose` with the reference on the right): for every element,
//! `|got - want| <= atol + rtol * |want|`; NaN matches only NaN, infinities must be equal.
//! Integer and bool outputs must match exactly.

use crate::tensor::HostTensor;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub atol: f64,
    pub rtol: f64,
}

impl Tolerance {
    /// The default for fp32 models (see README): tight enough to catch a wrong axis or a dropped
    /// epsilon, loose enough for a different (but correct) summation order.
    pub const FP32: Tolerance = Tolerance { atol: 1e-4, rtol: 1e-3 };
}

#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub shape: Vec<i64>,
    pub expected_shape: Vec<i64>,
    pub dtype: &'static str,
    pub expected_dtype: &'static str,
    pub max_abs: f64,
    /// Largest `|got - want| / |want|` over elements with `want != 0`.
    pub max_rel: f64,
    /// Elements outside the tolerance.
    pub mismatches: usize,
    /// Flat index of the worst element (largest excess over its allowance), if any mismatched.
    pub worst: Option<(usize, f64, f64)>,
}

impl Comparison {
    pub fn passed(&self) -> bool {
        self.shape == self.expected_shape && self.dtype == self.expected_dtype && self.mismatches == 0
    }

    /// One line for reports: what failed and where.
    pub fn describe(&self) -> String {
        if self.shape != self.expected_shape {
            return format!("shape {:?} != expected {:?}", self.shape, self.expected_shape);
        }
        if self.dtype != self.expected_dtype {
            return format!("dtype {} != expected {}", self.dtype, self.expected_dtype);
        }
        let mut text = format!("max abs {:.3e}, max rel {:.3e}", self.max_abs, self.max_rel);
        if let Some((index, got, want)) = self.worst {
            text += &format!(
                ", {} element(s) out of tolerance, worst at flat index {index}: got {got} want {want}",
                self.mismatches
            );
        }
        text
    }
}

pub fn compare(got: &HostTensor, want: &HostTensor, tol: Tolerance) -> Comparison {
    let mut result = Comparison {
        shape: got.shape.clone(),
        expected_shape: want.shape.clone(),
        dtype: got.data.dtype_name(),
        expected_dtype: want.data.dtype_name(),
        max_abs: 0.0,
        max_rel: 0.0,
        mismatches: 0,
        worst: None,
    };
    if result.shape != result.expected_shape || result.dtype != result.expected_dtype {
        return result;
    }
    let exact = !want.data.is_float();
    let (g, w) = (got.data.to_f64(), want.data.to_f64());
    let mut worst_excess = f64::NEG_INFINITY;
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        let (ok, excess) = if a.is_nan() || b.is_nan() {
            (a.is_nan() && b.is_nan(), f64::INFINITY)
        } else if a.is_infinite() || b.is_infinite() {
            (a == b, f64::INFINITY)
        } else {
            let diff = (a - b).abs();
            result.max_abs = result.max_abs.max(diff);
            if b != 0.0 {
                result.max_rel = result.max_rel.max(diff / b.abs());
            }
            let allowance = if exact { 0.0 } else { tol.atol + tol.rtol * b.abs() };
            (diff <= allowance, diff - allowance)
        };
        if !ok {
            result.mismatches += 1;
            if excess > worst_excess {
                worst_excess = excess;
                result.worst = Some((i, a, b));
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::HostData;

    fn f32s(v: &[f32]) -> HostTensor {
        HostTensor { shape: vec![v.len() as i64], data: HostData::F32(v.to_vec()) }
    }

    #[test]
    fn within_and_outside_tolerance() {
        let tol = Tolerance { atol: 1e-4, rtol: 1e-3 };
        let c = compare(&f32s(&[1.0005, -2.0]), &f32s(&[1.0, -2.0]), tol);
        assert!(c.passed(), "{}", c.describe());
        assert!((c.max_abs - 5e-4).abs() < 1e-6);

        let c = compare(&f32s(&[1.0, 0.01]), &f32s(&[1.0, 0.0]), tol);
        assert!(!c.passed());
        assert_eq!(c.mismatches, 1);
        assert_eq!(c.worst.unwrap().0, 1);
    }

    #[test]
    fn nan_inf_shape_and_ints() {
        let tol = Tolerance::FP32;
        assert!(compare(&f32s(&[f32::NAN]), &f32s(&[f32::NAN]), tol).passed());
        assert!(!compare(&f32s(&[f32::NAN]), &f32s(&[0.0]), tol).passed());
        assert!(!compare(&f32s(&[f32::INFINITY]), &f32s(&[f32::NEG_INFINITY]), tol).passed());
        assert!(!compare(&f32s(&[1.0, 2.0]), &f32s(&[1.0]), tol).passed());
        let i = |v: Vec<i64>| HostTensor { shape: vec![v.len() as i64], data: HostData::I64(v) };
        assert!(!compare(&i(vec![1, 3]), &i(vec![1, 2]), Tolerance { atol: 10.0, rtol: 10.0 }).passed());
        assert!(compare(&i(vec![1, 2]), &i(vec![1, 2]), tol).passed());
    }
}
