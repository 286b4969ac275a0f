//! Host tensors: weights, constants, and the CPU backend's values.

use crate::dtype::DType;
use half::{bf16, f16};

/// The elements of a tensor, stored in its own dtype (f16/bf16 stay 2 bytes wide).
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
}

/// A dense row-major tensor with a concrete shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl TensorData {
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::F16(_) => DType::F16,
            TensorData::BF16(_) => DType::BF16,
            TensorData::F64(_) => DType::F64,
            TensorData::I64(_) => DType::I64,
            TensorData::I32(_) => DType::I32,
            TensorData::I8(_) => DType::I8,
            TensorData::U8(_) => DType::U8,
            TensorData::Bool(_) => DType::Bool,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::F16(v) => v.len(),
            TensorData::BF16(v) => v.len(),
            TensorData::F64(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::I8(v) => v.len(),
            TensorData::U8(v) => v.len(),
            TensorData::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `n` zero elements of `dtype`.
    pub fn zeros(dtype: DType, n: usize) -> TensorData {
        match dtype {
            DType::F32 => TensorData::F32(vec![0.0; n]),
            DType::F16 => TensorData::F16(vec![f16::ZERO; n]),
            DType::BF16 => TensorData::BF16(vec![bf16::ZERO; n]),
            DType::F64 => TensorData::F64(vec![0.0; n]),
            DType::I64 => TensorData::I64(vec![0; n]),
            DType::I32 => TensorData::I32(vec![0; n]),
            DType::I8 => TensorData::I8(vec![0; n]),
            DType::U8 => TensorData::U8(vec![0; n]),
            DType::Bool => TensorData::Bool(vec![false; n]),
        }
    }

    /// Decodes little-endian raw bytes (ONNX `raw_data`, an ORT tensor buffer).
    pub fn from_le_bytes(dtype: DType, bytes: &[u8]) -> Option<TensorData> {
        let n = dtype.size_bytes();
        if !bytes.len().is_multiple_of(n) {
            return None;
        }
        Some(match dtype {
            DType::F32 => TensorData::F32(decode(bytes, f32::from_le_bytes)),
            DType::F16 => TensorData::F16(decode(bytes, f16::from_le_bytes)),
            DType::BF16 => TensorData::BF16(decode(bytes, bf16::from_le_bytes)),
            DType::F64 => TensorData::F64(decode(bytes, f64::from_le_bytes)),
            DType::I64 => TensorData::I64(decode(bytes, i64::from_le_bytes)),
            DType::I32 => TensorData::I32(decode(bytes, i32::from_le_bytes)),
            DType::I8 => TensorData::I8(bytes.iter().map(|&b| b as i8).collect()),
            DType::U8 => TensorData::U8(bytes.to_vec()),
            DType::Bool => TensorData::Bool(bytes.iter().map(|&b| b != 0).collect()),
        })
    }

    /// Encodes as little-endian bytes (the layout ORT tensors use).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::BF16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I8(v) => v.iter().map(|&x| x as u8).collect(),
            TensorData::U8(v) => v.clone(),
            TensorData::Bool(v) => v.iter().map(|&x| x as u8).collect(),
        }
    }

    /// Every element widened to f64 (exact for all types quilt stores).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match self {
            TensorData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            TensorData::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
            TensorData::F64(v) => v.clone(),
            TensorData::I64(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::I32(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::I8(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::U8(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::Bool(v) => v.iter().map(|&x| x as u8 as f64).collect(),
        }
    }

    /// Integer view of integer and bool data (shape values, indices, axes); `None` for floats.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        Some(match self {
            TensorData::I64(v) => v.clone(),
            TensorData::I32(v) => v.iter().map(|&x| x as i64).collect(),
            TensorData::I8(v) => v.iter().map(|&x| x as i64).collect(),
            TensorData::U8(v) => v.iter().map(|&x| x as i64).collect(),
            TensorData::Bool(v) => v.iter().map(|&x| x as i64).collect(),
            _ => return None,
        })
    }

    /// Builds data of `dtype` from f64 values (rounding/truncating as ONNX Cast does).
    pub fn from_f64(dtype: DType, v: &[f64]) -> TensorData {
        match dtype {
            DType::F32 => TensorData::F32(v.iter().map(|&x| x as f32).collect()),
            DType::F16 => TensorData::F16(v.iter().map(|&x| f16::from_f64(x)).collect()),
            DType::BF16 => TensorData::BF16(v.iter().map(|&x| bf16::from_f64(x)).collect()),
            DType::F64 => TensorData::F64(v.to_vec()),
            DType::I64 => TensorData::I64(v.iter().map(|&x| x as i64).collect()),
            DType::I32 => TensorData::I32(v.iter().map(|&x| x as i32).collect()),
            DType::I8 => TensorData::I8(v.iter().map(|&x| x as i8).collect()),
            DType::U8 => TensorData::U8(v.iter().map(|&x| x as u8).collect()),
            DType::Bool => TensorData::Bool(v.iter().map(|&x| x != 0.0).collect()),
        }
    }
}

