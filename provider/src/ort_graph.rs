//! ORT's `OrtGraph` → `quilt_rewrites::source::SourceGraph`, through the OrtApi graph accessors.
//!
//! `OrtGraph`s (and their nodes and initializer values) live only during the ORT call that hands
//! them out, so everything is copied into owned Rust values here.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::c_char;
use std::ptr;
use std::sync::Arc;

use ort_sys::{OrtGraph, OrtNode, OrtOpAttr, OrtTensorTypeAndShapeInfo, OrtTypeInfo, OrtValue, OrtValueInfo};
use quilt_rewrites::source::{Attr, Initializer, SourceDim, SourceGraph, SourceNode, ValueDecl};
use quilt_rewrites::DType;

use crate::api::{string_from, Api};
use crate::error::{Error, Result};
use crate::ort_call;
use crate::tensor_io::{element_type_and_dims, read_tensor, sizes, value_type_and_dims};

/// Where the converted graph's inputs and outputs come from.
#[derive(Clone, Copy)]
pub enum GraphIo {
    /// The graph's own inputs and outputs (GetCapability).
    Graph,
    /// The fused node's inputs and outputs, in its order, which is the kernel context's order at
    /// run time (Compile).
    FusedNode(*const OrtNode),
}

/// How much initializer data to copy.
#[derive(Clone, Copy)]
pub enum WeightCopy {
    /// Every constant initializer (Compile: ORT may free them afterwards).
    All,
    /// Only those of at most this many bytes; larger ones are `Initializer::Absent` (GetCapability
    /// needs small shape constants, not the weights).
    UpTo(usize),
}

/// One ORT node, read once.
pub struct NodeView {
    pub node: *const OrtNode,
    pub source: SourceNode,
    /// The EP ORT already assigned the node to ("" if none).
    pub assigned_ep: String,
}

pub struct Converted {
    pub source: SourceGraph,
    /// The ORT node of each `source.nodes` entry (same order, topological).
    pub nodes: Vec<*const OrtNode>,
    pub assigned_ep: Vec<String>,
    /// Node outputs ORT declares with rank 0 (a scalar or an unknown rank), left out of
    /// `source.value_info`. A group boundary through one of them gets exactly this declaration
    /// as a fused-node input in Compile, so capability checks use it too.
    pub rank0_values: BTreeMap<String, ValueDecl>,
    /// How many of `source.inputs` came from the [`GraphIo`] (the rest are values read from
    /// outside that it did not list).
    pub num_io_inputs: usize,
}

/// Converts `graph` (see [`GraphIo`] and [`WeightCopy`]).
///
/// # Safety
/// `graph` (and the fused node, if any) must be valid for the duration of the call.
pub unsafe fn convert(api: Api, graph: *const OrtGraph, io: GraphIo, weights: WeightCopy) -> Result<Converted> {
    let reader = Reader { api };
    let mut views = Vec::new();
    for node in reader.graph_nodes(graph)? {
        views.push(reader.node_view(node)?);
    }
    let views = topological_order(views)?;

    let (input_infos, output_infos) = match io {
        GraphIo::Graph => (reader.graph_values(graph, true)?, reader.graph_values(graph, false)?),
        GraphIo::FusedNode(node) => {
            let (ins, outs) = reader.node_values(node)?;
            if ins.iter().any(|v| v.is_null()) {
                return Err(Error::Graph("the fused node has an absent input".into()));
            }
            (ins, outs)
        }
    };

    let mut src = SourceGraph { name: reader.graph_name(graph), opset: reader.onnx_opset(graph)?, ..Default::default() };
    let mut known: HashSet<String> = HashSet::new();
    for &vi in &input_infos {
        // A constant initializer listed among the graph inputs is a weight, not an input.
        if matches!(io, GraphIo::Graph) && reader.is_constant_initializer(vi)? {
            continue;
        }
        let decl = reader.value_decl(vi)?;
        known.insert(decl.name.clone());
        src.inputs.push(decl);
    }
    let num_io_inputs = src.inputs.len();
    for &vi in &output_infos {
        src.outputs.push(reader.value_decl(vi)?);
    }

    let produced: HashSet<&str> =
        views.iter().flat_map(|v| v.source.outputs.iter().map(String::as_str)).filter(|n| !n.is_empty()).collect();
    // Values read but neither produced by a node nor listed as inputs: constant initializers
    // become weights; anything else (outer-scope values, overridable initializers) becomes an
    // extra input so that the importer sees every value it reads.
    let mut read: Vec<*const OrtValueInfo> = Vec::new();
    for v in &views {
        let (ins, _) = reader.node_values(v.node)?;
        read.extend(ins.into_iter().filter(|p| !p.is_null()));
    }
    read.extend(output_infos.iter().copied());
    let mut seen: HashSet<String> = HashSet::new();
    for vi in read {
        let name = reader.value_name(vi)?;
        if produced.contains(name.as_str()) || known.contains(&name) || !seen.insert(name.clone()) {
            continue;
        }
        if reader.is_constant_initializer(vi)? {
            if let Some(init) = reader.initializer(vi, &name, weights)? {
                src.initializers.insert(name, init);
            }
        } else {
            src.inputs.push(reader.value_decl(vi)?);
        }
    }

    let mut rank0_values = BTreeMap::new();
    for v in &views {
        let (_, outs) = reader.node_values(v.node)?;
        for vi in outs.into_iter().filter(|p| !p.is_null()) {
            let decl = reader.value_decl(vi)?;
            // ORT reports an unknown rank as rank 0, indistinguishable from a scalar; the
            // importer infers intermediate types itself, so such declarations are left out.
            if decl.dims.as_ref().is_some_and(Vec::is_empty) {
                rank0_values.insert(decl.name.clone(), decl);
                continue;
            }
            src.value_info.insert(decl.name.clone(), decl);
        }
    }

    let nodes = views.iter().map(|v| v.node).collect();
    let assigned_ep = views.iter().map(|v| v.assigned_ep.clone()).collect();
    src.nodes = views.into_iter().map(|v| v.source).collect();
    Ok(Converted { source: src, nodes, assigned_ep, rank0_values, num_io_inputs })
}

