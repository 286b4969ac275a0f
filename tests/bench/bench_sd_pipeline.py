"""Issue 5's benchmark: whole Stable Diffusion pipelines, SD 1.5-shaped with random weights, one
run, same weights: `quilt sd` (ORT + quilt's GPU device) against diffusers' PyTorch pipelines,
eager and with the UNet under torch.compile `reduce-overhead`.

    python tests/bench/bench_sd_pipeline.py --out OUT_DIR --quilt-bin BIN/quilt --ep-lib BIN/libquilt_ep.so
        [--work /tmp/sd_pipeline] [--pipelines txt2img,img2img,inpaint,alt] [--modes quilt,eager,compile_ro]
        [--steps 50] [--size 512] [--repeat 3] [--quilt-options precision=fp16] [--quick]

Models: make_fixtures' full-size specs (SD 1.5's UNet, its 9-channel inpainting variant, the SD
VAE, CLIP ViT-L/14's text encoder), seeded random weights, exported in fp32 with the TorchScript
exporter into Optimum's layout under WORK (sd15/, sd15_inpaint/ sharing the text encoder and
VAE), with the tiny CLIP tokenizer of the fixtures (every id it makes is a valid ViT-L id; a
tokenizer changes no timing) and SD 1.5's PNDM scheduler config. quilt runs those fp32 files with
`--quilt-options` (default `precision=fp16`); PyTorch runs the same modules cast to fp16.

`alt` is AltDiffusion's txt2img: the same UNet, VAE and scheduler behind a full-size XLM-RoBERTa
text encoder (`RobertaSeriesModelWithTransformation` at AltDiffusion's config: 24 layers, 1024 wide,
250002 tokens, projected to 768; seeded random weights) and the fixtures' tiny XLM-R tokenizer, in its
own directory (sd15_alt/, the shared parts linked). quilt only: diffusers 0.42 keeps AltDiffusion among
its deprecated pipelines, so no PyTorch pipeline is timed against it.

Requests: 512x512 (`--size`), 50 steps, batch 1, guidance 7.5 with a negative prompt; img2img at
strength 0.75 (37 steps run), inpaint at strength 1 with a centred box mask, on a generated image.

Timing: end to end (tokenize → text encoder → denoising loop → VAE decode; img2img/inpaint also
VAE encode), host wall clock after synchronising, median of `--repeat` runs after one warm-up.
quilt: `quilt sd ... --repeat N` in a child process (its "median total" line; per-stage times
from its last run), sessions created once per child (`session_create_s` = its "sessions built"
line). diffusers: `pipe(...)` with output_type "np" (VAE decode included), torch.cuda
synchronize around it. compile_ro: `torch.compile(unet, mode="reduce-overhead")`, warm-up runs
until compiled (two), then the timed runs.

`--quilt-unet-io auto|binding|host` is passed as `quilt sd --unet-io` (auto: the UNet's tensors stay
on the GPU between steps by IO binding; host: host tensors every step, the earlier path), to
compare the two in one session.

Results: OUT/sd_pipeline.json (written after every case) with the card name and per case
pipeline, size, steps, quilt_ms, eager_ms, compile_ro_ms, stages (quilt's per-stage times, with
unet_step_split_us: a UNet step's prep/upload/run/download/scheduler split, mean of steps 2..N),
unet_io (quilt's "unet io" line: which path moved the UNet's tensors, and why).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "models", "fixtures"))
sys.path.insert(0, HERE)

PROMPT = "a photograph of an astronaut riding a horse on mars"
NEGATIVE = "blurry, low quality"
# AltDiffusion's text encoder (BAAI/AltDiffusion's RobertaSeriesConfig; XLM-R large).
ALT_XLMR_CONFIG = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, vocab_size=250002,
                       max_position_embeddings=514, type_vocab_size=1, hidden_act="gelu", layer_norm_eps=1e-5, pad_token_id=1,
                       bos_token_id=0, eos_token_id=2, project_dim=768, use_attention_mask=True)
GUIDANCE = 7.5
PNDM_SD15 = {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
             "clip_sample": False, "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
             "steps_offset": 1, "trained_betas": None}
VAE_SCALING = 0.18215


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_json(path: str, value) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=1)
        f.write("\n")


# --------------------------------------------------------------------------------------------
# Models and the exported pipeline directories
# --------------------------------------------------------------------------------------------


def build_modules(quick: bool) -> dict:
    """The torch modules (fp32, CPU): make_fixtures' seeded builders, full-size unless --quick."""
    import make_fixtures as mf

    specs = {s.name: s for s in mf.model_specs()}
    pick = (lambda full, tiny: specs[tiny]) if quick else (lambda full, tiny: specs[full])
    unet_spec = pick("unet_full", "unet")
    decoder_spec = pick("vae_decoder_full", "vae_decoder")
    clip_spec = pick("text_encoder_full", "text_encoder")
    unet = mf.seeded_model(unet_spec)
    # The inpainting UNet: the same config with 9 input channels (latents, mask, masked latents).
    inpaint_config = dict(unet_spec.config, in_channels=9)
    cross = inpaint_config["cross_attention_dim"]
    inpaint_spec = dataclasses.replace(unet_spec, name=unet_spec.name + "_inpaint", build=mf._build_unet(inpaint_config),
                                       config=inpaint_config, inputs=mf._unet_inputs(9, cross))
    inpaint = mf.seeded_model(inpaint_spec)
    decoder = mf.seeded_model(decoder_spec)
    vae = decoder.vae
    vae.register_to_config(scaling_factor=VAE_SCALING)
    encoder_spec = dataclasses.replace(specs["vae_encoder"], name="vae_encoder_of_" + decoder_spec.name,
                                       build=lambda: mf.VaeEncoderForExport(vae), config=decoder_spec.config)
    clip = mf.seeded_model(clip_spec)
    # AltDiffusion's text encoder (built only when the alt pipeline is asked for: 560 M parameters).
    xlmr_config = dict(specs["text_encoder_xlmr"].config) if quick else dict(ALT_XLMR_CONFIG)
    xlmr_spec = dataclasses.replace(specs["text_encoder_xlmr"], name="text_encoder_xlmr" + ("" if quick else "_full"),
                                    build=mf._build_xlmr(xlmr_config), config=xlmr_config)
    return dict(mf=mf, unet=(unet_spec, unet), inpaint=(inpaint_spec, inpaint), vae_decoder=(decoder_spec, decoder),
                vae_encoder=(encoder_spec, mf.VaeEncoderForExport(vae)), clip=(clip_spec, clip), xlmr=xlmr_spec,
                xlmr_module=lambda: mf.seeded_model(xlmr_spec))


