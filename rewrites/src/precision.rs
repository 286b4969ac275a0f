//! fp16 precision: an f32 model's float math in f16 storage (provider option `precision=fp16`;
//! the default, `precision=model`, keeps every dtype the model has).
//!
//! # Where the pass runs
//! On the graph the e-graph extraction chose, after pattern fusion and before stitching and
//! lowering ([`optimize_with_precision`]: e-graph stages → extraction → `to_fp16` → `stitch` →
//! `lower`). Not before the optimizer,
//! because the fusion rules recognise GELU, QuickGELU and the norms by their constants with a
//! relative tolerance (1e-4) tighter than f16's rounding (√2 in f16 is off by 1.1e-4), so
//! converting first would lose the fused kernels. Not on the `Plan`, because lowering sizes the
//! buffers (and the memory plan) from the dtypes, and because the fragile subgraphs are easiest
//! to find among plain ops. The fused ops the optimizer makes (GroupNorm, LayerNorm, Attention,
//! Silu, GeGlu, …) already compute their statistics in f32 whatever the storage: the CPU
//! backend widens f16 to f32 on load (`kernels/src/cpu/data.rs`), the CUDA row kernels
//! accumulate in `float` (`kernels/src/cuda/codegen/reduce.rs`) and the attention kernel keeps
//! its online softmax in `float`. An op this pass does not know (`Opaque`, a stitched region, or
//! a fused op added later) keeps the dtypes it was built with, so running the pass after
//! stitching would be correct but convert less.
//!
//! # Policy
//! 1. **f32 → f16.** Every f32 value becomes f16 unless rule 4 or 5 keeps it. Values of any
//!    other dtype (integers, bool, f64, bf16, f16 already) are untouched, and so are the ops on
//!    them (shape and index paths).
//! 2. **Weights** are converted once, here, rounding to nearest even. Finite values beyond f16's
//!    range saturate to ±65504: such constants are the "minus infinity" of attention masks
//!    (`finfo(float32).min`), and ±65504 is what an fp16 export of the same model carries
//!    (`finfo(float16).min`), so `0 · min` stays 0 instead of becoming NaN. ±inf and NaN stay.
//!    The report counts saturated values and nonzero values that flush to zero. A constant that
//!    f32 and f16 ops both read exists in both dtypes; one that only f16 ops read, only in f16.
//! 3. **Boundary.** Graph inputs and outputs keep the model's dtype: a `Cast` to f16 follows an
//!    input, a `Cast` back to f32 precedes an output. Inside, a value is cast at most once per
//!    dtype, where an op of the other precision first reads it.
//! 4. **Exact values stay f32.** A float value that becomes an integer, a boolean or an angle
//!    is kept f32 together with everything it is computed from (its backward slice over f32
//!    values): the inputs of `Sin`, `Cos`, `Floor`, `Ceil`, `Round`, of casts to non-float
//!    types, of comparisons and of `ArgMax`/`ArgMin`. This is the timestep embedding: `t · freq`
//!    for t = 999 lies in [512, 1024), where f16's spacing is 0.5, so f16 would move the angle by
//!    up to a quarter radian (and rounding `freq` itself by up to half a radian more); in f32 the
//!    error is ~1e-4 rad. `Sin`/`Cos` run in f32; their results, in [-1, 1], are cast to f16 by
//!    their consumers. A float `Range` (an index generator) stays f32 as well.
//! 5. **Range guard.** Ops whose result can leave f16's range (±65504) for ordinary inputs —
//!    `Exp`, and `Pow` unless its exponent is a constant within [-1, 1] — run in f32, and so does
//!    every op computed from their result up to and including the first *range-restoring* op
//!    (`Sqrt`, `Log`, `Reciprocal`, `Sigmoid`, `Tanh`, `Erf`, `Sign`, `Sin`, `Cos`, the norms,
//!    `Softmax`, `LogSoftmax`), whose result goes back to f16 at its consumers. This is a cheap
//!    syntactic guard, not a value-range analysis: it does not see a `Div` by a tiny value, or
//!    a sum whose stored result overflows (the kernels accumulate reductions in f32, so only a
//!    stored sum beyond 65504 is lost). The Stable Diffusion UNet, VAE and CLIP graphs contain
//!    no such op after fusion (their `Exp`s live inside Softmax, GELU and the folded timestep
//!    frequencies), so the guard costs them nothing.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use half::f16;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ir::{BinaryOp, Graph, GraphOutput, Node, Op, TensorType, UnaryOp, ValueRef};
use crate::lower::lower;
use crate::optimize::{after_extraction, optimize_graph, optimize_with, OptimizeOptions};
use crate::plan::Plan;
use crate::tensor::{Tensor, TensorData};

