//! Scaled dot-product attention (`Op::Attention`): `softmax(scale · q·kᵀ + mask) · v`.
//!
//! Two routes (chosen when the step is generated, `AttentionCode::with_head_dims`):
//! - **Fused** (never materialises the N×M scores): q, k, v of one 16-bit float dtype (f16 or
//!   bf16) with head dims up to `MAX_HEAD_DIM` run on the tensor-core flash-attention kernel
//!   (`flash_attention.rs`), one variant per head-dim bucket. What the GEMM route cannot take
//!   (mixed dtypes) runs on the plain kernel below.
//! - **GEMMs** (`attention_gemm.rs`): S = scale·q·kᵀ and O = P·V through cuBLAS with a row
//!   softmax between them, for static head dims above `MAX_HEAD_DIM` (the SD VAE's single
//!   512-wide head: 32 ms on the wide plain kernel, well under a millisecond as GEMMs on the H100,
//!   tests/bench/results/2026-11-25-wide-attention-h100.md) and for f32 q, k, v whatever the head
//!   dim (cuBLAS f32 products are far faster than the plain kernel's shared-memory dot products).
//!   A head dim the plan leaves symbolic compiles the fused kernels and the GEMM route's softmax,
//!   and takes the GEMMs at run time when the head is wider than the fused kernels.
//! - **cuDNN** (`crate::cuda::sdpa`): a flash-route step whose problems have at least
//!   `gemm::CUDNN_MIN_SCORES` scores per head (SD's 64² self-attention; measured faster there,
//!   slower below) and no mask runs on cuDNN's fused SDPA engines, with the flash launch kept as
//!   the fallback for shapes cuDNN has no engine for (`Overrides::cudnn_min_scores`).
//!
//! The plain kernel: one thread block per (problem, tile of `TQ` query rows), where a problem is
//! one batch entry (and head, for packed heads). The block keeps its query tile, a `TQ`×`Dv` f32
//! accumulator and each row's running max and denominator in shared memory, and walks the keys in
//! tiles of `TK` rows: scores of the tile, then the online-softmax update (rescale the accumulator
//! by `exp(old max − new max)`, add `exp(score − new max) · v`), then the next tile. Head dims up
//! to `MAX_HEAD_DIM` (SD's largest is 160); up to `WIDE_MAX_HEAD_DIM` with smaller tiles when the
//! GEMM route is not taken. Scores are plain dot products over shared memory.

#[path = "attention_gemm.rs"]
pub mod gemm;

use quilt_rewrites::plan::OpStep;
use quilt_rewrites::ir::AttentionColumns;
use quilt_rewrites::{DType, Op, Plan};

use self::gemm::{GemmAttention, Overrides, Route};
use crate::cuda::sdpa::SdpaCall;
use super::flash_attention::{self, FlashVariant};
use super::{broadcast_strides, Action, Arg, CType, Kernel, LaunchPlan, ParamList, StepCode, StepShapes, Types, Work};

/// Query rows per block.
const TQ: usize = 16;
/// Key rows per shared-memory tile.
const TK: usize = 16;
/// The largest q/k and v head dims the shared-memory tiles hold.
pub const MAX_HEAD_DIM: usize = 160;
/// Head dims above `MAX_HEAD_DIM` that the GEMM route does not take (mixed dtypes, or the fused
/// route forced) run the plain kernel with smaller tiles (`WIDE_TQ` × `WIDE_TK`) that fit 48 KB of
/// shared memory at this width: correct but slow.
pub const WIDE_MAX_HEAD_DIM: usize = 512;
const WIDE_TQ: usize = 2;
const WIDE_TK: usize = 8;

/// The step's head dims (q/k, v) when the plan fixes them (constant last dims), else `None`.
pub fn static_head_dims(plan: &Plan, step: &OpStep) -> Option<(usize, usize)> {
    let Op::Attention { heads, columns, .. } = &step.op else { return None };
    let last = |i: usize| -> Option<usize> {
        if let Some(c) = columns {
            return Some(c.width[i]);
        }
        let b = (*step.inputs.get(i)?)?;
        let d = plan.buffers[b].ty.shape.last()?.as_const()?;
        usize::try_from(d).ok()
    };
    let (d, dv) = (last(0)?, last(2)?);
    match heads {
        None => Some((d, dv)),
        Some(h) if *h > 0 && d % h == 0 && dv % h == 0 => Some((d / h, dv / h)),
        Some(_) => None,
    }
}

pub struct AttentionCode {
    /// The fused kernels, then (last) the GEMM route's softmax kernel.
    kernels: Vec<Kernel>,
    scale: f32,
    heads: Option<usize>,
    columns: Option<AttentionColumns>,
    /// Bytes per element of q, k and v.
    in_bytes: [usize; 3],
    /// q, k, v and the output's one dtype when they share one (cuDNN's SDPA needs that).
    same_dtype: Option<DType>,
    /// Flash-kernel shapes with at least this many scores per head go to cuDNN's SDPA engines
    /// first (`Overrides::cudnn_min_scores`).
    cudnn_min_scores: usize,
    has_mask: bool,
    /// The fused route, when compiled.
    fused: Option<Fused>,
    /// The GEMM route, when compiled: taken for every shape when `fused` is `None`, else for
    /// head dims wider than the fused kernels take.
    gemm: Option<GemmAttention>,
}

