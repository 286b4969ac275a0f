//! Typed views of tensor data for the kernels: floats are computed in f32 (f16/bf16 are widened
//! on load and rounded on store) or f64, integers in i64 (narrowed with wrap-around on store).

use std::borrow::Cow;
use std::fmt::Debug;

use half::{bf16, f16};
use quilt_rewrites::{DType, Tensor, TensorData};

/// The float types kernels compute in: f32 (for f32/f16/bf16 storage) and f64.
pub(crate) trait Real:
    num_traits::Float + Default + Debug + Send + Sync + 'static + std::iter::Sum + std::ops::AddAssign
{
    /// The data widened to `Self`, borrowed when it is already stored as `Self`.
    fn load(d: &TensorData) -> Option<Cow<'_, [Self]>>;
    /// Stores computed values as `dtype` (rounding to f16/bf16 where needed).
    fn store(dtype: DType, v: Vec<Self>) -> TensorData;
    fn of(v: f64) -> Self;
    fn erf_of(self) -> Self;
    fn round_half_even(self) -> Self;
    /// `c = alpha * a @ b + beta * c` on strided matrices (`beta == 0` ignores c's old values).
    ///
    /// # Safety
    /// Every strided element of a (m×k), b (k×n) and c (m×n) must lie inside its allocation.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

impl Real for f32 {
    fn load(d: &TensorData) -> Option<Cow<'_, [f32]>> {
        match d {
            TensorData::F32(v) => Some(Cow::Borrowed(v)),
            TensorData::F16(v) => Some(Cow::Owned(v.iter().map(|x| x.to_f32()).collect())),
            TensorData::BF16(v) => Some(Cow::Owned(v.iter().map(|x| x.to_f32()).collect())),
            _ => None,
        }
    }
    fn store(dtype: DType, v: Vec<f32>) -> TensorData {
        match dtype {
            DType::F16 => TensorData::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
            DType::BF16 => TensorData::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
            _ => TensorData::F32(v),
        }
    }
    fn of(v: f64) -> f32 {
        v as f32
    }
    fn erf_of(self) -> f32 {
        libm::erff(self)
    }
    fn round_half_even(self) -> f32 {
        self.round_ties_even()
    }
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: f32,
        a: *const f32,
        rsa: isize,
        csa: isize,
        b: *const f32,
        rsb: isize,
        csb: isize,
        beta: f32,
        c: *mut f32,
        rsc: isize,
        csc: isize,
    ) {
        matrixmultiply::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
    }
}

impl Real for f64 {
    fn load(d: &TensorData) -> Option<Cow<'_, [f64]>> {
        match d {
            TensorData::F64(v) => Some(Cow::Borrowed(v)),
            _ => None,
        }
    }
    fn store(_dtype: DType, v: Vec<f64>) -> TensorData {
        TensorData::F64(v)
    }
    fn of(v: f64) -> f64 {
        v
    }
    fn erf_of(self) -> f64 {
        libm::erf(self)
    }
    fn round_half_even(self) -> f64 {
        self.round_ties_even()
    }
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: f64,
        a: *const f64,
        rsa: isize,
        csa: isize,
        b: *const f64,
        rsb: isize,
        csb: isize,
        beta: f64,
        c: *mut f64,
        rsc: isize,
        csc: isize,
    ) {
        matrixmultiply::dgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
    }
}

/// Runs `$body` with `$F` the compute type of float dtype `$dtype` (f64 for f64, f32 for
/// f32/f16/bf16); other dtypes give an `Err(String)`.
macro_rules! with_real {
    ($dtype:expr, $F:ident => $body:expr) => {
        match $dtype {
            quilt_rewrites::DType::F64 => {
                #[allow(dead_code)]
                type $F = f64;
                $body
            }
            quilt_rewrites::DType::F32 | quilt_rewrites::DType::F16 | quilt_rewrites::DType::BF16 => {
                #[allow(dead_code)]
                type $F = f32;
                $body
            }
            other => Err(format!("{other} is not a floating-point type")),
        }
    };
}
pub(crate) use with_real;

