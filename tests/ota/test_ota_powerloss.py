"""SIGKILL at every checkpoint of ``model install``: ``current`` always resolves to a complete, verified model
(old or new), and the next install succeeds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from ota_helpers import bundle, default_model_dir, keypair

from edge_seg.ota.bundle import load_public_keys
from edge_seg.ota.install import InstallOptions, install_bundle
from edge_seg.ota.store import FAULT_ENV, ModelStore

HERE = Path(__file__).resolve().parents[1]  # tests/, where the helper scripts are


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("powerloss")
    key, pub = keypair(root / "keys")
    keys = load_public_keys([pub])
    old = bundle(default_model_dir(root / "old", "1.0.0"), key, root / "old.tar")
    new = bundle(default_model_dir(root / "new", "1.1.0"), key, root / "new.tar")
    template = root / "template"
    store = ModelStore(template / "models")
    first = install_bundle(old, store, keys, InstallOptions(smoke=False))
    store.mark_good(first.id)
    return {"root": root, "pub": pub, "keys": keys, "new": new, "template": template, "old_id": first.id}


def _driver(setup, work: Path, points: list[int], trace: Path | None = None) -> dict:
    cmd = [sys.executable, str(HERE / "ota_kill_driver.py"), "--template", str(setup["template"]),
           "--bundle", str(setup["new"]), "--pubkey", str(setup["pub"]), "--work", str(work),
           "--points", ",".join(map(str, points))]
    if trace is not None:
        cmd += ["--trace", str(trace)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=HERE.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def _check_store(state: Path, setup, new_id: str) -> str:
    store = ModelStore(state / "models")
    current = store.current_id()
    assert current in (setup["old_id"], new_id), f"{state}: current is {current}"
    assert store.current_link.resolve() == store.path_of(current)
    store.verify_entry(current, setup["keys"])  # complete: every file present with its signed sha256
    if store.previous_id() is not None:
        store.verify_entry(store.previous_id(), setup["keys"])
    return current


def test_sigkill_at_every_install_checkpoint(setup, tmp_path):
    trace = tmp_path / "trace.txt"
    result = _driver(setup, tmp_path / "trace-run", [], trace)
    assert result["trace"] == {"signal": None, "exit": 0}
    steps = [line.split(" ", 1)[1] for line in trace.read_text().splitlines()]
    assert len(steps) >= 40, steps  # 44 with the bundled 141 KB model: a kill point every chunk and write
    new_id = ModelStore(tmp_path / "trace-run" / "trace" / "models").current_id()
    kinds = {s.split(" ")[0] for s in steps}
    assert {"locked", "signature", "hash", "checked", "staging", "write", "wrote", "smoke:", "replaced", "current",
            "previous"} <= kinds

    points = list(range(1, len(steps) + 1))
    results = _driver(setup, tmp_path / "kill", points)
    outcomes = {}
    for k in points:
        assert results[str(k)]["signal"] == signal.SIGKILL, (k, steps[k - 1], results[str(k)])
        state = tmp_path / "kill" / str(k)
        outcomes[k] = _check_store(state, setup, new_id)
        again = install_bundle(setup["new"], ModelStore(state / "models"), setup["keys"], InstallOptions())
        assert again.id == new_id and _check_store(state, setup, new_id) == new_id
        leftovers = [p.name for p in (state / "models").iterdir() if p.name.startswith(".")]
        assert set(leftovers) <= {".lock"}, leftovers
    assert setup["old_id"] in outcomes.values() and new_id in outcomes.values()
    # the switch is the last step that matters: killed before it, the old model is current
    switched = next(k for k in points if steps[k - 1] == "current link renamed")
    assert all(outcomes[k] == setup["old_id"] for k in points if k < switched)
    assert all(outcomes[k] == new_id for k in points if k >= switched)


@pytest.mark.parametrize("point", [3, 30])
def test_the_cli_dies_at_the_injected_point_and_recovers(setup, tmp_path, point):
    import shutil

    state = tmp_path / "state"
    shutil.copytree(setup["template"], state, symlinks=True)
    cmd = [sys.executable, "-m", "edge_seg.cli", "model", "install", str(setup["new"]), "--state-dir", str(state),
           "--pubkey", str(setup["pub"])]
    killed = subprocess.run(cmd, env={**os.environ, FAULT_ENV: str(point)}, capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert _check_store(state, setup, "x") == setup["old_id"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "installed edge-seg-default-1.1.0-" in done.stdout