/// What the fused kernels were compiled for.
struct Fused {
    /// The head-dim bucket of each kernel when they are flash-attention variants (f16/bf16).
    flash_buckets: Option<Vec<usize>>,
    /// Per bucket (same order), the block shape of its small-problem variant and that kernel's
    /// index, when it has one (`Overrides::small`, `default_small`).
    small: Vec<Option<(flash_attention::BlockShape, usize)>>,
    /// The plain kernel's query rows per block (unused by the flash kernel).
    plain_rows: usize,
    /// The largest q/k and v head dim the compiled kernels take.
    max_head_dim: usize,
}

impl AttentionCode {
    /// Head dims unknown: f16/bf16 get a flash variant for every bucket.
    pub fn new(op: &Op, t: &Types) -> Result<AttentionCode, String> {
        AttentionCode::with_head_dims(op, t, None)
    }

    /// `head_dims` (q/k, v), when the plan fixes them, picks the one flash variant to compile.
    pub fn with_head_dims(op: &Op, t: &Types, head_dims: Option<(usize, usize)>) -> Result<AttentionCode, String> {
        let Op::Attention { scale, heads, columns } = op else { return Err(format!("{} is not Attention", op.name())) };
        if columns.is_some() && heads.is_none() {
            return Err("column ranges of q, k, v need packed heads".into());
        }
        let rank = t.in_ranks[0];
        if rank < 2 || t.in_ranks[1] != rank || t.in_ranks[2] != rank {
            return Err(format!("q, k, v need one rank ≥ 2, got ranks {:?}", &t.in_ranks[..3]));
        }
        if heads.is_some() && rank != 3 {
            return Err(format!("packed-head attention needs rank-3 q, k, v, got rank {rank}"));
        }
        let cts: Vec<CType> = (0..3).map(|i| t.input(i).map(CType::of)).collect::<Result<_, _>>()?;
        let out = CType::of(t.outs[0]);
        for c in cts.iter().chain([&out]) {
            // The f32 shared-memory tiles would silently round f64 data.
            if !c.is_float() || c.dtype == DType::F64 {
                return Err(format!("attention of {} has no CUDA kernel (f32, f16 and bf16 do)", c.dtype));
            }
        }
        let mask = match t.ins.get(3).copied().flatten() {
            Some(d) if d.is_float() && d != DType::F64 => Some(CType::of(d)),
            Some(d) => return Err(format!("attention mask of {d} has no CUDA kernel")),
            None => None,
        };
        // Rank of the problem index space: the leading dims, or [B, H] for packed heads.
        let lead = if heads.is_some() { 2 } else { rank - 2 };
        if let (Some(_), Some(&mr)) = (mask, t.in_ranks.get(3)) {
            if mr > lead + 2 {
                return Err(format!("attention mask of rank {mr} for scores of rank {}", lead + 2));
            }
        }
        let overrides = gemm::overrides();
        let gemm_ok = gemm::supports(cts[0].dtype, cts[1].dtype, cts[2].dtype, out.dtype, mask.map(|m| m.dtype));
        let wide = head_dims.is_some_and(|(d, dv)| d.max(dv) > MAX_HEAD_DIM);
        // (fused route compiled, GEMM route compiled)
        let (with_fused, with_gemm) = match overrides.route {
            Route::Fused => (true, false),
            Route::Gemm if !gemm_ok => return Err(format!("the GEMM attention route needs one dtype of f32/f16/bf16 for q, k, v and the output, got {:?} -> {}", &t.ins[..3], out.dtype)),
            Route::Gemm => (false, true),
            // f32 always, and static head dims wider than the fused kernels: GEMMs only.
            Route::Auto if gemm_ok && (wide || cts[0].dtype == DType::F32) => (false, true),
            // Symbolic head dims: the GEMMs as the fallback for wide heads at run time.
            Route::Auto => (true, gemm_ok && head_dims.is_none()),
        };
        let (mut kernels, fused) = if with_fused {
            let (k, f) = Self::fused_kernels(&cts, out, mask, lead, head_dims, &t.prefix, overrides)?;
            (k, Some(f))
        } else {
            (Vec::new(), None)
        };
        let gemm = with_gemm.then(|| {
            let (g, kernel) = GemmAttention::new(cts[0].dtype, mask.map(|m| m.dtype), lead, *scale, &t.prefix, overrides.scratch_cap);
            kernels.push(kernel);
            g
        });
        let in_bytes = std::array::from_fn(|i| cts[i].dtype.size_bytes());
        let same_dtype = cts.iter().all(|c| c.dtype == out.dtype).then_some(out.dtype);
        Ok(AttentionCode { kernels, scale: *scale, heads: *heads, columns: *columns, in_bytes, same_dtype, cudnn_min_scores: overrides.cudnn_min_scores, has_mask: mask.is_some(), fused, gemm })
    }

