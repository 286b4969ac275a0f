//! `precision=fp16` (`quilt_rewrites::precision`) on the CPU backend.
//!
//! - Every fixture: the fp16 plan against the f32 plan (both optimized) on the same seeded
//!   random inputs (`support::random_inputs`: N(0, 1), or uniform in the manifest's range) at
//!   every manifest shape. Tolerance: relative L2 error ≤ 5e-3 per output.
//!   Why: storing a value in f16 has a relative error ≤ 2⁻¹¹ ≈ 4.9e-4 (RMS ≈ 2.8e-4); a value
//!   passes through up to ~60 stored ops (convs, norms, attention, residual adds) in these
//!   fixtures and independent rounding errors add in quadrature, so √60 · 4.9e-4 ≈ 3.8e-3
//!   bounds the expected error. Measured (the test prints it): 4.1e-4 (XLM-R) to 1.6e-3
//!   (UNet). Without rule 4 (the timestep's `t·freq` in f16) the UNet fixture reaches 1.1e-2,
//!   so the tolerance separates the two.
//!   The plans' boundary is checked too: inputs and outputs keep f32, the weights shrink to
//!   about half.
//! - The timestep embedding (`sin`/`cos` of `t · freq`, t = 999): the fp16 plan matches the f64
//!   truth to 1e-3 (its f32 products, only the stored sines rounded to f16: ≤ 2.5e-4), while a
//!   naive all-f16 graph of the same math misses by more than 0.1 (t·freq rounded to f16's 0.5
//!   spacing above 512).
//! - The range guard: logsumexp of values around 12 overflows f16 in `Exp` (e¹² > 65504); the
//!   fp16 plan keeps that chain in f32 and matches f64 to one f16 rounding (5e-4 relative), a
//!   naive f16 graph returns inf.
//! - A `(1 − mask) · finfo(f32).min` attention mask: the constant saturates to −65504, so the
//!   fp16 plan's softmax matches f32 (no `0 · −inf = NaN`).

#[path = "cuda_support.rs"]
mod support;

use std::sync::Arc;

use quilt_kernels::cpu::CpuExecutable;
use quilt_models::random::Rng;
use quilt_rewrites::ir::{BinaryOp, Node, ReduceKind, UnaryOp, ValueRef};
use quilt_rewrites::lower::lower;
use quilt_rewrites::plan::{BufferKind, Step};
use quilt_rewrites::precision::{optimize_with_precision, to_fp16, to_fp16_with_report, Precision};
use quilt_rewrites::{DType, Graph, Op, OptimizeOptions, Plan, SymDim, Tensor, TensorData, TensorType};

/// Per output: relative L2 error (‖fp16 − f32‖ / ‖f32‖) allowed. Derivation in the module doc.
const REL_L2_TOL: f64 = 5e-3;

/// Uniform in [-1, 1).
fn signed(rng: &mut Rng) -> f64 {
    2.0 * rng.uniform() - 1.0
}

fn weight_bytes(plan: &Plan) -> usize {
    plan.buffers
        .iter()
        .map(|b| match &b.kind {
            BufferKind::Weight(t) => t.numel() * t.dtype().size_bytes(),
            _ => 0,
        })
        .sum()
}

