"""Heatmap colouring and overlays without matplotlib or PyTorch (fast to import).

One colour map is used everywhere a heatmap is shown (study galleries,
``buscad predict`` overlays, the web app): matplotlib's ``jet``, rebuilt here
from its segment data so that ``JET[i]`` equals ``matplotlib.colormaps["jet"]``
at level ``i`` of 256 (``tests/test_deep_models.py`` checks it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from buscad.utils import atomic_path

#: matplotlib's ``_jet_data``: (x, value) knots of the red, green and blue ramps.
_JET_KNOTS = (
    ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
)


def _jet(n: int = 256) -> np.ndarray:
    x = np.linspace(0.0, 1.0, n)
    return np.stack(
        [np.interp(x, [k[0] for k in ch], [k[1] for k in ch]) for ch in _JET_KNOTS], axis=1
    )


#: ``(256, 3)`` float RGB in [0, 1].
JET: np.ndarray = _jet()


def colorize(cam: np.ndarray) -> np.ndarray:
    """``(H, W)`` map in [0, 1] -> ``(H, W, 3)`` float RGB (level ``min(255, floor(256 v))``)."""
    v = np.nan_to_num(np.asarray(cam, dtype=np.float64))
    idx = np.clip((v * 256).astype(np.int64), 0, 255)
    return JET[idx]


def overlay(gray: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 blend ``(1 - alpha) · gray + alpha · jet(cam)`` (cam resized to the image)."""
    if cam.shape != gray.shape:
        cam = (
            np.asarray(
                Image.fromarray((cam * 255).astype(np.uint8)).resize(
                    gray.shape[::-1], Image.BILINEAR
                )
            )
            / 255.0
        )
    base = np.repeat(gray[..., None] / 255.0, 3, axis=2)
    return np.clip(255 * ((1 - alpha) * base + alpha * colorize(cam)), 0, 255).astype(np.uint8)


def save_png(rgb: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write an RGB uint8 array as PNG (atomically; fast zlib level 1)."""
    p = Path(path)
    with atomic_path(p) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG", compress_level=1)
    return p


__all__ = ["JET", "colorize", "overlay", "save_png"]