    /// The flash variants (f16/bf16 up to `MAX_HEAD_DIM`) or the plain kernel (wide tiles for
    /// static head dims above `MAX_HEAD_DIM`).
    fn fused_kernels(cts: &[CType], out: CType, mask: Option<CType>, lead: usize, head_dims: Option<(usize, usize)>, prefix: &str, overrides: Overrides) -> Result<(Vec<Kernel>, Fused), String> {
        // Static head dims past the flash and plain kernels' tiles take the wide plain kernel.
        let wide = head_dims.is_some_and(|(d, dv)| d.max(dv) > MAX_HEAD_DIM);
        if let Some((d, dv)) = head_dims.filter(|&(d, dv)| d.max(dv) > WIDE_MAX_HEAD_DIM) {
            return Err(format!("head dims {d}/{dv} exceed the CUDA attention kernels' {WIDE_MAX_HEAD_DIM}"));
        }
        if !wide && flash_attention::supports(cts[0].dtype, cts[1].dtype, cts[2].dtype) {
            let buckets = match head_dims {
                Some((d, dv)) => {
                    let b = flash_attention::bucket(d.max(dv))
                        .ok_or_else(|| format!("head dims {d}/{dv} exceed the CUDA attention kernel's {MAX_HEAD_DIM}"))?;
                    vec![b]
                }
                None => flash_attention::BUCKETS.to_vec(),
            };
            let variant = |bucket| FlashVariant { dtype: cts[0].dtype, bucket, mask, out };
            let mut kernels: Vec<Kernel> = buckets.iter().map(|&bucket| variant(bucket).kernel(prefix, lead)).collect();
            // The small-problem variants follow, in the same bucket order; none where the shape
            // leaves the bucket's configuration as it is (the same kernel compiled twice).
            let mut small = Vec::new();
            for &bucket in &buckets {
                let shape = overrides
                    .small
                    .or(if overrides.small_defaults { flash_attention::default_small(bucket) } else { None })
                    .filter(|&s| flash_attention::shaped_config(bucket, Some(s)) != flash_attention::config(bucket));
                small.push(shape.map(|s| (s, kernels.len())));
                if shape.is_some() {
                    kernels.push(variant(bucket).kernel_shaped(prefix, lead, shape));
                }
            }
            let fused = Fused { flash_buckets: Some(buckets), small, plain_rows: TQ, max_head_dim: MAX_HEAD_DIM };
            return Ok((kernels, fused));
        }
        let (tq, tk, qd) = if wide { (WIDE_TQ, WIDE_TK, WIDE_MAX_HEAD_DIM) } else { (TQ, TK, MAX_HEAD_DIM) };
        let name = format!("{prefix}_attention");
        let mut args = format!("const QParams p, {}* __restrict__ out", out.storage());
        for (n, c) in ["q", "k", "v"].iter().zip(cts) {
            args += &format!(", const {}* __restrict__ {n}", c.storage());
        }
        let mut mask_offset = String::new();
        let mut mask_term = String::new();
        if let Some(mc) = mask {
            args += &format!(", const {}* __restrict__ mask", mc.storage());
            // Offset of this problem's mask plane: its coordinates over the lead dims.
            mask_offset += "    long long m0 = 0, r_ = pidx;\n";
            for d in (0..lead).rev() {
                mask_offset += &format!("    m0 += (r_ % p.v[{dim}]) * p.v[{st}]; r_ /= p.v[{dim}];\n", dim = 23 + d, st = 23 + lead + d);
            }
            mask_term = format!("        s += {};\n", mc.load("mask[m0 + i * p.v[20] + j * p.v[21]]"));
        }
        let (lq, lk, lv) = (cts[0].load("q[q0 + i * p.v[15] + c]"), cts[1].load("k[k0 + j * p.v[16] + c]"), cts[2].load("v[v0 + j * p.v[17] + c]"));
        let st = out.store("M == 0 ? 0.0f : sO[r * QD + c] / sL[r]");
        // Params: 0 blocks, 1 query tiles per problem, 2 H, 3 N, 4 M, 5 D, 6 Dv,
        // 7..11 q/k/v/out offset per batch entry, 11..15 per head, 15..19 row strides,
        // 19 scale (f64 bits), 20/21 mask strides of the query/key axes, 22 unused here
        // (the flash kernel's vector-copy flag), 23.. lead dims, then the mask's strides over them.
        let body = format!(
            r#"#define QTQ {tq}
#define QTK {tk}
#define QD {qd}
extern "C" __global__ void {name}({args}) {{
  __shared__ float sQ[QTQ * QD], sK[QTK * QD], sV[QTK * QD], sO[QTQ * QD], sS[QTQ * QTK], sM[QTQ], sL[QTQ], sC[QTQ];
  const float ninf = __int_as_float(0xff800000);
  const long long H = p.v[2], N = p.v[3], M = p.v[4];
  const int D = (int)p.v[5], Dv = (int)p.v[6];
  const float scale = (float)q_pd(p.v[19]);
  const int tid = threadIdx.x, nt = blockDim.x;
  for (long long blk = blockIdx.x; blk < p.v[0]; blk += gridDim.x) {{
    const long long pidx = blk / p.v[1], i0 = (blk - pidx * p.v[1]) * QTQ;
    const long long b = pidx / H, h = pidx - b * H;
    const long long q0 = b * p.v[7] + h * p.v[11], k0 = b * p.v[8] + h * p.v[12];
    const long long v0 = b * p.v[9] + h * p.v[13], o0 = b * p.v[10] + h * p.v[14];
{mask_offset}    for (int e = tid; e < QTQ * D; e += nt) {{
      int r = e / D, c = e - r * D;
      long long i = i0 + r;
      sQ[r * QD + c] = i < N ? {lq} : 0.0f;
    }}
    for (int e = tid; e < QTQ * Dv; e += nt) sO[(e / Dv) * QD + e % Dv] = 0.0f;
    if (tid < QTQ) {{ sM[tid] = ninf; sL[tid] = 0.0f; }}
    __syncthreads();
    for (long long j0 = 0; j0 < M; j0 += QTK) {{
      for (int e = tid; e < QTK * D; e += nt) {{
        int r = e / D, c = e - r * D;
        long long j = j0 + r;
        sK[r * QD + c] = j < M ? {lk} : 0.0f;
      }}
      for (int e = tid; e < QTK * Dv; e += nt) {{
        int r = e / Dv, c = e - r * Dv;
        long long j = j0 + r;
        sV[r * QD + c] = j < M ? {lv} : 0.0f;
      }}
      __syncthreads();
      for (int e = tid; e < QTQ * QTK; e += nt) {{
        int r = e / QTK, cj = e - r * QTK;
        long long i = i0 + r, j = j0 + cj;
        float s = ninf;
        if (i < N && j < M) {{
          float dot = 0.0f;
          for (int t = 0; t < D; ++t) dot += sQ[r * QD + t] * sK[cj * QD + t];
          s = dot * scale;
{mask_term}        }}
        sS[e] = s;
      }}
      __syncthreads();
      if (tid < QTQ) {{
        // Online softmax for row `tid`: new running max, rescale factor, this tile's weights.
        const int r = tid;
        const int valid = (int)((M - j0) < QTK ? (M - j0) : QTK);
        float mo = sM[r], mx = mo;
        for (int c = 0; c < valid; ++c) mx = fmaxf(mx, sS[r * QTK + c]);
        float corr = 1.0f, sum = 0.0f;
        if (mx == ninf) {{
          // Every score so far is -inf (or the row is past N): nothing to add yet.
          for (int c = 0; c < QTK; ++c) sS[r * QTK + c] = 0.0f;
        }} else {{
          corr = expf(mo - mx);
          for (int c = 0; c < QTK; ++c) {{
            float w = c < valid ? expf(sS[r * QTK + c] - mx) : 0.0f;
            sS[r * QTK + c] = w;
            sum += w;
          }}
        }}
        sM[r] = mx;
        sL[r] = sL[r] * corr + sum;
        sC[r] = corr;
      }}
      __syncthreads();
      for (int e = tid; e < QTQ * Dv; e += nt) {{
        int r = e / Dv, c = e - r * Dv;
        float acc = sO[r * QD + c] * sC[r];
        for (int t = 0; t < QTK; ++t) acc += sS[r * QTK + t] * sV[t * QD + c];
        sO[r * QD + c] = acc;
      }}
      __syncthreads();
    }}
    for (int e = tid; e < QTQ * Dv; e += nt) {{
      int r = e / Dv, c = e - r * Dv;
      long long i = i0 + r;
      if (i < N) out[o0 + i * p.v[18] + c] = {st};
    }}
    __syncthreads();
  }}
}}
#undef QTQ
#undef QTK
#undef QD
"#
        );
        Ok((vec![Kernel { name, body }], Fused { flash_buckets: None, small: Vec::new(), plain_rows: tq, max_head_dim: qd }))
    }
}

