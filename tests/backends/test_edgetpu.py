"""Edge TPU: the linter on real int8 models, the compiler wrapper, and the delegate backend's errors."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

import converters  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)
from converters import edgetpu
from edge_seg.backends.base import BackendOptions
from edge_seg.errors import BackendUnavailable, ModelError

BUNDLED = Path(__file__).resolve().parents[2] / "edge_seg" / "models" / "default" / "model_int8.tflite"


def _int8_model(path: Path, body) -> Path:
    """A full-int8 (uint8 I/O) TFLite model of ``body(x)`` on a (1, 16, 16, 4) input."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    w1 = tf.constant(rng.normal(size=(3, 3, 4, 8)).astype(np.float32))
    w2 = tf.constant(rng.normal(size=(1, 1, 8, 4)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 4], tf.float32)])
    def model(x):
        y = tf.nn.relu(tf.nn.conv2d(x, w1, 1, "SAME"))
        y = body(tf, y)
        return tf.nn.conv2d(y, w2, 1, "SAME")

    def representative():
        for _ in range(8):
            yield [rng.random((1, 16, 16, 4), dtype=np.float32)]

    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    path.write_bytes(converter.convert())
    return path


def test_the_bundled_default_model_gets_a_clean_report():
    report = edgetpu.lint(BUNDLED)
    assert report.clean, report.lines()
    assert report.first_cpu_op is None and report.tpu_share == 1.0
    assert report.num_ops == len(report.ops) > 10
    assert "clean" in report.lines()[0]


def test_an_op_the_edgetpu_cannot_run_is_flagged_by_name_and_index_with_everything_after_it(tmp_path):
    path = _int8_model(tmp_path / "transpose.tflite", lambda tf, y: tf.transpose(y, [0, 2, 1, 3]))
    report = edgetpu.lint(path)
    index = report.ops.index("TRANSPOSE")
    assert not report.clean
    bad = [f for f in report.errors if f.rule == "unsupported_op"]
    assert [(f.index, f.op) for f in bad] == [(index, "TRANSPOSE")]
    assert report.first_cpu_op == index
    assert report.ops_on_tpu == index and report.tpu_share < 1.0
    text = "\n".join(report.lines())
    assert f"op {index} TRANSPOSE: operation not supported by the Edge TPU" in text
    assert f"the {report.num_ops - index - 1} op(s) after it fall back to the CPU" in text
    assert json.loads(report.to_json())["first_cpu_op"] == index


def test_tensors_with_more_than_three_non_1_dimensions_are_flagged(tmp_path):
    def body(tf, y):
        return tf.reshape(tf.reshape(y, [1, 2, 8, 16, 8]) + 1.0, [1, 16, 16, 8])

    report = edgetpu.lint(_int8_model(tmp_path / "rank5.tflite", body))
    rank = [f for f in report.errors if f.rule == "rank"]
    assert rank and "more than 3 dimensions" in rank[0].message
    assert report.first_cpu_op == rank[0].index


def test_float_tensors_are_flagged_as_not_int8(tmp_path):
    tf = pytest.importorskip("tensorflow")

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32)])
    def model(x):
        return tf.nn.relu(x) * 2.0

    path = tmp_path / "float.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model).convert())
    report = edgetpu.lint(path)
    assert report.first_cpu_op == 0 and report.ops_on_tpu == 0
    assert any(f.rule == "non_int8" and "float32" in f.message for f in report.errors)


