"""Issue 4's correctness run on the GPU machine: the full-size SD 1.5-shaped UNet, VAE decoder and
CLIP text encoder (make_fixtures' seeded random weights, fp32 ONNX exported by bench_unet.py's
exporter) through ORT with quilt's GPU device, against ORT's own CPU EP on the same inputs.

    python tests/bench/full_correctness.py --ep-lib BIN/libquilt_ep.so --out OUT [--models unet,vae_decoder,clip]
        [--work /tmp/quilt_bench] [--quick] [--device-type GPU|CPU]

One quilt session per model serves every shape (batch 1 and 2; latents 64² and 96², the VAE decoder's
output 512² and 768²; CLIP at 77 tokens): nothing is recompiled between them. quilt runs the fp32
model at its own precision (no `precision=fp16`), every node on quilt (CPU fallback disabled). An
existing WORK/<model>/model.onnx is reused (bench_unet.py writes the same seeded export there).

Tolerance (fp32, a different summation order and cuDNN/cuBLAS kernels): rel L2 ≤ 1e-4 and
max |Δ| ≤ 1e-3 · max |reference| per output. OUT/full_correctness.json gets every case's numbers.
`--quick` runs the tiny fixture configs at small shapes (a dry run; `--device-type CPU` takes
quilt's reference device, QUILT_REFERENCE_DEVICE=1, so the script can be checked without a GPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

REL_L2_TOL = 1e-4
MAX_ABS_REL_TOL = 1e-3
# model: (full spec, tiny spec, shapes as (batch, latent or None))
MODELS = {
    "unet": ("unet_full", "unet", [(1, 64), (2, 64), (1, 96), (2, 96)]),
    "vae_decoder": ("vae_decoder_full", "vae_decoder", [(1, 64), (2, 64), (1, 96), (2, 96)]),
    "clip": ("text_encoder_full", "text_encoder", [(1, None), (2, None)]),
}
QUICK_LATENT = {64: 8, 96: 16}


def case_name(model: str, batch: int, latent) -> str:
    return f"{model}_b{batch}" + (f"_{latent}" if latent else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ep-lib", required=True)
    ap.add_argument("--out", default="full_correctness_out")
    ap.add_argument("--work", default="/tmp/quilt_bench")
    ap.add_argument("--models", default="unet,vae_decoder,clip")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device-type", default="GPU", choices=["GPU", "CPU"])
    args = ap.parse_args(argv)
    if args.device_type == "CPU":
        os.environ["QUILT_REFERENCE_DEVICE"] = "1"  # read when the library is registered
    import onnxruntime as ort
    import torch
    from bench_unet import export_model, log, make_inputs, rel_l2
    import make_fixtures as mf

    ort.set_default_logger_severity(3)
    os.makedirs(args.out, exist_ok=True)
    ort.register_execution_provider_library("quilt", os.path.abspath(args.ep_lib))
    want_type = getattr(ort.OrtHardwareDeviceType, args.device_type)
    devices = [d for d in ort.get_ep_devices() if d.ep_name == "QuiltExecutionProvider" and d.device.type == want_type]
    if not devices:
        print(f"skipped: quilt offers no {args.device_type} device here")
        return 0
    doc = {"date": datetime.date.today().isoformat(), "onnxruntime": ort.__version__, "quick": args.quick,
           "device": args.device_type, "card": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "tolerance": {"rel_l2": REL_L2_TOL, "max_abs_over_max_ref": MAX_ABS_REL_TOL}, "cases": []}
    out_path = os.path.join(args.out, "full_correctness.json")
    failed = 0
    specs = {s.name: s for s in mf.model_specs()}
    for model in [m for m in args.models.split(",") if m]:
        full, tiny, shapes = MODELS[model]
        spec = specs[tiny if args.quick else full]
        work = os.path.join(args.work, spec.name)
        path = os.path.join(work, "model.onnx")
        if not os.path.exists(path):
            t = time.time()
            export_model(mf, spec, mf.seeded_model(spec), work)
            log(f"{spec.name}: exported in {time.time() - t:.1f} s")
        so = ort.SessionOptions()
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        so.add_provider_for_devices(devices[:1], {})
        t = time.time()
        quilt = ort.InferenceSession(path, sess_options=so)
        create_s = time.time() - t
        t = time.time()
        cpu = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        log(f"{spec.name}: quilt session {create_s:.1f} s, CPU EP session {time.time() - t:.1f} s")
        names = [o.name for o in quilt.get_outputs()]
        for i, (batch, latent) in enumerate(shapes):
            if args.quick and latent:
                latent = QUICK_LATENT[latent]
            d = {"model": model, "batch": batch, "latent": latent, "sequence": 77}
            feeds = make_inputs(spec, d, mf.SEED + 100 + i)
            t = time.time()
            got = quilt.run(names, feeds)
            quilt_s = time.time() - t
            t = time.time()
            want = cpu.run(names, feeds)
            cpu_s = time.time() - t
            case = {"case": case_name(model, batch, latent), "model": spec.name, "batch": batch, "latent": latent,
                    "quilt_session_create_s": round(create_s, 2), "quilt_first_run_s": round(quilt_s, 3), "cpu_ep_run_s": round(cpu_s, 2),
                    "outputs": {}}
            ok = True
            for name, g, w in zip(names, got, want):
                g, w = np.asarray(g), np.asarray(w)
                if g.shape != w.shape:
                    case["outputs"][name] = {"error": f"shape {g.shape} vs the CPU EP's {w.shape}"}
                    ok = False
                    continue
                max_ref = float(np.abs(w).max()) if w.size else 0.0
                max_abs = float(np.abs(g.astype(np.float64) - w.astype(np.float64)).max()) if w.size else 0.0
                r = rel_l2(g, w)
                finite = bool(np.isfinite(g).all())
                out_ok = finite and r <= REL_L2_TOL and max_abs <= MAX_ABS_REL_TOL * max(max_ref, 1e-30)
                case["outputs"][name] = {"shape": list(g.shape), "max_abs": max_abs, "max_ref": max_ref, "rel_l2": r, "finite": finite, "ok": out_ok}
                ok = ok and out_ok
            case["ok"] = ok
            failed += not ok
            worst = max((o.get("rel_l2", float("inf")) for o in case["outputs"].values()), default=0.0)
            log(f"{case['case']}: {'ok' if ok else 'FAIL'} (worst rel L2 {worst:.2e}; quilt {quilt_s * 1e3:.0f} ms, CPU EP {cpu_s:.1f} s)")
            doc["cases"].append(case)
            with open(out_path, "w") as f:
                json.dump(doc, f, indent=1)
        del quilt, cpu
    print(f"{len(doc['cases']) - failed} of {len(doc['cases'])} cases within tolerance")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
