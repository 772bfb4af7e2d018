"""converters: data pipeline, loss, and a tiny end-to-end train -> QAT -> int8 TFLite -> manifest run."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

import converters  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)

pytest.importorskip("tensorflow_model_optimization")
pytest.importorskip("tf_keras")
pytest.importorskip("ai_edge_litert")

from converters import data, default_model, qat, tflite  # noqa: E402
from converters.architectures import ArchConfig, build_model  # noqa: E402
from edge_seg.demo.scenes import CLASSES, PALETTE, write_dataset  # noqa: E402
from edge_seg.errors import InputError  # noqa: E402
from edge_seg.manifest import read_manifest, sha256_file  # noqa: E402


@pytest.fixture(scope="module")
def quick_build(tmp_path_factory):
    """Run the --quick recipe once: (output folder, summary)."""
    out = tmp_path_factory.mktemp("model")
    work = tmp_path_factory.mktemp("work")
    summary = default_model.build(out, work, default_model.QUICK, verbose=0)
    return out, summary


def test_dataset_from_dir_resizes_batches_and_keeps_ignore_label(tmp_path):
    root = write_dataset(tmp_path / "ds", 4, seed=1, size=(48, 40))
    mask_path = root / "masks" / "00000.png"
    mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    mask[:4] = 255
    cv2.imwrite(str(mask_path), mask)
    ds = data.dataset_from_dir(root, (32, 32), batch_size=4, shuffle=False, augment=False)
    images, masks = next(iter(ds))
    assert images.shape == (4, 32, 32, 3) and masks.shape == (4, 32, 32, 1)
    assert 0.0 <= float(images.numpy().min()) and float(images.numpy().max()) <= 1.0
    assert 255 in np.unique(masks.numpy()[0])
    x, y = data.load_arrays(root, (32, 32))
    assert x.shape == (4, 32, 32, 3) and x.dtype == np.uint8 and y.shape == (4, 32, 32)


def test_load_arrays_rejects_a_folder_without_masks(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(InputError, match="masks/"):
        data.load_arrays(tmp_path, (32, 32))


def test_masked_crossentropy_ignores_label_255():
    loss = qat.masked_crossentropy()
    probs = np.full((1, 2, 2, 4), 0.25, np.float32)
    probs[0, 0, 0] = [0.97, 0.01, 0.01, 0.01]
    labels = np.array([[[[0], [255]], [[255], [255]]]], np.int32)
    assert float(loss(labels, probs)) == pytest.approx(-np.log(0.97), rel=1e-4)


def test_architecture_rejects_sizes_that_are_not_multiples_of_16():
    with pytest.raises(ValueError, match="multiple of 16"):
        build_model(ArchConfig(width=100, height=64))


def test_architecture_outputs_probabilities_at_input_size():
    model = build_model(ArchConfig(width=64, height=48, alpha=0.25))
    out = model(np.random.default_rng(0).random((1, 48, 64, 3), dtype=np.float32)).numpy()
    assert out.shape == (1, 48, 64, len(CLASSES))
    assert np.allclose(out.sum(-1), 1.0, atol=1e-4)


@pytest.mark.slow
def test_quick_build_exports_a_full_int8_model_with_uint8_io(quick_build):
    out, summary = quick_build
    runner = tflite.TFLiteRunner(out / tflite.INT8_NAME)
    assert runner.input.dtype == "uint8" and runner.output.dtype == "uint8"
    assert runner.input.shape == (1, 64, 64, 3) and runner.output.shape == (1, 64, 64, len(CLASSES))
    assert runner.input.scale == pytest.approx(1 / 255) and runner.input.zero_point == 0
    raw = runner.raw(np.zeros((64, 64, 3), np.uint8))
    assert raw.dtype == np.uint8 and raw.shape == (64, 64, len(CLASSES))
    assert summary["int8_keras_argmax_agreement"] > 0.9
    assert not (out / tflite.FLOAT_NAME).exists()  # the float model is for measurement only


@pytest.mark.slow
def test_quick_build_writes_a_valid_manifest_matching_the_file(quick_build):
    out, summary = quick_build
    manifest = read_manifest(out / "manifest.json")
    assert manifest.name == "edge-seg-default" and manifest.task == "semantic"
    assert manifest.classes == list(CLASSES)
    assert [tuple(c) for c in manifest.palette] == list(PALETTE)
    assert manifest.input.dtype == "uint8" and manifest.input.color_order == "rgb"
    assert (manifest.input.width, manifest.input.height) == (64, 64)
    assert manifest.output.kind == "probabilities"
    entry = manifest.files["tflite"]
    assert entry.sha256 == sha256_file(out / entry.path)
    runner = tflite.TFLiteRunner(out / entry.path)
    assert manifest.output.tensors == [runner.output.name]
    assert set(manifest.baseline) == set(CLASSES)
    assert sum(manifest.baseline.values()) == pytest.approx(1.0, abs=1e-3)
    for key in ("float_miou", "int8_miou"):
        assert 0.0 <= manifest.metrics[key] <= 1.0
    assert manifest.metrics["heldout_frames"] == default_model.QUICK.heldout_images
    assert json.loads((out / "manifest.json").read_text())["schema"].startswith("edge_seg.manifest/")


@pytest.mark.slow
def test_quick_build_is_per_tensor_with_stripped_names_and_records_its_sizes(quick_build):
    """The recipe's per-tensor int8 file: one scale per tensor, no intermediate names, sizes in the manifest.

    Size bound: int8 <= 0.6 x float32 for this 64x64, width-0.25 configuration, where the
    flatbuffer's fixed overhead is half the int8 file (acceptance: 0.3 on the bundled configuration,
    checked in test_default_model and test_converters_arch).
    """
    from tensorflow.lite.python import schema_py_generated as schema

    out, summary = quick_build
    flat = (out / tflite.INT8_NAME).read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flat, 0))
    graph = model.subgraphs[0]
    scales = [t.quantization.scale for t in graph.tensors if t.quantization is not None
              and t.quantization.scale is not None]
    assert scales and all(len(s) == 1 for s in scales)
    io = set(graph.inputs) | set(graph.outputs)
    assert not any(t.name for i, t in enumerate(graph.tensors) if i not in io)
    metrics = read_manifest(out / "manifest.json").metrics
    assert metrics["per_channel"] == 0.0
    assert metrics["int8_tflite_bytes"] == len(flat) == summary["int8_bytes"]
    assert metrics["int8_float_size_ratio"] == pytest.approx(len(flat) / metrics["float_tflite_bytes"], abs=1e-4)
    assert metrics["int8_float_size_ratio"] <= 0.6
    assert 0.0 <= metrics["ptq_miou"] <= 1.0
