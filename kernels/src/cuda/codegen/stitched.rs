//! `Op::Stitched`: one kernel per fused region.
//!
//! - Elementwise regions: one thread per domain element (grid-stride loop); each input is read
//!   through per-axis strides of its view broadcast to the domain (0 on broadcast axes), every
//!   node is one local variable, every output one store.
//! - Normalizing regions, short rows: one block per row. Pass 1 evaluates the prologue (the
//!   nodes the normalization reads) and sums the normalized value, pass 2 sums squared
//!   deviations from the mean (so large means do not cancel), pass 3 evaluates every node with
//!   the normalized value `(x − mean) · rstd` and stores the outputs.
//! - Normalizing regions, long rows (chosen by `plan()` from the row length at run time, see
//!   `split`): a partials kernel and an apply kernel, each one block per (row, chunk), with
//!   per-chunk (mean, M2) in the step's scratch between them.
//! - Channels-last GroupNorm rows (`RowSpec::GroupsChannelsLast`), when the channel count
//!   divides into 16-byte vectors: kernels 3–5 walk each batch entry's `[spatial, C]` slab in
//!   memory order (`text::cl_*`): slab partials per (row, chunk), one (mean, rstd) per row, then
//!   the slab apply. By default the partials kernel's last block per batch entry computes the
//!   (mean, rstd) of its rows, and kernel 4 is not launched. Otherwise the row kernels above with
//!   a strided row → element mapping.
//!
//! Every kernel has up to three index paths picked per launch (`text`, `index`): 64-bit
//! coordinates, 32-bit coordinates over collapsed axes, and 16-byte vectors.
//!
//! Statistics are f32 (f64 for f64 regions). Math is f32 (f64 when the region computes f64
//! values); inputs/outputs are loaded and stored in their buffers' dtypes (f16/bf16 included).
//! Domain sizes and strides are kernel params, so one module serves every shape. Params after
//! the head (`n`; `rows, row_len`; split and channels-last: `rows, row_len, chunks`): dims[r],
//! strides[k][r], then (when they fit) the narrow data and the vector flag, then for
//! channels-last rows `G` and the `C/G` divisor.

pub mod index;
mod split;
pub(crate) mod text;

use quilt_rewrites::ir::{BinaryOp, Operand, RowSpec, StitchedRegion};
use quilt_rewrites::{DType, Op};

use super::elementwise::{gelu, sigmoid_gated, unary};
use super::{broadcast_strides, lit, numel, Action, Arg, CType, Kernel, LaunchPlan, ParamList, StepCode, StepShapes, Types, Work, FILL_BLOCKS};
use index::vectorizable;
use crate::cuda::env;
use super::BLOCK;

/// Channels-last slabs: blocks worth aiming for, and the fewest vectors each thread should read.
const CL_TARGET_BLOCKS: usize = 1024;
const CL_VECTORS_PER_THREAD: usize = 4;
/// With the last-block row merge: chunks per batch entry at most (each row's merge reads one
/// 16-byte partial per chunk, `ROW_TEAM` lanes per row), unless fewer than `FILL_BLOCKS` blocks
/// would be left.
const CL_LAST_BLOCK_CHUNKS: usize = 128;
/// Rows of at most this many elements, when there are at least `WARP_ROWS_MIN` of them, take one
/// warp each (8 rows per block, shuffle reductions) instead of one 256-thread block each.
const WARP_ROW_MAX: usize = 2048;
const WARP_ROWS_MIN: usize = 2048;
use text::{Layout, Text};
use crate::cuda::device::PARAM_SLOTS;

pub struct StitchedCode {
    region: StitchedRegion,
    kernels: Vec<Kernel>,
    layout: Layout,
    /// Elements per thread on the vector path (1: no vector path).
    vlen: usize,
    /// Channels per thread of the channels-last kernels 3–5 (1: none).
    cl_vlen: usize,
    /// Whether kernels 1 (partials) and 2 (apply) exist for long normalization rows.
    split: bool,
    /// Bytes of one statistics value (f32, or f64 for f64 regions).
    compute_bytes: usize,
}

