//! CI without a GPU: the CUDA code generator handles every step of every fixture plan (the tiny
//! SD exports with weights and the graph-only full-size SD 1.5 UNet, VAE decoder and CLIP), and
//! every distinct module it emits compiles with NVRTC to an sm_90 cubin with no register spills
//! (`--ptxas-options=-v`). Needs libnvrtc on the library path (`scripts/setup.sh` installs PyPI's
//! `nvidia-cuda-nvrtc` and exports it); without it the test says it was skipped, unless
//! `QUILT_REQUIRE_NVRTC=1` (set by `scripts/setup.sh`) makes that a failure.

#[path = "cuda_support.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use quilt_kernels::cuda::codegen;
use quilt_kernels::cuda::nvrtc;
use quilt_rewrites::Op;

fn fixture_files() -> Vec<(PathBuf, bool)> {
    let m = support::manifest();
    let mut files: BTreeSet<PathBuf> = m.models.iter().map(|e| m.model_path(e)).collect();
    let full = support::fixtures_dir().join("full");
    let mut out: Vec<(PathBuf, bool)> = files.iter().map(|p| (p.clone(), true)).collect();
    if let Ok(rd) = std::fs::read_dir(&full) {
        let mut graphs: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().ends_with(".graph.onnx")).collect();
        graphs.sort();
        out.extend(graphs.into_iter().map(|p| (p, false)));
    }
    files.clear();
    out
}

/// Every step of every fixture plan, lowered and optimized, has CUDA code; distinct module
/// sources are collected for the compile test.
fn all_sources() -> BTreeMap<String, String> {
    let mut sources: BTreeMap<String, String> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut fused = BTreeMap::<String, usize>::new();
    for (path, weighted) in fixture_files() {
        for kind in support::PlanKind::ALL {
            let plan = support::plan(&path, weighted, kind);
            let mut with_code = 0;
            for i in 0..plan.steps.len() {
                match codegen::step_source(&plan, i) {
                    Ok(Some(src)) => {
                        with_code += 1;
                        let quilt_rewrites::plan::Step::Op(s) = &plan.steps[i];
                        if matches!(s.op, Op::Silu | Op::QuickGelu { .. } | Op::GeGlu { .. } | Op::Attention { .. }) {
                            *fused.entry(s.op.name()).or_default() += 1;
                        }
                        // Stitching folds activations into regions: count them there too.
                        if let Op::Stitched(r) = &s.op {
                            for n in r.op_names() {
                                *fused.entry(n).or_default() += 1;
                            }
                        }
                        sources.entry(src).or_insert_with(|| format!("{} ({}) step {i} {} ({})", path.display(), kind.label(), s.op.name(), s.node));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let quilt_rewrites::plan::Step::Op(s) = &plan.steps[i];
                        // Channels-last convolutions are cuDNN calls, declined where cuDNN does
                        // not load (CI); every other step of those plans is still checked.
                        let needs_cudnn = matches!(s.op, Op::Conv { channels_last: true, .. }) && quilt_kernels::cuda::conv::cudnn::library().is_err();
                        if needs_cudnn {
                            continue;
                        }
                        failures.push(format!("{} ({}): step {i} node '{}' ({}): {e}", path.display(), kind.label(), s.node, s.op.name()));
                    }
                }
            }
            println!("{} ({}): {} steps, {with_code} launch generated kernels", path.display(), kind.label(), plan.steps.len());
        }
    }
    println!("fused steps with CUDA code: {fused:?}");
    // The optimizer fuses these in the SD fixtures; their kernels must be in the compile test.
    for op in ["Silu", "QuickGelu", "GeGlu", "Attention"] {
        assert!(fused.contains_key(op), "no {op} step in any optimized fixture plan: {fused:?}");
    }
    assert!(failures.is_empty(), "steps without CUDA code:\n{}", failures.join("\n"));
    sources
}

#[test]
fn every_fixture_step_has_cuda_code() {
    let sources = all_sources();
    println!("{} distinct modules", sources.len());
    assert!(sources.len() > 20, "suspiciously few distinct kernels: {}", sources.len());
}

