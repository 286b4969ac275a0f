//! Convolution as im2col + cuBLAS GEMM (per sample, strided-batched over groups), with the bias
//! broadcast into the output first. 1×1 convolutions with unit stride and no padding skip
//! im2col. 1-D and 2-D convolutions (1-D runs as 2-D with height 1). cuDNN comes later.

use quilt_rewrites::{DType, Op};

use super::codegen::{numel, Action, Arg, CType, Kernel, LaunchPlan, ParamList, StepCode, StepShapes, Types, Work};
use super::gemm::GemmCall;

pub struct ConvCode {
    strides: Vec<usize>,
    pads: Vec<usize>,
    dilations: Vec<usize>,
    group: usize,
    dtype: DType,
    has_bias: bool,
    /// [im2col, bias broadcast]
    kernels: Vec<Kernel>,
}

impl ConvCode {
    pub fn new(op: &Op, t: &Types) -> Result<ConvCode, String> {
        let Op::Conv { strides, pads, dilations, group } = op else { return Err(format!("{} is not Conv", op.name())) };
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
        let st = CType::of(dtype).storage();
        let im2col = format!("{}_im2col", t.prefix);
        // params: total, C, H, W, kh, kw, OH, OW, sh, sw, ph, pw, dh, dw, x offset
        let body = format!(
            "extern \"C\" __global__ void {im2col}(const QParams p, {st}* __restrict__ col, const {st}* __restrict__ x) {{
  Q_LOOP(p.v[0]) {{
    long long H = p.v[2], W = p.v[3], kh = p.v[4], kw = p.v[5], OH = p.v[6], OW = p.v[7];
    long long ow = i % OW; long long t = i / OW; long long oh = t % OH; t /= OH;
    long long j = t % kw; t /= kw; long long r = t % kh; long long c = t / kh;
    long long ih = oh * p.v[8] - p.v[10] + r * p.v[12];
    long long iw = ow * p.v[9] - p.v[11] + j * p.v[13];
    col[i] = (ih >= 0 && ih < H && iw >= 0 && iw < W) ? x[p.v[14] + (c * H + ih) * W + iw] : ({st})0;
  }}
}}
"
        );
        let bias_name = format!("{}_conv_bias", t.prefix);
        // params: n, P, M
        let bias_body = format!("extern \"C\" __global__ void {bias_name}(const QParams p, {st}* __restrict__ out, const {st}* __restrict__ b) {{\n  Q_LOOP(p.v[0]) {{ out[i] = b[(i / p.v[1]) % p.v[2]]; }}\n}}\n");
        Ok(ConvCode {
            strides: strides.clone(),
            pads: pads.clone(),
            dilations: dilations.clone(),
            group: *group,
            dtype,
            has_bias,
            kernels: vec![Kernel { name: im2col, body }, Kernel { name: bias_name, body: bias_body }],
        })
    }
}

impl StepCode for ConvCode {
    fn kernels(&self) -> &[Kernel] {
        &self.kernels
    }

    fn plan(&self, s: &StepShapes) -> Result<LaunchPlan, String> {
        let (x, w, out) = (s.input(0)?, s.input(1)?, s.outs[0]);
        let two_d = x.len() == 4;
        // Everything as 2-D: (H, W), kernel (kh, kw), and per-axis attributes.
        let sp = |v: &[usize]| if two_d { (v[v.len() - 2], v[v.len() - 1]) } else { (1, v[v.len() - 1]) };
        let pair = |v: &[usize], fill: usize| if two_d { (v[0], v[1]) } else { (fill, v[0]) };
        let (n, c) = (x[0], x[1]);
        let (h, wd) = sp(x);
        let (m, cg) = (w[0], w[1]);
        let (kh, kw) = sp(w);
        let (oh, ow) = sp(out);
        let (sh, sw) = pair(&self.strides, 1);
        let (dh, dw) = pair(&self.dilations, 1);
        let (ph, pw) = pair(&self.pads[..self.pads.len() / 2], 0);
        let (ph_end, pw_end) = pair(&self.pads[self.pads.len() / 2..], 0);
        let g = self.group;
        if w.len() != x.len() || out.len() != x.len() || c != cg * g || m % g != 0 || out[0] != n || out[1] != m {
            return Err(format!("Conv input {x:?}, weight {w:?}, group {g} and output {out:?} do not fit"));
        }
        let expect = |i: usize, p0: usize, p1: usize, d: usize, k: usize, st: usize| -> i64 {
            let span = i as i64 + (p0 + p1) as i64 - (d * (k.max(1) - 1)) as i64 - 1;
            if span < 0 { 0 } else { span / st as i64 + 1 }
        };
        if expect(h, ph, ph_end, dh, kh, sh) != oh as i64 || expect(wd, pw, pw_end, dw, kw, sw) != ow as i64 {
            return Err(format!("Conv output {out:?} does not match input {x:?}, kernel {w:?} and the attributes"));
        }
        let (p_out, kk, mg) = (oh * ow, kh * kw, m / g);
        let mut plan = LaunchPlan::default();
        if numel(out) == 0 {
            return Ok(plan);
        }
        if self.has_bias {
            if numel(s.input(2)?) != m {
                return Err(format!("bias must have {m} elements"));
            }
            let mut p = ParamList::default();
            p.extend([numel(out) as i64, p_out as i64, m as i64]);
            plan.actions.push(Action::Launch { kernel: 1, work: Work::Elements(numel(out) as u64), params: p.finish()?, args: vec![Arg::Out(0), Arg::In(2)] });
        }
        let direct = kk == 1 && sh == 1 && sw == 1 && ph + pw + ph_end + pw_end == 0 && oh == h && ow == wd;
        let col_elems = c * kk * p_out;
        if !direct {
            plan.scratch.push(col_elems * self.dtype.size_bytes());
        }
        for b in 0..n {
            let x_off = b * c * h * wd;
            let cols = if direct {
                (Arg::In(0), x_off)
            } else {
                let mut p = ParamList::default();
                p.extend([col_elems as i64, c as i64, h as i64, wd as i64, kh as i64, kw as i64, oh as i64, ow as i64]);
                p.extend([sh as i64, sw as i64, ph as i64, pw as i64, dh as i64, dw as i64, x_off as i64]);
                if col_elems > 0 {
                    plan.actions.push(Action::Launch { kernel: 0, work: Work::Elements(col_elems as u64), params: p.finish()?, args: vec![Arg::Scratch(0), Arg::In(0)] });
                }
                (Arg::Scratch(0), 0)
            };
            let call = GemmCall {
                dtype: self.dtype,
                m: mg,
                n: p_out,
                k: cg * kk,
                a: (Arg::In(1), 0),
                lda: cg * kk,
                trans_a: false,
                stride_a: mg * cg * kk,
                b: cols,
                ldb: p_out,
                trans_b: false,
                stride_b: cg * kk * p_out,
                c: (Arg::Out(0), b * m * p_out),
                ldc: p_out,
                stride_c: mg * p_out,
                batch: g,
                alpha: 1.0,
                beta: if self.has_bias { 1.0 } else { 0.0 },
            };
            if call.k == 0 && !self.has_bias {
                plan.actions.push(Action::Zero { arg: Arg::Out(0), bytes: numel(out) * self.dtype.size_bytes() });
                break;
            }
            plan.actions.push(Action::Gemm(call));
        }
        Ok(plan)
    }
}
