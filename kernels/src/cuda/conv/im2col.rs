//! The fallback convolution: im2col + cuBLAS GEMM per sample (strided-batched over groups),
//! with the bias broadcast into the output first. 1×1 convolutions with unit stride and no
//! padding skip im2col. Runs any geometry `ConvGeometry` accepts (asymmetric pads, groups,
//! dilation, f64) at the cost of a column buffer of C·kh·kw·OH·OW elements per sample.

use quilt_rewrites::DType;

use super::ConvGeometry;
use crate::cuda::codegen::{Action, Arg, CType, Kernel, LaunchPlan, ParamList, Work};
use crate::cuda::gemm::GemmCall;

/// Index of each kernel in `kernels`' result (the step's module).
const IM2COL: usize = 0;
const BIAS: usize = 1;

/// The two kernels of the fallback: [im2col, bias broadcast].
pub fn kernels(prefix: &str, dtype: DType) -> Vec<Kernel> {
    let st = CType::of(dtype).storage();
    let im2col = format!("{prefix}_im2col");
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
    let bias_name = format!("{prefix}_conv_bias");
    // params: n, P, M
    let bias_body = format!("extern \"C\" __global__ void {bias_name}(const QParams p, {st}* __restrict__ out, const {st}* __restrict__ b) {{\n  Q_LOOP(p.v[0]) {{ out[i] = b[(i / p.v[1]) % p.v[2]]; }}\n}}\n");
    vec![Kernel { name: im2col, body }, Kernel { name: bias_name, body: bias_body }]
}

/// Appends the fallback's actions (input 0 = x, 1 = w, 2 = optional bias; output 0 = y).
pub fn push_actions(plan: &mut LaunchPlan, g: &ConvGeometry, dtype: DType, has_bias: bool) -> Result<(), String> {
    let (n, c, h, wd, m) = (g.n, g.c, g.h, g.w, g.m);
    let (kh, kw, oh, ow) = (g.kh, g.kw, g.oh, g.ow);
    let ((sh, sw), (dh, dw), (ph, pw)) = (g.stride, g.dilation, g.pad_begin);
    let out_elems = n * m * oh * ow;
    if out_elems == 0 {
        return Ok(());
    }
    let (p_out, kk, mg, cg) = (oh * ow, kh * kw, m / g.group, c / g.group);
    if has_bias {
        let mut p = ParamList::default();
        p.extend([out_elems as i64, p_out as i64, m as i64]);
        plan.actions.push(Action::Launch { kernel: BIAS, work: Work::Elements(out_elems as u64), params: p.finish()?, args: vec![Arg::Out(0), Arg::In(2)] });
    }
    let direct = kk == 1 && sh == 1 && sw == 1 && g.pad_begin == (0, 0) && g.pad_end == (0, 0) && oh == h && ow == wd;
    let col_elems = c * kk * p_out;
    if !direct {
        plan.scratch.push(col_elems * dtype.size_bytes());
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
                plan.actions.push(Action::Launch { kernel: IM2COL, work: Work::Elements(col_elems as u64), params: p.finish()?, args: vec![Arg::Scratch(0), Arg::In(0)] });
            }
            (Arg::Scratch(0), 0)
        };
        let call = GemmCall {
            dtype,
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
            batch: g.group,
            alpha: 1.0,
            beta: if has_bias { 1.0 } else { 0.0 },
        };
        if call.k == 0 && !has_bias {
            plan.actions.push(Action::Zero { arg: Arg::Out(0), bytes: out_elems * dtype.size_bytes() });
            break;
        }
        plan.actions.push(Action::Gemm(call));
    }
    Ok(())
}
