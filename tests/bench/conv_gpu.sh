#!/usr/bin/env bash
# Runs on the GPU machine (no Rust there) from a test binary built elsewhere:
#
#   cargo test --release -p quilt-tests --test cuda_conv --no-run
#   strip -o BIN_DIR/cuda_conv target/release/deps/cuda_conv-<hash>
#   bash tests/bench/conv_gpu.sh BIN_DIR OUT_DIR
#
# 1. Conv correctness (tests/tests/cuda_conv.rs) with cuDNN's heuristic algorithm choice, with
#    the benchmarked choice (QUILT_CUDNN_ALGO=benchmark), and on the im2col path (QUILT_CONV=im2col;
#    the machine has a system libcudnn, so a missing library cannot be simulated there).
# 2. Timing of the SD 1.5 UNet's conv shapes at batch 2, 64² latent, f32 and f16: quilt's cuDNN
#    call (heuristic / benchmarked algorithm) and its im2col path (QUILT_CONV_BENCH=1 of the same
#    binary), then torch.nn.functional.conv2d (cuDNN via PyTorch, cudnn.benchmark=True, TF32 off,
#    NCHW and channels_last) on the same shapes, timed the same way: median of 5 × mean of 20
#    back-to-back calls, synchronised at both ends (so per-call host overhead is included).
#
# cuDNN comes from PyTorch's nvidia-cudnn wheel (the same recipe a user follows, see the module
# doc of kernels/src/cuda/conv/mod.rs); the results recorded so far ran the system's cuDNN 9.14.
set -uo pipefail
BIN="${1:?bin dir}"; OUT="${2:?out dir}"
mkdir -p "$OUT"
CUDNN_LIB="$(python3 -c 'import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], "lib"))')"
{
    echo "== nvidia-smi"; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
    echo "== cuDNN from PyTorch's wheel: $CUDNN_LIB"; ls "$CUDNN_LIB" 2>/dev/null
    echo "== every libcudnn.so* on this machine"; find / -xdev -name 'libcudnn.so*' 2>/dev/null | head; ldconfig -p | grep libcudnn.so | head -3
    python3 -c 'import torch; print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version())'
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
status=0
export QUILT_FIXTURES="$PWD/models/fixtures"

# PyTorch's cuDNN ahead of the system's copy: quilt (cudarc) asks the loader for libcudnn.so
# before libcudnn.so.9, and the wheel has no libcudnn.so, so a link to it goes first.
mkdir -p /tmp/quilt-cudnn && ln -sf "$CUDNN_LIB/libcudnn.so.9" /tmp/quilt-cudnn/libcudnn.so
export LD_LIBRARY_PATH="/tmp/quilt-cudnn:$CUDNN_LIB:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
echo "== correctness, heuristic algorithms"
"$BIN"/cuda_conv --nocapture --test-threads=1 conv_matches 2>&1 | tee "$OUT/correctness.log" || status=1
echo "== correctness, im2col path"
QUILT_CONV=im2col "$BIN"/cuda_conv --nocapture --test-threads=1 conv_matches 2>&1 | tee "$OUT/correctness_im2col.log" | tail -4 || status=1
echo "== correctness, benchmarked algorithms"
QUILT_CUDNN_ALGO=benchmark "$BIN"/cuda_conv --nocapture --test-threads=1 conv_matches 2>&1 | tee "$OUT/correctness_benchmark.log" | tail -4 || status=1

echo "== timing: quilt"
QUILT_CONV_BENCH=1 QUILT_CONV_BENCH_OUT="$OUT/quilt.jsonl" "$BIN"/cuda_conv --nocapture --test-threads=1 conv_timing 2>&1 | tee "$OUT/quilt_timing.log" || status=1

echo "== timing: PyTorch"
python3 - "$OUT/torch.jsonl" <<'EOF' 2>&1 | tee "$OUT/torch_timing.log" || status=1
import json, sys, time
import torch
import torch.nn.functional as F

torch.backends.cudnn.benchmark = True
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
shapes = [
    ("conv_in 4->320 3x3 @64", 4, 320, 3, 1, 1, 64),
    ("320->320 3x3 @64", 320, 320, 3, 1, 1, 64),
    ("320->320 3x3 s2 @64", 320, 320, 3, 2, 1, 64),
    ("640->640 3x3 @32", 640, 640, 3, 1, 1, 32),
    ("1280->1280 3x3 @16", 1280, 1280, 3, 1, 1, 16),
    ("1280->1280 3x3 @8", 1280, 1280, 3, 1, 1, 8),
    ("2560->1280 3x3 @8", 2560, 1280, 3, 1, 1, 8),
    ("640->320 1x1 @64", 640, 320, 1, 1, 0, 64),
    ("conv_out 320->4 3x3 @64", 320, 4, 3, 1, 1, 64),
]

def time_ms(f, iters=20, reps=5):
    f(); torch.cuda.synchronize()
    v = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(iters):
            f()
        torch.cuda.synchronize()
        v.append((time.perf_counter() - t) * 1e3 / iters)
    return sorted(v)[reps // 2]

rows = []
print(f"{'conv':<26} {'dt':<4} {'nchw':>9} {'nhwc':>9}")
for name, c, m, k, s, p, hw in shapes:
    for dt, tdt in (("f32", torch.float32), ("f16", torch.float16)):
        x = torch.randn(2, c, hw, hw, device="cuda", dtype=tdt)
        w = torch.randn(m, c, k, k, device="cuda", dtype=tdt) / (c * k * k) ** 0.5
        b = torch.randn(m, device="cuda", dtype=tdt) * 0.5
        res = {}
        for fmt, mf in (("nchw", torch.contiguous_format), ("nhwc", torch.channels_last)):
            xx, ww = x.contiguous(memory_format=mf), w.contiguous(memory_format=mf)
            for _ in range(3):  # let cudnn.benchmark pick its algorithm first
                F.conv2d(xx, ww, b, stride=s, padding=p)
            res[fmt] = time_ms(lambda: F.conv2d(xx, ww, b, stride=s, padding=p))
        print(f"{name:<26} {dt:<4} {res['nchw']:>9.4f} {res['nhwc']:>9.4f}")
        rows.append({"conv": name, "dtype": dt, "torch_nchw_ms": res["nchw"], "torch_nhwc_ms": res["nhwc"]})
with open(sys.argv[1], "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")
EOF
exit $status
