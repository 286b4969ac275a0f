//! Times one ONNX model end to end through quilt's CUDA backend and prints one JSON line.
//!
//!   bench_onnx_gpu MODEL.onnx --dims name=v,... [--iters N] [--inputs DIR] [--reference FILE]
//!                  [--precision model|fp16] [--profile] [--profile-json FILE] [--memory]
//!                  [--layout nchw|channels_last] [--conv-residual 0|1] [--pack-projections 0|1]
//!                  [--new-shape name=v,...]
//!
//! The model is loaded with its external data (next to the file), imported strictly, optimized
//! in the precision `--precision` asks for (`quilt_rewrites::precision::optimize_with_precision`;
//! `model`, the default, keeps the model's dtypes, `fp16` runs its f32 math in f16 with f32
//! inputs and outputs; `--layout channels_last` adds the channels-last layout pass; `--conv-residual 1` puts residual
//! adds into the convolutions, as the provider option `conv_residual=1` does; `--pack-projections 0`
//! keeps one MatMul per attention projection, as `pack_projections=0` does) and handed to `CudaExecutable::new`, whose time is reported as
//! `prepare_s` (the session-creation analogue: codegen, NVRTC, weight upload); `weight_bytes` is
//! the plan's weights in their planned dtypes. `--dims` binds the model's symbolic input dims
//! (ONNX dim_param names, e.g. `batch_size=2,height=64`). Inputs are raw little-endian files
//! `DIR/<input name>.bin` (f32, or i64 for int64 inputs) when `--inputs` is given, else seeded
//! random values (normal for floats). One warm-up run, then N timed runs: `run()` takes and returns host
//! tensors, so the times are host wall clock including host↔device copies and per-run
//! allocation. `--reference FILE` (raw f32 of the expected first output) adds max abs error and
//! max abs error relative to the reference's largest magnitude; `--save-output FILE` writes the
//! first output as raw f32 for another run's `--reference`. `--profile` adds one run
//! synchronised after every step and prints its device time (CUDA events around each step) per
//! op type to stderr; `--profile-json FILE` also writes every step's times to FILE.
//! `--memory` samples the GPU's used memory with `nvidia-smi -lms 20` (NVML, every 20 ms) from
//! before `CudaExecutable::new` until after the timed runs and reports `memory.baseline_bytes`
//! (before), `memory.after_prepare_bytes` and `memory.peak_delta_bytes` (largest sample minus
//! baseline): a sampled device-wide reading that includes the CUDA context, cuBLAS workspaces
//! and module code, and can miss a peak shorter than 20 ms.
//!
//! Built as a cargo example of `quilt-tests` so CI compiles it without a GPU; it is run on the
//! GPU machine by `tests/bench/unet_full_gpu.sh`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use quilt_kernels::cuda::CudaExecutable;
use quilt_models::random::Rng;
use quilt_rewrites::import::{import, ImportOptions};
use quilt_rewrites::epilogue::EpilogueTargets;
use quilt_rewrites::layout::LayoutOptions;
use quilt_rewrites::onnx::{load, LoadOptions};
use quilt_rewrites::plan::BufferKind;
use quilt_rewrites::precision::{optimize_with_precision, Precision};
use quilt_rewrites::{DType, OptimizeOptions, Plan, Tensor, TensorData};

const SEED: u64 = 20251125;

#[derive(Clone)]
struct Args {
    model: PathBuf,
    dims: BTreeMap<String, i64>,
    iters: usize,
    inputs: Option<PathBuf>,
    reference: Option<PathBuf>,
    /// `--save-output`: the first output as raw f32, for another run's `--reference`.
    save_output: Option<PathBuf>,
    profile: bool,
    profile_json: Option<PathBuf>,
    precision: Precision,
    memory: bool,
    channels_last: bool,
    conv_residual: bool,
    pack_projections: bool,
    /// `--new-shape`: dims of a second shape run after the timed one (first-call cost).
    new_shape: Option<BTreeMap<String, i64>>,
}

