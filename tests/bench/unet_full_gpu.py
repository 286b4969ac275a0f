"""Full-size SD 1.5 UNet (random weights) on the GPU machine: ONNX export, inputs, PyTorch reference
and PyTorch eager timings, for `tests/bench/unet_full_gpu.sh` to compare quilt's CUDA backend with.

    python tests/bench/unet_full_gpu.py WORK_DIR

Builds the UNet exactly as `models/fixtures/make_fixtures.py` builds `unet_full` (diffusers
UNet2DConditionModel with SD 1.5's config, fp32, the same per-model seed and seeded noise on
constant parameters), exports it with the TorchScript exporter (opset 17, Optimum's input/output
names and dynamic axes) to WORK_DIR/unet/model.onnx with all weights in one external data file
model.onnx_data, and writes, for batch 2, a 64x64 latent and sequence 77:
  WORK_DIR/inputs/{sample,timestep,encoder_hidden_states}.bin   raw little-endian f32
  WORK_DIR/reference.bin   PyTorch eager fp32 output on the GPU, TF32 off (raw f32)
Then times PyTorch eager on the same inputs (CUDA events, median of 20 after 3 warm-ups): fp32 with
TF32 off, fp32 with TF32 on, and fp16 (model and inputs cast with .half()). diffusers' default
attention processor is used (torch SDPA, so flash/memory-efficient attention kernels). Prints one
JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import numpy as np
import onnx
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "models", "fixtures"))
import make_fixtures as mf  # noqa: E402

DIMS = {"batch": 2, "height": 64, "width": 64, "sequence": 77}
TIMESTEP = 500.0
WARMUP, ITERS = 3, 20


def unet_spec() -> mf.ModelSpec:
    return next(s for s in mf.model_specs() if s.name == "unet_full")


def export(spec: mf.ModelSpec, model: torch.nn.Module, out_dir: str) -> dict:
    """TorchScript export traced at make_fixtures' small dims (the axes stay dynamic), then every
    initializer moved into one external data file next to the model."""
    os.makedirs(out_dir, exist_ok=True)
    final = os.path.join(out_dir, "model.onnx")
    t0 = time.time()
    args = mf.example_args(spec, spec.export_dims)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        with mf.quiet():
            mf.export_torchscript(spec, model, args, path)
        export_s = time.time() - t0
        proto = onnx.load(path)  # > 2 GB: the exporter wrote the weights as separate files
    problems = mf.check_dynamic(spec, proto)
    if problems:
        raise RuntimeError("dynamic axes lost: " + "; ".join(problems))
    onnx.save_model(proto, final, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx_data", size_threshold=1024)
    return {"export_s": round(export_s, 1), "save_s": round(time.time() - t0 - export_s, 1),
            "onnx_bytes": os.path.getsize(final),
            "data_bytes": os.path.getsize(os.path.join(out_dir, "model.onnx_data")),
            "nodes": len(proto.graph.node), "io_dims": mf.graph_input_dims(proto)}


def make_inputs() -> dict[str, np.ndarray]:
    gen = np.random.default_rng(mf.SEED + 1)
    b, h, w, s = DIMS["batch"], DIMS["height"], DIMS["width"], DIMS["sequence"]
    return {
        "sample": gen.standard_normal((b, 4, h, w)).astype(np.float32),
        "timestep": np.array(TIMESTEP, dtype=np.float32),
        "encoder_hidden_states": gen.standard_normal((b, s, 768)).astype(np.float32),
    }


def time_eager(model: torch.nn.Module, args: tuple) -> dict:
    """Median/min of ITERS forward passes after WARMUP, each timed with CUDA events."""
    times = []
    with torch.inference_mode():
        for _ in range(WARMUP):
            model(*args)
        torch.cuda.synchronize()
        for _ in range(ITERS):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(*args)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    times.sort()
    return {"median_ms": round(float(np.median(times)), 3), "min_ms": round(times[0], 3)}


def main() -> int:
    work = sys.argv[1]
    spec = unet_spec()
    t0 = time.time()
    model = mf.seeded_model(spec)
    build_s = time.time() - t0
    result = {"model": "unet_full (SD 1.5 config, random weights)", "dims": DIMS,
              "parameters": sum(p.numel() for p in model.parameters()), "build_s": round(build_s, 1),
              "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}
    import diffusers
    result["diffusers"] = diffusers.__version__
    result.update(export(spec, model, os.path.join(work, "unet")))

    inputs = make_inputs()
    os.makedirs(os.path.join(work, "inputs"), exist_ok=True)
    for name, arr in inputs.items():
        arr.astype("<f4").tofile(os.path.join(work, "inputs", f"{name}.bin"))

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = model.cuda()
    args = tuple(torch.from_numpy(inputs[n]).cuda() for n in ("sample", "timestep", "encoder_hidden_states"))
    with torch.inference_mode():
        ref = model(*args).float().cpu().numpy()
    ref.astype("<f4").tofile(os.path.join(work, "reference.bin"))
    result["reference_shape"] = list(ref.shape)
    result["reference_max_abs"] = float(np.abs(ref).max())
    result["eager_fp32"] = time_eager(model, args)

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    result["eager_fp32_tf32"] = time_eager(model, args)

    model = model.half()
    args16 = tuple(a.half() for a in args)
    result["eager_fp16"] = time_eager(model, args16)
    with torch.inference_mode():
        out16 = model(*args16).float().cpu().numpy()
    result["fp16_vs_fp32_max_abs"] = float(np.abs(out16 - ref).max())
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
