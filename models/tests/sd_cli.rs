//! `quilt sd txt2img|img2img|inpaint` end to end through the `quilt` binary on the bundled tiny
//! pipelines (each run is its own process: ORT allows one environment per process). Needs ORT and
//! the quilt EP library: runs when `ORT_DYLIB_PATH` and `QUILT_EP_LIB` are set (scripts/test.sh
//! sets both), otherwise prints why it skipped. Argument errors are checked either way.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn quilt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quilt")).args(args).output().expect("runs the quilt binary")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn have_runtime() -> bool {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    if !set("ORT_DYLIB_PATH") || !set("QUILT_EP_LIB") {
        eprintln!("skipped: set ORT_DYLIB_PATH and QUILT_EP_LIB (scripts/test.sh does)");
        return false;
    }
    true
}

fn png_size(path: &Path) -> (u32, u32) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (img.width(), img.height())
}

#[test]
fn argument_errors_are_clear() {
    for (args, want) in [
        (&["sd", "img2img", "--prompt", "x", "--mask", "m.png", "--out", "o.png"][..], "--mask does not apply to img2img"),
        (&["sd", "txt2img", "--prompt", "x", "--strength", "0.5", "--out", "o.png"][..], "--strength does not apply to txt2img"),
        (&["sd", "inpaint", "--pipeline", "alt", "--prompt", "x", "--out", "o.png"][..], "no AltDiffusion inpainting"),
        (&["sd", "img2img", "--model", "/nonexistent", "--prompt", "x", "--out", "o.png"][..], "needs --image"),
        (&["sd", "inpaint", "--model", "/nonexistent", "--image", "i.png", "--prompt", "x", "--out", "o.png"][..], "needs --mask"),
        (&["sd", "txt2img", "--pipeline", "xl", "--prompt", "x", "--out", "o.png"][..], "expected sd or alt"),
        (&["sd", "upscale"][..], "unknown subcommand `upscale`"),
        (&["sd", "txt2img", "--prompt", "x", "--unet-io", "gpu", "--out", "o.png"][..], "expected auto, binding or host"),
        (&["sd", "txt2img", "--prompt", "x", "--trace=1", "--out", "o.png"][..], "--trace takes no value"),
    ] {
        let out = quilt(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(want), "{args:?}: expected {want:?} in {}", text(&out));
    }
}

#[test]
fn every_subcommand_runs_on_the_bundled_pipelines() {
    if !have_runtime() {
        return;
    }
    let tmp = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../target/quilt-sd-cli-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let path = |name: &str| tmp.join(name).to_string_lossy().into_owned();
    let common = ["--prompt", "a red fox in the snow", "--steps", "2", "--size", "16x16", "--seed", "3"];
    for (sub, extra, want) in [
        ("txt2img", &[][..], "CLIP text encoder"),
        ("txt2img", &["--pipeline", "alt"][..], "XLM-RoBERTa (AltDiffusion)"),
        ("img2img", &["--strength", "1.0"][..], "no --image: a generated gradient"),
        ("img2img", &["--pipeline", "alt", "--strength", "0.5"][..], "XLM-RoBERTa (AltDiffusion)"),
        ("inpaint", &[][..], "no --mask: a generated centred box"),
    ] {
        let out_png = path(&format!("{sub}-{}.png", extra.len()));
        let mut args = vec!["sd", sub];
        args.extend(common);
        args.extend(extra);
        args.extend(["--out", &out_png]);
        let out = quilt(&args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(want), "{args:?}: expected {want:?} in {}", text(&out));
        assert!(text(&out).contains("time      unet"), "{}", text(&out));
        assert_eq!(png_size(Path::new(&out_png)), (16, 16));
    }

    // How the UNet's tensors move is reported: device binding by default on quilt (the reference
    // device here), host tensors when asked for or on ORT's CPU EP; --trace prints every step's split.
    let out_png = path("io.png");
    for (extra, want) in [
        (&[][..], "unet io   device binding (bound in Cpu:0 memory; written and read in place)"),
        (&["--unet-io", "host"][..], "unet io   host tensors (--unet-io host)"),
        (&["--ep", "cpu"][..], "unet io   host tensors (ORT's CPU EP runs the reference path"),
        (&["--ep", "cpu", "--unet-io", "binding"][..], "unet io   device binding (bound in Cpu:0 memory"),
    ] {
        let mut args = vec!["sd", "txt2img", "--trace"];
        args.extend(common);
        args.extend(extra);
        args.extend(["--out", &out_png]);
        let out = quilt(&args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        let t = text(&out);
        assert!(t.contains(want), "{args:?}: expected {want:?} in {t}");
        // (PNDM, the tiny pipeline's scheduler, makes 3 UNet calls for 2 steps.)
        assert!(t.contains("time      unet step split (mean of 3 steps): prep "), "{t}");
        assert!(t.contains("trace     step 1/3: prep ") && t.contains("trace     step 3/3: prep "), "{t}");
    }

    // Given image and mask files: the output keeps the image's size; a mask of another size is refused.
    let image = path("in.png");
    image::RgbImage::from_fn(24, 16, |x, y| image::Rgb([(x * 10) as u8, (y * 15) as u8, 128])).save(&image).unwrap();
    let mask = path("mask.png");
    image::GrayImage::from_fn(24, 16, |x, _| image::Luma([if x >= 12 { 255 } else { 0 }])).save(&mask).unwrap();
    let small_mask = path("small_mask.png");
    image::GrayImage::from_pixel(16, 16, image::Luma([255])).save(&small_mask).unwrap();
    let out_png = path("inpaint-files.png");
    let out = quilt(&["sd", "inpaint", "--prompt", "x", "--steps", "2", "--image", &image, "--mask", &mask, "--strength", "0.75", "--scheduler", "ddim", "--out", &out_png]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1 of 2 steps, strength 0.75, 24x16"), "{}", text(&out));
    assert_eq!(png_size(Path::new(&out_png)), (24, 16));
    let out = quilt(&["sd", "inpaint", "--prompt", "x", "--steps", "2", "--image", &image, "--mask", &small_mask, "--out", &out_png]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("is 16x16 but the image is 24x16"), "{}", text(&out));
    let out = quilt(&["sd", "img2img", "--prompt", "x", "--image", &image, "--size", "16x16", "--out", &out_png]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("--size 16x16 but") && text(&out).contains("24x16"), "{}", text(&out));

    // A batch: two prompts × two images each → four PNGs named after --out.
    let out_png = path("batch.png");
    let out = quilt(&["sd", "img2img", "--prompt", "a fox", "--prompt", "a hare", "--images-per-prompt", "2", "--steps", "2", "--strength", "0.5", "--size", "16x16", "--out", &out_png]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("batch 4"), "{}", text(&out));
    for i in 0..4 {
        assert_eq!(png_size(&tmp.join(format!("batch-{i}.png"))), (16, 16));
    }
    assert!(!Path::new(&out_png).exists(), "a batch writes numbered files only");
    let out = quilt(&["sd", "txt2img", "--prompt", "x", "--images-per-prompt", "0", "--out", &out_png]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("--images-per-prompt must be at least 1"), "{}", text(&out));
    std::fs::remove_dir_all(&tmp).unwrap();
}
