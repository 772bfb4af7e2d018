"""Coral Edge TPU backend: a compiled ``*_edgetpu.tflite`` on LiteRT with ``libedgetpu.so.1`` as its delegate.

Options (``BackendOptions.extra``): ``device``: ``usb``, ``pci``, ``usb:0``, ``pci:1``... (default:
the first Edge TPU found); ``library``: another delegate library path. The official libedgetpu
stops working with TensorFlow Lite runtimes newer than 2.11; the community fork
(feranick/libedgetpu) builds against current LiteRT. Ops the compiler left on the CPU run in
LiteRT as usual.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import TYPE_CHECKING

from edge_seg.backends.base import BackendOptions
from edge_seg.backends.litert import LiteRTBackend, interpreter_module
from edge_seg.errors import BackendUnavailable, ModelError

if TYPE_CHECKING:
    from edge_seg.manifest import Manifest

LIBRARY = "libedgetpu.so.1"
_DEVICE_KINDS = ("usb", "pci")


def delegate_options(device: str | None) -> dict:
    """The libedgetpu delegate options for a device string (``usb``, ``pci``, ``usb:0``...)."""
    if device in (None, ""):
        return {}
    kind = device.split(":", 1)[0]
    if kind not in _DEVICE_KINDS:
        raise ModelError(f"Edge TPU device '{device}' is not usb, pci, usb:N or pci:N")
    return {"device": device}


def library_present(library: str = LIBRARY) -> bool:
    """True when the dynamic loader finds ``library``."""
    try:
        ctypes.CDLL(library)
    except OSError:
        return False
    return True


def probe() -> str:
    """What this backend would run on here; raises ``BackendUnavailable`` when libedgetpu is missing."""
    if not library_present():
        raise BackendUnavailable(f"the edgetpu backend needs {LIBRARY}: install libedgetpu1-std (Coral's apt "
                                 "repository) or the feranick/libedgetpu build")
    return LIBRARY


class EdgeTPUBackend(LiteRTBackend):
    """LiteRT with the Edge TPU delegate."""

    name = "edgetpu"

    def resize_batch(self, n: int) -> int:
        """One frame per invoke: a compiled Edge TPU model has a fixed input shape."""
        return 1

    def load(self, path: Path, manifest: "Manifest | None" = None, options: BackendOptions | None = None) -> None:
        options = options or BackendOptions()
        library = options.extra.get("library", LIBRARY)
        device = options.extra.get("device")
        module = interpreter_module()
        if not library_present(library):
            raise BackendUnavailable(
                f"{library} not found: install the Edge TPU runtime (Debian package libedgetpu1-std, or a build of "
                "the feranick/libedgetpu fork for current LiteRT) and plug in the Coral device")
        if not hasattr(module, "load_delegate"):
            raise BackendUnavailable(f"{module.__name__} cannot load delegates: pip install ai-edge-litert")
        try:
            delegate = module.load_delegate(library, delegate_options(device))
        except (ValueError, RuntimeError, OSError) as err:
            where = f" '{device}'" if device else ""
            raise BackendUnavailable(f"no Edge TPU{where} could be opened through {library} ({err}): check the "
                                     "USB/PCIe connection, the apex driver and the user's group") from None
        try:
            interp = module.Interpreter(model_path=str(path), experimental_delegates=[delegate],
                                        num_threads=options.num_threads)
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelError(f"the Edge TPU delegate cannot run {Path(path).name}: {first} "
                             "(compile it with edgetpu_compiler for this runtime version)") from None
        self._adopt(interp, path)
