"""The three HTML reports rendered in headless Chromium: nothing wider than an A4-landscape page.

Each report (the data audit, the evaluation, the study) is made from phantoms or synthetic
predictions, opened in Debian's ``/usr/bin/chromium`` through Playwright at 1123 px (A4
landscape at 96 dpi) on screen and at the printable width in print, printed to PDF and
screenshotted. The test checks that no table, image, figure or preformatted block is wider
than the page, and that the visible text has no Python dict/list syntax or escaped newline.

It (re)writes ``docs/img/study-report.png`` and ``docs/img/evaluation-report.png`` (the top
of each page, palette PNG under 300 KB) unless ``BUSCAD_REPORT_SHOTS`` names another folder.
Skipped, with the reason, when Chromium or Playwright is missing.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from buscad.config import config_from_dict
from buscad.data.audit.run import run_audit
from buscad.data.phantom import generate_cohort
from buscad.evaluate import evaluate_predictions
from buscad.study.runner import READER_MODEL, run_study

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
#: A4 landscape at 96 dpi: 297 mm wide; printable width with the stylesheet's 10 mm margins.
A4_LANDSCAPE_PX = 1123
A4_PRINTABLE_PX = round((297 - 2 * 10) / 25.4 * 96)
#: Visible text that means raw Python or JSON leaked into a report.
RAW_SYNTAX = re.compile(r"\{'|\['|\{\"|\\n|\bnan\b|\bTrue\b|\bFalse\b")

#: Elements whose right edge must stay inside the page (and their names, for messages).
OVERFLOW_JS = """(limit) => {
  const out = [];
  const de = document.documentElement;
  if (de.scrollWidth > limit + 1) out.push(`page scrollWidth ${de.scrollWidth}`);
  for (const el of document.querySelectorAll('table, img, pre, figure, section, p, ul, h1, h2')) {
    const r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > limit + 1) {
      const head = (el.innerText || el.getAttribute('alt') || '').slice(0, 50).replace(/\\s+/g, ' ');
      out.push(`${el.tagName.toLowerCase()} right edge ${Math.round(r.right)} px: ${head}`);
    }
  }
  return out;
}"""


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed (pip install playwright)"
    )
    if not CHROMIUM.exists():
        pytest.skip(f"headless Chromium not available: {CHROMIUM} is missing")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = os.environ.get("BUSCAD_REPORT_SHOTS")
    out = Path(d) if d else REPO / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _predictions(n: int = 120, seed: int = 0) -> pd.DataFrame:
    """Three cohorts, probability models and a radiologist's BI-RADS (as ranks)."""
    from buscad.data.birads import birads_rank

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    cohort = np.array(["site_a train (CV)", "site_a internal test", "site_b external"])[
        np.arange(n) % 3
    ]

    def prob(k: float) -> np.ndarray:
        return 1 / (1 + np.exp(-(k * (y - 0.5) + rng.normal(0, 1, n))))

    cats = np.array(["2", "3", "4a", "4b", "4c", "5"])
    reader = cats[np.clip(np.round(2.5 + 2.2 * (y - 0.5) + rng.normal(0, 1, n)), 0, 5).astype(int)]
    return pd.DataFrame(
        {
            "case_id": [f"case{i:03d}" for i in range(n)],
            "label": y,
            "cohort": cohort,
            "deep": prob(2.0),
            "integrated": prob(2.4),
            READER_MODEL: birads_rank(reader),
            "age": rng.normal(52, 11, n).round(),
        }
    )


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("render")
    man = generate_cohort(
        24, root / "messy", seed=11, duplicate_fraction=0.25, annotation_fraction=0.25
    )
    audit = run_audit(man, root / "audit", cache_dir=root / "cache", log=None)
    ev = evaluate_predictions(
        _predictions(),
        ["deep", "integrated", READER_MODEL],
        train_cohort="site_a train (CV)",
        birads_columns=[READER_MODEL],
    )
    ev.write(root / "eval", title="Phantom evaluation", audit_summary=audit.summary)
    cfg = config_from_dict(
        {
            "name": "render",
            "seed": 0,
            "cohorts": [
                {"name": "site_a", "phantom": {"n": 36, "seed": 4, "size": [96, 112]}},
                {
                    "name": "site_b",
                    "role": "external",
                    "phantom": {"n": 18, "seed": 5, "size": [96, 112]},
                },
            ],
            "models": ["clinical", "integrated"],
            "split": {"cv_folds": 3},
            "gallery_size": 0,
        },
        base_dir=root,
    )
    study = run_study(cfg, root / "study", stream=io.StringIO())
    return {
        "audit": audit.report,
        "evaluation": root / "eval" / "report.html",
        "study": study.report,
    }


def _render(browser, html: Path, width: int, media: str):
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.emulate_media(media=media)
    page.goto(html.as_uri())
    return page


def _shot(page, path: Path, height: int = 1500) -> None:
    """The top of the page as a small palette PNG (phantom data only)."""
    from PIL import Image

    img = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    img = img.crop((0, 0, img.width, min(img.height, height)))
    img.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


@pytest.mark.parametrize("name", ["audit", "evaluation", "study"])
def test_report_fits_a4_landscape_and_reads_in_words(browser, reports, shots, tmp_path, name):
    html = reports[name]
    for width, media in ((A4_LANDSCAPE_PX, "screen"), (A4_PRINTABLE_PX, "print")):
        page = _render(browser, html, width, media)
        wide = page.evaluate(OVERFLOW_JS, width)
        assert not wide, f"{name} report ({media}, {width} px): {wide[:5]}"
        if media == "screen":
            text = page.evaluate("document.body.innerText")
            raw = RAW_SYNTAX.search(text)
            assert raw is None, f"{name} report shows {text[raw.start() - 60 : raw.end() + 40]!r}"
            if name in ("study", "evaluation"):
                _shot(page, shots / f"{name}-report.png")
                assert 10_000 < (shots / f"{name}-report.png").stat().st_size < 300_000
        else:
            pdf = page.pdf(landscape=True, format="A4", print_background=True)
            assert pdf.startswith(b"%PDF") and len(pdf) > 10_000
            (tmp_path / f"{name}.pdf").write_bytes(pdf)
        page.close()
    if name == "audit":  # the audit page also fits a 1280 px window (its wide layout)
        page = _render(browser, html, 1280, "screen")
        assert not page.evaluate(OVERFLOW_JS, 1280)
        page.close()


def test_reports_speak_in_words(reports):
    ev = reports["evaluation"].read_text(encoding="utf-8")
    # the radiologist's threshold is a BI-RADS category, never a rank or a probability
    assert re.search(r"BI-RADS 4[ABC]? or higher|BI-RADS [35] or higher", ev)
    assert "Radiologist (BI-RADS)" in ev and '<abbr title="reader BI-RADS' in ev
    # one grid of confusion matrices per cohort
    assert ev.count("<figcaption>Confusion matrices, cohort") == 3
    study = reports["study"].read_text(encoding="utf-8")
    # the evaluation and audit reports are copied into the run folder and linked relatively
    run = reports["study"].parent
    links = re.findall(r'href="([^"#]+)"', study)
    assert "audit/report.html" in links
    assert any(h.startswith("evaluation/") and h.endswith("/report.html") for h in links)
    for h in links:
        assert not h.startswith(("/", "cache/")), h
        assert (run / h).is_file(), h
    assert "<details><summary>The whole configuration (YAML)</summary><pre>name: render" in study
