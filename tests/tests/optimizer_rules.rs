//! Rule soundness harness: for every optimizer rule, a small graph matching its left side (with
//! symbolic dims `B` and `N`), optimized and unoptimized, run on the CPU backend at two sizes on
//! the same random inputs and weights. Each case also checks that the rule fired (the fused op
//! appears, or the noise op disappears), so a rule that stops matching fails here too.
//! Tolerance: atol 1e-5 + rtol 1e-4 (f32 both ways; fused kernels reassociate sums).

use std::collections::BTreeMap;
use std::sync::Arc;

use quilt_kernels::cpu::CpuExecutable;
use quilt_rewrites::ir::{AttentionColumns, BinaryOp, GraphOutput, Node, ReduceKind, RegionOp, RowSpec, StitchedRegion, UnaryOp, ValueRef};
use quilt_rewrites::{optimize_graph, optimize_with, DType, Graph, Op, OptimizeOptions, SymDim, Tensor, TensorType};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn tensor(&mut self, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_f32s(shape.to_vec(), (0..n).map(|_| self.next()).collect())
    }
}

fn d(spec: &str) -> Vec<SymDim> {
    spec.split(',').map(|s| s.trim().parse::<i64>().map(SymDim::from).unwrap_or_else(|_| SymDim::sym(s.trim()))).collect()
}

/// Builds small graphs; weights are random constants.
struct G {
    g: Graph,
    rng: Rng,
}

impl G {
    fn new() -> G {
        G { g: Graph::new(), rng: Rng(0xA5A5_1234_5678_9ABC) }
    }
    fn add(&mut self, op: Op, inputs: &[Option<ValueRef>], shape: Vec<SymDim>) -> ValueRef {
        let name = format!("n{}", self.g.node_count());
        let node = self.g.add_node(Node { name, op, inputs: inputs.to_vec(), outputs: vec![TensorType::new(DType::F32, shape)] });
        ValueRef { node, output: 0 }
    }
    fn input(&mut self, name: &str, shape: &str) -> ValueRef {
        self.add(Op::Input { name: name.into() }, &[], d(shape))
    }
    fn konst(&mut self, t: Tensor) -> ValueRef {
        let shape = t.shape.iter().map(|&x| SymDim::from(x as i64)).collect();
        self.add(Op::Constant(Arc::new(t)), &[], shape)
    }
    fn scalar(&mut self, v: f32) -> ValueRef {
        self.konst(Tensor::from_f32s(vec![], vec![v]))
    }
    fn weight(&mut self, shape: &[usize]) -> ValueRef {
        let t = self.rng.tensor(shape);
        self.konst(t)
    }
    fn op(&mut self, op: Op, inputs: &[ValueRef], shape: &str) -> ValueRef {
        let ins: Vec<Option<ValueRef>> = inputs.iter().map(|v| Some(*v)).collect();
        self.add(op, &ins, d(shape))
    }
    fn shape(&self, v: ValueRef) -> String {
        self.g.value_type(v).shape.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",")
    }
    fn bin(&mut self, b: BinaryOp, x: ValueRef, y: ValueRef) -> ValueRef {
        let s = if self.g.value_type(x).rank() >= self.g.value_type(y).rank() { self.shape(x) } else { self.shape(y) };
        self.op(Op::Binary(b), &[x, y], &s)
    }
    fn un(&mut self, u: UnaryOp, x: ValueRef) -> ValueRef {
        let s = self.shape(x);
        self.op(Op::Unary(u), &[x], &s)
    }
    /// GroupNorm with 2 groups over `x` (`B,8,N,3`) in the exporters' InstanceNorm spelling:
    /// reshape to `B,2,12N`, InstanceNorm with unit scale and zero bias, reshape back, then the
    /// per-channel affine `beta + norm · gamma` with random `gamma`, `beta` (`8,1,1`).
    fn group_norm_as_instance_norm(&mut self, x: ValueRef) -> ValueRef {
        let r = self.add(Op::Reshape, &[Some(x)], vec![SymDim::sym("B"), SymDim::konst(2), SymDim::sym("N") * SymDim::konst(12)]);
        let ones = self.konst(Tensor::from_f32s(vec![2], vec![1.0; 2]));
        let zeros = self.konst(Tensor::from_f32s(vec![2], vec![0.0; 2]));
        let rs = self.g.value_type(r).shape.clone();
        let n = self.add(Op::InstanceNorm { epsilon: 1e-5 }, &[Some(r), Some(ones), Some(zeros)], rs);
        let back = self.op(Op::Reshape, &[n], "B,8,N,3");
        let gamma = self.weight(&[8, 1, 1]);
        let beta = self.weight(&[8, 1, 1]);
        let scaled = self.bin(BinaryOp::Mul, back, gamma);
        self.bin(BinaryOp::Add, beta, scaled)
    }
    fn output(mut self, v: ValueRef) -> Graph {
        self.g.outputs.push(GraphOutput { name: "y".into(), value: v });
        self.g
    }
}

