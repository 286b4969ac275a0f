//! Input images of img2img and inpaint, prepared as diffusers' `VaeImageProcessor` prepares them:
//! RGB pixels `/ 255 * 2 - 1` in NCHW; masks converted to grayscale with PIL's `L` weights, `/ 255`
//! and binarized at 0.5 (1 = repaint, 0 = keep).

use std::path::Path;

use crate::error::{ModelsError, Result};
use crate::random::Rng;

/// One RGB image, NCHW with batch 1, values in [-1, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct SdImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<f32>,
}

/// One inpainting mask, HxW, every value 0 (keep) or 1 (repaint).
#[derive(Debug, Clone, PartialEq)]
pub struct SdMask {
    pub width: usize,
    pub height: usize,
    pub values: Vec<f32>,
}

fn decode(path: &Path) -> Result<image::DynamicImage> {
    image::open(path).map_err(|e| ModelsError::pipeline(path, format!("cannot read the image: {e}")))
}

impl SdImage {
    /// Interleaved RGB bytes, row-major.
    pub fn from_rgb8(width: usize, height: usize, rgb: &[u8]) -> Result<SdImage> {
        if rgb.len() != width * height * 3 {
            return Err(ModelsError::Usage(format!("image buffer has {} bytes; {width}x{height} RGB needs {}", rgb.len(), width * height * 3)));
        }
        let plane = width * height;
        let mut pixels = vec![0.0f32; 3 * plane];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                pixels[c * plane + i] = f32::from(px[c]) / 255.0 * 2.0 - 1.0;
            }
        }
        Ok(SdImage { width, height, pixels })
    }

    /// A PNG (or any format the `image` crate reads with the enabled features); alpha is dropped.
    pub fn load(path: &Path) -> Result<SdImage> {
        let rgb = decode(path)?.to_rgb8();
        SdImage::from_rgb8(rgb.width() as usize, rgb.height() as usize, rgb.as_raw())
    }

    /// A smooth seeded test picture (diagonal colour gradients with a seed-dependent phase and a
    /// little grain) for the bundled pipelines when no `--image` is given.
    pub fn gradient(width: usize, height: usize, seed: u64) -> SdImage {
        let mut rng = Rng::for_stream(seed, "input-image");
        let phase: Vec<f64> = (0..3).map(|_| rng.uniform() * std::f64::consts::TAU).collect();
        let mut rgb = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                let u = x as f64 / width.max(1) as f64;
                let v = y as f64 / height.max(1) as f64;
                for (c, p) in phase.iter().enumerate() {
                    let wave = (std::f64::consts::PI * (u * (c + 1) as f64 + v * (3 - c) as f64) + p).sin();
                    let grain = (rng.uniform() - 0.5) * 0.1;
                    rgb.push(((0.5 + 0.45 * wave + grain).clamp(0.0, 1.0) * 255.0).round() as u8);
                }
            }
        }
        SdImage::from_rgb8(width, height, &rgb).expect("sizes agree")
    }
}

impl SdMask {
    /// Grayscale bytes, row-major; ≥ 0.5 after `/ 255` means repaint.
    pub fn from_luma8(width: usize, height: usize, luma: &[u8]) -> Result<SdMask> {
        if luma.len() != width * height {
            return Err(ModelsError::Usage(format!("mask buffer has {} bytes; {width}x{height} needs {}", luma.len(), width * height)));
        }
        let values = luma.iter().map(|&l| if f32::from(l) / 255.0 < 0.5 { 0.0 } else { 1.0 }).collect();
        Ok(SdMask { width, height, values })
    }

    /// A mask image; colour is converted with PIL's `L` weights (ITU-R 601-2), as diffusers does.
    pub fn load(path: &Path) -> Result<SdMask> {
        let rgb = decode(path)?.to_rgb8();
        let luma: Vec<u8> = rgb.pixels().map(|p| ((u32::from(p[0]) * 19595 + u32::from(p[1]) * 38470 + u32::from(p[2]) * 7471 + 0x8000) >> 16) as u8).collect();
        SdMask::from_luma8(rgb.width() as usize, rgb.height() as usize, &luma)
    }

    /// Repaint a centred box covering half of each side (the bundled inpaint default).
    pub fn centered_box(width: usize, height: usize) -> SdMask {
        let inside = |i: usize, n: usize| i >= n / 4 && i < n - n / 4;
        let values = (0..height).flat_map(|y| (0..width).map(move |x| if inside(x, width) && inside(y, height) { 1.0 } else { 0.0 })).collect();
        SdMask { width, height, values }
    }

    /// The mask at latent resolution: `torch.nn.functional.interpolate(mode="nearest")` by an
    /// integer `factor`, i.e. output pixel (y, x) takes input pixel (y·factor, x·factor).
    pub fn downsample_nearest(&self, factor: usize) -> Vec<f32> {
        let (h, w) = (self.height / factor, self.width / factor);
        (0..h).flat_map(|y| (0..w).map(move |x| self.values[y * factor * self.width + x * factor])).collect()
    }

    /// `image * (mask < 0.5)`: the pixels to keep, repaint area zeroed (diffusers' masked image).
    pub fn mask_image(&self, image: &SdImage) -> Result<SdImage> {
        if (self.width, self.height) != (image.width, image.height) {
            return Err(ModelsError::Usage(format!(
                "the mask is {}x{} but the image is {}x{}; they must be the same size",
                self.width, self.height, image.width, image.height
            )));
        }
        let plane = self.values.len();
        let pixels = image.pixels.iter().enumerate().map(|(i, &p)| if self.values[i % plane] < 0.5 { p } else { 0.0 }).collect();
        Ok(SdImage { pixels, ..image.clone() })
    }
}
