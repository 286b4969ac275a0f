//! Residual epilogues (`quilt_rewrites::epilogue`) on the CPU backend.
//!
//! - Every fixture, NCHW and channels-last: the plan optimized with the pass against the plan
//!   without it, on the same seeded random inputs at every manifest shape, from one compiled
//!   plan each. The fused step adds the residual to its f32 result and rounds once, the unfused
//!   plan rounds the product and then the sum (or sums in another region order), so outputs agree
//!   to float rounding: max abs difference ≤ 1e-4 × max |output|. The fused steps' outputs never
//!   share a memory slot with their residuals.
//! - The pass on small graphs with random weights and symbolic batch: a linear layer
//!   (`Reshape(Gemm(Reshape(x), W, b)) + r`) and a channels-last ResNet tail
//!   (`conv(h) + conv_shortcut(x)`) fuse and agree with the unfused graph at two batch sizes in
//!   f32 and f16; Adds that must stay (broadcast operand, second reader, graph output,
//!   `y + y`, a Gemm with a full C, an NCHW convolution) stay.
//! - The full-size SD 1.5 UNet and VAE decoder graphs (channels-last): how many residual Adds fold,
//!   and the step counts with and without the pass (printed; lower bounds asserted).

#[path = "cuda_support.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use quilt_kernels::cpu::CpuExecutable;
use quilt_models::random::Rng;
use quilt_rewrites::epilogue::{fuse_residuals, EpilogueReport, EpilogueTargets};
use quilt_rewrites::ir::graph::{GraphOutput, Node, ValueRef};
use quilt_rewrites::ir::BinaryOp;
use quilt_rewrites::layout::LayoutOptions;
use quilt_rewrites::lower::lower;
use quilt_rewrites::optimize::optimize_graph;
use quilt_rewrites::plan::Step;
use quilt_rewrites::precision::{optimize_with_precision, Precision};
use quilt_rewrites::{DType, Graph, Op, OptimizeOptions, Plan, SymDim, Tensor, TensorData, TensorType};

fn options(channels_last: bool, residual_epilogues: bool) -> OptimizeOptions {
    targeted(channels_last, if residual_epilogues { EpilogueTargets::ALL } else { EpilogueTargets::NONE })
}

fn targeted(channels_last: bool, residual_epilogues: EpilogueTargets) -> OptimizeOptions {
    OptimizeOptions { channels_last: channels_last.then(LayoutOptions::default), residual_epilogues, ..OptimizeOptions::default() }
}

/// Steps of `plan` that carry a residual input, as (conv, gemm) counts.
fn fused_steps(plan: &Plan) -> (usize, usize) {
    let mut n = (0, 0);
    for Step::Op(s) in &plan.steps {
        if s.inputs.get(3).copied().flatten().is_some() {
            match s.op {
                Op::Conv { .. } => n.0 += 1,
                Op::Gemm { .. } => n.1 += 1,
                _ => {}
            }
        }
    }
    n
}

/// Steps that launch something: every step (a Reshape is a view buffer, not a step).
fn launch_steps(plan: &Plan) -> usize {
    plan.steps.len()
}

/// No fused step writes its output into the memory slot of its residual.
fn assert_no_residual_alias(plan: &Plan, what: &str) {
    for (i, Step::Op(s)) in plan.steps.iter().enumerate() {
        if let Some(r) = s.inputs.get(3).copied().flatten() {
            let (so, sr) = (plan.memory.slot_of[s.outputs[0]], plan.memory.slot_of[r]);
            assert!(so.is_none() || so != sr, "{what}: step {i} ({}) writes its output into its residual's slot {so:?}", s.node);
        }
    }
}