fn parse_args() -> Result<Args, String> {
    let usage = "usage: bench_onnx_gpu MODEL.onnx --dims name=v,... [--iters N] [--inputs DIR] [--reference FILE] [--save-output FILE] [--precision model|fp16] [--profile] [--profile-json FILE] [--memory] [--layout nchw|channels_last] [--conv-residual 0|1] [--pack-projections 0|1] [--new-shape name=v,...]";
    let mut it = std::env::args().skip(1);
    let (mut model, mut dims, mut iters, mut inputs, mut reference, mut profile) = (None, BTreeMap::new(), 10usize, None, None, false);
    let (mut precision, mut memory, mut profile_json, mut channels_last) = (Precision::Model, false, None, false);
    let (mut new_shape, mut conv_residual, mut pack_projections, mut save_output) = (None, false, true, None);
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value\n{usage}"));
        match a.as_str() {
            "--dims" => dims.extend(parse_dims("--dims", &value("--dims")?)?),
            "--iters" => iters = value("--iters")?.parse().map_err(|_| "--iters: not a number".to_string())?,
            "--inputs" => inputs = Some(PathBuf::from(value("--inputs")?)),
            "--reference" => reference = Some(PathBuf::from(value("--reference")?)),
            "--save-output" => save_output = Some(PathBuf::from(value("--save-output")?)),
            "--profile" => profile = true,
            "--profile-json" => {
                profile = true;
                profile_json = Some(PathBuf::from(value("--profile-json")?));
            }
            "--memory" => memory = true,
            "--new-shape" => new_shape = Some(parse_dims("--new-shape", &value("--new-shape")?)?),
            "--layout" => {
                channels_last = match value("--layout")?.as_str() {
                    "nchw" => false,
                    "channels_last" => true,
                    other => return Err(format!("--layout: expected nchw or channels_last, got {other}")),
                }
            }
            "--pack-projections" => pack_projections = flag01("--pack-projections", &value("--pack-projections")?)?,
            "--conv-residual" => conv_residual = flag01("--conv-residual", &value("--conv-residual")?)?,
            "--precision" => precision = value("--precision")?.parse().map_err(|e| format!("--precision: {e}"))?,
            s if s.starts_with("--") => return Err(format!("unknown flag {s}\n{usage}")),
            s if model.is_none() => model = Some(PathBuf::from(s)),
            s => return Err(format!("unexpected argument {s}\n{usage}")),
        }
    }
    let model = model.ok_or_else(|| usage.to_string())?;
    if iters == 0 {
        return Err("--iters must be at least 1".into());
    }
    Ok(Args { model, dims, iters, inputs, reference, save_output, profile, profile_json, precision, memory, channels_last, conv_residual, pack_projections, new_shape })
}

/// The value of an on/off flag: `0` or `1`.
fn flag01(flag: &str, v: &str) -> Result<bool, String> {
    match v {
        "0" => Ok(false),
        "1" => Ok(true),
        other => Err(format!("{flag}: expected 0 or 1, got {other}")),
    }
}

/// `name=v,...` of flag `flag` as symbol bindings.
fn parse_dims(flag: &str, s: &str) -> Result<BTreeMap<String, i64>, String> {
    let mut dims = BTreeMap::new();
    for kv in s.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').ok_or_else(|| format!("{flag}: '{kv}' is not name=value"))?;
        let v: i64 = v.parse().map_err(|_| format!("{flag}: '{kv}': value is not an integer"))?;
        dims.insert(k.to_string(), v);
    }
    Ok(dims)
}

/// Symbol bindings as `--dims` takes them (`name=v,...`), for the JSON line.
fn dims_string(dims: &BTreeMap<String, i64>) -> String {
    dims.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// The median of sorted, non-empty `times`.
fn median(times: &[f64]) -> f64 {
    let n = times.len();
    if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    }
}

