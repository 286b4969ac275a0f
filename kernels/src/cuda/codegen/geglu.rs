//! GeGLU (`Op::GeGlu`): one thread per output element; each reads its value from the first half
//! of the input's last axis and its gate from the second half (`x[..., c]`, `x[..., F + c]`).

use quilt_rewrites::Op;

use super::elementwise::gelu;
use super::{numel, Action, Arg, CType, Kernel, LaunchPlan, ParamList, StepCode, StepShapes, Types, Work};

pub struct GeGluCode {
    kernels: Vec<Kernel>,
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
        // Params: output element count, F (half the input's last axis).
        let body = format!(
            "extern \"C\" __global__ void {name}(const QParams p, {os}* __restrict__ out, const {xs}* __restrict__ x) {{
  const long long f = p.v[1];
  Q_LOOP(p.v[0]) {{
    long long row = i / f, c = i - row * f;
    {cc} a = {la}, g = {lg};
    out[i] = {st};
  }}
}}
",
            os = out.storage(),
            xs = x.storage(),
            cc = x.compute(),
            la = x.load("x[row * 2 * f + c]"),
            lg = x.load("x[row * 2 * f + f + c]"),
            st = out.store(&format!("a * {}", gelu(x, "g", *tanh))),
        );
        Ok(GeGluCode { kernels: vec![Kernel { name, body }] })
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
            let mut p = ParamList::default();
            p.push(n as i64);
            p.push((last / 2) as i64);
            plan.actions.push(Action::Launch { kernel: 0, work: Work::Elements(n as u64), params: p.finish()?, args: vec![Arg::Out(0), Arg::In(0)] });
        }
        Ok(plan)
    }
}
