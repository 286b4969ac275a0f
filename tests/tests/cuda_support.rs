//! Shared by the integration tests (included with `#[path = "cuda_support.rs"] mod support;`; as a
//! test target of its own it has no tests): the fixture manifest, each fixture's lowered and
//! optimized plans, seeded random inputs drawn from the manifest's input specs, the skip guards of
//! GPU and NVRTC tests, and the error measures of a GPU output against the CPU reference.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use quilt_kernels::cpu::CpuExecutable;
use quilt_kernels::cuda::{nvrtc, CudaDevice};
use quilt_models::manifest::{Manifest, ModelEntry};
use quilt_models::random::Rng;
use quilt_rewrites::import::{import, ImportOptions};
use quilt_rewrites::onnx::{load, LoadOptions};
use quilt_rewrites::{DType, Graph, Plan, Tensor, TensorData};

/// `models/fixtures`: `$QUILT_FIXTURES` (the GPU machine runs a carried test binary from the
/// repository root), else the source tree's.
pub fn fixtures_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("QUILT_FIXTURES") {
        return PathBuf::from(d);
    }
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/fixtures");
    if built.exists() {
        built
    } else {
        PathBuf::from("models/fixtures")
    }
}

pub fn manifest() -> Manifest {
    let path = fixtures_dir().join("manifest.json");
    Manifest::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Which plan of a model to build.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PlanKind {
    /// One step per imported node (`lower`): the unfused ops.
    Lowered,
    /// The e-graph optimizer's plan (`quilt_rewrites::optimize`): fused Silu, QuickGelu, GeGlu
    /// and Attention steps among the rest.
    Optimized,
    /// The optimized plan with the channels-last layout pass (NHWC convolutions through cuDNN,
    /// channels-last GroupNorm regions), as quilt's GPU device plans with `layout=channels_last`.
    ChannelsLast,
}

impl PlanKind {
    pub const ALL: [PlanKind; 3] = [PlanKind::Optimized, PlanKind::ChannelsLast, PlanKind::Lowered];
    pub fn label(self) -> &'static str {
        match self {
            PlanKind::Lowered => "lowered",
            PlanKind::Optimized => "optimized",
            PlanKind::ChannelsLast => "channels-last",
        }
    }
}

