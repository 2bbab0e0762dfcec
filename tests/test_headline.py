"""One headline from one named model: the bundle's ``headline_model`` gives the AI assessment.

Phantom images only (tests/scale_fixtures.py): a bundle with a random CNN, a DLR model and
an outline model (reading the outline's log area and area fraction), written with and
without ``headline_model``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from tests.scale_fixtures import make_bundle, make_manifest

from buscad.bundle.bundle import Bundle, write_bundle
from buscad.bundle.types import likelihood_band
from buscad.data.io import read_image
from buscad.labels import model_label

OUTLINE_THRESHOLD = 0.37


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    folder = tmp_path_factory.mktemp("phantoms")
    man = make_manifest(folder, 4, size=(128, 160))
    return folder, pd.read_csv(man)


def _write(root: Path, headline: dict | None) -> Path:
    """A bundle with DLR and outline models, the outline one strongly area-driven."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from buscad.bundle.portable import save_portable

    src = make_bundle(root / "src")  # the CNN checkpoint and its DLR model in src_work/
    work = root / "src_work"
    rng = np.random.default_rng(1)
    area = rng.uniform(4.0, 8.0, 60)
    X = pd.DataFrame({"log_area": area, "area_fraction": np.exp(area) / 20480.0})
    y = (area + rng.normal(0, 0.5, 60) > 6.0).astype(int)
    est = make_pipeline(StandardScaler(), LogisticRegression(max_iter=200)).fit(X, y)
    save_portable(est, work / "outline", {"inputs": ["log_area", "area_fraction"]})
    yy = np.array([0, 1] * 20)
    oof = np.clip(0.5 + 0.2 * (yy - 0.5) + np.random.default_rng(0).normal(0, 0.15, 40), 0.01, 0.99)
    out = write_bundle(
        root / "bundle",
        work / "model",
        oof,
        yy,
        name="headline-test",
        classical={
            "dlr": {"stem": work / "dlr", "threshold": 0.5},
            "outline": {"stem": work / "outline", "threshold": OUTLINE_THRESHOLD},
        },
        headline=headline,
        onnx=False,
    )
    shutil.rmtree(src)
    return out


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> tuple[Path, Path]:
    """The same models twice: with ``headline_model`` = outline, and without (an old bundle)."""
    root = tmp_path_factory.mktemp("hb")
    named = _write(root, {"model": "outline", "basis": "test", "loses": True})
    old = root / "old"
    shutil.copytree(named, old)
    doc = json.loads((old / "bundle.json").read_text())
    doc.pop("headline_model")
    (old / "bundle.json").write_text(json.dumps(doc))
    return named, old


def _image(folder: Path, r) -> tuple[np.ndarray, np.ndarray]:
    gray, _ = read_image(folder / r.image_path)
    return gray, np.asarray(Image.open(folder / r.mask_path)) > 0


def test_named_headline_model_gives_score_band_and_call(bundles, phantoms):
    folder, df = phantoms
    named, old = Bundle.load(bundles[0]), Bundle.load(bundles[1])
    assert named.headline_model == "outline" and old.headline_model == "deep"
    differ = 0
    for r in df.itertuples():
        gray, m = _image(folder, r)
        p, q = named.predict(gray, mask=m), old.predict(gray, mask=m)
        differ += abs(p.ai_score - q.ai_score) > 1e-3
        s = p.model_scores["outline"]
        assert p.primary_model == "outline" and p.ai_score == s
        assert p.threshold == OUTLINE_THRESHOLD
        assert p.decision == ("malignant" if s >= OUTLINE_THRESHOLD else "benign")
        assert p.band == likelihood_band(s)
        assert p.headline_note is None
        assert p.assessment_text.startswith(f"AI assessment by the {model_label('outline')}: ")
        assert f"{100 * s:.1f}%" in p.assessment_text
        # the CNN keeps its calibrated score and threshold under its own name
        assert p.model_scores["deep"] == pytest.approx(q.ai_score)
        assert p.model_thresholds["deep"] == named.threshold
        assert "deep" not in q.model_thresholds
        # the old bundle: exactly as before, the CNN is the headline
        assert q.primary_model == "deep" and q.ai_score == q.model_scores["deep"]
        assert q.threshold == old.threshold and q.headline_note is None
        assert q.assessment_text.startswith("AI assessment by the Deep-learning model (CNN): ")
        assert "gives the AI assessment" not in q.others_text
        assert q.model_scores["outline"] == pytest.approx(s)
        d = p.to_json()
        assert d["headline_model"] == "outline" and d["ai_score"] == s
        assert d["model_scores"]["deep"] == pytest.approx(q.ai_score)
        assert q.to_json()["headline_model"] == "deep"
    assert differ  # the headline score is the outline model's, not the CNN's