fn rel_l2(got: &[f64], want: &[f64]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum();
    let den: f64 = want.iter().map(|b| b * b).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

#[test]
fn fp16_plans_match_f32_plans_on_every_fixture() {
    let m = support::manifest();
    let mut checked = 0;
    let mut worst_overall = 0f64;
    for entry in &m.models {
        let graph = support::imported_graph(&m.model_path(entry), true);
        let opts = OptimizeOptions::default();
        let f32_plan = optimize_with_precision(&graph, &opts, Precision::Model).unwrap_or_else(|e| panic!("{}: {e}", entry.name));
        let f16_plan = optimize_with_precision(&graph, &opts, Precision::Fp16).unwrap_or_else(|e| panic!("{}: fp16: {e}", entry.name));

        // The boundary keeps the model's dtypes; the weights are converted.
        for (a, b) in f32_plan.inputs.iter().zip(&f16_plan.inputs) {
            assert_eq!(a.name, b.name, "{}: input order", entry.name);
            assert_eq!(f16_plan.buffers[b.buffer].ty.dtype, f32_plan.buffers[a.buffer].ty.dtype, "{}: input {} dtype", entry.name, a.name);
        }
        for (a, b) in f32_plan.outputs.iter().zip(&f16_plan.outputs) {
            assert_eq!(f16_plan.buffers[b.buffer].ty.dtype, f32_plan.buffers[a.buffer].ty.dtype, "{}: output {} dtype", entry.name, a.name);
        }
        let (w32, w16) = (weight_bytes(&f32_plan), weight_bytes(&f16_plan));
        assert!(w16 * 100 <= w32 * 55, "{}: fp16 weights {w16} bytes vs f32 {w32}: not converted", entry.name);
        let f16_steps = f16_plan
            .steps
            .iter()
            .filter(|s| {
                let Step::Op(s) = s;
                s.outputs.iter().any(|&b| f16_plan.buffers[b].ty.dtype == DType::F16)
            })
            .count();
        assert!(f16_steps * 2 > f16_plan.steps.len(), "{}: only {f16_steps} of {} steps write f16", entry.name, f16_plan.steps.len());

        let f32_exe = CpuExecutable::new(f32_plan).unwrap_or_else(|e| panic!("{}: {e}", entry.name));
        let f16_exe = CpuExecutable::new(f16_plan).unwrap_or_else(|e| panic!("{}: fp16: {e}", entry.name));
        checked += support::run_plan_pair(entry, &f32_exe, &f16_exe, ["f32", "fp16"], 0x243F_6A88, |dims, name, g, w| {
            assert_eq!(g.shape, w.shape, "{} {dims:?} output {name}", entry.name);
            assert_eq!(g.dtype(), w.dtype(), "{} {dims:?} output {name}", entry.name);
            let (gv, wv) = (g.data.to_f64_vec(), w.data.to_f64_vec());
            assert!(gv.iter().all(|x| x.is_finite()), "{} {dims:?} output {name}: non-finite values in fp16", entry.name);
            let err = rel_l2(&gv, &wv);
            let max_abs = gv.iter().zip(&wv).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            let max_ref = wv.iter().map(|b| b.abs()).fold(0.0, f64::max);
            println!("{:<24} {dims:?} {name:<16} rel L2 {err:.2e}  max abs {max_abs:.2e} (max |f32| {max_ref:.2e})", entry.name);
            assert!(err <= REL_L2_TOL, "{} {dims:?} output {name}: fp16 vs f32 relative L2 error {err:.3e} > {REL_L2_TOL:e}", entry.name);
            worst_overall = worst_overall.max(err);
        });
    }
    println!("worst relative L2 error over all fixtures: {worst_overall:.3e}");
    assert!(checked >= 2 * 6, "only {checked} model/shape pairs were checked");
}

/// The UNet fixture's timestep embedding keeps f32 into its Sin/Cos (rule 4), seen in the plan.
#[test]
fn unet_fixture_keeps_its_timestep_angles_in_f32() {
    let m = support::manifest();
    let entry = m.models.iter().find(|e| e.name == "unet").expect("unet fixture");
    let graph = support::imported_graph(&m.model_path(entry), true);
    // The graph the pass sees in `optimize_with_precision`: extracted, not yet stitched.
    let optimized = quilt_rewrites::optimize_graph(&graph, &OptimizeOptions { stitch: false, ..Default::default() }).unwrap().graph;
    let (fp16, report) = to_fp16_with_report(&optimized).unwrap();
    let plan = lower(&fp16).unwrap();
    let mut angles = 0;
    for s in &plan.steps {
        let Step::Op(s) = s;
        if matches!(s.op, Op::Unary(UnaryOp::Sin | UnaryOp::Cos)) {
            let input = s.inputs[0].unwrap();
            assert_eq!(plan.buffers[input].ty.dtype, DType::F32, "{}: Sin/Cos reads {}", s.node, plan.buffers[input].ty);
            angles += 1;
        }
    }
    assert_eq!(angles, 2, "the UNet fixture has one Sin and one Cos");
    assert!(report.kept_f32.iter().any(|k| k.op == "Mul" && k.node.contains("time_proj")), "t·freq kept in f32:\n{report}");
    // Rule 4 keeps only the embedding's few ops; everything else is f16.
    assert!(report.kept_f32.len() <= 8, "too much kept in f32:\n{report}");
    assert!(report.f16_nodes > 100, "{report}");
}

// ---- hand-built graphs ----

fn dims(shape: &[i64]) -> Vec<SymDim> {
    shape.iter().map(|&d| SymDim::from(d)).collect()
}

fn add(g: &mut Graph, name: &str, op: Op, inputs: &[ValueRef], dtype: DType, shape: &[i64]) -> ValueRef {
    let node = g.add_node(Node {
        name: name.into(),
        op,
        inputs: inputs.iter().map(|&v| Some(v)).collect(),
        outputs: vec![TensorType::new(dtype, dims(shape))],
    });
    ValueRef { node, output: 0 }
}

fn konst(g: &mut Graph, name: &str, shape: &[i64], data: TensorData) -> ValueRef {
    let (dtype, s) = (data.dtype(), shape.iter().map(|&d| d as usize).collect());
    add(g, name, Op::Constant(Arc::new(Tensor::new(s, data))), &[], dtype, shape)
}

fn output(g: &mut Graph, name: &str, v: ValueRef) {
    g.outputs.push(quilt_rewrites::ir::GraphOutput { name: name.into(), value: v });
}

fn run(g: &Graph, inputs: &[Tensor]) -> Vec<f64> {
    let exe = CpuExecutable::new(lower(g).unwrap()).unwrap();
    exe.run(inputs).unwrap().remove(0).data.to_f64_vec()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| if x.is_finite() && y.is_finite() { (x - y).abs() } else { f64::INFINITY }).fold(0.0, f64::max)
}

