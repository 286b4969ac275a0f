//! The bundled tiny pipelines: the random-weights fixtures (`models/fixtures/`) and the tiny CLIP or
//! XLM-R tokenizer assembled into standard pipeline directories (SD, SD inpainting, AltDiffusion),
//! so every `quilt sd` subcommand runs with no download.
//! Written on demand (fixtures are not duplicated in the repository).

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::error::{ModelsError, Result};

/// `models/fixtures` of this source tree.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The bundled tiny pipelines, one per kind of text encoder and UNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinyPipeline {
    /// CLIP text encoder, 4-channel UNet: txt2img and img2img.
    Sd,
    /// CLIP text encoder, 9-channel inpainting UNet.
    Inpaint,
    /// AltDiffusion: XLM-RoBERTa text encoder and tokenizer, 4-channel UNet.
    Alt,
}

impl TinyPipeline {
    pub fn dir_name(self) -> &'static str {
        match self {
            TinyPipeline::Sd => "tiny_sd",
            TinyPipeline::Inpaint => "tiny_sd_inpaint",
            TinyPipeline::Alt => "tiny_alt",
        }
    }
}

/// Where the CLI puts the tiny txt2img/img2img pipeline when no `--model` is given.
pub fn default_dir() -> PathBuf {
    default_dir_for(TinyPipeline::Sd)
}

/// Where the CLI puts the tiny pipeline of `kind`.
pub fn default_dir_for(kind: TinyPipeline) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/quilt-sd").join(kind.dir_name())
}

const CLIP_TOKENIZER_FILES: &[&str] = &["vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"];
const XLMR_TOKENIZER_FILES: &[&str] = &["tokenizer.json", "tokenizer_config.json"];

fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ModelsError::pipeline(parent, format!("cannot create: {e}")))?;
    }
    std::fs::copy(from, to).map_err(|e| ModelsError::pipeline(from, format!("cannot copy to {}: {e}", to.display())))?;
    Ok(())
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ModelsError::pipeline(parent, format!("cannot create: {e}")))?;
    }
    let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    std::fs::write(path, text + "\n").map_err(|e| ModelsError::pipeline(path, format!("cannot write: {e}")))
}

/// Writes the tiny txt2img/img2img pipeline (CLIP text encoder, 4-channel UNet, VAE, PNDM as SD 1.5
/// configures it) into `dir` and returns `dir`.
pub fn materialize_tiny_pipeline(dir: &Path) -> Result<PathBuf> {
    materialize(TinyPipeline::Sd, dir)
}

/// Writes the tiny pipeline of `kind` into `dir` and returns `dir`.
pub fn materialize(kind: TinyPipeline, dir: &Path) -> Result<PathBuf> {
    let fx = fixtures_dir();
    let (text_encoder, unet, tokenizer_files, tokenizer_class, class_name) = match kind {
        TinyPipeline::Sd => ("text_encoder", "unet", CLIP_TOKENIZER_FILES, "CLIPTokenizer", "ORTStableDiffusionPipeline"),
        TinyPipeline::Inpaint => ("text_encoder", "unet_inpaint", CLIP_TOKENIZER_FILES, "CLIPTokenizer", "ORTStableDiffusionInpaintPipeline"),
        TinyPipeline::Alt => ("text_encoder_xlmr", "unet", XLMR_TOKENIZER_FILES, "XLMRobertaTokenizerFast", "AltDiffusionPipeline"),
    };
    let tokenizer_dir = if kind == TinyPipeline::Alt { "pipeline/tokenizer_xlmr" } else { "pipeline/tokenizer_clip" };
    copy(&fx.join(text_encoder).join("model.onnx"), &dir.join("text_encoder/model.onnx"))?;
    copy(&fx.join(unet).join("model.onnx"), &dir.join("unet/model.onnx"))?;
    copy(&fx.join("vae_decoder/model.onnx"), &dir.join("vae_decoder/model.onnx"))?;
    copy(&fx.join("vae_encoder/model.onnx"), &dir.join("vae_encoder/model.onnx"))?;
    for file in tokenizer_files {
        copy(&fx.join(tokenizer_dir).join(file), &dir.join("tokenizer").join(file))?;
    }
    write_json(
        &dir.join("model_index.json"),
        &json!({
            "_class_name": class_name,
            "_diffusers_version": "0.42.1",
            "text_encoder": ["diffusers", "OnnxRuntimeModel"],
            "unet": ["diffusers", "OnnxRuntimeModel"],
            "vae_decoder": ["diffusers", "OnnxRuntimeModel"],
            "vae_encoder": ["diffusers", "OnnxRuntimeModel"],
            "tokenizer": ["transformers", tokenizer_class],
            "scheduler": ["diffusers", "PNDMScheduler"],
            "safety_checker": [null, null],
            "feature_extractor": [null, null],
            "requires_safety_checker": false
        }),
    )?;
    // Stable Diffusion 1.5's scheduler config.
    write_json(
        &dir.join("scheduler/scheduler_config.json"),
        &json!({
            "_class_name": "PNDMScheduler",
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "clip_sample": false,
            "num_train_timesteps": 1000,
            "set_alpha_to_one": false,
            "skip_prk_steps": true,
            "steps_offset": 1,
            "trained_betas": null
        }),
    )?;
    // The fixtures' configs (models/fixtures/make_fixtures.py): a VAE with two blocks downsamples by 2,
    // a UNet with two blocks needs even latent sizes.
    let vae = json!({"block_out_channels": [32, 64], "latent_channels": 4, "scaling_factor": 0.18215});
    write_json(&dir.join("vae_decoder/config.json"), &vae)?;
    write_json(&dir.join("vae_encoder/config.json"), &vae)?;
    let in_channels = if kind == TinyPipeline::Inpaint { 9 } else { 4 };
    write_json(&dir.join("unet/config.json"), &json!({"block_out_channels": [32, 64], "in_channels": in_channels, "out_channels": 4, "cross_attention_dim": 32}))?;
    write_json(&dir.join("text_encoder/config.json"), &json!({"vocab_size": 1000, "hidden_size": 32, "max_position_embeddings": if kind == TinyPipeline::Alt { 79 } else { 77 }}))?;
    Ok(dir.to_path_buf())
}
