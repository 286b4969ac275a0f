//! GEMMs with epilogues (`kernels/src/cuda/gemm.rs`): a `Gemm` whose C is a bias row runs as one
//! cuBLASLt matmul with `CUBLASLT_EPILOGUE_BIAS`, a `Gemm` whose C has the output's shape as one
//! Lt matmul with a separate C (β·C), and everything else keeps the cuBLAS path (a kernel writes
//! β·C, cuBLAS accumulates).
//!
//! - `lowering_chooses_cublaslt_where_it_applies` (no GPU needed): the launch plans of each form.
//! - `gemm_epilogues_match_the_cpu_reference` (GPU): f32/f16/bf16, bias `[N]`/`[1, N]`, full C,
//!   the fallback forms, no transposes and the transposes imported Gemms use, α ≠ 1, against the
//!   CPU reference, at three row counts from one prepared plan (M is a symbol), each run twice
//!   (the second run replays a CUDA graph, so the Lt call is checked inside a capture too).
//! - `linear_layers_match_the_cpu_reference` (GPU): `MatMul(x[B, S, K], W) + b` through the
//!   optimizer (`linear-bias` → Reshape → Gemm → Reshape) in f32 and in `precision=fp16`, at two
//!   (B, S) bindings of one plan.
//!
//! Inputs are N(0, 1) draws rounded to the dtype, so CPU and GPU see the same values. Tolerances:
//! f32 (no TF32) |gpu − cpu| ≤ 1e-4 + 1e-3·|cpu| per element; f16 relative L2 ≤ 2e-3; bf16
//! relative L2 ≤ 1e-2 (the output's own rounding is 2^-9 relative for bf16, and a different
//! summation order flips some of those roundings). Without a GPU the GPU tests print that they
//! were skipped.
//!
//! `gemm_epilogue_timing` (ignored; run on the GPU machine): device time of SD's biased
//! projections at f16, Lt with the bias epilogue vs MatMul + Add vs the bare MatMul.

#[path = "cuda_support.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use quilt_kernels::cpu::CpuExecutable;
use quilt_kernels::cuda::codegen::{self, Action};
use quilt_kernels::cuda::{CudaExecutable, DeviceTensor};
use quilt_models::random::Rng;
use quilt_rewrites::ir::{BinaryOp, GraphOutput, Node, ValueRef};
use quilt_rewrites::plan::{Buffer, BufferKind, OpStep, PlanValue, Step};
use quilt_rewrites::precision::{optimize_with_precision, Precision};
use quilt_rewrites::{DType, Graph, Op, OptimizeOptions, Plan, SymDim, Tensor, TensorData, TensorType};
use support::NonFinite;

use DType::{BF16, F16, F32, F64};

/// The C input of a Gemm case.
#[derive(Clone, Copy, Debug, PartialEq)]
enum C {
    None,
    /// `[N]`
    Bias,
    /// `[1, N]`
    Bias2d,
    /// `[M, N]`
    Full,
    /// `[M, 1]`: broadcast along rows, not a bias (cuBLAS path).
    Column,
}

#[derive(Clone, Debug)]
struct Case {
    dtype: DType,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
    c: C,
    alpha: f32,
    beta: f32,
}

impl Case {
    fn new(dtype: DType, k: usize, n: usize, c: C) -> Case {
        Case { dtype, k, n, trans_a: false, trans_b: false, c, alpha: 1.0, beta: 1.0 }
    }
    fn trans(self, trans_a: bool, trans_b: bool) -> Case {
        Case { trans_a, trans_b, ..self }
    }
    fn scaled(self, alpha: f32, beta: f32) -> Case {
        Case { alpha, beta, ..self }
    }
    fn label(&self) -> String {
        format!("{} K={} N={} trans=({}, {}) C={:?} alpha={} beta={}", self.dtype, self.k, self.n, self.trans_a, self.trans_b, self.c, self.alpha, self.beta)
    }