def test_headline_model_that_cannot_score_falls_back_to_the_cnn(bundles, phantoms):
    folder, df = phantoms
    b = Bundle.load(bundles[0])
    gray, _ = _image(folder, df.iloc[0])
    p = b.predict(gray)  # no mask, no segmenter: the outline model cannot run
    assert "outline" in p.skipped_models and p.model_scores["outline"] is None
    assert p.primary_model == "deep" and p.ai_score == p.model_scores["deep"]
    assert p.threshold == b.threshold and "deep" not in p.model_thresholds
    assert p.headline_note == (
        "the study's headline model, the Outline descriptors, could not score this image "
        f"({p.skipped_models['outline']})"
    )
    assert p.others_text.startswith(
        "The Deep-learning model (CNN) gives the AI assessment: the study's headline model, "
        "the Outline descriptors, could not score this image (needs the lesion outline"
    )
    assert p.assessment_text.startswith("AI assessment by the Deep-learning model (CNN)")
    assert p.to_json()["headline_note"] == p.headline_note


def test_headline_model_not_in_the_bundle(tmp_path, bundles, phantoms):
    folder, df = phantoms
    out = tmp_path / "b"
    shutil.copytree(bundles[0], out)
    doc = json.loads((out / "bundle.json").read_text())
    doc["headline_model"] = {"model": "integrated"}
    (out / "bundle.json").write_text(json.dumps(doc))
    gray, m = _image(folder, df.iloc[0])
    p = Bundle.load(out).predict(gray, mask=m)
    assert p.primary_model == "deep"
    assert p.headline_note == (
        "the study's headline model, the Integrated model (fusion), is not in this bundle"
    )


def test_flagged_headline_model_withholds_the_call(tmp_path, bundles, phantoms):
    folder, df = phantoms
    out = tmp_path / "b"
    shutil.copytree(bundles[0], out)
    doc = json.loads((out / "bundle.json").read_text())
    doc["models"]["outline"]["flags"] = ["its out-of-fold scores are constant"]
    (out / "bundle.json").write_text(json.dumps(doc))
    gray, m = _image(folder, df.iloc[0])
    p = Bundle.load(out).predict(gray, mask=m)
    assert p.primary_model == "outline" and p.withheld
    assert p.cautions[0] == (
        "the model failed the study's own checks (its out-of-fold scores are constant)"
    )
    assert p.assessment_text.startswith("AI assessment by the Outline descriptors withheld: ")
    # the CNN's flags (the bundle's) no longer withhold the outline model's call
    doc["models"]["outline"].pop("flags")
    doc["flags"] = ["the CNN is broken"]
    (out / "bundle.json").write_text(json.dumps(doc))
    p = Bundle.load(out).predict(gray, mask=m)
    assert not any("study's own checks" in c for c in p.cautions)
    # ...but do when the CNN is the headline (no outline: the outline model cannot run)
    assert Bundle.load(out).predict(gray).withheld


def test_predict_cli_line_json_and_summary_name_the_headline_model(tmp_path, bundles, phantoms):
    from typer.testing import CliRunner

    from buscad.cli import app

    folder, df = phantoms
    r0 = df.iloc[0]
    img, mask = folder / r0.image_path, folder / r0.mask_path
    r = CliRunner().invoke(
        app,
        ["predict", str(bundles[0]), str(img), "--mask", str(mask), "-o", str(tmp_path)],
    )
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith(str(img)))
    assert ": AI assessment by the Outline descriptors: " in line
    doc = json.loads((tmp_path / f"{img.stem}.json").read_text())
    assert doc["headline_model"] == doc["primary_model"] == "outline"
    assert doc["ai_score"] == doc["model_scores"]["outline"]
    assert doc["threshold"] == OUTLINE_THRESHOLD
    assert doc["assessment_text"] in line
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert summary["headline_model"].tolist() == ["outline"]
    assert summary["ai_score"].tolist() == pytest.approx([doc["ai_score"]])
    assert summary["p_deep"].tolist() == pytest.approx([doc["model_scores"]["deep"]])
