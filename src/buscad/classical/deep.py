"""Deep-feature models: DLR (deep features -> SVM) and CLDLR (clinical + deep features)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from buscad.classical.base import PlattSVC, _binary_y, _regex_match, _WrappedClassifier
from buscad.classical.clinical import ClinicalSelector, clinical_preprocessor
from buscad.classical.selection import FeatureSubset


class _PlattPipeline(_WrappedClassifier):
    """A ``pipeline_`` ending in :class:`PlattSVC`: its decision values and sigmoid.

    The study computes a deep-feature model's out-of-fold decision values with
    features of CNNs that never saw the row, and fits the refit model's Platt
    sigmoid on those (:meth:`refit_sigmoid`) instead of on in-sample features.
    """

    def decision_function(self, X: Any) -> np.ndarray:
        """The SVM's decision value ``f(x)`` for the rows of ``X``."""
        Xc = self._check_X(X)
        return self.pipeline_[-1].decision_function(self.pipeline_[:-1].transform(Xc))

    def refit_sigmoid(self, decision: np.ndarray, y: Any) -> _PlattPipeline:
        """Refit the Platt sigmoid ``P = 1 / (1 + exp(A f + B))`` on given decision values."""
        self.pipeline_[-1].refit_sigmoid(decision, _binary_y(self, y))
        return self

    def sigmoid(self, decision: np.ndarray) -> np.ndarray:
        """P(malignant) of decision values under this model's sigmoid."""
        return self.pipeline_[-1].sigmoid(decision)


class DLR(_PlattPipeline):
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


class CLDLR(_PlattPipeline):
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
