//! The CUDA C text of a stitched region's kernels.
//!
//! Every kernel holds up to three index paths over one loop structure, chosen per launch from
//! params (block-uniform, so barriers inside stay legal):
//!
//! - *wide*: 64-bit coordinates from `mod.rs`'s `decompose` (any size; the code before 32-bit
//!   indexing, also forced by `QUILT_INDEX64=1`);
//! - *narrow*: `unsigned` indices over collapsed axes with multiply-shift division (`index`);
//! - *vector*: narrow, `V` consecutive elements per thread with one 16-byte (or narrower) load
//!   per input that varies along the innermost axis, a broadcast scalar for inputs constant
//!   along it, and vector stores. Taken when the host found the innermost collapsed extent (and
//!   row length) divisible by `V` and every pointer 16-byte aligned.

use quilt_rewrites::ir::{Operand, RegionOp, StitchedRegion};

use super::super::{decompose, lit, CType};
use super::{elementwise, index};

/// How a loop walks its indices.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Path {
    Wide,
    Narrow,
    Vector(usize),
}

impl Path {
    pub fn ix(self) -> &'static str {
        match self {
            Path::Wide => "long long",
            _ => "unsigned",
        }
    }
}

/// Param positions relative to a kernel's head (`h`): dims at `h`, 64-bit strides after them,
/// then the narrow data, the vector flag, and the channels-last group params.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub rank: usize,
    pub inputs: usize,
    /// Whether the narrow data and the vector flag are present.
    pub narrow: bool,
    pub channels_last: bool,
}

impl Layout {
    pub fn wide_slots(&self) -> usize {
        self.rank + self.rank * self.inputs
    }
    pub fn narrow_at(&self) -> usize {
        self.wide_slots()
    }
    pub fn vector_at(&self) -> usize {
        self.narrow_at() + index::slots(self.rank, self.inputs)
    }
    /// The warp-per-row flag of normalizing kernels (vector path).
    pub fn warp_at(&self) -> usize {
        self.vector_at() + 1
    }
    /// `G` then the `C/G` divisor slot.
    pub fn groups_at(&self) -> usize {
        if self.narrow {
            self.vector_at() + 2
        } else {
            self.wide_slots()
        }
    }
    pub fn tail_slots(&self) -> usize {
        self.groups_at() + if self.channels_last { 2 } else { 0 }
    }
    /// The param holding input `k`'s stride along the innermost collapsed axis (low half).
    fn inner_stride_at(&self, k: usize) -> usize {
        self.narrow_at() + 1 + self.rank.max(1) + k * self.rank.max(1).div_ceil(2)
    }
}

pub struct Text<'a> {
    pub region: &'a StitchedRegion,
    pub ins: Vec<CType>,
    pub outs: Vec<CType>,
    /// The compute type.
    pub c: CType,
    pub layout: Layout,
    /// Elements per thread of the vector path (1: none).
    pub vlen: usize,
}

