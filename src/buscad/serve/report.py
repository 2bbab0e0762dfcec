"""One-page case report (HTML and PDF) for one prediction.

The report holds the image with the region read, the Grad-CAM overlay, the AI
score with the bundle's threshold and decision, the BI-RADS-aligned likelihood
band with its decision-support note, each model's score, the bundle's name and
version, and the date of the report. It copies no file name and no DICOM header
value, and nothing the user typed except clinical inputs the models used. The
image itself is shown as uploaded: text burned into its pixels (names, IDs,
dates) is not removed, so the report carries the reader's burned-in-text
warning when there is one.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from buscad import __version__
from buscad.bundle.types import Prediction
from buscad.serve.imaging import composite, encode_png

#: The report's one style block (the web app's CSP admits it by its SHA-256).
REPORT_CSS = """
@page { size: A4; margin: 12mm; }
body { font-family: system-ui, sans-serif; font-size: 11pt; color: #111; max-width: 190mm;
  margin: 0 auto; }
h1 { font-size: 15pt; margin: 0 0 2mm; }
.sub { color: #444; font-size: 9pt; margin-bottom: 3mm; }
.figs { display: flex; gap: 4mm; }
figure { margin: 0; flex: 1; }
figure img { width: 100%; max-height: 90mm; object-fit: contain; background: #000; }
figcaption { font-size: 8.5pt; color: #333; }
table { border-collapse: collapse; width: 100%; margin-top: 3mm; font-size: 10pt; }
th, td { border: 1px solid #bbb; padding: 1.2mm 2mm; text-align: left; vertical-align: top; }
th { background: #f2f2f2; width: 45%; }
.note { border: 2px solid #b26a00; background: #fff6e5; padding: 2mm; margin-top: 3mm;
  font-size: 9.5pt; }
.foot { font-size: 8pt; color: #555; margin-top: 3mm; }
.warn { border: 2px solid #b00020; background: #fdecea; padding: 2mm; margin-top: 3mm;
  font-size: 9.5pt; }
"""

ROI_TEXT = {
    "mask": "the uploaded lesion mask",
    "box": "the box drawn on the image",
    "whole": "the whole image (no box or mask was given)",
}


@dataclass(frozen=True)
class ReportContext:
    """What a report shows besides the prediction."""

    bundle_name: str
    bundle_version: str | None
    created_at: datetime
    image_size: tuple[int, int]  # (height, width)
    warnings: tuple[str, ...] = ()

    @property
    def date_text(self) -> str:
        """Report date, UTC, to the minute."""
        return self.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _fmt(p: float | None) -> str:
    return "not run" if p is None or not np.isfinite(p) else f"{100 * p:.1f}%"


def summary_rows(pred: Prediction) -> list[tuple[str, str]]:
    """The report's key-value lines (shared by HTML and PDF)."""
    return [
        ("AI score (calibrated probability of malignancy)", _fmt(pred.ai_score)),
        ("Decision threshold", _fmt(pred.threshold)),
        (
            "Decision at threshold",
            "above threshold (suspicious)"
            if pred.decision == "malignant"
            else "below threshold (not suspicious)",
        ),
        (
            "BI-RADS-aligned likelihood band",
            f"{pred.band.category}: {pred.band.text}",
        ),
        ("Primary model", pred.primary_model),
        ("Region read", ROI_TEXT.get(pred.roi_source, pred.roi_source)),
        ("Region (x0, y0, x1, y1)", ", ".join(str(v) for v in pred.roi)),
    ]


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(pred: Prediction, gray: np.ndarray, ctx: ReportContext) -> str:
    """The one-page HTML report (images embedded; prints on one A4 page)."""
    img = _data_url(encode_png(composite(gray, None, pred.roi)))
    overlay = (
        _data_url(encode_png(composite(gray, pred.heatmap, pred.roi, opacity=0.5)))
        if pred.heatmap is not None
        else None
    )
    e = html.escape
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in summary_rows(pred))
    models = "".join(
        f"<tr><td>{e(m)}{' (primary)' if m == pred.primary_model else ''}</td>"
        f"<td>{e(_fmt(s))}</td><td>{e(pred.skipped_models.get(m, ''))}</td></tr>"
        for m, s in pred.model_scores.items()
    )
    for m, why in pred.skipped_models.items():
        if m not in pred.model_scores:
            models += f"<tr><td>{e(m)}</td><td>not run</td><td>{e(why)}</td></tr>"
    h, w = ctx.image_size
    version = f" (version {e(ctx.bundle_version)})" if ctx.bundle_version else ""
    overlay_fig = (
        f'<figure><img src="{overlay}" alt="Grad-CAM overlay"><figcaption>Grad-CAM overlay '
        "(50% opacity): where the primary model looked</figcaption></figure>"
        if overlay
        else "<figure><figcaption>No heatmap for this prediction.</figcaption></figure>"
    )
    warn_html = "".join(f'<div class="warn">Warning: {e(w)}</div>' for w in ctx.warnings)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>buscad case report</title>
<style>{REPORT_CSS}</style></head><body>
<h1>buscad case report: AI decision support</h1>
<div class="sub">Report date {e(ctx.date_text)} · model bundle {e(ctx.bundle_name)}{version}
 · buscad {e(__version__)} · image {w}×{h} pixels · no file name or DICOM header value; text burned into the image is not removed</div>
{warn_html}<div class="figs">
<figure><img src="{img}" alt="Image with the region read"><figcaption>Image; green box: the
region the models read ({e(ROI_TEXT.get(pred.roi_source, pred.roi_source))})</figcaption></figure>
{overlay_fig}
</div>
<table>{rows}</table>
<div class="note">{e(pred.band.note)}</div>
<table><tr><th>Model</th><th>Malignant probability</th><th>Note</th></tr>{models}</table>
<div class="foot">The AI score is the calibrated probability of malignancy from the primary
model; the decision compares it with the bundle's threshold. Research software: not a medical
device; the reading clinician makes the assessment.</div>
</body></html>
"""


def render_pdf(pred: Prediction, gray: np.ndarray, ctx: ReportContext) -> bytes:
    """The one-page PDF report (A4 portrait), drawn with matplotlib's PDF backend."""
    from matplotlib.backends.backend_pdf import FigureCanvasPdf
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.27, 11.69))
    FigureCanvasPdf(fig)
    fig.text(0.06, 0.965, "buscad case report: AI decision support", fontsize=15, weight="bold")
    version = f" (version {ctx.bundle_version})" if ctx.bundle_version else ""
    fig.text(
        0.06,
        0.945,
        f"Report date {ctx.date_text} · model bundle {ctx.bundle_name}{version} · "
        f"buscad {__version__} · no file name or DICOM header value (burned-in text is not removed)",
        fontsize=8,
        color="#444",
    )
    for i, w in enumerate(ctx.warnings[:2]):
        fig.text(0.06, 0.93 - 0.015 * i, f"Warning: {w}", fontsize=8, color="#b00020")
    panels: list[tuple[Any, str]] = [
        (composite(gray, None, pred.roi), "Image; green box: region read"),
    ]
    if pred.heatmap is not None:
        panels.append(
            (composite(gray, pred.heatmap, pred.roi, 0.5), "Grad-CAM overlay (50% opacity)")
        )
    for i, (im, title) in enumerate(panels):
        ax = fig.add_axes((0.06 + i * 0.46, 0.60, 0.42, 0.32))
        ax.imshow(np.asarray(im))
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    y = 0.56
    for k, v in summary_rows(pred):
        fig.text(0.06, y, k, fontsize=9.5, weight="bold")
        fig.text(0.52, y, v, fontsize=9.5, wrap=True)
        y -= 0.025
    y -= 0.025
    fig.text(
        0.06,
        y,
        pred.band.note,
        fontsize=9,
        wrap=True,
        bbox={"boxstyle": "round", "facecolor": "#fff6e5", "edgecolor": "#b26a00"},
    )
    y -= 0.06
    fig.text(0.06, y, "Model", fontsize=9.5, weight="bold")
    fig.text(0.52, y, "Malignant probability", fontsize=9.5, weight="bold")
    for m, s in pred.model_scores.items():
        y -= 0.022
        note = pred.skipped_models.get(m, "")
        fig.text(0.06, y, m + (" (primary)" if m == pred.primary_model else ""), fontsize=9)
        fig.text(0.52, y, _fmt(s) + (f" — {note}" if note else ""), fontsize=9)
    for m, why in pred.skipped_models.items():
        if m not in pred.model_scores:
            y -= 0.022
            fig.text(0.06, y, m, fontsize=9)
            fig.text(0.52, y, f"not run — {why}", fontsize=9)
    fig.text(
        0.06,
        0.04,
        "Research software, not a medical device: the reading clinician makes the assessment.",
        fontsize=8,
        color="#555",
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="pdf", metadata={"Title": "buscad case report", "Author": None})
    return buf.getvalue()
