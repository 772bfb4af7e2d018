"""Ultralytics metadata read without a manifest (.onnx metadata_props, .tflite appended zip, .engine JSON header),
symbolic input dims, and the one-line errors for models whose layout, size or output role cannot be inferred."""

from __future__ import annotations

import io
import json
import struct
import zipfile

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx_builders  # noqa: E402
import tflite_builders  # noqa: E402

from edge_seg.cli.main import main  # noqa: E402
from edge_seg.errors import ManifestError, ModelError  # noqa: E402
from edge_seg.manifest import read_manifest  # noqa: E402
from edge_seg.model import load_model  # noqa: E402
from edge_seg.model_metadata import parse, read_metadata, split_engine_header  # noqa: E402
from edge_seg.segmenter import Segmenter  # noqa: E402

NAMES = {0: "red", 1: "green", 2: "blue", 3: "dark"}


def _with_zip(tflite: bytes, files: dict[str, bytes]) -> bytes:
    """A .tflite with a zip archive appended, as Ultralytics writes its metadata.json."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return tflite + buffer.getvalue()


@pytest.fixture
def colour_tflite(tiny_models):
    return tiny_models["colour_logits_float"]


def test_onnx_metadata_props_give_class_names_and_the_notice_says_where_from(tmp_path):
    model = onnx_builders.build_colour(tmp_path / "yolo_colour.onnx",
                                       metadata=onnx_builders.ultralytics_props(NAMES, [32, 32], task="segment"))
    frame, truth = tflite_builders.colour_frame()
    with Segmenter.create(model=model) as seg:
        assert seg.manifest.classes == list(NAMES.values())
        assert "Ultralytics metadata (onnx metadata_props: 4 class names, imgsz 32x32" in seg.loaded.inferred
        assert "usually want --norm imagenet" not in seg.loaded.inferred  # Ultralytics models take [0, 1]
        assert (seg.segment(frame).class_map == truth).mean() > 0.95


def test_manifest_init_copies_the_metadata_into_the_manifest(tmp_path, capsys):
    model = onnx_builders.build_colour(tmp_path / "m.onnx", dynamic=True,
                                       metadata=onnx_builders.ultralytics_props(NAMES, [24, 40], dynamic=True))
    assert main(["manifest", "init", str(model)]) == 0
    written = read_manifest(tmp_path / "manifest.json")
    assert written.classes == list(NAMES.values())
    assert (written.input.width, written.input.height, written.input.layout) == (40, 24, "NCHW")
    assert written.output.layout == "NCHW" and written.output.tensor == "logits"
    with Segmenter.create(model=tmp_path) as seg:  # the written manifest loads (and sizes the dynamic input)
        assert seg.input_size == (40, 24) and seg.loaded.inferred is None


def test_tflite_with_appended_metadata_zip_still_runs_and_gives_its_names(tmp_path, colour_tflite):
    meta = {"task": "segment", "names": {str(k): v for k, v in NAMES.items()}, "imgsz": [32, 32], "stride": 32}
    model = tmp_path / "colour_meta.tflite"
    model.write_bytes(_with_zip(colour_tflite.read_bytes(), {"metadata.json": json.dumps(meta).encode()}))
    frame, truth = tflite_builders.colour_frame()
    with Segmenter.create(model=model) as seg:
        assert seg.manifest.classes == list(NAMES.values())
        assert "tflite metadata.json" in seg.loaded.inferred
        assert (seg.segment(frame).class_map == truth).mean() > 0.95


@pytest.mark.parametrize("props,why", [
    ({"names": "{0: 'a', 2: 'b'}"}, "names keys are not 0..n-1"),
    ({"names": "{0: 'a'", "task": "segment"}, "names is not a list"),
    ({"imgsz": "[640, -1]"}, "imgsz [640, -1] is not"),
    ({"stride": "'32'"}, "stride is '32', not int"),
    ({"names": "__import__('os').system('false')"}, "names is not a list"),  # never evaluated
])
def test_malformed_onnx_metadata_is_ignored_with_a_notice(tmp_path, caplog, props, why):
    model = onnx_builders.build_colour(tmp_path / "bad.onnx", metadata=props)
    with Segmenter.create(model=model) as seg:
        assert seg.manifest.classes == [f"class_{i}" for i in range(4)]
    ignored = [r.message for r in caplog.records if "metadata (onnx metadata_props) is ignored" in r.message]
    assert len(ignored) == 1 and why in ignored[0]


def test_malformed_tflite_metadata_zip_is_ignored_with_a_notice(tmp_path, colour_tflite, caplog):
    model = tmp_path / "bad_meta.tflite"
    model.write_bytes(_with_zip(colour_tflite.read_bytes(), {"metadata.json": b"{not json"}))
    with Segmenter.create(model=model) as seg:
        assert seg.manifest.classes[0] == "class_0"
    assert any("metadata.json does not read as JSON" in r.message for r in caplog.records)


def test_engine_header_is_split_from_the_serialized_engine_and_read_as_metadata(tmp_path):
    header = json.dumps({"task": "segment", "names": {"0": "person"}, "imgsz": [480, 640], "end2end": True}).encode()
    engine = b"ftrt\x00serialized engine bytes"
    data = struct.pack("<I", len(header)) + header + engine
    meta, rest = split_engine_header(data)
    assert rest == engine and meta["task"] == "segment"
    assert split_engine_header(engine) == (None, engine)  # a plain engine is left alone
    lying = struct.pack("<I", 1 << 30) + b"{" + engine  # a length past the end: not a header
    assert split_engine_header(lying) == (None, lying)
    path = tmp_path / "yolo.engine"
    path.write_bytes(data)
    metadata, notice = read_metadata(path)
    assert notice is None and metadata.names == ["person"] and metadata.imgsz == (640, 480) and metadata.end2end


def test_metadata_without_ultralytics_keys_is_none():
    assert parse({"edge_seg.input_scale": "0.0039"}, "onnx metadata_props") is None


def test_symbolic_dims_take_input_size_over_metadata_imgsz(tmp_path):
    model = onnx_builders.build_colour(tmp_path / "dyn.onnx", dynamic=True,
                                       metadata=onnx_builders.ultralytics_props(NAMES, [24, 40]))
    with Segmenter.create(model=model) as seg:
        assert seg.input_size == (40, 24) and "sized 40x24 from imgsz" in seg.loaded.inferred
    with Segmenter.create(model=model, input_size=(64, 48)) as seg:
        assert seg.input_size == (64, 48) and "sized 64x48 from --input-size" in seg.loaded.inferred
        assert seg.output_tensor.shape == (1, 4, 48, 64)
        frame = np.zeros((48, 64, 3), np.uint8)
        assert seg.segment(frame).class_map.shape == (48, 64)


def test_symbolic_dims_without_any_size_name_the_tensor_and_the_fix(tmp_path):
    model = onnx_builders.build_colour(tmp_path / "dyn.onnx", dynamic=True)
    with pytest.raises(ModelError) as err:
        load_model(model)
    assert str(err.value) == ("input tensor 'images' ['?', 3, '?', '?'] has symbolic dims: pass --input-size WxH or "
                              "set input.width and input.height in a manifest")
    import cv2

    cv2.imwrite(str(tmp_path / "frame.png"), tflite_builders.colour_frame()[0])
    assert main(["infer", str(tmp_path / "frame.png"), "--model", str(model), "--input-size", "32x32",
                 "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out").is_dir()


def test_input_that_is_neither_layout_names_the_tensor_and_the_manifest_fields(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "four.onnx"
    onnx.save(model, path)
    with pytest.raises(ManifestError, match=r"^input tensor 'x' \[1, 4, 8, 8\] is neither .* input.layout"):
        load_model(path)


def test_outputs_of_different_shapes_name_them_and_output_tensor(tmp_path):
    model = onnx_builders.build_u2net(tmp_path / "two.onnx", outputs=1)
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.load(model)
    proto.graph.node.append(helper.make_node("ReduceMean", ["d0"], ["pooled"], axes=[2, 3], keepdims=1))
    proto.graph.output.append(helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 1, 1, 1]))
    onnx.save(proto, model)
    with pytest.raises(ManifestError, match=r"2 outputs of different shapes \('d0' \[1, 1, 32, 32\], 'pooled' "
                                            r"\[1, 1, 1, 1\]\) .* set output.tensor"):
        load_model(model)


def test_unresolved_custom_op_names_the_op_and_what_provides_it(tmp_path):
    from edge_seg.backends.litert import custom_op_hint, load_error

    line = load_error(tmp_path / "selfie.tflite", RuntimeError(
        "Encountered unresolved custom op: Convolution2DTransposeBias.\nSee instructions: ..."))
    assert line == ("LiteRT cannot load selfie.tflite: custom op 'Convolution2DTransposeBias' is not resolved: "
                    + custom_op_hint("Convolution2DTransposeBias"))
    assert "needs the XNNPACK delegate; do not disable default delegates" in line


def test_a_real_unresolved_custom_op_is_one_line(tmp_path):
    tf = pytest.importorskip("tensorflow")

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32)])
    def model(x):
        return tf.math.bessel_i0e(x)  # no LiteRT kernel: a custom op with allow_custom_ops

    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    converter.allow_custom_ops = True
    path = tmp_path / "custom.tflite"
    path.write_bytes(converter.convert())
    with pytest.raises(ModelError) as err:
        load_model(path)
    assert str(err.value).startswith("LiteRT cannot load custom.tflite: custom op 'BesselI0e' is not resolved: ")
    assert "\n" not in str(err.value)


def test_a_symbolic_batch_alone_runs_at_the_static_size(tmp_path):
    import onnx

    model = onnx_builders.build_u2net(tmp_path / "u2netp.onnx", outputs=2)
    proto = onnx.load(model)
    for value in list(proto.graph.input) + list(proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch_size"
    onnx.save(proto, model)
    with Segmenter.create(model=model) as seg:
        assert seg.input_size == (32, 32) and "static height and width (batch 1)" in seg.loaded.inferred
        assert seg.segment(np.zeros((20, 30, 3), np.uint8)).class_map.shape == (20, 30)


def test_litert_dynamic_height_and_width_take_input_size(tmp_path):
    tf = pytest.importorskip("tensorflow")

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)])
    def model(x):
        return tf.nn.conv2d(x, tf.constant(np.array([[[[4, 0, 0, 0], [0, 4, 0, 0], [0, 0, 4, 0]]]], np.float32)),
                            strides=1, padding="SAME") + tf.constant([0, 0, 0, 2.0])

    path = tmp_path / "dynamic.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model).convert())
    symbolic = r"input tensor '.*' \[1, '\?', '\?', 3\] has symbolic dims: pass --input-size"
    with pytest.raises(ModelError, match=symbolic):
        load_model(path)
    frame, truth = tflite_builders.colour_frame()
    with Segmenter.create(model=path, input_size=(48, 32)) as seg:
        assert seg.input_size == (48, 32) and seg.output_tensor.shape == (1, 32, 48, 4)
        assert (seg.segment(frame).class_map == truth).mean() > 0.95
