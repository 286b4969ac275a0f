//! The e-graph language over IR ops.
//!
//! `Op` is not hashable (it holds floats and constant tensors), and several ops keep part of
//! their meaning in the node's output types (`Reshape`'s target shape is its output shape). So
//! an e-node is `(op id, children)`, where the op id indexes an [`OpTable`] of interned
//! [`TypedOp`]s: the op *and* its output types. Two e-nodes are the same when they apply the same
//! typed op to the same classes. Interning keys on the op's `Debug` text (exact for floats:
//! Rust prints the shortest string that round-trips) plus the output types; a constant keys on
//! its values when it is small (so equal constants share a class) and on its allocation otherwise.
//!
//! Two kinds of node exist only in the e-graph: `Proj(i)` picks output `i` of a multi-output
//! node (Split), whose class holds the tuple of all outputs; `Absent` fills an optional input
//! slot that the model left empty.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use egg::{Id, Language};

use crate::ir::{Op, TensorType};

/// Constants with at most this many elements are interned by value.
pub const VALUE_KEYED_CONSTANT: usize = 1 << 16;

/// Index into the [`OpTable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub u32);

/// What an e-node computes.
#[derive(Clone, Debug)]
pub enum NodeKind {
    Ir(Op),
    /// Output `i` of the tuple in its one child's class.
    Proj(usize),
    /// An absent optional input.
    Absent,
}

/// An op with its output types (one per output; none for `Absent`).
#[derive(Clone, Debug)]
pub struct TypedOp {
    pub kind: NodeKind,
    pub outputs: Vec<TensorType>,
}

impl TypedOp {
    pub fn ir(op: Op, out: TensorType) -> TypedOp {
        TypedOp { kind: NodeKind::Ir(op), outputs: vec![out] }
    }

    pub fn op(&self) -> Option<&Op> {
        match &self.kind {
            NodeKind::Ir(op) => Some(op),
            _ => None,
        }
    }

    fn key(&self) -> String {
        let kind = match &self.kind {
            // Constants up to VALUE_KEYED_CONSTANT elements key on a hash of their bytes (equal
            // data, one class; `OpTable::intern` compares the data on a hit), larger ones on
            // their allocation (hashing every weight of a model is not worth it).
            NodeKind::Ir(Op::Constant(t)) if t.numel() <= VALUE_KEYED_CONSTANT => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::hash::Hash::hash(&t.data.to_le_bytes(), &mut h);
                format!("Constant{}{:?}#{:x}", t.dtype(), t.shape, std::hash::Hasher::finish(&h))
            }
            NodeKind::Ir(Op::Constant(t)) => format!("Constant@{:p}", Arc::as_ptr(t)),
            other => format!("{other:?}"),
        };
        let outs: Vec<String> = self.outputs.iter().map(|t| t.to_string()).collect();
        format!("{kind} -> {}", outs.join(","))
    }
}

/// Interned typed ops; lives in the e-graph's analysis so rules can add new ones.
#[derive(Default)]
pub struct OpTable {
    ops: Vec<TypedOp>,
    index: HashMap<String, OpId>,
}

impl OpTable {
    pub fn intern(&mut self, op: TypedOp) -> OpId {
        let mut key = op.key();
        if let Some(&id) = self.index.get(&key) {
            match (&self.ops[id.0 as usize].kind, &op.kind) {
                (NodeKind::Ir(Op::Constant(a)), NodeKind::Ir(Op::Constant(b))) if a.data != b.data => {
                    // A hash collision: key this one on its allocation instead.
                    key = format!("Constant@{:p}", Arc::as_ptr(b));
                    if let Some(&id) = self.index.get(&key) {
                        return id;
                    }
                }
                _ => return id,
            }
        }
        let id = OpId(self.ops.len() as u32);
        self.ops.push(op);
        self.index.insert(key, id);
        id
    }

    pub fn get(&self, id: OpId) -> &TypedOp {
        &self.ops[id.0 as usize]
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// An e-node: an interned typed op applied to child classes (inputs in ONNX slot order).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ENode {
    pub op: OpId,
    pub children: Vec<Id>,
}

impl Language for ENode {
    type Discriminant = OpId;

    fn discriminant(&self) -> OpId {
        self.op
    }

    fn matches(&self, other: &Self) -> bool {
        self.op == other.op && self.children.len() == other.children.len()
    }

    fn children(&self) -> &[Id] {
        &self.children
    }

    fn children_mut(&mut self) -> &mut [Id] {
        &mut self.children
    }
}

impl fmt::Display for ENode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op{}", self.op.0)
    }
}
