"""Shape of a lesion outline: the audit's mask geometry (the shortcut reference).

NumPy and OpenCV only (no pandas), so a bundle computes it at prediction time.
"""

from __future__ import annotations

import numpy as np

GEOMETRY_FEATURES: tuple[str, ...] = (
    "log_area",
    "area_fraction",
    "solidity",
    "convexity",
    "aspect_ratio",
    "bbox_width",
    "bbox_height",
    "bbox_cx",
    "bbox_cy",
)


def mask_geometry(mask: np.ndarray) -> dict[str, float]:
    """Shape descriptors of a binary lesion mask.

    Area is measured on the whole mask; the shape descriptors on its largest
    8-connected component (the main lesion), so that a second lesion drawn in
    the same image does not make the outline look irregular.

    Returns
    -------
    dict
        ``area_px`` (pixel count of the mask), ``log_area`` = ln(area_px),
        ``area_fraction`` = area_px / image pixels; for the largest component:
        ``solidity`` = pixels / pixels of its filled convex hull,
        ``convexity`` = convex-hull perimeter / outer contour perimeter
        (``cv2.arcLength``), ``aspect_ratio`` = box width / box height,
        ``bbox_width``/``bbox_height`` relative to the image width/height,
        ``bbox_cx``/``bbox_cy`` box centre relative to the image;
        ``n_components``. NaN where undefined (empty mask).
    """
    import cv2

    H, W = mask.shape
    m = np.ascontiguousarray(mask.astype(np.uint8))
    area = int(m.sum())
    nan = float("nan")
    out = dict.fromkeys(("area_px", *GEOMETRY_FEATURES, "n_components"), nan)
    out["area_px"] = float(area)
    out["n_components"] = 0.0
    if area == 0:
        return out
    ncomp, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    main = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    comp = (lab == main).astype(np.uint8)
    contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    pts = np.vstack([c.reshape(-1, 2) for c in contours])
    hull = cv2.convexHull(pts)
    hull_img = np.zeros_like(comp)
    cv2.fillConvexPoly(hull_img, hull, 1)
    hull_area = int(hull_img.sum())
    perim = float(sum(cv2.arcLength(c, True) for c in contours))
    hull_perim = float(cv2.arcLength(hull, True))
    x, y, bw, bh = (int(v) for v in stats[main, :4])
    out.update(
        log_area=float(np.log(area)),
        area_fraction=area / (H * W),
        solidity=int(comp.sum()) / hull_area if hull_area else nan,
        convexity=hull_perim / perim if perim > 0 else nan,
        aspect_ratio=bw / bh,
        bbox_width=bw / W,
        bbox_height=bh / H,
        bbox_cx=(x + bw / 2) / W,
        bbox_cy=(y + bh / 2) / H,
        n_components=float(ncomp - 1),
    )
    return out


__all__ = ["GEOMETRY_FEATURES", "mask_geometry"]
