"""The loop on real sources (synthetic://, file://, images://) with tiny real models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
from conftest import write_scene_clip

from edge_seg.config import parse_config
from edge_seg.demo.clips import render_clip
from edge_seg.loop.pipeline import LatestSlot, Pipeline
from edge_seg.loop.runner import build
from edge_seg.segmenter import Segmenter
from edge_seg.sources import open_source
from edge_seg.sources.base import Frame
from edge_seg.sources.reconnect import ResilientSource


def _loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("edge-seg")]


@pytest.fixture
def colour_config(tiny_models, tmp_path):
    def make(**sections):
        data = {"model": {"path": str(tiny_models["colour_probs_uint8"])}, **sections}
        return parse_config(data)
    return make


def test_latest_slot_keeps_only_the_newest_frame():
    slot = LatestSlot()
    frames = [Frame(np.zeros((2, 2, 3), np.uint8), time.time(), i) for i in range(3)]
    assert slot.put(frames[0]) is False
    assert slot.put(frames[1]) is True  # frame 0 was never taken: dropped
    assert slot.take(0.01).seq == 1
    assert slot.take(0.01) is None


def test_loop_on_synthetic_source_writes_jsonl_and_video(colour_config, tmp_path):
    config = colour_config(source={"uri": "synthetic://?seed=3&width=320&height=180"},
                           pipeline={"max_frames": 20},
                           output={"video": str(tmp_path / "o.mp4"), "jsonl": str(tmp_path / "f.jsonl")})
    built = build(config)
    stats = built.pipeline.run()
    built.segmenter.close()
    assert stats.segmented == 20 and stats.completed + stats.sink_dropped == 20
    lines = [json.loads(line) for line in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert len(lines) == stats.completed
    assert [r["seq"] for r in lines] == sorted(r["seq"] for r in lines)
    assert {"preprocess", "infer", "postprocess", "overlay"} <= set(lines[0]["timings_ms"])
    cap = cv2.VideoCapture(str(tmp_path / "o.mp4"))
    ok, image = cap.read()
    cap.release()
    assert ok and image.shape == (180, 320, 3)
    assert not _loop_threads()
    assert "stats: " in stats.line() and "frames" in stats.line()


def test_loop_on_a_file_ends_at_eof_having_segmented_every_frame(colour_config, tmp_path):
    """An unpaced file is lossless: the capture thread waits for inference instead of dropping."""
    clip = write_scene_clip(tmp_path / "clip.mp4", seed=5, frames=15)
    config = colour_config(source={"uri": f"file://{clip}", "loop": False}, output={"jsonl": str(tmp_path / "f.jsonl")})
    built = build(config)
    stats = built.pipeline.run()
    built.segmenter.close()
    assert stats.captured == 15, stats.snapshot()
    assert stats.completed == 15 and stats.dropped == 0 and stats.sink_dropped == 0, stats.line()
    records = [json.loads(line) for line in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in records] == list(range(15))
    assert not _loop_threads()


def test_a_live_source_keeps_only_the_newest_frame_while_a_lossless_one_waits(tiny_models):
    """Same slow sink, two sources: a paced (live-like) synthetic source drops, an unpaced one does not."""
    class SlowSink:
        name = "slow"

        def __call__(self, result):
            time.sleep(0.02)

    results = {}
    for name, uri in (("live", "synthetic://?seed=1&width=96&height=64&fps=400"),
                      ("lossless", "synthetic://?seed=1&width=96&height=64&frames=30")):
        with Segmenter.create(model=tiny_models["colour_probs_uint8"]) as seg:
            source = open_source(uri)
            assert getattr(source, "lossless", False) is (name == "lossless")
            results[name] = Pipeline(source, seg, stages=[SlowSink()], max_frames=30, sink_queue=2).run()
    lossless = results["lossless"]
    assert lossless.completed == 30 and lossless.dropped == 0 and lossless.sink_dropped == 0
    live = results["live"]
    assert live.dropped + live.sink_dropped > 0


def test_loop_on_an_image_directory_with_every_n_and_roi(colour_config, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    for i, scene in enumerate(render_clip(1, 6, (120, 80))):
        cv2.imwrite(str(images / f"{i:03d}.png"), scene.image)
    config = colour_config(source={"uri": f"images://{images}", "loop": False, "fps": 30},
                           pipeline={"every_n": 2, "roi": [10, 10, 64, 48]},
                           output={"jsonl": str(tmp_path / "f.jsonl")})
    built = build(config)
    stats = built.pipeline.run()
    built.segmenter.close()
    assert stats.captured == 6 and stats.skipped + stats.segmented + stats.dropped == 6
    assert stats.skipped >= 2
    record = json.loads((tmp_path / "f.jsonl").read_text().splitlines()[0])
    assert record["frame"] == {"width": 64, "height": 48}  # the ROI, not the frame


class _Stalling:
    """A real synthetic source; the first one opened goes silent after 10 frames, as a lost camera does."""

    def __init__(self, opened: list):
        self.inner = open_source("synthetic://?seed=2&width=96&height=64&fps=50")
        self.uri = self.inner.uri
        self.first = not opened
        self.count = 0
        opened.append(self)

    def read(self, timeout):
        self.count += 1
        if self.first and self.count > 10:
            time.sleep(timeout)
            return None
        return self.inner.read(timeout)

    def close(self):
        self.inner.close()


def test_a_stalled_source_is_reopened_and_the_loop_goes_on(tiny_models):
    opened: list = []
    events = []
    source = ResilientSource(lambda: _Stalling(opened), deadline=0.3, backoff_initial=0.1, on_event=events.append)
    with Segmenter.create(model=tiny_models["colour_probs_uint8"]) as seg:
        pipeline = Pipeline(source, seg, max_frames=30)
        stats = pipeline.run()
    kinds = [e.kind for e in events]
    assert "stalled" in kinds and "reopened" in kinds
    assert kinds.index("stalled") < kinds.index("reopened")
    assert len(opened) >= 2 and opened[0].count > 10 and stats.segmented == 30  # frames flowed after the reopen
    assert not _loop_threads()


def test_sigterm_drains_and_prints_the_stats_line(tiny_models, tmp_path):
    jsonl = tmp_path / "f.jsonl"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "edge_seg.cli", "run", "--model",
                             str(tiny_models["colour_probs_uint8"]), "--source", "synthetic://?width=160&height=96",
                             "--jsonl", str(jsonl)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while time.time() < deadline and (not jsonl.exists() or len(jsonl.read_text().splitlines()) < 5):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stats: " in out and "frames in" in out
    assert "received SIGTERM" in err
    records = jsonl.read_text().splitlines()
    assert all(json.loads(line) for line in records)  # every line complete: nothing cut mid-write


def test_loop_serves_preview_and_metrics_while_running(colour_config):
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    config = colour_config(source={"uri": "synthetic://?width=160&height=96&fps=30"},
                           preview={"enabled": True, "port": 0})
    built = build(config)
    thread = threading.Thread(target=built.pipeline.run, name="test-loop")
    thread.start()
    try:
        deadline = time.time() + 30
        while time.time() < deadline and built.pipeline.stats.completed < 10:
            time.sleep(0.05)
        while time.time() < deadline:  # the page's stats refresh twice a second
            with urllib.request.urlopen(built.preview.url + "stats.json", timeout=5) as resp:
                stats = json.loads(resp.read())
            if stats["pipeline"].get("completed"):
                break
            time.sleep(0.1)
        with urllib.request.urlopen(built.preview.url + "metrics", timeout=5) as resp:
            families = {f.name: f for f in text_string_to_metric_families(resp.read().decode())}
        with urllib.request.urlopen(built.preview.url + "snapshot.jpg", timeout=5) as resp:
            jpeg = cv2.imdecode(np.frombuffer(resp.read(), np.uint8), cv2.IMREAD_COLOR)
    finally:
        built.pipeline.stop()
        thread.join(timeout=20)
        built.segmenter.close()
    assert jpeg.shape == (96, 160, 3)
    # preview without a video file: no overlay stage on every frame, the preview draws what it encodes
    assert "overlay" not in [getattr(stage, "name", "") for stage in built.pipeline.stages]
    preview_sink = next(stage for stage in built.pipeline.stages if getattr(stage, "name", "") == "preview")
    assert preview_sink.draw is not None
    assert callable(built.preview._view(None)._latest[2])  # the server holds a drawing function, not a drawn frame
    assert stats["pipeline"]["completed"] >= 1 and stats["pipeline"]["source_state"] == "live"
    processed = families["edge_seg_frames_processed"].samples[0].value
    assert processed >= 10
    assert families["edge_seg_source_up"].samples[0].value == 1
    assert not _loop_threads() and not thread.is_alive()


def test_a_stage_that_fails_to_close_neither_keeps_the_others_open_nor_goes_unreported():
    class Stage:
        def __init__(self, fail: bool):
            self.name, self.fail, self.closed = "failing" if fail else "fine", fail, False

        def __call__(self, result) -> None:
            pass

        def close(self) -> None:
            self.closed = True
            if self.fail:
                raise OSError("No space left on device")

    stages = [Stage(True), Stage(False)]
    with Segmenter.create() as seg:
        pipeline = Pipeline(open_source("synthetic://?width=160&height=96"), seg, stages=stages, max_frames=5)
        pipeline.run()
    assert [s.closed for s in stages] == [True, True]
    assert isinstance(pipeline.error, OSError) and "No space left" in str(pipeline.error)
    assert not _loop_threads()
