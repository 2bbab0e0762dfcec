"""Data layer: manifest contract, readers, importers, audit, splits, phantoms.

The names below are imported on first use (PEP 562), so reading one image
(``buscad.data.io``) does not import pandas.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "ImageMeta": "buscad.data.io",
    "read_image": "buscad.data.io",
    "read_mask": "buscad.data.io",
    "LABELS": "buscad.data.manifest",
    "Manifest": "buscad.data.manifest",
}

__all__ = ["LABELS", "ImageMeta", "Manifest", "read_image", "read_mask"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'buscad.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
