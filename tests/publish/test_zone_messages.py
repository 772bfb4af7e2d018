"""Zone event and zone state messages: encode → decode round trip, strict validation."""

from __future__ import annotations

import base64
import json

import pytest
from pydantic import BaseModel, ConfigDict, Field

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


def test_an_event_may_carry_a_jpeg_snapshot_that_an_older_v1_consumer_ignores():
    jpeg = base64.b64encode(b"\xff\xd8\xff\xe0 a jpeg").decode("ascii")
    enc = encode_event(_event(), device="cam1", seq=5, snapshot=(jpeg, (320, 180)))
    msg = decode(enc.payload)
    assert msg.snapshot_jpeg == jpeg and msg.snapshot_size == [320, 180]
    assert decode(encode_event(_event(), device="cam1", seq=6).payload).snapshot_jpeg is None

    class EventV1AsReleased(BaseModel):  # what a consumer built before the snapshot fields validates with
        model_config = ConfigDict(extra="ignore", frozen=True, strict=True, allow_inf_nan=False)
        schema_: str = Field(alias="schema")
        device: str
        msg_id: str
        seq: int
        ts: float
        zone: str
        class_: str = Field(alias="class")
        kind: str
        track_ids: list[int] = []
        value: float
        frame_seq: int | None = None

    old = EventV1AsReleased.model_validate_json(enc.payload)
    assert (old.schema_, old.zone, old.kind, old.track_ids) == ("edge_seg.event/v1", "drive-way", "enter", [7])


@pytest.mark.parametrize("change, words", [
    ({"snapshot_jpeg": base64.b64encode(b"\x89PNG not a jpeg").decode()}, "not a base64 JPEG"),
    ({"snapshot_jpeg": "%%%"}, "'snapshot_jpeg' is not valid base64"),
    ({"snapshot_size": None}, "come together"),
    ({"snapshot_size": [320]}, "snapshot_size"),
])
def test_bad_snapshots_are_refused(change, words):
    jpeg = base64.b64encode(b"\xff\xd8\xff\xe0 a jpeg").decode("ascii")
    obj = json.loads(encode_event(_event(), device="cam1", seq=1, snapshot=(jpeg, (32, 18))).payload)
    obj.update(change)
    with pytest.raises(MessageError, match=words):
        decode(json.dumps(obj).encode())
