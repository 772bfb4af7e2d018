"""`edge-seg fleet bench` end to end on a tiny fleet (its own Mosquitto, SQLite store), and the split simulator."""

from __future__ import annotations

import json

from fleet_helpers import run_cli

from edge_seg.cloud.fleet_procs import merge


def test_fleet_bench_stores_every_mask_and_reports_cpu_latency_and_rates():
    done = run_cli(["-m", "edge_seg.cli", "fleet", "bench", "--devices", "5", "--rate", "2", "--duration", "2",
                    "--consumers", "1", "--drain", "15", "--json"], timeout=120, python=True)
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(done.stdout)
    assert run["consumers"] == 1 and run["masks_sent"] >= 15 and run["masks_stored"] == run["masks_sent"]
    assert run["cpu_ms_per_mask"] > 0 and 0 <= run["latency_ms_p50"] <= run["latency_ms_p99"]
    assert run["db_rows_s"] > 0 and run["objects_s"] > 0


def test_a_split_fleets_statistics_add_up():
    part = {"devices": 300, "elapsed_s": 10.0, "frames": 3000, "cpu_ms_per_frame": 1.0, "statuses": 600,
            "sent": {"mask": 3000, "crop": 600}, "commands_run": {"rollback": 1}}
    total = merge([part, {**part, "devices": 100, "frames": 1000, "cpu_ms_per_frame": 3.0, "elapsed_s": 11.0}])
    assert total["devices"] == 400 and total["processes"] == 2 and total["frames"] == 4000
    assert total["cpu_ms_per_frame"] == 1.5 and total["elapsed_s"] == 11.0  # (3000 x 1 + 1000 x 3) / 4000
    assert total["sent"] == {"mask": 6000, "crop": 1200} and total["commands_run"] == {"rollback": 2}


def test_simulate_against_no_broker_fails_at_once_with_one_line(capsys):
    from edge_seg.cli.main import main
    from edge_seg.demo.broker import free_port

    assert main(["fleet", "simulate", "--devices", "2", "--rate", "0",
                 "--broker", f"mqtt://127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the MQTT broker at 127.0.0.1:" in err[0], err
