//! GeGLU (`Op::GeGlu`): each output element reads its value from the first half of the input's
//! last axis and its gate from the second half (`x[..., c]`, `x[..., F + c]`); one thread per
//! element, or per 16-byte vector of elements when F allows (SD's F = 1280..5120 always does).

use quilt_rewrites::Op;

use super::elementwise::gelu;
use super::{numel, vector_len, Action, Arg, CType, Kernel, LaunchPlan, ParamList, StepCode, StepShapes, Types, Work};

pub struct GeGluCode {
    kernels: Vec<Kernel>,
    /// Elements per thread of kernel 1.
    vector: usize,
}

impl GeGluCode {
    pub fn new(op: &Op, t: &Types) -> Result<GeGluCode, String> {
        let Op::GeGlu { tanh } = op else { return Err(format!("{} is not GeGlu", op.name())) };
        let (x, out) = (CType::of(t.input(0)?), CType::of(t.outs[0]));
        if !x.is_float() || x.dtype != out.dtype {
            return Err(format!("GeGlu of {} into {}", x.dtype, out.dtype));
        }
        if t.in_ranks[0] == 0 {
            return Err("GeGlu needs an input of rank ≥ 1".into());
        }
        let name = format!("{}_geglu", t.prefix);
        let (xs, os, cc) = (x.storage(), out.storage(), x.compute());
        let v = vector_len(x.dtype);
        // Kernel 0, any shape. Params: output element count, F (half the input's last axis).
        let scalar = format!(
            "extern \"C\" __global__ void {name}(const QParams p, {os}* __restrict__ out, const {xs}* __restrict__ x) {{
  const long long f = p.v[1];
  Q_LOOP(p.v[0]) {{
    long long row = i / f, c = i - row * f;
    {cc} a = {la}, g = {lg};
    out[i] = {st};
  }}
}}
",
            la = x.load("x[row * 2 * f + c]"),
            lg = x.load("x[row * 2 * f + f + c]"),
            st = out.store(&format!("a * {}", gelu(x, "g", *tanh))),
        );
        // Kernel 1, when F is a multiple of V and the tensor fits 32-bit indices: V outputs per
        // thread as 16-byte loads and stores (falls back to element loads when a pointer is not
        // 16-byte aligned). Params: vector count, F / V. The 64-bit division per element of
        // kernel 0 is what made it ~3x slower than its memory traffic (session 8's trace).
        let vector = format!(
            "struct alignas(16) QGeVec {{ {xs} x[{v}]; }};
extern \"C\" __global__ void {name}_v(const QParams p, {os}* __restrict__ out, const {xs}* __restrict__ x) {{
  const unsigned fv = (unsigned)p.v[1];
  const bool al_ = (((unsigned long long)out | (unsigned long long)x) & 15ull) == 0ull;
  Q_LOOP(p.v[0]) {{
    const unsigned j = (unsigned)i, row = j / fv, cv = j - row * fv;
    const unsigned ia = row * 2u * fv * {v}u + cv * {v}u, ig = ia + fv * {v}u, io = j * {v}u;
    QGeVec va, vg, vo;
    if (al_) {{ va = *reinterpret_cast<const QGeVec*>(x + ia); vg = *reinterpret_cast<const QGeVec*>(x + ig); }}
    else {{
#pragma unroll
      for (int e = 0; e < {v}; ++e) {{ va.x[e] = x[ia + e]; vg.x[e] = x[ig + e]; }}
    }}
#pragma unroll
    for (int e = 0; e < {v}; ++e) {{
      const {cc} a = {la}, g = {lg};
      vo.x[e] = {st};
    }}
    if (al_) *reinterpret_cast<QGeVec*>(out + io) = vo;
    else {{
#pragma unroll
      for (int e = 0; e < {v}; ++e) out[io + e] = vo.x[e];
    }}
  }}
}}
",
            la = x.load("va.x[e]"),
            lg = x.load("vg.x[e]"),
            st = out.store(&format!("a * {}", gelu(x, "g", *tanh))),
        );
        let kernels = vec![Kernel { name: name.clone(), body: scalar }, Kernel { name: format!("{name}_v"), body: vector }];
        Ok(GeGluCode { kernels, vector: v })
    }
}


impl StepCode for GeGluCode {
    fn kernels(&self) -> &[Kernel] {
        &self.kernels
    }

    fn plan(&self, s: &StepShapes) -> Result<LaunchPlan, String> {
        let (x, out) = (s.input(0)?, s.outs[0]);
        let last = *x.last().ok_or("GeGlu needs an input of rank ≥ 1")?;
        if last % 2 != 0 {
            return Err(format!("GeGlu needs an even last axis, got shape {x:?}"));
        }
        let mut want = x.to_vec();
        *want.last_mut().unwrap() = last / 2;
        if out != want.as_slice() {
            return Err(format!("GeGlu of {x:?} gives {want:?}, but the output is {out:?}"));
        }
        let n = numel(out);
        let mut plan = LaunchPlan::default();
        if n > 0 {
            let (f, v) = (last / 2, self.vector);
            // Kernel 1 indexes the input (2n elements) in 32 bits.
            let vector = v > 1 && f % v == 0 && 2 * n < (1usize << 31);
            let (kernel, count, per_row) = if vector { (1, n / v, f / v) } else { (0, n, f) };
            let mut p = ParamList::default();
            p.push(count as i64);
            p.push(per_row as i64);
            plan.actions.push(Action::Launch { kernel, work: Work::Elements(count as u64), params: p.finish()?, args: vec![Arg::Out(0), Arg::In(0)] });
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use quilt_rewrites::DType;

    use super::*;

    /// (kernel, threads) of the launch at input shape `x`.
    fn launch(dtype: DType, x: &[usize]) -> (usize, u64) {
        let t = Types { ins: vec![Some(dtype)], in_ranks: vec![x.len()], outs: vec![dtype], out_ranks: vec![x.len()], prefix: "q".into() };
        let code = GeGluCode::new(&Op::GeGlu { tanh: false }, &t).unwrap();
        let mut out = x.to_vec();
        *out.last_mut().unwrap() /= 2;
        crate::cuda::codegen::single_launch(&code, &[x], &out)
    }

    /// SD's GeGLU (F = 1280 at 64², batch 2) takes 8 f16 or 4 f32 outputs per thread; an F that
    /// is not a multiple of the vector width takes one element per thread.
    #[test]
    fn vector_kernel_when_f_divides() {
        assert_eq!(launch(DType::F16, &[2, 4096, 2560]), (1, 2 * 4096 * 1280 / 8));
        assert_eq!(launch(DType::F32, &[2, 4096, 2560]), (1, 2 * 4096 * 1280 / 4));
        assert_eq!(launch(DType::F16, &[4, 3, 38]), (0, 4 * 3 * 19));
        assert_eq!(launch(DType::F16, &[5, 12]), (0, 5 * 6));
    }
}
