"""Several cameras in one config (``sources:``) and on the command line (``--source NAME=URI``)."""

from __future__ import annotations

import pytest

from edge_seg.cli.main import _run_config, build_parser
from edge_seg.config import ConfigError, parse_config


def _cameras(data: dict):
    return parse_config(data).cameras()


def test_single_source_is_one_camera_with_the_device_settings():
    (cam,) = _cameras({"source": {"uri": "synthetic://?seed=2"}, "pipeline": {"every_n": 3}})
    assert (cam.name, cam.uri, cam.every_n) == ("cam0", "synthetic://?seed=2", 3)


def test_sources_inherit_and_override_pipeline_zones_and_publish_policy():
    zone = {"name": "door", "points": [[0, 0], [10, 0], [10, 10]], "classes": ["person"]}
    a, b = _cameras({"sources": [{"name": "a", "uri": "synthetic://"},
                                 {"name": "b", "uri": "synthetic://", "every_n": 2, "roi": [0, 0, 8, 8], "zones": [],
                                  "publish": {"max_rate": 1}, "deadline_s": 0.5}],
                     "pipeline": {"every_n": 4}, "zones": [zone], "mqtt": {"policy": {"every_n": 7}}})
    assert (a.every_n, a.roi, [z.name for z in a.zones], a.publish.max_rate, a.publish.every_n) == (4, None, ["door"],
                                                                                                     5.0, 7)
    assert (b.every_n, b.roi, b.zones, b.publish.max_rate, b.publish.every_n, b.deadline_s) == (2, (0, 0, 8, 8), [],
                                                                                                 1.0, 7, 0.5)


@pytest.mark.parametrize("sources, message", [
    ([{"name": "a", "uri": "synthetic://"}, {"name": "a", "uri": "synthetic://"}], "camera name 'a' is used twice"),
    ([{"name": "a/b", "uri": "synthetic://"}], "sources.0.name: string should match pattern"),
    ([{"name": "status", "uri": "synthetic://"}], "'status' is a device topic"),
    ([{"uri": "synthetic://"}], "sources.0.name: field required"),
    ([{"name": "a", "uri": "bogus://x"}], "sources.0.uri: unknown scheme"),
])
def test_bad_camera_lists_fail_with_one_line_naming_the_field(sources, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_config({"sources": sources})
    assert "\n" not in str(err.value)


def test_source_and_sources_together_are_refused():
    with pytest.raises(ConfigError, match="set source: .* or sources: .*, not both"):
        parse_config({"source": {"uri": "file://x.mp4"}, "sources": [{"name": "a", "uri": "synthetic://"}]})


def test_repeated_source_flags_name_the_cameras():
    args = build_parser().parse_args(["run", "--source", "front=synthetic://?seed=1", "--source",
                                      "images:///tmp/x", "--source", "yard=file://clip.mp4"])
    config = _run_config(args)
    assert [(c.name, c.uri) for c in config.sources] == [("front", "synthetic://?seed=1"),
                                                         ("cam1", "images:///tmp/x"), ("yard", "file://clip.mp4")]


def test_one_source_flag_keeps_the_single_camera_form():
    config = _run_config(build_parser().parse_args(["run", "--source", "synthetic://?seed=3"]))
    assert config.sources == [] and config.source.uri == "synthetic://?seed=3"


@pytest.mark.parametrize("flag", ["a/b=synthetic://", "my cam=rtsp://cam/1"])
def test_a_bad_camera_name_before_a_uri_is_named_not_taken_for_a_file(flag):
    with pytest.raises(ConfigError, match="sources.0.name"):
        _run_config(build_parser().parse_args(["run", "--source", flag]))


def test_a_file_path_with_an_equals_sign_stays_a_path():
    config = _run_config(build_parser().parse_args(["run", "--source", "/data/run=1/clip.mp4"]))
    assert config.sources == [] and config.source.uri == "/data/run=1/clip.mp4"
