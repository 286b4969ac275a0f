#!/usr/bin/env bash
# Builds libquilt_ep.so and the C and C++ examples against ONNX Runtime, then runs both examples
# on each model given (with the CPU reference device).
#
#   capi/examples/build.sh [model.onnx ...]
#
# ORT headers and runtime come from package registries (no GitHub release archive needed), cached
# under .cache/ (git-ignored):
#   .cache/ort-headers  headers of ORT 1.29 from the npm package com.github.asus4.onnxruntime@0.4.9
#                       (ORT's C API is versioned, so 1.29 headers work with a newer runtime)
#   .cache/ort-lib      libonnxruntime.so.1.31.1 from the PyPI onnxruntime 1.31.1 wheel
# Environment: QUILT_EP_LIB=/path/libquilt_ep.so skips the cargo build; PYTHON picks the python
# whose pip downloads the wheel (default python3).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache="$root/.cache"
headers="$cache/ort-headers"
libdir="$cache/ort-lib"
out="$root/target/capi-examples"
npm_package="com.github.asus4.onnxruntime@0.4.9"
ort_version="1.31.1"
python="${PYTHON:-python3}"

if [ ! -f "$headers/onnxruntime_c_api.h" ]; then
  echo "fetching ORT headers from npm $npm_package" >&2
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$npm_package" >/dev/null && tar xzf ./*.tgz)
  src="$tmp/package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers"
  [ -f "$src/onnxruntime_c_api.h" ] || { echo "error: no ORT headers in $npm_package" >&2; exit 1; }
  mkdir -p "$headers"
  cp "$src"/*.h "$headers/"
  rm -rf "$tmp"
fi

if [ ! -f "$libdir/libonnxruntime.so.$ort_version" ]; then
  echo "fetching libonnxruntime $ort_version from the PyPI onnxruntime wheel" >&2
  tmp=$(mktemp -d)
  "$python" -m pip download --quiet --no-deps --only-binary=:all: "onnxruntime==$ort_version" -d "$tmp"
  mkdir -p "$libdir"
  unzip -q -j -o "$tmp"/onnxruntime-*.whl "onnxruntime/capi/libonnxruntime.so.$ort_version" -d "$libdir"
  ln -sf "libonnxruntime.so.$ort_version" "$libdir/libonnxruntime.so.1"
  ln -sf "libonnxruntime.so.$ort_version" "$libdir/libonnxruntime.so"
  rm -rf "$tmp"
fi

if [ -z "${QUILT_EP_LIB:-}" ]; then
  (cd "$root" && cargo build --release -p quilt-capi)
  QUILT_EP_LIB="$root/target/release/libquilt_ep.so"
fi

mkdir -p "$out"
gcc -std=c11 -Wall -Wextra -O1 -I"$headers" -I"$root/capi/include" "$root/capi/examples/run_quilt.c" \
  -L"$libdir" -lonnxruntime -Wl,-rpath,"$libdir" -o "$out/run_quilt_c"
g++ -std=c++17 -Wall -Wextra -O1 -I"$headers" -I"$root/capi/include" "$root/capi/examples/run_quilt.cc" \
  -L"$libdir" -lonnxruntime -Wl,-rpath,"$libdir" -o "$out/run_quilt_cc"
echo "built $out/run_quilt_c and $out/run_quilt_cc" >&2

for model in "$@"; do
  for example in run_quilt_c run_quilt_cc; do
    echo "== $example $model" >&2
    QUILT_REFERENCE_DEVICE=1 "$out/$example" "$QUILT_EP_LIB" "$model"
  done
done
