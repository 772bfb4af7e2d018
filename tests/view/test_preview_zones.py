"""The preview page of a real loop (bundled instance model, tracking, zones) in headless Chromium.

The loop plays the synthetic tracking clip over and over; the test reads the page's zone list and
track list from the DOM (text, not pixels) and checks them against the configured zones and against
``/stats.json`` of the same server.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.request

import cv2
import pytest
from chromium import CHROMIUM, Chromium

from edge_seg.config import parse_config
from edge_seg.demo.instance_clips import render_instance_clip
from edge_seg.loop.runner import build
from edge_seg.segmenter import DEFAULT_MODEL

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.skipif(not (os.path.exists(CHROMIUM) and shutil.which("bash")),
                                 reason="needs /usr/bin/chromium (Debian package chromium; `make install` installs"
                                        " it)")]
FRAMES = 40
CLASSES = ["disc", "box", "triangle"]
ROWS = ("[...document.querySelectorAll('#zones tr[data-zone]')]"
        ".map(r => [...r.cells].map(c => c.textContent))")
TRACKS = "[...document.querySelectorAll('#tracks .tid')].map(s => s.textContent)"


def test_page_lists_the_zones_their_state_and_the_track_ids_of_a_running_loop(tmp_path):
    images = tmp_path / "clip"
    images.mkdir()
    for t, scene in enumerate(render_instance_clip(1, FRAMES)):
        assert cv2.imwrite(str(images / f"{t:04d}.png"), scene.image)
    config = parse_config({
        "device": {"name": "cam-1", "state_dir": str(tmp_path / "state")},
        "model": {"path": str(DEFAULT_MODEL.parent / "instance")},
        "source": {"uri": f"images://{images}", "loop": True, "fps": 20},
        "tracking": {"enabled": True},
        "zones": [{"name": "everywhere", "units": "fractions", "points": [[0, 0], [1, 0], [1, 1], [0, 1]],
                   "classes": CLASSES, "inertia": 1},
                  {"name": "corner", "points": [[0, 0], [2, 0], [2, 2], [0, 2]], "classes": ["disc"]}],
        "preview": {"enabled": True, "port": 0}})
    built = build(config)
    runner = threading.Thread(target=built.pipeline.run, name="test-loop", daemon=True)
    runner.start()
    browser = Chromium(tmp_path / "profile", tmp_path / "chromium.log")
    try:
        page = browser.open(built.preview.url)
        # the whole-frame zone fills once the tracker has confirmed tracks; wait for ids in both lists
        browser.wait_for(page, f"{ROWS}.some(r => r[0] === 'everywhere' && r[2] === 'occupied' && r[4].includes('#'))"
                               f" && {TRACKS}.length > 0", timeout=30)
        rows, tracks = browser.eval(page, f"[{ROWS}, {TRACKS}]")
        with urllib.request.urlopen(built.preview.url + "stats.json", timeout=5) as r:
            stats = json.load(r)
    finally:
        browser.close()
        built.pipeline.stop()
        runner.join(20)
        built.segmenter.close()
    assert not runner.is_alive()
    assert {r[0] for r in rows} == {"everywhere", "corner"}, "one group of rows per configured zone"
    everywhere = {r[1]: r for r in rows if r[0] == "everywhere"}
    assert set(everywhere) <= set(CLASSES) and everywhere
    occupied = [r for r in everywhere.values() if r[2] == "occupied"]
    assert occupied and all(int(r[3]) >= 1 for r in occupied), "an occupied class shows its instance count"
    assert all(r[4] == "\u2013" or all(tok.startswith("#") and tok[1:].isdigit() for tok in r[4].split())
               for r in rows), "track ids are listed as #<id>"
    corner = [r for r in rows if r[0] == "corner"]
    assert [r[1:4] for r in corner] == [["disc", "clear", "0"]], "nothing stands in the 2x2 px corner zone"
    assert tracks and all(t.split()[0][1:].isdigit() and t.split()[1] in CLASSES for t in tracks)
    # the page shows what /stats.json serves: the same zones and classes
    served = {(z["name"], c) for z in stats["pipeline"]["zones"] for c in z["classes"]}
    assert {(r[0], r[1]) for r in rows if r[1] in CLASSES} <= served
    assert all(isinstance(t["id"], int) and t["class"] in CLASSES for t in stats["pipeline"]["tracks"])
