"""Signed bundles: pack, verify, and every refusal with its own message; ``current`` never moves on a refusal."""

from __future__ import annotations

import json
import os
import tarfile

import pytest
from ota_helpers import bundle, colour_model_dir, craft_bundle, keypair

from edge_seg.cli.main import main
from edge_seg.ota.bundle import (
    BundleError,
    IntegrityError,
    OtaError,
    SignatureError,
    load_public_keys,
    pack,
    safe_member_path,
    verify_bundle,
)
from edge_seg.ota.install import DowngradeError, InstallOptions, install_bundle
from edge_seg.ota.store import ModelStore


@pytest.fixture(scope="module")
def env(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("ota_bundle")
    key, pub = keypair(root / "keys")
    other_key, other_pub = keypair(root / "keys", "other")
    v1 = colour_model_dir(tiny_models["colour_probs_uint8"], root / "v1", "1.0.0")
    v2 = colour_model_dir(tiny_models["colour_probs_uint8"], root / "v2", "1.1.0")
    v0 = colour_model_dir(tiny_models["colour_probs_uint8"], root / "v0", "0.9.0")
    return {"root": root, "key": key, "pub": pub, "other_key": other_key, "keys": load_public_keys([pub]),
            "v1": v1, "v2": v2, "v0": v0}


def test_pack_and_verify_round_trip(env, tmp_path, capsys):
    out = tmp_path / "m.tar.gz"
    result = pack(env["v2"], env["key"], out)
    verified = verify_bundle(out, env["keys"])
    assert verified.manifest.version == "1.1.0" and verified.digest == result.digest
    assert verified.key_id == result.key_id and list(verified.files) == ["colour_probs_uint8.tflite"]
    with tarfile.open(out) as tar:
        assert tar.getnames()[:2] == ["manifest.json", "manifest.sig"]
    assert main(["model", "verify", str(out), "--pubkey", str(env["pub"])]) == 0
    assert "OK: colour 1.1.0" in capsys.readouterr().out


def test_pack_refuses_a_manifest_whose_hash_disagrees(env, tmp_path):
    bad = colour_model_dir(env["v1"] / "colour_probs_uint8.tflite", tmp_path / "bad")
    data = json.loads((bad / "manifest.json").read_text())
    data["files"]["tflite"]["sha256"] = "0" * 64
    (bad / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(OtaError, match="the manifest says 000000000000"):
        pack(bad, env["key"], tmp_path / "x.tar")


@pytest.mark.parametrize("name, ok", [("model.tflite", True), ("sub/model.tflite", True), ("../x", False),
                                      ("/etc/passwd", False), ("a/../../x", False), ("./a", False), ("a//b", False),
                                      ("", False), ("a\\b", False)])
def test_safe_member_paths(name, ok):
    assert safe_member_path(name) is ok


@pytest.fixture
def store(env, tmp_path):
    """A store with colour 1.0.0 installed (current)."""
    store = ModelStore(tmp_path / "state" / "models")
    install_bundle(bundle(env["v1"], env["key"], tmp_path / "v1.tar"), store, env["keys"], InstallOptions(smoke=False))
    return store


def _refused(env, store, path, error, match, **options):
    before = os.readlink(store.current_link)
    with pytest.raises(error, match=match) as info:
        install_bundle(path, store, env["keys"], InstallOptions(smoke=False, **options))
    assert os.readlink(store.current_link) == before  # current unchanged
    assert not [p for p in store.root.iterdir() if p.name.startswith(".staging-")]
    return str(info.value)


def test_each_bad_bundle_is_refused_with_its_own_message(env, store, tmp_path):
    v2, key = env["v2"], env["key"]
    messages = {
        "tampered file": _refused(env, store, craft_bundle(v2, key, tmp_path / "t.tar", tamper_file=True),
                                  IntegrityError, "sha256 of colour_probs_uint8.tflite is .*[(]tampered"),
        "tampered manifest": _refused(env, store, craft_bundle(v2, key, tmp_path / "tm.tar", tamper_manifest=True),
                                      SignatureError, "does not match the manifest"),
        "wrong key": _refused(env, store, bundle(v2, env["other_key"], tmp_path / "w.tar"),
                              SignatureError, "which this device does not trust"),
        "unsigned": _refused(env, store, craft_bundle(v2, None, tmp_path / "u.tar"), SignatureError, "is unsigned"),
        "path traversal": _refused(env, store, craft_bundle(v2, key, tmp_path / "p.tar",
                                                            extra=[("../../evil.sh", b"x", {})]),
                                   BundleError, "unsafe path .*path traversal"),
        "absolute path": _refused(env, store, craft_bundle(v2, key, tmp_path / "a.tar",
                                                           extra=[("/etc/cron.d/x", b"x", {})]),
                                  BundleError, "'/etc/cron.d/x' has an unsafe path"),
        "symlink": _refused(env, store, craft_bundle(v2, key, tmp_path / "s.tar", symlink_model=True),
                            BundleError, "is a symlink"),
        "hard link": _refused(env, store, craft_bundle(v2, key, tmp_path / "h.tar", extra=[
            ("x", b"", {"type": tarfile.LNKTYPE, "linkname": "manifest.json"})]), BundleError, "is a hard link"),
        "device": _refused(env, store, craft_bundle(v2, key, tmp_path / "d.tar", extra=[
            ("dev", b"", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3})]), BundleError, "device file"),
        "unlisted": _refused(env, store, craft_bundle(v2, key, tmp_path / "x.tar", extra=[("extra.bin", b"x", {})]),
                             BundleError, "not listed in the signed manifest"),
        "downgrade": _refused(env, store, bundle(env["v0"], key, tmp_path / "v0.tar"), DowngradeError,
                              "refusing downgrade: the bundle is colour 0.9.0, the current model is 1.0.0"),
    }
    full_path = bundle(v2, key, tmp_path / "full.tar")
    with tarfile.open(full_path) as tar:
        member = tar.getmember("colour_probs_uint8.tflite")
        cut = member.offset_data + member.size // 2  # in the middle of the model file
    (tmp_path / "cut.tar").write_bytes(full_path.read_bytes()[:cut])
    messages["truncated"] = _refused(env, store, tmp_path / "cut.tar", BundleError, "truncated")
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 10)
    messages["not a tar"] = _refused(env, store, tmp_path / "junk.tar", BundleError, "not a tar archive|truncated")
    assert len(set(messages.values())) == len(messages)  # each its own message


def test_same_version_other_content_and_allow_downgrade(env, store, tmp_path):
    other = colour_model_dir(env["v1"] / "colour_probs_uint8.tflite", tmp_path / "same", "1.0.0", classes=[
        "r", "g", "b", "d"])
    path = bundle(other, env["key"], tmp_path / "same.tar")
    _refused(env, store, path, DowngradeError, "same version as the current model but different content")
    result = install_bundle(bundle(env["v0"], env["key"], tmp_path / "v0.tar"), store, env["keys"],
                            InstallOptions(smoke=False, allow_downgrade=True))
    assert result.changed and store.current_id() == result.id and result.manifest.version == "0.9.0"


def test_no_trusted_key_configured(env, store, tmp_path):
    path = bundle(env["v2"], env["key"], tmp_path / "v2.tar")
    before = os.readlink(store.current_link)
    with pytest.raises(SignatureError, match="no trusted OTA public key is configured"):
        install_bundle(path, store, {}, InstallOptions(smoke=False))
    assert os.readlink(store.current_link) == before
