"""The ``preview:`` config section and how ``edge-seg run`` starts the server from it (cap, deadlines, token)."""

from __future__ import annotations

import signal
import urllib.error
import urllib.request

import pytest

from edge_seg.cli.main import main
from edge_seg.config import ConfigError, parse_config
from edge_seg.errors import EdgeSegError
from edge_seg.loop.runner import build

TOKEN = "0123456789abcdef-preview"


@pytest.fixture(autouse=True)
def _keep_signal_handlers():
    """``edge-seg run`` installs SIGINT/SIGTERM handlers in this process: put pytest's back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_defaults():
    pv = parse_config(None).preview
    assert (pv.max_clients, pv.request_timeout_s, pv.write_timeout_s) == (8, 5.0, 5.0)
    assert pv.token is None and pv.token_file is None and pv.allow_open is False


@pytest.mark.parametrize(("section", "expected"), [
    ({"max_clients": 0}, "preview.max_clients: input should be greater than or equal to 1, got 0"),
    ({"request_timeout_s": 0}, "preview.request_timeout_s: input should be greater than 0, got 0"),
    ({"request_timeout_s": float("inf")}, "preview.request_timeout_s: input should be a finite number"),
    ({"write_timeout_s": -1}, "preview.write_timeout_s: input should be greater than 0, got -1"),
    ({"token": "short"}, "preview.token: at least 16 characters are needed"),
    ({"token": "has a space in the middle"}, "preview.token: only printable ASCII without spaces"),
    ({"token": TOKEN, "token_file": "/etc/edge-seg/preview.token"},
     "preview: set preview.token or preview.token_file, not both"),
    ({"enabled": True, "host": "0.0.0.0"}, "set preview.token (or preview.token_file), or preview.allow_open: true"),
])
def test_mistakes_are_one_line(section, expected):
    with pytest.raises(ConfigError) as err:
        parse_config({"preview": section})
    assert expected in str(err.value) and "\n" not in str(err.value)
    if "token" in section:
        assert section["token"] not in str(err.value), "an error never repeats the token"


@pytest.mark.parametrize("section", [
    {"enabled": True, "host": "0.0.0.0", "token": TOKEN},
    {"enabled": True, "host": "::", "token_file": "/etc/edge-seg/preview.token"},
    {"enabled": True, "host": "0.0.0.0", "allow_open": True},
    {"enabled": True, "host": "localhost"},
    {"enabled": False, "host": "0.0.0.0"},  # not served: nothing to refuse
    {"enabled": True, "host": "camera.example"},  # a name: checked at start, after the bind resolves it
])
def test_off_loopback_with_a_token_or_an_explicit_allow_open_is_accepted(section):
    assert parse_config({"preview": section}).preview.host == section["host"]


def status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def built_preview(tiny_models, **preview):
    config = parse_config({"model": {"path": str(tiny_models["colour_probs_uint8"])},
                           "source": {"uri": "synthetic://?width=160&height=96&fps=30"},
                           "preview": {"enabled": True, "port": 0, **preview}})
    return build(config)


def test_the_runner_starts_the_server_with_the_configured_bounds_and_token_file(tiny_models, tmp_path):
    (tmp_path / "token").write_text(TOKEN + "\n")
    built = built_preview(tiny_models, max_clients=3, request_timeout_s=2.5, write_timeout_s=1.5,
                          token_file=str(tmp_path / "token"))
    try:
        pv = built.preview
        assert (pv.max_clients, pv.request_timeout_s, pv.write_timeout_s) == (3, 2.5, 1.5)
        assert status(pv.url + "stats.json") == 401
        assert status(pv.url + "stats.json", TOKEN) == 200
    finally:
        built.preview.stop()
        built.pipeline.source.close()
        built.segmenter.close()


@pytest.mark.parametrize(("content", "expected"), [
    (None, "preview.token_file: cannot read"),
    ("tiny\n", "preview.token_file: the token in"),
])
def test_an_unusable_token_file_stops_the_start_in_one_line(tiny_models, tmp_path, content, expected):
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(EdgeSegError) as err:
        built_preview(tiny_models, token_file=str(path))
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_run_preview_off_loopback_without_a_token_is_one_line(tmp_path, capsys):
    assert main(["run", "--max-frames", "1", "--state-dir", str(tmp_path / "state"), "--preview", "0.0.0.0:0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edge-seg: error: ") and "set preview.token" in err[0], err

