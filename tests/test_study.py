"""The study runner end to end on phantoms, including a real process kill and resume."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from html import unescape
from pathlib import Path

import pandas as pd
import pytest
from tests.render import OVERFLOW_JS, check_page, open_page

from buscad.config import config_from_dict
from buscad.data.manifest import LEXICON_COLUMNS
from buscad.labels import model_label
from buscad.study.fit import INTEGRATED_WITHOUT_READER
from buscad.study.runner import READER_MODEL, SHORTCUT_MODELS, run_study

REPO = Path(__file__).resolve().parents[1]

SMALL = {
    "name": "small",
    "seed": 0,
    "cohorts": [
        {
            "name": "a",
            "phantom": {
                "n": 48,
                "seed": 1,
                "duplicate_fraction": 0.1,
                "conflict_fraction": 0.25,
                "size": [128, 144],
            },
        },
        {"name": "b", "role": "external", "phantom": {"n": 24, "seed": 2, "size": [128, 144]}},
    ],
    "deep": {
        # the packaged ImageNet weights give a non-trivial Grad-CAM after one epoch (a
        # from-scratch RcdNet gives an all-zero map, so engine comparisons would be vacuous)
        "backbones": ["efficientnet_lite0"],
        "epochs": 1,
        "input_size": 48,
        "selection_folds": 2,
        "batch_size": 16,
    },
    "split": {"cv_folds": 3},
    "gallery_size": 2,
}


@pytest.fixture(scope="module")
def small_run_log(tmp_path_factory):
    """The small study, its progress stream (not a terminal) and the warnings it raised."""
    cfg = config_from_dict(SMALL, base_dir=tmp_path_factory.mktemp("cfg"))
    out = tmp_path_factory.mktemp("run")
    log = io.StringIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_study(cfg, out, stream=log)
    return res, out, log.getvalue(), caught


@pytest.fixture(scope="module")
def small_run(small_run_log):
    return small_run_log[:2]


@pytest.mark.slow
def test_study_progress_is_plain_and_no_warning_leaks(small_run_log):
    res, out, log, caught = small_run_log
    leaked = [
        f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})"
        for w in caught  # third-party DeprecationWarnings are hidden by Python's default filters
        if not (issubclass(w.category, DeprecationWarning) and "buscad" not in w.filename)
    ]
    assert leaked == []
    assert "\r" not in log
    # stage start and end with timing, and per-item progress inside the long stages
    assert re.search(r"\] radiomics: done in [0-9.]+ s", log)
    assert re.search(r"^radiomics: \d+/\d+ images in ", log, re.M)
    assert re.search(r"^audit: reading images: (\d+)/\1 images in ", log, re.M)
    assert re.search(
        r"^efficientnet_lite0 training: 1/1 epochs .*; loss [0-9.]+, val AUC", log, re.M
    )
    assert re.search(r"^deep features: \d+/\d+ images in ", log, re.M)
    # every promised output exists and is listed
    for key in ("report", "metrics", "bundle", "evaluation report", "model card", "predictions",
                "audit report", "TRIPOD+AI checklist"):  # fmt: skip
        assert res.outputs[key].exists(), key
    assert res.outputs["report"] == out / "report.html"
    assert json.loads((out / "run.json").read_text())["outputs"]["bundle"] == str(out / "bundle")


@pytest.mark.slow
def test_small_study_tables_and_report(small_run):
    res, out = small_run
    m = res.metrics
    cohorts = set(m["cohort"])
    assert cohorts == {"a train (CV)", "a internal test", "b external"}
    models = set(m["model"])
    assert {
        "deep",
        "radiomics",
        "dlr",
        "clinical",
        "us",
        "cldlr",
        "outline",
        "integrated",
        READER_MODEL,
    } <= models
    assert set(SHORTCUT_MODELS) <= models
    ok = m[m["auc"].notna()]
    assert (
        (ok["auc"] >= 0)
        & (ok["auc"] <= 1)
        & (ok["auc_lo"] <= ok["auc"])
        & (ok["auc"] <= ok["auc_hi"])
    ).all()
    # one threshold per model, chosen on the training cohort and reused unchanged elsewhere
    thr = m.groupby("model")["threshold"].nunique(dropna=True)
    assert (thr <= 1).all()
    html = unescape(res.report.read_text())
    assert "shortcut: mask geometry" in html and "Backbone comparison" in html
    assert "http://" not in html and "https://" not in html.replace("https://doi", "")
    # Grad-CAM tiles carry their truth, score and cohort; linked reports live in the run folder
    assert 'class="tile correct"' in html or 'class="tile incorrect"' in html
    assert "true: " in html and "AI score" in html and "cohort: " in html
    assert 'href="audit/report.html"' in html and (out / "audit" / "report.html").is_file()
    assert len(list((out / "evaluation").glob("*/report.html"))) == 1
    pred = pd.read_csv(res.predictions[next(iter(res.predictions))])
    # audit policy: the relabelled duplicates (conflicting groups) never reach the models
    dropped = next((out / "cache").glob("audit-*/dropped.csv"))
    assert len(pd.read_csv(dropped)) >= 2
    assert not set(pd.read_csv(dropped)["image_id"]) & set(pred["case_id"])
    # the reader's BI-RADS is the comparison row, never a model input unless the config says so
    # (clinical.reader_as_input): no bundled model reads it, the US model reads the lexicon only
    assert pred[READER_MODEL].notna().all() and INTEGRATED_WITHOUT_READER not in models
    bundle_doc = json.loads((out / "bundle" / "bundle.json").read_text())
    assert bundle_doc["reader_column"] == "birads"
    for name, info in bundle_doc["models"].items():
        assert info["reads_reader"] is False, name
        assert "birads" not in info.get("inputs", {}).get("clinical", []), name
    us_inputs = set(bundle_doc["models"]["us"]["inputs"]["clinical"])
    assert us_inputs and us_inputs <= set(LEXICON_COLUMNS)
    assert "No model reads the reader's BI-RADS ('birads')" in html
    assert "uses the reader's BI-RADS" not in html


@pytest.mark.slow
def test_reader_as_input_is_labelled_everywhere(small_run, tmp_path):
    """clinical.reader_as_input: true: the models reading the reader's BI-RADS are labelled in
    the report, the model card, bundle.json and the app, beside the integrated model without them."""
    import shutil

    from buscad.bundle.bundle import Bundle
    from buscad.data.io import read_image, read_mask
    from buscad.data.manifest import Manifest
    from buscad.labels import model_label
    from buscad.serve.report import ReportContext, model_rows, render_html

    _res, out = small_run
    shutil.copytree(out / "cache", tmp_path / "cache")  # only the models stage onwards reruns
    models = ["deep", "clinical", "us", "integrated"]  # fewer models: a quicker evaluation
    raw = {**SMALL, "models": models, "clinical": {"reader_as_input": True}}
    res = run_study(config_from_dict(raw, base_dir=tmp_path), tmp_path)
    assert {s["stage"].split("-")[0] for s in res.stages if not s["cached"]} <= {
        "models",
        "evaluate",
        "gallery",
        "bundle",
    }
    assert INTEGRATED_WITHOUT_READER in set(res.metrics["model"])
    html = unescape(res.report.read_text())
    for name in ("us", "integrated"):  # the plain label (short name as tooltip), then the mark
        assert f"{model_label(name)}</abbr> (uses the reader's BI-RADS)" in html, name
    assert f"{model_label(INTEGRATED_WITHOUT_READER)}</abbr> (uses" not in html
    assert f"{model_label('clinical')}</abbr> (uses" not in html
    assert any("is an input of: us, integrated" in w for w in res.warnings)
    doc = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    reads = {n for n, m in doc["models"].items() if m["reads_reader"]}
    assert reads == {"us", "integrated"}
    assert "birads" in doc["models"]["us"]["inputs"]["clinical"]
    assert "birads" not in doc["models"][INTEGRATED_WITHOUT_READER]["inputs"]["clinical"]
    card = (tmp_path / "bundle" / "model_card.md").read_text()
    us_card = card.split(f"# Model card: {model_label('us')}")[1].split("# Model card:")[0]
    assert "uses the reader's BI-RADS ('birads') as an input" in us_card
    clin_card = card.split(f"# Model card: {model_label('clinical')}")[1].split("# Model card:")[0]
    assert "reader's BI-RADS" not in clin_card
    # the app's rows and the case report carry the label
    b = Bundle.load(tmp_path / "bundle")
    man = Manifest.load(next((tmp_path / "cache").glob("split-*/manifest.csv")))
    gray, _ = read_image(man.image_path(0))
    p = b.predict(gray, mask=read_mask(man.mask_paths(0), gray.shape), heatmap=False)
    assert set(p.reader_models) == {"us", "integrated"}
    assert p.to_json()["reader_models"] == p.reader_models
    ctx = ReportContext("b", None, __import__("datetime").datetime.now(), gray.shape)
    case = unescape(render_html(p, gray, ctx))
    mark = ", uses the reader's BI-RADS"
    marked = {r["name"] for r in model_rows(p) if r["name"].endswith(mark)}
    # "Plain label (short name), uses ..."; a plain label may hold parentheses itself
    plain = {n.removesuffix(mark).rsplit(" (", 1)[0] for n in marked}
    assert plain == {model_label("us"), model_label("integrated")}
    assert all(n in case for n in marked)


@pytest.mark.slow
def test_reports_fit_a4_landscape_and_read_in_words(small_run, browser, tmp_path):
    """The study report and the evaluation and audit reports it links, rendered in Chromium.

    Nothing wider than an A4-landscape page on screen or in print, no raw Python syntax in the
    visible text; regenerates ``docs/img/study-report.png`` and ``docs/img/evaluation-report.png``
    (phantoms only) unless ``BUSCAD_REPORT_SHOTS`` names another folder.
    """
    res, out = small_run
    shots = Path(os.environ.get("BUSCAD_REPORT_SHOTS") or REPO / "docs" / "img")
    shots.mkdir(parents=True, exist_ok=True)
    study = res.report.read_text(encoding="utf-8")
    # the evaluation and audit reports are copied into the run folder and linked relatively
    links = re.findall(r'href="([^"#]+)"', study)
    assert "audit/report.html" in links
    evaluation = [h for h in links if h.startswith("evaluation/") and h.endswith("/report.html")]
    assert len(evaluation) == 1
    for h in links:
        assert not h.startswith(("/", "cache/")), h
        assert (out / h).is_file(), h
    assert "<details><summary>The whole configuration (YAML)</summary><pre>name: small" in study
    ev = (out / evaluation[0]).read_text(encoding="utf-8")
    # the radiologist's threshold is a BI-RADS category, never a rank or a probability
    assert re.search(r"BI-RADS (4[ABC]?|[35]) or higher", ev)
    assert "Radiologist (BI-RADS)" in ev and '<abbr title="reader BI-RADS' in ev
    # one grid of confusion matrices per cohort
    assert ev.count("<figcaption>Confusion matrices, cohort") == 3
    check_page(browser, res.report, tmp_path / "study.pdf", shots / "study-report.png")
    check_page(
        browser, out / evaluation[0], tmp_path / "evaluation.pdf", shots / "evaluation-report.png"
    )
    check_page(browser, out / "audit" / "report.html", tmp_path / "audit.pdf")
    # the audit page also fits a 1280 px window (its wide layout)
    page = open_page(browser, out / "audit" / "report.html", 1280, "screen")
    assert not page.evaluate(OVERFLOW_JS, 1280)
    page.close()


FIRST_SCREEN_JS = """() => {
  const sec = document.querySelector('#bottom-line');
  const bottom = el => el.getBoundingClientRect().bottom + scrollY;
  return {
    synthetic: bottom(sec.querySelector('p.synthetic')),
    paragraph: bottom(sec.querySelector('p:not(.synthetic)')),
    table: bottom(sec.querySelector('table')),
    rows: [...sec.querySelectorAll('tbody tr')].map(r => r.innerText),
    open: [...document.querySelectorAll('details[open]')].length,
    text: sec.innerText,
  };
}"""


@pytest.mark.slow
def test_study_report_opens_with_the_bottom_line(small_run, browser, tmp_path):
    """At 1280 x 800 the first screen holds the synthetic-data sentence, the bottom-line paragraph
    and its table (chosen model and references on each cohort, with CIs); the rest is collapsed;
    the audit's counts agree; the evaluation report has a TOC and its first figure within two
    screens (1600 px)."""
    res, out = small_run
    page = open_page(browser, res.report, 1280, "screen")
    page.set_viewport_size({"width": 1280, "height": 800})
    first = page.evaluate(FIRST_SCREEN_JS)
    assert max(first["synthetic"], first["paragraph"], first["table"]) < 800, first
    assert first["open"] == 0  # every other block starts collapsed
    text = first["text"]
    assert "All images are phantoms generated by buscad" in text
    assert "'radiologist' (BI-RADS) of these cohorts is simulated" in text
    # chosen model first, then the references, each with a CI on every cohort in reading order
    header = page.evaluate("document.querySelector('#bottom-line thead tr').innerText").split("\t")
    assert header[2:] == ["a train (CV)", "a internal test", "b external"]
    assert first["rows"][0].split("\t")[1] == "chosen model"
    labels = [r.split("\t")[0] for r in first["rows"]]
    assert {model_label(READER_MODEL), model_label("shortcut: mask geometry")} <= set(labels)
    assert all(re.search(r"\d\.\d{3} \(\d\.\d{3}–\d\.\d{3}\)", r) for r in first["rows"])
    h2 = page.evaluate("[...document.querySelectorAll('main h2')].map(h => h.textContent)")
    assert h2[:2] == ["Bottom line", "All warnings"]
    page.close()
    # on paper the collapsed blocks print open
    page = open_page(browser, res.report, 1050, "print")
    pdf = page.pdf(landscape=True, format="A4", print_background=True)
    page.close()
    pdfium = pytest.importorskip("pypdfium2", reason="pypdfium2 reads the PDF's text")
    doc = pdfium.PdfDocument(pdf)
    printed = "".join(doc[i].get_textpage().get_text_range() for i in range(len(doc)))
    for collapsed in ("Stages of this run", "Backbone comparison", "audit policy dropped"):
        assert collapsed in printed, collapsed
    # counts that agree: the audit's conflicting duplicate groups are the groups the policy dropped
    audit = json.loads((out / "audit" / "summary.json").read_text())
    dropped = next(w for w in res.warnings if w.startswith("audit policy dropped"))
    assert f"in {audit['conflict_groups']} duplicate group(s) with conflicting labels" in dropped
    ev = next((out / "evaluation").glob("*/report.html"))
    page = open_page(browser, ev, 1280, "screen")
    toc = page.evaluate("[...document.querySelectorAll('nav a')].map(a => a.textContent)")
    assert toc[:2] == ["Summary", "ROC curves"] and "Table 3." in " ".join(toc)
    top = page.evaluate(
        "document.querySelector('figure.fig').getBoundingClientRect().top + scrollY"
    )
    assert top < 1600
    # the evaluation report also says on its first screen that the data are synthetic
    note = page.evaluate(
        "(e => [e.innerText, e.getBoundingClientRect().bottom])(document.querySelector('p.synthetic'))"
    )
    assert note[0].startswith("Synthetic data: All images are phantoms") and note[1] < 800
    page.close()


@pytest.mark.slow
def test_rerun_is_cached_and_identical(small_run):
    res, out = small_run
    res2 = run_study(config_from_dict(SMALL, base_dir=out), out)
    assert all(s["cached"] for s in res2.stages)
    pd.testing.assert_frame_equal(res.metrics, res2.metrics)


KILL_CFG = """
name: killme
seed: 3
cohorts:
  - {name: a, phantom: {n: 40, seed: 4, size: [96, 112]}}
  - {name: b, role: external, phantom: {n: 20, seed: 5, size: [96, 112]}}
