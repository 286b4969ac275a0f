#!/usr/bin/env bash
# Issue 5's benchmark on the GPU machine: whole SD 1.5-shaped pipelines (random weights), `quilt sd`
# (ORT + quilt's GPU device) vs diffusers eager and torch.compile reduce-overhead, same weights
# (tests/bench/bench_sd_pipeline.py, whose doc says how each number is measured).
#
# Here (no GPU needed):
#   cargo build --release -p quilt-capi && cargo build --release -p quilt-models --bin quilt
#   mkdir -p .gpu/sd && strip -o .gpu/sd/quilt target/release/quilt && strip -o .gpu/sd/libquilt_ep.so target/release/libquilt_ep.so
#   xz -f .gpu/sd/quilt .gpu/sd/libquilt_ep.so     # the carried tree must stay under 64 MiB
# On the GPU machine (run tool; carry .gpu/sd and .whl with the onnxruntime 1.31.1 + diffusers wheels):
#   bash tests/bench/sd_pipeline_gpu.sh .gpu/sd $OUT [--pipelines txt2img,img2img] [--modes quilt,eager,compile_ro] [--quick]
# Exports (~7 GB with the inpainting UNet) go to /tmp/sd_pipeline; OUT gets sd_pipeline.json, logs, PNGs.
set -uo pipefail
BIN="${1:?bin dir (quilt, libquilt_ep.so, optionally .xz)}"; OUT="${2:?out dir}"; shift 2
mkdir -p "$OUT" /tmp/quilt_bin
for f in quilt libquilt_ep.so; do
    if [ -f "$BIN/$f.xz" ]; then xz -dc "$BIN/$f.xz" > "/tmp/quilt_bin/$f"; else cp "$BIN/$f" "/tmp/quilt_bin/$f"; fi
done
chmod +x /tmp/quilt_bin/quilt
# NVRTC/cuBLAS 13.0 match driver 580; cuDNN from PyTorch's wheel (a libcudnn.so link first on the
# path selects it over an older system copy, see kernels/src/cuda/conv/mod.rs). Looked up before
# /tmp/site goes on PYTHONPATH: its `nvidia` folder would hide the wheel's `nvidia.cudnn`.
CUDNN_DIR=$(python3 -c 'import nvidia.cudnn, os; print(os.path.join(os.path.dirname(nvidia.cudnn.__file__), "lib"))' 2>/dev/null || true)
source tests/bench/carried_wheels.sh
install_carried_wheels || exit 1
ORT_LIB=$(ls /tmp/site/onnxruntime/capi/libonnxruntime.so.1.* | head -1)
if [ -n "$CUDNN_DIR" ] && [ -f "$CUDNN_DIR/libcudnn.so.9" ]; then
    mkdir -p /tmp/cudnn_link && ln -sf "$CUDNN_DIR/libcudnn.so.9" /tmp/cudnn_link/libcudnn.so
    export LD_LIBRARY_PATH="/tmp/cudnn_link:$CUDNN_DIR:${LD_LIBRARY_PATH:-}"
fi
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
{
    echo "== nvidia-smi"; nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
    echo "== ORT lib $ORT_LIB"; echo "== cuDNN $CUDNN_DIR"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
PYTHONUNBUFFERED=1 python3 tests/bench/bench_sd_pipeline.py --out "$OUT" --quilt-bin /tmp/quilt_bin/quilt \
    --ep-lib /tmp/quilt_bin/libquilt_ep.so --ort-lib "$ORT_LIB" "$@" 2>&1 | tee "$OUT/sd_pipeline.log"
