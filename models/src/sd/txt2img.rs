//! The loaded pipeline (one ORT session per model) and text-to-image (diffusers'
//! `StableDiffusionPipeline` / Optimum's ORT pipeline): tokenize, encode, denoise with
//! classifier-free guidance, decode. The generation itself, shared with img2img and inpaint, is in
//! `generate.rs`; its denoising loop in `denoise.rs`.

use std::time::Duration;

use crate::runtime::Runtime;
use crate::error::{ModelsError, Result};
use crate::sd::generate::Init;
use crate::sd::models::{ids_tensor, Ep, Model};
use crate::sd::pipeline_dir::PipelineDir;
use crate::sd::schedulers::{SchedulerConfig, SchedulerKind};
use crate::sd::tokenizer::PromptTokenizer;
use crate::sd::unet_io::{StepSplit, UnetIo, UnetIoPath};

#[derive(Debug, Clone)]
pub struct Txt2ImgRequest {
    /// One or more prompts, generated as one batch (diffusers' list `prompt`).
    pub prompts: Vec<String>,
    /// The negative prompt, shared by every prompt of the batch.
    pub negative: String,
    /// Images per prompt (diffusers' `num_images_per_prompt`); the batch is
    /// `prompts.len() × images_per_prompt`, images of one prompt next to each other.
    pub images_per_prompt: usize,
    pub steps: usize,
    pub width: usize,
    pub height: usize,
    pub seed: u64,
    /// Classifier-free guidance runs when this is above 1 (diffusers' rule).
    pub guidance_scale: f32,
    /// Overrides the pipeline's `scheduler_config.json` class.
    pub scheduler: Option<SchedulerKind>,
    /// The initial Gaussian noise ([batch, 4, h, w], unscaled) instead of drawing it from `seed`:
    /// reproduces another implementation's run (the diffusers reference tests pass diffusers' own).
    pub noise: Option<Vec<f32>>,
}

impl Txt2ImgRequest {
    /// Images in one generation.
    pub fn batch(&self) -> usize {
        self.prompts.len() * self.images_per_prompt
    }
}

impl Default for Txt2ImgRequest {
    fn default() -> Self {
        Txt2ImgRequest {
            prompts: vec![String::new()],
            negative: String::new(),
            images_per_prompt: 1,
            steps: 20,
            width: 512,
            height: 512,
            seed: 0,
            guidance_scale: 7.5,
            scheduler: None,
            noise: None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct StageTimes {
    pub text_encoder: Duration,
    /// img2img/inpaint: encoding the input (and masked) image.
    pub vae_encoder: Duration,
    pub unet_steps: Vec<Duration>,
    /// Where each UNet step's time went (same order as `unet_steps`).
    pub unet_splits: Vec<StepSplit>,
    /// How the UNet's tensors moved (`None` when no step ran).
    pub unet_io: Option<UnetIoPath>,
    pub vae_decoder: Duration,
    pub total: Duration,
}

#[derive(Debug, Clone)]
pub struct Generated {
    /// Final latents (before the VAE scaling), NCHW.
    pub latents: Vec<f32>,
    pub latent_shape: [usize; 4],
    /// Decoder output in [-1, 1] (unclamped), NCHW with 3 channels, one image per batch entry.
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
    /// Present when the pipeline directory has one (img2img and inpaint need it).
    pub vae_encoder: Option<Model>,
    pub ep: Ep,
    /// How the denoising loop moves the UNet's tensors (default: device binding on quilt).
    pub unet_io: UnetIo,
}

impl SdPipeline {
    pub fn load(runtime: &Runtime, dir: PipelineDir, ep: Ep) -> Result<SdPipeline> {
        Self::load_with_options(runtime, dir, ep, &[])
    }

    /// `options`: quilt EP options for every model's session (e.g. `precision=fp16`).
    pub fn load_with_options(runtime: &Runtime, dir: PipelineDir, ep: Ep, options: &[(String, String)]) -> Result<SdPipeline> {
        let tokenizer = PromptTokenizer::load(&dir.tokenizer)?;
        let load = |path: &std::path::Path| Model::load_with_options(runtime, path, ep, options);
        let text_encoder = load(&dir.text_encoder)?;
        let unet = load(&dir.unet)?;
        let vae_decoder = load(&dir.vae_decoder)?;
        let vae_encoder = dir.vae_encoder.as_deref().map(load).transpose()?;
        if let Some(encoder) = &vae_encoder {
            encoder.input("sample")?;
        }
        for (model, names) in [(&unet, &["sample", "timestep", "encoder_hidden_states"][..]), (&vae_decoder, &["latent_sample"][..]), (&text_encoder, &["input_ids"][..])] {
            for name in names {
                model.input(name)?;
            }
        }
        Ok(SdPipeline { dir, tokenizer, text_encoder, unet, vae_decoder, vae_encoder, ep, unet_io: UnetIo::Auto })
    }

    /// Models on which quilt declined nodes (they ran partly on ORT's CPU EP).
    pub fn fallbacks(&self) -> Vec<&str> {
        [("text_encoder", Some(&self.text_encoder)), ("unet", Some(&self.unet)), ("vae_decoder", Some(&self.vae_decoder)), ("vae_encoder", self.vae_encoder.as_ref())]
            .into_iter()
            .filter(|(_, m)| m.is_some_and(|m| m.fell_back))
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

    /// Input channels of the UNet's `sample` (4 for txt2img/img2img, 9 for inpainting); a
    /// dynamic channel dimension counts as 4.
    pub fn unet_in_channels(&self) -> Result<usize> {
        let decl = self.unet.input("sample")?;
        match decl.dims.get(1) {
            Some(Ok(c)) if decl.dims.len() == 4 => Ok(*c as usize),
            Some(Err(_)) if decl.dims.len() == 4 => Ok(4),
            _ => Err(ModelsError::pipeline(&self.unet.path, "input `sample` is not rank 4")),
        }
    }

    pub fn txt2img(&mut self, req: &Txt2ImgRequest, progress: &mut dyn FnMut(usize, usize, Duration)) -> Result<Generated> {
        self.generate(req, Init::Noise, progress)
    }
}

/// NCHW decoder output in [-1, 1] → interleaved RGB bytes of batch entry `index` (diffusers'
/// `(x / 2 + 0.5).clamp(0, 1)`, rounded).
pub fn to_rgb8(image: &[f32], shape: [usize; 4], index: usize) -> Vec<u8> {
    let [_, c, h, w] = shape;
    let image = &image[index * c * h * w..(index + 1) * c * h * w];
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

/// Writes batch entry `index` as PNG.
pub fn write_png(path: &std::path::Path, image: &[f32], shape: [usize; 4], index: usize) -> Result<()> {
    let [n, _, h, w] = shape;
    if index >= n {
        return Err(ModelsError::Usage(format!("image {index} of a batch of {n}")));
    }
    let rgb = image::RgbImage::from_raw(w as u32, h as u32, to_rgb8(image, shape, index)).ok_or_else(|| ModelsError::Usage("image buffer size mismatch".into()))?;
    rgb.save_with_format(path, image::ImageFormat::Png).map_err(|e| ModelsError::pipeline(path, format!("cannot write PNG: {e}")))
}
