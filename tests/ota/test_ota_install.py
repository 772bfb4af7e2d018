"""``edge-seg model install|update|rollback|status|list|gc``: the store, checks, smoke test, resumable download."""

from __future__ import annotations

import json
import os

import pytest
from ota_helpers import RangeServer, build_nan_model, bundle, colour_model_dir, default_model_dir, keypair

from edge_seg.cli.main import main
from edge_seg.config import parse_config
from edge_seg.ota.actions import update
from edge_seg.ota.bundle import OtaError, load_public_keys
from edge_seg.ota.fetch import DownloadError
from edge_seg.ota.install import (
    CompatibilityError,
    InstallOptions,
    SmokeTestError,
    install_bundle,
    seed_factory,
    version_key,
)
from edge_seg.ota.store import ModelStore
from edge_seg.segmenter import DEFAULT_MODEL


@pytest.fixture(scope="module")
def env(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("ota_install")
    key, pub = keypair(root / "keys")
    probs = tiny_models["colour_probs_uint8"]
    bundles = {v: bundle(colour_model_dir(probs, root / v, v), key, root / f"{v}.tar")
               for v in ("1.0.0", "1.1.0", "1.2.0")}
    return {"root": root, "key": key, "pub": pub, "keys": load_public_keys([pub]), "bundles": bundles}


def _config(tmp_path, env, **sections):
    data = {"device": {"state_dir": str(tmp_path / "state")}, "ota": {"trusted_keys": [str(env["pub"])]}}
    data.update(sections)
    return parse_config(data)


def test_versions_sort_like_releases():
    assert version_key("1.10.0") > version_key("1.9.9") > version_key("1.9.9-rc2") > version_key("1.9.9-rc1")
    assert version_key("2.0.0+build7") == version_key("2.0.0")


def test_install_update_rollback_status_list_gc_from_the_cli(env, tmp_path, capsys):
    state = str(tmp_path / "state")
    common = ["--state-dir", state, "--pubkey", str(env["pub"])]
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        assert main(["model", "install", str(env["bundles"][version]), *common, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["changed"] and out["version"] == version and out["smoke"]["frames"] == 5
    store = ModelStore(tmp_path / "state" / "models")
    assert store.current_id().startswith("colour-1.2.0-") and store.previous_id().startswith("colour-1.1.0-")
    assert main(["model", "install", str(env["bundles"]["1.2.0"]), *common]) == 0
    assert "already the current model" in capsys.readouterr().out
    assert main(["model", "rollback", "--state-dir", state]) == 0
    assert "current is now colour-1.1.0" in capsys.readouterr().out
    assert store.current_id().startswith("colour-1.1.0-") and store.previous_id().startswith("colour-1.2.0-")
    assert main(["model", "status", "--state-dir", state, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["current"]["version"] == "1.1.0" and status["history"][-1]["event"] == "rollback"
    assert main(["model", "list", "--state-dir", state, "--verify", "--pubkey", str(env["pub"])]) == 0
    listing = capsys.readouterr().out
    assert listing.count("verify: ok") == 3 and "current" in listing and "previous" in listing
    assert main(["model", "gc", "--state-dir", state, "--keep", "2"]) == 0
    assert "removed 1 item(s): colour-1.0.0" in capsys.readouterr().out
    assert len(store.ids()) == 2 and store.current_id() and store.previous_id()


def test_a_damaged_store_entry_fails_verify_and_rollback_refuses_it(env, tmp_path, capsys):
    store = ModelStore(tmp_path / "state" / "models")
    keys, options = env["keys"], InstallOptions(smoke=False)
    first = install_bundle(env["bundles"]["1.0.0"], store, keys, options)
    install_bundle(env["bundles"]["1.1.0"], store, keys, options)
    model = first.path / "colour_probs_uint8.tflite"
    model.write_bytes(model.read_bytes()[:-10])
    assert main(["model", "list", "--state-dir", str(tmp_path / "state"), "--verify",
                 "--pubkey", str(env["pub"])]) == 1
    assert "sha256 mismatch" in capsys.readouterr().out
    with pytest.raises(OtaError, match="sha256 mismatch"):
        store.rollback("test")
    assert store.current_id().startswith("colour-1.1.0-")


def test_compatibility_with_the_device_config(env, tiny_models, tmp_path):
    store = ModelStore(tmp_path / "state" / "models")
    keys = env["keys"]
    install_bundle(env["bundles"]["1.0.0"], store, keys, InstallOptions(smoke=False))
    before = store.current_id()
    with pytest.raises(CompatibilityError, match="redacts class 'person', which the model does not have"):
        install_bundle(env["bundles"]["1.1.0"], store, keys, InstallOptions(smoke=False, redact_classes=["person"]))
    with pytest.raises(CompatibilityError, match="backend 'edgetpu' but the model has no edgetpu file"):
        install_bundle(env["bundles"]["1.1.0"], store, keys, InstallOptions(smoke=False, backend="edgetpu"))
    binary = colour_model_dir(tiny_models["binary_sigmoid_float"], tmp_path / "bin", "2.0.0", dtype="float32",
                              kind="sigmoid", classes=["background", "foreground"])
    data = json.loads((binary / "manifest.json").read_text())
    data["task"] = "binary"
    (binary / "manifest.json").write_text(json.dumps(data))
    path = bundle(binary, env["key"], tmp_path / "bin.tar")
    with pytest.raises(CompatibilityError, match="task is 'binary', the current model's is 'semantic'"):
        install_bundle(path, store, keys, InstallOptions(smoke=False))
    assert store.current_id() == before
    assert install_bundle(path, store, keys, InstallOptions(allow_task_change=True)).changed


def test_smoke_test_refuses_nan_output_and_wrong_shape(env, tiny_models, tmp_path):
    store = ModelStore(tmp_path / "state" / "models")
    keys = env["keys"]
    install_bundle(env["bundles"]["1.0.0"], store, keys, InstallOptions(smoke=False))
    before = store.current_id()
    nan = colour_model_dir(build_nan_model(tmp_path / "nan.tflite"), tmp_path / "nan", "1.5.0", dtype="float32",
                           kind="logits")
    with pytest.raises(SmokeTestError, match="output is not finite"):
        install_bundle(bundle(nan, env["key"], tmp_path / "nan.tar"), store, keys)
    five = colour_model_dir(tiny_models["colour_probs_uint8"], tmp_path / "five", "1.6.0",
                            classes=["a", "b", "c", "d", "e"])
    with pytest.raises(SmokeTestError, match="does not load: manifest says 5 classes, model outputs 4 channels"):
        install_bundle(bundle(five, env["key"], tmp_path / "five.tar"), store, keys)
    assert store.current_id() == before and store.ids() == [before]  # nothing left behind


def test_seed_factory_model_then_signed_updates(env, tmp_path):
    store = ModelStore(tmp_path / "state" / "models")
    seeded = seed_factory(store, DEFAULT_MODEL)
    assert seeded.startswith("edge-seg-default-") and store.current_id() == seeded
    assert seed_factory(store, DEFAULT_MODEL) is None
    store.verify_entry(seeded, env["keys"])  # unsigned factory model: hashes only
    newer = default_model_dir(tmp_path / "newer", "9.0.0")
    result = install_bundle(bundle(newer, env["key"], tmp_path / "newer.tar"), store, env["keys"])
    assert result.previous == seeded and result.smoke["current_infer_ms"] is not None


@pytest.fixture
def served(env):
    def make(cut=None, cut_bytes=4096):
        return RangeServer(env["bundles"]["1.1.0"].read_bytes(), cut=cut, cut_bytes=cut_bytes)
    return make


def test_update_downloads_and_installs(env, tmp_path, served):
    config = _config(tmp_path, env)
    with served() as server:
        result = update(config, server.url)
    assert result.changed and result.manifest.version == "1.1.0" and server.ranges == [None]
    assert not list((tmp_path / "state" / "downloads").iterdir())  # removed once installed


def test_update_resumes_an_interrupted_download_with_range(env, tmp_path, served):
    config = _config(tmp_path, env)
    with served(cut="first") as server:
        result = update(config, server.url)
    size = env["bundles"]["1.1.0"].stat().st_size
    assert result.changed and server.ranges[0] is None and server.ranges[1] == f"bytes={size // 2}-"


def test_truncated_download_is_refused_and_current_unchanged(env, tmp_path, served):
    config = _config(tmp_path, env)
    store = ModelStore(tmp_path / "state" / "models")
    install_bundle(env["bundles"]["1.0.0"], store, env["keys"], InstallOptions(smoke=False))
    before = os.readlink(store.current_link)
    with served(cut="always", cut_bytes=1000) as server:
        with pytest.raises(DownloadError, match=r"is incomplete: 4000 of \d+ bytes after 4 attempts"):
            update(config, server.url)
    assert os.readlink(store.current_link) == before
    assert [r is not None for r in server.ranges] == [False, True, True, True]  # resumed each time


def test_download_over_the_size_limit_is_refused(env, tmp_path, served):
    config = _config(tmp_path, env, ota={"trusted_keys": [str(env["pub"])], "max_bundle_mb": 0.001})
    with served() as server:
        with pytest.raises(DownloadError, match="over the limit of 1048 bytes"):
            update(config, server.url)


def test_update_from_the_cli_with_a_wrong_sha256(env, tmp_path, served, capsys):
    with served() as server:
        code = main(["model", "update", "--url", server.url, "--state-dir", str(tmp_path / "state"),
                     "--pubkey", str(env["pub"]), "--sha256", "ab" * 32])
    assert code == 2 and "the command says abababababab" in capsys.readouterr().err


def test_an_unconfirmed_model_is_rolled_back_after_max_starts(env, tmp_path):
    from edge_seg.service.daemon import Service

    store = ModelStore(tmp_path / "state" / "models")
    first = install_bundle(env["bundles"]["1.0.0"], store, env["keys"], InstallOptions(smoke=False))
    second = install_bundle(env["bundles"]["1.1.0"], store, env["keys"], InstallOptions(smoke=False))
    config = _config(tmp_path, env, model={"path": str(store.current_link)}, ota={"max_starts": 2})
    for _ in range(2):  # e.g. the process crashes on the new model before probation ends
        assert Service.prepare(config).model.path == second.path
    assert Service.prepare(config).model.path == first.path
    state = store.read_state()
    assert "not confirmed by probation in 2 service starts" in state["bad"][second.id]


def test_a_damaged_current_model_is_rolled_back_at_start(env, tmp_path):
    from edge_seg.service.daemon import Service

    store = ModelStore(tmp_path / "state" / "models")
    first = install_bundle(env["bundles"]["1.0.0"], store, env["keys"], InstallOptions(smoke=False))
    second = install_bundle(env["bundles"]["1.1.0"], store, env["keys"], InstallOptions(smoke=False))
    (second.path / "colour_probs_uint8.tflite").write_bytes(b"rotten")
    config = _config(tmp_path, env, model={"path": str(store.current_link)})
    assert Service.prepare(config).model.path == first.path
    assert "damaged" in store.read_state()["bad"][second.id]
