"""``edge-seg fleet simulate``: N lightweight simulated devices in one process, for load tests and rollouts.

Each device (``edge_seg.cloud.fleet_device.SimDevice``) has its own MQTT session, will and retained
status, sends real mask and crop messages and answers signed ``update_model``/``rollback`` commands.
``driver_threads`` threads send the frames: each owns a slice of the devices and sends one frame per
device every ``1/rate`` seconds, spread evenly over the period (no burst of N messages at once).
Scenes are rendered once (``SCENES`` class maps of a synthetic scene, at 192x108, and one JPEG crop
each); every message is encoded afresh (envelope, pycocotools RLE), as a device does.

``Simulator.stats()`` reports messages sent, the frames that fell behind the schedule (``late``: the
process cannot keep up) and the CPU time this process used per frame.
"""

from __future__ import annotations

import logging
import resource
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from edge_seg.cloud.fleet_device import Health, SimDevice
from edge_seg.errors import InputError
from edge_seg.publish.commands_signing import Verifier
from edge_seg.segmentation import ModelIdentity, Segmentation

log = logging.getLogger(__name__)
SCENES = 8
FRAME = (1280, 720)
MODEL_SIZE = (192, 108)
CONNECT_BATCH = 50
MAX_PER_PROCESS = 300
DEFAULT_MODEL = ModelIdentity("scenes-seg", "1.0.0", "1" * 64)


class SceneCache:
    """Class maps and crops of ``SCENES`` synthetic scenes, and Segmentations of them per (model, confidence)."""

    def __init__(self, count: int = SCENES, frame: tuple[int, int] = FRAME):
        import cv2

        from edge_seg.bench.messages import noisy_label_map
        from edge_seg.demo.scenes import CLASSES, PALETTE, render_scene
        from edge_seg.postprocess.uncertainty import Crop

        self.classes, self.palette, self.frame = CLASSES, PALETTE, tuple(frame)
        self.labels, self.crops = [], []
        for seed in range(count):
            scene = render_scene(seed, self.frame)
            self.labels.append(noisy_label_map(scene.mask, MODEL_SIZE, np.random.default_rng(seed)))
            x, y, w, h = (self.frame[0] - 96) * seed // count, self.frame[1] // 4, 96, 64
            ok, jpeg = cv2.imencode(".jpg", scene.image[y:y + h, x:x + w])
            self.crops.append(Crop(jpeg=jpeg.tobytes(), bbox=(x, y, w, h), score=0.4,
                                   class_map=scene.mask[y:y + h, x:x + w].copy(), ts=0.0))
        self._segs: dict[tuple, Segmentation] = {}
        self._lock = threading.Lock()

    def segmentation(self, frame: int, model: ModelIdentity, confidence: float) -> Segmentation:
        key = (frame % len(self.labels), model, round(confidence, 4))
        with self._lock:
            seg = self._segs.get(key)
            if seg is None:
                labels = self.labels[key[0]]
                conf = np.full(labels.shape, confidence, np.float32)
                seg = Segmentation(labels, conf, self.frame, self.classes, self.palette, model,
                                   timings={"infer": 8.0, "post": 1.0})
                if len(self._segs) > 4096:
                    self._segs.clear()
                self._segs[key] = seg
            return seg

    def crop(self, frame: int):
        return self.crops[frame % len(self.crops)]


@dataclass
class SimConfig:
    """What ``edge-seg fleet simulate`` runs."""

    devices: int = 10
    rate: float = 1.0  # masks per second per device
    prefix: str = "edge_seg"
    name: str = "sim"  # device ids: {name}-0000 …
    status_interval: float = 5.0
    crop_every: int = 5  # one crop every N masks (0: none)
    fail_on: str | None = None  # model version or sha256 prefix that fails health
    fail_devices: tuple[str, ...] = ()  # the devices that fail on it (empty: all)
    fail_drop: float = 0.5
    labels: dict = field(default_factory=dict)  # label -> list of values, assigned round-robin
    driver_threads: int = 2
    first: int = 0  # index of the first device (a fleet split over processes)
    frame: tuple[int, int] = FRAME  # the camera frame size the masks describe (consumers render PNGs at it)
    verifier: Verifier | None = None  # None: commands run unsigned (insecure)
    allowed_url_prefixes: tuple[str, ...] = ("http://bundles.test/",)  # ota.allowed_url_prefixes of every device


def device_ids(name: str, count: int, first: int = 0) -> list[str]:
    return [f"{name}-{i:04d}" for i in range(first, first + count)]


