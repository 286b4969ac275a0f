"""Issue 4's benchmark: SD 1.5-shaped UNet, VAE decoder and CLIP text encoder, same weights, one
run: PyTorch eager fp16, torch.compile (default and reduce-overhead) fp16, and ORT + quilt.

    python tests/bench/bench_unet.py --out OUT_DIR [--work WORK_DIR] [--cases LIST] [--quick]
        [--ep-lib libquilt_ep.so] [--bench-bin bench_onnx_gpu] [--quilt-options precision=fp16]
        [--modes eager,compile,compile_ro,quilt] [--iters 20] [--budget-s 540]

Cases (`--cases`, comma-separated; default all):
  unet_b1, unet_b2, unet_b8   UNet at batch 1/2/8, 64x64 latent, sequence 77
  unet_b2_96                  UNet at batch 2, 96x96 latent
  vae_decoder                 VAE decoder, batch 1, 64x64 latent -> 512x512 image
  clip                        CLIP ViT-L/14 text encoder, batch 2 x 77 tokens
`--quick` runs the same cases on make_fixtures' tiny configs (a dry run of every path in about
a minute; latents 16/24, VAE latent 8).

Weights: each model is built once (`make_fixtures.seeded_model`: diffusers/transformers with SD
1.5's configs and seeded random weights), exported in fp32 with the TorchScript exporter (opset
17, Optimum's names and dynamic axes) to WORK/<model>/model.onnx (weights in model.onnx_data),
then cast to fp16 on the GPU for PyTorch. quilt runs that fp32 ONNX file with the provider
option `precision=fp16` (`--quilt-options`), i.e. the same weights rounded to f16.

Timing: PyTorch with CUDA events, median of `--iters` after 3 warm-ups (compiled modes: after
their compile and warm-up calls). ORT + quilt: host wall clock of `run_with_iobinding` with
inputs and outputs bound on quilt's device (falling back to `session.run` on numpy arrays,
labelled), each run followed by `synchronize_outputs`, median of `--iters` after 3 warm-ups.
`eager_device_busy_ms`: the device time of one eager call (its kernels summed, CUPTI): where it
is well under `eager_ms` the host's launches bound eager, and eager ratios follow the host's CPU.

quilt runs in a child process that never imports torch (so PyTorch's caching allocator holds
nothing on the GPU meanwhile). It registers `--ep-lib` with ORT and asks `ort.get_ep_devices()`
for a device with `ep_name == 'QuiltExecutionProvider'` of type GPU. When none is offered it
reports so, and the case runs through the `bench_onnx_gpu` example binary instead
(`quilt_path: "bench_onnx_gpu"`: quilt's CUDA backend without ORT, host tensors in and out, so
its times include the copies). `--quilt-path ort|binary` forces one of the two.

Memory: `eager_peak_bytes` is `torch.cuda.max_memory_allocated()` over one eager call (weights
included, CUDA context and allocator slack excluded). `quilt_peak_bytes` is read with NVML
(device-wide used memory, polled every ~1 ms by a thread during 3 extra runs) minus the used
memory after the child created its CUDA context (the primary context, which quilt shares), so it
counts quilt's weights, arena, workspaces and modules but not the context
(`quilt_context_bytes`, reported beside). For the bench_onnx_gpu fallback it is the binary's own
`nvidia-smi` reading (context included, 20 ms sampling).

Session creation: `session_create_s` is `InferenceSession(...)` wall time (quilt's compile,
kernel codegen/NVRTC and weight upload included); for the UNet a second session is created after
the first is dropped (`session_create_warm_s`: kernel cache warm when quilt has one).

Results: OUT/bench.json (written after every case, so a cut-off run keeps what finished), and a
table on stdout. Per case: model, batch, latent, quilt_ms, eager_ms, compile_ms, compile_ro_ms,
quilt_peak_bytes, eager_peak_bytes, session_create_s, plus ratios and details.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "models", "fixtures"))

CASES = {
    # name: (model, batch, latent or None, sequence)
    "unet_b1": ("unet", 1, 64, 77),
    "unet_b2": ("unet", 2, 64, 77),
    "unet_b8": ("unet", 8, 64, 77),
    "unet_b2_96": ("unet", 2, 96, 77),
    "vae_decoder": ("vae_decoder", 1, 64, None),
    "clip": ("clip", 2, None, 77),
}
# --quick: the same cases on the tiny fixture configs, at smaller latents.
QUICK_LATENT = {64: 16, 96: 24}
QUICK_VAE_LATENT = 8
# make_fixtures spec names per model.
SPECS = {"unet": ("unet_full", "unet"), "vae_decoder": ("vae_decoder_full", "vae_decoder"), "clip": ("text_encoder_full", "text_encoder")}
NVIDIA = 0x10DE
WARMUP = 3


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def rel_l2(got: np.ndarray, want: np.ndarray) -> float:
    got, want = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))


class Nvml:
    """Device-wide used memory through NVML (libnvidia-ml, from the driver); no CUDA context."""

    class _Memory(ctypes.Structure):
        _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]

    def __init__(self, index: int = 0):
        self.lib = ctypes.CDLL("libnvidia-ml.so.1")
        if self.lib.nvmlInit_v2() != 0:
            raise RuntimeError("nvmlInit failed")
        self.handle = ctypes.c_void_p()
        if self.lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(self.handle)) != 0:
            raise RuntimeError("nvmlDeviceGetHandleByIndex failed")

    def used(self) -> int:
        m = self._Memory()
        if self.lib.nvmlDeviceGetMemoryInfo(self.handle, ctypes.byref(m)) != 0:
            raise RuntimeError("nvmlDeviceGetMemoryInfo failed")
        return int(m.used)


class PeakPoller:
    """Polls NVML used memory every ~1 ms on a thread between start() and stop()."""

    def __init__(self, nvml: Nvml):
        self.nvml, self.peak, self._stop, self._thread = nvml, 0, threading.Event(), None

    def start(self) -> None:
        self.peak = self.nvml.used()
        self._stop.clear()

        def poll():
            while not self._stop.is_set():
                self.peak = max(self.peak, self.nvml.used())
                time.sleep(0.001)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.nvml.used())


def retain_primary_context() -> None:
    """Creates the device's primary CUDA context (what cudarc, and so quilt, uses) so that its
    memory is counted before quilt's."""
    cuda = ctypes.CDLL("libcuda.so.1")
    dev, ctx = ctypes.c_int(), ctypes.c_void_p()
    for rc in (cuda.cuInit(0), cuda.cuDeviceGet(ctypes.byref(dev), 0), cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev)):
        if rc != 0:
            raise RuntimeError(f"CUDA driver call failed with {rc}")


