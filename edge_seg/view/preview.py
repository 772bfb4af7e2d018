"""Live preview over HTTP for headless devices: an MJPEG overlay stream, stats, metrics, health.

``PreviewServer`` runs a stdlib ``ThreadingHTTPServer`` in a daemon thread, bound to 127.0.0.1
unless told otherwise (reach it through an SSH tunnel). The pipeline's sink thread calls
``update(overlay_bgr, stats)`` for every frame; that only stores a reference and a timestamp.
JPEG encoding happens on the HTTP threads, lazily: only while someone asks (stream or snapshot),
at most ``max_fps`` times a second however many clients watch, and once per new frame.
The caller must not write into an array after handing it to ``update()``.

Routes: ``/`` page, ``/stream.mjpg``, ``/snapshot.jpg``, ``/stats.json``, ``/metrics``,
``/healthz``; anything else is 404.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import cv2
import numpy as np

from edge_seg.errors import EdgeSegError

if TYPE_CHECKING:
    from edge_seg.loop.metrics import Metrics

__all__ = ["PreviewServer"]

log = logging.getLogger(__name__)
BOUNDARY = "edgesegframe"


class PreviewServer:
    """Serve the latest overlay frame and the runtime's stats; see the module docstring."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, metrics: Metrics | None = None,
                 jpeg_quality: int = 80, max_fps: float = 10.0, stale_after_s: float = 5.0) -> None:
        if not 1 <= jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be in 1..100")
        if max_fps <= 0:
            raise ValueError("max_fps must be positive")
        self.host, self._port = host, port
        self.metrics = metrics
        self.jpeg_quality = int(jpeg_quality)
        self.min_interval = 1.0 / max_fps
        self.stale_after_s = stale_after_s
        # seq, monotonic time, frame (or a function drawing it), stats, (width, height)
        self._latest: tuple[int, float, np.ndarray | Callable[[], np.ndarray], dict, tuple[int, int]] | None = None
        self._seq = 0
        self._encode_lock = threading.Lock()
        self._jpeg: tuple[int, bytes] | None = None  # (seq, bytes) of the last encoded frame
        self._encoded_at = 0.0
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> PreviewServer:
        """Bind and serve in a daemon thread; returns self (so ``with PreviewServer().start()`` works)."""
        if self._httpd is not None:
            raise RuntimeError("preview server already started")
        self._stopping.clear()
        try:
            self._httpd = _Server((self.host, self._port), _Handler, self)
        except OSError as err:  # the port is taken, no permission, or HOST is not an address of this machine
            where = f"[{self.host}]:{self._port}" if ":" in self.host else f"{self.host}:{self._port}"
            hint = ("another program listens there: pick another port" if err.errno == errno.EADDRINUSE
                    else "HOST must be an address or name of this machine, e.g. 127.0.0.1, 0.0.0.0 or [::1]")
            raise EdgeSegError(f"preview: cannot listen on {where}: {err.strerror or err} ({hint})") from None
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="preview-http", daemon=True)
        self._thread.start()
        log.info("preview on %s", self.url)
        return self

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("preview server not started")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, end open streams and join every server thread."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout)
        httpd.join_handlers(timeout)
        self._httpd = self._thread = None

    def __enter__(self) -> PreviewServer:
        return self if self._httpd is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the producer side (pipeline sink thread) -----------------------------------------------

    def update(self, overlay_bgr: np.ndarray | Callable[[], np.ndarray], stats: dict | None = None,
               size: tuple[int, int] | None = None) -> None:
        """Offer the newest overlay (BGR uint8) and a small JSON-ready stats dict. Costs a tuple store.

        ``overlay_bgr`` may be a function that draws it, with its ``size`` (width, height): it is
        called only when a client wants a frame and the rate limit allows an encode (never for
        frames nobody looks at).
        """
        if size is None:
            if callable(overlay_bgr):
                raise ValueError("update() with a drawing function needs the image size")
            size = (int(overlay_bgr.shape[1]), int(overlay_bgr.shape[0]))
        self._seq += 1
        self._latest = (self._seq, time.monotonic(), overlay_bgr, stats or {}, size)

    # -- the consumer side (HTTP threads) -------------------------------------------------------

    def latest_jpeg(self) -> tuple[int, bytes] | None:
        """(seq, JPEG) of a recent frame, encoding the newest one if the rate limit allows; None before any."""
        latest = self._latest
        if latest is None:
            return None
        with self._encode_lock:
            cached = self._jpeg
            if cached is not None and (cached[0] == latest[0]
                                       or time.monotonic() - self._encoded_at < self.min_interval):
                return cached
            image = latest[2]() if callable(latest[2]) else latest[2]
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            if not ok:
                raise ValueError("could not encode the preview frame as JPEG")
            self._jpeg = (latest[0], buf.tobytes())
            self._encoded_at = time.monotonic()
            return self._jpeg

    def health(self) -> tuple[bool, str]:
        """(healthy, reason): healthy while a frame arrived within ``stale_after_s``."""
        latest = self._latest
        if latest is None:
            return False, "no frame received yet"
        age = time.monotonic() - latest[1]
        if age > self.stale_after_s:
            return False, f"last frame {age:.1f} s ago (limit {self.stale_after_s:g} s)"
        return True, "ok"

    def stats(self) -> dict:
        """What ``/stats.json`` serves: metrics snapshot, frame seq/age and the pipeline's stats."""
        latest = self._latest
        out = self.metrics.snapshot() if self.metrics is not None else {}
        out["frame"] = ({"seq": latest[0], "age_s": round(time.monotonic() - latest[1], 3),
                         "width": latest[4][0], "height": latest[4][1]}
                        if latest is not None else None)
        out["pipeline"] = latest[3] if latest is not None else {}
        return out

    def wait_stopping(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when the server is stopping."""
        return self._stopping.wait(seconds)


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that tracks its handler threads and open sockets so stop() can end them."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, preview: PreviewServer) -> None:
        self.preview = preview
        self._conns: set[socket.socket] = set()
        self._handlers: set[threading.Thread] = set()
        self._track = threading.Lock()
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        t = threading.Thread(target=self._handle, args=(request, client_address), name="preview-client", daemon=True)
        with self._track:
            self._conns.add(request)
            self._handlers.add(t)
        t.start()

    def _handle(self, request, client_address) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._track:
                self._conns.discard(request)
                self._handlers.discard(threading.current_thread())

    def close_connections(self) -> None:
        with self._track:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def join_handlers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._track:
            threads = list(self._handlers)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive threads
    timeout = 10  # a client that connects and says nothing cannot hold a thread for ever
    server_version = "edge-seg-preview"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        route = self.path.split("?", 1)[0]
        handler = {"/": self._page, "/index.html": self._page, "/stream.mjpg": self._stream,
                   "/snapshot.jpg": self._snapshot, "/stats.json": self._stats, "/metrics": self._metrics,
                   "/healthz": self._healthz}.get(route)
        try:
            if handler is None:
                self._send(404, b"not found: try / /stream.mjpg /snapshot.jpg /stats.json /metrics /healthz\n")
            else:
                handler()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            log.debug("preview client %s went away", self.client_address)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
        log.debug("preview %s " + format, self.client_address[0], *args)

    def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _page(self) -> None:
        self._send(200, PAGE.encode(), "text/html; charset=utf-8")

    def _snapshot(self) -> None:
        jpeg = self.server.preview.latest_jpeg()
        if jpeg is None:
            self._send(503, b"no frame yet: the pipeline has not produced an overlay\n")
        else:
            self._send(200, jpeg[1], "image/jpeg")

    def _stats(self) -> None:
        body = json.dumps(self.server.preview.stats(), default=_json_default).encode()
        self._send(200, body, "application/json")

    def _metrics(self) -> None:
        metrics = self.server.preview.metrics
        if metrics is None:
            self._send(404, b"metrics are not enabled on this preview server\n")
            return
        from prometheus_client import CONTENT_TYPE_LATEST

        self._send(200, metrics.exposition(), CONTENT_TYPE_LATEST)

    def _healthz(self) -> None:
        ok, reason = self.server.preview.health()
        self._send(200 if ok else 503, (reason + "\n").encode())

    def _stream(self) -> None:
        preview = self.server.preview
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        last = -1
        while True:
            jpeg = preview.latest_jpeg()
            if jpeg is not None and jpeg[0] != last:  # one part per new frame
                last = jpeg[0]
                head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg[1])}\r\n\r\n"
                self.wfile.write(head.encode() + jpeg[1] + b"\r\n")
                self.wfile.flush()
            if preview.wait_stopping(preview.min_interval):
                return


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edge_seg preview</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{margin:0;font:14px/1.4 system-ui,sans-serif;background:#111;color:#ddd;display:flex;flex-wrap:wrap}
 main{flex:1 1 520px;padding:12px} aside{flex:0 0 300px;padding:12px;background:#1b1b1b}
 img{max-width:100%;background:#000;display:block} h1{font-size:16px;margin:0 0 8px}
 table{border-collapse:collapse;width:100%} td{padding:2px 4px;border-bottom:1px solid #333}
 td:last-child{text-align:right;font-variant-numeric:tabular-nums} .bad{color:#f66} .good{color:#6c6}
 #err{color:#f66;min-height:1.4em}
</style></head><body>
<main><h1>edge_seg live preview</h1><img id="overlay" src="/stream.mjpg" alt="live overlay"></main>
<aside><h1>Stats</h1><div id="err"></div><table>
 <tr><td>FPS</td><td id="fps">&ndash;</td></tr>
 <tr><td>Source</td><td id="source">&ndash;</td></tr>
 <tr><td>Model</td><td id="model">&ndash;</td></tr>
 <tr><td>Frames processed</td><td id="processed">&ndash;</td></tr>
 <tr><td>Frames dropped</td><td id="dropped">&ndash;</td></tr>
 <tr><td>Drift (JS)</td><td id="drift">&ndash;</td></tr>
 <tr><td>Frame age (s)</td><td id="age">&ndash;</td></tr>
</table><h1 style="margin-top:12px">Latency p50 (ms)</h1><table id="stages"></table></aside>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const num = (v, d) => (typeof v === "number" && isFinite(v)) ? v.toFixed(d) : "\\u2013";
function pick(s, p, a, b) { return s[a] !== undefined && s[a] !== null ? s[a] : p[b]; }
async function poll() {
  try {
    const r = await fetch("/stats.json", {cache: "no-store"});
    const s = await r.json(); const p = s.pipeline || {};
    $("fps").textContent = num(pick(s, p, "fps", "fps"), 1);
    const up = pick(s, p, "source_up", "source_up");
    const src = $("source");
    src.textContent = up === null || up === undefined ? "unknown" : (up ? "up" : "down");
    src.className = up ? "good" : (up === 0 || up === false ? "bad" : "");
    const m = s.model || p.model;
    $("model").textContent = m ? m.name + " " + m.version : "\\u2013";
    $("processed").textContent = pick(s, p, "frames_processed", "completed") ?? "\\u2013";
    $("dropped").textContent = pick(s, p, "frames_dropped", "dropped") ?? "\\u2013";
    $("drift").textContent = num(s.drift_js, 3);
    $("age").textContent = s.frame ? num(s.frame.age_s, 1) : "no frame yet";
    const st = s.stages_p50_ms || p.p50_ms || {};
    const t = $("stages"); t.replaceChildren();
    for (const [k, v] of Object.entries(st)) {
      const row = t.insertRow(); row.insertCell().textContent = k; row.insertCell().textContent = num(v, 1);
    }
    $("err").textContent = "";
  } catch (e) { $("err").textContent = "stats unavailable: " + e; }
}
poll(); setInterval(poll, 1000);
</script></body></html>
"""