const HALF: usize = 160; // SD 1.5: 320 channels, sin and cos halves

/// diffusers' `Timesteps` frequencies: exp(−ln(10000)·i/half), as the f32 constant the export has.
fn frequencies() -> Vec<f32> {
    (0..HALF).map(|i| (-(10000f64.ln()) * i as f64 / HALF as f64).exp() as f32).collect()
}

/// `concat(sin(t·freq), cos(t·freq))` for t of shape [B], in `dtype` from the Reshape on (the
/// input is f32; a Cast follows it when `dtype` is f16, as a naive conversion would do).
fn timestep_embedding(dtype: DType) -> Graph {
    let mut g = Graph::new();
    let b = 2;
    let mut t = add(&mut g, "timestep", Op::Input { name: "timestep".into() }, &[], DType::F32, &[b]);
    if dtype == DType::F16 {
        t = add(&mut g, "naive/to_f16", Op::Cast { to: DType::F16 }, &[t], DType::F16, &[b]);
    }
    let t = add(&mut g, "time_proj/Unsqueeze", Op::Reshape, &[t], dtype, &[b, 1]);
    let freq = TensorData::from_f64(dtype, &frequencies().iter().map(|&f| f as f64).collect::<Vec<_>>());
    let freq = konst(&mut g, "time_proj/freq", &[1, HALF as i64], freq);
    let arg = add(&mut g, "time_proj/Mul", Op::Binary(BinaryOp::Mul), &[t, freq], dtype, &[b, HALF as i64]);
    let sin = add(&mut g, "time_proj/Sin", Op::Unary(UnaryOp::Sin), &[arg], dtype, &[b, HALF as i64]);
    let cos = add(&mut g, "time_proj/Cos", Op::Unary(UnaryOp::Cos), &[arg], dtype, &[b, HALF as i64]);
    let mut emb = add(&mut g, "time_proj/Concat", Op::Concat { axis: 1 }, &[cos, sin], dtype, &[b, 2 * HALF as i64]);
    if dtype == DType::F16 {
        emb = add(&mut g, "naive/to_f32", Op::Cast { to: DType::F32 }, &[emb], DType::F32, &[b, 2 * HALF as i64]);
    }
    output(&mut g, "emb", emb);
    g
}

