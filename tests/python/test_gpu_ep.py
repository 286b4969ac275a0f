"""quilt's GPU device through ORT: every manifest fixture on the GPU vs ORT's CPU EP, and IO binding
of device tensors (inputs and outputs in quilt's device memory, a denoising-style loop that feeds
each output back as the next input without touching the host).

Every test here is skipped, with a line saying so, when quilt offers no GPU device (no NVIDIA driver
or no GPU visible to CUDA, as in CI). On a GPU machine, run e.g.
`QUILT_EP_LIB=... python -m pytest -q tests/python/test_gpu_ep.py` (see tests/bench/ep_gpu.sh).
"""

import numpy as np
import onnxruntime as ort
import pytest

from conftest import (EP_NAME, FALLBACK_DISABLED_MARKER, FP32_ATOL, FP32_RTOL, MANIFEST, assert_close, cpu_session,
                      manifest_models, mismatches_with_cpu_ep, random_inputs, read_taken_nodes, register_quilt)

NVIDIA = 0x10DE
UNET = MANIFEST.parent / "unet" / "model.onnx"


def _gpu_devices():
    register_quilt()
    return [d for d in ort.get_ep_devices()
            if d.ep_name == EP_NAME and d.ep_metadata.get("quilt.backend") == "cuda"]


@pytest.fixture(scope="module")
def gpu_device():
    devices = _gpu_devices()
    if not devices:
        pytest.skip("skipped: no GPU — quilt offers no NVIDIA GPU device here (no driver or no GPU visible to CUDA)")
    return devices[0]


def gpu_session(path, device, options=None, allow_fallback=False):
    """A session on quilt's GPU device only; with fallback disabled, quilt must take every node."""
    so = ort.SessionOptions()
    if not allow_fallback:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    so.add_provider_for_devices([device], dict(options or {}))
    return ort.InferenceSession(str(path), sess_options=so, enable_fallback=0)


def ordinal(device):
    return int(device.ep_metadata["cuda_device_id"])


def to_device(arr, device):
    """A copy of `arr` in quilt's device memory (allocator + CPU→GPU copy registered by quilt).
    (np.ascontiguousarray would turn a 0-d timestep into shape (1,).)"""
    return ort.OrtValue.ortvalue_from_numpy(np.array(arr, order="C", copy=True), "gpu", ordinal(device), NVIDIA)


def to_host(value):
    """A host copy of a device OrtValue (GPU→CPU copy through quilt's data transfer)."""
    host = np.empty(value.shape(), dtype=np.float32)
    dst = ort.OrtValue.ortvalue_from_numpy(host)
    ort.copy_tensors([value], [dst])
    return host


def _dims_with_both_batches(test_dims):
    """Each manifest size at batch 1 and batch 2 (models without a batch dim as they are)."""
    out = []
    for d in test_dims:
        if "batch" in d:
            for b in (1, 2):
                e = dict(d, batch=b)
                if e not in out:
                    out.append(e)
        elif d not in out:
            out.append(d)
    return out


def test_gpu_device_is_bound_to_an_nvidia_hardware_device(gpu_device):
    hw = gpu_device.device
    assert hw.vendor_id == NVIDIA, f"quilt's GPU device sits on vendor {hw.vendor_id:#x}"
    assert hw.type == ort.OrtHardwareDeviceType.GPU, f"hardware device type {hw.type}"
    assert "pci_bus_id" in hw.metadata, f"hardware device metadata {dict(hw.metadata)}"
    assert ordinal(gpu_device) >= 0
    mem = gpu_device.memory_info(ort.OrtDeviceMemoryType.DEFAULT)
    assert mem is not None, "quilt's GPU device registered no device memory"


@pytest.mark.parametrize("entry", manifest_models(), ids=lambda m: m["name"])
def test_fixture_on_gpu_matches_cpu_ep(entry, gpu_device, dump_dir):
    path = MANIFEST.parent / entry["file"]
    try:
        quilt = gpu_session(path, gpu_device, {"dump_plans": str(dump_dir)})
    except Exception as e:  # onnxruntime raises several exception types
        if FALLBACK_DISABLED_MARKER in str(e):
            pytest.fail(f"{entry['name']}: quilt's GPU device declined some node: {e}")
        raise
    cpu = cpu_session(path)
    assert any(nodes for _, nodes in read_taken_nodes(dump_dir)), f"{entry['name']}: quilt compiled nothing"

    # One session for every batch and size: one compile serves them all.
    dims_list = _dims_with_both_batches(entry["test_dims"])
    failures = mismatches_with_cpu_ep(quilt, cpu, entry, dims_list, seed=2000, where=" on the GPU")
    assert not failures, "\n".join(failures)


