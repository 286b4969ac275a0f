//! ONNX protobuf (`ModelProto`) → `SourceGraph`. Decoding only: no interpretation of ops here.

mod tensor;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_shape_proto::dimension::Value as DimValue;
use onnx_protobuf::type_proto::Value as TypeValue;
use onnx_protobuf::{AttributeProto, Message, ModelProto, TensorProto, ValueInfoProto};

pub use tensor::tensor_from_proto;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::source::{Attr, Initializer, SourceDim, SourceGraph, SourceNode, ValueDecl};

/// Initializers with at most this many elements are always loaded: shape computations read them.
pub const SMALL_INITIALIZER: usize = 1024;

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Load weight data; `false` keeps only the type and shape of large initializers.
    pub load_weights: bool,
}

impl Default for LoadOptions {
    fn default() -> LoadOptions {
        LoadOptions { load_weights: true }
    }
}

/// Loads a model file; external data is looked up next to it.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<SourceGraph> {
    let file_err = |msg: String| Error::File { path: path.display().to_string(), msg };
    let bytes = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
    from_bytes(&bytes, path.parent(), opts).map_err(|e| match e {
        Error::Model(msg) => file_err(msg),
        other => other,
    })
}

/// Decodes a serialized `ModelProto`; `base_dir` is where external data files live.
pub fn from_bytes(bytes: &[u8], base_dir: Option<&Path>, opts: &LoadOptions) -> Result<SourceGraph> {
    let model = ModelProto::parse_from_bytes(bytes).map_err(|e| Error::Model(format!("not a valid ONNX ModelProto: {e}")))?;
    from_model(&model, base_dir, opts)
}

/// Decodes a serialized `TensorProto` (the ONNX test-data `input_N.pb` files).
pub fn tensor_from_bytes(bytes: &[u8], base_dir: Option<&Path>) -> Result<crate::tensor::Tensor> {
    let t = TensorProto::parse_from_bytes(bytes).map_err(|e| Error::Model(format!("not a valid ONNX TensorProto: {e}")))?;
    tensor_from_proto(&t, base_dir)
}

fn from_model(model: &ModelProto, base_dir: Option<&Path>, opts: &LoadOptions) -> Result<SourceGraph> {
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        // Models of other domains only (ai.onnx.ml, training) still load; their nodes are declined.
        .unwrap_or(0);
    let graph = model.graph.as_ref().ok_or_else(|| Error::Model("the model has no graph".into()))?;

    let mut initializers = BTreeMap::new();
    for t in &graph.initializer {
        initializers.insert(t.name.clone(), initializer(t, base_dir, opts)?);
    }
    if let Some(s) = graph.sparse_initializer.first() {
        let name = s.values.as_ref().map(|v| v.name.clone()).unwrap_or_default();
        return Err(Error::Value { name, msg: "sparse initializers are not supported".into() });
    }
    let inputs = graph.input.iter().filter(|v| !initializers.contains_key(&v.name)).map(value_decl).collect();
    let outputs = graph.output.iter().map(value_decl).collect();
    let value_info = graph.value_info.iter().map(|v| (v.name.clone(), value_decl(v))).collect();

    let mut nodes = Vec::with_capacity(graph.node.len());
    for (i, n) in graph.node.iter().enumerate() {
        let name = if n.name.is_empty() { format!("{}_{i}", n.op_type) } else { n.name.clone() };
        let mut attrs = BTreeMap::new();
        for a in &n.attribute {
            let value = attr(a, base_dir).map_err(|e| Error::node(&name, &n.op_type, format!("attribute '{}': {e}", a.name)))?;
            attrs.insert(a.name.clone(), value);
        }
        nodes.push(SourceNode {
            name,
            op_type: n.op_type.clone(),
            domain: if n.domain == "ai.onnx" { String::new() } else { n.domain.clone() },
            inputs: n.input.clone(),
            outputs: n.output.clone(),
            attrs,
        });
    }
    Ok(SourceGraph { name: graph.name.clone(), opset, inputs, outputs, initializers, value_info, nodes })
}

fn initializer(t: &TensorProto, base_dir: Option<&Path>, opts: &LoadOptions) -> Result<Initializer> {
    let (dtype, shape) = tensor::proto_type(t)?;
    let numel: usize = shape.iter().product();
    let skip = !tensor::has_data(t) || (!opts.load_weights && numel > SMALL_INITIALIZER);
    if skip {
        return Ok(Initializer::Absent { dtype, shape });
    }
    Ok(Initializer::Data(Arc::new(tensor_from_proto(t, base_dir)?)))
}

fn value_decl(v: &ValueInfoProto) -> ValueDecl {
    let mut decl = ValueDecl { name: v.name.clone(), dtype: None, onnx_type: 0, dims: None };
    if let Some(TypeValue::TensorType(tt)) = v.type_.as_ref().and_then(|t| t.value.as_ref()) {
        decl.onnx_type = tt.elem_type;
        decl.dtype = DType::from_onnx(tt.elem_type);
        decl.dims = tt.shape.as_ref().map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(DimValue::DimValue(v)) => SourceDim::Fixed(*v),
                    Some(DimValue::DimParam(p)) if !p.is_empty() => SourceDim::Named(p.clone()),
                    _ => SourceDim::Unknown,
                })
                .collect()
        });
    }
    decl
}