/// The largest finite f16.
const F16_MAX: f64 = 65504.0;

/// The precision a model is planned in (provider option `precision`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// Every value keeps the model's dtype.
    #[default]
    Model,
    /// f32 math runs in f16 storage under this module's policy.
    Fp16,
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Precision, String> {
        match s {
            "model" => Ok(Precision::Model),
            "fp16" => Ok(Precision::Fp16),
            other => Err(format!("precision '{other}': expected 'model' (keep the model's dtypes) or 'fp16'")),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Model => "model",
            Precision::Fp16 => "fp16",
        })
    }
}

/// Optimizes `graph`, applies `precision`, and lowers to a Plan: the one call a backend's compile
/// step needs (with `Precision::Model` it is `optimize_with`). For fp16 the pass runs between
/// extraction and stitching: stitched regions are opaque to it, and the casts it adds then fuse
/// into their neighbours' regions.
pub fn optimize_with_precision(graph: &Graph, opts: &OptimizeOptions, precision: Precision) -> Result<Plan> {
    if precision == Precision::Model {
        return optimize_with(graph, opts);
    }
    let extracted = optimize_graph(graph, &OptimizeOptions { stitch: false, channels_last: None, ..opts.clone() })?;
    let converted = to_fp16(&extracted.graph)?;
    let mut report = extracted.report;
    lower(&after_extraction(converted, opts, &mut report)?)
}

/// `graph` with its f32 math in f16 under the module's policy.
pub fn to_fp16(graph: &Graph) -> Result<Graph> {
    Ok(to_fp16_with_report(graph)?.0)
}

/// A node the pass left in f32, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptF32 {
    pub node: String,
    pub op: String,
    pub reason: String,
}

/// What [`to_fp16_with_report`] did.
#[derive(Clone, Debug, Default)]
pub struct PrecisionReport {
    /// Ops that now run in f16.
    pub f16_nodes: usize,
    /// Ops with f32 values that stay f32 (rules 4 and 5, unknown ops), in graph order.
    pub kept_f32: Vec<KeptF32>,
    /// Cast nodes inserted (boundary and between f32 and f16 ops).
    pub casts: usize,
    /// Constants stored in f16.
    pub converted_constants: usize,
    /// Bytes of the converted constants, before (f32) and after (f16).
    pub constant_bytes_f32: usize,
    pub constant_bytes_f16: usize,
    /// Finite constant elements beyond ±65504, stored as ±65504.
    pub saturated: usize,
    /// Nonzero constant elements too small for f16, stored as zero.
    pub flushed_to_zero: usize,
}

impl fmt::Display for PrecisionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "precision fp16: {} ops in f16, {} kept in f32, {} casts; {} constants {} → {} bytes ({} saturated to ±65504, {} flushed to zero)",
            self.f16_nodes,
            self.kept_f32.len(),
            self.casts,
            self.converted_constants,
            self.constant_bytes_f32,
            self.constant_bytes_f16,
            self.saturated,
            self.flushed_to_zero
        )?;
        for k in &self.kept_f32 {
            writeln!(f, "  f32 {:<12} {}  ({})", k.op, k.node, k.reason)?;
        }
        Ok(())
    }
}