impl TensorData {
    /// The elements at the given flat indices, in that order (gathers, slices and transposes of
    /// constants at import time).
    pub fn take(&self, idx: &[usize]) -> TensorData {
        fn pick<T: Copy>(v: &[T], idx: &[usize]) -> Vec<T> {
            idx.iter().map(|&i| v[i]).collect()
        }
        match self {
            TensorData::F32(v) => TensorData::F32(pick(v, idx)),
            TensorData::F16(v) => TensorData::F16(pick(v, idx)),
            TensorData::BF16(v) => TensorData::BF16(pick(v, idx)),
            TensorData::F64(v) => TensorData::F64(pick(v, idx)),
            TensorData::I64(v) => TensorData::I64(pick(v, idx)),
            TensorData::I32(v) => TensorData::I32(pick(v, idx)),
            TensorData::I8(v) => TensorData::I8(pick(v, idx)),
            TensorData::U8(v) => TensorData::U8(pick(v, idx)),
            TensorData::Bool(v) => TensorData::Bool(pick(v, idx)),
        }
    }

    /// The elements of a row-major tensor of `shape` with its axes permuted (`out axis i = axis
    /// perm[i]`). Weights are permuted at compile time (the channels-last layout pass), so this
    /// walks the output in order and splits the work across threads for large tensors.
    pub fn permuted(&self, shape: &[usize], perm: &[usize]) -> TensorData {
        fn run<T: Copy + Send + Sync + Default>(v: &[T], shape: &[usize], perm: &[usize]) -> Vec<T> {
            let rank = shape.len();
            let n: usize = shape.iter().product();
            if rank == 0 || n == 0 {
                return v.to_vec();
            }
            let mut strides = vec![1usize; rank];
            for i in (0..rank - 1).rev() {
                strides[i] = strides[i + 1] * shape[i + 1];
            }
            let out_shape: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
            let src: Vec<usize> = perm.iter().map(|&a| strides[a]).collect();
            let inner = out_shape[rank - 1];
            let rows = n / inner;
            let mut out = vec![T::default(); n];
            // One row = one index of every output axis but the last; row r's source offset.
            let offset = |mut r: usize| -> usize {
                let mut off = 0;
                for d in (0..rank - 1).rev() {
                    off += (r % out_shape[d]) * src[d];
                    r /= out_shape[d];
                }
                off
            };
            let per = rows.div_ceil(worker_threads(n));
            std::thread::scope(|scope| {
                for (t, chunk) in out.chunks_mut(per * inner).enumerate() {
                    let (src, offset) = (&src, &offset);
                    scope.spawn(move || {
                        for (i, row) in chunk.chunks_mut(inner).enumerate() {
                            let base = offset(t * per + i);
                            let step = src[rank - 1];
                            for (k, x) in row.iter_mut().enumerate() {
                                *x = v[base + k * step];
                            }
                        }
                    });
                }
            });
            out
        }
        match self {
            TensorData::F32(v) => TensorData::F32(run(v, shape, perm)),
            TensorData::F16(v) => TensorData::F16(run(v, shape, perm)),
            TensorData::BF16(v) => TensorData::BF16(run(v, shape, perm)),
            TensorData::F64(v) => TensorData::F64(run(v, shape, perm)),
            TensorData::I64(v) => TensorData::I64(run(v, shape, perm)),
            TensorData::I32(v) => TensorData::I32(run(v, shape, perm)),
            TensorData::I8(v) => TensorData::I8(run(v, shape, perm)),
            TensorData::U8(v) => TensorData::U8(run(v, shape, perm)),
            TensorData::Bool(v) => TensorData::Bool(run(v, shape, perm)),
        }
    }

