//! Packed projections: the MatMuls that project one activation into an attention's q, k and v
//! become one MatMul against their weights side by side, and the attention reads its inputs as
//! column ranges of that product (`Op::Attention`'s `columns`).
//!
//! SD's transformer blocks compute `q = x·Wq`, `k = x·Wk`, `v = x·Wv` (self-attention) and
//! `q = x·Wq`, `k = c·Wk`, `v = c·Wv` (cross-attention over the text embedding `c`): 96 GEMMs
//! per UNet call, most of them too small to fill the GPU (`[B·HW, 320] · [320, 320]`). One GEMM
//! against `[Wq | Wk | Wv]` (or `[Wk | Wv]`) reads the activation once, launches once and gives
//! the library a wider N to tile. The packed weight is made at compile time; the separate
//! weights are dropped when nothing else reads them, so device memory holds each value once.
//!
//! The pass packs the projections of one `Attention { heads: Some(_), columns: None }` when
//! - each of its q, k, v (the ones packed) comes from `MatMul(x, W)` with `W` a rank-2
//!   `Constant` (weights are constants once loaded; graph-only compiles keep `Weight`
//!   placeholders and are left alone) of x's dtype, and x is rank 3;
//! - each MatMul's output is read by the attention alone, once, and is not a graph output;
//! - all three share x (q | k | v), or else k and v share it (k | v, q stays as it is).
//!
//! A fixed walk after extraction, like `crate::epilogue`; it runs first among those passes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use petgraph::graph::NodeIndex;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ir::graph::{GraphOutput, Node, ValueRef};
use crate::ir::{AttentionColumns, Graph, Op, TensorType};
use crate::tensor::{Tensor, TensorData};

/// What the pass did, for `quilt explain` and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProjectionReport {
    /// Attentions whose q, k and v come from one MatMul.
    pub qkv: usize,
    /// Attentions whose k and v come from one MatMul.
    pub kv: usize,
    /// MatMuls removed (two per q|k|v, one per k|v).
    pub matmuls_removed: usize,
}

/// One group of projections that become one MatMul.
struct Packing {
    /// The MatMul nodes, in q, k, v order (two for k|v).
    matmuls: Vec<NodeIndex>,
    /// The packed weight and the packed product's type.
    weight: Arc<Tensor>,
    product: TensorType,
    name: String,
    /// Where the attention finds q, k and v afterwards.
    columns: AttentionColumns,
}

