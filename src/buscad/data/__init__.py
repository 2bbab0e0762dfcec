"""Data layer: manifest contract, readers, importers, audit, splits, phantoms."""

from buscad.data.io import ImageMeta, read_image, read_mask
from buscad.data.manifest import LABELS, Manifest

__all__ = ["LABELS", "ImageMeta", "Manifest", "read_image", "read_mask"]
