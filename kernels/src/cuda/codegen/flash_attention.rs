//! Tensor-core flash attention for f16/bf16 q, k, v: `softmax(scale · q·kᵀ + mask) · v` with
//! f32 accumulation and f32 softmax statistics, never materialising the N×M scores.
//!
//! Layout (FlashAttention-2 style, written for `mma.sync.m16n8k16`, which every sm_80+ GPU runs):
//! one block of 8 warps per (problem, tile of `block_rows` query rows); each warp owns one or two
//! 16-row query tiles (`Config::row_tiles`: two halve the shared-memory reads per FLOP where
//! registers allow). The query tile is staged through shared memory once and kept in registers as
//! `ldmatrix` A fragments. Keys and values stream through shared memory in tiles of `BN` rows,
//! in 2 or 3 stages filled by `cp.async` (the next tiles load while this one is computed; one
//! barrier per tile). Per tile a
//! warp computes its 16×BN scores on the tensor cores, updates each row's running max and sum
//! (log2 domain, `ex2.approx`; without a mask the scale folds into the exponent), rescales its f32 output accumulator, and adds `P·V`, reusing the
//! score registers as the A fragments of the second product (rounded to the input dtype).
//!
//! The head dim is padded with zeros to a bucket (a multiple of 16, `BUCKETS`) so that register
//! arrays have compile-time sizes; everything else (N, M, the true head dims, strides, offsets)
//! is a kernel parameter, so one module per (dtype, bucket, mask dtype, output dtype) serves
//! every shape. When the true head dims leave the bucket's last 8 columns empty (SD 1.x's 40 in
//! the 48 bucket) a second instantiation of the body skips them (`Config::exact`). Shared-memory
//! rows are padded to an odd number of 16-byte chunks, which makes the `ldmatrix` row addresses
//! land in distinct banks. Tiles fit the 48 KB of static shared memory (`Config::check`); the
//! tiling per bucket is `default_config`, and tests may force another (`with_config`).
//!
//! When every offset and row stride is a multiple of 8 elements (16 bytes) tiles are copied with
//! 16-byte `cp.async` (zero-filling rows past N/M and columns past D); otherwise an element-wise
//! copy runs, so odd head dims and strides stay correct.

use quilt_rewrites::DType;

use super::{CType, Kernel, Work, BLOCK};

/// Head-dim buckets, ascending; a head dim runs in the smallest bucket that holds it.
pub const BUCKETS: [usize; 8] = [16, 32, 48, 64, 80, 96, 128, 160];

/// The smallest bucket that holds head dims up to `d`.
pub fn bucket(d: usize) -> Option<usize> {
    BUCKETS.iter().copied().find(|&b| b >= d)
}

/// How a bucket's block is tiled and pipelined. The default per bucket is `default_config`;
/// tests and benchmarks may force another (`with_config`) to compare variants on a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// 16-row query tiles per warp: each K/V fragment read from shared memory feeds this many
    /// MMAs (less shared-memory traffic per FLOP), at the cost of registers.
    pub row_tiles: usize,
    /// Keys per shared-memory tile (a multiple of 32).
    pub keys: usize,
    /// Shared-memory stages of K and V tiles (2 or 3): with 3, two tiles load while one is
    /// computed; either way one `__syncthreads` per tile.
    pub stages: usize,
    /// Blocks per SM the register allocation must allow (`__launch_bounds__`): 2 caps the
    /// registers at 128 per thread, so two 8-warp blocks can share an SM and hide each other's
    /// latency.
    pub min_blocks: usize,
    /// When the true head dims leave the bucket's last 8 columns unused (40 in the 48 bucket),
    /// skip them: the last q·k step runs as m16n8k8 and P·V produces one 8-column tile fewer
    /// (a second instantiation of the kernel body, picked at run time).
    pub exact: bool,
    /// f16 data: exponentiate the scores two at a time (`ex2.approx.f16x2`, one special-function
    /// op per pair) straight into the f16 pairs `P·V` reads. The shifted score `s·scale − max ≤ 0`
    /// is rounded to f16 first (P is rounded to f16 for `P·V` either way); each lane sums a tile's
    /// P in f16 and adds that to the f32 row sum. Off in every default: on the H100 it was no
    /// faster at SD's shapes (244.0 vs 240.4 µs at d=40) with ~1.7× the error, so the
    /// exponentials are not what bounds the kernel (tests/bench/results/2026-12-06-session5-h100.md).
    pub half_exp: bool,
    /// Warps per block (8, 4 or 2): each warp owns `row_tiles` × 16 query rows and the block's
    /// warps share the K/V tiles. Fewer warps make smaller blocks, so small problems (SD's 16²
    /// self-attention: 2 blocks of 128 rows per head at 8 warps) spread over more SMs.
    pub warps: usize,
    /// Key groups per row group (1, 2 or 4): the block's warps form `warps / splits` row groups
    /// of `splits` warps each; the warps of a group share its query rows and take disjoint
    /// slices of `keys / splits` keys of every K/V tile, then merge their softmax states
    /// (row max, row sum, unnormalised output) through shared memory at the end: more warps per
    /// query row for small, latency-bound problems. On the H100 it paid only where a warp's work
    /// per tile is short anyway (the 160 bucket's 32-key tiles, `default_small`); at 32² (d 80,
    /// 64-key tiles) it doubled the barriers and merges per row for nothing (46 → 63 µs).
    pub splits: usize,
}

