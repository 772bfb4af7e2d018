"""Inference backends: one module per runtime, picked by name or by model file suffix."""

from edge_seg.backends.base import Backend, BackendOptions, TensorSpec
from edge_seg.backends.registry import available, backend_for_path, create, require

__all__ = ["Backend", "BackendOptions", "TensorSpec", "available", "backend_for_path", "create",
           "require"]
