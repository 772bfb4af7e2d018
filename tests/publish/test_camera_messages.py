"""Messages of a device with several cameras: ``camera`` in the envelope and the topic, within schema v1."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from mqtt_helpers import fake_result

from edge_seg.publish.messages import MessageError, decode, encode_mask
from edge_seg.publish.mqtt_config import PolicyConfig
from edge_seg.publish.policy import CameraPolicies
from edge_seg.publish.zone_messages import encode_event


def _mask(camera=None):
    return encode_mask(fake_result(1).segmentation, device="box", seq=7, ts=1.0, camera=camera)


def test_a_camera_s_mask_goes_to_its_topic_and_names_it_in_the_same_schema_version():
    enc = _mask("front")
    body = json.loads(enc.payload)
    assert enc.topic == "front/mask" and body["camera"] == "front" and body["schema"] == "edge_seg.mask/v1"
    assert decode(enc.payload, enc.content_type).camera == "front"


def test_the_only_camera_keeps_the_short_topic_and_no_camera_field():
    enc = _mask()
    assert enc.topic == "mask" and "camera" not in json.loads(enc.payload)
    assert decode(enc.payload, enc.content_type).camera is None


def test_an_event_of_a_camera_goes_to_its_event_topic():
    event = SimpleNamespace(zone="door", class_name="person", kind="enter", track_ids=(3,), value=1.0, ts=2.0,
                            frame_seq=5)
    enc = encode_event(event, device="box", seq=1, camera="yard")
    assert enc.topic == "yard/event" and decode(enc.payload, enc.content_type).camera == "yard"


@pytest.mark.parametrize("camera", ["a/b", "", "+", "#x"])
def test_a_camera_name_that_is_no_topic_level_is_refused(camera):
    with pytest.raises(MessageError, match="camera name"):
        _mask(camera)


def test_each_camera_keeps_its_own_publish_policy_and_commands_reach_all():
    policies = CameraPolicies(PolicyConfig(every_n=30), {"a": PolicyConfig(every_n=30),
                                                        "b": PolicyConfig(every_n=30, max_rate=0.001)})
    assert policies.decide({"x": 1.0}, None, "a") == "first" and policies.decide({"x": 1.0}, None, "b") == "first"
    policies.request_snapshot()
    assert policies.decide({"x": 1.0}, None, "a") == "snapshot" and policies.decide({"x": 1.0}, None, "b") == "snapshot"
    policies.update(every_n=2)
    assert policies.of("b").config.every_n == 2 and policies.of("b").config.max_rate == 0.001  # its override kept
    assert policies.counts["published"] == 4
