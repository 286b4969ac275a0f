//! The text-to-image pipeline (diffusers' `StableDiffusionPipeline` / Optimum's ORT pipeline):
//! tokenize, encode, denoise with classifier-free guidance, decode.

use std::time::{Duration, Instant};

use crate::random::Rng;
use crate::runtime::Runtime;
use crate::error::{ModelsError, Result};
use crate::sd::models::{float_tensor, ids_tensor, timestep_tensor, Ep, Model};
use crate::sd::pipeline_dir::PipelineDir;
use crate::sd::schedulers::{self, NoiseSource, SchedulerConfig, SchedulerKind};
use crate::sd::tokenizer::PromptTokenizer;

#[derive(Debug, Clone)]
pub struct Txt2ImgRequest {
    pub prompt: String,
    pub negative: String,
    pub steps: usize,
    pub width: usize,
    pub height: usize,
    pub seed: u64,
    /// Classifier-free guidance runs when this is above 1 (diffusers' rule).
    pub guidance_scale: f32,
    /// Overrides the pipeline's `scheduler_config.json` class.
    pub scheduler: Option<SchedulerKind>,
}

impl Default for Txt2ImgRequest {
    fn default() -> Self {
        Txt2ImgRequest { prompt: String::new(), negative: String::new(), steps: 20, width: 512, height: 512, seed: 0, guidance_scale: 7.5, scheduler: None }
    }
}

#[derive(Debug, Clone, Default)]
pub struct StageTimes {
    pub text_encoder: Duration,
    pub unet_steps: Vec<Duration>,
    pub vae_decoder: Duration,
    pub total: Duration,
}

#[derive(Debug, Clone)]
pub struct Generated {
    /// Final latents (before the VAE scaling), NCHW.
    pub latents: Vec<f32>,
    pub latent_shape: [usize; 4],
    /// Decoder output in [-1, 1] (unclamped), NCHW with 3 channels.
    pub image: Vec<f32>,
    pub image_shape: [usize; 4],
    pub scheduler: SchedulerKind,
    pub times: StageTimes,
}

/// A loaded pipeline: one session per model, reused across requests and sizes.
pub struct SdPipeline {
    pub dir: PipelineDir,
    pub tokenizer: PromptTokenizer,
    pub text_encoder: Model,
    pub unet: Model,
    pub vae_decoder: Model,
    pub ep: Ep,
}

impl SdPipeline {
    pub fn load(runtime: &Runtime, dir: PipelineDir, ep: Ep) -> Result<SdPipeline> {
        let tokenizer = PromptTokenizer::load(&dir.tokenizer)?;
        let text_encoder = Model::load(runtime, &dir.text_encoder, ep)?;
        let unet = Model::load(runtime, &dir.unet, ep)?;
        let vae_decoder = Model::load(runtime, &dir.vae_decoder, ep)?;
        for (model, names) in [(&unet, &["sample", "timestep", "encoder_hidden_states"][..]), (&vae_decoder, &["latent_sample"][..]), (&text_encoder, &["input_ids"][..])] {
            for name in names {
                model.input(name)?;
            }
        }
        Ok(SdPipeline { dir, tokenizer, text_encoder, unet, vae_decoder, ep })
    }

    /// Models on which quilt declined nodes (they ran partly on ORT's CPU EP).
    pub fn fallbacks(&self) -> Vec<&str> {
        [("text_encoder", &self.text_encoder), ("unet", &self.unet), ("vae_decoder", &self.vae_decoder)]
            .into_iter()
            .filter(|(_, m)| m.fell_back)
            .map(|(n, _)| n)
            .collect()
    }

    /// Text embeddings for `prompts`, batched in order: [len, seq, dim].
    pub fn encode_prompts(&mut self, prompts: &[&str]) -> Result<(Vec<i64>, Vec<f32>)> {
        let encoded = prompts.iter().map(|p| self.tokenizer.encode(p)).collect::<Result<Vec<_>>>()?;
        let ids: Vec<Vec<i64>> = encoded.iter().map(|e| e.input_ids.clone()).collect();
        let mut inputs = vec![("input_ids".to_string(), ids_tensor(&self.text_encoder, "input_ids", &ids)?)];
        if self.text_encoder.has_input("attention_mask") {
            let mask: Vec<Vec<i64>> = encoded.iter().map(|e| e.attention_mask.clone()).collect();
            inputs.push(("attention_mask".to_string(), ids_tensor(&self.text_encoder, "attention_mask", &mask)?));
        }
        self.text_encoder.run_f32(inputs, &["last_hidden_state", "text_embeddings"])
    }

    pub fn scheduler_config(&self, kind: Option<SchedulerKind>) -> Result<SchedulerConfig> {
        SchedulerConfig::from_json(&self.dir.scheduler_config, kind).map_err(|e| ModelsError::pipeline(self.dir.root.join("scheduler/scheduler_config.json"), e.to_string()))
    }

    /// SD's VAE has 4 latent channels; a UNet whose `sample` declares another fixed channel count
    /// is not a txt2img UNet (9 = inpainting).
    fn latent_channels(&self) -> Result<usize> {
        let decl = self.unet.input("sample")?;
        match decl.dims.get(1) {
            Some(Ok(4)) | Some(Err(_)) => Ok(4),
            Some(Ok(c)) => Err(ModelsError::pipeline(&self.unet.path, format!("input `sample` has {c} channels; txt2img needs a 4-channel UNet"))),
            None => Err(ModelsError::pipeline(&self.unet.path, "input `sample` is not rank 4")),
        }
    }

