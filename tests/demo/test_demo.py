"""`edge-seg demo` writes a readable overlay video and a summary with mIoU, and shows the MQTT path."""

from __future__ import annotations

import cv2
from broker import requires_mosquitto

from edge_seg.cli.main import main
from edge_seg.cloud.consumer import iter_masks
from edge_seg.demo import mqtt as demo_mqtt
from edge_seg.publish.outbox import Outbox


def _frames(video) -> int:
    cap = cv2.VideoCapture(str(video))
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    return count


@requires_mosquitto
def test_demo_writes_video_summary_and_sends_masks_through_a_local_broker(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--frames", "12", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert _frames(tmp_path / "demo_overlay.mp4") == 12
    assert "12 frames" in out and "mIoU vs generator ground truth: " in out
    miou = float(out.split("mIoU vs generator ground truth: ")[1].split()[0])
    assert 0.5 < miou <= 1.0
    for stage in ("preprocess", "infer", "postprocess", "overlay"):
        assert stage in out
    assert "published 12 masks" in out and "consumer stored 12 masks" in out
    stored = list(iter_masks(tmp_path / "consumer"))
    assert len(stored) == 12 and stored[0].class_map().shape == (360, 640)


def test_demo_without_a_broker_keeps_the_messages_in_the_outbox(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo_mqtt, "mosquitto_binary", lambda: None)
    assert main(["demo", "--out", str(tmp_path), "--frames", "5", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "no broker installed; 5 masks kept in the outbox" in out
    outbox = Outbox(tmp_path / "state" / "outbox.sqlite")
    assert outbox.stats().depth == 5
    outbox.close()


def test_demo_rejects_zero_frames(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--frames", "0", "--no-mqtt"]) == 2
    assert "--frames must be at least 1" in capsys.readouterr().err
