"""`edge-seg demo` writes a readable overlay video and a summary with mIoU."""

from __future__ import annotations

import cv2

from edge_seg.cli import main


def test_demo_writes_video_and_summary(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--frames", "12", "--quiet"]) == 0
    out = capsys.readouterr().out
    video = tmp_path / "demo_overlay.mp4"
    cap = cv2.VideoCapture(str(video))
    frames = 0
    while cap.read()[0]:
        frames += 1
    cap.release()
    assert frames == 12
    assert "12 frames" in out and "mIoU vs generator ground truth: " in out
    miou = float(out.split("mIoU vs generator ground truth: ")[1].split()[0])
    assert 0.5 < miou <= 1.0
    for stage in ("preprocess", "infer", "postprocess", "overlay"):
        assert stage in out
