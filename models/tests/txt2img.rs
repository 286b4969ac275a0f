//! txt2img on the bundled tiny pipeline: quilt against ORT's CPU EP on the same prompts, seed and
//! scheduler. Needs ORT and the quilt EP library: runs when `ORT_DYLIB_PATH` and `QUILT_EP_LIB` are
//! set (scripts/test.sh sets both), otherwise prints why it skipped.
//!
//! Tolerance: final latents within 1e-3 absolute + 1e-3 relative of the CPU EP's, decoded images
//! within 2e-3 absolute (both fp32; differences come from summation order inside kernels and grow
//! a little over the denoising steps).

use quilt_models::sd::bundled::{materialize_tiny_pipeline, TinyPipeline};
use quilt_models::sd::pipeline_dir::PipelineDir;
use quilt_models::sd::schedulers::{NoiseSource, SchedulerKind};
use quilt_models::sd::txt2img::Txt2ImgRequest;

mod common;
use common::{cleanup, max_diff, pair, runtime, tiny};

#[test]
fn tiny_txt2img_quilt_matches_cpu_ep() {
    let Some(runtime) = runtime() else { return };
    let dir = tiny(TinyPipeline::Sd, "txt2img");
    let (mut quilt, mut cpu) = pair(runtime, &dir);

    for (scheduler, size, seed) in [(None, 32, 1), (Some(SchedulerKind::EulerAncestral), 24, 2), (Some(SchedulerKind::DpmSolverMultistep), 16, 3)] {
        let req = Txt2ImgRequest {
            prompts: vec!["a photograph of an astronaut riding a horse".into()],
            negative: "blurry, low quality".into(),
            steps: 3,
            width: size,
            height: size,
            seed,
            guidance_scale: 7.5,
            scheduler,
            ..Default::default()
        };
        let q = quilt.txt2img(&req, &mut |_, _, _| {}).unwrap();
        let c = cpu.txt2img(&req, &mut |_, _, _| {}).unwrap();
        assert_eq!(q.latent_shape, [1, 4, size / 2, size / 2]);
        assert_eq!(q.image_shape, [1, 3, size, size]);
        assert!(c.latents.iter().all(|v| v.is_finite()) && c.image.iter().all(|v| v.is_finite()));
        let spread = c.image.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) - c.image.iter().fold(f32::INFINITY, |m, &v| m.min(v));
        assert!(spread > 1e-2, "the decoded image is flat ({spread})");
        let (lat_abs, lat_excess) = max_diff(&q.latents, &c.latents);
        let (img_abs, _) = max_diff(&q.image, &c.image);
        println!("{:?} {size}x{size}: latents max |Δ| {lat_abs:.2e}, image max |Δ| {img_abs:.2e}", q.scheduler);
        assert!(lat_excess <= 1e-3, "{:?}: latents differ by {lat_abs:e}", q.scheduler);
        assert!(img_abs <= 2e-3, "{:?}: images differ by {img_abs:e}", q.scheduler);

        // Same seed, same result; another seed, another result.
        let again = cpu.txt2img(&req, &mut |_, _, _| {}).unwrap();
        assert_eq!(again.latents, c.latents);
        let other = cpu.txt2img(&Txt2ImgRequest { seed: seed + 100, ..req.clone() }, &mut |_, _, _| {}).unwrap();
        assert_ne!(other.latents, c.latents);
    }
    cleanup(&dir);
}

