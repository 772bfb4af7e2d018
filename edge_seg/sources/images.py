"""``images://DIR``: the image files of a directory in natural sort order, optionally looped and paced.

Files are decoded on the caller's thread (a local decode does not hang). A file that cannot be
decoded is skipped with one logged warning and left out of later passes.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

import cv2

from edge_seg.sources._common import Pacer, wait_until_due
from edge_seg.sources.base import Frame, SourceEnded, SourceError, SourceUnusable

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


def _natural_key(path: Path) -> list:
    """``frame2`` before ``frame10``: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def list_images(directory: Path) -> list[Path]:
    """Image files directly in ``directory`` (by suffix), in natural sort order."""
    return sorted((p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                  key=_natural_key)


class ImageDirSource:
    """Reads the images of one directory as frames; ``SourceEnded`` after the last unless ``loop``."""

    def __init__(self, uri: str, directory: Path, *, loop: bool = False, fps: float | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.uri = uri
        self._files = list_images(directory)
        if not self._files:
            raise SourceError(f"no image files in {directory} (looked for {', '.join(IMAGE_SUFFIXES)})")
        self._loop = loop
        self._pacer = Pacer(fps) if fps else None
        self.lossless = self._pacer is None  # see base.Source
        self.nominal_fps = fps or None
        self._sleep = sleep
        self._index = 0
        self._seq = 0
        self._bad: set[Path] = set()
        self._closed = False

    def _next_image(self):
        """Decode the next readable file; ``SourceEnded`` at the end of a pass without ``loop``."""
        for _ in range(2 * len(self._files)):
            if self._index >= len(self._files):
                if self._seq == 0 and len(self._bad) == len(self._files):
                    break
                if not self._loop:
                    raise SourceEnded(f"end of {self.uri}")
                self._index = 0
            path = self._files[self._index]
            self._index += 1
            if path in self._bad:
                continue
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                return image
            self._bad.add(path)
            log.warning("skipping unreadable image: %s", path)
        raise SourceUnusable(f"no readable images in {self.uri}")

    def read(self, timeout: float) -> Frame | None:
        """The next image; ``None`` if pacing makes it due later than ``timeout`` s from now."""
        if self._closed:
            raise SourceEnded(f"{self.uri}: closed")
        if not wait_until_due(self._pacer, timeout, self._sleep):
            return None
        image = self._next_image()
        if self._pacer is not None:
            self._pacer.tick()
        frame = Frame(image=image, ts=time.time(), seq=self._seq)
        self._seq += 1
        return frame

    def close(self) -> None:
        """Nothing to release; later reads raise ``SourceEnded``."""
        self._closed = True


def open_images(uri: str, *, loop: bool = False, fps: float | None = None, size: tuple[int, int] | None = None,
                **options) -> ImageDirSource:
    """``images://DIR``; ``fps`` paces delivery, ``loop`` starts again after the last file, ``size`` is ignored."""
    if options:
        raise SourceError(f"images:// does not take option(s) {', '.join(sorted(options))}")
    directory = Path(uri[len("images://"):] if uri.startswith("images://") else uri).expanduser()
    if not directory.is_dir():
        raise SourceError(f"no such image directory: {directory}")
    return ImageDirSource(uri, directory, loop=loop, fps=fps)
