//! Elementwise kernels with numpy broadcasting: one thread per output element; each input is
//! read through per-axis strides given at run time (0 on broadcast axes), so one source serves
//! every shape. Unary, Binary, Where, Cast, Clip, LeakyRelu, Gelu, the optimizer's Silu and
//! QuickGelu, Expand, Fill and Range. Below 2^31 elements the kernel takes 32-bit indices over
//! collapsed axes, and `V` outputs per thread where the innermost axis allows (`stitched::index`).

use quilt_rewrites::ir::{BinaryOp, UnaryOp};
use quilt_rewrites::{DType, Op};

use super::stitched::index::{self, vectorizable};
use crate::cuda::env;
use super::{broadcast_strides, decompose, lit, numel, Action, Arg, CType, Kernel, LaunchPlan, ParamList, StepCode, StepShapes, Types, Work};
use crate::cuda::device::PARAM_SLOTS;

pub struct ElementwiseCode {
    kernels: Vec<Kernel>,
    /// The data inputs the kernel reads, in kernel-argument order.
    inputs: Vec<usize>,
    out_rank: usize,
    fill: Option<FillKind>,
    /// Whether the kernel has the 32-bit paths (their params follow the strides).
    narrow: bool,
    /// Elements per thread on the vector path (1: none).
    vlen: usize,
}

#[derive(Clone, Copy)]
enum FillKind {
    Value(f64),
    Range { start: f64, delta: f64, int: bool },
}

