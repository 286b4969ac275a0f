//! `SourceGraph` → `ir::Graph`: op by op, with shape inference over symbolic dims and symbolic
//! evaluation of shape-computing subgraphs.
//!
//! Every value carries its `TensorType` and, when known at import time, its elements (`Known`).
//! Each ONNX op has a builder (grouped by family in the submodules) that either folds the node
//! (its outputs are known: `Shape`, and the `Gather`/`Concat`/`Reshape` chains on shapes), turns
//! it into canonical IR nodes with parameter inputs resolved, or declines it with a reason.
//! Known values are materialised as `Constant`/`SymbolicValue` nodes only when a real node (or
//! a graph output) reads them.

mod ctx;
mod elementwise;
mod indexing;
mod known;
mod layout;
mod nn;
mod reduce;
mod resize;
#[cfg(test)]
mod testutil;
mod values;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ir::{Graph, GraphOutput, Node, Op, TensorType, ValueRef};
use crate::source::{Initializer, SourceDim, SourceGraph, SourceNode, ValueDecl};
use crate::sym::SymDim;

use ctx::{Build, Built, NodeCtx, Operand, Unsupported, Value};
use known::Known;

#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Turn nodes quilt cannot run into `Op::Opaque` instead of failing (GetCapability uses this).
    pub lenient: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum NodeStatus {
    Supported,
    Unsupported(String),
}

pub struct Imported {
    pub graph: Graph,
    /// Parallel to `SourceGraph::nodes`.
    pub node_status: Vec<NodeStatus>,
}

type Builder = fn(&NodeCtx) -> Build;

/// Every supported ONNX op type (default domain) and its builder, sorted by name.
const BUILDERS: &[(&str, Builder)] = &[
    ("Abs", elementwise::unary),
    ("Add", elementwise::binary),
    ("And", elementwise::binary),
    ("ArgMax", reduce::arg_reduce),
    ("ArgMin", reduce::arg_reduce),
    ("Cast", elementwise::cast),
    ("Ceil", elementwise::unary),
    ("Clip", elementwise::clip),
    ("Concat", indexing::concat),
    ("Constant", values::constant),
    ("ConstantOfShape", values::constant_of_shape),
    ("Conv", nn::conv),
    ("Cos", elementwise::unary),
    ("CumSum", reduce::cumsum),
    ("Div", elementwise::binary),
    ("Dropout", values::dropout),
    ("Equal", elementwise::binary),
    ("Erf", elementwise::unary),
    ("Exp", elementwise::unary),
    ("Expand", layout::expand),
    ("Flatten", layout::flatten),
    ("Floor", elementwise::unary),
    ("Gather", indexing::gather),
    ("GatherElements", indexing::gather_elements),
    ("GatherND", indexing::gather_nd),
    ("Gelu", elementwise::gelu),
    ("Gemm", nn::gemm),
    ("GlobalAveragePool", nn::global_average_pool),
    ("Greater", elementwise::binary),
    ("GreaterOrEqual", elementwise::binary),
    ("GroupNormalization", nn::group_norm),
    ("Identity", values::identity),
    ("InstanceNormalization", nn::instance_norm),
    ("LayerNormalization", nn::layer_norm),
    ("LeakyRelu", elementwise::leaky_relu),
    ("Less", elementwise::binary),
    ("LessOrEqual", elementwise::binary),
    ("Log", elementwise::unary),
    ("LogSoftmax", nn::softmax),
    ("MatMul", nn::matmul),
    ("Max", elementwise::variadic),
    ("Mean", elementwise::variadic),
    ("Min", elementwise::variadic),
    ("Mod", elementwise::binary),
    ("Mul", elementwise::binary),
    ("Neg", elementwise::unary),
    ("Not", elementwise::unary),
    ("Or", elementwise::binary),
    ("Pad", indexing::pad),
    ("Pow", elementwise::binary),
    ("Range", values::range),
    ("Reciprocal", elementwise::unary),
    ("ReduceMax", reduce::reduce),
    ("ReduceMean", reduce::reduce),
    ("ReduceMin", reduce::reduce),
    ("ReduceProd", reduce::reduce),
    ("ReduceSum", reduce::reduce),
    ("Relu", elementwise::unary),
    ("Reshape", layout::reshape),
    ("Resize", resize::resize),
    ("Round", elementwise::unary),
    ("Shape", values::shape),
    ("Sigmoid", elementwise::unary),
    ("Sign", elementwise::unary),
    ("Sin", elementwise::unary),
    ("Size", values::size),
    ("Slice", indexing::slice),
    ("Softmax", nn::softmax),
    ("Softplus", elementwise::unary),
    ("Split", indexing::split),
    ("Sqrt", elementwise::unary),
    ("Squeeze", layout::squeeze),
    ("Sub", elementwise::binary),
    ("Sum", elementwise::variadic),
    ("Tanh", elementwise::unary),
    ("Tile", layout::tile),
    ("Transpose", layout::transpose),
    ("Trilu", layout::trilu),
    ("Unsqueeze", layout::unsqueeze),
    ("Where", elementwise::where_),
    ("Xor", elementwise::binary),
];