impl Text<'_> {
    fn operand(o: &Operand) -> String {
        match *o {
            Operand::Input(k) => format!("a{k}"),
            Operand::Node(j) => format!("t{j}"),
        }
    }

    /// The opening of a kernel: its narrow-axis count `nax_` (0 selects the wide path), the
    /// vector decision `vec_`, and the channels-last group params `G_`, `cpg_`.
    pub fn prologue(&self, h: usize) -> String {
        let l = &self.layout;
        let mut s = String::new();
        if l.narrow {
            s += &format!("  const unsigned nax_ = q_lo(p.v[{}]);\n", h + l.narrow_at());
            let mut ptrs: Vec<String> = (0..self.outs.len()).map(|k| format!("(unsigned long long)out{k}")).collect();
            ptrs.extend((0..self.ins.len()).map(|k| format!("(unsigned long long)in{k}")));
            // Whether every pointer allows 16-byte vector access.
            s += &format!("  const bool al_ = (({}) & 15ull) == 0ull;\n", ptrs.join(" | "));
            if self.vlen > 1 {
                s += &format!("  const bool vec_ = nax_ != 0u && p.v[{}] != 0 && al_;\n", h + l.vector_at());
            }
        }
        if l.channels_last {
            s += &format!("  const long long G_ = p.v[{}], cpg_ = q_lo(p.v[{}]);\n", h + l.groups_at(), h + l.groups_at() + 1);
        }
        s
    }

    /// `if (vec_) {…} else if (nax_) {…} else {…}` over the paths this kernel has, each body
    /// made by `body`.
    pub fn dispatch(&self, body: impl Fn(Path) -> Result<String, String>) -> Result<String, String> {
        let mut s = String::new();
        if self.layout.narrow {
            if self.vlen > 1 {
                s += &format!("  if (vec_) {{\n{}  }} else ", body(Path::Vector(self.vlen))?);
            } else {
                s += "  ";
            }
            s += &format!("if (nax_ != 0u) {{\n{}  }} else {{\n{}  }}\n", body(Path::Narrow)?, body(Path::Wide)?);
        } else {
            s += &format!("  {{\n{}  }}\n", body(Path::Wide)?);
        }
        Ok(s)
    }

    /// Loads and node values of element `i` (in scope, of `path.ix()`): nodes before `upto`,
    /// the normalization as `normalized` (with `X` for its operand). Returns the code that opens
    /// the element (for the vector path: up to inside the per-lane loop, where `a{k}` and `t{j}`
    /// are lane values) and the code that closes it (the vector path's stores when `store`).
    pub fn element(&self, h: usize, path: Path, upto: usize, normalized: Option<&str>, store: bool, indent: &str) -> Result<(String, String), String> {
        let l = &self.layout;
        let names: Vec<String> = (0..self.ins.len()).map(|k| format!("o{k}")).collect();
        let offsets = match path {
            Path::Wide => {
                let refs: Vec<(&str, usize)> = names.iter().enumerate().map(|(k, n)| (n.as_str(), h + l.rank + k * l.rank)).collect();
                decompose(l.rank, h, &refs).lines().map(|x| format!("{indent}{}\n", x.trim_start())).collect()
            }
            Path::Narrow | Path::Vector(_) => index::offsets(l.rank, h + l.narrow_at(), &names, indent),
        };
        self.element_at(h, offsets, path, upto, normalized, store, false, indent)
    }

    /// `element` with the inputs' offsets `o{k}` computed by `offsets` (statements at `indent`).
    /// `direct` (vector path only): every input varies along the vector and every pointer is
    /// 16-byte aligned, so loads and stores are plain vector accesses with no branch around them
    /// (which lets an unrolled loop issue several positions' loads at once).
    #[allow(clippy::too_many_arguments)]
    fn element_at(&self, h: usize, offsets: String, path: Path, upto: usize, normalized: Option<&str>, store: bool, direct: bool, indent: &str) -> Result<(String, String), String> {
        let l = &self.layout;
        let cc = self.c.compute();
        let mut open = offsets;
        let mut close = String::new();
        let lane_indent = match path {
            Path::Vector(v) => {
                for (k, ct) in self.ins.iter().enumerate() {
                    let st = ct.storage();
                    if direct {
                        open += &format!("{indent}const QVec<{st}, {v}> x{k} = *reinterpret_cast<const QVec<{st}, {v}>*>(in{k} + o{k});\n");
                        continue;
                    }
                    open += &format!("{indent}QVec<{st}, {v}> x{k};\n");
                    open += &format!(
                        "{indent}if (q_lo(p.v[{}]) == 1u) {{\n{indent}  if (al_) x{k} = *reinterpret_cast<const QVec<{st}, {v}>*>(in{k} + o{k});\n{indent}  else {{\n{indent}#pragma unroll\n{indent}    for (int e_ = 0; e_ < {v}; ++e_) x{k}.x[e_] = in{k}[o{k} + e_];\n{indent}  }}\n{indent}}} else {{\n{indent}  const {st} b_ = in{k}[o{k}];\n{indent}#pragma unroll\n{indent}  for (int e_ = 0; e_ < {v}; ++e_) x{k}.x[e_] = b_;\n{indent}}}\n",
                        h + l.inner_stride_at(k)
                    );
                }
                if store {
                    for (k, ct) in self.outs.iter().enumerate() {
                        open += &format!("{indent}QVec<{}, {v}> y{k};\n", ct.storage());
                        if direct {
                            close += &format!("{indent}*reinterpret_cast<QVec<{st}, {v}>*>(out{k} + i) = y{k};\n", st = ct.storage());
                            continue;
                        }
                        close += &format!("{indent}if (al_) *reinterpret_cast<QVec<{st}, {v}>*>(out{k} + i) = y{k};\n{indent}else {{\n{indent}#pragma unroll\n{indent}  for (int e_ = 0; e_ < {v}; ++e_) out{k}[i + e_] = y{k}.x[e_];\n{indent}}}\n", st = ct.storage());
                    }
                }
                open += &format!("{indent}#pragma unroll\n{indent}for (int e_ = 0; e_ < {v}; ++e_) {{\n");
                close = format!("{indent}}}\n{close}");
                format!("{indent}  ")
            }
            _ => indent.to_string(),
        };
        for (k, ct) in self.ins.iter().enumerate() {
            let raw = match path {
                Path::Vector(_) => format!("x{k}.x[e_]"),
                _ => format!("in{k}[o{k}]"),
            };
            open += &format!("{lane_indent}{cc} a{k} = ({cc}){};\n", ct.load(&raw));
        }
        let fast = super::super::elementwise::fast_math(self.c, &self.outs);
        for (j, node) in self.region.nodes.iter().enumerate().take(upto) {
            let args: Vec<String> = node.args.iter().map(Self::operand).collect();
            let e = match &node.op {
                RegionOp::Elementwise(op) => elementwise(op, self.c, &args, fast).map_err(|e| format!("node {j}: {e}"))?,
                RegionOp::Normalize { .. } => match normalized {
                    Some(n) => n.replace("X", &args[0]),
                    None => return Err("internal: normalized value outside the apply pass".into()),
                },
            };
            open += &format!("{lane_indent}{cc} t{j} = {e};\n");
        }
        if store {
            for (k, o) in self.region.outputs.iter().enumerate() {
                let v = self.outs[k].store(&format!("t{}", o.node));
                open += &match path {
                    Path::Vector(_) => format!("{lane_indent}y{k}.x[e_] = {v};\n"),
                    _ => format!("{lane_indent}out{k}[i] = {v};\n"),
                };
            }
        }
        Ok((open, close))
    }

    /// The indentation inside `element`'s opening (where per-lane code such as statistics goes).
    pub fn lane_indent(path: Path, indent: &str) -> String {
        match path {
            Path::Vector(_) => format!("{indent}  "),
            _ => indent.to_string(),
        }
    }

    /// Elementwise regions: a grid-stride loop over every element (vector path: every group of
    /// `V` elements).
    pub fn elementwise_body(&self, h: usize) -> Result<String, String> {
        let n = self.region.nodes.len();
        self.dispatch(|path| {
            let (open, close) = self.element(h, path, n, None, true, "      ")?;
            let head = match path {
                Path::Wide => "    Q_LOOP(p.v[0]) {\n".to_string(),
                Path::Narrow => "    const unsigned n_ = (unsigned)p.v[0];\n    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n_; i += gridDim.x * blockDim.x) {\n".to_string(),
                Path::Vector(v) => format!("    const unsigned n_ = (unsigned)p.v[0] / {v}u;\n    for (unsigned w_ = blockIdx.x * blockDim.x + threadIdx.x; w_ < n_; w_ += gridDim.x * blockDim.x) {{\n      const unsigned i = w_ * {v}u;\n"),
            };
            Ok(format!("{head}{open}{close}    }}\n"))
        })
    }

    /// Row setup inside a row or chunk loop (`row`, `L` in scope): `rb_`, the row's first
    /// element (contiguous rows) or its first element's batch and group base (channels-last).
    pub fn row_base(&self, path: Path, indent: &str) -> String {
        let ix = path.ix();
        if self.layout.channels_last {
            format!("{indent}const {ix} rb_ = (row / ({ix})G_) * (L * ({ix})G_) + (row % ({ix})G_) * ({ix})cpg_;\n")
        } else {
            format!("{indent}const {ix} rb_ = row * L;\n")
        }
    }

    /// A loop over the row's elements `[beg, end)` (per thread: `k_`, and its domain index `i`).
    pub fn row_loop(&self, h: usize, path: Path, beg: &str, end: &str, indent: &str) -> String {
        self.row_loop_by(h, path, beg, end, ("threadIdx.x", "blockDim.x"), indent)
    }

    /// `row_loop` shared by `threads.1` threads, this one being `threads.0`.
    fn row_loop_by(&self, h: usize, path: Path, beg: &str, end: &str, threads: (&str, &str), indent: &str) -> String {
        let ix = path.ix();
        let (tid, nthreads) = threads;
        match path {
            Path::Vector(v) => format!("{indent}for (unsigned k_ = {beg} + {tid} * {v}u; k_ < {end}; k_ += {nthreads} * {v}u) {{\n{indent}  const unsigned i = rb_ + k_;\n"),
            _ if self.layout.channels_last => {
                // Element k_ of the row: spatial position k_ / (C/G), channel k_ % (C/G) of the group.
                let div = match path {
                    Path::Narrow => format!("q_div32(k_, p.v[{}])", h + self.layout.groups_at() + 1),
                    _ => "k_ / cpg_".to_string(),
                };
                format!("{indent}for ({ix} k_ = {beg} + {tid}; k_ < {end}; k_ += {nthreads}) {{\n{indent}  const {ix} sp_ = {div};\n{indent}  const {ix} i = rb_ + sp_ * ({ix})(G_ * cpg_) + (k_ - sp_ * ({ix})cpg_);\n")
            }
            _ => format!("{indent}for ({ix} k_ = {beg} + {tid}; k_ < {end}; k_ += {nthreads}) {{\n{indent}  const {ix} i = rb_ + k_;\n"),
        }
    }

    /// One block per row: mean, squared deviations, then normalize and run every node.
    pub fn rows_body(&self, h: usize, k: usize, x: &str, eps: f32) -> Result<String, String> {
        let cc = self.c.compute();
        let eps = lit(eps as f64, cc);
        let sqrt = self.c.math("sqrt");
        let n = self.region.nodes.len();
        // `warp`: one warp per row (short rows, many of them: LayerNorm), else one block per row.
        let body = |path: Path, warp: bool| -> Result<String, String> {
            let ix = path.ix();
            let li = Self::lane_indent(path, "        ");
            let (rows_from, rows_step, threads, reduce) = if warp {
                ("blockIdx.x * (blockDim.x / 32u) + threadIdx.x / 32u", "gridDim.x * (blockDim.x / 32u)", ("(threadIdx.x % 32u)", "32u"), "q_warp_sum")
            } else {
                ("blockIdx.x", "gridDim.x", ("threadIdx.x", "blockDim.x"), "q_block_sum")
            };
            let mut s = format!("    for ({ix} row = {rows_from}; row < ({ix})p.v[0]; row += {rows_step}) {{\n      const {ix} L = ({ix})p.v[1];\n");
            s += &self.row_base(path, "      ");
            // Passes 1 and 2 evaluate the nodes before the norm (its prologue, and any
            // independent node that happens to come earlier: cheap, and side-effect free).
            let (open, close) = self.element(h, path, k, None, false, "        ")?;
            s += &format!("      {cc} s_ = 0;\n");
            s += &self.row_loop_by(h, path, "0", "L", threads, "      ");
            s += &format!("{open}{li}s_ += {x};\n{close}      }}\n");
            s += &format!("      const {cc} mean_ = {reduce}(s_) / ({cc})L;\n      {cc} v_ = 0;\n");
            s += &self.row_loop_by(h, path, "0", "L", threads, "      ");
            s += &format!("{open}{li}const {cc} d_ = {x} - mean_; v_ += d_ * d_;\n{close}      }}\n");
            s += &format!("      const {cc} rstd_ = ({cc})1 / {sqrt}({reduce}(v_) / ({cc})L + {eps});\n");
            let (open, close) = self.element(h, path, n, Some("((X - mean_) * rstd_)"), true, "        ")?;
            s += &self.row_loop_by(h, path, "0", "L", threads, "      ");
            s += &format!("{open}{close}      }}\n    }}\n");
            Ok(s)
        };
        self.dispatch(|path| match path {
            Path::Vector(_) => Ok(format!("    if (p.v[{}] != 0) {{\n{}    }} else {{\n{}    }}\n", h + self.layout.warp_at(), body(path, true)?, body(path, false)?)),
            _ => body(path, false),
        })
    }

    /// Split statistics, kernel 1: per (row, chunk) block, shifted sums per thread (see
    /// [`shifted_sums`]), merged per block with Chan's formula.
    pub fn partials_body(&self, h: usize, k: usize, x: &str) -> Result<String, String> {
        let cc = self.c.compute();
        self.dispatch(|path| {
            let li = Self::lane_indent(path, "        ");
            let mut s = super::split::block_loop(path);
            s += &self.row_base(path, "      ");
            // Names unlike the element code's (`k_` is the row loop's index, `q_` the index code's).
            s += &format!("      {cc} n_ = 0, sk_ = 0, ss_ = 0, sq_ = 0;\n");
            let (open, close) = self.element(h, path, k, None, false, "        ")?;
            s += &self.row_loop(h, path, "beg_", "end_", "      ");
            s += &format!("{open}{li}const {cc} x_ = {x}; if (n_ == ({cc})0) sk_ = x_; n_ += ({cc})1; const {cc} d_ = x_ - sk_; ss_ += d_; sq_ = fma(d_, d_, sq_);\n{close}      }}\n");
            s += &format!("      {cc} m_, v_;\n      {}\n", shifted_sums(cc, "n_", "sk_", "ss_", "sq_", "m_", "v_"));
            s += "      q_wf_block(n_, m_, v_);\n      if (threadIdx.x == 0) { part[2 * blk] = m_; part[2 * blk + 1] = v_; }\n    }\n";
            Ok(s)
        })
    }

    /// Split statistics, kernel 2: merge the row's partials (chunk counts follow from the
    /// indices), then normalize this chunk and run the epilogue.
    pub fn apply_body(&self, h: usize, eps: f32) -> Result<String, String> {
        let cc = self.c.compute();
        let eps = lit(eps as f64, cc);
        let sqrt = self.c.math("sqrt");
        let n = self.region.nodes.len();
        self.dispatch(|path| {
            let ix = path.ix();
            let mut s = super::split::block_loop(path);
            s += &self.row_base(path, "      ");
            s += &format!("      {cc} n_ = 0, m_ = 0, v_ = 0;\n      for ({ix} c_ = threadIdx.x; c_ < C; c_ += blockDim.x) {{\n");
            s += &format!("        const {ix} cb_ = c_ * CL; const {ix} cn_ = cb_ >= L ? 0 : (cb_ + CL < L ? CL : L - cb_);\n");
            s += &format!("        q_wf_add(n_, m_, v_, ({cc})cn_, part[2 * (row * C + c_)], part[2 * (row * C + c_) + 1]);\n      }}\n");
            s += &format!("      q_wf_block(n_, m_, v_);\n      const {cc} mean_ = m_, rstd_ = ({cc})1 / {sqrt}(v_ / ({cc})L + {eps});\n");
            let (open, close) = self.element(h, path, n, Some("((X - mean_) * rstd_)"), true, "        ")?;
            s += &self.row_loop(h, path, "beg_", "end_", "      ");
            s += &format!("{open}{close}      }}\n    }}\n");
            Ok(s)
        })
    }
}

