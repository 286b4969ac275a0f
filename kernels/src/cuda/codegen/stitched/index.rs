//! 32-bit index arithmetic for memory-bound kernels.
//!
//! The generic kernels split every linear index into coordinates with 64-bit `/` and `%` per
//! axis (a software routine of ~70 instructions each on the GPU), which made memory-bound steps
//! 5–20× slower than their bytes. When a launch's element count fits in 31 bits, kernels take a
//! *narrow* path instead, prepared on the host per launch:
//!
//! - **Collapsed axes**: adjacent domain axes merge when every operand steps through them as one
//!   (`stride[d] == stride[d+1] · dim[d+1]`, or both 0), and size-1 axes drop out; a contiguous
//!   elementwise op becomes one axis, a per-channel bias add two or three.
//! - **Division by invariant integers** (Granlund & Montgomery): each collapsed extent `d` comes
//!   with a multiplier `m = ⌈2^p / d⌉`, `p = 31 + ⌈log2 d⌉`, so `n / d = umulhi(n, m) >> (p − 32)`
//!   for every `n < 2^31` (the error term `n·(m·d − 2^p) < 2^p` never reaches the next
//!   multiple). One slot holds `d` (low 32 bits) and `m` (high 32 bits); the shift follows from
//!   `d` in the kernel (`31 − clz(d − 1)`, loop-invariant).
//!
//! Param layout of the narrow data (at `at`): `[nax_]` (the number of collapsed axes, ≥ 1), `rank`
//! axis slots (innermost first, unused ones 1), then per operand `ceil(rank / 2)` slots of two
//! 32-bit strides each (innermost first). Kernels read `nax_ == 0` as "use the 64-bit path".

/// Device helpers, once per module: `q_div32(n, slot)` is `n / d` for the slot's `d`.
pub const DEVICE: &str = r#"__device__ __forceinline__ unsigned q_div32(unsigned n, long long slot) {
  unsigned d = (unsigned)slot, m = (unsigned)((unsigned long long)slot >> 32);
  return d == 1u ? n : __umulhi(n, m) >> (31 - __clz(d - 1u));
}
__device__ __forceinline__ unsigned q_lo(long long v) { return (unsigned)v; }
__device__ __forceinline__ unsigned q_hi(long long v) { return (unsigned)((unsigned long long)v >> 32); }
"#;

/// Largest element count (and offset) the narrow path handles.
pub const NARROW_MAX: usize = i32::MAX as usize;

/// The slot for divisor `d` (1 ≤ d < 2^31): `d | m << 32`.
pub fn magic_slot(d: usize) -> i64 {
    assert!((1..=NARROW_MAX).contains(&d), "divisor {d} outside 1..2^31");
    let d = d as u64;
    let m = if d == 1 {
        0
    } else {
        let p = 31 + (64 - (d - 1).leading_zeros() as u64); // 31 + ceil(log2 d)
        (1u64 << p).div_ceil(d)
    };
    debug_assert!(m < 1 << 32);
    (d | (m << 32)) as i64
}

/// What the kernel computes from a slot (the host's model of `q_div32`).
pub fn div32(n: u32, slot: i64) -> u32 {
    let d = slot as u64 & 0xffff_ffff;
    let m = slot as u64 >> 32;
    if d == 1 {
        n
    } else {
        let shift = 31 - (d as u32 - 1).leading_zeros();
        (((n as u64 * m) >> 32) as u32) >> shift
    }
}

/// Collapsed axes (innermost first) and each operand's strides on them.
#[derive(Clone, Debug, PartialEq)]
pub struct Collapsed {
    pub dims: Vec<usize>,
    pub strides: Vec<Vec<i64>>,
}

/// Merges the axes of `dims` (outermost first) that every operand's `strides` walk as one.
pub fn collapse(dims: &[usize], strides: &[Vec<i64>]) -> Collapsed {
    let mut out = Collapsed { dims: Vec::new(), strides: vec![Vec::new(); strides.len()] };
    for d in (0..dims.len()).rev() {
        if dims[d] == 1 {
            continue;
        }
        let merges = match out.dims.last() {
            Some(&inner) => strides.iter().zip(&out.strides).all(|(s, o)| s[d] == o[o.len() - 1] * inner as i64),
            None => false,
        };
        if merges {
            *out.dims.last_mut().unwrap() *= dims[d];
        } else {
            out.dims.push(dims[d]);
            for (o, s) in out.strides.iter_mut().zip(strides) {
                o.push(s[d]);
            }
        }
    }
    if out.dims.is_empty() {
        out.dims.push(1);
        out.strides.iter_mut().for_each(|o| o.push(0));
    }
    out
}

