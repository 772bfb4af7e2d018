"""The preview of a device with several cameras: a grid page, one stream and snapshot per camera."""

from __future__ import annotations

import json

import numpy as np
from preview_helpers import get, make_frame

from edge_seg.view.preview import PreviewServer


def test_several_cameras_get_a_grid_page_and_their_own_streams_and_stats():
    with PreviewServer(port=0).start() as server:
        server.update(make_frame(1), {"source_state": "live", "fps": 9.5}, camera="front")
        server.update(np.zeros((40, 60, 3), np.uint8), {"source_state": "reconnecting"}, camera="yard")
        status, _, page = get(server.url)
        assert status == 200 and b'["front", "yard"]' in page and b"/stream.mjpg" in page
        _, ctype, front = get(server.url + "snapshot.jpg?camera=front")
        _, _, yard = get(server.url + "snapshot.jpg?camera=yard")
        assert ctype == "image/jpeg" and front != yard and front[:2] == yard[:2] == b"\xff\xd8"
        assert get(server.url + "snapshot.jpg?camera=nope")[0] == 503
        stats = json.loads(get(server.url + "stats.json")[2])
        assert stats["views"]["yard"]["pipeline"]["source_state"] == "reconnecting"
        assert stats["views"]["yard"]["frame"]["width"] == 60


def test_one_camera_keeps_the_single_page():
    with PreviewServer(port=0).start() as server:
        server.update(make_frame(1), {"fps": 1.0})
        status, _, page = get(server.url)
        assert status == 200 and b'id="overlay"' in page
        assert "views" not in json.loads(get(server.url + "stats.json")[2])


def test_a_camera_that_never_sent_a_frame_is_on_the_grid_and_fails_healthz():
    with PreviewServer(port=0, cameras=["front", "yard"]).start() as server:
        server.update(make_frame(1), {"source_state": "live"}, camera="front")
        assert b'["front", "yard"]' in get(server.url)[2]  # the grid before yard's first frame
        assert server.health() == (False, "camera yard: no frame received yet")
        assert json.loads(get(server.url + "stats.json")[2])["views"]["yard"]["frame"] is None
        server.update(make_frame(2), {"source_state": "live"}, camera="yard")
        assert server.health() == (True, "ok")