impl ElementwiseCode {
    pub fn new(op: &Op, t: &Types) -> Result<ElementwiseCode, String> {
        let out = CType::of(t.outs[0]);
        let r = t.out_ranks[0];
        let present: Vec<usize> = (0..t.ins.len()).filter(|&i| t.ins[i].is_some()).collect();
        let cts: Vec<CType> = present.iter().map(|&i| CType::of(t.ins[i].unwrap())).collect();
        let a = |k: usize| format!("a{k}");
        let mut fill = None;
        let expr = match op {
            Op::Unary(u) => unary(*u, cts[0], &a(0))?,
            Op::Binary(b) => binary(*b, cts[0], cts[1], &a(0), &a(1))?,
            Op::Where => "(a0 ? a1 : a2)".to_string(),
            Op::Cast { .. } | Op::Expand => a(0),
            Op::Clip { min, max } => {
                let mut e = a(0);
                if let Some(lo) = min {
                    e = format!("({e} < {l} ? {l} : {e})", l = bound(*lo, cts[0]));
                }
                if let Some(hi) = max {
                    e = format!("({e} > {h} ? {h} : {e})", h = bound(*hi, cts[0]));
                }
                e
            }
            Op::LeakyRelu { alpha } => format!("(a0 < 0 ? a0 * {} : a0)", lit(*alpha as f64, cts[0].compute())),
            Op::Gelu { tanh } => gelu(cts[0], "a0", *tanh),
            // x * sigmoid(alpha * x): SiLU is alpha = 1, CLIP's QuickGELU alpha = 1.702.
            Op::Silu => sigmoid_gated(cts[0], "a0", 1.0, fast_math(cts[0], &[out])),
            Op::QuickGelu { alpha } => sigmoid_gated(cts[0], "a0", *alpha as f64, fast_math(cts[0], &[out])),
            Op::Fill { value } => {
                fill = Some(FillKind::Value(*value));
                "q_pd(p.v[1])".to_string()
            }
            Op::Range { start, delta } => {
                fill = Some(FillKind::Range { start: *start, delta: *delta, int: !out.is_float() });
                match out.dtype {
                    DType::F64 => "(q_pd(p.v[1]) + (double)i * q_pd(p.v[2]))".to_string(),
                    d if d.is_float() => "((float)q_pd(p.v[1]) + (float)i * (float)q_pd(p.v[2]))".to_string(),
                    _ => "(p.v[1] + i * p.v[2])".to_string(),
                }
            }
            other => return Err(format!("{} is not elementwise", other.name())),
        };
        // Param layout: n, out dims (r), then r strides per input (fill: its values at 1..);
        // then, when they fit, the 32-bit paths' narrow data and vector flag (`index`).
        let name = format!("{}_ew", t.prefix);
        let mut args = format!("const QParams p, {}* __restrict__ out", out.storage());
        for (k, ct) in cts.iter().enumerate() {
            args += &format!(", const {}* __restrict__ in{k}", ct.storage());
        }
        let narrow_at = 1 + r + r * cts.len();
        let narrow = fill.is_none() && narrow_at + index::slots(r, cts.len()) < PARAM_SLOTS;
        let widest = cts.iter().chain([&out]).map(|ct| ct.dtype.size_bytes()).max().unwrap_or(16);
        let vlen = if narrow { 16 / widest } else { 1 };
        let mut body = String::new();
        if narrow {
            body += &super::stitched::text::helpers();
        }
        body += &format!("extern \"C\" __global__ void {name}({args}) {{\n");
        let element = |indent: &str| -> String {
            let mut b = String::new();
            for (k, ct) in cts.iter().enumerate() {
                b += &format!("{indent}{} a{k} = {};\n", ct.compute(), ct.load(&format!("in{k}[o{k}]")));
            }
            b + &format!("{indent}out[i] = {};\n", out.store(&expr))
        };
        let mut wide = "  Q_LOOP(p.v[0]) {\n".to_string();
        if fill.is_none() {
            let offs: Vec<(String, usize)> = (0..cts.len()).map(|k| (format!("o{k}"), 1 + r + k * r)).collect();
            let refs: Vec<(&str, usize)> = offs.iter().map(|(n, at)| (n.as_str(), *at)).collect();
            wide += &decompose(r, 1, &refs);
            wide += &element("    ");
        } else {
            wide += &format!("    out[i] = {};\n", out.store(&expr));
        }
        wide += "  }\n";
        if narrow {
            let names: Vec<String> = (0..cts.len()).map(|k| format!("o{k}")).collect();
            body += &format!("  const unsigned nax_ = q_lo(p.v[{narrow_at}]);\n");
            if vlen > 1 {
                let ptrs: Vec<String> = std::iter::once("(unsigned long long)out".to_string()).chain((0..cts.len()).map(|k| format!("(unsigned long long)in{k}"))).collect();
                body += &format!("  const bool vec_ = nax_ != 0u && p.v[{}] != 0 && (({}) & 15ull) == 0ull;\n", narrow_at + index::slots(r, cts.len()), ptrs.join(" | "));
                // V consecutive outputs per thread: inputs that vary along the innermost
                // collapsed axis load V at once, inputs constant along it load one value.
                body += &format!("  if (vec_) {{\n    const unsigned n_ = (unsigned)p.v[0] / {vlen}u;\n    for (unsigned w_ = blockIdx.x * blockDim.x + threadIdx.x; w_ < n_; w_ += gridDim.x * blockDim.x) {{\n      const unsigned i = w_ * {vlen}u;\n");
                body += &index::offsets(r, narrow_at, &names, "      ");
                let pairs = r.max(1).div_ceil(2);
                for (k, ct) in cts.iter().enumerate() {
                    let st = ct.storage();
                    body += &format!("      QVec<{st}, {vlen}> x{k};\n      if (q_lo(p.v[{}]) == 1u) x{k} = *reinterpret_cast<const QVec<{st}, {vlen}>*>(in{k} + o{k});\n      else {{ {st} b_ = in{k}[o{k}];\n#pragma unroll\n        for (int e_ = 0; e_ < {vlen}; ++e_) x{k}.x[e_] = b_; }}\n", narrow_at + 1 + r.max(1) + k * pairs);
                }
                body += &format!("      QVec<{st}, {vlen}> y_;\n#pragma unroll\n      for (int e_ = 0; e_ < {vlen}; ++e_) {{\n", st = out.storage());
                for (k, ct) in cts.iter().enumerate() {
                    body += &format!("        {} a{k} = {};\n", ct.compute(), ct.load(&format!("x{k}.x[e_]")));
                }
                body += &format!("        y_.x[e_] = {};\n      }}\n      *reinterpret_cast<QVec<{st}, {vlen}>*>(out + i) = y_;\n    }}\n  }} else ", out.store(&expr), st = out.storage());
            } else {
                body += "  ";
            }
            body += "if (nax_ != 0u) {\n    const unsigned n_ = (unsigned)p.v[0];\n    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n_; i += gridDim.x * blockDim.x) {\n";
            body += &index::offsets(r, narrow_at, &names, "      ");
            body += &element("      ");
            body += "    }\n  } else {\n";
            body += &wide.lines().map(|l| format!("  {l}\n")).collect::<String>();
            body += "  }\n}\n";
        } else {
            body += &wide;
            body += "}\n";
        }
        Ok(ElementwiseCode { kernels: vec![Kernel { name, body }], inputs: present, out_rank: r, fill, narrow, vlen })
    }
}

