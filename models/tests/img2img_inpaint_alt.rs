//! img2img, inpaint (9-channel UNet) and AltDiffusion (XLM-R text encoder) on the bundled tiny
//! pipelines: quilt against ORT's CPU EP on the same inputs, seed and scheduler; strength edge cases;
//! errors for mismatched inputs. Needs ORT and the quilt EP library: the runtime tests run when
//! `ORT_DYLIB_PATH` and `QUILT_EP_LIB` are set (scripts/test.sh sets both), otherwise they print why
//! they skipped. The image/mask preparation tests need neither.
//!
//! Tolerance (as txt2img.rs): final latents within 1e-3 absolute + 1e-3 relative of the CPU EP's,
//! decoded images within 2e-3 absolute (both fp32; kernels sum in other orders).

use quilt_models::sd::bundled::TinyPipeline;
use quilt_models::sd::generate::strength_start;
use quilt_models::sd::images::{SdImage, SdMask};
use quilt_models::sd::models::Ep;
use quilt_models::sd::pipeline_dir::{PipelineDir, TextEncoderKind};
use quilt_models::sd::schedulers::SchedulerKind;
use quilt_models::sd::txt2img::{Generated, SdPipeline, Txt2ImgRequest};

mod common;
use common::{cleanup, max_diff, pair, runtime, tiny};

fn request(size: usize, steps: usize, seed: u64, scheduler: Option<SchedulerKind>) -> Txt2ImgRequest {
    Txt2ImgRequest {
        prompts: vec!["a watercolor of a lighthouse at dusk".into()],
        negative: "blurry".into(),
        steps,
        width: size,
        height: size,
        seed,
        guidance_scale: 7.5,
        scheduler,
        ..Default::default()
    }
}

/// quilt's result matches the CPU EP's within the stated tolerances; the image is not flat.
fn check_match(what: &str, q: &Generated, c: &Generated) {
    assert_eq!(q.latent_shape, c.latent_shape);
    assert_eq!(q.image_shape, c.image_shape);
    assert_eq!(q.times.unet_steps.len(), c.times.unet_steps.len());
    assert!(c.latents.iter().all(|v| v.is_finite()) && c.image.iter().all(|v| v.is_finite()), "{what}: non-finite output");
    let spread = c.image.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) - c.image.iter().fold(f32::INFINITY, |m, &v| m.min(v));
    assert!(spread > 1e-2, "{what}: the decoded image is flat ({spread})");
    let (lat_abs, lat_excess) = max_diff(&q.latents, &c.latents);
    let (img_abs, _) = max_diff(&q.image, &c.image);
    println!("{what}: {} UNet steps, latents max |Δ| {lat_abs:.2e}, image max |Δ| {img_abs:.2e}", q.times.unet_steps.len());
    assert!(lat_excess <= 1e-3, "{what}: latents differ by {lat_abs:e}");
    assert!(img_abs <= 2e-3, "{what}: images differ by {img_abs:e}");
}

#[test]
fn strength_start_follows_diffusers_get_timesteps() {
    // t_start = steps - min(int(steps * strength), steps)
    assert_eq!(strength_start(10, 1.0, 1).unwrap(), 0);
    assert_eq!(strength_start(10, 0.75, 1).unwrap(), 3);
    assert_eq!(strength_start(50, 0.75, 1).unwrap(), 13);
    assert_eq!(strength_start(3, 0.34, 1).unwrap(), 2);
    assert_eq!(strength_start(4, 0.5, 2).unwrap(), 4);
    let e = strength_start(3, 0.3, 1).unwrap_err().to_string();
    assert!(e.contains("no denoising step"), "{e}");
    for bad in [0.0, -0.5, 1.5, f32::NAN] {
        assert!(strength_start(10, bad, 1).unwrap_err().to_string().contains("(0, 1]"), "{bad}");
    }
}