/// The ONNX op types (default domain) the importer handles, sorted.
pub fn supported_op_types() -> &'static [&'static str] {
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| BUILDERS.iter().map(|(n, _)| *n).collect())
}

fn builder_for(op_type: &str) -> Option<Builder> {
    BUILDERS.binary_search_by(|(n, _)| (*n).cmp(op_type)).ok().map(|i| BUILDERS[i].1)
}

/// Brings every symbolic dim a builder produced into the form `absorb_offset` gives, so equal
/// sizes computed along different paths compare equal.
fn normalise(built: Built) -> Built {
    let norm = |shape: Vec<SymDim>| shape.into_iter().map(ctx::absorb_offset).collect::<Vec<_>>();
    match built {
        Built::Folded(ks) => Built::Folded(
            ks.into_iter()
                .map(|k| match k {
                    Known::Sym { dtype, shape, vals } => Known::from_ints(dtype, shape, norm(vals)),
                    t => t,
                })
                .collect(),
        ),
        Built::Nodes(specs) => Built::Nodes(
            specs
                .into_iter()
                .map(|mut s| {
                    for o in &mut s.outputs {
                        o.shape = norm(std::mem::take(&mut o.shape));
                    }
                    s
                })
                .collect(),
        ),
        alias => alias,
    }
}

/// A value's state during import.
#[derive(Clone, Debug)]
enum Slot {
    Ready { value: Value, at: Option<ValueRef> },
    /// No usable type (unsupported producer without a declared type, unsupported input type).
    Unavailable(String),
}

struct Importer<'a> {
    src: &'a SourceGraph,
    opts: &'a ImportOptions,
    graph: Graph,
    slots: HashMap<String, Slot>,
    used: HashSet<&'a str>,
}

pub fn import(src: &SourceGraph, opts: &ImportOptions) -> Result<Imported> {
    let mut used: HashSet<&str> = src.nodes.iter().flat_map(|n| n.inputs.iter().map(String::as_str)).collect();
    used.extend(src.outputs.iter().map(|o| o.name.as_str()));
    let mut imp = Importer { src, opts, graph: Graph::new(), slots: HashMap::new(), used };
    imp.add_inputs()?;
    imp.add_initializers();
    let mut node_status = Vec::with_capacity(src.nodes.len());
    for (i, node) in src.nodes.iter().enumerate() {
        node_status.push(imp.add_node(i, node)?);
    }
    imp.add_outputs()?;
    Ok(Imported { graph: imp.graph, node_status })
}

/// A declared type with unknown dims replaced by fresh symbols named `<value>.<axis>`.
fn declared_type(decl: &ValueDecl) -> std::result::Result<TensorType, String> {
    let dtype = decl.dtype.ok_or_else(|| format!("element type (ONNX code {}) is not supported", decl.onnx_type))?;
    let dims = decl.dims.as_ref().ok_or("rank is unknown")?;
    let mut shape = Vec::with_capacity(dims.len());
    for (axis, d) in dims.iter().enumerate() {
        shape.push(match d {
            SourceDim::Fixed(v) if *v >= 0 => SymDim::from(*v),
            SourceDim::Fixed(v) => return Err(format!("dimension {axis} is negative ({v})")),
            SourceDim::Named(p) => SymDim::sym(p),
            SourceDim::Unknown => SymDim::sym(&format!("{}.{axis}", decl.name)),
        });
    }
    Ok(TensorType::new(dtype, shape))
}