#[test]
fn fused_plans_match_unfused_plans_on_every_fixture() {
    let m = support::manifest();
    let mut checked = 0;
    let (mut convs, mut gemms) = (0, 0);
    for entry in &m.models {
        let graph = support::imported_graph(&m.model_path(entry), true);
        for channels_last in [false, true] {
            let label = format!("{} ({})", entry.name, if channels_last { "channels-last" } else { "nchw" });
            let plain = optimize_with_precision(&graph, &options(channels_last, false), Precision::Model).unwrap_or_else(|e| panic!("{label}: {e}"));
            let fused = optimize_with_precision(&graph, &options(channels_last, true), Precision::Model).unwrap_or_else(|e| panic!("{label}: fused: {e}"));
            assert_eq!(fused_steps(&plain), (0, 0), "{label}: residual inputs without the pass");
            let (c, g) = fused_steps(&fused);
            assert!(channels_last || c == 0, "{label}: an NCHW convolution took a residual");
            assert_no_residual_alias(&fused, &label);
            println!("{label}: {} launch steps without the pass, {} with ({c} conv, {g} gemm residuals)", launch_steps(&plain), launch_steps(&fused));
            assert!(launch_steps(&fused) <= launch_steps(&plain), "{label}: the pass added launches");
            convs += c;
            gemms += g;
            if c + g == 0 {
                continue;
            }
            let a = CpuExecutable::new(plain).unwrap_or_else(|e| panic!("{label}: {e}"));
            let b = CpuExecutable::new(fused).unwrap_or_else(|e| panic!("{label}: fused: {e}"));
            checked += support::run_plan_pair(entry, &a, &b, ["unfused", "fused"], 0x5EED_E911, |dims, name, got, want| {
                assert_eq!(got.shape, want.shape, "{label} {dims:?} output {name}");
                let (g, w) = (got.data.to_f64_vec(), want.data.to_f64_vec());
                let max_abs = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                let max_ref = w.iter().map(|b| b.abs()).fold(0.0, f64::max);
                println!("  {dims:?} {name:<16} max abs {max_abs:.2e} (max |ref| {max_ref:.2e})");
                assert!(max_abs <= 1e-4 * max_ref.max(1.0), "{label} {dims:?} output {name}: fused vs unfused max abs {max_abs:.3e}");
            });
        }
    }
    // The UNet and VAE fixtures have ResNet blocks and transformer blocks.
    assert!(convs >= 4 && gemms >= 2, "only {convs} conv and {gemms} gemm residuals over all fixtures");
    assert!(checked >= 4, "only {checked} model/shape pairs were checked");
}

/// A small graph under construction, f32 or f16, with symbolic batch `B`.
struct Builder {
    g: Graph,
    rng: Rng,
    dtype: DType,
}

/// "4", "B" or "6*B".
fn dims(v: &[&str]) -> Vec<SymDim> {
    let one = |d: &str| d.parse::<i64>().map(SymDim::konst).unwrap_or_else(|_| SymDim::sym(d));
    v.iter().map(|d| d.split('*').map(one).product()).collect()
}

impl Builder {
    fn new(dtype: DType, seed: u64) -> Builder {
        Builder { g: Graph::new(), rng: Rng::new(seed), dtype }
    }

    fn add(&mut self, name: &str, op: Op, inputs: &[Option<ValueRef>], shape: &[&str]) -> ValueRef {
        let ix = self.g.add_node(Node { name: name.into(), op, inputs: inputs.to_vec(), outputs: vec![TensorType::new(self.dtype, dims(shape))] });
        ValueRef { node: ix, output: 0 }
    }

    fn input(&mut self, name: &str, shape: &[&str]) -> ValueRef {
        self.add(name, Op::Input { name: name.into() }, &[], shape)
    }

    /// A random weight with entries of about `scale`.
    fn weight(&mut self, name: &str, shape: &[usize], scale: f64) -> ValueRef {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| self.rng.normal() * scale).collect();
        let data = TensorData::from_f64(self.dtype, &v);
        let shape_s: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let shape_r: Vec<&str> = shape_s.iter().map(|s| s.as_str()).collect();
        self.add(name, Op::Constant(Arc::new(Tensor::new(shape.to_vec(), data))), &[], &shape_r)
    }

    fn output(&mut self, name: &str, v: ValueRef) {
        self.g.outputs.push(GraphOutput { name: name.into(), value: v });
    }

    fn random_inputs(&mut self, plan: &Plan, batch: usize) -> Vec<Tensor> {
        plan.inputs
            .iter()
            .map(|v| {
                let shape: Vec<usize> = plan.buffers[v.buffer].ty.shape.iter().map(|d| d.eval_with(&BTreeMap::from([("B".to_string(), batch as i64)])).unwrap() as usize).collect();
                let n: usize = shape.iter().product();
                let vals: Vec<f64> = (0..n).map(|_| self.rng.normal()).collect();
                Tensor::new(shape, TensorData::from_f64(self.dtype, &vals))
            })
            .collect()
    }
}

const ADD: Op = Op::Binary(BinaryOp::Add);

fn conv_op(channels_last: bool) -> Op {
    Op::Conv { strides: vec![1, 1], pads: vec![1, 1, 1, 1], dilations: vec![1, 1], group: 1, channels_last }
}

fn gemm_op() -> Op {
    Op::Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: false }
}