/// How a flash kernel's block is shaped: warps per block and key groups (`Config::warps`,
/// `Config::splits`). The small-problem variants (`Overrides::small`) differ from the
/// configuration in force only in these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockShape {
    pub warps: usize,
    pub splits: usize,
}

impl Config {
    /// Shared-memory row length in elements: the rows are padded by 8 elements when needed so
    /// that a row is an odd number of 16-byte chunks, which puts the 8 row addresses of each
    /// `ldmatrix` in distinct banks.
    pub fn row_len(bucket: usize) -> usize {
        if (bucket / 8) % 2 == 1 {
            bucket
        } else {
            bucket + 8
        }
    }

    /// Query rows per block: `warps / splits` row groups of `row_tiles` × 16 rows.
    pub fn block_rows(&self) -> usize {
        self.warps / self.splits * 16 * self.row_tiles
    }

    /// Keys of each K/V tile one warp takes (`keys / splits`).
    pub fn warp_keys(&self) -> usize {
        self.keys / self.splits
    }

    /// This configuration with another block shape.
    pub fn shaped(self, shape: BlockShape) -> Config {
        Config { warps: shape.warps, splits: shape.splits, ..self }
    }

    /// Threads per block.
    pub fn threads(&self) -> usize {
        32 * self.warps
    }

    /// Bytes of static shared memory: the query staging tile, the K/V stages, or the key
    /// groups' merge area (they alias).
    pub fn smem_bytes(&self, bucket: usize) -> usize {
        let ld = Config::row_len(bucket);
        let merge = (self.splits - 1) * (self.warps / self.splits) * self.merge_slot_floats(bucket) * 4;
        ((self.block_rows() * ld).max(2 * self.stages * self.keys * ld) * 2).max(merge)
    }

    /// Floats one warp of a key group past the first leaves for the merge: per lane its
    /// output fragments (`row_tiles` × bucket/8 tiles of 4) and a max and a sum per row (4 per
    /// row tile).
    fn merge_slot_floats(&self, bucket: usize) -> usize {
        32 * self.row_tiles * (bucket / 8 * 4 + 4)
    }

    /// Why this configuration cannot run `bucket`, if it cannot.
    pub fn check(&self, bucket: usize) -> Result<(), String> {
        let splits_ok = [1, 2, 4].contains(&self.splits) && self.warps.is_multiple_of(self.splits) && self.keys.is_multiple_of(16 * self.splits);
        if !(1..=2).contains(&self.row_tiles) || self.keys == 0 || !self.keys.is_multiple_of(32) || !(2..=3).contains(&self.stages) || !(1..=2).contains(&self.min_blocks) || ![2, 4, 8].contains(&self.warps) || !splits_ok {
            return Err(format!("flash-attention config {self:?} is out of range (row_tiles 1-2, keys a multiple of 32, stages 2-3, min_blocks 1-2, warps 2/4/8, splits 1/2/4 dividing the warps and leaving each warp a multiple of 16 keys)"));
        }
        let bytes = self.smem_bytes(bucket);
        if bytes > 48 * 1024 {
            return Err(format!("flash-attention config {self:?} needs {bytes} bytes of shared memory for bucket {bucket} (48 KB static limit)"));
        }
        Ok(())
    }
}

/// Chosen on the H100 (tests/bench/results/2026-11-25-attention-h100.md, then
/// 2026-11-25-flash-tuning-h100.md): two row tiles with 64-key tiles made the 48 bucket (SD 1.x's
/// head dim 40) 1.3× faster than one; 3 stages were ~3% faster than 2 at 48 and 64 (b2, 8 heads,
/// 4096 tokens: 246 vs 254 µs, 356 vs 369 µs) and skipping the 48 bucket's empty columns for
/// D=40 ~2.5%; the 64 bucket needs 32-key tiles for two row tiles without spilling; at 80 one row
/// tile with 64 keys and 2 stages beat 32 keys with 3 stages (44 vs 51 µs at 1024 tokens) and two
/// row tiles (67 µs); above 80 two row tiles do not fit the registers. Caps of 128 registers for
/// two blocks per SM spilled or ran slower (322 vs 246 µs at 48).
pub fn default_config(bucket: usize) -> Config {
    let c = |row_tiles, keys, stages| Config { row_tiles, keys, stages, min_blocks: 1, exact: true, half_exp: false, warps: 8, splits: 1 };
    match bucket {
        0..=48 => c(2, 64, 3),
        49..=64 => c(2, 32, 3),
        65..=80 => c(1, 64, 2),
        _ => c(1, 32, 2),
    }
}

thread_local! {
    static FORCED: std::cell::Cell<Option<Config>> = const { std::cell::Cell::new(None) };
}

/// The configuration of `bucket` in force on this thread: the forced one (`with_config`), else
/// the default.
pub fn config(bucket: usize) -> Config {
    // A forced configuration that cannot run this bucket (a plan with symbolic head dims compiles
    // every bucket) leaves it at its default.
    FORCED.with(|c| c.get()).filter(|c| c.check(bucket).is_ok()).unwrap_or_else(|| default_config(bucket))
}