    /// One Gemm step; `m` is a constant or the symbol `M`.
    fn plan(&self, m: SymDim) -> Plan {
        let (k, n) = (SymDim::from(self.k), SymDim::from(self.n));
        let a = if self.trans_a { vec![k.clone(), m.clone()] } else { vec![m.clone(), k.clone()] };
        let b = if self.trans_b { vec![n.clone(), k.clone()] } else { vec![k, n.clone()] };
        let c = match self.c {
            C::None => None,
            C::Bias => Some(vec![n.clone()]),
            C::Bias2d => Some(vec![SymDim::from(1usize), n.clone()]),
            C::Full => Some(vec![m.clone(), n.clone()]),
            C::Column => Some(vec![m.clone(), SymDim::from(1usize)]),
        };
        let mut plan = Plan::default();
        if !m.is_const() {
            plan.symbols = vec!["M".into()];
        }
        let ins: Vec<Vec<SymDim>> = [Some(a), Some(b), c].into_iter().flatten().collect();
        for (i, s) in ins.iter().enumerate() {
            plan.buffers.push(Buffer { ty: TensorType::new(self.dtype, s.clone()), kind: BufferKind::Input(i) });
            plan.inputs.push(PlanValue { name: ["a", "b", "c"][i].into(), buffer: i });
        }
        let ob = ins.len();
        plan.buffers.push(Buffer { ty: TensorType::new(self.dtype, vec![m, n]), kind: BufferKind::Intermediate });
        plan.outputs.push(PlanValue { name: "y".into(), buffer: ob });
        let mut inputs: Vec<Option<usize>> = (0..ob).map(Some).collect();
        inputs.resize(3, None);
        let op = Op::Gemm { alpha: self.alpha, beta: self.beta, trans_a: self.trans_a, trans_b: self.trans_b };
        plan.steps.push(Step::Op(OpStep { node: "gemm".into(), op, inputs, outputs: vec![ob] }));
        plan
    }
}

/// N(0, 1) draws rounded to `dtype`, of each input's shape at `bind`.
fn inputs(plan: &Plan, bind: &BTreeMap<&str, i64>, seed: u64) -> Vec<Tensor> {
    plan.inputs
        .iter()
        .map(|v| {
            let ty = &plan.buffers[v.buffer].ty;
            let shape: Vec<usize> = ty.shape.iter().map(|d| d.eval(&|s| bind.get(s).copied()).unwrap() as usize).collect();
            let mut rng = Rng::for_stream(seed, &v.name);
            let vals: Vec<f64> = (0..shape.iter().product::<usize>()).map(|_| rng.normal()).collect();
            Tensor::new(shape, TensorData::from_f64(ty.dtype, &vals))
        })
        .collect()
}

/// Checks `got` against `want` with the tolerances of the module doc; `Err` says why not.
fn within_tolerance(got: &Tensor, want: &Tensor) -> Result<String, String> {
    let err = support::compare(got, want, NonFinite::Reject)?;
    if err.max_ref == 0.0 {
        return Err("the reference output is all zeros".into());
    }
    let summary = format!("max_abs {:.3e} (max |ref| {:.2}), rel L2 {:.3e}", err.max_abs, err.max_ref, err.l2_rel);
    let ok = match want.dtype() {
        F32 => got.data.to_f64_vec().iter().zip(want.data.to_f64_vec()).all(|(g, w)| (g - w).abs() <= 1e-4 + 1e-3 * w.abs()),
        F16 => err.l2_rel <= 2e-3,
        BF16 => err.l2_rel <= 1e-2,
        other => return Err(format!("no tolerance for {other}")),
    };
    if ok {
        Ok(summary)
    } else {
        Err(summary)
    }
}

