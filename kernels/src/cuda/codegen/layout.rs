//! Data movement: strided copies (Transpose, Slice, Concat, Split) and index-mapping kernels
//! (Tile, Pad, Trilu, Gather, GatherElements, GatherND, Resize). One thread per output element.
//! Copies move raw elements by size, so they serve every dtype.

use quilt_rewrites::ir::{PadMode, ResizeMode, SymScale};
use quilt_rewrites::{DType, Op};

use super::stitched::index;
use crate::cuda::device::PARAM_SLOTS;
use super::{contiguous_strides, decompose, numel, vector_len, Action, Arg, CType, Kernel, LaunchPlan, ParamList, StepCode, StepShapes, Types, Work};

/// An unsigned type as wide as `dtype` (copies do not look at values).
fn raw_type(dtype: DType) -> &'static str {
    match dtype.size_bytes() {
        1 => "unsigned char",
        2 => "unsigned short",
        4 => "unsigned int",
        _ => "unsigned long long",
    }
}

/// `out[ob + Σ c·os] = in[ib + Σ c·is]` over an index space of `rank` dims. Params: n, dims,
/// in strides, out strides, in base, out base (64-bit path); then the narrow data of the two
/// operands and the vector flag (`stitched::index`): below 2^31 elements the copy walks
/// collapsed axes with 32-bit indices, and moves 16 bytes per thread where both sides are
/// contiguous along the innermost collapsed axis.
fn copy_kernel(name: &str, dtype: DType, rank: usize) -> Kernel {
    let t = raw_type(dtype);
    let (ib, ob) = (1 + 3 * rank, 2 + 3 * rank);
    let narrow_at = copy_narrow_at(rank);
    let vlen = copy_vlen(dtype);
    let names = ["oi".to_string(), "oo".to_string()];
    let mut body = super::stitched::text::helpers();
    body += &format!("extern \"C\" __global__ void {name}(const QParams p, {t}* __restrict__ out, const {t}* __restrict__ in) {{\n");
    body += &format!("  const unsigned nax_ = q_lo(p.v[{narrow_at}]);\n");
    body += &format!("  const bool vec_ = nax_ != 0u && p.v[{}] != 0 && (((unsigned long long)out | (unsigned long long)in) & 15ull) == 0ull;\n", narrow_at + index::slots(rank, 2));
    body += &format!("  if (vec_) {{\n    const unsigned n_ = (unsigned)p.v[0] / {vlen}u;\n    for (unsigned w_ = blockIdx.x * blockDim.x + threadIdx.x; w_ < n_; w_ += gridDim.x * blockDim.x) {{\n      const unsigned i = w_ * {vlen}u;\n");
    body += &index::offsets(rank, narrow_at, &names, "      ");
    body += &format!("      *reinterpret_cast<QVec<{t}, {vlen}>*>(out + (unsigned)p.v[{ob}] + oo) = *reinterpret_cast<const QVec<{t}, {vlen}>*>(in + (unsigned)p.v[{ib}] + oi);\n    }}\n");
    body += "  } else if (nax_ != 0u) {\n    const unsigned n_ = (unsigned)p.v[0];\n    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n_; i += gridDim.x * blockDim.x) {\n";
    body += &index::offsets(rank, narrow_at, &names, "      ");
    body += &format!("      out[(unsigned)p.v[{ob}] + oo] = in[(unsigned)p.v[{ib}] + oi];\n    }}\n  }} else {{\n  Q_LOOP(p.v[0]) {{\n");
    body += &decompose(rank, 1, &[("oi", 1 + rank), ("oo", 1 + 2 * rank)]);
    body += &format!("    out[p.v[{ob}] + oo] = in[p.v[{ib}] + oi];\n  }}\n  }}\n}}\n");
    Kernel { name: name.to_string(), body }
}

fn copy_narrow_at(rank: usize) -> usize {
    3 + 3 * rank
}

/// Elements per 16-byte vector of `dtype`.
fn copy_vlen(dtype: DType) -> usize {
    (16 / dtype.size_bytes()).max(1)
}

