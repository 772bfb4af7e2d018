"""A throw-away local Mosquitto for ``edge-seg demo``: loopback only, a free port, a config we write.

Used only when the ``mosquitto`` binary is installed (``make install`` adds it); never in the
device's normal run, where the broker is the user's.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from edge_seg.errors import EdgeSegError


def mosquitto_binary() -> str | None:
    """The mosquitto executable, or None (Debian installs it in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(proc: subprocess.Popen, port: int, timeout: float = 10.0) -> None:
    """Wait until ``proc`` (started with stderr=PIPE) accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise EdgeSegError(f"mosquitto did not start: {err[-1] if err else 'exited'}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise EdgeSegError("mosquitto did not start listening")


class LocalBroker:
    """``with LocalBroker(dir) as url:`` runs Mosquitto on 127.0.0.1 until the block ends."""

    def __init__(self, directory: Path, port: int | None = None, options: tuple[str, ...] = ()):
        self.binary = mosquitto_binary()
        if self.binary is None:
            raise EdgeSegError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.directory = Path(directory)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.options = tuple(options)  # more mosquitto.conf lines, e.g. "max_queued_messages 100000"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false",
                 "set_tcp_nodelay true", f"log_dest file {self.directory.resolve() / 'mosquitto.log'}",
                 *self.options]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to the mosquitto user, who cannot write our log
        config.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([self.binary, "-c", str(config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        try:
            wait_listening(self.proc, self.port, timeout)
        except EdgeSegError:
            self.stop()
            raise
        return self.url

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
