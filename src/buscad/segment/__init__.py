"""Automatic lesion outlines: a box-prompted and automatic segmenter, its evaluation, morphology.

The stable API for bundles, studies and the web app::

    seg = Segmenter.load(path)                      # ONNX Runtime when segmenter.onnx exists
    res = seg.predict(gray, box=None)               # SegResult(mask, prob, candidates, found, mode)
    seg.export_onnx(path)

:mod:`buscad.segment.infer` and :mod:`~buscad.segment.base` (the inference path) import no torch;
:mod:`~buscad.segment.model` and :mod:`~buscad.segment.train` do.
Names are imported on first use.

Owns: the lesion segmenter (model, training, torch-free inference, ONNX), its evaluation,
morphology descriptors and ``buscad segment``. May import: models (packaged encoder weights),
data, _compat, utils, errors; never classical, study, bundle, reader or serve.
"""

from __future__ import annotations

from buscad._lazy import lazy_exports

_TABLE: dict[str, str] = {
    "Candidate": "buscad.segment.base",
    "SegConfig": "buscad.segment.base",
    "SegResult": "buscad.segment.base",
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
