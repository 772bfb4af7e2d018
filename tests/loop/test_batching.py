"""Frames of several cameras in one invoke (``pipeline.batch``) on the bundled LiteRT model."""

from __future__ import annotations

import threading
import time

import numpy as np

from edge_seg.config import parse_config
from edge_seg.demo.clips import render_clip
from edge_seg.loop.runner import build
from edge_seg.segmenter import DEFAULT_MODEL, Segmenter


def test_a_batched_invoke_gives_each_frame_the_output_it_gets_alone():
    frames = [scene.image for scene in render_clip(5, 3, (320, 180))]
    with Segmenter.create(model=DEFAULT_MODEL) as one, Segmenter.create(model=DEFAULT_MODEL) as many:
        assert many.batch_size(4) == 4
        prepared = [one.prepare(frame)[0] for frame in frames]
        alone = [one.invoke(batch) for batch in prepared]
        together = many.invoke_many(prepared)  # 3 frames in a batch of 4: padded
        assert len(together) == 3
        for a, b in zip(alone, together):
            assert a.shape == b.shape and np.array_equal(a, b)


def test_the_loop_segments_every_camera_with_batched_invokes():
    uri = "synthetic://?width=160&height=96"
    built = build(parse_config({"sources": [{"name": n, "uri": uri, "fps": 20} for n in "abc"],
                                "pipeline": {"batch": "auto"}}))
    calls = []
    invoke_many = built.segmenter.invoke_many
    built.segmenter.invoke_many = lambda batches: calls.append(len(batches)) or invoke_many(batches)
    thread = threading.Thread(target=built.pipeline.run, daemon=True)
    thread.start()
    time.sleep(2.5)
    built.pipeline.stop()
    thread.join(20)
    built.segmenter.close()
    assert built.pipeline.batch == 3
    assert all(cam.stats.completed >= 10 for cam in built.pipeline.cameras)
    assert calls and max(calls) >= 2  # frames of several cameras did share an invoke