/// One `Op::Attention` at concrete shapes: `problems()` independent N×M attention problems (batch
/// entries × heads), each at element offsets `offsets(problem)` of q, k, v and the output.
pub struct Geometry {
    pub n: usize,
    pub m: usize,
    pub d: usize,
    pub dv: usize,
    /// Heads per batch entry (1 without packed heads).
    pub h: usize,
    /// Row strides of q, k, v and the output.
    pub rows: [usize; 4],
    /// Element offsets of q, k, v and the output per batch entry and per head.
    pub per_batch: [usize; 4],
    pub per_head: [usize; 4],
    /// Element offsets of q, k, v and the output's first column (`AttentionColumns`; else 0).
    pub base: [usize; 4],
    /// The score shape the mask broadcasts to: `[*, N, M]`, or `[B, H, N, M]` for packed heads.
    pub score: Vec<usize>,
}

impl Geometry {
    /// Checks q, k, v and the output's shapes against each other and the layout.
    pub fn of(heads: Option<usize>, columns: Option<AttentionColumns>, s: &StepShapes) -> Result<Geometry, String> {
        let (q, k, v) = (s.input(0)?, s.input(1)?, s.input(2)?);
        let rank = q.len();
        if rank < 2 || k.len() != rank || v.len() != rank {
            return Err(format!("q, k, v need one rank ≥ 2, got {q:?}, {k:?}, {v:?}"));
        }
        let lead = &q[..rank - 2];
        if k[..rank - 2] != *lead || v[..rank - 2] != *lead {
            return Err(format!("q, k, v leading dims differ: {q:?}, {k:?}, {v:?}"));
        }
        let (n, m) = (q[rank - 2], k[rank - 2]);
        if v[rank - 2] != m {
            return Err(format!("k has {m} rows but v has {}", v[rank - 2]));
        }
        let mut base = [0; 4];
        let (h, d, dv, rows, score, out_shape) = match heads {
            None if columns.is_some() => return Err("column ranges of q, k, v need packed heads".into()),
            None => {
                let (d, dv) = (q[rank - 1], v[rank - 1]);
                if k[rank - 1] != d {
                    return Err(format!("q has depth {d} but k has {}", k[rank - 1]));
                }
                let mut out = q.to_vec();
                out[rank - 1] = dv;
                let score: Vec<usize> = lead.iter().copied().chain([n, m]).collect();
                (1, d, dv, [d, d, dv, dv], score, out)
            }
            Some(h) => {
                let inputs = [q[2], k[2], v[2]];
                let (offset, [qc, kc, vc]) = AttentionColumns::ranges(columns, inputs)?;
                if h == 0 || qc % h != 0 || vc % h != 0 || kc != qc {
                    return Err(format!("{h} heads do not divide q/k/v widths {qc}/{kc}/{vc}"));
                }
                base[..3].copy_from_slice(&offset);
                (h, qc / h, vc / h, [inputs[0], inputs[1], inputs[2], vc], vec![q[0], h, n, m], vec![q[0], n, vc])
            }
        };
        if s.outs[0] != out_shape.as_slice() {
            return Err(format!("attention gives {out_shape:?}, but the output is {:?}", s.outs[0]));
        }
        let [qr, kr, vr, or] = rows;
        let per_batch = [n * qr, m * kr, m * vr, n * or];
        let per_head = if heads.is_some() { [d, d, dv, dv] } else { [0; 4] };
        Ok(Geometry { n, m, d, dv, h, rows, per_batch, per_head, base, score })
    }