/// `gelu(x)`: the erf form, or the tanh approximation (the CPU interpreter's formulas).
pub fn gelu(c: CType, x: &str, tanh: bool) -> String {
    let cc = c.compute();
    let (h, one) = (lit(0.5, cc), lit(1.0, cc));
    if tanh {
        let k = lit((2.0 / std::f64::consts::PI).sqrt(), cc);
        format!("({h} * {x} * ({one} + {tanh}({k} * ({x} + {g} * {x} * {x} * {x}))))", tanh = c.math("tanh"), g = lit(0.044715, cc))
    } else {
        format!("({h} * {x} * ({one} + {erf}({x} * {s})))", erf = c.math("erf"), s = lit(std::f64::consts::FRAC_1_SQRT_2, cc))
    }
}

/// `x * sigmoid(alpha * x)`. `fast`: through the approximate exponential and division
/// (`__expf`, `__fdividef`: a few ulp of f32, far below the 16-bit outputs it is allowed for, see
/// `fast_math`), which takes the SiLU of a GroupNorm apply from ~25 instructions to ~6 (session 8's
/// profile: those kernels were instruction-bound at 15% of DRAM bandwidth).
pub fn sigmoid_gated(c: CType, x: &str, alpha: f64, fast: bool) -> String {
    let cc = c.compute();
    let one = lit(1.0, cc);
    let a = lit(alpha, cc);
    if fast && cc == "float" {
        // x → -inf: __expf gives inf and __fdividef(x, inf) 0, as the exact form's x · 0.
        format!("__fdividef({x}, {one} + __expf(-({a} * {x})))")
    } else {
        format!("({x} * ({one} / ({one} + {exp}(-({a} * {x})))))", exp = c.math("exp"))
    }
}

/// Whether a kernel computing in `compute` and storing `outs` may take approximate f32 math:
/// only when it computes in f32 and every output is 16-bit (f16 keeps 11 significant bits, so a
/// few f32 ulp never reach it). On by default since session 9 (every fixture passed with it on an
/// H200, UNet b2 64² 7.33 → 7.25 ms with the slab GroupNorm path); `QUILT_FAST_MATH=0` turns it off.
pub fn fast_math(compute: CType, outs: &[CType]) -> bool {
    compute.compute() == "float" && !outs.is_empty() && outs.iter().all(|o| matches!(o.dtype, DType::F16 | DType::BF16)) && env::default_on("QUILT_FAST_MATH")
}

/// A Clip bound in the operand's compute type (whole numbers for integer types).
fn bound(v: f64, ct: CType) -> String {
    if ct.is_float() {
        lit(v, ct.compute())
    } else {
        format!("(({})({}LL))", ct.compute(), v.clamp(i64::MIN as f64, i64::MAX as f64) as i64)
    }
}

/// `u(a)` in `ct`'s compute type; on integer types only the ops with an integer meaning. Also the
/// unary nodes of stitched regions (`stitched.rs`).
pub fn unary(u: UnaryOp, ct: CType, a: &str) -> Result<String, String> {
    let c = ct.compute();
    let m = |f: &str| ct.math(f);
    let one = if ct.is_float() { lit(1.0, c) } else { format!("(({c})1)") };
    let zero = if ct.is_float() { lit(0.0, c) } else { format!("(({c})0)") };
    Ok(match u {
        UnaryOp::Identity => a.to_string(),
        UnaryOp::Relu => format!("({a} < {zero} ? {zero} : {a})"),
        UnaryOp::Neg => format!("(-{a})"),
        UnaryOp::Abs if !ct.is_float() => format!("({a} < {zero} ? -{a} : {a})"),
        UnaryOp::Sign => format!("({a} > {zero} ? {one} : ({a} < {zero} ? -{one} : {a}))"),
        UnaryOp::Not => format!("(!{a})"),
        _ if !ct.is_float() => return Err(format!("{u:?} on {}", ct.dtype)),
        UnaryOp::Abs => format!("{}({a})", m("fabs")),
        UnaryOp::Sigmoid => format!("({one} / ({one} + {}(-{a})))", m("exp")),
        UnaryOp::Tanh => format!("{}({a})", m("tanh")),
        UnaryOp::Erf => format!("{}({a})", m("erf")),
        UnaryOp::Sqrt => format!("{}({a})", m("sqrt")),
        UnaryOp::Exp => format!("{}({a})", m("exp")),
        UnaryOp::Log => format!("{}({a})", m("log")),
        UnaryOp::Reciprocal => format!("({one} / {a})"),
        UnaryOp::Sin => format!("{}({a})", m("sin")),
        UnaryOp::Cos => format!("{}({a})", m("cos")),
        UnaryOp::Floor => format!("{}({a})", m("floor")),
        UnaryOp::Ceil => format!("{}({a})", m("ceil")),
        UnaryOp::Round => format!("{}({a})", m("rint")),
        UnaryOp::Softplus => format!("({a} > {zero} ? {a} + {lp}({ex}(-{a})) : {lp}({ex}({a})))", lp = m("log1p"), ex = m("exp")),
    })
}