/// Applies `$body` (an expression over the slice `$v` producing a `Vec` of the same element type)
/// to whichever variant `$data` is, keeping the variant: for ops that only move elements.
macro_rules! same_type {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            quilt_rewrites::TensorData::F32($v) => quilt_rewrites::TensorData::F32($body),
            quilt_rewrites::TensorData::F16($v) => quilt_rewrites::TensorData::F16($body),
            quilt_rewrites::TensorData::BF16($v) => quilt_rewrites::TensorData::BF16($body),
            quilt_rewrites::TensorData::F64($v) => quilt_rewrites::TensorData::F64($body),
            quilt_rewrites::TensorData::I64($v) => quilt_rewrites::TensorData::I64($body),
            quilt_rewrites::TensorData::I32($v) => quilt_rewrites::TensorData::I32($body),
            quilt_rewrites::TensorData::I8($v) => quilt_rewrites::TensorData::I8($body),
            quilt_rewrites::TensorData::U8($v) => quilt_rewrites::TensorData::U8($body),
            quilt_rewrites::TensorData::Bool($v) => quilt_rewrites::TensorData::Bool($body),
        }
    };
}
pub(crate) use same_type;

/// Loads float data as `F`, with an error naming what was found instead.
pub(crate) fn load_real<'a, F: Real>(t: &'a Tensor, what: &str) -> Result<Cow<'a, [F]>, String> {
    F::load(&t.data).ok_or_else(|| format!("{what} has dtype {}, expected a float type", t.dtype()))
}

/// Integer or bool data widened to i64 (borrowed for i64).
pub(crate) fn load_i64<'a>(t: &'a Tensor, what: &str) -> Result<Cow<'a, [i64]>, String> {
    match &t.data {
        TensorData::I64(v) => Ok(Cow::Borrowed(v)),
        d => d.to_i64_vec().map(Cow::Owned).ok_or_else(|| format!("{what} has dtype {}, expected an integer type", t.dtype())),
    }
}

/// Stores i64 results as integer `dtype`, wrapping like the narrower C type would.
pub(crate) fn store_i64(dtype: DType, v: Vec<i64>) -> TensorData {
    match dtype {
        DType::I32 => TensorData::I32(v.iter().map(|&x| x as i32).collect()),
        DType::I8 => TensorData::I8(v.iter().map(|&x| x as i8).collect()),
        DType::U8 => TensorData::U8(v.iter().map(|&x| x as u8).collect()),
        DType::Bool => TensorData::Bool(v.iter().map(|&x| x != 0).collect()),
        _ => TensorData::I64(v),
    }
}

/// Index data (Gather, GatherElements, GatherND): i32 or i64.
pub(crate) fn load_indices<'a>(t: &'a Tensor) -> Result<Cow<'a, [i64]>, String> {
    match &t.data {
        TensorData::I64(v) => Ok(Cow::Borrowed(v)),
        TensorData::I32(v) => Ok(Cow::Owned(v.iter().map(|&x| x as i64).collect())),
        _ => Err(format!("indices have dtype {}, expected i32 or i64", t.dtype())),
    }
}

/// One element of `dtype` holding `value` (converted as Cast would), for fills and pads.
pub(crate) fn scalar_of(dtype: DType, value: f64) -> TensorData {
    match dtype {
        DType::F32 => TensorData::F32(vec![value as f32]),
        DType::F16 => TensorData::F16(vec![f16::from_f64(value)]),
        DType::BF16 => TensorData::BF16(vec![bf16::from_f64(value)]),
        DType::F64 => TensorData::F64(vec![value]),
        DType::I64 => TensorData::I64(vec![value as i64]),
        DType::I32 => TensorData::I32(vec![value as i64 as i32]),
        DType::I8 => TensorData::I8(vec![value as i64 as i8]),
        DType::U8 => TensorData::U8(vec![value as i64 as u8]),
        DType::Bool => TensorData::Bool(vec![value != 0.0]),
    }
}

/// The storage element types, for kernels that move elements without computing on them.
pub(crate) trait Elem: Copy + Send + Sync + 'static {
    fn slice(d: &TensorData) -> Option<&[Self]>;
    fn wrap(v: Vec<Self>) -> TensorData;
    /// `value` converted as Cast would (for fill and pad values).
    fn from_f64(value: f64) -> Self;
}

