"""Shared helpers for quilt's Python tests (pytest, onnxruntime 1.31).

The quilt EP library is registered once per process with its CPU *reference device* enabled
(QUILT_REFERENCE_DEVICE=1 must be set before registration). Sessions are then placed either on quilt
(with CPU fallback disabled unless asked otherwise, so a node quilt declines is an error) or on
ORT's own CPU EP, which is the reference every quilt result is compared with.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Set before onnxruntime registers the library (the EP reads it at registration time).
os.environ["QUILT_REFERENCE_DEVICE"] = "1"

import onnxruntime as ort  # noqa: E402

# Warnings from ORT's own kernels (e.g. TensorScatter copies) drown the test output; errors still show.
ort.set_default_logger_severity(3)

ROOT = Path(__file__).resolve().parents[2]
EP_NAME = "QuiltExecutionProvider"
REGISTRATION_NAME = "quilt"
MANIFEST = ROOT / "models" / "fixtures" / "manifest.json"
# ORT's message when session.disable_cpu_ep_fallback=1 and some node was left to the CPU EP.
FALLBACK_DISABLED_MARKER = "fallback to CPU EP has been explicitly disabled"

# fp32 tolerance used against ORT's CPU EP: tight enough to catch a wrong axis or a dropped epsilon,
# loose enough for a different summation order (see README "Tolerances").
FP32_ATOL = 1e-4
FP32_RTOL = 1e-3


def ep_library_path() -> Path:
    return Path(os.environ.get("QUILT_EP_LIB") or ROOT / "target" / "release" / "libquilt_ep.so")


_registered = False


def register_quilt() -> None:
    """Registers libquilt_ep.so once per process; fails the test (not skips) when it is missing."""
    global _registered
    if _registered:
        return
    lib = ep_library_path()
    if not lib.is_file():
        pytest.fail(f"quilt EP library {lib} does not exist: run `cargo build --release -p quilt-capi` "
                    "(scripts/test.sh does) or set QUILT_EP_LIB")
    ort.register_execution_provider_library(REGISTRATION_NAME, str(lib))
    _registered = True


def quilt_devices():
    register_quilt()
    devs = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
    assert devs, f"{EP_NAME} offers no device although QUILT_REFERENCE_DEVICE=1 was set before registration"
    return devs


class Declined(Exception):
    """quilt did not take every node and CPU fallback was disabled."""


def quilt_session(path, options=None, allow_fallback=False, optimization=None):
    """An InferenceSession with every node on quilt (unless allow_fallback). Raises Declined when
    fallback is disabled and quilt declined some node; other errors propagate unchanged."""
    so = ort.SessionOptions()
    if optimization is not None:
        so.graph_optimization_level = optimization
    if not allow_fallback:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    so.add_provider_for_devices(quilt_devices(), dict(options or {}))
    model = str(path) if isinstance(path, Path) else path
    try:
        # enable_fallback=0: otherwise onnxruntime's Python wrapper answers an EP error (at creation or
        # at run time) by silently rebuilding the session on the CPU EP, which would hide quilt failures.
        return ort.InferenceSession(model, sess_options=so, enable_fallback=0)
    except Exception as e:  # onnxruntime raises several exception types; all carry the message
        if not allow_fallback and FALLBACK_DISABLED_MARKER in str(e):
            raise Declined(str(e)) from e
        raise


def cpu_session(path):
    model = str(path) if isinstance(path, Path) else path
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def read_taken_nodes(dump_dir):
    """[(fused node, [(node name, op type), ...]), ...] from quilt's dump_plans directory."""
    taken = []
    for f in sorted(Path(dump_dir).glob("*.nodes.txt")):
        nodes = []
        for line in f.read_text().splitlines():
            if line.strip():
                name, _, op = line.partition("\t")
                nodes.append((name, op.strip()))
        taken.append((f.name[: -len(".nodes.txt")], nodes))
    return taken


def load_manifest():
    with open(MANIFEST) as f:
        return json.load(f)


def manifest_models():
    """The manifest's model entries ([] when the fixtures have not been generated)."""
    return load_manifest()["models"] if MANIFEST.is_file() else []


