//! Rewrite rules: narrow, one-directional, each anchored on one op kind and checked in Rust.
//!
//! A [`Rule`] looks at one e-node of its anchor kind and, when the surrounding classes have the
//! shape it wants, returns the replacement as an [`Rhs`] tree whose every new node already
//! carries its output types (computed and checked while matching, so nothing ill-typed is
//! ever inserted). [`RuleRewrite`] adapts a `Rule` to egg's `Searcher`/`Applier` pair and
//! counts matches, applications and time per rule.

pub mod activation;
pub mod attention;
pub mod cleanup;
pub mod linear;
pub mod norm;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use egg::{Id, Rewrite, SearchMatches, Subst, Symbol, Var};

use crate::dtype::DType;
use crate::egraph::analysis::{EGraph, GraphAnalysis};
use crate::egraph::lang::{ENode, NodeKind, TypedOp};
use crate::ir::{Op, TensorType};
use crate::tensor::{Tensor, TensorData};

/// The replacement a rule asks for: existing classes and new typed nodes over them.
#[derive(Clone, Debug)]
pub enum Rhs {
    Class(Id),
    Node(TypedOp, Vec<Rhs>),
}

impl Rhs {
    pub fn op(op: Op, out: TensorType, children: Vec<Rhs>) -> Rhs {
        Rhs::Node(TypedOp::ir(op, out), children)
    }

    pub fn absent() -> Rhs {
        Rhs::Node(TypedOp { kind: NodeKind::Absent, outputs: vec![] }, vec![])
    }

    pub fn konst(t: Tensor) -> Rhs {
        let ty = TensorType::of(&t);
        Rhs::op(Op::Constant(Arc::new(t)), ty, vec![])
    }
}

pub trait Rule: Send + Sync {
    fn name(&self) -> &'static str;
    /// Whether `op` is this rule's anchor (the node kind it starts matching from).
    fn anchor(&self, op: &Op) -> bool;
    /// The replacement for the class of `node` (whose op is an anchor), if the rule applies.
    fn apply(&self, eg: &EGraph, class: Id, node: &ENode, op: &Op) -> Option<Rhs>;
}

/// Match and application counts and times of one rule, summed over a run.
#[derive(Clone, Debug, Default)]
pub struct RuleStats {
    pub name: String,
    /// Matches found (a match that is already in the e-graph is found again each iteration).
    pub matches: usize,
    /// Matches whose application changed the e-graph.
    pub applied: usize,
    pub search: Duration,
    pub apply: Duration,
}

struct Shared {
    rule: Box<dyn Rule>,
    /// The current iteration's matches; a `Subst` carries the index of its entry.
    pending: Mutex<Vec<(Id, Rhs)>>,
    stats: Mutex<RuleStats>,
}

/// One rule as egg's searcher and applier (they share the pending matches).
pub struct RuleRewrite(Arc<Shared>);

fn match_var() -> Var {
    "?match".parse().unwrap()
}

impl RuleRewrite {
    pub fn new(rule: Box<dyn Rule>) -> RuleRewrite {
        let name = rule.name().to_string();
        RuleRewrite(Arc::new(Shared {
            rule,
            pending: Mutex::new(Vec::new()),
            stats: Mutex::new(RuleStats { name, ..RuleStats::default() }),
        }))
    }

    pub fn rewrite(&self) -> Rewrite<ENode, GraphAnalysis> {
        let s = Searcher(self.0.clone());
        let a = Applier(self.0.clone());
        Rewrite::new(self.0.rule.name(), s, a).expect("rule names are unique and vars agree")
    }

    pub fn stats(&self) -> RuleStats {
        self.0.stats.lock().unwrap().clone()
    }
}

struct Searcher(Arc<Shared>);
struct Applier(Arc<Shared>);

impl egg::Searcher<ENode, GraphAnalysis> for Searcher {
    fn search_eclass_with_limit(&self, eg: &EGraph, eclass: Id, limit: usize) -> Option<SearchMatches<'_, ENode>> {
        let mut all = self.search_classes(eg, std::iter::once(eclass), limit);
        all.pop()
    }

    fn search_with_limit(&self, eg: &EGraph, limit: usize) -> Vec<SearchMatches<'_, ENode>> {
        self.0.pending.lock().unwrap().clear();
        let ids: Vec<Id> = eg.classes().map(|c| c.id).collect();
        self.search_classes(eg, ids.into_iter(), limit)
    }

    fn vars(&self) -> Vec<Var> {
        vec![]
    }
}

impl Searcher {
    fn search_classes(&self, eg: &EGraph, classes: impl Iterator<Item = Id>, limit: usize) -> Vec<SearchMatches<'_, ENode>> {
        let start = Instant::now();
        let rule = &self.0.rule;
        let mut pending = self.0.pending.lock().unwrap();
        let mut out = Vec::new();
        let mut found = 0;
        for id in classes {
            let mut substs = Vec::new();
            for node in &eg[id].nodes {
                if found >= limit {
                    break;
                }
                let Some(op) = eg.analysis.ops.get(node.op).op() else { continue };
                if !rule.anchor(op) {
                    continue;
                }
                if let Some(rhs) = rule.apply(eg, id, node, op) {
                    let mut subst = Subst::with_capacity(1);
                    subst.insert(match_var(), Id::from(pending.len()));
                    pending.push((id, rhs));
                    substs.push(subst);
                    found += 1;
                }
            }
            if !substs.is_empty() {
                out.push(SearchMatches { eclass: id, substs, ast: None });
            }
        }
        let mut stats = self.0.stats.lock().unwrap();
        stats.matches += found;
        stats.search += start.elapsed();
        out
    }
}