    /// Builds data of an integer or bool `dtype` from i64 values (wrapping as a C cast does);
    /// float dtypes convert through f64.
    pub fn from_i64(dtype: DType, v: &[i64]) -> TensorData {
        match dtype {
            DType::I64 => TensorData::I64(v.to_vec()),
            DType::I32 => TensorData::I32(v.iter().map(|&x| x as i32).collect()),
            DType::I8 => TensorData::I8(v.iter().map(|&x| x as i8).collect()),
            DType::U8 => TensorData::U8(v.iter().map(|&x| x as u8).collect()),
            DType::Bool => TensorData::Bool(v.iter().map(|&x| x != 0).collect()),
            _ => TensorData::from_f64(dtype, &v.iter().map(|&x| x as f64).collect::<Vec<_>>()),
        }
    }
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: TensorData) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape, data }
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn scalar_i64(v: i64) -> Tensor {
        Tensor::new(vec![], TensorData::I64(vec![v]))
    }

    pub fn from_i64s(shape: Vec<usize>, v: Vec<i64>) -> Tensor {
        Tensor::new(shape, TensorData::I64(v))
    }

    pub fn from_f32s(shape: Vec<usize>, v: Vec<f32>) -> Tensor {
        Tensor::new(shape, TensorData::F32(v))
    }
}

/// Threads for a pass over `n` elements of weight data: one below 1M elements (spawning costs
/// more than it saves), else the machine's cores, at most 16.
pub(crate) fn worker_threads(n: usize) -> usize {
    if n < 1 << 20 {
        return 1;
    }
    std::thread::available_parallelism().map_or(1, |t| t.get()).min(16)
}

/// Little-endian elements of `N` bytes each, decoded across threads for large data (a model's
/// weights arrive this way at session creation: the SD 1.5 UNet's are 3.4 GB, and writing the
/// copy's fresh pages is most of the cost, which threads share).
fn decode<T: Copy + Default + Send, const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> T + Copy + Send) -> Vec<T> {
    let n = bytes.len() / N;
    let mut out = vec![T::default(); n];
    let per = n.div_ceil(worker_threads(n)).max(1);
    std::thread::scope(|scope| {
        for (o, b) in out.chunks_mut(per).zip(bytes.chunks(per * N)) {
            scope.spawn(move || {
                for (x, c) in o.iter_mut().zip(b.chunks_exact(N)) {
                    *x = f(c.try_into().expect("chunks_exact gives N bytes"));
                }
            });
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_picks_flat_indices_in_order() {
        let d = TensorData::F16(vec![f16::from_f32(1.0), f16::from_f32(2.5), f16::from_f32(-3.0)]);
        assert_eq!(d.take(&[2, 0, 2]).to_f64_vec(), vec![-3.0, 1.0, -3.0]);
        assert_eq!(TensorData::Bool(vec![true, false]).take(&[1]), TensorData::Bool(vec![false]));
    }

    #[test]
    fn from_i64_wraps_like_a_cast() {
        assert_eq!(TensorData::from_i64(DType::I32, &[1 << 33 | 5, -2]), TensorData::I32(vec![5, -2]));
        assert_eq!(TensorData::from_i64(DType::Bool, &[0, 7]), TensorData::Bool(vec![false, true]));
        assert_eq!(TensorData::from_i64(DType::F32, &[3]), TensorData::F32(vec![3.0]));
    }

    /// Large data decodes across threads: the same elements, in order, as a plain sequential
    /// decode, for every width (and a length that does not split evenly).
    #[test]
    fn large_data_round_trips_through_le_bytes() {
        let n = (1 << 20) * 3 + 17;
        let f: Vec<f32> = (0..n).map(|i| (i as f32).sin() * 1e3).collect();
        let data = TensorData::F32(f.clone());
        assert_eq!(TensorData::from_le_bytes(DType::F32, &data.to_le_bytes()), Some(data));
        let h = TensorData::F16(f.iter().map(|&x| f16::from_f32(x)).collect());
        assert_eq!(TensorData::from_le_bytes(DType::F16, &h.to_le_bytes()), Some(h));
        let l = TensorData::I64((0..n as i64).map(|i| i * 7919 - 123_456_789).collect());
        assert_eq!(TensorData::from_le_bytes(DType::I64, &l.to_le_bytes()), Some(l));
        assert_eq!(TensorData::from_le_bytes(DType::F32, &[0u8; 7]), None);
    }
}
