//! One generation from start to image for every pipeline kind, after diffusers' pipelines:
//! - txt2img (`StableDiffusionPipeline`): latents start as seeded noise × the scheduler's initial sigma;
//! - img2img (`StableDiffusionImg2ImgPipeline`): the input image is VAE-encoded (the distribution's
//!   mean), scaled by the VAE scaling factor and noised with `add_noise` to the first of the last
//!   `int(steps · strength)` timesteps, where the run starts (`set_begin_index`);
//! - inpaint (`StableDiffusionInpaintPipeline`, 9-channel UNet): the UNet also sees the binary mask at
//!   latent size (nearest) and the latents of the image with the repaint area zeroed; strength 1
//!   starts from pure noise, lower strengths from the noised image latents like img2img.
//!
//! All share the text encoding, the denoising loop (`denoise.rs`) and the VAE decode.

use std::time::{Duration, Instant};

use crate::error::{ModelsError, Result};
use crate::random::Rng;
use crate::sd::denoise::{denoise, Guidance};
use crate::sd::images::{SdImage, SdMask};
use crate::sd::models::float_tensor;
use crate::sd::schedulers::{self, NoiseSource};
use crate::sd::txt2img::{Generated, SdPipeline, StageTimes, Txt2ImgRequest};

/// SD's VAE latent channels.
pub const LATENT_CHANNELS: usize = 4;
/// The inpainting UNet's input: latents, mask, masked-image latents.
pub const INPAINT_CHANNELS: usize = LATENT_CHANNELS + 1 + LATENT_CHANNELS;

/// Where the latents start.
#[derive(Debug, Clone, Copy)]
pub enum Init<'a> {
    /// txt2img: pure noise.
    Noise,
    /// img2img: the image, noised to `strength` (0 < strength ≤ 1).
    Image { image: &'a SdImage, strength: f32 },
    /// inpaint: repaint where `mask` is 1; `strength` as img2img (diffusers' default is 1).
    Inpaint { image: &'a SdImage, mask: &'a SdMask, strength: f32 },
}

impl Init<'_> {
    fn name(&self) -> &'static str {
        match self {
            Init::Noise => "txt2img",
            Init::Image { .. } => "img2img",
            Init::Inpaint { .. } => "inpaint",
        }
    }
}

/// diffusers' `get_timesteps`: the index into the scheduler's timesteps where a run of `steps`
/// steps at `strength` begins (`steps - min(int(steps · strength), steps)`, times the scheduler order).
/// Errors when the strength leaves no step to run.
pub fn strength_start(steps: usize, strength: f32, order: usize) -> Result<usize> {
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(ModelsError::Usage(format!("--strength {strength}: expected a value in (0, 1]")));
    }
    let init = ((steps as f64 * f64::from(strength)).floor() as usize).min(steps);
    if init == 0 {
        return Err(ModelsError::Usage(format!(
            "--strength {strength} with {steps} steps leaves no denoising step (int(steps × strength) = 0); raise --strength or --steps"
        )));
    }
    Ok((steps - init) * order)
}

impl SdPipeline {
    /// img2img: `req.width`/`req.height` must be the image's size.
    pub fn img2img(&mut self, req: &Txt2ImgRequest, image: &SdImage, strength: f32, progress: &mut dyn FnMut(usize, usize, Duration)) -> Result<Generated> {
        self.generate(req, Init::Image { image, strength }, progress)
    }

    /// inpaint: `req.width`/`req.height` must be the image's (and the mask's) size.
    pub fn inpaint(&mut self, req: &Txt2ImgRequest, image: &SdImage, mask: &SdMask, strength: f32, progress: &mut dyn FnMut(usize, usize, Duration)) -> Result<Generated> {
        self.generate(req, Init::Inpaint { image, mask, strength }, progress)
    }

