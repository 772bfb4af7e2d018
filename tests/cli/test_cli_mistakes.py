"""User mistakes end in one line ``edge-seg: error: ...`` and exit 2 (no traceback, no silent success)."""

from __future__ import annotations

import argparse
import os
import signal
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_seg.cli.main import build_parser, main

INSTANCE_MODEL = Path(__file__).resolve().parents[2] / "edge_seg" / "models" / "instance"


@pytest.fixture(autouse=True)
def _keep_signal_handlers():
    """``edge-seg run`` installs SIGINT/SIGTERM handlers in this process: put pytest's back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def one_line_error(capsys, argv: list[str]) -> str:
    """Run ``edge-seg ARGV``; assert exit 2 and a one-line error; that line without its prefix."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("edge-seg: error: "), err
    assert not any("Traceback" in line for line in err)
    return err[-1].removeprefix("edge-seg: error: ")


def run_argv(tmp_path: Path, *extra: str) -> list[str]:
    return ["run", "--max-frames", "1", "--state-dir", str(tmp_path / "state"), *extra]


# --- run --preview ------------------------------------------------------------------------------

def test_preview_on_a_port_in_use_names_the_address(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        message = one_line_error(capsys, run_argv(tmp_path, "--preview", f":{port}"))
    assert f"preview: cannot listen on 127.0.0.1:{port}" in message and "pick another port" in message


def test_preview_on_an_address_that_is_not_one_is_one_line(tmp_path, capsys):
    message = one_line_error(capsys, run_argv(tmp_path, "--preview", "999.1.1.1:8080"))
    assert "cannot listen on 999.1.1.1:8080" in message and "HOST must be an address" in message


def test_preview_takes_a_bracketed_ipv6_address(tmp_path, capsys):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    assert main(run_argv(tmp_path, "--preview", "[::1]:0")) == 0
    assert "stats: 1 frames" in capsys.readouterr().out


# --- config: ROI, encoding, field names, schemes and backends -------------------------------------

def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("roi", ["[0, 0, 0, 0]", "[-10, -10, 100, 100]", "[5, 5, 100, -1]"])
def test_config_check_refuses_a_roi_without_area_or_with_negative_corner(roi, tmp_path, capsys):
    config = write(tmp_path / "dev.yaml", f"pipeline:\n  roi: {roi}\n")
    message = one_line_error(capsys, ["config", "check", str(config)])
    assert message.startswith(f"{config}: pipeline.roi: ") and "width, height > 0" in message
    assert f"got {roi}" in message


def test_roi_outside_the_frame_is_reported_at_the_first_frame(tmp_path, capsys):
    config = write(tmp_path / "dev.yaml", "pipeline:\n  roi: [5000, 5000, 100, 100]\n")
    assert main(["config", "check", str(config)]) == 0  # the frame size is not known before the run
    capsys.readouterr()
    message = one_line_error(capsys, run_argv(tmp_path, "--config", str(config)))
    assert message.startswith("pipeline.roi [x, y, width, height] = [5000, 5000, 100, 100] does not lie inside")
    assert "x + width <=" in message


def test_roi_inside_the_frame_runs(tmp_path, capsys):
    config = write(tmp_path / "dev.yaml", "pipeline:\n  roi: [10, 10, 100, 80]\n")
    assert main(run_argv(tmp_path, "--config", str(config))) == 0
    assert "stats: 1 frames" in capsys.readouterr().out


def test_config_that_is_not_utf8_is_one_line(tmp_path, capsys):
    config = write(tmp_path / "latin1.yaml", "device:\n  name: caf\xe9\n".encode("latin-1"))
    for argv in (["config", "check", str(config)], run_argv(tmp_path, "--config", str(config))):
        message = one_line_error(capsys, argv)
        assert message == f"{config}: not UTF-8 text (byte 0xe9 at offset 19): save the file as UTF-8"


def test_validator_messages_name_the_field_and_values(tmp_path, capsys):
    config = write(tmp_path / "dev.yaml", "smoothing:\n  hysteresis_low: 0.9\n  hysteresis_high: 0.5\n"
                                          "mqtt:\n  reconnect_min_s: 9\n  reconnect_max_s: 3\n")
    message = one_line_error(capsys, ["config", "check", str(config)])
    assert "smoothing.hysteresis_low: must not exceed hysteresis_high (0.5), got 0.9" in message
    assert "mqtt.reconnect_min_s: must not exceed reconnect_max_s (3), got 9" in message
    assert "dict" not in message and "value error" not in message.lower()
    message = one_line_error(capsys, run_argv(tmp_path, "--broker", "bogus"))
    assert message == ("command line: mqtt.url: broker URL must look like mqtt://host:1883 or "
                       "mqtts://user@host:8883, got 'bogus'")


def test_config_check_knows_the_source_schemes_and_backends(tmp_path, capsys):
    config = write(tmp_path / "dev.yaml", "source:\n  uri: bogus://user:secret@cam/x\nmodel:\n  backend: nope\n")
    message = one_line_error(capsys, ["config", "check", str(config)])
    assert "model.backend: unknown backend (valid: edgetpu, litert, onnxruntime, tensorrt), got \"nope\"" in message
    assert "source.uri: unknown scheme bogus:// (valid: file://, rtsp://" in message and "synthetic://" in message
    assert "secret" not in message and "bogus://user:***@cam/x" in message
    for uri in ("synthetic://?seed=3", "clip.mp4", "RTSP://cam/stream"):  # a bare path is a file, schemes any case
        write(config, f"source:\n  uri: {uri}\nmodel:\n  backend: litert\n")
        assert main(["config", "check", str(config)]) == 0


# --- run: outputs, state dir, tiling ------------------------------------------------------------

@pytest.mark.parametrize("flag, target, expected", [
    ("--jsonl", "DIR", "JSONL output (output.jsonl, --jsonl): {tmp}/dir is a directory"),
    ("--jsonl", "/proc/x.jsonl", "JSONL output (output.jsonl, --jsonl): cannot write /proc/x.jsonl"),
    ("--jsonl", "/proc/none/x.jsonl", "cannot create directory /proc/none"),
    ("--out", "/proc/x.mp4", "video output (output.video, --out): cannot write /proc/x.mp4"),
    ("--out", "DIR", "video output (output.video, --out): {tmp}/dir is a directory"),
    ("--out", "{tmp}/clip.nope", "cannot write a video to {tmp}/clip.nope: OpenCV has no encoder for '.nope'"),
])
def test_unwritable_outputs_fail_before_the_run(flag, target, expected, tmp_path, capsys):
    (tmp_path / "dir").mkdir()
    target = str(tmp_path / "dir") if target == "DIR" else target.format(tmp=tmp_path)
    message = one_line_error(capsys, run_argv(tmp_path, "--preview", ":0", flag, target))
    assert expected.format(tmp=tmp_path) in message
    assert "stats:" not in capsys.readouterr().out
    assert not Path(tmp_path / "clip.nope").exists()


def test_outputs_are_written_in_new_directories(tmp_path, capsys):
    video, jsonl = tmp_path / "a" / "clip.mp4", tmp_path / "b" / "frames.jsonl"
    assert main(run_argv(tmp_path, "--out", str(video), "--jsonl", str(jsonl))) == 0
    assert video.stat().st_size > 1000 and len(jsonl.read_text().splitlines()) == 1


def test_unwritable_state_dir_is_named(tmp_path, capsys):
    message = one_line_error(capsys, ["run", "--max-frames", "1", "--broker", "mqtt://127.0.0.1:1",
                                      "--state-dir", "/proc/xx"])
    assert message.startswith("cannot create the MQTT outbox directory /proc/xx: ")
    assert "device.state_dir (--state-dir)" in message


def test_a_failed_start_closes_the_outputs_already_opened(tmp_path):
    from edge_seg.config import parse_config
    from edge_seg.errors import EdgeSegError
    from edge_seg.loop.runner import build

    jsonl = tmp_path / "frames.jsonl"
    config = parse_config({"output": {"jsonl": str(jsonl)}, "mqtt": {"url": "mqtt://127.0.0.1:1"},
                           "device": {"state_dir": "/proc/xx"}})  # the publisher, made after the JSONL sink, fails
    with pytest.raises(EdgeSegError, match="outbox directory") as failed:
        build(config)
    # the traceback (still held) keeps the failed start's frames alive: only an explicit close frees the file
    assert failed.traceback and jsonl.exists()
    assert not any(os.path.realpath(fd) == str(jsonl.resolve()) for fd in Path("/proc/self/fd").iterdir())


def test_tiling_an_instance_model_is_refused_at_start(tmp_path, capsys):
    config = write(tmp_path / "dev.yaml", f"model:\n  path: {INSTANCE_MODEL}\n"
                                          "pipeline:\n  tiling:\n    enabled: true\n")
    message = one_line_error(capsys, run_argv(tmp_path, "--config", str(config)))
    assert "pipeline.tiling works with semantic and binary models only" in message
    assert "is an instance model: set pipeline.tiling.enabled: false" in message


# --- bench, infer --------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, expected", [
    (["--frames", "0"], "--frames must be at least 1, got 0"),
    (["--frames", "-5"], "--frames must be at least 1, got -5"),
    (["--loop-frames", "0"], "--loop-frames must be at least 1, got 0"),
    (["--width", "0"], "--width and --height must be at least 16 (the generated clip's smallest frame), got 0x720"),
    (["--height", "-1"], "got 1280x-1"),
    (["--width", "10", "--height", "10"], "got 10x10"),
    (["--csv", "/proc/x.csv"], "--csv: cannot write /proc/x.csv"),
    (["--plot", "p.png"], "--plot draws the --compare comparison"),
    (["--compare", "no-such-model"], "model not found: no-such-model"),
    (["--compare", "@nope"], "backend 'nope' is not available in this version"),
    (["--compare", "@litert", "--plot", "/proc/p.png"], "--plot: cannot write /proc/p.png"),
    (["--std", "0"], "input normalisation: std must not contain 0, got --std 0"),
])
def test_bench_mistakes_are_reported_before_any_bench(extra, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = one_line_error(capsys, ["bench", "--json", *extra])
    assert expected in message
    assert capsys.readouterr().out == ""  # no bench ran (300 frames at 1280x720 would take a while)
    assert list(tmp_path.iterdir()) == []  # and nothing was written


def test_bench_compare_writes_csv_and_default_plot(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--frames", "2", "--width", "64", "--height", "48", "--compare", "@litert",
                 "--mean", "127.5", "--std", "127.5", "--csv", "r/x.csv"]) == 0
    assert "comparison plot: out/bench_compare.png" in capsys.readouterr().out
    assert (tmp_path / "out" / "bench_compare.png").stat().st_size > 0
    assert (tmp_path / "r" / "x.csv").read_text().startswith("label,section,stage")


def test_infer_std_zero_is_one_line(tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "frame.png"), np.zeros((48, 64, 3), np.uint8))
    message = one_line_error(capsys, ["infer", str(tmp_path), "--std", "1,0,1", "--out", str(tmp_path / "out")])
    assert message == "input normalisation: std must not contain 0, got --std 1,0,1"


# --- help ------------------------------------------------------------------------------------------

def test_every_argument_has_help():
    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "edge-seg")
    assert missing == []