#[allow(clippy::too_many_arguments)]
fn copy_launch(dims: &[usize], in_strides: &[i64], out_strides: &[i64], in_base: i64, out_base: i64, vlen: usize, out: Arg, input: Arg) -> Result<Option<Action>, String> {
    let n = numel(dims);
    if n == 0 {
        return Ok(None);
    }
    let mut p = ParamList::default();
    p.push(n as i64);
    p.extend(dims.iter().map(|&d| d as i64));
    p.extend(in_strides.iter().copied());
    p.extend(out_strides.iter().copied());
    p.push(in_base);
    p.push(out_base);
    let (d, st): (Vec<usize>, Vec<Vec<i64>>) = if dims.is_empty() { (vec![1], vec![vec![0], vec![0]]) } else { (dims.to_vec(), vec![in_strides.to_vec(), out_strides.to_vec()]) };
    let bases_fit = in_base >= 0 && out_base >= 0 && in_base + out_base <= index::NARROW_MAX as i64;
    let mut vector = false;
    match index::narrow(&d, &st).filter(|(_, c)| bases_fit && c_fits(c, in_base.max(out_base)) && !crate::cuda::env::on("QUILT_INDEX64")) {
        Some((data, c)) => {
            let v = vlen as i64;
            vector = vlen > 1
                && !crate::cuda::env::on("QUILT_NO_VECTOR")
                && c.strides.iter().all(|s| s[0] == 1)
                && index::vectorizable(&c, vlen)
                && in_base % v == 0
                && out_base % v == 0;
            p.extend(data);
        }
        None => {
            p.extend(index::wide(dims.len(), 2));
        }
    }
    p.push(vector as i64);
    let threads = if vector { n / vlen } else { n };
    Ok(Some(Action::Launch { kernel: 0, work: Work::Elements(threads as u64), params: p.finish()?, args: vec![out, input] }))
}

/// Whether every offset plus `base` stays below 2^31.
fn c_fits(c: &index::Collapsed, base: i64) -> bool {
    c.strides.iter().all(|s| base + s.iter().zip(&c.dims).map(|(&st, &d)| st * (d as i64 - 1)).sum::<i64>() <= index::NARROW_MAX as i64)
}

pub struct CopyCode {
    op: Op,
    kernels: Vec<Kernel>,
    /// Elements per 16-byte vector.
    vlen: usize,
}

impl CopyCode {
    pub fn new(op: &Op, t: &Types) -> Result<CopyCode, String> {
        let dtype = t.outs[0];
        if t.ins.iter().flatten().any(|&d| d != dtype) || t.outs.iter().any(|&d| d != dtype) {
            return Err("inputs and outputs must share one dtype".into());
        }
        let rank = t.out_ranks[0];
        if copy_narrow_at(rank) + index::slots(rank, 2) + 1 > PARAM_SLOTS {
            return Err(format!("a copy of rank {rank} needs more than {PARAM_SLOTS} kernel params"));
        }
        Ok(CopyCode { op: op.clone(), kernels: vec![copy_kernel(&format!("{}_copy", t.prefix), dtype, rank)], vlen: copy_vlen(dtype) })
    }
}

impl StepCode for CopyCode {
    fn kernels(&self) -> &[Kernel] {
        &self.kernels
    }

