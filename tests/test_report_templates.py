"""Every HTML report is a Jinja2 template with the one shared stylesheet inlined, autoescaped,
and the web app's Content-Security-Policy admits the case report's style block by its hash."""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from buscad.data.audit.run import run_audit
from buscad.data.phantom import generate_cohort
from buscad.reader.analysis import render_html as reader_html
from buscad.report import KeyValue, Section, Table, Text, render_report
from buscad.report.render import stylesheet, stylesheet_sha256
from buscad.serve.app import CSP
from buscad.serve.report import REPORT_CSS, ReportContext
from buscad.serve.report import render_html as case_html
from serve_predictor import ContrastPredictor

CSS_FILE = Path(__file__).resolve().parents[1] / "src/buscad/report/templates/buscad.css"


def _styles(page: str) -> list[str]:
    return re.findall(r"<style>(.*?)</style>", page, flags=re.S)


def _case_page(bundle_name: str = "demo", warnings: tuple[str, ...] = ()) -> str:
    yy, xx = np.mgrid[:80, :100]
    gray = (120 + 60 * (((xx - 50) ** 2 + (yy - 40) ** 2) < 200)).astype(np.uint8)
    pred = ContrastPredictor().predict(gray, box=(30, 20, 70, 60), heatmap=True)
    ctx = ReportContext(
        bundle_name, "1.0", datetime(2024, 5, 6, 7, 8, tzinfo=UTC), (80, 100), warnings
    )
    return case_html(pred, gray, ctx)


def test_the_stylesheet_is_the_css_file_and_its_hash_is_sha256_base64():
    assert stylesheet() == CSS_FILE.read_text(encoding="utf-8") == REPORT_CSS
    want = base64.b64encode(hashlib.sha256(CSS_FILE.read_bytes()).digest()).decode()
    assert stylesheet_sha256() == want


def test_case_report_style_block_is_admitted_by_the_csp():
    page = _case_page()
    (style,) = _styles(page)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in CSP
    assert "<script" not in page and "unsafe-inline" not in CSP.split("style-src")[1].split(";")[0]


def test_case_report_escapes_its_values():
    page = _case_page("<b>bundle</b>", ("text <i>burned</i> in",))
    assert "&lt;b&gt;bundle&lt;/b&gt;" in page and "<b>bundle" not in page
    assert "Warning: text &lt;i&gt;burned&lt;/i&gt; in" in page
    assert "data:image/png;base64," in page and "Grad-CAM overlay" in page


def test_generic_report_uses_the_shared_stylesheet_and_escapes():
    df = pd.DataFrame({"model": ["<x>"], "auc": [0.81234]})
    page = render_report(
        [Section("A <s>", [Text("<script>alert(1)</script>"), Table(df), KeyValue({"k": "<v>"})])],
        title="T <t>",
    )
    assert _styles(page) == [stylesheet()]
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<title>T &lt;t&gt;</title>" in page and "&lt;x&gt;" in page and "0.8123" in page


def test_reader_report_uses_the_shared_stylesheet():
    t3 = pd.DataFrame(
        {
            "group": ["Readers without AI"],
            "n_readers": [2],
            "accuracy": [0.7],
            "auc": [0.75],
            "auc_lo": [0.6],
            "auc_hi": [0.9],
            "sensitivity": [0.6],
            "specificity": [0.8],
            "precision": [0.7],
            "f1": [0.65],
        }
    )
    notes = {
        "reads_total": 10,
        "reads_used": 8,
        "reads_without_lesion_truth": 1,
        "reads_birads_0_or_missing": 1,
        "plain_4_reads": 0,
    }
    page = reader_html(
        t3, t3, pd.DataFrame(), None, "MRMC needs <2> readers", notes, "4a", b"png", "R & D"
    )
    assert _styles(page) == [stylesheet()]
    assert "<title>R &amp; D</title>" in page and "<code>4A</code>" in page
    assert "Not done: MRMC needs &lt;2&gt; readers." in page
    assert "No reader has paired reads." in page
    assert '<table class="num"><caption>Model and readers without / with AI</caption>' in page
    assert "0.750 (0.600–0.900)" in page


@pytest.mark.slow
def test_audit_report_uses_the_shared_stylesheet(tmp_path):
    man = generate_cohort(
        12, tmp_path / "ph", seed=3, duplicate_fraction=0.3, conflict_fraction=0.5
    )
    res = run_audit(man, tmp_path / "audit", cache_dir=tmp_path / "cache")
    page = res.report.read_text()
    assert _styles(page) == [stylesheet()]
    assert page.startswith("<!DOCTYPE html>") and "<title>buscad data audit</title>" in page
    n_groups = res.summary["duplicate_groups"]
    assert f"<h2>Duplicate groups ({n_groups}; conflicting labels first" in page
    assert page.count("data:image/png;base64,") >= 2 * n_groups
    assert "Written by buscad data audit." in page and "http" not in page
