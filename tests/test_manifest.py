"""load_model: every manifest error path has its own one-line message; inference without one."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import write_manifest

from edge_seg.errors import ManifestError, ModelError
from edge_seg.manifest import read_manifest
from edge_seg.model import load_model


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_load_model_validates_a_correct_manifest(tiny_models, tmp_path):
    path = write_manifest(tiny_models["colour_probs_uint8"], tmp_path / "m")
    loaded = load_model(path.parent)
    assert loaded.manifest.name == "colour" and loaded.inferred is None
    assert loaded.backend.input_spec.dtype == "uint8"
    assert len(loaded.sha256) == 64
    loaded.close()


def test_load_fails_with_missing_path(tmp_path):
    with pytest.raises(ModelError) as err:
        load_model(tmp_path / "nope.tflite")
    assert _one_line(err) == f"model not found: {tmp_path / 'nope.tflite'}"


def test_load_fails_when_manifest_lists_a_missing_file(tiny_models, tmp_path):
    path = write_manifest(tiny_models["colour_probs_uint8"], tmp_path / "m", **{"files.tflite.path": "gone.tflite"})
    with pytest.raises(ManifestError) as err:
        load_model(path)
    assert "manifest lists tflite file 'gone.tflite' but it is missing" in _one_line(err)


def test_load_fails_on_sha256_mismatch(tiny_models, tmp_path):
    path = write_manifest(tiny_models["colour_probs_uint8"], tmp_path / "m", **{"files.tflite.sha256": "ab" * 32})
    with pytest.raises(ManifestError) as err:
        load_model(path.parent)
    assert "sha256 mismatch for colour_probs_uint8.tflite: manifest says abababababab" in _one_line(err)


def test_load_fails_when_class_count_differs_from_channels(tiny_models, tmp_path):
    path = write_manifest(tiny_models["colour_probs_uint8"], tmp_path / "m", classes=["a", "b", "c", "d", "e"],
                          palette=[[0, 0, 0]] * 5)
    with pytest.raises(ManifestError) as err:
        load_model(path.parent)
    assert _one_line(err) == "manifest says 5 classes, model outputs 4 channels"


def test_load_fails_on_input_size_mismatch(tiny_models, tmp_path):
    path = write_manifest(tiny_models["colour_probs_uint8"], tmp_path / "m", **{"input.width": 64})
    with pytest.raises(ManifestError) as err:
        load_model(path.parent)
    assert _one_line(err) == "manifest input is 64x32, model input is 32x32"


def test_load_fails_on_input_dtype_mismatch(tiny_models, tmp_path):
    path = write_manifest(tiny_models["colour_probs_uint8"], tmp_path / "m", **{"input.dtype": "float32"})
    with pytest.raises(ManifestError) as err:
        load_model(path.parent)
    assert _one_line(err) == "manifest input dtype is float32, model input is uint8"


def test_load_fails_on_unknown_output_kind(tiny_models, tmp_path):
    path = write_manifest(tiny_models["colour_probs_uint8"], tmp_path / "m", **{"output.kind": "heatmap"})
    with pytest.raises(ManifestError) as err:
        load_model(path.parent)
    text = _one_line(err)
    assert "field 'output.kind': got 'heatmap'" in text and "'logits'" in text and "'class_map'" in text


def test_load_fails_on_unknown_field_and_bad_json(tmp_path):
    bad = tmp_path / "manifest.json"
    bad.write_text(json.dumps({"name": "x", "colour": 1}))
    with pytest.raises(ManifestError) as err:
        read_manifest(bad)
    assert "field '" in _one_line(err)
    bad.write_text("{not json")
    with pytest.raises(ManifestError) as err:
        read_manifest(bad)
    assert "not readable JSON" in _one_line(err)


def test_load_fails_on_unknown_model_suffix(tmp_path):
    weird = tmp_path / "model.pt"
    weird.write_bytes(b"x")
    with pytest.raises(ModelError) as err:
        load_model(weird)
    assert "unknown model file type 'model.pt': expected one of _edgetpu.tflite" in _one_line(err)


def test_load_fails_on_a_file_that_is_not_a_model(tmp_path):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\0" * 64)
    with pytest.raises(ModelError) as err:
        load_model(junk)
    assert _one_line(err).startswith("LiteRT cannot load junk.tflite")


@pytest.mark.parametrize("name, task, kind, channels", [
    ("colour_probs_uint8", "semantic", "probabilities", 4),
    ("colour_logits_float", "semantic", "logits", 4),
    ("binary_sigmoid_float", "binary", "sigmoid", 1),
    ("binary_logits_uint8", "binary", "logits", 1),
])
def test_manifest_is_inferred_without_one(tiny_models, caplog, name, task, kind, channels):
    with caplog.at_level(logging.WARNING):
        loaded = load_model(tiny_models[name])
    m = loaded.manifest
    assert (m.task, m.output.kind) == (task, kind)
    assert m.input.width == 32 and m.input.height == 32
    assert len(m.classes) == (2 if channels == 1 else channels)
    notices = [r.message for r in caplog.records if "has no manifest" in r.message]
    assert len(notices) == 1 and "\n" not in notices[0] and kind in notices[0]
    loaded.close()


def test_inferred_float_input_scales_to_unit_range_unless_mean_std_given(tiny_models):
    loaded = load_model(tiny_models["colour_logits_float"])
    assert loaded.manifest.input.mean == [0.0] * 3 and loaded.manifest.input.std == [255.0] * 3
    loaded = load_model(tiny_models["colour_logits_float"], mean=[127.5], std=[127.5])
    assert loaded.manifest.input.mean == [127.5] and loaded.manifest.input.std == [127.5]


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda m: m["palette"].__setitem__(1, [999, 0, 0]), "field 'palette.1.0': Input should be less than or equal "
     "to 255"),
    (lambda m: m["palette"].__setitem__(1, [-1, 0, 0]), "field 'palette.1.0': Input should be greater than"),
    (lambda m: m["input"].__setitem__("mean", [float("nan")] * 3), "field 'input.mean.0': Input should be a finite "
     "number"),
    (lambda m: m["input"].__setitem__("std", [float("inf")] * 3), "field 'input.std.0': Input should be a finite "
     "number"),
])
def test_a_manifest_with_impossible_numbers_is_refused_in_one_line(tiny_models, tmp_path, edit, expected):
    path = write_manifest(tiny_models["colour_probs_uint8"], tmp_path / "m")
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))  # json writes NaN / Infinity, as a hand-edited file may hold them
    with pytest.raises(ManifestError, match="^" + str(path).replace(".", r"\.")) as err:
        load_model(path.parent)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_a_manifest_nested_too_deeply_is_refused_in_one_line(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    with pytest.raises(ManifestError, match="nested too deeply"):
        read_manifest(path)
