"""Feature selection: named subsets, ICC(3,1) reproducibility filter, Spearman redundancy filter, LASSO logistic selector."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_selection import SelectorMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.validation import (
    check_is_fitted,
    validate_data,
)

from buscad.classical.base import VIEW_SEP, _binary_y, _codes, _names, _regex_match, _TagsMixin


class _FittedSupport(SelectorMixin, BaseEstimator):
    """A selector whose ``fit`` sets ``support_`` (boolean mask of the kept columns)."""

    def _get_support_mask(self) -> np.ndarray:
        check_is_fitted(self, "support_")
        return self.support_


class FeatureSubset(_TagsMixin, _FittedSupport):
    """Keep columns whose name matches ``include`` and not ``exclude`` (regular expressions).

    Parameters
    ----------
    include : str or list of str, optional
        Patterns (``re.search``); None keeps every column.
    exclude : str or list of str, optional
        Patterns of columns to drop after ``include``.

    Notes
    -----
    Unnamed (NumPy) input has column names ``x0, x1, ...``. When nothing matches,
    ``fit`` raises ``ValueError`` naming the patterns.
    """

    def __init__(
        self, include: str | Sequence[str] | None = None, exclude: str | Sequence[str] | None = None
    ) -> None:
        self.include = include
        self.exclude = exclude

    def fit(self, X: Any, y: Any = None) -> FeatureSubset:
        """Record the matching columns."""
        X = validate_data(self, X, dtype=None, ensure_all_finite=False)
        names = _names(self, X.shape[1])
        keep = (
            np.ones(len(names), bool) if self.include is None else _regex_match(self.include, names)
        )
        keep &= ~_regex_match(self.exclude, names)
        if not keep.any():
            raise ValueError(
                f"FeatureSubset(include={self.include!r}, exclude={self.exclude!r}) "
                f"matches none of the {len(names)} columns"
            )
        self.support_ = keep
        return self

    _allow_nan = True
    _string_input = True
    _requires_y = False


def icc_3_1(table: np.ndarray) -> float | np.ndarray:
    """ICC(3,1): two-way mixed effects, consistency, single measurement (Shrout & Fleiss 1979).

    For ``n`` targets (rows) rated by ``k`` raters (columns),
    ``ICC(3,1) = (MS_R - MS_E) / (MS_R + (k - 1) MS_E)`` with
    ``MS_R = k Σ_i (m_i. - m..)² / (n - 1)`` (between-target mean square) and
    ``MS_E = Σ_ij (x_ij - m_i. - m_.j + m..)² / ((n - 1)(k - 1))`` (residual mean
    square), ``m_i.`` / ``m_.j`` / ``m..`` the row, column and grand means.

    Parameters
    ----------
    table : numpy.ndarray
        ``(n, k)`` ratings, or ``(n, k, p)`` for ``p`` features at once.

    Returns
    -------
    float or numpy.ndarray
        The ICC (per feature for 3-D input); NaN when ``MS_R + (k-1) MS_E`` is 0
        (a constant feature).
    """
    t = np.asarray(table, dtype=float)
    squeeze = t.ndim == 2
    if squeeze:
        t = t[:, :, None]
    n, k = t.shape[:2]
    if n < 2 or k < 2:
        raise ValueError(f"ICC needs at least 2 targets and 2 raters; got {n} x {k}")
    grand = t.mean(axis=(0, 1))
    rows = t.mean(axis=1)
    cols = t.mean(axis=0)
    ms_r = k * ((rows - grand) ** 2).sum(axis=0) / (n - 1)
    resid = t - rows[:, None, :] - cols[None, :, :] + grand
    ms_e = (resid**2).sum(axis=(0, 1)) / ((n - 1) * (k - 1))
    den = ms_r + (k - 1) * ms_e
    with np.errstate(invalid="ignore", divide="ignore"):
        icc = np.where(den > 0, (ms_r - ms_e) / np.where(den > 0, den, 1.0), np.nan)
    return float(icc[0]) if squeeze else icc


class ICCFilter(_TagsMixin, _FittedSupport):
    """Keep radiomics features that are stable under mask perturbation: ICC(3,1) ≥ threshold.

    The input holds, for every feature ``f``, its value on the original mask
    (column ``f``) and on each perturbed mask (columns ``f@<view>``, as
    :func:`buscad.radiomics.extract.extract_features` writes them). For each ``f`` the
    ``(n rows × k views)`` table of the *training* rows gives
    :func:`icc_3_1`; rows with a missing view are left out of that feature's
    ICC. ``transform`` returns the stable original-mask columns only (every
    ``@`` column is dropped), so the rest of the pipeline never sees a
    perturbed mask.

    Parameters
    ----------
    threshold : float, default 0.75
        Minimum ICC(3,1) (0.75 = "good" reliability, Koo & Li 2016, the usual
        cut-off in ultrasound radiomics inter-observer studies).
    n_views : int, optional
        For unnamed (NumPy) input: the columns form ``n_views`` equal blocks
        (original first, then each perturbation). Ignored for DataFrames.
    sep : str, default "@"
        Separator between a feature name and its view in column names.

    Attributes
    ----------
    icc_ : pandas.Series
        ICC(3,1) per original-mask feature (NaN for constant features, or fewer
        than 2 complete rows; those are dropped).
    support_ : numpy.ndarray
        Boolean mask over the input columns.
    """

    def __init__(self, threshold: float = 0.75, n_views: int | None = None, sep: str = VIEW_SEP):
        self.threshold = threshold
        self.n_views = n_views
        self.sep = sep

    def _layout(self, names: np.ndarray) -> tuple[list[int], list[list[int]]]:
        """Indices of the original columns and, per original, of its view columns."""
        if getattr(self, "feature_names_in_", None) is not None:
            pos = {str(n): i for i, n in enumerate(names)}
            base = [i for i, n in enumerate(names) if self.sep not in str(n)]
            suffixes = sorted({str(n).split(self.sep, 1)[1] for n in names if self.sep in str(n)})
            if not suffixes:
                raise ValueError(
                    f"ICCFilter: no perturbed-mask columns ('<feature>{self.sep}<view>') in X; "
                    "extract radiomics with mask perturbations"
                )
            views = [
                [i] + [pos.get(f"{names[i]}{self.sep}{s}", -1) for s in suffixes] for i in base
            ]
            return base, views
        if not self.n_views or self.n_views < 2:
            raise ValueError("ICCFilter: NumPy input needs n_views >= 2 (column blocks per view)")
        p = len(names)
        if p % self.n_views:
            raise ValueError(
                f"ICCFilter: {p} columns do not split into n_views={self.n_views} equal blocks"
            )
        q = p // self.n_views
        base = list(range(q))
        return base, [[j + v * q for v in range(self.n_views)] for j in base]

    def fit(self, X: Any, y: Any = None) -> ICCFilter:
        """Compute each feature's ICC on these (training) rows."""
        X = validate_data(self, X, ensure_all_finite="allow-nan", dtype=np.float64)
        names = _names(self, X.shape[1])
        base, views = self._layout(names)
        iccs = np.full(len(base), np.nan)
        for j, cols in enumerate(views):
            if min(cols) < 0:
                continue
            t = X[:, cols]
            t = t[np.isfinite(t).all(axis=1)]
            if len(t) >= 2:
                iccs[j] = icc_3_1(t)
        support = np.zeros(X.shape[1], bool)
        keep = np.nan_to_num(iccs, nan=-np.inf) >= self.threshold
        support[np.asarray(base)[keep]] = True
        if not support.any():
            warnings.warn(
                f"ICCFilter: no feature reaches ICC >= {self.threshold}; keeping the most stable one",
                stacklevel=2,
            )
            support[base[int(np.nanargmax(np.nan_to_num(iccs, nan=-np.inf)))]] = True
        self.icc_ = pd.Series(iccs, index=[str(names[i]) for i in base], name="icc")
        self.support_ = support
        return self

    _allow_nan = True
    _requires_y = False


