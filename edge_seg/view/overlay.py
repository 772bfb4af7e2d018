"""Overlays: palette-LUT blend, contours, legend, palette PNG (privacy redaction: ``edge_seg.view.redact``).

Annotators follow the supervision style: appearance in the constructor, ``annotate(frame_bgr,
segmentation)`` does the work and returns a new BGR image (the input frame is never modified).
Colouring happens at model resolution with a lookup table, then one nearest resize to the frame
(DESIGN §5); when the segmentation has smooth edges (``prob_map``, the Segmenter's default
``upsample="bilinear"``) and the frame is at its frame size, the overlay colours its frame-size
``class_map`` instead (the same map crops and redaction use), so the drawn edges are smooth too.
An annotator caches scratch buffers per frame shape, so use one per thread.

Palettes are RGB per class (manifest order); frames and the ``color`` of ``Redactor`` are BGR.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from edge_seg.segmentation import Segmentation
from edge_seg.view.redact import Redactor
from edge_seg.view.redact import check_frame as _check_frame
from edge_seg.view.redact import check_labels as _check_labels

Palette = Sequence[Sequence[int]]


def palette_lut(palette: Palette) -> np.ndarray:
    """A (256, 3) uint8 BGR table from an RGB palette; ids past the palette map to black."""
    lut = np.zeros((256, 3), np.uint8)
    if len(palette):
        lut[: min(len(palette), 256)] = np.asarray(palette, np.uint8)[:256, ::-1]
    return lut


def colorize(label_map: np.ndarray, palette: Palette) -> np.ndarray:
    """A BGR image with each class id of ``label_map`` (uint8, (h, w)) in its palette colour."""
    return np.take(palette_lut(palette), _check_labels(label_map), axis=0)


class Overlay:
    """Tint the frame with the class colours.

    ``alpha`` is the weight of the class colour (0 = frame only, 1 = solid colour). With
    ``background_transparent`` pixels of class 0 keep the frame's exact values. ``contours``
    draws class boundaries in the class colour; ``legend`` draws a top-left box naming the
    classes present (without class 0 when the background is transparent). ``palette`` (RGB per
    class) overrides the segmentation's palette.
    """

    def __init__(self, alpha: float = 0.5, contours: bool = False, legend: bool = False,
                 background_transparent: bool = True, palette: Palette | None = None) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.contours = contours
        self.legend = legend
        self.background_transparent = background_transparent
        self.palette = None if palette is None else tuple(tuple(int(v) for v in c) for c in palette)
        self._luts: dict[tuple, np.ndarray] = {}
        self._buffers: dict[tuple, tuple[np.ndarray, ...]] = {}
        self._nearest: tuple[tuple, tuple[np.ndarray, np.ndarray]] | None = None  # model row/column per frame pixel

    def annotate(self, frame_bgr: np.ndarray, segmentation: Segmentation) -> np.ndarray:
        """Return a copy of ``frame_bgr`` with the segmentation drawn on it.

        The overlay is resized to the frame given, which may differ from
        ``segmentation.frame_size`` (e.g. a smaller preview frame).
        """
        _check_frame(frame_bgr)
        if segmentation.instances is not None:  # an instance model: colour per instance, boxes, labels
            return InstanceOverlay(alpha=self.alpha).annotate(frame_bgr, segmentation)
        labels = _check_labels(segmentation.label_map)
        palette = self.palette if self.palette is not None else tuple(segmentation.palette)
        lut = self._luts.get(palette)
        if lut is None:
            lut = self._luts[palette] = palette_lut(palette)
        if segmentation.prob_map is not None and frame_bgr.shape[1::-1] == tuple(segmentation.frame_size):
            out = self._blend_smooth(frame_bgr, labels, segmentation.class_map, lut)
        else:
            out = self._blend(frame_bgr, labels, lut)
        if self.contours:
            _draw_contours(out, labels, lut, self.background_transparent)
        if self.legend:
            _draw_legend(out, labels, lut, segmentation.classes, self.background_transparent)
        return out

    def _blend(self, frame: np.ndarray, labels: np.ndarray, lut: np.ndarray) -> np.ndarray:
        """Blend the class colours into a copy of ``frame``, only where there is something to draw.

        With a transparent background, a frame whose objects cover little of it is blended box by
        box (one box per band of model rows holding non-background pixels): inside each box the
        model-resolution colours and foreground mask are upscaled by taking, for every frame column
        then every frame row, the model column and row that ``cv2.resize(INTER_NEAREST)`` maps it to
        (the same pixels), so a few objects cost a copy plus their area. Otherwise (boxes over
        ``_BOXES_UP_TO`` of the frame, or an opaque background) the whole frame is blended in three
        passes. Both give the same pixels.
        """
        height, width = frame.shape[:2]
        key = (labels.shape, height, width)
        if key not in self._buffers:
            self._buffers = {key: (np.empty((*labels.shape, 3), np.uint8), np.empty_like(labels),
                                   np.empty_like(frame), np.empty((height, width), np.uint8))}
        small_colour, small_mask, big_colour, big_mask = self._buffers[key]
        boxes = None
        if self.background_transparent:
            cv2.compare(labels, 0, cv2.CMP_NE, dst=small_mask)
            boxes = _foreground_boxes(small_mask, (width, height))
            if not boxes:
                return frame.copy()
            if sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes) > _BOXES_UP_TO * width * height:
                boxes = None
        cv2.applyColorMap(labels, lut.reshape(256, 1, 3), dst=small_colour)  # ids → BGR (one table lookup)
        if boxes is not None:
            out = frame.copy()
            rows, cols = self._nearest_indices(labels.shape, (width, height))
            for x0, y0, x1, y1 in boxes:  # each box is upscaled and blended in the frame-size scratch buffers
                colour = _upscale(small_colour, rows[y0:y1], cols[x0:x1], big_colour)
                mask = _upscale(small_mask, rows[y0:y1], cols[x0:x1], big_mask)
                cv2.addWeighted(frame[y0:y1, x0:x1], 1.0 - self.alpha, colour, self.alpha, 0.0, dst=colour)
                cv2.copyTo(colour, mask, out[y0:y1, x0:x1])
            return out
        cv2.resize(small_colour, (width, height), dst=big_colour, interpolation=cv2.INTER_NEAREST)
        out = np.empty_like(frame)
        cv2.addWeighted(frame, 1.0 - self.alpha, big_colour, self.alpha, 0.0, dst=out)
        if self.background_transparent:
            # Blend everywhere, then put the frame back under class 0: cheaper than a per-pixel
            # alpha (one nearest resize of a 1-channel mask plus a masked copy).
            cv2.compare(labels, 0, cv2.CMP_EQ, dst=small_mask)
            cv2.resize(small_mask, (width, height), dst=big_mask, interpolation=cv2.INTER_NEAREST)
            cv2.copyTo(frame, big_mask, out)
        return out

    def _blend_smooth(self, frame: np.ndarray, labels: np.ndarray, class_map: np.ndarray,
                      lut: np.ndarray) -> np.ndarray:
        """``_blend`` from the frame-size ``class_map`` (bilinearly upsampled, smooth edges).

        Boxes come from the model-resolution ``labels`` grown by one model pixel (a bilinear sample
        takes its class from the 2x2 model pixels around it), then each box is coloured with the
        table and blended; large or opaque: the whole frame at once.
        """
        height, width = frame.shape[:2]
        key = ("smooth", labels.shape, height, width)
        if key not in self._buffers:
            self._buffers = {key: (np.empty_like(labels), np.empty_like(frame), np.empty((height, width), np.uint8))}
        small_mask, big_colour, big_mask = self._buffers[key]
        table = lut.reshape(256, 1, 3)
        boxes = None
        if self.background_transparent:
            cv2.compare(labels, 0, cv2.CMP_NE, dst=small_mask)
            boxes = _foreground_boxes(small_mask, (width, height), margin=1)
            if not boxes:
                return frame.copy()
            if sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes) > _BOXES_UP_TO * width * height:
                boxes = None
        if boxes is not None:
            out = frame.copy()
            for x0, y0, x1, y1 in boxes:
                ids = class_map[y0:y1, x0:x1]
                colour = big_colour[y0:y1, x0:x1]
                cv2.applyColorMap(ids, table, dst=colour)
                cv2.addWeighted(frame[y0:y1, x0:x1], 1.0 - self.alpha, colour, self.alpha, 0.0, dst=colour)
                mask = big_mask[y0:y1, x0:x1]
                cv2.compare(ids, 0, cv2.CMP_NE, dst=mask)
                cv2.copyTo(colour, mask, out[y0:y1, x0:x1])
            return out
        cv2.applyColorMap(class_map, table, dst=big_colour)
        out = np.empty_like(frame)
        cv2.addWeighted(frame, 1.0 - self.alpha, big_colour, self.alpha, 0.0, dst=out)
        if self.background_transparent:
            cv2.compare(class_map, 0, cv2.CMP_EQ, dst=big_mask)
            cv2.copyTo(frame, big_mask, out)
        return out

    def _nearest_indices(self, shape: tuple[int, int], frame_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(model row of each frame row, model column of each frame column), as ``cv2.resize(INTER_NEAREST)`` maps."""
        key = (shape, frame_size)
        if self._nearest is None or self._nearest[0] != key:
            (h, w), (width, height) = shape, frame_size
            # OpenCV's nearest resize: src = min(floor(dst * (1 / (dst_size / src_size))), src_size - 1)
            cols = np.minimum(np.floor(np.arange(width) * (1.0 / (width / w))), w - 1).astype(np.intp)
            rows = np.minimum(np.floor(np.arange(height) * (1.0 / (height / h))), h - 1).astype(np.intp)
            self._nearest = (key, (rows, cols))
        return self._nearest[1]


