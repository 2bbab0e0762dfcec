"""Automatic lesion outlines: a box-prompted and automatic segmenter, its evaluation, morphology.

The stable API for bundles, studies and the web app::

    seg = Segmenter.load(path)                      # ONNX Runtime when segmenter.onnx exists
    res = seg.predict(gray, box=None)               # SegResult(mask, prob, candidates, found, mode)
    seg.export_onnx(path)

:mod:`buscad.segment.infer` (the inference path) imports no torch;
:mod:`~buscad.segment.model` and :mod:`~buscad.segment.train` do.
Names are imported on first use.
"""

from __future__ import annotations

from buscad._lazy import lazy_exports

_TABLE: dict[str, str] = {
    "Candidate": "buscad.segment.infer",
    "SegConfig": "buscad.segment.infer",
    "SegResult": "buscad.segment.infer",
    "Segmenter": "buscad.segment.infer",
    "TrainConfig": "buscad.segment.train",
    "load_items": "buscad.segment.train",
    "train_segmenter": "buscad.segment.train",
    "evaluate_segmenter": "buscad.segment.evaluate",
    "Morphology": "buscad.segment.morphology",
    "describe": "buscad.segment.morphology",
    "agreement": "buscad.segment.morphology",
}
__getattr__, __dir__ = lazy_exports(__name__, _TABLE, globals())
__all__ = sorted(_TABLE)