    /// The problem index space: the leading dims, or [B, H].
    pub fn lead(&self) -> &[usize] {
        &self.score[..self.score.len() - 2]
    }

    pub fn problems(&self) -> usize {
        self.lead().iter().product()
    }

    /// Element offsets of problem `p`'s first row in q, k, v and the output.
    pub fn offsets(&self, p: usize) -> [usize; 4] {
        let (b, h) = (p / self.h, p % self.h);
        std::array::from_fn(|x| self.base[x] + b * self.per_batch[x] + h * self.per_head[x])
    }
}

impl StepCode for AttentionCode {
    fn kernels(&self) -> &[Kernel] {
        &self.kernels
    }

    fn plan(&self, s: &StepShapes) -> Result<LaunchPlan, String> {
        let g = Geometry::of(self.heads, self.columns, s)?;
        let (n, m, d, dv) = (g.n, g.m, g.d, g.dv);
        let fused = match (&self.fused, &self.gemm) {
            (Some(f), _) if d.max(dv) <= f.max_head_dim => f,
            (_, Some(gemm)) => return gemm.plan(s, &g, self.kernels.len() - 1),
            (Some(f), None) => return Err(format!("head dims {d}/{dv} exceed the CUDA attention kernel's {}", f.max_head_dim)),
            (None, None) => return Err("attention step compiled no kernels".into()),
        };
        // The kernel to launch, its query rows per block, the scale it takes, its bucket and
        // block shape when not the configuration's.
        let problems = g.problems();
        let (kernel, rows_per_block, scale, flash) = match &fused.flash_buckets {
            None => (0, fused.plain_rows, self.scale as f64, None),
            Some(buckets) => {
                let want = flash_attention::bucket(d.max(dv))
                    .ok_or_else(|| format!("head dims {d}/{dv} exceed the CUDA attention kernel's {MAX_HEAD_DIM}"))?;
                let k = buckets
                    .iter()
                    .position(|&b| b == want)
                    .ok_or_else(|| format!("head dims {d}/{dv} need the {want}-wide flash-attention variant, compiled only for {buckets:?}"))?;
                // The flash kernel works in log2 units (exp2).
                let scale = self.scale as f64 * std::f64::consts::LOG2_E;
                let rows = flash_attention::block_rows(want);
                match fused.small[k] {
                    Some((shape, kernel)) if problems * n.div_ceil(rows) < flash_attention::SMALL_BELOW_BLOCKS => {
                        let rows = flash_attention::shaped_config(want, Some(shape)).block_rows();
                        (kernel, rows, scale, Some((want, Some(shape))))
                    }
                    _ => (k, rows, scale, Some((want, None))),
                }
            }
        };
        let tiles = n.div_ceil(rows_per_block);
        let blocks = problems * tiles;
        let mut plan = LaunchPlan::default();
        if blocks == 0 || dv == 0 {
            return Ok(plan);
        }
        let (rows, per_batch, per_head) = (g.rows, g.per_batch, g.per_head);
        // 16-byte tile copies need every row start 16-byte aligned (device buffers are).
        let vector_copies = [d, dv].iter().chain(&per_batch).chain(&per_head).chain(&rows).chain(&g.base).all(|&x| x % 8 == 0);
        let mut p = ParamList::default();
        p.extend([blocks, tiles, g.h, n, m, d, dv].map(|x| x as i64));
        p.extend(per_batch.map(|x| x as i64));
        p.extend(per_head.map(|x| x as i64));
        p.extend(rows.map(|x| x as i64));
        p.push_f64(scale);
        // q, k, v from their first columns (the kernels index from there).
        let from = |i: usize| if g.base[i] == 0 { Arg::In(i) } else { Arg::InAt(i, g.base[i] * self.in_bytes[i]) };
        let mut args = vec![Arg::Out(0), from(0), from(1), from(2)];
        let lead_dims = g.lead();
        if self.has_mask {
            let ms = broadcast_strides(s.input(3)?, &g.score).map_err(|e| format!("mask: {e}"))?;
            let r = ms.len();
            p.push(ms[r - 2]);
            p.push(ms[r - 1]);
            p.push(vector_copies as i64);
            p.extend(lead_dims.iter().map(|&x| x as i64));
            p.extend(ms[..r - 2].iter().copied());
            args.push(Arg::In(3));
        } else {
            p.extend([0, 0, vector_copies as i64]);
            p.extend(lead_dims.iter().map(|&x| x as i64));
        }
        let work = flash.map_or(Work::Rows(blocks as u64), |(b, w)| flash_attention::work(b, w, blocks));
        let launch = Action::Launch { kernel, work, params: p.finish()?, args };
        plan.actions.push(match self.sdpa_call(&g, fused, launch.clone()) {
            Some(call) => Action::Sdpa(call),
            None => launch,
        });
        Ok(plan)
    }
}