    fn plan(&self, s: &StepShapes) -> Result<LaunchPlan, String> {
        let mut plan = LaunchPlan::default();
        let vlen = self.vlen;
        let mut push = |a: Option<Action>| plan.actions.extend(a);
        match &self.op {
            Op::Transpose { perm } => {
                let (x, out) = (s.input(0)?, s.outs[0]);
                let xs = contiguous_strides(x);
                if perm.len() != x.len() || perm.iter().any(|&a| a >= x.len()) {
                    return Err(format!("perm {perm:?} does not fit input {x:?}"));
                }
                let is: Vec<i64> = perm.iter().map(|&a| xs[a]).collect();
                push(copy_launch(out, &is, &contiguous_strides(out), 0, 0, vlen, Arg::Out(0), Arg::In(0))?);
            }
            Op::Slice { axes, starts, steps } => {
                let (x, out) = (s.input(0)?, s.outs[0]);
                let mut is = contiguous_strides(x);
                let mut base = 0i64;
                for ((&a, st), &step) in axes.iter().zip(starts).zip(steps) {
                    let start = s.bindings.eval(st)?;
                    if a >= x.len() {
                        return Err(format!("slice axis {a} out of range for {x:?}"));
                    }
                    if out[a] > 0 && (start < 0 || start >= x[a] as i64 || start + (out[a] as i64 - 1) * step < 0 || start + (out[a] as i64 - 1) * step >= x[a] as i64) {
                        return Err(format!("slice of axis {a} (start {start}, step {step}, {} elements) leaves the input {x:?}", out[a]));
                    }
                    base += start * is[a];
                    is[a] *= step;
                }
                push(copy_launch(out, &is, &contiguous_strides(out), base, 0, vlen, Arg::Out(0), Arg::In(0))?);
            }
            Op::Concat { axis } => {
                let out = s.outs[0];
                let os = contiguous_strides(out);
                let mut offset = 0i64;
                for k in 0..s.ins.len() {
                    let x = s.input(k)?;
                    push(copy_launch(x, &contiguous_strides(x), &os, 0, offset * os[*axis], vlen, Arg::Out(0), Arg::In(k))?);
                    offset += x[*axis] as i64;
                }
                if offset != out[*axis] as i64 {
                    return Err(format!("inputs add up to {offset} along axis {axis}, the output has {}", out[*axis]));
                }
            }
            Op::Split { axis } => {
                let x = s.input(0)?;
                let xs = contiguous_strides(x);
                let mut offset = 0i64;
                for (k, out) in s.outs.iter().enumerate() {
                    push(copy_launch(out, &xs, &contiguous_strides(out), offset * xs[*axis], 0, vlen, Arg::Out(k), Arg::In(0))?);
                    offset += out[*axis] as i64;
                }
                if offset > x[*axis] as i64 {
                    return Err(format!("pieces add up to {offset} along axis {axis}, the input has {}", x[*axis]));
                }
            }
            other => return Err(format!("{} is not a copy", other.name())),
        }
        Ok(plan)
    }
}

/// Kernels that compute each output element's source index (or mask) from its coordinates.
pub struct IndexCode {
    op: Op,
    kernels: Vec<Kernel>,
    rank: usize,
    /// Elements per thread of the nearest Resize's vector kernel (kernel 1); 0: none.
    vector: usize,
}

