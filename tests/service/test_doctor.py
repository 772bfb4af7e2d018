"""``edge-seg doctor``: a healthy device passes; each problem is reported with its fix."""

from __future__ import annotations

import json
import socket

import pytest
import yaml
from ota_helpers import keypair

from edge_seg.cli.main import main
from edge_seg.config import parse_config
from edge_seg.ota.install import seed_factory
from edge_seg.ota.store import ModelStore
from edge_seg.segmenter import DEFAULT_MODEL
from edge_seg.service.doctor import check_broker, check_devices, render, run_checks


@pytest.fixture
def device(tmp_path):
    _, pub = keypair(tmp_path / "keys")
    store = ModelStore(tmp_path / "state" / "models")
    seed_factory(store, DEFAULT_MODEL)
    data = {"device": {"state_dir": str(tmp_path / "state")}, "model": {"path": str(store.current_link)},
            "ota": {"trusted_keys": [str(tmp_path / "keys")]}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return {"config": parse_config(data), "path": path, "store": store}


def _by_name(results):
    return {r.name: r for r in results}


def test_a_healthy_device_has_no_problem(device):
    results = run_checks(device["config"], device["path"])
    fails = [r for r in results if r.level == "fail"]
    assert not fails, render(results)
    found = _by_name(results)
    assert found["backend litert"].level == "ok" and "ai_edge_litert" in found["backend litert"].detail
    assert found["current model"].level == "ok" and "unsigned (factory)" in found["current model"].detail
    assert found["ota keys"].detail.startswith("1 trusted key(s)")
    assert found["model loads"].detail.startswith("edge-seg-default ")
    assert found["package numpy"].level == "ok" and found["python"].level == "ok"


def test_a_damaged_model_is_a_problem_with_its_fix(device, capsys):
    store = device["store"]
    model = next(store.path_of(store.current_id()).glob("*.tflite"))
    model.write_bytes(model.read_bytes()[:1000])
    assert main(["doctor", "--config", str(device["path"])]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] current model" in out and "sha256 mismatch" in out and "fix: edge-seg model rollback" in out
    assert main(["doctor", "--config", str(device["path"]), "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert {"name", "level", "detail", "fix"} <= set(rows[0])


def test_an_unreachable_broker_and_a_missing_camera_are_reported():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        config = parse_config({"mqtt": {"url": f"mqtt://127.0.0.1:{port}"},
                               "source": {"uri": "v4l2:///dev/video99"}})
        broker = check_broker(config, 1.0)[0]
    assert broker.level == "fail" and f"127.0.0.1:{port} not reachable" in broker.detail and "mqtt.url" in broker.fix
    devices = _by_name(check_devices(config))
    assert devices["source device"].level == "fail" and "/dev/video99 does not exist" in devices["source device"].detail


def test_no_trusted_key_and_no_store_are_warnings(tmp_path):
    config = parse_config({"device": {"state_dir": str(tmp_path / "nothing")},
                           "ota": {"trusted_keys": [str(tmp_path / "nokeys")]}})
    found = _by_name(run_checks(config))
    assert found["ota keys"].level == "warn" and "every bundle is refused" in found["ota keys"].fix
    assert found["state dir"].level == "warn" and found["model store"].level == "warn"
