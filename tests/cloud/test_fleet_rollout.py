"""Staged fleet rollouts against simulated devices on a real Mosquitto (rollout as a subprocess, killed -9 once)."""

from __future__ import annotations

import json
import signal

import psycopg
import pytest
from fleet_helpers import device_states, rollout_args, run_cli, spawn_cli, start_fleet
from mqtt_helpers import Collector, publisher_factory, run_broker, wait_for

from edge_seg.cloud.fleet_device import model_id
from edge_seg.cloud.pg import connect
from edge_seg.cloud.rollout_plan import parse_waves, selected, split_waves
from edge_seg.errors import InputError

broker = pytest.fixture(run_broker, name="broker")
make_publisher = pytest.fixture(publisher_factory, name="make_publisher")
URL = "http://bundles.test/scenes-seg-2.0.0.tar"


def test_waves_are_cumulative_counts_or_percentages_and_empty_waves_drop():
    devices = [f"d{i}" for i in range(50)]
    waves = split_waves(devices, parse_waves("1,10,50,100%"))
    assert [len(w) for w in waves] == [1, 9, 40]  # 50 devices: 1, up to 10, up to 50 (100% adds nobody)
    assert [len(w) for w in split_waves(devices, parse_waves("10%,50%"))] == [5, 20]  # the rest is not touched
    for bad in ("0", "1.5", "120%", "x", ""):
        with pytest.raises(InputError):
            parse_waves(bad)


def test_select_matches_device_patterns_models_and_status_labels():
    status = {"device": "cam-7", "model": {"name": "seg", "version": "1.0"}, "extra": {"labels": {"site": "north"}}}
    assert selected(status, {"device": "cam-*", "site": "north", "version": "1.0"})
    assert not selected(status, {"site": "south"}) and not selected(status, {"model": "other"})


def test_a_devices_config_labels_are_in_its_status_for_select(broker, make_publisher):
    from edge_seg.config import Config

    labels = Config.model_validate({"device": {"labels": {"site": "north"}}}).device.labels
    make_publisher(broker.url, hooks={"labels": labels})
    watcher = Collector(broker.host, broker.port, "edge_seg/dev1/status")
    status = json.loads(wait_for(lambda: watcher.on("status"), 10, what="status")[-1].payload)
    watcher.close()
    assert status["extra"]["labels"] == {"site": "north"}
    assert selected(status, {"site": "north"}) and not selected(status, {"site": "south"})


def test_rollout_halts_on_wave_two_rolls_it_back_and_resumes_after_kill_9_without_repeating_commands(
        broker, tmp_path):
    # 50 devices; waves: 2 devices, then up to 10 (8 more), then all; two wave-2 devices fail health on the new model
    sim = start_fleet(broker, 50, fail_on="scenes-seg-2.0.0", fail_devices=("sim-0004", "sim-0007"))
    first = None
    try:
        args = rollout_args(tmp_path, broker, URL, "--waves", "2,10,100%")
        first = spawn_cli(args, tmp_path / "rollout-1.log")
        db = tmp_path / "store" / "consumer.sqlite"
        # kill -9 in the middle of wave 2: once its commands are being sent, before its soak ends
        wait_for(lambda: any(w == 1 and s != "pending" for w, s in device_states(db).values()), 40,
                 what="wave 2 commands")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        states = device_states(db)
        assert {d for d, (w, s) in states.items() if w == 0} == {"sim-0000", "sim-0001"}
        assert all(s == "healthy" for w, s in states.values() if w == 0), states  # wave 1 finished before the kill
        assert any(s in ("sending", "sent", "applied") for w, s in states.values() if w == 1), states  # mid-wave

        second = run_cli(args)
        assert second.returncode == 1, second.stderr  # halted
        assert "resuming rollout" in second.stderr
        summary = json.loads(second.stdout)
        assert summary["state"] == "halted" and "sim-0004" in summary["message"] and "sim-0007" in summary["message"]
    finally:
        if first is not None and first.poll() is None:
            first.kill()  # a failed wait above: not left running
            first.wait(10)
        stats = sim.stop()
    by_id = sim.by_id
    wave1, wave2 = ["sim-0000", "sim-0001"], [f"sim-{i:04d}" for i in range(2, 10)]
    for device in wave1 + wave2:  # one update_model each, however often the restart re-sent it
        assert len(by_id[device].command_ids["update_model"]) == 1, device
        assert by_id[device].runs["update_model"] == 1, device
    for device in wave1:  # healthy: kept the new model, never rolled back
        assert by_id[device].model.version == "scenes-seg-2.0.0" and "rollback" not in by_id[device].command_ids
    for device in wave2:  # the halted wave is rolled back, the failing devices included
        assert by_id[device].runs["rollback"] == 1 and by_id[device].model.version == "1.0.0", device
    untouched = [d for d in by_id.values() if d.device not in wave1 + wave2]
    assert len(untouched) == 40 and all(not d.command_ids and d.model.version == "1.0.0" for d in untouched)
    status = run_cli([*args[:5], "status", summary["id"], "--out", str(tmp_path / "store")])
    assert "wave 1: 2 devices: 2 healthy" in status.stdout and "sim-0004: rolled_back: FPS dropped" in status.stdout
    assert "errors" not in stats and stats["frames"] > 0


def test_healthy_rollout_updates_only_the_selected_devices_wave_by_wave_with_state_in_postgres(
        broker, tmp_path, pg_url):
    connect(pg_url, migrate=True).close()  # what the first `consume --migrate` does
    store = ["--db", pg_url]
    sim = start_fleet(broker, 6, labels={"site": ["north", "south"]})
    try:
        done = run_cli(rollout_args(tmp_path, broker, URL, "--waves", "1,100%", "--select", "site=north",
                                    store=store))
    finally:
        sim.stop()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"] == "done"
    for device in sim.devices:
        north = device.labels["site"] == "north"
        assert (device.model.version == "scenes-seg-2.0.0") is north, device.device
        assert bool(device.command_ids) is north
    listing = run_cli([*rollout_args(tmp_path, broker, URL)[:5], "status", *store])
    assert " done " in listing.stdout and "3 devices" in listing.stdout, listing.stderr
    with psycopg.connect(pg_url) as con:
        rows = con.execute("SELECT wave, state FROM rollout_devices ORDER BY device").fetchall()
    assert rows == [(0, "healthy"), (1, "healthy"), (1, "healthy")]
    assert model_id(sim.devices[0].model).startswith("scenes-seg-scenes-seg-2.0.0-abab")
