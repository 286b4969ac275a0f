//! `Op::Attention` as two cuBLAS products and a softmax kernel, for heads wider than the fused
//! kernels' tiles (the SD VAE's single 512-wide head) and for f32 models:
//!
//! 1. `S = scale · Q·Kᵀ`: one strided-batched GEMM (f32 accumulation) over the problems (batch
//!    entries × heads) into the step's scratch, stored in the storage dtype (f16 for fp16 models,
//!    f32 for f32 models), laid out `[problems, rows, M]`.
//! 2. `P = softmax(S + mask)` row by row, in place: one block per score row, f32 math (a running
//!    max and sum per thread, merged over the block, then a second pass that writes
//!    `exp(s − max) / sum` in the storage dtype); 16-byte accesses when rows are a multiple of
//!    16 bytes long. The mask (any float dtype but f64) broadcasts to the scores as the op says.
//! 3. `O = P·V`: one strided-batched GEMM straight into the output's layout (packed heads write
//!    their column slice of each row).
//!
//! When the batch and head strides of packed heads cannot be one stride (B > 1 and H > 1), each
//! batch entry is its own strided batch over its heads.
//!
//! **Scratch bound.** The scores of every problem at once take `problems · N · M` elements
//! (170 MB for the VAE's 9216-token f16 head). The scratch is capped (`Overrides::scratch_cap`,
//! `DEFAULT_SCRATCH_CAP`): past the cap a step runs in chunks, each of whole problems when one
//! problem's scores fit, else of query rows of one problem, every chunk its own
//! GEMM → softmax → GEMM; chunks are balanced (equal sizes but the last). The scratch always holds
//! at least one score row.
//!
//! Scores in the storage dtype are what PyTorch's math path does too: f16 scores overflow only
//! past |scale · q·k| = 65504. The tests and benchmarks choose the route and lower the cap through
//! [`with_overrides`], which applies to steps generated (and planned) on the calling thread.

use std::cell::Cell;

use quilt_rewrites::DType;

use crate::cuda::codegen::attention::Geometry;
use crate::cuda::codegen::{broadcast_strides, Action, Arg, CType, Kernel, LaunchPlan, ParamList, StepShapes, Work};
use crate::cuda::gemm::GemmCall;

/// The default bound on a step's score scratch (bytes).
pub const DEFAULT_SCRATCH_CAP: usize = 256 << 20;

/// Which implementation an attention step takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Route {
    /// Two GEMMs for heads wider than the fused kernels and for f32; fused kernels otherwise.
    #[default]
    Auto,
    /// The fused kernels only (flash, plain, or the wide plain kernel up to 512).
    Fused,
    /// Two GEMMs and a softmax whatever the head dim (an error where the dtypes do not allow it).
    Gemm,
}

/// Per-thread settings of the attention code generator (tests and benchmarks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overrides {
    pub route: Route,
    /// Bytes of score scratch a GEMM-route step may use before it runs in chunks.
    pub scratch_cap: usize,
    /// Flash-kernel shapes with at least this many scores per head (N·M) run through cuDNN's
    /// fused SDPA engines where those take the shape (`sdpa`; the flash kernel stays as the
    /// fallback). 0: every shape; `usize::MAX`: none. Default `CUDNN_MIN_SCORES`;
    /// `QUILT_ATTN_CUDNN=1` every shape, `=0` none.
    pub cudnn_min_scores: usize,
    /// Flash launches that would fill fewer than `flash_attention::SMALL_BELOW_BLOCKS` blocks
    /// run a variant with its block shaped like this instead, in every bucket: fewer warps per
    /// block (more, smaller blocks) or key groups (more warps per query row). For experiments
    /// (`QUILT_FLASH_SMALL_WARPS`, `QUILT_FLASH_SMALL_SPLITS`): on the H100 (session 10) no shape
    /// made the UNet faster in every bucket, see `flash_attention::default_small`.
    pub small: Option<super::flash_attention::BlockShape>,
    /// Without `small`: buckets with a measured small-launch shape (`default_small`) take it
    /// (`QUILT_FLASH_SMALL=0` turns them off).
    pub small_defaults: bool,
}

