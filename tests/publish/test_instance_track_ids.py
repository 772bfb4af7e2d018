"""track_id in instance messages: carried when tracking is on, absent (and still valid) without it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_seg.postprocess.instance import label_map
from edge_seg.postprocess.tracking import Tracker
from edge_seg.publish import messages
from edge_seg.publish.messages import InstancesMessage
from edge_seg.segmentation import Instance, ModelIdentity, Segmentation
from edge_seg.view.overlay import InstanceOverlay, instance_colour

MODEL = ModelIdentity("yolo", "1.0.0", "ab" * 32)
FRAME = (120, 80)


def _segmentation(instances: tuple[Instance, ...]) -> Segmentation:
    labels, conf = label_map(list(instances), FRAME)
    return Segmentation(labels, conf, FRAME, ("a", "b"), ((0, 0, 0), (255, 0, 0)), MODEL, instances=instances)


def _instances(shift: int = 0) -> tuple[Instance, ...]:
    return (Instance(0, 0.9, (10 + shift, 10, 20, 20), np.ones((20, 20), bool), (10 + shift, 10)),
            Instance(1, 0.8, (70 - shift, 40, 20, 20), np.ones((20, 20), bool), (70 - shift, 40)))


def test_track_ids_travel_in_the_message_and_the_summary():
    tracked = Tracker(min_hits=1).update(_instances())
    seg = _segmentation(tracked)
    enc = messages.encode_instances(seg, device="cam-1", seq=1, ts=1.0, frame_seq=3)
    msg = messages.decode(enc.payload, enc.content_type)
    assert isinstance(msg, InstancesMessage)
    assert [i.track_id for i in msg.instances] == [1, 2]
    assert [i["track_id"] for i in seg.summary()["instances"]] == [1, 2]


def test_without_tracking_no_track_id_key_is_sent_and_old_messages_decode():
    seg = _segmentation(_instances())
    enc = messages.encode_instances(seg, device="cam-1", seq=1, ts=1.0)
    assert all("track_id" not in item for item in json.loads(enc.payload)["instances"])
    assert all(i.track_id is None for i in messages.decode(enc.payload, enc.content_type).instances)
    assert all("track_id" not in item for item in seg.summary()["instances"])


def test_a_negative_track_id_is_refused():
    enc = messages.encode_instances(_segmentation(_instances()), device="cam-1", seq=1, ts=1.0)
    raw = json.loads(enc.payload)
    raw["instances"][0]["track_id"] = -1
    with pytest.raises(messages.MessageError):
        messages.decode(json.dumps(raw).encode(), enc.content_type)


def test_a_tracked_instance_keeps_its_overlay_colour_when_the_ranking_changes():
    tracker = Tracker(min_hits=1)
    first = tracker.update(_instances())
    swapped = tracker.update(tuple(reversed(_instances(2))))  # listed the other way round: ranks swap
    frame = np.zeros((FRAME[1], FRAME[0], 3), np.uint8)
    overlay = InstanceOverlay(alpha=1.0, boxes=False, labels=False, contours=False)
    for tracked in (first, swapped):
        drawn = overlay.annotate(frame, _segmentation(tracked))
        for inst in tracked:
            x, y = inst.origin
            assert tuple(int(v) for v in drawn[y + 10, x + 10]) == instance_colour(inst.track_id)
