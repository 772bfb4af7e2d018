"""edge_seg: semantic and instance segmentation on edge devices, results to the cloud.

Small public API::

    from edge_seg import load_model, Segmenter
    with Segmenter.create(model="edge_seg/models/default") as seg:
        result = seg.segment(frame_bgr)      # -> Segmentation
"""

__version__ = "0.1.0"

__all__ = ["Segmentation", "Segmenter", "SegmenterOptions", "load_model", "__version__"]


def __getattr__(name):  # lazy: importing edge_seg stays cheap
    if name == "load_model":
        from edge_seg.model import load_model
        return load_model
    if name in ("Segmenter", "SegmenterOptions"):
        from edge_seg import segmenter
        return getattr(segmenter, name)
    if name == "Segmentation":
        from edge_seg.segmentation import Segmentation
        return Segmentation
    raise AttributeError(name)