impl AttentionCode {
    /// The step as a cuDNN SDPA call with `launch` (the flash kernel) as its fallback, when
    /// cuDNN is asked for at this size (`cudnn_min_scores`) and may take it: the flash route, no
    /// mask, one 16-bit dtype, head dims and strides cuDNN allows (`SdpaCall::eligible`).
    fn sdpa_call(&self, g: &Geometry, fused: &Fused, launch: Action) -> Option<SdpaCall> {
        let dtype = self.same_dtype?;
        if g.n.saturating_mul(g.m) < self.cudnn_min_scores || self.has_mask || fused.flash_buckets.is_none() {
            return None;
        }
        // Without packed heads every problem is a batch entry of one head.
        let strides: [[usize; 3]; 4] = std::array::from_fn(|i| {
            let head = if self.heads.is_some() { g.per_head[i] } else { g.per_batch[i] };
            [g.per_batch[i], head, g.rows[i]]
        });
        if !SdpaCall::eligible(dtype, g.d, g.dv, &strides, &g.base) {
            return None;
        }
        let from = |i: usize| if g.base[i] == 0 { Arg::In(i) } else { Arg::InAt(i, g.base[i] * self.in_bytes[i]) };
        let (b, h) = if self.heads.is_some() { (g.problems() / g.h, g.h) } else { (g.problems(), 1) };
        Some(SdpaCall { dtype, b, h, n: g.n, m: g.m, d: g.d, dv: g.dv, strides, scale: self.scale, args: [from(0), from(1), from(2), Arg::Out(0)], fallback: Box::new(launch) })
    }
}

#[cfg(test)]
mod tests {
    use super::gemm::{with_overrides, Overrides};
    use super::*;

    fn types(dtype: DType, mask: Option<DType>, rank: usize) -> Types {
        let mut ins = vec![Some(dtype); 3];
        ins.extend(mask.map(Some));
        let in_ranks = vec![rank; ins.len()];
        Types { ins, in_ranks, outs: vec![dtype], out_ranks: vec![rank], prefix: "q".into() }
    }

    fn names(op: &Op, t: &Types, head_dims: Option<(usize, usize)>) -> Vec<String> {
        AttentionCode::with_head_dims(op, t, head_dims).unwrap().kernels().iter().map(|k| k.name.clone()).collect()
    }

    #[test]
    fn wide_heads_and_f32_take_the_gemm_route() {
        let op = Op::Attention { scale: 0.1, heads: None, columns: None };
        let softmax = ["q_attention_softmax"];
        for dtype in [DType::F16, DType::BF16, DType::F32] {
            for d in [192, 512, 640] {
                assert_eq!(names(&op, &types(dtype, None, 3), Some((d, d))), softmax, "{dtype} d={d}");
            }
        }
        // f32 at flash widths too; f16 keeps flash there.
        assert_eq!(names(&op, &types(DType::F32, Some(DType::F32), 3), Some((40, 40))), softmax);
        assert_eq!(names(&op, &types(DType::F16, None, 3), Some((40, 40))), ["q_flash_attention_48"]);
        // Symbolic head dims: every flash bucket, the small-launch variants the buckets have by
        // default, then the softmax for wide heads at run time.
        let sym = names(&op, &types(DType::F16, None, 3), None);
        let small = flash_attention::BUCKETS.iter().filter(|&&b| flash_attention::default_small(b).is_some()).count();
        assert_eq!(sym.len(), flash_attention::BUCKETS.len() + small + 1);
        assert_eq!(sym.last().unwrap(), "q_attention_softmax");
        // Mixed dtypes cannot be one cuBLAS call: the wide plain kernel, and its width limit.
        let mut mixed = types(DType::F16, None, 3);
        mixed.outs = vec![DType::F32];
        let code = AttentionCode::with_head_dims(&op, &mixed, Some((512, 512))).unwrap();
        assert!(code.kernels()[0].body.contains("#define QD 512"));
        let e = AttentionCode::with_head_dims(&op, &mixed, Some((640, 640))).err().unwrap();
        assert!(e.contains("640") && e.contains("512"), "{e}");
    }