/// [`to_fp16`] plus a report of what it kept in f32 and what it converted.
pub fn to_fp16_with_report(graph: &Graph) -> Result<(Graph, PrecisionReport)> {
    let keep = kept_in_f32(graph);
    let mut rb = Rebuild { old: graph, new: Graph::new(), map: HashMap::new(), sources: HashMap::new(), casts: HashMap::new(), report: PrecisionReport::default() };
    for ix in graph.node_indices() {
        let node = graph.node(ix);
        let reason = keep.get(&ix);
        if let Some(r) = reason {
            rb.report.kept_f32.push(KeptF32 { node: node.name.clone(), op: node.op.name(), reason: r.clone() });
        }
        let compute = if reason.is_some() { DType::F32 } else { DType::F16 };
        rb.node(ix, compute)?;
    }
    for out in &graph.outputs {
        let want = graph.value_type(out.value).dtype;
        let value = rb.value(out.value, want);
        rb.new.outputs.push(GraphOutput { name: out.name.clone(), value });
    }
    check_types(graph, &rb.new)?;
    Ok((rb.new, rb.report))
}

/// How the pass treats an op.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// Input, Constant, Weight, SymbolicValue: values, not math.
    Source,
    /// An op that may run in f16: its f32 inputs and outputs share one compute dtype (a Cast's
    /// input excepted).
    Float,
    /// An op the pass does not know: keeps the dtypes it was built with.
    Unknown,
}

fn kind(op: &Op) -> Kind {
    match op {
        Op::Input { .. } | Op::Constant(_) | Op::Weight { .. } | Op::SymbolicValue { .. } => Kind::Source,
        Op::Unary(_)
        | Op::Binary(_)
        | Op::Where
        | Op::Cast { .. }
        | Op::Clip { .. }
        | Op::LeakyRelu { .. }
        | Op::Gelu { .. }
        | Op::MatMul
        | Op::Gemm { .. }
        | Op::Conv { .. }
        | Op::InstanceNorm { .. }
        | Op::GroupNorm { .. }
        | Op::LayerNorm { .. }
        | Op::Softmax { .. }
        | Op::LogSoftmax { .. }
        | Op::Reduce { .. }
        | Op::ArgMax { .. }
        | Op::ArgMin { .. }
        | Op::Reshape
        | Op::Expand
        | Op::Transpose { .. }
        | Op::Concat { .. }
        | Op::Split { .. }
        | Op::Slice { .. }
        | Op::Gather { .. }
        | Op::GatherElements { .. }
        | Op::GatherND { .. }
        | Op::Pad { .. }
        | Op::Resize { .. }
        | Op::Fill { .. }
        | Op::Range { .. }
        | Op::Trilu { .. }
        | Op::CumSum { .. }
        | Op::Tile
        | Op::Silu
        | Op::QuickGelu { .. }
        | Op::GeGlu { .. }
        | Op::Attention { .. } => Kind::Float,
        _ => Kind::Unknown,
    }
}

fn is_f32(g: &Graph, v: ValueRef) -> bool {
    g.value_type(v).dtype == DType::F32
}

/// Whether the op's f32 inputs must have its compute dtype (all but a Cast's input).
fn constrained(op: &Op) -> bool {
    !matches!(op, Op::Cast { .. })
}

/// Rule 4: ops whose f32 inputs become integers, booleans or angles.
fn needs_exact_inputs(g: &Graph, node: &Node) -> bool {
    let reads_f32 = node.inputs.iter().flatten().any(|&v| is_f32(g, v));
    let float_out = node.outputs.iter().any(|t| t.dtype.is_float());
    matches!(node.op, Op::Unary(UnaryOp::Sin | UnaryOp::Cos | UnaryOp::Floor | UnaryOp::Ceil | UnaryOp::Round))
        || (reads_f32 && !float_out && kind(&node.op) != Kind::Source)
}