impl<'a> Importer<'a> {
    fn add_inputs(&mut self) -> Result<()> {
        for decl in &self.src.inputs {
            match declared_type(decl) {
                Ok(ty) => {
                    let ix = self.graph.add_node(Node {
                        name: decl.name.clone(),
                        op: Op::Input { name: decl.name.clone() },
                        inputs: vec![],
                        outputs: vec![ty.clone()],
                    });
                    let at = Some(ValueRef { node: ix, output: 0 });
                    self.slots.insert(decl.name.clone(), Slot::Ready { value: Value { ty, known: None }, at });
                }
                Err(msg) if !self.opts.lenient => return Err(Error::Value { name: decl.name.clone(), msg }),
                Err(msg) => {
                    self.slots.insert(decl.name.clone(), Slot::Unavailable(format!("graph input '{}': {msg}", decl.name)));
                }
            }
        }
        Ok(())
    }

    fn add_initializers(&mut self) {
        for (name, init) in &self.src.initializers {
            let slot = match init {
                Initializer::Data(t) => {
                    let known = Known::Tensor(t.clone());
                    Slot::Ready { value: Value { ty: known.ty(), known: Some(known) }, at: None }
                }
                Initializer::Absent { dtype, shape } => {
                    let ty = TensorType::new(*dtype, ctx::sym_shape(shape));
                    let ix = self.graph.add_node(Node {
                        name: name.clone(),
                        op: Op::Weight { name: name.clone() },
                        inputs: vec![],
                        outputs: vec![ty.clone()],
                    });
                    Slot::Ready { value: Value { ty, known: None }, at: Some(ValueRef { node: ix, output: 0 }) }
                }
            };
            self.slots.insert(name.clone(), slot);
        }
    }

    fn node_name(index: usize, node: &SourceNode) -> String {
        if node.name.is_empty() {
            format!("{}_{index}", node.op_type)
        } else {
            node.name.clone()
        }
    }

    fn add_node(&mut self, index: usize, node: &'a SourceNode) -> Result<NodeStatus> {
        let name = Self::node_name(index, node);
        let built = self.build(node);
        match built {
            Ok(b) => {
                self.apply(&name, node, b);
                Ok(NodeStatus::Supported)
            }
            Err(Unsupported(reason)) if !self.opts.lenient => Err(Error::node(&name, &node.op_type, reason)),
            Err(Unsupported(reason)) => {
                self.add_opaque(&name, node, &reason);
                Ok(NodeStatus::Unsupported(reason))
            }
        }
    }

    fn build(&self, node: &'a SourceNode) -> Build {
        if !node.domain.is_empty() && node.domain != "ai.onnx" {
            return ctx::unsup(format!("domain '{}' is not supported", node.domain));
        }
        let Some(builder) = builder_for(&node.op_type) else {
            return ctx::unsup(format!("op type '{}' is not supported", node.op_type));
        };
        let mut inputs = Vec::with_capacity(node.inputs.len());
        for name in &node.inputs {
            if name.is_empty() {
                inputs.push(None);
                continue;
            }
            match self.slots.get(name) {
                Some(Slot::Ready { value, .. }) => inputs.push(Some(value)),
                Some(Slot::Unavailable(why)) => return ctx::unsup(format!("input '{name}' is not available ({why})")),
                None => return ctx::unsup(format!("input '{name}' is not produced by any earlier node")),
            }
        }
        let output_used = node.outputs.iter().map(|o| !o.is_empty() && self.used.contains(o.as_str())).collect();
        let ctx = NodeCtx { node, opset: self.src.opset, inputs, output_used };
        let built = normalise(builder(&ctx)?);
        // Outputs the builder does not produce must not be read by anything.
        let produced = match &built {
            Built::Folded(v) => v.len(),
            Built::Alias(_) => 1,
            Built::Nodes(specs) => specs.last().map_or(0, |s| s.outputs.len()),
        };
        for j in produced..node.outputs.len() {
            ctx.require_unused_output(j, "optional output")?;
        }
        Ok(built)
    }

