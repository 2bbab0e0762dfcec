"""The AUC and DeLong's tests: paired (two scores, the same cases) and unpaired (two cohorts).

AUC is the Mann-Whitney estimate ``P(X > Y) + 1/2 P(X = Y)`` computed with
mid-ranks (Sun & Xu's fast algorithm); its variance is DeLong's
``Var = S10/m + S01/n`` from the structural components. The paired test uses the
covariance of the two scores' components; the unpaired test (two independent
cohorts) uses a Welch t on the two DeLong variances. Each function states its
formula.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats


def _check(y: np.ndarray, s: np.ndarray, name: str = "score") -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(int).ravel()
    s = np.asarray(s, dtype=float).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{name}: {len(s)} scores for {len(y)} labels")
    if np.isnan(s).any():
        raise ValueError(f"{name}: {int(np.isnan(s).sum())} NaN score(s)")
    if not set(np.unique(y)) <= {0, 1}:
        raise ValueError(f"{name}: labels must be 0/1")
    if y.min() == y.max():
        raise ValueError(f"{name}: only one class present (need benign and malignant cases)")
    return y, s


def _midrank(x: np.ndarray) -> np.ndarray:
    """Mid-ranks (1-based, ties share their average rank)."""
    return stats.rankdata(x, method="average")


def delong_components(y: np.ndarray, s: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's structural components (fast mid-rank algorithm of Sun & Xu, 2014).

    With ``m`` positives ``X_i`` and ``n`` negatives ``Y_j`` and the kernel
    ``psi(X, Y) = 1 if X > Y, 1/2 if X = Y, 0 otherwise``:

    ``AUC = 1/(m n) sum_i sum_j psi(X_i, Y_j)``,
    ``V10_i = 1/n sum_j psi(X_i, Y_j)``, ``V01_j = 1/m sum_i psi(X_i, Y_j)``.

    Computed via mid-ranks: ``V10_i = (R_i - T_i) / n`` where ``R_i`` is the
    rank of ``X_i`` among all scores and ``T_i`` its rank among positives;
    ``V01_j = 1 - (R_j - T_j) / m`` likewise for negatives.

    Returns
    -------
    auc : float
    v10 : numpy.ndarray, shape (m,)
    v01 : numpy.ndarray, shape (n,)
    """
    y, s = _check(y, s)
    pos, neg = s[y == 1], s[y == 0]
    m, n = len(pos), len(neg)
    r_all = _midrank(np.concatenate([pos, neg]))
    r_pos = _midrank(pos)
    r_neg = _midrank(neg)
    v10 = (r_all[:m] - r_pos) / n
    v01 = 1.0 - (r_all[m:] - r_neg) / m
    auc = float(v10.mean())
    return auc, v10, v01


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve, ``P(X > Y) + 1/2 P(X = Y)`` (Mann–Whitney form)."""
    return delong_components(y, s)[0]


def delong_variance(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """AUC and its DeLong variance ``Var = S10/m + S01/n``.

    ``S10`` and ``S01`` are the sample variances (ddof = 1) of the structural
    components ``V10`` and ``V01`` (DeLong, DeLong & Clarke-Pearson, 1988).
    """
    auc, v10, v01 = delong_components(y, s)
    m, n = len(v10), len(v01)
    return auc, float(_component_var(v10) / m + _component_var(v01) / n)


def _component_var(v: np.ndarray) -> float:
    """Sample variance (ddof = 1) of one class's structural components; 0 for a single case.

    One case of a class carries no information on that class's spread, so its
    term of DeLong's variance is taken as 0 (as :func:`delong_variance` always did)
    rather than NaN with NumPy's degrees-of-freedom warning.
    """
    return float(np.var(v, ddof=1)) if len(v) > 1 else 0.0


def _component_cov(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """2x2 sample covariance (ddof = 1) of two scores' components; zeros for a single case."""
    return np.cov(np.vstack([a, b]), ddof=1) if len(a) > 1 else np.zeros((2, 2))


@dataclass(frozen=True)
class AUCResult:
    """An AUC with its confidence interval."""

    auc: float
    lo: float
    hi: float
    se: float
    n_pos: int
    n_neg: int
    method: str = "delong"

    def __str__(self) -> str:
        return f"{self.auc:.3f} [{self.lo:.3f}–{self.hi:.3f}]"

    def as_dict(self) -> dict:
        """Plain dict of the fields."""
        return asdict(self)


