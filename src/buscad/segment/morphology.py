"""BI-RADS-aligned shape descriptors computed from any lesion mask.

Measures (of the largest 8-connected component, holes filled; OpenCV contours):

- ``solidity`` = area / convex-hull area;
- ``convexity_depth`` = deepest convexity defect / equivalent diameter, with
  equivalent diameter ``sqrt(4 A / π)``;
- ``ellipse_misfit`` = 1 - IoU(mask, filled least-squares ellipse of the contour);
- ``axis_ratio`` = major / minor axis of that ellipse;
- ``depth_width_ratio`` = vertical extent / horizontal extent (image axes: the
  skin is at the top, so "depth" is the anteroposterior size);
- ``width_mm``, ``depth_mm``, ``area_mm2`` when the pixel spacing is known.

Descriptors, by fixed rules chosen a priori from geometry (never tuned on the
BrEaST labels they are compared with):

- shape: ``irregular`` if solidity < 0.90 or ellipse misfit > 0.15; else
  ``round`` if axis ratio < 1.2, else ``oval``;
- orientation: ``not parallel`` if depth / width > 1.0 (taller than wide), else ``parallel``;
- margin: ``circumscribed`` if solidity ≥ 0.95, convexity depth ≤ 0.06 and
  ellipse misfit ≤ 0.10; else ``not circumscribed``.

Agreement with a radiologist: Cohen's kappa ``κ = (p_o - p_e) / (1 - p_e)``
(``p_o`` observed agreement, ``p_e`` agreement expected from the marginals;
scikit-learn's ``cohen_kappa_score``) with a 95 % percentile bootstrap CI over lesions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
import pandas as pd

from buscad.data.lexicon import lexicon_tokens
from buscad.errors import MaskError
from buscad.segment.base import components, fill_holes

#: Thresholds of the rules above.
RULES: dict[str, float] = {
    "irregular_solidity": 0.90,
    "irregular_misfit": 0.15,
    "round_axis_ratio": 1.2,
    "not_parallel_depth_width": 1.0,
    "circumscribed_solidity": 0.95,
    "circumscribed_depth": 0.06,
    "circumscribed_misfit": 0.10,
}
DESCRIPTORS: tuple[str, ...] = ("shape", "orientation", "margin")


@dataclass
class Morphology:
    """Descriptors and the measures they come from (see the module docstring)."""

    shape: str
    orientation: str
    margin: str
    area_px: int
    solidity: float
    convexity_depth: float
    ellipse_misfit: float
    axis_ratio: float
    depth_width_ratio: float
    width_mm: float | None = None
    depth_mm: float | None = None
    area_mm2: float | None = None

    def as_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = components(mask)
    if n > 1:
        sizes = np.bincount(lab.ravel())[1:]
        mask = lab == int(np.argmax(sizes)) + 1
    return fill_holes(mask)


def describe(mask: np.ndarray, spacing_mm: float | None = None) -> Morphology:
    """Descriptors of a lesion mask.

    Parameters
    ----------
    mask : numpy.ndarray
        Boolean ``(H, W)`` mask; the largest component is described.
    spacing_mm : float, optional
        Pixel spacing (mm per pixel, square pixels) for the sizes in mm.

    Raises
    ------
    MaskError
        Empty masks or lesions under 5 pixels (no contour to describe).
    """
    m = _largest(np.asarray(mask, bool))
    area = int(m.sum())
    if area < 5:
        raise MaskError("<mask>", f"lesion of {area} pixel(s) is too small to describe")
    m8 = np.pad(m.astype(np.uint8), 2)  # room for contours touching the border
    cs, _ = cv2.findContours(m8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    c = max(cs, key=cv2.contourArea)
    hull = cv2.convexHull(c)
    hull_area = max(cv2.contourArea(hull), 1e-9)
    solidity = float(min(cv2.contourArea(c) / hull_area, 1.0)) if len(c) >= 3 else 1.0
    eq_diam = float(np.sqrt(4 * area / np.pi))
    depth = 0.0
    if len(c) >= 4:
        idx = cv2.convexHull(c, returnPoints=False)
        try:
            defects = cv2.convexityDefects(c, idx)
        except cv2.error:  # self-intersecting contours of 1-px necks
            defects = None
        if defects is not None and len(defects):
            depth = float(np.asarray(defects).reshape(-1, 4)[:, 3].max()) / 256.0
    if len(c) >= 5:
        (ex, ey), (d1, d2), ang = cv2.fitEllipse(c)
        ell = np.zeros_like(m8)
        cv2.ellipse(ell, ((ex, ey), (d1, d2), ang), 1, -1)
        inter = np.logical_and(ell > 0, m8 > 0).sum()
        union = np.logical_or(ell > 0, m8 > 0).sum()
        misfit = 1.0 - inter / max(union, 1)
        axis_ratio = max(d1, d2) / max(min(d1, d2), 1e-9)
    else:
        misfit, axis_ratio = 0.0, 1.0
    ys, xs = np.nonzero(m)
    depth_px, width_px = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    dwr = float(depth_px / width_px)
    r = RULES
    if solidity < r["irregular_solidity"] or misfit > r["irregular_misfit"]:
        shape = "irregular"
    else:
        shape = "round" if axis_ratio < r["round_axis_ratio"] else "oval"
    circ = (
        solidity >= r["circumscribed_solidity"]
        and depth / eq_diam <= r["circumscribed_depth"]
        and misfit <= r["circumscribed_misfit"]
    )
    return Morphology(
        shape=shape,
        orientation="not parallel" if dwr > r["not_parallel_depth_width"] else "parallel",
        margin="circumscribed" if circ else "not circumscribed",
        area_px=area,
        solidity=solidity,
        convexity_depth=depth / eq_diam,
        ellipse_misfit=float(misfit),
        axis_ratio=float(axis_ratio),
        depth_width_ratio=dwr,
        width_mm=float(width_px * spacing_mm) if spacing_mm else None,
        depth_mm=float(depth_px * spacing_mm) if spacing_mm else None,
        area_mm2=float(area * spacing_mm**2) if spacing_mm else None,
    )


def reference_category(descriptor: str, value: object) -> str | None:
    """A radiologist's lexicon cell mapped onto :func:`describe`'s categories.

    Shape keeps ``oval`` / ``round`` / ``irregular``; margin is ``circumscribed`` or
    ``not circumscribed`` (angular, indistinct, microlobulated, spiculated are the
    latter); orientation ``parallel`` / ``not parallel``. Anything else gives None.
    """
    toks = lexicon_tokens(value)
    head = toks[0]
    if descriptor == "shape":
        return head if head in ("oval", "round", "irregular") else None
    if descriptor == "margin":
        if head == "circumscribed":
            return "circumscribed"
        known = {"not circumscribed", "angular", "indistinct", "microlobulated", "spiculated"}
        return "not circumscribed" if head in known else None
    if descriptor == "orientation":
        return head if head in ("parallel", "not parallel") else None
    return None


def kappa_ci(
    a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """Cohen's kappa of two label vectors and its 95 % percentile bootstrap CI."""
    from sklearn.metrics import cohen_kappa_score

    a, b = np.asarray(a), np.asarray(b)
    est = float(cohen_kappa_score(a, b))
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(a), len(a))
        if len(set(a[i]) | set(b[i])) > 1:
            boots.append(cohen_kappa_score(a[i], b[i]))
    boots = np.asarray(boots, float)
    boots = boots[np.isfinite(boots)]
    if not boots.size:
        return est, float("nan"), float("nan")
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return est, float(lo), float(hi)


