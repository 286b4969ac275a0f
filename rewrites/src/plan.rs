//! `Plan`: what a backend executes. Ordered steps over buffers whose sizes are symbolic dims.
//!
//! The foundation lowers one IR node to one `Step::Op`; the optimizer adds stitched regions and
//! library calls behind the same type. Ops that only rename memory (Reshape, Squeeze, Unsqueeze,
//! Flatten and Identity, all `Op::Reshape` or `UnaryOp::Identity` in the IR) are not steps: they
//! are view buffers ([`BufferKind::View`]) that share their owner's memory, since a step that
//! does nothing is not a step (a backend would only alias it anyway).

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
    /// The memory of buffer `of` under this buffer's own type: no step writes it and backends
    /// alias it (the CPU interpreter reads `of`'s data with this shape). Same dtype as `of`
    /// (checked once per plan) and the same element count (checked when the symbols are bound).
    /// Plans from `lower` point `of` at the owner, never at another view; backends follow
    /// chains anyway ([`Plan::owner`]). `node` is the model node it came from, for messages.
    View { of: BufferId, node: String },
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

/// One line of a plan listing: a step, or a view (placed where `lower` made it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listed {
    Step(usize),
    View(BufferId),
}

impl Plan {
    /// For each buffer, the index of the last step that reads it (`None`: never read by a step).
    /// A read through a view counts for the view only; see [`Plan::memory_last_uses`].
    pub fn last_uses(&self) -> Vec<Option<usize>> {
        let mut last = vec![None; self.buffers.len()];
        for (i, step) in self.steps.iter().enumerate() {
            let Step::Op(s) = step;
            for b in s.inputs.iter().flatten() {
                if let Some(l) = last.get_mut(*b) {
                    *l = Some(i);
                }
            }
        }
        last
    }

    /// The buffer whose memory `b` is: `b` itself unless it is a view, else the end of its
    /// chain of views. Never loops: a malformed cycle (which the backends' plan checks reject)
    /// stops after as many hops as there are buffers; an `of` out of range stops there.
    pub fn owner(&self, b: BufferId) -> BufferId {
        let mut at = b;
        for _ in 0..self.buffers.len() {
            match self.buffers.get(at).map(|x| &x.kind) {
                Some(BufferKind::View { of, .. }) if *of < self.buffers.len() => at = *of,
                _ => break,
            }
        }
        at
    }

    /// [`Plan::owner`] of every buffer.
    pub fn owners(&self) -> Vec<BufferId> {
        (0..self.buffers.len()).map(|b| self.owner(b)).collect()
    }

    /// For each buffer, the last step that reads its memory: the owner's entry covers reads of
    /// the owner and of every view of it, and each view gets its owner's entry. Backends free
    /// (or reuse) an owner's memory after this step.
    pub fn memory_last_uses(&self) -> Vec<Option<usize>> {
        let owners = self.owners();
        let mut last: Vec<Option<usize>> = vec![None; self.buffers.len()];
        for (b, l) in self.last_uses().into_iter().enumerate() {
            let o = owners[b];
            last[o] = last[o].max(l);
        }
        (0..self.buffers.len()).map(|b| last[owners[b]]).collect()
    }

    /// Number of view buffers.
    pub fn view_count(&self) -> usize {
        self.buffers.iter().filter(|b| matches!(b.kind, BufferKind::View { .. })).count()
    }

    /// Steps and views in the order to print them: each view before the first step whose
    /// outputs were made after it (buffer ids grow in lowering order, and `lower` makes a view
    /// when a step or an output first reads it, so it is listed right before that reader);
    /// views made after the last step (outputs) at the end.
    pub fn listing(&self) -> Vec<Listed> {
        let mut views = self.buffers.iter().enumerate().filter(|(_, b)| matches!(b.kind, BufferKind::View { .. })).map(|(i, _)| i).peekable();
        let mut out = Vec::with_capacity(self.steps.len() + self.buffers.len());
        for (i, step) in self.steps.iter().enumerate() {
            let Step::Op(s) = step;
            let first_out = s.outputs.iter().copied().min().unwrap_or(usize::MAX);
            while let Some(v) = views.next_if(|&v| v < first_out) {
                out.push(Listed::View(v));
            }
            out.push(Listed::Step(i));
        }
        out.extend(views.map(Listed::View));
        out
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
        for line in self.listing() {
            let s = match line {
                Listed::View(v) => {
                    let BufferKind::View { of, node } = &self.buffers[v].kind else { continue };
                    writeln!(f, "view {} = {} : {}  # {node}", name(v), name(*of), self.buffers[v].ty)?;
                    continue;
                }
                Listed::Step(i) => {
                    let Step::Op(s) = &self.steps[i];
                    s
                }
            };
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
                other => writeln!(f, "{} = {}({})  # {}", outs.join(", "), other.label(), ins.join(", "), s.node)?,
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
