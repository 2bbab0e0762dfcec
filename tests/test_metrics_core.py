"""Core AUC/DeLong/threshold metrics against scikit-learn and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from buscad.evaluate.delong import auc_ci, delong_components, delong_test, roc_auc
from buscad.evaluate.metrics import binary_metrics, youden_threshold


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(size=200) + y, 1)  # rounding creates many ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_delong_components_brute_force():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(7, int), np.zeros(9, int)]
    s = rng.integers(0, 4, 16).astype(float)
    auc, v10, v01 = delong_components(y, s)
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    np.testing.assert_allclose(v10, psi.mean(axis=1))
    np.testing.assert_allclose(v01, psi.mean(axis=0))
    assert auc == pytest.approx(psi.mean())


def test_auc_ci_hand_computed():
    # 2 positives, 2 negatives: psi = [[1, 1], [1, 0]] -> AUC 0.75
    y = np.array([1, 1, 0, 0])
    s = np.array([0.9, 0.4, 0.5, 0.1])
    r = auc_ci(y, s)
    # V10 = [1, .5], V01 = [1, .5]: S10 = S01 = 0.125 -> Var = .125/2 + .125/2 = .125
    assert r.auc == pytest.approx(0.75)
    assert r.se == pytest.approx(np.sqrt(0.125))
    assert r.lo == pytest.approx(max(0, 0.75 - 1.959963985 * np.sqrt(0.125)))
    assert r.hi == 1.0


def test_delong_test_identical_and_opposite():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 100)
    s = rng.normal(size=100) + y
    same = delong_test(y, s, s)
    assert same.p == 1.0 and same.diff == 0.0
    t = delong_test(y, s, rng.normal(size=100))
    assert t.p < 0.01 and t.diff > 0


def test_youden_and_binary_metrics():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.6, 0.4, 0.7, 0.9])
    thr = youden_threshold(y, s)
    assert thr == pytest.approx(0.7)  # J = 2/3 at 0.7 (and at 0.4); ties go to the higher one
    m = binary_metrics(y, s, 0.4)
    assert (m.tp, m.fp, m.tn, m.fn) == (3, 1, 2, 0)
    assert m.sensitivity == 1.0 and m.specificity == pytest.approx(2 / 3)
    assert m.ppv == 0.75 and m.npv == 1.0 and m.f1 == pytest.approx(6 / 7)


@pytest.mark.parametrize(
    ("y", "s", "match"),
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "only one class"),
        ([0, 1, 1], [0.1, np.nan, 0.3], "NaN"),
        ([0, 1], [0.1, 0.2, 0.3], "3 scores for 2 labels"),
    ],
)
def test_bad_input_messages(y, s, match):
    with pytest.raises(ValueError, match=match):
        auc_ci(y, s)
