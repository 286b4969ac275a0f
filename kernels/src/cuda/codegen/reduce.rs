//! Row-wise kernels: Softmax/LogSoftmax, LayerNorm/InstanceNorm/GroupNorm (statistics in f32,
//! two passes: mean, then the mean of squared deviations, so large means do not cancel),
//! Reduce (one block per output element), ArgMax/ArgMin and CumSum (one thread per line).

use quilt_rewrites::ir::ReduceKind;
use quilt_rewrites::{DType, Op};

use super::{contiguous_strides, decompose, lit, numel, Action, Arg, CType, Kernel, LaunchPlan, ParamList, StepCode, StepShapes, Types, Work};

pub struct ReduceCode {
    op: Op,
    kernels: Vec<Kernel>,
    has_bias: bool,
}

/// `row` loop of a block-per-row kernel (uniform per block, so barriers inside are safe).
const ROW_LOOP: &str = "  for (long long row = blockIdx.x; row < p.v[0]; row += gridDim.x) {\n";

impl ReduceCode {
    pub fn new(op: &Op, t: &Types) -> Result<ReduceCode, String> {
        let name = format!("{}_red", t.prefix);
        let x = CType::of(t.input(0)?);
        let out = CType::of(t.outs[0]);
        let (st, ost) = (x.storage(), out.storage());
        let acc = if x.dtype == DType::F64 { "double" } else if x.is_float() { "float" } else { "long long" };
        let head = |extra: &str| format!("extern \"C\" __global__ void {name}(const QParams p, {ost}* __restrict__ out, const {st}* __restrict__ in{extra}) {{\n");
        let ld = |e: &str| format!("(({acc}){})", x.load(e));
        let mut has_bias = false;
        let body = match op {
            // params: rows, L, inner
            Op::Softmax { .. } | Op::LogSoftmax { .. } => {
                if !x.is_float() {
                    return Err(format!("softmax of {}", x.dtype));
                }
                let log = matches!(op, Op::LogSoftmax { .. });
                let (exp, lg) = (x.math("exp"), x.math("log"));
                let mut b = head("") + ROW_LOOP;
                b += "    long long L = p.v[1], inner = p.v[2]; long long base = (row / inner) * L * inner + row % inner;\n";
                b += &format!("    {acc} m = {};\n", lit(f64::NEG_INFINITY, acc));
                b += &format!("    for (long long k = threadIdx.x; k < L; k += blockDim.x) m = QMax()(m, {});\n", ld("in[base + k * inner]"));
                b += "    m = q_block_reduce(m, QMax());\n";
                b += &format!("    {acc} s = 0;\n    for (long long k = threadIdx.x; k < L; k += blockDim.x) s += {exp}({} - m);\n    s = q_block_reduce(s, QSum());\n", ld("in[base + k * inner]"));
                let y = if log { format!("{} - m - {lg}(s)", ld("in[base + k * inner]")) } else { format!("{exp}({} - m) / s", ld("in[base + k * inner]")) };
                b += &format!("    for (long long k = threadIdx.x; k < L; k += blockDim.x) out[base + k * inner] = {};\n  }}\n}}\n", out.store(&y));
                b
            }
            Op::GroupNorm { channels_last: true, .. } => {
                // The layout pass only emits it where the stitcher turns it into a region.
                return Err("a channels-last GroupNorm runs only inside a stitched region".into());
            }
            Op::LayerNorm { epsilon, .. } | Op::InstanceNorm { epsilon } | Op::GroupNorm { epsilon, .. } => {
                if !x.is_float() {
                    return Err(format!("normalization of {}", x.dtype));
                }
                has_bias = t.ins.get(2).copied().flatten().is_some();
                // Affine indices: LayerNorm params rows, L, scale n, bias n; InstanceNorm rows, L, C;
                // GroupNorm rows, L, G, C/G, spatial.
                let (si, bi) = match op {
                    Op::LayerNorm { .. } => ("k % p.v[2]", "k % p.v[3]"),
                    Op::InstanceNorm { .. } => ("row % p.v[2]", "row % p.v[2]"),
                    Op::GroupNorm { per_channel_affine: true, .. } => ("(row % p.v[2]) * p.v[3] + k / p.v[4]", "(row % p.v[2]) * p.v[3] + k / p.v[4]"),
                    _ => ("row % p.v[2]", "row % p.v[2]"),
                };
                let extra = format!(", const {st}* __restrict__ scale{}", if has_bias { format!(", const {st}* __restrict__ bias") } else { String::new() });
                let mut b = head(&extra) + ROW_LOOP;
                b += "    long long L = p.v[1]; long long base = row * L;\n";
                b += &format!("    {acc} s = 0;\n    for (long long k = threadIdx.x; k < L; k += blockDim.x) s += {};\n    {acc} mean = q_block_reduce(s, QSum()) / ({acc})L;\n", ld("in[base + k]"));
                b += &format!("    {acc} v = 0;\n    for (long long k = threadIdx.x; k < L; k += blockDim.x) {{ {acc} d = {} - mean; v += d * d; }}\n", ld("in[base + k]"));
                b += &format!("    {acc} rstd = ({acc})1 / {}(q_block_reduce(v, QSum()) / ({acc})L + {});\n", x.math("sqrt"), lit(*epsilon as f64, acc));
                let bias = if has_bias { format!(" + {}", ld(&format!("bias[{bi}]"))) } else { String::new() };
                b += &format!("    for (long long k = threadIdx.x; k < L; k += blockDim.x) out[base + k] = {};\n  }}\n}}\n", out.store(&format!("({} - mean) * rstd * {}{bias}", ld("in[base + k]"), ld(&format!("scale[{si}]")))));
                b
            }
            // params: nout, nred, kept dims rk, kept strides rk, reduced dims rr, reduced strides rr
            Op::Reduce { kind, axes, .. } => {
                let r = t.in_ranks[0];
                let rr = axes.len();
                let rk = r - rr;
                let (init, f) = match kind {
                    ReduceKind::Sum | ReduceKind::Mean => ("0".to_string(), "QSum()"),
                    ReduceKind::Prod => ("1".to_string(), "QProd()"),
                    ReduceKind::Max if x.is_float() => (lit(f64::NEG_INFINITY, acc), "QMax()"),
                    ReduceKind::Min if x.is_float() => (lit(f64::INFINITY, acc), "QMin()"),
                    ReduceKind::Max => ("(-9223372036854775807LL - 1)".to_string(), "QMax()"),
                    ReduceKind::Min => ("9223372036854775807LL".to_string(), "QMin()"),
                };
                let mut b = head("") + ROW_LOOP;
                b += "    long long i = row;\n";
                b += &decompose(rk, 2, &[("base", 2 + rk)]);
                b += &format!("    {acc} a = {init};\n    for (long long kk = threadIdx.x; kk < p.v[1]; kk += blockDim.x) {{\n      long long i = kk;\n");
                b += &decompose(rr, 2 + 2 * rk, &[("o", 2 + 2 * rk + rr)]);
                b += &format!("      a = {f}(a, {});\n    }}\n    a = q_block_reduce(a, {f});\n", ld("in[base + o]"));
                if *kind == ReduceKind::Mean {
                    b += &format!("    a = a / ({acc})p.v[1];\n");
                }
                b += &format!("    if (threadIdx.x == 0) out[row] = {};\n  }}\n}}\n", out.store("a"));
                b
            }
            // params: n, L, inner
            Op::ArgMax { select_last_index, .. } | Op::ArgMin { select_last_index, .. } => {
                let better = match (matches!(op, Op::ArgMax { .. }), select_last_index) {
                    (true, false) => ">",
                    (true, true) => ">=",
                    (false, false) => "<",
                    (false, true) => "<=",
                };
                head("") + &format!("  Q_LOOP(p.v[0]) {{\n    long long L = p.v[1], inner = p.v[2]; long long base = (i / inner) * L * inner + i % inner;\n    {acc} best = {}; long long bi = 0;\n    for (long long k = 1; k < L; ++k) {{ {acc} v = {}; if (v {better} best) {{ best = v; bi = k; }} }}\n    out[i] = bi;\n  }}\n}}\n", ld("in[base]"), ld("in[base + k * inner]"))
            }
            // params: n, L, inner
            Op::CumSum { exclusive, reverse, .. } => {
                let (k0, step, cond) = if *reverse { ("L - 1", "--k", "k >= 0") } else { ("0", "++k", "k < L") };
                let write = if *exclusive { format!("out[o] = {}; a += {};", out.store("a"), ld("in[o]")) } else { format!("a += {}; out[o] = {};", ld("in[o]"), out.store("a")) };
                head("") + &format!("  Q_LOOP(p.v[0]) {{\n    long long L = p.v[1], inner = p.v[2]; long long base = (i / inner) * L * inner + i % inner;\n    {acc} a = 0;\n    for (long long k = {k0}; {cond}; {step}) {{ long long o = base + k * inner; {write} }}\n  }}\n}}\n")
            }
            other => return Err(format!("{} is not a row kernel", other.name())),
        };
        Ok(ReduceCode { op: op.clone(), kernels: vec![Kernel { name, body }], has_bias })
    }
}

