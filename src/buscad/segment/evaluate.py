"""Evaluation of a segmenter against expert masks, with bootstrap CIs and a gallery.

Per image (``A`` = predicted mask, ``B`` = expert mask, ``H × W`` the image):

- Dice ``2 |A ∩ B| / (|A| + |B|)`` and IoU ``|A ∩ B| / |A ∪ B|`` (MONAI's
  ``compute_dice`` / ``compute_iou``);
- HD95: the 95th percentile of the symmetric surface distances between ``A``
  and ``B`` in pixels (MONAI's ``compute_hausdorff_distance(percentile=95)``),
  and in mm when ``pixel_spacing_mm`` is known. When exactly one of ``A``, ``B``
  is empty (a missed lesion, or an outline on a lesion-free image) HD95 is the
  image diagonal ``sqrt(H² + W²)``, the largest distance the image allows:
  a miss is the worst outcome, never left out of the mean.

Box-prompted mode: every expert lesion (connected component of ``B``) is prompted
with its box, each side moved by ``U(-jitter, +jitter)`` of the box side
(seeded); the union of the outlines is compared with ``B``. A lesion whose
outline comes back empty is a *box miss*; the image's Dice then falls (0 when it
is the image's only lesion) and the misses are also counted on their own.

Automatic mode: an expert lesion is *found* when a candidate's box has IoU ≥ 0.5
with the lesion's box; a candidate matching no lesion is a *false candidate*.
Detection sensitivity = found lesions / expert lesions; missed lesions = expert
lesions - found lesions; false candidates per image = false candidates / images
(lesion-free images included). Automatic Dice is the Dice of the image's
candidate union with ``B``, reported two ways: over all lesion images (the
headline: an image whose lesion was missed counts with Dice 0) and, beside it,
where found (images whose lesions were all found), which alone would flatter a
segmenter that finds little.

Confidence intervals: 95 % percentile bootstrap over images (``n_boot``
resamples, seeded); ratios are recomputed as ratios of sums on each resample.
"""

from __future__ import annotations

import html
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from buscad.segment.base import SegResult, box_iou, components, mask_box
from buscad.segment.baseline import EllipseBaseline
from buscad.segment.infer import Segmenter
from buscad.segment.train import Item, jitter_box
from buscad.utils import atomic_path, atomic_write_text


def overlap_metrics(
    pred: np.ndarray, truth: np.ndarray, spacing_mm: float | None = None
) -> dict[str, float]:
    """Dice, IoU and HD95 (px, and mm when ``spacing_mm`` is given) of two boolean masks.

    Two empty masks give Dice = IoU = 1 and HD95 = 0; exactly one empty mask gives
    Dice = IoU = 0 and HD95 = the image diagonal ``sqrt(H² + W²)`` (see the module
    docstring). ``hd95_mm`` is NaN without ``spacing_mm``.
    """
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou

    a, b = pred.astype(bool), truth.astype(bool)
    if not a.any() and not b.any():
        return {"dice": 1.0, "iou": 1.0, "hd95_px": 0.0, "hd95_mm": 0.0 if spacing_mm else np.nan}
    ta = torch.from_numpy(a[None, None].astype(np.float32))
    tb = torch.from_numpy(b[None, None].astype(np.float32))
    dice = float(compute_dice(ta, tb, ignore_empty=False)[0, 0])
    iou = float(compute_iou(ta, tb, ignore_empty=False)[0, 0])
    if a.any() and b.any():
        with warnings.catch_warnings():  # MONAI 1.6 warns about its own deprecated argument
            warnings.simplefilter("ignore", FutureWarning)
            hd = compute_hausdorff_distance(ta, tb, include_background=True, percentile=95)
        hd = float(hd[0, 0])
    else:
        hd = float(np.hypot(*a.shape))
    return {
        "dice": dice,
        "iou": iou,
        "hd95_px": hd,
        "hd95_mm": hd * spacing_mm if spacing_mm else float("nan"),
    }


def match_candidates(
    boxes: Sequence[Sequence[float]], truth: np.ndarray, iou_min: float = 0.5
) -> tuple[int, int, int]:
    """``(n_lesions, n_found, n_false)``: greedy one-to-one matching by box IoU ≥ ``iou_min``."""
    lab, n = components(truth)
    tboxes = [mask_box(lab == k) for k in range(1, n + 1)]
    used: set[int] = set()
    false = 0
    for cb in boxes:
        best, best_iou = -1, iou_min
        for j, tb in enumerate(tboxes):
            if j in used:
                continue
            v = box_iou(cb, tb)  # type: ignore[arg-type]
            if v >= best_iou:
                best, best_iou = j, v
        if best < 0:
            false += 1
        else:
            used.add(best)
    return n, len(used), false


