"""Property tests (hypothesis) and unit tests of the evaluation statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from buscad.evaluate import (
    brier_score,
    calibration_slope_intercept,
    cohort_metrics,
    decision_curve,
    delong_variance,
    net_benefit,
    reliability_curve,
    roc_auc,
    select_threshold,
    sensitivity_threshold,
    specificity_threshold,
    wilson_ci,
)
from buscad.evaluate.tables import compare_categorical, compare_continuous, table1
from buscad.utils import markdown_table as to_markdown


@st.composite
def labelled_scores(draw, min_size=4, max_size=60):
    n = draw(st.integers(min_size, max_size))
    y = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    y[0], y[1] = 0, 1  # both classes present
    s = draw(st.lists(st.integers(0, 20), min_size=n, max_size=n))  # ties likely
    return np.array(y), np.array(s, float) / 20


FAST = settings(max_examples=40, deadline=None)


@FAST
@given(labelled_scores(), st.randoms(use_true_random=False))
def test_metrics_invariant_to_row_order(data, rnd):
    y, s = data
    perm = np.arange(len(y))
    rnd.shuffle(perm)
    a = cohort_metrics(y, s, 0.5)
    b = cohort_metrics(y[perm], s[perm], 0.5)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], nan_ok=True, abs=1e-12), k


@FAST
@given(labelled_scores())
def test_auc_of_complement_is_complement(data):
    y, s = data
    assert roc_auc(y, 1 - s) == pytest.approx(1 - roc_auc(y, s), abs=1e-12)


@FAST
@given(labelled_scores(min_size=6), st.integers(2, 4))
def test_delong_variance_nonnegative_and_shrinks_with_n(data, k):
    y, s = data
    _, v = delong_variance(y, s)
    assert v >= 0
    _, vk = delong_variance(np.tile(y, k), np.tile(s, k))  # same distribution, k times the cases
    assert vk <= v + 1e-15
    if v > 0:
        assert vk < v


@FAST
@given(st.integers(0, 200), st.integers(1, 200))
def test_wilson_contains_estimate(k, n):
    k = min(k, n)
    lo, hi = wilson_ci(k, n)
    assert 0 <= lo <= k / n <= hi <= 1


def test_threshold_rules():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    s = rng.normal(y * 1.2, 1)
    t = sensitivity_threshold(y, s, 0.95)
    assert np.mean(s[y == 1] >= t) >= 0.95
    # the highest such threshold: the next distinct score above misses the target
    above = np.unique(s[s > t])
    assert np.mean(s[y == 1] >= above[0]) < 0.95
    t = specificity_threshold(y, s, 0.9)
    assert np.mean(s[y == 0] < t) >= 0.9
    assert select_threshold(y, s, "fixed:0.3") == 0.3
    assert select_threshold(y, s, "sens:0.95") == sensitivity_threshold(y, s, 0.95)
    with pytest.raises(ValueError, match="unknown threshold rule 'best'"):
        select_threshold(y, s, "best")
    with pytest.raises(ValueError, match="not a number"):
        select_threshold(y, s, "sens:high")


def test_cohort_metrics_values_and_wilson():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.1, 0.1, 0.2, 0.3, 0.05])
    m = cohort_metrics(y, s, 0.5)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (3, 1, 1, 5)
    assert m["sensitivity"] == 0.75 and (m["sensitivity_lo"], m["sensitivity_hi"]) == wilson_ci(
        3, 4
    )
    assert m["ppv"] == 0.75 and m["npv"] == 5 / 6 and m["f1"] == pytest.approx(0.75)
    one = cohort_metrics(np.zeros(5, int), s[:5], 0.5)  # one class: AUC undefined, rest defined
    assert np.isnan(one["auc"]) and np.isnan(one["sensitivity"]) and one["specificity"] == 0.2


def test_calibration_of_calibrated_and_overconfident_predictions():
    rng = np.random.default_rng(0)
    lp = rng.normal(0, 1.5, 4000)
    p = 1 / (1 + np.exp(-lp))
    y = (rng.random(4000) < p).astype(int)
    fit = calibration_slope_intercept(y, p)
    assert fit.slope_lo < 1 < fit.slope_hi and fit.intercept_lo < 0 < fit.intercept_hi
    over = 1 / (1 + np.exp(-2 * lp))  # overconfident: slope about 1/2
    assert calibration_slope_intercept(y, over).slope == pytest.approx(0.5, abs=0.08)
    assert brier_score([1, 0], [0.8, 0.4]) == pytest.approx((0.04 + 0.16) / 2)
    rc = reliability_curve(y, p, n_bins=10)
    assert len(rc) == 10 and rc["n"].sum() == 4000
    assert np.all(np.abs(rc["observed"] - rc["mean_predicted"]) < 0.08)
    with pytest.raises(ValueError, match="outside"):
        brier_score([1, 0], [1.2, 0.1])


def test_decision_curve_hand_computed():
    y = np.array([1, 1, 0, 0, 0])
    p = np.array([0.9, 0.4, 0.6, 0.1, 0.2])
    # pt = 0.5: TP = 1, FP = 1 -> NB = 1/5 - 1/5 * 1 = 0
    assert net_benefit(y, p, 0.5) == pytest.approx(0.0)
    # pt = 0.3: TP = 2, FP = 1 -> 2/5 - 1/5 * 3/7
    assert net_benefit(y, p, 0.3) == pytest.approx(0.4 - 0.2 * 3 / 7)
    dc = decision_curve(y, {"m": p}, thresholds=np.array([0.3]))
    all_ = dc.loc[dc.strategy == "treat all", "net_benefit"].item()
    assert all_ == pytest.approx(0.4 - 0.6 * 3 / 7)
    assert dc.loc[dc.strategy == "treat none", "net_benefit"].item() == 0


def test_table1_test_selection():
    rng = np.random.default_rng(3)
    a, b = rng.normal(50, 10, 80), rng.normal(53, 10, 70)
    test, p = compare_continuous([a, b])
    assert test == "Welch t" and p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    ea, eb = rng.exponential(1, 80), rng.exponential(1.5, 70)
    test, p = compare_continuous([ea, eb])
    assert test == "Mann–Whitney U" and p == pytest.approx(stats.mannwhitneyu(ea, eb).pvalue)
    small = pd.DataFrame([[3, 9], [1, 12]])
    test, p = compare_categorical(small)
    assert test == "Fisher exact" and p == pytest.approx(stats.fisher_exact(small).pvalue)
    big = pd.DataFrame([[30, 40], [25, 45]])
    test, p = compare_categorical(big)
    assert test == "chi-square"
    assert p == pytest.approx(stats.chi2_contingency(big, correction=False).pvalue)
    df = pd.DataFrame(
        {"g": ["A"] * 80 + ["B"] * 70, "age": np.r_[a, b], "sex": rng.choice(["F", "M"], 150)}
    )
    t1 = table1(df, "g", ["age", "sex"])
    assert list(t1.columns) == ["Characteristic", "A (n=80)", "B (n=70)", "P value", "Test"]
    assert t1.iloc[0, 0] == "age, mean ± SD" and t1.iloc[0, 4] == "Welch t"
    assert "| Characteristic |" in to_markdown(t1)


def test_roc_points_and_specificity_threshold_against_brute_force():
    from buscad.evaluate.plots import roc_points

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 200)
    s = rng.integers(0, 15, 200).astype(float)
    fpr, tpr = roc_points(y, s)
    for t, f, p in zip(np.unique(s)[::-1], fpr[1:], tpr[1:], strict=True):
        assert f == np.mean(s[y == 0] >= t) and p == np.mean(s[y == 1] >= t)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(y, s))  # trapezoid = Mann–Whitney AUC
    t = specificity_threshold(y, s, 0.8)
    lower = np.unique(s)[np.unique(s) < t]
    assert np.mean(s[y == 0] < t) >= 0.8
    assert not len(lower) or np.mean(s[y == 0] < lower[-1]) < 0.8


def test_evaluation_invariant_to_row_order():
    from buscad.evaluate import evaluate_predictions

    rng = np.random.default_rng(7)
    n = 90
    y = rng.integers(0, 2, n)
    df = pd.DataFrame(
        {
            "case_id": np.arange(n),
            "label": y,
            "cohort": np.where(np.arange(n) < 50, "train", "test"),
            "m1": 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1, n)))),
            "m2": rng.random(n),
        }
    )
    a = evaluate_predictions(df, ["m1", "m2"])
    b = evaluate_predictions(df.sample(frac=1, random_state=3), ["m1", "m2"])
    key = ["cohort", "model"]
    ma = a.metrics.sort_values(key).reset_index(drop=True)
    mb = b.metrics.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(ma, mb, check_exact=False, rtol=1e-10)
    assert a.thresholds == b.thresholds


@FAST
@given(labelled_scores(min_size=20), st.randoms(use_true_random=False))
def test_hosmer_lemeshow_invariant_to_row_order_with_ties(data, rnd):
    from buscad.evaluate import hosmer_lemeshow

    y, s = data
    perm = np.arange(len(y))
    rnd.shuffle(perm)
    a, b = hosmer_lemeshow(y, s), hosmer_lemeshow(y[perm], s[perm])
    assert a.statistic == pytest.approx(b.statistic, abs=1e-9) and a.df == b.df


def test_figures_leave_the_matplotlib_backend_and_rcparams_alone(tmp_path):
    import matplotlib

    from buscad.evaluate.plots import plot_roc, roc_points, save_figure

    before_backend = matplotlib.rcParams["backend"]
    before_font = matplotlib.rcParams["font.size"]
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    fig = plot_roc({"m": (y, s)}, {"m": "0.89"}, "t")
    paths = save_figure(fig, tmp_path / "roc")
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.stat().st_size for p in paths)
    # buscad's style, applied locally: titles are "large" = 1.2 x font.size 9
    assert fig.axes[0].title.get_fontsize() == pytest.approx(1.2 * 9)
    assert matplotlib.rcParams["backend"] == before_backend
    assert matplotlib.rcParams["font.size"] == before_font
    fpr, tpr = roc_points(y, s)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