fn read_f32(path: &Path) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() % 4 != 0 {
        return Err(format!("{}: {} bytes is not a whole number of f32s", path.display(), bytes.len()));
    }
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn read_i64(path: &Path) -> Result<Vec<i64>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() % 8 != 0 {
        return Err(format!("{}: {} bytes is not a whole number of i64s", path.display(), bytes.len()));
    }
    Ok(bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect())
}

/// Samples the GPU's used memory (MiB, device-wide) every 20 ms through `nvidia-smi -lms`, until
/// dropped.
struct MemorySampler {
    child: std::process::Child,
    samples: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl MemorySampler {
    fn start() -> Result<MemorySampler, String> {
        use std::io::BufRead;
        let mut child = std::process::Command::new("nvidia-smi")
            .args(["--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0", "-lms", "20"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("--memory: cannot start nvidia-smi: {e}"))?;
        let stdout = child.stdout.take().ok_or("--memory: no nvidia-smi output")?;
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = samples.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(mib) = line.trim().parse::<u64>() {
                    sink.lock().unwrap().push(mib);
                }
            }
        });
        let sampler = MemorySampler { child, samples, reader: Some(reader) };
        // The baseline is the first sample: wait for it (nvidia-smi takes ~100 ms to start).
        let t = Instant::now();
        while sampler.count() == 0 {
            if t.elapsed().as_secs() > 10 {
                return Err("--memory: nvidia-smi printed no sample in 10 s".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ok(sampler)
    }

    fn count(&self) -> usize {
        self.samples.lock().unwrap().len()
    }

    /// Waits for one more sample, then returns (first, latest, max) in bytes.
    fn read(&self) -> (u64, u64, u64) {
        let n = self.count();
        let t = Instant::now();
        while self.count() == n && t.elapsed().as_millis() < 500 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let s = self.samples.lock().unwrap();
        let mib = 1024 * 1024;
        (s[0] * mib, s[s.len() - 1] * mib, s.iter().copied().max().unwrap_or(0) * mib)
    }
}

impl Drop for MemorySampler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
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
            (Some(dir), DType::I64) => {
                let path = dir.join(format!("{}.bin", v.name));
                let vals = read_i64(&path)?;
                if vals.len() != n {
                    return Err(format!("{}: {} values, input {} of shape {shape:?} needs {n}", path.display(), vals.len(), v.name));
                }
                TensorData::I64(vals)
            }
            (Some(_), other) => return Err(format!("input {}: --inputs reads f32 and i64 only, the model wants {other}", v.name)),
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

/// One run synchronised after every step; prints device time per op type (largest first) to
/// stderr, writes every step (`node`, `op`, `gpu_ms`, `wall_ms`) as JSON to `dump` when given,
/// and returns the total device time.
fn profile(exe: &CudaExecutable, inputs: &[Tensor], dump: Option<&Path>) -> Result<f64, String> {
    let (_, steps) = exe.run_profiled(inputs).map_err(|e| format!("profiled run: {e}"))?;
    let mut by_op: BTreeMap<&str, (usize, f64, f64)> = BTreeMap::new();
    for s in &steps {
        let e = by_op.entry(s.op.as_str()).or_default();
        e.0 += 1;
        e.1 += s.gpu_ms;
        e.2 += s.ms;
    }
    let total: f64 = steps.iter().map(|s| s.gpu_ms).sum();
    let wall: f64 = steps.iter().map(|s| s.ms).sum();
    let mut rows: Vec<_> = by_op.into_iter().collect();
    rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    eprintln!("profile (device time between events around each step; synchronised after each): {} steps, {total:.2} ms device, {wall:.2} ms wall", steps.len());
    for (op, (n, t, w)) in rows {
        eprintln!("  {op:<14} {n:>5} steps {t:>10.2} ms {:>6.1}% {:>9.1} us/step (wall {w:.2} ms)", 100.0 * t / total, 1e3 * t / n as f64);
    }
    let mut slowest: Vec<_> = steps.iter().collect();
    slowest.sort_by(|a, b| b.gpu_ms.total_cmp(&a.gpu_ms));
    eprintln!("slowest steps:");
    for s in slowest.iter().take(25) {
        eprintln!("  {:>8.3} ms  {:<12} {}", s.gpu_ms, s.op, s.node);
    }
    if let Some(path) = dump {
        let rows: Vec<String> = steps
            .iter()
            .map(|s| format!("{{\"node\":{:?},\"op\":{:?},\"gpu_ms\":{:.4},\"wall_ms\":{:.4}}}", s.node, s.op, s.gpu_ms, s.ms))
            .collect();
        std::fs::write(path, format!("[\n{}\n]\n", rows.join(",\n"))).map_err(|e| format!("{}: {e}", path.display()))?;
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
    let opts = OptimizeOptions {
        channels_last: args.channels_last.then(LayoutOptions::default),
        residual_epilogues: EpilogueTargets { convs: args.conv_residual, gemms: true },
        pack_projections: args.pack_projections,
        ..OptimizeOptions::default()
    };
    let plan = optimize_with_precision(&imported.graph, &opts, args.precision)
        .map_err(|e| format!("optimize {} (precision {}): {e}", path.display(), args.precision))?;
    drop(imported);
    let optimize_s = ms(t) / 1e3;
    let steps = plan.steps.len();
    let weight_bytes: usize = plan
        .buffers
        .iter()
        .map(|b| match &b.kind {
            BufferKind::Weight(t) => t.numel() * t.dtype().size_bytes(),
            _ => 0,
        })
        .sum();
    let inputs = make_inputs(&plan, &args)?;
    let sampler = if args.memory { Some(MemorySampler::start()?) } else { None };
    let t = Instant::now();
    let exe = CudaExecutable::new(plan).map_err(|e| format!("CudaExecutable::new: {e}"))?;
    let prepare_s = ms(t) / 1e3;
    let after_prepare = sampler.as_ref().map(|s| s.read().1);

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
    let median = median(&times);
    let memory = sampler.map(|s| {
        let (baseline, _, max) = s.read();
        format!(
            ",\"memory\":{{\"source\":\"nvidia-smi memory.used every 20 ms, device-wide, CUDA context included\",\"baseline_bytes\":{baseline},\"after_prepare_bytes\":{},\"peak_delta_bytes\":{}}}",
            after_prepare.unwrap_or(0),
            max.saturating_sub(baseline)
        )
    });

    let out = first.first().ok_or("the model has no outputs")?;
    let mut json = format!(
        "{{\"model\":{:?},\"dims\":{:?},\"precision\":\"{}\",\"layout\":\"{}\",\"conv_residual\":{},\"pack_projections\":{},\"weight_bytes\":{weight_bytes},\"steps\":{steps},\"load_s\":{load_s:.3},\"import_s\":{import_s:.3},\"optimize_s\":{optimize_s:.3},\"prepare_s\":{prepare_s:.3},\"warmup_ms\":{warmup_ms:.2},\"iters\":{},\"median_ms\":{median:.2},\"min_ms\":{:.2},\"timing\":\"host wall clock of run(), host<->device copies and allocation included\",\"output_shape\":{:?}",
        path.display().to_string(),
        dims_string(&args.dims),
        args.precision,
        if args.channels_last { "channels_last" } else { "nchw" },
        args.conv_residual,
        args.pack_projections,
        args.iters,
        times[0],
        out.shape
    );
    let got = out.data.to_f64_vec();
    let nans = got.iter().filter(|x| !x.is_finite()).count();
    json += &format!(",\"non_finite\":{nans}");
    json += memory.as_deref().unwrap_or("");
    if let Some(path) = &args.save_output {
        let bytes: Vec<u8> = got.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect();
        std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    }
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
    if let Some(dims) = &args.new_shape {
        json += &new_shape_cost(&exe, &args, dims)?;
    }
    if args.profile {
        json += &format!(",\"profile_gpu_ms\":{:.2}", profile(&exe, &inputs, args.profile_json.as_deref())?);
    }
    let attention = exe.cudnn_attention_report();
    if !attention.is_empty() {
        json += &format!(",\"cudnn_attention\":{attention:?}");
    }
    json.push('}');
    Ok(json)
}

/// The cost of a first call at a shape this executable has not run: the first call (new
/// convolution plans, GEMM heuristics, a new arena), the second (CUDA graph capture) and the
/// median of 10 repeats, and what the new convolution shapes cost to prepare. Inputs are
/// seeded random values (`--inputs` files belong to the first shape).
fn new_shape_cost(exe: &CudaExecutable, args: &Args, dims: &BTreeMap<String, i64>) -> Result<String, String> {
    let shaped = Args { dims: dims.clone(), inputs: None, ..args.clone() };
    let inputs = make_inputs(exe.plan(), &shaped)?;
    let before = exe.conv_prepare_stats();
    let (stats_before, lt_before) = (exe.stats(), exe.gemm_plan_stats());
    let t = Instant::now();
    exe.run(&inputs).map_err(|e| format!("run at the new shape: {e}"))?;
    let first_ms = ms(t);
    let after = exe.conv_prepare_stats();
    let stats = exe.stats();
    let schedule_ms = (stats.schedule_us - stats_before.schedule_us) as f64 / 1e3;
    // Host time the first run spent queueing each kind of action (the repeat replays a graph).
    let (queued, queued_before) = (stats.stepwise_queue, stats_before.stepwise_queue);
    let queue_ms = |now: u64, before: u64| (now - before) as f64 / 1e6;
    let lt = exe.gemm_plan_stats();
    let queue = format!(
        "\"queue_launch_ms\":{:.2},\"queue_cublas_ms\":{:.2},\"queue_cublaslt_ms\":{:.2},\"lt_plans\":{},\"lt_reused\":{},\"lt_plan_ms\":{:.2},\"queue_conv_ms\":{:.2},\"queue_zero_ms\":{:.2}",
        queue_ms(queued.launch_ns, queued_before.launch_ns),
        queue_ms(queued.cublas_ns, queued_before.cublas_ns),
        queue_ms(queued.cublaslt_ns, queued_before.cublaslt_ns),
        lt.plans - lt_before.plans,
        lt.reused - lt_before.reused,
        (lt.us - lt_before.us) as f64 / 1e3,
        queue_ms(queued.conv_ns, queued_before.conv_ns),
        queue_ms(queued.zero_ns, queued_before.zero_ns)
    );
    let t = Instant::now();
    exe.run(&inputs).map_err(|e| format!("second run at the new shape: {e}"))?;
    let second_ms = ms(t);
    let mut times: Vec<f64> = (0..10)
        .map(|_| {
            let t = Instant::now();
            exe.run(&inputs).map(|_| ms(t))
        })
        .collect::<Result<_, _>>()
        .map_err(|e| format!("repeat at the new shape: {e}"))?;
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(format!(
        ",\"new_shape\":{{\"dims\":{:?},\"first_ms\":{first_ms:.2},\"second_ms\":{second_ms:.2},\"repeat_median_ms\":{:.2},\"conv_shapes\":{},\"conv_reused_engines\":{},\"conv_runtime_compiled\":{},\"conv_prepare_ms\":{:.2},\"conv_prepare_wall_ms\":{:.2},\"conv_runtime_compiled_ms\":{:.2},\"conv_slowest_ms\":{:.2},\"schedule_ms\":{schedule_ms:.2},{queue}}}",
        dims_string(dims),
        median(&times),
        after.shapes - before.shapes,
        after.reused - before.reused,
        after.runtime_compiled - before.runtime_compiled,
        after.ms - before.ms,
        after.wall_ms - before.wall_ms,
        after.runtime_compiled_ms - before.runtime_compiled_ms,
        after.slowest_ms
    ))
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