NP_DTYPES = {
    "float32": np.float32, "float": np.float32, "float16": np.float16, "float64": np.float64,
    "double": np.float64, "int64": np.int64, "int32": np.int32, "int8": np.int8, "uint8": np.uint8,
    "bool": np.bool_,
}


def random_inputs(spec_inputs, dims, seed):
    """Random feeds for a manifest entry's `inputs` at one `test_dims` entry: floats N(0, 1) or uniform
    in `range`, ints uniform in [lo, hi) (default [0, 10)), bools fair coin flips. Never all-zero."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in sorted(spec_inputs):
        spec = spec_inputs[name]
        shape = []
        for d in spec["shape"]:
            if isinstance(d, str):
                assert d in dims, f"input {name}: symbolic dim {d!r} not bound by test_dims {dims}"
                shape.append(int(dims[d]))
            else:
                shape.append(int(d))
        dtype = NP_DTYPES[spec["dtype"]]
        lo, hi = spec.get("range", (None, None))
        if np.issubdtype(dtype, np.floating):
            x = rng.uniform(lo, hi, size=shape) if lo is not None else rng.standard_normal(size=shape)
        elif dtype == np.bool_:
            x = rng.integers(0, 2, size=shape).astype(bool)
        else:
            lo, hi = (int(np.ceil(lo)), int(np.ceil(hi))) if lo is not None else (0, 10)
            x = rng.integers(lo, hi, size=shape)
        feeds[name] = np.asarray(x).astype(dtype)
    return feeds


def assert_close(got, want, atol, rtol, what):
    """numpy allclose with the reference on the right; ints/bools exact. Message names `what`."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != expected {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != expected {want.dtype}"
    if not np.issubdtype(want.dtype, np.floating):
        bad = np.argwhere(got != want)
        assert bad.size == 0, f"{what}: {len(bad)} element(s) differ, first at {tuple(bad[0])}"
        return
    g, w = got.astype(np.float64), want.astype(np.float64)
    ok = np.isclose(g, w, atol=atol, rtol=rtol, equal_nan=True)
    if not ok.all():
        diff = np.abs(g - w)
        excess = np.where(ok, -np.inf, np.where(np.isnan(diff), np.inf, diff - rtol * np.abs(w)))
        worst = np.unravel_index(np.argmax(excess), w.shape)
        raise AssertionError(
            f"{what}: {int((~ok).sum())}/{ok.size} element(s) outside atol={atol} rtol={rtol}; "
            f"max abs {np.nanmax(diff):.3e}; worst at {tuple(int(i) for i in worst)}: got {g[worst]} want {w[worst]}")


def mismatches_with_cpu_ep(quilt, cpu, entry, dims_list, seed, atol=FP32_ATOL, rtol=FP32_RTOL, where=""):
    """Runs `quilt` and `cpu` (sessions of the manifest model `entry`) on the same random feeds at
    each entry of `dims_list` (seed `seed + i` for the i-th) and compares every output with
    assert_close. Returns the failure messages, so one assert reports every output and size that
    is off; `where` is appended to each message's location."""
    output_names = [o.name for o in cpu.get_outputs()]
    failures = []
    for i, dims in enumerate(dims_list):
        feeds = random_inputs(entry["inputs"], dims, seed=seed + i)
        got = quilt.run(output_names, feeds)
        want = cpu.run(output_names, feeds)
        for name, g, w in zip(output_names, got, want):
            try:
                assert_close(g, w, atol, rtol, f"{entry['name']} output {name} at {dims}{where}")
            except AssertionError as e:
                failures.append(str(e))
    return failures


def run_python_subprocess(code, env_overrides=None, timeout=120):
    """Runs `code` in a fresh interpreter (so a crash cannot take pytest down, and registration
    state starts clean). Returns the CompletedProcess."""
    env = dict(os.environ)
    for k, v in (env_overrides or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    env.setdefault("QUILT_EP_LIB", str(ep_library_path()))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def dump_dir():
    with tempfile.TemporaryDirectory(prefix="quilt-dump-") as d:
        yield Path(d)
