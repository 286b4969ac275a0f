//! Times the memory-bound steps of SD (stitched GroupNorm/LayerNorm regions, elementwise
//! regions, a broadcast Add, a transpose, a concat; `tests/tests/regions_cases.rs`) at the UNet
//! b2 64² and VAE decoder 512² shapes, in f16, under each index path of the generated kernels:
//!
//! - `index64`: `QUILT_INDEX64=1`, the 64-bit div/mod decomposition (the code before 32-bit
//!   indexing; same kernels, the launch picks that path);
//! - `narrow`: `QUILT_NO_VECTOR=1`, 32-bit indices over collapsed axes, one element per thread;
//! - `vector`: the default, 32-bit indices and 8 f16 per thread where the shape allows.
//!
//!   bench_regions_gpu [--iters N] [--only SUBSTRING] [--source] [--env "A=1,B=2;A=4"]
//!
//! `--env` replaces the three paths by settings of tuning variables (`;` between settings, `,`
//! between the variables of one; each setting is one column, the first the reference for the
//! output comparison), e.g. the channels-last GroupNorm's `QUILT_CL_SLAB`, `QUILT_CL_UNROLL` and
//! `QUILT_FAST_MATH`.
//!
//! `--source` prints the CUDA C of the selected cases' modules instead (no GPU needed).
//!
//! Each path gets a fresh `CudaExecutable` (launch plans are made once per shape), one warm-up
//! run, then N runs of `run_profiled` (CUDA events around the step, synchronised after it); the
//! median device time is reported with the bandwidth it implies (bytes a perfect kernel moves —
//! inputs read once, output written once — over the time) against the H100's 3.35 TB/s. The
//! outputs of the three paths must agree (max |Δ| over max |out| printed; bitwise for copies).
//! Built as a cargo example of `quilt-tests` (CI compiles it); run on the GPU machine.

#[path = "../tests/regions_cases.rs"]
mod regions_cases;

use quilt_kernels::cuda::CudaExecutable;
use quilt_rewrites::Tensor;

const PATHS: [(&str, &str); 3] = [("index64", "QUILT_INDEX64"), ("narrow", "QUILT_NO_VECTOR"), ("vector", "")];
const PEAK_TBS: f64 = 3.35;

fn max_diff(a: &Tensor, b: &Tensor) -> (f64, f64) {
    let (x, y) = (a.data.to_f64_vec(), b.data.to_f64_vec());
    let d = x.iter().zip(&y).map(|(p, q)| if p.is_nan() || q.is_nan() { f64::INFINITY } else { (p - q).abs() }).fold(0.0, f64::max);
    (d, y.iter().map(|v| v.abs()).fold(0.0, f64::max))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let iters: usize = opt("--iters").map_or(20, |v| v.parse().expect("--iters N"));
    let only = opt("--only");
    if args.iter().any(|a| a == "--source") {
        for case in regions_cases::bench_cases().into_iter().filter(|c| only.as_deref().is_none_or(|o| c.name.contains(o))) {
            let src = quilt_kernels::cuda::codegen::step_source(&case.plan, 0).expect("codegen").unwrap_or_default();
            println!("// ===== {}\n{src}", case.name);
        }
        return;
    }
    // Each column: a label and the variables it sets (every variable of every column is unset first).
    let columns: Vec<(String, Vec<(String, String)>)> = match opt("--env") {
        Some(spec) => spec
            .split(';')
            .map(|set| {
                let vars = set.split(',').filter(|kv| !kv.is_empty()).map(|kv| {
                    let (k, v) = kv.split_once('=').expect("--env NAME=VALUE,...;...");
                    (k.to_string(), v.to_string())
                });
                (set.to_string(), vars.collect())
            })
            .collect(),
        None => PATHS.iter().map(|(label, var)| (label.to_string(), if var.is_empty() { vec![] } else { vec![(var.to_string(), "1".to_string())] })).collect(),
    };
    let all_vars: Vec<String> = columns.iter().flat_map(|(_, vars)| vars.iter().map(|(k, _)| k.clone())).collect();
    let device = quilt_kernels::cuda::CudaDevice::new(0).expect("a CUDA device");
    println!("device: {} (sm_{}{}), {iters} runs per column, median device time per step (µs)", device.name, device.arch.0, device.arch.1);
    let labels: Vec<String> = columns.iter().map(|(l, _)| format!("{l:>12}")).collect();
    println!("{:<36} {:>9} | {} | {:>8} {:>7} {:>9}", "step", "MB", labels.join(" "), "TB/s", "% peak", "max|Δ|rel");
    for case in regions_cases::bench_cases() {
        if only.as_deref().is_some_and(|o| !case.name.contains(o)) {
            continue;
        }
        let inputs = regions_cases::random_inputs(&case, 5);
        let mut times = Vec::new();
        let mut outs: Vec<Vec<Tensor>> = Vec::new();
        for (_, vars) in &columns {
            all_vars.iter().for_each(|k| std::env::remove_var(k));
            for (k, v) in vars {
                std::env::set_var(k, v);
            }
            let exe = CudaExecutable::with_device(case.plan.clone(), device.clone()).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            let (out, _) = exe.run_profiled(&inputs).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            let mut ms: Vec<f64> = (0..iters).map(|_| exe.run_profiled(&inputs).unwrap().1.iter().map(|s| s.gpu_ms).sum::<f64>()).collect();
            ms.sort_by(f64::total_cmp);
            times.push(ms[ms.len() / 2]);
            outs.push(out);
        }
        let m = max_diff(&outs[0][0], &outs[0][0]).1;
        let worst = outs.iter().skip(1).map(|o| max_diff(&o[0], &outs[0][0]).0).fold(0.0, f64::max);
        let best = times.iter().copied().fold(f64::INFINITY, f64::min);
        let tbs = case.bytes as f64 / (best * 1e-3) / 1e12;
        let cells: Vec<String> = times.iter().map(|t| format!("{:>12.1}", t * 1e3)).collect();
        println!("{:<36} {:>9.1} | {} | {:>8.2} {:>6.0}% {:>9.1e}", case.name, case.bytes as f64 / 1e6, cells.join(" "), tbs, 100.0 * tbs / PEAK_TBS, worst / m.max(1e-30));
    }
    all_vars.iter().for_each(|k| std::env::remove_var(k));
}

