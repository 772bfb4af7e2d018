"""``edge-seg fleet bench``: what the cloud side ingests, with 1, 2 and 4 consumers of one share group.

For each consumer count: that many ``edge-seg consume`` processes (one share group, persistent
sessions) into the store (SQLite + folder in a temporary directory, or ``--db`` PostgreSQL +
``--objects`` S3), and ``edge-seg fleet simulate --devices N --rate R --duration D`` in its own
process (device ids ``b{run}c{consumers}-NNNN``, so runs into one database are told apart). After
the simulator stops, the consumers get up to ``drain_s`` to store what is queued, then SIGTERM;
their CPU time comes from ``wait4``. Reported per run:

* ``offered_masks_s`` (what the devices sent) and ``ingest_masks_s`` (stored masks / the span of
  their commit times): below the offered rate, the consumers are the bottleneck;
* ``cpu_ms_per_mask``: the consumers' user + system CPU from the simulator's start to their exit
  (``/proc`` then ``wait4``; start-up imports excluded) / masks stored (crops and statuses
  included in the CPU: one crop per ``crop_every`` masks); ``consumer_cores_per_1000_devices`` at 1 mask/s;
* ``latency_ms`` p50 / p99: ``received`` (the consumer's store time of the row) − ``ts`` (the
  simulated device's encode time), same host clock;
* ``db_rows_s`` (rows of ``messages`` per second) and ``objects_s`` (crops + rendered mask PNGs
  written per second: files for SQLite, S3 objects for PostgreSQL + S3).

Mosquitto is started on a free loopback port unless ``--broker`` names one. Everything shares the
host's cores: on 2 cores, scaling beyond 2 consumers is not expected; CPU per mask is the figure
that sizes a fleet.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_seg.errors import EdgeSegError


@dataclass
class BenchConfig:
    devices: int = 200
    rate: float = 1.0
    duration_s: float = 10.0
    consumers: tuple[int, ...] = (1, 2, 4)
    drain_s: float = 30.0
    crop_every: int = 5
    broker: str | None = None
    db: str | None = None  # postgresql://… (with objects); None: SQLite + folder in a temporary directory
    objects: str | None = None
    work: Path | None = None
    tag: str = field(default_factory=lambda: f"{int(time.time()) % 100000:05d}")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge_seg.cli", *args]


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class _Rows:
    """What a run stored, read from the store: (kind, ts, received) per message, objects written."""

    def __init__(self, config: BenchConfig, out: Path | None):
        self.config, self.out = config, out

    def fetch(self, name: str) -> tuple[list[tuple[str, float, float]], int]:
        pattern = f"{name}-%"
        if self.config.db is None:
            path = self.out / "consumer.sqlite"
            if not path.exists():
                return [], 0
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
            try:
                rows = con.execute("SELECT kind, ts, received FROM messages WHERE device LIKE ? AND seq > 0",
                                   (pattern,)).fetchall()
                objects = con.execute("SELECT count(*) FROM messages WHERE device LIKE ? AND path IS NOT NULL",
                                      (pattern,)).fetchone()[0]
            except sqlite3.Error:
                return [], 0
            finally:
                con.close()
            return rows, int(objects)
        import psycopg

        with psycopg.connect(self.config.db) as con:
            rows = con.execute("SELECT kind, ts, received FROM messages WHERE device LIKE %s AND seq > 0",
                               (pattern,)).fetchall()
            objects = con.execute("SELECT (SELECT count(*) FROM messages WHERE device LIKE %s AND object_key IS NOT "
                                  "NULL) + (SELECT count(*) FROM masks WHERE device LIKE %s AND png_key IS NOT NULL)",
                                  (pattern, pattern)).fetchone()[0]
        return rows, int(objects)


def _store_args(config: BenchConfig, out: Path | None) -> list[str]:
    if config.db is None:
        return ["--out", str(out)]
    return ["--db", config.db, "--objects", config.objects or "", "--migrate"]


def _cpu_now(pid: int) -> float:
    """User + system CPU seconds a running process has used (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop(procs: list[subprocess.Popen]) -> float:
    """SIGTERM the consumers; their user + system CPU seconds (``wait4``)."""
    cpu = 0.0
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        if proc.returncode is not None:
            continue
        deadline = time.monotonic() + 30
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                cpu += usage.ru_utime + usage.ru_stime
                break
            if time.monotonic() > deadline:
                proc.kill()
                deadline = time.monotonic() + 10
            time.sleep(0.05)
    return cpu


def run_once(config: BenchConfig, broker: str, consumers: int, work: Path, report) -> dict:
    """One run with ``consumers`` consumer processes; its figures."""
    name = f"b{config.tag}c{consumers}"
    out = None if config.db else work / name
    logs = work / f"{name}-consumer.log"
    with open(logs, "ab") as log:
        procs = [subprocess.Popen(_cli("consume", "--broker", broker, *_store_args(config, out), "--share", name,
                                       "--client-id", f"{name}-{k}", "--quiet"),
                                  stdout=subprocess.DEVNULL, stderr=log) for k in range(consumers)]
    rows = _Rows(config, out)
    try:
        time.sleep(3.0)  # connected and subscribed
        if any(p.poll() is not None for p in procs):
            raise EdgeSegError(f"a consumer exited at start: see {logs}")
        idle = sum(_cpu_now(p.pid) for p in procs)  # start-up (imports, connecting): not per-mask work
        sim = subprocess.run(_cli("fleet", "simulate", "--broker", broker, "--devices", str(config.devices),
                                  "--rate", str(config.rate), "--duration", str(config.duration_s), "--name", name,
                                  "--crop-every", str(config.crop_every), "--report-every", "5"),
                             capture_output=True, text=True, timeout=config.duration_s + 120)
        if sim.returncode != 0:
            raise EdgeSegError(f"fleet simulate failed: {sim.stderr.strip().splitlines()[-1:]}")
        sent = json.loads(sim.stdout)
        want = sent["sent"].get("mask", 0)
        deadline = time.monotonic() + config.drain_s
        while time.monotonic() < deadline:
            if sum(1 for r in rows.fetch(name)[0] if r[0] == "mask") >= want:
                break
            time.sleep(0.5)
    finally:
        cpu = _stop(procs)
    cpu -= idle
    stored, objects = rows.fetch(name)
    masks = [r for r in stored if r[0] == "mask"]
    span = (max(r[2] for r in stored) - min(r[2] for r in stored)) if len(stored) > 1 else 0.0
    latency = [(r[2] - r[1]) * 1e3 for r in masks]
    result = {"devices": config.devices, "consumers": consumers, "offered_masks_s": round(want / sent["elapsed_s"], 1),
              "masks_sent": want, "masks_stored": len(masks),
              "ingest_masks_s": round(len(masks) / span, 1) if span else None,
              "cpu_ms_per_mask": round(cpu * 1e3 / len(masks), 3) if masks else None,
              "consumer_cores_per_1000_devices": round(cpu / len(masks) * 1000, 2) if masks else None,
              "latency_ms_p50": _round(_percentile(latency, 50)), "latency_ms_p99": _round(_percentile(latency, 99)),
              "db_rows_s": round(len(stored) / span, 1) if span else None,
              "objects_s": round(objects / span, 1) if span else None,
              "simulator_cpu_ms_per_frame": sent.get("cpu_ms_per_frame")}
    report(json.dumps(result))
    return result


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def run_bench(config: BenchConfig, report=lambda line: print(line, file=sys.stderr, flush=True)) -> list[dict]:
    """Every consumer count of ``config``; the figures of each run."""
    from edge_seg.demo.broker import LocalBroker

    if (config.db is None) != (config.objects is None):
        raise EdgeSegError("fleet bench: --db postgresql://… and --objects s3://… go together")
    with tempfile.TemporaryDirectory(prefix="edge-seg-fleet-bench-") as tmp:
        work = Path(config.work or tmp)
        # a backlog must wait at the broker, not be dropped (Mosquitto queues 1000 per session by default)
        broker = None if config.broker else LocalBroker(work / "broker", options=("max_queued_messages 1000000",))
        url = config.broker or broker.start()
        try:
            return [run_once(config, url, n, work, report) for n in config.consumers]
        finally:
            if broker is not None:
                broker.stop()


__all__ = ["BenchConfig", "run_bench"]
