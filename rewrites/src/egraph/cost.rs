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
//! Extraction minimises the *DAG* cost of the chosen graph: every chosen class is paid once,
//! however many consumers read it (a residual, Q/K/V reading one LayerNorm). Two phases:
//! 1. bottom-up greedy over *tree* cost (a class's cost = its node's cost + its children's
//!    costs, exact in `u128`), which gives every class a finite choice but counts a shared value
//!    once per consumer, so it favours forms that recompute from raw inputs over forms that
//!    reuse a value some other part of the graph computes anyway;
//! 2. sharing-aware improvement: for each reachable class with alternatives, switch to the
//!    alternative that lowers the true DAG cost of the whole selection (recomputed exactly,
//!    selections with a cycle rejected), until no switch helps. Deterministic: classes and nodes
//!    are visited in id order.

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

/// The chosen node of every class reachable from `roots`: least tree cost first, then improved
/// for sharing (the module doc).
pub fn extract(egraph: &EGraph, roots: &[Id]) -> Result<HashMap<Id, ENode>, String> {
    let classes = Classes::new(egraph);
    let roots: Vec<usize> = roots.iter().map(|r| usize::from(egraph.find(*r))).collect();
    let mut selection = Selection::new(&classes, tree_choice(&classes));
    selection.improve_for_sharing(&roots)?;
    let mut chosen = HashMap::new();
    let mut stack = roots;
    while let Some(class) = stack.pop() {
        let id = Id::from(class);
        if chosen.contains_key(&id) {
            continue;
        }
        let alt = selection.alt(class).ok_or_else(|| format!("e-class {id} has no finite-cost node (a cycle with no way out)"))?;
        stack.extend(alt.children.iter().copied());
        chosen.insert(id, alt.node.clone());
    }
    Ok(chosen)
}

/// One node of a class: its own cost and its children's class indices (canonical).
struct Alt<'a> {
    node: &'a ENode,
    cost: u128,
    children: Vec<usize>,
}

/// The e-graph's classes as dense arrays indexed by class id (non-canonical ids stay empty), so
/// that extraction walks vectors rather than hashing nodes.
struct Classes<'a> {
    alts: Vec<Vec<Alt<'a>>>,
}

