//! On a GPU: ONNX Conv through `CudaExecutable` (cuDNN when libcudnn 9 loads, else im2col +
//! cuBLAS) against the CPU interpreter, on SD-shaped convolutions (3×3 pad 1 stride 1 and 2,
//! 1×1, conv_in/conv_out channel counts, groups with dilation, 1-D, with and without bias) at
//! odd spatial sizes and batch 1 and 2. Each case is ONE prepared plan with symbolic N, H, W run
//! at two shapes and then at the first again, so the per-shape algorithm cache is exercised.
//! - f32: |gpu − cpu| ≤ 1e-4 + 1e-3·|cpu| elementwise (TF32 must be off).
//! - f16 (weights, inputs, output stored as f16 on both backends, f32 math): ‖gpu − cpu‖₂/‖cpu‖₂ ≤ 2e-3.
//!
//! Inputs are seeded normal values, weights scaled by 1/√(C·kh·kw) so outputs are O(1). When
//! cuDNN loads, every case except the asymmetric-pad one must have gone through it (counted by
//! `conv::cudnn::calls`; the test sets the conv policy to cuDNN unless `QUILT_CONV` is set, and
//! with `QUILT_CONV=im2col` none may). Without a GPU the test prints that it was skipped.
//!
//! `QUILT_CONV_BENCH=1` adds a timing run (`conv_timing`): the SD UNet's conv shapes at batch 2,
//! 64² latents, cuDNN (heuristic and benchmarked algorithm, NCHW; heuristic NHWC) vs the im2col
//! path, f32 and f16, called directly on device buffers, each checked against the im2col result;
//! `tests/bench/conv_gpu.sh` runs it with PyTorch's numbers.

use std::sync::Arc;
use std::time::Instant;

