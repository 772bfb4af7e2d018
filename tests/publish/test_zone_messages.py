"""Zone event and zone state messages: encode → decode round trip, strict validation."""

from __future__ import annotations

import json

import pytest

from edge_seg.postprocess.zones import ZoneEvent, ZoneState
from edge_seg.publish.messages import (
    EventMessage,
    MessageError,
    ZoneStateMessage,
    decode,
    encode_event,
    encode_zone_state,
)


def _event(**changes) -> ZoneEvent:
    fields = {"zone": "drive-way", "class_name": "car", "kind": "enter", "track_ids": (7,), "frame_seq": 42,
              "ts": 1_700_000_000.25, "value": 1.0}
    return ZoneEvent(**{**fields, **changes})


def test_an_event_round_trips_on_the_event_topic():
    enc = encode_event(_event(), device="cam1", seq=5)
    assert enc.topic == "event" and enc.content_type == "application/json"
    msg = decode(enc.payload)
    assert isinstance(msg, EventMessage)
    assert (msg.zone, msg.class_, msg.kind, msg.track_ids, msg.frame_seq, msg.ts, msg.seq, msg.device) == \
        ("drive-way", "car", "enter", [7], 42, 1_700_000_000.25, 5, "cam1")
    assert json.loads(enc.payload)["schema"] == "edge_seg.event/v1" and msg.msg_id == enc.msg_id


def test_zone_state_round_trips_with_counts_or_areas():
    states = [ZoneState("pool", "person", occupied=True, count=2, track_ids=(3, 4), since=10.0),
              ZoneState("pool", "water", occupied=False, area=0.1234567)]
    enc = encode_zone_state("pool", states, device="cam1", seq=1, ts=11.0, frame_seq=9)
    assert enc.topic == "zone/pool/state"
    msg = decode(enc.payload)
    assert isinstance(msg, ZoneStateMessage) and msg.occupied and msg.frame_seq == 9
    assert msg.classes["person"].count == 2 and msg.classes["person"].track_ids == [3, 4]
    assert msg.classes["water"].area == 0.123457 and msg.classes["water"].occupied is False


@pytest.mark.parametrize("change, words", [
    ({"kind": "arrived"}, "kind"),
    ({"track_ids": [1, 2]}, "a enter event names exactly one track"),
    ({"value": "1"}, "value"),
    ({"zone": "a/b"}, "zone"),
    ({"track_ids": [-1]}, "track_ids"),
    ({"class": 3}, "class"),
])
def test_bad_events_are_refused_with_one_line(change, words):
    obj = json.loads(encode_event(_event(), device="cam1", seq=1).payload)
    obj.update(change)
    with pytest.raises(MessageError, match=words) as err:
        decode(json.dumps(obj).encode())
    assert "\n" not in str(err.value)


def test_nan_values_are_refused():
    payload = encode_event(_event(kind="occupied", track_ids=()), device="cam1", seq=1).payload
    with pytest.raises(MessageError, match="NaN"):
        decode(payload.replace(b'"value":1.0', b'"value":NaN'))