/// Rule 5: ops whose result can overflow f16 for ordinary inputs.
fn may_overflow(g: &Graph, node: &Node) -> bool {
    match node.op {
        Op::Unary(UnaryOp::Exp) => true,
        Op::Binary(BinaryOp::Pow) => {
            let exponent = node.inputs.get(1).copied().flatten().map(|v| &g.node(v.node).op);
            !matches!(exponent, Some(Op::Constant(t)) if t.dtype().is_float() && t.data.to_f64_vec().iter().all(|x| x.abs() <= 1.0))
        }
        _ => false,
    }
}

/// Rule 5: ops whose result is back in f16's range whatever their input's magnitude.
fn restores_range(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary(
            UnaryOp::Sqrt
                | UnaryOp::Log
                | UnaryOp::Reciprocal
                | UnaryOp::Sigmoid
                | UnaryOp::Tanh
                | UnaryOp::Erf
                | UnaryOp::Sign
                | UnaryOp::Sin
                | UnaryOp::Cos
        ) | Op::InstanceNorm { .. }
            | Op::GroupNorm { .. }
            | Op::LayerNorm { .. }
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
    )
}

/// The nodes that stay f32, with the reason (rules 4 and 5, unknown ops).
fn kept_in_f32(g: &Graph) -> HashMap<petgraph::graph::NodeIndex, String> {
    let mut keep: HashMap<petgraph::graph::NodeIndex, String> = HashMap::new();
    let touches_f32 = |n: &Node| n.outputs.iter().any(|t| t.dtype == DType::F32) || n.inputs.iter().flatten().any(|&v| is_f32(g, v));

    // Rule 4: backward slices of exact-value consumers, over f32 values.
    for ix in g.node_indices() {
        let node = g.node(ix);
        let float_range = matches!(node.op, Op::Range { .. }) && node.outputs[0].dtype == DType::F32;
        if !(needs_exact_inputs(g, node) || float_range) {
            continue;
        }
        keep.entry(ix).or_insert_with(|| if float_range { "float Range (index values)".into() } else { "reads values that must stay exact".into() });
        let mut stack: Vec<ValueRef> = node.inputs.iter().flatten().copied().filter(|&v| is_f32(g, v)).collect();
        let mut seen: HashSet<petgraph::graph::NodeIndex> = HashSet::new();
        while let Some(v) = stack.pop() {
            let p = g.node(v.node);
            if kind(&p.op) == Kind::Source || !seen.insert(v.node) {
                continue;
            }
            keep.entry(v.node).or_insert_with(|| format!("feeds exact value at '{}' ({})", node.name, node.op.name()));
            stack.extend(p.inputs.iter().flatten().copied().filter(|&w| is_f32(g, w)));
        }
    }

    // Rule 5: forward from overflow-prone ops until a range-restoring op.
    let mut unsafe_values: HashSet<ValueRef> = HashSet::new();
    for ix in g.node_indices() {
        let node = g.node(ix);
        let seed = may_overflow(g, node);
        let reads_unsafe = node.inputs.iter().flatten().find(|v| unsafe_values.contains(v));
        if seed {
            keep.entry(ix).or_insert_with(|| "may exceed f16 range".into());
        } else if let Some(v) = reads_unsafe {
            keep.entry(ix).or_insert_with(|| format!("reads a value that may exceed f16 range (from '{}')", g.node(v.node).name));
        }
        if seed || (reads_unsafe.is_some() && !restores_range(&node.op)) {
            for (o, t) in node.outputs.iter().enumerate() {
                if t.dtype == DType::F32 {
                    unsafe_values.insert(ValueRef { node: ix, output: o });
                }
            }
        }
        if kind(&node.op) == Kind::Unknown && touches_f32(node) {
            keep.entry(ix).or_insert_with(|| "op not known to the precision pass".into());
        }
    }
    keep
}

