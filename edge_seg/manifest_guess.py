"""A manifest guessed from a loaded model's tensors (and its embedded metadata), for a model that comes without one.

Layouts come from the shapes: an input with 3 channels at axis 1 is NCHW (PyTorch exports), at
axis 3 NHWC; a semantic output [1, a, b, c] is NCHW when a < c. Several outputs of one shape
(U²-Net's side outputs) → the first, said in the notice; outputs that differ → one error line
naming them and ``output.tensor``. Ultralytics metadata (``edge_seg.model_metadata``), when the
export carries it, gives class names, task and end-to-end heads. Every guess is listed in the
one notice line ``load_model`` logs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_seg.errors import ManifestError, ModelError
from edge_seg.manifest import FileEntry, InputSpec, Manifest, OutputSpec, input_axes

_INT_MAP_DTYPES = (np.int32, np.int64, np.uint16, np.int16)


def input_layout(tensor) -> str:
    """'NCHW' or 'NHWC' of a 4-D image input from where its 3 channels are; one error line otherwise."""
    shape = tuple(tensor.shape)
    if len(shape) == 4 and shape[3] == 3 and shape[1] != 3:
        return "NHWC"
    if len(shape) == 4 and shape[1] == 3 and shape[3] != 3:
        return "NCHW"
    if len(shape) == 4 and shape[1] == shape[3] == 3:
        return "NHWC"  # a 3x3 image is no image; keep the TFLite default
    raise ManifestError(f"input tensor '{tensor.name}' {list(shape)} is neither [1, height, width, 3] (NHWC) nor "
                        "[1, 3, height, width] (NCHW): write a manifest with input.layout, input.width and "
                        "input.height ('edge-seg manifest init' starts one)")


def output_is_nchw(shape: tuple[int, ...], input_nchw: bool) -> bool:
    """Whether a 4-D semantic output is [1, C, h, w]: its axis 1 is shorter than axis 3 (ties: the input's)."""
    return shape[1] < shape[3] or (shape[1] == shape[3] and input_nchw)


def _file_key(model_file: Path) -> str:
    return "tflite" if model_file.suffix == ".tflite" else model_file.suffix.lstrip(".")


def quantised_pixel_mapping(tensor) -> tuple[list[float], list[float]]:
    """mean/std that send pixels 0..255 onto the full quantised range of the input tensor."""
    qmin = int(np.iinfo(tensor.dtype).min)
    std = 1.0 / tensor.scale
    mean = (tensor.zero_point - qmin) * 1.0
    return [mean] * 3, [std] * 3


def input_mapping(tin) -> tuple[list[float], list[float], str]:
    """(mean, std, how it reads in the notice) for an input nobody described."""
    if tin.quantized:
        mean, std = quantised_pixel_mapping(tin)
        return mean, std, f"mean={mean[0]:g} std={std[0]:g} (from its quantisation)"
    if tin.dtype == np.float32:
        return [0.0] * 3, [255.0] * 3, "norm unit [0,1]"
    return [0.0] * 3, [1.0] * 3, "norm raw 0..255"


def probe_kind(backend, input_tensor, out_tensor, channel_axis: int = -1) -> str:
    """'probabilities'/'sigmoid' if a probe frame gives values in [0, 1] (summing to 1), else 'logits'."""
    rng = np.random.default_rng(0)
    info = np.iinfo(input_tensor.dtype) if input_tensor.dtype != np.float32 else None
    if info is None:
        probe = rng.random(input_tensor.shape, dtype=np.float32)
    else:
        probe = rng.integers(info.min, info.max, input_tensor.shape, endpoint=True).astype(input_tensor.dtype)
    outputs = backend.infer(probe)
    values = out_tensor.dequantize(outputs[[t.name for t in backend.output_specs].index(out_tensor.name)])
    in_range = bool(values.min() >= -1e-3 and values.max() <= 1.0 + 1e-3)
    if values.shape[channel_axis] == 1:
        return "sigmoid" if in_range else "logits"
    sums_to_one = bool(np.allclose(values.sum(axis=channel_axis), 1.0, atol=0.05))
    return "probabilities" if in_range and sums_to_one else "logits"


def pick_output(model_file: Path, outputs: list) -> tuple[object, str]:
    """(the output that is the mask, a note for the notice) of a semantic model nobody described."""
    if len(outputs) == 1:
        return outputs[0], ""
    shapes = {tuple(t.shape) for t in outputs}
    if len(shapes) == 1:
        return outputs[0], (f"output '{outputs[0].name}' = the first of {len(outputs)} outputs of shape "
                            f"{list(outputs[0].shape)} (set output.tensor to pick another); ")
    listed = ", ".join(f"'{t.name}' {list(t.shape)}" for t in outputs)
    raise ManifestError(f"{model_file.name} has {len(outputs)} outputs of different shapes ({listed}) and no "
                        "manifest says which is the mask: set output.tensor (name or index) in its manifest")


def _classes(task: str, channels: int, names: list[str] | None) -> list[str]:
    if task == "binary":
        return ["background", "foreground"]
    n = channels or (len(names) if names else 256)
    if names and len(names) == n:
        return list(names)
    return [f"class_{i}" for i in range(n)]


def _semantic_output(model_file: Path, backend, tin, layout: str) -> tuple[OutputSpec, int, str]:
    """(output spec, channels (0: a class map), notice part) of a semantic/binary model."""
    tout, note = pick_output(model_file, backend.output_specs)
    shape = tuple(tout.shape)
    integer = np.dtype(tout.dtype).type in _INT_MAP_DTYPES or (tout.dtype in (np.uint8, np.int8) and not tout.quantized)
    if len(shape) == 3 or (integer and len(shape) == 4 and 1 in (shape[1], shape[3])):
        out_layout = "NCHW" if len(shape) == 4 and shape[1] == 1 and shape[3] != 1 else "NHWC"
        return (OutputSpec(kind="class_map", tensor=tout.name, layout=out_layout), 0,
                f"{note}output class_map {np.dtype(tout.dtype).name} {list(shape)}")
    if len(shape) != 4:
        raise ManifestError(f"output tensor '{tout.name}' {list(shape)} is not [1, h, w, C], [1, C, h, w] or a "
                            "[1, h, w] class map: set output.tensor and output.kind in a manifest")
    nchw = output_is_nchw(shape, layout == "NCHW")
    channels = shape[1] if nchw else shape[3]
    kind = probe_kind(backend, tin, tout, 1 if nchw else -1)
    out_layout = "NCHW" if nchw else "NHWC"
    return (OutputSpec(kind=kind, tensor=tout.name, layout=out_layout), channels,
            f"{note}output {kind} {out_layout} {list(shape)}")


def infer_manifest(model_file: Path, backend, metadata=None) -> tuple[Manifest, str]:
    """A manifest guessed from a loaded backend's tensors, and the notice line that lists the guesses.

    ``metadata``: an ``edge_seg.model_metadata.ModelMetadata`` read from the model file, or None.
    """
    tin = backend.input_spec
    layout = input_layout(tin)
    h_axis, w_axis, _ = input_axes(layout)
    names = metadata.names if metadata is not None else None
    if sorted(len(t.shape) for t in backend.output_specs) == [3, 4]:
        return _infer_instance_manifest(model_file, backend, layout, metadata)
    output, channels, out_note = _semantic_output(model_file, backend, tin, layout)
    task = "binary" if channels == 1 else "semantic"
    classes = _classes(task, channels, names)
    mean, std, scale = input_mapping(tin)
    manifest = Manifest(
        name=model_file.stem, task=task, classes=classes,
        input=InputSpec(width=tin.shape[w_axis], height=tin.shape[h_axis], layout=layout,
                        dtype=np.dtype(tin.dtype).name, mean=mean, std=std),
        output=output, files={_file_key(model_file): FileEntry(path=model_file.name)})
    named = "names from its metadata" if names and classes == list(names) else \
        "names background, foreground" if task == "binary" else "names class_0.."
    pytorch = "; PyTorch models usually want --norm imagenet" if layout == "NCHW" and metadata is None else ""
    notice = (f"notice: {model_file.name} has no manifest; inferred: input {layout} {tin.shape[w_axis]}x"
              f"{tin.shape[h_axis]} {np.dtype(tin.dtype).name} rgb stretch {scale}{pytorch}; {out_note} "
              f"{'1 channel -> binary' if task == 'binary' else f'{len(classes)} classes -> semantic'}; "
              f"{named}; run 'edge-seg manifest init {model_file.name}' to write and edit it")
    return manifest, notice


def _infer_instance_manifest(model_file: Path, backend, layout: str, metadata) -> tuple[Manifest, str]:
    """An instance manifest for a model with a 3-D and a 4-D output, roles from shapes (and metadata)."""
    from edge_seg.tensors import looks_end2end, resolve_layout

    tin = backend.input_spec
    h_axis, w_axis, _ = input_axes(layout)
    end2end = metadata.end2end if metadata is not None and metadata.end2end is not None \
        else looks_end2end(backend.output_specs)
    names = metadata.names if metadata is not None else None
    try:
        found = resolve_layout(backend.output_specs, len(names) if names and end2end else None, end2end=end2end)
    except ModelError as err:
        raise ManifestError(f"{model_file.name}: {err} (and it has no manifest: set output.kind and "
                            "output.tensors in one)") from None
    if end2end and not names:
        det = backend.output_specs[found.detections]
        raise ManifestError(f"{model_file.name}: output tensor '{det.name}' {list(det.shape)} is an end-to-end head "
                            "[1, max_det, 6+nm], which does not say how many classes there are, and the file has no "
                            "class names: set classes in a manifest ('edge-seg manifest init' starts one)")
    nc = len(names) if end2end else found.num_classes
    classes = list(names) if names and len(names) == nc else [f"class_{i}" for i in range(nc)]
    mean, std, _ = input_mapping(tin)
    det, proto = backend.output_specs[found.detections], backend.output_specs[found.prototypes]
    kind = "yolo_seg_end2end" if end2end else "yolo_seg"
    manifest = Manifest(
        name=model_file.stem, task="instance", classes=classes,
        input=InputSpec(width=tin.shape[w_axis], height=tin.shape[h_axis], layout=layout,
                        dtype=np.dtype(tin.dtype).name, resize="letterbox", mean=mean, std=std),
        output=OutputSpec(kind=kind, tensors=[det.name, proto.name]),
        files={_file_key(model_file): FileEntry(path=model_file.name)})
    named = "names from its metadata" if classes == names else "names class_0.."
    notice = (f"notice: {model_file.name} has no manifest; inferred from output shapes: instance model "
              f"({kind}), {det.name} = {found.describe()}, {proto.name} = prototypes; input {layout} "
              f"{tin.shape[w_axis]}x{tin.shape[h_axis]} {np.dtype(tin.dtype).name} rgb letterbox; {named}; "
              f"run 'edge-seg manifest init {model_file.name}' to write and edit it")
    return manifest, notice
