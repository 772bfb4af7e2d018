"""Shared fixtures: tiny real TFLite models built once per session."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import instance_builders as ib  # noqa: E402
import tflite_builders  # noqa: E402

from edge_seg.manifest import (  # noqa: E402
    FileEntry,
    InputSpec,
    Manifest,
    OutputSpec,
    sha256_file,
)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """name -> .tflite path for every (kind, io) combination the tests use."""
    root = tmp_path_factory.mktemp("tiny_models")
    specs = {
        "colour_probs_uint8": ("colour_probs", "uint8"),
        "colour_logits_float": ("colour_logits", "float32"),
        "colour_logits_int8": ("colour_logits", "int8"),
        "binary_sigmoid_float": ("binary_sigmoid", "float32"),
        "binary_logits_uint8": ("binary_logits", "uint8"),
    }
    return {name: tflite_builders.build(kind, root / f"{name}.tflite", io=io)
            for name, (kind, io) in specs.items()}


def write_manifest(model: Path, directory: Path, **overrides) -> Path:
    """Copy ``model`` into ``directory`` with a correct colour-model manifest; ``overrides`` edit it."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / model.name
    target.write_bytes(model.read_bytes())
    manifest = Manifest(
        name="colour", version="1.0.0", task="semantic", classes=tflite_builders.COLOUR_CLASSES,
        input=InputSpec(width=32, height=32, dtype="uint8"),
        output=OutputSpec(kind="probabilities"),
        files={"tflite": FileEntry(path=target.name, sha256=sha256_file(target))})
    data = json.loads(manifest.dump())
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    path = directory / "manifest.json"
    path.write_text(json.dumps(data))
    return path


def write_scene_clip(path: Path, seed: int, frames: int, size: tuple[int, int] = (160, 96)) -> Path:
    """An mp4v clip of ``frames`` synthetic scenes (``clips.render_clip(seed, ...)``) at 10 FPS."""
    import cv2

    from edge_seg.demo.clips import render_clip

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, size)
    for scene in render_clip(seed, frames, size):
        writer.write(scene.image)
    writer.release()
    return path


@pytest.fixture(scope="session")
def instance_model_dir(tmp_path_factory):
    """A float yolo_seg model with a letterbox manifest naming its two tensors."""
    root = tmp_path_factory.mktemp("instance_model")
    model = ib.build(root / "yolo_seg.tflite", "float32")
    manifest = Manifest(name="yolo", version="1.0.0", task="instance", classes=["box", "bag"],
                        input=InputSpec(width=64, height=64, resize="letterbox"),
                        output=OutputSpec(kind="yolo_seg", tensors=["Identity_1", "Identity"]),
                        files={"tflite": FileEntry(path=model.name, sha256=sha256_file(model))})
    (root / "manifest.json").write_text(manifest.dump())
    return root


# real PostgreSQL and SeaweedFS S3 servers: one each per session, a fresh database / prefix per test
from pg_server import pg_server, pg_url  # noqa: E402, F401
from s3_server import s3_server, s3_url  # noqa: E402, F401
