//! Gather, GatherElements and GatherND; every index is checked (negative counts from the end).

use quilt_rewrites::Tensor;

use super::data::{elems, gather_map, load_indices, outer_axis_inner, strides, with_elem, Elem};
use super::StepCtx;

/// Index `i` into an axis of size `n`, with negative values counting from the end.
fn normalize(i: i64, n: usize, what: &str) -> Result<usize, String> {
    let j = if i < 0 { i + n as i64 } else { i };
    if j < 0 || j >= n as i64 {
        return Err(format!("{what} index {i} is out of range for size {n}"));
    }
    Ok(j as usize)
}

pub(crate) fn gather(cx: &StepCtx, axis: usize) -> Result<Tensor, String> {
    let (data, indices) = (cx.input(0)?, cx.input(1)?);
    if axis >= data.shape.len() {
        return Err(format!("axis {axis} is out of range for data shape {:?}", data.shape));
    }
    let (outer, n, inner) = outer_axis_inner(&data.shape, axis);
    let idx: Vec<usize> = load_indices(indices)?.iter().map(|&i| normalize(i, n, "Gather")).collect::<Result<_, _>>()?;
    let mut shape = data.shape[..axis].to_vec();
    shape.extend(&indices.shape);
    shape.extend(&data.shape[axis + 1..]);
    let dtype = data.dtype();
    let out = with_elem!(dtype, T => {
        let v = elems::<T>(data, "data", dtype)?;
        let mut out: Vec<T> = Vec::with_capacity(shape.iter().product());
        for o in 0..outer {
            for &i in &idx {
                let from = (o * n + i) * inner;
                out.extend_from_slice(&v[from..from + inner]);
            }
        }
        T::wrap(out)
    });
    Ok(Tensor { shape, data: out })
}

pub(crate) fn gather_elements(cx: &StepCtx, axis: usize) -> Result<Tensor, String> {
    let (data, indices) = (cx.input(0)?, cx.input(1)?);
    let rank = data.shape.len();
    if axis >= rank || indices.shape.len() != rank {
        return Err(format!("data {:?} and indices {:?} must have one rank above axis {axis}", data.shape, indices.shape));
    }
    if let Some(d) = (0..rank).find(|&d| d != axis && indices.shape[d] > data.shape[d]) {
        return Err(format!("indices axis {d} is {}, larger than data's {}", indices.shape[d], data.shape[d]));
    }
    let idx = load_indices(indices)?;
    let ds = strides(&data.shape);
    let mut map = Vec::with_capacity(idx.len());
    let mut pos = vec![0usize; rank];
    for &i in idx.iter() {
        let mut off = normalize(i, data.shape[axis], "GatherElements")? * ds[axis];
        for d in (0..rank).filter(|&d| d != axis) {
            off += pos[d] * ds[d];
        }
        map.push(off);
        for d in (0..rank).rev() {
            pos[d] += 1;
            if pos[d] < indices.shape[d] {
                break;
            }
            pos[d] = 0;
        }
    }
    Ok(Tensor { shape: indices.shape.clone(), data: gather_map(&data.data, &map, 0.0) })
}

pub(crate) fn gather_nd(cx: &StepCtx, batch_dims: usize) -> Result<Tensor, String> {
    let (data, indices) = (cx.input(0)?, cx.input(1)?);
    let (r, q) = (data.shape.len(), indices.shape.len());
    let k = indices.shape.last().copied().unwrap_or(0);
    if q < 1 || r < 1 || batch_dims >= q.min(r) || batch_dims + k > r {
        return Err(format!("data {:?} and indices {:?} do not fit batch_dims {batch_dims}", data.shape, indices.shape));
    }
    if data.shape[..batch_dims] != indices.shape[..batch_dims] {
        return Err(format!("batch axes differ: data {:?}, indices {:?}", data.shape, indices.shape));
    }
    let batches: usize = data.shape[..batch_dims].iter().product();
    let slab: usize = data.shape[batch_dims..].iter().product();
    let piece: usize = data.shape[batch_dims + k..].iter().product();
    let ds = strides(&data.shape[batch_dims..]);
    let idx = load_indices(indices)?;
    let tuples_per_batch: usize = indices.shape[batch_dims..q - 1].iter().product();
    let mut map = Vec::with_capacity(batches * tuples_per_batch * piece);
    for (t, tuple) in idx.chunks(k.max(1)).enumerate().take(batches * tuples_per_batch) {
        let b = t / tuples_per_batch.max(1);
        let mut off = b * slab;
        for (j, &i) in tuple.iter().enumerate().take(k) {
            off += normalize(i, data.shape[batch_dims + j], "GatherND")? * ds[j];
        }
        map.extend(off..off + piece);
    }
    // k == 0 would select whole slabs; each index "tuple" is empty then.
    if k == 0 {
        map = (0..batches * tuples_per_batch).flat_map(|t| {
            let b = t / tuples_per_batch.max(1);
            b * slab..b * slab + piece
        }).collect();
    }
    let mut shape = indices.shape[..q - 1].to_vec();
    shape.extend(&data.shape[batch_dims + k..]);
    Ok(Tensor { shape, data: gather_map(&data.data, &map, 0.0) })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{i64s, run_one};
    use quilt_rewrites::{DType, Op, Tensor};

    fn iota(shape: &[usize]) -> Tensor {
        Tensor::from_i64s(shape.to_vec(), (0..shape.iter().product::<usize>() as i64).collect())
    }

    #[test]
    fn gather_negative_and_out_of_range() {
        let data = iota(&[3, 4]);
        let idx = Tensor::from_i64s(vec![2], vec![-1, 0]);
        let got = run_one(Op::Gather { axis: 1 }, &[&data, &idx], DType::I64, &[3, 2]).unwrap();
        assert_eq!(i64s(&got), vec![3, 0, 7, 4, 11, 8]);
        let bad = Tensor::from_i64s(vec![1], vec![3]);
        let e = run_one(Op::Gather { axis: 0 }, &[&data, &bad], DType::I64, &[1, 4]).unwrap_err().to_string();
        assert!(e.contains("node 'node' (Gather)") && e.contains("index 3 is out of range for size 3"), "{e}");
    }

    #[test]
    fn gather_elements_and_nd() {
        let data = iota(&[2, 3]);
        let idx = Tensor::from_i64s(vec![2, 2], vec![2, 0, -1, 1]);
        let got = run_one(Op::GatherElements { axis: 1 }, &[&data, &idx], DType::I64, &[2, 2]).unwrap();
        assert_eq!(i64s(&got), vec![2, 0, 5, 4]);
        // batch_dims = 1: data [2, 3, 2], indices [2, 1, 1] pick row idx of each batch.
        let data = iota(&[2, 3, 2]);
        let idx = Tensor::from_i64s(vec![2, 1, 1], vec![2, 0]);
        let got = run_one(Op::GatherND { batch_dims: 1 }, &[&data, &idx], DType::I64, &[2, 1, 2]).unwrap();
        assert_eq!(i64s(&got), vec![4, 5, 6, 7]);
        let idx = Tensor::from_i64s(vec![2, 2], vec![0, 1, 1, 2]);
        let got = run_one(Op::GatherND { batch_dims: 0 }, &[&data, &idx], DType::I64, &[2, 2]).unwrap();
        assert_eq!(i64s(&got), vec![2, 3, 10, 11]);
    }
}
