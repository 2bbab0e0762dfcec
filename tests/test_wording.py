"""What the user reads: one wording of the AI call and band, plain names, inputs, help screens."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from buscad.bundle.types import (
    INPUT_COMPUTED,
    INPUT_ENTERED,
    INPUT_NONE,
    Prediction,
    band_text,
    decision_text,
    input_sources,
    likelihood_band,
    result_text,
)
from buscad.labels import input_label, inputs_text

REPO = Path(__file__).resolve().parents[1]


def _pred(p: float = 0.3, threshold: float = 0.4, model: str = "deep", **kw) -> Prediction:
    """A prediction whose headline (``primary_model``) is ``model``; the CNN scores 55% otherwise."""
    scores = {"deep": p if model == "deep" else 0.55, "us": 0.7, "cldlr": None}
    return Prediction(
        ai_score=p,
        primary_model=model,
        threshold=threshold,
        decision="malignant" if p >= threshold else "benign",
        band=likelihood_band(p),
        model_scores={**scores, model: p},
        skipped_models={"cldlr": "needs at least one of its inputs: Age (years)"},
        roi=(1, 2, 30, 40),
        roi_source="mask",
        **kw,
    )


def test_one_wording_of_call_and_band():
    # a score below the threshold but in the 4B range: the call says which side of the
    # threshold the score is on, never "benign", so it cannot contradict the band
    p = _pred(0.3, 0.4)
    assert decision_text("benign", 0.4) == (
        "AI call: not flagged (score below the model's 40.0% threshold)"
    )
    assert decision_text("malignant", 0.4) == (
        "AI call: flagged (score at or above the model's 40.0% threshold)"
    )
    assert band_text(p.band) == "4B (> 10% to ≤ 50%: moderate suspicion range)"
    line = result_text(0.3, "benign", 0.4, p.band)
    assert line == (
        "30.0% · likelihood band 4B (> 10% to ≤ 50%: moderate suspicion range) · "
        "AI call: not flagged (score below the model's 40.0% threshold)"
    )
    # the one headline, from one named model
    assert p.assessment_text == "AI assessment by the Deep-learning model (CNN): " + line
    assert p.text() == p.assessment_text
    assert "not suspicious" not in line and "benign" not in line
    d = p.to_json()  # the app and the per-image JSON carry the same words
    assert d["assessment_text"] == p.assessment_text
    assert d["decision_text"] == p.decision_text == decision_text("benign", 0.4)
    assert d["band_text"] == band_text(p.band)
    assert d["borderline"] is None
    assert d["model_labels"] == {
        "deep": "Deep-learning model (CNN)",
        "us": "Ultrasound-features model",
        "cldlr": "Clinical + deep features (CLDLR)",
    }
    # near the threshold: borderline, in words, in the headline
    near = _pred(0.38, 0.4)
    assert near.borderline == "borderline: the score is within 5 points of the 40.0% threshold"
    assert near.assessment_text.endswith("· " + near.borderline)


def test_cautions_come_first_and_withhold_the_call():
    p = _pred(0.72, 0.4).with_cautions(["colour image"], withhold=True)
    assert p.withheld and p.cautions == ["colour image"]
    assert (
        p.assessment_text
        == "AI assessment by the Deep-learning model (CNN) withheld: colour image."
    )
    assert "72.0%" not in p.assessment_text and "4C" not in p.assessment_text
    assert p.borderline is None
    soft = _pred(0.72, 0.4).with_cautions(["text near the lesion"], withhold=False)
    assert not soft.withheld
    assert soft.assessment_text.startswith(
        "AI assessment by the Deep-learning model (CNN): unreliable for this image: "
        "text near the lesion. 72.0% · likelihood band 4C"
    )
    banner = dataclasses.replace(p, banner="DEMO MODEL")
    assert banner.text().startswith("[DEMO MODEL] AI assessment")
    assert banner.to_json()["banner"] == "DEMO MODEL"


def test_other_models_sentence_when_they_disagree():
    p = _pred(0.3, 0.4)
    p.model_thresholds = {"us": 0.5}
    assert p.others_text == (
        "1 of 1 other model disagree (score at or above their own threshold): "
        "Ultrasound-features model 70.0%. The headline follows the Deep-learning model (CNN)."
    )
    p.model_thresholds = {"us": 0.8}
    assert p.others_text == "The 1 other model agree with the call at their own thresholds."


@settings(max_examples=400, deadline=None)
@given(
    p=st.floats(0.0, 1.0, allow_nan=False),
    t=st.floats(0.001, 0.999, allow_nan=False),
    model=st.sampled_from(["deep", "integrated", "outline", "us"]),
)
def test_band_and_call_never_contradict(p, t, model):
    from buscad.labels import model_label

    # the headline may be the CNN or the study's headline model (bundle.json headline_model)
    pred = _pred(p, t, model)
    pred.model_thresholds = {n: 0.5 for n in ("deep", "us") if n != model}
    text = pred.assessment_text
    assert text.startswith(f"AI assessment by the {model_label(model)}: ")
    assert pred.to_json()["headline_model"] == model
    others = pred.others_text
    assert model_label(model) + " " not in others.split(". The headline")[0]  # never an "other"
    if "disagree" in others:
        assert others.endswith(f"The headline follows the {model_label(model)}.")
    band = likelihood_band(p).category
    assert text.count("likelihood band ") == 1 and f"likelihood band {band} (" in text
    assert ("AI call: flagged" in text) == (p >= t)
    assert ("AI call: not flagged" in text) == (p < t)
    assert "benign" not in text.split("likelihood band")[0] + text.split("AI call:")[1]
    assert "malignant" not in text
    # a call and a band pointing different ways are never shown as a plain call
    flagged = p >= t
    if (flagged and band == "3") or (not flagged and band in ("4C", "5")):
        assert "point different ways; read the band" in text
    if abs(p - t) < 0.05:
        assert "borderline" in text


def test_wording_module_needs_no_pandas():
    code = (
        "import sys, buscad.bundle.types, buscad.labels; "
        "sys.exit('pandas' in sys.modules or 'torch' in sys.modules)"
    )
    env = {"PYTHONPATH": str(REPO / "src")}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_input_sources_and_labels():
    rows = input_sources(
        ["age", "shape", "birads", "solidity", "morph_sm_circularity"],
        {"age": 54, "solidity": 0.5},
        {"solidity": np.float64(0.9), "morph_sm_circularity": np.float64(0.71)},
        ["solidity", "morph_sm_circularity"],
    )
    got = {r["name"]: (r["value"], r["source"], r["outline"]) for r in rows}
    assert got == {
        "age": (54, INPUT_ENTERED, False),
        "shape": (None, INPUT_NONE, False),
        "birads": (None, INPUT_NONE, False),
        "solidity": (0.5, INPUT_ENTERED, True),  # what was given wins, as in the models' table
        "morph_sm_circularity": (0.71, INPUT_COMPUTED, True),
    }
    assert type(got["morph_sm_circularity"][0]) is float
    assert input_label("posterior_features") == "Posterior features"
    assert input_label("birads") == "Radiologist's BI-RADS category"
    # the outline measures buscad computes have plain words, never their internal names
    assert input_label("morph_sm_circularity") == "Outline circularity (smoothed outline)"
    assert input_label("morph_echo_lesion_ring") == (
        "Lesion brightness relative to the tissue around it"
    )
    assert input_label("morph_sm_hf_energy") == "Outline lobulation"
    assert input_label("morph_echo_dark_frac") == "Share of very dark lesion pixels"
    assert input_label("morph_sm_new_measure") == "Smoothed outline: new measure"
    assert input_label("skin_thickness_mm") == "Skin thickness mm"
    # a skipped model names its inputs as the app labels them, with the column where it differs
    assert inputs_text(["age", "echogenicity", "posterior_features"]) == (
        "Age (years), Echo pattern (echogenicity), Posterior features"
    )


def test_case_report_lists_inputs_and_plain_names():
    from buscad.serve.report import ReportContext, render_html, render_pdf

    inputs = input_sources(
        ["age", "shape", "log_area", "solidity"],
        {"age": 61},
        {"log_area": 7.2, "solidity": 0.93},
        ["log_area", "solidity"],
    )
    pred = _pred(0.3, 0.4, inputs=inputs)
    gray = np.full((40, 50), 90, np.uint8)
    ctx = ReportContext("demo", "1", datetime(2026, 1, 2, tzinfo=UTC), gray.shape)
    html = render_html(pred, gray, ctx)
    assert "AI call: not flagged (score below the model&#39;s 40.0% threshold)" in html
    assert "AI assessment by the Deep-learning model (CNN): 30.0%" in html
    assert "4B (&gt; 10% to ≤ 50%: moderate suspicion range)" in html
    assert "Ultrasound-features model (us)" in html
    assert "Clinical + deep features (CLDLR)<" in html  # no second (cldlr)
    assert "Deep-learning model (CNN) (deep), gives the AI assessment" in html
    assert "Exam / accession number" in html
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td></tr>", html)
    assert ("Age (years)", "61", "entered") in rows
    assert ("Shape", "not given", "none") in rows
    # every input has its own row, outline measures included, in plain words
    assert ("Outline area (log)", "7.2", "computed from the outline") in rows
    assert ("Outline solidity", "0.93", "computed from the outline") in rows
    assert "(primary)" not in html
    assert render_pdf(pred, gray, ctx).startswith(b"%PDF")


def test_no_internal_feature_name_reaches_the_reader():
    from buscad.segment.descriptors import DESCRIPTOR_NAMES
    from buscad.segment.morphology import Morphology

    names = [*DESCRIPTOR_NAMES, *(f.name for f in dataclasses.fields(Morphology))]
    for n in names:
        label = input_label(f"morph_{n}")
        words = set(re.findall(r"[a-z]+", label.lower()))
        # the internal abbreviations of the audit ("hf energy", "dark frac", "sm", "cv", "px")
        assert not words & {"hf", "frac", "sm", "cv", "px", "echo_", "misfit"}, (n, label)
        assert "_" not in label, (n, label)


def test_predict_console_names_models_plainly():
    from buscad.bundle.batch import models_text

    text = models_text(_pred())
    assert text == (
        "Ultrasound-features model 70.0%; Clinical + deep features (CLDLR): not run "
        "(needs at least one of its inputs: Age (years))"
    )


# ------------------------------------------------------------------- help screens
def _all_commands():
    import typer

    from buscad.cli import build_app

    app = build_app()

    def walk(cmd, path):
        yield path
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, [*path, name])

    return app, list(walk(typer.main.get_command(app), []))


#: What must never appear in a help screen: Typer's type labels (``<bool>``,
#: ``<list[Path]>``), argument braces (``{manifest}``), click's ranges (``x>=1``)
#: and reStructuredText literals.
ARTEFACTS = re.compile(r"<[A-Za-z_\[\]| ]+>|\{[a-z_]+\}(?!_mask)|x[<>]=|``")


def test_help_screens_have_no_type_artefacts():
    app, paths = _all_commands()
    assert len(paths) > 25  # every group and command
    runner = CliRunner()
    for path in paths:
        r = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
        assert r.exit_code == 0, (path, r.output)
        bad = ARTEFACTS.findall(r.output)
        assert not bad, f"buscad {' '.join(path)} --help shows {bad}"
        assert "Usage: buscad" in r.output
    train = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "100"}).output
    assert "buscad train --help" not in train  # the backbone help names the backbones
    assert "rcdnet" in train and "vit_b_16" in train
    assert "Usage: buscad train [OPTIONS] MANIFEST" in train
    predict = runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "100"}).output
    assert "buscad[ray]" in predict  # no rich markup eats brackets
    assert "--mask PATH" in predict and "one --mask per image" in predict


def test_backbone_help_lists_the_registry():
    from buscad.models.registry import REGISTRY

    app, _ = _all_commands()
    help_text = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "400"}).output
    assert all(name in help_text for name in REGISTRY)


def test_train_says_when_it_makes_its_own_split():
    from buscad.models.cli import split_note

    df = pd.DataFrame({"image_id": ["a", "b"], "patient_id": ["p", "q"], "label": ["benign"] * 2})
    note = split_note(df, 0.15, 3)
    assert note is not None and "\n" not in note
    assert note.startswith("note: no split column: every row is training data")
    assert "15% of the patient_id groups of each class (seed 3)" in note
    assert "buscad data split" in note
    df["split"] = ["train", "test"]
    assert "no validation rows" in split_note(df, 0.15, 0)
    df["split"] = ["train", "val"]
    assert split_note(df, 0.15, 0) is None


# ------------------------------------------------------------------- .gitignore
@pytest.mark.skipif(not (REPO / ".git").exists(), reason="not a git checkout")
def test_gitignore_covers_what_the_documented_commands_write():
    written = [
        "data/manifest.csv",
        "data/audit/report.html",
        "runs/my_study/report.html",
        "out/summary.csv",
        "new/case1.png",
        "predictions/summary.csv",
        "eval/report.html",
        "report/report.html",
        "study.db",
        "study.sqlite",
        "READS.csv",
        "my_cases.xlsx",
        "my_study.yaml",
        "deep.parquet",
        "lite0.onnx",
        "split.csv",
    ]
    r = subprocess.run(
        ["git", "check-ignore", "--no-index", *written],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert sorted(r.stdout.split()) == sorted(written)
    kept = ["configs/demo.yaml", "docs/img/app-case.png", "tests/data/README.md"]
    r = subprocess.run(["git", "check-ignore", "--no-index", *kept], cwd=REPO, capture_output=True)
    assert r.stdout == b""
