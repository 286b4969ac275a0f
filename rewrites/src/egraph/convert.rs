//! `ir::Graph` → e-graph, and the extracted choice → `ir::Graph`.
//!
//! Single-output nodes become one e-node. A multi-output node (Split) becomes a tuple e-node
//! (its class carries every output type) plus one `Proj(i)` e-node per output. Absent optional
//! inputs point at the `Absent` class. Every class remembers the name of the model node that
//! first produced it, so plans and messages keep the model's names.

use std::collections::HashMap;

use egg::Id;
use petgraph::graph::NodeIndex;

use crate::egraph::analysis::{EGraph, GraphAnalysis};
use crate::egraph::lang::{ENode, NodeKind, TypedOp};
use crate::error::{Error, Result};
use crate::ir::{Graph, GraphOutput, Node, Op, ValueRef};

/// An imported graph inside an e-graph.
pub struct Loaded {
    pub egraph: EGraph,
    /// Graph inputs in order (`Op::Input` classes).
    pub inputs: Vec<Id>,
    pub outputs: Vec<(String, Id)>,
}

pub fn load(graph: &Graph) -> Loaded {
    let mut egraph = EGraph::new(GraphAnalysis::default());
    let absent_op = egraph.analysis.ops.intern(TypedOp { kind: NodeKind::Absent, outputs: vec![] });
    let absent = egraph.add(ENode { op: absent_op, children: vec![] });
    let mut value: HashMap<ValueRef, Id> = HashMap::new();
    let mut inputs = Vec::new();
    for ix in graph.node_indices() {
        let node = graph.node(ix);
        let children: Vec<Id> = node.inputs.iter().map(|v| v.map_or(absent, |v| value[&v])).collect();
        let op = egraph.analysis.ops.intern(TypedOp { kind: NodeKind::Ir(node.op.clone()), outputs: node.outputs.clone() });
        let id = egraph.add(ENode { op, children });
        egraph.analysis.names.entry(id).or_insert_with(|| node.name.clone());
        if matches!(node.op, Op::Input { .. }) {
            inputs.push(id);
        }
        if node.outputs.len() == 1 {
            value.insert(ValueRef { node: ix, output: 0 }, id);
        } else {
            for (i, ty) in node.outputs.iter().enumerate() {
                let proj = egraph.analysis.ops.intern(TypedOp { kind: NodeKind::Proj(i), outputs: vec![ty.clone()] });
                let p = egraph.add(ENode { op: proj, children: vec![id] });
                egraph.analysis.names.entry(p).or_insert_with(|| node.name.clone());
                value.insert(ValueRef { node: ix, output: i }, p);
            }
        }
    }
    let outputs = graph.outputs.iter().map(|o| (o.name.clone(), value[&o.value])).collect();
    egraph.rebuild();
    Loaded { egraph, inputs, outputs }
}

/// Builds the graph the extractor chose: `chosen` maps each reachable canonical class to a node.
pub fn rebuild_graph(loaded: &Loaded, chosen: &HashMap<Id, ENode>) -> Result<Graph> {
    let eg = &loaded.egraph;
    let mut names: HashMap<Id, &str> = HashMap::new();
    // Original ids in creation order, so the model's first name for a class wins.
    let mut named: Vec<(&Id, &String)> = eg.analysis.names.iter().collect();
    named.sort();
    for (id, name) in named {
        names.entry(eg.find(*id)).or_insert(name);
    }
    let mut graph = Graph::new();
    // Canonical class → the node that computes it (a tuple's node for multi-output ops).
    let mut emitted: HashMap<Id, NodeIndex> = HashMap::new();
    // Inputs first, in their order, whether or not anything reads them.
    for &id in &loaded.inputs {
        let id = eg.find(id);
        let node = &eg[id].nodes.iter().find(|n| matches!(eg.analysis.ops.get(n.op).op(), Some(Op::Input { .. })));
        let Some(node) = node else { return Err(Error::Model("a graph input was merged away by the optimizer".into())) };
        let op = eg.analysis.ops.get(node.op);
        let ix = graph.add_node(Node {
            name: names.get(&id).map_or_else(|| format!("input{id}"), |s| s.to_string()),
            op: op.op().unwrap().clone(),
            inputs: vec![],
            outputs: op.outputs.clone(),
        });
        emitted.insert(id, ix);
    }
    let value_of = |emitted: &HashMap<Id, NodeIndex>, id: Id| -> Option<Option<ValueRef>> {
        let id = eg.find(id);
        let node = &chosen[&id];
        match &eg.analysis.ops.get(node.op).kind {
            NodeKind::Absent => Some(None),
            NodeKind::Proj(i) => emitted.get(&eg.find(node.children[0])).map(|&n| Some(ValueRef { node: n, output: *i })),
            NodeKind::Ir(_) => emitted.get(&id).map(|&n| Some(ValueRef { node: n, output: 0 })),
        }
    };
    // Iterative post-order (graphs are thousands of nodes deep).
    let mut counter = 0usize;
    for (_, root) in &loaded.outputs {
        let mut stack: Vec<(Id, bool)> = vec![(eg.find(*root), false)];
        while let Some((id, expanded)) = stack.pop() {
            let id = eg.find(id);
            if emitted.contains_key(&id) {
                continue;
            }
            let node = chosen.get(&id).ok_or_else(|| Error::Model(format!("extraction chose nothing for e-class {id}")))?;
            let op = eg.analysis.ops.get(node.op);
            match &op.kind {
                NodeKind::Absent => continue,
                NodeKind::Proj(_) => {
                    // Emitted through its tuple; the tuple class is what gets a node.
                    let tuple = eg.find(node.children[0]);
                    if !emitted.contains_key(&tuple) {
                        stack.push((tuple, false));
                    }
                    continue;
                }
                NodeKind::Ir(ir_op) => {
                    if !expanded {
                        stack.push((id, true));
                        for c in node.children.iter().rev() {
                            stack.push((*c, false));
                        }
                        continue;
                    }
                    let mut inputs = Vec::with_capacity(node.children.len());
                    for c in &node.children {
                        inputs.push(value_of(&emitted, *c).ok_or_else(|| Error::Model(format!("input class {c} of e-class {id} was not emitted first (cycle?)")))?);
                    }
                    let name = names.get(&id).map(|s| s.to_string()).unwrap_or_else(|| {
                        counter += 1;
                        format!("quilt/{}_{counter}", ir_op.name())
                    });
                    let ix = graph.add_node(Node { name, op: ir_op.clone(), inputs, outputs: op.outputs.clone() });
                    emitted.insert(id, ix);
                }
            }
        }
    }
    for (name, root) in &loaded.outputs {
        let value = value_of(&emitted, *root)
            .flatten()
            .ok_or_else(|| Error::Model(format!("graph output '{name}' was not produced by the extracted graph")))?;
        graph.outputs.push(GraphOutput { name: name.clone(), value });
    }
    Ok(graph)
}