# --------------------------------------------------------------------------------------------
# Cases, models, inputs
# --------------------------------------------------------------------------------------------


def case_dims(case: str, quick: bool) -> dict:
    model, batch, latent, seq = CASES[case]
    if quick and latent is not None:
        latent = QUICK_VAE_LATENT if model == "vae_decoder" else QUICK_LATENT[latent]
    return {"model": model, "batch": batch, "latent": latent, "sequence": seq}


def onnx_dims(d: dict) -> dict:
    """The ONNX dim_param bindings (Optimum's names) of a case."""
    if d["model"] == "unet":
        return {"batch_size": d["batch"], "height": d["latent"], "width": d["latent"], "sequence_length": d["sequence"]}
    if d["model"] == "vae_decoder":
        return {"batch_size": d["batch"], "latent_height": d["latent"], "latent_width": d["latent"]}
    return {"batch_size": d["batch"], "sequence_length": d["sequence"]}


def make_inputs(spec, d: dict, seed: int) -> dict[str, np.ndarray]:
    """Seeded inputs in the export's input order: floats N(0, 1) (timestep: 999 / 500 as below),
    token ids uniform in the vocabulary."""
    gen = np.random.default_rng(seed)
    dims = {"batch": d["batch"], "height": d["latent"], "width": d["latent"], "sequence": d["sequence"]}
    out = {}
    for i in spec.inputs:
        if i.name == "timestep":
            out[i.name] = np.array(500.0, dtype=np.float32)
        else:
            out[i.name] = i.make(dims, gen)
    return out


