#!/usr/bin/env bash
# Download the Python wheels the GPU machine lacks for models/fixtures/make_fixtures.py into the
# repo's ignored .whl/ folder (carried to the device machine; see the device tool's README).
#
# The machine's image (Python 3.12, manylinux x86_64) already has torch 2.11, transformers 5.17.0,
# tokenizers, huggingface_hub 1.33, safetensors, regex, onnxscript 0.7.2, onnx_ir 1.0.0 and
# ml_dtypes, all of which work with diffusers 0.42.1 (checked here with the same versions). Missing
# or at another version there: diffusers (its importlib_metadata requirement is only imported on
# Python < 3.8) and onnxruntime (1.30.0 there; CI uses 1.31.1).
#
# onnx is left out on purpose: the machine's onnx 1.23.1 gives byte-identical fixtures to the
# pinned 1.20.1 (checked), and its 17.5 MB wheel would push the carried tree (repo with ~22 MB of
# fixtures + .whl) past the tool's 64 MiB limit. Keep .whl + `git ls-files` under 64 MiB.
#
# On the device: `source tests/bench/carried_wheels.sh && install_carried_wheels` (the GPU scripts do).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"

exclude=.git/info/exclude
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"

WHEELS=(
  diffusers==0.42.1
  onnxruntime==1.31.1
)

rm -rf .whl
mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl "${WHEELS[@]}"
# The onnxruntime wheel (23.7 MB zipped) as an unpacked tar.xz (13.1 MB): with the binaries of
# tests/bench/pack_gpu.sh, the zipped wheel would push the carried tree past 64 MiB.
# tests/bench/carried_wheels.sh installs either form.
ort_whl=$(ls .whl/onnxruntime-*.whl)
unpacked=$(mktemp -d)
(cd "$unpacked" && python3 -m zipfile -e "$OLDPWD/$ort_whl" .)
tar cf - -C "$unpacked" . | xz -9 -T0 > .whl/onnxruntime-1.31.1.tar.xz
rm -rf "$unpacked" "$ort_whl"
ls -la .whl
du -sh .whl
