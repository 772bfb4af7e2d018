"""TensorRT: the engine cache key and cache logic (pure, no GPU), clear errors without TensorRT, and
``edge-seg model build-engine``. Building and running a real engine needs an NVIDIA GPU: marked hardware."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge_seg.backends import tensorrt as trt_backend
from edge_seg.errors import BackendUnavailable, ModelError

SHA = "ab" * 32
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def test_engine_key_names_every_part_and_changes_with_each():
    key = trt_backend.engine_key("10.3.0", "Orin (nvgpu)", "8.7", "int8", SHA)
    stem = key.file_stem()
    assert stem.startswith(f"{SHA[:12]}-int8-trt10.3.0-orin-nvgpu-sm87-")
    variants = [trt_backend.engine_key("10.4.0", "Orin (nvgpu)", "8.7", "int8", SHA),
                trt_backend.engine_key("10.3.0", "Xavier", "8.7", "int8", SHA),
                trt_backend.engine_key("10.3.0", "Orin (nvgpu)", "7.2", "int8", SHA),
                trt_backend.engine_key("10.3.0", "Orin (nvgpu)", "8.7", "fp16", SHA),
                trt_backend.engine_key("10.3.0", "Orin (nvgpu)", "8.7", "int8", "cd" * 32),
                trt_backend.engine_key("10.3.0", "Orin (nvgpu)", "8.7", "int8", SHA, dla_core=0)]
    stems = {v.file_stem() for v in variants} | {stem}
    assert len(stems) == len(variants) + 1
    assert key == trt_backend.engine_key("10.3.0", "Orin (nvgpu)", "8.7", "int8", SHA)


def test_engine_key_rejects_bad_precision_and_hash():
    with pytest.raises(ModelError, match="precision 'int4'"):
        trt_backend.engine_key("10", "gpu", "8.7", "int4", SHA)
    with pytest.raises(ModelError, match="sha256"):
        trt_backend.engine_key("10", "gpu", "8.7", "fp16", "abc")


def test_lookup_needs_the_sidecar_to_record_the_same_key(tmp_path):
    key = trt_backend.engine_key("10.3.0", "Orin", "8.7", "fp16", SHA)
    engine, sidecar = trt_backend.engine_paths(tmp_path, key)
    assert trt_backend.lookup(tmp_path, key) is None
    engine.write_bytes(b"plan")
    assert trt_backend.lookup(tmp_path, key) is None  # no sidecar: not trusted
    trt_backend.write_sidecar(tmp_path, key, 1 / 255, 0)
    assert trt_backend.lookup(tmp_path, key) == engine
    data = json.loads(sidecar.read_text())
    data["key"]["trt_version"] = "9.0"
    sidecar.write_text(json.dumps(data))
    assert trt_backend.lookup(tmp_path, key) is None


@pytest.fixture
def fake_trt(monkeypatch):
    """TensorRT 'installed' on an 'Orin': building returns bytes and counts the builds."""
    state = SimpleNamespace(version="10.3.0", builds=0)
    monkeypatch.setattr(trt_backend, "_trt", lambda: SimpleNamespace(__version__=state.version))
    monkeypatch.setattr(trt_backend, "gpu_identity", lambda: ("Orin", "8.7"))

    def build(onnx_path, precision, workspace_mb, dla_core):
        state.builds += 1
        return f"engine {precision} {state.version}".encode()

    monkeypatch.setattr(trt_backend, "build_engine", build)
    monkeypatch.setattr(trt_backend, "onnx_input_quantisation", lambda path: (1 / 255, 0))
    return state


def test_ensure_engine_builds_once_reuses_and_rebuilds_on_a_new_tensorrt(tmp_path, fake_trt):
    model = tmp_path / "model_qdq.onnx"
    model.write_bytes(b"onnx bytes")
    cache = tmp_path / "engines"
    first, built = trt_backend.ensure_engine(model, cache, "int8")
    assert built and first.read_bytes() == b"engine int8 10.3.0" and fake_trt.builds == 1
    again, built = trt_backend.ensure_engine(model, cache, "int8")
    assert again == first and not built and fake_trt.builds == 1
    assert json.loads(first.with_suffix(".json").read_text())["input_scale"] == pytest.approx(1 / 255)
    fake_trt.version = "10.4.0"  # JetPack upgrade: the old engine must not be used, and is removed
    upgraded, built = trt_backend.ensure_engine(model, cache, "int8")
    assert built and upgraded != first and fake_trt.builds == 2
    assert not first.exists() and not first.with_suffix(".json").exists()
    forced, built = trt_backend.ensure_engine(model, cache, "int8", force=True)
    assert built and forced == upgraded and fake_trt.builds == 3


def test_build_engine_command_reports_cached_engines(tmp_path, fake_trt, capsys):
    from edge_seg.cli.main import main

    model = tmp_path / "model_qdq.onnx"
    model.write_bytes(b"onnx bytes")
    assert main(["model", "build-engine", str(model), "--engine-dir", str(tmp_path / "e")]) == 0
    assert "(int8): built in" in capsys.readouterr().out  # auto: int8 for a Q/DQ export
    assert main(["model", "build-engine", str(model), "--engine-dir", str(tmp_path / "e")]) == 0
    assert "cached (matching key)" in capsys.readouterr().out


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_without_tensorrt_the_backend_and_command_say_what_to_install(tmp_path, capsys):
    from edge_seg.backends import create
    from edge_seg.cli.main import main

    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    with pytest.raises(BackendUnavailable, match="TensorRT Python bindings"):
        create("tensorrt").load(model, None, None)
    assert main(["model", "build-engine", str(model)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install tensorrt" in err[0]


def test_build_engine_needs_an_onnx_entry_in_the_manifest(capsys):
    from edge_seg.cli.main import main

    bundled = Path(__file__).resolve().parents[2] / "edge_seg" / "models" / "default"
    assert main(["model", "build-engine", str(bundled)]) == 2
    assert "lists no onnx file" in capsys.readouterr().err


@pytest.mark.hardware
def test_build_and_run_an_engine_on_the_gpu(tmp_path):
    if not HAS_TENSORRT:
        pytest.skip("needs TensorRT and an NVIDIA GPU (Jetson or desktop); set EDGE_SEG_TRT_ONNX to a Q/DQ .onnx")
    import os

    import numpy as np

    onnx_path = os.environ.get("EDGE_SEG_TRT_ONNX")
    if not onnx_path:
        pytest.skip("set EDGE_SEG_TRT_ONNX to a model_qdq.onnx exported by 'edge-seg convert export'")
    from edge_seg.backends import create
    from edge_seg.backends.base import BackendOptions

    backend = create("tensorrt")
    backend.load(Path(onnx_path), None, BackendOptions(extra={"engine_dir": str(tmp_path), "precision": "int8"}))
    spec = backend.input_spec
    out = backend.infer(np.zeros(spec.shape, spec.dtype))
    assert out[0].shape == backend.output_specs[0].shape
    backend.close()


# --- PyTorch-style NCHW ONNX through the engine cache: everything up to the GPU runs on onnxruntime here ----

def _nchw_qdq(tmp_path: Path) -> tuple[Path, Path]:
    """(float NCHW colour ONNX, its symmetric int8 Q/DQ version from onnxruntime's quantize_static)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import numpy as np
    import onnx_builders
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Frames(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{"images": rng.random((1, 3, 32, 32), dtype=np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.batches, None)

    float_path = onnx_builders.build_colour(tmp_path / "colour_nchw.onnx")
    qdq_path = tmp_path / "colour_nchw_qdq.onnx"
    quantize_static(str(float_path), str(qdq_path), Frames(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "QuantizeBias": False})
    return float_path, qdq_path


def test_nchw_qdq_onnx_is_tensorrt_ready_and_agrees_with_the_float_model_on_onnxruntime(tmp_path):
    import numpy as np
    import onnx
    import tflite_builders

    from converters.tensorrt import tensorrt_problems
    from edge_seg.segmenter import Segmenter

    float_path, qdq_path = _nchw_qdq(tmp_path)
    assert tensorrt_problems(onnx.load(qdq_path)) == []  # symmetric int8, zero points 0: explicit quantisation
    frame, truth = tflite_builders.colour_frame()
    maps = []
    for path in (float_path, qdq_path):
        with Segmenter.create(model=path) as seg:
            assert seg.manifest.input.layout == "NCHW" and seg.manifest.output.layout == "NCHW"
            maps.append(seg.segment(frame).class_map)
    assert np.array_equal(maps[0], truth) and (maps[1] == truth).mean() > 0.98


def test_tensorrt_reads_ultralytics_metadata_of_the_onnx_it_builds_from(tmp_path):
    pytest.importorskip("onnx")
    import onnx_builders

    path = onnx_builders.build_colour(tmp_path / "m.onnx", metadata=onnx_builders.ultralytics_props({0: "a"}, [32, 32]))
    props = trt_backend.onnx_metadata_props(path)
    assert props["names"] == "{0: 'a'}" and props["imgsz"] == "[32, 32]"


@pytest.mark.hardware
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_nchw_onnx_engine_agrees_with_onnxruntime_on_the_gpu(tmp_path, precision):
    if not HAS_TENSORRT:
        pytest.skip("needs TensorRT and an NVIDIA GPU (Jetson or desktop)")
    import numpy as np

    from edge_seg.backends import create
    from edge_seg.backends.base import BackendOptions

    float_path, qdq_path = _nchw_qdq(tmp_path)
    path = qdq_path if precision == "int8" else float_path
    x = np.random.default_rng(1).random((1, 3, 32, 32), dtype=np.float32)
    ort = create("onnxruntime")
    ort.load(path, None, BackendOptions(extra={"providers": ["CPUExecutionProvider"]}))
    want = ort.infer(x)[0]
    trt = create("tensorrt")
    trt.load(path, None, BackendOptions(extra={"engine_dir": str(tmp_path / "engines"), "precision": precision}))
    assert trt.input_spec.shape == (1, 3, 32, 32) and trt.output_specs[0].shape == (1, 4, 32, 32)
    got = trt.infer(x)[0]
    assert np.abs(got - want).max() < (0.05 if precision == "fp16" else 0.2)
    trt.close()


@pytest.mark.hardware
def test_ultralytics_engine_with_json_header_loads_on_the_gpu(tmp_path):
    if not HAS_TENSORRT:
        pytest.skip("needs TensorRT and an NVIDIA GPU (Jetson or desktop)")
    import struct

    import onnx_builders

    from edge_seg.backends import create
    from edge_seg.backends.base import BackendOptions
    from edge_seg.model import load_model

    path = onnx_builders.build_colour(tmp_path / "colour.onnx")
    built, _ = trt_backend.ensure_engine(path, tmp_path / "engines", "fp16")
    header = json.dumps({"task": "segment", "names": {"0": "r", "1": "g", "2": "b", "3": "d"}, "imgsz": [32, 32]})
    engine = tmp_path / "colour.engine"
    engine.write_bytes(struct.pack("<I", len(header)) + header.encode() + built.read_bytes())
    backend = create("tensorrt")
    backend.load(engine, None, BackendOptions())
    assert backend.metadata["task"] == "segment"
    backend.close()
    loaded = load_model(engine)
    assert loaded.manifest.classes == ["r", "g", "b", "d"]
    loaded.close()