use quilt_kernels::cpu::CpuExecutable;
use quilt_kernels::cuda::codegen::{module_source, Action, Arg, LaunchPlan, StepCode, Types, Work, BLOCK};
use quilt_kernels::cuda::conv::cudnn::{self, AlgoSearch, ConvCall, Dnn};
use quilt_kernels::cuda::conv::{policy, prefers_cudnn, set_policy, ConvCode, ConvGeometry, ConvPolicy, CUDNN_DISPATCHED};
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
fn conv_plan(case: &Case, dtype: DType, rng: &mut Rng) -> Plan {
    let two_d = case.k.len() == 2;
    let spatial_syms: Vec<SymDim> = if two_d { vec![SymDim::sym("H"), SymDim::sym("W")] } else { vec![SymDim::sym("W")] };
    let mut x_shape = vec![SymDim::sym("N"), SymDim::from(case.c)];
    x_shape.extend(spatial_syms.iter().cloned());
    let kk: usize = case.k.iter().product();
    let mut w_shape = vec![case.m, case.c / case.group];
    w_shape.extend(case.k.iter().copied());
    let w = random_tensor(w_shape, 1.0 / ((case.c / case.group * kk) as f64).sqrt(), dtype, rng);
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
    buffers.push(Buffer { ty: TensorType::new(dtype, y_shape), kind: BufferKind::Intermediate });
    let y = buffers.len() - 1;
    let op = Op::Conv { strides: case.strides.to_vec(), pads: case.pads.to_vec(), dilations: case.dilations.to_vec(), group: case.group };
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
    let expect_cudnn = lib.is_ok() && policy() == ConvPolicy::Cudnn && CUDNN_DISPATCHED;
    println!("conv policy: {:?}", policy());
    println!("device: {} (sm_{}{}); cuDNN: {}", device.name, device.arch.0, device.arch.1, match &lib {
        Ok(v) => format!("{v}"),
        Err(e) => format!("not loaded ({e}): im2col path"),
    });
    let mut failures = Vec::new();
    let mut rng = Rng::new(20261125);
    println!("{:<32} {:<5} {:<14} {:>10} {:>10} {:>8}", "case", "dtype", "x shape", "max_abs", "l2_rel", "cudnn");
    for case in cases() {
        for dtype in [DType::F32, DType::F16] {
            let plan = conv_plan(&case, dtype, &mut rng);
            let cpu = CpuExecutable::new(plan.clone()).unwrap_or_else(|e| panic!("{}: cpu: {e}", case.name));
            let gpu = CudaExecutable::with_device(plan, device.clone()).unwrap_or_else(|e| panic!("{}: gpu: {e}", case.name));
            let runs = [case.shapes[0], case.shapes[1], case.shapes[0]];
            let mut first: Option<Tensor> = None;
            for (r, &(n, h, w)) in runs.iter().enumerate() {
                let shape = if case.k.len() == 2 { vec![n, case.c, h, w] } else { vec![n, case.c, w] };
                // The third run repeats the first shape (and input): a cache hit.
                let x = if r == 2 { first.clone().expect("first input kept") } else { random_tensor(shape.clone(), 1.0, dtype, &mut rng) };
                if r == 0 {
                    first = Some(x.clone());
                }
                let before = cudnn::calls();
                let got = match gpu.run(std::slice::from_ref(&x)) {
                    Ok(mut v) => v.remove(0),
                    Err(e) => {
                        failures.push(format!("{} {dtype} {shape:?}: {e}", case.name));
                        continue;
                    }
                };
                let used_cudnn = cudnn::calls() > before;
                let want = cpu.run(std::slice::from_ref(&x)).unwrap_or_else(|e| panic!("{}: cpu: {e}", case.name)).remove(0);
                let (within, max_abs, l2) = errors(&got, &want);
                println!("{:<32} {:<5} {:<14} {max_abs:>10.2e} {l2:>10.2e} {:>8}", case.name, format!("{dtype}"), format!("{shape:?}"), used_cudnn);
                let ok = if dtype == DType::F32 { within } else { l2 <= F16_L2 };
                if !ok {
                    failures.push(format!("{} {dtype} {shape:?}: max_abs {max_abs:.3e}, l2_rel {l2:.3e}", case.name));
                }
                if used_cudnn != (expect_cudnn && case.cudnn) {
                    failures.push(format!("{} {dtype} {shape:?}: cuDNN used = {used_cudnn}, expected {}", case.name, expect_cudnn && case.cudnn));
                }
            }
        }
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
                    let grid = match *work {
                        Work::Elements(n) => n.div_ceil(BLOCK as u64).clamp(1, 1 << 16) as u32,
                        Work::Rows(n) => n.clamp(1, 1 << 20) as u32,
                    };
                    let ptrs: Vec<u64> = args.iter().map(|&a| self.ptr(a, scratch)).collect();
                    self.device.launch(&functions[*kernel], grid, BLOCK, params, &ptrs).unwrap();
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
    // (name, C, M, k, stride, pad, H=W) at batch 2: the SD 1.5 UNet's convolutions at a 64² latent.
    let shapes: [(&str, usize, usize, usize, usize, usize, usize); 9] = [
        ("conv_in 4->320 3x3 @64", 4, 320, 3, 1, 1, 64),
        ("320->320 3x3 @64", 320, 320, 3, 1, 1, 64),
        ("320->320 3x3 s2 @64", 320, 320, 3, 2, 1, 64),
        ("640->640 3x3 @32", 640, 640, 3, 1, 1, 32),
        ("1280->1280 3x3 @16", 1280, 1280, 3, 1, 1, 16),
        ("1280->1280 3x3 @8", 1280, 1280, 3, 1, 1, 8),
        ("2560->1280 3x3 @8", 2560, 1280, 3, 1, 1, 8),
        ("640->320 1x1 @64", 640, 320, 1, 1, 0, 64),
        ("conv_out 320->4 3x3 @64", 320, 4, 3, 1, 1, 64),
    ];
    let out_path = std::env::var("QUILT_CONV_BENCH_OUT").ok();
    let mut json = String::new();
    println!("device: {}, cuDNN {version}; batch 2, bias on; ms per call (median of 5 × mean of 20)", device.name);
    println!("{:<26} {:<4} {:>7} {:>9} {:>9} {:>9} {:>9} {:<6} {:<50} {:>8} {:>9}", "conv", "dt", "GFLOP", "im2col", "heur", "bench", "nhwc", "auto", "algo heur / bench / nhwc", "l2_rel", "choose_ms");
    let mut rng = Rng::new(7);
    for &(name, c, m, k, s, p, hw) in &shapes {
        for dtype in [DType::F32, DType::F16] {
            let oh = (hw + 2 * p - k) / s + 1;
            let (xs, ws, ys) = ([2, c, hw, hw], [m, c, k, k], [2, m, oh, oh]);
            let g = ConvGeometry::new(&[s, s], &[p, p, p, p], &[1, 1], 1, &xs, &ws, &ys).unwrap();
            let up = |t: Tensor| device.upload(&t.data.to_le_bytes()).unwrap();
            let bench = Bench {
                device: device.clone(),
                x: up(random_tensor(xs.to_vec(), 1.0, dtype, &mut rng)),
                w: up(random_tensor(ws.to_vec(), 1.0 / ((c * k * k) as f64).sqrt(), dtype, &mut rng)),
                b: up(random_tensor(vec![m], 0.5, dtype, &mut rng)),
                y: device.alloc(g.out_elems() * dtype.size_bytes()).unwrap(),
            };
            let read_y = || TensorData::from_le_bytes(dtype, &device.download(&bench.y, bench.y.bytes).unwrap()).unwrap().to_f64_vec();
            // im2col + cuBLAS: the step's own kernels and launch plan.
            let op = Op::Conv { strides: vec![s, s], pads: vec![p; 4], dilations: vec![1, 1], group: 1 };
            let t = Types { ins: vec![Some(dtype); 3], in_ranks: vec![4, 4, 1], outs: vec![dtype], out_ranks: vec![4], prefix: "q".into() };
            let code = ConvCode::new(&op, &t).unwrap();
            let compiled = nvrtc::compile_cached(&module_source(code.kernels()), "conv.cu", device.arch).unwrap();
            let names: Vec<&str> = code.kernels().iter().map(|k| k.name.as_str()).collect();
            let functions = device.load_module(&compiled.cubin, &names).unwrap();
            let lp = code.im2col_plan(&g).unwrap();
            let scratch: Vec<DeviceBuffer> = lp.scratch.iter().map(|&n| device.alloc(n).unwrap()).collect();
            let im2col_ms = time_ms(&device, 20, 5, || bench.im2col(&lp, &functions, &blas, &scratch));
            let reference = read_y();
            let call = ConvCall::new(g, dtype, true).unwrap();
            let ptr = |a: Arg| bench.ptr(a, &[]);
            let mut row = Vec::new();
            let mut l2_worst = 0f64;
            let l2 = |got: &[f64]| {
                let (num, den) = got.iter().zip(&reference).fold((0f64, 0f64), |(n, d), (a, b)| (n + (a - b) * (a - b), d + b * b));
                (num / den).sqrt()
            };
            for search in [AlgoSearch::Heuristic, AlgoSearch::Benchmark] {
                let dnn = Dnn::new(search);
                let ms = time_ms(&device, 20, 5, || dnn.conv(&call, device.cu_stream(), &ptr).unwrap());
                l2_worst = l2_worst.max(l2(&read_y()));
                row.push((ms, dnn.choice(&call).unwrap()));
            }
            // Channels-last: x and w transposed on the host, y transposed back for the check.
            let nhwc = {
                let host_x = TensorData::from_le_bytes(dtype, &device.download(&bench.x, bench.x.bytes).unwrap()).unwrap().to_f64_vec();
                let host_w = TensorData::from_le_bytes(dtype, &device.download(&bench.w, bench.w.bytes).unwrap()).unwrap().to_f64_vec();
                let xt = up(Tensor::new(vec![xs.iter().product()], TensorData::from_f64(dtype, &to_channels_last(&host_x, xs))));
                let wt = up(Tensor::new(vec![ws.iter().product()], TensorData::from_f64(dtype, &to_channels_last(&host_w, ws))));
                let yt = device.alloc(bench.y.bytes).unwrap();
                let p = |a: Arg| match a {
                    Arg::In(0) => xt.ptr,
                    Arg::In(1) => wt.ptr,
                    Arg::Out(0) => yt.ptr,
                    other => bench.ptr(other, &[]),
                };
                let call = call.clone().nhwc();
                let dnn = Dnn::new(AlgoSearch::Heuristic);
                let ms = time_ms(&device, 20, 5, || dnn.conv(&call, device.cu_stream(), &p).unwrap());
                let got = TensorData::from_le_bytes(dtype, &device.download(&yt, yt.bytes).unwrap()).unwrap().to_f64_vec();
                l2_worst = l2_worst.max(l2(&from_channels_last(&got, ys)));
                (ms, dnn.choice(&call).unwrap())
            };
            let gflop = g.flops() / 1e9;
            let auto = if prefers_cudnn(&g) { "cudnn" } else { "im2col" };
            let algo = |c: &cudnn::ConvChoice| format!("{}{}", c.algo.replace("IMPLICIT_", "I").replace("PRECOMP_", "P"), if c.fused_bias { "+b" } else { "" });
            println!(
                "{name:<26} {:<4} {gflop:>7.2} {im2col_ms:>9.4} {:>9.4} {:>9.4} {:>9.4} {auto:<6} {:<50} {l2_worst:>8.1e} {:>4.1}/{:<4.1}",
                format!("{dtype}"),
                row[0].0,
                row[1].0,
                nhwc.0,
                format!("{} / {} / {}", algo(&row[0].1), algo(&row[1].1), algo(&nhwc.1)),
                row[0].1.choose_ms,
                row[1].1.choose_ms
            );
            json += &format!(
                "{{\"conv\":\"{name}\",\"dtype\":\"{dtype}\",\"gflop\":{gflop:.4},\"im2col_ms\":{im2col_ms:.5},\"cudnn_heuristic_ms\":{:.5},\"cudnn_benchmark_ms\":{:.5},\"algo_heuristic\":\"{}\",\"algo_benchmark\":\"{}\",\"workspace_heuristic\":{},\"workspace_benchmark\":{},\"fused_bias_heuristic\":{},\"choose_ms_heuristic\":{:.3},\"choose_ms_benchmark\":{:.3},\"l2_rel_vs_im2col\":{l2_worst:.3e},\"cudnn_nhwc_ms\":{:.5},\"algo_nhwc\":\"{}\",\"auto\":\"{auto}\"}}\n",
                row[0].0, row[1].0, row[0].1.algo, row[1].1.algo, row[0].1.workspace_bytes, row[1].1.workspace_bytes, row[0].1.fused_bias, row[0].1.choose_ms, row[1].1.choose_ms, nhwc.0, nhwc.1.algo
            );
            assert!(l2_worst < if dtype == DType::F32 { 1e-5 } else { 2e-3 }, "{name} {dtype}: cuDNN vs im2col l2_rel {l2_worst:e}");
        }
    }
    if let Some(p) = out_path {
        std::fs::write(&p, json).unwrap();
    }
}