impl IndexCode {
    pub fn new(op: &Op, t: &Types) -> Result<IndexCode, String> {
        let name = format!("{}_idx", t.prefix);
        let dtype = t.outs[0];
        let raw = raw_type(dtype);
        let r = t.out_ranks[0];
        let head = |extra: &str| format!("extern \"C\" __global__ void {name}(const QParams p, {raw}* __restrict__ out, const {raw}* __restrict__ in{extra}) {{\n  Q_LOOP(p.v[0]) {{\n");
        let idx_type = |k: usize| -> Result<&'static str, String> {
            match t.ins.get(k).copied().flatten() {
                Some(DType::I64) => Ok("long long"),
                Some(DType::I32) => Ok("int"),
                other => Err(format!("indices must be i32 or i64, got {other:?}")),
            }
        };
        let body = match op {
            // params: n, out dims r, in dims r, in strides r
            Op::Tile => {
                let mut b = head("");
                b += &decompose(r, 1, &[]);
                b += "    long long o = 0;\n";
                for d in 0..r {
                    b += &format!("    o += (c{d} % p.v[{}]) * p.v[{}];\n", 1 + r + d, 1 + 2 * r + d);
                }
                b + "    out[i] = in[o];\n  }\n}\n"
            }
            // params: n, out dims r, in dims r, in strides r, begins r, value bits
            Op::Pad { mode, .. } => {
                let ct = CType::of(dtype);
                let st = ct.storage();
                let mut b = format!("extern \"C\" __global__ void {name}(const QParams p, {st}* __restrict__ out, const {st}* __restrict__ in) {{\n  Q_LOOP(p.v[0]) {{\n");
                b += &decompose(r, 1, &[]);
                b += "    long long o = 0; bool inside = true;\n";
                for d in 0..r {
                    let (n_, s_, beg) = (1 + r + d, 1 + 2 * r + d, 1 + 3 * r + d);
                    b += &format!("    {{ long long x = c{d} - p.v[{beg}]; long long n_ = p.v[{n_}];\n");
                    b += match mode {
                        PadMode::Constant => "      if (x < 0 || x >= n_) inside = false;\n",
                        PadMode::Edge => "      x = x < 0 ? 0 : (x >= n_ ? n_ - 1 : x);\n",
                        PadMode::Reflect => "      if (n_ == 1) x = 0; else { long long per = 2 * (n_ - 1); x %= per; if (x < 0) x += per; if (x >= n_) x = per - x; }\n",
                    };
                    b += &format!("      o += x * p.v[{s_}]; }}\n");
                }
                b += &format!("    out[i] = inside ? in[o] : {};\n  }}\n}}\n", ct.store(&format!("q_pd(p.v[{}])", 1 + 4 * r)));
                b
            }
            // params: n, rows, cols, k
            Op::Trilu { upper, .. } => {
                let cmp = if *upper { ">=" } else { "<=" };
                head("") + &format!("    long long col = i % p.v[2]; long long row = (i / p.v[2]) % p.v[1];\n    out[i] = (col - row {cmp} p.v[3]) ? in[i] : ({raw})0;\n  }}\n}}\n")
            }
            // params: n, inner, I, A
            Op::Gather { .. } => {
                let it = idx_type(1)?;
                head(&format!(", const {it}* __restrict__ idx, int* err"))
                    + "    long long inner = i % p.v[1]; long long t = i / p.v[1]; long long ii = t % p.v[2]; long long o = t / p.v[2];\n\
    long long x = idx[ii]; if (x < 0) x += p.v[3];\n\
    if (x < 0 || x >= p.v[3]) { atomicExch(err, 1); x = 0; }\n\
    out[i] = in[(o * p.v[3] + x) * p.v[1] + inner];\n  }\n}\n"
            }
            // params: n, idx dims r, data strides r (axis stride 0), axis stride, A
            Op::GatherElements { .. } => {
                let it = idx_type(1)?;
                let mut b = head(&format!(", const {it}* __restrict__ idx, int* err"));
                b += &decompose(r, 1, &[("o", 1 + r)]);
                b += &format!("    long long x = idx[i]; long long A = p.v[{}]; if (x < 0) x += A;\n    if (x < 0 || x >= A) {{ atomicExch(err, 1); x = 0; }}\n    out[i] = in[o + x * p.v[{}]];\n  }}\n}}\n", 2 + 2 * r, 1 + 2 * r);
                b
            }
            // params: n, slice, Q, batch_stride, k, then k data strides, then k data dims
            Op::GatherND { .. } => {
                let it = idx_type(1)?;
                head(&format!(", const {it}* __restrict__ idx, int* err"))
                    + "    long long inner = i % p.v[1]; long long t = i / p.v[1]; long long b = t / p.v[2]; long long k = p.v[4];\n\
    long long o = b * p.v[3];\n\
    for (long long j = 0; j < k; ++j) {\n\
      long long x = idx[t * k + j]; long long n_ = p.v[5 + k + j]; if (x < 0) x += n_;\n\
      if (x < 0 || x >= n_) { atomicExch(err, 1); x = 0; }\n\
      o += x * p.v[5 + j];\n    }\n\
    out[i] = in[o + inner];\n  }\n}\n"
            }
            // params: n, out dims r, in strides r, table offsets r, taps T; tables idx (i64), w (f32)
            Op::Resize { mode, .. } => {
                let ct = CType::of(dtype);
                let st = ct.storage();
                let mut b = format!("extern \"C\" __global__ void {name}(const QParams p, {st}* __restrict__ out, const {st}* __restrict__ in, const long long* __restrict__ tidx, const float* __restrict__ tw) {{\n  Q_LOOP(p.v[0]) {{\n");
                b += &decompose(r, 1, &[]);
                let taps = 1 + 3 * r;
                if *mode == ResizeMode::Nearest {
                    b += "    long long o = 0;\n";
                    for d in 0..r {
                        b += &format!("    o += tidx[p.v[{}] + c{d}] * p.v[{}];\n", 1 + 2 * r + d, 1 + r + d);
                    }
                    b += "    out[i] = in[o];\n  }\n}\n";
                } else {
                    if !ct.is_float() {
                        return Err(format!("{mode:?} Resize of {dtype}"));
                    }
                    b += "    float acc = 0.0f;\n";
                    for d in 0..r {
                        b += &format!("    for (long long t{d} = 0; t{d} < p.v[{taps}]; ++t{d}) {{\n      long long e{d} = p.v[{}] + c{d} * p.v[{taps}] + t{d}; float w{d} = tw[e{d}]{}; if (w{d} == 0.0f) continue;\n      long long o{d} = {}tidx[e{d}] * p.v[{}];\n", 1 + 2 * r + d, if d > 0 { format!(" * w{}", d - 1) } else { String::new() }, if d > 0 { format!("o{} + ", d - 1) } else { String::new() }, 1 + r + d);
                    }
                    if r == 0 {
                        b += "    acc = 1.0f * 0;\n";
                    } else {
                        b += &format!("      acc += w{} * {};\n", r - 1, ct.load(&format!("in[o{}]", r - 1)));
                    }
                    for _ in 0..r {
                        b += "    }\n";
                    }
                    b += &format!("    out[i] = {};\n  }}\n}}\n", ct.store("acc"));
                }
                b
            }
            other => return Err(format!("{} has no index kernel", other.name())),
        };
        let mut kernels = vec![Kernel { name: name.clone(), body }];
        let mut vector = 0;
        if let Op::Resize { mode: ResizeMode::Nearest, .. } = op {
            kernels.push(nearest_vector_kernel(&name, dtype, r));
            vector = vector_len(dtype);
        }
        Ok(IndexCode { op: op.clone(), kernels, rank: r, vector })
    }
}

