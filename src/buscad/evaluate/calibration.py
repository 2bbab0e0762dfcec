"""Calibration of predicted probabilities: reliability curve, Brier score,
calibration slope and intercept, Hosmer–Lemeshow test.

Predicted values must be probabilities in [0, 1].
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

_EPS = 1e-6


def _check_prob(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(int).ravel()
    p = np.asarray(p, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{len(p)} predictions for {len(y)} labels")
    if np.isnan(p).any():
        raise ValueError(f"{int(np.isnan(p).sum())} NaN prediction(s)")
    if p.min() < 0 or p.max() > 1:
        raise ValueError("predictions are not probabilities (outside [0, 1])")
    return y, p


def _rank_groups(p: np.ndarray, g: int) -> np.ndarray:
    """Group index ``floor(r g / N)`` from the rank ``r`` (0-based, ties share the lowest
    rank), so tied predictions always fall in the same group and the grouping does not
    depend on row order."""
    r = stats.rankdata(p, method="min") - 1
    return (r * g // len(p)).astype(int)


def brier_score(y: np.ndarray, p: np.ndarray) -> float:
    """Brier score ``BS = 1/N sum_i (p_i - y_i)^2`` (0 is perfect).

    Computed by ``sklearn.metrics.brier_score_loss`` (positive class 1) after
    buscad's checks (same length, no NaN, inside [0, 1]).
    """
    from sklearn.metrics import brier_score_loss

    y, p = _check_prob(y, p)
    return float(brier_score_loss(y, p, pos_label=1))


def reliability_curve(
    y: np.ndarray, p: np.ndarray, n_bins: int = 10, strategy: str = "quantile"
) -> pd.DataFrame:
    """Observed event rate against mean predicted probability per bin.

    ``strategy='quantile'`` makes bins of (nearly) equal size by rank;
    ``'uniform'`` uses equal-width bins on [0, 1]. Returns one row per non-empty
    bin: ``bin, n, mean_predicted, observed, lo, hi`` where ``observed`` is the
    event fraction with its Wilson 95% interval ``lo``–``hi``.
    """
    from buscad.evaluate.metrics import wilson_ci

    y, p = _check_prob(y, p)
    if strategy == "quantile":
        groups = _rank_groups(p, n_bins)
    elif strategy == "uniform":
        groups = np.minimum((p * n_bins).astype(int), n_bins - 1)
    else:
        raise ValueError(f"unknown strategy {strategy!r}; use 'quantile' or 'uniform'")
    rows = []
    for g in np.unique(groups):
        m = groups == g
        k, n = int(y[m].sum()), int(m.sum())
        lo, hi = wilson_ci(k, n)
        rows.append(
            {
                "bin": int(g),
                "n": n,
                "mean_predicted": float(p[m].mean()),
                "observed": k / n,
                "lo": lo,
                "hi": hi,
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class CalibrationFit:
    """Logistic recalibration: slope and intercept (calibration-in-the-large)."""

    slope: float
    intercept: float
    slope_lo: float
    slope_hi: float
    intercept_lo: float
    intercept_hi: float

    def as_dict(self) -> dict:
        """Plain dict of the fields."""
        return asdict(self)


def calibration_slope_intercept(y: np.ndarray, p: np.ndarray) -> CalibrationFit:
    """Calibration slope and intercept (Cox, 1958; Van Calster et al., 2019).

    With ``L = logit(p)`` (p clipped to [1e-6, 1 - 1e-6]):
    slope ``b`` from the logistic model ``logit P(y=1) = a + b L``;
    intercept (calibration-in-the-large) ``a'`` from
    ``logit P(y=1) = a' + offset(L)``. Ideal: slope 1, intercept 0. 95%
    Wald intervals. NaN where the fit fails (e.g. separation).
    """
    import statsmodels.api as sm

    y, p = _check_prob(y, p)
    lp = np.log(np.clip(p, _EPS, 1 - _EPS) / (1 - np.clip(p, _EPS, 1 - _EPS)))
    nan = float("nan")
    f1 = _glm_fit(lambda: sm.GLM(y, sm.add_constant(lp), family=sm.families.Binomial()))
    f2 = _glm_fit(lambda: sm.GLM(y, np.ones((len(y), 1)), family=sm.families.Binomial(), offset=lp))
    slope, s_lo, s_hi = (nan, nan, nan) if f1 is None else _coef(f1, 1)
    icpt, i_lo, i_hi = (nan, nan, nan) if f2 is None else _coef(f2, 0)
    return CalibrationFit(slope, icpt, s_lo, s_hi, i_lo, i_hi)


def _glm_fit(make: Callable[[], Any]) -> Any | None:
    """Fit a statsmodels GLM; None when it is not estimable (perfect separation, singular).

    statsmodels warns rather than fails on perfect separation and on a rank-deficient
    design, and its IRLS overflows ``exp`` when the coefficients diverge
    (quasi-separation); the coefficient is then not identified, so each of these is
    turned into the documented NaN instead of leaking a warning.
    """
    from statsmodels.tools.sm_exceptions import PerfectSeparationWarning, SingularMatrixWarning

    try:
        with warnings.catch_warnings(), np.errstate(over="raise"):
            warnings.simplefilter("error", PerfectSeparationWarning)
            warnings.simplefilter("error", SingularMatrixWarning)
            return make().fit()
    except Exception:
        return None


def _coef(fit: Any, k: int) -> tuple[float, float, float]:
    """Coefficient ``k`` and its 95% Wald interval; NaN when the fit has no such
    coefficient (a constant score: ``add_constant`` adds no column)."""
    try:
        lo, hi = (float(v) for v in fit.conf_int()[k])
        return float(fit.params[k]), lo, hi
    except Exception:
        return (float("nan"),) * 3


@dataclass(frozen=True)
class HosmerLemeshow:
    """Hosmer–Lemeshow goodness-of-fit test."""

    statistic: float
    df: int
    p: float
    table: pd.DataFrame


def hosmer_lemeshow(
    y: np.ndarray, p: np.ndarray, g: int = 10, groups: np.ndarray | None = None
) -> HosmerLemeshow:
    """Hosmer–Lemeshow test (Hosmer & Lemeshow, 1980; *Applied Logistic Regression*).

    Cases are ranked by predicted risk and split into ``g`` groups of (nearly)
    equal size, the deciles of risk for ``g = 10`` (tied risks stay in one group,
    so there may be fewer groups; or give ``groups`` labels).
    In group ``j`` with ``n_j`` cases, ``O_j`` observed events and
    ``E_j = sum p_i`` expected events (``pbar_j = E_j / n_j``):

    ``H = sum_j (O_j - E_j)^2 / (n_j pbar_j (1 - pbar_j))``,

    the Pearson statistic of the 2 x g table of observed and expected events
    and non-events. ``H`` is referred to chi-square with ``g - 2`` df.
    """
    y, p = _check_prob(y, p)
    if groups is None:
        groups = _rank_groups(p, g)
    groups = np.asarray(groups)
    rows = []
    for lab in pd.unique(groups):
        m = groups == lab
        n = int(m.sum())
        e = float(p[m].sum())
        rows.append({"group": lab, "n": n, "observed": int(y[m].sum()), "expected": e})
    tab = pd.DataFrame(rows)
    pbar = tab["expected"] / tab["n"]
    var = tab["n"] * pbar * (1 - pbar)
    ok = var > 0
    h = float((((tab["observed"] - tab["expected"]) ** 2)[ok] / var[ok]).sum())
    df = len(tab) - 2
    pval = float(stats.chi2.sf(h, df)) if df > 0 else float("nan")
    return HosmerLemeshow(h, df, pval, tab)
