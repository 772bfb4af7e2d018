"""edge_seg.view.preview: the HTTP routes with urllib, and the page driven in a real headless Chromium.

The Chromium test speaks the DevTools protocol over ``--remote-debugging-pipe`` (NUL-delimited JSON
on file descriptors 3 and 4), so it needs no websocket client: it loads the page, waits for the
stats poll to fill in the numbers, and takes two screenshots of the ``<img>`` a moment apart to see
the MJPEG overlay change.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from chromium import CHROMIUM, Chromium
from preview_helpers import get, make_frame, preview_threads
from prometheus_client.parser import text_string_to_metric_families

from edge_seg.loop.metrics import Metrics
from edge_seg.view.preview import BOUNDARY, PreviewServer


class Producer:
    """Pushes frames into the server (and metrics) from its own thread, like the pipeline's sink."""

    def __init__(self, server: PreviewServer, metrics: Metrics | None, fps: float = 30.0) -> None:
        self.server, self.metrics, self.period = server, metrics, 1.0 / fps
        self.count = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="test-producer", daemon=True)

    def __enter__(self) -> Producer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.metrics is not None:
                self.metrics.observe_stages({"preprocess": 1.5, "infer": 12.0 + self.count % 3, "postprocess": 2.0},
                                            end_to_end_ms=20.0 + self.count % 3)
                self.metrics.frame_processed()
                self.metrics.set_fps(1.0 / self.period)
            self.server.update(make_frame(self.count), {"seq": self.count})
            self.count += 1
            self._stop.wait(self.period)


@pytest.fixture
def metrics() -> Metrics:
    m = Metrics(classes=["background", "car"], baseline={"background": 0.8, "car": 0.2})
    m.set_model("demo", "1.0.0", "0" * 64)
    m.set_source_up(True)
    return m


@pytest.fixture
def server(metrics):
    s = PreviewServer(metrics=metrics).start()
    yield s
    s.stop()
    assert preview_threads() == [], "stop() leaves no server thread behind"


def test_binds_loopback_by_default(server):
    assert server.host == "127.0.0.1"
    assert server.url == f"http://127.0.0.1:{server.port}/"


def test_healthz_and_snapshot_are_503_before_the_first_frame_then_200(server):
    code, _, body = get(server.url + "healthz")
    assert (code, body) == (503, b"no frame received yet\n")
    code, _, body = get(server.url + "snapshot.jpg")
    assert code == 503 and b"no frame yet" in body
    server.update(make_frame(0), {})
    assert get(server.url + "healthz")[:3:2] == (200, b"ok\n")


def test_healthz_goes_stale_when_frames_stop():
    with PreviewServer(stale_after_s=0.2) as s:
        s.update(make_frame(0), {})
        assert get(s.url + "healthz")[0] == 200
        time.sleep(0.3)
        code, _, body = get(s.url + "healthz")
        assert code == 503 and b"ago" in body


def test_snapshot_decodes_as_the_latest_frame(server):
    frame = make_frame(5)
    server.update(frame, {})
    code, ctype, body = get(server.url + "snapshot.jpg")
    assert (code, ctype) == (200, "image/jpeg")
    decoded = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == frame.shape
    assert np.abs(decoded.astype(int) - frame).mean() < 6  # JPEG at quality 80


def test_a_drawing_function_runs_only_for_the_frames_a_client_takes(server):
    """``update`` may get a function that draws the overlay: 50 updates, one request, one drawing."""
    drawn = []

    def drawer(i):
        def draw():
            drawn.append(i)
            return make_frame(i)
        return draw

    for i in range(50):
        server.update(drawer(i), {}, size=(320, 240))
    assert drawn == []  # nothing drawn while no client asked
    code, _, body = get(server.url + "snapshot.jpg")
    assert code == 200 and drawn == [49]  # only the newest, once
    decoded = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert np.abs(decoded.astype(int) - make_frame(49)).mean() < 6
    assert get(server.url + "snapshot.jpg")[0] == 200 and drawn == [49]  # cached: not drawn again


def test_metrics_route_serves_parseable_prometheus_text(server, metrics):
    metrics.frames_dropped(4)
    code, ctype, body = get(server.url + "metrics")
    assert code == 200 and ctype.startswith("text/plain")
    values = {(s.name, s.labels.get("where")): s.value for f in text_string_to_metric_families(body.decode())
              for s in f.samples}
    assert values["edge_seg_frames_dropped_total", "capture"] == 4
    assert values["edge_seg_frames_dropped_total", "sink"] == 0
    assert values["edge_seg_model_info", None] == 1


def test_metrics_route_is_404_without_metrics():
    with PreviewServer() as s:
        assert get(s.url + "metrics")[0] == 404


def test_stats_json_merges_metrics_and_pipeline_stats(server, metrics):
    metrics.observe_stages({"infer": 10.0})
    server.update(make_frame(1), {"seq": 1, "note": np.float32(0.5)})
    code, ctype, body = get(server.url + "stats.json")
    assert (code, ctype) == (200, "application/json")
    stats = json.loads(body)
    assert stats["model"] == {"name": "demo", "version": "1.0.0", "sha256": "0" * 64}
    assert stats["stages_p50_ms"]["infer"] == 10.0
    assert stats["frame"]["seq"] == 1 and stats["frame"]["width"] == 320
    assert stats["pipeline"] == {"seq": 1, "note": 0.5}


@pytest.mark.parametrize("path", ["nope", "stream.mjpg/x", "metrics.txt"])
def test_unknown_paths_are_404(server, path):
    assert get(server.url + path)[0] == 404