/// A transformer block's `to_out(a) + h`: x [B, 6, 8] → Reshape [6B, 8] → Gemm(W [8, 12], b [12])
/// → Reshape [B, 6, 12] → + h [B, 6, 12], then a Relu (so the sum is no graph output).
fn linear_residual(dtype: DType, seed: u64) -> Builder {
    let mut b = Builder::new(dtype, seed);
    let x = b.input("x", &["B", "6", "8"]);
    let h = b.input("h", &["B", "6", "12"]);
    let w = b.weight("w", &[8, 12], 0.35);
    let bias = b.weight("b", &[12], 0.5);
    let x2 = b.add("x2", Op::Reshape, &[Some(x)], &["6*B", "8"]);
    let y = b.add("to_out", gemm_op(), &[Some(x2), Some(w), Some(bias)], &["6*B", "12"]);
    let y3 = b.add("to_out_3d", Op::Reshape, &[Some(y)], &["B", "6", "12"]);
    let s = b.add("residual", ADD, &[Some(y3), Some(h)], &["B", "6", "12"]);
    let out = b.add("relu", Op::Unary(quilt_rewrites::ir::UnaryOp::Relu), &[Some(s)], &["B", "6", "12"]);
    b.output("out", out);
    b
}

/// A channels-last ResNet tail: `conv_shortcut(x) + conv2(h)` on [B, 5, 7, C] data (x has 3
/// channels, h 4, the output 6), then a Relu.
fn conv_residual(dtype: DType, seed: u64) -> Builder {
    let mut b = Builder::new(dtype, seed);
    let x = b.input("x", &["B", "5", "7", "3"]);
    let h = b.input("h", &["B", "5", "7", "4"]);
    let w2 = b.weight("w2", &[6, 3, 3, 4], 0.3);
    let b2 = b.weight("b2", &[6], 0.5);
    let ws = b.weight("ws", &[6, 1, 1, 3], 0.5);
    let y = b.add("conv2", conv_op(true), &[Some(h), Some(w2), Some(b2)], &["B", "5", "7", "6"]);
    let shortcut_op = Op::Conv { strides: vec![1, 1], pads: vec![0, 0, 0, 0], dilations: vec![1, 1], group: 1, channels_last: true };
    let r = b.add("conv_shortcut", shortcut_op, &[Some(x), Some(ws), None], &["B", "5", "7", "6"]);
    let s = b.add("sum", ADD, &[Some(r), Some(y)], &["B", "5", "7", "6"]);
    let out = b.add("relu", Op::Unary(quilt_rewrites::ir::UnaryOp::Relu), &[Some(s)], &["B", "5", "7", "6"]);
    b.output("out", out);
    b
}

/// Runs the graph before and after the pass at batch 1 and 3 (one plan each) and compares.
fn check_pass(mut b: Builder, want: EpilogueReport, what: &str) {
    let (fused, report) = fuse_residuals(&b.g, EpilogueTargets::ALL).unwrap();
    assert_eq!(report, want, "{what}: {report:?}");
    let plain_plan = lower(&b.g).unwrap_or_else(|e| panic!("{what}: {e}"));
    let fused_plan = lower(&fused).unwrap_or_else(|e| panic!("{what}: fused: {e}"));
    assert_no_residual_alias(&fused_plan, what);
    assert_eq!(fused_plan.steps.iter().filter(|Step::Op(s)| s.op == ADD).count(), 0, "{what}: an Add was left");
    let plain = CpuExecutable::new(plain_plan).unwrap();
    let fused = CpuExecutable::new(fused_plan).unwrap();
    // 16-bit storage: the unfused plan rounds the product before the sum.
    let tol = if b.dtype == DType::F16 { 4e-3 } else { 1e-5 };
    for batch in [1, 3] {
        let inputs = b.random_inputs(plain.plan(), batch);
        let want = plain.run(&inputs).unwrap();
        let got = fused.run(&inputs).unwrap_or_else(|e| panic!("{what}: fused: {e}"));
        let (g, w) = (got[0].data.to_f64_vec(), want[0].data.to_f64_vec());
        assert_eq!(got[0].shape, want[0].shape);
        let max_ref = w.iter().map(|v| v.abs()).fold(0.0, f64::max);
        let max_abs = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        println!("{what} batch {batch}: max abs {max_abs:.2e} (max |ref| {max_ref:.2e})");
        assert!(max_ref > 0.1 && max_abs <= tol * max_ref, "{what} batch {batch}: max abs {max_abs:.3e} vs max |ref| {max_ref:.3e}");
    }
}

