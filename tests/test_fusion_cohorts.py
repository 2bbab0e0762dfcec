"""Cross-cohort fusion (``integrated.weights: cross_cohort``) and the study's "fusion loses" check.

Synthetic score tables, no CNN: a ``stable`` member whose feature means the same in
every cohort, and a ``shortcut`` member whose feature is strongly predictive inside
each cohort but with the opposite sign in the other one (a per-cohort annotation
style). Pooled grouped CV rewards the shortcut (its model learns the per-cohort sign
from the cohort indicator); leave-one-cohort-out scores show it reversed on a new
cohort, so cross-cohort weights give it 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline

from buscad.classical import ColumnScore, FeatureSubset, StackingIntegrator
from buscad.config import config_from_dict
from buscad.study.fit import FUSION_COHORT, fit_and_predict, fusion_summary

TRAIN = "a+c train (CV)"


def _table(n: int = 240, seed: int = 0, cohorts: tuple[str, ...] = ("a", "c")) -> pd.DataFrame:
    """Rows of ``cohorts`` (alternating) with a stable feature and a per-cohort-sign shortcut."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    cohort = np.array([cohorts[i % len(cohorts)] for i in range(n)])
    sign = np.where(cohort == cohorts[0], 1.0, -1.0)
    is_c = (cohort != cohorts[0]).astype(float)
    stable = 0.8 * (y - 0.5) + rng.normal(0, 0.5, n)
    shortcut = sign * 1.6 * (y - 0.5) + rng.normal(0, 0.3, n)
    return pd.DataFrame(
        {
            "stable": stable,
            "shortcut": shortcut,
            "shortcut_c": shortcut * is_c,  # lets a pooled model learn each cohort's sign
            "is_c": is_c,
            "cohort": cohort,
            "group": np.arange(n).astype(str),
        }
    ), y


def _members() -> list[tuple[str, object]]:
    def lr(*cols: str):
        return make_pipeline(
            FeatureSubset(include=[f"^{c}$" for c in cols]), LogisticRegression(max_iter=2000)
        )

    return [("stable", lr("stable")), ("shortcut", lr("shortcut", "shortcut_c", "is_c"))]


def _stack(inner: str) -> StackingIntegrator:
    return StackingIntegrator(
        _members(), cv=4, stack_method="logit", positive=True, inner=inner, random_state=0
    )


def test_cross_cohort_weights_drop_a_member_reversed_across_cohorts():
    X, y = _table()
    pooled = _stack("folds").fit(X, y, groups=X["group"])
    loco = _stack("cohorts").fit(X, y, groups=X["group"])
    w_pooled = dict(zip(["stable", "shortcut"], pooled.coef_, strict=True))
    w_loco = dict(zip(["stable", "shortcut"], loco.coef_, strict=True))
    # inside the pooled cohorts the shortcut is the best member and dominates the weights
    assert roc_auc_score(y, pooled.oof_proba_["shortcut"]) > 0.95
    assert w_pooled["shortcut"] > w_pooled["stable"] > 0
    # each cohort scored by the members trained on the other: the shortcut is reversed
    assert loco.inner_split_ == "leave-one-cohort-out"
    assert set(loco.oof_split_) == {"a", "c"}
    assert roc_auc_score(y, loco.oof_proba_["shortcut"]) < 0.2
    assert roc_auc_score(y, loco.oof_proba_["stable"]) > 0.8
    assert w_loco["shortcut"] == 0 and w_loco["stable"] > 0
    assert loco.dropped_ == ["shortcut"] and pooled.dropped_ == []
    # the refit members and weights score new rows: a third cohort with the stable sign only
    Xn, yn = _table(120, seed=1, cohorts=("d", "e"))
    assert roc_auc_score(yn, loco.predict_proba(Xn)[:, 1]) == pytest.approx(
        roc_auc_score(yn, loco.base_proba(Xn)["stable"])
    )


