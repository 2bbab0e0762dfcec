"""Data layer: manifest contract, readers, importers, audit, splits, phantoms.

The names below are imported on first use (PEP 562), so reading one image
(``buscad.data.io``) does not import pandas.

Owns: the manifest contract, image and mask readers (with the decode budget), importers,
the audit, leakage groups, splits, BI-RADS ranks, lexicon tokens, phantoms and ``buscad data``.
May import: report (the audit's HTML page), utils, errors, _lazy; nothing above it.
"""

from __future__ import annotations

from buscad._lazy import lazy_exports

_LAZY = {
    "ImageMeta": "buscad.data.io",
    "read_image": "buscad.data.io",
    "read_mask": "buscad.data.io",
    "LABELS": "buscad.data.manifest",
    "Manifest": "buscad.data.manifest",
}

__all__ = ["LABELS", "ImageMeta", "Manifest", "read_image", "read_mask"]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