#[test]
fn every_generated_module_compiles_for_sm90_without_spills() {
    if !support::nvrtc_or_skip() {
        return;
    }
    let version = nvrtc::version().unwrap();
    let sources = all_sources();
    let started = std::time::Instant::now();
    let mut spills = Vec::new();
    let (mut kernels, mut max_regs, mut max_stack) = (0, (0u32, String::new()), 0u32);
    for (src, origin) in &sources {
        let compiled = nvrtc::compile(src, "fixture.cu", (9, 0)).unwrap_or_else(|e| panic!("{origin}: {e}\n--- source ---\n{src}"));
        assert!(!compiled.cubin.is_empty(), "{origin}: empty cubin");
        let stats = nvrtc::kernel_stats(&compiled.log);
        assert!(!stats.is_empty(), "{origin}: no ptxas report in the log:\n{}", compiled.log);
        for k in stats {
            kernels += 1;
            if k.registers > max_regs.0 {
                max_regs = (k.registers, format!("{} in {origin}", k.name));
            }
            max_stack = max_stack.max(k.stack_bytes);
            if k.spill_store_bytes > 0 || k.spill_load_bytes > 0 {
                spills.push(format!("{origin}: {} spills {} bytes stored, {} loaded", k.name, k.spill_store_bytes, k.spill_load_bytes));
            }
        }
    }
    println!(
        "NVRTC {}.{}: {} modules, {kernels} kernels compiled for sm_90 in {:.1} s; max {} registers ({}); max stack frame {max_stack} bytes; spills: {}",
        version.0,
        version.1,
        sources.len(),
        started.elapsed().as_secs_f64(),
        max_regs.0,
        max_regs.1,
        spills.len()
    );
    assert!(spills.is_empty(), "register spills:\n{}", spills.join("\n"));
}

/// A plan built from a source without a CUDA implementation is declined with the node's name.
#[test]
fn steps_without_cuda_code_are_named() {
    use quilt_rewrites::plan::{Buffer, BufferKind, OpStep, PlanValue, Step};
    use quilt_rewrites::{DType, Op, SymDim, TensorType};
    let ty = TensorType::new(DType::F32, vec![SymDim::sym("N")]);
    let mut plan = quilt_rewrites::Plan::default();
    plan.buffers.push(Buffer { ty: ty.clone(), kind: BufferKind::Input(0) });
    plan.buffers.push(Buffer { ty: ty.clone(), kind: BufferKind::Intermediate });
    plan.inputs.push(PlanValue { name: "x".into(), buffer: 0 });
    plan.outputs.push(PlanValue { name: "y".into(), buffer: 1 });
    plan.symbols.push("N".into());
    // Resize cubic of an integer tensor has no kernel.
    let op = Op::Resize {
        mode: quilt_rewrites::ir::ResizeMode::Cubic,
        coord: quilt_rewrites::ir::CoordMode::HalfPixel,
        nearest: quilt_rewrites::ir::NearestMode::Floor,
        cubic_coeff_a: -0.75,
        exclude_outside: false,
        scales: vec![quilt_rewrites::ir::SymScale::Factor(2.0)],
    };
    plan.buffers[0].ty.dtype = DType::I64;
    plan.buffers[1].ty.dtype = DType::I64;
    plan.steps.push(Step::Op(OpStep { node: "upsample_ints".into(), op, inputs: vec![Some(0)], outputs: vec![1] }));
    let e = codegen::step_source(&plan, 0).unwrap_err();
    assert!(e.contains("Cubic") && e.contains("i64"), "{e}");
    // Declined before any GPU is needed, naming the node.
    let e = quilt_kernels::cuda::CudaExecutable::new(plan).err().expect("must be declined").to_string();
    assert!(e.contains("upsample_ints") && e.contains("Resize") && e.contains("Cubic"), "{e}");
}

