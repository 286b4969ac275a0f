//! One-step-per-node lowering of `ir::Graph` into a `Plan`. Reshape and Identity nodes become
//! view buffers of their input's owner, not steps (see `crate::plan`).

use std::collections::{BTreeSet, HashMap};

use crate::error::{Error, Result};
use crate::ir::{Graph, Node, Op, TensorType, UnaryOp, ValueRef};
use crate::plan::{Buffer, BufferId, BufferKind, OpStep, Plan, PlanValue, Step};

pub fn lower(graph: &Graph) -> Result<Plan> {
    let mut plan = Plan::default();
    let mut values = Values::default();

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
                values.buffer_of.insert(value(0), b);
            }
            Op::Constant(t) => {
                let b = new_buffer(&mut plan, 0, BufferKind::Weight(t.clone()));
                values.buffer_of.insert(value(0), b);
            }
            Op::Weight { name } => {
                let b = new_buffer(&mut plan, 0, BufferKind::MissingWeight(name.clone()));
                values.buffer_of.insert(value(0), b);
            }
            Op::Opaque { op_type, reason, .. } => {
                return Err(Error::node(&node.name, op_type, format!("not supported by quilt: {reason}")));
            }
            Op::Reshape | Op::Unary(UnaryOp::Identity) => {
                let view = view_of_input(&plan, graph, node, &values)?;
                values.pending.insert(value(0), view);
            }
            op => {
                let mut inputs = Vec::with_capacity(node.inputs.len());
                for (slot, v) in node.inputs.iter().enumerate() {
                    inputs.push(match v {
                        Some(v) => Some(values.buffer(&mut plan, *v).ok_or_else(|| Error::node(&node.name, &op.name(), format!("input {slot} has no value in the plan")))?),
                        None => None,
                    });
                }
                let outputs: Vec<BufferId> =
                    (0..node.outputs.len()).map(|o| new_buffer(&mut plan, o, BufferKind::Intermediate)).collect();
                for (o, &b) in outputs.iter().enumerate() {
                    values.buffer_of.insert(value(o), b);
                }
                plan.steps.push(Step::Op(OpStep { node: node.name.clone(), op: op.clone(), inputs, outputs }));
            }
        }
    }

    // Every output gets a buffer id of its own that is a step's output or a view, never an
    // input or weight buffer itself nor another output's. An output that is a view is copied
    // out of its owner by the backends (they hand the caller its own storage), so an output
    // that is a graph input, a weight or another output becomes a view named `<output>/copy`.
    let mut taken: BTreeSet<BufferId> = BTreeSet::new();
    for out in &graph.outputs {
        let mut b = values.buffer(&mut plan, out.value).ok_or_else(|| Error::Value { name: out.name.clone(), msg: "the output has no value in the plan".into() })?;
        let own = matches!(plan.buffers[b].kind, BufferKind::Intermediate | BufferKind::View { .. });
        if !own || !taken.insert(b) {
            let ty = plan.buffers[b].ty.clone();
            let of = plan.owner(b);
            plan.buffers.push(Buffer { ty, kind: BufferKind::View { of, node: format!("{}/copy", out.name) } });
            b = plan.buffers.len() - 1;
            taken.insert(b);
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

/// A Reshape/Identity value not yet in the plan: its owner buffer, its type and its node.
type PendingView = (BufferId, TensorType, String);

/// What each graph value is in the plan so far.
#[derive(Default)]
struct Values {
    buffer_of: HashMap<ValueRef, BufferId>,
    /// Views that no step or output has read yet. A view becomes a buffer when it is first read
    /// (so it is listed right before its first reader), and a view that only other views read
    /// (they point at the owner) never becomes one.
    pending: HashMap<ValueRef, PendingView>,
}

impl Values {
    /// The buffer that owns `v`'s memory, without making a view buffer.
    fn owner(&self, plan: &Plan, v: ValueRef) -> Option<BufferId> {
        match self.pending.get(&v) {
            Some((owner, _, _)) => Some(*owner),
            None => self.buffer_of.get(&v).map(|&b| plan.owner(b)),
        }
    }

    /// `v`'s buffer, made now if `v` is a view that nothing has read yet.
    fn buffer(&mut self, plan: &mut Plan, v: ValueRef) -> Option<BufferId> {
        if let Some(&b) = self.buffer_of.get(&v) {
            return Some(b);
        }
        let (of, ty, node) = self.pending.remove(&v)?;
        plan.buffers.push(Buffer { ty, kind: BufferKind::View { of, node } });
        let b = plan.buffers.len() - 1;
        self.buffer_of.insert(v, b);
        Some(b)
    }
}

/// The view that Reshape/Identity `node` makes: its own type over the memory of its input's
/// owner (a view of a view points at the owner, so chains never form).
fn view_of_input(plan: &Plan, graph: &Graph, node: &Node, values: &Values) -> Result<PendingView> {
    let fail = |msg: String| Error::node(&node.name, &node.op.name(), msg);
    let ([Some(x)], [ty]) = (&node.inputs[..], &node.outputs[..]) else {
        return Err(fail(format!("a view takes one input and makes one output, this node has {} and {}", node.inputs.len(), node.outputs.len())));
    };
    let of = values.owner(plan, *x).ok_or_else(|| fail("its input has no value in the plan".into()))?;
    let src_ty = graph.value_type(*x);
    if src_ty.dtype != ty.dtype {
        return Err(fail(format!("the output's dtype {} is not the input's {}", ty.dtype, src_ty.dtype)));
    }
    // Sizes with symbols are compared when a backend binds them; constants can be checked now.
    if let (Some(a), Some(b)) = (src_ty.numel().as_const(), ty.numel().as_const()) {
        if a != b {
            return Err(fail(format!("{b} elements ({ty}) from {a} ({src_ty}): a view keeps the element count")));
        }
    }
    Ok((of, ty.clone(), node.name.clone()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ir::{BinaryOp, GraphOutput, TensorType};
    use crate::{DType, SymDim, Tensor};

    fn ty(shape: &[&str]) -> TensorType {
        TensorType::new(DType::F32, shape.iter().map(|s| s.parse::<i64>().map(SymDim::konst).unwrap_or_else(|_| SymDim::sym(s))).collect())
    }

    fn add(g: &mut Graph, name: &str, op: Op, inputs: &[ValueRef], out: TensorType) -> ValueRef {
        let node = g.add_node(Node { name: name.into(), op, inputs: inputs.iter().map(|&v| Some(v)).collect(), outputs: vec![out] });
        ValueRef { node, output: 0 }
    }

    fn output(g: &mut Graph, name: &str, value: ValueRef) {
        g.outputs.push(GraphOutput { name: name.into(), value });
    }

    /// x [N, 6] → relu → reshape [N, 2, 3] → identity → reshape [6N] → neg, with the middle
    /// reshape and the weight's reshape as outputs too.
    fn viewy_graph() -> Graph {
        let mut g = Graph::new();
        let x = add(&mut g, "x", Op::Input { name: "x".into() }, &[], ty(&["N", "6"]));
        let r = add(&mut g, "relu", Op::Unary(UnaryOp::Relu), &[x], ty(&["N", "6"]));
        let v1 = add(&mut g, "to3d", Op::Reshape, &[r], ty(&["N", "2", "3"]));
        let v2 = add(&mut g, "same", Op::Unary(UnaryOp::Identity), &[v1], ty(&["N", "2", "3"]));
        let flat = TensorType::new(DType::F32, vec![SymDim::sym("N") * SymDim::konst(6)]);
        let v3 = add(&mut g, "flat", Op::Reshape, &[v2], flat);
        let y = add(&mut g, "neg", Op::Unary(UnaryOp::Neg), &[v3], ty(&["6*N"]));
        let w = add(&mut g, "w", Op::Constant(Arc::new(Tensor::from_f32s(vec![6], vec![1.0; 6]))), &[], ty(&["6"]));
        let w2 = add(&mut g, "w_2x3", Op::Reshape, &[w], ty(&["2", "3"]));
        let z = add(&mut g, "add", Op::Binary(BinaryOp::Add), &[v2, w2], ty(&["N", "2", "3"]));
        output(&mut g, "y", y);
        output(&mut g, "mid", v1);
        output(&mut g, "w2", w2);
        output(&mut g, "z", z);
        output(&mut g, "x_again", x);
        g
    }

    #[test]
    fn reshapes_and_identities_are_views_of_the_owner() {
        let plan = lower(&viewy_graph()).unwrap();
        let names: Vec<String> = plan.steps.iter().map(|Step::Op(s)| s.node.clone()).collect();
        assert_eq!(names, ["relu", "neg", "add"], "{plan}");
        let relu = 1;
        let view = |node: &str| {
            plan.buffers.iter().position(|b| matches!(&b.kind, BufferKind::View { node: n, .. } if n == node)).unwrap_or_else(|| panic!("no view {node}:\n{plan}"))
        };
        // The chain to3d → same → flat collapses: each points at relu's output.
        for node in ["to3d", "same", "flat"] {
            let BufferKind::View { of, .. } = plan.buffers[view(node)].kind else { unreachable!() };
            assert_eq!(of, relu, "{node}:\n{plan}");
        }
        assert_eq!(plan.buffers[view("flat")].ty.to_string(), "f32[6*N]");
        // The weight's reshape is a view of the weight; an output that is an input is a view too.
        assert!(matches!(plan.buffers[plan.owner(view("w_2x3"))].kind, BufferKind::Weight(_)), "{plan}");
        assert!(matches!(plan.buffers[plan.owner(view("x_again/copy"))].kind, BufferKind::Input(0)), "{plan}");
        assert_eq!(plan.view_count(), 5);
        // Each view is made when first read, so it is listed right before its first reader
        // (`mid`, read by no step, comes with the outputs).
        let text = plan.to_string();
        assert!(text.contains("view %2 = %1 : f32[6*N]  # flat\n%3 : f32[6*N] @s1 = Neg(%2)  # neg\n"), "{text}");
        assert!(text.contains("view %5 = %1 : f32[N, 2, 3]  # same\nview %6 = %4 : f32[2, 3]  # w_2x3\n"), "{text}");
        assert!(text.contains("view %8 = %1 : f32[N, 2, 3]  # to3d\nview %9 = %0 : f32[N, 6]  # x_again/copy\noutput y = %3\n"), "{text}");
    }

    #[test]
    fn views_that_only_views_read_are_not_made() {
        // x → exp → reshape a → reshape b → neg: `a` is read only by `b`, which points at exp.
        let mut g = Graph::new();
        let x = add(&mut g, "x", Op::Input { name: "x".into() }, &[], ty(&["N", "4"]));
        let e = add(&mut g, "exp", Op::Unary(UnaryOp::Exp), &[x], ty(&["N", "4"]));
        let a = add(&mut g, "a", Op::Reshape, &[e], ty(&["N", "2", "2"]));
        let b = add(&mut g, "b", Op::Reshape, &[a], ty(&["4*N"]));
        let n = add(&mut g, "neg", Op::Unary(UnaryOp::Neg), &[b], ty(&["4*N"]));
        output(&mut g, "y", n);
        let plan = lower(&g).unwrap();
        assert_eq!(plan.view_count(), 1, "{plan}");
        assert!(plan.to_string().contains("view %2 = %1 : f32[4*N]  # b\n"), "{plan}");
    }

    #[test]
    fn views_keep_their_owner_alive_and_take_no_slot() {
        let plan = lower(&viewy_graph()).unwrap();
        let mp = &plan.memory;
        // relu's output is read through views by neg (step 1) and add (step 2) and is an
        // output through `mid`: it keeps its slot to the end, so neg cannot write over it.
        let relu_slot = mp.slot_of[1].expect("relu has a slot");
        for &(step, input, _) in &mp.in_place {
            assert_ne!(plan.owner(input), 1, "step {step} writes over relu's memory:\n{plan}");
        }
        assert_ne!(mp.slot_of[plan.steps.iter().map(|Step::Op(s)| s.outputs[0]).nth(1).unwrap()], Some(relu_slot));
        for (b, buf) in plan.buffers.iter().enumerate() {
            if let BufferKind::View { of, .. } = buf.kind {
                assert_eq!(mp.slot_of[b], mp.slot_of[of], "view %{b} shares its owner's slot");
            }
        }
        assert_eq!(plan.memory_last_uses()[1], Some(2), "add reads relu through `same`");
        assert_eq!(mp.total_bytes, plan.buffers.iter().filter(|b| matches!(b.kind, BufferKind::Intermediate)).map(|b| b.ty.bytes()).sum());
    }

    #[test]
    fn a_view_that_dies_is_written_in_place() {
        // x → exp → reshape → neg: neg may write over exp's memory through the view.
        let mut g = Graph::new();
        let x = add(&mut g, "x", Op::Input { name: "x".into() }, &[], ty(&["N", "4"]));
        let e = add(&mut g, "exp", Op::Unary(UnaryOp::Exp), &[x], ty(&["N", "4"]));
        let v = add(&mut g, "flat", Op::Reshape, &[e], ty(&["N", "2", "2"]));
        let n = add(&mut g, "neg", Op::Unary(UnaryOp::Neg), &[v], ty(&["N", "2", "2"]));
        output(&mut g, "y", n);
        let plan = lower(&g).unwrap();
        assert_eq!(plan.memory.in_place, vec![(1, 2, 3)], "{plan}");
        assert_eq!(plan.memory.slots.len(), 1, "{plan}");
    }

    #[test]
    fn bad_views_name_the_node() {
        let mut g = Graph::new();
        let x = add(&mut g, "x", Op::Input { name: "x".into() }, &[], ty(&["2", "3"]));
        let r = add(&mut g, "bad_reshape", Op::Reshape, &[x], ty(&["5"]));
        output(&mut g, "r", r);
        let e = lower(&g).unwrap_err().to_string();
        assert!(e.contains("bad_reshape") && e.contains("5 elements") && e.contains("6"), "{e}");

        let mut g = Graph::new();
        let x = add(&mut g, "x", Op::Input { name: "x".into() }, &[], ty(&["N"]));
        let r = add(&mut g, "bad_identity", Op::Unary(UnaryOp::Identity), &[x], TensorType::new(DType::F16, vec![SymDim::sym("N")]));
        output(&mut g, "r", r);
        let e = lower(&g).unwrap_err().to_string();
        assert!(e.contains("bad_identity") && e.contains("dtype"), "{e}");
    }
}
