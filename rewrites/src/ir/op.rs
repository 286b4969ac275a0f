//! The operations of the IR, in canonical form.
//!
//! Import resolves every ONNX "parameter input" (Reshape's shape, Unsqueeze's axes, Slice's
//! starts/ends, ReduceMean's axes, Resize's scales, Clip's bounds, …) into attributes here, as
//! symbolic dims where they depend on input sizes. Negative axes are normalised. So an op never
//! reads a shape tensor at run time, and `Squeeze`/`Unsqueeze`/`Flatten` are all `Reshape`.
//! Each variant's data inputs are listed in its doc comment, in ONNX order; `None` slots in
//! `Node::inputs` are absent optional inputs.

use std::sync::Arc;

use crate::dtype::DType;
use crate::ir::stitched::StitchedRegion;
use crate::sym::SymDim;
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Identity,
    Relu,
    Sigmoid,
    Tanh,
    Erf,
    Sqrt,
    Exp,
    Log,
    Neg,
    Abs,
    Reciprocal,
    Sin,
    Cos,
    Floor,
    Ceil,
    /// Round half to even, as ONNX specifies.
    Round,
    Sign,
    Softplus,
    /// Logical not (bool only).
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    /// Integer division truncates toward zero (as ORT's CPU EP does).
    Div,
    Pow,
    Max,
    Min,
    /// ONNX `Mod` with `fmod = 0` (sign of the divisor, integers only).
    Mod,
    /// ONNX `Mod` with `fmod = 1` (C fmod: sign of the dividend).
    Fmod,
    Equal,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    And,
    Or,
    Xor,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceKind {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PadMode {
    Constant,
    Reflect,
    Edge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResizeMode {
    Nearest,
    Linear,
    Cubic,
}

/// ONNX Resize `coordinate_transformation_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CoordMode {
    HalfPixel,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    HalfPixelSymmetric,
}

/// ONNX Resize `nearest_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NearestMode {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

/// A Resize scale per axis: a plain factor (from the `scales` input), or `out / in` when the
/// model gave `sizes` (possibly symbolic).
#[derive(Clone, Debug, PartialEq)]
pub enum SymScale {
    Factor(f32),
    Ratio { out: SymDim, input: SymDim },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A graph input; bound at run time. No inputs.
    Input { name: String },
    /// A constant with its data: initializers, `Constant` nodes and folded values. No inputs.
    Constant(Arc<Tensor>),
    /// An initializer whose data was not loaded (graph-only models): plans can be built and
    /// printed, not run. No inputs.
    Weight { name: String },
    /// An int64 tensor of rank 0 (one value) or 1 whose elements are symbolic dims, evaluated at
    /// run time: a shape computation whose result is used as data. No inputs.
    SymbolicValue { values: Vec<SymDim>, scalar: bool },
    /// Elementwise: `[x]`.
    Unary(UnaryOp),
    /// Elementwise with ONNX multidirectional broadcasting: `[a, b]`.
    Binary(BinaryOp),
    /// `[cond, x, y]`, broadcasting.
    Where,
    /// `[x]`.
    Cast { to: DType },
    /// `[x]`; bounds resolved from the optional min/max inputs (or opset-6 attributes).
    Clip { min: Option<f64>, max: Option<f64> },
    /// `[x]`.
    LeakyRelu { alpha: f32 },
    /// `[x]`; ONNX Gelu (opset 20): exact erf form, or the tanh approximation.
    Gelu { tanh: bool },
    /// `[a, b]` with numpy matmul semantics (1-D promotion, batch broadcasting).
    MatMul,
    /// `[a, b, c?, r?]`: `alpha * op(a) @ op(b) + beta * c + r`, c broadcast to the output; `r`
    /// (a residual: exactly the output's shape and dtype, never the output's own memory) is made
    /// by `crate::epilogue`, never by the importer.
    Gemm { alpha: f32, beta: f32, trans_a: bool, trans_b: bool },
    /// `[x, w, b?, r?]`. `pads` = begins then ends (auto_pad already resolved). ONNX's layout (x
    /// `[N, C, spatial…]`, w `[M, C/group, k…]`, y `[N, M, spatial…]`) unless `channels_last`:
    /// x `[N, spatial…, C]`, w `[M, k…, C/group]`, y `[N, spatial…, M]` (made by
    /// `crate::layout`, never by the importer). `r` is a residual added to the result: exactly
    /// y's shape, layout and dtype, never y's own memory (made by `crate::epilogue`).
    Conv { strides: Vec<usize>, pads: Vec<usize>, dilations: Vec<usize>, group: usize, channels_last: bool },
    /// `[x, scale, bias]`.
    InstanceNorm { epsilon: f32 },
    /// `[x, scale, bias]`; scale/bias have C entries if `per_channel_affine` (opset 21), else
    /// `num_groups` entries (opset 18). x is `[N, C, spatial…]`, or `[N, spatial…, C]` when
    /// `channels_last` (made by `crate::layout`, never by the importer).
    GroupNorm { epsilon: f32, num_groups: usize, per_channel_affine: bool, channels_last: bool },
    /// `[x, scale, bias?]`, normalising axes `axis..rank`; only the first output (Y) is produced.
    LayerNorm { axis: usize, epsilon: f32 },
    /// `[x]` along one axis (opset ≥ 13 semantics).
    Softmax { axis: usize },
    /// `[x]` along one axis (opset ≥ 13 semantics).
    LogSoftmax { axis: usize },
    /// `[x]`; `axes` sorted and non-empty (reducing over nothing is folded to Identity at import).
    Reduce { kind: ReduceKind, axes: Vec<usize>, keepdims: bool },
    /// `[x]`, int64 result.
    ArgMax { axis: usize, keepdims: bool, select_last_index: bool },
    /// `[x]`, int64 result.
    ArgMin { axis: usize, keepdims: bool, select_last_index: bool },
    /// `[x]`: the same elements in the node's output shape (Reshape, Squeeze, Unsqueeze, Flatten).
    Reshape,
    /// `[x]`: broadcast to the node's output shape.
    Expand,
    /// `[x]`.
    Transpose { perm: Vec<usize> },
    /// `[x0, x1, ...]`.
    Concat { axis: usize },
    /// `[x]` → one output per piece; each piece's size along `axis` is its output shape's.
    Split { axis: usize },
    /// `[x]`: per sliced axis, the first index (already clamped into range) and the step; the
    /// output shape gives each length.
    Slice { axes: Vec<usize>, starts: Vec<SymDim>, steps: Vec<i64> },
    /// `[data, indices]`; negative indices count from the end of `axis`.
    Gather { axis: usize },
    /// `[data, indices]`.
    GatherElements { axis: usize },
    /// `[data, indices]`.
    GatherND { batch_dims: usize },
    /// `[x]`; `pads` = begins then ends per axis (negative values crop).
    Pad { pads: Vec<SymDim>, mode: PadMode, value: f64 },
    /// `[x]`; output shape is the node's.
    Resize {
        mode: ResizeMode,
        coord: CoordMode,
        nearest: NearestMode,
        cubic_coeff_a: f32,
        exclude_outside: bool,
        scales: Vec<SymScale>,
    },
    /// No inputs: every element equals `value`, in the node's output shape and dtype
    /// (ConstantOfShape with a symbolic shape).
    Fill { value: f64 },
    /// No inputs: element i is `start + i * delta`, length from the output shape (Range with a
    /// symbolic limit).
    Range { start: f64, delta: f64 },
    /// `[x]`.
    Trilu { upper: bool, k: i64 },
    /// `[x]`.
    CumSum { axis: usize, exclusive: bool, reverse: bool },
    /// `[x]`; the output shape is input × repeats per axis.
    Tile,
    /// A node quilt does not run (lenient import only). Outputs carry the types the model declared.
    Opaque { op_type: String, domain: String, reason: String },
    // ---- Fused ops made by the optimizer (`crate::egraph`); no ONNX op imports to these. ----
    /// `[x]`: `x * sigmoid(x)` (SiLU / swish), elementwise, same shape and dtype as `x`.
    Silu,
    /// `[x]`: `x * sigmoid(alpha * x)` (CLIP's QuickGELU uses `alpha = 1.702`), elementwise.
    QuickGelu { alpha: f32 },
    /// `[x]`: GeGLU. `x`'s last axis has even length `2F`; with `a = x[..., :F]` and
    /// `gate = x[..., F:]` the output `[..., F]` is `a * gelu(gate)` (erf form, or the tanh
    /// approximation when `tanh`).
    GeGlu { tanh: bool },
    /// `[q, k, v, mask?]`: scaled dot-product attention `softmax(scale · q·kᵀ + mask) · v`, the
    /// softmax over the key axis, computed without materialising the score matrix in backends
    /// built for it (the CPU reference computes one query row at a time).
    ///
    /// Layouts:
    /// - `heads: None`: `q [*, N, D]`, `k [*, M, D]`, `v [*, M, Dv]` → `[*, N, Dv]`, where `*`
    ///   (the leading dims) is the same for all three; `mask` broadcasts to `[*, N, M]`.
    /// - `heads: Some(H)` (packed heads, "BSHD"): `q [B, N, H·D]`, `k [B, M, H·D]`,
    ///   `v [B, M, H·Dv]` → `[B, N, H·Dv]`; head `h` uses columns `h·D..(h+1)·D` of q and k and
    ///   `h·Dv..(h+1)·Dv` of v and of the output; `mask` broadcasts to `[B, H, N, M]`.
    ///
    /// `columns` (packed heads only): q, k and v are column ranges of wider inputs, as when one
    /// MatMul computed two or three of them (`crate::projections`); see [`AttentionColumns`].
    Attention { scale: f32, heads: Option<usize>, columns: Option<AttentionColumns> },
    /// `[x0, x1, …]` → one output per region output: several memory-bound ops run as one
    /// kernel (made by `crate::stitch` after extraction; see `StitchedRegion`).
    Stitched(Arc<StitchedRegion>),
}

/// Where packed-heads attention finds q, k and v in inputs wider than them: input `i` (q, k, v)
/// uses columns `offset[i]..offset[i] + width[i]` of its last axis, so q and k are `width[0]`
/// (= `width[1]` = H·D) wide and v `width[2]` (= H·Dv); the row stride of each is its input's
/// full width. The same value may feed several inputs: `[qkv, qkv, qkv]` with offsets
/// `[0, C, 2C]` is self-attention's q, k, v from one projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttentionColumns {
    pub offset: [usize; 3],
    pub width: [usize; 3],
}