/// A one-step plan: `Op::Attention` over inputs q, k, v (and a mask) of the given dtype and
/// shapes (a dim of 0 is the symbol "S"), output of the dtype.
fn attention_plan(dtype: quilt_rewrites::DType, shapes: &[&[usize]], heads: Option<usize>) -> quilt_rewrites::Plan {
    use quilt_rewrites::plan::{Buffer, BufferKind, OpStep, PlanValue, Step};
    use quilt_rewrites::{SymDim, TensorType};
    let dims = |s: &[usize]| -> Vec<SymDim> { s.iter().map(|&d| if d == 0 { SymDim::sym("S") } else { SymDim::from(d) }).collect() };
    let mut plan = quilt_rewrites::Plan::default();
    for (i, s) in shapes.iter().enumerate() {
        plan.buffers.push(Buffer { ty: TensorType::new(dtype, dims(s)), kind: BufferKind::Input(i) });
        plan.inputs.push(PlanValue { name: ["q", "k", "v", "mask"][i].into(), buffer: i });
    }
    let (q, v) = (shapes[0], shapes[2]);
    let mut out = q.to_vec();
    *out.last_mut().unwrap() = *v.last().unwrap();
    plan.buffers.push(Buffer { ty: TensorType::new(dtype, dims(&out)), kind: BufferKind::Intermediate });
    plan.outputs.push(PlanValue { name: "out".into(), buffer: shapes.len() });
    if shapes.iter().any(|s| s.contains(&0)) {
        plan.symbols.push("S".into());
    }
    let inputs = (0..shapes.len()).map(Some).collect();
    plan.steps.push(Step::Op(OpStep { node: "attn".into(), op: Op::Attention { scale: 0.125, heads, columns: None }, inputs, outputs: vec![shapes.len()] }));
    plan
}

/// f16/bf16 attention runs on the tensor-core flash kernel: one variant per head-dim bucket when
/// the plan fixes the head dim, every bucket when it does not; f32 and heads wider than 160 run
/// as two cuBLAS GEMMs around a row softmax (`codegen::attention::gemm`).
#[test]
fn attention_picks_the_flash_kernel_by_dtype_and_head_dim() {
    use quilt_kernels::cuda::codegen::flash_attention::{default_small, BUCKETS};
    use quilt_rewrites::DType;
    let names = |src: &str| -> Vec<String> {
        src.lines().filter_map(|l| l.split("__launch_bounds__(256, 1) ").nth(1)).map(|r| r.split('(').next().unwrap().to_string()).collect()
    };
    for dtype in [DType::F16, DType::BF16] {
        let src = codegen::step_source(&attention_plan(dtype, &[&[2, 77, 40], &[2, 77, 40], &[2, 77, 40]], None), 0).unwrap().unwrap();
        assert!(src.contains("mma.sync.aligned.m16n8k16"), "{dtype}: no tensor-core mma");
        assert_eq!(names(&src), ["q_flash_attention_48"], "{dtype}: head dim 40 runs in the 48 bucket");
        // Packed heads: 8 heads of 160 in a 1280-wide row; the bucket's small launches take two
        // key groups (`default_small`).
        let src = codegen::step_source(&attention_plan(dtype, &[&[2, 0, 1280], &[2, 77, 1280], &[2, 77, 1280]], Some(8)), 0).unwrap().unwrap();
        assert_eq!(names(&src), ["q_flash_attention_160", "q_flash_attention_160_w8g2"]);
        // A symbolic head dim compiles every bucket into the module, then the small-launch variants.
        let src = codegen::step_source(&attention_plan(dtype, &[&[2, 77, 0], &[2, 77, 0], &[2, 77, 0]], None), 0).unwrap().unwrap();
        let small = BUCKETS.iter().filter(|&&b| default_small(b).is_some()).map(|b| format!("q_flash_attention_{b}_w8g2"));
        assert_eq!(names(&src), BUCKETS.iter().map(|b| format!("q_flash_attention_{b}")).chain(small).collect::<Vec<_>>());
    }
    // f32, and heads wider than the largest flash bucket (the SD VAE's 512; no upper limit),
    // run as two cuBLAS GEMMs around a row-softmax kernel.
    for (dtype, d) in [(DType::F32, 40), (DType::F16, 512), (DType::F32, 512), (DType::BF16, 640)] {
        let src = codegen::step_source(&attention_plan(dtype, &[&[1, 77, d], &[1, 77, d], &[1, 77, d]], None), 0).unwrap().unwrap();
        assert!(src.contains("q_attention_softmax(") && !src.contains("q_attention(") && !src.contains("mma.sync"), "{dtype} d={d}");
        if nvrtc::available() {
            let compiled = nvrtc::compile(&src, "wide.cu", (9, 0)).unwrap();
            let stats = nvrtc::kernel_stats(&compiled.log);
            assert!(stats.iter().all(|k| k.spill_store_bytes == 0 && k.spill_load_bytes == 0), "{dtype} d={d} spills: {stats:?}");
        }
    }
}

