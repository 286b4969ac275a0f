#!/usr/bin/env bash
# The main job, end to end: set up ORT, build the quilt EP and CLI, then run the tiny Stable
# Diffusion UNet through ONNX Runtime with quilt and compare it with ORT's own CPU EP.
#
#   bash scripts/run.sh                                  # the UNet fixture at every manifest test size
#   bash scripts/run.sh path/to/model.onnx --dims batch=2,height=16,width=16
#
# Everything after the script name goes to `quilt run` (see `target/release/quilt --help`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=setup.sh
source scripts/setup.sh >/dev/null
export QUILT_EP_LIB="$PWD/target/release/libquilt_ep.so"

cargo build --release -q -p quilt-capi -p quilt-models

if [[ $# -eq 0 || "$1" == -* ]]; then
    model="models/fixtures/unet/model.onnx"
    if [[ ! -f "$model" ]]; then
        echo "run.sh: $model is missing (the SD fixtures live in models/fixtures/)" >&2
        exit 2
    fi
    set -- "$model" "$@"
fi
exec target/release/quilt run "$@"
