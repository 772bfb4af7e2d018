"""Device config: boards validate, errors name the field path and what was expected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_seg.cli.main import main
from edge_seg.config import ConfigError, load_config, parse_config

BOARDS = sorted((Path(__file__).parent.parent / "firmware_configs" / "boards").glob("*.yaml"))


def test_there_is_a_config_per_board_kind():
    names = {p.stem for p in BOARDS}
    assert {"jetson-orin-nano", "jetson-xavier-nx", "rpi5-coral", "rpi4", "x86-dev"} <= names


@pytest.mark.parametrize("path", BOARDS, ids=lambda p: p.stem)
def test_every_board_config_validates(path, capsys):
    config = load_config(path)
    assert config.device.name
    assert main(["config", "check", str(path)]) == 0
    assert "OK" in capsys.readouterr().out


def test_defaults_run_anywhere():
    config = parse_config(None)
    assert config.source.uri == "synthetic://" and config.model.path is None
    assert config.preview.host == "127.0.0.1" and not config.smoothing.enabled


@pytest.mark.parametrize("data, expected", [
    ({"source": {"deadline_s": -1}}, "source.deadline_s: input should be greater than 0, got -1"),
    ({"pipeline": {"every_n": "often"}}, "pipeline.every_n: input should be a valid integer"),
    ({"overlay": {"alpha": 2}}, "overlay.alpha: input should be less than or equal to 1, got 2"),
    ({"preview": {"colour": "red"}}, "preview.colour: unknown field"),
    ({"smoothing": {"hysteresis_low": 0.9, "hysteresis_high": 0.5}},
     "smoothing.hysteresis_low: must not exceed hysteresis_high (0.5), got 0.9"),
    ({"device": {"name": "bad name!"}}, "device.name: string should match pattern"),
])
def test_config_errors_name_the_field_path(data, expected):
    with pytest.raises(ConfigError) as err:
        parse_config(data, "dev.yaml")
    text = str(err.value)
    assert text.startswith("dev.yaml: ") and expected in text and "\n" not in text


def test_config_file_errors(tmp_path, capsys):
    missing = tmp_path / "none.yaml"
    assert main(["config", "check", str(missing)]) == 2
    assert f"config file not found: {missing}" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)


def test_config_schema_is_json_schema(capsys):
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "source" in schema["properties"] and schema["additionalProperties"] is False


@pytest.mark.parametrize(("yaml_text", "expected"), [
    ("source:\n  uri: synthetic://\n  backoff_cap_s: .inf\nota:\n  max_bundle_mb: .inf\n",
     "source.backoff_cap_s: input should be a finite number, got Infinity; ota.max_bundle_mb: input should be a "
     "finite number, got Infinity"),
    ("source:\n  deadline_s: .nan\n", "source.deadline_s: input should be a finite number"),
    ("mqtt:\n  url: mqtt://127.0.0.1:1883\n  status_interval_s: .inf\n", "mqtt.status_interval_s: input should be a "
     "finite number"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply to be a device config"),
])
def test_hostile_configs_are_one_line_errors(tmp_path, capsys, yaml_text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