def auc_ci(
    y: np.ndarray,
    s: np.ndarray,
    alpha: float = 0.05,
    method: str = "delong",
    n_boot: int = 2000,
    seed: int = 0,
) -> AUCResult:
    """AUC with a ``1 - alpha`` confidence interval.

    ``delong`` (default): ``AUC ± z_{1-alpha/2} sqrt(Var_DeLong)``, clipped to
    [0, 1] (as R pROC's ``ci.auc(method="delong")``). ``bootstrap``: percentile
    interval of the AUC over ``n_boot`` stratified resamples (cases resampled with
    replacement within each class, as pROC's stratified bootstrap).
    """
    y, s = _check(y, s)
    m, n = int(y.sum()), int((1 - y).sum())
    if method == "delong":
        auc, var = delong_variance(y, s)
        se = float(np.sqrt(max(var, 0.0)))
        z = stats.norm.ppf(1 - alpha / 2)
        lo, hi = float(max(0.0, auc - z * se)), float(min(1.0, auc + z * se))
        return AUCResult(auc, lo, hi, se, m, n, "delong")
    if method == "bootstrap":
        auc = roc_auc(y, s)
        rng = np.random.default_rng(seed)
        pos, neg = s[y == 1], s[y == 0]
        boots = np.empty(n_boot)
        yb = np.r_[np.ones(m, int), np.zeros(n, int)]
        for b in range(n_boot):
            sb = np.r_[rng.choice(pos, m), rng.choice(neg, n)]
            boots[b] = roc_auc(yb, sb)
        lo, hi = np.percentile(boots, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        return AUCResult(auc, float(lo), float(hi), float(boots.std(ddof=1)), m, n, "bootstrap")
    raise ValueError(f"unknown CI method {method!r}; use 'delong' or 'bootstrap'")


@dataclass(frozen=True)
class DeLongTest:
    """Result of DeLong's test for two correlated AUCs."""

    auc1: float
    auc2: float
    diff: float
    se: float
    z: float
    p: float
    lo: float
    hi: float


def delong_test(y: np.ndarray, s1: np.ndarray, s2: np.ndarray, alpha: float = 0.05) -> DeLongTest:
    """Paired DeLong test of ``H0: AUC1 = AUC2`` for two scores on the same cases.

    ``z = (AUC1 - AUC2) / sqrt(Var1 + Var2 - 2 Cov12)`` where
    ``Cov12 = Cov(V10_1, V10_2)/m + Cov(V01_1, V01_2)/n``; two-sided
    ``p = 2 (1 - Phi(|z|))``; CI of the difference ``diff ± z_{1-alpha/2} se``.
    """
    y, s1 = _check(y, s1, "score 1")
    _, s2 = _check(y, s2, "score 2")
    a1, v10a, v01a = delong_components(y, s1)
    a2, v10b, v01b = delong_components(y, s2)
    m, n = len(v10a), len(v01a)
    cov = _component_cov(v10a, v10b) / m + _component_cov(v01a, v01b) / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = a1 - a2
    se = float(np.sqrt(max(var, 0.0)))
    if se == 0.0:
        z, p = (0.0, 1.0) if diff == 0 else (float(np.sign(diff) * np.inf), 0.0)
    else:
        z = diff / se
        p = float(2 * stats.norm.sf(abs(z)))
    q = stats.norm.ppf(1 - alpha / 2)
    return DeLongTest(a1, a2, diff, se, float(z), p, float(diff - q * se), float(diff + q * se))


@dataclass(frozen=True)
class UnpairedDeLongTest:
    """DeLong's test for two AUCs measured on different (independent) cases."""

    auc1: float
    auc2: float
    diff: float
    se: float
    d: float
    df: float
    p: float

    def as_dict(self) -> dict:
        """Plain dict of the fields."""
        return asdict(self)


def delong_unpaired_test(
    y1: np.ndarray, s1: np.ndarray, y2: np.ndarray, s2: np.ndarray
) -> UnpairedDeLongTest:
    """Test ``H0: AUC1 = AUC2`` for two ROC curves on independent cohorts.

    ``D = (AUC1 - AUC2) / sqrt(V1 + V2)`` with ``Vk`` the DeLong variance of
    each AUC; ``D`` is referred to Student's t with the Welch–Satterthwaite
    degrees of freedom ``df = (V1 + V2)^2 / (V1^2/(N1 - 1) + V2^2/(N2 - 1))``,
    ``Nk`` the number of cases of curve ``k`` (as pROC); two-sided
    ``p = 2 P(T_df > |D|)``.
    """
    a1, v10a, v01a = delong_components(y1, s1)
    a2, v10b, v01b = delong_components(y2, s2)
    var1 = _component_var(v10a) / len(v10a) + _component_var(v01a) / len(v01a)
    var2 = _component_var(v10b) / len(v10b) + _component_var(v01b) / len(v01b)
    n1, n2 = len(v10a) + len(v01a), len(v10b) + len(v01b)
    se = float(np.sqrt(var1 + var2))
    diff = a1 - a2
    if se == 0.0:
        return UnpairedDeLongTest(
            a1, a2, diff, 0.0, 0.0 if diff == 0 else np.inf, np.nan, 1.0 if diff == 0 else 0.0
        )
    d = diff / se
    df = (var1 + var2) ** 2 / (var1**2 / (n1 - 1) + var2**2 / (n2 - 1))
    p = float(2 * stats.t.sf(abs(d), df))
    return UnpairedDeLongTest(a1, a2, diff, se, float(d), float(df), p)


def delong_matrix(y: np.ndarray, scores: dict[str, np.ndarray]) -> pd.DataFrame:
    """Pairwise paired DeLong p values of all models on one cohort.

    A square DataFrame (models x models): cell ``[a, b]`` is the two-sided
    p of ``H0: AUC_a = AUC_b`` (:func:`delong_test`); the diagonal is 1.
    """
    names = list(scores)
    mat = pd.DataFrame(np.ones((len(names), len(names))), index=names, columns=names)
    for a, b in combinations(names, 2):
        t = delong_test(y, scores[a], scores[b])
        mat.loc[a, b] = mat.loc[b, a] = t.p
    return mat
