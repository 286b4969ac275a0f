//! The optimizer keeps every fixture's meaning: for each model in the manifest, the optimized
//! and the unoptimized plan (one compile each) run on the CPU backend at every `test_dims`
//! entry of the manifest (two shapes per model) on the same seeded random inputs and agree.
//! Also checks that the fixtures' patterns are recognized (attention, GroupNorm, …), so a rule
//! that silently stops matching fails here.

#[path = "cuda_support.rs"]
mod support;

use quilt_kernels::cpu::CpuExecutable;
use quilt_rewrites::{optimize_graph, optimize_with, Graph, OptimizeOptions};

fn count(g: &Graph, name: &str) -> usize {
    g.node_indices().filter(|&ix| g.node(ix).op.name() == name).count()
}

#[test]
fn optimized_and_unoptimized_plans_agree_on_every_fixture() {
    let m = support::manifest();
    let mut checked = 0;
    for entry in &m.models {
        let graph = support::imported_graph(&m.model_path(entry), true);
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

        checked += support::run_plan_pair(entry, &plain, &fused, ["unoptimized", "optimized"], 0x9E37_79B9, |dims, name, g, w| {
            assert_eq!(g.shape, w.shape, "{} {dims:?} output {name}", entry.name);
            let (gv, wv) = (g.data.to_f64_vec(), w.data.to_f64_vec());
            // f32 math in both; fused kernels reassociate sums (softmax, norms).
            let (atol, rtol) = (1e-4, 1e-3);
            let worst = gv.iter().zip(&wv).map(|(a, b)| ((a - b).abs() - atol - rtol * b.abs()).max(0.0)).fold(0.0f64, f64::max);
            assert!(worst == 0.0, "{} {dims:?} output {name}: optimized differs from unoptimized by more than atol {atol} + rtol {rtol}·|x| (excess {worst:e})", entry.name);
        });
    }
    assert!(checked >= 2 * 6, "only {checked} model/shape pairs were checked");
}
