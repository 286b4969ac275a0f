//! The bundled tiny pipeline: the random-weights fixtures (`models/fixtures/`) and the tiny CLIP
//! tokenizer assembled into a standard pipeline directory, so `quilt sd` runs with no download.
//! Written on demand (fixtures are not duplicated in the repository).

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::error::{ModelsError, Result};

/// `models/fixtures` of this source tree.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Where the CLI puts the tiny pipeline when no `--model` is given.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/quilt-sd/tiny_sd")
}

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
    let fx = fixtures_dir();
    for (from, to) in [
        ("text_encoder/model.onnx", "text_encoder/model.onnx"),
        ("unet/model.onnx", "unet/model.onnx"),
        ("vae_decoder/model.onnx", "vae_decoder/model.onnx"),
        ("vae_encoder/model.onnx", "vae_encoder/model.onnx"),
        ("pipeline/tokenizer_clip/vocab.json", "tokenizer/vocab.json"),
        ("pipeline/tokenizer_clip/merges.txt", "tokenizer/merges.txt"),
        ("pipeline/tokenizer_clip/tokenizer_config.json", "tokenizer/tokenizer_config.json"),
        ("pipeline/tokenizer_clip/special_tokens_map.json", "tokenizer/special_tokens_map.json"),
    ] {
        copy(&fx.join(from), &dir.join(to))?;
    }
    write_json(
        &dir.join("model_index.json"),
        &json!({
            "_class_name": "ORTStableDiffusionPipeline",
            "_diffusers_version": "0.42.1",
            "text_encoder": ["diffusers", "OnnxRuntimeModel"],
            "unet": ["diffusers", "OnnxRuntimeModel"],
            "vae_decoder": ["diffusers", "OnnxRuntimeModel"],
            "vae_encoder": ["diffusers", "OnnxRuntimeModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
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
    write_json(&dir.join("unet/config.json"), &json!({"block_out_channels": [32, 64], "in_channels": 4, "out_channels": 4, "cross_attention_dim": 32}))?;
    write_json(&dir.join("text_encoder/config.json"), &json!({"vocab_size": 1000, "hidden_size": 32, "max_position_embeddings": 77}))?;
    Ok(dir.to_path_buf())
}
