//! `Op::Stitched`: a fused region (`StitchedRegion`) evaluated node by node over its whole
//! domain. Values are held in f64 and rounded after every node to the node's compute type (f32
//! for f32/f16/bf16 values, as the CUDA kernel computes; a Cast rounds to its target type), so
//! the result equals the unfused ops' up to f32 rounding, without their intermediate storage
//! rounding. A normalization takes two passes per row (mean, then mean squared deviation).

use half::{bf16, f16};
use quilt_rewrites::ir::{BinaryOp, Op, Operand, RegionOp, RowSpec, StitchedRegion, UnaryOp};
use quilt_rewrites::{DType, Tensor, TensorData};

use super::broadcast::broadcast_to;
use super::StepCtx;

/// `value` as the compute type of `dtype` holds it.
fn round(dtype: DType, value: f64) -> f64 {
    match dtype {
        DType::F64 => value,
        DType::Bool => (value != 0.0) as u8 as f64,
        _ => value as f32 as f64,
    }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

fn unary(u: UnaryOp, x: f64) -> Result<f64, String> {
    Ok(match u {
        UnaryOp::Identity => x,
        UnaryOp::Relu => if x < 0.0 { 0.0 } else { x },
        UnaryOp::Sigmoid => sigmoid(x),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Erf => libm::erf(x),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Reciprocal => 1.0 / x,
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Floor => x.floor(),
        UnaryOp::Ceil => x.ceil(),
        UnaryOp::Round => x.round_ties_even(),
        UnaryOp::Sign => if x > 0.0 { 1.0 } else if x < 0.0 { -1.0 } else { x },
        UnaryOp::Softplus => if x > 0.0 { x + (-x).exp().ln_1p() } else { x.exp().ln_1p() },
        UnaryOp::Not => (x == 0.0) as u8 as f64,
    })
}

fn binary(b: BinaryOp, x: f64, y: f64) -> Result<f64, String> {
    let t = |c: bool| c as u8 as f64;
    Ok(match b {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div => x / y,
        BinaryOp::Pow => x.powf(y),
        BinaryOp::Max => if x.is_nan() || y.is_nan() { f64::NAN } else { x.max(y) },
        BinaryOp::Min => if x.is_nan() || y.is_nan() { f64::NAN } else { x.min(y) },
        BinaryOp::Equal => t(x == y),
        BinaryOp::Less => t(x < y),
        BinaryOp::LessOrEqual => t(x <= y),
        BinaryOp::Greater => t(x > y),
        BinaryOp::GreaterOrEqual => t(x >= y),
        BinaryOp::And => t(x != 0.0 && y != 0.0),
        BinaryOp::Or => t(x != 0.0 || y != 0.0),
        BinaryOp::Xor => t((x != 0.0) != (y != 0.0)),
        BinaryOp::Mod | BinaryOp::Fmod => return Err(format!("{b:?} is not fused into regions")),
    })
}

/// One elementwise op on scalar operands (already broadcast).
fn elementwise(op: &Op, a: &[f64]) -> Result<f64, String> {
    Ok(match op {
        Op::Unary(u) => unary(*u, a[0])?,
        Op::Binary(b) => binary(*b, a[0], a[1])?,
        Op::Where => if a[0] != 0.0 { a[1] } else { a[2] },
        Op::Cast { to } => match to {
            DType::F16 => f16::from_f64(a[0]).to_f64(),
            DType::BF16 => bf16::from_f64(a[0]).to_f64(),
            DType::F32 => a[0] as f32 as f64,
            DType::F64 => a[0],
            DType::Bool => (a[0] != 0.0) as u8 as f64,
            other => return Err(format!("Cast to {other} is not fused into regions")),
        },
        Op::Clip { min, max } => {
            let mut v = a[0];
            if let Some(lo) = min {
                v = if v < *lo { *lo } else { v };
            }
            if let Some(hi) = max {
                v = if v > *hi { *hi } else { v };
            }
            v
        }
        Op::LeakyRelu { alpha } => if a[0] >= 0.0 { a[0] } else { *alpha as f64 * a[0] },
        Op::Gelu { tanh: false } => 0.5 * a[0] * (1.0 + libm::erf(a[0] * std::f64::consts::FRAC_1_SQRT_2)),
        Op::Gelu { tanh: true } => {
            let x = a[0];
            0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
        }
        Op::Silu => a[0] * sigmoid(a[0]),
        Op::QuickGelu { alpha } => a[0] * sigmoid(*alpha as f64 * a[0]),
        other => return Err(format!("{} is not elementwise", other.name())),
    })
}

/// The row of each domain element (by linear index) for rows of `len` elements.
fn row_mapping(rows: &RowSpec, domain: &[usize], len: usize) -> Result<Box<dyn Fn(usize) -> usize>, String> {
    Ok(match *rows {
        RowSpec::Trailing { .. } | RowSpec::Groups { .. } => Box::new(move |i| i / len),
        RowSpec::GroupsChannelsLast { groups } => {
            // Domain [N, spatial…, C]: batch entry i / (spatial·C), channel i % C.
            let c = *domain.last().ok_or("channels-last GroupNorm over an empty domain")?;
            if c % groups != 0 {
                return Err(format!("{c} channels do not split into {groups} groups"));
            }
            let per_batch: usize = domain[1..].iter().product();
            let per_group = c / groups;
            Box::new(move |i| (i / per_batch) * groups + (i % c) / per_group)
        }
    })
}

pub(crate) fn stitched(cx: &StepCtx, r: &StitchedRegion) -> Result<Vec<Tensor>, String> {
    r.validate()?;
    let domain: Vec<usize> = r.domain.iter().map(|d| cx.eval(d).map(|v| v as usize)).collect::<Result<_, _>>()?;
    let n: usize = domain.iter().product();
    for k in 0..r.outputs.len() {
        if cx.out_shape(k) != domain {
            return Err(format!("output {k} has shape {:?}, the region's domain is {domain:?}", cx.out_shape(k)));
        }
    }
    // Every input broadcast to the domain.
    let mut inputs: Vec<Vec<f64>> = Vec::with_capacity(r.inputs.len());
    for (k, inp) in r.inputs.iter().enumerate() {
        let t = cx.input(k)?;
        if t.dtype().is_float() != inp.dtype.is_float() || (t.dtype() == DType::Bool) != (inp.dtype == DType::Bool) {
            return Err(format!("input {k} has dtype {}, the region reads {}", t.dtype(), inp.dtype));
        }
        let view: Vec<usize> = inp.view.iter().map(|d| cx.eval(d).map(|v| v as usize)).collect::<Result<_, _>>()?;
        if view.iter().product::<usize>() != t.numel() {
            return Err(format!("input {k} has shape {:?}, which cannot be viewed as {view:?}", t.shape));
        }
        let data: TensorData = broadcast_to(&t.data, &view, &domain).map_err(|e| format!("input {k}: {e}"))?;
        inputs.push(data.to_f64_vec());
    }
    let mut values: Vec<Vec<f64>> = Vec::with_capacity(r.nodes.len());
    for (j, node) in r.nodes.iter().enumerate() {
        let arg = |o: &Operand| -> &Vec<f64> {
            match *o {
                Operand::Input(k) => &inputs[k],
                Operand::Node(i) => &values[i],
            }
        };
        let out: Vec<f64> = match &node.op {
            RegionOp::Normalize { rows, epsilon } => {
                let x = arg(&node.args[0]);
                let len = cx.eval(&rows.row_len(&r.domain))? as usize;
                let row_of = row_mapping(rows, &domain, len).map_err(|e| format!("node {j}: {e}"))?;
                if len == 0 || !n.is_multiple_of(len) {
                    return Err(format!("node {j}: rows of {len} elements do not tile the domain {domain:?}"));
                }
                // Per row: the mean, then the mean squared deviation from it (two passes, f64).
                let nrows = n / len;
                let mut mean = vec![0.0; nrows];
                for (i, v) in x.iter().enumerate() {
                    mean[row_of(i)] += v;
                }
                mean.iter_mut().for_each(|m| *m /= len as f64);
                let mut var = vec![0.0; nrows];
                for (i, v) in x.iter().enumerate() {
                    let d = v - mean[row_of(i)];
                    var[row_of(i)] += d * d;
                }
                let inv: Vec<f64> = var.iter().map(|v| 1.0 / (v / len as f64 + *epsilon as f64).sqrt()).collect();
                x.iter().enumerate().map(|(i, v)| round(node.dtype, (v - mean[row_of(i)]) * inv[row_of(i)])).collect()
            }
            RegionOp::Elementwise(op) => {
                let args: Vec<&Vec<f64>> = node.args.iter().map(arg).collect();
                let mut y = Vec::with_capacity(n);
                let mut scalars = vec![0.0; args.len()];
                for i in 0..n {
                    for (s, a) in scalars.iter_mut().zip(&args) {
                        *s = a[i];
                    }
                    y.push(round(node.dtype, elementwise(op, &scalars).map_err(|e| format!("node {j}: {e}"))?));
                }
                y
            }
        };
        values.push(out);
    }
    Ok(r.outputs.iter().enumerate().map(|(k, o)| Tensor::new(domain.clone(), TensorData::from_f64(cx.out_dtype(k), &values[o.node]))).collect())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_close, f32s, run_one, Rng};
    use quilt_rewrites::ir::{BinaryOp, Op, Operand, RegionInput, RegionNode, RegionOp, RegionOutput, RowSpec, StitchedRegion};
    use quilt_rewrites::{DType, SymDim};
    use std::sync::Arc;

    fn k(v: &[i64]) -> Vec<SymDim> {
        v.iter().map(|&d| SymDim::konst(d)).collect()
    }

    /// silu(groupnorm(x + b) * s + c) against the same formula written out per group.
    #[test]
    fn group_norm_region_with_prologue_and_epilogue() {
        let mut rng = Rng::new(41);
        let (n, c, hw, g) = (2usize, 6usize, 5usize, 3usize);
        let x = rng.tensor(&[n, c, hw]);
        let b = rng.tensor(&[n, c, 1]);
        let s = rng.tensor(&[c]);
        let sh = rng.tensor(&[c]);
        let f = DType::F32;
        let ew = |op: Op, args: Vec<Operand>| RegionNode { op: RegionOp::Elementwise(op), args, dtype: f };
        let region = StitchedRegion {
            domain: k(&[n as i64, c as i64, hw as i64]),
            inputs: vec![
                RegionInput { dtype: f, view: k(&[n as i64, c as i64, hw as i64]) },
                RegionInput { dtype: f, view: k(&[n as i64, c as i64, 1]) },
                RegionInput { dtype: f, view: k(&[c as i64, 1]) },
                RegionInput { dtype: f, view: k(&[c as i64, 1]) },
            ],
            nodes: vec![
                ew(Op::Binary(BinaryOp::Add), vec![Operand::Input(0), Operand::Input(1)]),
                RegionNode { op: RegionOp::Normalize { rows: RowSpec::Groups { groups: g }, epsilon: 1e-5 }, args: vec![Operand::Node(0)], dtype: f },
                ew(Op::Binary(BinaryOp::Mul), vec![Operand::Node(1), Operand::Input(2)]),
                ew(Op::Binary(BinaryOp::Add), vec![Operand::Node(2), Operand::Input(3)]),
                ew(Op::Silu, vec![Operand::Node(3)]),
            ],
            outputs: vec![RegionOutput { node: 4, dtype: f }],
        };
        let got = run_one(Op::Stitched(Arc::new(region)), &[&x, &b, &s, &sh], f, &[n, c, hw]).unwrap();
        let (xv, bv, sv, shv) = (f32s(&x), f32s(&b), f32s(&s), f32s(&sh));
        let h: Vec<f64> = (0..n * c * hw).map(|i| xv[i] as f64 + bv[i / hw] as f64).collect();
        let per = c / g * hw;
        let mut want = vec![0f32; h.len()];
        for (row, chunk) in h.chunks(per).enumerate() {
            let mean = chunk.iter().sum::<f64>() / per as f64;
            let var = chunk.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / per as f64;
            for (i, v) in chunk.iter().enumerate() {
                let flat = row * per + i;
                let ch = (flat / hw) % c;
                let y = (v - mean) / (var + 1e-5).sqrt() * sv[ch] as f64 + shv[ch] as f64;
                want[flat] = (y / (1.0 + (-y).exp())) as f32;
            }
        }
        assert_close(&f32s(&got), &want, 1e-5, 1e-4);
    }

    /// `silu(groupnorm(x + b) · s + c)` over a channels-last domain `[N, H, W, C]` equals the
    /// same region over NCHW data (`Groups` rows) with transposes around it; and a channel count
    /// that does not split into the groups is an error naming both.
    #[test]
    fn channels_last_group_norm_matches_nchw_with_transposes() {
        let mut rng = Rng::new(43);
        let (n, h, w, c, g) = (2usize, 3usize, 5usize, 12usize, 4usize);
        let f = DType::F32;
        let x = rng.tensor(&[n, h, w, c]);
        let b = rng.tensor(&[n, c]);
        let s = rng.tensor(&[c]);
        let sh = rng.tensor(&[c]);
        let ew = |op: Op, args: Vec<Operand>| RegionNode { op: RegionOp::Elementwise(op), args, dtype: f };
        let region = |domain: &[usize], rows: RowSpec, views: [Vec<i64>; 4]| StitchedRegion {
            domain: domain.iter().map(|&d| SymDim::from(d)).collect(),
            inputs: views.into_iter().map(|v| RegionInput { dtype: f, view: k(&v) }).collect(),
            nodes: vec![
                ew(Op::Binary(BinaryOp::Add), vec![Operand::Input(0), Operand::Input(1)]),
                RegionNode { op: RegionOp::Normalize { rows, epsilon: 1e-5 }, args: vec![Operand::Node(0)], dtype: f },
                ew(Op::Binary(BinaryOp::Mul), vec![Operand::Node(1), Operand::Input(2)]),
                ew(Op::Binary(BinaryOp::Add), vec![Operand::Node(2), Operand::Input(3)]),
                ew(Op::Silu, vec![Operand::Node(3)]),
            ],
            outputs: vec![RegionOutput { node: 4, dtype: f }],
        };
        let (ni, hi, wi, ci) = (n as i64, h as i64, w as i64, c as i64);
        let nhwc = region(&[n, h, w, c], RowSpec::GroupsChannelsLast { groups: g }, [vec![ni, hi, wi, ci], vec![ni, 1, 1, ci], vec![ci], vec![ci]]);
        let got = run_one(Op::Stitched(Arc::new(nhwc.clone())), &[&x, &b, &s, &sh], f, &[n, h, w, c]).unwrap();

        let x_nchw = run_one(Op::Transpose { perm: vec![0, 3, 1, 2] }, &[&x], f, &[n, c, h, w]).unwrap();
        let nchw = region(&[n, c, h, w], RowSpec::Groups { groups: g }, [vec![ni, ci, hi, wi], vec![ni, ci, 1, 1], vec![ci, 1, 1], vec![ci, 1, 1]]);
        let y_nchw = run_one(Op::Stitched(Arc::new(nchw)), &[&x_nchw, &b, &s, &sh], f, &[n, c, h, w]).unwrap();
        let want = run_one(Op::Transpose { perm: vec![0, 2, 3, 1] }, &[&y_nchw], f, &[n, h, w, c]).unwrap();
        assert_close(&f32s(&got), &f32s(&want), 1e-6, 1e-5);
        // Not vacuous: the rows really are strided (a contiguous-rows GroupNorm differs).
        let contiguous = StitchedRegion { nodes: nhwc.nodes.iter().map(|nd| match nd.op { RegionOp::Normalize { .. } => RegionNode { op: RegionOp::Normalize { rows: RowSpec::Groups { groups: g }, epsilon: 1e-5 }, ..nd.clone() }, _ => nd.clone() }).collect(), ..nhwc.clone() };
        let other = run_one(Op::Stitched(Arc::new(contiguous)), &[&x, &b, &s, &sh], f, &[n, h, w, c]).unwrap();
        assert!(f32s(&other).iter().zip(f32s(&want)).any(|(a, b)| (a - b).abs() > 1e-2));

        let bad = region(&[n, h, w, 10], RowSpec::GroupsChannelsLast { groups: g }, [vec![ni, hi, wi, 10], vec![10], vec![10], vec![10]]);
        let x10 = rng.tensor(&[n, h, w, 10]);
        let v10 = rng.tensor(&[10]);
        let e = run_one(Op::Stitched(Arc::new(bad)), &[&x10, &v10, &v10, &v10], f, &[n, h, w, 10]).unwrap_err().to_string();
        assert!(e.contains("10 channels do not split into 4 groups"), "{e}");
    }

    #[test]
    fn bad_views_are_errors() {
        let f = DType::F32;
        let region = StitchedRegion {
            domain: k(&[2, 3]),
            inputs: vec![RegionInput { dtype: f, view: k(&[2, 3]) }],
            nodes: vec![RegionNode { op: RegionOp::Elementwise(Op::Silu), args: vec![Operand::Input(0)], dtype: f }],
            outputs: vec![RegionOutput { node: 0, dtype: f }],
        };
        let x = quilt_rewrites::Tensor::from_f32s(vec![5], vec![0.0; 5]);
        let e = run_one(Op::Stitched(Arc::new(region)), &[&x], f, &[2, 3]).unwrap_err().to_string();
        assert!(e.contains("cannot be viewed"), "{e}");
    }
}