/// (outer, axis length, inner) of `shape` around `axis`.
fn split3(shape: &[usize], axis: usize) -> Result<(usize, usize, usize), String> {
    if axis >= shape.len() {
        return Err(format!("axis {axis} out of range for {shape:?}"));
    }
    Ok((numel(&shape[..axis]), shape[axis], numel(&shape[axis + 1..])))
}

impl StepCode for ReduceCode {
    fn kernels(&self) -> &[Kernel] {
        &self.kernels
    }

    fn plan(&self, s: &StepShapes) -> Result<LaunchPlan, String> {
        let x = s.input(0)?;
        let mut p = ParamList::default();
        let mut args = vec![Arg::Out(0), Arg::In(0)];
        let work = match &self.op {
            Op::Softmax { axis } | Op::LogSoftmax { axis } => {
                let (o, l, i) = split3(x, *axis)?;
                p.extend([(o * i) as i64, l as i64, i as i64]);
                Work::Rows((o * i) as u64)
            }
            Op::LayerNorm { axis, .. } => {
                let (rows, l) = (numel(&x[..*axis]), numel(&x[*axis..]));
                let sn = numel(s.input(1)?);
                let bn = if self.has_bias { numel(s.input(2)?) } else { 1 };
                if sn == 0 || l % sn != 0 || bn == 0 || l % bn != 0 {
                    return Err(format!("scale/bias of {sn}/{bn} elements do not tile the {l} normalized elements"));
                }
                p.extend([rows as i64, l as i64, sn as i64, bn as i64]);
                Work::Rows(rows as u64)
            }
            Op::InstanceNorm { .. } => {
                if x.len() < 2 {
                    return Err("InstanceNorm needs rank >= 2".into());
                }
                let c = x[1];
                for k in 1..=2 {
                    if numel(s.input(k)?) != c {
                        return Err(format!("input {k} must have {c} elements"));
                    }
                }
                p.extend([(x[0] * c) as i64, numel(&x[2..]) as i64, c as i64]);
                Work::Rows((x[0] * c) as u64)
            }
            Op::GroupNorm { num_groups, per_channel_affine, .. } => {
                let g = *num_groups;
                if x.len() < 2 || g == 0 || x[1] % g != 0 {
                    return Err(format!("{g} groups do not divide the channels of {x:?}"));
                }
                let (c, sp) = (x[1], numel(&x[2..]));
                let want = if *per_channel_affine { c } else { g };
                for k in 1..=2 {
                    if numel(s.input(k)?) != want {
                        return Err(format!("input {k} must have {want} elements"));
                    }
                }
                p.extend([(x[0] * g) as i64, ((c / g) * sp) as i64, g as i64, (c / g) as i64, sp as i64]);
                Work::Rows((x[0] * g) as u64)
            }
            Op::Reduce { axes, .. } => {
                let xs = contiguous_strides(x);
                let kept: Vec<usize> = (0..x.len()).filter(|d| !axes.contains(d)).collect();
                let nout = kept.iter().map(|&d| x[d]).product::<usize>();
                let nred = axes.iter().map(|&d| x[d]).product::<usize>();
                p.extend([nout as i64, nred as i64]);
                p.extend(kept.iter().map(|&d| x[d] as i64));
                p.extend(kept.iter().map(|&d| xs[d]));
                p.extend(axes.iter().map(|&d| x[d] as i64));
                p.extend(axes.iter().map(|&d| xs[d]));
                if nred == 0 {
                    return Err("reducing over an empty axis".into());
                }
                Work::Rows(nout as u64)
            }
            Op::ArgMax { axis, .. } | Op::ArgMin { axis, .. } | Op::CumSum { axis, .. } => {
                let (o, l, i) = split3(x, *axis)?;
                if l == 0 && !matches!(self.op, Op::CumSum { .. }) {
                    return Err("arg-reduction over an empty axis".into());
                }
                p.extend([(o * i) as i64, l as i64, i as i64]);
                Work::Elements((o * i) as u64)
            }
            other => return Err(format!("{} is not a row kernel", other.name())),
        };
        if matches!(self.op, Op::LayerNorm { .. } | Op::InstanceNorm { .. } | Op::GroupNorm { .. }) {
            args.push(Arg::In(1));
            if self.has_bias {
                args.push(Arg::In(2));
            }
        }
        let mut plan = LaunchPlan::default();
        if work.count() > 0 {
            plan.actions.push(Action::Launch { kernel: 0, work, params: p.finish()?, args });
        }
        Ok(plan)
    }
}
