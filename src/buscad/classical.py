"""Classical and fusion models as scikit-learn estimators.

Every stage follows scikit-learn's conventions (``__init__`` only stores
parameters, ``fit`` returns ``self``, fitted attributes end in ``_``,
``get_params``/``set_params``/``clone`` work) and composes in a
:class:`~sklearn.pipeline.Pipeline`, so selection, scaling and imputation are
refit inside every cross-validation fold. Feature tables flow as pandas
DataFrames (call ``pipeline.set_output(transform="pandas")``, as the builders
here do) so column names survive selection and can be exported.

Stages
------
- :class:`FeatureSubset`: keep / drop columns by regular expression (e.g. drop
  ``_shape2D_`` features, pick ``deep_`` columns).
- :class:`ICCFilter`: inter-observer stability, ICC(3,1) of each radiomics
  feature across the original and perturbed masks (columns ``f``, ``f@erode2``,
  ``f@dilate2`` from :mod:`buscad.radiomics`), keeps ICC ≥ 0.75.
- :class:`SpearmanRedundancyFilter`: drops the less relevant of every pair with
  ``|rho| > threshold``.
- :class:`LassoSelector`: L1 logistic regression, penalty chosen by inner CV.
- :class:`RadScore`: logistic regression on the selected features;
  :func:`export_radscore_formula` writes the rad-score formula as CSV.
- :class:`ClinicalSelector` / :class:`ClinicalModel`: univariate tests, then
  logistic regression or SVM; imputation with missing indicators inside.
- :class:`LexiconEncoder` / :class:`USModel`: BI-RADS lexicon + category,
  one-hot → logistic regression.
- :class:`DLR`: deep features → scaler → SVM with probabilities.
- :class:`CLDLR`: clinical + deep features → SVM.
- :class:`StackingIntegrator`: logistic regression on the single models'
  out-of-fold probabilities; coefficients exported for a nomogram.
- :func:`cross_val_predict_grouped`: pooled out-of-fold probabilities with the
  whole pipeline refit per fold, grouped by the split's groups.

Studies followed: Li et al., Front Oncol 2026 (radiomics: LASSO → logistic
regression; integrated model fusing the single models' probabilities) and
Yang et al., Sci Rep 2024;14:31479 (DLR = deep features → SVM; clinical
parameters with univariate P < 0.05, t or Mann-Whitney tests, BI-RADS excluded
from the clinical model; CLDLR = clinical + deep features → SVM).
"""

from __future__ import annotations

import inspect
import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_selection import SelectorMixin
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import SVC
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import (
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
    validate_data,
)

from buscad.data.lexicon import LEXICON_MISSING, lexicon_tokens
from buscad.data.manifest import LEXICON_COLUMNS
from buscad.utils import atomic_write_table

VIEW_SEP = "@"


# =============================================================================== helpers


def _names(est: BaseEstimator, n: int) -> np.ndarray:
    names = getattr(est, "feature_names_in_", None)
    if names is not None:
        return np.asarray(names, dtype=object)
    return np.asarray([f"x{i}" for i in range(n)], dtype=object)


def _binary_y(est: BaseEstimator, y: Any) -> np.ndarray:
    """Validate a binary target; set ``classes_``; return 0/1 codes."""
    if y is None:
        raise ValueError(f"{type(est).__name__} requires y to be passed, but the target y is None")
    y = column_or_1d(y, warn=True)
    check_classification_targets(y)
    classes = np.unique(y)
    if len(classes) > 2:
        raise ValueError(
            "Only binary classification is supported. The type of the target is "
            f"{type_of_target(y)} ({type(est).__name__} got {len(classes)} classes)."
        )
    if len(classes) < 2:
        raise ValueError(
            f"{type(est).__name__} needs samples of 2 classes in y; got only one class "
            f"({classes[0] if len(classes) else 'empty y'})"
        )
    est.classes_ = classes
    return (y == classes[1]).astype(int)


def _codes(y: Any) -> np.ndarray:
    """Integer codes of a target (sorted classes), for rank statistics."""
    if y is None:
        raise ValueError("this selector requires y to be passed, but the target y is None")
    y = column_or_1d(y, warn=True)
    return np.unique(y, return_inverse=True)[1].astype(float)


def _frame(X: Any) -> pd.DataFrame:
    if isinstance(X, pd.DataFrame):
        return X
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D table, got an array of shape {arr.shape}")
    return pd.DataFrame(arr, columns=[f"x{i}" for i in range(arr.shape[1])])


def _take(X: Any, idx: np.ndarray) -> Any:
    return X.iloc[idx] if isinstance(X, (pd.DataFrame, pd.Series)) else np.asarray(X)[idx]


def _regex_match(patterns: Sequence[str] | str | None, names: Sequence[str]) -> np.ndarray:
    if patterns is None:
        return np.zeros(len(names), dtype=bool)
    pats = [patterns] if isinstance(patterns, str) else list(patterns)
    rx = [re.compile(p) for p in pats]
    return np.array([any(r.search(str(n)) for r in rx) for n in names], dtype=bool)


_CLASSIFIERS: dict[str, Callable[..., BaseEstimator]] = {
    "logistic": lambda C, random_state: LogisticRegression(
        C=C, max_iter=5000, random_state=random_state
    ),
    "svm": lambda C, random_state: PlattSVC(C=C),  # deterministic: no seed needed
}


def make_classifier(name: str, C: float = 1.0, random_state: int | None = 0) -> BaseEstimator:
    """Final classifier by name: ``logistic`` (L2, ``C``) or ``svm`` (RBF, Platt probabilities)."""
    try:
        factory = _CLASSIFIERS[name]
    except KeyError:
        raise ValueError(
            f"unknown classifier {name!r}; use one of {', '.join(sorted(_CLASSIFIERS))}"
        ) from None
    return factory(C, random_state)


class _TagsMixin:
    """scikit-learn tags declared by class attributes: the one ``__sklearn_tags__`` of buscad.

    ``_allow_nan``: accepts NaN in X; ``_string_input``: accepts string
    columns; ``_requires_y``: whether ``fit`` needs ``y`` (None: scikit-learn's
    default); ``_binary_only``: a classifier for two classes only.
    """

    _allow_nan: bool = False
    _string_input: bool = False
    _requires_y: bool | None = None
    _binary_only: bool = False

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        if self._allow_nan:
            tags.input_tags.allow_nan = True
        if self._string_input:
            tags.input_tags.string = True
        if self._requires_y is not None:
            tags.target_tags.required = self._requires_y
        if self._binary_only and tags.classifier_tags is not None:
            tags.classifier_tags.multi_class = False
        return tags