/// Builds the converted graph node by node (the old order is a topological order, and so is the
/// new one: a cast or a converted constant is added right before its first reader).
struct Rebuild<'a> {
    old: &'a Graph,
    new: Graph,
    /// Old value → its new value (for values whose node was rebuilt).
    map: HashMap<ValueRef, ValueRef>,
    /// (old Constant/Weight value, dtype) → the new node holding it in that dtype.
    sources: HashMap<(ValueRef, DType), ValueRef>,
    /// (old value, dtype) → its new cast.
    casts: HashMap<(ValueRef, DType), ValueRef>,
    report: PrecisionReport,
}

impl Rebuild<'_> {
    fn node(&mut self, ix: petgraph::graph::NodeIndex, compute: DType) -> Result<()> {
        let node = self.old.node(ix);
        match kind(&node.op) {
            // Weights appear where they are first read, in the dtype that reader needs.
            Kind::Source if matches!(node.op, Op::Constant(_) | Op::Weight { .. }) => return Ok(()),
            Kind::Source => return self.copy(ix, node.clone()),
            _ => {}
        }
        let touches_f32 = node.outputs.iter().any(|t| t.dtype == DType::F32) || node.inputs.iter().flatten().any(|&v| is_f32(self.old, v));
        if !touches_f32 || kind(&node.op) == Kind::Unknown {
            // Integer/bool paths and unknown ops: the original dtypes, inputs cast back if needed.
            let inputs = node.inputs.iter().map(|v| v.map(|v| self.value(v, self.old.value_type(v).dtype))).collect();
            return self.copy(ix, Node { inputs, ..node.clone() });
        }
        if compute == DType::F16 {
            self.report.f16_nodes += 1;
        }
        let mut inputs = Vec::with_capacity(node.inputs.len());
        for v in &node.inputs {
            inputs.push(v.map(|v| {
                let dtype = self.old.value_type(v).dtype;
                let want = if dtype == DType::F32 && constrained(&node.op) { compute } else { self.canonical_dtype(v) };
                self.value(v, want)
            }));
        }
        let outputs: Vec<TensorType> =
            node.outputs.iter().map(|t| if t.dtype == DType::F32 { TensorType::new(compute, t.shape.clone()) } else { t.clone() }).collect();
        let op = match &node.op {
            Op::Cast { to: DType::F32 } => Op::Cast { to: compute },
            Op::Fill { value } if compute == DType::F16 => Op::Fill { value: saturate(*value) },
            other => other.clone(),
        };
        // A cast to the dtype its input already has is no op: its readers use the input.
        if let (Op::Cast { to }, Some(Some(input))) = (&op, inputs.first()) {
            if self.new.value_type(*input).dtype == *to {
                self.map.insert(ValueRef { node: ix, output: 0 }, *input);
                return Ok(());
            }
        }
        self.copy(ix, Node { name: node.name.clone(), op, inputs, outputs })
    }

    fn copy(&mut self, ix: petgraph::graph::NodeIndex, node: Node) -> Result<()> {
        let outputs = node.outputs.len();
        let new = self.new.add_node(node);
        for o in 0..outputs {
            self.map.insert(ValueRef { node: ix, output: o }, ValueRef { node: new, output: o });
        }
        Ok(())
    }

    /// The dtype an old value has in the new graph where no reader asks for another.
    fn canonical_dtype(&self, v: ValueRef) -> DType {
        match self.map.get(&v) {
            Some(&nv) => self.new.value_type(nv).dtype,
            None => self.old.value_type(v).dtype,
        }
    }

    /// The new value holding old value `v` in dtype `want` (only f32/f16 of an f32 value differ
    /// from `v`'s own dtype).
    fn value(&mut self, v: ValueRef, want: DType) -> ValueRef {
        let old = self.old.node(v.node);
        if let Op::Constant(_) | Op::Weight { .. } = old.op {
            return self.source(v, want);
        }
        let nv = self.map[&v];
        let have = self.new.value_type(nv).dtype;
        if have == want {
            return nv;
        }
        if let Some(&c) = self.casts.get(&(v, want)) {
            return c;
        }
        let shape = self.new.value_type(nv).shape.clone();
        let suffix = if old.outputs.len() > 1 { format!("/{}", v.output) } else { String::new() };
        let cast = self.new.add_node(Node {
            name: format!("{}{suffix}/to_{want}", old.name),
            op: Op::Cast { to: want },
            inputs: vec![Some(nv)],
            outputs: vec![TensorType::new(want, shape)],
        });
        self.report.casts += 1;
        let c = ValueRef { node: cast, output: 0 };
        self.casts.insert((v, want), c);
        c
    }

    /// A Constant or Weight in dtype `want`, made on first use.
    fn source(&mut self, v: ValueRef, want: DType) -> ValueRef {
        let old = self.old.node(v.node);
        let want = if old.outputs[0].dtype == DType::F32 { want } else { old.outputs[0].dtype };
        if let Some(&nv) = self.sources.get(&(v, want)) {
            return nv;
        }
        let mut node = old.clone();
        if want != old.outputs[0].dtype {
            node.outputs[0].dtype = want;
            node.name = format!("{}/{want}", old.name);
            if let Op::Constant(t) = &old.op {
                let (data, stats) = to_f16_data(t);
                self.report.converted_constants += 1;
                self.report.constant_bytes_f32 += t.numel() * 4;
                self.report.constant_bytes_f16 += t.numel() * 2;
                self.report.saturated += stats.saturated;
                self.report.flushed_to_zero += stats.flushed;
                node.op = Op::Constant(Arc::new(Tensor::new(t.shape.clone(), data)));
            }
        }
        let ix = self.new.add_node(node);
        let nv = ValueRef { node: ix, output: 0 };
        self.sources.insert((v, want), nv);
        nv
    }
}