def export_pipelines(m: dict, work: str, want_inpaint: bool, want_alt: bool = False, reuse: bool = False) -> dict:
    from bench_unet import export_model

    mf = m["mf"]
    sd = os.path.join(work, "sd15")
    info = {}
    for part, key in [("unet", "unet"), ("vae_decoder", "vae_decoder"), ("vae_encoder", "vae_encoder"), ("text_encoder", "clip")]:
        spec, module = m[key]
        t = time.time()
        info[part] = export_model(mf, spec, module, os.path.join(sd, part), reuse)
        log(f"exported {part} in {time.time() - t:.1f} s")
    unet_cfg = m["unet"][0].config
    vae_cfg = m["vae_decoder"][0].config
    clip_cfg = m["clip"][0].config
    vae_json = {"block_out_channels": list(vae_cfg["block_out_channels"]), "latent_channels": 4, "scaling_factor": VAE_SCALING}
    for part, cfg in [("unet", {"block_out_channels": list(unet_cfg["block_out_channels"]), "in_channels": 4, "out_channels": 4,
                                "cross_attention_dim": unet_cfg["cross_attention_dim"]}),
                      ("vae_decoder", vae_json), ("vae_encoder", vae_json),
                      ("text_encoder", {"vocab_size": clip_cfg["vocab_size"], "hidden_size": clip_cfg["hidden_size"]})]:
        write_json(os.path.join(sd, part, "config.json"), cfg)
    os.makedirs(os.path.join(sd, "scheduler"), exist_ok=True)
    write_json(os.path.join(sd, "scheduler", "scheduler_config.json"), PNDM_SD15)
    shutil.copytree(os.path.join(ROOT, "models", "fixtures", "pipeline", "tokenizer_clip"), os.path.join(sd, "tokenizer"), dirs_exist_ok=True)
    index = {"_class_name": "ORTStableDiffusionPipeline", "_diffusers_version": "0.42.1",
             **{p: ["diffusers", "OnnxRuntimeModel"] for p in ("text_encoder", "unet", "vae_decoder", "vae_encoder")},
             "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "PNDMScheduler"],
             "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}
    write_json(os.path.join(sd, "model_index.json"), index)
    dirs = {"sd": sd}
    if want_inpaint:
        inp = os.path.join(work, "sd15_inpaint")
        os.makedirs(inp, exist_ok=True)
        spec, module = m["inpaint"]
        t = time.time()
        info["unet_inpaint"] = export_model(mf, spec, module, os.path.join(inp, "unet"), reuse)
        log(f"exported the inpainting unet in {time.time() - t:.1f} s")
        write_json(os.path.join(inp, "unet", "config.json"), dict(json.load(open(os.path.join(sd, "unet", "config.json"))), in_channels=9))
        for shared in ("text_encoder", "vae_decoder", "vae_encoder", "tokenizer", "scheduler"):
            link = os.path.join(inp, shared)
            if not os.path.exists(link):
                os.symlink(os.path.join(sd, shared), link)
        write_json(os.path.join(inp, "model_index.json"), dict(index, _class_name="ORTStableDiffusionInpaintPipeline"))
        dirs["inpaint"] = inp
    if want_alt:
        alt = os.path.join(work, "sd15_alt")
        os.makedirs(alt, exist_ok=True)
        spec = m["xlmr"]
        t = time.time()
        info["text_encoder_xlmr"] = export_model(mf, spec, m["xlmr_module"](), os.path.join(alt, "text_encoder"), reuse)
        log(f"exported the XLM-R text encoder in {time.time() - t:.1f} s")
        cfg = spec.config
        write_json(os.path.join(alt, "text_encoder", "config.json"), {"vocab_size": cfg["vocab_size"], "hidden_size": cfg["hidden_size"],
                                                                       "max_position_embeddings": cfg["max_position_embeddings"]})
        shutil.copytree(os.path.join(ROOT, "models", "fixtures", "pipeline", "tokenizer_xlmr"), os.path.join(alt, "tokenizer"), dirs_exist_ok=True)
        for shared in ("unet", "vae_decoder", "vae_encoder", "scheduler"):
            link = os.path.join(alt, shared)
            if not os.path.exists(link):
                os.symlink(os.path.join(sd, shared), link)
        write_json(os.path.join(alt, "model_index.json"),
                   dict(index, _class_name="AltDiffusionPipeline", tokenizer=["transformers", "XLMRobertaTokenizerFast"]))
        dirs["alt"] = alt
    info["dirs"] = dirs
    return info


def input_image(size: int, path: str):
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size]
    rgb = np.stack([x / size, y / size, (x + y) / (2 * size)], axis=-1) * 255
    img = Image.fromarray(rgb.astype(np.uint8), "RGB")
    img.save(path)
    return img