    fn set(&mut self, name: &str, value: Value, at: Option<ValueRef>) {
        if !name.is_empty() {
            self.slots.insert(name.to_string(), Slot::Ready { value, at });
        }
    }

    fn apply(&mut self, name: &str, node: &SourceNode, built: Built) {
        match built {
            Built::Folded(values) => {
                for (out, k) in node.outputs.iter().zip(values) {
                    self.set(out, Value { ty: k.ty(), known: Some(k) }, None);
                }
            }
            Built::Alias(i) => {
                if let Some(slot) = self.slots.get(&node.inputs[i]).cloned() {
                    if let Some(out) = node.outputs.first().filter(|o| !o.is_empty()) {
                        self.slots.insert(out.clone(), slot);
                    }
                }
            }
            Built::Nodes(specs) => {
                let many = specs.len() > 1;
                let mut made: Vec<petgraph::graph::NodeIndex> = Vec::with_capacity(specs.len());
                let last = specs.len() - 1;
                for (k, spec) in specs.into_iter().enumerate() {
                    let inputs = spec
                        .inputs
                        .iter()
                        .map(|operand| {
                            operand.as_ref().map(|o| match o {
                                Operand::In(i) => self.materialise(&node.inputs[*i]),
                                Operand::Prev(j) => ValueRef { node: made[*j], output: 0 },
                                Operand::Const(t) => self.add_constant(&format!("{name}/const{k}"), t.clone()),
                            })
                        })
                        .collect();
                    let node_name = if many { format!("{name}/{k}") } else { name.to_string() };
                    let outputs = spec.outputs.clone();
                    let ix = self.graph.add_node(Node { name: node_name, op: spec.op, inputs, outputs });
                    made.push(ix);
                    if k == last {
                        for (j, ty) in spec.outputs.into_iter().enumerate() {
                            if let Some(out) = node.outputs.get(j) {
                                self.set(out, Value { ty, known: None }, Some(ValueRef { node: ix, output: j }));
                            }
                        }
                    }
                }
            }
        }
    }

    fn add_constant(&mut self, name: &str, t: Arc<crate::tensor::Tensor>) -> ValueRef {
        let ty = TensorType::of(&t);
        let ix = self.graph.add_node(Node { name: name.to_string(), op: Op::Constant(t), inputs: vec![], outputs: vec![ty] });
        ValueRef { node: ix, output: 0 }
    }

    /// The graph value of a ready slot, adding its `Constant`/`SymbolicValue` node on first use.
    /// Callers only pass names whose slot is ready (builders saw them).
    fn materialise(&mut self, name: &str) -> ValueRef {
        let Some(Slot::Ready { value, at }) = self.slots.get(name).cloned() else {
            unreachable!("materialise of an unavailable value '{name}'");
        };
        if let Some(at) = at {
            return at;
        }
        let known = value.known.clone().expect("a ready value without a node is known");
        let r = match known {
            Known::Tensor(t) => self.add_constant(name, t),
            Known::Sym { dtype, shape, vals } => self.add_symbolic(name, dtype, &shape, vals),
        };
        self.slots.insert(name.to_string(), Slot::Ready { value, at: Some(r) });
        r
    }

    /// `SymbolicValue` is an int64 scalar or vector; other ranks and int32 get a Reshape/Cast.
    fn add_symbolic(&mut self, name: &str, dtype: DType, shape: &[usize], vals: Vec<SymDim>) -> ValueRef {
        let n = vals.len();
        let scalar = shape.is_empty();
        let flat_shape = if scalar { vec![] } else { vec![SymDim::from(n)] };
        let ix = self.graph.add_node(Node {
            name: name.to_string(),
            op: Op::SymbolicValue { values: vals, scalar },
            inputs: vec![],
            outputs: vec![TensorType::new(DType::I64, flat_shape)],
        });
        let mut r = ValueRef { node: ix, output: 0 };
        if shape.len() > 1 {
            let ty = TensorType::new(DType::I64, ctx::sym_shape(shape));
            let ix = self.graph.add_node(Node { name: format!("{name}/reshape"), op: Op::Reshape, inputs: vec![Some(r)], outputs: vec![ty] });
            r = ValueRef { node: ix, output: 0 };
        }
        if dtype != DType::I64 {
            let ty = TensorType::new(dtype, ctx::sym_shape(shape));
            let ix = self.graph.add_node(Node { name: format!("{name}/cast"), op: Op::Cast { to: dtype }, inputs: vec![Some(r)], outputs: vec![ty] });
            r = ValueRef { node: ix, output: 0 };
        }
        r
    }