fn binary(b: BinaryOp, c: CType, a: &str, y: &str) -> Result<String, String> {
    let cc = c.compute();
    let zero = lit(0.0, cc);
    let nan = lit(f64::NAN, cc);
    let t = |e: String| format!("(({cc})({e}))");
    Ok(match b {
        BinaryOp::Add => format!("({a} + {y})"),
        BinaryOp::Sub => format!("({a} - {y})"),
        BinaryOp::Mul => format!("({a} * {y})"),
        BinaryOp::Div => format!("({a} / {y})"),
        BinaryOp::Pow => format!("{}({a}, {y})", c.math("pow")),
        BinaryOp::Max => format!("(({a} != {a} || {y} != {y}) ? {nan} : {}({a}, {y}))", c.math("fmax")),
        BinaryOp::Min => format!("(({a} != {a} || {y} != {y}) ? {nan} : {}({a}, {y}))", c.math("fmin")),
        BinaryOp::Equal => t(format!("{a} == {y}")),
        BinaryOp::Less => t(format!("{a} < {y}")),
        BinaryOp::LessOrEqual => t(format!("{a} <= {y}")),
        BinaryOp::Greater => t(format!("{a} > {y}")),
        BinaryOp::GreaterOrEqual => t(format!("{a} >= {y}")),
        BinaryOp::And => t(format!("{a} != {zero} && {y} != {zero}")),
        BinaryOp::Or => t(format!("{a} != {zero} || {y} != {zero}")),
        BinaryOp::Xor => t(format!("({a} != {zero}) != ({y} != {zero})")),
        BinaryOp::Mod | BinaryOp::Fmod => return Err(format!("{b:?} in a stitched region")),
    })
}

/// The expression of one elementwise node over its operand variables.
fn elementwise(op: &Op, c: CType, a: &[String], fast: bool) -> Result<String, String> {
    let cc = c.compute();
    Ok(match op {
        // Region values are float: Not's `!x` is `x == 0` stored as 0/1 in the compute type.
        Op::Unary(u) => unary(*u, c, &a[0])?,
        Op::Binary(b) => binary(*b, c, &a[0], &a[1])?,
        Op::Where => format!("({} != {} ? {} : {})", a[0], lit(0.0, cc), a[1], a[2]),
        Op::Cast { to } => match to {
            DType::F16 => format!("(({cc})q_h2f(q_f2h((float)({}))))", a[0]),
            DType::BF16 => format!("(({cc})q_b2f(q_f2b((float)({}))))", a[0]),
            DType::F32 => format!("(({cc})(float)({}))", a[0]),
            DType::F64 => a[0].clone(),
            DType::Bool => format!("(({cc})({} != {}))", a[0], lit(0.0, cc)),
            other => return Err(format!("Cast to {other} in a stitched region")),
        },
        Op::Clip { min, max } => {
            let mut e = a[0].clone();
            if let Some(lo) = min {
                e = format!("({e} < {l} ? {l} : {e})", l = lit(*lo, cc));
            }
            if let Some(hi) = max {
                e = format!("({e} > {h} ? {h} : {e})", h = lit(*hi, cc));
            }
            e
        }
        Op::LeakyRelu { alpha } => format!("({x} < {z} ? {x} * {al} : {x})", x = a[0], z = lit(0.0, cc), al = lit(*alpha as f64, cc)),
        Op::Gelu { tanh } => gelu(c, &a[0], *tanh),
        Op::Silu => sigmoid_gated(c, &a[0], 1.0, fast),
        Op::QuickGelu { alpha } => sigmoid_gated(c, &a[0], *alpha as f64, fast),
        other => return Err(format!("{} in a stitched region", other.name())),
    })
}

