"""The PostgreSQL + S3 store against real servers (Mosquitto, PostgreSQL, SeaweedFS): what it stores, exactly-once
with a share group, dead letters, and the fleet commands on both stores."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from broker import requires_mosquitto
from consumer_helpers import Device, Running
from mqtt_helpers import fake_result, run_broker
from store_helpers import CLASSES, pg_rows, send_batch

from converters.formats import read_coco
from edge_seg.cli.main import main
from edge_seg.cloud.consumer import Consumer, iter_masks
from edge_seg.cloud.events import iter_events
from edge_seg.cloud.store_postgres import PgStore
from edge_seg.maskio import read_palette_png
from edge_seg.publish import messages as m

pytestmark = requires_mosquitto


broker = pytest.fixture(run_broker, name="broker")


def test_postgres_and_s3_store_what_sqlite_stores(broker, tmp_path, pg_url, s3_url, s3_server, capsys):
    sqlite_run = Running(Consumer(broker.url, tmp_path / "out"))
    pg_run = Running(Consumer(broker.url, None, db=pg_url, objects=s3_url, migrate=True))
    dev = Device(broker)
    batch = send_batch(dev)
    sqlite_run.wait_received(batch.sent)
    pg_run.wait_received(batch.sent)
    results = [sqlite_run.stop(), pg_run.stop()]
    dev.close()
    for stats in results:
        assert (stats["stored"], stats["duplicates"], stats["bad"], stats["dead_letters"]) == \
            (len(batch.stored), batch.duplicates, batch.bad, batch.bad), stats
        assert stats["by_kind"] == results[0]["by_kind"]
    assert {r[0] for r in pg_rows(pg_url, "SELECT msg_id FROM messages")} == batch.stored
    assert pg_rows(pg_url, "SELECT count(*) FROM dead_letters") == [(batch.bad,)]
    assert pg_rows(pg_url, "SELECT zone, class, kind, track_ids FROM events") == [("driveway", "disc", "enter", [7])]
    (key,), = pg_rows(pg_url, "SELECT object_key FROM messages WHERE kind = 'event'")
    assert "/events/" in key and s3_server.client().get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() == \
        batch.snapshot
    (sqlite_event,) = iter_events(tmp_path / "out")
    assert sqlite_event.snapshot.read_bytes() == batch.snapshot
    assert pg_rows(pg_url, "SELECT device, track_id FROM instance_tracks ORDER BY track_id") == \
        [("cam-3", 7), ("cam-3", 8)]

    # masks: the same class maps, rendered on demand and in batches (content-addressed PNG objects)
    store = PgStore(pg_url, s3_url)
    try:
        pg_masks = {msg_id: read_palette_png(store.mask_png(msg_id)) for _, _, msg_id, _, _ in store.iter_masks()}
        sqlite_masks = {s.msg_id: s.class_map() for s in iter_masks(tmp_path / "out")}
        assert pg_masks.keys() == sqlite_masks.keys() == set(batch.class_maps) | {"inst-1"}
        for msg_id, class_map in pg_masks.items():
            assert np.array_equal(class_map, sqlite_masks[msg_id])
            if msg_id in batch.class_maps:
                assert np.array_equal(class_map, batch.class_maps[msg_id])
        assert main(["fleet", "render-masks", "--db", pg_url, "--objects", s3_url, "--limit", "2"]) == 0
        assert main(["fleet", "render-masks", "--db", pg_url, "--objects", s3_url]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines == [f"rendered {n} masks to PNG objects in {s3_url}" for n in (2, 3)]
        assert store.render_masks() == 0
        (msg_id, png_key), = pg_rows(pg_url, "SELECT msg_id, png_key FROM masks WHERE msg_id = 'inst-1'")
        assert png_key.startswith(s3_url.split("/", 3)[3] + "/masks/")
        assert np.array_equal(read_palette_png(store.mask_png("inst-1")), pg_masks["inst-1"])
    finally:
        store.close()
    keys = s3_server.keys(s3_url)
    assert sum("/crops/" in k for k in keys) == 2 and sum("/masks/" in k for k in keys) == 4  # 2 masks are equal

    # fleet status and the labelling queue as COCO: the same from both stores
    statuses, datasets = [], []
    for store_args, dest in ((["--out", str(tmp_path / "out")], tmp_path / "coco-sqlite"),
                             (["--db", pg_url], tmp_path / "coco-pg")):
        assert main(["fleet", "status", *store_args, "--json"]) == 0
        statuses.append([{k: v for k, v in d.items() if k != "last_seen"} for d in json.loads(capsys.readouterr().out)])
        objects = ["--objects", s3_url] if "--db" in store_args else []
        assert main(["fleet", "export-coco", *store_args, *objects, str(dest)]) == 0
        assert "2 crops" in capsys.readouterr().out
        dataset = read_coco(dest / "annotations.json", dest / "images")  # what the converters read
        assert dataset.classes[0] == "background" and set(dataset.classes[1:]) <= set(CLASSES)
        names = np.array(dataset.classes)  # category ids may differ between stores: compare class names
        datasets.append({sample.image.name: names[sample.read_mask()] for sample in dataset.samples})
        coco = json.loads((dest / "annotations.json").read_text())
        for image in coco["images"]:
            assert (dest / "images" / image["file_name"]).read_bytes() == batch.crops[image["msg_id"]].jpeg
    assert statuses[0] == statuses[1]
    assert main(["fleet", "status", "--db", pg_url]) == 0
    table = capsys.readouterr().out.splitlines()
    cam1_line = next(line for line in table if line.startswith("cam-1 "))
    assert "scenes-seg 1.2.0" in cam1_line and "14.9" in cam1_line and "0.125" in cam1_line
    assert cam1_line.endswith("source down since 12:00") and table[-1] == "3 devices, 1 online, 1 degraded"
    cam1 = next(s for s in statuses[1] if s["device"] == "cam-1")
    assert cam1 == {"device": "cam-1", "online": True, "model": "scenes-seg 1.2.0", "fps": 14.9, "drift": 0.125,
                    "degraded": "source down since 12:00", "outbox_depth": 2, "gaps": 0}
    assert datasets[0].keys() == datasets[1].keys() and len(datasets[0]) == 2
    for name, mask in datasets[0].items():
        assert np.array_equal(mask, datasets[1][name])


def test_two_consumers_in_a_share_group_store_each_message_exactly_once(broker, pg_url, s3_url):
    runs = [Running(Consumer(broker.url, None, db=pg_url, objects=s3_url, migrate=True, share="cloud"))
            for _ in range(2)]
    dev = Device(broker)
    sent = set()
    for i in range(150):
        device = f"cam-{i % 3}"
        enc = m.encode_metrics(device=device, seq=i // 3 + 1, summary={"i": i})
        sent.add(enc.msg_id)
        for _ in range(2 if i % 5 == 0 else 1):  # at-least-once: some messages arrive twice
            dev.client.publish(f"edge_seg/{device}/metrics", enc.payload, qos=1)
    dev.send("cam-0", topic="metrics", payload=b"{}")  # flushes the publishes (QoS 1, in order)
    deadline = time.time() + 20
    while sum(r.consumer.stats["received"] for r in runs) < 181 and time.time() < deadline:
        time.sleep(0.05)
    results = [r.stop() for r in runs]
    dev.close()
    assert all(r["stored"] > 0 for r in results), [r["stored"] for r in results]
    assert sum(r["stored"] for r in results) == 150 and sum(r["duplicates"] for r in results) == 30
    assert {row[0] for row in pg_rows(pg_url, "SELECT msg_id FROM messages")} == sent
    assert pg_rows(pg_url, "SELECT count(*) FROM messages") == [(150,)]
    assert pg_rows(pg_url, "SELECT sum(highest - lowest + 1 - stored), sum(stored) FROM streams") == [(0, 150)]
    assert results[-1]["gaps"] == 0


def test_bench_store_measures_cpu_per_mask_on_both_stores(tmp_path, pg_url, s3_url, capsys):
    results = []
    for args in (["--out", str(tmp_path / "out")], ["--db", pg_url, "--objects", s3_url]):
        assert main(["fleet", "bench-store", *args, "--masks", "30", "--devices", "3", "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    for result in results:
        assert result["masks"] == 30 and 0 < result["cpu_ms_per_mask"] < 1000 and result["masks_per_s"] > 0
    assert results[1]["rendered"] == 50  # 20 warm-up + 30 timed, all rendered to PNG objects afterwards
    assert pg_rows(pg_url, "SELECT count(*), count(png_key) FROM masks") == [(50, 50)]


def test_gaps_are_counted_by_the_database_whichever_store_stored_them(pg_url, s3_url):
    stores = [PgStore(pg_url, s3_url, migrate=True) for _ in range(2)]  # two consumers, one database
    try:
        def send(k: int, seq: int) -> None:
            stores[k].store(m.decode(m.encode_metrics(device="cam-1", seq=seq, summary={}).payload))

        for k, seq in ((0, 1), (1, 2), (0, 5), (1, 6)):  # 3 and 4 missing, the stream split over two consumers
            send(k, seq)
        stores[0].flush(force=True)
        assert stores[0].gaps.counts["gaps"] == 2 and stores[0].devices["cam-1"]["gaps"] == {"metrics": 2}
        send(1, 3)  # late, to the other consumer
        stores[0].flush(force=True)
        assert stores[0].gaps.counts["gaps"] == 1
        send(0, 6 + 2 * 10**9)  # a counter reset (a device that lost its counter file): no gap
        send(1, 7 + 2 * 10**9)
        stores[1].flush(force=True)
        assert stores[1].gaps.counts == {"gaps": 0, "late": 0, "out_of_order": 0, "seq_resets": 1}
    finally:
        for store in stores:
            store.close()


def test_each_camera_of_a_device_is_its_own_stream_and_row_column(pg_url, s3_url):
    """Two cameras count their own seq (1, 2, 3 each, interleaved): no false gap; each row names its camera."""
    store = PgStore(pg_url, s3_url, migrate=True)
    try:
        segmentation = fake_result(1).segmentation
        for seq in (1, 2, 3):
            for camera in ("front", "yard"):
                enc = m.encode_mask(segmentation, device="box", seq=seq, ts=float(seq), camera=camera)
                assert store.store(m.decode(enc.payload, enc.content_type))
        store.flush(force=True)
        assert store.gaps.counts["gaps"] == 0
        assert pg_rows(pg_url, "SELECT camera, count(*) FROM messages GROUP BY camera ORDER BY camera") == \
            [("front", 3), ("yard", 3)]
        assert pg_rows(pg_url, "SELECT camera, count(*) FROM masks GROUP BY camera ORDER BY camera") == \
            [("front", 3), ("yard", 3)]
        assert pg_rows(pg_url, "SELECT kind, highest, stored FROM streams ORDER BY kind") == \
            [("front/mask", 3, 3), ("yard/mask", 3, 3)]
    finally:
        store.close()


def test_a_gap_filled_late_leaves_the_device_s_gap_count(pg_url, s3_url):
    store = PgStore(pg_url, s3_url, migrate=True)
    try:
        def send(seq: int) -> None:
            store.store(m.decode(m.encode_metrics(device="cam-1", seq=seq, summary={}).payload))

        send(1)
        send(3)
        store.flush(force=True)
        assert store.devices["cam-1"]["gaps"] == {"metrics": 1}
        send(2)  # the missing one, late
        store.flush(force=True)
        assert store.gaps.counts["gaps"] == 0 and store.devices["cam-1"].get("gaps", {}) == {}
    finally:
        store.close()
