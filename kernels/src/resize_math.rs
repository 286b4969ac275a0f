//! ONNX Resize's coordinate mapping and interpolation taps, shared by the CPU interpreter and the
//! CUDA backend (which computes the same taps on the host and hands the kernel tables), so both
//! backends follow the spec through one piece of code.

use quilt_rewrites::ir::{CoordMode, NearestMode, ResizeMode};

/// The input coordinate that output position `o` maps to, per `coordinate_transformation_mode`.
pub fn source_coord(coord: CoordMode, o: usize, scale: f64, in_len: usize, out_len: usize) -> f64 {
    let x = o as f64;
    match coord {
        CoordMode::HalfPixel => (x + 0.5) / scale - 0.5,
        CoordMode::PytorchHalfPixel if out_len > 1 => (x + 0.5) / scale - 0.5,
        CoordMode::PytorchHalfPixel => 0.0,
        CoordMode::AlignCorners if out_len == 1 => 0.0,
        CoordMode::AlignCorners => x * (in_len as f64 - 1.0) / (out_len as f64 - 1.0),
        CoordMode::Asymmetric => x / scale,
        CoordMode::HalfPixelSymmetric => {
            let adjustment = out_len as f64 / (scale * in_len as f64);
            let offset = in_len as f64 / 2.0 * (1.0 - adjustment);
            offset + (x + 0.5) / scale - 0.5
        }
    }
}

/// The input index nearest-mode resizing reads for source coordinate `x` (clamped into range).
pub fn nearest_index(x: f64, mode: NearestMode, in_len: usize) -> usize {
    let base = x.floor();
    let ratio = x - base;
    let up = ratio != 0.0
        && match mode {
            NearestMode::RoundPreferFloor => ratio > 0.5,
            NearestMode::RoundPreferCeil => ratio >= 0.5,
            NearestMode::Floor => false,
            NearestMode::Ceil => true,
        };
    (base + if up { 1.0 } else { 0.0 }).clamp(0.0, in_len as f64 - 1.0) as usize
}

/// Linear (2) or cubic (4) taps of source coordinate `x`: clamped input index and weight.
/// `cubic_coeff_a` and `exclude_outside` only matter for cubic.
pub fn taps(mode: ResizeMode, cubic_coeff_a: f32, exclude_outside: bool, x: f64, in_len: usize) -> Vec<(usize, f64)> {
    let base = x.floor();
    let r = x - base;
    let base = base as i64;
    let mut raw: Vec<(i64, f64)> = match mode {
        ResizeMode::Linear => vec![(base, 1.0 - r), (base + 1, r)],
        _ => {
            let a = cubic_coeff_a as f64;
            // Keys' cubic convolution weights for distances 1+r, r, 1-r, 2-r.
            let near = |t: f64| ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0;
            let far = |t: f64| ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a;
            vec![(base - 1, far(1.0 + r)), (base, near(r)), (base + 1, near(1.0 - r)), (base + 2, far(2.0 - r))]
        }
    };
    let inside = |i: i64| i >= 0 && i < in_len as i64;
    if exclude_outside {
        let total: f64 = raw.iter().filter(|(i, _)| inside(*i)).map(|(_, w)| w).sum();
        for (i, w) in raw.iter_mut() {
            *w = if inside(*i) && total != 0.0 { *w / total } else { 0.0 };
        }
    }
    raw.into_iter().map(|(i, w)| (i.clamp(0, in_len as i64 - 1) as usize, w)).collect()
}
