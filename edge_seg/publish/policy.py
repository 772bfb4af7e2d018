"""When a frame's mask is worth publishing: every N frames, on a change, on doubt, never too often.

A frame is published when any trigger fires and the rate limit allows it:

* ``first``: the first frame after start (the cloud learns the current state at once);
* ``every_n``: ``every_n`` frames have passed since the last published one (a heartbeat);
* ``area_change``: the L1 distance between this frame's class-area fractions and those of the
  last *published* frame exceeds ``area_delta`` (so slow drifts add up and still fire);
* ``uncertainty``: the frame's mean uncertainty (1 - mean confidence) exceeds ``uncertainty``;
* ``snapshot``: a ``snapshot`` command asked for the next frame (ignores the rate limit).

The rate limit is a minimum interval of ``1 / max_rate`` seconds between published masks. A
trigger that is rate limited is not lost: the comparison is always with the last published frame,
so the next allowed frame fires again if the change persists. ``decide`` runs on the loop's
sink thread and costs a few microseconds (a dict of class areas the segmentation already caches).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from edge_seg.publish.mqtt_config import PolicyConfig


def area_l1(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """L1 distance of two class-area fraction maps (a class missing from one counts as 0)."""
    return float(sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b)))


class PublishPolicy:
    """Decides, frame by frame, whether to publish the mask and why (thread-safe ``update``)."""

    def __init__(self, config: PolicyConfig | None = None, clock=time.monotonic):
        self.config = config or PolicyConfig()
        self._clock = clock
        self._lock = threading.Lock()
        self._since = 0  # frames since the last published one
        self._last_areas: dict[str, float] | None = None
        self._last_time: float | None = None
        self._snapshot = False
        self.counts: dict[str, int] = {"frames": 0, "published": 0, "rate_limited": 0}

    def update(self, **fields) -> PolicyConfig:
        """Change some fields (validated like the config; raises pydantic's ValidationError); the new config."""
        with self._lock:
            self.config = PolicyConfig.model_validate({**self.config.model_dump(), **fields})
            return self.config

    def request_snapshot(self) -> None:
        """Publish the next frame whatever the triggers and the rate limit say."""
        with self._lock:
            self._snapshot = True

    def decide(self, areas: Mapping[str, float], uncertainty: float | None) -> str | None:
        """The reason to publish this frame (``first``, ``snapshot``, ``every_n``, ``area_change``,
        ``uncertainty``), or None."""
        with self._lock:
            cfg = self.config
            self.counts["frames"] += 1
            self._since += 1
            now = self._clock()
            if self._snapshot:
                reason: str | None = "snapshot"
            elif self._last_areas is None:
                reason = "first"
            elif cfg.every_n and self._since >= cfg.every_n:
                reason = "every_n"
            elif cfg.area_delta is not None and area_l1(areas, self._last_areas) > cfg.area_delta:
                reason = "area_change"
            elif cfg.uncertainty is not None and uncertainty is not None and uncertainty > cfg.uncertainty:
                reason = "uncertainty"
            else:
                return None
            if reason != "snapshot" and self._last_time is not None and now - self._last_time < 1.0 / cfg.max_rate:
                self.counts["rate_limited"] += 1
                return None
            self._snapshot = False
            self._since = 0
            self._last_areas = dict(areas)
            self._last_time = now
            self.counts["published"] += 1
            self.counts[reason] = self.counts.get(reason, 0) + 1
            return reason


class CameraPolicies:
    """The publish policy of each camera of a device (``cameras``: name → its ``PolicyConfig``); frames of an
    unnamed camera (the only one) use the device's. ``update`` and ``request_snapshot`` (the ``set_policy`` and
    ``snapshot`` commands) apply to all; ``config`` and ``counts`` are the device policy's."""

    def __init__(self, config: PolicyConfig | None = None, cameras: Mapping[str, PolicyConfig] | None = None):
        self.device = PublishPolicy(config)
        self.cameras = {name: PublishPolicy(cfg) for name, cfg in (cameras or {}).items()}

    def of(self, camera: str | None) -> PublishPolicy:
        return self.cameras.get(camera, self.device) if camera is not None else self.device

    @property
    def config(self) -> PolicyConfig:
        return self.device.config

    @property
    def counts(self) -> dict[str, int]:
        if not self.cameras:
            return self.device.counts
        total: dict[str, int] = {}
        for policy in self.cameras.values():
            for key, value in policy.counts.items():
                total[key] = total.get(key, 0) + value
        return total

    def update(self, **fields) -> PolicyConfig:
        for policy in self.cameras.values():
            policy.update(**fields)
        return self.device.update(**fields)

    def request_snapshot(self) -> None:
        for policy in (self.device, *self.cameras.values()):
            policy.request_snapshot()

    def decide(self, areas: Mapping[str, float], uncertainty: float | None, camera: str | None = None) -> str | None:
        """``PublishPolicy.decide`` of ``camera``'s policy."""
        return self.of(camera).decide(areas, uncertainty)


__all__ = ["CameraPolicies", "PublishPolicy", "area_l1"]
