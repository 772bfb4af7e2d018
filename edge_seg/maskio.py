"""Class maps as palette PNGs (indexed colour, 8 bit), written and read with Pillow.

A palette PNG shows the classes in colour in any image viewer while its pixels stay class ids.
OpenCV cannot write one, and ``cv2.imread`` of one returns the palette colours, not the ids
(any flag but ``IMREAD_GRAYSCALE``, including ``IMREAD_UNCHANGED``): read ids with
``read_palette_png``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from edge_seg.errors import InputError


def palette_png(class_map: np.ndarray, palette: Sequence[Sequence[int]]) -> bytes:
    """Encode a uint8 (H, W) class map as a palette PNG whose colours are ``palette`` (RGB per id)."""
    labels = np.asarray(class_map)
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise InputError(f"a class map is a uint8 (H, W) array, got {labels.dtype} {labels.shape}")
    colours = np.zeros((256, 3), np.uint8)
    given = np.asarray(palette, np.uint8).reshape(-1, 3)[:256]
    colours[: len(given)] = given
    image = Image.frombytes("P", (labels.shape[1], labels.shape[0]), np.ascontiguousarray(labels).tobytes())
    image.putpalette(colours.ravel().tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def read_palette_png(source: str | os.PathLike | bytes) -> np.ndarray:
    """The class ids (uint8, (H, W)) of a palette or 8-bit greyscale PNG."""
    name = "PNG data" if isinstance(source, bytes) else os.fspath(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            if image.mode not in ("P", "L"):
                raise InputError(f"{name}: expected a palette or 8-bit greyscale PNG, got mode {image.mode}")
            return np.array(image, dtype=np.uint8)
    except FileNotFoundError:
        raise InputError(f"cannot read {name}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise InputError(f"cannot read {name}: {err}") from None


def is_palette_png(data: bytes) -> bool:
    """True for PNG bytes whose IHDR says indexed colour."""
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 25 and data[25] == 3
