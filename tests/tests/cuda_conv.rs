//! On a GPU: ONNX Conv through `CudaExecutable` (cuDNN when libcudnn 9 loads, else im2col +
//! cuBLAS) against the CPU interpreter, on SD-shaped convolutions (3×3 pad 1 stride 1 and 2,
//! 1×1, conv_in/conv_out channel counts, groups with dilation, 1-D, with and without bias) at
//! odd spatial sizes and batch 1 and 2. Each case is ONE prepared plan with symbolic N, H, W run
//! at two shapes and then at the first again, so the per-shape algorithm cache is exercised.
//! - f32: |gpu − cpu| ≤ 1e-4 + 1e-3·|cpu| elementwise (TF32 must be off).
//! - f16 and bf16 (weights, inputs, output stored 16-bit on both backends, f32 math):
//!   ‖gpu − cpu‖₂/‖cpu‖₂ ≤ 2e-3 (f16), ≤ 5e-3 (bf16, see `BF16_L2`).
//! - Every 2-D symmetric-pad case also runs as a channels-last plan (`Op::Conv::channels_last`)
//!   when cuDNN loads: it must run on cuDNN (there is no channels-last im2col).
//!
//! Inputs are seeded normal values, weights scaled by 1/√(C·kh·kw) so outputs are O(1). When
//! cuDNN loads, every case except the asymmetric-pad one must have gone through it (counted by
//! `conv::cudnn::calls`; the test sets the conv policy to cuDNN unless `QUILT_CONV` is set, and
//! with `QUILT_CONV=im2col` none may). Without a GPU the test prints that it was skipped.
//!
//! `graph_api_convs_match_a_host_reference` calls cuDNN directly (graph API first) on NCHW and
//! NHWC data with bias and residual. `QUILT_CONV_BENCH=1` adds a timing run (`conv_timing`): the
//! SD UNet's conv shapes at batch 2, 64² latents, and the VAE decoder's at batch 1, f16: graph
//! API NHWC (heuristic, with residual, benchmarked), graph API NCHW, legacy API NCHW, im2col,
//! called directly on device buffers, each checked against the im2col result;
//! `tests/bench/conv_gpu.sh` runs it with PyTorch's numbers.

use std::sync::Arc;
use std::time::Instant;

use quilt_kernels::cpu::CpuExecutable;
use quilt_kernels::cuda::codegen::{module_source, Action, Arg, LaunchPlan, StepCode, Types};
use quilt_kernels::cuda::conv::cudnn::{self, AlgoSearch, ConvCall, ConvLayout, Dnn, Pointers};
use quilt_kernels::cuda::conv::{policy, set_policy, ConvCode, ConvGeometry, ConvPolicy, CUDNN_DISPATCHED};
use quilt_kernels::cuda::device::{DeviceBuffer, Function};
use quilt_kernels::cuda::gemm::Blas;
use quilt_kernels::cuda::{nvrtc, CudaDevice, CudaExecutable};
use quilt_models::random::Rng;
use quilt_rewrites::ir::TensorType;
use quilt_rewrites::plan::{Buffer, BufferKind, OpStep, PlanValue, Step};
use quilt_rewrites::{DType, Op, Plan, SymDim, Tensor, TensorData};

const F32_ATOL: f64 = 1e-4;
const F32_RTOL: f64 = 1e-3;
const F16_L2: f64 = 2e-3;
/// bf16 keeps 8 significant bits: one rounding alone is ~1.6e-3 RMS relative, and some paths
/// (im2col's GEMM, a few NCHW graph engines with a residual) round an intermediate to bf16.
const BF16_L2: f64 = 5e-3;

/// (name, N, C, M, k, stride, pad, H=W) of a timed convolution.
type ConvShape = (&'static str, usize, usize, usize, usize, usize, usize, usize);

/// One conv: channels, kernel, attributes, bias, and two (N, H, W) shapes to run at.
struct Case {
    name: &'static str,
    c: usize,
    m: usize,
    /// Spatial kernel dims (one entry: 1-D).
    k: &'static [usize],
    strides: &'static [usize],
    pads: &'static [usize],
    dilations: &'static [usize],
    group: usize,
    bias: bool,
    shapes: [(usize, usize, usize); 2],
    /// Whether cuDNN must run it (when it loads).
    cudnn: bool,
}

fn cases() -> Vec<Case> {
    let c = |name, c, m, k, strides, pads, bias, shapes| Case { name, c, m, k, strides, pads, dilations: &[1, 1], group: 1, bias, shapes, cudnn: true };
    vec![
        c("conv_in 4->320 3x3", 4, 320, &[3, 3], &[1, 1], &[1, 1, 1, 1], true, [(1, 9, 7), (2, 16, 13)]),
        c("320->320 3x3 no bias", 320, 320, &[3, 3], &[1, 1], &[1, 1, 1, 1], false, [(1, 11, 9), (2, 8, 8)]),
        c("640->640 3x3", 640, 640, &[3, 3], &[1, 1], &[1, 1, 1, 1], true, [(1, 5, 5), (2, 6, 7)]),
        c("64->64 3x3 stride 2", 64, 64, &[3, 3], &[2, 2], &[1, 1, 1, 1], true, [(1, 15, 13), (2, 16, 16)]),
        c("320->320 3x3 stride 2", 320, 320, &[3, 3], &[2, 2], &[1, 1, 1, 1], false, [(2, 9, 11), (1, 12, 12)]),
        c("640->320 1x1", 640, 320, &[1, 1], &[1, 1], &[0, 0, 0, 0], true, [(2, 7, 5), (1, 12, 12)]),
        c("320->640 1x1 no bias", 320, 640, &[1, 1], &[1, 1], &[0, 0, 0, 0], false, [(1, 3, 5), (2, 8, 9)]),
        c("conv_out 320->4 3x3", 320, 4, &[3, 3], &[1, 1], &[1, 1, 1, 1], true, [(1, 9, 9), (2, 10, 7)]),
        Case { name: "32->48 3x3 group 4 dilation 2", c: 32, m: 48, k: &[3, 3], strides: &[1, 1], pads: &[2, 2, 2, 2], dilations: &[2, 2], group: 4, bias: true, shapes: [(1, 10, 9), (2, 12, 11)], cudnn: true },
        Case { name: "1-D 16->24 k3", c: 16, m: 24, k: &[3], strides: &[1], pads: &[1, 1], dilations: &[1], group: 1, bias: true, shapes: [(1, 1, 17), (2, 1, 30)], cudnn: true },
        Case { name: "asymmetric pads (im2col)", c: 8, m: 16, k: &[3, 3], strides: &[2, 2], pads: &[0, 0, 1, 1], dilations: &[1, 1], group: 1, bias: true, shapes: [(1, 9, 9), (2, 8, 10)], cudnn: false },
    ]
}

/// Output extent of one spatial axis, symbolic in the input extent.
fn out_dim(i: SymDim, k: usize, s: usize, p0: usize, p1: usize, d: usize) -> SymDim {
    let span = i + SymDim::from(p0 + p1) - SymDim::from(d * (k - 1) + 1);
    span.floor_div(&SymDim::from(s)) + SymDim::from(1usize)
}

fn random_tensor(shape: Vec<usize>, scale: f64, dtype: DType, rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.normal() * scale).collect();
    Tensor::new(shape, TensorData::from_f64(dtype, &v))
}

