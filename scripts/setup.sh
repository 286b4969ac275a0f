#!/usr/bin/env bash
# quilt development environment: a Python venv with the pinned ONNX Runtime + onnx wheels, and the
# environment variables every other script, test and README command relies on.
#
#   bash scripts/setup.sh        # create/refresh .venv, print the variables
#   source scripts/setup.sh      # the same, and export them into the current shell
#
# Idempotent: a venv whose pinned packages are already installed is left alone (no network).
# Safe on a fresh machine: needs only python3 (>= 3.10) with the venv module, and PyPI.

# Being sourced must not change the caller's shell options, so only set them when executed.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
fi

quilt_setup() {
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    local venv="$root/.venv"
    local py="${QUILT_PYTHON:-python3}"

    # Versions are pinned: ORT's plugin-EP ABI and the conformance expectations depend on them.
    local ort_version="1.31.1"
    # NVRTC + CUDA headers (no GPU needed): CI compiles every generated CUDA kernel for sm_90.
    # 13.0 matches the GPU machine's driver (580) and toolkit; the wheels put libnvrtc.so.13 in
    # site-packages/nvidia/cu13/lib and the headers in site-packages/nvidia/cu13/include.
    local pins=("onnxruntime==$ort_version" "onnx==1.20.1" "numpy" "pytest" "nvidia-cuda-nvrtc==13.0.88" "nvidia-cuda-runtime==13.0.96")

    if [[ ! -x "$venv/bin/python" ]]; then
        echo "[setup] creating $venv with $($py --version 2>&1)" >&2
        "$py" -m venv "$venv" || return 1
    fi

    # A stamp records what was installed, so a second run does not touch the network.
    local stamp="$venv/.quilt-pins"
    if [[ ! -f "$stamp" || "$(cat "$stamp")" != "${pins[*]}" ]]; then
        echo "[setup] installing ${pins[*]}" >&2
        PIP_CACHE_DIR="$root/.cache/pip" "$venv/bin/python" -m pip install -q --disable-pip-version-check \
            "${pins[@]}" >&2 || return 1
        echo "${pins[*]}" > "$stamp"
    fi

    local site
    site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" || return 1

    export QUILT_ROOT="$root"
    export QUILT_VENV="$venv"
    export QUILT_ORT_LIB="$site/onnxruntime/capi/libonnxruntime.so.$ort_version"
    export QUILT_ONNX_NODE_TESTS="$site/onnx/backend/test/data/node"
    export QUILT_EP_LIB="${QUILT_EP_LIB:-$root/target/release/libquilt_ep.so}"
    # The Rust `ort` crate (feature load-dynamic) reads this.
    export ORT_DYLIB_PATH="$QUILT_ORT_LIB"
    # The CUDA backend opens libnvrtc at run time (cudarc dynamic loading); the CUDA codegen
    # test fails rather than skips when QUILT_REQUIRE_NVRTC=1.
    export QUILT_CUDA_INCLUDE="$site/nvidia/cu13/include"
    case ":${LD_LIBRARY_PATH:-}:" in
        *":$site/nvidia/cu13/lib:"*) ;;
        *) export LD_LIBRARY_PATH="$site/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
    esac
    export QUILT_REQUIRE_NVRTC=1
    export PATH="$venv/bin:$PATH"

    local missing=0
    for f in "$QUILT_ORT_LIB" "$QUILT_ONNX_NODE_TESTS" "$site/nvidia/cu13/lib/libnvrtc.so.13"; do
        if [[ ! -e "$f" ]]; then
            echo "[setup] error: expected $f after installing ${pins[*]}" >&2
            missing=1
        fi
    done
    [[ $missing == 0 ]] || return 1

    echo "QUILT_ORT_LIB=$QUILT_ORT_LIB"
    echo "QUILT_ONNX_NODE_TESTS=$QUILT_ONNX_NODE_TESTS"
    echo "QUILT_EP_LIB=$QUILT_EP_LIB"
    echo "ORT_DYLIB_PATH=$ORT_DYLIB_PATH"
    echo "QUILT_CUDA_INCLUDE=$QUILT_CUDA_INCLUDE"
}

quilt_setup