fn attr(a: &AttributeProto, base_dir: Option<&Path>) -> Result<Attr> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok(match a.type_.enum_value() {
        Ok(AttributeType::INT) => Attr::Int(a.i),
        Ok(AttributeType::FLOAT) => Attr::Float(a.f),
        Ok(AttributeType::INTS) => Attr::Ints(a.ints.clone()),
        Ok(AttributeType::FLOATS) => Attr::Floats(a.floats.clone()),
        Ok(AttributeType::STRING) => Attr::String(text(&a.s)),
        Ok(AttributeType::STRINGS) => Attr::Strings(a.strings.iter().map(|s| text(s)).collect()),
        Ok(AttributeType::TENSOR) => match a.t.as_ref() {
            Some(t) if DType::from_onnx(t.data_type).is_none() => Attr::Other(format!("tensor of ONNX type {}", t.data_type)),
            Some(t) => Attr::Tensor(Arc::new(tensor_from_proto(t, base_dir)?)),
            None => return Err(Error::Model("TENSOR attribute without a tensor".into())),
        },
        Ok(other) => Attr::Other(format!("{other:?}")),
        Err(code) => Attr::Other(format!("attribute type {code}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_protobuf::{GraphProto, NodeProto, OperatorSetIdProto, TensorShapeProto, TypeProto};

    fn vi(name: &str, elem: i32, dims: &[DimValue]) -> ValueInfoProto {
        let mut shape = TensorShapeProto::new();
        for d in dims {
            let mut dim = onnx_protobuf::tensor_shape_proto::Dimension::new();
            dim.value = Some(d.clone());
            shape.dim.push(dim);
        }
        let mut tt = onnx_protobuf::type_proto::Tensor::new();
        tt.elem_type = elem;
        tt.shape = Some(shape).into();
        let mut ty = TypeProto::new();
        ty.value = Some(TypeValue::TensorType(tt));
        let mut v = ValueInfoProto::new();
        v.name = name.into();
        v.type_ = Some(ty).into();
        v
    }

    fn model() -> ModelProto {
        let mut g = GraphProto::new();
        g.name = "g".into();
        g.input.push(vi("x", 1, &[DimValue::DimParam("B".into()), DimValue::DimValue(4), DimValue::DimParam(String::new())]));
        g.input.push(vi("w", 1, &[DimValue::DimValue(2000)]));
        g.output.push(vi("y", 1, &[]));
        let mut w = TensorProto::new();
        w.name = "w".into();
        w.data_type = 1;
        w.dims = vec![2000];
        w.float_data = (0..2000).map(|i| i as f32).collect();
        g.initializer.push(w);
        let mut s = TensorProto::new();
        s.name = "s".into();
        s.data_type = 7;
        s.dims = vec![2];
        s.int64_data = vec![1, -1];
        g.initializer.push(s);
        let mut stripped = TensorProto::new();
        stripped.name = "stripped".into();
        stripped.data_type = 10;
        stripped.dims = vec![3, 3];
        g.initializer.push(stripped);
        let mut n = NodeProto::new();
        n.op_type = "Reshape".into();
        n.input = vec!["x".into(), "s".into()];
        n.output = vec!["y".into()];
        let mut a = AttributeProto::new();
        a.name = "allowzero".into();
        a.type_ = AttributeType::INT.into();
        a.i = 1;
        n.attribute.push(a);
        g.node.push(n);
        let mut m = ModelProto::new();
        m.graph = Some(g).into();
        let mut op = OperatorSetIdProto::new();
        op.version = 17;
        m.opset_import.push(op);
        let mut other = OperatorSetIdProto::new();
        other.domain = "com.microsoft".into();
        other.version = 1;
        m.opset_import.push(other);
        m
    }

    #[test]
    fn model_decodes_into_source_graph() {
        let bytes = model().write_to_bytes().unwrap();
        let g = from_bytes(&bytes, None, &LoadOptions::default()).unwrap();
        assert_eq!(g.opset, 17);
        assert_eq!(g.inputs.len(), 1, "initializers listed as inputs are not graph inputs");
        assert_eq!(
            g.inputs[0].dims.as_deref().unwrap(),
            &[SourceDim::Named("B".into()), SourceDim::Fixed(4), SourceDim::Unknown]
        );
        assert_eq!(g.inputs[0].dtype, Some(DType::F32));
        assert_eq!(g.nodes[0].name, "Reshape_0");
        assert_eq!(g.nodes[0].attrs["allowzero"], Attr::Int(1));
        assert!(matches!(&g.initializers["w"], Initializer::Data(t) if t.numel() == 2000));
        assert!(matches!(&g.initializers["stripped"], Initializer::Absent { dtype: DType::F16, shape } if shape == &vec![3, 3]));

        let light = from_bytes(&bytes, None, &LoadOptions { load_weights: false }).unwrap();
        assert!(matches!(&light.initializers["w"], Initializer::Absent { .. }));
        assert!(matches!(&light.initializers["s"], Initializer::Data(t) if t.data.to_i64_vec() == Some(vec![1, -1])));
    }

    #[test]
    fn serialized_tensor_round_trips() {
        let mut t = TensorProto::new();
        t.name = "input_0".into();
        t.data_type = 7;
        t.dims = vec![2];
        t.int64_data = vec![5, -6];
        let got = tensor_from_bytes(&t.write_to_bytes().unwrap(), None).unwrap();
        assert_eq!(got, crate::tensor::Tensor::from_i64s(vec![2], vec![5, -6]));
    }

    #[test]
    fn errors_name_the_file() {
        let e = load(Path::new("/nonexistent/quilt.onnx"), &LoadOptions::default()).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/quilt.onnx"), "{e}");
        let e = from_bytes(b"\xff\xff\xff", None, &LoadOptions::default()).unwrap_err().to_string();
        assert!(e.contains("ModelProto"), "{e}");
    }
}