/// Attention problems from 2048×2048 scores up go to cuDNN by default. Measured per step on an
/// H200 (session 9, b2 × 8 heads, f16): cuDNN's engine beat the flash kernel at SD's 64² self-
/// attention (4096², d 40: 170 vs 243 µs) and lost or tied below (1024², d 80: 46.9 vs 44.4 µs;
/// 256², d 160: 31.5 vs 31.1 µs; cross-attention over 77 keys: 31-50 vs 21-33 µs).
pub const CUDNN_MIN_SCORES: usize = 2048 * 2048;

impl Default for Overrides {
    fn default() -> Overrides {
        Overrides { route: Route::Auto, scratch_cap: DEFAULT_SCRATCH_CAP, cudnn_min_scores: cudnn_min_scores_from_env(), small: super::flash_attention::small_from_env(), small_defaults: super::flash_attention::small_defaults_from_env() }
    }
}

/// `QUILT_ATTN_CUDNN`: `1` every eligible shape on cuDNN, `0` none, else `CUDNN_MIN_SCORES`.
fn cudnn_min_scores_from_env() -> usize {
    static MIN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MIN.get_or_init(|| match std::env::var("QUILT_ATTN_CUDNN").as_deref() {
        Ok("1") => 0,
        Ok("0") => usize::MAX,
        _ => CUDNN_MIN_SCORES,
    })
}

thread_local! {
    static OVERRIDES: Cell<Overrides> = Cell::new(Overrides::default());
}

/// The settings in force on this thread.
pub fn overrides() -> Overrides {
    OVERRIDES.with(|c| c.get())
}

/// Runs `f` with `o` in force for attention steps generated on this thread (restored after, also
/// on a panic). Settings are read when a step's code is generated (`CudaExecutable::new`), so wrap
/// that call.
pub fn with_overrides<R>(o: Overrides, f: impl FnOnce() -> R) -> R {
    struct Restore(Overrides);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDES.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(OVERRIDES.with(|c| c.replace(o)));
    f()
}

/// Whether q, k, v, the output (and the mask) of these dtypes run as GEMMs: one of f32, f16 or
/// bf16 for q, k, v and the output (cuBLAS takes one dtype per call), a float mask but f64.
pub fn supports(q: DType, k: DType, v: DType, out: DType, mask: Option<DType>) -> bool {
    matches!(q, DType::F32 | DType::F16 | DType::BF16) && k == q && v == q && out == q && mask.is_none_or(|m| m.is_float() && m != DType::F64)
}

/// The GEMM route of one attention step.
pub struct GemmAttention {
    dtype: DType,
    scale: f32,
    has_mask: bool,
    scratch_cap: usize,
}

impl GemmAttention {
    /// The route and its softmax kernel (`{prefix}_attention_softmax`). `lead` is the rank of the
    /// problem index space (the leading dims, or [B, H] for packed heads).
    pub fn new(dtype: DType, mask: Option<DType>, lead: usize, scale: f32, prefix: &str, scratch_cap: usize) -> (GemmAttention, Kernel) {
        let kernel = softmax_kernel(CType::of(dtype), mask.map(CType::of), lead, prefix);
        (GemmAttention { dtype, scale, has_mask: mask.is_some(), scratch_cap }, kernel)
    }