impl AttentionColumns {
    /// The column offsets and widths of q, k and v in inputs whose last axes are `widths` wide:
    /// `columns`' ranges, checked to lie inside them, or the whole inputs.
    pub fn ranges(columns: Option<AttentionColumns>, widths: [usize; 3]) -> Result<([usize; 3], [usize; 3]), String> {
        let Some(c) = columns else { return Ok(([0; 3], widths)) };
        for (i, name) in ["q", "k", "v"].iter().enumerate() {
            if c.offset[i] + c.width[i] > widths[i] {
                return Err(format!("{name} is columns {}..{} of an input {} wide", c.offset[i], c.offset[i] + c.width[i], widths[i]));
            }
        }
        Ok((c.offset, c.width))
    }
}

impl Op {
    /// Short name for messages and plan printing (the ONNX spelling where there is one).
    pub fn name(&self) -> String {
        match self {
            Op::Unary(u) => format!("{u:?}"),
            Op::Binary(b) => format!("{b:?}"),
            Op::Reduce { kind, .. } => format!("Reduce{kind:?}"),
            Op::Opaque { op_type, .. } => op_type.clone(),
            Op::Constant(_) => "Constant".into(),
            Op::Stitched(_) => "Stitched".into(),
            other => {
                let s = format!("{other:?}");
                s.split([' ', '{', '(']).next().unwrap_or("").to_string()
            }
        }
    }

    /// `name()` plus what a plan listing needs to tell steps of one op apart: an attention's
    /// column ranges (which part of a packed projection each of q, k, v is).
    pub fn label(&self) -> String {
        match self {
            Op::Attention { columns: Some(c), .. } => {
                let cols: Vec<String> = (0..3).map(|i| format!("{}..{}", c.offset[i], c.offset[i] + c.width[i])).collect();
                format!("Attention{{columns={}}}", cols.join(","))
            }
            other => other.name(),
        }
    }

    /// Ops with no inputs that only provide a value (graph inputs, constants, weights).
    pub fn is_source(&self) -> bool {
        matches!(self, Op::Input { .. } | Op::Constant(_) | Op::Weight { .. })
    }
}
