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
//!
//! `wide_and_f32_attention_as_gemms_matches_the_cpu_reference`: the GEMM route
//! (`codegen::attention::gemm`: S = scale·q·kᵀ and O = P·V through cuBLAS, a row softmax between)
//! that wide heads (192, 256, 512: the SD VAE's single head) and f32 take: 1 and several heads,
//! N ≠ M, batch 1–2 (packed heads with B > 1 run one strided batch per batch entry), masks of
//! f16/f32 broadcast over lead dims, rows whose byte length is not a multiple of 16 (element-wise
//! softmax), and the chunked path forced by a small scratch cap (whole problems per chunk, and
//! query rows of one problem per chunk). The scores are stored in the input dtype between the
//! GEMMs (one more rounding than the flash kernel, of the scores before exp): for f16 the same
//! tolerances hold (rel L2 ≤ 2e-3); f32 (cuBLAS without TF32) keeps max abs ≤ 1e-4 · max |ref|
//! and rel L2 ≤ 1e-4. The fused kernels the GEMM route replaced (the wide plain kernel, the f32
//! plain kernel) stay covered by cases that force them.
//!
//! `wide_attention_timing` (ignored; the GPU machine runs it through tests/bench/attention_gpu.sh
//! wide): GPU time of one attention step, GEMM route vs the fused kernels, at the VAE's shapes.

#[path = "cuda_support.rs"]
mod support;

use std::time::Instant;

use std::sync::Arc;

use quilt_kernels::cpu::CpuExecutable;
use quilt_kernels::cuda::codegen::attention::gemm::{with_overrides, Overrides, Route};
use quilt_kernels::cuda::codegen::flash_attention as flash;
use quilt_kernels::cuda::{CudaDevice, CudaExecutable};
use quilt_models::random::Rng;
use quilt_rewrites::ir::AttentionColumns;
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
    /// The attention route and the GEMM route's scratch cap the step is generated with.
    overrides: Overrides,
    /// The mask's dtype when it differs from q, k, v's (`None`: the same).
    mask_dtype: Option<DType>,
    /// q, k, v as column ranges of the inputs (packed projections).
    columns: Option<AttentionColumns>,
}

impl Case {
    /// [B, N, D] per problem (B = 2) or packed [1, N, H·D] with H = 2.
    fn sd(dtype: DType, d: usize, n: usize, m: usize, masked: bool, packed: bool) -> Case {
        let (q, k, v, heads, mask) = if packed {
            (vec![1, n, 2 * d], vec![1, m, 2 * d], vec![1, m, 2 * d], Some(2), vec![1, 2, n, m])
        } else {
            (vec![2, n, d], vec![2, m, d], vec![2, m, d], None, vec![n, m])
        };
        Case { dtype, q, k, v, mask: masked.then_some(mask), heads, neg_inf: false, symbolic_width: false, overrides: Overrides::default(), mask_dtype: None, columns: None }
    }

    /// Unpacked heads `[*lead, N, D]`, `[*lead, M, D]`, `[*lead, M, Dv]`, no mask.
    fn plain(dtype: DType, lead: &[usize], n: usize, m: usize, d: usize, dv: usize) -> Case {
        let shape = |rows: usize, w: usize| lead.iter().copied().chain([rows, w]).collect::<Vec<_>>();
        Case { dtype, q: shape(n, d), k: shape(m, d), v: shape(m, dv), mask: None, heads: None, neg_inf: false, symbolic_width: false, overrides: Overrides::default(), mask_dtype: None, columns: None }
    }

    /// Packed heads `[B, N, H·D]`, `[B, M, H·D]`, `[B, M, H·D]`, no mask.
    fn packed(dtype: DType, b: usize, h: usize, n: usize, m: usize, d: usize) -> Case {
        Case { heads: Some(h), ..Case::plain(dtype, &[b], n, m, h * d, h * d) }
    }

    fn with_mask(self, mask: &[usize], neg_inf: bool) -> Case {
        Case { mask: Some(mask.to_vec()), neg_inf, ..self }
    }

    fn route(self, route: Route) -> Case {
        Case { overrides: Overrides { route, ..self.overrides }, ..self }
    }

    /// A scratch cap of `rows` score rows (of M elements in the dtype).
    /// Every flash-kernel shape through cuDNN's SDPA engines (`Overrides::cudnn_min_scores`).
    fn cudnn(self) -> Case {
        Case { overrides: Overrides { cudnn_min_scores: 0, ..self.overrides }, ..self }
    }

    /// Small launches on the flash variant with `warps` warps per block in `splits` key groups
    /// (`Overrides::small`).
    fn small(self, warps: usize, splits: usize) -> Case {
        Case { overrides: Overrides { small: Some(flash::BlockShape { warps, splits }), ..self.overrides }, ..self }
    }

    /// Never through cuDNN.
    fn flash_only(self) -> Case {
        Case { overrides: Overrides { cudnn_min_scores: usize::MAX, ..self.overrides }, ..self }
    }

    fn cap_rows(self, rows: usize) -> Case {
        let cap = rows * self.k[self.k.len() - 2] * self.dtype.size_bytes();
        Case { overrides: Overrides { scratch_cap: cap, ..self.overrides }, ..self }
    }

