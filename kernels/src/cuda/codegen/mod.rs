//! CUDA C for each plan step, and the launch plan that runs it at concrete shapes.
//!
//! Sources depend only on what the plan fixes (op, attributes, ranks, dtypes); every size,
//! stride and offset arrives at run time in the by-value `QParams` struct, so one compiled
//! module serves every input shape. Storage may be f16/bf16; math is f32 (f64 for f64 data).
//! Each step's kernels form one module (`module_source`), compiled once per source hash.

pub mod attention;
pub mod elementwise;
pub mod flash_attention;
pub mod geglu;
pub mod layout;
pub mod reduce;
pub mod stitched;

use quilt_rewrites::plan::{OpStep, Step};
use quilt_rewrites::{DType, Op, Plan};

use super::conv::ConvCode;
use super::device::{Params, PARAM_SLOTS};
use super::gemm::{GemmCall, GemmCode};
use crate::bind::Bindings;

/// Threads per block of every generated kernel (a multiple of the warp size; block reductions
/// assume it).
pub const BLOCK: u32 = 256;

/// Blocks that fill the device: two per SM of an H100 (132 SMs). Launches of fewer change shape
/// where that measured faster (flash attention's small variants, channels-last GroupNorm chunks).
pub const FILL_BLOCKS: usize = 264;

/// One `extern "C" __global__` function.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub name: String,
    pub body: String,
}

/// What a kernel argument points to at run time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    In(usize),
    /// Input `.0`, this many bytes past its start (q, k, v as column ranges of one input).
    InAt(usize, usize),
    Out(usize),
    /// Per-run scratch memory of the step (sizes in `LaunchPlan::scratch`).
    Scratch(usize),
    /// Host-computed data uploaded before the step (`LaunchPlan::tables`).
    Table(usize),
    /// A 4-byte device word the kernel sets when it meets invalid data (an index out of range).
    ErrFlag,
    /// The step's `LaunchPlan::counters` words (null where it has none).
    Counters,
}

/// How many threads a launch needs.
#[derive(Clone, Copy, Debug)]
pub enum Work {
    /// One thread per element, grid-stride loop.
    Elements(u64),
    /// One block per row.
    Rows(u64),
    /// One block of `threads` threads per row (kernels tiled for another block size than
    /// `BLOCK`, e.g. a flash-attention configuration with fewer warps).
    RowsOf { rows: u64, threads: u32 },
}

impl Work {
    /// The launch's grid and block sizes (grid-stride loops cover what the grid does not).
    pub fn launch_dims(&self) -> (u32, u32) {
        match *self {
            Work::Elements(n) => (n.div_ceil(BLOCK as u64).clamp(1, 1 << 16) as u32, BLOCK),
            Work::Rows(n) => (n.clamp(1, 1 << 20) as u32, BLOCK),
            Work::RowsOf { rows, threads } => (rows.clamp(1, 1 << 20) as u32, threads),
        }
    }

    /// Elements or rows to cover.
    pub fn count(&self) -> u64 {
        match *self {
            Work::Elements(n) | Work::Rows(n) | Work::RowsOf { rows: n, .. } => n,
        }
    }
}

#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // a few actions per step, built once per run
pub enum Action {
    Launch { kernel: usize, work: Work, params: Params, args: Vec<Arg> },
    Gemm(GemmCall),
    /// A GEMM with a bias and/or separate C through cuBLASLt (`gemm::LtGemmCall`).
    LtGemm(super::gemm::LtGemmCall),
    /// A cuDNN forward convolution (`conv::cudnn`), run by the executable's `Dnn`.
    Conv(super::conv::cudnn::ConvCall),
    /// Attention through cuDNN's fused SDPA engines (`sdpa`), or its fallback where they
    /// have no engine for the shape.
    Sdpa(super::sdpa::SdpaCall),
    /// Zero `bytes` bytes of an argument from `offset`.
    Zero { arg: Arg, bytes: usize },
}

/// Everything one run of a step does, at its concrete shapes.
#[derive(Clone, Debug, Default)]
pub struct LaunchPlan {
    pub scratch: Vec<usize>,
    pub tables: Vec<Vec<u8>>,
    /// 4-byte device words, zero when the step starts, that its kernels count in and leave at
    /// zero again (the last block of a grid finding itself last). One set per shape, so runs of
    /// that shape, serialized by the executable, reuse them without clearing.
    pub counters: usize,
    pub actions: Vec<Action>,
}

/// The concrete shapes a step runs at.
pub struct StepShapes<'a> {
    pub ins: Vec<Option<&'a [usize]>>,
    pub outs: Vec<&'a [usize]>,
    pub bindings: &'a Bindings,
}

impl<'a> StepShapes<'a> {
    pub fn input(&self, i: usize) -> Result<&'a [usize], String> {
        self.ins.get(i).copied().flatten().ok_or_else(|| format!("input {i} is missing"))
    }
}

