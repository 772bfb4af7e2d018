"""The cloud consumer against a real Mosquitto: storage, dedupe, bad payloads, share groups, TLS + password."""

from __future__ import annotations

import json
import logging
import threading
import time

import numpy as np
import pytest
from broker import Broker, make_tls, requires_mosquitto
from consumer_helpers import Device, Running
from message_builders import MODEL, make_crop, make_seg
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from edge_seg.cloud.consumer import Consumer, decode_message, iter_masks, parse_broker_url, run_consumer
from edge_seg.errors import EdgeSegError
from edge_seg.publish import messages as m

pytestmark = requires_mosquitto
FRAME = (1280, 720)


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


def test_store_masks_crops_status_dedupe_and_bad(broker, tmp_path):
    out = tmp_path / "out"
    run = Running(Consumer(broker.url, out))
    dev = Device(broker)
    segs = [make_seg(seed) for seed in range(3)]
    masks = [m.encode_mask(seg, device="cam-1", seq=i, ts=100.0 + i) for i, seg in enumerate(segs)]
    png_mask = m.encode_mask(segs[0], device="cam-2", seq=7, ts=1.0, fmt="png")
    crops_in = [make_crop(0), make_crop(1, bbox=(300, 200, 96, 80))]
    crops = [m.encode_crop(c, device="cam-1", seq=10 + i, model=MODEL, frame_size=FRAME,
                           classes=("background", "disc", "box", "triangle")) for i, c in enumerate(crops_in)]
    status = m.encode_status(device="cam-1", seq=20, online=True, model=MODEL, fps=14.9, outbox_depth=2)
    for device, enc in [*(("cam-1", e) for e in masks), ("cam-2", png_mask), *(("cam-1", e) for e in crops)]:
        dev.send(device, enc)
    dev.send("cam-1", status, retain=True)
    dev.send("cam-1", masks[0])  # the same msg_id again: a duplicate
    dev.send("cam-1", topic="mask", payload=b"\x00garbage\xff")
    dev.send("cam-1", topic="status", payload=b'{"schema":"edge_seg.status/v1"}')
    dev.send("cam-9", masks[1])  # cam-1's message on cam-9's topic
    dev.send("cam-1", topic="metrics", payload=m.encode_metrics(device="cam-1", seq=21, summary={"fps": 15}).payload)
    run.wait_received(12)
    stats = run.stop()
    dev.close()
    assert stats["received"] == 12 and stats["stored"] == 8 and stats["duplicates"] == 1 and stats["bad"] == 3
    assert stats["by_kind"] == {"mask": 4, "crop": 2, "status": 1, "metrics": 1, "cmd/result": 0, "event": 0}

    stored = list(iter_masks(out, device="cam-1"))
    assert [s.seq for s in stored] == [0, 1, 2]
    for s, seg, enc in zip(stored, segs, masks):
        assert s.msg_id == enc.msg_id and s.path.name == f"{s.seq:09d}_{enc.msg_id}.png"
        assert s.path.parent == out / "masks" / "cam-1"
        assert np.array_equal(s.class_map(), seg.class_map)
    (png_stored,) = iter_masks(out, device="cam-2")
    assert np.array_equal(png_stored.class_map(), segs[0].class_map)

    lines = [json.loads(line) for line in (out / "messages.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and len({line["msg_id"] for line in lines}) == 8
    assert all("rle" not in line and "png" not in line for line in lines)

    coco = COCO(str(out / "labelling" / "annotations.json"))
    assert len(coco.imgs) == 2 and {c["name"] for c in coco.cats.values()} <= {"background", "disc", "box",
                                                                                "triangle"}
    for image_id, image in coco.imgs.items():
        crop = crops_in[[e.msg_id for e in crops].index(image["msg_id"])]
        assert (out / "labelling" / image["file_name"]).read_bytes() == crop.jpeg
        assert (image["width"], image["height"]) == crop.bbox[2:]
        rebuilt = np.full((image["height"], image["width"]), 255, np.uint8)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            name = coco.cats[ann["category_id"]]["name"]
            binary = coco_mask.decode(coco.annToRLE(ann))
            assert ann["area"] == int(binary.sum())
            rebuilt[binary == 1] = ("background", "disc", "box", "triangle").index(name)
        assert np.array_equal(rebuilt, crop.class_map)

    devices = json.loads((out / "devices.json").read_text())
    assert devices["cam-1"]["status"]["online"] is True and devices["cam-1"]["status"]["fps"] == 14.9
    assert devices["cam-1"]["counts"]["mask"] == 3 and devices["cam-2"]["counts"] == {"mask": 1}


def test_restart_keeps_dedupe_and_persistent_session(broker, tmp_path):
    out = tmp_path / "out"
    dev = Device(broker)
    enc = m.encode_status(device="cam-1", seq=1, online=True)
    run = Running(Consumer(broker.url, out, client_id="cloud-1"))
    dev.send("cam-1", enc)
    run.wait_received(1)
    run.stop()
    later = [m.encode_metrics(device="cam-1", seq=2 + i, summary={"i": i}) for i in range(5)]
    for e in later:  # published while the consumer is away: queued in its session
        dev.send("cam-1", e)
    run = Running(Consumer(broker.url, out, client_id="cloud-1"))
    run.wait_received(5)
    dev.send("cam-1", enc)  # already stored before the restart
    run.wait_received(6)
    stats = run.stop()
    dev.close()
    assert stats["stored"] == 5 and stats["duplicates"] == 1
    assert len((out / "messages.jsonl").read_text().splitlines()) == 6


def test_share_group_splits_the_stream(broker, tmp_path):
    runs = [Running(Consumer(broker.url, tmp_path / f"c{i}", share="cloud")) for i in range(3)]
    dev = Device(broker)
    sent = set()
    for i in range(300):
        enc = m.encode_metrics(device=f"cam-{i % 3}", seq=i, summary={"i": i})
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = enc.content_type
        dev.client.publish(f"edge_seg/cam-{i % 3}/metrics", enc.payload, qos=1, properties=props)
        sent.add(enc.msg_id)
    deadline = time.time() + 20
    while sum(r.consumer.stats["received"] for r in runs) < 300 and time.time() < deadline:
        time.sleep(0.05)
    results = [r.stop() for r in runs]
    dev.close()
    got = [{json.loads(line)["msg_id"] for line in (tmp_path / f"c{i}" / "messages.jsonl").read_text().splitlines()}
           for i in range(3)]
    assert all(r["stored"] > 0 for r in results), [r["stored"] for r in results]
    assert sum(len(g) for g in got) == 300 and set().union(*got) == sent
    assert not (got[0] & got[1]) and not (got[0] & got[2]) and not (got[1] & got[2])


def test_tls_and_password(tmp_path, caplog, monkeypatch):
    tls = make_tls(tmp_path / "tls")
    broker = Broker(tmp_path / "broker", users={"cloud": "s3cret!", "dev": "devpw"}, tls=tls).start()
    try:
        url = f"mqtts://cloud:s3cret%21@{broker.host}:{broker.port}"
        run = Running(Consumer(url, tmp_path / "a", tls_ca=tls.ca))
        dev = Device(broker, "dev", "devpw", ca=tls.ca)
        dev.send("cam-1", m.encode_status(device="cam-1", seq=1, online=True))
        run.wait_received(1)
        assert run.stop()["stored"] == 1
        # password from the environment and from a file
        monkeypatch.setenv("EDGE_SEG_MQTT_PASSWORD", "s3cret!")
        run = Running(Consumer(f"mqtts://cloud@{broker.host}:{broker.port}", tmp_path / "b", tls_ca=tls.ca))
        run.stop()
        monkeypatch.delenv("EDGE_SEG_MQTT_PASSWORD")
        (tmp_path / "pw").write_text("s3cret!\n")
        run = Running(Consumer(f"mqtts://cloud@{broker.host}:{broker.port}", tmp_path / "c", tls_ca=tls.ca,
                               password_file=tmp_path / "pw"))
        run.stop()
        dev.close()
        # a wrong password: one clear log line, retries with backoff, never subscribes, secret never logged
        caplog.set_level(logging.INFO, logger="edge_seg.cloud.consumer")
        wrong = Consumer(f"mqtts://cloud:wrong-pw@{broker.host}:{broker.port}", tmp_path / "d", tls_ca=tls.ca)
        thread = threading.Thread(target=wrong.run, kwargs={"duration": 3.5})
        thread.start()
        thread.join(15)
        refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(refused) == 1 and "Not authorized" in refused[0] and str(broker.port) in refused[0]
        assert not wrong.ready.is_set() and wrong.stats["connects"] == 0
        assert "wrong-pw" not in caplog.text and "s3cret" not in caplog.text
        assert "wrong-pw" not in repr(wrong.address)
    finally:
        broker.stop()


def test_run_consumer_duration_and_progress(broker, tmp_path, capsys):
    stats = run_consumer(broker.url, tmp_path / "out", duration=0.6, progress_interval=0.2)
    assert stats["received"] == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines and lines[-1].startswith("consumer: received 0 stored 0 duplicates 0 bad 0")
    assert (tmp_path / "out" / "labelling" / "annotations.json").exists()


def test_broker_url_parsing_and_library_api():
    a = parse_broker_url("mqtts://u:p%40ss@example.org")
    assert (a.tls, a.host, a.port, a.username, a.password) == (True, "example.org", 8883, "u", "p@ss")
    assert "p@ss" not in repr(a) and str(a) == "mqtts://example.org:8883"
    assert parse_broker_url("mqtt://h:1884", password="x").port == 1884
    for bad in ("http://h", "mqtt://", "mqtt://h:99999", "mqtt://h/path", "h:1883"):
        with pytest.raises(EdgeSegError):
            parse_broker_url(bad)
    enc = m.encode_status(device="d", seq=0, online=True)
    assert decode_message(enc.payload).device == "d"
    with pytest.raises(EdgeSegError, match="share group"):
        Consumer("mqtt://h:1", "/nonexistent-never-created", share="a/b")