models: [radiomics, clinical, us, integrated]
split: {cv_folds: 3}
gallery_size: 0
"""


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc: each process's parent id)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    found, todo = set(), [pid]
    while todo:
        top = todo.pop()
        kids = [c for c, pp in parent.items() if pp == top and c not in found]
        found.update(kids)
        todo += kids
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper is not running)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_killed_study_resumes_with_identical_tables(tmp_path):
    cfg = tmp_path / "study.yaml"
    cfg.write_text(textwrap.dedent(KILL_CFG))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "buscad.cli",
        "study",
        "run",
        str(cfg),
        "-o",
        str(tmp_path / "run"),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
    )
    # kill it for real once the radiomics stage has started (after data, audit and split are done)
    deadline = time.monotonic() + 240
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        if list((tmp_path / "run" / "cache").glob(".radiomics-*.tmp*")):
            workers = _descendants(proc.pid)  # the radiomics worker processes, once started
            while not workers and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
                workers = _descendants(proc.pid)
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert killed, "the study finished before it could be killed; make the test cohort larger"
    # no process of the study is left 10 s after kill -9 (its workers die with it)
    if sys.platform == "linux":
        assert workers, "the radiomics stage runs without worker processes"
        end = time.monotonic() + 10
        while time.monotonic() < end and any(_alive(w) for w in workers):
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)], "worker processes outlived the study"
    cache = tmp_path / "run" / "cache"
    assert not list(cache.glob("radiomics-*/_DONE"))  # no half stage was published
    done_before = {p.parent.name for p in cache.glob("*/_DONE")}
    assert any(n.startswith("audit-") for n in done_before)
    r2 = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert "audit: cached" in r2.stderr
    m_resumed = pd.read_csv(tmp_path / "run" / "metrics.csv")
    # the same study from scratch elsewhere gives identical tables
    fresh = tmp_path / "fresh"
    r3 = subprocess.run(
        [*cmd[:-1], str(fresh)], capture_output=True, text=True, env=env, timeout=600
    )
    assert r3.returncode == 0, r3.stdout + r3.stderr
    pd.testing.assert_frame_equal(m_resumed, pd.read_csv(fresh / "metrics.csv"))
    # from the shell into a log: plain progress lines, no warning, and every output listed
    assert "\r" not in r3.stderr
    assert not re.search(r"\w*Warning: ", r3.stderr), (
        r3.stderr
    )  # Python warnings, not WARNING lines
    assert re.search(r"^radiomics: \d+/\d+ images in ", r3.stderr, re.M)
    listed = dict(
        re.split(r"\s{2,}", line.strip(), maxsplit=1)
        for line in r3.stdout.splitlines()
        if line.startswith("  ")
    )
    for key in ("report", "metrics", "run summary", "evaluation report", "model card",
                "predictions", "audit report"):  # fmt: skip
        assert key in listed, (key, r3.stdout)
        assert Path(listed[key]).exists(), listed[key]  # absolute: the run is outside the cwd
    assert Path(tmp_path / "run" / "report.html").exists()


def test_deep_feature_columns_exclude_fold_and_score_columns():
    """DLR/CLDLR must read only the CNN's features, never the CV fold index or the AI score."""
    import numpy as np

    from buscad.classical.selection import FeatureSubset
    from buscad.study.fit import DEEP_FEATURES

    cols = ["deep_0000", "deep_0001", "deep_fold", "deep_oof", "deep_final", "age"]
    df = pd.DataFrame(np.ones((4, len(cols))), columns=cols)
    kept = FeatureSubset(include=DEEP_FEATURES).fit(df).get_feature_names_out()
    assert list(kept) == ["deep_0000", "deep_0001"]


