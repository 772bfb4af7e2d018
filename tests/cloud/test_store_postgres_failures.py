"""The PostgreSQL + S3 store when things go wrong: schema versions, bad URLs and credentials, poison messages,
and PostgreSQL going away under a running ``edge-seg consume`` (it exits non-zero, acknowledges nothing it did
not store, and a restart stores everything exactly once)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from broker import Broker, requires_mosquitto
from consumer_helpers import Device, Running
from message_builders import instances_payload, make_seg
from mqtt_helpers import run_broker
from store_helpers import pg_rows

from edge_seg.cli.main import main
from edge_seg.cloud import migrations
from edge_seg.cloud.consumer import Consumer
from edge_seg.cloud.store_postgres import PgStore
from edge_seg.demo.broker import free_port
from edge_seg.errors import StoreError
from edge_seg.publish import messages as m

ROOT = Path(__file__).resolve().parents[2]


broker = pytest.fixture(run_broker, name="broker")


def test_migrations_fresh_rerun_old_and_newer_versions(pg_url, s3_url):
    with pytest.raises(StoreError, match="no edge-seg schema yet: run once with --migrate"):
        PgStore(pg_url, s3_url)
    with psycopg.connect(pg_url, autocommit=True) as con:
        assert migrations.migrate(con, migrations.MIGRATIONS[:1]) == [1]  # a database of an older edge-seg
    with pytest.raises(StoreError, match=f"schema version 1, this edge-seg needs {migrations.LATEST}: run with "
                                         "--migrate"):
        PgStore(pg_url, s3_url)
    PgStore(pg_url, s3_url, migrate=True).close()
    with psycopg.connect(pg_url, autocommit=True) as con:
        assert migrations.current_version(con) == migrations.LATEST
        assert migrations.migrate(con) == []  # re-run: nothing to do, nothing breaks
        assert [r[0] for r in con.execute("SELECT version FROM schema_migrations ORDER BY 1")] == \
            [v for v, _, _ in migrations.MIGRATIONS]
        con.execute("INSERT INTO schema_migrations VALUES (%s, 'from the future', 0)", (migrations.LATEST + 1,))
    with pytest.raises(StoreError, match="newer than this edge-seg knows.*upgrade edge-seg"):
        PgStore(pg_url, s3_url, migrate=True)


def test_bad_urls_and_credentials_are_one_line_errors(pg_server, pg_url, s3_url, s3_server, capsys, monkeypatch):
    broker = "mqtt://127.0.0.1:1"
    secret_url = pg_url.replace("edge@", "edge:hunter2@")
    cases = [
        ([], "say where to store: --out DIR"),
        (["--objects", s3_url], "--objects s3://… goes with --db"),
        (["--db", "mysql://h/db", "--objects", s3_url], "--db must be a PostgreSQL URL"),
        (["--db", pg_url], "needs --objects s3://bucket/prefix"),
        (["--db", pg_url, "--objects", "http://bucket"], "objects URL must look like s3://bucket/prefix"),
        (["--out", "x", "--db", pg_url, "--objects", s3_url], "not both"),
        (["--db", secret_url.rsplit("/", 1)[0] + "/nosuchdb", "--objects", s3_url], "nosuchdb\" does not exist"),
        (["--db", secret_url.replace("edge:", "nobody:"), "--objects", s3_url], "role \"nobody\" does not exist"),
        (["--db", f"postgresql://edge:hunter2@127.0.0.1:{free_port()}/x",
          "--objects", s3_url], "cannot connect to PostgreSQL at postgresql://127.0.0.1"),
        (["--db", secret_url, "--objects", "s3://no-such-bucket/p"], "bucket 'no-such-bucket' does not exist"),
    ]
    for args, expected in cases:
        assert main(["consume", "--broker", broker, *args, "--migrate"]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err and "hunter2" not in err, (args, err)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    assert main(["consume", "--broker", broker, "--db", pg_url, "--objects", s3_url, "--migrate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused the credentials" in err and "wrong-secret" not in err, err
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    assert main(["consume", "--broker", broker, "--db", pg_url, "--objects", s3_url, "--migrate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach object storage at http://127.0.0.1:1" in err, err


@requires_mosquitto
def test_poison_messages_land_in_postgres_dead_letters(broker, pg_url, s3_url):
    run = Running(Consumer(broker.url, None, db=pg_url, objects=s3_url, migrate=True))
    dev = Device(broker)
    poison = [("cam-p", "mask", instances_payload((16384, 16384), n_full=12, msg_id="huge", device="cam-p")),
              ("cam-p", "mask", b"\x00garbage\xff"), ("cam-p", "status", b'{"schema":"edge_seg.status/v1"}'),
              ("cam-9", "mask", m.encode_mask(make_seg(1), device="cam-p", seq=1, ts=1.0).payload),
              ("cam-p", "metrics", m.encode_metrics(device="cam-p", seq=1, summary={"bad": "\u0000"}).payload)]
    for device, topic, payload in poison:
        dev.send(device, topic=topic, payload=payload)
    good = m.encode_mask(make_seg(2), device="cam-1", seq=1, ts=1.0)
    dev.send("cam-1", good)
    run.wait_received(len(poison) + 1)
    stats = run.stop()
    dev.close()
    assert stats["stored"] == 1 and stats["dead_letters"] == 5 and stats["dead_letters_total"] == 5
    rows = pg_rows(pg_url, "SELECT topic, reason, size, payload, sha256 FROM dead_letters ORDER BY id")
    assert [(r[0], r[2], bytes(r[3])) for r in rows] == [(f"edge_seg/{d}/{t}", len(p), p) for d, t, p in poison]
    assert all(r[1] and "\n" not in r[1] and len(r[4]) == 64 for r in rows)
    assert "over the decode limit" in rows[0][1]
    assert "JSON" in rows[4][1] or "Unicode" in rows[4][1] or "\\u0000" in rows[4][1], rows[4][1]
    assert pg_rows(pg_url, "SELECT value FROM consumer_counters") == [(5,)]
    assert pg_rows(pg_url, "SELECT msg_id FROM messages") == [(good.msg_id,)]


def _consume(broker: Broker, pg_url: str, s3_url: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "edge_seg.cli", "consume", "--broker", broker.url, "--db", pg_url,
                             "--objects", s3_url, "--client-id", "cloud-pg", "--migrate", "--quiet"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_stored(pg_url: str, n: int, proc: subprocess.Popen, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    count = -1
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            count = pg_rows(pg_url, "SELECT count(*) FROM messages")[0][0]
        except psycopg.Error:  # not migrated yet
            count = -1
        if count >= n:
            break
        time.sleep(0.1)
    return count


@requires_mosquitto
def test_postgres_gone_mid_run_exits_non_zero_and_a_restart_loses_nothing(broker, pg_server, pg_url, s3_url):
    proc = _consume(broker, pg_url, s3_url)
    dev = Device(broker)
    try:
        assert _wait_stored(pg_url, 0, proc) == 0  # migrated and running
        time.sleep(1.0)  # subscribed (the session keeps messages from here on)
        sent = [m.encode_metrics(device="cam-1", seq=i + 1, summary={"i": i}) for i in range(30)]
        for enc in sent[:10]:
            dev.send("cam-1", enc)
        assert _wait_stored(pg_url, 10, proc) == 10
        pg_server.stop("immediate")  # a crash of the database server
        for enc in sent[10:20]:
            dev.send("cam-1", enc)
        assert proc.wait(timeout=20) != 0
        stderr = proc.stderr.read().decode()
        assert "went away" in stderr and "restarts the consumer" in stderr, stderr
        last = [line for line in stderr.splitlines() if line.startswith("edge-seg: error:")]
        assert len(last) == 1 and "Traceback" not in stderr, stderr
        pg_server.start()
        for enc in sent[20:]:  # while no consumer runs: queued in its persistent session
            dev.send("cam-1", enc)
        proc = _consume(broker, pg_url, s3_url)
        assert _wait_stored(pg_url, 30, proc) == 30
        time.sleep(0.5)  # nothing more arrives
        assert sorted(r[0] for r in pg_rows(pg_url, "SELECT msg_id FROM messages")) == sorted(e.msg_id for e in sent)
        assert pg_rows(pg_url, "SELECT sum(highest - lowest + 1 - stored) FROM streams") == [(0,)]
    finally:
        dev.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=20)
        if not pg_server.running:
            pg_server.start()
    assert proc.returncode == 0


def test_object_storage_gone_is_store_unavailable_not_a_dead_letter(pg_url, s3_url, monkeypatch):
    from message_builders import MODEL, make_crop

    from edge_seg.cloud.objects import ObjectStore
    from edge_seg.errors import StoreUnavailableError

    store = PgStore(pg_url, s3_url, migrate=True)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
        store.objects = ObjectStore(s3_url)
        crop = m.encode_crop(make_crop(0), device="cam-1", seq=1, model=MODEL, frame_size=(1280, 720))
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="cannot write to object storage at http://127.0.0.1"):
            store.store(m.decode(crop.payload, crop.content_type))
        assert time.monotonic() - started < 15
        assert pg_rows(pg_url, "SELECT count(*) FROM messages") == [(0,)]  # no row names a missing object
    finally:
        store.close()