/// A prepared step: its kernels, and how to launch them at concrete shapes.
pub trait StepCode: Send + Sync {
    fn kernels(&self) -> &[Kernel];
    fn plan(&self, s: &StepShapes) -> Result<LaunchPlan, String>;
}

/// How the executor runs one step. (Reshape and Identity are not steps but view buffers,
/// `BufferKind::View`, which the executor resolves to their owner's memory.)
pub enum StepKind {
    /// The output is computed on the host from the bindings (shape values).
    HostValue(Vec<quilt_rewrites::SymDim>),
    Code(Box<dyn StepCode>),
}

/// The CUDA plan of one step, or why there is none.
pub fn generate(plan: &Plan, step: &OpStep, index: usize) -> Result<StepKind, String> {
    let ins: Vec<Option<DType>> = step.inputs.iter().map(|b| b.map(|b| plan.buffers[b].ty.dtype)).collect();
    let in_ranks: Vec<usize> = step.inputs.iter().map(|b| b.map_or(0, |b| plan.buffers[b].ty.rank())).collect();
    let outs: Vec<DType> = step.outputs.iter().map(|&b| plan.buffers[b].ty.dtype).collect();
    let out_ranks: Vec<usize> = step.outputs.iter().map(|&b| plan.buffers[b].ty.rank()).collect();
    for &r in in_ranks.iter().chain(&out_ranks) {
        if r > MAX_RANK {
            return Err(format!("rank {r} exceeds the CUDA backend's limit of {MAX_RANK}"));
        }
    }
    // Kernel names are local to their module, so steps that generate the same source share one
    // compiled module (NVRTC and module-load caches are keyed by source).
    let _ = index;
    let t = Types { ins, in_ranks, outs, out_ranks, prefix: "q".to_string() };
    let code: Box<dyn StepCode> = match &step.op {
        // `quilt_rewrites::lower` makes Reshape a view buffer; only a hand-built plan has it as a
        // step (an Identity step is a copy, through the elementwise kernel).
        Op::Reshape => return Err("a Reshape step: reshapes are view buffers (`BufferKind::View`), not steps".into()),
        Op::SymbolicValue { values, .. } => {
            if t.outs[0] != DType::I64 {
                return Err(format!("SymbolicValue of dtype {}", t.outs[0]));
            }
            return Ok(StepKind::HostValue(values.clone()));
        }
        Op::Unary(_)
        | Op::Binary(_)
        | Op::Where
        | Op::Cast { .. }
        | Op::Clip { .. }
        | Op::LeakyRelu { .. }
        | Op::Gelu { .. }
        | Op::Expand
        | Op::Fill { .. }
        | Op::Range { .. }
        | Op::Silu
        | Op::QuickGelu { .. } => Box::new(elementwise::ElementwiseCode::new(&step.op, &t)?),
        Op::GeGlu { .. } => Box::new(geglu::GeGluCode::new(&step.op, &t)?),
        Op::Attention { .. } => Box::new(attention::AttentionCode::with_head_dims(&step.op, &t, attention::static_head_dims(plan, step))?),
        Op::Transpose { .. } | Op::Slice { .. } | Op::Concat { .. } | Op::Split { .. } => {
            Box::new(layout::CopyCode::new(&step.op, &t)?)
        }
        Op::Tile | Op::Pad { .. } | Op::Trilu { .. } | Op::Gather { .. } | Op::GatherElements { .. } | Op::GatherND { .. } | Op::Resize { .. } => {
            Box::new(layout::IndexCode::new(&step.op, &t)?)
        }
        Op::Softmax { .. }
        | Op::LogSoftmax { .. }
        | Op::LayerNorm { .. }
        | Op::InstanceNorm { .. }
        | Op::GroupNorm { .. }
        | Op::Reduce { .. }
        | Op::ArgMax { .. }
        | Op::ArgMin { .. }
        | Op::CumSum { .. } => Box::new(reduce::ReduceCode::new(&step.op, &t)?),
        Op::MatMul | Op::Gemm { .. } => Box::new(GemmCode::new(&step.op, &t)?),
        Op::Conv { .. } => Box::new(ConvCode::new(&step.op, &t)?),
        Op::Stitched(_) => Box::new(stitched::StitchedCode::new(&step.op, &t)?),
        // Ops the CUDA backend has not learnt yet.
        other => return Err(format!("op {} has no CUDA implementation yet", other.name())),
    };
    Ok(StepKind::Code(code))
}

/// The CUDA source of step `index`'s module, or `None` when it launches no generated kernel.
pub fn step_source(plan: &Plan, index: usize) -> Result<Option<String>, String> {
    let Step::Op(s) = &plan.steps[index];
    match generate(plan, s, index)? {
        StepKind::Code(c) if !c.kernels().is_empty() => Ok(Some(module_source(c.kernels()))),
        _ => Ok(None),
    }
}