def test_missing_compiler_gives_one_clear_message(monkeypatch, capsys):
    monkeypatch.setenv("PATH", "")
    result = edgetpu.compile_model(BUNDLED)
    assert result["available"] is False
    assert "edgetpu_compiler not found on PATH" in result["message"] and "x86-64 Linux" in result["message"]
    from edge_seg.cli.main import main

    assert main(["convert", "lint", str(BUNDLED), "--edgetpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("edgetpu_compiler not found") == 1


_STATUS = "Operation is otherwise supported, but not mapped due to some unspecified limitation"
_LOG = """Edge TPU Compiler version 16.0.384591198
Model compiled successfully in 120 ms.

Input model: {model}
Output model: {out}
Number of Edge TPU subgraphs: 1
Total number of operations: 52
Operation log: {log}

Operator                       Count      Status

CONV_2D                        20         Mapped to Edge TPU
RESIZE_BILINEAR                1          {status}
Number of operations that will run on Edge TPU: 48
Number of operations that will run on CPU: 4
"""


def test_compiler_log_is_folded_into_the_report_and_the_manifest(tmp_path, monkeypatch):
    """A stand-in ``edgetpu_compiler`` on PATH: the wrapper runs it, parses its log, records its output."""
    from edge_seg.manifest import FileEntry, InputSpec, Manifest, OutputSpec, read_manifest, sha256_file

    model = tmp_path / "model_int8.tflite"
    model.write_bytes(BUNDLED.read_bytes())
    (tmp_path / "manifest.json").write_text(Manifest(
        name="m", task="semantic", classes=["a", "b", "c", "d"], input=InputSpec(width=192, height=192, dtype="uint8"),
        output=OutputSpec(kind="probabilities"),
        files={"tflite": FileEntry(path=model.name, sha256=sha256_file(model))}).dump())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "edgetpu_compiler"
    log = _LOG.format(model=model, out="x", log="y", status=_STATUS).replace("\n", "\\n")
    fake.write_text("#!/bin/sh\n# args: -s -o OUT MODEL\nout=$3; m=$4; b=$(basename \"$m\" .tflite)\n"
                    f"cp \"$m\" \"$out/${{b}}_edgetpu.tflite\"\nprintf '{log}'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    report = edgetpu.convert(model, tmp_path, compile_=True)
    assert report.compiler["tpu_ops"] == 48 and report.compiler["cpu_ops"] == 4
    assert {"op": "RESIZE_BILINEAR", "count": 1, "status": _STATUS} in report.compiler["ops"]
    assert Path(report.compiler["output"]).name == "model_int8_edgetpu.tflite"
    files = read_manifest(tmp_path / "manifest.json").files
    assert files["edgetpu"].path == "model_int8_edgetpu.tflite"
    assert files["edgetpu"].sha256 == sha256_file(tmp_path / "model_int8_edgetpu.tflite")
    assert json.loads((tmp_path / "edgetpu_report.json").read_text())["compiler"]["summary"] == \
        "48 op(s) on the Edge TPU, 4 on the CPU"


def test_edgetpu_backend_without_libedgetpu_names_the_package(tmp_path):
    from edge_seg.backends import create

    backend = create("edgetpu")
    with pytest.raises(BackendUnavailable, match="libedgetpu"):
        backend.load(BUNDLED, None, BackendOptions(extra={"library": "libedgetpu-missing.so.1"}))


def test_edgetpu_device_option_is_checked():
    from edge_seg.backends.edgetpu import delegate_options

    assert delegate_options(None) == {}
    assert delegate_options("usb") == {"device": "usb"} and delegate_options("pci:1") == {"device": "pci:1"}
    with pytest.raises(ModelError, match="usb, pci"):
        delegate_options("gpu:0")


@pytest.mark.hardware
def test_edgetpu_backend_runs_a_compiled_model_on_the_device():
    from edge_seg.backends.edgetpu import library_present

    compiled = os.environ.get("EDGE_SEG_EDGETPU_MODEL")
    if not library_present() or not compiled:
        pytest.skip("needs a Coral Edge TPU, libedgetpu.so.1 and EDGE_SEG_EDGETPU_MODEL=<model>_edgetpu.tflite")
    from edge_seg.backends import create

    backend = create("edgetpu")
    backend.load(Path(compiled), None, BackendOptions())
    spec = backend.input_spec
    out = backend.infer(np.zeros(spec.shape, spec.dtype))
    assert out and out[0].shape == backend.output_specs[0].shape
