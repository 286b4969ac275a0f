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
#
#   bash tests/bench/attention_gpu.sh wide [BIN_DIR] [OUT_DIR]
#
# Wide heads and the GEMM route: BIN_DIR holds the stripped `cuda_attention` test binary (built
# with `cargo test --release -p quilt-tests --test cuda_attention --no-run`); runs its
# correctness tests, then its ignored `wide_attention_timing` (GPU time per attention step by
# route, wide-timing.jsonl), then PyTorch's scaled_dot_product_attention at the SD VAE's
# single-head 512-wide shapes (b1, 4096 and 9216 tokens, f16 and f32; torch-wide.jsonl), each
# backend that accepts the shape, CUDA events over 20 calls after 3 warm-ups.
#
#   bash tests/bench/attention_gpu.sh flash [BIN_DIR] [OUT_DIR]
#
# Flash-attention configurations: BIN_DIR holds the stripped `cuda_attention` test binary (as for
# `wide`); runs the flash correctness test on the default configurations (flash-correctness.log),
# then the ignored `flash_variant_timing` (each configuration of tests/tests/cuda_attention.rs
# `flash_variants` checked against the CPU reference and timed at SD's shapes; flash-timing.jsonl),
# then PyTorch's SDPA at the same shapes as the default mode (torch.jsonl).
set -uo pipefail
mode=kernels
if [ "${1:-}" = wide ] || [ "${1:-}" = flash ]; then
    mode=$1
    shift
fi
bin="${1:-.gpu/attn}"
out="${2:-${OUT:-/tmp}}"
mkdir -p "$out"
# NVRTC must match the driver's CUDA version (a newer one's cubins/PTX may not load).
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv | tee "$out/gpu.txt"
if [ "$mode" = wide ]; then
    status=0
    "$bin/cuda_attention" --nocapture --test-threads=1 2>&1 | tee "$out/correctness.log" || status=1
    "$bin/cuda_attention" --ignored --exact wide_attention_timing --nocapture 2>&1 | tee "$out/wide-timing.log" || status=1
    grep '^{' "$out/wide-timing.log" > "$out/wide-timing.jsonl"
    python3 - <<'PY' | tee "$out/torch-wide.jsonl" || status=1
import json
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

backends = {
    "default": None,
    "math": SDPBackend.MATH,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
}


def time_ms(fn, reps=20):
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


torch.manual_seed(0)
for dt in (torch.float16, torch.float32):
    for n in (4096, 9216):
        q, k, v = (torch.randn(1, 1, n, 512, device="cuda", dtype=dt) for _ in range(3))
        row = {"case": f"vae_{n}", "dtype": str(dt).replace("torch.", ""), "b": 1, "h": 1, "n": n, "m": n, "d": 512, "torch": torch.__version__}
        for label, be in backends.items():
            try:
                if be is None:
                    row[f"{label}_ms"] = round(time_ms(lambda: F.scaled_dot_product_attention(q, k, v)), 4)
                else:
                    with sdpa_kernel([be]):
                        row[f"{label}_ms"] = round(time_ms(lambda: F.scaled_dot_product_attention(q, k, v)), 4)
            except Exception as e:  # a backend that rejects the shape
                row[f"{label}_ms"] = None
                row[f"{label}_error"] = str(e).splitlines()[0][:120]
        print(json.dumps(row), flush=True)
PY
    exit $status
fi
status=0
if [ "$mode" = flash ]; then
    "$bin/cuda_attention" --exact flash_attention_matches_the_cpu_reference --nocapture > "$out/flash-correctness.log" 2>&1 || status=1
    tail -3 "$out/flash-correctness.log"
    "$bin/cuda_attention" --ignored --exact flash_variant_timing --nocapture 2>&1 | tee "$out/flash-timing.log" || status=1
    grep '^{' "$out/flash-timing.log" > "$out/flash-timing.jsonl"
else
    "$bin/attention_gpu" --reps 50 | tee "$out/quilt.jsonl"
fi
python3 - <<'PY' | tee "$out/torch.jsonl" || status=1
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
exit $status
