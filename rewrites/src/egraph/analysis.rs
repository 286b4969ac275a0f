//! Per-class facts: the value's types (dtype + symbolic shape), its data when it is a known
//! constant, and whether it depends only on weights/constants (foldable before any input
//! arrives). `merge` is a soundness alarm: two classes with different types must never be
//! merged; if a rule does it, the mismatch is recorded and the optimizer fails loudly.

use std::sync::Arc;

use egg::{DidMerge, Id};

use crate::egraph::lang::{ENode, NodeKind, OpTable};
use crate::ir::{Op, TensorType};
use crate::tensor::Tensor;

pub type EGraph = egg::EGraph<ENode, GraphAnalysis>;

#[derive(Default)]
pub struct GraphAnalysis {
    pub ops: OpTable,
    /// Merges of classes whose types disagree (each a message); must stay empty.
    pub type_conflicts: Vec<String>,
    /// The model node name of each class (keyed by the id it had when it was created; the
    /// first name wins), and `<anchor node>/<op>` for classes that rules created.
    pub names: std::collections::HashMap<Id, String>,
}

#[derive(Clone, Debug)]
pub struct ClassData {
    /// One type per output: a single value has one, a tuple (Split) several, `Absent` none.
    pub types: Vec<TensorType>,
    /// Depends only on weights and constants.
    pub weights_only: bool,
    /// The data, when the class is a constant.
    pub konst: Option<Arc<Tensor>>,
}

impl egg::Analysis<ENode> for GraphAnalysis {
    type Data = ClassData;

    fn make(egraph: &mut EGraph, enode: &ENode, _id: Id) -> ClassData {
        let op = egraph.analysis.ops.get(enode.op);
        let children_weights_only = enode.children.iter().all(|c| egraph[*c].data.weights_only);
        match &op.kind {
            NodeKind::Absent => ClassData { types: vec![], weights_only: true, konst: None },
            NodeKind::Proj(i) => {
                let tuple = &egraph[enode.children[0]].data;
                ClassData { types: vec![tuple.types[*i].clone()], weights_only: tuple.weights_only, konst: None }
            }
            NodeKind::Ir(op_) => {
                let (weights_only, konst) = match op_ {
                    Op::Constant(t) => (true, Some(t.clone())),
                    Op::Weight { .. } => (true, None),
                    Op::Input { .. } | Op::SymbolicValue { .. } => (false, None),
                    _ => (children_weights_only, None),
                };
                ClassData { types: op.outputs.clone(), weights_only, konst }
            }
        }
    }

    fn merge(&mut self, a: &mut ClassData, b: ClassData) -> DidMerge {
        if a.types != b.types {
            let show = |t: &[TensorType]| t.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ");
            self.type_conflicts.push(format!("merged values of types ({}) and ({})", show(&a.types), show(&b.types)));
        }
        let mut changed_a = false;
        let mut changed_b = false;
        if !a.weights_only && b.weights_only {
            a.weights_only = true;
            changed_a = true;
        } else if a.weights_only && !b.weights_only {
            changed_b = true;
        }
        if a.konst.is_none() && b.konst.is_some() {
            a.konst = b.konst;
            changed_a = true;
        } else if a.konst.is_some() && b.konst.is_none() {
            changed_b = true;
        }
        DidMerge(changed_a, changed_b)
    }
}
