"""Frame sources: one capture kind per module, picked by URI scheme and imported only when used.

``open_source("synthetic://?seed=3")``, ``open_source("clip.mp4", loop=True)``; wrap the result's
factory in ``edge_seg.sources.reconnect.ResilientSource`` to survive stalls and lost cameras.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from edge_seg.sources._common import redact
from edge_seg.sources.base import Frame, Source, SourceEnded, SourceError, SourceUnavailable, SourceUnusable

__all__ = ["Frame", "Source", "SourceEnded", "SourceError", "SourceUnavailable", "SourceUnusable", "SCHEMES",
           "open_source"]

SCHEMES: dict[str, tuple[str, str]] = {  # scheme -> (module, opener function)
    "file": ("edge_seg.sources.opencv", "open_file"),
    "rtsp": ("edge_seg.sources.opencv", "open_rtsp"),
    "v4l2": ("edge_seg.sources.opencv", "open_v4l2"),
    "csi": ("edge_seg.sources.gstreamer", "open_csi"),
    "picam": ("edge_seg.sources.picamera", "open_picam"),
    "images": ("edge_seg.sources.images", "open_images"),
    "synthetic": ("edge_seg.sources.synthetic", "open_synthetic"),
}
LORES_SCHEMES = {"picam"}  # cameras that deliver a second, model-size stream (``lores``)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def open_source(uri: str, *, loop: bool = False, fps: float | None = None, size: tuple[int, int] | None = None,
                lores: tuple[int, int] | None = None, **options) -> Source:
    """Open the source ``uri`` names; a bare path is a video file, or ``images://`` for a directory.

    ``loop``: start again at the end of a file or image directory (else ``SourceEnded``).
    ``fps``: pace files, image directories and synthetic scenes (default: as fast as they are
    read); a mode request for cameras. ``size`` (width, height): the capture size for v4l2/csi/picam,
    the frame size of ``synthetic://``; files and image directories ignore it. ``lores`` (width,
    height): the model input size, for a camera whose ISP can scale a second stream to it
    (``picam://``: ``Frame.lores``, so inference needs no CPU resize); the others ignore it.
    ``options`` go to the scheme's opener (e.g. ``realtime=True`` for ``file://``, ``open_timeout=``
    for ``rtsp://``). Errors are one-line ``SourceError``\\ s: ``SourceUnavailable`` for a live
    source that may come back (worth retrying), ``SourceUnusable`` for one that never will.
    """
    scheme = uri_scheme(uri)
    if scheme is None:
        if not uri.strip():
            raise SourceError("empty source URI; valid schemes: " + valid_schemes())
        scheme = "images" if Path(uri).expanduser().is_dir() else "file"
    else:
        if scheme not in SCHEMES:
            raise SourceError(f"unknown source scheme {scheme}:// in {redact(uri)!r}; valid: {valid_schemes()}")
    module_name, function = SCHEMES[scheme]
    opener = getattr(importlib.import_module(module_name), function)
    if lores is not None and scheme in LORES_SCHEMES:
        options["lores"] = lores
    return opener(uri, loop=loop, fps=fps, size=size, **options)


def uri_scheme(uri: str) -> str | None:
    """The lower-case scheme of ``uri`` (``file`` of ``file://x``), None for a bare path (not checked against
    SCHEMES)."""
    match = _SCHEME.match(uri)
    return None if match is None else match.group(1).lower()


def valid_schemes() -> str:
    """The schemes ``open_source`` takes, for error messages."""
    return ", ".join(f"{s}://" for s in SCHEMES) + " or a file/directory path"
