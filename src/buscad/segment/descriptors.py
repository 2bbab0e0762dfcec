"""Lesion descriptors a sonographer reads, computed from the image and any outline.

Two families, both free of the scanner's gain and of how finely the outline was
traced, chosen for transfer between scanners (benchmarks/external.py measures
them):

- :func:`smooth_shape`: BI-RADS shape, orientation and lobulation of the outline
  after low-pass Fourier smoothing (``sm_*``);
- :func:`echo_features`: echogenicity, heterogeneity, margin sharpness and
  posterior features as ratios inside the image (``echo_*``).

:func:`lesion_descriptors` returns both; studies read them as ``morph_<name>``
columns (:mod:`buscad.study.roi`) and bundles compute them at prediction time.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Names of :func:`smooth_shape`'s values.
SHAPE_NAMES: tuple[str, ...] = (
    "sm_solidity",
    "sm_convexity",
    "sm_circularity",
    "sm_axis_ratio",
    "sm_depth_width",
    "sm_ellipse_misfit",
    "sm_hf_energy",
    "sm_angle",
)
#: Names of :func:`echo_features`' values.
ECHO_NAMES: tuple[str, ...] = (
    "echo_lesion_ring",
    "echo_lesion_image",
    "echo_cv",
    "echo_posterior",
    "echo_posterior_lesion",
    "echo_edge",
    "echo_dark_frac",
    "echo_entropy",
)
#: Names of :func:`lesion_descriptors`' values, in order.
DESCRIPTOR_NAMES: tuple[str, ...] = SHAPE_NAMES + ECHO_NAMES


def _largest(mask: np.ndarray) -> np.ndarray:
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return mask.astype(bool)
    return lab == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


# ------------------------------------------------------------------- shape
def smooth_shape(mask: np.ndarray, n_harmonics: int = 12, n_points: int = 256) -> dict[str, float]:
    """Shape of the outline after removing how finely it was traced.

    The largest component's outer contour is resampled to ``n_points`` points
    equally spaced along its length and low-pass filtered by keeping its first
    ``n_harmonics`` Fourier harmonics (elliptic Fourier smoothing). Lobulation
    and angularity at the scale of the lesion survive; pixel-level jags that
    depend on the annotator's tool do not. Measures of the smoothed polygon:
    ``sm_solidity`` = area / convex-hull area, ``sm_convexity`` = hull perimeter
    / perimeter, ``sm_circularity`` = 4πA / P², ``sm_axis_ratio`` (fitted ellipse
    major/minor), ``sm_depth_width`` (vertical / horizontal extent),
    ``sm_ellipse_misfit`` (1 - IoU with the fitted ellipse), ``sm_hf_energy`` =
    share of the contour's Fourier energy in harmonics 3..``n_harmonics``
    (lobulation), ``sm_angle`` = |orientation of the major axis| in degrees from
    horizontal.
    """
    m = _largest(mask).astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    nan = float("nan")
    if not contours:
        return dict.fromkeys(SHAPE_NAMES, nan)
    c = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(float)
    if len(c) < 8:
        return dict.fromkeys(SHAPE_NAMES, nan)
    seg = np.r_[0, np.cumsum(np.hypot(*np.diff(np.vstack([c, c[:1]]), axis=0).T))]
    t = np.linspace(0, seg[-1], n_points, endpoint=False)
    closed = np.vstack([c, c[:1]])
    z = np.interp(t, seg, closed[:, 0]) + 1j * np.interp(t, seg, closed[:, 1])
    F = np.fft.fft(z)
    k = np.fft.fftfreq(n_points, d=1.0 / n_points)
    keep = np.abs(k) <= n_harmonics
    energy = np.abs(F) ** 2
    low = energy[(np.abs(k) >= 1) & (np.abs(k) <= 2)].sum()
    mid = energy[(np.abs(k) >= 3) & keep].sum()
    zs = np.fft.ifft(np.where(keep, F, 0))
    poly = np.stack([zs.real, zs.imag], 1).astype(np.float32)
    area = abs(cv2.contourArea(poly))
    perim = cv2.arcLength(poly, True)
    hull = cv2.convexHull(poly)
    h_area = cv2.contourArea(hull)
    h_perim = cv2.arcLength(hull, True)
    (cx, cy), (a1, a2), ang = cv2.fitEllipse(poly)
    major, minor = max(a1, a2), max(min(a1, a2), 1e-6)
    # ellipse misfit on a raster of the smoothed polygon
    x0, y0 = np.floor(poly.min(0)) - 2
    w, h = (np.ceil(poly.max(0)) - np.floor(poly.min(0)) + 5).astype(int)
    sm = np.zeros((h, w), np.uint8)
    cv2.fillPoly(sm, [np.round(poly - [x0, y0]).astype(np.int32)], 1)
    el = np.zeros_like(sm)
    cv2.ellipse(el, ((cx - x0, cy - y0), (a1, a2), ang), 1, -1)
    inter, union = (sm & el).sum(), (sm | el).sum()
    # cv2 angle is of the first axis (a1) from the x axis; angle of the major axis:
    major_ang = ang if a1 >= a2 else ang + 90.0
    major_ang = (major_ang + 180.0) % 180.0
    return {
        "sm_solidity": area / h_area if h_area > 0 else nan,
        "sm_convexity": h_perim / perim if perim > 0 else nan,
        "sm_circularity": 4 * np.pi * area / perim**2 if perim > 0 else nan,
        "sm_axis_ratio": major / minor,
        "sm_depth_width": float(np.ptp(poly[:, 1]) / max(np.ptp(poly[:, 0]), 1e-6)),
        "sm_ellipse_misfit": 1 - inter / union if union else nan,
        "sm_hf_energy": float(mid / (low + mid)) if low + mid > 0 else nan,
        "sm_angle": float(min(major_ang, 180.0 - major_ang)),
    }


# ----------------------------------------------------------------- regions
def lesion_regions(mask: np.ndarray) -> dict:
    """The lesion and the regions around it that the echo ratios and MedSAM features read.

    ``lesion`` ``L``: the mask's largest 8-connected component. ``ring``: ``L``
    dilated by an elliptical disc of radius ``r = max(2, round(sqrt(|L| / pi) / 4))``
    (a quarter of the equivalent radius), ``L`` excluded. ``posterior``: the band
    of ``L``'s width directly below its bounding box, as deep as ``L`` is tall
    (rows ``y1 .. min(H, y1 + h) - 1``, columns ``x0 .. x1 - 1``), where acoustic
    shadowing or enhancement shows. ``box``: ``(y0, y1, x0, x1)`` of ``L``, end
    exclusive. Boolean masks of the image's shape; ``posterior`` is empty when the
    lesion touches the bottom edge.

    Raises
    ------
    ValueError
        The mask is empty.
    """
    L = _largest(np.asarray(mask, bool))
    area = int(L.sum())
    if area == 0:
        raise ValueError("the mask is empty")
    H = L.shape[0]
    r = max(2, round(0.25 * np.sqrt(area / np.pi)))
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    ring = cv2.dilate(L.astype(np.uint8), k).astype(bool) & ~L
    ys, xs = np.nonzero(L)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    post = np.zeros_like(L)
    post[y1 : min(H, y1 + (y1 - y0)), x0:x1] = True
    return {"lesion": L, "ring": ring, "posterior": post, "box": (y0, y1, x0, x1)}


# -------------------------------------------------------------------- echo
def echo_features(gray: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Echogenicity, heterogeneity, margin contrast and posterior features, gain-free.

    With ``L`` the lesion's pixels, ``R`` a ring around it (dilation by a quarter
    of the equivalent radius, lesion excluded), ``P`` the band of the lesion's
    width below it (as deep as the lesion is tall) and ``S`` the two bands of
    equal size beside ``P`` at the same depth, and ``I`` the whole image:
    ``echo_lesion_ring`` = mean(L) / mean(R); ``echo_lesion_image`` =
    (mean(L) - median(I)) / IQR(I); ``echo_cv`` = sd(L) / mean(L);
    ``echo_posterior`` = mean(P) / mean(S) (> 1 enhancement, < 1 shadowing);
    ``echo_posterior_lesion`` = mean(P) / mean(L); ``echo_edge`` = mean
    gradient magnitude on the lesion's boundary / mean gradient in R
    (margin sharpness); ``echo_dark_frac`` = share of L darker than the 10th
    percentile of R; ``echo_entropy`` = Shannon entropy (bits) of L's 32-bin
    histogram after scaling by R's 1st-99th percentiles.
    """
    nan = float("nan")
    g = gray.astype(np.float32)
    H, W = g.shape
    L = _largest(mask)
    if int(L.sum()) < 16:
        return {}
    reg = lesion_regions(L)
    L, ring = reg["lesion"], reg["ring"]
    y0, y1, x0, x1 = reg["box"]
    h, w = y1 - y0, x1 - x0
    py0, py1 = y1, min(H, y1 + h)
    post = g[py0:py1, x0:x1]
    side = np.concatenate(
        [g[py0:py1, max(0, x0 - w) : x0].ravel(), g[py0:py1, x1 : min(W, x1 + w)].ravel()]
    )
    mL, mR = float(g[L].mean()), float(g[ring].mean()) if ring.any() else nan
    q25, q50, q75 = np.percentile(g, [25, 50, 75])
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.hypot(gx, gy)
    edge = L & ~cv2.erode(L.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    lo, hi = np.percentile(g[ring], [1, 99]) if ring.any() else (0.0, 255.0)
    scaled = np.clip((g[L] - lo) / max(hi - lo, 1e-6), 0, 1)
    hist = np.histogram(scaled, bins=32, range=(0, 1))[0].astype(float)
    p = hist / hist.sum()
    eps = 1e-6
    return {
        "echo_lesion_ring": mL / (mR + eps) if mR == mR else nan,
        "echo_lesion_image": (mL - q50) / (q75 - q25 + eps),
        "echo_cv": float(g[L].std() / (mL + eps)),
        "echo_posterior": float(post.mean() / (side.mean() + eps))
        if post.size and side.size
        else nan,
        "echo_posterior_lesion": float(post.mean() / (mL + eps)) if post.size else nan,
        "echo_edge": float(mag[edge].mean() / (mag[ring].mean() + eps)) if ring.any() else nan,
        "echo_dark_frac": float((g[L] < np.percentile(g[ring], 10)).mean()) if ring.any() else nan,
        "echo_entropy": float(-(p[p > 0] * np.log2(p[p > 0])).sum()),
    }


def lesion_descriptors(gray: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """:func:`smooth_shape` and :func:`echo_features` of one lesion (NaN where undefined).

    Parameters
    ----------
    gray : numpy.ndarray
        2-D grayscale image (any dtype; compared only with itself).
    mask : numpy.ndarray
        Lesion outline of the same shape (nonzero = lesion).
    """
    if gray.shape != mask.shape:
        raise ValueError(f"image {gray.shape} and mask {mask.shape} differ in shape")
    m = np.asarray(mask).astype(bool)
    out = dict.fromkeys(DESCRIPTOR_NAMES, float("nan"))
    if m.sum() < 16:
        return out
    out.update(smooth_shape(m))
    out.update(echo_features(np.asarray(gray), m))
    return {k: float(out[k]) for k in DESCRIPTOR_NAMES}


__all__ = [
    "DESCRIPTOR_NAMES",
    "ECHO_NAMES",
    "SHAPE_NAMES",
    "echo_features",
    "lesion_descriptors",
    "lesion_regions",
    "smooth_shape",
]
