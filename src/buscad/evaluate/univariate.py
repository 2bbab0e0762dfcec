"""buscad's one univariate-test policy: the clinical selector and Table 1 both call it.

The rule (the same for every caller, so one variable gets one P value):

* **Continuous** variable, ``k`` groups of observed (non-missing) values; empty
  groups are left out. When every group has ≥ 3 values, is not constant and
  Shapiro–Wilk does not reject normality (P > :data:`NORMALITY_ALPHA`; groups
  larger than 5000 are taken as normal, where Shapiro–Wilk is not defined),
  Welch's t test ``t = (m1 - m0) / sqrt(s1²/n1 + s0²/n0)`` (k = 2) or one-way
  ANOVA (k > 2); otherwise the two-sided Mann–Whitney U test (k = 2) or
  Kruskal–Wallis (k > 2).
* **Categorical** variable, a levels × groups count table (empty rows and
  columns dropped): Pearson's chi-square ``X² = Σ (O - E)² / E`` with
  ``E = row total × column total / N`` and **no** continuity (Yates)
  correction, when every expected count ``E`` is at least :data:`MIN_EXPECTED`;
  Fisher's exact test for a 2 × 2 table with an expected count below 5; larger
  tables with low expected counts keep the chi-square P, flagged
  ``"chi-square (low counts)"``.
* Fewer than two groups or levels, or a constant continuous variable: no test,
  ``("—", nan)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

#: Shapiro–Wilk P above which a group is treated as normal.
NORMALITY_ALPHA = 0.05
#: Smallest expected count for which the chi-square test is used (else Fisher for 2 × 2).
MIN_EXPECTED = 5.0
#: Test name returned when no test is defined.
NO_TEST = "—"


def _is_normal(groups: Sequence[np.ndarray]) -> bool:
    for g in groups:
        if len(g) < 3 or np.ptp(g) == 0:
            return False
        if len(g) <= 5000 and stats.shapiro(g).pvalue <= NORMALITY_ALPHA:
            return False
    return True


def compare_continuous(groups: Sequence[Any]) -> tuple[str, float]:
    """Test of a continuous variable across groups, chosen by normality (module rule).

    Parameters
    ----------
    groups : sequence of array-like
        The values of each group; NaN is left out.

    Returns
    -------
    tuple of (str, float)
        ``(test name, P)``: ``"Welch t"``, ``"ANOVA"``, ``"Mann–Whitney U"`` or
        ``"Kruskal–Wallis"``; ``("—", nan)`` when untestable.
    """
    arrs = [np.asarray(g, float) for g in groups]
    arrs = [a[~np.isnan(a)] for a in arrs]
    arrs = [a for a in arrs if len(a)]
    if len(arrs) < 2 or np.ptp(np.concatenate(arrs)) == 0:
        return NO_TEST, float("nan")
    if _is_normal(arrs):
        if len(arrs) == 2:
            return "Welch t", float(stats.ttest_ind(*arrs, equal_var=False).pvalue)
        return "ANOVA", float(stats.f_oneway(*arrs).pvalue)
    if len(arrs) == 2:
        return "Mann–Whitney U", float(stats.mannwhitneyu(*arrs, alternative="two-sided").pvalue)
    return "Kruskal–Wallis", float(stats.kruskal(*arrs).pvalue)


def compare_categorical(table: pd.DataFrame | np.ndarray) -> tuple[str, float]:
    """Test of independence of a levels × groups count table (module rule).

    Parameters
    ----------
    table : DataFrame or 2-D array
        Counts, one row per level and one column per group.

    Returns
    -------
    tuple of (str, float)
        ``(test name, P)``: ``"chi-square"`` (Pearson, no continuity correction),
        ``"Fisher exact"`` or ``"chi-square (low counts)"``; ``("—", nan)``
        when untestable.
    """
    t = np.asarray(table, dtype=float)
    t = t[t.sum(axis=1) > 0][:, t.sum(axis=0) > 0]
    if t.shape[0] < 2 or t.shape[1] < 2:
        return NO_TEST, float("nan")
    res = stats.chi2_contingency(t, correction=False)
    if res.expected_freq.min() >= MIN_EXPECTED:
        return "chi-square", float(res.pvalue)
    if t.shape == (2, 2):
        return "Fisher exact", float(stats.fisher_exact(t).pvalue)
    return "chi-square (low counts)", float(res.pvalue)


def univariate_test(x: pd.Series, groups: Any, kind: str) -> tuple[str, float]:
    """One variable against a grouping (e.g. the binary label), by the module rule.

    Parameters
    ----------
    x : pandas.Series
        The variable; missing values are left out.
    groups : array-like
        Group of each row (same length as ``x``).
    kind : {"numeric", "categorical"}
        Which half of the rule applies.

    Returns
    -------
    tuple of (str, float)
        ``(test name, P)`` from :func:`compare_continuous` or
        :func:`compare_categorical`.
    """
    if kind not in ("numeric", "categorical"):
        raise ValueError(f"kind must be 'numeric' or 'categorical', not {kind!r}")
    g = pd.Series(np.asarray(groups), index=x.index)
    ok = x.notna() & g.notna()
    xv, gv = x[ok], g[ok]
    levels = sorted(pd.unique(gv))
    if kind == "numeric":
        v = pd.Series(pd.to_numeric(xv, errors="coerce").to_numpy(float), index=xv.index)
        return compare_continuous([v[gv == lv].to_numpy() for lv in levels])
    return compare_categorical(pd.crosstab(xv.astype(str), gv))
