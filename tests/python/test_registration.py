"""How quilt presents itself to ORT: name, vendor, version, and the opt-in reference device.
Each check runs in a fresh interpreter so registration state and QUILT_REFERENCE_DEVICE start clean."""

import json
import re
import textwrap

from conftest import EP_NAME, run_python_subprocess

SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")

LIST_DEVICES = textwrap.dedent(f"""
    import json, os
    import onnxruntime as ort
    ort.register_execution_provider_library("quilt", os.environ["QUILT_EP_LIB"])
    devs = [d for d in ort.get_ep_devices() if d.ep_name == {EP_NAME!r}]
    print(json.dumps({{
        "devices": [{{"vendor": d.ep_vendor, "metadata": dict(d.ep_metadata), "type": str(d.device.type)}} for d in devs],
        "providers": ort.get_available_providers(),
    }}))
    ort.unregister_execution_provider_library("quilt")
""")


def _list_devices(reference_device):
    proc = run_python_subprocess(LIST_DEVICES, {"QUILT_REFERENCE_DEVICE": reference_device})
    assert proc.returncode == 0, f"rc {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _reference(devices):
    # On a machine with an NVIDIA GPU quilt also offers a GPU device; these tests are about the
    # reference device only.
    return [d for d in devices if d["metadata"].get("quilt.backend") != "cuda"]


def test_reference_device_is_offered_when_asked():
    info = _list_devices("1")
    refs = _reference(info["devices"])
    assert len(refs) == 1, info
    dev = refs[0]
    assert dev["vendor"] == "quilt", dev
    assert "CPU" in dev["type"], dev
    version = dev["metadata"].get("version", "")
    assert SEMVER.match(version), f"EP version {version!r} is not SemVer: {dev}"
    assert EP_NAME in info["providers"], info["providers"]


def test_no_device_without_the_environment_variable():
    info = _list_devices(None)
    assert _reference(info["devices"]) == [], f"quilt offered its reference device without QUILT_REFERENCE_DEVICE=1: {info}"
    assert all("GPU" in d["type"] for d in info["devices"]), info
