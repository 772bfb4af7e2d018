"""Frame-size class maps with smooth edges: bilinear upsampling of uint8 probabilities, then argmax/threshold.

Nearest-resizing the model-resolution label map gives staircase edges (a 192² grid blown up ~7x at
720p). Instead the per-class probabilities, kept as uint8 at model resolution (``uint8_probabilities``),
are split at model resolution and each plane is upsampled bilinearly (``bilinear``:
``cv2.warpAffine`` with the pixel-centre geometry of ``cv2.resize(INTER_LINEAR)`` and the same edge
clamping, within one uint8 step of it and about twice as fast at 720p; fixed-point uint8) into
reused buffers, and the class map is taken at frame size: argmax over the planes with OpenCV
compare/max (multi-class), or one comparison with the threshold (binary, one plane).

Multi-class maps interpolate only where it matters (``_edges_only``): away from a class edge the
bilinear argmax is the nearest label, so the nearest resize of the model-resolution argmax is kept
there and only the frame blocks of model pixels next to another label are sampled (``cv2.remap``)
and argmax-ed; with more than ``EDGE_SHARE_UP_TO`` of the model pixels on an edge, or a frame
smaller than the model, every frame pixel is interpolated (``_full``).

Quantised probabilities are used as their raw codes: dequantisation is the same increasing affine
map for every channel, and bilinear weights sum to 1, so the argmax of interpolated codes is the
argmax of interpolated probabilities. At a model pixel centre the result is the model's own label
(binary planes are clamped around the threshold so that holds exactly; see ``binary_uint8``).
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

UPSAMPLE_MODES = ("bilinear", "nearest")
_scratch = threading.local()  # per thread: {(height, width, channels): buffers}


def uint8_probabilities(raw: np.ndarray, quantized_uint8: bool) -> np.ndarray:
    """Per-class probabilities (h, w, C) as uint8 from raw probability codes or float probabilities.

    ``quantized_uint8``: ``raw`` holds uint8/int8 codes of one per-tensor affine quantisation (used
    as codes, int8 shifted by 128: order and convex combinations are kept); otherwise ``raw`` is
    float probabilities in [0, 1], scaled by 255 and rounded.
    """
    if quantized_uint8:
        if raw.dtype == np.int8:
            return raw.view(np.uint8) ^ np.uint8(0x80)
        return np.array(raw, dtype=np.uint8, copy=True)  # the backend may reuse its output buffer
    out = np.multiply(raw, 255.0, dtype=np.float32)
    np.clip(out, 0.0, 255.0, out=out)
    return np.add(out, 0.5, out=out).astype(np.uint8)


def channel_planes(image: np.ndarray) -> list[np.ndarray]:
    """The channel planes (h, w) of an (h, w, C) array: views when it is a [C, h, w] array seen through a
    transpose (an NCHW model output), else ``cv2.split`` of it."""
    chw = image.transpose(2, 0, 1)
    if chw.flags.c_contiguous:
        return list(chw)
    return cv2.split(np.ascontiguousarray(image))


def binary_threshold(threshold: float) -> int:
    """The uint8 threshold (1..255) matching probability ``threshold`` on the 0..255 scale."""
    return int(min(max(np.floor(threshold * 255.0 + 0.5), 1), 255))


def binary_uint8(prob: np.ndarray, labels: np.ndarray, threshold_u8: int) -> np.ndarray:
    """Foreground probability (h, w) float32 → uint8 (h, w, 1), clamped so that ``>= threshold_u8``
    is exactly ``labels == 1`` at every model pixel (labels may come from hysteresis, not the threshold)."""
    u8 = uint8_probabilities(prob, quantized_uint8=False)
    fg = labels.astype(bool)
    np.copyto(u8, np.maximum(u8, threshold_u8).astype(np.uint8), where=fg)
    np.copyto(u8, np.minimum(u8, threshold_u8 - 1).astype(np.uint8), where=~fg)
    return u8[..., None]


def upsample_labels(probs: np.ndarray, frame_size: tuple[int, int], threshold_u8: int = 128) -> np.ndarray:
    """uint8 class ids (height, width) at ``frame_size`` (width, height) from uint8 probabilities (h, w, C).

    C == 1: the foreground probability of a binary model, class 1 where it is ``>= threshold_u8``.
    C >= 2: argmax over the bilinearly upsampled planes, first maximum wins. Returns a new array.
    """
    width, height = int(frame_size[0]), int(frame_size[1])
    channels = probs.shape[2] if probs.ndim == 3 else 1
    if channels == 1:
        big = bilinear(probs if probs.ndim == 2 else probs[..., 0], (width, height))
        cv2.compare(big, threshold_u8, cv2.CMP_GE, dst=big)
        return cv2.bitwise_and(big, 1, dst=big)
    labels = _argmax_planes(channel_planes(probs), None)
    edge = _edge_pixels(labels)
    upsampling = width >= labels.shape[1] and height >= labels.shape[0]  # else nearest may skip the 2x2
    if upsampling and np.count_nonzero(edge) <= EDGE_SHARE_UP_TO * edge.size:
        return _edges_only(probs, labels, edge, (width, height))
    return _full(probs, (width, height))


EDGE_SHARE_UP_TO = 0.25  # above this share of edge pixels at model resolution, all of the frame is interpolated


def _full(probs: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """Every frame pixel: one warp per plane (split at model resolution, into reused buffers: faster
    than warping the interleaved planes and splitting at frame size), then argmax."""
    width, height = frame_size
    channels = probs.shape[2]
    planes = _buffers(height, width, channels)
    for plane, out in zip(channel_planes(probs), planes, strict=True):
        bilinear(plane, (width, height), dst=out)
    return _argmax_planes(planes, _buffers(height, width, 0))


def bilinear(image: np.ndarray, size: tuple[int, int], dst: np.ndarray | None = None) -> np.ndarray:
    """``image`` (h, w[, C <= 4]) resized bilinearly to ``size`` (width, height) with the geometry of
    ``cv2.resize(INTER_LINEAR)`` (pixel centres aligned, edges clamped), via ``cv2.warpAffine``."""
    h, w = image.shape[:2]
    sx, sy = w / size[0], h / size[1]
    matrix = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])  # frame pixel → model pixel
    return cv2.warpAffine(np.ascontiguousarray(image), matrix, (int(size[0]), int(size[1])), dst=dst,
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)


def _argmax_planes(planes: list[np.ndarray], scratch: list[np.ndarray]) -> np.ndarray:
    """Index of the first maximum over ``planes`` (uint8, same shape), as a new uint8 array.

    Channel c replaces the running index where it is strictly greater than the running best; as c
    exceeds every index so far, that is ``index = max(index, c & (plane_c > best))``.
    """
    if scratch is None:
        scratch = [np.empty_like(planes[0]), np.empty_like(planes[0])]
    best, better = scratch
    index = cv2.compare(planes[1], planes[0], cv2.CMP_GT)  # a new array: the caller keeps it
    cv2.bitwise_and(index, 1, dst=index)
    if len(planes) > 2:
        cv2.max(planes[0], planes[1], dst=best)
    for c in range(2, len(planes)):
        cv2.compare(planes[c], best, cv2.CMP_GT, dst=better)
        cv2.bitwise_and(better, c, dst=better)
        cv2.max(index, better, dst=index)
        if c + 1 < len(planes):
            cv2.max(best, planes[c], dst=best)
    return index


def _edge_pixels(labels: np.ndarray) -> np.ndarray:
    """uint8 (h, w), non-zero where a model pixel's 3x3 neighbourhood holds more than one label."""
    edge = cv2.dilate(labels, _SQUARE)
    cv2.compare(edge, cv2.erode(labels, _SQUARE), cv2.CMP_NE, dst=edge)
    return edge


