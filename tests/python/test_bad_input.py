"""Bad models and bad inputs: quilt must give a clear error (naming the input, node or option) or
decline and let ORT handle it -- never crash the process. Crash-prone cases run in a subprocess."""

import json
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import (FP32_ATOL, FP32_RTOL, assert_close, cpu_session, quilt_session, read_taken_nodes,
                      run_python_subprocess)

OPSET = [helper.make_opsetid("", 17)]


def save(tmp_path, name, nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=OPSET, ir_version=8)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_unsupported_op_between_supported_ops_runs_and_matches(tmp_path, dump_dir):
    """Relu -> Det -> Add: quilt declines Det (a determinant is nothing an SD model needs), ORT's CPU EP
    runs it, quilt runs what is around it, and the result equals the all-CPU one."""
    rng = np.random.default_rng(11)
    bias = numpy_helper.from_array(rng.standard_normal(2).astype(np.float32), "bias")
    path = save(tmp_path, "relu_det_add", [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Det", ["r"], ["d"], name="det"),
        helper.make_node("Add", ["d", "bias"], ["y"], name="add"),
        helper.make_node("Sigmoid", ["x"], ["s"], name="sigmoid"),
    ], [f32("x", [2, 3, 3])], [f32("y", [2]), f32("s", [2, 3, 3])], [bias])

    quilt = quilt_session(path, {"dump_plans": str(dump_dir)}, allow_fallback=True)
    taken = {name for _, nodes in read_taken_nodes(dump_dir) for name, _ in nodes}
    assert "det" not in taken, "quilt now claims Det: pick another op it declines for this test"
    assert taken, "quilt took none of Relu/Add/Sigmoid, so this proves nothing about mixed placement"

    x = rng.standard_normal((2, 3, 3)).astype(np.float32)
    got = quilt.run(None, {"x": x})
    want = cpu_session(path).run(None, {"x": x})
    for name, g, w in zip(["y", "s"], got, want):
        assert_close(g, w, FP32_ATOL, FP32_RTOL, f"output {name}")


def _run_bad_feed(path, good, bad, wanted_in_message):
    """In a fresh interpreter: a quilt session, a run with `bad` feeds that must raise, then a run
    with `good` feeds that must still work (the EP survived). Returns the error message."""
    code = textwrap.dedent(f"""
        import json, os, sys
        import numpy as np
        sys.path.insert(0, {str(__import__('conftest').__file__.rsplit('/', 1)[0])!r})
        from conftest import quilt_session
        sess = quilt_session({str(path)!r})
        bad = {{k: np.array(v[0], dtype=v[1]) for k, v in json.loads({json.dumps(bad)!r}).items()}}
        good = {{k: np.array(v[0], dtype=v[1]) for k, v in json.loads({json.dumps(good)!r}).items()}}
        try:
            sess.run(None, bad)
            print("NO_ERROR")
        except Exception as e:
            print("ERROR:", str(e).replace("\\n", " "))
        out = sess.run(None, good)
        print("GOOD_RUN_OK", out[0].shape)
    """)
    proc = run_python_subprocess(code)
    assert proc.returncode == 0, f"process died (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert "NO_ERROR" not in proc.stdout, f"bad feed was accepted:\n{proc.stdout}"
    assert "GOOD_RUN_OK" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    message = next(line for line in proc.stdout.splitlines() if line.startswith("ERROR:"))
    assert any(w in message for w in wanted_in_message), f"error does not name any of {wanted_in_message}: {message}"
    return message


def _tensor(shape, dtype="float32"):
    rng = np.random.default_rng(5)
    return [rng.standard_normal(shape).astype(dtype).tolist(), dtype]


@pytest.fixture
def relu_model(tmp_path):
    return save(tmp_path, "relu", [helper.make_node("Relu", ["x"], ["y"], name="relu")],
                [f32("x", ["n", 4])], [f32("y", ["n", 4])])


def test_wrong_rank_names_the_input(relu_model):
    _run_bad_feed(relu_model, {"x": _tensor([3, 4])}, {"x": _tensor([3, 4, 1])}, ["x"])


def test_wrong_dtype_names_the_input(relu_model):
    _run_bad_feed(relu_model, {"x": _tensor([3, 4])}, {"x": [[[1, 2, 3, 4]], "int64"]}, ["x"])


