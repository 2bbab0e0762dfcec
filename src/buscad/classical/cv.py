"""Grouped cross-validation of the classical models: folds, out-of-fold predictions, the inputs each model reads."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from buscad.classical.base import _take


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
