//! Split statistics for long normalization rows.
//!
//! A GroupNorm row of the SD VAE decoder at 512² holds 4 channels × 262144 pixels; one block per
//! row leaves most of the GPU idle (32 rows at batch 1 on 132 SMs). Rows longer than
//! [`SPLIT_ABOVE`] are cut into `chunks` pieces of `ceil(len / chunks)` elements instead:
//!
//! 1. the *partials* kernel runs one block per (row, chunk): each thread sums its elements'
//!    deviations from its first element and their squares, turns them into a (count, mean, M2)
//!    triple (`text::shifted_sums`), the block merges its threads' triples with Chan et al.'s
//!    pairwise formula, and thread 0 stores the chunk's (mean, M2) into the step's scratch
//!    (`2 · rows · chunks` values of the compute type);
//! 2. the *apply* kernel runs one block per (row, chunk) again: it merges the row's partials
//!    (the chunk counts follow from the indices, so they are not stored), then normalizes its
//!    chunk and evaluates the region's epilogue.
//!
//! No E[x²] − E[x]² over raw values anywhere: a thread's sums are of deviations from a value of
//! its own data, and every merge adds squared deviations from a mean, so rows with a large mean
//! keep their variance in f32.

use super::text::Path;

/// Rows of at most this many elements keep the one-block-per-row kernel (LayerNorm rows of
/// 320–1280, GroupNorm rows of small feature maps).
pub const SPLIT_ABOVE: usize = 16384;
/// Elements per chunk: at least 8 per thread (below that the per-block merge dominates), at most
/// 64 per thread unless the row needs more than `MAX_CHUNKS` chunks.
const CHUNK_MIN: usize = 2048;
const CHUNK_MAX: usize = 16384;
/// Blocks worth aiming for per launch: a few waves of 256-thread blocks on an H100 (132 SMs × 8).
const TARGET_BLOCKS: usize = 1024;
/// Each apply block merges all of its row's partials; this bounds that work.
const MAX_CHUNKS: usize = 1024;

/// How many chunks each of `rows` rows of `len` elements is cut into, or `None` for the
/// one-block-per-row kernel. Every chunk is non-empty.
pub fn chunks(rows: usize, len: usize) -> Option<usize> {
    if len <= SPLIT_ABOVE || rows == 0 {
        return None;
    }
    let fewest = len.div_ceil(CHUNK_MAX);
    let most = (len / CHUNK_MIN).max(fewest);
    Some(TARGET_BLOCKS.div_ceil(rows).clamp(fewest, most).min(MAX_CHUNKS))
}

/// Device helpers for (count, mean, M2) triples in compute type `cc`: `q_wf_add` merges a triple
/// into another (Chan et al.), `q_wf_warp` merges a warp's triples (lane 0 holds the merge of all 32),
/// `q_wf_block` merges a block's triples so that every thread holds
/// the same result (lane 0 of each warp after a butterfly, then the warps in order, so the result
/// is deterministic). Block-uniform control flow is required around `q_wf_block` (barriers).
pub fn helpers(cc: &str) -> String {
    format!(
        r#"__device__ __forceinline__ void q_wf_add({cc}& n, {cc}& m, {cc}& v, {cc} nb, {cc} mb, {cc} vb) {{
  if (nb == ({cc})0) return;
  {cc} t = n + nb; {cc} d = mb - m; {cc} f = nb / t;
  m += d * f; v += vb + d * d * n * f; n = t;
}}
__device__ __forceinline__ void q_wf_warp({cc}& n, {cc}& m, {cc}& v) {{
  for (int o = 16; o > 0; o >>= 1) {{
    {cc} nb = __shfl_xor_sync(0xffffffffu, n, o), mb = __shfl_xor_sync(0xffffffffu, m, o), vb = __shfl_xor_sync(0xffffffffu, v, o);
    q_wf_add(n, m, v, nb, mb, vb);
  }}
}}
__device__ __forceinline__ void q_wf_block({cc}& n, {cc}& m, {cc}& v) {{
  __shared__ {cc} q_wn[32], q_wm[32], q_wv[32];
  for (int o = 16; o > 0; o >>= 1) {{
    {cc} nb = __shfl_xor_sync(0xffffffffu, n, o), mb = __shfl_xor_sync(0xffffffffu, m, o), vb = __shfl_xor_sync(0xffffffffu, v, o);
    q_wf_add(n, m, v, nb, mb, vb);
  }}
  __syncthreads();
  if ((threadIdx.x & 31) == 0) {{ q_wn[threadIdx.x >> 5] = n; q_wm[threadIdx.x >> 5] = m; q_wv[threadIdx.x >> 5] = v; }}
  __syncthreads();
  n = q_wn[0]; m = q_wm[0]; v = q_wv[0];
  for (int k = 1; k < (int)(blockDim.x >> 5); ++k) q_wf_add(n, m, v, q_wn[k], q_wm[k], q_wv[k]);
}}
"#
    )
}

/// The opening of a block loop over (row, chunk) pairs: defines `L`, `C`, `CL` (chunk length),
/// `row`, `blk` and the chunk's `[beg_, end_)`. Params: `rows, L, C`. On the vector path the
/// chunk length rounds up to a multiple of the vector width, so every chunk starts aligned;
/// trailing chunks may then be empty (their partials hold count 0, which merges as nothing).
pub fn block_loop(path: Path) -> String {
    let ix = path.ix();
    let round = match path {
        Path::Vector(v) => format!("    CL = (CL + {v}u - 1u) / {v}u * {v}u;\n"),
        _ => String::new(),
    };
    format!(
        "    const {ix} L = ({ix})p.v[1], C = ({ix})p.v[2];\n    {ix} CL = (L + C - 1) / C;\n{round}    for ({ix} blk = blockIdx.x; blk < ({ix})p.v[0] * C; blk += gridDim.x) {{\n      const {ix} row = blk / C, beg_ = (blk - row * C) * CL;\n      const {ix} end_ = beg_ + CL < L ? beg_ + CL : L;\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Short rows keep one block per row; long rows get enough blocks, non-empty chunks within
    /// the length bounds, and at most `MAX_CHUNKS` chunks.
    #[test]
    fn chunk_counts() {
        assert_eq!(chunks(64, 1280), None);
        assert_eq!(chunks(64, SPLIT_ABOVE), None);
        // SD VAE decoder, 128 channels at 512², batch 1: 32 rows of 4 · 262144.
        assert_eq!(chunks(32, 4 << 18), Some(64));
        // SD UNet, 320 channels at 64², batch 2: 64 rows of 10 · 4096.
        assert_eq!(chunks(64, 40960), Some(16));
        for rows in [1, 2, 32, 64, 256, 4096] {
            for len in [SPLIT_ABOVE + 1, 18432, 40960, 1 << 20, 3_000_017, 1 << 26] {
                let c = chunks(rows, len).unwrap();
                let cl = len.div_ceil(c);
                assert!((1..=MAX_CHUNKS).contains(&c), "{rows}×{len}: {c}");
                assert!((c - 1) * cl < len, "{rows}×{len}: chunk {} is empty", c - 1);
                assert!(cl >= CHUNK_MIN && (cl <= CHUNK_MAX || c == MAX_CHUNKS), "{rows}×{len}: chunks of {cl}");
                assert!(rows * c >= TARGET_BLOCKS.min(rows * (len / CHUNK_MIN)).min(rows * MAX_CHUNKS), "{rows}×{len}: {c}");
            }
        }
    }
}