macro_rules! impl_elem {
    ($($t:ty => $variant:ident),*) => {$(
        impl Elem for $t {
            fn slice(d: &TensorData) -> Option<&[$t]> {
                match d {
                    TensorData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn wrap(v: Vec<$t>) -> TensorData {
                TensorData::$variant(v)
            }
            fn from_f64(value: f64) -> $t {
                match scalar_of(DType::$variant, value) {
                    TensorData::$variant(v) => v[0],
                    _ => unreachable!("scalar_of keeps the dtype"),
                }
            }
        }
    )*};
}
impl_elem!(f32 => F32, f16 => F16, bf16 => BF16, f64 => F64, i64 => I64, i32 => I32, i8 => I8, u8 => U8, bool => Bool);

/// Runs `$body` with `$T` the storage element type of `$dtype`.
macro_rules! with_elem {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            quilt_rewrites::DType::F32 => { type $T = f32; $body }
            quilt_rewrites::DType::F16 => { type $T = half::f16; $body }
            quilt_rewrites::DType::BF16 => { type $T = half::bf16; $body }
            quilt_rewrites::DType::F64 => { type $T = f64; $body }
            quilt_rewrites::DType::I64 => { type $T = i64; $body }
            quilt_rewrites::DType::I32 => { type $T = i32; $body }
            quilt_rewrites::DType::I8 => { type $T = i8; $body }
            quilt_rewrites::DType::U8 => { type $T = u8; $body }
            quilt_rewrites::DType::Bool => { type $T = bool; $body }
        }
    };
}
pub(crate) use with_elem;

/// The elements of `t` as `T`, with an error naming `what` if the dtype differs.
pub(crate) fn elems<'a, T: Elem>(t: &'a Tensor, what: &str, dtype: DType) -> Result<&'a [T], String> {
    T::slice(&t.data).ok_or_else(|| format!("{what} has dtype {}, expected {dtype}", t.dtype()))
}

/// Builds data by copying `src[map[i]]`, or `fill` where `map[i] == usize::MAX`: the core of
/// the gathers (every other index in `map` must be `< src.len()`).
pub(crate) fn gather_map(src: &TensorData, map: &[usize], fill: f64) -> TensorData {
    with_elem!(src.dtype(), T => {
        let v = T::slice(src).expect("dtype matches its own data");
        let f = T::from_f64(fill);
        T::wrap(map.iter().map(|&i| if i == usize::MAX { f } else { v[i] }).collect())
    })
}

/// Gathers along every axis at once: output element (o0, o1, …) is input
/// (idx[0][o0], idx[1][o1], …), or `fill` where any index is `usize::MAX`. The output shape is
/// the lengths of the index lists; every other index must be within the input's axis.
pub(crate) fn gather_axes<T: Copy>(v: &[T], in_shape: &[usize], idx: &[Vec<usize>], fill: T) -> Vec<T> {
    let out_shape: Vec<usize> = idx.iter().map(|l| l.len()).collect();
    let numel: usize = out_shape.iter().product();
    let mut out = Vec::with_capacity(numel);
    if numel == 0 {
        return out;
    }
    let Some((last_idx, outer_idx)) = idx.split_last() else {
        out.push(v[0]);
        return out;
    };
    let st = strides(in_shape);
    let last_stride = st[st.len() - 1];
    let mut pos = vec![0usize; outer_idx.len()];
    loop {
        let mut base = Some(0usize);
        for (d, l) in outer_idx.iter().enumerate() {
            let i = l[pos[d]];
            base = base.and_then(|b| if i == usize::MAX { None } else { Some(b + i * st[d]) });
        }
        match base {
            None => out.extend(std::iter::repeat_n(fill, last_idx.len())),
            Some(b) => out.extend(last_idx.iter().map(|&i| if i == usize::MAX { fill } else { v[b + i * last_stride] })),
        }
        let mut d = outer_idx.len();
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            pos[d] += 1;
            if pos[d] < out_shape[d] {
                break;
            }
            pos[d] = 0;
        }
    }
}

/// Row-major strides of `shape`.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Splits `shape` around `axis` into (product before, size at, product after).
pub(crate) fn outer_axis_inner(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}
