"""systemd: sd_notify over NOTIFY_SOCKET (READY, WATCHDOG only while frames flow, RELOADING, STOPPING), the unit
file (systemd-analyze verify), ``edge-seg service install``."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from edge_seg.config import load_config
from edge_seg.ota.store import ModelStore
from edge_seg.service.install import install_service, render_unit
from edge_seg.service.notify import Notifier, Watchdog, watchdog_interval

HERE = Path(__file__).resolve().parents[1]  # tests/, where the helper scripts are
REPO = HERE.parent
UNIT = REPO / "firmware_configs" / "systemd" / "edge-seg.service"


class NotifySocket:
    """A bound Unix datagram socket collecting (monotonic time, message) pairs."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def wait_for(self, text: str, timeout: float = 30.0, after: float = 0.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ts, line in list(self.messages):
                if ts >= after and line.startswith(text):
                    return ts
            time.sleep(0.02)
        raise AssertionError(f"no {text!r} within {timeout} s; got {[m for _, m in self.messages][-20:]}")

    def count(self, text: str, start: float, end: float) -> int:
        return sum(1 for ts, line in list(self.messages) if start <= ts < end and line == text)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


def test_notifier_sends_to_a_path_and_an_abstract_socket(tmp_path):
    listener = NotifySocket(tmp_path / "n.sock")
    try:
        assert Notifier(listener.path).ready("up")
        listener.wait_for("READY=1", 5)
        listener.wait_for("STATUS=up", 5)
    finally:
        listener.close()
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"edge-seg-test-{os.getpid()}"
    abstract.bind("\0" + name)
    try:
        assert Notifier("@" + name).watchdog()
        assert abstract.recv(100) == b"WATCHDOG=1"
    finally:
        abstract.close()
    assert not Notifier(None).ready() and not Notifier(str(tmp_path / "missing.sock")).watchdog()


def test_watchdog_interval_is_half_of_watchdog_usec():
    assert watchdog_interval({"WATCHDOG_USEC": "4000000"}) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None  # meant for another pid
    assert watchdog_interval({}) is None and watchdog_interval({"WATCHDOG_USEC": "0"}) is None


def test_watchdog_pings_only_while_progress_is_made(tmp_path):
    listener = NotifySocket(tmp_path / "n.sock")
    progress = {"n": 0}
    dog = Watchdog(Notifier(listener.path), lambda: progress["n"], 0.05).start()
    try:
        for _ in range(8):
            progress["n"] += 1
            time.sleep(0.05)
        time.sleep(0.1)
        moving = dog.pings
        time.sleep(0.4)  # no progress
        assert moving >= 4 and dog.pings == moving and dog.withheld >= 5
    finally:
        dog.stop()
        listener.close()


def test_watchdog_needs_every_loop_thread_to_go_round(tmp_path, caplog):
    """Per-thread counters (``Pipeline.liveness``): one that stands still withholds the ping and is named."""
    listener = NotifySocket(tmp_path / "n.sock")
    beats = {"capture": 0, "infer": 0, "sink": 0}
    dog = Watchdog(Notifier(listener.path), lambda: dict(beats), 0.05).start()
    try:
        with caplog.at_level(logging.WARNING, logger="edge_seg.service.notify"):
            for _ in range(8):
                for name in beats:
                    beats[name] += 1
                time.sleep(0.05)
            moving = dog.pings
            for _ in range(8):  # the capture thread is stuck; the others go round
                beats["infer"] += 1
                beats["sink"] += 1
                time.sleep(0.05)
            assert moving >= 4 and dog.pings <= moving + 1 and dog.withheld >= 5
        assert any("no progress of capture" in r.getMessage() for r in caplog.records)
    finally:
        dog.stop()
        listener.close()


@pytest.fixture
def service_run(tmp_path):
    """``edge-seg run`` under a fake systemd: NOTIFY_SOCKET, WATCHDOG_USEC=400 ms, a source that can go down
    (``gate``) or hang in its driver (``wedge``)."""
    listener = NotifySocket(tmp_path / "notify.sock")
    gate, wedge = tmp_path / "stall", tmp_path / "wedge"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "device": {"state_dir": str(tmp_path / "state")},
        "source": {"uri": "synthetic://?width=160&height=96", "fps": 15, "deadline_s": 0.5, "backoff_cap_s": 0.5},
        "ota": {"shadow_frames": 0, "probation_frames": 5},
        "service": {"status_interval_s": 0.3}}))
    env = {**os.environ, "NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "400000",
           "EDGE_SEG_TEST_GATE": str(gate), "EDGE_SEG_TEST_WEDGE": str(wedge)}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, str(HERE / "service_device.py"), "run", "--config", str(config)],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield proc, listener, gate, wedge
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    listener.close()