/// A compact multi-line description of a converted graph (for verbose logs): declarations,
/// initializers by shape only, and nodes with their attributes.
pub fn describe(src: &SourceGraph) -> String {
    fn decl(d: &ValueDecl) -> String {
        let dims = match &d.dims {
            None => "?".to_string(),
            Some(dims) => dims
                .iter()
                .map(|d| match d {
                    SourceDim::Fixed(n) => n.to_string(),
                    SourceDim::Named(s) => s.clone(),
                    SourceDim::Unknown => "?".to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
        };
        let dtype = d.dtype.map_or(format!("type#{}", d.onnx_type), |t| t.to_string());
        format!("{}: {dtype}[{dims}]", d.name)
    }
    let mut out = format!("graph '{}' opset {}\n", src.name, src.opset);
    for d in &src.inputs {
        out += &format!("  input {}\n", decl(d));
    }
    for (name, init) in &src.initializers {
        out += &match init {
            Initializer::Data(t) => format!("  weight {name}: {}{:?} (data)\n", t.dtype(), t.shape),
            Initializer::Absent { dtype, shape } => format!("  weight {name}: {dtype}{shape:?} (not copied)\n"),
        };
    }
    for n in &src.nodes {
        let attrs: Vec<String> = n.attrs.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        out += &format!(
            "  node '{}' {}{}({}) -> ({}) {}\n",
            n.name,
            if n.domain.is_empty() { String::new() } else { format!("{}::", n.domain) },
            n.op_type,
            n.inputs.join(", "),
            n.outputs.join(", "),
            attrs.join(" ")
        );
    }
    for d in &src.outputs {
        out += &format!("  output {}\n", decl(d));
    }
    for d in src.value_info.values() {
        out += &format!("  value {}\n", decl(d));
    }
    out
}

/// Orders nodes so every producer precedes its consumers (stable: ties keep ORT's order).
fn topological_order(views: Vec<NodeView>) -> Result<Vec<NodeView>> {
    let producer: HashMap<&str, usize> = views
        .iter()
        .enumerate()
        .flat_map(|(i, v)| v.source.outputs.iter().filter(|n| !n.is_empty()).map(move |n| (n.as_str(), i)))
        .collect();
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); views.len()];
    let mut pending: Vec<usize> = vec![0; views.len()];
    for (i, v) in views.iter().enumerate() {
        let deps: BTreeSet<usize> = v.source.inputs.iter().filter_map(|n| producer.get(n.as_str()).copied()).collect();
        for d in deps {
            if d != i {
                consumers[d].push(i);
                pending[i] += 1;
            }
        }
    }
    let mut ready: BTreeSet<usize> = (0..views.len()).filter(|&i| pending[i] == 0).collect();
    let mut order = Vec::with_capacity(views.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &c in &consumers[i] {
            pending[c] -= 1;
            if pending[c] == 0 {
                ready.insert(c);
            }
        }
    }
    if order.len() != views.len() {
        return Err(Error::Graph("the graph has a cycle".into()));
    }
    let mut slots: Vec<Option<NodeView>> = views.into_iter().map(Some).collect();
    Ok(order.into_iter().map(|i| slots[i].take().expect("each node once")).collect())
}

