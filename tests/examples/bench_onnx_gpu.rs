//! Times one ONNX model end to end through quilt's CUDA backend and prints one JSON line.
//!
//!   bench_onnx_gpu MODEL.onnx --dims name=v,... [--iters N] [--inputs DIR] [--reference FILE]
//!
//! The model is loaded with its external data (next to the file), imported strictly, optimized
//! (`quilt_rewrites::optimize`) and handed to `CudaExecutable::new`, whose time is reported as
//! `prepare_s` (the session-creation analogue: codegen, NVRTC, weight upload). `--dims` binds the
//! model's symbolic input dims (ONNX dim_param names, e.g. `batch_size=2,height=64`). Inputs are
//! raw little-endian f32 files `DIR/<input name>.bin` when `--inputs` is given, else seeded random
//! values (normal for floats). One warm-up run, then N timed runs: `run()` takes and returns host
//! tensors, so the times are host wall clock including host↔device copies and per-run
//! allocation. `--reference FILE` (raw f32 of the expected first output) adds max abs error and
//! max abs error relative to the reference's largest magnitude. `--profile` adds one run
//! synchronised after every step and prints its time per op type to stderr (at full size the
//! per-step sync costs little next to the kernels, so this shows where the time goes).
//!
//! Built as a cargo example of `quilt-tests` so CI compiles it without a GPU; it is run on the
//! GPU machine by `tests/bench/unet_full_gpu.sh`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use quilt_kernels::cuda::CudaExecutable;
use quilt_models::random::Rng;
use quilt_rewrites::import::{import, ImportOptions};
use quilt_rewrites::onnx::{load, LoadOptions};
use quilt_rewrites::{DType, Plan, Tensor, TensorData};

const SEED: u64 = 20251125;

struct Args {
    model: PathBuf,
    dims: BTreeMap<String, i64>,
    iters: usize,
    inputs: Option<PathBuf>,
    reference: Option<PathBuf>,
    profile: bool,
}

fn parse_args() -> Result<Args, String> {
    let usage = "usage: bench_onnx_gpu MODEL.onnx --dims name=v,... [--iters N] [--inputs DIR] [--reference FILE] [--profile]";
    let mut it = std::env::args().skip(1);
    let (mut model, mut dims, mut iters, mut inputs, mut reference, mut profile) = (None, BTreeMap::new(), 10usize, None, None, false);
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value\n{usage}"));
        match a.as_str() {
            "--dims" => {
                for kv in value("--dims")?.split(',').filter(|s| !s.is_empty()) {
                    let (k, v) = kv.split_once('=').ok_or_else(|| format!("--dims: '{kv}' is not name=value"))?;
                    let v: i64 = v.parse().map_err(|_| format!("--dims: '{kv}': value is not an integer"))?;
                    dims.insert(k.to_string(), v);
                }
            }
            "--iters" => iters = value("--iters")?.parse().map_err(|_| "--iters: not a number".to_string())?,
            "--inputs" => inputs = Some(PathBuf::from(value("--inputs")?)),
            "--reference" => reference = Some(PathBuf::from(value("--reference")?)),
            "--profile" => profile = true,
            s if s.starts_with("--") => return Err(format!("unknown flag {s}\n{usage}")),
            s if model.is_none() => model = Some(PathBuf::from(s)),
            s => return Err(format!("unexpected argument {s}\n{usage}")),
        }
    }
    let model = model.ok_or_else(|| usage.to_string())?;
    if iters == 0 {
        return Err("--iters must be at least 1".into());
    }
    Ok(Args { model, dims, iters, inputs, reference, profile })
}

fn read_f32(path: &Path) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() % 4 != 0 {
        return Err(format!("{}: {} bytes is not a whole number of f32s", path.display(), bytes.len()));
    }
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// The plan's inputs, shaped by `--dims`, from files or seeded random values.
fn make_inputs(plan: &Plan, args: &Args) -> Result<Vec<Tensor>, String> {
    let mut out = Vec::new();
    for v in &plan.inputs {
        let ty = &plan.buffers[v.buffer].ty;
        let shape = ty
            .shape
            .iter()
            .map(|d| d.eval_with(&args.dims).map(|x| x as usize))
            .collect::<Result<Vec<usize>, String>>()
            .map_err(|e| format!("input {}: {e} (pass it with --dims)", v.name))?;
        let n: usize = shape.iter().product();
        let data = match (&args.inputs, ty.dtype) {
            (Some(dir), DType::F32) => {
                let path = dir.join(format!("{}.bin", v.name));
                let vals = read_f32(&path)?;
                if vals.len() != n {
                    return Err(format!("{}: {} values, input {} of shape {shape:?} needs {n}", path.display(), vals.len(), v.name));
                }
                TensorData::F32(vals)
            }
            (Some(_), other) => return Err(format!("input {}: --inputs reads f32 only, the model wants {other}", v.name)),
            (None, DType::F32) => {
                let mut rng = Rng::for_stream(SEED, &v.name);
                TensorData::F32((0..n).map(|_| rng.normal() as f32).collect())
            }
            (None, DType::I64) => {
                let mut rng = Rng::for_stream(SEED, &v.name);
                TensorData::I64((0..n).map(|_| rng.int_in(0, 100)).collect())
            }
            (None, other) => return Err(format!("input {}: no random generator for dtype {other}", v.name)),
        };
        out.push(Tensor::new(shape, data));
    }
    Ok(out)
}