#[derive(Default, Clone, Copy)]
struct ConversionStats {
    saturated: usize,
    flushed: usize,
}

/// Saturates finite values beyond f16's range to ±65504 (rule 2).
fn saturate(x: f64) -> f64 {
    if x.is_finite() {
        x.clamp(-F16_MAX, F16_MAX)
    } else {
        x
    }
}

/// f32 data → f16, round to nearest even, finite values saturating (rule 2). The bulk
/// conversion uses the CPU's f16 instructions where it has them, over all cores for large
/// tensors (the SD 1.5 UNet has 860M weights); the fix-up pass only runs over the 4096-element
/// blocks that have an infinity or a zero in them.
fn to_f16_data(t: &Tensor) -> (TensorData, ConversionStats) {
    const CHUNK: usize = 1 << 20;
    let TensorData::F32(v) = &t.data else {
        let out = t.data.to_f64_vec().iter().map(|&x| f16::from_f64(saturate(x))).collect();
        return (TensorData::F16(out), ConversionStats::default());
    };
    let mut out = vec![f16::ZERO; v.len()];
    if v.len() <= CHUNK {
        let stats = convert_chunk(&mut out, v);
        return (TensorData::F16(out), stats);
    }
    let per_thread = v.len().div_ceil(crate::tensor::worker_threads(v.len())).max(CHUNK);
    let stats = std::thread::scope(|s| {
        let workers: Vec<_> = out.chunks_mut(per_thread).zip(v.chunks(per_thread)).map(|(o, i)| s.spawn(move || convert_chunk(o, i))).collect();
        workers.into_iter().map(|w| w.join().unwrap_or_default()).fold(ConversionStats::default(), |a, b| ConversionStats { saturated: a.saturated + b.saturated, flushed: a.flushed + b.flushed })
    });
    (TensorData::F16(out), stats)
}

