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
    inner : {"folds", "cohorts"}, default "folds"
        The inner split whose out-of-fold scores the weights are fitted on.
        ``folds``: ``cv`` grouped stratified folds of the pooled training rows.
        ``cohorts``: leave one cohort out (the cohort of each row is the column
        ``cohort_column`` of ``X``): every base model is fitted on the other
        cohorts and scores the held-out one, so the weights reward what
        transfers between cohorts rather than what works inside one. With
        fewer than two cohorts in the training rows it falls back to ``folds``
        (``inner_split_`` says which was used).
    cohort_column : str, default "cohort"
        ``inner="cohorts"``: the column of ``X`` naming each row's cohort (read
        by ``fit`` only; never a model input).
    random_state : int, default 0

    Attributes
    ----------
    estimators_ : list of (str, estimator)
        Base models refit on all training rows.
    oof_proba_ : pandas.DataFrame
        The out-of-fold probabilities the final model was fitted on.
    oof_split_ : numpy.ndarray
        Per training row, the inner split that held it out (its cohort, or
        ``fold<k>``); None with ``weights="equal"``.
    inner_split_ : str
        The inner split used: ``"leave-one-cohort-out"``, ``"folds"`` (asked
        for) or ``"folds (one cohort)"`` (``inner="cohorts"`` fell back).
    dropped_ : list of str
        Base models whose weight is 0 (they did not help on the inner split).
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
        inner: str = "folds",
        cohort_column: str = "cohort",
        random_state: int | None = 0,
    ):
        self.estimators = estimators
        self.cv = cv
        self.stack_method = stack_method
        self.C = C
        self.positive = positive
        self.weights = weights
        self.inner = inner
        self.cohort_column = cohort_column
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
        self._oof_y = yb
        self.dropped_: list[str] = []
        if self.weights == "equal":
            self._f(np.zeros(1))  # checks stack_method
            self.oof_proba_ = None
            self.oof_split_ = None
            self.inner_split_ = "none (equal weights)"
            final = LogisticRegression(C=self.C)
            final.classes_ = np.array([0, 1])
            final.coef_ = np.full((1, len(names)), 1.0 / len(names))
            final.intercept_ = np.zeros(1)
            final.n_features_in_ = len(names)
            self.final_estimator_ = final
            return self._refit_bases(X, yb, g)
        splits, split_id = self._inner_splits(X, yb, g)
        oof = np.full((len(yb), len(names)), np.nan)
        for j, (_, est) in enumerate(self.estimators):
            for tr, te in splits:
                e = clone(est)
                kw = {"groups": g[tr]} if g is not None and _fit_accepts_groups(e) else {}
                e.fit(_take(X, tr), yb[tr], **kw)
                oof[te, j] = _positive_proba(e, _take(X, te))
        self.oof_proba_ = pd.DataFrame(oof, columns=names)
        self.oof_split_ = split_id
        self.final_estimator_ = self._fit_final(oof, yb)
        return self._refit_bases(X, yb, g)

    def _inner_splits(
        self, X: Any, yb: np.ndarray, g: np.ndarray | None
    ) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
        """The inner (train, test) index pairs and, per row, the split that holds it out."""
        if self.inner not in ("folds", "cohorts"):
            raise ValueError(f"inner must be 'folds' or 'cohorts', got {self.inner!r}")
        if self.inner == "cohorts":
            if not _named_frame(X) or self.cohort_column not in X.columns:
                raise ValueError(
                    f"inner='cohorts' needs a column {self.cohort_column!r} naming each row's cohort"
                )
            cohort = X[self.cohort_column].astype(str).to_numpy()
            levels = sorted(set(cohort))
            if len(levels) >= 2:
                self.inner_split_ = "leave-one-cohort-out"
                splits = [
                    (np.flatnonzero(cohort != c), np.flatnonzero(cohort == c)) for c in levels
                ]
                return splits, cohort
            self.inner_split_ = "folds (one cohort)"
        else:
            self.inner_split_ = "folds"
        splits = make_folds(yb, g, None, self.cv, self.random_state)
        split_id = np.empty(len(yb), dtype=object)
        for k, (_, te) in enumerate(splits):
            split_id[te] = f"fold{k}"
        return splits, split_id

    def _fit_final(self, oof: np.ndarray, yb: np.ndarray) -> LogisticRegression:
        """The final logistic regression on ``f(oof)`` (non-negative weights with ``positive``)."""
        F = self._f(oof)
        final = LogisticRegression(C=self.C, max_iter=5000, random_state=self.random_state).fit(
            F, yb
        )
        if self.positive and (final.coef_ < 0).any():
            b0, b = _nonnegative_logistic(F, yb, self.C)
            final.coef_ = b[None, :]
            final.intercept_ = np.array([b0])
        return final

    def held_out_fusion(self) -> np.ndarray | None:
        """The fusion's own held-out P(positive) on the inner split's scores.

        For each inner split ``s`` (a cohort, or a fold), the final model is
        fitted again on ``oof_proba_`` rows outside ``s`` and scores the rows of
        ``s``: ``P_i = σ(b0^(-s) + Σ_m b_m^(-s) f(p_im))``. Neither the base
        models (they scored ``s`` without seeing it) nor the weights were
        fitted on a row's label, so these scores can be compared with each base
        model's ``oof_proba_`` column on equal terms. Not fully nested: the other
        splits' scores the weights are refitted on came from base models
        trained partly on ``s`` (a further level would need a third cohort).
        None with ``weights="equal"``.
        """
        check_is_fitted(self, "final_estimator_")
        if self.oof_proba_ is None:
            return None
        oof = self.oof_proba_.to_numpy()
        y = self._oof_y
        out = np.full(len(y), np.nan)
        for s in dict.fromkeys(self.oof_split_):
            te = self.oof_split_ == s
            if len(set(y[~te])) < 2:
                continue
            out[te] = self._fit_final(oof[~te], y[~te]).predict_proba(self._f(oof[te]))[:, 1]
        return out

    def _refit_bases(self, X: Any, yb: np.ndarray, g: np.ndarray | None) -> StackingIntegrator:
        self.estimators_ = []
        for n, est in self.estimators:
            e = clone(est)
            kw = {"groups": g} if g is not None and _fit_accepts_groups(e) else {}
            self.estimators_.append((n, e.fit(X, yb, **kw)))
        self.coef_ = self.final_estimator_.coef_.ravel().copy()
        self.intercept_ = float(self.final_estimator_.intercept_[0])
        if self.weights != "equal":
            self.dropped_ = [
                n for (n, _), b in zip(self.estimators, self.coef_, strict=True) if b <= 0
            ]
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
