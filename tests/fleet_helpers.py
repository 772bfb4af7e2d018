"""Fleet test helpers: a simulated fleet on a real broker, and ``edge-seg fleet rollout`` as a subprocess."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from edge_seg.cloud.fleet_simulator import SimConfig, Simulator
from edge_seg.publish.commands_signing import Verifier

ROOT = Path(__file__).parent.parent
KEY = b"fleet-test-hmac-key"
NEW_SHA = "ab" * 32


def start_fleet(broker, devices: int, **fields) -> Simulator:
    """``devices`` simulated devices (HMAC-signed commands only) sending 2 masks/s and a status every 0.5 s."""
    fields.setdefault("rate", 2.0)
    fields.setdefault("status_interval", 0.5)
    return Simulator(broker, SimConfig(devices=devices, verifier=Verifier("hmac", KEY), **fields)).start()


def rollout_args(tmp_path: Path, broker, url: str, *extra: str, store: list[str] | None = None) -> list[str]:
    """``edge-seg fleet rollout URL`` with short soak/baseline/discover times; state in ``store`` (default
    ``--out tmp_path/store``)."""
    key = tmp_path / "command.key"
    key.write_bytes(KEY + b"\n")
    return [sys.executable, "-m", "edge_seg.cli", "fleet", "rollout", url, "--sha256", NEW_SHA, "--signing-key",
            str(key), "--broker", broker.url, *(store or ["--out", str(tmp_path / "store")]), "--soak", "2s",
            "--baseline", "1s", "--discover", "1s", "--command-timeout", "20s", *extra]


def run_cli(args: list[str], timeout: float = 90, python: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """``args`` (after ``sys.executable`` when ``python``) run to the end, output captured as text."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, *args] if python else args
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


def spawn_cli(args: list[str], log: Path, python: bool = False) -> subprocess.Popen:
    """``args`` in a subprocess (after ``sys.executable`` when ``python``), stderr to ``log``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, *args] if python else args
    with open(log, "wb") as stderr:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)


def device_states(db: Path) -> dict[str, tuple[int, str]]:
    """device -> (wave, state) of the rollout in ``db`` (read-only; {} before the tables exist)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return {}
    try:
        return {d: (w, s) for d, w, s in con.execute("SELECT device, wave, state FROM rollout_devices")}
    except sqlite3.Error:
        return {}
    finally:
        con.close()
