"""The box-ellipse baseline: the ellipse inscribed in the prompt box, no network.

A box-prompted segmenter has to beat this to have learned anything beyond the
box: the ellipse whose axes are the box's sides, centred in the box. On smooth,
oval lesions it is already a strong outline (Dice ≈ 0.8 from a ±15 % jittered
box), so a segmenter test whose threshold it reaches cannot tell a trained
network from none. It has no automatic mode: without a box it finds nothing.

Pixel ``(i, j)`` (row, column) is inside for the box ``(x0, y0, x1, y1)`` (end
exclusive) when ``((j + ½ - cx) / rx)² + ((i + ½ - cy) / ry)² ≤ 1`` with
``cx = (x0 + x1) / 2``, ``rx = (x1 - x0) / 2`` and likewise ``cy``, ``ry``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from buscad.segment.base import Candidate, SegResult, mask_box


def box_ellipse(box: Sequence[float], shape: tuple[int, int]) -> np.ndarray:
    """Boolean ``(H, W)`` mask of the ellipse inscribed in ``box`` (see the module docstring).

    Parameters
    ----------
    box : sequence of float
        ``(x0, y0, x1, y1)`` in pixels, end exclusive; it may reach outside the image.
    shape : tuple of int
        ``(H, W)`` of the image.

    Returns
    -------
    numpy.ndarray
        The ellipse, clipped to the image (empty when the box lies outside it).
    """
    h, w = int(shape[0]), int(shape[1])
    x0, y0, x1, y1 = (float(v) for v in box)
    rx, ry = max((x1 - x0) / 2, 0.5), max((y1 - y0) / 2, 0.5)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0


class EllipseBaseline:
    """A stand-in for :class:`~buscad.segment.infer.Segmenter` that outlines the box ellipse.

    ``predict(gray, box)`` returns :func:`box_ellipse` (confidence 1, probability
    1 inside); ``predict(gray)`` without a box finds nothing. It can be handed to
    :func:`buscad.segment.evaluate.evaluate_segmenter` like a trained segmenter.
    """

    name = "box ellipse"

    def predict(
        self,
        gray: np.ndarray,
        box: Sequence[float] | None = None,
        point: Sequence[float] | None = None,
    ) -> SegResult:
        """The inscribed ellipse of ``box``; no lesion found without one."""
        shape = np.asarray(gray).shape[:2]
        if box is None:
            empty = np.zeros(shape, bool)
            return SegResult(empty, np.zeros(shape, np.float32), [], False, "auto")
        mask = box_ellipse(box, shape)
        b = mask_box(mask)
        cands = [Candidate(b, mask, 1.0)] if b is not None else []
        return SegResult(mask, mask.astype(np.float32), cands, bool(cands), "box")


__all__ = ["EllipseBaseline", "box_ellipse"]