def bootstrap_ci(
    values: np.ndarray,
    stat: Callable[[np.ndarray], float],
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(estimate, low, high)``: ``stat`` on all rows and its 95 % percentile bootstrap CI.

    ``values`` is ``(n,)`` or ``(n, k)``; rows (images) are resampled with replacement.
    """
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    est = float(stat(values))
    rng = np.random.default_rng(seed)
    boots = np.array([stat(values[rng.integers(0, n, n)]) for _ in range(n_boot)], float)
    boots = boots[np.isfinite(boots)]
    if boots.size == 0:
        return est, float("nan"), float("nan")
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return est, float(lo), float(hi)


def _nanmean(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _ratio(v: np.ndarray) -> float:
    return float(v[:, 0].sum() / v[:, 1].sum()) if v[:, 1].sum() > 0 else float("nan")


def predict_items(
    seg: Segmenter | EllipseBaseline,
    items: Sequence[Item],
    jitter: float = 0.15,
    seed: int = 0,
    spacing: dict[str, float] | None = None,
    keep: bool = False,
) -> tuple[pd.DataFrame, dict[str, tuple[SegResult | None, SegResult]]]:
    """Per-image rows of both modes (see the module docstring).

    Parameters
    ----------
    seg : Segmenter or EllipseBaseline
        Anything with ``predict(gray, box=None)`` returning a :class:`SegResult`.

    Returns
    -------
    table : pandas.DataFrame
        One row per image: ``image_id``, ``cohort``, ``label``, ``box_dice``,
        ``box_iou``, ``box_hd95_px``, ``box_hd95_mm`` (spacing from ``spacing`` by image id,
        else the item's ``spacing_mm``), ``box_missed`` (prompted lesions whose
        outline came back empty; the ``box_*`` columns are NaN on lesion-free
        images), ``n_lesions``, ``n_found``, ``n_false``, ``n_candidates``,
        ``auto_dice``, ``auto_hd95_px`` (NaN on lesion-free images) and ``all_found``.
    results : dict
        ``image_id -> (box result or None, automatic result)`` when ``keep``.
    """
    rng = np.random.default_rng(seed)
    rows, kept = [], {}
    for it in items:
        sp = (spacing or {}).get(it.image_id, it.spacing_mm)
        row: dict = {"image_id": it.image_id, "cohort": it.cohort, "label": it.label}
        box_res = None
        if it.mask.any():
            lab, n = components(it.mask)
            union = np.zeros_like(it.mask)
            missed = 0
            for k in range(1, n + 1):
                b = jitter_box(mask_box(lab == k), rng, jitter)  # type: ignore[arg-type]
                box_res = seg.predict(it.gray, box=b)
                missed += int(not box_res.mask.any())
                union |= box_res.mask
            m = overlap_metrics(union, it.mask, sp)
            row.update({f"box_{k}": v for k, v in m.items()})
            row["box_missed"] = missed
            if keep and box_res is not None:
                box_res = SegResult(
                    union, box_res.prob, box_res.candidates, bool(union.any()), "box"
                )
        auto = seg.predict(it.gray)
        n_les, n_found, n_false = match_candidates([c.box for c in auto.candidates], it.mask)
        am = overlap_metrics(auto.mask, it.mask, sp) if n_les else None
        row.update(
            {
                "n_lesions": n_les,
                "n_found": n_found,
                "n_false": n_false,
                "n_candidates": len(auto.candidates),
                "all_found": bool(n_les > 0 and n_found == n_les),
                "auto_dice": am["dice"] if am else np.nan,
                "auto_hd95_px": am["hd95_px"] if am else np.nan,
            }
        )
        rows.append(row)
        if keep:
            kept[it.image_id] = (box_res, auto)
    return pd.DataFrame(rows), kept


def summarise(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict:
    """Point estimates with 95 % bootstrap CIs over images, overall and per cohort.

    Keys of each summary (``{"value", "low", "high"}`` unless said otherwise):

    - ``box_dice``, ``box_iou``, ``box_hd95_px``, ``box_hd95_mm``: means over lesion
      images (a box miss enters with Dice 0 and HD95 = image diagonal);
    - ``box_misses``: ``{"n", "of"}``, prompted lesions with an empty outline out of all
      prompted lesions;
    - ``auto_dice``: the headline automatic Dice, mean over *all* lesion images (missed
      lesions count 0); ``auto_dice_where_found`` beside it (images whose lesions were
      all found), and ``auto_hd95_px`` over all lesion images;
    - ``auto_misses``: ``{"n", "of"}``, expert lesions no candidate matched;
    - ``detection_sensitivity`` (found / lesions) and ``false_candidates_per_image``.
    """

    def ci(values: np.ndarray, stat: Callable[[np.ndarray], float]) -> dict:
        return dict(
            zip(("value", "low", "high"), bootstrap_ci(values, stat, n_boot, seed), strict=True)
        )

    def one(t: pd.DataFrame) -> dict:
        lesion = t["n_lesions"].to_numpy() > 0
        out: dict = {"n_images": len(t), "n_lesion_images": int(lesion.sum())}
        for col in ("box_dice", "box_iou", "box_hd95_px", "box_hd95_mm"):
            if col in t:
                out[col] = ci(t.loc[lesion, col].to_numpy(float), _nanmean)
        if "box_missed" in t:
            out["box_misses"] = {
                "n": int(t.loc[lesion, "box_missed"].sum()),
                "of": int(t.loc[lesion, "n_lesions"].sum()),
            }
        out["auto_dice"] = ci(t.loc[lesion, "auto_dice"].to_numpy(float), _nanmean)
        out["auto_dice_where_found"] = ci(
            t.loc[t["all_found"], "auto_dice"].to_numpy(float), _nanmean
        )
        if "auto_hd95_px" in t:
            out["auto_hd95_px"] = ci(t.loc[lesion, "auto_hd95_px"].to_numpy(float), _nanmean)
        out["auto_misses"] = {
            "n": int((t["n_lesions"] - t["n_found"]).sum()),
            "of": int(t["n_lesions"].sum()),
        }
        out["detection_sensitivity"] = ci(t[["n_found", "n_lesions"]].to_numpy(float), _ratio)
        fp = np.c_[t["n_false"].to_numpy(float), np.ones(len(t))]
        out["false_candidates_per_image"] = ci(fp, _ratio)
        normals = t[~lesion]
        if len(normals):
            out["lesion_free_images_with_candidates"] = float((normals["n_candidates"] > 0).mean())
        return out

    res = {"overall": one(table)}
    if "cohort" in table and table["cohort"].nunique() > 1:
        res["by_cohort"] = {str(c): one(g) for c, g in table.groupby("cohort")}
    return res


def _overlay(gray: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """RGB image with the expert outline in green and the prediction in red."""
    import cv2

    rgb = np.repeat(gray[..., None], 3, axis=-1).copy()
    for m, col in ((truth, (0, 220, 0)), (pred, (255, 40, 40))):
        cs, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, cs, -1, col, 1)
    return rgb


def write_gallery(
    table: pd.DataFrame,
    items: Sequence[Item],
    results: dict[str, tuple[SegResult | None, SegResult]],
    out: str | os.PathLike[str],
    worst: int = 12,
) -> Path:
    """Write ``index.html`` and PNG overlays of the ``worst`` images by box Dice.

    Green: expert outline; red: box-prompted outline (left) and automatic (right).
    Returns the HTML path.
    """
    from PIL import Image

    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    by_id = {it.image_id: it for it in items}
    t = table.dropna(subset=["box_dice"]).sort_values("box_dice").head(worst)
    cells = []
    for i, r in enumerate(t.itertuples()):
        it = by_id[r.image_id]
        box_res, auto = results[r.image_id]
        panels = [
            _overlay(it.gray, it.mask, box_res.mask if box_res else np.zeros_like(it.mask)),
            _overlay(it.gray, it.mask, auto.mask),
        ]
        name = f"worst_{i:02d}.png"
        with atomic_path(outp / name) as tmp:
            Image.fromarray(np.concatenate(panels, axis=1)).save(tmp, format="PNG")
        cells.append(
            f"<figure><img src='{name}'><figcaption>{html.escape(str(r.image_id))} "
            f"({html.escape(str(r.cohort))}): box Dice {r.box_dice:.3f}, automatic "
            f"{r.n_found}/{r.n_lesions} found, {r.n_false} false</figcaption></figure>"
        )
    page = (
        "<!doctype html><meta charset='utf-8'><title>buscad segmentation: worst cases</title>"
        "<style>figure{display:inline-block;margin:6px}img{max-width:640px}</style>"
        "<h1>Worst cases by box-prompted Dice</h1><p>Green: expert outline. Red: box-prompted "
        "outline (left), automatic outline (right).</p>" + "".join(cells)
    )
    return atomic_write_text(outp / "index.html", page)


def evaluate_segmenter(
    seg: Segmenter | EllipseBaseline,
    items: Sequence[Item],
    out: str | os.PathLike[str] | None = None,
    jitter: float = 0.15,
    seed: int = 0,
    n_boot: int = 1000,
    spacing: dict[str, float] | None = None,
    gallery: int = 12,
) -> dict:
    """Evaluate both modes on ``items``; write ``per_image.csv``, ``metrics.json`` and the gallery.

    Returns the summary of :func:`summarise`.
    """
    from buscad.utils import atomic_write_json, atomic_write_table

    table, kept = predict_items(seg, items, jitter, seed, spacing, keep=out is not None)
    summary = summarise(table, n_boot, seed)
    summary["protocol"] = {"jitter": jitter, "seed": seed, "n_boot": n_boot, "match_iou": 0.5}
    if out is not None:
        outp = Path(out)
        outp.mkdir(parents=True, exist_ok=True)
        atomic_write_table(table, outp / "per_image.csv")
        atomic_write_json(outp / "metrics.json", summary)
        if gallery:
            write_gallery(table, items, kept, outp / "gallery", gallery)
    return summary


__all__ = [
    "bootstrap_ci",
    "evaluate_segmenter",
    "match_candidates",
    "overlap_metrics",
    "predict_items",
    "summarise",
    "write_gallery",
]
