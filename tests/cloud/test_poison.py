"""25 poison messages then 5 good ones through a real Mosquitto into an ``edge-seg consume`` process.

The poison is queued in the consumer's persistent session before it starts, so all of it arrives at
once, as after a reconnect: 20 messages that raise inside decode/store and stay unacknowledged would
fill Mosquitto's in-flight window (20) and the good ones would never be delivered. Every message must
be acknowledged: the good ones stored, the poison in the dead-letter table, the process small and quick.
The consumer runs under an address-space limit so that a regression fails fast instead of eating the host.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from broker import Broker, requires_mosquitto
from message_builders import MODEL, instances_payload, make_crop, make_seg
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pycocotools import mask as coco_mask

from edge_seg.publish import messages as m

pytestmark = requires_mosquitto
ROOT = Path(__file__).resolve().parents[2]
CLIENT_ID = "cloud-poison"
KINDS = ("mask", "crop", "status", "metrics", "cmd/result")
ADDRESS_SPACE = 3 * 2**30  # the consumer's RLIMIT_AS: decoding a 16384² frame per instance hits it at once
RSS_LIMIT_KB = 300 * 1024


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


def _client(broker: Broker, client_id: str | None = None) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "", protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600 if client_id else 0
    client.connect(broker.host, broker.port, clean_start=client_id is None, properties=props)
    client.loop_start()
    return client


def _prepare_session(broker: Broker) -> None:
    """The consumer's session, subscribed and waiting, so what is published now is queued for it."""
    client = _client(broker, CLIENT_ID)
    done = []
    client.on_subscribe = lambda *args: done.append(args)
    client.subscribe([(f"edge_seg/+/{kind}", 1) for kind in KINDS])
    deadline = time.monotonic() + 10
    while not done and time.monotonic() < deadline:
        time.sleep(0.02)
    assert done, "no SUBACK"
    client.disconnect()
    client.loop_stop()


def _publish(client: mqtt.Client, topic: str, payload: bytes, content_type: str | None = None) -> None:
    props = Properties(PacketTypes.PUBLISH)
    if content_type:
        props.ContentType = content_type
    client.publish(f"edge_seg/{topic}", payload, qos=1, properties=props).wait_for_publish(10)


def _huge_mask(msg_id: str) -> bytes:
    """A mask message whose one class covers a 16384x16384 mask: a dozen bytes of RLE."""
    side = 16384
    counts = coco_mask.frPyObjects([{"size": [side, side], "counts": [side * side]}], side, side)[0]["counts"]
    return json.dumps({"schema": m.MASK_SCHEMA, "device": "cam-p", "msg_id": msg_id, "seq": 1, "ts": 1.0,
                       "model": {"name": "x", "version": "1", "sha256": "ab"}, "frame_size": [640, 480],
                       "classes": ["a"], "mask_format": "rle", "mask_resolution": [side, side],
                       "rle": [{"id": 0, "counts": counts.decode()}]}).encode()


def _crop(seed: int, device: str, seq: int, msg_id: str) -> tuple[bytes, bytes]:
    crop = make_crop(seed, bbox=(100 + 40 * seed, 50, 64, 48))
    enc = m.encode_crop(crop, device=device, seq=seq, model=MODEL, frame_size=(1280, 720))
    head, _, jpeg = enc.payload.partition(b"\n")
    obj = json.loads(head)
    obj["msg_id"] = msg_id
    return json.dumps(obj).encode() + b"\n" + jpeg, crop.jpeg


def _poll(db: Path) -> tuple[int, int]:
    """(stored messages, dead letters) as the consumer's database says, 0 while it is not there."""
    if not db.exists():
        return 0, 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        stored = con.execute("SELECT count(*) FROM messages").fetchone()[0]
        try:
            dead = con.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        except sqlite3.OperationalError:  # no such table
            dead = 0
        return stored, dead
    except sqlite3.OperationalError:
        return 0, 0
    finally:
        con.close()