class Simulator:
    """Runs the simulated fleet until ``stop()`` (see the module docstring)."""

    def __init__(self, broker, config: SimConfig):
        if config.devices < 1 or config.rate < 0:
            raise InputError("fleet simulate needs --devices ≥ 1 and --rate ≥ 0")
        if config.devices > MAX_PER_PROCESS:
            raise InputError(f"at most {MAX_PER_PROCESS} simulated devices per process (paho's select() handles "
                             "1024 descriptors, 3 per client): edge-seg fleet simulate spreads more over processes")
        _raise_fd_limit(config.devices * 4 + 64)
        self.config, self.scenes = config, SceneCache(frame=config.frame)
        failing = set(config.fail_devices)
        self.devices: list[SimDevice] = []
        for i, device in enumerate(device_ids(config.name, config.devices, config.first), start=config.first):
            labels = {k: values[i % len(values)] for k, values in config.labels.items() if values}
            fail_on = config.fail_on if (not failing or device in failing) else None
            health = Health(fps=round(10.0 + (i % 7) * 0.5, 2), confidence=round(0.75 + (i % 5) * 0.03, 4))
            self.devices.append(SimDevice(device, broker, self.scenes, prefix=config.prefix, model=DEFAULT_MODEL,
                                          labels=labels, health=health, verifier=config.verifier, fail_on=fail_on,
                                          fail_drop=config.fail_drop, crop_every=config.crop_every,
                                          allowed_url_prefixes=config.allowed_url_prefixes))
        self.by_id = {d.device: d for d in self.devices}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._counts: Counter = Counter()
        self._lock = threading.Lock()
        self._started = self._cpu0 = 0.0

    def start(self, connect_timeout: float = 180.0) -> Simulator:
        """Connect the devices, ``CONNECT_BATCH`` at a time (waits until all are), then start the driver threads."""
        if self.devices:  # a broker that is not there at all: say so now, not after the whole timeout
            host, port = self.devices[0].broker.host, self.devices[0].broker.port
            try:
                socket.create_connection((host, port), timeout=10.0).close()
            except OSError as err:
                raise InputError(f"cannot reach the MQTT broker at {host}:{port}: {err.strerror or err}") from None
        deadline = time.monotonic() + connect_timeout
        for first in range(0, len(self.devices), CONNECT_BATCH):  # a storm of N handshakes would time out
            batch = self.devices[first:first + CONNECT_BATCH]
            for device in batch:
                device.connect()
            for device in batch:
                if not device.connected.wait(max(0.0, deadline - time.monotonic())):
                    raise InputError(f"simulated device {device.device} could not connect to the broker within "
                                     f"{connect_timeout:g} s: is it running?")
        self._started, self._cpu0 = time.monotonic(), time.process_time()
        n = max(1, min(self.config.driver_threads, len(self.devices)))
        for k in range(n):
            thread = threading.Thread(target=self._drive, args=(self.devices[k::n],), name=f"fleet-sim-{k}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _drive(self, devices: list[SimDevice]) -> None:
        """Send one frame per device per period, evenly spread; statuses every ``status_interval``."""
        rate, cfg = self.config.rate, self.config
        period = 1.0 / rate if rate > 0 else None
        step = (period or 1.0) / len(devices)
        next_status = time.monotonic() + cfg.status_interval
        due = time.monotonic()
        while not self._stop.is_set():
            for device in devices:
                wait = due - time.monotonic()
                if wait > 0 and self._stop.wait(wait):
                    return
                if wait < -1.0:
                    with self._lock:
                        self._counts["late"] += 1
                if period is not None:
                    self._send(device.send_frame)
                due += step
            if time.monotonic() >= next_status:
                next_status += cfg.status_interval
                for device in devices:
                    self._send(device.send_status)
            if due < time.monotonic() - 5.0:
                due = time.monotonic()  # far behind: do not burst to catch up

    def _send(self, action) -> None:
        try:
            action()
            with self._lock:
                self._counts["frames" if getattr(action, "__name__", "") == "send_frame" else "statuses"] += 1
        except Exception as err:  # noqa: BLE001 - one device's failure must not stop the fleet
            with self._lock:
                self._counts["errors"] += 1
            log.warning("simulated device: %s", err)

    def hold_network(self) -> None:
        """Stop every device's network thread: messages queue in the clients, nobody reconnects (tests)."""
        for device in self.devices:
            device.client.loop_stop()

    def release_network(self) -> None:
        """Start the network threads again: the devices reconnect and send what queued."""
        for device in self.devices:
            device.client.loop_start()

    def stats(self) -> dict:
        """Frames sent, late frames, per-topic messages, commands, CPU ms per frame (this process)."""
        elapsed = max(time.monotonic() - self._started, 1e-9)
        cpu = time.process_time() - self._cpu0
        topics: Counter = Counter()
        runs: Counter = Counter()
        for device in self.devices:
            topics.update(device.counts)
            runs.update(device.runs)
        with self._lock:
            counts = dict(self._counts)
        frames = counts.get("frames", 0)
        return {"devices": len(self.devices), "elapsed_s": round(elapsed, 3), **counts,
                "frames_per_s": round(frames / elapsed, 1), "cpu_ms_per_frame": round(cpu * 1e3 / max(frames, 1), 3),
                "cpu_cores": round(cpu / elapsed, 3), "sent": dict(topics), "commands_run": dict(runs)}

    def stop(self, timeout: float = 10.0) -> dict:
        """Stop sending, disconnect every device; the final stats."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        stats = self.stats()
        for device in self.devices:
            device.close()
        return stats


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(needed, soft), hard), hard))
        except (ValueError, OSError):
            log.warning("open file limit %d is low for this many devices (ulimit -n)", soft)


__all__ = ["DEFAULT_MODEL", "MAX_PER_PROCESS", "SceneCache", "SimConfig", "Simulator", "device_ids"]