pub const MAX_RANK: usize = 8;

/// Dtypes and ranks of a step's operands, and the prefix that makes its kernel names unique.
pub struct Types {
    pub ins: Vec<Option<DType>>,
    pub in_ranks: Vec<usize>,
    pub outs: Vec<DType>,
    pub out_ranks: Vec<usize>,
    pub prefix: String,
}

impl Types {
    pub fn input(&self, i: usize) -> Result<DType, String> {
        self.ins.get(i).copied().flatten().ok_or_else(|| format!("input {i} is missing"))
    }
}

/// The complete source of one module.
pub fn module_source(kernels: &[Kernel]) -> String {
    let mut s = String::from(PRELUDE);
    for k in kernels {
        s.push('\n');
        s.push_str(&k.body);
    }
    s
}

/// Shared by every module: storage conversions (no CUDA headers needed, so NVRTC alone
/// compiles everything), the params struct, the grid-stride loop and block reductions.
pub const PRELUDE: &str = r#"typedef unsigned short q_f16;
typedef unsigned short q_bf16;
struct QParams { long long v[48]; };
__device__ __forceinline__ float q_h2f(q_f16 h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
__device__ __forceinline__ q_f16 q_f2h(float f) { q_f16 h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
__device__ __forceinline__ float q_b2f(q_bf16 h) { return __uint_as_float(((unsigned)h) << 16); }
__device__ __forceinline__ q_bf16 q_f2b(float f) {
  unsigned u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (q_bf16)0x7fc0u;
  u += 0x7fffu + ((u >> 16) & 1u);
  return (q_bf16)(u >> 16);
}
__device__ __forceinline__ double q_pd(long long bits) { return __longlong_as_double(bits); }
#define Q_LOOP(n) for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)
// ONNX Mod with fmod = 0: the result takes the divisor's sign.
template <class T> __device__ __forceinline__ T q_mod(T a, T b) {
  if (b == (T)0) return (T)0;
  T r = a % b;
  return (r != (T)0 && ((r < (T)0) != (b < (T)0))) ? r + b : r;
}
__device__ __forceinline__ float q_mod(float a, float b) { float r = fmodf(a, b); return (r != 0.0f && ((r < 0.0f) != (b < 0.0f))) ? r + b : r; }
__device__ __forceinline__ double q_mod(double a, double b) { double r = fmod(a, b); return (r != 0.0 && ((r < 0.0) != (b < 0.0))) ? r + b : r; }
struct QSum { template <class T> __device__ __forceinline__ T operator()(T a, T b) const { return a + b; } };
struct QProd { template <class T> __device__ __forceinline__ T operator()(T a, T b) const { return a * b; } };
struct QMax { template <class T> __device__ __forceinline__ T operator()(T a, T b) const { return (a > b || a != a) ? a : b; } };
struct QMin { template <class T> __device__ __forceinline__ T operator()(T a, T b) const { return (a < b || a != a) ? a : b; } };
// Every thread of the block gets the reduction of `v` over the block (blockDim.x % 32 == 0).
template <class T, class Op> __device__ __forceinline__ T q_block_reduce(T v, Op op) {
  __shared__ T q_sh[32];
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  if ((threadIdx.x & 31) == 0) q_sh[threadIdx.x >> 5] = v;
  __syncthreads();
  T r = q_sh[0];
  for (int k = 1; k < (int)(blockDim.x >> 5); ++k) r = op(r, q_sh[k]);
  return r;
}
"#;

/// How a dtype is stored and computed with in generated code.
#[derive(Clone, Copy, Debug)]
pub struct CType {
    pub dtype: DType,
}

impl CType {
    pub fn of(dtype: DType) -> CType {
        CType { dtype }
    }
    /// The element type in memory.
    pub fn storage(self) -> &'static str {
        match self.dtype {
            DType::F32 => "float",
            DType::F16 => "q_f16",
            DType::BF16 => "q_bf16",
            DType::F64 => "double",
            DType::I64 => "long long",
            DType::I32 => "int",
            DType::I8 => "signed char",
            DType::U8 | DType::Bool => "unsigned char",
        }
    }
    /// The type arithmetic happens in.
    pub fn compute(self) -> &'static str {
        match self.dtype {
            DType::F32 | DType::F16 | DType::BF16 => "float",
            DType::F64 => "double",
            DType::I64 => "long long",
            DType::I32 | DType::I8 | DType::U8 => "int",
            DType::Bool => "bool",
        }
    }
    pub fn is_float(self) -> bool {
        self.dtype.is_float()
    }
    /// A stored element (expression `x`) as a compute value.
    pub fn load(self, x: &str) -> String {
        match self.dtype {
            DType::F16 => format!("q_h2f({x})"),
            DType::BF16 => format!("q_b2f({x})"),
            DType::Bool => format!("({x} != 0)"),
            _ => x.to_string(),
        }
    }
    /// A compute value (of any arithmetic type) as a stored element.
    pub fn store(self, x: &str) -> String {
        match self.dtype {
            DType::F16 => format!("q_f2h((float)({x}))"),
            DType::BF16 => format!("q_f2b((float)({x}))"),
            DType::Bool => format!("(unsigned char)(({x}) != 0)"),
            _ => format!("({})({x})", self.storage()),
        }
    }
    /// A math function for this compute type: `expf` for float, `exp` for double.
    pub fn math(self, f: &str) -> String {
        if self.compute() == "float" {
            format!("{f}f")
        } else {
            f.to_string()
        }
    }
}