/// `graph` with the projections of every attention that fits packed (see the module doc).
pub fn pack_projections(graph: &Graph) -> Result<(Graph, ProjectionReport)> {
    let outputs: HashSet<ValueRef> = graph.outputs.iter().map(|o| o.value).collect();
    let mut report = ProjectionReport::default();
    // Per attention node: its packing.
    let mut attentions: HashMap<NodeIndex, usize> = HashMap::new();
    let mut packings: Vec<Packing> = Vec::new();
    for ix in graph.node_indices() {
        let node = graph.node(ix);
        let Op::Attention { heads: Some(_), columns: None, .. } = node.op else { continue };
        let Some(packing) = packable(graph, &outputs, ix)? else { continue };
        match packing.matmuls.len() {
            3 => report.qkv += 1,
            _ => report.kv += 1,
        }
        report.matmuls_removed += packing.matmuls.len() - 1;
        attentions.insert(ix, packings.len());
        packings.push(packing);
    }
    if packings.is_empty() {
        return Ok((graph.clone(), report));
    }
    // The packed MatMul is emitted where its group's first MatMul was; the others vanish.
    let mut first_of: HashMap<NodeIndex, usize> = HashMap::new();
    let mut removed: HashSet<NodeIndex> = HashSet::new();
    for (p, packing) in packings.iter().enumerate() {
        let first = *packing.matmuls.iter().min().expect("a packing has MatMuls");
        first_of.insert(first, p);
        removed.extend(packing.matmuls.iter().copied());
    }
    // Weights that only the removed MatMuls read are dropped with them.
    let dropped: HashSet<NodeIndex> = graph
        .node_indices()
        .filter(|&ix| matches!(graph.node(ix).op, Op::Constant(_)) && !graph.consumers(ix).is_empty() && graph.consumers(ix).iter().all(|c| removed.contains(c)))
        .collect();

    let mut new = Graph::new();
    let mut map: HashMap<ValueRef, ValueRef> = HashMap::new();
    let mut packed_value: Vec<Option<ValueRef>> = vec![None; packings.len()];
    for ix in graph.node_indices() {
        let node = graph.node(ix);
        if let Some(&p) = first_of.get(&ix) {
            let packing = &packings[p];
            let x = graph.node(packing.matmuls[0]).inputs[0].expect("a packed MatMul has its activation");
            let w = new.add_node(Node { name: format!("{}/weight", packing.name), op: Op::Constant(packing.weight.clone()), inputs: vec![], outputs: vec![TensorType::of(&packing.weight)] });
            let mm = new.add_node(Node {
                name: packing.name.clone(),
                op: Op::MatMul,
                inputs: vec![Some(map[&x]), Some(ValueRef { node: w, output: 0 })],
                outputs: vec![packing.product.clone()],
            });
            packed_value[p] = Some(ValueRef { node: mm, output: 0 });
        }
        if removed.contains(&ix) || dropped.contains(&ix) {
            continue;
        }
        let (op, inputs) = match attentions.get(&ix) {
            Some(&p) => {
                let packed = packed_value[p].expect("the packed MatMul comes before its attention");
                // q keeps its own value when only k and v were packed; the mask stays.
                let first_packed = 3 - packings[p].matmuls.len();
                let inputs: Vec<Option<ValueRef>> = node
                    .inputs
                    .iter()
                    .enumerate()
                    .map(|(slot, v)| if (first_packed..3).contains(&slot) { Some(packed) } else { v.map(|v| map[&v]) })
                    .collect();
                let Op::Attention { scale, heads, .. } = node.op else { unreachable!("attentions holds Attention nodes") };
                (Op::Attention { scale, heads, columns: Some(packings[p].columns) }, inputs)
            }
            None => (node.op.clone(), node.inputs.iter().map(|v| v.map(|v| map[&v])).collect()),
        };
        let new_ix = new.add_node(Node { name: node.name.clone(), op, inputs, outputs: node.outputs.clone() });
        for k in 0..node.outputs.len() {
            map.insert(ValueRef { node: ix, output: k }, ValueRef { node: new_ix, output: k });
        }
    }
    for o in &graph.outputs {
        new.outputs.push(GraphOutput { name: o.name.clone(), value: map[&o.value] });
    }
    Ok((new, report))
}

/// One projection: `MatMul(x, W)` feeding only this attention.
struct Projection {
    matmul: NodeIndex,
    x: ValueRef,
    weight: Arc<Tensor>,
}

/// The packing of `attention`'s projections, or `None` when they do not fit (module doc).
fn packable(g: &Graph, outputs: &HashSet<ValueRef>, attention: NodeIndex) -> Result<Option<Packing>> {
    let node = g.node(attention);
    let inputs: Vec<ValueRef> = match node.inputs.get(..3) {
        Some([Some(q), Some(k), Some(v)]) => vec![*q, *k, *v],
        _ => return Ok(None),
    };
    let projections: Vec<Option<Projection>> = inputs.iter().map(|&v| projection(g, outputs, attention, &inputs, v)).collect();
    let shares_x = |a: usize, b: usize| match (&projections[a], &projections[b]) {
        (Some(p), Some(q)) => p.x == q.x && p.weight.dtype() == q.weight.dtype() && p.weight.shape[0] == q.weight.shape[0],
        _ => false,
    };
    let packed: Vec<&Projection> = if shares_x(0, 1) && shares_x(1, 2) {
        projections.iter().flatten().collect()
    } else if shares_x(1, 2) {
        projections[1..].iter().flatten().collect()
    } else {
        return Ok(None);
    };
    let widths: Vec<usize> = projections.iter().map(|p| p.as_ref().map_or(0, |p| p.weight.shape[1])).collect();
    let weight = Arc::new(concat_columns(&packed.iter().map(|p| p.weight.as_ref()).collect::<Vec<_>>()).map_err(|e| Error::node(&node.name, "Attention", e))?);
    let x_ty = g.value_type(packed[0].x);
    let mut shape = x_ty.shape.clone();
    shape[2] = crate::sym::SymDim::konst(weight.shape[1] as i64);
    let product = TensorType::new(x_ty.dtype, shape);
    // Offsets: packed inputs side by side; an unpacked q starts at 0 of its own value.
    let mut offset = [0usize; 3];
    let first = 3 - packed.len();
    let mut at = 0;
    for (i, o) in offset.iter_mut().enumerate().skip(first) {
        *o = at;
        at += widths[i];
    }
    let q_width = match &projections[0] {
        Some(p) if first == 0 => p.weight.shape[1],
        _ => match g.value_type(inputs[0]).shape.get(2).and_then(|d| d.as_const()) {
            Some(w) => w as usize,
            None => return Ok(None),
        },
    };
    let columns = AttentionColumns { offset, width: [q_width, widths[1], widths[2]] };
    let suffix = if first == 0 { "packed_qkv" } else { "packed_kv" };
    let name = format!("{}/{suffix}", g.node(packed[0].matmul).name);
    Ok(Some(Packing { matmuls: packed.iter().map(|p| p.matmul).collect(), weight, product, name, columns }))
}