#[test]
fn linear_and_conv_residuals_fuse_and_agree() {
    for dtype in [DType::F32, DType::F16] {
        check_pass(linear_residual(dtype, 7), EpilogueReport { convs: 0, gemms: 1, reshapes_added: 2 }, &format!("linear {dtype}"));
        check_pass(conv_residual(dtype, 8), EpilogueReport { convs: 1, gemms: 0, reshapes_added: 0 }, &format!("conv {dtype}"));
    }
    // A Gemm without C, output already the Add's shape: no reshape.
    let mut b = Builder::new(DType::F32, 9);
    let x = b.input("x", &["B", "8"]);
    let h = b.input("h", &["B", "5"]);
    let w = b.weight("w", &[8, 5], 0.35);
    let y = b.add("gemm", gemm_op(), &[Some(x), Some(w)], &["B", "5"]);
    let s = b.add("sum", ADD, &[Some(h), Some(y)], &["B", "5"]);
    let out = b.add("neg", Op::Unary(quilt_rewrites::ir::UnaryOp::Neg), &[Some(s)], &["B", "5"]);
    b.output("out", out);
    check_pass(b, EpilogueReport { convs: 0, gemms: 1, reshapes_added: 0 }, "gemm without C");
}

/// The pass leaves `b.g` as it is.
fn assert_unchanged(b: &Builder, what: &str) {
    let (g, report) = fuse_residuals(&b.g, EpilogueTargets::ALL).unwrap();
    assert_eq!(report, EpilogueReport::default(), "{what}");
    assert_eq!(g.node_count(), b.g.node_count(), "{what}");
}

#[test]
fn adds_that_must_stay_stay() {
    // The residual broadcasts (a bias-like [6] operand).
    let mut b = Builder::new(DType::F32, 1);
    let h = b.input("h", &["B", "5", "7", "4"]);
    let w2 = b.weight("w2", &[6, 3, 3, 4], 0.3);
    let y = b.add("conv2", conv_op(true), &[Some(h), Some(w2), None], &["B", "5", "7", "6"]);
    let c = b.weight("c", &[6], 1.0);
    let s = b.add("sum", ADD, &[Some(y), Some(c)], &["B", "5", "7", "6"]);
    b.output("out", s);
    assert_unchanged(&b, "broadcast operand");

    // The conv output has a second reader.
    let mut b = Builder::new(DType::F32, 2);
    let h = b.input("h", &["B", "5", "7", "4"]);
    let r = b.input("r", &["B", "5", "7", "6"]);
    let w2 = b.weight("w2", &[6, 3, 3, 4], 0.3);
    let y = b.add("conv2", conv_op(true), &[Some(h), Some(w2), None], &["B", "5", "7", "6"]);
    let s = b.add("sum", ADD, &[Some(y), Some(r)], &["B", "5", "7", "6"]);
    let t = b.add("twice", ADD, &[Some(s), Some(y)], &["B", "5", "7", "6"]);
    b.output("out", t);
    let (_, report) = fuse_residuals(&b.g, EpilogueTargets::ALL).unwrap();
    assert_eq!(report, EpilogueReport::default(), "second reader");

    // The conv output is a graph output.
    let mut b = Builder::new(DType::F32, 3);
    let h = b.input("h", &["B", "5", "7", "4"]);
    let r = b.input("r", &["B", "5", "7", "6"]);
    let w2 = b.weight("w2", &[6, 3, 3, 4], 0.3);
    let y = b.add("conv2", conv_op(true), &[Some(h), Some(w2), None], &["B", "5", "7", "6"]);
    let s = b.add("sum", ADD, &[Some(y), Some(r)], &["B", "5", "7", "6"]);
    b.output("y", y);
    b.output("out", s);
    assert_unchanged(&b, "graph output");

    // y + y.
    let mut b = Builder::new(DType::F32, 4);
    let h = b.input("h", &["B", "5", "7", "4"]);
    let w2 = b.weight("w2", &[6, 3, 3, 4], 0.3);
    let y = b.add("conv2", conv_op(true), &[Some(h), Some(w2), None], &["B", "5", "7", "6"]);
    let s = b.add("sum", ADD, &[Some(y), Some(y)], &["B", "5", "7", "6"]);
    b.output("out", s);
    assert_unchanged(&b, "y + y");

    // An NCHW convolution (no channels-last backend asked for).
    let mut b = Builder::new(DType::F32, 5);
    let h = b.input("h", &["B", "4", "5", "7"]);
    let r = b.input("r", &["B", "6", "5", "7"]);
    let w2 = b.weight("w2", &[6, 4, 3, 3], 0.3);
    let y = b.add("conv2", conv_op(false), &[Some(h), Some(w2), None], &["B", "6", "5", "7"]);
    let s = b.add("sum", ADD, &[Some(y), Some(r)], &["B", "6", "5", "7"]);
    b.output("out", s);
    assert_unchanged(&b, "NCHW conv");

    // A Gemm whose C is full-size already, and one with β ≠ 1 on its bias row.
    for (c_shape, beta) in [(vec![4usize, 5], 1.0f32), (vec![5], 0.5)] {
        let mut b = Builder::new(DType::F32, 6);
        let x = b.input("x", &["4", "8"]);
        let r = b.input("r", &["4", "5"]);
        let w = b.weight("w", &[8, 5], 0.35);
        let c = b.weight("c", &c_shape, 1.0);
        let y = b.add("gemm", Op::Gemm { alpha: 1.0, beta, trans_a: false, trans_b: false }, &[Some(x), Some(w), Some(c)], &["4", "5"]);
        let s = b.add("sum", ADD, &[Some(y), Some(r)], &["4", "5"]);
        b.output("out", s);
        assert_unchanged(&b, &format!("Gemm with C {c_shape:?}, beta {beta}"));
    }
}