/// A float literal of the compute type; non-finite values go through their bit pattern.
pub fn lit(v: f64, compute: &str) -> String {
    if v.is_finite() {
        format!("(({compute})({v:e}))")
    } else {
        format!("(({compute})q_pd({}LL))", v.to_bits() as i64)
    }
}

/// Collects kernel params in order; fails (naming the count) past the struct's capacity.
#[derive(Default)]
pub struct ParamList(pub Vec<i64>);

impl ParamList {
    pub fn push(&mut self, v: i64) -> usize {
        self.0.push(v);
        self.0.len() - 1
    }
    pub fn extend<I: IntoIterator<Item = i64>>(&mut self, it: I) -> usize {
        let at = self.0.len();
        self.0.extend(it);
        at
    }
    pub fn push_f64(&mut self, v: f64) -> usize {
        self.push(v.to_bits() as i64)
    }
    pub fn finish(self) -> Result<Params, String> {
        if self.0.len() > PARAM_SLOTS {
            return Err(format!("{} kernel params exceed the {PARAM_SLOTS} slots", self.0.len()));
        }
        let mut p = [0i64; PARAM_SLOTS];
        p[..self.0.len()].copy_from_slice(&self.0);
        Ok(Params(p))
    }
}

/// Row-major strides of `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Vec<i64> {
    let mut s = vec![0i64; shape.len()];
    let mut acc = 1i64;
    for d in (0..shape.len()).rev() {
        s[d] = acc;
        acc *= shape[d] as i64;
    }
    s
}

/// Strides that read `input` (numpy-broadcast, right-aligned) at `out`'s coordinates.
pub fn broadcast_strides(input: &[usize], out: &[usize]) -> Result<Vec<i64>, String> {
    if input.len() > out.len() {
        return Err(format!("shape {input:?} cannot be broadcast to {out:?}"));
    }
    let cs = contiguous_strides(input);
    let lead = out.len() - input.len();
    let mut s = vec![0i64; out.len()];
    for (d, &o) in out.iter().enumerate().skip(lead) {
        let i = input[d - lead];
        if i == o {
            s[d] = if o == 1 { 0 } else { cs[d - lead] };
        } else if i == 1 {
            s[d] = 0;
        } else {
            return Err(format!("shape {input:?} cannot be broadcast to {out:?}"));
        }
    }
    Ok(s)
}

/// Elements of `dtype` per 16-byte vector (the vector kernels' width).
pub fn vector_len(dtype: DType) -> usize {
    (16 / dtype.size_bytes().max(1)).max(1)
}

/// The (kernel, threads) of a launch plan made of one element-wise launch, for unit tests of
/// which kernel a step picks.
#[cfg(test)]
pub(crate) fn single_launch(code: &dyn StepCode, ins: &[&[usize]], out: &[usize]) -> (usize, u64) {
    let bindings = Default::default();
    let s = StepShapes { ins: ins.iter().map(|&x| Some(x)).collect(), outs: vec![out], bindings: &bindings };
    match code.plan(&s).unwrap().actions.as_slice() {
        [Action::Launch { kernel, work: Work::Elements(n), .. }] => (*kernel, *n),
        other => panic!("{other:?}"),
    }
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Code that splits the linear index `i` into coordinates `c0..c{rank-1}` over the dims at
/// params `dims_at..`, and accumulates `off_k = Σ c_d * p.v[strides_at[k] + d]` for each k.
pub fn decompose(rank: usize, dims_at: usize, offsets: &[(&str, usize)]) -> String {
    let mut s = String::new();
    for (name, _) in offsets {
        s += &format!("    long long {name} = 0;\n");
    }
    s += "    long long r_ = i;\n";
    for d in (0..rank).rev() {
        s += &format!("    long long c{d} = r_ % p.v[{}]; r_ /= p.v[{}];\n", dims_at + d, dims_at + d);
        for (name, at) in offsets {
            s += &format!("    {name} += c{d} * p.v[{}];\n", at + d);
        }
    }
    s += "    (void)r_;\n";
    s
}
