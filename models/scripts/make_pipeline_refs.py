#!/usr/bin/env python3
"""Reference runs of diffusers' own PyTorch pipelines on the tiny fixture weights, for
models/tests/diffusers_refs.rs.

The fixtures (models/fixtures/make_fixtures.py) are exports of seeded torch modules; this script
rebuilds the same modules (same seeds), checks each one against its committed ONNX file with
onnxruntime (so the weights really are the fixtures' weights), assembles them into diffusers'
StableDiffusionPipeline, StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline and
AltDiffusionPipeline with the bundled pipelines' tokenizers and scheduler config, and runs each
case on the CPU in fp32. Writes models/tests/data/diffusers_refs.json (per case: the request, the
initial noise it used, the final latents and the raw VAE decoder output in [-1, 1]) and the input
image and mask PNGs next to it.

Two things are pinned so that a Rust run can reproduce diffusers' exactly:
  - the initial Gaussian noise: drawn here with numpy and handed to diffusers (`latents=` for
    txt2img; the `randn_tensor` the img2img/inpaint pipelines call is replaced by one returning it);
    the Rust test passes the same noise through `Txt2ImgRequest::noise`;
  - the VAE encoding: diffusers samples the latent distribution (`retrieve_latents`, mode
    "sample"); quilt takes its mean (Optimum's ORT pipelines do the same), so the script makes
    diffusers take the mean too (`retrieve_latents` replaced by the distribution's mode).
Schedulers are the deterministic ones (Euler ancestral draws per-step noise; its trajectory is
checked against diffusers in scheduler_refs.json instead).

Run once (CPU torch is enough), with diffusers 0.42.1, transformers 5.x, onnxruntime:
    python models/scripts/make_pipeline_refs.py
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
OUT_DIR = ROOT / "tests" / "data"
OUT = OUT_DIR / "diffusers_refs.json"
sys.path.insert(0, str(FIXTURES))

import make_fixtures  # noqa: E402  (the fixtures' module builders and seeds)
import diffusers  # noqa: E402
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)
from diffusers.pipelines.deprecated.alt_diffusion import AltDiffusionPipeline  # noqa: E402
import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img as img2img_module  # noqa: E402
import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint as inpaint_module  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import CLIPTokenizer, XLMRobertaTokenizerFast  # noqa: E402

# The bundled pipelines' scheduler config (models/src/sd/bundled.rs: SD 1.5's).
SCHEDULER_CONFIG = {
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "trained_betas": None,
}
SCHEDULERS = {"pndm": PNDMScheduler, "ddim": DDIMScheduler, "euler": EulerDiscreteScheduler,
              "dpm++2m": DPMSolverMultistepScheduler}
# The bundled VAE's scaling factor (bundled.rs writes it into vae_*/config.json).
VAE_SCALING = 0.18215

CASES = [
    dict(name="txt2img_pndm", pipeline="txt2img", kind="sd", scheduler="pndm", prompts=["a red fox in the snow"],
         negative="blurry", images_per_prompt=1, steps=6, width=32, height=32, guidance=7.5, seed=11),
    dict(name="txt2img_ddim_batch", pipeline="txt2img", kind="sd", scheduler="ddim",
         prompts=["a lighthouse on a cliff", "two cats on a sofa"], negative="low quality", images_per_prompt=2,
         steps=4, width=16, height=24, guidance=5.0, seed=12),
    dict(name="txt2img_euler_no_guidance", pipeline="txt2img", kind="sd", scheduler="euler",
         prompts=["an astronaut riding a horse"], negative="", images_per_prompt=1, steps=5, width=24, height=16,
         guidance=1.0, seed=13),
    dict(name="txt2img_dpmpp2m", pipeline="txt2img", kind="sd", scheduler="dpm++2m", prompts=["a bowl of fruit"],
         negative="", images_per_prompt=1, steps=6, width=32, height=32, guidance=7.5, seed=14),
    dict(name="img2img_euler_075", pipeline="img2img", kind="sd", scheduler="euler", prompts=["a watercolor harbour"],
         negative="blurry", images_per_prompt=1, steps=8, width=32, height=32, guidance=7.5, seed=15, strength=0.75),
    dict(name="img2img_ddim_05_batch", pipeline="img2img", kind="sd", scheduler="ddim", prompts=["a castle", "a tree"],
         negative="", images_per_prompt=1, steps=6, width=32, height=32, guidance=6.0, seed=16, strength=0.5),
    dict(name="inpaint_dpmpp2m_1", pipeline="inpaint", kind="inpaint", scheduler="dpm++2m", prompts=["a cat on a bench"],
         negative="", images_per_prompt=1, steps=5, width=32, height=32, guidance=7.5, seed=17, strength=1.0),
    dict(name="inpaint_ddim_075", pipeline="inpaint", kind="inpaint", scheduler="ddim", prompts=["a red door"],
         negative="dark", images_per_prompt=1, steps=8, width=32, height=32, guidance=7.5, seed=18, strength=0.75),
    dict(name="alt_txt2img_pndm", pipeline="txt2img", kind="alt", scheduler="pndm", prompts=["一座灯塔, watercolor"],
         negative="", images_per_prompt=1, steps=4, width=32, height=32, guidance=7.5, seed=19),
]


def seeded(name: str) -> torch.nn.Module:
    specs = {s.name: s for s in make_fixtures.model_specs()}
    return make_fixtures.seeded_model(specs[name])


def check_against_fixture(name: str, wrapper: torch.nn.Module) -> float:
    """The rebuilt module reproduces its committed ONNX file (same weights): max |torch − ORT|."""
    import onnxruntime as ort

    specs = {s.name: s for s in make_fixtures.model_specs()}
    spec = specs[name]
    dims = spec.test_dims[0]
    gen = np.random.default_rng(5)
    feeds = {i.name: i.make(dims, gen) for i in spec.inputs}
    sess = ort.InferenceSession(str(FIXTURES / name / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, feeds)
    with torch.no_grad():
        want = wrapper(*[torch.from_numpy(feeds[i.name]) for i in spec.inputs])
    want = want if isinstance(want, (tuple, list)) else [want]
    diff = max(float(np.max(np.abs(g - w.numpy()))) for g, w in zip(got, want))
    if diff > 1e-4:
        raise SystemExit(f"{name}: rebuilt torch module differs from {name}/model.onnx by {diff:g}; "
                         "the seeds or library versions do not reproduce the fixtures")
    return diff


def components() -> dict:
    checks = {}
    unet = seeded("unet")
    unet_inpaint = seeded("unet_inpaint")
    encoder = seeded("vae_encoder")
    decoder = seeded("vae_decoder")
    clip = seeded("text_encoder")
    xlmr = seeded("text_encoder_xlmr")
    for name, module in [("unet", unet), ("unet_inpaint", unet_inpaint), ("vae_encoder", encoder),
                         ("vae_decoder", decoder), ("text_encoder", clip), ("text_encoder_xlmr", xlmr)]:
        checks[name] = check_against_fixture(name, module)
    # The fixtures' encoder and decoder come from two differently seeded VAEs: join their halves.
    vae = decoder.vae
    vae.encoder = encoder.vae.encoder
    vae.quant_conv = encoder.vae.quant_conv
    vae.register_to_config(scaling_factor=VAE_SCALING)
    return dict(unet=unet.unet, unet_inpaint=unet_inpaint.unet, vae=vae, clip=clip.model, xlmr=xlmr.model,
                clip_tokenizer=CLIPTokenizer.from_pretrained(str(FIXTURES / "pipeline" / "tokenizer_clip")),
                xlmr_tokenizer=XLMRobertaTokenizerFast.from_pretrained(str(FIXTURES / "pipeline" / "tokenizer_xlmr")),
                checks=checks)


def input_image(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(31)
    # A smooth gradient plus noise: structure for the VAE, no flat areas.
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
    pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def input_mask(width: int, height: int) -> Image.Image:
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4: 3 * height // 4, width // 3: width - 2] = 255
    return Image.fromarray(mask, "L")


def make_pipeline(case: dict, c: dict):
    scheduler = SCHEDULERS[case["scheduler"]].from_config(SCHEDULER_CONFIG)
    common = dict(vae=c["vae"], scheduler=scheduler, safety_checker=None, feature_extractor=None,
                  requires_safety_checker=False)
    if case["kind"] == "alt":
        return AltDiffusionPipeline(text_encoder=c["xlmr"], tokenizer=c["xlmr_tokenizer"], unet=c["unet"], **common)
    clip = dict(text_encoder=c["clip"], tokenizer=c["clip_tokenizer"])
    if case["pipeline"] == "inpaint":
        return StableDiffusionInpaintPipeline(unet=c["unet_inpaint"], **clip, **common)
    if case["pipeline"] == "img2img":
        return StableDiffusionImg2ImgPipeline(unet=c["unet"], **clip, **common)
    return StableDiffusionPipeline(unet=c["unet"], **clip, **common)


def pinned_randn(noise: torch.Tensor):
    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        if tuple(shape) != tuple(noise.shape):
            raise RuntimeError(f"the pipeline drew noise of shape {tuple(shape)}; pinned {tuple(noise.shape)}")
        return noise.clone().to(dtype=dtype or noise.dtype)
    return randn_tensor


def latent_mean(encoder_output, generator=None, sample_mode="sample"):
    return encoder_output.latent_dist.mode()


def run_case(case: dict, c: dict, image: Image.Image, mask: Image.Image) -> dict:
    pipe = make_pipeline(case, c)
    pipe.set_progress_bar_config(disable=True)
    batch = len(case["prompts"]) * case["images_per_prompt"]
    shape = (batch, 4, case["height"] // 2, case["width"] // 2)
    noise = np.random.default_rng(case["seed"]).standard_normal(shape).astype(np.float32)
    noise_t = torch.from_numpy(noise)
    args = dict(prompt=case["prompts"], negative_prompt=[case["negative"]] * len(case["prompts"]),
                num_images_per_prompt=case["images_per_prompt"], num_inference_steps=case["steps"],
                guidance_scale=case["guidance"], output_type="latent")
    for module in (img2img_module, inpaint_module):
        module.randn_tensor = pinned_randn(noise_t)
        module.retrieve_latents = latent_mean
    with torch.no_grad():
        if case["pipeline"] == "txt2img":
            out = pipe(**args, height=case["height"], width=case["width"], latents=noise_t.clone())
        elif case["pipeline"] == "img2img":
            out = pipe(**args, image=image, strength=case["strength"])
        else:
            out = pipe(**args, image=image, mask_image=mask, height=case["height"], width=case["width"],
                       strength=case["strength"])
        latents = out.images
        decoded = c["vae"].decode(latents / VAE_SCALING, return_dict=False)[0]
    assert tuple(latents.shape) == shape, (case["name"], latents.shape)
    record = {k: v for k, v in case.items()}
    record.update(noise=round_list(noise), latents=round_list(latents.numpy()), latent_shape=list(shape),
                  image=round_list(decoded.numpy()), image_shape=list(decoded.shape))
    print(f"{case['name']}: latents |max| {float(latents.abs().max()):.3f}, image range "
          f"[{float(decoded.min()):.3f}, {float(decoded.max()):.3f}]", flush=True)
    return record


def round_list(a: np.ndarray) -> list:
    # 8 significant digits keep float32 exact enough (the tests' tolerances are 1e-3).
    return [float(f"{v:.8g}") for v in np.asarray(a, np.float32).ravel()]


def main() -> int:
    torch.set_grad_enabled(False)
    c = components()
    image, mask = input_image(32, 32), input_mask(32, 32)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    image.save(OUT_DIR / "diffusers_refs_image.png")
    mask.save(OUT_DIR / "diffusers_refs_mask.png")
    cases = [run_case(case, c, image, mask) for case in CASES]
    versions = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                "transformers": __import__("transformers").__version__, "numpy": np.__version__}
    doc = {"note": "written by models/scripts/make_pipeline_refs.py; do not edit",
           "versions": versions, "fixture_checks_max_abs": c["checks"], "vae_scaling": VAE_SCALING,
           "image": "diffusers_refs_image.png", "mask": "diffusers_refs_mask.png", "cases": cases}
    OUT.write_text(json.dumps(doc) + "\n")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes), versions {versions}, fixture checks {c['checks']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