/// The actions of the first step of `plan` (all dims constant), by kind.
fn action_kinds(plan: &Plan) -> Vec<String> {
    let Step::Op(s) = &plan.steps[0];
    let codegen::StepKind::Code(code) = codegen::generate(plan, s, 0).unwrap() else { panic!("no code") };
    let shape = |b: usize| -> Vec<usize> { plan.buffers[b].ty.shape.iter().map(|d| d.as_const().unwrap() as usize).collect() };
    let ins: Vec<Option<Vec<usize>>> = s.inputs.iter().map(|b| b.map(shape)).collect();
    let outs: Vec<Vec<usize>> = s.outputs.iter().map(|&b| shape(b)).collect();
    let bindings = Default::default();
    let shapes = codegen::StepShapes { ins: ins.iter().map(|v| v.as_deref()).collect(), outs: outs.iter().map(|v| v.as_slice()).collect(), bindings: &bindings };
    code.plan(&shapes)
        .unwrap()
        .actions
        .iter()
        .map(|a| match a {
            Action::Launch { .. } => "launch".into(),
            Action::Gemm(_) => "cublas".into(),
            Action::LtGemm(c) => format!("lt(bias={}, c={})", c.bias.is_some(), c.addend.is_some()),
            Action::Conv(_) => "conv".into(),
            Action::Zero { .. } => "zero".into(),
            #[allow(unreachable_patterns)]
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn lowering_chooses_cublaslt_where_it_applies() {
    let m = SymDim::from(5usize);
    let kinds = |c: Case| action_kinds(&c.plan(m.clone()));
    for dt in [F32, F16, BF16] {
        assert_eq!(kinds(Case::new(dt, 8, 6, C::Bias)), ["lt(bias=true, c=false)"], "{dt} bias");
        assert_eq!(kinds(Case::new(dt, 8, 6, C::Bias2d).trans(false, true)), ["lt(bias=true, c=false)"], "{dt} [1, N] bias, transB");
        assert_eq!(kinds(Case::new(dt, 8, 6, C::Full).scaled(0.5, 2.0)), ["lt(bias=false, c=true)"], "{dt} full C");
        // A bias row scaled by β ≠ 1 is not Lt's (unscaled) bias; a column is not a bias.
        assert_eq!(kinds(Case::new(dt, 8, 6, C::Bias).scaled(1.0, 2.0)), ["launch", "cublas"], "{dt} scaled bias");
        assert_eq!(kinds(Case::new(dt, 8, 6, C::Column)), ["launch", "cublas"], "{dt} column C");
        assert_eq!(kinds(Case::new(dt, 8, 6, C::None)), ["cublas"], "{dt} no C");
    }
    assert_eq!(kinds(Case::new(F64, 8, 6, C::Bias)), ["launch", "cublas"], "f64 bias");
    // An empty inner dimension: C alone, through the prefill kernel (cuBLAS then scales by β = 1).
    assert_eq!(kinds(Case::new(F16, 0, 6, C::Bias)), ["launch", "cublas"], "k = 0");
}

fn gemm_cases() -> Vec<Case> {
    let mut out = Vec::new();
    for dt in [F32, F16, BF16] {
        // SD's biased projections (to_out 320→320, ff/net.2 1280→320, ff/net.0 320→2560 at
        // a smaller width), odd widths (no 16-byte alignment of rows), and the time embedding's
        // transB Gemm.
        out.push(Case::new(dt, 320, 320, C::Bias));
        out.push(Case::new(dt, 1280, 320, C::Bias));
        out.push(Case::new(dt, 320, 640, C::Bias2d));
        out.push(Case::new(dt, 37, 21, C::Bias));
        out.push(Case::new(dt, 320, 1280, C::Bias).trans(false, true));
        out.push(Case::new(dt, 40, 24, C::Bias).trans(true, false).scaled(0.5, 1.0));
        out.push(Case::new(dt, 64, 48, C::Full).scaled(0.7, 0.5));
        out.push(Case::new(dt, 33, 19, C::Full).trans(true, true));
        out.push(Case::new(dt, 64, 48, C::Bias).scaled(1.0, 2.0));
        out.push(Case::new(dt, 64, 48, C::Column));
    }
    out
}

#[test]
fn gemm_epilogues_match_the_cpu_reference() {
    check_gemm_cases(false);
}

/// The same cases with `reuse_gemm_algorithms` on: M = 512 and M = 1 take the algorithm the
/// heuristic chose for M = 77 wherever cuBLASLt accepts it; results stay within tolerance and at
/// least one plan took an earlier algorithm.
#[test]
fn reused_gemm_algorithms_match_the_cpu_reference() {
    check_gemm_cases(true);
}

fn check_gemm_cases(reuse: bool) {
    let Some(device) = support::gpu_or_skip() else { return };
    let mut reused = 0;
    println!("device: {} (sm_{}{})", device.name, device.arch.0, device.arch.1);
    let mut failures = Vec::new();
    for (i, case) in gemm_cases().iter().enumerate() {
        let label = case.label();
        let plan = case.plan(SymDim::sym("M"));
        let cpu = CpuExecutable::new(plan.clone()).unwrap();
        let gpu = match CudaExecutable::with_device(plan.clone(), device.clone()) {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{label}: prepare: {e}"));
                continue;
            }
        };
        gpu.reuse_gemm_algorithms(reuse);
        // Three row counts from one prepared plan, the first again at the end.
        for (j, m) in [77i64, 512, 1, 77].into_iter().enumerate() {
            let bind = BTreeMap::from([("M", m)]);
            let ins = inputs(&plan, &bind, 1000 * i as u64 + j as u64);
            let want = &cpu.run(&ins).unwrap()[0];
            for run in ["first", "second"] {
                match gpu.run(&ins).map_err(|e| e.to_string()).and_then(|got| within_tolerance(&got[0], want)) {
                    Ok(s) if run == "first" => println!("{label:<70} M={m:<4} {s}"),
                    Ok(_) => {}
                    Err(e) => failures.push(format!("{label} M={m} ({run} run): {e}")),
                }
            }
        }
        let stats = gpu.stats();
        if stats.capture_failures > 0 {
            failures.push(format!("{label}: CUDA graph capture failed: {:?}", stats.last_capture_error));
        }
        reused += gpu.gemm_plan_stats().reused;
    }
    println!("cuBLASLt plans that took an earlier shape's algorithm: {reused}");
    if reuse && reused == 0 {
        failures.push("no cuBLASLt plan took an earlier shape's algorithm".into());
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

/// `y = MatMul(x[B, S, K], W[K, N]) + b[N]` with random weights, as an f32 graph.
fn linear_graph(k: usize, n: usize, seed: u64) -> Graph {
    let mut g = Graph::new();
    let mut rng = Rng::new(seed);
    let mut konst = |g: &mut Graph, shape: Vec<usize>| {
        let vals: Vec<f32> = (0..shape.iter().product::<usize>()).map(|_| rng.normal() as f32 * 0.1).collect();
        let t = Tensor::from_f32s(shape.clone(), vals);
        let ty = TensorType::new(F32, shape.iter().map(|&d| SymDim::from(d)).collect());
        let node = g.add_node(Node { name: format!("w{}", g.node_count()), op: Op::Constant(Arc::new(t)), inputs: vec![], outputs: vec![ty] });
        ValueRef { node, output: 0 }
    };
    let lead = [SymDim::sym("B"), SymDim::sym("S")];
    let with_last = |d: usize| TensorType::new(F32, lead.iter().cloned().chain([SymDim::from(d)]).collect());
    let x = g.add_node(Node { name: "x".into(), op: Op::Input { name: "x".into() }, inputs: vec![], outputs: vec![with_last(k)] });
    let w = konst(&mut g, vec![k, n]);
    let b = konst(&mut g, vec![n]);
    let mm = g.add_node(Node { name: "proj/MatMul".into(), op: Op::MatMul, inputs: vec![Some(ValueRef { node: x, output: 0 }), Some(w)], outputs: vec![with_last(n)] });
    let add = g.add_node(Node { name: "proj/Add".into(), op: Op::Binary(BinaryOp::Add), inputs: vec![Some(ValueRef { node: mm, output: 0 }), Some(b)], outputs: vec![with_last(n)] });
    g.outputs.push(GraphOutput { name: "y".into(), value: ValueRef { node: add, output: 0 } });
    g
}

#[test]
fn linear_layers_match_the_cpu_reference() {
    let Some(device) = support::gpu_or_skip() else { return };
    let mut failures = Vec::new();
    for (k, n) in [(320usize, 2560usize), (1280, 320), (40, 24)] {
        let graph = linear_graph(k, n, (k * n) as u64);
        let reference = CpuExecutable::new(quilt_rewrites::lower::lower(&graph).unwrap()).unwrap();
        for precision in [Precision::Model, Precision::Fp16] {
            let plan = optimize_with_precision(&graph, &OptimizeOptions::default(), precision).unwrap();
            let gemms = plan.steps.iter().filter(|s| matches!(s, Step::Op(o) if matches!(o.op, Op::Gemm { .. }))).count();
            let adds = plan.steps.iter().filter(|s| matches!(s, Step::Op(o) if matches!(o.op, Op::Binary(BinaryOp::Add)))).count();
            assert_eq!((gemms, adds), (1, 0), "K={k} N={n} {precision:?}: the linear-bias rule did not fire");
            let gpu = CudaExecutable::with_device(plan.clone(), device.clone()).unwrap();
            for (j, (b, s)) in [(2i64, 4096i64), (1, 77), (2, 4096)].into_iter().enumerate() {
                let bind = BTreeMap::from([("B", b), ("S", s)]);
                let ins = inputs(&plan, &bind, j as u64);
                let want = &reference.run(&ins).unwrap()[0];
                let label = format!("linear K={k} N={n} {precision:?} B={b} S={s}");
                let got = gpu.run(&ins).map_err(|e| e.to_string());
                // fp16 storage inside an f32 graph: the f16 tolerance, measured in f32.
                let check = |got: &Tensor| match precision {
                    Precision::Model => within_tolerance(got, want),
                    Precision::Fp16 => support::compare(got, want, NonFinite::Reject).and_then(|e| {
                        let s = format!("rel L2 {:.3e}", e.l2_rel);
                        if e.l2_rel <= 2e-3 {
                            Ok(s)
                        } else {
                            Err(s)
                        }
                    }),
                };
                match got.and_then(|g| check(&g[0])) {
                    Ok(s) => println!("{label:<60} {s}"),
                    Err(e) => failures.push(format!("{label}: {e}")),
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

/// Median device time (ms) of each step kind over `reps` profiled runs of `plan` at `bind`.
fn median_step_ms(gpu: &CudaExecutable, plan: &Plan, bind: &BTreeMap<&str, i64>, reps: usize) -> f64 {
    let ins = inputs(plan, bind, 7);
    let _ = gpu.run_profiled(&ins).unwrap();
    let mut totals: Vec<f64> = (0..reps).map(|_| gpu.run_profiled(&ins).unwrap().1.iter().map(|t| t.gpu_ms).sum()).collect();
    totals.sort_by(f64::total_cmp);
    totals[reps / 2]
}

/// Mean wall time (ms) per run of `iters` back-to-back `run_device` calls on device-resident
/// inputs (CUDA graph replays after the second run), synchronised only at the ends: while the
/// device is the bottleneck this is its time per run, launch gaps included.
fn replay_ms(gpu: &CudaExecutable, plan: &Plan, bind: &BTreeMap<&str, i64>, iters: usize) -> f64 {
    let dev = gpu.device();
    let ins = inputs(plan, bind, 7);
    let bufs: Vec<_> = ins.iter().map(|t| dev.upload(&t.data.to_le_bytes()).unwrap()).collect();
    let views: Vec<DeviceTensor> = ins.iter().zip(&bufs).map(|(t, b)| DeviceTensor { ptr: b.ptr, shape: &t.shape, dtype: t.dtype() }).collect();
    let out = dev.alloc(64 << 20).unwrap();
    let run = || gpu.run_device(&views, &mut |_, _| Ok(out.ptr), None).unwrap();
    for _ in 0..3 {
        run();
    }
    dev.synchronize().unwrap();
    let t = std::time::Instant::now();
    for _ in 0..iters {
        run();
    }
    dev.synchronize().unwrap();
    t.elapsed().as_secs_f64() * 1e3 / iters as f64
}

/// One MatMul step `[M, K] x [K, N]`, optionally followed by a bias Add step (today's plan of a
/// biased projection before the linear-bias rule).
fn matmul_plan(k: usize, n: usize, add: bool) -> Plan {
    let mut plan = Plan { symbols: vec!["M".into()], ..Default::default() };
    let ty = |s: Vec<SymDim>| TensorType::new(F16, s);
    let (m, k, n) = (SymDim::sym("M"), SymDim::from(k), SymDim::from(n));
    plan.buffers.push(Buffer { ty: ty(vec![m.clone(), k.clone()]), kind: BufferKind::Input(0) });
    plan.buffers.push(Buffer { ty: ty(vec![k, n.clone()]), kind: BufferKind::Input(1) });
    plan.buffers.push(Buffer { ty: ty(vec![n.clone()]), kind: BufferKind::Input(2) });
    plan.buffers.push(Buffer { ty: ty(vec![m.clone(), n.clone()]), kind: BufferKind::Intermediate });
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        plan.inputs.push(PlanValue { name: (*name).into(), buffer: i });
    }
    plan.steps.push(Step::Op(OpStep { node: "matmul".into(), op: Op::MatMul, inputs: vec![Some(0), Some(1)], outputs: vec![3] }));
    let mut out = 3;
    if add {
        plan.buffers.push(Buffer { ty: ty(vec![m, n]), kind: BufferKind::Intermediate });
        plan.steps.push(Step::Op(OpStep { node: "bias".into(), op: Op::Binary(BinaryOp::Add), inputs: vec![Some(3), Some(2)], outputs: vec![4] }));
        out = 4;
    }
    plan.outputs.push(PlanValue { name: "y".into(), buffer: out });
    plan
}

#[test]
#[ignore = "timing; run on the GPU machine"]
fn gemm_epilogue_timing() {
    let Some(device) = support::gpu_or_skip() else { return };
    println!("device: {} (sm_{}{}); f16, M = 8192", device.name, device.arch.0, device.arch.1);
    let bind = BTreeMap::from([("M", 8192i64)]);
    let projections = [("to_q/to_out 320→320", 320usize, 320usize), ("ff/net.0/proj 320→2560", 320, 2560), ("ff/net.2 1280→320", 1280, 320)];
    for (title, replayed) in [("median step device ms of 50 profiled runs (events around each step, synchronised: host launch time included)", false), ("ms per run, 200 graph replays back to back (run_device, device-resident inputs)", true)] {
        println!("{title}");
        println!("{:<34} {:>10} {:>14} {:>12} {:>14}", "projection [M,K]x[K,N]+b", "Lt bias", "MatMul + Add", "MatMul only", "prefill+cuBLAS");
        for (name, k, n) in projections {
            let time = |plan: Plan| {
                let gpu = CudaExecutable::with_device(plan.clone(), device.clone()).unwrap();
                if replayed {
                    replay_ms(&gpu, &plan, &bind, 200)
                } else {
                    median_step_ms(&gpu, &plan, &bind, 50)
                }
            };
            let lt = time(Case::new(F16, k, n, C::Bias).plan(SymDim::sym("M")));
            let two = time(matmul_plan(k, n, true));
            let one = time(matmul_plan(k, n, false));
            // β = 2 keeps the cuBLAS path: the prefill kernel, then cuBLAS with β = 1.
            let prefill = time(Case::new(F16, k, n, C::Bias).scaled(1.0, 2.0).plan(SymDim::sym("M")));
            println!("{:<34} {lt:>10.4} {two:>14.4} {one:>12.4} {prefill:>14.4}", format!("{name} M=8192"));
        }
    }
}

/// `plan` (one Gemm step) with a residual: plan input "r" of the output's type as the step's
/// input 3 (what `quilt_rewrites::epilogue` makes of `Gemm(..) + r`).
fn with_residual(mut plan: Plan) -> Plan {
    let Step::Op(s) = &plan.steps[0];
    let ty = plan.buffers[s.outputs[0]].ty.clone();
    plan.buffers.push(Buffer { ty, kind: BufferKind::Input(plan.inputs.len()) });
    let r = plan.buffers.len() - 1;
    plan.inputs.push(PlanValue { name: "r".into(), buffer: r });
    let Step::Op(s) = &mut plan.steps[0];
    s.inputs.resize(3, None);
    s.inputs.push(Some(r));
    plan
}

/// Residual Gemms: without C and with a bias row they are one cuBLASLt call (bias epilogue, R as
/// Lt's C with β = 1); with a full C (not what the pass makes, but legal) the prefill kernel
/// writes β·C + R and cuBLAS accumulates. Each against the CPU reference at four row counts from
/// one plan, each run twice (the second a CUDA graph replay), tolerances of the module doc.
#[test]
fn residual_gemms_match_the_cpu_reference() {
    let m5 = SymDim::from(5usize);
    for dt in [F32, F16, BF16] {
        let kinds = |c: Case| action_kinds(&with_residual(c.plan(m5.clone())));
        assert_eq!(kinds(Case::new(dt, 8, 6, C::None)), ["lt(bias=false, c=true)"], "{dt} no C");
        assert_eq!(kinds(Case::new(dt, 8, 6, C::Bias)), ["lt(bias=true, c=true)"], "{dt} bias");
        assert_eq!(kinds(Case::new(dt, 8, 6, C::Bias2d).trans(false, true)), ["lt(bias=true, c=true)"], "{dt} [1, N] bias");
        assert_eq!(kinds(Case::new(dt, 8, 6, C::Full).scaled(1.0, 0.5)), ["launch", "cublas"], "{dt} full C");
    }
    assert_eq!(action_kinds(&with_residual(Case::new(F64, 8, 6, C::None).plan(m5.clone()))), ["launch", "cublas"], "f64");
    let Some(device) = support::gpu_or_skip() else { return };
    let mut failures = Vec::new();
    let mut cases = Vec::new();
    for dt in [F32, F16, BF16] {
        // SD's to_out (320→320) and ff/net.2 (1280→320) with their bias, a bare one, odd widths.
        cases.push(Case::new(dt, 320, 320, C::Bias));
        cases.push(Case::new(dt, 1280, 320, C::Bias));
        cases.push(Case::new(dt, 37, 21, C::Bias2d));
        cases.push(Case::new(dt, 64, 48, C::None).scaled(0.5, 1.0));
        cases.push(Case::new(dt, 33, 19, C::Full).scaled(1.0, 0.5));
    }
    for (i, case) in cases.iter().enumerate() {
        let label = format!("{} + R", case.label());
        let plan = with_residual(case.plan(SymDim::sym("M")));
        let cpu = CpuExecutable::new(plan.clone()).unwrap();
        let gpu = match CudaExecutable::with_device(plan.clone(), device.clone()) {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{label}: prepare: {e}"));
                continue;
            }
        };
        for (j, m) in [77i64, 512, 1, 77].into_iter().enumerate() {
            let bind = BTreeMap::from([("M", m)]);
            let ins = inputs(&plan, &bind, 7000 + 100 * i as u64 + j as u64);
            let want = &cpu.run(&ins).unwrap()[0];
            for run in ["first", "second"] {
                match gpu.run(&ins).map_err(|e| e.to_string()).and_then(|got| within_tolerance(&got[0], want)) {
                    Ok(s) if run == "first" => println!("{label:<76} M={m:<4} {s}"),
                    Ok(_) => {}
                    Err(e) => failures.push(format!("{label} M={m} ({run} run): {e}")),
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}
