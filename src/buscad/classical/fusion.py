"""Fusion: a model's score as a column, and the stacking integrator of several models' out-of-fold scores."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import (
    check_is_fitted,
    validate_data,
)

from buscad.classical.base import _binary_y, _BinaryClassifierMixin, _frame, _named_frame, _take
from buscad.classical.cv import _fit_accepts_groups, _positive_proba, make_folds
from buscad.utils import atomic_write_table


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
        """Portable form (:mod:`buscad.bundle.portable`): the clipped column."""
        check_is_fitted(self, "classes_")
        return {"type": "column", "column": self.column}, {}


def _nonnegative_logistic(F: np.ndarray, y: np.ndarray, C: float) -> tuple[float, np.ndarray]:
    """``argmin Σ logloss(y, b0 + F b) + ||b||² / (2C)`` subject to ``b >= 0``."""
    from scipy.optimize import minimize

    def f(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = w[0] + F @ w[1:]
        loss = float(np.sum(np.logaddexp(0, z) - y * z) + w[1:] @ w[1:] / (2 * C))
        g = 1 / (1 + np.exp(-z)) - y
        return loss, np.r_[g.sum(), F.T @ g + w[1:] / C]

    k = F.shape[1]
    res = minimize(
        f,
        np.zeros(k + 1),
        jac=True,
        method="L-BFGS-B",
        bounds=[(None, None)] + [(0.0, None)] * k,
    )
    return float(res.x[0]), np.asarray(res.x[1:], dtype=float)


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
    weights : {"fit", "equal"}, default "fit"
        ``fit``: the final logistic regression above. ``equal``: no weights are
        learnt, ``b0 = 0`` and ``b_m = 1/M`` (with ``stack_method="logit"`` the
        mean of the base models' logits, ``logit P = (1/M) Σ_m logit p_m``);
        no inner folds are run. Equal weights cannot over-fit the training
        cohort's idea of which model is best, and transferred best between
        scanners in ``benchmarks/external.py``.
    positive : bool, default False
        Constrain every base model's weight to ``b_m >= 0`` (the intercept is
        free): the weights minimise ``Σ_i logloss_i + ||b||² / (2C)`` subject to
        ``b >= 0`` (L-BFGS-B). A base model that does not help on the inner folds
        gets weight 0 and none can enter inverted, so on new data the fusion
        does not fall far below its best part.
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
        positive: bool = False,
        weights: str = "fit",
        random_state: int | None = 0,
    ):
        self.estimators = estimators
        self.cv = cv
        self.stack_method = stack_method
        self.C = C
        self.positive = positive
        self.weights = weights
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
        if self.weights not in ("fit", "equal"):
            raise ValueError(f"weights must be 'fit' or 'equal', got {self.weights!r}")
        names = [n for n, _ in self.estimators]
        g = None if groups is None else np.asarray(groups)
        if self.weights == "equal":
            self._f(np.zeros(1))  # checks stack_method
            self.oof_proba_ = None
            final = LogisticRegression(C=self.C)
            final.classes_ = np.array([0, 1])
            final.coef_ = np.full((1, len(names)), 1.0 / len(names))
            final.intercept_ = np.zeros(1)
            final.n_features_in_ = len(names)
            self.final_estimator_ = final
            return self._refit_bases(X, yb, g)
        splits = make_folds(
            yb, None if groups is None else np.asarray(groups), None, self.cv, self.random_state
        )
        oof = np.full((len(yb), len(names)), np.nan)
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
        if self.positive and (self.final_estimator_.coef_ < 0).any():
            b0, b = _nonnegative_logistic(self._f(oof), yb, self.C)
            self.final_estimator_.coef_ = b[None, :]
            self.final_estimator_.intercept_ = np.array([b0])
        return self._refit_bases(X, yb, g)

    def _refit_bases(self, X: Any, yb: np.ndarray, g: np.ndarray | None) -> StackingIntegrator:
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
        """Portable form (:mod:`buscad.bundle.portable`): the refit bases and the final logistic model."""
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