    pub fn generate(&mut self, req: &Txt2ImgRequest, init: Init, progress: &mut dyn FnMut(usize, usize, Duration)) -> Result<Generated> {
        let start = Instant::now();
        self.dir.check_size(req.width, req.height)?;
        if req.steps == 0 {
            return Err(ModelsError::Usage("--steps must be at least 1".into()));
        }
        if req.batch() == 0 {
            return Err(ModelsError::Usage("no image to generate: give at least one prompt and --images-per-prompt ≥ 1".into()));
        }
        self.check_inputs(req, &init)?;
        let config = self.scheduler_config(req.scheduler)?;
        let kind = config.kind;
        let mut scheduler = schedulers::build(config);
        scheduler.set_timesteps(req.steps)?;
        let mut timesteps = scheduler.timesteps().to_vec();
        let mut times = StageTimes::default();

        // Text: [negatives, prompts] as diffusers concatenates them (unconditional first), each
        // prompt repeated `images_per_prompt` times next to itself.
        let batch = req.batch();
        let cfg = req.guidance_scale > 1.0;
        let t0 = Instant::now();
        let mut texts: Vec<&str> = Vec::with_capacity(2 * batch);
        if cfg {
            texts.extend(std::iter::repeat_n(req.negative.as_str(), batch));
        }
        for prompt in &req.prompts {
            texts.extend(std::iter::repeat_n(prompt.as_str(), req.images_per_prompt));
        }
        let (emb_shape, embeds) = self.encode_prompts(&texts)?;
        times.text_encoder = t0.elapsed();

        let f = self.dir.vae_scale_factor;
        let shape = [batch, LATENT_CHANNELS, req.height / f, req.width / f];
        let n: usize = shape.iter().product();
        let noise = match &req.noise {
            Some(given) if given.len() == n => given.clone(),
            Some(given) => return Err(ModelsError::Usage(format!("the given initial noise has {} values; {shape:?} needs {n}", given.len()))),
            None => {
                let mut noise = vec![0.0f32; n];
                Rng::for_stream(req.seed, "latents").fill_normal(&mut noise);
                noise
            }
        };
        let pure_noise = |sigma: f32| noise.iter().map(|&x| x * sigma).collect::<Vec<f32>>();
        // img2img/inpaint: one image for the whole batch, as diffusers repeats it.
        let per_batch = |one: Vec<f32>| one.repeat(batch);

        let strength = match init {
            Init::Noise => 1.0,
            Init::Image { strength, .. } | Init::Inpaint { strength, .. } => strength,
        };
        if !matches!(init, Init::Noise) {
            let begin = strength_start(req.steps, strength, scheduler.order())?;
            timesteps.drain(..begin);
            scheduler.set_begin_index(begin);
        }
        let first_t = timesteps[0];

        let tv = Instant::now();
        let (latents, extra) = match init {
            Init::Noise => (pure_noise(scheduler.init_noise_sigma()), Vec::new()),
            Init::Image { image, .. } => {
                let image_latents = per_batch(self.encode_image(image)?);
                (scheduler.add_noise(&image_latents, &noise, first_t)?, Vec::new())
            }
            Init::Inpaint { image, mask, .. } => {
                let mut extra = mask.downsample_nearest(f);
                extra.extend(self.encode_image(&mask.mask_image(image)?)?);
                // diffusers: strength 1 starts from noise alone; otherwise from the noised image.
                let latents = if strength >= 1.0 { pure_noise(scheduler.init_noise_sigma()) } else { scheduler.add_noise(&per_batch(self.encode_image(image)?), &noise, first_t)? };
                (latents, extra)
            }
        };
        times.vae_encoder = tv.elapsed();

        let guidance = Guidance { emb_shape: &emb_shape, embeds: &embeds, cfg, scale: req.guidance_scale };
        let mut step_noise = Rng::for_stream(req.seed, "scheduler-noise");
        let latents = denoise(&mut self.unet, self.unet_io, scheduler.as_mut(), &timesteps, latents, shape, &guidance, &extra, &mut step_noise, &mut times, progress)?;

        let tv = Instant::now();
        let scaled: Vec<f32> = latents.iter().map(|&x| x / self.dir.vae_scaling).collect();
        let input = float_tensor(&self.vae_decoder, "latent_sample", shape.iter().map(|&d| d as i64).collect(), scaled)?;
        let (img_shape, image) = self.vae_decoder.run_f32(vec![("latent_sample".to_string(), input)], &["sample"])?;
        times.vae_decoder = tv.elapsed();
        if img_shape.len() != 4 || img_shape[0] as usize != batch || img_shape[1] != 3 {
            return Err(ModelsError::pipeline(&self.vae_decoder.path, format!("output shape {img_shape:?}; expected [{batch}, 3, H, W]")));
        }
        let image_shape = [img_shape[0] as usize, 3, img_shape[2] as usize, img_shape[3] as usize];
        times.total = start.elapsed();
        Ok(Generated { latents, latent_shape: shape, image, image_shape, scheduler: kind, times })
    }