fn binary(b: BinaryOp, ta: CType, _tb: CType, a: &str, bb: &str) -> Result<String, String> {
    let c = ta.compute();
    let float = ta.is_float();
    Ok(match b {
        BinaryOp::Add => format!("({a} + {bb})"),
        BinaryOp::Sub => format!("({a} - {bb})"),
        BinaryOp::Mul => format!("({a} * {bb})"),
        BinaryOp::Div if float => format!("({a} / {bb})"),
        BinaryOp::Div => format!("({bb} == 0 ? ({c})0 : {a} / {bb})"),
        BinaryOp::Pow if float => format!("{}({a}, ({c}){bb})", ta.math("pow")),
        BinaryOp::Pow => format!("(({c})pow((double){a}, (double){bb}))"),
        BinaryOp::Max => format!("QMax()({a}, ({c}){bb})"),
        BinaryOp::Min => format!("QMin()({a}, ({c}){bb})"),
        BinaryOp::Mod => format!("q_mod({a}, ({c}){bb})"),
        BinaryOp::Fmod if float => format!("{}({a}, {bb})", ta.math("fmod")),
        BinaryOp::Fmod => format!("({bb} == 0 ? ({c})0 : {a} % {bb})"),
        BinaryOp::Equal => format!("({a} == {bb})"),
        BinaryOp::Less => format!("({a} < {bb})"),
        BinaryOp::LessOrEqual => format!("({a} <= {bb})"),
        BinaryOp::Greater => format!("({a} > {bb})"),
        BinaryOp::GreaterOrEqual => format!("({a} >= {bb})"),
        BinaryOp::And => format!("({a} && {bb})"),
        BinaryOp::Or => format!("({a} || {bb})"),
        BinaryOp::Xor => format!("({a} != {bb})"),
    })
}

impl StepCode for ElementwiseCode {
    fn kernels(&self) -> &[Kernel] {
        &self.kernels
    }

    fn plan(&self, s: &StepShapes) -> Result<LaunchPlan, String> {
        let out = s.outs[0];
        if out.len() != self.out_rank {
            return Err(format!("output rank {} but the kernel was generated for {}", out.len(), self.out_rank));
        }
        let n = numel(out);
        let mut p = ParamList::default();
        p.push(n as i64);
        let mut vector = false;
        match self.fill {
            Some(FillKind::Value(v)) => {
                p.push_f64(v);
            }
            Some(FillKind::Range { start, delta, int }) => {
                if out.len() != 1 {
                    return Err(format!("Range output must be 1-D, got {out:?}"));
                }
                // Integer ranges step exactly in i64; float ranges carry f64 bits.
                if int {
                    p.push(start as i64);
                    p.push(delta as i64);
                } else {
                    p.push_f64(start);
                    p.push_f64(delta);
                }
            }
            None => {
                p.extend(out.iter().map(|&d| d as i64));
                let mut strides = Vec::with_capacity(self.inputs.len());
                for &k in &self.inputs {
                    let shape = s.input(k)?;
                    let st = broadcast_strides(shape, out).map_err(|e| format!("input {k}: {e}"))?;
                    p.extend(st.iter().copied());
                    strides.push(st);
                }
                if self.narrow {
                    let dims = if out.is_empty() { vec![1] } else { out.to_vec() };
                    let strides: Vec<Vec<i64>> = strides.into_iter().map(|s| if s.is_empty() { vec![0] } else { s }).collect();
                    match index::narrow(&dims, &strides).filter(|_| !env::on("QUILT_INDEX64")) {
                        Some((data, collapsed)) => {
                            vector = self.vlen > 1 && !env::on("QUILT_NO_VECTOR") && vectorizable(&collapsed, self.vlen);
                            p.extend(data);
                        }
                        None => {
                            p.extend(index::wide(self.out_rank, self.inputs.len()));
                        }
                    }
                    p.push(vector as i64);
                }
            }
        }
        let mut args = vec![Arg::Out(0)];
        args.extend(self.inputs.iter().map(|&k| Arg::In(k)));
        let mut plan = LaunchPlan::default();
        if n > 0 {
            let threads = if vector { n / self.vlen } else { n };
            plan.actions.push(Action::Launch { kernel: 0, work: Work::Elements(threads as u64), params: p.finish()?, args });
        }
        Ok(plan)
    }
}
