"""Shared pieces of the classical models: binary targets, frames by column name, classifiers (Platt SVC), the estimator tags mixin and the wrapper that lets a model read named columns."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import (
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
    validate_data,
)

VIEW_SEP = "@"


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

    def decision_function(self, X: Any) -> np.ndarray:
        """The refit SVM's decision value ``f(x)`` (what the sigmoid reads)."""
        check_is_fitted(self, "calibrated_")
        X = validate_data(self, X, reset=False)
        return self.calibrated_.calibrated_classifiers_[0].estimator.decision_function(X)

    def refit_sigmoid(self, decision: np.ndarray, y: Any) -> PlattSVC:
        """Fit ``A, B`` again on decision values computed elsewhere (e.g. out-of-fold).

        ``P = 1 / (1 + exp(A f + B))`` by Platt's logistic fit of ``y`` on
        ``decision`` (rows with a NaN decision value are left out); the SVM is unchanged.
        """
        from sklearn.calibration import _SigmoidCalibration

        check_is_fitted(self, "calibrated_")
        d = np.asarray(decision, dtype=float)
        yb = np.asarray(y).astype(int)
        ok = ~np.isnan(d)
        cal = _SigmoidCalibration().fit(d[ok], yb[ok])
        self.calibrated_.calibrated_classifiers_[0].calibrators[0] = cal
        return self

    def sigmoid(self, decision: np.ndarray) -> np.ndarray:
        """P(positive) of decision values under the fitted sigmoid (NaN stays NaN)."""
        check_is_fitted(self, "calibrated_")
        cal = self.calibrated_.calibrated_classifiers_[0].calibrators[0]
        return 1.0 / (1.0 + np.exp(cal.a_ * np.asarray(decision, dtype=float) + cal.b_))

    def to_portable(self) -> tuple[dict, dict]:
        """Portable form (:mod:`buscad.bundle.portable`): the calibrated SVM."""
        check_is_fitted(self, "calibrated_")
        return {"type": "pipeline", "steps": [self.calibrated_]}, {}


class _WrappedClassifier(_BinaryClassifierMixin, BaseEstimator):
    """Shared predict/predict_proba for classifiers that hold a fitted ``pipeline_``."""

    def to_portable(self) -> tuple[dict, dict]:
        """Portable form (:mod:`buscad.bundle.portable`): ``pipeline_``.

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
