//! One-step-per-node lowering of `ir::Graph` into a `Plan`.

use std::collections::{BTreeSet, HashMap};

use crate::error::{Error, Result};
use crate::ir::{Graph, Op, UnaryOp, ValueRef};
use crate::plan::{Buffer, BufferId, BufferKind, OpStep, Plan, PlanValue, Step};

pub fn lower(graph: &Graph) -> Result<Plan> {
    let mut plan = Plan::default();
    let mut buffer_of: HashMap<ValueRef, BufferId> = HashMap::new();

    for ix in graph.node_indices() {
        let node = graph.node(ix);
        let value = |output| ValueRef { node: ix, output };
        let new_buffer = |plan: &mut Plan, output: usize, kind: BufferKind| {
            plan.buffers.push(Buffer { ty: node.outputs[output].clone(), kind });
            plan.buffers.len() - 1
        };
        match &node.op {
            Op::Input { name } => {
                let index = plan.inputs.len();
                let b = new_buffer(&mut plan, 0, BufferKind::Input(index));
                plan.inputs.push(PlanValue { name: name.clone(), buffer: b });
                buffer_of.insert(value(0), b);
            }
            Op::Constant(t) => {
                let b = new_buffer(&mut plan, 0, BufferKind::Weight(t.clone()));
                buffer_of.insert(value(0), b);
            }
            Op::Weight { name } => {
                let b = new_buffer(&mut plan, 0, BufferKind::MissingWeight(name.clone()));
                buffer_of.insert(value(0), b);
            }
            Op::Opaque { op_type, reason, .. } => {
                return Err(Error::node(&node.name, op_type, format!("not supported by quilt: {reason}")));
            }
            op => {
                let inputs = node.inputs.iter().map(|v| v.map(|v| buffer_of[&v])).collect();
                let outputs: Vec<BufferId> =
                    (0..node.outputs.len()).map(|o| new_buffer(&mut plan, o, BufferKind::Intermediate)).collect();
                for (o, &b) in outputs.iter().enumerate() {
                    buffer_of.insert(value(o), b);
                }
                plan.steps.push(Step::Op(OpStep { node: node.name.clone(), op: op.clone(), inputs, outputs }));
            }
        }
    }

    // Every output gets a buffer of its own that a step writes, so backends never hand out an
    // input, a weight or another output's storage twice.
    let mut taken: BTreeSet<BufferId> = BTreeSet::new();
    for out in &graph.outputs {
        let mut b = buffer_of[&out.value];
        let written_by_step = matches!(plan.buffers[b].kind, BufferKind::Intermediate);
        if !written_by_step || !taken.insert(b) {
            let ty = plan.buffers[b].ty.clone();
            plan.buffers.push(Buffer { ty, kind: BufferKind::Intermediate });
            let copy = plan.buffers.len() - 1;
            plan.steps.push(Step::Op(OpStep {
                node: format!("{}/copy", out.name),
                op: Op::Unary(UnaryOp::Identity),
                inputs: vec![Some(b)],
                outputs: vec![copy],
            }));
            taken.insert(copy);
            b = copy;
        }
        plan.outputs.push(PlanValue { name: out.name.clone(), buffer: b });
    }

    let mut symbols: BTreeSet<String> = BTreeSet::new();
    for b in &plan.buffers {
        for d in &b.ty.shape {
            symbols.extend(d.symbols().iter().map(|s| s.to_string()));
        }
    }
    plan.symbols = symbols.into_iter().collect();
    plan.memory = crate::memory_plan::plan_memory(&plan);
    Ok(plan)
}
