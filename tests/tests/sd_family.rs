//! Nothing in the optimizer may be special-cased to SD 1.5: every graph-only full-size fixture in
//! the manifest (SD 1.5, SD 2.1 and SDXL UNets, the VAE decoder, CLIP ViT-L/14; weights stripped)
//! goes through what `quilt explain --json` reports (`quilt_models::explain::explain`: import,
//! e-graph optimization, lowering), NCHW and channels-last, and
//! - every attention is recognized: `attention` equals the source graph's Softmax count;
//! - every norm is fused: `group_norm` equals its InstanceNormalization (+ GroupNormalization)
//!   count and `layer_norm` its LayerNormalization count (as steps or inside stitched regions),
//!   and no InstanceNorm is left;
//! - every activation is recognized: GeGLU + GELU = Erf, SiLU + QuickGELU = Sigmoid;
//! - no piece of an unrecognized attention, norm or activation is left as a step or in a region;
//! - each UNet stays within a launch-step budget derived from its block counts
//!   ([`unet_launch_budget`]);
//! - the whole run (import + optimize + lower, per model and layout) stays within the targets:
//!   ≤ 10 s of one core's time per model and a peak RSS ≤ 2 GiB for the process.
//!
//! The source counts come from the file itself and are checked against the manifest's
//! `op_counts`, so a regenerated fixture cannot drift from its manifest entry unnoticed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use quilt_models::explain::explain;
use quilt_models::manifest::Manifest;
use quilt_rewrites::onnx::{load, LoadOptions};

/// Ops of the plan (IR names) that are pieces of an unrecognized attention (Softmax, the scale's
/// Sqrt/Div), norm (InstanceNorm, ReduceMean, Pow) or activation (Erf, Sigmoid).
const LEFTOVERS: &[&str] = &["Softmax", "LogSoftmax", "InstanceNorm", "ReduceMean", "Pow", "Sqrt", "Div", "Erf", "Sigmoid"];

/// Launch steps (plan steps minus views) a UNet may take, from the source graph's counts alone,
/// so that every SD-family UNet gets a budget that scales with it:
/// - 16 per transformer layer (a BasicTransformerBlock: self and cross attention, Softmax / 2 of
///   them): 3 LayerNorm regions, 6 q/k/v projections, 2 attentions, 2 output projections, the
///   two feed-forward GEMMs and the GeGLU;
/// - 3 per GroupNorm: its region (affine, SiLU, residual folded in) and the ≤ 2 library calls
///   around it (the convolution it feeds; the time-embedding GEMM or shortcut convolution of a
///   ResNet block; a transformer's proj_in/proj_out);
/// - 48 for the model's ends and joints: conv_in/conv_out, the timestep (and SDXL text_time)
///   embedding, down/upsamplers, skip Concats, Resizes;
/// - NCHW only, 1 more per GroupNorm: without channels-last the convolutions' residual Adds and
///   the NCHW↔token transposes around each transformer stay separate launches.
///
/// Measured against it (release build, this file's fixtures): SD 1.5 and SD 2.1 (16 layers, 61
/// GroupNorms): 464 channels-last / 509 NCHW against 487 / 548; SDXL (70 layers: 2 per
/// transformer at 640 channels, 10 at 1280; 46 GroupNorms for 17 ResNets and 11 transformers): 1288 / 1319
/// against 16·70 + 3·46 + 48 = 1306 / 1352.
fn unet_launch_budget(softmax: usize, group_norms: usize, channels_last: bool) -> usize {
    16 * (softmax / 2) + 3 * group_norms + 48 + if channels_last { 0 } else { group_norms }
}

/// The targets for a graph-only full-size UNet: optimized in ≤ 10 s on one core (the CPU time of
/// the thread doing it, so a loaded machine does not count against it) with a peak RSS ≤ 2 GiB.
/// Checked as they are in the dev profile too (CI's): SDXL, the largest graph, took 3.3–4.7 s of
/// CPU there and 1.9–5.3 s in release, measured on a loaded 2-core machine.
const CPU_LIMIT: Duration = Duration::from_secs(10);
const RSS_LIMIT_KB: u64 = 2 << 20;

/// CPU time of the calling thread (user + system) from /proc, where Linux has it.
fn thread_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the parenthesized command: state is field 3, utime 14, stime 15 (clock ticks).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux ABI Rust targets.
    Some(Duration::from_millis(ticks * 10))
}