/// Kernel 1 of a nearest Resize whose last axis is not resized (SD's 2× upsampling of
/// channels-last activations): each thread copies `V` consecutive elements of that axis as one
/// 16-byte vector (element copies when a pointer is not 16-byte aligned), its source found with
/// 32-bit coordinates once per vector. Kernel 0 takes 64-bit div/mod per axis per element, which
/// made the UNet's three upsamplers ~10× slower than their memory traffic (session 8's trace).
/// Same params as kernel 0.
fn nearest_vector_kernel(name: &str, dtype: DType, r: usize) -> Kernel {
    let raw = raw_type(dtype);
    let v = vector_len(dtype);
    let mut b = format!(
        "struct alignas(16) QRzVec {{ {raw} x[{v}]; }};\nextern \"C\" __global__ void {name}_v(const QParams p, {raw}* __restrict__ out, const {raw}* __restrict__ in, const long long* __restrict__ tidx, const float* __restrict__ tw) {{\n  (void)tw;\n  const bool al_ = (((unsigned long long)out | (unsigned long long)in) & 15ull) == 0ull;\n  const unsigned nv = (unsigned)(p.v[0] / {v});\n  for (unsigned w = blockIdx.x * blockDim.x + threadIdx.x; w < nv; w += gridDim.x * blockDim.x) {{\n    unsigned r_ = w * {v}u, o = 0;\n"
    );
    for d in (0..r).rev() {
        b += &format!(
            "    {{ const unsigned n_ = (unsigned)p.v[{}], c_ = r_ % n_; r_ /= n_; o += (unsigned)tidx[p.v[{}] + c_] * (unsigned)p.v[{}]; }}\n",
            1 + d,
            1 + 2 * r + d,
            1 + r + d
        );
    }
    b += &format!("    (void)r_;\n    if (al_) *reinterpret_cast<QRzVec*>(out + w * {v}u) = *reinterpret_cast<const QRzVec*>(in + o);\n    else {{\n#pragma unroll\n      for (int e = 0; e < {v}; ++e) out[w * {v}u + e] = in[o + e];\n    }}\n  }}\n}}\n");
    Kernel { name: format!("{name}_v"), body: b }
}

impl StepCode for IndexCode {
    fn kernels(&self) -> &[Kernel] {
        &self.kernels
    }

