"""ONNX node conformance: every case under onnx/backend/test/data/node through ORT with quilt.

Each case is one of:
  pass            quilt took every node and matched the expected outputs
  fail            quilt took every node and got a wrong result or an error   -> the test fails
  fail_like_ort   as fail, but ORT's own CPU EP misses the expected outputs too (a data/tolerance quirk
                  of the case, listed but not counted against quilt)
  declined        quilt did not take every node (fallback disabled, so ORT refused the session)
  pass_const      declined as given, but passes once the case's integer inputs are initializers:
                  quilt resolves shape/axes/pads/... parameters at compile time, as SD exports supply
                  them (a parameter that only arrives at run time is declined by design)
  skipped_by_ort  ORT cannot load the model at all (opset too new, unsupported type, ...)
  skipped_data    the case's inputs/outputs are not plain tensors (sequences, optionals)

A table per op is printed and target/conformance_report.json holds every case.
"""

import json
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from conftest import ROOT, Declined, assert_close, cpu_session, quilt_session

RTOL = 1e-3
ATOL = 1e-5
REPORT = ROOT / "target" / "conformance_report.json"
STATUSES = ["pass", "pass_const", "fail", "fail_like_ort", "declined", "skipped_by_ort", "skipped_data"]


def node_test_root() -> Path:
    env = os.environ.get("QUILT_ONNX_NODE_TESTS")
    if env:
        return Path(env)
    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"


def _load_tensors(case_dir: Path, prefix: str):
    """Tensors of test_data_set_0/<prefix>_N.pb in N order, or None if any is not a TensorProto."""
    data_dir = case_dir / "test_data_set_0"
    files = sorted(data_dir.glob(f"{prefix}_*.pb"), key=lambda p: int(p.stem.split("_")[-1]))
    out = []
    for f in files:
        tensor = onnx.TensorProto()
        raw = f.read_bytes()
        try:
            tensor.ParseFromString(raw)
        except Exception:
            return None
        # A SequenceProto/OptionalProto can parse as an (empty) TensorProto; a real tensor has a dtype.
        if tensor.data_type == onnx.TensorProto.UNDEFINED:
            return None
        try:
            out.append(numpy_helper.to_array(tensor))
        except Exception:
            return None
    return out


# Element types onnxruntime's Python binding converts to and from numpy. onnx hands out bfloat16,
# float8 and int4/int2 tensors as ml_dtypes arrays, which the binding rejects.
_EXCHANGEABLE = {np.dtype(t) for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
                                       np.uint8, np.uint16, np.uint32, np.uint64, np.bool_)}


def _exchangeable(dtype) -> bool:
    return dtype in _EXCHANGEABLE or dtype.kind in "OU"  # O/U: string tensors


def _op_label(model: onnx.ModelProto, case: str) -> str:
    nodes = model.graph.node
    if len(nodes) == 1:
        return nodes[0].op_type
    return "(multi-node)"  # *_expanded cases: the op written as a function body


def _matches(outputs, expected):
    for i, (g, w) in enumerate(zip(outputs, expected)):
        assert_close(g, w, ATOL, RTOL, f"output {i}")


def run_case(case_dir: Path):
    """Returns (op, status, detail)."""
    model_path = case_dir / "model.onnx"
    try:
        model = onnx.load(str(model_path))
    except Exception as e:
        return "?", "skipped_by_ort", f"onnx cannot load the model: {e}"
    op = _op_label(model, case_dir.name)
    inputs = _load_tensors(case_dir, "input")
    expected = _load_tensors(case_dir, "output")
    if inputs is None or expected is None:
        return op, "skipped_data", "non-tensor inputs or outputs"
    odd = sorted({str(a.dtype) for a in inputs + expected if not _exchangeable(a.dtype)})
    if odd:
        return op, "skipped_data", f"dtype(s) {odd} cannot be passed through onnxruntime's Python API"

    try:
        sess = quilt_session(model_path)
    except Declined:
        constant = _int_inputs_as_initializers(model, inputs)
        if constant is None:
            return op, "declined", ""
        return _run_with_constant_params(op, constant, inputs, expected)
    except Exception as e:
        try:
            cpu_session(model_path)
        except Exception as cpu_err:
            return op, "skipped_by_ort", str(cpu_err).splitlines()[0][:300]
        return op, "fail", f"quilt session creation failed: {str(e)[:500]}"

    feeds = {i.name: x for i, x in zip(sess.get_inputs(), inputs)}
    try:
        outputs = sess.run(None, feeds)
        _matches(outputs, expected)
        return op, "pass", ""
    except Exception as e:
        detail = str(e)[:500]
    # quilt's result is wrong (or it raised). Does ORT's own CPU EP get the expected outputs?
    try:
        cpu = cpu_session(model_path)
        _matches(cpu.run(None, {i.name: x for i, x in zip(cpu.get_inputs(), inputs)}), expected)
    except Exception:
        return op, "fail_like_ort", detail
    return op, "fail", detail