/// Nodes whose op satisfies `pred`, counting the ops fused inside stitched regions too (a
/// region's normalization counts as the GroupNorm/LayerNorm it came from).
fn count(g: &Graph, pred: impl Fn(&Op) -> bool) -> usize {
    g.node_indices()
        .map(|ix| match &g.node(ix).op {
            Op::Stitched(r) => r
                .nodes
                .iter()
                .filter(|n| match &n.op {
                    RegionOp::Elementwise(op) => pred(op),
                    RegionOp::Normalize { rows: RowSpec::Trailing { axis }, epsilon } => pred(&Op::LayerNorm { axis: *axis, epsilon: *epsilon }),
                    RegionOp::Normalize { rows: RowSpec::Groups { groups }, epsilon } => {
                        pred(&Op::GroupNorm { epsilon: *epsilon, num_groups: *groups, per_channel_affine: true, channels_last: false })
                    }
                    RegionOp::Normalize { rows: RowSpec::GroupsChannelsLast { groups }, epsilon } => {
                        pred(&Op::GroupNorm { epsilon: *epsilon, num_groups: *groups, per_channel_affine: true, channels_last: true })
                    }
                })
                .count(),
            op => pred(op) as usize,
        })
        .sum()
}

/// Nodes outside stitched regions whose op satisfies `pred`.
fn outside_regions(g: &Graph, pred: impl Fn(&Op) -> bool) -> usize {
    g.node_indices().filter(|&ix| pred(&g.node(ix).op)).count()
}