/// `v` as `MatMul(x, W)` with a rank-2 constant W, read only by `attention` (once).
fn projection(g: &Graph, outputs: &HashSet<ValueRef>, attention: NodeIndex, inputs: &[ValueRef], v: ValueRef) -> Option<Projection> {
    let mm = g.node(v.node);
    if mm.op != Op::MatMul || mm.inputs.len() != 2 || outputs.contains(&v) || g.consumers(v.node) != [attention] || inputs.iter().filter(|&&i| i == v).count() != 1 {
        return None;
    }
    let (x, w) = (mm.inputs[0]?, mm.inputs[1]?);
    let Op::Constant(weight) = &g.node(w.node).op else { return None };
    let x_ty = g.value_type(x);
    let float = matches!(x_ty.dtype, DType::F32 | DType::F16 | DType::BF16);
    (float && weight.shape.len() == 2 && x_ty.rank() == 3 && weight.dtype() == x_ty.dtype).then(|| Projection { matmul: v.node, x, weight: weight.clone() })
}

/// Rank-2 tensors of one dtype and row count, side by side: `[K, N0 + N1 + …]`.
fn concat_columns(parts: &[&Tensor]) -> std::result::Result<Tensor, String> {
    let dtype = parts[0].dtype();
    let rows = parts[0].shape[0];
    if parts.iter().any(|t| t.shape.len() != 2 || t.shape[0] != rows || t.dtype() != dtype) {
        return Err(format!("projection weights of different shapes or dtypes: {:?}", parts.iter().map(|t| (&t.shape, t.dtype())).collect::<Vec<_>>()));
    }
    let es = dtype.size_bytes();
    let bytes: Vec<Vec<u8>> = parts.iter().map(|t| t.data.to_le_bytes()).collect();
    let width: usize = parts.iter().map(|t| t.shape[1]).sum();
    let mut out = Vec::with_capacity(rows * width * es);
    for r in 0..rows {
        for (t, b) in parts.iter().zip(&bytes) {
            let row = t.shape[1] * es;
            out.extend_from_slice(&b[r * row..(r + 1) * row]);
        }
    }
    let data = TensorData::from_le_bytes(dtype, &out).ok_or_else(|| format!("{} bytes are not {dtype} elements", out.len()))?;
    Ok(Tensor::new(vec![rows, width], data))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f16 weights side by side keep every element where it was (2-byte rows, not 4).
    #[test]
    fn concat_columns_keeps_elements_in_place() {
        let f16s = |v: &[f32]| TensorData::F16(v.iter().map(|&x| half::f16::from_f32(x)).collect());
        let a = Tensor::new(vec![2, 3], f16s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        let b = Tensor::new(vec![2, 1], f16s(&[-1.0, -2.0]));
        let c = concat_columns(&[&a, &b, &a]).unwrap();
        assert_eq!(c.shape, [2, 7]);
        assert_eq!(c.data.to_f64_vec(), [1.0, 2.0, 3.0, -1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -2.0, 4.0, 5.0, 6.0]);
        let rows = Tensor::new(vec![3, 1], f16s(&[0.0; 3]));
        assert!(concat_columns(&[&a, &rows]).unwrap_err().contains("different shapes"));
        let f32s = Tensor::from_f32s(vec![2, 1], vec![0.0; 2]);
        assert!(concat_columns(&[&a, &f32s]).is_err());
    }
}