impl<'a> Classes<'a> {
    fn new(egraph: &'a EGraph) -> Classes<'a> {
        let n = egraph.classes().map(|c| usize::from(c.id) + 1).max().unwrap_or(0);
        let mut alts: Vec<Vec<Alt>> = (0..n).map(|_| Vec::new()).collect();
        for class in egraph.classes() {
            alts[usize::from(class.id)] = class
                .nodes
                .iter()
                .map(|node| Alt { node, cost: node_cost(egraph, node), children: node.children.iter().map(|c| usize::from(egraph.find(*c))).collect() })
                .collect();
        }
        Classes { alts }
    }
}

/// Phase 1: each class's node of least tree cost, as an index into its alternatives (classes on
/// a cycle with no way out get none). Sweeps in id order until nothing changes: classes are
/// created in graph order and rules add new classes after their inputs, so few sweeps are needed.
fn tree_choice(classes: &Classes) -> Vec<Option<usize>> {
    let n = classes.alts.len();
    let mut best: Vec<Option<(u128, usize)>> = vec![None; n];
    loop {
        let mut changed = false;
        for class in 0..n {
            for (k, alt) in classes.alts[class].iter().enumerate() {
                let mut total = alt.cost;
                let priced = alt.children.iter().all(|&c| match best[c] {
                    Some((cost, _)) => {
                        total = total.saturating_add(cost);
                        true
                    }
                    None => false,
                });
                if priced && best[class].is_none_or(|(cost, _)| total < cost) {
                    best[class] = Some((total, k));
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    best.into_iter().map(|b| b.map(|(_, k)| k)).collect()
}

/// Rounds of phase 2 at most (each round is a pass over every reachable class; a round with no
/// improvement ends it earlier).
const SHARING_ROUNDS: usize = 4;

/// One alternative per class, with the true DAG cost of what the roots reach.
struct Selection<'c, 'a> {
    classes: &'c Classes<'a>,
    choice: Vec<Option<usize>>,
    /// Scratch for `dag_cost`: per class, the epoch it was last entered and finished in.
    entered: Vec<u32>,
    finished: Vec<u32>,
    epoch: u32,
}

impl<'c, 'a> Selection<'c, 'a> {
    fn new(classes: &'c Classes<'a>, choice: Vec<Option<usize>>) -> Selection<'c, 'a> {
        let n = choice.len();
        Selection { classes, choice, entered: vec![0; n], finished: vec![0; n], epoch: 0 }
    }

    fn alt(&self, class: usize) -> Option<&'c Alt<'a>> {
        let k = self.choice.get(class).copied().flatten()?;
        self.classes.alts[class].get(k)
    }

    /// The cost of every class `roots` reach under the current choice, each paid once; `None`
    /// when the choice has a cycle or a reached class has no node.
    fn dag_cost(&mut self, roots: &[usize]) -> Option<u128> {
        self.epoch += 1;
        let epoch = self.epoch;
        let mut total: u128 = 0;
        // Iterative DFS: (class, next child index).
        let mut stack: Vec<(usize, usize)> = Vec::new();
        for &r in roots {
            if self.finished[r] == epoch {
                continue;
            }
            if self.entered[r] == epoch {
                return None;
            }
            self.entered[r] = epoch;
            stack.push((r, 0));
            while let Some(&mut (class, ref mut next)) = stack.last_mut() {
                let alt = self.alt(class)?;
                if let Some(&c) = alt.children.get(*next) {
                    *next += 1;
                    if self.finished[c] == epoch {
                        continue;
                    }
                    if self.entered[c] == epoch {
                        return None; // a back edge: this choice is cyclic
                    }
                    self.entered[c] = epoch;
                    stack.push((c, 0));
                } else {
                    self.finished[class] = epoch;
                    total = total.saturating_add(alt.cost);
                    stack.pop();
                }
            }
        }
        Some(total)
    }

    /// The classes `roots` reach under the current choice that have more than one node, in id
    /// order.
    fn reachable_with_alternatives(&self, roots: &[usize]) -> Vec<usize> {
        let mut seen = vec![false; self.choice.len()];
        let mut stack: Vec<usize> = roots.to_vec();
        let mut out = Vec::new();
        while let Some(class) = stack.pop() {
            if std::mem::replace(&mut seen[class], true) {
                continue;
            }
            if self.classes.alts[class].len() > 1 {
                out.push(class);
            }
            if let Some(alt) = self.alt(class) {
                stack.extend(alt.children.iter().copied());
            }
        }
        out.sort_unstable();
        out
    }

    /// Phase 2: switch classes to the alternative that lowers the DAG cost most, class by class,
    /// until a round changes nothing.
    fn improve_for_sharing(&mut self, roots: &[usize]) -> Result<(), String> {
        let Some(mut current) = self.dag_cost(roots) else {
            return Err("the least-tree-cost choice reaches a class with no finite-cost node or a cycle".into());
        };
        for _ in 0..SHARING_ROUNDS {
            let mut improved = false;
            for class in self.reachable_with_alternatives(roots) {
                let kept = self.choice[class];
                let mut best = (current, kept);
                for (k, alt) in self.classes.alts[class].iter().enumerate() {
                    if kept == Some(k) || alt.children.iter().any(|&c| self.choice[c].is_none()) {
                        continue;
                    }
                    self.choice[class] = Some(k);
                    if let Some(cost) = self.dag_cost(roots) {
                        if cost < best.0 {
                            best = (cost, Some(k));
                        }
                    }
                }
                self.choice[class] = best.1;
                if best.0 < current {
                    current = best.0;
                    improved = true;
                }
            }
            if !improved {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egraph::lang::TypedOp;
    use crate::egraph::GraphAnalysis;
    use crate::ir::{BinaryOp, UnaryOp};
    use crate::sym::SymDim;
    use crate::DType;

    fn add(g: &mut EGraph, op: Op, children: Vec<Id>) -> Id {
        let ty = TensorType::new(DType::F32, vec![SymDim::konst(64), SymDim::konst(64)]);
        let op = g.analysis.ops.intern(TypedOp::ir(op, ty));
        g.add(ENode { op, children })
    }

    /// r1 = neg(s), r2 = sqrt(s) ≡ add(x, x), s = exp(x). Per tree cost `add(x, x)` is cheaper
    /// than `sqrt(s)` plus all of `s`; but `s` is computed for r1 anyway, so the selection that
    /// reuses it moves fewer bytes in all, and that is the one extraction must return.
    #[test]
    fn extraction_reuses_a_value_another_root_computes_anyway() {
        let mut g = EGraph::new(GraphAnalysis::default());
        let x = add(&mut g, Op::Input { name: "x".into() }, vec![]);
        let s = add(&mut g, Op::Unary(UnaryOp::Exp), vec![x]);
        let r1 = add(&mut g, Op::Unary(UnaryOp::Neg), vec![s]);
        let via_s = add(&mut g, Op::Unary(UnaryOp::Sqrt), vec![s]);
        let direct = add(&mut g, Op::Binary(BinaryOp::Add), vec![x, x]);
        g.union(via_s, direct);
        g.rebuild();
        let r2 = g.find(via_s);
        let node_of = |g: &EGraph, id: Id| g[id].nodes.iter().find(|n| n.children.len() == 1).cloned().unwrap();
        // Tree cost alone prefers the direct form (the premise of the test).
        let classes = Classes::new(&g);
        let tree = tree_choice(&classes);
        let r2i = usize::from(g.find(r2));
        let xi = usize::from(g.find(x));
        assert_eq!(classes.alts[r2i][tree[r2i].unwrap()].children, vec![xi, xi], "tree cost should pick add(x, x)");

        let chosen = extract(&g, &[r1, r2]).unwrap();
        assert_eq!(chosen[&g.find(r2)], node_of(&g, r2), "the sharing-aware choice reads s");
        // Alone, r2 has no reason to compute s: the direct form stays.
        let alone = extract(&g, &[r2]).unwrap();
        assert_eq!(alone[&g.find(r2)].children, vec![g.find(x), g.find(x)]);
        assert!(!alone.contains_key(&g.find(s)));
    }
}
