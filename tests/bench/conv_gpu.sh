#!/usr/bin/env bash
# Runs on the GPU machine (no Rust there) from a test binary built elsewhere:
#
#   cargo test --release -p quilt-tests --test cuda_conv --no-run
#   strip -o BIN_DIR/cuda_conv target/release/deps/cuda_conv-<hash>
#   bash tests/bench/conv_gpu.sh BIN_DIR OUT_DIR
#
# 1. Conv correctness (tests/tests/cuda_conv.rs): through the executor with every convolution on
#    cuDNN (graph API first), on the legacy API only (QUILT_CONV=legacy), on the im2col path
#    (QUILT_CONV=im2col; the machine has a system libcudnn, so a missing library cannot be
#    simulated there); and direct graph-API calls, NCHW and NHWC, with bias and residual.
# 2. Timing, f16, of the SD 1.5 UNet's conv shapes at batch 2, 64² latent, and the VAE decoder's
#    at batch 1 (QUILT_CONV_BENCH=1 of the same binary): cuDNN graph API NHWC (heuristic engine,
#    with a residual, benchmarked engine), graph API NCHW, legacy API NCHW, im2col NCHW; then
#    torch.nn.functional.conv2d (cudnn.benchmark=True, NCHW and channels_last) on the same
#    shapes, timed the same way: median of 5 × mean of 20 back-to-back calls, synchronised at
#    both ends (so per-call host overhead is included).
#
# cuDNN comes from PyTorch's nvidia-cudnn wheel (the same recipe a user follows, see the module
# doc of kernels/src/cuda/conv/mod.rs).
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
echo "== correctness, direct graph-API calls (NCHW/NHWC, bias, residual)"
"$BIN"/cuda_conv --nocapture --test-threads=1 graph_api 2>&1 | tee "$OUT/correctness_graph.log" || status=1
echo "== correctness through the executor, cuDNN graph API first"
"$BIN"/cuda_conv --nocapture --test-threads=1 conv_matches 2>&1 | tee "$OUT/correctness.log" || status=1
echo "== correctness, default policy (auto)"
QUILT_CONV=auto "$BIN"/cuda_conv --nocapture --test-threads=1 conv_matches 2>&1 | tee "$OUT/correctness_auto.log" | tail -4 || status=1
echo "== correctness, legacy API"
QUILT_CONV=legacy "$BIN"/cuda_conv --nocapture --test-threads=1 conv_matches 2>&1 | tee "$OUT/correctness_legacy.log" | tail -4 || status=1
echo "== correctness, im2col path"
QUILT_CONV=im2col "$BIN"/cuda_conv --nocapture --test-threads=1 conv_matches 2>&1 | tee "$OUT/correctness_im2col.log" | tail -4 || status=1
echo "== correctness, benchmarked engines and algorithms"
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
# (name, N, C, M, k, stride, pad, H=W): as conv_timing in tests/tests/cuda_conv.rs.
shapes = [
    ("unet conv_in 4->320 @64", 2, 4, 320, 3, 1, 1, 64),
    ("unet 320->320 @64", 2, 320, 320, 3, 1, 1, 64),
    ("unet 640->640 @32", 2, 640, 640, 3, 1, 1, 32),
    ("unet 1280->1280 @16", 2, 1280, 1280, 3, 1, 1, 16),
    ("unet 1280->1280 @8", 2, 1280, 1280, 3, 1, 1, 8),
    ("unet 2560->1280 @8", 2, 2560, 1280, 3, 1, 1, 8),
    ("unet 640->320 1x1 @64", 2, 640, 320, 1, 1, 0, 64),
    ("unet conv_out 320->4 @64", 2, 320, 4, 3, 1, 1, 64),
    ("vae 512->512 @64", 1, 512, 512, 3, 1, 1, 64),
    ("vae 512->512 @128", 1, 512, 512, 3, 1, 1, 128),
    ("vae 512->512 @256", 1, 512, 512, 3, 1, 1, 256),
    ("vae 512->256 @256", 1, 512, 256, 3, 1, 1, 256),
    ("vae 256->256 @256", 1, 256, 256, 3, 1, 1, 256),
    ("vae 256->128 @512", 1, 256, 128, 3, 1, 1, 512),
    ("vae 128->128 @512", 1, 128, 128, 3, 1, 1, 512),
    ("vae 128->3 @512", 1, 128, 3, 3, 1, 1, 512),
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
for name, n, c, m, k, s, p, hw in shapes:
    for dt, tdt in (("f16", torch.float16),):
        x = torch.randn(n, c, hw, hw, device="cuda", dtype=tdt)
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

echo "== table (ms)"
python3 - "$OUT/quilt.jsonl" "$OUT/torch.jsonl" <<'EOF' 2>&1 | tee "$OUT/table.md"
import json, sys
q = [json.loads(l) for l in open(sys.argv[1])]
t = {r["conv"]: r for r in map(json.loads, open(sys.argv[2])) if r["dtype"] == "f16"}
print("| conv (f16) | GFLOP | graph NHWC | graph NHWC +res | graph NHWC bench | graph NCHW | legacy NCHW | im2col NCHW | torch NCHW | torch NHWC | engine NHWC (heur / bench) | engine NCHW |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in q:
    tr = t.get(r["conv"], {})
    f = lambda k, d=r: f"{d[k]:.3f}" if k in d else "-"
    print(f"| {r['conv']} | {r['gflop']:.2f} | {f('graph_nhwc_ms')} | {f('graph_nhwc_residual_ms')} | {f('graph_nhwc_benchmark_ms')} | {f('graph_nchw_ms')} | {f('legacy_nchw_ms')} | {f('im2col_nchw_ms')} | {f('torch_nchw_ms', tr)} | {f('torch_nhwc_ms', tr)} | {r['engine_nhwc']} / {r['engine_nhwc_benchmark']} | {r['engine_nchw']} |")
EOF
exit $status
