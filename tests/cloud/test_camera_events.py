"""Zone events of a device with several cameras, read back from the SQLite store with their camera."""

from __future__ import annotations

from types import SimpleNamespace

from edge_seg.cloud.events import iter_events
from edge_seg.cloud.store import Store
from edge_seg.publish.messages import decode
from edge_seg.publish.zone_messages import encode_event


def _event(camera, seq):
    event = SimpleNamespace(zone="door", class_name="person", kind="enter", track_ids=(seq,), value=1.0,
                            ts=float(seq), frame_seq=seq)
    enc = encode_event(event, device="box", seq=seq, camera=camera)
    return decode(enc.payload, enc.content_type)


def test_each_stored_event_names_its_camera_and_the_only_camera_none(tmp_path):
    store = Store(tmp_path)
    try:
        for seq, camera in enumerate(("front", "yard", None), start=1):
            assert store.store(_event(camera, seq))
    finally:
        store.close()
    assert [(e.camera, e.track_ids) for e in iter_events(tmp_path)] == [("front", (1,)), ("yard", (2,)), (None, (3,))]
