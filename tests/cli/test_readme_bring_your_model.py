"""Every ``edge-seg`` command of README's "Bring your model" section parses with all its flags."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from edge_seg.cli.main import build_parser

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
SECTION = README[README.index("### Bring your model"):README.index("### Dataset layout")]
COMMANDS = re.findall(r"`edge-seg ([^`]+)`", SECTION)


def test_the_section_shows_commands():
    assert len(COMMANDS) >= 9
    assert any("--norm imagenet" in c for c in COMMANDS) and any("--input-size" in c for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_of_the_section_parses(command):
    words = shlex.split(command)
    if words[:2] == ["manifest", "init"] and len(words) == 3 and words[2] == "MODEL":
        words[2] = "model.onnx"
    args = build_parser().parse_args(words)  # SystemExit (status 2) on an unknown flag or value
    assert callable(args.func)
