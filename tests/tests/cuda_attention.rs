//! On a GPU: the tensor-core flash-attention kernel (f16/bf16 `Op::Attention`) against the CPU
//! reference (`quilt_kernels::cpu`) on the same 16-bit inputs, over SD's head dims (40, 64, 80,
//! 128, 160), query lengths 77/1024/4096, self- and cross-attention key lengths, packed heads,
//! rank-4 layouts with broadcast masks, and odd shapes (head dims off the 8-element grid take the
//! element-wise tile copy; Dv ≠ D; single rows; -inf mask entries; head dims the plan leaves
//! symbolic, which compile every bucket). Without a GPU it prints that
//! it was skipped.
//!
//! Inputs: q, k, v ~ N(0, 1) rounded to the dtype, scale 1/sqrt(D); masks ~ N(0, 1) (plus -inf
//! entries in one case). The reference computes in f32 from the same rounded inputs and rounds
//! its output once. The kernel differs by design in two roundings: the softmax weights P are
//! rounded to the input dtype before the P·V product (unit roundoff u = 2^-11 for f16, 2^-8 for
//! bf16), and the output is rounded again. Each output is a convex combination of v rows, so
//! both errors are ≈ u relative to the output's magnitude and average out over the M terms;
//! tolerances: relative L2 error ≤ 2e-3 (f16) / 1.6e-2 (bf16), max abs error ≤ 8u · max |ref|
//! (a few roundings of the largest values). f32 inputs keep the plain kernel and 1e-4.

#[path = "cuda_support.rs"]
mod support;

use std::time::Instant;

use quilt_kernels::cpu::CpuExecutable;
use quilt_kernels::cuda::CudaExecutable;
use quilt_models::random::Rng;
use quilt_rewrites::plan::{Buffer, BufferKind, OpStep, PlanValue, Step};
use quilt_rewrites::{DType, Op, Plan, SymDim, Tensor, TensorData, TensorType};
use support::NonFinite;

/// One attention problem set.
struct Case {
    dtype: DType,
    q: Vec<usize>,
    k: Vec<usize>,
    v: Vec<usize>,
    mask: Option<Vec<usize>>,
    heads: Option<usize>,
    /// Put -inf into about 1 in 7 mask entries (never a whole row).
    neg_inf: bool,
    /// Leave the last dim of q, k, v symbolic in the plan, so the step compiles every head-dim
    /// bucket and picks one at run time.
    symbolic_width: bool,
}

impl Case {
    /// [B, N, D] per problem (B = 2) or packed [1, N, H·D] with H = 2.
    fn sd(dtype: DType, d: usize, n: usize, m: usize, masked: bool, packed: bool) -> Case {
        let (q, k, v, heads, mask) = if packed {
            (vec![1, n, 2 * d], vec![1, m, 2 * d], vec![1, m, 2 * d], Some(2), vec![1, 2, n, m])
        } else {
            (vec![2, n, d], vec![2, m, d], vec![2, m, d], None, vec![n, m])
        };
        Case { dtype, q, k, v, mask: masked.then_some(mask), heads, neg_inf: false, symbolic_width: false }
    }

    fn head_dim(&self) -> usize {
        self.q.last().unwrap() / self.heads.unwrap_or(1)
    }

    fn label(&self) -> String {
        let mask = self.mask.as_ref().map_or("none".to_string(), |m| format!("{m:?}{}", if self.neg_inf { "+inf" } else { "" }));
        let sym = if self.symbolic_width { " width=sym" } else { "" };
        format!("{} q{:?} k{:?} v{:?} heads={:?} mask={mask}{sym}", self.dtype, self.q, self.k, self.v, self.heads)
    }

