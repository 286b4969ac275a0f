#!/usr/bin/env bash
# Issue 4's benchmark on the GPU machine: PyTorch eager / torch.compile (default, reduce-overhead)
# fp16 vs ORT + quilt on the SD 1.5-shaped UNet (batch 1, 2, 8 at 64², batch 2 at 96²), VAE
# decoder (64² → 512²) and CLIP text encoder (2 × 77), same weights, one script
# (tests/bench/bench_unet.py, whose doc says how each number is measured).
#
# Here (no GPU needed):
#   cargo build --release -p quilt-capi
#   cargo build --release -p quilt-tests --example bench_onnx_gpu
#   mkdir -p .gpu/bench
#   strip -o .gpu/bench/libquilt_ep.so target/release/libquilt_ep.so
#   strip -o .gpu/bench/bench_onnx_gpu target/release/examples/bench_onnx_gpu
# On the GPU machine (run tool; carry .gpu/bench and .whl, which holds the onnxruntime 1.31.1 and
# diffusers 0.42.1 wheels):
#   bash tests/bench/bench_gpu.sh .gpu/bench $OUT [bench_unet.py flags: --cases, --quick, ...]
#
# A full run does not fit one 10-minute call (each torch.compile mode takes 60–90 s per model
# and shape); split it, e.g.
#   bash tests/bench/bench_gpu.sh .gpu/bench $OUT --cases unet_b2,unet_b1
#   bash tests/bench/bench_gpu.sh .gpu/bench $OUT --cases unet_b8,unet_b2_96,vae_decoder,clip
# and merge the two OUT/bench.json files' "cases". Dry run of every path: --quick.
# The export (~3.4 GB for the UNet) goes to /tmp/quilt_bench; OUT gets bench.json, bench.log and
# env.txt.
set -uo pipefail
BIN="${1:?bin dir (libquilt_ep.so, bench_onnx_gpu)}"; OUT="${2:?out dir}"; shift 2
mkdir -p "$OUT"
source tests/bench/carried_wheels.sh
install_carried_wheels || exit 1
{
    echo "== nvidia-smi"; nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
    echo "== /usr/local/cuda"; readlink -f /usr/local/cuda
    echo "== python"; python3 -c 'import torch, onnxruntime, diffusers, transformers; print("torch", torch.__version__, "onnxruntime", onnxruntime.__version__, "diffusers", diffusers.__version__, "transformers", transformers.__version__)'
    echo "== bin"; ls -l "$BIN"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
PYTHONUNBUFFERED=1 python3 tests/bench/bench_unet.py --out "$OUT" --ep-lib "$BIN/libquilt_ep.so" --bench-bin "$BIN/bench_onnx_gpu" "$@" 2>&1 | tee "$OUT/bench.log"