/// Channels-last GroupNorm statistics that read memory in order: a block per (batch entry,
/// chunk of spatial positions) walks its `[positions, C]` slab with `V`-channel vectors, each
/// thread at one fixed vector column (so its `V` lanes always hold the same channels, hence the
/// same groups), shifted sums per lane (one count per thread); the block then sums each group's
/// channels in shared memory (a warp per group) and stores one `(K, S, Q)` quad per (row, chunk)
/// (`cl_partials_body`). Params: `rows, L, chunks` (rows = N·G, L = S·C/G).
impl Text<'_> {
    /// Shared opening of the channels-last kernels: sizes, the thread's column and row lane.
    fn cl_sizes(&self, v: usize) -> String {
        format!(
            "  const unsigned G = (unsigned)G_, cpg = (unsigned)cpg_, C = G * cpg, rows = (unsigned)p.v[0], L = (unsigned)p.v[1], CH = (unsigned)p.v[2];\n  const unsigned N = rows / G, S = L / cpg, cs = (S + CH - 1u) / CH;\n  const unsigned cols = C / {v}u, lanes_ = blockDim.x / cols, col = threadIdx.x % cols, rl = threadIdx.x / cols;\n  const bool active_ = threadIdx.x < lanes_ * cols;\n"
        )
    }

    /// Per thread, once: each input's strides over (batch, position, channel) of the slab, and
    /// `slab_`, whether every input's spatial axes collapse into one position stride (true for
    /// full tensors and for per-(batch, channel) or per-channel broadcasts, i.e. every SD
    /// GroupNorm). Then each position's offsets are two multiply-adds per input instead of the
    /// 32-bit decomposition over the collapsed domain, which left these kernels instruction-bound
    /// (session 8's profile: 55-62% SM throughput at 13-15% of DRAM bandwidth).
    fn cl_slab_strides(&self, h: usize) -> String {
        let r = self.layout.rank;
        if r < 3 {
            return "  const bool slab_ = false;\n".into();
        }
        // On by default since session 9 (every fixture passed on an H200; UNet b2 64² 7.71 →
        // 7.41 and 7.58 → 7.33 ms); `QUILT_CL_SLAB=0`: every position takes the general
        // decomposition and the checked loop.
        let on = crate::cuda::env::default_on("QUILT_CL_SLAB");
        let mut s = format!("  bool slab_ = {on};\n");
        for k in 0..self.ins.len() {
            let st = |d: usize| format!("p.v[{}]", h + r + k * r + d);
            s += &format!("  const unsigned sn{k} = (unsigned){}, ss{k} = (unsigned){}, sc{k} = (unsigned){};\n", st(0), st(r - 2), st(r - 1));
            for d in 1..r - 2 {
                s += &format!("  slab_ = slab_ && {} == {} * p.v[{}];\n", st(d), st(d + 1), h + d + 1);
            }
        }
        // The branch-free loop (`cl_loops`): slab offsets, aligned pointers, every input varying
        // along the channels (SD's x, per-(batch, channel) bias, per-channel scale and shift).
        let unit: String = (0..self.ins.len()).map(|k| format!(" && sc{k} == 1u")).collect();
        s += &format!("  const bool fast_ = slab_ && al_{unit};\n");
        s
    }

    /// The position loops of the channels-last kernels: a branch-free, unrolled one when
    /// `fast_`, else one with the general offsets and checked loads. `inner` runs per lane
    /// inside the element (after its nodes), `after` per position after it.
    #[allow(clippy::too_many_arguments)]
    fn cl_loops(&self, h: usize, v: usize, upto: usize, normalized: Option<&str>, store: bool, inner: &str, after: &str) -> Result<String, String> {
        let ind = "        ";
        let head = format!("for (unsigned sp_ = s0 + rl; sp_ < s1; sp_ += lanes_) {{\n{ind}const unsigned i = (n * S + sp_) * C + col * {v}u;\n");
        let (open, close) = self.element_at(h, self.cl_offsets(h, v, ind), Path::Vector(v), upto, normalized, store, false, ind)?;
        let general = format!("{head}{open}{inner}{close}{after}      }}\n");
        let mut s = "    if (active_) {\n".to_string();
        if self.layout.rank >= 3 {
            let offsets: String = (0..self.ins.len()).map(|k| format!("{ind}const unsigned o{k} = n * sn{k} + sp_ * ss{k} + col * {v}u * sc{k};\n")).collect();
            let (open, close) = self.element_at(h, offsets, Path::Vector(v), upto, normalized, store, true, ind)?;
            s += &format!("      if (fast_) {{\n{}      {head}{open}{inner}{close}{after}      }}\n      }} else {{\n      {general}      }}\n", cl_unroll());
        } else {
            s += &format!("      {general}");
        }
        s += "    }\n";
        Ok(s)
    }

    /// The inputs' offsets `o{k}` of slab position `sp_` of batch entry `n` at channel `col · v`:
    /// from `cl_slab_strides` when `slab_`, else by the general decomposition of `i`.
    fn cl_offsets(&self, h: usize, v: usize, indent: &str) -> String {
        let k = self.ins.len();
        let names: Vec<String> = (0..k).map(|j| format!("o{j}")).collect();
        if k == 0 || self.layout.rank < 3 {
            // No slab strides below rank 3 (`cl_slab_strides`).
            return index::offsets(self.layout.rank, h + self.layout.narrow_at(), &names, indent);
        }
        let mut s = format!("{indent}unsigned {};\n", names.join(", "));
        s += &format!("{indent}if (slab_) {{\n");
        for j in 0..k {
            s += &format!("{indent}  o{j} = n * sn{j} + sp_ * ss{j} + col * {v}u * sc{j};\n");
        }
        s += &format!("{indent}}} else {{\n");
        let names: Vec<String> = (0..k).map(|j| format!("g{j}")).collect();
        s += &index::offsets(self.layout.rank, h + self.layout.narrow_at(), &names, &format!("{indent}  "));
        for j in 0..k {
            s += &format!("{indent}  o{j} = g{j};\n");
        }
        s += &format!("{indent}}}\n");
        s
    }

    fn cl_block_loop() -> &'static str {
        "  for (unsigned blk = blockIdx.x; blk < N * CH; blk += gridDim.x) {\n    const unsigned n = blk / CH, ch = blk - n * CH, s0 = ch * cs, s1 = s0 + cs < S ? s0 + cs : S;\n"
    }

    /// Per (batch entry, chunk) block: every group's partial `(K, S, Q)` into quad `row · CH + ch`
    /// of `part`: a shift K (the group's first channel at the chunk's first position), `S = Σ(x − K)`
    /// and `Q = Σ(x − K)²` over the group's elements in the chunk. Each thread sums its lanes
    /// shifted by its own first values; moving a thread's sums to the block's shift, and later a
    /// chunk's to the row's, is exact algebra (`cl_shift`) without a division, so the block and
    /// row merges are plain sums. With the shifts drawn from the data, `S/n` stays of the order of
    /// the spread, and `Q − S²/n` loses nothing that matters (the shifted-data algorithm).
    ///
    /// With a `count` array (one zeroed word per batch entry), the block that finishes a batch
    /// entry's last chunk also merges its rows into `stats` (`cl_row_stats`) and puts the word
    /// back to zero, so the separate statistics kernel is not launched.
    pub fn cl_partials_body(&self, h: usize, v: usize, k: usize, x: &str, eps: f32) -> Result<String, String> {
        let cc = self.c.compute();
        let mut s = self.cl_sizes(v);
        s += &self.cl_slab_strides(h);
        s += &format!("  __shared__ {cc} sh_k[{b} * {v}], sh_s[{b} * {v}], sh_q[{b} * {v}];\n  __shared__ bool last_;\n", b = super::super::BLOCK);
        s += "  const unsigned lane_ = threadIdx.x % 32u, warps_ = blockDim.x / 32u;\n";
        s += Self::cl_block_loop();
        // Every lane of a thread sees the same positions, so one count serves all of them.
        s += &format!("    {cc} wn = 0, wk[{v}], ws[{v}], wq[{v}];\n#pragma unroll\n    for (int e_ = 0; e_ < {v}; ++e_) {{ wk[e_] = 0; ws[e_] = 0; wq[e_] = 0; }}\n");
        let inner = format!("          const {cc} x_ = {x}; if (wn == ({cc})0) wk[e_] = x_; const {cc} d_ = x_ - wk[e_]; ws[e_] += d_; wq[e_] = fma(d_, d_, wq[e_]);\n");
        s += &self.cl_loops(h, v, k, None, false, &inner, &format!("        wn += ({cc})1;\n"))?;
        // The block's shifts: the first position's values (lane group rl = 0 holds position s0,
        // and every chunk is non-empty).
        s += &format!("    if (active_ && rl == 0u) {{\n#pragma unroll\n      for (int e_ = 0; e_ < {v}; ++e_) sh_k[col * {v}u + e_] = wk[e_];\n    }}\n    __syncthreads();\n");
        s += &format!(
            "#pragma unroll\n    for (int e_ = 0; e_ < {v}; ++e_) {{\n      const unsigned c = col * {v}u + e_;\n      {cc} s_ = ws[e_], q_ = wq[e_];\n      {}\n      sh_s[threadIdx.x * {v} + e_] = s_; sh_q[threadIdx.x * {v} + e_] = q_;\n    }}\n",
            cl_shift(cc, "wn", "wk[e_] - sh_k[c / cpg * cpg]", "s_", "q_")
        );
        s += "    __syncthreads();\n";
        s += &format!("    for (unsigned g = threadIdx.x / 32u; g < G; g += warps_) {{\n      {cc} s_ = 0, q_ = 0;\n");
        s += &format!("      for (unsigned j = lane_; j < cpg * lanes_; j += 32u) {{\n        const unsigned c = g * cpg + j % cpg, at = (j / cpg * cols + c / {v}u) * {v}u + c % {v}u;\n        s_ += sh_s[at]; q_ += sh_q[at];\n      }}\n");
        s += &format!("      s_ = q_warp_sum(s_); q_ = q_warp_sum(q_);\n      if (lane_ == 0u) {{ {} }}\n    }}\n", quad_store(cc, "(n * G + g) * CH + ch", "sh_k[g * cpg]", "s_", "q_"));
        // The last block of batch entry n: every other block's partials were written and fenced
        // before its increment (the threadFenceReduction pattern); they are read through L2
        // (`__ldcg`).
        s += "    if (count != nullptr) {\n      __threadfence();\n      __syncthreads();\n      if (threadIdx.x == 0u) { last_ = atomicAdd(&count[n], 1u) == CH - 1u; if (last_) count[n] = 0u; }\n      __syncthreads();\n      if (last_) {\n";
        s += &format!("        for (unsigned g0_ = threadIdx.x / 32u * {t}u; g0_ < G; g0_ += warps_ * {t}u) {{\n          const unsigned g = g0_ + lane_ / {team}u, row = n * G + g;\n          const bool live_ = g < G;\n", t = 32 / ROW_TEAM, team = ROW_TEAM);
        s += &self.cl_row_stats(eps, "          ");
        s += "        }\n      }\n    }\n    __syncthreads();\n  }\n";
        Ok(s)
    }

    /// A team of `ROW_TEAM` lanes (`lane_ % ROW_TEAM`, four rows per warp) merges row `row`'s chunk
    /// partials into `stats[2 · row] = mean`, `stats[2 · row + 1] = 1 / sqrt(var + ε)`: every
    /// chunk's sums moved to chunk 0's shift (counts from the chunk bounds), summed, then one
    /// division per row. The whole warp runs it (shuffles); lanes whose `live_` is false (a row
    /// past the end) add nothing and store nothing.
    fn cl_row_stats(&self, eps: f32, ind: &str) -> String {
        let cc = self.c.compute();
        let t = ROW_TEAM;
        let u = crate::cuda::env::usize_or("QUILT_GN_MERGE_BATCH", ROW_MERGE_BATCH);
        let mut s = format!("{ind}{cc} k0_ = 0, s_ = 0, q_ = 0;\n{ind}if (live_) {{\n{ind}  {cc} ks_, kq_;\n{ind}  {}\n", quad_load(cc, "row * CH", "k0_", "ks_", "kq_"));
        // A lane's chunks are k, k + t, k + 2t, ...: `u` of them are loaded before any is merged,
        // so that their L2 round trips overlap (one after another, the ~130 chunks of a batch
        // entry cost 17 round trips per lane at the end of every GroupNorm). Chunks past the end
        // load as zeros and merge as nothing; the live ones are summed in the same order as one by one.
        s += &format!("{ind}  for (unsigned k_ = lane_ % {t}u; k_ < CH; k_ += {}u) {{\n{ind}    {cc} bk_[{u}], bs_[{u}], bq_[{u}];\n", t * u);
        s += &format!("#pragma unroll\n{ind}    for (int u_ = 0; u_ < {u}; ++u_) {{\n{ind}      bk_[u_] = 0; bs_[u_] = 0; bq_[u_] = 0;\n{ind}      if (k_ + {t}u * u_ < CH) {}\n{ind}    }}\n", quad_load(cc, &format!("row * CH + k_ + {t}u * u_"), "bk_[u_]", "bs_[u_]", "bq_[u_]"));
        s += &format!("#pragma unroll\n{ind}    for (int u_ = 0; u_ < {u}; ++u_) {{\n{ind}      const unsigned b_ = (k_ + {t}u * u_) * cs;\n{ind}      const {cc} n_ = ({cc})(k_ + {t}u * u_ >= CH || b_ >= S ? 0u : (b_ + cs < S ? cs : S - b_) * cpg);\n");
        s += &format!("{ind}      {}\n{ind}      s_ += bs_[u_]; q_ += bq_[u_];\n{ind}    }}\n{ind}  }}\n{ind}}}\n", cl_shift(cc, "n_", "bk_[u_] - k0_", "bs_[u_]", "bq_[u_]"));
        s += &format!("{ind}s_ = q_lanes_sum(s_, {t}); q_ = q_lanes_sum(q_, {t});\n");
        s += &format!(
            "{ind}if (live_ && lane_ % {t}u == 0u) {{ const {cc} m_ = s_ / ({cc})L; {cc} v_ = q_ - s_ * m_; if (v_ < ({cc})0) v_ = 0; stats[2u * row] = k0_ + m_; stats[2u * row + 1u] = ({cc})1 / {}(v_ / ({cc})L + {}); }}\n",
            self.c.math("sqrt"),
            lit(eps as f64, cc)
        );
        s
    }

    /// The statistics kernel (when the partials kernel has no `count`): `32 / ROW_TEAM` rows per
    /// warp.
    pub fn cl_finalize_body(&self, v: usize, eps: f32) -> String {
        let mut s = self.cl_sizes(v);
        let per_warp = 32 / ROW_TEAM;
        s += "  (void)N; (void)col; (void)rl; (void)active_; (void)count;\n  const unsigned lane_ = threadIdx.x % 32u, warps_ = blockDim.x / 32u;\n";
        s += &format!("  for (unsigned r0_ = (blockIdx.x * warps_ + threadIdx.x / 32u) * {per_warp}u; r0_ < rows; r0_ += gridDim.x * warps_ * {per_warp}u) {{\n    const unsigned row = r0_ + lane_ / {ROW_TEAM}u;\n    const bool live_ = row < rows;\n");
        s += &self.cl_row_stats(eps, "    ");
        s += "  }\n";
        s
    }

    /// Normalize each (batch entry, chunk) slab in order with its lanes' group statistics, then
    /// run the epilogue and store.
    pub fn cl_apply_body(&self, h: usize, v: usize) -> Result<String, String> {
        let cc = self.c.compute();
        let n = self.region.nodes.len();
        let mut s = self.cl_sizes(v);
        s += &self.cl_slab_strides(h);
        s += Self::cl_block_loop();
        s += &format!("    {cc} mean_[{v}], rstd_[{v}];\n#pragma unroll\n    for (int e_ = 0; e_ < {v}; ++e_) {{ const unsigned r_ = n * G + (col * {v}u + e_) / cpg; mean_[e_] = stats[2u * r_]; rstd_[e_] = stats[2u * r_ + 1u]; }}\n");
        s += &self.cl_loops(h, v, n, Some("((X - mean_[e_]) * rstd_[e_])"), true, "", "")?;
        s += "  }\n";
        Ok(s)
    }
}

