"""Load acceptance: 200 simulated devices at 1 mask/s (+ a crop every 5 masks) into 3 consumers of one share
group storing into PostgreSQL + SeaweedFS S3, with the broker restarted and one consumer killed -9 during the
run: every message stored exactly once (a query per stream: seq 1..n, each once), every crop (and every mask
PNG rendered so far) in the bucket (a listing), the store's gap count 0.

Mosquitto 2.0 does not restore shared subscriptions after a restart: until a consumer subscribes again, what
devices publish has no subscriber and is dropped (acknowledged to the device). So while the broker is down the
devices' network is held (their messages queue in their clients) and released once every consumer is back; a
broker with durable shared subscriptions (EMQX, HiveMQ) needs no such order."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter

import psycopg
import pytest
from fleet_helpers import spawn_cli, start_fleet
from mqtt_helpers import run_broker, wait_for

from edge_seg.cloud.pg import connect

broker = pytest.fixture(run_broker, name="broker")
KINDS = ("mask", "crop", "status")


def stored(pg_url: str) -> Counter:
    """Data messages stored per kind (not the wills: seq 0)."""
    with psycopg.connect(pg_url) as con:
        return Counter(dict(con.execute("SELECT kind, count(*) FROM messages WHERE seq > 0 GROUP BY kind")))


def connects(tmp_path, k: int) -> int:
    """How often consumer ``k`` connected (its log)."""
    log = tmp_path / f"c{k}.log"
    return log.read_text(errors="replace").count("connected to mqtt://") if log.exists() else 0


def run_fleet_with_restarts(broker, tmp_path, consumers: dict, pg_url: str, s3_url: str) -> Counter:
    """200 devices for ~13 s; the broker restarted, consumer 1 killed -9 and restarted; what the devices sent."""
    time.sleep(3)  # connected and subscribed
    sim = start_fleet(broker, 200, rate=1.0, status_interval=5.0, crop_every=5)
    try:
        time.sleep(3)
        sim.hold_network()
        broker.stop()  # the broker goes away for 2 s: devices and consumers reconnect
        time.sleep(2)
        broker.start()
        wait_for(lambda: all(connects(tmp_path, k) >= 2 for k in range(3)), 30, what="consumers back")
        time.sleep(0.5)  # subscribed again
        sim.release_network()
        time.sleep(3)
        consumers[1].send_signal(signal.SIGKILL)  # one consumer dies without acknowledging what it holds
        consumers[1].wait(10)
        time.sleep(1)
        consumers[1] = consumer(broker, tmp_path, 1, pg_url, s3_url)  # same client id: its session comes back
        time.sleep(3)
    finally:
        stats = sim.stop()
    sent = Counter({kind: stats["sent"].get(kind, 0) for kind in KINDS})
    assert sent["mask"] >= 200 * 10 and sent["crop"] > 0, stats
    return sent


def consumer(broker, tmp_path, k: int, pg_url: str, s3_url: str):
    return spawn_cli(["-m", "edge_seg.cli", "consume", "--broker", broker.url, "--db", pg_url, "--objects", s3_url,
                      "--share", "fleet", "--client-id", f"consumer-{k}", "--quiet"], tmp_path / f"c{k}.log",
                     python=True)


@pytest.mark.slow
def test_200_devices_into_3_shared_consumers_survive_broker_and_consumer_restarts_exactly_once(
        broker, tmp_path, pg_url, s3_url, s3_server):
    connect(pg_url, migrate=True).close()
    consumers = {k: consumer(broker, tmp_path, k, pg_url, s3_url) for k in range(3)}
    try:
        sent = run_fleet_with_restarts(broker, tmp_path, consumers, pg_url, s3_url)
        deadline = time.monotonic() + 90
        while stored(pg_url) != sent and time.monotonic() < deadline:
            time.sleep(0.5)
        assert stored(pg_url) == sent
    finally:
        for proc in consumers.values():  # SIGTERM: they flush and exit; whatever happened above
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in consumers.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    with psycopg.connect(pg_url) as con:
        rows = con.execute("SELECT device, kind, count(*), count(DISTINCT seq), max(seq) FROM messages "
                           "WHERE seq > 0 GROUP BY device, kind").fetchall()
        gaps = con.execute("SELECT sum(greatest(highest - lowest + 1 - stored, 0)) FROM streams").fetchone()[0]
        crops = [r[0] for r in con.execute("SELECT object_key FROM messages WHERE kind = 'crop'")]
        pngs = [r[0] for r in con.execute("SELECT png_key FROM masks WHERE png_key IS NOT NULL")]
    assert len({r[0] for r in rows}) == 200
    assert all(count == distinct == top for _, _, count, distinct, top in rows), "a seq stored twice or missing"
    assert gaps == 0
    keys = set(s3_server.keys(s3_url))  # content-addressed: equal JPEGs share one object
    assert len(crops) == sent["crop"] and set(crops) <= keys, "a crop is not in the bucket"
    assert set(pngs) <= keys