/// Runs `f` with `config` forced for every bucket on this thread (restored after, also on a
/// panic). It is read when a step's code is generated and when its launches are planned, so wrap
/// both the executable's construction and its runs. Fails when `config` cannot run `bucket`.
pub fn with_config<R>(config: Config, bucket: usize, f: impl FnOnce() -> R) -> Result<R, String> {
    config.check(bucket)?;
    struct Restore(Option<Config>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(FORCED.with(|c| c.replace(Some(config))));
    Ok(f())
}

/// Query rows per block of `bucket`'s kernel on this thread.
pub fn block_rows(bucket: usize) -> usize {
    config(bucket).block_rows()
}

/// How `blocks` blocks of `bucket`'s kernel on this thread (shaped as `shape` instead of the
/// configuration's, when given) launch.
pub fn work(bucket: usize, shape: Option<BlockShape>, blocks: usize) -> Work {
    match shaped_config(bucket, shape).threads() as u32 {
        BLOCK => Work::Rows(blocks as u64),
        threads => Work::RowsOf { rows: blocks as u64, threads },
    }
}

/// The configuration in force for `bucket` shaped as `shape` when given and valid there (a
/// shape the bucket cannot hold, such as four key groups of the 160 bucket's 32-key tiles,
/// leaves the configuration as it is).
pub fn shaped_config(bucket: usize, shape: Option<BlockShape>) -> Config {
    let cfg = config(bucket);
    shape.map(|s| cfg.shaped(s)).filter(|c| c.check(bucket).is_ok()).unwrap_or(cfg)
}

/// The small-launch block shape of `bucket` by default (`Overrides::small_defaults`). Measured
/// per step on an H100 (session 10, b2 × 8 heads, f16): two key groups of the 8-warp block took
/// SD's 16² self-attention (256², d 160) from 31.8 to 26.0 µs and its cross-attention from 23.3
/// to 21.0 µs; at 32² (d 80) they were slower (46.1 → 63.0 µs self), as were 4- and 2-warp
/// blocks, and at 64² cross-attention (d 40) 4-warp blocks gained 2 µs of 36: the 160 bucket
/// alone takes a small variant.
pub fn default_small(bucket: usize) -> Option<BlockShape> {
    (bucket == 160).then_some(BlockShape { warps: 8, splits: 2 })
}

/// `QUILT_FLASH_SMALL=0`: no small-launch variants by default (`Overrides::small_defaults`).
pub fn small_defaults_from_env() -> bool {
    crate::cuda::env::default_on("QUILT_FLASH_SMALL")
}

/// `QUILT_FLASH_SMALL_WARPS=4|2|8` and `QUILT_FLASH_SMALL_SPLITS=2|4`: the default of
/// `Overrides::small`, every bucket's small-launch shape (8 warps when only the splits are
/// given, one key group when only the warps are). None when neither is set.
pub fn small_from_env() -> Option<BlockShape> {
    let read = |name: &str, allowed: &[usize]| std::env::var(name).ok().and_then(|v| v.parse().ok()).filter(|x| allowed.contains(x));
    let (warps, splits) = (read("QUILT_FLASH_SMALL_WARPS", &[2, 4, 8]), read("QUILT_FLASH_SMALL_SPLITS", &[1, 2, 4]));
    (warps.is_some() || splits.is_some()).then(|| BlockShape { warps: warps.unwrap_or(8), splits: splits.unwrap_or(1) })
}

/// Launches of fewer blocks than this take the small variant (`Overrides::small`).
pub const SMALL_BELOW_BLOCKS: usize = super::FILL_BLOCKS;

/// Whether q, k, v of these dtypes run on this kernel (one 16-bit float dtype for all three).
pub fn supports(q: DType, k: DType, v: DType) -> bool {
    matches!(q, DType::F16 | DType::BF16) && k == q && v == q
}

/// One compiled variant: everything the source depends on.
#[derive(Clone, Copy, Debug)]
pub struct FlashVariant {
    /// F16 or BF16 (q, k, v and the tensor-core inputs).
    pub dtype: DType,
    pub bucket: usize,
    pub mask: Option<CType>,
    pub out: CType,
}

/// Device helpers shared by every variant in a module (guarded: a module may hold several).
const HELPERS: &str = r#"#ifndef QFA_HELPERS
#define QFA_HELPERS
__device__ __forceinline__ unsigned qfa_saddr(const void* p) {
  unsigned r;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
  return r;
}
__device__ __forceinline__ void qfa_cp16(unsigned dst, const void* src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void qfa_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void qfa_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }
__device__ __forceinline__ void qfa_ldsm(unsigned (&r)[4], unsigned a) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void qfa_ldsm_t(unsigned (&r)[4], unsigned a) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void qfa_ldsm2(unsigned (&r)[2], unsigned a) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
}
__device__ __forceinline__ void qfa_ldsm2_t(unsigned (&r)[2], unsigned a) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
}
// m16n8k8: the last 8 columns of a head dim that is not a multiple of 16.
__device__ __forceinline__ void qfa_mma8_f16(float (&c)[4], const unsigned (&a)[2], unsigned b) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) : "r"(a[0]), "r"(a[1]), "r"(b));
}
__device__ __forceinline__ void qfa_mma8_bf16(float (&c)[4], const unsigned (&a)[2], unsigned b) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) : "r"(a[0]), "r"(a[1]), "r"(b));
}
__device__ __forceinline__ void qfa_mma_f16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void qfa_mma_bf16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Two f32 as one register of two 16-bit floats, `lo` in the low half (the lower column).
__device__ __forceinline__ unsigned qfa_pack_f16(float lo, float hi) {
  unsigned r; asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo)); return r;
}
__device__ __forceinline__ unsigned qfa_pack_bf16(float lo, float hi) {
  unsigned r; asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo)); return r;
}
__device__ __forceinline__ float qfa_exp2(float x) { float y; asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); return y; }
// 2^x of both f16 halves at once; their sum; the sum of the two halves as f32.
__device__ __forceinline__ unsigned qfa_exp2_h2(unsigned x) { unsigned y; asm("ex2.approx.f16x2 %0, %1;" : "=r"(y) : "r"(x)); return y; }
__device__ __forceinline__ unsigned qfa_hadd2(unsigned a, unsigned b) { unsigned r; asm("add.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b)); return r; }
__device__ __forceinline__ float qfa_h2sum(unsigned a) {
  float lo, hi;
  asm("{ .reg .f16 l, h; mov.b32 {l, h}, %2; cvt.f32.f16 %0, l; cvt.f32.f16 %1, h; }" : "=f"(lo), "=f"(hi) : "r"(a));
  return lo + hi;
}
// Rows [r0, r0 + rows) of a [nrows, ld] slab into shared rows of LD elements, C chunks of 8
// elements each: columns past `width` and rows past `nrows` become zeros (so padded dot products
// and P·V add nothing).
template <int C, int LD>
__device__ __forceinline__ void qfa_load_rows(unsigned short* dst, const unsigned short* __restrict__ src, long long r0, int rows,
                                              long long nrows, long long ld, int width, bool vec) {
  for (int c = threadIdx.x; c < rows * C; c += blockDim.x) {
    const int r = c / C, c8 = (c - r * C) * 8;
    const long long gr = r0 + r;
    unsigned short* d = dst + r * LD + c8;
    if (vec) {
      const bool ok = gr < nrows && c8 < width;
      qfa_cp16(qfa_saddr(d), ok ? (const void*)(src + gr * ld + c8) : (const void*)src, ok ? 16 : 0);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) d[e] = (gr < nrows && c8 + e < width) ? src[gr * ld + c8 + e] : (unsigned short)0;
    }
  }
}
#endif
"#;

/// The key groups' merge (`Config::splits` > 1), after the last tile: each warp of a group past
/// the first leaves its per-lane output fragments, row maxima and partial row sums in shared
/// memory (over the K/V stages, which every warp is done with after the barrier), and the
/// group's first warp rescales everything to the common maximum and adds it up. The sums stay
/// per lane (the quad reduction that follows is linear).
const MERGE: &str = r#"    {
      constexpr int SLOT = 32 * MT * (NT * 4 + 4), LM = MT * NT * 4;
      float* mb = reinterpret_cast<float*>(smem);
      __syncthreads();
      if (ks > 0) {
        float* w = mb + ((ks - 1) * R + rg) * SLOT + lane;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
          for (int dt = 0; dt < NT; ++dt)
#pragma unroll
            for (int e = 0; e < 4; ++e) w[((mt * NT + dt) * 4 + e) * 32] = o[mt][dt][e];
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            w[(LM + mt * 4 + r) * 32] = mr[mt][r];
            w[(LM + mt * 4 + 2 + r) * 32] = lr[mt][r];
          }
        }
      }
      __syncthreads();
      if (ks == 0) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          float c[2];
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            float m = mr[mt][r];
#pragma unroll
            for (int x = 1; x < S; ++x) m = fmaxf(m, mb[((x - 1) * R + rg) * SLOT + lane + (LM + mt * 4 + r) * 32]);
            // Rows with no keys anywhere keep base 0 (exp2(-inf) = 0, not NaN).
            const float base = m == ninf ? 0.0f : m;
            c[r] = qfa_exp2(mr[mt][r] - base);
            lr[mt][r] *= c[r];
            mr[mt][r] = base;
          }