    #[test]
    fn overrides_force_a_route() {
        let op = Op::Attention { scale: 0.1, heads: Some(2), columns: None };
        let t = types(DType::F32, None, 3);
        let fused = Overrides { route: Route::Fused, ..Overrides::default() };
        let code = with_overrides(fused, || AttentionCode::with_head_dims(&op, &t, Some((40, 40)))).unwrap();
        assert_eq!(code.kernels().len(), 1);
        assert!(code.kernels()[0].name == "q_attention" && code.kernels()[0].body.contains("#define QD 160"));
        let gemm = Overrides { route: Route::Gemm, ..Overrides::default() };
        let t16 = types(DType::F16, None, 3);
        assert_eq!(with_overrides(gemm, || names(&op, &t16, Some((64, 64)))), ["q_attention_softmax"]);
        let mut mixed = t16;
        mixed.ins[2] = Some(DType::F32);
        assert!(with_overrides(gemm, || AttentionCode::with_head_dims(&op, &mixed, Some((64, 64)))).is_err());
    }

    /// With `Overrides::cudnn`, a flash-route step becomes a cuDNN SDPA call over [b, h, rows, d]
    /// views (packed q|k|v column ranges as strides and byte offsets) with the flash launch as
    /// its fallback; masks, bf16/f16 mixes and head dims off cuDNN's 8-grid keep the launch.
    #[test]
    fn cudnn_route_describes_the_views_and_keeps_the_kernel_as_fallback() {
        let bindings = crate::bind::Bindings::default();
        let on = Overrides { cudnn_min_scores: 0, ..Overrides::default() };
        let cols = AttentionColumns { offset: [0, 320, 640], width: [320; 3] };
        let op = Op::Attention { scale: 0.158, heads: Some(8), columns: Some(cols) };
        let qkv = [2usize, 4096, 960];
        let out = [2usize, 4096, 320];
        let s = StepShapes { ins: vec![Some(&qkv[..]); 3], outs: vec![&out[..]], bindings: &bindings };
        let code = with_overrides(on, || AttentionCode::with_head_dims(&op, &types(DType::F16, None, 3), Some((40, 40)))).unwrap();
        let plan = code.plan(&s).unwrap();
        let [Action::Sdpa(call)] = &plan.actions[..] else { panic!("{:?}", plan.actions) };
        assert_eq!((call.b, call.h, call.n, call.m, call.d, call.dv), (2, 8, 4096, 4096, 40, 40));
        assert_eq!(call.strides, [[4096 * 960, 40, 960], [4096 * 960, 40, 960], [4096 * 960, 40, 960], [4096 * 320, 40, 320]]);
        assert_eq!(call.args, [Arg::In(0), Arg::InAt(1, 640), Arg::InAt(2, 1280), Arg::Out(0)]);
        assert!((call.scale - 0.158).abs() < 1e-7);
        assert!(matches!(*call.fallback, Action::Launch { kernel: 0, .. }));
        // Below the size threshold, a mask or a head dim off the 8-grid keeps the kernel.
        let above = Overrides { cudnn_min_scores: 4096 * 4096 + 1, ..Overrides::default() };
        let code = with_overrides(above, || AttentionCode::with_head_dims(&op, &types(DType::F16, None, 3), Some((40, 40)))).unwrap();
        assert!(matches!(code.plan(&s).unwrap().actions[..], [Action::Launch { .. }]));
        let plain = Op::Attention { scale: 0.2, heads: None, columns: None };
        let (q, mask) = ([2usize, 100, 20], [100usize, 100]);
        let s = StepShapes { ins: vec![Some(&q[..]); 3], outs: vec![&q[..]], bindings: &bindings };
        let code = with_overrides(on, || AttentionCode::with_head_dims(&plain, &types(DType::F16, None, 3), Some((20, 20)))).unwrap();
        assert!(matches!(code.plan(&s).unwrap().actions[..], [Action::Launch { .. }]));
        let q = [2usize, 100, 64];
        let s = StepShapes { ins: vec![Some(&q[..]), Some(&q[..]), Some(&q[..]), Some(&mask[..])], outs: vec![&q[..]], bindings: &bindings };
        let code = with_overrides(on, || AttentionCode::with_head_dims(&plain, &types(DType::F16, Some(DType::F16), 3), Some((64, 64)))).unwrap();
        assert!(matches!(code.plan(&s).unwrap().actions[..], [Action::Launch { .. }]));
        // Unpacked heads: each batch entry is one head.
        let s = StepShapes { ins: vec![Some(&q[..]); 3], outs: vec![&q[..]], bindings: &bindings };
        let code = with_overrides(on, || AttentionCode::with_head_dims(&plain, &types(DType::BF16, None, 3), Some((64, 64)))).unwrap();
        let [Action::Sdpa(call)] = &code.plan(&s).unwrap().actions[..] else { panic!() };
        assert_eq!((call.b, call.h, call.strides[0]), (2, 1, [6400, 6400, 64]));
    }