def test_held_out_fusion_refits_the_weights_without_the_held_out_cohort():
    X, y = _table()
    loco = _stack("cohorts").fit(X, y, groups=X["group"])
    held = loco.held_out_fusion()
    F = loco.oof_proba_.to_numpy()
    a = loco.oof_split_ == "a"
    # cohort a's fused scores: weights fitted on cohort c's leave-one-out scores only
    w = loco._fit_final(F[~a], y[~a])
    assert np.allclose(held[a], w.predict_proba(loco._f(F[a]))[:, 1])
    assert not np.allclose(held[a], loco.final_estimator_.predict_proba(loco._f(F[a]))[:, 1])
    # a label of cohort a moves none of cohort a's member scores (members trained on c only)
    y2 = y.copy()
    y2[np.flatnonzero(a)[:30]] ^= 1
    flipped = _stack("cohorts").fit(X, y2, groups=X["group"])
    assert np.allclose(flipped.oof_proba_.to_numpy()[a], F[a])
    assert not np.allclose(flipped.oof_proba_.to_numpy()[~a], F[~a])
    assert StackingIntegrator(_members(), weights="equal").fit(X, y).held_out_fusion() is None


def test_inner_cohorts_needs_the_cohort_column():
    X, y = _table()
    with pytest.raises(ValueError, match="inner='cohorts' needs a column 'site'"):
        StackingIntegrator(_members(), inner="cohorts", cohort_column="site").fit(X, y)
    with pytest.raises(ValueError, match="inner must be 'folds' or 'cohorts'"):
        StackingIntegrator(_members(), inner="sites").fit(X, y)


def test_one_cohort_falls_back_to_grouped_cv_and_says_so():
    X, y = _table()
    one = X["cohort"] == "a"
    X1, y1 = X[one].reset_index(drop=True), y[one.to_numpy()]
    stack = _stack("cohorts").fit(X1, y1, groups=X1["group"])
    assert stack.inner_split_ == "folds (one cohort)"
    assert set(stack.oof_split_) == {f"fold{k}" for k in range(4)}
    out = pd.DataFrame({"label": y1, "cohort": TRAIN})
    s = fusion_summary(out, {"integrated": stack}, TRAIN)
    assert s["inner_split"] == "folds (one cohort)" and s["basis"].startswith("grouped 4-fold CV")
    assert any(
        "one development cohort" in n and "not leave-one-cohort-out" in n for n in s["notes"]
    )
    assert [r["split"] for r in s["by_split"]] == [f"fold{k}" for k in range(4)]


def _scores_table(noise_weight: float, seed: int = 0) -> tuple[pd.DataFrame, StackingIntegrator]:
    """Training-row predictions of a ``good`` and a ``noise`` member and their equal-weight fusion."""
    rng = np.random.default_rng(seed)
    n = 200
    y = rng.integers(0, 2, n)
    good = 1 / (1 + np.exp(-(2.5 * (y - 0.5) + rng.normal(0, 0.6, n))))
    noise = 1 / (1 + np.exp(-noise_weight * rng.normal(0, 1, n)))
    X = pd.DataFrame({"good": good, "noise": noise})
    stack = StackingIntegrator(
        [("good", ColumnScore("good")), ("noise", ColumnScore("noise"))],
        stack_method="logit",
        weights="equal",
    ).fit(X, y)
    out = X.assign(label=y, cohort=TRAIN, integrated=stack.predict_proba(X)[:, 1])
    out = pd.concat([out, out.head(5).assign(cohort="b external", label=1 - y[:5])])
    return out, stack


def test_fusion_that_loses_to_a_member_names_it_the_headline():
    out, stack = _scores_table(noise_weight=3.0)
    s = fusion_summary(out, {"integrated": stack}, TRAIN)
    tr = out[out["cohort"] == TRAIN]
    assert s["auc"]["integrated"] == pytest.approx(roc_auc_score(tr["label"], tr["integrated"]))
    assert s["auc"]["good"] == pytest.approx(roc_auc_score(tr["label"], tr["good"]))
    assert s["auc"]["integrated"] < s["auc"]["good"] - 0.03
    assert s["loses"] and s["best_member"] == "good" and s["headline_model"] == "good"
    assert s["basis"].startswith("the training rows' out-of-fold scores")
    (note,) = [n for n in s["notes"] if "falls below its best member" in n]
    assert f"AUC {s['auc']['integrated']:.3f} vs good {s['auc']['good']:.3f}" in note
    assert "headline model is good" in note


