#!/usr/bin/env bash
# quilt's GPU device through ONNX Runtime 1.31.1 on the GPU machine (which has no Rust):
#
#   cargo build --release -p quilt-capi
#   mkdir -p .gpu/ep && strip -o .gpu/ep/libquilt_ep.so target/release/libquilt_ep.so
#   then on the GPU machine, with .gpu/ep and .whl (the onnxruntime 1.31.1 wheel) carried:
#   bash tests/bench/ep_gpu.sh .gpu/ep/libquilt_ep.so OUT_DIR [--full-unet]
#
# 1. environment (GPU, driver, CUDA libraries) and what ORT's device discovery reports;
# 2. a smoke run: register, list quilt's devices, run the tiny UNet on the GPU device with IO
#    binding, time it against ORT's CPU EP, then unregister (releases the GPU device cleanly);
# 3. pytest tests/python/test_gpu_ep.py (every fixture on the GPU vs the CPU EP at batch 1 and 2
#    and two latent sizes from one session each; IO binding; copies);
# 4. pytest tests/python/test_fixtures.py and test_bad_input.py: the reference device still works
#    on a machine that also offers the GPU device (conftest passes every quilt device; the
#    reference device comes first, so those sessions stay on it);
# 5. with --full-unet (carry the diffusers wheel in .whl too; ~2 more minutes): the full-size SD 1.5
#    UNet (random weights, exported by tests/bench/unet_full_gpu.py into /tmp/unet_full) through
#    ORT + quilt's GPU device with IO binding, batch 2, 64x64 latent: session creation time, first
#    and repeat run times, error vs PyTorch eager fp32 (TF32 off).
set -uo pipefail
LIB="$(readlink -f "${1:?path to libquilt_ep.so}")"; OUT="${2:?out dir}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/onnxruntime-1.31.1-*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 QUILT_EP_LIB="$LIB"
# cuBLAS and NVRTC of the toolkit that matches the driver (CUDA 13.0 with driver 580).
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}" QUILT_CUDA_INCLUDE="${QUILT_CUDA_INCLUDE:-/usr/local/cuda/include}"
{
    echo "== nvidia-smi"; nvidia-smi --query-gpu=name,driver_version,memory.total,pci.bus_id --format=csv
    echo "== libraries"; ls /usr/local/cuda/lib64 | grep -E '^lib(nvrtc|cublas)\.so' | sort; ldconfig -p | grep -E 'libcuda\.so' | head -2
    python3 -c 'import onnxruntime as o, numpy; print("onnxruntime", o.__version__, o.__file__, "numpy", numpy.__version__)'
} 2>&1 | tee "$OUT/env.txt"
status=0

echo "== smoke run"
python3 - <<'EOF' 2>&1 | tee "$OUT/smoke.log" || status=1
import os, time
import numpy as np
import onnxruntime as ort

ort.set_default_logger_severity(2)  # quilt's warnings (e.g. why it declines a node) show
print("hardware devices ORT reports to EPs:")
for d in ort.get_ep_devices():
    print("  ", d.ep_name, d.device.type, hex(d.device.vendor_id), hex(d.device.device_id), dict(d.device.metadata))
ort.register_execution_provider_library("quilt", os.environ["QUILT_EP_LIB"])
quilt = [d for d in ort.get_ep_devices() if d.ep_name == "QuiltExecutionProvider"]
for d in quilt:
    print("quilt device:", d.device.type, hex(d.device.vendor_id), dict(d.device.metadata), dict(d.ep_metadata))
gpu = [d for d in quilt if d.ep_metadata.get("quilt.backend") == "cuda"]
assert gpu, "quilt offers no GPU device on the GPU machine"
ordinal = int(gpu[0].ep_metadata["cuda_device_id"])

path = "models/fixtures/unet/model.onnx"
so = ort.SessionOptions()
so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
so.add_provider_for_devices(gpu[:1], {"log_level": "info"})
t0 = time.perf_counter()
sess = ort.InferenceSession(path, sess_options=so, enable_fallback=0)
print(f"session creation on the GPU device: {time.perf_counter() - t0:.2f} s")
cpu = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
feeds = {"sample": rng.standard_normal((2, 4, 16, 16)).astype(np.float32),
         "timestep": np.array(500.0, dtype=np.float32),
         "encoder_hidden_states": rng.standard_normal((2, 77, 32)).astype(np.float32)}