def _upscale(small: np.ndarray, rows: np.ndarray, cols: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """``small`` at the model rows ``rows`` and columns ``cols``, written to the start of ``scratch``.

    Columns first, on the few model rows the box shows, then rows (whole-row copies). The result is
    a contiguous view of ``scratch``, so ``take`` writes it in place.
    """
    top = rows[0]
    out = scratch.reshape(-1)[:rows.size * cols.size * small[0, 0].size].reshape(rows.size, cols.size, *small.shape[2:])
    np.take(small[top:rows[-1] + 1].take(cols, axis=1), rows - top, axis=0, out=out, mode="clip")
    return out


_BOXES_UP_TO = 0.3  # box-by-box blending pays while the boxes cover at most this share of the frame


Box = tuple[int, int, int, int]


def _foreground_boxes(fg: np.ndarray, frame_size: tuple[int, int], bands: int = 8, margin: int = 0) -> list[Box]:
    """Frame-pixel boxes (x0, y0, x1, y1) covering every non-zero pixel of the model-resolution
    mask ``fg``, one per band of model rows, each grown by ``margin`` model pixels."""
    h, w = fg.shape
    width, height = frame_size
    boxes = []
    step = max(1, -(-h // bands))
    for top in range(0, h, step):
        x, y, bw, bh = cv2.boundingRect(fg[top:top + step])
        if bw == 0:
            continue
        y += top
        if margin:
            x1, y1 = min(x + bw + margin, w), min(y + bh + margin, h)
            x, y = max(x - margin, 0), max(y - margin, 0)
            bw, bh = x1 - x, y1 - y
        # nearest upscaling maps frame pixel X to model pixel floor(X * w / width): cover that range
        boxes.append((x * width // w, y * height // h,
                      min(width, -(-(x + bw) * width // w)), min(height, -(-(y + bh) * height // h))))
    return boxes


def _present(labels: np.ndarray, skip_background: bool) -> list[int]:
    counts = cv2.calcHist([labels], [0], None, [256], [0, 256]).ravel()
    return [int(c) for c in np.flatnonzero(counts) if not (skip_background and c == 0)]


def _draw_contours(out: np.ndarray, labels: np.ndarray, lut: np.ndarray, skip_background: bool) -> None:
    """Class boundaries found at model resolution, scaled to the frame, drawn in class colour."""
    sx, sy = out.shape[1] / labels.shape[1], out.shape[0] / labels.shape[0]
    thickness = max(1, round(out.shape[0] / 360))
    for c in _present(labels, skip_background):
        found, _ = cv2.findContours((labels == c).view(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        # Map model-pixel centres to frame-pixel centres of the nearest-upscaled mask.
        scaled = [np.rint((p + 0.5) * (sx, sy) - 0.5).astype(np.int32) for p in found]
        cv2.drawContours(out, scaled, -1, tuple(int(v) for v in lut[c]), thickness, cv2.LINE_8)


def _draw_legend(out: np.ndarray, labels: np.ndarray, lut: np.ndarray, names: Sequence[str],
                 skip_background: bool) -> None:
    """A darkened top-left box with a colour swatch and name per class present."""
    ids = _present(labels, skip_background)
    if not ids:
        return
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(out.shape[0] / 1200, 0.35)
    thick = max(1, round(scale * 2))
    texts = [names[c] if c < len(names) else f"class {c}" for c in ids]
    sizes = [cv2.getTextSize(t, font, scale, thick)[0] for t in texts]
    row, pad = max(h for _, h in sizes) + 8, 6
    box_w = min(pad * 3 + row + max(w for w, _ in sizes), out.shape[1])
    box_h = min(pad * 2 + row * len(ids), out.shape[0])
    roi = out[:box_h, :box_w]
    roi[:] = cv2.convertScaleAbs(roi, alpha=0.35)
    for i, (c, text) in enumerate(zip(ids, texts, strict=True)):
        top = pad + i * row
        colour = tuple(int(v) for v in lut[c])
        cv2.rectangle(out, (pad, top + 2), (pad + row - 4, top + row - 4), colour, cv2.FILLED)
        cv2.putText(out, text, (pad * 2 + row, top + row - 6), font, scale, (255, 255, 255), thick,
                    cv2.LINE_AA)


def instance_colour(index: int) -> tuple[int, int, int]:
    """A distinct, bright BGR colour per instance index (golden-ratio hue steps)."""
    hue = int((index * 0.618033988749895 % 1.0) * 180)
    hsv = np.array([[[hue, 220, 255]]], np.uint8)
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def _colour(inst, rank: int) -> tuple[int, int, int]:
    """A tracked instance's colour follows its track id; an untracked one's its rank in the frame."""
    return instance_colour(rank if inst.track_id is None else inst.track_id)


class InstanceOverlay:
    """Draw the instances of an instance model: tinted mask, contour, box and "label score" per instance.

    Each instance gets its own colour: ``instance_colour`` of its ``track_id`` when tracked (the same
    colour in every frame, and "#id" after its label), else of its rank (highest score = 0). The
    frame given may differ in size from ``segmentation.frame_size``; masks and boxes are scaled.
    Pixels outside every instance keep the frame's exact values.
    """

    def __init__(self, alpha: float = 0.5, boxes: bool = True, labels: bool = True, contours: bool = True) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha, self.boxes, self.labels, self.contours = float(alpha), boxes, labels, contours

    def annotate(self, frame_bgr: np.ndarray, segmentation: Segmentation) -> np.ndarray:
        _check_frame(frame_bgr)
        out = frame_bgr.copy()
        instances = segmentation.instances or ()
        fw, fh = segmentation.frame_size
        sx, sy = frame_bgr.shape[1] / fw, frame_bgr.shape[0] / fh
        thickness = max(1, round(frame_bgr.shape[0] / 360))
        order = sorted(range(len(instances)), key=lambda k: instances[k].score)  # best drawn last (on top)
        for k in order:
            inst, colour = instances[k], _colour(instances[k], k)
            mask, (ox, oy) = inst.mask, inst.origin
            if mask.size == 0:
                continue
            x0, y0 = int(round(ox * sx)), int(round(oy * sy))
            x1 = min(max(x0 + 1, int(round((ox + mask.shape[1]) * sx))), out.shape[1])
            y1 = min(max(y0 + 1, int(round((oy + mask.shape[0]) * sy))), out.shape[0])
            if x1 <= x0 or y1 <= y0:
                continue
            m = mask.view(np.uint8)
            if (sx, sy) != (1.0, 1.0):
                m = cv2.resize(m, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
            m = m[: y1 - y0, : x1 - x0]
            roi = out[y0:y1, x0:x1]
            sel = m.astype(bool)
            roi[sel] = (roi[sel] * (1.0 - self.alpha) + np.array(colour) * self.alpha).astype(np.uint8)
            if self.contours:
                found, _ = cv2.findContours(np.ascontiguousarray(m), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE,
                                            offset=(x0, y0))
                cv2.drawContours(out, found, -1, colour, thickness, cv2.LINE_8)
        for k in order:
            inst, colour = instances[k], _colour(instances[k], k)
            bx, by, bw, bh = inst.bbox
            p0 = (int(round(bx * sx)), int(round(by * sy)))
            p1 = (int(round((bx + bw) * sx)) - 1, int(round((by + bh) * sy)) - 1)
            if self.boxes:
                cv2.rectangle(out, p0, p1, colour, thickness)
            if self.labels:
                name = segmentation.classes[inst.class_id] if inst.class_id < len(segmentation.classes) \
                    else f"class {inst.class_id}"
                tag = f"{name} {inst.score:.2f}" + ("" if inst.track_id is None else f" #{inst.track_id}")
                _draw_tag(out, tag, p0, colour)
        return out


def _draw_tag(out: np.ndarray, text: str, corner: tuple[int, int], colour: tuple[int, int, int]) -> None:
    """Text on a filled box of ``colour`` just above ``corner`` (inside the frame)."""
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(out.shape[0] / 1200, 0.35)
    thick = max(1, round(scale * 2))
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    x = min(max(corner[0], 0), max(out.shape[1] - tw - 4, 0))
    y = corner[1] - th - base - 4 if corner[1] - th - base - 4 >= 0 else corner[1]
    cv2.rectangle(out, (x, y), (x + tw + 4, y + th + base + 4), colour, cv2.FILLED)
    ink = (0, 0, 0) if sum(colour) > 382 else (255, 255, 255)
    cv2.putText(out, text, (x + 2, y + th + 2), font, scale, ink, thick, cv2.LINE_AA)


__all__ = ["InstanceOverlay", "Overlay", "Redactor", "colorize", "instance_colour", "palette_lut"]
