//! `quilt explain MODEL.onnx [--json]`: what the compiler does with a model, without running
//! it. Loads the graph only (weights are not needed), imports it, optimizes it and lowers it to
//! a Plan, then reports node and step counts, per-op counts before and after, the patterns
//! recognized, each e-graph stage's size and time, and a bound on memory. Reshapes and
//! identities are views of other buffers, not steps (`quilt_rewrites::plan::BufferKind::View`):
//! they are counted as `views`, and `steps` counts only steps that do work (`launch_steps`,
//! once steps minus views, equals `steps`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use quilt_rewrites::import::{import, ImportOptions};
use quilt_rewrites::onnx::{load, LoadOptions};
use quilt_rewrites::plan::Step;
use quilt_rewrites::{optimize_graph, Graph, Op, OptimizeOptions, Plan};

use crate::error::{ModelsError, Result};

pub const USAGE: &str = "\
usage: quilt explain MODEL.onnx [--json] [--no-optimize] [--plan] [--channels-last]

Compiles MODEL (graph only: weights are not loaded) and reports ONNX nodes in, plan steps out
and views (reshapes: another buffer's memory under a new shape, not steps), per-op counts
before and after optimization, recognized patterns (attention, GroupNorm, LayerNorm, GELU,
GeGLU, SiLU, QuickGELU), each e-graph stage's size and time, and optimize_ms.
--json prints one JSON object; --plan also prints the plan; --no-optimize shows the plain lowering;
--channels-last plans as quilt's GPU device with cuDNN does (convolutions on NHWC data).";

#[derive(Debug, Clone, PartialEq)]
pub struct ExplainArgs {
    pub model: PathBuf,
    pub json: bool,
    pub optimize: bool,
    pub print_plan: bool,
    pub channels_last: bool,
}

pub fn parse_args(args: &[String]) -> Result<ExplainArgs> {
    let mut parsed = ExplainArgs { model: PathBuf::new(), json: false, optimize: true, print_plan: false, channels_last: false };
    let mut model = None;
    for a in args {
        match a.as_str() {
            "--json" => parsed.json = true,
            "--no-optimize" => parsed.optimize = false,
            "--plan" => parsed.print_plan = true,
            "--channels-last" => parsed.channels_last = true,
            flag if flag.starts_with('-') => return Err(ModelsError::Usage(format!("unknown option {flag}"))),
            path if model.is_none() => model = Some(PathBuf::from(path)),
            extra => return Err(ModelsError::Usage(format!("unexpected argument `{extra}`"))),
        }
    }
    parsed.model = model.ok_or_else(|| ModelsError::Usage("missing MODEL.onnx".into()))?;
    Ok(parsed)
}

/// Fused ops reported as recognized patterns, with their JSON keys.
const PATTERNS: &[(&str, &str)] = &[
    ("Attention", "attention"),
    ("GroupNorm", "group_norm"),
    ("LayerNorm", "layer_norm"),
    ("Gelu", "gelu"),
    ("GeGlu", "geglu"),
    ("Silu", "silu"),
    ("QuickGelu", "quick_gelu"),
];

fn op_counts_graph(g: &Graph) -> BTreeMap<String, usize> {
    let mut h = BTreeMap::new();
    for ix in g.node_indices() {
        let op = &g.node(ix).op;
        if !op.is_source() {
            *h.entry(op.name()).or_default() += 1;
        }
    }
    h
}

fn op_counts_plan(p: &Plan) -> BTreeMap<String, usize> {
    let mut h = BTreeMap::new();
    for s in &p.steps {
        let Step::Op(s) = s;
        *h.entry(s.op.name()).or_default() += 1;
    }
    h
}

/// Ops fused into stitched regions, by name (a region's normalization counts as its
/// GroupNorm/LayerNorm).
fn op_counts_in_regions(p: &Plan) -> BTreeMap<String, usize> {
    let mut h = BTreeMap::new();
    for s in &p.steps {
        let Step::Op(s) = s;
        if let Op::Stitched(r) = &s.op {
            for name in r.op_names() {
                *h.entry(name).or_default() += 1;
            }
        }
    }
    h
}

/// Compute-bound steps that go to vendor libraries / dedicated kernels.
fn is_library(op: &Op) -> bool {
    matches!(op, Op::MatMul | Op::Gemm { .. } | Op::Conv { .. } | Op::Attention { .. })
}

pub struct Explanation {
    pub json: serde_json::Value,
    pub text: String,
}

pub fn explain(model: &Path, optimize: bool, print_plan: bool, channels_last: bool) -> Result<Explanation> {
    let err = |e: quilt_rewrites::Error| ModelsError::Usage(format!("{}: {e}", model.display()));
    let start = Instant::now();
    let src = load(model, &LoadOptions { load_weights: false }).map_err(err)?;
    let imported = import(&src, &ImportOptions { lenient: false }).map_err(err)?;
    let import_ms = start.elapsed().as_secs_f64() * 1e3;
    let opts = OptimizeOptions {
        enabled: optimize,
        channels_last: channels_last.then(quilt_rewrites::layout::LayoutOptions::default),
        ..OptimizeOptions::default()
    };
    let t = Instant::now();
    let optimized = optimize_graph(&imported.graph, &opts).map_err(err)?;
    let plan = quilt_rewrites::lower::lower(&optimized.graph).map_err(err)?;
    let optimize_ms = t.elapsed().as_secs_f64() * 1e3;

    let before = op_counts_graph(&imported.graph);
    let after = op_counts_plan(&plan);
    let fused = op_counts_in_regions(&plan);
    let peak = &plan.memory.peak_bytes;
    // A pattern counts whether it runs as its own step or inside a stitched region.
    let pattern_count = |op: &str| after.get(op).copied().unwrap_or(0) + fused.get(op).copied().unwrap_or(0);
    let mut patterns = serde_json::Map::new();
    for (op, key) in PATTERNS {
        patterns.insert(key.to_string(), pattern_count(op).into());
    }
    let steps_of = |pred: &dyn Fn(&Op) -> bool| plan.steps.iter().filter(|s| { let Step::Op(s) = s; pred(&s.op) }).count();
    let stitched_steps = steps_of(&|o| matches!(o, Op::Stitched(_)));
    let library_steps = steps_of(&is_library);
    let views = plan.view_count();
    let regions: Vec<serde_json::Value> = plan
        .steps
        .iter()
        .filter_map(|s| {
            let Step::Op(s) = s;
            match &s.op {
                Op::Stitched(r) => Some(serde_json::json!({ "node": s.node, "ops": r.op_names(), "inputs": r.inputs.len(), "outputs": r.outputs.len() })),
                _ => None,
            }
        })
        .collect();
    let stitch_json = optimized.report.stitch.as_ref().map(|r| {
        serde_json::json!({
            "regions": r.regions, "nodes_fused": r.nodes_fused, "views_absorbed": r.views_absorbed,
            "weight_reshapes_folded": r.weight_reshapes_folded, "ms": r.time.as_secs_f64() * 1e3,
            "method": "greedy region growing after e-graph extraction",
        })
    });
    let layout_json = optimized.report.layout.as_ref().map(|l| {
        serde_json::json!({
            "convs": l.convs, "group_norms": l.group_norms, "followers": l.followers,
            "transposes_before": l.transposes_before, "transposes_after": l.transposes_after, "reshapes_added": l.reshapes_added,
        })
    });
    let stages: Vec<serde_json::Value> = optimized
        .report
        .stages
        .iter()
        .map(|s| {
            serde_json::json!({
                "name": s.name,
                "iterations": s.iterations,
                "nodes_before": s.nodes_before,
                "nodes_after": s.nodes_after,
                "classes_before": s.classes_before,
                "classes_after": s.classes_after,
                "ms": s.time.as_secs_f64() * 1e3,
                "stop": s.stop_reason,
                "rules": s.rules.iter().map(|r| serde_json::json!({
                    "name": r.name, "matches": r.matches, "applied": r.applied,
                    "search_ms": r.search.as_secs_f64() * 1e3, "apply_ms": r.apply.as_secs_f64() * 1e3,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut json = serde_json::json!({
        "model": model.display().to_string(),
        "optimize": optimize,
        "nodes_in": src.nodes.len(),
        "ir_nodes_in": imported.graph.node_count(),
        "steps": plan.steps.len(),
        "stitched_steps": stitched_steps,
        "library_steps": library_steps,
        "views": views,
        // Every step launches work now that views are buffers; kept for readers of the old key.
        "launch_steps": plan.steps.len(),
        "import_ms": import_ms,
        "optimize_ms": optimize_ms,
        "peak_bytes": peak.to_string(),
        "peak_bytes_note": "liveness memory plan: sum of arena slot sizes (an upper bound for every binding of the symbols)",
        "total_intermediate_bytes": plan.memory.total_bytes.to_string(),
        "memory_slots": plan.memory.slots.len(),
        "in_place_steps": plan.memory.in_place.len(),
        "ops_in_regions": fused,
        "regions": regions,
        "stitch": stitch_json,
        "layout": layout_json,
        "symbols": plan.symbols,
        "ops_before": before,
        "ops_after": after,
        "stages": stages,
    });
    let obj = json.as_object_mut().unwrap();
    for (k, v) in patterns {
        obj.insert(k, v);
    }

    let mut text = String::new();
    use std::fmt::Write;
    let _ = writeln!(text, "model       {}", model.display());
    let _ = writeln!(text, "nodes in    {} ONNX nodes → {} IR nodes (import {import_ms:.1} ms)", src.nodes.len(), imported.graph.node_count());
    let _ = writeln!(
        text,
        "steps out   {} (stitched {stitched_steps}, library {library_steps}, other {}) and {views} views",
        plan.steps.len(),
        plan.steps.len() - stitched_steps - library_steps
    );
    let _ = writeln!(text, "optimize    {optimize_ms:.1} ms ({})", if optimize { "e-graph" } else { "off" });
    // The same counts as the JSON: a pattern counts whether it runs as its own step or inside a region.
    let pats: Vec<String> = PATTERNS.iter().map(|(op, key)| format!("{key} {}", pattern_count(op))).collect();
    let _ = writeln!(text, "patterns    {}", pats.join(", "));
    let _ = writeln!(text, "peak bytes  ≤ {peak}  ({} arena slots, {} steps in place; all intermediates: {})", plan.memory.slots.len(), plan.memory.in_place.len(), plan.memory.total_bytes);
    if !fused.is_empty() {
        let list: Vec<String> = fused.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(text, "in regions  {}", list.join(", "));
    }
    let _ = writeln!(text, "ops         before → after");
    let names: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for n in names {
        let _ = writeln!(text, "  {n:<16} {:>5} → {:>5}", before.get(n).copied().unwrap_or(0), after.get(n).copied().unwrap_or(0));
    }
    let _ = write!(text, "{}", optimized.report);
    let _ = writeln!(text, "regions");
    for s in &plan.steps {
        let Step::Op(s) = s;
        if let Op::Stitched(r) = &s.op {
            let _ = writeln!(text, "  {:<60} {}", s.node, r.op_names().join(" → "));
        }
    }
    if print_plan {
        let _ = write!(text, "{plan}");
    }
    Ok(Explanation { json, text })
}

/// `quilt explain`; returns the exit status.
pub fn command(args: &[String]) -> i32 {
    let parsed = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("quilt explain: {e}\n\n{USAGE}");
            return 2;
        }
    };
    match explain(&parsed.model, parsed.optimize, parsed.print_plan, parsed.channels_last) {
        Ok(x) if parsed.json => {
            println!("{}", x.json);
            0
        }
        Ok(x) => {
            print!("{}", x.text);
            0
        }
        Err(e) => {
            eprintln!("quilt explain: error: {e}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_the_tiny_unet_in_both_spellings() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/unet");
        for file in ["model.onnx", "model.dynamo.onnx"] {
            let x = explain(&root.join(file), true, false, false).unwrap();
            let j = &x.json;
            assert_eq!(j["attention"], 8, "{file}");
            assert_eq!(j["group_norm"], 21, "{file}");
            assert_eq!(j["layer_norm"], 12, "{file}");
            assert_eq!(j["geglu"], 4, "{file}");
            assert!(j["steps"].as_u64().unwrap() < explain(&root.join(file), false, false, false).unwrap().json["steps"].as_u64().unwrap());
            assert!(j["peak_bytes"].as_str().unwrap().contains("batch"), "{}", j["peak_bytes"]);
            assert!(x.text.contains("stage fusion"));
            assert!(j["stitched_steps"].as_u64().unwrap() > 0 && j["library_steps"].as_u64().unwrap() > 0, "{file}");
            // The UNet's attention reshapes heads in and out: views, not steps.
            assert!(j["views"].as_u64().unwrap() > 0 && j["ops_after"].get("Reshape").is_none(), "{file}: {}", j["ops_after"]);
            assert!(x.text.contains("GroupNorm → Mul → Add → Silu"), "{file}: no GroupNorm+SiLU region");
        }
    }

    #[test]
    fn bad_arguments() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(parse_args(&s(&[])).is_err());
        assert!(parse_args(&s(&["m.onnx", "--bogus"])).is_err());
        assert_eq!(command(&s(&["/nonexistent.onnx"])), 2);
    }
}