def _int_inputs_as_initializers(model: onnx.ModelProto, inputs):
    """The case's model with every integer graph input turned into an initializer holding the
    case's data (None when it has no integer input)."""
    initialized = {t.name for t in model.graph.initializer}
    graph_inputs = [vi for vi in model.graph.input if vi.name not in initialized]
    ints = {vi.name: x for vi, x in zip(graph_inputs, inputs) if x.dtype.kind in "iu"}
    if not ints:
        return None
    variant = onnx.ModelProto()
    variant.CopyFrom(model)
    kept = [vi for vi in variant.graph.input if vi.name not in ints]
    del variant.graph.input[:]
    variant.graph.input.extend(kept)
    variant.graph.initializer.extend(numpy_helper.from_array(x, name) for name, x in ints.items())
    return variant


def _run_with_constant_params(op, model: onnx.ModelProto, inputs, expected):
    initialized = {t.name for t in model.graph.initializer}
    data = [x for x in inputs if x.dtype.kind not in "iu"]
    try:
        # ORT's optimizations off: with constant inputs ORT would otherwise fold whole cases on
        # its own CPU kernels before quilt sees them, and quilt would get credit for nothing.
        sess = quilt_session(model.SerializeToString(), optimization=ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    except Declined:
        return op, "declined", ""
    except Exception as e:
        try:
            cpu_session(model.SerializeToString())
        except Exception:
            return op, "declined", ""  # ORT itself rejects the variant (e.g. Range's scalar check)
        return op, "fail", f"quilt session creation failed (integer inputs as initializers): {str(e)[:500]}"
    names = [i.name for i in sess.get_inputs() if i.name not in initialized]
    try:
        _matches(sess.run(None, dict(zip(names, data))), expected)
        return op, "pass_const", ""
    except Exception as e:
        return op, "fail", f"(integer inputs as initializers) {str(e)[:500]}"


def test_node_conformance():
    root = node_test_root()
    assert root.is_dir(), f"{root} does not exist (run scripts/setup.sh; it sets QUILT_ONNX_NODE_TESTS)"
    cases = sorted(p for p in root.iterdir() if (p / "model.onnx").is_file())
    assert len(cases) > 1000, f"only {len(cases)} node test cases under {root}"

    start = time.time()
    results = []
    for case in cases:
        op, status, detail = run_case(case)
        results.append({"case": case.name, "op": op, "status": status, "detail": detail})
    elapsed = time.time() - start

    per_op = defaultdict(Counter)
    for r in results:
        per_op[r["op"]][r["status"]] += 1
    totals = Counter(r["status"] for r in results)

    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps({
        "onnx_version": onnx.__version__,
        "cases": len(results),
        "seconds": round(elapsed, 1),
        "totals": {s: totals[s] for s in STATUSES},
        "per_op": {op: {s: c[s] for s in STATUSES if c[s]} for op, c in sorted(per_op.items())},
        "results": results,
    }, indent=1))

    # Table: ops quilt claimed at least once first, then one summary line.
    header = f"{'op':<34}" + "".join(f"{s:>15}" for s in STATUSES)
    lines = [header, "-" * len(header)]
    for op, c in sorted(per_op.items(), key=lambda kv: (-(kv[1]["pass"] + kv[1]["pass_const"] + kv[1]["fail"]), kv[0])):
        if c["pass"] or c["pass_const"] or c["fail"] or c["fail_like_ort"]:
            lines.append(f"{op:<34}" + "".join(f"{c[s]:>15}" for s in STATUSES))
    lines.append("-" * len(header))
    lines.append(f"{'total (' + str(len(results)) + ' cases)':<34}" + "".join(f"{totals[s]:>15}" for s in STATUSES))
    print("\n" + "\n".join(lines))
    print(f"conformance: {elapsed:.1f} s, report in {REPORT}")

    failures = [f"{r['case']} ({r['op']}): {r['detail']}" for r in results if r["status"] == "fail"]
    assert not failures, f"{len(failures)} claimed case(s) fail:\n" + "\n".join(failures[:50])