    /// Lenient mode: an `Opaque` node typed from the model's declarations, or, when an output has
    /// no declared type, unavailable outputs (their consumers become unsupported too).
    fn add_opaque(&mut self, name: &str, node: &SourceNode, reason: &str) {
        let mut outputs = Vec::with_capacity(node.outputs.len());
        let mut missing = None;
        for out in &node.outputs {
            let decl = self.src.value_info.get(out).or_else(|| self.src.outputs.iter().find(|o| &o.name == out));
            match decl.map(declared_type) {
                Some(Ok(ty)) => outputs.push(ty),
                Some(Err(msg)) => missing = Some(format!("'{out}': {msg}")),
                None => missing = Some(format!("'{out}' has no declared type")),
            }
        }
        if let Some(why) = missing {
            let msg = format!("produced by unsupported node '{name}' ({}); {why}", node.op_type);
            for out in node.outputs.iter().filter(|o| !o.is_empty()) {
                self.slots.insert(out.clone(), Slot::Unavailable(msg.clone()));
            }
            return;
        }
        let inputs = node
            .inputs
            .iter()
            .map(|i| match self.slots.get(i) {
                Some(Slot::Ready { .. }) => Some(self.materialise(i)),
                _ => None,
            })
            .collect();
        let op = Op::Opaque { op_type: node.op_type.clone(), domain: node.domain.clone(), reason: reason.to_string() };
        let ix = self.graph.add_node(Node { name: name.to_string(), op, inputs, outputs: outputs.clone() });
        for (j, (out, ty)) in node.outputs.iter().zip(outputs).enumerate() {
            self.set(out, Value { ty, known: None }, Some(ValueRef { node: ix, output: j }));
        }
    }