#[test]
fn bad_pipeline_directories_are_named() {
    let root = std::env::temp_dir().join(format!("quilt-sd-bad-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let e = PipelineDir::open(&root).unwrap_err().to_string();
    assert!(e.contains("model_index.json"), "{e}");
    std::fs::write(root.join("model_index.json"), "{}").unwrap();
    let e = PipelineDir::open(&root).unwrap_err().to_string();
    assert!(e.contains("text_encoder/model.onnx") && e.contains("missing"), "{e}");
    std::fs::write(root.join("model_index.json"), "not json").unwrap();
    assert!(PipelineDir::open(&root).unwrap_err().to_string().contains("not valid JSON"));
    std::fs::remove_dir_all(&root).unwrap();

    let tiny = std::env::temp_dir().join(format!("quilt-sd-tiny-{}", std::process::id()));
    materialize_tiny_pipeline(&tiny).unwrap();
    let dir = PipelineDir::open(&tiny).unwrap();
    assert_eq!(dir.vae_scale_factor, 2);
    assert!(dir.check_size(64, 48).is_ok());
    assert!(dir.check_size(60, 64).unwrap_err().to_string().contains("multiples of 8"));
    std::fs::remove_file(tiny.join("scheduler/scheduler_config.json")).unwrap();
    assert!(PipelineDir::open(&tiny).unwrap_err().to_string().contains("scheduler_config.json"));
    std::fs::remove_dir_all(&tiny).unwrap();
}

/// A batch of prompts × images per prompt is the same as running each image alone: every entry of
/// the batch (its prompt, its slice of the initial noise) reproduces a single-image run within
/// fp32 summation-order noise (1e-4 absolute on latents), and quilt matches the CPU EP on the batch.
#[test]
fn prompt_batches_match_single_runs() {
    let Some(runtime) = runtime() else { return };
    let dir = tiny(TinyPipeline::Sd, "batch");
    let (mut quilt, mut cpu) = pair(runtime, &dir);
    let prompts = ["a red lighthouse on a cliff", "two cats on a sofa"];
    let size = 16;
    let req = Txt2ImgRequest {
        prompts: prompts.iter().map(|p| p.to_string()).collect(),
        negative: "blurry".into(),
        images_per_prompt: 2,
        steps: 3,
        width: size,
        height: size,
        seed: 7,
        scheduler: Some(SchedulerKind::Ddim),
        ..Default::default()
    };
    let q = quilt.txt2img(&req, &mut |_, _, _| {}).unwrap();
    let c = cpu.txt2img(&req, &mut |_, _, _| {}).unwrap();
    assert_eq!(q.latent_shape, [4, 4, size / 2, size / 2]);
    assert_eq!(q.image_shape, [4, 3, size, size]);
    let (lat_abs, lat_excess) = max_diff(&q.latents, &c.latents);
    assert!(lat_excess <= 1e-3, "batch: quilt vs CPU EP latents differ by {lat_abs:e}");

    // Rebuild the batch's noise (seeded, unscaled) from a run whose noise we pass explicitly.
    let per_image = 4 * (size / 2) * (size / 2);
    let mut noise = vec![0.0f32; 4 * per_image];
    quilt_models::random::Rng::for_stream(req.seed, "latents").fill_normal(&mut noise);
    let given = cpu.txt2img(&Txt2ImgRequest { noise: Some(noise.clone()), ..req.clone() }, &mut |_, _, _| {}).unwrap();
    assert_eq!(given.latents, c.latents, "passing the seed's own noise must change nothing");

    for i in 0..4 {
        let single = Txt2ImgRequest {
            prompts: vec![prompts[i / 2].to_string()],
            images_per_prompt: 1,
            noise: Some(noise[i * per_image..(i + 1) * per_image].to_vec()),
            ..req.clone()
        };
        let one = cpu.txt2img(&single, &mut |_, _, _| {}).unwrap();
        let (abs, _) = max_diff(&one.latents, &c.latents[i * per_image..(i + 1) * per_image]);
        assert!(abs <= 1e-4, "batch entry {i} differs from its single run by {abs:e}");
    }
    // Two images of one prompt differ (their noise does).
    let (abs, _) = max_diff(&c.latents[..per_image], &c.latents[per_image..2 * per_image]);
    assert!(abs > 1e-2, "two images of one prompt are the same");
    cleanup(&dir);
}