class _BinaryClassifierMixin(_TagsMixin, ClassifierMixin):
    """Tags of buscad's binary (benign/malignant) classifiers."""

    _binary_only = True


class PlattSVC(_BinaryClassifierMixin, BaseEstimator):
    """RBF SVM with Platt-scaled probabilities.

    ``P(y=1 | x) = 1 / (1 + exp(A f(x) + B))`` with ``f`` the SVM decision
    value and ``A, B`` fitted by logistic regression on out-of-fold decision
    values (stratified ``cv``-fold, ``cv = min(5, smallest class size)``), the
    SVM itself refit on all rows: scikit-learn's
    ``CalibratedClassifierCV(SVC(), method="sigmoid", ensemble=False)``, the
    replacement of the deprecated ``SVC(probability=True)`` (same method as libsvm).

    Parameters
    ----------
    C : float, default 1.0
    gamma : str or float, default "scale"
    cv : int, default 5
    """

    def __init__(self, C: float = 1.0, gamma: str | float = "scale", cv: int = 5):
        self.C = C
        self.gamma = gamma
        self.cv = cv

    def fit(self, X: Any, y: Any) -> PlattSVC:
        """Fit the SVM and the sigmoid."""
        from sklearn.calibration import CalibratedClassifierCV

        X, y = validate_data(self, X, y)
        yb = _binary_y(self, y)
        k = int(max(2, min(self.cv, np.bincount(yb).min())))
        self.calibrated_ = CalibratedClassifierCV(
            SVC(C=self.C, kernel="rbf", gamma=self.gamma),
            method="sigmoid",
            cv=k if np.bincount(yb).min() >= 2 else 2,
            ensemble=False,
        ).fit(X, yb)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Platt probabilities ``[1 - p, p]``."""
        check_is_fitted(self, "calibrated_")
        X = validate_data(self, X, reset=False)
        return self.calibrated_.predict_proba(X)

    def predict(self, X: Any) -> np.ndarray:
        """Class with the higher probability."""
        p = self.predict_proba(X)
        return self.classes_[(p[:, 1] > 0.5).astype(int)]

    def to_portable(self) -> tuple[dict, dict]:
        """Portable form (:mod:`buscad.portable`): the calibrated SVM."""
        check_is_fitted(self, "calibrated_")
        return {"type": "pipeline", "steps": [self.calibrated_]}, {}


class _WrappedClassifier(_BinaryClassifierMixin, BaseEstimator):
    """Shared predict/predict_proba for classifiers that hold a fitted ``pipeline_``."""

    def to_portable(self) -> tuple[dict, dict]:
        """Portable form (:mod:`buscad.portable`): ``pipeline_``.

        It was fitted on the same table as this model, so its export already
        finds the input columns by name.
        """
        check_is_fitted(self, "pipeline_")
        return {"type": "pipeline", "steps": [self.pipeline_]}, {}

    def _check_X(self, X: Any) -> Any:
        check_is_fitted(self, "pipeline_")
        if _named_frame(X) and getattr(self, "feature_names_in_", None) is not None:
            missing = [c for c in self.feature_names_in_ if c not in X.columns]
            if missing:
                raise ValueError(
                    f"{type(self).__name__}: X lacks column(s) seen in fit: {', '.join(missing[:5])}"
                )
            return X[list(self.feature_names_in_)]
        arr = X.to_numpy() if isinstance(X, pd.DataFrame) else np.asarray(X)
        if arr.ndim != 2:
            raise ValueError(
                f"Expected a 2-D table, got an array of shape {arr.shape}. Reshape your data "
                "with array.reshape(-1, 1) (one feature) or array.reshape(1, -1) (one sample)."
            )
        if arr.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {arr.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input"
            )
        return _frame(np.array(arr))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns ordered as ``classes_``."""
        Xc = self._check_X(X)
        return self.pipeline_.predict_proba(Xc)

    def predict(self, X: Any) -> np.ndarray:
        """Class with the higher probability."""
        p = self.predict_proba(X)
        return self.classes_[(p[:, 1] > 0.5).astype(int)]

    def _store_input(self, X: Any, y: Any) -> pd.DataFrame:
        """Validate ``X`` (a string-named DataFrame is kept as it is) and record its columns."""
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None"
            )
        if _named_frame(X):
            df = X.copy()
            self.feature_names_in_ = np.asarray(df.columns, dtype=object)
        else:
            arr = validate_data(self, X, ensure_all_finite="allow-nan", dtype=None)
            df = _frame(np.array(arr))
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        if df.shape[0] == 0 or df.shape[1] == 0:
            raise ValueError(f"{type(self).__name__}: empty X of shape {df.shape}")
        check_consistent_length(df, y)
        self.n_features_in_ = df.shape[1]
        return df


def _named_frame(X: Any) -> bool:
    return isinstance(X, pd.DataFrame) and all(isinstance(c, str) for c in X.columns)


# =============================================================================== selectors


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
    :func:`buscad.radiomics.extract_features` writes them). For each ``f`` the
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


# =============================================================================== rad-score


class RadScore(_BinaryClassifierMixin, BaseEstimator):
    """Logistic regression on the selected radiomics features: the rad-score model.

    ``rad-score = b0 + Σ_j b_j x_j`` (the log-odds of malignancy);
    ``P(malignant) = 1 / (1 + exp(-rad-score))``.

    Parameters
    ----------
    C : float, default 1.0
        Inverse L2 strength (mild, on z-scored inputs: keeps the fit finite
        when the selected features separate the training rows perfectly).
    random_state : int, default 0

    Attributes
    ----------
    coef_ : numpy.ndarray
        ``(n_features,)`` coefficients.
    intercept_ : float
        ``b0``.
    classes_ : numpy.ndarray
    """

    def __init__(self, C: float = 1.0, random_state: int | None = 0):
        self.C = C
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> RadScore:
        """Fit the logistic regression."""
        X, y = validate_data(self, X, y, dtype=np.float64)
        yb = _binary_y(self, y)
        lr = LogisticRegression(C=self.C, max_iter=5000, random_state=self.random_state)
        lr.fit(X, yb)
        self.coef_ = lr.coef_.ravel().copy()
        self.intercept_ = float(lr.intercept_[0])
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """The rad-score ``b0 + X @ b``."""
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return X @ self.coef_ + self.intercept_

    def predict_proba(self, X: Any) -> np.ndarray:
        """``[1 - p, p]`` with ``p = 1 / (1 + exp(-rad-score))``."""
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.column_stack([1 - p, p])

    def predict(self, X: Any) -> np.ndarray:
        """``classes_[1]`` where the rad-score is positive."""
        score = self.decision_function(X)
        return self.classes_[(score > 0).astype(int)]

    def to_portable(self) -> tuple[dict, dict]:
        """Portable form (:mod:`buscad.portable`): a logistic model."""
        check_is_fitted(self, "coef_")
        return {"type": "logistic", "intercept": self.intercept_, "classes": [0, 1]}, {
            "coef": self.coef_
        }

    def export_formula(self, path: str | os.PathLike[str]) -> Path:
        """Write ``term, coefficient`` rows (``(intercept)`` first) to a CSV file."""
        check_is_fitted(self, "coef_")
        names = _names(self, len(self.coef_))
        df = pd.DataFrame(
            {
                "term": ["(intercept)", *map(str, names)],
                "coefficient": [self.intercept_, *self.coef_],
            }
        )
        return atomic_write_table(df, path)


