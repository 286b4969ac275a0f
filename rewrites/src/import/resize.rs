//! Resize (opset ≥ 11): scales or sizes resolved into per-axis `SymScale`s and an output shape.

use crate::ir::{CoordMode, NearestMode, Op, ResizeMode, SymScale, TensorType};
use crate::sym::SymDim;

use super::ctx::{unsup, Build, Built, NodeCtx, Unsupported, FLOATS};

/// `floor(dim * scale)` as ORT computes it (in f32), kept symbolic for integer and 1/integer scales.
fn scaled_dim(dim: &SymDim, scale: f32) -> Result<SymDim, Unsupported> {
    if let Some(d) = dim.as_const() {
        return Ok(SymDim::from((d as f32 * scale).floor() as i64));
    }
    if scale >= 1.0 && scale.fract() == 0.0 {
        return Ok(dim.clone() * SymDim::from(scale as i64));
    }
    let inv = 1.0 / scale as f64;
    if inv.fract() == 0.0 {
        return Ok(dim.floor_div(&SymDim::from(inv as i64)));
    }
    unsup(format!("scale {scale} of symbolic size {dim} is not an integer or its reciprocal"))
}

pub(crate) fn resize(ctx: &NodeCtx) -> Build {
    if ctx.opset < 11 {
        return unsup(format!("Resize at opset {} (pre-11 coordinate rules) is not supported", ctx.opset));
    }
    let dtype = ctx.check_dtype(0, FLOATS)?;
    let x = ctx.input(0)?;
    let r = x.rank();
    let mode = match ctx.string_or("mode", "nearest")?.as_str() {
        "nearest" => ResizeMode::Nearest,
        "linear" => ResizeMode::Linear,
        "cubic" => ResizeMode::Cubic,
        other => return unsup(format!("mode '{other}' is not supported")),
    };
    let coord = match ctx.string_or("coordinate_transformation_mode", "half_pixel")?.as_str() {
        "half_pixel" => CoordMode::HalfPixel,
        "pytorch_half_pixel" => CoordMode::PytorchHalfPixel,
        "align_corners" => CoordMode::AlignCorners,
        "asymmetric" => CoordMode::Asymmetric,
        "half_pixel_symmetric" => CoordMode::HalfPixelSymmetric,
        other => return unsup(format!("coordinate_transformation_mode '{other}' is not supported")),
    };
    let nearest = match ctx.string_or("nearest_mode", "round_prefer_floor")?.as_str() {
        "round_prefer_floor" => NearestMode::RoundPreferFloor,
        "round_prefer_ceil" => NearestMode::RoundPreferCeil,
        "floor" => NearestMode::Floor,
        "ceil" => NearestMode::Ceil,
        other => return unsup(format!("nearest_mode '{other}' is not supported")),
    };
    if ctx.int_or("antialias", 0)? != 0 {
        return unsup("antialias is not supported");
    }
    // Opset 18 `axes`: scales/sizes name only these axes; the others keep their size.
    let axes = match ctx.ints_attr("axes")? {
        Some(a) => Some(super::ctx::norm_axes(&a, r)?),
        None => None,
    };
    if ctx.string_or("keep_aspect_ratio_policy", "stretch")? != "stretch" {
        return unsup("keep_aspect_ratio_policy other than 'stretch' is not supported");
    }
    let cubic_coeff_a = ctx.float_or("cubic_coeff_a", -0.75)?;
    let exclude_outside = ctx.int_or("exclude_outside", 0)? != 0;

    let scales_given = ctx.opt_input(2).filter(|v| v.shape().first().and_then(|d| d.as_const()) != Some(0));
    let sizes_given = ctx.opt_input(3).is_some();
    let (scales, shape): (Vec<SymScale>, Vec<SymDim>) = match (scales_given.is_some(), sizes_given) {
        (true, false) => {
            let mut s = ctx.param_f64s(2, "scales")?;
            if let Some(axes) = &axes {
                if s.len() != axes.len() {
                    return unsup(format!("{} scales for {} axes", s.len(), axes.len()));
                }
                let mut full = vec![1.0; r];
                for (&a, &v) in axes.iter().zip(&s) {
                    full[a] = v;
                }
                s = full;
            }
            if s.len() != r {
                return unsup(format!("{} scales for rank {r}", s.len()));
            }
            let mut shape = Vec::with_capacity(r);
            for (d, &f) in x.shape().iter().zip(&s) {
                if f <= 0.0 {
                    return unsup(format!("scale {f} is not positive"));
                }
                shape.push(scaled_dim(d, f as f32)?);
            }
            // With align_corners the reference uses the unrounded `in * scale` as the resized
            // length while ORT uses the output size; they agree only when the product is whole.
            if coord == CoordMode::AlignCorners {
                for (d, &f) in x.shape().iter().zip(&s) {
                    let whole = d.as_const().map_or(f.fract() == 0.0, |d| ((d as f32) * f as f32).fract() == 0.0);
                    if !whole {
                        return unsup(format!("align_corners with scale {f} of size {d} (not a whole output size) is ambiguous"));
                    }
                }
            }
            (s.iter().map(|&f| SymScale::Factor(f as f32)).collect(), shape)
        }
        (false, true) => {
            let mut sizes = ctx.param_ints(3, "sizes")?;
            if let Some(axes) = &axes {
                if sizes.len() != axes.len() {
                    return unsup(format!("{} sizes for {} axes", sizes.len(), axes.len()));
                }
                let mut full = x.shape().to_vec();
                for (&a, v) in axes.iter().zip(&sizes) {
                    full[a] = v.clone();
                }
                sizes = full;
            }
            if sizes.len() != r {
                return unsup(format!("{} sizes for rank {r}", sizes.len()));
            }
            let scales = x.shape().iter().zip(&sizes).map(|(d, s)| SymScale::Ratio { out: s.clone(), input: d.clone() }).collect();
            (scales, sizes)
        }
        _ => return unsup("exactly one of scales and sizes must be given"),
    };
    if mode != ResizeMode::Nearest && r > 2 {
        // ORT's linear/cubic resize on rank-4+ only interpolates the two innermost axes.
        for (a, s) in scales.iter().enumerate().take(r - 2) {
            let unit = match s {
                SymScale::Factor(f) => *f == 1.0,
                SymScale::Ratio { out, input } => out == input,
            };
            if !unit {
                return Err(Unsupported(format!("interpolating outer axis {a} is not supported")));
            }
        }
    }
    let op = Op::Resize { mode, coord, nearest, cubic_coeff_a, exclude_outside, scales };
    Ok(Built::one(op, &[0], TensorType::new(dtype, shape)))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use crate::ir::{Op, SymScale};
    use crate::source::Attr;

    #[test]
    fn resize_by_scales_doubles_symbolic_dims() {
        let mut g = TestGraph::new(13);
        g.input("x", "f16", &["B", "C", "H", "W"]);
        g.const_f32("scales", &[4], &[1.0, 1.0, 2.0, 2.0]);
        g.node("Resize", &["x", "", "scales"], &["y"], &[("mode", Attr::String("nearest".into()))]);
        g.output("y");
        let out = g.import_strict();
        assert_eq!(out.type_of("y"), "f16[B, C, 2*H, 2*W]");
        let Op::Resize { scales, .. } = out.op("y") else { panic!() };
        assert_eq!(scales[2], SymScale::Factor(2.0));
        assert_eq!(out.input_ops("y"), vec!["Input"]);
    }

    #[test]
    fn resize_by_sizes_from_shape_chain() {
        let mut g = TestGraph::new(13);
        g.input("x", "f32", &["B", "C", "H", "W"]);
        g.input("skip", "f32", &["B", "C", "H2", "W2"]);
        g.node("Shape", &["skip"], &["s"], &[]);
        g.node("Resize", &["x", "", "", "s"], &["y"], &[("mode", Attr::String("linear".into()))]);
        g.output("y");
        let out = g.import_strict();
        assert_eq!(out.type_of("y"), "f32[B, C, H2, W2]");
        g.src.nodes[1].attrs.insert("axes".into(), Attr::Ints(vec![3, 2]));
        g.const_i64("hw", &[2], &[5, 6]);
        g.src.nodes[1].inputs[3] = "hw".into();
        let out = g.import_strict();
        assert_eq!(out.type_of("y"), "f32[B, C, 6, 5]", "sizes follow the axes attribute's order");
        g.src.nodes[1].attrs.insert("coordinate_transformation_mode".into(), Attr::String("tf_crop_and_resize".into()));
        assert!(g.import_err().contains("tf_crop_and_resize"));
    }
}