    /// The UNet fits the pipeline kind; the image and mask fit the requested size.
    fn check_inputs(&self, req: &Txt2ImgRequest, init: &Init) -> Result<()> {
        let channels = self.unet_in_channels()?;
        let want = if matches!(init, Init::Inpaint { .. }) { INPAINT_CHANNELS } else { LATENT_CHANNELS };
        if channels != want {
            let hint = if channels == INPAINT_CHANNELS { " (an inpainting UNet: use inpaint)" } else { "" };
            return Err(ModelsError::pipeline(&self.unet.path, format!("input `sample` has {channels} channels{hint}; {} needs a {want}-channel UNet", init.name())));
        }
        let image = match init {
            Init::Noise => return Ok(()),
            Init::Image { image, .. } | Init::Inpaint { image, .. } => image,
        };
        if self.vae_encoder.is_none() {
            return Err(ModelsError::pipeline(self.dir.root.join("vae_encoder/model.onnx"), format!("missing: {} needs the vae_encoder model", init.name())));
        }
        if (image.width, image.height) != (req.width, req.height) {
            return Err(ModelsError::Usage(format!("the input image is {}x{} but the request is {}x{}", image.width, image.height, req.width, req.height)));
        }
        if let Init::Inpaint { mask, .. } = init {
            if (mask.width, mask.height) != (image.width, image.height) {
                return Err(ModelsError::Usage(format!("the mask is {}x{} but the image is {}x{}; they must be the same size", mask.width, mask.height, image.width, image.height)));
            }
        }
        Ok(())
    }

    /// VAE-encodes `image` and returns its latents × the scaling factor, [1, 4, h, w]. Exports
    /// output `latent_parameters` (mean ‖ log-variance, 8 channels: the mean is taken) or
    /// `latent_sample` (4 channels).
    pub fn encode_image(&mut self, image: &SdImage) -> Result<Vec<f32>> {
        let encoder = self.vae_encoder.as_mut().ok_or_else(|| ModelsError::pipeline(self.dir.root.join("vae_encoder/model.onnx"), "missing: encoding an image needs the vae_encoder model"))?;
        let input = float_tensor(encoder, "sample", vec![1, 3, image.height as i64, image.width as i64], image.pixels.clone())?;
        let (shape, values) = encoder.run_f32(vec![("sample".to_string(), input)], &["latent_parameters", "latent_sample"])?;
        let f = self.dir.vae_scale_factor;
        let (h, w) = (image.height / f, image.width / f);
        let fits = shape.len() == 4 && shape[0] == 1 && shape[2] as usize == h && shape[3] as usize == w && (shape[1] as usize == LATENT_CHANNELS || shape[1] as usize == 2 * LATENT_CHANNELS);
        if !fits {
            return Err(ModelsError::pipeline(&encoder.path, format!("output shape {shape:?}; expected [1, 4 (latent_sample) or 8 (latent_parameters), {h}, {w}]")));
        }
        // The mean is the first half of the channels; `latent_sample` is all of them.
        Ok(values[..LATENT_CHANNELS * h * w].iter().map(|&x| x * self.dir.vae_scaling).collect())
    }
}
