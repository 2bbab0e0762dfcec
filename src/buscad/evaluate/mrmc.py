"""Multi-reader multi-case analysis: Obuchowski-Rockette with jackknife or DeLong covariance (Hillis' denominator degrees of freedom)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from buscad.evaluate.delong import delong_components


# ------------------------------------------------------- MRMC: covariances
def _aucs_and_components(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, list, list]:
    aucs, v10s, v01s = [], [], []
    for s in scores:
        a, v10, v01 = delong_components(y, s)
        aucs.append(a)
        v10s.append(v10)
        v01s.append(v01)
    return np.asarray(aucs), v10s, v01s


def jackknife_auc_cov(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of ``k`` score vectors on the same cases and their jackknife covariance.

    Leaving out case ``l`` gives ``AUC_(l)``; with ``c`` cases,
    ``Cov(AUC_a, AUC_b) = (c - 1)/c sum_l (AUC_a(l) - mean_a)(AUC_b(l) - mean_b)``
    where ``mean_a`` is the mean of the leave-one-out AUCs. The leave-one-out
    AUCs come from DeLong's components: removing positive ``i`` gives
    ``(m AUC - V10_i)/(m - 1)``, removing negative ``j`` gives
    ``(n AUC - V01_j)/(n - 1)``.

    Parameters
    ----------
    y : array, shape (c,)
        1 = positive.
    scores : array, shape (k, c)

    Returns
    -------
    aucs : array, shape (k,)
    cov : array, shape (k, k)
    """
    y = np.asarray(y).astype(int)
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    m, n = int(y.sum()), int((1 - y).sum())
    if m < 2 or n < 2:
        raise ValueError("jackknife covariance needs at least 2 positive and 2 negative cases")
    aucs, v10s, v01s = _aucs_and_components(y, scores)
    c = len(y)
    loo = np.empty((len(scores), c))
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    for k in range(len(scores)):
        loo[k, pos] = (m * aucs[k] - v10s[k]) / (m - 1)
        loo[k, neg] = (n * aucs[k] - v01s[k]) / (n - 1)
    dev = loo - loo.mean(axis=1, keepdims=True)
    return aucs, (c - 1) / c * dev @ dev.T