/// Every flash-attention variant (f16/bf16 × head-dim bucket × with/without mask) compiles with
/// NVRTC for sm_90 with no register spills and no stack frame (its fragments stay in registers).
#[test]
fn every_flash_attention_variant_compiles_for_sm90_without_spills() {
    use quilt_kernels::cuda::codegen::flash_attention::{bucket, default_small, BUCKETS};
    use quilt_rewrites::DType;
    if !support::nvrtc_or_skip() {
        return;
    }
    let mut report = Vec::new();
    let mut bad = Vec::new();
    for dtype in [DType::F16, DType::BF16] {
        for b in BUCKETS {
            // A head dim just above the previous bucket, so each bucket is reached by rounding up.
            let d = BUCKETS.iter().rev().find(|&&x| x < b).map_or(b, |&x| x + 8);
            assert_eq!(bucket(d), Some(b));
            for masked in [false, true] {
                let q: &[usize] = &[2, 64, d];
                let mask: &[usize] = &[1, 64, 64];
                let shapes: Vec<&[usize]> = if masked { vec![q, q, q, mask] } else { vec![q, q, q] };
                let src = codegen::step_source(&attention_plan(dtype, &shapes, None), 0).unwrap().unwrap();
                let origin = format!("{dtype} d={d} (bucket {b}) mask={masked}");
                let compiled = nvrtc::compile(&src, "flash.cu", (9, 0)).unwrap_or_else(|e| panic!("{origin}: {e}"));
                let stats = nvrtc::kernel_stats(&compiled.log);
                // The bucket's kernel, and its small-launch variant where it has one.
                assert_eq!(stats.len(), 1 + default_small(b).is_some() as usize, "{origin}: {}", compiled.log);
                for k in &stats {
                    report.push(format!("{origin} {}: {} registers, {} bytes stack", k.name, k.registers, k.stack_bytes));
                    if k.spill_store_bytes > 0 || k.spill_load_bytes > 0 || k.stack_bytes > 0 {
                        bad.push(format!("{origin}: {k:?}"));
                    }
                }
            }
        }
    }
    println!("{}", report.join("\n"));
    assert!(bad.is_empty(), "spills or stack frames:\n{}", bad.join("\n"));
}

/// A one-step plan of a stitched `silu(norm(x + b) · s + c)` region over `domain` (a dim of 0
/// is the symbol "S"), in `dtype`: `x` has the domain's shape, `b` one value per (batch,
/// channel) `[N, C, 1, …]`, `s` and `c` one per channel of axis 1 (GroupNorm) or per element of
/// the last axis (LayerNorm over the last axis).
fn norm_region_plan(domain: &[usize], rows: quilt_rewrites::ir::RowSpec, dtype: quilt_rewrites::DType) -> quilt_rewrites::Plan {
    use quilt_rewrites::ir::{BinaryOp, Operand, RegionInput, RegionNode, RegionOp, RegionOutput, RowSpec, StitchedRegion};
    use quilt_rewrites::plan::{Buffer, BufferKind, OpStep, PlanValue, Step};
    use quilt_rewrites::{SymDim, TensorType};
    let dim = |d: usize| if d == 0 { SymDim::sym("S") } else { SymDim::from(d) };
    let dom: Vec<SymDim> = domain.iter().map(|&d| dim(d)).collect();
    let r = domain.len();
    let mut bias = dom.clone();
    bias[2..].iter_mut().for_each(|d| *d = SymDim::from(1usize));
    let affine: Vec<SymDim> = match rows {
        RowSpec::Groups { .. } => std::iter::once(dom[1].clone()).chain((2..r).map(|_| SymDim::from(1usize))).collect(),
        RowSpec::Trailing { .. } | RowSpec::GroupsChannelsLast { .. } => vec![dom[r - 1].clone()],
    };
    let views = [dom.clone(), bias, affine.clone(), affine];
    let ew = |op: Op, args: Vec<Operand>| RegionNode { op: RegionOp::Elementwise(op), args, dtype };
    let region = StitchedRegion {
        domain: dom.clone(),
        inputs: views.iter().map(|v| RegionInput { dtype, view: v.clone() }).collect(),
        nodes: vec![
            ew(Op::Binary(BinaryOp::Add), vec![Operand::Input(0), Operand::Input(1)]),
            RegionNode { op: RegionOp::Normalize { rows, epsilon: 1e-5 }, args: vec![Operand::Node(0)], dtype },
            ew(Op::Binary(BinaryOp::Mul), vec![Operand::Node(1), Operand::Input(2)]),
            ew(Op::Binary(BinaryOp::Add), vec![Operand::Node(2), Operand::Input(3)]),
            ew(Op::Silu, vec![Operand::Node(3)]),
        ],
        outputs: vec![RegionOutput { node: 4, dtype }],
    };
    let mut plan = quilt_rewrites::Plan::default();
    for (i, v) in views.iter().enumerate() {
        plan.buffers.push(Buffer { ty: TensorType::new(dtype, v.clone()), kind: BufferKind::Input(i) });
        plan.inputs.push(PlanValue { name: ["x", "b", "s", "c"][i].into(), buffer: i });
    }
    plan.buffers.push(Buffer { ty: TensorType::new(dtype, dom), kind: BufferKind::Intermediate });
    plan.outputs.push(PlanValue { name: "y".into(), buffer: 4 });
    if domain.contains(&0) {
        plan.symbols.push("S".into());
    }
    let op = Op::Stitched(std::sync::Arc::new(region));
    plan.steps.push(Step::Op(OpStep { node: "norm_region".into(), op, inputs: (0..4).map(Some).collect(), outputs: vec![4] }));
    plan
}