    /// The actions at concrete shapes; `kernel` is the softmax kernel's index in the step.
    pub fn plan(&self, s: &StepShapes, g: &Geometry, kernel: usize) -> Result<LaunchPlan, String> {
        let mut plan = LaunchPlan::default();
        let (n, m, d, dv) = (g.n, g.m, g.d, g.dv);
        let problems = g.problems();
        if problems == 0 || n == 0 || dv == 0 {
            return Ok(plan);
        }
        let es = self.dtype.size_bytes();
        if m == 0 {
            // Softmax over no keys adds nothing: the output is zeros (as the CPU reference).
            plan.actions.push(Action::Zero { arg: Arg::Out(0), bytes: s.outs[0].iter().product::<usize>() * es });
            return Ok(plan);
        }
        let mask_strides = if self.has_mask { Some(broadcast_strides(s.input(3)?, &g.score).map_err(|e| format!("mask: {e}"))?) } else { None };
        let [qr, kr, vr, or] = g.rows;
        // Problems in runs of one stride: all of them (one head, or one batch entry), else each
        // batch entry's heads.
        let runs: Vec<(usize, usize, [usize; 4])> = if g.h == 1 {
            vec![(0, problems, g.per_batch)]
        } else if problems == g.h {
            vec![(0, problems, g.per_head)]
        } else {
            (0..problems / g.h).map(|b| (b * g.h, g.h, g.per_head)).collect()
        };
        let cap_rows = (self.scratch_cap / (m * es)).max(1);
        let mut scratch = 0usize;
        for (first, count, stride) in runs {
            let (per_chunk, rows) = chunking(count, n, cap_rows);
            scratch = scratch.max(per_chunk * rows * m * es);
            for p0 in (first..first + count).step_by(per_chunk) {
                let pc = per_chunk.min(first + count - p0);
                let base = g.offsets(p0);
                let strides = if pc > 1 { stride } else { [0; 4] };
                for i0 in (0..n).step_by(rows) {
                    let rc = rows.min(n - i0);
                    let scores = (Arg::Scratch(0), 0);
                    if d == 0 {
                        plan.actions.push(Action::Zero { arg: Arg::Scratch(0), bytes: pc * rc * m * es });
                    } else {
                        plan.actions.push(Action::Gemm(GemmCall {
                            dtype: self.dtype,
                            m: rc,
                            n: m,
                            k: d,
                            a: (Arg::In(0), base[0] + i0 * qr),
                            lda: qr,
                            trans_a: false,
                            stride_a: strides[0],
                            b: (Arg::In(1), base[1]),
                            ldb: kr,
                            trans_b: true,
                            stride_b: strides[1],
                            c: scores,
                            ldc: m,
                            stride_c: rc * m,
                            batch: pc,
                            alpha: self.scale as f64,
                            beta: 0.0,
                        }));
                    }
                    let mut p = ParamList::default();
                    p.extend([(pc * rc) as i64, m as i64, rc as i64, p0 as i64, i0 as i64]);
                    // 16-byte row accesses: rows start at multiples of M elements of an aligned scratch.
                    p.push((m * es).is_multiple_of(16) as i64);
                    let mut args = vec![Arg::Scratch(0)];
                    match &mask_strides {
                        Some(ms) => {
                            let r = ms.len();
                            p.extend([ms[r - 2], ms[r - 1]]);
                            p.extend(g.lead().iter().map(|&x| x as i64));
                            p.extend(ms[..r - 2].iter().copied());
                            args.push(Arg::In(3));
                        }
                        None => {
                            p.extend([0, 0]);
                        }
                    }
                    plan.actions.push(Action::Launch { kernel, work: Work::Rows((pc * rc) as u64), params: p.finish()?, args });
                    plan.actions.push(Action::Gemm(GemmCall {
                        dtype: self.dtype,
                        m: rc,
                        n: dv,
                        k: m,
                        a: scores,
                        lda: m,
                        trans_a: false,
                        stride_a: rc * m,
                        b: (Arg::In(2), base[2]),
                        ldb: vr,
                        trans_b: false,
                        stride_b: strides[2],
                        c: (Arg::Out(0), base[3] + i0 * or),
                        ldc: or,
                        stride_c: strides[3],
                        batch: pc,
                        alpha: 1.0,
                        beta: 0.0,
                    }));
                }
            }
        }
        plan.scratch.push(scratch);
        Ok(plan)
    }
}

/// (problems per chunk, query rows per chunk) for `count` problems of `n` rows when the scratch
/// holds `cap_rows` score rows: whole problems when one fits, else rows of one problem; balanced
/// so that chunks differ by at most the remainder of the last.
pub fn chunking(count: usize, n: usize, cap_rows: usize) -> (usize, usize) {
    let balanced = |total: usize, most: usize| total.div_ceil(total.div_ceil(most.max(1)));
    if cap_rows >= n {
        (balanced(count, cap_rows / n), n)
    } else {
        (1, balanced(n, cap_rows))
    }
}

