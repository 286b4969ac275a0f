#!/usr/bin/env bash
# Attention kernel timings on the GPU machine: quilt's CUDA Attention kernels (the
# `attention_gpu` example, kernel time per call from chained plans) and PyTorch's
# scaled_dot_product_attention at the same shapes, in one call on one card.
#
#   bash tests/bench/attention_gpu.sh [BIN_DIR] [OUT_DIR]
#
# BIN_DIR holds the stripped `attention_gpu` example (built here with
# `cargo build --release -p quilt-tests --example attention_gpu`; default .gpu/attn), OUT_DIR
# receives gpu.txt, quilt.jsonl and torch.jsonl (default $OUT, else /tmp). PyTorch is timed with
# CUDA events over 100 calls after 10 warm-up calls, q/k/v contiguous [B, H, L, D], for the
# default backend choice and for each backend that accepts the shape.
set -uo pipefail
bin="${1:-.gpu/attn}"
out="${2:-${OUT:-/tmp}}"
mkdir -p "$out"
# NVRTC must match the driver's CUDA version (a newer one's cubins/PTX may not load).
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv | tee "$out/gpu.txt"
"$bin/attention_gpu" --reps 50 | tee "$out/quilt.jsonl"
python3 - <<'PY' | tee "$out/torch.jsonl"
import json
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

shapes = [
    ("sd15_64x64_self", torch.float16, 2, 8, 4096, 4096, 40),
    ("sd15_64x64_cross", torch.float16, 2, 8, 4096, 77, 40),
    ("sd15_32x32_self", torch.float16, 2, 8, 1024, 1024, 80),
    ("sd15_32x32_cross", torch.float16, 2, 8, 1024, 77, 80),
    ("sd15_16x16_self", torch.float16, 2, 8, 256, 256, 160),
    ("d160_n1024_self", torch.float16, 2, 8, 1024, 1024, 160),
    ("d64_n4096_self", torch.float16, 2, 10, 4096, 4096, 64),
    ("d128_n4096_self", torch.float16, 2, 8, 4096, 4096, 128),
    ("sd15_64x64_self_bf16", torch.bfloat16, 2, 8, 4096, 4096, 40),
]
backends = {
    "default": None,
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def time_us(fn, reps=100):
    for _ in range(10):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps * 1e3


torch.manual_seed(0)
for name, dt, b, h, n, m, d in shapes:
    q = torch.randn(b, h, n, d, device="cuda", dtype=dt)
    k = torch.randn(b, h, m, d, device="cuda", dtype=dt)
    v = torch.randn(b, h, m, d, device="cuda", dtype=dt)
    row = {"case": name, "dtype": str(dt).replace("torch.", ""), "b": b, "h": h, "n": n, "m": m, "d": d, "torch": torch.__version__}
    for label, be in backends.items():
        try:
            if be is None:
                row[f"{label}_us"] = round(time_us(lambda: F.scaled_dot_product_attention(q, k, v)), 1)
            else:
                with sdpa_kernel([be]):
                    row[f"{label}_us"] = round(time_us(lambda: F.scaled_dot_product_attention(q, k, v)), 1)
        except Exception as e:  # a backend that rejects the shape
            row[f"{label}_us"] = None
            row[f"{label}_error"] = str(e).splitlines()[0][:120]
    print(json.dumps(row), flush=True)
PY