def test_fusion_that_helps_stays_the_headline():
    rng = np.random.default_rng(3)
    n = 300
    y = rng.integers(0, 2, n)
    # two members with independent errors: their mean beats each
    a, b = (1 / (1 + np.exp(-(1.5 * (y - 0.5) + rng.normal(0, 1, n)))) for _ in range(2))
    X = pd.DataFrame({"a": a, "b": b})
    stack = StackingIntegrator(
        [("a", ColumnScore("a")), ("b", ColumnScore("b"))], stack_method="logit", weights="equal"
    ).fit(X, y)
    out = X.assign(label=y, cohort=TRAIN, integrated=stack.predict_proba(X)[:, 1])
    s = fusion_summary(out, {"integrated": stack}, TRAIN)
    assert s["auc"]["integrated"] > max(s["auc"]["a"], s["auc"]["b"])
    assert not s["loses"] and s["headline_model"] == "integrated"
    assert not [n for n in s["notes"] if "falls below" in n]
    assert fusion_summary(out, {}, TRAIN) == {}


def test_cross_cohort_summary_reads_the_leave_one_cohort_out_scores():
    X, y = _table()
    loco = _stack("cohorts").fit(X, y, groups=X["group"])
    s = fusion_summary(pd.DataFrame({"label": y, "cohort": TRAIN}), {"integrated": loco}, TRAIN)
    assert s["inner_split"] == "leave-one-cohort-out" and s["dropped"] == ["shortcut"]
    assert s["weights"]["shortcut"] == 0 and s["weights"]["stable"] > 0
    assert s["basis"].startswith("leave-one-cohort-out scores over a, c")
    held = loco.held_out_fusion()
    assert s["auc"]["integrated"] == pytest.approx(roc_auc_score(y, held))
    assert s["auc"]["shortcut"] == pytest.approx(roc_auc_score(y, loco.oof_proba_["shortcut"]))
    assert [r["split"] for r in s["by_split"]] == ["a", "c"]
    assert any("shortcut got weight 0" in n for n in s["notes"])


def _study_frames(cohorts: tuple[str, ...], flip: int = 0):
    """A study table like the runner's (``df``, feature ``table``, fold CNN features) on one or
    two development cohorts; ``flip`` training rows of the first cohort get the other label."""
    X, y = _table(160, seed=4, cohorts=cohorts)
    n = len(y)
    rng = np.random.default_rng(5)
    tr = rng.random(n) < 0.8
    ids = [f"r{i}" for i in range(n)]
    y = y.copy()
    y[np.flatnonzero(tr & (X["cohort"] == cohorts[0]).to_numpy())[:flip]] ^= 1
    df = pd.DataFrame(
        {
            "image_id": ids,
            "label": np.where(y == 1, "malignant", "benign"),
            "split": np.where(tr, "train", "external"),
            "cv_fold": np.where(tr, np.arange(n) % 3, -1),
            "deep_fold": np.where(tr, np.arange(n) % 2, -1),
            "group": X["group"],
            "cohort": X["cohort"],
            "eval_cohort": np.where(tr, TRAIN, "b external"),
            "age": 50 + 10 * X["stable"] + rng.normal(0, 5, n),
        }
    )
    s = 1 / (1 + np.exp(-X["stable"].to_numpy()))
    deep = {
        f"deep_{j:04d}": X["stable"].to_numpy() * (j % 3) + rng.normal(0, 1, n) for j in range(6)
    }
    table = df.set_index("image_id").assign(deep_oof=s, deep_final=s, **deep)
    folds = pd.concat(
        [
            pd.DataFrame({"image_id": ids, "cnn_fold": f, **deep}).assign(
                **{k: v + rng.normal(0, 0.3, n) for k, v in deep.items()}
            )
            for f in (0, 1)
        ],
        ignore_index=True,
    )
    return df, table, folds