impl egg::Applier<ENode, GraphAnalysis> for Applier {
    fn apply_one(&self, eg: &mut EGraph, eclass: Id, subst: &Subst, _ast: Option<&egg::PatternAst<ENode>>, _rule: Symbol) -> Vec<Id> {
        let start = Instant::now();
        let index = usize::from(subst[match_var()]);
        let entry = self.0.pending.lock().unwrap().get(index).cloned();
        let Some((class, rhs)) = entry else { return vec![] };
        debug_assert_eq!(eg.find(class), eg.find(eclass));
        let base = eg.analysis.names.get(&class).cloned().unwrap_or_else(|| "quilt".to_string());
        let new = insert(eg, &rhs, &base);
        let changed = eg.union(eclass, new);
        let mut stats = self.0.stats.lock().unwrap();
        stats.apply += start.elapsed();
        if changed {
            stats.applied += 1;
            vec![new]
        } else {
            vec![]
        }
    }
}

/// Adds the new nodes of `rhs`; returns the class of its root.
fn insert(eg: &mut EGraph, rhs: &Rhs, base: &str) -> Id {
    match rhs {
        Rhs::Class(id) => *id,
        Rhs::Node(op, children) => {
            let children: Vec<Id> = children.iter().map(|c| insert(eg, c, base)).collect();
            let name = match op.op() {
                Some(o) => format!("{base}/{}", o.name()),
                None => format!("{base}/absent"),
            };
            let op = eg.analysis.ops.intern(op.clone());
            let id = eg.add(ENode { op, children });
            eg.analysis.names.entry(id).or_insert(name);
            id
        }
    }
}

// ---- helpers for matching ----

/// The IR nodes of a class, with their ops.
pub fn ir_nodes<'a>(eg: &'a EGraph, class: Id) -> impl Iterator<Item = (&'a ENode, &'a Op)> + 'a {
    eg[class].nodes.iter().filter_map(move |n| eg.analysis.ops.get(n.op).op().map(|o| (n, o)))
}

/// The IR nodes of a class whose op satisfies `pred`.
pub fn nodes_where<'a>(eg: &'a EGraph, class: Id, pred: impl Fn(&Op) -> bool + 'a) -> impl Iterator<Item = (&'a ENode, &'a Op)> + 'a {
    ir_nodes(eg, class).filter(move |(_, o)| pred(o))
}

/// The type of a single-valued class.
pub fn ty(eg: &EGraph, class: Id) -> Option<&TensorType> {
    let t = &eg[class].data.types;
    if t.len() == 1 {
        t.first()
    } else {
        None
    }
}

pub fn same(eg: &EGraph, a: Id, b: Id) -> bool {
    eg.find(a) == eg.find(b)
}

/// The value of a constant whose elements are all equal (a scalar, or a splat), as f64.
pub fn splat(eg: &EGraph, class: Id) -> Option<f64> {
    let t = eg[class].data.konst.as_ref()?;
    if !t.dtype().is_float() || t.numel() == 0 {
        return None;
    }
    let v = t.data.to_f64_vec();
    let first = v[0];
    v.iter().all(|&x| x == first).then_some(first)
}

/// A constant with exactly one element.
pub fn scalar(eg: &EGraph, class: Id) -> Option<f64> {
    let t = eg[class].data.konst.as_ref()?;
    (t.numel() == 1).then(|| splat(eg, class)).flatten()
}

pub fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1e-30)
}

/// A constant of `shape` with every element `value`.
pub fn filled(dtype: DType, shape: &[usize], value: f64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::new(shape.to_vec(), TensorData::from_f64(dtype, &vec![value; n]))
}

/// `perm` is the identity except that it swaps the last two axes.
pub fn swaps_last_two(perm: &[usize]) -> bool {
    let r = perm.len();
    r >= 2 && perm[r - 1] == r - 2 && perm[r - 2] == r - 1 && (0..r - 2).all(|i| perm[i] == i)
}

pub fn swap_last_two(rank: usize) -> Vec<usize> {
    let mut p: Vec<usize> = (0..rank).collect();
    p.swap(rank - 1, rank - 2);
    p
}

/// A rule given as two functions (most rules are).
pub struct FnRule {
    pub name: &'static str,
    pub anchor: fn(&Op) -> bool,
    pub apply: fn(&EGraph, Id, &ENode, &Op) -> Option<Rhs>,
}

impl Rule for FnRule {
    fn name(&self) -> &'static str {
        self.name
    }

    fn anchor(&self, op: &Op) -> bool {
        (self.anchor)(op)
    }

    fn apply(&self, eg: &EGraph, class: Id, node: &ENode, op: &Op) -> Option<Rhs> {
        (self.apply)(eg, class, node, op)
    }
}