/// The process's peak resident set (VmHWM) in KiB, where /proc has it.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn every_full_size_graph_is_fully_fused_within_budget() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/fixtures/manifest.json");
    let manifest = Manifest::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut unets = 0;
    for entry in &manifest.graph_only {
        let name = entry["name"].as_str().expect("graph_only entry without a name");
        let file = manifest.root.join(entry["file"].as_str().expect("graph_only entry without a file"));
        let src = load(&file, &LoadOptions { load_weights: false }).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut hist: BTreeMap<String, u64> = BTreeMap::new();
        for n in &src.nodes {
            *hist.entry(n.op_type.clone()).or_default() += 1;
        }
        let listed: BTreeMap<String, u64> =
            entry["op_counts"].as_object().expect("op_counts").iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap())).collect();
        assert_eq!(hist, listed, "{name}: the file's op counts differ from the manifest's");
        let n = |op: &str| hist.get(op).copied().unwrap_or(0) as usize;
        let is_unet = name.starts_with("unet");
        unets += is_unet as usize;

        for channels_last in [false, true] {
            let label = format!("{name} ({})", if channels_last { "channels-last" } else { "NCHW" });
            let (start, cpu_start) = (Instant::now(), thread_cpu_time());
            let x = explain(&file, true, false, channels_last).unwrap_or_else(|e| panic!("{label}: {e}"));
            let elapsed = start.elapsed();
            let cpu = thread_cpu_time().zip(cpu_start).map(|(b, a)| b - a);
            let j = &x.json;
            let get = |k: &str| j[k].as_u64().unwrap_or_else(|| panic!("{label}: no `{k}` in {j}")) as usize;
            let launch = get("launch_steps");
            println!(
                "{label}: {} nodes in, {} steps, {launch} launch steps; attention {}, group_norm {}, layer_norm {}, geglu {}, silu {}; \
                 import {:.0} ms, optimize {:.0} ms, total {:.0} ms (CPU {:.0} ms)",
                get("nodes_in"),
                get("steps"),
                get("attention"),
                get("group_norm"),
                get("layer_norm"),
                get("geglu"),
                get("silu"),
                j["import_ms"].as_f64().unwrap(),
                j["optimize_ms"].as_f64().unwrap(),
                elapsed.as_secs_f64() * 1e3,
                cpu.unwrap_or(elapsed).as_secs_f64() * 1e3
            );

            assert_eq!(get("attention"), n("Softmax"), "{label}: every attention recognized");
            assert_eq!(get("group_norm"), n("InstanceNormalization") + n("GroupNormalization"), "{label}: every GroupNorm fused");
            assert_eq!(get("layer_norm"), n("LayerNormalization"), "{label}: every LayerNorm fused");
            assert_eq!(get("geglu") + get("gelu"), n("Erf"), "{label}: every Erf-GELU recognized (GeGLU or GELU)");
            assert_eq!(get("silu") + get("quick_gelu"), n("Sigmoid"), "{label}: every Sigmoid recognized (SiLU or QuickGELU)");
            for op in LEFTOVERS {
                for key in ["ops_after", "ops_in_regions"] {
                    assert!(j[key].get(op).is_none(), "{label}: {op} left in {key}: {}", j[key]);
                }
            }
            if is_unet {
                assert_eq!(get("geglu"), n("Softmax") / 2, "{label}: one GeGLU per transformer layer");
                let budget = unet_launch_budget(n("Softmax"), n("InstanceNormalization") + n("GroupNormalization"), channels_last);
                assert!(launch <= budget, "{label}: {launch} launch steps, over the budget of {budget}");
            }
            let cpu = cpu.unwrap_or(elapsed);
            assert!(cpu <= CPU_LIMIT, "{label}: import + optimize + lower took {cpu:?} of CPU, over {CPU_LIMIT:?}");
        }
    }
    assert!(unets >= 3, "expected the SD 1.5, SD 2.1 and SDXL UNets among the graph-only fixtures, found {unets}");
    if let Some(kb) = peak_rss_kb() {
        println!("peak RSS {} MiB", kb >> 10);
        assert!(kb <= RSS_LIMIT_KB, "peak RSS {kb} KiB, over {RSS_LIMIT_KB} KiB");
    }
}