struct Reader {
    api: Api,
}

impl Reader {
    unsafe fn graph_name(&self, graph: *const OrtGraph) -> String {
        let mut p: *const c_char = ptr::null();
        match ort_call!(self.api, Graph_GetName(graph, &mut p)) {
            Ok(()) => string_from(p),
            Err(_) => String::new(),
        }
    }

    /// The opset of the default ONNX domain ("" or "ai.onnx"); 0 if the graph imports none.
    unsafe fn onnx_opset(&self, graph: *const OrtGraph) -> Result<i64> {
        let mut n = 0usize;
        ort_call!(self.api, Graph_GetNumOperatorSets(graph, &mut n))?;
        let mut domains: Vec<*const c_char> = vec![ptr::null(); n];
        let mut versions = vec![0i64; n];
        if n > 0 {
            ort_call!(self.api, Graph_GetOperatorSets(graph, domains.as_mut_ptr(), versions.as_mut_ptr(), n))?;
        }
        for (d, v) in domains.into_iter().zip(versions) {
            let d = string_from(d);
            if d.is_empty() || d == "ai.onnx" {
                return Ok(v);
            }
        }
        Ok(0)
    }

    unsafe fn graph_nodes(&self, graph: *const OrtGraph) -> Result<Vec<*const OrtNode>> {
        let mut n = 0usize;
        ort_call!(self.api, Graph_GetNumNodes(graph, &mut n))?;
        let mut nodes = vec![ptr::null::<OrtNode>(); n];
        if n > 0 {
            ort_call!(self.api, Graph_GetNodes(graph, nodes.as_mut_ptr(), n))?;
        }
        Ok(nodes)
    }

    unsafe fn graph_values(&self, graph: *const OrtGraph, inputs: bool) -> Result<Vec<*const OrtValueInfo>> {
        let mut n = 0usize;
        if inputs {
            ort_call!(self.api, Graph_GetNumInputs(graph, &mut n))?;
        } else {
            ort_call!(self.api, Graph_GetNumOutputs(graph, &mut n))?;
        }
        let mut v = vec![ptr::null::<OrtValueInfo>(); n];
        if n > 0 {
            if inputs {
                ort_call!(self.api, Graph_GetInputs(graph, v.as_mut_ptr(), n))?;
            } else {
                ort_call!(self.api, Graph_GetOutputs(graph, v.as_mut_ptr(), n))?;
            }
        }
        Ok(v)
    }

    /// A node's input and output value infos; NULL entries are absent optional values.
    unsafe fn node_values(&self, node: *const OrtNode) -> Result<(Vec<*const OrtValueInfo>, Vec<*const OrtValueInfo>)> {
        let mut n_in = 0usize;
        ort_call!(self.api, Node_GetNumInputs(node, &mut n_in))?;
        let mut ins = vec![ptr::null::<OrtValueInfo>(); n_in];
        if n_in > 0 {
            ort_call!(self.api, Node_GetInputs(node, ins.as_mut_ptr(), n_in))?;
        }
        let mut n_out = 0usize;
        ort_call!(self.api, Node_GetNumOutputs(node, &mut n_out))?;
        let mut outs = vec![ptr::null::<OrtValueInfo>(); n_out];
        if n_out > 0 {
            ort_call!(self.api, Node_GetOutputs(node, outs.as_mut_ptr(), n_out))?;
        }
        Ok((ins, outs))
    }

    unsafe fn node_string(&self, node: *const OrtNode, which: &'static str) -> Result<String> {
        let mut p: *const c_char = ptr::null();
        let status = match which {
            "name" => (self.api.ort.Node_GetName)(node, &mut p),
            "op_type" => (self.api.ort.Node_GetOperatorType)(node, &mut p),
            "domain" => (self.api.ort.Node_GetDomain)(node, &mut p),
            _ => (self.api.ort.Node_GetEpName)(node, &mut p),
        };
        self.api.check(which_call(which), status)?;
        Ok(string_from(p))
    }

    unsafe fn node_view(&self, node: *const OrtNode) -> Result<NodeView> {
        let name = self.node_string(node, "name")?;
        let op_type = self.node_string(node, "op_type")?;
        let domain = self.node_string(node, "domain")?;
        let domain = if domain == "ai.onnx" { String::new() } else { domain };
        let assigned_ep = self.node_string(node, "ep").unwrap_or_default();
        let (ins, outs) = self.node_values(node)?;
        let names = |v: Vec<*const OrtValueInfo>| -> Result<Vec<String>> {
            v.into_iter().map(|p| if p.is_null() { Ok(String::new()) } else { self.value_name(p) }).collect()
        };
        let attrs = self
            .attributes(node)
            .map_err(|e| Error::Graph(format!("node '{name}' ({op_type}): reading attributes: {e}")))?;
        Ok(NodeView {
            node,
            source: SourceNode { name, op_type, domain, inputs: names(ins)?, outputs: names(outs)?, attrs },
            assigned_ep,
        })
    }

