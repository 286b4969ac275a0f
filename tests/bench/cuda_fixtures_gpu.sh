#!/usr/bin/env bash
# Runs on the GPU machine (which has no Rust): the CUDA backend (optimized and lowered plans) vs
# the CPU interpreter on every fixture, the fused ops at edge shapes, plus the NVRTC compile check, from test binaries built elsewhere.
#
#   cargo test --release -p quilt-tests --test cuda_fixtures --test cuda_codegen --no-run
#   copy the two binaries (target/release/deps/cuda_{fixtures,codegen}-*) to BIN_DIR, then on the GPU:
#   bash tests/bench/cuda_fixtures_gpu.sh BIN_DIR OUT_DIR
#
# Library choice: the NVRTC must not be newer than the driver (a cubin is built, but keep the
# toolkit that matches the driver); /usr/local/cuda is CUDA 13.0 there, matching driver 580.
set -uo pipefail
BIN="${1:?bin dir}"; OUT="${2:?out dir}"
mkdir -p "$OUT"
{
    echo "== nvidia-smi"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    echo "== /usr/local/cuda"; readlink -f /usr/local/cuda; ls /usr/local/cuda/lib64 2>/dev/null | grep -E '^lib(nvrtc|cublas|cublasLt|cudnn)\.so' | sort
    echo "== other libnvrtc/libcublas on this machine"
    find / -xdev \( -name 'libnvrtc.so*' -o -name 'libcublas.so*' \) 2>/dev/null | grep -v '^/usr/local/cuda' | head -20
    echo "== libcuda"; ldconfig -p | grep -E 'libcuda\.so' | head -3
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export QUILT_FIXTURES="$PWD/models/fixtures" QUILT_CUDA_REPORT="$OUT/report.txt"
status=0
"$BIN"/cuda_codegen --nocapture --test-threads=1 2>&1 | grep -vE '^/|^models' | tee "$OUT/codegen.log" || status=1
"$BIN"/cuda_fixtures --nocapture --test-threads=1 2>&1 | tee "$OUT/fixtures.log" || status=1
exit $status