    /// q, k, v at `offset` of inputs `inputs` wide ([q, k, v]), `width` wide each.
    fn columns(self, inputs: [usize; 3], offset: [usize; 3], width: [usize; 3]) -> Case {
        let widen = |s: &[usize], w: usize| s[..s.len() - 1].iter().copied().chain([w]).collect::<Vec<_>>();
        let (q, k, v) = (widen(&self.q, inputs[0]), widen(&self.k, inputs[1]), widen(&self.v, inputs[2]));
        Case { q, k, v, columns: Some(AttentionColumns { offset, width }), ..self }
    }

    /// Columns of q (= k) and v per problem, all heads together.
    fn widths(&self) -> (usize, usize) {
        match self.columns {
            Some(c) => (c.width[0], c.width[2]),
            None => (*self.q.last().unwrap(), *self.v.last().unwrap()),
        }
    }

    fn head_dim(&self) -> usize {
        self.widths().0 / self.heads.unwrap_or(1)
    }

    fn label(&self) -> String {
        let mask = self.mask.as_ref().map_or("none".to_string(), |m| format!("{m:?}{}", if self.neg_inf { "+inf" } else { "" }));
        let sym = if self.symbolic_width { " width=sym" } else { "" };
        let mdt = self.mask_dtype.map_or(String::new(), |d| format!(" ({d})"));
        let o = self.overrides;
        let small = o.small.map_or(String::new(), |b| format!(" small=w{}g{}", b.warps, b.splits));
        let route = if o == Overrides::default() {
            String::new()
        } else if o.route == Route::Auto && o.scratch_cap == Overrides::default().scratch_cap {
            format!(" cudnn≥{}", o.cudnn_min_scores)
        } else if o.scratch_cap == Overrides::default().scratch_cap {
            format!(" {:?}", o.route)
        } else {
            format!(" {:?} cap={}", o.route, o.scratch_cap)
        };
        let cols = self.columns.map_or(String::new(), |c| format!(" columns {:?}+{:?}", c.offset, c.width));
        format!("{} q{:?} k{:?} v{:?} heads={:?}{cols} mask={mask}{mdt}{sym}{route}{small}", self.dtype, self.q, self.k, self.v, self.heads)
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
            plan.buffers.push(Buffer { ty: TensorType::new(self.input_dtype(i), dims(s, width(i))), kind: BufferKind::Input(i) });
            plan.inputs.push(PlanValue { name: ["q", "k", "v", "mask"][i].into(), buffer: i });
        }
        let mut out = self.q.clone();
        *out.last_mut().unwrap() = self.widths().1;
        let ob = shapes.len();
        plan.buffers.push(Buffer { ty: TensorType::new(self.dtype, dims(&out, width(2))), kind: BufferKind::Intermediate });
        plan.outputs.push(PlanValue { name: "out".into(), buffer: ob });
        let scale = 1.0 / (self.head_dim() as f32).sqrt();
        plan.steps.push(Step::Op(OpStep { node: "attention".into(), op: Op::Attention { scale, heads: self.heads, columns: self.columns }, inputs: (0..ob).map(Some).collect(), outputs: vec![ob] }));
        plan
    }

    fn input_dtype(&self, i: usize) -> DType {
        if i == 3 {
            self.mask_dtype.unwrap_or(self.dtype)
        } else {
            self.dtype
        }
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
                Tensor::new(s.to_vec(), TensorData::from_f64(self.input_dtype(i), &vals))
            })
            .collect()
    }

    /// The CPU reference's output. The CPU backend takes one dtype for q, k, v and the mask, so a
    /// mask of another dtype is compared against the reference in f32 on the same values (what
    /// it computes for 16-bit inputs anyway), its output rounded once to the case's dtype.
    fn reference(&self, inputs: &[Tensor]) -> Result<Tensor, String> {
        let run = |plan: Plan, inputs: &[Tensor]| -> Result<Tensor, String> {
            let cpu = CpuExecutable::new(plan).map_err(|e| e.to_string())?;
            Ok(cpu.run(inputs).map_err(|e| e.to_string())?.remove(0))
        };
        match self.mask_dtype.filter(|&m| m != self.dtype) {
            None => run(self.plan(), inputs),
            Some(_) => {
                let f32_case = Case { dtype: DType::F32, mask_dtype: None, q: self.q.clone(), k: self.k.clone(), v: self.v.clone(), mask: self.mask.clone(), ..Case::plain(DType::F32, &[], 0, 0, 0, 0) };
                let widened: Vec<Tensor> = inputs.iter().map(|t| Tensor::new(t.shape.clone(), TensorData::from_f64(DType::F32, &t.data.to_f64_vec()))).collect();
                let out = run(Case { heads: self.heads, ..f32_case }.plan(), &widened)?;
                Ok(Tensor::new(out.shape.clone(), TensorData::from_f64(self.dtype, &out.data.to_f64_vec())))
            }
        }
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
    out.push(Case { dtype: DType::F16, q: vec![2, 3, 200, 64], k: vec![2, 3, 96, 64], v: vec![2, 3, 96, 64], mask: Some(vec![1, 3, 200, 96]), heads: None, neg_inf: true, symbolic_width: false, overrides: Overrides::default(), mask_dtype: None, columns: None });
    // Head dims off the 8-element grid: element-wise tile copies (bucket 32 and 48).
    out.push(Case { dtype: DType::F16, q: vec![2, 130, 20], k: vec![2, 33, 20], v: vec![2, 33, 20], mask: None, heads: None, neg_inf: false, symbolic_width: false, overrides: Overrides::default(), mask_dtype: None, columns: None });
    out.push(Case { dtype: DType::BF16, q: vec![1, 50, 3 * 36], k: vec![1, 70, 3 * 36], v: vec![1, 70, 3 * 36], mask: Some(vec![1, 3, 50, 70]), heads: Some(3), neg_inf: false, symbolic_width: false, overrides: Overrides::default(), mask_dtype: None, columns: None });
    // Dv ≠ D, and single rows.
    out.push(Case { dtype: DType::F16, q: vec![4, 300, 64], k: vec![4, 129, 64], v: vec![4, 129, 40], mask: None, heads: None, neg_inf: false, symbolic_width: false, overrides: Overrides::default(), mask_dtype: None, columns: None });
    out.push(Case { dtype: DType::F16, q: vec![3, 1, 80], k: vec![3, 1, 80], v: vec![3, 1, 80], mask: Some(vec![3, 1, 1]), heads: None, neg_inf: false, symbolic_width: false, overrides: Overrides::default(), mask_dtype: None, columns: None });
    // Head dims the plan leaves symbolic: every bucket is compiled, one picked per run.
    out.push(Case { dtype: DType::F16, q: vec![2, 300, 40], k: vec![2, 200, 40], v: vec![2, 200, 40], mask: None, heads: None, neg_inf: false, symbolic_width: true, overrides: Overrides::default(), mask_dtype: None, columns: None });
    out.push(Case { dtype: DType::BF16, q: vec![1, 150, 2 * 80], k: vec![1, 77, 2 * 80], v: vec![1, 77, 2 * 80], mask: Some(vec![150, 77]), heads: Some(2), neg_inf: false, symbolic_width: true, overrides: Overrides::default(), mask_dtype: None, columns: None });
    // Packed projections (q, k, v as column ranges): SD's self-attention q|k|v at a 64² latent
    // (8 heads of 40), cross-attention k|v (8 heads of 160 over 77 keys); offsets off the
    // 8-element grid (element-wise tile copies).
    out.push(Case::packed(DType::F16, 2, 8, 4096, 4096, 40).columns([960; 3], [0, 320, 640], [320; 3]));
    out.push(Case::packed(DType::F16, 2, 8, 256, 77, 160).columns([1280, 2560, 2560], [0, 0, 1280], [1280; 3]).with_mask(&[2, 1, 1, 77], false));
    out.push(Case::packed(DType::BF16, 1, 2, 100, 60, 20).columns([90, 90, 90], [0, 44, 3], [40; 3]));
    // Small problems on the variants with fewer warps per block: SD's 16² self-attention, 32²
    // cross-attention (4 and 2 warps), a masked bf16 case.
    out.push(Case::packed(DType::F16, 2, 8, 256, 256, 160).small(4, 1));
    out.push(Case::packed(DType::F16, 2, 8, 1024, 77, 80).small(2, 1));
    out.push(Case::sd(DType::BF16, 64, 1024, 77, true, false).small(4, 1));
    // ... and with key groups merged at the end: SD's 32² and 16² self-attention, 16² cross-
    // attention (the second group's slice of the last tile lies past the 77 keys), 16 keys per
    // warp with the 48 bucket's last 8 columns skipped (d 40), a masked bf16 case, fewer rows
    // than one row group.
    out.push(Case::packed(DType::F16, 2, 8, 1024, 1024, 80).small(8, 2));
    out.push(Case::packed(DType::F16, 2, 8, 1024, 1024, 80).small(8, 4));
    out.push(Case::packed(DType::F16, 2, 8, 256, 256, 160).small(8, 2));
    out.push(Case::packed(DType::F16, 2, 8, 256, 77, 160).small(4, 2));
    out.push(Case::packed(DType::F16, 1, 8, 1024, 300, 40).small(8, 4));
    out.push(Case::sd(DType::BF16, 64, 1024, 77, true, false).small(8, 2));
    out.push(Case { dtype: DType::F16, q: vec![3, 5, 80], k: vec![3, 150, 80], v: vec![3, 150, 80], mask: None, heads: None, neg_inf: false, symbolic_width: false, overrides: Overrides::default(), mask_dtype: None, columns: None }.small(2, 2));
    // f32 runs as GEMMs; the plain kernel it replaced, forced.
    out.push(Case::sd(DType::F32, 40, 1024, 77, true, true));
    out.push(Case::sd(DType::F32, 40, 1024, 77, true, true).route(Route::Fused));
    out
}

