//! One-step plans of memory-bound steps (stitched regions, elementwise ops, copies) at the
//! shapes SD produces, shared by the GPU test `cuda_fixtures.rs` (small shapes that reach every
//! index path: 64-bit, 32-bit, vector; contiguous, split and channels-last rows) and the GPU
//! microbenchmark `examples/bench_regions_gpu.rs` (UNet b2 64² and VAE decoder 512² shapes).
//! Included with `#[path = ...] mod regions_cases;`; as a test target of its own it has no tests.
#![allow(dead_code)]

use std::sync::Arc;

use quilt_models::random::Rng;
use quilt_rewrites::ir::{BinaryOp, Operand, RegionInput, RegionNode, RegionOp, RegionOutput, RowSpec, StitchedRegion};
use quilt_rewrites::plan::{Buffer, BufferKind, OpStep, PlanValue, Step};
use quilt_rewrites::{DType, Op, Plan, SymDim, Tensor, TensorData, TensorType};

/// A one-step plan and the shapes of its inputs.
pub struct Case {
    pub name: String,
    pub plan: Plan,
    pub inputs: Vec<(DType, Vec<usize>)>,
    /// Bytes a perfect kernel moves: every input read once, the output written once.
    pub bytes: usize,
}

fn dims(s: &[usize]) -> Vec<SymDim> {
    s.iter().map(|&d| SymDim::from(d)).collect()
}

/// A plan of one step `op` with inputs of the given dtypes and shapes and one output.
pub fn one_step(name: &str, op: Op, ins: &[(DType, Vec<usize>)], out: (DType, Vec<usize>)) -> Case {
    let mut plan = Plan::default();
    for (i, (d, s)) in ins.iter().enumerate() {
        plan.buffers.push(Buffer { ty: TensorType::new(*d, dims(s)), kind: BufferKind::Input(i) });
        plan.inputs.push(PlanValue { name: format!("in{i}"), buffer: i });
    }
    plan.buffers.push(Buffer { ty: TensorType::new(out.0, dims(&out.1)), kind: BufferKind::Intermediate });
    plan.outputs.push(PlanValue { name: "out".into(), buffer: ins.len() });
    plan.steps.push(Step::Op(OpStep { node: name.into(), op, inputs: (0..ins.len()).map(Some).collect(), outputs: vec![ins.len()] }));
    let size = |(d, s): &(DType, Vec<usize>)| d.size_bytes() * s.iter().product::<usize>();
    let bytes = ins.iter().map(size).sum::<usize>() + size(&out);
    Case { name: name.into(), plan, inputs: ins.to_vec(), bytes }
}

/// `silu(norm(x + b) · s + c)` in `dtype` over `domain`: the UNet's GroupNorm + time-embedding
/// bias + SiLU (or a LayerNorm's affine with SiLU). `b` is per (batch, channel); `s`, `c` per
/// channel. Channel axis: 1 for `Groups`, last for `GroupsChannelsLast` and `Trailing`.
pub fn norm_case(name: &str, domain: &[usize], rows: RowSpec, dtype: DType) -> Case {
    let r = domain.len();
    let (bias, affine): (Vec<usize>, Vec<usize>) = match rows {
        RowSpec::Groups { .. } => {
            let mut b = domain.to_vec();
            b[2..].iter_mut().for_each(|d| *d = 1);
            (b, std::iter::once(domain[1]).chain((2..r).map(|_| 1)).collect())
        }
        RowSpec::GroupsChannelsLast { .. } | RowSpec::Trailing { .. } => {
            let mut b = domain.to_vec();
            b[1..r - 1].iter_mut().for_each(|d| *d = 1);
            (b, vec![domain[r - 1]])
        }
    };
    let views = [domain.to_vec(), bias, affine.clone(), affine];
    let ew = |op: Op, args: Vec<Operand>| RegionNode { op: RegionOp::Elementwise(op), args, dtype };
    let region = StitchedRegion {
        domain: dims(domain),
        inputs: views.iter().map(|v| RegionInput { dtype, view: dims(v) }).collect(),
        nodes: vec![
            ew(Op::Binary(BinaryOp::Add), vec![Operand::Input(0), Operand::Input(1)]),
            RegionNode { op: RegionOp::Normalize { rows, epsilon: 1e-5 }, args: vec![Operand::Node(0)], dtype },
            ew(Op::Binary(BinaryOp::Mul), vec![Operand::Node(1), Operand::Input(2)]),
            ew(Op::Binary(BinaryOp::Add), vec![Operand::Node(2), Operand::Input(3)]),
            ew(Op::Silu, vec![Operand::Node(3)]),
        ],
        outputs: vec![RegionOutput { node: 4, dtype }],
    };
    let ins: Vec<(DType, Vec<usize>)> = views.iter().map(|v| (dtype, v.clone())).collect();
    one_step(name, Op::Stitched(Arc::new(region)), &ins, (dtype, domain.to_vec()))
}

