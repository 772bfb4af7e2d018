"""Issue 14 item 9, end to end: 150 slow clients against the preview of a real running loop.

A browser-like client watches the stream throughout, so the loop draws preview frames in both phases.
Then 4 clients ask for the stream and never read it (a 4 KiB receive window), and 146 connect and
trickle one byte a second. The server's threads stay within the cap, the clients beyond it get a 503
within a second, a normal client gets /snapshot.jpg within a second of a slot freeing, the frame
producer (the preview sink in the loop) never blocks, and the loop keeps its frame rate.
"""

from __future__ import annotations

import select
import socket
import threading
import time
import urllib.error
import urllib.request

from preview_helpers import preview_threads

from edge_seg.config import parse_config
from edge_seg.loop.runner import build

CAP = 8
FPS = 20


class Watcher:
    """Reads /stream.mjpg continuously (a person with the page open)."""

    def __init__(self, url: str) -> None:
        self.url, self.bytes = url, 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="test-watcher", daemon=True)

    def _run(self) -> None:
        with urllib.request.urlopen(self.url, timeout=10) as r:
            while not self._stop.is_set():
                chunk = r.read1(65536)
                if not chunk:
                    return
                self.bytes += len(chunk)

    def __enter__(self) -> Watcher:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join(10)


def completed_rate(built, seconds: float) -> float:
    stats = built.pipeline.stats
    c0, t0 = stats.completed, time.monotonic()
    time.sleep(seconds)
    return (stats.completed - c0) / (time.monotonic() - t0)


def snapshot_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "snapshot.jpg", timeout=2) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def test_150_slow_clients_neither_take_threads_nor_slow_the_loop(tiny_models):
    config = parse_config({"model": {"path": str(tiny_models["colour_probs_uint8"])},
                           "source": {"uri": f"synthetic://?width=320&height=180&fps={FPS}"},
                           "preview": {"enabled": True, "port": 0}})
    built = build(config)
    loop = threading.Thread(target=built.pipeline.run, name="test-loop")
    loop.start()
    preview = built.preview
    socks: list[socket.socket] = []
    stop = threading.Event()
    peak = [0]

    def watch_threads() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], len(preview_threads()))
            time.sleep(0.01)

    def trickle() -> None:
        while not stop.wait(1.0):
            for s in list(socks[4:]):
                try:
                    s.send(b"X")
                except OSError:
                    pass

    try:
        deadline = time.monotonic() + 30
        while built.pipeline.stats.completed < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        with Watcher(preview.url + "stream.mjpg") as watcher:
            time.sleep(1.0)
            before = completed_rate(built, 4.0)
            monitors = [threading.Thread(target=watch_threads), threading.Thread(target=trickle)]
            for t in monitors:
                t.start()
            connected_at: dict[socket.socket, float] = {}
            answered: dict[socket.socket, tuple[float, bytes]] = {}  # time from connect to the server's answer

            def collect_answers() -> None:
                until = time.monotonic() + 3.0
                while time.monotonic() < until:
                    waiting = [s for s in list(socks[4:]) if s not in answered]
                    if not waiting:
                        time.sleep(0.02)
                        continue
                    for s in select.select(waiting, [], [], 0.02)[0]:
                        answered[s] = (time.monotonic() - connected_at[s], s.recv(200))

            collector = threading.Thread(target=collect_answers)
            collector.start()
            c0, t0 = built.pipeline.stats.completed, time.monotonic()
            for i in range(150):
                s = socket.socket()
                if i < 4:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.connect(("127.0.0.1", preview.port))
                connected_at[s] = time.monotonic()
                s.send(b"GET /stream.mjpg HTTP/1.0\r\n\r\n" if i < 4 else b"G")
                socks.append(s)
            phase_start = time.monotonic()
            collector.join()
            # slots free when the admitted tricklers hit the 5 s request deadline: the server answers them
            admitted = [s for s in socks[4:] if s not in answered]
            t_free = t_ok = None
            while time.monotonic() - phase_start < 9.0:
                if t_free is None and admitted and select.select(admitted, [], [], 0)[0]:
                    t_free = time.monotonic()
                if t_free is not None and t_ok is None and snapshot_status(preview.url) == 200:
                    t_ok = time.monotonic()
                time.sleep(0.05)
            during = (built.pipeline.stats.completed - c0) / (time.monotonic() - t0)
            sink_ms = built.pipeline.stats.samples("preview")  # the producer side: PreviewSink per frame
            stop.set()
            for t in monitors:
                t.join()
            streamed = watcher.bytes
    finally:
        stop.set()
        for s in socks:
            s.close()
        built.pipeline.stop()
        loop.join(timeout=20)
        built.segmenter.close()
    refused = [(took, reply) for took, reply in answered.values() if reply.startswith(b"HTTP/1.0 503 ")]
    assert len(refused) >= 150 - CAP - 1, f"only {len(refused)} of the clients over the cap got a 503"
    slowest = sorted(took for took, _ in refused)[-5:]
    assert slowest[-1] < 1.0, f"a 503 took a second or more: slowest {slowest}"
    assert all(b"Retry-After: " in reply for _, reply in refused)
    assert peak[0] <= CAP + 2, f"{peak[0]} preview threads with 150 slow clients (cap {CAP})"
    assert t_free is not None and t_ok is not None and t_ok - t_free < 1.0, (t_free, t_ok)
    assert streamed > 0, "the watcher kept getting frames"
    print(f"loop FPS without slow clients {before:.2f}, with 150 slow clients {during:.2f}; preview sink "
          f"max {sink_ms.max():.2f} ms over {len(sink_ms)} frames; peak preview threads {peak[0]}")
    assert len(sink_ms) > 50 and sink_ms.max() < 100, "the preview sink (frame producer) never blocks"
    assert during >= 0.9 * before, f"FPS fell from {before:.2f} to {during:.2f} with 150 slow clients"
