"""edge_seg.view.preview under abuse, with real sockets: a cap on concurrent clients (503 beyond it,
no thread), a whole-request deadline a trickle cannot stretch, a write deadline for stream clients
that do not read, and the optional bearer token."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
from preview_helpers import get, make_frame, preview_threads

from edge_seg.errors import EdgeSegError
from edge_seg.view.preview import PreviewServer

CAP = 8  # preview.max_clients default


def connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connect, so the window stays small
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    return s


def read_reply(s: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes (or ``timeout``), b'' when nothing came."""
    s.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def closed_by_server(s: socket.socket, within: float) -> float | None:
    """Seconds until the server closed ``s`` (reading and discarding whatever it sent), None if it did not."""
    t0 = time.monotonic()
    s.settimeout(0.2)
    while time.monotonic() - t0 < within:
        try:
            if not s.recv(65536):
                return time.monotonic() - t0
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - t0
    return None


@pytest.fixture
def server():
    s = PreviewServer().start()
    s.update(make_frame(0), {})
    yield s
    s.stop()
    assert preview_threads() == []


def test_connections_over_the_cap_get_a_quick_503_and_no_thread(server, caplog):
    import json
    import logging

    held = [connect(server.port) for _ in range(CAP)]  # connected, silent: each holds a slot
    try:
        time.sleep(0.2)
        extra = []
        for _ in range(20):
            t0 = time.monotonic()
            s = connect(server.port)
            reply = read_reply(s, 2.0)
            extra.append((time.monotonic() - t0, reply))
            s.close()
        assert len(preview_threads()) <= CAP + 2, preview_threads()
    finally:
        for s in held:
            s.close()
    for took, reply in extra:
        assert reply.startswith(b"HTTP/1.0 503 "), reply[:80]
        assert b"\r\nRetry-After: " in reply
        assert took < 1.0, f"503 took {took:.2f} s"
    stats = json.loads(get(server.url + "stats.json")[2])
    assert (stats["preview"]["max_clients"], stats["preview"]["refused"]) == (CAP, 20)
    assert 1 <= stats["preview"]["clients"] <= CAP  # this request, and held ones whose close is still being seen
    refusals = [r for r in caplog.records if r.levelno == logging.WARNING and "refused" in r.getMessage()]
    assert len(refusals) == 1, "the first refusal is a warning, the next ones within a minute are not"


def test_an_mjpeg_stream_holds_a_slot_while_it_streams(server):
    streams = []
    for _ in range(CAP):
        s = connect(server.port)
        s.sendall(b"GET /stream.mjpg HTTP/1.0\r\n\r\n")
        assert s.recv(15) == b"HTTP/1.0 200 OK"
        streams.append(s)
    try:
        assert get(server.url + "snapshot.jpg")[0] == 503
        streams.pop().close()
        t0 = time.monotonic()
        while (code := get(server.url + "snapshot.jpg")[0]) != 200 and time.monotonic() - t0 < 1.0:
            time.sleep(0.05)
        assert code == 200, "a slot frees within a second of a stream closing"
    finally:
        for s in streams:
            s.close()


def test_a_trickled_request_is_cut_at_the_whole_request_deadline(server):
    """One byte every 0.5 s never trips a per-read timeout; the 5 s whole-request deadline cuts it."""
    s = connect(server.port)
    t0 = time.monotonic()
    request = b"GET /snapshot.jpg HTTP/1.0\r\nX-Padding: " + b"a" * 100
    closed_at = None
    try:
        for byte in request:
            s.sendall(bytes([byte]))
            time.sleep(0.5)
            if time.monotonic() - t0 > 9:
                break
    except (BrokenPipeError, ConnectionResetError):
        closed_at = time.monotonic() - t0
    if closed_at is None:
        left = closed_by_server(s, 0.5)
        closed_at = None if left is None else time.monotonic() - t0
    s.close()
    assert closed_at is not None and closed_at < 7.0, f"still open after {time.monotonic() - t0:.1f} s"


def test_request_timeout_is_configurable_and_answers_408():
    with PreviewServer(request_timeout_s=0.5) as srv:
        s = connect(srv.port)
        s.sendall(b"GET /snap")
        t0 = time.monotonic()
        reply = read_reply(s, 3.0)
        s.close()
    assert reply.startswith(b"HTTP/1.0 408 ")
    assert 0.3 < time.monotonic() - t0 < 1.5


