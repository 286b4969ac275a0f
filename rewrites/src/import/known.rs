//! Values known at import time: constant tensors, and small integer tensors whose elements are
//! symbolic dims (what `Shape` produces). Data-movement ops on them are folded by computing, for
//! each output element, the flat index of the input element it copies.

use std::sync::Arc;

use crate::dtype::DType;
use crate::ir::TensorType;
use crate::sym::SymDim;
use crate::tensor::{Tensor, TensorData};

use super::ctx::sym_shape;

/// Folding limit: known values with more elements are not folded further (weights stay weights).
pub(crate) const SMALL: usize = 1024;

#[derive(Clone, Debug)]
pub(crate) enum Known {
    Tensor(Arc<Tensor>),
    /// An integer tensor with at least one symbolic element.
    Sym { dtype: DType, shape: Vec<usize>, vals: Vec<SymDim> },
}

impl Known {
    pub fn from_tensor(t: Tensor) -> Known {
        Known::Tensor(Arc::new(t))
    }

    /// An integer/bool value from its elements; constant when every element is.
    pub fn from_ints(dtype: DType, shape: Vec<usize>, vals: Vec<SymDim>) -> Known {
        let consts: Option<Vec<i64>> = vals.iter().map(|v| v.as_const()).collect();
        match consts {
            Some(c) => Known::from_tensor(Tensor::new(shape, TensorData::from_i64(dtype, &c))),
            None => Known::Sym { dtype, shape, vals },
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Known::Tensor(t) => t.dtype(),
            Known::Sym { dtype, .. } => *dtype,
        }
    }

    pub fn shape(&self) -> &[usize] {
        match self {
            Known::Tensor(t) => &t.shape,
            Known::Sym { shape, .. } => shape,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape().iter().product()
    }

    pub fn is_small(&self) -> bool {
        self.numel() <= SMALL
    }

    pub fn ty(&self) -> TensorType {
        TensorType::new(self.dtype(), sym_shape(self.shape()))
    }

    pub fn tensor(&self) -> Option<&Arc<Tensor>> {
        match self {
            Known::Tensor(t) => Some(t),
            Known::Sym { .. } => None,
        }
    }

    /// The elements of an integer or bool value (bools as 0/1); `None` for floats.
    pub fn ints(&self) -> Option<Vec<SymDim>> {
        match self {
            Known::Tensor(t) => t.data.to_i64_vec().map(|v| v.into_iter().map(SymDim::from).collect()),
            Known::Sym { vals, .. } => Some(vals.clone()),
        }
    }

    /// The elements as f64, for constant numeric values.
    pub fn floats(&self) -> Option<Vec<f64>> {
        self.tensor().map(|t| t.data.to_f64_vec())
    }

    /// The elements at flat indices `idx`, as a value of shape `shape`.
    pub fn take(&self, shape: Vec<usize>, idx: &[usize]) -> Known {
        match self {
            Known::Tensor(t) => Known::from_tensor(Tensor::new(shape, t.data.take(idx))),
            Known::Sym { dtype, vals, .. } => Known::from_ints(*dtype, shape, idx.iter().map(|&i| vals[i].clone()).collect()),
        }
    }

    pub fn reshaped(&self, shape: Vec<usize>) -> Known {
        let all: Vec<usize> = (0..self.numel()).collect();
        self.take(shape, &all)
    }

    /// The elements of several values of one dtype, one after the other (the input of a
    /// folded Concat/Where, indexed with offsets).
    pub fn chain(parts: &[&Known]) -> Option<Known> {
        let dtype = parts.first()?.dtype();
        let n: usize = parts.iter().map(|p| p.numel()).sum();
        if dtype.is_float() {
            let mut v = Vec::with_capacity(n);
            for p in parts {
                v.extend(p.floats()?);
            }
            Some(Known::from_tensor(Tensor::new(vec![n], TensorData::from_f64(dtype, &v))))
        } else {
            let mut v = Vec::with_capacity(n);
            for p in parts {
                v.extend(p.ints()?);
            }
            Some(Known::from_ints(dtype, vec![n], v))
        }
    }
}

/// Row-major strides of a shape.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// For every multi-index of `shape` in row-major order, `f(index)`.
pub(crate) fn map_indices<T>(shape: &[usize], mut f: impl FnMut(&[usize]) -> T) -> Vec<T> {
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..n {
        out.push(f(&idx));
        for ax in (0..shape.len()).rev() {
            idx[ax] += 1;
            if idx[ax] < shape[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
    out
}

/// For each element of the broadcast output `out`, the flat index into an input of shape `shape`.
pub(crate) fn broadcast_indices(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let st = strides(shape);
    let off = out.len() - shape.len();
    map_indices(out, |ix| {
        (0..shape.len()).map(|a| if shape[a] == 1 { 0 } else { ix[a + off] * st[a] }).sum()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_keeps_symbols_and_canonicalises_constants() {
        let k = Known::from_ints(DType::I64, vec![3], vec![SymDim::sym("B"), 4i64.into(), 8i64.into()]);
        assert!(matches!(k, Known::Sym { .. }));
        let tail = k.take(vec![2], &[1, 2]);
        assert_eq!(tail.tensor().unwrap().data, TensorData::I64(vec![4, 8]));
        let head = k.take(vec![], &[0]);
        assert_eq!(head.ints().unwrap(), vec![SymDim::sym("B")]);
    }

    #[test]
    fn broadcast_indices_repeat_size_one_axes() {
        assert_eq!(broadcast_indices(&[2, 1], &[2, 3]), vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(broadcast_indices(&[3], &[2, 3]), vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(strides(&[2, 3, 4]), vec![12, 4, 1]);
    }
}
