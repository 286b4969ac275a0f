//! Device memory for runs without allocation: one arena per executable, carved by liveness.
//!
//! - `pack` places buffers with known lifetimes (first and last step that touch them) and byte
//!   sizes at offsets of one block so that two buffers share addresses only when their
//!   lifetimes are disjoint. It runs once per concrete shape signature, on concrete sizes
//!   (tighter than a symbolic plan can be): largest first, each at the lowest offset that does
//!   not overlap a placed buffer alive at the same time (the greedy-by-size rule of TFLite's
//!   arena planner; within a few percent of the lower bound on conv/attention nets).
//! - `Arena` is the block: grown only when a shape needs more than it has, reused by every
//!   run. Growth waits for the stream (queued work may still use the old block) and moves the
//!   base address, so anything that baked the old address in (a captured CUDA graph) must be
//!   rebuilt: callers compare `base()` with the address they captured.
//!
//! Why reuse is safe: every step of a run is queued on the device's one stream, in plan order,
//! and runs are queued one after another under the device's stream lock. A buffer's addresses
//! are handed to another buffer only if that buffer is first written by a later step, so its
//! writes are queued after the last read of the earlier buffer.

use std::sync::Arc;

use super::device::CudaDevice;
use crate::error::Result;

/// Offsets are multiples of this (cuBLAS/cuDNN and 16-byte vector access want aligned data).
pub const ALIGN: usize = 256;

/// A buffer to place: alive from step `first` to step `last` inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    pub first: usize,
    pub last: usize,
    pub bytes: usize,
}

impl Lifetime {
    fn overlaps(&self, other: &Lifetime) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

/// Where `pack` put each buffer, and the block size it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packing {
    pub offsets: Vec<usize>,
    pub size: usize,
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Places every buffer (see the module docs). Empty buffers get offset 0 and take no space.
pub fn pack(lives: &[Lifetime]) -> Packing {
    let mut order: Vec<usize> = (0..lives.len()).filter(|&i| lives[i].bytes > 0).collect();
    // Largest first; ties by first use so the result does not depend on input order quirks.
    order.sort_by(|&a, &b| lives[b].bytes.cmp(&lives[a].bytes).then(lives[a].first.cmp(&lives[b].first)).then(a.cmp(&b)));
    let mut offsets = vec![0usize; lives.len()];
    let mut placed: Vec<usize> = Vec::with_capacity(order.len());
    let mut size = 0usize;
    let mut busy: Vec<(usize, usize)> = Vec::new();
    for &i in &order {
        let me = &lives[i];
        let need = align(me.bytes);
        busy.clear();
        busy.extend(placed.iter().filter(|&&j| lives[j].overlaps(me)).map(|&j| (offsets[j], offsets[j] + align(lives[j].bytes))));
        busy.sort_unstable();
        // The lowest gap between address ranges in use at the same time that fits.
        let mut at = 0usize;
        for &(start, end) in &busy {
            if start >= at + need {
                break;
            }
            at = at.max(end);
        }
        offsets[i] = at;
        size = size.max(at + need);
        placed.push(i);
    }
    Packing { offsets, size }
}

/// One block of device memory, grown on demand (`cuMemAlloc`, outside any stream's order, so
/// its address stays fixed until it grows).
pub struct Arena {
    device: Arc<CudaDevice>,
    ptr: u64,
    bytes: usize,
}

impl Arena {
    pub fn new(device: &Arc<CudaDevice>) -> Arena {
        Arena { device: device.clone(), ptr: 0, bytes: 0 }
    }

    /// Device address of the block (0 while empty).
    pub fn base(&self) -> u64 {
        self.ptr
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Makes the block at least `bytes` long. Returns whether it moved (then every address
    /// taken from it before is invalid). Growing waits for the device's stream first.
    pub fn reserve(&mut self, bytes: usize) -> Result<bool> {
        if bytes <= self.bytes {
            return Ok(false);
        }
        if self.ptr != 0 {
            self.device.synchronize()?;
            // SAFETY: the block came from malloc_raw; the stream is drained, and the executor
            // only hands out addresses from the current block.
            unsafe { self.device.free_raw(self.ptr) }?;
            self.ptr = 0;
            self.bytes = 0;
        }
        // Round up so that a slightly larger shape later does not move the block again.
        let want = align(bytes).max(bytes + bytes / 8);
        self.ptr = self.device.malloc_raw(want)?;
        self.bytes = want;
        Ok(true)
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        if self.ptr != 0 {
            // Work queued on the stream may still use the block; cuMemFree does not wait for a
            // non-blocking stream, so drain it first.
            let _ = self.device.synchronize();
            // SAFETY: not used after this.
            let _ = unsafe { self.device.free_raw(self.ptr) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (no dependency on the models crate here).
    fn lcg(state: &mut u64) -> u64 {
        *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *state >> 33
    }

    fn check_no_conflicts(lives: &[Lifetime], p: &Packing) {
        for (i, a) in lives.iter().enumerate() {
            if a.bytes == 0 {
                continue;
            }
            assert_eq!(p.offsets[i] % ALIGN, 0);
            assert!(p.offsets[i] + a.bytes <= p.size, "buffer {i} ends past the block");
            for (j, b) in lives.iter().enumerate().skip(i + 1) {
                if b.bytes == 0 || !a.overlaps(b) {
                    continue;
                }
                let (sa, ea) = (p.offsets[i], p.offsets[i] + a.bytes);
                let (sb, eb) = (p.offsets[j], p.offsets[j] + b.bytes);
                assert!(ea <= sb || eb <= sa, "buffers {i} {a:?} @{sa} and {j} {b:?} @{sb} are alive together and overlap");
            }
        }
    }

    #[test]
    fn buffers_alive_together_never_share_memory() {
        let mut s = 7u64;
        for round in 0..20 {
            let n = 5 + (lcg(&mut s) % 200) as usize;
            let lives: Vec<Lifetime> = (0..n)
                .map(|_| {
                    let first = (lcg(&mut s) % 100) as usize;
                    let len = (lcg(&mut s) % 10) as usize;
                    let bytes = if lcg(&mut s).is_multiple_of(10) { 0 } else { 1 + (lcg(&mut s) % 100_000) as usize };
                    Lifetime { first, last: first + len, bytes }
                })
                .collect();
            let p = pack(&lives);
            check_no_conflicts(&lives, &p);
            let total: usize = lives.iter().map(|l| align(l.bytes)).sum();
            assert!(p.size <= total, "round {round}: packed {} > sum {total}", p.size);
        }
    }

    #[test]
    fn a_chain_reuses_memory() {
        // x0 -> x1 -> x2 -> ... each read only by the next step: two buffers suffice.
        let lives: Vec<Lifetime> = (0..50).map(|i| Lifetime { first: i, last: i + 1, bytes: 1000 }).collect();
        let p = pack(&lives);
        check_no_conflicts(&lives, &p);
        assert_eq!(p.size, 2 * align(1000));
    }

    #[test]
    fn small_buffers_fill_gaps_left_by_large_ones() {
        let lives = [
            Lifetime { first: 0, last: 1, bytes: 4096 },
            Lifetime { first: 2, last: 3, bytes: 4096 },
            Lifetime { first: 0, last: 3, bytes: 1024 },
            Lifetime { first: 1, last: 2, bytes: 2048 },
        ];
        let p = pack(&lives);
        check_no_conflicts(&lives, &p);
        // Lower bound: at step 1, 4096 + 1024 + 2048 are alive.
        assert_eq!(p.size, 4096 + 1024 + 2048);
    }
}
