"""The tracking stage of the loop: gives the instances of each frame their ``track_id``.

It runs first on the sink thread, so every later stage (overlay, crops, JSONL, MQTT) sees the same
ids. One stage (one ``Tracker``) per source: a loop with several cameras makes one per camera.
"""

from __future__ import annotations

from dataclasses import replace

from edge_seg.loop.pipeline import FrameResult
from edge_seg.postprocess.tracking import Tracker


class TrackStage:
    """Replaces ``result.segmentation`` with one whose instances carry track ids (semantic results pass)."""

    name = "tracking"

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def __call__(self, result: FrameResult) -> None:
        seg = result.segmentation
        if seg.instances is None:
            return
        result.segmentation = replace(seg, instances=self.tracker.update(seg.instances))


__all__ = ["TrackStage"]