#[test]
fn timestep_embedding_at_t_999_stays_accurate_where_naive_f16_does_not() {
    let ts = [999.0f32, 1.0];
    let input = [Tensor::from_f32s(vec![2], ts.to_vec())];
    // The truth: f64 sines of the f32 products the model computes.
    let freq = frequencies();
    let truth: Vec<f64> = ts
        .iter()
        .flat_map(|&t| {
            let args: Vec<f64> = freq.iter().map(|&f| (t * f) as f64).collect();
            args.iter().map(|a| a.cos()).chain(args.iter().map(|a| a.sin())).collect::<Vec<_>>()
        })
        .collect();

    let f32_graph = timestep_embedding(DType::F32);
    let (fp16_graph, report) = to_fp16_with_report(&f32_graph).unwrap();
    let f32_out = run(&f32_graph, &input);
    let fp16_out = run(&fp16_graph, &input);
    let naive_out = run(&timestep_embedding(DType::F16), &input);

    let (e32, e16, naive) = (max_abs_diff(&f32_out, &truth), max_abs_diff(&fp16_out, &truth), max_abs_diff(&naive_out, &truth));
    println!("max abs error vs f64: f32 plan {e32:.2e}, fp16 plan {e16:.2e}, naive f16 {naive:.2e}");
    assert!(e32 <= 1e-5, "f32 plan {e32:e}");
    assert!(max_abs_diff(&fp16_out, &f32_out) <= 1e-3, "fp16 plan vs f32 plan: {:e}", max_abs_diff(&fp16_out, &f32_out));
    assert!(e16 <= 1e-3, "fp16 plan vs f64: {e16:e}\n{report}");
    assert!(naive > 0.1, "the naive f16 graph should lose the angle at t = 999, error only {naive:e}");
    // The pass kept the angle math in f32 and still stored the embedding in f16.
    let kept: Vec<&str> = report.kept_f32.iter().map(|k| k.node.as_str()).collect();
    for n in ["time_proj/Unsqueeze", "time_proj/Mul", "time_proj/Sin", "time_proj/Cos"] {
        assert!(kept.contains(&n), "{n} not kept in f32:\n{report}");
    }
    assert!(!kept.contains(&"time_proj/Concat"), "{report}");
    assert_eq!(report.f16_nodes, 1, "{report}");
}

/// logsumexp over the last axis: Log(ReduceSum(Exp(x))).
fn logsumexp(dtype: DType, rows: i64, cols: i64) -> Graph {
    let mut g = Graph::new();
    let mut x = add(&mut g, "x", Op::Input { name: "x".into() }, &[], DType::F32, &[rows, cols]);
    if dtype == DType::F16 {
        x = add(&mut g, "naive/to_f16", Op::Cast { to: DType::F16 }, &[x], DType::F16, &[rows, cols]);
    }
    let e = add(&mut g, "Exp", Op::Unary(UnaryOp::Exp), &[x], dtype, &[rows, cols]);
    let s = add(&mut g, "ReduceSum", Op::Reduce { kind: ReduceKind::Sum, axes: vec![1], keepdims: false }, &[e], dtype, &[rows]);
    let mut l = add(&mut g, "Log", Op::Unary(UnaryOp::Log), &[s], dtype, &[rows]);
    let y = konst(&mut g, "scale", &[1], TensorData::from_f64(dtype, &[0.5]));
    l = add(&mut g, "Mul", Op::Binary(BinaryOp::Mul), &[l, y], dtype, &[rows]);
    if dtype == DType::F16 {
        l = add(&mut g, "naive/to_f32", Op::Cast { to: DType::F32 }, &[l], DType::F32, &[rows]);
    }
    output(&mut g, "y", l);
    g
}