def export_model(mf, spec, model, out_dir: str, reuse: bool = False) -> dict:
    """TorchScript export at make_fixtures' export dims (axes dynamic), weights moved to one
    external file next to the model. `reuse`: an earlier run's OUT_DIR/model.onnx is kept (same
    seeds, so the same weights) and `model` is not touched."""
    import onnx

    final = os.path.join(out_dir, "model.onnx")
    if reuse and os.path.exists(final):
        return {"path": final, "reused": True}
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        with mf.quiet():
            mf.export_torchscript(spec, model, mf.example_args(spec, spec.export_dims), path)
        proto = onnx.load(path)
    problems = mf.check_dynamic(spec, proto)
    if problems:
        raise RuntimeError("dynamic axes lost: " + "; ".join(problems))
    onnx.save_model(proto, final, save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx_data", size_threshold=1024)
    return {"path": final, "export_s": round(time.time() - t0, 1), "nodes": len(proto.graph.node)}


# --------------------------------------------------------------------------------------------
# PyTorch side
# --------------------------------------------------------------------------------------------


def time_cuda(fn, iters: int, warmup: int = WARMUP) -> list[float]:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def device_busy_ms(fn, iters: int = 5) -> float:
    """Device time per call of `fn` (kernels, memsets and copies summed, CUPTI through torch's
    profiler). Against the CUDA-event median it says whether the host's launches or the device
    bound a mode: eager at b2 64² is launch-bound on slow hosts, so its ratio follows the host."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from kernel_trace import device_events

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    return sum(d for _, d, _ in device_events(prof)) / iters / 1e3


def torch_case(model, inputs: dict, modes: list[str], iters: int, deadline: float, result: dict, ref_path: str) -> None:
    """Eager, compile default, compile reduce-overhead for one case, into `result`."""
    import torch

    args = tuple(torch.from_numpy(a).cuda() for a in inputs.values())
    args = tuple(a.half() if a.is_floating_point() else a for a in args)

    def first_output(o):
        return o[0] if isinstance(o, (tuple, list)) else o

    with torch.inference_mode():
        if "eager" in modes:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            out = first_output(model(*args))
            torch.cuda.synchronize()
            result["eager_peak_bytes"] = int(torch.cuda.max_memory_allocated())
            result["eager_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
            out.float().cpu().numpy().astype("<f4").tofile(ref_path)
            t = time_cuda(lambda: model(*args), iters)
            result["eager_ms"], result["eager_min_ms"] = round(median(t), 3), round(min(t), 3)
            try:
                result["eager_device_busy_ms"] = round(device_busy_ms(lambda: model(*args)), 3)
            except Exception as e:  # noqa: BLE001 - a diagnostic: recorded, the timing stands
                result.setdefault("errors", {})["eager_device_busy"] = f"{type(e).__name__}: {e}"[:300]
        for mode, key in (("compile", "compile"), ("compile_ro", "compile_ro")):
            if mode not in modes:
                continue
            # torch.compile takes 60-90 s per model and mode at full size.
            if time.time() + 100 > deadline:
                result.setdefault("skipped", []).append(f"{mode}: --budget-s reached")
                continue
            torch._dynamo.reset()
            compiled = torch.compile(model, mode="reduce-overhead" if mode == "compile_ro" else None)
            try:
                t0 = time.time()
                compiled(*args)
                torch.cuda.synchronize()
                result[f"{key}_compile_s"] = round(time.time() - t0, 1)
                t = time_cuda(lambda: compiled(*args), iters)
                result[f"{key}_ms"], result[f"{key}_min_ms"] = round(median(t), 3), round(min(t), 3)
            except Exception as e:  # noqa: BLE001 - recorded, the other modes still run
                result.setdefault("errors", {})[mode] = f"{type(e).__name__}: {e}"[:500]
            compiled = None
            torch._dynamo.reset()
    torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# quilt side: child process (ORT + quilt's GPU device), fallback binary
# --------------------------------------------------------------------------------------------


def parse_options(s: str) -> dict:
    out = {}
    for kv in filter(None, s.split(",")):
        k, _, v = kv.partition("=")
        out[k.strip()] = v.strip()
    return out


def device_runner(ort, session, feeds: dict, out_names: list[str], outs: list, r: dict):
    """A zero-argument run of `session`: on inputs and outputs bound on quilt's device when ORT
    can make them there, else on the numpy feeds; `r["io"]` says which."""
    try:
        io = session.io_binding()
        for k, v in feeds.items():
            io.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(v, "gpu", 0, NVIDIA))
        for name, o in zip(out_names, outs):
            io.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_shape_and_type(list(o.shape), o.dtype, "gpu", 0, NVIDIA))
        session.run_with_iobinding(io)
        io.synchronize_outputs()
        r["io"] = "device io_binding"
        return lambda: (session.run_with_iobinding(io), io.synchronize_outputs())
    except Exception as e:  # noqa: BLE001 - recorded, host arrays instead
        r["io_binding_error"] = f"{type(e).__name__}: {e}"[:500]
        r["io"] = "host numpy (session.run)"
        return lambda: session.run(out_names, feeds)


def quilt_worker(spec_json: str) -> int:
    """Child process: one ORT session with quilt's GPU device over every case of one model."""
    job = json.loads(spec_json)
    report: dict = {"cases": {}}
    try:
        nvml, baseline = None, 0
        try:
            nvml = Nvml()
            before_context = nvml.used()
            retain_primary_context()
            time.sleep(0.05)
            baseline = nvml.used()
            report["context_bytes"] = baseline - before_context
        except (OSError, RuntimeError) as e:  # no driver here: no memory numbers
            nvml = None
            report["memory_error"] = f"{type(e).__name__}: {e}"

        import onnxruntime as ort

        report["onnxruntime"] = ort.__version__
        ort.register_execution_provider_library("quilt", job["ep_lib"])
        all_devices = ort.get_ep_devices()
        report["ep_devices"] = [f"{d.ep_name}:{d.device.type}" for d in all_devices]
        # device_type CPU (quilt's reference device, QUILT_REFERENCE_DEVICE=1) only tests this code.
        want_type = getattr(ort.OrtHardwareDeviceType, job.get("device_type", "GPU"))
        gpu = [d for d in all_devices if d.ep_name == "QuiltExecutionProvider" and d.device.type == want_type]
        if not gpu:
            report["no_gpu_device"] = True
            print(json.dumps(report), flush=True)
            return 0
        options = dict(job["options"])

        def make_session(opts: dict, no_fallback: bool):
            so = ort.SessionOptions()
            so.add_provider_for_devices(gpu[:1], opts)
            so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
            if no_fallback:
                so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
            t0 = time.time()
            s = ort.InferenceSession(job["model"], sess_options=so)
            create_s = time.time() - t0
            # When the EP cannot be created (an unknown option, say), onnxruntime's Python
            # session prints the error and silently retries on the CPU EP alone.
            if "QuiltExecutionProvider" not in s.get_providers():
                raise RuntimeError(f"onnxruntime fell back to {s.get_providers()}: quilt's EP was not created (its error is on stderr)")
            # Likewise a failing run would be retried on a new CPU-EP session: surface the error.
            s.disable_fallback()
            return s, create_s

        # Strict first (quilt takes every node); each relaxation is recorded.
        without_precision = {k: v for k, v in options.items() if k != "precision"}
        attempts = [(options, True), (options, False)]
        if without_precision != options:
            attempts += [(without_precision, True), (without_precision, False)]
        session, errors = None, []
        for opts, strict in attempts:
            try:
                session, create_s = make_session(opts, strict)
                report["options"], report["cpu_fallback_allowed"] = opts, not strict
                break
            except Exception as e:  # noqa: BLE001 - recorded
                errors.append(f"options={opts} strict={strict}: {type(e).__name__}: {e}"[:800])
        report["session_errors"] = errors
        if session is None:
            print(json.dumps(report), flush=True)
            return 0
        report["session_create_s"] = round(create_s, 2)
        nodes_by_ep: dict = {}
        for sub in session.get_provider_graph_assignment_info():
            nodes_by_ep[sub.ep_name] = nodes_by_ep.get(sub.ep_name, 0) + len(sub.get_nodes())
        report["nodes_by_ep"] = nodes_by_ep
        if nvml:
            report["after_session_bytes"] = nvml.used() - baseline
        out_names = [o.name for o in session.get_outputs()]

        for case in job["cases"]:
            r: dict = {}
            report["cases"][case["name"]] = r
            try:
                feeds = {k: np.fromfile(p, dtype=np.dtype(dt)).reshape(shape) for k, (p, dt, shape) in case["inputs"].items()}
                t0 = time.time()
                outs = session.run(out_names, feeds)
                r["first_call_ms"] = round((time.time() - t0) * 1e3, 2)
                t0 = time.time()
                session.run(out_names, feeds)
                r["second_call_ms"] = round((time.time() - t0) * 1e3, 2)
                if os.path.exists(case["reference"]):
                    ref = np.fromfile(case["reference"], dtype="<f4")
                    if ref.size == outs[0].size:
                        r["vs_torch_fp16_rel_l2"] = rel_l2(outs[0], ref)
                r["non_finite"] = int(np.size(outs[0]) - np.isfinite(outs[0]).sum())

                # Device-resident inputs and outputs (no host copies between runs).
                run = device_runner(ort, session, feeds, out_names, outs, r)

                for _ in range(WARMUP):
                    run()
                times = []
                for _ in range(job["iters"]):
                    t0 = time.perf_counter()
                    run()
                    times.append((time.perf_counter() - t0) * 1e3)
                r["quilt_ms"], r["quilt_min_ms"] = round(median(times), 3), round(min(times), 3)
                if nvml:
                    poller = PeakPoller(nvml)
                    poller.start()
                    for _ in range(3):
                        run()
                    r["quilt_peak_bytes"] = poller.stop() - baseline
            except Exception as e:  # noqa: BLE001 - recorded per case
                r["error"] = f"{type(e).__name__}: {e}"[:800]
        if job.get("warm_create"):
            del session
            try:
                _, warm_s = make_session(report["options"], not report["cpu_fallback_allowed"])
                report["session_create_warm_s"] = round(warm_s, 2)
            except Exception as e:  # noqa: BLE001 - recorded
                report["session_create_warm_error"] = f"{type(e).__name__}: {e}"[:500]
    except Exception as e:  # noqa: BLE001 - the parent records it
        report["error"] = f"{type(e).__name__}: {e}"[:800]
        report["traceback"] = traceback.format_exc()[-2000:]
    print(json.dumps(report), flush=True)
    return 0


def run_quilt_worker(job: dict, timeout: float) -> dict:
    env = dict(os.environ)
    # quilt's NVRTC/cuBLAS come from the toolkit (matches the driver); torch's libs stay out.
    env["LD_LIBRARY_PATH"] = "/usr/local/cuda/lib64:" + env.get("LD_LIBRARY_PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    try:
        p = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(job)], env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return {"error": f"quilt worker timed out after {timeout:.0f} s", "stderr": (e.stderr or "")[-2000:] if isinstance(e.stderr, str) else ""}
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": f"quilt worker exited {p.returncode} without a report", "stderr": p.stderr[-3000:]}
    report = json.loads(lines[-1])
    if p.stderr.strip():
        report["stderr_tail"] = p.stderr[-1500:]
    return report


def run_fallback_binary(binary: str, model_path: str, d: dict, inputs_dir: str, iters: int, options: dict, timeout: float, reference: str | None = None) -> dict:
    cmd = [binary, model_path, "--dims", ",".join(f"{k}={v}" for k, v in onnx_dims(d).items()), "--iters", str(iters), "--inputs", inputs_dir, "--memory"]
    if options.get("precision"):
        cmd += ["--precision", options["precision"]]
    if reference and os.path.exists(reference):
        cmd += ["--reference", reference]
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = "/usr/local/cuda/lib64:" + env.get("LD_LIBRARY_PATH", "")
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"bench_onnx_gpu timed out after {timeout:.0f} s"}
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": f"bench_onnx_gpu exited {p.returncode}: {p.stderr[-1500:]}"}
    out = json.loads(lines[-1])
    got = {"quilt_ms": out.get("median_ms"), "quilt_min_ms": out.get("min_ms"), "session_create_s": out.get("prepare_s"),
           "quilt_path": "bench_onnx_gpu", "io": "host tensors (copies and per-run allocation included)", "bench_onnx_gpu": out}
    if "l2_rel_err" in out:
        got["vs_torch_fp16_rel_l2"] = out["l2_rel_err"]
    got["non_finite"] = out.get("non_finite")
    mem = out.get("memory") or {}
    if "peak_delta_bytes" in mem:
        got["quilt_peak_bytes"] = mem["peak_delta_bytes"]
        got["quilt_peak_source"] = "bench_onnx_gpu --memory (nvidia-smi, 20 ms sampling, CUDA context included)"
    return got