/// The row softmax over the score scratch, in place. Params: 0 rows, 1 M (row length), 2 query
/// rows per problem in this chunk, 3 first problem, 4 first query row, 5 16-byte access flag,
/// 6/7 mask strides of the query/key axes, 8.. the lead dims, then the mask's strides over them.
fn softmax_kernel(st: CType, mask: Option<CType>, lead: usize, prefix: &str) -> Kernel {
    let name = format!("{prefix}_attention_softmax");
    let storage = st.storage();
    // Elements per 16-byte access.
    let vw = 16 / st.dtype.size_bytes();
    let (unpack, pack) = vector_code(st);
    let mut args = format!("const QParams p, {storage}* __restrict__ s");
    let mut mask_offset = String::new();
    let mut mask_add = String::new();
    if let Some(mc) = mask {
        args += &format!(", const {}* __restrict__ mask", mc.storage());
        mask_offset += "    long long m0 = i * p.v[6], r_ = p.v[3] + lp;\n";
        for d in (0..lead).rev() {
            mask_offset += &format!("    m0 += (r_ % p.v[{dim}]) * p.v[{st}]; r_ /= p.v[{dim}];\n", dim = 8 + d, st = 8 + lead + d);
        }
        mask_add = format!(
            "#pragma unroll\n      for (int t = 0; t < QSV; ++t) if (c0 + t < M) e[t] += {};\n",
            mc.load("mask[m0 + (c0 + t) * p.v[7]]")
        );
    }
    let load = st.load("x[c0 + t]");
    let store = st.store("e[t]");
    let body = format!(
        r#"#define QSV {vw}
extern "C" __global__ void {name}({args}) {{
  const float ninf = __int_as_float(0xff800000);
  const long long M = p.v[1], R = p.v[2];
  const bool vec = p.v[5] != 0;
  for (long long row = blockIdx.x; row < p.v[0]; row += gridDim.x) {{
    {storage}* x = s + row * M;
    const long long lp = row / R, i = p.v[4] + (row - lp * R);
{mask_offset}    // Pass 1: each thread's running max and sum of exp(score − max), then the block's.
    float mx = ninf, sum = 0.0f;
    for (long long c0 = (long long)threadIdx.x * QSV; c0 < M; c0 += (long long)blockDim.x * QSV) {{
      float e[QSV];
      if (vec) {{
        const uint4 u = *reinterpret_cast<const uint4*>(x + c0);
{unpack}      }} else {{
#pragma unroll
        for (int t = 0; t < QSV; ++t) e[t] = c0 + t < M ? {load} : ninf;
      }}
      {mask_add}#pragma unroll
      for (int t = 0; t < QSV; ++t) {{
        const float y = e[t];
        if (y > mx) {{ sum = sum * expf(mx - y) + 1.0f; mx = y; }}
        else if (y != ninf) sum += expf(y - mx);
      }}
    }}
    const float bm = q_block_reduce(mx, QMax());
    const float inv = 1.0f / q_block_reduce(mx == ninf ? 0.0f : sum * expf(mx - bm), QSum());
    // Pass 2: the weights, in place (a row fully masked to -inf gives NaN, as the reference).
    for (long long c0 = (long long)threadIdx.x * QSV; c0 < M; c0 += (long long)blockDim.x * QSV) {{
      float e[QSV];
      if (vec) {{
        const uint4 u = *reinterpret_cast<const uint4*>(x + c0);
{unpack}      }} else {{
#pragma unroll
        for (int t = 0; t < QSV; ++t) e[t] = c0 + t < M ? {load} : 0.0f;
      }}
      {mask_add}#pragma unroll
      for (int t = 0; t < QSV; ++t) e[t] = expf(e[t] - bm) * inv;
      if (vec) {{
        uint4 u;
{pack}        *reinterpret_cast<uint4*>(x + c0) = u;
      }} else {{
#pragma unroll
        for (int t = 0; t < QSV; ++t) if (c0 + t < M) x[c0 + t] = {store};
      }}
    }}
  }}
}}
#undef QSV
"#
    );
    Kernel { name, body }
}

