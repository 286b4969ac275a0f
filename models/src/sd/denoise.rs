//! The denoising loop every pipeline kind shares: scale the latents for the scheduler, append any
//! extra conditioning channels (inpainting's mask and masked-image latents), run the UNet on the
//! unconditional and conditional halves at once, apply classifier-free guidance, step.
//! The UNet's tensors move by device binding or as host tensors (`unet_io.rs`); guidance and the
//! scheduler run on the host either way.

use std::time::{Duration, Instant};

use crate::error::{ModelsError, Result};
use crate::sd::models::{float_tensor, timestep_tensor, Model};
use crate::sd::schedulers::{NoiseSource, Scheduler};
use crate::sd::txt2img::StageTimes;
use crate::sd::unet_io::{choose, StepSplit, UnetIo};

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
/// 4-channel UNet. `io` says how the UNet's tensors move.
/// Each step's wall time goes to `times.unet_steps` and `progress(done, total, time)`, its split
/// to `times.unet_splits`, the IO path taken to `times.unet_io`.
#[allow(clippy::too_many_arguments)]
pub fn denoise(
    unet: &mut Model,
    io: UnetIo,
    scheduler: &mut dyn Scheduler,
    timesteps: &[f64],
    mut latents: Vec<f32>,
    shape: [usize; 4],
    guidance: &Guidance,
    extra: &[f32],
    step_noise: &mut dyn NoiseSource,
    times: &mut StageTimes,
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
    let out_shape = [batch as i64, shape[1] as i64, shape[2] as i64, shape[3] as i64];
    let text = |unet: &Model| float_tensor(unet, "encoder_hidden_states", guidance.emb_shape.to_vec(), guidance.embeds.to_vec());
    let path = unet.path.clone();
    let mut binding = None;
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
        let sample = float_tensor(unet, "sample", sample_shape.clone(), sample)?;
        let timestep = timestep_tensor(unet, t, batch)?;
        if i == 0 {
            // The first step's inputs fix the binding's shapes and types; the text embeddings go
            // to the device here, once.
            let (io_path, made) = choose(unet, io, &sample, &timestep, &text(unet)?, &out_shape)?;
            times.unet_io = Some(io_path);
            binding = made;
        }
        let mut split = StepSplit::default();
        let out = match binding.as_mut() {
            Some(b) => {
                let fail = |e: String| ModelsError::pipeline(&path, format!("UNet step {} (device binding): {e}", i + 1));
                if i > 0 {
                    b.write_inputs(&sample, &timestep).map_err(fail)?;
                }
                split.prep = started.elapsed();
                let t_upload = Instant::now();
                // The first step's inputs were uploaded with the binding.
                if i > 0 {
                    b.upload().map_err(fail)?;
                }
                split.upload = t_upload.elapsed();
                let t_run = Instant::now();
                b.run(unet).map_err(fail)?;
                split.run = t_run.elapsed();
                let t_download = Instant::now();
                let out = b.download().map_err(fail)?;
                split.download = t_download.elapsed();
                out
            }
            None => {
                let inputs = vec![("sample".to_string(), sample), ("timestep".to_string(), timestep), ("encoder_hidden_states".to_string(), text(unet)?)];
                split.prep = started.elapsed();
                let t_run = Instant::now();
                let (out_shape, out) = unet.run_f32(inputs, &["out_sample"])?;
                split.run = t_run.elapsed();
                if out.len() != batch * per_image {
                    return Err(ModelsError::pipeline(&unet.path, format!("output shape {out_shape:?}; expected [{batch}, {}, {}, {}]", shape[1], shape[2], shape[3])));
                }
                out
            }
        };
        // (The bound output tensor has exactly the expected shape; ORT rejects a run that would
        // produce another.)
        let t_scheduler = Instant::now();
        let noise_pred: Vec<f32> = if guidance.cfg {
            let (uncond, cond) = out.split_at(n);
            uncond.iter().zip(cond).map(|(&u, &c)| u + guidance.scale * (c - u)).collect()
        } else {
            out
        };
        latents = scheduler.step(&noise_pred, t, &latents, step_noise)?;
        split.scheduler = t_scheduler.elapsed();
        let d = started.elapsed();
        times.unet_steps.push(d);
        times.unet_splits.push(split);
        progress(i + 1, timesteps.len(), d);
    }
    Ok(latents)
}