/// The model's imported graph (strict import: a node quilt cannot run fails the test).
pub fn imported_graph(path: &std::path::Path, load_weights: bool) -> Graph {
    let src = load(path, &LoadOptions { load_weights }).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    import(&src, &ImportOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", path.display())).graph
}

/// The model's plan of the given kind.
pub fn plan(path: &std::path::Path, load_weights: bool, kind: PlanKind) -> Plan {
    let graph = imported_graph(path, load_weights);
    let plan = match kind {
        PlanKind::Lowered => quilt_rewrites::lower::lower(&graph),
        PlanKind::Optimized => quilt_rewrites::optimize(&graph),
        PlanKind::ChannelsLast => quilt_rewrites::optimize_with(
            &graph,
            &quilt_rewrites::OptimizeOptions { channels_last: Some(quilt_rewrites::layout::LayoutOptions::default()), ..Default::default() },
        ),
    };
    plan.unwrap_or_else(|e| panic!("{} ({}): {e}", path.display(), kind.label()))
}

/// One step per imported node.
pub fn lowered_plan(path: &std::path::Path, load_weights: bool) -> Plan {
    plan(path, load_weights, PlanKind::Lowered)
}

/// Seeded random inputs in `plan.inputs` order, shaped and ranged by the manifest entry.
pub fn random_inputs(plan: &Plan, entry: &ModelEntry, dims: &BTreeMap<String, i64>, seed: u64) -> Vec<Tensor> {
    plan.inputs
        .iter()
        .map(|v| {
            let spec = entry.inputs.get(&v.name).unwrap_or_else(|| panic!("{}: input {} not in the manifest", entry.name, v.name));
            let shape: Vec<usize> = spec.concrete_shape(&v.name, dims).unwrap().iter().map(|&d| d as usize).collect();
            let n: usize = shape.iter().product();
            let mut rng = Rng::for_stream(seed, &v.name);
            let data = match plan.buffers[v.buffer].ty.dtype {
                DType::F32 => TensorData::F32(
                    (0..n)
                        .map(|_| match spec.range {
                            Some([lo, hi]) => (lo + rng.uniform() * (hi - lo)) as f32,
                            None => rng.normal() as f32,
                        })
                        .collect(),
                ),
                DType::I64 => {
                    let [lo, hi] = spec.range.unwrap_or([0.0, 100.0]);
                    TensorData::I64((0..n).map(|_| rng.int_in(lo as i64, hi as i64)).collect())
                }
                other => panic!("{}: input {} has dtype {other}", entry.name, v.name),
            };
            Tensor::new(shape, data)
        })
        .collect()
}

/// Runs two CPU executables of one fixture, `reference` and `candidate` (e.g. the unoptimized and
/// the optimized plan), on the same seeded random inputs ([`random_inputs`], seed `seed + k` at
/// the k-th `test_dims` entry) at every `test_dims` entry of `entry`, and hands each output pair
/// to `check(dims, output name, candidate's, reference's)`. Inputs and outputs are matched by
/// name, since two plans of one model may order them differently. `labels` name the two in
/// panic messages. Returns how many shapes ran.
pub fn run_plan_pair(
    entry: &ModelEntry,
    reference: &CpuExecutable,
    candidate: &CpuExecutable,
    labels: [&str; 2],
    seed: u64,
    mut check: impl FnMut(&BTreeMap<String, i64>, &str, &Tensor, &Tensor),
) -> usize {
    let (want_plan, got_plan) = (reference.plan(), candidate.plan());
    for (k, dims) in entry.test_dims.iter().enumerate() {
        let inputs = random_inputs(want_plan, entry, dims, seed.wrapping_add(k as u64));
        let want = reference.run(&inputs).unwrap_or_else(|e| panic!("{} {dims:?}: {}: {e}", entry.name, labels[0]));
        let got_inputs: Vec<Tensor> = got_plan
            .inputs
            .iter()
            .map(|v| {
                let at = want_plan.inputs.iter().position(|w| w.name == v.name);
                inputs[at.unwrap_or_else(|| panic!("{}: {} input {} is not an input of the {} plan", entry.name, labels[1], v.name, labels[0]))].clone()
            })
            .collect();
        let got = candidate.run(&got_inputs).unwrap_or_else(|e| panic!("{} {dims:?}: {}: {e}", entry.name, labels[1]));
        let got_by_name: BTreeMap<&str, &Tensor> = got_plan.outputs.iter().map(|v| v.name.as_str()).zip(&got).collect();
        for (v, w) in want_plan.outputs.iter().zip(&want) {
            let g = got_by_name.get(v.name.as_str()).unwrap_or_else(|| panic!("{}: output {} missing from the {} plan", entry.name, v.name, labels[1]));
            check(dims, &v.name, g, w);
        }
    }
    entry.test_dims.len()
}

/// The first GPU, or `None` after printing that the test is skipped (no driver or no GPU, as in CI).
pub fn gpu_or_skip() -> Option<Arc<CudaDevice>> {
    match CudaDevice::new(0) {
        Ok(d) => Some(d),
        Err(e) => {
            println!("SKIPPED (no GPU): {e}");
            None
        }
    }
}

/// Whether libnvrtc loads. When it does not, the test is skipped (printed) unless
/// `QUILT_REQUIRE_NVRTC=1` (set by `scripts/setup.sh`, so CI cannot silently skip), which fails it.
pub fn nvrtc_or_skip() -> bool {
    if nvrtc::available() {
        return true;
    }
    let required = std::env::var("QUILT_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    assert!(!required, "QUILT_REQUIRE_NVRTC=1 but libnvrtc could not be loaded (LD_LIBRARY_PATH={:?})", std::env::var("LD_LIBRARY_PATH").ok());
    println!("SKIPPED: libnvrtc not found (run `source scripts/setup.sh` to install PyPI's nvidia-cuda-nvrtc)");
    false
}

/// How [`compare`] treats values that are not finite.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NonFinite {
    /// NaN must stand at the same places in both tensors; those places are not measured.
    SameNaNs,
    /// Any NaN or infinity in either tensor is an error.
    Reject,
}

/// A GPU output's error against the CPU reference.
pub struct Errors {
    /// max |gpu − cpu|.
    pub max_abs: f64,
    /// max |cpu|: callers scale tolerances by it, and treat 0 (an all-zero reference) as a failure.
    pub max_ref: f64,
    /// ‖gpu − cpu‖₂ / ‖cpu‖₂ (‖gpu − cpu‖₂ when the reference is all zeros).
    pub l2_rel: f64,
}

/// The errors of `gpu` against `cpu`; an error when their shapes or dtypes differ or a value
/// breaks the `non_finite` rule.
pub fn compare(gpu: &Tensor, cpu: &Tensor, non_finite: NonFinite) -> Result<Errors, String> {
    if gpu.shape != cpu.shape || gpu.dtype() != cpu.dtype() {
        return Err(format!("gpu {}{:?} vs cpu {}{:?}", gpu.dtype(), gpu.shape, cpu.dtype(), cpu.shape));
    }
    let (a, b) = (gpu.data.to_f64_vec(), cpu.data.to_f64_vec());
    let (mut max_abs, mut max_ref, mut num, mut den) = (0f64, 0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(&b) {
        match non_finite {
            NonFinite::Reject if !x.is_finite() || !y.is_finite() => return Err(format!("non-finite output: gpu {x} vs cpu {y}")),
            NonFinite::SameNaNs if x.is_nan() != y.is_nan() => return Err(format!("NaN mismatch: gpu {x} vs cpu {y}")),
            NonFinite::SameNaNs if x.is_nan() => continue,
            _ => {}
        }
        let d = (x - y).abs();
        max_abs = max_abs.max(d);
        max_ref = max_ref.max(y.abs());
        num += d * d;
        den += y * y;
    }
    Ok(Errors { max_abs, max_ref, l2_rel: if den > 0.0 { (num / den).sqrt() } else { num.sqrt() } })
}