@pytest.mark.slow
def test_bundle_predict_and_serve(small_run, tmp_path):
    """The run's bundle loads without pickles, predicts with a heatmap, and serves in the web app."""
    import json

    import numpy as np
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from buscad.bundle.bundle import Bundle
    from buscad.cli import app
    from buscad.data.io import read_image, read_mask
    from buscad.data.manifest import Manifest
    from buscad.serve.app import create_app

    _res, out = small_run
    bdir = out / "bundle"
    doc = json.loads((bdir / "bundle.json").read_text())
    assert doc["primary_model"] == "deep" and 0 < doc["threshold"] < 1
    assert sorted(p.name for p in bdir.iterdir()) == [
        "bundle.json",
        "model.json",
        "model.onnx",
        "model.safetensors",
        "model_card.md",
        "models",
        "ood.json",  # the out-of-distribution model of the training images (docs/safety.md)
        "ood.safetensors",
        "ood_encoder.onnx",  # its frozen encoder
        "ood_frame.json",  # the same of the whole training images
        "ood_frame.safetensors",
    ]
    assert doc["training"]["phantom"] and doc["ood"]["rows"] == doc["training"]["images"]
    assert {p.suffix for p in (bdir / "models").iterdir()} == {".json", ".safetensors"}
    assert doc["models"]["deep"]["onnx_cam"] == "gradcam"
    classical = {"radiomics", "dlr", "clinical", "us", "cldlr", "outline", "integrated"}
    assert set(doc["models"]) == {"deep", *classical} and doc["not_exported"] == {}
    b = Bundle.load(bdir)
    assert b.engine == "onnx"
    man = Manifest.load(next((out / "cache").glob("split-*/manifest.csv")))
    i = int(np.flatnonzero((man.df["split"] == "external").to_numpy())[0])
    gray, _ = read_image(man.image_path(i))
    mask = read_mask(man.mask_paths(i), gray.shape)
    clin = {c: man.df[c].iat[i] for c in b.clinical_inputs}
    assert "age" in clin and any(c in clin for c in ("shape", "margin", "birads"))
    p = b.predict(gray, mask=mask, clinical=clin)
    assert 0 <= p.ai_score <= 1 and p.roi_source == "mask" and p.heatmap.shape == gray.shape
    # every bundled model gives, for this external image, what the study reported for it
    pred = pd.read_csv(next((out / "cache").glob("models-*/predictions.csv")))
    row = pred.set_index("case_id").loc[man.df["image_id"].iat[i]]
    assert p.skipped_models == {}
    for name in classical:
        assert p.model_scores[name] == pytest.approx(row[name], abs=1e-4), name
    x0, y0, x1, y1 = p.roi
    outside = p.heatmap.copy()
    outside[y0:y1, x0:x1] = 0
    # confined to the region read, within [0, 1]
    assert outside.max() == 0 and p.heatmap.min() >= 0 and p.heatmap.max() <= 1
    # the call is the headline model's, at its own threshold
    assert p.decision == ("malignant" if p.ai_score >= p.threshold else "benign")
    # without a mask radiomics cannot run; without clinical inputs the clinical models do not
    q = b.predict(gray, box=p.roi, heatmap=False)
    assert q.skipped_models["radiomics"].startswith("needs the lesion mask")
    assert q.skipped_models["clinical"].startswith("needs at least one of its inputs: ")
    assert q.model_scores["dlr"] is not None and q.model_scores["radiomics"] is None
    # the PyTorch engine (checkpoint + pytorch-grad-cam) gives the same score and heatmap,
    # compared on an external image whose map is not trivial (asserted first)
    torch_bundle = Bundle.load(bdir, engine="torch")
    pt = torch_bundle.predict(gray, mask=mask, clinical=clin)
    assert pt.primary_model == p.primary_model
    assert pt.ai_score == pytest.approx(p.ai_score, abs=1e-5)
    assert pt.model_scores["deep"] == pytest.approx(p.model_scores["deep"], abs=1e-5)
    shown = 0
    for j in np.flatnonzero((man.df["split"] == "external").to_numpy())[:8]:
        g_j, _ = read_image(man.image_path(j))
        m_j = read_mask(man.mask_paths(j), g_j.shape)
        onnx_map = b.predict(g_j, mask=m_j).heatmap
        if onnx_map.max() <= 0.2:
            continue
        shown += 1
        assert onnx_map.std() > 0.01
        torch_map = torch_bundle.predict(g_j, mask=m_j).heatmap
        assert np.abs(torch_map - onnx_map).max() < 0.02
    assert shown >= 2, "no external image gave a non-trivial heatmap to compare"
    whole = b.predict(gray, heatmap=False)
    assert whole.roi_source == "whole" and whole.roi == (0, 0, gray.shape[1], gray.shape[0])
    # buscad predict: JSON per image, overlay PNG, summary CSV
    mpath = man.mask_paths(i)[0]
    r = CliRunner().invoke(
        app,
        [
            "predict",
            str(bdir),
            str(man.image_path(i)),
            "--mask",
            str(mpath),
            "-o",
            str(tmp_path / "pred"),
        ],
    )
    assert r.exit_code == 0, r.output
    stem = man.image_path(i).stem
    got = json.loads((tmp_path / "pred" / f"{stem}.json").read_text())
    # the CLI got the image and mask only: the same inputs give the same headline and score
    alone = b.predict(gray, mask=mask)
    assert got["primary_model"] == alone.primary_model
    assert got["ai_score"] == pytest.approx(alone.ai_score, abs=1e-6)
    assert (tmp_path / "pred" / f"{stem}_overlay.png").exists()
    assert pd.read_csv(tmp_path / "pred" / "summary.csv")["decision"].iat[0] == alone.decision
    # from the shell, predict loads neither PyTorch, pandas, SciPy nor scikit-learn (that makes it quick),
    # and with --mask and --clinical every bundled model runs
    code = (
        "import sys; from buscad.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = sorted({'torch', 'pandas', 'scipy', 'sklearn'} & set(sys.modules))\n"
        "assert not heavy, heavy"
    )
    clin_csv = tmp_path / "clinical.csv"
    pd.DataFrame([{"image": man.image_path(i).name, **clin}]).to_csv(clin_csv, index=False)
    args = ["predict", str(bdir), str(man.image_path(i)), "--mask", str(mpath)]
    args += ["--clinical", str(clin_csv), "-o", str(tmp_path / "pred2")]
    r2 = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert r2.returncode == 0, r2.stderr
    got2 = json.loads((tmp_path / "pred2" / f"{stem}.json").read_text())
    assert got2["engine"] == "onnx" and got2["skipped_models"] == {}
    # with every input the headline is the one of the in-process prediction with them
    assert got2["primary_model"] == p.primary_model
    assert got2["ai_score"] == pytest.approx(p.ai_score, abs=1e-6)
    for name in classical:
        assert got2["model_scores"][name] == pytest.approx(row[name], abs=1e-4), name
    # the web app serves the real bundle
    with TestClient(create_app(b), base_url="http://127.0.0.1") as client:  # Host is checked
        resp = client.post(
            "/api/predict",
            files={
                "image": ("x.png", man.image_path(i).read_bytes(), "image/png"),
                "mask": ("m.png", mpath.read_bytes(), "image/png"),
            },
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["ai_score"] == pytest.approx(alone.ai_score, abs=1e-6)


def test_manifest_fingerprint_follows_content_not_mtime(tmp_path):
    """Re-extracting a dataset (new mtimes, same bytes) keeps the cache; new bytes do not."""
    from buscad.data.phantom import generate_cohort
    from buscad.study.cohorts import _manifest_fingerprint

    m = generate_cohort(6, tmp_path / "d", seed=1)
    mf = tmp_path / "d" / "manifest.csv"
    memo = tmp_path / "hashes.json"
    fp = _manifest_fingerprint(mf, memo)
    assert memo.is_file()
    img = m.image_path(0)
    os.utime(img, (1e9, 1e9))
    assert _manifest_fingerprint(mf, memo) == fp
    img.write_bytes(img.read_bytes() + b"\0")
    assert _manifest_fingerprint(mf, memo)["files"] != fp["files"]


def _reader_table(n: int = 48):
    """A small training/test table with age, lexicon, the reader's BI-RADS and a deep score."""
    import numpy as np

    rng = np.random.default_rng(0)
    lab = np.where(rng.random(n) < 0.4, "malignant", "benign")
    m = lab == "malignant"
    tr = np.arange(n) < 2 * n // 3
    flip = rng.random(n) < 0.2
    df = pd.DataFrame(
        {
            "image_id": [f"i{i}" for i in range(n)],
            "label": lab,
            "split": np.where(tr, "train", "test"),
            "cv_fold": np.arange(n) % 3,
            "group": np.arange(n),
            "eval_cohort": np.where(tr, "train", "test"),
            "age": rng.normal(50, 10, n) + 8 * m,
            "shape": np.where(m ^ flip, "irregular", "oval"),
            "margin": np.where(m ^ flip, "spiculated", "circumscribed"),
            "birads": np.where(m, "4c", "3"),
        }
    )
    table = df.set_index("image_id")
    s = np.clip(0.5 + 0.3 * (m - 0.5) + rng.normal(0, 0.2, n), 0.01, 0.99)
    return df, table.assign(deep_oof=s, deep_final=s)


@pytest.mark.parametrize("as_input", [False, True])
def test_reader_is_a_model_input_only_when_configured(as_input):
    """Default: no model reads the reader's BI-RADS. reader_as_input: the US model reads it, the
    integrated model through it, and integrated_without_reader fuses the others."""
    from buscad.classical.inputs import model_inputs
    from buscad.study.fit import fit_and_predict

    df, table = _reader_table()
    raw = {
        "cohorts": [{"name": "a", "phantom": {"n": 10}}],
        "models": ["deep", "clinical", "us", "integrated"],
        "split": {"cv_folds": 3},
        "clinical": {"reader_as_input": as_input},
    }
    out, notes, fitted, reader_models, _ = fit_and_predict(config_from_dict(raw), df, table)
    inputs = {n: model_inputs(est) for n, est in fitted.items()}
    assert out[READER_MODEL].notna().all()  # always the comparison row
    if not as_input:
        assert reader_models == [] and not [n for n, c in inputs.items() if "birads" in c]
        assert set(inputs["us"]) == {"shape", "margin"} and INTEGRATED_WITHOUT_READER not in out
        assert "_deep_score" in inputs["integrated"] and "shape" in inputs["integrated"]
        return
    assert reader_models == ["us", "integrated"]
    assert "birads" in inputs["us"] and "birads" in inputs["integrated"]
    without = inputs[INTEGRATED_WITHOUT_READER]
    assert "birads" not in without and set(without) == {"age", "_deep_score"}
    assert out[INTEGRATED_WITHOUT_READER].notna().all()
    assert any("is an input of: us, integrated" in n for n in notes)


def test_reader_column_listed_as_a_model_input_needs_the_switch():
    """Listing the reader's column among model inputs without reader_as_input is a config error."""
    from buscad.errors import ConfigError

    base = {"cohorts": [{"name": "a", "phantom": {"n": 10}}]}
    with pytest.raises(ConfigError, match=r"clinical: columns lists 'birads'.*reader_as_input"):
        config_from_dict({**base, "clinical": {"columns": ["age", "birads"]}})
    with pytest.raises(ConfigError, match="reader_as_input: true needs a reader_column"):
        config_from_dict({**base, "clinical": {"reader_as_input": True, "reader_column": None}})
    cfg = config_from_dict({**base, "clinical": {"columns": ["birads"], "reader_as_input": True}})
    assert cfg.clinical.reader_as_input and config_from_dict(base).clinical.reader_as_input is False
