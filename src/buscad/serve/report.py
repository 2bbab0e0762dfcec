"""One-page case report (HTML and PDF) for one prediction.

The report holds the image with the region read, the Grad-CAM overlay, the AI
score with the bundle's threshold and decision, the BI-RADS-aligned likelihood
band with its decision-support note (worded by :func:`buscad.bundle.types.decision_text`
and :func:`~buscad.bundle.types.band_text`, as on every screen), each model's score
under its plain name, every input the models read with its source (entered,
computed from the outline, none), the bundle's name and version, and the date of
the report. It copies no file name and no DICOM header
value, and nothing the user typed except clinical inputs the models used. The
image itself is shown as uploaded: text burned into its pixels (names, IDs,
dates) is not removed, so the report carries the reader's burned-in-text
warning when there is one.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from buscad import __version__
from buscad.bundle.types import INPUT_COMPUTED, INPUT_NONE, Prediction
from buscad.labels import READS_READER, model_label
from buscad.report.render import render_page, stylesheet
from buscad.serve.imaging import composite, encode_png

#: The report's one style block: the shared report stylesheet (the web app's CSP admits it
#: by its SHA-256, :func:`buscad.report.render.stylesheet_sha256`).
REPORT_CSS = stylesheet()


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
        ("Decision at threshold", pred.decision_text),
        ("BI-RADS-aligned likelihood band", pred.band_text),
        ("Model giving the AI score", f"{model_label(pred.primary_model)} ({pred.primary_model})"),
        ("Region read", pred.roi_text),
        ("Region (x0, y0, x1, y1)", ", ".join(str(v) for v in pred.roi)),
    ]


def _named(m: str) -> str:
    """A model's plain name with its short name in brackets (unless the label already has it)."""
    label = model_label(m)
    return label if f"({m.upper()})" in label or label == m else f"{label} ({m})"


def model_rows(pred: Prediction) -> list[dict[str, str]]:
    """Each model's plain name (short name in brackets; marked when it reads the reader's
    BI-RADS), score and why it did not run."""
    rows = [
        {
            "name": _named(m)
            + (", gives the AI score" if m == pred.primary_model else "")
            + (f", {READS_READER}" if m in pred.reader_models else ""),
            "score": _fmt(s),
            "note": pred.skipped_models.get(m, ""),
        }
        for m, s in pred.model_scores.items()
    ]
    rows += [
        {
            "name": _named(m) + (f", {READS_READER}" if m in pred.reader_models else ""),
            "score": "not run",
            "note": why,
        }
        for m, why in pred.skipped_models.items()
        if m not in pred.model_scores
    ]
    return rows


def _value(v: Any) -> str:
    if v is None:
        return "not given"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def input_rows(pred: Prediction) -> list[dict[str, str]]:
    """Every input the models read, with its value and source (shared by HTML and PDF).

    Entered clinical and lexicon inputs get a row each; the measures computed from
    the outline are one row per source, naming them (there are often two dozen).
    A model that reads the image itself (the CNN, radiomics) is not listed: the
    region read says what it saw.
    """
    rows = [
        {"name": i["label"], "value": _value(i["value"]), "source": i["source"]}
        for i in pred.inputs
        if not i.get("outline")
    ]
    for source in (INPUT_COMPUTED, INPUT_NONE):
        got = [i for i in pred.inputs if i.get("outline") and i["source"] == source]
        if got:
            names = ", ".join(i["label"] for i in got)
            value = "computed" if source == INPUT_COMPUTED else "no outline to measure"
            rows.append(
                {"name": f"{len(got)} outline measures ({names})", "value": value, "source": source}
            )
    return rows


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(pred: Prediction, gray: np.ndarray, ctx: ReportContext) -> str:
    """The one-page HTML report (images embedded; prints on one A4 page)."""
    img = _data_url(encode_png(composite(gray, None, pred.roi, outline=pred.outline)))
    overlay = (
        _data_url(encode_png(composite(gray, pred.heatmap, pred.roi, 0.5, pred.outline)))
        if pred.heatmap is not None
        else None
    )
    models = model_rows(pred)
    h, w = ctx.image_size
    return render_page(
        "case.html.j2",
        date=ctx.date_text,
        bundle_name=ctx.bundle_name,
        bundle_version=ctx.bundle_version,
        buscad_version=__version__,
        width=w,
        height=h,
        warnings=ctx.warnings,
        image_url=img,
        overlay_url=overlay,
        roi_text=pred.roi_text,
        has_outline=pred.outline is not None,
        rows=summary_rows(pred),
        band_note=pred.band.note,
        models=models,
        inputs=input_rows(pred),
    )


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
        (
            composite(gray, None, pred.roi, outline=pred.outline),
            "Image; green box: region read"
            + ("; cyan: lesion outline" if pred.outline is not None else ""),
        ),
    ]
    if pred.heatmap is not None:
        panels.append(
            (
                composite(gray, pred.heatmap, pred.roi, 0.5, pred.outline),
                "Grad-CAM overlay (50% opacity)",
            )
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
    for m in model_rows(pred):
        y -= 0.022
        fig.text(0.06, y, m["name"], fontsize=8.5)
        fig.text(0.52, y, m["score"] + (f" — {m['note']}" if m["note"] else ""), fontsize=8.5)
    rows = input_rows(pred)
    if rows:
        y -= 0.035
        fig.text(0.06, y, "Input", fontsize=9.5, weight="bold")
        fig.text(0.52, y, "Value · source", fontsize=9.5, weight="bold")
        for r in rows:
            if y < 0.09:  # the page ends: the HTML report lists the rest
                fig.text(0.06, y - 0.02, "... (more inputs in the HTML report)", fontsize=8)
                break
            y -= 0.02
            name = r["name"] if len(r["name"]) <= 70 else r["name"][:67] + "..."
            fig.text(0.06, y, name, fontsize=8)
            fig.text(0.52, y, f"{r['value']} · {r['source']}", fontsize=8)
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
