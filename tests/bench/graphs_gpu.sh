#!/usr/bin/env bash
# CUDA graphs and allocation-free runs on the GPU machine (which has no Rust):
#
#   here:  cargo build --release -p quilt-capi
#          cargo test --release -p quilt-tests --test cuda_graphs --test cuda_fixtures --no-run
#          mkdir -p .gpu/graphs; strip each of target/release/libquilt_ep.so and the two test
#          binaries (target/release/deps/cuda_{graphs,fixtures}-*) into .gpu/graphs/ (names
#          libquilt_ep.so, cuda_graphs, cuda_fixtures), then `xz -9` them (the carried tree must
#          stay under 64 MiB); carry .gpu/graphs, .whl/onnxruntime-1.31.1-*.whl, .whl/diffusers-*.whl
#   there: bash tests/bench/graphs_gpu.sh .gpu/graphs OUT_DIR [--ort-only]
#
# --ort-only skips part 1 (then only libquilt_ep.so is needed) and reuses an earlier export of
# part 2 when the machine still has it.
#
# 1. tests/tests/cuda_graphs.rs: graph replays vs step-by-step runs vs the CPU at shapes A, B, A,
#    B, A with poisoned, alternating output buffers; an index out of range reported after a
#    replayed run; and tests/tests/cuda_fixtures.rs (every fixture, both plans, vs the CPU) as
#    the regression check of the reworked executor.
# 2. The full-size SD 1.5 UNet (random weights, exported by tests/bench/unet_full_gpu.py into
#    /tmp/unet_full) through ORT 1.31.1 + quilt's GPU device with IO binding, one session with
#    cuda_graph=1 and one with cuda_graph=0 (and precision=fp16 when the EP knows that option):
#    session creation; at b2 64² (shape A): first call, second call (the capture), median of 20;
#    then b1 64² (shape B, new): first, second, median of 10; then A again (first call after B,
#    median of 10); error vs PyTorch eager fp32 at A; device memory in use after the session's
#    runs (nvidia-smi, whole device). One JSON line per session. The first session's first call
#    also pays the process's one-time start (cuDNN/cuBLAS loading, handles); GRAPHS_CASES='[...]'
#    chooses the sessions and their order.
set -uo pipefail
BIN="$(readlink -f "${1:?bin dir}")"; OUT="${2:?out dir}"
mkdir -p "$OUT" /tmp/qbin
for f in "$BIN"/*; do
    case "$f" in
        *.xz) xz -dc "$f" > "/tmp/qbin/$(basename "$f" .xz)" ;;
        *) cp "$f" /tmp/qbin/ ;;
    esac
done
chmod +x /tmp/qbin/* 2>/dev/null
# NVRTC/cuBLAS 13.0 match driver 580; cuDNN from PyTorch's wheel (a libcudnn.so link to it first).
CUDNN_DIR=$(python3 -c 'import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], "lib"))' 2>/dev/null || true)
if [ -n "$CUDNN_DIR" ] && [ -f "$CUDNN_DIR/libcudnn.so.9" ]; then
    mkdir -p /tmp/quilt-cudnn && ln -sf "$CUDNN_DIR/libcudnn.so.9" /tmp/quilt-cudnn/libcudnn.so
    export LD_LIBRARY_PATH="/tmp/quilt-cudnn:$CUDNN_DIR:${LD_LIBRARY_PATH:-}"
fi
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export QUILT_FIXTURES="$PWD/models/fixtures" QUILT_CUDA_INCLUDE="${QUILT_CUDA_INCLUDE:-/usr/local/cuda/include}"
export QUILT_CACHE_DIR=/tmp/quilt-kernels PYTHONUNBUFFERED=1
{
    echo "== nvidia-smi"; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
    echo "== cuDNN dir: ${CUDNN_DIR:-none}"; ls /tmp/qbin
} 2>&1 | tee "$OUT/env.txt"
status=0

ORT_ONLY="${3:-}"
if [[ "$ORT_ONLY" != "--ort-only" ]]; then
echo "== cuda_graphs test"
timeout 90 /tmp/qbin/cuda_graphs --nocapture --test-threads=1 2>&1 | tee "$OUT/cuda_graphs.log" | tail -40 || status=1
echo "== cuda_fixtures test (regression)"
QUILT_CUDA_REPORT="$OUT/fixtures_report.txt" timeout 90 /tmp/qbin/cuda_fixtures --nocapture --test-threads=1 > "$OUT/cuda_fixtures.log" 2>&1 || status=1
grep -E "test result|FAIL|panicked|failures" "$OUT/cuda_fixtures.log" | head -20
fi

echo "== full-size UNet export (PyTorch)"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/onnxruntime-1.31.1-*.whl .whl/diffusers-*.whl || exit 1
export PYTHONPATH=/tmp/site QUILT_EP_LIB=/tmp/qbin/libquilt_ep.so
if [[ ! -f /tmp/unet_full/reference.bin ]]; then
    timeout 150 python3 tests/bench/unet_full_gpu.py /tmp/unet_full > "$OUT/unet_full_torch.log" 2>&1 || status=1
    tail -1 "$OUT/unet_full_torch.log"
fi

echo "== full-size UNet through ORT + quilt: cuda_graph=1 vs 0"
timeout 150 python3 - <<'EOF' 2>&1 | tee "$OUT/unet_full_graphs.log" || status=1
import json, os, subprocess, time
import numpy as np
import onnxruntime as ort

ort.set_default_logger_severity(3)
ort.register_execution_provider_library("quilt", os.environ["QUILT_EP_LIB"])
gpu = [d for d in ort.get_ep_devices()
       if d.ep_name == "QuiltExecutionProvider" and d.ep_metadata.get("quilt.backend") == "cuda"][:1]
work = "/tmp/unet_full"
shapes = {"sample": (2, 4, 64, 64), "encoder_hidden_states": (2, 77, 768)}
host = {}
for name in ("sample", "timestep", "encoder_hidden_states"):
    a = np.fromfile(f"{work}/inputs/{name}.bin", dtype="<f4")
    host[name] = a.reshape(shapes[name]) if name in shapes else a
ref = np.fromfile(f"{work}/reference.bin", dtype="<f4").reshape(shapes["sample"])

def used_mib():
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True).stdout
    return int(out.split()[0])

def bind(sess, batch):
    io = sess.io_binding()
    for i in sess.get_inputs():
        a = host[i.name]
        if i.name in shapes:
            a = np.ascontiguousarray(a[:batch])
        else:
            a = a.reshape(() if len(i.shape) == 0 else (-1,))
        io.bind_ortvalue_input(i.name, ort.OrtValue.ortvalue_from_numpy(a, "cuda", 0))
    io.bind_output(sess.get_outputs()[0].name, "cuda", 0)
    return io

def timed(sess, io):
    t = time.perf_counter(); sess.run_with_iobinding(io); io.synchronize_outputs(); return 1e3 * (time.perf_counter() - t)

def throughput(sess, io, n=20):
    # n runs back to back, one read of the output at the end (waits for the device): per-run time
    # even if a run returns before the device finishes.
    t = time.perf_counter()
    for _ in range(n):
        sess.run_with_iobinding(io)
    io.copy_outputs_to_cpu()
    return 1e3 * (time.perf_counter() - t) / n

def median(xs):
    return sorted(xs)[len(xs) // 2]

def session(options):
    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    so.add_provider_for_devices(gpu, options)
    t = time.perf_counter()
    sess = ort.InferenceSession(f"{work}/unet/model.onnx", sess_options=so, enable_fallback=0)
    return sess, time.perf_counter() - t

# GRAPHS_CASES (a JSON list of option dicts) picks other sessions, in order.
cases = json.loads(os.environ.get("GRAPHS_CASES", "null")) or [{"cuda_graph": "1"}, {"cuda_graph": "0"}, {"cuda_graph": "1", "precision": "fp16"}]
base_mib = used_mib()
for options in cases:
    try:
        sess, create_s = session(options)
    except Exception as e:  # an option this build does not know (precision before it lands)
        print(json.dumps({"options": options, "skipped": str(e)[-600:]}))
        continue
    r = {"options": options, "session_create_s": round(create_s, 2)}
    a = bind(sess, 2)
    r["A_first_ms"] = round(timed(sess, a), 2)
    r["A_second_ms"] = round(timed(sess, a), 2)
    r["A_median_ms"] = round(median([timed(sess, a) for _ in range(20)]), 2)
    r["A_throughput_ms"] = round(throughput(sess, a), 2)
    got = a.copy_outputs_to_cpu()[0]
    r["A_max_abs_err_vs_torch_fp32"] = float(np.abs(got - ref).max())
    r["ref_max_abs"] = float(np.abs(ref).max())
    r["finite"] = bool(np.isfinite(got).all())
    b = bind(sess, 1)
    r["B_first_ms"] = round(timed(sess, b), 2)
    r["B_second_ms"] = round(timed(sess, b), 2)
    r["B_median_ms"] = round(median([timed(sess, b) for _ in range(10)]), 2)
    gb = b.copy_outputs_to_cpu()[0]
    r["B_vs_A_batch0_max_abs"] = float(np.abs(gb[0] - got[0]).max())
    r["A_again_first_ms"] = round(timed(sess, a), 2)
    r["A_again_median_ms"] = round(median([timed(sess, a) for _ in range(10)]), 2)
    r["first_call_overhead_ms"] = round(r["A_first_ms"] - r["A_median_ms"], 2)
    r["B_first_call_overhead_ms"] = round(r["B_first_ms"] - r["B_median_ms"], 2)
    r["capture_call_overhead_ms"] = round(r["A_second_ms"] - r["A_median_ms"], 2)
    r["device_used_mib_over_baseline"] = used_mib() - base_mib
    print(json.dumps(r))
    del a, b, sess
EOF
exit $status
