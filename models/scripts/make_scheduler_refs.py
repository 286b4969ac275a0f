#!/usr/bin/env python3
"""Reference trajectories for quilt's Rust schedulers, from diffusers' own schedulers.

Writes models/tests/data/scheduler_refs.json. For every case (a scheduler class and a
scheduler_config.json) it records the timesteps and sigmas after set_timesteps(STEPS),
init_noise_sigma, and for each denoising step the scaled model input and the sample step()
returns. The model outputs are fixed seeded random tensors (stored once, shared by every case);
the noise Euler ancestral draws inside step() is captured and stored per case, so the Rust
test can feed the same noise. Each case also records add_noise() (img2img) at one timestep.

Run once with diffusers 0.42.1 and CPU torch:
    python models/scripts/make_scheduler_refs.py
"""
import json
import os
from pathlib import Path

import numpy as np
import torch
import diffusers
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_a_module

STEPS = 10
SHAPE = (1, 4, 4, 4)
OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "scheduler_refs.json"

# Stable Diffusion 1.x's scheduler_config.json values; cases override some of them.
SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
          steps_offset=1, prediction_type="epsilon")
LINEAR = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")

CASES = [
    ("ddim_sd15", DDIMScheduler, {**SD, "set_alpha_to_one": False, "clip_sample": False}),
    ("ddim_trailing_v", DDIMScheduler, {**SD, "set_alpha_to_one": True, "clip_sample": False,
                                        "timestep_spacing": "trailing", "prediction_type": "v_prediction"}),
    ("ddim_linspace_linear_clip", DDIMScheduler, {**LINEAR, "clip_sample": True, "clip_sample_range": 1.0,
                                                  "timestep_spacing": "linspace"}),
    ("pndm_sd15", PNDMScheduler, {**SD, "skip_prk_steps": True, "set_alpha_to_one": False}),
    ("pndm_trailing_v", PNDMScheduler, {**SD, "skip_prk_steps": True, "set_alpha_to_one": True,
                                        "timestep_spacing": "trailing", "prediction_type": "v_prediction"}),
    ("pndm_linspace_linear", PNDMScheduler, {**LINEAR, "skip_prk_steps": True, "timestep_spacing": "linspace"}),
    ("euler_sd15", EulerDiscreteScheduler, {**SD}),
    ("euler_linspace_v", EulerDiscreteScheduler, {**SD, "timestep_spacing": "linspace",
                                                  "prediction_type": "v_prediction"}),
    ("euler_trailing_karras", EulerDiscreteScheduler, {**SD, "timestep_spacing": "trailing",
                                                       "use_karras_sigmas": True}),
    ("euler_a_sd15", EulerAncestralDiscreteScheduler, {**SD}),
    ("euler_a_trailing_v", EulerAncestralDiscreteScheduler, {**SD, "timestep_spacing": "trailing",
                                                             "prediction_type": "v_prediction"}),
    ("dpmpp_2m_sd15", DPMSolverMultistepScheduler, {**SD}),
    ("dpmpp_2m_karras", DPMSolverMultistepScheduler, {**SD, "use_karras_sigmas": True}),
    ("dpmpp_2m_leading_v", DPMSolverMultistepScheduler, {**SD, "timestep_spacing": "leading",
                                                         "prediction_type": "v_prediction"}),
    ("dpmpp_2m_trailing_linear", DPMSolverMultistepScheduler, {**LINEAR, "timestep_spacing": "trailing"}),
]

CLASS_NAMES = {
    DDIMScheduler: "DDIMScheduler",
    PNDMScheduler: "PNDMScheduler",
    EulerDiscreteScheduler: "EulerDiscreteScheduler",
    EulerAncestralDiscreteScheduler: "EulerAncestralDiscreteScheduler",
    DPMSolverMultistepScheduler: "DPMSolverMultistepScheduler",
}


def floats(t) -> list:
    """f32 values with 9 significant digits: parses back to the identical f32."""
    a = np.asarray(t, dtype=np.float32).reshape(-1)
    return [float(f"{v:.9g}") for v in a.tolist()]


def exact(t) -> list:
    """Timesteps and sigmas as f64 (timesteps are integers or f32 values; both exact in f64)."""
    return [float(v) for v in np.asarray(t).reshape(-1).tolist()]


class NoiseRecorder:
    """Stands in for randn_tensor inside Euler ancestral's step(): draws from a seeded generator and
    remembers what it returned."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)
        self.drawn = []

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        noise = torch.randn(shape, generator=self.gen, dtype=torch.float32).to(dtype or torch.float32)
        self.drawn.append(floats(noise))
        return noise


def run_case(name, cls, config, model_outputs, start_sample, img2img):
    sched = cls(**config)
    sched.set_timesteps(STEPS)
    timesteps = sched.timesteps.clone()
    recorder = NoiseRecorder(seed=1234)
    euler_a_module.randn_tensor = recorder
    sample = start_sample * sched.init_noise_sigma
    first = sample.clone()
    steps = []
    for i, t in enumerate(timesteps):
        scaled = sched.scale_model_input(sample, t)
        out = model_outputs[i]
        sample = sched.step(out, t, sample).prev_sample
        steps.append({"scaled_input": floats(scaled), "prev_sample": floats(sample)})

    # img2img: a fresh scheduler, begin_index as the pipelines set it, add_noise at that timestep.
    sched2 = cls(**config)
    sched2.set_timesteps(STEPS)
    begin = 3 * sched2.order
    if hasattr(sched2, "set_begin_index"):
        sched2.set_begin_index(begin)
    t_begin = sched2.timesteps[begin:begin + 1]
    noisy = sched2.add_noise(img2img["original"], img2img["noise"], t_begin)

    case = {
        "name": name,
        "class": CLASS_NAMES[cls],
        "config": config,
        "timesteps": exact(timesteps),
        "init_noise_sigma": float(sched.init_noise_sigma),
        "initial_sample": floats(first),
        "steps": steps,
        "add_noise": {"begin_index": begin, "timestep": float(t_begin[0]), "noisy": floats(noisy)},
    }
    if hasattr(sched, "sigmas"):
        case["sigmas"] = exact(sched.sigmas.to(torch.float32))
    if recorder.drawn:
        case["noise"] = recorder.drawn
    return case


def main():
    gen = torch.Generator().manual_seed(0)
    start_sample = torch.randn(SHAPE, generator=gen)
    # One more model output than steps: PNDM's skip_prk schedule repeats a timestep (STEPS + 1 steps).
    model_outputs = [torch.randn(SHAPE, generator=gen) for _ in range(STEPS + 1)]
    img2img = {"original": torch.randn(SHAPE, generator=gen), "noise": torch.randn(SHAPE, generator=gen)}
    cases = [run_case(name, cls, cfg, model_outputs, start_sample, img2img) for name, cls, cfg in CASES]
    doc = {
        "generator": "models/scripts/make_scheduler_refs.py",
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "shape": list(SHAPE),
        "num_inference_steps": STEPS,
        "start_sample": floats(start_sample),
        "model_outputs": [floats(m) for m in model_outputs],
        "img2img_original": floats(img2img["original"]),
        "img2img_noise": floats(img2img["noise"]),
        "cases": cases,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes, {len(cases)} cases)")


if __name__ == "__main__":
    main()