impl StitchedCode {
    pub fn new(op: &Op, t: &Types) -> Result<StitchedCode, String> {
        let Op::Stitched(region) = op else { return Err(format!("{} is not a stitched region", op.name())) };
        let region = region.as_ref().clone();
        region.validate()?;
        if t.ins.len() != region.inputs.len() || t.outs.len() != region.outputs.len() {
            return Err(format!("step has {} inputs/{} outputs, the region {}/{}", t.ins.len(), t.outs.len(), region.inputs.len(), region.outputs.len()));
        }
        let r = region.domain.len();
        let norm = region.norm();
        let channels_last = norm.is_some_and(|(_, rows, _)| !rows.is_contiguous());
        let head = if norm.is_some() { 2 } else { 1 };
        let mut layout = Layout { rank: r, inputs: region.inputs.len(), narrow: false, channels_last };
        let params = head + layout.tail_slots();
        if params > PARAM_SLOTS {
            return Err(format!("a region of rank {r} with {} inputs needs {params} kernel params (at most {PARAM_SLOTS})", region.inputs.len()));
        }
        // The split kernels take one more head param (the chunk count). They are generated
        // unless the rows are known to be short, and when their params fit.
        let split = match norm {
            Some((_, rows, _)) => {
                let short = rows.row_len(&region.domain).as_const().is_some_and(|l| l >= 0 && l as usize <= split::SPLIT_ABOVE);
                !short && params < PARAM_SLOTS
            }
            None => false,
        };
        // The 32-bit paths need their params too (every kernel of the module shares one layout).
        let widest_head = if split { 3 } else { head };
        layout.narrow = widest_head + Layout { narrow: true, ..layout }.tail_slots() <= PARAM_SLOTS;
        // One compute type: f64 when any value is f64, else f32.
        let any_f64 = region.nodes.iter().any(|n| n.dtype == DType::F64) || t.ins.iter().flatten().any(|d| *d == DType::F64);
        let c = CType::of(if any_f64 { DType::F64 } else { DType::F32 });
        let cc = c.compute();
        let name = format!("{}_st", t.prefix);
        let mut args = "const QParams p".to_string();
        for (k, d) in t.outs.iter().enumerate() {
            args += &format!(", {}* __restrict__ out{k}", CType::of(*d).storage());
        }
        let ins: Vec<CType> = t.ins.iter().enumerate().map(|(k, d)| d.map(CType::of).ok_or_else(|| format!("input {k} is missing"))).collect::<Result<_, _>>()?;
        for (k, ct) in ins.iter().enumerate() {
            args += &format!(", const {}* __restrict__ in{k}", ct.storage());
        }
        let outs: Vec<CType> = t.outs.iter().map(|&d| CType::of(d)).collect();
        // Elements per vector: 16 bytes of the widest operand (channels-last rows are strided).
        let widest = ins.iter().chain(&outs).map(|ct| ct.dtype.size_bytes()).max().unwrap_or(16);
        let vlen = if layout.narrow && !channels_last { (16 / widest.max(1)).max(1) } else { 1 };
        // Channels-last rows take their own kernels (whole `V`-channel vectors per thread).
        let cl_vlen = if layout.narrow && channels_last && split { (16 / widest.max(1)).max(1) } else { 1 };
        let text = Text { region: &region, ins, outs, c, layout, vlen };
        let mut body = text::helpers();
        body += &format!("extern \"C\" __global__ void {name}({args}) {{\n{}", text.prologue(head));
        let mut kernels = Vec::new();
        match norm {
            None => body += &text.elementwise_body(head)?,
            Some((k, _, eps)) => {
                let x = operand_name(&region.nodes[k].args[0]);
                body += &text.rows_body(head, k, &x, eps)?;
                if split {
                    let head = head + 1;
                    let mut part = split::helpers(cc);
                    part += &format!("extern \"C\" __global__ void {name}_part({args}, {cc}* __restrict__ part) {{\n{}", text.prologue(head));
                    part += &text.partials_body(head, k, &x)?;
                    part += "}\n";
                    let mut apply = format!("extern \"C\" __global__ void {name}_apply({args}, const {cc}* __restrict__ part) {{\n{}", text.prologue(head));
                    apply += &text.apply_body(head, eps)?;
                    apply += "}\n";
                    kernels.push(Kernel { name: format!("{name}_part"), body: part });
                    kernels.push(Kernel { name: format!("{name}_apply"), body: apply });
                    if cl_vlen > 1 {
                        // Channels-last rows in memory order (kernels 3–5; `text::cl_*`).
                        let args = format!("{args}, {cc}* __restrict__ part, {cc}* __restrict__ stats, unsigned* __restrict__ count");
                        let open = |k: &str| format!("extern \"C\" __global__ void {name}_{k}({args}) {{\n{}", text.prologue(head));
                        kernels.push(Kernel { name: format!("{name}_clpart"), body: format!("{}{}}}\n", open("clpart"), text.cl_partials_body(head, cl_vlen, k, &x, eps)?) });
                        kernels.push(Kernel { name: format!("{name}_clstats"), body: format!("{}{}}}\n", open("clstats"), text.cl_finalize_body(cl_vlen, eps)) });
                        kernels.push(Kernel { name: format!("{name}_clapply"), body: format!("{}{}}}\n", open("clapply"), text.cl_apply_body(head, cl_vlen)?) });
                    }
                }
            }
        }
        body += "}\n";
        kernels.insert(0, Kernel { name, body });
        let compute_bytes = c.dtype.size_bytes();
        Ok(StitchedCode { region, kernels, layout, split, compute_bytes, vlen, cl_vlen })
    }
}

