//! Convolution (ONNX Conv, 1-D and 2-D, NCHW or channels-last): cuDNN when it can, im2col +
//! cuBLAS otherwise.
//!
//! - `cudnn`: one cuDNN forward convolution per step, bias in the same call; the plan built once
//!   per concrete shape and cached; f32, f16 and bf16 with f32 accumulation; f32 without TF32
//!   so fp32 models match the CPU reference. Two APIs behind it: `graph_api` (cuDNN's backend
//!   API, engine heuristics; the Hopper engines, 2-4× faster than the legacy API in f16 NHWC)
//!   and `legacy` (`cudnnConvolutionForward`), which runs a shape the graph API has no engine for.
//! - `im2col`: the fallback for NCHW data (column buffer + cuBLAS GEMM). It runs when libcudnn
//!   cannot be loaded (reported once on stderr), for f64, for asymmetric pads, for tensors past
//!   cuDNN's 32-bit sizes, and for the f32 shapes where it beats cuDNN (`prefers_cudnn`,
//!   measured on the H100). Channels-last convolutions (`Op::Conv::channels_last`) have no
//!   im2col path: without cuDNN (or for f64, asymmetric pads) `ConvCode::new` declines them.
//!
//! Policy (`QUILT_CONV`, or `set_policy`, read when a step is prepared): `auto` (default:
//! channels-last data on the graph API; 16-bit NCHW on the graph API or im2col by
//! `graph_beats_im2col_nchw`; f32 NCHW on the legacy API or im2col by `prefers_cudnn`), `cudnn` (every
//! convolution cuDNN can run on the graph API first), `legacy` (the legacy API only, the
//! pre-graph-API behaviour for cuDNN shapes), `im2col` (NCHW convolutions never on cuDNN).
//!
//! Where cuDNN comes from: quilt opens cuDNN 9 at run time through the dynamic loader, trying
//! the names `libcudnn.so` first and `libcudnn.so.9` later (cudarc's order), so the loader's
//! search (`LD_LIBRARY_PATH`, then the system cache) decides which copy runs. A system install
//! (`/usr/lib/x86_64-linux-gnu`) is found as is. To use another copy, e.g. the one in PyTorch's
//! `nvidia-cudnn-cu*` wheel, put its `lib` directory on `LD_LIBRARY_PATH` (for the
//! `libcudnn_*.so.9` sub-libraries) and, if the system also has a `libcudnn.so`, a directory
//! holding a `libcudnn.so` link to the wanted `libcudnn.so.9` ahead of it (verified on the H100
//! machine: 9.19 from the wheel instead of the system's 9.14):
//!
//! ```sh
//! CUDNN="$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0])')/lib"
//! mkdir -p ~/.quilt/cudnn && ln -sf "$CUDNN/libcudnn.so.9" ~/.quilt/cudnn/libcudnn.so
//! export LD_LIBRARY_PATH="$HOME/.quilt/cudnn:$CUDNN:$LD_LIBRARY_PATH"
//! ```

pub mod cudnn;
pub mod graph_api;
pub mod im2col;
pub mod legacy;

use std::sync::atomic::{AtomicU8, Ordering};

use quilt_rewrites::{DType, Op};

use self::cudnn::ConvCall;
use super::codegen::{numel, Action, Arg, Kernel, LaunchPlan, StepCode, StepShapes, Types};

/// A convolution at concrete shapes, always in 2-D terms (a 1-D conv has `h = kh = oh = 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvGeometry {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Output channels.
    pub m: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    /// (height, width) pairs.
    pub stride: (usize, usize),
    pub dilation: (usize, usize),
    pub pad_begin: (usize, usize),
    pub pad_end: (usize, usize),
    pub group: usize,
}