def test_wrong_fixed_dim_names_the_input(relu_model):
    _run_bad_feed(relu_model, {"x": _tensor([3, 4])}, {"x": _tensor([3, 5])}, ["x"])


def test_shapes_that_contradict_each_other_at_run_time(tmp_path):
    """Both inputs are symbolic, so ORT cannot check them; the mismatch (k=4 vs k=5) only shows when
    quilt binds the shapes. The error must name the node or an input."""
    path = save(tmp_path, "matmul_sym", [helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")],
                [f32("a", ["m", "k"]), f32("b", ["k2", "n"])], [f32("y", ["m", "n"])])
    _run_bad_feed(path, {"a": _tensor([2, 4]), "b": _tensor([4, 3])}, {"a": _tensor([2, 4]), "b": _tensor([5, 3])},
                  ["mm", "MatMul", "'a'", "'b'", "`a`", "`b`", "input a", "input b"])


def _load_or_run_in_subprocess(path, feeds):
    """Creating and running a quilt session (fallback allowed) on a malformed model must end with a
    Python exception or a result equal to the CPU EP's; the interpreter must survive either way."""
    code = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        sys.path.insert(0, {str(__import__('conftest').__file__.rsplit('/', 1)[0])!r})
        from conftest import quilt_session, cpu_session, assert_close
        feeds = {{k: np.array(v[0], dtype=v[1]) for k, v in json.loads({json.dumps(feeds)!r}).items()}}
        try:
            sess = quilt_session({str(path)!r}, allow_fallback=True)
            got = sess.run(None, feeds)
        except Exception as e:
            print("ERROR:", str(e).replace("\\n", " ")[:2000])
            sys.exit(0)
        want = cpu_session({str(path)!r}).run(None, feeds)
        for g, w in zip(got, want):
            assert_close(g, w, 1e-4, 1e-3, "output")
        print("MATCHES_CPU")
    """)
    proc = run_python_subprocess(code)
    assert proc.returncode == 0, f"process died (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}"
    out = proc.stdout
    assert "MATCHES_CPU" in out or "ERROR:" in out, out
    if "ERROR:" in out:
        assert len(out.split("ERROR:", 1)[1].strip()) > 10, f"error message is empty: {out}"
    return out


def test_transpose_perm_with_repeated_axis(tmp_path):
    path = save(tmp_path, "bad_perm", [helper.make_node("Transpose", ["x"], ["y"], name="tr", perm=[0, 0, 1])],
                [f32("x", [2, 3, 4])], [f32("y", None)])
    _load_or_run_in_subprocess(path, {"x": _tensor([2, 3, 4])})


def test_conv_kernel_shape_contradicts_weight(tmp_path):
    w = numpy_helper.from_array(np.random.default_rng(2).standard_normal((2, 3, 3, 3)).astype(np.float32), "w")
    path = save(tmp_path, "bad_conv", [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[2, 2])],
                [f32("x", [1, 3, 8, 8])], [f32("y", None)], [w])
    _load_or_run_in_subprocess(path, {"x": _tensor([1, 3, 8, 8])})


def test_unknown_option_names_the_known_ones(relu_model):
    with pytest.raises(Exception) as info:
        quilt_session(relu_model, {"definitely_not_an_option": "1"})
    message = str(info.value)
    assert "definitely_not_an_option" in message, message
    assert "dump_plans" in message and "log_level" in message, message


def test_bad_option_value_is_an_error(relu_model):
    with pytest.raises(Exception) as info:
        quilt_session(relu_model, {"log_level": "very-loud"})
    assert "log_level" in str(info.value), str(info.value)


def test_quilt_run_fails_when_quilt_takes_nothing(tmp_path):
    """`quilt run` compares quilt with ORT's CPU EP; on a model quilt declines entirely (one Det)
    both sessions would be the CPU EP, so it must fail (exit 2) instead of printing PASS."""
    import subprocess
    from conftest import ROOT
    path = save(tmp_path, "det_only", [helper.make_node("Det", ["x"], ["y"], name="det")],
                [f32("x", [3, 3])], [f32("y", [])])
    cli = ROOT / "target" / "release" / "quilt"
    if not cli.exists():
        pytest.skip(f"{cli} is not built")
    out = subprocess.run([str(cli), "run", str(path), "--dims", ""], capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "quilt took 0 node(s)" in text and "quilt took no node of the model" in text, text
    assert "PASS" not in text, text