def _vm(pid: int, key: str) -> int:
    """``VmRSS`` / ``VmHWM`` of a process in kB (0 once it has exited)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def test_poison_is_dead_lettered_and_good_messages_still_stored(broker, tmp_path):
    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    (out / "masks" / "blocked").write_text("a file where the device's folder would go")  # store raises OSError
    _prepare_session(broker)
    dev = _client(broker)
    poison: list[tuple[str, bytes, str | None]] = []
    for i in range(12):  # 16384² frame × 12 full-frame instances: ~3 GB if decoded at frame size
        poison.append(("cam-p/mask", instances_payload((16384, 16384), n_full=12, msg_id=f"huge{i}",
                                                        device="cam-p"), None))
    seg = make_seg(5)
    for i in range(8):  # valid messages whose storing raises (not a MessageError)
        enc = m.encode_mask(seg, device="blocked", seq=i, ts=1.0)
        poison.append(("blocked/mask", enc.payload, enc.content_type))
    poison += [("cam-p/mask", _huge_mask("bigmask0"), None), ("cam-p/mask", _huge_mask("bigmask1"), None),
               ("cam-p/mask", b"\x00garbage\xff", None), ("cam-p/status", b'{"schema":"edge_seg.status/v1"}', None),
               ("cam-9/mask", m.encode_mask(seg, device="cam-p", seq=1, ts=1.0).payload, None)]  # wrong topic
    assert len(poison) == 25 and all(len(payload) < 300_000 for _, payload, _ in poison)

    crop_a, jpeg_a = _crop(0, "cam", 1, "000000002_x")  # the colliding pair of the flat naming
    crop_b, jpeg_b = _crop(1, "cam_000000001", 2, "x")
    good_masks = [m.encode_mask(make_seg(s), device="cam-1", seq=s, ts=10.0 + s) for s in range(2)]
    good = [("cam-1/mask", good_masks[0].payload, None), ("cam-1/mask", good_masks[1].payload, None),
            ("cam-1/mask", instances_payload((640, 480), n_full=3, msg_id="inst1", device="cam-1"), None),
            ("cam/crop", crop_a, m.CROP_CONTENT_TYPE), ("cam_000000001/crop", crop_b, m.CROP_CONTENT_TYPE)]
    for topic, payload, content_type in [*poison, *good]:
        _publish(dev, topic, payload, content_type)
    dev.disconnect()
    dev.loop_stop()

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "edge_seg.cli", "consume", "--broker", broker.url, "--out",
                             str(out), "--client-id", CLIENT_ID, "--quiet"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_limit_address_space)
    started = time.monotonic()
    try:
        db = out / "consumer.sqlite"
        peak_rss = 0
        while time.monotonic() - started < 60 and _poll(db) != (5, 25) and proc.poll() is None:
            peak_rss = max(peak_rss, _vm(proc.pid, "VmRSS"))
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        counts = _poll(db)
        if proc.poll() is None:
            peak_rss = max(peak_rss, _vm(proc.pid, "VmHWM"))  # the kernel's high-water mark of the process
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
    assert counts == (5, 25), (counts, stderr.decode()[-2000:])
    assert elapsed < 30, elapsed
    assert peak_rss < RSS_LIMIT_KB, f"peak RSS {peak_rss} kB"
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert "dead_letters 25" in stdout.decode(), stdout.decode()

    con = sqlite3.connect(out / "consumer.sqlite")
    rows = con.execute("SELECT topic, reason, size, payload, received FROM dead_letters ORDER BY id").fetchall()
    stored = {row[0] for row in con.execute("SELECT msg_id FROM messages")}
    total = con.execute("SELECT value FROM consumer_counters WHERE name = 'dead_letters'").fetchone()[0]
    con.close()
    assert total == 25
    assert stored == {good_masks[0].msg_id, good_masks[1].msg_id, "inst1", "000000002_x", "x"}
    by_payload = {bytes(payload): (topic, reason, size) for topic, reason, size, payload, _ in rows}
    assert len(by_payload) == 25 and all(received > 0 for *_, received in rows)
    for topic, payload, _ in poison:
        got_topic, reason, size = by_payload[payload]  # the payload itself: each of them is under the cap
        assert got_topic == f"edge_seg/{topic}" and size == len(payload) and reason and "\n" not in reason
        if payload.startswith(b'{"schema": "edge_seg.instances/v1"') or b"bigmask" in payload:
            assert "over the decode limit" in reason, reason
        if topic.startswith("blocked/"):
            assert "Error" in reason, reason  # the exception's type names what went wrong (not a MessageError)

    coco = json.loads((out / "labelling" / "annotations.json").read_text())
    names = {image["msg_id"]: image["file_name"] for image in coco["images"]}
    assert names["000000002_x"] != names["x"]
    assert (out / "labelling" / names["000000002_x"]).read_bytes() == jpeg_a
    assert (out / "labelling" / names["x"]).read_bytes() == jpeg_b
