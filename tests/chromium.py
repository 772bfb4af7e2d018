"""Headless Chromium for page tests: Debian's ``/usr/bin/chromium`` driven through the DevTools protocol."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np

CHROMIUM = "/usr/bin/chromium"


class Chromium:
    """Headless Chromium driven through the DevTools protocol over a pipe (no websocket needed)."""

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--remote-debugging-pipe", "--window-size=900,600", "--hide-scrollbars", "about:blank"]

    def __init__(self, profile: Path, log: Path) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        self._log = log
        cmd = f'exec "$0" "$@" 3<&{to_child_r} 4>&{from_child_w}'  # bash: the browser wants fds 3 and 4
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(["bash", "-c", cmd, CHROMIUM, f"--user-data-dir={profile}", *self.FLAGS],
                                         pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=err)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 15.0):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{method}: no reply in {timeout} s; chromium log: {self.log_tail()}")
            if select.select([self._from_child], [], [], left)[0]:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise EOFError(f"chromium exited; log: {self.log_tail()}")
                self._buf += chunk

    def open(self, url: str) -> str:
        """Open ``url`` in a new tab; returns the session id for page commands."""
        target = self.call("Target.createTarget", {"url": url})["targetId"]
        return self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def eval(self, session: str, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        return result["result"].get("value")

    def wait_for(self, session: str, expression: str, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.eval(session, expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}")

    def screenshot(self, session: str, clip: dict) -> np.ndarray:
        import base64

        data = self.call("Page.captureScreenshot", {"format": "png", "clip": {**clip, "scale": 1}}, session)["data"]
        return cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)

    def log_tail(self) -> str:
        return self._log.read_text(errors="replace")[-2000:] if self._log.exists() else ""

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (OSError, TimeoutError, EOFError, RuntimeError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self._to_child)
        os.close(self._from_child)