/// Code that unpacks `uint4 u` into `float e[..]`, and packs `e` back into `uint4 u`.
fn vector_code(st: CType) -> (String, String) {
    let words = ["x", "y", "z", "w"];
    let (mut unpack, mut pack) = (String::new(), String::new());
    for (w, c) in words.iter().enumerate() {
        match st.dtype {
            DType::F32 => {
                unpack += &format!("        e[{w}] = __uint_as_float(u.{c});\n");
                pack += &format!("        u.{c} = __float_as_uint(e[{w}]);\n");
            }
            _ => {
                let (lo, hi) = (2 * w, 2 * w + 1);
                let half = |bits: &str| st.load(&format!("(({}){bits})", st.storage()));
                unpack += &format!("        e[{lo}] = {}; e[{hi}] = {};\n", half(&format!("(u.{c} & 0xffffu)")), half(&format!("(u.{c} >> 16)")));
                let s = |v: usize| st.store(&format!("e[{v}]"));
                pack += &format!("        u.{c} = (unsigned){} | ((unsigned){} << 16);\n", s(lo), s(hi));
            }
        }
    }
    (unpack, pack)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_whole_problems_when_one_fits_and_balanced() {
        // Everything fits.
        assert_eq!(chunking(16, 4096, 1 << 20), (16, 4096));
        // 2.4 problems fit: whole problems, 8 chunks of 2.
        assert_eq!(chunking(16, 4096, 10_000), (2, 4096));
        // 15 problems, at most 4 per chunk: 4 chunks, balanced to 4, 4, 4, 3.
        assert_eq!(chunking(15, 10, 45), (4, 10));
        // Less than one problem: rows of one problem, 9216 rows in chunks of ≤ 7281 → 2 × 4608.
        assert_eq!(chunking(1, 9216, 7281), (1, 4608));
        // At least one row.
        assert_eq!(chunking(3, 5, 1), (1, 1));
    }

    #[test]
    fn overrides_are_scoped_to_the_call() {
        let o = Overrides { route: Route::Gemm, scratch_cap: 1234, cudnn_min_scores: 0, small: Some(crate::cuda::codegen::flash_attention::BlockShape { warps: 4, splits: 1 }), small_defaults: false };
        assert_eq!(with_overrides(o, overrides), o);
        assert_eq!(overrides(), Overrides::default());
        let r = std::panic::catch_unwind(|| with_overrides(o, || panic!("inside")));
        assert!(r.is_err());
        assert_eq!(overrides(), Overrides::default(), "restored after a panic");
    }

    #[test]
    fn softmax_kernel_uses_vector_access_and_the_mask_strides() {
        let k = softmax_kernel(CType::of(DType::F16), Some(CType::of(DType::F32)), 2, "q");
        assert_eq!(k.name, "q_attention_softmax");
        assert!(k.body.contains("#define QSV 8") && k.body.contains("uint4"), "{}", k.body);
        assert!(k.body.contains("p.v[9]) * p.v[11]") && k.body.contains("p.v[8]) * p.v[10]"), "{}", k.body);
        let k = softmax_kernel(CType::of(DType::F32), None, 1, "q");
        assert!(k.body.contains("#define QSV 4") && !k.body.contains("__restrict__ mask"), "{}", k.body);
    }

    /// Every softmax variant compiles for sm_90 with no spills and no stack frame (the
    /// `float e[QSV]` chunk stays in registers); skipped without libnvrtc.
    #[test]
    fn softmax_kernels_compile_for_sm90_without_spills() {
        if !crate::cuda::nvrtc::available() {
            println!("SKIPPED: libnvrtc not found");
            return;
        }
        for dtype in [DType::F16, DType::BF16, DType::F32] {
            for mask in [None, Some(DType::F16), Some(DType::F32)] {
                let k = softmax_kernel(CType::of(dtype), mask.map(CType::of), 2, "q");
                let src = crate::cuda::codegen::module_source(&[k]);
                let compiled = crate::cuda::nvrtc::compile(&src, "softmax.cu", (9, 0)).unwrap_or_else(|e| panic!("{dtype} mask {mask:?}: {e}"));
                let stats = crate::cuda::nvrtc::kernel_stats(&compiled.log);
                assert_eq!(stats.len(), 1, "{}", compiled.log);
                let k = &stats[0];
                assert!(k.spill_store_bytes == 0 && k.spill_load_bytes == 0 && k.stack_bytes == 0, "{dtype} mask {mask:?}: {k:?}");
            }
        }
    }
}
