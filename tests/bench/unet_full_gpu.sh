#!/usr/bin/env bash
# Runs on the GPU machine: the full-size SD 1.5 UNet (random weights), batch 2, 64x64 latent,
# sequence 77, through quilt's CUDA backend vs PyTorch eager, from an example binary built elsewhere.
#
#   cargo build --release -p quilt-tests --example bench_onnx_gpu
#   copy target/release/examples/bench_onnx_gpu to BIN_DIR (strip it), carry .whl (diffusers,
#   see models/scripts/fetch_wheels.sh), then on the GPU:
#   bash tests/bench/unet_full_gpu.sh BIN_DIR OUT_DIR [WORK_DIR]
#
# WORK_DIR (default /tmp/unet_full) gets the ~3.4 GB export; OUT_DIR only logs and JSON.
# tests/bench/unet_full_gpu.py exports the model, writes inputs and the PyTorch fp32 reference and
# times PyTorch eager; then bench_onnx_gpu runs the same inputs through quilt (optimized plan).
set -uo pipefail
BIN="${1:?bin dir}"; OUT="${2:?out dir}"; WORK="${3:-/tmp/unet_full}"
mkdir -p "$OUT" "$WORK"
{
    echo "== nvidia-smi"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    echo "== /usr/local/cuda"; readlink -f /usr/local/cuda
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
status=0
echo "== PyTorch: export, inputs, reference, eager timings"
PYTHONUNBUFFERED=1 python3 tests/bench/unet_full_gpu.py "$WORK" 2>&1 | tee "$OUT/torch.log" || status=1
grep '^{' "$OUT/torch.log" | tail -1 > "$OUT/torch.json"
ls -l "$WORK/unet" "$WORK/inputs" "$WORK/reference.bin" 2>&1
echo "== quilt CUDA backend"
# NVRTC 13.0 matches driver 580 (see cuda_fixtures_gpu.sh); torch's own CUDA libs stay out of it.
LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}" timeout 360 "$BIN"/bench_onnx_gpu "$WORK/unet/model.onnx" \
    --dims batch_size=2,height=64,width=64,sequence_length=77 --iters 10 \
    --inputs "$WORK/inputs" --reference "$WORK/reference.bin" --profile \
    > "$OUT/quilt.json" 2> "$OUT/quilt.log" || status=1
cat "$OUT/quilt.log" "$OUT/quilt.json"
exit $status
