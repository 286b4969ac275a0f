//! ONNX multidirectional broadcasting: the result shape, and a row iterator that walks the output
//! in contiguous runs with each input's offset and inner stride, so inner loops stay simple.

use quilt_rewrites::TensorData;

use super::data::same_type;

/// The broadcast of `shapes` (numpy rules), or an error naming the two sizes that disagree.
pub(crate) fn broadcast_shape(shapes: &[&[usize]]) -> Result<Vec<usize>, String> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[off + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                let list: Vec<String> = shapes.iter().map(|s| format!("{s:?}")).collect();
                return Err(format!("shapes {} cannot be broadcast (axis {}: {} vs {})", list.join(", "), off + i, *o, d));
            }
        }
    }
    Ok(out)
}

/// The walk over an output shape for `N` inputs broadcast to it.
pub(crate) struct Rows<const N: usize> {
    /// Coalesced outer dims (all but the innermost), with each input's stride per dim.
    outer_dims: Vec<usize>,
    outer_strides: Vec<[usize; N]>,
    /// Length of each contiguous run in the output and each input's stride within it (0 or 1).
    pub inner_len: usize,
    pub inner_strides: [usize; N],
    numel: usize,
}

impl<const N: usize> Rows<N> {
    /// Plans the walk; each input shape must broadcast to `out` (checked: error otherwise).
    pub fn new(out: &[usize], inputs: [&[usize]; N]) -> Result<Rows<N>, String> {
        let rank = out.len();
        // Per out dim: the size and each input's element stride (0 where it is broadcast).
        let mut dims: Vec<(usize, [usize; N])> = Vec::with_capacity(rank);
        let mut in_strides = vec![[0usize; N]; rank];
        for (k, s) in inputs.iter().enumerate() {
            if s.len() > rank {
                return Err(format!("shape {s:?} has more axes than the result {out:?}"));
            }
            let off = rank - s.len();
            let mut stride = 1usize;
            for i in (0..s.len()).rev() {
                let d = s[i];
                if d == out[off + i] {
                    in_strides[off + i][k] = if d == 1 { 0 } else { stride };
                } else if d == 1 {
                    in_strides[off + i][k] = 0;
                } else {
                    return Err(format!("shape {s:?} cannot be broadcast to {out:?}"));
                }
                stride *= d;
            }
        }
        for (i, &d) in out.iter().enumerate() {
            if d != 1 {
                dims.push((d, in_strides[i]));
            }
        }
        // Merge a dim into the next inner one where every input is contiguous across the pair.
        let mut merged: Vec<(usize, [usize; N])> = Vec::with_capacity(dims.len());
        for (d, s) in dims.into_iter().rev() {
            if let Some(last) = merged.last_mut() {
                if (0..N).all(|k| s[k] == last.1[k] * last.0) {
                    let st = last.1;
                    *last = (last.0 * d, st);
                    continue;
                }
            }
            merged.push((d, s));
        }
        merged.reverse();
        let numel = out.iter().product();
        let (inner_len, inner_strides) = merged.pop().unwrap_or((1, [0; N]));
        let outer_dims = merged.iter().map(|m| m.0).collect();
        let outer_strides = merged.iter().map(|m| m.1).collect();
        Ok(Rows { outer_dims, outer_strides, inner_len, inner_strides, numel })
    }

    /// Calls `row(out_offset, input_offsets)` for each contiguous run, in output order.
    pub fn for_each(&self, mut row: impl FnMut(usize, [usize; N])) {
        if self.numel == 0 {
            return;
        }
        let mut counter = vec![0usize; self.outer_dims.len()];
        let mut offs = [0usize; N];
        let mut out = 0usize;
        loop {
            row(out, offs);
            out += self.inner_len;
            // Advance the outer counter like an odometer.
            let mut d = self.outer_dims.len();
            loop {
                if d == 0 {
                    return;
                }
                d -= 1;
                counter[d] += 1;
                for (o, s) in offs.iter_mut().zip(self.outer_strides[d]) {
                    *o += s;
                }
                if counter[d] < self.outer_dims[d] {
                    break;
                }
                for (o, s) in offs.iter_mut().zip(self.outer_strides[d]) {
                    *o -= s * self.outer_dims[d];
                }
                counter[d] = 0;
            }
        }
    }
}

