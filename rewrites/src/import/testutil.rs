//! Hand-built `SourceGraph`s for the importer's unit tests, and readable views of the result.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::dtype::DType;
use crate::ir::{Op, ValueRef};
use crate::source::{Attr, Initializer, SourceDim, SourceGraph, SourceNode, ValueDecl};
use crate::tensor::{Tensor, TensorData};

use super::{import, ImportOptions, Imported};

pub fn attr_i(v: i64) -> Attr {
    Attr::Int(v)
}
pub fn attr_is(v: &[i64]) -> Attr {
    Attr::Ints(v.to_vec())
}
pub fn attr_f(v: f32) -> Attr {
    Attr::Float(v)
}
pub fn attr_s(v: &str) -> Attr {
    Attr::String(v.to_string())
}

fn dtype(name: &str) -> DType {
    match name {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "i64" => DType::I64,
        "i32" => DType::I32,
        "bool" => DType::Bool,
        other => panic!("test dtype {other}"),
    }
}

pub struct TestGraph {
    pub src: SourceGraph,
}

impl TestGraph {
    pub fn new(opset: i64) -> TestGraph {
        TestGraph { src: SourceGraph { name: "test".into(), opset, ..Default::default() } }
    }

    /// A graph input; dims are numbers, symbol names, or "?" for unknown.
    pub fn input(&mut self, name: &str, dt: &str, dims: &[&str]) {
        let dims = dims
            .iter()
            .map(|d| match d.parse::<i64>() {
                Ok(v) => SourceDim::Fixed(v),
                Err(_) if *d == "?" => SourceDim::Unknown,
                Err(_) => SourceDim::Named(d.to_string()),
            })
            .collect();
        self.src.inputs.push(ValueDecl { name: name.into(), dtype: Some(dtype(dt)), onnx_type: dtype(dt).onnx_code(), dims: Some(dims) });
    }

    pub fn initializer(&mut self, name: &str, t: Tensor) {
        self.src.initializers.insert(name.into(), Initializer::Data(Arc::new(t)));
    }

    pub fn const_i64(&mut self, name: &str, shape: &[usize], v: &[i64]) {
        self.initializer(name, Tensor::from_i64s(shape.to_vec(), v.to_vec()));
    }

    pub fn const_f32(&mut self, name: &str, shape: &[usize], v: &[f32]) {
        self.initializer(name, Tensor::from_f32s(shape.to_vec(), v.to_vec()));
    }

    pub fn node(&mut self, op: &str, inputs: &[&str], outputs: &[&str], attrs: &[(&str, Attr)]) {
        self.named_node("", op, inputs, outputs, attrs);
    }

    pub fn named_node(&mut self, name: &str, op: &str, inputs: &[&str], outputs: &[&str], attrs: &[(&str, Attr)]) {
        let attrs: BTreeMap<String, Attr> = attrs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        self.src.nodes.push(SourceNode {
            name: name.into(),
            op_type: op.into(),
            domain: String::new(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            attrs,
        });
    }

    pub fn output(&mut self, name: &str) {
        self.src.outputs.push(ValueDecl { name: name.into(), dtype: None, onnx_type: 0, dims: None });
    }

    /// Declares a type for a value (value_info), e.g. for lenient Opaque outputs.
    pub fn declare(&mut self, name: &str, dt: &str, dims: &[SourceDim]) {
        self.src.value_info.insert(
            name.into(),
            ValueDecl { name: name.into(), dtype: Some(dtype(dt)), onnx_type: dtype(dt).onnx_code(), dims: Some(dims.to_vec()) },
        );
    }

    pub fn import_strict(&self) -> View {
        View(import(&self.src, &ImportOptions::default()).unwrap_or_else(|e| panic!("import failed: {e}")))
    }

    pub fn import_lenient(&self) -> View {
        View(import(&self.src, &ImportOptions { lenient: true }).unwrap_or_else(|e| panic!("import failed: {e}")))
    }

    pub fn import_err(&self) -> String {
        match import(&self.src, &ImportOptions::default()) {
            Ok(_) => panic!("import should fail"),
            Err(e) => e.to_string(),
        }
    }
}

/// Read-only views of an import result, addressed by graph output name.
pub struct View(pub Imported);

impl View {
    fn out(&self, name: &str) -> ValueRef {
        self.0.graph.outputs.iter().find(|o| o.name == name).unwrap_or_else(|| panic!("no output {name}")).value
    }

    pub fn op_of(&self, name: &str) -> String {
        self.0.graph.node(self.out(name).node).op.name()
    }

    pub fn op(&self, name: &str) -> Op {
        self.0.graph.node(self.out(name).node).op.clone()
    }

    pub fn type_of(&self, name: &str) -> String {
        self.0.graph.value_type(self.out(name)).to_string()
    }

    pub fn producer_of(&self, name: &str) -> String {
        self.0.graph.node(self.out(name).node).name.clone()
    }

    /// The elements of a constant or symbolic output, as `[a, b]`.
    pub fn known_of(&self, name: &str) -> String {
        match self.op(name) {
            Op::SymbolicValue { values, .. } => crate::sym::shape_string(&values),
            Op::Constant(t) => match &t.data {
                TensorData::F32(v) => format!("{v:?}"),
                d => format!("{:?}", d.to_i64_vec().unwrap()),
            },
            other => panic!("{name} is not known: {other:?}"),
        }
    }

    /// The ops of the output's producer's inputs, in slot order (`_` for an absent slot).
    pub fn input_ops(&self, name: &str) -> Vec<String> {
        let g = &self.0.graph;
        g.node(self.out(name).node).inputs.iter().map(|i| i.map_or("_".to_string(), |v| g.node(v.node).op.name())).collect()
    }

    pub fn node_names(&self) -> Vec<String> {
        self.0.graph.node_indices().map(|i| self.0.graph.node(i).name.clone()).collect()
    }

    pub fn step_count(&self) -> usize {
        self.0.graph.node_indices().filter(|&i| !self.0.graph.node(i).op.is_source() && !matches!(self.0.graph.node(i).op, Op::SymbolicValue { .. })).count()
    }
}