    unsafe fn value_name(&self, vi: *const OrtValueInfo) -> Result<String> {
        let mut p: *const c_char = ptr::null();
        ort_call!(self.api, GetValueInfoName(vi, &mut p))?;
        Ok(string_from(p))
    }

    unsafe fn is_constant_initializer(&self, vi: *const OrtValueInfo) -> Result<bool> {
        let mut b = false;
        ort_call!(self.api, ValueInfo_IsConstantInitializer(vi, &mut b))?;
        Ok(b)
    }

    /// Declared type of a value. Non-tensor values get `dtype: None, dims: None`.
    unsafe fn value_decl(&self, vi: *const OrtValueInfo) -> Result<ValueDecl> {
        let name = self.value_name(vi)?;
        let mut type_info: *const OrtTypeInfo = ptr::null();
        ort_call!(self.api, GetValueInfoTypeInfo(vi, &mut type_info))?;
        let mut decl = ValueDecl { name, dtype: None, onnx_type: 0, dims: None };
        if type_info.is_null() {
            return Ok(decl);
        }
        let mut tensor_info: *const OrtTensorTypeAndShapeInfo = ptr::null();
        ort_call!(self.api, CastTypeInfoToTensorInfo(type_info, &mut tensor_info))?;
        if tensor_info.is_null() {
            return Ok(decl);
        }
        let (code, dims) = element_type_and_dims(self.api, tensor_info)?;
        let mut symbols: Vec<*const c_char> = vec![ptr::null(); dims.len()];
        if !dims.is_empty() {
            ort_call!(self.api, GetSymbolicDimensions(tensor_info, symbols.as_mut_ptr(), dims.len()))?;
        }
        decl.onnx_type = code;
        decl.dtype = DType::from_onnx(code);
        decl.dims = Some(
            dims.iter()
                .zip(symbols)
                .map(|(&d, s)| {
                    let s = string_from(s);
                    if d >= 0 {
                        SourceDim::Fixed(d)
                    } else if !s.is_empty() {
                        SourceDim::Named(s)
                    } else {
                        SourceDim::Unknown
                    }
                })
                .collect(),
        );
        Ok(decl)
    }

    /// A constant initializer's data (or only its type and shape, per `weights`). `None` for
    /// element types quilt cannot hold; the importer then reports the consumer as unsupported.
    unsafe fn initializer(&self, vi: *const OrtValueInfo, name: &str, weights: WeightCopy) -> Result<Option<Initializer>> {
        let mut value: *const OrtValue = ptr::null();
        ort_call!(self.api, ValueInfo_GetInitializerValue(vi, &mut value))?;
        if value.is_null() {
            return Err(Error::Graph(format!("initializer '{name}' has no value")));
        }
        let (code, dims) = value_type_and_dims(self.api, value)?;
        let Some(dtype) = DType::from_onnx(code) else { return Ok(None) };
        let shape = sizes(&dims, || Error::Graph(format!("initializer '{name}' has a negative dimension")))?;
        let bytes = shape.iter().product::<usize>() * dtype.size_bytes();
        if let WeightCopy::UpTo(limit) = weights {
            if bytes > limit {
                return Ok(Some(Initializer::Absent { dtype, shape }));
            }
        }
        let t = read_tensor(self.api, value, &|msg| Error::Graph(format!("initializer '{name}': {msg}")))?;
        Ok(Some(Initializer::Data(Arc::new(t))))
    }

    unsafe fn attributes(&self, node: *const OrtNode) -> Result<BTreeMap<String, Attr>> {
        let mut n = 0usize;
        ort_call!(self.api, Node_GetNumAttributes(node, &mut n))?;
        let mut attrs = vec![ptr::null::<OrtOpAttr>(); n];
        if n > 0 {
            ort_call!(self.api, Node_GetAttributes(node, attrs.as_mut_ptr(), n))?;
        }
        let mut out = BTreeMap::new();
        for a in attrs {
            let mut p: *const c_char = ptr::null();
            ort_call!(self.api, OpAttr_GetName(a, &mut p))?;
            let name = string_from(p);
            let value = self.attribute(a).map_err(|e| Error::Graph(format!("attribute '{name}': {e}")))?;
            out.insert(name, value);
        }
        Ok(out)
    }