def box_mask(size: int, path: str):
    from PIL import Image

    m = np.zeros((size, size), np.uint8)
    m[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
    img = Image.fromarray(m, "L")
    img.save(path)
    return img


# --------------------------------------------------------------------------------------------
# quilt: `quilt sd` in a child process
# --------------------------------------------------------------------------------------------


def quilt_case(args, pipeline: str, model_dir: str, image_path: str, mask_path: str) -> dict:
    out_png = os.path.join(args.out, f"quilt_{pipeline}.png")
    cmd = [args.quilt_bin, "sd", "txt2img" if pipeline == "alt" else pipeline, "--model", model_dir, "--prompt", PROMPT, "--negative", NEGATIVE,
           "--steps", str(args.steps), "--guidance", str(GUIDANCE), "--seed", "1", "--repeat", str(args.repeat + 1),
           "--ep-lib", args.ep_lib, "--out", out_png]
    if args.ort_lib:
        cmd += ["--ort-lib", args.ort_lib]
    if pipeline in ("txt2img", "alt"):
        cmd += ["--size", f"{args.size}x{args.size}"]
    if pipeline == "img2img":
        cmd += ["--image", image_path, "--strength", "0.75"]
    if pipeline == "inpaint":
        cmd += ["--image", image_path, "--mask", mask_path, "--strength", "1.0"]
    for kv in filter(None, args.quilt_options.split(",")):
        cmd += ["--ep-option", kv]
    cmd += ["--unet-io", args.quilt_unet_io]
    log("quilt: " + " ".join(cmd))
    t = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.quilt_timeout)
    text = proc.stdout.replace("\r", "\n")
    with open(os.path.join(args.out, f"quilt_{pipeline}.log"), "w") as f:
        f.write(text + "\n--- stderr\n" + proc.stderr)
    if proc.returncode != 0:
        return {"error": (proc.stderr or text)[-2000:], "wall_s": round(time.time() - t, 1)}
    totals = [float(v) for v in re.findall(r"time      run \d+ total ([\d.]+) ms", text)]
    timed = totals[1:]  # the first run is the warm-up (first call at this shape)
    r = {"quilt_ms": round(statistics.median(timed), 1), "quilt_runs_ms": timed, "quilt_first_run_ms": totals[0] if totals else None,
         "wall_s": round(time.time() - t, 1)}
    built = re.search(r"sessions built in ([\d.]+) ms", text)
    r["session_create_s"] = round(float(built.group(1)) / 1e3, 2) if built else None
    r["device_line"] = next((line for line in text.splitlines() if line.startswith("pipeline")), "")
    stages = {}
    for name in ("text_encoder", "vae_encoder", "vae_decoder"):
        m = re.findall(rf"time      {name} ([\d.]+) ms", text)
        if m:
            stages[f"{name}_ms"] = float(m[-1])
    m = re.findall(r"time      unet ([\d.]+) ms total, ([\d.]+) ms per step", text)
    if m:
        stages["unet_total_ms"], stages["unet_ms_per_step"] = float(m[-1][0]), float(m[-1][1])
    # How the UNet's tensors moved (device binding or host tensors, and why), and where a step's time
    # went (mean of steps 2..N: step 1 also sets the binding up), in microseconds.
    io = re.findall(r"^unet io   (.*)$", text, re.M)
    if io:
        r["unet_io"] = io[-1]
    m = re.findall(r"time      unet step split \(mean of steps 2-\d+\): prep ([\d.]+) us, upload ([\d.]+) us, "
                   r"run ([\d.]+) us, download ([\d.]+) us, scheduler ([\d.]+) us", text)
    if m:
        stages["unet_step_split_us"] = dict(zip(("prep", "upload", "run", "download", "scheduler"), map(float, m[-1])))
    r["stages"] = stages
    return r


