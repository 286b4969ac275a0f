"""`quilt sd` on the older export layout diffusers' `convert_stable_diffusion_checkpoint_to_onnx.py`
wrote, against the same weights in Optimum's layout.

The legacy directory is made from the bundled tiny pipeline with the old script's interface
(shared/docs/research/ecosystem.md §4): `input_ids` int32, UNet `timestep` int64 of shape [batch],
UNet weights in an external `weights.pb`, a VAE encoder whose output is `latent_sample`, no
per-model `config.json` except the VAE decoder's (the tiny VAE downsamples by 2; without the file
quilt assumes SD's 8, which is right for real SD exports), `OnnxStableDiffusionPipeline` in
`model_index.json` with a null safety checker. The same request on both directories must give
the same PNG byte for byte: the interface changes are exact (integer casts, the mean channels).
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import ROOT

QUILT = ROOT / "target" / "release" / "quilt"


def run_quilt(*args: str) -> str:
    if not QUILT.is_file():
        pytest.fail(f"{QUILT} does not exist: run `cargo build --release -p quilt-models --bin quilt` (scripts/test.sh does)")
    out = subprocess.run([str(QUILT), *args], capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert out.returncode == 0, f"quilt {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]


def int32_input_ids(path: Path) -> None:
    model = onnx.load(str(path))
    g = model.graph
    (ids,) = [i for i in g.input if i.name == "input_ids"]
    rename_uses(g, "input_ids", "input_ids_as_int64")
    ids.type.tensor_type.elem_type = TensorProto.INT32
    g.node.insert(0, helper.make_node("Cast", ["input_ids"], ["input_ids_as_int64"], to=TensorProto.INT64))
    onnx.save(model, str(path))


def int64_batch_timestep(path: Path, weights: str) -> None:
    """timestep: float rank 0 → int64 [batch] (the old script's LongTensor), weights → `weights`."""
    model = onnx.load(str(path))
    g = model.graph
    (t,) = [i for i in g.input if i.name == "timestep"]
    rename_uses(g, "timestep", "timestep_scalar")
    t.type.CopyFrom(helper.make_tensor_type_proto(TensorProto.INT64, ["batch_size"]))
    g.initializer.append(numpy_helper.from_array(np.array(0, np.int64), "timestep_first"))
    g.node.insert(0, helper.make_node("Cast", ["timestep"], ["timestep_float"], to=TensorProto.FLOAT))
    g.node.insert(1, helper.make_node("Gather", ["timestep_float", "timestep_first"], ["timestep_scalar"], axis=0))
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=weights, size_threshold=0)


def latent_sample_output(path: Path) -> None:
    """latent_parameters (mean ‖ logvar) → latent_sample (the mean's 4 channels)."""
    model = onnx.load(str(path))
    g = model.graph
    (out,) = g.output
    assert out.name == "latent_parameters"
    for name, value in [("ls_starts", [0]), ("ls_ends", [4]), ("ls_axes", [1])]:
        g.initializer.append(numpy_helper.from_array(np.array(value, np.int64), name))
    g.node.append(helper.make_node("Slice", ["latent_parameters", "ls_starts", "ls_ends", "ls_axes"], ["latent_sample"]))
    new_out = helper.make_tensor_value_info("latent_sample", TensorProto.FLOAT, ["batch_size", 4, "latent_height", "latent_width"])
    g.output.remove(out)
    g.output.append(new_out)
    onnx.save(model, str(path))


def make_legacy(optimum: Path, legacy: Path) -> None:
    shutil.copytree(optimum, legacy)
    int32_input_ids(legacy / "text_encoder" / "model.onnx")
    int64_batch_timestep(legacy / "unet" / "model.onnx", "weights.pb")
    latent_sample_output(legacy / "vae_encoder" / "model.onnx")
    for part in ("unet", "text_encoder", "vae_encoder"):
        (legacy / part / "config.json").unlink()
    index = json.loads((legacy / "model_index.json").read_text())
    index["_class_name"] = "OnnxStableDiffusionPipeline"
    index["safety_checker"] = [None, None]
    (legacy / "model_index.json").write_text(json.dumps(index, indent=2))


def test_legacy_diffusers_layout_gives_the_same_images(tmp_path: Path) -> None:
    request = ["--prompt", "a red fox in the snow", "--negative", "blurry", "--steps", "3", "--size", "32x32", "--seed", "4"]
    # The bundled pipeline (Optimum layout), materialized by the first call.
    run_quilt("sd", "txt2img", *request, "--out", str(tmp_path / "optimum_txt2img.png"))
    optimum = ROOT / "target" / "quilt-sd" / "tiny_sd"
    assert (optimum / "model_index.json").is_file()
    legacy = tmp_path / "legacy"
    make_legacy(optimum, legacy)
    assert (legacy / "unet" / "weights.pb").stat().st_size > 100_000
    ins = {i.name: i.type.tensor_type.elem_type for i in onnx.load(str(legacy / "unet" / "model.onnx"), load_external_data=False).graph.input}
    assert ins["timestep"] == TensorProto.INT64

    run_quilt("sd", "txt2img", "--model", str(optimum), *request, "--out", str(tmp_path / "a.png"))
    run_quilt("sd", "txt2img", "--model", str(legacy), *request, "--out", str(tmp_path / "b.png"))
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes(), "txt2img: legacy layout gave another image"

    image = tmp_path / "a.png"
    img2img = ["--image", str(image), "--strength", "0.6", "--steps", "4", "--prompt", "a fox at night", "--seed", "9"]
    run_quilt("sd", "img2img", "--model", str(optimum), *img2img, "--out", str(tmp_path / "c.png"))
    run_quilt("sd", "img2img", "--model", str(legacy), *img2img, "--out", str(tmp_path / "d.png"))
    assert (tmp_path / "c.png").read_bytes() == (tmp_path / "d.png").read_bytes(), "img2img: legacy layout gave another image"
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "c.png").read_bytes()