def _unet_spec():
    entry = next(m for m in manifest_models() if m["file"] == "unet/model.onnx")
    return entry, entry["test_dims"][-1]


def test_io_binding_denoising_loop_stays_on_the_device(gpu_device):
    """Three UNet calls with sample <- unet(sample, ...), done as ping-pong between two device
    buffers: each call's output buffer is the next call's input, and nothing returns to the host
    until the end. Compared with the same loop on ORT's CPU EP."""
    entry, dims = _unet_spec()
    feeds = random_inputs(entry["inputs"], dims, seed=7)
    session = gpu_session(UNET, gpu_device)
    cpu = cpu_session(UNET)
    out_name = cpu.get_outputs()[0].name

    # Reference: the model's output fed back as its next input (same loop on the CPU EP).
    want = dict(feeds)
    for _ in range(3):
        want["sample"] = cpu.run([out_name], want)[0]

    constant = {k: to_device(v, gpu_device) for k, v in feeds.items() if k != "sample"}
    buffers = [to_device(feeds["sample"], gpu_device),
               ort.OrtValue.ortvalue_from_shape_and_type(list(feeds["sample"].shape), np.float32, "gpu",
                                                         ordinal(gpu_device), NVIDIA)]
    pointers = {b.data_ptr() for b in buffers}
    io = session.io_binding()
    for k, v in constant.items():
        io.bind_ortvalue_input(k, v)
    for step in range(3):
        src, dst = buffers[step % 2], buffers[(step + 1) % 2]
        io.bind_ortvalue_input("sample", src)
        io.bind_ortvalue_output(out_name, dst)
        session.run_with_iobinding(io)
        out = io.get_outputs()[0]
        assert out.data_ptr() == dst.data_ptr(), "ORT allocated a new output instead of writing the bound buffer"
    assert {b.data_ptr() for b in buffers} == pointers
    got = to_host(buffers[3 % 2])
    assert_close(got, want["sample"], FP32_ATOL, FP32_RTOL, "UNet output after 3 device-resident steps")


def test_io_binding_with_outputs_allocated_by_ort_on_the_device(gpu_device):
    """bind_output(name, 'cuda', n) lets ORT allocate the output in quilt's device memory (Python's
    'cuda' alias means vendor 0x10DE, which finds the allocator quilt registered)."""
    entry, dims = _unet_spec()
    feeds = random_inputs(entry["inputs"], dims, seed=11)
    session = gpu_session(UNET, gpu_device)
    out_name = session.get_outputs()[0].name
    want = cpu_session(UNET).run([out_name], feeds)[0]
    io = session.io_binding()
    for k, v in feeds.items():
        io.bind_ortvalue_input(k, to_device(v, gpu_device))
    io.bind_output(out_name, "cuda", ordinal(gpu_device))
    for _ in range(2):
        session.run_with_iobinding(io)
    got = io.copy_outputs_to_cpu()[0]
    assert_close(got, want, FP32_ATOL, FP32_RTOL, "UNet output allocated by ORT on quilt's device")


def test_copies_between_host_and_device_and_within_the_device(gpu_device):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((3, 5, 7)).astype(np.float32)
    on_device = to_device(a, gpu_device)
    other = ort.OrtValue.ortvalue_from_shape_and_type([3, 5, 7], np.float32, "gpu", ordinal(gpu_device), NVIDIA)
    ort.copy_tensors([on_device], [other])  # GPU → GPU
    assert other.data_ptr() != on_device.data_ptr()
    np.testing.assert_array_equal(to_host(other), a)
    # The 'cuda' alias reaches the same allocator and copier.
    via_alias = ort.OrtValue.ortvalue_from_numpy(2 * a, "cuda", ordinal(gpu_device))
    np.testing.assert_array_equal(to_host(via_alias), 2 * a)


def test_device_id_naming_a_gpu_not_given_is_an_error(gpu_device):
    with pytest.raises(Exception, match="device_id"):
        gpu_session(UNET, gpu_device, {"device_id": "99"})
