"""Lesion outlines of a study's rows: expert masks, or the segmenter's (``roi: auto | box``).

:func:`outline_manifest` writes, for one ROI mode, a mask PNG per row and a manifest whose
``mask_path`` points at them, so that every mask-reading stage downstream (deep crop,
radiomics, geometry reference, DLR/CLDLR, integrated) reads the same outlines unchanged.

- ``expert``: the expert mask (only the computed descriptors are added);
- ``auto``: the segmenter's automatic mode; the most confident candidate is the outline;
- ``box``: the expert box (bounding box of the expert mask, each side optionally moved by up
  to ``jitter`` of the box width/height, seeded) prompted through the segmenter.

:func:`outline_by_segmenter` does the same with a segmenter chosen per row (out-of-fold
outlines from segmenters trained inside the study, ``segment.train``).

When the segmenter finds no lesion the outline is the whole image (``roi_source = whole``),
as :meth:`buscad.bundle.bundle.Bundle.predict` does at deployment.

The geometry-reference columns (:data:`buscad.data.audit.masks.GEOMETRY_FEATURES`) are
recomputed from the outline used, and the BI-RADS-aligned descriptors of
:func:`buscad.segment.morphology.describe` become ``morph_*`` columns (computed
descriptors, never the reader's), with the smoothed-shape and echo descriptors of
:func:`buscad.segment.descriptors.lesion_descriptors`. Per row: ``roi_source``, ``roi_confidence`` (mean
lesion probability inside the outline) and ``roi_dice`` = ``2 |A ∩ E| / (|A| + |E|)``
against the expert mask ``E``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from buscad.data.manifest import Manifest
from buscad.errors import BuscadError
from buscad.segment.descriptors import DESCRIPTOR_NAMES
from buscad.utils import atomic_write_json, atomic_write_table, file_sha256

#: The ``morph_*`` columns: ``morph_<field>`` of :class:`buscad.segment.morphology.Morphology`
#: and of :func:`buscad.segment.descriptors.lesion_descriptors`.
MORPH_COLUMNS: tuple[str, ...] = (
    "morph_shape",
    "morph_orientation",
    "morph_margin",
    "morph_solidity",
    "morph_convexity_depth",
    "morph_ellipse_misfit",
    "morph_axis_ratio",
    "morph_depth_width_ratio",
    *(f"morph_{n}" for n in DESCRIPTOR_NAMES),
)
#: Per-row outline columns added to the manifest.
ROI_COLUMNS: tuple[str, ...] = ("roi_source", "roi_confidence", "roi_dice")


def wants_morphology(columns: list[str]) -> bool:
    """Whether any configured model input is a ``morph_*`` column."""
    return any(str(c).startswith("morph_") for c in columns)


def jitter_box(
    box: tuple[int, int, int, int], jitter: float, rng: np.random.Generator
) -> tuple[float, float, float, float]:
    """Move each side by ``U(-jitter, jitter)`` times the box width (x) or height (y)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    d = rng.uniform(-jitter, jitter, 4) if jitter > 0 else np.zeros(4)
    return x0 + d[0] * w, y0 + d[1] * h, x1 + d[2] * w, y1 + d[3] * h


def segmenter_record(path: str | os.PathLike[str]) -> dict:
    """What a study says about its outline model: file hashes and its training record."""
    from buscad.segment.base import _sidecar_paths, read_spec

    spec = read_spec(path)
    jpath, wpath, opath = _sidecar_paths(path)
    training = dict(spec.get("training") or {})
    training.pop("loss", None)
    return {
        "path": str(path),
        "json_sha256": file_sha256(jpath),
        "onnx_sha256": file_sha256(opath) if opath.is_file() else None,
        "weights_sha256": file_sha256(wpath) if wpath.is_file() else None,
        "training": training,
        "provenance": {k: v for k, v in spec.items() if k in ("data", "cohorts", "manifest")},
    }


def _dice(a: np.ndarray, b: np.ndarray | None) -> float:
    if b is None or not b.any():
        return float("nan")
    return float(2 * (a & b).sum() / max(int(a.sum()) + int(b.sum()), 1))