/// A one-Conv plan: input "x" of shape [N, C, H, W] (or [N, C, W]) with symbolic N, H, W.
/// `channels_last`: x [N, H, W, C], w [M, kh, kw, C/g], y [N, OH, OW, M] (`Op::Conv`'s flag).
fn conv_plan(case: &Case, dtype: DType, channels_last: bool, rng: &mut Rng) -> Plan {
    // Moves the channel axis (1) last when the plan is channels-last.
    fn lay<T>(mut v: Vec<T>, channels_last: bool) -> Vec<T> {
        if channels_last {
            let c = v.remove(1);
            v.push(c);
        }
        v
    }
    let two_d = case.k.len() == 2;
    let spatial_syms: Vec<SymDim> = if two_d { vec![SymDim::sym("H"), SymDim::sym("W")] } else { vec![SymDim::sym("W")] };
    let mut x_shape = vec![SymDim::sym("N"), SymDim::from(case.c)];
    x_shape.extend(spatial_syms.iter().cloned());
    let kk: usize = case.k.iter().product();
    let mut w_shape = vec![case.m, case.c / case.group];
    w_shape.extend(case.k.iter().copied());
    let w = random_tensor(lay(w_shape, channels_last), 1.0 / ((case.c / case.group * kk) as f64).sqrt(), dtype, rng);
    let x_shape = lay(x_shape, channels_last);
    let sp = case.k.len();
    let mut y_shape = vec![SymDim::sym("N"), SymDim::from(case.m)];
    for (a, i) in spatial_syms.into_iter().enumerate() {
        y_shape.push(out_dim(i, case.k[a], case.strides[a], case.pads[a], case.pads[sp + a], case.dilations[a]));
    }
    let konst = |t: &Tensor| t.shape.iter().map(|&d| SymDim::from(d)).collect::<Vec<_>>();
    let mut buffers = vec![
        Buffer { ty: TensorType::new(dtype, x_shape), kind: BufferKind::Input(0) },
        Buffer { ty: TensorType::new(dtype, konst(&w)), kind: BufferKind::Weight(Arc::new(w)) },
    ];
    let mut inputs = vec![Some(0), Some(1)];
    if case.bias {
        let b = random_tensor(vec![case.m], 0.5, dtype, rng);
        buffers.push(Buffer { ty: TensorType::new(dtype, konst(&b)), kind: BufferKind::Weight(Arc::new(b)) });
        inputs.push(Some(2));
    }
    buffers.push(Buffer { ty: TensorType::new(dtype, lay(y_shape, channels_last)), kind: BufferKind::Intermediate });
    let y = buffers.len() - 1;
    let op = Op::Conv { strides: case.strides.to_vec(), pads: case.pads.to_vec(), dilations: case.dilations.to_vec(), group: case.group, channels_last };
    let mut symbols = vec!["N".to_string(), "W".to_string()];
    if two_d {
        symbols.insert(0, "H".to_string());
    }
    Plan {
        buffers,
        inputs: vec![PlanValue { name: "x".into(), buffer: 0 }],
        outputs: vec![PlanValue { name: "y".into(), buffer: y }],
        steps: vec![Step::Op(OpStep { node: format!("conv {}", case.name), op, inputs, outputs: vec![y] })],
        symbols,
        ..Plan::default()
    }
}