/// `silu(x + y + b)`: a residual add with a per-channel bias (`b` of shape `bias`, broadcast).
pub fn residual_case(name: &str, domain: &[usize], bias: &[usize], dtype: DType) -> Case {
    let ew = |op: Op, args: Vec<Operand>| RegionNode { op: RegionOp::Elementwise(op), args, dtype };
    let region = StitchedRegion {
        domain: dims(domain),
        inputs: vec![RegionInput { dtype, view: dims(domain) }, RegionInput { dtype, view: dims(domain) }, RegionInput { dtype, view: dims(bias) }],
        nodes: vec![
            ew(Op::Binary(BinaryOp::Add), vec![Operand::Input(0), Operand::Input(1)]),
            ew(Op::Binary(BinaryOp::Add), vec![Operand::Node(0), Operand::Input(2)]),
            ew(Op::Silu, vec![Operand::Node(1)]),
        ],
        outputs: vec![RegionOutput { node: 2, dtype }],
    };
    let ins = vec![(dtype, domain.to_vec()), (dtype, domain.to_vec()), (dtype, bias.to_vec())];
    one_step(name, Op::Stitched(Arc::new(region)), &ins, (dtype, domain.to_vec()))
}

/// A standalone broadcast Add (`x + b`, numpy broadcasting, `b` of rank ≤ `x`'s).
pub fn add_case(name: &str, x: &[usize], b: &[usize], dtype: DType) -> Case {
    let lead = x.len() - b.len();
    let out: Vec<usize> = x.iter().enumerate().map(|(d, &v)| if d < lead { v } else { v.max(b[d - lead]) }).collect();
    one_step(name, Op::Binary(BinaryOp::Add), &[(dtype, x.to_vec()), (dtype, b.to_vec())], (dtype, out))
}

pub fn transpose_case(name: &str, x: &[usize], perm: &[usize], dtype: DType) -> Case {
    let out: Vec<usize> = perm.iter().map(|&a| x[a]).collect();
    one_step(name, Op::Transpose { perm: perm.to_vec() }, &[(dtype, x.to_vec())], (dtype, out))
}

pub fn concat_case(name: &str, parts: &[Vec<usize>], axis: usize, dtype: DType) -> Case {
    let mut out = parts[0].clone();
    out[axis] = parts.iter().map(|p| p[axis]).sum();
    let ins: Vec<(DType, Vec<usize>)> = parts.iter().map(|p| (dtype, p.clone())).collect();
    one_step(name, Op::Concat { axis }, &ins, (dtype, out))
}

/// Seeded normal inputs for a case (stored in each input's dtype).
pub fn random_inputs(case: &Case, seed: u64) -> Vec<Tensor> {
    case.inputs
        .iter()
        .enumerate()
        .map(|(i, (d, s))| {
            let mut rng = Rng::for_stream(seed, &format!("{}{i}", case.name));
            let n: usize = s.iter().product();
            let v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
            Tensor::new(s.clone(), TensorData::from_f64(*d, &v))
        })
        .collect()
}

