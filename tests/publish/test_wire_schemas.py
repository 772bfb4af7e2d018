"""The wire contract: every message kind keeps its schema id (consumers in the field match on these strings),
and a metrics message a device encodes is one the decoder accepts under that id."""

from __future__ import annotations

import json

from edge_seg.publish import schemas
from edge_seg.publish.messages import decode, encode_metrics, encode_status

WIRE_IDS = {"MASK_SCHEMA": "edge_seg.mask/v1", "INSTANCES_SCHEMA": "edge_seg.instances/v1",
            "CROP_SCHEMA": "edge_seg.crop/v1", "INSTANCE_CROP_SCHEMA": "edge_seg.instance_crop/v1",
            "STATUS_SCHEMA": "edge_seg.status/v1", "METRICS_SCHEMA": "edge_seg.metrics/v1",
            "COMMAND_SCHEMA": "edge_seg.cmd/v1", "RESULT_SCHEMA": "edge_seg.cmd_result/v1"}


def test_schema_ids_are_the_published_ones():
    assert {name: getattr(schemas, name) for name in WIRE_IDS} == WIRE_IDS


def test_metrics_and_status_carry_their_schema_id_on_the_wire():
    for encoded, schema in ((encode_metrics(device="d1", seq=1, summary={"fps": 3.0}), "edge_seg.metrics/v1"),
                            (encode_status(device="d1", seq=2, online=True), "edge_seg.status/v1")):
        assert json.loads(encoded.payload)["schema"] == schema
        assert decode(encoded.payload, encoded.content_type).schema_ == schema