    pub fn txt2img(&mut self, req: &Txt2ImgRequest, progress: &mut dyn FnMut(usize, usize, Duration)) -> Result<Generated> {
        let start = Instant::now();
        self.dir.check_size(req.width, req.height)?;
        if req.steps == 0 {
            return Err(ModelsError::Usage("--steps must be at least 1".into()));
        }
        let config = self.scheduler_config(req.scheduler)?;
        let kind = config.kind;
        let mut scheduler = schedulers::build(config);
        scheduler.set_timesteps(req.steps)?;
        let mut times = StageTimes::default();

        // Text: [negative, prompt] as diffusers concatenates them (unconditional first).
        let cfg = req.guidance_scale > 1.0;
        let t0 = Instant::now();
        let (emb_shape, embeds) = if cfg { self.encode_prompts(&[&req.negative, &req.prompt])? } else { self.encode_prompts(&[&req.prompt])? };
        times.text_encoder = t0.elapsed();

        let f = self.dir.vae_scale_factor;
        let shape = [1usize, self.latent_channels()?, req.height / f, req.width / f];
        let n: usize = shape.iter().product();
        let mut rng = Rng::for_stream(req.seed, "latents");
        let sigma = scheduler.init_noise_sigma();
        let mut latents: Vec<f32> = {
            let mut v = vec![0.0f32; n];
            rng.fill_normal(&mut v);
            v.into_iter().map(|x| x * sigma).collect()
        };
        let mut step_noise = Rng::for_stream(req.seed, "scheduler-noise");

        let batch = if cfg { 2 } else { 1 };
        let timesteps = scheduler.timesteps().to_vec();
        for (i, &t) in timesteps.iter().enumerate() {
            let ts = Instant::now();
            let scaled = scheduler.scale_model_input(&latents, t)?;
            let mut sample = scaled.clone();
            if cfg {
                sample.extend_from_slice(&scaled);
            }
            let sample_shape = vec![batch as i64, shape[1] as i64, shape[2] as i64, shape[3] as i64];
            let inputs = vec![
                ("sample".to_string(), float_tensor(&self.unet, "sample", sample_shape, sample)?),
                ("timestep".to_string(), timestep_tensor(&self.unet, t, batch)?),
                ("encoder_hidden_states".to_string(), float_tensor(&self.unet, "encoder_hidden_states", emb_shape.clone(), embeds.clone())?),
            ];
            let (out_shape, out) = self.unet.run_f32(inputs, &["out_sample"])?;
            if out.len() != batch * n {
                return Err(ModelsError::pipeline(&self.unet.path, format!("output shape {out_shape:?}; expected [{batch}, {}, {}, {}]", shape[1], shape[2], shape[3])));
            }
            let noise_pred: Vec<f32> = if cfg {
                let (uncond, cond) = out.split_at(n);
                uncond.iter().zip(cond).map(|(&u, &c)| u + req.guidance_scale * (c - u)).collect()
            } else {
                out
            };
            latents = scheduler.step(&noise_pred, t, &latents, &mut step_noise)?;
            let d = ts.elapsed();
            times.unet_steps.push(d);
            progress(i + 1, timesteps.len(), d);
        }

        let tv = Instant::now();
        let scaled: Vec<f32> = latents.iter().map(|&x| x / self.dir.vae_scaling).collect();
        let input = float_tensor(&self.vae_decoder, "latent_sample", shape.iter().map(|&d| d as i64).collect(), scaled)?;
        let (img_shape, image) = self.vae_decoder.run_f32(vec![("latent_sample".to_string(), input)], &["sample"])?;
        times.vae_decoder = tv.elapsed();
        if img_shape.len() != 4 || img_shape[1] != 3 {
            return Err(ModelsError::pipeline(&self.vae_decoder.path, format!("output shape {img_shape:?}; expected [1, 3, H, W]")));
        }
        let image_shape = [img_shape[0] as usize, 3, img_shape[2] as usize, img_shape[3] as usize];
        times.total = start.elapsed();
        Ok(Generated { latents, latent_shape: shape, image, image_shape, scheduler: kind, times })
    }
}

/// NCHW decoder output in [-1, 1] → interleaved RGB bytes of the first image (diffusers'
/// `(x / 2 + 0.5).clamp(0, 1)`, rounded).
pub fn to_rgb8(image: &[f32], shape: [usize; 4]) -> Vec<u8> {
    let [_, c, h, w] = shape;
    let mut out = Vec::with_capacity(h * w * 3);
    for y in 0..h {
        for x in 0..w {
            for ch in 0..3.min(c) {
                let v = (image[ch * h * w + y * w + x] / 2.0 + 0.5).clamp(0.0, 1.0);
                out.push((v * 255.0).round() as u8);
            }
        }
    }
    out
}

/// Writes the first image as PNG.
pub fn write_png(path: &std::path::Path, image: &[f32], shape: [usize; 4]) -> Result<()> {
    let [_, _, h, w] = shape;
    let rgb = image::RgbImage::from_raw(w as u32, h as u32, to_rgb8(image, shape)).ok_or_else(|| ModelsError::Usage("image buffer size mismatch".into()))?;
    rgb.save_with_format(path, image::ImageFormat::Png).map_err(|e| ModelsError::pipeline(path, format!("cannot write PNG: {e}")))
}
