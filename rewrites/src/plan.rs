//! `Plan`: what a backend executes. Ordered steps over buffers whose sizes are symbolic dims.
//!
//! The foundation lowers one IR node to one `Step::Op`; the optimizer adds stitched regions and
//! library calls behind the same type.

use std::fmt;
use std::sync::Arc;

use crate::ir::{Op, TensorType};
use crate::memory_plan::MemoryPlan;
use crate::sym::shape_string;
use crate::tensor::Tensor;

pub type BufferId = usize;

#[derive(Clone, Debug)]
pub enum BufferKind {
    /// Bound to the plan input with this index at run time.
    Input(usize),
    /// Constant data owned by the plan.
    Weight(Arc<Tensor>),
    /// Weight data that was not loaded (graph-only models).
    MissingWeight(String),
    /// Produced by a step.
    Intermediate,
}

#[derive(Clone, Debug)]
pub struct Buffer {
    pub ty: TensorType,
    pub kind: BufferKind,
}

#[derive(Clone, Debug)]
pub struct PlanValue {
    pub name: String,
    pub buffer: BufferId,
}

/// One IR op applied to buffers.
#[derive(Clone, Debug)]
pub struct OpStep {
    /// The model node this came from (for messages).
    pub node: String,
    pub op: Op,
    pub inputs: Vec<Option<BufferId>>,
    pub outputs: Vec<BufferId>,
}

#[derive(Clone, Debug)]
pub enum Step {
    Op(OpStep),
}

#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub buffers: Vec<Buffer>,
    pub inputs: Vec<PlanValue>,
    pub outputs: Vec<PlanValue>,
    pub steps: Vec<Step>,
    /// Every symbol the plan's shapes use, sorted; all are bound from input shapes.
    pub symbols: Vec<String>,
    /// Arena slots of the intermediates by liveness (`lower` fills it; backends may ignore it).
    pub memory: MemoryPlan,
}

impl Plan {
    /// For each buffer, the index of the last step that reads it (`None`: never read by a step).
    /// Backends free intermediates after their last use.
    pub fn last_uses(&self) -> Vec<Option<usize>> {
        let mut last = vec![None; self.buffers.len()];
        for (i, step) in self.steps.iter().enumerate() {
            let Step::Op(s) = step;
            for b in s.inputs.iter().flatten() {
                last[*b] = Some(i);
            }
        }
        last
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |b: BufferId| format!("%{b}");
        for v in &self.inputs {
            writeln!(f, "input  {} = {} : {}", name(v.buffer), v.name, self.buffers[v.buffer].ty)?;
        }
        for (i, b) in self.buffers.iter().enumerate() {
            if let BufferKind::Weight(_) | BufferKind::MissingWeight(_) = b.kind {
                writeln!(f, "weight {} : {}", name(i), b.ty)?;
            }
        }
        for step in &self.steps {
            let Step::Op(s) = step;
            let ins: Vec<String> = s.inputs.iter().map(|b| b.map_or("_".to_string(), name)).collect();
            let slot = |b: BufferId| match self.memory.slot_of.get(b).copied().flatten() {
                Some(k) => format!(" @s{k}"),
                None => String::new(),
            };
            let outs: Vec<String> = s
                .outputs
                .iter()
                .map(|&b| format!("{} : {}{}{}", name(b), self.buffers[b].ty.dtype, shape_string(&self.buffers[b].ty.shape), slot(b)))
                .collect();
            match &s.op {
                // The region names its inputs x0, x1, …: bind them after the body.
                Op::Stitched(r) => writeln!(f, "{} = {r} with x = ({})  # {}", outs.join(", "), ins.join(", "), s.node)?,
                other => writeln!(f, "{} = {}({})  # {}", outs.join(", "), other.name(), ins.join(", "), s.node)?,
            }
        }
        for v in &self.outputs {
            writeln!(f, "output {} = {}", v.name, name(v.buffer))?;
        }
        if !self.memory.slots.is_empty() {
            write!(f, "{}", self.memory)?;
        }
        Ok(())
    }
}
