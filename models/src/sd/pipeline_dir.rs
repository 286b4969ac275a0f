//! An exported SD pipeline directory in Optimum's layout (also what diffusers' old ONNX export
//! script writes): `model_index.json`, `text_encoder/model.onnx`, `unet/model.onnx`,
//! `vae_decoder/model.onnx`, optional `vae_encoder/model.onnx`, `tokenizer/`,
//! `scheduler/scheduler_config.json`, optional per-model `config.json` (VAE scaling factor and
//! downsampling, UNet channels). External weight files sit next to each `model.onnx`; ORT finds them.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{ModelsError, Result};

/// Which text encoder family the pipeline has: CLIP (Stable Diffusion) or XLM-RoBERTa
/// (AltDiffusion, whose encoder also takes `attention_mask`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoderKind {
    Clip,
    XlmRoberta,
}

/// SD 1.x/2.x's VAE latent scale (used when `vae_decoder/config.json` does not say).
pub const DEFAULT_VAE_SCALING: f32 = 0.18215;

#[derive(Debug, Clone)]
pub struct PipelineDir {
    pub root: PathBuf,
    pub model_index: Value,
    pub text_encoder: PathBuf,
    pub unet: PathBuf,
    pub vae_decoder: PathBuf,
    pub vae_encoder: Option<PathBuf>,
    pub tokenizer: PathBuf,
    pub text_encoder_kind: TextEncoderKind,
    pub scheduler_config: Value,
    /// `latents / vae_scaling` goes into the VAE decoder.
    pub vae_scaling: f32,
    /// Image pixels per latent pixel (8 for SD; 2^(len(block_out_channels) - 1) from the VAE config).
    pub vae_scale_factor: usize,
    /// Latent sizes must be multiples of this (2^(UNet down blocks - 1)); 1 if unknown.
    pub unet_size_multiple: usize,
}

pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelsError::pipeline(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| ModelsError::pipeline(path, format!("not valid JSON: {e}")))
}

fn optional_json(path: &Path) -> Result<Option<Value>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

impl PipelineDir {
    pub fn open(root: &Path) -> Result<PipelineDir> {
        if !root.is_dir() {
            return Err(ModelsError::pipeline(root, "not a directory (expected an exported SD ONNX pipeline)"));
        }
        let index_path = root.join("model_index.json");
        let model_index = read_json(&index_path)?;
        if !model_index.is_object() {
            return Err(ModelsError::pipeline(&index_path, "expected a JSON object"));
        }
        let model = |component: &str| -> Result<PathBuf> {
            let path = root.join(component).join("model.onnx");
            if path.is_file() {
                Ok(path)
            } else {
                Err(ModelsError::pipeline(&path, format!("missing: the pipeline needs the {component} model")))
            }
        };
        let text_encoder = model("text_encoder")?;
        let unet = model("unet")?;
        let vae_decoder = model("vae_decoder")?;
        let vae_encoder = Some(root.join("vae_encoder/model.onnx")).filter(|p| p.is_file());
        let tokenizer = root.join("tokenizer");
        if !tokenizer.is_dir() {
            return Err(ModelsError::pipeline(&tokenizer, "missing: expected tokenizer.json or vocab.json + merges.txt"));
        }
        let text_encoder_kind = detect_text_encoder(&model_index, &tokenizer)?;
        if text_encoder_kind == TextEncoderKind::XlmRoberta && !tokenizer.join("tokenizer.json").is_file() {
            return Err(ModelsError::pipeline(tokenizer.join("tokenizer.json"), "missing: an XLM-RoBERTa (AltDiffusion) pipeline needs the fast tokenizer's tokenizer.json"));
        }
        let scheduler_path = root.join("scheduler/scheduler_config.json");
        let scheduler_config = read_json(&scheduler_path)?;

        let vae_config = match optional_json(&root.join("vae_decoder/config.json"))? {
            Some(v) => Some(v),
            None => optional_json(&root.join("vae_encoder/config.json"))?,
        };
        let vae_scaling = vae_config.as_ref().and_then(|c| c.get("scaling_factor")).and_then(Value::as_f64).map(|v| v as f32).unwrap_or(DEFAULT_VAE_SCALING);
        let blocks = |c: &Option<Value>| c.as_ref().and_then(|c| c.get("block_out_channels")).and_then(Value::as_array).map(|a| a.len());
        let vae_scale_factor = blocks(&vae_config).map(|n| 1usize << n.saturating_sub(1)).unwrap_or(8);
        let unet_config = optional_json(&root.join("unet/config.json"))?;
        let unet_size_multiple = blocks(&unet_config).map(|n| 1usize << n.saturating_sub(1)).unwrap_or(1);
        Ok(PipelineDir {
            root: root.to_path_buf(),
            model_index,
            text_encoder,
            unet,
            vae_decoder,
            vae_encoder,
            tokenizer,
            text_encoder_kind,
            scheduler_config,
            vae_scaling,
            vae_scale_factor,
            unet_size_multiple,
        })
    }

    /// The image size a `--size` request must be a multiple of.
    pub fn size_multiple(&self) -> usize {
        (self.vae_scale_factor * self.unet_size_multiple).max(8)
    }

    /// Checks a requested image size; the error says what would fit.
    pub fn check_size(&self, width: usize, height: usize) -> Result<()> {
        let m = self.size_multiple();
        if width == 0 || height == 0 || !width.is_multiple_of(m) || !height.is_multiple_of(m) {
            return Err(ModelsError::Usage(format!("size {width}x{height}: width and height must be positive multiples of {m} for this pipeline")));
        }
        Ok(())
    }
}

/// XLM-RoBERTa when `model_index.json` names AltDiffusion's classes (`XLMRobertaTokenizer*`,
/// `RobertaSeriesModelWithTransformation`) or the tokenizer config names an XLM-R tokenizer;
/// CLIP otherwise.
fn detect_text_encoder(model_index: &Value, tokenizer_dir: &Path) -> Result<TextEncoderKind> {
    let names_xlmr = |v: Option<&Value>| v.is_some_and(|v| {
        let text = v.to_string();
        text.contains("XLMRoberta") || text.contains("RobertaSeries")
    });
    if names_xlmr(model_index.get("tokenizer")) || names_xlmr(model_index.get("text_encoder")) {
        return Ok(TextEncoderKind::XlmRoberta);
    }
    let config = optional_json(&tokenizer_dir.join("tokenizer_config.json"))?;
    Ok(if names_xlmr(config.as_ref().and_then(|c| c.get("tokenizer_class"))) { TextEncoderKind::XlmRoberta } else { TextEncoderKind::Clip })
}
