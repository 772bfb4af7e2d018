"""Helpers for the OTA, hot reload, service and doctor tests: keys, model dirs, bundles, a Range HTTP server."""

from __future__ import annotations

import http.server
import io
import json
import shutil
import tarfile
import threading
from pathlib import Path

import tflite_builders

from edge_seg.manifest import FileEntry, InputSpec, Manifest, OutputSpec, sha256_file
from edge_seg.ota.bundle import MANIFEST_NAME, SIG_NAME, generate_keypair, load_private_key, pack, sign_manifest
from edge_seg.segmenter import DEFAULT_MODEL


def keypair(directory: Path, name: str = "fleet") -> tuple[Path, Path]:
    return generate_keypair(Path(directory) / name)


def default_model_dir(directory: Path, version: str = "1.0.0", name: str | None = None) -> Path:
    """A copy of the bundled model with another version (and name)."""
    directory = Path(directory)
    shutil.copytree(DEFAULT_MODEL, directory)
    data = json.loads((directory / MANIFEST_NAME).read_text())
    data["version"] = version
    if name:
        data["name"] = name
    (directory / MANIFEST_NAME).write_text(json.dumps(data, indent=2))
    return directory


def colour_model_dir(model: Path, directory: Path, version: str = "1.0.0", name: str = "colour",
                     classes: list[str] | None = None, dtype: str = "uint8", kind: str = "probabilities") -> Path:
    """A tiny colour model (tests/tflite_builders.py) with its manifest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / model.name
    shutil.copyfile(model, target)
    manifest = Manifest(name=name, version=version, task="semantic",
                        classes=classes or tflite_builders.COLOUR_CLASSES,
                        input=InputSpec(width=32, height=32, dtype=dtype), output=OutputSpec(kind=kind),
                        files={"tflite": FileEntry(path=target.name, sha256=sha256_file(target))})
    (directory / MANIFEST_NAME).write_text(manifest.dump())
    return directory


def build_nan_model(path: Path) -> Path:
    """A float 32x32 colour-shaped model whose outputs are all NaN."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 32, 32, 3], tf.float32)])
    def model(x):
        logits = tflite_builders._colour_logits(tf, x)
        return logits + tf.math.log(-1.0 - x[..., :1])  # log of a negative number: NaN everywhere

    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    Path(path).write_bytes(converter.convert())
    return Path(path)


def bundle(model_dir: Path, key: Path, out: Path) -> Path:
    return pack(model_dir, key, out).path


def _add(tar: tarfile.TarFile, name: str, data: bytes, **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in attrs.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


def craft_bundle(model_dir: Path, key: Path | None, out: Path, *, tamper_file: bool = False,
                 tamper_manifest: bool = False, extra: list[tuple[str, bytes, dict]] | None = None,
                 symlink_model: bool = False) -> Path:
    """A bundle written by hand, to break one rule at a time (the manifest stays validly signed unless asked)."""
    manifest = json.loads((Path(model_dir) / MANIFEST_NAME).read_text())
    sig = sign_manifest(manifest, load_private_key(key)) if key is not None else None
    if tamper_manifest:
        manifest["version"] = manifest["version"] + "1"
    with tarfile.open(out, "w") as tar:
        _add(tar, MANIFEST_NAME, json.dumps(manifest).encode())
        if sig is not None:
            _add(tar, SIG_NAME, json.dumps(sig).encode())
        for entry in manifest["files"].values():
            data = (Path(model_dir) / entry["path"]).read_bytes()
            if tamper_file:
                data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
            if symlink_model:
                _add(tar, entry["path"], b"", type=tarfile.SYMTYPE, linkname="/etc/passwd")
            else:
                _add(tar, entry["path"], data)
        for name, data, attrs in extra or []:
            _add(tar, name, data, **attrs)
    return Path(out)


class RangeServer:
    """Serves bytes at ``/bundle`` on 127.0.0.1 with ``Range: bytes=N-``; can cut responses short.

    ``cut``: None (never), "first" (the first response stops half-way), "always" (every response
    stops after ``cut_bytes``). ``ranges`` records the Range headers received.
    """

    def __init__(self, data: bytes, cut: str | None = None, cut_bytes: int = 4096):
        self.data, self.cut, self.cut_bytes = data, cut, cut_bytes
        self.ranges: list[str | None] = []
        self.responses = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                return None

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                body = server.data[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.data) - 1}/{len(server.data)}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                server.responses += 1
                limit = len(body)
                if server.cut == "always" or (server.cut == "first" and server.responses == 1):
                    limit = min(limit, server.cut_bytes if server.cut == "always" else len(body) // 2)
                self.wfile.write(body[:limit])
                self.wfile.flush()
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/bundle"

    def __enter__(self) -> "RangeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
