"""Live preview over HTTP for headless devices: an MJPEG overlay stream, stats, metrics, health.

``PreviewServer`` runs a bounded stdlib HTTP server (``edge_seg.view.httpd``) in a daemon thread, bound to 127.0.0.1
unless told otherwise (reach it through an SSH tunnel). The pipeline's sink thread calls
``update(overlay_bgr, stats)`` for every frame; that only stores a reference and a timestamp.
JPEG encoding happens on the HTTP threads, lazily: only while someone asks (stream or snapshot),
at most ``max_fps`` times a second however many clients watch, and once per new frame.
The caller must not write into an array after handing it to ``update()``.

Routes: ``/`` page, ``/stream.mjpg``, ``/snapshot.jpg``, ``/stats.json``, ``/metrics``,
``/healthz``; anything else is 404. Several cameras (``update(..., camera=NAME)``): ``/`` is a grid
with one stream per camera, ``/stream.mjpg?camera=NAME`` and ``/snapshot.jpg?camera=NAME`` pick one.

Bounds (``edge_seg.view.httpd``): at most ``max_clients`` connections at once (a stream holds one
while it streams; beyond that a quick 503, no thread), the request head within
``request_timeout_s``, each write within ``write_timeout_s``. With a ``token`` every route but
``/healthz`` needs ``Authorization: Bearer <token>`` (the page and the stream also take
``?token=``); a host off loopback needs a token or ``allow_open=True``.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

import cv2
import numpy as np

from edge_seg.errors import EdgeSegError
from edge_seg.view.access import TokenGate, is_loopback, redact
from edge_seg.view.httpd import BoundedHTTPServer, DeadlineRequestHandler
from edge_seg.view.page import PAGE, grid_page

if TYPE_CHECKING:
    from edge_seg.loop.metrics import Metrics

__all__ = ["PreviewServer"]

log = logging.getLogger(__name__)
BOUNDARY = "edgesegframe"


class PreviewServer:
    """Serve the latest overlay frame and the runtime's stats; see the module docstring."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, metrics: Metrics | None = None,
                 jpeg_quality: int = 80, max_fps: float = 10.0, stale_after_s: float = 5.0, *,
                 max_clients: int = 8, request_timeout_s: float = 5.0, write_timeout_s: float = 5.0,
                 token: str | None = None, allow_open: bool = False, cameras: Sequence[str] = ()) -> None:
        if not 1 <= jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be in 1..100")
        if max_fps <= 0:
            raise ValueError("max_fps must be positive")
        if max_clients < 1 or request_timeout_s <= 0 or write_timeout_s <= 0:
            raise ValueError("max_clients must be at least 1, request_timeout_s and write_timeout_s positive")
        self.host, self._port = host, port
        self.metrics = metrics
        self.jpeg_quality = int(jpeg_quality)
        self.min_interval = 1.0 / max_fps
        self.stale_after_s = stale_after_s
        self.max_clients, self.request_timeout_s, self.write_timeout_s = max_clients, request_timeout_s, write_timeout_s
        self.gate = TokenGate(token)
        self.allow_open = allow_open
        # one per camera (None: the only one): the named ones made now, so HTTP threads never see the dict grow
        # while they go through it, and a camera that never sent a frame shows (and fails /healthz) as such
        self._views: dict[str | None, _View] = {name: _View() for name in cameras}
        self._stopping = threading.Event()
        self._httpd: BoundedHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> PreviewServer:
        """Bind and serve in a daemon thread; returns self (so ``with PreviewServer().start()`` works)."""
        if self._httpd is not None:
            raise RuntimeError("preview server already started")
        where = f"[{self.host}]:{self._port}" if ":" in self.host else f"{self.host}:{self._port}"
        self._stopping.clear()
        try:
            self._httpd = BoundedHTTPServer((self.host, self._port), _Handler, max_clients=self.max_clients,
                                            request_timeout_s=self.request_timeout_s,
                                            write_timeout_s=self.write_timeout_s)
            self._httpd.app = self
        except OSError as err:  # the port is taken, no permission, or HOST is not an address of this machine
            hint = ("another program listens there: pick another port" if err.errno == errno.EADDRINUSE
                    else "HOST must be an address or name of this machine, e.g. 127.0.0.1, 0.0.0.0 or [::1]")
            raise EdgeSegError(f"preview: cannot listen on {where}: {err.strerror or err} ({hint})") from None
        if not (is_loopback(self.host) or self.gate.enabled or self.allow_open):  # checked after a bind that
            self._httpd.server_close()  # says what is wrong with HOST itself; nothing was served
            self._httpd = None
            raise EdgeSegError(f"preview: {where} is reachable from other machines and anyone there could watch the "
                               "camera: set preview.token (or preview.token_file), or preview.allow_open: true "
                               "to serve it without one")
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="preview-http", daemon=True)
        self._thread.start()
        log.info("preview on %s (at most %d clients%s)", self.url, self.max_clients,
                 ", bearer token required" if self.gate.enabled else "")
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

    @property
    def active_clients(self) -> int:
        """Connections holding a client slot now (0 when not started)."""
        return self._httpd.active if self._httpd is not None else 0

    @property
    def refused_clients(self) -> int:
        """Connections answered 503 because ``max_clients`` were already connected."""
        return self._httpd.refused if self._httpd is not None else 0

    def __enter__(self) -> PreviewServer:
        return self if self._httpd is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the producer side (pipeline sink thread) -----------------------------------------------

    def update(self, overlay_bgr: np.ndarray | Callable[[], np.ndarray], stats: dict | None = None,
               size: tuple[int, int] | None = None, camera: str | None = None) -> None:
        """Offer the newest overlay (BGR uint8) and a small JSON-ready stats dict. Costs a tuple store.

        ``overlay_bgr`` may be a function that draws it, with its ``size`` (width, height): it is
        called only when a client wants a frame and the rate limit allows an encode (never for
        frames nobody looks at). ``camera``: whose view it is (several cameras; None: the only one).
        """
        if size is None:
            if callable(overlay_bgr):
                raise ValueError("update() with a drawing function needs the image size")
            size = (int(overlay_bgr.shape[1]), int(overlay_bgr.shape[0]))
        view = self._views.get(camera) or self._views.setdefault(camera, _View())
        view._seq += 1
        view._latest = (view._seq, time.monotonic(), overlay_bgr, stats or {}, size)

    @property
    def cameras(self) -> list[str]:
        """The named cameras (several cameras: the page is a grid): those given, then any that came later."""
        return [name for name in self._views if name is not None]

    # -- the consumer side (HTTP threads) -------------------------------------------------------

    def latest_jpeg(self, camera: str | None = None) -> tuple[int, bytes] | None:
        """(seq, JPEG) of a recent frame of ``camera`` (None: the only or first one), encoding the newest one if
        the rate limit allows; None before any (or for an unknown camera)."""
        view = self._view(camera)
        return None if view is None else view.jpeg(self.jpeg_quality, self.min_interval)

    def _view(self, camera: str | None) -> _View | None:
        if camera is None:
            return self._views.get(None) or next(iter(self._views.values()), None)
        return self._views.get(camera)

    def health(self) -> tuple[bool, str]:
        """(healthy, reason): healthy while a frame of every camera arrived within ``stale_after_s``."""
        if not self._views:
            return False, "no frame received yet"
        for name, view in self._views.items():
            latest = view._latest
            who = f"camera {name}: " if name is not None else ""
            if latest is None:
                return False, f"{who}no frame received yet"
            age = time.monotonic() - latest[1]
            if age > self.stale_after_s:
                return False, f"{who}last frame {age:.1f} s ago (limit {self.stale_after_s:g} s)"
        return True, "ok"

    def stats(self) -> dict:
        """What ``/stats.json`` serves: metrics snapshot, frame seq/age, the pipeline's stats, this server's clients;
        with several cameras also ``views``: each camera's frame and pipeline stats."""
        out = self.metrics.snapshot() if self.metrics is not None else {}
        view = self._view(None)
        out.update(view.describe() if view is not None else {"frame": None, "pipeline": {}})
        if self.cameras:
            out["views"] = {name: self._views[name].describe() for name in self.cameras}
        out["preview"] = {"clients": self.active_clients, "max_clients": self.max_clients,
                          "refused": self.refused_clients}
        return out

    def wait_stopping(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when the server is stopping."""
        return self._stopping.wait(seconds)


class _View:
    """The newest frame of one camera and its JPEG, encoded lazily (see ``PreviewServer.latest_jpeg``)."""

    def __init__(self) -> None:
        # seq, monotonic time, frame (or a function drawing it), stats, (width, height)
        self._latest: tuple[int, float, np.ndarray | Callable[[], np.ndarray], dict, tuple[int, int]] | None = None
        self._seq = 0
        self._encode_lock = threading.Lock()
        self._jpeg: tuple[int, bytes] | None = None  # (seq, bytes) of the last encoded frame
        self._encoded_at = 0.0

    def jpeg(self, quality: int, min_interval: float) -> tuple[int, bytes] | None:
        latest = self._latest
        if latest is None:
            return None
        with self._encode_lock:
            cached = self._jpeg
            if cached is not None and (cached[0] == latest[0] or time.monotonic() - self._encoded_at < min_interval):
                return cached
            image = latest[2]() if callable(latest[2]) else latest[2]
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise ValueError("could not encode the preview frame as JPEG")
            self._jpeg = (latest[0], buf.tobytes())
            self._encoded_at = time.monotonic()
            return self._jpeg

    def describe(self) -> dict:
        latest = self._latest
        frame = ({"seq": latest[0], "age_s": round(time.monotonic() - latest[1], 3), "width": latest[4][0],
                  "height": latest[4][1]} if latest is not None else None)
        return {"frame": frame, "pipeline": latest[3] if latest is not None else {}}


class _Handler(DeadlineRequestHandler):
    server_version = "edge-seg-preview"
    QUERY_TOKEN_ROUTES = frozenset({"/", "/index.html", "/stream.mjpg"})  # what a browser loads without headers

    @property
    def preview(self) -> PreviewServer:
        return self.server.app

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        route, _, query = self.path.partition("?")
        if route != "/healthz" and not self.preview.gate.allows(self.headers.get("Authorization"), query,
                                                                 route in self.QUERY_TOKEN_ROUTES):
            self._send(401, b"unauthorized: send Authorization: Bearer <preview.token>\n",
                       extra={"WWW-Authenticate": "Bearer"})
            return
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
        log.debug("preview %s %s", self.client_address[0], redact(format % args))

    def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
              extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")  # a ?token= URL is not passed on
        self.end_headers()
        self.wfile.write(body)

    def _camera(self) -> str | None:
        """The ``?camera=NAME`` of the request (None: the only or first camera)."""
        values = parse_qs(self.path.partition("?")[2]).get("camera")
        return values[0] if values else None

    def _page(self) -> None:
        self._send(200, (grid_page(self.preview.cameras) if self.preview.cameras else PAGE).encode(),
                   "text/html; charset=utf-8")

    def _snapshot(self) -> None:
        jpeg = self.preview.latest_jpeg(self._camera())
        if jpeg is None:
            self._send(503, b"no frame yet: the pipeline has not produced an overlay\n")
        else:
            self._send(200, jpeg[1], "image/jpeg")

    def _stats(self) -> None:
        body = json.dumps(self.preview.stats(), default=_json_default).encode()
        self._send(200, body, "application/json")

    def _metrics(self) -> None:
        metrics = self.preview.metrics
        if metrics is None:
            self._send(404, b"metrics are not enabled on this preview server\n")
            return
        from prometheus_client import CONTENT_TYPE_LATEST

        self._send(200, metrics.exposition(), CONTENT_TYPE_LATEST)

    def _healthz(self) -> None:
        ok, reason = self.preview.health()
        self._send(200 if ok else 503, (reason + "\n").encode())

    def _stream(self) -> None:
        preview = self.preview
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        last, camera = -1, self._camera()
        while True:
            jpeg = preview.latest_jpeg(camera)
            if jpeg is not None and jpeg[0] != last:  # one part per new frame
                last = jpeg[0]
                head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg[1])}\r\n\r\n"
                self.wfile.write(head.encode() + jpeg[1] + b"\r\n")
                self.wfile.flush()
            if preview.wait_stopping(preview.min_interval) or self.client_gone():
                return


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
