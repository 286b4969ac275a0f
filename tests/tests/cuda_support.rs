//! Shared by `cuda_codegen.rs` and `cuda_fixtures.rs` (included with `#[path]`; as a test
//! target of its own it has no tests): the fixture manifest, each fixture's lowered and
//! optimized plans, and seeded random inputs drawn from the manifest's input specs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use quilt_models::manifest::{Manifest, ModelEntry};
use quilt_models::random::Rng;
use quilt_rewrites::import::{import, ImportOptions};
use quilt_rewrites::onnx::{load, LoadOptions};
use quilt_rewrites::{DType, Plan, Tensor, TensorData};

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
}

impl PlanKind {
    pub const ALL: [PlanKind; 2] = [PlanKind::Optimized, PlanKind::Lowered];
    pub fn label(self) -> &'static str {
        match self {
            PlanKind::Lowered => "lowered",
            PlanKind::Optimized => "optimized",
        }
    }
}

/// The model's plan of the given kind.
pub fn plan(path: &std::path::Path, load_weights: bool, kind: PlanKind) -> Plan {
    let src = load(path, &LoadOptions { load_weights }).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let imported = import(&src, &ImportOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let plan = match kind {
        PlanKind::Lowered => quilt_rewrites::lower::lower(&imported.graph),
        PlanKind::Optimized => quilt_rewrites::optimize(&imported.graph),
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
