"""The audit run: scan, duplicates, conflicts, masks, shortcuts, tables and report."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from buscad.data.audit.annotations import AnnotationParams
from buscad.data.audit.duplicates import (
    _pairs_cached,
    duplicate_groups,
    exact_duplicate_pairs,
    find_near_duplicates,
    group_names,
)
from buscad.data.audit.masks import GEOMETRY_FEATURES, MASK_FLAGS, SIZE_FEATURES, mask_findings
from buscad.data.audit.report import AuditResult, render_report
from buscad.data.audit.scan import COLOUR_OVERLAY_MIN_FRACTION, NearDuplicateParams, scan_images
from buscad.data.audit.shortcuts import shortcut_auc
from buscad.data.manifest import LESION_LABELS, Manifest
from buscad.utils import (
    atomic_write_json,
    atomic_write_table,
    atomic_write_text,
)


def _distribution(flags: pd.DataFrame) -> pd.DataFrame:
    def q(s: pd.Series, v: float) -> float:
        s = s.dropna()
        return float(s.quantile(v)) if len(s) else float("nan")

    rows = []
    keys = [("all", "all", flags)]
    for (c, lab), sub in flags.groupby(["cohort", "label"], sort=True):
        keys.append((str(c), str(lab), sub))
    for c, sub in flags.groupby("cohort", sort=True):
        keys.append((str(c), "all", sub))
    for cohort, label, sub in keys:
        rows.append(
            dict(
                cohort=cohort,
                label=label,
                n=len(sub),
                height_median=q(sub["height"], 0.5),
                height_min=sub["height"].min(),
                height_max=sub["height"].max(),
                width_median=q(sub["width"], 0.5),
                width_min=sub["width"].min(),
                width_max=sub["width"].max(),
                lesion_area_frac_median=q(sub["area_fraction"], 0.5),
                lesion_area_frac_q25=q(sub["area_fraction"], 0.25),
                lesion_area_frac_q75=q(sub["area_fraction"], 0.75),
                n_colour=int(sub["has_colour"].sum()),
                n_colour_overlay=int(sub["colour_overlay"].sum()),
                n_annotated=int(sub["has_annotations"].sum()),
                n_mask_problem=int((sub["mask_problem"] != "").sum()),
            )
        )
    return pd.DataFrame(rows)


def run_audit(
    manifest: Manifest,
    out_dir: str | os.PathLike[str],
    *,
    near_duplicates: bool = True,
    nd_params: NearDuplicateParams | None = None,
    annotation_params: AnnotationParams | None = None,
    shortcut_warn_auc: float = 0.8,
    n_splits: int = 5,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    report: bool = True,
    max_report_groups: int = 150,
    log: Callable[[str], None] | None = None,
) -> AuditResult:
    """Audit a manifest for leakage and shortcuts and write the tables and the report.

    Parameters
    ----------
    manifest : Manifest
        Rows to audit (any labels; shortcuts use benign/malignant rows only).
    out_dir : path-like
        Output folder (created). Files: ``flags.csv``, ``duplicates.csv``,
        ``duplicate_pairs.csv``, ``conflicts.csv``, ``shortcuts.csv``,
        ``distribution.csv``, ``summary.json``, ``report.html``,
        ``manifest_audited.csv`` (all written atomically).
    near_duplicates : bool
        Run the near-duplicate search (exact duplicates are always found).
    nd_params, annotation_params : optional
        Settings of the near-duplicate search and the annotation heuristic.
    shortcut_warn_auc : float
        Warn when a shortcut's AUC reaches this.
    n_splits, seed : int
        Grouped CV of the shortcut models.
    cache_dir : path-like, optional
        Cache root (default :func:`default_cache_dir`).
    use_cache : bool
        Use the per-image and pair caches.
    report : bool
        Write ``report.html``.
    max_report_groups : int
        Thumbnail groups shown per report section (all are in the CSVs).
    log : callable, optional
        Receives one-line progress messages.

    Returns
    -------
    AuditResult
    """
    from buscad.data.groups import split_groups

    say = log or (lambda _msg: None)
    nd = nd_params or NearDuplicateParams()
    ap = annotation_params or AnnotationParams()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = manifest.df
    n = len(df)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    records = scan_images(manifest, nd, ap, cache_dir=cache_dir, use_cache=use_cache)
    timings["scan_s"] = time.perf_counter() - t0
    unreadable = [i for i, r in enumerate(records) if not r.ok]
    for i in unreadable:
        say(f"skipped: {records[i].error}")
    say(f"read {n - len(unreadable)} of {n} images in {timings['scan_s']:.1f} s")

    t1 = time.perf_counter()
    exact = exact_duplicate_pairs(records)
    if near_duplicates:
        near = _pairs_cached(records, nd, cache_dir, use_cache)
    else:
        near = find_near_duplicates([], nd)
    dup_labels, exact_labels = duplicate_groups(n, exact, near)
    dup_group = group_names(dup_labels, records, df["image_id"])
    exact_group = group_names(exact_labels, records, df["image_id"])
    timings["duplicates_s"] = time.perf_counter() - t1
    say(f"duplicate search in {timings['duplicates_s']:.1f} s")

    # ---- per-image flags
    masks = mask_findings(manifest, records)
    flags = pd.DataFrame(
        {
            "image_id": df["image_id"],
            "label": df["label"],
            "cohort": df["cohort"] if "cohort" in df.columns else "",
            "patient_id": df["patient_id"],
            "readable": [r.ok for r in records],
            "read_error": [r.error for r in records],
            "file_sha256": [r.file_sha256 for r in records],
            "pixel_sha256": [r.pixel_sha256 for r in records],
            "height": [r.height if r.ok else np.nan for r in records],
            "width": [r.width if r.ok else np.nan for r in records],
            "has_colour": [r.has_colour for r in records],
            "colour_fraction": [round(r.colour_fraction, 6) for r in records],
            "colour_overlay_fraction": [round(r.colour_overlay_fraction, 6) for r in records],
            "colour_overlay": [
                r.colour_overlay_fraction >= COLOUR_OVERLAY_MIN_FRACTION for r in records
            ],
            "has_annotations": [r.has_annotations for r in records],
            "n_calipers": [len(r.crosses) for r in records],
            "n_text": [len(r.words) for r in records],
        },
        index=df.index,
    )
    flags["cohort"] = flags["cohort"].fillna("").astype(str)
    flags["aspect"] = flags["width"] / flags["height"]
    flags["colour_tint"] = flags["has_colour"] & ~flags["colour_overlay"]
    flags = pd.concat([flags, masks], axis=1)
    gsize = pd.Series(dup_group).map(pd.Series(dup_group).value_counts()).to_numpy()
    esize = pd.Series(exact_group).map(pd.Series(exact_group).value_counts()).to_numpy()
    flags["dup_group"] = dup_group
    flags["dup_group_size"] = gsize
    flags["exact_group"] = exact_group
    flags["exact_duplicate"] = esize > 1
    flags["near_duplicate"] = gsize > 1
    labels_per_group = flags.groupby("dup_group")["label"].agg(lambda s: sorted(set(s)))
    flags["group_labels"] = flags["dup_group"].map(lambda g: "/".join(labels_per_group[g]))
    flags["label_conflict"] = flags["dup_group"].map(lambda g: len(labels_per_group[g]) > 1)

    # ---- pairs table (exact + accepted near)
    pair_rows = []
    for r in exact.itertuples(index=False):
        pair_rows.append(dict(i=r.i, j=r.j, kind=r.kind, ncc=1.0, texture_ncc=1.0))
    if len(near):
        acc = near[near["accepted"].astype(bool)]
        exact_set = {(int(a), int(b)) for a, b in zip(exact["i"], exact["j"], strict=True)}
        for r in acc.itertuples(index=False):
            if (int(r.i), int(r.j)) in exact_set:
                continue
            pair_rows.append(
                dict(i=int(r.i), j=int(r.j), kind=r.kind, ncc=r.ncc, texture_ncc=r.texture_ncc)
            )
    pairs = pd.DataFrame(pair_rows, columns=["i", "j", "kind", "ncc", "texture_ncc"])
    pairs.insert(0, "image_id_a", [df["image_id"].iat[int(i)] for i in pairs["i"]])
    pairs.insert(1, "image_id_b", [df["image_id"].iat[int(j)] for j in pairs["j"]])
    pairs.insert(2, "label_a", [df["label"].iat[int(i)] for i in pairs["i"]])
    pairs.insert(3, "label_b", [df["label"].iat[int(j)] for j in pairs["j"]])
    pairs["dup_group"] = [dup_group[int(i)] for i in pairs["i"]]
    pairs = pairs.drop(columns=["i", "j"])

    duplicates = flags[
        ["image_id", "label", "cohort", "patient_id", "dup_group", "dup_group_size",
         "exact_group", "exact_duplicate", "label_conflict", "file_sha256", "pixel_sha256"]
    ].copy()  # fmt: skip
    conflicts = flags.loc[
        flags["label_conflict"],
        ["dup_group", "image_id", "label", "cohort", "patient_id", "group_labels"],
    ].sort_values(["dup_group", "image_id"])

    # ---- shortcuts
    t2 = time.perf_counter()
    lesion = flags["label"].isin(LESION_LABELS).to_numpy() & flags["readable"].to_numpy()
    sub = manifest.subset(lesion)
    groups = split_groups(sub, dup_groups=pd.Series(dup_group[lesion], index=sub.df.index))
    feats = flags.loc[lesion, list(GEOMETRY_FEATURES) + list(SIZE_FEATURES)].astype(float)
    yl = (flags.loc[lesion, "label"] == "malignant").to_numpy().astype(int)
    shortcuts = shortcut_auc(
        feats,
        yl,
        groups.to_numpy(),
        {"mask geometry": GEOMETRY_FEATURES, "image size": SIZE_FEATURES},
        n_splits=n_splits,
        seed=seed,
        warn_auc=shortcut_warn_auc,
    )
    timings["shortcuts_s"] = time.perf_counter() - t2

    distribution = _distribution(flags)

    # ---- warnings and summary
    warnings: list[str] = []
    for r in shortcuts[shortcuts["warning"]].itertuples(index=False):
        if r.kind == "model":
            warnings.append(
                f"Shortcut: {r.shortcut} alone predicts malignancy with cross-validated AUC "
                f"{r.auc:.3f} (>= {shortcut_warn_auc}); a model may learn how the images or "
                f"masks were made instead of the lesion."
            )
        else:
            warnings.append(
                f"Shortcut: the single feature {r.features} gives AUC {r.auc:.3f} ({r.direction})."
            )
    n_conf_groups = int(flags.loc[flags["label_conflict"], "dup_group"].nunique())
    near_groups = flags.loc[flags["near_duplicate"], "dup_group"]
    if n_conf_groups:
        warnings.append(
            f"{n_conf_groups} duplicate group(s) carry different labels (see conflicts.csv)."
        )
    if len(near_groups):
        warnings.append(
            f"{near_groups.nunique()} duplicate group(s) hold {len(near_groups)} images: an "
            f"image-level random split leaks them across train and test; use "
            f"`buscad data split` (grouped)."
        )
    exact_pairs = int((pairs["kind"].str.startswith("exact")).sum()) if len(pairs) else 0
    summary: dict[str, Any] = {
        "n_images": n,
        "n_unreadable": len(unreadable),
        "labels": {str(k): int(v) for k, v in df["label"].value_counts().items()},
        "cohorts": {str(k): int(v) for k, v in flags["cohort"].value_counts().items()},
        "exact_duplicate_pairs": exact_pairs,
        "exact_duplicate_file_pairs": int((pairs["kind"] == "exact file").sum()),
        "exact_duplicate_images": int(flags["exact_duplicate"].sum()),
        "near_duplicate_search": bool(near_duplicates),
        "near_duplicate_pairs": int(len(pairs) - exact_pairs),
        "duplicate_groups": int(near_groups.nunique()),
        "images_in_duplicate_groups": len(near_groups),
        "largest_duplicate_group": int(flags["dup_group_size"].max()) if n else 0,
        "conflict_groups": n_conf_groups,
        "conflict_images": int(flags["label_conflict"].sum()),
        "colour_images": int(flags["has_colour"].sum()),
        "colour_overlay_images": int(flags["colour_overlay"].sum()),
        "colour_tint_images": int(flags["colour_tint"].sum()),
        "annotated_images": int(flags["has_annotations"].sum()),
        "annotated_calipers": int((flags["n_calipers"] > 0).sum()),
        "annotated_text": int((flags["n_text"] > 0).sum()),
        "mask_problems": {f: int(flags[f].sum()) for f in MASK_FLAGS},
        "shortcuts": {
            r.shortcut: (None if not np.isfinite(r.auc) else round(float(r.auc), 4))
            for r in shortcuts.itertuples(index=False)
        },
        "shortcut_warn_auc": shortcut_warn_auc,
        "warnings": warnings,
        "method": {
            "near_duplicates": asdict(nd),
            "annotations": asdict(ap),
            "shortcut_cv": f"{n_splits}-fold StratifiedGroupKFold (groups: near-duplicate "
            f"group union patient), seed {seed}, logistic regression on standardised features",
        },
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }

    # ---- write
    atomic_write_table(flags, out / "flags.csv")
    atomic_write_table(duplicates, out / "duplicates.csv")
    atomic_write_table(pairs, out / "duplicate_pairs.csv")
    atomic_write_table(conflicts, out / "conflicts.csv")
    atomic_write_table(shortcuts, out / "shortcuts.csv")
    atomic_write_table(distribution, out / "distribution.csv")
    audited = manifest.with_columns(
        dup_group=dup_group,
        dup_group_size=gsize,
        audit_exact_duplicate=flags["exact_duplicate"].to_numpy(),
        audit_label_conflict=flags["label_conflict"].to_numpy(),
        audit_has_colour=flags["has_colour"].to_numpy(),
        audit_colour_overlay=flags["colour_overlay"].to_numpy(),
        audit_has_annotations=flags["has_annotations"].to_numpy(),
        audit_mask_problem=flags["mask_problem"].to_numpy(),
    )
    audited.save(out / "manifest_audited.csv")
    report_path = out / "report.html"
    timings["total_s"] = time.perf_counter() - t0
    summary["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    result = AuditResult(
        out_dir=out,
        flags=flags,
        duplicates=duplicates,
        pairs=pairs,
        conflicts=conflicts,
        shortcuts=shortcuts,
        distribution=distribution,
        summary=summary,
        warnings=warnings,
        manifest=audited,
        report=report_path,
    )
    if report:
        atomic_write_text(report_path, render_report(result, manifest, records, max_report_groups))
    atomic_write_json(out / "summary.json", summary)
    return result
