//! `MemoryPlan`: where each intermediate buffer of a `Plan` lives in one arena, by liveness.
//!
//! Steps run in plan order. Each intermediate buffer is live from the step that writes it to
//! the last step that reads it or any view of it (to the end when it or a view of it is a plan
//! output). Buffers are packed into *slots*; a slot is reused once everything in it is dead.
//! Sizes are symbolic (`SymDim` bytes), so a slot is reused for a buffer whose size provably
//! fits (same expression, or a difference with a non-negative lower bound); otherwise the slot
//! grows with `max_of` when the two sizes are comparable, and a new slot opens when they are
//! not. Slot offsets are the running sum of the slot sizes and `peak_bytes` is their total: an upper bound on the arena for every binding of
//! the symbols (a true peak would need the sizes compared at run time).
//!
//! Two kinds of sharing:
//! - views (`BufferKind::View`, what Reshape/Identity lower to): a view is its owner's memory,
//!   so it has no slot of its own (`slot_of` gives it the owner's) and its reads keep the owner
//!   alive;
//! - in place: an elementwise step (or stitched region) writes its output over an input that
//!   dies at that step and has the output's exact byte size, read at the same index as it is
//!   written (every thread reads its element before writing it; a normalizing region reads its
//!   whole row before writing any of it). The input may be a view: its owner's memory is what
//!   dies.
//!
//! Backends may ignore the offsets (the CPU interpreter allocates per buffer); the CUDA arena
//! will use them.

use std::fmt;

use crate::ir::Op;
use crate::plan::{BufferId, BufferKind, Plan, Step};
use crate::sym::SymDim;

#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    /// Bytes: the largest buffer the slot holds.
    pub size: SymDim,
    /// Bytes from the start of the arena.
    pub offset: SymDim,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    pub slots: Vec<Slot>,
    /// Per buffer: its slot (intermediates, and views of them: the owner's slot; `None` for
    /// inputs, weights and views of them).
    pub slot_of: Vec<Option<usize>>,
    /// `(step, input buffer, output buffer)` for every output written over an input.
    pub in_place: Vec<(usize, BufferId, BufferId)>,
    /// The arena size: the sum of the slot sizes.
    pub peak_bytes: SymDim,
    /// For comparison: every intermediate buffer's size summed (no reuse).
    pub total_bytes: SymDim,
}

impl Default for MemoryPlan {
    fn default() -> MemoryPlan {
        let zero = SymDim::konst(0);
        MemoryPlan { slots: vec![], slot_of: vec![], in_place: vec![], peak_bytes: zero.clone(), total_bytes: zero }
    }
}

/// Ops whose output may overwrite a same-sized input that dies at the step.
fn elementwise(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Cast { .. } | Op::Clip { .. } | Op::LeakyRelu { .. } | Op::Gelu { .. } | Op::Silu | Op::QuickGelu { .. } | Op::Stitched(_)
    )
}

/// Whether `a ≥ b` for every binding of the symbols (symbols ≥ 1).
fn provably_ge(a: &SymDim, b: &SymDim) -> bool {
    a == b || (a.clone() - b.clone()).lower_bound() >= 0
}

pub fn plan_memory(plan: &Plan) -> MemoryPlan {
    let n = plan.buffers.len();
    let owner = plan.owners();
    // Reads through views count for the owner's memory.
    let last_use = plan.memory_last_uses();
    // Owners whose memory a plan output needs at the end (the output or a view of it).
    let mut to_end = vec![false; n];
    for v in &plan.outputs {
        if let Some(&o) = owner.get(v.buffer) {
            to_end[o] = true;
        }
    }
    let mut producer = vec![None; n];
    for (i, step) in plan.steps.iter().enumerate() {
        let Step::Op(s) = step;
        for &b in &s.outputs {
            producer[b] = Some(i);
        }
    }
    // The last step at which an owner's memory must still hold its value.
    let end = |b: BufferId| -> usize {
        if to_end[b] {
            usize::MAX
        } else {
            last_use[b].max(producer[b]).unwrap_or(0)
        }
    };
    let intermediate = |b: BufferId| matches!(plan.buffers[b].kind, BufferKind::Intermediate);
    let bytes = |b: BufferId| plan.buffers[b].ty.bytes();
    let mut mp = MemoryPlan { slot_of: vec![None; n], ..MemoryPlan::default() };
    // Per slot: the last step that needs anything in it.
    let mut release: Vec<usize> = Vec::new();
    for (i, step) in plan.steps.iter().enumerate() {
        let Step::Op(s) = step;
        for &o in &s.outputs {
            if !intermediate(o) {
                continue;
            }
            let size = bytes(o);
            // In place over an input (or a view of one) whose memory dies here, same bytes,
            // read at the written index.
            if elementwise(&s.op) {
                let candidate = s.inputs.iter().flatten().copied().find(|&b| {
                    let m = owner[b];
                    intermediate(m)
                        && !to_end[m]
                        && mp.slot_of[m].is_some_and(|slot| release[slot] == i)
                        && bytes(b) == size
                        && plan.buffers[b].ty.numel() == plan.buffers[o].ty.numel()
                        && !mp.in_place.iter().any(|&(st, _, out)| st == i && mp.slot_of[out] == mp.slot_of[m])
                });
                if let Some(b) = candidate {
                    let slot = mp.slot_of[owner[b]].unwrap();
                    mp.slot_of[o] = Some(slot);
                    release[slot] = end(o);
                    mp.in_place.push((i, b, o));
                    continue;
                }
            }
            // A free slot: the exact size, else the smallest that provably fits, else one that
            // provably is smaller (grown), else a new one.
            let free: Vec<usize> = (0..mp.slots.len()).filter(|&k| release[k] < i).collect();
            let exact = free.iter().copied().find(|&k| mp.slots[k].size == size);
            let fits = || free.iter().copied().filter(|&k| provably_ge(&mp.slots[k].size, &size)).min_by(|&a, &b| {
                if provably_ge(&mp.slots[b].size, &mp.slots[a].size) { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater }
            });
            let grows = || free.iter().copied().find(|&k| provably_ge(&size, &mp.slots[k].size));
            let slot = match exact.or_else(fits).or_else(grows) {
                Some(k) => {
                    // Comparable sizes: the larger one (max_of only simplifies constant gaps).
                    if !provably_ge(&mp.slots[k].size, &size) {
                        mp.slots[k].size = size.clone();
                    }
                    k
                }
                None => {
                    mp.slots.push(Slot { size: size.clone(), offset: SymDim::konst(0) });
                    release.push(0);
                    mp.slots.len() - 1
                }
            };
            mp.slot_of[o] = Some(slot);
            release[slot] = end(o);
        }
    }
    // A view lives in its owner's slot (none for views of inputs and weights).
    for (b, &o) in owner.iter().enumerate() {
        if o != b {
            mp.slot_of[b] = mp.slot_of[o];
        }
    }
    let mut offset = SymDim::konst(0);
    for s in &mut mp.slots {
        s.offset = offset.clone();
        offset = offset + s.size.clone();
    }
    mp.peak_bytes = offset;
    mp.total_bytes = plan.buffers.iter().filter(|b| matches!(b.kind, BufferKind::Intermediate)).map(|b| b.ty.bytes()).sum();
    mp
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "memory: {} slots, {} in place, peak_bytes = {}", self.slots.len(), self.in_place.len(), self.peak_bytes)?;
        for (k, s) in self.slots.iter().enumerate() {
            writeln!(f, "  slot s{k} @ {} : {} bytes", s.offset, s.size)?;
        }
        Ok(())
    }
}
