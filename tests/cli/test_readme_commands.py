"""README's commands exist: every ``edge-seg COMMAND [ACTION]`` it shows parses, and its Python snippets import."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge_seg.cli.main import build_parser

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _readme_commands() -> list[list[str]]:
    """The command words of every ``edge-seg ...`` in the README, and of ``model ACTION`` written after a slash."""
    found = [m.split() for m in re.findall(r"edge-seg((?: [a-z][a-z0-9-]*)+)", README)]
    found += [["model", action] for action in re.findall(r"/ `model ([a-z-]+)", README)]
    found += [["model", action] for action in re.findall(r"`model [a-z-]+` / `([a-z-]+)`", README)]
    row = next(line for line in README.splitlines() if line.startswith("| `edge-seg model rollback`"))
    found += [["model", action] for action in re.findall(r"/ `([a-z]+)[` ]", row)]
    return sorted({tuple(words) for words in found})


COMMANDS = _readme_commands()


def test_the_readme_is_read():
    for words in [("bench-messages",), ("model", "keygen"), ("model", "status"), ("model", "list"), ("model", "gc")]:
        assert words in COMMANDS
    assert len(COMMANDS) >= 30


def test_a_command_that_does_not_exist_fails(capsys):
    with pytest.raises(AssertionError, match="'edge-seg frobnicate' is not a command"):
        test_every_readme_command_exists(("frobnicate",), capsys)


@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_every_readme_command_exists(words, capsys):
    parser, path = build_parser(), []
    for word in words:
        choices = _subcommands(parser)
        if not choices:
            break  # the rest are arguments (a file name, a bundle, ...)
        assert word in choices or path, f"'edge-seg {' '.join(path + [word])}' is not a command"
        if word not in choices:
            break
        parser, path = choices[word], path + [word]
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(path + ["--help"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("usage: edge-seg " + " ".join(path))


def test_the_readme_python_snippets_import():
    imports = re.findall(r"^\s*(from edge_seg[\w.]* import [\w, ]+)", README, flags=re.M)
    imports += re.findall(r'-c "(from edge_seg[\w.]* import [\w, ]+);', README)
    assert len(imports) >= 2
    code = "\n".join(line.split("#")[0].strip() for line in imports)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