/// The pragma before the channels-last kernels' branch-free position loop: several positions'
/// loads in flight per thread (`QUILT_CL_UNROLL`, 1 = none).
fn cl_unroll() -> String {
    match crate::cuda::env::usize_or("QUILT_CL_UNROLL", CL_UNROLL) {
        1 => String::new(),
        u => format!("#pragma unroll {u}\n"),
    }
}

/// Positions per unrolled step of the channels-last position loops.
const CL_UNROLL: usize = 4;

/// Lanes that merge one row's chunk partials (`cl_row_stats`).
pub const ROW_TEAM: usize = 8;

/// Chunk partials a row-merge lane loads before it merges them (`cl_row_stats`;
/// `QUILT_GN_MERGE_BATCH=1` loads one at a time, as before session 12). Not yet measured on a GPU:
/// `tests/bench/pending_gpu.sh`'s `gnmerge` part compares the two.
const ROW_MERGE_BATCH: usize = 8;

/// One channels-last chunk partial `(K, S, Q)` at quad `i` of `part` (four values per quad, so
/// that a row merge reads each with one 16-byte load in f32, two in f64).
fn quad_store(cc: &str, i: &str, k: &str, s: &str, q: &str) -> String {
    match cc {
        "double" => format!("double2* p_ = reinterpret_cast<double2*>(part) + 2u * ({i}); p_[0] = make_double2({k}, {s}); p_[1] = make_double2({q}, 0.0);"),
        _ => format!("reinterpret_cast<float4*>(part)[{i}] = make_float4({k}, {s}, {q}, 0.f);"),
    }
}

