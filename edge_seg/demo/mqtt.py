"""The demo's MQTT leg: device publisher → local Mosquitto → consumer, all on this machine.

With ``mosquitto`` installed, the demo starts it on a free loopback port, runs a consumer into
``out/consumer/`` and publishes every frame's mask, so the whole path is exercised. Without it the
publisher points at a port where nothing listens: the demo still runs and the on-disk outbox keeps
every message for when a broker appears.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from edge_seg.demo.broker import LocalBroker, free_port, mosquitto_binary
from edge_seg.loop.pipeline import FrameResult
from edge_seg.segmentation import Segmentation
from edge_seg.sources.base import Frame

log = logging.getLogger(__name__)


class DemoLink:
    """``with DemoLink(out_dir, segmenter) as link: link.publish(seq, image, result)``; then ``link.lines()``."""

    def __init__(self, out_dir: Path, segmenter, device: str = "demo"):
        self.out_dir = Path(out_dir)
        self.segmenter = segmenter
        self.device = device
        self.broker: LocalBroker | None = None
        self.consumer = None
        self.publisher = None
        self.url = ""
        self.published = 0
        self.stored = 0
        self.outbox_depth = 0

    def __enter__(self) -> "DemoLink":
        from edge_seg.publish.mqtt import Publisher
        from edge_seg.publish.mqtt_config import MqttConfig, PolicyConfig
        from edge_seg.segmentation import ModelIdentity

        if mosquitto_binary() is not None:
            self.broker = LocalBroker(self.out_dir / "broker")
            self.url = self.broker.start()
            from edge_seg.cloud.consumer import Consumer

            self.consumer = Consumer(self.url, self.out_dir / "consumer", progress=False)
            self.consumer.start()
            self.consumer.ready.wait(5.0)
        else:
            self.url = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens: the outbox keeps the messages
        m = self.segmenter.manifest
        config = MqttConfig(url=self.url, policy=PolicyConfig(every_n=1, area_delta=None, max_rate=1000.0),
                            reconnect_max_s=2)
        self.publisher = Publisher(config, device=self.device, state_dir=self.out_dir / "state",
                                   model=ModelIdentity(m.name, m.version, self.segmenter.loaded.sha256),
                                   classes=m.classes)
        return self

    def publish(self, seq: int, image, result: Segmentation) -> None:
        """Hand one frame's result to the publisher (it queues; encoding happens on its thread)."""
        self.publisher.publish(FrameResult(Frame(image, time.time(), seq), result, None, result.timings))

    def __exit__(self, *exc) -> None:
        try:
            self.publisher.close(timeout=5.0)
            self.published = self.publisher.counts["masks"]
            if self.consumer is None:
                from edge_seg.publish.outbox import Outbox

                outbox = Outbox(self.out_dir / "state" / "outbox.sqlite")
                self.outbox_depth = outbox.stats().depth
                outbox.close()
            if self.consumer is not None:
                deadline = time.monotonic() + 10.0
                while time.monotonic() < deadline and self._masks_stored() < self.published:
                    time.sleep(0.1)
                self.stored = self._masks_stored()
                self.consumer.close()
        finally:
            if self.broker is not None:
                self.broker.stop()

    def _masks_stored(self) -> int:
        return int(self.consumer.stats["by_kind"].get("mask", 0))

    def lines(self) -> list[str]:
        if self.consumer is not None:
            return [f"MQTT: published {self.published} masks -> Mosquitto {self.url} -> consumer stored "
                    f"{self.stored} masks in {self.out_dir / 'consumer'}"]
        return [f"MQTT: no broker installed; {self.published} masks kept in the outbox "
                f"{self.out_dir / 'state' / 'outbox.sqlite'} (depth {self.outbox_depth}) for when one is reachable"]
