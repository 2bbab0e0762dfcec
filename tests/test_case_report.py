"""The case report a clinician signs: A4, nothing clipped or overlapping, exam field, plain words.

The PDF is rendered to PNG with pypdfium2 and checked automatically (every page A4, nothing
drawn in the outer band of the page, no two texts overlapping, no text over an image); with
``BUSCAD_SCREENSHOT_DIR`` set the first page is saved there (docs/img/case-report-pdf.png).
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from buscad.bundle.safety import PHANTOM_BANNER
from buscad.bundle.types import Prediction, input_sources, likelihood_band
from buscad.segment.descriptors import DESCRIPTOR_NAMES
from buscad.serve.report import A4, ReportContext, pdf_figures, render_html, render_pdf

pdfium = pytest.importorskip(
    "pypdfium2", reason="pypdfium2 renders the PDF (pip install pypdfium2)"
)

#: Every outline descriptor the outline model reads (its report rows need plain names).
OUTLINE = [f"morph_{k}" for k in DESCRIPTOR_NAMES]
CLINICAL = ["age", "birads", "shape", "margin", "echogenicity", "posterior_features"]


def _case(withheld: bool) -> tuple[Prediction, np.ndarray, ReportContext]:
    rng = np.random.default_rng(0)
    gray = np.clip(rng.normal(110, 30, (474, 564)), 0, 255).astype(np.uint8)
    outline = np.zeros(gray.shape, bool)
    outline[150:260, 200:330] = True
    hm = np.zeros(gray.shape, np.float32)
    hm[160:250, 210:320] = 1.0
    cols = CLINICAL + OUTLINE
    inputs = input_sources(
        cols,
        {"age": 61, "shape": "irregular"},
        {c: 0.123456 * (i + 1) for i, c in enumerate(OUTLINE)},
        OUTLINE,
    )
    cautions = (
        [
            "this image is unlike the images the model was trained on (its distance to them "
            "is 1.27x the limit that 99% of the training images fall within)",
            "text is burned into the image over or near the region read (18 text-like marks): "
            "the model may read the text",
        ]
        if withheld
        else ["the Grad-CAM peak lies outside the lesion outline"]
    )
    pred = Prediction(
        ai_score=0.3,
        primary_model="deep",
        threshold=0.4,
        decision="benign",
        band=likelihood_band(0.3),
        model_scores={
            "deep": 0.3,
            "radiomics": 0.41,
            "dlr": 0.2,
            "us": 0.7,
            "outline": 0.52,
            "integrated": 0.55,
            "clinical": None,
            "cldlr": None,
        },
        skipped_models={
            "clinical": "needs at least one of its inputs: Age (years), Radiologist's BI-RADS "
            "category, Shape, Margin, Echo pattern (echogenicity), Posterior features",
            "cldlr": "evaluated in the study report; not in this bundle",
        },
        roi=(190, 140, 340, 270),
        roi_source="auto",
        roi_confidence=0.87,
        outline=outline,
        heatmap=hm,
        inputs=inputs,
        cautions=cautions,
        withheld=withheld,
        banner=PHANTOM_BANNER,
        training="trained on 84 images: site_a (84 synthetic phantoms: 50 benign, 34 malignant); "
        "CNN input 96 px",
        model_thresholds={
            "radiomics": 0.5,
            "dlr": 0.4,
            "us": 0.5,
            "outline": 0.5,
            "integrated": 0.5,
        },
        model_flags={"dlr": ["the model gives the same score to 90% of its training images"]},
    )
    ctx = ReportContext(
        "demo (site_a)",
        "1",
        datetime(2026, 1, 2, 9, 30, tzinfo=UTC),
        gray.shape,
        warnings=(
            "26 text-like marks burned into the pixels (they may show names, IDs or dates; "
            "check before sharing)",
        ),
        training=pred.training,
        exam="ACC-2026-000123",
    )
    return pred, gray, ctx


def _boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 - 0.5 and b.x0 < a.x1 - 0.5 and a.y0 < b.y1 - 0.5 and b.y0 < a.y1 - 0.5


@pytest.mark.parametrize("withheld", [True, False])
def test_case_pdf_fits_a4_without_overlap(withheld, tmp_path):
    pred, gray, ctx = _case(withheld)
    # 1. layout: every text inside its page, no two texts and no text and image overlapping
    for fig in pdf_figures(pred, gray, ctx):
        assert tuple(fig.get_size_inches()) == pytest.approx(A4)
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        renderer = FigureCanvasAgg(fig).get_renderer()
        page = fig.bbox
        texts = [t.get_window_extent(renderer) for t in fig.texts if t.get_text().strip()]
        axes = [ax.get_window_extent(renderer) for ax in fig.axes]
        margin = 0.25 * fig.dpi
        for bb in texts + axes:
            assert bb.x0 >= margin and bb.y0 >= margin, bb
            assert bb.x1 <= page.x1 - margin and bb.y1 <= page.y1 - margin, bb
        for i, a in enumerate(texts):
            for b in texts[i + 1 :]:
                assert not _boxes_overlap(a, b), (a, b)
            for b in axes:
                assert not _boxes_overlap(a, b), (a, b)
    # 2. the rendered PDF: A4 pages, nothing drawn in the outer 0.25 inch of any page
    pdf = render_pdf(pred, gray, ctx)
    doc = pdfium.PdfDocument(pdf)
    text = ""
    for i in range(len(doc)):
        page = doc[i]
        assert (page.get_width(), page.get_height()) == pytest.approx((595.3, 841.7), abs=1)
        img = np.asarray(page.render(scale=2).to_pil().convert("L"))
        band = int(0.25 * 72 * 2)
        edge = np.concatenate(
            [img[:band].ravel(), img[-band:].ravel(), img[:, :band].ravel(), img[:, -band:].ravel()]
        )
        assert edge.min() > 245, f"page {i + 1}: something is drawn at the page's edge"
        text += page.get_textpage().get_text_range() + "\n"
        if i == 0 and os.environ.get("BUSCAD_SCREENSHOT_DIR") and withheld:
            out = Path(os.environ["BUSCAD_SCREENSHOT_DIR"])
            out.mkdir(parents=True, exist_ok=True)
            page.render(scale=1.4).to_pil().save(out / "case-report-pdf.png")
    flat = " ".join(text.split())
    # 3. what the clinician reads: banner and exam first, every input, plain names only
    assert flat.index(PHANTOM_BANNER.split(":")[0]) < flat.index("Exam / accession number")
    assert "Exam / accession number: ACC-2026-000123" in flat
    assert flat.index("Exam / accession") < flat.index("AI assessment by the Deep-learning")
    if withheld:
        assert "withheld: this image is unlike the images the model was trained on" in flat
    else:
        assert "unreliable for this image: the Grad-CAM peak lies outside" in flat
        assert "AI call: not flagged" in flat
    for label in ("Outline lobulation", "Share of very dark lesion pixels", "Margin sharpness"):
        assert label in flat
    assert "more inputs" not in flat and "HTML report" not in flat
    for internal in ("hf energy", "dark frac", "hf_energy", "dark_frac", "echo_", "sm_"):
        assert internal not in flat
    assert "Reviewed by" in flat


def test_case_html_has_the_same_words():
    pred, gray, ctx = _case(True)
    html = render_html(pred, gray, ctx)
    assert re.search(r"Exam / accession number</th><td[^>]*>ACC-2026-000123<", html)
    assert html.index(PHANTOM_BANNER.split(":")[0]) < html.index("AI assessment by the")
    assert "withheld: this image is unlike the images" in html
    assert html.count("<tr><td>") >= len(CLINICAL) + len(OUTLINE)  # every input has its row
    assert "hf energy" not in html and "dark frac" not in html
    assert pred.others_text.replace("'", "&#39;") in html
