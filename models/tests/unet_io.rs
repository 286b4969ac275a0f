//! The UNet's device-binding path (`sd/unet_io.rs`) against the host-tensor path on the bundled
//! tiny pipelines. Needs ORT and the quilt EP library: runs when `ORT_DYLIB_PATH` and
//! `QUILT_EP_LIB` are set (scripts/test.sh sets both), otherwise prints why it skipped.
//!
//! CI has no GPU, so quilt runs on its reference device. There the session keeps the UNet's inputs
//! and output in host memory, so binding is possible and is the path `auto` takes: the tensors are
//! allocated and bound once per generation and written and read in place each step (the GPU's
//! `CopyTensors` staging is the one part only a GPU run exercises; where quilt has a GPU, the same
//! test checks that path instead). Binding does not change the
//! math, so both paths must give the same latents (within 1e-5; in practice bit for bit), through
//! guidance on and off, several images per prompt, a 9-channel inpainting UNet and repeated
//! generations with fresh bindings. A binding that fed the UNet stale inputs (e.g. a copy of the
//! first step's sample) or read a stale output would fail this after the first step.

use quilt_models::sd::bundled::TinyPipeline;
use quilt_models::sd::generate::Init;
use quilt_models::sd::images::{SdImage, SdMask};
use quilt_models::sd::models::Ep;
use quilt_models::sd::pipeline_dir::PipelineDir;
use quilt_models::sd::schedulers::SchedulerKind;
use quilt_models::sd::txt2img::{Generated, SdPipeline, Txt2ImgRequest};
use quilt_models::sd::unet_io::{UnetIo, UnetIoPath};

mod common;
use common::{cleanup, max_diff_rel, runtime, tiny};

const TOLERANCE: f32 = 1e-5;

fn generate(pipeline: &mut SdPipeline, io: UnetIo, req: &Txt2ImgRequest, init: Init) -> Generated {
    pipeline.unet_io = io;
    pipeline.generate(req, init, &mut |_, _, _| {}).unwrap_or_else(|e| panic!("{io:?}: {e}"))
}

fn assert_same(what: &str, a: &Generated, b: &Generated) {
    let (lat, _) = max_diff_rel(&a.latents, &b.latents, 0.0);
    let (img, _) = max_diff_rel(&a.image, &b.image, 0.0);
    println!("{what}: latents max |Δ| {lat:.2e}, image max |Δ| {img:.2e}");
    assert!(lat <= TOLERANCE, "{what}: latents differ by {lat:e}");
    assert!(img <= TOLERANCE, "{what}: images differ by {img:e}");
}

fn io_path(g: &Generated) -> &UnetIoPath {
    g.times.unet_io.as_ref().expect("the generation ran UNet steps")
}