_SQUARE = np.ones((3, 3), np.uint8)


def _edges_only(probs: np.ndarray, labels: np.ndarray, edge: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """The class map of ``_full`` from the nearest resize of ``labels`` plus bilinear samples only in
    the frame blocks of the model pixels ``edge`` marks (uint8, non-zero: an edge pixel).

    A frame pixel's bilinear sample mixes the 2x2 model pixels around it, and its nearest model
    pixel (``cv2.resize(INTER_NEAREST)``) is one of them. Where that pixel is not an edge pixel the
    2x2 share its label L, which is then the largest (first) code in each of them; bilinear weights
    are non-negative and rounding is monotonic, so L stays the argmax of the sample (the one way
    out: two codes one step apart rounding to a tie, which the full path resolves to the lower
    class). So the nearest label is kept there, and the frame pixels of edge model pixels are
    sampled with ``cv2.remap`` (same bilinear geometry as ``bilinear``) and argmax-ed.
    """
    width, height = frame_size
    geometry = _geometry(labels.shape, frame_size)
    # cv2.resize(INTER_NEAREST) in two steps, the same pixels: columns (cv2), then whole rows (numpy)
    wide = cv2.resize(labels, (width, labels.shape[0]), interpolation=cv2.INTER_NEAREST)
    out = np.take(wide, geometry.nearest_rows, axis=0)
    found = cv2.findNonZero(edge)
    if found is None:
        return out
    found = found.reshape(-1, 2)  # (x, y) per edge pixel
    cols, rows = found[:, 0], found[:, 1]
    frame_rows, frame_cols = geometry.rows[rows], geometry.cols[cols]  # (M, by), (M, bx): frame pixels per edge pixel
    shape = (rows.size, frame_rows.shape[1], frame_cols.shape[1])
    count = shape[0] * shape[1] * shape[2]
    # cv2.remap wants maps under 32767 rows and columns: rows of 1024 samples, the tail padded with (0, 0)
    maps = np.zeros((2, -(-count // 1024) * 1024), np.float32)
    maps[0, :count].reshape(shape)[...] = geometry.src_x[frame_cols][:, None, :]
    maps[1, :count].reshape(shape)[...] = geometry.src_y[frame_rows][:, :, None]
    map_x, map_y = maps[0].reshape(-1, 1024), maps[1].reshape(-1, 1024)
    samples = _remap_planes(probs, map_x, map_y)
    picked = _argmax_planes(samples, None).reshape(-1)[:count]
    flat = (frame_rows[:, :, None] * width + frame_cols[:, None, :]).reshape(-1)
    out.reshape(-1)[flat] = picked  # a pixel repeated (blocks padded) gets the same value each time
    return out


def _remap_planes(probs: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> list[np.ndarray]:
    """Bilinear samples of every plane of ``probs`` (h, w, C) at the maps, one array per plane.

    3 or 4 planes in one ``cv2.remap`` of the interleaved channels (the same values as one remap per
    plane, about 2.5x faster: the maps' coordinates and weights are computed once), then split. Not 2:
    OpenCV's (5.1) 2-channel uint8 remap rounds differently (up to 7 codes off the 1-channel result).
    An NCHW output (planes seen through a transpose) is interleaved first: a copy at model resolution."""
    if probs.shape[2] in (3, 4):
        interleaved = np.ascontiguousarray(probs)
        return cv2.split(cv2.remap(interleaved, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
    return [cv2.remap(plane, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            for plane in channel_planes(probs)]


class _Geometry:
    """Per (model shape, frame size): for each model row/column, the frame rows/columns whose nearest
    model pixel it is (padded to the longest block by repeating the last), and per frame row/column
    the bilinear source coordinate of ``bilinear``'s geometry."""

    def __init__(self, shape: tuple[int, int], frame_size: tuple[int, int]):
        (h, w), (width, height) = shape, frame_size
        self.rows, self.src_y, self.nearest_rows = self._axis(h, height)
        self.cols, self.src_x, _ = self._axis(w, width)

    @staticmethod
    def _axis(n: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # OpenCV's nearest resize: src = min(floor(dst * (1 / (dst_size / src_size))), src_size - 1)
        nearest = np.minimum(np.floor(np.arange(size) * (1.0 / (size / n))), n - 1).astype(np.intp)
        starts = np.searchsorted(nearest, np.arange(n), side="left")
        ends = np.searchsorted(nearest, np.arange(n), side="right")
        longest = max(int((ends - starts).max()), 1)
        blocks = np.minimum(starts[:, None] + np.arange(longest), np.maximum(ends - 1, starts)[:, None])
        blocks = np.minimum(blocks, size - 1)
        scale = n / size
        src = (np.arange(size) * scale + (0.5 * scale - 0.5)).astype(np.float32)
        return blocks.astype(np.intp), src, nearest


def _geometry(shape: tuple[int, int], frame_size: tuple[int, int]) -> _Geometry:
    key = (tuple(shape), tuple(frame_size))
    cache = getattr(_scratch, "geometry", None)
    if cache is None or cache[0] != key:
        cache = _scratch.geometry = (key, _Geometry(shape, frame_size))
    return cache[1]


def _buffers(height: int, width: int, channels: int) -> list[np.ndarray]:
    """Scratch buffers of this thread: C planes or, for C == 0, (best, better); all uint8 (h, w)."""
    cache = getattr(_scratch, "buffers", None)
    if cache is None:
        cache = _scratch.buffers = {}
    key = (height, width, channels)
    found = cache.get(key)
    if found is None:
        if len(cache) > 8:  # frame sizes change rarely: keep the few in use
            cache.clear()
        found = [np.empty((height, width), np.uint8) for _ in range(channels or 2)]
        cache[key] = found
    return found


__all__ = ["UPSAMPLE_MODES", "bilinear", "binary_threshold", "binary_uint8", "channel_planes", "uint8_probabilities",
           "upsample_labels"]