def agreement(
    predicted: pd.DataFrame, reference: pd.DataFrame, n_boot: int = 1000, seed: int = 0
) -> dict:
    """Kappa (95 % CI) of each descriptor column present in both tables, joined on the index.

    ``predicted`` holds :func:`describe` categories; ``reference`` raw lexicon
    cells (mapped by :func:`reference_category`; rows without a usable value
    are left out). Shape is also scored as irregular vs not (oval or round).
    """
    out: dict = {}
    for d in DESCRIPTORS:
        if d not in predicted.columns or d not in reference.columns:
            continue
        ref = reference[d].map(lambda v, d=d: reference_category(d, v)).dropna()
        pair = pd.concat([predicted[d].rename("p"), ref.rename("r")], axis=1, join="inner").dropna()
        if len(pair) < 2:
            continue
        pairs = {d: (pair["p"].to_numpy(), pair["r"].to_numpy())}
        if d == "shape":
            pairs["shape_irregular"] = tuple(
                np.where(v == "irregular", "irregular", "regular") for v in pairs[d]
            )
        for name, (p, r) in pairs.items():
            k, lo, hi = kappa_ci(p, r, n_boot, seed)
            out[name] = {
                "n": len(p),
                "kappa": k,
                "low": lo,
                "high": hi,
                "accuracy": float(np.mean(p == r)),
                "confusion": pd.crosstab(
                    pd.Series(r, name="reference"), pd.Series(p, name="predicted")
                ).to_dict(),
            }
    return out


__all__ = [
    "DESCRIPTORS",
    "RULES",
    "Morphology",
    "agreement",
    "describe",
    "kappa_ci",
    "reference_category",
]
