//! The channels-last layout pass (`quilt_rewrites::layout`) on the CPU backend.
//!
//! - Every fixture: the plan optimized with `channels_last` against the plan without it, on the
//!   same seeded random inputs at every manifest shape, from one compiled plan each. The pass
//!   only permutes data (convolutions and GroupNorms compute the same sums in the CPU
//!   reference), so outputs agree to float rounding: max abs difference ≤ 1e-4 × max |output|
//!   (the stitched GroupNorm regions of the NCHW plan and the unstitched channels-last ones
//!   accumulate in different orders).
//! - The graphs: every 2-D convolution with symmetric pads is channels-last, and in the SD UNet and VAE fixtures
//!   the transposes the pass adds are fewer than the convolutions it converts (the layout
//!   stays channels-last between convolutions and the transformer blocks' own permutes
//!   cancel).

#[path = "cuda_support.rs"]
mod support;

use quilt_kernels::cpu::CpuExecutable;
use quilt_rewrites::layout::{to_channels_last, LayoutOptions};
use quilt_rewrites::optimize::optimize_graph;
use quilt_rewrites::plan::Step;
use quilt_rewrites::precision::{optimize_with_precision, Precision};
use quilt_rewrites::{Op, OptimizeOptions};

fn channels_last() -> OptimizeOptions {
    OptimizeOptions { channels_last: Some(LayoutOptions::default()), ..OptimizeOptions::default() }
}

#[test]
fn channels_last_plans_match_nchw_plans_on_every_fixture() {
    let m = support::manifest();
    let mut checked = 0;
    let mut converted = 0;
    for entry in &m.models {
        let graph = support::imported_graph(&m.model_path(entry), true);
        let nchw = optimize_with_precision(&graph, &OptimizeOptions::default(), Precision::Model).unwrap_or_else(|e| panic!("{}: {e}", entry.name));
        let nhwc = optimize_with_precision(&graph, &channels_last(), Precision::Model).unwrap_or_else(|e| panic!("{}: channels-last: {e}", entry.name));
        // cuDNN runs symmetric pads only, so asymmetric ones (the dynamo VAE encoder's
        // downsamplers) stay NCHW.
        let convs = |plan: &quilt_rewrites::Plan, last: bool, symmetric: bool| {
            plan.steps
                .iter()
                .filter(|s| {
                    matches!(s, Step::Op(s) if matches!(&s.op, Op::Conv { channels_last, pads, .. }
                        if *channels_last == last && (pads[..pads.len() / 2] == pads[pads.len() / 2..]) == symmetric))
                })
                .count()
        };
        assert_eq!(convs(&nhwc, false, true), 0, "{}: a 2-D convolution stayed NCHW", entry.name);
        assert_eq!(convs(&nhwc, true, true), convs(&nchw, false, true), "{}: convolution count changed", entry.name);
        converted += convs(&nhwc, true, true);
        // The CUDA backend runs a channels-last GroupNorm only inside a stitched region.
        let lone_norms = nhwc.steps.iter().filter(|s| matches!(s, Step::Op(s) if matches!(s.op, Op::GroupNorm { channels_last: true, .. }))).count();
        assert_eq!(lone_norms, 0, "{}: a channels-last GroupNorm was left outside a region", entry.name);
        let a = CpuExecutable::new(nchw).unwrap_or_else(|e| panic!("{}: {e}", entry.name));
        let b = CpuExecutable::new(nhwc).unwrap_or_else(|e| panic!("{}: channels-last: {e}", entry.name));
        checked += support::run_plan_pair(entry, &a, &b, ["nchw", "channels-last"], 0x5EED_1A70, |dims, name, got, want| {
            assert_eq!(got.shape, want.shape, "{} {dims:?} output {name}", entry.name);
            let (g, w) = (got.data.to_f64_vec(), want.data.to_f64_vec());
            let max_abs = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            let max_ref = w.iter().map(|b| b.abs()).fold(0.0, f64::max);
            println!("{:<24} {dims:?} {name:<16} max abs {max_abs:.2e} (max |ref| {max_ref:.2e})", entry.name);
            assert!(max_abs <= 1e-4 * max_ref.max(1.0), "{} {dims:?} output {name}: channels-last vs NCHW max abs {max_abs:.3e}", entry.name);
        });
    }
    assert!(converted >= 20, "only {converted} convolutions were converted over all fixtures");
    assert!(checked >= 2 * 6, "only {checked} model/shape pairs were checked");
}

#[test]
fn unet_and_vae_stay_channels_last_between_convolutions() {
    let m = support::manifest();
    for name in ["unet", "vae_decoder"] {
        let entry = m.models.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("fixture {name} missing"));
        let graph = support::imported_graph(&m.model_path(entry), true);
        let extracted = optimize_graph(&graph, &OptimizeOptions { stitch: false, ..OptimizeOptions::default() }).unwrap().graph;
        let (_, r) = to_channels_last(&extracted, &LayoutOptions::default()).unwrap();
        println!("{name}: {r:?}");
        assert!(r.convs > 0 && r.group_norms > 0, "{name}: {r:?}");
        let added = r.transposes_after.saturating_sub(r.transposes_before);
        assert!(added < r.convs, "{name}: {added} transposes added for {} convolutions: {r:?}", r.convs);
    }
}