/// Small shapes that reach every path of the generated kernels (for GPU-vs-CPU tests): contiguous
/// and channels-last GroupNorm rows, short and split; f32 and f16 (vector widths 4 and 8);
/// innermost extents that do and do not divide the vector width; copies and a broadcast Add.
pub fn test_cases() -> Vec<Case> {
    use DType::{F16, F32, F64};
    let g32 = RowSpec::Groups { groups: 32 };
    let cl32 = RowSpec::GroupsChannelsLast { groups: 32 };
    vec![
        norm_case("gn_nchw_f16_short", &[2, 64, 16, 16], g32.clone(), F16),
        norm_case("gn_nchw_f16_split", &[1, 64, 96, 96], g32.clone(), F16),
        norm_case("gn_nchw_f32_odd", &[2, 64, 7, 9], g32.clone(), F32),
        norm_case("gn_nhwc_f32_short", &[2, 8, 8, 64], cl32.clone(), F32),
        norm_case("gn_nhwc_f32_split", &[1, 96, 96, 64], cl32.clone(), F32),
        norm_case("gn_nhwc_f16_c320", &[2, 16, 16, 320], cl32.clone(), F16),
        norm_case("gn_nhwc_f16_split_c320", &[1, 64, 64, 320], RowSpec::GroupsChannelsLast { groups: 16 }, F16),
        // Three batch entries (one last-block counter each), groups of 10 channels straddling
        // the threads' 8-channel vectors.
        norm_case("gn_nhwc_f16_split_b3_c320", &[3, 48, 48, 320], cl32.clone(), F16),
        // f64 statistics: the partials as two 16-byte halves.
        norm_case("gn_nhwc_f64_split", &[2, 96, 96, 64], cl32.clone(), F64),
        // SD's 8² feature maps at static shapes (rows of 2560 and 5120): one block per row.
        norm_case("gn_nhwc_f16_c1280_8", &[2, 8, 8, 1280], cl32.clone(), F16),
        norm_case("gn_nhwc_f16_c2560_8", &[2, 8, 8, 2560], cl32.clone(), F16),
        norm_case("ln_f16_320", &[2, 77, 320], RowSpec::Trailing { axis: 2 }, F16),
        norm_case("ln_f16_warp_rows", &[2, 1100, 320], RowSpec::Trailing { axis: 2 }, F16),
        norm_case("ln_f32_split", &[3, 40000], RowSpec::Trailing { axis: 1 }, F32),
        residual_case("residual_f16", &[2, 320, 16, 16], &[320, 1, 1], F16),
        residual_case("residual_f16_odd", &[2, 40, 5, 7], &[40, 1, 1], F16),
        residual_case("residual_f32_lastbias", &[2, 77, 640], &[640], F32),
        add_case("add_bias_f16", &[2, 64, 2560], &[2560], F16),
        add_case("add_bias_f16_odd", &[3, 7, 13], &[13], F16),
        add_case("add_f32_outer", &[4, 1, 24], &[4, 6, 1], F32),
        transpose_case("transpose_f16", &[2, 64, 16, 20], &[0, 2, 3, 1], F16),
        concat_case("concat_f16", &[vec![2, 48, 8, 8], vec![2, 16, 8, 8]], 1, F16),
        concat_case("concat_f32_odd", &[vec![2, 3, 5], vec![2, 4, 5]], 1, F32),
    ]
}

/// The memory-bound steps of the SD 1.5 UNet (batch 2, 64² latent) and VAE decoder (batch 1,
/// 512² image) in f16, as the profile in the brief names them.
pub fn bench_cases() -> Vec<Case> {
    use DType::F16;
    let g32 = RowSpec::Groups { groups: 32 };
    let cl32 = RowSpec::GroupsChannelsLast { groups: 32 };
    vec![
        norm_case("unet gn+silu 320@64² nchw", &[2, 320, 64, 64], g32.clone(), F16),
        norm_case("unet gn+silu 320@64² nhwc", &[2, 64, 64, 320], cl32.clone(), F16),
        norm_case("unet gn+silu 960@64² nhwc", &[2, 64, 64, 960], cl32.clone(), F16),
        norm_case("unet gn+silu 640@32² nhwc", &[2, 32, 32, 640], cl32.clone(), F16),
        norm_case("unet gn+silu 1280@8² nchw", &[2, 1280, 8, 8], g32.clone(), F16),
        norm_case("unet gn+silu 640@32² nchw", &[2, 640, 32, 32], g32.clone(), F16),
        norm_case("unet ln 4096x320", &[2, 4096, 320], RowSpec::Trailing { axis: 2 }, F16),
        residual_case("unet residual+bias 320@64²", &[2, 320, 64, 64], &[320, 1, 1], F16),
        add_case("unet ff bias add 4096x2560", &[2, 4096, 2560], &[2560], F16),
        transpose_case("unet transpose nchw->nhwc 320@64²", &[2, 320, 64, 64], &[0, 2, 3, 1], F16),
        concat_case("unet concat 640+320@64²", &[vec![2, 640, 64, 64], vec![2, 320, 64, 64]], 1, F16),
        norm_case("vae gn+silu 128@512² nchw", &[1, 128, 512, 512], g32.clone(), F16),
        norm_case("vae gn+silu 128@512² nhwc", &[1, 512, 512, 128], cl32.clone(), F16),
        norm_case("vae gn+silu 256@256² nchw", &[1, 256, 256, 256], g32, F16),
        residual_case("vae residual 128@512²", &[1, 128, 512, 512], &[128, 1, 1], F16),
    ]
}