/// The GEMM route: wide heads, f32 at any head dim, chunking, and the fused kernels it replaced.
fn gemm_cases() -> Vec<Case> {
    use DType::{BF16, F16, F32};
    let mut out = vec![
        // The SD VAE's mid-block attention at a 64² latent: one 512-wide head over 4096 tokens.
        Case::plain(F16, &[1], 4096, 4096, 512, 512),
        // Single head, N ≠ M; M = 777 rows are not a multiple of 16 bytes (element-wise softmax).
        Case::plain(F16, &[1], 1024, 777, 512, 512),
        Case::plain(F32, &[2], 300, 1024, 512, 512),
        // Head dims 192 and 256, several heads: packed heads with B = 2 (one strided batch per
        // batch entry) and B = 1, masks broadcast over the batch and over lead dims.
        Case::packed(F16, 2, 3, 333, 256, 192).with_mask(&[1, 3, 333, 256], true),
        Case::packed(F16, 1, 2, 512, 1000, 256),
        Case::packed(F32, 2, 2, 200, 77, 192).with_mask(&[2, 1, 1, 77], false),
        Case::plain(F16, &[2, 3], 160, 96, 256, 192).with_mask(&[3, 160, 96], true),
        Case::plain(BF16, &[2], 256, 300, 256, 256).with_mask(&[300], false),
        // A mask of another dtype than q, k, v.
        Case { mask_dtype: Some(F32), ..Case::plain(F16, &[2], 200, 128, 512, 512).with_mask(&[2, 200, 128], true) },
        // f32 below the flash kernel's width (GEMMs too), with a mask and packed heads.
        Case::packed(F32, 2, 8, 1024, 1024, 40).with_mask(&[1, 8, 1024, 1024], false),
        Case::plain(F32, &[3], 77, 300, 80, 64),
        // Chunked: 2 problems' scores per chunk of 3 (packed B = 2: chunks stay in a batch entry),
        // and 100 query rows of one problem per chunk (balanced: 3 × 100 of 300).
        Case::packed(F16, 2, 3, 128, 200, 256).with_mask(&[2, 3, 128, 200], false).cap_rows(2 * 128),
        Case::plain(F16, &[2], 300, 200, 512, 512).with_mask(&[300, 200], true).cap_rows(120),
        Case::plain(F32, &[1], 1000, 333, 192, 192).cap_rows(7),
        // A head dim the plan leaves symbolic and wider than the flash kernel: the GEMM fallback.
        Case { symbolic_width: true, ..Case::plain(F16, &[2], 300, 200, 256, 256) },
        // The kernels the GEMM route replaced, forced: the wide plain kernel (f16, f32).
        Case::plain(F16, &[1], 67, 67, 512, 512).route(Route::Fused),
        Case::plain(F32, &[1], 67, 90, 512, 256).with_mask(&[67, 90], false).route(Route::Fused),
    ];
    // Forced GEMMs below the flash kernel's width (f16).
    out.push(Case::sd(F16, 64, 1024, 77, true, true).route(Route::Gemm));
    // Packed projections on the GEMM route: q|k|v (f32, two batch entries), k|v (f16, forced).
    out.push(Case::packed(F32, 2, 8, 1024, 1024, 40).columns([960; 3], [0, 320, 640], [320; 3]));
    out.push(Case::packed(F16, 2, 2, 300, 77, 64).columns([128, 256, 256], [0, 0, 128], [128; 3]).route(Route::Gemm));
    out
}