    /// Bytes of an attribute via `ReadOpAttr` (a size probe, then the read).
    unsafe fn attr_bytes(&self, a: *const OrtOpAttr, ty: i32) -> Result<Vec<u8>> {
        let ty: ort_sys::OrtOpAttrType = std::mem::transmute(ty);
        let mut size = 0usize;
        // The probe fails with "not large enough" but reports the size.
        self.api.release((self.api.ort.ReadOpAttr)(a, ty, ptr::null_mut(), 0, &mut size));
        let mut buf = vec![0u8; size];
        if size > 0 {
            ort_call!(self.api, ReadOpAttr(a, ty, buf.as_mut_ptr().cast(), size, &mut size))?;
            buf.truncate(size);
        }
        Ok(buf)
    }

    unsafe fn attribute(&self, a: *const OrtOpAttr) -> Result<Attr> {
        let mut ty: i32 = 0;
        ort_call!(self.api, OpAttr_GetType(a, &mut ty as *mut i32 as *mut _))?;
        // OrtOpAttrType: 1 INT, 2 INTS, 3 FLOAT, 4 FLOATS, 5 STRING, 6 STRINGS, 7 GRAPH, 8 TENSOR.
        Ok(match ty {
            1 => Attr::Int(i64_values(&self.attr_bytes(a, ty)?).first().copied().unwrap_or(0)),
            2 => Attr::Ints(i64_values(&self.attr_bytes(a, ty)?)),
            3 => Attr::Float(f32_values(&self.attr_bytes(a, ty)?).first().copied().unwrap_or(0.0)),
            4 => Attr::Floats(f32_values(&self.attr_bytes(a, ty)?)),
            5 => {
                // Some ORT versions append a NUL, others do not.
                let mut b = self.attr_bytes(a, ty)?;
                if b.last() == Some(&0) {
                    b.pop();
                }
                Attr::String(String::from_utf8_lossy(&b).into_owned())
            }
            6 => {
                // Each string is NUL-terminated.
                let b = self.attr_bytes(a, ty)?;
                let mut parts: Vec<String> = b.split(|&c| c == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect();
                if b.last() == Some(&0) {
                    parts.pop();
                }
                Attr::Strings(parts)
            }
            7 => Attr::Other("graph".into()),
            8 => {
                let mut value: *mut OrtValue = ptr::null_mut();
                ort_call!(self.api, OpAttr_GetTensorAttributeAsOrtValue(a, &mut value))?;
                let t = read_tensor(self.api, value, &|msg| Error::Graph(format!("tensor attribute: {msg}")));
                (self.api.ort.ReleaseValue)(value);
                match t {
                    Ok(t) => Attr::Tensor(Arc::new(t)),
                    Err(e) => Attr::Other(format!("tensor quilt cannot read ({e})")),
                }
            }
            other => Attr::Other(format!("attribute type {other}")),
        })
    }
}

fn which_call(which: &str) -> &'static str {
    match which {
        "name" => "Node_GetName",
        "op_type" => "Node_GetOperatorType",
        "domain" => "Node_GetDomain",
        _ => "Node_GetEpName",
    }
}

fn i64_values(b: &[u8]) -> Vec<i64> {
    b.chunks_exact(8).map(|c| i64::from_ne_bytes(c.try_into().unwrap())).collect()
}

fn f32_values(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_ne_bytes(c.try_into().unwrap())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, inputs: &[&str], outputs: &[&str]) -> NodeView {
        NodeView {
            node: ptr::null(),
            source: SourceNode {
                name: name.into(),
                op_type: "Relu".into(),
                domain: String::new(),
                inputs: inputs.iter().map(|s| s.to_string()).collect(),
                outputs: outputs.iter().map(|s| s.to_string()).collect(),
                attrs: BTreeMap::new(),
            },
            assigned_ep: String::new(),
        }
    }

    #[test]
    fn topological_order_moves_producers_first_and_keeps_ties_stable() {
        let v = vec![view("c", &["b"], &["c"]), view("a", &["x"], &["a"]), view("b", &["a", ""], &["b"]), view("d", &["x"], &["d"])];
        let order: Vec<String> = topological_order(v).unwrap().into_iter().map(|v| v.source.name).collect();
        assert_eq!(order, ["a", "b", "c", "d"]);
    }

    #[test]
    fn topological_order_rejects_cycles() {
        let v = vec![view("a", &["b"], &["a"]), view("b", &["a"], &["b"])];
        assert!(topological_order(v).is_err());
    }
}