#: Column names of pyradiomics features (image type prefix), with or without ``@view``.
RADIOMICS_COLUMNS = r"^[A-Za-z0-9.-]+_(shape2D|firstorder|glcm|glrlm|glszm|gldm|ngtdm)_"


def radiomics_pipeline(
    icc_threshold: float = 0.75,
    spearman_threshold: float = 0.9,
    lasso_cv: int = 5,
    C: float = 1.0,
    exclude: str | Sequence[str] | None = None,
    include: str | Sequence[str] | None = RADIOMICS_COLUMNS,
    random_state: int | None = 0,
) -> Pipeline:
    """The radiomics model: subset → ICC filter → impute → z-score → Spearman → LASSO → rad-score.

    The subset keeps the pyradiomics columns (``include``, default
    :data:`RADIOMICS_COLUMNS`, so the pipeline can take a table that also holds
    clinical or deep columns) minus ``exclude`` (``"_shape2D_"`` removes the
    shape features, including their perturbed copies). The imputer (median of the
    training rows) only acts on rows whose extraction failed.
    """
    steps: list[tuple[str, Any]] = [("subset", FeatureSubset(include=include, exclude=exclude))]
    steps += [
        ("icc", ICCFilter(threshold=icc_threshold)),
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("zscore", StandardScaler()),
        ("spearman", SpearmanRedundancyFilter(threshold=spearman_threshold)),
        ("lasso", LassoSelector(cv=lasso_cv, random_state=random_state)),
        ("radscore", RadScore(C=C, random_state=random_state)),
    ]
    return Pipeline(steps).set_output(transform="pandas")


def export_radscore_formula(pipeline: Pipeline, path: str | os.PathLike[str]) -> pd.DataFrame:
    """Write the rad-score formula of a fitted radiomics pipeline as CSV, on the raw feature scale.

    With the z-score ``z_j = (x_j - mean_j) / sd_j`` folded in,
    ``rad-score = b0 - Σ_j b_j mean_j / sd_j + Σ_j (b_j / sd_j) x_j``. Columns:
    ``term`` (``(intercept)`` then the feature names), ``coefficient`` (raw
    scale: apply to the extracted feature values), ``z_coefficient`` (``b_j``),
    ``mean`` and ``sd`` (training z-score). ``P = 1 / (1 + exp(-rad-score))``
    reproduces ``pipeline.predict_proba(X)[:, 1]`` for rows without missing
    features (see :func:`apply_radscore_formula`).

    Raises
    ------
    ValueError
        When the last step is not a fitted :class:`RadScore` or the pipeline
        carries no feature names (fit it on a DataFrame with pandas output).
    """
    final = pipeline.steps[-1][1]
    if not isinstance(final, RadScore):
        raise ValueError("export_radscore_formula: the pipeline's last step must be a RadScore")
    check_is_fitted(final, "coef_")
    if getattr(final, "feature_names_in_", None) is None:
        raise ValueError(
            "export_radscore_formula: no feature names; fit on a DataFrame with "
            'pipeline.set_output(transform="pandas")'
        )
    names = [str(n) for n in final.feature_names_in_]
    mean = pd.Series(0.0, index=names)
    sd = pd.Series(1.0, index=names)
    scalers = [step for _, step in pipeline.steps[:-1] if isinstance(step, StandardScaler)]
    if len(scalers) > 1:
        raise ValueError("export_radscore_formula: more than one StandardScaler in the pipeline")
    if scalers:
        sc = scalers[0]
        cols = [str(c) for c in sc.feature_names_in_]
        if sc.with_mean:
            mean = pd.Series(sc.mean_, index=cols).reindex(names)
        if sc.with_std:
            sd = pd.Series(sc.scale_, index=cols).reindex(names)
    b = pd.Series(final.coef_, index=names)
    raw = b / sd
    intercept = final.intercept_ - float((b * mean / sd).sum())
    df = pd.DataFrame(
        {
            "term": ["(intercept)", *names],
            "coefficient": [intercept, *raw.to_numpy()],
            "z_coefficient": [final.intercept_, *b.to_numpy()],
            "mean": [np.nan, *mean.to_numpy()],
            "sd": [np.nan, *sd.to_numpy()],
        }
    )
    atomic_write_table(df, path)
    return df


def apply_radscore_formula(formula: str | os.PathLike[str] | pd.DataFrame, X: pd.DataFrame):
    """Rad-score and probability from an exported formula CSV and raw features.

    Returns
    -------
    tuple of numpy.ndarray
        ``(rad_score, probability)`` with ``probability = 1 / (1 + exp(-rad_score))``.
    """
    f = formula if isinstance(formula, pd.DataFrame) else pd.read_csv(formula)
    inter = float(f.loc[f["term"] == "(intercept)", "coefficient"].iloc[0])
    terms = f[f["term"] != "(intercept)"]
    missing = [t for t in terms["term"] if t not in X.columns]
    if missing:
        raise ValueError(f"rad-score formula needs column(s) absent from X: {', '.join(missing)}")
    score = inter + X[list(terms["term"])].to_numpy(float) @ terms["coefficient"].to_numpy(float)
    return score, 1.0 / (1.0 + np.exp(-score))


# =============================================================================== clinical


