"""Honest numbers on phantoms: fold-clean deep-feature models and "not evaluable" rows.

The first study runs as configured; the second is the same study with three training
rows of one deep fold given the other label (same split and folds). The CNNs that saw
those rows learn the new labels, so any score that reads their features moves; a
training row's out-of-fold DLR/CLDLR score must not: it comes from the CNN and SVM of
the fold that left the row out, only the training cohort's Platt sigmoid (two numbers,
like its threshold) is shared. The external cohort has no age and no lexicon columns:
the models that read only those are not evaluable there.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import replace
from html import unescape
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

from buscad.config import config_from_dict
from buscad.data.manifest import LEXICON_COLUMNS, Manifest
from buscad.data.phantom import generate_cohort
from buscad.study.runner import StudyRun

FLIPPED = 3


def _config(root: Path) -> dict:
    dev = generate_cohort(36, root / "a", seed=5, size=(96, 112), cohorts=("a",))
    ext = generate_cohort(16, root / "b", seed=6, size=(96, 112), cohorts=("b",))
    d = dev.df.copy()
    d.loc[d.index[:6], "shape"] = np.nan  # some rows lack one lexicon input
    Manifest(d, root=dev.root).save(root / "a.csv")
    e = ext.df.drop(columns=[c for c in ("age", *LEXICON_COLUMNS) if c in ext.df])
    Manifest(e, root=ext.root).save(root / "b.csv")
    return {
        "name": "foldclean",
        "seed": 0,
        "cohorts": [
            {"name": "a", "manifest": str(root / "a.csv")},
            {"name": "b", "role": "external", "manifest": str(root / "b.csv")},
        ],
        "models": ["deep", "dlr", "clinical", "us", "cldlr", "integrated"],
        "deep": {
            "backbones": ["efficientnet_lite0"],
            "epochs": 1,
            "input_size": 32,
            "selection_folds": 2,
            "batch_size": 8,
        },
        "split": {"cv_folds": 2, "test_size": 0.25},
        "clinical": {"p_threshold": 1.0},  # keep age in CLDLR whatever its P value
        "gallery_size": 0,
    }


class _Flipped(StudyRun):
    """The same study with the labels of ``ids`` flipped after the split (folds unchanged)."""

    ids: ClassVar[list[str]] = []

    def _split(self, arm, audited, audit_key):
        res = super()._split(arm, audited, audit_key)
        man = Manifest.load(res.path / "manifest.csv")
        df = man.df.copy()
        hit = df["image_id"].isin(self.ids)
        df.loc[hit, "label"] = df.loc[hit, "label"].map(
            {"benign": "malignant", "malignant": "benign"}
        )
        out = self.run_dir / "flipped-split"
        if out.exists():
            shutil.rmtree(out)
        Manifest(df, root=man.root, source=man.source).save(out / "manifest.csv")
        return replace(res, key=res.key + "-flipped", path=out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("foldclean")
    cfg = config_from_dict(_config(root), base_dir=root)
    out = root / "run"
    first = StudyRun(cfg, out, stream=io.StringIO()).run()
    split = Manifest.load(next((out / "cache").glob("split-*/manifest.csv"))).df
    tr = split[(split["split"] == "train") & (split["deep_fold"] == 0)]
    assert len(tr) >= FLIPPED + 3
    _Flipped.ids = list(tr["image_id"].iloc[:FLIPPED])
    second = _Flipped(cfg, out, stream=io.StringIO()).run()
    return first, second, tr["image_id"].tolist(), out


def _train_scores(res, ids: list[str], model: str) -> np.ndarray:
    pred = pd.read_csv(next(iter(res.predictions.values()))).set_index("case_id")
    return pred.loc[ids, model].to_numpy(float)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["dlr", "cldlr"])
def test_training_row_score_ignores_its_own_label(runs, model):
    first, second, fold0, out = runs
    flipped = _Flipped.ids
    # non-vacuous: the final CNN learnt the flipped labels, so its features of those rows moved
    finals = sorted((out / "cache").glob("deep-final-*/features.parquet"))
    assert len(finals) == 2
    f1, f2 = (pd.read_parquet(f).set_index("image_id").loc[flipped] for f in finals)
    assert np.abs(f1.to_numpy() - f2.to_numpy()).max() > 1e-4
    # the CNN's own out-of-fold score of a row never read its label
    np.testing.assert_allclose(
        _train_scores(first, flipped, "deep"), _train_scores(second, flipped, "deep"), rtol=1e-5
    )
    # every deep-fold-0 row (flipped or not) keeps its SVM decision value: its logit score
    # moves only by the shared Platt sigmoid, one affine map for the whole fold
    p1, p2 = _train_scores(first, fold0, model), _train_scores(second, fold0, model)
    assert np.isfinite(p1).all() and np.ptp(p1) > 1e-3
    l1, l2 = np.log(p1 / (1 - p1)), np.log(p2 / (1 - p2))
    a, b = np.polyfit(l1, l2, 1)
    resid = np.abs(l2 - (a * l1 + b)).max()
    assert resid < 1e-4, (
        f"{model}: out-of-fold scores moved with the rows' own labels ({resid:.3g})"
    )


@pytest.mark.slow
def test_models_without_inputs_are_not_evaluable(runs):
    first, _, _, out = runs
    m = pd.read_csv(out / "metrics.csv")
    ext = m[m["cohort"] == "b external"].set_index("model")
    for name in ("clinical", "us"):
        r = ext.loc[name]
        assert not r["evaluable"] and pd.isna(r["auc"]), name
        assert r["n"] == 0 and r["n_missing"] == 16, name
    # CLDLR reads age beside the deep features: without age it is not scored either
    assert not ext.loc["cldlr", "evaluable"] and ext.loc["dlr", "evaluable"]
    assert ext.loc["dlr", "n"] == 16 and np.isfinite(ext.loc["dlr", "auc"])
    # no model reports the AUC of constant scores (the image-size shortcut is the exception:
    # every phantom has one size, so its input is there and constant)
    const = m[(m["auc"] == 0.5) & (m["auc_lo"] == 0.5) & (m["auc_hi"] == 0.5)]
    const = const[const["model"] != "shortcut: image size"]
    assert const.empty, const[["cohort", "model"]]
    # the lexicon column blanked in six development rows is counted for the US model
    us = m[(m["model"] == "us") & m["evaluable"].astype(bool)]
    assert us["n_partial_inputs"].sum() == 6
    assert (m.loc[m["model"] == "deep", "n_partial_inputs"] == 0).all()
    # the tables, both reports and the bundle say so
    t2 = pd.read_csv(next((out / "evaluation").glob("*/tables/table2_metrics.csv")))
    row = t2[(t2["Cohort"] == "b external") & (t2["Model"] == "clinical")].iloc[0]
    assert row["AUC (95% CI)"] == "not evaluable (no case has its inputs)"
    assert row["n (malignant)"] == "0 of 16 usable"
    assert t2["n (malignant)"].str.contains("; 6 lack some inputs").any()
    html = unescape(first.report.read_text())
    assert "not evaluable (no case has its inputs)" in html and "0 of 16 usable" in html
    ev_html = unescape(next((out / "evaluation").glob("*/report.html")).read_text())
    assert "not evaluable (no case has its inputs)" in ev_html
    doc = json.loads((out / "bundle" / "bundle.json").read_text())
    rows = {(r["cohort"], r["model"]): r for r in doc["metrics"]}
    assert rows[("b external", "clinical")]["evaluable"] is False
    assert rows[("b external", "clinical")]["n"] == 0


def test_refit_sigmoid_is_what_the_exported_dlr_computes(tmp_path):
    """The Platt sigmoid fitted on out-of-fold decision values replaces the in-sample one, and
    the portable (bundled) model computes exactly the refit probabilities."""
    from buscad.bundle.portable import load_portable, save_portable
    from buscad.classical import CLDLR, DLR

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(30, int), np.ones(30, int)]
    X = pd.DataFrame(
        rng.normal(size=(60, 8)) + y[:, None] * 0.8, columns=[f"deep_{j:04d}" for j in range(8)]
    )
    X["age"] = rng.normal(50, 10, 60) + 5 * y
    for est in (
        DLR(include=r"^deep_\d+$"),
        CLDLR(include=r"^deep_\d+$", numeric=["age"], alpha=1.0),
    ):
        m = est.fit(X, y)
        before = m.predict_proba(X)[:, 1]
        d = m.decision_function(X)
        np.testing.assert_allclose(m.sigmoid(d), before, atol=1e-12)
        clean = d * 0.3 + rng.normal(0, 1.0, 60)  # flatter, noisier: a smaller Platt slope
        m.refit_sigmoid(clean, y)
        after = m.predict_proba(X)[:, 1]
        np.testing.assert_allclose(m.sigmoid(d), after, atol=1e-12)
        assert np.abs(after - before).max() > 0.05
        # same ranking (the SVM is unchanged), new calibration
        assert (np.argsort(after) == np.argsort(before)).all()
        save_portable(m, tmp_path / type(m).__name__)
        back = load_portable(tmp_path / type(m).__name__)
        np.testing.assert_allclose(back.predict_proba(X)[:, 1], after, atol=1e-9)


def test_evaluation_marks_models_without_inputs_not_evaluable():
    """A model with no scored case in a cohort gets a row saying so, with no AUC; scored
    cases that lacked some inputs are counted."""
    from buscad.evaluate import evaluate_predictions
    from buscad.evaluate.tables import NOT_EVALUABLE

    rng = np.random.default_rng(1)
    n = 80
    y = rng.integers(0, 2, n)
    cohort = np.where(np.arange(n) < 50, "train", "ext")
    clin = np.where(cohort == "ext", np.nan, y * 0.3 + rng.random(n) * 0.7)
    deep = y * 0.4 + rng.random(n) * 0.6
    pred = pd.DataFrame(
        {
            "case_id": np.arange(n),
            "label": y,
            "cohort": cohort,
            "clinical": clin,
            "deep": deep,
            "deep2": deep**2,
        }
    )
    gaps = pd.DataFrame(
        {
            "case_id": np.arange(n),
            "clinical": np.where(cohort == "ext", np.nan, 0.0),
            "deep": 0.0,
            "deep2": 0.0,
        }
    )
    gaps.loc[:4, "clinical"] = 1.0  # five training cases lacked one clinical input
    ev = evaluate_predictions(
        pred, ["clinical", "deep", "deep2"], train_cohort="train", input_gaps=gaps
    )
    m = ev.metrics.set_index(["cohort", "model"])
    r = m.loc[("ext", "clinical")]
    assert not r["evaluable"] and np.isnan(r["auc"]) and r["n"] == 0 and r["n_missing"] == 30
    assert m.loc[("train", "clinical"), "n_partial_inputs"] == 5
    assert m.loc[("ext", "deep"), "evaluable"] and m.loc[("ext", "deep"), "n"] == 30
    assert any("not evaluable, none of its inputs in any of the 30 case(s)" in i for i in ev.issues)
    t2 = ev.table2().set_index(["Cohort", "Model"])
    assert t2.loc[("ext", "clinical"), "AUC (95% CI)"] == NOT_EVALUABLE
    assert t2.loc[("ext", "clinical"), "n (malignant)"] == "0 of 30 usable"
    assert t2.loc[("train", "clinical"), "n (malignant)"].endswith("; 5 lack some inputs")
    # the other models are still compared on that cohort (the unscored one is left out)
    assert list(ev.delong_matrices["ext"].columns) == ["deep", "deep2"]
