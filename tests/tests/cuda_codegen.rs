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
    plan.steps.push(Step::Op(OpStep { node: "attn".into(), op: Op::Attention { scale: 0.125, heads }, inputs, outputs: vec![shapes.len()] }));
    plan
}

/// f16/bf16 attention runs on the tensor-core flash kernel: one variant per head-dim bucket when
/// the plan fixes the head dim, every bucket when it does not; f32 keeps the plain kernel.
#[test]
fn attention_picks_the_flash_kernel_by_dtype_and_head_dim() {
    use quilt_kernels::cuda::codegen::flash_attention::BUCKETS;
    use quilt_rewrites::DType;
    let names = |src: &str| -> Vec<String> {
        src.lines().filter_map(|l| l.split("__launch_bounds__(256, 1) ").nth(1)).map(|r| r.split('(').next().unwrap().to_string()).collect()
    };
    for dtype in [DType::F16, DType::BF16] {
        let src = codegen::step_source(&attention_plan(dtype, &[&[2, 77, 40], &[2, 77, 40], &[2, 77, 40]], None), 0).unwrap().unwrap();
        assert!(src.contains("mma.sync.aligned.m16n8k16"), "{dtype}: no tensor-core mma");
        assert_eq!(names(&src), ["q_flash_attention_48"], "{dtype}: head dim 40 runs in the 48 bucket");
        // Packed heads: 8 heads of 160 in a 1280-wide row.
        let src = codegen::step_source(&attention_plan(dtype, &[&[2, 0, 1280], &[2, 77, 1280], &[2, 77, 1280]], Some(8)), 0).unwrap().unwrap();
        assert_eq!(names(&src), ["q_flash_attention_160"]);
        // A symbolic head dim compiles every bucket into the module.
        let src = codegen::step_source(&attention_plan(dtype, &[&[2, 77, 0], &[2, 77, 0], &[2, 77, 0]], None), 0).unwrap().unwrap();
        assert_eq!(names(&src), BUCKETS.iter().map(|b| format!("q_flash_attention_{b}")).collect::<Vec<_>>());
    }
    let src = codegen::step_source(&attention_plan(DType::F32, &[&[2, 77, 40], &[2, 77, 40], &[2, 77, 40]], None), 0).unwrap().unwrap();
    assert!(src.contains("q_attention(") && !src.contains("mma.sync"), "f32 keeps the plain kernel");
    // Head dims past the largest flash bucket (the SD VAE's 512) take the wide plain kernel;
    // past its width they are declined when the step is generated.
    for dtype in [DType::F16, DType::F32] {
        let src = codegen::step_source(&attention_plan(dtype, &[&[1, 77, 512], &[1, 77, 512], &[1, 77, 512]], None), 0).unwrap().unwrap();
        assert!(src.contains("q_attention(") && src.contains("#define QD 512") && !src.contains("mma.sync"), "{dtype}: d=512");
        if nvrtc::available() {
            let compiled = nvrtc::compile(&src, "wide.cu", (9, 0)).unwrap();
            let stats = nvrtc::kernel_stats(&compiled.log);
            assert!(stats.iter().all(|k| k.spill_store_bytes == 0 && k.spill_load_bytes == 0), "{dtype} d=512 spills: {stats:?}");
        }
    }
    let e = codegen::step_source(&attention_plan(DType::F16, &[&[2, 77, 640], &[2, 77, 640], &[2, 77, 640]], None), 0).unwrap_err();
    assert!(e.contains("640") && e.contains("512"), "{e}");
}

/// Every flash-attention variant (f16/bf16 × head-dim bucket × with/without mask) compiles with
/// NVRTC for sm_90 with no register spills and no stack frame (its fragments stay in registers).
#[test]
fn every_flash_attention_variant_compiles_for_sm90_without_spills() {
    use quilt_kernels::cuda::codegen::flash_attention::{bucket, BUCKETS};
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
                assert_eq!(stats.len(), 1, "{origin}: {}", compiled.log);
                let k = &stats[0];
                report.push(format!("{origin}: {} registers, {} bytes stack", k.registers, k.stack_bytes));
                if k.spill_store_bytes > 0 || k.spill_load_bytes > 0 || k.stack_bytes > 0 {
                    bad.push(format!("{origin}: {k:?}"));
                }
            }
        }
    }
    println!("{}", report.join("\n"));
    assert!(bad.is_empty(), "spills or stack frames:\n{}", bad.join("\n"));
}
