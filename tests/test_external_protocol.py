"""The external-validation protocol chooses its recipe without the external cohort.

``benchmarks/external.py``'s :func:`choose` ranks candidates by grouped CV of the
training cohort alone and scores the external cohort once; :func:`nested_cv`
makes the same choice inside every outer fold. Synthetic cohorts: two informative
feature blocks (``a*`` and ``b*``) and pure noise (``n*``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import external as EX

N_TRAIN, N_EXT = 150, 90


def _cohorts(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows (training cohort ``T`` then external cohort ``E``) and their feature family ``f``."""
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_EXT
    X = rng.normal(size=(n, 9))
    cols = [f"a{i}" for i in range(3)] + [f"b{i}" for i in range(3)] + [f"n{i}" for i in range(3)]
    ids = [f"img{i:03d}" for i in range(n)]
    y = (X[:, 0] + X[:, 1] + 0.8 * rng.normal(size=n) > 0).astype(int)
    df = pd.DataFrame(
        {
            "image_id": ids,
            "label": np.where(y == 1, "malignant", "benign"),
            "cohort": ["T"] * N_TRAIN + ["E"] * N_EXT,
            # pairs of near-duplicates share a group
            "group": [f"g{i // 2}" for i in range(n)],
        }
    )
    feats = pd.DataFrame(X, columns=cols)
    feats.insert(0, "image_id", ids)
    return df, feats


def _candidates() -> dict:
    c = {
        "a LR": EX.Candidate("a LR", ["f:^a"]),
        "b LR": EX.Candidate("b LR", ["f:^b"]),
        "noise LR": EX.Candidate("noise LR", ["f:^n"]),
        "a LR, C by CV": EX.Candidate("a LR, C by CV", ["f:^a"], kind="lrcv"),
        "stack: b + noise": EX.Combo("stack: b + noise", ["b LR", "noise LR"], how="stack"),
    }
    return c


def _choose(tmp: Path, df: pd.DataFrame, feats: pd.DataFrame) -> tuple[dict, EX.Data]:
    (tmp / "features").mkdir(parents=True)
    feats.to_parquet(tmp / "features" / "f.parquet", index=False)
    data = EX.Data(SimpleNamespace(df=df), tmp)
    cands = _candidates()
    eng = EX.Engine(data, cands, seed=0)
    train = np.flatnonzero(data.cohort == "T")
    ext = np.flatnonzero(data.cohort == "E")
    return EX.choose(eng, EX.selection_pool(cands), train, ext), data


def test_choice_ignores_the_external_labels(tmp_path):
    df, feats = _cohorts()
    ref, data = _choose(tmp_path / "true", df, feats)
    ext = np.flatnonzero(data.cohort == "E")
    perm = df.copy()
    labels = perm["label"].to_numpy()
    rng = np.random.default_rng(1)
    labels[ext] = labels[ext][rng.permutation(len(ext))]
    perm["label"] = labels
    assert (perm["label"] != df["label"]).sum() > 20  # the external labels really moved
    got, data_p = _choose(tmp_path / "permuted", perm, feats)

    assert got["chosen"] == ref["chosen"]
    assert ref["chosen"].startswith("a LR")
    assert got["cv_auc"] == ref["cv_auc"]
    np.testing.assert_array_equal(got["score"], ref["score"])
    # the external AUC does read the labels: the same scores, different AUCs
    from buscad.evaluate.delong import roc_auc

    assert roc_auc(data.y[ext], ref["score"]) > 0.85
    assert abs(roc_auc(data_p.y[ext], got["score"]) - 0.5) < 0.15


def test_choice_follows_the_training_labels(tmp_path):
    df, feats = _cohorts()
    ref, data = _choose(tmp_path / "a", df, feats)
    assert ref["chosen"].startswith("a LR")
    assert ref["cv_auc"]["a LR"] > 0.8 > 0.6 > ref["cv_auc"]["noise LR"]
    # relabel the training cohort from the b block: the choice moves to a b recipe
    x = feats[["b0", "b1"]].to_numpy().sum(1)
    relabel = df.copy()
    train = np.flatnonzero(data.cohort == "T")
    lab = relabel["label"].to_numpy()
    lab[train] = np.where(x[train] > 0, "malignant", "benign")
    relabel["label"] = lab
    got, _ = _choose(tmp_path / "b", relabel, feats)
    assert got["chosen"] in ("b LR", "stack: b + noise"), got["cv_auc"]
    assert got["cv_auc"][got["chosen"]] > 0.9
    assert got["cv_auc"]["a LR"] < 0.7


def test_nested_cv_chooses_inside_every_fold(tmp_path):
    df, feats = _cohorts()
    (tmp_path / "features").mkdir()
    feats.to_parquet(tmp_path / "features" / "f.parquet", index=False)
    data = EX.Data(SimpleNamespace(df=df), tmp_path)
    cands = _candidates()
    eng = EX.Engine(data, cands, seed=0)
    rows = np.arange(len(df))
    pool = EX.selection_pool(cands)
    nest = EX.nested_cv(eng, pool, rows, folds=3)
    tests = np.concatenate([te for _, te in nest["pairs"]])
    np.testing.assert_array_equal(np.sort(tests), rows)  # every row scored once
    for (tr, te), f in zip(nest["pairs"], nest["folds"], strict=True):
        assert not set(tr) & set(te)
        # the fold's choice is the training part's own choice
        assert f["chosen"] == EX.choose(eng, pool, tr, te[:0], folds=3)["chosen"]
        assert f["inner_cv_auc"] >= f["runner_up_cv_auc"]
    ev = EX.evaluate(eng, nest["chosen"], nest["pairs"])
    assert ev["metrics"]["n"] == len(rows)
    assert ev["metrics"]["auc"] > 0.8
