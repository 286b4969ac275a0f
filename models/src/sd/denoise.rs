//! The denoising loop every pipeline kind shares: scale the latents for the scheduler, append any
//! extra conditioning channels (inpainting's mask and masked-image latents), run the UNet on the
//! unconditional and conditional halves at once, apply classifier-free guidance, step.

use std::time::{Duration, Instant};

use crate::error::{ModelsError, Result};
use crate::sd::models::{float_tensor, timestep_tensor, Model};
use crate::sd::schedulers::{NoiseSource, Scheduler};

/// Text conditioning for the UNet: `[negative, prompt]` embeddings when guidance runs, else `[prompt]`.
pub struct Guidance<'a> {
    pub emb_shape: &'a [i64],
    pub embeds: &'a [f32],
    /// Classifier-free guidance on (the batch holds both halves).
    pub cfg: bool,
    pub scale: f32,
}

/// Runs `timesteps` from `latents` ([B, C, h, w] = `shape`) and returns the final latents.
/// `extra` holds whole channels of size h·w appended after each batch entry's scaled latents in
/// the UNet's `sample` (the same for every entry and both guidance halves); empty for a plain
/// 4-channel UNet.
/// Each step's wall time goes to `step_times` and `progress(done, total, time)`.
#[allow(clippy::too_many_arguments)]
pub fn denoise(
    unet: &mut Model,
    scheduler: &mut dyn Scheduler,
    timesteps: &[f64],
    mut latents: Vec<f32>,
    shape: [usize; 4],
    guidance: &Guidance,
    extra: &[f32],
    step_noise: &mut dyn NoiseSource,
    step_times: &mut Vec<Duration>,
    progress: &mut dyn FnMut(usize, usize, Duration),
) -> Result<Vec<f32>> {
    let n: usize = shape.iter().product();
    let images = shape[0];
    let per_image = n / images.max(1);
    let plane = shape[2] * shape[3];
    if !extra.len().is_multiple_of(plane) {
        return Err(ModelsError::Usage(format!("extra UNet channels: {} values are not whole {}x{} planes", extra.len(), shape[2], shape[3])));
    }
    let in_channels = shape[1] + extra.len() / plane;
    // Classifier-free guidance runs the unconditional and conditional halves in one batch.
    let halves = if guidance.cfg { 2 } else { 1 };
    let batch = halves * images;
    let sample_shape = vec![batch as i64, in_channels as i64, shape[2] as i64, shape[3] as i64];
    for (i, &t) in timesteps.iter().enumerate() {
        let started = Instant::now();
        let scaled = scheduler.scale_model_input(&latents, t)?;
        let mut sample = Vec::with_capacity(batch * in_channels * plane);
        for _ in 0..halves {
            for image in scaled.chunks_exact(per_image) {
                sample.extend_from_slice(image);
                sample.extend_from_slice(extra);
            }
        }
        let inputs = vec![
            ("sample".to_string(), float_tensor(unet, "sample", sample_shape.clone(), sample)?),
            ("timestep".to_string(), timestep_tensor(unet, t, batch)?),
            ("encoder_hidden_states".to_string(), float_tensor(unet, "encoder_hidden_states", guidance.emb_shape.to_vec(), guidance.embeds.to_vec())?),
        ];
        let (out_shape, out) = unet.run_f32(inputs, &["out_sample"])?;
        if out.len() != batch * per_image {
            return Err(ModelsError::pipeline(&unet.path, format!("output shape {out_shape:?}; expected [{batch}, {}, {}, {}]", shape[1], shape[2], shape[3])));
        }
        let noise_pred: Vec<f32> = if guidance.cfg {
            let (uncond, cond) = out.split_at(n);
            uncond.iter().zip(cond).map(|(&u, &c)| u + guidance.scale * (c - u)).collect()
        } else {
            out
        };
        latents = scheduler.step(&noise_pred, t, &latents, step_noise)?;
        let d = started.elapsed();
        step_times.push(d);
        progress(i + 1, timesteps.len(), d);
    }
    Ok(latents)
}