fn convert_chunk(out: &mut [f16], v: &[f32]) -> ConversionStats {
    use half::slice::HalfFloatSliceExt;
    // The fix-up runs element by element, so it visits only the blocks that hold a zero or an
    // infinity: a 1M-element chunk of real weights usually has a value that rounds to zero.
    const FIX_BLOCK: usize = 4096;
    out.convert_from_f32_slice(v);
    let mut stats = ConversionStats::default();
    for (out, v) in out.chunks_mut(FIX_BLOCK).zip(v.chunks(FIX_BLOCK)) {
        // A fold with no early exit, so that the scan vectorises.
        let suspicious = out.iter().fold(false, |any, h| {
            let magnitude = h.to_bits() & 0x7fff;
            any | (magnitude == 0) | (magnitude >= 0x7c00)
        });
        if !suspicious {
            continue;
        }
        for (h, &x) in out.iter_mut().zip(v) {
            if h.is_infinite() && x.is_finite() {
                *h = f16::from_f64(saturate(x as f64));
                stats.saturated += 1;
            } else if x != 0.0 && h.to_bits() & 0x7fff == 0 {
                stats.flushed += 1;
            }
        }
    }
    stats
}

/// Every known op's float inputs (a Cast's excepted) and outputs share one of f32/f16, unless
/// the model itself mixed them there: a bug in the pass becomes an error naming the node, not a
/// plan the kernels reject later.
fn check_types(old: &Graph, new: &Graph) -> Result<()> {
    let mixed = |g: &Graph, node: &Node| -> Option<Vec<DType>> {
        if kind(&node.op) != Kind::Float || !constrained(&node.op) {
            return None;
        }
        let ins = node.inputs.iter().flatten().map(|&v| g.value_type(v).dtype);
        let mut dtypes: Vec<DType> = ins.chain(node.outputs.iter().map(|t| t.dtype)).filter(|d| matches!(d, DType::F32 | DType::F16)).collect();
        dtypes.sort();
        dtypes.dedup();
        (dtypes.len() > 1).then_some(dtypes)
    };
    let mixed_in_model: HashSet<&str> = old.node_indices().map(|ix| old.node(ix)).filter(|n| mixed(old, n).is_some()).map(|n| n.name.as_str()).collect();
    for ix in new.node_indices() {
        let node = new.node(ix);
        if let Some(dtypes) = mixed(new, node) {
            if !mixed_in_model.contains(node.name.as_str()) {
                let list: Vec<&str> = dtypes.iter().map(|d| d.name()).collect();
                return Err(Error::node(&node.name, &node.op.name(), format!("precision pass: mixed float dtypes {} after conversion", list.join(", "))));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tensor large enough for several threads and many fix-up blocks, with out-of-range and
    /// too-small values scattered over blocks (block edges included): each is saturated or
    /// counted wherever it sits, and every other value is plain round-to-nearest f16.
    #[test]
    fn large_tensors_saturate_and_count_in_every_block() {
        let n = 3 * (1 << 20) + 123;
        let mut v: Vec<f32> = (0..n).map(|i| ((i % 1000) as f32 - 500.0) * 0.01 + 0.001).collect();
        let huge = [0usize, 4095, 4096, 1 << 20, 2_500_000, n - 1];
        let tiny = [7usize, 8191, 3_000_001];
        for (k, &i) in huge.iter().enumerate() {
            v[i] = if k % 2 == 0 { 1e6 } else { -7e4 };
        }
        for &i in &tiny {
            v[i] = 1e-9;
        }
        v[100] = f32::INFINITY;
        let t = Tensor::new(vec![n], TensorData::F32(v.clone()));
        let (data, stats) = to_f16_data(&t);
        let TensorData::F16(out) = data else { panic!("expected f16 data") };
        assert_eq!((stats.saturated, stats.flushed), (huge.len(), tiny.len()));
        for (i, (&h, &x)) in out.iter().zip(&v).enumerate() {
            let want = if huge.contains(&i) { f16::from_f64(saturate(x as f64)) } else { f16::from_f32(x) };
            assert_eq!(h.to_bits(), want.to_bits(), "element {i}: {x} -> {h}");
        }
        assert!(out[100].is_infinite(), "a real infinity stays infinite");
        assert_eq!(out[4096].to_f32(), 65504.0);
        assert_eq!(out[4095].to_f32(), -65504.0);
    }
}