fn operand_name(o: &Operand) -> String {
    match *o {
        Operand::Input(k) => format!("a{k}"),
        Operand::Node(j) => format!("t{j}"),
    }
}

impl StepCode for StitchedCode {
    fn kernels(&self) -> &[Kernel] {
        &self.kernels
    }

    fn plan(&self, s: &StepShapes) -> Result<LaunchPlan, String> {
        let rank = self.layout.rank;
        let domain: Vec<usize> = self.region.domain.iter().map(|d| s.bindings.eval(d).map(|v| v as usize)).collect::<Result<_, _>>()?;
        if domain.len() != rank {
            return Err(format!("domain rank {} but the kernel was generated for {rank}", domain.len()));
        }
        for (k, out) in s.outs.iter().enumerate() {
            if *out != domain.as_slice() {
                return Err(format!("output {k} has shape {out:?}, the region's domain is {domain:?}"));
            }
        }
        let n = numel(&domain);
        // Per-input strides over the domain (0 on broadcast axes).
        let mut strides: Vec<Vec<i64>> = Vec::with_capacity(self.region.inputs.len());
        for (k, inp) in self.region.inputs.iter().enumerate() {
            let shape = s.input(k)?;
            let view: Vec<usize> = inp.view.iter().map(|d| s.bindings.eval(d).map(|v| v as usize)).collect::<Result<_, _>>()?;
            if numel(&view) != numel(shape) {
                return Err(format!("input {k} has shape {shape:?}, which cannot be viewed as {view:?}"));
            }
            let mut st = broadcast_strides(&view, &domain).map_err(|e| format!("input {k}: {e}"))?;
            // Right-aligned: leading domain axes the view lacks have stride 0 already.
            st.resize(rank, 0);
            strides.push(st);
        }
        let norm = self.region.norm();
        let len = match norm {
            Some((_, rows, _)) => {
                let len = s.bindings.eval(&rows.row_len(&self.region.domain))? as usize;
                if let RowSpec::GroupsChannelsLast { groups } = rows {
                    let c = domain[rank - 1];
                    if !c.is_multiple_of(*groups) {
                        return Err(format!("{c} channels do not split into {groups} groups"));
                    }
                }
                if len == 0 || !n.is_multiple_of(len) {
                    return Err(format!("rows of {len} elements do not tile the domain {domain:?}"));
                }
                Some(len)
            }
            None => None,
        };
        // Params after each kernel's head: dims and strides (64-bit path), the narrow data and
        // the vector flag (32-bit paths), the channels-last group params.
        let mut tail: Vec<i64> = domain.iter().map(|&d| d as i64).collect();
        tail.extend(strides.iter().flatten().copied());
        let mut vector = false;
        let mut channels_last_vector = false;
        let mut warp_rows = false;
        if self.layout.narrow {
            match index::narrow(&domain, &strides).filter(|_| !env::on("QUILT_INDEX64")) {
                Some((data, collapsed)) => {
                    let allowed = !env::on("QUILT_NO_VECTOR");
                    vector = allowed && self.vlen > 1 && vectorizable(&collapsed, self.vlen) && len.is_none_or(|l| l % self.vlen == 0);
                    let (v, c) = (self.cl_vlen, domain[rank - 1]);
                    channels_last_vector = allowed && v > 1 && c % v == 0 && c / v <= BLOCK as usize && vectorizable(&collapsed, v);
                    // Short rows, many of them (LayerNorm over 320–1280 channels): a warp per row.
                    warp_rows = vector && len.is_some_and(|l| l <= WARP_ROW_MAX && n / l >= WARP_ROWS_MIN && (split::chunks(n / l, l).is_none() || !self.split));
                    tail.extend(data);
                }
                None => tail.extend(index::wide(rank, strides.len())),
            }
            tail.push(vector as i64);
            tail.push(warp_rows as i64);
        }
        if let Some((_, RowSpec::GroupsChannelsLast { groups }, _)) = norm {
            tail.push(*groups as i64);
            tail.push(index::magic_slot((domain[rank - 1] / groups).clamp(1, index::NARROW_MAX)));
        }
        let params = |head: &[i64]| {
            let mut p = ParamList::default();
            p.extend(head.iter().copied());
            p.extend(tail.iter().copied());
            p.finish()
        };
        let mut args: Vec<Arg> = (0..self.region.outputs.len()).map(Arg::Out).collect();
        args.extend((0..self.region.inputs.len()).map(Arg::In));
        let mut plan = LaunchPlan::default();
        if n == 0 {
            return Ok(plan);
        }
        match len {
            None => {
                let threads = if vector { n / self.vlen } else { n };
                plan.actions.push(Action::Launch { kernel: 0, work: Work::Elements(threads as u64), params: params(&[n as i64])?, args })
            }
            Some(len) if channels_last_vector => {
                // Kernels 3–5: slab partials, per-row statistics, slab apply. With the last-block
                // merge (default since session 11: UNet b2 64² 6.94 / 7.05 against 7.26 / 7.07 ms
                // on an H100; `QUILT_GN_LAST_BLOCK=0` turns it off), the partials kernel also
                // writes the statistics and kernel 4 is not launched.
                let (rows, v, c) = (n / len, self.cl_vlen, domain[rank - 1]);
                let positions = len / (c / (rows / domain[0]));
                let lanes = BLOCK as usize / (c / v);
                let chunks = CL_TARGET_BLOCKS.div_ceil(domain[0]).clamp(1, (positions / (CL_VECTORS_PER_THREAD * lanes)).max(1));
                let last_block = env::default_on("QUILT_GN_LAST_BLOCK");
                // The last block reads every chunk's partials of its batch entry alone: fewer,
                // longer chunks, as long as the grid still fills the device.
                let chunks = if last_block { chunks.min(CL_LAST_BLOCK_CHUNKS.max(FILL_BLOCKS.div_ceil(domain[0]))) } else { chunks };
                let chunks = positions.div_ceil(positions.div_ceil(chunks));
                plan.scratch.push(4 * rows * chunks * self.compute_bytes);
                plan.scratch.push(2 * rows * self.compute_bytes);
                if last_block {
                    plan.counters = domain[0];
                }
                args.extend([Arg::Scratch(0), Arg::Scratch(1), Arg::Counters]);
                let p = params(&[rows as i64, len as i64, chunks as i64])?;
                let slabs = Work::Rows((domain[0] * chunks) as u64);
                plan.actions.push(Action::Launch { kernel: 3, work: slabs, params: p, args: args.clone() });
                if !last_block {
                    let rows_per_block = BLOCK as usize / text::ROW_TEAM;
                    plan.actions.push(Action::Launch { kernel: 4, work: Work::Rows(rows.div_ceil(rows_per_block) as u64), params: p, args: args.clone() });
                }
                plan.actions.push(Action::Launch { kernel: 5, work: slabs, params: p, args });
            }
            Some(len) => {
                let rows = n / len;
                match split::chunks(rows, len).filter(|_| self.split) {
                    None => {
                        let blocks = if warp_rows { rows.div_ceil(BLOCK as usize / 32) } else { rows };
                        plan.actions.push(Action::Launch { kernel: 0, work: Work::Rows(blocks as u64), params: params(&[rows as i64, len as i64])?, args })
                    }
                    Some(chunks) => {
                        // Partials (kernel 1) then apply (kernel 2), ordered on the step's stream.
                        plan.scratch.push(2 * rows * chunks * self.compute_bytes);
                        args.push(Arg::Scratch(0));
                        let p = params(&[rows as i64, len as i64, chunks as i64])?;
                        let work = Work::Rows((rows * chunks) as u64);
                        plan.actions.push(Action::Launch { kernel: 1, work, params: p, args: args.clone() });
                        plan.actions.push(Action::Launch { kernel: 2, work, params: p, args });
                    }
                }
            }
        }
        Ok(plan)
    }
}