def outline_manifest(
    man: Manifest,
    mode: str,
    folder: str | os.PathLike[str],
    segmenter: str | os.PathLike[str] | None = None,
    *,
    jitter: float = 0.0,
    seed: int = 0,
    threads: int = 1,
    morphology: bool = False,
) -> dict:
    """Outline every row of ``man`` and write ``folder/manifest.csv`` + ``masks/*.png``.

    Parameters
    ----------
    man : Manifest
        Rows to outline (expert ``mask_path`` used by ``expert`` and ``box``).
    mode : {"expert", "auto", "box"}
        Where the outline comes from (module docstring).
    segmenter : path-like, optional
        Segmenter folder (required unless ``mode == "expert"``).
    jitter : float
        ``box`` mode: side jitter as a fraction of the box side.
    morphology : bool
        Add the ``morph_*`` columns.

    Returns
    -------
    dict
        Summary (also written to ``folder/roi.json``): rows, lesions found, whole-image
        fallbacks, unreadable rows, mean confidence, median Dice against the expert.
    """
    from PIL import Image

    from buscad.data.audit.masks import GEOMETRY_FEATURES, mask_geometry
    from buscad.data.io import read_image, read_mask, to_uint8

    out = Path(folder)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    seg = None
    if mode != "expert":
        if segmenter is None:
            raise ValueError(f"roi: {mode} needs a segmenter")
        from buscad.segment.infer import Segmenter

        seg = Segmenter.load(segmenter, threads=threads)
        if mode == "auto" and not seg.can_auto:
            raise ValueError(
                f"roi: auto needs a segmenter with an automatic proposer; {segmenter} is "
                "LiteMedSAM alone (box outlines only)"
            )
    rng = np.random.default_rng(seed)
    df = man.df.copy()
    rows: list[dict] = []
    masks: list[str | None] = []
    skipped: list[str] = []
    for i in range(len(df)):
        rec: dict = {"roi_source": mode, "roi_confidence": float("nan")}
        try:
            gray = to_uint8(read_image(man.image_path(i))[0])
            paths = man.mask_paths(i)
            expert = read_mask(paths, shape=gray.shape) if paths else None
        except BuscadError as exc:
            skipped.append(str(exc))
            rows.append({**rec, "roi_source": "unreadable", "roi_dice": float("nan")})
            masks.append(df["mask_path"].iat[i] if "mask_path" in df else None)
            continue
        if seg is None:
            mask = expert if expert is not None else np.zeros(gray.shape, bool)
        else:
            if mode == "box" and expert is not None and expert.any():
                from buscad.segment.base import mask_box

                res = seg.predict(gray, box=jitter_box(mask_box(expert), jitter, rng))
            elif not seg.can_auto:  # a box-only segmenter (LiteMedSAM) and no box
                from buscad.segment.base import SegResult

                res = SegResult(
                    np.zeros(gray.shape, bool), np.zeros(gray.shape, np.float32), [], False, "box"
                )
            else:
                res = seg.predict(gray)
                rec["roi_source"] = "auto"
            if res.found:
                best = res.candidates[0]
                mask, rec["roi_confidence"] = best.mask.astype(bool), float(best.confidence)
            else:
                mask = np.ones(gray.shape, bool)
                rec["roi_source"] = "whole"
        rec["roi_dice"] = _dice(mask, expert)
        if mode != "expert":
            f = out / "masks" / f"{i:06d}.png"
            Image.fromarray(mask.astype(np.uint8) * 255).save(f)
            masks.append(str(f.resolve()))
            geo = mask_geometry(mask)
            for c in GEOMETRY_FEATURES:
                rec[c] = geo[c]
        else:
            masks.append(df["mask_path"].iat[i] if "mask_path" in df else None)
        if morphology:
            rec.update(_morph(mask, gray))
        rows.append(rec)
    add = pd.DataFrame(rows, index=df.index)
    for c in add.columns:
        df[c] = add[c]
    if mode != "expert":
        df["mask_path"] = masks
    Manifest(df, root=man.root, source=man.source).save(out / "manifest.csv")
    src = df["roi_source"]
    summary = {
        "mode": mode,
        "rows": len(df),
        "found": int(src.isin(["auto", "box"]).sum()),
        "whole_image_fallback": int((src == "whole").sum()),
        "unreadable": len(skipped),
        "skipped": skipped[:20],
        "mean_confidence": _nanmean(df["roi_confidence"]),
        "median_dice_vs_expert": _nanmedian(df["roi_dice"]),
        "segmenter": segmenter_record(segmenter) if segmenter is not None else None,
        "jitter": jitter if mode == "box" else None,
        "simplification": None
        if seg is None
        else "one segmenter trained on other data is applied to every row, training rows "
        "included (not out-of-fold outlines)",
    }
    atomic_write_table(df[["image_id", *[c for c in ROI_COLUMNS if c in df]]], out / "roi.csv")
    atomic_write_json(out / "roi.json", summary)
    return summary


