"""Comparisons of models: DeLong tests (paired and unpaired), McNemar, DeLong matrix.

References: DeLong, DeLong & Clarke-Pearson (1988) Biometrics 44:837; the
unpaired form follows R pROC's ``roc.test(paired = FALSE)`` (Robin et al. 2011,
BMC Bioinformatics 12:77); McNemar (1947) Psychometrika 12:153."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from buscad.evaluate.delong import delong_test


@dataclass(frozen=True)
class McNemarTest:
    """McNemar's test for paired binary decisions."""

    b: int
    c: int
    statistic: float
    p: float
    exact_p: float
    corrected: bool

    def as_dict(self) -> dict:
        """Plain dict of the fields."""
        return asdict(self)


def mcnemar_test(
    pred1: np.ndarray | None = None,
    pred2: np.ndarray | None = None,
    *,
    b: int | None = None,
    c: int | None = None,
    correct: bool = True,
) -> McNemarTest:
    """McNemar's test of marginal homogeneity for two paired binary decisions.

    Give the two decision vectors (same cases), or the discordant counts
    ``b`` (1st positive, 2nd negative) and ``c`` (1st negative, 2nd positive).
    ``X2 = (|b - c| - 1)^2 / (b + c)`` with Yates' continuity correction
    (``correct=True``, R ``mcnemar.test`` default) or ``(b - c)^2/(b + c)``,
    referred to chi-square with 1 df. ``exact_p`` is the two-sided exact
    binomial p, ``min(1, 2 P(Bin(b + c, 1/2) <= min(b, c)))``. No discordant
    pair gives ``X2 = 0, p = 1``. Computed by statsmodels'
    :func:`statsmodels.stats.contingency_tables.mcnemar`.
    """
    if b is None or c is None:
        if pred1 is None or pred2 is None:
            raise ValueError("mcnemar_test: give pred1 and pred2, or b and c")
        p1 = np.asarray(pred1).astype(bool).ravel()
        p2 = np.asarray(pred2).astype(bool).ravel()
        if p1.shape != p2.shape:
            raise ValueError(f"mcnemar_test: {len(p1)} vs {len(p2)} decisions (not paired)")
        b, c = int(np.sum(p1 & ~p2)), int(np.sum(~p1 & p2))
    from statsmodels.stats.contingency_tables import mcnemar

    if b + c == 0:
        return McNemarTest(int(b), int(c), 0.0, 1.0, 1.0, correct)
    table = np.array([[0, b], [c, 0]])
    asym = mcnemar(table, exact=False, correction=correct)
    exact = mcnemar(table, exact=True)
    return McNemarTest(
        int(b), int(c), float(asym.statistic), float(asym.pvalue), float(exact.pvalue), correct
    )


def pairwise_comparisons(
    y: np.ndarray,
    scores: dict[str, np.ndarray],
    thresholds: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Long table of every model pair on one cohort: DeLong and (with thresholds) McNemar.

    Columns: ``model_a, model_b, auc_a, auc_b, diff, diff_lo, diff_hi, z, p_delong``
    and, when ``thresholds`` maps each model to its threshold,
    ``b, c, mcnemar_chi2, p_mcnemar, p_mcnemar_exact`` for the calls
    ``score >= threshold``.
    """
    rows = []
    for a, b in combinations(list(scores), 2):
        t = delong_test(y, scores[a], scores[b])
        row = {
            "model_a": a,
            "model_b": b,
            "auc_a": t.auc1,
            "auc_b": t.auc2,
            "diff": t.diff,
            "diff_lo": float(t.lo),
            "diff_hi": float(t.hi),
            "z": t.z,
            "p_delong": t.p,
        }
        if thresholds is not None:
            m = mcnemar_test(
                np.asarray(scores[a]) >= thresholds[a], np.asarray(scores[b]) >= thresholds[b]
            )
            row.update(
                b=m.b, c=m.c, mcnemar_chi2=m.statistic, p_mcnemar=m.p, p_mcnemar_exact=m.exact_p
            )
        rows.append(row)
    return pd.DataFrame(rows)
