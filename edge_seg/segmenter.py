"""``Segmenter``: frame in, ``Segmentation`` out (preprocess → backend → postprocess).

Shaped after MediaPipe Tasks' ImageSegmenter: an options dataclass, ``create_from_options``,
``segment``, ``close`` and ``with``. One thread uses a Segmenter at a time (it owns the
backend's interpreter).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_seg.backends.base import BackendOptions
from edge_seg.manifest import INSTANCE_KINDS, OutputSpec, output_layout, output_tensor, yolo_seg_tensors
from edge_seg.model import LoadedModel, load_model
from edge_seg.postprocess.semantic import Decoded, SemanticDecoder, float_spec, probabilities
from edge_seg.preprocess import Preprocessor, Transform
from edge_seg.segmentation import ModelIdentity, Segmentation

DEFAULT_MODEL = Path(__file__).parent / "models" / "default"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmenterOptions:
    """How to build a ``Segmenter``."""

    model: str | Path = DEFAULT_MODEL
    backend: str | None = None  # None: by model file suffix
    num_threads: int | None = None
    entropy: bool = False  # also compute per-pixel normalised entropy
    mean: list[float] | None = None  # override the input normalisation
    std: list[float] | None = None
    norm: str | None = None  # a normalisation preset (imagenet, unit, minus1to1, raw); mean/std given win
    input_size: tuple[int, int] | None = None  # (width, height) of an input with symbolic dims
    smoothing: object | None = None  # a config.SmoothingConfig to smooth over time (video); None: off
    margin: bool = False  # also compute per-pixel top-1 minus top-2 probability (``margin_map``)
    upsample: str = "bilinear"  # frame-size class map: "bilinear" probabilities (smooth edges) or "nearest" labels


def probability_decoder(manifest, entropy: bool = False, margin: bool = False, probs: bool = False) -> SemanticDecoder:
    """A decoder of float32 (1, h, w, C) probabilities (1 channel: foreground) of ``manifest``'s model."""
    kind = "sigmoid" if manifest.task == "binary" else "probabilities"
    return SemanticDecoder(OutputSpec(kind=kind, threshold=manifest.output.threshold), float_spec(),
                           manifest.num_classes, entropy=entropy, margin=margin, probs=probs)


class TemporalSmoother:
    """Decodes raw outputs through temporal smoothing: EMA of probabilities, hysteresis for binary masks.

    ``decoder`` decodes the smoothed float probabilities (see ``probability_decoder``).
    """

    def __init__(self, manifest, tensor, config, decoder: SemanticDecoder):
        from edge_seg.postprocess.smoothing import BinaryHysteresis, ProbabilityEMA

        self.kind, self.tensor, self.num_classes = manifest.output.kind, tensor, manifest.num_classes
        self.ema = ProbabilityEMA(alpha=config.alpha, scene_cut=config.scene_cut)
        self.binary = manifest.task == "binary"
        self.hysteresis = BinaryHysteresis(config.hysteresis_high, config.hysteresis_low) if self.binary else None
        self.decoder = decoder

    def __call__(self, raw: np.ndarray, frame: np.ndarray | None) -> Decoded:
        """One raw model output (1, h, w, C), smoothed and decoded."""
        return self.smooth(probabilities(raw, self.kind, self.tensor, self.num_classes), frame)

    def smooth(self, probs: np.ndarray, frame: np.ndarray | None) -> Decoded:
        """Float32 (h, w, C) probabilities (e.g. the tiler's stitched mosaic), smoothed and decoded."""
        from edge_seg.postprocess.smoothing import scene_thumbnail

        thumbnail = scene_thumbnail(frame) if frame is not None else None
        smoothed = self.ema.update(probs, thumbnail)
        decoded = self.decoder(smoothed[None])
        if self.hysteresis is None:
            return decoded
        labels = self.hysteresis.update(smoothed[..., 0])
        prob = smoothed[..., 0]
        probs = None
        if decoded.probs is not None:  # clamped so the upsampled threshold keeps the hysteresis labels
            from edge_seg.postprocess.upsample import binary_uint8

            probs = binary_uint8(prob, labels, decoded.threshold_u8)
        return Decoded(labels, np.where(labels == 1, prob, 1.0 - prob).astype(np.float32), decoded.entropy,
                       decoded.margin, probs, decoded.threshold_u8)


def _instance_decoder(manifest, specs: list):
    """(InstanceDecoder, indices of its tensors among the backend outputs) for a yolo_seg manifest."""
    from edge_seg.postprocess.instance import InstanceDecoder

    tensors = yolo_seg_tensors(manifest, specs)
    out = manifest.output
    decoder = InstanceDecoder(
        tensors, manifest.num_classes, mask_threshold=out.threshold,
        score_threshold=out.score_threshold if out.score_threshold is not None else 0.25,
        iou_threshold=out.iou_threshold if out.iou_threshold is not None else 0.5,
        max_detections=out.max_detections if out.max_detections is not None else 100,
        end2end=out.kind == "yolo_seg_end2end")
    return decoder, [specs.index(t) for t in tensors]