#[test]
fn images_and_masks_are_prepared_as_diffusers_does() {
    let img = SdImage::from_rgb8(2, 1, &[0, 255, 51, 204, 102, 153]).unwrap();
    // NCHW, x / 255 * 2 - 1.
    let want = [-1.0, 0.6, 1.0, -0.2, -0.6, 0.2];
    for (g, w) in img.pixels.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{:?}", img.pixels);
    }
    assert!(SdImage::from_rgb8(2, 2, &[0; 6]).is_err());

    // Threshold at 0.5 after / 255: 127 keeps, 128 repaints.
    let mask = SdMask::from_luma8(4, 2, &[0, 127, 128, 255, 255, 0, 10, 200]).unwrap();
    assert_eq!(mask.values, vec![0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0]);
    // Nearest by 2 takes pixels (0, 0) and (0, 2).
    assert_eq!(mask.downsample_nearest(2), vec![0.0, 1.0]);

    let image = SdImage::from_rgb8(4, 2, &(0..24).map(|i| (i * 10) as u8).collect::<Vec<_>>()).unwrap();
    let masked = mask.mask_image(&image).unwrap();
    for c in 0..3 {
        for i in 0..8 {
            let want = if mask.values[i] >= 0.5 { 0.0 } else { image.pixels[c * 8 + i] };
            assert_eq!(masked.pixels[c * 8 + i], want);
        }
    }
    let e = SdMask::centered_box(2, 2).mask_image(&image).unwrap_err().to_string();
    assert!(e.contains("mask is 2x2") && e.contains("image is 4x2"), "{e}");

    let boxed = SdMask::centered_box(8, 8);
    assert_eq!(boxed.values.iter().filter(|&&v| v == 1.0).count(), 16);
    assert_eq!(boxed.values[3 * 8 + 3], 1.0);
    assert_eq!(boxed.values[0], 0.0);

    let g = SdImage::gradient(16, 8, 1);
    assert_eq!(g.pixels.len(), 3 * 16 * 8);
    assert!(g.pixels.iter().all(|v| (-1.0..=1.0).contains(v)));
    assert_eq!(g, SdImage::gradient(16, 8, 1));
    assert_ne!(g, SdImage::gradient(16, 8, 2));

    // A PNG round trip, colour mask through PIL's L weights.
    let path = std::env::temp_dir().join(format!("quilt-sd-mask-{}.png", std::process::id()));
    image::RgbImage::from_raw(2, 1, vec![255, 0, 0, 0, 255, 0]).unwrap().save(&path).unwrap();
    // L(255, 0, 0) = 76 (keep), L(0, 255, 0) = 150 (repaint).
    assert_eq!(SdMask::load(&path).unwrap().values, vec![0.0, 1.0]);
    assert_eq!(SdImage::load(&path).unwrap().pixels, vec![1.0, -1.0, -1.0, 1.0, -1.0, -1.0]);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn bundled_pipelines_declare_their_kind() {
    let sd = tiny(TinyPipeline::Sd, "kinds");
    let alt = tiny(TinyPipeline::Alt, "kinds");
    assert_eq!(PipelineDir::open(&sd).unwrap().text_encoder_kind, TextEncoderKind::Clip);
    assert_eq!(PipelineDir::open(&alt).unwrap().text_encoder_kind, TextEncoderKind::XlmRoberta);
    // Detected from the tokenizer config alone too.
    let index = alt.join("model_index.json");
    std::fs::write(&index, r#"{"_class_name": "SomePipeline"}"#).unwrap();
    assert_eq!(PipelineDir::open(&alt).unwrap().text_encoder_kind, TextEncoderKind::XlmRoberta);
    std::fs::remove_file(alt.join("tokenizer/tokenizer.json")).unwrap();
    let e = PipelineDir::open(&alt).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json") && e.contains("XLM-RoBERTa"), "{e}");
    cleanup(&sd);
}

#[test]
fn tiny_img2img_quilt_matches_cpu_ep() {
    let Some(runtime) = runtime() else { return };
    let dir = tiny(TinyPipeline::Sd, "img2img");
    let (mut quilt, mut cpu) = pair(runtime, &dir);
    let image = SdImage::gradient(16, 16, 7);
    for (scheduler, strength, steps) in [(None, 0.8, 3), (Some(SchedulerKind::EulerAncestral), 0.7, 4), (Some(SchedulerKind::DpmSolverMultistep), 0.5, 4)] {
        let req = request(16, steps, 5, scheduler);
        let q = quilt.img2img(&req, &image, strength, &mut |_, _, _| {}).unwrap();
        let c = cpu.img2img(&req, &image, strength, &mut |_, _, _| {}).unwrap();
        check_match(&format!("img2img {:?} strength {strength}", c.scheduler), &q, &c);
        // The input image matters.
        let other = cpu.img2img(&req, &SdImage::gradient(16, 16, 8), strength, &mut |_, _, _| {}).unwrap();
        assert_ne!(other.latents, c.latents);
    }
    cleanup(&dir);
}

#[test]
fn img2img_strength_sets_the_steps_run() {
    let Some(runtime) = runtime() else { return };
    let dir = tiny(TinyPipeline::Sd, "strength");
    let mut cpu = SdPipeline::load(runtime, PipelineDir::open(&dir).unwrap(), Ep::Cpu).unwrap();
    let image = SdImage::gradient(16, 16, 3);
    let req = request(16, 4, 9, Some(SchedulerKind::Ddim));
    let full = cpu.txt2img(&req, &mut |_, _, _| {}).unwrap();
    // Strength 1 runs every step, like txt2img.
    let mut seen = Vec::new();
    let s1 = cpu.img2img(&req, &image, 1.0, &mut |i, n, _| seen.push((i, n))).unwrap();
    assert_eq!(s1.times.unet_steps.len(), full.times.unet_steps.len());
    assert_eq!(seen, vec![(1, 4), (2, 4), (3, 4), (4, 4)]);
    // int(4 * 0.3) = 1 step; int(4 * 0.6) = 2.
    assert_eq!(cpu.img2img(&req, &image, 0.3, &mut |_, _, _| {}).unwrap().times.unet_steps.len(), 1);
    let half = cpu.img2img(&req, &image, 0.6, &mut |_, _, _| {}).unwrap();
    assert_eq!(half.times.unet_steps.len(), 2);
    assert_ne!(half.latents, s1.latents);
    // int(4 * 0.2) = 0: a clear error, not an empty run.
    let e = cpu.img2img(&req, &image, 0.2, &mut |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("no denoising step"), "{e}");
    let e = cpu.img2img(&req, &SdImage::gradient(24, 16, 3), 0.5, &mut |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("24x16") && e.contains("16x16"), "{e}");
    // A 4-channel pipeline cannot inpaint.
    let mask = SdMask::centered_box(16, 16);
    let e = cpu.inpaint(&req, &image, &mask, 1.0, &mut |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("9-channel"), "{e}");
    cleanup(&dir);
}

#[test]
fn tiny_inpaint_quilt_matches_cpu_ep() {
    let Some(runtime) = runtime() else { return };
    let dir = tiny(TinyPipeline::Inpaint, "inpaint");
    let (mut quilt, mut cpu) = pair(runtime, &dir);
    let image = SdImage::gradient(16, 16, 11);
    let mask = SdMask::centered_box(16, 16);
    for (scheduler, strength) in [(None, 1.0), (Some(SchedulerKind::Euler), 0.6), (Some(SchedulerKind::Ddim), 1.0)] {
        let req = request(16, 3, 4, scheduler);
        let q = quilt.inpaint(&req, &image, &mask, strength, &mut |_, _, _| {}).unwrap();
        let c = cpu.inpaint(&req, &image, &mask, strength, &mut |_, _, _| {}).unwrap();
        check_match(&format!("inpaint {:?} strength {strength}", c.scheduler), &q, &c);
    }
    // The mask and the kept pixels reach the UNet.
    let req = request(16, 3, 4, Some(SchedulerKind::Ddim));
    let base = cpu.inpaint(&req, &image, &mask, 1.0, &mut |_, _, _| {}).unwrap();
    let wide = SdMask::from_luma8(16, 16, &[255; 256]).unwrap();
    assert_ne!(cpu.inpaint(&req, &image, &wide, 1.0, &mut |_, _, _| {}).unwrap().latents, base.latents);
    assert_ne!(cpu.inpaint(&req, &SdImage::gradient(16, 16, 12), &mask, 1.0, &mut |_, _, _| {}).unwrap().latents, base.latents);

    // Wrong-size mask, 4-channel request on a 9-channel UNet: errors that say what is wrong.
    let e = cpu.inpaint(&req, &image, &SdMask::centered_box(8, 16), 1.0, &mut |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("mask is 8x16") && e.contains("image is 16x16"), "{e}");
    let e = cpu.txt2img(&req, &mut |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("9 channels") && e.contains("inpaint"), "{e}");
    let e = cpu.img2img(&req, &image, 0.5, &mut |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("4-channel"), "{e}");
    cleanup(&dir);
}

#[test]
fn tiny_alt_diffusion_quilt_matches_cpu_ep() {
    let Some(runtime) = runtime() else { return };
    let dir = tiny(TinyPipeline::Alt, "alt");
    let (mut quilt, mut cpu) = pair(runtime, &dir);
    assert_eq!(quilt.dir.text_encoder_kind, TextEncoderKind::XlmRoberta);
    assert!(quilt.text_encoder.has_input("attention_mask"), "the XLM-R encoder takes attention_mask");
    let req = Txt2ImgRequest { prompts: vec!["一座灯塔, watercolor".into()], ..request(16, 3, 6, None) };
    let q = quilt.txt2img(&req, &mut |_, _, _| {}).unwrap();
    let c = cpu.txt2img(&req, &mut |_, _, _| {}).unwrap();
    check_match("alt txt2img", &q, &c);
    let image = SdImage::gradient(16, 16, 2);
    let q = quilt.img2img(&req, &image, 0.7, &mut |_, _, _| {}).unwrap();
    let c = cpu.img2img(&req, &image, 0.7, &mut |_, _, _| {}).unwrap();
    check_match("alt img2img", &q, &c);

    // The XLM-R tokenizer runs (its ids, not CLIP's) and the prompt matters.
    let ids = cpu.tokenizer.encode("一座灯塔").unwrap();
    assert_eq!(ids.input_ids[0], 0, "XLM-R's <s>");
    assert!(ids.attention_mask.contains(&0) && ids.attention_mask[0] == 1);
    let (shape, a) = cpu.encode_prompts(&["一座灯塔"]).unwrap();
    let (_, b) = cpu.encode_prompts(&["a lighthouse"]).unwrap();
    assert_eq!(shape, vec![1, 77, 32]);
    assert_ne!(a, b);
    cleanup(&dir);
}