/// Slots the narrow data takes for `rank` axes and `operands` operands.
pub fn slots(rank: usize, operands: usize) -> usize {
    let rank = rank.max(1);
    1 + rank + operands * rank.div_ceil(2)
}

/// The narrow data (and the collapsed axes it describes) for a launch over `dims` with `strides`
/// per operand (all ≥ 0), or `None`
/// when it must take the 64-bit path (more than 2^31 − 1 elements, a negative stride, or an
/// operand offset past 2^31 − 1).
pub fn narrow(dims: &[usize], strides: &[Vec<i64>]) -> Option<(Vec<i64>, Collapsed)> {
    let rank = dims.len().max(1);
    let n: usize = dims.iter().product();
    if n > NARROW_MAX {
        return None;
    }
    for s in strides {
        let mut last = 0i64;
        for (d, &st) in s.iter().enumerate() {
            if st < 0 {
                return None;
            }
            last += (dims[d].max(1) as i64 - 1) * st;
        }
        if last > NARROW_MAX as i64 {
            return None;
        }
    }
    let c = collapse(dims, strides);
    let mut v = vec![c.dims.len() as i64];
    v.extend((0..rank).map(|j| magic_slot(c.dims.get(j).copied().unwrap_or(1))));
    for s in &c.strides {
        for pair in 0..rank.div_ceil(2) {
            let lo = s.get(2 * pair).copied().unwrap_or(0);
            let hi = s.get(2 * pair + 1).copied().unwrap_or(0);
            v.push(lo | (hi << 32));
        }
    }
    Some((v, c))
}

/// Whether `vlen` consecutive elements (starting at a multiple of `vlen`) stay inside one run of
/// the innermost collapsed axis, and every operand either walks that run contiguously from a
/// `vlen`-aligned offset or is constant along it (then one scalar load serves the vector).
pub fn vectorizable(c: &Collapsed, vlen: usize) -> bool {
    c.dims[0].is_multiple_of(vlen) && c.strides.iter().all(|s| s[0] == 0 || (s[0] == 1 && s[1..].iter().all(|&x| x % vlen as i64 == 0)))
}

/// The 64-bit path's marker (`nax_ == 0`) followed by unused slots.
pub fn wide(rank: usize, operands: usize) -> Vec<i64> {
    vec![0; slots(rank, operands)]
}