    /// With `Overrides::small`, every flash bucket also compiles a variant with its block shaped
    /// that way, and launches that would fill fewer than `SMALL_BELOW_BLOCKS` blocks take it
    /// (more, smaller blocks, or more warps per query row); larger ones keep the default kernel.
    #[test]
    fn small_problems_take_the_small_block_variant_when_asked() {
        use flash_attention::BlockShape;
        let bindings = crate::bind::Bindings::default();
        let op = Op::Attention { scale: 0.08, heads: Some(8), columns: None };
        let compile = |o: Overrides| with_overrides(o, || AttentionCode::with_head_dims(&op, &types(DType::F16, None, 3), Some((160, 160)))).unwrap();
        let launch = |o: Overrides, code: &AttentionCode, n: usize| {
            let q = [2usize, n, 1280];
            let s = StepShapes { ins: vec![Some(&q[..]); 3], outs: vec![&q[..]], bindings: &bindings };
            let plan = with_overrides(o, || code.plan(&s)).unwrap();
            match &plan.actions[..] {
                [Action::Launch { kernel, work, .. }] => (*kernel, work.launch_dims()),
                other => panic!("{other:?}"),
            }
        };
        let small = Overrides { small: Some(BlockShape { warps: 4, splits: 1 }), small_defaults: false, cudnn_min_scores: usize::MAX, ..Overrides::default() };
        let code = compile(small);
        assert_eq!(code.kernels().iter().map(|k| k.name.as_str()).collect::<Vec<_>>(), ["q_flash_attention_160", "q_flash_attention_160_w4"]);
        assert!(code.kernels()[1].body.contains("__launch_bounds__(128,") && code.kernels()[1].body.contains("S = 1, R = 4 / S"));
        // 16² self-attention: 2 × 8 problems × 2 tiles of 128 rows = 32 blocks at 8 warps; 64 of
        // 64 rows at 4 warps.
        assert_eq!(launch(small, &code, 256), (1, (64, 128)));
        // 64 × 16 tiles of 128 rows = 2048 blocks: the default kernel.
        assert_eq!(launch(small, &code, 16384), (0, (2048, 256)));
        // Two key groups of 8-warp blocks: 4 row groups of 16 rows, so 64 blocks of 256 threads,
        // and the variant merges the groups' softmax states.
        let split = Overrides { small: Some(BlockShape { warps: 8, splits: 2 }), ..small };
        let code = compile(split);
        assert_eq!(code.kernels()[1].name, "q_flash_attention_160_w8g2");
        assert!(code.kernels()[1].body.contains("ks = warp / R") && code.kernels()[1].body.contains("SLOT"));
        assert!(!code.kernels()[0].body.contains("SLOT"), "the default kernel has no merge");
        assert_eq!(launch(split, &code, 256), (1, (64, 256)));
        // Four key groups of the 160 bucket's 32-key tiles would leave 8 keys per warp: the
        // configuration keeps its shape, so no second kernel is compiled.
        let four = Overrides { small: Some(BlockShape { warps: 8, splits: 4 }), ..small };
        assert_eq!(compile(four).kernels().len(), 1);
        // Not asked: one kernel per bucket.
        let plain = Overrides { small: None, ..small };
        assert_eq!(compile(plain).kernels().len(), 1);
        // By default the 160 bucket's small launches run two key groups; other buckets have no
        // small variant (d 80 here).
        let defaults = Overrides { small: None, small_defaults: true, ..small };
        assert_eq!(compile(defaults).kernels()[1].name, "q_flash_attention_160_w8g2");
        assert_eq!(launch(defaults, &compile(defaults), 256), (1, (64, 256)));
        let d80 = with_overrides(defaults, || AttentionCode::with_head_dims(&op, &types(DType::F16, None, 3), Some((80, 80)))).unwrap();
        assert_eq!(d80.kernels().len(), 1);
    }

    /// The VAE's head at 96² latents in f32 (340 MB of scores) runs in two chunks of 4608 query
    /// rows under the default cap; in f16 (170 MB) in one.
    #[test]
    fn gemm_route_chunks_scores_past_the_cap() {
        let op = Op::Attention { scale: 0.044, heads: None, columns: None };
        let shape = [1usize, 9216, 512];
        let bindings = crate::bind::Bindings::default();
        for (dtype, chunks) in [(DType::F16, 1usize), (DType::F32, 2)] {
            let code = AttentionCode::with_head_dims(&op, &types(dtype, None, 3), Some((512, 512))).unwrap();
            let s = StepShapes { ins: vec![Some(&shape[..]); 3], outs: vec![&shape[..]], bindings: &bindings };
            let plan = code.plan(&s).unwrap();
            let gemms: Vec<&crate::cuda::gemm::GemmCall> = plan.actions.iter().filter_map(|a| if let Action::Gemm(g) = a { Some(g) } else { None }).collect();
            assert_eq!(gemms.len(), 2 * chunks, "{dtype}");
            assert_eq!(plan.actions.len(), 3 * chunks, "{dtype}");
            assert_eq!(plan.scratch, [9216 / chunks * 9216 * dtype.size_bytes()], "{dtype}");
            assert!(plan.scratch[0] <= gemm::DEFAULT_SCRATCH_CAP);
            // The second chunk's products start at query row 4608 of q and of the output.
            if chunks == 2 {
                assert_eq!((gemms[2].a.1, gemms[3].c.1, gemms[2].m), (4608 * 512, 4608 * 512, 4608));
            }
            assert!((gemms[0].alpha - 0.044).abs() < 1e-6 && gemms[0].trans_b && !gemms[1].trans_b);
        }
    }
}