/// Loads quad `i` of `part` through L2 (`__ldcg`: other blocks wrote it) into `k`, `s`, `q`.
fn quad_load(cc: &str, i: &str, k: &str, s: &str, q: &str) -> String {
    match cc {
        "double" => format!("{{ const double2* p_ = reinterpret_cast<const double2*>(part) + 2u * ({i}); const double2 a_ = __ldcg(p_), b_ = __ldcg(p_ + 1); {k} = a_.x; {s} = a_.y; {q} = b_.x; }}"),
        _ => format!("{{ const float4 a_ = __ldcg(reinterpret_cast<const float4*>(part) + ({i})); {k} = a_.x; {s} = a_.y; {q} = a_.z; }}"),
    }
}

/// Statements moving sums over `n` values shifted by k, `s = Σ(x − k)` and `q = Σ(x − k)²`, to
/// the shift k − d (`d` = k minus the new shift): `s' = s + n·d`, `q' = q + d·(2s + n·d)`. Exact
/// algebra, no division; n = 0 gives (0, 0), which merges as nothing.
fn cl_shift(cc: &str, n: &str, d: &str, s: &str, q: &str) -> String {
    format!("{{ const {cc} d_ = {d}; {q} += d_ * (({cc})2 * {s} + {n} * d_); {s} += {n} * d_; }}")
}

