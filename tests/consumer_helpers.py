"""Consumer test helpers: a plain paho client standing in for a device, and a consumer running in a thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from broker import Broker
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_seg.cloud.consumer import Consumer
from edge_seg.publish import messages as m


class Device:
    """A plain paho client standing in for a device."""

    def __init__(self, broker: Broker, username: str | None = None, password: str | None = None,
                 ca: Path | None = None):
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if username:
            self.client.username_pw_set(username, password)
        if ca:
            self.client.tls_set(ca_certs=str(ca))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def send(self, device: str, enc: m.Encoded | None = None, *, topic: str | None = None, payload: bytes = b"",
             content_type: str | None = None, retain: bool = False) -> None:
        props = Properties(PacketTypes.PUBLISH)
        if enc is not None:
            topic, payload, content_type = enc.topic, enc.payload, enc.content_type
        if content_type:
            props.ContentType = content_type
        info = self.client.publish(f"edge_seg/{device}/{topic}", payload, qos=1, retain=retain, properties=props)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Running:
    """A consumer running in a thread until ``stop()``."""

    def __init__(self, consumer: Consumer):
        self.consumer = consumer
        self.event = threading.Event()
        self.result: dict | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert consumer.ready.wait(10), "consumer did not subscribe"

    def _run(self) -> None:
        self.result = self.consumer.run(stop_event=self.event)

    def wait_received(self, n: int, timeout: float = 20.0) -> None:
        deadline = time.time() + timeout
        while self.consumer.stats["received"] < n and time.time() < deadline:
            time.sleep(0.02)
        assert self.consumer.stats["received"] >= n, self.consumer.stats

    def stop(self) -> dict:
        self.event.set()
        self.thread.join(10)
        return self.result
