"""A command whose optional extra is not installed ends in one line naming the pip install, not a traceback.

The extras are installed here, so the test hides them: a ``sitecustomize`` on ``PYTHONPATH`` makes every
import of the named top-level modules fail exactly as it does where the package is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HIDER = '''
import os, sys
_HIDDEN = set(filter(None, os.environ.get("HIDE_MODULES", "").split(",")))
class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Hide())
'''


def _run(tmp_path, hidden: str, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "hide").mkdir(exist_ok=True)
    (tmp_path / "hide" / "sitecustomize.py").write_text(HIDER)
    env = dict(os.environ, HIDE_MODULES=hidden,
               PYTHONPATH=os.pathsep.join([str(tmp_path / "hide"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "edge_seg.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120, cwd=tmp_path)


@pytest.mark.parametrize(("hidden", "args", "extra"), [
    ("tensorflow", ["convert", "train", "--data", "ds", "--out", "work"], "convert"),
    ("paho", ["consume", "--broker", "mqtt://127.0.0.1:1", "--out", "store", "--duration", "1"], "device"),
])
def test_a_missing_extra_is_one_line_naming_the_install(tmp_path, hidden, args, extra):
    out = _run(tmp_path, hidden, *args)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"edge-seg: error: 'edge-seg {args[0]}' needs a package that is missing: module '{hidden}' is not "
        f"installed: pip install 'edge-seg[{extra}]'"]


def test_a_missing_module_of_no_extra_is_still_a_traceback(tmp_path):
    """Only the extras' modules are a user's install to fix; anything else missing is a bug to see."""
    out = _run(tmp_path, "yaml", "config", "check", "nothing.yaml")
    assert out.returncode == 1 and "Traceback" in out.stderr and "ModuleNotFoundError" in out.stderr