    fn plan(&self, s: &StepShapes) -> Result<LaunchPlan, String> {
        let out = s.outs[0];
        let x = s.input(0)?;
        let n = numel(out);
        let r = self.rank;
        let mut plan = LaunchPlan::default();
        let mut p = ParamList::default();
        p.push(n as i64);
        let mut args = vec![Arg::Out(0), Arg::In(0)];
        let dims = |v: &[usize]| v.iter().map(|&d| d as i64).collect::<Vec<_>>();
        // A Resize whose last axis is not resized (its table is the identity).
        let mut last_axis_copied = false;
        match &self.op {
            Op::Tile => {
                if x.len() != r || x.iter().zip(out).any(|(&i, &o)| if i == 0 { o != 0 } else { o % i != 0 }) {
                    return Err(format!("cannot tile {x:?} to {out:?}"));
                }
                p.extend(dims(out));
                p.extend(dims(x));
                p.extend(contiguous_strides(x));
            }
            Op::Pad { pads, value, .. } => {
                if pads.len() != 2 * r || x.len() != r {
                    return Err(format!("{} pads for rank {r}", pads.len()));
                }
                p.extend(dims(out));
                p.extend(dims(x));
                p.extend(contiguous_strides(x));
                for d in 0..r {
                    let begin = s.bindings.eval(&pads[d])?;
                    let end = s.bindings.eval(&pads[r + d])?;
                    if x[d] as i64 + begin + end != out[d] as i64 {
                        return Err(format!("axis {d}: {} + pads {begin}, {end} is not the output's {}", x[d], out[d]));
                    }
                    if x[d] == 0 && out[d] > 0 && !matches!(self.op, Op::Pad { mode: PadMode::Constant, .. }) {
                        return Err(format!("axis {d} is empty: nothing to reflect or extend"));
                    }
                    p.push(begin);
                }
                p.push_f64(*value);
            }
            Op::Trilu { k, .. } => {
                if out.len() < 2 {
                    return Err("Trilu needs rank >= 2".into());
                }
                p.push(out[out.len() - 2] as i64);
                p.push(out[out.len() - 1] as i64);
                p.push(*k);
            }
            Op::Gather { axis } => {
                let idx = s.input(1)?;
                p.push(numel(&x[axis + 1..]) as i64);
                p.push(numel(idx) as i64);
                p.push(x[*axis] as i64);
                args.extend([Arg::In(1), Arg::ErrFlag]);
            }
            Op::GatherElements { axis } => {
                let idx = s.input(1)?;
                if idx.len() != r || x.len() != r || idx != out {
                    return Err(format!("indices {idx:?}, data {x:?}, output {out:?} do not fit"));
                }
                let mut ds = contiguous_strides(x);
                let axis_stride = ds[*axis];
                ds[*axis] = 0;
                p.extend(dims(idx));
                p.extend(ds);
                p.push(axis_stride);
                p.push(x[*axis] as i64);
                args.extend([Arg::In(1), Arg::ErrFlag]);
            }
            Op::GatherND { batch_dims } => {
                let idx = s.input(1)?;
                let b = *batch_dims;
                let k = *idx.last().ok_or("GatherND indices of rank 0")?;
                if k > x.len() - b || idx.len() < b + 1 || x.len() < b {
                    return Err(format!("GatherND: indices {idx:?} do not fit data {x:?}"));
                }
                let xs = contiguous_strides(x);
                p.push(numel(&x[b + k..]) as i64);
                p.push(numel(&idx[b..idx.len() - 1]) as i64);
                p.push(numel(&x[b..]) as i64);
                p.push(k as i64);
                p.extend(xs[b..b + k].iter().copied());
                p.extend(x[b..b + k].iter().map(|&d| d as i64));
                args.extend([Arg::In(1), Arg::ErrFlag]);
            }
            Op::Resize { mode, coord, nearest, cubic_coeff_a, exclude_outside, scales } => {
                if x.len() != r || scales.len() != r {
                    return Err(format!("input {x:?}, output {out:?} and {} scales differ in rank", scales.len()));
                }
                let taps = match mode {
                    ResizeMode::Nearest => 1,
                    ResizeMode::Linear => 2,
                    ResizeMode::Cubic => 4,
                };
                let mut tidx: Vec<i64> = Vec::new();
                let mut tw: Vec<f32> = Vec::new();
                let mut offsets = Vec::with_capacity(r);
                for d in 0..r {
                    let scale = match &scales[d] {
                        SymScale::Factor(f) => *f as f64,
                        SymScale::Ratio { out: o, input } => {
                            let (o, i) = (s.bindings.eval(o)?, s.bindings.eval(input)?);
                            if i == 0 {
                                return Err(format!("axis {d}: scale {o}/{i} divides by zero"));
                            }
                            o as f64 / i as f64
                        }
                    };
                    if !(scale > 0.0 && scale.is_finite()) {
                        return Err(format!("axis {d}: scale {scale} must be positive"));
                    }
                    if x[d] == 0 && out[d] != 0 {
                        return Err(format!("axis {d} is empty and cannot be resized to {}", out[d]));
                    }
                    offsets.push(tidx.len() as i64);
                    let unchanged = x[d] == out[d] && scale == 1.0;
                    last_axis_copied = unchanged && d + 1 == r;
                    for o in 0..out[d] {
                        let entries: Vec<(i64, f64)> = if unchanged {
                            let mut v = vec![(o as i64, 1.0)];
                            v.resize(taps, (o as i64, 0.0));
                            v
                        } else {
                            let c = crate::resize_math::source_coord(*coord, o, scale, x[d], out[d]);
                            match mode {
                                ResizeMode::Nearest => vec![(crate::resize_math::nearest_index(c, *nearest, x[d]) as i64, 1.0)],
                                _ => crate::resize_math::taps(*mode, *cubic_coeff_a, *exclude_outside, c, x[d]).into_iter().map(|(i, w)| (i as i64, w)).collect(),
                            }
                        };
                        for (i, w) in entries {
                            tidx.push(i);
                            tw.push(w as f32);
                        }
                    }
                }
                p.extend(dims(out));
                p.extend(contiguous_strides(x));
                p.extend(offsets);
                p.push(taps as i64);
                plan.tables.push(tidx.iter().flat_map(|v| v.to_le_bytes()).collect());
                plan.tables.push(tw.iter().flat_map(|v| v.to_le_bytes()).collect());
                args.extend([Arg::Table(0), Arg::Table(1)]);
            }
            other => return Err(format!("{} has no index kernel", other.name())),
        }
        // Nearest with the last axis copied whole: kernel 1, one 16-byte vector per thread.
        let v = self.vector;
        let vector = v > 0 && last_axis_copied && out[r - 1].is_multiple_of(v) && n < (1usize << 31) && numel(x) < (1usize << 31);
        if n > 0 {
            let (kernel, threads) = if vector { (1, n / v) } else { (0, n) };
            plan.actions.push(Action::Launch { kernel, work: Work::Elements(threads as u64), params: p.finish()?, args });
        }
        Ok(plan)
    }
}