def run_quilt(args, options: dict, deadline: float, model_name: str, model_cases: list[str], inputs: dict, results: dict, work: str, exp: dict) -> None:
    """ORT + quilt for every case of one model (one session), or the bench_onnx_gpu fallback."""
    job = {"model": exp["path"], "ep_lib": os.path.abspath(args.ep_lib), "options": options, "iters": args.iters,
           "warm_create": model_name == "unet" and not args.no_warm_create, "cases": []}
    for c in model_cases:
        idir = os.path.join(work, f"inputs_{c}")
        job["cases"].append({"name": c, "reference": os.path.join(work, f"torch_{c}.bin"),
                             "inputs": {k: (os.path.join(idir, f"{k}.bin"), v.dtype.str, list(v.shape)) for k, v in inputs[c].items()}})
    if args.quilt_path == "binary":
        rep = {"skipped": "--quilt-path binary"}
    else:
        log(f"{model_name}: ORT + quilt ({args.ep_lib})")
        rep = run_quilt_worker(job, timeout=max(60.0, deadline + 60 - time.time()))
    offered = "session_create_s" in rep
    shared_keys = ("session_create_s", "session_create_warm_s", "options", "cpu_fallback_allowed", "nodes_by_ep", "session_errors", "ep_devices", "onnxruntime", "error", "stderr_tail")
    for c in model_cases:
        r = results[c]
        if offered:
            r["quilt_path"] = "ort+quilt gpu ep"
            r.update({k: rep[k] for k in shared_keys if k in rep})
            r["quilt_context_bytes"] = rep.get("context_bytes")
            r.update(rep["cases"].get(c, {}))
            continue
        r["quilt_ort"] = {k: v for k, v in rep.items() if k != "cases"}
        why = "no quilt GPU device offered" if rep.get("no_gpu_device") else rep.get("skipped", "ORT + quilt session failed")
        if args.quilt_path == "ort":
            r["quilt_error"] = f"{why} (--quilt-path ort: no fallback)"
            continue
        if not os.path.exists(args.bench_bin):
            r["quilt_error"] = f"{why}, and no bench_onnx_gpu at {args.bench_bin}"
            continue
        log(f"{c}: {why}; bench_onnx_gpu fallback")
        r.update(run_fallback_binary(args.bench_bin, exp["path"], r, os.path.join(work, f"inputs_{c}"), args.iters, options,
                                     timeout=max(60.0, deadline + 60 - time.time()), reference=os.path.join(work, f"torch_{c}.bin")))
        r["quilt_path_reason"] = why


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def ratios(r: dict) -> dict:
    q = r.get("quilt_ms")
    if not q:
        return {}
    return {f"{k}_over_quilt": round(r[f"{k}_ms"] / q, 3) for k in ("eager", "compile", "compile_ro") if r.get(f"{k}_ms")}


