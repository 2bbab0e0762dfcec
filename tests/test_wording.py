"""What the user reads: one wording of the AI call and band, plain names, inputs, help screens."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
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


def _pred(p: float = 0.3, threshold: float = 0.4, **kw) -> Prediction:
    return Prediction(
        ai_score=p,
        primary_model="deep",
        threshold=threshold,
        decision="malignant" if p >= threshold else "benign",
        band=likelihood_band(p),
        model_scores={"deep": p, "us": 0.7, "cldlr": None},
        skipped_models={"cldlr": "needs at least one of its inputs: Age (years)"},
        roi=(1, 2, 30, 40),
        roi_source="mask",
        **kw,
    )


def test_one_wording_of_call_and_band():
    # a score below the threshold but in the 4B range: the call and the band do not contradict
    p = _pred(0.3, 0.4)
    assert decision_text("benign", 0.4) == "AI call: benign (score below the 40.0% threshold)"
    assert decision_text("malignant", 0.4) == (
        "AI call: malignant (score at or above the 40.0% threshold)"
    )
    assert band_text(p.band) == "4B (> 10% to ≤ 50%: moderate suspicion range)"
    line = result_text(0.3, "benign", 0.4, p.band)
    assert line == (
        "AI score 30.0% · AI call: benign (score below the 40.0% threshold) · "
        "likelihood band 4B (> 10% to ≤ 50%: moderate suspicion range)"
    )
    assert p.text() == line
    assert "not suspicious" not in line
    d = p.to_json()  # the app and the per-image JSON carry the same words
    assert d["decision_text"] == p.decision_text == decision_text("benign", 0.4)
    assert d["band_text"] == band_text(p.band)
    assert d["model_labels"] == {
        "deep": "Deep-learning AI score",
        "us": "Ultrasound-features model",
        "cldlr": "Clinical + deep features (CLDLR)",
    }


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
    assert input_label("morph_sm_circularity") == "Smoothed outline: circularity"
    assert input_label("morph_echo_lesion_ring") == "Echo: lesion ring"
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
    assert "AI call: benign (score below the 40.0% threshold)" in html
    assert "4B (&gt; 10% to ≤ 50%: moderate suspicion range)" in html
    assert "Ultrasound-features model (us)" in html
    assert "Clinical + deep features (CLDLR)<" in html  # no second (cldlr)
    assert "Deep-learning AI score (deep), gives the AI score" in html
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td></tr>", html)
    assert ("Age (years)", "61", "entered") in rows
    assert ("Shape", "not given", "none") in rows
    assert (
        "2 outline measures (Outline area (log), Outline solidity)",
        "computed",
        "computed from the outline",
    ) in rows
    assert "(primary)" not in html
    assert render_pdf(pred, gray, ctx).startswith(b"%PDF")


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