/// Stitched regions in `g`.
fn regions(g: &Graph) -> Vec<std::sync::Arc<StitchedRegion>> {
    g.node_indices()
        .filter_map(|ix| match &g.node(ix).op {
            Op::Stitched(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

/// Optimizes `g`, checks `fired` on the optimized graph, then runs both plans at two sizes.
fn check(case: &str, g: Graph, fired: impl Fn(&Graph) -> bool) {
    let opt = optimize_graph(&g, &OptimizeOptions::default()).unwrap_or_else(|e| panic!("{case}: {e}"));
    assert!(fired(&opt.graph), "{case}: the rule did not fire; optimized graph:\n{:#?}", opt.graph.dag.node_weights().map(|n| n.op.name()).collect::<Vec<_>>());
    let plain = CpuExecutable::new(optimize_with(&g, &OptimizeOptions { enabled: false, ..Default::default() }).unwrap()).unwrap();
    let fused = CpuExecutable::new(quilt_rewrites::lower::lower(&opt.graph).unwrap()).unwrap_or_else(|e| panic!("{case}: {e}"));
    for (k, sizes) in [[("B", 1usize), ("N", 3usize)], [("B", 3), ("N", 5)]].iter().enumerate() {
        let bind: BTreeMap<&str, usize> = sizes.iter().copied().collect();
        let mut rng = Rng(77 + k as u64);
        let inputs: Vec<Tensor> = plain
            .plan()
            .inputs
            .iter()
            .map(|v| {
                let shape: Vec<usize> = plain.plan().buffers[v.buffer]
                    .ty
                    .shape
                    .iter()
                    .map(|s| s.eval(&|n| bind.get(n).map(|&x| x as i64)).unwrap() as usize)
                    .collect();
                rng.tensor(&shape)
            })
            .collect();
        let want = plain.run(&inputs).unwrap_or_else(|e| panic!("{case}: unoptimized: {e}"));
        let got = fused.run(&inputs).unwrap_or_else(|e| panic!("{case}: optimized: {e}"));
        for (w, g) in want.iter().zip(&got) {
            assert_eq!(w.shape, g.shape, "{case} at {sizes:?}");
            let (wv, gv) = (w.data.to_f64_vec(), g.data.to_f64_vec());
            for (i, (a, b)) in gv.iter().zip(&wv).enumerate() {
                assert!((a - b).abs() <= 1e-5 + 1e-4 * b.abs(), "{case} at {sizes:?}: element {i}: optimized {a}, unoptimized {b}");
            }
        }
    }
}

#[test]
fn cleanup_rules() {
    // reshape-of-reshape, reshape-to-own-type
    let mut g = G::new();
    let x = g.input("x", "B,6");
    let r1 = g.op(Op::Reshape, &[x], "B,2,3");
    let r2 = g.op(Op::Reshape, &[r1], "B,6");
    let y = g.un(UnaryOp::Neg, r2);
    check("reshape chain", g.output(y), |o| count(o, |op| *op == Op::Reshape) == 0);

    // transpose-of-transpose: to the identity, and to one composed transpose
    let mut g = G::new();
    let x = g.input("x", "B,2,3,N");
    let t1 = g.op(Op::Transpose { perm: vec![0, 2, 3, 1] }, &[x], "B,3,N,2");
    let t2 = g.op(Op::Transpose { perm: vec![0, 3, 1, 2] }, &[t1], "B,2,3,N");
    let t3 = g.op(Op::Transpose { perm: vec![1, 0, 2, 3] }, &[t2], "2,B,3,N");
    let t4 = g.op(Op::Transpose { perm: vec![0, 1, 3, 2] }, &[t3], "2,B,N,3");
    check("transpose chain", g.output(t4), |o| count(o, |op| matches!(op, Op::Transpose { .. })) == 1);

    // cast-to-own-type, identity
    let mut g = G::new();
    let x = g.input("x", "B,N");
    let c = g.op(Op::Cast { to: DType::F32 }, &[x], "B,N");
    let i = g.un(UnaryOp::Identity, c);
    let y = g.un(UnaryOp::Neg, i);
    check("cast/identity", g.output(y), |o| count(o, |op| matches!(op, Op::Cast { .. } | Op::Unary(UnaryOp::Identity))) == 0);

    // neutral-operand: x·1, 0+x, x/1, x−0 (constants that do not broadcast x)
    let mut g = G::new();
    let x = g.input("x", "B,N");
    let (one, zero) = (g.scalar(1.0), g.scalar(0.0));
    let a = g.bin(BinaryOp::Mul, x, one);
    let b = g.bin(BinaryOp::Add, zero, a);
    let c = g.bin(BinaryOp::Div, b, one);
    let e = g.bin(BinaryOp::Sub, c, zero);
    let y = g.un(UnaryOp::Neg, e);
    check("neutral operands", g.output(y), |o| count(o, |op| matches!(op, Op::Binary(_))) == 0);

    // swap-last-two-through-batch-reshape (the dynamo Kᵀ spelling), then cancelled by a swap
    let mut g = G::new();
    let y0 = g.input("y", "B,4,N,6");
    let t = g.op(Op::Transpose { perm: vec![0, 1, 3, 2] }, &[y0], "B,4,6,N");
    let bn = SymDim::sym("B") * SymDim::konst(4);
    let r = g.add(Op::Reshape, &[Some(t)], vec![bn, SymDim::konst(6), SymDim::sym("N")]);
    let back = g.add(Op::Transpose { perm: vec![0, 2, 1] }, &[Some(r)], vec![SymDim::sym("B") * SymDim::konst(4), SymDim::sym("N"), SymDim::konst(6)]);
    check("swap through batch reshape", g.output(back), |o| count(o, |op| matches!(op, Op::Transpose { .. })) == 0);
}

#[test]
fn group_norm_and_its_affine() {
    let mut g = G::new();
    let x = g.input("x", "B,8,N,3");
    let y = g.group_norm_as_instance_norm(x);
    check("group norm", g.output(y), |o| {
        // The stitcher runs a lone normalization as a region: its affine is the region's Mul/Add.
        count(o, |op| matches!(op, Op::GroupNorm { num_groups: 2, .. })) == 1
            && outside_regions(o, |op| matches!(op, Op::InstanceNorm { .. } | Op::Binary(_))) == 0
            && regions(o).iter().all(|r| r.op_names() == ["GroupNorm", "Mul", "Add"])
    });
}

#[test]
fn decomposed_layer_norm() {
    let mut g = G::new();
    let x = g.input("x", "B,N,8");
    let mean = |g: &mut G, v| g.op(Op::Reduce { kind: ReduceKind::Mean, axes: vec![2], keepdims: true }, &[v], "B,N,1");
    let m = mean(&mut g, x);
    let dd = g.bin(BinaryOp::Sub, x, m);
    let two = g.scalar(2.0);
    let sq = g.bin(BinaryOp::Pow, dd, two);
    let var = mean(&mut g, sq);
    let eps = g.scalar(1e-5);
    let ve = g.bin(BinaryOp::Add, var, eps);
    let den = g.un(UnaryOp::Sqrt, ve);
    let nrm = g.bin(BinaryOp::Div, dd, den);
    let gamma = g.weight(&[8]);
    let beta = g.weight(&[8]);
    let sc = g.bin(BinaryOp::Mul, nrm, gamma);
    let y = g.bin(BinaryOp::Add, sc, beta);
    check("layer norm", g.output(y), |o| {
        count(o, |op| matches!(op, Op::LayerNorm { axis: 2, .. })) == 1
            && outside_regions(o, |op| matches!(op, Op::Binary(_) | Op::Reduce { .. })) == 0
            && regions(o).iter().all(|r| r.op_names() == ["LayerNorm", "Mul", "Add"])
    });
}

#[test]
fn activations() {
    // silu, both operand orders
    let mut g = G::new();
    let x = g.input("x", "B,N");
    let s = g.un(UnaryOp::Sigmoid, x);
    let a = g.bin(BinaryOp::Mul, x, s);
    let b = g.bin(BinaryOp::Mul, s, a);
    check("silu", g.output(b), |o| count(o, |op| *op == Op::Silu) == 1);

    // quick gelu
    let mut g = G::new();
    let x = g.input("x", "B,N");
    let k = g.scalar(1.702);
    let xs = g.bin(BinaryOp::Mul, x, k);
    let s = g.un(UnaryOp::Sigmoid, xs);
    let y = g.bin(BinaryOp::Mul, x, s);
    check("quick gelu", g.output(y), |o| count(o, |op| matches!(op, Op::QuickGelu { .. })) == 1 && count(o, |op| matches!(op, Op::Binary(_))) == 0);

    // gelu erf form, TorchScript association: (x · (1 + erf(x/√2))) · 0.5
    let erf_bracket = |g: &mut G, x: ValueRef, div: bool| {
        let k = g.scalar(if div { std::f32::consts::SQRT_2 } else { std::f32::consts::FRAC_1_SQRT_2 });
        let s = g.bin(if div { BinaryOp::Div } else { BinaryOp::Mul }, x, k);
        let e = g.un(UnaryOp::Erf, s);
        let one = g.scalar(1.0);
        g.bin(BinaryOp::Add, e, one)
    };
    let mut g = G::new();
    let x = g.input("x", "B,N");
    let br = erf_bracket(&mut g, x, true);
    let p = g.bin(BinaryOp::Mul, x, br);
    let half = g.scalar(0.5);
    let y = g.bin(BinaryOp::Mul, p, half);
    check("gelu erf (torchscript)", g.output(y), |o| count(o, |op| *op == Op::Gelu { tanh: false }) == 1);

    // gelu erf form, dynamo association: x · (0.5 · (1 + erf(x·(1/√2))))
    let mut g = G::new();
    let x = g.input("x", "B,N");
    let br = erf_bracket(&mut g, x, false);
    let half = g.scalar(0.5);
    let p = g.bin(BinaryOp::Mul, half, br);
    let y = g.bin(BinaryOp::Mul, x, p);
    check("gelu erf (dynamo)", g.output(y), |o| count(o, |op| *op == Op::Gelu { tanh: false }) == 1);

    // gelu tanh form: (0.5·x) · (1 + tanh(0.7978845608·(x + 0.044715·x³)))
    let mut g = G::new();
    let x = g.input("x", "B,N");
    let three = g.scalar(3.0);
    let cube = g.bin(BinaryOp::Pow, x, three);
    let c = g.scalar(0.044715);
    let t = g.bin(BinaryOp::Mul, c, cube);
    let inner = g.bin(BinaryOp::Add, x, t);
    let k = g.scalar(0.797_884_6);
    let arg = g.bin(BinaryOp::Mul, k, inner);
    let th = g.un(UnaryOp::Tanh, arg);
    let one = g.scalar(1.0);
    let br = g.bin(BinaryOp::Add, one, th);
    let half = g.scalar(0.5);
    let hx = g.bin(BinaryOp::Mul, half, x);
    let y = g.bin(BinaryOp::Mul, hx, br);
    check("gelu tanh", g.output(y), |o| count(o, |op| *op == Op::Gelu { tanh: true }) == 1);
}

#[test]
fn geglu_from_slices_and_from_split() {
    for split in [false, true] {
        let mut g = G::new();
        let h = g.input("h", "B,N,16");
        let (a, b) = if split {
            let node = g.g.add_node(Node {
                name: "split".into(),
                op: Op::Split { axis: 2 },
                inputs: vec![Some(h)],
                outputs: vec![TensorType::new(DType::F32, d("B,N,8")), TensorType::new(DType::F32, d("B,N,8"))],
            });
            (ValueRef { node, output: 0 }, ValueRef { node, output: 1 })
        } else {
            let a = g.op(Op::Slice { axes: vec![2], starts: vec![SymDim::konst(0)], steps: vec![1] }, &[h], "B,N,8");
            let b = g.op(Op::Slice { axes: vec![2], starts: vec![SymDim::konst(8)], steps: vec![1] }, &[h], "B,N,8");
            (a, b)
        };
        let k = g.scalar(std::f32::consts::SQRT_2);
        let s = g.bin(BinaryOp::Div, b, k);
        let e = g.un(UnaryOp::Erf, s);
        let one = g.scalar(1.0);
        let br = g.bin(BinaryOp::Add, e, one);
        let p = g.bin(BinaryOp::Mul, b, br);
        let half = g.scalar(0.5);
        let gl = g.bin(BinaryOp::Mul, p, half);
        let y = g.bin(BinaryOp::Mul, a, gl);
        check(if split { "geglu (split)" } else { "geglu (slices)" }, g.output(y), |o| {
            count(o, |op| matches!(op, Op::GeGlu { tanh: false })) == 1 && count(o, |op| matches!(op, Op::Slice { .. } | Op::Split { .. })) == 0
        });
    }
}

/// Multi-head attention over `q [B, N, 2·4]`, `kv [B, N+1, 2·4]` as the exporters write it:
/// head split reshapes/transposes, Kᵀ directly (TorchScript) or through a batch-merging
/// reshape (dynamo), scale on q and Kᵀ or on the scores, an optional additive mask.
/// Attention over projections of `q` and `kv` (or of one input for `self_attention`: keys of
/// length `M`, which the callers bind).
fn attention_graph(dynamo: bool, masked: bool, self_attention: bool) -> Graph {
    let mut g = G::new();
    let q = g.input("q", "B,N,8");
    let kv = if self_attention { q } else { g.input("kv", "B,M,8") };
    let mask = masked.then(|| g.input("mask", "1,1,N,M"));
    let wq = g.weight(&[8, 8]);
    let wk = g.weight(&[8, 8]);
    let wv = g.weight(&[8, 8]);
    let qp = g.op(Op::MatMul, &[q, wq], "B,N,8");
    let kp = g.op(Op::MatMul, &[kv, wk], "B,M,8");
    let vp = g.op(Op::MatMul, &[kv, wv], "B,M,8");
    let heads = |g: &mut G, x: ValueRef, s: &str| {
        let r = g.op(Op::Reshape, &[x], &format!("B,{s},2,4"));
        g.op(Op::Transpose { perm: vec![0, 2, 1, 3] }, &[r], &format!("B,2,{s},4"))
    };
    let q4 = heads(&mut g, qp, "N");
    let v4 = heads(&mut g, vp, "M");
    let kt = if dynamo {
        let k4 = heads(&mut g, kp, "M");
        let b2 = SymDim::sym("B") * SymDim::konst(2);
        let r = g.add(Op::Reshape, &[Some(k4)], vec![b2.clone(), SymDim::sym("M"), SymDim::konst(4)]);
        let t = g.add(Op::Transpose { perm: vec![0, 2, 1] }, &[Some(r)], vec![b2, SymDim::konst(4), SymDim::sym("M")]);
        g.op(Op::Reshape, &[t], "B,2,4,M")
    } else {
        let r = g.op(Op::Reshape, &[kp], "B,M,2,4");
        g.op(Op::Transpose { perm: vec![0, 2, 3, 1] }, &[r], "B,2,4,M")
    };
    let s = g.scalar(std::f32::consts::FRAC_1_SQRT_2);
    let qs = g.bin(BinaryOp::Mul, q4, s);
    let ks = g.bin(BinaryOp::Mul, kt, s);
    let mut scores = g.op(Op::MatMul, &[qs, ks], "B,2,N,M");
    let c = g.scalar(1.3);
    scores = g.bin(BinaryOp::Div, scores, c);
    if let Some(m) = mask {
        scores = g.bin(BinaryOp::Add, scores, m);
    }
    let p = g.op(Op::Softmax { axis: 3 }, &[scores], "B,2,N,M");
    let o = g.op(Op::MatMul, &[p, v4], "B,2,N,4");
    let t = g.op(Op::Transpose { perm: vec![0, 2, 1, 3] }, &[o], "B,N,2,4");
    let y = g.op(Op::Reshape, &[t], "B,N,8");
    g.output(y)
}

#[test]
fn attention_in_both_spellings() {
    for dynamo in [false, true] {
        for masked in [false, true] {
            for self_attention in [false, true] {
                // Cross attention: M = N + 1 through a symbol of its own (a different length).
                let mut graph = attention_graph(dynamo, masked, self_attention);
                let keys = if self_attention { SymDim::sym("N") } else { SymDim::sym("N") + SymDim::konst(1) };
                for n in graph.dag.node_weights_mut() {
                    for t in &mut n.outputs {
                        for dim in &mut t.shape {
                            *dim = dim.substitute(&|s| (s == "M").then(|| keys.clone()));
                        }
                    }
                }
                let case = format!("attention (dynamo {dynamo}, mask {masked}, self {self_attention})");
                // The projections are packed (`crate::projections`): q|k|v into one MatMul for
                // self-attention, k|v for cross-attention, read as column ranges.
                let (matmuls, offset) = if self_attention { (1, [0, 8, 16]) } else { (2, [0, 0, 8]) };
                check(&case, graph, |o| {
                    let want = |c: &Option<AttentionColumns>| c.is_some_and(|c| c.offset == offset && c.width == [8; 3]);
                    let packed = count(o, |op| matches!(op, Op::Attention { heads: Some(2), scale, columns } if (scale - 0.5 / 1.3).abs() < 1e-4 && want(columns)));
                    // The separate weights are gone: one rank-2 constant per MatMul.
                    let weights = count(o, |op| matches!(op, Op::Constant(t) if t.shape.len() == 2));
                    packed == 1 && count(o, |op| matches!(op, Op::Softmax { .. } | Op::Transpose { .. })) == 0 && count(o, |op| *op == Op::MatMul) == matmuls && weights == matmuls
                });
            }
        }
    }
}

/// Stitching: every region kind, on random inputs at two sizes (B, N) against the unfused ops.
#[test]
fn stitched_regions() {
    // An elementwise chain with a broadcast operand, a Reshape view and a value read twice
    // outside the region (a multi-output region).
    let mut g = G::new();
    let x = g.input("x", "B,N,6");
    let t = g.input("t", "B,6");
    let tv = g.op(Op::Reshape, &[t], "B,1,6");
    let a = g.bin(BinaryOp::Add, x, tv);
    let s = g.un(UnaryOp::Tanh, a);
    let k = g.scalar(0.5);
    let m = g.bin(BinaryOp::Mul, s, k);
    let y = g.bin(BinaryOp::Sub, m, a);
    let w = g.weight(&[6, 4]);
    let side = g.op(Op::MatMul, &[a, w], "B,N,4");
    g.g.outputs.push(GraphOutput { name: "side".into(), value: side });
    check("elementwise chain", g.output(y), |o| {
        let r = regions(o);
        r.len() == 1 && r[0].nodes.len() == 4 && r[0].outputs.len() == 2 && count(o, |op| *op == Op::Reshape) == 0
    });

    // GroupNorm (from its InstanceNorm spelling) with its affine and SiLU, its input a residual
    // sum with a per-channel broadcast (the ResNet block's `conv + temb` → norm → SiLU).
    let mut g = G::new();
    let x = g.input("x", "B,8,N,3");
    let temb = g.input("temb", "B,8");
    let tv = g.op(Op::Reshape, &[temb], "B,8,1,1");
    let h = g.bin(BinaryOp::Add, x, tv);
    let sh = g.group_norm_as_instance_norm(h);
    let sg = g.un(UnaryOp::Sigmoid, sh);
    let y = g.bin(BinaryOp::Mul, sh, sg);
    check("group norm region", g.output(y), |o| {
        let r = regions(o);
        r.len() == 1 && r[0].norm().is_some() && r[0].op_names() == ["Add", "GroupNorm", "Mul", "Add", "Silu"] && o.node_count() == r.len() + 4
    });

    // Residual + LayerNorm: the sum is both the norm's input and a region output.
    let mut g = G::new();
    let x = g.input("x", "B,N,8");
    let res = g.input("res", "B,N,8");
    let bias = g.weight(&[8]);
    let xb = g.bin(BinaryOp::Add, x, bias);
    let h = g.bin(BinaryOp::Add, xb, res);
    let sc = g.weight(&[8]);
    let bi = g.weight(&[8]);
    let ln = g.op(Op::LayerNorm { axis: 2, epsilon: 1e-5 }, &[h, sc, bi], "B,N,8");
    let w = g.weight(&[8, 8]);
    let proj = g.op(Op::MatMul, &[ln, w], "B,N,8");
    let y = g.bin(BinaryOp::Add, proj, h);
    check("residual layer norm", g.output(y), |o| {
        let r = regions(o);
        r.iter().any(|r| r.norm().is_some() && r.outputs.len() == 2 && r.op_names() == ["Add", "Add", "LayerNorm", "Mul", "Add"])
    });

    // Convexity: `Exp(x)` feeds a MatMul whose result meets it again in an Add; fusing the Add
    // (and the Tanh after it) with the Exp would put the MatMul inside a cycle.
    let mut g = G::new();
    let x = g.input("x", "B,4");
    let a = g.un(UnaryOp::Exp, x);
    let na = g.un(UnaryOp::Neg, a);
    let w = g.weight(&[4, 4]);
    let m = g.op(Op::MatMul, &[a, w], "B,4");
    let s = g.bin(BinaryOp::Add, na, m);
    let y = g.un(UnaryOp::Tanh, s);
    check("convex regions", g.output(y), |o| {
        let r = regions(o);
        r.len() == 2 && r.iter().all(|r| !(r.op_names().contains(&"Exp".to_string()) && r.op_names().contains(&"Add".to_string())))
    });
}

/// linear-bias: `MatMul(x, W) + b` → `Reshape(Gemm(Reshape(x), W, b))` for `x` of rank 3 (bias
/// on either side of the Add, `[N]` and `[1, N]` biases) and rank 2; the product's last axis
/// must be the bias's. Not rewritten: a full-size addend (a residual) and a MatMul that has
/// another consumer.
#[test]
fn linear_bias_becomes_gemm() {
    let gemms = |o: &Graph| count(o, |op| matches!(op, Op::Gemm { .. }));
    let adds = |o: &Graph| count(o, |op| *op == Op::Binary(BinaryOp::Add));
    for (rank3, bias_first, bias_2d) in [(true, false, false), (true, true, false), (true, false, true), (false, true, false)] {
        let mut g = G::new();
        let (xs, ys) = if rank3 { ("B,N,8", "B,N,6") } else { ("B,8", "B,6") };
        let x = g.input("x", xs);
        let w = g.weight(&[8, 6]);
        let bias = g.weight(if bias_2d { &[1, 6] } else { &[6] });
        let m = g.op(Op::MatMul, &[x, w], ys);
        let y = if bias_first { g.op(Op::Binary(BinaryOp::Add), &[bias, m], ys) } else { g.op(Op::Binary(BinaryOp::Add), &[m, bias], ys) };
        let t = g.un(UnaryOp::Tanh, y);
        let case = format!("linear bias (rank 3 {rank3}, bias first {bias_first}, bias [1, N] {bias_2d})");
        check(&case, g.output(t), |o| gemms(o) == 1 && count(o, |op| *op == Op::MatMul) == 0 && adds(o) == 0);
    }

    // A residual is not a bias: the Add stays (and is stitched with the Tanh).
    let mut g = G::new();
    let x = g.input("x", "B,N,8");
    let r = g.input("r", "B,N,6");
    let w = g.weight(&[8, 6]);
    let m = g.op(Op::MatMul, &[x, w], "B,N,6");
    let y = g.bin(BinaryOp::Add, m, r);
    let t = g.un(UnaryOp::Tanh, y);
    check("linear residual (not rewritten)", g.output(t), |o| gemms(o) == 0 && adds(o) == 1);

    // The product has another consumer: rewriting would run the GEMM twice.
    let mut g = G::new();
    let x = g.input("x", "B,N,8");
    let w = g.weight(&[8, 6]);
    let bias = g.weight(&[6]);
    let m = g.op(Op::MatMul, &[x, w], "B,N,6");
    let y = g.bin(BinaryOp::Add, m, bias);
    let side = g.un(UnaryOp::Neg, m);
    let z = g.bin(BinaryOp::Mul, y, side);
    check("linear shared product (not rewritten)", g.output(z), |o| gemms(o) == 0 && count(o, |op| *op == Op::MatMul) == 1);
}