def delong_auc_cov(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of ``k`` score vectors and DeLong's covariance matrix.

    ``Cov(AUC_a, AUC_b) = Cov(V10_a, V10_b)/m + Cov(V01_a, V01_b)/n`` with
    sample covariances (ddof = 1) of the structural components (DeLong et al., 1988).
    """
    y = np.asarray(y).astype(int)
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    aucs, v10s, v01s = _aucs_and_components(y, scores)
    m, n = len(v10s[0]), len(v01s[0])
    if m < 2 or n < 2:
        raise ValueError("DeLong covariance needs at least 2 positive and 2 negative cases")
    cov = (
        np.atleast_2d(np.cov(np.vstack(v10s), ddof=1)) / m
        + np.atleast_2d(np.cov(np.vstack(v01s), ddof=1)) / n
    )
    return aucs, cov


_COV_METHODS = {"jackknife": jackknife_auc_cov, "delong": delong_auc_cov}


# ----------------------------------------------------- MRMC: OR analysis
@dataclass
class ORResult:
    """Obuchowski–Rockette analysis, random readers and random cases (Hillis 2008).

    ``auc[i, j]`` is the AUC of treatment ``i`` and reader ``j``. See
    :func:`or_analysis` for the formulas.
    """

    treatments: list[str]
    readers: list[str]
    auc: np.ndarray
    cov_method: str
    n_cases: int
    n_pos: int
    n_neg: int
    var_error: float
    cov1: float
    cov2: float
    cov3: float
    ms_t: float
    ms_r: float
    ms_tr: float
    var_reader: float
    var_treatment_reader: float
    f: float
    df1: int
    df2: float
    p: float
    alpha: float
    differences: list[dict] = field(default_factory=list)
    treatment_cis: list[dict] = field(default_factory=list)

    @property
    def treatment_means(self) -> np.ndarray:
        """Reader-averaged AUC of each treatment."""
        return self.auc.mean(axis=1)

    def as_dict(self) -> dict:
        """JSON-ready dict."""
        d = asdict(self)
        d["auc"] = self.auc.tolist()
        d["treatment_means"] = self.treatment_means.tolist()
        return d


def or_analysis(
    y: np.ndarray,
    scores: np.ndarray,
    cov: str = "jackknife",
    alpha: float = 0.05,
    treatments: Sequence[str] | None = None,
    readers: Sequence[str] | None = None,
) -> ORResult:
    """Obuchowski–Rockette MRMC test of equal AUCs with Hillis's (2008) degrees of freedom.

    Model: ``AUC_ij = mu + tau_i + R_j + (tau R)_ij + e_ij`` for ``t``
    treatments and ``r`` readers on the same ``c`` cases. The error covariance
    matrix of the ``t r`` AUCs is estimated by the jackknife or DeLong's method
    (:func:`jackknife_auc_cov`, :func:`delong_auc_cov`) and averaged into
    ``Var`` (diagonal), ``Cov1`` (same reader, different treatments), ``Cov2``
    (different readers, same treatment) and ``Cov3`` (different readers and
    treatments).

    Mean squares: ``MS(T) = r/(t-1) sum_i (m_i. - m..)^2``,
    ``MS(R) = t/(r-1) sum_j (m_.j - m..)^2``,
    ``MS(TR) = 1/((t-1)(r-1)) sum_ij (AUC_ij - m_i. - m_.j + m..)^2``.

    Test: ``F = MS(T) / [MS(TR) + r max(Cov2 - Cov3, 0)]`` with ``t - 1`` and
    ``ddf_H = [MS(TR) + r max(Cov2 - Cov3, 0)]^2 / {MS(TR)^2 / ((t-1)(r-1))}``
    degrees of freedom (Hillis 2008).

    Each pairwise difference ``m_i. - m_k.`` has standard error
    ``sqrt(2/r [MS(TR) + r max(Cov2 - Cov3, 0)])`` and a ``t(ddf_H)``
    interval. Each treatment alone: ``SE_i = sqrt([MS(R)_i + r max(Cov2_i, 0)]/r)``
    with ``df_i = [MS(R)_i + r max(Cov2_i, 0)]^2 / {MS(R)_i^2/(r-1)}``, where
    ``MS(R)_i`` and ``Cov2_i`` use treatment ``i`` only; this interval is
    clipped to [0, 1].

    Variance components: ``sigma2_TR = MS(TR) - Var + Cov1 + Cov2 - Cov3`` and
    ``sigma2_R = (MS(R) - MS(TR))/t - Cov1 + Cov3``.

    Parameters
    ----------
    y : array, shape (c,)
        1 = positive (malignant).
    scores : array, shape (t, r, c)
        Ratings of each treatment and reader on every case (higher = more
        likely positive).
    cov : {"jackknife", "delong"}
    alpha : float
        ``1 - alpha`` confidence intervals.

    Raises
    ------
    ValueError
        Fewer than 2 treatments or 2 readers, wrong shapes, or one class only.
    """
    sc = np.asarray(scores, dtype=float)
    y = np.asarray(y).astype(int)
    if sc.ndim != 3 or sc.shape[2] != len(y):
        raise ValueError(f"scores must have shape (treatments, readers, {len(y)}), got {sc.shape}")
    t, r, c = sc.shape
    if t < 2 or r < 2:
        raise ValueError(f"OR analysis needs >= 2 treatments and >= 2 readers (got {t} and {r})")
    if cov not in _COV_METHODS:
        raise ValueError(f"unknown covariance method {cov!r}; use {' or '.join(_COV_METHODS)}")
    aucs, cmat = _COV_METHODS[cov](y, sc.reshape(t * r, c))
    theta = aucs.reshape(t, r)
    ti = np.repeat(np.arange(t), r)
    rj = np.tile(np.arange(r), t)
    same_t = ti[:, None] == ti[None, :]
    same_r = rj[:, None] == rj[None, :]
    var_e = float(np.mean(np.diag(cmat)))
    cov1 = float(cmat[~same_t & same_r].mean())
    cov2 = float(cmat[same_t & ~same_r].mean())
    cov3 = float(cmat[~same_t & ~same_r].mean())
    mi, mj, mm = theta.mean(axis=1), theta.mean(axis=0), theta.mean()
    ms_t = float(r * np.sum((mi - mm) ** 2) / (t - 1))
    ms_r = float(t * np.sum((mj - mm) ** 2) / (r - 1))
    resid = theta - mi[:, None] - mj[None, :] + mm
    ms_tr = float(np.sum(resid**2) / ((t - 1) * (r - 1)))
    den = ms_tr + r * max(cov2 - cov3, 0.0)
    f_stat = ms_t / den if den > 0 else (math.inf if ms_t > 0 else math.nan)
    df2 = den**2 / (ms_tr**2 / ((t - 1) * (r - 1))) if ms_tr > 0 else math.inf
    p = float(stats.f.sf(f_stat, t - 1, df2)) if math.isfinite(f_stat) else 0.0
    names_t = [str(v) for v in (treatments or range(1, t + 1))]
    names_r = [str(v) for v in (readers or range(1, r + 1))]
    se_diff = math.sqrt(2.0 / r * den)
    q = float(stats.t.ppf(1 - alpha / 2, df2))
    diffs = []
    for a in range(t):
        for b in range(a + 1, t):
            d = float(mi[a] - mi[b])
            tt = d / se_diff if se_diff > 0 else math.copysign(math.inf, d) if d else 0.0
            diffs.append(
                {
                    "comparison": f"{names_t[a]} - {names_t[b]}",
                    "estimate": d,
                    "se": se_diff,
                    "df": df2,
                    "t": tt,
                    "p": float(2 * stats.t.sf(abs(tt), df2)),
                    "lo": d - q * se_diff,
                    "hi": d + q * se_diff,
                }
            )
    cis = []
    for a in range(t):
        block = cmat[np.ix_(ti == a, ti == a)]
        cov2_a = float(block[~np.eye(r, dtype=bool)].mean())
        ms_r_a = float(np.sum((theta[a] - mi[a]) ** 2) / (r - 1))
        den_a = ms_r_a + r * max(cov2_a, 0.0)
        se_a = math.sqrt(den_a / r)
        df_a = den_a**2 / (ms_r_a**2 / (r - 1)) if ms_r_a > 0 else math.inf
        qa = float(stats.t.ppf(1 - alpha / 2, df_a))
        cis.append(
            {
                "treatment": names_t[a],
                "estimate": float(mi[a]),
                "ms_r": ms_r_a,
                "cov2": cov2_a,
                "se": se_a,
                "df": df_a,
                "lo": max(0.0, float(mi[a] - qa * se_a)),
                "hi": min(1.0, float(mi[a] + qa * se_a)),
            }
        )
    return ORResult(
        treatments=names_t,
        readers=names_r,
        auc=theta,
        cov_method=cov,
        n_cases=c,
        n_pos=int(y.sum()),
        n_neg=int((1 - y).sum()),
        var_error=var_e,
        cov1=cov1,
        cov2=cov2,
        cov3=cov3,
        ms_t=ms_t,
        ms_r=ms_r,
        ms_tr=ms_tr,
        var_reader=(ms_r - ms_tr) / t - cov1 + cov3,
        var_treatment_reader=ms_tr - var_e + cov1 + cov2 - cov3,
        f=float(f_stat),
        df1=t - 1,
        df2=float(df2),
        p=p,
        alpha=alpha,
        differences=diffs,
        treatment_cis=cis,
    )


def or_analysis_long(
    df: pd.DataFrame,
    treatment: str = "treatment",
    reader: str = "reader",
    case: str = "case",
    truth: str = "truth",
    rating: str = "rating",
    **kwargs: object,
) -> ORResult:
    """:func:`or_analysis` on a long table (one row per treatment, reader and case).

    The design must be fully crossed: every reader rates every case under every
    treatment.
    """
    wide = df.pivot_table(index=case, columns=[treatment, reader], values=rating, aggfunc="first")
    if wide.isna().any().any():
        raise ValueError("the design is not fully crossed: some (treatment, reader, case) missing")
    truth_by_case = df.groupby(case)[truth].first().loc[wide.index].to_numpy()
    ts = list(wide.columns.get_level_values(0).unique())
    rs = list(wide.columns.get_level_values(1).unique())
    sc = np.stack([[wide[(tt, rr)].to_numpy() for rr in rs] for tt in ts])
    return or_analysis(truth_by_case, sc, treatments=ts, readers=rs, **kwargs)  # type: ignore[arg-type]