def _spearman_matrix(X: np.ndarray) -> np.ndarray:
    """Spearman's rho between every pair of columns (``scipy.stats.spearmanr``); 0 where
    a column is constant (rho undefined)."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        rho = stats.spearmanr(X, axis=0).statistic
    c = np.atleast_2d(rho)
    if c.shape != (X.shape[1], X.shape[1]):  # two columns: spearmanr returns a scalar
        d = np.where(np.ptp(X, axis=0) > 0, 1.0, np.nan)
        c = np.array([[d[0], float(rho)], [float(rho), d[1]]])
    return np.nan_to_num(c, nan=0.0)


class SpearmanRedundancyFilter(_FittedSupport):
    """Drop redundant features: of each pair with ``|rho| > threshold`` keep the more relevant.

    Spearman's ``rho`` is Pearson's correlation of the ranks (average ranks for
    ties). Relevance is ``|rho(x_j, y)|``, the rank correlation with the label
    (labels coded 0, 1, ... in sorted order; buscad's labels are binary).
    Features are visited from the most to the least relevant and a feature is
    kept when its ``|rho|`` with every already kept feature is ≤ ``threshold``
    (greedy; ties broken by column order). Constant columns are dropped (rank
    correlation undefined, no information) unless every column is constant.

    Parameters
    ----------
    threshold : float, default 0.9
        Redundancy cut-off on ``|rho|``.

    Attributes
    ----------
    relevance_ : numpy.ndarray
        ``|rho(x_j, y)|`` per input column.
    support_ : numpy.ndarray
        Boolean mask of kept columns.
    """

    def __init__(self, threshold: float = 0.9):
        self.threshold = threshold

    def fit(self, X: Any, y: Any) -> SpearmanRedundancyFilter:
        """Select on these (training) rows."""
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_min_samples=2)
        yb = _codes(y)
        p = X.shape[1]
        const = np.ptp(X, axis=0) == 0 if len(X) else np.ones(p, bool)
        rho = _spearman_matrix(np.column_stack([X, yb]))
        rel = np.abs(rho[:p, p])
        rel[const] = -1.0
        order = np.argsort(-rel, kind="stable")
        kept: list[int] = []
        for j in order:
            if const[j] and kept:
                continue
            if all(abs(rho[j, k]) <= self.threshold for k in kept):
                kept.append(int(j))
        support = np.zeros(p, bool)
        support[kept] = True
        if const.all():
            support[:] = False
            support[0] = True
        self.relevance_ = np.clip(rel, 0, None)
        self.support_ = support
        return self


class LassoSelector(_FittedSupport):
    """LASSO selection: L1-penalised logistic regression, penalty ``C`` chosen by inner CV.

    Minimises ``Σ_i log(1 + exp(-s_i (b0 + x_i·b))) / C... `` i.e. scikit-learn's
    ``||b||_1 + C Σ_i logloss_i`` (liblinear) over a grid of ``C``; the grid
    point with the best mean inner-CV ``scoring`` (default log-loss, the
    binomial deviance glmnet's ``cv.glmnet`` uses) wins, and features with a
    non-zero coefficient at that ``C`` on all the training rows are kept. Inputs
    should be z-scored (put a ``StandardScaler`` before it). The inner CV splits
    only the rows passed to ``fit``: inside an outer fold the test rows are
    never seen.

    Parameters
    ----------
    Cs : int or sequence of float, default 20
        Grid (int: ``logspace(-3, 1, Cs)``).
    cv : int, default 5
        Inner stratified folds (shuffled with ``random_state``).
    scoring : {"neg_log_loss", "roc_auc"}, default "neg_log_loss"
        Inner-CV criterion.
    one_se : bool, default False
        Use the sparsest ``C`` within one standard error of the best (the 1-SE rule).
    random_state : int, default 0
        Seed of the inner folds.

    Attributes
    ----------
    C_ : float
        Chosen penalty.
    coef_ : numpy.ndarray
        L1 coefficients at ``C_`` on all training rows (z-score scale).
    cv_scores_ : numpy.ndarray
        ``(len(Cs), cv)`` inner-CV scores.
    support_ : numpy.ndarray
        Non-zero coefficients (at least one: when the L1 fit keeps none, the
        feature with the largest ``|rho|`` with the label is kept).
    """

    def __init__(
        self,
        Cs: int | Sequence[float] = 20,
        cv: int = 5,
        scoring: str = "neg_log_loss",
        one_se: bool = False,
        random_state: int | None = 0,
    ):
        self.Cs = Cs
        self.cv = cv
        self.scoring = scoring
        self.one_se = one_se
        self.random_state = random_state

    def _l1(self, C: float) -> LogisticRegression:
        return LogisticRegression(
            C=C, l1_ratio=1.0, solver="liblinear", max_iter=2000, random_state=self.random_state
        )

    def fit(self, X: Any, y: Any) -> LassoSelector:
        """Choose ``C`` by inner CV on these rows, refit, keep non-zero coefficients."""
        from sklearn.metrics import log_loss, roc_auc_score

        X, y = validate_data(self, X, y, dtype=np.float64)
        yb = _binary_y(self, y)
        if self.scoring not in ("neg_log_loss", "roc_auc"):
            raise ValueError(f"scoring must be 'neg_log_loss' or 'roc_auc', got {self.scoring!r}")
        Cs = np.logspace(-3, 1, self.Cs) if isinstance(self.Cs, int) else np.asarray(self.Cs, float)
        n_min = int(min(yb.sum(), (1 - yb).sum()))
        k = max(2, min(self.cv, n_min))
        scores = np.full((len(Cs), k), np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", FutureWarning)
            if n_min >= 2:
                folds = StratifiedKFold(k, shuffle=True, random_state=self.random_state)
                for f, (tr, te) in enumerate(folds.split(X, yb)):
                    if len(np.unique(yb[tr])) < 2:
                        continue
                    for i, C in enumerate(Cs):
                        p = self._l1(C).fit(X[tr], yb[tr]).predict_proba(X[te])[:, 1]
                        if self.scoring == "roc_auc":
                            scores[i, f] = (
                                roc_auc_score(yb[te], p) if len(np.unique(yb[te])) == 2 else np.nan
                            )
                        else:
                            scores[i, f] = -log_loss(yb[te], p, labels=[0, 1])
            mean = np.nanmean(scores, axis=1) if np.isfinite(scores).any() else np.zeros(len(Cs))
            mean = np.nan_to_num(mean, nan=-np.inf)
            best = int(np.argmax(mean))
            if self.one_se and np.isfinite(scores).any():
                se = np.nanstd(scores[best]) / np.sqrt(k)
                ok = np.flatnonzero(mean >= mean[best] - se)
                best = int(ok[np.argmin(Cs[ok])])
            self.C_ = float(Cs[best])
            self.coef_ = self._l1(self.C_).fit(X, yb).coef_.ravel()
        support = self.coef_ != 0
        if not support.any():
            rho = _spearman_matrix(np.column_stack([X, yb]))[:-1, -1]
            support[int(np.argmax(np.abs(rho)))] = True
        self.cv_scores_ = scores
        self.Cs_ = Cs
        self.support_ = support
        return self
