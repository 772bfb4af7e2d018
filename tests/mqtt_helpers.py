"""Helpers for the MQTT tests: a subscribing collector, the device subprocess, fake results, fixtures.

``run_broker`` and ``publisher_factory`` are fixture bodies: a test module registers them with
``broker = pytest.fixture(run_broker, name="broker")`` (tests/conftest.py is shared, so not there).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from broker import Broker
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_seg.loop.pipeline import FrameResult
from edge_seg.publish.messages import CommandResultMessage, decode
from edge_seg.publish.mqtt import Publisher
from edge_seg.publish.mqtt_config import MqttConfig
from edge_seg.segmentation import ModelIdentity, Segmentation
from edge_seg.sources.base import Frame

HERE = Path(__file__).parent
ROOT = HERE.parent
DEVICE_SCRIPT = HERE / "mqtt_device.py"


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy (returned) or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    content_type: str | None


class Collector:
    """A subscriber (MQTT 5, QoS 1) recording every message; persistent session when ``client_id`` is given."""

    def __init__(self, host: str, port: int, topic: str = "edge_seg/#", client_id: str | None = None,
                 tls=None, username: str | None = None, password: str | None = None):
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self.connected = threading.Event()
        persistent = client_id is not None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{uuid.uuid4().hex[:8]}",
                                   protocol=mqtt.MQTTv5)
        if tls is not None:
            self.client.tls_set(ca_certs=str(tls.ca))
        if username:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(1, 2)
        self.topic = topic
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.connected.clear()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600 if persistent else 0
        self.client.connect_async(host, port, clean_start=not persistent, properties=props)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise AssertionError("collector could not connect")

    def _on_connect(self, client, _userdata, _flags, reason_code, _props):
        if not reason_code.is_failure:
            client.subscribe(self.topic, qos=1)
            self.connected.set()

    def _on_message(self, _client, _userdata, message):
        ct = getattr(message.properties, "ContentType", None) if message.properties else None
        with self._lock:
            self.messages.append(Received(message.topic, bytes(message.payload), bool(message.retain), ct))

    def on(self, suffix: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic.endswith("/" + suffix)]

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def start_device(broker_url: str, state_dir: Path, model: Path, *, device: str = "dev1", fps: float = 12.0,
                 record: Path | None = None, log: Path | None = None, extra: list[str] | None = None
                 ) -> subprocess.Popen:
    """The device (loop on synthetic:// → Publisher) in a subprocess; stderr goes to ``log``."""
    args = [sys.executable, str(DEVICE_SCRIPT), "--broker", broker_url, "--state-dir", str(state_dir),
            "--model", str(model), "--device", device, "--fps", str(fps), *(extra or [])]
    if record is not None:
        args += ["--record", str(record)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    stderr = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    finally:
        if log is not None:
            stderr.close()


def device_model(request) -> Path:
    """The bundled model when it is there (no TensorFlow needed), else the tiny colour model fixture's."""
    bundled = ROOT / "edge_seg" / "models" / "default"
    if (bundled / "manifest.json").is_file():
        return bundled
    return request.getfixturevalue("tiny_models")["colour_probs_uint8"]


def outbox_db(state_dir: Path) -> Path:
    return Path(state_dir) / "outbox.sqlite"


CLASSES = ("background", "road", "car")
PALETTE = ((0, 0, 0), (128, 64, 128), (0, 0, 142))
MODEL = ModelIdentity("test-model", "1.0.0", "ab" * 32)


def fake_result(seq: int, frame_size=(1280, 720), model_size=(256, 144), split: float | None = None) -> FrameResult:
    """A frame result whose class map has a 'road' band of a width that depends on ``seq`` (or ``split``)."""
    w, h = model_size
    labels = np.zeros((h, w), np.uint8)
    cut = int(w * (split if split is not None else (seq % 10) / 10))
    labels[h // 2:, :cut] = 1
    labels[: h // 4, w - 20:] = 2
    seg = Segmentation(labels, np.full((h, w), 0.9, np.float32), frame_size, CLASSES, PALETTE, MODEL)
    frame = Frame(np.zeros((frame_size[1], frame_size[0], 3), np.uint8), time.time(), seq)
    return FrameResult(frame, seg, None, {"infer": 1.0})


def run_broker(tmp_path):
    """A plain Mosquitto on a free port for one test."""
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


def publisher_factory(tmp_path):
    """``make(url, device="dev1", **mqtt_fields) -> Publisher``; all closed after the test."""
    made = []

    def make(url: str, device: str = "dev1", *, hooks: dict | None = None, **fields) -> Publisher:
        """``hooks``: more Publisher keywords (``reload``, ``update_model``, ``allowed_url_prefixes``)."""
        fields.setdefault("reconnect_max_s", 2)
        publisher = Publisher(MqttConfig(url=url, **fields), device=device, state_dir=tmp_path / f"state-{device}",
                              model=MODEL, classes=CLASSES, **(hooks or {}))
        publisher.client.enable_logger(logging.getLogger("paho.test"))  # paho reports swallowed callback errors
        made.append(publisher)
        return publisher

    yield make
    for publisher in made:
        publisher.close()


def results_of(collector: Collector) -> list[CommandResultMessage]:
    """The command results a collector received, decoded."""
    return [decode(m.payload) for m in collector.on("cmd/result")]
