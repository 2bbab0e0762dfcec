"""The audit's HTML report."""

from __future__ import annotations

import base64
import html
import io as _io
import json
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


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1b1b1b;max-width:1400px}
h1{font-size:1.5em} h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:8px 0} td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}
th{background:#f0f0f0} .warn{background:#fff3cd;border:1px solid #e0c060;padding:8px 12px;margin:6px 0}
.group{display:inline-block;border:1px solid #bbb;margin:4px;padding:4px;vertical-align:top;background:#fafafa}
.group.conflict{border:2px solid #c00;background:#fff0f0} figure{display:inline-block;margin:2px;text-align:center}
figcaption{font-size:.72em;max-width:180px;overflow-wrap:anywhere} img{display:block;margin:auto}
.note{color:#555;font-size:.85em} code{background:#f4f4f4;padding:0 3px}
"""


def _table_html(df: pd.DataFrame, max_rows: int = 200) -> str:
    if df is None or len(df) == 0:
        return "<p class='note'>none</p>"
    shown = df.head(max_rows)
    more = (
        f"<p class='note'>{len(df) - max_rows} more rows in the CSV.</p>"
        if len(df) > max_rows
        else ""
    )
    return (
        shown.to_html(index=False, escape=True, float_format=lambda v: f"{v:.3g}", na_rep="") + more
    )


def _figure(b64: str, caption: str) -> str:
    img = f"<img src='data:image/png;base64,{b64}' alt=''>" if b64 else "<p>(unreadable)</p>"
    return f"<figure>{img}<figcaption>{html.escape(caption)}</figcaption></figure>"


def render_report(
    result: AuditResult,
    manifest: Manifest,
    records: Sequence[ImageRecord],
    max_groups: int = 150,
) -> str:
    """One self-contained HTML page: summary, method, thumbnails of every flagged group.

    Thumbnails are embedded as base64 PNG; the page references no external asset.
    """
    flags = result.flags
    s = result.summary
    nd = s["method"]["near_duplicates"]
    an = s["method"]["annotations"]
    parts: list[str] = []
    esc = html.escape
    parts.append(f"<h1>Data audit: {esc(str(manifest.source.name))}</h1>")
    parts.append(
        f"<p class='note'>{s['n_images']} images; labels {esc(json.dumps(s['labels']))}; "
        f"cohorts {esc(json.dumps(s['cohorts']))}; audit time {s['timings_s'].get('total_s', 0):.1f} s.</p>"
    )
    for w in result.warnings:
        parts.append(f"<div class='warn'>{esc(w)}</div>")
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
    parts.append("<h2>Summary</h2>" + _table_html(summ))
    parts.append(
        "<h2>Method and thresholds</h2><ul>"
        "<li><b>Exact duplicates</b>: SHA-256 of the file bytes and of the decoded grayscale pixels.</li>"
        f"<li><b>Near-duplicates</b>: candidates from an {nd['descriptor_grid']}x{nd['descriptor_grid']} "
        f"correlation of each image's central square (side {nd['query_fraction']} of the short side, "
        f"thumbnail long side {nd['candidate_size']} px) against multi-scale windows of every other image "
        f"(stride {nd['window_stride']} px); top {nd['top_k']} partners per image. Verification: "
        f"band-pass (DoG sigma {nd['band'][0]}/{nd['band'][1]} px at {nd['thumb_size']} px) normalised "
        f"cross-correlation of the central {nd['template_fraction']} of one image searched in the other "
        f"over {nd['scale_search'][2]} scales ({nd['scale_search'][0]}-{nd['scale_search'][1]} x the candidate "
        f"scale), both directions. Accepted when min NCC &ge; {nd['ncc_threshold']} and the two scales agree "
        f"within a factor {nd['scale_tolerance']} and the texture NCC (DoG sigma "
        f"{nd['texture_band'][0]}/{nd['texture_band'][1]} px divided by its local RMS) &ge; "
        f"{nd['texture_threshold']}; <i>same scan</i> when the texture NCC &ge; "
        f"{nd['same_scan_texture']}, otherwise "
        "<i>similar frame</i>. Groups = connected components (union-find) of the accepted pairs.</li>"
        f"<li><b>Burned-in annotations</b>: thin bright strokes (pixel &ge; {an['bright']} and &ge; "
        f"{an['contrast']} grey levels above both pixels {an['stroke_offsets']} px away across the stroke); "
        f"a caliper is a '+' with {an['arm']}-px stroke arms on all four sides; a text word is a stroke "
        f"cluster {an['text_height'][0]}-{an['text_height'][1]} px high, {an['text_aspect'][0]}-"
        f"{an['text_aspect'][1]}x as wide, away from the image border. Boxes are drawn in red.</li>"
        "<li><b>Colour</b>: share of pixels with max(R,G,B) - min(R,G,B) &gt; 24; <i>overlay</i> "
        "pixels deviate by more than 24 in a channel from the image's median colour at the same "
        "luma (a uniform tint gives none); colour overlay when they are &ge; 5e-5 of the image.</li>"
        "<li><b>Shortcuts</b>: " + esc(s["method"]["shortcut_cv"]) + "; single features scored "
        "alone as max(AUC, 1 - AUC). Warning at AUC &ge; " + f"{s['shortcut_warn_auc']}.</li></ul>"
    )
    parts.append(
        "<h2>Annotation shortcuts (benign vs malignant)</h2>" + _table_html(result.shortcuts)
    )
    parts.append("<h2>Class and size distribution</h2>" + _table_html(result.distribution))

    # duplicate groups
    multi = flags[flags["dup_group_size"] > 1]
    groups = list(dict.fromkeys(multi["dup_group"]))
    conflict_set = set(flags.loc[flags["label_conflict"], "dup_group"])
    groups.sort(key=lambda g: g not in conflict_set)  # stable: conflicts first, then by row
    pair_info = {}
    for r in result.pairs.itertuples(index=False):
        pair_info.setdefault(r.dup_group, []).append(
            f"{r.image_id_a}~{r.image_id_b}: {r.kind} {r.ncc:.2f}"
        )
    parts.append(
        f"<h2>Duplicate groups ({len(groups)}; conflicting labels first, framed in red)</h2>"
    )
    if conflict_set:
        parts.append("<h3>Label conflicts</h3>" + _table_html(result.conflicts))
    for g in groups[:max_groups]:
        rows = np.flatnonzero(flags["dup_group"].to_numpy() == g)
        figs = "".join(
            _figure(
                _thumb_png(manifest, int(i), 140),
                f"{flags['image_id'].iat[i]} [{flags['label'].iat[i]}] "
                f"{int(flags['width'].iat[i]) if flags['readable'].iat[i] else '?'}x"
                f"{int(flags['height'].iat[i]) if flags['readable'].iat[i] else '?'}",
            )
            for i in rows
        )
        cls = "group conflict" if g in conflict_set else "group"
        info = esc("; ".join(pair_info.get(g, [])[:4]))
        parts.append(f"<div class='{cls}'><div class='note'>group {g}: {info}</div>{figs}</div>")
    if len(groups) > max_groups:
        parts.append(
            f"<p class='note'>{len(groups) - max_groups} more groups in duplicates.csv.</p>"
        )

    def gallery(title: str, rows: np.ndarray, caption: Callable[[int], str], **kw: Any) -> None:
        parts.append(f"<h2>{esc(title)} ({len(rows)})</h2>")
        figs = []
        for i in rows[:max_groups]:
            boxes = (records[i].crosses + records[i].words) if kw.get("boxes") else ()
            figs.append(
                _figure(
                    _thumb_png(manifest, int(i), 160, boxes, kw.get("mask", False)), caption(int(i))
                )
            )
        parts.append("<div>" + "".join(figs) + "</div>")
        if len(rows) > max_groups:
            parts.append(f"<p class='note'>{len(rows) - max_groups} more in flags.csv.</p>")

    gallery(
        "Colour content",
        np.flatnonzero(flags["has_colour"].to_numpy()),
        lambda i: (
            f"{flags['image_id'].iat[i]} [{flags['label'].iat[i]}] colour "
            f"{flags['colour_fraction'].iat[i]:.3f}, overlay {flags['colour_overlay_fraction'].iat[i]:.4f}"
        ),
    )
    gallery(
        "Burned-in annotations",
        np.flatnonzero(flags["has_annotations"].to_numpy()),
        lambda i: (
            f"{flags['image_id'].iat[i]} [{flags['label'].iat[i]}] calipers {flags['n_calipers'].iat[i]}, text {flags['n_text'].iat[i]}"
        ),
        boxes=True,
    )
    gallery(
        "Mask problems",
        np.flatnonzero((flags["mask_problem"] != "").to_numpy()),
        lambda i: (
            f"{flags['image_id'].iat[i]} [{flags['label'].iat[i]}] {flags['mask_problem'].iat[i]}"
        ),
        mask=True,
    )
    unread = np.flatnonzero(~flags["readable"].to_numpy())
    if len(unread):
        parts.append(
            "<h2>Unreadable images</h2>"
            + _table_html(flags.iloc[unread][["image_id", "read_error"]])
        )
    parts.append(
        "<p class='note'>Written by buscad data audit. Tables: flags.csv, duplicates.csv, "
        "duplicate_pairs.csv, conflicts.csv, shortcuts.csv, distribution.csv, summary.json.</p>"
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>buscad data audit</title><style>{_CSS}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>\n"
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
