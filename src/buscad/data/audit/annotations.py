"""Burned-in annotations: caliper crosses and text words found in the pixels (no pandas, so readers can warn cheaply)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - opencv-python-headless is a dependency
        raise ImportError("the audit needs OpenCV (pip install opencv-python-headless)") from exc
    return cv2


@dataclass(frozen=True)
class AnnotationParams:
    """Settings of the burned-in annotation heuristic (see :func:`annotation_marks`)."""

    bright: int = 180
    contrast: int = 50
    stroke_offsets: tuple[int, ...] = (2, 3)
    arm: int = 3
    text_height: tuple[int, int] = (9, 30)
    text_aspect: tuple[float, float] = (1.8, 20.0)
    text_fill: tuple[float, float] = (0.12, 0.7)
    text_min_vertical: float = 0.3
    text_min_horizontal: float = 0.1
    border_px: int = 3
    border_max_fraction: float = 0.1


def _ends_kernel(s: int, axis: int) -> np.ndarray:
    k = np.zeros((2 * s + 1, 1) if axis == 0 else (1, 2 * s + 1), np.uint8)
    k.flat[0] = 1
    k.flat[-1] = 1
    return k


def _arm_kernel(lo: int, hi: int, axis: int) -> np.ndarray:
    r = max(abs(lo), abs(hi))
    k = np.zeros(2 * r + 1, np.float32)
    k[r + lo : r + hi + 1] = 1
    return k.reshape(-1, 1) if axis == 0 else k.reshape(1, -1)


def annotation_marks(
    gray8: np.ndarray, params: AnnotationParams | None = None
) -> tuple[list[tuple[int, int, int, int]], list[tuple[int, int, int, int]]]:
    """Find burned-in caliper crosses and text words in a grayscale image.

    Parameters
    ----------
    gray8 : numpy.ndarray
        ``uint8`` grayscale image.
    params : AnnotationParams, optional
        Thresholds (defaults as documented in the module docstring).

    Returns
    -------
    crosses, words : list of tuple
        Boxes ``(x, y, w, h)`` of caliper ``+`` marks and of text words.

    Notes
    -----
    Stroke pixel (offset ``s``): ``g >= bright`` and
    ``g - max(g[y, x - s], g[y, x + s]) >= contrast`` (vertical stroke) or
    ``g - max(g[y - s, x], g[y + s, x]) >= contrast`` (horizontal stroke).
    A cross centre has at least ``arm`` horizontal-stroke pixels among
    ``x - arm - 1 .. x - 2`` and among ``x + 2 .. x + arm + 1`` (stroke rows
    dilated by one pixel) and likewise vertically.
    """
    cv2 = _cv2()
    p = params or AnnotationParams()
    g = np.ascontiguousarray(gray8, dtype=np.uint8)
    H, W = g.shape
    g16 = g.astype(np.int16)
    bright = g >= p.bright
    hl = np.zeros(g.shape, bool)
    vl = np.zeros(g.shape, bool)
    for s in p.stroke_offsets:
        hl |= (g16 - cv2.dilate(g, _ends_kernel(s, 0)).astype(np.int16)) >= p.contrast
        vl |= (g16 - cv2.dilate(g, _ends_kernel(s, 1)).astype(np.int16)) >= p.contrast
    hl &= bright
    vl &= bright
    a = p.arm
    crosses: list[tuple[int, int, int, int]] = []
    if 2 * (a + 3) < H and 2 * (a + 3) < W:
        hld = cv2.dilate(hl.astype(np.uint8), np.ones((3, 1), np.uint8)).astype(np.float32)
        vld = cv2.dilate(vl.astype(np.uint8), np.ones((1, 3), np.uint8)).astype(np.float32)

        def arms(img: np.ndarray, lo: int, hi: int, axis: int) -> np.ndarray:
            k = _arm_kernel(lo, hi, axis)
            return cv2.filter2D(img, -1, k, borderType=cv2.BORDER_CONSTANT) >= a - 0.5

        centre = (
            arms(hld, -(a + 1), -2, 1)
            & arms(hld, 2, a + 1, 1)
            & arms(vld, -(a + 1), -2, 0)
            & arms(vld, 2, a + 1, 0)
            & bright
        )
        m = a + 3
        centre[:m] = False
        centre[-m:] = False
        centre[:, :m] = False
        centre[:, -m:] = False
        if centre.any():
            n, _, _, cen = cv2.connectedComponentsWithStats(centre.astype(np.uint8))
            half = a + 2
            crosses = [
                (round(cx) - half, round(cy) - half, 2 * half + 1, 2 * half + 1)
                for cx, cy in cen[1:n]
            ]
    stroke = hl | vl
    words: list[tuple[int, int, int, int]] = []
    if stroke.any():
        blob = cv2.dilate(stroke.astype(np.uint8), np.ones((3, 5), np.uint8))
        n, lab, st, _ = cv2.connectedComponentsWithStats(blob)
        h0, h1 = p.text_height
        r0, r1 = p.text_aspect
        hh, ww = st[:, 3], st[:, 2]
        ok = (hh >= h0) & (hh <= h1) & (ww >= r0 * hh) & (ww <= r1 * hh)
        ok[0] = False
        b = p.border_px
        for c in np.flatnonzero(ok):
            x, y, w, h, _ = (int(v) for v in st[c])
            sub = stroke[y : y + h, x : x + w] & (lab[y : y + h, x : x + w] == c)
            tot = int(sub.sum())
            if tot == 0:
                continue
            ys, xs = np.nonzero(sub)
            yy, xx = ys + y, xs + x
            edge = (yy < b) | (xx < b) | (yy >= H - b) | (xx >= W - b)
            if edge.mean() >= p.border_max_fraction:
                continue
            fill = tot / (w * h)
            nv = int((vl[y : y + h, x : x + w] & sub).sum())
            nh = int((hl[y : y + h, x : x + w] & sub).sum())
            if (
                p.text_fill[0] <= fill <= p.text_fill[1]
                and nv >= p.text_min_vertical * tot
                and nh >= p.text_min_horizontal * tot
            ):
                words.append((x, y, w, h))
    return crosses, words
