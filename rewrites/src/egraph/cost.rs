//! The cost model and the extractor.
//!
//! Cost of one e-node = bytes it moves + a fixed charge per kernel launch:
//! - bytes = bytes of every input it reads + bytes of every output it writes, with each
//!   symbolic dim evaluated at [`REPRESENTATIVE_DIM`] (a mid-sized SD dimension; only the
//!   ranking of alternatives matters, and it is the same for every binding of the symbols as
//!   long as fused forms move fewer bytes, which holds for the fused ops we make);
//! - a launch costs [`LAUNCH_BYTES`] byte-equivalents (≈ 2 µs of launch overhead at ≈ 2 TB/s);
//! - `Reshape` is a view on a real device: [`VIEW_COST`], no launch; sources (inputs, weights,
//!   constants), `Proj` and `Absent` are free.
//!
//! Fused ops never materialise their intermediates (attention never writes the N×M scores),
//! so they win by construction. A calibrated table for library calls (GEMM, conv, attention)
//! replaces the byte count for those ops once the GPU backend measures them.
//!
//! Extraction is bottom-up greedy over *tree* cost (a class's cost = its node's cost + its
//! children's costs), computed exactly in `u128` so that alternatives deep in a large graph still
//! compare by their real difference. Known limitation: tree cost counts a value shared by two
//! consumers twice (a residual, Q/K/V reading one LayerNorm). That biases choices toward forms
//! that read shared values fewer times, which is the fused form for every rule we have; a
//! sharing-aware (DAG) extractor replaces it when stitching alternatives arrive.

use std::collections::HashMap;

use egg::Id;

use crate::egraph::analysis::EGraph;
use crate::egraph::lang::{ENode, NodeKind};
use crate::ir::{Op, TensorType};

pub const REPRESENTATIVE_DIM: i64 = 64;
pub const LAUNCH_BYTES: u128 = 4 << 20;
pub const VIEW_COST: u128 = 1;

/// Bytes of a value with every symbol set to [`REPRESENTATIVE_DIM`].
pub fn representative_bytes(t: &TensorType) -> u128 {
    let n = t.numel().eval(&|_| Some(REPRESENTATIVE_DIM)).unwrap_or(REPRESENTATIVE_DIM).max(0) as u128;
    n * t.dtype.size_bytes() as u128
}

/// The modelled cost of running `node` once (not counting its inputs' producers).
pub fn node_cost(egraph: &EGraph, node: &ENode) -> u128 {
    let op = egraph.analysis.ops.get(node.op);
    match &op.kind {
        NodeKind::Absent | NodeKind::Proj(_) => 0,
        NodeKind::Ir(o) if o.is_source() => 0,
        NodeKind::Ir(Op::Reshape) => VIEW_COST,
        NodeKind::Ir(_) => {
            let read: u128 = node.children.iter().flat_map(|c| egraph[*c].data.types.iter()).map(representative_bytes).sum();
            let written: u128 = op.outputs.iter().map(representative_bytes).sum();
            LAUNCH_BYTES + read + written
        }
    }
}

/// The chosen node of every class reachable from `roots`, by least tree cost.
pub fn extract(egraph: &EGraph, roots: &[Id]) -> Result<HashMap<Id, ENode>, String> {
    // Fixpoint over all classes: a node is priced once all its children are.
    let mut best: HashMap<Id, (u128, ENode)> = HashMap::new();
    let own: HashMap<&ENode, u128> = egraph.classes().flat_map(|c| c.nodes.iter()).map(|n| (n, node_cost(egraph, n))).collect();
    loop {
        let mut changed = false;
        for class in egraph.classes() {
            for node in &class.nodes {
                let mut total = own[node];
                let mut ok = true;
                for c in &node.children {
                    match best.get(&egraph.find(*c)) {
                        Some((cost, _)) => total = total.saturating_add(*cost),
                        None => {
                            ok = false;
                            break;
                        }
                    }
                }
                if !ok {
                    continue;
                }
                match best.get(&class.id) {
                    Some((cost, _)) if *cost <= total => {}
                    _ => {
                        best.insert(class.id, (total, node.clone()));
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut chosen = HashMap::new();
    let mut stack: Vec<Id> = roots.iter().map(|r| egraph.find(*r)).collect();
    while let Some(id) = stack.pop() {
        if chosen.contains_key(&id) {
            continue;
        }
        let (_, node) = best.get(&id).ok_or_else(|| format!("e-class {id} has no finite-cost node (a cycle with no way out)"))?;
        stack.extend(node.children.iter().map(|c| egraph.find(*c)));
        chosen.insert(id, node.clone());
    }
    Ok(chosen)
}