#pragma unroll
          for (int dt = 0; dt < NT; ++dt)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[mt][dt][e] *= c[e >> 1];
#pragma unroll
          for (int x = 1; x < S; ++x) {
            const float* w = mb + ((x - 1) * R + rg) * SLOT + lane;
#pragma unroll
            for (int r = 0; r < 2; ++r) {
              c[r] = qfa_exp2(w[(LM + mt * 4 + r) * 32] - mr[mt][r]);
              lr[mt][r] += w[(LM + mt * 4 + 2 + r) * 32] * c[r];
            }
#pragma unroll
            for (int dt = 0; dt < NT; ++dt)
#pragma unroll
              for (int e = 0; e < 4; ++e) o[mt][dt][e] += w[((mt * NT + dt) * 4 + e) * 32] * c[e >> 1];
          }
        }
      }
    }
"#;

impl FlashVariant {
    /// The kernel, named `{prefix}_flash_attention_{bucket}`, in the configuration in force
    /// (`config`). Params (shared with the plain kernel, see `attention.rs`): 0 blocks, 1 query
    /// tiles per problem, 2 H, 3 N, 4 M, 5 D, 6 Dv, 7..11 q/k/v/out offsets per batch entry,
    /// 11..15 per head, 15..19 row strides, 19 scale·log2(e) (f64 bits), 20/21 mask strides of
    /// the query/key axes, 22 whether tiles may be copied 16 bytes at a time, 23.. lead dims, then
    /// the mask's strides over them. The kernel derives its own query tiles from N and its block
    /// rows (params 0 and 1 give the problem count), so a plan made for another block size stays
    /// correct, only less balanced.
    pub fn kernel(&self, prefix: &str, lead: usize) -> Kernel {
        self.kernel_shaped(prefix, lead, None)
    }

