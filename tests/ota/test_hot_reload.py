"""Hot reload in a running loop (synthetic:// source): zero frames lost on a swap, the new model's identity on
later results, automatic rollback of a bad model (NaN output, wrong shape, errors) with the reason reported."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from ota_helpers import RangeServer, build_nan_model, bundle, colour_model_dir, keypair

from edge_seg.config import parse_config
from edge_seg.loop.runner import build
from edge_seg.ota import actions as ota
from edge_seg.ota.bundle import OtaError, load_public_keys
from edge_seg.ota.hot_reload import agreement, identity_of
from edge_seg.ota.install import InstallOptions, install_bundle
from edge_seg.ota.store import ModelStore
from edge_seg.service.daemon import Service
from edge_seg.service.notify import Notifier


@pytest.fixture(scope="module")
def env(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("hot_reload")
    key, pub = keypair(root / "keys")
    dirs = {"old": colour_model_dir(tiny_models["colour_probs_uint8"], root / "old", "1.0.0"),
            "new": colour_model_dir(tiny_models["colour_logits_int8"], root / "new", "1.1.0", dtype="int8",
                                    kind="logits"),
            "nan": colour_model_dir(build_nan_model(root / "nan.tflite"), root / "nan", "1.2.0", dtype="float32",
                                    kind="logits"),
            "five": colour_model_dir(tiny_models["colour_probs_uint8"], root / "five", "1.3.0",
                                     classes=["a", "b", "c", "d", "e"])}
    return {"pub": pub, "keys": load_public_keys([pub]),
            "bundles": {k: bundle(d, key, root / f"{k}.tar") for k, d in dirs.items()}}


class Recorder:
    name = "record"

    def __init__(self):
        self.rows: list[tuple[int, object]] = []

    def __call__(self, result) -> None:
        self.rows.append((result.frame.seq, result.segmentation.model))


class Loop:
    """The service's loop on a paced synthetic source, running in a thread."""

    def __init__(self, tmp_path, env, pending: str | None = None, **ota_options):
        self.env = env
        self.store = ModelStore(tmp_path / "state" / "models")
        first = install_bundle(env["bundles"]["old"], self.store, env["keys"], InstallOptions(smoke=False))
        self.store.mark_good(first.id)
        self.old_id = first.id
        if pending:
            install_bundle(env["bundles"][pending], self.store, env["keys"], InstallOptions(smoke=False))
        options = {"trusted_keys": [str(env["pub"])], "watch_interval_s": 0.1, "shadow_frames": 5,
                   "probation_frames": 10, "probation_s": 20, **ota_options}
        config = parse_config({"device": {"state_dir": str(tmp_path / "state")},
                               "model": {"path": str(self.store.current_link)},
                               "source": {"uri": "synthetic://?width=160&height=96&seed=3", "fps": 12},
                               "ota": options})
        self.config = Service.prepare(config)
        self.built = build(self.config)
        self.recorder = Recorder()
        self.built.pipeline.stages.append(self.recorder)
        self.service = Service(self.config, self.built, notifier=Notifier(None), signals=False).start()
        self.reloader = self.service.reloader
        self.thread = threading.Thread(target=self.built.pipeline.run, daemon=True)
        self.thread.start()

    def frames(self, n: int, timeout: float = 20.0) -> None:
        target = len(self.recorder.rows) + n
        deadline = time.monotonic() + timeout
        while len(self.recorder.rows) < target:
            assert time.monotonic() < deadline, "the loop stopped producing results"
            time.sleep(0.02)

    def outcome(self, count: int = 1, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while len(self.reloader.outcomes) < count:
            assert time.monotonic() < deadline, f"no reload outcome; status {self.reloader.status()}"
            time.sleep(0.02)
        return self.reloader.outcomes[count - 1]

    def install(self, name: str, **options) -> str:
        return install_bundle(self.env["bundles"][name], self.store, self.env["keys"],
                              InstallOptions(**options)).id

    def stop(self):
        self.built.pipeline.stop()
        self.thread.join(10)
        self.service.close()
        self.built.segmenter.close()
        return self.built.pipeline.stats


@pytest.fixture
def loop(tmp_path, env):
    made = []

    def make(**options):
        made.append(Loop(tmp_path, env, **options))
        return made[-1]

    yield make
    for item in made:
        if item.thread.is_alive():
            item.stop()


def _seqs_continuous(rows) -> None:
    seqs = [seq for seq, _ in rows]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "frames were lost or reordered"


def test_agreement_is_miou_of_two_class_maps():
    a = np.array([[0, 0, 1, 1]], np.uint8)
    assert agreement(a, a) == 1.0
    assert agreement(a, np.array([[0, 1, 1, 1]], np.uint8)) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_hot_swap_loses_no_frame_and_later_results_carry_the_new_model(loop):
    lp = loop()
    old_identity = identity_of(lp.built.segmenter)
    lp.frames(10)
    new_id = lp.install("new")
    outcome = lp.outcome()
    lp.frames(10)
    stats = lp.stop()
    assert outcome["outcome"] == "swapped" and outcome["id"] == new_id and outcome["probation"] == "passed"
    assert outcome["shadow"]["frames"] == 5 and outcome["shadow"]["agreement_miou"] > 0.9
    assert outcome["trigger"] == "models/current changed" and outcome["swap_ms"] < 1000
    rows = lp.recorder.rows
    _seqs_continuous(rows)
    assert stats.dropped == 0 and stats.sink_dropped == 0
    models = [m for _, m in rows]
    first_new = next(i for i, m in enumerate(models) if m != old_identity)
    assert models[first_new].version == "1.1.0" and set(models[:first_new]) == {old_identity}
    assert set(models[first_new:]) == {models[first_new]}  # no old result after the first new one
    assert lp.store.current_id() == new_id and lp.store.read_state()["pending"] is None  # confirmed
    assert lp.built.segmenter.manifest.version == "1.1.0"


def test_nan_model_is_rolled_back_after_the_swap(loop):
    lp = loop(shadow_frames=0)
    lp.frames(5)
    bad_id = lp.install("nan", smoke=False)  # a model whose fault shows only on live frames
    outcome = lp.outcome()
    lp.frames(5)
    lp.stop()
    assert outcome["outcome"] == "rolled_back" and "output is not finite (NaN/Inf)" in outcome["reason"]
    assert lp.store.current_id() == lp.old_id and "not finite" in lp.store.read_state()["bad"][bad_id]
    assert lp.recorder.rows[-1][1].version == "1.0.0"  # back on the old model
    _seqs_continuous(lp.recorder.rows)
    assert "last reload: rolled_back" in lp.service.status_line()


def test_nan_model_is_refused_in_the_shadow_phase(loop):
    lp = loop()
    lp.frames(5)
    lp.install("nan", smoke=False)
    outcome = lp.outcome()
    lp.frames(3)
    lp.stop()
    assert outcome["outcome"] == "rolled_back"
    assert outcome["reason"] == "shadow phase: the new model's output is not finite (NaN/Inf)"
    assert {m.version for _, m in lp.recorder.rows} == {"1.0.0"}  # never ran in the loop
    assert lp.store.current_id() == lp.old_id


def test_wrong_shaped_model_is_rolled_back_with_the_reason(loop):
    lp = loop()
    lp.frames(5)
    lp.install("five", smoke=False)
    outcome = lp.outcome()
    lp.stop()
    assert outcome["outcome"] == "rolled_back"
    assert "does not load: manifest says 5 classes, model outputs 4 channels" in outcome["reason"]
    assert lp.store.current_id() == lp.old_id


def test_a_model_that_raises_in_probation_is_rolled_back(loop):
    lp = loop(shadow_frames=0)
    create = lp.reloader.create

    def broken(path):
        seg = create(path)

        def invoke(batch):
            raise RuntimeError("delegate failed")

        seg.invoke = invoke
        return seg

    lp.reloader.create = broken
    lp.frames(5)
    lp.install("new")
    outcome = lp.outcome()
    lp.frames(5)
    stats = lp.stop()
    assert outcome["outcome"] == "rolled_back" and "the model raised RuntimeError: delegate failed" in outcome["reason"]
    assert lp.recorder.rows[-1][1].version == "1.0.0" and lp.store.current_id() == lp.old_id
    assert lp.built.pipeline.error is None and stats.segmented >= 10  # the loop went on


def test_a_model_installed_while_stopped_gets_its_probation_at_start(loop):
    lp = loop(pending="new")
    deadline = time.monotonic() + 20
    while lp.store.read_state()["pending"] is not None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    lp.stop()
    assert lp.reloader.status()["last"]["outcome"] == "confirmed"


def test_a_bad_model_installed_while_stopped_is_rolled_back_at_start(loop):
    lp = loop(pending="nan")
    outcome = lp.outcome(2)  # the failed probation, then the swap back to the previous model
    lp.frames(3)
    lp.stop()
    assert lp.reloader.outcomes[0]["outcome"] == "rolled_back" and "not finite" in lp.reloader.outcomes[0]["reason"]
    assert outcome["outcome"] == "swapped" and lp.recorder.rows[-1][1].version == "1.0.0"
    assert lp.store.current_id() == lp.old_id


def test_unchanged_current_and_the_mqtt_update_model_command(loop, env):
    lp = loop()
    assert lp.reloader.request("SIGHUP").wait(10)["outcome"] == "unchanged"
    with RangeServer(env["bundles"]["new"].read_bytes()) as server:
        reply = ota.handle_update_model({"url": server.url, "wait_s": 30})
    assert reply["installed"].startswith("colour-1.1.0-") and reply["reload"]["outcome"] == "swapped"
    with RangeServer(env["bundles"]["nan"].read_bytes()) as server:
        with pytest.raises(OtaError, match="smoke test: the model's output is not finite"):
            ota.handle_update_model({"url": server.url})
    with pytest.raises(OtaError, match="unknown field 'branch'"):
        ota.handle_update_model({"url": "http://x", "branch": 1})
    lp.stop()
    with pytest.raises(OtaError, match="no running loop with OTA"):
        ota.handle_update_model({"url": "http://127.0.0.1:9/x"})


def test_the_mqtt_rollback_command_returns_to_the_previous_model_only_from_the_expected_one(loop, env):
    lp = loop()
    with RangeServer(env["bundles"]["new"].read_bytes()) as server:
        installed = ota.handle_update_model({"url": server.url, "wait_s": 30})["installed"]
    with pytest.raises(OtaError, match="not rolling back: current is now"):
        ota.handle_rollback({"expect_current": lp.old_id, "wait_s": 30})  # a fleet rollout's stale view: refused
    reply = ota.handle_rollback({"expect_current": installed, "reason": "fleet rollout r1: wave 2 failed",
                                 "mark_bad": True, "wait_s": 30})
    lp.frames(3)
    lp.stop()
    assert reply["left"] == installed and reply["current"] == lp.old_id
    assert reply["reload"]["outcome"] in ("swapped", "confirmed"), reply
    assert lp.store.current_id() == lp.old_id and lp.recorder.rows[-1][1].version == "1.0.0"
    assert lp.store.read_state()["bad"][installed] == "fleet rollout r1: wave 2 failed"