class Segmenter:
    """Segments BGR frames with one loaded model.

    ``entropy`` / ``margin``: also keep the per-pixel normalised entropy / top-1 minus top-2
    probability (``Segmentation.entropy_map`` / ``margin_map``), for the uncertainty methods of
    those names; both cost extra per frame, so they are off unless asked for. ``smoothing`` (a
    ``config.SmoothingConfig``) smooths semantic and binary outputs over time, tiled or not;
    instance models are not smoothed: a warning is logged once, at creation.

    ``upsample`` picks how ``Segmentation.class_map`` reaches frame size. ``"bilinear"`` (default,
    DESIGN §5): the class probabilities are kept as uint8 at model resolution and upsampled
    bilinearly before argmax/threshold, so edges are smooth (~1 ms at 720p for 4 classes);
    ``"nearest"``: the label map is nearest-resized (staircase edges, ~0.3 ms), for the smallest
    devices. Instance masks are always sampled bilinearly from the prototypes before thresholding.
    """

    def __init__(self, loaded: LoadedModel, entropy: bool = False, smoothing=None, margin: bool = False,
                 upsample: str = "bilinear"):
        from edge_seg.postprocess.upsample import UPSAMPLE_MODES

        if upsample not in UPSAMPLE_MODES:
            from edge_seg.errors import InputError

            raise InputError(f"upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {upsample!r}")
        self.upsample = upsample
        self._batch = 1  # frames per invoke of ``invoke_many`` (``batch_size``)
        probs = upsample == "bilinear"
        self.loaded = loaded
        manifest = loaded.manifest
        backend = loaded.backend
        self._pre = Preprocessor(manifest.input, backend.input_spec)
        out = output_tensor(manifest, backend.output_specs)
        self.output_tensor = out
        self._out_index = backend.output_specs.index(out)
        # a [1, C, h, w] output is read through a [1, h, w, C] view: planes stay contiguous, nothing is copied
        self._nchw_out = output_layout(manifest) == "NCHW" and len(out.shape) == 4
        self._instance = None  # an InstanceDecoder for yolo_seg models; invoke() then returns a list of outputs
        if manifest.output.kind in INSTANCE_KINDS:
            self._instance, self._instance_indices = _instance_decoder(manifest, backend.output_specs)
            self._decode = self._smoother = self._probability_decoder = None
            if smoothing is not None:
                log.warning("temporal smoothing is configured but %s is an instance (yolo_seg) model, which is "
                            "not smoothed: its detections and masks are used frame by frame", manifest.name)
        else:
            self._decode = SemanticDecoder(manifest.output, out, manifest.num_classes, entropy=entropy, margin=margin,
                                           probs=probs)
            self._probability_decoder = probability_decoder(manifest, entropy=entropy, margin=margin, probs=probs)
            self._smoother = (TemporalSmoother(manifest, out, smoothing, self._probability_decoder)
                              if smoothing is not None else None)
        self._smoothing = smoothing
        self._smoothers = {None: self._smoother}  # one per stream (camera): smoothing state is a video's own
        self._identity = ModelIdentity(manifest.name, manifest.version, loaded.sha256)
        self._classes = tuple(manifest.classes)
        self._palette = tuple(tuple(c) for c in manifest.palette)

    @classmethod
    def create_from_options(cls, options: SegmenterOptions) -> "Segmenter":
        loaded = load_model(options.model, backend=options.backend,
                            options=BackendOptions(num_threads=options.num_threads),
                            mean=options.mean, std=options.std, norm=options.norm, input_size=options.input_size)
        return cls(loaded, entropy=options.entropy, smoothing=options.smoothing, margin=options.margin,
                   upsample=options.upsample)

    @classmethod
    def create(cls, **kwargs) -> "Segmenter":
        """``Segmenter.create(model=..., backend=..., num_threads=...)``."""
        return cls.create_from_options(SegmenterOptions(**kwargs))

    @property
    def manifest(self):
        return self.loaded.manifest

    @property
    def input_size(self) -> tuple[int, int]:
        """The model input (width, height)."""
        return self._pre.input_size

    def prepare(self, frame: np.ndarray, lores: np.ndarray | None = None) -> tuple[np.ndarray, Transform]:
        """Preprocess a BGR uint8 frame into the model's input tensor (from ``lores``, the camera's
        model-size copy of the same view, when given)."""
        return self._pre(frame, lores)

    def invoke(self, batch: np.ndarray) -> np.ndarray:
        """Run the backend; the raw (possibly quantised) output tensor the manifest describes.

        For an instance (yolo_seg) model: the list of its raw output tensors (detections, prototypes).
        An NCHW semantic output comes back as a [1, h, w, C] view of it (no copy).
        """
        if self._batch > 1:  # the backend now takes a batch (``batch_size``): this frame and padding
            return self.invoke_many([batch])[0]
        return self._raw(self.loaded.backend.infer(batch), slice(None))

    def batch_size(self, n: int) -> int:
        """Ask the backend to take ``n`` frames per invoke (``invoke_many``); how many it takes (1: no batching).
        ``batch_size(1)`` makes it take one frame again."""
        resize = getattr(self.loaded.backend, "resize_batch", None)
        self._batch = resize(n) if resize is not None else 1
        return self._batch

    def invoke_many(self, batches: list[np.ndarray]) -> list:
        """One invoke for several prepared frames (at most ``batch_size``); each frame's raw output, as ``invoke``
        returns it. A backend with a fixed batch gets the missing frames as zeros (their outputs are dropped)."""
        n = len(batches)
        stacked = np.concatenate(batches, axis=0)
        size = self._batch
        if n < size and getattr(self.loaded.backend, "fixed_batch", False):
            stacked = np.concatenate([stacked, np.zeros((size - n, *stacked.shape[1:]), stacked.dtype)], axis=0)
        outputs = self.loaded.backend.infer(stacked)
        return [self._raw(outputs, slice(k, k + 1)) for k in range(n)]

    def _raw(self, outputs: list[np.ndarray], frames: slice):
        """The raw output ``invoke`` returns, of the ``frames`` of a batch: the instance outputs' list, or the
        semantic output (an NCHW one as a [n, h, w, C] view)."""
        if self._instance is not None:
            return [outputs[i][frames] for i in self._instance_indices]
        out = outputs[self._out_index][frames]
        return out.transpose(0, 2, 3, 1) if self._nchw_out else out

    @property
    def smoothing(self) -> bool:
        """True when outputs are smoothed over time (never for instance models)."""
        return self._smoother is not None

    def _smoother_of(self, stream: str | None) -> TemporalSmoother | None:
        """The smoother of ``stream`` (a camera of a loop with several; None: the only one), made on first use."""
        smoother = self._smoothers.get(stream)
        if smoother is None and self._smoother is not None:
            smoother = self._smoothers[stream] = TemporalSmoother(self.manifest, self.output_tensor, self._smoothing,
                                                                  self._probability_decoder)
        return smoother

    def decode(self, raw: np.ndarray, transform: Transform, timings: dict[str, float] | None = None,
               frame: np.ndarray | None = None, stream: str | None = None) -> Segmentation:
        """Raw output → ``Segmentation`` (class map and confidence at model resolution, cropped to the frame).

        With smoothing on, ``frame`` (the BGR image) lets the smoother detect scene cuts; ``stream`` names the
        camera whose video is smoothed (each has its own state).
        """
        if self._instance is not None:
            return self._decode_instances(raw, transform, timings)
        smoother = self._smoother_of(stream)
        decoded = smoother(raw, frame) if smoother is not None else self._decode(raw)
        return self._segmentation(decoded, transform, timings)

    def decode_probabilities(self, probs: np.ndarray, transform: Transform, timings: dict[str, float] | None = None,
                             frame: np.ndarray | None = None, stream: str | None = None) -> Segmentation:
        """Float32 probabilities (1, h, w, C) → ``Segmentation``, smoothed over time when smoothing is on.

        For the tiler's stitched mosaic: ``transform`` maps the mosaic to the frame. Entropy and
        margin maps are kept as for ``decode``.
        """
        if self._instance is not None:
            from edge_seg.errors import ModelError

            raise ModelError("tiling is not supported for instance (yolo_seg) models")
        smoother = self._smoother_of(stream)
        if smoother is not None:
            decoded = smoother.smooth(probs[0], frame)
        else:
            decoded = self._probability_decoder(probs)
        return self._segmentation(decoded, transform, timings)

    def _segmentation(self, decoded: Decoded, transform: Transform, timings: dict | None) -> Segmentation:
        entropy = transform.crop(decoded.entropy) if decoded.entropy is not None else None
        margin = transform.crop(decoded.margin) if decoded.margin is not None else None
        return Segmentation(
            label_map=transform.crop(decoded.label_map), confidence_map=transform.crop(decoded.confidence),
            frame_size=transform.frame_size, classes=self._classes, palette=self._palette, model=self._identity,
            entropy_map=entropy, timings=timings if timings is not None else {}, margin_map=margin,
            prob_map=transform.crop(decoded.probs) if decoded.probs is not None else None,
            prob_threshold=decoded.threshold_u8)

    def _decode_instances(self, raw: list, transform: Transform, timings: dict | None) -> Segmentation:
        from edge_seg.postprocess.instance import label_map

        instances = self._instance(raw, transform)
        labels, confidence = label_map(instances, transform.frame_size)
        return Segmentation(
            label_map=labels, confidence_map=confidence, frame_size=transform.frame_size, classes=self._classes,
            palette=self._palette, model=self._identity, timings=timings if timings is not None else {},
            instances=instances)

    def segment(self, frame: np.ndarray) -> Segmentation:
        """Segment one BGR uint8 frame; ``timings`` holds ms for preprocess, infer, postprocess."""
        t0 = time.perf_counter()
        batch, transform = self.prepare(frame)
        t1 = time.perf_counter()
        raw = self.invoke(batch)
        t2 = time.perf_counter()
        timings = {"preprocess": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3}
        result = self.decode(raw, transform, timings, frame=frame)
        timings["postprocess"] = (time.perf_counter() - t2) * 1e3
        return result

    def close(self) -> None:
        self.loaded.close()

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