def read_mjpeg_parts(url: str, want: int, timeout: float = 5.0) -> list[bytes]:
    """JPEG payloads of the first ``want`` parts of a multipart/x-mixed-replace stream."""
    parts: list[bytes] = []
    with urllib.request.urlopen(url, timeout=timeout) as r:
        assert r.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
        while len(parts) < want:
            assert r.readline() == f"--{BOUNDARY}\r\n".encode()
            headers = {}
            while (line := r.readline()) != b"\r\n":
                key, _, val = line.decode().partition(":")
                headers[key.strip().lower()] = val.strip()
            assert headers["content-type"] == "image/jpeg"
            parts.append(r.read(int(headers["content-length"])))
            assert r.readline() == b"\r\n"
    return parts


def test_mjpeg_stream_yields_distinct_decodable_parts(server, metrics):
    with Producer(server, metrics):
        parts = read_mjpeg_parts(server.url + "stream.mjpg", want=3)
    assert len(set(parts)) == 3, "one part per new frame, no repeats"
    for jpeg in parts:
        assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (240, 320, 3)


def test_stop_ends_open_streams_without_hanging(metrics):
    s = PreviewServer(metrics=metrics).start()
    s.update(make_frame(0), {})
    stream = urllib.request.urlopen(s.url + "stream.mjpg", timeout=5)
    assert stream.readline().startswith(b"--")
    t0 = time.monotonic()
    s.stop()
    assert time.monotonic() - t0 < 2.0
    assert preview_threads() == []
    stream.read()  # the server closed the connection: read ends instead of blocking
    stream.close()


def test_update_is_cheap_and_encoding_is_lazy_rate_limited_and_off_the_caller_thread(monkeypatch):
    encoder_threads: list[str] = []
    real_imencode = cv2.imencode

    def counting_imencode(*args, **kwargs):
        encoder_threads.append(threading.current_thread().name)
        return real_imencode(*args, **kwargs)

    monkeypatch.setattr(cv2, "imencode", counting_imencode)
    frame = make_frame(0)
    with PreviewServer(max_fps=5) as s:
        for _ in range(20000):
            s.update(frame, {})
        assert encoder_threads == [], "nothing is encoded while nobody watches"
        with Producer(s, None, fps=50):
            t0 = time.monotonic()
            while time.monotonic() - t0 < 1.0:
                assert get(s.url + "snapshot.jpg")[0] == 200
    assert 1 <= len(encoder_threads) <= 5 + 2, f"{len(encoder_threads)} encodes in 1 s at max_fps=5"
    assert "test-producer" not in encoder_threads and "MainThread" not in encoder_threads


# -- the page in a real browser ---------------------------------------------------------------------


@pytest.mark.skipif(not (os.path.exists(CHROMIUM) and shutil.which("bash")),
                    reason="needs /usr/bin/chromium (Debian package chromium; `make install` installs it)")
def test_page_in_headless_chromium_shows_a_live_image_and_stats(server, metrics, tmp_path):
    check_page_in_chromium(server, metrics, tmp_path, server.url)


@pytest.mark.skipif(not (os.path.exists(CHROMIUM) and shutil.which("bash")),
                    reason="needs /usr/bin/chromium (Debian package chromium; `make install` installs it)")
def test_page_behind_a_token_passes_it_on_to_the_stream_and_the_stats(metrics, tmp_path):
    token = "page-token-0123456789abcdef"
    with PreviewServer(metrics=metrics, token=token) as guarded:
        assert get(guarded.url + "stats.json")[0] == 401
        check_page_in_chromium(guarded, metrics, tmp_path, guarded.url + f"?token={token}")


def check_page_in_chromium(server: PreviewServer, metrics: Metrics, tmp_path: Path, url: str) -> None:
    browser = Chromium(tmp_path / "profile", tmp_path / "chromium.log")
    try:
        with Producer(server, metrics):
            page = browser.open(url)
            fps = browser.wait_for(page, "/^\\d+\\.\\d$/.test(document.getElementById('fps').textContent)"
                                   " && document.getElementById('fps').textContent")
            assert float(fps) == pytest.approx(30.0, abs=0.1)
            assert browser.eval(page, "document.getElementById('model').textContent") == "demo 1.0.0"
            assert browser.eval(page, "document.getElementById('source').textContent") == "up"
            processed = int(browser.eval(page, "document.getElementById('processed').textContent"))
            assert processed > 0
            stages = browser.eval(page, "[...document.querySelectorAll('#stages td')].map(td => td.textContent)")
            assert "infer" in stages and "total" in stages
            browser.wait_for(page, "document.getElementById('overlay').naturalWidth === 320")
            rect = browser.eval(page, "(() => { const r = document.getElementById('overlay')"
                                      ".getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width,"
                                      " height: r.height}; })()")
            assert rect["width"] == 320 and rect["height"] == 240
            first = browser.screenshot(page, rect)
            time.sleep(0.6)
            second = browser.screenshot(page, rect)
            time.sleep(1.2)  # let the stats poll run again: the counter must move
            processed_later = int(browser.eval(page, "document.getElementById('processed').textContent"))
    finally:
        browser.close()
    assert first.shape == second.shape == (240, 320, 3)
    blue, green, red = first.reshape(-1, 3).mean(axis=0)
    assert blue > red + 50, "the screenshot shows the pushed frame (blue background), not a blank box"
    assert np.abs(first.astype(int) - second).mean() > 1.0, "the overlay image updates in the page"
    assert processed_later > processed, "the stats poll keeps the numbers current"
