"""NCHW models (PyTorch-style ONNX exports): input layout, NCHW outputs, picking one of several outputs,
integer class maps and normalisation presets, checked against numpy references of the graphs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx_builders  # noqa: E402
import tflite_builders  # noqa: E402

from edge_seg.errors import InputError, ManifestError  # noqa: E402
from edge_seg.manifest import NORM_PRESETS, InputSpec, parse_manifest  # noqa: E402
from edge_seg.model import load_model  # noqa: E402
from edge_seg.preprocess import Preprocessor  # noqa: E402
from edge_seg.segmenter import Segmenter  # noqa: E402
from edge_seg.tensors import TensorSpec  # noqa: E402


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx_models")
    return {
        "nchw": onnx_builders.build_colour(root / "colour_nchw.onnx"),
        "nhwc": onnx_builders.build_colour(root / "colour_nhwc.onnx", layout="NHWC"),
        "probs": onnx_builders.build_colour(root / "colour_probs.onnx", probs=True),
        "u2net": onnx_builders.build_u2net(root / "u2net.onnx"),
        "class_map": onnx_builders.build_class_map(root / "class_map.onnx"),
    }


def _rgb_unit(frame: np.ndarray, size: int = 32) -> np.ndarray:
    return cv2.cvtColor(cv2.resize(frame, (size, size), interpolation=cv2.INTER_LINEAR),
                        cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def _noisy_frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def test_nchw_model_runs_without_manifest_and_agrees_with_numpy_and_its_nhwc_twin(onnx_models):
    frame = _noisy_frame()
    reference = onnx_builders.numpy_colour(_rgb_unit(frame))
    results = {}
    for key in ("nchw", "nhwc"):
        with Segmenter.create(model=onnx_models[key], upsample="nearest") as seg:
            assert f"input {key.upper()} 32x32" in seg.loaded.inferred
            assert f"output logits {key.upper()}" in seg.loaded.inferred
            batch, transform = seg.prepare(frame)
            decoded = seg._decode(seg.invoke(batch))
            results[key] = decoded
    for decoded in results.values():
        assert np.array_equal(decoded.label_map, reference.argmax(axis=-1))
        top = np.exp(reference - reference.max(axis=-1, keepdims=True))
        assert np.allclose(decoded.confidence, 1.0 / top.sum(axis=-1), atol=1e-5)
    assert np.array_equal(results["nchw"].label_map, results["nhwc"].label_map)


def test_nchw_frame_size_class_maps_match_the_nhwc_twin_bilinear(onnx_models):
    frame, truth = tflite_builders.colour_frame(96, 64)
    maps = []
    for key in ("nchw", "nhwc"):
        with Segmenter.create(model=onnx_models[key]) as seg:
            maps.append(seg.segment(frame).class_map)
    assert np.array_equal(maps[0], maps[1])
    assert (maps[0] == truth).mean() > 0.95


@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
@pytest.mark.parametrize("dtype,norm", [("float32", "imagenet"), ("float32", "unit"), ("uint8", "raw")])
def test_nchw_preprocessing_is_the_transpose_of_nhwc(resize, dtype, norm):
    frame = _noisy_frame(1)
    spec = {"width": 40, "height": 24, "dtype": dtype, "resize": resize, "norm": norm}
    nhwc = Preprocessor(InputSpec(**spec), TensorSpec("x", (1, 24, 40, 3), np.dtype(dtype)))
    nchw = Preprocessor(InputSpec(layout="NCHW", **spec), TensorSpec("x", (1, 3, 24, 40), np.dtype(dtype)))
    want, t1 = nhwc(frame)
    got, t2 = nchw(frame)
    assert got.shape == (1, 3, 24, 40) and got.dtype == np.dtype(dtype) and got.flags.c_contiguous
    assert t1 == t2 and nchw.input_size == (40, 24)
    assert np.array_equal(got[0], want[0].transpose(2, 0, 1))


def test_nchw_batches_handed_out_stay_intact_while_the_next_frames_are_prepared():
    pre = Preprocessor(InputSpec(width=8, height=8, layout="NCHW"), TensorSpec("x", (1, 3, 8, 8), np.dtype("float32")))
    frames = [np.full((8, 8, 3), v, np.uint8) for v in (10, 20, 30)]
    batches = [pre(f)[0] for f in frames]  # one waiting, one in inference, one being prepared
    assert [float(b.max()) for b in batches] == pytest.approx([10 / 255, 20 / 255, 30 / 255])


def test_first_of_several_same_shape_outputs_is_the_mask_and_the_notice_says_so(onnx_models):
    frame, truth = tflite_builders.colour_frame()
    with Segmenter.create(model=onnx_models["u2net"]) as seg:
        assert "'d0' = the first of 7 outputs of shape [1, 1, 32, 32]" in seg.loaded.inferred
        assert seg.manifest.task == "binary" and seg.manifest.output.kind == "sigmoid"
        red = seg.segment(frame).class_map
    assert np.array_equal(red == 1, truth == 0)  # d0: red is foreground


@pytest.mark.parametrize("pick", [3, "d3"])
def test_output_tensor_picks_another_output_by_index_or_name(onnx_models, tmp_path, pick):
    loaded = load_model(onnx_models["u2net"])
    data = json.loads(loaded.manifest.dump())
    loaded.close()
    data["output"]["tensor"] = pick
    model = tmp_path / "u2net.onnx"
    model.write_bytes(onnx_models["u2net"].read_bytes())
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    frame = _noisy_frame(2)
    rgb = _rgb_unit(frame)
    expected = 1.0 / (1.0 + np.exp(-(8.0 * (rgb[..., 1] - 0.5) + 3)))  # d3 = sigmoid(8 (g - 0.5) + 3)
    with Segmenter.create(model=tmp_path, upsample="nearest") as seg:
        decoded = seg._decode(seg.invoke(seg.prepare(frame)[0]))
    assert np.array_equal(decoded.label_map, (expected >= 0.5).astype(np.uint8))


def test_output_tensor_that_does_not_exist_names_the_outputs(onnx_models, tmp_path):
    loaded = load_model(onnx_models["u2net"])
    data = json.loads(loaded.manifest.dump())
    loaded.close()
    data["output"]["tensor"] = 9
    (tmp_path / "u2net.onnx").write_bytes(onnx_models["u2net"].read_bytes())
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"output.tensor is 9; the model has 7 outputs \(d0, d1"):
        load_model(tmp_path)


def test_softmax_over_channel_axis_reads_as_nchw_probabilities(onnx_models):
    frame = _noisy_frame(3)
    with Segmenter.create(model=onnx_models["probs"], upsample="nearest") as seg:
        assert seg.manifest.output.kind == "probabilities" and seg.manifest.output.layout == "NCHW"
        decoded = seg._decode(seg.invoke(seg.prepare(frame)[0]))
    logits = onnx_builders.numpy_colour(_rgb_unit(frame))
    probs = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    assert np.array_equal(decoded.label_map, logits.argmax(axis=-1))
    assert np.allclose(decoded.confidence, probs.max(axis=-1), atol=1e-5)


def test_int64_class_map_output_is_inferred_and_read(onnx_models):
    frame = _noisy_frame(4)
    with Segmenter.create(model=onnx_models["class_map"], upsample="nearest") as seg:
        assert seg.manifest.output.kind == "class_map" and "class_map int64 [1, 32, 32]" in seg.loaded.inferred
        decoded = seg._decode(seg.invoke(seg.prepare(frame)[0]))
    assert np.array_equal(decoded.label_map, onnx_builders.numpy_colour(_rgb_unit(frame)).argmax(axis=-1))


def test_norm_preset_sets_mean_and_std_and_conflicts_are_one_line():
    spec = InputSpec(width=8, height=8, norm="imagenet")
    assert (spec.mean, spec.std) == tuple(NORM_PRESETS["imagenet"])
    with pytest.raises(ManifestError, match="field 'input': .*norm 'unit' sets mean"):
        parse_manifest({"name": "m", "task": "binary", "classes": ["b", "f"], "output": {"kind": "sigmoid"},
                        "input": {"width": 8, "height": 8, "norm": "unit", "mean": [127.5]}})


def test_norm_on_the_command_line_overrides_the_inferred_normalisation(onnx_models):
    loaded = load_model(onnx_models["nchw"], norm="imagenet")
    assert loaded.manifest.input.norm == "imagenet" and loaded.manifest.input.std == NORM_PRESETS["imagenet"][1]
    assert "usually want --norm imagenet" in loaded.inferred
    loaded.close()
    loaded = load_model(onnx_models["nchw"], norm="imagenet", mean=[0.0])
    assert loaded.manifest.input.norm is None and loaded.manifest.input.mean == [0.0]
    loaded.close()
    with pytest.raises(InputError, match="--norm imagenet, --std 0"):
        load_model(onnx_models["nchw"], norm="imagenet", std=[0.0])


def test_litert_takes_an_nchw_tflite_like_its_nhwc_twin(tiny_models, tmp_path):
    frame = _noisy_frame(5)
    nchw = tflite_builders.build_nchw(tmp_path / "colour_nchw.tflite")
    decoded, layouts = [], []
    for model in (nchw, tiny_models["colour_logits_float"]):
        with Segmenter.create(model=model, upsample="nearest") as seg:
            decoded.append(seg._decode(seg.invoke(seg.prepare(frame)[0])))
            layouts.append((seg.manifest.input.layout, seg.manifest.output.layout))
    assert layouts == [("NCHW", "NCHW"), ("NHWC", "NHWC")]
    assert np.array_equal(decoded[0].label_map, decoded[1].label_map)
    assert np.allclose(decoded[0].confidence, decoded[1].confidence, atol=1e-5)


def test_manifest_output_layout_mismatch_says_which_field_to_set(onnx_models, tmp_path):
    loaded = load_model(onnx_models["nchw"])
    data = json.loads(loaded.manifest.dump())
    loaded.close()
    data["output"]["layout"] = "NHWC"  # wrong: the model's output is [1, 4, 32, 32]
    (tmp_path / "colour_nchw.onnx").write_bytes(onnx_models["nchw"].read_bytes())
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="manifest says 4 classes, model outputs 32 channels"):
        load_model(tmp_path)
    data["output"]["layout"] = "NCHW"
    data["classes"], data["palette"] = data["classes"][:3], data["palette"][:3]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"read as NCHW: set output.layout if it is NHWC"):
        load_model(tmp_path)


def test_run_takes_norm_and_input_size_for_a_model_without_manifest(tmp_path, caplog):
    from edge_seg.cli.main import main

    model = onnx_builders.build_colour(tmp_path / "dyn.onnx", dynamic=True)
    jsonl = tmp_path / "frames.jsonl"
    assert main(["run", "--model", str(model), "--norm", "imagenet", "--input-size", "40x24", "--max-frames", "2",
                 "--jsonl", str(jsonl), "--state-dir", str(tmp_path / "state")]) == 0
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) >= 2 and records[0]["classes"] == [f"class_{i}" for i in range(4)]
    notice = next(r.message for r in caplog.records if "has no manifest" in r.message)
    assert "sized 40x24 from --input-size" in notice and "normalisation --norm imagenet used instead" in notice


def test_a_batched_invoke_of_an_nchw_model_gives_each_frame_the_output_it_gets_alone(tmp_path):
    from edge_seg.segmenter import Segmenter

    model = onnx_builders.build_colour(tmp_path / "dyn.onnx", dynamic=True)
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (24, 40, 3), np.uint8) for _ in range(3)]
    with Segmenter.create(model=model, input_size=(40, 24)) as one, \
            Segmenter.create(model=model, input_size=(40, 24)) as many:
        assert many.batch_size(3) == 3
        alone = [one.invoke(one.prepare(frame)[0]) for frame in frames]
        together = many.invoke_many([many.prepare(frame)[0] for frame in frames])
        for a, b in zip(alone, together):
            assert a.shape == b.shape == (1, 24, 40, 4) and np.allclose(a, b, atol=1e-5)
