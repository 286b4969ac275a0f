//! Golden plans: readable snapshots of the optimized plan for the tiny SD UNet fixture's ResNet
//! block, transformer block, attention and upsample (the steps and views whose model node lies
//! under one module path), checked in under `tests/golden/`. Buffer ids are renumbered per snapshot in
//! order of appearance so that a change elsewhere in the model does not touch them. A changed
//! plan fails here with both texts; `QUILT_BLESS=1` rewrites the files (review the diff).

use std::collections::HashMap;
use std::path::PathBuf;

use quilt_rewrites::import::{import, ImportOptions};
use quilt_rewrites::onnx::{load, LoadOptions};
use quilt_rewrites::plan::{BufferKind, Listed, Step};
use quilt_rewrites::{optimize, Op, Plan};

/// (snapshot file, node-name fragment that selects its steps)
const SNAPSHOTS: &[(&str, &str)] = &[
    ("unet_resnet_block.plan.txt", "/down_blocks.0/resnets.0/"),
    ("unet_transformer_block.plan.txt", "/down_blocks.0/attentions.0/"),
    ("unet_attention.plan.txt", "/down_blocks.0/attentions.0/transformer_blocks.0/attn1/"),
    ("unet_upsample.plan.txt", "/up_blocks.0/upsamplers.0/"),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn unet_plan() -> Plan {
    let path = root().join("../models/fixtures/unet/model.onnx");
    let src = load(&path, &LoadOptions { load_weights: false }).unwrap();
    let graph = import(&src, &ImportOptions::default()).unwrap().graph;
    optimize(&graph).unwrap()
}

/// The selected steps and views, one per line in plan order, with buffers renumbered
/// `%0, %1, …` by first use.
fn snapshot(plan: &Plan, fragment: &str) -> String {
    let mut ids: HashMap<usize, usize> = HashMap::new();
    let mut id = |b: usize| {
        let n = ids.len();
        format!("%{}", *ids.entry(b).or_insert(n))
    };
    let mut out = format!("# optimized plan steps of the tiny SD UNet under '{fragment}'\n");
    for line in plan.listing() {
        let i = match line {
            Listed::Step(i) => i,
            Listed::View(v) => {
                let BufferKind::View { of, node } = &plan.buffers[v].kind else { unreachable!("listed as a view") };
                if node.contains(fragment) {
                    let of = id(*of);
                    let node = node.split(fragment).last().unwrap_or(node);
                    out += &format!("view {} = {of} : {}  # {node}\n", id(v), plan.buffers[v].ty);
                }
                continue;
            }
        };
        let Step::Op(s) = &plan.steps[i];
        if !s.node.contains(fragment) {
            continue;
        }
        let ins: Vec<String> = s.inputs.iter().map(|b| b.map_or("_".into(), &mut id)).collect();
        let outs: Vec<String> = s.outputs.iter().map(|&b| format!("{} : {}", id(b), plan.buffers[b].ty)).collect();
        let node = s.node.split(fragment).last().unwrap_or(&s.node);
        out += &match &s.op {
            Op::Stitched(r) => format!("{} = {r} with x = ({})  # {}\n", outs.join(", "), ins.join(", "), node),
            other => format!("{} = {}({})  # {}\n", outs.join(", "), other.label(), ins.join(", "), node),
        };
    }
    out
}

#[test]
fn golden_plans_match() {
    let plan = unet_plan();
    let bless = std::env::var_os("QUILT_BLESS").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    for (file, fragment) in SNAPSHOTS {
        let text = snapshot(&plan, fragment);
        assert!(text.lines().count() > 1, "{file}: no step under '{fragment}'");
        let path = root().join("golden").join(file);
        if bless {
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(want) if want == text => {}
            Ok(want) => failures.push(format!("{file} differs (QUILT_BLESS=1 rewrites it)\n--- checked in\n{want}--- now\n{text}")),
            Err(e) => failures.push(format!("{}: {e} (QUILT_BLESS=1 writes it)", path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The snapshots show what the stitcher is for: the ResNet block's norm+SiLU regions; and the
/// transformer block's residual adds inside its linear layers' Gemms (`quilt_rewrites::epilogue`:
/// a fourth input), its three LayerNorms as regions (with their affine) and attention on packed
/// projections.
#[test]
fn golden_plans_contain_the_fused_regions() {
    let plan = unet_plan();
    let resnet = snapshot(&plan, SNAPSHOTS[0].1);
    assert!(resnet.contains("GroupNorm{groups=") && resnet.contains("Silu(t"), "{resnet}");
    let block = snapshot(&plan, SNAPSHOTS[1].1);
    let residual_gemms = block.lines().filter(|l| l.contains("= Gemm(") && l.matches(", %").count() == 3).count();
    let norm_regions = block.lines().filter(|l| l.contains("stitched[") && l.contains("LayerNorm{")).count();
    // Both attentions read packed projections: q|k|v for self-attention, k|v for cross-attention.
    let packed = block.contains("Attention{columns=0..32,32..64,64..96}(") && block.contains("Attention{columns=0..32,0..32,32..64}(");
    assert!(norm_regions == 3 && packed && residual_gemms == 3, "{block}");
}