#[test]
fn full_size_unet_and_vae_fold_their_residual_adds() {
    let dir = support::fixtures_dir().join("full");
    for (name, min_convs, min_gemms) in [("unet", 30, 40), ("vae_decoder", 10, 1)] {
        let path = dir.join(format!("{name}.graph.onnx"));
        if !path.exists() {
            println!("skipped: {} is not there", path.display());
            continue;
        }
        let graph = support::imported_graph(&path, false);
        let plain = optimize_graph(&graph, &options(true, false)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let fused = optimize_graph(&graph, &options(true, true)).unwrap_or_else(|e| panic!("{name}: fused: {e}"));
        let report = fused.report.epilogue.clone().expect("the pass ran");
        let (plain_plan, fused_plan) = (lower(&plain.graph).unwrap(), lower(&fused.graph).unwrap());
        let adds = |p: &Plan| p.steps.iter().filter(|Step::Op(s)| s.op == ADD).count();
        let mut hist: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for (k, p) in [&plain_plan, &fused_plan].into_iter().enumerate() {
            for Step::Op(s) in &p.steps {
                let e = hist.entry(s.op.name()).or_default();
                if k == 0 { e.0 += 1 } else { e.1 += 1 }
            }
        }
        println!("{hist:?}");
        println!(
            "{name}: {report:?}; launch steps {} -> {}, views {} -> {}, standalone Add steps {} -> {}",
            launch_steps(&plain_plan),
            launch_steps(&fused_plan),
            plain_plan.view_count(),
            fused_plan.view_count(),
            adds(&plain_plan),
            adds(&fused_plan)
        );
        assert!(report.convs >= min_convs && report.gemms >= min_gemms, "{name}: {report:?}");
        assert_eq!(fused_steps(&fused_plan), (report.convs, report.gemms), "{name}");
        assert!(launch_steps(&fused_plan) < launch_steps(&plain_plan), "{name}: the pass saved no launch");
        assert_no_residual_alias(&fused_plan, name);
    }
}

/// With convolutions left out (`conv_residual=0`), the UNet's conv residual adds stay adds and its
/// Gemm ones still fold, and the plan computes the same as the plan with every epilogue.
#[test]
fn conv_residuals_can_be_left_out() {
    let conv = conv_residual(DType::F32, 11);
    let (g, report) = fuse_residuals(&conv.g, EpilogueTargets { convs: false, gemms: true }).unwrap();
    assert_eq!(report, EpilogueReport::default(), "conv residual with convs off");
    assert_eq!(g.node_count(), conv.g.node_count());
    let linear = linear_residual(DType::F32, 12);
    let (_, report) = fuse_residuals(&linear.g, EpilogueTargets { convs: false, gemms: true }).unwrap();
    assert_eq!(report.gemms, 1, "gemm residual with convs off: {report:?}");
    let path = support::fixtures_dir().join("full").join("unet.graph.onnx");
    if !path.exists() {
        println!("skipped: {} is not there", path.display());
        return;
    }
    let graph = support::imported_graph(&path, false);
    let all = optimize_graph(&graph, &options(true, true)).unwrap();
    let gemms_only = optimize_graph(&graph, &targeted(true, EpilogueTargets { convs: false, gemms: true })).unwrap();
    let (a, b) = (all.report.epilogue.unwrap(), gemms_only.report.epilogue.unwrap());
    assert!(a.convs > 0 && b.convs == 0 && b.gemms == a.gemms, "all {a:?}, gemms only {b:?}");
    assert_eq!(fused_steps(&lower(&gemms_only.graph).unwrap()), (0, b.gemms));
}