# --------------------------------------------------------------------------------------------
# diffusers: eager and torch.compile reduce-overhead
# --------------------------------------------------------------------------------------------


def torch_pipelines(m: dict, want: list[str]) -> dict:
    import torch
    from diffusers import PNDMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(os.path.join(ROOT, "models", "fixtures", "pipeline", "tokenizer_clip"))
    vae = m["vae_decoder"][1].vae.to("cuda", torch.float16)
    clip = m["clip"][1].model.to("cuda", torch.float16)
    unet = m["unet"][1].unet.to("cuda", torch.float16)
    common = dict(vae=vae, text_encoder=clip, tokenizer=tok, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipes = {}
    for name in want:
        scheduler = PNDMScheduler.from_config(PNDM_SD15)
        if name == "txt2img":
            pipes[name] = StableDiffusionPipeline(unet=unet, scheduler=scheduler, **common)
        elif name == "img2img":
            pipes[name] = StableDiffusionImg2ImgPipeline(unet=unet, scheduler=scheduler, **common)
        else:
            inpaint_unet = m["inpaint"][1].unet.to("cuda", torch.float16)
            pipes[name] = StableDiffusionInpaintPipeline(unet=inpaint_unet, scheduler=scheduler, **common)
        pipes[name].set_progress_bar_config(disable=True)
    return pipes


def torch_call(pipe, name: str, args, image, mask):
    kw = dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=args.steps, guidance_scale=GUIDANCE, output_type="np")
    if name == "txt2img":
        return pipe(**kw, height=args.size, width=args.size)
    if name == "img2img":
        return pipe(**kw, image=image, strength=0.75)
    return pipe(**kw, image=image, mask_image=mask, height=args.size, width=args.size, strength=1.0)


def time_torch(fn, repeat: int, warmup: int) -> list[float]:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return times


# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "sd_pipeline_out"))
    ap.add_argument("--work", default="/tmp/sd_pipeline")
    ap.add_argument("--pipelines", default="txt2img,img2img,inpaint")
    ap.add_argument("--modes", default="quilt,eager,compile_ro")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quilt-bin", default=os.path.join(ROOT, "target", "release", "quilt"))
    ap.add_argument("--ep-lib", default=os.environ.get("QUILT_EP_LIB", os.path.join(ROOT, "target", "release", "libquilt_ep.so")))
    ap.add_argument("--ort-lib", default=os.environ.get("ORT_DYLIB_PATH"))
    ap.add_argument("--quilt-options", default="precision=fp16")
    ap.add_argument("--quilt-unet-io", default="auto", choices=["auto", "binding", "host"])
    ap.add_argument("--quilt-timeout", type=float, default=400)
    ap.add_argument("--reuse-export", action="store_true", help="keep WORK's models from an earlier run (same seeds, same weights)")
    ap.add_argument("--quick", action="store_true", help="tiny fixture configs, 64x64, 4 steps: a dry run of every path")
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.steps = 64, 4
    want = [p for p in args.pipelines.split(",") if p]
    modes = [m for m in args.modes.split(",") if m]
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    import torch
    import diffusers

    doc = {"card": torch.cuda.get_device_name(0), "date": datetime.date.today().isoformat(), "torch": torch.__version__,
           "diffusers": diffusers.__version__, "quick": args.quick, "prompt": PROMPT, "guidance": GUIDANCE,
           "quilt_options": args.quilt_options, "cases": []}
    result_path = os.path.join(args.out, "sd_pipeline.json")
    torch.set_grad_enabled(False)
    t = time.time()
    m = build_modules(args.quick)
    log(f"built modules in {time.time() - t:.1f} s")
    doc["export"] = export_pipelines(m, args.work, "inpaint" in want, "alt" in want, args.reuse_export)
    image_path, mask_path = os.path.join(args.work, "image.png"), os.path.join(args.work, "mask.png")
    image, mask = input_image(args.size, image_path), box_mask(args.size, mask_path)
    cases = {p: {"pipeline": p, "size": args.size, "steps": args.steps, "batch": 1,
                 "strength": {"txt2img": None, "img2img": 0.75, "inpaint": 1.0, "alt": None}[p]} for p in want}
    # quilt first, while PyTorch holds nothing on the GPU.
    if "quilt" in modes:
        for p in want:
            model_dir = doc["export"]["dirs"][{"inpaint": "inpaint", "alt": "alt"}.get(p, "sd")]
            cases[p].update(quilt_case(args, p, model_dir, image_path, mask_path))
            log(f"quilt {p}: {cases[p].get('quilt_ms')} ms {cases[p].get('error', '')[:300]}")
            doc["cases"] = list(cases.values())
            write_json(result_path, doc)
    torch_want = [p for p in want if p != "alt"]  # no PyTorch AltDiffusion (see the module doc)
    pipes = torch_pipelines(m, torch_want)
    if "eager" in modes:
        for p in torch_want:
            times = time_torch(lambda: torch_call(pipes[p], p, args, image, mask), args.repeat, 1)
            cases[p]["eager_ms"] = round(statistics.median(times), 1)
            cases[p]["eager_runs_ms"] = [round(x, 1) for x in times]
            log(f"eager {p}: {cases[p]['eager_ms']} ms")
            doc["cases"] = list(cases.values())
            write_json(result_path, doc)
    if "compile_ro" in modes:
        compiled = {}
        for p in torch_want:
            unet = pipes[p].unet
            if id(unet) not in compiled:
                compiled[id(unet)] = torch.compile(unet, mode="reduce-overhead")
            pipes[p].unet = compiled[id(unet)]
            t = time.time()
            times = time_torch(lambda: torch_call(pipes[p], p, args, image, mask), args.repeat, 2)
            cases[p]["compile_ro_ms"] = round(statistics.median(times), 1)
            cases[p]["compile_ro_runs_ms"] = [round(x, 1) for x in times]
            cases[p]["compile_ro_wall_s"] = round(time.time() - t, 1)
            log(f"compile_ro {p}: {cases[p]['compile_ro_ms']} ms (compile + warm-up + runs {cases[p]['compile_ro_wall_s']} s)")
            doc["cases"] = list(cases.values())
            write_json(result_path, doc)
    for c in cases.values():
        for base in ("eager_ms", "compile_ro_ms"):
            if c.get("quilt_ms") and c.get(base):
                c[f"quilt_vs_{base[:-3]}"] = round(c[base] / c["quilt_ms"], 3)
    doc["cases"] = list(cases.values())
    write_json(result_path, doc)
    print(f"{'pipeline':10} {'quilt ms':>10} {'eager ms':>10} {'compile_ro':>10}  per-step unet (quilt)")
    for c in cases.values():
        print(f"{c['pipeline']:10} {c.get('quilt_ms', '-')!s:>10} {c.get('eager_ms', '-')!s:>10} {c.get('compile_ro_ms', '-')!s:>10}  "
              f"{c.get('stages', {}).get('unet_ms_per_step', '-')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