def _infer_columns(
    df: pd.DataFrame, numeric: Sequence[str] | None, categorical: Sequence[str] | None
) -> tuple[list[str], list[str]]:
    if numeric is None and categorical is None:
        num = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c])]
        cat = [c for c in df.columns if c not in num]
        return num, cat
    num, cat = list(numeric or []), list(categorical or [])
    absent = [c for c in num + cat if c not in df.columns]
    if absent:
        raise ValueError(f"clinical column(s) not in X: {', '.join(map(str, absent))}")
    return num, cat


def univariate_test(x: pd.Series, y: np.ndarray, kind: str) -> tuple[str, float]:
    """P-value of one clinical variable against the binary label (missing values left out).

    Delegates to buscad's one univariate-test policy,
    :func:`buscad.evaluate.univariate.univariate_test` (the test Table 1 uses
    too): ``kind="numeric"``: Welch's t ``t = (m1 - m0) / sqrt(s1²/n1 + s0²/n0)``
    when Shapiro-Wilk does not reject normality (P > 0.05) in either class
    (each with ≥ 3 values), else the two-sided Mann-Whitney U test;
    ``kind="categorical"``: Pearson's chi-square ``Σ (O - E)² / E`` without
    continuity correction, Fisher's exact test for a 2 × 2 table with an
    expected count < 5. Returns ``(test name, P)``; ``("none", 1.0)`` when the
    variable has fewer than 2 observed values in a class, is constant or has a
    single category (it cannot be selected).
    """
    from buscad.evaluate.univariate import univariate_test as policy

    ok = x.notna().to_numpy()
    yv = np.asarray(y)[ok]
    if kind == "numeric" and min((yv == 1).sum(), (yv == 0).sum()) < 2:
        return "none", 1.0
    name, p = policy(x, np.asarray(y), kind)
    if not np.isfinite(p):
        return "none", 1.0
    return name, p