    fn add_outputs(&mut self) -> Result<()> {
        for decl in &self.src.outputs {
            match self.slots.get(&decl.name) {
                Some(Slot::Ready { .. }) => {
                    let value = self.materialise(&decl.name);
                    self.graph.outputs.push(GraphOutput { name: decl.name.clone(), value });
                }
                Some(Slot::Unavailable(why)) if !self.opts.lenient => {
                    return Err(Error::Value { name: decl.name.clone(), msg: format!("graph output is not available: {why}") });
                }
                Some(Slot::Unavailable(_)) => {}
                None => {
                    return Err(Error::Value { name: decl.name.clone(), msg: "graph output is not produced by any node".into() });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::NodeStatus;
    use crate::plan::BufferKind;
    use crate::source::SourceDim;

    #[test]
    fn supported_op_types_are_sorted_and_dispatch() {
        let ops = super::supported_op_types();
        assert!(ops.windows(2).all(|w| w[0] < w[1]), "BUILDERS must stay sorted for binary search");
        assert!(ops.contains(&"GroupNormalization") && !ops.contains(&"Einsum"));
        for op in ops {
            assert!(super::builder_for(op).is_some(), "{op}");
        }
    }

    #[test]
    fn strict_mode_names_the_node_op_and_reason() {
        let mut g = TestGraph::new(17);
        g.input("x", "f32", &["4"]);
        g.named_node("attn", "MultiHeadAttention", &["x"], &["y"], &[]);
        g.src.nodes[0].domain = "com.microsoft".into();
        g.output("y");
        let e = g.import_err();
        assert_eq!(e, "node 'attn' (MultiHeadAttention): domain 'com.microsoft' is not supported");
        let mut g = TestGraph::new(17);
        g.input("x", "f32", &["4"]);
        g.node("Einsum", &["x"], &["y"], &[]);
        g.output("y");
        assert_eq!(g.import_err(), "node 'Einsum_0' (Einsum): op type 'Einsum' is not supported");
    }

    #[test]
    fn lenient_mode_makes_typed_opaque_nodes_and_spreads_untyped_ones() {
        let mut g = TestGraph::new(17);
        g.input("x", "f32", &["B", "4"]);
        g.named_node("odd", "Einsum", &["x"], &["e"], &[]);
        g.declare("e", "f32", &[SourceDim::Named("B".into()), SourceDim::Unknown]);
        g.node("LeakyRelu", &["e"], &["r"], &[("alpha", attr_f(0.2))]);
        g.named_node("odd2", "Einsum", &["x"], &["u"], &[]);
        g.named_node("after", "Relu", &["u"], &["v"], &[]);
        g.output("r");
        g.output("v");
        let out = g.import_lenient();
        assert_eq!(out.type_of("r"), "f32[B, e.1]");
        assert_eq!(out.input_ops("r"), vec!["Einsum"]);
        assert!(matches!(out.0.node_status[0], NodeStatus::Unsupported(ref r) if r.contains("Einsum")));
        assert_eq!(out.0.node_status[1], NodeStatus::Supported);
        let NodeStatus::Unsupported(why) = &out.0.node_status[3] else { panic!() };
        assert!(why.contains("'u'") && why.contains("odd2"), "{why}");
        assert_eq!(out.0.graph.outputs.len(), 1, "the untyped output is dropped in lenient mode");
    }

    #[test]
    fn outputs_that_are_inputs_or_constants_are_materialised() {
        let mut g = TestGraph::new(17);
        g.input("x", "f32", &["B", "3"]);
        g.const_f32("c", &[2], &[1.0, 2.0]);
        g.node("Identity", &["x"], &["same"], &[]);
        g.node("Shape", &["x"], &["s"], &[]);
        g.node("Identity", &["c"], &["cc"], &[]);
        g.output("same");
        g.output("s");
        g.output("cc");
        let out = g.import_strict();
        assert_eq!(out.op_of("same"), "Input");
        assert_eq!(out.known_of("s"), "[B, 3]");
        assert_eq!(out.known_of("cc"), "[1.0, 2.0]");
        let plan = crate::lower::lower(&out.0.graph).unwrap();
        // The input and the constant outputs become views (which backends copy out); the shape
        // value is the one step.
        assert_eq!(plan.steps.len(), 1, "{plan}");
        let kinds: Vec<&BufferKind> = plan.outputs.iter().map(|v| &plan.buffers[v.buffer].kind).collect();
        assert!(matches!(kinds[..], [BufferKind::View { .. }, BufferKind::Intermediate, BufferKind::View { .. }]), "{plan}");
        assert!(plan.to_string().contains("# same/copy"), "{plan}");
    }

    #[test]
    fn unknown_input_dims_get_fresh_symbols() {
        let mut g = TestGraph::new(17);
        g.input("sample", "f32", &["?", "4", "?"]);
        g.node("Relu", &["sample"], &["y"], &[]);
        g.output("y");
        assert_eq!(g.import_strict().type_of("y"), "f32[sample.0, 4, sample.2]");
    }

    #[test]
    fn symbolic_values_of_rank_two_and_int32_get_reshape_and_cast() {
        let mut g = TestGraph::new(17);
        g.input("x", "f32", &["B", "C"]);
        g.node("Shape", &["x"], &["s"], &[]);
        g.const_i64("shape", &[2], &[1, 2]);
        g.node("Reshape", &["s", "shape"], &["s2"], &[]);
        g.node("Cast", &["s2"], &["s32"], &[("to", attr_i(6))]);
        g.input("y", "i32", &["1", "2"]);
        g.node("Add", &["s32", "y"], &["z"], &[]);
        g.output("z");
        let out = g.import_strict();
        assert_eq!(out.type_of("z"), "i32[1, 2]");
        assert_eq!(out.node_names(), vec!["x", "y", "s32", "s32/reshape", "s32/cast", "Add_3"]);
    }
}