/// The launch plan of step 0 of a plan whose dims are all constants.
fn launch_plan(plan: &quilt_rewrites::Plan) -> codegen::LaunchPlan {
    use quilt_rewrites::plan::Step;
    let Step::Op(s) = &plan.steps[0];
    let codegen::StepKind::Code(code) = codegen::generate(plan, s, 0).unwrap() else { panic!("no code") };
    let shape = |b: usize| -> Vec<usize> { plan.buffers[b].ty.shape.iter().map(|d| d.as_const().unwrap() as usize).collect() };
    let ins: Vec<Vec<usize>> = s.inputs.iter().map(|b| shape(b.unwrap())).collect();
    let outs: Vec<Vec<usize>> = s.outputs.iter().map(|&b| shape(b)).collect();
    // No symbols: the default (empty) bindings evaluate every dim.
    let bindings = Default::default();
    let shapes = codegen::StepShapes { ins: ins.iter().map(|v| Some(v.as_slice())).collect(), outs: outs.iter().map(|v| v.as_slice()).collect(), bindings: &bindings };
    code.plan(&shapes).unwrap()
}

/// (kernel, blocks, head params, args) of each launch.
fn launches(lp: &codegen::LaunchPlan) -> Vec<(usize, u64, [i64; 3], Vec<codegen::Arg>)> {
    lp.actions
        .iter()
        .map(|a| match a {
            codegen::Action::Launch { kernel, work: codegen::Work::Rows(n), params, args } => (*kernel, *n, [params.0[0], params.0[1], params.0[2]], args.clone()),
            other => panic!("not a row launch: {other:?}"),
        })
        .collect()
}