RAW = {
    "cohorts": [{"name": "a", "phantom": {"n": 10}}],
    "models": ["deep", "dlr", "clinical", "integrated"],
    "split": {"cv_folds": 3},
    "integrated": {"weights": "cross_cohort"},
}


@pytest.mark.parametrize("cohorts", [("a", "c"), ("a",)])
def test_fit_and_predict_cross_cohort(cohorts):
    """weights: cross_cohort in the study's model fit: leave-one-cohort-out with two development
    cohorts, grouped CV with one; the cohort column is never a model input."""
    from buscad.classical.inputs import model_inputs

    df, table, folds = _study_frames(cohorts)
    out, _, fitted, _, _ = fit_and_predict(config_from_dict(RAW), df, table, fold_features=folds)
    stack = fitted["integrated"]
    assert stack.inner == "cohorts" and stack.positive and stack.weights == "fit"
    assert [n for n, _ in stack.estimators_] == ["dlr", "clinical", "deep"]
    assert (stack.coef_ >= 0).all() and out["integrated"].notna().all()
    assert FUSION_COHORT not in model_inputs(stack) and "_dlr_score" not in model_inputs(stack)
    tr = (df["split"] == "train").to_numpy()
    if len(cohorts) == 2:
        assert stack.inner_split_ == "leave-one-cohort-out"
        assert list(stack.oof_split_) == df.loc[tr, "cohort"].tolist()
    else:
        assert stack.inner_split_ == "folds (one cohort)"
        assert set(stack.oof_split_) == {"fold0", "fold1", "fold2"}
    s = fusion_summary(out, fitted, TRAIN)
    one = [n for n in s["notes"] if "one development cohort" in n]
    assert bool(one) == (len(cohorts) == 1)


def test_leave_one_cohort_out_dlr_scores_never_saw_the_cohort():
    """The DLR scores the cross-cohort weights are fitted on: a cohort-a row's score comes from
    the head trained on cohort c (on the features of the fold CNN without the row), so flipping
    labels in cohort a moves none of cohort a's scores; the pooled fold-clean scores move."""
    cfg = config_from_dict(RAW)
    scores = {}
    for flip in (0, 12):
        df, table, folds = _study_frames(("a", "c"), flip=flip)
        out, _, fitted, _, _ = fit_and_predict(cfg, df, table, fold_features=folds)
        stack = fitted["integrated"]
        a = stack.oof_split_ == "a"
        scores[flip] = (
            stack.oof_proba_["dlr"].to_numpy(),
            a,
            out.loc[df["split"] == "train", "dlr"],
        )
    (loco0, a, pooled0), (loco1, _, pooled1) = scores[0], scores[12]
    assert np.allclose(loco0[a], loco1[a]) and not np.allclose(loco0[~a], loco1[~a])
    assert not np.allclose(pooled0.to_numpy()[a], pooled1.to_numpy()[a])


# ------------------------------------------------------------------ the study
def _study_config(root, dev: tuple[str, ...]) -> dict:
    from buscad.data.phantom import generate_cohort

    cohorts = []
    for i, name in enumerate((*dev, "b")):
        generate_cohort(
            28 if name != "b" else 16, root / name, seed=10 + i, size=(96, 112), cohorts=(name,)
        ).save(root / f"{name}.csv")
        role = "external" if name == "b" else "development"
        cohorts.append({"name": name, "role": role, "manifest": str(root / f"{name}.csv")})
    return {
        "name": "fusion",
        "seed": 0,
        "cohorts": cohorts,
        "models": ["deep", "dlr", "outline", "integrated"],
        "integrated": {"weights": "cross_cohort"},
        "deep": {
            "backbones": ["efficientnet_lite0"],
            "epochs": 1,
            "input_size": 32,
            "selection_folds": 2,
            "batch_size": 8,
        },
        "split": {"cv_folds": 2, "test_size": 0.25},
        "gallery_size": 0,
    }