class ClinicalSelector(_TagsMixin, TransformerMixin, BaseEstimator):
    """Keep clinical variables that differ between the classes on the training rows (P < alpha).

    Tests per :func:`univariate_test` (buscad's one policy, shared with Table 1:
    Welch t or Mann-Whitney U for numbers, chi-square without continuity
    correction or Fisher's exact test for categories), on the observed values
    of the rows passed to ``fit``. As in Yang et al. 2024, variables with
    P < 0.05 enter the clinical model.

    Parameters
    ----------
    numeric, categorical : list of str, optional
        Column names; both None: numeric dtypes are numeric, the rest categorical.
    alpha : float, default 0.05
    min_keep : int, default 1
        When fewer variables pass, keep this many with the smallest P (a model
        needs an input; reported in ``forced_``). Variables that cannot be
        tested (fewer than 2 observed values per class, e.g. a column that is
        missing on every training row) are never kept.

    Attributes
    ----------
    p_values_ : pandas.Series
    tests_ : pandas.Series
        Test used per variable.
    selected_ : list of str
    forced_ : bool
    """

    def __init__(
        self,
        numeric: Sequence[str] | None = None,
        categorical: Sequence[str] | None = None,
        alpha: float = 0.05,
        min_keep: int = 1,
    ):
        self.numeric = numeric
        self.categorical = categorical
        self.alpha = alpha
        self.min_keep = min_keep

    def fit(self, X: Any, y: Any) -> ClinicalSelector:
        """Run the tests on these rows."""
        df = _frame(X)
        if not isinstance(X, pd.DataFrame):
            validate_data(self, X, ensure_all_finite="allow-nan", dtype=None)
        else:
            self.feature_names_in_ = np.asarray(df.columns, dtype=object)
        self.n_features_in_ = df.shape[1]
        yb = _binary_y(self, y)
        num, cat = _infer_columns(df, self.numeric, self.categorical)
        pv, tests = {}, {}
        for c in num:
            tests[c], pv[c] = univariate_test(df[c], yb, "numeric")
        for c in cat:
            tests[c], pv[c] = univariate_test(df[c], yb, "categorical")
        self.p_values_ = pd.Series(pv, dtype=float)
        self.tests_ = pd.Series(tests, dtype=object)
        sel = [c for c in num + cat if pv[c] < self.alpha]
        self.forced_ = len(sel) < self.min_keep
        if self.forced_:
            testable = self.p_values_[self.tests_ != "none"].sort_values(kind="stable")
            sel = list(testable.index[: self.min_keep])
        self.numeric_ = [c for c in num if c in sel]
        self.categorical_ = [c for c in cat if c in sel]
        self.selected_ = self.numeric_ + self.categorical_
        return self

    def transform(self, X: Any) -> pd.DataFrame:
        """The selected columns."""
        check_is_fitted(self, "selected_")
        return _frame(X)[self.selected_]

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names of the selected columns."""
        check_is_fitted(self, "selected_")
        return np.asarray(self.selected_, dtype=object)

    def to_portable(self) -> tuple[dict, dict]:
        """Portable form (:mod:`buscad.portable`): the selected columns by name."""
        check_is_fitted(self, "selected_")
        return {"type": "select_names", "names": list(self.selected_)}, {}

    _allow_nan = True
    _string_input = True


def clinical_preprocessor(numeric: Sequence[str], categorical: Sequence[str]) -> ColumnTransformer:
    """Imputation fitted on the training rows: numbers → median + missing indicator → z-score;
    categories → constant ``"missing"`` → one-hot (unknown categories ignored)."""
    parts: list[tuple[str, Any, list[str]]] = []
    if numeric:
        parts.append(
            (
                "num",
                make_pipeline(
                    SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                    StandardScaler(),
                ),
                list(numeric),
            )
        )
    if categorical:
        parts.append(
            (
                "cat",
                make_pipeline(
                    _ToStr(),
                    SimpleImputer(strategy="constant", fill_value="missing"),
                    OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                ),
                list(categorical),
            )
        )
    return ColumnTransformer(parts, remainder="drop", verbose_feature_names_out=True)


class _PriorClassifier(ClassifierMixin, BaseEstimator):
    """P(malignant) = the training prevalence for every row (input ignored, may have 0 columns)."""

    def fit(self, X: Any, y: Any) -> _PriorClassifier:
        yb = np.asarray(y)
        self.classes_ = np.unique(yb)
        self.prior_ = np.array([np.mean(yb == c) for c in self.classes_])
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "prior_")
        return np.tile(self.prior_, (len(X), 1))

    def to_portable(self) -> tuple[dict, dict]:
        check_is_fitted(self, "prior_")
        return {"type": "constant", "p": float(self.prior_[-1])}, {}


class _ToStr(TransformerMixin, BaseEstimator):
    """Categories as strings, missing values as NaN (for SimpleImputer/OneHotEncoder)."""

    def fit(self, X: Any, y: Any = None) -> _ToStr:
        self.n_features_in_ = np.shape(X)[1]
        return self

    def transform(self, X: Any) -> np.ndarray:
        df = _frame(X)
        out = df.astype(object).where(df.notna(), np.nan)
        return out.map(lambda v: v if isinstance(v, float) and np.isnan(v) else str(v)).to_numpy(
            object
        )

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(input_features if input_features is not None else [], dtype=object)

    def to_portable(self) -> tuple[dict, dict]:
        return {"type": "tostr"}, {}


class ClinicalModel(_WrappedClassifier):
    """Clinical model: univariate selection → imputation/encoding → logistic regression or SVM.

    Parameters
    ----------
    numeric, categorical : list of str, optional
        Clinical columns (both None: every column, typed by dtype). Other
        columns of ``X`` are ignored, so the model can take the full table.
    alpha : float, default 0.05
        Univariate P threshold (:class:`ClinicalSelector`).
    classifier : {"logistic", "svm"}, default "logistic"
    C : float, default 1.0
    random_state : int, default 0

    Notes
    -----
    Missing values never drop rows: numbers are imputed with the training
    median plus a 0/1 missing indicator, categories get a ``missing`` level,
    both learnt in ``fit`` (so inside each CV fold).

    Attributes
    ----------
    selector_ : ClinicalSelector
    pipeline_ : sklearn.pipeline.Pipeline
    classes_ : numpy.ndarray
    """

    def __init__(
        self,
        numeric: Sequence[str] | None = None,
        categorical: Sequence[str] | None = None,
        alpha: float = 0.05,
        classifier: str = "logistic",
        C: float = 1.0,
        random_state: int | None = 0,
    ):
        self.numeric = numeric
        self.categorical = categorical
        self.alpha = alpha
        self.classifier = classifier
        self.C = C
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> ClinicalModel:
        """Select, then fit the preprocessing and the classifier on these rows."""
        df = self._store_input(X, y)
        yb = _binary_y(self, y)
        sel = ClinicalSelector(self.numeric, self.categorical, self.alpha).fit(df, yb)
        self.selector_ = sel
        if not sel.selected_:  # nothing testable (e.g. no clinical data in training): prior only
            self.pipeline_ = Pipeline([("select", sel), ("clf", _PriorClassifier())])
            self.pipeline_.steps[1][1].fit(sel.transform(df), yb)
            return self
        self.pipeline_ = Pipeline(
            [
                ("select", sel),
                ("prep", clinical_preprocessor(sel.numeric_, sel.categorical_)),
                ("clf", make_classifier(self.classifier, self.C, self.random_state)),
            ]
        )
        # the selector is already fitted; refit the rest
        Xt = sel.transform(df)
        self.pipeline_.steps[1] = ("prep", self.pipeline_.steps[1][1].fit(Xt, yb))
        self.pipeline_.steps[2][1].fit(self.pipeline_.steps[1][1].transform(Xt), yb)
        return self

    _allow_nan = True
    _string_input = True


# =============================================================================== US model


class LexiconEncoder(TransformerMixin, BaseEstimator):
    """One-hot encoding of BI-RADS lexicon descriptors and the BI-RADS category.

    Each cell is split on ``sep`` (BrEaST writes multi-valued margins as
    ``"not circumscribed - angular&indistinct"``) and the part before `` - ``
    is kept as its own token too, so ``margin=not circumscribed`` is a feature.
    Every ``column=token`` seen in the training rows becomes a 0/1 column;
    missing cells (and ``not applicable``/``not available``) become
    ``column=missing``; tokens unseen in training are ignored.

    Parameters
    ----------
    columns : list of str, optional
        Columns to encode (None: all).
    sep : str, default "&"

    Attributes
    ----------
    vocabulary_ : list of str
        Output column names ``column=token``.
    """

    _MISSING = LEXICON_MISSING

    def __init__(self, columns: Sequence[str] | None = None, sep: str = "&"):
        self.columns = columns
        self.sep = sep

    def _tokens(self, v: Any) -> list[str]:
        return lexicon_tokens(v, self.sep)

    def fit(self, X: Any, y: Any = None) -> LexiconEncoder:
        """Learn the vocabulary from these rows."""
        df = _frame(X)
        self.columns_ = list(self.columns) if self.columns is not None else list(df.columns)
        absent = [c for c in self.columns_ if c not in df.columns]
        if absent:
            raise ValueError(f"LexiconEncoder: column(s) not in X: {', '.join(absent)}")
        vocab: list[str] = []
        for c in self.columns_:
            seen = sorted({t for v in df[c] for t in self._tokens(v)})
            vocab += [f"{c}={t}" for t in seen]
        self.vocabulary_ = vocab
        self.n_features_in_ = df.shape[1]
        return self

    def transform(self, X: Any) -> pd.DataFrame:
        """0/1 indicator table (columns ``vocabulary_``)."""
        check_is_fitted(self, "vocabulary_")
        df = _frame(X)
        pos = {v: i for i, v in enumerate(self.vocabulary_)}
        out = np.zeros((len(df), len(pos)))
        for c in self.columns_:
            for r, v in enumerate(df[c].tolist()):
                for t in self._tokens(v):
                    j = pos.get(f"{c}={t}")
                    if j is not None:
                        out[r, j] = 1.0
        return pd.DataFrame(out, columns=self.vocabulary_, index=df.index)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """The ``column=token`` names."""
        check_is_fitted(self, "vocabulary_")
        return np.asarray(self.vocabulary_, dtype=object)

    def to_portable(self) -> tuple[dict, dict]:
        """Portable form (:mod:`buscad.portable`): columns, vocabulary and separator."""
        check_is_fitted(self, "vocabulary_")
        spec = {"type": "lexicon", "columns": list(self.columns_), "sep": self.sep}
        return {**spec, "vocabulary": list(self.vocabulary_)}, {}


#: Conventional-ultrasound model inputs: the radiologist's lexicon and category.
US_COLUMNS: tuple[str, ...] = (*LEXICON_COLUMNS, "halo", "skin_thickening", "birads")


class USModel(_WrappedClassifier):
    """Conventional-ultrasound model: BI-RADS lexicon + category one-hot → logistic regression.

    Parameters
    ----------
    columns : list of str, optional
        Descriptor columns; default: those of :data:`US_COLUMNS` present in ``X``
        (every column when none is).
    C : float, default 1.0
        Inverse L2 strength of the logistic regression.
    random_state : int, default 0
    """

    def __init__(
        self, columns: Sequence[str] | None = None, C: float = 1.0, random_state: int | None = 0
    ):
        self.columns = columns
        self.C = C
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> USModel:
        """Encode and fit on these rows."""
        df = self._store_input(X, y)
        yb = _binary_y(self, y)
        if self.columns is not None:
            cols = list(self.columns)
        else:
            cols = [c for c in US_COLUMNS if c in df.columns] or list(df.columns)
        self.columns_ = cols
        self.pipeline_ = Pipeline(
            [
                ("encode", LexiconEncoder(cols)),
                ("clf", make_classifier("logistic", self.C, self.random_state)),
            ]
        ).fit(df, yb)
        return self

    _allow_nan = True
    _string_input = True


# =============================================================================== DLR / CLDLR


class DLR(_WrappedClassifier):
    """Deep-learning radiomics: deep features → z-score → SVM with probabilities.

    As Yang et al. 2024: the CNN's penultimate-layer features replace its
    softmax head with an SVM (RBF kernel; probabilities by Platt scaling,
    :class:`PlattSVC`).

    Parameters
    ----------
    include : str or list of str, optional
        Regex of the deep-feature columns (None: every column).
    C : float, default 1.0
    gamma : str or float, default "scale"
    """

    def __init__(
        self,
        include: str | Sequence[str] | None = None,
        C: float = 1.0,
        gamma: str | float = "scale",
    ):
        self.include = include
        self.C = C
        self.gamma = gamma

    def fit(self, X: Any, y: Any) -> DLR:
        """Fit scaler and SVM on these rows."""
        df = self._store_input(X, y)
        yb = _binary_y(self, y)
        self.pipeline_ = Pipeline(
            [
                ("subset", FeatureSubset(include=self.include)),
                ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                ("zscore", StandardScaler()),
                (
                    "svm",
                    PlattSVC(C=self.C, gamma=self.gamma),
                ),
            ]
        )
        self.pipeline_.fit(df, yb)
        return self

    _allow_nan = True


class CLDLR(_WrappedClassifier):
    """Clinical + deep features → SVM (Yang et al. 2024's CLDLR).

    Clinical variables go through :class:`ClinicalSelector` (P < ``alpha`` on
    the training rows; none kept when none passes, then the model is deep
    features → SVM; ``select_clinical=False`` keeps all) and
    :func:`clinical_preprocessor` (median + missing indicator, one-hot); deep
    features are z-scored; the concatenation feeds an RBF SVM with Platt
    probabilities.

    Parameters
    ----------
    include : str or list of str
        Regex of the deep-feature columns.
    numeric, categorical : list of str, optional
        Clinical columns.
    select_clinical : bool, default True
    alpha : float, default 0.05
    C : float, default 1.0
    gamma : str or float, default "scale"
    """

    def __init__(
        self,
        include: str | Sequence[str] = "^deep_",
        numeric: Sequence[str] | None = ("age",),
        categorical: Sequence[str] | None = None,
        select_clinical: bool = True,
        alpha: float = 0.05,
        C: float = 1.0,
        gamma: str | float = "scale",
    ):
        self.include = include
        self.numeric = numeric
        self.categorical = categorical
        self.select_clinical = select_clinical
        self.alpha = alpha
        self.C = C
        self.gamma = gamma

    def fit(self, X: Any, y: Any) -> CLDLR:
        """Select clinical variables, fit preprocessing and SVM on these rows."""
        df = self._store_input(X, y)
        yb = _binary_y(self, y)
        num, cat = list(self.numeric or []), list(self.categorical or [])
        if self.select_clinical and (num or cat):
            sel = ClinicalSelector(num, cat, self.alpha, min_keep=0).fit(df, yb)
            num, cat = sel.numeric_, sel.categorical_
            self.selector_ = sel
        deep = [
            c for c, k in zip(df.columns, _regex_match(self.include, df.columns), strict=True) if k
        ]
        deep = [c for c in deep if c not in num and c not in cat]
        if not deep:
            raise ValueError(f"CLDLR: no deep-feature column matches {self.include!r}")
        self.deep_columns_ = deep
        self.clinical_columns_ = num + cat
        prep = clinical_preprocessor(num, cat)
        prep.transformers.append(
            (
                "deep",
                make_pipeline(
                    SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler()
                ),
                deep,
            )
        )
        self.pipeline_ = Pipeline(
            [
                ("prep", prep),
                (
                    "svm",
                    PlattSVC(C=self.C, gamma=self.gamma),
                ),
            ]
        ).fit(df, yb)
        return self

    _allow_nan = True
    _string_input = True


# =============================================================================== CV helpers


def _fit_accepts_groups(est: BaseEstimator) -> bool:
    try:
        return "groups" in inspect.signature(est.fit).parameters
    except (TypeError, ValueError):
        return False


def make_folds(
    y: np.ndarray,
    groups: np.ndarray | None = None,
    folds: np.ndarray | Sequence[Any] | None = None,
    n_splits: int = 5,
    random_state: int | None = 0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Train/test index pairs: from a fold label per row, or grouped stratified K-fold.

    ``folds`` (e.g. the manifest's ``split`` column ``fold0..fold4``) wins; else
    :class:`~sklearn.model_selection.StratifiedGroupKFold` on ``groups`` (rows of
    one group never straddle train and test), else stratified K-fold.
    """
    y = np.asarray(y)
    n = len(y)
    if folds is not None:
        f = np.asarray(folds).astype(str)
        if len(f) != n:
            raise ValueError(f"folds has {len(f)} labels for {n} rows")
        levels = sorted(set(f))
        if len(levels) < 2:
            raise ValueError(f"folds needs at least 2 distinct labels, got {levels}")
        return [(np.flatnonzero(f != lv), np.flatnonzero(f == lv)) for lv in levels]
    idx = np.zeros(n)
    if groups is not None:
        g = np.asarray(groups)
        if len(g) != n:
            raise ValueError(f"groups has {len(g)} labels for {n} rows")
        cv = StratifiedGroupKFold(n_splits, shuffle=True, random_state=random_state)
        return [(tr, te) for tr, te in cv.split(idx, y, g)]
    cv = StratifiedKFold(n_splits, shuffle=True, random_state=random_state)
    return [(tr, te) for tr, te in cv.split(idx, y)]


def model_inputs(est: BaseEstimator) -> list[str]:
    """Names of the input columns a fitted model actually reads.

    What a deployed model must be given: the radiomics features the LASSO kept
    (not the hundreds extracted), the deep features, the clinical variables the
    univariate tests kept, the lexicon columns, and for the integrated model the
    union over its base models. Columns are named as in ``fit``'s table.
    """
    if isinstance(est, StackingIntegrator):
        check_is_fitted(est, "estimators_")
        out: list[str] = []
        for _, e in est.estimators_:
            out += [c for c in model_inputs(e) if c not in out]
        return out
    if isinstance(est, ColumnScore):
        return [est.column]
    if isinstance(est, USModel):
        return list(est.columns_)
    if isinstance(est, ClinicalModel):
        return list(est.selector_.selected_)
    if isinstance(est, CLDLR):
        return list(est.clinical_columns_) + list(est.deep_columns_)
    if isinstance(est, _WrappedClassifier):
        return _pipeline_inputs(est.pipeline_, list(map(str, est.feature_names_in_)))
    if isinstance(est, Pipeline):
        return _pipeline_inputs(est, list(map(str, est.feature_names_in_)))
    names = getattr(est, "feature_names_in_", None)
    return list(map(str, names)) if names is not None else []


def _pipeline_inputs(pipe: Pipeline, names: list[str]) -> list[str]:
    """Follow the leading selectors (and column-wise imputers/scalers) of a pipeline."""
    cols = np.asarray(names, dtype=object)
    for _, step in pipe.steps:
        if isinstance(step, SelectorMixin):
            cols = cols[step.get_support()]
        elif not isinstance(step, (SimpleImputer, StandardScaler)) or getattr(
            step, "indicator_", None
        ):
            break
    return [str(c) for c in cols]


def cross_val_predict_grouped(
    estimator: BaseEstimator,
    X: Any,
    y: Any,
    groups: np.ndarray | Sequence[Any] | None = None,
    folds: np.ndarray | Sequence[Any] | None = None,
    n_splits: int = 5,
    random_state: int | None = 0,
) -> np.ndarray:
    """Out-of-fold P(positive class): a fresh clone of the whole pipeline is fit per fold.

    Parameters
    ----------
    estimator : estimator or Pipeline
        Anything with ``fit`` and ``predict_proba`` (a clone is fit per fold, so
        selection, scaling and imputation only ever see the training rows).
    X : DataFrame or array
    y : array-like
        Binary labels.
    groups : array-like, optional
        Group per row (patient ∪ near-duplicate group); passed on to ``fit``
        as ``groups=`` when the estimator's ``fit`` accepts it (e.g.
        :class:`StackingIntegrator`, for its inner folds).
    folds : array-like, optional
        Fold label per row (``fold0`` … ``fold4``): overrides ``groups`` for
        the outer split.
    n_splits, random_state
        For the grouped stratified K-fold when ``folds`` is not given.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` probabilities, each from the model that did not see that row.
    """
    y = np.asarray(y)
    splits = make_folds(y, groups, folds, n_splits, random_state)
    out = np.full(len(y), np.nan)
    g = None if groups is None else np.asarray(groups)
    for tr, te in splits:
        est = clone(estimator)
        kw = {"groups": g[tr]} if g is not None and _fit_accepts_groups(est) else {}
        est.fit(_take(X, tr), y[tr], **kw)
        out[te] = _positive_proba(est, _take(X, te))
    return out


def _positive_proba(est: BaseEstimator, X: Any) -> np.ndarray:
    p = est.predict_proba(X)
    classes = list(getattr(est, "classes_", [0, 1]))
    return p[:, classes.index(1) if 1 in classes else 1]


# =============================================================================== stacking


class ColumnScore(_BinaryClassifierMixin, BaseEstimator):
    """A probability computed elsewhere, used as a base model of the integrated model.

    The CNN's AI score is not a scikit-learn estimator; the study runner puts its
    out-of-fold score (training rows) and final-model score (other rows) in a
    column, and this estimator hands it to :class:`StackingIntegrator` unchanged:
    ``P(malignant) = clip(X[column], 0, 1)``. ``fit`` learns nothing but the classes.

    Parameters
    ----------
    column : str
        Name of the score column.
    """

    def __init__(self, column: str = "score"):
        self.column = column

    def fit(self, X: Any, y: Any) -> ColumnScore:
        """Check the column exists; record the classes."""
        _binary_y(self, y)
        if self.column not in _frame(X).columns:
            raise ValueError(f"ColumnScore: X has no column {self.column!r}")
        self.n_features_in_ = np.shape(X)[1]
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """``[1 - p, p]`` with ``p`` the clipped column."""
        check_is_fitted(self, "classes_")
        p = np.clip(
            pd.to_numeric(_frame(X)[self.column], errors="coerce").to_numpy(float), 0.0, 1.0
        )
        return np.column_stack([1 - p, p])

    def predict(self, X: Any) -> np.ndarray:
        """Class with the higher probability."""
        return self.classes_[(self.predict_proba(X)[:, 1] > 0.5).astype(int)]

    def to_portable(self) -> tuple[dict, dict]:
        """Portable form (:mod:`buscad.portable`): the clipped column."""
        check_is_fitted(self, "classes_")
        return {"type": "column", "column": self.column}, {}


class StackingIntegrator(_BinaryClassifierMixin, BaseEstimator):
    """Integrated model: logistic regression on the single models' out-of-fold probabilities.

    ``fit`` computes, for every base model, out-of-fold probabilities on the
    training rows (inner folds: grouped stratified K-fold when ``groups`` is
    given, else stratified K-fold); the final logistic regression is fitted on
    those only (``oof_proba_``), never on in-sample predictions. The base
    models are then refit on all training rows for prediction.
    ``logit(P) = b0 + Σ_m b_m f(p_m)`` with ``f`` the identity
    (``stack_method="proba"``) or ``log(p / (1 - p))`` (``"logit"``).

    Parameters
    ----------
    estimators : list of (str, estimator)
        Base models; each receives the full ``X`` and picks its own columns.
    cv : int, default 5
        Inner folds.
    stack_method : {"proba", "logit"}, default "proba"
    C : float, default 1.0
        Inverse L2 strength of the final logistic regression.
    random_state : int, default 0

    Attributes
    ----------
    estimators_ : list of (str, estimator)
        Base models refit on all training rows.
    oof_proba_ : pandas.DataFrame
        The out-of-fold probabilities the final model was fitted on.
    final_estimator_ : LogisticRegression
    coef_, intercept_ : numpy.ndarray, float
        The final model's coefficients (one per base model).
    """

    def __init__(
        self,
        estimators: Sequence[tuple[str, BaseEstimator]],
        cv: int = 5,
        stack_method: str = "proba",
        C: float = 1.0,
        random_state: int | None = 0,
    ):
        self.estimators = estimators
        self.cv = cv
        self.stack_method = stack_method
        self.C = C
        self.random_state = random_state

    def _f(self, p: np.ndarray) -> np.ndarray:
        if self.stack_method == "proba":
            return p
        if self.stack_method == "logit":
            q = np.clip(p, 1e-6, 1 - 1e-6)
            return np.log(q / (1 - q))
        raise ValueError(f"stack_method must be 'proba' or 'logit', got {self.stack_method!r}")

    def fit(self, X: Any, y: Any, groups: Any = None) -> StackingIntegrator:
        """Out-of-fold base probabilities → final logistic regression; refit the bases."""
        if not self.estimators:
            raise ValueError("StackingIntegrator needs at least one base estimator")
        if not _named_frame(X):
            X = validate_data(self, X, ensure_all_finite="allow-nan", dtype=None)
        else:
            self.n_features_in_ = X.shape[1]
        yb = _binary_y(self, y)
        names = [n for n, _ in self.estimators]
        splits = make_folds(
            yb, None if groups is None else np.asarray(groups), None, self.cv, self.random_state
        )
        oof = np.full((len(yb), len(names)), np.nan)
        g = None if groups is None else np.asarray(groups)
        for j, (_, est) in enumerate(self.estimators):
            for tr, te in splits:
                e = clone(est)
                kw = {"groups": g[tr]} if g is not None and _fit_accepts_groups(e) else {}
                e.fit(_take(X, tr), yb[tr], **kw)
                oof[te, j] = _positive_proba(e, _take(X, te))
        self.oof_proba_ = pd.DataFrame(oof, columns=names)
        self.final_estimator_ = LogisticRegression(
            C=self.C, max_iter=5000, random_state=self.random_state
        ).fit(self._f(oof), yb)
        self.estimators_ = []
        for n, est in self.estimators:
            e = clone(est)
            kw = {"groups": g} if g is not None and _fit_accepts_groups(e) else {}
            self.estimators_.append((n, e.fit(X, yb, **kw)))
        self.coef_ = self.final_estimator_.coef_.ravel().copy()
        self.intercept_ = float(self.final_estimator_.intercept_[0])
        return self

    def base_proba(self, X: Any) -> pd.DataFrame:
        """Each refit base model's P(positive) for ``X``."""
        check_is_fitted(self, "estimators_")
        if not _named_frame(X):
            X = validate_data(self, X, ensure_all_finite="allow-nan", dtype=None, reset=False)
        return pd.DataFrame(
            {n: _positive_proba(e, X) for n, e in self.estimators_},
            index=getattr(X, "index", None),
        )

    def predict_proba(self, X: Any) -> np.ndarray:
        """Final logistic regression on the base probabilities."""
        base = self._f(self.base_proba(X).to_numpy())
        return self.final_estimator_.predict_proba(base)

    def predict(self, X: Any) -> np.ndarray:
        """Class with the higher probability."""
        p = self.predict_proba(X)
        return self.classes_[(p[:, 1] > 0.5).astype(int)]

    def to_portable(self) -> tuple[dict, dict]:
        """Portable form (:mod:`buscad.portable`): the refit bases and the final logistic model."""
        check_is_fitted(self, "final_estimator_")
        bases = [{"name": n, "model": e} for n, e in self.estimators_]
        spec = {"type": "stack", "bases": bases, "transform": self.stack_method}
        return {**spec, "intercept": self.intercept_}, {"coef": self.coef_}

    def export_coefficients(self, path: str | os.PathLike[str]) -> pd.DataFrame:
        """CSV for a nomogram: ``term, coefficient, odds_ratio, transform`` rows.

        ``logit(P) = coefficient[(intercept)] + Σ coefficient[m] · f(p_m)``,
        ``f`` named in ``transform`` (``identity`` or ``logit``); ``odds_ratio``
        is ``exp(coefficient)`` per unit of ``f(p_m)``.
        """
        check_is_fitted(self, "final_estimator_")
        names = [n for n, _ in self.estimators_]
        coefs = [self.intercept_, *self.coef_]
        df = pd.DataFrame(
            {
                "term": ["(intercept)", *names],
                "coefficient": coefs,
                "odds_ratio": np.exp(coefs),
                "transform": [
                    "",
                    *["identity" if self.stack_method == "proba" else "logit"] * len(names),
                ],
            }
        )
        atomic_write_table(df, path)
        return df


# =============================================================================== radiomics
class RadiomicsExtractor(TransformerMixin, BaseEstimator):
    """Stateless scikit-learn transformer: Manifest → radiomics feature table.

    Parameters
    ----------
    params : str, path-like or None
        YAML params file (None: :data:`buscad.radiomics.DEFAULT_PARAMS`).
    cache_dir : str, path-like, bool or None
        See :func:`buscad.radiomics.extract_features`.
    n_jobs : int, default 1
        Worker processes.
    progress : bool, default False
        Show a progress bar.

    Notes
    -----
    ``transform`` returns one row per manifest row (indexed by ``image_id``);
    rows whose extraction failed are all-NaN and listed in ``failures_`` (so a
    downstream imputer, not a silent drop, decides what happens to them).
    """

    def __init__(
        self,
        params: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | bool | None = None,
        n_jobs: int = 1,
        progress: bool = False,
    ) -> None:
        self.params = params
        self.cache_dir = cache_dir
        self.n_jobs = n_jobs
        self.progress = progress

    def fit(self, X: Any, y: Any = None) -> RadiomicsExtractor:
        """Validate the params (nothing is learnt); return self."""
        from buscad.radiomics import load_params

        self.params_ = load_params(self.params)
        return self

    def transform(self, X: Any) -> pd.DataFrame:
        """Feature table for the manifest ``X`` (rows aligned with it)."""
        from buscad.radiomics import extract_features, load_params

        params = getattr(self, "params_", None) or load_params(self.params)
        res = extract_features(
            X, params, cache_dir=self.cache_dir, n_jobs=self.n_jobs, progress=self.progress
        )
        self.failures_ = res.failures
        for line in res.failures:
            warnings.warn(f"radiomics: skipped {line}", stacklevel=2)
        ids = [str(v) for v in X.df["image_id"]]
        return res.features.reindex(pd.Index(ids, name="image_id"))
