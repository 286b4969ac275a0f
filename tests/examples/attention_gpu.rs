//! Times the CUDA backend's `Op::Attention` kernels at SD's attention shapes and prints one JSON
//! line per case.
//!
//!   attention_gpu [--reps N]
//!
//! Each case is a plan of `1 + N` chained attention steps (packed heads [B, L, H·D], each step's
//! query is the previous step's output; k and v are shared), run through `CudaExecutable`. A plan
//! of one step is timed the same way, and the kernel time is `(T(1 + N) − T(1)) / N`: the host
//! copies, allocations and launch overheads common to both cancel, and launches are queued
//! asynchronously, so what remains is the GPU time per attention call. Each T is the median of
//! 5 runs after a warm-up. Also printed: the FLOP floor `4·B·H·N·M·D / 700 TFLOP/s` (dense f16
//! tensor-core rate of an H100 SXM without sparsity) and the achieved TFLOP/s.
//!
//! Built as a cargo example of `quilt-tests` so CI compiles it; run on the GPU machine by
//! `tests/bench/attention_gpu.sh`, which times PyTorch's SDPA at the same shapes in the same call.

use std::time::Instant;

use quilt_kernels::cuda::{CudaDevice, CudaExecutable};
use quilt_models::random::Rng;
use quilt_rewrites::plan::{Buffer, BufferKind, OpStep, PlanValue, Step};
use quilt_rewrites::{DType, Op, Plan, SymDim, Tensor, TensorData, TensorType};

const PEAK_TFLOPS: f64 = 700.0;

struct Shape {
    name: &'static str,
    dtype: DType,
    b: usize,
    h: usize,
    n: usize,
    m: usize,
    d: usize,
}

fn shapes() -> Vec<Shape> {
    let s = |name, dtype, b, h, n, m, d| Shape { name, dtype, b, h, n, m, d };
    vec![
        s("sd15_64x64_self", DType::F16, 2, 8, 4096, 4096, 40),
        s("sd15_64x64_cross", DType::F16, 2, 8, 4096, 77, 40),
        s("sd15_32x32_self", DType::F16, 2, 8, 1024, 1024, 80),
        s("sd15_32x32_cross", DType::F16, 2, 8, 1024, 77, 80),
        s("sd15_16x16_self", DType::F16, 2, 8, 256, 256, 160),
        s("d160_n1024_self", DType::F16, 2, 8, 1024, 1024, 160),
        s("d64_n4096_self", DType::F16, 2, 10, 4096, 4096, 64),
        s("d128_n4096_self", DType::F16, 2, 8, 4096, 4096, 128),
        s("sd15_64x64_self_bf16", DType::BF16, 2, 8, 4096, 4096, 40),
        s("sd15_64x64_self_f32_plain", DType::F32, 2, 8, 4096, 4096, 40),
    ]
}

/// q → attention → … (`steps` times), k and v shared.
fn chained_plan(sh: &Shape, steps: usize) -> Plan {
    let ty = |rows: usize| TensorType::new(sh.dtype, [sh.b, rows, sh.h * sh.d].iter().map(|&d| SymDim::from(d)).collect());
    let mut plan = Plan::default();
    for (i, (name, rows)) in [("q", sh.n), ("k", sh.m), ("v", sh.m)].into_iter().enumerate() {
        plan.buffers.push(Buffer { ty: ty(rows), kind: BufferKind::Input(i) });
        plan.inputs.push(PlanValue { name: name.into(), buffer: i });
    }
    let op = Op::Attention { scale: 1.0 / (sh.d as f32).sqrt(), heads: Some(sh.h), columns: None };
    let mut q = 0;
    for s in 0..steps {
        plan.buffers.push(Buffer { ty: ty(sh.n), kind: BufferKind::Intermediate });
        let out = plan.buffers.len() - 1;
        plan.steps.push(Step::Op(OpStep { node: format!("attention{s}"), op: op.clone(), inputs: vec![Some(q), Some(1), Some(2)], outputs: vec![out] }));
        q = out;
    }
    plan.outputs.push(PlanValue { name: "out".into(), buffer: q });
    plan
}

fn median_ms(exe: &CudaExecutable, inputs: &[Tensor]) -> Result<f64, String> {
    exe.run(inputs).map_err(|e| e.to_string())?;
    let mut t: Vec<f64> = (0..5)
        .map(|_| {
            let s = Instant::now();
            exe.run(inputs).map(|_| s.elapsed().as_secs_f64() * 1e3).map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    t.sort_by(f64::total_cmp);
    Ok(t[2])
}

fn main() {
    let mut reps = 50usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--reps" => reps = args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| die("--reps needs a number")),
            other => die(&format!("unknown argument {other}; usage: attention_gpu [--reps N]")),
        }
    }
    let device = CudaDevice::new(0).unwrap_or_else(|e| die(&format!("no GPU: {e}")));
    eprintln!("device: {} (sm_{}{})", device.name, device.arch.0, device.arch.1);
    for sh in shapes() {
        let mut rng = Rng::new(7);
        let inputs: Vec<Tensor> = [sh.n, sh.m, sh.m]
            .iter()
            .map(|&rows| {
                let vals: Vec<f64> = (0..sh.b * rows * sh.h * sh.d).map(|_| rng.normal()).collect();
                Tensor::new(vec![sh.b, rows, sh.h * sh.d], TensorData::from_f64(sh.dtype, &vals))
            })
            .collect();
        let timed = |steps: usize| -> Result<f64, String> {
            let exe = CudaExecutable::with_device(chained_plan(&sh, steps), device.clone()).map_err(|e| e.to_string())?;
            median_ms(&exe, &inputs)
        };
        let result = timed(1).and_then(|t1| timed(1 + reps).map(|tn| (t1, tn)));
        let flops = 4.0 * (sh.b * sh.h * sh.n * sh.m * sh.d) as f64;
        let floor_us = flops / (PEAK_TFLOPS * 1e12) * 1e6;
        match result {
            Ok((t1, tn)) => {
                let us = (tn - t1) / reps as f64 * 1e3;
                println!(
                    "{{\"case\":\"{}\",\"dtype\":\"{}\",\"b\":{},\"h\":{},\"n\":{},\"m\":{},\"d\":{},\"quilt_us\":{us:.1},\"floor_us\":{floor_us:.1},\"tflops\":{:.1},\"reps\":{reps},\"run1_ms\":{t1:.2}}}",
                    sh.name,
                    sh.dtype,
                    sh.b,
                    sh.h,
                    sh.n,
                    sh.m,
                    sh.d,
                    flops / (us * 1e-6) / 1e12
                );
            }
            Err(e) => println!("{{\"case\":\"{}\",\"error\":{:?}}}", sh.name, e),
        }
    }
}

fn die(msg: &str) -> ! {
    eprintln!("attention_gpu: {msg}");
    std::process::exit(2)
}