    fn plan(&self) -> Plan {
        let mut plan = Plan::default();
        let mut shapes = vec![&self.q, &self.k, &self.v];
        shapes.extend(self.mask.as_ref());
        // q, k, v's last dims as symbols W (q, k) and WV (v) when asked.
        let dims = |s: &[usize], width: Option<&str>| -> Vec<SymDim> {
            let mut d: Vec<SymDim> = s.iter().map(|&x| SymDim::from(x)).collect();
            if let Some(w) = width {
                *d.last_mut().unwrap() = SymDim::sym(w);
            }
            d
        };
        let width = |i: usize| self.symbolic_width.then_some(if i == 2 { "WV" } else { "W" }).filter(|_| i < 3);
        if self.symbolic_width {
            plan.symbols = vec!["W".into(), "WV".into()];
        }
        for (i, s) in shapes.iter().enumerate() {
            plan.buffers.push(Buffer { ty: TensorType::new(self.dtype, dims(s, width(i))), kind: BufferKind::Input(i) });
            plan.inputs.push(PlanValue { name: ["q", "k", "v", "mask"][i].into(), buffer: i });
        }
        let mut out = self.q.clone();
        *out.last_mut().unwrap() = *self.v.last().unwrap();
        let ob = shapes.len();
        plan.buffers.push(Buffer { ty: TensorType::new(self.dtype, dims(&out, width(2))), kind: BufferKind::Intermediate });
        plan.outputs.push(PlanValue { name: "out".into(), buffer: ob });
        let scale = 1.0 / (self.head_dim() as f32).sqrt();
        plan.steps.push(Step::Op(OpStep { node: "attention".into(), op: Op::Attention { scale, heads: self.heads }, inputs: (0..ob).map(Some).collect(), outputs: vec![ob] }));
        plan
    }

    fn inputs(&self, seed: u64) -> Vec<Tensor> {
        let mut shapes = vec![&self.q, &self.k, &self.v];
        shapes.extend(self.mask.as_ref());
        shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut rng = Rng::for_stream(seed, ["q", "k", "v", "mask"][i]);
                let n: usize = s.iter().product();
                let last = *s.last().unwrap();
                let vals: Vec<f64> = (0..n)
                    .map(|e| {
                        // Keep column 0 of every mask row finite so no row is all -inf.
                        if i == 3 && self.neg_inf && e % last != 0 && rng.uniform() < 1.0 / 7.0 {
                            f64::NEG_INFINITY
                        } else {
                            rng.normal()
                        }
                    })
                    .collect();
                Tensor::new(s.to_vec(), TensorData::from_f64(self.dtype, &vals))
            })
            .collect()
    }

    /// (max abs error relative to max |ref|, relative L2 error) allowed.
    fn tolerance(&self) -> (f64, f64) {
        match self.dtype {
            DType::F16 => (8.0 * 2f64.powi(-11), 2e-3),
            DType::BF16 => (8.0 * 2f64.powi(-8), 1.6e-2),
            _ => (1e-4, 1e-4),
        }
    }
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    // SD head dims × query lengths × (cross, self) key lengths; mask and packed heads rotate so
    // each head dim meets all four combinations.
    let mut combo = 0usize;
    for d in [40, 64, 80, 128, 160] {
        for n in [77, 1024, 4096] {
            for m in [77, n] {
                if m == n && n == 77 {
                    continue;
                }
                out.push(Case::sd(DType::F16, d, n, m, combo % 2 == 1, (combo / 2) % 2 == 1));
                combo += 1;
            }
        }
    }
    for d in [40, 64, 160] {
        for (n, m) in [(1024, 77), (1024, 1024)] {
            out.push(Case::sd(DType::BF16, d, n, m, m == 77, d == 64));
        }
    }
    // Rank 4 [B, H, N, D] with a mask broadcast over the batch.
    out.push(Case { dtype: DType::F16, q: vec![2, 3, 200, 64], k: vec![2, 3, 96, 64], v: vec![2, 3, 96, 64], mask: Some(vec![1, 3, 200, 96]), heads: None, neg_inf: true, symbolic_width: false });
    // Head dims off the 8-element grid: element-wise tile copies (bucket 32 and 48).
    out.push(Case { dtype: DType::F16, q: vec![2, 130, 20], k: vec![2, 33, 20], v: vec![2, 33, 20], mask: None, heads: None, neg_inf: false, symbolic_width: false });
    out.push(Case { dtype: DType::BF16, q: vec![1, 50, 3 * 36], k: vec![1, 70, 3 * 36], v: vec![1, 70, 3 * 36], mask: Some(vec![1, 3, 50, 70]), heads: Some(3), neg_inf: false, symbolic_width: false });
    // Dv ≠ D, and single rows.
    out.push(Case { dtype: DType::F16, q: vec![4, 300, 64], k: vec![4, 129, 64], v: vec![4, 129, 40], mask: None, heads: None, neg_inf: false, symbolic_width: false });
    out.push(Case { dtype: DType::F16, q: vec![3, 1, 80], k: vec![3, 1, 80], v: vec![3, 1, 80], mask: Some(vec![3, 1, 1]), heads: None, neg_inf: false, symbolic_width: false });
    // Head dims the plan leaves symbolic: every bucket is compiled, one picked per run.
    out.push(Case { dtype: DType::F16, q: vec![2, 300, 40], k: vec![2, 200, 40], v: vec![2, 200, 40], mask: None, heads: None, neg_inf: false, symbolic_width: true });
    out.push(Case { dtype: DType::BF16, q: vec![1, 150, 2 * 80], k: vec![1, 77, 2 * 80], v: vec![1, 77, 2 * 80], mask: Some(vec![150, 77]), heads: Some(2), neg_inf: false, symbolic_width: true });
    // f32 keeps the plain kernel.
    out.push(Case::sd(DType::F32, 40, 1024, 77, true, true));
    out
}