def test_service_ready_watchdog_stall_reload_and_stop(service_run):
    """A camera down for many watchdog periods does not get the service killed (it pings on, says degraded and
    resumes with the camera); a loop thread stuck in a driver stops the pings, so systemd restarts it."""
    proc, notify, gate, wedge = service_run
    ready = notify.wait_for("READY=1", timeout=60)
    first = notify.wait_for("WATCHDOG=1", after=ready, timeout=10)
    time.sleep(1.2)
    assert notify.count("WATCHDOG=1", first, first + 1.2) >= 3  # every 0.2 s while frames flow
    notify.wait_for("STATUS=", after=ready, timeout=5)

    gate.touch()  # the camera is down: no frames, the loop keeps reconnecting
    down = time.monotonic()
    time.sleep(3.0)  # 7.5 x WatchdogSec: systemd would have killed a service that stopped pinging
    assert notify.count("WATCHDOG=1", down + 0.5, down + 3.0) >= 6, "pings stopped while the camera was down"
    notify.wait_for("STATUS=", after=down)
    assert any("degraded: source down since" in line for ts, line in notify.messages if ts >= down), \
        [line for _, line in notify.messages if line.startswith("STATUS=")][-3:]
    gate.unlink()
    back = time.monotonic()
    time.sleep(1.5)
    statuses = [line for ts, line in notify.messages if ts >= back + 0.8 and line.startswith("STATUS=")]
    assert statuses and not any("degraded" in line for line in statuses), statuses

    wedge.touch()  # the capture thread hangs in the driver: the loop is wedged
    wedged = time.monotonic()
    time.sleep(2.0)
    assert notify.count("WATCHDOG=1", wedged + 0.5, wedged + 2.0) == 0, "pings went on while the loop was wedged"
    wedge.unlink()
    resumed = notify.wait_for("WATCHDOG=1", after=time.monotonic(), timeout=10)

    proc.send_signal(signal.SIGHUP)
    reloading = notify.wait_for("RELOADING=1", after=resumed, timeout=10)
    notify.wait_for("READY=1", after=reloading, timeout=30)

    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    notify.wait_for("STOPPING=1", after=reloading, timeout=5)
    assert "stats: " in out
    assert "no progress of capture for" in err and "withholding the systemd watchdog ping" in err


def test_the_unit_file_is_generated_and_has_the_required_settings():
    text = UNIT.read_text()
    assert text == render_unit()  # firmware_configs/systemd/edge-seg.service is render_unit()'s output
    unit, service = text.split("[Service]")[0], text.split("[Service]")[1].split("[Install]")[0]
    assert "StartLimitIntervalSec=" in unit and "StartLimitBurst=" in unit
    for line in ("Type=notify", "WatchdogSec=60", "Restart=on-failure", "RestartSec=5", "User=edge-seg",
                 "StateDirectory=edge-seg", "ProtectSystem=strict", "ReadWritePaths=/var/lib/edge-seg",
                 "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectHome=yes", "SupplementaryGroups=video",
                 "DeviceAllow=char-video4linux rw", "DeviceAllow=/dev/apex_0 rw", "DeviceAllow=/dev/nvmap rw",
                 "ExecReload=/bin/kill -HUP $MAINPID"):
        assert line in service.splitlines(), line
    assert "MemoryDenyWriteExecute" not in service.replace("# sandbox (no MemoryDenyWriteExecute", "")


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt install systemd)")
    exe = shutil.which("edge-seg") or str(Path(sys.executable).parent / "edge-seg")
    if not os.access(exe, os.X_OK):
        pytest.skip("no edge-seg executable to point ExecStart at")
    unit = tmp_path / "edge-seg.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/edge-seg", exe))
    out = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    problems = [line for line in (out.stdout + out.stderr).splitlines() if "edge-seg.service" in line]
    assert out.returncode == 0 and not problems, out.stdout + out.stderr
    broken = tmp_path / "broken" / "edge-seg.service"
    broken.parent.mkdir()
    broken.write_text(unit.read_text().replace("Type=notify", "Type=notifyy"))
    out = subprocess.run([tool, "verify", str(broken)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert "Failed to parse service type" in out.stdout + out.stderr  # the check is not vacuous


@pytest.mark.parametrize("board", ["rpi4", "jetson-orin-nano"])
def test_service_install_writes_unit_config_keys_and_seeds_the_store(tmp_path, board):
    from ota_helpers import keypair

    _, pub = keypair(tmp_path / "keys")
    report = install_service(board=board, root=tmp_path / "root", exec_path="/opt/edge-seg/bin/edge-seg",
                             pubkeys=[pub])
    root = tmp_path / "root"
    unit = (root / "etc/systemd/system/edge-seg.service").read_text()
    assert "ExecStart=/opt/edge-seg/bin/edge-seg run --config /etc/edge-seg/config.yaml" in unit
    config = load_config(root / "etc/edge-seg/config.yaml")
    assert str(config.model.path) == "/var/lib/edge-seg/models/current"
    assert config.ota.trusted_keys == [Path("/etc/edge-seg/keys")]
    assert (root / "etc/edge-seg/keys" / pub.name).read_bytes() == pub.read_bytes()
    store = ModelStore(root / "var/lib/edge-seg/models")
    assert store.current_id().startswith("edge-seg-default-")
    store.verify_entry(store.current_id())
    dropin = root / "etc/systemd/system/edge-seg.service.d/jetson-argus.conf"
    assert dropin.exists() == (board == "jetson-orin-nano")
    assert any("seeded" in line for line in report)
    again = install_service(board=board, root=root, exec_path="/opt/edge-seg/bin/edge-seg")
    assert any("kept" in line and "config.yaml" in line for line in again)
    assert any("kept the model store" in line for line in again)


def test_service_install_from_the_cli_refuses_an_unknown_board(tmp_path, capsys):
    from edge_seg.cli.main import main

    assert main(["service", "install", "--board", "toaster", "--root", str(tmp_path)]) == 2
    assert "unknown board 'toaster' (known: jetson-orin-nano" in capsys.readouterr().err