/// Runs every case on the GPU and the CPU reference and fails with the list of cases out of
/// tolerance.
fn check_cases(device: &Arc<CudaDevice>, cases: &[Case], seed: u64) {
    println!("device: {} (sm_{}{})", device.name, device.arch.0, device.arch.1);
    println!("{:<110} {:>10} {:>10} {:>10} {:>8} {:>8}", "case", "max_abs", "max_rel", "l2_rel", "cpu_ms", "gpu_ms");
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let label = case.label();
        let plan = case.plan();
        let inputs = case.inputs(seed + i as u64);
        let t = Instant::now();
        let want = case.reference(&inputs).unwrap_or_else(|e| panic!("{label}: cpu: {e}"));
        let cpu_ms = t.elapsed().as_secs_f64() * 1e3;
        // The route and scratch cap apply when the step's code is generated.
        let gpu = match with_overrides(case.overrides, || CudaExecutable::with_device(plan, device.clone())) {
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
        let again = gpu.run(&inputs);
        let gpu_ms = t.elapsed().as_secs_f64() * 1e3;
        let (max_tol, l2_tol) = case.tolerance();
        // The second run (a CUDA graph replay) is held to the same tolerances.
        match again.map_err(|e| e.to_string()).and_then(|a| support::compare(&a[0], &want, NonFinite::Reject)) {
            Err(e) => failures.push(format!("{label}: second run: {e}")),
            Ok(err) if err.max_abs > max_tol * err.max_ref || err.l2_rel > l2_tol => {
                failures.push(format!("{label}: second run: max_abs {:.3e}, l2_rel {:.3e}", err.max_abs, err.l2_rel))
            }
            Ok(_) => {}
        }
        match support::compare(&got[0], &want, NonFinite::Reject) {
            Err(e) => failures.push(format!("{label}: {e}")),
            Ok(err) if err.max_ref == 0.0 => failures.push(format!("{label}: the reference output is all zeros")),
            Ok(err) => {
                let rel = err.max_abs / err.max_ref;
                println!("{label:<110} {:>10.3e} {rel:>10.3e} {:>10.3e} {cpu_ms:>8.1} {gpu_ms:>8.2}", err.max_abs, err.l2_rel);
                if rel > max_tol || err.l2_rel > l2_tol {
                    failures.push(format!("{label}: max_rel {rel:.3e} (tol {max_tol:.1e}), l2_rel {:.3e} (tol {l2_tol:.1e})", err.l2_rel));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn flash_attention_matches_the_cpu_reference() {
    let Some(device) = support::gpu_or_skip() else { return };
    // The kernel itself: large problems would otherwise go to cuDNN by default.
    let cases: Vec<Case> = cases().into_iter().map(Case::flash_only).collect();
    check_cases(&device, &cases, 100);
}

#[test]
fn wide_and_f32_attention_as_gemms_matches_the_cpu_reference() {
    let Some(device) = support::gpu_or_skip() else { return };
    check_cases(&device, &gemm_cases(), 500);
}

/// One executable over batch and sequence length as symbols (q, k, v, out `[B, N, 320]`, 8 heads
/// of 40, self-attention as at SD's 64² latent): its first shape (b2, 4096) builds the cuDNN plan
/// inside the first call; a later shape (b1, 4096: a new plan key) runs the flash kernel while its
/// plan is built on a worker thread, then cuDNN once the plan is ready (the CUDA graph is captured
/// again). Every run's output is checked against the CPU reference.
#[test]
fn cudnn_sdpa_builds_later_shapes_in_the_background() {
    let Some(device) = support::gpu_or_skip() else { return };
    let case = |b: usize| Case::packed(DType::F16, b, 8, 4096, 4096, 40).cudnn();
    let mut plan = case(2).plan();
    plan.symbols = vec!["B".into(), "N".into()];
    for buf in &mut plan.buffers {
        buf.ty.shape[0] = SymDim::sym("B");
        buf.ty.shape[1] = SymDim::sym("N");
    }
    let exe = with_overrides(case(2).overrides, || CudaExecutable::with_device(plan, device.clone())).expect("executable");
    // Inputs and CPU reference once per shape; every run is checked against them.
    let shape = |b: usize, seed: u64| {
        let c = case(b);
        let inputs = c.inputs(seed);
        let want = c.reference(&inputs).expect("cpu reference");
        (b, inputs, want)
    };
    let (max_tol, l2_tol) = case(1).tolerance();
    let check = |(b, inputs, want): &(usize, Vec<Tensor>, Tensor), runs: usize| {
        for r in 0..runs {
            let got = exe.run(inputs).unwrap_or_else(|e| panic!("b{b} run {r}: {e}"));
            let err = support::compare(&got[0], want, NonFinite::Reject).unwrap_or_else(|e| panic!("b{b} run {r}: {e}"));
            assert!(err.max_abs <= max_tol * err.max_ref && err.l2_rel <= l2_tol, "b{b} run {r}: max_abs {:.3e} (max_ref {:.3e}), l2_rel {:.3e}", err.max_abs, err.max_ref, err.l2_rel);
            if r == 0 {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    };
    check(&shape(2, 31), 2);
    let first = exe.cudnn_attention_report();
    assert!(first.len() == 1 && !first[0].contains("background"), "{first:?}");
    let before = quilt_kernels::cuda::conv::cudnn::sdpa_calls();
    // Wait for the worker between runs (a 96² plan took ~0.8 s to build on an H100).
    let b1 = shape(1, 32);
    let started = Instant::now();
    check(&b1, 1);
    while exe.cudnn_attention_report().iter().any(|r| r.contains("being built")) && started.elapsed().as_secs() < 20 {
        check(&b1, 1);
    }
    check(&b1, 3);
    let report = exe.cudnn_attention_report();
    println!("{report:?}");
    assert!(report.iter().any(|r| r.contains("built in the background")), "{report:?}");
    assert!(quilt_kernels::cuda::conv::cudnn::sdpa_calls() > before, "the b1 shape never ran on cuDNN: {report:?}");
}

/// Runs `case` once against `want` within its tolerances, then times its step 30 times after a
/// warm-up (CUDA events around the step, `run_profiled`): the times in µs sorted, the relative
/// L2 error, and the executable's cuDNN attention report.
fn checked_step_us(device: &Arc<CudaDevice>, case: &Case, inputs: &[Tensor], want: &Tensor) -> Result<(Vec<f64>, f64, Vec<String>), String> {
    let exe = with_overrides(case.overrides, || CudaExecutable::with_device(case.plan(), device.clone())).map_err(|e| e.to_string())?;
    let got = exe.run(inputs).map_err(|e| e.to_string())?;
    let err = support::compare(&got[0], want, NonFinite::Reject)?;
    let (max_tol, l2_tol) = case.tolerance();
    if err.max_abs > max_tol * err.max_ref || err.l2_rel > l2_tol {
        return Err(format!("out of tolerance: max_abs {:.3e} (max_ref {:.3e}), l2_rel {:.3e}", err.max_abs, err.max_ref, err.l2_rel));
    }
    let mut t = Vec::new();
    for _ in 0..=30 {
        let (_, steps) = exe.run_profiled(inputs).map_err(|e| e.to_string())?;
        t.push(steps.iter().map(|s| s.gpu_ms).sum::<f64>() * 1e3);
    }
    let mut t = t[1..].to_vec();
    t.sort_by(f64::total_cmp);
    Ok((t, err.l2_rel, exe.cudnn_attention_report()))
}

/// SD's attention shapes through cuDNN's fused SDPA engines (`QUILT_ATTN_CUDNN`), same inputs
/// and tolerances as the flash kernel: head dims 40/64/80/160, self and cross, packed heads and
/// q|k|v column ranges, bf16. Every case must have run on cuDNN (the counter of SDPA calls), so
/// a silent fallback to the flash kernel fails the test.
#[test]
fn cudnn_sdpa_matches_the_cpu_reference() {
    let Some(device) = support::gpu_or_skip() else { return };
    let mut cases = Vec::new();
    for (d, n) in [(40, 4096), (80, 1024), (160, 256), (64, 1024)] {
        for m in [77, n] {
            cases.push(Case::packed(DType::F16, 2, 8, n, m, d).cudnn());
        }
    }
    cases.push(Case::sd(DType::F16, 40, 1024, 77, false, false).cudnn());
    cases.push(Case::sd(DType::BF16, 64, 1024, 1024, false, true).cudnn());
    cases.push(Case::packed(DType::F16, 2, 8, 4096, 4096, 40).columns([960; 3], [0, 320, 640], [320; 3]).cudnn());
    cases.push(Case::packed(DType::F16, 2, 8, 256, 77, 160).columns([1280, 2560, 2560], [0, 0, 1280], [1280; 3]).cudnn());
    let before = quilt_kernels::cuda::conv::cudnn::sdpa_calls();
    check_cases(&device, &cases, 900);
    let ran = quilt_kernels::cuda::conv::cudnn::sdpa_calls() - before;
    assert!(ran >= cases.len() as u64, "cuDNN SDPA ran {ran} times for {} cases (each runs at least once outside a CUDA graph)", cases.len());
}

/// GPU time of one attention step at SD's shapes (b2, 8 heads, f16, packed heads): the flash
/// kernel against cuDNN's SDPA engines (CUDA events around the step, median of 30 after a
/// warm-up), each checked against the CPU reference first. One JSON line per (shape, route).
#[test]
#[ignore = "timing for the GPU machine: tests/bench/pending_gpu.sh ... sdpa"]
fn cudnn_sdpa_timing() {
    let Some(device) = support::gpu_or_skip() else { return };
    println!("device: {} (sm_{}{})", device.name, device.arch.0, device.arch.1);
    let shapes = [("sd15_64_self", 4096, 4096, 40), ("sd15_64_cross", 4096, 77, 40), ("sd15_32_self", 1024, 1024, 80), ("sd15_32_cross", 1024, 77, 80), ("sd15_16_self", 256, 256, 160), ("sd15_16_cross", 256, 77, 160)];
    let mut failures = Vec::new();
    for (si, (shape, n, m, d)) in shapes.into_iter().enumerate() {
        for cudnn in [false, true] {
            let case = Case::packed(DType::F16, 2, 8, n, m, d);
            let case = if cudnn { case.cudnn() } else { case.flash_only() };
            let inputs = case.inputs(800 + si as u64);
            let want = case.reference(&inputs).unwrap_or_else(|e| panic!("{shape}: cpu: {e}"));
            let timed = checked_step_us(&device, &case, &inputs, &want).map(|(t, l2, report)| (t[t.len() / 2], l2, report));
            let route = if cudnn { "cudnn" } else { "flash" };
            match timed {
                Ok((us, l2, report)) => println!("{{\"case\":\"{shape}\",\"route\":\"{route}\",\"gpu_us\":{us:.1},\"l2_rel\":{l2:.2e},\"cudnn\":{report:?}}}"),
                Err(e) => {
                    println!("{{\"case\":\"{shape}\",\"route\":\"{route}\",\"error\":{e:?}}}");
                    failures.push(format!("{shape} {route}: {e}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// GPU time of one attention step (CUDA events around the step, `run_profiled`; median of `reps`
/// runs after a warm-up) by route, printed as one JSON line per (case, route) and a table: the
/// SD VAE's single 512-wide head at 64² and 96² latents (4096 and 9216 tokens), f16 and f32, as
/// GEMMs vs the wide plain kernel; SD 1.5's f32 attention shapes as GEMMs vs the f32 plain kernel
/// (the measurement behind routing f32 to GEMMs); a few f16 shapes as GEMMs vs flash, for
/// reference.
#[test]
#[ignore = "timing for the GPU machine: bash tests/bench/attention_gpu.sh wide"]
fn wide_attention_timing() {
    use DType::{F16, F32};
    let Some(device) = support::gpu_or_skip() else { return };
    println!("device: {} (sm_{}{})", device.name, device.arch.0, device.arch.1);
    let mut runs: Vec<(&str, Case, Route, usize)> = Vec::new();
    for dtype in [F16, F32] {
        for (name, n) in [("vae_64", 4096), ("vae_96", 9216)] {
            runs.push((name, Case::plain(dtype, &[1], n, n, 512, 512), Route::Gemm, 20));
            runs.push((name, Case::plain(dtype, &[1], n, n, 512, 512), Route::Fused, 2));
        }
    }
    let sd = [("sd15_64_self", 4096, 4096, 40), ("sd15_64_cross", 4096, 77, 40), ("sd15_32_self", 1024, 1024, 80), ("sd15_32_cross", 1024, 77, 80), ("sd15_16_self", 256, 256, 160), ("sd15_16_cross", 256, 77, 160)];
    for (name, n, m, d) in sd {
        for route in [Route::Gemm, Route::Fused] {
            runs.push((name, Case::packed(F32, 2, 8, n, m, d), route, 5));
        }
    }
    for (name, n, m, d) in [sd[0], sd[2], sd[4], ("d128_n4096_self", 4096, 4096, 128)] {
        for route in [Route::Gemm, Route::Fused] {
            runs.push((name, Case::packed(F16, 2, 8, n, m, d), route, 10));
        }
    }
    let mut table = Vec::new();
    for (i, (name, case, route, reps)) in runs.into_iter().enumerate() {
        let case = case.route(route);
        let inputs = case.inputs(900 + i as u64);
        let exe = match with_overrides(case.overrides, || CudaExecutable::with_device(case.plan(), device.clone())) {
            Ok(e) => e,
            Err(e) => {
                println!("{{\"case\":\"{name}\",\"route\":\"{route:?}\",\"error\":{:?}}}", e.to_string());
                continue;
            }
        };
        let mut times = Vec::new();
        for _ in 0..=reps {
            match exe.run_profiled(&inputs) {
                Ok((_, t)) => times.push(t.iter().map(|s| s.gpu_ms).sum::<f64>()),
                Err(e) => {
                    println!("{{\"case\":\"{name}\",\"route\":\"{route:?}\",\"error\":{:?}}}", e.to_string());
                    break;
                }
            }
        }
        if times.len() < 2 {
            continue;
        }
        // The first run builds the shape's schedule and loads modules: not timed.
        let mut t = times[1..].to_vec();
        t.sort_by(f64::total_cmp);
        let ms = t[t.len() / 2];
        let (b, h) = (case.q[0], case.heads.unwrap_or(1));
        let (n, m, d) = (case.q[1], case.k[1], case.head_dim());
        let tflops = 4.0 * (b * h * n * m * d) as f64 / (ms * 1e-3) / 1e12;
        println!(
            "{{\"case\":\"{name}\",\"dtype\":\"{}\",\"b\":{b},\"h\":{h},\"n\":{n},\"m\":{m},\"d\":{d},\"route\":\"{route:?}\",\"gpu_ms\":{ms:.4},\"min_ms\":{:.4},\"max_ms\":{:.4},\"tflops\":{tflops:.1},\"reps\":{}}}",
            case.dtype,
            t[0],
            t[t.len() - 1],
            t.len()
        );
        table.push(format!("{name:<16} {:<4} {b}x{h:<2} {n:>5} {m:>5} {d:>4} {:<6} {ms:>10.4} {tflops:>8.1}", case.dtype.to_string(), format!("{route:?}")));
    }
    println!("{:<16} {:<4} {:<4} {:>5} {:>5} {:>4} {:<6} {:>10} {:>8}", "case", "dt", "BxH", "N", "M", "D", "route", "gpu_ms", "TFLOP/s");
    println!("{}", table.join("\n"));
}

/// The flash-attention configurations compared on the GPU (`flash_variant_timing`) per head-dim
/// bucket, named `r{row tiles}k{keys}s{stages}b{min blocks per SM}` plus `x` when the unused
/// last 8 columns of the bucket are skipped (`Config::exact`), `h` for f16 exponentials
/// (`Config::half_exp`), `w{warps}` for blocks of fewer than 8 warps and `w{warps}g{splits}` for
/// key groups (`Config::splits`): the default reshaped for SD's small attention problems. The
/// bucket's default is among them.
fn flash_variants(bucket: usize) -> Vec<(String, flash::Config)> {
    let c = |row_tiles, keys, stages, min_blocks, exact| flash::Config { row_tiles, keys, stages, min_blocks, exact, half_exp: false, warps: 8, splits: 1 };
    let h = |c: flash::Config| flash::Config { half_exp: true, ..c };
    let mut out: Vec<flash::Config> = match bucket {
        48 => vec![c(2, 64, 2, 1, false), c(2, 64, 2, 1, true), c(2, 64, 3, 1, true), h(c(2, 64, 3, 1, true)), c(2, 32, 3, 1, true), c(1, 64, 3, 1, true), c(1, 32, 3, 2, true)],
        64 => vec![c(2, 32, 2, 1, true), c(2, 32, 3, 1, true), h(c(2, 32, 3, 1, true))],
        80 => vec![c(1, 64, 2, 1, true), h(c(1, 64, 2, 1, true)), c(1, 32, 3, 1, true), c(2, 32, 2, 1, true)],
        _ => vec![c(1, 32, 2, 1, true), h(c(1, 32, 2, 1, true))],
    };
    let default = flash::default_config(bucket);
    if !out.contains(&default) {
        out.insert(0, default);
    }
    out.extend([4, 2].map(|warps| flash::Config { warps, ..default }));
    // Key groups (8 warps in 2 or 4 groups; 4 warps in 2), where the bucket's tiles allow them.
    out.extend([(8, 2), (8, 4), (4, 2)].map(|(warps, splits)| flash::Config { warps, splits, ..default }).into_iter().filter(|c| c.check(bucket).is_ok()));
    out.into_iter()
        .map(|c| {
            let w = if c.warps == 8 && c.splits == 1 { String::new() } else if c.splits == 1 { format!("w{}", c.warps) } else { format!("w{}g{}", c.warps, c.splits) };
            (format!("r{}k{}s{}b{}{}{}{w}", c.row_tiles, c.keys, c.stages, c.min_blocks, if c.exact { "x" } else { "" }, if c.half_exp { "h" } else { "" }), c)
        })
        .collect()
}

/// Every configuration in `flash_variants` compiles with NVRTC for sm_90 (f16 and bf16, with and
/// without a mask, at the SD head dim of its bucket) with no register spills and no stack frame.
/// Runs wherever libnvrtc loads (CI included), no GPU needed.
#[test]
fn flash_variants_compile_for_sm90_without_spills() {
    use quilt_kernels::cuda::codegen;
    use quilt_kernels::cuda::nvrtc;
    if !support::nvrtc_or_skip() {
        return;
    }
    let mut bad = Vec::new();
    // A variant can generate the same module as another (the exact-head-dim switch is off with a
    // mask): each distinct source is compiled once; NVRTC on the H100 machine returned an empty
    // log for a repeated program.
    let mut seen = std::collections::HashSet::new();
    for (bucket, d) in [(48, 40), (64, 64), (80, 80), (160, 160)] {
        for (name, cfg) in flash_variants(bucket) {
            for dtype in [DType::F16, DType::BF16] {
                for masked in [false, true] {
                    let mut case = Case::packed(dtype, 2, 8, 256, 256, d);
                    if masked {
                        case = case.with_mask(&[1, 8, 256, 256], false);
                    }
                    let origin = format!("{name} {dtype} d={d} mask={masked}");
                    let src = flash::with_config(cfg, bucket, || codegen::step_source(&case.plan(), 0)).unwrap_or_else(|e| panic!("{origin}: {e}"));
                    let src = src.unwrap_or_else(|e| panic!("{origin}: {e}")).unwrap_or_else(|| panic!("{origin}: no CUDA source"));
                    if !seen.insert(src.clone()) {
                        println!("{origin:<36} same module as an earlier variant");
                        continue;
                    }
                    let compiled = nvrtc::compile(&src, "flash.cu", (9, 0)).unwrap_or_else(|e| panic!("{origin}: {e}"));
                    let stats = nvrtc::kernel_stats(&compiled.log);
                    // The variant, and its small-launch shape where the bucket has one that
                    // reshapes this variant.
                    let reshaped = flash::default_small(bucket).is_some_and(|b| flash::with_config(cfg, bucket, || flash::shaped_config(bucket, Some(b)) != cfg).unwrap());
                    assert_eq!(stats.len(), 1 + reshaped as usize, "{origin}: {}", compiled.log);
                    for k in &stats {
                        println!("{origin:<36} {:>4} registers {:>4} bytes stack  {}", k.registers, k.stack_bytes, k.name);
                        if k.spill_store_bytes > 0 || k.spill_load_bytes > 0 || k.stack_bytes > 0 {
                            bad.push(format!("{origin}: {k:?}"));
                        }
                    }
                }
            }
        }
    }
    assert!(bad.is_empty(), "spills or stack frames:\n{}", bad.join("\n"));
}

/// GPU time of one attention step per flash-attention configuration (`flash_variants`) at SD's
/// attention shapes (b2, 8 heads, f16, packed heads), each checked against the CPU reference
/// first (the tolerances of `flash_attention_matches_the_cpu_reference`; a configuration out of
/// tolerance is reported and not timed). CUDA events around the step (`run_profiled`), median of
/// 30 runs after a warm-up. One JSON line per (shape, configuration), then a table.
#[test]
#[ignore = "timing for the GPU machine: bash tests/bench/attention_gpu.sh flash"]
fn flash_variant_timing() {
    let Some(device) = support::gpu_or_skip() else { return };
    println!("device: {} (sm_{}{})", device.name, device.arch.0, device.arch.1);
    let shapes = [("sd15_64_self", 4096, 4096, 40), ("sd15_64_cross", 4096, 77, 40), ("sd15_32_self", 1024, 1024, 80), ("sd15_32_cross", 1024, 77, 80), ("sd15_16_self", 256, 256, 160), ("sd15_16_cross", 256, 77, 160), ("d64_n4096_self", 4096, 4096, 64)];
    let mut table = Vec::new();
    let mut failures = Vec::new();
    // FLASH_SHAPES=a,b: only those shapes (the GPU call's time is short).
    let only = std::env::var("FLASH_SHAPES").ok();
    for (si, (shape, n, m, d)) in shapes.into_iter().enumerate() {
        if only.as_ref().is_some_and(|o| !o.split(',').any(|x| x == shape)) {
            continue;
        }
        // Each configuration as itself: no small-launch shape by default (the variants include
        // the reshaped blocks).
        let case = Case::packed(DType::F16, 2, 8, n, m, d).flash_only();
        let case = Case { overrides: Overrides { small_defaults: false, ..case.overrides }, ..case };
        let inputs = case.inputs(700 + si as u64);
        let want = case.reference(&inputs).unwrap_or_else(|e| panic!("{shape}: cpu: {e}"));
        let bucket = flash::bucket(d).unwrap();
        let default = flash::default_config(bucket);
        for (name, cfg) in flash_variants(bucket) {
            let timed = flash::with_config(cfg, bucket, || checked_step_us(&device, &case, &inputs, &want).map(|(t, l2, _)| (t[t.len() / 2], t[0], t[t.len() - 1], l2)));
            match timed.and_then(|r| r) {
                Ok((us, min, max, l2)) => {
                    let tflops = 4.0 * (16 * n * m * d) as f64 / (us * 1e-6) / 1e12;
                    let is_default = cfg == default;
                    println!("{{\"case\":\"{shape}\",\"n\":{n},\"m\":{m},\"d\":{d},\"bucket\":{bucket},\"variant\":\"{name}\",\"default\":{is_default},\"gpu_us\":{us:.1},\"min_us\":{min:.1},\"max_us\":{max:.1},\"tflops\":{tflops:.1},\"l2_rel\":{l2:.2e}}}");
                    table.push(format!("{shape:<16} {name:<12}{} {us:>9.1} {min:>9.1} {tflops:>8.1} {l2:>9.2e}", if is_default { "*" } else { " " }));
                }
                Err(e) => {
                    println!("{{\"case\":\"{shape}\",\"variant\":\"{name}\",\"error\":{e:?}}}");
                    failures.push(format!("{shape} {name}: {e}"));
                }
            }
        }
    }
    println!("{:<16} {:<13} {:>9} {:>9} {:>8} {:>9}", "case", "variant", "gpu_us", "min_us", "TFLOP/s", "l2_rel");
    println!("{}", table.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