/// Long GroupNorm rows (the SD VAE decoder's 128 channels at 512², the UNet's 320 at 64²) run
/// as a partials launch and an apply launch of rows × chunks blocks with per-chunk (mean, M2) in
/// scratch; short rows keep one block per row, and regions whose rows are constant and short do
/// not carry the split kernels at all. Every variant compiles for sm_90 without spills.
#[test]
fn long_norm_rows_split_their_statistics() {
    use codegen::Arg;
    use quilt_rewrites::ir::RowSpec;
    use quilt_rewrites::DType;
    let g32 = RowSpec::Groups { groups: 32 };
    let names = |src: &str| -> Vec<String> { src.lines().filter_map(|l| l.strip_prefix("extern \"C\" __global__ void ")).map(|r| r.split('(').next().unwrap().to_string()).collect() };
    let mut sources = Vec::new();

    // VAE decoder, 128 channels at 512², batch 1: 32 rows of 4 · 262144 → 64 chunks of 16384.
    let vae = norm_region_plan(&[1, 128, 512, 512], g32.clone(), DType::F32);
    let src = codegen::step_source(&vae, 0).unwrap().unwrap();
    assert_eq!(names(&src), ["q_st", "q_st_part", "q_st_apply"]);
    let lp = launch_plan(&vae);
    let io: Vec<Arg> = vec![Arg::Out(0), Arg::In(0), Arg::In(1), Arg::In(2), Arg::In(3), Arg::Scratch(0)];
    assert_eq!(lp.scratch, [2 * 32 * 64 * 4]);
    assert_eq!(launches(&lp), [(1, 32 * 64, [32, 1 << 20, 64], io.clone()), (2, 32 * 64, [32, 1 << 20, 64], io.clone())]);
    sources.push(("vae 512² f32", src));

    // UNet, 320 channels at 64², batch 2: 64 rows of 10 · 4096 → 16 chunks (1024 blocks).
    let lp = launch_plan(&norm_region_plan(&[2, 320, 64, 64], g32.clone(), DType::F32));
    assert_eq!(lp.scratch, [2 * 64 * 16 * 4]);
    assert_eq!(launches(&lp).iter().map(|l| (l.0, l.1, l.2)).collect::<Vec<_>>(), [(1, 1024, [64, 40960, 16]), (2, 1024, [64, 40960, 16])]);

    // Short GroupNorm rows (1280 channels at 8²): the row kernel only, no scratch.
    let lp = launch_plan(&norm_region_plan(&[2, 1280, 8, 8], g32.clone(), DType::F32));
    assert!(lp.scratch.is_empty());
    assert_eq!(launches(&lp), [(0, 64, [64, 2560, 2], io[..5].to_vec())]); // rows, L, then dims

    // LayerNorm rows of 1280: constant and short, so the module has the row kernel alone.
    let ln = norm_region_plan(&[2, 77, 1280], RowSpec::Trailing { axis: 2 }, DType::F32);
    let src = codegen::step_source(&ln, 0).unwrap().unwrap();
    assert_eq!(names(&src), ["q_st"]);
    assert_eq!(launches(&launch_plan(&ln)).iter().map(|l| (l.0, l.1)).collect::<Vec<_>>(), [(0, 154)]);
    sources.push(("layernorm 1280 f32", src));

    // Symbolic spatial size: both paths are compiled, the choice is made per run.
    for dtype in [DType::F16, DType::F64] {
        let src = codegen::step_source(&norm_region_plan(&[2, 64, 0, 0], g32.clone(), dtype), 0).unwrap().unwrap();
        assert_eq!(names(&src), ["q_st", "q_st_part", "q_st_apply"], "{dtype}");
        sources.push((if dtype == DType::F16 { "symbolic f16" } else { "symbolic f64" }, src));
    }

    if !support::nvrtc_or_skip() {
        return;
    }
    for (origin, src) in &sources {
        let compiled = nvrtc::compile(src, "norm.cu", (9, 0)).unwrap_or_else(|e| panic!("{origin}: {e}\n--- source ---\n{src}"));
        let stats = nvrtc::kernel_stats(&compiled.log);
        assert_eq!(stats.len(), names(src).len(), "{origin}: {}", compiled.log);
        for k in &stats {
            println!("{origin}: {} {} registers, {} bytes stack", k.name, k.registers, k.stack_bytes);
            assert!(k.spill_store_bytes == 0 && k.spill_load_bytes == 0, "{origin}: {k:?}");
        }
    }
}

/// The approximate SiLU of 16-bit kernels (`QUILT_FAST_MATH`, on by default) compiles with NVRTC, and
/// matches the exact form's edge behaviour in the expression (x → -inf gives x · 0).
#[test]
fn fast_silu_compiles_for_sm90() {
    use codegen::elementwise::sigmoid_gated;
    use quilt_rewrites::DType;
    let c = codegen::CType::of(DType::F32);
    let fast = sigmoid_gated(c, "x", 1.0, true);
    assert!(fast.contains("__expf") && fast.contains("__fdividef"), "{fast}");
    assert!(!sigmoid_gated(c, "x", 1.0, false).contains("__expf"));
    // f64 keeps the exact form even when asked for the fast one.
    assert!(!sigmoid_gated(codegen::CType::of(DType::F64), "x", 1.0, true).contains("__expf"));
    if !support::nvrtc_or_skip() {
        return;
    }
    let src = format!("{}\nextern \"C\" __global__ void q_fast_silu(float* out, const float* in) {{ const float x = in[threadIdx.x]; out[threadIdx.x] = {fast}; }}\n", codegen::PRELUDE);
    nvrtc::compile(&src, "fast_silu.cu", (9, 0)).unwrap_or_else(|e| panic!("{e}\n{src}"));
}
