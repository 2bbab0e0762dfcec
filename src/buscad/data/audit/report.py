"""The audit's HTML report."""

from __future__ import annotations

import base64
import io as _io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from buscad.data.audit.annotations import _cv2
from buscad.data.audit.scan import ImageRecord
from buscad.data.io import read_image, read_mask, to_uint8
from buscad.data.manifest import Manifest
from buscad.errors import ImageReadError, MaskError
from buscad.report.render import render_page, trusted


def _thumb_png(
    manifest: Manifest,
    i: int,
    size: int = 180,
    boxes: Sequence[tuple[int, int, int, int]] = (),
    outline_mask: bool = False,
) -> str:
    """Base64 PNG thumbnail of row ``i`` (RGB kept), with boxes and mask outline in red."""
    from PIL import Image, ImageDraw

    overlay = bool(boxes) or (outline_mask and bool(manifest.mask_paths(i)))
    path = manifest.image_path(i)
    im = None
    try:
        with Image.open(path) as src:
            src.load()
            if src.mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "L", "LA", "1"):
                colour = src.mode not in ("L", "LA", "1")
                im = src.convert("RGB" if (colour or overlay) else "L")
    except Exception:
        im = None
    if im is None:  # 16-bit, DICOM and other sources: through the project's reader
        try:
            gray, _ = read_image(path)
        except ImageReadError:
            return ""
        im = Image.fromarray(to_uint8(gray)).convert("RGB" if overlay else "L")
    W, H = im.size
    if outline_mask and manifest.mask_paths(i):
        try:
            cv2 = _cv2()
            m = read_mask(manifest.mask_paths(i)).astype(np.uint8)
            if m.shape == (H, W):
                edge = m - cv2.erode(m, np.ones((3, 3), np.uint8))
                edge = cv2.dilate(edge, np.ones((max(1, W // 200),) * 2, np.uint8))
                arr = np.asarray(im).copy()
                arr[edge > 0] = (255, 40, 40)
                im = Image.fromarray(arr)
        except MaskError:
            pass
    if boxes:
        d = ImageDraw.Draw(im)
        lw = max(1, W // 250)
        for x, y, w, h in boxes:
            d.rectangle([x - 2, y - 2, x + w + 1, y + h + 1], outline=(255, 40, 40), width=lw)
    im.thumbnail((size, size))
    if im.mode == "L":  # 32 grey levels: invisible at this size, half the bytes
        im = im.point(lambda v: v & 0xF8)
    buf = _io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _words(df: pd.DataFrame) -> pd.DataFrame:
    """Column names and comma lists in words, so a table wraps to the page width."""
    out = df.rename(columns=lambda c: str(c).replace("_", " "))
    for c in out.columns:
        if out[c].dtype == object:
            out[c] = [
                v.replace(",", ", ") if isinstance(v, str) and ", " not in v else v for v in out[c]
            ]
        elif out[c].dtype == bool:
            out[c] = out[c].map({True: "yes", False: "no"})
    return out


def _table_html(df: pd.DataFrame | None, max_rows: int = 200) -> Any:
    """A table (first ``max_rows`` rows; a note counts the rest) as trusted markup."""
    if df is None or len(df) == 0:
        return trusted("<p class='note'>none</p>")
    shown = _words(df.head(max_rows))
    more = (
        f"<p class='note'>{len(df) - max_rows} more rows in the CSV.</p>"
        if len(df) > max_rows
        else ""
    )
    body = shown.to_html(
        index=False, escape=True, float_format=lambda v: f"{v:.3g}", na_rep="", classes="wrap"
    )
    return trusted(body + more)


def _thumb(b64: str, caption: str) -> dict[str, str]:
    return {"b64": b64, "caption": caption}


def render_report(
    result: AuditResult,
    manifest: Manifest,
    records: Sequence[ImageRecord],
    max_groups: int = 150,
) -> str:
    """One self-contained HTML page: summary, method, thumbnails of every flagged group.

    Rendered from ``buscad/report/templates/audit.html.j2`` with the shared report
    stylesheet inlined; thumbnails are embedded as base64 PNG, so the page references
    no external asset.
    """
    flags = result.flags
    s = result.summary
    summ = pd.DataFrame(
        [
            ("exact duplicate pairs (file or pixels)", s["exact_duplicate_pairs"]),
            ("near-duplicate pairs (verified)", s["near_duplicate_pairs"]),
            ("duplicate groups (size >= 2)", s["duplicate_groups"]),
            ("images in duplicate groups", s["images_in_duplicate_groups"]),
            ("groups with conflicting labels", s["conflict_groups"]),
            ("images with colour", s["colour_images"]),
            ("  with colour overlays (Doppler, coloured marks)", s["colour_overlay_images"]),
            ("  tinted only (colour map, no overlay)", s["colour_tint_images"]),
            ("images with burned-in annotations", s["annotated_images"]),
            ("  with caliper crosses", s["annotated_calipers"]),
            ("  with text", s["annotated_text"]),
            *[(f"mask: {k.removeprefix('mask_')}", v) for k, v in s["mask_problems"].items()],
            ("unreadable images", s["n_unreadable"]),
        ],
        columns=["finding", "count"],
    )

    def tag(i: int) -> str:
        return f"{flags['image_id'].iat[i]} [{flags['label'].iat[i]}]"

    # duplicate groups
    multi = flags[flags["dup_group_size"] > 1]
    groups = list(dict.fromkeys(multi["dup_group"]))
    conflict_set = set(flags.loc[flags["label_conflict"], "dup_group"])
    groups.sort(key=lambda g: g not in conflict_set)  # stable: conflicts first, then by row
    pair_info: dict[Any, list[str]] = {}
    for r in result.pairs.itertuples(index=False):
        pair_info.setdefault(r.dup_group, []).append(
            f"{r.image_id_a}~{r.image_id_b}: {r.kind} {r.ncc:.2f}"
        )

    def size(i: int) -> str:
        if not flags["readable"].iat[i]:
            return "?x?"
        return f"{int(flags['width'].iat[i])}x{int(flags['height'].iat[i])}"

    group_ctx = [
        {
            "id": g,
            "conflict": g in conflict_set,
            "info": "; ".join(pair_info.get(g, [])[:4]),
            "figures": [
                _thumb(_thumb_png(manifest, int(i), 140), f"{tag(int(i))} {size(int(i))}")
                for i in np.flatnonzero(flags["dup_group"].to_numpy() == g)
            ],
        }
        for g in groups[:max_groups]
    ]

    def gallery(
        title: str, rows: np.ndarray, caption: Callable[[int], str], **kw: Any
    ) -> dict[str, Any]:
        figs = []
        for i in rows[:max_groups]:
            boxes = (records[i].crosses + records[i].words) if kw.get("boxes") else ()
            png = _thumb_png(manifest, int(i), 160, boxes, kw.get("mask", False))
            figs.append(_thumb(png, caption(int(i))))
        return {
            "title": title,
            "n": len(rows),
            "figures": figs,
            "more": max(0, len(rows) - max_groups),
        }

    galleries = [
        gallery(
            "Colour content",
            np.flatnonzero(flags["has_colour"].to_numpy()),
            lambda i: (
                f"{tag(i)} colour {flags['colour_fraction'].iat[i]:.3f}, "
                f"overlay {flags['colour_overlay_fraction'].iat[i]:.4f}"
            ),
        ),
        gallery(
            "Burned-in annotations",
            np.flatnonzero(flags["has_annotations"].to_numpy()),
            lambda i: (
                f"{tag(i)} calipers {flags['n_calipers'].iat[i]}, text {flags['n_text'].iat[i]}"
            ),
            boxes=True,
        ),
        gallery(
            "Mask problems",
            np.flatnonzero((flags["mask_problem"] != "").to_numpy()),
            lambda i: f"{tag(i)} {flags['mask_problem'].iat[i]}",
            mask=True,
        ),
    ]
    unread = np.flatnonzero(~flags["readable"].to_numpy())
    return (
        render_page(
            "audit.html.j2",
            source=str(manifest.source.name),
            s=s,
            nd=s["method"]["near_duplicates"],
            an=s["method"]["annotations"],
            labels=", ".join(f"{k} {v}" for k, v in s["labels"].items()),
            cohorts=", ".join(f"{k} {v}" for k, v in s["cohorts"].items()),
            audit_s=float(s["timings_s"].get("total_s", 0)),
            warnings=result.warnings,
            summary_table=_table_html(summ),
            shortcuts_table=_table_html(result.shortcuts),
            distribution_table=_table_html(result.distribution),
            n_groups=len(groups),
            conflicts_table=_table_html(result.conflicts) if conflict_set else None,
            groups=group_ctx,
            more_groups=max(0, len(groups) - max_groups),
            galleries=galleries,
            unreadable_table=(
                _table_html(flags.iloc[unread][["image_id", "read_error"]]) if len(unread) else None
            ),
        )
        + "\n"
    )


@dataclass
class AuditResult:
    """Everything :func:`run_audit` found and wrote.

    Attributes
    ----------
    out_dir : pathlib.Path
        Output folder.
    flags : pandas.DataFrame
        One row per image with every flag (``flags.csv``).
    duplicates : pandas.DataFrame
        Group ids per image (``duplicates.csv``).
    pairs : pandas.DataFrame
        Exact and accepted near-duplicate pairs (``duplicate_pairs.csv``).
    conflicts : pandas.DataFrame
        Members of groups with more than one label (``conflicts.csv``).
    shortcuts : pandas.DataFrame
        Shortcut AUCs (``shortcuts.csv``).
    distribution : pandas.DataFrame
        Counts, sizes and lesion areas per cohort and label (``distribution.csv``).
    summary : dict
        The numbers of ``summary.json``.
    warnings : list of str
        Plain-language warnings (also in the summary and the report).
    manifest : Manifest
        Input plus ``dup_group`` and the audit flags (``manifest_audited.csv``).
    report : pathlib.Path
        ``report.html``.
    """

    out_dir: Path
    flags: pd.DataFrame
    duplicates: pd.DataFrame
    pairs: pd.DataFrame
    conflicts: pd.DataFrame
    shortcuts: pd.DataFrame
    distribution: pd.DataFrame
    summary: dict
    warnings: list[str]
    manifest: Manifest
    report: Path