#[test]
fn range_guard_keeps_exp_chains_in_f32() {
    let (rows, cols) = (3usize, 16usize);
    let mut rng = Rng::new(7);
    let x: Vec<f32> = (0..rows * cols).map(|_| (12.0 + signed(&mut rng)) as f32).collect();
    let truth: Vec<f64> = x.chunks(cols).map(|r| 0.5 * r.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln()).collect();
    let input = [Tensor::from_f32s(vec![rows, cols], x)];

    let (fp16_graph, report) = to_fp16_with_report(&logsumexp(DType::F32, rows as i64, cols as i64)).unwrap();
    let got = run(&fp16_graph, &input);
    let naive = run(&logsumexp(DType::F16, rows as i64, cols as i64), &input);
    let rel = got.iter().zip(&truth).map(|(a, b)| ((a - b) / b).abs()).fold(0.0, f64::max);
    println!("logsumexp: fp16 plan max rel error {rel:.2e}; naive f16 {naive:?}");
    // Only the final Mul's result is stored in f16: one rounding, ≤ 2⁻¹¹ ≈ 4.9e-4 relative.
    assert!(rel <= 5e-4, "fp16 plan: max rel error {rel:e}\n{report}");
    assert!(naive.iter().all(|v| v.is_infinite()), "naive f16 should overflow in Exp: {naive:?}");
    let kept: Vec<&str> = report.kept_f32.iter().map(|k| k.node.as_str()).collect();
    assert_eq!(kept, ["Exp", "ReduceSum", "Log"], "{report}");
    // Log restores the range: the Mul after it runs in f16 and the output is cast back.
    assert_eq!(report.f16_nodes, 1, "{report}");
    assert_eq!(report.casts, 2, "{report}");
}

/// `softmax(scores + (1 − m) · finfo(f32).min)` (BERT/XLM-R's extended attention mask).
fn masked_softmax(n: i64) -> Graph {
    let mut g = Graph::new();
    let s = add(&mut g, "scores", Op::Input { name: "scores".into() }, &[], DType::F32, &[n, n]);
    let m = add(&mut g, "mask", Op::Input { name: "mask".into() }, &[], DType::F32, &[1, n]);
    let one = konst(&mut g, "one", &[], TensorData::F32(vec![1.0]));
    let min = konst(&mut g, "min", &[], TensorData::F32(vec![f32::MIN]));
    let inv = add(&mut g, "Sub", Op::Binary(BinaryOp::Sub), &[one, m], DType::F32, &[1, n]);
    let bias = add(&mut g, "Mul", Op::Binary(BinaryOp::Mul), &[inv, min], DType::F32, &[1, n]);
    let x = add(&mut g, "Add", Op::Binary(BinaryOp::Add), &[s, bias], DType::F32, &[n, n]);
    let p = add(&mut g, "Softmax", Op::Softmax { axis: 1 }, &[x], DType::F32, &[n, n]);
    output(&mut g, "p", p);
    g
}

#[test]
fn f32_min_mask_saturates_instead_of_making_nan() {
    let n = 6usize;
    let mut rng = Rng::new(11);
    let scores: Vec<f32> = (0..n * n).map(|_| 3.0 * signed(&mut rng) as f32).collect();
    let mask: Vec<f32> = (0..n).map(|j| if j < 4 { 1.0 } else { 0.0 }).collect();
    let inputs = [Tensor::from_f32s(vec![n, n], scores), Tensor::from_f32s(vec![1, n], mask)];
    let g = masked_softmax(n as i64);
    let want = run(&g, &inputs);
    let (fp16, report) = to_fp16_with_report(&g).unwrap();
    let got = run(&fp16, &inputs);
    assert!(got.iter().all(|v| v.is_finite()), "fp16 softmax has NaN/inf: {got:?}");
    let err = max_abs_diff(&got, &want);
    // Probabilities in [0, 1] stored in f16 (≤ 2.4e-4) from f16 scores (each ≤ 3·2⁻¹¹ off).
    assert!(err <= 2e-3, "fp16 vs f32 masked softmax: {err:e}");
    assert_eq!(report.saturated, 1, "{report}");
    assert_eq!(report.f16_nodes, 4, "{report}");
    // The masked columns are exactly zero, as in f32.
    for r in 0..n {
        assert_eq!(&got[r * n + 4..r * n + 6], &[0.0, 0.0], "row {r}");
    }
}

