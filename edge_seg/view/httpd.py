"""A small HTTP/1.0 server that a slow or hostile client cannot exhaust (the preview's transport).

- At most ``max_clients`` connections are served at once, each on its own thread; a connection
  beyond that is answered ``503`` with ``Retry-After`` from the accept thread (a non-blocking send
  into an empty socket buffer) and closed: it never gets a thread. A connection counts from accept
  until it closes, so an MJPEG stream holds its slot while it streams.
- The request line and headers must arrive whole within ``request_timeout_s`` however slowly they
  trickle (``408`` otherwise), and are at most ``MAX_HEAD`` bytes (``431``).
- Every write has ``write_timeout_s`` to complete in full (``sendall`` with a socket timeout bounds
  the whole call), so a client that stops reading is dropped instead of holding its thread.

Refused sockets linger (their FIN sent, the client's request drained) for a moment in the accept
thread's housekeeping before they are closed, so the client reads the 503 instead of a reset.
"""

from __future__ import annotations

import io
import logging
import select
import socket
import socketserver
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler
from typing import Any

__all__ = ["BoundedHTTPServer", "DeadlineRequestHandler", "MAX_HEAD", "raw_response"]

log = logging.getLogger(__name__)
MAX_HEAD = 8192  # request line + headers; a GET needs far less
LINGER_S = 0.5  # how long a refused socket waits for the client's request before it is closed
MAX_LINGERING = 256
WARN_EVERY_S = 60.0


def raw_response(code: int, reason: str, body: str, extra: str = "") -> bytes:
    """A complete HTTP/1.0 response that closes the connection, as bytes (for one ``send``)."""
    data = body.encode()
    return (f"HTTP/1.0 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(data)}\r\n{extra}Connection: close\r\n\r\n").encode() + data


class BoundedHTTPServer(socketserver.TCPServer):
    """TCPServer with a thread per connection up to ``max_clients``, a 503 beyond; see the module docstring."""

    allow_reuse_address = True
    request_queue_size = 128  # a burst of connections is accepted (and refused) rather than dropped as SYNs

    def __init__(self, address: tuple[str, int], handler: type[DeadlineRequestHandler], *, max_clients: int,
                 request_timeout_s: float, write_timeout_s: float) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        if request_timeout_s <= 0 or write_timeout_s <= 0:
            raise ValueError("request_timeout_s and write_timeout_s must be positive")
        self.max_clients = int(max_clients)
        self.request_timeout_s = float(request_timeout_s)
        self.write_timeout_s = float(write_timeout_s)
        self.refused = 0  # connections answered 503 (over the cap)
        self.app: Any = None  # what the handlers serve (the owner sets it)
        self._warned: tuple[float, int] | None = None  # (when, refused then): one warning a minute at most
        self._busy = raw_response(503, "Service Unavailable",
                                  f"busy: {self.max_clients} preview clients already connected, retry shortly\n",
                                  "Retry-After: 2\r\n")
        self._conns: set[socket.socket] = set()
        self._handlers: set[threading.Thread] = set()
        self._lingering: deque[tuple[float, socket.socket]] = deque()
        self._track = threading.Lock()
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)

    @property
    def active(self) -> int:
        """Connections holding a slot right now."""
        with self._track:
            return len(self._conns)

    def process_request(self, request, client_address) -> None:
        with self._track:
            admitted = len(self._conns) < self.max_clients
            if admitted:
                thread = threading.Thread(target=self._handle, args=(request, client_address),
                                          name="preview-client", daemon=True)
                self._conns.add(request)
                self._handlers.add(thread)
        if admitted:
            thread.start()
        else:
            self._refuse(request, client_address)

    def _refuse(self, sock: socket.socket, client_address) -> None:
        """Answer 503 without blocking the accept thread, then let the socket linger briefly."""
        self.refused += 1
        now = time.monotonic()
        if self._warned is None or now - self._warned[0] >= WARN_EVERY_S:
            since = self.refused - (self._warned[1] if self._warned else 0)
            log.warning("preview: refused %d connection(s) (latest from %s): %d clients already connected; raise "
                        "preview.max_clients if they are real viewers", since, client_address[0], self.max_clients)
            self._warned = (now, self.refused)
        try:
            sock.setblocking(False)
            sock.send(self._busy)  # a new socket's send buffer is empty: this does not block
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        self._drain(sock)
        if len(self._lingering) >= MAX_LINGERING:
            self._lingering.popleft()[1].close()
        self._lingering.append((time.monotonic() + LINGER_S, sock))

    @staticmethod
    def _drain(sock: socket.socket) -> bool:
        """Read what the client sent (closing with unread data would reset); True once it closed."""
        try:
            while chunk := sock.recv(MAX_HEAD):
                del chunk
            return True
        except BlockingIOError:
            return False
        except OSError:
            return True

    def service_actions(self) -> None:
        """Called by serve_forever between accepts (at least every poll interval): close lingering sockets."""
        now = time.monotonic()
        keep: deque[tuple[float, socket.socket]] = deque()
        while self._lingering:
            until, sock = self._lingering.popleft()
            if self._drain(sock) or now >= until:
                sock.close()
            else:
                keep.append((until, sock))
        self._lingering = keep

    def _handle(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - socketserver's handle_error: log and close this connection only
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self._track:
                self._conns.discard(request)
                self._handlers.discard(threading.current_thread())

    def handle_error(self, request, client_address) -> None:
        log.warning("preview: request from %s failed", client_address[0], exc_info=True)

    def close_connections(self) -> None:
        """Shut every open connection (their handler threads then end) and the lingering ones."""
        with self._track:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        while self._lingering:
            self._lingering.popleft()[1].close()

    def join_handlers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._track:
            threads = list(self._handlers)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))


class DeadlineRequestHandler(BaseHTTPRequestHandler):
    """One request per connection; the head must arrive within the server's ``request_timeout_s``."""

    server: BoundedHTTPServer
    protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive slots

    def handle(self) -> None:
        head = self._read_head()
        if head is None:
            return
        self.rfile.close()
        self.rfile = io.BytesIO(head)  # http.server parses the head from memory: no more socket reads
        self.connection.settimeout(self.server.write_timeout_s)  # sendall: a bound on each whole write
        self.handle_one_request()

    def client_gone(self) -> bool:
        """True once the client closed its end (it sends nothing after the request: readable means gone).

        A stream checks this between frames, so a closed client frees its slot even while no new frame comes.
        """
        try:
            if not select.select([self.connection], [], [], 0)[0]:
                return False
            return self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (OSError, ValueError):
            return True

    def _read_head(self) -> bytes | None:
        """Request line + headers read against one deadline; None when refused (408/431) or the client left."""
        sock = self.connection
        deadline = time.monotonic() + self.server.request_timeout_s
        head = bytearray()
        while b"\r\n\r\n" not in head and b"\n\n" not in head:
            left = deadline - time.monotonic()
            if left <= 0:
                return self._give_up(408, "Request Timeout",
                                     f"request not complete within {self.server.request_timeout_s:g} s\n")
            sock.settimeout(left)
            try:
                chunk = sock.recv(MAX_HEAD)
            except TimeoutError:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            head += chunk
            if len(head) > MAX_HEAD:
                return self._give_up(431, "Request Header Fields Too Large", f"request head over {MAX_HEAD} bytes\n")
        return bytes(head)

    def _give_up(self, code: int, reason: str, body: str) -> None:
        log.debug("preview: %s from %s", code, self.client_address[0])
        try:
            self.connection.settimeout(1.0)
            self.connection.sendall(raw_response(code, reason, body))
        except OSError:
            pass
        return None