#[test]
fn flash_attention_matches_the_cpu_reference() {
    let Some(device) = support::gpu_or_skip() else { return };
    println!("device: {} (sm_{}{})", device.name, device.arch.0, device.arch.1);
    println!("{:<92} {:>10} {:>10} {:>10} {:>8} {:>8}", "case", "max_abs", "max_rel", "l2_rel", "cpu_ms", "gpu_ms");
    let mut failures = Vec::new();
    for (i, case) in cases().iter().enumerate() {
        let label = case.label();
        let plan = case.plan();
        let inputs = case.inputs(100 + i as u64);
        let cpu = CpuExecutable::new(plan.clone()).unwrap_or_else(|e| panic!("{label}: cpu: {e}"));
        let t = Instant::now();
        let want = cpu.run(&inputs).unwrap_or_else(|e| panic!("{label}: cpu: {e}"));
        let cpu_ms = t.elapsed().as_secs_f64() * 1e3;
        let gpu = match CudaExecutable::with_device(plan, device.clone()) {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{label}: CudaExecutable: {e}"));
                continue;
            }
        };
        let got = match gpu.run(&inputs) {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{label}: gpu: {e}"));
                continue;
            }
        };
        let t = Instant::now();
        let _ = gpu.run(&inputs);
        let gpu_ms = t.elapsed().as_secs_f64() * 1e3;
        match support::compare(&got[0], &want[0], NonFinite::Reject) {
            Err(e) => failures.push(format!("{label}: {e}")),
            Ok(err) if err.max_ref == 0.0 => failures.push(format!("{label}: the reference output is all zeros")),
            Ok(err) => {
                let rel = err.max_abs / err.max_ref;
                println!("{label:<92} {:>10.3e} {rel:>10.3e} {:>10.3e} {cpu_ms:>8.1} {gpu_ms:>8.2}", err.max_abs, err.l2_rel);
                let (max_tol, l2_tol) = case.tolerance();
                if rel > max_tol || err.l2_rel > l2_tol {
                    failures.push(format!("{label}: max_rel {rel:.3e} (tol {max_tol:.1e}), l2_rel {:.3e} (tol {l2_tol:.1e})", err.l2_rel));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}