def test_a_stream_client_that_does_not_read_is_dropped_and_never_blocks_update():
    with PreviewServer(max_fps=50, write_timeout_s=1.0) as srv:
        rng = np.random.default_rng(0)
        noise = [rng.integers(0, 255, (480, 640, 3), np.uint8) for _ in range(4)]  # ~300 KB JPEGs
        s = connect(srv.port, rcvbuf=4096)
        s.sendall(b"GET /stream.mjpg HTTP/1.0\r\n\r\n")
        worst = 0.0
        t0 = time.monotonic()
        while srv.active_clients and time.monotonic() - t0 < 10:
            u0 = time.perf_counter()
            srv.update(noise[int(t0 * 100) % 4].copy(), {})
            worst = max(worst, time.perf_counter() - u0)
            time.sleep(0.02)
        took = time.monotonic() - t0
        s.close()
    assert took < 6.0, f"a client that does not read still held its slot after {took:.1f} s"
    assert worst < 0.05, f"update() blocked for {worst * 1e3:.0f} ms"


# -- bearer token -------------------------------------------------------------------------------------------


TOKEN = "s3cret-token-0123456789"


@pytest.fixture
def guarded():
    s = PreviewServer(token=TOKEN).start()
    s.update(make_frame(0), {})
    yield s
    s.stop()


def get_with(url: str, token: str | None) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            if "stream" in url:
                r.readline()
            else:
                r.read()
            return r.status
    except urllib.error.HTTPError as e:
        assert e.code != 401 or e.headers["WWW-Authenticate"] == "Bearer"
        return e.code


@pytest.mark.parametrize("path", ["", "index.html", "stream.mjpg", "snapshot.jpg", "stats.json", "metrics"])
def test_with_a_token_every_route_but_healthz_needs_it(guarded, path):
    assert get_with(guarded.url + path, None) == 401
    assert get_with(guarded.url + path, "wrong") == 401
    assert get_with(guarded.url + path, TOKEN[:-1]) == 401
    assert get_with(guarded.url + path, TOKEN) in (200, 404)  # /metrics: 404 without metrics, but past the gate
    assert get_with(guarded.url + "healthz", None) == 200


def test_the_page_and_the_stream_also_take_the_token_in_the_query(guarded):
    assert get_with(guarded.url + f"?token={TOKEN}", None) == 200
    assert get_with(guarded.url + f"stream.mjpg?token={TOKEN}", None) == 200
    assert get_with(guarded.url + "stream.mjpg?token=nope", None) == 401
    assert get_with(guarded.url + f"stats.json?token={TOKEN}", None) == 401  # header only: fetch() sends it


def test_binding_off_loopback_without_a_token_is_refused_in_one_line():
    with pytest.raises(EdgeSegError) as err:
        PreviewServer(host="0.0.0.0").start()
    message = str(err.value)
    assert "\n" not in message and "preview.token" in message and "preview.allow_open" in message
    assert preview_threads() == []
    with PreviewServer(host="0.0.0.0", token=TOKEN) as srv:
        assert get_with(f"http://127.0.0.1:{srv.port}/stats.json", TOKEN) == 200
    with PreviewServer(host="0.0.0.0", allow_open=True) as srv:
        assert get_with(f"http://127.0.0.1:{srv.port}/stats.json", None) == 200
    for loopback in ("127.0.0.1", "localhost", "::1"):
        PreviewServer(host=loopback).start().stop()


def test_the_token_never_reaches_the_log(guarded, caplog):
    import logging

    with caplog.at_level(logging.DEBUG, logger="edge_seg.view"):
        get_with(guarded.url + f"stream.mjpg?token={TOKEN}", None)
        get_with(guarded.url + f"?token={TOKEN}", None)
        time.sleep(0.2)
    assert caplog.records, "requests are logged at debug level"
    assert TOKEN not in caplog.text


def test_threads_stay_bounded_by_the_cap_while_150_clients_trickle(server):
    socks = []
    stop = threading.Event()
    peak = [0]

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], len(preview_threads()))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(150):
            s = connect(server.port)
            s.send(b"G")
            socks.append(s)
        time.sleep(1.0)
    finally:
        stop.set()
        watcher.join()
        for s in socks:
            s.close()
    assert peak[0] <= CAP + 2, f"{peak[0]} preview threads for 150 trickling clients"