#[test]
fn binding_matches_host_tensors_on_quilt() {
    let Some(runtime) = runtime() else { return };
    for kind in [TinyPipeline::Sd, TinyPipeline::Inpaint] {
        let dir = tiny(kind, "unet-io");
        let mut quilt = SdPipeline::load(runtime, PipelineDir::open(&dir).unwrap(), Ep::Quilt).unwrap();
        assert!(quilt.fallbacks().is_empty(), "quilt declined nodes of {:?}", quilt.fallbacks());
        // On a machine with a GPU quilt runs there: the tensors are bound in device memory and
        // staged through host memory with CopyTensors, and the same comparison checks that path.
        let gpu = runtime.quilt_has_gpu();
        let image = SdImage::gradient(24, 24, 5);
        let mask = SdMask::centered_box(24, 24);
        let init = match kind {
            TinyPipeline::Inpaint => Init::Inpaint { image: &image, mask: &mask, strength: 1.0 },
            _ => Init::Noise,
        };
        // Guidance on (batch 2: both halves) and off (batch 2: two images of one prompt).
        for (guidance, images_per_prompt, scheduler) in [(7.5, 1, None), (1.0, 2, Some(SchedulerKind::EulerAncestral))] {
            let req = Txt2ImgRequest {
                prompts: vec!["a lighthouse on a cliff".into()],
                negative: "blurry".into(),
                images_per_prompt,
                steps: 4,
                width: 24,
                height: 24,
                seed: 11,
                guidance_scale: guidance,
                scheduler,
                ..Default::default()
            };
            let what = format!("{kind:?} guidance {guidance}");
            let host = generate(&mut quilt, UnetIo::Host, &req, init);
            assert_eq!(io_path(&host), &UnetIoPath::HostTensors { reason: "--unet-io host".into() });

            let auto = generate(&mut quilt, UnetIo::Auto, &req, init);
            let path = io_path(&auto);
            assert!(path.is_binding(), "{what}: auto on the reference device took {}", path.describe());
            if gpu {
                assert!(path.describe().contains("copied through") && path.describe().contains("CopyTensors"), "{what}: {}", path.describe());
            } else {
                // The reference device's memory is host memory: in place, no staging copies.
                assert!(path.describe().contains("Cpu:0 memory; written and read in place"), "{what}: {}", path.describe());
            }
            // (PNDM's PLMS warm-up makes more UNet calls than steps.)
            assert_eq!(auto.times.unet_steps.len(), host.times.unet_steps.len());
            assert_eq!(auto.times.unet_splits.len(), auto.times.unet_steps.len());
            assert_same(&format!("{what}: binding vs host tensors"), &auto, &host);

            // A fresh binding per generation: the same request again gives the same result.
            let again = generate(&mut quilt, UnetIo::Binding, &req, init);
            assert!(io_path(&again).is_binding());
            assert_same(&format!("{what}: binding, second generation"), &again, &auto);
            // Another seed is another image (the binding does not pin the first generation's data).
            let other = generate(&mut quilt, UnetIo::Binding, &Txt2ImgRequest { seed: 12, ..req.clone() }, init);
            assert_ne!(other.latents, auto.latents, "{what}: another seed gave the same latents");
        }
        cleanup(&dir);
    }
}

#[test]
fn cpu_ep_keeps_host_tensors_unless_binding_is_asked_for() {
    let Some(runtime) = runtime() else { return };
    let dir = tiny(TinyPipeline::Sd, "unet-io-cpu");
    let mut cpu = SdPipeline::load(runtime, PipelineDir::open(&dir).unwrap(), Ep::Cpu).unwrap();
    let req = Txt2ImgRequest { prompts: vec!["a red barn".into()], steps: 3, width: 16, height: 16, seed: 4, ..Default::default() };
    let auto = generate(&mut cpu, UnetIo::Auto, &req, Init::Noise);
    match io_path(&auto) {
        UnetIoPath::HostTensors { reason } => assert!(reason.contains("CPU EP"), "{reason}"),
        other => panic!("auto on ORT's CPU EP took {}", other.describe()),
    }
    // Binding works on the CPU EP as well (host memory), with the same result.
    let bound = generate(&mut cpu, UnetIo::Binding, &req, Init::Noise);
    assert!(io_path(&bound).is_binding(), "{}", io_path(&bound).describe());
    assert_same("CPU EP: binding vs host tensors", &bound, &auto);
    // Each step's split adds up to no more than the step.
    for (split, total) in bound.times.unet_splits.iter().zip(&bound.times.unet_steps) {
        let parts = split.prep + split.upload + split.run + split.download + split.scheduler;
        assert!(parts <= *total, "split {parts:?} > step {total:?}");
        assert!(split.run > std::time::Duration::ZERO);
    }
    cleanup(&dir);
}

#[test]
fn unet_io_values_parse() {
    assert_eq!(UnetIo::parse("auto").unwrap(), UnetIo::Auto);
    assert_eq!(UnetIo::parse("binding").unwrap(), UnetIo::Binding);
    assert_eq!(UnetIo::parse("host").unwrap(), UnetIo::Host);
    let e = UnetIo::parse("gpu").unwrap_err().to_string();
    assert!(e.contains("--unet-io `gpu`") && e.contains("auto, binding or host"), "{e}");
}