impl ConvGeometry {
    /// Checks the ONNX Conv attributes against input `x`, weight `w` and output `out` shapes.
    pub fn new(strides: &[usize], pads: &[usize], dilations: &[usize], group: usize, x: &[usize], w: &[usize], out: &[usize]) -> Result<ConvGeometry, String> {
        let two_d = x.len() == 4;
        if !(x.len() == 3 || two_d) || w.len() != x.len() || out.len() != x.len() {
            return Err(format!("Conv input {x:?}, weight {w:?} and output {out:?}: only 1-D and 2-D convolutions run on CUDA"));
        }
        let spatial = x.len() - 2;
        if strides.len() != spatial || dilations.len() != spatial || pads.len() != 2 * spatial || group == 0 {
            return Err("Conv attributes do not match the input rank".into());
        }
        // Everything as 2-D: (H, W), kernel (kh, kw), and per-axis attributes.
        let sp = |v: &[usize]| if two_d { (v[v.len() - 2], v[v.len() - 1]) } else { (1, v[v.len() - 1]) };
        let pair = |v: &[usize], fill: usize| if two_d { (v[0], v[1]) } else { (fill, v[0]) };
        let g = ConvGeometry {
            n: x[0],
            c: x[1],
            h: sp(x).0,
            w: sp(x).1,
            m: w[0],
            kh: sp(w).0,
            kw: sp(w).1,
            oh: sp(out).0,
            ow: sp(out).1,
            stride: pair(strides, 1),
            dilation: pair(dilations, 1),
            pad_begin: pair(&pads[..spatial], 0),
            pad_end: pair(&pads[spatial..], 0),
            group,
        };
        if g.c != w[1] * group || !g.m.is_multiple_of(group) || out[0] != g.n || out[1] != g.m {
            return Err(format!("Conv input {x:?}, weight {w:?}, group {group} and output {out:?} do not fit"));
        }
        if g.stride.0 == 0 || g.stride.1 == 0 || g.dilation.0 == 0 || g.dilation.1 == 0 {
            return Err("Conv strides and dilations must be positive".into());
        }
        let expect = |i: usize, p0: usize, p1: usize, d: usize, k: usize, st: usize| -> i64 {
            let span = i as i64 + (p0 + p1) as i64 - (d * (k.max(1) - 1)) as i64 - 1;
            if span < 0 { 0 } else { span / st as i64 + 1 }
        };
        if expect(g.h, g.pad_begin.0, g.pad_end.0, g.dilation.0, g.kh, g.stride.0) != g.oh as i64
            || expect(g.w, g.pad_begin.1, g.pad_end.1, g.dilation.1, g.kw, g.stride.1) != g.ow as i64
        {
            return Err(format!("Conv output {out:?} does not match input {x:?}, kernel {w:?} and the attributes"));
        }
        Ok(g)
    }

    pub fn out_elems(&self) -> usize {
        self.n * self.m * self.oh * self.ow
    }

    /// Multiply-adds × 2.
    pub fn flops(&self) -> f64 {
        2.0 * self.out_elems() as f64 * (self.c / self.group * self.kh * self.kw) as f64
    }
}

/// Whether `ConvCode::plan` emits cuDNN calls (`Action::Conv`, run by the executor's `Dnn`).
pub const CUDNN_DISPATCHED: bool = true;

/// Which convolutions go to cuDNN, and through which API (read when a step is prepared).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPolicy {
    /// Channels-last data on the graph API; NCHW by rules measured on the H100: 16-bit on the
    /// graph API or im2col (`graph_beats_im2col_nchw`), f32 on the legacy API's FMA kernels or
    /// im2col (`prefers_cudnn`).
    Auto,
    /// Every convolution cuDNN can run, graph API first.
    Cudnn,
    /// None of the NCHW ones: im2col + cuBLAS throughout (channels-last ones still need cuDNN).
    Im2col,
    /// Every convolution cuDNN can run, on the legacy API only.
    Legacy,
}

static POLICY: AtomicU8 = AtomicU8::new(u8::MAX);

/// The process-wide policy: set by `set_policy`, else `QUILT_CONV=auto|cudnn|legacy|im2col`,
/// else Auto.
pub fn policy() -> ConvPolicy {
    match POLICY.load(Ordering::Relaxed) {
        0 => ConvPolicy::Auto,
        1 => ConvPolicy::Cudnn,
        2 => ConvPolicy::Im2col,
        3 => ConvPolicy::Legacy,
        _ => match std::env::var("QUILT_CONV").as_deref() {
            Ok("cudnn") => ConvPolicy::Cudnn,
            Ok("im2col") => ConvPolicy::Im2col,
            Ok("legacy") => ConvPolicy::Legacy,
            _ => ConvPolicy::Auto,
        },
    }
}

/// Overrides `QUILT_CONV` for steps prepared from now on (tests and benchmarks).
pub fn set_policy(p: ConvPolicy) {
    POLICY.store(p as u8, Ordering::Relaxed);
}