/// Statements turning one thread's shifted sums into a Welford triple's mean and M2: over `n`
/// values x with shift `k` (the thread's first value), `s = Σ(x − k)` and `q = Σ(x − k)²`, so
/// mean = k + s/n and M2 = q − s²/n. Two FMA-pipe ops per value instead of Welford's division per
/// value; with the shift drawn from the data, `s/n` is of the order of the spread, so the
/// subtraction loses nothing that matters over a thread's few dozen values (the block and row merges
/// stay Welford/Chan). n = 0 gives (0, 0), which merges as nothing.
fn shifted_sums(cc: &str, n: &str, k: &str, s: &str, q: &str, mean: &str, m2: &str) -> String {
    format!(
        "if ({n} > ({cc})0) {{ const {cc} rs_ = {s} / {n}; {mean} = {k} + rs_; {m2} = {q} - {s} * rs_; if ({m2} < ({cc})0) {m2} = 0; }} else {{ {mean} = 0; {m2} = 0; }}"
    )
}

/// Module-level helpers of every stitched module: 32-bit division, the vector type, and sums over
/// aligned groups of `lanes` lanes of a warp (`q_lanes_sum`; the whole warp calls it).
pub fn helpers() -> String {
    format!(
        "{}template <class T, int V> struct alignas(sizeof(T) * V) QVec {{ T x[V]; }};\n\
template <class T> __device__ __forceinline__ T q_lanes_sum(T v, int lanes) {{ for (int o = lanes / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o); return v; }}\n\
template <class T> __device__ __forceinline__ T q_warp_sum(T v) {{ return q_lanes_sum(v, 32); }}\n\
template <class T> __device__ __forceinline__ T q_block_sum(T v) {{ return q_block_reduce(v, QSum()); }}\n",
        index::DEVICE
    )
}