/// Weights are converted once, round to nearest even (also in the multi-threaded path of large
/// tensors), finite values beyond ±65504 saturate, tiny ones flush to zero and are counted.
#[test]
fn constants_round_saturate_and_flush() {
    let n = 3 << 20; // over the converter's 1M-element chunk: the threaded path
    let mut rng = Rng::new(5);
    let mut big: Vec<f32> = (0..n).map(|_| (signed(&mut rng) * 4.0) as f32).collect();
    big[17] = 1e-9; // flushes
    big[n - 3] = 7.0e4; // saturates
    big[n / 2] = -f32::MAX; // saturates
    big[n / 3] = f32::NEG_INFINITY; // stays
    let mut g = Graph::new();
    let x = add(&mut g, "x", Op::Input { name: "x".into() }, &[], DType::F32, &[n as i64]);
    let w = konst(&mut g, "w", &[n as i64], TensorData::F32(big.clone()));
    let y = add(&mut g, "Mul", Op::Binary(BinaryOp::Mul), &[x, w], DType::F32, &[n as i64]);
    output(&mut g, "y", y);
    let (out, report) = to_fp16_with_report(&g).unwrap();
    assert_eq!((report.converted_constants, report.saturated, report.flushed_to_zero), (1, 2, 1), "{report}");
    assert_eq!((report.constant_bytes_f32, report.constant_bytes_f16), (4 * n, 2 * n));
    let converted = out
        .node_indices()
        .find_map(|ix| match &out.node(ix).op {
            Op::Constant(t) => Some(t.data.to_f64_vec()),
            _ => None,
        })
        .expect("the converted weight");
    assert_eq!(out.node_indices().filter(|&ix| matches!(out.node(ix).op, Op::Constant(_))).count(), 1, "the f32 weight is gone");
    let want = TensorData::from_f64(DType::F16, &big.iter().map(|&v| if v.is_finite() { (v as f64).clamp(-65504.0, 65504.0) } else { v as f64 }).collect::<Vec<_>>()).to_f64_vec();
    assert_eq!(converted.len(), n);
    let mismatches = converted.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert_eq!(mismatches, 0, "f16 conversion differs from round-to-nearest in {mismatches} elements");
    assert_eq!((converted[17], converted[n - 3], converted[n / 2], converted[n / 3]), (0.0, 65504.0, -65504.0, f64::NEG_INFINITY));
}

#[test]
fn precision_option_values() {
    assert_eq!("fp16".parse::<Precision>().unwrap(), Precision::Fp16);
    assert_eq!("model".parse::<Precision>().unwrap(), Precision::Model);
    assert_eq!(Precision::default(), Precision::Model);
    let err = "half".parse::<Precision>().unwrap_err();
    assert!(err.contains("'half'") && err.contains("fp16"), "{err}");
    // An f16 model's graph is left alone apart from nothing to do: no f32 → no change.
    let mut g = Graph::new();
    let x = add(&mut g, "x", Op::Input { name: "x".into() }, &[], DType::F16, &[4]);
    let y = add(&mut g, "Sigmoid", Op::Unary(UnaryOp::Sigmoid), &[x], DType::F16, &[4]);
    output(&mut g, "y", y);
    let out = to_fp16(&g).unwrap();
    assert_eq!(out.node_count(), 2);
    assert_eq!(out.value_type(out.outputs[0].value).dtype, DType::F16);
}