/// Whether cuDNN's legacy API beats im2col + cuBLAS for `g` with NCHW data (the f32 rule of
/// `ConvPolicy::Auto`), as measured on the H100
/// (tests/bench/results/2026-11-25-conv-h100.md, batch 2): cuDNN's NCHW kernels win at large
/// spatial sizes (and save im2col's C·kh·kw·OH·OW column buffer there) and when there are few
/// output channels; cuBLAS wins on the deep, small-spatial convolutions and on 1×1 convolutions,
/// which are plain GEMMs on NCHW data.
pub fn prefers_cudnn(g: &ConvGeometry) -> bool {
    let pointwise = g.kh == 1 && g.kw == 1 && g.stride == (1, 1) && g.pad_begin == (0, 0) && g.pad_end == (0, 0) && g.group == 1;
    !pointwise && ((g.oh * g.ow >= 2048 && g.c >= 16) || g.m < 64)
}

/// Whether cuDNN's graph API beats im2col + cuBLAS for `g` with 16-bit NCHW data (the f16/bf16
/// rule of `ConvPolicy::Auto`), as measured on the H100
/// (tests/bench/results/2026-11-25-conv-graph-api-h100.md): the graph API wins 1.5-5× at the
/// UNet's 64² and 32² and the VAE's 64² and 128² convolutions and on few output channels; im2col
/// wins on 1×1 convolutions (plain GEMMs), on the deep ones at ≤ 16² (1280 channels: cuBLAS 2×
/// at 8²), and at ≥ 256² (the fast NCHW engines want a workspace over `cudnn::WORKSPACE_CAP`
/// there, so cuDNN falls back to a 2-4× slower engine). Channels-last data is always faster on
/// the graph API.
pub fn graph_beats_im2col_nchw(g: &ConvGeometry) -> bool {
    let pointwise = g.kh == 1 && g.kw == 1 && g.stride == (1, 1) && g.pad_begin == (0, 0) && g.pad_end == (0, 0) && g.group == 1;
    let deep_and_small = g.c >= 1280 && g.oh * g.ow <= 256;
    let large = g.oh * g.ow >= 256 * 256;
    !pointwise && !deep_and_small && !large
}

pub struct ConvCode {
    strides: Vec<usize>,
    pads: Vec<usize>,
    dilations: Vec<usize>,
    group: usize,
    /// NHWC data and KRSC filters (`Op::Conv::channels_last`): cuDNN only, there is no
    /// channels-last im2col.
    channels_last: bool,
    dtype: DType,
    has_bias: bool,
    /// Input 3, a residual added in cuDNN's epilogue (`quilt_rewrites::epilogue`); such a step
    /// always runs on cuDNN (im2col has no residual).
    has_residual: bool,
    policy: ConvPolicy,
    /// Why this step never uses cuDNN, whatever the shapes (`None`: it may when libcudnn loads).
    cudnn_declined: Option<String>,
    /// The fallback's kernels (see `im2col::kernels`).
    kernels: Vec<Kernel>,
}

