"""Backend registry: choice by suffix, and a probe that names what to install."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from edge_seg.backends import registry
from edge_seg.errors import BackendUnavailable


@pytest.mark.parametrize("name, backend", [("m_edgetpu.tflite", "edgetpu"), ("m.tflite", "litert"),
                                           ("m.engine", "tensorrt"), ("m.plan", "tensorrt"), ("m.onnx", "onnxruntime")])
def test_backend_is_picked_by_the_longest_suffix(name, backend):
    assert registry.backend_for_path(Path(name)) == backend


def test_probe_reports_the_runtime_or_what_to_install():
    assert registry.probe("litert").startswith("runtime ")
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(BackendUnavailable, match="pip install tensorrt"):
            registry.probe("tensorrt")
    with pytest.raises(BackendUnavailable, match="available: "):
        registry.probe("openvino")
