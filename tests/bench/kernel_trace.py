"""Where the device time of one ORT + quilt run goes, kernel by kernel, without synchronising
between steps: PyTorch's profiler (CUPTI) records every kernel the process launches, including
those that cuDNN, cuBLAS and quilt launch inside quilt's CUDA graph replay. Unlike
`bench_onnx_gpu --profile-json` (CUDA events around each step, synchronised after each), this sees
the real schedule: kernel durations, and the idle gaps between kernels on the device.

On the GPU machine (torch and onnxruntime 1.31.1 installed, quilt built):
    python3 tests/bench/kernel_trace.py --ep-lib libquilt_ep.so --model unet/model.onnx \
        --dims batch_size=2,height=64,width=64,sequence_length=77 --options precision=fp16 \
        --out trace.json
Prints the per-category and per-kernel tables; `--out` gets them as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time

import numpy as np

NVIDIA = 0x10DE

# Coarse categories by kernel name, first match wins (cuDNN, cuBLAS/cuBLASLt and quilt's own).
CATEGORIES = [
    # cuDNN's fused SDPA kernels are named like "cudnn_generated_..._sdpa_..._flash_fprop_...".
    ("attention (cuDNN SDPA)", r"sdpa"),
    ("flash attention (quilt)", r"flash|attention|attn"),
    ("conv (cuDNN)", r"fprop|conv|implicit_?gemm|xmma_fprop|cudnn"),
    ("gemm (cuBLAS/Lt)", r"gemm|cutlass|cublas|splitk|nvjet"),
    ("geglu (quilt)", r"geglu"),
    ("long-row norms (quilt part/stats/apply)", r"part$|apply$|stats$"),
    ("layout/resize/concat (quilt)", r"layout|transpose|resize|concat|slice|copy|nchw|nhwc|_idx"),
]
OTHER = "other (quilt stitched, elementwise)"


def category(name: str) -> str:
    low = name.lower()
    for label, pattern in CATEGORIES:
        if re.search(pattern, low):
            return label
    return OTHER


def device_events(prof) -> list[tuple[float, float, str]]:
    """(start µs, duration µs, name) of every kernel, memset and copy the device ran while `prof`
    (a finished torch.profiler run with CUDA activity) recorded, in start order. The chrome trace
    lists device activity whether or not a host op of torch's launched it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    return sorted((float(e["ts"]), float(e.get("dur", 0)), e.get("name", "?")) for e in events if e.get("cat") in ("kernel", "gpu_memset", "gpu_memcpy"))


def parse_dims(s: str) -> dict[str, int]:
    return {k: int(v) for k, v in (kv.split("=") for kv in s.split(",") if kv)}


def parse_options(s: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in s.split(",") if kv)