/// Code that computes `unsigned` offsets `names[k]` of the element with `unsigned` linear index
/// `i` from the narrow data at param `at` (`rank` generated axes; the axis count `nax_` must be in scope).
pub fn offsets(rank: usize, at: usize, names: &[String], indent: &str) -> String {
    let rank = rank.max(1);
    let mut s = String::new();
    for n in names {
        s += &format!("{indent}unsigned {n} = 0;\n");
    }
    s += &format!("{indent}unsigned r_ = i, q_, c_;\n");
    let pairs = rank.div_ceil(2);
    for j in 0..rank {
        let slot = at + 1 + j;
        s += &format!("{indent}if ({j}u < nax_) {{\n");
        if j + 1 < rank {
            s += &format!("{indent}  if ({}u < nax_) {{ q_ = q_div32(r_, p.v[{slot}]); c_ = r_ - q_ * q_lo(p.v[{slot}]); }} else {{ q_ = 0u; c_ = r_; }}\n", j + 1);
        } else {
            s += &format!("{indent}  q_ = 0u; c_ = r_;\n");
        }
        for (k, n) in names.iter().enumerate() {
            let st = at + 1 + rank + k * pairs + j / 2;
            let half = if j % 2 == 0 { "q_lo" } else { "q_hi" };
            s += &format!("{indent}  {n} += c_ * {half}(p.v[{st}]);\n");
        }
        s += &format!("{indent}  r_ = q_;\n{indent}}}\n");
    }
    s += &format!("{indent}(void)r_; (void)q_; (void)c_;\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The multiplier gives the exact quotient for every dividend below 2^31: all divisors up
    /// to 5000 against dividends at and around every multiple's edge, plus random pairs.
    #[test]
    fn magic_division_is_exact_below_2_pow_31() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let top = NARROW_MAX as u64;
        for d in 1..5000u64 {
            let slot = magic_slot(d as usize);
            for n in [0, 1, d - 1, d, d + 1, top, top - 1, top - top % d, (top - top % d).saturating_sub(1)] {
                assert_eq!(div32(n as u32, slot) as u64, n / d, "{n} / {d}");
            }
        }
        for _ in 0..200_000 {
            let d = 1 + next() % top;
            let n = next() % (top + 1);
            assert_eq!(div32(n as u32, magic_slot(d as usize)) as u64, n / d, "{n} / {d}");
        }
    }

    #[test]
    fn axes_collapse_where_every_operand_agrees() {
        // [2, 320, 64, 64] + per-channel bias [320, 1, 1]: H and W merge, C and N stay apart.
        let dims = [2, 320, 64, 64];
        let full = vec![320 * 4096, 4096, 64, 1];
        let bias = vec![0, 1, 0, 0];
        assert_eq!(collapse(&dims, &[full.clone(), bias]), Collapsed { dims: vec![4096, 320, 2], strides: vec![vec![1, 4096, 320 * 4096], vec![0, 1, 0]] });
        // Contiguous operands only: one axis.
        assert_eq!(collapse(&dims, &[full.clone(), full]).dims, vec![2 * 320 * 4096]);
        // Size-1 axes vanish; an all-ones domain keeps one axis of 1.
        assert_eq!(collapse(&[1, 5, 1], &[vec![5, 1, 1]]), Collapsed { dims: vec![5], strides: vec![vec![1]] });
        assert_eq!(collapse(&[1, 1], &[vec![1, 1]]).dims, vec![1]);
        // A transposed read never merges with its neighbour.
        assert_eq!(collapse(&[3, 4], &[vec![1, 3], vec![4, 1]]).dims, vec![4, 3]);
    }

    /// The host model of the generated offset code reproduces the 64-bit decomposition.
    #[test]
    fn narrow_offsets_match_the_plain_decomposition() {
        let dims = [2usize, 3, 5, 4];
        let strides = vec![vec![60i64, 20, 4, 1], vec![0, 1, 0, 0], vec![3, 1, 0, 6]];
        let (v, _) = narrow(&dims, &strides).unwrap();
        let rank = dims.len();
        let m = v[0] as u32;
        for i in 0..dims.iter().product::<usize>() {
            // Plain: coordinates outermost first.
            let mut want = vec![0i64; strides.len()];
            let mut r = i;
            for d in (0..rank).rev() {
                let c = r % dims[d];
                r /= dims[d];
                for (w, s) in want.iter_mut().zip(&strides) {
                    *w += c as i64 * s[d];
                }
            }
            // Narrow, as `offsets` generates it.
            let mut got = vec![0u32; strides.len()];
            let mut r = i as u32;
            for j in 0..rank {
                if (j as u32) < m {
                    let (q, c) = if (j as u32 + 1) < m && j + 1 < rank {
                        let q = div32(r, v[1 + j]);
                        (q, r - q * (v[1 + j] as u32))
                    } else {
                        (0, r)
                    };
                    for (k, g) in got.iter_mut().enumerate() {
                        let slot = v[1 + rank + k * rank.div_ceil(2) + j / 2] as u64;
                        let st = if j % 2 == 0 { slot & 0xffff_ffff } else { slot >> 32 } as u32;
                        *g += c * st;
                    }
                    r = q;
                }
            }
            assert_eq!(got.iter().map(|&g| g as i64).collect::<Vec<_>>(), want, "element {i}");
        }
        assert!(narrow(&[1 << 16, 1 << 15], &[vec![1 << 15, 1]]).is_none());
        assert!(narrow(&[4], &[vec![-1]]).is_none());
    }
}