/// One run synchronised after every step; prints time per op type (largest first) to stderr and
/// returns the total.
fn profile(exe: &CudaExecutable, inputs: &[Tensor]) -> Result<f64, String> {
    let (_, steps) = exe.run_profiled(inputs).map_err(|e| format!("profiled run: {e}"))?;
    let mut by_op: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
    for s in &steps {
        let e = by_op.entry(s.op.as_str()).or_default();
        e.0 += 1;
        e.1 += s.ms;
    }
    let total: f64 = steps.iter().map(|s| s.ms).sum();
    let mut rows: Vec<_> = by_op.into_iter().collect();
    rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    eprintln!("profile (synchronised after each step, host wall time): {} steps, {total:.2} ms", steps.len());
    for (op, (n, t)) in rows {
        eprintln!("  {op:<14} {n:>5} steps {t:>10.2} ms {:>6.1}% {:>9.1} us/step", 100.0 * t / total, 1e3 * t / n as f64);
    }
    let mut slowest: Vec<_> = steps.iter().collect();
    slowest.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    eprintln!("slowest steps:");
    for s in slowest.iter().take(12) {
        eprintln!("  {:>8.2} ms  {:<12} {}", s.ms, s.op, s.node);
    }
    Ok(total)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn run() -> Result<String, String> {
    let args = parse_args()?;
    let path = &args.model;
    let t = Instant::now();
    let src = load(path, &LoadOptions { load_weights: true }).map_err(|e| format!("load {}: {e}", path.display()))?;
    let load_s = ms(t) / 1e3;
    let t = Instant::now();
    let imported = import(&src, &ImportOptions::default()).map_err(|e| format!("import {}: {e}", path.display()))?;
    drop(src);
    let import_s = ms(t) / 1e3;
    let t = Instant::now();
    let plan = quilt_rewrites::optimize(&imported.graph).map_err(|e| format!("optimize {}: {e}", path.display()))?;
    drop(imported);
    let optimize_s = ms(t) / 1e3;
    let steps = plan.steps.len();
    let inputs = make_inputs(&plan, &args)?;
    let t = Instant::now();
    let exe = CudaExecutable::new(plan).map_err(|e| format!("CudaExecutable::new: {e}"))?;
    let prepare_s = ms(t) / 1e3;

    let t = Instant::now();
    let first = exe.run(&inputs).map_err(|e| format!("run (warm-up): {e}"))?;
    let warmup_ms = ms(t);
    let mut times = Vec::with_capacity(args.iters);
    for i in 0..args.iters {
        let t = Instant::now();
        exe.run(&inputs).map_err(|e| format!("run {i}: {e}"))?;
        times.push(ms(t));
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = if times.len() % 2 == 1 { times[times.len() / 2] } else { (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2.0 };

    let out = first.first().ok_or("the model has no outputs")?;
    let mut json = format!(
        "{{\"model\":{:?},\"dims\":{:?},\"steps\":{steps},\"load_s\":{load_s:.3},\"import_s\":{import_s:.3},\"optimize_s\":{optimize_s:.3},\"prepare_s\":{prepare_s:.3},\"warmup_ms\":{warmup_ms:.2},\"iters\":{},\"median_ms\":{median:.2},\"min_ms\":{:.2},\"timing\":\"host wall clock of run(), host<->device copies and allocation included\",\"output_shape\":{:?}",
        path.display().to_string(),
        args.dims.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
        args.iters,
        times[0],
        out.shape
    );
    let got = out.data.to_f64_vec();
    let nans = got.iter().filter(|x| !x.is_finite()).count();
    json += &format!(",\"non_finite\":{nans}");
    if let Some(r) = &args.reference {
        let want = read_f32(r)?;
        if want.len() != got.len() {
            return Err(format!("{}: {} values, the first output has {}", r.display(), want.len(), got.len()));
        }
        let (mut max_abs, mut max_ref, mut num, mut den) = (0f64, 0f64, 0f64, 0f64);
        for (x, &y) in got.iter().zip(&want) {
            let (d, y) = ((x - y as f64).abs(), y as f64);
            max_abs = if d.is_nan() { f64::NAN } else { max_abs.max(d) };
            max_ref = max_ref.max(y.abs());
            num += d * d;
            den += y * y;
        }
        json += &format!(
            ",\"max_abs_err\":{max_abs:e},\"max_ref\":{max_ref:e},\"max_rel_err\":{:e},\"l2_rel_err\":{:e}",
            max_abs / max_ref.max(f64::MIN_POSITIVE),
            (num / den.max(f64::MIN_POSITIVE)).sqrt()
        );
    }
    if args.profile {
        json += &format!(",\"profile_total_ms\":{:.2}", profile(&exe, &inputs)?);
    }
    json.push('}');
    Ok(json)
}

fn main() {
    match run() {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("bench_onnx_gpu: {e}");
            std::process::exit(1);
        }
    }
}
