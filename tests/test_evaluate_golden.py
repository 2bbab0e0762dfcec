"""Golden tests of the evaluation statistics against published reference values.

Sources
-------
- AUC, DeLong variance/CI and DeLong tests: R package pROC's own test suite on its
  aSAH data (xrobin/pROC, tests/testthat/test-auc.R, test-var.R, test-ci.auc.R,
  test-roc.test.R). Data: tests/data/asah.csv (provenance in tests/data/README.md).
- Wilson intervals: Newcombe (1998), Stat Med 17:857–872, Table I, method 3
  (score interval without continuity correction) for 81/263, 15/148, 0/20, 1/29.
- McNemar: R documentation example of ``stats::mcnemar.test`` (Agresti 1990, p. 350,
  presidential approval, discordant counts 150 and 86): McNemar's chi-squared =
  16.818, df = 1, p-value = 4.115e-05.
- Hosmer–Lemeshow: with the groups set to the covariate patterns, the statistic
  equals the Pearson chi-square of the grouped logistic fit (Hosmer & Lemeshow,
  Applied Logistic Regression, 2nd ed., §5.2.2); the reference value is statsmodels'
  GLM ``pearson_chi2`` on the caffeine example of the Wikipedia article
  "Hosmer–Lemeshow test" (11 dose groups of 30 volunteers). A hand-worked 2-group
  example checks the formula itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from buscad.evaluate import (
    auc_ci,
    delong_test,
    delong_unpaired_test,
    delong_variance,
    hosmer_lemeshow,
    mcnemar_test,
    roc_auc,
    wilson_ci,
)

ASAH = Path(__file__).parent / "data" / "asah.csv"
DEC = 1e-6  # pROC values reproduce far beyond the 4 decimals required


@pytest.fixture(scope="module")
def asah() -> tuple[np.ndarray, pd.DataFrame]:
    d = pd.read_csv(ASAH)
    assert len(d) == 113 and int((d.outcome == "Poor").sum()) == 41
    return (d.outcome == "Poor").to_numpy(int), d


# pROC tests/testthat/test-auc.R ("full auc works")
@pytest.mark.parametrize("col,expected", [("wfns", 0.823678861788618), ("ndka", 0.611957994579946)])
def test_auc_matches_proc(asah, col, expected):
    y, d = asah
    assert roc_auc(y, d[col]) == pytest.approx(expected, abs=DEC)


# pROC tests/testthat/test-var.R ("var with delong works")
@pytest.mark.parametrize(
    "col,expected",
    [("wfns", 0.00146991470882363), ("ndka", 0.0031908105493913), ("s100b", 0.00266868245717244)],
)
def test_delong_variance_matches_proc(asah, col, expected):
    y, d = asah
    assert delong_variance(y, d[col])[1] == pytest.approx(expected, abs=1e-9)


# pROC tests/testthat/test-ci.auc.R: expected.ci.auc <- c(0.501244999271703, 0.611957994579946, 0.722670989888189)
def test_delong_ci_matches_proc(asah):
    y, d = asah
    r = auc_ci(y, d["ndka"])
    assert (r.lo, r.auc, r.hi) == pytest.approx(
        (0.501244999271703, 0.611957994579946, 0.722670989888189), abs=DEC
    )


# pROC tests/testthat/test-roc.test.R ("roc.test statistic and p are as expected with defaults")
@pytest.mark.parametrize(
    "a,b,z,p,lo,hi",
    [
        (
            "wfns",
            "s100b",
            2.20898359144091,
            0.0271757822291882,
            0.0104061769564846,
            0.174214419249478,
        ),
        (
            "wfns",
            "ndka",
            2.79777591868904,
            0.00514557970691098,
            0.0634011709339876,
            0.3600405634833566,
        ),
        (
            "ndka",
            "s100b",
            -1.39077002573558,
            0.164295175223054,
            -0.2876917446341914,
            0.0488706064228094,
        ),
    ],
)
def test_paired_delong_matches_proc(asah, a, b, z, p, lo, hi):
    y, d = asah
    t = delong_test(y, d[a], d[b])
    assert (t.z, t.p, t.lo, t.hi) == pytest.approx((z, p, lo, hi), abs=DEC)
    rev = delong_test(y, d[b], d[a])  # reversed curves: same p, opposite statistic
    assert rev.z == pytest.approx(-z, abs=DEC) and rev.p == pytest.approx(p, abs=DEC)


# pROC tests/testthat/test-roc.test.R ("unpaired roc.test statistic and p are as expected")
@pytest.mark.parametrize(
    "a,b,d_stat,p",
    [
        ("wfns", "s100b", 1.43490640926908, 0.152825378808796),
        ("wfns", "ndka", 3.10125096778969, 0.00220950791756457),
        ("ndka", "s100b", -1.55995743389685, 0.120192832430845),
    ],
)
def test_unpaired_delong_matches_proc(asah, a, b, d_stat, p):
    y, d = asah
    t = delong_unpaired_test(y, d[a], y, d[b])
    assert (t.d, t.p) == pytest.approx((d_stat, p), abs=DEC)


def test_identical_curves_give_p_one(asah):
    # pROC test-roc.test.R: "DeLong roc.test works when curves are identical"
    y, d = asah
    t = delong_test(y, d["wfns"], d["wfns"])
    assert t.z == 0 and t.p == 1


@pytest.mark.parametrize(
    "k,n,lo,hi",
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_newcombe_1998(k, n, lo, hi):
    got = wilson_ci(k, n)
    assert got == pytest.approx((lo, hi), abs=5e-5)


def test_mcnemar_matches_r_documentation():
    t = mcnemar_test(b=150, c=86)
    assert t.statistic == pytest.approx(16.818, abs=5e-4)
    assert t.p == pytest.approx(4.115e-05, rel=1e-3)
    # the same from decision vectors
    p1 = np.r_[np.ones(150 + 794), np.zeros(86 + 570)].astype(bool)
    p2 = np.r_[np.zeros(150), np.ones(794), np.ones(86), np.zeros(570)].astype(bool)
    assert mcnemar_test(p1, p2).statistic == pytest.approx(t.statistic)
    assert mcnemar_test(b=150, c=86, correct=False).statistic == pytest.approx(64**2 / 236)


def test_hosmer_lemeshow_equals_grouped_pearson_on_caffeine_example():
    import statsmodels.api as sm

    dose = np.arange(0, 501, 50)
    a_grade = np.array([10, 13, 17, 15, 10, 5, 4, 3, 3, 1, 0])
    x = np.repeat(dose, 30)
    y = np.concatenate([[1] * a + [0] * (30 - a) for a in a_grade])
    fit = sm.GLM(y, sm.add_constant(x), family=sm.families.Binomial()).fit()
    grouped = sm.GLM(
        np.c_[a_grade, 30 - a_grade], sm.add_constant(dose), family=sm.families.Binomial()
    ).fit()
    hl = hosmer_lemeshow(y, fit.predict(), groups=x)
    assert hl.statistic == pytest.approx(grouped.pearson_chi2, rel=1e-8)
    assert hl.df == 9
    deciles = hosmer_lemeshow(y, fit.predict())  # default: 10 groups by deciles of risk
    # 11 tied dose levels: ties stay together, so the lowest-risk decile holds the two
    # highest doses (risk falls with dose)
    assert deciles.df == 8 and sorted(deciles.table["n"]) == [30] * 9 + [60]
    merged = np.where(x >= 450, 450, x)
    assert deciles.statistic == pytest.approx(
        hosmer_lemeshow(y, fit.predict(), groups=merged).statistic
    )


def test_hosmer_lemeshow_hand_computed():
    # two groups: p = 0.2 (n = 10, 4 events) and p = 0.6 (n = 10, 5 events)
    # H = (4 - 2)^2 / (10*0.2*0.8) + (5 - 6)^2 / (10*0.6*0.4) = 2.5 + 0.41667
    y = np.r_[np.ones(4), np.zeros(6), np.ones(5), np.zeros(5)]
    p = np.r_[np.full(10, 0.2), np.full(10, 0.6)]
    hl = hosmer_lemeshow(y, p, g=2)
    assert hl.statistic == pytest.approx(2.5 + 1 / 2.4)


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = rng.integers(0, 12, 300) / 11.0 + 0.3 * y  # many ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
