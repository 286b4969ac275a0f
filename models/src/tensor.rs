//! Host tensors as the runner sees them: what goes into an ORT session and what comes out,
//! independent of the `ort` value types so comparison code stays plain Rust.

use half::{bf16, f16};

use crate::error::{ModelsError, Result};
use crate::random::Rng;

#[derive(Debug, Clone, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<i64>,
    pub data: HostData,
}

impl HostData {
    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::F64(v) => v.len(),
            HostData::F16(v) => v.len(),
            HostData::BF16(v) => v.len(),
            HostData::I64(v) => v.len(),
            HostData::I32(v) => v.len(),
            HostData::I8(v) => v.len(),
            HostData::U8(v) => v.len(),
            HostData::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ONNX-style name of the element type.
    pub fn dtype_name(&self) -> &'static str {
        match self {
            HostData::F32(_) => "float32",
            HostData::F64(_) => "float64",
            HostData::F16(_) => "float16",
            HostData::BF16(_) => "bfloat16",
            HostData::I64(_) => "int64",
            HostData::I32(_) => "int32",
            HostData::I8(_) => "int8",
            HostData::U8(_) => "uint8",
            HostData::Bool(_) => "bool",
        }
    }

    pub fn is_float(&self) -> bool {
        matches!(self, HostData::F32(_) | HostData::F64(_) | HostData::F16(_) | HostData::BF16(_))
    }

    /// Every element widened to f64 (exact for every type here except i64 beyond 2^53).
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            HostData::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            HostData::F64(v) => v.clone(),
            HostData::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            HostData::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
            HostData::I64(v) => v.iter().map(|&x| x as f64).collect(),
            HostData::I32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            HostData::I8(v) => v.iter().map(|&x| f64::from(x)).collect(),
            HostData::U8(v) => v.iter().map(|&x| f64::from(x)).collect(),
            HostData::Bool(v) => v.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect(),
        }
    }
}

impl HostTensor {
    pub fn element_count(shape: &[i64]) -> usize {
        shape.iter().map(|&d| d.max(0) as usize).product()
    }

    /// Random values for input `name`: floats N(0, 1) or uniform in `range`, ints uniform in
    /// `range` (default [0, 10)), bools fair coin flips. Seeded per input name.
    pub fn random(name: &str, dtype: &str, shape: &[i64], range: Option<[f64; 2]>, seed: u64) -> Result<HostTensor> {
        let n = Self::element_count(shape);
        let mut rng = Rng::for_stream(seed, name);
        let float = |rng: &mut Rng| match range {
            Some([lo, hi]) => lo + (hi - lo) * rng.uniform(),
            None => rng.normal(),
        };
        let (lo, hi) = match range {
            Some([lo, hi]) => (lo.ceil() as i64, hi.ceil() as i64),
            None => (0, 10),
        };
        if !dtype.starts_with("float") && !dtype.starts_with("bfloat") && dtype != "bool" && hi <= lo {
            return Err(ModelsError::Input {
                input: name.to_string(),
                message: format!("integer range [{lo}, {hi}) is empty"),
            });
        }
        let data = match dtype {
            "float32" | "float" => HostData::F32((0..n).map(|_| float(&mut rng) as f32).collect()),
            "float64" | "double" => HostData::F64((0..n).map(|_| float(&mut rng)).collect()),
            "float16" => HostData::F16((0..n).map(|_| f16::from_f64(float(&mut rng))).collect()),
            "bfloat16" => HostData::BF16((0..n).map(|_| bf16::from_f64(float(&mut rng))).collect()),
            "int64" => HostData::I64((0..n).map(|_| rng.int_in(lo, hi)).collect()),
            "int32" => HostData::I32((0..n).map(|_| rng.int_in(lo, hi) as i32).collect()),
            "int8" => HostData::I8((0..n).map(|_| rng.int_in(lo, hi) as i8).collect()),
            "uint8" => HostData::U8((0..n).map(|_| rng.int_in(lo, hi) as u8).collect()),
            "bool" => HostData::Bool((0..n).map(|_| rng.next_u64() & 1 == 1).collect()),
            other => {
                return Err(ModelsError::Input {
                    input: name.to_string(),
                    message: format!("cannot generate random values of dtype `{other}`"),
                })
            }
        };
        Ok(HostTensor { shape: shape.to_vec(), data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_respects_dtype_shape_and_range() {
        let t = HostTensor::random("timestep", "float32", &[], Some([0.0, 1000.0]), 3).unwrap();
        assert_eq!(t.data.len(), 1);
        let v = t.data.to_f64()[0];
        assert!((0.0..1000.0).contains(&v));

        let ids = HostTensor::random("input_ids", "int64", &[2, 77], Some([0.0, 1000.0]), 3).unwrap();
        assert_eq!(ids.data.len(), 154);
        assert!(ids.data.to_f64().iter().all(|&x| (0.0..1000.0).contains(&x)));
        // Random, not constant.
        let vals = ids.data.to_f64();
        assert!(vals.iter().any(|&x| x != vals[0]));

        let err = HostTensor::random("x", "string", &[1], None, 0).unwrap_err().to_string();
        assert!(err.contains("`x`") && err.contains("string"), "{err}");
    }
}