def _nanmean(s: pd.Series) -> float | None:
    v = pd.to_numeric(s, errors="coerce")
    return round(float(v.mean()), 4) if v.notna().any() else None


def _nanmedian(s: pd.Series) -> float | None:
    v = pd.to_numeric(s, errors="coerce")
    return round(float(v.median()), 4) if v.notna().any() else None


def _morph(mask: np.ndarray, gray: np.ndarray) -> dict:
    """``morph_*`` columns of an outline (missing when it cannot be described)."""
    from buscad.segment.descriptors import lesion_descriptors
    from buscad.segment.morphology import describe

    try:
        m = describe(mask).as_dict() if mask.any() else None
    except (BuscadError, ValueError):
        m = None
    m = {**(m or {}), **(lesion_descriptors(gray, mask) if mask.any() else {})}
    return {c: m.get(c.removeprefix("morph_")) for c in MORPH_COLUMNS}


def outline_by_segmenter(
    man: Manifest,
    mode: str,
    folder: str | os.PathLike[str],
    segmenters: dict[str, Path],
    which: list[str],
    *,
    jitter: float = 0.0,
    seed: int = 0,
    threads: int = 1,
    morphology: bool = False,
) -> dict:
    """Outline each row with the segmenter ``segmenters[which[row]]`` (out-of-fold outlines).

    ``which`` names, per row of ``man``, the segmenter that outlines it (e.g. ``f2`` for a
    training row of CV fold 2: the segmenter trained on the other folds; ``all`` for test
    and external rows). Writes ``folder/manifest.csv`` (rows in ``man``'s order, with a
    ``roi_model`` column), ``roi.csv`` and ``roi.json`` like :func:`outline_manifest`.
    """
    from buscad.data.manifest import concat

    out = Path(folder)
    names = np.asarray(which, dtype=object)
    parts, summaries = [], {}
    for name in sorted(set(which)):
        sub = man.subset(names == name)
        summaries[name] = outline_manifest(
            sub,
            mode,
            out / name,
            segmenters[name],
            jitter=jitter,
            seed=seed,
            threads=threads,
            morphology=morphology,
        )
        m = Manifest.load(out / name / "manifest.csv")
        m.df["roi_model"] = name
        parts.append(m)
    merged = concat(parts, root=out)
    df = merged.df.set_index("image_id").loc[man.df["image_id"]].reset_index()
    Manifest(df, root=out, source=man.source).save(out / "manifest.csv")
    atomic_write_table(
        df[["image_id", "roi_model", *[c for c in ROI_COLUMNS if c in df]]], out / "roi.csv"
    )
    src = df["roi_source"]
    summary = {
        "mode": mode,
        "rows": len(df),
        "found": int(src.isin(["auto", "box"]).sum()),
        "whole_image_fallback": int((src == "whole").sum()),
        "unreadable": sum(s["unreadable"] for s in summaries.values()),
        "skipped": [x for s in summaries.values() for x in s["skipped"]][:20],
        "mean_confidence": _nanmean(df["roi_confidence"]),
        "median_dice_vs_expert": _nanmedian(df["roi_dice"]),
        "segmenters": {k: s["segmenter"] for k, s in summaries.items()},
        "jitter": jitter if mode == "box" else None,
        "simplification": None,
        "outlines": "out-of-fold: a training row of CV fold k is outlined by the segmenter "
        "trained on the other folds; test and external rows by the one trained on all "
        "training rows",
    }
    atomic_write_json(out / "roi.json", summary)
    return summary