#[cfg(test)]
mod tests {
    use quilt_rewrites::ir::{CoordMode, NearestMode, SymScale};

    use super::*;

    /// (kernel, threads) of a nearest 2× Resize of `x` on axes 1 and 2, or of `scales`.
    fn resize_launch(dtype: DType, x: &[usize], scales: [f32; 4]) -> (usize, u64) {
        let op = Op::Resize { mode: ResizeMode::Nearest, coord: CoordMode::Asymmetric, nearest: NearestMode::Floor, cubic_coeff_a: -0.75, exclude_outside: false, scales: scales.iter().map(|&f| SymScale::Factor(f)).collect() };
        let t = Types { ins: vec![Some(dtype)], in_ranks: vec![4], outs: vec![dtype], out_ranks: vec![4], prefix: "q".into() };
        let code = IndexCode::new(&op, &t).unwrap();
        let out: Vec<usize> = x.iter().zip(scales).map(|(&d, f)| (d as f32 * f) as usize).collect();
        crate::cuda::codegen::single_launch(&code, &[x], &out)
    }

    /// SD's upsampler on channels-last activations (1280 channels at 8² → 16², batch 2) copies
    /// 8 f16 channels per thread; a resized last axis or an odd channel count goes element-wise.
    #[test]
    fn nearest_resize_copies_whole_vectors_of_an_unresized_last_axis() {
        let up = [1.0, 2.0, 2.0, 1.0];
        assert_eq!(resize_launch(DType::F16, &[2, 8, 8, 1280], up), (1, 2 * 16 * 16 * 1280 / 8));
        assert_eq!(resize_launch(DType::F32, &[2, 8, 8, 1280], up), (1, 2 * 16 * 16 * 1280 / 4));
        assert_eq!(resize_launch(DType::F16, &[1, 3, 4, 6], up), (0, 6 * 8 * 6));
        assert_eq!(resize_launch(DType::F16, &[2, 1280, 8, 8], [1.0, 1.0, 2.0, 2.0]), (0, 2 * 1280 * 16 * 16));
    }
}