/// `f(a, b)` elementwise with `a` and `b` broadcast to `out`.
pub(crate) fn map2<A: Copy, B: Copy, R>(
    a: &[A],
    a_shape: &[usize],
    b: &[B],
    b_shape: &[usize],
    out: &[usize],
    f: impl Fn(A, B) -> R,
) -> Result<Vec<R>, String> {
    let rows = Rows::new(out, [a_shape, b_shape])?;
    let mut res = Vec::with_capacity(out.iter().product());
    let n = rows.inner_len;
    match rows.inner_strides {
        [1, 1] => rows.for_each(|_, [oa, ob]| res.extend(a[oa..oa + n].iter().zip(&b[ob..ob + n]).map(|(&x, &y)| f(x, y)))),
        [1, 0] => rows.for_each(|_, [oa, ob]| {
            let y = b[ob];
            res.extend(a[oa..oa + n].iter().map(|&x| f(x, y)))
        }),
        [0, 1] => rows.for_each(|_, [oa, ob]| {
            let x = a[oa];
            res.extend(b[ob..ob + n].iter().map(|&y| f(x, y)))
        }),
        [sa, sb] => rows.for_each(|_, [oa, ob]| res.extend((0..n).map(|i| f(a[oa + i * sa], b[ob + i * sb])))),
    }
    Ok(res)
}

/// `f(c, x, y)` elementwise with all three broadcast to `out`.
pub(crate) fn map3<C: Copy, A: Copy, B: Copy, R>(
    (c, c_shape): (&[C], &[usize]),
    (a, a_shape): (&[A], &[usize]),
    (b, b_shape): (&[B], &[usize]),
    out: &[usize],
    f: impl Fn(C, A, B) -> R,
) -> Result<Vec<R>, String> {
    let rows = Rows::new(out, [c_shape, a_shape, b_shape])?;
    let mut res = Vec::with_capacity(out.iter().product());
    let n = rows.inner_len;
    let [sc, sa, sb] = rows.inner_strides;
    rows.for_each(|_, [oc, oa, ob]| res.extend((0..n).map(|i| f(c[oc + i * sc], a[oa + i * sa], b[ob + i * sb]))));
    Ok(res)
}

/// `data` (of shape `shape`) broadcast to `out`, in its own dtype.
pub(crate) fn broadcast_to(data: &TensorData, shape: &[usize], out: &[usize]) -> Result<TensorData, String> {
    let rows = Rows::new(out, [shape])?;
    let n = rows.inner_len;
    let [s] = rows.inner_strides;
    Ok(same_type!(data, v => {
        let mut res = Vec::with_capacity(out.iter().product());
        if s == 1 {
            rows.for_each(|_, [o]| res.extend_from_slice(&v[o..o + n]));
        } else {
            rows.for_each(|_, [o]| res.extend(std::iter::repeat_n(v[o], n)));
        }
        res
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive reference: index each input by the output coordinate, clamping broadcast axes.
    fn naive2(a: &[i64], ash: &[usize], b: &[i64], bsh: &[usize], out: &[usize]) -> Vec<i64> {
        let n: usize = out.iter().product();
        let at = |s: &[usize], v: &[i64], idx: &[usize]| {
            let off = out.len() - s.len();
            let mut flat = 0;
            for (i, &d) in s.iter().enumerate() {
                flat = flat * d + if d == 1 { 0 } else { idx[off + i] };
            }
            v[flat]
        };
        (0..n)
            .map(|mut f| {
                let mut idx = vec![0; out.len()];
                for i in (0..out.len()).rev() {
                    idx[i] = f % out[i];
                    f /= out[i];
                }
                at(ash, a, &idx) * 1000 + at(bsh, b, &idx)
            })
            .collect()
    }

    #[test]
    fn map2_matches_naive_indexing() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[2, 3, 4], &[2, 3, 4]),
            (&[2, 3, 4], &[4]),
            (&[2, 1, 4], &[3, 1]),
            (&[1], &[2, 3]),
            (&[], &[3, 2]),
            (&[5, 1, 1], &[1, 3, 2]),
            (&[2, 3, 1, 4], &[1, 3, 5, 1]),
        ];
        for (ash, bsh) in cases {
            let out = broadcast_shape(&[ash, bsh]).unwrap();
            let a: Vec<i64> = (0..ash.iter().product::<usize>() as i64).map(|x| x * 7 + 1).collect();
            let b: Vec<i64> = (0..bsh.iter().product::<usize>() as i64).map(|x| x * 3 + 2).collect();
            let got = map2(&a, ash, &b, bsh, &out, |x, y| x * 1000 + y).unwrap();
            assert_eq!(got, naive2(&a, ash, &b, bsh, &out), "{ash:?} {bsh:?}");
        }
    }

    #[test]
    fn incompatible_shapes_are_an_error() {
        let e = broadcast_shape(&[&[2, 3], &[4]]).unwrap_err();
        assert!(e.contains("3 vs 4"), "{e}");
        assert!(Rows::new(&[2, 3], [&[2, 4]]).is_err());
    }
}
