"""The edge-seg CLI on real files and tiny real models."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tflite_builders
from conftest import write_manifest

from edge_seg.cli.main import main
from edge_seg.manifest import read_manifest
from edge_seg.maskio import read_palette_png


@pytest.fixture
def colour_model(tiny_models, tmp_path):
    return write_manifest(tiny_models["colour_probs_uint8"], tmp_path / "model").parent


def test_infer_writes_overlay_mask_and_summary_and_reports_bad_images(colour_model, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    frame, truth = tflite_builders.colour_frame(64, 48)
    cv2.imwrite(str(images / "bands.png"), frame)
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    code = main(["infer", str(images), "--model", str(colour_model), "--out", str(out), "--alpha", "0.6"])
    captured = capsys.readouterr()
    assert code == 1  # one image failed
    assert "segmented 1 image(s)" in captured.out and "1 failed" in captured.out
    assert (out / "bands_overlay.png").is_file() and not (out / "broken.json").exists()
    mask = read_palette_png(out / "bands_mask.png")
    assert mask.shape == truth.shape and (mask == truth).mean() > 0.9
    summary = json.loads((out / "bands.json").read_text())
    assert summary["classes"] == tflite_builders.COLOUR_CLASSES
    assert abs(summary["area_fractions"]["green"] - 0.25) < 0.1
    overlay = cv2.imread(str(out / "bands_overlay.png"))
    assert overlay.shape == frame.shape and not np.array_equal(overlay, frame)


def test_infer_on_one_good_image_exits_zero(colour_model, tmp_path):
    frame, _ = tflite_builders.colour_frame()
    cv2.imwrite(str(tmp_path / "one.jpg"), frame)
    assert main(["infer", str(tmp_path / "one.jpg"), "-m", str(colour_model), "-o", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "one_overlay.jpg").is_file()


@pytest.mark.parametrize("argv, message", [
    (["infer", "missing-dir"], "no such file or directory: missing-dir"),
    (["infer", ".", "--alpha", "2"], "--alpha must be between 0 and 1"),
    (["eval", "--data", ".", "--model", "missing-model"], "model not found: missing-model"),
    (["eval", "--data", "missing-data"], "dataset directory not found: missing-data"),
])
def test_user_mistakes_are_one_line_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("edge-seg: error: ") and message in err[-1]
    assert not any("Traceback" in line for line in err)


def test_manifest_init_writes_an_editable_manifest(tiny_models, tmp_path, capsys):
    model = tmp_path / "mine.tflite"
    model.write_bytes(tiny_models["binary_sigmoid_float"].read_bytes())
    assert main(["manifest", "init", str(model)]) == 0
    manifest = read_manifest(tmp_path / "manifest.json")
    assert manifest.task == "binary" and manifest.output.kind == "sigmoid"
    assert manifest.files["tflite"].path == "mine.tflite" and len(manifest.files["tflite"].sha256) == 64
    assert main(["manifest", "init", str(model)]) == 2  # exists, no --force
    assert "pass --force" in capsys.readouterr().err
    # the written manifest is picked up from then on (no inference notice)
    from edge_seg.model import load_model
    assert load_model(model).inferred is None


def test_console_script_runs_help_and_version():
    out = subprocess.run([sys.executable, "-m", "edge_seg.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("infer", "eval", "demo", "bench", "manifest"):
        assert command in out.stdout
    out = subprocess.run([sys.executable, "-m", "edge_seg.cli", "version"], capture_output=True, text=True)
    assert json.loads(out.stdout)["edge_seg"]


def test_eval_on_a_generated_set_matches_numpy(tiny_models, tmp_path, capsys):
    from edge_seg import Segmenter
    from edge_seg.demo.scenes import write_dataset

    data = write_dataset(tmp_path / "set", 6, seed=42, size=(96, 64))
    model = tiny_models["colour_probs_uint8"]
    out = tmp_path / "report"
    assert main(["eval", "--data", str(data), "--model", str(model), "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert (out / "confusion.png").is_file() and cv2.imread(str(out / "confusion.png")) is not None
    # the same numbers, computed directly: segment each image, count per class
    inter, union = np.zeros(4), np.zeros(4)
    with Segmenter.create(model=model) as seg:
        for image_path in sorted((data / "images").iterdir()):
            pred = seg.segment(cv2.imread(str(image_path))).class_map
            truth = cv2.imread(str(data / "masks" / f"{image_path.stem}.png"), cv2.IMREAD_UNCHANGED)
            for c in range(4):
                inter[c] += np.logical_and(pred == c, truth == c).sum()
                union[c] += np.logical_or(pred == c, truth == c).sum()
    for c, name in enumerate(report["per_class"]):
        expected = inter[c] / union[c] if union[c] else None
        got = report["per_class"][name]["iou"]
        assert (got is None and expected is None) or abs(got - expected) < 1e-9
    present = union > 0
    assert abs(report["mean_iou"] - (inter[present] / union[present]).mean()) < 1e-9
    assert "mIoU" in capsys.readouterr().out


def test_the_parser_names_the_bundled_model_without_loading_the_runtime():
    """``edge-seg --help`` builds every parser; naming the default model must not import numpy, cv2 or pydantic."""
    from edge_seg.cli.common import BUNDLED_MODEL
    from edge_seg.segmenter import DEFAULT_MODEL

    assert BUNDLED_MODEL == DEFAULT_MODEL and (BUNDLED_MODEL / "manifest.json").is_file()
    code = ("import sys; from edge_seg.cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in ('numpy', 'cv2', 'pydantic', 'edge_seg.segmenter') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