out_name = sess.get_outputs()[0].name
want = cpu.run([out_name], feeds)[0]
got = sess.run([out_name], feeds)[0]
print("host I/O: max abs err vs CPU EP", float(np.abs(got - want).max()))

io = sess.io_binding()
for k, v in feeds.items():
    io.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(v, "cuda", ordinal))
io.bind_output(out_name, "cuda", ordinal)
sess.run_with_iobinding(io)
def median_ms(f, n=20):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return 1e3 * sorted(ts)[n // 2]
print(f"tiny UNet b2 16x16: quilt GPU, IO binding {median_ms(lambda: sess.run_with_iobinding(io)):.2f} ms; "
      f"quilt GPU, host I/O {median_ms(lambda: sess.run([out_name], feeds)):.2f} ms; "
      f"ORT CPU EP {median_ms(lambda: cpu.run([out_name], feeds)):.2f} ms (median of 20)")
print("IO binding: max abs err vs CPU EP", float(np.abs(io.copy_outputs_to_cpu()[0] - want).max()))
del io, sess
ort.unregister_execution_provider_library("quilt")
print("unregistered cleanly")
EOF

echo "== pytest: GPU device"
python3 -m pytest -q -rs --tb=short -p no:cacheprovider tests/python/test_gpu_ep.py 2>&1 | tee "$OUT/pytest_gpu.log" || status=1
echo "== pytest: reference device next to the GPU device"
python3 -m pytest -q -rs --tb=short -p no:cacheprovider tests/python/test_fixtures.py tests/python/test_bad_input.py 2>&1 | tee "$OUT/pytest_reference.log" || status=1
if [[ "${3:-}" == "--full-unet" ]]; then
    echo "== full-size UNet: export and PyTorch reference"
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/diffusers-*.whl || status=1
    timeout 240 python3 tests/bench/unet_full_gpu.py /tmp/unet_full 2>&1 | tee "$OUT/unet_full_torch.log" || status=1
    echo "== full-size UNet through ORT + quilt's GPU device"
    timeout 240 python3 - <<'EOF' 2>&1 | tee "$OUT/unet_full_ort.log" || status=1
import json, os, time
import numpy as np
import onnxruntime as ort

ort.set_default_logger_severity(2)
ort.register_execution_provider_library("quilt", os.environ["QUILT_EP_LIB"])
gpu = [d for d in ort.get_ep_devices()
       if d.ep_name == "QuiltExecutionProvider" and d.ep_metadata.get("quilt.backend") == "cuda"][:1]
work = "/tmp/unet_full"
so = ort.SessionOptions()
so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
so.add_provider_for_devices(gpu, {})
t = time.perf_counter()
sess = ort.InferenceSession(f"{work}/unet/model.onnx", sess_options=so, enable_fallback=0)
create_s = time.perf_counter() - t
shapes = {"sample": (2, 4, 64, 64), "encoder_hidden_states": (2, 77, 768)}
io = sess.io_binding()
for i in sess.get_inputs():
    a = np.fromfile(f"{work}/inputs/{i.name}.bin", dtype="<f4")
    a = a.reshape(shapes[i.name]) if i.name in shapes else a.reshape(() if len(i.shape) == 0 else (-1,))
    io.bind_ortvalue_input(i.name, ort.OrtValue.ortvalue_from_numpy(a, "cuda", 0))
out_name = sess.get_outputs()[0].name
io.bind_output(out_name, "cuda", 0)
t = time.perf_counter(); sess.run_with_iobinding(io); first_ms = 1e3 * (time.perf_counter() - t)
ts = []
for _ in range(10):
    t = time.perf_counter(); sess.run_with_iobinding(io); ts.append(1e3 * (time.perf_counter() - t))
got = io.copy_outputs_to_cpu()[0]
ref = np.fromfile(f"{work}/reference.bin", dtype="<f4").reshape(got.shape)
print(json.dumps({"model": "unet_full fp32", "batch": 2, "latent": 64, "session_create_s": round(create_s, 2),
                  "first_run_ms": round(first_ms, 2), "median_ms": round(sorted(ts)[5], 2), "min_ms": round(min(ts), 2),
                  "max_abs_err_vs_torch_fp32": float(np.abs(got - ref).max()), "ref_max_abs": float(np.abs(ref).max()),
                  "finite": bool(np.isfinite(got).all())}))
EOF
fi
exit $status
