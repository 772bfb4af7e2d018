"""systemd's side channel: sd_notify and the progress-gated watchdog.

* ``Notifier``: the sd_notify datagram protocol over ``$NOTIFY_SOCKET`` (a path, or ``@name`` for
  an abstract socket); a no-op when the variable is unset.
* ``Watchdog``: every ``WATCHDOG_USEC / 2`` it sends ``WATCHDOG=1`` only if every loop thread went
  round since the last ping (``Pipeline.liveness``); a thread stuck in a driver, a model or a sink
  stops the pings and systemd restarts the service after ``WatchdogSec``. A camera that is down is
  not a reason to die: the loop keeps deciding (reconnecting with backoff), the pings go on and the
  degraded state shows in ``STATUS=`` and the retained MQTT status. It also refreshes ``STATUS=``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    """sd_notify over a Unix datagram socket (``NOTIFY_SOCKET``)."""

    def __init__(self, address: str | None):
        self.address = address or None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> "Notifier":
        return cls(os.environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; False when disabled or the socket is gone."""
        if not self.enabled or not fields:
            return False
        address = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto("\n".join(fields).encode(), address)
                return True
            except OSError as err:
                log.debug("sd_notify to %s failed: %s", self.address, err)
                return False

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def watchdog_interval(env: dict | None = None) -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), None when systemd asked for none."""
    env = os.environ if env is None else env
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2e6


class Watchdog:
    """Pings ``WATCHDOG=1`` every ``interval`` s while the loop is alive; refreshes STATUS=.

    ``progress()`` returns a counter, or one counter per loop thread (``Pipeline.liveness``): the ping goes
    out once every counter moved since the last ping, so a thread stuck in a driver, a model or a sink stops
    the pings, while a loop that waits for a lost camera (its threads go round, reconnecting) keeps them.
    """

    def __init__(self, notifier: Notifier, progress: Callable[[], int | Mapping[str, int]], interval: float | None,
                 status: Callable[[], str] | None = None, status_every: float = 10.0):
        self.notifier, self.progress, self.interval = notifier, progress, interval
        self.status, self.status_every = status, status_every
        self.pings = 0
        self.withheld = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edge-seg-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        self._thread.start()
        return self

    @staticmethod
    def _stuck(last, now) -> list[str]:
        """What has not moved from ``last`` to ``now``: names of the stuck counters (``["loop"]`` for one counter)."""
        if isinstance(now, Mapping):
            return [name for name, count in now.items() if last.get(name) == count]
        return [] if now != last else ["loop"]

    def _run(self) -> None:
        last = self.progress()
        tick = self.interval or self.status_every
        next_status = time.monotonic() + self.status_every
        while not self._stop.wait(tick):
            if self.interval is not None:
                now = self.progress()
                stuck = self._stuck(last, now)
                if not stuck:
                    self.notifier.watchdog()
                    self.pings += 1
                    last = now
                else:
                    if self.withheld == 0 or self.withheld % 20 == 0:
                        log.warning("no progress of %s for %.1f s: withholding the systemd watchdog ping",
                                    ", ".join(stuck), tick * (self.withheld + 1))
                    self.withheld += 1
                    continue
                self.withheld = 0
            if self.status is not None and time.monotonic() >= next_status:
                self.notifier.status(self.status())
                next_status = time.monotonic() + self.status_every

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


__all__ = ["Notifier", "Watchdog", "watchdog_interval"]