def write_results(path: str, doc: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)


def table(doc: dict) -> str:
    rows = ["case         model        batch latent  quilt_ms  eager_ms compile_ms  ro_ms  eager/q  ro/q  quilt_peak_MB eager_peak_MB create_s  quilt_path"]
    for c in doc["cases"]:
        def f(k, fmt="{:>9.2f}"):
            v = c.get(k)
            return fmt.format(v) if isinstance(v, (int, float)) else fmt.replace(".2f", "").replace(".0f", "").format("-")
        rt = c.get("ratios", {})
        rows.append(
            f"{c['case']:<12} {c['model']:<12} {c['batch']:>5} {str(c['latent']):>6} {f('quilt_ms')} {f('eager_ms')} {f('compile_ms', '{:>10.2f}')} {f('compile_ro_ms', '{:>6.2f}')}"
            f" {rt.get('eager_over_quilt', '-'):>8} {rt.get('compile_ro_over_quilt', '-'):>5}"
            f" {(c['quilt_peak_bytes'] / 2**20 if c.get('quilt_peak_bytes') else float('nan')):>14.0f} {(c['eager_peak_bytes'] / 2**20 if c.get('eager_peak_bytes') else float('nan')):>13.0f}"
            f" {f('session_create_s', '{:>8.2f}')}  {c.get('quilt_path', '-')}"
        )
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=False, default=os.environ.get("OUT", "bench_out"))
    ap.add_argument("--work", default="/tmp/quilt_bench")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--modes", default="eager,compile,compile_ro,quilt")
    ap.add_argument("--quick", action="store_true", help="tiny configs: a dry run of every path")
    ap.add_argument("--ep-lib", default=os.environ.get("QUILT_EP_LIB", os.path.join(ROOT, "target", "release", "libquilt_ep.so")))
    ap.add_argument("--bench-bin", default=os.path.join(ROOT, "target", "release", "examples", "bench_onnx_gpu"))
    ap.add_argument("--quilt-options", default="precision=fp16", help="provider options, k=v,k=v")
    ap.add_argument("--quilt-path", choices=("auto", "ort", "binary"), default="auto",
                    help="auto: ORT + quilt's GPU device, bench_onnx_gpu where none is offered; ort / binary: only that")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--budget-s", type=float, default=540.0, help="skip torch.compile modes that would start after this many seconds")
    ap.add_argument("--no-warm-create", action="store_true", help="skip the second UNet session creation")
    ap.add_argument("--export-only", action="store_true", help="export WORK/<model>/model.onnx (with --modes quilt) and stop")
    ap.add_argument("--reuse-export", action="store_true", help="use WORK/<model>/model.onnx from an earlier run (same seed, same weights)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return quilt_worker(args.worker)

    start = time.time()
    deadline = start + args.budget_s
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"unknown cases {unknown}; known: {', '.join(CASES)}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    options = parse_options(args.quilt_options)
    os.makedirs(args.out, exist_ok=True)
    out_path = os.path.join(args.out, "bench.json")

    import torch
    import make_fixtures as mf

    doc = {
        "card": torch.cuda.get_device_name(0),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "quilt_options": options,
        "iters": args.iters,
        "timing": {"torch": "CUDA events, median after 3 warm-ups; fp16 weights and inputs, torch.inference_mode, SDPA attention (diffusers default)",
                   "quilt": "host wall clock per run_with_iobinding + synchronize_outputs (or session.run, see io), median after 3 warm-ups"},
        "memory": {"eager_peak_bytes": "torch.cuda.max_memory_allocated over one eager call (weights included, context excluded)",
                   "quilt_peak_bytes": "NVML used memory, polled ~1 ms during 3 runs, minus used memory after the child's CUDA primary context was created (context excluded, see quilt_context_bytes)"},
        "cases": [],
    }
    try:
        import diffusers
        import onnx

        doc["diffusers"], doc["onnx"] = diffusers.__version__, onnx.__version__
    except ImportError as e:
        doc["import_error"] = str(e)
    log(f"{doc['card']}, torch {doc['torch']}, cases {cases}, modes {modes}, quick={args.quick}")

    by_model: dict[str, list[str]] = {}
    for c in cases:
        by_model.setdefault(CASES[c][0], []).append(c)

    for model_name, model_cases in by_model.items():
        spec_name = SPECS[model_name][1 if args.quick else 0]
        spec = next(s for s in mf.model_specs() if s.name == spec_name)
        work = os.path.join(args.work, spec_name)
        t0 = time.time()
        model = mf.seeded_model(spec)
        build_s = time.time() - t0
        params = sum(p.numel() for p in model.parameters())
        log(f"{spec_name}: built in {build_s:.1f} s, {params} parameters")
        results = {}
        inputs = {}
        for i, c in enumerate(model_cases):
            d = case_dims(c, args.quick)
            inputs[c] = make_inputs(spec, d, mf.SEED + 1 + i)
            idir = os.path.join(work, f"inputs_{c}")
            os.makedirs(idir, exist_ok=True)
            for k, v in inputs[c].items():
                v.astype(v.dtype.newbyteorder("<")).tofile(os.path.join(idir, f"{k}.bin"))
            results[c] = {"case": c, **d, "parameters": params, "fp16_weight_bytes": 2 * params}

        def save(c: str) -> None:
            results[c]["ratios"] = ratios(results[c])
            doc["cases"] = [x for x in doc["cases"] if x["case"] != c] + [results[c]]
            write_results(out_path, doc)

        # 1. ONNX export (fp32, on the CPU).
        exp = None
        if "quilt" in modes:
            try:
                exp = export_model(mf, spec, model, work, reuse=args.reuse_export)
                log(f"{spec_name}: reusing {exp['path']}" if exp.get("reused") else f"{spec_name}: exported in {exp['export_s']} s ({exp['nodes']} nodes)")
            except Exception as e:  # noqa: BLE001 - recorded, torch still runs
                for c in model_cases:
                    results[c]["quilt_error"] = f"export: {type(e).__name__}: {e}"[:800]
        if args.export_only:
            continue
        # 2. PyTorch eager fp16 (its output is quilt's accuracy reference), then the GPU freed.
        torch_modes = [m for m in modes if m != "quilt"]
        if "eager" in modes:
            gpu_model = model.half().cuda().eval()
            for c in model_cases:
                log(f"{c}: PyTorch eager")
                try:
                    torch_case(gpu_model, inputs[c], ["eager"], args.iters, deadline, results[c], os.path.join(work, f"torch_{c}.bin"))
                except Exception as e:  # noqa: BLE001 - recorded
                    results[c].setdefault("errors", {})["eager"] = f"{type(e).__name__}: {e}"[:800]
                save(c)
            del gpu_model
            model = model.float().cpu()
            torch.cuda.empty_cache()
        # 3. ORT + quilt in a child process (the fallback binary where no GPU device is offered).
        if exp is not None:
            run_quilt(args, options, deadline, model_name, model_cases, inputs, results, work, exp)
            for c in model_cases:
                save(c)
        # 4. torch.compile, default and reduce-overhead (60-90 s each at full size).
        compile_modes = [m for m in torch_modes if m != "eager"]
        if compile_modes:
            gpu_model = model.half().cuda().eval()
            for c in model_cases:
                log(f"{c}: PyTorch {compile_modes}")
                try:
                    torch_case(gpu_model, inputs[c], compile_modes, args.iters, deadline, results[c], os.path.join(work, f"torch_{c}.bin"))
                except Exception as e:  # noqa: BLE001 - recorded
                    results[c].setdefault("errors", {})["compile"] = f"{type(e).__name__}: {e}"[:800]
                save(c)
            del gpu_model
            torch.cuda.empty_cache()
        for c in model_cases:
            results[c]["ratios"] = ratios(results[c])
            doc["cases"] = [x for x in doc["cases"] if x["case"] != c] + [results[c]]
        write_results(out_path, doc)
        del model
        torch.cuda.empty_cache()

    doc["wall_s"] = round(time.time() - start, 1)
    write_results(out_path, doc)
    print(table(doc), flush=True)
    log(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
