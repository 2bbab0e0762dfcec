"""Explanations: Grad-CAM family and saliency maps, overlays and galleries, and the jet colour map.

Owns: cam (maps from a model), heatmap (colour map and overlays), ``buscad explain``. May import: buscad.models, buscad.data, buscad.utils.
"""

from __future__ import annotations

from buscad._lazy import lazy_exports

#: Public name -> defining module, imported on first use (PEP 562).
_LAZY = {
    "JET": "buscad.explain.heatmap",
    "METHODS": "buscad.explain.cam",
    "colorize": "buscad.explain.heatmap",
    "compute_cam": "buscad.explain.cam",
    "explain_manifest": "buscad.explain.cam",
    "make_gallery": "buscad.explain.cam",
    "overlay": "buscad.explain.heatmap",
    "saliency_map": "buscad.explain.cam",
    "save_png": "buscad.explain.heatmap",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
