#!/usr/bin/env bash
# Where the time goes: exports the SD 1.5-shaped models (random weights) with bench_unet.py
# (PyTorch eager and ORT + quilt timings on the way, bench.json), then runs each through quilt's CUDA backend with
# bench_onnx_gpu --profile-json (device time per step from CUDA events).
#
# Here: build as bench_gpu.sh says (BIN holds libquilt_ep.so and bench_onnx_gpu).
# On the GPU machine: bash tests/bench/profile_gpu.sh BIN OUT [CASES] [PRECISION] [LAYOUTS]
#   CASES: comma list of bench_unet.py cases (default unet_b2,vae_decoder), PRECISION model|fp16,
#   LAYOUTS: comma list of nchw|channels_last (default nchw), one profile per case and layout.
# OUT gets env.txt, bench.log (export + eager), <case>.json (bench_onnx_gpu's line),
# <case>.<layout>.profile.json (every step) and <case>.<layout>.log (the per-op table and the
# slowest steps). Set SKIP_EXPORT=1 to reuse an earlier export on the same machine, and
# QUILT_OPTIONS (default precision=fp16) for the ORT + quilt run of the export step.
set -uo pipefail
BIN="${1:?bin dir}"; OUT="${2:?out dir}"; CASES="${3:-unet_b2,vae_decoder}"; PRECISION="${4:-fp16}"; LAYOUTS="${5:-nchw}"
WORK=/tmp/quilt_bench
mkdir -p "$OUT"
if [ -z "${SKIP_EXPORT:-}" ]; then
    bash tests/bench/bench_gpu.sh "$BIN" "$OUT" --cases "$CASES" --modes eager,quilt --iters 10 --work "$WORK" \
        --quilt-options "${QUILT_OPTIONS:-precision=fp16}" > "$OUT/export.log" 2>&1
    echo "export rc=$?"; grep -E "eager|error|Error" "$OUT/bench.log" | tail -6
fi
CUDNN_DIR=$(python3 -c 'import nvidia.cudnn, os; print(os.path.join(os.path.dirname(nvidia.cudnn.__file__), "lib"))' 2>/dev/null)
mkdir -p /tmp/cudnn_link && ln -sf "$CUDNN_DIR/libcudnn.so.9" /tmp/cudnn_link/libcudnn.so
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:/tmp/cudnn_link:$CUDNN_DIR:${LD_LIBRARY_PATH:-}"
for c in ${CASES//,/ }; do
    case $c in
        unet_b1) m=unet_full; d=batch_size=1,height=64,width=64,sequence_length=77 ;;
        unet_b2) m=unet_full; d=batch_size=2,height=64,width=64,sequence_length=77 ;;
        unet_b2_96) m=unet_full; d=batch_size=2,height=96,width=96,sequence_length=77 ;;
        unet_b8) m=unet_full; d=batch_size=8,height=64,width=64,sequence_length=77 ;;
        vae_decoder) m=vae_decoder_full; d=batch_size=1,latent_height=64,latent_width=64 ;;
        clip) m=text_encoder_full; d=batch_size=2,sequence_length=77 ;;
        *) echo "unknown case $c"; continue ;;
    esac
    for layout in ${LAYOUTS//,/ }; do
        echo "== $c $layout"
        timeout 300 "$BIN"/bench_onnx_gpu "$WORK/$m/model.onnx" --dims "$d" --iters 10 --inputs "$WORK/$m/inputs_$c" \
            --precision "$PRECISION" --layout "$layout" --reference "$WORK/$m/torch_$c.bin" \
            --profile-json "$OUT/$c.$layout.profile.json" > "$OUT/$c.$layout.json" 2> "$OUT/$c.$layout.log"
        echo "rc=$?"; cat "$OUT/$c.$layout.json"; head -${PROFILE_LINES:-30} "$OUT/$c.$layout.log"
    done
done