/// (every element within the f32 tolerance, max abs error, L2-relative error).
fn errors(gpu: &Tensor, cpu: &Tensor) -> (bool, f64, f64) {
    assert_eq!(gpu.shape, cpu.shape);
    let (a, b) = (gpu.data.to_f64_vec(), cpu.data.to_f64_vec());
    let (mut within, mut max_abs, mut num, mut den) = (true, 0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(&b) {
        let d = (x - y).abs();
        #[allow(clippy::neg_cmp_op_on_partial_ord)] // a NaN difference must fail
        if !(d <= F32_ATOL + F32_RTOL * y.abs()) {
            within = false;
        }
        max_abs = max_abs.max(if d.is_nan() { f64::INFINITY } else { d });
        num += d * d;
        den += y * y;
    }
    (within, max_abs, (num / den.max(1e-300)).sqrt())
}

#[test]
fn conv_matches_the_cpu_backend_on_the_gpu() {
    let device = match CudaDevice::new(0) {
        Ok(d) => d,
        Err(e) => {
            println!("SKIPPED (no GPU): {e}");
            return;
        }
    };
    // Every convolution cuDNN can run goes to it here (the default policy sends small shapes to
    // im2col) unless QUILT_CONV picks a policy; no other test in this binary prepares a conv step.
    if std::env::var_os("QUILT_CONV").is_none() {
        set_policy(ConvPolicy::Cudnn);
    }
    let lib = cudnn::library();
    let expect_cudnn = lib.is_ok() && matches!(policy(), ConvPolicy::Cudnn | ConvPolicy::Legacy) && CUDNN_DISPATCHED;
    println!("conv policy: {:?}", policy());
    println!("device: {} (sm_{}{}); cuDNN: {}", device.name, device.arch.0, device.arch.1, match &lib {
        Ok(v) => format!("{v}"),
        Err(e) => format!("not loaded ({e}): im2col path"),
    });
    let mut failures = Vec::new();
    let mut rng = Rng::new(20261125);
    println!("{:<32} {:<5} {:<14} {:>10} {:>10} {:>8} {:>6}", "case", "dtype", "x shape", "max_abs", "l2_rel", "cudnn", "graph");
    let mut graph_runs = 0;
    // Channels-last plans (2-D, symmetric pads) need cuDNN; they run whenever it loads.
    let layouts = |case: &Case| if lib.is_ok() && case.k.len() == 2 && case.cudnn { vec![false, true] } else { vec![false] };
    for case in cases() {
        for (dtype, channels_last) in [DType::F32, DType::F16, DType::BF16].into_iter().flat_map(|d| layouts(&case).into_iter().map(move |l| (d, l))) {
            let plan = conv_plan(&case, dtype, channels_last, &mut rng);
            let cpu = CpuExecutable::new(plan.clone()).unwrap_or_else(|e| panic!("{}: cpu: {e}", case.name));
            let gpu = CudaExecutable::with_device(plan, device.clone()).unwrap_or_else(|e| panic!("{}: gpu: {e}", case.name));
            let runs = [case.shapes[0], case.shapes[1], case.shapes[0]];
            let mut first: Option<Tensor> = None;
            for (r, &(n, h, w)) in runs.iter().enumerate() {
                let shape = match (case.k.len() == 2, channels_last) {
                    (true, false) => vec![n, case.c, h, w],
                    (true, true) => vec![n, h, w, case.c],
                    _ => vec![n, case.c, w],
                };
                // The third run repeats the first shape (and input): a cache hit.
                let x = if r == 2 { first.clone().expect("first input kept") } else { random_tensor(shape.clone(), 1.0, dtype, &mut rng) };
                if r == 0 {
                    first = Some(x.clone());
                }
                let (before, graph_before) = (cudnn::calls(), cudnn::graph_calls());
                let got = match gpu.run(std::slice::from_ref(&x)) {
                    Ok(mut v) => v.remove(0),
                    Err(e) => {
                        failures.push(format!("{} {dtype} {shape:?}: {e}", case.name));
                        continue;
                    }
                };
                let used_cudnn = cudnn::calls() > before;
                let used_graph = cudnn::graph_calls() > graph_before;
                graph_runs += used_graph as usize;
                let want = cpu.run(std::slice::from_ref(&x)).unwrap_or_else(|e| panic!("{}: cpu: {e}", case.name)).remove(0);
                let (within, max_abs, l2) = errors(&got, &want);
                println!("{:<32} {:<5} {:<14} {max_abs:>10.2e} {l2:>10.2e} {:>8} {:>6}", case.name, format!("{dtype}"), format!("{shape:?}"), used_cudnn, used_graph);
                let ok = match dtype {
                    DType::F32 => within,
                    DType::BF16 => l2 <= BF16_L2,
                    _ => l2 <= F16_L2,
                };
                if channels_last && !used_cudnn {
                    failures.push(format!("{} {dtype} {shape:?}: a channels-last conv ran without cuDNN", case.name));
                }
                if policy() == ConvPolicy::Legacy && used_graph {
                    failures.push(format!("{} {dtype} {shape:?}: the graph API ran under the legacy policy", case.name));
                }
                if !ok {
                    failures.push(format!("{} {dtype} {shape:?}: max_abs {max_abs:.3e}, l2_rel {l2:.3e}", case.name));
                }
                // Auto picks per shape and dtype: no expectation beyond the numbers.
                if !channels_last && policy() != ConvPolicy::Auto && used_cudnn != (expect_cudnn && case.cudnn) {
                    failures.push(format!("{} {dtype} {shape:?}: cuDNN used = {used_cudnn}, expected {}", case.name, expect_cudnn && case.cudnn));
                }
            }
        }
    }
    if expect_cudnn && policy() == ConvPolicy::Cudnn && graph_runs == 0 {
        failures.push("no convolution ran on cuDNN's graph API".into());
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// Device buffers of one conv and the ways to run it.
struct Bench {
    device: Arc<CudaDevice>,
    x: DeviceBuffer,
    w: DeviceBuffer,
    b: DeviceBuffer,
    y: DeviceBuffer,
}

impl Bench {
    fn ptr(&self, a: Arg, scratch: &[DeviceBuffer]) -> u64 {
        match a {
            Arg::In(0) => self.x.ptr,
            Arg::In(1) => self.w.ptr,
            Arg::In(2) => self.b.ptr,
            Arg::Out(0) => self.y.ptr,
            Arg::Scratch(k) => scratch[k].ptr,
            other => panic!("unexpected argument {other:?}"),
        }
    }

    /// Runs the im2col launch plan once (the executor's dispatch, minus its bookkeeping).
    fn im2col(&self, lp: &LaunchPlan, functions: &[Function], blas: &Blas, scratch: &[DeviceBuffer]) {
        for a in &lp.actions {
            match a {
                Action::Launch { kernel, work, params, args } => {
                    let (grid, block) = work.launch_dims();
                    let ptrs: Vec<u64> = args.iter().map(|&a| self.ptr(a, scratch)).collect();
                    self.device.launch(&functions[*kernel], grid, block, params, &ptrs).unwrap();
                }
                Action::Gemm(call) => blas.gemm(call, &|a| self.ptr(a, scratch)).unwrap(),
                Action::Zero { arg, bytes } => self.device.memset_zero(self.ptr(*arg, scratch), *bytes).unwrap(),
                #[allow(unreachable_patterns)]
                other => panic!("im2col plan holds {other:?}"),
            }
        }
    }
}

/// [N, C, H, W] (or [M, C, kh, kw]) values reordered to [N, H, W, C].
fn to_channels_last(v: &[f64], s: [usize; 4]) -> Vec<f64> {
    let [_, c, h, w] = s;
    let mut out = vec![0.0; v.len()];
    for (i, &x) in v.iter().enumerate() {
        let (b, ch, y, xx) = (i / (c * h * w), (i / (h * w)) % c, (i / w) % h, i % w);
        out[((b * h + y) * w + xx) * c + ch] = x;
    }
    out
}

/// [N, H, W, C] values (of an [N, C, H, W] tensor) back to [N, C, H, W].
fn from_channels_last(v: &[f64], s: [usize; 4]) -> Vec<f64> {
    let [_, c, h, w] = s;
    let mut out = vec![0.0; v.len()];
    for (i, o) in out.iter_mut().enumerate() {
        let (b, ch, y, xx) = (i / (c * h * w), (i / (h * w)) % c, (i / w) % h, i % w);
        *o = v[((b * h + y) * w + xx) * c + ch];
    }
    out
}

/// Median over `reps` of the mean time of `iters` back-to-back calls (synchronised at both ends).
fn time_ms(device: &CudaDevice, iters: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    device.synchronize().unwrap();
    let mut v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            device.synchronize().unwrap();
            t.elapsed().as_secs_f64() * 1e3 / iters as f64
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[reps / 2]
}

/// y = conv(x, w) + b + r in f64 on the host, NCHW (x [N, C, H, W], w [M, C/g, kh, kw]).
fn reference_conv(g: &ConvGeometry, x: &[f64], w: &[f64], b: Option<&[f64]>, r: Option<&[f64]>) -> Vec<f64> {
    let (cg, mg) = (g.c / g.group, g.m / g.group);
    let mut y = vec![0.0; g.out_elems()];
    for n in 0..g.n {
        for m in 0..g.m {
            let c0 = (m / mg) * cg;
            for oh in 0..g.oh {
                for ow in 0..g.ow {
                    let mut acc = b.map_or(0.0, |b| b[m]);
                    for c in 0..cg {
                        for kr in 0..g.kh {
                            let ih = (oh * g.stride.0 + kr * g.dilation.0) as i64 - g.pad_begin.0 as i64;
                            if ih < 0 || ih >= g.h as i64 {
                                continue;
                            }
                            for ks in 0..g.kw {
                                let iw = (ow * g.stride.1 + ks * g.dilation.1) as i64 - g.pad_begin.1 as i64;
                                if iw < 0 || iw >= g.w as i64 {
                                    continue;
                                }
                                acc += x[((n * g.c + c0 + c) * g.h + ih as usize) * g.w + iw as usize] * w[((m * cg + c) * g.kh + kr) * g.kw + ks];
                            }
                        }
                    }
                    let i = ((n * g.m + m) * g.oh + oh) * g.ow + ow;
                    y[i] = acc + r.map_or(0.0, |r| r[i]);
                }
            }
        }
    }
    y
}

/// Values rounded to `dtype` (what a tensor of that type holds).
fn rounded(v: &[f64], dtype: DType) -> Vec<f64> {
    TensorData::from_f64(dtype, v).to_f64_vec()
}

/// A direct cuDNN call's case: channels, kernel, stride, pad, bias, residual, two (N, H, W).
struct DirectCase {
    name: &'static str,
    c: usize,
    m: usize,
    k: usize,
    stride: usize,
    pad: usize,
    bias: bool,
    residual: bool,
    shapes: [(usize, usize, usize); 2],
}

fn direct_cases() -> Vec<DirectCase> {
    let d = |name, c, m, k, stride, pad, bias, residual, shapes| DirectCase { name, c, m, k, stride, pad, bias, residual, shapes };
    vec![
        d("320->320 3x3 +b +r", 320, 320, 3, 1, 1, true, true, [(1, 9, 7), (2, 8, 8)]),
        d("conv_in 4->320 3x3 +b", 4, 320, 3, 1, 1, true, false, [(2, 9, 9), (1, 16, 13)]),
        d("conv_out 320->4 3x3 +b", 320, 4, 3, 1, 1, true, false, [(1, 9, 9), (2, 7, 10)]),
        d("64->64 3x3 s2 +b +r", 64, 64, 3, 2, 1, true, true, [(1, 15, 13), (2, 16, 16)]),
        d("640->320 1x1 +b +r", 640, 320, 1, 1, 0, true, true, [(2, 7, 5), (1, 12, 12)]),
        d("640->640 3x3 +b", 640, 640, 3, 1, 1, true, false, [(1, 5, 5), (2, 6, 7)]),
        d("128->128 3x3 +r", 128, 128, 3, 1, 1, false, true, [(1, 17, 11), (2, 8, 8)]),
        d("8->16 3x3 s2", 8, 16, 3, 2, 1, false, false, [(1, 9, 9), (2, 11, 7)]),
    ]
}

/// cuDNN calls (graph API first) made directly on device buffers, NCHW and NHWC, f16, bf16 and
/// f32, with bias and residual, against `reference_conv` on the same 16-bit (or f32) values,
/// rounded to the output type: ‖gpu − ref‖₂/‖ref‖₂ ≤ 2e-3 (f16), 5e-3 (bf16); f32 elementwise
/// 1e-4 + 1e-3·|ref| (no TF32). One `Dnn` per case runs shapes A, B, A: two cached plans. The
/// output is poisoned (all-ones bytes: NaN) before each call. Every 16-bit NHWC call must run
/// on the graph API (the reason it exists).
#[test]
fn graph_api_convs_match_a_host_reference() {
    let Some(device) = gpu_with_cudnn() else { return };
    device.bind().unwrap();
    println!("device: {}, cuDNN {}", device.name, cudnn::library().unwrap_or(0));
    println!("{:<26} {:<5} {:<5} {:<13} {:>9} {:>9} {:<7} {:<40} {:>8}", "case", "dtype", "lay", "x (n,h,w)", "max_abs", "l2_rel", "api", "engine", "choose");
    let mut rng = Rng::new(20261126);
    let mut failures = Vec::new();
    for case in direct_cases() {
        for layout in [ConvLayout::Nhwc, ConvLayout::Nchw] {
            for dtype in [DType::F16, DType::BF16, DType::F32] {
                let dnn = Dnn::new(AlgoSearch::Heuristic);
                let ws = [case.m, case.c, case.k, case.k];
                let w = rounded(&(0..ws.iter().product()).map(|_| rng.normal() / ((case.c * case.k * case.k) as f64).sqrt()).collect::<Vec<_>>(), dtype);
                let b = rounded(&(0..case.m).map(|_| rng.normal() * 0.5).collect::<Vec<_>>(), dtype);
                let nhwc = layout == ConvLayout::Nhwc;
                let up = |v: &[f64]| device.upload(&TensorData::from_f64(dtype, v).to_le_bytes()).unwrap();
                let w_dev = up(&if nhwc { to_channels_last(&w, ws) } else { w.clone() });
                let b_dev = up(&b);
                for (run, &(n, h, wd)) in [case.shapes[0], case.shapes[1], case.shapes[0]].iter().enumerate() {
                    let (p, k, st) = (case.pad, case.k, case.stride);
                    let (oh, ow) = ((h + 2 * p - k) / st + 1, (wd + 2 * p - k) / st + 1);
                    let (xs, ys) = ([n, case.c, h, wd], [n, case.m, oh, ow]);
                    let g = ConvGeometry::new(&[st, st], &[p; 4], &[1, 1], 1, &xs, &ws, &ys).unwrap();
                    let x = rounded(&(0..xs.iter().product()).map(|_| rng.normal()).collect::<Vec<_>>(), dtype);
                    let r = rounded(&(0..ys.iter().product()).map(|_| rng.normal()).collect::<Vec<_>>(), dtype);
                    let want = reference_conv(&g, &x, &w, case.bias.then_some(&b[..]), case.residual.then_some(&r[..]));
                    let want = if dtype == DType::F32 { want } else { rounded(&want, dtype) };
                    let x_dev = up(&if nhwc { to_channels_last(&x, xs) } else { x.clone() });
                    let r_dev = up(&if nhwc { to_channels_last(&r, ys) } else { r.clone() });
                    let y_bytes = g.out_elems() * dtype.size_bytes();
                    let y_dev = device.upload(&vec![0xFF; y_bytes]).unwrap();
                    let mut call = ConvCall::new(g, dtype, case.bias).unwrap();
                    if nhwc {
                        call = call.nhwc();
                    }
                    if case.residual {
                        call = call.with_residual(Arg::In(3));
                    }
                    let ptr = |a: Arg| match a {
                        Arg::In(0) => x_dev.ptr,
                        Arg::In(1) => w_dev.ptr,
                        Arg::In(2) => b_dev.ptr,
                        Arg::In(3) => r_dev.ptr,
                        Arg::Out(0) => y_dev.ptr,
                        other => panic!("unexpected argument {other:?}"),
                    };
                    let label = format!("{} {dtype} {layout:?} {:?}", case.name, (n, h, wd));
                    if let Err(e) = dnn.conv(&call, device.cu_stream(), &ptr) {
                        failures.push(format!("{label}: {e}"));
                        continue;
                    }
                    device.synchronize().unwrap();
                    let got = TensorData::from_le_bytes(dtype, &device.download(&y_dev, y_bytes).unwrap()).unwrap().to_f64_vec();
                    let got = if nhwc { from_channels_last(&got, ys) } else { got };
                    let (within, max_abs, l2) = errors(&Tensor::new(ys.to_vec(), TensorData::from_f64(DType::F64, &got)), &Tensor::new(ys.to_vec(), TensorData::from_f64(DType::F64, &want)));
                    let choice = dnn.choice(&call).expect("the call ran");
                    println!(
                        "{:<26} {:<5} {:<5} {:<13} {max_abs:>9.2e} {l2:>9.2e} {:<7} {:<40} {:>6.1}ms",
                        case.name,
                        format!("{dtype}"),
                        if nhwc { "nhwc" } else { "nchw" },
                        format!("{:?}", (n, h, wd)),
                        choice.api,
                        choice.algo,
                        choice.choose_ms
                    );
                    if let Some(why) = &choice.fallback {
                        println!("    graph API declined: {why}");
                    }
                    let ok = match dtype {
                        DType::F32 => within,
                        DType::BF16 => l2 <= BF16_L2,
                        _ => l2 <= F16_L2,
                    };
                    if !ok {
                        failures.push(format!("{label}: max_abs {max_abs:.3e}, l2_rel {l2:.3e} ({} {})", choice.api, choice.algo));
                    }
                    if nhwc && dtype != DType::F32 && choice.api != "graph" {
                        failures.push(format!("{label}: 16-bit NHWC ran on the {} API ({:?})", choice.api, choice.fallback));
                    }
                    let expect_shapes = if run == 0 { 1 } else { 2 };
                    if dnn.shapes() != expect_shapes {
                        failures.push(format!("{label}: {} cached plans after run {run}, expected {expect_shapes}", dnn.shapes()));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// GPU 0 when cuDNN loads too; else `None`, after saying which is missing (the test is skipped).
fn gpu_with_cudnn() -> Option<Arc<CudaDevice>> {
    let device = match CudaDevice::new(0) {
        Ok(d) => d,
        Err(e) => {
            println!("SKIPPED (no GPU): {e}");
            return None;
        }
    };
    match cudnn::library() {
        Ok(_) => Some(device),
        Err(e) => {
            println!("SKIPPED (no cuDNN): {e}");
            None
        }
    }
}

/// `Dnn::prepare` builds every direct case's plan (f16 NHWC, shape A) on 4 worker threads before
/// any call runs: afterwards the `Dnn` holds one plan per case, the calls add none, each output
/// matches `reference_conv` (‖gpu − ref‖₂/‖ref‖₂ ≤ 2e-3 after rounding to f16) and each case got
/// the engine a `Dnn` that builds it at its first call picks (the workers' handles change where
/// plans are built, not what they are).
#[test]
fn plans_prepared_on_worker_threads_match_a_host_reference() {
    let Some(device) = gpu_with_cudnn() else { return };
    device.bind().unwrap();
    let dtype = DType::F16;
    let mut rng = Rng::new(20261206);
    let up = |v: &[f64]| device.upload(&TensorData::from_f64(dtype, v).to_le_bytes()).unwrap();
    // Per case: the call, its buffers (x, w, b, r, y), the reference output (NHWC) and its size.
    let mut cases = Vec::new();
    for case in direct_cases() {
        let (n, h, wd) = case.shapes[0];
        let (p, k, st) = (case.pad, case.k, case.stride);
        let (oh, ow) = ((h + 2 * p - k) / st + 1, (wd + 2 * p - k) / st + 1);
        let (xs, ws, ys) = ([n, case.c, h, wd], [case.m, case.c, k, k], [n, case.m, oh, ow]);
        let g = ConvGeometry::new(&[st, st], &[p; 4], &[1, 1], 1, &xs, &ws, &ys).unwrap();
        let normal = |count: usize, scale: f64, rng: &mut Rng| rounded(&(0..count).map(|_| rng.normal() * scale).collect::<Vec<_>>(), dtype);
        let x = normal(xs.iter().product(), 1.0, &mut rng);
        let w = normal(ws.iter().product(), 1.0 / ((case.c * k * k) as f64).sqrt(), &mut rng);
        let b = normal(case.m, 0.5, &mut rng);
        let r = normal(ys.iter().product(), 1.0, &mut rng);
        let want = rounded(&reference_conv(&g, &x, &w, case.bias.then_some(&b[..]), case.residual.then_some(&r[..])), dtype);
        let bufs = [up(&to_channels_last(&x, xs)), up(&to_channels_last(&w, ws)), up(&b), up(&to_channels_last(&r, ys)), device.upload(&vec![0xFF; g.out_elems() * 2]).unwrap()];
        let mut call = ConvCall::new(g, dtype, case.bias).unwrap().nhwc();
        if case.residual {
            call = call.with_residual(Arg::In(3));
        }
        cases.push((case.name, call, bufs, want, ys));
    }
    let ptr_of = |bufs: &[DeviceBuffer; 5]| {
        let p: [u64; 5] = std::array::from_fn(|i| bufs[i].ptr);
        move |a: Arg| match a {
            Arg::In(i) if i < 4 => p[i],
            Arg::Out(0) => p[4],
            other => panic!("unexpected argument {other:?}"),
        }
    };
    let dnn = Dnn::new(AlgoSearch::Heuristic).with_threads(4);
    let calls: Vec<(ConvCall, Pointers)> = cases.iter().map(|(_, call, bufs, _, _)| (call.clone(), Pointers::of(call, &ptr_of(bufs)))).collect();
    dnn.prepare(&calls, &|| device.bind().map_err(|e| e.to_string()));
    let stats = dnn.prepare_stats();
    println!("prepared {} plans in {:.1} ms wall ({:.1} ms summed over plans, slowest {:.1} ms)", stats.shapes, stats.wall_ms, stats.ms, stats.slowest_ms);
    let mut failures = Vec::new();
    if dnn.shapes() != cases.len() {
        failures.push(format!("{} plans after prepare, expected {}", dnn.shapes(), cases.len()));
    }
    for (name, call, bufs, want, ys) in &cases {
        if let Err(e) = dnn.conv(call, device.cu_stream(), &ptr_of(bufs)) {
            failures.push(format!("{name}: {e}"));
            continue;
        }
        device.synchronize().unwrap();
        let got = TensorData::from_le_bytes(dtype, &device.download(&bufs[4], want.len() * 2).unwrap()).unwrap().to_f64_vec();
        let got = from_channels_last(&got, *ys);
        let as_tensor = |v: &[f64]| Tensor::new(ys.to_vec(), TensorData::from_f64(DType::F64, v));
        let (_, max_abs, l2) = errors(&as_tensor(&got), &as_tensor(want));
        let prepared = dnn.choice(call).expect("the call ran");
        let serial = Dnn::new(AlgoSearch::Heuristic);
        serial.conv(call, device.cu_stream(), &ptr_of(bufs)).unwrap();
        let alone = serial.choice(call).expect("the call ran");
        println!("{name:<26} {max_abs:>9.2e} {l2:>9.2e} {:<7} {:<40} {:>6.1}ms", prepared.api, prepared.algo, prepared.choose_ms);
        if l2 > F16_L2 {
            failures.push(format!("{name}: max_abs {max_abs:.3e}, l2_rel {l2:.3e} ({} {})", prepared.api, prepared.algo));
        }
        if (prepared.api, &prepared.algo) != (alone.api, &alone.algo) {
            failures.push(format!("{name}: prepared {} {}, built alone {} {}", prepared.api, prepared.algo, alone.api, alone.algo));
        }
    }
    if dnn.shapes() != cases.len() {
        failures.push(format!("{} plans after the calls, expected {} (the calls rebuilt some)", dnn.shapes(), cases.len()));
    }
    device.synchronize().unwrap();
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// Device buffers for the timing run (one layout).
struct Buffers {
    x: DeviceBuffer,
    w: DeviceBuffer,
    y: DeviceBuffer,
    /// A second output, to time calls whose variant pack must be rebuilt.
    y2: DeviceBuffer,
}

#[test]
fn conv_timing() {
    if std::env::var("QUILT_CONV_BENCH").as_deref() != Ok("1") {
        println!("skipped: set QUILT_CONV_BENCH=1 to time convolutions");
        return;
    }
    let device = match CudaDevice::new(0) {
        Ok(d) => d,
        Err(e) => {
            println!("SKIPPED (no GPU): {e}");
            return;
        }
    };
    device.bind().unwrap();
    let version = cudnn::library().expect("the timing run needs cuDNN");
    let blas = Blas::new(&device).unwrap();
    // (name, N, C, M, k, stride, pad, H=W): the SD 1.5 UNet's convolutions at batch 2, 64²
    // latent, and the VAE decoder's at batch 1, 64² → 512².
    let shapes: &[ConvShape] = &[
        ("unet conv_in 4->320 @64", 2, 4, 320, 3, 1, 1, 64),
        ("unet 320->320 @64", 2, 320, 320, 3, 1, 1, 64),
        ("unet 640->640 @32", 2, 640, 640, 3, 1, 1, 32),
        ("unet 1280->1280 @16", 2, 1280, 1280, 3, 1, 1, 16),
        ("unet 1280->1280 @8", 2, 1280, 1280, 3, 1, 1, 8),
        ("unet 2560->1280 @8", 2, 2560, 1280, 3, 1, 1, 8),
        ("unet 640->320 1x1 @64", 2, 640, 320, 1, 1, 0, 64),
        ("unet conv_out 320->4 @64", 2, 320, 4, 3, 1, 1, 64),
        ("vae 512->512 @64", 1, 512, 512, 3, 1, 1, 64),
        ("vae 512->512 @128", 1, 512, 512, 3, 1, 1, 128),
        ("vae 512->512 @256", 1, 512, 512, 3, 1, 1, 256),
        ("vae 512->256 @256", 1, 512, 256, 3, 1, 1, 256),
        ("vae 256->256 @256", 1, 256, 256, 3, 1, 1, 256),
        ("vae 256->128 @512", 1, 256, 128, 3, 1, 1, 512),
        ("vae 128->128 @512", 1, 128, 128, 3, 1, 1, 512),
        ("vae 128->3 @512", 1, 128, 3, 3, 1, 1, 512),
    ];
    let dtype = DType::F16;
    let out_path = std::env::var("QUILT_CONV_BENCH_OUT").ok();
    let mut json = String::new();
    println!("device: {}, cuDNN {version}; f16, bias on; ms per call (median of 5 × mean of 20, host-synchronised)", device.name);
    println!(
        "{:<26} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8}  engines: nhwc / nhwc bench / nchw",
        "conv", "GFLOP", "g_nhwc", "g_nhwc+r", "g_nhwc_b", "g_nchw", "legacy", "im2col", "vp_ms", "l2", "choose"
    );
    let mut rng = Rng::new(7);
    for &(name, n, c, m, k, s, p, hw) in shapes {
        let oh = (hw + 2 * p - k) / s + 1;
        let (xs, ws, ys) = ([n, c, hw, hw], [m, c, k, k], [n, m, oh, oh]);
        let g = ConvGeometry::new(&[s, s], &[p, p, p, p], &[1, 1], 1, &xs, &ws, &ys).unwrap();
        let up = |v: &[f64]| device.upload(&TensorData::from_f64(dtype, v).to_le_bytes()).unwrap();
        let x = rounded(&(0..xs.iter().product()).map(|_| rng.normal()).collect::<Vec<_>>(), dtype);
        let w = rounded(&(0..ws.iter().product()).map(|_| rng.normal() / ((c * k * k) as f64).sqrt()).collect::<Vec<_>>(), dtype);
        let y_bytes = g.out_elems() * dtype.size_bytes();
        let nchw = Buffers { x: up(&x), w: up(&w), y: device.alloc(y_bytes).unwrap(), y2: device.alloc(y_bytes).unwrap() };
        let nhwc = Buffers { x: up(&to_channels_last(&x, xs)), w: up(&to_channels_last(&w, ws)), y: device.alloc(y_bytes).unwrap(), y2: device.alloc(y_bytes).unwrap() };
        let b = up(&(0..m).map(|_| rng.normal() * 0.5).collect::<Vec<_>>());
        let r = device.upload(&vec![0u8; y_bytes]).unwrap();
        let ptrs = |bufs: &Buffers, second: bool| {
            let (x, w, y, y2, b, r) = (bufs.x.ptr, bufs.w.ptr, bufs.y.ptr, bufs.y2.ptr, b.ptr, r.ptr);
            move |a: Arg| match a {
                Arg::In(0) => x,
                Arg::In(1) => w,
                Arg::In(2) => b,
                Arg::In(3) => r,
                Arg::Out(0) => if second { y2 } else { y },
                other => panic!("unexpected argument {other:?}"),
            }
        };
        let read = |buf: &DeviceBuffer, channels_last: bool| {
            let v = TensorData::from_le_bytes(dtype, &device.download(buf, y_bytes).unwrap()).unwrap().to_f64_vec();
            if channels_last { from_channels_last(&v, ys) } else { v }
        };
        // im2col + cuBLAS: the step's own kernels and launch plan (the reference for the others).
        let op = Op::Conv { strides: vec![s, s], pads: vec![p; 4], dilations: vec![1, 1], group: 1, channels_last: false };
        let t = Types { ins: vec![Some(dtype); 3], in_ranks: vec![4, 4, 1], outs: vec![dtype], out_ranks: vec![4], prefix: "q".into() };
        let code = ConvCode::new(&op, &t).unwrap();
        let compiled = nvrtc::compile_cached(&module_source(code.kernels()), "conv.cu", device.arch).unwrap();
        let names: Vec<&str> = code.kernels().iter().map(|k| k.name.as_str()).collect();
        let functions = device.load_module(&compiled.cubin, &names).unwrap();
        let lp = code.im2col_plan(&g).unwrap();
        let scratch: Vec<DeviceBuffer> = lp.scratch.iter().map(|&n| device.alloc(n).unwrap()).collect();
        let view = |d: &DeviceBuffer| DeviceBuffer::borrowed(&device, d.ptr, d.bytes);
        let bench = Bench { device: device.clone(), x: view(&nchw.x), w: view(&nchw.w), b: view(&b), y: view(&nchw.y) };
        let im2col_ms = time_ms(&device, 20, 5, || bench.im2col(&lp, &functions, &blas, &scratch));
        let reference = read(&nchw.y, false);
        let l2 = |got: &[f64]| {
            let (num, den) = got.iter().zip(&reference).fold((0f64, 0f64), |(n, d), (a, b)| (n + (a - b) * (a - b), d + b * b));
            (num / den).sqrt()
        };
        let base = ConvCall::new(g, dtype, true).unwrap();
        let mut l2_worst = 0f64;
        // (label, call, layout buffers, search) → (ms, choice)
        let mut time_call = |call: &ConvCall, bufs: &Buffers, search: AlgoSearch| {
            let dnn = Dnn::new(search);
            let first = ptrs(bufs, false);
            let ms = time_ms(&device, 20, 5, || dnn.conv(call, device.cu_stream(), &first).unwrap());
            if call.residual.is_none() {
                l2_worst = l2_worst.max(l2(&read(&bufs.y, call.layout == ConvLayout::Nhwc)));
            }
            (ms, dnn.choice(call).unwrap(), dnn)
        };
        let g_nhwc = time_call(&base.clone().nhwc(), &nhwc, AlgoSearch::Heuristic);
        let g_nhwc_r = time_call(&base.clone().nhwc().with_residual(Arg::In(3)), &nhwc, AlgoSearch::Heuristic);
        let g_nhwc_b = time_call(&base.clone().nhwc(), &nhwc, AlgoSearch::Benchmark);
        let g_nchw = time_call(&base, &nchw, AlgoSearch::Heuristic);
        let legacy = time_call(&base.clone().legacy(), &nchw, AlgoSearch::Heuristic);
        // Alternating outputs: every call rebuilds the graph API's variant pack.
        let vp_ms = {
            let call = base.clone().nhwc();
            let dnn = &g_nhwc.2;
            let (a, bb) = (ptrs(&nhwc, false), ptrs(&nhwc, true));
            let mut flip = false;
            time_ms(&device, 20, 5, || {
                flip = !flip;
                dnn.conv(&call, device.cu_stream(), if flip { &a as &dyn Fn(Arg) -> u64 } else { &bb }).unwrap()
            })
        };
        let gflop = g.flops() / 1e9;
        let eng = |c: &cudnn::ConvChoice| if c.api == "graph" { c.algo.clone() } else { format!("legacy:{}", c.algo) };
        println!(
            "{name:<26} {gflop:>7.2} {:>8.4} {:>8.4} {:>8.4} {:>8.4} {:>8.4} {im2col_ms:>8.4} {vp_ms:>8.4} {l2_worst:>7.1e} {:>6.0}ms  {} / {} / {}",
            g_nhwc.0, g_nhwc_r.0, g_nhwc_b.0, g_nchw.0, legacy.0, g_nhwc.1.choose_ms, eng(&g_nhwc.1), eng(&g_nhwc_b.1), eng(&g_nchw.1)
        );
        for (what, ch) in [("nhwc", &g_nhwc.1), ("nhwc+r", &g_nhwc_r.1), ("nchw", &g_nchw.1)] {
            if let Some(f) = &ch.fallback {
                println!("    {what}: graph API declined: {f}");
            }
        }
        json += &format!(
            "{{\"conv\":\"{name}\",\"n\":{n},\"c\":{c},\"m\":{m},\"k\":{k},\"hw\":{hw},\"gflop\":{gflop:.4},\"graph_nhwc_ms\":{:.5},\"graph_nhwc_residual_ms\":{:.5},\"graph_nhwc_benchmark_ms\":{:.5},\"graph_nchw_ms\":{:.5},\"legacy_nchw_ms\":{:.5},\"im2col_nchw_ms\":{im2col_ms:.5},\"graph_nhwc_new_variant_pack_ms\":{vp_ms:.5},\"engine_nhwc\":\"{}\",\"engine_nhwc_residual\":\"{}\",\"engine_nhwc_benchmark\":\"{}\",\"engine_nchw\":\"{}\",\"legacy_algo\":\"{}\",\"workspace_nhwc\":{},\"workspace_nchw\":{},\"skipped_nhwc\":{},\"choose_ms_nhwc\":{:.2},\"choose_ms_nhwc_benchmark\":{:.2},\"l2_rel_vs_im2col\":{l2_worst:.3e}}}\n",
            g_nhwc.0, g_nhwc_r.0, g_nhwc_b.0, g_nchw.0, legacy.0,
            eng(&g_nhwc.1), eng(&g_nhwc_r.1), eng(&g_nhwc_b.1), eng(&g_nchw.1), legacy.1.algo,
            g_nhwc.1.workspace_bytes, g_nchw.1.workspace_bytes, g_nhwc.1.skipped, g_nhwc.1.choose_ms, g_nhwc_b.1.choose_ms
        );
        assert!(l2_worst < 2e-3, "{name}: cuDNN vs im2col l2_rel {l2_worst:e}");
    }
    if let Some(p) = out_path {
        std::fs::write(&p, json).unwrap();
    }
}

/// `plan` (one Conv step, from `conv_plan`) with a residual: plan input "r" of the output's type
/// as the step's input 3 (what `quilt_rewrites::epilogue` makes of `conv(x) + r`).
fn with_residual_input(mut plan: Plan) -> Plan {
    let Step::Op(s) = &plan.steps[0];
    let ty = plan.buffers[s.outputs[0]].ty.clone();
    plan.buffers.push(Buffer { ty, kind: BufferKind::Input(1) });
    let r = plan.buffers.len() - 1;
    plan.inputs.push(PlanValue { name: "r".into(), buffer: r });
    let Step::Op(s) = &mut plan.steps[0];
    s.inputs.resize(3, None);
    s.inputs.push(Some(r));
    plan
}

/// Residual convolutions (`Op::Conv` input 3) on the GPU against the CPU reference: a ResNet
/// block's 3×3 `conv2` with bias and its 1×1 shortcut without, channels-last (and NCHW, which
/// also runs on cuDNN when a residual is present), f32/f16/bf16, at two shapes from one plan
/// plus a repeat of the first; tolerances as above (f32 elementwise, 16-bit L2-relative). Every
/// run must go through cuDNN (the residual is in its epilogue, or `cudnnAddTensor` after it).
#[test]
fn residual_convs_match_the_cpu_reference() {
    let Some(device) = gpu_with_cudnn() else { return };
    let c = |name, c, m, k, pads, bias, shapes| Case { name, c, m, k, strides: &[1, 1], pads, dilations: &[1, 1], group: 1, bias, shapes, cudnn: true };
    let cases = [
        c("conv2 64->64 3x3 + r", 64, 64, &[3, 3], &[1, 1, 1, 1], true, [(2, 16, 16), (1, 24, 20)]),
        c("shortcut 32->64 1x1 + r", 32, 64, &[1, 1], &[0, 0, 0, 0], false, [(1, 9, 7), (2, 16, 12)]),
        c("proj_out 320->320 1x1 + r", 320, 320, &[1, 1], &[0, 0, 0, 0], true, [(2, 8, 8), (1, 12, 10)]),
    ];
    let mut rng = Rng::new(0x2E51D);
    let mut failures = Vec::new();
    for case in &cases {
        for (dtype, channels_last) in [(DType::F16, true), (DType::BF16, true), (DType::F32, true), (DType::F16, false)] {
            let plan = with_residual_input(conv_plan(case, dtype, channels_last, &mut rng));
            let cpu = CpuExecutable::new(plan.clone()).unwrap_or_else(|e| panic!("{}: cpu: {e}", case.name));
            let gpu = CudaExecutable::with_device(plan, device.clone()).unwrap_or_else(|e| panic!("{}: gpu: {e}", case.name));
            for &(n, h, w) in [case.shapes[0], case.shapes[1], case.shapes[0]].iter() {
                let lay = |ch: usize| if channels_last { vec![n, h, w, ch] } else { vec![n, ch, h, w] };
                let x = random_tensor(lay(case.c), 1.0, dtype, &mut rng);
                let r = random_tensor(lay(case.m), 1.0, dtype, &mut rng);
                let inputs = [x, r];
                let before = cudnn::calls();
                let got = match gpu.run(&inputs) {
                    Ok(mut v) => v.remove(0),
                    Err(e) => {
                        failures.push(format!("{} {dtype} {:?}: {e}", case.name, inputs[0].shape));
                        continue;
                    }
                };
                let used_cudnn = cudnn::calls() > before;
                let want = cpu.run(&inputs).unwrap().remove(0);
                let (within, max_abs, l2) = errors(&got, &want);
                let layout = if channels_last { "nhwc" } else { "nchw" };
                println!("{:<28} {dtype:<5} {layout} {:?}: max_abs {max_abs:.2e}, l2_rel {l2:.2e}, cudnn {used_cudnn}", case.name, inputs[0].shape);
                let ok = match dtype {
                    DType::F32 => within,
                    DType::BF16 => l2 <= BF16_L2,
                    _ => l2 <= F16_L2,
                };
                if !ok || !used_cudnn {
                    failures.push(format!("{} {dtype} {layout} {:?}: max_abs {max_abs:.3e}, l2_rel {l2:.3e}, cudnn {used_cudnn}", case.name, inputs[0].shape));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