def feeds_for(session, dims: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Random inputs (never zeros) for every model input, symbolic dims from `dims`."""
    rng = np.random.default_rng(seed)
    types = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64, "tensor(int32)": np.int32}
    feeds = {}
    for i in session.get_inputs():
        shape = []
        for d in i.shape:
            if isinstance(d, int):
                shape.append(d)
            elif d in dims:
                shape.append(dims[d])
            else:
                raise SystemExit(f"input {i.name}: dimension {d!r} not given in --dims")
        t = types.get(i.type)
        if t is None:
            raise SystemExit(f"input {i.name}: type {i.type} not handled")
        if np.issubdtype(t, np.integer):
            feeds[i.name] = rng.integers(1, 999, size=shape).astype(t)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(t)
    return feeds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ep-lib", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--dims", required=True)
    ap.add_argument("--options", default="precision=fp16")
    ap.add_argument("--iters", type=int, default=5, help="traced runs")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--top", type=int, default=40, help="kernels listed by total time")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch  # CUPTI through its profiler
    from torch.profiler import ProfilerActivity, profile

    import onnxruntime as ort

    torch.cuda.init()
    ort.register_execution_provider_library("quilt", args.ep_lib)
    gpu = [d for d in ort.get_ep_devices() if d.ep_name == "QuiltExecutionProvider" and d.device.type == ort.OrtHardwareDeviceType.GPU]
    if not gpu:
        raise SystemExit("quilt offers no GPU device here")
    so = ort.SessionOptions()
    so.add_provider_for_devices(gpu[:1], parse_options(args.options))
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    session = ort.InferenceSession(args.model, sess_options=so)
    if "QuiltExecutionProvider" not in session.get_providers():
        raise SystemExit(f"quilt's EP was not created: {session.get_providers()}")
    feeds = feeds_for(session, parse_dims(args.dims), seed=7)
    out_names = [o.name for o in session.get_outputs()]
    outs = session.run(out_names, feeds)
    io = session.io_binding()
    for k, v in feeds.items():
        io.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(v, "gpu", 0, NVIDIA))
    for name, o in zip(out_names, outs):
        io.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_shape_and_type(list(o.shape), o.dtype, "gpu", 0, NVIDIA))

    def run():
        session.run_with_iobinding(io)
        io.synchronize_outputs()

    for _ in range(args.warmup):
        run()
    walls = []
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.iters):
            t0 = time.perf_counter()
            run()
            walls.append((time.perf_counter() - t0) * 1e3)
    kernels = device_events(prof)
    if not kernels:
        raise SystemExit("the profiler saw no kernel (CUPTI not available?)")
    # Split into runs at the largest gaps (the host's synchronisation between runs).
    gaps = [(kernels[i + 1][0] - (kernels[i][0] + kernels[i][1]), i) for i in range(len(kernels) - 1)]
    cuts = sorted(i for _, i in sorted(gaps, reverse=True)[: args.iters - 1])
    runs, begin = [], 0
    for c in cuts + [len(kernels) - 1]:
        runs.append(kernels[begin : c + 1])
        begin = c + 1
    per_run = []
    for r in runs:
        span = r[-1][0] + r[-1][1] - r[0][0]
        busy = sum(d for _, d, _ in r)
        per_run.append({"kernels": len(r), "span_us": span, "busy_us": busy, "idle_us": span - busy})
    mid = sorted(per_run, key=lambda p: p["span_us"])[len(per_run) // 2]
    n = len(runs)
    by_cat: dict[str, list[float]] = {}
    by_name: dict[str, list[float]] = {}
    for r in runs:
        for _, d, name in r:
            by_cat.setdefault(category(name), [0, 0.0])
            by_cat[category(name)][0] += 1
            by_cat[category(name)][1] += d
            by_name.setdefault(name, [0, 0.0])
            by_name[name][0] += 1
            by_name[name][1] += d
    busy = sum(v[1] for v in by_cat.values()) / n
    doc = {
        "card": torch.cuda.get_device_name(0),
        "model": args.model,
        "dims": args.dims,
        "options": args.options,
        "wall_ms_median": round(sorted(walls)[len(walls) // 2], 3),
        "median_run": {k: round(v, 1) for k, v in mid.items()},
        "runs": n,
        "categories": [
            {"category": c, "kernels_per_run": v[0] / n, "us_per_run": round(v[1] / n, 1), "share_of_busy": round(v[1] / n / busy, 4)}
            for c, v in sorted(by_cat.items(), key=lambda kv: -kv[1][1])
        ],
        "top_kernels": [
            {"name": k[:160], "calls_per_run": v[0] / n, "us_per_run": round(v[1] / n, 1), "us_per_call": round(v[1] / v[0], 2)}
            for k, v in sorted(by_name.items(), key=lambda kv: -kv[1][1])[: args.top]
        ],
    }
    # The median run kernel by kernel (name, µs, gap before it in µs), in launch order.
    mid_run = runs[per_run.index(mid)]
    doc["sequence"] = [[name[:80], round(d, 2), round(t - (mid_run[k - 1][0] + mid_run[k - 1][1]), 2) if k else 0.0] for k, (t, d, name) in enumerate(mid_run)]
    print(f"{doc['card']}  wall {doc['wall_ms_median']} ms/run (host, median of {len(walls)})")
    m = doc["median_run"]
    print(f"median run: {m['kernels']} kernels, span {m['span_us']} us, busy {m['busy_us']} us, idle between kernels {m['idle_us']} us")
    print(f"{'category':40} {'kernels':>8} {'us/run':>9} {'share':>7}")
    for c in doc["categories"]:
        print(f"{c['category']:40} {c['kernels_per_run']:8.1f} {c['us_per_run']:9.1f} {c['share_of_busy']:7.1%}")
    print(f"{'kernel':100} {'calls':>6} {'us/run':>8} {'us/call':>8}")
    for k in doc["top_kernels"]:
        print(f"{k['name'][:100]:100} {k['calls_per_run']:6.1f} {k['us_per_run']:8.1f} {k['us_per_call']:8.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
