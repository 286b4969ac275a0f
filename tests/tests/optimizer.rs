//! The optimizer keeps every fixture's meaning: for each model in the manifest, the optimized
//! and the unoptimized plan (one compile each) run on the CPU backend at every `test_dims`
//! entry of the manifest (two shapes per model) on the same seeded random inputs and agree.
//! Also checks that the fixtures' patterns are recognized (attention, GroupNorm, …), so a rule
//! that silently stops matching fails here.

use std::collections::BTreeMap;
use std::path::PathBuf;

use quilt_kernels::cpu::CpuExecutable;
use quilt_models::manifest::Manifest;
use quilt_rewrites::import::{import, ImportOptions};
use quilt_rewrites::onnx::{load, LoadOptions};
use quilt_rewrites::{optimize_graph, optimize_with, Graph, OptimizeOptions, Tensor, TensorData};

fn manifest() -> Manifest {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/fixtures/manifest.json");
    Manifest::load(&path).expect("fixture manifest")
}

/// xorshift64*; values in [-1, 1) (never all zero).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

fn count(g: &Graph, name: &str) -> usize {
    g.node_indices().filter(|&ix| g.node(ix).op.name() == name).count()
}

#[test]
fn optimized_and_unoptimized_plans_agree_on_every_fixture() {
    let m = manifest();
    let mut checked = 0;
    for entry in &m.models {
        let path = m.model_path(entry);
        let src = load(&path, &LoadOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", entry.name));
        let graph = import(&src, &ImportOptions { lenient: false }).unwrap_or_else(|e| panic!("{}: {e}", entry.name)).graph;
        let plain = CpuExecutable::new(optimize_with(&graph, &OptimizeOptions { enabled: false, ..Default::default() }).unwrap()).unwrap();
        let optimized = optimize_graph(&graph, &OptimizeOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", entry.name));
        let fused = CpuExecutable::new(quilt_rewrites::lower::lower(&optimized.graph).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", entry.name));
        assert!(fused.plan().steps.len() < plain.plan().steps.len(), "{}: the optimizer removed no step", entry.name);

        // What the fixtures contain, recognized in both exporters' spellings.
        let og = &optimized.graph;
        let (softmax_in, attention_out) = (count(&graph, "Softmax"), count(og, "Attention"));
        assert_eq!(attention_out, softmax_in, "{}: every attention is fused", entry.name);
        assert_eq!(count(og, "InstanceNorm"), 0, "{}: every InstanceNorm-spelled GroupNorm is fused", entry.name);
        assert_eq!(count(og, "Softmax") + count(og, "Erf") + count(og, "Sigmoid"), 0, "{}: activations fused", entry.name);

        for (k, dims) in entry.test_dims.iter().enumerate() {
            let mut rng = Rng(0x9E3779B97F4A7C15 ^ (k as u64 + 1));
            let inputs: Vec<Tensor> = plain
                .plan()
                .inputs
                .iter()
                .map(|v| {
                    let spec = &entry.inputs[&v.name];
                    let shape: Vec<usize> = spec.concrete_shape(&v.name, dims).unwrap().iter().map(|&d| d as usize).collect();
                    let n: usize = shape.iter().product();
                    let data = match spec.dtype.as_str() {
                        "float32" => {
                            let [lo, hi] = spec.range.unwrap_or([-1.0, 1.0]);
                            TensorData::F32((0..n).map(|_| (lo + (rng.next() + 1.0) / 2.0 * (hi - lo)) as f32).collect())
                        }
                        "int64" => {
                            let [lo, hi] = spec.range.unwrap_or([0.0, 100.0]);
                            TensorData::I64((0..n).map(|_| (lo + (rng.next() + 1.0) / 2.0 * (hi - lo)).floor() as i64).collect())
                        }
                        "int32" => {
                            let [lo, hi] = spec.range.unwrap_or([0.0, 100.0]);
                            TensorData::I32((0..n).map(|_| (lo + (rng.next() + 1.0) / 2.0 * (hi - lo)).floor() as i32).collect())
                        }
                        other => panic!("{}: input dtype {other} not handled by this test", entry.name),
                    };
                    Tensor::new(shape, data)
                })
                .collect();
            let want = plain.run(&inputs).unwrap_or_else(|e| panic!("{} {dims:?}: unoptimized: {e}", entry.name));
            let fused_inputs: Vec<Tensor> = fused
                .plan()
                .inputs
                .iter()
                .map(|v| inputs[plain.plan().inputs.iter().position(|w| w.name == v.name).unwrap()].clone())
                .collect();
            let got = fused.run(&fused_inputs).unwrap_or_else(|e| panic!("{} {dims:?}: optimized: {e}", entry.name));
            let got_by_name: BTreeMap<&str, &Tensor> = fused.plan().outputs.iter().map(|v| v.name.as_str()).zip(&got).collect();
            for (v, w) in plain.plan().outputs.iter().zip(&want) {
                let g = got_by_name[v.name.as_str()];
                assert_eq!(g.shape, w.shape, "{} {dims:?} output {}", entry.name, v.name);
                let (gv, wv) = (g.data.to_f64_vec(), w.data.to_f64_vec());
                // f32 math in both; fused kernels reassociate sums (softmax, norms).
                let (atol, rtol) = (1e-4, 1e-3);
                let worst = gv.iter().zip(&wv).map(|(a, b)| ((a - b).abs() - atol - rtol * b.abs()).max(0.0)).fold(0.0f64, f64::max);
                assert!(worst == 0.0, "{} {dims:?} output {}: optimized differs from unoptimized by more than atol {atol} + rtol {rtol}·|x| (excess {worst:e})", entry.name, v.name);
            }
            checked += 1;
        }
    }
    assert!(checked >= 2 * 6, "only {checked} model/shape pairs were checked");
}
