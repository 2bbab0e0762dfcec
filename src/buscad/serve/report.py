"""Case report (HTML and PDF, A4) for one prediction: what a clinician reads and signs.

The report opens with what the reader must know first: the phantom banner of a
bundle trained on synthetic images, the exam or accession number *as the user typed
it* (never read from the DICOM header), and the one headline "AI assessment" from
the model that gives it (:func:`buscad.bundle.types.assessment_text`: its cautions
first and the call withheld when the image is unlike the training images, no lesion
was found, ...). Then the image with the region read and the lesion outline, the
Grad-CAM overlay, the score, band and call in the words every screen uses, every
input the models read with its source (entered, computed from the outline, none; in
plain words, never an internal feature name), the other models with one sentence on
whether they agree, what the bundle was trained on, and a signature line. It copies
no file name and no DICOM header value. The image itself is shown as uploaded: text
burned into its pixels (names, IDs, dates) is not removed, so the report carries the
reader's burned-in-text warning when there is one.

The PDF is laid out line by line on A4 pages (:func:`pdf_figures`): every text is
wrapped to its column before it is placed, so nothing runs past the page or over
another line (tests/test_case_report.py renders it and checks).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from buscad import __version__
from buscad.bundle.types import INPUT_NONE, Prediction
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
    training: str = ""
    exam: str = ""

    @property
    def date_text(self) -> str:
        """Report date, UTC, to the minute."""
        return self.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _fmt(p: float | None) -> str:
    return "not run" if p is None or not np.isfinite(p) else f"{100 * p:.1f}%"


def summary_rows(pred: Prediction) -> list[tuple[str, str]]:
    """The report's key-value lines (shared by HTML and PDF); the headline comes before them."""
    label = model_label(pred.primary_model)
    if pred.withheld:
        rows = [
            ("AI call", "withheld: " + "; ".join(pred.cautions)),
            (f"{label} score (for audit only, not a call)", _fmt(pred.ai_score)),
        ]
    else:
        rows = [
            (
                "AI score (probability of malignancy from the model giving the AI assessment)",
                _fmt(pred.ai_score),
            ),
            ("BI-RADS-aligned likelihood band", pred.band_text),
            ("AI call at the model's threshold", pred.decision_text),
        ]
        if pred.borderline:
            rows.append(("Borderline", pred.borderline))
        if pred.cautions:
            rows.append(("Unreliable for this image", "; ".join(pred.cautions)))
    return [
        *rows,
        ("Model giving the AI assessment", label),
        ("Region read", pred.roi_text),
        ("Region (x0, y0, x1, y1), pixels", ", ".join(str(v) for v in pred.roi)),
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
            + (", gives the AI assessment" if m == pred.primary_model else "")
            + (f", {READS_READER}" if m in pred.reader_models else ""),
            "score": _fmt(s),
            "note": "; ".join(
                [
                    *(
                        ["call withheld; for audit only"]
                        if pred.withheld and m == pred.primary_model
                        else []
                    ),
                    *([pred.skipped_models[m]] if m in pred.skipped_models else []),
                    *(f"study check: {f}" for f in pred.model_flags.get(m, [])),
                ]
            ),
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

    One row per input, in plain words: entered clinical and lexicon inputs first,
    then the measures computed from the outline (or "no outline to measure"). A model
    that reads the image itself (the CNN, radiomics) is not listed: the region read
    says what it saw.
    """
    plain = [i for i in pred.inputs if not i.get("outline")]
    outline = [i for i in pred.inputs if i.get("outline")]
    rows = [{"name": i["label"], "value": _value(i["value"]), "source": i["source"]} for i in plain]
    for i in outline:
        value = _value(i["value"]) if i["source"] != INPUT_NONE else "no outline to measure"
        rows.append({"name": i["label"], "value": value, "source": i["source"]})
    return rows


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(pred: Prediction, gray: np.ndarray, ctx: ReportContext) -> str:
    """The case report as one self-contained HTML page (images embedded; prints on A4)."""
    img = _data_url(encode_png(composite(gray, None, pred.roi, outline=pred.outline)))
    overlay = (
        _data_url(encode_png(composite(gray, pred.heatmap, pred.roi, 0.5, pred.outline)))
        if pred.heatmap is not None
        else None
    )
    h, w = ctx.image_size
    return render_page(
        "case.html.j2",
        date=ctx.date_text,
        exam=ctx.exam,
        banner=pred.banner,
        headline=pred.assessment_text,
        withheld=pred.withheld,
        cautions=pred.cautions,
        training=ctx.training or pred.training,
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
        models=model_rows(pred),
        others_text=pred.others_text,
        inputs=input_rows(pred),
    )


# ---------------------------------------------------------------------- PDF
#: A4 portrait in inches, margins, and the width of one character (conservative for
#: DejaVu Sans: its average glyph in mixed text is under 0.56 em) used to wrap every line.
A4 = (8.27, 11.69)
MARGIN = 0.6
CHAR_EM = 0.56
#: Bold glyphs are this much wider.
BOLD_WIDER = 1.15
LINE = 1.32


class _Page:
    """Line-by-line layout on A4 pages: each text is wrapped to its column before it is drawn."""

    def __init__(self) -> None:
        self.figs: list[Any] = []
        self._new()

    def _new(self) -> None:
        from matplotlib.backends.backend_pdf import FigureCanvasPdf
        from matplotlib.figure import Figure

        fig = Figure(figsize=A4)
        FigureCanvasPdf(fig)
        self.figs.append(fig)
        self.fig = fig
        self.y = MARGIN  # inches from the top

    @staticmethod
    def wrap(text: str, width_in: float, size: float, bold: bool = False) -> list[str]:
        import textwrap

        em = CHAR_EM * (BOLD_WIDER if bold else 1.0)
        chars = max(8, int(width_in * 72 / (em * size)))
        out: list[str] = []
        for para in str(text).split("\n"):
            out += textwrap.wrap(para, chars, break_long_words=True) or [""]
        return out

    def need(self, height_in: float) -> None:
        """Start a new page unless ``height_in`` inches fit above the bottom margin."""
        if self.y + height_in > A4[1] - MARGIN - 0.3:  # the footer line lies below
            self._new()

    def _put(self, x_in: float, lines: list[str], size: float, **kw: Any) -> None:
        for k, t in enumerate(lines):
            y = self.y + (k + 0.8) * size * LINE / 72
            self.fig.text(x_in / A4[0], 1 - y / A4[1], t, fontsize=size, va="baseline", **kw)

    def text(self, text: str, size: float = 9.0, gap: float = 0.04, **kw: Any) -> None:
        """A paragraph across the page."""
        lines = self.wrap(text, A4[0] - 2 * MARGIN, size, kw.get("weight") == "bold")
        h = len(lines) * size * LINE / 72
        self.need(h)
        self._put(MARGIN, lines, size, **kw)
        self.y += h + gap

    def row(self, cells: list[str], widths: list[float], size: float = 8.5, **kw: Any) -> None:
        """One table row: ``cells`` in columns of ``widths`` (fractions of the text width)."""
        full = A4[0] - 2 * MARGIN
        bold = kw.get("weight") == "bold"
        cols = [
            self.wrap(c, w * full - 0.1, size, bold) for c, w in zip(cells, widths, strict=True)
        ]
        h = max(len(c) for c in cols) * size * LINE / 72
        self.need(h)
        x = MARGIN
        for lines, w in zip(cols, widths, strict=True):
            self._put(x, lines, size, **kw)
            x += w * full
        self.y += h + 0.03

    def images(self, panels: list[tuple[Any, str]], height_in: float = 3.0) -> None:
        """Images side by side, each with a wrapped caption under it."""
        full = A4[0] - 2 * MARGIN
        w = (full - 0.2 * (len(panels) - 1)) / max(1, len(panels))
        caps = [self.wrap(c, w, 8) for _, c in panels]
        cap_h = max(len(c) for c in caps) * 8 * LINE / 72
        self.need(height_in + cap_h + 0.1)
        for i, (im, _) in enumerate(panels):
            x = MARGIN + i * (w + 0.2)
            ax = self.fig.add_axes(
                (x / A4[0], 1 - (self.y + height_in) / A4[1], w / A4[0], height_in / A4[1])
            )
            ax.imshow(np.asarray(im))
            ax.set_axis_off()
        self.y += height_in + 0.05
        for i, lines in enumerate(caps):
            x = MARGIN + i * (w + 0.2)
            self._put(x, lines, 8, color="#333")
        self.y += cap_h + 0.1


def pdf_figures(pred: Prediction, gray: np.ndarray, ctx: ReportContext) -> list[Any]:
    """The case report's A4 pages as matplotlib figures (what :func:`render_pdf` saves)."""
    pg = _Page()
    pg.text("buscad case report: AI decision support", 15, weight="bold")
    if pred.banner:
        pg.text(pred.banner, 10, weight="bold", color="#b00020")
    pg.row(
        [
            f"Exam / accession number: {ctx.exam or '________________'}",
            f"Report date {ctx.date_text}",
        ],
        [0.6, 0.4],
        9.5,
        weight="bold",
    )
    version = f" (version {ctx.bundle_version})" if ctx.bundle_version else ""
    pg.text(
        f"Model bundle {ctx.bundle_name}{version}, {ctx.training or pred.training} · "
        f"buscad {__version__} · image {ctx.image_size[1]}x{ctx.image_size[0]} pixels · no file "
        "name or DICOM header value (text burned into the image is not removed)",
        7.5,
        color="#444",
    )
    for w in ctx.warnings:
        pg.text(f"Warning: {w}", 8, color="#b00020")
    pg.text(pred.assessment_text, 11, weight="bold", color="#b00020" if pred.withheld else "black")
    panels: list[tuple[Any, str]] = [
        (
            composite(gray, None, pred.roi, outline=pred.outline),
            "Image; green box: the region read"
            + ("; cyan line: the lesion outline" if pred.outline is not None else ""),
        )
    ]
    if pred.heatmap is not None:
        panels.append(
            (
                composite(gray, pred.heatmap, pred.roi, 0.5, pred.outline),
                "Grad-CAM overlay (50% opacity): where the CNN looked (always the CNN's)",
            )
        )
    pg.images(panels)
    for k, v in summary_rows(pred):
        pg.row([k, v], [0.38, 0.62], 8.5)
    pg.text(pred.band.note, 8, color="#7a4a00")
    rows = input_rows(pred)
    if rows:
        pg.row(["Input the models read", "Value", "Source"], [0.5, 0.15, 0.35], 8.5, weight="bold")
        for r in rows:
            pg.row([r["name"], r["value"], r["source"]], [0.5, 0.15, 0.35], 8)
    pg.text("Other models: " + pred.others_text, 8.5, weight="bold")
    pg.row(["Model", "Malignant probability", "Note"], [0.4, 0.18, 0.42], 8.5, weight="bold")
    for m in model_rows(pred):
        pg.row([m["name"], m["score"], m["note"]], [0.4, 0.18, 0.42], 8)
    pg.need(0.6)
    pg.y += 0.15
    pg.text("Reviewed by (name, signature): ______________________________   Date: ____________", 9)
    for i, fig in enumerate(pg.figs):
        fig.text(
            MARGIN / A4[0],
            0.35 / A4[1],
            "Research software, not a medical device: the reading clinician makes the assessment."
            f"   Page {i + 1} of {len(pg.figs)}",
            fontsize=7.5,
            color="#555",
        )
    return pg.figs


def render_pdf(pred: Prediction, gray: np.ndarray, ctx: ReportContext) -> bytes:
    """The case report as PDF (A4 portrait; more pages when the inputs do not fit on one)."""
    from matplotlib.backends.backend_pdf import PdfPages

    buf = io.BytesIO()
    with PdfPages(buf, metadata={"Title": "buscad case report", "Author": None}) as pdf:
        for fig in pdf_figures(pred, gray, ctx):
            pdf.savefig(fig)
    return buf.getvalue()