    /// The kernel with its block shaped as `shape` instead of the configuration's (see
    /// `shaped_config`), named after the shape it got: `..._w{warps}` or `..._w{warps}g{splits}`.
    pub fn kernel_shaped(&self, prefix: &str, lead: usize, shape: Option<BlockShape>) -> Kernel {
        let dp = self.bucket;
        let cfg = shaped_config(dp, shape);
        let suffix = match shape.map(|_| cfg.splits) {
            None => String::new(),
            Some(1) => format!("_w{}", cfg.warps),
            Some(g) => format!("_w{}g{g}", cfg.warps),
        };
        let name = format!("{prefix}_flash_attention_{dp}{suffix}");
        let Config { row_tiles: mt, keys: bn, stages, min_blocks, exact, half_exp, warps, splits } = cfg;
        let threads = cfg.threads();
        let ld = Config::row_len(dp);
        // Dropping the last 8 columns needs a bucket of whole 16-column steps with one left. Not
        // with a mask (SD's attention has none): its index arithmetic in the second body pushed
        // the 48 bucket's two-row-tile variant past 255 registers into spills.
        let narrow = exact && self.mask.is_none() && dp.is_multiple_of(16) && dp >= 32;
        let (mma, mma8, pack) = match self.dtype {
            DType::BF16 => ("qfa_mma_bf16", "qfa_mma8_bf16", "qfa_pack_bf16"),
            _ => ("qfa_mma_f16", "qfa_mma8_f16", "qfa_pack_f16"),
        };
        let half_exp = half_exp && self.dtype == DType::F16;
        // The exponentials (and the row sums) of one row tile's scores, and the A fragments of
        // P·V built from them: f32 exponentials rounded in pairs, or f16 pairs kept as they are
        // (stored in the first float of each pair).
        let (exp_loop, p_frag) = if half_exp {
            (
                r#"#pragma unroll
          for (int h = 0; h < 2; ++h) {
            unsigned acc = 0u;
#pragma unroll
            for (int nt = 0; nt < BW / 8; ++nt) {
              const unsigned x2 = qfa_pack_f16(fmaf(s[mt][nt][2 * h], factor, -base[h]), fmaf(s[mt][nt][2 * h + 1], factor, -base[h]));
              const unsigned p2 = qfa_exp2_h2(x2);
              s[mt][nt][2 * h] = __uint_as_float(p2);
              acc = qfa_hadd2(acc, p2);
            }
            sum[h] += qfa_h2sum(acc);
          }"#,
                ["__float_as_uint(s[mt][2 * kc][0])", "__float_as_uint(s[mt][2 * kc][2])", "__float_as_uint(s[mt][2 * kc + 1][0])", "__float_as_uint(s[mt][2 * kc + 1][2])"].map(String::from),
            )
        } else {
            (
                r#"#pragma unroll
          for (int nt = 0; nt < BW / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              s[mt][nt][e] = qfa_exp2(fmaf(s[mt][nt][e], factor, -base[e >> 1]));
              sum[e >> 1] += s[mt][nt][e];
            }
          }"#,
                [
                    format!("{pack}(s[mt][2 * kc][0], s[mt][2 * kc][1])"),
                    format!("{pack}(s[mt][2 * kc][2], s[mt][2 * kc][3])"),
                    format!("{pack}(s[mt][2 * kc + 1][0], s[mt][2 * kc + 1][1])"),
                    format!("{pack}(s[mt][2 * kc + 1][2], s[mt][2 * kc + 1][3])"),
                ],
            )
        };
        let [pf0, pf1, pf2, pf3] = p_frag;
        let mut args = format!("const QParams p, {}* __restrict__ out, const unsigned short* __restrict__ q, const unsigned short* __restrict__ k, const unsigned short* __restrict__ v", self.out.storage());
        let mut call = "p, out, q, k, v".to_string();
        let mut mask_offset = String::new();
        let mut mask_term = String::new();
        if let Some(mc) = self.mask {
            args += &format!(", const {}* __restrict__ mask", mc.storage());
            call += ", mask";
            // Offset of this problem's mask plane: its coordinates over the lead dims.
            mask_offset += "    long long m0 = 0, r_ = pidx;\n";
            for d in (0..lead).rev() {
                mask_offset += &format!("    m0 += (r_ % p.v[{dim}]) * p.v[{st}]; r_ /= p.v[{dim}];\n", dim = 23 + d, st = 23 + lead + d);
            }
            mask_term = format!(
                "                  if (i < N && j < M) x += 1.4426950408889634f * {};\n",
                mc.load("mask[m0 + i * p.v[20] + j * p.v[21]]")
            );
        }
        let st = self.out.store("o[mt][dt][e] * inv[mt][e >> 1]");
        // Without a mask the max is taken over raw scores and the scale is folded into the
        // exponent (one FFMA per score): exact for scale > 0; otherwise (and with a mask, which
        // is added after scaling) scores are scaled first and the factor is 1.
        let (prescale, factor) = if self.mask.is_some() { ("true", "1.0f") } else { ("sl2 <= 0.0f", "(sl2 > 0.0f ? sl2 : 1.0f)") };
        let dispatch = if narrow {
            format!("  if ((int)p.v[5] <= {dp} - 8 && (int)p.v[6] <= {dp} - 8) {name}_body<true>(smem, {call});\n  else {name}_body<false>(smem, {call});")
        } else {
            format!("  {name}_body<false>(smem, {call});")
        };
        // Key groups: which warps share a row group, and the merge of their softmax states.
        let groups = if splits == 1 { "const int rg = warp, ks = 0;" } else { "const int rg = warp % R, ks = warp / R;" };
        let merge = if splits == 1 { String::new() } else { MERGE.to_string() };
        // A warp's key slice of 16 (not a multiple of 32) leaves one ldmatrix of 2 key tiles for
        // the last 8 columns.
        let kt_rest = if cfg.warp_keys().is_multiple_of(32) {
            ""
        } else {
            r#"          {
            unsigned kf[2];
            qfa_ldsm2(kf, qfa_saddr(sk + (BW / 32 * 32 + (lane & 15)) * LD + KS * 16));
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
              for (int x = 0; x < 2; ++x) MMA8(s[mt][BW / 32 * 4 + x], qt[mt], kf[x]);
          }
"#
        }
        .replace("MMA8", mma8);
        let body = format!(
            r#"{HELPERS}// NARROW: the true head dims leave the bucket's last 8 columns unused, so they are skipped.
template <bool NARROW>
__device__ __forceinline__ void {name}_body(unsigned short* smem, {args}) {{
  // S key groups of R warps; each warp takes BW keys of every tile.
  constexpr int DP = {dp}, LD = {ld}, BN = {bn}, MT = {mt}, ST = {stages}, S = {splits}, R = {warps} / S, BW = BN / S, BM = R * 16 * MT;
  // Columns computed: KS steps of 16 (m16n8k16), then KT = 1 step of 8 (m16n8k8); NT output
  // tiles of 8 columns; C chunks of 8 elements copied per row.
  constexpr int KD = NARROW ? DP - 8 : DP, KS = KD / 16, NT = KD / 8, C = KD / 8;
  constexpr bool KT = KD % 16 != 0;
  const float ninf = __int_as_float(0xff800000);
  const long long H = p.v[2], N = p.v[3], M = p.v[4];
  const int D = (int)p.v[5], Dv = (int)p.v[6];
  const float sl2 = (float)q_pd(p.v[19]);
  const bool prescale = {prescale};
  const float factor = {factor};
  const bool vec = p.v[22] != 0;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
  {groups}
  const long long ntiles = (M + BN - 1) / BN;
  const long long qtiles = (N + BM - 1) / BM, total = (p.v[0] / p.v[1]) * qtiles;
  for (long long blk = blockIdx.x; blk < total; blk += gridDim.x) {{
    const long long pidx = blk / qtiles, i0 = (blk - pidx * qtiles) * BM;
    const long long b = pidx / H, h = pidx - b * H;
    const unsigned short* qb = q + b * p.v[7] + h * p.v[11];
    const unsigned short* kb = k + b * p.v[8] + h * p.v[12];
    const unsigned short* vb = v + b * p.v[9] + h * p.v[13];
    const long long o0 = b * p.v[10] + h * p.v[14];
{mask_offset}    // This warp's MT tiles of 16 query rows.
    const long long wrow = i0 + rg * 16 * MT;
    // Warps whose rows all lie past N only help load tiles.
    const bool active = wrow < N;
    qfa_load_rows<C, LD>(smem, qb, i0, BM, N, p.v[15], D, vec);
    qfa_commit();
    qfa_wait<0>();
    __syncthreads();
    unsigned qf[MT][KS][4], qt[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {{
#pragma unroll
      for (int kk = 0; kk < KS; ++kk)
        qfa_ldsm(qf[mt][kk], qfa_saddr(smem + ((rg * MT + mt) * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + kk * 16 + (lane >> 4) * 8));
      if (KT) qfa_ldsm2(qt[mt], qfa_saddr(smem + ((rg * MT + mt) * 16 + (lane & 15)) * LD + KS * 16));
    }}
    __syncthreads();
    float o[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int dt = 0; dt < NT; ++dt) o[mt][dt][0] = o[mt][dt][1] = o[mt][dt][2] = o[mt][dt][3] = 0.0f;
    // Per row (g and g + 8 of each tile): running max of scores·factor (log2 units) and this
    // thread's partial sum.
    float mr[MT][2], lr[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {{ mr[mt][0] = mr[mt][1] = ninf; lr[mt][0] = lr[mt][1] = 0.0f; }}
    // Key/value tiles 0 .. ST-2 start loading, one commit group each (empty past the last).
#pragma unroll
    for (int s0 = 0; s0 < ST - 1; ++s0) {{
      if (s0 < ntiles) {{
        unsigned short* nk = smem + s0 * 2 * BN * LD;
        qfa_load_rows<C, LD>(nk, kb, (long long)s0 * BN, BN, M, p.v[16], D, vec);
        qfa_load_rows<C, LD>(nk + BN * LD, vb, (long long)s0 * BN, BN, M, p.v[17], Dv, vec);
      }}
      qfa_commit();
    }}
    int stage = 0;
    for (long long jt = 0; jt < ntiles; ++jt) {{
      const long long j0 = jt * BN + ks * BW;
      // Tile jt has landed (at most ST - 2 younger groups pending), and after the barrier every
      // warp is done with tile jt - 1, whose stage the load of tile jt + ST - 1 reuses.
      qfa_wait<ST - 2>();
      __syncthreads();
      {{
        const long long jn = jt + ST - 1;
        const int ns = stage == 0 ? ST - 1 : stage - 1;
        if (jn < ntiles) {{
          unsigned short* nk = smem + ns * 2 * BN * LD;
          qfa_load_rows<C, LD>(nk, kb, jn * BN, BN, M, p.v[16], D, vec);
          qfa_load_rows<C, LD>(nk + BN * LD, vb, jn * BN, BN, M, p.v[17], Dv, vec);
        }}
        qfa_commit();
      }}
      // This warp's key slice of the tile's K and V.
      const unsigned short* sk = smem + stage * 2 * BN * LD + ks * BW * LD;
      const unsigned short* sv = sk + BN * LD;
      stage = stage + 1 == ST ? 0 : stage + 1;
      if (active) {{
        float s[MT][BW / 8][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int nt = 0; nt < BW / 8; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
        // Each K fragment feeds the MT row tiles.
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {{
#pragma unroll
          for (int n2 = 0; n2 < BW / 16; ++n2) {{
            unsigned kf[4];
            qfa_ldsm(kf, qfa_saddr(sk + (n2 * 16 + (lane & 7) + (lane >> 4) * 8) * LD + kk * 16 + ((lane >> 3) & 1) * 8));
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {{
              {mma}(s[mt][2 * n2], qf[mt][kk], kf[0], kf[1]);
              {mma}(s[mt][2 * n2 + 1], qf[mt][kk], kf[2], kf[3]);
            }}
          }}
        }}
        if (KT) {{
          // The last 8 columns: one ldmatrix gives the B fragments of 4 key tiles.
#pragma unroll
          for (int n4 = 0; n4 < BW / 32; ++n4) {{
            unsigned kf[4];
            qfa_ldsm(kf, qfa_saddr(sk + (n4 * 32 + lane) * LD + KS * 16));
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
              for (int x = 0; x < 4; ++x) {mma8}(s[mt][4 * n4 + x], qt[mt], kf[x]);
          }}
{kt_rest}        }}
        const bool tail = j0 + BW > M;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {{
          if (prescale || tail) {{
            // Scores in log2 units plus the mask (prescale), and -inf for keys past M.
#pragma unroll
            for (int nt = 0; nt < BW / 8; ++nt) {{
#pragma unroll
              for (int e = 0; e < 4; ++e) {{
                const long long i = wrow + mt * 16 + g + (e >> 1) * 8, j = j0 + nt * 8 + 2 * t4 + (e & 1);
                float x = s[mt][nt][e];
                if (prescale) {{
                  x *= sl2;
{mask_term}                }}
                if (tail && j >= M) x = ninf;
                s[mt][nt][e] = x;
                (void)i;
              }}
            }}
          }}
          float mx[2] = {{ninf, ninf}};
#pragma unroll
          for (int nt = 0; nt < BW / 8; ++nt) {{
            mx[0] = fmaxf(mx[0], fmaxf(s[mt][nt][0], s[mt][nt][1]));
            mx[1] = fmaxf(mx[1], fmaxf(s[mt][nt][2], s[mt][nt][3]));
          }}
          float corr[2], base[2], sum[2] = {{0.0f, 0.0f}};
#pragma unroll
          for (int r = 0; r < 2; ++r) {{
            // The four lanes of a quad share a row.
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            const float mnew = fmaxf(mr[mt][r], mx[r] * factor);
            // A row with only -inf so far subtracts 0, so exp2 gives 0 rather than NaN.
            base[r] = mnew == ninf ? 0.0f : mnew;
            corr[r] = qfa_exp2(mr[mt][r] - base[r]);
            mr[mt][r] = mnew;
          }}
          {exp_loop}
          lr[mt][0] = lr[mt][0] * corr[0] + sum[0];
          lr[mt][1] = lr[mt][1] * corr[1] + sum[1];
#pragma unroll
          for (int dt = 0; dt < NT; ++dt) {{
            o[mt][dt][0] *= corr[0]; o[mt][dt][1] *= corr[0];
            o[mt][dt][2] *= corr[1]; o[mt][dt][3] *= corr[1];
          }}
        }}
        // O += P·V: two adjacent 8-key score tiles form one 16-key A fragment; each V
        // fragment feeds the MT row tiles.
#pragma unroll
        for (int kc = 0; kc < BW / 16; ++kc) {{
          unsigned a[MT][4];
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {{
            a[mt][0] = {pf0};
            a[mt][1] = {pf1};
            a[mt][2] = {pf2};
            a[mt][3] = {pf3};
          }}
#pragma unroll
          for (int d2 = 0; d2 < NT / 2; ++d2) {{
            unsigned vf[4];
            qfa_ldsm_t(vf, qfa_saddr(sv + (kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + d2 * 16 + (lane >> 4) * 8));
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {{
              {mma}(o[mt][2 * d2], a[mt], vf[0], vf[1]);
              {mma}(o[mt][2 * d2 + 1], a[mt], vf[2], vf[3]);
            }}
          }}
          if (NT % 2) {{
            // An odd last output tile of 8 columns.
            unsigned vf[2];
            qfa_ldsm2_t(vf, qfa_saddr(sv + (kc * 16 + (lane & 15)) * LD + (NT - 1) * 8));
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {mma}(o[mt][NT - 1], a[mt], vf[0], vf[1]);
          }}
        }}
      }}
    }}
{merge}    float inv[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {{
#pragma unroll
      for (int r = 0; r < 2; ++r) {{
        float l = lr[mt][r] + __shfl_xor_sync(0xffffffffu, lr[mt][r], 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        // No keys: zeros (as the CPU reference); a row whose scores are all -inf: 0/0 = NaN (same).
        inv[mt][r] = M == 0 ? 0.0f : 1.0f / l;
      }}
    }}
    if (active && ks == 0) {{
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {{
#pragma unroll
        for (int dt = 0; dt < NT; ++dt) {{
#pragma unroll
          for (int e = 0; e < 4; ++e) {{
            const long long i = wrow + mt * 16 + g + (e >> 1) * 8;
            const int c = dt * 8 + 2 * t4 + (e & 1);
            if (i < N && c < Dv) out[o0 + i * p.v[18] + c] = {st};
          }}
        }}
      }}
    }}
    // The next block's query tile overwrites stages other warps may still read.
    __syncthreads();
  }}
}}
extern "C" __global__ void __launch_bounds__({threads}, {min_blocks}) {name}({args}) {{
  // Declared here, not in the body: each instantiation of the body would get its own copy.
  __shared__ __align__(16) unsigned short smem[{smem_elems}];
{dispatch}
}}
"#,
            smem_elems = cfg.smem_bytes(dp) / 2,
        );
        Kernel { name, body }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_sd_head_dims() {
        assert_eq!(bucket(40), Some(48));
        assert_eq!(bucket(64), Some(64));
        assert_eq!(bucket(80), Some(80));
        assert_eq!(bucket(100), Some(128));
        assert_eq!(bucket(160), Some(160));
        assert_eq!(bucket(161), None);
        assert_eq!(bucket(1), Some(16));
        for b in BUCKETS {
            // The default K/V stages (and the query staging tile) fit 48 KB of static shared memory.
            assert_eq!(default_config(b).check(b), Ok(()), "bucket {b}");
            assert_eq!(b % 16, 0);
            // Rows of an odd number of 16-byte chunks: conflict-free ldmatrix.
            assert_eq!((Config::row_len(b) / 8) % 2, 1, "bucket {b}");
        }
    }

    #[test]
    fn forced_configs_are_checked_scoped_and_reach_the_kernel() {
        let forced = Config { row_tiles: 1, keys: 64, stages: 3, min_blocks: 2, exact: false, half_exp: false, warps: 8, splits: 1 };
        let v = FlashVariant { dtype: DType::F16, bucket: 48, mask: None, out: CType::of(DType::F16) };
        let src = with_config(forced, 48, || {
            assert_eq!(block_rows(48), 128);
            // A bucket the forced config cannot hold (3 stages of 64 keys at 160) keeps its default.
            assert_eq!(config(160), default_config(160));
            v.kernel("q", 1).body
        })
        .unwrap();
        assert!(src.contains("ST = 3") && src.contains("__launch_bounds__(256, 2)") && !src.contains("_body<true>"), "{src}");
        assert_eq!(config(48), default_config(48), "restored");
        assert_eq!(block_rows(48), 256);
        // The default 48 bucket skips the unused last 8 columns when the head dim is 40 (not with
        // a mask).
        assert!(v.kernel("q", 1).body.contains("_body<true>"));
        let masked = FlashVariant { mask: Some(CType::of(DType::F16)), ..v };
        assert!(!masked.kernel("q", 1).body.contains("_body<true>"));
        let too_big = Config { keys: 128, ..forced };
        assert!(with_config(too_big, 48, || ()).unwrap_err().contains("shared memory"));
        let odd = Config { keys: 48, ..forced };
        assert!(with_config(odd, 48, || ()).is_err());
        let r = std::panic::catch_unwind(|| with_config(forced, 48, || panic!("inside")));
        assert!(r.is_err());
        assert_eq!(config(48), default_config(48), "restored after a panic");
    }

    #[test]
    fn only_one_16_bit_dtype_for_q_k_v() {
        assert!(supports(DType::F16, DType::F16, DType::F16));
        assert!(supports(DType::BF16, DType::BF16, DType::BF16));
        assert!(!supports(DType::F32, DType::F32, DType::F32));
        assert!(!supports(DType::F16, DType::BF16, DType::F16));
    }
}