impl ConvCode {
    pub fn new(op: &Op, t: &Types) -> Result<ConvCode, String> {
        let Op::Conv { strides, pads, dilations, group, channels_last } = op else { return Err(format!("{} is not Conv", op.name())) };
        let dtype = t.input(0)?;
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) || t.input(1)? != dtype {
            return Err(format!("Conv of {dtype}"));
        }
        let spatial = t.in_ranks[0].saturating_sub(2);
        if !(1..=2).contains(&spatial) {
            return Err(format!("{spatial}-D convolution (only 1-D and 2-D run on CUDA for now)"));
        }
        if strides.len() != spatial || dilations.len() != spatial || pads.len() != 2 * spatial || *group == 0 {
            return Err("Conv attributes do not match the input rank".into());
        }
        let has_bias = t.ins.get(2).copied().flatten().is_some();
        if has_bias && t.input(2)? != dtype {
            return Err(format!("Conv bias of {} with data of {dtype}", t.input(2)?));
        }
        let has_residual = t.ins.get(3).copied().flatten().is_some();
        if has_residual && (t.input(3)? != dtype || t.in_ranks[3] != t.out_ranks[0]) {
            return Err(format!("Conv residual of {} (rank {}) with output of {dtype} (rank {})", t.input(3)?, t.in_ranks[3], t.out_ranks[0]));
        }
        let policy = policy();
        let cudnn_declined = if policy == ConvPolicy::Im2col && !channels_last && !has_residual {
            Some("conv policy im2col".to_string())
        } else if !cudnn::supports_dtype(dtype) {
            Some(format!("cuDNN is not used for {dtype}"))
        } else if pads[..spatial] != pads[spatial..] {
            Some(format!("asymmetric pads {pads:?}"))
        } else {
            None
        };
        if *channels_last || has_residual {
            // No im2col for channels-last data: decline here, where the executor's check sees it
            // (the node then runs elsewhere), rather than at the first shape.
            if let Some(why) = &cudnn_declined {
                return Err(format!("{} Conv needs cuDNN, which is not used here: {why}", if *channels_last { "a channels-last" } else { "a residual" }));
            }
            cudnn::library().map_err(|e| format!("{} Conv needs cuDNN: {e}", if *channels_last { "a channels-last" } else { "a residual" }))?;
        }
        Ok(ConvCode {
            strides: strides.clone(),
            pads: pads.clone(),
            dilations: dilations.clone(),
            group: *group,
            channels_last: *channels_last,
            dtype,
            has_bias,
            has_residual,
            policy,
            cudnn_declined,
            kernels: im2col::kernels(&t.prefix, dtype),
        })
    }

    /// The step's geometry at concrete shapes (x, w, output; channels-last shapes when the op
    /// is).
    pub fn geometry(&self, x: &[usize], w: &[usize], out: &[usize]) -> Result<ConvGeometry, String> {
        if self.channels_last {
            let first = |s: &[usize]| -> Vec<usize> {
                if s.len() < 2 {
                    return s.to_vec();
                }
                std::iter::once(s[0]).chain(std::iter::once(s[s.len() - 1])).chain(s[1..s.len() - 1].iter().copied()).collect()
            };
            return ConvGeometry::new(&self.strides, &self.pads, &self.dilations, self.group, &first(x), &first(w), &first(out));
        }
        ConvGeometry::new(&self.strides, &self.pads, &self.dilations, self.group, x, w, out)
    }

    /// The cuDNN call for `g`, or why the fallback runs instead.
    pub fn cudnn_call(&self, g: &ConvGeometry) -> Result<ConvCall, String> {
        if let Some(why) = &self.cudnn_declined {
            return Err(why.clone());
        }
        let call = if self.channels_last {
            cudnn::library().map_err(|e| format!("a channels-last convolution needs cuDNN: {e}"))?;
            ConvCall::new(*g, self.dtype, self.has_bias)?.nhwc()
        } else {
            let im2col_faster = match self.dtype {
                DType::F32 => !prefers_cudnn(g),
                _ => !graph_beats_im2col_nchw(g),
            };
            if self.policy == ConvPolicy::Auto && im2col_faster && !self.has_residual {
                return Err("im2col + cuBLAS is faster for this shape".into());
            }
            cudnn::library()?;
            ConvCall::new(*g, self.dtype, self.has_bias)?
        };
        let call = if self.has_residual { call.with_residual(Arg::In(3)) } else { call };
        // f32 under Auto stays on the legacy API's measured FMA kernels.
        let legacy = self.policy == ConvPolicy::Legacy || (self.policy == ConvPolicy::Auto && self.dtype == DType::F32);
        Ok(if legacy { call.legacy() } else { call })
    }

    /// The im2col + cuBLAS launch plan for `g` (kernels from `kernels()`).
    pub fn im2col_plan(&self, g: &ConvGeometry) -> Result<LaunchPlan, String> {
        let mut plan = LaunchPlan::default();
        im2col::push_actions(&mut plan, g, self.dtype, self.has_bias)?;
        Ok(plan)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn has_bias(&self) -> bool {
        self.has_bias
    }

    pub fn has_residual(&self) -> bool {
        self.has_residual
    }
}

impl StepCode for ConvCode {
    fn kernels(&self) -> &[Kernel] {
        &self.kernels
    }

    fn plan(&self, s: &StepShapes) -> Result<LaunchPlan, String> {
        let g = self.geometry(s.input(0)?, s.input(1)?, s.outs[0])?;
        if self.has_bias && numel(s.input(2)?) != g.m {
            return Err(format!("bias must have {} elements", g.m));
        }
        if self.has_residual && s.input(3)? != s.outs[0] {
            return Err(format!("residual {:?} must have the output's shape {:?}", s.input(3)?, s.outs[0]));
        }
        if g.out_elems() == 0 {
            return Ok(LaunchPlan::default());
        }
        match self.cudnn_call(&g) {
            Ok(call) => Ok(LaunchPlan { actions: vec![Action::Conv(call)], ..LaunchPlan::default() }),
            Err(why) if self.channels_last || self.has_residual => Err(why),
            Err(_) => self.im2col_plan(&g),
        }
    }
}