@pytest.mark.slow
@pytest.mark.parametrize("dev", [("a", "c"), ("a",)])
def test_study_records_the_fusion_check_in_report_and_bundle(tmp_path, dev):
    """A pooled development arm (a+c) fits the weights leave-one-cohort-out; one development
    cohort (a→b) falls back to grouped CV and the report says so. fusion.json's verdict is the
    bundle's headline model, and the report says in words when the fusion loses."""
    import io
    import json
    from html import unescape

    from buscad.study.runner import StudyRun

    # at seed 0 both verdicts occur: a+c loses to the outline model on its leave-one-cohort-out
    # scores (0.780 vs 0.792); a alone does not (grouped CV, 0.981 = the outline model's)
    cfg = config_from_dict(_study_config(tmp_path, dev), base_dir=tmp_path)
    res = StudyRun(cfg, tmp_path / "run", stream=io.StringIO()).run()
    (models_dir,) = sorted((tmp_path / "run" / "cache").glob("models-*"))
    fusion = json.loads((models_dir / "fusion.json").read_text())
    loco = len(dev) == 2
    assert fusion["inner_split"] == ("leave-one-cohort-out" if loco else "folds (one cohort)")
    assert [r["split"] for r in fusion["by_split"]] == (list(dev) if loco else ["fold0", "fold1"])
    assert set(fusion["weights"]) == {"dlr", "outline", "deep"}
    assert all(w >= 0 for w in fusion["weights"].values())
    assert fusion["dropped"] == [m for m, w in fusion["weights"].items() if w == 0]
    members = {m: fusion["auc"][m] for m in fusion["weights"]}
    assert fusion["loses"] == (max(members.values()) > fusion["auc"]["integrated"])
    headline = max(members, key=members.get) if fusion["loses"] else "integrated"
    assert fusion["headline_model"] == headline
    bundle = json.loads((res.run_dir / "bundle" / "bundle.json").read_text())
    assert bundle["headline_model"]["model"] == headline
    assert bundle["headline_model"]["loses"] == fusion["loses"]
    assert bundle["primary_model"] == "deep"
    report = unescape(res.report.read_text())
    assert ("falls below its best member" in report) == fusion["loses"]
    if fusion["loses"]:
        assert f"the bundle's headline model is {headline}" in report
    assert ("one development cohort" in report) == (not loco)


def test_stacked_out_of_fold_fits_get_their_groups():
    """The out-of-fold fits of a stacked model receive the rows' groups (its inner CV stays grouped)."""
    from sklearn.base import BaseEstimator, ClassifierMixin

    from buscad.study.fit import _oof_and_predict

    seen: list[np.ndarray | None] = []

    class Recorder(ClassifierMixin, BaseEstimator):
        def fit(self, X, y, groups=None):
            seen.append(None if groups is None else np.asarray(groups))
            self.classes_ = np.array([0, 1])
            return self

        def predict_proba(self, X):
            return np.tile([0.5, 0.5], (len(X), 1))

    n = 20
    X = pd.DataFrame({"a": np.arange(n, dtype=float)})
    y = np.array([0, 1] * (n // 2))
    tr = np.ones(n, bool)
    folds = np.array([f"fold{i % 2}" for i in range(n)])
    groups = np.array([f"g{i // 2}" for i in range(n)])
    _oof_and_predict(Recorder(), X, y, tr, folds, 0, groups=groups)
    # two fold fits and the refit on all rows, each with the groups of its own rows
    assert len(seen) == 3
    assert all(g is not None for g in seen)
    assert sorted(len(g) for g in seen) == [10, 10, 20]
    assert set(seen[0]) | set(seen[1]) == set(groups)
